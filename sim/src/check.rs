//! The checker: holds the clients' history against every replica's final
//! copy, once the cluster has settled. Its rules, per set:
//!
//! - **Lost**: an acknowledged add's element is missing at the end, though
//!   no delete's read saw it (only a delete whose context covers an element
//!   may remove it) and not every node that acknowledged it may have lost
//!   it: wiped since, or crashed before a `periodic` flush could have
//!   covered it.
//! - **Phantom**: an element at the end that no write to that set carried.
//! - **Came back**: an element an acknowledged delete covered is present at
//!   the end, though every write that carried it was acknowledged by
//!   primaries before the delete's read began, no node lost its data
//!   meanwhile, and so the delete's R=ALL read saw every one of them; and
//!   no crash may have taken the delete's tombstone before a flush.
//!   Checked for deletes before the ring first changes: during a change,
//!   the replicas one node's ring names are not those of another's.
//!
//! Acknowledgements are checked as they arrive (`workload::check_acks`),
//! and convergence by the run itself.

use std::collections::BTreeSet;

use crate::workload::{key, live_elements};
use crate::{BUCKET, Options, Report, Shared};

/// Checks the run's history; adds what it finds to `report`.
pub(crate) fn check(shared: &Shared, options: &Options, report: &mut Report) {
    let h = &shared.history;
    report.writes = h.writes.len();
    report.acked = h.writes.iter().filter(|w| w.acked).count();
    report.deletes = h.deletes.len();
    report.anomalies.extend(h.anomalies.iter().cloned());
    let wiped = |node: &str, after: std::time::Duration| {
        shared.slots.iter().find(|s| s.name == node).is_some_and(|s| s.wiped_at.iter().any(|t| *t >= after))
    };
    // Whether `slot` crashed after an operation began and before a flush
    // surely covered what it acknowledged at `end`.
    let crashed_unflushed = |slot: &crate::Slot, start, end| {
        slot.stopped_at.iter().any(|t| *t >= start && shared.durability.may_lose(end, *t))
    };
    let any_wipe_between = |from: std::time::Duration, to: std::time::Duration| {
        shared.slots.iter().any(|s| s.wiped_at.iter().any(|t| *t >= from && *t <= to))
    };
    // Whether a crash may have taken the delete's tombstone from the node
    // that acknowledged it before the others had it (`periodic` mode).
    let tombstone_may_be_lost = |d: &crate::Delete| shared.slots.iter().any(|s| crashed_unflushed(s, d.start, d.end));
    for k in 0..options.keys {
        let final_elements = final_elements(shared, &key(k));
        let writes: Vec<_> = h.writes.iter().filter(|w| w.key == k).collect();
        let deletes: Vec<_> = h.deletes.iter().filter(|d| d.key == k).collect();
        for e in &final_elements {
            if !writes.iter().any(|w| w.elements.contains(e)) {
                report.anomalies.push(format!("phantom: {e} in set{k}, which no write carried"));
            }
        }
        for w in writes.iter().filter(|w| w.acked) {
            report.checked += 1;
            if final_elements.contains(&w.added) || deletes.iter().any(|d| d.read.contains(&w.added)) {
                continue;
            }
            if !w.acked_by.is_empty()
                && w.acked_by.iter().all(|n| {
                    wiped(n, w.start)
                        || shared
                            .slots
                            .iter()
                            .find(|s| s.name == *n)
                            .is_some_and(|s| crashed_unflushed(s, w.start, w.end))
                })
            {
                report.lost_as_allowed += 1;
                continue;
            }
            report.anomalies.push(format!(
                "lost: {} added to set{k} at {:.3}s, acknowledged by {:?}, is gone",
                w.added,
                w.end.as_secs_f64(),
                w.acked_by
            ));
        }
        let before = report.anomalies.len();
        // Once the ring has changed, a key's replicas on one node's ring
        // are not those on another's until the change is done, and an R=ALL
        // read is not promised every acknowledged write (see RELIABILITY.md).
        let ring_stable = |until: std::time::Duration| shared.ring_changes.iter().all(|t| *t > until);
        for d in deletes.iter().filter(|d| d.acked && ring_stable(d.end)) {
            for e in d.read.intersection(&final_elements) {
                let carriers: Vec<_> = writes.iter().filter(|w| w.elements.contains(e)).collect();
                let concurrent = carriers.iter().any(|w| !w.acked || w.sloppy || w.end >= d.start);
                let first = carriers.iter().map(|w| w.start).min().unwrap_or(d.start);
                if !concurrent && !any_wipe_between(first, d.end) && !tombstone_may_be_lost(d) {
                    let last = carriers.iter().max_by_key(|w| w.end).expect("an element has a carrier");
                    report.anomalies.push(format!(
                        "came back: {e} in set{k} was deleted at {:.3}s (read {:.3}s from {:?}) after every write of it, the last at {:.3}s acknowledged by {:?}",
                        d.end.as_secs_f64(),
                        d.start.as_secs_f64(),
                        d.read_from,
                        last.end.as_secs_f64(),
                        last.acked_by
                    ));
                }
            }
        }
        if report.anomalies.len() > before {
            report.anomalies.push(format!("set{k} at the end:\n{}", crate::dump_key(shared, &key(k))));
        }
    }
}

/// The union of the live elements of every replica's copy of `key`.
fn final_elements(shared: &Shared, key: &[u8]) -> BTreeSet<String> {
    let Some(ring) = shared.ring() else { return BTreeSet::new() };
    ring.preference_list(ring.partition_of(BUCKET, key), 3)
        .iter()
        .flat_map(|r| live_elements(shared.local_copy(r, key).flatten().as_ref()))
        .collect()
}
