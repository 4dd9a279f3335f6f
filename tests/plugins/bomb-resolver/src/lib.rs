//! Allocates until it runs out of memory: the host must cap it.
use concord_guest::{Resolution, Resolver, Sibling};
pub struct Bomb;
impl Resolver for Bomb {
    fn resolve(_: &str, _: &[u8], _: Vec<Sibling>) -> Resolution {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}
concord_guest::export_resolver!(Bomb);
