//! Local storage: the engine seam, the object codec and the data directory.
//!
//! Layers, bottom up:
//!
//! * [`Store`] is the narrow trait an engine implements: byte keys and values
//!   in a few named [`Space`]s (one per ring partition, plus metadata, hints
//!   and plugins). [`SledStore`] is the production engine, [`MemStore`] an
//!   in-memory one for tests. Both pass the same [`conformance`] suite.
//! * [`codec`] turns an [`Object`](crate::causal::Object) into versioned bytes
//!   and back, refusing bytes it does not recognise.
//! * [`ObjectStore`] is what the rest of the node uses: read, update and merge
//!   objects atomically per key, with the configured [`Durability`].
//! * [`Pool`] runs storage calls on threads of their own for the request
//!   paths, so a call that waits for the disk never holds up a tokio worker.
//! * [`DataDir`] owns the directory: the lock that keeps a second process out
//!   and the node's [`Incarnation`].

pub mod codec;
pub mod conformance;
mod datadir;
mod durability;
mod memory;
mod objects;
mod pool;
mod sled_store;

pub use datadir::{DataDir, Incarnation};
pub use durability::{Durability, DurabilityMode};
pub use memory::MemStore;
pub use objects::{MAX_MERGED_KEY_BYTES, ObjectStore, ReplicasOf, StoreKey, check_merged_size};
pub use pool::Pool;
pub use sled_store::SledStore;

/// Key-value pairs returned by [`Store::scan`].
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// One change of a batch: insert `Some(value)` at the key, or remove it.
pub type BatchOp<'a> = (&'a [u8], Option<&'a [u8]>);

/// A named keyspace inside a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Objects of one ring partition, in segment order, with the
    /// partition's hash trees and tombstone index (see [`ObjectStore`]).
    /// Kept apart so a partition can be streamed to a new owner or dropped
    /// as a unit.
    Partition(u32),
    /// Objects of one partition as the first release stored them (keyed by
    /// bucket and key alone). Read once, to migrate them, and then emptied.
    LegacyPartition(u32),
    /// Small node-local metadata (bucket properties, ring, identity).
    Meta,
    /// Writes held for an unreachable replica (hinted handoff).
    Hints,
    /// Deployed plugin binaries.
    Plugins,
}

impl Space {
    /// A stable name, used as the sled tree name.
    pub fn name(self) -> String {
        match self {
            Space::Partition(p) => format!("part{p:05}"),
            Space::LegacyPartition(p) => format!("p{p:05}"),
            Space::Meta => "meta".into(),
            Space::Hints => "hints".into(),
            Space::Plugins => "plugins".into(),
        }
    }
}

/// What a storage engine reports when it fails.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The engine could not read or write (disk full, I/O error).
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// Stored bytes are not what Concord wrote.
    #[error("stored data is corrupt: {0}")]
    Corruption(String),
}

impl From<StorageError> for crate::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(m) => crate::Error::Internal(format!("storage I/O failed: {m}")),
            StorageError::Corruption(m) => crate::Error::Corruption(m),
        }
    }
}

/// A storage engine: ordered byte maps in named spaces.
///
/// Invariants every implementation keeps (checked by [`conformance::run`]):
/// * a value read back is exactly the last value inserted for that key in
///   that space; spaces never see each other's keys;
/// * `scan` returns keys in ascending byte order, strictly after `after`;
/// * `apply` is atomic: after a crash, all of a batch's changes are there
///   or none is, and readers never see part of a batch;
/// * when `flush` returns, every insert and remove that returned before the
///   call survives a crash of the process;
/// * methods are safe to call from many threads at once. Atomic
///   read-modify-write is *not* required: [`ObjectStore`] serialises writers
///   of one key itself.
pub trait Store: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Inserts or replaces one value.
    fn insert(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    /// Removes one value; removing an absent key is not an error.
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), StorageError>;
    /// Applies several inserts and removes in one space atomically, in
    /// order (a later change of a key wins).
    fn apply(&self, space: Space, batch: &[BatchOp<'_>]) -> Result<(), StorageError>;
    /// Up to `limit` entries with keys strictly greater than `after` (or from
    /// the start), in key order.
    fn scan(&self, space: Space, after: Option<&[u8]>, limit: usize) -> Result<Entries, StorageError>;
    /// Removes every entry of a space.
    fn clear(&self, space: Space) -> Result<(), StorageError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), StorageError>;
    /// Bytes the engine uses on disk (0 for memory engines).
    fn size_on_disk(&self) -> Result<u64, StorageError>;
}
