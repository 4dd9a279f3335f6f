//! The one seam every node-to-node call passes through.
//!
//! [`Net`] keeps one pooled tonic channel per peer address (HTTP/2 with
//! keepalive and `TCP_NODELAY`), applies the caller's deadline to every call,
//! and consults [`Faults`] first. Faults are how tests cut, slow or
//! one-way-partition the links between chosen nodes; the gossip transport
//! ([`FaultyUdp`]) obeys the same rules, so a partition cuts membership
//! traffic too. In production the rule table is simply empty.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpTransport};
use concord_proto::v1 as pb;
use concord_proto::v1::internal_client::InternalClient;
use tonic::transport::{Channel, Endpoint};

/// What happens to traffic towards one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Silently lost: calls hang until their deadline, datagrams vanish.
    Drop,
    /// Delivered after this long.
    Delay(Duration),
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

/// Calls to peers.
pub struct Net {
    faults: Arc<Faults>,
    channels: Mutex<HashMap<SocketAddr, InternalClient<Channel>>>,
}

impl Net {
    /// A net with the given fault rules (empty in production).
    pub fn new(faults: Arc<Faults>) -> Self {
        Self { faults, channels: Mutex::new(HashMap::new()) }
    }

    /// The fault rules this net obeys.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    fn client(&self, addr: SocketAddr) -> InternalClient<Channel> {
        let mut channels = self.channels.lock().expect("channel map lock");
        channels
            .entry(addr)
            .or_insert_with(|| {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a socket address is a valid URI")
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .keep_alive_while_idle(true)
                    .connect_lazy();
                InternalClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
            })
            .clone()
    }

    /// Runs one call to `addr` under `deadline`, after applying faults.
    pub async fn call<T, F, Fut>(&self, addr: SocketAddr, deadline: Duration, f: F) -> Result<T, NetError>
    where
        F: FnOnce(InternalClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client(addr);
        let call = async {
            match self.faults.get(addr) {
                Some(Fault::Drop) => std::future::pending().await,
                Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
                None => {}
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

/// Chitchat's UDP transport, dropping datagrams the fault rules block.
pub struct FaultyUdp {
    /// Rules shared with the node's [`Net`].
    pub faults: Arc<Faults>,
}

struct FaultySocket {
    inner: Box<dyn Socket>,
    faults: Arc<Faults>,
}

#[async_trait::async_trait]
impl Transport for FaultyUdp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = UdpTransport.open(listen_addr).await?;
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
