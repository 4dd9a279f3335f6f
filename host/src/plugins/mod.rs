//! WebAssembly plugins: resolvers merge siblings, validators vet writes.
//!
//! Layers, bottom up:
//!
//! * [`package`] turns deployed bytes into a checked component (core modules
//!   are componentized; interface version and kind are read before anything
//!   runs);
//! * [`engine`] owns the one wasmtime engine of the node, with its pooling
//!   allocator, epoch deadlines, optional fuel, memory caps and the
//!   on-disk cache of compiled artifacts;
//! * [`loaded`] calls a compiled plugin: a fresh instance per resolver call,
//!   reused instances for validators;
//! * [`registry`] stores plugins and compiles them on first use;
//! * [`breaker`] switches a plugin off for a bucket when it keeps failing;
//! * [`memo`] remembers resolutions, so the same siblings are not resolved
//!   twice;
//! * [`verify`] checks the laws a resolver must obey;
//! * [`shadow`] keeps what shadow resolvers did, per bucket and shadow.
//!
//! [`Plugins`] ties them together for the request paths. Where a call runs:
//! a plugin starts out running on the request's own thread (a call takes
//! microseconds and a thread hop would cost more than the call). A plugin
//! that ever fails, or whose calls take longer than [`INLINE_BUDGET`] on
//! average, is moved for good to tokio's blocking pool, so a plugin that
//! loops costs at most one deadline on a request thread, never a stalled
//! node.

mod bindings;
pub mod breaker;
pub mod engine;
pub mod loaded;
pub mod memo;
pub mod package;
pub mod registry;
pub mod shadow;
pub mod verify;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use breaker::Tripped;
pub use engine::{Bound, CheckLog, Runtime};
pub use loaded::{Loaded, Mode};
pub use registry::Registry;

use crate::buckets::{BucketProps, PluginRef, ValidatorFailure, validate_plugin_word};
use crate::causal::Sibling;
use crate::storage::Store;
use crate::{Error, Result};

/// Longest a call waits for a free pool slot before failing.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);

/// A plugin whose inline calls average longer than this moves off request
/// threads.
pub const INLINE_BUDGET: Duration = Duration::from_millis(1);

/// Resolver or validator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// Exports `resolve`.
    Resolver,
    /// Exports `validate`.
    Validator,
}

impl PluginKind {
    /// `resolver` or `validator`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Resolver => "resolver",
            PluginKind::Validator => "validator",
        }
    }
}

/// A deployed plugin's manifest entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    /// Resolver or validator.
    pub kind: PluginKind,
    /// Size of the component.
    pub size_bytes: u64,
    /// `concord:plugin` version it targets.
    pub interface_version: String,
    /// When it was deployed.
    pub deployed_at_ms: u64,
    /// Manifest sequence number (a Lamport counter across the cluster).
    pub seq: u64,
    /// Memory cap of one instance in MiB, set at deploy; 0 for the node's
    /// `plugins.memory_mb`.
    #[serde(default)]
    pub memory_mb: u32,
}

impl PluginInfo {
    /// `name@version` as a reference.
    pub fn plugin_ref(&self) -> PluginRef {
        PluginRef { name: self.name.clone(), version: self.version.clone() }
    }
}

/// What a resolver decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// One value replaces every sibling.
    Resolved(Vec<u8>),
    /// A tombstone replaces every sibling.
    Delete,
    /// The siblings stay.
    KeepSiblings,
}

/// What a validator decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Store as written.
    Accept,
    /// Refuse, with the plugin's reason.
    Reject(String),
    /// Store this value instead.
    Replace(Vec<u8>),
}

/// Why a plugin call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Ran past its deadline.
    Timeout,
    /// Ran out of fuel.
    Fuel,
    /// Tried to grow memory past its cap.
    Memory,
    /// Trapped (a panic, an `unreachable`, a bad memory access).
    Trap,
    /// Returned something the host could not read.
    Malformed,
    /// Returned a value over the size limit.
    Oversized,
    /// Could not be instantiated or called at all.
    Unusable,
}

impl FailureReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Timeout => "timeout",
            FailureReason::Fuel => "fuel",
            FailureReason::Memory => "memory",
            FailureReason::Trap => "trap",
            FailureReason::Malformed => "malformed",
            FailureReason::Oversized => "oversized",
            FailureReason::Unusable => "unusable",
        }
    }
}

/// A failed plugin call.
#[derive(Clone, Debug)]
pub struct PluginFailure {
    /// `name@version`.
    pub plugin: Arc<str>,
    /// Classification.
    pub reason: FailureReason,
    /// Details from wasmtime or the host check.
    pub message: String,
}

impl fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin {} failed ({}): {}", self.plugin, self.reason.as_str(), self.message)
    }
}

/// Limits and policies of plugin calls (`[plugins]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Memory cap per plugin instance, in MiB, for plugins deployed
    /// without a cap of their own.
    pub memory_mb: u32,
    /// The largest cap a plugin may be deployed with (`--memory-mb`), in
    /// MiB. The pool reserves this much address space (not memory) per
    /// instance slot.
    pub max_memory_mb: u32,
    /// Wall-clock deadline per call, in milliseconds.
    pub deadline_ms: u64,
    /// Fuel per call (roughly, wasm instructions); 0 turns fuel off.
    pub fuel: u64,
    /// Plugin instances that may exist at once (the pool's size).
    pub max_instances: u32,
    /// Log lines a single call may write.
    pub log_lines_per_call: u32,
    /// Consecutive failures after which a plugin is switched off for a
    /// bucket.
    pub breaker_failures: u32,
    /// Write a value resolved on read back to the replicas.
    pub write_back_resolved: bool,
    /// Sibling sets `verify` (and deploy) try.
    pub verify_cases: usize,
    /// Seconds a compiled plugin may go unused before it is unloaded from
    /// memory (the next call maps it back from the artifact cache); 0
    /// keeps every plugin loaded.
    pub unload_idle_secs: u64,
    /// MiB of remembered resolutions ([`memo`]); 0 turns remembering off.
    pub memo_mb: u64,
}

impl Default for PluginConfig {
    fn default() -> Self {
        Self {
            memory_mb: 64,
            max_memory_mb: 256,
            deadline_ms: 50,
            fuel: 0,
            max_instances: 256,
            log_lines_per_call: 20,
            breaker_failures: 5,
            write_back_resolved: true,
            verify_cases: 200,
            unload_idle_secs: 600,
            memo_mb: 32,
        }
    }
}

impl PluginConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.memory_mb) {
            return Err(Error::invalid("plugins.memory_mb must be between 1 and 4096"));
        }
        if !(self.memory_mb..=4096).contains(&self.max_memory_mb) {
            return Err(Error::invalid("plugins.max_memory_mb must be between plugins.memory_mb and 4096"));
        }
        if !(1..=60_000).contains(&self.deadline_ms) {
            return Err(Error::invalid("plugins.deadline_ms must be between 1 and 60000"));
        }
        if !(1..=10_000).contains(&self.max_instances) {
            return Err(Error::invalid("plugins.max_instances must be between 1 and 10000"));
        }
        if self.unload_idle_secs > 7 * 86_400 {
            return Err(Error::invalid(
                "plugins.unload_idle_secs must be at most 604800 (a week); 0 keeps plugins loaded",
            ));
        }
        if self.memo_mb > 65_536 {
            return Err(Error::invalid("plugins.memo_mb must be at most 65536 (64 GiB); 0 turns the memo off"));
        }
        Ok(())
    }
}

/// Where a plugin sits in a bucket's properties.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Slot {
    Resolver,
    Shadow,
    /// A validator, by plugin name (its place in the list may change).
    Validator(String),
}

/// The plugin that last worked in a slot, and the one before it: where a
/// switched-off (or not yet loaded) plugin falls back to.
#[derive(Clone)]
struct Worked {
    current: PluginRef,
    previous: Option<PluginRef>,
}

/// Sibling sets a binding tries (see [`Plugins::check_fits`]).
const FIT_CASES: usize = 50;

/// Largest plugin (component or core module) a deploy accepts.
pub const MAX_PLUGIN_BYTES: usize = 32 << 20;

/// What a resolution is for; reads may be answered from the [`memo`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveFor {
    /// A read: the same siblings are likely to be read again.
    Read,
    /// A write: the siblings include the value being written and are
    /// seldom seen twice, so they are not remembered.
    Write,
}

/// Siblings to resolve, and what for.
#[derive(Clone, Copy)]
struct Conflict<'a> {
    bucket: &'a str,
    key: &'a [u8],
    siblings: &'a [Sibling],
    purpose: ResolveFor,
}

/// A successful resolution.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What the resolver decided.
    pub resolution: Resolution,
    /// `name@version` of the resolver.
    pub by: Arc<str>,
}

/// A plugin to deploy.
#[derive(Clone, Debug, Default)]
pub struct DeployRequest {
    /// Plugin name.
    pub name: String,
    /// Version; `None` names the build by its content.
    pub version: Option<String>,
    /// A component, or a core module built with concord-guest.
    pub bytes: Vec<u8>,
    /// Store a resolver that fails its checks anyway.
    pub force: bool,
    /// Example values in the plugin's format, for the checks.
    pub samples: Vec<Vec<u8>>,
    /// The value size answers are checked against.
    pub limit: SizeLimit,
    /// Memory cap of one instance in MiB (`None`: the node's default).
    pub memory_mb: Option<u32>,
}

/// The largest answer a plugin may give: a bucket's `max_object_bytes`, or
/// without a bucket the largest any bucket may allow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SizeLimit {
    /// The bucket whose limit applies.
    pub bucket: Option<String>,
    /// Its `max_object_bytes`.
    pub max_object_bytes: u32,
}

impl SizeLimit {
    /// The limit of `bucket`.
    pub fn bucket(bucket: &str, max_object_bytes: u32) -> Self {
        Self { bucket: Some(bucket.to_owned()), max_object_bytes }
    }

    /// In bytes.
    pub fn max_bytes(&self) -> usize {
        match self.bucket {
            Some(_) => self.max_object_bytes as usize,
            None => crate::buckets::MAX_OBJECT_BYTES_LIMIT as usize,
        }
    }
}

/// Why a bound resolver left the siblings as they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    /// `name@version` of the resolver that was to run.
    pub plugin: String,
    /// What happened: a [`FailureReason`] label (`timeout`, `trap`, ...),
    /// `switched-off` (its breaker is open and nothing worked before it),
    /// `unavailable` (not loaded on this node), or `keep-siblings` (it ran
    /// and chose to keep them).
    pub reason: String,
    /// Details, for people.
    pub message: String,
    /// Whether the plugin is switched off for the bucket now.
    pub breaker_open: bool,
}

impl Unresolved {
    /// `plugin` ran and chose to keep the siblings.
    pub fn kept(plugin: &str) -> Self {
        Self {
            plugin: plugin.to_owned(),
            reason: "keep-siblings".into(),
            message: "the resolver chose to keep the siblings".into(),
            breaker_open: false,
        }
    }
}

/// What a deploy did.
#[derive(Clone, Debug)]
pub struct Deployed {
    /// The manifest entry.
    pub info: PluginInfo,
    /// Laws the resolver broke, when deployed with `force`.
    pub warnings: Vec<String>,
    /// What the plugin logged during the checks, summarised.
    pub check_log: Vec<String>,
    /// True when these bytes were already deployed under this name and
    /// version: nothing was checked or stored.
    pub unchanged: bool,
}

/// The plugin's own words about a failed check, for an error message.
fn log_tail(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!("\nthe plugin logged:\n  {}", lines.join("\n  "))
}

/// The plugin system of a node.
pub struct Plugins {
    runtime: Arc<Runtime>,
    registry: Registry,
    breakers: breaker::Breakers,
    worked: RwLock<HashMap<(String, Slot), Worked>>,
    shadows: shadow::Shadows,
    memo: memo::Memo,
}

impl Plugins {
    /// Opens the registry persisted in `store`; compiled artifacts are cached
    /// in `cache_dir`.
    pub fn open(store: Arc<dyn Store>, cache_dir: Option<PathBuf>, config: PluginConfig) -> Result<Arc<Self>> {
        let breakers = breaker::Breakers::new(config.breaker_failures);
        let memo = memo::Memo::new(config.memo_mb.saturating_mul(1 << 20));
        let runtime = Runtime::new(config)?;
        let registry = Registry::open(store, Arc::clone(&runtime), cache_dir)?;
        Ok(Arc::new(Self {
            runtime,
            registry,
            breakers,
            worked: RwLock::new(HashMap::new()),
            shadows: shadow::Shadows::default(),
            memo,
        }))
    }

    /// The engine.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Plugins switched off by their breakers, given each bucket's current
    /// properties version.
    pub fn tripped(&self, version_of: impl Fn(&str) -> u64) -> Vec<Tripped> {
        self.breakers.tripped(version_of)
    }

    /// Deploys a plugin: checks, compiles and links it, verifies a resolver
    /// (refusing one that breaks the laws unless `force`), then stores it.
    /// Nothing is stored on any error. Deploying bytes that are already
    /// deployed under that name and version changes nothing and runs no
    /// checks.
    pub async fn deploy(self: &Arc<Self>, request: DeployRequest) -> Result<Deployed> {
        let this = Arc::clone(self);
        crate::env::blocking(move || this.deploy_blocking(&request)).await?
    }

    fn deploy_blocking(&self, request: &DeployRequest) -> Result<Deployed> {
        let DeployRequest { name, version, bytes, force, samples, limit, memory_mb } = request;
        validate_plugin_word("name", name)?;
        let max = self.runtime.config().max_memory_mb;
        if let Some(mb) = memory_mb
            && !(1..=max).contains(mb)
        {
            return Err(Error::invalid(format!(
                "a plugin's memory cap must be 1 to {max} MiB (plugins.max_memory_mb); got {mb}"
            )));
        }
        if bytes.is_empty() {
            return Err(Error::invalid("plugin bytes are empty"));
        }
        if bytes.len() > MAX_PLUGIN_BYTES {
            return Err(Error::invalid(format!(
                "the plugin is {} bytes; at most {MAX_PLUGIN_BYTES} (32 MiB) are accepted",
                bytes.len()
            )));
        }
        let prepared = package::prepare(bytes)?;
        let version = match version {
            Some(v) if !v.is_empty() => v.to_owned(),
            // Unnamed builds are named by their content.
            _ => registry::sha256_hex(&prepared.component)[..12].to_owned(),
        };
        validate_plugin_word("version", &version)?;
        let r = PluginRef { name: name.to_owned(), version };
        if let Some(existing) = self.registry.info(&r)
            && existing.sha256 == registry::sha256_hex(&prepared.component)
        {
            return Ok(Deployed { info: existing, warnings: Vec::new(), check_log: Vec::new(), unchanged: true });
        }
        let (info, loaded) = self.registry.load_candidate(&r, &prepared, memory_mb.unwrap_or(0))?;
        let mut warnings = Vec::new();
        let mut check_log = Vec::new();
        if info.kind == PluginKind::Resolver {
            let cases = self.runtime.config().verify_cases;
            let report = verify::verify_loaded(&loaded, &self.runtime.slots, samples, cases, 0xc0c0, limit.max_bytes());
            check_log = report.log.summary();
            let what = match &limit.bucket {
                Some(b) => format!(" for bucket {b}"),
                None => String::new(),
            };
            if let Some(failure) = &report.call_failure {
                if !force {
                    return Err(Error::invalid(format!(
                        "{r} failed during the deploy-time checks{what}, so its laws could not be checked: \
                         {failure}{}\n(deploy with --force to accept it anyway)",
                        log_tail(&check_log)
                    )));
                }
                warnings.push(format!("a call failed during the checks: {failure}"));
            }
            if !report.failures.is_empty() {
                if !force {
                    return Err(Error::invalid(format!(
                        "{r} breaks the laws a resolver must obey, so replicas could disagree:\n  {}{}\n(deploy with --force to accept it anyway)",
                        report.failures.join("\n  "),
                        log_tail(&check_log)
                    )));
                }
                warnings.extend(report.failures);
            }
        }
        let info = self.registry.commit(info, &prepared.component, loaded)?;
        tracing::info!(plugin = %r, kind = info.kind.as_str(), sha256 = %info.sha256, "plugin deployed");
        Ok(Deployed { info, warnings, check_log, unchanged: false })
    }

    /// Checks a resolver against a bucket's limits before the bucket binds
    /// it: the deploy-time checks ran against the largest value any bucket
    /// allows (or another bucket's limit), so a resolver whose answers fit
    /// those may still be too large for this bucket.
    pub async fn check_fits(self: &Arc<Self>, r: &PluginRef, bucket: &str, max_object_bytes: u32) -> Result<()> {
        let loaded = self.loaded(r).await?;
        if loaded.info.kind != PluginKind::Resolver {
            return Ok(());
        }
        let this = Arc::clone(self);
        let (r, bucket) = (r.clone(), bucket.to_owned());
        crate::env::blocking(move || {
            // Sizes, not laws, are in question: fewer cases than a deploy.
            let cases = this.runtime.config().verify_cases.min(FIT_CASES);
            let report =
                verify::verify_loaded(&loaded, &this.runtime.slots, &[], cases, 0xc0c0, max_object_bytes as usize);
            match (report.call_failure, report.call_failure_reason) {
                (Some(f), Some(FailureReason::Oversized)) => Err(Error::invalid(format!(
                    "{r} cannot be bound to bucket {bucket}: {f}\n(raise the bucket's max_object_bytes, or fix the \
                     resolver)"
                ))),
                _ => Ok(()),
            }
        })
        .await?
    }

    /// Checks that `r` is deployed and of `kind`, before a bucket binds it.
    pub fn check_binding(&self, r: &PluginRef, kind: PluginKind) -> Result<()> {
        let info = self
            .registry
            .info(r)
            .ok_or_else(|| Error::NotFound(format!("plugin {r} is not deployed; deploy it first")))?;
        if info.kind != kind {
            return Err(Error::invalid(format!("plugin {r} is a {}, not a {}", info.kind.as_str(), kind.as_str())));
        }
        Ok(())
    }

    /// The plugin to call for `slot` of `bucket`: the configured one, unless
    /// its breaker is open, in which case the one that worked before it.
    fn choose(&self, bucket: &str, slot: Slot, configured: &PluginRef, props_version: u64) -> Option<PluginRef> {
        let label: Arc<str> = configured.to_string().into();
        let here = self.registry.contains(configured);
        if here && !self.breakers.is_open(bucket, &label, props_version) {
            return Some(configured.clone());
        }
        if !here
            && !self.worked.read().unwrap_or_else(|p| p.into_inner()).contains_key(&(bucket.to_owned(), slot.clone()))
        {
            // Nothing to fall back to: let the caller report it missing.
            return Some(configured.clone());
        }
        let worked = self.worked.read().unwrap_or_else(|p| p.into_inner());
        let w = worked.get(&(bucket.to_owned(), slot))?;
        let candidate = if &w.current == configured { w.previous.clone()? } else { w.current.clone() };
        let label: Arc<str> = candidate.to_string().into();
        (!self.breakers.is_open(bucket, &label, props_version)).then_some(candidate)
    }

    /// A pool slot, waiting at most [`SLOT_WAIT`] for one to free up.
    async fn slot(&self, plugin: &Arc<str>) -> Result<tokio::sync::OwnedSemaphorePermit, PluginFailure> {
        match tokio::time::timeout(SLOT_WAIT, Arc::clone(&self.runtime.slots).acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(PluginFailure {
                plugin: Arc::clone(plugin),
                reason: FailureReason::Unusable,
                message: format!("no plugin instance slot freed up within {SLOT_WAIT:?} (plugins.max_instances)"),
            }),
        }
    }

    fn remember(&self, bucket: &str, slot: Slot, r: &PluginRef) {
        let key = (bucket.to_owned(), slot);
        if self.worked.read().unwrap_or_else(|p| p.into_inner()).get(&key).is_some_and(|w| &w.current == r) {
            return;
        }
        let mut worked = self.worked.write().unwrap_or_else(|p| p.into_inner());
        let previous = worked.get(&key).map(|w| w.current.clone());
        worked.insert(key, Worked { current: r.clone(), previous });
    }

    async fn loaded(self: &Arc<Self>, r: &PluginRef) -> Result<Arc<Loaded>> {
        if let Some(l) = self.registry.loaded_now(r) {
            return Ok(l);
        }
        // Compiling (or mapping a cached artifact) blocks: not on a request thread.
        let this = Arc::clone(self);
        let r = r.clone();
        crate::env::blocking(move || this.registry.get(&r)).await?
    }

    async fn call_resolver(
        &self,
        loaded: Arc<Loaded>,
        bucket: &str,
        key: &[u8],
        siblings: &[Sibling],
        max_bytes: usize,
    ) -> Result<Resolution, PluginFailure> {
        if !loaded.offloaded()
            && let Ok(slot) = Arc::clone(&self.runtime.slots).try_acquire_owned()
        {
            let result = loaded.resolve(slot, bucket, key, siblings, max_bytes, Mode::Request);
            let slow = match &result {
                Ok((_, took)) => loaded.note_inline(*took, INLINE_BUDGET),
                Err(_) => true,
            };
            if slow {
                loaded.offload();
            }
            return result.map(|(r, _)| r);
        }
        let slot = self.slot(&loaded.label).await?;
        let label = Arc::clone(&loaded.label);
        let (bucket, key, siblings) = (bucket.to_owned(), key.to_vec(), siblings.to_vec());
        let task =
            crate::env::blocking(move || loaded.resolve(slot, &bucket, &key, &siblings, max_bytes, Mode::Request));
        match task.await {
            Ok(r) => r.map(|(r, _)| r),
            Err(e) => Err(PluginFailure { plugin: label, reason: FailureReason::Unusable, message: e.to_string() }),
        }
    }

    /// Runs the bucket's resolver (or its fallback) on `siblings`: `None`
    /// when the bucket binds no resolver, and why not when the resolver
    /// left the siblings as they are. Also runs the shadow resolver, if
    /// any, in the background.
    pub async fn resolve(
        self: &Arc<Self>,
        bucket: &str,
        props: &BucketProps,
        key: &[u8],
        siblings: &[Sibling],
        purpose: ResolveFor,
    ) -> Option<Result<Resolved, Unresolved>> {
        let conflict = Conflict { bucket, key, siblings, purpose };
        let outcome = match &props.resolver {
            Some(configured) => Some(self.run_slot(Slot::Resolver, configured, props, &conflict).await),
            None => None,
        };
        let active = outcome.clone().and_then(Result::ok);
        if let Some(shadow) = &props.shadow_resolver {
            let this = Arc::clone(self);
            let (bucket, props, key, siblings, shadow) =
                (bucket.to_owned(), props.clone(), key.to_vec(), siblings.to_vec(), shadow.clone());
            let active = active.clone();
            tokio::spawn(async move {
                let conflict = Conflict { bucket: &bucket, key: &key, siblings: &siblings, purpose };
                let theirs = this.run_slot(Slot::Shadow, &shadow, &props, &conflict).await;
                this.compare_shadow(&bucket, &key, active.as_ref(), theirs.as_ref(), &shadow);
            });
        }
        outcome.map(|o| match o {
            Ok(r) if r.resolution == Resolution::KeepSiblings => Err(Unresolved::kept(&r.by)),
            other => other,
        })
    }

    async fn run_slot(
        self: &Arc<Self>,
        slot: Slot,
        configured: &PluginRef,
        props: &BucketProps,
        conflict: &Conflict<'_>,
    ) -> Result<Resolved, Unresolved> {
        let Conflict { bucket, key, siblings, purpose } = *conflict;
        let Some(chosen) = self.choose(bucket, slot.clone(), configured, props.version) else {
            let label: Arc<str> = configured.to_string().into();
            let last = self.breakers.open_reason(bucket, &label, props.version);
            return Err(Unresolved {
                plugin: configured.to_string(),
                reason: "switched-off".into(),
                message: format!(
                    "switched off for this bucket after repeated failures{}; rebind the resolver to switch it back on",
                    last.map(|r| format!(" (last: {r})")).unwrap_or_default()
                ),
                breaker_open: true,
            });
        };
        let max_bytes = props.max_object_bytes as usize;
        let label: Arc<str> = chosen.to_string().into();
        let input = (purpose == ResolveFor::Read && self.memo.is_on())
            .then(|| memo::Input::new(&label, bucket, key, max_bytes, siblings));
        if let Some(resolution) = input.as_ref().and_then(|i| self.memo.get(i)) {
            // A remembered answer is a success of the plugin as much as the
            // call that produced it.
            self.breakers.success(bucket, &label, props.version);
            return Ok(Resolved { resolution, by: label });
        }
        let loaded = match self.loaded(&chosen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(bucket, plugin = %chosen, error = %e, "resolver unavailable; keeping siblings");
                return Err(Unresolved {
                    plugin: label.to_string(),
                    reason: "unavailable".into(),
                    message: e.to_string(),
                    breaker_open: false,
                });
            }
        };
        match self.call_resolver(loaded, bucket, key, siblings, max_bytes).await {
            Ok(resolution) => {
                self.breakers.success(bucket, &label, props.version);
                self.remember(bucket, slot, &chosen);
                if let Some(input) = &input {
                    self.memo.insert(input, &resolution);
                }
                Ok(Resolved { resolution, by: label })
            }
            Err(f) => {
                self.breakers.failure(bucket, &label, props.version, &f.to_string());
                tracing::warn!(bucket, "{f}; keeping siblings");
                Err(Unresolved {
                    plugin: label.to_string(),
                    reason: f.reason.as_str().into(),
                    message: f.message,
                    breaker_open: self.breakers.is_open(bucket, &label, props.version),
                })
            }
        }
    }

    fn compare_shadow(
        &self,
        bucket: &str,
        key: &[u8],
        active: Option<&Resolved>,
        theirs: Result<&Resolved, &Unresolved>,
        shadow_ref: &PluginRef,
    ) {
        let label = shadow_ref.to_string();
        let theirs = theirs.map(|r| &r.resolution).map_err(|u| u.message.as_str());
        let active = active.map(|a| &a.resolution);
        let (outcome, n) = self.shadows.record(bucket, &label, key, active, theirs);
        metrics::counter!("concord_shadow_resolutions_total", "bucket" => bucket.to_owned(), "plugin" => label.clone(), "outcome" => outcome.as_str()).increment(1);
        // Log each shadow's first disagreement, then one in a hundred.
        if outcome == shadow::Outcome::Disagree && n % 100 == 1 {
            tracing::info!(
                bucket,
                key = %shadow::quote(key),
                shadow = %label,
                active = %active.map_or_else(|| "no answer".to_owned(), shadow::describe),
                shadow_result = %theirs.map(shadow::describe).unwrap_or_default(),
                disagreements = n,
                "shadow resolver disagrees with the active one (sampled; see concord plugin shadow-report)"
            );
        }
    }

    /// What the shadow resolvers of `bucket` (all buckets when `None`) did
    /// on this node.
    pub fn shadow_report(&self, bucket: Option<&str>) -> Vec<(String, String, shadow::Stats)> {
        self.shadows.report(bucket)
    }

    /// Runs the bucket's validators in order. Returns the value to store
    /// (validators may replace it) and `name@version` of each validator
    /// that ran.
    pub async fn validate(
        self: &Arc<Self>,
        bucket: &str,
        props: &BucketProps,
        key: &[u8],
        mut value: Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<String>)> {
        let mut ran = Vec::with_capacity(props.validators.len());
        for configured in &props.validators {
            let slot = Slot::Validator(configured.name.clone());
            let Some(chosen) = self.choose(bucket, slot.clone(), configured, props.version) else {
                self.validator_failed(props, configured, "switched off after repeated failures")?;
                continue;
            };
            let loaded = match self.loaded(&chosen).await {
                Ok(l) => l,
                // Not here yet (still being fetched from a peer): a reason
                // to retry, not a verdict on the write.
                Err(Error::NotFound(_)) if props.validator_failure == ValidatorFailure::Reject => {
                    return Err(Error::NotReady(format!("validator {chosen} is not on this node yet; retry")));
                }
                Err(e) => {
                    self.validator_failed(props, &chosen, &e.to_string())?;
                    continue;
                }
            };
            let label = Arc::clone(&loaded.label);
            match self.call_validator(loaded, bucket, key, &value, props.max_object_bytes as usize).await {
                Ok(verdict) => {
                    self.breakers.success(bucket, &label, props.version);
                    self.remember(bucket, slot, &chosen);
                    ran.push(label.to_string());
                    match verdict {
                        Verdict::Accept => {}
                        Verdict::Replace(v) => value = v,
                        Verdict::Reject(reason) => return Err(Error::Rejected { plugin: label.to_string(), reason }),
                    }
                }
                Err(f) => {
                    self.breakers.failure(bucket, &label, props.version, &f.to_string());
                    tracing::warn!(bucket, "{f}");
                    self.validator_failed(props, &chosen, &format!("{} ({})", f.message, f.reason.as_str()))?;
                }
            }
        }
        Ok((value, ran))
    }

    /// Applies the bucket's `validator_failure` policy.
    fn validator_failed(&self, props: &BucketProps, plugin: &PluginRef, why: &str) -> Result<()> {
        match props.validator_failure {
            ValidatorFailure::Accept => Ok(()),
            ValidatorFailure::Reject => Err(Error::Rejected {
                plugin: plugin.to_string(),
                reason: format!(
                    "the validator failed ({why}), and the bucket rejects writes when a validator fails (validator_failure = reject)"
                ),
            }),
        }
    }

    async fn call_validator(
        &self,
        loaded: Arc<Loaded>,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        max_bytes: usize,
    ) -> Result<Verdict, PluginFailure> {
        if !loaded.offloaded() {
            let slots = &self.runtime.slots;
            match loaded.validate(
                || Arc::clone(slots).try_acquire_owned().ok(),
                bucket,
                key,
                value,
                max_bytes,
                Mode::Request,
            ) {
                Ok(Some((verdict, took))) => {
                    if loaded.note_inline(took, INLINE_BUDGET) {
                        loaded.offload();
                    }
                    return Ok(verdict);
                }
                Ok(None) => {} // no free slot: wait for one below
                Err(f) => {
                    loaded.offload();
                    return Err(f);
                }
            }
        }
        // An idle instance needs no new slot; only without one, wait for a slot.
        let slot = if loaded.has_idle() { None } else { Some(self.slot(&loaded.label).await?) };
        let label = Arc::clone(&loaded.label);
        let slots = Arc::clone(&self.runtime.slots);
        let (bucket, key, value) = (bucket.to_owned(), key.to_vec(), value.to_vec());
        let task = crate::env::blocking(move || {
            let slot = move || slot.or_else(|| slots.try_acquire_owned().ok());
            loaded.validate(slot, &bucket, &key, &value, max_bytes, Mode::Request).map(|v| v.map(|(v, _)| v))
        });
        match task.await {
            Ok(Ok(Some(v))) => Ok(v),
            Ok(Ok(None)) => Err(PluginFailure {
                plugin: label,
                reason: FailureReason::Unusable,
                message: "no plugin instance slot free (plugins.max_instances)".into(),
            }),
            Ok(Err(f)) => Err(f),
            Err(e) => Err(PluginFailure { plugin: label, reason: FailureReason::Unusable, message: e.to_string() }),
        }
    }
}

/// Bytes quoted for people: text in quotes, anything else in hex, cut to
/// `max` bytes with the full length noted, so that a plugin returning
/// megabytes cannot blow up a report (or the reply that carries it).
pub(crate) fn quote(v: &[u8], max: usize) -> String {
    let head = &v[..v.len().min(max)];
    let shown = match std::str::from_utf8(head) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("0x{}", hex::encode(head)),
    };
    if head.len() < v.len() { format!("{shown}... ({} bytes)", v.len()) } else { shown }
}
