//! Node configuration: defaults, a TOML file, `CONCORD_*` variables, flags.
//!
//! Each layer overrides the one before it. Every key has a default, so an
//! empty file (or none) gives a working single-node store in
//! `./concord-data`. A variable names a key in upper case with `__` between
//! table and key: `CONCORD_DURABILITY=fsync`, `CONCORD_BUCKETS__N=1`. Values
//! are parsed as TOML (numbers, booleans, arrays) and fall back to strings.
//! Unknown keys are errors, so a typo never silently does nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::antientropy::AntiEntropyConfig;
use crate::buckets::{BucketProps, DEFAULT_MAX_OBJECT_BYTES, DEFAULT_MAX_SIBLINGS, DEFAULT_N};
use crate::handoff::HandoffConfig;
use crate::plugins::PluginConfig;
use crate::ring::DEFAULT_PARTITIONS;
use crate::security::SecurityConfig;
use crate::storage::DurabilityMode;
use crate::{Error, Result};

/// Everything a node can be told. See `docs/OPERATIONS.md` for each key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The node's id. Defaults to the first advertised address, and is then
    /// remembered in the data directory.
    pub node_id: Option<String>,
    /// Where data lives.
    pub data_dir: PathBuf,
    /// gRPC address for clients and peers.
    pub listen: SocketAddr,
    /// Address peers and clients should use to reach this node, when it
    /// differs from `listen` (e.g. `listen` is 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// Prometheus endpoint; off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// `listen` addresses of other nodes to join at start.
    pub seeds: Vec<String>,
    /// Failure domain (rack, data center) used to spread replicas.
    pub zone: String,
    /// Period of a gossip round, in milliseconds. A stopped node is marked
    /// down after roughly four rounds.
    pub gossip_interval_ms: u64,
    /// Nodes gossip only with nodes of the same cluster name.
    pub cluster_name: String,
    /// When writes are durable: `periodic` (default) or `fsync`.
    pub durability: DurabilityMode,
    /// Flush period in `periodic` mode, in milliseconds.
    pub flush_interval_ms: u64,
    /// In `fsync` mode, the longest a flush waits for concurrent writers to
    /// join it, in microseconds. A lone writer never waits.
    pub group_commit_max_delay_us: u64,
    /// Storage page cache, in MiB: bounds memory whatever the data size.
    pub cache_mb: u64,
    /// Tokio worker threads; 0 means one per CPU core.
    pub worker_threads: usize,
    /// Threads that run the storage calls of requests, so that a call
    /// waiting for the disk never holds up a tokio worker. Defaults to one
    /// per core and at least four. 0 runs them inline on the request
    /// threads: faster when the data fits the cache and every core is busy,
    /// but a read that waits for the disk then holds up other requests.
    pub storage_threads: usize,
    /// Deadline of a request that names none, in milliseconds.
    pub request_timeout_ms: u64,
    /// Ring partitions (a power of two); fixed when the cluster is created.
    pub partitions: u32,
    /// Log filter (`RUST_LOG` syntax); `RUST_LOG` wins when set.
    pub log: String,
    /// Properties of buckets nobody has configured.
    pub buckets: BucketDefaults,
    /// Limits and policies of WebAssembly plugins.
    pub plugins: PluginConfig,
    /// Whether reads send the merged object back to replicas that answered
    /// with less (read repair). On by default.
    pub read_repair: bool,
    /// Hinted handoff: hints for replicas that missed writes.
    pub handoff: HandoffConfig,
    /// Anti-entropy: hash-tree exchanges between replicas.
    pub antientropy: AntiEntropyConfig,
    /// TLS, client tokens and the cluster secret.
    pub security: SecurityConfig,
}

/// Defaults for implicit buckets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BucketDefaults {
    /// Replicas per key.
    pub n: u32,
    /// Largest key + value in bytes.
    pub max_object_bytes: u32,
    /// Sibling budget per key.
    pub max_siblings: u32,
}

impl Default for BucketDefaults {
    fn default() -> Self {
        Self { n: DEFAULT_N, max_object_bytes: DEFAULT_MAX_OBJECT_BYTES, max_siblings: DEFAULT_MAX_SIBLINGS }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: None,
            data_dir: PathBuf::from("concord-data"),
            listen: "127.0.0.1:7379".parse().expect("valid address"),
            advertise: None,
            metrics_listen: None,
            seeds: Vec::new(),
            zone: "default".into(),
            gossip_interval_ms: 500,
            cluster_name: "concord".into(),
            durability: DurabilityMode::Periodic,
            flush_interval_ms: 10,
            group_commit_max_delay_us: 1_000,
            cache_mb: 256,
            worker_threads: 0,
            storage_threads: crate::storage::Pool::default_threads(),
            request_timeout_ms: 5_000,
            partitions: DEFAULT_PARTITIONS,
            log: "info".into(),
            buckets: BucketDefaults::default(),
            plugins: PluginConfig::default(),
            read_repair: true,
            handoff: HandoffConfig::default(),
            antientropy: AntiEntropyConfig::default(),
            security: SecurityConfig::default(),
        }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then `CONCORD_*` variables from `env`.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialize");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::invalid(format!("cannot read config file {}: {e}", path.display())))?;
            let file: toml::Table = text
                .parse()
                .map_err(|e| Error::invalid(format!("config file {} is not valid TOML: {e}", path.display())))?;
            merge_tables(&mut table, file);
        }
        for (name, value) in env {
            let Some(key) = name.strip_prefix("CONCORD_") else { continue };
            // Variables the CLI, the tests and the bench scripts read for
            // themselves, not node settings.
            if matches!(key, "ENDPOINT" | "CONFIG" | "BIN" | "TOKEN" | "TLS_CA") {
                continue;
            }
            let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut table, &path, parse_scalar(&value));
        }
        let config: Config =
            toml::Value::Table(table).try_into().map_err(|e| Error::invalid(format!("invalid configuration: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that types alone do not.
    pub fn validate(&self) -> Result<()> {
        if !self.partitions.is_power_of_two() || !(1..=65_536).contains(&self.partitions) {
            return Err(Error::invalid(format!(
                "partitions must be a power of two between 1 and 65536, got {}",
                self.partitions
            )));
        }
        if self.flush_interval_ms == 0 {
            return Err(Error::invalid("flush_interval_ms must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(Error::invalid("request_timeout_ms must be at least 1"));
        }
        if !(10..=60_000).contains(&self.gossip_interval_ms) {
            return Err(Error::invalid("gossip_interval_ms must be between 10 and 60000"));
        }
        if self.storage_threads > 256 {
            return Err(Error::invalid(format!(
                "storage_threads must be at most 256 (0 runs storage calls inline), got {}",
                self.storage_threads
            )));
        }
        if self.cluster_name.is_empty() || self.cluster_name.len() > 64 {
            return Err(Error::invalid("cluster_name must be 1 to 64 characters"));
        }
        if self.zone.is_empty() {
            return Err(Error::invalid("zone must not be empty"));
        }
        if let Some(id) = &self.node_id
            && (id.is_empty() || id.len() > 128 || id.chars().any(char::is_whitespace))
        {
            return Err(Error::invalid(format!("node_id {id:?} must be 1 to 128 characters without spaces")));
        }
        self.plugins.validate()?;
        self.handoff.validate()?;
        self.antientropy.validate()?;
        self.security.validate()?;
        self.bucket_defaults().map(|_| ())
    }

    /// The address others reach this node at.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }

    /// Properties of implicit buckets.
    pub fn bucket_defaults(&self) -> Result<BucketProps> {
        let props = BucketProps {
            n: self.buckets.n,
            max_object_bytes: self.buckets.max_object_bytes,
            max_siblings: self.buckets.max_siblings,
            ..BucketProps::default()
        };
        props.validate().map_err(|e| Error::invalid(format!("invalid [buckets] defaults: {e}")))?;
        Ok(props)
    }
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table.entry(first.clone()).or_insert_with(|| toml::Value::Table(Default::default()));
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            } else {
                // Not a table: let deserialization report the type error.
                *entry = toml::Value::Table(Default::default());
                if let toml::Value::Table(t) = entry {
                    set_path(t, rest, value);
                }
            }
        }
    }
}

/// A variable's value as TOML if it parses as a scalar or array, else as a
/// string: `7` is a number, `fsync` a string, `["a:1","b:2"]` an array.
fn parse_scalar(s: &str) -> toml::Value {
    format!("v = {s}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:7379");
        assert_eq!(c.data_dir, PathBuf::from("concord-data"));
    }

    #[test]
    fn file_then_environment_override() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("concord.toml");
        std::fs::write(&file, "durability = \"fsync\"\nzone = \"eu-1\"\n[buckets]\nn = 5\n").unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("CONCORD_ZONE", "eu-2"),
                ("CONCORD_BUCKETS__N", "1"),
                ("CONCORD_ENDPOINT", "x"),
                ("CONCORD_BIN", "b"),
                ("OTHER", "y"),
            ]),
        )
        .unwrap();
        assert_eq!(c.durability, DurabilityMode::Fsync);
        assert_eq!(c.zone, "eu-2");
        assert_eq!(c.buckets.n, 1);
        let c = Config::load(None, env(&[("CONCORD_SEEDS", "[\"10.0.0.1:7379\"]")])).unwrap();
        assert_eq!(c.seeds, vec!["10.0.0.1:7379".to_string()]);
    }

    #[test]
    fn mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "durabilty = \"fsync\"\n").unwrap();
        let e = Config::load(Some(&file), env(&[])).unwrap_err().to_string();
        assert!(e.contains("durabilty"), "{e}");
        let e = Config::load(None, env(&[("CONCORD_PARTITIONS", "100")])).unwrap_err().to_string();
        assert!(e.contains("power of two"), "{e}");
        let e = Config::load(None, env(&[("CONCORD_DURABILITY", "sometimes")])).unwrap_err().to_string();
        assert!(e.contains("sometimes"), "{e}");
        let e = Config::load(Some(Path::new("/nonexistent/concord.toml")), env(&[])).unwrap_err().to_string();
        assert!(e.contains("cannot read config file"), "{e}");
        let e = Config::load(None, env(&[("CONCORD_BUCKETS__N", "0")])).unwrap_err().to_string();
        assert!(e.contains("[buckets]"), "{e}");
    }
}
