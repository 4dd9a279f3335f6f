//! The clients: each adds unique elements to sets (one key per set),
//! through a node picked at random, and records what it did.
//!
//! - **Add** (70%): read the set (R=1 or 2), take the union of every
//!   sibling, add a new element, write it back with the read's context.
//! - **Blind add** (15%): write a set of just the new element with no
//!   context; it becomes a sibling of whatever is there.
//! - **Delete** (15%): read the set at R=ALL from primaries only, then
//!   delete it with that read's context.
//!
//! Writes ask for W of 1, 2 or 3 at random. Every value a client writes
//! holds every element it read, so an element's *carriers* (the writes
//! whose value holds it) are known exactly.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use concord::causal::Object;
use concord_proto::v1 as pb;
use pb::kv_client::KvClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;

use crate::{BUCKET, SharedRef, net, now};

/// Everything the clients did, in the order their replies arrived.
#[derive(Debug, Default)]
pub struct History {
    pub writes: Vec<Write>,
    pub deletes: Vec<Delete>,
    /// Acknowledgements the checker found untrue when they arrived.
    pub anomalies: Vec<String>,
    /// Deletes in flight, by set.
    deleting: std::collections::BTreeMap<usize, usize>,
}

/// One put: an add (with the read's context) or a blind add.
#[derive(Debug, Clone)]
pub struct Write {
    pub key: usize,
    /// The element this write added.
    pub added: String,
    /// The whole value written (every element the writer read, and `added`).
    pub elements: BTreeSet<String>,
    pub start: Duration,
    pub end: Duration,
    pub acked: bool,
    pub acked_by: Vec<String>,
    /// A fallback stood in for a replica.
    pub sloppy: bool,
}

/// One delete and the read whose context it carried.
#[derive(Debug, Clone)]
pub struct Delete {
    pub key: usize,
    /// The elements the read saw (the delete's context covers them).
    pub read: BTreeSet<String>,
    /// The replicas whose copies the read merged.
    pub read_from: Vec<String>,
    pub start: Duration,
    pub end: Duration,
    pub acked: bool,
}

/// The key of set `k`.
pub fn key(k: usize) -> Vec<u8> {
    format!("set{k}").into_bytes()
}

/// The elements of a value.
pub fn elements(value: &[u8]) -> impl Iterator<Item = String> + '_ {
    value.split(|b| *b == b',').filter(|e| !e.is_empty()).map(|e| String::from_utf8_lossy(e).into_owned())
}

/// The union of a stored copy's live siblings.
pub fn live_elements(copy: Option<&Object>) -> BTreeSet<String> {
    copy.map(|o| o.live_siblings().filter_map(|s| s.content.value()).flat_map(elements).collect()).unwrap_or_default()
}

/// A stored copy, shortly.
pub fn describe(copy: Option<&Object>) -> String {
    match copy {
        None => "nothing".into(),
        Some(o) => format!("{} siblings, {} elements", o.live_siblings().count(), live_elements(Some(o)).len()),
    }
}

fn encode(elements: &BTreeSet<String>) -> Vec<u8> {
    elements.iter().cloned().collect::<Vec<_>>().join(",").into_bytes()
}

/// A request's deadline at the server, and the client's own (longer).
const SERVER_DEADLINE_MS: u32 = 2_000;
const CLIENT_DEADLINE: Duration = Duration::from_secs(3);

/// One client's loop, until the fault phase ends.
pub async fn client(shared: SharedRef, c: usize, nodes: Vec<String>, keys: usize, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut kv: Vec<KvClient<Channel>> = nodes
        .iter()
        .map(|n| KvClient::new(net::channel(SocketAddr::new(turmoil::lookup(n.as_str()), net::PORT))))
        .collect();
    // The cluster forms in the first seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut n = 0;
    while now() < shared.borrow().clients_stop_at {
        let via = rng.random_range(0..nodes.len());
        let k = rng.random_range(0..keys);
        let kind = rng.random_range(0..100);
        let w = rng.random_range(1..=3u32);
        let node = &nodes[via];
        let kv = &mut kv[via];
        n += 1;
        let added = format!("c{c}e{n}");
        if kind < 85 {
            let blind = kind >= 70;
            add(&shared, kv, node, k, added, blind, w, rng.random_range(1..=2)).await;
        } else {
            delete(&shared, kv, node, k, w).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..30))).await;
    }
}

async fn read(kv: &mut KvClient<Channel>, k: usize, options: pb::ReadOptions) -> Option<pb::GetResponse> {
    let request = pb::GetRequest { bucket: BUCKET.into(), key: key(k).into(), options: Some(options) };
    match tokio::time::timeout(CLIENT_DEADLINE, kv.get(request)).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

fn read_elements(r: &pb::GetResponse) -> BTreeSet<String> {
    r.siblings.iter().filter(|s| !s.deleted).flat_map(|s| elements(&s.value)).collect()
}

#[allow(clippy::too_many_arguments)]
async fn add(
    shared: &SharedRef,
    kv: &mut KvClient<Channel>,
    node: &str,
    k: usize,
    added: String,
    blind: bool,
    w: u32,
    r: u32,
) {
    let start = now();
    let (mut value, context) = if blind {
        (BTreeSet::new(), Default::default())
    } else {
        let options = pb::ReadOptions { r, timeout_ms: SERVER_DEADLINE_MS, ..Default::default() };
        let Some(got) = read(kv, k, options).await else {
            shared.borrow_mut().note(|| format!("{node}: read of set{k} failed"));
            return;
        };
        (read_elements(&got), got.context)
    };
    value.insert(added.clone());
    let request = pb::PutRequest {
        bucket: BUCKET.into(),
        key: key(k).into(),
        value: encode(&value).into(),
        context,
        options: Some(pb::WriteOptions { w, timeout_ms: SERVER_DEADLINE_MS, ..Default::default() }),
    };
    let reply = tokio::time::timeout(CLIENT_DEADLINE, kv.put(request)).await;
    let end = now();
    let mut s = shared.borrow_mut();
    let (acked, acked_by, sloppy, fallbacks) = match &reply {
        Ok(Ok(r)) => {
            let r = r.get_ref();
            (true, r.acked_by.clone(), r.sloppy, r.fallbacks.iter().map(|f| f.node.clone()).collect::<Vec<_>>())
        }
        _ => (false, Vec::new(), false, Vec::new()),
    };
    s.note(|| {
        let how = if blind { "blind add" } else { "add" };
        match &reply {
            Ok(Ok(_)) => format!("{node}: {how} {added} to set{k} (w={w}): acked by {acked_by:?}"),
            Ok(Err(e)) => format!("{node}: {how} {added} to set{k} (w={w}): {}", e.message()),
            Err(_) => format!("{node}: {how} {added} to set{k} (w={w}): no answer"),
        }
    });
    if acked {
        check_acks(&mut s, k, &added, start, w, &acked_by, &fallbacks);
    }
    s.history.writes.push(Write { key: k, added, elements: value, start, end, acked, acked_by, sloppy });
}

/// An acknowledgement must be true when it arrives: as many distinct
/// nodes as asked for, and every primary that acknowledged holds the
/// element (unless it has since stopped, is no longer a replica of the
/// key, or a delete may have removed it).
fn check_acks(
    s: &mut crate::Shared,
    k: usize,
    added: &str,
    start: Duration,
    w: u32,
    acked_by: &[String],
    fallbacks: &[String],
) {
    let distinct: BTreeSet<&String> = acked_by.iter().collect();
    if distinct.len() != acked_by.len() || (distinct.len() as u32) < w {
        s.history
            .anomalies
            .push(format!("ack list: {added} to set{k} asked for w={w} and was acknowledged by {acked_by:?}"));
        return;
    }
    // A delete whose read saw the element may remove it; one that gave up
    // may still land a while later.
    let deleting = s.history.deleting.get(&k).is_some_and(|n| *n > 0)
        || s.history.deletes.iter().any(|d| d.key == k && d.end + Duration::from_secs(10) >= start);
    if deleting {
        return;
    }
    for node in acked_by.iter().filter(|n| !fallbacks.contains(n)) {
        // A node that has stopped may have lost it (as its durability
        // allows); one that is no longer a replica on the newest ring may
        // have handed it over and dropped its copy.
        if s.stopped_since(node, start) || !s.is_replica(node, &key(k)) {
            continue;
        }
        let Some(copy) = s.local_copy(node, &key(k)) else { continue };
        if !live_elements(copy.as_ref()).contains(added) {
            s.history.anomalies.push(format!(
                "ack list: {node} acknowledged {added} to set{k}, but its copy ({}) lacks it",
                describe(copy.as_ref())
            ));
        }
    }
}

async fn delete(shared: &SharedRef, kv: &mut KvClient<Channel>, node: &str, k: usize, w: u32) {
    let start = now();
    *shared.borrow_mut().history.deleting.entry(k).or_default() += 1;
    delete_once(shared, kv, node, k, w, start).await;
    *shared.borrow_mut().history.deleting.entry(k).or_default() -= 1;
}

async fn delete_once(shared: &SharedRef, kv: &mut KvClient<Channel>, node: &str, k: usize, w: u32, start: Duration) {
    let options = pb::ReadOptions {
        consistency: pb::Consistency::All as i32,
        timeout_ms: SERVER_DEADLINE_MS,
        sloppy: Some(false),
        ..Default::default()
    };
    let Some(got) = read(kv, k, options).await else {
        shared.borrow_mut().note(|| format!("{node}: read of set{k} at R=ALL failed; no delete"));
        return;
    };
    let seen = read_elements(&got);
    let read_from = got.replicas.clone();
    let request = pb::DeleteRequest {
        bucket: BUCKET.into(),
        key: key(k).into(),
        context: got.context,
        options: Some(pb::WriteOptions { w, timeout_ms: SERVER_DEADLINE_MS, ..Default::default() }),
    };
    let reply = tokio::time::timeout(CLIENT_DEADLINE, kv.delete(request)).await;
    let acked = matches!(reply, Ok(Ok(_)));
    let mut s = shared.borrow_mut();
    s.note(|| format!("{node}: delete set{k} (w={w}) covering {} elements: acked {acked}", seen.len()));
    s.history.deletes.push(Delete { key: k, read: seen, read_from, start, end: now(), acked });
}
