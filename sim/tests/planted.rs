//! The simulation catches deliberate bugs: each test plants one in the
//! nodes (`concord::planted`, built only with the `planted-bugs` feature)
//! and runs the default seeds from 1, each in a process of its own, until
//! the checker reports it. Every planted bug must be caught within the 50
//! seeds `cargo test` runs (`CONCORD_SIM_SEEDS=N` scans N instead).
//!
//! `cargo test -p concord-sim --features planted-bugs --test planted`

#![cfg(feature = "planted-bugs")]

use concord::planted::Bug;
use concord_sim::{Options, Report, child, run};

/// Runs seeds from 1 with `bug` planted, each in a child process running
/// `test`; returns the first report with anomalies.
fn first_catch(test: &str, bug: Bug) -> Option<Report> {
    let seeds: u64 = std::env::var("CONCORD_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let reports = child::run_seeds(test, 1..=seeds, Some(bug), jobs, true, |r| {
        println!("{bug:?}, seed {}: {} anomalies", r.seed, r.anomalies.len())
    });
    reports.into_iter().find(|r| !r.anomalies.is_empty())
}

fn assert_caught(test: &str, bug: Bug) {
    if child::serve_if_child() {
        return;
    }
    if let Ok(seed) = std::env::var("CONCORD_SIM_SEED") {
        let seed: u64 = seed.parse().expect("CONCORD_SIM_SEED must be a number");
        let report = run(seed, &Options { trace: true, planted: Some(bug), ..Default::default() }).expect("the run");
        for line in &report.trace {
            println!("{line}");
        }
        println!("{bug:?}, seed {seed}: {:#?}", report.anomalies);
        return;
    }
    let report = first_catch(test, bug).unwrap_or_else(|| panic!("{bug:?} went unnoticed"));
    let anomalies = &report.anomalies;
    println!("{bug:?} caught by seed {}: {:#?}", report.seed, &anomalies[..anomalies.len().min(5)]);
}

#[test]
fn a_merge_that_drops_a_sibling_is_caught() {
    assert_caught("a_merge_that_drops_a_sibling_is_caught", Bug::MergeDropsSibling);
}

#[test]
fn an_ack_counted_twice_is_caught() {
    assert_caught("an_ack_counted_twice_is_caught", Bug::AckCountedTwice);
}

#[test]
fn a_hint_deleted_before_delivery_is_caught() {
    assert_caught("a_hint_deleted_before_delivery_is_caught", Bug::HintDeletedBeforeDelivery);
}
