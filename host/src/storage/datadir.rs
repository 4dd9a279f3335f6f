//! The data directory: an exclusive lock and the node's identity.
//!
//! ```text
//! concord-data/
//!   LOCK       held (flock) by the running process; holds its pid
//!   IDENTITY   JSON: format, node id, incarnation, creation time
//!   CLEAN      present only between a clean shutdown and the next start
//!   cluster-keys.json  the cluster secret (see `crate::security::keys`)
//!   db/        the storage engine's files
//! ```
//!
//! The *incarnation* is a random 64-bit id and the node's actor in every
//! version vector (see [`crate::causal`]). A new one is minted whenever the
//! directory starts without data **or the previous run did not shut down
//! cleanly**. A crash can lose the last writes of this replica (all of them
//! in `periodic` mode since the last flush; in `fsync` mode a write already
//! sent to other replicas before its local flush), and with them the
//! counters of the dots it handed out. Coming back under the same actor
//! would reissue those dots for other values, and merges treat equal dots as
//! the same write, so one of the two would vanish: the "kv679" data-loss bug
//! of stores that reuse actor ids. A fresh actor cannot collide with
//! anything, at the cost of one more entry in the version vectors of keys
//! written after the crash.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The actor id of this data directory's life. See the module docs.
pub type Incarnation = u64;

const IDENTITY_FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Identity {
    format: u32,
    node_id: String,
    incarnation: Incarnation,
    created_at_ms: u64,
}

/// An opened, locked data directory. The lock is released on drop.
pub struct DataDir {
    path: PathBuf,
    node_id: String,
    /// Changes only through [`DataDir::renew_incarnation`].
    incarnation: AtomicU64,
    /// Whether the previous run shut down cleanly (or there was none).
    clean_start: bool,
    /// Holds the exclusive lock for as long as the node runs.
    _lock: File,
}

impl DataDir {
    /// Opens `path` (creating it), locks it, and loads or mints the identity.
    ///
    /// `node_id` is the configured id, if any; `default_node_id` names a node
    /// whose directory is new and whose config names none. A directory that
    /// already belongs to another node id is refused rather than silently
    /// renamed.
    pub fn open(path: &Path, node_id: Option<&str>, default_node_id: &str) -> Result<Self> {
        std::fs::create_dir_all(path)
            .map_err(|e| Error::Internal(format!("cannot create data directory {}: {e}", path.display())))?;
        let lock = lock(path)?;
        let identity_path = path.join("IDENTITY");
        let db_exists = path.join("db").exists();
        let clean_path = path.join("CLEAN");
        let was_clean = clean_path.exists();
        if was_clean {
            // From here on a crash must be detectable again.
            std::fs::remove_file(&clean_path)
                .map_err(|e| Error::Internal(format!("cannot remove {}: {e}", clean_path.display())))?;
            sync_dir(path)?;
        }
        let existing = match std::fs::read(&identity_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::Internal(format!("cannot read {}: {e}", identity_path.display()))),
        };
        let mint = mint_incarnation;
        let identity = match existing {
            Some(bytes) if db_exists => {
                let id: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Corruption(format!("{} is not a Concord identity file: {e}", identity_path.display()))
                })?;
                if id.format != IDENTITY_FORMAT {
                    return Err(Error::Corruption(format!(
                        "{} has format {}, this version reads format {IDENTITY_FORMAT}",
                        identity_path.display(),
                        id.format
                    )));
                }
                if let Some(want) = node_id
                    && want != id.node_id
                {
                    return Err(Error::invalid(format!(
                        "data directory {} belongs to node {:?}, not {want:?}; use another directory or drop the node id setting",
                        path.display(),
                        id.node_id
                    )));
                }
                if !was_clean {
                    let mut id = id;
                    id.incarnation = mint();
                    tracing::warn!(
                        node_id = %id.node_id,
                        "the last run did not shut down cleanly; this replica takes a new actor id so no write id is ever reused"
                    );
                    write_atomically(&identity_path, &serde_json::to_vec_pretty(&id).expect("identity serializes"))?;
                    id
                } else {
                    id
                }
            }
            Some(_) | None => {
                // No data yet (or data removed by hand): a new incarnation.
                let id = Identity {
                    format: IDENTITY_FORMAT,
                    node_id: node_id.unwrap_or(default_node_id).to_owned(),
                    incarnation: mint(),
                    created_at_ms: crate::now_ms(),
                };
                write_atomically(&identity_path, &serde_json::to_vec_pretty(&id).expect("identity serializes"))?;
                id
            }
        };
        Ok(Self {
            path: path.to_owned(),
            node_id: identity.node_id,
            incarnation: AtomicU64::new(identity.incarnation),
            clean_start: was_clean || !db_exists,
            _lock: lock,
        })
    }

    /// Mints and records a new incarnation, for a node that has just
    /// discarded its data: its new writes must not reuse its old dots.
    pub fn renew_incarnation(&self) -> Result<Incarnation> {
        let identity_path = self.path.join("IDENTITY");
        let incarnation = mint_incarnation();
        let id = Identity {
            format: IDENTITY_FORMAT,
            node_id: self.node_id.clone(),
            incarnation,
            created_at_ms: crate::now_ms(),
        };
        write_atomically(&identity_path, &serde_json::to_vec_pretty(&id).expect("identity serializes"))?;
        self.incarnation.store(incarnation, Ordering::Release);
        Ok(incarnation)
    }

    /// Records a clean shutdown: everything is flushed, so the next start may
    /// keep this incarnation. Call last, after the engine's final flush.
    pub fn mark_clean(&self) -> Result<()> {
        write_atomically(&self.path.join("CLEAN"), b"")
    }

    /// Where the storage engine keeps its files.
    pub fn db_path(&self) -> PathBuf {
        self.path.join("db")
    }

    /// Where precompiled plugins are cached.
    pub fn plugin_cache_path(&self) -> PathBuf {
        self.path.join("plugin-cache")
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node id this directory belongs to.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Whether the previous run shut down cleanly (true for a new
    /// directory): if not, what the node wrote last may be lost or half
    /// done.
    pub fn clean_start(&self) -> bool {
        self.clean_start
    }

    /// This directory's incarnation (the node's actor id).
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation.load(Ordering::Acquire)
    }
}

/// A random non-zero actor id.
fn mint_incarnation() -> Incarnation {
    loop {
        let i = crate::env::random_u64();
        if i != 0 {
            break i;
        }
    }
}

fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::Internal(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)
                .and_then(|_| write!(file, "{}", std::process::id()))
                .map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = File::open(&path).and_then(|mut f| f.read_to_string(&mut holder));
            let holder = holder.trim();
            let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
            Err(Error::FailedPrecondition(format!(
                "data directory {} is in use by another Concord process{who}; stop it or pass another --data-dir",
                dir.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::Internal(format!("cannot lock {}: {e}", path.display()))),
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |e: std::io::Error| Error::Internal(format!("cannot write {}: {e}", path.display()));
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Internal(format!("cannot sync directory {}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDir::open(dir.path(), None, "n1").unwrap();
        let err = DataDir::open(dir.path(), None, "n1").err().unwrap().to_string();
        assert!(err.contains("in use by another Concord process"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
    }

    #[test]
    fn identity_persists_across_clean_restarts_and_renews_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), None, "n1").unwrap();
        let inc = first.incarnation();
        std::fs::create_dir_all(first.db_path()).unwrap();
        first.mark_clean().unwrap();
        drop(first);
        let again = DataDir::open(dir.path(), None, "other-default").unwrap();
        assert_eq!(again.incarnation(), inc, "a clean restart keeps the incarnation");
        assert_eq!(again.node_id(), "n1");
        // No clean mark this time: as after a crash.
        drop(again);
        let crashed = DataDir::open(dir.path(), None, "n1").unwrap();
        assert_ne!(crashed.incarnation(), inc, "after an unclean stop the actor must change");
        assert_eq!(crashed.node_id(), "n1", "the node keeps its id");
        let inc2 = crashed.incarnation();
        crashed.mark_clean().unwrap();
        std::fs::remove_dir_all(crashed.db_path()).unwrap();
        drop(crashed);
        let wiped = DataDir::open(dir.path(), None, "n1").unwrap();
        assert_ne!(wiped.incarnation(), inc2, "a wiped directory must get a new incarnation");
    }

    #[test]
    fn a_directory_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path(), Some("alpha"), "x").unwrap();
        std::fs::create_dir_all(d.db_path()).unwrap();
        drop(d);
        let err = DataDir::open(dir.path(), Some("beta"), "x").err().unwrap().to_string();
        assert!(err.contains("belongs to node \"alpha\""), "{err}");
    }
}
