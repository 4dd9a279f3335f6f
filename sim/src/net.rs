//! Concord's connections over turmoil's simulated network: the server's
//! accepted connections, peers' and clients' outgoing ones, and gossip.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use concord::env::{Conn, Dialer, Incoming, Io};
use futures::FutureExt;
use tonic::transport::{Channel, Endpoint};

/// The port every simulated node serves gRPC and gossip on.
pub const PORT: u16 = 7000;

/// Accepts connections on the node's port, for [`concord::env::Environment::incoming`].
pub async fn incoming() -> std::io::Result<Incoming> {
    let listener = turmoil::net::TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), PORT)).await?;
    Ok(Box::pin(futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, from)| Conn::new(s, Some(from)));
        Some((accepted, l))
    })))
}

/// Opens simulated TCP connections, for peers.
pub fn dialer() -> Dialer {
    Arc::new(|addr: SocketAddr| {
        async move { turmoil::net::TcpStream::connect(addr).await.map(|s| Box::new(s) as Box<dyn Io>) }.boxed()
    })
}

/// A lazily connecting gRPC channel to `addr` over the simulated network,
/// for the simulation's clients.
pub fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address is a valid URI")
        .connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| async move {
            turmoil::net::TcpStream::connect(addr).await.map(hyper_util::rt::TokioIo::new)
        }))
}

/// Gossip over simulated UDP. chitchat does not expose its message
/// encoding, so a datagram carries a number and the message itself waits
/// in `parcels` (all nodes share the process): the simulated network still
/// decides whether, when and in what order each one arrives.
#[derive(Clone, Default)]
pub struct Udp {
    parcels: Arc<Mutex<Parcels>>,
}

#[derive(Default)]
struct Parcels {
    next: u64,
    waiting: HashMap<u64, ChitchatEnvelope>,
}

struct UdpSocket {
    socket: turmoil::net::UdpSocket,
    parcels: Arc<Mutex<Parcels>>,
}

#[async_trait::async_trait]
impl Transport for Udp {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        // turmoil binds the unspecified address only; it is the host's.
        let socket = turmoil::net::UdpSocket::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), listen_addr.port())).await?;
        Ok(Box::new(UdpSocket { socket, parcels: Arc::clone(&self.parcels) }))
    }
}

#[async_trait::async_trait]
impl Socket for UdpSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        let id = {
            let mut p = self.parcels.lock().expect("parcels lock");
            p.next += 1;
            let id = p.next;
            p.waiting.insert(id, envelope);
            id
        };
        let num_bytes_sent = self.socket.send_to(&id.to_le_bytes(), to).await?;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let mut buf = [0u8; 8];
        loop {
            let (n, from_addr) = self.socket.recv_from(&mut buf).await?;
            let id = u64::from_le_bytes(buf);
            if let Some(envelope) = self.parcels.lock().expect("parcels lock").waiting.remove(&id) {
                return Ok(RecvOutcome { from_addr, envelope, num_bytes_received: n });
            }
        }
    }
}
