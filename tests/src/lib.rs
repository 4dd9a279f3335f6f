//! Test harness: real `concord serve` processes on 127.0.0.1.
//!
//! Each [`Server`] gets a free port and a temporary data directory, logs to a
//! file beside it, and is killed by PID when dropped, so a failing test never
//! leaves a node behind.
//!
//! The binary is the `concord` that `cargo test --workspace` builds next to
//! the test executables (`target/<profile>/concord`); set `CONCORD_BIN` to use
//! another.

/// Paths of the plugins built by this crate's build script.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use concord_client::Client;

/// Path of the `concord` binary under test.
pub fn concord_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONCORD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/concord
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let bin = profile_dir.join(format!("concord{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist; build it with `cargo build -p concord` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// A port on 127.0.0.1 that is free for both TCP and UDP (gRPC and
/// gossip) and that no other test of this process has been given.
///
/// Ports come from below the kernel's ephemeral range: a port the OS picked
/// for "port 0" can be handed out again as the source port of any outgoing
/// connection before the node binds it, which made parallel tests fail with
/// "address in use" now and then.
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive ports that [`free_port`] could give.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::Mutex;
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u16, ephemeral_start.max(10_000 + 2 * n + 100));
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    // Spread processes (test binaries, parallel runs) over the range.
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let span = u64::from(high - low - n);
    let mut candidate = low + ((seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % span) as u16;
    for _ in 0..span {
        candidate = if candidate + n >= high { low } else { candidate + 1 };
        let ports = candidate..candidate + n;
        let free = ports.clone().all(|p| {
            !given.contains(&p)
                && TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            given.extend(ports);
            return candidate;
        }
    }
    panic!("no {n} free consecutive ports between {low} and {high}");
}

/// A `concord serve` child process.
pub struct Server {
    child: Option<Child>,
    /// The node's gRPC address.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

/// How to start a [`Server`].
#[derive(Default, Clone)]
pub struct ServerOptions {
    /// Extra `concord serve` flags.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Data directory to use instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Address to listen on instead of a free port on 127.0.0.1.
    pub addr: Option<SocketAddr>,
}

impl Server {
    /// Starts a node with default options and waits until it serves.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ServerOptions::default()).await
    }

    /// Starts a node and waits until it serves.
    pub async fn start_with(opts: ServerOptions) -> anyhow::Result<Self> {
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().join("data");
                (Some(t), d)
            }
        };
        let addr = opts.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let log = data_dir.with_extension("log");
        let mut s = Server { child: None, addr, data_dir, log, extra_args: opts.args, env: opts.env, _tmp: tmp };
        s.spawn()?;
        s.wait_ready().await?;
        Ok(s)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(concord_bin())
            .arg("serve")
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra_args)
            // A resolver or validator call gets seconds, not the default 50 ms:
            // tests share two cores with a build, and only tests about the
            // deadline (which set their own) should ever see it pass.
            .env("CONCORD_PLUGINS__DEADLINE_MS", "10000")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("CONCORD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting concord serve")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the node answers gRPC, or fails with its log.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("concord serve exited with {status}; log:\n{}", self.log_text());
            }
            // Health answers without a token, so nodes that require one
            // are waited for too. Any answer will do: a node waiting for
            // its cluster's ring reports NOT_SERVING, and is up.
            if let Ok(channel) =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?.connect().await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let check = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if health.check(check).await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("concord serve did not become ready on {}; log:\n{}", self.addr, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client connected to this node.
    pub async fn client(&self) -> Client {
        Client::connect(&self.addr.to_string()).await.expect("connecting to the test node")
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process with SIGKILL (no shutdown, no flush).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM and waits for a clean exit. Async so
    /// the caller's runtime keeps driving its connections, which the node
    /// waits to see closed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut c) = self.child.take() else { return Ok(()) };
        signal(c.id(), "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait()? {
                if !status.success() {
                    bail!("concord serve exited with {status} on SIGTERM; log:\n{}", self.log_text());
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("concord serve ignored SIGTERM for 30 s; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGSTOP (the node freezes but keeps its sockets).
    pub fn pause(&self) -> anyhow::Result<()> {
        signal(self.pid().context("not running")?, "STOP")
    }

    /// Sends SIGCONT.
    pub fn resume(&self) -> anyhow::Result<()> {
        signal(self.pid().context("not running")?, "CONT")
    }

    /// Starts the process again on the same address and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.stop().await?;
        }
        self.spawn()?;
        self.wait_ready().await
    }
}

/// Several nodes in this test process, talking over loopback, each with its
/// own fault rules. Stopped nodes keep their data directory, so they can be
/// started again.
pub struct LocalCluster {
    nodes: Vec<Option<concord::Node>>,
    /// Each node's gRPC address.
    pub addrs: Vec<SocketAddr>,
    configs: Vec<concord::Config>,
    _tmp: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts `n` nodes seeded with each other and waits until every one
    /// holds a ring of all `n` with every node up.
    pub async fn start(n: usize) -> anyhow::Result<Self> {
        Self::start_with(n, |_, _| {}).await
    }

    /// Like [`LocalCluster::start`], letting `tweak(i, config)` adjust each
    /// node's config.
    pub async fn start_with(n: usize, tweak: impl Fn(usize, &mut concord::Config)) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let addrs: Vec<SocketAddr> = (0..n).map(|_| SocketAddr::from(([127, 0, 0, 1], free_port()))).collect();
        let mut configs = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let mut c = concord::Config {
                listen: *addr,
                data_dir: tmp.path().join(format!("node{i}")),
                node_id: Some(format!("n{i}")),
                seeds: addrs.iter().filter(|a| *a != addr).map(ToString::to_string).collect(),
                gossip_interval_ms: 100,
                request_timeout_ms: 2_000,
                ..Default::default()
            };
            // As for `Server`: a plugin call's deadline no test meets by luck.
            c.plugins.deadline_ms = 10_000;
            tweak(i, &mut c);
            configs.push(c);
        }
        let mut nodes = Vec::new();
        for c in &configs {
            nodes.push(Some(concord::Node::start(c.clone()).await?));
        }
        let cluster = Self { nodes, addrs, configs, _tmp: tmp };
        cluster.wait_for_ring(n).await?;
        Ok(cluster)
    }

    /// Node `i` (panics if it is stopped).
    pub fn node(&self, i: usize) -> &concord::Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Node `i`'s own copy of a key, straight from its storage.
    pub fn local_copy(&self, i: usize, bucket: &str, key: &[u8]) -> Option<concord::causal::Object> {
        let node = self.node(i);
        let p = node.cluster().ring().partition_of(bucket, key);
        node.objects().read(p, bucket, key).expect("reading a test node's storage")
    }

    /// A client of node `i`.
    pub async fn client(&self, i: usize) -> Client {
        Client::connect(&self.addrs[i].to_string()).await.expect("connecting to a test node")
    }

    /// Waits until every running node holds a ring of `members` nodes and
    /// sees every running node up.
    pub async fn wait_for_ring(&self, members: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let running: Vec<&concord::Node> = self.nodes.iter().flatten().collect();
            let ok = running.iter().all(|n| {
                let status = n.cluster().status();
                n.cluster().ring().members().len() == members
                    && running.iter().all(|m| status.nodes.iter().any(|s| s.node_id == m.node_id() && s.status == "up"))
            });
            let same_ring = running.windows(2).all(|w| w[0].cluster().ring() == w[1].cluster().ring());
            if ok && same_ring {
                return Ok(());
            }
            if Instant::now() > deadline {
                let views: Vec<String> = running
                    .iter()
                    .map(|n| {
                        format!("{}: ring {:?}", n.node_id(), n.cluster().ring().members().keys().collect::<Vec<_>>())
                    })
                    .collect();
                bail!("the cluster did not settle on {members} members: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cuts node `i` off from every other node, in both directions (gRPC
    /// and gossip): calls hang until their deadline.
    pub fn isolate(&self, i: usize) {
        for (j, addr) in self.addrs.iter().enumerate() {
            if j == i {
                continue;
            }
            if let Some(n) = &self.nodes[j] {
                n.faults().set(self.addrs[i], concord::net::Fault::Drop);
            }
            self.node(i).faults().set(*addr, concord::net::Fault::Drop);
        }
    }

    /// Removes every fault rule.
    pub fn heal(&self) {
        for n in self.nodes.iter().flatten() {
            n.faults().clear_all();
        }
    }

    /// Stops node `i` cleanly.
    pub async fn stop(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await?;
        }
        Ok(())
    }

    /// Node `i`'s data directory.
    pub fn data_dir(&self, i: usize) -> &std::path::Path {
        &self.configs[i].data_dir
    }

    /// Deletes stopped node `i`'s data directory, as a lost disk would.
    pub fn wipe(&self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes[i].is_none(), "stop node {i} before wiping it");
        std::fs::remove_dir_all(&self.configs[i].data_dir)?;
        Ok(())
    }

    /// Starts a stopped node `i` again with its data.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i] = Some(concord::Node::start(self.configs[i].clone()).await?);
        Ok(())
    }

    /// Adds a node seeded with the existing ones; returns its index.
    pub async fn add_node(&mut self) -> anyhow::Result<usize> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let i = self.configs.len();
        let mut c = self.configs[0].clone();
        c.listen = addr;
        c.node_id = Some(format!("n{i}"));
        c.data_dir = self._tmp.path().join(format!("node{i}"));
        c.seeds = self.addrs.iter().map(ToString::to_string).collect();
        self.nodes.push(Some(concord::Node::start(c.clone()).await?));
        self.addrs.push(addr);
        self.configs.push(c);
        Ok(i)
    }

    /// Stops every running node.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            let _ = self.stop(i).await;
        }
    }
}

/// Retries `check` until it passes, or panics naming `what` after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends signal `sig` (a name such as `TERM`) to process `pid`.
pub fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut()
            && matches!(c.try_wait(), Ok(None))
        {
            // A paused process must be resumed to die promptly.
            let _ = signal(c.id(), "CONT");
        }
        self.kill9();
    }
}

/// A client of a node's Internal service presenting the credential of
/// `keys`, as a member of the cluster would (tests that poke one replica).
pub async fn peer_client(
    addr: SocketAddr,
    keys: std::sync::Arc<concord::security::Keyring>,
) -> anyhow::Result<concord::net::PeerClient> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    Ok(concord_proto::v1::internal_client::InternalClient::with_interceptor(
        channel,
        concord::net::PeerCredential::new(keys),
    ))
}

/// The cluster keys a node keeps in `data_dir`.
pub fn keys_in(data_dir: &Path) -> anyhow::Result<std::sync::Arc<concord::security::Keyring>> {
    Ok(std::sync::Arc::new(concord::security::Keyring::open(data_dir)?))
}
