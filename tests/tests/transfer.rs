//! Ownership transfer in process: a node joins and later leaves while
//! writes go on; the partitions that move are handed over, every key stays
//! readable throughout, and the old copies are dropped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_client::{Client, Context, ReadOptions, WriteOptions};
use concord_proto::v1 as pb;
use concord_tests::{LocalCluster, eventually};

/// Whether every running node holds only trees it replicates (every
/// transfer is done and every old copy dropped).
fn transfers_done(cluster: &LocalCluster, nodes: &[usize]) -> bool {
    nodes.iter().all(|i| {
        let node = cluster.node(*i);
        let ring = node.cluster().ring();
        node.objects()
            .trees()
            .iter()
            .all(|(p, n)| ring.preference_list(*p, *n as usize).iter().any(|r| r == node.node_id()))
    })
}

/// Writes keys at w=2 until stopped, recording those acknowledged.
fn writer(
    client: Client,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    prefix: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let opts = WriteOptions { w: 2, timeout: Some(Duration::from_secs(3)), ..Default::default() };
        for i in 0..1_000_000u32 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let key = format!("{prefix}{i}");
            if client.put_with("mv", key.as_bytes(), key.as_bytes(), &Context::none(), opts).await.is_ok() {
                acked.lock().unwrap().push(key);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Reads acknowledged keys round and round until stopped; any key not
/// found is a failure. Returns the number of reads.
fn reader(
    client: Client,
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<u64, String>> {
    tokio::spawn(async move {
        let r2 = ReadOptions { r: 2, timeout: Some(Duration::from_secs(3)), ..Default::default() };
        let mut reads = 0;
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let key = {
                let acked = acked.lock().unwrap();
                if acked.is_empty() {
                    None
                } else {
                    i = (i + 7919) % acked.len();
                    Some(acked[i].clone())
                }
            };
            let Some(key) = key else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match client.get_with("mv", key.as_bytes(), r2).await {
                Ok(g) if g.found => reads += 1,
                Ok(_) => return Err(format!("{key} was acknowledged but read as not found")),
                // Unavailable while the ring changes is not a lost key.
                Err(_) => {}
            }
        }
        Ok(reads)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_leaves_under_load_without_losing_or_hiding_a_key() {
    // No anti-entropy and no read repair: only transfers move the data.
    let mut cluster = LocalCluster::start_with(3, |_, c| {
        c.antientropy.enabled = false;
        c.read_repair = false;
    })
    .await
    .unwrap();
    let c0 = cluster.client(0).await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for i in 0..600u32 {
        let key = format!("pre{i}");
        c0.put_with(
            "mv",
            key.as_bytes(),
            key.as_bytes(),
            &Context::none(),
            WriteOptions { w: 3, ..Default::default() },
        )
        .await
        .unwrap();
        acked.lock().unwrap().push(key);
    }
    let before = cluster.node(0).cluster().ring();
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(cluster.client(1).await, Arc::clone(&acked), Arc::clone(&stop), "join");
    let r = reader(cluster.client(2).await, Arc::clone(&acked), Arc::clone(&stop));

    let new = cluster.add_node().await.unwrap();
    cluster.wait_for_ring(4).await.unwrap();
    let after = cluster.node(0).cluster().ring();
    let moved = (0..after.partitions() as usize).filter(|p| before.owners()[*p] != after.owners()[*p]).count();
    assert_eq!(moved, 16, "a quarter of the partitions move to the new node");
    eventually(120, "every transfer to the new node is done", || async { transfers_done(&cluster, &[0, 1, 2, new]) })
        .await;
    let status = cluster.client(new).await.cluster_status().await.unwrap();
    assert!(status.transfers.is_empty(), "{:?}", status.transfers);

    // The new node leaves again: its partitions go back.
    cluster.client(new).await.admin().leave(pb::LeaveRequest { node_id: String::new() }).await.unwrap();
    eventually(60, "the new node is out of the ring", || async {
        (0..3).all(|i| !cluster.node(i).cluster().ring().is_member(&format!("n{new}")))
    })
    .await;
    eventually(120, "the leaving node has handed everything back", || async {
        transfers_done(&cluster, &[0, 1, 2, new]) && cluster.node(new).objects().trees().is_empty()
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    w.await.unwrap();
    let reads = r.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert!(reads > 0);
    // Every acknowledged key is on every replica of the final ring that
    // took it, and reads find all of them.
    let keys: Vec<String> = acked.lock().unwrap().clone();
    assert!(keys.len() > 600, "writes went on during the moves: {}", keys.len());
    let all = ReadOptions { r: 3, ..Default::default() };
    let mut missing = BTreeSet::new();
    for key in &keys {
        match c0.get_with("mv", key.as_bytes(), all).await {
            Ok(g) if g.found => {}
            other => {
                missing.insert(format!("{key}: {other:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged keys lost: {:?}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    cluster.shutdown().await;
}
