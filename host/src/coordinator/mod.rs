//! The request paths: get, put and delete, from checked input to replicas
//! and back.
//!
//! A coordinator takes a request that [`crate::api`] has already checked
//! (names, sizes, context token, validators), finds the key's replicas on
//! the ring, and talks to them through [`crate::net`]:
//!
//! * **put/delete** must be coordinated by a replica, because the new
//!   sibling's dot names the coordinating replica. A node that is not one
//!   forwards the write to the first live replica ([`forward`]). The
//!   coordinator applies the write locally, sends the resulting object to
//!   the other replicas in parallel (they merge it), and answers once the
//!   requested number have acknowledged; its own copy counts once flushed
//!   (and only while no live peer announces a newer ring), and the flush
//!   runs beside the remote calls. Stragglers finish in the background.
//! * **sloppy quorum**: a replica that gossip says is down, that fails, or
//!   that has not answered halfway to the deadline is replaced by the next
//!   live node past the preference list (a *fallback*), which keeps the
//!   write as a hint for it. Fallback acks count towards `w`, never `pw`,
//!   and the reply names them. A replica write that fails leaves a hint on
//!   the coordinator too ([`crate::handoff`] delivers both).
//! * **get** can be coordinated by any node: it asks every replica (a
//!   fallback instead of a replica that is down), merges the first `r`
//!   answers, and answers. Afterwards it keeps merging the answers that
//!   arrive until the deadline and sends the result to every replica that
//!   holds less (read repair, [`repair`]). Siblings left after the merge go
//!   to the bucket's resolver, if any.
//!
//! Every request runs under one deadline; peer calls get what is left of it.
//! Fewer answers than needed is [`Error::Unavailable`], saying how many of
//! how many answered and why the others did not. A node that has not yet
//! received the cluster's ring serves nothing (`Error::NotReady`).

mod forward;
pub mod quorum;
mod repair;
pub mod tally;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use concord_proto::v1 as pb;
use metrics::{Counter, Histogram};
use tokio::sync::mpsc;

pub use quorum::{Consistency, Needed, QuorumSpec};
use tally::{Answer, Plan, Tally};

use crate::buckets::{BucketProps, Buckets, ResolveOn};
use crate::causal::{Content, Dot, Object, Sibling, VersionVector};
use crate::cluster::Cluster;
use crate::handoff::{HintKey, HintStore};
use crate::plugins::{Plugins, Resolution, ResolveFor, Unresolved};
use crate::ring::NodeId;
use crate::storage::codec::decode_object;
use crate::storage::{ObjectStore, Pool};
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
    /// Whether fallbacks may answer for replicas that are down; `None` for
    /// the bucket's setting.
    pub sloppy: Option<bool>,
}

/// What a read found.
#[derive(Clone, Debug)]
pub struct ReadOutcome {
    /// The merged object (empty when no replica had the key).
    pub object: Object,
    /// Nodes whose answers were merged.
    pub replicas: Vec<NodeId>,
    /// Set when the bucket's resolver merged the siblings: what it decided
    /// (a value or a tombstone) and who decided. The object's context still
    /// covers every sibling, so a write with it supersedes them all.
    pub resolved: Option<(Content, Arc<str>)>,
    /// Set when the bucket's resolver ran but left the siblings: why.
    pub unresolved: Option<Unresolved>,
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
    /// Whether fallbacks may stand in for replicas that are down; `None`
    /// for the bucket's setting.
    pub sloppy: Option<bool>,
}

/// What a write did.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// The object as stored by the coordinating replica after the write.
    pub object: Object,
    /// Nodes that acknowledged, fallbacks included.
    pub acked_by: Vec<NodeId>,
    /// The acks that came from fallbacks: `(fallback, replica it stood in
    /// for)`.
    pub fallbacks: Vec<(NodeId, NodeId)>,
    /// Resolver that merged siblings during the write, if one did.
    pub resolved_by: Option<Arc<str>>,
}

impl WriteOutcome {
    /// Whether a fallback stood in for a replica.
    pub fn sloppy(&self) -> bool {
        !self.fallbacks.is_empty()
    }
}

/// Settings of the request paths.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Deadline of a request that names none.
    pub default_timeout: Duration,
    /// Whether reads repair replicas that answered with less.
    pub read_repair: bool,
}

/// Metric handles of the request paths.
struct Metrics {
    forwarded: Counter,
    read_quorum_failures: Counter,
    write_quorum_failures: Counter,
    read_repairs: Counter,
    read_repair_failures: Counter,
    sloppy_writes: Counter,
    replica_latency: PeerLatency,
}

/// `concord_replica_request_duration_seconds` by peer, for reads and
/// writes: registered once per peer, not looked up (and its label
/// allocated) on every call.
#[derive(Default)]
struct PeerLatency(std::sync::RwLock<std::collections::HashMap<NodeId, [Histogram; 2]>>);

impl PeerLatency {
    fn of(&self, peer: &str, op: ReplicaOp) -> Histogram {
        if let Some(h) = self.0.read().unwrap_or_else(|p| p.into_inner()).get(peer) {
            return h[op as usize].clone();
        }
        let mut all = self.0.write().unwrap_or_else(|p| p.into_inner());
        let h = all.entry(peer.to_owned()).or_insert_with(|| {
            let name = "concord_replica_request_duration_seconds";
            [
                metrics::histogram!(name, "peer" => peer.to_owned(), "op" => "read"),
                metrics::histogram!(name, "peer" => peer.to_owned(), "op" => "write"),
            ]
        });
        h[op as usize].clone()
    }
}

/// What a replica call did, for [`PeerLatency`].
#[derive(Clone, Copy)]
enum ReplicaOp {
    Read = 0,
    Write = 1,
}

/// Coordinates requests on one node.
pub struct Coordinator {
    node_id: NodeId,
    objects: Arc<ObjectStore>,
    buckets: Arc<Buckets>,
    cluster: Arc<Cluster>,
    plugins: Arc<Plugins>,
    /// Where replica writes that fail leave hints; `None` with hinted
    /// handoff off (and then no fallbacks are used either: nothing would
    /// deliver what they hold).
    hints: Option<Arc<HintStore>>,
    /// Where local storage calls run (never on a tokio worker).
    pool: Arc<Pool>,
    default_timeout: Duration,
    read_repair: bool,
    metrics: Metrics,
}

impl Coordinator {
    /// Wires a coordinator.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        objects: Arc<ObjectStore>,
        buckets: Arc<Buckets>,
        cluster: Arc<Cluster>,
        plugins: Arc<Plugins>,
        hints: Option<Arc<HintStore>>,
        pool: Arc<Pool>,
        config: CoordinatorConfig,
    ) -> Arc<Self> {
        let metrics = Metrics {
            forwarded: metrics::counter!("concord_forwarded_requests_total"),
            read_quorum_failures: metrics::counter!("concord_quorum_failures_total", "op" => "read"),
            write_quorum_failures: metrics::counter!("concord_quorum_failures_total", "op" => "write"),
            read_repairs: metrics::counter!("concord_read_repairs_total"),
            read_repair_failures: metrics::counter!("concord_read_repair_failures_total"),
            sloppy_writes: metrics::counter!("concord_sloppy_writes_total"),
            replica_latency: PeerLatency::default(),
        };
        Arc::new(Self {
            node_id,
            objects,
            buckets,
            cluster,
            plugins,
            hints,
            pool,
            default_timeout: config.default_timeout,
            read_repair: config.read_repair,
            metrics,
        })
    }

    /// The bucket table requests are checked against.
    pub fn buckets(&self) -> &Arc<Buckets> {
        &self.buckets
    }

    /// The cluster this node coordinates for.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
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

    /// The replicas of a key, the fallbacks that may stand in for them, and
    /// what a request of `op` needs; `zone` is the client's, for
    /// `LOCAL_QUORUM`.
    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        op: &'static str,
        spec: QuorumSpec,
        sloppy: Option<bool>,
        zone: &str,
        props: &BucketProps,
        bucket: &str,
        key: &[u8],
    ) -> Result<Plan> {
        let ring = self.cluster.ring();
        let partition = ring.partition_of(bucket, key);
        let replicas = ring.preference_list(partition, props.n as usize);
        let members = self.cluster.members();
        // The full preference order continues the replicas' (its first n
        // are the replicas): the nodes after them are the fallbacks.
        let fallbacks = if self.hints.is_some()
            && sloppy.unwrap_or(props.sloppy)
            && ring.members().len() > replicas.len()
        {
            ring.preference_list(partition, ring.members().len())
                .into_iter()
                .skip(replicas.len())
                .filter(|f| members.peers.get(f).is_some_and(|p| p.live && p.status != crate::cluster::Status::Leaving))
                .collect()
        } else {
            Vec::new()
        };
        let in_zone =
            |r: &NodeId| if *r == self.node_id { self.cluster.zone() == zone } else { members.zone(r) == Some(zone) };
        let local: Vec<NodeId> = replicas.iter().chain(&fallbacks).filter(|r| in_zone(r)).cloned().collect();
        let local_replicas = replicas.iter().filter(|r| in_zone(r)).count();
        let default = if op == "read" { props.r() } else { props.w() };
        let needed = quorum::needed(op, spec, props.n, default, replicas.len(), local_replicas)?;
        Ok(Plan { epoch: ring.epoch(), partition, replicas, fallbacks, local, needed })
    }

    /// Reads a key from its replicas.
    pub async fn get(self: &Arc<Self>, req: ReadRequest) -> Result<ReadOutcome> {
        let timeout = req.timeout.unwrap_or(self.default_timeout);
        let deadline = Instant::now() + timeout;
        with_deadline(timeout, self.get_inner(req, deadline)).await
    }

    async fn get_inner(self: &Arc<Self>, req: ReadRequest, deadline: Instant) -> Result<ReadOutcome> {
        if !self.cluster.is_ready() {
            return Err(self.cluster.not_ready());
        }
        let props = self.buckets.get(&req.bucket);
        let plan = self.plan("read", req.quorum, req.sloppy, self.cluster.zone(), &props, &req.bucket, &req.key)?;
        let mut tally = Tally::new(&plan);
        let (tx, mut rx) = mpsc::unbounded_channel();
        for (node, replica) in self.read_targets(&plan) {
            tally.sent();
            self.read_copy(node, replica, &plan, plan.epoch, &req, deadline, &tx);
        }
        drop(tx);
        // Nodes still handing the partition to its new replicas hold keys
        // those may not have yet: they are asked too (without a ring check:
        // they no longer replicate it), and waited for, but never counted.
        let (former_tx, mut former_rx) = mpsc::unbounded_channel();
        let former = self.former_owners(&plan);
        for node in &former {
            self.read_copy(node.clone(), node.clone(), &plan, 0, &req, deadline, &former_tx);
        }
        drop(former_tx);
        let mut answers = Vec::with_capacity(plan.replicas.len() + former.len());
        while !tally.satisfied() && tally.waiting() > 0 {
            let Some(a) = rx.recv().await else { break };
            tally.answered(&a);
            if let Ok(copy) = a.result {
                answers.push((a.node, a.replica, copy));
            }
        }
        if !tally.satisfied() {
            self.metrics.read_quorum_failures.increment(1);
            return Err(tally.unavailable("read"));
        }
        // A former owner that is paused or cut off must not eat the whole
        // deadline: a quarter of what is left stays for resolving and
        // writing back.
        let until = Instant::now() + deadline.saturating_duration_since(Instant::now()) * 3 / 4;
        while let Ok(Some(a)) = tokio::time::timeout_at(until, former_rx.recv()).await {
            if let Ok(copy @ Some(_)) = a.result {
                // Merged and passed on by read repair, never repaired.
                answers.push((a.node, String::new(), copy));
            }
        }
        let merged = answers.iter().filter_map(|(_, _, o)| o.as_ref()).fold(Object::new(), |acc, o| acc.merged(o));
        self.repair_in_background(&plan, &req, answers, rx);
        let mut out = ReadOutcome { object: merged, replicas: tally.ok, resolved: None, unresolved: None };
        match self.resolve_siblings(&req, &props, &out.object).await {
            None => {}
            Some(Err(why)) => out.unresolved = Some(why),
            Some(Ok((content, by))) => {
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
        }
        Ok(out)
    }

    /// Who a read asks, as `(node, replica it answers for)`: each replica,
    /// or a fallback in place of one that is down. Local copies come first,
    /// so their reads start before any remote call (on a storage thread
    /// they may still answer after a peer does).
    fn read_targets(&self, plan: &Plan) -> Vec<(NodeId, NodeId)> {
        let members = self.cluster.members();
        let mut spares = plan.fallbacks.iter();
        let mut targets: Vec<(NodeId, NodeId)> = plan
            .replicas
            .iter()
            .map(|r| {
                let down = *r != self.node_id && !members.is_live(r);
                match if down { spares.next() } else { None } {
                    Some(f) => (f.clone(), r.clone()),
                    None => (r.clone(), r.clone()),
                }
            })
            .collect();
        targets.sort_by_key(|(node, _)| *node != self.node_id);
        targets
    }

    /// Live nodes that announce they are still handing the plan's
    /// partition to its new replicas, this one included.
    fn former_owners(&self, plan: &Plan) -> Vec<NodeId> {
        let members = self.cluster.members();
        members
            .peers
            .values()
            .filter(|p| p.live && p.transferring.contains(&plan.partition) && !plan.replicas.contains(&p.node_id))
            .map(|p| p.node_id.clone())
            .collect()
    }

    /// Reads one copy: this node's own (or the hint it holds for
    /// `replica`) at once, a peer's in a spawned task; `epoch` is the ring
    /// epoch the peer checks (0: none).
    #[allow(clippy::too_many_arguments)]
    fn read_copy(
        &self,
        node: NodeId,
        replica: NodeId,
        plan: &Plan,
        epoch: u64,
        req: &ReadRequest,
        deadline: Instant,
        tx: &mpsc::UnboundedSender<Answer<Option<Object>>>,
    ) {
        let partition = plan.partition;
        if node == self.node_id {
            let (objects, hints) = (Arc::clone(&self.objects), self.hints.clone());
            let key = HintKey { target: replica.clone(), partition, bucket: req.bucket.clone(), key: req.key.clone() };
            let own = node == replica;
            let read = move || {
                if own {
                    objects.read(partition, &key.bucket, &key.key)
                } else {
                    hints.as_ref().map_or(Ok(None), |h| h.get(&key))
                }
            };
            if self.pool.is_inline() {
                let _ = tx.send(Answer { node, replica, result: read() });
                return;
            }
            let (pool, tx) = (Arc::clone(&self.pool), tx.clone());
            tokio::spawn(async move {
                let result = pool.run(read).await;
                let _ = tx.send(Answer { node, replica, result });
            });
            return;
        }
        let cluster = Arc::clone(&self.cluster);
        let key = pb::ObjectKey { bucket: req.bucket.clone(), key: req.key.clone().into() };
        let tx = tx.clone();
        let latency = self.metrics.replica_latency.of(&node, ReplicaOp::Read);
        tokio::spawn(async move {
            let result = async {
                let addr = cluster.addr_of(&node).ok_or_else(|| Error::internal("address unknown"))?;
                let hint_for = if node == replica { String::new() } else { replica.clone() };
                let started = Instant::now();
                let r = cluster.net().replica_read_one(addr, key, hint_for, epoch, deadline).await;
                latency.record(started.elapsed().as_secs_f64());
                let bytes = r.map_err(|e| Error::Remote(tonic::Status::unavailable(e)))?;
                if bytes.is_empty() { Ok(None) } else { Ok(Some(decode_object(&bytes)?)) }
            }
            .await;
            let _ = tx.send(Answer { node, replica, result });
        });
    }

    /// Sends an encoded object to one node (batched with other writes to
    /// the same peer), which merges it; with `hint_for`, the node is a
    /// fallback and keeps it as a hint for that replica.
    #[allow(clippy::too_many_arguments)]
    async fn send_encoded(
        &self,
        node: &str,
        bucket: &str,
        key: &[u8],
        object: bytes::Bytes,
        ring_epoch: u64,
        deadline: Instant,
        hint_for: Option<&str>,
    ) -> Result<()> {
        let addr = self.cluster.addr_of(node).ok_or_else(|| Error::internal(format!("address of {node} unknown")))?;
        let write = pb::ReplicaWrite {
            key: Some(pb::ObjectKey { bucket: bucket.to_owned(), key: key.to_vec().into() }),
            object,
            hint_for: hint_for.unwrap_or_default().to_owned(),
        };
        let started = Instant::now();
        let r = self.cluster.net().replica_write_one(addr, write, ring_epoch, deadline).await;
        self.metrics.replica_latency.of(node, ReplicaOp::Write).record(started.elapsed().as_secs_f64());
        r.map_err(|e| Error::Remote(tonic::Status::unavailable(e)))
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
        if !self.cluster.is_ready() {
            return Err(self.cluster.not_ready());
        }
        let props = self.buckets.get(&req.bucket);
        let zone = req.zone.as_deref().unwrap_or(self.cluster.zone());
        let plan = self.plan("write", req.quorum, req.sloppy, zone, &props, &req.bucket, &req.key)?;
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
        let update = |context: VersionVector, content: Content| {
            let (objects, bucket, key) = (Arc::clone(&self.objects), req.bucket.clone(), req.key.clone());
            self.pool
                .run(move || objects.update_encoded(partition, &bucket, &key, &context, content, now, max_siblings))
        };
        let mut resolved_by = None;
        let (mut object, mut encoded) = match update(req.context.clone(), req.content.clone()).await {
            Err(Error::SiblingLimit { limit, siblings, object }) => {
                // Over budget: let the resolver merge the stored siblings and
                // the new value into one write that covers them all.
                let Some((content, context, by)) = self.resolve_over_budget(&req, &props, &object, now).await else {
                    return Err(Error::SiblingLimit { limit, siblings, object });
                };
                resolved_by = Some(by);
                update(context, content).await?
            }
            other => other?,
        };
        if props.resolve_on == ResolveOn::Write
            && object.siblings().len() > 1
            && let Some(Ok(r)) =
                self.plugins.resolve(&req.bucket, &props, &req.key, object.siblings(), ResolveFor::Write).await
            && let Some(content) = content_of(r.resolution)
        {
            (object, encoded) = update(object.context().clone(), content).await?;
            resolved_by = Some(r.by);
        }
        let tally = self.replicate(&req, &plan, &object, encoded.into(), deadline).await?;
        if !tally.fallbacks.is_empty() {
            self.metrics.sloppy_writes.increment(1);
        }
        Ok(WriteOutcome { object, acked_by: tally.ok, fallbacks: tally.fallbacks, resolved_by })
    }

    /// Makes the local write durable and sends it to the other replicas (or
    /// fallbacks for those that are down); returns once enough have
    /// acknowledged. The rest finish in the background.
    async fn replicate(
        self: &Arc<Self>,
        req: &WriteRequest,
        plan: &Plan,
        object: &Object,
        encoded: bytes::Bytes,
        deadline: Instant,
    ) -> Result<Tally> {
        let mut tally = Tally::new(plan);
        let (tx, mut rx) = mpsc::unbounded_channel::<Answer<()>>();
        // This replica's copy counts once it is durable. The flush runs
        // beside the remote calls, so a slow local disk does not hold up a
        // quorum the other replicas can make. While a peer announces a newer
        // ring than the plan's, this node may no longer be a replica of the
        // key: its copy is kept (a transfer or anti-entropy takes it on) but
        // does not count, as a peer would refuse a write its newer ring does
        // not give it. Otherwise a delete at R=ALL on the new replicas could
        // miss a write acknowledged here alone.
        let members = self.cluster.members();
        let stale = members.newer_ring(plan.epoch).map(|(peer, epoch)| {
            format!(
                "its ring (epoch {}) is older than {peer}'s (epoch {epoch}); its own copy does not count until it has \
                 the new ring",
                plan.epoch
            )
        });
        let (objects, me, local_tx) = (Arc::clone(&self.objects), self.node_id.clone(), tx.clone());
        tokio::spawn(async move {
            let result = match (objects.sync().await, stale) {
                (Ok(()), Some(why)) => Err(Error::NotReady(why)),
                (result, _) => result,
            };
            let _ = local_tx.send(Answer { node: me.clone(), replica: me, result });
        });
        tally.sent();
        // As stored here, shared by every replica's request.
        let mut spares = plan.fallbacks.clone().into_iter();
        let mut unanswered: Vec<NodeId> = Vec::new();
        for r in plan.replicas.iter().filter(|r| **r != self.node_id) {
            if members.is_live(r) {
                self.send_write(r.clone(), r.clone(), req, plan, &encoded, deadline, &tx);
                unanswered.push(r.clone());
            } else if let Some(f) = spares.next() {
                self.send_write(f, r.clone(), req, plan, &encoded, deadline, &tx);
            } else {
                // Down as far as gossip knows, and nobody to stand in: keep
                // the write for it here rather than wait on a dead node.
                self.keep_hint(self.hint_key(r, plan, req), plan.epoch, object.clone());
                tally.skipped(format!("{r}: down (a hint is kept for it)"));
                continue;
            }
            tally.sent();
        }
        // A replica that fails, or is still silent halfway to the deadline,
        // gets a fallback while the quorum still needs answers.
        let halfway = tokio::time::Instant::now() + remaining(deadline) / 2;
        let mut stood_in = false;
        while !tally.satisfied() && tally.waiting() > 0 {
            tokio::select! {
                a = rx.recv() => {
                    let Some(a) = a else { break };
                    tally.answered(&a);
                    unanswered.retain(|r| *r != a.node);
                    if a.result.is_err() && a.node != self.node_id && let Some(f) = spares.next() {
                        self.send_write(f, a.replica.clone(), req, plan, &encoded, deadline, &tx);
                        tally.sent();
                    }
                }
                _ = tokio::time::sleep_until(halfway), if !stood_in && spares.len() > 0 && !unanswered.is_empty() => {
                    stood_in = true;
                    for r in std::mem::take(&mut unanswered) {
                        let Some(f) = spares.next() else { break };
                        self.send_write(f, r, req, plan, &encoded, deadline, &tx);
                        tally.sent();
                    }
                }
            }
        }
        if !tally.satisfied() {
            self.metrics.write_quorum_failures.increment(1);
            return Err(tally.unavailable("write"));
        }
        Ok(tally)
    }

    /// Sends the write to `node` in a task, for `replica` (itself, or the
    /// replica it stands in for). A failed call leaves a hint for the
    /// replica on this node.
    #[allow(clippy::too_many_arguments)]
    fn send_write(
        self: &Arc<Self>,
        node: NodeId,
        replica: NodeId,
        req: &WriteRequest,
        plan: &Plan,
        encoded: &bytes::Bytes,
        deadline: Instant,
        tx: &mpsc::UnboundedSender<Answer<()>>,
    ) {
        let (this, tx, encoded) = (Arc::clone(self), tx.clone(), encoded.clone());
        let hint = self.hint_key(&replica, plan, req);
        let epoch = plan.epoch;
        tokio::spawn(async move {
            let hint_for = (node != replica).then_some(replica.as_str());
            let result =
                this.send_encoded(&node, &hint.bucket, &hint.key, encoded.clone(), epoch, deadline, hint_for).await;
            let failed = result.is_err();
            let _ = tx.send(Answer { node, replica, result });
            if failed && let Ok(object) = decode_object(&encoded) {
                this.keep_hint(hint, epoch, object);
            }
        });
    }

    /// Where a hint for `target` about this request's key goes.
    fn hint_key(&self, target: &str, plan: &Plan, req: &WriteRequest) -> HintKey {
        HintKey {
            target: target.to_owned(),
            partition: plan.partition,
            bucket: req.bucket.clone(),
            key: req.key.clone(),
        }
    }

    /// Keeps `object` on this node as a hint, in the background. Nothing
    /// waits for it: it is not an acknowledgement.
    fn keep_hint(self: &Arc<Self>, key: HintKey, epoch: u64, object: Object) {
        let Some(hints) = self.hints.clone() else { return };
        let pool = Arc::clone(&self.pool);
        tokio::spawn(async move {
            let target = key.target.clone();
            let added = {
                let hints = Arc::clone(&hints);
                pool.run(move || hints.add(&key, &object, epoch, crate::now_ms())).await
            };
            let kept = match added {
                Ok(()) => hints.sync().await,
                Err(e) => Err(e),
            };
            if let Err(e) = kept {
                tracing::warn!(%target, error = %e, "keeping a hint failed; anti-entropy will repair the replica");
            }
        });
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
        let r = self.plugins.resolve(&req.bucket, props, &req.key, &candidates, ResolveFor::Write).await?.ok()?;
        let content = content_of(r.resolution)?;
        let mut context = stored.context().clone();
        context.merge(&req.context);
        Some((content, context, r.by))
    }
}

/// What a resolution means for the stored object: a value, a tombstone,
/// or nothing (keep the siblings).
pub(super) fn content_of(r: Resolution) -> Option<Content> {
    match r {
        Resolution::Resolved(v) => Some(Content::Value(v)),
        Resolution::Delete => Some(Content::Tombstone),
        Resolution::KeepSiblings => None,
    }
}

pub(super) fn remaining(deadline: Instant) -> Duration {
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
