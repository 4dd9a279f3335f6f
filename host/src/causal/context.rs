//! The opaque causal context token clients carry between a read and a write.
//!
//! Layout (version 1):
//!
//! ```text
//! [0x01] [fingerprint: u64 little-endian] [postcard: Vec<(actor, counter)>]
//! ```
//!
//! The fingerprint is a hash of the bucket and key the context was issued for.
//! A context is only meaningful for its own key (dots count writes per key), so
//! a token pasted onto another key would silently drop that key's siblings;
//! the fingerprint turns that mistake into a clear error instead. An empty
//! token means "no context".

use super::VersionVector;

/// Format version of the token; the first byte of every token.
const TOKEN_V1: u8 = 1;

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
}

/// A stable 64-bit hash of a bucket and key, as stored in context tokens.
pub fn key_fingerprint(bucket: &str, key: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::with_seed(0x636f_6e63_6f72_6400);
    h.update(bucket.as_bytes());
    h.update(&[0]);
    h.update(key);
    h.digest()
}

/// Encodes `vv` as a context token for `bucket`/`key`.
pub fn encode_context(vv: &VersionVector, bucket: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + vv.entries().len() * 12);
    out.push(TOKEN_V1);
    out.extend_from_slice(&key_fingerprint(bucket, key).to_le_bytes());
    postcard::to_io(vv.entries(), &mut out).expect("writing to a Vec cannot fail");
    out
}

/// Decodes a context token for `bucket`/`key`. An empty token is the empty
/// context.
pub fn decode_context(token: &[u8], bucket: &str, key: &[u8]) -> Result<VersionVector, ContextError> {
    let Some((&version, rest)) = token.split_first() else {
        return Ok(VersionVector::new());
    };
    if version != TOKEN_V1 {
        return Err(ContextError::UnsupportedVersion(version));
    }
    let (fp, body) = rest.split_at_checked(8).ok_or(ContextError::Malformed("too short"))?;
    let fp = u64::from_le_bytes(fp.try_into().expect("split at 8"));
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
    if fp != key_fingerprint(bucket, key) {
        return Err(ContextError::WrongKey);
    }
    // A well-formed vector lists each actor once, in order, with counters > 0;
    // anything else was not produced by Concord.
    if entries.windows(2).any(|w| w[0].0 >= w[1].0) || entries.iter().any(|&(_, c)| c == 0) {
        return Err(ContextError::Malformed("entries out of order"));
    }
    Ok(VersionVector::from_entries(entries))
}
