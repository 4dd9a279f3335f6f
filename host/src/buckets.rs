//! Bucket properties: replication, limits and plugin bindings per bucket.
//!
//! Buckets are implicit, as in Riak: any valid name works with the default
//! properties until someone sets them. Properties are versioned with a
//! Lamport-style counter plus the id of the node that made the change, so
//! copies held by different nodes merge deterministically: the higher
//! `(version, updated_by)` wins.
//!
//! Readers take a snapshot ([`Buckets::get`]) without locking; writers are
//! serialised by a mutex held for the in-memory change and the metadata
//! write, never across an await.
//!
//! The module depends only on storage: [`crate::cluster`] gossips and
//! merges the table, [`crate::plugins`] reads the bindings, and neither has
//! to import the other for it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::storage::{Space, Store};
use crate::{Error, Result};

/// Largest replication factor a bucket may ask for.
pub const MAX_N: u32 = 16;
/// Default replication factor.
pub const DEFAULT_N: u32 = 3;
/// Default limit on key + value bytes.
pub const DEFAULT_MAX_OBJECT_BYTES: u32 = 10 * 1024;
/// Upper bound on `max_object_bytes`.
pub const MAX_OBJECT_BYTES_LIMIT: u32 = 1024 * 1024;
/// Upper bound on `max_siblings × max_object_bytes`: what one key may hold
/// at most, so that any key fits in one message between nodes and to
/// clients (64 MiB) with room to spare. Replica merges may go past it, up
/// to [`crate::storage::MAX_MERGED_KEY_BYTES`].
pub const MAX_KEY_DATA_BYTES: u64 = 16 * 1024 * 1024;
/// Default sibling budget per key.
pub const DEFAULT_MAX_SIBLINGS: u32 = 32;
/// Upper bound on `max_siblings`.
pub const MAX_SIBLINGS_LIMIT: u32 = 1024;
/// Longest key.
pub const MAX_KEY_BYTES: usize = 1024;

/// Checks a bucket name: 1 to 255 characters of `A-Za-z0-9_.-`.
pub fn validate_bucket_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("bucket name is empty"));
    }
    if name.len() > 255 {
        return Err(Error::invalid(format!("bucket name is {} bytes long; the limit is 255", name.len())));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(Error::invalid(format!(
            "bucket name {name:?} contains {c:?}; use only letters, digits, '_', '.' and '-'"
        )));
    }
    Ok(())
}

/// A plugin named with its version: `name@version`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PluginRef {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
}

/// Checks a plugin name or version: 1 to 64 characters of `A-Za-z0-9_.-+`.
pub fn validate_plugin_word(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > 64 {
        return Err(Error::invalid(format!("plugin {what} must be 1 to 64 characters, got {s:?}")));
    }
    if let Some(c) = s.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+'))) {
        return Err(Error::invalid(format!(
            "plugin {what} {s:?} contains {c:?}; use letters, digits, '_', '.', '-' and '+'"
        )));
    }
    Ok(())
}

impl FromStr for PluginRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, version) =
            s.split_once('@').ok_or_else(|| Error::invalid(format!("plugin reference {s:?} must be NAME@VERSION")))?;
        validate_plugin_word("name", name)?;
        validate_plugin_word("version", version)?;
        Ok(Self { name: name.into(), version: version.into() })
    }
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// When a bucket's resolver runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolveOn {
    /// On reads with more than one sibling (the result is written back).
    #[default]
    Read,
    /// On writes that leave more than one sibling.
    Write,
}

/// What a failing (trapping, timed-out) validator means for a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidatorFailure {
    /// Reject the write (fail closed).
    #[default]
    Reject,
    /// Accept the write (fail open).
    Accept,
}

/// A bucket's properties.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketProps {
    /// Replicas per key.
    pub n: u32,
    /// Replicas a read waits for; `None` means a majority of `n`.
    pub r: Option<u32>,
    /// Replicas a write waits for; `None` means a majority of `n`.
    pub w: Option<u32>,
    /// Largest key + value, in bytes.
    pub max_object_bytes: u32,
    /// Most siblings a key may hold before a write must resolve them.
    pub max_siblings: u32,
    /// Merges siblings, if set.
    pub resolver: Option<PluginRef>,
    /// Runs beside the resolver for comparison; never applied.
    pub shadow_resolver: Option<PluginRef>,
    /// Vet every write, in order.
    pub validators: Vec<PluginRef>,
    /// When the resolver runs.
    pub resolve_on: ResolveOn,
    /// What a failing validator means.
    pub validator_failure: ValidatorFailure,
    /// Whether writes may count acknowledgements from fallback nodes that
    /// stand in for unreachable replicas (sloppy quorum), and reads may ask
    /// them. Tables persisted before the property existed read as `true`.
    #[serde(default = "sloppy_default")]
    pub sloppy: bool,
    /// 0 for a bucket never configured; grows with every change.
    pub version: u64,
    /// Node that made the latest change (breaks version ties).
    pub updated_by: String,
}

impl Default for BucketProps {
    fn default() -> Self {
        Self {
            n: DEFAULT_N,
            r: None,
            w: None,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            max_siblings: DEFAULT_MAX_SIBLINGS,
            resolver: None,
            shadow_resolver: None,
            validators: Vec::new(),
            resolve_on: ResolveOn::Read,
            validator_failure: ValidatorFailure::Reject,
            sloppy: true,
            version: 0,
            updated_by: String::new(),
        }
    }
}

fn sloppy_default() -> bool {
    true
}

impl BucketProps {
    /// Replicas a default read waits for.
    pub fn r(&self) -> u32 {
        self.r.unwrap_or(self.n / 2 + 1)
    }

    /// Replicas a default write waits for.
    pub fn w(&self) -> u32 {
        self.w.unwrap_or(self.n / 2 + 1)
    }

    /// Whether `self` should replace `other` when two copies meet.
    pub fn supersedes(&self, other: &BucketProps) -> bool {
        (self.version, &self.updated_by) > (other.version, &other.updated_by)
    }

    /// The plugins these properties name.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginRef> {
        self.resolver.iter().chain(&self.shadow_resolver).chain(&self.validators)
    }

    /// Checks the properties are consistent and within limits.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_N).contains(&self.n) {
            return Err(Error::invalid(format!("n must be between 1 and {MAX_N}, got {}", self.n)));
        }
        for (what, v) in [("r", self.r), ("w", self.w)] {
            if let Some(v) = v
                && v > self.n
            {
                return Err(Error::invalid(format!("{what}={v} exceeds n={}", self.n)));
            }
        }
        if !(1..=MAX_OBJECT_BYTES_LIMIT).contains(&self.max_object_bytes) {
            return Err(Error::invalid(format!(
                "max_object_bytes must be between 1 and {MAX_OBJECT_BYTES_LIMIT}, got {}",
                self.max_object_bytes
            )));
        }
        if !(1..=MAX_SIBLINGS_LIMIT).contains(&self.max_siblings) {
            return Err(Error::invalid(format!(
                "max_siblings must be between 1 and {MAX_SIBLINGS_LIMIT}, got {}",
                self.max_siblings
            )));
        }
        let key_data = u64::from(self.max_siblings) * u64::from(self.max_object_bytes);
        if key_data > MAX_KEY_DATA_BYTES {
            return Err(Error::invalid(format!(
                "max_siblings × max_object_bytes is {key_data} bytes; one key may hold at most {MAX_KEY_DATA_BYTES} \
                 (16 MiB): lower one of them"
            )));
        }
        if self.validators.len() > 16 {
            return Err(Error::invalid("a bucket may have at most 16 validators"));
        }
        Ok(())
    }
}

/// A change to some properties; `None` leaves a property as it is.
#[derive(Clone, Debug, Default)]
pub struct BucketChange {
    /// New replication factor.
    pub n: Option<u32>,
    /// New read quorum; `Some(0)` resets it to a majority of `n`.
    pub r: Option<u32>,
    /// New write quorum; `Some(0)` resets it to a majority of `n`.
    pub w: Option<u32>,
    /// New size limit.
    pub max_object_bytes: Option<u32>,
    /// New sibling budget.
    pub max_siblings: Option<u32>,
    /// New resolver; `Some(None)` clears it.
    pub resolver: Option<Option<PluginRef>>,
    /// New shadow resolver; `Some(None)` clears it.
    pub shadow_resolver: Option<Option<PluginRef>>,
    /// New validator list.
    pub validators: Option<Vec<PluginRef>>,
    /// New resolution time.
    pub resolve_on: Option<ResolveOn>,
    /// New validator failure policy.
    pub validator_failure: Option<ValidatorFailure>,
    /// Sloppy quorum on or off.
    pub sloppy: Option<bool>,
}

impl BucketChange {
    /// `props` as they would be after this change (not yet validated).
    pub fn applied_to(&self, props: &BucketProps) -> BucketProps {
        let mut next = props.clone();
        self.clone().apply(&mut next);
        next
    }

    fn apply(self, props: &mut BucketProps) {
        let quorum = |v: u32| (v != 0).then_some(v);
        if let Some(n) = self.n {
            props.n = n;
        }
        if let Some(r) = self.r {
            props.r = quorum(r);
        }
        if let Some(w) = self.w {
            props.w = quorum(w);
        }
        if let Some(v) = self.max_object_bytes {
            props.max_object_bytes = v;
        }
        if let Some(v) = self.max_siblings {
            props.max_siblings = v;
        }
        if let Some(v) = self.resolver {
            props.resolver = v;
        }
        if let Some(v) = self.shadow_resolver {
            props.shadow_resolver = v;
        }
        if let Some(v) = self.validators {
            props.validators = v;
        }
        if let Some(v) = self.resolve_on {
            props.resolve_on = v;
        }
        if let Some(v) = self.validator_failure {
            props.validator_failure = v;
        }
        if let Some(v) = self.sloppy {
            props.sloppy = v;
        }
    }
}

/// Metadata key under which bucket properties persist.
const META_KEY: &[u8] = b"buckets";
/// Format of the persisted bucket table.
const BUCKETS_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Persisted {
    format: u32,
    buckets: BTreeMap<String, BucketProps>,
}

type Table = BTreeMap<String, Arc<BucketProps>>;

/// The bucket table of one node.
pub struct Buckets {
    table: ArcSwap<Table>,
    defaults: Arc<BucketProps>,
    store: Arc<dyn Store>,
    /// Serialises changes (load, modify, persist, swap). Never held across
    /// an await.
    write: Mutex<()>,
    node_id: String,
}

impl Buckets {
    /// Loads the table persisted in `store`.
    pub fn load(store: Arc<dyn Store>, defaults: BucketProps, node_id: &str) -> Result<Self> {
        defaults.validate()?;
        let mut table = Table::new();
        if let Some(bytes) = store.get(Space::Meta, META_KEY)? {
            let p: Persisted = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Corruption(format!("bucket table does not decode: {e}")))?;
            if p.format != BUCKETS_FORMAT {
                return Err(Error::Corruption(format!("bucket table has unknown format {}", p.format)));
            }
            table = p.buckets.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        }
        Ok(Self {
            table: ArcSwap::from_pointee(table),
            defaults: Arc::new(defaults),
            store,
            write: Mutex::new(()),
            node_id: node_id.to_owned(),
        })
    }

    /// The properties of `name` (the defaults if it was never configured).
    /// The name must already be validated.
    pub fn get(&self, name: &str) -> Arc<BucketProps> {
        self.table.load().get(name).cloned().unwrap_or_else(|| Arc::clone(&self.defaults))
    }

    /// The properties of buckets nobody configured.
    pub fn defaults(&self) -> Arc<BucketProps> {
        Arc::clone(&self.defaults)
    }

    /// The replica counts in use: the default's and every configured
    /// bucket's, each once, ascending.
    pub fn replica_counts(&self) -> Vec<u8> {
        let mut ns: Vec<u8> =
            std::iter::once(self.defaults.n).chain(self.table.load().values().map(|p| p.n)).map(|n| n as u8).collect();
        ns.sort();
        ns.dedup();
        ns
    }

    /// Every configured bucket, by name.
    pub fn list(&self) -> Vec<(String, Arc<BucketProps>)> {
        self.table.load().iter().map(|(k, v)| (k.clone(), Arc::clone(v))).collect()
    }

    /// Highest version of any bucket: a cheap summary for gossip.
    pub fn version(&self) -> u64 {
        self.table.load().values().map(|p| p.version).max().unwrap_or(0)
    }

    /// A digest that differs whenever two nodes' tables differ.
    pub fn digest(&self) -> String {
        let table = self.table.load();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (name, p) in table.iter() {
            h.update(name.as_bytes());
            h.update(&p.version.to_le_bytes());
            h.update(p.updated_by.as_bytes());
        }
        let version = table.values().map(|p| p.version).max().unwrap_or(0);
        format!("{version}:{:016x}", h.digest())
    }

    /// The configured buckets, encoded for a peer.
    pub fn export(&self) -> Vec<u8> {
        let table = self.table.load();
        let buckets = table.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect();
        serde_json::to_vec(&Persisted { format: BUCKETS_FORMAT, buckets }).expect("bucket table serializes")
    }

    /// Merges a table exported by a peer. Entries for which `ready` is false
    /// are left for a later import. Returns how many buckets changed and the
    /// names of those left.
    pub fn import(&self, bytes: &[u8], ready: impl Fn(&BucketProps) -> bool) -> Result<(usize, Vec<String>)> {
        let p: Persisted = serde_json::from_slice(bytes)
            .map_err(|e| Error::Corruption(format!("a peer's bucket table does not decode: {e}")))?;
        if p.format != BUCKETS_FORMAT {
            return Err(Error::Corruption(format!("a peer's bucket table has unknown format {}", p.format)));
        }
        let (now, later): (Vec<_>, Vec<_>) = p.buckets.into_iter().partition(|(_, props)| ready(props));
        Ok((self.merge(now)?, later.into_iter().map(|(name, _)| name).collect()))
    }

    /// Applies `change` to `name` and persists it. Nothing changes on error.
    /// It flushes the engine, so async callers run it on a blocking thread
    /// ([`Buckets::set_blocking`]).
    pub fn set(&self, name: &str, change: BucketChange) -> Result<Arc<BucketProps>> {
        validate_bucket_name(name)?;
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        let mut props = (*self.get(name)).clone();
        change.apply(&mut props);
        props.validate()?;
        props.version = current.values().map(|p| p.version).max().unwrap_or(0) + 1;
        props.updated_by = self.node_id.clone();
        let props = Arc::new(props);
        let mut next = (*current).clone();
        next.insert(name.to_owned(), Arc::clone(&props));
        self.persist(&next)?;
        self.table.store(Arc::new(next));
        Ok(props)
    }

    /// Merges bucket properties learned from a peer; each entry replaces the
    /// local one only if it supersedes it. Returns how many changed.
    pub fn merge(&self, remote: impl IntoIterator<Item = (String, BucketProps)>) -> Result<usize> {
        let _guard = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table.load_full();
        let mut next = (*current).clone();
        let mut changed = 0;
        for (name, props) in remote {
            if validate_bucket_name(&name).is_err() || props.validate().is_err() {
                tracing::warn!(bucket = %name, "ignoring invalid bucket properties from a peer");
                continue;
            }
            if next.get(&name).is_none_or(|local| props.supersedes(local)) {
                next.insert(name, Arc::new(props));
                changed += 1;
            }
        }
        if changed > 0 {
            self.persist(&next)?;
            self.table.store(Arc::new(next));
        }
        Ok(changed)
    }

    /// [`Buckets::set`] on a blocking thread: the flush that makes the
    /// change durable (before anyone can see it) writes out the whole
    /// engine, and must not hold up a tokio worker.
    pub async fn set_blocking(self: &Arc<Self>, name: &str, change: BucketChange) -> Result<Arc<BucketProps>> {
        let (this, name) = (Arc::clone(self), name.to_owned());
        crate::env::blocking(move || this.set(&name, change)).await?
    }

    fn persist(&self, table: &Table) -> Result<()> {
        let p = Persisted {
            format: BUCKETS_FORMAT,
            buckets: table.iter().map(|(k, v)| (k.clone(), (**v).clone())).collect(),
        };
        let bytes = serde_json::to_vec(&p).expect("bucket table serializes");
        self.store.insert(Space::Meta, META_KEY, &bytes)?;
        self.store.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStore;

    fn buckets(store: &MemStore, node: &str) -> Buckets {
        Buckets::load(Arc::new(store.clone()), BucketProps::default(), node).unwrap()
    }

    #[test]
    fn names_are_checked() {
        for ok in ["a", "cart_v2", "A.b-C", &"x".repeat(255)] {
            validate_bucket_name(ok).unwrap();
        }
        for (bad, why) in [("", "empty"), ("a b", "' '"), ("é", "'é'"), (&"x".repeat(256), "255")] {
            let e = validate_bucket_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn plugin_refs_parse() {
        let r: PluginRef = "lww@1.0.2".parse().unwrap();
        assert_eq!((r.name.as_str(), r.version.as_str()), ("lww", "1.0.2"));
        assert_eq!(r.to_string(), "lww@1.0.2");
        for bad in ["lww", "@1", "lww@", "l w@1", "a@b@c"] {
            assert!(bad.parse::<PluginRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unset_buckets_have_defaults_and_changes_persist() {
        let store = MemStore::new();
        let b = buckets(&store, "n1");
        let p = b.get("fresh");
        assert_eq!((p.n, p.r(), p.w(), p.version), (3, 2, 2, 0));
        b.set("fresh", BucketChange { n: Some(5), max_siblings: Some(4), ..Default::default() }).unwrap();
        let reloaded = buckets(&store, "n1");
        let p = reloaded.get("fresh");
        assert_eq!((p.n, p.r(), p.w(), p.max_siblings), (5, 3, 3, 4));
        assert_eq!(reloaded.list().len(), 1);
    }

    #[test]
    fn invalid_changes_change_nothing() {
        let store = MemStore::new();
        let b = buckets(&store, "n1");
        b.set("x", BucketChange { n: Some(3), r: Some(3), ..Default::default() }).unwrap();
        for (change, why) in [
            (BucketChange { n: Some(2), ..Default::default() }, "r=3 exceeds n=2"),
            (BucketChange { n: Some(0), ..Default::default() }, "n must be between"),
            (BucketChange { max_object_bytes: Some(0), ..Default::default() }, "max_object_bytes"),
            (BucketChange { max_siblings: Some(100_000), ..Default::default() }, "max_siblings"),
            (
                BucketChange { max_siblings: Some(64), max_object_bytes: Some(1024 * 1024), ..Default::default() },
                "one key may hold at most",
            ),
        ] {
            let e = b.set("x", change).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        assert_eq!(b.get("x").n, 3);
        assert_eq!(b.get("x").version, 1);
    }

    #[test]
    fn merging_keeps_the_newest_copy_whatever_the_order() {
        let (s1, s2) = (MemStore::new(), MemStore::new());
        let (a, b) = (buckets(&s1, "a"), buckets(&s2, "b"));
        a.set("x", BucketChange { n: Some(1), ..Default::default() }).unwrap();
        b.set("x", BucketChange { n: Some(2), ..Default::default() }).unwrap();
        // Same version 1 on both; "b" > "a" breaks the tie on both sides.
        let from_a: Vec<_> = a.list().into_iter().map(|(k, v)| (k, (*v).clone())).collect();
        let from_b: Vec<_> = b.list().into_iter().map(|(k, v)| (k, (*v).clone())).collect();
        a.merge(from_b).unwrap();
        b.merge(from_a).unwrap();
        assert_eq!(a.get("x"), b.get("x"));
        assert_eq!(a.get("x").n, 2);
        // A later change anywhere wins.
        a.set("x", BucketChange { n: Some(4), ..Default::default() }).unwrap();
        let from_a: Vec<_> = a.list().into_iter().map(|(k, v)| (k, (*v).clone())).collect();
        b.merge(from_a).unwrap();
        assert_eq!(b.get("x").n, 4);
    }

    #[test]
    fn imports_wait_for_the_plugins_they_name() {
        let (s1, s2) = (MemStore::new(), MemStore::new());
        let (a, b) = (buckets(&s1, "a"), buckets(&s2, "b"));
        let lww: PluginRef = "lww@1".parse().unwrap();
        a.set("bound", BucketChange { resolver: Some(Some(lww.clone())), ..Default::default() }).unwrap();
        a.set("plain", BucketChange { n: Some(2), ..Default::default() }).unwrap();
        let exported = a.export();
        let (changed, deferred) = b.import(&exported, |p| p.plugins().all(|r| *r != lww)).unwrap();
        assert_eq!((changed, deferred), (1, vec!["bound".to_owned()]));
        assert_eq!(b.get("plain").n, 2);
        assert_eq!(b.get("bound").resolver, None, "not bound before the plugin is here");
        let (changed, deferred) = b.import(&exported, |_| true).unwrap();
        assert_eq!((changed, deferred.len()), (1, 0));
        assert_eq!(b.get("bound").resolver, Some(lww));
    }
}
