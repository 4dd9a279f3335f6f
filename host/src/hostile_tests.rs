//! Hostile input for every decoder that reads bytes from a client, a peer
//! or disk: arbitrary bytes, and valid encodings with bytes changed, cut
//! or added. Each must answer with an error or a value that passes its own
//! checks; none may panic, loop or allocate past its stated bound.
//!
//! `cargo test` runs 2,000 cases per decoder (200 for plugin packages,
//! which are compiled); `CONCORD_FUZZ_CASES=N` runs N (N/10 for packages).
//!
//! The stated bound: decoding `n` bytes allocates at most [`BOUND_PER_BYTE`]
//! × `n` + [`BOUND_FIXED`] bytes in all (the fixed part covers serde's
//! cautious preallocation, up to 1 MiB for a sequence whose length the
//! input claims). A counting allocator measures every decode below; plugin
//! packages are compiled, not just decoded, and are not measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use concord_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;

use crate::buckets::{BucketProps, Buckets};
use crate::causal::{Content, Object, VersionVector, decode_context, encode_context};
use crate::security::{KeySet, Keyring};
use crate::storage::MemStore;

/// Counts the bytes each thread allocates (every allocation, never
/// subtracting frees), for [`bounded`].
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // Never panics, not even while the thread's locals are torn down.
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counter is a const-initialised thread-local without a destructor, which
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Bytes of allocation allowed per input byte.
const BOUND_PER_BYTE: usize = 64;
/// Bytes of allocation allowed whatever the input.
const BOUND_FIXED: usize = 4 << 20;

/// Runs `decode` on `input`, failing the case if it allocated more than
/// the stated bound for `input`'s length.
fn bounded<T>(input: &[u8], decode: impl FnOnce(&[u8]) -> T) -> Result<T, TestCaseError> {
    let before = ALLOCATED.with(Cell::get);
    let out = decode(input);
    let used = ALLOCATED.with(Cell::get) - before;
    let bound = BOUND_PER_BYTE * input.len() + BOUND_FIXED;
    prop_assert!(used <= bound, "decoding {} bytes allocated {used} bytes, over the bound of {bound}", input.len());
    Ok(out)
}

#[test]
fn the_allocation_counter_counts() {
    let (v, used) = {
        let before = ALLOCATED.with(Cell::get);
        let v = vec![0u8; 10_000];
        (v, ALLOCATED.with(Cell::get) - before)
    };
    assert!(used >= 10_000 && v.len() == 10_000, "{used}");
    assert!(bounded(&[], |_| vec![0u8; BOUND_FIXED + 1]).is_err(), "past the bound fails the case");
}

fn cases(scale: u32) -> ProptestConfig {
    let n = std::env::var("CONCORD_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000u32);
    ProptestConfig { cases: (n / scale).max(1), ..ProptestConfig::default() }
}

/// A valid encoding changed in one of four ways.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(prop::sample::Index, u8),
    Cut(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    Splice(prop::sample::Index, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Cut),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Splice(i, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, m: &Mutation) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    match m {
        Mutation::Flip(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        Mutation::Cut(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Insert(i, b) => {
            let i = i.index(bytes.len());
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Splice(i, b) => {
            let i = i.index(bytes.len());
            let end = (i + b.len()).min(bytes.len());
            bytes.splice(i..end, b.iter().copied());
        }
    }
    bytes
}

fn sample_object(values: &[Vec<u8>]) -> Object {
    let mut o = Object::new();
    for (i, v) in values.iter().enumerate() {
        o.update(i as u64 + 1, &VersionVector::new(), Content::Value(v.clone()), i as u64, "n").unwrap();
    }
    o
}

proptest! {
    #![proptest_config(cases(1))]

    #[test]
    fn context_tokens(bytes in prop::collection::vec(any::<u8>(), 0..256), m in mutation()) {
        let keys = KeySet::generate();
        let _ = bounded(&bytes, |b| decode_context(&keys, 0, b, "b", b"k"))?;
        let vv = VersionVector::from_entries([(3, 4), (9, 1)]);
        let token = encode_context(&keys, &vv, "b", b"k").unwrap();
        let changed = mutate(token.clone(), &m);
        let decoded = bounded(&changed, |b| decode_context(&keys, 0, b, "b", b"k"))?;
        // Only the empty token (no context) or the token itself decode.
        prop_assert!(decoded.is_err() || changed == token || changed.is_empty(), "{:?}", decoded);
    }

    #[test]
    fn stored_objects(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..32), 1..4), m in mutation()) {
        let bytes = crate::storage::codec::encode_object(&sample_object(&values));
        if let Ok(o) = bounded(&mutate(bytes, &m), crate::storage::codec::decode_object)? {
            prop_assert!(o.is_well_formed());
        }
    }

    #[test]
    fn rings(members in 1usize..5, m in mutation(), garbage in prop::collection::vec(any::<u8>(), 0..128)) {
        let mut ring = crate::ring::Ring::single("n0", "z", 16);
        let desired = (0..members).map(|i| (format!("n{i}"), crate::ring::Member { zone: "z".into() })).collect();
        ring = ring.claim(&desired, "n0");
        let bytes = crate::cluster::encode_ring(&ring);
        for input in [mutate(bytes, &m), garbage] {
            if let Ok(r) = bounded(&input, crate::cluster::decode_ring)? {
                prop_assert!(r.check().is_ok());
            }
        }
    }

    #[test]
    fn bucket_tables(m in mutation(), garbage in prop::collection::vec(any::<u8>(), 0..128)) {
        let store: Arc<dyn crate::storage::Store> = Arc::new(MemStore::new());
        let source = Buckets::load(Arc::clone(&store), BucketProps::default(), "n0").unwrap();
        source.set("carts", crate::buckets::BucketChange { n: Some(2), ..Default::default() }).unwrap();
        let target = Buckets::load(Arc::new(MemStore::new()), BucketProps::default(), "n1").unwrap();
        for input in [mutate(source.export(), &m), garbage] {
            let _ = bounded(&input, |b| target.import(b, |_| true))?;
            // Whatever was taken is a valid bucket.
            for (name, props) in target.list() {
                prop_assert!(props.validate().is_ok(), "{} was imported invalid", name);
            }
        }
    }

    #[test]
    fn internal_batches(bytes in prop::collection::vec(any::<u8>(), 0..256), m in mutation()) {
        // What a replica call carries: protobuf, then per item a key and an
        // object encoding, each checked before use.
        let valid = pb::ReplicaWriteRequest {
            writes: vec![pb::ReplicaWrite {
                key: Some(pb::ObjectKey { bucket: "b".into(), key: b"k".to_vec().into() }),
                object: crate::storage::codec::encode_object(&sample_object(&[b"v".to_vec()])).into(),
                hint_for: String::new(),
            }],
            ring_epoch: 3,
            background: false,
        }
        .encode_to_vec();
        for input in [bytes, mutate(valid, &m)] {
            if let Ok(req) = bounded(&input, |mut b| pb::ReplicaWriteRequest::decode(&mut b))? {
                for w in req.writes {
                    if let Ok(o) = bounded(&w.object, crate::storage::codec::decode_object)? {
                        prop_assert!(o.is_well_formed());
                    }
                    if let Some(k) = w.key {
                        let _ = crate::api::check_object(&k.bucket, &k.key);
                    }
                }
            }
            if let Ok(req) = bounded(&input, |mut b| pb::ExchangeObjectsRequest::decode(&mut b))? {
                for o in req.objects {
                    let _ = crate::antientropy::exchange::checked_key(o.key.to_vec(), 0, 64);
                    let _ = bounded(&o.object, crate::storage::codec::decode_object)?;
                }
            }
        }
    }

    #[test]
    fn hints_and_trees(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = bounded(&bytes, crate::handoff::hint::Hint::decode)?;
        let _ = bounded(&bytes, crate::handoff::hint::HintKey::decode)?;
        let _ = bounded(&bytes, crate::antientropy::tree::Segments::decode)?;
    }

    #[test]
    fn gossip_values(s in ".{0,256}", ranges in prop::collection::vec((any::<u32>(), any::<u32>()), 0..32)) {
        // Values other nodes put in gossip: partition sets, key digests,
        // statuses. Bounded and never panicking.
        prop_assert!(bounded(s.as_bytes(), |_| crate::handoff::transfer::decode_partitions(&s))?.len() <= 65_536);
        let crafted: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let crafted = crafted.join(",");
        let decoded = bounded(crafted.as_bytes(), |_| crate::handoff::transfer::decode_partitions(&crafted))?;
        prop_assert!(decoded.len() <= 65_536);
        let digests = crate::cluster::membership::MetaDigests { keys: s.clone(), ..Default::default() };
        let _ = digests.newest_key();
        let _ = crate::cluster::Status::parse(&s);
    }

    #[test]
    fn cluster_keys_and_peer_credentials(s in ".{0,256}", m in mutation()) {
        let keys = KeySet::generate();
        let _ = bounded(s.as_bytes(), |_| KeySet::import(&s))?;
        let changed = mutate(keys.encode(), &m);
        if let Ok(k) = bounded(&changed, KeySet::decode)? {
            prop_assert!(!k.is_empty() && k.ids().len() <= crate::security::keys::MAX_KEYS);
        }
        let ring = Keyring::in_memory(keys);
        prop_assert!(!crate::net::check_peer_credential(&ring, s.as_bytes(), 0) || s.contains('.'));
        let good = crate::net::peer_credential(&ring).unwrap();
        let bad = mutate(good.as_bytes().to_vec(), &m);
        prop_assert!(bad == good.as_bytes() || !crate::net::check_peer_credential(&ring, &bad, 0));
    }
}

proptest! {
    #![proptest_config(cases(10))]

    #[test]
    fn plugin_packages(m in mutation(), garbage in prop::collection::vec(any::<u8>(), 0..512)) {
        let valid = crate::plugins::package::tests::resolver_importing("wasi:random@0.2.3", "random");
        for input in [mutate(valid, &m), garbage] {
            // Refused with a message, or accepted as a well-formed package.
            let _ = crate::plugins::package::prepare(&input);
        }
    }
}
