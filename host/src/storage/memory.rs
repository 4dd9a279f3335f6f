//! An in-memory engine for tests and simulations.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{BatchOp, Entries, Space, StorageError, Store};

type Spaces = HashMap<Space, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A [`Store`] held in memory. Clones share the same data, so a test can
/// "reopen" it; nothing survives the process.
///
/// A store made with [`MemStore::volatile`] also keeps what its last
/// [`Store::flush`] saw, as a disk keeps what was synced, and
/// [`MemStore::crash`] gives that back: what a crash of the process would
/// have left on disk.
#[derive(Clone, Default)]
pub struct MemStore {
    /// One lock for everything: operations are map lookups, never awaited.
    spaces: Arc<Mutex<Spaces>>,
    /// The contents at the last flush, for a volatile store.
    flushed: Option<Arc<Mutex<Spaces>>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose writes survive [`MemStore::crash`] only once
    /// flushed.
    pub fn volatile() -> Self {
        Self { spaces: Arc::default(), flushed: Some(Arc::default()) }
    }

    /// What a crash leaves: a volatile store holding what the last flush
    /// saw (for a store that is not volatile, everything: every write was
    /// as durable as the store gets).
    pub fn crash(&self) -> Self {
        match &self.flushed {
            Some(flushed) => {
                let kept = flushed.lock().unwrap().clone();
                Self { spaces: Arc::new(Mutex::new(kept.clone())), flushed: Some(Arc::new(Mutex::new(kept))) }
            }
            None => self.clone(),
        }
    }
}

impl Store for MemStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.spaces.lock().unwrap().get(&space).and_then(|m| m.get(key).cloned()))
    }

    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.spaces.lock().unwrap().entry(space).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        if let Some(m) = self.spaces.lock().unwrap().get_mut(&space) {
            m.remove(key);
        }
        Ok(())
    }

    fn apply(&self, space: Space, batch: &[BatchOp<'_>]) -> Result<(), StorageError> {
        let mut spaces = self.spaces.lock().unwrap();
        let m = spaces.entry(space).or_default();
        for (k, v) in batch {
            match v {
                Some(v) => m.insert(k.to_vec(), v.to_vec()),
                None => m.remove(*k),
            };
        }
        Ok(())
    }

    fn scan(&self, space: Space, after: Option<&[u8]>, limit: usize) -> Result<Entries, StorageError> {
        use std::ops::Bound;
        let spaces = self.spaces.lock().unwrap();
        let Some(m) = spaces.get(&space) else { return Ok(Vec::new()) };
        let start = after.map_or(Bound::Unbounded, |k| Bound::Excluded(k.to_vec()));
        Ok(m.range((start, Bound::Unbounded)).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn clear(&self, space: Space) -> Result<(), StorageError> {
        self.spaces.lock().unwrap().remove(&space);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        if let Some(flushed) = &self.flushed {
            let now = self.spaces.lock().unwrap().clone();
            *flushed.lock().unwrap() = now;
        }
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_what_the_last_flush_saw() {
        let store = MemStore::volatile();
        store.insert(Space::Meta, b"kept", b"1").unwrap();
        store.flush().unwrap();
        store.insert(Space::Meta, b"lost", b"2").unwrap();
        store.remove(Space::Meta, b"kept").unwrap();
        let after = store.crash();
        assert_eq!(after.get(Space::Meta, b"kept").unwrap(), Some(b"1".to_vec()));
        assert_eq!(after.get(Space::Meta, b"lost").unwrap(), None);
        // The store that came back is volatile too.
        after.insert(Space::Meta, b"new", b"3").unwrap();
        assert_eq!(after.crash().get(Space::Meta, b"new").unwrap(), None);
        // A store that is not volatile keeps everything.
        let plain = MemStore::new();
        plain.insert(Space::Meta, b"k", b"v").unwrap();
        assert_eq!(plain.crash().get(Space::Meta, b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn memory_store_passes_the_conformance_suite() {
        let store = MemStore::new();
        super::super::conformance::run(|| store.clone(), true);
    }
}
