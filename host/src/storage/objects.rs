//! Objects on a replica: atomic per-key read-modify-write over a [`Store`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::codec::{decode_object, encode_object};
use super::{Durability, Space, Store};
use crate::causal::{Actor, Content, Object, VersionVector};
use crate::{Error, Result};

/// The engine key of an object: `[bucket length: u8][bucket][key]`.
///
/// Bucket names are at most 255 bytes, so the length fits one byte, and the
/// prefix keeps one bucket's keys together in scans.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(Vec<u8>);

impl StoreKey {
    /// Encodes `bucket` and `key`. `bucket` must be a valid bucket name.
    pub fn new(bucket: &str, key: &[u8]) -> Self {
        debug_assert!(bucket.len() <= 255);
        let mut k = Vec::with_capacity(1 + bucket.len() + key.len());
        k.push(bucket.len() as u8);
        k.extend_from_slice(bucket.as_bytes());
        k.extend_from_slice(key);
        Self(k)
    }

    /// Splits engine key bytes back into bucket and key.
    pub fn split(bytes: &[u8]) -> Option<(&str, &[u8])> {
        let (&len, rest) = bytes.split_first()?;
        let (bucket, key) = rest.split_at_checked(len as usize)?;
        Some((std::str::from_utf8(bucket).ok()?, key))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Number of lock stripes; a power of two.
const STRIPES: usize = 1024;

/// A replica's objects.
///
/// Writers of one key are serialised by a striped lock held only around the
/// engine's get, the in-memory merge and the engine's insert: plain
/// synchronous work of a few microseconds, never an await, so a std mutex is
/// the right tool. Durability waits happen after the lock is released.
pub struct ObjectStore {
    engine: Arc<dyn Store>,
    durability: Arc<Durability>,
    locks: Box<[Mutex<()>]>,
    /// This replica's actor id (its data directory's incarnation). Changes
    /// only when the node discards its data to join a cluster.
    actor: AtomicU64,
    /// This node's id, recorded as the writer of siblings it accepts.
    node_id: String,
}

impl ObjectStore {
    /// Wraps an engine.
    pub fn new(engine: Arc<dyn Store>, durability: Arc<Durability>, actor: Actor, node_id: String) -> Self {
        let locks = (0..STRIPES).map(|_| Mutex::new(())).collect();
        Self { engine, durability, locks, actor: AtomicU64::new(actor), node_id }
    }

    /// The durability worker writes wait for (shared with the hint store).
    pub fn durability(&self) -> &Arc<Durability> {
        &self.durability
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Arc<dyn Store> {
        &self.engine
    }

    /// This replica's actor id.
    pub fn actor(&self) -> Actor {
        self.actor.load(Ordering::Acquire)
    }

    /// Removes every object of every partition and takes `actor` as this
    /// replica's new actor id: a node that drops its data must never reuse
    /// the dots of its old self (see [`crate::storage::Incarnation`]).
    pub fn discard_all(&self, partitions: u32, actor: Actor) -> Result<()> {
        for p in 0..partitions {
            self.engine.clear(Space::Partition(p))?;
        }
        self.actor.store(actor, Ordering::Release);
        Ok(())
    }

    /// Whether any partition holds an object.
    pub fn holds_data(&self, partitions: u32) -> Result<bool> {
        for p in 0..partitions {
            if !self.engine.scan(Space::Partition(p), None, 1)?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn lock(&self, key: &StoreKey) -> std::sync::MutexGuard<'_, ()> {
        let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) as usize;
        // A poisoned stripe only means another writer panicked mid-merge;
        // the engine holds either the old or the new record, both valid.
        self.locks[h & (STRIPES - 1)].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn load(&self, partition: u32, key: &StoreKey) -> Result<Option<Object>> {
        match self.engine.get(Space::Partition(partition), key.as_bytes())? {
            Some(bytes) => Ok(Some(decode_object(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads the local copy of an object.
    pub fn read(&self, partition: u32, bucket: &str, key: &[u8]) -> Result<Option<Object>> {
        self.load(partition, &StoreKey::new(bucket, key))
    }

    /// The local copy of an object in its stored encoding, for a peer that
    /// decodes (and checks) it itself: no decode and re-encode on the way.
    pub fn read_encoded(&self, partition: u32, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.engine.get(Space::Partition(partition), StoreKey::new(bucket, key).as_bytes())?)
    }

    /// Accepts a client write as this replica (the coordinator): the new
    /// sibling gets this replica's next dot and supersedes what `context`
    /// covers. Fails with [`Error::SiblingLimit`], writing nothing, when the
    /// result would hold more than `max_siblings` siblings.
    ///
    /// Call [`ObjectStore::sync`] before acknowledging the write.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
        context: &VersionVector,
        content: Content,
        now_ms: u64,
        max_siblings: usize,
    ) -> Result<Object> {
        let skey = StoreKey::new(bucket, key);
        let _guard = self.lock(&skey);
        let current = self.load(partition, &skey)?.unwrap_or_default();
        // Only this replica makes dots of its actor, so a context cannot
        // have seen more of them than the replica holds. One that claims to
        // is forged or corrupt; taking it would let new dots skip (or
        // overflow) the counter.
        let actor = self.actor();
        if context.get(actor) > current.context().get(actor) {
            return Err(Error::invalid(
                "the context claims writes this replica never made; read the key again and write with that read's context",
            ));
        }
        let mut next = current.clone();
        next.update(actor, context, content, now_ms, &self.node_id);
        if next.siblings().len() > max_siblings {
            return Err(Error::SiblingLimit {
                limit: max_siblings,
                siblings: next.siblings().len(),
                object: Box::new(current),
            });
        }
        self.engine.insert(Space::Partition(partition), skey.as_bytes(), &encode_object(&next))?;
        Ok(next)
    }

    /// Stores `content` over exactly the siblings of `read`, but only if the
    /// local copy is still `read`: a resolved value is written back once,
    /// not once per concurrent reader. Returns the new object, or `None`
    /// when the copy changed meanwhile.
    pub fn replace_if_unchanged(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
        read: &Object,
        content: Content,
        now_ms: u64,
    ) -> Result<Option<Object>> {
        let skey = StoreKey::new(bucket, key);
        let _guard = self.lock(&skey);
        let current = self.load(partition, &skey)?.unwrap_or_default();
        if &current != read {
            return Ok(None);
        }
        let mut next = current;
        next.update(self.actor(), read.context(), content, now_ms, &self.node_id);
        self.engine.insert(Space::Partition(partition), skey.as_bytes(), &encode_object(&next))?;
        Ok(Some(next))
    }

    /// Merges another replica's copy into the local one and returns the
    /// result. Writes nothing when the local copy already holds everything.
    pub fn merge(&self, partition: u32, bucket: &str, key: &[u8], incoming: &Object) -> Result<Object> {
        let skey = StoreKey::new(bucket, key);
        let _guard = self.lock(&skey);
        let current = self.load(partition, &skey)?;
        let merged = match &current {
            Some(c) => c.merged(incoming),
            None => incoming.clone(),
        };
        if current.as_ref() != Some(&merged) {
            self.engine.insert(Space::Partition(partition), skey.as_bytes(), &encode_object(&merged))?;
        }
        Ok(merged)
    }

    /// Waits until earlier writes are as durable as the configured mode
    /// promises.
    pub async fn sync(&self) -> Result<()> {
        self.durability.wait().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::{DurabilityMode, MemStore};

    fn store() -> ObjectStore {
        let engine: Arc<dyn Store> = Arc::new(MemStore::new());
        let d = Arc::new(Durability::start(
            engine.clone(),
            DurabilityMode::Periodic,
            Duration::from_millis(50),
            Duration::ZERO,
        ));
        ObjectStore::new(engine, d, 42, "n1".into())
    }

    #[test]
    fn a_context_claiming_unmade_writes_is_refused() {
        let s = store();
        s.update(0, "b", b"k", &VersionVector::new(), Content::Value(vec![1]), 0, 10).unwrap();
        let forged = VersionVector::from_entries([(42, u64::MAX)]);
        let e = s.update(0, "b", b"k", &forged, Content::Value(vec![2]), 0, 10).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert_eq!(s.read(0, "b", b"k").unwrap().unwrap().siblings().len(), 1, "nothing was written");
    }

    #[test]
    fn write_back_happens_once() {
        let s = store();
        for v in [1u8, 2] {
            s.update(0, "b", b"k", &VersionVector::new(), Content::Value(vec![v]), 0, 10).unwrap();
        }
        let read = s.read(0, "b", b"k").unwrap().unwrap();
        let first = s.replace_if_unchanged(0, "b", b"k", &read, Content::Value(vec![3]), 0).unwrap();
        assert_eq!(first.unwrap().siblings().len(), 1);
        assert!(s.replace_if_unchanged(0, "b", b"k", &read, Content::Value(vec![3]), 0).unwrap().is_none());
    }

    #[test]
    fn store_keys_split_back() {
        let k = StoreKey::new("cart", b"\x00user\xff");
        assert_eq!(StoreKey::split(k.as_bytes()), Some(("cart", &b"\x00user\xff"[..])));
        assert_eq!(StoreKey::split(&[9, b'a']), None);
    }

    #[test]
    fn sibling_limit_refuses_and_writes_nothing() {
        let s = store();
        let none = VersionVector::new();
        for i in 0..3u8 {
            s.update(0, "b", b"k", &none, Content::Value(vec![i]), 0, 3).unwrap();
        }
        let err = s.update(0, "b", b"k", &none, Content::Value(vec![9]), 0, 3).unwrap_err();
        let Error::SiblingLimit { limit, siblings, object } = err else { panic!("wrong error {err}") };
        assert_eq!((limit, siblings, object.siblings().len()), (3, 4, 3));
        assert_eq!(s.read(0, "b", b"k").unwrap().unwrap().siblings().len(), 3);
        // Writing with the returned context collapses them.
        s.update(0, "b", b"k", object.context(), Content::Value(vec![7]), 0, 3).unwrap();
        assert_eq!(s.read(0, "b", b"k").unwrap().unwrap().siblings().len(), 1);
    }

    #[test]
    fn concurrent_updates_of_one_key_are_all_kept() {
        let s = Arc::new(store());
        let threads: Vec<_> = (0..8u8)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    for i in 0..25u8 {
                        s.update(3, "b", b"hot", &VersionVector::new(), Content::Value(vec![t, i]), 0, 1000).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.read(3, "b", b"hot").unwrap().unwrap().siblings().len(), 200);
    }
}
