//! The production engine: sled, one tree per [`Space`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use super::{BatchOp, Entries, Space, StorageError, Store};

/// A [`Store`] on sled.
pub struct SledStore {
    db: sled::Db,
    /// One flush at a time. sled 0.34 was seen to deadlock (its log
    /// writers, the segment accountant and a flush waiting on each other)
    /// when the periodic flusher and other threads flushed at once under a
    /// heavy write load; flushes that overlap gain nothing anyway.
    flushing: std::sync::Mutex<()>,
    /// Open trees by space. Opening a tree takes sled's internal lock and a
    /// lookup, so each is opened once; the read lock is held only for a map
    /// lookup and never across an await.
    trees: RwLock<HashMap<Space, sled::Tree>>,
}

fn io(e: sled::Error) -> StorageError {
    match e {
        sled::Error::Corruption { .. } => StorageError::Corruption(e.to_string()),
        other => StorageError::Io(other.to_string()),
    }
}

impl SledStore {
    /// Opens (or creates) a database in `path`. `cache_bytes` bounds sled's
    /// page cache, which is what keeps memory flat however many keys are
    /// stored. Flushing is left to [`super::Durability`], so sled's own
    /// periodic flusher is off.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<Self, StorageError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None);
        // sled lets go of its file lock from a background thread some time
        // after the last handle is dropped, so reopening in the same
        // process (a node restarted in place) can find it still held for a
        // moment. Another process holding it is caught earlier, by the data
        // directory's own lock.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports a held lock as an error of kind `Other`
                // whose message names it (the OS's WouldBlock is only in
                // the text), so the message is what tells.
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().starts_with("could not acquire lock"))
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(io(e)),
            }
        };
        Ok(Self { db, flushing: std::sync::Mutex::new(()), trees: RwLock::new(HashMap::new()) })
    }

    fn tree(&self, space: Space) -> Result<sled::Tree, StorageError> {
        if let Some(t) = self.trees.read().expect("tree map lock poisoned").get(&space) {
            return Ok(t.clone());
        }
        let tree = self.db.open_tree(space.name()).map_err(io)?;
        self.trees.write().expect("tree map lock poisoned").insert(space, tree.clone());
        Ok(tree)
    }
}

impl Store for SledStore {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tree(space)?.get(key).map_err(io)?.map(|v| v.to_vec()))
    }

    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.tree(space)?.insert(key, value).map_err(io)?;
        Ok(())
    }

    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError> {
        self.tree(space)?.remove(key).map_err(io)?;
        Ok(())
    }

    fn apply(&self, space: Space, batch: &[BatchOp<'_>]) -> Result<(), StorageError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch {
            match v {
                Some(v) => b.insert(*k, *v),
                None => b.remove(*k),
            }
        }
        self.tree(space)?.apply_batch(b).map_err(io)
    }

    fn scan(&self, space: Space, after: Option<&[u8]>, limit: usize) -> Result<Entries, StorageError> {
        use std::ops::Bound;
        let tree = self.tree(space)?;
        let start = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        tree.range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(io))
            .collect()
    }

    fn clear(&self, space: Space) -> Result<(), StorageError> {
        self.tree(space)?.clear().map_err(io)
    }

    fn flush(&self) -> Result<(), StorageError> {
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        self.db.flush().map_err(io)?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db.size_on_disk().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        super::super::conformance::run(|| SledStore::open(&path, 16 << 20).unwrap(), true);
    }
}
