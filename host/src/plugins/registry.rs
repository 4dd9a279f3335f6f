//! Deployed plugins: the manifest, the stored components, and the compiled
//! ones in memory.
//!
//! A plugin is `(name, version, sha256, kind, bytes)`. A name@version is
//! immutable: deploying it again with the same bytes is a no-op, with other
//! bytes an error. Everything persists in the store's `Plugins` space:
//!
//! ```text
//! manifest              {"format": 1, "plugins": [PluginInfo, ...]}
//! bin/<name>@<version>  the component bytes
//! ```
//!
//! Each entry carries a sequence number (a Lamport counter, like bucket
//! properties), so a cluster can tell which node has the newer manifest.
//! Compilation happens on first use after a restart; the engine's artifact
//! cache makes that a file map rather than a compile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::PluginInfo;
use super::engine::Runtime;
use super::loaded::Loaded;
use super::package::Prepared;
use crate::buckets::PluginRef;
use crate::storage::{Space, Store};
use crate::{Error, Result};

const MANIFEST_KEY: &[u8] = b"manifest";
const MANIFEST_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    plugins: Vec<PluginInfo>,
}

fn bin_key(r: &PluginRef) -> Vec<u8> {
    format!("bin/{r}").into_bytes()
}

/// Hex SHA-256 of plugin bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The registry of one node.
pub struct Registry {
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    cache_dir: Option<PathBuf>,
    manifest: ArcSwap<BTreeMap<PluginRef, PluginInfo>>,
    /// Compiled plugins; an entry is added on first use, never replaced (a
    /// name@version is immutable), and dropped after it goes unused for a
    /// while ([`Registry::unload_idle`]). Calls in flight hold their own
    /// reference, so unloading never cuts one short.
    loaded: RwLock<HashMap<PluginRef, Arc<Loaded>>>,
    /// Serialises manifest changes; never held across an await.
    write: Mutex<()>,
    /// Serialises compiling on first use, so concurrent first calls compile
    /// a plugin once. Held only on blocking threads.
    compile: Mutex<()>,
    /// Unloaded plugins that had been moved off request threads: they stay
    /// off when loaded again.
    offloaded: Mutex<HashSet<PluginRef>>,
    loaded_gauge: metrics::Gauge,
    /// Plugin versions seen with other bytes on a peer, and those bytes'
    /// sha256.
    conflicts: Mutex<HashSet<(PluginRef, String)>>,
}

impl Registry {
    /// Loads the manifest persisted in `store`.
    pub fn open(store: Arc<dyn Store>, runtime: Arc<Runtime>, cache_dir: Option<PathBuf>) -> Result<Self> {
        let mut manifest = BTreeMap::new();
        if let Some(bytes) = store.get(Space::Plugins, MANIFEST_KEY)? {
            let m: Manifest = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corruption(format!("plugin manifest does not decode: {e}")))?;
            if m.format != MANIFEST_FORMAT {
                return Err(Error::Corruption(format!("plugin manifest has unknown format {}", m.format)));
            }
            for p in m.plugins {
                manifest.insert(p.plugin_ref(), p);
            }
        }
        Ok(Self {
            store,
            runtime,
            cache_dir,
            manifest: ArcSwap::from_pointee(manifest),
            loaded: RwLock::new(HashMap::new()),
            write: Mutex::new(()),
            compile: Mutex::new(()),
            offloaded: Mutex::new(HashSet::new()),
            loaded_gauge: metrics::gauge!("concord_plugins_loaded"),
            conflicts: Mutex::new(HashSet::new()),
        })
    }

    /// Every deployed plugin.
    pub fn list(&self) -> Vec<PluginInfo> {
        self.manifest.load().values().cloned().collect()
    }

    /// The manifest entry of `r`.
    pub fn info(&self, r: &PluginRef) -> Option<PluginInfo> {
        self.manifest.load().get(r).cloned()
    }

    /// Whether `r` is deployed (without copying its entry).
    pub fn contains(&self, r: &PluginRef) -> bool {
        self.manifest.load().contains_key(r)
    }

    /// A digest that differs whenever two nodes' manifests differ.
    pub fn digest(&self) -> String {
        let manifest = self.manifest.load();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (r, p) in manifest.iter() {
            h.update(r.to_string().as_bytes());
            h.update(p.sha256.as_bytes());
        }
        format!("{}:{:016x}", manifest.len(), h.digest())
    }

    /// The manifest, encoded for a peer.
    pub fn export(&self) -> Vec<u8> {
        let m = Manifest { format: MANIFEST_FORMAT, plugins: self.list() };
        serde_json::to_vec(&m).expect("manifest serializes")
    }

    /// Entries of a peer's exported manifest that this node lacks. Entries
    /// it holds with other bytes are reported as conflicts.
    pub fn missing(&self, exported: &[u8]) -> Result<Vec<PluginInfo>> {
        let m: Manifest = serde_json::from_slice(exported)
            .map_err(|e| Error::Corruption(format!("a peer's plugin manifest does not decode: {e}")))?;
        if m.format != MANIFEST_FORMAT {
            return Err(Error::Corruption(format!("a peer's plugin manifest has unknown format {}", m.format)));
        }
        let mine = self.manifest.load();
        let mut missing = Vec::new();
        for p in m.plugins {
            match mine.get(&p.plugin_ref()) {
                None => missing.push(p),
                Some(here) if here.sha256 != p.sha256 => self.conflict(here, &p),
                Some(_) => {}
            }
        }
        Ok(missing)
    }

    /// Plugin versions known to be deployed with other bytes on a peer.
    pub fn conflicts(&self) -> BTreeSet<PluginRef> {
        self.conflicts.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(r, _)| r.clone()).collect()
    }

    /// Reports a name@version deployed with other bytes elsewhere (two
    /// deploys on either side of a partition): once per pair of builds, in
    /// the log and in `concord_plugin_conflicts`. Neither copy replaces the
    /// other; deploying the plugin under a new version ends the conflict.
    fn conflict(&self, here: &PluginInfo, there: &PluginInfo) {
        let mut seen = self.conflicts.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert((here.plugin_ref(), there.sha256.clone())) {
            tracing::error!(
                plugin = %here.plugin_ref(),
                here = %here.sha256,
                elsewhere = %there.sha256,
                "this plugin version was deployed with different bytes on another node; nodes may resolve or \
                 validate differently until it is deployed under a new version and buckets are bound to that"
            );
            let refs: HashSet<&PluginRef> = seen.iter().map(|(r, _)| r).collect();
            metrics::gauge!("concord_plugin_conflicts").set(refs.len() as f64);
        }
    }

    /// Adds a plugin fetched from a peer, after checking its bytes against
    /// the manifest entry's sha256 and compiling it.
    pub fn add_remote(&self, info: PluginInfo, component: &[u8]) -> Result<PluginInfo> {
        let r = info.plugin_ref();
        if sha256_hex(component) != info.sha256 {
            return Err(Error::Corruption(format!(
                "bytes of plugin {r} fetched from a peer do not match their sha256"
            )));
        }
        let prepared = super::package::prepare(component)?;
        if prepared.kind != info.kind {
            return Err(Error::Corruption(format!(
                "plugin {r} from a peer is not the {} its manifest says",
                info.kind.as_str()
            )));
        }
        let (_, loaded) = self.load_candidate(&r, &prepared, info.memory_mb)?;
        self.commit(info, &prepared.component, loaded)
    }

    /// Compiles and links `prepared` as `r` (with a memory cap of
    /// `memory_mb`, 0 for the node's default) without storing anything, so
    /// the caller can try it (and refuse it) before it becomes visible.
    pub fn load_candidate(
        &self,
        r: &PluginRef,
        prepared: &Prepared,
        memory_mb: u32,
    ) -> Result<(PluginInfo, Arc<Loaded>)> {
        let sha256 = sha256_hex(&prepared.component);
        if let Some(existing) = self.info(r)
            && existing.sha256 != sha256
        {
            return Err(Error::FailedPrecondition(format!(
                "{r} is already deployed with different bytes (sha256 {}); deploy the new build under a new version",
                existing.sha256
            )));
        }
        let info = PluginInfo {
            name: r.name.clone(),
            version: r.version.clone(),
            sha256,
            kind: prepared.kind,
            size_bytes: prepared.component.len() as u64,
            interface_version: prepared.interface_version.clone(),
            deployed_at_ms: crate::now_ms(),
            seq: 0,
            memory_mb,
        };
        if let Some(loaded) = self.loaded.read().unwrap_or_else(|p| p.into_inner()).get(r) {
            return Ok((loaded.info.clone(), Arc::clone(loaded)));
        }
        let (component, _) = self.runtime.compile(&prepared.component, self.cache_dir.as_deref())?;
        let loaded = Arc::new(Loaded::new(Arc::clone(&self.runtime), info.clone(), &component)?);
        Ok((info, loaded))
    }

    /// Stores a candidate and makes it visible. Idempotent for the same
    /// bytes.
    pub fn commit(&self, mut info: PluginInfo, component: &[u8], loaded: Arc<Loaded>) -> Result<PluginInfo> {
        let r = info.plugin_ref();
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.manifest.load_full();
        if let Some(existing) = current.get(&r) {
            if existing.sha256 == info.sha256 {
                return Ok(existing.clone());
            }
            return Err(Error::FailedPrecondition(format!("{r} is already deployed with different bytes")));
        }
        if info.seq == 0 {
            info.seq = current.values().map(|p| p.seq).max().unwrap_or(0) + 1;
        }
        let mut next = (*current).clone();
        next.insert(r.clone(), info.clone());
        self.store.insert(Space::Plugins, &bin_key(&r), component)?;
        let manifest = Manifest { format: MANIFEST_FORMAT, plugins: next.values().cloned().collect() };
        self.store.insert(
            Space::Plugins,
            MANIFEST_KEY,
            &serde_json::to_vec(&manifest).expect("manifest serializes"),
        )?;
        self.store.flush()?;
        self.manifest.store(Arc::new(next));
        self.keep_loaded(r, loaded);
        Ok(info)
    }

    /// The stored component of `r`, for peers that lack it.
    pub fn component(&self, r: &PluginRef) -> Result<Option<Vec<u8>>> {
        if !self.contains(r) {
            return Ok(None);
        }
        Ok(self.store.get(Space::Plugins, &bin_key(r))?)
    }

    /// The compiled plugin `r`, if it is already compiled.
    pub fn loaded_now(&self, r: &PluginRef) -> Option<Arc<Loaded>> {
        let l = self.loaded.read().unwrap_or_else(|p| p.into_inner()).get(r).cloned()?;
        l.touch();
        Some(l)
    }

    /// Unloads the compiled plugins nobody used since the previous call
    /// (their next use maps them back from the artifact cache). Returns what
    /// was unloaded. Called every `plugins.unload_idle_secs`, so a plugin is
    /// unloaded after one to two such periods without a call.
    pub fn unload_idle(&self) -> Vec<PluginRef> {
        let mut unloaded = Vec::new();
        {
            let mut map = self.loaded.write().unwrap_or_else(|p| p.into_inner());
            map.retain(|r, l| {
                let keep = l.take_used();
                if !keep {
                    unloaded.push((r.clone(), Arc::clone(l)));
                }
                keep
            });
            self.loaded_gauge.set(map.len() as f64);
        }
        let mut offloaded = self.offloaded.lock().unwrap_or_else(|p| p.into_inner());
        // The plugins themselves are freed here, once the lock that request
        // threads take is released.
        unloaded
            .into_iter()
            .map(|(r, l)| {
                if l.offloaded() {
                    offloaded.insert(r.clone());
                }
                r
            })
            .collect()
    }

    /// Adds a compiled plugin unless one is there already; returns the one
    /// that is.
    fn keep_loaded(&self, r: PluginRef, loaded: Arc<Loaded>) -> Arc<Loaded> {
        if self.offloaded.lock().unwrap_or_else(|p| p.into_inner()).contains(&r) {
            loaded.start_offloaded();
        }
        let mut map = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        let kept = Arc::clone(map.entry(r).or_insert(loaded));
        self.loaded_gauge.set(map.len() as f64);
        kept
    }

    /// The compiled plugin `r`, compiling it on first use (blocking).
    pub fn get(&self, r: &PluginRef) -> Result<Arc<Loaded>> {
        if let Some(l) = self.loaded_now(r) {
            return Ok(l);
        }
        let _compiling = self.compile.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have compiled it while we waited.
        if let Some(l) = self.loaded_now(r) {
            return Ok(l);
        }
        let info = self.info(r).ok_or_else(|| Error::NotFound(format!("plugin {r} is not deployed")))?;
        let bytes = self
            .store
            .get(Space::Plugins, &bin_key(r))?
            .ok_or_else(|| Error::Corruption(format!("plugin {r} is in the manifest but its bytes are missing")))?;
        if sha256_hex(&bytes) != info.sha256 {
            return Err(Error::Corruption(format!("stored bytes of plugin {r} do not match their sha256")));
        }
        let (component, cached) = self.runtime.compile(&bytes, self.cache_dir.as_deref())?;
        tracing::debug!(plugin = %r, cached, "plugin loaded");
        let loaded = Arc::new(Loaded::new(Arc::clone(&self.runtime), info, &component)?);
        Ok(self.keep_loaded(r.clone(), loaded))
    }
}
