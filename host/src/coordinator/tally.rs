//! Who a request asks and how their answers count. Pure: the request paths
//! feed it answers; a table of cases in `tests`.

use super::Needed;
use crate::ring::NodeId;
use crate::{Error, Result};

/// Where a request goes and what it needs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Epoch of the ring the replicas were chosen from.
    pub epoch: u64,
    /// The key's partition.
    pub partition: u32,
    /// The key's replicas (its primaries), in preference order.
    pub replicas: Vec<NodeId>,
    /// Live nodes past the preference list, in ring order, that may stand
    /// in for replicas that are down (sloppy quorum). Empty when the request
    /// does not allow it or the cluster has no node beyond the replicas.
    pub fallbacks: Vec<NodeId>,
    /// The nodes among replicas and fallbacks in the client's zone.
    pub local: Vec<NodeId>,
    /// Answers needed.
    pub needed: Needed,
}

/// One node's answer to a replica call.
#[derive(Debug)]
pub struct Answer<T> {
    /// Who answered.
    pub node: NodeId,
    /// The replica the answer counts for: the node itself, or the replica
    /// a fallback stood in for.
    pub replica: NodeId,
    /// What it said.
    pub result: Result<T>,
}

impl<T> Answer<T> {
    /// Whether a fallback gave this answer.
    pub fn is_fallback(&self) -> bool {
        self.node != self.replica
    }
}

/// Counts answers against what a request needs.
#[derive(Debug)]
pub struct Tally {
    needed: Needed,
    /// The nodes in the client's zone, whose answers `LOCAL_QUORUM` counts.
    local: Vec<NodeId>,
    /// Every node that answered well, in order.
    pub ok: Vec<NodeId>,
    /// Of those, fallbacks, with the replica each stood in for.
    pub fallbacks: Vec<(NodeId, NodeId)>,
    /// What went wrong with the others, one line each.
    pub failures: Vec<String>,
    /// The replica slots answered for, each once: a replica and a
    /// fallback standing in for it are one copy's worth, not two (once the
    /// fallback hands its hint over, one copy is what is left).
    slots: Vec<NodeId>,
    /// Of those, slots answered for from the client's zone.
    local_slots: Vec<NodeId>,
    primaries_ok: usize,
    /// Calls made and not answered yet.
    waiting: usize,
    /// The key's replica count, for messages.
    replicas: usize,
}

impl Tally {
    /// A tally for `plan`, with nothing sent yet.
    pub fn new(plan: &Plan) -> Self {
        Self {
            needed: plan.needed,
            local: plan.local.clone(),
            ok: Vec::new(),
            fallbacks: Vec::new(),
            failures: Vec::new(),
            slots: Vec::new(),
            local_slots: Vec::new(),
            primaries_ok: 0,
            waiting: 0,
            replicas: plan.replicas.len(),
        }
    }

    /// Records a call made.
    pub fn sent(&mut self) {
        self.waiting += 1;
    }

    /// Records a call that could not be made at all, and why.
    pub fn skipped(&mut self, why: String) {
        self.failures.push(why);
    }

    /// Records an answer (good or bad).
    pub fn answered<T>(&mut self, a: &Answer<T>) {
        self.waiting = self.waiting.saturating_sub(1);
        match &a.result {
            Ok(_) => {
                if !self.slots.contains(&a.replica) {
                    self.slots.push(a.replica.clone());
                }
                // A local copy of a local replica's slot: a fallback in the
                // zone standing in for a replica elsewhere hands its copy out
                // of the zone later.
                if self.local.contains(&a.node)
                    && self.local.contains(&a.replica)
                    && !self.local_slots.contains(&a.replica)
                {
                    self.local_slots.push(a.replica.clone());
                }
                if a.is_fallback() {
                    self.fallbacks.push((a.node.clone(), a.replica.clone()));
                } else {
                    self.primaries_ok += 1;
                }
                self.ok.push(a.node.clone());
                if crate::planted::planted(crate::planted::Bug::AckCountedTwice) && !a.is_fallback() {
                    self.slots.push(format!("{} (again)", a.replica));
                    self.primaries_ok += 1;
                    self.ok.push(a.node.clone());
                }
            }
            Err(e) if a.is_fallback() => self.failures.push(format!("{} (for {}): {e}", a.node, a.replica)),
            Err(e) => self.failures.push(format!("{}: {e}", a.node)),
        }
    }

    /// Calls still unanswered.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Whether the request can be answered: answers for enough distinct
    /// replicas (from the client's zone for `LOCAL_QUORUM`), and enough of
    /// them from the replicas themselves.
    pub fn satisfied(&self) -> bool {
        let counted = if self.needed.local_only { self.local_slots.len() } else { self.slots.len() };
        counted >= self.needed.total && self.primaries_ok >= self.needed.primaries
    }

    /// The error for a request that ends unsatisfied: how many answered,
    /// of how many, and why the others did not.
    pub fn unavailable(&self, op: &'static str) -> Error {
        let mut detail = String::new();
        if self.primaries_ok < self.needed.primaries {
            let letter = if op == "read" { "pr" } else { "pw" };
            detail.push_str(&format!(
                "; {letter}={} needs answers from the key's own replicas and {} came from them",
                self.needed.primaries, self.primaries_ok
            ));
        }
        if !self.fallbacks.is_empty() {
            let f: Vec<String> = self.fallbacks.iter().map(|(n, r)| format!("{n} for {r}")).collect();
            detail.push_str(&format!("; fallbacks answered: {}", f.join(", ")));
        }
        if self.failures.is_empty() {
            detail.push_str("; the others did not answer before the deadline");
        } else {
            detail.push_str(&format!("; {}", self.failures.join("; ")));
        }
        Error::Unavailable { op, needed: self.needed.total, got: self.slots.len(), total: self.replicas, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(total: usize, primaries: usize, local_only: bool) -> Plan {
        Plan {
            epoch: 1,
            partition: 0,
            replicas: vec!["a".into(), "b".into(), "c".into()],
            fallbacks: vec!["d".into()],
            local: vec!["a".into(), "d".into()],
            needed: Needed { total, primaries, local_only },
        }
    }

    fn ok(node: &str, replica: &str) -> Answer<()> {
        Answer { node: node.into(), replica: replica.into(), result: Ok(()) }
    }

    fn err(node: &str) -> Answer<()> {
        Answer { node: node.into(), replica: node.into(), result: Err(Error::internal("refused")) }
    }

    #[test]
    fn fallback_answers_count_for_w_but_never_for_pw() {
        // (needed total, primaries, local only), answers -> satisfied
        type Case<'a> = ((usize, usize, bool), &'a [Answer<()>], bool);
        let cases: &[Case] = &[
            ((2, 0, false), &[ok("a", "a"), ok("d", "b")], true),
            ((2, 2, false), &[ok("a", "a"), ok("d", "b")], false),
            ((2, 2, false), &[ok("a", "a"), ok("c", "c")], true),
            ((2, 0, false), &[ok("a", "a"), err("b")], false),
            // LOCAL_QUORUM counts the client's zone's replica slots, a
            // fallback in the zone included when it stands in for one.
            ((2, 0, true), &[ok("a", "a"), ok("b", "b")], false),
            ((1, 0, true), &[ok("b", "b"), ok("d", "a")], true),
            ((2, 0, true), &[ok("a", "a"), ok("d", "c")], false),
            // A replica and a fallback for it are one slot, not two.
            ((2, 0, false), &[ok("b", "b"), ok("d", "b")], false),
            ((2, 0, false), &[ok("d", "b"), ok("b", "b"), ok("c", "c")], true),
            ((3, 0, false), &[ok("a", "a"), ok("d", "b"), ok("e", "b")], false),
            ((1, 0, true), &[ok("d", "c"), ok("d", "c")], false),
        ];
        for ((total, primaries, local), answers, want) in cases {
            let mut t = Tally::new(&plan(*total, *primaries, *local));
            for a in answers.iter() {
                t.sent();
                t.answered(a);
            }
            assert_eq!(t.satisfied(), *want, "{total}/{primaries}/{local}: {answers:?}");
            assert_eq!(t.waiting(), 0);
        }
    }

    #[test]
    fn an_unmet_pw_names_the_counts_and_the_fallbacks() {
        let mut t = Tally::new(&plan(2, 2, false));
        for a in [ok("a", "a"), ok("d", "b"), err("c")] {
            t.sent();
            t.answered(&a);
        }
        let e = t.unavailable("write").to_string();
        assert!(e.contains("write needed 2 of 3 replicas, 2 answered"), "{e}");
        assert!(e.contains("pw=2 needs answers from the key's own replicas and 1 came from them"), "{e}");
        assert!(e.contains("fallbacks answered: d for b"), "{e}");
        assert!(e.contains("c: internal error: refused"), "{e}");
        assert_eq!(t.fallbacks, vec![("d".to_owned(), "b".to_owned())]);
    }
}
