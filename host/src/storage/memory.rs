//! An in-memory engine for tests and simulations.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::{BatchOp, Entries, Space, StorageError, Store};

type Spaces = HashMap<Space, BTreeMap<Vec<u8>, Vec<u8>>>;

/// A [`Store`] held in memory. Clones share the same data, so a test can
/// "reopen" it; nothing survives the process.
#[derive(Clone, Default)]
pub struct MemStore {
    /// One lock for everything: operations are map lookups, never awaited.
    spaces: Arc<Mutex<Spaces>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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
    fn memory_store_passes_the_conformance_suite() {
        let store = MemStore::new();
        super::super::conformance::run(|| store.clone(), true);
    }
}
