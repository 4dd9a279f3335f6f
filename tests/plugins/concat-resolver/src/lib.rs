//! Concatenates values in the order given: deterministic, but it depends
//! on sibling order, so `concord plugin verify` must catch it.
use concord_guest::{Resolution, Resolver, Sibling};
pub struct Concat;
impl Resolver for Concat {
    fn resolve(_: &str, _: &[u8], siblings: Vec<Sibling>) -> Resolution {
        Resolution::Resolved(siblings.into_iter().flat_map(|s| s.value).collect())
    }
}
concord_guest::export_resolver!(Concat);
