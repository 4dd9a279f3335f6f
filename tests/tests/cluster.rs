//! Several nodes in one process, talking over loopback through their fault
//! layers: quorums, partitions, forwarding, metadata convergence, and ring
//! changes on join and leave.

use std::collections::BTreeSet;
use std::time::Duration;

use concord_client::{
    Client, ClientError, ConnectOptions, Consistency, Context, ReadOptions, SetBucketRequest, WriteOptions,
};
use concord_proto::v1 as pb;
use concord_tests::{LocalCluster, eventually, plugins};

fn w(n: u32) -> WriteOptions {
    WriteOptions { w: n, ..Default::default() }
}

fn r(n: u32) -> ReadOptions {
    ReadOptions { r: n, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_reads_see_quorum_writes_from_any_node() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let clients = [cluster.client(0).await, cluster.client(1).await, cluster.client(2).await];
    for i in 0..60u32 {
        let key = format!("k{i}");
        let writer = &clients[i as usize % 3];
        let put = writer.put_with("rw", key.as_bytes(), &i.to_le_bytes(), &Context::none(), w(2)).await.unwrap();
        assert!(put.acked_by.len() >= 2, "{:?}", put.acked_by);
        // R + W > N: any other node reads the write.
        let reader = &clients[(i as usize + 1) % 3];
        let got = reader.get_with("rw", key.as_bytes(), r(2)).await.unwrap();
        assert_eq!(got.values(), vec![&i.to_le_bytes()[..]], "{key}");
        assert!(got.replicas.len() >= 2);
    }
    // Replicas converge: a read of ALL finds each value everywhere.
    let all =
        clients[0].get_with("rw", b"k7", ReadOptions { consistency: Consistency::All, ..Default::default() }).await;
    assert_eq!(all.unwrap().replicas.len(), 3);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_cannot_reach_w_and_says_so() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let minority = cluster.client(2).await;
    cluster.isolate(2);
    let opts = WriteOptions { w: 2, pw: 2, timeout: Some(Duration::from_millis(800)), ..Default::default() };
    let e = minority.put_with("p", b"k", b"v", &Context::none(), opts).await.unwrap_err();
    let ClientError::Unavailable(msg) = &e else { panic!("expected UNAVAILABLE, got {e}") };
    assert!(msg.contains("write needed 2 of 3 replicas, 1 answered"), "{msg}");
    let e = minority
        .get_with("p", b"k", ReadOptions { r: 2, timeout: Some(Duration::from_millis(800)), ..Default::default() })
        .await
        .unwrap_err();
    assert!(matches!(&e, ClientError::Unavailable(m) if m.contains("read needed 2 of 3 replicas, 1 answered")), "{e}");

    // The majority side keeps going with QUORUM reads and writes.
    let majority = cluster.client(0).await;
    let quorum = WriteOptions { consistency: Consistency::Quorum, ..Default::default() };
    for i in 0..20u32 {
        let key = format!("q{i}");
        let put = majority.put_with("p", key.as_bytes(), b"ok", &Context::none(), quorum).await.unwrap();
        assert!(!put.acked_by.iter().any(|n| n == "n2"), "the isolated node acked: {:?}", put.acked_by);
        let got = cluster
            .client(1)
            .await
            .get_with("p", key.as_bytes(), ReadOptions { consistency: Consistency::Quorum, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(got.values(), vec![&b"ok"[..]]);
    }
    // The majority sees the isolated node as down.
    eventually(10, "n0 marks n2 down", || async {
        cluster.node(0).cluster().status().nodes.iter().any(|n| n.node_id == "n2" && n.status == "down")
    })
    .await;

    // Healed, the isolated node comes back up, and reads repair it.
    cluster.heal();
    eventually(10, "n0 marks n2 up", || async {
        cluster.node(0).cluster().status().nodes.iter().any(|n| n.node_id == "n2" && n.status == "up")
    })
    .await;
    let all = ReadOptions { consistency: Consistency::All, ..Default::default() };
    let got = minority.get_with("p", b"q3", all).await.unwrap();
    assert_eq!(got.values(), vec![&b"ok"[..]]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_non_replica_are_forwarded() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let c = cluster.client(0).await;
    c.set_bucket(SetBucketRequest { name: "single".into(), n: Some(1), ..Default::default() }).await.unwrap();
    // Wait until every node has the bucket's n=1.
    eventually(10, "n=1 reaches every node", || async {
        let mut ok = true;
        for i in 0..3 {
            ok &= cluster.client(i).await.get_bucket("single").await.unwrap().n == 1;
        }
        ok
    })
    .await;
    let mut owners = BTreeSet::new();
    for i in 0..30u32 {
        let key = format!("k{i}");
        let put =
            cluster.client(i as usize % 3).await.put("single", key.as_bytes(), b"v", &Context::none()).await.unwrap();
        assert_eq!(put.acked_by.len(), 1);
        owners.insert(put.acked_by[0].clone());
        // Any node reads it back from its one replica.
        let got = cluster.client((i as usize + 2) % 3).await.get("single", key.as_bytes()).await.unwrap();
        assert_eq!(got.replicas, put.acked_by);
        assert!(got.found);
    }
    assert_eq!(owners.len(), 3, "keys spread over all three owners");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_aware_client_sends_each_key_to_its_live_replicas_in_turn() {
    let mut cluster = LocalCluster::start(4).await.unwrap();
    let options = ConnectOptions { token_aware: true, ..Default::default() };
    let c = Client::connect_with(&cluster.addrs[0].to_string(), &options).await.unwrap();
    let ring = cluster.node(0).cluster().ring();
    let replicas = |key: &str| ring.preference_list(ring.partition_of("tok", key.as_bytes()), 3);
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let key = format!("k{i}");
        // The writer of a sibling is the node that coordinated the write.
        // Through n0 alone, every write of a key has one writer: n0 if it
        // is a replica, else the replica it forwards to. Routed, the writes
        // take the key's replicas in turn.
        for _ in 0..6 {
            c.put_with("tok", key.as_bytes(), b"v", &Context::none(), w(2)).await.unwrap();
        }
        let got = c.get("tok", key.as_bytes()).await.unwrap();
        let writers: BTreeSet<String> = got.siblings.iter().map(|s| s.writer.clone()).collect();
        assert!(writers.len() > 1, "{key}: one writer for six writes: {writers:?}");
        assert!(writers.iter().all(|w| replicas(&key).contains(w)), "{key}: {writers:?} are not all replicas");
        seen.extend(writers);
    }
    assert_eq!(seen.len(), 4, "keys spread over every node: {seen:?}");
    // A replica that cannot be reached: its keys go through n0 instead, at
    // once and without an error.
    cluster.stop(1).await.unwrap();
    let keys: Vec<String> =
        (0..).map(|i| format!("d{i}")).filter(|k| replicas(k).contains(&"n1".to_owned())).take(5).collect();
    for key in &keys {
        let put = c.put_with("tok", key.as_bytes(), b"v", &Context::none(), w(2)).await.unwrap();
        assert!(!put.acked_by.contains(&"n1".to_owned()), "{key}: {put:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_and_plugin_changes_reach_every_node() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let c0 = cluster.client(0).await;
    c0.set_bucket(SetBucketRequest { name: "conf".into(), max_siblings: Some(9), ..Default::default() }).await.unwrap();
    let wasm = std::fs::read(plugins::LWW).unwrap();
    c0.admin()
        .deploy_plugin(pb::DeployPluginRequest {
            name: "lww".into(),
            version: "1".into(),
            wasm: wasm.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 1..3 {
        let c = cluster.client(i).await;
        eventually(10, "the bucket change and the plugin reach every node", || {
            let c = c.clone();
            async move {
                let props = c.get_bucket("conf").await.unwrap();
                let plugins = c.admin().list_plugins(pb::ListPluginsRequest {}).await.unwrap().into_inner().plugins;
                props.max_siblings == 9 && plugins.iter().any(|p| p.name == "lww")
            }
        })
        .await;
    }
    // Bind on another node; every node resolves with the fetched plugin.
    let c2 = cluster.client(2).await;
    c2.set_bucket(SetBucketRequest { name: "conf".into(), resolver: Some("lww@1".into()), ..Default::default() })
        .await
        .unwrap();
    let c1 = cluster.client(1).await;
    eventually(10, "the binding reaches node 1", || async { c1.get_bucket("conf").await.unwrap().resolver == "lww@1" })
        .await;
    c1.put("conf", b"k", b"a", &Context::none()).await.unwrap();
    c1.put("conf", b"k", b"b", &Context::none()).await.unwrap();
    let got = c1.get("conf", b"k").await.unwrap();
    assert_eq!(got.resolved_by.as_deref(), Some("lww@1"));
    assert_eq!(got.values(), vec![&b"b"[..]]);
    cluster.shutdown().await;
}

fn owned(status: &pb::ClusterStatusResponse) -> Vec<(String, u32)> {
    status.nodes.iter().filter(|n| n.partitions > 0).map(|n| (n.node_id.clone(), n.partitions)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_and_leaving_rebalance_the_ring() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    let c = cluster.client(0).await;
    for i in 0..20u32 {
        c.put("j", format!("k{i}").as_bytes(), b"v", &Context::none()).await.unwrap();
    }
    let new = cluster.add_node().await.unwrap();
    cluster.wait_for_ring(4).await.unwrap();
    let status = c.cluster_status().await.unwrap();
    assert_eq!(owned(&status).iter().map(|(_, p)| *p).collect::<Vec<_>>(), vec![16, 16, 16, 16], "{status:?}");
    // The new owner is reachable and writable.
    let newcomer = cluster.client(new).await;
    for i in 0..20u32 {
        let key = format!("new{i}");
        newcomer.put_with("j", key.as_bytes(), b"v", &Context::none(), w(3)).await.unwrap();
        assert!(c.get_with("j", key.as_bytes(), r(3)).await.unwrap().found);
    }

    // n1 leaves: its partitions go to the other three.
    c.admin().leave(pb::LeaveRequest { node_id: "n1".into() }).await.unwrap();
    eventually(15, "n1 is out of the ring", || async {
        let s = c.cluster_status().await.unwrap();
        let mut parts: Vec<u32> = owned(&s).iter().map(|(_, p)| *p).collect();
        parts.sort();
        s.nodes.iter().any(|n| n.node_id == "n1" && n.status == "leaving" && n.partitions == 0)
            && parts == vec![21, 21, 22]
    })
    .await;
    // Writes keep succeeding at W=3 on the three remaining owners.
    c.put_with("j", b"after-leave", b"v", &Context::none(), w(3)).await.unwrap();
    // Leaving an unknown node is refused.
    let e = c.admin().leave(pb::LeaveRequest { node_id: "nobody".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_spread_replicas_and_local_quorum_counts_the_local_zone() {
    let cluster =
        LocalCluster::start_with(4, |i, c| c.zone = if i < 2 { "east".into() } else { "west".into() }).await.unwrap();
    let c = cluster.client(0).await;
    c.set_bucket(SetBucketRequest { name: "z".into(), n: Some(2), ..Default::default() }).await.unwrap();
    eventually(10, "n=2 reaches every node", || async {
        let mut ok = true;
        for i in 0..4 {
            ok &= cluster.client(i).await.get_bucket("z").await.unwrap().n == 2;
        }
        ok
    })
    .await;
    for i in 0..20u32 {
        let put = c.put_with("z", format!("k{i}").as_bytes(), b"v", &Context::none(), w(2)).await.unwrap();
        let zones: BTreeSet<&str> =
            put.acked_by.iter().map(|n| if n == "n0" || n == "n1" { "east" } else { "west" }).collect();
        assert_eq!(zones.len(), 2, "two replicas, one per zone: {:?}", put.acked_by);
    }
    // LOCAL_QUORUM waits for a majority of the replicas in the zone of the
    // node the client called (one here), also when that node is not a
    // replica and hands the write to a replica in the other zone.
    let east = |n: &String| n == "n0" || n == "n1";
    let local = WriteOptions { consistency: Consistency::LocalQuorum, ..Default::default() };
    let mut forwarded_west = 0;
    for i in 0..20u32 {
        let put = c.put_with("z", format!("local{i}").as_bytes(), b"v", &Context::none(), local).await.unwrap();
        assert!(put.acked_by.iter().any(east), "an east replica acknowledged: {:?}", put.acked_by);
        forwarded_west += usize::from(!east(&put.acked_by[0]));
    }
    assert!(forwarded_west > 0, "some writes were coordinated in the west zone");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_cuts_and_slow_links_are_contained() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let c0 = cluster.client(0).await;
    // n0 cannot send to n2, but n2 still reaches n0.
    cluster.node(0).faults().set(cluster.addrs[2], concord::net::Fault::Drop);
    let all = WriteOptions { w: 3, timeout: Some(Duration::from_millis(600)), ..Default::default() };
    let e = c0.put_with("oneway", b"k", b"v", &Context::none(), all).await.unwrap_err();
    assert!(matches!(&e, ClientError::Unavailable(m) if m.contains("write needed 3 of 3 replicas, 2 answered")), "{e}");
    let c2 = cluster.client(2).await;
    let put = c2.put_with("oneway", b"k2", b"v", &Context::none(), w(3)).await.unwrap();
    assert_eq!(put.acked_by.len(), 3, "the other direction still works");
    cluster.heal();

    // A slow replica does not slow W=2 writes: the coordinator answers at
    // two acks and the third finishes in the background.
    cluster.node(0).faults().set(cluster.addrs[2], concord::net::Fault::Delay(Duration::from_millis(700)));
    let put = c0.put_with("slow", b"k", b"v", &Context::none(), w(2)).await.unwrap();
    assert!(!put.acked_by.contains(&"n2".to_string()), "the reply did not wait for n2: {:?}", put.acked_by);
    // The straggler's copy lands once the delay passes.
    eventually(5, "the delayed replica receives the write", || async {
        cluster.local_copy(2, "slow", b"k").is_some_and(|o| o.is_found())
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_calls_made_on_an_older_ring_are_refused_for_keys_no_longer_held() {
    let mut cluster = LocalCluster::start(3).await.unwrap();
    cluster.wait_for_ring(3).await.unwrap();
    // A join moves the ring past its first epoch.
    cluster.add_node().await.unwrap();
    cluster.wait_for_ring(4).await.unwrap();
    let node = cluster.node(0);
    let ring = node.cluster().ring();
    assert!(ring.epoch() > 1, "the join changed the ring: epoch {}", ring.epoch());
    let holds = |key: &str| {
        let p = ring.partition_of("b", key.as_bytes());
        ring.preference_list(p, 3).iter().any(|r| r == node.node_id())
    };
    let key = (0..).map(|i| format!("k{i}")).find(|k| !holds(k)).unwrap();
    let holder_key = (0..).map(|i| format!("k{i}")).find(|k| holds(k)).unwrap();
    let object_key = |k: &str| pb::ObjectKey { bucket: "b".into(), key: k.as_bytes().to_vec().into() };

    // A real object to send, written through the cluster and read back.
    cluster.client(1).await.put("b", key.as_bytes(), b"v", &Context::none()).await.unwrap();
    let holder = ring.preference_list(ring.partition_of("b", key.as_bytes()), 3)[0].clone();
    let holder_addr = node.cluster().addr_of(&holder).unwrap();
    let keys = std::sync::Arc::clone(node.cluster().keys());
    let mut from_holder = concord_tests::peer_client(holder_addr, std::sync::Arc::clone(&keys)).await.unwrap();
    let read = pb::ReplicaReadRequest { keys: vec![object_key(&key)], ring_epoch: ring.epoch(), hint_for: vec![] };
    let object = from_holder.replica_read(read).await.unwrap().into_inner().results[0].object.clone();
    assert!(!object.is_empty());

    // A client cannot make replica calls: not without the cluster's
    // credential, and not with another cluster's.
    let mut stranger =
        pb::internal_client::InternalClient::connect(format!("http://{}", node.local_addr())).await.unwrap();
    let write = pb::ReplicaWriteRequest {
        writes: vec![pb::ReplicaWrite { key: Some(object_key(&key)), object: object.clone(), ..Default::default() }],
        ring_epoch: 0,
        background: false,
    };
    let refused = stranger.replica_write(write.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let other_cluster =
        std::sync::Arc::new(concord::security::Keyring::in_memory(concord::security::KeySet::generate()));
    let mut impostor = concord_tests::peer_client(node.local_addr(), other_cluster).await.unwrap();
    let refused = impostor.replica_write(write).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = impostor.fetch_metadata(pb::FetchMetadataRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let mut raw = concord_tests::peer_client(node.local_addr(), keys).await.unwrap();
    for (epoch, refused) in [(ring.epoch() - 1, true), (ring.epoch(), false), (0, false)] {
        let read = pb::ReplicaReadRequest { keys: vec![object_key(&key)], ring_epoch: epoch, hint_for: vec![] };
        let error = raw.replica_read(read).await.unwrap().into_inner().results[0].error.clone();
        assert_eq!(error.contains("does not hold this key"), refused, "read at epoch {epoch}: {error:?}");
        let write = pb::ReplicaWriteRequest {
            writes: vec![pb::ReplicaWrite {
                key: Some(object_key(&key)),
                object: object.clone(),
                hint_for: String::new(),
            }],
            ring_epoch: epoch,
            background: false,
        };
        let error = raw.replica_write(write).await.unwrap().into_inner().results[0].error.clone();
        assert_eq!(error.contains("does not hold this key"), refused, "write at epoch {epoch}: {error:?}");
    }
    // Keys the node does hold are served whatever the sender's epoch.
    let read = pb::ReplicaReadRequest { keys: vec![object_key(&holder_key)], ring_epoch: 1, hint_for: vec![] };
    assert_eq!(raw.replica_read(read).await.unwrap().into_inner().results[0].error, "");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_reaches_every_node_and_old_contexts_stay_valid_for_the_grace() {
    let cluster = LocalCluster::start(3).await.unwrap();
    let c = cluster.client(0).await;
    let before = c.put("b", b"k", b"v1", &Context::none()).await.unwrap();
    let old_ids: Vec<u32> = cluster.node(1).cluster().keys().current().ids();
    let rotated = c.admin().rotate_secret(pb::RotateSecretRequest { grace_secs: 3600 }).await.unwrap().into_inner();
    assert_eq!(rotated.key_id, old_ids.iter().max().unwrap() + 1);
    // Every node learns the key, and then signs with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let signing: Vec<Option<u32>> =
            (0..3).map(|i| cluster.node(i).cluster().keys().current().signing().map(|k| k.id())).collect();
        if signing.iter().all(|s| *s == Some(rotated.key_id)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "signing keys: {signing:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // A context from before the rotation is still taken, on any node.
    let c2 = cluster.client(2).await;
    let after = c2.put("b", b"k", b"v2", &before.context).await.unwrap();
    assert_eq!(after.sibling_count, 1, "the old context covered v1");
    // And the cluster keeps working with the new key.
    let read = c.get("b", b"k").await.unwrap();
    assert_eq!(read.values(), vec![&b"v2"[..]]);
    c2.put("b", b"k", b"v3", &read.context).await.unwrap();
    // The secret is an admin's to read; it names every key.
    let secret = c.admin().cluster_secret(pb::ClusterSecretRequest {}).await.unwrap().into_inner().secret;
    let set = concord::security::KeySet::import(&secret).unwrap();
    assert!(set.ids().contains(&rotated.key_id));
    cluster.shutdown().await;
}
