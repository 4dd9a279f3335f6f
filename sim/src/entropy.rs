//! Seeded randomness for the whole process.
//!
//! The simulation draws its own choices from the seed, but the libraries it
//! runs draw from the operating system: std's `HashMap` keys (so iteration
//! orders), tokio's runtime seeds (so which branch of a `select!` polls
//! first), chitchat's gossip-partner choice (`rand::rng()`). All of them,
//! on Linux, reach the kernel through libc's `getrandom`, which they look up
//! with `dlsym`. This module defines `getrandom` in the simulation's own
//! executable (the build script exports it), so the lookup finds it; once
//! [`seed_process`] has run, every byte it returns comes from the seed.
//!
//! Two runs of a seed then match byte for byte only if each is the first
//! thing its process does: std keeps hash keys per thread and tokio counts
//! runtimes per process. So every seed runs in a process of its own
//! ([`crate::child`]).

use std::ffi::{c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static STATE: AtomicU64 = AtomicU64::new(0);
static SEEDED: AtomicBool = AtomicBool::new(false);

/// From now on, every random byte any library in this process asks the
/// kernel for comes from `seed`. Fails if the executable does not export
/// [`getrandom`], so libraries would still reach the kernel's.
pub fn seed_process(seed: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        interposed(),
        "this executable does not export `getrandom`, so libraries would draw from the kernel and a seed \
         would not replay exactly (sim/build.rs links with --export-dynamic-symbol=getrandom)"
    );
    STATE.store(seed ^ 0x5851_f42d_4c95_7f2d, Ordering::SeqCst);
    SEEDED.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether the dynamic linker resolves `getrandom` to this module's.
pub fn interposed() -> bool {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads.
    let found = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"getrandom".as_ptr()) };
    std::ptr::eq(found as *const (), getrandom as *const ())
}

/// splitmix64: one step of a well-mixed 64-bit sequence.
fn next() -> u64 {
    let mut z = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// libc's `getrandom(2)` wrapper, as std, tokio (through std) and the
/// `getrandom` crate look it up: seeded bytes after [`seed_process`], the
/// kernel's before.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes, as for libc's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn getrandom(buf: *mut c_void, len: usize, flags: c_uint) -> isize {
    if !SEEDED.load(Ordering::SeqCst) {
        // SAFETY: the caller's contract is the system call's.
        return unsafe { libc::syscall(libc::SYS_getrandom, buf, len, flags) } as isize;
    }
    if len == 0 {
        return 0;
    }
    // SAFETY: the caller promises `buf` holds `len` writable bytes.
    let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    for chunk in out.chunks_mut(8) {
        let bytes = next().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    len as isize
}
