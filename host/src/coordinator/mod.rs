//! The request paths: get, put and delete, from checked input to replicas
//! and back.
//!
//! A coordinator takes a request that [`crate::api`] has already checked
//! (names, sizes, context token), finds the key's replicas on the ring,
//! applies the write or gathers the reads, waits for the quorum the request
//! asked for, and reports honestly which replicas answered.

pub mod quorum;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

pub use quorum::{Consistency, Needed, QuorumSpec};

use crate::causal::{Content, Object, VersionVector};
use crate::cluster::{BucketProps, Buckets};
use crate::ring::{NodeId, Ring};
use crate::storage::ObjectStore;
use crate::{Error, Result};

/// A read, checked.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    /// Valid bucket name.
    pub bucket: String,
    /// Key of 1..=1024 bytes.
    pub key: Vec<u8>,
    /// Replicas to wait for.
    pub quorum: QuorumSpec,
    /// Deadline; `None` for the node's default.
    pub timeout: Option<Duration>,
}

/// What a read found.
#[derive(Clone, Debug)]
pub struct ReadOutcome {
    /// The merged object (empty when no replica had the key).
    pub object: Object,
    /// Replicas whose answers were merged.
    pub replicas: Vec<NodeId>,
}

/// A write (put or delete), checked.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    /// Valid bucket name.
    pub bucket: String,
    /// Key of 1..=1024 bytes.
    pub key: Vec<u8>,
    /// The value, or a tombstone for a delete.
    pub content: Content,
    /// What the writer has seen (empty: concurrent with everything).
    pub context: VersionVector,
    /// Replicas to wait for.
    pub quorum: QuorumSpec,
    /// Deadline; `None` for the node's default.
    pub timeout: Option<Duration>,
}

/// What a write did.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// The object as stored by the coordinating replica after the write.
    pub object: Object,
    /// Replicas that acknowledged.
    pub acked_by: Vec<NodeId>,
    /// Whether a fallback node stood in for an unreachable replica.
    pub sloppy: bool,
}

/// Coordinates requests on one node.
pub struct Coordinator {
    node_id: NodeId,
    objects: Arc<ObjectStore>,
    buckets: Arc<Buckets>,
    ring: Arc<ArcSwap<Ring>>,
    default_timeout: Duration,
}

impl Coordinator {
    /// Wires a coordinator.
    pub fn new(
        node_id: NodeId,
        objects: Arc<ObjectStore>,
        buckets: Arc<Buckets>,
        ring: Arc<ArcSwap<Ring>>,
        default_timeout: Duration,
    ) -> Self {
        Self { node_id, objects, buckets, ring, default_timeout }
    }

    /// The bucket table requests are checked against.
    pub fn buckets(&self) -> &Arc<Buckets> {
        &self.buckets
    }

    /// Reads a key from its replicas.
    pub async fn get(&self, req: ReadRequest) -> Result<ReadOutcome> {
        let deadline = req.timeout.unwrap_or(self.default_timeout);
        with_deadline(deadline, self.get_inner(req)).await
    }

    async fn get_inner(&self, req: ReadRequest) -> Result<ReadOutcome> {
        let props = self.buckets.get(&req.bucket);
        let (partition, replicas) = self.replicas(&props, &req.bucket, &req.key);
        quorum::needed("read", req.quorum, props.n, props.r(), replicas.len(), replicas.len())?;
        let object = self.objects.read(partition, &req.bucket, &req.key)?.unwrap_or_default();
        Ok(ReadOutcome { object, replicas: vec![self.node_id.clone()] })
    }

    /// Writes a value or a tombstone.
    pub async fn put(&self, req: WriteRequest) -> Result<WriteOutcome> {
        let deadline = req.timeout.unwrap_or(self.default_timeout);
        with_deadline(deadline, self.put_inner(req)).await
    }

    async fn put_inner(&self, req: WriteRequest) -> Result<WriteOutcome> {
        let props = self.buckets.get(&req.bucket);
        let (partition, replicas) = self.replicas(&props, &req.bucket, &req.key);
        quorum::needed("write", req.quorum, props.n, props.w(), replicas.len(), replicas.len())?;
        let object = self.objects.update(
            partition,
            &req.bucket,
            &req.key,
            &req.context,
            req.content,
            crate::now_ms(),
            props.max_siblings as usize,
        )?;
        self.objects.sync().await?;
        Ok(WriteOutcome { object, acked_by: vec![self.node_id.clone()], sloppy: false })
    }

    fn replicas(&self, props: &BucketProps, bucket: &str, key: &[u8]) -> (u32, Vec<NodeId>) {
        let ring = self.ring.load();
        let partition = ring.partition_of(bucket, key);
        (partition, ring.preference_list(partition, props.n as usize))
    }
}

async fn with_deadline<T>(deadline: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(deadline, f).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(deadline.as_millis() as u64)),
    }
}
