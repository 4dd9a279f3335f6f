//! The gRPC services: `Kv` for data, `Admin` for operators, `Internal`
//! between nodes, plus health and reflection. Each handler is a thin adapter: check the input, call the
//! coordinator (or the bucket table), convert the answer. Checks happen
//! here, before anything is written, so bad input changes nothing.

mod admin;
pub(crate) mod convert;
mod internal;
mod kv;
mod status;

pub use admin::{AdminService, Workers};
pub use convert::sibling_to_proto;
pub use internal::InternalService;
pub use kv::KvService;
pub use status::{admin_status, to_status};

use crate::buckets::{BucketProps, MAX_KEY_BYTES, validate_bucket_name};
use crate::{Error, Result};

/// Checks a key: 1 to 1024 bytes.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!("key is {} bytes long; the limit is {MAX_KEY_BYTES}", key.len())));
    }
    Ok(())
}

/// Checks bucket name and key of any request.
pub fn check_object(bucket: &str, key: &[u8]) -> Result<()> {
    validate_bucket_name(bucket)?;
    check_key(key)
}

/// Checks a write's size against its bucket's limit.
pub fn check_size(props: &BucketProps, key: &[u8], value: &[u8]) -> Result<()> {
    let size = key.len() + value.len();
    if size > props.max_object_bytes as usize {
        return Err(Error::invalid(format!(
            "key + value is {size} bytes; the bucket's limit (max_object_bytes) is {}",
            props.max_object_bytes
        )));
    }
    Ok(())
}
