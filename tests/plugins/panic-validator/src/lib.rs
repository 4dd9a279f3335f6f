//! Panics on every write.
use concord_guest::{Validator, Verdict};
pub struct Boom;
impl Validator for Boom {
    fn validate(_: &str, key: &[u8], _: &[u8]) -> Verdict {
        panic!("deliberate panic validating {} bytes of key", key.len())
    }
}
concord_guest::export_validator!(Boom);
