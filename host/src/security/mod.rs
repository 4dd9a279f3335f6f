//! Who may do what: the cluster secret and what it signs.
//!
//! * [`keys`]: the cluster's keys, which sign context tokens, the
//!   credential on every Internal call, and the metadata members exchange.
//! * [`guard`]: bearer tokens with roles for clients, and the check that
//!   keeps everyone but members out of the Internal service.
//! * [`tls`]: throwaway certificates for `concord dev --tls` and tests.
//!
//! The threat model and the limits are in `docs/OPERATIONS.md` ("Security").

pub mod guard;
pub mod keys;
pub mod tls;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use guard::{Guard, GuardLayer, Role, TokenConfig, new_token};
pub use keys::{ClusterKey, KeySet, Keyring, KeysError, Purpose, TAG_BYTES, now_ms};

/// The `[security]` settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// The cluster's keys for a node that joins without asking a seed
    /// (what `concord cluster secret` prints). Used only while the data
    /// directory holds none.
    pub cluster_secret: Option<String>,
    /// Client tokens and their roles; none means Kv and Admin are open.
    pub tokens: Vec<TokenConfig>,
    /// This node's certificate (PEM); with `tls_key`, turns TLS on for
    /// clients and peers.
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed every node's certificate: peers are
    /// checked against it both ways.
    pub tls_ca: Option<PathBuf>,
}

/// PEM files of a node that serves TLS.
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: Vec<u8>,
    /// Private key.
    pub key: Vec<u8>,
    /// CA of the cluster's node certificates.
    pub ca: Vec<u8>,
}

impl SecurityConfig {
    /// Checks what types alone do not.
    pub fn validate(&self) -> Result<()> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) | (Some(_), Some(_), Some(_)) => {}
            _ => {
                return Err(Error::invalid(
                    "TLS needs all three of security.tls_cert, tls_key and tls_ca (--tls-cert, --tls-key, --tls-ca)",
                ));
            }
        }
        if let Some(s) = &self.cluster_secret {
            KeySet::import(s).map_err(|e| Error::invalid(format!("security.cluster_secret: {e}")))?;
        }
        let mut names = std::collections::BTreeSet::new();
        for t in &self.tokens {
            if !names.insert(&t.name) {
                return Err(Error::invalid(format!("security.tokens: two tokens are named {:?}", t.name)));
            }
        }
        Ok(())
    }

    /// The TLS files, read, if TLS is on.
    pub fn tls(&self) -> Result<Option<TlsFiles>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca) else {
            return Ok(None);
        };
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| Error::invalid(format!("cannot read the TLS {what} {}: {e}", p.display())))
        };
        Ok(Some(TlsFiles { cert: read(cert, "certificate")?, key: read(key, "key")?, ca: read(ca, "CA")? }))
    }
}
