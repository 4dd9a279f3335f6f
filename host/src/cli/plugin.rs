//! `concord plugin deploy | list | shadow-report | promote-shadow | new | bench | test | verify`.
//!
//! `deploy`, `list`, `shadow-report` and `promote-shadow` talk to nodes.
//! `test`, `verify` and `bench` run the plugin locally, in the same sandbox
//! a node uses, so an author can try a build before deploying it. `new`
//! writes a plugin crate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use concord::buckets::MAX_OBJECT_BYTES_LIMIT;
use concord::causal::{Content, Dot, Sibling};
use concord::plugins::{
    CheckLog, Loaded, Mode, PluginConfig, PluginFailure, PluginInfo, PluginKind, Resolution, Runtime, Verdict, package,
    verify,
};
use concord_proto::v1 as pb;
use serde::Deserialize;
use serde_json::json;

use super::output::show_bytes;
use super::{Target, connect};

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Deploy a plugin (a component, or a core module built with concord-guest).
    Deploy {
        file: PathBuf,
        /// Plugin name.
        #[arg(long)]
        name: String,
        /// Plugin version [default: the first 12 hex digits of its sha256].
        #[arg(long)]
        version: Option<String>,
        /// Deploy a resolver even if it breaks the convergence laws.
        #[arg(long)]
        force: bool,
        /// JSON array of example values for the convergence checks.
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Check the resolver's answers against this bucket's
        /// max_object_bytes [default: the largest any bucket may allow].
        #[arg(long)]
        bucket: Option<String>,
        /// Memory cap of one instance, in MiB [default: the node's
        /// plugins.memory_mb].
        #[arg(long)]
        memory_mb: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// List deployed plugins.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// How a bucket's shadow resolvers compare with its active one, summed
    /// over every node that is up (each counts the reads and writes it
    /// coordinated since it started).
    ShadowReport {
        /// Bucket.
        bucket: String,
        /// Ask only the node at --endpoint.
        #[arg(long)]
        this_node: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Make a bucket's shadow resolver its active resolver.
    PromoteShadow {
        /// Bucket.
        bucket: String,
        #[command(flatten)]
        target: Target,
    },
    /// Run a plugin locally on a fixture and print its answer.
    Test {
        file: PathBuf,
        /// Resolvers: JSON fixture of siblings (see docs/PLUGINS.md).
        #[arg(long, conflicts_with = "validated")]
        siblings: Option<PathBuf>,
        /// Validators: the value to validate (text).
        #[arg(long, group = "validated", allow_negative_numbers = true)]
        value: Option<String>,
        /// Validators: the value to validate, base64-encoded (for bytes
        /// that are not UTF-8).
        #[arg(long, group = "validated")]
        value_base64: Option<String>,
        /// Validators: validate this file's bytes.
        #[arg(long, group = "validated")]
        value_file: Option<PathBuf>,
        /// Bucket name passed to the plugin.
        #[arg(long, default_value = "test")]
        bucket: String,
        /// Key passed to the plugin.
        #[arg(long, default_value = "key")]
        key: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a new plugin crate (builds offline, outside this repository).
    New {
        /// Plugin (and crate) name.
        name: String,
        /// What the plugin is.
        #[arg(long, value_enum)]
        kind: super::scaffold::Kind,
        /// Folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Time a resolver locally: compile, instantiate and call, on sibling
    /// sets of a given shape, and the memory an instance uses.
    Bench {
        file: PathBuf,
        /// Siblings per call.
        #[arg(long, default_value_t = 2)]
        siblings: usize,
        /// Bytes of each sibling's value.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
        /// A sample value in the plugin's format, repeated or cut to
        /// --value-bytes (default: the letter x).
        #[arg(long)]
        value: Option<String>,
        /// Calls to time.
        #[arg(long, default_value_t = 200)]
        calls: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a resolver's convergence laws on generated sibling sets.
    Verify {
        file: PathBuf,
        /// JSON array of example values in the plugin's format.
        #[arg(long)]
        samples: Option<PathBuf>,
        /// Sibling sets to try.
        #[arg(long, default_value_t = 500)]
        cases: usize,
        /// Seed of the generated sibling sets (default: random; the report
        /// prints it, so a failure can be replayed).
        #[arg(long)]
        seed: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Deploy { file, name, version, force, samples, bucket, memory_mb, target } => {
            let wasm = read(&file)?;
            let samples = match &samples {
                Some(p) => read_samples(p)?.into_iter().map(Into::into).collect(),
                None => Vec::new(),
            };
            let client = connect(&target).await?;
            let req = pb::DeployPluginRequest {
                name,
                version: version.unwrap_or_default(),
                wasm: wasm.into(),
                force,
                samples,
                bucket: bucket.unwrap_or_default(),
                memory_mb: memory_mb.unwrap_or(0),
            };
            let r = client.admin().deploy_plugin(req).await.map_err(concord_client::ClientError::from)?.into_inner();
            let p = r.plugin.context("the node returned no plugin")?;
            if target.json {
                println!(
                    "{}",
                    json!({"plugin": plugin_json(&p), "warnings": r.warnings, "check_log": r.check_log, "unchanged": r.unchanged})
                );
            } else {
                if r.unchanged {
                    println!("{}@{} is already deployed with these bytes; nothing changed", p.name, p.version);
                } else {
                    println!("deployed {}@{} ({}, sha256 {})", p.name, p.version, kind_name(p.kind), p.sha256);
                }
                for w in &r.warnings {
                    println!("warning: {w}");
                }
                if !r.check_log.is_empty() {
                    println!("the plugin logged during the checks:");
                    for l in &r.check_log {
                        println!("  {l}");
                    }
                }
            }
        }
        PluginCommand::List { target } => {
            let client = connect(&target).await?;
            let r = client
                .admin()
                .list_plugins(pb::ListPluginsRequest {})
                .await
                .map_err(concord_client::ClientError::from)?
                .into_inner();
            if target.json {
                println!("{}", serde_json::Value::Array(r.plugins.iter().map(plugin_json).collect()));
            } else if r.plugins.is_empty() {
                println!("no plugins deployed");
            } else {
                println!("{:<24} {:<14} {:<10} {:>9} {:<8} SHA256", "NAME", "VERSION", "KIND", "BYTES", "WIT");
                for p in &r.plugins {
                    println!(
                        "{:<24} {:<14} {:<10} {:>9} {:<8} {}",
                        p.name,
                        p.version,
                        kind_name(p.kind),
                        p.size_bytes,
                        p.interface_version,
                        &p.sha256[..16.min(p.sha256.len())]
                    );
                }
            }
        }
        PluginCommand::ShadowReport { bucket, this_node, target } => shadow_report(&bucket, this_node, &target).await?,
        PluginCommand::PromoteShadow { bucket, target } => {
            let client = connect(&target).await?;
            let p = client
                .admin()
                .promote_shadow(pb::PromoteShadowRequest { bucket: bucket.clone() })
                .await
                .map_err(concord_client::ClientError::from)?
                .into_inner();
            if target.json {
                println!("{}", json!({"bucket": p.name, "resolver": p.resolver, "version": p.version}));
            } else {
                println!("bucket {bucket} now resolves with {} (properties version {})", p.resolver, p.version);
            }
        }
        local @ (PluginCommand::Test { .. }
        | PluginCommand::Verify { .. }
        | PluginCommand::Bench { .. }
        | PluginCommand::New { .. }) => {
            // These run plugins right here. WASI host functions block on
            // tokio futures, which is allowed only off the async workers.
            tokio::task::block_in_place(|| run_local(local))?;
        }
    }
    Ok(())
}

/// The commands that run on this machine, not on a node.
fn run_local(cmd: PluginCommand) -> anyhow::Result<()> {
    match cmd {
        PluginCommand::Test { file, siblings, value, value_base64, value_file, bucket, key, json } => {
            let value: Option<Vec<u8>> = match (value, value_base64, value_file) {
                (Some(v), _, _) => Some(v.into_bytes()),
                (_, Some(b), _) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .context("--value-base64 is not valid base64")?,
                ),
                (_, _, Some(path)) => {
                    Some(std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?)
                }
                (None, None, None) => None,
            };
            let (runtime, loaded) = load_local(&file)?;
            let slot = || Arc::clone(runtime.slots()).try_acquire_owned().ok();
            let max = MAX_OBJECT_BYTES_LIMIT as usize;
            let mut log = CheckLog::default();
            match (loaded.info.kind, siblings, value) {
                (PluginKind::Resolver, Some(fixture), _) => {
                    let (bucket, key, siblings) = read_fixture(&fixture, &bucket, &key)?;
                    let permit = slot().context("no plugin slot free")?;
                    let result = loaded.resolve(permit, &bucket, key.as_bytes(), &siblings, max, Mode::Check(&mut log));
                    let (r, took) = show_log(&log, json, result)?;
                    print_resolution(&r, took, &log, json);
                }
                (PluginKind::Resolver, None, _) => {
                    bail!("{} is a resolver: give --siblings FIXTURE.json", file.display())
                }
                (PluginKind::Validator, _, Some(value)) => {
                    let result = loaded.validate(slot, &bucket, key.as_bytes(), &value, max, Mode::Check(&mut log));
                    let (v, took) = show_log(&log, json, result)?.context("no plugin slot free")?;
                    print_verdict(&v, took, &log, json);
                }
                (PluginKind::Validator, _, None) => bail!(
                    "{} is a validator: give --value VALUE, --value-base64 B64 or --value-file FILE",
                    file.display()
                ),
            }
        }
        PluginCommand::New { name, kind, dir } => {
            let root = super::scaffold::new_plugin(&dir, &name, kind)?;
            println!("created {}; see its README.md to build, test, verify and deploy it", root.display());
        }
        PluginCommand::Bench { file, siblings, value_bytes, value, calls, json } => {
            bench(&file, siblings, value_bytes, value.as_deref(), calls, json)?
        }
        PluginCommand::Verify { file, samples, cases, seed, json } => {
            let (runtime, loaded) = load_local(&file)?;
            if loaded.info.kind != PluginKind::Resolver {
                bail!("{} is a validator; verify checks resolvers", file.display());
            }
            let samples = match &samples {
                Some(p) => read_samples(p)?,
                None => {
                    eprintln!(
                        "warning: no --samples, so the sibling values are generated short strings; a resolver that \
                         parses its values (JSON, numbers) sees mostly input it rejects, and passing proves little \
                         about it. Give --samples FILE with values in the plugin's format."
                    );
                    Vec::new()
                }
            };
            let seed = seed.unwrap_or_else(rand::random);
            let max = MAX_OBJECT_BYTES_LIMIT as usize;
            let report = verify::verify_loaded(&loaded, runtime.slots(), &samples, cases, seed, max);
            let log = report.log.summary();
            if json {
                println!(
                    "{}",
                    json!({
                        "passed": report.passed(), "cases": report.cases, "checks": report.checks,
                        "failures": report.failures, "call_failure": report.call_failure, "seed": seed,
                        "log": log,
                    })
                );
            } else {
                print_verify_report(&report, &log, seed);
            }
            if report.call_failure.is_some() {
                bail!("{} failed while being checked", file.display());
            }
            if !report.passed() {
                bail!("{} breaks the resolver laws; replicas resolving with it could disagree", file.display());
            }
        }
        PluginCommand::Deploy { .. }
        | PluginCommand::List { .. }
        | PluginCommand::ShadowReport { .. }
        | PluginCommand::PromoteShadow { .. } => unreachable!("run by `run`"),
    }
    Ok(())
}

fn print_verify_report(report: &verify::Report, log: &[String], seed: u64) {
    if !log.is_empty() {
        println!("the plugin logged:");
        for l in log {
            println!("  {l}");
        }
    }
    if report.passed() {
        println!(
            "ok: {} sibling sets, {} checks: deterministic, order-insensitive, idempotent, associative \
                     (seed {seed})",
            report.cases, report.checks
        );
    } else {
        println!("seed {seed} (--seed {seed} replays these sibling sets)");
        if let Some(f) = &report.call_failure {
            println!("FAILED: a call failed, so the laws could not be checked: {f}");
        }
        if !report.failures.is_empty() {
            println!("FAILED: {} of {} checks broke a law:", report.failures.len(), report.checks);
        }
        for f in &report.failures {
            println!("  {f}");
        }
    }
}

/// `concord plugin bench`: one compile from cold (no artifact cache), then
/// `calls` resolutions, each on a fresh instance as on a node.
fn bench(
    file: &Path,
    n: usize,
    value_bytes: usize,
    value: Option<&str>,
    calls: usize,
    json: bool,
) -> anyhow::Result<()> {
    if !(1..=1000).contains(&n) || calls == 0 {
        bail!("--siblings must be 1 to 1000 and --calls at least 1");
    }
    let bytes = read(file)?;
    let prepared = package::prepare(&bytes)?;
    if prepared.kind != PluginKind::Resolver {
        bail!("{} is a validator; bench times resolvers", file.display());
    }
    // Generous deadlines: this measures, it does not judge.
    let config = PluginConfig { deadline_ms: 60_000, ..PluginConfig::default() };
    let runtime = Runtime::new(config)?;
    let started = std::time::Instant::now();
    let (component, _) = runtime.compile(&prepared.component, None)?;
    let compile = started.elapsed();
    let loaded = Loaded::new(Arc::clone(&runtime), local_info(file, &prepared), &component)?;
    let pattern = value.unwrap_or("x").as_bytes();
    let siblings: Vec<Sibling> = (0..n)
        .map(|i| {
            let mut v: Vec<u8> = pattern.iter().copied().cycle().take(value_bytes.max(pattern.len())).collect();
            v.truncate(value_bytes.max(1));
            let dot = Dot { actor: i as u64 + 1, counter: 1 };
            Sibling { dot, content: Content::Value(v), written_at_ms: 1_000 + i as u64, writer: String::new() }
        })
        .collect();
    let mut log = CheckLog::default();
    let mut instantiate = Vec::with_capacity(calls);
    let mut total = Vec::with_capacity(calls);
    let mut memory = 0;
    for _ in 0..calls {
        let slot = Arc::clone(runtime.slots()).try_acquire_owned().context("no plugin slot free")?;
        let m = loaded.measure_resolve(slot, &siblings, &mut log).map_err(|f| anyhow::anyhow!("{f}"))?;
        instantiate.push(m.instantiate);
        total.push(m.total);
        memory = memory.max(m.memory_bytes);
    }
    let stats = |v: &mut Vec<std::time::Duration>| {
        v.sort();
        let us = |d: std::time::Duration| d.as_secs_f64() * 1e6;
        (us(v[v.len() / 2]), us(v[(v.len() * 99 / 100).min(v.len() - 1)]))
    };
    let (inst_p50, inst_p99) = stats(&mut instantiate);
    let (call_p50, call_p99) = stats(&mut total);
    if json {
        println!(
            "{}",
            json!({
                "file": file.display().to_string(), "component_bytes": prepared.component.len(),
                "siblings": n, "value_bytes": value_bytes, "calls": calls,
                "compile_ms": compile.as_secs_f64() * 1e3,
                "instantiate_p50_us": inst_p50, "instantiate_p99_us": inst_p99,
                "call_p50_us": call_p50, "call_p99_us": call_p99, "memory_bytes": memory,
            })
        );
    } else {
        println!(
            "{}: {} bytes, compiled in {:.0} ms; {n} x {value_bytes} B siblings, {calls} calls: instantiate p50 \
             {inst_p50:.0} us (p99 {inst_p99:.0}), instantiate + resolve p50 {call_p50:.0} us (p99 {call_p99:.0}), \
             linear memory {:.1} MiB per instance",
            file.display(),
            prepared.component.len(),
            compile.as_secs_f64() * 1e3,
            memory as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// Asks every node that is up (or only the one at the endpoint) for its
/// shadow counts and prints them per shadow, summed, with each node's
/// examples.
async fn shadow_report(bucket: &str, this_node: bool, target: &Target) -> anyhow::Result<()> {
    let client = connect(target).await?;
    let mut endpoints = vec![target.endpoint.clone()];
    let mut unreachable = Vec::new();
    if !this_node {
        let status = client.admin().cluster_status(pb::ClusterStatusRequest {}).await;
        let status = status.map_err(concord_client::ClientError::from)?.into_inner();
        for n in status.nodes.iter().filter(|n| !n.is_self && !n.address.is_empty()) {
            if n.status == "up" {
                endpoints.push(n.address.clone());
            } else {
                unreachable.push(format!("{} ({})", n.node_id, n.status));
            }
        }
    }
    let mut reports = Vec::new();
    for endpoint in &endpoints {
        let asked = async {
            let c = if *endpoint == target.endpoint {
                client.clone()
            } else {
                concord_client::Client::connect(endpoint).await?
            };
            let r = c.admin().shadow_report(pb::ShadowReportRequest { bucket: bucket.to_owned() }).await;
            anyhow::Ok(r.map_err(concord_client::ClientError::from)?.into_inner())
        };
        match asked.await {
            Ok(r) => reports.push(r),
            Err(e) => unreachable.push(format!("{endpoint} ({e:#})")),
        }
    }
    // Per shadow plugin: totals, and each node's examples.
    let mut by_plugin: std::collections::BTreeMap<String, (pb::ShadowStats, Vec<String>)> = Default::default();
    for r in &reports {
        for s in &r.shadows {
            let (total, nodes) = by_plugin.entry(s.plugin.clone()).or_insert_with(|| {
                (pb::ShadowStats { bucket: s.bucket.clone(), plugin: s.plugin.clone(), ..Default::default() }, vec![])
            });
            total.agree += s.agree;
            total.disagree += s.disagree;
            total.failed += s.failed;
            total.samples.extend(s.samples.iter().cloned());
            if !s.last_failure.is_empty() {
                total.last_failure = s.last_failure.clone();
            }
            nodes.push(r.node_id.clone());
        }
    }
    if target.json {
        let shadows: Vec<_> = by_plugin
            .values()
            .map(|(s, nodes)| {
                json!({
                    "plugin": s.plugin, "agree": s.agree, "disagree": s.disagree, "failed": s.failed,
                    "last_failure": s.last_failure, "nodes": nodes,
                    "samples": s.samples.iter().map(|x| json!({"key": x.key, "active": x.active, "shadow": x.shadow, "at_ms": x.at_ms})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"bucket": bucket, "shadows": shadows, "nodes_asked": reports.len(), "not_asked": unreachable})
        );
        return Ok(());
    }
    if by_plugin.is_empty() {
        println!("no shadow resolutions recorded for bucket {bucket} on {} node(s)", reports.len());
    }
    for (s, _) in by_plugin.values() {
        let all = s.agree + s.disagree + s.failed;
        let pct = |n: u64| if all == 0 { 0.0 } else { n as f64 * 100.0 / all as f64 };
        println!(
            "{}: {all} resolutions: {} agree ({:.1}%), {} disagree ({:.1}%), {} failed ({:.1}%)",
            s.plugin,
            s.agree,
            pct(s.agree),
            s.disagree,
            pct(s.disagree),
            s.failed,
            pct(s.failed)
        );
        if !s.last_failure.is_empty() {
            println!("  last failure: {}", s.last_failure);
        }
        for x in &s.samples {
            println!(
                "  {} key {}: active {} / shadow {}",
                super::output::show_time(x.at_ms),
                x.key,
                x.active,
                x.shadow
            );
        }
    }
    for u in &unreachable {
        println!("not counted: {u}");
    }
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Checks, compiles and links a plugin file in a local sandbox.
fn load_local(file: &Path) -> anyhow::Result<(Arc<Runtime>, Loaded)> {
    let bytes = read(file)?;
    let prepared = package::prepare(&bytes)?;
    let runtime = Runtime::new(PluginConfig::default())?;
    let (component, _) = runtime.compile(&prepared.component, None)?;
    let loaded = Loaded::new(Arc::clone(&runtime), local_info(file, &prepared), &component)?;
    Ok((runtime, loaded))
}

/// The manifest entry of a plugin file run locally.
fn local_info(file: &Path, prepared: &package::Prepared) -> PluginInfo {
    PluginInfo {
        name: file.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin").to_owned(),
        version: "local".into(),
        sha256: concord::plugins::registry::sha256_hex(&prepared.component),
        kind: prepared.kind,
        size_bytes: prepared.component.len() as u64,
        interface_version: prepared.interface_version.clone(),
        deployed_at_ms: 0,
        seq: 0,
        memory_mb: 0,
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Sample {
    Text(String),
    Bytes { base64: String },
}

/// A JSON array of values: strings, or `{"base64": "..."}` for bytes.
fn read_samples(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let samples: Vec<Sample> = serde_json::from_str(&text).with_context(|| {
        format!("{} must be a JSON array of strings or {{\"base64\": ...}} objects", path.display())
    })?;
    samples
        .into_iter()
        .map(|s| match s {
            Sample::Text(t) => Ok(t.into_bytes()),
            Sample::Bytes { base64 } => {
                base64::engine::general_purpose::STANDARD.decode(base64).context("a sample's base64 does not decode")
            }
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureSibling {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_base64: Option<String>,
    #[serde(default)]
    tombstone: bool,
    #[serde(default)]
    written_at_ms: u64,
    #[serde(default)]
    actor: Option<u64>,
    #[serde(default)]
    counter: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Fixture {
    Full { bucket: Option<String>, key: Option<String>, siblings: Vec<FixtureSibling> },
    Bare(Vec<FixtureSibling>),
}

/// Reads a sibling fixture: `{"bucket", "key", "siblings": [...]}` or just
/// the array. Each sibling has `value` (text) or `value_base64`, and
/// optionally `tombstone`, `written_at_ms`, `actor`, `counter`.
fn read_fixture(path: &Path, bucket: &str, key: &str) -> anyhow::Result<(String, String, Vec<Sibling>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let fixture: Fixture =
        serde_json::from_str(&text).with_context(|| format!("{} is not a sibling fixture", path.display()))?;
    let (bucket, key, raw) = match fixture {
        Fixture::Full { bucket: b, key: k, siblings } => {
            (b.unwrap_or_else(|| bucket.to_owned()), k.unwrap_or_else(|| key.to_owned()), siblings)
        }
        Fixture::Bare(siblings) => (bucket.to_owned(), key.to_owned(), siblings),
    };
    if raw.is_empty() {
        bail!("{} holds no siblings", path.display());
    }
    let mut siblings = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let value = match (s.value, s.value_base64) {
            (Some(v), None) => v.into_bytes(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .with_context(|| format!("sibling {i}: value_base64 does not decode"))?,
            (None, None) if s.tombstone => Vec::new(),
            _ => bail!("sibling {i}: give exactly one of value or value_base64"),
        };
        let content = if s.tombstone { Content::Tombstone } else { Content::Value(value) };
        let dot = Dot { actor: s.actor.unwrap_or(i as u64 + 1), counter: s.counter.unwrap_or(1) };
        siblings.push(Sibling { dot, content, written_at_ms: s.written_at_ms, writer: String::new() });
    }
    Ok((bucket, key, siblings))
}

/// Prints what a local call logged (for people; JSON output carries it in
/// the answer) and turns a failed call into an error that names the plugin,
/// the kind of failure and its message (a trap's, or a panic's as logged).
fn show_log<T>(log: &CheckLog, as_json: bool, result: Result<T, PluginFailure>) -> anyhow::Result<T> {
    if !as_json {
        for l in log.summary() {
            eprintln!("log: {l}");
        }
    }
    result.map_err(|f| {
        if as_json {
            println!("{}", json!({"error": f.to_string(), "reason": f.reason.as_str(), "log": log.summary()}));
        }
        anyhow::anyhow!("{f}")
    })
}

fn print_resolution(r: &Resolution, took: std::time::Duration, log: &CheckLog, as_json: bool) {
    if as_json {
        let mut j = match r {
            Resolution::Resolved(v) => {
                json!({"resolution": "resolved", "value": std::str::from_utf8(v).ok(), "value_base64": base64::engine::general_purpose::STANDARD.encode(v)})
            }
            Resolution::Delete => json!({"resolution": "delete"}),
            Resolution::KeepSiblings => json!({"resolution": "keep-siblings"}),
        };
        j["log"] = json!(log.summary());
        println!("{j}");
        return;
    }
    match r {
        Resolution::Resolved(v) => println!("resolved: {}", show_bytes(v)),
        Resolution::Delete => println!("delete"),
        Resolution::KeepSiblings => println!("keep-siblings"),
    }
    eprintln!("({} µs)", took.as_micros());
}

fn print_verdict(v: &Verdict, took: std::time::Duration, log: &CheckLog, as_json: bool) {
    if as_json {
        let mut j = match v {
            Verdict::Accept => json!({"verdict": "accept"}),
            Verdict::Reject(reason) => json!({"verdict": "reject", "reason": reason}),
            Verdict::Replace(v) => {
                json!({"verdict": "replace", "value": std::str::from_utf8(v).ok(), "value_base64": base64::engine::general_purpose::STANDARD.encode(v)})
            }
        };
        j["log"] = json!(log.summary());
        println!("{j}");
        return;
    }
    match v {
        Verdict::Accept => println!("accept"),
        Verdict::Reject(reason) => println!("reject: {reason}"),
        Verdict::Replace(v) => println!("replace: {}", show_bytes(v)),
    }
    eprintln!("({} µs)", took.as_micros());
}

fn kind_name(kind: i32) -> &'static str {
    match pb::PluginKind::try_from(kind) {
        Ok(pb::PluginKind::Resolver) => "resolver",
        Ok(pb::PluginKind::Validator) => "validator",
        _ => "unknown",
    }
}

fn plugin_json(p: &pb::PluginInfo) -> serde_json::Value {
    json!({
        "name": p.name, "version": p.version, "sha256": p.sha256, "kind": kind_name(p.kind),
        "size_bytes": p.size_bytes, "interface_version": p.interface_version, "deployed_at_ms": p.deployed_at_ms,
        "memory_mb": p.memory_mb,
    })
}
