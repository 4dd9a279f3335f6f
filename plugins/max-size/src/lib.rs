//! A validator that caps value size below the bucket's own limit.
//!
//! The cap is fixed at build time from the `CONCORD_MAX_SIZE_BYTES`
//! environment variable (default 1024):
//!
//! ```sh
//! CONCORD_MAX_SIZE_BYTES=4096 cargo build --release --target wasm32-unknown-unknown -p max-size
//! ```

use concord_guest::{Validator, Verdict};

/// The cap, in bytes.
pub fn limit() -> usize {
    option_env!("CONCORD_MAX_SIZE_BYTES").and_then(|v| v.parse().ok()).unwrap_or(1024)
}

/// The validator.
pub struct MaxSize;

impl Validator for MaxSize {
    fn validate(_bucket: &str, _key: &[u8], value: &[u8]) -> Verdict {
        let limit = limit();
        if value.len() > limit {
            Verdict::Reject(format!("value is {} bytes; at most {limit} are allowed", value.len()))
        } else {
            Verdict::Accept
        }
    }
}

concord_guest::export_validator!(MaxSize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_at_the_limit() {
        assert_eq!(MaxSize::validate("b", b"k", &vec![0; limit()]), Verdict::Accept);
        match MaxSize::validate("b", b"k", &vec![0; limit() + 1]) {
            Verdict::Reject(r) => assert!(r.contains(&format!("at most {} are allowed", limit())), "{r}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
}
