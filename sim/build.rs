//! Exports `getrandom` from the simulation's executables, so libraries that
//! look it up with `dlsym` find the seeded one (src/entropy.rs).

fn main() {
    println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=getrandom");
}
