//! Returns a 1 MiB value, far above any bucket limit.
use concord_guest::{Resolution, Resolver, Sibling};
pub struct Huge;
impl Resolver for Huge {
    fn resolve(_: &str, _: &[u8], _: Vec<Sibling>) -> Resolution {
        Resolution::Resolved(vec![0x78u8; 1 << 20])
    }
}
concord_guest::export_resolver!(Huge);
