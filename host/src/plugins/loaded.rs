//! A compiled plugin, ready to call.
//!
//! * A **resolver** call gets a fresh instance from the pool (a few
//!   microseconds): nothing a previous call left in memory can influence
//!   the next, so every node resolves the same siblings the same way.
//! * A **validator** runs on every write, so instances are reused: a call
//!   takes an idle instance (or makes one), and gives it back afterwards
//!   unless the call failed. Any failure poisons a wasmtime store, so a
//!   failed instance is dropped and the next call starts clean.
//!
//! Calls here are synchronous; [`super::Plugins`] decides on which thread
//! they run.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime::component::Component;

use super::bindings::v0_1;
use super::engine::{Bound, CallState, CheckLog, Runtime, classify};
use super::{FailureReason, PluginFailure, PluginInfo, PluginKind, Resolution, Verdict};
use crate::causal::Sibling;
use crate::{Error, Result};

/// What a call is for.
pub enum Mode<'a> {
    /// A request: bounded by the node's deadline (and fuel, when set),
    /// counted in the plugin's metrics, its log lines in the node log.
    Request,
    /// A deploy-time check or a local test: bounded by fuel, counted apart
    /// (`concord_plugin_check_calls_total`), its log lines kept in the
    /// given log instead of the node's.
    Check(&'a mut CheckLog),
}

impl Mode<'_> {
    fn bound(&self) -> Bound {
        match self {
            Mode::Request => Bound::Request,
            Mode::Check(_) => Bound::Check,
        }
    }

    fn is_check(&self) -> bool {
        matches!(self, Mode::Check(_))
    }

    /// Keeps what a checked call logged.
    fn collect(&mut self, store: &mut Store<CallState>) {
        if let Mode::Check(log) = self {
            log.extend(store.data_mut().take_captured());
        }
    }
}

/// One measured resolver call.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Making the instance.
    pub instantiate: Duration,
    /// Making the instance and the call.
    pub total: Duration,
    /// Linear memory the instance had at its largest.
    pub memory_bytes: usize,
}

/// Idle validator instances kept per plugin.
const MAX_IDLE: usize = 4;

/// An idle validator instance and the pool slot it occupies.
struct Idle {
    store: Store<CallState>,
    instance: v0_1::Validator,
    _slot: OwnedSemaphorePermit,
}

enum Kind {
    Resolver(v0_1::ResolverPre<CallState>),
    Validator { pre: v0_1::ValidatorPre<CallState>, idle: Mutex<Vec<Idle>> },
}

/// A plugin compiled and linked, ready to call.
pub struct Loaded {
    /// Its registry entry.
    pub info: PluginInfo,
    /// `name@version`.
    pub label: Arc<str>,
    runtime: Arc<Runtime>,
    kind: Kind,
    calls: Counter,
    duration: Histogram,
    /// Set once a call failed or calls ran long on average: from then on
    /// calls run on the blocking pool, not on request threads.
    offloaded: AtomicBool,
    /// Moving average of inline call times, in nanoseconds. An average, so
    /// one call that was merely descheduled does not move the plugin.
    avg_nanos: AtomicU64,
    /// Set on every lookup, cleared by the registry's idle sweep.
    used: AtomicBool,
}

impl Drop for Loaded {
    /// Idle validator instances hold room in the node-wide idle allowance
    /// ([`Runtime::reserve_idle`]); an unloaded plugin gives it back.
    fn drop(&mut self) {
        let Self { kind, runtime, .. } = self;
        if let Kind::Validator { idle, .. } = kind {
            let idle = idle.get_mut().unwrap_or_else(|p| p.into_inner());
            for _ in idle.drain(..) {
                runtime.release_idle();
            }
        }
    }
}

impl Loaded {
    /// Links a compiled component of `info.kind`.
    pub fn new(runtime: Arc<Runtime>, info: PluginInfo, component: &Component) -> Result<Self> {
        let label: Arc<str> = format!("{}@{}", info.name, info.version).into();
        let link = |e: wasmtime::Error| Error::invalid(format!("plugin {label} does not link: {e:#}"));
        let pre = runtime.linker().instantiate_pre(component).map_err(link)?;
        let kind = match info.kind {
            PluginKind::Resolver => Kind::Resolver(v0_1::ResolverPre::new(pre).map_err(link)?),
            PluginKind::Validator => {
                Kind::Validator { pre: v0_1::ValidatorPre::new(pre).map_err(link)?, idle: Mutex::new(Vec::new()) }
            }
        };
        // Synchronous WASI blocks on tokio futures, which would panic on a
        // request thread.
        let offloaded = super::engine::uses_wasi(component, runtime.engine());
        let kind_label = info.kind.as_str();
        let calls = metrics::counter!("concord_plugin_calls_total", "plugin" => info.name.clone(), "version" => info.version.clone(), "kind" => kind_label);
        let duration = metrics::histogram!("concord_plugin_call_duration_seconds", "kind" => kind_label);
        Ok(Self {
            info,
            label,
            runtime,
            kind,
            calls,
            duration,
            offloaded: AtomicBool::new(offloaded),
            avg_nanos: AtomicU64::new(0),
            used: AtomicBool::new(true),
        })
    }

    /// Marks the plugin as in use.
    pub fn touch(&self) {
        // A load first: most calls find the flag set and write nothing, so
        // the cache line is not bounced between request threads.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the plugin was used since the last call of this, which
    /// clears the mark.
    pub fn take_used(&self) -> bool {
        self.used.swap(false, Ordering::Relaxed)
    }

    /// Records how long an inline call took; returns true when the average
    /// has passed `budget` (the plugin should then move off request threads).
    pub fn note_inline(&self, took: Duration, budget: Duration) -> bool {
        let took = took.as_nanos().min(u64::MAX as u128) as u64;
        let prev = self.avg_nanos.load(Ordering::Relaxed);
        let avg = if prev == 0 { took } else { prev - prev / 8 + took / 8 };
        self.avg_nanos.store(avg, Ordering::Relaxed);
        avg > budget.as_nanos() as u64
    }

    /// Whether an idle validator instance is waiting.
    pub fn has_idle(&self) -> bool {
        match &self.kind {
            Kind::Validator { idle, .. } => !idle.lock().unwrap_or_else(|p| p.into_inner()).is_empty(),
            Kind::Resolver(_) => false,
        }
    }

    /// Whether calls must run on the blocking pool.
    pub fn offloaded(&self) -> bool {
        self.offloaded.load(Ordering::Relaxed)
    }

    /// Starts a reloaded plugin where its previous load left off: off
    /// request threads.
    pub fn start_offloaded(&self) {
        self.offloaded.store(true, Ordering::Relaxed);
    }

    /// Moves future calls to the blocking pool.
    pub fn offload(&self) {
        if !self.offloaded.swap(true, Ordering::Relaxed) {
            tracing::info!(plugin = %self.label, "plugin failed or ran long; its calls now run off request threads");
        }
    }

    fn failure(&self, mode: &Mode<'_>, reason: FailureReason, message: String) -> PluginFailure {
        let name =
            if mode.is_check() { "concord_plugin_check_failures_total" } else { "concord_plugin_failures_total" };
        metrics::counter!(name, "plugin" => self.info.name.clone(), "version" => self.info.version.clone(), "reason" => reason.as_str()).increment(1);
        PluginFailure { plugin: Arc::clone(&self.label), reason, message }
    }

    fn finish(&self, started: Instant, mode: &mut Mode<'_>, store: &mut Store<CallState>) -> Duration {
        let elapsed = started.elapsed();
        store.data_mut().log_output();
        if mode.is_check() {
            metrics::counter!("concord_plugin_check_calls_total", "plugin" => self.info.name.clone(), "version" => self.info.version.clone()).increment(1);
            mode.collect(store);
            return elapsed;
        }
        self.calls.increment(1);
        self.duration.record(elapsed.as_secs_f64());
        if let Some(fuel) = self.runtime.fuel_used(store) {
            metrics::counter!("concord_plugin_fuel_consumed_total", "plugin" => self.info.name.clone()).increment(fuel);
        }
        elapsed
    }

    /// Resolves `siblings`, refusing results over `max_bytes`. Runs on the
    /// calling thread; `slot` is the pool slot the call may use, and `mode`
    /// says what the call is for.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve(
        &self,
        _slot: OwnedSemaphorePermit,
        bucket: &str,
        key: &[u8],
        siblings: &[Sibling],
        max_bytes: usize,
        mut mode: Mode<'_>,
    ) -> Result<(Resolution, Duration), PluginFailure> {
        let bound = mode.bound();
        let (out, measured) = self.run_resolver(&mut mode, bound, bucket, key, siblings)?;
        let resolution = match out {
            v0_1::Resolution::Resolved(v) if v.len() > max_bytes => {
                return Err(self.failure(
                    &mode,
                    FailureReason::Oversized,
                    format!("resolved value is {} bytes, over {}", v.len(), limit_words(max_bytes)),
                ));
            }
            v0_1::Resolution::Resolved(v) => Resolution::Resolved(v),
            v0_1::Resolution::Delete => Resolution::Delete,
            v0_1::Resolution::KeepSiblings => Resolution::KeepSiblings,
        };
        Ok((resolution, measured.total))
    }

    /// Resolves like a request would (its deadline, a fresh instance),
    /// timing instantiation and the call apart and reporting the instance's
    /// linear memory: what `concord plugin bench` prints. Counted as a
    /// check.
    pub fn measure_resolve(
        &self,
        _slot: OwnedSemaphorePermit,
        siblings: &[Sibling],
        log: &mut CheckLog,
    ) -> Result<Measured, PluginFailure> {
        let mut mode = Mode::Check(log);
        self.run_resolver(&mut mode, Bound::Request, "bench", b"bench", siblings).map(|(_, m)| m)
    }

    /// One resolver call on a fresh instance: the plugin's answer, unchecked,
    /// and what the call took.
    fn run_resolver(
        &self,
        mode: &mut Mode<'_>,
        bound: Bound,
        bucket: &str,
        key: &[u8],
        siblings: &[Sibling],
    ) -> Result<(v0_1::Resolution, Measured), PluginFailure> {
        let Kind::Resolver(pre) = &self.kind else {
            return Err(self.failure(mode, FailureReason::Unusable, format!("{} is not a resolver", self.label)));
        };
        let started = Instant::now();
        let mut store = self
            .runtime
            .new_store(&self.label, bound, self.info.memory_mb)
            .map_err(|e| self.failure(mode, FailureReason::Unusable, e.to_string()))?;
        let input: Vec<v0_1::Sibling> = siblings.iter().map(to_wit).collect();
        let instantiating = Instant::now();
        let instance = pre.instantiate(&mut store);
        let instantiate = instantiating.elapsed();
        let result = instance.and_then(|r| r.call_resolve(&mut store, bucket, key, &input));
        let total = self.finish(started, mode, &mut store);
        let out = result.map_err(|e| self.failure(mode, classify(&e, store.data()), brief(&self.label, &e)))?;
        Ok((out, Measured { instantiate, total, memory_bytes: store.data().memory_peak }))
    }

    /// Validates a write. `slot` is used only if no idle instance exists;
    /// pass `None` to require an idle one (returns `Ok(None)` if there is
    /// none). Checked calls always use a fresh instance, and leave none
    /// behind.
    pub fn validate(
        &self,
        slot: impl FnOnce() -> Option<OwnedSemaphorePermit>,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        max_bytes: usize,
        mut mode: Mode<'_>,
    ) -> Result<Option<(Verdict, Duration)>, PluginFailure> {
        let Kind::Validator { pre, idle } = &self.kind else {
            return Err(self.failure(&mode, FailureReason::Unusable, format!("{} is not a validator", self.label)));
        };
        let started = Instant::now();
        let reused = if mode.is_check() { None } else { idle.lock().unwrap_or_else(|p| p.into_inner()).pop() };
        if reused.is_some() {
            self.runtime.release_idle();
        }
        let mut inst = match reused {
            Some(mut i) => {
                self.runtime
                    .arm(&mut i.store, Bound::Request)
                    .map_err(|e| self.failure(&mode, FailureReason::Unusable, e.to_string()))?;
                i
            }
            None => {
                let Some(slot) = slot() else { return Ok(None) };
                let mut store = self
                    .runtime
                    .new_store(&self.label, mode.bound(), self.info.memory_mb)
                    .map_err(|e| self.failure(&mode, FailureReason::Unusable, e.to_string()))?;
                let instance = match pre.instantiate(&mut store) {
                    Ok(i) => i,
                    Err(e) => {
                        mode.collect(&mut store);
                        return Err(self.failure(&mode, classify(&e, store.data()), brief(&self.label, &e)));
                    }
                };
                Idle { store, instance, _slot: slot }
            }
        };
        let result = inst.instance.call_validate(&mut inst.store, bucket, key, value);
        let elapsed = self.finish(started, &mut mode, &mut inst.store);
        let verdict = match result {
            Ok(v) => v,
            // The store is poisoned: drop the instance (and free its slot).
            Err(e) => return Err(self.failure(&mode, classify(&e, inst.store.data()), brief(&self.label, &e))),
        };
        if !mode.is_check() {
            // Idle instances keep their pool slot, so how many may idle is
            // bounded per plugin and across all plugins.
            let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE && self.runtime.reserve_idle() {
                idle.push(inst);
            }
        }
        let verdict = match verdict {
            v0_1::Verdict::Accept => Verdict::Accept,
            v0_1::Verdict::Reject(reason) => Verdict::Reject(reason.chars().take(1024).collect()),
            v0_1::Verdict::Replace(v) if v.len() > max_bytes => {
                return Err(self.failure(
                    &mode,
                    FailureReason::Oversized,
                    format!("replacement value is {} bytes, over {}", v.len(), limit_words(max_bytes)),
                ));
            }
            v0_1::Verdict::Replace(v) => Verdict::Replace(v),
        };
        Ok(Some((verdict, elapsed)))
    }
}

/// How an oversized answer's limit is worded: a bucket's own limit, or,
/// where no bucket is named, the largest value any bucket may allow.
fn limit_words(max_bytes: usize) -> String {
    if max_bytes == crate::buckets::MAX_OBJECT_BYTES_LIMIT as usize {
        format!("{max_bytes} bytes, the most any bucket allows (max_object_bytes)")
    } else {
        format!("the bucket's max_object_bytes of {max_bytes}")
    }
}

/// The root cause of a guest error, in one line: "wasm trap: interrupt",
/// "plugin exceeded its memory cap of 64 MiB", "list pointer/length out of
/// bounds of memory". The full error (with the guest's backtrace) goes to
/// the debug log.
fn brief(label: &str, e: &wasmtime::Error) -> String {
    tracing::debug!(plugin = label, error = ?e, "plugin call failed");
    e.root_cause().to_string()
}

fn to_wit(s: &Sibling) -> v0_1::Sibling {
    v0_1::Sibling {
        value: s.content.value().map(<[u8]>::to_vec).unwrap_or_default(),
        tombstone: s.content.is_tombstone(),
        dot: v0_1::Dot { actor: s.dot.actor, counter: s.dot.counter },
        written_at_ms: s.written_at_ms,
    }
}
