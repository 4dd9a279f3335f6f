//! Never returns: the host must cut it off at its deadline.
use concord_guest::{Resolution, Resolver, Sibling};
pub struct Spin;
impl Resolver for Spin {
    fn resolve(_: &str, _: &[u8], siblings: Vec<Sibling>) -> Resolution {
        let mut n = siblings.len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
concord_guest::export_resolver!(Spin);
