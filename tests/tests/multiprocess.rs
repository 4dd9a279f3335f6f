//! Real `concord serve` processes on 127.0.0.1: a node killed with SIGKILL
//! in the middle of a write loop, restarted; writes a stopped node missed
//! reaching it through hints; a node joining with the CLI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use concord_client::{Client, Context, ReadOptions, WriteOptions};
use concord_tests::{Server, ServerOptions, concord_bin, free_port};

/// Starts `n` processes seeded with each other, gossiping every 200 ms.
async fn start(n: usize) -> Vec<Server> {
    start_env(n, Vec::new()).await
}

/// [`start`] with more environment variables.
async fn start_env(n: usize, extra: Vec<(String, String)>) -> Vec<Server> {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
    let mut servers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let seeds: Vec<String> = addrs.iter().filter(|a| *a != addr).map(ToString::to_string).collect();
        let s = Server::start_with(ServerOptions {
            addr: Some(*addr),
            args: vec!["--node-id".into(), format!("p{i}"), "--seeds".into(), seeds.join(",")],
            env: [("CONCORD_GOSSIP_INTERVAL_MS".to_owned(), "200".to_owned())]
                .into_iter()
                .chain(extra.clone())
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        servers.push(s);
    }
    servers
}

/// Waits until `client` reports `up` nodes up and every one owning partitions.
async fn wait_up(client: &Client, up: usize, secs: u64) -> concord_proto::v1::ClusterStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(s) = client.cluster_status().await
            && s.nodes.iter().filter(|n| n.status == "up" && n.partitions > 0).count() == up
        {
            return s;
        }
        assert!(Instant::now() < deadline, "{up} nodes did not come up: {:?}", client.cluster_status().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let mut servers = start(3).await;
    let c0 = servers[0].client().await;
    wait_up(&c0, 3, 30).await;

    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|wi| {
            let (c, acked, stop) = (servers[wi].addr.to_string(), Arc::clone(&acked), Arc::clone(&stop));
            tokio::spawn(async move {
                let c = Client::connect(&c).await.unwrap();
                let opts = WriteOptions { w: 2, timeout: Some(Duration::from_secs(2)), ..Default::default() };
                let mut failed = 0;
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{wi}-{i}");
                    match c.put_with("durable", key.as_bytes(), key.as_bytes(), &Context::none(), opts).await {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(_) => failed += 1,
                    }
                }
                failed
            })
        })
        .collect();
    while acked.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    servers[2].kill9();
    let killed_at = acked.lock().unwrap().len();
    // Writes go on at W=2 with two nodes left.
    while acked.lock().unwrap().len() < killed_at + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let failed = w.await.unwrap();
        assert!(failed < 20, "{failed} writes failed around the kill");
    }
    let acked = acked.lock().unwrap().clone();

    // Every acknowledged write reads back at R=2 from the survivors.
    let r2 = ReadOptions { r: 2, ..Default::default() };
    let c1 = servers[1].client().await;
    for key in &acked {
        let got = c1.get_with("durable", key.as_bytes(), r2).await.unwrap();
        assert_eq!(got.values(), vec![key.as_bytes()], "acknowledged write {key} was lost");
    }
    // The killed node is reported down...
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = c0.cluster_status().await.unwrap();
        if s.nodes.iter().any(|n| n.node_id == "p2" && n.status == "down") {
            break;
        }
        assert!(Instant::now() < deadline, "p2 was not marked down: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...rejoins after a restart, is marked up, and serves reads.
    servers[2].restart().await.unwrap();
    wait_up(&c0, 3, 30).await;
    let c2 = servers[2].client().await;
    for key in acked.iter().step_by(37) {
        let got = c2.get_with("durable", key.as_bytes(), r2).await.unwrap();
        assert_eq!(got.values(), vec![key.as_bytes()], "{key} after the restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_with_the_cli_and_one_leaves() {
    let servers = start(3).await;
    let c0 = servers[0].client().await;
    wait_up(&c0, 3, 30).await;
    // A node whose ring has another partition count is refused: its keys
    // would no longer be found.
    let odd = Server::start_with(ServerOptions {
        args: vec!["--node-id".into(), "odd".into()],
        env: vec![("CONCORD_PARTITIONS".into(), "32".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    let out = std::process::Command::new(concord_bin())
        .args(["cluster", "join", &servers[0].addr.to_string(), "--endpoint", &odd.addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("has 64 partitions and this node 32"), "{stderr}");
    drop(odd);
    // A lone node, started without seeds, joins through `concord cluster join`.
    let fourth = Server::start_with(ServerOptions {
        args: vec!["--node-id".into(), "p3".into()],
        env: vec![("CONCORD_GOSSIP_INTERVAL_MS".into(), "200".into())],
        ..Default::default()
    })
    .await
    .unwrap();
    // Serving alone, it took a write: joining would hide that key (and could
    // bring old versions back), so it is refused unless told to discard it.
    fourth.client().await.put("solo", b"k", b"v", &Context::none()).await.unwrap();
    let join = |extra: &[&str]| {
        std::process::Command::new(concord_bin())
            .args(["cluster", "join", &servers[0].addr.to_string(), "--endpoint", &fourth.addr.to_string()])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = join(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds data of its own") && stderr.contains("--discard-data"), "{stderr}");
    let out = join(&["--discard-data"]);
    assert!(out.status.success(), "join failed: {}", String::from_utf8_lossy(&out.stderr));
    let status = wait_up(&c0, 4, 30).await;
    let mut parts: Vec<u32> = status.nodes.iter().map(|n| n.partitions).collect();
    parts.sort();
    assert_eq!(parts, vec![16, 16, 16, 16]);
    // Joining twice is refused with a clear message.
    let out = std::process::Command::new(concord_bin())
        .args(["cluster", "join", &servers[1].addr.to_string(), "--endpoint", &fourth.addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already in a cluster"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The new node serves writes for its partitions.
    let c3 = fourth.client().await;
    for i in 0..20u32 {
        c3.put_with(
            "j",
            format!("k{i}").as_bytes(),
            b"v",
            &Context::none(),
            WriteOptions { w: 3, ..Default::default() },
        )
        .await
        .unwrap();
    }

    // `concord cluster leave` on p1 itself; the ring rebalances over three.
    let out = std::process::Command::new(concord_bin())
        .args(["cluster", "leave", "--endpoint", &servers[1].addr.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "leave failed: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c0.cluster_status().await.unwrap();
        let mut parts: Vec<u32> = s.nodes.iter().filter(|n| n.partitions > 0).map(|n| n.partitions).collect();
        parts.sort();
        let leaving = s.nodes.iter().any(|n| n.node_id == "p1" && n.status == "leaving" && n.partitions == 0);
        if leaving && parts == vec![21, 21, 22] {
            break;
        }
        assert!(Instant::now() < deadline, "the ring did not drop p1: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Status for people shows the words.
    let out = std::process::Command::new(concord_bin())
        .args(["cluster", "status", "--endpoint", &servers[0].addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" leaving ") && text.contains(" up "), "{text}");
}

/// Waits until `client`'s node reports `node` as `status`.
async fn wait_status(client: &Client, node: &str, status: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Ok(s) = client.cluster_status().await
            && s.nodes.iter().any(|n| n.node_id == node && n.status == status)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{node} is not {status}: {:?}", client.cluster_status().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hints the node behind `client` holds, over all targets.
async fn hints_held(client: &Client) -> u64 {
    client.cluster_status().await.map(|s| s.hints.iter().map(|h| h.count).sum()).unwrap_or(u64::MAX)
}

/// Node 2 of three is stopped while 500 keys are written at W=2; it comes
/// back and its hints are delivered; then node 1 stops, and nodes 2 and 3
/// must serve every key at R=2. With `restart_holder`, node 1, which holds
/// the hints, is restarted before node 2 returns.
async fn writes_a_stopped_node_missed_reach_it_through_hints(restart_holder: bool) {
    let mut servers = start(3).await;
    let c0 = servers[0].client().await;
    wait_up(&c0, 3, 30).await;
    servers[1].stop().await.unwrap();
    wait_status(&c0, "p1", "down", 30).await;
    let opts = WriteOptions { w: 2, ..Default::default() };
    for i in 0..500u32 {
        let key = format!("k{i}");
        let put = c0.put_with("hinted", key.as_bytes(), format!("v{i}").as_bytes(), &Context::none(), opts).await;
        let put = put.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(!put.acked_by.contains(&"p1".to_owned()));
    }
    // p0 coordinated every write and keeps a hint per key for p1 (written
    // just after each reply).
    let deadline = Instant::now() + Duration::from_secs(20);
    while hints_held(&c0).await != 500 {
        assert!(
            Instant::now() < deadline,
            "p0 does not hold 500 hints: {:?}\n{}",
            c0.cluster_status().await,
            servers[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if restart_holder {
        servers[0].restart().await.unwrap();
        assert_eq!(hints_held(&servers[0].client().await).await, 500, "hints survive a restart of their holder");
    }
    servers[1].restart().await.unwrap();
    let c0 = servers[0].client().await;
    wait_up(&c0, 3, 30).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in &servers {
        let c = s.client().await;
        while hints_held(&c).await > 0 {
            assert!(Instant::now() < deadline, "hints were not delivered: {:?}", c.cluster_status().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    servers[0].stop().await.unwrap();
    let r2 = ReadOptions { r: 2, ..Default::default() };
    for (i, s) in servers.iter().enumerate().skip(1) {
        let c = s.client().await;
        for k in 0..500u32 {
            let key = format!("k{k}");
            let got = c.get_with("hinted", key.as_bytes(), r2).await.unwrap_or_else(|e| panic!("p{i} {key}: {e}"));
            assert_eq!(got.values(), vec![format!("v{k}").as_bytes()], "p{i} {key}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_stopped_node_missed_reach_it_through_hints_from_a_live_holder() {
    writes_a_stopped_node_missed_reach_it_through_hints(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_survive_a_restart_of_the_node_that_holds_them() {
    writes_a_stopped_node_missed_reach_it_through_hints(true).await;
}

/// The ring a node holds, from its metadata.
async fn ring_of(server: &Server) -> concord::ring::Ring {
    let keys = concord_tests::keys_in(&server.data_dir).unwrap();
    let mut raw = concord_tests::peer_client(server.addr, keys).await.unwrap();
    let md = raw.fetch_metadata(concord_proto::v1::FetchMetadataRequest {}).await.unwrap().into_inner();
    let persisted: serde_json::Value = serde_json::from_slice(&md.ring).unwrap();
    serde_json::from_value(persisted["ring"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_resumes_after_the_receiver_is_killed() {
    // A slow transfer, so the kill lands in the middle of it; no
    // anti-entropy, so the transfer alone must finish the job.
    let slow = vec![
        ("CONCORD_HANDOFF__TRANSFER_RATE_BYTES_PER_SEC".to_owned(), "400000".to_owned()),
        ("CONCORD_ANTIENTROPY__ENABLED".to_owned(), "false".to_owned()),
    ];
    let servers = start_env(3, slow.clone()).await;
    let c0 = servers[0].client().await;
    wait_up(&c0, 3, 30).await;
    let value = vec![7u8; 4000];
    for i in 0..3000u32 {
        c0.put_with(
            "big",
            format!("k{i}").as_bytes(),
            &value,
            &Context::none(),
            WriteOptions { w: 3, ..Default::default() },
        )
        .await
        .unwrap();
    }
    let seeds: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let mut fourth = Server::start_with(ServerOptions {
        args: vec!["--node-id".into(), "p3".into(), "--seeds".into(), seeds.join(",")],
        env: [("CONCORD_GOSSIP_INTERVAL_MS".to_owned(), "200".to_owned())].into_iter().chain(slow).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    wait_up(&c0, 4, 30).await;
    // Wait until the old owners have handed over part, not all, of what
    // p3 now replicates: a quarter of the outgoing trees dropped.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut most = 0;
    loop {
        let mut pending = 0;
        for s in &servers {
            pending += s.client().await.cluster_status().await.unwrap().transfers.len();
        }
        most = most.max(pending);
        if most > 0 && pending * 4 <= most * 3 {
            assert!(pending > 0, "the transfer finished before the kill; slow it down");
            break;
        }
        assert!(Instant::now() < deadline, "no transfer progress: {pending} of {most} trees left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fourth.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    fourth.restart().await.unwrap();
    // Every old owner finishes and drops what it handed over.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let mut pending = 0;
        for s in servers.iter().chain([&fourth]) {
            pending += s.client().await.cluster_status().await.map(|st| st.transfers.len()).unwrap_or(1);
        }
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "transfers did not finish: {pending} left");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // p3 holds its own copy of every key it replicates.
    let ring = ring_of(&fourth).await;
    let mut raw =
        concord_tests::peer_client(fourth.addr, concord_tests::keys_in(&fourth.data_dir).unwrap()).await.unwrap();
    let mut held = 0;
    for i in 0..3000u32 {
        let key = format!("k{i}");
        if !ring.preference_list(ring.partition_of("big", key.as_bytes()), 3).contains(&"p3".to_owned()) {
            continue;
        }
        let req = concord_proto::v1::ReplicaReadRequest {
            keys: vec![concord_proto::v1::ObjectKey { bucket: "big".into(), key: key.clone().into_bytes().into() }],
            ring_epoch: 0,
            hint_for: vec![],
        };
        let r = raw.replica_read(req).await.unwrap().into_inner();
        assert!(!r.results[0].object.is_empty(), "p3 lacks {key}: {:?}", r.results[0].error);
        held += 1;
    }
    assert!(held > 1000, "p3 replicates about three quarters of the keys: {held}");
    let r2 = ReadOptions { r: 2, ..Default::default() };
    for i in (0..3000u32).step_by(7) {
        let got = c0.get_with("big", format!("k{i}").as_bytes(), r2).await.unwrap();
        assert!(got.found, "k{i}");
    }
}
