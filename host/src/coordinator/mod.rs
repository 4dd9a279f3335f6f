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

use crate::causal::{Content, Dot, Object, Sibling, VersionVector};
use crate::cluster::{BucketProps, Buckets, ResolveOn};
use crate::plugins::{Plugins, Resolution};
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
    /// Set when the bucket's resolver merged the siblings: what it decided
    /// (a value or a tombstone) and who decided. The object's context still
    /// covers every sibling, so a write with it supersedes them all.
    pub resolved: Option<(Content, Arc<str>)>,
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
    /// Resolver that merged siblings during the write, if one did.
    pub resolved_by: Option<Arc<str>>,
}

/// Coordinates requests on one node.
pub struct Coordinator {
    node_id: NodeId,
    objects: Arc<ObjectStore>,
    buckets: Arc<Buckets>,
    ring: Arc<ArcSwap<Ring>>,
    plugins: Arc<Plugins>,
    default_timeout: Duration,
}

impl Coordinator {
    /// Wires a coordinator.
    pub fn new(
        node_id: NodeId,
        objects: Arc<ObjectStore>,
        buckets: Arc<Buckets>,
        ring: Arc<ArcSwap<Ring>>,
        plugins: Arc<Plugins>,
        default_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self { node_id, objects, buckets, ring, plugins, default_timeout })
    }

    /// The bucket table requests are checked against.
    pub fn buckets(&self) -> &Arc<Buckets> {
        &self.buckets
    }

    /// Runs the bucket's validators on a value about to be written. Returns
    /// the value to store and the validators that ran.
    pub async fn validate(&self, bucket: &str, key: &[u8], value: Vec<u8>) -> Result<(Vec<u8>, Vec<String>)> {
        let props = self.buckets.get(bucket);
        if props.validators.is_empty() {
            return Ok((value, Vec::new()));
        }
        self.plugins.validate(bucket, &props, key, value).await
    }

    /// Reads a key from its replicas.
    pub async fn get(self: &Arc<Self>, req: ReadRequest) -> Result<ReadOutcome> {
        let deadline = req.timeout.unwrap_or(self.default_timeout);
        with_deadline(deadline, self.get_inner(req)).await
    }

    async fn get_inner(self: &Arc<Self>, req: ReadRequest) -> Result<ReadOutcome> {
        let props = self.buckets.get(&req.bucket);
        let (partition, replicas) = self.replicas(&props, &req.bucket, &req.key);
        quorum::needed("read", req.quorum, props.n, props.r(), replicas.len(), replicas.len())?;
        let object = self.objects.read(partition, &req.bucket, &req.key)?.unwrap_or_default();
        let mut out = ReadOutcome { object, replicas: vec![self.node_id.clone()], resolved: None };
        if let Some((content, by)) = self.resolve_siblings(&req, &props, &out.object).await {
            if self.plugins.runtime().config().write_back_resolved {
                match self.write_back(partition, &req, &out.object, content.clone()) {
                    // Hand out the written-back object only if nothing else
                    // slipped in: its context must not cover a sibling the
                    // reader has not seen.
                    Ok(written) if written.siblings().len() == 1 => out.object = written,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "writing back a resolved value failed; the next read resolves again")
                    }
                }
            }
            out.resolved = Some((content, by));
        }
        Ok(out)
    }

    /// Runs the bucket's resolver on a read's siblings (and its shadow, in
    /// the background).
    async fn resolve_siblings(
        self: &Arc<Self>,
        req: &ReadRequest,
        props: &BucketProps,
        object: &Object,
    ) -> Option<(Content, Arc<str>)> {
        if object.siblings().len() < 2 || (props.resolver.is_none() && props.shadow_resolver.is_none()) {
            return None;
        }
        let resolved = self.plugins.resolve(&req.bucket, props, &req.key, object.siblings()).await?;
        let content = match resolved.resolution {
            Resolution::Resolved(v) => Content::Value(v),
            Resolution::Delete => Content::Tombstone,
            Resolution::KeepSiblings => return None,
        };
        Some((content, resolved.by))
    }

    /// Stores a resolved value over the siblings it merged, so later reads
    /// find one sibling. The resolution is deterministic, so losing this
    /// write only means a later read resolves again: it is not waited on
    /// for durability.
    fn write_back(&self, partition: u32, req: &ReadRequest, read: &Object, content: Content) -> Result<Object> {
        self.objects.update(partition, &req.bucket, &req.key, read.context(), content, crate::now_ms(), usize::MAX)
    }

    /// Writes a value or a tombstone.
    pub async fn put(self: &Arc<Self>, req: WriteRequest) -> Result<WriteOutcome> {
        let deadline = req.timeout.unwrap_or(self.default_timeout);
        with_deadline(deadline, self.put_inner(req)).await
    }

    async fn put_inner(self: &Arc<Self>, req: WriteRequest) -> Result<WriteOutcome> {
        let props = self.buckets.get(&req.bucket);
        let (partition, replicas) = self.replicas(&props, &req.bucket, &req.key);
        quorum::needed("write", req.quorum, props.n, props.w(), replicas.len(), replicas.len())?;
        let max_siblings = props.max_siblings as usize;
        let now = crate::now_ms();
        let update = |context: &VersionVector, content: Content| {
            self.objects.update(partition, &req.bucket, &req.key, context, content, now, max_siblings)
        };
        let mut resolved_by = None;
        let mut object = match update(&req.context, req.content.clone()) {
            Err(Error::SiblingLimit { limit, siblings, object }) => {
                // Over budget: let the resolver merge the stored siblings and
                // the new value into one write that covers them all.
                let Some((content, context, by)) = self.resolve_over_budget(&req, &props, &object, now).await else {
                    return Err(Error::SiblingLimit { limit, siblings, object });
                };
                resolved_by = Some(by);
                update(&context, content)?
            }
            other => other?,
        };
        if props.resolve_on == ResolveOn::Write
            && object.siblings().len() > 1
            && let Some(r) = self.plugins.resolve(&req.bucket, &props, &req.key, object.siblings()).await
        {
            let content = match r.resolution {
                Resolution::Resolved(v) => Some(Content::Value(v)),
                Resolution::Delete => Some(Content::Tombstone),
                Resolution::KeepSiblings => None,
            };
            if let Some(content) = content {
                object = update(&object.context().clone(), content)?;
                resolved_by = Some(r.by);
            }
        }
        self.objects.sync().await?;
        Ok(WriteOutcome { object, acked_by: vec![self.node_id.clone()], sloppy: false, resolved_by })
    }

    /// Resolves `stored`'s siblings together with the write that would push
    /// them over the budget. Returns what to write instead and a context
    /// covering everything, or `None` if no resolver merged them.
    async fn resolve_over_budget(
        self: &Arc<Self>,
        req: &WriteRequest,
        props: &BucketProps,
        stored: &Object,
        now: u64,
    ) -> Option<(Content, VersionVector, Arc<str>)> {
        props.resolver.as_ref()?;
        let mut candidates: Vec<Sibling> =
            stored.siblings().iter().filter(|s| !req.context.covers(s.dot)).cloned().collect();
        let actor = self.objects.actor();
        let provisional = Dot { actor, counter: stored.context().get(actor).max(req.context.get(actor)) + 1 };
        candidates.push(Sibling {
            dot: provisional,
            content: req.content.clone(),
            written_at_ms: now,
            writer: self.node_id.clone(),
        });
        let r = self.plugins.resolve(&req.bucket, props, &req.key, &candidates).await?;
        let content = match r.resolution {
            Resolution::Resolved(v) => Content::Value(v),
            Resolution::Delete => Content::Tombstone,
            Resolution::KeepSiblings => return None,
        };
        let mut context = stored.context().clone();
        context.merge(&req.context);
        Some((content, context, r.by))
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
