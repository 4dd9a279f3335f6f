//! Anti-entropy: replicas compare hash trees on a schedule and exchange
//! only what differs, so every replica converges by itself, whatever it
//! missed (a hint past its window, a dropped message, a wiped disk); and
//! tombstones that every replica holds are reaped.
//!
//! ```text
//! every interval, for each peer that shares trees with this node:
//!   CompareTrees (one call, 32 trees)      equal trees: done
//!   for each differing tree: exchange::Peer::sync, both ways
//!   a tree exchanged with every other replica this round: "full exchange"
//! the first replica of a tree, after a full exchange, if the partition is
//! quiet (every member live, one ring, no hints, no transfer):
//!   ReapTombstones prepare at every replica   held exactly: confirmed
//!   confirmed in this round and the one before: commit everywhere
//! ```
//!
//! * [`tree`]: segments and key hashes, pure and property-tested. The trees
//!   themselves are kept by [`crate::storage::ObjectStore`], in the same
//!   batches as the objects.
//! * [`exchange`]: one exchange with one peer.
//! * [`AntiEntropy`]: the worker; [`reap`] its tombstone reaping.
//!
//! A tree is the keys of one partition whose buckets have the same `n`:
//! their replicas are the same nodes. Objects always merge (nothing is
//! overwritten), so an exchange can be interrupted or repeated safely.
//!
//! **Tombstones** are reaped only when an exchange round has confirmed
//! that every replica holds the very same tombstone, twice in a row (so
//! replica writes in flight at the first confirmation, which live at most a
//! request deadline, have landed), while no node holds hints for the
//! partition or is handing it over (either could bring back what the
//! tombstone superseded), every ring member is live and all agree on the
//! ring. Then each replica removes the tombstone only if it is still
//! exactly what was confirmed. There is no wall-clock grace period: a
//! replica that is down blocks reaping instead of being outwaited.

pub mod exchange;
mod reap;
pub mod tree;

pub use reap::transferring;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::buckets::Buckets;
use crate::cluster::Cluster;
use crate::handoff::HintStore;
use crate::net::Throttle;
use crate::ring::NodeId;
use crate::storage::ObjectStore;
use crate::{Error, Result};
use exchange::{Comparison, Direction, Outcome};

/// Settings of anti-entropy (`[antientropy]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AntiEntropyConfig {
    /// Whether replicas compare trees and exchange what differs.
    pub enabled: bool,
    /// Seconds between exchange rounds (each round compares every tree with
    /// every other replica of it).
    pub interval_secs: u64,
    /// Most bytes per second exchanges send and receive, together.
    pub rate_bytes_per_sec: u64,
    /// Whether tombstones every replica holds are removed.
    pub reap_tombstones: bool,
    /// Seconds between the first and the last confirmation that every
    /// replica holds a tombstone before it is removed: longer than any
    /// replica write or read repair can be in flight (the longest request
    /// deadline, 60 s, plus read repair's 5 s).
    pub reap_after_secs: u64,
    /// Hours between checks of every tree against the data it covers (which
    /// also catch corruption); 0 checks only after an unclean stop or a
    /// change of some bucket's `n`.
    pub verify_interval_hours: u64,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_secs: 60,
            rate_bytes_per_sec: 512 << 10,
            reap_tombstones: true,
            reap_after_secs: 75,
            verify_interval_hours: 168,
        }
    }
}

impl AntiEntropyConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.interval_secs == 0 {
            return Err(Error::invalid("antientropy.interval_secs must be at least 1"));
        }
        if self.rate_bytes_per_sec < 1024 {
            return Err(Error::invalid("antientropy.rate_bytes_per_sec must be at least 1024"));
        }
        Ok(())
    }
}

/// Trees compared per `CompareTrees` call.
const TREES_PER_CALL: usize = 32;
/// Segments checked against the data per verification step.
const VERIFY_STEP: usize = 256;

/// What the worker remembers.
#[derive(Default)]
struct State {
    /// When each tree this node replicates was last exchanged with every
    /// other replica of it.
    last_full: BTreeMap<(u32, u8), Instant>,
    /// Tombstones confirmed on every replica in the last round, by tree:
    /// storage key to object hash.
    candidates: BTreeMap<(u32, u8), reap::Confirmed>,
    /// Replica counts of the buckets when last looked at.
    replica_counts: Vec<(String, u32)>,
    /// Where a running check of trees against data is: the next
    /// `(partition, segment)`.
    verify: Option<(u32, u16)>,
    /// When the last full check finished.
    verified_at: Option<Instant>,
    totals: Totals,
}

/// Running totals, for status.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Tree exchanges that found differences and synced them.
    pub exchanges: u64,
    /// Objects sent or received by exchanges.
    pub keys_repaired: u64,
    /// Bytes exchanges moved.
    pub bytes: u64,
    /// Tombstones this node reaped as the first replica of their tree.
    pub reaped: u64,
    /// Tree entries a check against the data corrected.
    pub tree_fixes: u64,
}

/// Where anti-entropy stands on this node, for `concord cluster status`.
#[derive(Clone, Debug)]
pub struct Status {
    /// Trees this node is a replica of (with trusted trees).
    pub trees: usize,
    /// Partitions whose trees are being rebuilt after an unclean stop.
    pub rebuilding: usize,
    /// Of those, trees not yet exchanged with every other replica.
    pub never_exchanged: usize,
    /// Age of the oldest full exchange among the others.
    pub oldest_full_exchange: Option<Duration>,
    /// Objects that hold only tombstones, here.
    pub tombstones: u64,
    /// A check of trees against data under way: segments done, of how many.
    pub verifying: Option<(u64, u64)>,
    /// Totals since the node started.
    pub totals: Totals,
}

/// The anti-entropy worker of one node. See the module docs.
pub struct AntiEntropy {
    objects: Arc<ObjectStore>,
    cluster: Arc<Cluster>,
    buckets: Arc<Buckets>,
    hints: Arc<HintStore>,
    config: AntiEntropyConfig,
    throttle: Throttle,
    /// Held only for reads and updates, never across an await.
    state: Mutex<State>,
}

impl AntiEntropy {
    /// Wires the worker. Trees are checked against the data first with
    /// `verify_now` (the last run did not stop cleanly), and whenever some
    /// partition starts with untrusted trees: a clean stop saves only the
    /// trees it trusts, so a partition still being rebuilt when the node
    /// stopped cleanly starts untrusted again, and without a check now it
    /// would take no part in anti-entropy until the periodic one.
    pub fn new(
        objects: Arc<ObjectStore>,
        cluster: Arc<Cluster>,
        buckets: Arc<Buckets>,
        hints: Arc<HintStore>,
        config: AntiEntropyConfig,
        verify_now: bool,
    ) -> Arc<Self> {
        let state = State {
            verify: (verify_now || objects.untrusted() > 0).then_some((0, 0)),
            verified_at: Some(Instant::now()),
            replica_counts: replica_counts(&buckets),
            ..State::default()
        };
        Arc::new(Self {
            throttle: Throttle::new(config.rate_bytes_per_sec),
            objects,
            cluster,
            buckets,
            hints,
            config,
            state: Mutex::new(state),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs the worker until `stopped`.
    pub fn spawn(self: &Arc<Self>, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let interval = Duration::from_secs(this.config.interval_secs);
            loop {
                let started = Instant::now();
                if this.config.enabled && this.cluster.is_ready() {
                    this.round().await;
                }
                // Checking trees against data goes on between rounds, in
                // steps, so a round is never held up by it.
                while started.elapsed() < interval {
                    let checking = this.cluster.is_ready() && this.verify_step();
                    let pause = if checking { Duration::from_millis(20) } else { interval - started.elapsed() };
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
            }
        })
    }

    /// The trees this node replicates under the current ring, each with
    /// its replicas.
    fn owned(&self) -> Vec<((u32, u8), Vec<NodeId>)> {
        let ring = self.cluster.ring();
        let me = self.cluster.node_id();
        let mut ns: BTreeSet<u8> = self.buckets.replica_counts().into_iter().collect();
        ns.extend(self.objects.trees().into_iter().map(|(_, n)| n));
        let mut out = Vec::new();
        for p in 0..ring.partitions() {
            // Trees being rebuilt after an unclean stop say nothing yet.
            if !self.objects.trusted(p) {
                continue;
            }
            for &n in &ns {
                let replicas = ring.preference_list(p, n as usize);
                if replicas.iter().any(|r| r == me) {
                    out.push(((p, n), replicas));
                }
            }
        }
        out
    }

    /// One round: compare every tree with every other live replica, sync
    /// what differs, and reap where a full exchange allows it.
    pub async fn round(&self) {
        self.notice_replica_changes();
        let ring = self.cluster.ring();
        let members = self.cluster.members();
        let me = self.cluster.node_id().to_owned();
        let owned = self.owned();
        let mut by_peer: BTreeMap<NodeId, Vec<(u32, u8)>> = BTreeMap::new();
        for (tree, replicas) in &owned {
            for r in replicas.iter().filter(|r| **r != me) {
                by_peer.entry(r.clone()).or_default().push(*tree);
            }
        }
        let mut synced: BTreeMap<(u32, u8), BTreeSet<NodeId>> = BTreeMap::new();
        let mut round = Outcome::default();
        for (peer, trees) in by_peer {
            let Some(addr) = self.cluster.addr_of(&peer).filter(|_| members.is_live(&peer)) else { continue };
            let partner = exchange::Peer {
                objects: &self.objects,
                net: self.cluster.net(),
                throttle: &self.throttle,
                addr,
                ring_epoch: ring.epoch(),
                partitions: ring.partitions(),
            };
            for chunk in trees.chunks(TREES_PER_CALL) {
                let compared =
                    match exchange::compare(&self.objects, self.cluster.net(), addr, ring.epoch(), chunk).await {
                        Ok(c) => c,
                        Err(e) => {
                            metrics::counter!("concord_aae_exchanges_total", "result" => "failed").increment(1);
                            tracing::debug!(%peer, error = %e, "comparing trees failed");
                            break;
                        }
                    };
                for (&(p, n), comparison) in chunk.iter().zip(compared) {
                    match comparison {
                        Comparison::Equal => {
                            synced.entry((p, n)).or_default().insert(peer.clone());
                        }
                        Comparison::Differs(theirs) => {
                            match partner.sync(p, n, &theirs, Direction::Both, &mut |_, _: &exchange::Outcome| {}).await
                            {
                                Ok(o) => {
                                    synced.entry((p, n)).or_default().insert(peer.clone());
                                    round.add(o);
                                    self.counted(o);
                                }
                                Err(e) => {
                                    metrics::counter!("concord_aae_exchanges_total", "result" => "failed").increment(1);
                                    tracing::debug!(%peer, partition = p, n, error = %e, "an exchange failed");
                                }
                            }
                        }
                        Comparison::Refused(why) => {
                            tracing::debug!(%peer, partition = p, n, %why, "a peer did not compare a tree");
                        }
                    }
                }
            }
        }
        if round.sent + round.received > 0 {
            tracing::info!(
                segments = round.segments,
                sent = round.sent,
                received = round.received,
                bytes = round.bytes,
                "anti-entropy repaired differences"
            );
        }
        let now = Instant::now();
        let mut full = Vec::new();
        {
            let mut state = self.state();
            for (tree, replicas) in &owned {
                let done = synced.get(tree);
                if replicas.iter().filter(|r| **r != me).all(|r| done.is_some_and(|d| d.contains(r))) {
                    state.last_full.insert(*tree, now);
                    full.push((*tree, replicas.clone()));
                }
            }
            let owned_trees: BTreeSet<(u32, u8)> = owned.iter().map(|(t, _)| *t).collect();
            state.last_full.retain(|t, _| owned_trees.contains(t));
            state.candidates.retain(|t, _| owned_trees.contains(t));
        }
        if self.config.reap_tombstones {
            for ((p, n), replicas) in full {
                if replicas[0] != me {
                    continue;
                }
                match self.reap(p, n, &replicas).await {
                    Ok(0) => {}
                    Ok(reaped) => tracing::debug!(partition = p, n, reaped, "reaped tombstones"),
                    Err(e) => tracing::debug!(partition = p, n, error = %e, "reaping tombstones failed"),
                }
            }
        }
        self.publish_gauges(&owned);
    }

    fn counted(&self, o: Outcome) {
        metrics::counter!("concord_aae_exchanges_total", "result" => "repaired").increment(1);
        metrics::counter!("concord_aae_keys_repaired_total").increment(o.sent + o.received);
        metrics::counter!("concord_aae_bytes_total").increment(o.bytes);
        let mut state = self.state();
        state.totals.exchanges += 1;
        state.totals.keys_repaired += o.sent + o.received;
        state.totals.bytes += o.bytes;
    }

    fn publish_gauges(&self, owned: &[((u32, u8), Vec<NodeId>)]) {
        let status = self.status_of(owned.len());
        let oldest = status.oldest_full_exchange.map_or(f64::NAN, |d| d.as_secs_f64());
        metrics::gauge!("concord_aae_oldest_full_exchange_seconds").set(oldest);
        metrics::gauge!("concord_aae_trees_never_exchanged").set(status.never_exchanged as f64);
        metrics::gauge!("concord_tombstones").set(self.objects.tombstone_count() as f64);
        let state = self.state();
        let mut by_partition: BTreeMap<u32, Option<Instant>> = BTreeMap::new();
        for ((p, n), _) in owned {
            let at = state.last_full.get(&(*p, *n)).copied();
            let e = by_partition.entry(*p).or_insert(at);
            *e = match (*e, at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        for (p, at) in by_partition {
            let age = at.map_or(f64::NAN, |at| at.elapsed().as_secs_f64());
            metrics::gauge!("concord_aae_last_full_exchange_age_seconds", "partition" => p.to_string()).set(age);
        }
    }

    /// Where anti-entropy stands.
    pub fn status(&self) -> Status {
        self.status_of(self.owned().len())
    }

    fn status_of(&self, trees: usize) -> Status {
        let state = self.state();
        let now = Instant::now();
        let never_exchanged = trees.saturating_sub(state.last_full.len());
        let oldest = state.last_full.values().map(|at| now.duration_since(*at)).max();
        let total = u64::from(self.cluster.ring().partitions()) * tree::SEGMENTS as u64;
        Status {
            rebuilding: self.objects.untrusted(),
            trees,
            never_exchanged,
            oldest_full_exchange: oldest,
            tombstones: self.objects.tombstone_count(),
            verifying: state.verify.map(|(p, s)| (u64::from(p) * tree::SEGMENTS as u64 + u64::from(s), total)),
            totals: state.totals,
        }
    }

    /// Starts a check of every tree against the data when a bucket's `n`
    /// changed (its keys are in the tree of the old `n` until then), or
    /// when the periodic check is due.
    fn notice_replica_changes(&self) {
        let counts = replica_counts(&self.buckets);
        let mut state = self.state();
        let changed = counts != state.replica_counts;
        state.replica_counts = counts;
        let due = self.config.verify_interval_hours > 0
            && state
                .verified_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(self.config.verify_interval_hours * 3600));
        if (changed || due) && state.verify.is_none() {
            tracing::info!(n_changed = changed, "checking every hash tree against the data");
            state.verify = Some((0, 0));
        }
    }

    /// Checks the next few segments of a running check. Returns whether a
    /// check is under way.
    fn verify_step(&self) -> bool {
        let Some((mut p, mut s)) = self.state().verify else { return false };
        let partitions = self.cluster.ring().partitions();
        let mut fixes = 0;
        for _ in 0..VERIFY_STEP {
            if p >= partitions {
                break;
            }
            match self.objects.verify_segment(p, s) {
                Ok(f) => fixes += f,
                Err(e) => tracing::warn!(partition = p, segment = s, error = %e, "checking a tree segment failed"),
            }
            s += 1;
            if s as usize == tree::SEGMENTS {
                s = 0;
                p += 1;
            }
        }
        if fixes > 0 {
            metrics::counter!("concord_aae_tree_fixes_total").increment(fixes as u64);
            tracing::warn!(fixes, "corrected hash tree entries that disagreed with the data");
        }
        let mut state = self.state();
        state.totals.tree_fixes += fixes as u64;
        if p >= partitions {
            state.verify = None;
            state.verified_at = Some(Instant::now());
            tracing::info!("every hash tree agrees with the data");
        } else {
            state.verify = Some((p, s));
        }
        true
    }
}

fn replica_counts(buckets: &Buckets) -> Vec<(String, u32)> {
    buckets.list().into_iter().map(|(name, p)| (name, p.n)).collect()
}
