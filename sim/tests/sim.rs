//! Runs the deterministic simulation over many seeds.
//!
//! - `cargo test -p concord-sim` runs 50 seeds (`CONCORD_SIM_SEEDS=N` runs N,
//!   from `CONCORD_SIM_FIRST_SEED`), each in a process of its own, one per
//!   core.
//! - `CONCORD_SIM_SEED=S` replays seed S exactly, in this process, and prints
//!   its trace (`RUST_LOG=concord=debug` adds the nodes' own logs).

use concord_sim::{Options, Report, child, run};

const TEST: &str = "every_seed_keeps_every_acknowledged_write";

fn print(report: &Report) {
    println!(
        "seed {}: {:.3} s simulated, {}, faults {:?}, writes {} ({} acknowledged), deletes {}, {} checked ({} lost as allowed), {} anomalies",
        report.seed,
        report.simulated.as_secs_f64(),
        report.durability,
        report.faults,
        report.writes,
        report.acked,
        report.deletes,
        report.checked,
        report.lost_as_allowed,
        report.anomalies.len()
    );
}

#[test]
fn every_seed_keeps_every_acknowledged_write() {
    if child::serve_if_child() {
        return;
    }
    if let Ok(seed) = std::env::var("CONCORD_SIM_SEED") {
        let seed: u64 = seed.parse().expect("CONCORD_SIM_SEED must be a number");
        let report = run(seed, &Options { trace: true, ..Default::default() }).expect("the simulation runs");
        for line in &report.trace {
            println!("{line}");
        }
        print(&report);
        assert!(report.anomalies.is_empty(), "seed {seed}: {:#?}", report.anomalies);
        return;
    }
    let seeds: u64 = std::env::var("CONCORD_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let first: u64 = std::env::var("CONCORD_SIM_FIRST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    let reports = child::run_seeds(TEST, first..first + seeds, None, jobs, false, print);
    let mut failed = Vec::new();
    let (mut faults, mut checked, mut allowed, mut simulated) = (0, 0, 0, 0.0);
    for report in reports {
        let seed = report.seed;
        faults += report.fault_count();
        checked += report.checked;
        allowed += report.lost_as_allowed;
        simulated += report.simulated.as_secs_f64();
        if !report.anomalies.is_empty() {
            println!("seed {seed} found: {:#?}", report.anomalies);
            failed.push(seed);
        }
    }
    println!(
        "{seeds} seeds: {:.2} simulated hours, {faults} faults, {checked} acknowledged adds checked ({allowed} lost as the durability mode allows), failing seeds {failed:?}",
        simulated / 3600.0
    );
    assert!(failed.is_empty(), "seeds that found anomalies (replay with CONCORD_SIM_SEED=S): {failed:?}");
}
