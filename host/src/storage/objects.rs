//! Objects on a replica: atomic per-key read-modify-write over a [`Store`],
//! keeping each partition's hash trees (in memory) and tombstone index in
//! step with the objects.
//!
//! A partition's space holds (layout 2):
//!
//! ```text
//! [segment: u16 BE] [bucket length: u8] [bucket] [key]          -> object (storage codec)
//! 0xFF 0xFF 0x01 [n: u8]                                        -> a tree's 1024 segment hashes, u64 LE each
//! 0xFF 0xFF 0x02 [n: u8] [segment: u16 BE] [bucket length] [bucket] [key] -> "" (the object holds only tombstones)
//! ```
//!
//! Objects are stored in segment order ([`segment_of`]), so one segment's
//! keys are one range: that is what an anti-entropy exchange reads. A key
//! belongs to the tree of its bucket's `n`: keys of buckets with different
//! `n` have different replica sets, so they are compared with different
//! peers. Segment numbers stay below 0xFF00, so the bookkeeping sorts after
//! every object.
//!
//! **Trees live in memory.** Each change of an object updates its
//! segment's hash (XOR out the old object's hash, XOR in the new one; see
//! [`crate::antientropy::tree`]) under the same lock as the write, and its
//! tombstone-index entry right after it. Writing the tree into the same
//! engine batch as the object would make them crash-consistent, but a sled
//! batch takes a lock that serialises every write of the whole store
//! (measured: one node's writes fell from 57,910 to 6,908 per second).
//! Instead the trees are saved at a clean shutdown ([`ObjectStore::save_trees`])
//! and loaded at the next start; after an unclean stop they start empty and
//! *untrusted*, and the anti-entropy worker rebuilds them from the data
//! ([`ObjectStore::verify_segment`]) before any of that partition's trees
//! is compared again ([`ObjectStore::trusted`]). The same check runs
//! periodically to catch corruption, and when a bucket's `n` changes (its
//! keys are in the old tree until then).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::codec::{decode_object, encode_object};
use super::{Durability, Space, Store};
use crate::antientropy::tree::{SEGMENTS, Segments, key_hash, segment_of};
use crate::causal::{Actor, Content, Object, VersionVector};
use crate::{Error, Result};

/// The storage key of an object: `[bucket length: u8][bucket][key]`.
///
/// Bucket names are at most 255 bytes, so the length fits one byte.
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

    /// Splits storage key bytes back into bucket and key.
    pub fn split(bytes: &[u8]) -> Option<(&str, &[u8])> {
        let (&len, rest) = bytes.split_first()?;
        let (bucket, key) = rest.split_at_checked(len as usize)?;
        Some((std::str::from_utf8(bucket).ok()?, key))
    }

    /// Wraps bytes a peer sent, if they split into a bucket and a key.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        Self::split(&bytes)?;
        Some(Self(bytes))
    }

    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The encoded bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        Self::split(&self.0).expect("a StoreKey always splits").0
    }

    /// The key within the bucket.
    pub fn key(&self) -> &[u8] {
        Self::split(&self.0).expect("a StoreKey always splits").1
    }
}

/// Engine keys of the partition spaces.
mod layout {
    /// First bytes of every bookkeeping key (after every object key).
    pub const META: [u8; 2] = [0xFF, 0xFF];
    const TREE: u8 = 0x01;
    const TOMBSTONE: u8 = 0x02;

    /// An object's engine key.
    pub fn object(segment: u16, store_key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + store_key.len());
        k.extend_from_slice(&segment.to_be_bytes());
        k.extend_from_slice(store_key);
        k
    }

    /// The range start of a segment's objects (exclusive: no key equals it).
    pub fn segment_start(segment: u16) -> Vec<u8> {
        segment.to_be_bytes().to_vec()
    }

    /// Splits an object's engine key; `None` for bookkeeping keys.
    pub fn split_object(k: &[u8]) -> Option<(u16, &[u8])> {
        if k.starts_with(&META) {
            return None;
        }
        let (segment, store_key) = k.split_at_checked(2)?;
        Some((u16::from_be_bytes([segment[0], segment[1]]), store_key))
    }

    /// Where a tree is saved at a clean shutdown.
    pub fn tree(n: u8) -> Vec<u8> {
        vec![META[0], META[1], TREE, n]
    }

    /// The range start of the saved trees (exclusive). Also the key of
    /// the marker saying that every tree of the partition was saved.
    pub fn trees_start() -> Vec<u8> {
        vec![META[0], META[1], TREE]
    }

    /// The `n` of a saved tree's key.
    pub fn split_tree(k: &[u8]) -> Option<u8> {
        match k {
            [0xFF, 0xFF, TREE, n] => Some(*n),
            _ => None,
        }
    }

    /// A tombstone-index entry.
    pub fn tombstone(n: u8, segment: u16, store_key: &[u8]) -> Vec<u8> {
        let mut k = vec![META[0], META[1], TOMBSTONE, n];
        k.extend_from_slice(&segment.to_be_bytes());
        k.extend_from_slice(store_key);
        k
    }

    /// The range start of one tree's tombstone index (exclusive).
    pub fn tombstones_start(n: u8) -> Vec<u8> {
        vec![META[0], META[1], TOMBSTONE, n]
    }

    /// Splits a tombstone-index key into `(n, segment, store key)`.
    pub fn split_tombstone(k: &[u8]) -> Option<(u8, u16, &[u8])> {
        match k {
            [0xFF, 0xFF, TOMBSTONE, n, a, b, rest @ ..] => Some((*n, u16::from_be_bytes([*a, *b]), rest)),
            _ => None,
        }
    }
}

/// Where the counter floor is kept (see `ObjectStore::counter_floor`).
const COUNTER_FLOOR_KEY: &[u8] = b"counter_floor";

/// Which tree a bucket's keys belong to: the bucket's `n`.
pub type ReplicasOf = Arc<dyn Fn(&str) -> u8 + Send + Sync>;

/// Number of lock stripes; a power of two.
const STRIPES: usize = 1024;

/// The segment hashes of one tree, in memory. A segment changes only
/// under its stripe lock, together with its stored copy.
struct Tree(Box<[AtomicU64]>);

impl Tree {
    fn new() -> Self {
        Self((0..SEGMENTS).map(|_| AtomicU64::new(0)).collect())
    }

    fn get(&self, segment: u16) -> u64 {
        self.0[segment as usize].load(Ordering::Acquire)
    }

    fn set(&self, segment: u16, hash: u64) {
        self.0[segment as usize].store(hash, Ordering::Release);
    }
}

/// A stored object with what the trees need to know about it.
struct Held {
    bytes: Vec<u8>,
    tombstone: bool,
}

fn tombstone_only(o: &Object) -> bool {
    !o.siblings().is_empty() && !o.is_found()
}

/// Most bytes one key may hold, encoded, after a replica merge
/// (replication, read repair, hints, anti-entropy). Merges keep every
/// sibling, so a key written on several sides of a partition can go past
/// [`crate::buckets::MAX_KEY_DATA_BYTES`]; up to this bound it is still
/// stored, sent between nodes and read by clients (whose messages carry at
/// most 64 MiB). A merge past it is refused with [`Error::TooLarge`] and
/// leaves the replica's copy as it was.
pub const MAX_MERGED_KEY_BYTES: usize = 56 * 1024 * 1024;

/// Fails with [`Error::TooLarge`] when a merge of replicas' copies of
/// `bucket`/`key` would leave `encoded` bytes, more than a node holds for one key.
pub fn check_merged_size(bucket: &str, key: &[u8], encoded: usize) -> Result<()> {
    if encoded <= MAX_MERGED_KEY_BYTES {
        return Ok(());
    }
    metrics::counter!("concord_merges_refused_total").increment(1);
    Err(Error::TooLarge(format!(
        "merging the replicas' copies of {}/{} would leave {encoded} bytes, over the {} MiB a node holds for one key; \
         the copy stays as it was until a write with a context (or the bucket's resolver) shrinks the key",
        bucket,
        String::from_utf8_lossy(key),
        MAX_MERGED_KEY_BYTES >> 20
    )))
}

/// A replica's objects.
///
/// Writers of one segment of one partition are serialised by a striped
/// lock held only around the engine's get, the in-memory merge and the
/// engine's batch: plain synchronous work of a few microseconds, never an
/// await, so a std mutex is the right tool. Durability waits happen after
/// the lock is released.
pub struct ObjectStore {
    engine: Arc<dyn Store>,
    durability: Arc<Durability>,
    locks: Box<[Mutex<()>]>,
    /// This replica's actor id (its data directory's incarnation). Changes
    /// only when the node discards its data to join a cluster.
    actor: AtomicU64,
    /// This node's id, recorded as the writer of siblings it accepts.
    node_id: String,
    replicas_of: ReplicasOf,
    /// Trees by `(partition, n)`. The map's lock is held only to find or
    /// add a tree.
    trees: RwLock<HashMap<(u32, u8), Arc<Tree>>>,
    /// Above every counter of this actor in an object this replica has
    /// removed (reaped): new dots start above it, so a dot is never made
    /// twice for a key even after its object was forgotten. Kept in
    /// `Meta` under [`COUNTER_FLOOR_KEY`].
    counter_floor: AtomicU64,
    /// Orders raises of the floor with their writes.
    floor_lock: Mutex<()>,
    /// Per partition: whether its trees agree with its data (false after an
    /// unclean stop, until they are rebuilt).
    trusted: Box<[AtomicBool]>,
    /// Objects that hold only tombstones, over all partitions.
    tombstones: AtomicI64,
}

impl ObjectStore {
    /// Opens the objects in `engine` for a ring of `partitions`
    /// partitions: first moves objects stored by the first release (keyed
    /// by bucket and key alone) into segment order, then loads the trees
    /// saved at the last shutdown if it was clean (`clean_start`); if not,
    /// the trees start untrusted, to be rebuilt.
    pub fn open(
        engine: Arc<dyn Store>,
        durability: Arc<Durability>,
        actor: Actor,
        node_id: String,
        replicas_of: ReplicasOf,
        partitions: u32,
        clean_start: bool,
    ) -> Result<Self> {
        let locks = (0..STRIPES).map(|_| Mutex::new(())).collect();
        let store = Self {
            engine,
            durability,
            locks,
            actor: AtomicU64::new(actor),
            node_id,
            replicas_of,
            trees: RwLock::new(HashMap::new()),
            // Set per partition below.
            trusted: (0..partitions).map(|_| AtomicBool::new(false)).collect(),
            tombstones: AtomicI64::new(0),
            counter_floor: AtomicU64::new(0),
            floor_lock: Mutex::new(()),
        };
        if let Some(b) = store.engine.get(Space::Meta, COUNTER_FLOOR_KEY)? {
            let b: [u8; 8] =
                b.as_slice().try_into().map_err(|_| Error::Corruption("the counter floor is not 8 bytes".into()))?;
            store.counter_floor.store(u64::from_le_bytes(b), Ordering::Release);
        }
        let mut migrated = false;
        for p in 0..partitions {
            migrated |= store.migrate_legacy(p)?;
        }
        for p in 0..partitions {
            let space = Space::Partition(p);
            // Saved trees count only if the last run saved all of this
            // partition's (a clean stop with the partition rebuilt). After
            // a migration at a clean start, the trees are those the moved
            // objects were added to, from empty: exact. An empty partition's
            // trees are empty: exact too.
            let saved = clean_start
                && !migrated
                && store.engine.get(space, &layout::trees_start())?.is_some()
                && store.load_trees(p)?;
            let exact = saved || (clean_start && migrated) || !store.holds_objects(p)?;
            store.trusted[p as usize].store(exact, Ordering::Release);
            // Saved trees are good for one start only: from here on they
            // age, and the next start finds them only if this run saves.
            store.forget_saved_trees(p)?;
            store.count_tombstones(p)?;
        }
        Ok(store)
    }

    /// Whether `partition` holds any object.
    fn holds_objects(&self, partition: u32) -> Result<bool> {
        let first = self.engine.scan(Space::Partition(partition), None, 1)?;
        Ok(first.first().is_some_and(|(k, _)| layout::split_object(k).is_some()))
    }

    /// Removes the saved trees of `partition` and their marker.
    fn forget_saved_trees(&self, partition: u32) -> Result<()> {
        let space = Space::Partition(partition);
        let page = self.engine.scan(space, Some(&layout::trees_start()), 256)?;
        for (k, _) in page.iter().take_while(|(k, _)| layout::split_tree(k).is_some()) {
            self.engine.remove(space, k)?;
        }
        self.engine.remove(space, &layout::trees_start())?;
        Ok(())
    }

    /// Loads the saved trees of `partition`. Returns false (and loads
    /// nothing) when one of them does not decode: the trees are rebuilt.
    fn load_trees(&self, partition: u32) -> Result<bool> {
        let space = Space::Partition(partition);
        let page = self.engine.scan(space, Some(&layout::trees_start()), 256)?;
        let mut decoded = Vec::new();
        for (k, v) in &page {
            let Some(n) = layout::split_tree(k) else { break };
            match Segments::decode(v) {
                Ok(saved) => decoded.push((n, saved)),
                Err(e) => {
                    tracing::warn!(partition, n, error = %e, "a saved hash tree is unreadable; rebuilding the partition's trees");
                    return Ok(false);
                }
            }
        }
        for (n, saved) in decoded {
            let tree = self.tree(partition, n);
            for s in 0..SEGMENTS as u16 {
                tree.set(s, saved.get(s));
            }
        }
        Ok(true)
    }

    fn count_tombstones(&self, partition: u32) -> Result<()> {
        let space = Space::Partition(partition);
        let mut after = vec![layout::META[0], layout::META[1], 0x02];
        let mut count = 0;
        loop {
            let page = self.engine.scan(space, Some(&after), 1024)?;
            let n = page.iter().take_while(|(k, _)| layout::split_tombstone(k).is_some()).count();
            count += n;
            if n < page.len() || page.is_empty() {
                break;
            }
            after = page.last().expect("not empty").0.clone();
        }
        self.tombstones.fetch_add(count as i64, Ordering::Relaxed);
        Ok(())
    }

    /// Moves one partition's objects from the first release's layout into
    /// segment order. Safe to repeat after a crash: the old space is the
    /// truth until it is emptied at the end. Returns whether anything moved.
    fn migrate_legacy(&self, partition: u32) -> Result<bool> {
        let legacy = Space::LegacyPartition(partition);
        let mut after: Option<Vec<u8>> = None;
        let mut moved = 0usize;
        loop {
            let page = self.engine.scan(legacy, after.as_deref(), 512)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, v) in &page {
                let Some(key) = StoreKey::from_bytes(k.clone()) else {
                    tracing::warn!(partition, key = ?k, "skipping an unreadable key of the old layout");
                    continue;
                };
                let segment = segment_of(key.as_bytes());
                let _guard = self.lock(partition, segment);
                let old = self.load_held(partition, segment, &key)?;
                if old.as_ref().is_some_and(|o| o.bytes == *v) {
                    continue;
                }
                let tombstone = decode_object(v).map(|o| tombstone_only(&o)).unwrap_or(false);
                self.write(partition, segment, &key, old.as_ref(), Some(&Held { bytes: v.clone(), tombstone }))?;
                moved += 1;
            }
        }
        if after.is_some() {
            self.engine.flush()?;
            self.engine.clear(legacy)?;
            tracing::info!(partition, moved, "moved a partition's objects to the segmented layout");
        }
        Ok(after.is_some())
    }

    /// Saves the trees of every partition whose trees are trusted, each
    /// partition's with a marker that they are complete, for the next
    /// start to load: call at a clean shutdown, after the last write and
    /// before the final flush. Partitions still being rebuilt save nothing
    /// and are rebuilt again after the next start.
    pub fn save_trees(&self) -> Result<()> {
        let trees: Vec<((u32, u8), Arc<Tree>)> =
            self.trees.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, t)| (*k, Arc::clone(t))).collect();
        for ((p, n), tree) in trees {
            if !self.trusted(p) {
                continue;
            }
            let snapshot = Segments::from_hashes((0..SEGMENTS as u16).map(|s| (s, tree.get(s))));
            if !snapshot.is_empty() {
                self.engine.insert(Space::Partition(p), &layout::tree(n), &snapshot.encode())?;
            }
        }
        for p in 0..self.trusted.len() as u32 {
            if self.trusted(p) {
                self.engine.insert(Space::Partition(p), &layout::trees_start(), &[])?;
            }
        }
        Ok(())
    }

    /// Applies a write accepted here to `object`, with a dot of this
    /// replica's actor above the counter floor.
    fn apply_write(&self, object: &mut Object, context: &VersionVector, content: Content, now_ms: u64) -> Result<()> {
        let floor = self.counter_floor.load(Ordering::Acquire);
        object
            .update_above(self.actor(), floor, context, content, now_ms, &self.node_id)
            .map_err(|e| Error::invalid(e.to_string()))?;
        Ok(())
    }

    /// Makes every later dot of this actor's counter exceed `used`; the
    /// floor is written before the caller forgets the object.
    fn raise_counter_floor(&self, used: u64) -> Result<()> {
        let _guard = self.floor_lock.lock().unwrap_or_else(|p| p.into_inner());
        if used > self.counter_floor.load(Ordering::Acquire) {
            self.engine.insert(Space::Meta, COUNTER_FLOOR_KEY, &used.to_le_bytes())?;
            self.counter_floor.store(used, Ordering::Release);
        }
        Ok(())
    }

    /// Whether `partition`'s trees agree with its data (they may not after
    /// an unclean stop, until the anti-entropy worker has rebuilt them).
    pub fn trusted(&self, partition: u32) -> bool {
        self.trusted.get(partition as usize).is_some_and(|t| t.load(Ordering::Acquire))
    }

    /// Partitions whose trees are not trusted yet.
    pub fn untrusted(&self) -> usize {
        self.trusted.iter().filter(|t| !t.load(Ordering::Acquire)).count()
    }

    /// The underlying engine.
    pub fn engine(&self) -> &Arc<dyn Store> {
        &self.engine
    }

    /// The durability worker writes wait for (shared with the hint store).
    pub fn durability(&self) -> &Arc<Durability> {
        &self.durability
    }

    /// This replica's actor id.
    pub fn actor(&self) -> Actor {
        self.actor.load(Ordering::Acquire)
    }

    /// The tree `n` of `bucket`'s keys.
    pub fn replicas_of(&self, bucket: &str) -> u8 {
        (self.replicas_of)(bucket)
    }

    fn lock(&self, partition: u32, segment: u16) -> std::sync::MutexGuard<'_, ()> {
        let h = (partition as usize).wrapping_mul(0x9E37_79B9) ^ segment as usize;
        // A poisoned stripe only means another writer panicked mid-merge;
        // the engine holds either the old or the new batch, both valid.
        self.locks[h & (STRIPES - 1)].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tree(&self, partition: u32, n: u8) -> Arc<Tree> {
        if let Some(t) = self.trees.read().unwrap_or_else(|p| p.into_inner()).get(&(partition, n)) {
            return Arc::clone(t);
        }
        let mut trees = self.trees.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(trees.entry((partition, n)).or_insert_with(|| Arc::new(Tree::new())))
    }

    fn load_held(&self, partition: u32, segment: u16, key: &StoreKey) -> Result<Option<Held>> {
        Ok(self.load(partition, segment, key)?.map(|(held, _)| held))
    }

    /// The stored copy of `key`, decoded once: as stored, and as an object.
    fn load(&self, partition: u32, segment: u16, key: &StoreKey) -> Result<Option<(Held, Object)>> {
        let Some(bytes) = self.engine.get(Space::Partition(partition), &layout::object(segment, key.as_bytes()))?
        else {
            return Ok(None);
        };
        let object = decode_object(&bytes)?;
        Ok(Some((Held { bytes, tombstone: tombstone_only(&object) }, object)))
    }

    /// Replaces `old` with `new` (either may be absent) in one batch with
    /// the tree and tombstone-index changes. Call under the segment's lock.
    fn write(
        &self,
        partition: u32,
        segment: u16,
        key: &StoreKey,
        old: Option<&Held>,
        new: Option<&Held>,
    ) -> Result<()> {
        let n = self.replicas_of(key.bucket());
        let tree = self.tree(partition, n);
        let mut hash = tree.get(segment);
        for h in old.iter().chain(new.iter()) {
            hash ^= key_hash(key.as_bytes(), &h.bytes);
        }
        let space = Space::Partition(partition);
        let object_key = layout::object(segment, key.as_bytes());
        match new {
            Some(h) => self.engine.insert(space, &object_key, &h.bytes)?,
            None => self.engine.remove(space, &object_key)?,
        }
        tree.set(segment, hash);
        let (was, is) = (old.is_some_and(|h| h.tombstone), new.is_some_and(|h| h.tombstone));
        if was != is {
            let tomb_key = layout::tombstone(n, segment, key.as_bytes());
            if is {
                self.engine.insert(space, &tomb_key, &[])?;
            } else {
                self.engine.remove(space, &tomb_key)?;
            }
        }
        self.tombstones.fetch_add(i64::from(is) - i64::from(was), Ordering::Relaxed);
        Ok(())
    }

    /// Reads the local copy of an object.
    pub fn read(&self, partition: u32, bucket: &str, key: &[u8]) -> Result<Option<Object>> {
        match self.read_encoded(partition, bucket, key)? {
            Some(bytes) => Ok(Some(decode_object(&bytes)?)),
            None => Ok(None),
        }
    }

    /// The local copy of an object in its stored encoding, for a peer that
    /// decodes (and checks) it itself: no decode and re-encode on the way.
    pub fn read_encoded(&self, partition: u32, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read_raw(partition, &StoreKey::new(bucket, key))
    }

    /// [`ObjectStore::read_encoded`] by storage key.
    pub fn read_raw(&self, partition: u32, key: &StoreKey) -> Result<Option<Vec<u8>>> {
        let k = layout::object(segment_of(key.as_bytes()), key.as_bytes());
        Ok(self.engine.get(Space::Partition(partition), &k)?)
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
        Ok(self.update_encoded(partition, bucket, key, context, content, now_ms, max_siblings)?.0)
    }

    /// [`ObjectStore::update`], also returning the new object as stored,
    /// for a coordinator to send to the other replicas without encoding it
    /// again.
    #[allow(clippy::too_many_arguments)]
    pub fn update_encoded(
        &self,
        partition: u32,
        bucket: &str,
        key: &[u8],
        context: &VersionVector,
        content: Content,
        now_ms: u64,
        max_siblings: usize,
    ) -> Result<(Object, Vec<u8>)> {
        let skey = StoreKey::new(bucket, key);
        let segment = segment_of(skey.as_bytes());
        let _guard = self.lock(partition, segment);
        let (old, current) = match self.load(partition, segment, &skey)? {
            Some((held, object)) => (Some(held), object),
            None => (None, Object::new()),
        };
        // Only this replica makes dots of its actor, so a context cannot
        // have seen more of them than the replica holds. One that claims to
        // is forged or corrupt; taking it would let new dots skip (or
        // overflow) the counter.
        let actor = self.actor();
        if context.get(actor) > current.context().get(actor).max(self.counter_floor.load(Ordering::Acquire)) {
            return Err(Error::invalid(
                "the context claims writes this replica never made; read the key again and write with that read's context",
            ));
        }
        // The write keeps the siblings its context does not cover and adds
        // one: counted first, so the stored copy need not be cloned for the
        // error.
        let siblings = current.siblings().iter().filter(|s| !context.covers(s.dot)).count() + 1;
        if siblings > max_siblings {
            return Err(Error::SiblingLimit { limit: max_siblings, siblings, object: Box::new(current) });
        }
        let mut next = current;
        self.apply_write(&mut next, context, content, now_ms)?;
        debug_assert_eq!(next.siblings().len(), siblings);
        let held = Held { bytes: encode_object(&next), tombstone: tombstone_only(&next) };
        self.write(partition, segment, &skey, old.as_ref(), Some(&held))?;
        Ok((next, held.bytes))
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
        let segment = segment_of(skey.as_bytes());
        let _guard = self.lock(partition, segment);
        let (old, current) = match self.load(partition, segment, &skey)? {
            Some((held, object)) => (Some(held), object),
            None => (None, Object::new()),
        };
        if &current != read {
            return Ok(None);
        }
        let mut next = current;
        self.apply_write(&mut next, read.context(), content, now_ms)?;
        let held = Held { bytes: encode_object(&next), tombstone: tombstone_only(&next) };
        self.write(partition, segment, &skey, old.as_ref(), Some(&held))?;
        Ok(Some(next))
    }

    /// Merges another replica's copy into the local one and returns the
    /// result. Writes nothing when the local copy already holds everything.
    /// A merge keeps every sibling, even past the bucket's `max_siblings`,
    /// but fails with [`Error::TooLarge`], leaving the local copy as it
    /// was, when the result would take more than
    /// [`MAX_MERGED_KEY_BYTES`].
    pub fn merge(&self, partition: u32, bucket: &str, key: &[u8], incoming: &Object) -> Result<Object> {
        self.merge_raw(partition, &StoreKey::new(bucket, key), incoming)
    }

    /// [`ObjectStore::merge`] by storage key.
    pub fn merge_raw(&self, partition: u32, skey: &StoreKey, incoming: &Object) -> Result<Object> {
        let segment = segment_of(skey.as_bytes());
        let _guard = self.lock(partition, segment);
        let (old, merged) = match self.load(partition, segment, skey)? {
            Some((held, object)) => (Some(held), object.merged(incoming)),
            None => (None, incoming.clone()),
        };
        let bytes = encode_object(&merged);
        if old.as_ref().map(|h| &h.bytes) != Some(&bytes) {
            check_merged_size(skey.bucket(), skey.key(), bytes.len())?;
            let held = Held { bytes, tombstone: tombstone_only(&merged) };
            self.write(partition, segment, skey, old.as_ref(), Some(&held))?;
        }
        Ok(merged)
    }

    /// Removes an object, but only if its stored bytes still hash to
    /// `hash` (as [`key_hash`] computes it): a tombstone that every replica
    /// was confirmed to hold is reaped, while anything written since stays.
    /// Returns whether it was removed.
    pub fn remove_if(&self, partition: u32, skey: &StoreKey, hash: u64) -> Result<bool> {
        let segment = segment_of(skey.as_bytes());
        let _guard = self.lock(partition, segment);
        let Some((old, object)) = self.load(partition, segment, skey)? else { return Ok(false) };
        if key_hash(skey.as_bytes(), &old.bytes) != hash {
            return Ok(false);
        }
        // This actor's counters for the key are about to be forgotten.
        let used = object.context().get(self.actor());
        self.raise_counter_floor(used)?;
        self.write(partition, segment, skey, Some(&old), None)?;
        Ok(true)
    }

    /// The trees that hold keys here, as `(partition, n)`.
    pub fn trees(&self) -> Vec<(u32, u8)> {
        let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u32, u8)> =
            trees.iter().filter(|(_, t)| t.0.iter().any(|s| s.load(Ordering::Relaxed) != 0)).map(|(k, _)| *k).collect();
        out.sort();
        out
    }

    /// A snapshot of one tree's segment hashes.
    pub fn segments(&self, partition: u32, n: u8) -> Segments {
        let tree = self.tree(partition, n);
        Segments::from_hashes((0..SEGMENTS as u16).map(|s| (s, tree.get(s))))
    }

    /// The keys of tree `n` in one segment, with their hashes, in key
    /// order: one range read.
    pub fn segment_keys(&self, partition: u32, n: u8, segment: u16) -> Result<Vec<(StoreKey, u64)>> {
        // Hashed page by page: a listing never holds the segment's values.
        let mut out = Vec::new();
        self.scan_segment(partition, n, segment, |key, bytes| {
            let h = key_hash(key.as_bytes(), bytes);
            out.push((key, h));
        })?;
        Ok(out)
    }

    /// The objects of tree `n` in one segment, as stored.
    pub fn segment_objects(&self, partition: u32, n: u8, segment: u16) -> Result<Vec<(StoreKey, Vec<u8>)>> {
        let mut out = Vec::new();
        self.scan_segment(partition, n, segment, |key, bytes| out.push((key, bytes.to_vec())))?;
        Ok(out)
    }

    /// Calls `f` with each object of tree `(partition, n)` in `segment`, in
    /// key order, a page at a time.
    fn scan_segment(&self, partition: u32, n: u8, segment: u16, mut f: impl FnMut(StoreKey, &[u8])) -> Result<()> {
        let space = Space::Partition(partition);
        let mut after = layout::segment_start(segment);
        loop {
            let page = self.engine.scan(space, Some(&after), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (k, v) in &page {
                match layout::split_object(k) {
                    Some((s, store_key)) if s == segment => {
                        let Some(key) = StoreKey::from_bytes(store_key.to_vec()) else { continue };
                        if self.replicas_of(key.bucket()) == n {
                            f(key, v);
                        }
                    }
                    _ => return Ok(()),
                }
            }
        }
        Ok(())
    }

    /// Up to `limit` keys of tree `n` whose objects hold only tombstones,
    /// after `after`, in index order.
    pub fn tombstones(&self, partition: u32, n: u8, after: Option<&[u8]>, limit: usize) -> Result<Vec<StoreKey>> {
        let start = match after {
            Some(k) => layout::tombstone(n, segment_of(k), k),
            None => layout::tombstones_start(n),
        };
        let page = self.engine.scan(Space::Partition(partition), Some(&start), limit)?;
        Ok(page
            .into_iter()
            .map_while(|(k, _)| match layout::split_tombstone(&k) {
                Some((tn, _, key)) if tn == n => Some(StoreKey::from_bytes(key.to_vec())),
                _ => None,
            })
            .flatten()
            .collect())
    }

    /// Objects that hold only tombstones, on this node.
    pub fn tombstone_count(&self) -> u64 {
        self.tombstones.load(Ordering::Relaxed).max(0) as u64
    }

    /// Recomputes one segment of a partition from the objects it holds and
    /// corrects every tree and tombstone entry that disagrees (corruption,
    /// or a bucket whose `n` changed). Returns how many entries it fixed.
    pub fn verify_segment(&self, partition: u32, segment: u16) -> Result<usize> {
        let space = Space::Partition(partition);
        let _guard = self.lock(partition, segment);
        // What the data says.
        let mut hashes: BTreeMap<u8, u64> = BTreeMap::new();
        let mut tombs: Vec<(u8, Vec<u8>)> = Vec::new();
        let mut after = layout::segment_start(segment);
        'scan: loop {
            let page = self.engine.scan(space, Some(&after), 256)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            for (k, v) in page {
                let Some((s, store_key)) = layout::split_object(&k) else { break 'scan };
                if s != segment {
                    break 'scan;
                }
                let Some((bucket, _)) = StoreKey::split(store_key) else { continue };
                let n = self.replicas_of(bucket);
                *hashes.entry(n).or_default() ^= key_hash(store_key, &v);
                if decode_object(&v).is_ok_and(|o| tombstone_only(&o)) {
                    tombs.push((n, store_key.to_vec()));
                }
            }
        }
        // What the bookkeeping says, and the fixes.
        let mut fixed = 0;
        let known: Vec<u8> = {
            let trees = self.trees.read().unwrap_or_else(|p| p.into_inner());
            trees.keys().filter(|(p, _)| *p == partition).map(|(_, n)| *n).collect()
        };
        let mut ns: Vec<u8> = known.into_iter().chain(hashes.keys().copied()).collect();
        ns.sort();
        ns.dedup();
        for n in ns {
            let want = hashes.get(&n).copied().unwrap_or(0);
            let tree = self.tree(partition, n);
            if tree.get(segment) != want {
                tree.set(segment, want);
                // A tree being rebuilt is corrected everywhere; that is no
                // fault.
                if self.trusted(partition) {
                    fixed += 1;
                }
            }
            let mut start = layout::tombstone(n, segment, &[]);
            let mut indexed = Vec::new();
            loop {
                let page = self.engine.scan(space, Some(&start), 256)?;
                let Some((last, _)) = page.last() else { break };
                start = last.clone();
                let before = indexed.len();
                for (k, _) in &page {
                    match layout::split_tombstone(k) {
                        Some((tn, s, key)) if tn == n && s == segment => indexed.push(key.to_vec()),
                        _ => break,
                    }
                }
                if indexed.len() - before < page.len() {
                    break;
                }
            }
            let wanted: Vec<&Vec<u8>> = tombs.iter().filter(|(tn, _)| *tn == n).map(|(_, k)| k).collect();
            for k in &indexed {
                if !wanted.contains(&k) {
                    self.engine.remove(space, &layout::tombstone(n, segment, k))?;
                    self.tombstones.fetch_sub(1, Ordering::Relaxed);
                    fixed += 1;
                }
            }
            for k in wanted {
                if !indexed.contains(k) {
                    self.engine.insert(space, &layout::tombstone(n, segment, k), &[])?;
                    self.tombstones.fetch_add(1, Ordering::Relaxed);
                    fixed += 1;
                }
            }
        }
        if segment as usize == SEGMENTS - 1
            && let Some(t) = self.trusted.get(partition as usize)
            && !t.swap(true, Ordering::AcqRel)
        {
            tracing::info!(partition, "rebuilt the partition's hash trees from its data");
        }
        Ok(fixed)
    }

    /// Removes every key of tree `n` of a partition (after its data was
    /// handed to the partition's new owners). Returns how many went.
    pub fn drop_tree(&self, partition: u32, n: u8) -> Result<u64> {
        let space = Space::Partition(partition);
        let mut removed = 0;
        let mut after: Option<Vec<u8>> = None;
        // One pass over the partition's objects, in segment order.
        loop {
            let page = self.engine.scan(space, after.as_deref(), 512)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let mut done = false;
            for (k, _) in page {
                let Some((segment, store_key)) = layout::split_object(&k) else {
                    done = true;
                    break;
                };
                let Some(key) = StoreKey::from_bytes(store_key.to_vec()) else { continue };
                if self.replicas_of(key.bucket()) != n {
                    continue;
                }
                let _guard = self.lock(partition, segment);
                if let Some(held) = self.load_held(partition, segment, &key)? {
                    // The partition may come back to this node: its new
                    // dots must not repeat those the other replicas hold.
                    if let Ok(o) = decode_object(&held.bytes) {
                        self.raise_counter_floor(o.context().get(self.actor()))?;
                    }
                    self.write(partition, segment, &key, Some(&held), None)?;
                    removed += 1;
                }
            }
            if done {
                break;
            }
        }
        // A tree that drifted from its data (it should not, but the tree
        // is what says whether a transfer is done) would stay non-zero
        // with nothing under it: recompute what is left from the data.
        let tree = self.trees.read().unwrap_or_else(|p| p.into_inner()).get(&(partition, n)).cloned();
        if let Some(tree) = tree {
            for segment in (0..SEGMENTS as u16).filter(|s| tree.get(*s) != 0) {
                self.verify_segment(partition, segment)?;
            }
        }
        Ok(removed)
    }

    /// Removes every object of every partition and takes `actor` as this
    /// replica's new actor id: a node that drops its data must never reuse
    /// the dots of its old self (see [`crate::storage::Incarnation`]).
    pub fn discard_all(&self, partitions: u32, actor: Actor) -> Result<()> {
        for p in 0..partitions {
            self.engine.clear(Space::Partition(p))?;
            self.engine.clear(Space::LegacyPartition(p))?;
        }
        self.trees.write().unwrap_or_else(|p| p.into_inner()).clear();
        self.tombstones.store(0, Ordering::Relaxed);
        self.actor.store(actor, Ordering::Release);
        Ok(())
    }

    /// Whether any partition holds an object.
    pub fn holds_data(&self, partitions: u32) -> Result<bool> {
        for p in 0..partitions {
            let first = self.engine.scan(Space::Partition(p), None, 1)?;
            if first.first().is_some_and(|(k, _)| layout::split_object(k).is_some()) {
                return Ok(true);
            }
        }
        Ok(false)
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
        open_on(Arc::new(MemStore::new()), 42, true)
    }

    /// An object store of actor `actor` over `engine` (8 partitions, every
    /// bucket n = 3), as a start that was clean or not.
    fn open_on(engine: Arc<dyn Store>, actor: Actor, clean: bool) -> ObjectStore {
        let d = Arc::new(Durability::start(
            engine.clone(),
            DurabilityMode::Periodic,
            Duration::from_millis(50),
            Duration::ZERO,
        ));
        ObjectStore::open(engine, d, actor, "n1".into(), Arc::new(|_: &str| 3), 8, clean).unwrap()
    }

    /// The tree a full scan of the partition gives, for comparison.
    fn rebuilt(s: &ObjectStore, partition: u32, n: u8) -> Segments {
        let mut t = Segments::new();
        for segment in 0..SEGMENTS as u16 {
            for (k, h) in s.segment_keys(partition, n, segment).unwrap() {
                t.toggle(segment_of(k.as_bytes()), h);
            }
        }
        t
    }

    #[test]
    fn every_write_keeps_the_tree_and_the_tombstone_index_in_step() {
        let s = store();
        let none = VersionVector::new();
        for i in 0..50u8 {
            let key = [b'k', i];
            let o = s.update(1, "b", &key, &none, Content::Value(vec![i]), 0, 10).unwrap();
            if i % 3 == 0 {
                s.update(1, "b", &key, o.context(), Content::Tombstone, 0, 10).unwrap();
            }
            if i % 5 == 0 {
                let mut other = Object::new();
                other.update(99, &none, Content::Value(vec![7]), 0, "n2").unwrap();
                s.merge(1, "b", &key, &other).unwrap();
            }
        }
        assert!(!s.segments(1, 3).is_empty());
        assert_eq!(s.segments(1, 3), rebuilt(&s, 1, 3), "the incremental tree equals a rebuild");
        // Tombstone-only objects: every third key, unless a merge added a
        // live sibling (every fifth).
        let tombs = s.tombstones(1, 3, None, 1000).unwrap();
        let want: Vec<u8> = (0..50u8).filter(|i| i % 3 == 0 && i % 5 != 0).collect();
        assert_eq!(tombs.len(), want.len());
        assert_eq!(s.tombstone_count(), want.len() as u64);
        for segment in 0..SEGMENTS as u16 {
            assert_eq!(s.verify_segment(1, segment).unwrap(), 0, "nothing to fix in segment {segment}");
        }
    }

    #[test]
    fn a_tombstone_goes_only_if_it_is_still_what_was_confirmed() {
        let s = store();
        let none = VersionVector::new();
        let o = s.update(2, "b", b"k", &none, Content::Value(vec![1]), 0, 10).unwrap();
        s.update(2, "b", b"k", o.context(), Content::Tombstone, 0, 10).unwrap();
        let key = StoreKey::new("b", b"k");
        let bytes = s.read_raw(2, &key).unwrap().unwrap();
        let hash = key_hash(key.as_bytes(), &bytes);
        // A write lands between the confirmation and the removal.
        s.update(2, "b", b"k", &none, Content::Value(vec![2]), 0, 10).unwrap();
        assert!(!s.remove_if(2, &key, hash).unwrap());
        assert!(s.read(2, "b", b"k").unwrap().unwrap().is_found());
        let bytes = s.read_raw(2, &key).unwrap().unwrap();
        assert!(s.remove_if(2, &key, key_hash(key.as_bytes(), &bytes)).unwrap());
        assert_eq!(s.read(2, "b", b"k").unwrap(), None);
        assert!(s.segments(2, 3).is_empty(), "the tree is empty again");
    }

    #[test]
    fn damaged_bookkeeping_is_found_and_fixed() {
        let s = store();
        let none = VersionVector::new();
        for i in 0..20u8 {
            s.update(3, "b", &[i], &none, Content::Value(vec![i]), 0, 10).unwrap();
        }
        let good = s.segments(3, 3);
        let victim = segment_of(StoreKey::new("b", &[4]).as_bytes());
        s.tree(3, 3).set(victim, 7);
        s.engine().insert(Space::Partition(3), &layout::tombstone(3, victim, b"\x01bghost"), &[]).unwrap();
        assert_eq!(s.verify_segment(3, victim).unwrap(), 2);
        assert_eq!(s.segments(3, 3), good);
        assert!(s.tombstones(3, 3, None, 10).unwrap().is_empty());
    }

    #[test]
    fn trees_survive_a_clean_stop_and_are_rebuilt_after_an_unclean_one() {
        let engine = MemStore::new();
        let open = |clean: bool| open_on(Arc::new(engine.clone()), 1, clean);
        let s = open(true);
        for i in 0..40u8 {
            s.update(5, "b", &[i], &VersionVector::new(), Content::Value(vec![i]), 0, 10).unwrap();
        }
        let tree = s.segments(5, 3);
        s.save_trees().unwrap();
        drop(s);
        let clean = open(true);
        assert!(clean.trusted(5));
        assert_eq!(clean.segments(5, 3), tree, "a clean start loads the saved trees");
        drop(clean);
        let crashed = open(false);
        assert!(!crashed.trusted(5) && crashed.segments(5, 3).is_empty(), "an unclean start trusts nothing");
        for segment in 0..SEGMENTS as u16 {
            crashed.verify_segment(5, segment).unwrap();
        }
        assert!(crashed.trusted(5));
        assert_eq!(crashed.segments(5, 3), tree, "rebuilt from the data");
        drop(crashed);
        // Stopped cleanly before a rebuild finished: the old saved trees
        // are not trusted at the next clean start.
        let again = open(false);
        assert!(!again.trusted(5));
        assert!(again.trusted(6), "an empty partition's trees are exact whatever the stop");
        again.save_trees().unwrap();
        drop(again);
        let next = open(true);
        assert!(!next.trusted(5), "a partition not rebuilt before a clean stop is rebuilt after it");
        assert!(next.segments(5, 3).is_empty());
    }

    #[test]
    fn objects_of_the_first_layout_are_moved_into_segment_order() {
        let engine = MemStore::new();
        let mut o = Object::new();
        o.update(5, &VersionVector::new(), Content::Value(b"old".to_vec()), 0, "n1").unwrap();
        for k in [&b"a"[..], b"b", b"c"] {
            engine.insert(Space::LegacyPartition(4), StoreKey::new("b", k).as_bytes(), &encode_object(&o)).unwrap();
        }
        let engine: Arc<dyn Store> = Arc::new(engine);
        let s = open_on(Arc::clone(&engine), 1, true);
        for k in [&b"a"[..], b"b", b"c"] {
            assert_eq!(s.read(4, "b", k).unwrap().as_ref(), Some(&o));
        }
        assert!(engine.scan(Space::LegacyPartition(4), None, 1).unwrap().is_empty());
        assert_eq!(s.segments(4, 3), rebuilt(&s, 4, 3));
    }

    #[test]
    fn merges_keep_siblings_past_the_budget_until_a_write_with_a_context() {
        let (a, b) = (store(), open_on(Arc::new(MemStore::new()), 7, true));
        for i in 0..3u8 {
            a.update(0, "b", b"k", &VersionVector::new(), Content::Value(vec![i]), 0, 3).unwrap();
            b.update(0, "b", b"k", &VersionVector::new(), Content::Value(vec![10 + i]), 0, 3).unwrap();
        }
        let theirs = b.read(0, "b", b"k").unwrap().unwrap();
        let merged = a.merge(0, "b", b"k", &theirs).unwrap();
        assert_eq!(merged.siblings().len(), 6, "a merge keeps every sibling past max_siblings = 3");
        let e = a.update(0, "b", b"k", &VersionVector::new(), Content::Value(vec![9]), 0, 3).unwrap_err();
        assert!(matches!(e, Error::SiblingLimit { siblings: 7, .. }), "{e}");
        let next = a.update(0, "b", b"k", merged.context(), Content::Value(vec![9]), 0, 3).unwrap();
        assert_eq!(next.siblings().len(), 1, "a write with the context brings the key back under the budget");
    }

    #[test]
    fn a_merge_past_the_key_bound_is_refused_and_changes_nothing() {
        let (a, b) = (store(), open_on(Arc::new(MemStore::new()), 7, true));
        let half = MAX_MERGED_KEY_BYTES / 2 + 1024;
        a.update(0, "b", b"k", &VersionVector::new(), Content::Value(vec![1; half]), 0, 3).unwrap();
        b.update(0, "b", b"k", &VersionVector::new(), Content::Value(vec![2; half]), 0, 3).unwrap();
        let before = a.read_encoded(0, "b", b"k").unwrap();
        let theirs = b.read(0, "b", b"k").unwrap().unwrap();
        let e = a.merge(0, "b", b"k", &theirs).unwrap_err();
        assert!(matches!(&e, Error::TooLarge(m) if m.contains("b/k") && m.contains("56 MiB")), "{e}");
        assert_eq!(a.read_encoded(0, "b", b"k").unwrap(), before, "the local copy is as it was");
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
    fn a_replica_whose_counter_a_forged_context_exhausted_refuses_the_write_and_keeps_the_key() {
        // Another replica took a forged context {42: u64::MAX}, and its
        // object reached this replica (actor 42) by replication.
        let s = store();
        let mut theirs = Object::new();
        let forged = VersionVector::from_entries([(42, u64::MAX)]);
        theirs.update(7, &forged, Content::Value(b"v".to_vec()), 0, "n2").unwrap();
        s.merge(0, "b", b"k", &theirs).unwrap();
        let e = s.update(0, "b", b"k", &VersionVector::new(), Content::Value(b"w".to_vec()), 0, 10).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        // Not a wrapped dot 0 stored and then unreadable: the key reads.
        assert_eq!(s.read(0, "b", b"k").unwrap().unwrap(), theirs);
    }

    #[test]
    fn a_key_written_again_after_its_tombstone_is_reaped_never_repeats_a_dot() {
        let engine = MemStore::new();
        let open = || open_on(Arc::new(engine.clone()), 42, true);
        let s = open();
        let none = VersionVector::new();
        let written = s.update(0, "b", b"k", &none, Content::Value(vec![1]), 0, 10).unwrap();
        let deleted = s.update(0, "b", b"k", written.context(), Content::Tombstone, 0, 10).unwrap();
        // A client still holds the tombstone's context when it is reaped.
        let stale = deleted.context().clone();
        let skey = StoreKey::new("b", b"k");
        let raw = s.read_raw(0, &skey).unwrap().unwrap();
        assert!(s.remove_if(0, &skey, key_hash(skey.as_bytes(), &raw)).unwrap());
        drop(s);
        // Also after a restart: the floor is stored.
        let s = open();
        let fresh = s.update(0, "b", b"k", &none, Content::Value(vec![2]), 0, 10).unwrap();
        let dot = fresh.siblings()[0].dot;
        assert!(!stale.covers(dot), "a write after the reap got {dot:?}, which a context from before it covers");
        // The stale context is still taken, and keeps the new write.
        let later = s.update(0, "b", b"k", &stale, Content::Value(vec![3]), 0, 10).unwrap();
        assert_eq!(later.siblings().len(), 2);
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
