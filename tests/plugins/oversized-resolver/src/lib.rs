//! Answers 1 MiB + 1 byte, more than any bucket allows, whenever a sibling
//! holds the letter `o`: never for the deploy checks' generated values
//! (letters `a` to `e`), always for words like "one" and "two". So it binds
//! like a resolver that passed its checks, and fails on real data.
use concord_guest::{Resolution, Resolver, Sibling};
pub struct Huge;
impl Resolver for Huge {
    fn resolve(_: &str, _: &[u8], siblings: Vec<Sibling>) -> Resolution {
        if siblings.iter().any(|s| s.value.contains(&b'o')) {
            Resolution::Resolved(vec![0x78u8; (1 << 20) + 1])
        } else {
            Resolution::KeepSiblings
        }
    }
}
concord_guest::export_resolver!(Huge);
