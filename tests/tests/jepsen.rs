//! A Jepsen-style test on real processes: three `concord serve` nodes, each
//! in its own network namespace on a private bridge, while clients add
//! unique elements to sets (read, merge every sibling, write back with the
//! read's context) and a nemesis partitions nodes (both ways and one way),
//! kills them with SIGKILL and restarts them, and pauses them with SIGSTOP.
//! At the end, with every fault healed, every node is read at R=ALL: each
//! acknowledged add must be in its set. The checker, not the test, decides
//! what counts as lost.
//!
//! Links are cut with blackhole routes inside the nodes' namespaces, so
//! nothing outside the namespaces this test makes is touched; the host gets
//! one veth into the bridge, on a private /24. The test needs root and
//! `ip` (iproute2, installed from the distribution if missing); without
//! them it prints why and passes without running.
//!
//! `CONCORD_JEPSEN_SECS` sets the length of the fault phase (60 s by
//! default) and `CONCORD_JEPSEN_SEED` the nemesis' seed; `bench/jepsen.sh`
//! runs it for longer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_client::{Client, Consistency, ReadOptions, WriteOptions};
use concord_tests::{concord_bin, signal};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 3;
const PORT: u16 = 7379;

/// Runs `ip` with `args`; an error names the command.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        // The distribution's package, as the test's own setup step.
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-q", "iproute2"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return Some("`ip` (iproute2) is missing and could not be installed".into());
        }
    }
    let probe = format!("cjprobe{}", std::process::id());
    if let Err(e) = ip(&["netns", "add", &probe]) {
        return Some(format!("cannot create a network namespace: {e}"));
    }
    let _ = ip(&["netns", "del", &probe]);
    None
}

/// Three node namespaces and a hub namespace holding the bridge, plus one
/// veth from the host into the hub. Everything is removed on drop.
struct Lab {
    tag: String,
    subnet: u8,
}

impl Lab {
    fn create() -> Result<Self, String> {
        let pid = std::process::id();
        let lab = Lab { tag: format!("cj{}", pid % 100_000), subnet: (20 + pid % 200) as u8 };
        // On an error, dropping `lab` removes whatever was built.
        lab.build()?;
        Ok(lab)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn hub(&self) -> String {
        format!("{}h", self.tag)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([10, 77, self.subnet, i as u8 + 1], PORT))
    }

    fn build(&self) -> Result<(), String> {
        let (t, hub) = (&self.tag, self.hub());
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let mut ends: Vec<(String, String, String, String)> = (0..NODES)
            .map(|i| {
                (format!("{t}v{i}"), format!("{t}p{i}"), self.ns(i), format!("10.77.{}.{}/24", self.subnet, i + 1))
            })
            .collect();
        ends.push((format!("{t}vh"), format!("{t}ph"), String::new(), format!("10.77.{}.100/24", self.subnet)));
        for (inner, outer, ns, cidr) in &ends {
            ip(&["link", "add", inner, "type", "veth", "peer", "name", outer])?;
            ip(&["link", "set", outer, "netns", &hub])?;
            ip(&["-n", &hub, "link", "set", outer, "master", "br0", "up"])?;
            if ns.is_empty() {
                // The host's end: the test's clients reach the nodes here.
                ip(&["addr", "add", cidr, "dev", inner])?;
                ip(&["link", "set", inner, "up"])?;
            } else {
                ip(&["netns", "add", ns])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
                ip(&["link", "set", inner, "netns", ns])?;
                ip(&["-n", ns, "addr", "add", cidr, "dev", inner])?;
                ip(&["-n", ns, "link", "set", inner, "up"])?;
            }
        }
        Ok(())
    }

    /// Node `from` can no longer send to node `to` (a one-way cut).
    fn cut(&self, from: usize, to: usize) {
        let dest = format!("{}/32", self.addr(to).ip());
        let _ = ip(&["-n", &self.ns(from), "route", "add", "blackhole", &dest]);
    }

    /// Every cut healed.
    fn heal(&self) {
        for i in 0..NODES {
            let _ = ip(&["-n", &self.ns(i), "route", "flush", "type", "blackhole"]);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..NODES {
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        // Deleting the hub deletes the veth ends in it, and so their pairs.
        let _ = ip(&["netns", "del", &self.hub()]);
        let _ = ip(&["link", "del", &format!("{}vh", self.tag)]);
    }
}

/// A `concord serve` process inside a namespace.
struct Proc {
    child: Option<Child>,
    ns: String,
    addr: SocketAddr,
    seeds: String,
    dir: PathBuf,
    name: String,
    paused: bool,
}

impl Proc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(concord_bin())
            .args(["serve", "--listen", &self.addr.to_string(), "--node-id", &self.name, "--seeds", &self.seeds])
            .arg("--data-dir")
            .arg(&self.dir)
            // The test's own settings are not node settings (a node
            // refuses `CONCORD_*` variables it does not know).
            .env_remove("CONCORD_JEPSEN_SECS")
            .env_remove("CONCORD_JEPSEN_SEED")
            .env("CONCORD_GOSSIP_INTERVAL_MS", "200")
            .env("CONCORD_ANTIENTROPY__INTERVAL_SECS", "5")
            .env("CONCORD_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting concord serve in its namespace");
        self.child = Some(child);
        self.paused = false;
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pause(&mut self) {
        if let Some(c) = &self.child
            && signal(c.id(), "STOP").is_ok()
        {
            self.paused = true;
        }
    }

    fn resume(&mut self) {
        if let Some(c) = &self.child {
            let _ = signal(c.id(), "CONT");
        }
        self.paused = false;
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.resume();
        self.kill9();
    }
}

/// A set's elements, as stored: comma separated.
fn elements(value: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(value).split(',').filter(|e| !e.is_empty()).map(str::to_owned).collect()
}

/// Adds `element` to `set`: read, merge every sibling, write back with the
/// read's context. Returns whether the write was acknowledged.
async fn add(client: &Client, set: &str, element: &str) -> bool {
    let op = async {
        let read = client.get_with("sets", set.as_bytes(), ReadOptions { r: 1, ..Default::default() }).await.ok()?;
        let mut members = BTreeSet::new();
        for s in read.siblings.iter().filter(|s| !s.deleted) {
            members.extend(elements(&s.value));
        }
        members.insert(element.to_owned());
        let value = members.into_iter().collect::<Vec<_>>().join(",");
        let opts = WriteOptions { w: 2, timeout: Some(Duration::from_secs(2)), ..Default::default() };
        client.put_with("sets", set.as_bytes(), value.as_bytes(), &read.context, opts).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(3), op).await, Ok(Some(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_add_survives_partitions_kills_and_pauses() {
    if let Some(why) = unsupported() {
        eprintln!("skipping the Jepsen-style test: {why}");
        return;
    }
    let secs: u64 = std::env::var("CONCORD_JEPSEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let seed: u64 = std::env::var("CONCORD_JEPSEN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("jepsen: {secs} s of faults, seed {seed} (CONCORD_JEPSEN_SEED={seed} replays the nemesis' choices)");
    let lab = Lab::create().expect("building the network");
    let tmp = tempfile::tempdir().unwrap();
    let addrs: Vec<SocketAddr> = (0..NODES).map(|i| lab.addr(i)).collect();
    let mut procs: Vec<Proc> = (0..NODES)
        .map(|i| Proc {
            child: None,
            ns: lab.ns(i),
            addr: addrs[i],
            seeds: addrs.iter().filter(|a| **a != addrs[i]).map(ToString::to_string).collect::<Vec<_>>().join(","),
            dir: tmp.path().join(format!("j{i}")),
            name: format!("j{i}"),
            paused: false,
        })
        .collect();
    for p in &mut procs {
        p.spawn();
    }
    let clients = connect_all(&addrs, 60).await;
    wait_converged(&clients, 60).await.unwrap_or_else(|e| panic!("{e}\n{}", procs[0].log_tail()));

    // Clients add unique elements to sets; a set takes about 200 elements,
    // then the clients move on to the next.
    let acked: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let tried: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>> = Arc::default();
    let attempts = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (clients, acked, tried, attempts, stop) =
                (clients.clone(), Arc::clone(&acked), Arc::clone(&tried), Arc::clone(&attempts), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(w);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let total = attempts.fetch_add(1, Ordering::Relaxed);
                    let set = format!("s{}-{}", total / 200, rng.random_range(0..4));
                    let element = format!("c{w}e{n}");
                    n += 1;
                    tried.lock().unwrap().entry(set.clone()).or_default().insert(element.clone());
                    let client = &clients[rng.random_range(0..clients.len())];
                    if add(client, &set, &element).await {
                        acked.lock().unwrap().entry(set).or_default().insert(element);
                    }
                }
            })
        })
        .collect();

    // The nemesis: one fault at a time, drawn from the seed.
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        let victim = rng.random_range(0..NODES);
        let hold = Duration::from_millis(rng.random_range(2_000..6_000));
        match rng.random_range(0..4) {
            0 => {
                for j in (0..NODES).filter(|j| *j != victim) {
                    lab.cut(victim, j);
                    lab.cut(j, victim);
                }
                *faults.entry("partition").or_default() += 1;
                tokio::time::sleep(hold).await;
                lab.heal();
            }
            1 => {
                let other = (victim + rng.random_range(1..NODES)) % NODES;
                lab.cut(victim, other);
                *faults.entry("one-way cut").or_default() += 1;
                tokio::time::sleep(hold).await;
                lab.heal();
            }
            2 => {
                procs[victim].kill9();
                *faults.entry("kill -9").or_default() += 1;
                tokio::time::sleep(hold).await;
                procs[victim].spawn();
            }
            _ => {
                procs[victim].pause();
                *faults.entry("pause").or_default() += 1;
                tokio::time::sleep(hold).await;
                procs[victim].resume();
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2_000))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    // Healed: every node up, every hint delivered, then the checker.
    lab.heal();
    for p in &mut procs {
        if p.paused {
            p.resume();
        }
        if p.child.is_none() {
            p.spawn();
        }
    }
    let clients = connect_all(&addrs, 60).await;
    if let Err(e) = wait_converged(&clients, 120).await {
        let logs: Vec<String> = procs.iter().map(Proc::log_tail).collect();
        panic!("{e}\n{}", logs.join("\n----\n"));
    }
    let acked = acked.lock().unwrap().clone();
    let tried = tried.lock().unwrap().clone();
    let adds: usize = acked.values().map(BTreeSet::len).sum();
    let mut lost = Vec::new();
    let mut phantoms = Vec::new();
    let mut unacked_present = 0usize;
    for (i, client) in clients.iter().enumerate() {
        for (set, attempted) in &tried {
            let want = acked.get(set).cloned().unwrap_or_default();
            let all = ReadOptions {
                consistency: Consistency::All,
                timeout: Some(Duration::from_secs(10)),
                ..Default::default()
            };
            let read = client.get_with("sets", set.as_bytes(), all).await.unwrap_or_else(|e| panic!("j{i} {set}: {e}"));
            let mut found = BTreeSet::new();
            for s in read.siblings.iter().filter(|s| !s.deleted) {
                found.extend(elements(&s.value));
            }
            for e in want.difference(&found) {
                lost.push(format!("j{i}: {set} lacks {e}"));
            }
            // An add that timed out may have landed; an element nobody
            // added may not.
            for e in found.difference(&want) {
                if attempted.contains(e) {
                    unacked_present += usize::from(i == 0);
                } else {
                    phantoms.push(format!("j{i}: {set} holds {e}, never added"));
                }
            }
        }
    }
    eprintln!(
        "jepsen: {} s, seed {seed}, faults {faults:?}, {} adds attempted, {adds} acknowledged, {} lost, \
         {unacked_present} unacknowledged but present, {} phantom",
        secs,
        attempts.load(Ordering::Relaxed),
        lost.len(),
        phantoms.len()
    );
    assert!(adds > 0, "no add was acknowledged");
    assert!(lost.is_empty(), "acknowledged adds lost (seed {seed}): {:?}", &lost[..lost.len().min(20)]);
    assert!(phantoms.is_empty(), "elements nobody added (seed {seed}): {:?}", &phantoms[..phantoms.len().min(20)]);
    drop(procs);
    drop(lab);
}

/// A client per node, retrying while the nodes start.
async fn connect_all(addrs: &[SocketAddr], secs: u64) -> Vec<Client> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    for a in addrs {
        loop {
            match Client::connect(&a.to_string()).await {
                Ok(c) => {
                    out.push(c);
                    break;
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "cannot reach {a}: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
    out
}

/// Waits until every node sees all three up and owning partitions, and
/// holds no hints.
async fn wait_converged(clients: &[Client], secs: u64) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        let mut ok = true;
        for c in clients {
            match tokio::time::timeout(Duration::from_secs(2), c.cluster_status()).await {
                Ok(Ok(s)) => {
                    let up = s.nodes.iter().filter(|n| n.status == "up" && n.partitions > 0).count();
                    let hints: u64 = s.hints.iter().map(|h| h.count).sum();
                    if up != NODES || hints > 0 || !s.ready {
                        ok = false;
                        last = format!("{up} up, {hints} hints held");
                    }
                }
                other => {
                    ok = false;
                    last = format!("{other:?}");
                }
            }
        }
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the cluster did not settle in {secs} s: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
