//! Surviving failures, in process: hints for replicas that missed writes,
//! sloppy quorum with fallbacks, complete read repair, a stalled local disk,
//! and a node that must not serve before it has met its cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use concord::causal::{Content, Object, VersionVector};
use concord::net::Fault;
use concord_client::{Client, ClientError, Consistency, Context, ReadOptions, SetBucketRequest, WriteOptions};
use concord_proto::v1 as pb;
use concord_tests::{LocalCluster, eventually, free_port, plugins};

fn w(n: u32) -> WriteOptions {
    WriteOptions { w: n, ..Default::default() }
}

/// Waits until no running node holds a hint.
async fn hints_drain(cluster: &LocalCluster, nodes: &[usize], secs: u64) {
    eventually(secs, "every hint is delivered", || async {
        nodes.iter().all(|i| cluster.node(*i).handoff().hints().total() == 0)
    })
    .await;
}

/// Waits until node `i` sees node `j` as `status` ("up" or "down").
async fn sees(cluster: &LocalCluster, i: usize, j: usize, status: &str) {
    let id = format!("n{j}");
    eventually(20, &format!("n{i} sees {id} {status}"), || async {
        cluster.node(i).cluster().status().nodes.iter().any(|n| n.node_id == id && n.status == status)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_replica_catches_up_through_hints() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let c0 = cluster.client(0).await;
    cluster.isolate(2);
    let mut acked = BTreeMap::new();
    let mut deleted = BTreeSet::new();
    for i in 0..60u32 {
        let key = format!("k{i}");
        let put = c0.put_with("iso", key.as_bytes(), key.as_bytes(), &Context::none(), w(2)).await.unwrap();
        assert!(!put.acked_by.contains(&"n2".to_owned()), "the isolated node acked: {:?}", put.acked_by);
        acked.insert(key.clone(), put.context);
        if i % 5 == 0 {
            c0.delete_with("iso", key.as_bytes(), &acked[&key], w(2)).await.unwrap();
            deleted.insert(key);
        }
    }
    // The writes that missed n2 wait on n0 (the coordinator of each).
    eventually(10, "n0 keeps hints for n2", || async {
        cluster.node(0).handoff().status().iter().any(|q| q.target == "n2" && q.stats.count > 0)
    })
    .await;
    let status = c0.cluster_status().await.unwrap();
    assert!(status.hints.iter().any(|h| h.target == "n2" && h.count > 0), "{:?}", status.hints);
    cluster.heal();
    sees(&cluster, 0, 2, "up").await;
    hints_drain(&cluster, &[0, 1, 2], 30).await;
    // Every replica holds the same objects: nothing acknowledged is missing,
    // and no deleted key is back.
    for key in acked.keys() {
        let copies: Vec<Option<Object>> = (0..3).map(|i| cluster.local_copy(i, "iso", key.as_bytes())).collect();
        assert!(copies.iter().all(|c| c == &copies[0]), "{key}: replicas differ: {copies:?}");
        let copy = copies[0].as_ref().expect("every replica has the key");
        assert_eq!(copy.is_found(), !deleted.contains(key), "{key}");
        if !deleted.contains(key) {
            let values: Vec<&[u8]> = copy.live_siblings().filter_map(|s| s.content.value()).collect();
            assert_eq!(values, vec![key.as_bytes()], "{key}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_stand_in_for_down_replicas_and_hand_the_writes_back() {
    let mut cluster = LocalCluster::start(4).await.unwrap();
    // Keys whose three replicas are n1, n2 and n3: n0 is the only node
    // that can stand in for them.
    let ring = cluster.node(0).cluster().ring();
    let keys: Vec<String> = (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| {
            let mut r = ring.preference_list(ring.partition_of("sl", k.as_bytes()), 3);
            r.sort();
            r == ["n1", "n2", "n3"]
        })
        .take(10)
        .collect();
    cluster.stop(2).await.unwrap();
    cluster.stop(3).await.unwrap();
    sees(&cluster, 0, 2, "down").await;
    sees(&cluster, 0, 3, "down").await;
    sees(&cluster, 1, 2, "down").await;
    sees(&cluster, 1, 3, "down").await;
    let c0 = cluster.client(0).await;
    for key in &keys {
        let put = c0.put_with("sl", key.as_bytes(), b"v", &Context::none(), w(2)).await.unwrap();
        assert!(put.sloppy, "{key}: {put:?}");
        assert_eq!(put.acked_by.len(), 2, "{put:?}");
        assert_eq!(put.fallbacks.len(), 1, "{put:?}");
        assert_eq!(put.fallbacks[0].0, "n0", "n0 stands in: {put:?}");
        // A sloppy read finds the write on the fallback too.
        let got = c0.get_with("sl", key.as_bytes(), ReadOptions { r: 2, ..Default::default() }).await.unwrap();
        assert_eq!(got.values(), vec![&b"v"[..]]);
    }
    // pw counts the key's own replicas only.
    let pw2 = WriteOptions { w: 2, pw: 2, timeout: Some(Duration::from_millis(1500)), ..Default::default() };
    let e = c0.put_with("sl", keys[0].as_bytes(), b"x", &Context::none(), pw2).await.unwrap_err();
    let ClientError::Unavailable(msg) = &e else { panic!("expected UNAVAILABLE, got {e}") };
    assert!(msg.contains("pw=2 needs answers from the key's own replicas and 1 came from them"), "{msg}");
    // Sloppy quorum turned off for the request: only one replica is up.
    let strict =
        WriteOptions { w: 2, sloppy: Some(false), timeout: Some(Duration::from_millis(1500)), ..Default::default() };
    let e = c0.put_with("sl", keys[0].as_bytes(), b"y", &Context::none(), strict).await.unwrap_err();
    assert!(matches!(&e, ClientError::Unavailable(m) if m.contains("write needed 2 of 3 replicas, 1 answered")), "{e}");

    cluster.restart(2).await.unwrap();
    cluster.restart(3).await.unwrap();
    cluster.wait_for_ring(4).await.unwrap();
    hints_drain(&cluster, &[0, 1, 2, 3], 30).await;
    for key in &keys {
        assert!(cluster.local_copy(0, "sl", key.as_bytes()).is_none(), "the fallback keeps no copy of {key}");
        for i in 1..4 {
            let copy = cluster.local_copy(i, "sl", key.as_bytes()).unwrap_or_else(|| panic!("n{i} lacks {key}"));
            let values: Vec<&[u8]> = copy.live_siblings().filter_map(|s| s.content.value()).collect();
            assert!(values.contains(&&b"v"[..]), "n{i}: {key}: {values:?}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_both_sides_of_a_partition_keep_every_sibling() {
    // A resolver call gets all the time a busy machine may need.
    let cluster = LocalCluster::start_with(3, |_, c| c.plugins.deadline_ms = 10_000).await.unwrap();
    let (c0, c2) = (cluster.client(0).await, cluster.client(2).await);
    let wasm = std::fs::read(plugins::CART).unwrap();
    c0.admin()
        .deploy_plugin(pb::DeployPluginRequest {
            name: "cart".into(),
            version: "1".into(),
            wasm: wasm.into(),
            force: true,
            ..Default::default()
        })
        .await
        .unwrap();
    c0.set_bucket(SetBucketRequest { name: "carts".into(), resolver: Some("cart@1".into()), ..Default::default() })
        .await
        .unwrap();
    for i in 0..3 {
        let c = cluster.client(i).await;
        eventually(30, "the cart binding reaches every node", || async {
            c.get_bucket("carts").await.is_ok_and(|b| b.resolver == "cart@1")
        })
        .await;
    }
    cluster.isolate(2);
    let one = WriteOptions { w: 1, timeout: Some(Duration::from_secs(1)), ..Default::default() };
    for k in 0..5 {
        let key = format!("k{k}");
        for i in 0..4 {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            c0.put_with("sib", key.as_bytes(), a.as_bytes(), &Context::none(), w(2)).await.unwrap();
            c2.put_with("sib", key.as_bytes(), b.as_bytes(), &Context::none(), one).await.unwrap();
            let (ca, cb) = (format!(r#"{{"items":{{"{a}":1}}}}"#), format!(r#"{{"items":{{"{b}":1}}}}"#));
            c0.put_with("carts", key.as_bytes(), ca.as_bytes(), &Context::none(), w(2)).await.unwrap();
            c2.put_with("carts", key.as_bytes(), cb.as_bytes(), &Context::none(), one).await.unwrap();
        }
    }
    cluster.heal();
    sees(&cluster, 0, 2, "up").await;
    sees(&cluster, 2, 0, "up").await;
    hints_drain(&cluster, &[0, 1, 2], 30).await;
    let all = ReadOptions { consistency: Consistency::All, ..Default::default() };
    for k in 0..5 {
        let key = format!("k{k}");
        let want: BTreeSet<String> = (0..4).flat_map(|i| [format!("a{i}"), format!("b{i}")]).collect();
        for i in 0..3 {
            let c = cluster.client(i).await;
            let got = c.get_with("sib", key.as_bytes(), all).await.unwrap();
            let values: BTreeSet<String> =
                got.values().iter().map(|v| String::from_utf8(v.to_vec()).unwrap()).collect();
            assert_eq!(values, want, "n{i} {key}: every sibling from both sides");
            let cart = c.get_with("carts", key.as_bytes(), all).await.unwrap();
            assert_eq!(cart.values().len(), 1, "resolved: {cart:?}");
            let items: serde_json::Value = serde_json::from_slice(cart.values()[0]).unwrap();
            let items: BTreeSet<String> = items["items"].as_object().unwrap().keys().cloned().collect();
            assert_eq!(items, want, "n{i} {key}: the cart keeps every item");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_merged_past_their_budget_travel_with_other_keys_and_shrink_on_the_next_write() {
    // Pages of 128 hints: one page holds more than a peer message carries,
    // so delivery must split it by bytes.
    let cluster = LocalCluster::start_with(3, |_, c| c.handoff.batch = 128).await.unwrap();
    let (c0, c2) = (cluster.client(0).await, cluster.client(2).await);
    let big = SetBucketRequest {
        name: "big".into(),
        max_object_bytes: Some(1 << 20),
        max_siblings: Some(16),
        ..Default::default()
    };
    c0.set_bucket(big).await.unwrap();
    c0.set_bucket(SetBucketRequest { name: "crowded".into(), max_siblings: Some(4), ..Default::default() })
        .await
        .unwrap();
    for i in 0..3 {
        let c = cluster.client(i).await;
        eventually(30, "the buckets reach every node", || async {
            c.get_bucket("big").await.is_ok_and(|b| b.max_object_bytes == 1 << 20)
                && c.get_bucket("crowded").await.is_ok_and(|b| b.max_siblings == 4)
        })
        .await;
    }
    cluster.isolate(2);
    let one = WriteOptions { w: 1, timeout: Some(Duration::from_secs(5)), ..Default::default() };
    // Both sides fill three keys to their sibling budget.
    let crowded: Vec<String> = (0..3).map(|k| format!("c{k}")).collect();
    for key in &crowded {
        for i in 0..4 {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            c0.put_with("crowded", key.as_bytes(), a.as_bytes(), &Context::none(), w(2)).await.unwrap();
            c2.put_with("crowded", key.as_bytes(), b.as_bytes(), &Context::none(), one).await.unwrap();
        }
    }
    // And n0 keeps 70 MiB of other writes for n2. (W=1: on a busy machine
    // this much traffic can make n0 think n1 is down for a moment.)
    let value = |i: u32| vec![i as u8; (1 << 20) - 16];
    for i in 0..70u32 {
        c0.put_with("big", format!("k{i}").as_bytes(), &value(i), &Context::none(), one).await.unwrap();
    }
    cluster.heal();
    sees(&cluster, 0, 2, "up").await;
    sees(&cluster, 2, 0, "up").await;
    hints_drain(&cluster, &[0, 1, 2], 120).await;
    for i in 0..70u32 {
        let key = format!("k{i}");
        let copy = cluster.local_copy(2, "big", key.as_bytes()).unwrap_or_else(|| panic!("n2 lacks {key}"));
        let values: Vec<&[u8]> = copy.live_siblings().filter_map(|s| s.content.value()).collect();
        assert_eq!(values, vec![&value(i)[..]], "{key}");
    }
    let all = ReadOptions { consistency: Consistency::All, ..Default::default() };
    let want: BTreeSet<String> = (0..4).flat_map(|i| [format!("a{i}"), format!("b{i}")]).collect();
    for key in &crowded {
        // Merged past the budget, every replica keeps every sibling.
        let copies: Vec<Option<Object>> = (0..3).map(|i| cluster.local_copy(i, "crowded", key.as_bytes())).collect();
        assert!(copies.iter().all(|c| c == &copies[0]), "{key}: replicas differ: {copies:?}");
        let got = c0.get_with("crowded", key.as_bytes(), all).await.unwrap();
        let values: BTreeSet<String> = got.values().iter().map(|v| String::from_utf8(v.to_vec()).unwrap()).collect();
        assert_eq!(values, want, "{key}: every sibling from both sides");
        // A blind write would add a ninth: refused, with what to merge.
        let e = c0.put_with("crowded", key.as_bytes(), b"blind", &Context::none(), w(2)).await.unwrap_err();
        assert!(matches!(&e, ClientError::SiblingLimit { limit: 4, .. }), "{e}");
        // A write with the read's context brings the key back under it.
        c0.put_with("crowded", key.as_bytes(), b"merged", &got.context, w(2)).await.unwrap();
        eventually(30, &format!("every replica of {key} holds only the merged value"), || async {
            (0..3).all(|i| {
                cluster.local_copy(i, "crowded", key.as_bytes()).is_some_and(|copy| {
                    copy.live_siblings().filter_map(|s| s.content.value()).collect::<Vec<_>>() == [&b"merged"[..]]
                })
            })
        })
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_too_large_to_merge_is_named_and_holds_up_no_other_key() {
    let cluster = LocalCluster::start(1).await.unwrap();
    let node = cluster.node(0);
    let mut peer = concord_tests::peer_client(cluster.addrs[0], std::sync::Arc::clone(node.cluster().keys()))
        .await
        .unwrap()
        .max_decoding_message_size(concord::net::MAX_PEER_MESSAGE_BYTES)
        .max_encoding_message_size(concord::net::MAX_PEER_MESSAGE_BYTES);
    // Two writers' versions of "k", each 33 MiB: merged they would pass the
    // 56 MiB a node keeps for one key.
    let big = |actor: u64, fill: u8| {
        let mut o = Object::new();
        o.update(actor, &VersionVector::new(), Content::Value(vec![fill; 33 << 20]), 1, "w").unwrap();
        concord::storage::codec::encode_object(&o)
    };
    let small = concord::storage::codec::encode_object(&{
        let mut o = Object::new();
        o.update(9, &VersionVector::new(), Content::Value(b"v".to_vec()), 1, "w").unwrap();
        o
    });
    let key = |k: &str| Some(pb::ObjectKey { bucket: "b".into(), key: k.as_bytes().to_vec().into() });
    let write = |k: &str, object: &[u8]| pb::ReplicaWrite {
        key: key(k),
        object: object.to_vec().into(),
        hint_for: String::new(),
    };
    let writes = |w: Vec<pb::ReplicaWrite>| pb::ReplicaWriteRequest { writes: w, ring_epoch: 0, background: false };

    let first = peer.replica_write(writes(vec![write("k", &big(1, 1)), write("s", &small)])).await.unwrap();
    assert!(first.get_ref().results.iter().all(|r| r.error.is_empty()), "{:?}", first.get_ref().results);
    let second = peer.replica_write(writes(vec![write("k", &big(2, 2)), write("t", &small)])).await.unwrap();
    let r = &second.get_ref().results;
    assert!(r[0].too_large && r[0].error.contains("56 MiB"), "{:?}", r[0]);
    assert!(r[1].error.is_empty() && !r[1].too_large, "the other key in the batch is merged: {:?}", r[1]);
    assert_eq!(cluster.local_copy(0, "b", b"k").unwrap().siblings().len(), 1, "the copy is as it was");
    assert!(cluster.local_copy(0, "b", b"t").is_some());

    // A reply with no room left for the large key says so; asked for
    // alone, it comes whole.
    let read = |keys: &[&str]| pb::ReplicaReadRequest {
        keys: keys.iter().map(|k| key(k).unwrap()).collect(),
        ring_epoch: 0,
        hint_for: vec![],
    };
    let both = peer.replica_read(read(&["s", "k"])).await.unwrap().into_inner().results;
    assert!(both[0].error.is_empty() && !both[0].object.is_empty(), "{:?}", both[0].error);
    assert!(both[1].reply_full && both[1].object.is_empty(), "{:?}", both[1].error);
    let alone = peer.replica_read(read(&["k"])).await.unwrap().into_inner().results;
    assert!(alone[0].error.is_empty() && alone[0].object.len() > 33 << 20);

    // Anti-entropy and transfers: the refused key is named, the others in
    // the call are merged, and the call itself succeeds.
    let partitions = node.cluster().ring().partitions();
    let p = concord::ring::partition_of("b", b"k", partitions);
    let other = (0..)
        .map(|i| format!("o{i}"))
        .find(|o| concord::ring::partition_of("b", o.as_bytes(), partitions) == p)
        .unwrap();
    let stored = |k: &str, object: Vec<u8>| pb::StoredObject {
        key: concord::storage::StoreKey::new("b", k.as_bytes()).into_bytes().into(),
        object: object.into(),
    };
    for transfer in [false, true] {
        let req = pb::ExchangeObjectsRequest {
            tree: Some(concord::antientropy::exchange::tree_id(p, 3)),
            objects: vec![stored("k", big(3, 3)), stored(&other, small.clone())],
            want: vec![],
            transfer,
            ring_epoch: 0,
        };
        let resp = peer.exchange_objects(req).await.unwrap().into_inner();
        let named: Vec<Vec<u8>> = resp.refused.iter().map(|k| k.to_vec()).collect();
        assert_eq!(named, vec![concord::storage::StoreKey::new("b", b"k").into_bytes()], "transfer: {transfer}");
        assert!(cluster.local_copy(0, "b", other.as_bytes()).is_some(), "transfer: {transfer}");
    }
    assert_eq!(cluster.local_copy(0, "b", b"k").unwrap().siblings().len(), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_repairs_every_replica_including_late_and_empty_ones() {
    // No hints here: read repair alone must bring the replicas together.
    let cluster = LocalCluster::start_with(3, |_, c| c.handoff.enabled = false).await.unwrap();
    let c0 = cluster.client(0).await;
    let all3 = w(3);
    c0.put_with("rr", b"late", b"v1", &Context::none(), all3).await.unwrap();
    // n2 alone holds a second sibling; n2 alone lacks "empty".
    let n2 = cluster.node(2);
    let p_late = n2.cluster().ring().partition_of("rr", b"late");
    n2.objects().update(p_late, "rr", b"late", &VersionVector::new(), Content::Value(b"v2".to_vec()), 1, 32).unwrap();
    for i in [0, 1] {
        let node = cluster.node(i);
        let p = node.cluster().ring().partition_of("rr", b"empty");
        let mut o = Object::new();
        o.update(7, &VersionVector::new(), Content::Value(b"e".to_vec()), 1, "n0").unwrap();
        node.objects().merge(p, "rr", b"empty", &o).unwrap();
    }
    // n2 answers n0 last.
    cluster.node(0).faults().set(cluster.addrs[2], Fault::Delay(Duration::from_millis(300)));
    let r2 = ReadOptions { r: 2, ..Default::default() };
    let got = c0.get_with("rr", b"late", r2).await.unwrap();
    assert_eq!(got.values(), vec![&b"v1"[..]], "the reply merged the first two answers");
    let got = c0.get_with("rr", b"empty", r2).await.unwrap();
    assert_eq!(got.values(), vec![&b"e"[..]]);
    // After the reply, n2's late answers are merged and every replica gets
    // what any of them held.
    eventually(10, "the late sibling reaches n0 and n1", || async {
        [0, 1].iter().all(|i| cluster.local_copy(*i, "rr", b"late").is_some_and(|o| o.siblings().len() == 2))
    })
    .await;
    eventually(10, "the replica that had nothing is repaired", || async {
        cluster.local_copy(2, "rr", b"empty").is_some_and(|o| o.is_found())
    })
    .await;
    let copies: Vec<_> = (0..3).map(|i| cluster.local_copy(i, "rr", b"late")).collect();
    assert!(copies.iter().all(|c| c == &copies[0]), "{copies:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_local_disk_does_not_hold_up_a_quorum() {
    let cluster =
        LocalCluster::start_with(3, |_, c| c.durability = concord::storage::DurabilityMode::Fsync).await.unwrap();
    let c0 = cluster.client(0).await;
    cluster.node(0).objects().durability().delay_flushes(Duration::from_secs(4));
    let opts = WriteOptions { w: 2, timeout: Some(Duration::from_secs(3)), ..Default::default() };
    for i in 0..3u32 {
        let key = format!("k{i}");
        let put = c0.put_with("stall", key.as_bytes(), b"v", &Context::none(), opts).await.unwrap();
        let acked: BTreeSet<&str> = put.acked_by.iter().map(String::as_str).collect();
        assert_eq!(acked, BTreeSet::from(["n1", "n2"]), "the two remote acks made the quorum");
    }
    cluster.node(0).objects().durability().delay_flushes(Duration::ZERO);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_serve_until_it_has_met_its_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_addr, b_addr): (std::net::SocketAddr, std::net::SocketAddr) =
        (([127, 0, 0, 1], free_port()).into(), ([127, 0, 0, 1], free_port()).into());
    let config = |name: &str, listen, seed: std::net::SocketAddr| concord::Config {
        listen,
        data_dir: tmp.path().join(name),
        node_id: Some(name.into()),
        seeds: vec![seed.to_string()],
        gossip_interval_ms: 100,
        ..Default::default()
    };
    let a = concord::Node::start(config("a", a_addr, b_addr)).await.unwrap();
    let ca = Client::connect(&a_addr.to_string()).await.unwrap();
    let e = ca.put("j", b"k", b"v", &Context::none()).await.unwrap_err();
    assert!(matches!(&e, ClientError::Unavailable(m) if m.contains("joining the cluster")), "{e}");
    let e = ca.get("j", b"k").await.unwrap_err();
    assert!(matches!(&e, ClientError::Unavailable(_)), "{e}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{a_addr}")).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move { health.check(tonic_health::pb::HealthCheckRequest { service }).await.unwrap().into_inner().status }
    };
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    assert_eq!(serving("concord.v1.Kv").await, not_serving);
    assert_eq!(serving("").await, not_serving);
    assert!(!ca.cluster_status().await.unwrap().ready);

    // Its seed comes up: they form a cluster, and it serves.
    let b = concord::Node::start(config("b", b_addr, a_addr)).await.unwrap();
    eventually(30, "a serves", || async { ca.put("j", b"k", b"v", &Context::none()).await.is_ok() }).await;
    let ok = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    eventually(5, "a reports SERVING", || async { serving("concord.v1.Kv").await == ok }).await;
    let _ = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
    for i in 0..20u32 {
        let key = format!("k{i}");
        ca.put_with("j", key.as_bytes(), b"v", &Context::none(), w(2)).await.unwrap();
    }
    let cb = Client::connect(&b_addr.to_string()).await.unwrap();
    for i in 0..20u32 {
        let got = cb.get_with("j", format!("k{i}").as_bytes(), ReadOptions { r: 2, ..Default::default() }).await;
        assert!(got.unwrap().found, "k{i}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_older_than_the_window_are_dropped() {
    let cluster = LocalCluster::start_with(3, |_, c| c.handoff.window_secs = 1).await.unwrap();
    let c0 = cluster.client(0).await;
    cluster.isolate(2);
    sees(&cluster, 0, 2, "down").await;
    for i in 0..10u32 {
        c0.put_with("win", format!("k{i}").as_bytes(), b"v", &Context::none(), w(2)).await.unwrap();
    }
    eventually(10, "n0 holds hints for n2", || async { cluster.node(0).handoff().hints().total() > 0 }).await;
    // n2 stays away past the window: the hints go, and n2 never gets them
    // through handoff (anti-entropy is the repair from here).
    hints_drain(&cluster, &[0, 1], 30).await;
    cluster.heal();
    sees(&cluster, 0, 2, "up").await;
    for i in 0..10u32 {
        assert!(cluster.local_copy(2, "win", format!("k{i}").as_bytes()).is_none(), "k{i} reached n2");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_partition_count_stays_out_without_stalling_the_cluster() {
    let mut cluster = LocalCluster::start(2).await.unwrap();
    let epoch = cluster.node(0).cluster().ring().epoch();
    let tmp = tempfile::tempdir().unwrap();
    let odd = concord::Node::start(concord::Config {
        listen: ([127, 0, 0, 1], free_port()).into(),
        data_dir: tmp.path().join("odd"),
        node_id: Some("odd".into()),
        seeds: cluster.addrs.iter().map(ToString::to_string).collect(),
        gossip_interval_ms: 100,
        partitions: 32,
        ..Default::default()
    })
    .await
    .unwrap();
    eventually(20, "n0 hears the odd node", || async { cluster.node(0).cluster().members().is_live("odd") }).await;
    // A new node of the right kind still joins: the odd one does not hold up
    // ring changes.
    let new = cluster.add_node().await.unwrap();
    cluster.wait_for_ring(3).await.unwrap();
    let ring = cluster.node(0).cluster().ring();
    assert!(ring.epoch() > epoch && !ring.is_member("odd"), "{ring:?}");
    assert!(ring.is_member(&format!("n{new}")));
    assert!(!odd.cluster().is_ready(), "the odd node never takes the cluster's ring");
    assert_eq!(odd.cluster().ring().partitions(), 32);
    odd.shutdown().await.unwrap();
    cluster.shutdown().await;
}
