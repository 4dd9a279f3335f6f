//! The simulation catches deliberate bugs: each test plants one in the
//! node (`concord::planted`, built only with the `planted-bugs` feature)
//! and runs seeds from 1 until the checker reports it, at most 200
//! (`CONCORD_SIM_SEEDS=N`: at most N). Two are caught by seed 1; the
//! deleted hint first by seed 141, beyond the 50 that `cargo test` runs
//! (docs/RELIABILITY.md).
//!
//! `cargo test -p concord-sim --features planted-bugs --test planted`

#![cfg(feature = "planted-bugs")]

use concord::planted::{Bug, plant};
use concord_sim::{Options, run};

/// Runs seeds from 1 with `bug` planted; returns the first seed whose run
/// found an anomaly, and what it found.
fn first_catch(bug: Bug) -> Option<(u64, Vec<String>)> {
    let seeds: u64 = std::env::var("CONCORD_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    plant(Some(bug));
    let caught = (1..=seeds).find_map(|seed| {
        let report = run(seed, &Options::default()).expect("the simulation runs");
        println!("{bug:?}, seed {seed}: {} anomalies", report.anomalies.len());
        (!report.anomalies.is_empty()).then_some((seed, report.anomalies))
    });
    plant(None);
    caught
}

fn assert_caught(bug: Bug) {
    let (seed, anomalies) = first_catch(bug).unwrap_or_else(|| panic!("{bug:?} went unnoticed"));
    println!("{bug:?} caught by seed {seed}: {:#?}", &anomalies[..anomalies.len().min(5)]);
}

#[test]
fn a_merge_that_drops_a_sibling_is_caught() {
    assert_caught(Bug::MergeDropsSibling);
}

#[test]
fn an_ack_counted_twice_is_caught() {
    assert_caught(Bug::AckCountedTwice);
}

#[test]
fn a_hint_deleted_before_delivery_is_caught() {
    assert_caught(Bug::HintDeletedBeforeDelivery);
}
