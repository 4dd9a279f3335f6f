//! Every seed in a process of its own.
//!
//! A seed replays exactly only as the first run in its process
//! ([`crate::entropy`]), so a test that runs many seeds starts its own
//! executable again once per seed, a few at a time, and reads back each
//! child's [`Report`]. `CONCORD_SIM_SEED=S` then replays seed `S` exactly as
//! the child ran it.
//!
//! The protocol is private to the simulation's tests: the parent sets
//! `CONCORD_SIM_CHILD_SEED` (and `CONCORD_SIM_CHILD_PLANT` for a planted
//! bug) and runs the same test alone; the child runs that one seed and
//! prints its report as one JSON line after [`REPORT`].

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use concord::planted::Bug;

use crate::{Options, Report, run};

/// What precedes a child's report on its line of output.
pub const REPORT: &str = "CONCORD_SIM_REPORT ";

const SEED_VAR: &str = "CONCORD_SIM_CHILD_SEED";
const PLANT_VAR: &str = "CONCORD_SIM_CHILD_PLANT";

/// In a child, runs its seed, prints the report and returns true; in the
/// parent (no seed given) returns false at once.
pub fn serve_if_child() -> bool {
    let Some(seed) = std::env::var_os(SEED_VAR) else { return false };
    let seed: u64 = seed
        .to_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{SEED_VAR} must be a number, not {seed:?}"));
    let planted = std::env::var(PLANT_VAR).ok().map(|name| {
        Bug::ALL
            .into_iter()
            .find(|b| format!("{b:?}") == name)
            .unwrap_or_else(|| panic!("{PLANT_VAR}: no planted bug is called {name:?}"))
    });
    let report = run(seed, &Options { planted, ..Default::default() }).expect("the simulation runs");
    println!("{REPORT}{}", serde_json::to_string(&report).expect("a report serializes"));
    true
}

/// Runs `seeds` in order, each in a child process that runs `test` (the
/// calling test's name) from this executable, `jobs` at a time. Calls
/// `each` with every report as it arrives and returns them in seed order.
/// A child that fails to report comes back as a report whose anomaly says
/// why, so it fails the run. With `stop` set, no new seed starts once a
/// report with anomalies has arrived (seeds already running finish).
pub fn run_seeds(
    test: &str,
    seeds: impl IntoIterator<Item = u64, IntoIter: Send>,
    planted: Option<Bug>,
    jobs: usize,
    stop: bool,
    each: impl Fn(&Report) + Sync,
) -> Vec<Report> {
    let queue = Mutex::new(seeds.into_iter());
    let reports = Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("the test executable's path");
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                loop {
                    let seed = {
                        let mut queue = queue.lock().unwrap();
                        let found = reports.lock().unwrap().iter().any(|r: &Report| !r.anomalies.is_empty());
                        if stop && found {
                            return;
                        }
                        match queue.next() {
                            Some(seed) => seed,
                            None => return,
                        }
                    };
                    let report = in_child(&exe, test, seed, planted);
                    each(&report);
                    reports.lock().unwrap().push(report);
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.seed);
    reports
}

fn in_child(exe: &std::path::Path, test: &str, seed: u64, planted: Option<Bug>) -> Report {
    let failed = |why: String| Report { seed, anomalies: vec![why], ..Default::default() };
    let mut command = Command::new(exe);
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(SEED_VAR, seed.to_string())
        .env_remove("CONCORD_SIM_SEED")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match planted {
        Some(bug) => command.env(PLANT_VAR, format!("{bug:?}")),
        None => command.env_remove(PLANT_VAR),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return failed(format!("could not start a child for the seed: {e}")),
    };
    // Read stderr on the side so a chatty child cannot block on a full pipe.
    let stderr = child.stderr.take().expect("piped stderr");
    let errors = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tail.len() == 40 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });
    let mut report = None;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        // libtest may have begun the line with the test's name.
        if let Some(at) = line.find(REPORT) {
            report = Some(serde_json::from_str::<Report>(&line[at + REPORT.len()..]));
        }
    }
    let status = child.wait();
    let errors = errors.join().unwrap_or_default();
    match (report, status) {
        (Some(Ok(report)), Ok(status)) if status.success() => report,
        (Some(Err(e)), _) => failed(format!("the child's report did not parse: {e}")),
        (_, status) => failed(format!("the child did not report (exit: {status:?}); its stderr ends:\n{errors}")),
    }
}
