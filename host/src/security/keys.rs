//! The cluster secret: a small ring of 256-bit keys every member holds.
//!
//! The keys sign what the cluster hands out and later takes back: context
//! tokens (so a client cannot forge one), the credential peers present on
//! every Internal call, and the metadata members exchange. A key has an id; what a key
//! signs names it, so a rotation never invalidates what the older key
//! signed until that key's grace period ends.
//!
//! * The first node of a cluster makes the first key; it is kept in
//!   `cluster-keys.json` in the data directory (mode 0600).
//! * A joining node receives the keys from its seed over an authenticated
//!   channel (an admin's call, or a peer certificate), or from the operator
//!   (`security.cluster_secret`, printed by `concord cluster secret`).
//! * Keys spread between members with the rest of the cluster metadata.
//! * `concord cluster rotate-secret` adds a key and gives every older one an
//!   expiry. A node signs with the newest key every live member has
//!   announced, so no member is sent something it cannot check yet; expired
//!   keys are dropped everywhere.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a tag (a truncated HMAC-SHA256) on tokens and datagrams.
pub const TAG_BYTES: usize = 16;

/// The most keys a key set holds: one current and a few still in grace.
pub const MAX_KEYS: usize = 16;

/// File name of the key set in the data directory.
pub const KEYS_FILE: &str = "cluster-keys.json";

/// Prefix of an exported key set (`concord cluster secret`).
const EXPORT_PREFIX: &str = "concord-secret-v1:";

/// The longest exported or stored key set accepted, in bytes.
const MAX_ENCODED: usize = 8 << 10;

/// What a key signs; each use gets its own tag space so a tag made for one
/// can never pass as another.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// Context tokens.
    Context,
    /// The credential on Internal calls.
    Peer,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Context => b"concord context v2\0",
            Purpose::Peer => b"concord peer v1\0",
        }
    }
}

/// One key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
struct StoredKey {
    id: u32,
    /// 32 bytes, hex.
    secret: String,
    /// Unix milliseconds after which the key is no longer accepted; none
    /// while it is the newest.
    #[serde(default)]
    expires_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct StoredSet {
    format: u32,
    keys: Vec<StoredKey>,
}

/// A key and its keyed MAC state.
#[derive(Clone)]
pub struct ClusterKey {
    id: u32,
    secret: [u8; 32],
    expires_ms: Option<u64>,
    mac: HmacSha256,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("ClusterKey").field("id", &self.id).field("expires_ms", &self.expires_ms).finish()
    }
}

impl ClusterKey {
    fn new(id: u32, secret: [u8; 32], expires_ms: Option<u64>) -> Self {
        let mac = HmacSha256::new_from_slice(&secret).expect("HMAC takes keys of any length");
        Self { id, secret, expires_ms, mac }
    }

    /// The key's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The keyed MAC fed with `purpose` and `parts`.
    fn fed(&self, purpose: Purpose, parts: &[&[u8]]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(purpose.label());
        for p in parts {
            // Lengths keep ("ab","c") and ("a","bc") apart.
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        mac
    }

    /// A tag over `parts` for `purpose`.
    pub fn tag(&self, purpose: Purpose, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        let full = self.fed(purpose, parts).finalize().into_bytes();
        let mut out = [0; TAG_BYTES];
        out.copy_from_slice(&full[..TAG_BYTES]);
        out
    }

    /// Whether `tag` is this key's tag over `parts`, compared in constant time.
    pub fn verify(&self, purpose: Purpose, parts: &[&[u8]], tag: &[u8]) -> bool {
        tag.len() == TAG_BYTES && self.fed(purpose, parts).verify_truncated_left(tag).is_ok()
    }
}

/// Why a key set was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cluster secret is not valid: {0}")]
pub struct KeysError(pub String);

/// An immutable set of keys, sorted by id. Empty on a node that has not
/// joined a cluster yet.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    keys: Vec<ClusterKey>,
    /// Id of the key to sign with (see [`Keyring::set_signing_limit`]).
    signing: Option<u32>,
}

impl KeySet {
    /// A set of one fresh random key.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        Self::from_keys(vec![ClusterKey::new(1, secret, None)])
    }

    fn from_keys(mut keys: Vec<ClusterKey>) -> Self {
        keys.sort_by_key(|k| k.id);
        let signing = keys.iter().rev().find(|k| k.expires_ms.is_none()).or(keys.last()).map(|k| k.id);
        Self { keys, signing }
    }

    /// Whether the set holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Ids of the keys, oldest first.
    pub fn ids(&self) -> Vec<u32> {
        self.keys.iter().map(|k| k.id).collect()
    }

    /// The newest key's id (0 when empty).
    pub fn newest(&self) -> u32 {
        self.keys.last().map_or(0, |k| k.id)
    }

    /// The key to sign with, if the set holds any.
    pub fn signing(&self) -> Option<&ClusterKey> {
        let id = self.signing?;
        self.key(id)
    }

    /// The key with this id, if held and not expired at `now_ms`.
    pub fn accepting(&self, id: u32, now_ms: u64) -> Option<&ClusterKey> {
        self.key(id).filter(|k| k.expires_ms.is_none_or(|e| now_ms < e))
    }

    fn key(&self, id: u32) -> Option<&ClusterKey> {
        self.keys.binary_search_by_key(&id, |k| k.id).ok().map(|i| &self.keys[i])
    }

    /// A digest of ids and expiries (never the secrets), for gossip: two
    /// members with the same digest hold the same keys.
    pub fn digest(&self) -> String {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for k in &self.keys {
            h.update(&k.id.to_le_bytes());
            h.update(&k.expires_ms.unwrap_or(0).to_le_bytes());
            // A tag, not the secret: the digest travels in gossip.
            h.update(&k.tag(Purpose::Peer, &[b"key digest"]));
        }
        format!("{}:{:016x}", self.newest(), h.digest())
    }

    /// The set as stored on disk and sent to peers (JSON).
    pub fn encode(&self) -> Vec<u8> {
        let stored = StoredSet {
            format: 1,
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey { id: k.id, secret: hex::encode(k.secret), expires_ms: k.expires_ms })
                .collect(),
        };
        serde_json::to_vec(&stored).expect("key sets serialize")
    }

    /// Decodes [`KeySet::encode`]'s bytes, checking every key.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, KeysError> {
        if bytes.len() > MAX_ENCODED {
            return Err(KeysError(format!("{} bytes, more than the {MAX_ENCODED} a key set takes", bytes.len())));
        }
        let stored: StoredSet = serde_json::from_slice(bytes).map_err(|e| KeysError(format!("not a key set: {e}")))?;
        if stored.format != 1 {
            return Err(KeysError(format!("unsupported format {}", stored.format)));
        }
        if stored.keys.is_empty() || stored.keys.len() > MAX_KEYS {
            return Err(KeysError(format!("{} keys; a key set holds 1 to {MAX_KEYS}", stored.keys.len())));
        }
        let mut keys = Vec::with_capacity(stored.keys.len());
        for k in stored.keys {
            let secret: [u8; 32] = hex::decode(&k.secret)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| KeysError(format!("key {} is not 32 bytes of hex", k.id)))?;
            if k.id == 0 {
                return Err(KeysError("key ids start at 1".into()));
            }
            keys.push(ClusterKey::new(k.id, secret, k.expires_ms));
        }
        let set = Self::from_keys(keys);
        if set.keys.windows(2).any(|w| w[0].id == w[1].id) {
            return Err(KeysError("two keys share an id".into()));
        }
        Ok(set)
    }

    /// The set as one line an operator can pass to another node.
    pub fn export(&self) -> String {
        format!("{EXPORT_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.encode()))
    }

    /// Reads [`KeySet::export`]'s line.
    pub fn import(line: &str) -> std::result::Result<Self, KeysError> {
        let body = line.trim().strip_prefix(EXPORT_PREFIX).ok_or_else(|| {
            KeysError(format!("expected the line `concord cluster secret` prints, starting {EXPORT_PREFIX}"))
        })?;
        if body.len() > MAX_ENCODED * 2 {
            return Err(KeysError("too long".into()));
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| KeysError(format!("not base64: {e}")))?;
        Self::decode(&bytes)
    }

    /// This set with `other`'s keys added: for an id both hold, the earlier
    /// expiry wins (a retirement is never undone); if the two secrets differ
    /// (two members rotated at once), the larger secret wins everywhere.
    /// Keys expired at `now_ms` are dropped.
    fn merged(&self, other: &KeySet, now_ms: u64) -> KeySet {
        let mut keys: Vec<ClusterKey> = self.keys.clone();
        for theirs in &other.keys {
            match keys.iter_mut().find(|k| k.id == theirs.id) {
                None => keys.push(theirs.clone()),
                Some(ours) => {
                    let expires = match (ours.expires_ms, theirs.expires_ms) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let secret = if theirs.secret > ours.secret { theirs.secret } else { ours.secret };
                    *ours = ClusterKey::new(ours.id, secret, expires);
                }
            }
        }
        Self::live(keys, now_ms)
    }

    /// A set of `keys` without those expired at `now_ms`, and at most
    /// [`MAX_KEYS`] of the newest. (The keyring picks the signing key.)
    fn live(mut keys: Vec<ClusterKey>, now_ms: u64) -> KeySet {
        keys.retain(|k| k.expires_ms.is_none_or(|e| now_ms < e));
        keys.sort_by_key(|k| k.id);
        let excess = keys.len().saturating_sub(MAX_KEYS);
        keys.drain(..excess);
        Self::from_keys(keys)
    }

    fn same_keys(&self, other: &KeySet) -> bool {
        self.keys.len() == other.keys.len()
            && self
                .keys
                .iter()
                .zip(&other.keys)
                .all(|(a, b)| a.id == b.id && a.secret == b.secret && a.expires_ms == b.expires_ms)
    }
}

/// The node's current key set, swapped as a whole when it changes, and
/// saved in the data directory.
pub struct Keyring {
    path: Option<PathBuf>,
    set: ArcSwap<KeySet>,
    /// Newest key every live member has announced; signing uses no newer.
    signing_limit: std::sync::atomic::AtomicU32,
    /// Serializes changes (and the file writes behind them).
    write: Mutex<()>,
}

impl Keyring {
    /// Loads the key set saved in `dir`, or starts empty.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(KEYS_FILE);
        let set = match std::fs::read(&path) {
            Ok(bytes) => KeySet::decode(&bytes).map_err(|e| {
                Error::Internal(format!(
                    "{}: {e}; restore it from another member with `concord cluster secret`",
                    path.display()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeySet::default(),
            Err(e) => return Err(Error::Internal(format!("cannot read {}: {e}", path.display()))),
        };
        Ok(Self::with(Some(path), set))
    }

    /// A keyring that is never saved (tests and tools).
    pub fn in_memory(set: KeySet) -> Self {
        Self::with(None, set)
    }

    fn with(path: Option<PathBuf>, set: KeySet) -> Self {
        Self {
            path,
            set: ArcSwap::from_pointee(set),
            signing_limit: std::sync::atomic::AtomicU32::new(u32::MAX),
            write: Mutex::new(()),
        }
    }

    /// The current set.
    pub fn current(&self) -> Arc<KeySet> {
        self.set.load_full()
    }

    /// Whether this node holds no key yet.
    pub fn is_empty(&self) -> bool {
        self.set.load().is_empty()
    }

    /// Makes the first key of a new cluster, unless the node holds keys.
    pub fn create_if_empty(&self) -> Result<bool> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        if !self.set.load().is_empty() {
            return Ok(false);
        }
        self.store(KeySet::generate())?;
        Ok(true)
    }

    /// Replaces every key (a node joining another cluster).
    pub fn replace(&self, set: KeySet) -> Result<()> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.store(set)
    }

    /// Adds a peer's keys. Returns whether anything changed.
    pub fn merge(&self, other: &KeySet, now_ms: u64) -> Result<bool> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let ours = self.set.load_full();
        let merged = ours.merged(other, now_ms);
        if merged.same_keys(&ours) {
            return Ok(false);
        }
        self.store(merged)?;
        Ok(true)
    }

    /// Drops keys expired at `now_ms`.
    pub fn expire(&self, now_ms: u64) -> Result<bool> {
        self.merge(&KeySet::default(), now_ms)
    }

    /// Adds a new key; every older key expires `grace_ms` from `now_ms`.
    /// Returns the new key's id.
    pub fn rotate(&self, now_ms: u64, grace_ms: u64) -> Result<u32> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let ours = self.set.load_full();
        if ours.is_empty() {
            return Err(Error::FailedPrecondition("this node holds no cluster secret to rotate".into()));
        }
        let id = ours.newest().checked_add(1).ok_or_else(|| Error::internal("key ids are exhausted"))?;
        let expiry = now_ms.saturating_add(grace_ms);
        let mut keys: Vec<ClusterKey> = ours
            .keys
            .iter()
            .map(|k| ClusterKey::new(k.id, k.secret, Some(k.expires_ms.map_or(expiry, |e| e.min(expiry)))))
            .collect();
        let mut secret = [0u8; 32];
        rand::fill(&mut secret);
        keys.push(ClusterKey::new(id, secret, None));
        self.store(KeySet::live(keys, now_ms))?;
        Ok(id)
    }

    /// Signs with no key newer than `limit`: the newest key every live
    /// member holds. Until every member has a new key, the previous one
    /// signs.
    pub fn set_signing_limit(&self, limit: u32) {
        let old = self.signing_limit.swap(limit, std::sync::atomic::Ordering::AcqRel);
        if old != limit {
            let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
            let set = (*self.set.load_full()).clone();
            self.publish(set);
        }
    }

    fn publish(&self, mut set: KeySet) {
        let limit = self.signing_limit.load(std::sync::atomic::Ordering::Acquire);
        set.signing = set.keys.iter().rev().find(|k| k.id <= limit).or(set.keys.first()).map(|k| k.id);
        self.set.store(Arc::new(set));
    }

    fn store(&self, set: KeySet) -> Result<()> {
        match &self.path {
            // No keys (a failed first join restoring what it had): no file,
            // so the next start is the same as this one's.
            Some(path) if set.is_empty() => match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Internal(format!("cannot remove {}: {e}", path.display()))),
            },
            Some(path) => write_private(path, &set.encode())?,
            None => {}
        }
        self.publish(set);
        Ok(())
    }
}

/// Writes `bytes` to `path` readable by the owner only, atomically.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let fail = |e: std::io::Error| Error::Internal(format!("cannot write {}: {e}", path.display()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(fail)?;
        f.write_all(bytes).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_verify_only_for_their_key_purpose_and_bytes() {
        let a = KeySet::generate();
        let b = KeySet::generate();
        let ka = a.signing().unwrap();
        let kb = b.signing().unwrap();
        let tag = ka.tag(Purpose::Context, &[b"x", b"y"]);
        assert!(ka.verify(Purpose::Context, &[b"x", b"y"], &tag));
        assert!(!kb.verify(Purpose::Context, &[b"x", b"y"], &tag));
        assert!(!ka.verify(Purpose::Peer, &[b"x", b"y"], &tag));
        assert!(!ka.verify(Purpose::Context, &[b"xy"], &tag));
        assert!(!ka.verify(Purpose::Context, &[b"x", b"y"], &tag[..8]));
        let mut bad = tag;
        bad[3] ^= 1;
        assert!(!ka.verify(Purpose::Context, &[b"x", b"y"], &bad));
    }

    #[test]
    fn exports_round_trip_and_bad_lines_are_named() {
        let set = KeySet::generate();
        let back = KeySet::import(&set.export()).unwrap();
        assert!(back.same_keys(&set));
        assert!(KeySet::import("hello").unwrap_err().0.contains("concord cluster secret"));
        assert!(KeySet::import("concord-secret-v1:!!").unwrap_err().0.contains("base64"));
        assert!(KeySet::decode(b"{\"format\":1,\"keys\":[]}").unwrap_err().0.contains("1 to 16"));
        let short = br#"{"format":1,"keys":[{"id":1,"secret":"abcd"}]}"#;
        assert!(KeySet::decode(short).unwrap_err().0.contains("32 bytes"));
        assert!(KeySet::decode(&vec![b' '; 10_000]).unwrap_err().0.contains("more than"));
    }

    #[test]
    fn rotation_signs_with_the_new_key_once_every_member_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        assert!(ring.is_empty());
        assert!(ring.create_if_empty().unwrap());
        assert!(!ring.create_if_empty().unwrap());
        ring.set_signing_limit(1);
        let id = ring.rotate(1_000, 60_000).unwrap();
        assert_eq!(id, 2);
        let set = ring.current();
        assert_eq!(set.signing().unwrap().id(), 1, "members have not announced key 2 yet");
        assert!(set.accepting(2, 1_000).is_some());
        assert!(set.accepting(1, 60_999).is_some());
        assert!(set.accepting(1, 61_000).is_none(), "the old key expires after its grace");
        ring.set_signing_limit(2);
        assert_eq!(ring.current().signing().unwrap().id(), 2);
        // Saved, and read back the same (mode 0600).
        let again = Keyring::open(dir.path()).unwrap();
        assert!(again.current().same_keys(&ring.current()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEYS_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Expired keys go away.
        assert!(ring.expire(61_000).unwrap());
        assert_eq!(ring.current().ids(), vec![2]);
        // Going back to no keys leaves no file behind to trip the next start.
        ring.replace(KeySet::default()).unwrap();
        assert!(Keyring::open(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn merging_spreads_keys_and_retirements() {
        let a = Keyring::in_memory(KeySet::generate());
        let b = Keyring::in_memory((*a.current()).clone());
        a.rotate(10, 1_000).unwrap();
        assert!(b.merge(&a.current(), 20).unwrap());
        assert!(b.current().same_keys(&a.current()));
        assert!(!b.merge(&a.current(), 20).unwrap(), "merging is idempotent");
        // Both rotate at once: the same id with two secrets settles on one.
        a.rotate(30, 1_000).unwrap();
        b.rotate(30, 1_000).unwrap();
        a.merge(&b.current(), 40).unwrap();
        b.merge(&a.current(), 40).unwrap();
        assert!(a.current().same_keys(&b.current()));
    }
}
