//! The error every layer of a node returns.
//!
//! Each variant says what the caller should do next, and maps to one gRPC
//! status code in [`crate::api`]. Do not fold a quorum failure or a plugin's
//! rejection into [`Error::Internal`]: clients act on the difference.

use crate::causal::Object;

/// What went wrong, phrased for the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (a name, a size, a context token). Fix it;
    /// retrying as is will fail again. Nothing was written.
    #[error("{0}")]
    InvalidInput(String),

    /// A validator plugin refused the write. Nothing was written.
    #[error("rejected by validator {plugin}: {reason}")]
    Rejected {
        /// `name@version` of the validator.
        plugin: String,
        /// The plugin's own words.
        reason: String,
    },

    /// Too few replicas answered. The operation may or may not have been
    /// applied on the replicas that did; retrying with the same context is safe.
    #[error("{op} needed {needed} of {total} replicas, {got} answered{detail}")]
    Unavailable {
        /// `read` or `write`.
        op: &'static str,
        /// Replicas required by the requested consistency.
        needed: usize,
        /// Replicas that answered in time.
        got: usize,
        /// Replicas asked.
        total: usize,
        /// Extra explanation, starting with "; " when present.
        detail: String,
    },

    /// The node cannot serve this right now but will soon (a plugin still
    /// being fetched, a ring change in progress). Retry.
    #[error("{0}")]
    NotReady(String),

    /// The request's deadline passed before it finished.
    #[error("deadline exceeded after {0} ms")]
    Timeout(u64),

    /// The write would leave more siblings than the bucket allows and no
    /// resolver could merge them. Merge the siblings carried here and put the
    /// result with their context.
    #[error(
        "key has {siblings} siblings, over the bucket's limit of {limit}; merge them and write back with the returned context"
    )]
    SiblingLimit {
        /// The bucket's `max_siblings`.
        limit: usize,
        /// How many siblings the write would have left.
        siblings: usize,
        /// The stored object (its siblings and causal context).
        object: Box<Object>,
    },

    /// An admin object (a plugin, a node) does not exist. Never used for keys.
    #[error("{0}")]
    NotFound(String),

    /// The operation conflicts with the cluster's state (e.g. leaving a node
    /// that is not a member).
    #[error("{0}")]
    FailedPrecondition(String),

    /// Merging replicas' copies of a key would leave it holding more than
    /// a node stores for one key ([`crate::storage::MAX_MERGED_KEY_BYTES`]).
    /// The copy stays as it was; a write with a context or the bucket's
    /// resolver shrinks the key.
    #[error("{0}")]
    TooLarge(String),

    /// Stored bytes failed to decode. The data directory may be damaged or
    /// written by an incompatible version.
    #[error("corrupt data: {0}")]
    Corruption(String),

    /// A bug or an environment failure (disk full, I/O error).
    #[error("internal error: {0}")]
    Internal(String),

    /// The error a peer returned while coordinating a forwarded request;
    /// passed on to the client unchanged.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
}

impl Error {
    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
