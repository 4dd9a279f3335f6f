//! The request paths: get, put and delete, from checked input to replicas
//! and back.
//!
//! A coordinator takes a request that [`crate::api`] has already checked
//! (names, sizes, context token, validators), finds the key's replicas on
//! the ring, and talks to them through [`crate::net`]:
//!
//! * **put/delete** must be coordinated by a replica, because the new
//!   sibling's dot names the coordinating replica. A node that is not one
//!   forwards the write to the first live replica. The coordinator applies
//!   the write locally, sends the resulting object to the other replicas in
//!   parallel (they merge it), and answers once the requested number have
//!   acknowledged. Stragglers finish in the background.
//! * **get** can be coordinated by any node: it asks every replica, merges
//!   the first `r` answers, and answers. Replicas that answered with less
//!   than the merged object get it back in the background (read repair),
//!   including those that answer after the reply. Siblings left after the
//!   merge go to the bucket's resolver, if any.
//!
//! Every request runs under one deadline; peer calls get what is left of it.
//! Fewer answers than needed is [`Error::Unavailable`], saying how many of
//! how many answered and why the others did not.

pub mod quorum;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::v1 as pb;
use metrics::Counter;
use tokio::sync::mpsc;

pub use quorum::{Consistency, Needed, QuorumSpec};

use crate::causal::{Content, Dot, Object, Sibling, VersionVector};
use crate::cluster::{BucketProps, Buckets, Cluster, ResolveOn};
use crate::plugins::{Plugins, Resolution, ResolveFor};
use crate::ring::NodeId;
use crate::storage::ObjectStore;
use crate::storage::codec::{decode_object, encode_object};
use crate::{Error, Result};
pub use wire::{forward_reply, write_from_forward};

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
    /// The zone whose replicas `LOCAL_QUORUM` counts: the zone of the node
    /// the client called, carried along when the write is forwarded.
    /// `None` means this node's zone.
    pub zone: Option<String>,
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

/// Metric handles of the request paths.
struct Metrics {
    forwarded: Counter,
    read_quorum_failures: Counter,
    write_quorum_failures: Counter,
    read_repairs: Counter,
    read_repair_failures: Counter,
}

/// Coordinates requests on one node.
pub struct Coordinator {
    node_id: NodeId,
    objects: Arc<ObjectStore>,
    buckets: Arc<Buckets>,
    cluster: Arc<Cluster>,
    plugins: Arc<Plugins>,
    default_timeout: Duration,
    metrics: Metrics,
}

/// Where a request goes and what it needs.
struct Plan {
    /// Epoch of the ring the replicas were chosen from.
    epoch: u64,
    partition: u32,
    /// The key's replicas, in preference order.
    replicas: Vec<NodeId>,
    /// Those in the client's zone.
    local: Vec<NodeId>,
    needed: Needed,
}

/// Counts answers against what a request needs.
struct Tally {
    needed: Needed,
    /// The replicas in the client's zone, whose answers `LOCAL_QUORUM` counts.
    local: Vec<NodeId>,
    ok: Vec<NodeId>,
    local_ok: usize,
    failures: Vec<String>,
    total: usize,
}

impl Tally {
    fn new(plan: &Plan) -> Self {
        Self {
            needed: plan.needed,
            local: plan.local.clone(),
            ok: Vec::new(),
            local_ok: 0,
            failures: Vec::new(),
            total: plan.replicas.len(),
        }
    }

    fn ok(&mut self, node: NodeId) {
        if self.local.contains(&node) {
            self.local_ok += 1;
        }
        self.ok.push(node);
    }

    fn satisfied(&self) -> bool {
        // Every replica asked is a primary, so `primaries` is met with `ok`.
        let counted = if self.needed.local_only { self.local_ok } else { self.ok.len() };
        counted >= self.needed.total && self.ok.len() >= self.needed.primaries
    }

    fn answered(&self) -> usize {
        self.ok.len() + self.failures.len()
    }

    fn unavailable(&self, op: &'static str) -> Error {
        let detail = if self.failures.is_empty() {
            "; the others did not answer before the deadline".to_owned()
        } else {
            format!("; {}", self.failures.join("; "))
        };
        Error::Unavailable { op, needed: self.needed.total, got: self.ok.len(), total: self.total, detail }
    }
}

impl Coordinator {
    /// Wires a coordinator.
    pub fn new(
        node_id: NodeId,
        objects: Arc<ObjectStore>,
        buckets: Arc<Buckets>,
        cluster: Arc<Cluster>,
        plugins: Arc<Plugins>,
        default_timeout: Duration,
    ) -> Arc<Self> {
        let metrics = Metrics {
            forwarded: metrics::counter!("concord_forwarded_requests_total"),
            read_quorum_failures: metrics::counter!("concord_quorum_failures_total", "op" => "read"),
            write_quorum_failures: metrics::counter!("concord_quorum_failures_total", "op" => "write"),
            read_repairs: metrics::counter!("concord_read_repairs_total"),
            read_repair_failures: metrics::counter!("concord_read_repair_failures_total"),
        };
        Arc::new(Self { node_id, objects, buckets, cluster, plugins, default_timeout, metrics })
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

    /// The replicas of a key and what a request of `op` needs from them;
    /// `zone` is the client's, for `LOCAL_QUORUM`.
    fn plan(
        &self,
        op: &'static str,
        spec: QuorumSpec,
        zone: &str,
        props: &BucketProps,
        bucket: &str,
        key: &[u8],
    ) -> Result<Plan> {
        let ring = self.cluster.ring();
        let partition = ring.partition_of(bucket, key);
        let replicas = ring.preference_list(partition, props.n as usize);
        let members = self.cluster.members();
        let in_zone =
            |r: &NodeId| if *r == self.node_id { self.cluster.zone() == zone } else { members.zone(r) == Some(zone) };
        let local: Vec<NodeId> = replicas.iter().filter(|r| in_zone(r)).cloned().collect();
        let default = if op == "read" { props.r() } else { props.w() };
        let needed = quorum::needed(op, spec, props.n, default, replicas.len(), local.len())?;
        Ok(Plan { epoch: ring.epoch(), partition, replicas, local, needed })
    }

    /// Reads a key from its replicas.
    pub async fn get(self: &Arc<Self>, req: ReadRequest) -> Result<ReadOutcome> {
        let timeout = req.timeout.unwrap_or(self.default_timeout);
        let deadline = Instant::now() + timeout;
        with_deadline(timeout, self.get_inner(req, deadline)).await
    }

    async fn get_inner(self: &Arc<Self>, req: ReadRequest, deadline: Instant) -> Result<ReadOutcome> {
        let props = self.buckets.get(&req.bucket);
        let plan = self.plan("read", req.quorum, self.cluster.zone(), &props, &req.bucket, &req.key)?;
        let mut tally = Tally::new(&plan);
        let (partition, replicas) = (plan.partition, &plan.replicas);
        let mut answers: Vec<(NodeId, Option<Object>)> = Vec::with_capacity(replicas.len());
        let (tx, mut rx) = mpsc::unbounded_channel();
        // The local copy (a few microseconds) is read before the remote
        // reads start, so it is always the first answer.
        if replicas.contains(&self.node_id) {
            let _ = tx.send((self.node_id.clone(), self.objects.read(partition, &req.bucket, &req.key)));
        }
        for r in replicas.iter().filter(|r| **r != self.node_id) {
            self.spawn_remote_read(r.clone(), &req, plan.epoch, deadline, tx.clone());
        }
        drop(tx);
        while !tally.satisfied() && tally.answered() < replicas.len() {
            let Some((node, answer)) = rx.recv().await else { break };
            match answer {
                Ok(object) => {
                    tally.ok(node.clone());
                    answers.push((node, object));
                }
                Err(e) => tally.failures.push(format!("{node}: {e}")),
            }
        }
        if !tally.satisfied() {
            self.metrics.read_quorum_failures.increment(1);
            return Err(tally.unavailable("read"));
        }
        let merged = answers.iter().filter_map(|(_, o)| o.as_ref()).fold(Object::new(), |acc, o| acc.merged(o));
        self.repair_in_background(&plan, &req, merged.clone(), answers, rx);
        let mut out = ReadOutcome { object: merged, replicas: tally.ok, resolved: None };
        if let Some((content, by)) = self.resolve_siblings(&req, &props, &out.object).await {
            if self.plugins.runtime().config().write_back_resolved {
                match self.write_back(&plan, &req, &out.object, content.clone(), deadline).await {
                    // Hand out the written-back object only if nothing else
                    // slipped in: its context must not cover a sibling the
                    // reader has not seen.
                    Some(written) if written.siblings().len() == 1 => out.object = written,
                    _ => {}
                }
            }
            out.resolved = Some((content, by));
        }
        Ok(out)
    }

    fn spawn_remote_read(
        &self,
        node: NodeId,
        req: &ReadRequest,
        ring_epoch: u64,
        deadline: Instant,
        tx: mpsc::UnboundedSender<(NodeId, Result<Option<Object>>)>,
    ) {
        let cluster = Arc::clone(&self.cluster);
        let key = pb::ObjectKey { bucket: req.bucket.clone(), key: req.key.clone().into() };
        tokio::spawn(async move {
            let result = async {
                let addr = cluster.addr_of(&node).ok_or_else(|| Error::internal("address unknown"))?;
                let started = Instant::now();
                let r = cluster.net().replica_read_one(addr, key, ring_epoch, deadline).await;
                metrics::histogram!("concord_replica_request_duration_seconds", "peer" => node.clone(), "op" => "read")
                    .record(started.elapsed().as_secs_f64());
                let bytes = r.map_err(|e| Error::Remote(tonic::Status::unavailable(e)))?;
                if bytes.is_empty() { Ok(None) } else { Ok(Some(decode_object(&bytes)?)) }
            }
            .await;
            let _ = tx.send((node, result));
        });
    }

    /// Sends the merged object to replicas that answered with less, now and
    /// as late answers arrive.
    fn repair_in_background(
        self: &Arc<Self>,
        plan: &Plan,
        req: &ReadRequest,
        merged: Object,
        answers: Vec<(NodeId, Option<Object>)>,
        mut late: mpsc::UnboundedReceiver<(NodeId, Result<Option<Object>>)>,
    ) {
        if merged.context().is_empty() && answers.iter().all(|(_, o)| o.is_none()) && late.is_closed() {
            return;
        }
        let this = Arc::clone(self);
        let (bucket, key, partition, epoch) = (req.bucket.clone(), req.key.clone(), plan.partition, plan.epoch);
        tokio::spawn(async move {
            let stale = |o: &Option<Object>| o.as_ref() != Some(&merged);
            let mut targets: Vec<NodeId> = answers.iter().filter(|(_, o)| stale(o)).map(|(n, _)| n.clone()).collect();
            while let Some((node, answer)) = late.recv().await {
                if let Ok(o) = answer
                    && stale(&o)
                {
                    targets.push(node);
                }
            }
            if merged.siblings().is_empty() && merged.context().is_empty() {
                return;
            }
            // Encoded once for every stale replica, like a write.
            let mut encoded: Option<bytes::Bytes> = None;
            for node in targets {
                this.metrics.read_repairs.increment(1);
                let repaired = if node == this.node_id {
                    this.objects.merge(partition, &bucket, &key, &merged).map(drop)
                } else {
                    let object = encoded.get_or_insert_with(|| encode_object(&merged).into()).clone();
                    this.send_encoded(&node, &bucket, &key, object, epoch, Instant::now() + REPAIR_TIMEOUT).await
                };
                if let Err(e) = repaired {
                    // Not lost: the next read of the key repairs it again.
                    this.metrics.read_repair_failures.increment(1);
                    tracing::debug!(replica = %node, error = %e, "read repair failed");
                }
            }
        });
    }

    /// Sends an encoded object to one replica (batched with other writes to
    /// the same peer), which merges it.
    async fn send_encoded(
        &self,
        node: &str,
        bucket: &str,
        key: &[u8],
        object: bytes::Bytes,
        ring_epoch: u64,
        deadline: Instant,
    ) -> Result<()> {
        let addr = self.cluster.addr_of(node).ok_or_else(|| Error::internal(format!("address of {node} unknown")))?;
        let write = pb::ReplicaWrite {
            key: Some(pb::ObjectKey { bucket: bucket.to_owned(), key: key.to_vec().into() }),
            object,
            hint_for: String::new(),
        };
        let started = Instant::now();
        let r = self.cluster.net().replica_write_one(addr, write, ring_epoch, deadline).await;
        metrics::histogram!("concord_replica_request_duration_seconds", "peer" => node.to_owned(), "op" => "write")
            .record(started.elapsed().as_secs_f64());
        r.map_err(|e| Error::Remote(tonic::Status::unavailable(e)))
    }

    /// Runs the bucket's resolver on a read's siblings (and its shadow, in
    /// the background).
    async fn resolve_siblings(
        self: &Arc<Self>,
        req: &ReadRequest,
        props: &BucketProps,
        object: &Object,
    ) -> Option<(Content, Arc<str>)> {
        let has_resolver = props.resolver.is_some() || props.shadow_resolver.is_some();
        if !has_resolver || object.live_siblings().nth(1).is_none() {
            return None;
        }
        let resolved = self.plugins.resolve(&req.bucket, props, &req.key, object.siblings(), ResolveFor::Read).await?;
        Some((content_of(resolved.resolution)?, resolved.by))
    }

    /// Stores a resolved value over the siblings it merged, so later reads
    /// find one sibling, and spreads it to the other replicas in the
    /// background. Only a replica writes back, and only if its copy is
    /// still what was read: concurrent readers of one conflict write it back
    /// once. The resolution is deterministic, so a write-back that does not
    /// happen only means a later read resolves again.
    async fn write_back(
        self: &Arc<Self>,
        plan: &Plan,
        req: &ReadRequest,
        read: &Object,
        content: Content,
        deadline: Instant,
    ) -> Option<Object> {
        if !plan.replicas.contains(&self.node_id) {
            return None;
        }
        let written = self
            .objects
            .replace_if_unchanged(plan.partition, &req.bucket, &req.key, read, content, crate::now_ms())
            .map_err(|e| tracing::debug!(error = %e, "writing back a resolved value failed"))
            .ok()??;
        let encoded: bytes::Bytes = encode_object(&written).into();
        for r in plan.replicas.iter().filter(|r| **r != self.node_id) {
            let (this, r, bucket, key, encoded) =
                (Arc::clone(self), r.clone(), req.bucket.clone(), req.key.clone(), encoded.clone());
            let epoch = plan.epoch;
            tokio::spawn(async move { this.send_encoded(&r, &bucket, &key, encoded, epoch, deadline).await });
        }
        Some(written)
    }

    /// Writes a value or a tombstone.
    pub async fn put(self: &Arc<Self>, req: WriteRequest) -> Result<WriteOutcome> {
        let timeout = req.timeout.unwrap_or(self.default_timeout);
        let deadline = Instant::now() + timeout;
        with_deadline(timeout, self.put_inner(req, deadline, false)).await
    }

    /// Coordinates a write another node forwarded here; never forwards it.
    pub async fn put_forwarded(self: &Arc<Self>, req: WriteRequest) -> Result<WriteOutcome> {
        let timeout = req.timeout.unwrap_or(self.default_timeout);
        let deadline = Instant::now() + timeout;
        with_deadline(timeout, self.put_inner(req, deadline, true)).await
    }

    async fn put_inner(
        self: &Arc<Self>,
        req: WriteRequest,
        deadline: Instant,
        forwarded: bool,
    ) -> Result<WriteOutcome> {
        let props = self.buckets.get(&req.bucket);
        let zone = req.zone.as_deref().unwrap_or(self.cluster.zone());
        let plan = self.plan("write", req.quorum, zone, &props, &req.bucket, &req.key)?;
        let (partition, replicas) = (plan.partition, &plan.replicas);
        if !replicas.contains(&self.node_id) {
            if forwarded {
                // The forwarder's ring and ours disagree: a ring change is
                // under way. Counting our own ack would let a write reach
                // "w" with fewer real replicas.
                return Err(Error::NotReady(format!(
                    "this node does not hold the key at ring epoch {}; the ring is changing, retry",
                    self.cluster.ring().epoch()
                )));
            }
            return self.forward(req, replicas, deadline).await;
        }
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
            && let Some(r) =
                self.plugins.resolve(&req.bucket, &props, &req.key, object.siblings(), ResolveFor::Write).await
            && let Some(content) = content_of(r.resolution)
        {
            object = update(&object.context().clone(), content)?;
            resolved_by = Some(r.by);
        }
        let acked_by = self.replicate(&req, &plan, &object, deadline).await?;
        Ok(WriteOutcome { object, acked_by, sloppy: false, resolved_by })
    }

    /// Makes the local write durable and sends it to the other replicas;
    /// returns once enough have acknowledged. The rest finish in the
    /// background.
    async fn replicate(
        self: &Arc<Self>,
        req: &WriteRequest,
        plan: &Plan,
        object: &Object,
        deadline: Instant,
    ) -> Result<Vec<NodeId>> {
        let (replicas, epoch) = (&plan.replicas, plan.epoch);
        let mut tally = Tally::new(plan);
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Encoded once, shared by every replica's request.
        let encoded: bytes::Bytes = encode_object(object).into();
        for r in replicas.iter().filter(|r| **r != self.node_id) {
            let (this, r, tx) = (Arc::clone(self), r.clone(), tx.clone());
            let (bucket, key, encoded) = (req.bucket.clone(), req.key.clone(), encoded.clone());
            tokio::spawn(async move {
                let result = this.send_encoded(&r, &bucket, &key, encoded, epoch, deadline).await;
                let _ = tx.send((r, result));
            });
        }
        drop(tx);
        match self.objects.sync().await {
            Ok(()) => tally.ok(self.node_id.clone()),
            Err(e) => tally.failures.push(format!("{}: {e}", self.node_id)),
        }
        while !tally.satisfied() && tally.answered() < replicas.len() {
            let Some((node, result)) = rx.recv().await else { break };
            match result {
                Ok(()) => tally.ok(node),
                Err(e) => tally.failures.push(format!("{node}: {e}")),
            }
        }
        if !tally.satisfied() {
            self.metrics.write_quorum_failures.increment(1);
            return Err(tally.unavailable("write"));
        }
        Ok(tally.ok)
    }

    /// Hands a write to the first replica that takes it. Another replica
    /// is tried only when the call provably never reached the previous one
    /// (the connection failed): after a timeout the write may have been
    /// applied, and applying it again elsewhere would duplicate it.
    async fn forward(
        self: &Arc<Self>,
        req: WriteRequest,
        replicas: &[NodeId],
        deadline: Instant,
    ) -> Result<WriteOutcome> {
        self.metrics.forwarded.increment(1);
        let members = self.cluster.members();
        let mut failures = Vec::new();
        // Live replicas first, in preference order; then the rest, in case
        // gossip is behind.
        let mut order: Vec<&NodeId> = replicas.iter().filter(|r| members.is_live(r)).collect();
        order.extend(replicas.iter().filter(|r| !members.is_live(r)));
        let unavailable =
            |detail: String| Error::Unavailable { op: "write", needed: 1, got: 0, total: replicas.len(), detail };
        for r in order {
            let Some(addr) = self.cluster.addr_of(r) else {
                failures.push(format!("{r}: address unknown"));
                continue;
            };
            // The replica gets less time than this call, so its own answer
            // (a quorum failure, say) arrives before this call gives up.
            let zone = req.zone.as_deref().unwrap_or(self.cluster.zone());
            let fwd = wire::forward_request(&req, zone, remaining(deadline).saturating_sub(FORWARD_MARGIN));
            let answer = self
                .cluster
                .net()
                .call(addr, remaining(deadline), |mut c| async move { c.forward_write(fwd).await })
                .await;
            match answer {
                Ok(r) => return wire::outcome_from_reply(r),
                Err(crate::net::NetError::Status { status, .. }) if crate::net::never_delivered(&status) => {
                    failures.push(format!("{r}: {}", status.message()));
                }
                // A transport failure after connecting: the request may
                // have arrived.
                Err(crate::net::NetError::Status { status, .. }) if std::error::Error::source(&status).is_some() => {
                    return Err(unavailable(format!(
                        "; the connection to {r}, which the write was handed to, failed during the call ({}); it may \
                         have applied the write",
                        status.message()
                    )));
                }
                // The replica's own answer (its quorum failure, say).
                Err(crate::net::NetError::Status { status, .. }) => return Err(Error::Remote(status)),
                Err(e @ crate::net::NetError::Timeout(_)) => {
                    return Err(unavailable(format!(
                        "; {r}, which the write was handed to, did not answer in time ({e}); it may have applied it"
                    )));
                }
            }
        }
        Err(unavailable(format!("; no replica of this key could be reached: {}", failures.join("; "))))
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
        let r = self.plugins.resolve(&req.bucket, props, &req.key, &candidates, ResolveFor::Write).await?;
        let content = content_of(r.resolution)?;
        let mut context = stored.context().clone();
        context.merge(&req.context);
        Some((content, context, r.by))
    }
}

/// What a resolution means for the stored object: a value, a tombstone,
/// or nothing (keep the siblings).
fn content_of(r: Resolution) -> Option<Content> {
    match r {
        Resolution::Resolved(v) => Some(Content::Value(v)),
        Resolution::Delete => Some(Content::Tombstone),
        Resolution::KeepSiblings => None,
    }
}

/// How long a read repair may take to reach a replica.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a forwarded write leaves for the forwarder to hear the answer.
const FORWARD_MARGIN: Duration = Duration::from_millis(50);

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))
}

/// Extra time the whole request gets over its peer calls, so that a quorum
/// that is not reached in time reports UNAVAILABLE (with who answered)
/// rather than a bare deadline.
const GRACE: Duration = Duration::from_millis(100);

async fn with_deadline<T>(deadline: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(deadline + GRACE, f).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout(deadline.as_millis() as u64)),
    }
}
