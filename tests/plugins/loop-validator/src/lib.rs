//! Never returns.
use concord_guest::{Validator, Verdict};
pub struct Spin;
impl Validator for Spin {
    fn validate(_: &str, key: &[u8], _: &[u8]) -> Verdict {
        let mut n = key.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
concord_guest::export_validator!(Spin);
