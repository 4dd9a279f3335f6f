//! The `Internal` service: node-to-node calls. Peers are trusted to be
//! Concord nodes, but what they send is still decoded and checked, and a
//! bad message is refused without touching storage.

use std::sync::Arc;

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{admin_status, check_object};
use crate::cluster::{Cluster, PluginRef};
use crate::coordinator::{Coordinator, forward_reply, write_from_forward};
use crate::plugins::Plugins;
use crate::ring::Ring;
use crate::storage::ObjectStore;
use crate::storage::codec::decode_object;
use crate::{Error, Result};

/// Serves `concord.v1.Internal`.
pub struct InternalService {
    coordinator: Arc<Coordinator>,
    objects: Arc<ObjectStore>,
    cluster: Arc<Cluster>,
    plugins: Arc<Plugins>,
}

impl InternalService {
    /// Wires the service.
    pub fn new(
        coordinator: Arc<Coordinator>,
        objects: Arc<ObjectStore>,
        cluster: Arc<Cluster>,
        plugins: Arc<Plugins>,
    ) -> Self {
        Self { coordinator, objects, cluster, plugins }
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
/// holds at most 16 MiB; see [`crate::cluster::buckets::MAX_KEY_DATA_BYTES`]).
const REPLY_BUDGET: usize = 32 << 20;

#[tonic::async_trait]
impl pb::internal_server::Internal for InternalService {
    async fn replica_read(
        &self,
        request: Request<pb::ReplicaReadRequest>,
    ) -> Result<Response<pb::ReplicaReadResponse>, Status> {
        let ring = self.cluster.ring();
        let mut results = Vec::new();
        let mut reply_bytes = 0;
        let req = request.into_inner();
        // A batch mixes unrelated requests: each key succeeds or fails alone.
        for k in req.keys {
            if reply_bytes >= REPLY_BUDGET {
                results.push(pb::ReplicaReadResult {
                    object: Default::default(),
                    error: "not read: the reply to this batch is full; the next read of the key tries again".into(),
                });
                continue;
            }
            let read = Self::key(Some(k)).and_then(|k| {
                let partition = ring.partition_of(&k.bucket, &k.key);
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
        let ring = self.cluster.ring();
        let mut results = Vec::new();
        let req = request.into_inner();
        for w in req.writes {
            let applied = Self::key(w.key).and_then(|k| {
                let object = decode_object(&w.object)?;
                let partition = ring.partition_of(&k.bucket, &k.key);
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
