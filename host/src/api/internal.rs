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
use crate::storage::ObjectStore;
use crate::storage::codec::decode_object;
use crate::{Error, Result};

/// Serves `concord.v1.Internal`.
pub struct InternalService {
    coordinator: Arc<Coordinator>,
    objects: Arc<ObjectStore>,
    /// Where writes this node takes as a fallback go; `None` with hinted
    /// handoff off, and then it refuses them.
    hints: Option<Arc<HintStore>>,
    cluster: Arc<Cluster>,
    plugins: Arc<Plugins>,
}

impl InternalService {
    /// Wires the service.
    pub fn new(
        coordinator: Arc<Coordinator>,
        objects: Arc<ObjectStore>,
        hints: Option<Arc<HintStore>>,
        cluster: Arc<Cluster>,
        plugins: Arc<Plugins>,
    ) -> Self {
        Self { coordinator, objects, hints, cluster, plugins }
    }

    /// Refuses replica traffic while this node has no cluster ring: its
    /// placeholder ring may not even have the cluster's partition count.
    fn check_ready(&self) -> Result<(), Status> {
        if self.cluster.is_ready() { Ok(()) } else { Err(super::admin_status(self.cluster.not_ready())) }
    }

    /// The hint store, for a write or read addressed to this node as a
    /// fallback for `target`.
    fn hints_for(&self, target: &str) -> Result<&HintStore> {
        self.hints.as_deref().ok_or_else(|| {
            Error::NotReady(format!(
                "{} keeps no hints (hinted handoff is off here), so it cannot stand in for {target}",
                self.cluster.node_id()
            ))
        })
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

    fn key(k: Option<pb::ObjectKey>) -> Result<pb::ObjectKey> {
        let k = k.ok_or_else(|| Error::invalid("replica request without a key"))?;
        check_object(&k.bucket, &k.key)?;
        Ok(k)
    }
}

/// Object bytes a `ReplicaRead` reply carries before it stops reading
/// more keys, so that replies stay under the 64 MiB message limit (a key
/// holds at most 16 MiB; see [`crate::buckets::MAX_KEY_DATA_BYTES`]).
const REPLY_BUDGET: usize = 32 << 20;

#[tonic::async_trait]
impl pb::internal_server::Internal for InternalService {
    async fn replica_read(
        &self,
        request: Request<pb::ReplicaReadRequest>,
    ) -> Result<Response<pb::ReplicaReadResponse>, Status> {
        self.check_ready()?;
        let ring = self.cluster.ring();
        let mut results = Vec::new();
        let mut reply_bytes = 0;
        let req = request.into_inner();
        if !req.hint_for.is_empty() && req.hint_for.len() != req.keys.len() {
            return Err(Status::invalid_argument(format!(
                "hint_for lists {} entries for {} keys",
                req.hint_for.len(),
                req.keys.len()
            )));
        }
        // A batch mixes unrelated requests: each key succeeds or fails alone.
        for (i, k) in req.keys.into_iter().enumerate() {
            let hint_for = req.hint_for.get(i).filter(|h| !h.is_empty() && *h != self.cluster.node_id());
            if reply_bytes >= REPLY_BUDGET {
                results.push(pb::ReplicaReadResult {
                    object: Default::default(),
                    error: "not read: the reply to this batch is full; the next read of the key tries again".into(),
                });
                continue;
            }
            let read = Self::key(Some(k)).and_then(|k| {
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
                Ok(object) => {
                    let object: bytes::Bytes = object.map(Into::into).unwrap_or_default();
                    reply_bytes += object.len();
                    pb::ReplicaReadResult { object, error: String::new() }
                }
                Err(e) => pb::ReplicaReadResult { object: Default::default(), error: e.to_string() },
            });
        }
        Ok(Response::new(pb::ReplicaReadResponse { results }))
    }

    async fn replica_write(
        &self,
        request: Request<pb::ReplicaWriteRequest>,
    ) -> Result<Response<pb::ReplicaWriteResponse>, Status> {
        self.check_ready()?;
        let ring = self.cluster.ring();
        let mut results = Vec::new();
        let req = request.into_inner();
        let now_ms = crate::now_ms();
        for w in req.writes {
            let applied = Self::key(w.key).and_then(|k| {
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
            results.push(pb::ReplicaWriteResult { error: applied.err().map(|e| e.to_string()).unwrap_or_default() });
        }
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
            let write = write_from_forward(req)?;
            check_object(&write.bucket, &write.key)?;
            self.coordinator.put_forwarded(write).await
        }
        .await
        .map_err(|e| super::to_status(e, &bucket, &key))?;
        Ok(Response::new(forward_reply(out)))
    }
}
