//! A lawful resolver with two habits that deploy checks must report rather
//! than hide: every answer is 20,000 bytes (over the default bucket's
//! 10 KiB limit, under the 1 MiB most a bucket may allow), and every call
//! logs the same two warnings.
use concord_guest::{Level, Resolution, Resolver, Sibling, log};
pub struct Wide;
impl Resolver for Wide {
    fn resolve(_: &str, _: &[u8], siblings: Vec<Sibling>) -> Resolution {
        log(Level::Warn, "wide: every answer is 20000 bytes");
        log(Level::Warn, &format!("wide: merging {} siblings", siblings.len().min(3)));
        Resolution::Resolved(vec![b'w'; 20_000])
    }
}
concord_guest::export_resolver!(Wide);
