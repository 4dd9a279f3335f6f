//! The one seam every node-to-node call passes through.
//!
//! [`Net`] keeps one pooled tonic channel per peer address (HTTP/2 with
//! keepalive and `TCP_NODELAY`), applies the caller's deadline to every call,
//! batches replica reads and writes per peer, and consults [`Faults`] first.
//! Faults are how tests cut, slow or one-way-partition the links between
//! chosen nodes; the gossip transport ([`FaultyUdp`]) drops what the same
//! rules drop (it does not delay), so a partition cuts membership traffic
//! too. In production the rule table is simply empty.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use concord_proto::v1 as pb;
use concord_proto::v1::admin_client::AdminClient;
use concord_proto::v1::internal_client::InternalClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::env::Dialer;
use crate::security::{KeySet, Keyring, Purpose};

/// Metadata header carrying a node's credential on Internal calls:
/// `<key id>.<hex tag>`.
pub const PEER_HEADER: &str = "x-concord-peer";

/// Largest message between nodes. Batches add items up to byte budgets well
/// under it, and an item past a budget goes alone: a key holds at most
/// [`crate::storage::MAX_MERGED_KEY_BYTES`], which leaves room for its
/// name and the rest of the message.
pub const MAX_PEER_MESSAGE_BYTES: usize = 64 << 20;

/// A client of a peer's Internal service that presents this node's
/// credential on every call.
pub type PeerClient = InternalClient<InterceptedService<Channel, PeerCredential>>;

/// Adds this node's credential (see [`PEER_HEADER`]) to a call.
#[derive(Clone)]
pub struct PeerCredential {
    keys: Arc<Keyring>,
    /// The credential made from the key set it was made with: it is the
    /// same on every call until the set changes (a rotation, or a join that
    /// brings another cluster's secret, whose first key has the same id),
    /// so it is computed once per set.
    last: Arc<arc_swap::ArcSwapOption<(Arc<KeySet>, tonic::metadata::AsciiMetadataValue)>>,
}

impl PeerCredential {
    /// Presents the signing key of `keys`.
    pub fn new(keys: Arc<Keyring>) -> Self {
        Self { keys, last: Arc::default() }
    }

    fn value(&self) -> Option<tonic::metadata::AsciiMetadataValue> {
        let set = self.keys.current();
        if let Some(last) = self.last.load().as_deref()
            && Arc::ptr_eq(&last.0, &set)
        {
            return Some(last.1.clone());
        }
        let value = credential_of(&set)?;
        self.last.store(Some(Arc::new((set, value.clone()))));
        Some(value)
    }
}

impl tonic::service::Interceptor for PeerCredential {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = self.value() {
            request.metadata_mut().insert(PEER_HEADER, value);
        }
        Ok(request)
    }
}

/// The credential a node presents, from `keys` as they are now.
#[cfg(test)]
pub(crate) fn peer_credential(keys: &Keyring) -> Option<tonic::metadata::AsciiMetadataValue> {
    credential_of(&keys.current())
}

/// The credential a node presents: its signing key's tag over a fixed
/// label. It proves the caller holds the cluster secret; with TLS on, the
/// channel also keeps it from being read on the way.
fn credential_of(set: &KeySet) -> Option<tonic::metadata::AsciiMetadataValue> {
    let key = set.signing()?;
    let tag = key.tag(Purpose::Peer, &[b"internal call"]);
    format!("{}.{}", key.id(), hex::encode(tag)).parse().ok()
}

/// Whether `value` is a valid peer credential under the keys accepted at
/// `now_ms`.
pub fn check_peer_credential(keys: &Keyring, value: &[u8], now_ms: u64) -> bool {
    let Ok(value) = std::str::from_utf8(value) else { return false };
    let Some((id, tag)) = value.split_once('.') else { return false };
    let (Ok(id), Ok(tag)) = (id.parse::<u32>(), hex::decode(tag)) else { return false };
    // Only the one spelling a node sends ("+7" or upper-case hex parse too).
    if format!("{id}.{}", hex::encode(&tag)) != value {
        return false;
    }
    let set = keys.current();
    set.accepting(id, now_ms).is_some_and(|k| k.verify(Purpose::Peer, &[b"internal call"], &tag))
}

/// What happens to traffic towards one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Silently lost: calls hang until their deadline, datagrams vanish.
    Drop,
    /// Delivered after this long.
    Delay(Duration),
    /// This share of calls, in percent, fails at once (as a reset
    /// connection would); the rest, and all gossip, get through.
    Lossy(u8),
}

/// Fault rules of one node, keyed by destination address (a node's gRPC and
/// gossip ports share one number, so one address covers both).
#[derive(Default)]
pub struct Faults {
    /// Read on every call; written only by tests. Never held across an await.
    rules: RwLock<HashMap<SocketAddr, Fault>>,
}

impl Faults {
    /// Applies `fault` to everything this node sends to `to`.
    pub fn set(&self, to: SocketAddr, fault: Fault) {
        self.rules.write().expect("fault rules lock").insert(to, fault);
    }

    /// Removes the rule for `to`.
    pub fn clear(&self, to: SocketAddr) {
        self.rules.write().expect("fault rules lock").remove(&to);
    }

    /// Removes every rule.
    pub fn clear_all(&self) {
        self.rules.write().expect("fault rules lock").clear();
    }

    /// The rule for `to`, if any.
    pub fn get(&self, to: SocketAddr) -> Option<Fault> {
        let rules = self.rules.read().expect("fault rules lock");
        if rules.is_empty() {
            return None;
        }
        rules.get(&to).copied()
    }
}

/// Why a peer call failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No answer before the deadline.
    #[error("no answer from {0} before the deadline")]
    Timeout(SocketAddr),
    /// The peer could not be reached or answered with an error status.
    #[error("{}", describe(.status))]
    Status {
        /// Peer.
        addr: SocketAddr,
        /// What it (or the transport) said.
        status: tonic::Status,
    },
}

/// Whether a failed call provably never reached the peer: no connection
/// could be made (shared with the client library, which retries such
/// calls on another node).
pub use concord_client::never_delivered;

/// A status in one line: its message, and for transport failures the
/// underlying cause ("tcp connect error: Connection refused").
fn describe(status: &tonic::Status) -> String {
    let mut out = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if std::error::Error::source(c).is_none() {
            out.push_str(": ");
            out.push_str(&c.to_string());
        }
        cause = std::error::Error::source(c);
    }
    if out.is_empty() { format!("{:?}", status.code()) } else { out }
}

/// Replica calls that are batched per peer: many items, one RPC.
trait Batched: Send + 'static {
    /// One queued request.
    type Item: Send + 'static;
    /// Its answer.
    type Out: Send + 'static;
    /// Metric name of the batch sizes.
    const METRIC: &'static str;
    /// Bytes an item adds to a request.
    fn bytes(item: &Self::Item) -> usize;
    /// Sends one batch; answers come back in item order.
    fn call(
        net: Arc<Net>,
        addr: SocketAddr,
        timeout: Duration,
        ring_epoch: u64,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<Vec<Result<Self::Out, String>>, String>> + Send;
}

/// Batched `ReplicaWrite`.
struct Writes;

impl Batched for Writes {
    type Item = pb::ReplicaWrite;
    type Out = ();
    const METRIC: &'static str = "concord_replica_write_batch_size";

    fn bytes(w: &pb::ReplicaWrite) -> usize {
        w.object.len() + w.key.as_ref().map_or(0, |k| k.bucket.len() + k.key.len())
    }

    async fn call(
        net: Arc<Net>,
        addr: SocketAddr,
        timeout: Duration,
        ring_epoch: u64,
        writes: Vec<pb::ReplicaWrite>,
    ) -> Result<Vec<Result<(), String>>, String> {
        let resp =
            net.replica_write(addr, timeout, pb::ReplicaWriteRequest { writes, ring_epoch, background: false }).await;
        let resp = resp.map_err(|e| e.to_string())?;
        Ok(resp.results.into_iter().map(|r| if r.error.is_empty() { Ok(()) } else { Err(r.error) }).collect())
    }
}

/// Batched `ReplicaRead`.
struct Reads;

impl Batched for Reads {
    /// The key, and the replica whose hint a fallback is asked for (empty
    /// for the node's own copy).
    type Item = (pb::ObjectKey, String);
    type Out = bytes::Bytes;
    const METRIC: &'static str = "concord_replica_read_batch_size";

    fn bytes((k, hint_for): &(pb::ObjectKey, String)) -> usize {
        k.bucket.len() + k.key.len() + hint_for.len()
    }

    async fn call(
        net: Arc<Net>,
        addr: SocketAddr,
        timeout: Duration,
        ring_epoch: u64,
        items: Vec<(pb::ObjectKey, String)>,
    ) -> Result<Vec<Result<bytes::Bytes, String>>, String> {
        let (keys, mut hint_for): (Vec<_>, Vec<_>) = items.into_iter().unzip();
        // Most batches ask for own copies only: then the list is left out.
        if hint_for.iter().all(String::is_empty) {
            hint_for.clear();
        }
        let req = pb::ReplicaReadRequest { keys, ring_epoch, hint_for };
        let resp = net.replica_read(addr, timeout, req.clone()).await.map_err(|e| e.to_string())?;
        let mut results = resp.results;
        // A key the reply had no room for (a large one behind others) is
        // asked for alone, which the peer answers whatever its size.
        for (i, r) in results.iter_mut().enumerate() {
            if !r.reply_full || i >= req.keys.len() {
                continue;
            }
            let alone = pb::ReplicaReadRequest {
                keys: vec![req.keys[i].clone()],
                ring_epoch,
                hint_for: req.hint_for.get(i).cloned().into_iter().collect(),
            };
            match net.replica_read(addr, timeout, alone).await {
                Ok(mut one) if one.results.len() == 1 => *r = one.results.remove(0),
                Ok(one) => r.error = format!("the peer answered {} results for one key", one.results.len()),
                Err(e) => r.error = e.to_string(),
            }
        }
        Ok(results.into_iter().map(|r| if r.error.is_empty() { Ok(r.object) } else { Err(r.error) }).collect())
    }
}

/// One item waiting for its peer's next batch.
struct Pending<B: Batched> {
    item: B::Item,
    /// Epoch of the ring the item's replicas were chosen from.
    ring_epoch: u64,
    deadline: Instant,
    done: tokio::sync::oneshot::Sender<Result<B::Out, String>>,
}

type Queue<B> = tokio::sync::mpsc::Sender<Pending<B>>;
/// Batching queues by peer and by whether their items carry a ring check.
/// Written only when a peer's queue starts.
type Queues<B> = RwLock<HashMap<(SocketAddr, bool), Queue<B>>>;

/// Most items in one batch.
const MAX_BATCH: usize = 128;
/// Most request bytes in one batch; a larger item goes alone.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Batches in flight to one peer at once.
const BATCHES_IN_FLIGHT: usize = 4;
/// Items that may wait for one peer; past this, calls to it fail at once
/// rather than hold memory for a peer that is not keeping up.
const MAX_QUEUED: usize = 16_384;

/// Calls to peers.
pub struct Net {
    faults: Arc<Faults>,
    /// Presented on every call to a peer.
    credential: PeerCredential,
    /// Set when peers are reached over TLS.
    tls: Option<ClientTlsConfig>,
    /// Opens connections when the node does not use TCP (the simulation).
    dialer: Option<Dialer>,
    /// Written only when a peer is first called.
    channels: RwLock<HashMap<SocketAddr, Channel>>,
    /// Per peer, the queues of its batching tasks (see [`Net::replica_write_one`]).
    write_queues: Queues<Writes>,
    read_queues: Queues<Reads>,
    /// For the batching tasks, which must not keep the net alive.
    me: Weak<Net>,
    /// The runtime the net was made on (the node's request runtime).
    /// Connections and batchers run there whichever runtime first calls a
    /// peer, so a call from the low-priority background runtime never
    /// leaves a connection that request traffic shares on that runtime.
    runtime: tokio::runtime::Handle,
}

impl Net {
    /// A net with the given fault rules (empty in production). Must be
    /// called on the runtime that serves requests.
    pub fn new(faults: Arc<Faults>, keys: Arc<Keyring>, tls: Option<ClientTlsConfig>) -> Arc<Self> {
        Self::new_in(faults, keys, tls, None)
    }

    /// A net whose connections `dialer` opens (`None`: TCP).
    pub fn new_in(
        faults: Arc<Faults>,
        keys: Arc<Keyring>,
        tls: Option<ClientTlsConfig>,
        dialer: Option<Dialer>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            faults,
            credential: PeerCredential::new(keys),
            tls,
            dialer,
            channels: RwLock::new(HashMap::new()),
            write_queues: RwLock::new(HashMap::new()),
            read_queues: RwLock::new(HashMap::new()),
            me: me.clone(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Sends one replica write to `addr` as part of a batch: writes queued
    /// for the same peer while earlier batches are in flight go together in
    /// one call, so under load a peer gets a fraction of the calls it would
    /// get with one call per write. Returns the peer's answer for this write.
    ///
    /// `ring_epoch` is the epoch of the ring the write's replicas were chosen
    /// from, so that a peer with a newer ring can refuse a key it no longer
    /// holds (0: not checked).
    pub async fn replica_write_one(
        &self,
        addr: SocketAddr,
        write: pb::ReplicaWrite,
        ring_epoch: u64,
        deadline: Instant,
    ) -> Result<(), String> {
        self.enqueue::<Writes>(&self.write_queues, addr, write, ring_epoch, deadline).await
    }

    /// Reads one object's copy on `addr` as part of a batch (as
    /// [`Net::replica_write_one`]). Empty bytes mean the replica has none.
    /// A non-empty `hint_for` asks a fallback for the hint it holds for that
    /// replica instead.
    pub async fn replica_read_one(
        &self,
        addr: SocketAddr,
        key: pb::ObjectKey,
        hint_for: String,
        ring_epoch: u64,
        deadline: Instant,
    ) -> Result<bytes::Bytes, String> {
        self.enqueue::<Reads>(&self.read_queues, addr, (key, hint_for), ring_epoch, deadline).await
    }

    async fn enqueue<B: Batched>(
        &self,
        queues: &Queues<B>,
        addr: SocketAddr,
        item: B::Item,
        ring_epoch: u64,
        deadline: Instant,
    ) -> Result<B::Out, String> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let pending = Pending::<B> { item, ring_epoch, deadline, done };
        // A batch carries one ring epoch for all its items, so items without
        // a ring check (epoch 0) get a queue of their own: batched with
        // checked ones, they would be checked and refused.
        let key = (addr, ring_epoch > 0);
        let full =
            || format!("{MAX_QUEUED} requests already wait for this peer; it is not keeping up or not answering");
        // The peer's queue usually exists: a shared lock finds it.
        let mut unsent = Some(pending);
        if let Some(tx) = queues.read().expect("batch queue map lock").get(&key) {
            match tx.try_send(unsent.take().expect("not sent yet")) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => return Err(full()),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(failed)) => unsent = Some(failed),
            }
        }
        if let Some(mut pending) = unsent {
            let mut queues = queues.write().expect("batch queue map lock");
            loop {
                let tx = queues.entry(key).or_insert_with(|| {
                    let (tx, rx) = tokio::sync::mpsc::channel(MAX_QUEUED);
                    self.runtime.spawn(run_batcher::<B>(self.me.clone(), addr, rx));
                    tx
                });
                match tx.try_send(pending) {
                    Ok(()) => break,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => return Err(full()),
                    // The task ended (it does not while the net lives): start over.
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(failed)) => {
                        pending = failed;
                        queues.remove(&key);
                    }
                }
            }
        }
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(answer)) => answer,
            // The batcher drops items whose deadline has passed.
            Ok(Err(_)) if Instant::now() >= deadline => Err("no answer before the deadline".into()),
            Ok(Err(_)) => Err("the peer's request queue stopped".into()),
            Err(_) => Err("no answer before the deadline".into()),
        }
    }

    /// The fault rules this net obeys.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// The pooled channel to `addr`.
    fn channel(&self, addr: SocketAddr) -> Channel {
        if let Some(c) = self.channels.read().expect("channel map lock").get(&addr) {
            return c.clone();
        }
        let mut channels = self.channels.write().expect("channel map lock");
        // The channel's worker task starts on the request runtime.
        let _runtime = self.runtime.enter();
        channels
            .entry(addr)
            .or_insert_with(|| {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
                    .expect("a socket address is a valid URI")
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .keep_alive_while_idle(true);
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.clone()).expect("a TLS client configuration applies");
                }
                match &self.dialer {
                    Some(dial) => {
                        let dial = Arc::clone(dial);
                        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                            let connecting = dial(addr);
                            async move { connecting.await.map(hyper_util::rt::TokioIo::new) }
                        }))
                    }
                    None => endpoint.connect_lazy(),
                }
            })
            .clone()
    }

    fn client(&self, addr: SocketAddr) -> PeerClient {
        InternalClient::with_interceptor(self.channel(addr), self.credential.clone())
            .max_decoding_message_size(MAX_PEER_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_PEER_MESSAGE_BYTES)
    }

    /// A client of `addr`'s Admin service over the same connection (for
    /// fetching the cluster secret when joining).
    pub fn admin(&self, addr: SocketAddr) -> AdminClient<Channel> {
        AdminClient::new(self.channel(addr))
    }

    /// Runs one call to `addr` under `deadline`, after applying faults.
    pub async fn call<T, F, Fut>(&self, addr: SocketAddr, deadline: Duration, f: F) -> Result<T, NetError>
    where
        F: FnOnce(PeerClient) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(addr);
        let call = async {
            match self.faults.get(addr) {
                Some(Fault::Drop) => std::future::pending().await,
                Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                Some(Fault::Lossy(pct)) if rand::random_range(0..100u8) < pct => {
                    return Err(tonic::Status::unavailable("dropped by a fault rule"));
                }
                Some(Fault::Lossy(_)) | None => {}
            }
            f(client).await
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(NetError::Status { addr, status }),
            Err(_) => Err(NetError::Timeout(addr)),
        }
    }

    /// Reads the local copies of objects on a replica.
    pub async fn replica_read(
        &self,
        addr: SocketAddr,
        deadline: Duration,
        req: pb::ReplicaReadRequest,
    ) -> Result<pb::ReplicaReadResponse, NetError> {
        self.call(addr, deadline, |mut c| async move { c.replica_read(req).await }).await
    }

    /// Merges objects into a replica.
    pub async fn replica_write(
        &self,
        addr: SocketAddr,
        deadline: Duration,
        req: pb::ReplicaWriteRequest,
    ) -> Result<pb::ReplicaWriteResponse, NetError> {
        self.call(addr, deadline, |mut c| async move { c.replica_write(req).await }).await
    }
}

/// Collects queued items for one peer into batches and sends them, up to
/// [`BATCHES_IN_FLIGHT`] at once. Items that arrive while batches are in
/// flight wait for the next one, so batches grow with load on their own.
async fn run_batcher<B: Batched>(net: Weak<Net>, addr: SocketAddr, mut rx: tokio::sync::mpsc::Receiver<Pending<B>>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT));
    let sizes = metrics::histogram!(B::METRIC);
    // An item that did not fit the previous batch starts the next one.
    let mut carried: Option<Pending<B>> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else { return };
        let mut bytes = B::bytes(&first.item);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) if bytes + B::bytes(&p.item) > MAX_BATCH_BYTES => {
                    carried = Some(p);
                    break;
                }
                Ok(p) => {
                    bytes += B::bytes(&p.item);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        // Items whose caller has given up are not sent.
        let now = Instant::now();
        batch.retain(|p| p.deadline > now && !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        sizes.record(batch.len() as f64);
        let Some(net) = net.upgrade() else { return };
        tokio::spawn(async move {
            let deadline = batch.iter().map(|p| p.deadline).max().expect("a batch is never empty");
            // The oldest ring any item was planned on: a peer then refuses
            // what that ring's replicas may no longer hold (0: unchecked;
            // such items have queues of their own, see `Net::enqueue`).
            let ring_epoch = batch.iter().map(|p| p.ring_epoch).min().unwrap_or(0);
            let timeout = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let (items, waiters): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.item, p.done)).unzip();
            let sent = items.len();
            match B::call(net, addr, timeout, ring_epoch, items).await {
                // Answers are matched to items by position: a reply of
                // another length cannot be trusted for any of them.
                Ok(results) if results.len() != sent => {
                    let e = format!("the peer answered {} items of a batch of {sent}", results.len());
                    for w in waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
                Ok(results) => {
                    for (w, r) in waiters.into_iter().zip(results) {
                        let _ = w.send(r);
                    }
                }
                Err(e) => {
                    for w in waiters {
                        let _ = w.send(Err(e.clone()));
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Paces background traffic (hint delivery, anti-entropy, partition
/// transfers) to a rate in bytes per second. Callers pay before they send;
/// a short burst is allowed after a quiet spell.
pub struct Throttle {
    bytes_per_sec: f64,
    /// When the bytes paid for so far will have been sent at the rate.
    /// Held only to read and advance it.
    next: Mutex<Instant>,
}

impl Throttle {
    /// Longest burst a quiet throttle lets through at once.
    const BURST: Duration = Duration::from_millis(100);

    /// A throttle of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self { bytes_per_sec: bytes_per_sec.max(1) as f64, next: Mutex::new(Instant::now()) }
    }

    /// Waits until `bytes` more fit the rate.
    pub async fn take(&self, bytes: usize) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now.checked_sub(Self::BURST).unwrap_or(now));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            next.saturating_duration_since(now + Self::BURST)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Chitchat's UDP transport, dropping datagrams the fault rules block.
pub struct FaultyUdp {
    /// Rules shared with the node's [`Net`].
    pub faults: Arc<Faults>,
    /// The transport underneath (`None`: chitchat's UDP).
    pub inner: Option<Arc<dyn Transport>>,
}

struct FaultySocket {
    inner: Box<dyn Socket>,
    faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl Transport for FaultyUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = match &self.inner {
            Some(t) => t.open(listen_addr).await?,
            None => UdpTransport.open(listen_addr).await?,
        };
        Ok(Box::new(FaultySocket { inner, faults: Arc::clone(&self.faults) }))
    }
}

#[async_trait::async_trait]
impl Socket for FaultySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if self.faults.get(to) == Some(Fault::Drop) {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inner.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_spelling_a_node_sends_is_a_credential() {
        let keys = Keyring::in_memory(crate::security::KeySet::generate());
        let good = peer_credential(&keys).unwrap().to_str().unwrap().to_owned();
        assert!(check_peer_credential(&keys, good.as_bytes(), 0));
        for other in [good.to_uppercase(), format!("+{good}"), format!("0{good}"), format!("{good}0")] {
            assert!(!check_peer_credential(&keys, other.as_bytes(), 0), "{other}");
        }
    }

    #[test]
    fn the_credential_follows_a_new_key_set_with_the_same_key_id() {
        let keys = Arc::new(Keyring::in_memory(KeySet::generate()));
        let credential = PeerCredential::new(Arc::clone(&keys));
        let first = credential.value().unwrap();
        assert_eq!(credential.value().unwrap(), first, "the same set gives the same credential");
        // Another cluster's secret: its first key has id 1 too.
        keys.replace(KeySet::generate()).unwrap();
        let second = credential.value().unwrap();
        assert_ne!(second, first);
        assert!(check_peer_credential(&keys, second.as_bytes(), 0));
        assert!(!check_peer_credential(&keys, first.as_bytes(), 0));
    }

    /// Items are sizes in bytes; the peer answers each with its size and
    /// records the batches it got. With `SHORT` it answers one item less.
    struct Fake<const SHORT: bool>;

    /// Batches the well-behaved fake peer got (tests run in parallel: the
    /// short one records nothing).
    static BATCHES: Mutex<Vec<Vec<usize>>> = Mutex::new(Vec::new());

    impl<const SHORT: bool> Batched for Fake<SHORT> {
        type Item = usize;
        type Out = usize;
        const METRIC: &'static str = "test_batch_size";

        fn bytes(item: &usize) -> usize {
            *item
        }

        async fn call(
            _: Arc<Net>,
            _: SocketAddr,
            _: Duration,
            _: u64,
            items: Vec<usize>,
        ) -> Result<Vec<Result<usize, String>>, String> {
            let mut answers: Vec<_> = items.iter().copied().map(Ok).collect();
            if SHORT {
                answers.pop();
            } else {
                BATCHES.lock().unwrap().push(items);
            }
            Ok(answers)
        }
    }

    async fn send_together<const SHORT: bool>(sizes: &[usize]) -> Vec<Result<usize, String>> {
        let net = Net::new(
            Arc::new(Faults::default()),
            Arc::new(crate::security::Keyring::in_memory(crate::security::KeySet::generate())),
            None,
        );
        let queues: Queues<Fake<SHORT>> = RwLock::new(HashMap::new());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        // On a current-thread runtime every item is queued before the
        // batcher first runs, so they are all offered to one batch.
        futures::future::join_all(sizes.iter().map(|s| net.enqueue::<Fake<SHORT>>(&queues, addr, *s, 1, deadline)))
            .await
    }

    #[tokio::test(flavor = "current_thread")]
    async fn batches_stay_under_their_byte_cap_and_large_items_go_alone() {
        let mib = 1 << 20;
        let sizes = [3 * mib, 3 * mib, 3 * mib, 20 * mib, 100, 100];
        let answers = send_together::<false>(&sizes).await;
        assert_eq!(answers, sizes.iter().map(|s| Ok(*s)).collect::<Vec<_>>(), "every item gets its own answer");
        let batches = BATCHES.lock().unwrap().clone();
        assert_eq!(batches.iter().flatten().count(), sizes.len(), "{batches:?}");
        for b in &batches {
            let total: usize = b.iter().sum();
            assert!(total <= MAX_BATCH_BYTES || b.len() == 1, "batch of {total} bytes: {batches:?}");
        }
        assert!(batches.contains(&vec![20 * mib]), "the 20 MiB item went alone: {batches:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_reply_of_the_wrong_length_fails_the_whole_batch() {
        let answers = send_together::<true>(&[1, 2, 3]).await;
        for a in answers {
            assert!(a.unwrap_err().contains("answered 2 items of a batch of 3"));
        }
    }

    #[tokio::test]
    async fn only_a_failed_connect_counts_as_never_delivered() {
        // A port nothing listens on: bind one, note it, let it go.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let net = Net::new(
            Arc::new(Faults::default()),
            Arc::new(crate::security::Keyring::in_memory(crate::security::KeySet::generate())),
            None,
        );
        let refused =
            net.call(addr, Duration::from_secs(5), |mut c| async move {
                c.fetch_metadata(pb::FetchMetadataRequest {}).await
            })
            .await;
        match refused {
            Err(NetError::Status { status, .. }) => assert!(never_delivered(&status), "{status:?}"),
            other => panic!("expected a transport failure, got {other:?}"),
        }
        // What a peer answers itself was delivered, whatever its code.
        assert!(!never_delivered(&tonic::Status::unavailable("write needed 2 acks, got 1")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_peer_that_does_not_keep_up_fails_calls_at_once_past_its_queue() {
        use futures::FutureExt;
        let net = Net::new(
            Arc::new(Faults::default()),
            Arc::new(crate::security::Keyring::in_memory(crate::security::KeySet::generate())),
            None,
        );
        let queues: Queues<Fake<false>> = RwLock::new(HashMap::new());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        // The batcher never runs (nothing here yields), as if the peer hung.
        for _ in 0..MAX_QUEUED {
            assert!(net.enqueue::<Fake<false>>(&queues, addr, 1, 1, deadline).now_or_never().is_none());
        }
        let full = net.enqueue::<Fake<false>>(&queues, addr, 1, 1, deadline).now_or_never();
        let error = full.expect("answered at once").unwrap_err();
        assert!(error.contains("already wait for this peer"), "{error}");
    }
}
