//! The opaque causal context token clients carry between a read and a write.
//!
//! Layout (version 2):
//!
//! ```text
//! [0x02] [key id: u32 LE] [fingerprint: u64 LE] [postcard: Vec<(actor, counter)>] [tag: 16 bytes]
//! ```
//!
//! A context is a claim the cluster made: "this client has seen these
//! dots". A write with a context drops every sibling the context covers, so
//! a forged one could erase values the client never saw, on every replica.
//! The tag is an HMAC-SHA256 (truncated to 128 bits) under the cluster key
//! named by the id, over the bucket, the key and every byte before it (see
//! [`crate::security`]); a token that fails it was not issued by this
//! cluster, or was altered, and is refused before anything is decoded.
//!
//! The fingerprint is a hash of the bucket and key the context was issued
//! for. The tag already binds the token to its key; the fingerprint is
//! there to name the mistake when a token is pasted onto another key. An
//! empty token means "no context".

use super::VersionVector;
use crate::security::{KeySet, Purpose, TAG_BYTES};

/// Format version of the token; the first byte of every token.
const TOKEN_V2: u8 = 2;

/// Bytes before the entries: version, key id, fingerprint.
const HEADER: usize = 1 + 4 + 8;

/// The most actors a context token may name. An object's vector holds one
/// entry per replica incarnation that ever coordinated a write of the key:
/// a handful, a few dozen after years of node replacements. A token naming
/// more was not issued by Concord; refusing it before decoding bounds the
/// work and memory a request can cost.
pub const MAX_CONTEXT_ACTORS: usize = 1024;

/// Why a context token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// The token was cut short or is not a Concord context at all.
    #[error("context token is malformed ({0}); pass the context exactly as a read returned it")]
    Malformed(&'static str),
    /// The token was written by a newer or unknown format.
    #[error("context token has unsupported format version {0}")]
    UnsupportedVersion(u8),
    /// The token names more actors than [`MAX_CONTEXT_ACTORS`].
    #[error("context token names {0} actors, more than the {MAX_CONTEXT_ACTORS} Concord issues at most")]
    TooManyActors(u64),
    /// The token was issued for another bucket or key.
    #[error("context token belongs to a different bucket or key")]
    WrongKey,
    /// The token fails its tag: it was not issued by this cluster, or it
    /// was altered.
    #[error(
        "context token was not issued by this cluster or was altered; pass the context exactly as a read returned it"
    )]
    BadSignature,
    /// The token names a key this node does not hold or no longer accepts.
    #[error(
        "context token was signed with cluster key {0}, which this node does not hold or no longer accepts (keys \
         expire after a secret rotation's grace period); read the key again for a fresh context"
    )]
    UnknownKey(u32),
    /// This node holds no cluster key yet (it has not joined).
    #[error("this node has not received the cluster secret yet, so it cannot issue or check contexts")]
    NoKey,
}

/// A stable 64-bit hash of a bucket and key, as stored in context tokens.
pub fn key_fingerprint(bucket: &str, key: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(0x636f_6e63_6f72_6400);
    h.update(bucket.as_bytes());
    h.update(&[0]);
    h.update(key);
    h.digest()
}

/// Encodes `vv` as a context token for `bucket`/`key`, signed with the
/// set's signing key.
pub fn encode_context(keys: &KeySet, vv: &VersionVector, bucket: &str, key: &[u8]) -> Result<Vec<u8>, ContextError> {
    let signing = keys.signing().ok_or(ContextError::NoKey)?;
    let mut out = Vec::with_capacity(HEADER + vv.entries().len() * 12 + TAG_BYTES);
    out.push(TOKEN_V2);
    out.extend_from_slice(&signing.id().to_le_bytes());
    out.extend_from_slice(&key_fingerprint(bucket, key).to_le_bytes());
    postcard::to_io(vv.entries(), &mut out).expect("writing to a Vec cannot fail");
    let tag = signing.tag(Purpose::Context, &[bucket.as_bytes(), key, &out]);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decodes a context token for `bucket`/`key`, checking its tag against
/// the keys accepted at `now_ms`. An empty token is the empty context.
pub fn decode_context(
    keys: &KeySet,
    now_ms: u64,
    token: &[u8],
    bucket: &str,
    key: &[u8],
) -> Result<VersionVector, ContextError> {
    let Some(&version) = token.first() else {
        return Ok(VersionVector::new());
    };
    if version != TOKEN_V2 {
        return Err(ContextError::UnsupportedVersion(version));
    }
    if token.len() < HEADER + 1 + TAG_BYTES {
        return Err(ContextError::Malformed("too short"));
    }
    let (signed, tag) = token.split_at(token.len() - TAG_BYTES);
    let key_id = u32::from_le_bytes(signed[1..5].try_into().expect("4 bytes"));
    let fp = u64::from_le_bytes(signed[5..HEADER].try_into().expect("8 bytes"));
    if fp != key_fingerprint(bucket, key) {
        return Err(ContextError::WrongKey);
    }
    if keys.is_empty() {
        return Err(ContextError::NoKey);
    }
    let signer = keys.accepting(key_id, now_ms).ok_or(ContextError::UnknownKey(key_id))?;
    if !signer.verify(Purpose::Context, &[bucket.as_bytes(), key, signed], tag) {
        return Err(ContextError::BadSignature);
    }
    let body = &signed[HEADER..];
    // The entry count leads the body (a varint); check it before decoding.
    let (count, _): (u64, &[u8]) =
        postcard::take_from_bytes(body).map_err(|_| ContextError::Malformed("bad entries"))?;
    if count > MAX_CONTEXT_ACTORS as u64 {
        return Err(ContextError::TooManyActors(count));
    }
    let (entries, tail): (Vec<(u64, u64)>, &[u8]) =
        postcard::take_from_bytes(body).map_err(|_| ContextError::Malformed("bad entries"))?;
    if !tail.is_empty() {
        return Err(ContextError::Malformed("trailing bytes"));
    }
    // A well-formed vector lists each actor once, in order, with counters > 0;
    // anything else was not produced by Concord.
    if entries.windows(2).any(|w| w[0].0 >= w[1].0) || entries.iter().any(|&(_, c)| c == 0) {
        return Err(ContextError::Malformed("entries out of order"));
    }
    Ok(VersionVector::from_entries(entries))
}
