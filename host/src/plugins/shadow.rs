//! What shadow resolvers did, per bucket and shadow plugin.
//!
//! A shadow resolver runs beside a bucket's active one on every resolution
//! and its answer is only compared, never used. Operators judge a shadow by
//! how often it agreed, disagreed or failed, and by a few examples of
//! disagreement: each keeps the key and both answers, quoted to a short
//! prefix, so a report stays small whatever the values are. Counts live in
//! memory on the node that resolved (the coordinator of the read or write)
//! and start over when the node restarts.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Resolution;

/// Disagreements kept as examples, per bucket and shadow.
pub const MAX_SAMPLES: usize = 5;
/// Bytes of a key or value an example quotes.
pub const QUOTED_BYTES: usize = 48;

/// One disagreement, quoted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The key, quoted.
    pub key: String,
    /// What the active resolver decided (or that there was none, or it
    /// failed), quoted.
    pub active: String,
    /// What the shadow decided, quoted.
    pub shadow: String,
    /// When, in milliseconds since the epoch.
    pub at_ms: u64,
}

/// Counts and examples for one shadow of one bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Both decided the same.
    pub agree: u64,
    /// They decided differently.
    pub disagree: u64,
    /// The shadow failed (trap, timeout, ...) or was switched off.
    pub failed: u64,
    /// The first disagreements, at most [`MAX_SAMPLES`].
    pub samples: Vec<Sample>,
    /// The last failure of the shadow, if any.
    pub last_failure: Option<String>,
}

/// Outcome of one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Same answer.
    Agree,
    /// Different answers.
    Disagree,
    /// The shadow gave no answer.
    Failed,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Agree => "agree",
            Outcome::Disagree => "disagree",
            Outcome::Failed => "failed",
        }
    }

    /// Compares an active answer (none: no resolver ran, or it failed) with
    /// the shadow's (`Err`: why it gave none).
    pub fn of(active: Option<&Resolution>, shadow: Result<&Resolution, &str>) -> Self {
        match (active, shadow) {
            (_, Err(_)) => Outcome::Failed,
            (Some(a), Ok(s)) if a == s => Outcome::Agree,
            // No active answer means the siblings stay: a shadow that keeps
            // them agrees.
            (None, Ok(Resolution::KeepSiblings)) => Outcome::Agree,
            _ => Outcome::Disagree,
        }
    }
}

/// Every shadow's stats on this node, keyed by (bucket, `name@version`).
#[derive(Default)]
pub struct Shadows {
    stats: Mutex<BTreeMap<(String, String), Stats>>,
}

impl Shadows {
    /// Records one comparison; returns the count of disagreements so far
    /// (for sampled logging) when this one disagreed.
    pub fn record(
        &self,
        bucket: &str,
        shadow: &str,
        key: &[u8],
        active: Option<&Resolution>,
        theirs: Result<&Resolution, &str>,
    ) -> (Outcome, u64) {
        let outcome = Outcome::of(active, theirs);
        let mut all = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let s = all.entry((bucket.to_owned(), shadow.to_owned())).or_default();
        let n = match outcome {
            Outcome::Agree => {
                s.agree += 1;
                s.agree
            }
            Outcome::Failed => {
                s.failed += 1;
                s.last_failure = theirs.err().map(|e| quote(e.as_bytes()));
                s.failed
            }
            Outcome::Disagree => {
                s.disagree += 1;
                if s.samples.len() < MAX_SAMPLES {
                    s.samples.push(Sample {
                        key: quote(key),
                        active: active.map_or_else(|| "no answer (siblings kept)".to_owned(), describe),
                        shadow: theirs.map(describe).unwrap_or_default(),
                        at_ms: crate::now_ms(),
                    });
                }
                s.disagree
            }
        };
        (outcome, n)
    }

    /// Stats of `bucket`'s shadows (every bucket's when `None`).
    pub fn report(&self, bucket: Option<&str>) -> Vec<(String, String, Stats)> {
        let all = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .filter(|((b, _), _)| bucket.is_none_or(|want| want == b))
            .map(|((b, p), s)| (b.clone(), p.clone(), s.clone()))
            .collect()
    }
}

/// A resolution for people, its value quoted.
pub fn describe(r: &Resolution) -> String {
    match r {
        Resolution::Resolved(v) => format!("resolved {}", quote(v)),
        Resolution::Delete => "delete".into(),
        Resolution::KeepSiblings => "keep-siblings".into(),
    }
}

/// Bytes quoted for a report, cut to [`QUOTED_BYTES`].
pub fn quote(v: &[u8]) -> String {
    super::quote(v, QUOTED_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_bucket_and_shadow_with_bounded_quoted_samples() {
        let s = Shadows::default();
        let one = Resolution::Resolved(b"1".to_vec());
        let big = Resolution::Resolved(vec![b'x'; 10_000]);
        for i in 0..10u8 {
            s.record("carts", "a@1", &[b'k', i], Some(&one), Ok(&big));
        }
        s.record("carts", "a@1", b"k", Some(&one), Ok(&one));
        s.record("carts", "a@1", b"k", Some(&one), Err("trap: unreachable"));
        s.record("carts", "b@1", b"k", Some(&one), Ok(&big));
        s.record("other", "a@1", b"k", None, Ok(&Resolution::KeepSiblings));

        let carts = s.report(Some("carts"));
        assert_eq!(carts.len(), 2, "each shadow of a bucket has its own counts");
        let (_, plugin, a) = &carts[0];
        assert_eq!(plugin, "a@1");
        assert_eq!((a.agree, a.disagree, a.failed), (1, 10, 1));
        assert_eq!(a.samples.len(), MAX_SAMPLES);
        assert!(a.samples[0].shadow.len() < 100, "{}", a.samples[0].shadow);
        assert!(a.samples[0].shadow.ends_with("(10000 bytes)"), "{}", a.samples[0].shadow);
        assert_eq!(a.samples[0].active, "resolved \"1\"");
        assert_eq!(a.last_failure.as_deref(), Some("\"trap: unreachable\""));
        let (_, _, b) = &carts[1];
        assert_eq!(b.disagree, 1, "a second shadow's disagreements are its own");
        assert_eq!(s.report(Some("other"))[0].2.agree, 1);
        assert_eq!(s.report(None).len(), 3);
    }

    #[test]
    fn binary_values_are_quoted_in_hex() {
        assert_eq!(quote(&[0xff, 0x00]), "0xff00");
        assert_eq!(quote(b"ok"), "\"ok\"");
    }
}
