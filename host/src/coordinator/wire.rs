//! Coordinator messages on the wire: forwarded writes and their replies,
//! and the consistency levels both the API and forwarding carry. Kept here
//! so the request paths themselves stay free of generated types.

use std::time::Duration;

use concord_proto::v1 as pb;

use super::{Consistency, QuorumSpec, WriteOutcome, WriteRequest};
use crate::causal::{Content, decode_context, encode_context};
use crate::security::{KeySet, now_ms};
use crate::storage::codec::{decode_object, encode_object};
use crate::{Error, Result};

/// A consistency level as the API sends it; unknown values are an error.
pub fn consistency_from_proto(raw: i32) -> Result<Consistency> {
    match pb::Consistency::try_from(raw) {
        Ok(pb::Consistency::Default) => Ok(Consistency::Default),
        Ok(pb::Consistency::One) => Ok(Consistency::One),
        Ok(pb::Consistency::Quorum) => Ok(Consistency::Quorum),
        Ok(pb::Consistency::All) => Ok(Consistency::All),
        Ok(pb::Consistency::LocalQuorum) => Ok(Consistency::LocalQuorum),
        Err(_) => Err(Error::invalid(format!("unknown consistency level {raw}"))),
    }
}

/// A consistency level for the wire.
pub fn consistency_to_proto(c: Consistency) -> pb::Consistency {
    match c {
        Consistency::Default => pb::Consistency::Default,
        Consistency::One => pb::Consistency::One,
        Consistency::Quorum => pb::Consistency::Quorum,
        Consistency::All => pb::Consistency::All,
        Consistency::LocalQuorum => pb::Consistency::LocalQuorum,
    }
}

/// A write to hand to a replica, which gets `timeout` to coordinate it and
/// counts `LOCAL_QUORUM` in `zone`, the zone of the node the client called.
pub fn forward_request(
    keys: &KeySet,
    req: &WriteRequest,
    zone: &str,
    timeout: Duration,
) -> Result<pb::ForwardWriteRequest> {
    let context = if req.context.is_empty() {
        Vec::new()
    } else {
        encode_context(keys, &req.context, &req.bucket, &req.key).map_err(|e| Error::NotReady(e.to_string()))?
    };
    Ok(pb::ForwardWriteRequest {
        key: Some(pb::ObjectKey { bucket: req.bucket.clone(), key: req.key.clone().into() }),
        value: req.content.value().map(|v| v.to_vec()).unwrap_or_default().into(),
        tombstone: req.content.is_tombstone(),
        context: context.into(),
        consistency: consistency_to_proto(req.quorum.consistency) as i32,
        count: req.quorum.count,
        primaries: req.quorum.primaries,
        timeout_ms: timeout.as_millis().clamp(1, u32::MAX as u128) as u32,
        zone: zone.to_owned(),
        sloppy: req.sloppy,
    })
}

/// A forwarded write, decoded.
pub fn write_from_forward(keys: &KeySet, req: pb::ForwardWriteRequest) -> Result<WriteRequest> {
    let key = req.key.ok_or_else(|| Error::invalid("forwarded write without a key"))?;
    let context = decode_context(keys, now_ms(), &req.context, &key.bucket, &key.key)
        .map_err(|e| Error::invalid(e.to_string()))?;
    Ok(WriteRequest {
        bucket: key.bucket,
        key: key.key.to_vec(),
        content: if req.tombstone { Content::Tombstone } else { Content::Value(req.value.to_vec()) },
        context,
        quorum: QuorumSpec {
            consistency: consistency_from_proto(req.consistency)?,
            count: req.count,
            primaries: req.primaries,
        },
        // A peer's deadline is bounded like a client's.
        timeout: (req.timeout_ms > 0)
            .then(|| Duration::from_millis(req.timeout_ms.min(crate::api::convert::MAX_TIMEOUT_MS).into())),
        // Empty from a sender that predates the field: count this node's zone.
        zone: (!req.zone.is_empty()).then_some(req.zone),
        sloppy: req.sloppy,
    })
}

/// A write's outcome, encoded for the node that forwarded it.
pub fn forward_reply(out: WriteOutcome) -> pb::ForwardWriteResponse {
    pb::ForwardWriteResponse {
        object: encode_object(&out.object).into(),
        sloppy: out.sloppy(),
        acked_by: out.acked_by,
        resolved_by: out.resolved_by.map(|b| b.to_string()).unwrap_or_default(),
        fallbacks: fallbacks_to_proto(out.fallbacks),
    }
}

/// The outcome a replica reported for a forwarded write.
pub fn outcome_from_reply(r: pb::ForwardWriteResponse) -> Result<WriteOutcome> {
    Ok(WriteOutcome {
        object: decode_object(&r.object)
            .map_err(|e| Error::Internal(format!("a replica applied the write but its answer is unreadable: {e}")))?,
        acked_by: r.acked_by,
        fallbacks: r.fallbacks.into_iter().map(|f| (f.node, f.replica)).collect(),
        resolved_by: (!r.resolved_by.is_empty()).then(|| r.resolved_by.into()),
    })
}

/// Fallback acks as the API and forwarding carry them.
pub fn fallbacks_to_proto(fallbacks: Vec<(String, String)>) -> Vec<pb::FallbackAck> {
    fallbacks.into_iter().map(|(node, replica)| pb::FallbackAck { node, replica }).collect()
}
