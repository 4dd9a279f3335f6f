//! The ring: which partition a key lives in and which nodes hold it.
//!
//! Keys hash to one of `Q` fixed partitions (`Q` a power of two, fixed when
//! the cluster is created). Each partition has an owner; a key's
//! *preference list* is the owners of its partition and the partitions
//! after it, skipping nodes already chosen, and preferring zones not yet
//! chosen. Pure code: membership comes in as data.
//!
//! **Claim** computes a new ownership when members join or leave. It keeps
//! three properties, checked by property tests over random histories:
//!
//! * *balance*: every member owns `floor(Q/S)` or `ceil(Q/S)` partitions;
//! * *minimal movement*: balance moves exactly the partitions of members
//!   that left plus the shares of members that joined; repairing spacing
//!   can add swaps (over random histories at most 10 more moves of 16
//!   partitions, 14 of 64, 24 of 128);
//! * *spacing*: any `N` consecutive partitions (the target `n` of the ring)
//!   have distinct owners, spread over zones where zones exist, whenever the
//!   membership allows it (at least `N + 1` members; or `N` members when `N`
//!   divides `Q`).
//!
//! The algorithm: drop the owners that left; then, one partition at a time,
//! the member furthest below its share takes a free partition or one from a
//! member above its share, choosing one where it owns nothing within
//! `N - 1` positions (and, where possible, its zone is not there either).
//! Spacing conflicts that remain are repaired by swapping the owners of two
//! partitions, which keeps the counts and so the balance. Last, swaps that
//! hand partitions back to their previous owners without breaking spacing
//! undo the moves the repair did not need.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's stable identity (its first advertised address unless configured).
pub type NodeId = String;

/// Default number of partitions.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The replication factor claim spaces owners for.
pub const TARGET_N: usize = 3;

/// The partition of `key` in `bucket` on a ring of `partitions` partitions:
/// `xxh3_64(bucket, 0x00, key) mod Q`.
pub fn partition_of(bucket: &str, key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions.is_power_of_two());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(bucket.as_bytes());
    h.update(&[0]);
    h.update(key);
    (h.digest() & (partitions as u64 - 1)) as u32
}

/// What the ring knows about a member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Failure domain.
    pub zone: String,
}

/// Partition ownership at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// Grows by one on every ownership change.
    epoch: u64,
    /// Node that computed this ring (breaks ties between rings of one epoch).
    claimant: NodeId,
    /// `owners[p]` owns partition `p`. Its length is `Q`.
    owners: Vec<NodeId>,
    /// Nodes that own partitions, with their zones.
    members: BTreeMap<NodeId, Member>,
}

impl Ring {
    /// A ring where `node` owns every one of `partitions` partitions: what a
    /// node starts with before it has met any other.
    pub fn single(node: &str, zone: &str, partitions: u32) -> Self {
        assert!(partitions.is_power_of_two(), "partition count must be a power of two");
        let members = BTreeMap::from([(node.to_owned(), Member { zone: zone.to_owned() })]);
        Self { epoch: 1, claimant: node.to_owned(), owners: vec![node.to_owned(); partitions as usize], members }
    }

    /// What a node started with seeds begins with: [`Ring::single`] at epoch
    /// 0. Any ring a cluster has used supersedes it, so a newcomer never
    /// takes the partitions of a node that has been serving alone; between
    /// newcomers, one is still picked by id.
    pub fn joining(node: &str, zone: &str, partitions: u32) -> Self {
        Self { epoch: 0, ..Self::single(node, zone, partitions) }
    }

    /// Checks a ring that came from elsewhere (disk, a peer) before it is
    /// used: a power-of-two partition count, at least one member, and every
    /// partition owned by a member.
    pub fn check(&self) -> Result<(), String> {
        let q = self.owners.len();
        if !q.is_power_of_two() || q > 65_536 {
            return Err(format!("it has {q} partitions; a ring has a power of two, at most 65536"));
        }
        if self.members.is_empty() {
            return Err("it has no members".into());
        }
        if let Some((p, o)) = self.owners.iter().enumerate().find(|(_, o)| !self.members.contains_key(*o)) {
            return Err(format!("partition {p} is owned by {o}, which is not a member"));
        }
        Ok(())
    }

    /// Number of partitions (`Q`).
    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The ownership epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Who computed this ring.
    pub fn claimant(&self) -> &str {
        &self.claimant
    }

    /// Members and their zones.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// Whether `node` owns partitions.
    pub fn is_member(&self, node: &str) -> bool {
        self.members.contains_key(node)
    }

    /// The owner of each partition.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    /// Partitions owned by `node`.
    pub fn owned_by(&self, node: &str) -> usize {
        self.owners.iter().filter(|o| o.as_str() == node).count()
    }

    /// Whether `self` should replace `other` when two nodes' rings meet:
    /// the higher epoch wins, ties go to the higher claimant id.
    pub fn supersedes(&self, other: &Ring) -> bool {
        (self.epoch, &self.claimant) > (other.epoch, &other.claimant)
    }

    /// A summary that differs whenever two rings differ.
    pub fn digest(&self) -> String {
        format!("{}:{}", self.epoch, self.claimant)
    }

    /// The partition of a key.
    pub fn partition_of(&self, bucket: &str, key: &[u8]) -> u32 {
        partition_of(bucket, key, self.partitions())
    }

    /// The first `n` distinct owners walking clockwise from `partition`,
    /// preferring owners in zones not chosen yet: a zone is used twice only
    /// when there are fewer than `n` zones.
    pub fn preference_list(&self, partition: u32, n: usize) -> Vec<NodeId> {
        let n = n.min(self.members.len());
        let q = self.owners.len();
        let ring_order = (0..q).map(|i| &self.owners[(partition as usize + i) % q]);
        let zones = self.members.values().map(|m| m.zone.as_str()).collect::<std::collections::BTreeSet<_>>();
        let mut out: Vec<NodeId> = Vec::with_capacity(n);
        let mut used_zones = std::collections::BTreeSet::new();
        // First the nearest owner of each zone, then the nearest others.
        for owner in ring_order.clone() {
            if out.len() == n || used_zones.len() == zones.len() {
                break;
            }
            if !out.contains(owner) && used_zones.insert(self.members[owner].zone.as_str()) {
                out.push(owner.clone());
            }
        }
        for owner in ring_order {
            if out.len() == n {
                break;
            }
            if !out.contains(owner) {
                out.push(owner.clone());
            }
        }
        out
    }

    /// The ring after membership becomes `members`, computed by `claimant`.
    /// Returns `self` unchanged (same epoch) when nothing changes.
    pub fn claim(&self, members: &BTreeMap<NodeId, Member>, claimant: &str) -> Ring {
        assert!(!members.is_empty(), "a ring needs at least one member");
        if members == &self.members {
            return self.clone();
        }
        let owners = claim(&self.owners, members, TARGET_N);
        Ring { epoch: self.epoch + 1, claimant: claimant.to_owned(), owners, members: members.clone() }
    }
}

/// How many partitions each member should own: `floor(Q/S)` each, plus one
/// for the first `Q mod S` members, chosen to keep current owners' extras.
fn targets(q: usize, current: &[NodeId], members: &BTreeMap<NodeId, Member>) -> BTreeMap<NodeId, usize> {
    let s = members.len();
    let (base, extra) = (q / s, q % s);
    // Members that own the most now keep the extra partitions.
    let mut order: Vec<&NodeId> = members.keys().collect();
    let owned = |m: &NodeId| current.iter().filter(|o| *o == m).count();
    order.sort_by_key(|m| (std::cmp::Reverse(owned(m)), (*m).clone()));
    order.iter().enumerate().map(|(i, m)| ((*m).clone(), base + usize::from(i < extra))).collect()
}

/// Index `offset` positions away from `p` on a ring of `q` partitions.
fn at(p: usize, offset: isize, q: usize) -> usize {
    (p as isize + offset).rem_euclid(q as isize) as usize
}

/// Whether `node` owns a partition within `n - 1` positions of `p` (other
/// than `p` itself).
fn near(owners: &[Option<NodeId>], p: usize, node: &NodeId, n: usize) -> bool {
    let q = owners.len();
    (1..n as isize).any(|d| owners[at(p, d, q)].as_ref() == Some(node) || owners[at(p, -d, q)].as_ref() == Some(node))
}

/// Whether an owner in `zone` sits within `n - 1` positions of `p`.
fn zone_near(owners: &[Option<NodeId>], p: usize, zone: &str, members: &BTreeMap<NodeId, Member>, n: usize) -> bool {
    let q = owners.len();
    (1..n as isize).any(|d| {
        [at(p, d, q), at(p, -d, q)]
            .iter()
            .any(|&i| owners[i].as_ref().and_then(|o| members.get(o)).is_some_and(|m| m.zone == zone))
    })
}

fn claim(current: &[NodeId], members: &BTreeMap<NodeId, Member>, n: usize) -> Vec<NodeId> {
    let q = current.len();
    let targets = targets(q, current, members);
    let mut owners: Vec<Option<NodeId>> = current.iter().map(|o| members.contains_key(o).then(|| o.clone())).collect();
    let mut counts: BTreeMap<NodeId, usize> = members.keys().map(|m| (m.clone(), 0)).collect();
    for o in owners.iter().flatten() {
        *counts.get_mut(o).expect("owner is a member") += 1;
    }
    // One partition at a time, a member below its share takes a free
    // partition or one from a member above its share. Of all such moves the
    // one taken keeps the spacing and the zone spread, prefers a free
    // partition, then one whose owner sits too close to itself, then the
    // member furthest below its share.
    loop {
        let takers: Vec<&NodeId> = members.keys().filter(|m| counts[*m] < targets[*m]).collect();
        if takers.is_empty() {
            break;
        }
        let available: Vec<usize> = (0..q)
            .filter(|&p| match &owners[p] {
                None => true,
                Some(o) => counts[o] > targets[o],
            })
            .collect();
        let (p, taker) = available
            .iter()
            .flat_map(|&p| takers.iter().map(move |m| (p, *m)))
            .min_by_key(|&(p, m)| {
                let spaced = !near(&owners, p, m, n);
                let zone_free = !zone_near(&owners, p, &members[m].zone, members, n);
                let crowded = owners[p].as_ref().is_some_and(|o| near(&owners, p, o, n));
                let deficit = targets[m] - counts[m];
                (std::cmp::Reverse((spaced, zone_free, owners[p].is_none(), crowded, deficit)), p, m.clone())
            })
            .map(|(p, m)| (p, m.clone()))
            .expect("a member below its share implies one above it, or a free partition");
        if let Some(old) = owners[p].take() {
            *counts.get_mut(&old).expect("member") -= 1;
        }
        *counts.get_mut(&taker).expect("member") += 1;
        owners[p] = Some(taker);
    }
    let mut owners: Vec<NodeId> = owners.into_iter().map(|o| o.expect("every partition assigned")).collect();
    if spacing_possible(q, members.len(), n) {
        repair_spacing(&mut owners, n);
        restore_owners(&mut owners, current, n);
    }
    owners
}

/// Undoes moves that spacing repair made but did not need: swaps that give
/// partitions back to their previous owners without adding violations.
/// Repair walks across plateaus of equally good layouts, and on a tight
/// membership (say four members for `n = 3`) that walk can reshuffle most
/// of the ring; this pass brings the movement back down.
fn restore_owners(owners: &mut [NodeId], previous: &[NodeId], n: usize) {
    let q = owners.len();
    let mut improved = true;
    while improved {
        improved = false;
        for a in 0..q {
            if owners[a] == previous[a] {
                continue;
            }
            for b in 0..q {
                // After the swap `a` is back with its previous owner; `b`
                // must not lose its own previous owner in exchange.
                if owners[b] != previous[a] || owners[b] == previous[b] {
                    continue;
                }
                let before = violations_near_pair(owners, a, b, n);
                owners.swap(a, b);
                if violations_near_pair(owners, a, b, n) <= before {
                    improved = true;
                    break;
                }
                owners.swap(a, b);
            }
        }
    }
}

/// Violations a swap of `a` and `b` can change. When the two are close
/// their windows overlap, so everything is counted.
fn violations_near_pair(owners: &[NodeId], a: usize, b: usize, n: usize) -> usize {
    let q = owners.len();
    let close = (1..2 * n as isize).any(|d| at(a, d, q) == b || at(a, -d, q) == b);
    if close {
        spacing_violations(owners, n)
    } else {
        violations_around(owners, a, n) + violations_around(owners, b, n)
    }
}

/// Whether `s` members can own `q` partitions with any `n` consecutive ones
/// on distinct members: with `n` members only if `n` divides `q`; with fewer,
/// never. (Below that, preference lists still pick distinct nodes; they just
/// walk further.)
pub fn spacing_possible(q: usize, s: usize, n: usize) -> bool {
    s > n || (s == n && q.is_multiple_of(n))
}

/// Whether partition `p`'s owner also owns one of the `n - 1` partitions
/// after it.
fn violates(owners: &[NodeId], p: usize, n: usize) -> bool {
    let q = owners.len();
    (1..n.min(q) as isize).any(|d| owners[at(p, d, q)] == owners[p])
}

/// Number of partitions whose owner also owns a partition within `n - 1`
/// positions after it.
pub fn spacing_violations(owners: &[NodeId], n: usize) -> usize {
    (0..owners.len()).filter(|&p| violates(owners, p, n)).count()
}

/// Violations among the partitions whose verdict a change at `p` can affect.
fn violations_around(owners: &[NodeId], p: usize, n: usize) -> usize {
    let q = owners.len();
    let span = n as isize - 1;
    let mut seen = Vec::new();
    for d in -span..=span {
        let i = at(p, d, q);
        if !seen.contains(&i) {
            seen.push(i);
        }
    }
    seen.into_iter().filter(|&i| violates(owners, i, n)).count()
}

/// Swaps owners of pairs of partitions to remove spacing violations. A swap
/// keeps every member's count, so balance holds.
///
/// First greedily: a swap that strictly removes violations is taken at
/// once. When that gets stuck, a bounded random search also accepts swaps
/// that leave the count unchanged, which walks across the plateaus single
/// improving swaps cannot leave. The generator is seeded from the ring, so
/// the same input always gives the same ring.
fn repair_spacing(owners: &mut [NodeId], n: usize) {
    let q = owners.len();
    if q < 2 || n < 2 {
        return;
    }
    let local = |owners: &[NodeId], a: usize, b: usize| violations_near_pair(owners, a, b, n);
    // Greedy phase.
    'greedy: for _ in 0..q * 2 {
        let Some(a) = (0..q).find(|&p| violates(owners, p, n)) else { return };
        for b in 0..q {
            if owners[a] == owners[b] {
                continue;
            }
            let before = local(owners, a, b);
            owners.swap(a, b);
            if local(owners, a, b) < before {
                continue 'greedy;
            }
            owners.swap(a, b);
        }
        break;
    }
    // Search phase: xorshift seeded from the layout.
    let mut state = owners
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15u64, |h, o| o.bytes().fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3)))
        | 1;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let mut violating: Vec<usize> = (0..q).filter(|&p| violates(owners, p, n)).collect();
    for step in 0..q * q * 8 {
        if violating.is_empty() {
            return;
        }
        let a = violating[next(violating.len())];
        let b = next(q);
        if owners[a] == owners[b] {
            continue;
        }
        let before = local(owners, a, b);
        owners.swap(a, b);
        if local(owners, a, b) > before {
            owners.swap(a, b);
        }
        if step % q == 0 || local(owners, a, b) < before {
            violating = (0..q).filter(|&p| violates(owners, p, n)).collect();
        }
    }
}

#[cfg(test)]
mod tests;
