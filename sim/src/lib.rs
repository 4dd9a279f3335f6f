//! Deterministic simulation of whole Concord clusters.
//!
//! Real [`concord::Node`]s (coordinator, cluster worker, gossip, hinted
//! handoff, anti-entropy) run in one process on turmoil's simulated network
//! and clock, on the in-memory engine, all on one thread. Every choice the
//! simulation makes (the faults, the clients' operations, the network's
//! latencies, the nodes' incarnations and retry jitter) comes from one
//! seed, and so does every random byte the libraries draw ([`entropy`]):
//! a seed run in a process of its own ([`child`]) replays exactly, and a
//! failing seed can be run again with a trace of what happened.
//!
//! A run has three phases:
//! 1. **Faults**: clients add unique elements to sets (one key per set)
//!    while the nemesis partitions nodes (also one way), slows links down,
//!    crashes and restarts nodes, wipes their data, skews their clocks, and
//!    has nodes join and leave the ring.
//! 2. **Healing**: the faults stop, every node runs again, and the run
//!    waits until no node holds hints and every key's replicas agree.
//! 3. **Checking**: [`check`] holds the history against every replica's
//!    final copy.
//!
//! See docs/RELIABILITY.md for the fault model and the checker's rules.

mod check;
pub mod child;
mod clock;
pub mod entropy;
mod net;
mod workload;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use concord::causal::Object;
use concord::cluster::Cluster;
use concord::env::Environment;
use concord::handoff::Handoff;
use concord::storage::{MemStore, ObjectStore};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;

pub use workload::{Delete, History, Write};

/// The bucket every client writes to.
pub const BUCKET: &str = "sets";

/// What one run simulates.
#[derive(Clone, Debug)]
pub struct Options {
    /// Nodes in the cluster at the start (every bucket keeps 3 replicas).
    pub nodes: usize,
    /// Nodes that start dormant and join when the nemesis says so.
    pub spares: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys (sets) the clients share.
    pub keys: usize,
    /// Simulated length of the fault phase.
    pub fault_phase: Duration,
    /// Whether the nemesis runs (off: a fault-free baseline).
    pub faults: bool,
    /// Keep a readable trace of faults and operations in the report.
    pub trace: bool,
    /// A deliberate bug to plant in the nodes (needs the `planted-bugs`
    /// feature).
    pub planted: Option<concord::planted::Bug>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            nodes: 4,
            spares: 1,
            clients: 3,
            keys: 6,
            fault_phase: Duration::from_secs(30),
            faults: true,
            trace: false,
            planted: None,
        }
    }
}

/// What one run did and found.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub seed: u64,
    /// Simulated time from start to the end of the check.
    pub simulated: Duration,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// The nodes' durability mode and flush interval, as drawn.
    pub durability: String,
    /// Writes (adds) attempted and acknowledged; deletes attempted.
    pub writes: usize,
    pub acked: usize,
    pub deletes: usize,
    /// Acknowledged adds the checker verified.
    pub checked: usize,
    /// Of those, adds missing at the end because every node that
    /// acknowledged them lost them in a wipe, or in a crash before a
    /// `periodic` flush: losses the durability mode allows.
    pub lost_as_allowed: usize,
    /// Everything the checker found wrong; empty for a good run.
    pub anomalies: Vec<String>,
    /// Faults and operations in order, when [`Options::trace`] is set.
    pub trace: Vec<String>,
}

impl Report {
    /// Total faults injected.
    pub fn fault_count(&self) -> usize {
        self.faults.values().sum()
    }
}

/// A node as the simulation keeps it between its lives: its "disk" (the
/// in-memory engine and the data directory survive a crash) and, while it
/// runs, handles on its parts.
struct Slot {
    name: String,
    /// A spare that has not been asked to join yet.
    dormant: bool,
    store: MemStore,
    dir: PathBuf,
    live: Option<Live>,
    /// Simulated times at which the node lost its data.
    wiped_at: Vec<Duration>,
    /// Simulated times at which the node stopped (crash or wipe).
    stopped_at: Vec<Duration>,
}

#[derive(Clone)]
struct Live {
    objects: Arc<ObjectStore>,
    cluster: Arc<Cluster>,
    handoff: Arc<Handoff>,
    antientropy: Arc<concord::antientropy::AntiEntropy>,
}

/// State shared by the hosts, the clients and the driver (all on one thread).
#[derive(Default)]
pub(crate) struct Shared {
    slots: Vec<Slot>,
    history: History,
    trace: Option<Vec<String>>,
    /// Clients start no operation after this simulated time.
    clients_stop_at: Duration,
    /// Simulated times at which the nemesis had a node join or leave.
    ring_changes: Vec<Duration>,
    /// Admin calls for the control client to make: (node, call).
    admin: std::collections::VecDeque<(String, Admin)>,
    /// The simulated time as of the driver's last step (for the driver's
    /// own trace lines; hosts read the clock directly).
    driver_clock: Duration,
    /// Every node's durability mode, and its flush interval.
    durability: Durability,
}

/// How the nodes of a run make writes durable, drawn from the seed: a
/// crash loses what a node had not flushed.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Durability {
    pub(crate) mode: concord::storage::DurabilityMode,
    pub(crate) flush_every: Duration,
}

impl Durability {
    fn draw(seed: u64) -> Self {
        use concord::storage::DurabilityMode::{Fsync, Periodic};
        let mut rng = SmallRng::seed_from_u64(seed ^ 0xd0_7ab1e);
        match rng.random_range(0..3) {
            0 => Self { mode: Fsync, flush_every: Duration::from_millis(10) },
            1 => Self { mode: Periodic, flush_every: Duration::from_millis(10) },
            _ => Self { mode: Periodic, flush_every: Duration::from_millis(1_000) },
        }
    }

    /// Whether a node that acknowledged a write at `acked` and crashed at
    /// `crashed` may have lost it: in `periodic` mode, unless a flush
    /// surely ran in between (the flusher runs every interval, on 2 ms
    /// ticks).
    pub(crate) fn may_lose(&self, acked: Duration, crashed: Duration) -> bool {
        self.mode == concord::storage::DurabilityMode::Periodic
            && crashed <= acked + self.flush_every + Duration::from_millis(50)
    }
}

impl Shared {
    pub(crate) fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let at = turmoil::sim_elapsed().unwrap_or(self.driver_clock);
            t.push(format!("{:>9.3}s {}", at.as_secs_f64(), line()));
        }
    }

    /// The node's own copy of `key`, if it is running.
    pub(crate) fn local_copy(&self, node: &str, key: &[u8]) -> Option<Option<Object>> {
        let slot = self.slots.iter().find(|s| s.name == node)?;
        let live = slot.live.as_ref()?;
        let p = live.cluster.ring().partition_of(BUCKET, key);
        live.objects.read(p, BUCKET, key).ok()
    }

    /// The newest ring any running node holds (a node that left the ring
    /// may hold an old one).
    pub(crate) fn ring(&self) -> Option<Arc<concord::ring::Ring>> {
        self.slots.iter().filter_map(|s| s.live.as_ref()).map(|l| l.cluster.ring()).max_by_key(|r| r.epoch())
    }

    /// Whether `node` replicates `key` on the newest ring.
    pub(crate) fn is_replica(&self, node: &str, key: &[u8]) -> bool {
        self.ring().is_some_and(|r| r.preference_list(r.partition_of(BUCKET, key), 3).iter().any(|n| n == node))
    }

    /// Whether `node` stopped or lost its data after `since`.
    pub(crate) fn stopped_since(&self, node: &str, since: Duration) -> bool {
        self.slots.iter().find(|s| s.name == node).is_none_or(|s| s.stopped_at.iter().any(|t| *t >= since))
    }
}

/// Simulated time since the run started.
pub(crate) fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

type SharedRef = Rc<RefCell<Shared>>;

/// Runs one seed and checks it.
///
/// Every random byte the process's libraries draw from now on comes from
/// the seed ([`entropy`]), and the run has a thread of its own, so the
/// first run in a process replays exactly in another process; [`child`]
/// gives each seed a process.
pub fn run(seed: u64, options: &Options) -> anyhow::Result<Report> {
    // The run's tracing: the tracker that tells the clock which host runs,
    // and with a trace, the nodes' logs as RUST_LOG selects them. Built
    // before the seed takes over and off the run's thread, so that logging
    // or not makes no difference to the hash maps the run creates.
    let logs = (options.trace && std::env::var_os("RUST_LOG").is_some()).then(|| {
        tracing_subscriber::fmt::layer()
            .with_timer(SimulatedTime)
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    let subscriber = tracing_subscriber::registry()
        .with(clock::Tracker.with_filter(tracing_subscriber::filter::filter_fn(|m| m.name() == "node")))
        .with(logs);
    entropy::seed_process(seed)?;
    #[cfg(not(feature = "planted-bugs"))]
    anyhow::ensure!(options.planted.is_none(), "planting a bug needs the `planted-bugs` feature");
    std::thread::scope(|s| {
        let run = std::thread::Builder::new().name(format!("sim-{seed}")).spawn_scoped(s, || {
            #[cfg(feature = "planted-bugs")]
            concord::planted::plant(options.planted);
            run_here(seed, options, subscriber)
        })?;
        run.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn run_here(
    seed: u64,
    options: &Options,
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) -> anyhow::Result<Report> {
    let tmp = tempfile::tempdir()?;
    let shared: SharedRef = Rc::new(RefCell::new(Shared {
        trace: options.trace.then(Vec::new),
        clients_stop_at: options.fault_phase,
        durability: Durability::draw(seed),
        ..Default::default()
    }));
    let names: Vec<String> = (1..=options.nodes + options.spares).map(|i| format!("n{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        shared.borrow_mut().slots.push(Slot {
            name: name.clone(),
            dormant: i >= options.nodes,
            store: MemStore::volatile(),
            dir: tmp.path().join(name),
            live: None,
            wiped_at: Vec::new(),
            stopped_at: Vec::new(),
        });
    }

    concord::env::set_thread_clock(Some(clock::wall_clock));
    concord::env::set_thread_seed(Some(seed));
    concord::env::set_thread_inline_blocking(true);
    let _reset = ResetThread;
    let _tracing = tracing::subscriber::set_default(subscriber);

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_767_225_600)) // 2026-01-01
        .simulation_duration(Duration::from_secs(24 * 3600))
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(5))
        .build();

    let secret = concord::security::KeySet::generate().export();
    let udp = net::Udp::default();
    for (i, name) in names.iter().enumerate() {
        let shared = Rc::clone(&shared);
        let (host, names, secret, udp) = (name.clone(), names.clone(), secret.clone(), udp.clone());
        sim.host(name.as_str(), move || {
            let (shared, name, names) = (Rc::clone(&shared), host.clone(), names.clone());
            let (secret, udp) = (secret.clone(), udp.clone());
            async move { serve(shared, i, name, names, secret, udp).await }
        });
    }
    for c in 0..options.clients {
        let shared = Rc::clone(&shared);
        let names = names.clone();
        let client_seed = seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(c as u64 + 1));
        let keys = options.keys;
        sim.client(format!("c{c}"), async move {
            workload::client(shared, c, names, keys, client_seed).await;
            Ok(())
        });
    }

    {
        let shared = Rc::clone(&shared);
        sim.client("control", async move {
            control(shared).await;
            Ok(())
        });
    }

    let durability = shared.borrow().durability;
    let mut report = Report {
        seed,
        durability: format!("{:?}, flush every {:?}", durability.mode, durability.flush_every).to_lowercase(),
        ..Default::default()
    };
    shared.borrow_mut().note(|| format!("durability: {}", report.durability));
    let mut rng = SmallRng::seed_from_u64(seed.rotate_left(17) ^ 0x5eed);
    // Let the cluster form before the first fault.
    let first_fault = Duration::from_secs(5);
    let mut nemesis = Nemesis { active: None, members: names[..options.nodes].to_vec() };
    let mut next_fault = first_fault;
    while sim.elapsed() < options.fault_phase {
        if options.faults && sim.elapsed() >= next_fault {
            let pause = nemesis.step(&mut sim, &shared, &names, &mut rng, &mut report);
            next_fault = sim.elapsed() + pause;
        }
        sim.step().map_err(|e| anyhow::anyhow!("the simulation failed: {e}"))?;
        shared.borrow_mut().driver_clock = sim.elapsed();
    }
    nemesis.heal_all(&mut sim, &shared, &names);
    shared.borrow_mut().note(|| "faults stop; every link healed, every node running".into());

    // Healing: wait (in simulated time) for the clients to finish, every
    // hint to be delivered and every key's replicas to agree.
    let give_up = sim.elapsed() + Duration::from_secs(120);
    let mut converged = false;
    let mut next_look = sim.elapsed();
    while sim.elapsed() < give_up {
        let clients_done = sim.step().map_err(|e| anyhow::anyhow!("the simulation failed: {e}"))?;
        shared.borrow_mut().driver_clock = sim.elapsed();
        if clients_done && sim.elapsed() >= next_look {
            next_look = sim.elapsed() + Duration::from_secs(1);
            if settled(&shared.borrow(), options) {
                converged = true;
                break;
            }
        }
    }
    report.simulated = sim.elapsed();
    let shared = shared.borrow();
    if !converged {
        report.anomalies.push(format!(
            "not converged {:?} after the faults stopped: {}",
            give_up.saturating_sub(options.fault_phase),
            describe_divergence(&shared, options)
        ));
    }
    check::check(&shared, options, &mut report);
    report.trace = shared.trace.clone().unwrap_or_default();
    Ok(report)
}

/// Stamps the nodes' log lines with simulated time, as the trace is, and
/// the host that logged them.
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let host = clock::running().unwrap_or_else(|| "-".into());
        write!(w, "{:9.3}s {host:>7}", now().as_secs_f64())
    }
}

/// Restores the thread's clock and random source when a run ends, even by
/// a panic.
struct ResetThread;

impl Drop for ResetThread {
    fn drop(&mut self) {
        concord::env::set_thread_clock(None);
        concord::env::set_thread_seed(None);
        concord::env::set_thread_inline_blocking(false);
        clock::clear();
    }
}

/// One node's life: starts it on its data and serves until crashed.
async fn serve(
    shared: SharedRef,
    i: usize,
    name: String,
    names: Vec<String>,
    secret: String,
    udp: net::Udp,
) -> turmoil::Result {
    let me = SocketAddr::new(turmoil::lookup(name.as_str()), net::PORT);
    while shared.borrow().slots[i].dormant {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (store, dir) = {
        let s = shared.borrow();
        (s.slots[i].store.clone(), s.slots[i].dir.clone())
    };

    let db_marker = dir.join("db");
    let mut config = concord::Config {
        node_id: Some(name.clone()),
        data_dir: dir,
        listen: me,
        advertise: Some(me),
        seeds: names
            .iter()
            .filter(|n| **n != name)
            .map(|n| SocketAddr::new(turmoil::lookup(n.as_str()), net::PORT).to_string())
            .collect(),
        gossip_interval_ms: 250,
        request_timeout_ms: 2_000,
        partitions: 16,
        storage_threads: 0,
        ..Default::default()
    };
    config.security.cluster_secret = Some(secret);
    config.antientropy.interval_secs = 2;
    config.handoff.retry_max_ms = 2_000;
    let durability = shared.borrow().durability;
    config.durability = durability.mode;
    config.flush_interval_ms = durability.flush_every.as_millis() as u64;
    let env = Environment {
        store: Some(Arc::new(store)),
        incoming: Some((me, net::incoming().await?)),
        dialer: Some(net::dialer()),
        gossip: Some(Arc::new(udp)),
        one_thread: true,
    };
    let node = concord::Node::start_in(config, env).await.map_err(|e| format!("{name} did not start: {e}"))?;
    // The data directory tells a crash from a clean stop, and a new node
    // from one that holds data, by sled's `db` directory. The in-memory
    // engine stands in its place, so the directory is made as sled would
    // make it at the first start (and goes with the rest in a wipe).
    std::fs::create_dir_all(db_marker)?;
    {
        let mut s = shared.borrow_mut();
        s.slots[i].live = Some(Live {
            objects: Arc::clone(node.objects()),
            cluster: Arc::clone(node.cluster()),
            handoff: Arc::clone(node.handoff()),
            antientropy: Arc::clone(node.antientropy()),
        });
        s.note(|| format!("{name} started"));
    }
    // Serves until the simulation crashes the host, which drops the node
    // (and everything it runs) without a shutdown, as kill -9 would.
    std::future::pending::<()>().await;
    drop(node);
    Ok(())
}

/// Whether the cluster has settled: every member of the ring running, on
/// the same ring, seeing every member up, holding no hints and only the
/// partitions it owns (transfers done); and every key's replicas identical.
fn settled(shared: &Shared, options: &Options) -> bool {
    let Some(ring) = shared.ring() else { return false };
    let members: Vec<&String> = ring.members().keys().collect();
    let all_up = members.iter().all(|m| {
        shared.slots.iter().find(|s| s.name == **m).and_then(|s| s.live.as_ref()).is_some_and(|l| {
            let status = l.cluster.status();
            let mine = l.cluster.ring();
            *mine == *ring
                && members.iter().all(|o| status.nodes.iter().any(|n| n.node_id == **o && n.status == "up"))
                && l.handoff.hints().total() == 0
                && l.objects.trees().iter().all(|(p, n)| mine.preference_list(*p, *n as usize).iter().any(|r| r == *m))
        })
    });
    let no_hints = shared.slots.iter().filter_map(|s| s.live.as_ref()).all(|l| l.handoff.hints().total() == 0);
    all_up && no_hints && (0..options.keys).all(|k| replicas_agree(shared, &workload::key(k)).is_ok())
}

/// Whether every replica of `key` holds the same object (a missing copy and
/// a copy of only tombstones count as the same).
fn replicas_agree(shared: &Shared, key: &[u8]) -> Result<(), String> {
    let Some(ring) = shared.ring() else { return Err("no node is running".into()) };
    let replicas = ring.preference_list(ring.partition_of(BUCKET, key), 3);
    let copies: Vec<(String, Option<Object>)> = replicas
        .iter()
        .map(|r| {
            let copy = shared.local_copy(r, key).flatten().filter(|o| o.live_siblings().next().is_some());
            (r.clone(), copy)
        })
        .collect();
    match copies.windows(2).find(|w| w[0].1 != w[1].1) {
        None => Ok(()),
        Some(w) => Err(format!(
            "key {} differs between {} ({}) and {} ({})",
            String::from_utf8_lossy(key),
            w[0].0,
            workload::describe(w[0].1.as_ref()),
            w[1].0,
            workload::describe(w[1].1.as_ref())
        )),
    }
}

fn describe_divergence(shared: &Shared, options: &Options) -> String {
    let mut out: Vec<String> = shared
        .slots
        .iter()
        .filter_map(|s| match &s.live {
            None if s.dormant => None,
            None => Some(format!("{} is not running", s.name)),
            Some(l) if l.handoff.hints().total() > 0 => {
                Some(format!("{} holds {} hints", s.name, l.handoff.hints().total()))
            }
            Some(_) => None,
        })
        .collect();
    for k in 0..options.keys {
        if let Err(e) = replicas_agree(shared, &workload::key(k)) {
            out.push(format!("{e}\n{}", dump_key(shared, &workload::key(k))));
        }
    }
    if out.is_empty() { "the ring or membership had not settled".into() } else { out.join("; ") }
}

/// Every replica's copy of `key` in detail: its version vector, sibling
/// dots, whether its trees are trusted and how anti-entropy is doing.
pub(crate) fn dump_key(shared: &Shared, key: &[u8]) -> String {
    let mut out = Vec::new();
    for s in &shared.slots {
        let Some(l) = &s.live else { continue };
        let p = l.cluster.ring().partition_of(BUCKET, key);
        let copy = l.objects.read(p, BUCKET, key).ok().flatten();
        let status = l.antientropy.status();
        out.push(format!(
            "  {} (actor {}, partition {p}, trusted {}, rebuilding {}, verifying {:?}, never exchanged {}, totals {:?}): {}",
            s.name,
            l.objects.actor(),
            l.objects.trusted(p),
            status.rebuilding,
            status.verifying,
            status.never_exchanged,
            status.totals,
            match &copy {
                None => "no copy".into(),
                Some(o) => format!(
                    "vv {:?}, siblings {:?}",
                    o.context().entries(),
                    o.siblings().iter().map(|s| (s.dot, s.content.is_tombstone())).collect::<Vec<_>>()
                ),
            }
        ));
    }
    out.join("\n")
}

/// Draws and applies faults, one at a time.
struct Nemesis {
    /// The fault in force and when it ends.
    active: Option<(Fault, Duration)>,
    /// The ring's members as the nemesis intends them (its choices depend
    /// on this, not on when the cluster gets round to a change, so they
    /// replay exactly).
    members: Vec<String>,
}

#[derive(Clone, Debug)]
enum Fault {
    Partition(String),
    OneWay(String, String),
    Slow,
    Crash(String),
    Wipe(String),
    /// The node's wall clock runs this many milliseconds ahead (or behind).
    Skew(String, i64),
    /// A spare starts and joins through its seeds, or a node that left
    /// joins again (discarding what it holds).
    Join(String),
    /// A member leaves the ring, handing its partitions over.
    Leave(String),
}

/// An admin call the control client makes.
#[derive(Clone, Debug)]
pub(crate) enum Admin {
    Join { seed: String },
    Leave,
}

/// The control client: makes the nemesis' admin calls, in order, until
/// the fault phase is over and none is left.
async fn control(shared: SharedRef) {
    loop {
        let next = shared.borrow_mut().admin.pop_front();
        let Some((node, call)) = next else {
            if now() >= shared.borrow().clients_stop_at {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let addr = SocketAddr::new(turmoil::lookup(node.as_str()), net::PORT);
        let mut admin = concord_proto::v1::admin_client::AdminClient::new(net::channel(addr));
        let result = match &call {
            Admin::Join { seed } => {
                admin.join(concord_proto::v1::JoinRequest { seed: seed.clone(), discard_data: true }).await.map(|_| ())
            }
            Admin::Leave => admin.leave(concord_proto::v1::LeaveRequest { node_id: String::new() }).await.map(|_| ()),
        };
        shared.borrow_mut().note(|| match &result {
            Ok(()) => format!("control: {call:?} on {node}: done"),
            Err(e) => format!("control: {call:?} on {node}: {}", e.message()),
        });
    }
}

impl Nemesis {
    /// Ends the fault in force when its time is up, or starts a new one.
    /// Returns how long to wait before the next step.
    fn step(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        shared: &SharedRef,
        names: &[String],
        rng: &mut SmallRng,
        report: &mut Report,
    ) -> Duration {
        if let Some((fault, _)) = self.active.take() {
            self.heal(sim, shared, names, &fault);
            return Duration::from_millis(rng.random_range(500..2_000));
        }
        let members = self.members.clone();
        let running: Vec<String> =
            shared.borrow().slots.iter().filter(|s| !s.dormant).map(|s| s.name.clone()).collect();
        let victim = running[rng.random_range(0..running.len())].clone();
        // Ring changes get two shares of eight: a leave followed by a
        // re-join (which discards the node's data) is what puts hinted
        // handoff, rather than anti-entropy, in charge of writes a leaving
        // node took.
        let kind = rng.random_range(0..8);
        let outsiders: Vec<&String> = names.iter().filter(|n| !members.contains(n)).collect();
        // A ring keeps at least 3 members (a bucket's n).
        let can_leave = members.len() > 3;
        let fault = match kind {
            5 | 7 if !outsiders.is_empty() && (!can_leave || rng.random()) => {
                Fault::Join(outsiders[rng.random_range(0..outsiders.len())].clone())
            }
            5 | 7 => Fault::Leave(members[rng.random_range(0..members.len())].clone()),
            0 => Fault::Partition(victim),
            1 => {
                let others: Vec<&String> = names.iter().filter(|n| **n != victim).collect();
                Fault::OneWay(victim.clone(), others[rng.random_range(0..others.len())].clone())
            }
            2 => Fault::Slow,
            3 => Fault::Crash(victim),
            6 => {
                let ms = rng.random_range(10..30_000i64);
                Fault::Skew(victim, if rng.random() { ms } else { -ms })
            }
            _ => Fault::Wipe(victim),
        };
        let fault = match fault {
            // Only members are partitioned or cut: an outsider's links carry
            // nothing worth cutting.
            Fault::Partition(v) | Fault::OneWay(v, _) if !members.contains(&v) => Fault::Slow,
            f => f,
        };
        // A partition holds long enough, more often than not, for the
        // others' failure detectors to give the victim up, so that it
        // coordinates writes by sloppy quorum alone.
        let hold = match fault {
            Fault::Partition(_) => Duration::from_millis(rng.random_range(2_000..10_000)),
            _ => Duration::from_millis(rng.random_range(1_000..6_000)),
        };
        let now = sim.elapsed();
        let kind = match &fault {
            Fault::Partition(v) => {
                for other in names.iter().filter(|n| *n != v) {
                    sim.partition(v.as_str(), other.as_str());
                }
                "partition"
            }
            Fault::OneWay(from, to) => {
                sim.partition_oneway(from.as_str(), to.as_str());
                "one-way"
            }
            Fault::Slow => {
                sim.set_max_message_latency(Duration::from_millis(rng.random_range(50..400)));
                "slow network"
            }
            Fault::Crash(v) | Fault::Wipe(v) => {
                sim.crash(v.as_str());
                let mut s = shared.borrow_mut();
                let wipe = matches!(fault, Fault::Wipe(_));
                let slot = s.slots.iter_mut().find(|s| s.name == *v).expect("a known node");
                slot.live = None;
                slot.stopped_at.push(now);
                if wipe {
                    slot.wiped_at.push(now);
                    slot.store = MemStore::volatile();
                    let _ = std::fs::remove_dir_all(&slot.dir);
                } else {
                    // What the node had not flushed is gone.
                    slot.store = slot.store.crash();
                }
                if wipe { "wipe" } else { "crash" }
            }
            Fault::Skew(v, ms) => {
                clock::set_skew(v, *ms);
                "clock skew"
            }
            Fault::Join(n) => {
                self.members.push(n.clone());
                let mut s = shared.borrow_mut();
                s.ring_changes.push(now);
                let slot = s.slots.iter_mut().find(|s| s.name == *n).expect("a known node");
                if slot.dormant {
                    slot.dormant = false;
                } else {
                    let seed = members.first().cloned().unwrap_or_else(|| names[0].clone());
                    let seed = SocketAddr::new(sim.lookup(seed.as_str()), net::PORT).to_string();
                    s.admin.push_back((n.clone(), Admin::Join { seed }));
                }
                "join"
            }
            Fault::Leave(n) => {
                self.members.retain(|m| m != n);
                let mut s = shared.borrow_mut();
                s.ring_changes.push(now);
                s.admin.push_back((n.clone(), Admin::Leave));
                "leave"
            }
        };
        *report.faults.entry(kind.to_string()).or_default() += 1;
        shared.borrow_mut().note(|| format!("nemesis: {fault:?} for {hold:?}"));
        self.active = Some((fault, now + hold));
        hold
    }

    fn heal(&self, sim: &mut turmoil::Sim<'_>, shared: &SharedRef, names: &[String], fault: &Fault) {
        match fault {
            Fault::Partition(v) => {
                for other in names.iter().filter(|n| *n != v) {
                    sim.repair(v.as_str(), other.as_str());
                }
            }
            Fault::OneWay(from, to) => sim.repair_oneway(from.as_str(), to.as_str()),
            Fault::Slow => sim.set_max_message_latency(Duration::from_millis(5)),
            Fault::Crash(v) | Fault::Wipe(v) => sim.bounce(v.as_str()),
            Fault::Skew(v, _) => clock::set_skew(v, 0),
            Fault::Join(_) | Fault::Leave(_) => {}
        }
        shared.borrow_mut().note(|| format!("nemesis: healed {fault:?}"));
    }

    fn heal_all(&mut self, sim: &mut turmoil::Sim<'_>, shared: &SharedRef, names: &[String]) {
        if let Some((fault, _)) = self.active.take() {
            self.heal(sim, shared, names, &fault);
        }
    }
}
