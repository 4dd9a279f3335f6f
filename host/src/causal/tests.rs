//! Laws of the DVV set, checked on random histories of writes and merges.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::security::{KeySet, Keyring};

const REPLICAS: usize = 3;

/// One step of a history played against `REPLICAS` replicas.
#[derive(Clone, Debug)]
enum Op {
    /// A client reads replica `read_from` (or uses no context when `None`)
    /// and writes through replica `at`.
    Put { at: usize, read_from: Option<usize>, tombstone: bool },
    /// Replica `from` sends its copy to replica `to`.
    Sync { from: usize, to: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..REPLICAS, proptest::option::of(0..REPLICAS), proptest::bool::weighted(0.1))
            .prop_map(|(at, read_from, tombstone)| Op::Put { at, read_from, tombstone }),
        2 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
    ]
}

/// The result of playing a history: each replica's copy, every dot written,
/// and the dots that some later write saw (and so may legitimately replace).
struct Played {
    replicas: Vec<Object>,
    written: Vec<Dot>,
    superseded: BTreeSet<Dot>,
}

fn actor(i: usize) -> Actor {
    // Distinct, non-sequential actor ids, like real incarnation ids.
    0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)
}

fn play(ops: &[Op]) -> Played {
    let mut replicas = vec![Object::new(); REPLICAS];
    let mut written = Vec::new();
    let mut superseded = BTreeSet::new();
    for (n, op) in ops.iter().enumerate() {
        match *op {
            Op::Put { at, read_from, tombstone } => {
                let ctx = read_from.map(|r| replicas[r].context().clone()).unwrap_or_default();
                for &d in &written {
                    if ctx.covers(d) {
                        superseded.insert(d);
                    }
                }
                let content = if tombstone { Content::Tombstone } else { Content::Value(n.to_le_bytes().to_vec()) };
                let dot = replicas[at].update(actor(at), &ctx, content, n as u64, "n").unwrap();
                written.push(dot);
            }
            Op::Sync { from, to } => {
                let src = replicas[from].clone();
                replicas[to].merge(&src);
            }
        }
    }
    Played { replicas, written, superseded }
}

fn converge(replicas: &[Object]) -> Object {
    replicas.iter().fold(Object::new(), |acc, r| acc.merged(r))
}

proptest! {
    #[test]
    fn merge_is_commutative(ops in proptest::collection::vec(op(), 0..40)) {
        let p = play(&ops);
        let (a, b) = (&p.replicas[0], &p.replicas[1]);
        prop_assert_eq!(a.merged(b), b.merged(a));
    }

    #[test]
    fn merge_is_associative(ops in proptest::collection::vec(op(), 0..40)) {
        let p = play(&ops);
        let (a, b, c) = (&p.replicas[0], &p.replicas[1], &p.replicas[2]);
        prop_assert_eq!(a.merged(b).merged(c), a.merged(&b.merged(c)));
    }

    #[test]
    fn merge_is_idempotent(ops in proptest::collection::vec(op(), 0..40)) {
        let p = play(&ops);
        for r in &p.replicas {
            prop_assert_eq!(&r.merged(r), r);
            let m = r.merged(&p.replicas[0]);
            prop_assert_eq!(m.merged(&p.replicas[0]), m.clone());
        }
    }

    #[test]
    fn put_with_latest_context_leaves_one_sibling(ops in proptest::collection::vec(op(), 0..40), at in 0..REPLICAS) {
        let p = play(&ops);
        let mut obj = converge(&p.replicas);
        let ctx = obj.context().clone();
        obj.update(actor(at), &ctx, Content::Value(b"final".to_vec()), 0, "n").unwrap();
        prop_assert_eq!(obj.siblings().len(), 1);
        prop_assert_eq!(obj.siblings()[0].content.value(), Some(&b"final"[..]));
    }

    #[test]
    fn concurrent_puts_from_one_stale_context_become_siblings(
        ops in proptest::collection::vec(op(), 0..30),
        writers in proptest::collection::vec(0..REPLICAS, 1..8),
    ) {
        let p = play(&ops);
        let base = converge(&p.replicas);
        let stale = base.context().clone();
        // Every writer read `base`, then wrote through some replica holding it.
        let mut copies = vec![base.clone(); REPLICAS];
        for (i, &at) in writers.iter().enumerate() {
            copies[at].update(actor(at), &stale, Content::Value(vec![i as u8]), 0, "n").unwrap();
        }
        let merged = converge(&copies);
        prop_assert_eq!(merged.siblings().len(), writers.len());
        prop_assert!(merged.context().descends(&stale));
    }

    #[test]
    fn merge_keeps_what_the_other_side_has_not_seen(ops in proptest::collection::vec(op(), 0..40)) {
        let p = play(&ops);
        let (a, b) = (&p.replicas[0], &p.replicas[1]);
        let m = a.merged(b);
        for s in a.siblings() {
            if !b.context().covers(s.dot) {
                prop_assert!(m.siblings().contains(s), "lost {:?}", s.dot);
            }
        }
    }

    #[test]
    fn no_write_is_lost_unless_a_later_write_saw_it(ops in proptest::collection::vec(op(), 0..60)) {
        let p = play(&ops);
        let all = converge(&p.replicas);
        let present: BTreeSet<Dot> = all.siblings().iter().map(|s| s.dot).collect();
        for d in &p.written {
            prop_assert!(present.contains(d) || p.superseded.contains(d), "write {:?} vanished", d);
        }
        // And nothing superseded survives a full merge.
        for d in &present {
            prop_assert!(!p.superseded.contains(d), "superseded write {:?} survived", d);
        }
    }

    #[test]
    fn siblings_stay_sorted_and_covered(ops in proptest::collection::vec(op(), 0..40)) {
        let p = play(&ops);
        for r in &p.replicas {
            prop_assert!(r.siblings().windows(2).all(|w| w[0].dot < w[1].dot));
            prop_assert!(r.siblings().iter().all(|s| r.context().covers(s.dot)));
        }
    }

    #[test]
    fn context_token_round_trips(ops in proptest::collection::vec(op(), 0..40), key in proptest::collection::vec(any::<u8>(), 1..64)) {
        let p = play(&ops);
        let vv = converge(&p.replicas).context().clone();
        let keys = KeySet::generate();
        let token = encode_context(&keys, &vv, "bucket", &key).unwrap();
        prop_assert_eq!(decode_context(&keys, 0, &token, "bucket", &key).unwrap(), vv);
    }

    #[test]
    fn vector_merge_is_the_pointwise_maximum(
        a in proptest::collection::vec((0u64..50, 1u64..100), 0..30),
        b in proptest::collection::vec((0u64..50, 1u64..100), 0..30),
    ) {
        let (va, vb) = (VersionVector::from_entries(a.clone()), VersionVector::from_entries(b.clone()));
        let mut merged = va.clone();
        merged.merge(&vb);
        // The definition, one entry at a time.
        let mut expected = va.clone();
        for &(actor, counter) in vb.entries() {
            expected.observe(actor, counter);
        }
        prop_assert_eq!(&merged, &expected);
        prop_assert!(merged.entries().windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn context_decoder_never_panics(token in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_context(&KeySet::generate(), 0, &token, "b", b"k");
    }

    /// Any change to a signed token, anywhere, is refused, and a refused
    /// token decodes to nothing.
    #[test]
    fn an_altered_token_is_always_refused(
        entries in proptest::collection::vec((1u64..1_000, 1u64..1_000), 1..8),
        at in any::<proptest::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let keys = KeySet::generate();
        let token = encode_context(&keys, &VersionVector::from_entries(entries), "b", b"k").unwrap();
        let mut bad = token.clone();
        let i = at.index(bad.len());
        bad[i] ^= flip;
        prop_assert!(decode_context(&keys, 0, &bad, "b", b"k").is_err(), "byte {} of {} changed", i, bad.len());
    }
}

#[test]
fn a_forged_context_is_refused() {
    // What a client could send before tokens were signed: a context naming
    // an actor with a huge counter, built without the cluster's key.
    let ours = KeySet::generate();
    let forger = KeySet::generate();
    let forged = VersionVector::from_entries([(42, u64::MAX)]);
    let token = encode_context(&forger, &forged, "b", b"k").unwrap();
    assert_eq!(decode_context(&ours, 0, &token, "b", b"k"), Err(ContextError::BadSignature));
    // The same bytes with the tag cut off, or an unsigned v1 token.
    assert!(decode_context(&ours, 0, &token[..token.len() - 16], "b", b"k").is_err());
    assert_eq!(decode_context(&ours, 0, &[1, 0, 0], "b", b"k"), Err(ContextError::UnsupportedVersion(1)));
}

#[test]
fn tokens_of_a_retired_key_pass_until_its_grace_ends() {
    let ring = Keyring::in_memory(KeySet::generate());
    let vv = VersionVector::from_entries([(1, 2)]);
    let old = encode_context(&ring.current(), &vv, "b", b"k").unwrap();
    ring.rotate(1_000, 5_000).unwrap();
    ring.set_signing_limit(u32::MAX);
    let new = encode_context(&ring.current(), &vv, "b", b"k").unwrap();
    assert_ne!(old[1..5], new[1..5], "the new key signs");
    assert_eq!(decode_context(&ring.current(), 5_999, &old, "b", b"k"), Ok(vv.clone()));
    assert_eq!(decode_context(&ring.current(), 6_000, &old, "b", b"k"), Err(ContextError::UnknownKey(1)));
    assert_eq!(decode_context(&ring.current(), 6_000, &new, "b", b"k"), Ok(vv));
    assert_eq!(decode_context(&KeySet::default(), 0, &new, "b", b"k"), Err(ContextError::NoKey));
}

#[test]
fn context_for_another_key_is_refused() {
    let keys = KeySet::generate();
    let vv = VersionVector::from_entries([(1, 2), (7, 1)]);
    let token = encode_context(&keys, &vv, "b", b"k1").unwrap();
    assert_eq!(decode_context(&keys, 0, &token, "b", b"k2"), Err(ContextError::WrongKey));
    assert_eq!(decode_context(&keys, 0, &token, "c", b"k1"), Err(ContextError::WrongKey));
}

#[test]
fn garbage_contexts_are_refused_with_a_reason() {
    let keys = KeySet::generate();
    assert_eq!(decode_context(&keys, 0, &[], "b", b"k"), Ok(VersionVector::new()));
    assert_eq!(decode_context(&keys, 0, &[9, 1, 2], "b", b"k"), Err(ContextError::UnsupportedVersion(9)));
    assert!(matches!(decode_context(&keys, 0, &[2, 1, 2], "b", b"k"), Err(ContextError::Malformed(_))));
    let mut token = encode_context(&keys, &VersionVector::from_entries([(1, 2)]), "b", b"k").unwrap();
    token.push(0);
    assert_eq!(decode_context(&keys, 0, &token, "b", b"k"), Err(ContextError::BadSignature));
}

#[test]
fn delete_then_write_with_context_replaces_the_tombstone() {
    let mut o = Object::new();
    o.update(1, &VersionVector::new(), Content::Value(b"v".to_vec()), 1, "n").unwrap();
    let ctx = o.context().clone();
    o.update(1, &ctx, Content::Tombstone, 2, "n").unwrap();
    assert!(!o.is_found());
    assert_eq!(o.siblings().len(), 1);
    let ctx = o.context().clone();
    o.update(1, &ctx, Content::Value(b"w".to_vec()), 3, "n").unwrap();
    assert!(o.is_found());
    assert_eq!(o.siblings().len(), 1);
}

#[test]
fn update_counter_never_goes_backwards_behind_the_context() {
    // A context can carry a higher counter for this actor than the local copy
    // (the local copy missed writes); the new dot must still be fresh.
    let mut o = Object::new();
    let ctx = VersionVector::from_entries([(1, 5)]);
    let dot = o.update(1, &ctx, Content::Value(vec![]), 0, "n").unwrap();
    assert_eq!(dot, Dot { actor: 1, counter: 6 });
}

#[test]
fn an_exhausted_counter_is_an_error_not_a_wrap() {
    // A vector that claims u64::MAX writes of actor 1 (only a forged
    // context can bring that about) leaves actor 1 no next dot.
    let mut o = Object::new();
    o.update(2, &VersionVector::new(), Content::Value(b"v".to_vec()), 0, "n").unwrap();
    let forged = VersionVector::from_entries([(1, u64::MAX)]);
    let before = o.clone();
    assert_eq!(o.update(1, &forged, Content::Value(b"w".to_vec()), 0, "n"), Err(CounterOverflow));
    assert_eq!(o, before, "nothing changed");
    assert!(o.is_well_formed());
}

#[test]
fn a_context_naming_too_many_actors_is_refused_before_decoding() {
    // Even signed (a node never issues such a token), the count is checked
    // before the entries are decoded.
    let keys = KeySet::generate();
    let huge = VersionVector::from_entries((1..=200_000u64).map(|a| (a, 1)));
    let token = encode_context(&keys, &huge, "b", b"k").unwrap();
    assert_eq!(decode_context(&keys, 0, &token, "b", b"k"), Err(ContextError::TooManyActors(200_000)));
    let most = VersionVector::from_entries((1..=MAX_CONTEXT_ACTORS as u64).map(|a| (a, 1)));
    let token = encode_context(&keys, &most, "b", b"k").unwrap();
    assert_eq!(decode_context(&keys, 0, &token, "b", b"k"), Ok(most));
}

#[test]
fn merging_large_vectors_is_exact() {
    // Interleaved actors: merging by inserting one entry at a time shifted
    // the vector on every insert (quadratic). One pass is linear; this
    // checks its result at a size the quadratic merge could not finish.
    let a = VersionVector::from_entries((0..200_000u64).map(|i| (i * 2, 1)));
    let b = VersionVector::from_entries((0..200_000u64).map(|i| (i * 2 + 1, 2)));
    let mut m = a.clone();
    m.merge(&b);
    assert_eq!(m.entries().len(), 400_000);
    assert!(m.entries().windows(2).all(|w| w[0].0 < w[1].0));
    assert!(m.descends(&a) && m.descends(&b));
}
