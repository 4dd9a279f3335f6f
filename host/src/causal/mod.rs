//! Causality: dots, version vectors and sibling sets (DVV sets).
//!
//! Concord keeps every value that was written concurrently with another as a
//! *sibling*, and never lets a wall clock decide which write wins. The
//! representation follows Almeida et al., "Dotted Version Vectors" (2012), in
//! the compact form where an object is one version vector plus a list of
//! siblings, each tagged with the *dot* that created it:
//!
//! ```text
//! Object { vv: {a: 3, b: 1}, siblings: [(a,3) "x", (b,1) "y"] }
//! ```
//!
//! * A **dot** `(actor, counter)` names one write. The actor is a replica's
//!   identity for the life of its data directory (see
//!   [`crate::storage::Incarnation`]), so dots are never reused, even by a node
//!   whose disk was wiped.
//! * The **version vector** says which dots the object has *seen*: every dot
//!   `(a, c)` with `c <= vv[a]`. A sibling is kept exactly as long as no write
//!   that saw it has replaced it.
//! * A **put** with context `C` at actor `r` takes dot `(r, max(vv[r], C[r]) + 1)`,
//!   drops the siblings whose dots `C` covers, keeps the others (they are
//!   concurrent with the write) and adds the new value.
//! * A **merge** keeps each sibling that both sides hold, plus each sibling
//!   one side holds that the other side's vector has not seen. A sibling one
//!   side dropped after seeing it stays dropped. The vectors merge by
//!   pointwise maximum. Merge is commutative, associative and idempotent, so
//!   replicas converge whatever order updates arrive in.
//!
//! Everything here is pure: time comes in as an argument. The laws are
//! property-tested in `tests` below.

mod context;

pub use context::{ContextError, MAX_CONTEXT_ACTORS, decode_context, encode_context, key_fingerprint};

use serde::{Deserialize, Serialize};

/// Identity of a replica's data directory incarnation. See the module docs.
pub type Actor = u64;

/// One write: the `counter`-th event at `actor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who accepted the write.
    pub actor: Actor,
    /// Per-object event number at that actor, starting at 1.
    pub counter: u64,
}

/// A version vector: for each actor, the highest counter seen.
///
/// Kept as a vector sorted by actor: objects have a handful of actors (their
/// replicas), so this beats a map in both size and speed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VersionVector {
    /// Sorted by actor, no duplicates, no zero counters.
    entries: Vec<(Actor, u64)>,
}

impl VersionVector {
    /// The empty vector: has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a vector from `(actor, counter)` pairs in any order; for an
    /// actor listed twice the higher counter wins.
    pub fn from_entries(entries: impl IntoIterator<Item = (Actor, u64)>) -> Self {
        let mut entries: Vec<(Actor, u64)> = entries.into_iter().filter(|&(_, c)| c > 0).collect();
        // Highest counter first within an actor, so dedup keeps it.
        entries.sort_unstable_by(|x, y| x.0.cmp(&y.0).then(y.1.cmp(&x.1)));
        entries.dedup_by_key(|e| e.0);
        Self { entries }
    }

    /// The highest counter seen for `actor` (0 if none).
    pub fn get(&self, actor: Actor) -> u64 {
        match self.entries.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// Whether the vector has seen `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.actor) >= dot.counter
    }

    /// Records that counters up to `counter` of `actor` have been seen.
    pub fn observe(&mut self, actor: Actor, counter: u64) {
        if counter == 0 {
            return;
        }
        match self.entries.binary_search_by_key(&actor, |&(a, _)| a) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.max(counter),
            Err(i) => self.entries.insert(i, (actor, counter)),
        }
    }

    /// Pointwise maximum with `other`, in one pass over both sorted
    /// vectors.
    pub fn merge(&mut self, other: &VersionVector) {
        if other.entries.is_empty() || self.entries == other.entries {
            return;
        }
        let (a, b) = (&self.entries, &other.entries);
        let mut merged = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let ((x, cx), (y, cy)) = (a[i], b[j]);
            match x.cmp(&y) {
                std::cmp::Ordering::Less => {
                    merged.push((x, cx));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    merged.push((y, cy));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    merged.push((x, cx.max(cy)));
                    i += 1;
                    j += 1;
                }
            }
        }
        merged.extend_from_slice(&a[i..]);
        merged.extend_from_slice(&b[j..]);
        self.entries = merged;
    }

    /// Whether this vector has seen everything `other` has.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.entries.iter().all(|&(a, c)| self.get(a) >= c)
    }

    /// True when nothing has been seen.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `(actor, counter)` pairs, sorted by actor.
    pub fn entries(&self) -> &[(Actor, u64)] {
        &self.entries
    }
}

/// An actor's write counter reached `u64::MAX`: no further dot can be made.
/// Real writes never get there (one per nanosecond would take 584 years);
/// a context or replica object claiming it is forged or corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the version vector's counter for this replica is exhausted; the context or object claiming it is forged or corrupt"
)]
pub struct CounterOverflow;

/// What a sibling holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Content {
    /// A value written by a put. (Encoded as one byte string, not a
    /// sequence of numbers: same bytes on the wire, one copy instead of a
    /// loop.)
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A tombstone written by a delete.
    Tombstone,
}

impl Content {
    /// The value, or `None` for a tombstone.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            Content::Value(v) => Some(v),
            Content::Tombstone => None,
        }
    }

    /// Whether this is a tombstone.
    pub fn is_tombstone(&self) -> bool {
        matches!(self, Content::Tombstone)
    }
}

/// One value of an object, with the dot of the write that created it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that created this sibling; unique across the cluster.
    pub dot: Dot,
    /// Value or tombstone.
    pub content: Content,
    /// Wall-clock time at the accepting replica. Informational only (and for
    /// resolvers such as last-writer-wins); causality never looks at it.
    pub written_at_ms: u64,
    /// Node id of the replica that accepted the write, for people reading it.
    pub writer: String,
}

/// A key's stored state: a version vector and the siblings it has not
/// superseded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Every dot this object has seen.
    vv: VersionVector,
    /// Sorted by dot; every dot is covered by `vv`.
    siblings: Vec<Sibling>,
}

impl Object {
    /// An object that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an object from parts, restoring the invariants (sorted siblings,
    /// vector covering every sibling). For decoders and tests.
    pub fn from_parts(mut vv: VersionVector, mut siblings: Vec<Sibling>) -> Self {
        siblings.sort_by_key(|s| s.dot);
        siblings.dedup_by_key(|s| s.dot);
        for s in &siblings {
            vv.observe(s.dot.actor, s.dot.counter);
        }
        Self { vv, siblings }
    }

    /// The causal context: what a writer that read this object has seen.
    pub fn context(&self) -> &VersionVector {
        &self.vv
    }

    /// All siblings, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Siblings that hold a value (not tombstones).
    pub fn live_siblings(&self) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(|s| !s.content.is_tombstone())
    }

    /// True when at least one sibling holds a value.
    pub fn is_found(&self) -> bool {
        self.live_siblings().next().is_some()
    }

    /// Applies a write accepted by `actor`: the new sibling supersedes
    /// exactly the siblings `context` covers. Returns the new dot, or
    /// [`CounterOverflow`] (and changes nothing) when `actor`'s counter
    /// has no next value, which only a forged vector can bring about.
    pub fn update(
        &mut self,
        actor: Actor,
        context: &VersionVector,
        content: Content,
        written_at_ms: u64,
        writer: &str,
    ) -> Result<Dot, CounterOverflow> {
        self.update_above(actor, 0, context, content, written_at_ms, writer)
    }

    /// [`Object::update`] with a new dot whose counter is also above
    /// `floor`: a replica that removed a key's object (a reaped
    /// tombstone) forgot the counters it had used for it, and must not
    /// use them again (a client may still hold a context that covers them).
    pub fn update_above(
        &mut self,
        actor: Actor,
        floor: u64,
        context: &VersionVector,
        content: Content,
        written_at_ms: u64,
        writer: &str,
    ) -> Result<Dot, CounterOverflow> {
        let counter = self.vv.get(actor).max(context.get(actor)).max(floor).checked_add(1).ok_or(CounterOverflow)?;
        let dot = Dot { actor, counter };
        self.siblings.retain(|s| !context.covers(s.dot));
        self.vv.merge(context);
        self.vv.observe(actor, counter);
        let sibling = Sibling { dot, content, written_at_ms, writer: writer.to_owned() };
        // The new dot is the highest for its actor, so it sorts after every
        // sibling of that actor; insert it in place to keep the order.
        let at = self.siblings.partition_point(|s| s.dot < dot);
        self.siblings.insert(at, sibling);
        Ok(dot)
    }

    /// Merges another replica's copy into this one. See the module docs.
    pub fn merge(&mut self, other: &Object) {
        if other.vv.is_empty() {
            return;
        }
        let mut merged = Vec::with_capacity(self.siblings.len().max(other.siblings.len()));
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.siblings, &other.siblings);
        while i < a.len() || j < b.len() {
            match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) if x.dot == y.dot => {
                    merged.push(x.clone());
                    i += 1;
                    j += 1;
                }
                (Some(x), y) if y.is_none_or(|y| x.dot < y.dot) => {
                    if !other.vv.covers(x.dot) {
                        merged.push(x.clone());
                    }
                    i += 1;
                }
                (_, Some(y)) => {
                    if !self.vv.covers(y.dot) {
                        merged.push(y.clone());
                    }
                    j += 1;
                }
                (Some(_), None) | (None, None) => unreachable!("guarded above"),
            }
        }
        if crate::planted::planted(crate::planted::Bug::MergeDropsSibling) && merged.len() > 1 {
            merged.remove(0);
        }
        self.siblings = merged;
        self.vv.merge(&other.vv);
    }

    /// Returns the merge of `self` and `other` without changing either.
    pub fn merged(&self, other: &Object) -> Object {
        let mut out = self.clone();
        out.merge(other);
        out
    }

    /// Whether the invariants hold: siblings sorted by dot without
    /// duplicates, and every sibling's dot covered by the vector. Decoders use
    /// it to refuse bytes Concord did not write.
    pub fn is_well_formed(&self) -> bool {
        let vv = &self.vv.entries;
        vv.windows(2).all(|w| w[0].0 < w[1].0)
            && vv.iter().all(|&(_, c)| c > 0)
            && self.siblings.windows(2).all(|w| w[0].dot < w[1].dot)
            && self.siblings.iter().all(|s| s.dot.counter > 0 && self.vv.covers(s.dot))
    }

    /// Total bytes of sibling values, a cheap size estimate.
    pub fn value_bytes(&self) -> usize {
        self.siblings.iter().map(|s| s.content.value().map_or(0, <[u8]>::len)).sum()
    }
}

#[cfg(test)]
mod tests;
