//! Token-aware routing: each request goes straight to a live replica of its
//! key, as Cassandra's token-aware drivers do; requests take a key's live
//! replicas in turn, so a hot key does not load one node alone.
//!
//! Any node serves any key, but a node that is not one of the key's
//! replicas forwards a write to one that is (an extra hop), and reads every
//! replica remotely. The router learns the ring from `Kv/Route` on the node
//! the client connected to, keeps it fresh (again after
//! [`REFRESH_EVERY`], and at once after a node could not be reached, which
//! it then avoids for a while), and connects to other nodes as requests
//! need them. Until the first table
//! arrives, and for keys whose replicas all look down, requests go to the
//! node the client connected to.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::{Bearer, ClientError, ConnectOptions, Kv, kv_client, node_endpoint};
use concord_proto::v1 as pb;

/// How long a route table is used before it is fetched again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The ring as a client needs it.
#[derive(Debug)]
struct Table {
    partitions: u32,
    /// Addresses by node index, with whether the node is thought up.
    nodes: Vec<(String, bool)>,
    depth: usize,
    replicas: Vec<u32>,
    default_n: u32,
    bucket_n: HashMap<String, u32>,
}

impl Table {
    /// Checks a reply: every index in range, a power-of-two partition
    /// count, as many entries as partitions × depth.
    fn from_proto(r: pb::RouteResponse) -> Result<Self, String> {
        if !r.partitions.is_power_of_two() {
            return Err(format!("{} partitions is not a power of two", r.partitions));
        }
        let depth = r.depth as usize;
        if depth == 0 || r.replicas.len() != r.partitions as usize * depth {
            return Err(format!(
                "{} replica entries for {} partitions of depth {depth}",
                r.replicas.len(),
                r.partitions
            ));
        }
        if r.replicas.iter().any(|i| *i as usize >= r.nodes.len()) {
            return Err("a replica entry names no node".into());
        }
        Ok(Self {
            partitions: r.partitions,
            nodes: r.nodes.into_iter().map(|n| (n.address, n.up)).collect(),
            depth,
            replicas: r.replicas,
            default_n: r.default_n,
            bucket_n: r.bucket_n,
        })
    }

    /// The address of a replica of `bucket`/`key` thought up: the
    /// `turn`-th of them, round the list, so that a hot key's requests
    /// spread over its replicas.
    /// Nodes for which `avoid` says yes are skipped.
    fn replica(&self, bucket: &str, key: &[u8], turn: usize, avoid: impl Fn(&str) -> bool) -> Option<&str> {
        let p = partition_of(bucket, key, self.partitions) as usize;
        let n = (self.bucket_n.get(bucket).copied().unwrap_or(self.default_n) as usize).clamp(1, self.depth);
        let mut up = self.replicas[p * self.depth..p * self.depth + n]
            .iter()
            .map(|i| &self.nodes[*i as usize])
            .filter(|(address, up)| *up && !address.is_empty() && !avoid(address));
        let count = up.clone().count();
        if count == 0 {
            return None;
        }
        up.nth(turn % count).map(|(address, _)| address.as_str())
    }
}

/// The partition of a key among `partitions` (a power of two): the
/// server's own function (see `RouteResponse`).
pub fn partition_of(bucket: &str, key: &[u8], partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(bucket.as_bytes());
    h.update(&[0]);
    h.update(key);
    (h.digest() & (u64::from(partitions) - 1)) as u32
}

/// Routes requests of one [`crate::Client`] and its clones.
pub(crate) struct Router {
    /// The node the client connected to.
    seed: Kv,
    /// How to reach other nodes: as the seed was reached.
    options: ConnectOptions,
    bearer: Bearer,
    table: RwLock<Option<Table>>,
    /// Connections to other nodes, by address.
    nodes: RwLock<HashMap<String, Kv>>,
    /// When the router was made; `fetched_ms` counts from it.
    born: Instant,
    /// When the table was last fetched, in ms since `born` (`u64::MAX`:
    /// never).
    fetched_ms: AtomicU64,
    fetching: AtomicBool,
    /// Picks among a key's replicas in turn.
    turn: AtomicUsize,
    /// Nodes that could not be reached, avoided until the time given
    /// (whatever the table says: gossip takes a while to see a node down).
    avoided: RwLock<HashMap<String, Instant>>,
}

/// How long a node that could not be reached is avoided.
const AVOID_FOR: Duration = Duration::from_secs(10);

impl Router {
    pub(crate) fn new(seed: Kv, options: ConnectOptions, bearer: Bearer) -> Arc<Self> {
        Arc::new(Self {
            seed,
            options,
            bearer,
            table: RwLock::new(None),
            nodes: RwLock::new(HashMap::new()),
            born: Instant::now(),
            fetched_ms: AtomicU64::new(u64::MAX),
            fetching: AtomicBool::new(false),
            turn: AtomicUsize::new(0),
            avoided: RwLock::new(HashMap::new()),
        })
    }

    /// Fetches the route table from the seed. A node too old to serve
    /// `Kv/Route` leaves routing off.
    pub(crate) async fn refresh(&self) -> Result<(), ClientError> {
        let reply = self.seed.clone().route(pb::RouteRequest {}).await;
        self.fetched_ms.store(self.born.elapsed().as_millis() as u64, Ordering::Release);
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(()),
            Err(s) => return Err(s.into()),
        };
        let table = Table::from_proto(reply).map_err(|e| ClientError::Other {
            code: tonic::Code::Internal,
            message: format!("a bad route table: {e}"),
        })?;
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Some(table);
        Ok(())
    }

    /// Refreshes in the background when the table is old (or `now`), one
    /// refresh at a time.
    fn refresh_soon(self: &Arc<Self>, now: bool) {
        let fetched = self.fetched_ms.load(Ordering::Acquire);
        let due = now
            || fetched == u64::MAX
            || (self.born.elapsed().as_millis() as u64).saturating_sub(fetched) >= REFRESH_EVERY.as_millis() as u64;
        if !due || self.fetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            // A failed refresh keeps the old table; the next request past
            // the interval tries again.
            let _ = me.refresh().await;
            me.fetching.store(false, Ordering::Release);
        });
    }

    /// The connection for a request on `bucket`/`key`, and the address it
    /// goes to (`None`: the seed).
    pub(crate) fn pick(self: &Arc<Self>, bucket: &str, key: &[u8]) -> (Kv, Option<String>) {
        self.refresh_soon(false);
        let address = {
            let table = self.table.read().unwrap_or_else(|p| p.into_inner());
            let turn = self.turn.fetch_add(1, Ordering::Relaxed);
            let avoided = self.avoided.read().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let avoid = |a: &str| avoided.get(a).is_some_and(|until| *until > now);
            table.as_ref().and_then(|t| t.replica(bucket, key, turn, avoid)).map(str::to_owned)
        };
        let Some(address) = address else { return (self.seed.clone(), None) };
        if let Some(kv) = self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(&address) {
            return (kv.clone(), Some(address));
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(kv) = nodes.get(&address) {
            return (kv.clone(), Some(address));
        }
        match node_endpoint(&address, &self.options) {
            Ok(e) => {
                let kv = kv_client(e.connect_lazy(), self.bearer.clone());
                nodes.insert(address.clone(), kv.clone());
                (kv, Some(address))
            }
            Err(_) => (self.seed.clone(), None),
        }
    }

    /// Notes that `address` could not be reached: requests avoid it for
    /// [`AVOID_FOR`], and the table is fetched again at once.
    pub(crate) fn unreachable(self: &Arc<Self>, address: &str) {
        let mut avoided = self.avoided.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        avoided.retain(|_, until| *until > now);
        avoided.insert(address.to_owned(), now + AVOID_FOR);
        drop(avoided);
        self.refresh_soon(true);
    }

    /// The seed's connection.
    pub(crate) fn seed(&self) -> Kv {
        self.seed.clone()
    }
}

/// Whether a failed call provably never reached the node: no connection
/// could be made. tonic reports transport failures with the transport error
/// as the status's source (statuses a node sent have none); of those, only
/// a failed connect proves the request was not sent. A connection lost
/// mid-call may have delivered it, so such a write is not safe to send
/// again.
pub fn never_delivered(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.to_string().starts_with("tcp connect error") {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        cause = std::error::Error::source(c);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> pb::RouteResponse {
        // Four partitions over three nodes, depth 2; n1 is down.
        pb::RouteResponse {
            ring_epoch: 3,
            partitions: 4,
            nodes: vec![
                pb::RouteNode { node_id: "n0".into(), address: "a0".into(), up: true },
                pb::RouteNode { node_id: "n1".into(), address: "a1".into(), up: false },
                pb::RouteNode { node_id: "n2".into(), address: "a2".into(), up: true },
            ],
            depth: 2,
            replicas: vec![0, 1, 1, 2, 2, 0, 1, 0],
            default_n: 2,
            bucket_n: [("one".to_owned(), 1)].into(),
        }
    }

    #[test]
    fn requests_take_the_replicas_that_are_up_in_turn() {
        let t = Table::from_proto(reply()).unwrap();
        fn turns_avoiding(t: &Table, b: &str, p: u32, avoid: &str) -> Vec<Option<String>> {
            let key = (0u32..).map(|i| i.to_be_bytes()).find(|k| partition_of(b, k, 4) == p).unwrap();
            (0..4).map(|turn| t.replica(b, &key, turn, |a| a == avoid).map(str::to_owned)).collect()
        }
        let turns = |t: &Table, b: &str, p: u32| turns_avoiding(t, b, p, "");
        let some = |a: &str| Some(a.to_owned());
        assert_eq!(turns(&t, "b", 2), [some("a2"), some("a0"), some("a2"), some("a0")]);
        assert_eq!(turns(&t, "b", 1), vec![some("a2"); 4], "n1 is down: only its other replica");
        // Buckets of n = 1 have one replica: the first of the list.
        assert_eq!(turns(&t, "one", 1), [None, None, None, None], "its only replica is down");
        assert_eq!(turns(&t, "one", 2), vec![some("a2"); 4]);
        // An address the client could not reach is avoided.
        assert_eq!(turns_avoiding(&t, "b", 0, "a0"), [None, None, None, None]);
        assert_eq!(turns_avoiding(&t, "b", 2, "a0"), vec![some("a2"); 4]);
        assert_eq!(turns_avoiding(&t, "b", 3, "a0"), [None, None, None, None], "n1 is down too");
    }

    #[test]
    fn bad_tables_are_refused() {
        let mut r = reply();
        r.partitions = 3;
        assert!(Table::from_proto(r).is_err());
        let mut r = reply();
        r.replicas.pop();
        assert!(Table::from_proto(r).is_err());
        let mut r = reply();
        r.replicas[0] = 7;
        assert!(Table::from_proto(r).is_err());
        let mut r = reply();
        r.depth = 0;
        r.replicas.clear();
        assert!(Table::from_proto(r).is_err());
    }
}
