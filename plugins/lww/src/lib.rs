//! Last writer wins: of the siblings, keep the one written last.
//!
//! "Last" is the largest `written_at_ms`, the accepting replica's wall clock.
//! Ties (and clocks that disagree) are broken by the sibling's dot, which is
//! unique and totally ordered, so every node picks the same winner from the
//! same siblings, in any order. When the winner is a tombstone the key is
//! deleted.
//!
//! Last-writer-wins silently discards the losers: use it for values where
//! the newest one is all that matters (a profile picture, a session), not
//! for data that must merge (use a merging resolver such as `cart`).

use concord_guest::{Resolution, Resolver, Sibling};

/// The resolver.
pub struct Lww;

impl Resolver for Lww {
    fn resolve(_bucket: &str, _key: &[u8], siblings: Vec<Sibling>) -> Resolution {
        match siblings.into_iter().max_by_key(|s| (s.written_at_ms, s.dot)) {
            Some(s) if s.tombstone => Resolution::Delete,
            Some(s) => Resolution::Resolved(s.value),
            None => Resolution::KeepSiblings,
        }
    }
}

concord_guest::export_resolver!(Lww);

#[cfg(test)]
mod tests {
    use concord_guest::Dot;

    use super::*;

    fn sib(value: &str, at: u64, actor: u64, counter: u64) -> Sibling {
        Sibling { value: value.into(), tombstone: false, dot: Dot { actor, counter }, written_at_ms: at }
    }

    #[test]
    fn latest_timestamp_wins() {
        let r = Lww::resolve("b", b"k", vec![sib("old", 10, 1, 1), sib("new", 20, 2, 1), sib("mid", 15, 3, 1)]);
        assert_eq!(r, Resolution::Resolved(b"new".to_vec()));
    }

    #[test]
    fn ties_break_by_dot_in_any_order() {
        let a = sib("a", 10, 1, 5);
        let b = sib("b", 10, 2, 1);
        assert_eq!(Lww::resolve("b", b"k", vec![a.clone(), b.clone()]), Resolution::Resolved(b"b".to_vec()));
        assert_eq!(Lww::resolve("b", b"k", vec![b, a]), Resolution::Resolved(b"b".to_vec()));
    }

    #[test]
    fn a_latest_tombstone_deletes() {
        let mut t = sib("", 30, 1, 2);
        t.tombstone = true;
        assert_eq!(Lww::resolve("b", b"k", vec![sib("v", 10, 1, 1), t]), Resolution::Delete);
    }
}
