//! The delivery worker: hands hints to their targets once they are back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use concord_proto::v1 as pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::hint::retry_delay_ms;
use super::store::{HintStore, StoredHint, TargetStats};
use super::{HandoffConfig, HintKey};
use crate::Result;
use crate::buckets::Buckets;
use crate::cluster::Cluster;
use crate::ring::NodeId;
use crate::storage::ObjectStore;
use crate::storage::codec::encode_object;

/// How often the worker looks at its targets.
const PASS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the hints of a target that is down are read to expire old
/// ones and recount them.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Deadline of one delivery call.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed delivery.
const RETRY_BASE_MS: u64 = 500;
/// Hint bytes sent in one call: a page of hints is split to stay under
/// it, and a hint larger than this goes alone.
const DELIVERY_BYTES: usize = 8 << 20;

/// Where delivery to one target stands.
#[derive(Default)]
struct TargetState {
    /// Failed delivery attempts in a row.
    failures: u32,
    /// No attempt before this.
    retry_at: Option<Instant>,
    /// Why the last attempt failed.
    last_error: Option<String>,
    /// Last full pass over the target's hints.
    last_sweep: Option<Instant>,
}

/// The hints held for one target, for `concord cluster status`.
#[derive(Clone, Debug)]
pub struct QueueStatus {
    /// The node the hints are for.
    pub target: NodeId,
    /// How many, how big, how old.
    pub stats: TargetStats,
    /// Why the last delivery failed, if it did.
    pub last_error: Option<String>,
}

/// Delivers hints. See the module docs.
pub struct Handoff {
    hints: Arc<HintStore>,
    objects: Arc<ObjectStore>,
    cluster: Arc<Cluster>,
    buckets: Arc<Buckets>,
    config: HandoffConfig,
    /// Per target. Held only for map reads and updates, never across an
    /// await.
    targets: Mutex<BTreeMap<NodeId, TargetState>>,
}

impl Handoff {
    /// Wires the worker; [`Handoff::spawn`] starts it.
    pub fn new(
        hints: Arc<HintStore>,
        objects: Arc<ObjectStore>,
        cluster: Arc<Cluster>,
        buckets: Arc<Buckets>,
        config: HandoffConfig,
    ) -> Arc<Self> {
        Arc::new(Self { hints, objects, cluster, buckets, config, targets: Mutex::new(BTreeMap::new()) })
    }

    /// The hints this worker delivers.
    pub fn hints(&self) -> &Arc<HintStore> {
        &self.hints
    }

    fn targets(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, TargetState>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hints held, per target.
    pub fn status(&self) -> Vec<QueueStatus> {
        let states = self.targets();
        self.hints
            .targets()
            .into_iter()
            .map(|(target, stats)| QueueStatus {
                last_error: states.get(&target).and_then(|s| s.last_error.clone()),
                target,
                stats,
            })
            .collect()
    }

    /// Runs the worker until `stopped`.
    pub fn spawn(self: &Arc<Self>, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                if this.config.enabled && this.cluster.is_ready() {
                    this.pass().await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(PASS_INTERVAL) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        })
    }

    /// One look at every target: deliver to those that are back, expire
    /// and recount the others now and then. Returns the hints delivered.
    pub async fn pass(&self) -> usize {
        let mut delivered = 0;
        let held = self.hints.targets();
        for (target, _) in &held {
            match self.drain(target).await {
                Ok(n) => delivered += n,
                Err(e) => tracing::warn!(%target, error = %e, "reading hints failed"),
            }
        }
        // Targets whose last hint went: their gauges drop to zero.
        let remaining = self.hints.targets();
        for (target, _) in held.iter().filter(|(t, _)| !remaining.iter().any(|(r, _)| r == t)) {
            publish_gauges(target, &TargetStats::default(), 0);
            self.targets().remove(target);
        }
        self.cluster.announce("hints", &self.hints.total().to_string()).await;
        delivered
    }

    /// Goes over `target`'s hints: drops expired ones, re-routes those whose
    /// target is no longer a replica, and delivers the rest if the target is
    /// alive and not backing off.
    async fn drain(&self, target: &str) -> Result<usize> {
        let now = Instant::now();
        let members = self.cluster.members();
        let live = target != self.cluster.node_id() && members.is_live(target);
        // A node that has left the ring hands the hints of a target that is
        // down to a live member instead, which keeps them for the target.
        let stand_in = if live { None } else { self.stand_in(target) };
        let (mut deliver, due_sweep) = {
            let states = self.targets();
            let s = states.get(target);
            let backing_off = s.and_then(|s| s.retry_at).is_some_and(|at| at > now);
            // A short window is swept more often, so hints never outlive it
            // by much.
            let every = SWEEP_INTERVAL.min(Duration::from_secs(self.config.window_secs) / 4);
            let swept_lately = s.and_then(|s| s.last_sweep).is_some_and(|at| now.duration_since(at) < every);
            ((live || stand_in.is_some()) && !backing_off, !swept_lately)
        };
        if !deliver && !due_sweep {
            return Ok(0);
        }
        let window_ms = self.config.window_secs.saturating_mul(1000);
        let mut counted = TargetStats::default();
        let mut delivered = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.hints.scan(target, after.as_deref(), self.config.batch)?;
            let Some(last) = page.last() else { break };
            after = Some(match last {
                Ok(h) => h.raw_key.clone(),
                Err(k) => k.clone(),
            });
            let ring = self.cluster.ring();
            let now_ms = crate::now_ms();
            let mut batch = Vec::new();
            for item in page {
                let stored = match item {
                    Ok(h) => h,
                    Err(raw_key) => {
                        tracing::warn!(%target, "dropping a hint record that does not decode");
                        metrics::counter!("concord_hints_dropped_total", "target" => target.to_owned(), "reason" => "corrupt")
                            .increment(1);
                        self.hints.remove_raw(&raw_key, target)?;
                        continue;
                    }
                };
                if stored.hint.expired(now_ms, window_ms) {
                    if self.hints.remove_if_unchanged(&stored)? {
                        metrics::counter!("concord_hints_expired_total", "target" => target.to_owned()).increment(1);
                    }
                    continue;
                }
                let n = self.buckets.get(&stored.key.bucket).n as usize;
                let replicas = ring.preference_list(stored.key.partition, n);
                if !replicas.iter().any(|r| r == target) {
                    // One hint that cannot be handed on (too large for a
                    // replica, say) stays for the next pass and holds up
                    // none of the others.
                    if let Err(e) = self.reroute(&stored, &replicas, ring.epoch()).await {
                        tracing::warn!(%target, error = %e, "could not hand a hint to the key's replicas");
                        count(&mut counted, &stored);
                    }
                    continue;
                }
                if deliver {
                    batch.push(stored);
                } else {
                    count(&mut counted, &stored);
                }
            }
            for batch in by_bytes(batch, DELIVERY_BYTES, |h| h.raw.len()) {
                if !deliver {
                    for h in &batch {
                        count(&mut counted, h);
                    }
                    continue;
                }
                let started = Instant::now();
                let bytes: usize = batch.iter().map(|h| h.raw.len()).sum();
                match self.deliver(target, stand_in.as_deref(), &batch, ring.epoch()).await {
                    Ok(left) => {
                        delivered += batch.len() - left.len();
                        for h in &left {
                            count(&mut counted, h);
                        }
                        self.succeeded(target, left.is_empty());
                    }
                    Err(e) => {
                        for h in &batch {
                            count(&mut counted, h);
                        }
                        self.failed(target, e);
                        // Keep going to expire and count the rest.
                        deliver = false;
                    }
                }
                // Throttle: the next batch waits until this one's bytes fit
                // the configured rate.
                let budget = Duration::from_secs_f64(bytes as f64 / self.config.rate_bytes_per_sec as f64);
                tokio::time::sleep(budget.saturating_sub(started.elapsed())).await;
            }
        }
        if delivered > 0 {
            metrics::counter!("concord_hints_delivered_total", "target" => target.to_owned())
                .increment(delivered as u64);
            tracing::info!(%target, delivered, left = counted.count, "delivered hints");
        }
        self.hints.set_oldest(target, counted.oldest_ms);
        let stats = self.hints.targets().into_iter().find(|(t, _)| t == target).map(|(_, s)| s).unwrap_or_default();
        publish_gauges(target, &stats, crate::now_ms());
        self.targets().entry(target.to_owned()).or_default().last_sweep = Some(now);
        Ok(delivered)
    }

    /// A live ring member to hand `target`'s hints to, when this node has
    /// left the ring (it is about to stop) and the target is down.
    fn stand_in(&self, target: &str) -> Option<NodeId> {
        let ring = self.cluster.ring();
        let me = self.cluster.node_id();
        if ring.is_member(me) {
            return None;
        }
        let members = self.cluster.members();
        ring.members().keys().find(|m| *m != target && *m != me && members.is_live(m)).cloned()
    }

    /// Sends one batch to `target`, or to `stand_in` to keep for it.
    /// Returns the hints not taken (an error answered for them, or they
    /// changed meanwhile); fails when the call itself failed.
    async fn deliver(
        &self,
        target: &str,
        stand_in: Option<&str>,
        batch: &[StoredHint],
        ring_epoch: u64,
    ) -> Result<Vec<StoredHint>, String> {
        let to = stand_in.unwrap_or(target);
        if crate::planted::planted(crate::planted::Bug::HintDeletedBeforeDelivery) {
            for h in batch {
                let _ = self.hints.remove_if_unchanged(h);
            }
            return Ok(Vec::new());
        }
        let addr = self.cluster.addr_of(to).ok_or_else(|| format!("the address of {to} is unknown"))?;
        let writes = batch
            .iter()
            .map(|h| pb::ReplicaWrite {
                key: Some(pb::ObjectKey { bucket: h.key.bucket.clone(), key: h.key.key.clone().into() }),
                object: encode_object(&h.hint.object).into(),
                hint_for: stand_in.map(|_| target.to_owned()).unwrap_or_default(),
            })
            .collect();
        let req = pb::ReplicaWriteRequest { writes, ring_epoch, background: true };
        let resp = self.cluster.net().replica_write(addr, DELIVERY_TIMEOUT, req).await.map_err(|e| e.to_string())?;
        if resp.results.len() != batch.len() {
            return Err(format!("it answered {} items of a batch of {}", resp.results.len(), batch.len()));
        }
        let mut left = Vec::new();
        let mut first_error = None;
        let mut too_large = 0;
        for (h, r) in batch.iter().zip(resp.results) {
            if r.too_large {
                // The target's copy and this hint together would be too
                // large to keep: it stays here (until the key shrinks or
                // the hint expires) without holding up the target's others.
                tracing::warn!(%target, error = %r.error, "a hint is too large for its target to merge");
                too_large += 1;
                left.push(h.clone());
                continue;
            }
            if !r.error.is_empty() {
                first_error.get_or_insert(r.error);
                left.push(h.clone());
                continue;
            }
            // Taken: drop it, unless a newer write was merged into it
            // since it was read (then it is delivered again next time).
            match self.hints.remove_if_unchanged(h) {
                Ok(true) => {}
                Ok(false) => left.push(h.clone()),
                Err(e) => return Err(format!("removing a delivered hint failed: {e}")),
            }
        }
        if too_large > 0 {
            metrics::counter!("concord_hints_refused_total", "target" => target.to_owned()).increment(too_large);
        }
        // Every hint refused, some for another reason than size: the target
        // is not taking writes (not ready, say), so back off.
        if let Some(e) = first_error
            && left.len() == batch.len()
        {
            return Err(e);
        }
        Ok(left)
    }

    /// Hands a hint whose target no longer holds its key to the key's
    /// current replicas: merged here if this node is one, kept as a hint for
    /// each of the others.
    async fn reroute(&self, stored: &StoredHint, replicas: &[NodeId], ring_epoch: u64) -> Result<()> {
        let k = &stored.key;
        let now_ms = crate::now_ms();
        for r in replicas {
            if r == self.cluster.node_id() {
                self.objects.merge(k.partition, &k.bucket, &k.key, &stored.hint.object)?;
            } else {
                let key = HintKey { target: r.clone(), ..k.clone() };
                self.hints.add(&key, &stored.hint.object, ring_epoch, now_ms)?;
            }
        }
        self.objects.sync().await?;
        if self.hints.remove_if_unchanged(stored)? {
            metrics::counter!("concord_hints_rerouted_total").increment(1);
        }
        Ok(())
    }

    fn succeeded(&self, target: &str, all: bool) {
        let mut states = self.targets();
        let s = states.entry(target.to_owned()).or_default();
        if all {
            s.failures = 0;
            s.retry_at = None;
            s.last_error = None;
        }
    }

    fn failed(&self, target: &str, error: String) {
        let mut states = self.targets();
        let s = states.entry(target.to_owned()).or_default();
        s.failures = s.failures.saturating_add(1);
        let wait = retry_delay_ms(s.failures, RETRY_BASE_MS, self.config.retry_max_ms, crate::env::random_unit());
        s.retry_at = Some(Instant::now() + Duration::from_millis(wait));
        tracing::debug!(%target, %error, retry_in_ms = wait, "hint delivery failed");
        s.last_error = Some(error);
    }
}

/// Splits `items`, in order, into runs of at most `budget` bytes by
/// `size`; an item larger than `budget` makes a run of its own.
pub(crate) fn by_bytes<T>(items: Vec<T>, budget: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        match runs.last_mut() {
            Some(run) if bytes + n <= budget => {
                bytes += n;
                run.push(item);
            }
            _ => {
                bytes = n;
                runs.push(vec![item]);
            }
        }
    }
    runs
}

fn count(stats: &mut TargetStats, h: &StoredHint) {
    stats.count += 1;
    stats.bytes += h.raw.len() as u64;
    stats.oldest_ms = Some(stats.oldest_ms.map_or(h.hint.created_at_ms, |o| o.min(h.hint.created_at_ms)));
}

fn publish_gauges(target: &str, stats: &TargetStats, now_ms: u64) {
    let t = target.to_owned();
    metrics::gauge!("concord_hints_queued", "target" => t.clone()).set(stats.count as f64);
    metrics::gauge!("concord_hints_bytes", "target" => t.clone()).set(stats.bytes as f64);
    let age = stats.oldest_ms.map_or(0, |o| now_ms.saturating_sub(o));
    metrics::gauge!("concord_hints_oldest_age_seconds", "target" => t).set(age as f64 / 1000.0);
}

#[cfg(test)]
mod tests {
    use super::by_bytes;

    #[test]
    fn runs_stay_under_the_budget_and_large_items_go_alone() {
        let sizes = vec![3, 3, 3, 20, 1, 10, 10, 0];
        let runs = by_bytes(sizes.clone(), 10, |n| *n);
        assert_eq!(runs, vec![vec![3, 3, 3], vec![20], vec![1], vec![10], vec![10, 0]]);
        // Nothing is lost or reordered.
        assert_eq!(runs.concat(), sizes);
        assert!(by_bytes(Vec::<usize>::new(), 10, |n| *n).is_empty());
    }
}
