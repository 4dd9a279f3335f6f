//! Tictac hash trees as plain data: which segment a key falls in, what a
//! key contributes to its segment, and how two trees differ. Pure.
//!
//! A partition's keys are spread over [`SEGMENTS`] segments by a hash of the
//! key. A segment's hash is the XOR of its keys' hashes, each a hash of the
//! key and its stored bytes (as in Riak's tictac AAE). XOR makes an update
//! cheap and order-free: a write XORs out the old object's hash and XORs in
//! the new one, without reading anything but the segment itself. Replicas
//! that hold the same objects for a segment have equal segment hashes, so
//! comparing two trees names the segments to look into, and listing the
//! keys of those segments names the keys to exchange.

use std::collections::BTreeMap;

/// Segments per tree. Part of the storage format: objects are stored in
/// segment order (see [`crate::storage`]).
pub const SEGMENTS: usize = 1024;

/// Seed of the segment hash, so segments are independent of partitions.
const SEGMENT_SEED: u64 = 0x7365_676d_656e_7473;
/// Seed of the key hash.
const KEY_SEED: u64 = 0x6b65_7968_6173_6831;

/// The segment of an object, from its storage key (bucket and key).
pub fn segment_of(store_key: &[u8]) -> u16 {
    (xxhash_rust::xxh3::xxh3_64_with_seed(store_key, SEGMENT_SEED) >> 54) as u16
}

/// What one stored object adds to its segment's hash. Never 0, so every
/// present key changes its segment.
pub fn key_hash(store_key: &[u8], object: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(KEY_SEED);
    h.update(&(store_key.len() as u32).to_le_bytes());
    h.update(store_key);
    h.update(object);
    h.digest() | 1
}

/// The segment hashes of one tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segments(Box<[u64]>);

impl Default for Segments {
    fn default() -> Self {
        Self(vec![0; SEGMENTS].into_boxed_slice())
    }
}

impl Segments {
    /// A tree of no keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a tree from segment hashes (missing ones are 0).
    pub fn from_hashes(hashes: impl IntoIterator<Item = (u16, u64)>) -> Self {
        let mut s = Self::new();
        for (segment, hash) in hashes {
            s.0[segment as usize % SEGMENTS] = hash;
        }
        s
    }

    /// Adds or removes a key's hash (XOR does both).
    pub fn toggle(&mut self, segment: u16, hash: u64) {
        self.0[segment as usize % SEGMENTS] ^= hash;
    }

    /// One segment's hash.
    pub fn get(&self, segment: u16) -> u64 {
        self.0[segment as usize % SEGMENTS]
    }

    /// A digest of the whole tree: equal trees have equal digests.
    pub fn digest(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for v in self.0.iter() {
            h.update(&v.to_le_bytes());
        }
        h.digest()
    }

    /// Whether no key is in the tree.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|v| *v == 0)
    }

    /// The segments whose hashes differ.
    pub fn differing(&self, other: &Segments) -> Vec<u16> {
        (0..SEGMENTS).filter(|&i| self.0[i] != other.0[i]).map(|i| i as u16).collect()
    }

    /// The hashes as bytes, for the wire: `SEGMENTS` little-endian u64s.
    pub fn encode(&self) -> Vec<u8> {
        self.0.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// Reads [`Segments::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != SEGMENTS * 8 {
            return Err(format!("a tree is {} bytes, not {}", bytes.len(), SEGMENTS * 8));
        }
        Ok(Self(bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()))
    }
}

/// How two replicas' keys of some segments differ.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyDiff {
    /// Keys only the local side holds.
    pub only_ours: Vec<Vec<u8>>,
    /// Keys only the other side holds.
    pub only_theirs: Vec<Vec<u8>>,
    /// Keys both hold, with different objects.
    pub different: Vec<Vec<u8>>,
}

impl KeyDiff {
    /// Whether the sides hold the same.
    pub fn is_empty(&self) -> bool {
        self.only_ours.is_empty() && self.only_theirs.is_empty() && self.different.is_empty()
    }
}

/// Compares two lists of `(key, key hash)`.
pub fn diff_keys(ours: &[(Vec<u8>, u64)], theirs: &[(Vec<u8>, u64)]) -> KeyDiff {
    let theirs: BTreeMap<&[u8], u64> = theirs.iter().map(|(k, h)| (k.as_slice(), *h)).collect();
    let mut diff = KeyDiff::default();
    let mut seen = std::collections::BTreeSet::new();
    for (k, h) in ours {
        seen.insert(k.as_slice());
        match theirs.get(k.as_slice()) {
            None => diff.only_ours.push(k.clone()),
            Some(t) if t != h => diff.different.push(k.clone()),
            Some(_) => {}
        }
    }
    diff.only_theirs = theirs.keys().filter(|k| !seen.contains(*k)).map(|k| k.to_vec()).collect();
    diff
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn tree(objects: &BTreeMap<Vec<u8>, Vec<u8>>) -> Segments {
        let mut t = Segments::new();
        for (k, o) in objects {
            t.toggle(segment_of(k), key_hash(k, o));
        }
        t
    }

    fn listing(objects: &BTreeMap<Vec<u8>, Vec<u8>>, segments: &[u16]) -> Vec<(Vec<u8>, u64)> {
        objects
            .iter()
            .filter(|(k, _)| segments.contains(&segment_of(k)))
            .map(|(k, o)| (k.clone(), key_hash(k, o)))
            .collect()
    }

    /// Two replicas: a shared base, then each side changes, adds or drops
    /// some keys.
    type Replica = BTreeMap<Vec<u8>, Vec<u8>>;

    fn replicas() -> impl Strategy<Value = (Replica, Replica)> {
        let key = proptest::collection::vec(any::<u8>(), 1..12);
        let base = proptest::collection::btree_map(key.clone(), proptest::collection::vec(any::<u8>(), 0..8), 0..200);
        let edits = proptest::collection::vec((any::<bool>(), key, proptest::option::of(any::<u8>())), 0..20);
        (base, edits).prop_map(|(base, edits)| {
            let (mut a, mut b) = (base.clone(), base);
            for (left, k, v) in edits {
                let side = if left { &mut a } else { &mut b };
                match v {
                    Some(v) => {
                        side.insert(k, vec![v, 0xee]);
                    }
                    None => {
                        side.remove(&k);
                    }
                }
            }
            (a, b)
        })
    }

    proptest! {
        /// Comparing trees, then the key lists of the differing segments,
        /// names exactly the keys whose objects differ.
        #[test]
        fn comparing_two_trees_names_exactly_the_keys_that_differ((a, b) in replicas()) {
            let segments = tree(&a).differing(&tree(&b));
            let diff = diff_keys(&listing(&a, &segments), &listing(&b, &segments));
            let named: BTreeSet<Vec<u8>> =
                diff.only_ours.iter().chain(&diff.only_theirs).chain(&diff.different).cloned().collect();
            let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
            let truth: BTreeSet<Vec<u8>> = keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
            prop_assert_eq!(named, truth);
            prop_assert_eq!(tree(&a) == tree(&b), a == b);
        }

        /// Updating a tree key by key (XOR out the old, XOR in the new)
        /// gives the tree of the final state, in any order.
        #[test]
        fn incremental_updates_match_a_rebuild((a, b) in replicas()) {
            let mut t = tree(&a);
            let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
            for k in keys {
                if let Some(old) = a.get(k) {
                    t.toggle(segment_of(k), key_hash(k, old));
                }
                if let Some(new) = b.get(k) {
                    t.toggle(segment_of(k), key_hash(k, new));
                }
            }
            prop_assert_eq!(t, tree(&b));
        }

        #[test]
        fn trees_round_trip_and_garbage_is_refused(hashes in proptest::collection::vec((0u16..1024, any::<u64>()), 0..50),
                                                    junk in proptest::collection::vec(any::<u8>(), 0..64)) {
            let t = Segments::from_hashes(hashes);
            prop_assert_eq!(Segments::decode(&t.encode()).unwrap(), t);
            prop_assert!(Segments::decode(&junk).is_err());
        }
    }
}
