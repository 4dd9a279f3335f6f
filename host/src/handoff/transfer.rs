//! Partition transfer: when the ring moves a tree (a partition's keys of
//! one replica count) away from this node, the node pushes what it holds to
//! each of the tree's replicas, and drops its copy once every one of them
//! has taken it.
//!
//! A push is an anti-entropy exchange in one direction
//! ([`crate::antientropy::exchange`]): compare trees, list the differing
//! segments, send the objects the replica lacks or holds older; the
//! replica merges them. Nothing about a transfer is kept on disk: after a
//! restart of either side the next pass compares trees again and sends only
//! what is still missing, so a transfer resumes where it stopped. Until it
//! is done, the node announces the partition in gossip (`transferring`),
//! and reads of the partition also ask it, so every key stays readable
//! while it moves. New writes go to the new replicas from the moment the
//! ring changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::antientropy::exchange::{self, Comparison, Direction};
use crate::cluster::Cluster;
use crate::net::Throttle;
use crate::ring::NodeId;
use crate::storage::ObjectStore;

/// How often the worker looks for trees to hand over.
const PASS_INTERVAL: Duration = Duration::from_secs(1);

/// Where the transfer of one tree stands.
#[derive(Clone, Debug, Default)]
pub struct TransferState {
    /// The tree's replicas under the current ring.
    pub targets: Vec<NodeId>,
    /// Those that have taken everything this node holds.
    pub done: BTreeSet<NodeId>,
    /// Of the target being pushed to: differing segments done, of how many.
    pub segments: (usize, usize),
    /// Objects and bytes sent so far (all targets).
    pub keys_sent: u64,
    /// Bytes sent so far.
    pub bytes_sent: u64,
    /// Why the last push failed, if it did.
    pub last_error: Option<String>,
}

/// The transfer worker of one node.
pub struct Transfers {
    objects: Arc<ObjectStore>,
    cluster: Arc<Cluster>,
    throttle: Throttle,
    /// By `(partition, n)`. Held only for reads and updates, never across
    /// an await.
    state: Mutex<BTreeMap<(u32, u8), TransferState>>,
}

impl Transfers {
    /// Wires the worker, pushing at most `rate_bytes_per_sec`.
    pub fn new(objects: Arc<ObjectStore>, cluster: Arc<Cluster>, rate_bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(Self {
            objects,
            cluster,
            throttle: Throttle::new(rate_bytes_per_sec),
            state: Mutex::new(BTreeMap::new()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u32, u8), TransferState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transfers under way, by `(partition, n)`: every tree this node
    /// holds but no longer replicates, whether or not a pass has started
    /// on it yet.
    pub fn status(&self) -> Vec<((u32, u8), TransferState)> {
        let ring = self.cluster.ring();
        let state = self.state();
        self.outgoing()
            .into_iter()
            .map(|(p, n)| {
                let mut s = state.get(&(p, n)).cloned().unwrap_or_default();
                if s.targets.is_empty() {
                    s.targets = ring.preference_list(p, n as usize);
                }
                ((p, n), s)
            })
            .collect()
    }

    /// Runs the worker until `stopped`.
    pub fn spawn(self: &Arc<Self>, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                if this.cluster.is_ready() {
                    this.pass().await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(PASS_INTERVAL) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        })
    }

    /// The trees this node holds but no longer replicates. Trees being
    /// rebuilt after an unclean stop are left out: until they are, they
    /// cannot say what there is to send (see [`Transfers::announce`]).
    fn outgoing(&self) -> Vec<(u32, u8)> {
        let ring = self.cluster.ring();
        let me = self.cluster.node_id();
        self.objects
            .trees()
            .into_iter()
            .filter(|(p, n)| self.objects.trusted(*p) && !ring.preference_list(*p, *n as usize).iter().any(|r| r == me))
            .collect()
    }

    /// Whether tree `(p, n)` is still to be handed to exactly `targets`:
    /// the ring may have changed during a long pass.
    fn still_outgoing(&self, p: u32, n: u8, targets: &[NodeId]) -> bool {
        let ring = self.cluster.ring();
        let now = ring.preference_list(p, n as usize);
        now == targets && !now.iter().any(|r| r == self.cluster.node_id())
    }

    /// One pass: push every outgoing tree to each of its replicas that has
    /// not taken it yet; drop the trees every replica has taken.
    pub async fn pass(&self) {
        let outgoing = self.outgoing();
        self.state().retain(|t, _| outgoing.contains(t));
        self.announce(&outgoing).await;
        if outgoing.is_empty() {
            return;
        }
        let ring = self.cluster.ring();
        let members = self.cluster.members();
        for (p, n) in outgoing {
            let targets = ring.preference_list(p, n as usize);
            {
                let mut state = self.state();
                let s = state.entry((p, n)).or_default();
                s.done.retain(|d| targets.contains(d));
                s.targets = targets.clone();
            }
            for target in &targets {
                if self.state().get(&(p, n)).is_some_and(|s| s.done.contains(target)) {
                    continue;
                }
                let result = match self.cluster.addr_of(target).filter(|_| members.is_live(target)) {
                    Some(addr) => self.push(p, n, target, addr, ring.epoch(), ring.partitions()).await,
                    None => Err(format!("{target} is down")),
                };
                let mut state = self.state();
                let s = state.entry((p, n)).or_default();
                match result {
                    Ok(()) => {
                        s.done.insert(target.clone());
                        s.last_error = None;
                    }
                    Err(e) => s.last_error = Some(e),
                }
            }
            let handed = self.state().get(&(p, n)).is_some_and(|s| targets.iter().all(|t| s.done.contains(t)));
            if handed && self.still_outgoing(p, n, &targets) && self.objects.trusted(p) {
                match self.objects.drop_tree(p, n) {
                    Ok(dropped) => {
                        tracing::info!(partition = p, n, dropped, to = ?targets, "handed a partition over and dropped the local copy");
                        metrics::counter!("concord_transfers_total").increment(1);
                        self.state().remove(&(p, n));
                    }
                    Err(e) => tracing::warn!(partition = p, n, error = %e, "dropping a handed-over partition failed"),
                }
            }
        }
        let left = self.outgoing();
        self.announce(&left).await;
    }

    /// Pushes tree `(p, n)` to `target`: whatever it lacks or holds older.
    async fn push(
        &self,
        p: u32,
        n: u8,
        target: &str,
        addr: std::net::SocketAddr,
        epoch: u64,
        partitions: u32,
    ) -> Result<(), String> {
        let compared = exchange::compare(&self.objects, self.cluster.net(), addr, epoch, &[(p, n)])
            .await
            .map_err(|e| e.to_string())?;
        let theirs = match compared.into_iter().next() {
            Some(Comparison::Equal) => return Ok(()),
            Some(Comparison::Differs(s)) => s,
            Some(Comparison::Refused(why)) => return Err(format!("{target}: {why}")),
            None => return Err(format!("{target} answered no comparison")),
        };
        let peer = exchange::Peer {
            objects: &self.objects,
            net: self.cluster.net(),
            throttle: &self.throttle,
            addr,
            ring_epoch: epoch,
            partitions,
        };
        // What earlier targets of this tree took, so the figures add up.
        let (keys_before, bytes_before) =
            self.state().get(&(p, n)).map(|s| (s.keys_sent, s.bytes_sent)).unwrap_or_default();
        let mut progress = |done: usize, so_far: &exchange::Outcome| {
            if let Some(s) = self.state().get_mut(&(p, n)) {
                s.segments = (done, so_far.segments);
                s.keys_sent = keys_before + so_far.sent;
                s.bytes_sent = bytes_before + so_far.bytes;
            }
        };
        let started = tokio::time::Instant::now();
        let outcome =
            peer.sync(p, n, &theirs, Direction::Push, &mut progress).await.map_err(|e| format!("{target}: {e}"))?;
        tracing::debug!(partition = p, n, %target, segments = outcome.segments, sent = outcome.sent, bytes = outcome.bytes, ms = started.elapsed().as_millis() as u64, "pushed a tree");
        metrics::counter!("concord_transfer_bytes_total").increment(outcome.bytes);
        Ok(())
    }

    /// Tells the cluster which partitions this node is still handing over:
    /// those of `outgoing`, and every partition whose trees are still being
    /// rebuilt after an unclean stop (it may hold keys of them that their
    /// replicas lack; announcing them makes reads ask this node and holds
    /// tombstone reaping back until the rebuild shows what is there).
    async fn announce(&self, outgoing: &[(u32, u8)]) {
        let mut partitions: BTreeSet<u32> = outgoing.iter().map(|(p, _)| *p).collect();
        partitions.extend((0..self.cluster.ring().partitions()).filter(|p| !self.objects.trusted(*p)));
        metrics::gauge!("concord_transfers_pending").set(outgoing.len() as f64);
        self.cluster.announce("transferring", &encode_partitions(&partitions)).await;
    }
}

/// A set of partitions as a short string: `3,7-9,12`.
pub fn encode_partitions(set: &BTreeSet<u32>) -> String {
    let mut out = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end = it.next().expect("peeked");
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

/// The most partitions a ring has, and so the most a gossiped set names.
const MAX_PARTITIONS: u32 = 65_536;

/// Reads [`encode_partitions`]' string; what does not parse, or names a
/// partition no ring has, is left out. The set never holds more than
/// 65,536 entries, however the string was crafted (it comes from gossip).
pub fn decode_partitions(s: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>())
                    && a <= b
                    && b < MAX_PARTITIONS
                {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(p) = part.parse::<u32>()
                    && p < MAX_PARTITIONS
                {
                    out.insert(p);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn partition_sets_read_back() {
        let set: BTreeSet<u32> = [0, 1, 2, 5, 7, 8, 63].into_iter().collect();
        assert_eq!(encode_partitions(&set), "0-2,5,7-8,63");
        assert_eq!(decode_partitions("0-2,5,7-8,63"), set);
        assert!(decode_partitions("").is_empty());
        assert!(decode_partitions("x,9-3,1-99999999,65536").is_empty());
        // What took seconds and gigabytes to expand when ranges were only
        // bounded one by one.
        let crafted: Vec<String> = (0..4096u32).map(|i| format!("{}-{}", i * 65_535, i * 65_535 + 65_534)).collect();
        assert_eq!(decode_partitions(&crafted.join(",")).len(), 65_535);
    }

    proptest! {
        #[test]
        fn any_set_round_trips(set in proptest::collection::btree_set(0u32..5000, 0..100)) {
            prop_assert_eq!(decode_partitions(&encode_partitions(&set)), set);
        }

        #[test]
        fn garbage_never_panics(s in ".{0,64}") {
            let _ = decode_partitions(&s);
        }

        /// Ranges crafted to expand (each `a-b` covering up to the whole
        /// ring) never make the set larger than a ring.
        #[test]
        fn crafted_ranges_stay_bounded(ranges in proptest::collection::vec((0u32..200_000, 0u32..200_000), 0..64)) {
            let s: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            prop_assert!(decode_partitions(&s.join(",")).len() <= MAX_PARTITIONS as usize);
        }
    }
}
