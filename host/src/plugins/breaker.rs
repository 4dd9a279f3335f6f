//! Circuit breakers: a plugin that keeps failing for a bucket is switched off
//! for that bucket.
//!
//! A breaker trips after `trip_after` consecutive failures, or when at least
//! half of the last calls failed (judged once there are at least half a
//! [`WINDOW`] of them since the first failure). Once
//! tripped it stays open until the bucket's properties change (rebinding the
//! plugin, or binding a fixed version, is how an operator closes it). While
//! it is open the plugin is not called: resolvers fall back to the
//! previously working version or leave siblings as they are; validators
//! fall back likewise or apply the bucket's `validator_failure` policy.
//!
//! State exists only for (bucket, plugin) pairs that have failed, so the
//! success path of a healthy plugin is one read-locked lookup.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};

/// Calls remembered per breaker.
pub const WINDOW: usize = 20;

/// A tripped breaker, for status reports.
#[derive(Clone, Debug)]
pub struct Tripped {
    /// Bucket the plugin is switched off for.
    pub bucket: String,
    /// `name@version`.
    pub plugin: Arc<str>,
    /// The last failure.
    pub reason: String,
    /// When it tripped.
    pub at_ms: u64,
}

struct State {
    /// Bucket properties version the state belongs to; a newer version
    /// starts over.
    props_version: u64,
    recent: VecDeque<bool>,
    consecutive: u32,
    tripped: Option<Tripped>,
}

/// All breakers of a node.
pub struct Breakers {
    trip_after: u32,
    states: RwLock<HashMap<(String, Arc<str>), State>>,
}

impl Breakers {
    /// Breakers that trip after `trip_after` consecutive failures.
    pub fn new(trip_after: u32) -> Self {
        Self { trip_after: trip_after.max(1), states: RwLock::new(HashMap::new()) }
    }

    /// Whether `plugin` is switched off for `bucket` at `props_version`.
    pub fn is_open(&self, bucket: &str, plugin: &Arc<str>, props_version: u64) -> bool {
        let states = self.states.read().unwrap_or_else(|p| p.into_inner());
        states
            .get(&(bucket.to_owned(), Arc::clone(plugin)))
            .is_some_and(|s| s.props_version >= props_version && s.tripped.is_some())
    }

    /// The failure that tripped `plugin`'s breaker for `bucket`, if it is
    /// open at `props_version`.
    pub fn open_reason(&self, bucket: &str, plugin: &Arc<str>, props_version: u64) -> Option<String> {
        let states = self.states.read().unwrap_or_else(|p| p.into_inner());
        let s = states.get(&(bucket.to_owned(), Arc::clone(plugin)))?;
        let t = s.tripped.as_ref().filter(|_| s.props_version >= props_version)?;
        Some(t.reason.clone())
    }

    /// Records a successful call.
    pub fn success(&self, bucket: &str, plugin: &Arc<str>, props_version: u64) {
        let key = (bucket.to_owned(), Arc::clone(plugin));
        if !self.states.read().unwrap_or_else(|p| p.into_inner()).contains_key(&key) {
            return;
        }
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = states.get_mut(&key) {
            if s.props_version < props_version {
                if s.tripped.is_some() {
                    gauge(bucket, plugin).set(0.0);
                }
                states.remove(&key);
                return;
            }
            s.consecutive = 0;
            push(&mut s.recent, true);
        }
    }

    /// Records a failed call; returns true when this failure trips the
    /// breaker.
    pub fn failure(&self, bucket: &str, plugin: &Arc<str>, props_version: u64, reason: &str) -> bool {
        let mut states = self.states.write().unwrap_or_else(|p| p.into_inner());
        let s = states.entry((bucket.to_owned(), Arc::clone(plugin))).or_insert_with(|| State {
            props_version,
            recent: VecDeque::with_capacity(WINDOW),
            consecutive: 0,
            tripped: None,
        });
        if s.props_version < props_version {
            if s.tripped.is_some() {
                gauge(bucket, plugin).set(0.0);
            }
            *s = State { props_version, recent: VecDeque::with_capacity(WINDOW), consecutive: 0, tripped: None };
        }
        s.consecutive += 1;
        push(&mut s.recent, false);
        let failures = s.recent.iter().filter(|ok| !**ok).count() as u32;
        let trips = s.tripped.is_none()
            && (s.consecutive >= self.trip_after
                || (s.recent.len() >= WINDOW / 2 && failures * 2 >= s.recent.len() as u32));
        if trips {
            s.tripped = Some(Tripped {
                bucket: bucket.to_owned(),
                plugin: Arc::clone(plugin),
                reason: reason.to_owned(),
                at_ms: crate::now_ms(),
            });
            gauge(bucket, plugin).set(1.0);
            tracing::warn!(bucket, plugin = %plugin, reason, "plugin switched off for this bucket after repeated failures");
        }
        trips
    }

    /// Every breaker that is open at its bucket's current properties
    /// version (`version_of`): one tripped under older properties was
    /// closed by the change, even before the next call clears it.
    pub fn tripped(&self, version_of: impl Fn(&str) -> u64) -> Vec<Tripped> {
        let states = self.states.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Tripped> = states
            .iter()
            .filter(|((bucket, _), s)| s.props_version >= version_of(bucket))
            .filter_map(|(_, s)| s.tripped.clone())
            .collect();
        out.sort_by(|a, b| (&a.bucket, &a.plugin).cmp(&(&b.bucket, &b.plugin)));
        out
    }
}

fn gauge(bucket: &str, plugin: &Arc<str>) -> metrics::Gauge {
    metrics::gauge!("concord_plugin_breaker_open", "bucket" => bucket.to_owned(), "plugin" => plugin.to_string())
}

fn push(recent: &mut VecDeque<bool>, ok: bool) {
    if recent.len() == WINDOW {
        recent.pop_front();
    }
    recent.push_back(ok);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_consecutive_failures_and_resets_on_rebinding() {
        let b = Breakers::new(3);
        let p: Arc<str> = "x@1".into();
        assert!(!b.failure("bk", &p, 1, "trap"));
        assert!(!b.failure("bk", &p, 1, "trap"));
        assert!(!b.is_open("bk", &p, 1));
        assert!(b.failure("bk", &p, 1, "timeout"));
        assert!(b.is_open("bk", &p, 1));
        assert!(!b.is_open("other", &p, 1), "breakers are per bucket");
        assert_eq!(b.tripped(|_| 1)[0].reason, "timeout");
        // Changing the bucket's properties closes it, and status reports
        // say so at once, before any call.
        assert!(!b.is_open("bk", &p, 2));
        assert!(b.tripped(|_| 2).is_empty());
        b.success("bk", &p, 2);
        assert!(b.tripped(|_| 1).is_empty());
    }

    #[test]
    fn successes_in_between_delay_tripping_until_half_fail() {
        let b = Breakers::new(5);
        let p: Arc<str> = "y@1".into();
        let mut tripped = false;
        for i in 0..WINDOW {
            if i % 2 == 0 {
                tripped |= b.failure("bk", &p, 1, "trap");
            } else {
                b.success("bk", &p, 1);
            }
        }
        assert!(tripped, "half of the window failing must trip");
    }
}
