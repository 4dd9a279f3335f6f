//! Conversions between proto messages and the node's own types.

use std::time::Duration;

use concord_proto::v1 as pb;

use crate::causal::Sibling;
use crate::coordinator::wire::consistency_from_proto;
use crate::coordinator::{Consistency, QuorumSpec};

/// A stored sibling as the API shows it.
pub fn sibling_to_proto(s: &Sibling) -> pb::Sibling {
    pb::Sibling {
        value: s.content.value().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
        deleted: s.content.is_tombstone(),
        written_at_ms: s.written_at_ms,
        writer: s.writer.clone(),
    }
}

fn consistency(raw: i32) -> Result<Consistency, String> {
    consistency_from_proto(raw).map_err(|e| e.to_string())
}

/// Longest deadline a request may ask for.
pub const MAX_TIMEOUT_MS: u32 = 60_000;

fn timeout(ms: u32) -> Result<Option<Duration>, String> {
    if ms > MAX_TIMEOUT_MS {
        return Err(format!("timeout_ms is {ms}; at most {MAX_TIMEOUT_MS} (one minute)"));
    }
    Ok((ms > 0).then(|| Duration::from_millis(ms.into())))
}

/// Read options to a quorum spec and deadline.
pub fn read_options(o: Option<&pb::ReadOptions>) -> Result<(QuorumSpec, Option<Duration>), String> {
    let Some(o) = o else { return Ok((QuorumSpec::default(), None)) };
    Ok((QuorumSpec { consistency: consistency(o.consistency)?, count: o.r, primaries: o.pr }, timeout(o.timeout_ms)?))
}

/// Write options to a quorum spec and deadline.
pub fn write_options(o: Option<&pb::WriteOptions>) -> Result<(QuorumSpec, Option<Duration>), String> {
    let Some(o) = o else { return Ok((QuorumSpec::default(), None)) };
    Ok((QuorumSpec { consistency: consistency(o.consistency)?, count: o.w, primaries: o.pw }, timeout(o.timeout_ms)?))
}
