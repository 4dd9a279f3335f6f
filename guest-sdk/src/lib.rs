//! Write Concord plugins in plain Rust.
//!
//! A Concord plugin is a WebAssembly component that either **resolves**
//! concurrent siblings of a key into one outcome, or **validates** writes
//! before they are stored. With this crate a plugin is a type that
//! implements [`Resolver`] or [`Validator`], plus one export macro. The
//! generated WebAssembly bindings stay out of sight, and the types are plain
//! Rust, so the plugin's logic is unit-tested with an ordinary `cargo test`.
//!
//! ```
//! use concord_guest::{Resolution, Resolver, Sibling};
//!
//! /// Last writer wins: the sibling with the latest timestamp, ties broken by
//! /// dot so that every node picks the same one.
//! pub struct Lww;
//!
//! impl Resolver for Lww {
//!     fn resolve(_bucket: &str, _key: &[u8], siblings: Vec<Sibling>) -> Resolution {
//!         match siblings.into_iter().max_by_key(|s| (s.written_at_ms, s.dot)) {
//!             Some(s) if s.tombstone => Resolution::Delete,
//!             Some(s) => Resolution::Resolved(s.value),
//!             None => Resolution::KeepSiblings,
//!         }
//!     }
//! }
//!
//! concord_guest::export_resolver!(Lww);
//!
//! # fn main() {
//! // The logic is plain Rust, testable natively:
//! use concord_guest::Dot;
//! let s = |v: &[u8], at, counter| Sibling {
//!     value: v.to_vec(), tombstone: false, dot: Dot { actor: 1, counter }, written_at_ms: at,
//! };
//! assert_eq!(Lww::resolve("b", b"k", vec![s(b"old", 1, 1), s(b"new", 2, 2)]),
//!            Resolution::Resolved(b"new".to_vec()));
//! # }
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown`:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! # Not on crates.io: by git, by path, or as the copy `concord plugin new` writes.
//! concord-guest = { git = "https://github.com/concord-kv/concord" }
//! ```
//!
//! ```sh
//! rustup target add wasm32-unknown-unknown
//! cargo build --release --target wasm32-unknown-unknown
//! concord plugin verify target/wasm32-unknown-unknown/release/lww.wasm
//! concord plugin deploy target/wasm32-unknown-unknown/release/lww.wasm --name lww --version 1.0.0
//! ```
//!
//! The output is a core module carrying the interface description
//! (`concord:plugin@0.1.0`). Concord turns it into a component when it is
//! deployed, and it imports nothing but the host's `log`: no WASI.
//!
//! # Rules a plugin must follow
//!
//! Every node resolves independently, so a resolver must be a pure function
//! of its siblings. `concord plugin verify` checks these rules on generated
//! inputs:
//!
//! * **deterministic**: the same siblings always give the same answer;
//! * **order-insensitive**: siblings arrive in no particular order;
//! * **idempotent**: resolving an already-resolved value with itself changes
//!   nothing;
//! * **associative**: resolving in stages (some siblings first, then the
//!   result with the rest) gives the same answer as resolving all at once.
//!
//! Plugins run under a memory cap and a deadline. A plugin that panics,
//! loops or runs out of memory fails that one call; for a resolver the
//! siblings stay as they are, and for a validator the write is refused (or
//! accepted, if the bucket says `validator_failure = accept`).

// Generated code names `concord_guest::...`, which must also resolve inside
// this crate.
extern crate self as concord_guest;

/// Names one write: the `counter`-th write accepted by replica `actor`.
/// Dots are unique and totally ordered, so they break ties deterministically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dot {
    /// The accepting replica's actor id.
    pub actor: u64,
    /// The write's number at that replica.
    pub counter: u64,
}

/// One concurrent version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sibling {
    /// The value (empty for a tombstone).
    pub value: Vec<u8>,
    /// True when this sibling records a delete.
    pub tombstone: bool,
    /// The write that created it.
    pub dot: Dot,
    /// Wall-clock milliseconds at the replica that accepted the write.
    pub written_at_ms: u64,
}

/// What a resolver decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// Replace every sibling with this value.
    Resolved(Vec<u8>),
    /// Replace every sibling with a tombstone.
    Delete,
    /// Leave the siblings for the client to merge.
    KeepSiblings,
}

/// What a validator decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Store the value as written.
    Accept,
    /// Refuse the write; the reason reaches the client.
    Reject(String),
    /// Store this value instead.
    Replace(Vec<u8>),
}

/// Severity of a [`log`] line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// A conflict resolver. Must be a pure function of its arguments; see the
/// crate docs for the rules.
pub trait Resolver {
    /// Merges two or more siblings of `key` in `bucket`, given in no
    /// particular order.
    fn resolve(bucket: &str, key: &[u8], siblings: Vec<Sibling>) -> Resolution;
}

/// A write validator.
pub trait Validator {
    /// Vets `value` about to be written to `key` in `bucket`.
    fn validate(bucket: &str, key: &[u8], value: &[u8]) -> Verdict;
}

/// Writes a line to the node's log (rate-limited by the host). In native
/// unit tests it prints to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use __private::resolver::concord::plugin::host::{self, Level as L};
        let level = match level {
            Level::Trace => L::Trace,
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        };
        host::log(level, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// What the export macros expand to. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    /// Bindings of the `resolver` world. They define the shared `types` and
    /// `host` interfaces, which the validator bindings reuse.
    pub mod resolver {
        wit_bindgen::generate!({
            path: "wit/since_v0.1.0",
            world: "concord:plugin/resolver@0.1.0",
            // The export macro carries the world's full type information, so
            // only the world a plugin actually exports lands in its binary.
            pub_export_macro: true,
            export_macro_name: "__export_resolver_world",
            // Plugin crates do not depend on wit-bindgen themselves.
            runtime_path: "concord_guest::__private::wit_bindgen::rt",
        });
    }

    /// Bindings of the `validator` world.
    pub mod validator {
        wit_bindgen::generate!({
            path: "wit/since_v0.1.0",
            world: "concord:plugin/validator@0.1.0",
            pub_export_macro: true,
            export_macro_name: "__export_validator_world",
            runtime_path: "concord_guest::__private::wit_bindgen::rt",
            with: {
                "concord:plugin/types@0.1.0": super::resolver::concord::plugin::types,
                "concord:plugin/host@0.1.0": super::resolver::concord::plugin::host,
            },
        });
    }

    use resolver::concord::plugin::types as wit;

    /// Sends a panic's message to the host log before the call traps;
    /// otherwise the node only sees "unreachable instruction executed".
    fn install_panic_hook() {
        #[cfg(target_arch = "wasm32")]
        {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                std::panic::set_hook(Box::new(|info| {
                    crate::log(crate::Level::Error, &format!("plugin panicked: {info}"));
                }));
            });
        }
    }

    /// Runs a [`crate::Resolver`] on bindings types.
    pub fn call_resolver<R: crate::Resolver>(
        bucket: String,
        key: Vec<u8>,
        siblings: Vec<wit::Sibling>,
    ) -> wit::Resolution {
        install_panic_hook();
        let siblings = siblings
            .into_iter()
            .map(|s| crate::Sibling {
                value: s.value,
                tombstone: s.tombstone,
                dot: crate::Dot { actor: s.dot.actor, counter: s.dot.counter },
                written_at_ms: s.written_at_ms,
            })
            .collect();
        match R::resolve(&bucket, &key, siblings) {
            crate::Resolution::Resolved(v) => wit::Resolution::Resolved(v),
            crate::Resolution::Delete => wit::Resolution::Delete,
            crate::Resolution::KeepSiblings => wit::Resolution::KeepSiblings,
        }
    }

    /// Runs a [`crate::Validator`] on bindings types.
    pub fn call_validator<V: crate::Validator>(bucket: String, key: Vec<u8>, value: Vec<u8>) -> wit::Verdict {
        install_panic_hook();
        match V::validate(&bucket, &key, &value) {
            crate::Verdict::Accept => wit::Verdict::Accept,
            crate::Verdict::Reject(r) => wit::Verdict::Reject(r),
            crate::Verdict::Replace(v) => wit::Verdict::Replace(v),
        }
    }
}

/// Exports a [`Resolver`] as this plugin's `resolve` function. Use it once,
/// in a `cdylib` crate.
#[macro_export]
macro_rules! export_resolver {
    ($ty:ty) => {
        const _: () = {
            struct __ConcordResolverExport;
            impl $crate::__private::resolver::Guest for __ConcordResolverExport {
                fn resolve(
                    bucket: ::std::string::String,
                    key: ::std::vec::Vec<u8>,
                    siblings: ::std::vec::Vec<$crate::__private::resolver::Sibling>,
                ) -> $crate::__private::resolver::Resolution {
                    $crate::__private::call_resolver::<$ty>(bucket, key, siblings)
                }
            }
            $crate::__private::resolver::__export_resolver_world!(
                __ConcordResolverExport with_types_in $crate::__private::resolver
            );
        };
    };
}

/// Exports a [`Validator`] as this plugin's `validate` function. Use it
/// once, in a `cdylib` crate.
#[macro_export]
macro_rules! export_validator {
    ($ty:ty) => {
        const _: () = {
            struct __ConcordValidatorExport;
            impl $crate::__private::validator::Guest for __ConcordValidatorExport {
                fn validate(
                    bucket: ::std::string::String,
                    key: ::std::vec::Vec<u8>,
                    value: ::std::vec::Vec<u8>,
                ) -> $crate::__private::validator::Verdict {
                    $crate::__private::call_validator::<$ty>(bucket, key, value)
                }
            }
            $crate::__private::validator::__export_validator_world!(
                __ConcordValidatorExport with_types_in $crate::__private::validator
            );
        };
    };
}
