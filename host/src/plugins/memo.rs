//! Remembered resolutions.
//!
//! A resolver is a pure function: it sees only its input (plugin, bucket,
//! key, size limit and siblings), runs in a fresh instance with no clock and
//! no randomness, and deploy checks that it is deterministic. So a node can
//! keep the answers it computed and hand them out again when the same input
//! comes back, instead of running the plugin again. The same input comes
//! back whenever siblings outlive a read: on a bucket that keeps them
//! (`plugins.write_back_resolved = false`), on a node that coordinates a
//! read without being a replica (only replicas write back), and while many
//! readers hit a conflicted key before its write-back lands. Write-time
//! resolutions are not remembered: their input includes the value being
//! written, which is seldom seen twice.
//!
//! An entry is found by a 128-bit hash of the input and then compared with
//! the whole input it was computed from, so an answer is only reused for
//! exactly the same plugin version, bucket, key, limit and siblings (dots,
//! values, times and writers). A new plugin version never sees an old
//! version's answers. Entries are evicted by size (`plugins.memo_mb`).

use std::hash::Hash;
use std::sync::Arc;

use metrics::Counter;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use xxhash_rust::xxh3::Xxh3;

use super::Resolution;
use crate::causal::{Content, Sibling};

/// One resolver call: everything its answer may depend on, and its hash.
pub struct Input<'a> {
    plugin: &'a str,
    bucket: &'a str,
    key: &'a [u8],
    max_bytes: usize,
    siblings: &'a [Sibling],
    hash: u128,
}

impl<'a> Input<'a> {
    /// A call of `plugin` (`name@version`) on `siblings` (in the order the
    /// resolver gets them) of `key` in `bucket`, allowed to return up to
    /// `max_bytes`.
    pub fn new(plugin: &'a str, bucket: &'a str, key: &'a [u8], max_bytes: usize, siblings: &'a [Sibling]) -> Self {
        let mut h = Xxh3::new();
        plugin.hash(&mut h);
        bucket.hash(&mut h);
        key.hash(&mut h);
        max_bytes.hash(&mut h);
        siblings.hash(&mut h);
        Self { plugin, bucket, key, max_bytes, siblings, hash: h.digest128() }
    }
}

/// A remembered answer and the input it was computed from.
struct Entry {
    plugin: Box<str>,
    bucket: Box<str>,
    key: Box<[u8]>,
    max_bytes: usize,
    siblings: Box<[Sibling]>,
    resolution: Resolution,
}

impl Entry {
    fn answers(&self, input: &Input<'_>) -> bool {
        *self.plugin == *input.plugin
            && *self.bucket == *input.bucket
            && *self.key == *input.key
            && self.max_bytes == input.max_bytes
            && *self.siblings == *input.siblings
    }

    /// Approximate bytes held.
    fn size(&self) -> u64 {
        let siblings: usize = self
            .siblings
            .iter()
            .map(|s| {
                let value = match &s.content {
                    Content::Value(v) => v.len(),
                    Content::Tombstone => 0,
                };
                std::mem::size_of::<Sibling>() + value + s.writer.len()
            })
            .sum();
        let resolution = match &self.resolution {
            Resolution::Resolved(v) => v.len(),
            Resolution::Delete | Resolution::KeepSiblings => 0,
        };
        (std::mem::size_of::<Entry>() + self.plugin.len() + self.bucket.len() + self.key.len() + siblings + resolution)
            as u64
    }
}

#[derive(Clone)]
struct BySize;

impl Weighter<u128, Arc<Entry>> for BySize {
    fn weight(&self, _: &u128, entry: &Arc<Entry>) -> u64 {
        entry.size()
    }
}

/// Resolutions this node computed, by input. Off when sized 0.
pub struct Memo {
    cache: Option<Cache<u128, Arc<Entry>, BySize>>,
    hits: Counter,
    misses: Counter,
}

/// A typical entry (two 1 KiB siblings and the answer), for sizing the
/// cache's table.
const TYPICAL_ENTRY_BYTES: u64 = 4096;

impl Memo {
    /// A memo holding up to `bytes` of entries.
    pub fn new(bytes: u64) -> Self {
        let cache =
            (bytes > 0).then(|| Cache::with_weighter((bytes / TYPICAL_ENTRY_BYTES).max(16) as usize, bytes, BySize));
        Self {
            cache,
            hits: metrics::counter!("concord_plugin_memo_total", "outcome" => "hit"),
            misses: metrics::counter!("concord_plugin_memo_total", "outcome" => "miss"),
        }
    }

    /// Whether the memo remembers anything (it is not sized 0).
    pub fn is_on(&self) -> bool {
        self.cache.is_some()
    }

    /// The answer given before to exactly this input, if remembered.
    pub fn get(&self, input: &Input<'_>) -> Option<Resolution> {
        let cache = self.cache.as_ref()?;
        match cache.get(&input.hash) {
            Some(entry) if entry.answers(input) => {
                self.hits.increment(1);
                Some(entry.resolution.clone())
            }
            _ => {
                self.misses.increment(1);
                None
            }
        }
    }

    /// Remembers the answer given to this input.
    pub fn insert(&self, input: &Input<'_>, resolution: &Resolution) {
        let Some(cache) = &self.cache else { return };
        let entry = Entry {
            plugin: input.plugin.into(),
            bucket: input.bucket.into(),
            key: input.key.into(),
            max_bytes: input.max_bytes,
            siblings: input.siblings.into(),
            resolution: resolution.clone(),
        };
        cache.insert(input.hash, Arc::new(entry));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::causal::Dot;

    fn sibling(counter: u64, value: &[u8]) -> Sibling {
        Sibling {
            dot: Dot { actor: 7, counter },
            content: Content::Value(value.to_vec()),
            written_at_ms: 1_000 + counter,
            writer: "n0".into(),
        }
    }

    #[test]
    fn answers_only_exactly_the_same_input() {
        let memo = Memo::new(1 << 20);
        let siblings = vec![sibling(1, b"a"), sibling(2, b"b")];
        let answer = Resolution::Resolved(b"b".to_vec());
        memo.insert(&Input::new("lww@1", "cart", b"k", 10240, &siblings), &answer);
        assert_eq!(memo.get(&Input::new("lww@1", "cart", b"k", 10240, &siblings)), Some(answer));

        // Any difference in the input is a different call.
        assert_eq!(memo.get(&Input::new("lww@2", "cart", b"k", 10240, &siblings)), None);
        assert_eq!(memo.get(&Input::new("lww@1", "carts", b"k", 10240, &siblings)), None);
        assert_eq!(memo.get(&Input::new("lww@1", "cart", b"k2", 10240, &siblings)), None);
        assert_eq!(memo.get(&Input::new("lww@1", "cart", b"k", 100, &siblings)), None);
        let same_dots_other_value = vec![sibling(1, b"a"), sibling(2, b"c")];
        assert_eq!(memo.get(&Input::new("lww@1", "cart", b"k", 10240, &same_dots_other_value)), None);
        let reordered = vec![sibling(2, b"b"), sibling(1, b"a")];
        assert_eq!(memo.get(&Input::new("lww@1", "cart", b"k", 10240, &reordered)), None);
    }

    #[test]
    fn stays_within_its_size_and_can_be_off() {
        let memo = Memo::new(64 * 1024);
        let big = vec![0u8; 4096];
        for i in 0..200u64 {
            let siblings = vec![sibling(i, &big), sibling(i + 1_000, &big)];
            memo.insert(
                &Input::new("lww@1", "b", &i.to_be_bytes(), 10240, &siblings),
                &Resolution::Resolved(big.clone()),
            );
        }
        let cache = memo.cache.as_ref().unwrap();
        assert!(cache.weight() <= 64 * 1024, "{} bytes held", cache.weight());
        assert!(cache.len() < 200);

        let off = Memo::new(0);
        let siblings = vec![sibling(1, b"a")];
        off.insert(&Input::new("lww@1", "b", b"k", 10240, &siblings), &Resolution::Delete);
        assert_eq!(off.get(&Input::new("lww@1", "b", b"k", 10240, &siblings)), None);
    }
}
