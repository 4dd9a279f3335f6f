//! Returns a value whose list points outside its memory: the host must
//! refuse to read it rather than trust the guest.
use concord_guest::{Resolution, Resolver, Sibling};
pub struct Liar;
impl Resolver for Liar {
    fn resolve(_: &str, _: &[u8], _: Vec<Sibling>) -> Resolution {
        // SAFETY: not safe at all, on purpose. The forged vector is handed to
        // the bindings, which pass its pointer and length to the host as the
        // result; the host must detect that they are out of bounds.
        let forged = unsafe { Vec::from_raw_parts(0xfff0_0000usize as *mut u8, 4096, 4096) };
        Resolution::Resolved(forged)
    }
}
concord_guest::export_resolver!(Liar);
