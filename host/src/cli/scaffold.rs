//! `concord plugin new NAME --kind resolver|validator`: a plugin crate that
//! builds outside this repository, offline.
//!
//! The guest SDK is on no registry, so the crate gets a copy of it (its
//! sources and the WIT it binds to, as this `concord` binary was built
//! with) in `concord-guest/`, and a `Cargo.lock` that pins the SDK's one
//! dependency tree, so a machine that has built Concord (or any plugin)
//! before builds the new crate without the network.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// What `new` writes for the SDK, from the sources this binary was built
/// with.
const SDK_LIB: &str = include_str!("../../../guest-sdk/src/lib.rs");
const SDK_WIT: &str = include_str!("../../../guest-sdk/wit/since_v0.1.0/plugin.wit");
/// Pins wit-bindgen and its dependencies (and, unused, those of the example
/// plugins; cargo drops what the new crate does not need).
const LOCK: &str = include_str!("../../../plugins/Cargo.lock");

/// Resolver or validator.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Kind {
    /// Merges concurrent siblings.
    Resolver,
    /// Vets writes.
    Validator,
}

/// Writes the crate into `dir/NAME`; returns its path.
pub fn new_plugin(dir: &Path, name: &str, kind: Kind) -> anyhow::Result<PathBuf> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        bail!(
            "{name:?} is not a usable plugin name: use 1 to 64 lowercase letters, digits, '-' or '_', starting with a \
             letter"
        );
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists; choose another name or remove it", root.display());
    }
    let lib = name.replace('-', "_");
    let (source, samples, fixture) = match kind {
        Kind::Resolver => (resolver_source(), RESOLVER_SAMPLES, Some(RESOLVER_FIXTURE)),
        Kind::Validator => (validator_source(), VALIDATOR_SAMPLES, None),
    };
    let mut files: Vec<(PathBuf, String)> = vec![
        ("Cargo.toml".into(), manifest(name)),
        ("Cargo.lock".into(), LOCK.to_owned()),
        (".gitignore".into(), "/target\n".to_owned()),
        ("src/lib.rs".into(), source),
        ("samples.json".into(), samples.to_owned()),
        ("README.md".into(), readme(name, &lib, kind)),
        ("concord-guest/Cargo.toml".into(), SDK_MANIFEST.to_owned()),
        ("concord-guest/src/lib.rs".into(), SDK_LIB.to_owned()),
        ("concord-guest/wit/since_v0.1.0/plugin.wit".into(), SDK_WIT.to_owned()),
    ];
    if let Some(f) = fixture {
        files.push(("fixture.json".into(), f.to_owned()));
    }
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("files sit in a folder"))
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(root)
}

fn manifest(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# cdylib: the .wasm a node runs; rlib: so `cargo test` runs natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
# Concord's guest SDK is on no registry: this is a copy of it. To follow
# Concord's own, use a git or path dependency instead, e.g.
#   concord-guest = {{ git = "https://github.com/concord-kv/concord" }}
#   concord-guest = {{ path = "../concord/guest-sdk" }}
concord-guest = {{ path = "concord-guest" }}

# A crate of its own, even when created inside another workspace.
[workspace]

[profile.release]
opt-level = "s"
codegen-units = 1
"#
    )
}

const SDK_MANIFEST: &str = r#"[package]
name = "concord-guest"
description = "Write Concord resolver and validator plugins (WebAssembly components) in plain Rust"
version = "0.1.0"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
# Pinned exactly: the export macros expand wit-bindgen's own macro names.
wit-bindgen = { version = "=0.47.0", default-features = false, features = ["macros", "realloc"] }
"#;

fn resolver_source() -> String {
    r#"//! A Concord resolver: merges concurrent siblings of a key into one value.
//!
//! This one keeps the largest value (bytewise) and deletes the key when
//! every sibling is a tombstone. Replace it with your own merge, and keep
//! it a pure, order-blind function of the siblings: `concord plugin verify`
//! checks that on generated sibling sets.

use concord_guest::{Resolution, Resolver, Sibling};

/// The resolver.
pub struct Merge;

impl Resolver for Merge {
    fn resolve(_bucket: &str, _key: &[u8], siblings: Vec<Sibling>) -> Resolution {
        match siblings.into_iter().filter(|s| !s.tombstone).map(|s| s.value).max() {
            Some(v) => Resolution::Resolved(v),
            None => Resolution::Delete,
        }
    }
}

concord_guest::export_resolver!(Merge);

#[cfg(test)]
mod tests {
    use concord_guest::Dot;

    use super::*;

    fn sibling(value: &str, actor: u64) -> Sibling {
        Sibling { value: value.into(), tombstone: false, dot: Dot { actor, counter: 1 }, written_at_ms: 1 }
    }

    #[test]
    fn the_largest_value_wins_in_any_order() {
        let (a, b) = (sibling("apple", 1), sibling("pear", 2));
        let want = Resolution::Resolved(b"pear".to_vec());
        assert_eq!(Merge::resolve("b", b"k", vec![a.clone(), b.clone()]), want);
        assert_eq!(Merge::resolve("b", b"k", vec![b, a]), want);
    }

    #[test]
    fn only_tombstones_delete() {
        let mut t = sibling("", 1);
        t.tombstone = true;
        assert_eq!(Merge::resolve("b", b"k", vec![t.clone(), t]), Resolution::Delete);
    }
}
"#
    .to_owned()
}

fn validator_source() -> String {
    r#"//! A Concord validator: vets every value written to a bucket it is bound to.
//!
//! This one refuses empty values and values that are not UTF-8 text, and
//! stores text without surrounding whitespace. Replace it with your own
//! rules.

use concord_guest::{Validator, Verdict};

/// The validator.
pub struct Check;

impl Validator for Check {
    fn validate(_bucket: &str, _key: &[u8], value: &[u8]) -> Verdict {
        let Ok(text) = std::str::from_utf8(value) else {
            return Verdict::Reject("the value is not UTF-8 text".into());
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            Verdict::Reject("the value is empty".into())
        } else if trimmed.len() != text.len() {
            Verdict::Replace(trimmed.as_bytes().to_vec())
        } else {
            Verdict::Accept
        }
    }
}

concord_guest::export_validator!(Check);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_passes_and_is_trimmed() {
        assert_eq!(Check::validate("b", b"k", b"hello"), Verdict::Accept);
        assert_eq!(Check::validate("b", b"k", b" hello\n"), Verdict::Replace(b"hello".to_vec()));
    }

    #[test]
    fn empty_and_binary_values_are_refused() {
        assert!(matches!(Check::validate("b", b"k", b"  "), Verdict::Reject(_)));
        assert!(matches!(Check::validate("b", b"k", &[0xff, 0xfe]), Verdict::Reject(_)));
    }
}
"#
    .to_owned()
}

const RESOLVER_SAMPLES: &str = "[\"apple\", \"banana\", \"cherry\", \"pear\", \"\"]\n";
const VALIDATOR_SAMPLES: &str = "[\"hello\", \" padded \", \"\"]\n";
const RESOLVER_FIXTURE: &str =
    "{\"siblings\": [{\"value\": \"apple\", \"written_at_ms\": 1}, {\"value\": \"pear\", \"written_at_ms\": 2}]}\n";

fn readme(name: &str, lib: &str, kind: Kind) -> String {
    let wasm = format!("target/wasm32-unknown-unknown/release/{lib}.wasm");
    let (what, try_it, bind) = match kind {
        Kind::Resolver => (
            "resolver",
            format!(
                "concord plugin test {wasm} --siblings fixture.json\nconcord plugin verify {wasm} --samples samples.json"
            ),
            format!("concord bucket set BUCKET --resolver {name}@0.1.0"),
        ),
        Kind::Validator => (
            "validator",
            format!("concord plugin test {wasm} --value hello"),
            format!("concord bucket set BUCKET --validator {name}@0.1.0"),
        ),
    };
    format!(
        "# {name}\n\nA Concord {what}, written with Concord's guest SDK (a copy of it is in\n`concord-guest/`).\n\n\
         ```sh\n\
         cargo test                                                # the logic, natively\n\
         rustup target add wasm32-unknown-unknown                  # once\n\
         cargo build --release --target wasm32-unknown-unknown     # -> {wasm}\n\
         {try_it}\n\
         concord plugin deploy {wasm} --name {name} --version 0.1.0 --samples samples.json\n\
         {bind}\n\
         ```\n\n\
         `samples.json` holds example values in the plugin's format: the deploy-time\nchecks build their sibling sets \
         from them. See Concord's docs/PLUGINS.md.\n"
    )
}
