//! The hints a node holds, in the engine's `Hints` space.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::hint::{Hint, HintKey, target_prefix};
use crate::causal::Object;
use crate::ring::NodeId;
use crate::storage::{Durability, Space, Store};
use crate::{Error, Result};

/// Lock stripes over hint keys; a power of two.
const STRIPES: usize = 256;

/// What one target's hints amount to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetStats {
    /// Hints (one per key).
    pub count: u64,
    /// Bytes of their records.
    pub bytes: u64,
    /// Creation time of the oldest, as of the last pass over them.
    pub oldest_ms: Option<u64>,
}

/// One stored hint, with the exact bytes it was read as, so it is removed
/// only if nothing was merged into it meanwhile.
#[derive(Clone, Debug)]
pub struct StoredHint {
    /// The engine key.
    pub raw_key: Vec<u8>,
    /// The engine record.
    pub raw: Vec<u8>,
    /// The key, decoded.
    pub key: HintKey,
    /// The record, decoded.
    pub hint: Hint,
}

/// The hints of one node.
///
/// Writers of one hint are serialised by a striped std mutex held around
/// the engine get, the merge and the engine insert, never across an await.
/// Per-target totals are kept in memory (rebuilt by a scan at start) for
/// status and metrics; the engine is the truth.
pub struct HintStore {
    engine: Arc<dyn Store>,
    durability: Arc<Durability>,
    locks: Box<[Mutex<()>]>,
    /// Totals by target, and hint counts by partition. Held only for map
    /// updates.
    stats: Mutex<Stats>,
}

#[derive(Default)]
struct Stats {
    targets: BTreeMap<NodeId, TargetStats>,
    partitions: BTreeMap<u32, u64>,
}

impl Stats {
    fn added(&mut self, key: &HintKey, old_len: Option<usize>, new_len: usize, now_ms: u64) {
        let s = self.targets.entry(key.target.clone()).or_default();
        match old_len {
            Some(old) => s.bytes = (s.bytes + new_len as u64).saturating_sub(old as u64),
            None => {
                s.count += 1;
                s.bytes += new_len as u64;
                *self.partitions.entry(key.partition).or_default() += 1;
            }
        }
        s.oldest_ms = Some(s.oldest_ms.map_or(now_ms, |o| o.min(now_ms)));
    }

    fn removed(&mut self, target: &str, partition: Option<u32>, len: usize) {
        if let Some(s) = self.targets.get_mut(target) {
            s.count = s.count.saturating_sub(1);
            s.bytes = s.bytes.saturating_sub(len as u64);
        }
        if let Some(p) = partition.and_then(|p| self.partitions.get_mut(&p)) {
            *p = p.saturating_sub(1);
        }
    }
}

impl HintStore {
    /// Opens the hints in `engine`, counting them per target.
    pub fn open(engine: Arc<dyn Store>, durability: Arc<Durability>) -> Result<Self> {
        let mut stats = Stats::default();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = engine.scan(Space::Hints, after.as_deref(), 1024)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, v) in &page {
                match (HintKey::decode(k), Hint::decode(v)) {
                    (Some(key), Ok(hint)) => stats.added(&key, None, v.len(), hint.created_at_ms),
                    // Counted, so the pass that drops it evens the count.
                    (Some(key), Err(e)) => {
                        tracing::warn!(target = %key.target, error = %e, "a stored hint does not decode");
                        stats.added(&key, None, v.len(), crate::now_ms());
                    }
                    // Not lost silently: the delivery pass meets it again
                    // and drops it with a count.
                    _ => tracing::warn!(key = ?k, "a stored hint does not decode"),
                }
            }
        }
        let locks = (0..STRIPES).map(|_| Mutex::new(())).collect();
        Ok(Self { engine, durability, locks, stats: Mutex::new(stats) })
    }

    fn lock(&self, raw_key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let h = xxhash_rust::xxh3::xxh3_64(raw_key) as usize;
        // A poisoned stripe only means a writer panicked between get and
        // insert; the engine holds the old or the new record, both valid.
        self.locks[h & (STRIPES - 1)].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `object` for `target`, merging it into any hint already held
    /// for that key. Fails with [`crate::Error::TooLarge`], keeping the old
    /// hint, when the merged hint would be over
    /// [`crate::storage::MAX_MERGED_KEY_BYTES`]. Call [`HintStore::sync`]
    /// before relying on it.
    pub fn add(&self, key: &HintKey, object: &Object, ring_epoch: u64, now_ms: u64) -> Result<()> {
        let raw_key = key.encode().map_err(|e| Error::invalid(format!("cannot keep a hint: {e}")))?;
        let (old_len, record) = {
            let _guard = self.lock(&raw_key);
            let old = self.engine.get(Space::Hints, &raw_key)?;
            let hint = match old.as_deref().map(Hint::decode) {
                Some(Ok(mut h)) => {
                    h.coalesce(object, ring_epoch, now_ms);
                    h
                }
                Some(Err(e)) => {
                    // The old record is unreadable; keeping the new write is
                    // better than refusing it. Anti-entropy covers the rest.
                    tracing::warn!(target = %key.target, error = %e, "replacing a hint that does not decode");
                    Hint::new(object.clone(), ring_epoch, now_ms)
                }
                None => Hint::new(object.clone(), ring_epoch, now_ms),
            };
            let record = hint.encode();
            // A hint is delivered in one message, so it is bounded like a
            // replica's copy.
            crate::storage::check_merged_size(&key.bucket, &key.key, record.len())?;
            self.engine.insert(Space::Hints, &raw_key, &record)?;
            (old.map(|o| o.len()), record)
        };
        self.stats().added(key, old_len, record.len(), now_ms);
        metrics::counter!("concord_hints_stored_total", "target" => key.target.clone()).increment(1);
        Ok(())
    }

    /// The hint held for `key`, if any.
    pub fn get(&self, key: &HintKey) -> Result<Option<Object>> {
        let raw_key = key.encode().map_err(Error::invalid)?;
        match self.engine.get(Space::Hints, &raw_key)? {
            Some(bytes) => Ok(Some(Hint::decode(&bytes)?.object)),
            None => Ok(None),
        }
    }

    /// Up to `limit` of `target`'s hints after the engine key `after`, in
    /// key order. Records that do not decode are returned as errors, with
    /// their keys, so the caller can drop them.
    pub fn scan(
        &self,
        target: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<std::result::Result<StoredHint, Vec<u8>>>> {
        let prefix = target_prefix(target).map_err(Error::invalid)?;
        // No hint key equals a bare prefix, so "after the prefix" is
        // "from the first key with it".
        let page = self.engine.scan(Space::Hints, Some(after.unwrap_or(&prefix)), limit)?;
        let mut out = Vec::with_capacity(page.len());
        for (k, v) in page {
            if !k.starts_with(&prefix) {
                break;
            }
            match (HintKey::decode(&k), Hint::decode(&v)) {
                (Some(key), Ok(hint)) if key.target == target => {
                    out.push(Ok(StoredHint { raw_key: k, raw: v, key, hint }))
                }
                _ => out.push(Err(k)),
            }
        }
        Ok(out)
    }

    /// Removes a hint, but only if it is still exactly `stored` (nothing
    /// was merged into it since it was read). Returns whether it was.
    pub fn remove_if_unchanged(&self, stored: &StoredHint) -> Result<bool> {
        {
            let _guard = self.lock(&stored.raw_key);
            match self.engine.get(Space::Hints, &stored.raw_key)? {
                Some(now) if now == stored.raw => self.engine.remove(Space::Hints, &stored.raw_key)?,
                _ => return Ok(false),
            }
        }
        self.stats().removed(&stored.key.target, Some(stored.key.partition), stored.raw.len());
        Ok(true)
    }

    /// Removes a record whatever it holds (one that does not decode).
    pub fn remove_raw(&self, raw_key: &[u8], target: &str) -> Result<()> {
        let _guard = self.lock(raw_key);
        if let Some(old) = self.engine.get(Space::Hints, raw_key)? {
            self.engine.remove(Space::Hints, raw_key)?;
            // Only records whose key decodes were counted (see `open`).
            if let Some(key) = HintKey::decode(raw_key) {
                self.stats().removed(target, Some(key.partition), old.len());
            }
        }
        Ok(())
    }

    /// Records the creation time of `target`'s oldest hint, as a full pass
    /// over its hints found it. (Counts and bytes are kept exact as hints
    /// come and go; only the oldest needs a pass.)
    pub fn set_oldest(&self, target: &str, oldest_ms: Option<u64>) {
        if let Some(s) = self.stats().targets.get_mut(target) {
            s.oldest_ms = oldest_ms;
        }
    }

    /// Totals per target, for targets with hints.
    pub fn targets(&self) -> Vec<(NodeId, TargetStats)> {
        self.stats().targets.iter().filter(|(_, s)| s.count > 0).map(|(t, s)| (t.clone(), s.clone())).collect()
    }

    /// Hints held, over all targets.
    pub fn total(&self) -> u64 {
        self.stats().targets.values().map(|s| s.count).sum()
    }

    /// Hints held for keys of `partition`, over all targets.
    pub fn in_partition(&self, partition: u32) -> u64 {
        self.stats().partitions.get(&partition).copied().unwrap_or(0)
    }

    /// Drops every hint (a node discarding its data to join a cluster).
    pub fn discard_all(&self) -> Result<()> {
        self.engine.clear(Space::Hints)?;
        *self.stats() = Stats::default();
        Ok(())
    }

    /// Waits until hints added so far are as durable as the node's
    /// durability mode promises for data.
    pub async fn sync(&self) -> Result<()> {
        self.durability.wait().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::causal::{Content, VersionVector};
    use crate::storage::{DurabilityMode, MemStore};

    fn store(engine: &MemStore) -> HintStore {
        let engine: Arc<dyn Store> = Arc::new(engine.clone());
        let d = Durability::start(engine.clone(), DurabilityMode::Periodic, Duration::from_millis(50), Duration::ZERO);
        HintStore::open(engine, Arc::new(d)).unwrap()
    }

    fn key(target: &str, k: &str) -> HintKey {
        HintKey { target: target.into(), partition: 3, bucket: "b".into(), key: k.as_bytes().to_vec() }
    }

    fn write(actor: u64, v: u8) -> Object {
        let mut o = Object::new();
        o.update(actor, &VersionVector::new(), Content::Value(vec![v]), 1, "n1").unwrap();
        o
    }

    #[test]
    fn hints_for_one_key_coalesce_and_survive_a_reopen() {
        let engine = MemStore::new();
        let hints = store(&engine);
        hints.add(&key("n2", "k"), &write(1, 1), 1, 10).unwrap();
        hints.add(&key("n2", "k"), &write(2, 2), 2, 20).unwrap();
        hints.add(&key("n3", "k"), &write(1, 1), 2, 30).unwrap();
        assert_eq!(hints.get(&key("n2", "k")).unwrap().unwrap().siblings().len(), 2);
        let targets = hints.targets();
        assert_eq!(targets.len(), 2);
        assert_eq!((targets[0].1.count, targets[0].1.oldest_ms), (1, Some(10)));
        let reopened = store(&engine);
        assert_eq!(reopened.targets(), targets, "totals are rebuilt from the stored hints");
        assert_eq!(reopened.total(), 2);
    }

    #[test]
    fn a_scan_sees_one_target_and_removal_spares_a_hint_that_grew() {
        let hints = store(&MemStore::new());
        for (t, k) in [("n1", "a"), ("n2", "a"), ("n2", "b"), ("n22", "a"), ("n3", "z")] {
            hints.add(&key(t, k), &write(1, 1), 1, 1).unwrap();
        }
        let page = hints.scan("n2", None, 10).unwrap();
        let keys: Vec<_> = page.iter().map(|h| h.as_ref().unwrap().key.key.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        let first = page[0].as_ref().unwrap().clone();
        let rest = hints.scan("n2", Some(&first.raw_key), 10).unwrap();
        assert_eq!(rest.len(), 1);
        // A write merged in after the read: the delivered copy is stale.
        hints.add(&key("n2", "a"), &write(5, 5), 1, 2).unwrap();
        assert!(!hints.remove_if_unchanged(&first).unwrap());
        let fresh = hints.scan("n2", None, 1).unwrap().remove(0).unwrap();
        assert!(hints.remove_if_unchanged(&fresh).unwrap());
        assert_eq!(hints.get(&key("n2", "a")).unwrap(), None);
        assert_eq!(hints.targets().iter().find(|(t, _)| t == "n2").unwrap().1.count, 1);
    }
}
