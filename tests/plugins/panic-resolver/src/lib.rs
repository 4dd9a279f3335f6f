//! Panics (a trap on the host side).
use concord_guest::{Resolution, Resolver, Sibling};
pub struct Boom;
impl Resolver for Boom {
    fn resolve(bucket: &str, _: &[u8], _: Vec<Sibling>) -> Resolution {
        panic!("deliberate panic resolving a key in {bucket}")
    }
}
concord_guest::export_resolver!(Boom);
