//! Maps node errors to gRPC statuses (DESIGN.md §8).

use prost::Message;
use tonic::{Code, Status};

use super::convert::sibling_to_proto;
use crate::Error;
use crate::causal::encode_context;
use crate::security::KeySet;
use concord_proto::v1 as pb;

/// Largest error details sent (in the `grpc-status-details-bin` trailer).
const MAX_DETAILS: usize = 6 * 1024;

/// The gRPC status for `e`. `bucket` and `key` name the object a
/// [`Error::SiblingLimit`] refers to, so its context token can be minted
/// with `keys`.
pub fn to_status(e: Error, keys: &KeySet, bucket: &str, key: &[u8]) -> Status {
    match e {
        Error::InvalidInput(m) => Status::invalid_argument(m),
        e @ Error::Rejected { .. } => Status::invalid_argument(e.to_string()),
        e @ Error::Unavailable { .. } => Status::unavailable(e.to_string()),
        Error::NotReady(m) => Status::unavailable(m),
        e @ Error::Timeout(_) => Status::deadline_exceeded(e.to_string()),
        Error::SiblingLimit { limit, siblings, object } => {
            let msg = Error::SiblingLimit { limit, siblings, object: object.clone() }.to_string();
            let mut details = pb::SiblingLimitExceeded {
                limit: limit as u32,
                siblings: object.siblings().iter().map(sibling_to_proto).collect(),
                context: encode_context(keys, object.context(), bucket, key).unwrap_or_default().into(),
            };
            // Details travel in a trailer, and peers cap trailers at a few
            // KiB. Too big, and the siblings (and the context that covers
            // them, which must not be used without them) are left out: the
            // client reads the key to get both.
            if details.encoded_len() > MAX_DETAILS || details.context.is_empty() {
                details.siblings.clear();
                details.context = Default::default();
                let msg = format!("{msg}; the siblings are too large to include, so read the key to get them");
                return Status::with_details(Code::FailedPrecondition, msg, details.encode_to_vec().into());
            }
            Status::with_details(Code::FailedPrecondition, msg, details.encode_to_vec().into())
        }
        Error::NotFound(m) => Status::not_found(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::TooLarge(m) => Status::resource_exhausted(m),
        e @ Error::Corruption(_) => Status::data_loss(e.to_string()),
        e @ Error::Internal(_) => Status::internal(e.to_string()),
        Error::Remote(status) => status,
    }
}

/// The status for an error that does not concern one object.
pub fn admin_status(e: Error) -> Status {
    to_status(e, &KeySet::default(), "", b"")
}
