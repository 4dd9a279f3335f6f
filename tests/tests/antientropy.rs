//! Anti-entropy in process: replicas that missed writes converge by
//! exchanging hash trees alone; a wiped node is refilled without any old
//! version shadowing a newer write; deleted keys stay deleted and their
//! tombstones go.

use std::collections::BTreeSet;
use std::sync::Arc;

use concord::causal::Object;
use concord::net::Fault;
use concord_client::{Context, ReadOptions, WriteOptions};
use concord_tests::{LocalCluster, eventually};

fn w(n: u32) -> WriteOptions {
    WriteOptions { w: n, ..Default::default() }
}

/// Whether every node's tree of every partition (n = 3) is the same.
fn trees_agree(cluster: &LocalCluster, nodes: &[usize]) -> bool {
    let partitions = cluster.node(nodes[0]).cluster().ring().partitions();
    (0..partitions).all(|p| {
        let first = cluster.node(nodes[0]).objects().segments(p, 3);
        nodes.iter().all(|i| cluster.node(*i).objects().segments(p, 3) == first)
    })
}

/// No hints, no read repair, and no exchange rounds but those the test
/// runs itself (`AntiEntropy::round`): what the lossy links dropped stays
/// missing however long the writes take.
fn aae_only(c: &mut concord::Config) {
    c.antientropy.enabled = false;
    c.antientropy.reap_after_secs = 2;
    c.handoff.enabled = false;
    c.read_repair = false;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_alone_makes_every_replica_identical() {
    let cluster = Arc::new(LocalCluster::start_with(3, |_, c| aae_only(c)).await.unwrap());
    // A third of n0's replica writes are lost; with w=1 each write is
    // acknowledged by n0 alone and nothing else repairs the others.
    for peer in [1, 2] {
        cluster.node(0).faults().set(cluster.addrs[peer], Fault::Lossy(33));
    }
    let c0 = cluster.client(0).await;
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let c0 = c0.clone();
            tokio::spawn(async move {
                for i in (t..20_000u32).step_by(8) {
                    let key = format!("k{i}");
                    c0.put_with("div", key.as_bytes(), key.as_bytes(), &Context::none(), w(1)).await.unwrap();
                }
            })
        })
        .collect();
    for t in writers {
        t.await.unwrap();
    }
    let missing = (0..20_000u32).filter(|i| cluster.local_copy(1, "div", format!("k{i}").as_bytes()).is_none()).count();
    assert!(missing > 1000, "the lossy links dropped writes: {missing} missing on n1");
    cluster.node(0).faults().clear_all();
    eventually(120, "every replica's trees agree", || async {
        for n in 0..3 {
            cluster.node(n).antientropy().round().await;
        }
        trees_agree(&cluster, &[0, 1, 2]) && cluster.node(1).antientropy().status().never_exchanged == 0
    })
    .await;
    for i in 0..20_000u32 {
        let key = format!("k{i}");
        let copies: Vec<Option<Object>> = (0..3).map(|n| cluster.local_copy(n, "div", key.as_bytes())).collect();
        assert!(copies[0].is_some() && copies.iter().all(|c| c == &copies[0]), "{key}: {copies:?}");
    }
    let repaired: u64 = (0..3).map(|n| cluster.node(n).antientropy().status().totals.keys_repaired).sum();
    assert!(repaired > 1000, "anti-entropy repaired {repaired} keys");
    Arc::into_inner(cluster).unwrap().shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_refilled_and_no_old_version_shadows_a_newer_write() {
    let mut cluster = LocalCluster::start_with(3, |_, c| c.antientropy.interval_secs = 1).await.unwrap();
    let c2 = cluster.client(2).await;
    for i in 0..300u32 {
        c2.put_with("wipe", format!("k{i}").as_bytes(), b"old", &Context::none(), w(3)).await.unwrap();
    }
    let actor_before = cluster.node(2).objects().actor();
    cluster.stop(2).await.unwrap();
    cluster.wipe(2).unwrap();
    cluster.restart(2).await.unwrap();
    cluster.wait_for_ring(3).await.unwrap();
    assert_ne!(cluster.node(2).objects().actor(), actor_before, "a wiped node takes a new incarnation");
    // Written through the wiped node, with what a read returns as context:
    // the new value supersedes the old one. Had the node kept its old actor,
    // its first new dot would equal the old value's dot on the other
    // replicas, and one of the two would vanish in a merge (Riak's kv679).
    let c2 = cluster.client(2).await;
    let r2 = ReadOptions { r: 2, ..Default::default() };
    for i in 0..20u32 {
        let key = format!("k{i}");
        let read = c2.get_with("wipe", key.as_bytes(), r2).await.unwrap();
        assert_eq!(read.values(), vec![&b"old"[..]]);
        c2.put_with("wipe", key.as_bytes(), b"new", &read.context, w(1)).await.unwrap();
    }
    eventually(60, "the wiped node is refilled", || async { trees_agree(&cluster, &[0, 1, 2]) }).await;
    for i in 0..300u32 {
        let key = format!("k{i}");
        let want: &[u8] = if i < 20 { b"new" } else { b"old" };
        for n in 0..3 {
            let copy = cluster.local_copy(n, "wipe", key.as_bytes()).unwrap_or_else(|| panic!("n{n} lacks {key}"));
            let values: Vec<&[u8]> = copy.live_siblings().filter_map(|s| s.content.value()).collect();
            assert_eq!(values, vec![want], "n{n} {key}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_keys_stay_deleted_and_their_tombstones_go_everywhere() {
    let cluster = LocalCluster::start_with(3, |_, c| {
        c.antientropy.interval_secs = 1;
        c.antientropy.reap_after_secs = 2;
    })
    .await
    .unwrap();
    let c0 = cluster.client(0).await;
    let mut contexts = Vec::new();
    for i in 0..100u32 {
        let put = c0.put_with("del", format!("k{i}").as_bytes(), b"v", &Context::none(), w(3)).await.unwrap();
        contexts.push(put.context);
    }
    cluster.isolate(2);
    let deleted: BTreeSet<u32> = (0..100).filter(|i| i % 2 == 0).collect();
    for i in &deleted {
        c0.delete_with("del", format!("k{i}").as_bytes(), &contexts[*i as usize], w(2)).await.unwrap();
    }
    // Deleting a key that never existed leaves a tombstone too, for now.
    c0.delete_with("del", b"never", &Context::none(), w(2)).await.unwrap();
    cluster.heal();
    eventually(90, "every tombstone is reaped on every replica", || async {
        (0..3).all(|n| cluster.node(n).objects().tombstone_count() == 0) && trees_agree(&cluster, &[0, 1, 2])
    })
    .await;
    let r3 = ReadOptions { r: 3, ..Default::default() };
    for i in 0..100u32 {
        let key = format!("k{i}");
        for n in 0..3 {
            let copy = cluster.local_copy(n, "del", key.as_bytes());
            if deleted.contains(&i) {
                assert!(copy.is_none(), "n{n} still holds {key}: {copy:?}");
            } else {
                assert!(copy.is_some_and(|c| c.is_found()), "n{n} lost {key}");
            }
        }
        let got = c0.get_with("del", key.as_bytes(), r3).await.unwrap();
        assert_eq!(got.found, !deleted.contains(&i), "{key}");
    }
    assert!((0..3).all(|n| cluster.local_copy(n, "del", b"never").is_none()));
    let reaped: u64 = (0..3).map(|n| cluster.node(n).antientropy().status().totals.reaped).sum();
    assert!(reaped >= 51, "the first replicas reaped the tombstones: {reaped}");
    cluster.shutdown().await;
}

/// A node that stops cleanly while some partitions' trees are still being
/// rebuilt saves only the trees it trusts; at the next (clean) start those
/// partitions are untrusted again and must be rebuilt then, or they take
/// no part in anti-entropy. Found by the simulation (`sim/`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_still_rebuilding_at_a_clean_stop_are_rebuilt_at_the_next_start() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    let c0 = cluster.client(0).await;
    for i in 0..300u32 {
        let key = format!("k{i}");
        c0.put_with("rebuild", key.as_bytes(), key.as_bytes(), &Context::none(), w(3)).await.unwrap();
    }
    // An unclean start (no CLEAN mark): every partition holding objects
    // starts untrusted, and the check that rebuilds them has barely begun
    // when the node stops again, cleanly.
    cluster.stop(0).await.unwrap();
    std::fs::remove_file(cluster.data_dir(0).join("CLEAN")).unwrap();
    cluster.restart(0).await.unwrap();
    cluster.stop(0).await.unwrap();
    cluster.restart(0).await.unwrap();
    eventually(120, "node 0 has rebuilt every partition's trees", || async {
        cluster.node(0).antientropy().status().rebuilding == 0
    })
    .await;
}
