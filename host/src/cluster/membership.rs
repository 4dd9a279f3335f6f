//! Membership and failure detection, by gossip (chitchat: Scuttlebutt
//! reconciliation with phi-accrual failure detection).
//!
//! Every node gossips over UDP on the same port number as its gRPC
//! listener, so an operator names one address per node. Each node
//! announces a few small keys about itself (never blobs: a gossip message
//! is one datagram):
//!
//! | key | value |
//! |---|---|
//! | `addr` | gRPC address peers and clients use |
//! | `zone` | failure domain |
//! | `status` | `joining`, `up` or `leaving` |
//! | `meta:ring`, `meta:buckets`, `meta:plugins`, `meta:keys` | digests of cluster metadata (never secrets); a peer with another digest is synced over gRPC |
//! | `remove:<node>` | an operator asked to remove that (down) node |
//! | `hints` | how many hints it holds for other nodes |
//! | `partitions` | its ring's partition count: nodes with another count are not of this cluster |
//! | `transferring` | partitions it still hands to their new owners (`3,7-9`); reads of them ask it too |
//!
//! A background task reads chitchat's state a few times per gossip round
//! and publishes a [`Members`] snapshot, so the rest of the node never
//! touches chitchat's lock. A node restarts with a new generation (its
//! start time), and the snapshot keeps only the newest generation of each
//! node id.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::net::{Faults, FaultyUdp};
use crate::ring::NodeId;
use crate::{Error, Result};

/// Phi above which chitchat calls a node dead.
const PHI_THRESHOLD: f64 = 8.0;

/// A node's announced lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Started, not yet given partitions.
    Joining,
    /// Owns partitions (or may, once the claimant adds it).
    Up,
    /// Asked to leave; being removed from the ring.
    Leaving,
}

impl Status {
    /// The word operators see.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Up => "up",
            Status::Leaving => "leaving",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "up" => Status::Up,
            "leaving" => Status::Leaving,
            _ => Status::Joining,
        }
    }
}

/// Digests of the metadata a node holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaDigests {
    /// Ring `epoch:claimant`.
    pub ring: String,
    /// Bucket table digest.
    pub buckets: String,
    /// Plugin manifest digest.
    pub plugins: String,
    /// Cluster key digest, `newest-id:hash` (see [`crate::security::KeySet::digest`]).
    pub keys: String,
}

impl MetaDigests {
    /// The epoch of the ring the node announces, if any.
    pub fn ring_epoch(&self) -> Option<u64> {
        self.ring.split_once(':').and_then(|(epoch, _)| epoch.parse().ok())
    }

    /// The newest cluster key id the node announces, if any.
    pub fn newest_key(&self) -> Option<u32> {
        self.keys.split_once(':').and_then(|(id, _)| id.parse().ok())
    }
}

/// What gossip says about one node.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its id.
    pub node_id: NodeId,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// Its zone.
    pub zone: String,
    /// What it announces.
    pub status: Status,
    /// Whether the failure detector hears from it.
    pub live: bool,
    /// Estimated suspicion (silence in units of its mean heartbeat interval,
    /// scaled so that `8` is the death threshold); `None` for this node or
    /// nodes not heard from twice yet.
    pub phi: Option<f64>,
    /// Its metadata digests.
    pub meta: MetaDigests,
    /// Nodes it has asked to remove.
    pub removals: Vec<NodeId>,
    /// Hints it holds for other nodes, as it last announced.
    pub hints: u64,
    /// The partition count of its ring (`None` if it does not say).
    pub partitions: Option<u32>,
    /// Partitions it holds data of that it is handing to their new owners.
    pub transferring: std::collections::BTreeSet<u32>,
}

/// A snapshot of membership, this node included.
#[derive(Clone, Debug, Default)]
pub struct Members {
    /// By node id.
    pub peers: BTreeMap<NodeId, Peer>,
}

impl Members {
    /// A live node that announces a ring newer than `epoch`, and its epoch:
    /// a node on the `epoch` ring has not caught up yet.
    pub fn newer_ring(&self, epoch: u64) -> Option<(&NodeId, u64)> {
        self.peers
            .values()
            .filter(|p| p.live)
            .filter_map(|p| Some((&p.node_id, p.meta.ring_epoch()?)))
            .find(|(_, e)| *e > epoch)
    }

    /// Whether `node` is live.
    pub fn is_live(&self, node: &str) -> bool {
        self.peers.get(node).is_some_and(|p| p.live)
    }

    /// The gRPC address of `node`.
    pub fn addr(&self, node: &str) -> Option<SocketAddr> {
        self.peers.get(node).map(|p| p.addr)
    }

    /// The zone of `node`.
    pub fn zone(&self, node: &str) -> Option<&str> {
        self.peers.get(node).map(|p| p.zone.as_str())
    }
}

/// How to start membership.
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Address the gRPC server listens on (gossip binds UDP on it too).
    pub listen: SocketAddr,
    /// Address others use (gossip advertises it).
    pub advertise: SocketAddr,
    /// Zone.
    pub zone: String,
    /// Other nodes' gRPC addresses.
    pub seeds: Vec<String>,
    /// Gossip round period.
    pub gossip_interval: Duration,
    /// Nodes only gossip with nodes of the same cluster name.
    pub cluster_name: String,
    /// Initial keys (status, metadata digests).
    pub initial: Vec<(String, String)>,
}

/// This node's membership.
pub struct Membership {
    handle: ChitchatHandle,
    view: Arc<ArcSwap<Members>>,
    poller: JoinHandle<()>,
}

impl Membership {
    /// Joins the gossip (binding UDP on the listen port) and starts the
    /// snapshot task.
    /// `transport` replaces UDP (the simulation's network).
    pub async fn start(
        config: MembershipConfig,
        faults: Arc<Faults>,
        transport: Option<Arc<dyn chitchat::transport::Transport>>,
        stopped: watch::Receiver<bool>,
    ) -> Result<Self> {
        let generation = (crate::env::since_epoch().as_nanos() as u64).max(1);
        let id = ChitchatId::new(config.node_id.clone(), generation, config.advertise);
        let chitchat_config = ChitchatConfig {
            chitchat_id: id,
            cluster_id: config.cluster_name.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: PHI_THRESHOLD,
                sampling_window_size: 1_000,
                max_interval: Duration::from_secs(10),
                initial_interval: config.gossip_interval,
                dead_node_grace_period: Duration::from_secs(2 * 3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let mut initial =
            vec![("addr".to_owned(), config.advertise.to_string()), ("zone".to_owned(), config.zone.clone())];
        initial.extend(config.initial.iter().cloned());
        let handle = spawn_chitchat(chitchat_config, initial, &FaultyUdp { faults, inner: transport })
            .await
            .map_err(|e| Error::Internal(format!("cannot start gossip on UDP {}: {e:#}", config.listen)))?;
        let view = Arc::new(ArcSwap::from_pointee(Members::default()));
        let poller = tokio::spawn(poll(handle.chitchat(), Arc::clone(&view), config.gossip_interval, stopped));
        let m = Self { handle, view, poller };
        m.refresh_now().await;
        Ok(m)
    }

    /// The latest snapshot.
    pub fn view(&self) -> Arc<Members> {
        self.view.load_full()
    }

    /// Sets one of this node's gossiped keys.
    pub async fn set(&self, key: &str, value: &str) {
        debug_assert!(key.len() + value.len() < 512, "gossip values must stay small");
        let cc = self.handle.chitchat();
        let mut cc = cc.lock().await;
        let state = cc.self_node_state();
        if state.get(key) != Some(value) {
            state.set(key, value);
        }
    }

    /// Removes one of this node's gossiped keys.
    pub async fn delete(&self, key: &str) {
        let cc = self.handle.chitchat();
        let mut cc = cc.lock().await;
        if cc.self_node_state().get(key).is_some() {
            cc.self_node_state().delete(key);
        }
    }

    /// Gossips with `addr` right away (used to join a cluster through a seed
    /// that is not in the configured seed list).
    pub fn gossip_with(&self, addr: SocketAddr) -> Result<()> {
        self.handle.gossip(addr).map_err(|e| Error::Internal(format!("cannot gossip with {addr}: {e:#}")))
    }

    /// Rebuilds the snapshot now instead of at the next poll.
    pub async fn refresh_now(&self) {
        let mut seen = HashMap::new();
        let snapshot = snapshot(&self.handle.chitchat(), &mut seen).await;
        self.view.store(Arc::new(snapshot));
    }

    /// Stops gossiping.
    pub fn shutdown(&self) {
        self.poller.abort();
        if let Err(e) = self.handle.initiate_shutdown() {
            tracing::debug!(error = %e, "gossip shutdown");
        }
    }
}

/// Heartbeat last seen per gossip identity, and when it last went up.
type Heartbeats = HashMap<ChitchatId, (u64, Instant)>;

async fn poll(
    cc: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    view: Arc<ArcSwap<Members>>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut heartbeats = Heartbeats::new();
    let period = (interval / 3).max(Duration::from_millis(20));
    loop {
        let members = snapshot(&cc, &mut heartbeats).await;
        let counts = members.peers.values().fold([0usize; 4], |mut c, p| {
            let i = if !p.live { 3 } else { p.status as usize };
            c[i] += 1;
            c
        });
        for (status, n) in ["joining", "up", "leaving", "down"].iter().zip(counts) {
            metrics::gauge!("concord_cluster_members", "status" => *status).set(n as f64);
        }
        view.store(Arc::new(members));
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// Reads chitchat's state into a [`Members`] snapshot. The lock is held only
/// while copying.
async fn snapshot(cc: &Arc<tokio::sync::Mutex<chitchat::Chitchat>>, heartbeats: &mut Heartbeats) -> Members {
    let now = Instant::now();
    let cc = cc.lock().await;
    let self_id = cc.self_chitchat_id().clone();
    let live: std::collections::HashSet<&ChitchatId> = cc.live_nodes().collect();
    // Newest generation of each node id.
    let mut newest: BTreeMap<&str, &ChitchatId> = BTreeMap::new();
    for id in cc.node_states().keys() {
        let e = newest.entry(&*id.node_id).or_insert(id);
        if id.generation_id > e.generation_id {
            *e = id;
        }
    }
    let mut peers = BTreeMap::new();
    for (node_id, id) in newest {
        let Some(state) = cc.node_state(id) else { continue };
        let Some(addr) = state.get("addr").and_then(|a| a.parse().ok()) else { continue };
        let is_self = *id == self_id;
        let hb = u64::from(state.heartbeat());
        let entry = heartbeats.entry(id.clone()).or_insert((hb, now));
        if hb > entry.0 {
            *entry = (hb, now);
        }
        let phi = if is_self {
            None
        } else {
            cc.failure_detection_timeout(id).map(|timeout| {
                PHI_THRESHOLD * now.duration_since(entry.1).as_secs_f64() / timeout.as_secs_f64().max(1e-3)
            })
        };
        let removals = state.iter_prefix("remove:").map(|(k, _)| k.trim_start_matches("remove:").to_owned()).collect();
        peers.insert(
            node_id.to_owned(),
            Peer {
                node_id: node_id.to_owned(),
                addr,
                zone: state.get("zone").unwrap_or("default").to_owned(),
                status: Status::parse(state.get("status").unwrap_or("joining")),
                live: is_self || live.contains(id),
                phi,
                meta: MetaDigests {
                    ring: state.get("meta:ring").unwrap_or_default().to_owned(),
                    buckets: state.get("meta:buckets").unwrap_or_default().to_owned(),
                    plugins: state.get("meta:plugins").unwrap_or_default().to_owned(),
                    keys: state.get("meta:keys").unwrap_or_default().to_owned(),
                },
                removals,
                hints: state.get("hints").and_then(|h| h.parse().ok()).unwrap_or(0),
                partitions: state.get("partitions").and_then(|p| p.parse().ok()),
                transferring: crate::handoff::transfer::decode_partitions(
                    state.get("transferring").unwrap_or_default(),
                ),
            },
        );
    }
    heartbeats.retain(|id, _| cc.node_states().contains_key(id));
    Members { peers }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, ring: &str, live: bool) -> Peer {
        Peer {
            node_id: id.into(),
            addr: "127.0.0.1:7000".parse().unwrap(),
            zone: "default".into(),
            status: Status::Up,
            live,
            phi: None,
            meta: MetaDigests { ring: ring.into(), ..Default::default() },
            removals: Vec::new(),
            hints: 0,
            partitions: None,
            transferring: Default::default(),
        }
    }

    #[test]
    fn a_live_peer_on_a_newer_ring_is_found() {
        let members = |peers: Vec<Peer>| Members { peers: peers.into_iter().map(|p| (p.node_id.clone(), p)).collect() };
        let same = members(vec![peer("a", "3:a", true), peer("b", "3:a", true)]);
        assert_eq!(same.newer_ring(3), None);
        // A dead peer's announcement is not news; an unparsable one is skipped.
        let dead = members(vec![peer("a", "3:a", true), peer("b", "4:a", false), peer("c", "garbage", true)]);
        assert_eq!(dead.newer_ring(3), None);
        let newer = members(vec![peer("a", "3:a", true), peer("b", "4:a", true)]);
        assert_eq!(newer.newer_ring(3), Some((&"b".to_string(), 4)));
        assert_eq!(newer.newer_ring(4), None);
    }
}
