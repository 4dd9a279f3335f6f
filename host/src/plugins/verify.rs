//! Checks the laws a resolver must obey for replicas to converge.
//!
//! Every node resolves siblings on its own, so a resolver must be a pure,
//! order-blind merge. On generated sibling sets this checks that it is:
//!
//! * **deterministic**: resolving the same siblings twice (on fresh
//!   instances) gives the same answer;
//! * **order-insensitive**: reversing or shuffling the siblings changes
//!   nothing;
//! * **idempotent**: resolving a resolved value with itself gives it back;
//! * **associative**: resolving some siblings first, then the result with
//!   the rest, equals resolving all at once. The intermediate result stands
//!   in as one sibling carrying the timestamp and dot of the latest sibling
//!   (by timestamp, then dot) of the group it replaces.
//!
//! Sibling values come from `samples` (values in the plugin's own format)
//! or, without samples, from short generated strings. Timestamps collide on
//! purpose, so tie-breaking is exercised. A law is only checked where it
//! applies (nothing is compared against `keep-siblings`).

use std::sync::Arc;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use tokio::sync::Semaphore;

use super::engine::CheckLog;
use super::loaded::{Loaded, Mode};
use super::{FailureReason, PluginFailure, Resolution};
use crate::causal::{Content, Dot, Sibling};

/// Failures after which verification stops.
const MAX_FAILURES: usize = 20;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    /// Sibling sets tried.
    pub cases: usize,
    /// Individual checks run.
    pub checks: usize,
    /// Broken laws, each described for people.
    pub failures: Vec<String>,
    /// The call that failed (and ended the checks), if one did: the
    /// resolver trapped, ran out of fuel or memory, or answered something
    /// malformed or oversized. No law could be judged on it.
    pub call_failure: Option<String>,
    /// How that call failed.
    pub call_failure_reason: Option<FailureReason>,
    /// What the plugin logged during the checks, summarised.
    pub log: CheckLog,
}

impl Report {
    /// True when every call succeeded and no law was broken.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.call_failure.is_none()
    }
}

/// Calls the resolver on one sibling set.
pub type ResolveFn<'a> = dyn FnMut(&[Sibling]) -> Result<Resolution, PluginFailure> + 'a;

/// Verifies a loaded resolver on `cases` generated sibling sets. Runs on
/// the calling thread, one call at a time, taking pool slots from `slots`.
/// Answers over `max_bytes` fail the check: pass the bucket's
/// `max_object_bytes`, or [`crate::buckets::MAX_OBJECT_BYTES_LIMIT`] when
/// no bucket is named.
pub fn verify_loaded(
    loaded: &Loaded,
    slots: &Arc<Semaphore>,
    samples: &[Vec<u8>],
    cases: usize,
    seed: u64,
    max_bytes: usize,
) -> Report {
    let mut log = CheckLog::default();
    let mut call = |siblings: &[Sibling]| {
        let give_up = std::time::Instant::now() + super::SLOT_WAIT;
        let slot = loop {
            // A slot frees up as soon as a concurrent request finishes.
            match Arc::clone(slots).try_acquire_owned() {
                Ok(p) => break p,
                Err(_) if std::time::Instant::now() > give_up => {
                    return Err(PluginFailure {
                        plugin: Arc::clone(&loaded.label),
                        reason: super::FailureReason::Unusable,
                        message: "no plugin instance slot free (plugins.max_instances)".into(),
                    });
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        };
        loaded.resolve(slot, "verify", b"verify", siblings, max_bytes, Mode::Check(&mut log)).map(|(r, _)| r)
    };
    let mut report = verify(&mut call, samples, cases, seed);
    report.log = log;
    report
}

/// Verifies any resolve function (the laws do not care how it is called).
/// A call that fails (trap, fuel, memory, malformed or oversized answer)
/// ends the verification: it is reported as what it is, in
/// [`Report::call_failure`], never as a broken law.
pub fn verify(resolve: &mut ResolveFn<'_>, samples: &[Vec<u8>], cases: usize, seed: u64) -> Report {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut report = Report::default();
    for case in 0..cases {
        if report.failures.len() >= MAX_FAILURES {
            break; // The verdict is clear; spare the rest.
        }
        report.cases += 1;
        let siblings = generate(&mut rng, samples);
        let mut failed: Option<(String, FailureReason)> = None;
        let mut call = |input: &[Sibling]| match resolve(input) {
            Ok(r) => Some(r),
            Err(e) => {
                failed.get_or_insert_with(|| (format!("case {case}: {e} on {}", show(input)), e.reason));
                None
            }
        };
        let mut checks: Vec<(&'static str, Option<String>)> = Vec::new();
        if let Some(first) = call(&siblings) {
            // Deterministic.
            let again = call(&siblings);
            checks.push(("deterministic", differs(&first, again, &siblings)));
            // Order-insensitive.
            let mut reversed = siblings.clone();
            reversed.reverse();
            checks.push(("order-insensitive (reversed)", differs(&first, call(&reversed), &reversed)));
            let mut shuffled = siblings.clone();
            shuffled.shuffle(&mut rng);
            checks.push(("order-insensitive (shuffled)", differs(&first, call(&shuffled), &shuffled)));
            // Idempotent.
            if let Resolution::Resolved(v) = &first {
                let twice = [
                    sibling(v.clone(), false, Dot { actor: 1, counter: 1 }, 10),
                    sibling(v.clone(), false, Dot { actor: 2, counter: 1 }, 10),
                ];
                checks.push(("idempotent", differs(&first, call(&twice), &twice)));
            }
            // Associative: resolve a prefix first.
            if first != Resolution::KeepSiblings && siblings.len() >= 3 {
                let split = rng.random_range(2..siblings.len());
                let (head, tail) = siblings.split_at(split);
                match call(head) {
                    None | Some(Resolution::KeepSiblings) => {}
                    Some(partial) => {
                        let latest = head.iter().max_by_key(|s| (s.written_at_ms, s.dot)).expect("head is not empty");
                        let (dot, at) = (latest.dot, latest.written_at_ms);
                        let stand_in = match partial {
                            Resolution::Resolved(v) => sibling(v, false, dot, at),
                            _ => sibling(Vec::new(), true, dot, at),
                        };
                        let mut staged = vec![stand_in];
                        staged.extend_from_slice(tail);
                        checks.push(("associative", differs(&first, call(&staged), &siblings)));
                    }
                }
            }
        }
        if let Some((f, reason)) = failed {
            report.call_failure = Some(f);
            report.call_failure_reason = Some(reason);
            break;
        }
        for (law, detail) in checks {
            report.checks += 1;
            if let Some(d) = detail
                && report.failures.len() < MAX_FAILURES
            {
                report.failures.push(format!("case {case}: {law}: {d}"));
            }
        }
    }
    report
}

/// A broken law, described; `None` when `got` is what was expected (or the
/// call failed, which [`verify`] reports on its own).
fn differs(expected: &Resolution, got: Option<Resolution>, input: &[Sibling]) -> Option<String> {
    match got {
        Some(r) if &r != expected => {
            Some(format!("expected {} but got {} for {}", show_res(expected), show_res(&r), show(input)))
        }
        _ => None,
    }
}

fn sibling(value: Vec<u8>, tombstone: bool, dot: Dot, written_at_ms: u64) -> Sibling {
    let content = if tombstone { Content::Tombstone } else { Content::Value(value) };
    Sibling { dot, content, written_at_ms, writer: String::new() }
}

fn generate(rng: &mut SmallRng, samples: &[Vec<u8>]) -> Vec<Sibling> {
    let n = rng.random_range(2..=5);
    let mut actors: Vec<u64> = (1..=6).collect();
    actors.shuffle(rng);
    (0..n)
        .map(|i| {
            let value = if samples.is_empty() {
                let len = rng.random_range(0..6);
                (0..len).map(|_| rng.random_range(b'a'..=b'e')).collect()
            } else {
                samples[rng.random_range(0..samples.len())].clone()
            };
            let tombstone = rng.random_bool(0.1);
            let dot = Dot { actor: actors[i % actors.len()], counter: rng.random_range(1..4) };
            sibling(value, tombstone, dot, 1_000 + rng.random_range(0..4))
        })
        .collect()
}

fn show_res(r: &Resolution) -> String {
    match r {
        Resolution::Resolved(v) => format!("resolved({})", show_value(v)),
        Resolution::Delete => "delete".into(),
        Resolution::KeepSiblings => "keep-siblings".into(),
    }
}

/// Bytes of a value a report shows; longer values are cut, so that a
/// plugin returning megabytes cannot blow up the report (and the reply that
/// carries it).
const SHOWN_BYTES: usize = 32;

fn show_value(v: &[u8]) -> String {
    super::quote(v, SHOWN_BYTES)
}

fn show(siblings: &[Sibling]) -> String {
    let parts: Vec<String> = siblings
        .iter()
        .map(|s| {
            let v = match s.content.value() {
                Some(v) => show_value(v),
                None => "tombstone".into(),
            };
            format!("{v}@{}:{}/t{}", s.dot.actor, s.dot.counter, s.written_at_ms)
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by<F: Fn(&[Sibling]) -> Resolution>(f: F) -> impl FnMut(&[Sibling]) -> Result<Resolution, PluginFailure> {
        move |s| Ok(f(s))
    }

    #[test]
    fn a_max_merge_passes() {
        let mut max = by(|s| {
            s.iter()
                .filter_map(|s| s.content.value())
                .max()
                .map_or(Resolution::Delete, |v| Resolution::Resolved(v.to_vec()))
        });
        let report = verify(&mut max, &[], 200, 7);
        assert!(report.passed(), "{:?}", report.failures);
        assert!(report.checks > 600);
    }

    #[test]
    fn an_order_sensitive_merge_fails() {
        let mut concat =
            by(|s| Resolution::Resolved(s.iter().filter_map(|s| s.content.value()).flatten().copied().collect()));
        let report = verify(&mut concat, &[], 50, 7);
        assert!(!report.passed());
        assert!(report.failures.iter().any(|f| f.contains("order-insensitive")), "{:?}", report.failures);
    }

    #[test]
    fn reports_stay_small_whatever_the_plugin_returns() {
        // A megabyte that differs on every call fails every law, each
        // failure quoting the value: the report must show only its head.
        let mut calls = 0u8;
        let mut huge = |_: &[Sibling]| {
            calls = calls.wrapping_add(1);
            Ok(Resolution::Resolved(vec![calls; 1 << 20]))
        };
        let report = verify(&mut huge, &[], 50, 7);
        assert_eq!(report.failures.len(), MAX_FAILURES);
        let total: usize = report.failures.iter().map(String::len).sum();
        assert!(total < 64 * 1024, "report is {total} bytes");
        assert!(report.failures[0].contains("(1048576 bytes)"), "{}", report.failures[0]);
    }
}
