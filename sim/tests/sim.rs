//! Runs the deterministic simulation over many seeds.
//!
//! - `cargo test -p concord-sim` runs 50 seeds (`CONCORD_SIM_SEEDS=N` runs N,
//!   from `CONCORD_SIM_FIRST_SEED`), one thread per core.
//! - `CONCORD_SIM_SEED=S` runs seed S alone and prints its trace
//!   (`RUST_LOG=concord=debug` adds the nodes' own logs).

use concord_sim::{Options, Report, run};

fn print(report: &Report) {
    println!(
        "seed {}: {:.0} s simulated, faults {:?}, writes {} ({} acknowledged), deletes {}, {} checked, {} anomalies",
        report.seed,
        report.simulated.as_secs_f64(),
        report.faults,
        report.writes,
        report.acked,
        report.deletes,
        report.checked,
        report.anomalies.len()
    );
}

#[test]
fn every_seed_keeps_every_acknowledged_write() {
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
    // Each run keeps to its own thread, so seeds run side by side, one
    // thread per core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4) as u64;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                (first + t..first + seeds)
                    .step_by(threads as usize)
                    .map(|seed| {
                        let report = run(seed, &Options::default()).expect("the simulation runs");
                        print(&report);
                        report
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut reports: Vec<Report> = workers.into_iter().flat_map(|w| w.join().expect("a simulation thread")).collect();
    reports.sort_by_key(|r| r.seed);
    let mut failed = Vec::new();
    let (mut faults, mut checked, mut simulated) = (0, 0, 0.0);
    for report in reports {
        let seed = report.seed;
        faults += report.fault_count();
        checked += report.checked;
        simulated += report.simulated.as_secs_f64();
        if !report.anomalies.is_empty() {
            println!("seed {seed} found: {:#?}", report.anomalies);
            failed.push(seed);
        }
    }
    println!(
        "{seeds} seeds: {:.2} simulated hours, {faults} faults, {checked} acknowledged adds checked, failing seeds {failed:?}",
        simulated / 3600.0
    );
    assert!(failed.is_empty(), "seeds that found anomalies (replay with CONCORD_SIM_SEED=S): {failed:?}");
}
