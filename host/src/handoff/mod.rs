//! Hinted handoff: writes kept for replicas that missed them, and their
//! delivery once those replicas are back.
//!
//! ```text
//! put at coordinator C, replicas C, B, D; B is down
//!   sloppy quorum:  C ──► F (the next live node past the preference list)
//!                   F merges the object into its hint for (B, key) and acks
//!                   (the ack counts for w, never for pw)
//!   otherwise, or when F fails too: C keeps the hint for (B, key) itself
//!   a call to a replica that fails or times out: C keeps a hint for it
//! later, B is seen alive:
//!   the worker on C or F sends B its hints in batches; B merges each one
//!   into its copy; each hint is deleted on B's ack, unless a newer write
//!   was merged into it meanwhile (then it goes again next time)
//! ```
//!
//! * [`hint`]: keys, records, coalescing and expiry as plain data.
//! * [`HintStore`]: the hints in the engine's `Hints` space, one record per
//!   (target, key). A second missed write of a key merges into the first
//!   (DVV merge), so hints never overwrite each other. Hints are written to
//!   the same engine as data and waited on with the same durability mode,
//!   so they survive a restart of the node that holds them.
//! * [`Handoff`]: the background worker. Once a second it looks at every
//!   target it holds hints for. A live target gets them delivered, throttled
//!   to `handoff.rate_bytes_per_sec`; a failed delivery is retried with
//!   doubling delays up to `handoff.retry_max_ms`. A hint whose target is no
//!   longer a replica of its key (the ring changed) is handed to the key's
//!   current replicas instead. A hint older than `handoff.window_secs`
//!   (3 hours by default, as in Cassandra) is dropped and counted:
//!   anti-entropy repairs what it held.
//! * [`Transfers`]: after a ring change, hands the trees this node no
//!   longer replicates to their new replicas, then drops them.

pub mod hint;
mod store;
pub mod transfer;
mod worker;

use serde::{Deserialize, Serialize};

pub use hint::{Hint, HintKey};
pub use store::{HintStore, StoredHint, TargetStats};
pub use transfer::{TransferState, Transfers};
pub use worker::{Handoff, QueueStatus};

use crate::{Error, Result};

/// Settings of hinted handoff (`[handoff]` in the config file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandoffConfig {
    /// Whether replica writes that fail leave hints and hints are delivered.
    /// Off, a replica that missed a write waits for read repair or
    /// anti-entropy (useful to test those alone).
    pub enabled: bool,
    /// Hints older than this many seconds are dropped (and counted).
    pub window_secs: u64,
    /// Most hint bytes delivered per second by this node, over all targets.
    pub rate_bytes_per_sec: u64,
    /// Hints per delivery call.
    pub batch: usize,
    /// Longest wait between delivery attempts to a target that keeps
    /// failing, in milliseconds. The first retry waits half a second.
    pub retry_max_ms: u64,
    /// Most bytes per second this node sends when it hands partitions to
    /// their new owners after a ring change.
    pub transfer_rate_bytes_per_sec: u64,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_secs: 3 * 3600,
            rate_bytes_per_sec: 8 << 20,
            batch: 64,
            retry_max_ms: 30_000,
            transfer_rate_bytes_per_sec: 16 << 20,
        }
    }
}

impl HandoffConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.window_secs == 0 {
            return Err(Error::invalid("handoff.window_secs must be at least 1"));
        }
        if self.rate_bytes_per_sec < 1024 {
            return Err(Error::invalid("handoff.rate_bytes_per_sec must be at least 1024"));
        }
        if !(1..=1024).contains(&self.batch) {
            return Err(Error::invalid("handoff.batch must be between 1 and 1024"));
        }
        if self.transfer_rate_bytes_per_sec < 1024 {
            return Err(Error::invalid("handoff.transfer_rate_bytes_per_sec must be at least 1024"));
        }
        if self.retry_max_ms < 500 {
            return Err(Error::invalid("handoff.retry_max_ms must be at least 500"));
        }
        Ok(())
    }
}
