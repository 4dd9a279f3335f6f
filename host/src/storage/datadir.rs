//! The data directory: an exclusive lock and the node's identity.
//!
//! ```text
//! concord-data/
//!   LOCK       held (flock) by the running process; holds its pid
//!   IDENTITY   JSON: format, node id, incarnation, creation time
//!   db/        the storage engine's files
//! ```
//!
//! The *incarnation* is a random 64-bit id minted whenever the directory
//! starts without data, and it is the node's actor in every version vector
//! (see [`crate::causal`]). A node whose disk was wiped therefore comes back
//! as a new actor and can never reissue a dot its old self already used,
//! which is the "kv679" data-loss bug of stores that reuse actor ids.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
    incarnation: Incarnation,
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
        let identity = match std::fs::read(&identity_path) {
            Ok(bytes) if db_exists => {
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
                id
            }
            Ok(_) | Err(_) => {
                // No data yet (or data removed by hand): a new incarnation.
                let id = Identity {
                    format: IDENTITY_FORMAT,
                    node_id: node_id.unwrap_or(default_node_id).to_owned(),
                    incarnation: loop {
                        let i: u64 = rand::random();
                        if i != 0 {
                            break i;
                        }
                    },
                    created_at_ms: crate::now_ms(),
                };
                write_atomically(&identity_path, &serde_json::to_vec_pretty(&id).expect("identity serializes"))?;
                id
            }
        };
        Ok(Self { path: path.to_owned(), node_id: identity.node_id, incarnation: identity.incarnation, _lock: lock })
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

    /// This directory's incarnation (the node's actor id).
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
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
    Ok(())
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
    fn identity_persists_while_data_exists_and_renews_when_wiped() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path(), None, "n1").unwrap();
        let inc = first.incarnation();
        std::fs::create_dir_all(first.db_path()).unwrap();
        drop(first);
        let again = DataDir::open(dir.path(), None, "other-default").unwrap();
        assert_eq!(again.incarnation(), inc);
        assert_eq!(again.node_id(), "n1");
        std::fs::remove_dir_all(again.db_path()).unwrap();
        drop(again);
        let wiped = DataDir::open(dir.path(), None, "n1").unwrap();
        assert_ne!(wiped.incarnation(), inc, "a wiped directory must get a new incarnation");
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
