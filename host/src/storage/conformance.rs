//! The conformance suite every [`Store`] must pass.
//!
//! An engine's test calls [`run`] with a function that opens the engine on
//! the same data each time it is called. Between calls the suite drops the
//! previous handle, so `open` may take an exclusive lock. With `persistent`
//! set, the suite also checks that flushed data survives a reopen.

use std::sync::Arc;

use super::{Space, Store};

/// Runs every check against the engine `open` returns. Panics on the first
/// broken invariant, naming it.
pub fn run<S: Store, F: Fn() -> S>(open: F, persistent: bool) {
    {
        let store = open();
        missing_keys_read_as_none(&store);
        insert_overwrite_remove(&store);
        spaces_are_isolated(&store);
        scan_is_ordered_and_bounded(&store);
        clear_touches_one_space(&store);
        binary_keys_and_large_values(&store);
        batches_apply_in_order(&store);
        store.flush().expect("flush");
    }
    if persistent {
        flushed_data_survives_reopen(&open);
    }
    concurrent_writers_all_land(open());
}

fn missing_keys_read_as_none(s: &impl Store) {
    assert_eq!(s.get(Space::Partition(1), b"never-written").unwrap(), None, "absent key must read as None");
    s.remove(Space::Partition(1), b"never-written").expect("removing an absent key is not an error");
}

fn insert_overwrite_remove(s: &impl Store) {
    let sp = Space::Partition(2);
    s.insert(sp, b"k", b"v1").unwrap();
    assert_eq!(s.get(sp, b"k").unwrap().as_deref(), Some(&b"v1"[..]), "read after insert");
    s.insert(sp, b"k", b"v2").unwrap();
    assert_eq!(s.get(sp, b"k").unwrap().as_deref(), Some(&b"v2"[..]), "insert must replace");
    s.remove(sp, b"k").unwrap();
    assert_eq!(s.get(sp, b"k").unwrap(), None, "read after remove");
}

fn spaces_are_isolated(s: &impl Store) {
    let spaces = [
        Space::Partition(3),
        Space::Partition(4),
        Space::LegacyPartition(3),
        Space::Meta,
        Space::Hints,
        Space::Plugins,
    ];
    for (i, sp) in spaces.iter().enumerate() {
        s.insert(*sp, b"shared-key", &[i as u8]).unwrap();
    }
    for (i, sp) in spaces.iter().enumerate() {
        assert_eq!(s.get(*sp, b"shared-key").unwrap(), Some(vec![i as u8]), "space {sp:?} saw another space's value");
    }
}

fn scan_is_ordered_and_bounded(s: &impl Store) {
    let sp = Space::Partition(5);
    for k in [&b"b"[..], b"a", b"c\x00", b"c", b"\xff", b"\x00"] {
        s.insert(sp, k, k).unwrap();
    }
    let keys = |after: Option<&[u8]>, limit| -> Vec<Vec<u8>> {
        s.scan(sp, after, limit)
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(k, v, "scan must pair keys with their values");
                k
            })
            .collect()
    };
    let all: Vec<Vec<u8>> = [&b"\x00"[..], b"a", b"b", b"c", b"c\x00", b"\xff"].iter().map(|k| k.to_vec()).collect();
    assert_eq!(keys(None, 100), all, "scan must return every key in byte order");
    assert_eq!(keys(None, 2), all[..2].to_vec(), "scan must honour the limit");
    assert_eq!(keys(Some(b"c"), 100), all[4..].to_vec(), "scan must start strictly after `after`");
    assert_eq!(keys(Some(b"\xff"), 100), Vec::<Vec<u8>>::new());
    assert!(s.scan(Space::Partition(6), None, 10).unwrap().is_empty(), "an unused space scans empty");
}

fn clear_touches_one_space(s: &impl Store) {
    s.insert(Space::Partition(7), b"x", b"1").unwrap();
    s.insert(Space::Partition(8), b"x", b"2").unwrap();
    s.clear(Space::Partition(7)).unwrap();
    assert_eq!(s.get(Space::Partition(7), b"x").unwrap(), None, "clear must empty the space");
    assert_eq!(s.get(Space::Partition(8), b"x").unwrap(), Some(b"2".to_vec()), "clear must not touch other spaces");
}

fn batches_apply_in_order(s: &impl Store) {
    let sp = Space::Partition(12);
    s.insert(sp, b"gone", b"x").unwrap();
    s.apply(
        sp,
        &[
            (b"a", Some(b"1")),
            (b"gone", None),
            (b"b", Some(b"2")),
            (b"b", Some(b"3")),
            (b"c", Some(b"4")),
            (b"c", None),
        ],
    )
    .unwrap();
    let all = s.scan(sp, None, 10).unwrap();
    assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"3".to_vec())], "a batch applies in order");
    assert_eq!(s.get(Space::LegacyPartition(12), b"a").unwrap(), None, "a batch touches one space");
}

fn binary_keys_and_large_values(s: &impl Store) {
    let sp = Space::Partition(9);
    let key: Vec<u8> = (0..=255u8).collect();
    let value: Vec<u8> = (0..400_000u32).map(|i| (i * 31 % 251) as u8).collect();
    s.insert(sp, &key, &value).unwrap();
    assert_eq!(s.get(sp, &key).unwrap(), Some(value), "large values must round-trip byte for byte");
}

fn flushed_data_survives_reopen<S: Store>(open: &impl Fn() -> S) {
    {
        let s = open();
        s.insert(Space::Partition(10), b"durable", b"yes").unwrap();
        s.insert(Space::Meta, b"m", b"meta").unwrap();
        s.flush().unwrap();
    }
    let s = open();
    assert_eq!(s.get(Space::Partition(10), b"durable").unwrap(), Some(b"yes".to_vec()), "flushed data lost on reopen");
    assert_eq!(s.get(Space::Meta, b"m").unwrap(), Some(b"meta".to_vec()), "flushed metadata lost on reopen");
    assert_eq!(s.get(Space::Partition(2), b"k").unwrap(), None, "removed key came back after reopen");
}

fn concurrent_writers_all_land<S: Store>(s: S) {
    let s = Arc::new(s);
    let threads: Vec<_> = (0..8u8)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..200u32 {
                    let key = [&[t][..], &i.to_be_bytes()].concat();
                    s.insert(Space::Partition(11), &key, &key).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let all = s.scan(Space::Partition(11), None, 10_000).unwrap();
    assert_eq!(all.len(), 8 * 200, "concurrent inserts went missing");
}
