//! The wasmtime side: one engine per node, compiled-artifact cache, stores
//! with limits, and calls that classify every way a guest can fail.
//!
//! * **One engine** with the pooling allocator. Each engine reserves its own
//!   virtual-memory slab, so a node makes exactly one. Pool limits are set
//!   explicitly from [`PluginConfig`]; a [`Semaphore`] with as many permits
//!   as instance slots makes calls wait (briefly, then fail) for a free slot
//!   instead of finding the pool empty.
//! * **Deadlines** come from epoch interruption: a ticker thread advances
//!   the epoch every millisecond and each call may run `deadline_ms` ticks.
//!   **Fuel** is optional (`fuel > 0`), for operators who want a
//!   deterministic bound on work rather than time.
//! * **Memory** is capped per store by [`CallState`]'s limiter, which also
//!   records that it refused, so the failure is reported as `memory` rather
//!   than as a generic trap.
//! * **Compiled artifacts** are cached on disk, keyed by the SHA-256 of the
//!   engine's compatibility hash and the component bytes, so a restart or a
//!   second plugin with the same bytes loads in microseconds instead of
//!   compiling again. Files are written to a temporary name and renamed:
//!   wasmtime maps them, so they are never rewritten in place.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::v0_1;
use super::{FailureReason, PluginConfig};
use crate::{Error, Result};

/// Epoch ticker period: deadlines are counted in these.
const TICK: Duration = Duration::from_millis(1);
/// Core instances, tables and memories one plugin instance may use. A
/// concord-guest component has 3 core instances, 2 tables and 1 memory; a
/// Python one (componentize-py, which links CPython's shared libraries)
/// has 38 core instances, 2 tables and 1 memory; a JavaScript one
/// (componentize-js) 3, 2 and 1. These bound bookkeeping, not memory: each
/// instance's linear memory is capped by its plugin's `memory_mb` (or the
/// node's `plugins.memory_mb`) either way.
const CORE_INSTANCES_PER_PLUGIN: u32 = 64;
const TABLES_PER_PLUGIN: u32 = 4;

/// What a store carries during a call.
pub struct CallState {
    /// `name@version`, for logs.
    plugin: Arc<str>,
    memory_cap: usize,
    /// Set when the limiter refused to grow memory.
    pub memory_exceeded: bool,
    /// Largest linear memory the instance asked for, in bytes.
    pub memory_peak: usize,
    /// Log lines this call may still write.
    log_budget: u32,
    /// Log lines dropped for exceeding the budget.
    log_dropped: u32,
    /// Deploy-time checks and local tests keep the plugin's log lines here
    /// instead of writing them to the node log.
    captured: Option<Vec<String>>,
    /// WASI, made on the first WASI call (Rust plugins never make one).
    wasi: Option<Box<Wasi>>,
}

/// What a plugin that imports WASI (one built with componentize-py or
/// componentize-js) gets: the interfaces, and no capability behind them.
/// No preopened directories, no environment or arguments, no sockets or
/// name lookups, stdin closed, a wall clock stopped at the epoch, a
/// monotonic clock that never moves, and "random" bytes from a fixed
/// cycle. So, as for any plugin, the answer depends only on the input.
/// What it writes to stdout or stderr becomes its log lines.
struct Wasi {
    ctx: WasiCtx,
    table: ResourceTable,
    output: MemoryOutputPipe,
    /// Bytes of `output` already turned into log lines.
    logged: usize,
}

/// Output a call may write to stdout and stderr together; more is dropped
/// (and the write fails, as on a full pipe).
const WASI_OUTPUT_BYTES: usize = 64 << 10;

struct StoppedClock;

impl HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

impl Wasi {
    fn new() -> Self {
        let output = MemoryOutputPipe::new(WASI_OUTPUT_BYTES);
        // A fixed, not all-zero, cycle: some runtimes reject a seed of zeroes.
        let bytes: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(97).wrapping_add(13)).collect();
        let ctx = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output.clone())
            .wall_clock(StoppedClock)
            .monotonic_clock(StoppedClock)
            .secure_random(wasmtime_wasi::Deterministic::new(bytes.clone()))
            .insecure_random(wasmtime_wasi::Deterministic::new(bytes))
            .insecure_random_seed(0x5eed)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self { ctx, table: ResourceTable::new(), output, logged: 0 }
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self.wasi.get_or_insert_with(|| Box::new(Wasi::new()));
        WasiCtxView { ctx: &mut wasi.ctx, table: &mut wasi.table }
    }
}

impl CallState {
    /// Turns what the plugin wrote to stdout and stderr since the last
    /// call of this into log lines (info level, within the call's budget).
    pub(super) fn log_output(&mut self) {
        let Some(wasi) = &mut self.wasi else { return };
        let all = wasi.output.contents();
        let new = &all[wasi.logged.min(all.len())..];
        // Only whole lines; a partial one waits for the rest.
        let Some(end) = new.iter().rposition(|b| *b == b'\n') else { return };
        wasi.logged += end + 1;
        let lines: Vec<String> = String::from_utf8_lossy(&new[..end]).lines().map(str::to_owned).collect();
        for line in lines {
            v0_1::Host::log(self, v0_1::Level::Info, line);
        }
    }

    /// Log lines a checked call wrote (empty for request calls).
    pub(super) fn take_captured(&mut self) -> Vec<String> {
        self.captured.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

impl ResourceLimiter for CallState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.memory_peak = self.memory_peak.max(desired);
        if desired > self.memory_cap {
            self.memory_exceeded = true;
            wasmtime::bail!("plugin exceeded its memory cap of {} MiB", self.memory_cap >> 20);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_PLUGIN as usize
    }

    fn tables(&self) -> usize {
        TABLES_PER_PLUGIN as usize
    }

    fn memories(&self) -> usize {
        1
    }
}

impl v0_1::Host for CallState {
    fn log(&mut self, level: v0_1::Level, message: String) {
        if self.log_budget == 0 {
            self.log_dropped += 1;
            return;
        }
        self.log_budget -= 1;
        let message: String = message.chars().take(512).collect();
        if let Some(captured) = &mut self.captured {
            captured.push(format!("{}: {message}", level_name(level)));
            return;
        }
        let plugin = &*self.plugin;
        match level {
            v0_1::Level::Trace => tracing::trace!(plugin, "{message}"),
            v0_1::Level::Debug => tracing::debug!(plugin, "{message}"),
            v0_1::Level::Info => tracing::info!(plugin, "{message}"),
            v0_1::Level::Warn => tracing::warn!(plugin, "{message}"),
            v0_1::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

fn level_name(level: v0_1::Level) -> &'static str {
    match level {
        v0_1::Level::Trace => "TRACE",
        v0_1::Level::Debug => "DEBUG",
        v0_1::Level::Info => "INFO",
        v0_1::Level::Warn => "WARN",
        v0_1::Level::Error => "ERROR",
    }
}

impl Drop for CallState {
    fn drop(&mut self) {
        // Checked calls stay out of live telemetry.
        if self.log_dropped > 0 && self.captured.is_none() {
            metrics::counter!("concord_plugin_log_lines_dropped_total").increment(self.log_dropped.into());
        }
    }
}

/// The node's plugin engine.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    config: PluginConfig,
    /// One permit per instance slot of the pool. Idle validator instances
    /// hold theirs too, but at most half the pool may idle (`idle`).
    pub(super) slots: Arc<Semaphore>,
    /// Validator instances idling now.
    idle: std::sync::atomic::AtomicUsize,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine, its linker and the epoch ticker.
    pub fn new(config: PluginConfig) -> Result<Arc<Self>> {
        config.validate()?;
        let slots = config.max_instances;
        // Slots are sized for the largest cap a plugin may be given; each
        // store's limiter holds it to its own.
        let memory = (config.max_memory_mb as usize) << 20;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * CORE_INSTANCES_PER_PLUGIN)
            .total_memories(slots)
            .total_tables(slots * TABLES_PER_PLUGIN)
            .max_core_instances_per_component(CORE_INSTANCES_PER_PLUGIN)
            .max_memories_per_component(1)
            .max_tables_per_component(TABLES_PER_PLUGIN)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(100_000)
            .max_memory_size(memory)
            // A Python component's 38 core instances need 401 KiB of
            // runtime state together; a Rust one a few KiB.
            .max_component_instance_size(1 << 20)
            .max_core_instance_size(1 << 20)
            .max_unused_warm_slots(64)
            // Reset a freed slot by finding its dirty pages (PAGEMAP_SCAN,
            // Linux 6.7+) and zeroing just those, instead of unmapping the
            // whole memory: the next instance then starts without page
            // faults, and no madvise (with its TLB shootdown) is needed.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(4 << 20)
            .table_keep_resident(64 << 10);
        let mut c = Config::new();
        c.wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            // Always on, so deploy-time checks can bound their calls by
            // work done rather than by time (see [`Bound::Check`]);
            // requests get unlimited fuel unless `plugins.fuel` is set.
            .consume_fuel(true)
            // Reserve exactly the cap per memory, bounds-check explicitly and
            // use no guard pages or trap signals. Besides fitting many slots
            // in the address space, this lets a reused slot keep its pages
            // read/write: with guard pages, every instance whose guest grew
            // its memory would mprotect the growth away again, and each
            // such mprotect is a TLB shootdown across all cores (measured:
            // it cut resolved reads to a quarter under load).
            .memory_reservation(memory as u64)
            .memory_guard_size(0)
            .signals_based_traps(false)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&c).map_err(|e| Error::Internal(format!("cannot create the plugin engine: {e:#}")))?;
        let mut linker = Linker::new(&engine);
        v0_1::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| Error::Internal(format!("cannot link the plugin host interface: {e:#}")))?;
        // Synchronous WASI host functions block on tokio futures: a plugin
        // that imports WASI therefore never runs on a request thread (see
        // [`uses_wasi`]).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| Error::Internal(format!("cannot link WASI for plugins: {e:#}")))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stop_ticker);
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("concord-wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(slots as usize)),
            idle: std::sync::atomic::AtomicUsize::new(0),
            config,
            stop_ticker,
        }))
    }

    /// Reserves room for one more idle instance; false when half the pool
    /// already idles.
    pub(super) fn reserve_idle(&self) -> bool {
        let max = (self.config.max_instances / 2) as usize;
        self.idle.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < max).then_some(n + 1)).is_ok()
    }

    /// Idle validator instances kept for reuse, across all plugins.
    pub fn idle_instances(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }

    /// Gives back room reserved by [`Runtime::reserve_idle`].
    pub(super) fn release_idle(&self) {
        self.idle.fetch_sub(1, Ordering::Relaxed);
    }

    /// The pool's slots: a call holds one for as long as its instance lives.
    pub fn slots(&self) -> &Arc<Semaphore> {
        &self.slots
    }

    /// Limits and policies this runtime applies.
    pub fn config(&self) -> &PluginConfig {
        &self.config
    }

    /// The linker that provides the host interface.
    pub(super) fn linker(&self) -> &Linker<CallState> {
        &self.linker
    }

    /// The engine.
    pub(super) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles a component, or loads its precompiled artifact from
    /// `cache_dir` when one exists. Returns the component and whether it came
    /// from the cache.
    pub fn compile(&self, component: &[u8], cache_dir: Option<&Path>) -> Result<(Component, bool)> {
        let fail = |e: wasmtime::Error| Error::invalid(format!("plugin does not compile: {e:#}"));
        let Some(dir) = cache_dir else {
            return Component::new(&self.engine, component).map(|c| (c, false)).map_err(fail);
        };
        let path = dir.join(format!("{}.cwasm", self.cache_key(component)));
        if path.exists() {
            // SAFETY: the file was written by `precompile_component` of an
            // engine with the same compatibility hash (it is in the name),
            // into a directory only this node writes, and is never modified
            // after being renamed into place. wasmtime also checks the header.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(c) => return Ok((c, true)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "unusable compiled plugin; recompiling"),
            }
        }
        let bytes = self.engine.precompile_component(component).map_err(fail)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::Internal(format!("cannot create {}: {e}", dir.display())))?;
        // Unique per writer: two threads compiling the same plugin must not
        // share a temporary file that the other may already have mapped.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
        // SAFETY: as above; we just wrote it.
        let c = unsafe { Component::deserialize_file(&self.engine, &path) }.map_err(fail)?;
        Ok((c, false))
    }

    /// Name of a component's precompiled artifact.
    fn cache_key(&self, component: &[u8]) -> String {
        struct Sha(Sha256);
        impl Hasher for Sha {
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
            fn finish(&self) -> u64 {
                unreachable!("only the SHA-256 digest is used")
            }
        }
        let mut h = Sha(Sha256::new());
        self.engine.precompile_compatibility_hash().hash(&mut h);
        h.0.update(b"\0component\0");
        h.0.update(component);
        hex::encode(h.0.finalize())
    }

    /// A fresh store for one call (or one reused validator instance).
    /// `memory_mb` is the plugin's own cap, 0 for the node's default.
    pub(super) fn new_store(&self, plugin: &Arc<str>, bound: Bound, memory_mb: u32) -> Result<Store<CallState>> {
        let memory_mb = if memory_mb == 0 { self.config.memory_mb } else { memory_mb.min(self.config.max_memory_mb) };
        let state = CallState {
            plugin: Arc::clone(plugin),
            memory_cap: (memory_mb as usize) << 20,
            memory_exceeded: false,
            memory_peak: 0,
            log_budget: self.config.log_lines_per_call,
            log_dropped: 0,
            captured: (bound == Bound::Check).then(Vec::new),
            wasi: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        store.epoch_deadline_trap();
        self.arm(&mut store, bound)?;
        Ok(store)
    }

    /// (Re)sets a store's deadline and fuel before a call: the deadline is
    /// absolute and fuel is consumed, so a reused store needs both again.
    pub(super) fn arm(&self, store: &mut Store<CallState>, bound: Bound) -> Result<()> {
        let (deadline_ticks, fuel) = match bound {
            Bound::Request => {
                (self.config.deadline_ms.max(1), if self.config.fuel > 0 { self.config.fuel } else { u64::MAX })
            }
            Bound::Check => (CHECK_DEADLINE_MS, CHECK_FUEL),
        };
        store.set_epoch_deadline(deadline_ticks);
        store.data_mut().log_budget = self.config.log_lines_per_call;
        store.set_fuel(fuel).map_err(|e| Error::Internal(format!("cannot set fuel: {e:#}")))?;
        Ok(())
    }

    /// Fuel a store has used since [`Runtime::arm`], when `plugins.fuel`
    /// is set.
    pub(super) fn fuel_used(&self, store: &Store<CallState>) -> Option<u64> {
        (self.config.fuel > 0).then(|| self.config.fuel.saturating_sub(store.get_fuel().unwrap_or(0)))
    }
}

/// What bounds a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// A request's call: `plugins.deadline_ms` of wall-clock time, and
    /// `plugins.fuel` when set.
    Request,
    /// A deploy-time check: [`CHECK_FUEL`] units of work, whatever the
    /// machine's load, so a check never fails because the machine is busy;
    /// a wall-clock limit of [`CHECK_DEADLINE_MS`] stays as a backstop.
    Check,
}

/// The plugin's log lines from checked calls, summarised for a reply:
/// identical lines are counted, not repeated, and at most
/// [`CheckLog::MAX_LINES`] distinct lines are kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckLog {
    /// Distinct lines in the order first written, each with how often.
    pub lines: Vec<(String, u64)>,
    /// Lines not kept because [`CheckLog::MAX_LINES`] distinct ones were.
    pub dropped: u64,
}

impl CheckLog {
    /// Distinct lines kept.
    pub const MAX_LINES: usize = 20;

    /// Adds lines a call wrote.
    pub fn extend(&mut self, lines: impl IntoIterator<Item = String>) {
        for line in lines {
            if let Some((_, n)) = self.lines.iter_mut().find(|(l, _)| *l == line) {
                *n += 1;
            } else if self.lines.len() < Self::MAX_LINES {
                self.lines.push((line, 1));
            } else {
                self.dropped += 1;
            }
        }
    }

    /// The summary, one string per distinct line (`"(x12) WARN: ..."` for a
    /// repeated one), and a last line counting what was left out.
    pub fn summary(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.lines.iter().map(|(l, n)| if *n > 1 { format!("(x{n}) {l}") } else { l.clone() }).collect();
        if self.dropped > 0 {
            out.push(format!("... and {} more lines", self.dropped));
        }
        out
    }
}

/// Fuel (roughly, wasm instructions) of one call during deploy checks:
/// thousands of times what a merge of a few siblings takes.
pub const CHECK_FUEL: u64 = 2_000_000_000;
/// Wall-clock backstop of one deploy-check call, in milliseconds.
pub const CHECK_DEADLINE_MS: u64 = 60_000;

/// Whether a compiled component imports WASI.
pub fn uses_wasi(component: &Component, engine: &Engine) -> bool {
    component.component_type().imports(engine).any(|(name, _)| name.starts_with("wasi:"))
}

/// Why a guest call failed, from the error and the store's state.
pub(super) fn classify(e: &wasmtime::Error, state: &CallState) -> FailureReason {
    if state.memory_exceeded {
        return FailureReason::Memory;
    }
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => FailureReason::Timeout,
        Some(wasmtime::Trap::OutOfFuel) => FailureReason::Fuel,
        Some(_) => FailureReason::Trap,
        // Not a trap: the guest returned something the canonical ABI could
        // not read (bad pointers, bad discriminants, invalid UTF-8).
        None => FailureReason::Malformed,
    }
}

/// Where precompiled artifacts of a data directory live.
pub fn cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("plugin-cache")
}
