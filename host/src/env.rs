//! What a node takes from its surroundings: the wall clock, randomness,
//! connections in and out, the gossip transport, the storage engine and
//! threads.
//!
//! `concord serve` uses the machine's ([`Environment::machine`]). The
//! deterministic simulation (`sim/`) runs several nodes on one thread over a
//! simulated network and clock: it supplies an [`Environment`] of its own
//! and sets this thread's clock and random source
//! ([`set_thread_clock`], [`set_thread_seed`]), so that every choice a node
//! makes comes from the simulation's seed. It also keeps blocking work on
//! its thread ([`set_thread_inline_blocking`], [`blocking`]): a blocking
//! pool's thread would wake a task at a moment the seed does not decide.
//!
//! Durations and deadlines use `tokio::time::Instant`, which is the
//! machine's monotonic clock except in a runtime whose time is paused, as
//! the simulation's are.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::Stream;
use futures::future::BoxFuture;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::storage::Store;

/// A byte stream a connection runs over.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// An accepted connection, with the address it came from.
pub struct Conn {
    io: Box<dyn Io>,
    remote: Option<SocketAddr>,
}

impl Conn {
    /// Wraps an accepted stream.
    pub fn new(io: impl Io, remote: Option<SocketAddr>) -> Self {
        Self { io: Box::new(io), remote }
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: self.remote }
    }
}

/// Accepted connections, for a node that does not bind a TCP port itself.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// Opens a connection to a peer, for a node that does not use TCP itself.
pub type Dialer = Arc<dyn Fn(SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Io>>> + Send + Sync>;

/// What [`crate::Node::start_in`] runs a node on.
#[derive(Default)]
pub struct Environment {
    /// The storage engine. `None` opens sled in the data directory.
    pub store: Option<Arc<dyn Store>>,
    /// The address the node is reached at, and its accepted connections.
    /// `None` binds `config.listen` with TCP.
    pub incoming: Option<(SocketAddr, Incoming)>,
    /// How peer connections are made. `None` uses TCP.
    pub dialer: Option<Dialer>,
    /// The gossip transport. `None` uses UDP on the listen port.
    pub gossip: Option<Arc<dyn chitchat::transport::Transport>>,
    /// Runs every part of the node on the caller's runtime: no background
    /// thread, no durability thread (`fsync` mode flushes in the request,
    /// `periodic` mode from a task), storage calls inline.
    pub one_thread: bool,
}

impl Environment {
    /// The machine's: sled, TCP, UDP, and threads of the node's own.
    pub fn machine() -> Self {
        Self::default()
    }
}

/// A simulated clock: time since the Unix epoch, when it has one.
pub type Clock = fn() -> Option<Duration>;

thread_local! {
    static CLOCK: Cell<Option<Clock>> = const { Cell::new(None) };
    static RNG: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
    static INLINE_BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Makes [`blocking`] on this thread run its work inline instead of on
/// tokio's blocking pool (the simulation, where one thread runs all).
pub fn set_thread_inline_blocking(inline: bool) {
    INLINE_BLOCKING.with(|b| b.set(inline));
}

/// Runs blocking `work` off the async workers, on tokio's blocking pool,
/// or inline on a thread that asked for it ([`set_thread_inline_blocking`]).
/// Fails only if the work panicked on the pool.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> crate::Result<T> {
    if INLINE_BLOCKING.with(|b| b.get()) {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await.map_err(crate::Error::internal)
}

/// Makes [`since_epoch`] on this thread ask `clock` first (the
/// simulation's clock); `None` returns to the system clock. The system
/// clock also answers whenever `clock` returns `None`.
pub fn set_thread_clock(clock: Option<Clock>) {
    CLOCK.with(|c| c.set(clock));
}

/// Makes [`random_u64`] on this thread draw from a generator seeded with
/// `seed`; `None` returns to the operating system's randomness.
pub fn set_thread_seed(seed: Option<u64>) {
    RNG.with(|r| *r.borrow_mut() = seed.map(SmallRng::seed_from_u64));
}

/// Time since the Unix epoch: the system clock, or this thread's
/// simulated one.
pub fn since_epoch() -> Duration {
    if let Some(t) = CLOCK.with(|c| c.get()).and_then(|clock| clock()) {
        return t;
    }
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// A random number: from the operating system, or from this thread's
/// seeded generator.
pub fn random_u64() -> u64 {
    RNG.with(|r| r.borrow_mut().as_mut().map(|rng| rng.random())).unwrap_or_else(rand::random)
}

/// A random number in `[0, 1)`, from the same source as [`random_u64`].
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_seed_repeats_its_numbers_and_a_thread_clock_answers_first() {
        set_thread_seed(Some(7));
        let a = [random_u64(), random_u64()];
        set_thread_seed(Some(7));
        let b = [random_u64(), random_u64()];
        set_thread_seed(None);
        assert_eq!(a, b);

        set_thread_clock(Some(|| Some(Duration::from_secs(42))));
        assert_eq!(since_epoch(), Duration::from_secs(42));
        set_thread_clock(Some(|| None));
        assert!(since_epoch() > Duration::from_secs(1_700_000_000), "falls back to the system clock");
        set_thread_clock(None);
        assert!(since_epoch() > Duration::from_secs(1_700_000_000));
    }
}
