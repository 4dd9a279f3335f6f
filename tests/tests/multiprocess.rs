//! Real `concord serve` processes on 127.0.0.1: a node killed with SIGKILL
//! in the middle of a write loop, restarted, and a node joining with the
//! CLI.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use concord_client::{Client, Context, ReadOptions, WriteOptions};
use concord_tests::{Server, ServerOptions, concord_bin, free_port};

/// Starts `n` processes seeded with each other, gossiping every 200 ms.
async fn start(n: usize) -> Vec<Server> {
    let addrs: Vec<SocketAddr> = (0..n).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
    let mut servers = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let seeds: Vec<String> = addrs.iter().filter(|a| *a != addr).map(ToString::to_string).collect();
        let s = Server::start_with(ServerOptions {
            addr: Some(*addr),
            args: vec!["--node-id".into(), format!("p{i}"), "--seeds".into(), seeds.join(",")],
            env: vec![("CONCORD_GOSSIP_INTERVAL_MS".into(), "200".into())],
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
    let out = std::process::Command::new(concord_bin())
        .args(["cluster", "join", &servers[0].addr.to_string(), "--endpoint", &fourth.addr.to_string()])
        .output()
        .unwrap();
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
