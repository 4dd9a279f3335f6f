//! A PN-counter: a number many clients can add to and subtract from
//! concurrently without losing an update.
//!
//! The value records, per writer ("actor"), the total it has added and the
//! total it has subtracted:
//!
//! ```json
//! {"p": {"web-1": 7, "web-2": 3}, "n": {"web-1": 2}}
//! ```
//!
//! The counter's value is `sum(p) - sum(n)` (here 8). To change it, a client
//! reads the counter, raises *its own* entry in `p` or `n`, and writes the
//! result back with the read's context. Concurrent writers produce siblings;
//! merging takes each actor's largest totals, which is exactly the state
//! that includes every writer's updates. Each concurrent writer must use its
//! own actor id.
//!
//! Deleting the key resets the counter. A delete concurrent with updates
//! loses to them (their totals still include the counts from before the
//! delete): reset only when writers are quiet.

use std::collections::BTreeMap;

use concord_guest::{Level, Resolution, Resolver, Sibling, log};
use serde::{Deserialize, Serialize};

/// Per-actor totals of increments (`p`) and decrements (`n`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    /// Added, per actor.
    #[serde(default)]
    pub p: BTreeMap<String, u64>,
    /// Subtracted, per actor.
    #[serde(default)]
    pub n: BTreeMap<String, u64>,
}

impl PnCounter {
    /// The counter's value.
    pub fn value(&self) -> i128 {
        self.p.values().map(|&v| v as i128).sum::<i128>() - self.n.values().map(|&v| v as i128).sum::<i128>()
    }

    /// Per-actor maxima of both maps.
    pub fn merge(&mut self, other: PnCounter) {
        for (mine, theirs) in [(&mut self.p, other.p), (&mut self.n, other.n)] {
            for (actor, total) in theirs {
                let t = mine.entry(actor).or_insert(0);
                *t = (*t).max(total);
            }
        }
    }
}

/// The resolver.
pub struct CounterResolver;

impl Resolver for CounterResolver {
    fn resolve(bucket: &str, _key: &[u8], siblings: Vec<Sibling>) -> Resolution {
        let mut merged = PnCounter::default();
        let mut live = 0;
        for s in siblings.into_iter().filter(|s| !s.tombstone) {
            match serde_json::from_slice::<PnCounter>(&s.value) {
                Ok(c) => merged.merge(c),
                Err(e) => {
                    log(Level::Warn, &format!("counter: a sibling in bucket {bucket} is not a PN-counter ({e})"));
                    return Resolution::KeepSiblings;
                }
            }
            live += 1;
        }
        if live == 0 {
            return Resolution::Delete;
        }
        Resolution::Resolved(serde_json::to_vec(&merged).expect("a counter serializes"))
    }
}

concord_guest::export_resolver!(CounterResolver);

#[cfg(test)]
mod tests {
    use concord_guest::Dot;

    use super::*;

    fn sib(json: &str, counter: u64) -> Sibling {
        Sibling { value: json.into(), tombstone: false, dot: Dot { actor: 9, counter }, written_at_ms: 0 }
    }

    fn merged(siblings: Vec<Sibling>) -> PnCounter {
        match CounterResolver::resolve("c", b"k", siblings) {
            Resolution::Resolved(v) => serde_json::from_slice(&v).unwrap(),
            other => panic!("expected a counter, got {other:?}"),
        }
    }

    #[test]
    fn concurrent_updates_all_count() {
        // Both writers read {"p":{"a":5}}; x added 3, y added 2 and subtracted 1.
        let c = merged(vec![sib(r#"{"p":{"a":5,"x":3}}"#, 1), sib(r#"{"p":{"a":5,"y":2},"n":{"y":1}}"#, 2)]);
        assert_eq!(c.value(), 5 + 3 + 2 - 1);
    }

    #[test]
    fn an_older_copy_adds_nothing() {
        let c = merged(vec![sib(r#"{"p":{"a":5}}"#, 1), sib(r#"{"p":{"a":7}}"#, 2)]);
        assert_eq!(c.value(), 7);
    }

    #[test]
    fn only_tombstones_mean_deleted() {
        let mut t = sib("", 1);
        t.tombstone = true;
        assert_eq!(CounterResolver::resolve("c", b"k", vec![t.clone(), t]), Resolution::Delete);
    }
}
