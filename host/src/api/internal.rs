//! The `Internal` service: node-to-node calls. Peers are trusted to be
//! Concord nodes, but what they send is still decoded and checked, and a
//! bad message is refused without touching storage.

use std::sync::Arc;

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{admin_status, check_object};
use crate::buckets::PluginRef;
use crate::cluster::Cluster;
use crate::coordinator::{Coordinator, forward_reply, write_from_forward};
use crate::handoff::{HintKey, HintStore};
use crate::plugins::Plugins;
use crate::ring::Ring;
use crate::storage::codec::decode_object;
use crate::storage::{ObjectStore, Pool};
use crate::{Error, Result};

/// Serves `concord.v1.Internal`.
pub struct InternalService {
    inner: Arc<Inner>,
}

/// The service's parts, shared with work it moves to the background
/// runtime.
pub struct Inner {
    coordinator: Arc<Coordinator>,
    objects: Arc<ObjectStore>,
    hints: Arc<HintStore>,
    /// Whether this node takes writes as a fallback (hinted handoff on).
    takes_hints: bool,
    cluster: Arc<Cluster>,
    plugins: Arc<Plugins>,
    /// The node's background runtime: background requests (hint delivery,
    /// anti-entropy, transfers) do their storage work there, at low
    /// priority, after the node's own requests.
    background: tokio::runtime::Handle,
    /// Where the storage work of requests runs (replica reads and writes
    /// for a coordinator), off the tokio workers.
    pool: Arc<Pool>,
}

impl InternalService {
    /// Wires the service.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        coordinator: Arc<Coordinator>,
        objects: Arc<ObjectStore>,
        hints: Arc<HintStore>,
        takes_hints: bool,
        cluster: Arc<Cluster>,
        plugins: Arc<Plugins>,
        background: tokio::runtime::Handle,
        pool: Arc<Pool>,
    ) -> Self {
        let inner = Inner { coordinator, objects, hints, takes_hints, cluster, plugins, background, pool };
        Self { inner: Arc::new(inner) }
    }

    /// Runs `work` on a storage thread and returns its result.
    async fn on_storage<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let inner = Arc::clone(&self.inner);
        self.inner.pool.run(move || Ok(work(&inner))).await.map_err(admin_status)
    }

    /// Runs `work` on the background runtime and returns its result.
    async fn in_background<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let inner = Arc::clone(&self.inner);
        self.inner
            .background
            .spawn(async move { work(&inner) })
            .await
            .map_err(|e| Status::internal(format!("background work failed: {e}")))
    }
}

impl std::ops::Deref for InternalService {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Inner {
    /// Refuses replica traffic while this node has no cluster ring: its
    /// placeholder ring may not even have the cluster's partition count.
    fn check_ready(&self) -> Result<(), Status> {
        if self.cluster.is_ready() { Ok(()) } else { Err(super::admin_status(self.cluster.not_ready())) }
    }

    /// The hint store, for a write or read addressed to this node as a
    /// fallback for `target`.
    fn hints_for(&self, target: &str) -> Result<&HintStore> {
        if self.takes_hints {
            return Ok(&self.hints);
        }
        Err(Error::NotReady(format!(
            "{} keeps no hints (hinted handoff is off here), so it cannot stand in for {target}",
            self.cluster.node_id()
        )))
    }

    /// Refuses a key this node does not hold when its ring is newer than
    /// the sender's (`sender_epoch`; 0 when the sender does not say): a
    /// sender still on the old ring would otherwise count an answer from a
    /// node the cluster no longer reads the key from.
    fn check_holder(&self, ring: &Ring, sender_epoch: u64, k: &pb::ObjectKey, partition: u32) -> Result<()> {
        if sender_epoch == 0 || ring.epoch() <= sender_epoch {
            return Ok(());
        }
        let n = self.coordinator.buckets().get(&k.bucket).n as usize;
        if ring.preference_list(partition, n).iter().any(|r| r == self.cluster.node_id()) {
            return Ok(());
        }
        Err(Error::NotReady(format!(
            "{} does not hold this key at ring epoch {} (the request was made at epoch {sender_epoch}); the ring \
             has changed, retry",
            self.cluster.node_id(),
            ring.epoch()
        )))
    }

    /// Checks that this node replicates `tree` at its ring, for anti-entropy
    /// and transfer requests (`sender_epoch` newer than ours: we may not
    /// know it yet).
    fn check_tree(&self, tree: Option<&pb::TreeId>, sender_epoch: u64) -> Result<(u32, u8)> {
        let ring = self.cluster.ring();
        let (p, n) = crate::antientropy::exchange::tree_from(tree, ring.partitions())?;
        if ring.preference_list(p, n as usize).iter().any(|r| r == self.cluster.node_id()) {
            return Ok((p, n));
        }
        let why = if sender_epoch > ring.epoch() { "; this node's ring is older than the sender's" } else { "" };
        Err(Error::NotReady(format!(
            "{} does not replicate partition {p} for n={n} at ring epoch {}{why}",
            self.cluster.node_id(),
            ring.epoch()
        )))
    }

    /// Merges a batch of replica writes (or keeps them as hints), one
    /// result per write.
    fn apply_writes(&self, req: pb::ReplicaWriteRequest) -> Vec<pb::ReplicaWriteResult> {
        let ring = self.cluster.ring();
        let now_ms = crate::now_ms();
        let mut results = Vec::with_capacity(req.writes.len());
        for w in req.writes {
            let applied = InternalService::key(w.key).and_then(|k| {
                let object = decode_object(&w.object)?;
                let partition = ring.partition_of(&k.bucket, &k.key);
                // A fallback keeps the write for the replica it stands in
                // for; a replica (also one that was named as its own
                // target after a ring change) merges it.
                if !w.hint_for.is_empty() && w.hint_for != self.cluster.node_id() {
                    let key = HintKey { target: w.hint_for.clone(), partition, bucket: k.bucket, key: k.key.to_vec() };
                    return self.hints_for(&w.hint_for)?.add(&key, &object, req.ring_epoch, now_ms);
                }
                self.check_holder(&ring, req.ring_epoch, &k, partition)?;
                self.objects.merge(partition, &k.bucket, &k.key, &object).map(|_| ())
            });
            results.push(match applied {
                Ok(()) => pb::ReplicaWriteResult::default(),
                Err(e) => pb::ReplicaWriteResult { too_large: matches!(e, Error::TooLarge(_)), error: e.to_string() },
            });
        }
        results
    }

    /// Reads a batch of local copies (or hints), one result per key; a
    /// reply stays under [`REPLY_BUDGET`]. `hint_for` has been checked.
    fn read_batch(&self, req: pb::ReplicaReadRequest) -> Vec<pb::ReplicaReadResult> {
        let ring = self.cluster.ring();
        let mut results = Vec::new();
        let mut reply_bytes = 0;
        // A batch mixes unrelated requests: each key succeeds or fails alone.
        for (i, k) in req.keys.into_iter().enumerate() {
            let hint_for = req.hint_for.get(i).filter(|h| !h.is_empty() && *h != self.cluster.node_id());
            let read = InternalService::key(Some(k)).and_then(|k| {
                let partition = ring.partition_of(&k.bucket, &k.key);
                if let Some(target) = hint_for {
                    let key = HintKey { target: target.clone(), partition, bucket: k.bucket, key: k.key.to_vec() };
                    let hint = self.hints_for(target)?.get(&key)?;
                    return Ok(hint.map(|o| crate::storage::codec::encode_object(&o)));
                }
                self.check_holder(&ring, req.ring_epoch, &k, partition)?;
                self.objects.read_encoded(partition, &k.bucket, &k.key)
            });
            results.push(match read {
                Ok(Some(object)) if reply_bytes > 0 && reply_bytes + object.len() > REPLY_BUDGET => {
                    pb::ReplicaReadResult {
                        object: Default::default(),
                        error: "left out: the reply to this batch is full; ask for the key alone".into(),
                        reply_full: true,
                    }
                }
                Ok(object) => {
                    let object: bytes::Bytes = object.map(Into::into).unwrap_or_default();
                    reply_bytes += object.len();
                    pb::ReplicaReadResult { object, ..Default::default() }
                }
                Err(e) => pb::ReplicaReadResult { error: e.to_string(), ..Default::default() },
            });
        }
        results
    }
}

impl InternalService {
    fn key(k: Option<pb::ObjectKey>) -> Result<pb::ObjectKey> {
        let k = k.ok_or_else(|| Error::invalid("replica request without a key"))?;
        check_object(&k.bucket, &k.key)?;
        Ok(k)
    }
}

/// Object bytes a `ReplicaRead` reply carries: a key that would take it
/// past this is left out, marked `reply_full` (the sender asks for it
/// alone), unless it is the first, which goes whatever its size. Replies so
/// stay under [`crate::net::MAX_PEER_MESSAGE_BYTES`], since a key holds at
/// most [`crate::storage::MAX_MERGED_KEY_BYTES`].
const REPLY_BUDGET: usize = 32 << 20;

#[tonic::async_trait]
impl pb::internal_server::Internal for InternalService {
    async fn replica_read(
        &self,
        request: Request<pb::ReplicaReadRequest>,
    ) -> Result<Response<pb::ReplicaReadResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        if !req.hint_for.is_empty() && req.hint_for.len() != req.keys.len() {
            return Err(Status::invalid_argument(format!(
                "hint_for lists {} entries for {} keys",
                req.hint_for.len(),
                req.keys.len()
            )));
        }
        let results = self.on_storage(move |inner| inner.read_batch(req)).await?;
        Ok(Response::new(pb::ReplicaReadResponse { results }))
    }

    async fn replica_write(
        &self,
        request: Request<pb::ReplicaWriteRequest>,
    ) -> Result<Response<pb::ReplicaWriteResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let mut results = if req.background {
            self.in_background(move |inner| inner.apply_writes(req)).await?
        } else {
            self.on_storage(move |inner| inner.apply_writes(req)).await?
        };
        // Acknowledge only what is as durable as this node promises.
        if let Err(e) = self.objects.sync().await {
            for r in &mut results {
                if r.error.is_empty() {
                    r.error = e.to_string();
                }
            }
        }
        Ok(Response::new(pb::ReplicaWriteResponse { results }))
    }

    async fn fetch_metadata(
        &self,
        _: Request<pb::FetchMetadataRequest>,
    ) -> Result<Response<pb::ClusterMetadata>, Status> {
        Ok(Response::new(self.cluster.metadata()))
    }

    async fn fetch_plugin(
        &self,
        request: Request<pb::FetchPluginRequest>,
    ) -> Result<Response<pb::FetchPluginResponse>, Status> {
        let req = request.into_inner();
        let r = PluginRef { name: req.name, version: req.version };
        let registry = self.plugins.registry();
        let info = registry.info(&r).ok_or_else(|| Status::not_found(format!("plugin {r} is not deployed here")))?;
        let wasm = registry
            .component(&r)
            .map_err(admin_status)?
            .ok_or_else(|| Status::not_found(format!("plugin {r} is not stored here")))?;
        Ok(Response::new(pb::FetchPluginResponse { wasm: wasm.into(), sha256: info.sha256 }))
    }

    async fn forward_write(
        &self,
        request: Request<pb::ForwardWriteRequest>,
    ) -> Result<Response<pb::ForwardWriteResponse>, Status> {
        let req = request.into_inner();
        let (bucket, key) = req.key.as_ref().map(|k| (k.bucket.clone(), k.key.to_vec())).unwrap_or_default();
        let out = async {
            let write = write_from_forward(&self.cluster.keys().current(), req)?;
            check_object(&write.bucket, &write.key)?;
            self.coordinator.put_forwarded(write).await
        }
        .await
        .map_err(|e| super::to_status(e, &self.cluster.keys().current(), &bucket, &key))?;
        Ok(Response::new(forward_reply(out)))
    }

    async fn compare_trees(
        &self,
        request: Request<pb::CompareTreesRequest>,
    ) -> Result<Response<pb::CompareTreesResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        if req.trees.len() > MAX_TREES_PER_CALL {
            return Err(Status::invalid_argument(format!("at most {MAX_TREES_PER_CALL} trees per call")));
        }
        let trees = req
            .trees
            .into_iter()
            .map(|t| {
                let mut out = pb::TreeComparison { tree: t.tree, ..Default::default() };
                match self.check_tree(out.tree.as_ref(), req.ring_epoch) {
                    Ok((p, _)) if !self.objects.trusted(p) => {
                        out.error = format!(
                            "{} is rebuilding the hash trees of partition {p} after an unclean stop",
                            self.cluster.node_id()
                        );
                    }
                    Ok((p, n)) => {
                        let ours = self.objects.segments(p, n);
                        out.equal = ours.digest() == t.digest;
                        if !out.equal {
                            out.segments = ours.encode().into();
                        }
                    }
                    Err(e) => out.error = e.to_string(),
                }
                out
            })
            .collect();
        Ok(Response::new(pb::CompareTreesResponse { trees }))
    }

    async fn segment_keys(
        &self,
        request: Request<pb::SegmentKeysRequest>,
    ) -> Result<Response<pb::SegmentKeysResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let (p, n) = self.check_tree(req.tree.as_ref(), 0).map_err(admin_status)?;
        if req.segments.len() > crate::antientropy::exchange::SEGMENTS_PER_CALL * 2 {
            return Err(Status::invalid_argument("too many segments in one call"));
        }
        let segments: Vec<u16> = req
            .segments
            .iter()
            .map(|s| u16::try_from(*s).ok().filter(|s| (*s as usize) < crate::antientropy::tree::SEGMENTS))
            .collect::<Option<_>>()
            .ok_or_else(|| Status::invalid_argument("a segment number out of range"))?;
        let keys = self
            .in_background(move |inner| -> Result<Vec<pb::KeyHash>> {
                let mut keys = Vec::new();
                for s in segments {
                    for (k, hash) in inner.objects.segment_keys(p, n, s)? {
                        keys.push(pb::KeyHash { key: k.into_bytes().into(), hash });
                    }
                }
                Ok(keys)
            })
            .await?
            .map_err(admin_status)?;
        Ok(Response::new(pb::SegmentKeysResponse { keys }))
    }

    async fn exchange_objects(
        &self,
        request: Request<pb::ExchangeObjectsRequest>,
    ) -> Result<Response<pb::ExchangeObjectsResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let (p, _) = self.check_tree(req.tree.as_ref(), req.ring_epoch).map_err(admin_status)?;
        let transfer = req.transfer;
        let limit = crate::antientropy::exchange::OBJECTS_PER_CALL * 2;
        if req.objects.len() > limit || req.want.len() > limit {
            return Err(Status::invalid_argument(format!("at most {limit} objects sent or wanted per call")));
        }
        let partitions = self.cluster.ring().partitions();
        let checked = move |bytes: Vec<u8>| crate::antientropy::exchange::checked_key(bytes, p, partitions);
        // Everything is checked before anything is merged.
        let mut incoming = Vec::with_capacity(req.objects.len());
        for o in req.objects {
            let key = checked(o.key.to_vec()).map_err(admin_status)?;
            let object = decode_object(&o.object).map_err(|e| admin_status(e.into()))?;
            incoming.push((key, object));
        }
        let want: Vec<_> =
            req.want.into_iter().map(|k| checked(k.to_vec())).collect::<Result<_>>().map_err(admin_status)?;
        let (objects, answered, refused) = self
            .in_background(move |inner| -> Result<(Vec<pb::StoredObject>, u32, Vec<bytes::Bytes>)> {
                // A key too large to merge is left as it is here and named
                // in the reply; the rest go on (a transfer's sender keeps
                // its copy of a refused key).
                let mut refused = Vec::new();
                for (key, object) in &incoming {
                    match inner.objects.merge_raw(p, key, object) {
                        Err(e @ Error::TooLarge(_)) => {
                            tracing::warn!(error = %e, "could not merge a key a peer sent");
                            refused.push(bytes::Bytes::copy_from_slice(key.as_bytes()));
                        }
                        r => {
                            r?;
                        }
                    }
                }
                // Up to a byte budget (and at least one key, whatever its
                // size); the sender asks again for the rest.
                let mut out = Vec::new();
                let (mut bytes, mut answered) = (0usize, 0u32);
                for key in want {
                    let Some(object) = inner.objects.read_raw(p, &key)? else {
                        answered += 1;
                        continue;
                    };
                    let size = key.as_bytes().len() + object.len();
                    if !out.is_empty() && bytes + size > crate::antientropy::exchange::BYTES_PER_CALL {
                        break;
                    }
                    answered += 1;
                    bytes += size;
                    out.push(pb::StoredObject { key: key.into_bytes().into(), object: object.into() });
                }
                Ok((out, answered, refused))
            })
            .await?
            .map_err(admin_status)?;
        if transfer {
            // A former owner drops its copy once every new replica has
            // acknowledged a transfer, so what was merged must be on disk
            // whatever the durability mode: a crash here must not lose it.
            self.in_background(|inner| inner.objects.engine().flush()).await?.map_err(|e| admin_status(e.into()))?;
        } else {
            // What was merged is acknowledged as durable as this node
            // promises (a lost repair is simply made again next round).
            self.objects.sync().await.map_err(admin_status)?;
        }
        Ok(Response::new(pb::ExchangeObjectsResponse { objects, answered, refused }))
    }

    async fn reap_tombstones(&self, request: Request<pb::ReapRequest>) -> Result<Response<pb::ReapResponse>, Status> {
        self.check_ready()?;
        let req = request.into_inner();
        let (p, _) = self.check_tree(req.tree.as_ref(), 0).map_err(admin_status)?;
        let partitions = self.cluster.ring().partitions();
        let mut tombstones = Vec::with_capacity(req.tombstones.len());
        for t in req.tombstones {
            let key = crate::antientropy::exchange::checked_key(t.key.to_vec(), p, partitions).map_err(admin_status)?;
            tombstones.push((key, t.hash));
        }
        let commit = req.commit;
        let held = self
            .in_background(move |inner| -> Result<Vec<bool>> {
                tombstones
                    .iter()
                    .map(|(key, hash)| {
                        if commit {
                            inner.objects.remove_if(p, key, *hash)
                        } else {
                            let stored = inner.objects.read_raw(p, key)?;
                            Ok(stored.is_some_and(|b| crate::antientropy::tree::key_hash(key.as_bytes(), &b) == *hash))
                        }
                    })
                    .collect()
            })
            .await?
            .map_err(admin_status)?;
        Ok(Response::new(pb::ReapResponse { held }))
    }

    async fn partition_activity(
        &self,
        request: Request<pb::PartitionActivityRequest>,
    ) -> Result<Response<pb::PartitionActivityResponse>, Status> {
        let partition = request.into_inner().partition;
        Ok(Response::new(pb::PartitionActivityResponse {
            hints: self.hints.in_partition(partition),
            transferring: crate::antientropy::transferring(&self.objects, &self.cluster, partition),
            ring_epoch: self.cluster.ring().epoch(),
        }))
    }
}

/// Trees one `CompareTrees` call may ask about.
const MAX_TREES_PER_CALL: usize = 64;
