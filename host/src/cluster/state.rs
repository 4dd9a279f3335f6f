//! The cluster as this node sees it: the ring, membership, and the worker
//! that keeps cluster metadata converged and the ring in step with
//! membership.
//!
//! **Metadata** (ring, bucket properties, plugin manifest) is small and
//! versioned. Nodes gossip only digests of it; a node that sees a live peer
//! with another digest fetches the peer's copy over gRPC and merges it: the
//! superseding ring wins, bucket properties merge by version, and missing
//! plugins are fetched, checked against their sha256 and compiled. Merges
//! are commutative, so every live node ends with the same metadata within
//! a few gossip rounds.
//!
//! **Ring changes** are made by one node at a time, the *claimant*: the
//! live ring member with the smallest id that is not leaving (as in Riak).
//! It acts only when every live peer already agrees on the ring, so changes
//! never race each other. It adds live nodes that are joining (or up but not
//! in the ring), and removes nodes that are leaving or that an operator
//! asked to remove while they are down. Every other node just adopts the
//! rings it learns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwap;
use concord_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::membership::{Members, Membership, Peer, Status};
use crate::buckets::Buckets;
use crate::net::Net;
use crate::plugins::Plugins;
use crate::ring::{Member, NodeId, Ring};
use crate::security::{KeySet, Keyring, Purpose, now_ms};
use crate::storage::{Space, Store};
use crate::{Error, Result};

const RING_KEY: &[u8] = b"ring";
const LEAVING_KEY: &[u8] = b"leaving";
const SEEDS_KEY: &[u8] = b"seeds";
const RING_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct PersistedRing {
    format: u32,
    ring: Ring,
}

/// Loads the ring persisted in `store`, if any.
pub fn load_ring(store: &dyn Store) -> Result<Option<Ring>> {
    let Some(bytes) = store.get(Space::Meta, RING_KEY)? else { return Ok(None) };
    decode_ring(&bytes).map(Some)
}

pub(crate) fn decode_ring(bytes: &[u8]) -> Result<Ring> {
    let p: PersistedRing =
        serde_json::from_slice(bytes).map_err(|e| Error::Corruption(format!("ring does not decode: {e}")))?;
    if p.format != RING_FORMAT {
        return Err(Error::Corruption(format!("ring has unknown format {}", p.format)));
    }
    p.ring.check().map_err(|e| Error::Corruption(format!("ring at epoch {} is not usable: {e}", p.ring.epoch())))?;
    Ok(p.ring)
}

pub(crate) fn encode_ring(ring: &Ring) -> Vec<u8> {
    serde_json::to_vec(&PersistedRing { format: RING_FORMAT, ring: ring.clone() }).expect("ring serializes")
}

/// Refuses a ring (`theirs`) whose partition count differs from this
/// node's.
fn check_partitions(theirs: &Ring, ours: &Ring) -> Result<()> {
    if theirs.partitions() == ours.partitions() {
        return Ok(());
    }
    Err(Error::FailedPrecondition(format!(
        "the cluster's ring (epoch {}) has {} partitions and this node {}; a cluster's partition count is fixed when \
         it is created: start this node with partitions = {} and an empty data directory to join it",
        theirs.epoch(),
        theirs.partitions(),
        ours.partitions(),
        theirs.partitions()
    )))
}

/// A bearer token passed on to a seed.
pub type Credentials = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// What a metadata tag covers.
fn metadata_parts(md: &pb::ClusterMetadata) -> [&[u8]; 5] {
    [&md.ring, &md.buckets, &md.plugins, &md.keys, b"metadata"]
}

/// Seeds a node learned through `cluster join`, kept for its next start.
pub fn load_seeds(store: &dyn Store) -> Result<Vec<String>> {
    Ok(match store.get(Space::Meta, SEEDS_KEY)? {
        Some(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::Corruption(format!("the remembered seed list does not decode: {e}")))?,
        None => Vec::new(),
    })
}

/// The node's own data, as `cluster join` sees it: a node that holds data
/// refuses to join another cluster unless told to discard it.
pub trait LocalData: Send + Sync {
    /// Whether this node stores any object or hint.
    fn holds_data(&self) -> Result<bool>;
    /// Drops every object and hint, and takes a new incarnation so that the
    /// node's new writes never reuse the dots of its old self.
    fn discard(&self) -> Result<()>;
}

/// The cluster state of one node.
pub struct Cluster {
    node_id: NodeId,
    zone: String,
    advertise: SocketAddr,
    ring: ArcSwap<Ring>,
    store: Arc<dyn Store>,
    membership: Membership,
    buckets: Arc<Buckets>,
    plugins: Arc<Plugins>,
    net: Arc<Net>,
    /// Set once this node was asked to leave.
    leaving: AtomicBool,
    gossip_interval: Duration,
    /// Serialises ring changes (adopting, claiming), held while the new
    /// ring is flushed (off the tokio workers).
    ring_write: tokio::sync::Mutex<()>,
    /// Whether this node holds a ring the cluster made (epoch above 0): only
    /// then does it serve reads and writes.
    ready: watch::Sender<bool>,
    /// Set while `cluster join --discard-data` deletes this node's data:
    /// the node serves nothing until it holds the new cluster's ring.
    discarding: AtomicBool,
    /// Peers already reported for gossiping with another partition count.
    mismatched: std::sync::Mutex<std::collections::BTreeSet<NodeId>>,
    /// The cluster secret.
    keys: Arc<Keyring>,
    /// The seeds this node was started with.
    seeds: Vec<String>,
}

impl Cluster {
    /// Wires the cluster state; [`Cluster::spawn_worker`] starts it moving.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: NodeId,
        zone: String,
        advertise: SocketAddr,
        ring: Ring,
        store: Arc<dyn Store>,
        membership: Membership,
        buckets: Arc<Buckets>,
        plugins: Arc<Plugins>,
        net: Arc<Net>,
        gossip_interval: Duration,
        keys: Arc<Keyring>,
        seeds: Vec<String>,
    ) -> Arc<Self> {
        let (ready, _) = watch::channel(ring.epoch() > 0);
        Arc::new(Self {
            node_id,
            zone,
            advertise,
            ready,
            discarding: AtomicBool::new(false),
            mismatched: Default::default(),
            ring: ArcSwap::from_pointee(ring),
            leaving: AtomicBool::new(matches!(store.get(Space::Meta, LEAVING_KEY), Ok(Some(_)))),
            store,
            membership,
            buckets,
            plugins,
            net,
            gossip_interval,
            ring_write: tokio::sync::Mutex::new(()),
            keys,
            seeds,
        })
    }

    /// The cluster secret.
    pub fn keys(&self) -> &Arc<Keyring> {
        &self.keys
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's zone.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The current ring.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.load_full()
    }

    /// Whether this node has a ring the cluster made. A node started with
    /// seeds has only a placeholder ring of its own (epoch 0) until it meets
    /// them, and must not serve on it: what it acknowledged there nobody
    /// else could find.
    pub fn is_ready(&self) -> bool {
        self.ring.load().epoch() > 0 && !self.discarding.load(Ordering::Acquire)
    }

    /// Tells [`Cluster::ready_watch`] what [`Cluster::is_ready`] says now.
    fn publish_ready(&self) {
        let ready = self.is_ready();
        self.ready.send_if_modified(|r| std::mem::replace(r, ready) != ready);
    }

    /// Follows [`Cluster::is_ready`].
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The error a node that is not ready answers requests with.
    pub fn not_ready(&self) -> Error {
        Error::NotReady(format!(
            "{} is joining the cluster and has not received its ring yet, so it cannot serve reads or writes; it \
             will once it reaches one of its seeds (ask another node meanwhile)",
            self.node_id
        ))
    }

    /// Sets one of this node's keys in gossip (small values only).
    pub async fn announce(&self, key: &str, value: &str) {
        self.membership.set(key, value).await;
    }

    /// The latest membership snapshot.
    pub fn members(&self) -> Arc<Members> {
        self.membership.view()
    }

    /// The peer calls.
    pub fn net(&self) -> &Arc<Net> {
        &self.net
    }

    /// Address of `node`: from gossip, or our own.
    pub fn addr_of(&self, node: &str) -> Option<SocketAddr> {
        if node == self.node_id {
            return Some(self.advertise);
        }
        self.membership.view().addr(node)
    }

    fn own_status(&self, ring: &Ring) -> Status {
        if self.leaving.load(Ordering::Relaxed) {
            Status::Leaving
        } else if ring.is_member(&self.node_id) {
            Status::Up
        } else {
            Status::Joining
        }
    }

    /// Replaces the ring if `ring` supersedes it (or unconditionally with
    /// `force`). Returns whether it changed.
    pub async fn adopt_ring(&self, ring: Ring, force: bool) -> Result<bool> {
        let _guard = self.ring_write.lock().await;
        let current = self.ring.load();
        if !force && !ring.supersedes(&current) {
            return Ok(false);
        }
        // Objects are stored by partition: another count would hide every
        // key this node holds (and file new ones where no other node looks),
        // whether or not this node has served yet.
        check_partitions(&ring, &current)?;
        if ring == **current {
            return Ok(false);
        }
        // Durable before it is used.
        self.persist(RING_KEY, encode_ring(&ring)).await?;
        tracing::info!(
            epoch = ring.epoch(),
            claimant = ring.claimant(),
            members = ring.members().len(),
            owned_here = ring.owned_by(&self.node_id),
            "ring changed"
        );
        self.ring.store(Arc::new(ring));
        self.publish_ready();
        Ok(true)
    }

    /// Stores `value` at `key` in the metadata space and flushes the
    /// engine, on a blocking thread: a flush writes out the whole engine.
    async fn persist(&self, key: &'static [u8], value: Vec<u8>) -> Result<()> {
        let store = Arc::clone(&self.store);
        crate::env::blocking(move || -> Result<()> {
            store.insert(Space::Meta, key, &value)?;
            Ok(store.flush()?)
        })
        .await?
    }

    /// Publishes this node's status and metadata digests in gossip.
    async fn publish(&self) {
        let ring = self.ring();
        self.membership.set("status", self.own_status(&ring).as_str()).await;
        self.membership.set("meta:ring", &ring.digest()).await;
        self.membership.set("meta:buckets", &self.buckets.digest()).await;
        self.membership.set("meta:plugins", &self.plugins.registry().digest()).await;
        self.membership.set("meta:keys", &self.keys.current().digest()).await;
    }

    /// This node's metadata, for a peer.
    pub fn metadata(&self) -> pb::ClusterMetadata {
        let keys = self.keys.current();
        let mut md = pb::ClusterMetadata {
            ring: encode_ring(&self.ring()).into(),
            buckets: self.buckets.export().into(),
            plugins: self.plugins.registry().export().into(),
            keys: keys.encode().into(),
            key_id: 0,
            tag: Default::default(),
        };
        if let Some(k) = keys.signing() {
            md.key_id = k.id();
            md.tag = k.tag(Purpose::Peer, &metadata_parts(&md)).to_vec().into();
        }
        md
    }

    /// Checks a peer's metadata tag and adopts its keys.
    fn check_metadata(&self, md: &pb::ClusterMetadata, from: SocketAddr) -> Result<()> {
        let ours = self.keys.current();
        let signer = ours.accepting(md.key_id, now_ms()).ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "{from} signs its metadata with cluster key {}, which this node does not hold",
                md.key_id
            ))
        })?;
        if !signer.verify(Purpose::Peer, &metadata_parts(md), &md.tag) {
            return Err(Error::FailedPrecondition(format!(
                "{from} answered with metadata that fails its tag; it does not hold this cluster's secret"
            )));
        }
        let theirs = KeySet::decode(&md.keys).map_err(|e| Error::invalid(format!("{from}: {e}")))?;
        if self.keys.merge(&theirs, now_ms())? {
            tracing::info!(peer = %from, keys = ?self.keys.current().ids(), "cluster keys updated from a peer");
        }
        Ok(())
    }

    /// Merges a peer's metadata. Missing plugins are fetched from `from`
    /// and compiled *before* bucket properties are merged, so a binding
    /// never reaches this node ahead of the plugin it names.
    async fn merge_metadata(&self, md: pb::ClusterMetadata, from: SocketAddr) -> Result<()> {
        self.check_metadata(&md, from)?;
        self.adopt_ring(decode_ring(&md.ring)?, false).await?;
        for info in self.plugins.registry().missing(&md.plugins)? {
            let r = info.plugin_ref();
            if let Err(e) = self.fetch_plugin(info, from).await {
                tracing::warn!(plugin = %r, peer = %from, error = %e, "fetching a plugin from a peer failed; retrying next round");
            }
        }
        // A binding waits until the plugins it names are here. The import
        // flushes the engine when it changes the table, so it runs on a
        // blocking thread.
        let (plugins, buckets, table) = (Arc::clone(&self.plugins), Arc::clone(&self.buckets), md.buckets);
        let (changed, deferred) = crate::env::blocking(move || {
            let registry = plugins.registry();
            buckets.import(&table, |props| props.plugins().all(|r| registry.contains(r)))
        })
        .await??;
        if !deferred.is_empty() {
            tracing::debug!(buckets = ?deferred, peer = %from, "bucket properties wait for the plugins they name");
        }
        if changed > 0 {
            tracing::info!(changed, peer = %from, "bucket properties updated from a peer");
        }
        Ok(())
    }

    async fn fetch_plugin(&self, info: crate::plugins::PluginInfo, from: SocketAddr) -> Result<()> {
        let r = info.plugin_ref();
        let req = pb::FetchPluginRequest { name: r.name.clone(), version: r.version.clone() };
        let fetched = self
            .net
            .call(from, Duration::from_secs(10), |mut c| async move { c.fetch_plugin(req).await })
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        let plugins = Arc::clone(&self.plugins);
        let bytes = fetched.wasm.to_vec();
        // Compiling blocks; keep it off the async workers.
        crate::env::blocking(move || plugins.registry().add_remote(info, &bytes)).await??;
        tracing::info!(plugin = %r, peer = %from, "plugin fetched from a peer");
        Ok(())
    }

    /// One round of the worker: publish, sync metadata with peers whose
    /// digests differ, and claim if this node is the claimant.
    async fn round(&self) {
        self.publish().await;
        let members = self.members();
        if self.keys.is_empty() {
            self.bootstrap_keys(&members).await;
        }
        let me = members.peers.get(&self.node_id).cloned();
        let mut agree = true;
        for peer in members.peers.values().filter(|p| p.live && p.node_id != self.node_id) {
            if !self.same_partitions(peer) {
                continue;
            }
            let mine = me.as_ref().map(|m| &m.meta);
            if mine == Some(&peer.meta) || peer.meta.ring.is_empty() {
                continue;
            }
            if peer.meta.ring != self.ring().digest() {
                agree = false;
            }
            let fetched = self
                .net
                .call(peer.addr, self.gossip_interval.max(Duration::from_secs(2)), |mut c| async move {
                    c.fetch_metadata(pb::FetchMetadataRequest {}).await
                })
                .await;
            match fetched {
                Ok(md) => {
                    if let Err(e) = self.merge_metadata(md, peer.addr).await {
                        tracing::warn!(peer = %peer.node_id, error = %e, "merging a peer's metadata failed");
                    }
                }
                Err(e) => tracing::debug!(peer = %peer.node_id, error = %e, "fetching a peer's metadata failed"),
            }
        }
        if agree {
            self.claim(&members).await;
        }
        self.update_signing(&members);
        // Removal requests this node made are done once the ring has let the
        // node go; dropping them keeps a later return of it from being
        // undone.
        if let Some(me) = &me {
            let ring = self.ring();
            for removed in me.removals.iter().filter(|r| !ring.is_member(r)) {
                self.membership.delete(&format!("remove:{removed}")).await;
            }
        }
        self.publish().await;
    }

    /// Makes the secret of a new cluster whose nodes all started with seeds
    /// and none with keys: the node with the smallest id does, once every
    /// one of its seeds is live in gossip and announces no keys either. The
    /// others then fetch the keys from their seeds.
    async fn bootstrap_keys(&self, members: &Members) {
        if self.ring().epoch() > 0 || self.seeds.is_empty() {
            // A member of a cluster, or a node that joins one: it waits to
            // be given the keys.
            return;
        }
        let mut seed_addrs = Vec::new();
        for seed in &self.seeds {
            match tokio::net::lookup_host(seed.as_str()).await.map(|mut a| a.next()) {
                Ok(Some(a)) => seed_addrs.push(a),
                _ => return,
            }
        }
        let live: Vec<&Peer> = members.peers.values().filter(|p| p.live).collect();
        let every_seed_seen = seed_addrs.iter().all(|a| live.iter().any(|p| p.addr == *a));
        let nobody_has_keys = live.iter().all(|p| p.meta.newest_key().unwrap_or(0) == 0);
        let smallest = live.iter().map(|p| p.node_id.as_str()).min() == Some(self.node_id.as_str());
        if every_seed_seen && nobody_has_keys && smallest {
            match self.keys.create_if_empty() {
                Ok(true) => tracing::info!(nodes = live.len(), "created the cluster secret of a new cluster"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "creating the cluster secret failed"),
            }
        }
    }

    /// Signs with the newest key every live member announces, and drops
    /// keys whose grace period has ended.
    fn update_signing(&self, members: &Members) {
        let newest = members
            .peers
            .values()
            .filter(|p| p.live && p.node_id != self.node_id)
            .filter_map(|p| p.meta.newest_key())
            .chain([self.keys.current().newest()])
            .min()
            .unwrap_or(0);
        self.keys.set_signing_limit(newest);
        if let Err(e) = self.keys.expire(now_ms()) {
            tracing::warn!(error = %e, "dropping expired cluster keys failed");
        }
    }

    /// Whether `peer`'s ring has this node's partition count (or it does not
    /// say). A node configured with another count can never share a ring
    /// with this one: it is left out of ring agreement, metadata sync and
    /// claims (so it cannot stall the cluster's ring changes), and a warning
    /// names it once.
    fn same_partitions(&self, peer: &Peer) -> bool {
        let ours = self.ring().partitions();
        match peer.partitions {
            Some(theirs) if theirs != ours => {
                let mut warned = self.mismatched.lock().unwrap_or_else(|p| p.into_inner());
                if warned.insert(peer.node_id.clone()) {
                    tracing::warn!(
                        peer = %peer.node_id,
                        theirs,
                        ours,
                        "a node gossips with a ring of another partition count; it cannot join this node's cluster \
                         (a cluster's partition count is fixed when it is created), so it is ignored"
                    );
                }
                false
            }
            _ => true,
        }
    }

    /// Who makes ring changes: the live ring member with the smallest id
    /// that is not leaving.
    fn claimant(&self, ring: &Ring, members: &Members) -> Option<NodeId> {
        ring.members()
            .keys()
            .find(|m| {
                if **m == self.node_id {
                    return !self.leaving.load(Ordering::Relaxed);
                }
                members.peers.get(*m).is_some_and(|p| p.live && p.status != Status::Leaving)
            })
            .cloned()
    }

    /// If this node is the claimant, brings the ring in step with
    /// membership.
    async fn claim(&self, members: &Members) {
        let ring = self.ring();
        if self.claimant(&ring, members).as_deref() != Some(self.node_id.as_str()) {
            return;
        }
        let mut desired: BTreeMap<NodeId, Member> = ring.members().clone();
        for peer in members.peers.values() {
            if !peer.live || !self.same_partitions(peer) {
                continue;
            }
            match peer.status {
                Status::Leaving => {
                    desired.remove(&peer.node_id);
                }
                Status::Joining | Status::Up => {
                    desired.entry(peer.node_id.clone()).or_insert_with(|| Member { zone: peer.zone.clone() });
                }
            }
            for removed in &peer.removals {
                if !members.is_live(removed) {
                    desired.remove(removed);
                }
            }
        }
        if desired.is_empty() || &desired == ring.members() {
            return;
        }
        let next = ring.claim(&desired, &self.node_id);
        match self.adopt_ring(next, false).await {
            Ok(true) => tracing::info!(members = desired.len(), "claimed a new ring"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "storing a claimed ring failed"),
        }
    }

    /// Runs the cluster worker until `stopped`.
    pub fn spawn_worker(self: &Arc<Self>, mut stopped: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                this.round().await;
                tokio::select! {
                    _ = tokio::time::sleep(this.gossip_interval) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
            }
        })
    }

    /// Joins the cluster `seed` belongs to: adopts its ring, remembers the
    /// seed, and gossips with it until it appears. Returns the number of
    /// members this node then sees.
    pub async fn join(
        &self,
        seed: &str,
        discard_data: bool,
        local: &dyn LocalData,
        credentials: Option<Credentials>,
    ) -> Result<usize> {
        let seed_addr: SocketAddr = tokio::net::lookup_host(seed)
            .await
            .map_err(|e| Error::invalid(format!("cannot resolve seed {seed}: {e}")))?
            .next()
            .ok_or_else(|| Error::invalid(format!("seed {seed} resolves to no address")))?;
        if seed_addr == self.advertise {
            return Err(Error::invalid("a node cannot join itself"));
        }
        let ring = self.ring();
        if ring.is_member(&self.node_id) && ring.members().keys().any(|m| *m != self.node_id) {
            return Err(Error::FailedPrecondition(format!(
                "this node is already in a cluster of {} nodes; leave it first",
                ring.members().len()
            )));
        }
        // The seed's keys come first: every call between members carries
        // them. Ours come back if the join goes no further.
        let previous = self.keys.current();
        let keys = self.fetch_keys(seed_addr, credentials).await?;
        self.keys.replace(keys)?;
        let restore = |e: Error| {
            if let Err(e) = self.keys.replace((*previous).clone()) {
                tracing::warn!(error = %e, "restoring this node's cluster keys after a failed join failed");
            }
            e
        };
        let md = self
            .net
            .call(seed_addr, Duration::from_secs(5), |mut c| async move {
                c.fetch_metadata(pb::FetchMetadataRequest {}).await
            })
            .await
            .map_err(|e| Error::Unavailable {
                op: "join",
                needed: 1,
                got: 0,
                total: 1,
                detail: format!("; cannot reach seed {seed}: {e}"),
            })
            .map_err(restore)?;
        let theirs = decode_ring(&md.ring).map_err(restore)?;
        check_partitions(&theirs, &ring).map_err(restore)?;
        if local.holds_data().map_err(restore)? {
            if !discard_data {
                return Err(restore(Error::FailedPrecondition(format!(
                    "{} holds data of its own; in the cluster of {seed} its keys would be invisible, and its old \
                     versions could come back over newer ones. Join with --discard-data to delete its data and join \
                     empty",
                    self.node_id
                ))));
            }
            // Nothing is served from here until the new ring is adopted, so
            // no write lands between the discard and the join.
            // The guard ends the pause however this ends, also when the
            // caller gives up while the new ring is being flushed.
            let pause = Discarding::start(self);
            let discarded = match local.discard() {
                Ok(()) => self.adopt_ring(theirs, true).await,
                Err(e) => Err(e),
            };
            drop(pause);
            discarded?;
            tracing::warn!(seed, "discarded this node's data to join another cluster");
        } else {
            self.adopt_ring(theirs, true).await?;
        }
        // A node that left may join again; only now, so that a join that
        // fails does not hand it back to the cluster it left.
        if self.leaving.swap(false, Ordering::Relaxed) {
            self.store.remove(Space::Meta, LEAVING_KEY)?;
        }
        self.merge_metadata(md, seed_addr).await?;
        let mut seeds = load_seeds(&*self.store)?;
        if !seeds.contains(&seed.to_owned()) {
            seeds.push(seed.to_owned());
            self.persist(SEEDS_KEY, serde_json::to_vec(&seeds).expect("seeds serialize")).await?;
        }
        self.publish().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.membership.gossip_with(seed_addr)?;
            self.membership.refresh_now().await;
            let members = self.members();
            if members.peers.values().any(|p| p.addr == seed_addr && p.live) {
                return Ok(members.peers.len());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(10_000));
            }
            tokio::time::sleep(self.gossip_interval / 2).await;
        }
    }

    /// Asks `seed` for the cluster's keys, over its Admin service with
    /// `credentials` (an admin's bearer token), or with this node's
    /// certificate when TLS is on.
    pub async fn fetch_keys(&self, seed: SocketAddr, credentials: Option<Credentials>) -> Result<KeySet> {
        let mut request = tonic::Request::new(pb::ClusterSecretRequest {});
        request.set_timeout(Duration::from_secs(5));
        if let Some(c) = credentials {
            request.metadata_mut().insert("authorization", c);
        }
        let fail = |detail: String| Error::Unavailable { op: "join", needed: 1, got: 0, total: 1, detail };
        let answer = tokio::time::timeout(Duration::from_secs(5), self.net.admin(seed).cluster_secret(request))
            .await
            .map_err(|_| fail(format!("; seed {seed} did not answer for the cluster secret")))?;
        let secret = match answer {
            Ok(r) => r.into_inner().secret,
            Err(s) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
                return Err(Error::FailedPrecondition(format!(
                    "seed {seed} did not hand out the cluster secret ({}); join with an admin token, give this \
                     node TLS certificates from the cluster's CA, or start it with security.cluster_secret set to \
                     what `concord cluster secret` prints on a member",
                    s.message()
                )));
            }
            Err(s) => return Err(fail(format!("; asking seed {seed} for the cluster secret failed: {}", s.message()))),
        };
        KeySet::import(&secret).map_err(|e| Error::Internal(format!("seed {seed} sent a bad cluster secret: {e}")))
    }

    /// Asks `node` (this node when `None`) to leave the ring. A live node is
    /// asked through its own Admin service; a down node is marked for
    /// removal in gossip, and the claimant drops it.
    pub async fn leave(&self, node: Option<&str>) -> Result<()> {
        let target = node.filter(|n| !n.is_empty()).unwrap_or(&self.node_id);
        if target == self.node_id {
            // Remembered across restarts: a node that left stays out.
            // Set first: the flush finishes even if the caller gives up
            // waiting for it, and the flag must agree with the disk.
            self.leaving.store(true, Ordering::Relaxed);
            if let Err(e) = self.persist(LEAVING_KEY, b"1".to_vec()).await {
                self.leaving.store(false, Ordering::Relaxed);
                return Err(e);
            }
            self.publish().await;
            tracing::info!("leaving the ring");
            return Ok(());
        }
        let members = self.members();
        let known = members.peers.contains_key(target) || self.ring().is_member(target);
        if !known {
            return Err(Error::NotFound(format!("node {target} is not a member of this cluster")));
        }
        if let Some(peer) = members.peers.get(target).filter(|p| p.live) {
            let req = pb::LeaveRequest { node_id: target.to_owned() };
            let unreachable = |why: String| Error::Unavailable {
                op: "leave",
                needed: 1,
                got: 0,
                total: 1,
                detail: format!("; cannot reach {target}: {why}"),
            };
            let call = async {
                let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", peer.addr))
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                admin.leave(req).await.map_err(Error::Remote)
            };
            return match tokio::time::timeout(Duration::from_secs(5), call).await {
                Ok(r) => r.map(|_| ()),
                Err(_) => Err(unreachable("no answer within 5 s".into())),
            };
        }
        self.membership.set(&format!("remove:{target}"), "1").await;
        tracing::info!(node = target, "asked the claimant to remove a down node");
        Ok(())
    }

    /// The `ClusterStatus` answer.
    pub fn status(&self) -> pb::ClusterStatusResponse {
        let ring = self.ring();
        let members = self.members();
        let mut nodes: BTreeMap<NodeId, pb::NodeStatus> = BTreeMap::new();
        for peer in members.peers.values() {
            let is_self = peer.node_id == self.node_id;
            let status = if is_self {
                self.own_status(&ring).as_str()
            } else if !peer.live {
                "down"
            } else {
                peer.status.as_str()
            };
            let parse = |d: &str| d.split(':').next().and_then(|v| v.parse().ok()).unwrap_or(0);
            nodes.insert(
                peer.node_id.clone(),
                pb::NodeStatus {
                    node_id: peer.node_id.clone(),
                    address: peer.addr.to_string(),
                    zone: peer.zone.clone(),
                    status: status.into(),
                    phi: peer.phi,
                    partitions: ring.owned_by(&peer.node_id) as u32,
                    ring_epoch: if is_self { ring.epoch() } else { peer.meta.ring_epoch().unwrap_or(0) },
                    buckets_version: if is_self { self.buckets.version() } else { parse(&peer.meta.buckets) },
                    plugins_version: if is_self {
                        self.plugins.registry().list().len() as u64
                    } else {
                        parse(&peer.meta.plugins)
                    },
                    is_self,
                    hints: peer.hints,
                    transferring: peer.transferring.len() as u32,
                },
            );
        }
        // Ring members gossip has never heard from.
        for (m, info) in ring.members() {
            nodes.entry(m.clone()).or_insert_with(|| pb::NodeStatus {
                node_id: m.clone(),
                address: String::new(),
                zone: info.zone.clone(),
                status: "down".into(),
                phi: None,
                partitions: ring.owned_by(m) as u32,
                ring_epoch: 0,
                buckets_version: 0,
                plugins_version: 0,
                is_self: false,
                hints: 0,
                transferring: 0,
            });
        }
        pb::ClusterStatusResponse {
            nodes: nodes.into_values().collect(),
            partitions: ring.partitions(),
            ring_epoch: ring.epoch(),
            tripped_plugins: self
                .plugins
                .tripped(|bucket| self.buckets.get(bucket).version)
                .into_iter()
                .map(|t| pb::PluginBreaker {
                    bucket: t.bucket,
                    plugin: t.plugin.to_string(),
                    reason: t.reason,
                    tripped_at_ms: t.at_ms,
                })
                .collect(),
            // Filled in by the Admin service, which knows the workers.
            hints: Vec::new(),
            anti_entropy: None,
            transfers: Vec::new(),
            ready: self.is_ready(),
        }
    }

    /// Stops gossip.
    pub fn shutdown(&self) {
        self.membership.shutdown();
    }
}

/// While alive, the node serves nothing (it is discarding its data to join
/// another cluster); dropping it ends that, on every path out.
struct Discarding<'a>(&'a Cluster);

impl<'a> Discarding<'a> {
    fn start(cluster: &'a Cluster) -> Self {
        cluster.discarding.store(true, Ordering::Release);
        cluster.publish_ready();
        Self(cluster)
    }
}

impl Drop for Discarding<'_> {
    fn drop(&mut self) {
        self.0.discarding.store(false, Ordering::Release);
        self.0.publish_ready();
    }
}
