//! `concord bench`: YCSB-style load against running nodes.
//!
//! Workloads (as in YCSB's core workloads):
//!
//! | workload | mix |
//! |---|---|
//! | `a` | 50% read, 50% update |
//! | `b` | 95% read, 5% update |
//! | `c` | 100% read |
//! | `write` | 100% update |
//!
//! An update writes a fresh value with the newest context the benchmark has
//! seen for that key, as a well-behaved client would, so a key does not pile
//! up siblings; a write refused for the sibling limit is retried once with
//! the context the error carries and counted as a conflict. Before measuring,
//! every key is written once (the load phase, skipped for `write` unless
//! `--load` is given) and the workload runs unmeasured for `--warmup`
//! seconds. A progress line goes to stderr every second.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use concord_client::{Client, ClientError, Context, WriteOptions};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Debug)]
pub enum Workload {
    A,
    B,
    C,
    Write,
}

impl Workload {
    /// Fraction of operations that are reads.
    fn read_fraction(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::Write => 0.0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum, Debug)]
pub enum KeyDistribution {
    Zipfian,
    Uniform,
}

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// Nodes to send requests to, comma separated; requests are spread over them.
    #[arg(long, env = "CONCORD_ENDPOINT", default_value = super::DEFAULT_ENDPOINT, value_delimiter = ',')]
    endpoint: Vec<String>,
    #[command(flatten)]
    access: super::Access,
    /// Send each request straight to a replica of its key (token-aware
    /// routing); `--token-aware false` sends it to the endpoints as given,
    /// whose nodes forward what they are not replicas of.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    token_aware: bool,
    /// Operation mix.
    #[arg(long, value_enum, default_value = "a")]
    workload: Workload,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// HTTP/2 connections per endpoint (default: one per 16 in-flight requests, at most 4).
    #[arg(long)]
    connections: Option<usize>,
    /// Seconds to measure.
    #[arg(long, conflicts_with = "ops")]
    duration: Option<f64>,
    /// Operations to measure (instead of a duration).
    #[arg(long)]
    ops: Option<u64>,
    /// Seconds of unmeasured load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Key popularity.
    #[arg(long, value_enum, default_value = "zipfian")]
    distribution: KeyDistribution,
    /// Bucket to use.
    #[arg(long, default_value = "bench")]
    bucket: String,
    /// Write every key once before the run (default: on unless the workload is `write`).
    #[arg(long)]
    load: Option<bool>,
    /// Times the load phase writes every key. Passes after the first
    /// overwrite each key with the context of its last write, so the data
    /// set keeps its size (for measuring space amplification).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    load_passes: u32,
    /// Siblings each key gets in the load phase: that many concurrent
    /// writes (no context). Use with workload c to measure reads of
    /// conflicted keys (and their resolvers). The writes add to what the
    /// keys hold: run against a fresh bucket to get exactly this many.
    #[arg(long, default_value_t = 1)]
    siblings: u32,
    /// Threads of the load generator's runtime. One thread leaves the most
    /// CPU to a server on the same machine.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// First measure the floor: the same client, workload and concurrency
    /// against an in-process gRPC server that answers at once with
    /// messages of the same sizes. The report gives Concord's figures as
    /// ratios to it, which stay comparable across machines and days.
    #[arg(long)]
    floor: bool,
    /// Worker threads of the floor's server (0: one per core, as `concord
    /// serve` has by default).
    #[arg(long, default_value_t = 0, requires = "floor")]
    floor_threads: usize,
}

/// The load generator's runtime.
pub fn runtime(args: &BenchArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?)
}

/// Counters and histograms shared by the workers.
struct Stats {
    reads: Mutex<Histogram<u64>>,
    updates: Mutex<Histogram<u64>>,
    ops: AtomicU64,
    errors: AtomicU64,
    conflicts: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Stats {
    fn new() -> Self {
        let h = || Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"));
        Self {
            reads: h(),
            updates: h(),
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    fn error(&self, e: &ClientError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(e.to_string());
        }
    }
}

/// Picks keys by the configured distribution. Zipfian ranks are scattered
/// over the key space so hot keys do not sit in one partition.
struct KeyChooser {
    zipf: Option<Zipf<f64>>,
    keys: u64,
}

impl KeyChooser {
    fn new(keys: u64, dist: KeyDistribution) -> anyhow::Result<Self> {
        let zipf = match dist {
            KeyDistribution::Zipfian => Some(Zipf::new(keys as f64, 0.99).context("zipfian parameters")?),
            KeyDistribution::Uniform => None,
        };
        Ok(Self { zipf, keys })
    }

    fn next(&self, rng: &mut SmallRng) -> u64 {
        match &self.zipf {
            Some(z) => {
                let rank = z.sample(rng) as u64 - 1;
                // A fixed odd multiplier permutes ranks over the key space.
                rank.wrapping_mul(0x9e37_79b9_7f4a_7c15) % self.keys
            }
            None => rng.random_range(0..self.keys),
        }
    }
}

fn key_bytes(i: u64) -> Vec<u8> {
    format!("key{i:010}").into_bytes()
}

/// Everything a worker needs.
struct Shared {
    clients: Vec<Client>,
    args: BenchArgs,
    chooser: KeyChooser,
    /// Newest context seen per key.
    contexts: Vec<Mutex<Context>>,
    stats: Stats,
    /// Set once warm-up ends: from then on latencies are recorded.
    measuring: AtomicBool,
    stop: AtomicBool,
    /// Operations left to measure, when running by count.
    ops_left: AtomicU64,
}

impl Shared {
    async fn update(&self, client: &Client, k: u64, value: &[u8]) -> Result<(), ClientError> {
        let key = key_bytes(k);
        let ctx = self.contexts[k as usize].lock().unwrap().clone();
        let opts = WriteOptions::default();
        let r = match client.put_with(&self.args.bucket, &key, value, &ctx, opts).await {
            Err(ClientError::SiblingLimit { context, .. }) => {
                self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                client.put_with(&self.args.bucket, &key, value, &context, opts).await?
            }
            other => other?,
        };
        *self.contexts[k as usize].lock().unwrap() = r.context;
        Ok(())
    }

    async fn read(&self, client: &Client, k: u64) -> Result<(), ClientError> {
        let r = client.get(&self.args.bucket, &key_bytes(k)).await?;
        if !r.context.is_empty() {
            *self.contexts[k as usize].lock().unwrap() = r.context;
        }
        Ok(())
    }
}

async fn worker(shared: Arc<Shared>, id: usize) {
    let client = shared.clients[id % shared.clients.len()].clone();
    let mut rng = SmallRng::seed_from_u64(0x5eed ^ id as u64);
    let mut value = vec![0u8; shared.args.value_size];
    rng.fill(&mut value[..]);
    let read_fraction = shared.args.workload.read_fraction();
    while !shared.stop.load(Ordering::Relaxed) {
        let measuring = shared.measuring.load(Ordering::Relaxed);
        if measuring
            && shared.args.ops.is_some()
            && shared.ops_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_err()
        {
            break;
        }
        let k = shared.chooser.next(&mut rng);
        let is_read = rng.random_bool(read_fraction);
        let started = Instant::now();
        let result = if is_read {
            shared.read(&client, k).await
        } else {
            let at = rng.random_range(0..value.len().max(1));
            if let Some(b) = value.get_mut(at) {
                *b = b.wrapping_add(1);
            }
            shared.update(&client, k, &value).await
        };
        let micros = started.elapsed().as_micros().max(1) as u64;
        if !measuring {
            continue;
        }
        match result {
            Ok(()) => {
                let h = if is_read { &shared.stats.reads } else { &shared.stats.updates };
                let _ = h.lock().unwrap().record(micros.min(60_000_000));
                shared.stats.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.stats.error(&e),
        }
    }
}

async fn connect_all(args: &BenchArgs) -> anyhow::Result<Vec<Client>> {
    let per_endpoint = args.connections.unwrap_or_else(|| args.concurrency.div_ceil(16).clamp(1, 4));
    let options = concord_client::ConnectOptions { token_aware: args.token_aware, ..args.access.options()? };
    let mut clients = Vec::new();
    for _ in 0..per_endpoint {
        for e in &args.endpoint {
            clients.push(Client::connect_with(e, &options).await?);
        }
    }
    Ok(clients)
}

async fn load_keys(shared: &Arc<Shared>) -> anyhow::Result<()> {
    for pass in 0..shared.args.load_passes {
        load_pass(shared, if pass == 0 { "load" } else { "overwrite" }).await?;
    }
    Ok(())
}

/// Writes every key once.
async fn load_pass(shared: &Arc<Shared>, phase: &'static str) -> anyhow::Result<()> {
    let keys = shared.args.keys;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..shared.args.concurrency)
        .map(|id| {
            let shared = Arc::clone(shared);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let client = shared.clients[id % shared.clients.len()].clone();
                let mut value = vec![7u8; shared.args.value_size];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= keys {
                        return Ok::<(), ClientError>(());
                    }
                    if shared.args.siblings <= 1 {
                        shared.update(&client, k, &value).await?;
                        continue;
                    }
                    for s in 0..shared.args.siblings {
                        value[0] = s as u8;
                        client.put(&shared.args.bucket, &key_bytes(k), &value, &Context::none()).await?;
                    }
                }
            })
        })
        .collect();
    let progress = spawn_progress(phase, Arc::clone(&next), Some(keys));
    for t in tasks {
        t.await?.context("loading keys")?;
    }
    progress.abort();
    eprintln!("{phase}: wrote {keys} keys in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn spawn_progress(phase: &'static str, counter: Arc<AtomicU64>, total: Option<u64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = counter.load(Ordering::Relaxed);
            let of = total.map_or(String::new(), |t| format!(" of {t}"));
            eprintln!("[{phase} {:>4.0}s] {now}{of} ops, {} ops/s", started.elapsed().as_secs_f64(), now - last);
            last = now;
        }
    })
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.value_size + 14 > 1024 * 1024 {
        bail!("--value-size is too large");
    }
    if args.siblings == 0 || args.siblings > 1024 {
        bail!("--siblings must be between 1 and 1024");
    }
    if args.keys > 50_000_000 {
        bail!("--keys is limited to 50,000,000 (the benchmark keeps a context per key in memory)");
    }
    let duration = match (args.duration, args.ops) {
        (Some(d), _) if !(d > 0.0 && d.is_finite()) => bail!("--duration must be a positive number of seconds"),
        (Some(d), _) => Some(Duration::from_secs_f64(d)),
        (None, Some(0)) => bail!("--ops must be at least 1"),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let floor = if args.floor {
        let server = super::floor::EchoServer::start(args.floor_threads, args.value_size)?;
        let mut echo = args.clone();
        // As many endpoints (so as many connections) as the real run.
        echo.endpoint = vec![server.addr().to_string(); args.endpoint.len()];
        // The echo server is plain gRPC and asks for no token: the floor
        // stays the same whether the cluster runs with TLS or not.
        echo.access = Default::default();
        echo.load = Some(false);
        eprintln!("measuring the floor (an echo server at {})", server.addr());
        let floor = measure(echo, duration).await?;
        drop(server);
        Some(floor)
    } else {
        None
    };
    let json_out = args.json;
    let mut report = measure(args, duration).await?;
    if let Some(floor) = floor {
        let ratio = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) if b > 0.0 => json!(a / b),
            _ => serde_json::Value::Null,
        };
        report["to_floor"] = json!({
            "ops_per_sec": ratio(&report["ops_per_sec"], &floor["ops_per_sec"]),
            "p50": ratio(&report["all"]["p50_ms"], &floor["all"]["p50_ms"]),
            "p99": ratio(&report["all"]["p99_ms"], &floor["all"]["p99_ms"]),
        });
        report["floor"] = floor;
    }
    if json_out {
        println!("{report}");
    } else {
        print_report(&report);
    }
    Ok(())
}

/// Runs the load phase (unless off) and the measured phase against
/// `args.endpoint`; returns the report.
async fn measure(args: BenchArgs, duration: Option<Duration>) -> anyhow::Result<serde_json::Value> {
    let clients = connect_all(&args).await?;
    let load = args.load.unwrap_or(args.workload != Workload::Write);
    let chooser = KeyChooser::new(args.keys, args.distribution)?;
    let shared = Arc::new(Shared {
        clients,
        contexts: (0..args.keys).map(|_| Mutex::new(Context::none())).collect(),
        chooser,
        stats: Stats::new(),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ops_left: AtomicU64::new(args.ops.unwrap_or(0)),
        args,
    });
    if load {
        load_keys(&shared).await?;
    }
    let workers: Vec<_> =
        (0..shared.args.concurrency).map(|id| tokio::spawn(worker(Arc::clone(&shared), id))).collect();
    if shared.args.warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(shared.args.warmup)).await;
    }
    shared.measuring.store(true, Ordering::SeqCst);
    let started = Instant::now();
    let ops_counter = Arc::new(AtomicU64::new(0));
    let mirror = {
        let (shared, ops_counter) = (Arc::clone(&shared), Arc::clone(&ops_counter));
        tokio::spawn(async move {
            loop {
                ops_counter.store(shared.stats.ops.load(Ordering::Relaxed), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let progress = spawn_progress("run", ops_counter, shared.args.ops);
    match duration {
        Some(d) => {
            tokio::time::sleep(d).await;
            shared.stop.store(true, Ordering::SeqCst);
        }
        None => {
            // Workers stop themselves once the operation budget is spent.
        }
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();
    progress.abort();
    mirror.abort();
    Ok(report(&shared, elapsed))
}

fn summary(h: &Histogram<u64>) -> serde_json::Value {
    let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99), "p999_ms": q(0.999),
        "max_ms": h.max() as f64 / 1000.0, "mean_ms": h.mean() / 1000.0,
    })
}

fn report(shared: &Shared, elapsed: Duration) -> serde_json::Value {
    let s = &shared.stats;
    let reads = s.reads.lock().unwrap();
    let updates = s.updates.lock().unwrap();
    let mut all = reads.clone();
    all.add(&*updates).expect("histograms with equal bounds add");
    let ops = s.ops.load(Ordering::Relaxed);
    let throughput = ops as f64 / elapsed.as_secs_f64();
    let a = &shared.args;
    json!({
        "workload": format!("{:?}", a.workload).to_lowercase(),
        "endpoints": a.endpoint,
        "keys": a.keys, "value_size": a.value_size, "concurrency": a.concurrency,
        "connections": shared.clients.len(),
        "token_aware": a.token_aware,
        "distribution": format!("{:?}", a.distribution).to_lowercase(),
        "seconds": elapsed.as_secs_f64(),
        "ops": ops, "ops_per_sec": throughput,
        "errors": s.errors.load(Ordering::Relaxed),
        "first_error": *s.first_error.lock().unwrap(),
        "sibling_conflicts": s.conflicts.load(Ordering::Relaxed),
        "all": summary(&all), "read": summary(&reads), "update": summary(&updates),
    })
}

fn print_report(report: &serde_json::Value) {
    if let Some(floor) = report.get("floor") {
        println!("floor (echo server, same client and load):");
        print_run(floor);
        println!();
        println!("concord:");
    }
    print_run(report);
    if let Some(r) = report.get("to_floor") {
        let pct = |v: &serde_json::Value| v.as_f64().map_or("-".to_owned(), |x| format!("{:.0}%", x * 100.0));
        let times = |v: &serde_json::Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.2}x"));
        println!();
        println!(
            "to the floor: {} of its ops/s, p50 {} and p99 {} its own",
            pct(&r["ops_per_sec"]),
            times(&r["p50"]),
            times(&r["p99"])
        );
    }
}

fn print_run(report: &serde_json::Value) {
    println!(
        "workload {} | {} keys | {} B values | concurrency {} | {} connection(s){} | {}",
        report["workload"].as_str().unwrap_or_default(),
        report["keys"],
        report["value_size"],
        report["concurrency"],
        report["connections"],
        if report["token_aware"].as_bool() == Some(true) { ", token-aware" } else { "" },
        report["distribution"].as_str().unwrap_or_default()
    );
    println!(
        "{} ops in {:.2}s: {:.0} ops/s, {} errors",
        report["ops"],
        report["seconds"].as_f64().unwrap_or_default(),
        report["ops_per_sec"].as_f64().unwrap_or_default(),
        report["errors"]
    );
    if let Some(e) = report["first_error"].as_str() {
        println!("first error: {e}");
    }
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op", "count", "p50 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    for name in ["all", "read", "update"] {
        let r = &report[name];
        if r["count"].as_u64() == Some(0) {
            continue;
        }
        println!(
            "{:<8} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            name,
            r["count"],
            r["p50_ms"].as_f64().unwrap_or_default(),
            r["p95_ms"].as_f64().unwrap_or_default(),
            r["p99_ms"].as_f64().unwrap_or_default(),
            r["p999_ms"].as_f64().unwrap_or_default(),
            r["max_ms"].as_f64().unwrap_or_default()
        );
    }
}
