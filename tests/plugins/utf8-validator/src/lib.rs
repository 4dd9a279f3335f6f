//! Rejects with a reason that is not valid UTF-8: a malformed result the
//! host must refuse to lift.
use concord_guest::{Validator, Verdict};
pub struct Garbled;
impl Validator for Garbled {
    fn validate(_: &str, _: &[u8], _: &[u8]) -> Verdict {
        // SAFETY: not safe, on purpose: the host must check the bytes.
        Verdict::Reject(unsafe { String::from_utf8_unchecked(vec![0xc3, 0x28, 0xff]) })
    }
}
concord_guest::export_validator!(Garbled);
