//! Imports a WASI function. Concord plugins may import nothing but the
//! host log, so deploying this must fail with a clear error.
use concord_guest::{Resolution, Resolver, Sibling};
#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    fn random_get(buf: *mut u8, len: usize) -> i32;
}
pub struct Dice;
impl Resolver for Dice {
    fn resolve(_: &str, _: &[u8], siblings: Vec<Sibling>) -> Resolution {
        let mut b = [0u8; 1];
        // SAFETY: a valid one-byte buffer.
        unsafe { random_get(b.as_mut_ptr(), 1) };
        let pick = b[0] as usize % siblings.len().max(1);
        siblings.into_iter().nth(pick).map_or(Resolution::KeepSiblings, |s| Resolution::Resolved(s.value))
    }
}
concord_guest::export_resolver!(Dice);
