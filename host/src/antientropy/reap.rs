//! Tombstone reaping: the first replica of a tree removes tombstones that
//! every replica holds, everywhere at once. See the module docs for when
//! that is safe.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use concord_proto::v1 as pb;

use super::AntiEntropy;
use super::exchange::tree_id;
use super::tree::key_hash;
use crate::cluster::Cluster;
use crate::ring::NodeId;
use crate::storage::{ObjectStore, StoreKey};
use crate::{Error, Result};

/// Tombstones of one tree every replica was confirmed to hold: storage
/// key to the object's hash and when that was first confirmed.
pub(super) type Confirmed = BTreeMap<Vec<u8>, (u64, Instant)>;

/// Tombstones looked at per tree and round.
const REAP_BATCH: usize = 2048;
/// Deadline of a reaping call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl AntiEntropy {
    /// Reaps tombstones of tree `(partition, n)`, of which this node is the
    /// first replica and which it has just exchanged with every other
    /// replica. Returns how many it removed.
    pub(super) async fn reap(&self, partition: u32, n: u8, replicas: &[NodeId]) -> Result<u64> {
        let listed = self.objects.tombstones(partition, n, None, REAP_BATCH)?;
        if listed.is_empty() {
            self.state().candidates.remove(&(partition, n));
            return Ok(0);
        }
        if !self.partition_quiet(partition).await? {
            return Ok(0);
        }
        let mut tombstones = Vec::with_capacity(listed.len());
        for key in listed {
            if let Some(bytes) = self.objects.read_raw(partition, &key)? {
                let hash = key_hash(key.as_bytes(), &bytes);
                tombstones.push((key, hash));
            }
        }
        let others: Vec<&NodeId> = replicas.iter().skip(1).collect();
        let mut held = vec![true; tombstones.len()];
        for r in &others {
            let answer = self.reap_call(r, partition, n, &tombstones, false).await?;
            for (h, a) in held.iter_mut().zip(answer) {
                *h &= a;
            }
        }
        // Confirmed now and in an earlier round at least `reap_after_secs`
        // ago, with the same object all along.
        let before = self.state().candidates.remove(&(partition, n)).unwrap_or_default();
        let min_age = Duration::from_secs(self.config.reap_after_secs);
        let now = Instant::now();
        let mut confirmed = Confirmed::new();
        let mut reap = Vec::new();
        for ((key, hash), held) in tombstones.into_iter().zip(held) {
            if !held {
                continue;
            }
            match before.get(key.as_bytes()) {
                Some(&(h, since)) if h == hash && now.duration_since(since) >= min_age => reap.push((key, hash)),
                Some(&(h, since)) if h == hash => {
                    confirmed.insert(key.into_bytes(), (hash, since));
                }
                _ => {
                    confirmed.insert(key.into_bytes(), (hash, now));
                }
            }
        }
        self.state().candidates.insert((partition, n), confirmed);
        if reap.is_empty() {
            return Ok(0);
        }
        for r in &others {
            self.reap_call(r, partition, n, &reap, true).await?;
        }
        let mut removed = 0;
        for (key, hash) in &reap {
            if self.objects.remove_if(partition, key, *hash)? {
                removed += 1;
            }
        }
        metrics::counter!("concord_tombstones_reaped_total").increment(removed);
        self.state().totals.reaped += removed;
        Ok(removed)
    }

    /// Asks one replica whether it holds exactly these tombstones
    /// (`commit` false), or to remove those it still does (true).
    async fn reap_call(
        &self,
        replica: &str,
        partition: u32,
        n: u8,
        tombstones: &[(StoreKey, u64)],
        commit: bool,
    ) -> Result<Vec<bool>> {
        let addr =
            self.cluster.addr_of(replica).ok_or_else(|| Error::internal(format!("address of {replica} unknown")))?;
        let req = pb::ReapRequest {
            tree: Some(tree_id(partition, n)),
            tombstones: tombstones
                .iter()
                .map(|(k, h)| pb::KeyHash { key: k.as_bytes().to_vec().into(), hash: *h })
                .collect(),
            commit,
        };
        let resp = self
            .cluster
            .net()
            .call(addr, CALL_TIMEOUT, |mut c| async move { c.reap_tombstones(req).await })
            .await
            .map_err(|e| Error::Internal(format!("{replica}: {e}")))?;
        if resp.held.len() != tombstones.len() {
            return Err(Error::Internal(format!(
                "{replica} answered {} of {} tombstones",
                resp.held.len(),
                tombstones.len()
            )));
        }
        Ok(resp.held)
    }

    /// Whether nothing could bring back what a tombstone of `partition`
    /// superseded: every node of the ring is live and on this node's ring,
    /// and no live node holds hints for the partition or is handing it
    /// over.
    async fn partition_quiet(&self, partition: u32) -> Result<bool> {
        let ring = self.cluster.ring();
        let members = self.cluster.members();
        let me = self.cluster.node_id();
        if ring.members().keys().any(|m| m != me && !members.is_live(m)) {
            return Ok(false);
        }
        if self.hints.in_partition(partition) > 0 || self.transferring(partition) {
            return Ok(false);
        }
        // A node that is down but not in the ring (it left, or is leaving)
        // may still hold the partition's data or hints: what it last said
        // counts until it is heard from again or forgotten.
        if members.peers.values().any(|p| !p.live && (p.hints > 0 || p.transferring.contains(&partition))) {
            return Ok(false);
        }
        for peer in members.peers.values().filter(|p| p.live && p.node_id != me) {
            let req = pb::PartitionActivityRequest { partition };
            let activity = self
                .cluster
                .net()
                .call(peer.addr, CALL_TIMEOUT, |mut c| async move { c.partition_activity(req).await })
                .await
                .map_err(|e| Error::Internal(format!("{}: {e}", peer.node_id)))?;
            if activity.hints > 0 || activity.transferring || activity.ring_epoch != ring.epoch() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn transferring(&self, partition: u32) -> bool {
        transferring(&self.objects, &self.cluster, partition)
    }
}

/// Whether this node holds keys of `partition` in a tree it no longer
/// replicates (data it is handing to the tree's new owners), or may hold
/// such keys: its trees of the partition are still being rebuilt after an
/// unclean stop.
pub fn transferring(objects: &ObjectStore, cluster: &Cluster, partition: u32) -> bool {
    if !objects.trusted(partition) {
        return true;
    }
    let ring = cluster.ring();
    let me = cluster.node_id();
    objects
        .trees()
        .into_iter()
        .filter(|(p, _)| *p == partition)
        .any(|(p, n)| !ring.preference_list(p, n as usize).iter().any(|r| r == me))
}
