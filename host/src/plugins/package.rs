//! Turning deployed bytes into a checked component.
//!
//! A deploy may send a component, or a core module that carries wit-bindgen's
//! `component-type` section (what `cargo build --target
//! wasm32-unknown-unknown` produces with `concord-guest`). Core modules are
//! turned into components here. Either way the component's interface is
//! then decoded *before* anything is instantiated, so a plugin built against
//! an interface version this host does not serve, or one that imports
//! anything but Concord's own interfaces and the capability-free part of
//! WASI 0.2 (components from other languages need it), is refused with an
//! error that says why. Core modules get no WASI at all: they come from
//! concord-guest, which needs none.

use wit_component::DecodedWasm;
use wit_parser::{WorldItem, WorldKey};

use super::PluginKind;
use crate::{Error, Result};

/// WIT namespace and package name of Concord's plugin interface.
const NAMESPACE: &str = "concord";
const PACKAGE: &str = "plugin";

/// Interface versions this host serves, one binding module each
/// (see [`super::bindings`]): `(major, minor)` of a `0.x` or `x.y` line.
pub const SUPPORTED: &[(u64, u64)] = &[(0, 1)];

/// A deployable plugin, checked.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Component bytes (what is stored and shipped between nodes).
    pub component: Vec<u8>,
    /// Resolver or validator.
    pub kind: PluginKind,
    /// `concord:plugin` version it was built against, e.g. `0.1.0`.
    pub interface_version: String,
}

/// Checks `bytes` and returns them as a component. Errors are
/// [`Error::InvalidInput`] with the reason.
pub fn prepare(bytes: &[u8]) -> Result<Prepared> {
    let component = if wasmparser::Parser::is_component(bytes) {
        bytes.to_vec()
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        check_core_imports(bytes)?;
        componentize(bytes)?
    } else {
        return Err(Error::invalid("plugin is not a WebAssembly module or component"));
    };
    let (kind, interface_version) = inspect(&component)?;
    Ok(Prepared { component, kind, interface_version })
}

/// Refuses core modules that import anything but `concord:plugin/*`.
fn check_core_imports(core: &[u8]) -> Result<()> {
    let bad = |e: wasmparser::BinaryReaderError| Error::invalid(format!("plugin is not valid WebAssembly: {e}"));
    for payload in wasmparser::Parser::new(0).parse_all(core) {
        if let wasmparser::Payload::ImportSection(reader) = payload.map_err(bad)? {
            for import in reader.into_imports() {
                let import = import.map_err(bad)?;
                if !import.module.starts_with("concord:plugin/") {
                    let what =
                        if import.module.starts_with("wasi") { " (WASI is not available to plugins)" } else { "" };
                    return Err(Error::invalid(format!(
                        "plugin imports {}::{}{what}; plugins may import only concord:plugin interfaces. Build for wasm32-unknown-unknown with concord-guest",
                        import.module, import.name
                    )));
                }
            }
        }
    }
    Ok(())
}

fn componentize(core: &[u8]) -> Result<Vec<u8>> {
    wit_component::ComponentEncoder::default().module(core).and_then(|e| e.validate(true).encode()).map_err(|e| {
        Error::invalid(format!("cannot turn the core module into a component ({e:#}); is it built with concord-guest?"))
    })
}

/// WASI 0.2 packages a plugin may import. The node serves them without
/// capabilities (see `engine.rs`): they let interpreters built for WASI
/// (componentize-py, componentize-js) start, and give them nothing that
/// could make an answer depend on more than the input.
const WASI_PACKAGES: &[&str] = &["io", "clocks", "random", "cli", "filesystem", "sockets"];

/// Accepts `wasi:<package>/<interface>@0.2.x` for the packages above.
fn check_wasi(name: &str, wasi: &str) -> Result<()> {
    let package = wasi.split('/').next().unwrap_or_default();
    let version = wasi.split_once('@').map(|(_, v)| v).unwrap_or_default();
    if !WASI_PACKAGES.contains(&package) {
        return Err(Error::invalid(format!(
            "plugin imports {name}; of WASI, plugins get only {} (without files, sockets, environment or clock). \
             Build without it: componentize-js takes --disable http fetch-event",
            WASI_PACKAGES.iter().map(|p| format!("wasi:{p}")).collect::<Vec<_>>().join(", ")
        )));
    }
    if !version.starts_with("0.2.") {
        return Err(Error::invalid(format!("plugin imports {name}; this node serves WASI 0.2 only")));
    }
    Ok(())
}

/// The kind and interface version a component targets.
fn inspect(component: &[u8]) -> Result<(PluginKind, String)> {
    let decoded = wit_component::decode(component)
        .map_err(|e| Error::invalid(format!("cannot read the plugin's interface: {e:#}")))?;
    let DecodedWasm::Component(resolve, world) = decoded else {
        return Err(Error::invalid("plugin is a WIT package, not a component"));
    };
    let world = &resolve.worlds[world];
    // Every import must be one of Concord's interfaces.
    let mut version = None;
    for (key, item) in &world.imports {
        let name = match (key, item) {
            (_, WorldItem::Type { .. }) => continue,
            (WorldKey::Interface(id), _) => resolve.id_of(*id).unwrap_or_default(),
            (WorldKey::Name(n), _) => n.clone(),
        };
        if let Some(wasi) = name.strip_prefix("wasi:") {
            check_wasi(&name, wasi)?;
            continue;
        }
        let Some(rest) = name.strip_prefix(&format!("{NAMESPACE}:{PACKAGE}/")) else {
            return Err(Error::invalid(format!(
                "plugin imports {name}; plugins may import only concord:plugin interfaces (and WASI 0.2's {})",
                WASI_PACKAGES.join(", ")
            )));
        };
        let (_, v) =
            rest.split_once('@').ok_or_else(|| Error::invalid(format!("plugin imports {name} without a version")))?;
        version = Some(v.to_owned());
    }
    let version = version.ok_or_else(|| Error::invalid("plugin does not use the concord:plugin interface"))?;
    check_version(&version)?;
    let exports: Vec<&str> = world
        .exports
        .iter()
        .filter_map(|(k, i)| match (k, i) {
            (WorldKey::Name(n), WorldItem::Function(_)) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    let kind = match exports.as_slice() {
        ["resolve"] => PluginKind::Resolver,
        ["validate"] => PluginKind::Validator,
        other => {
            return Err(Error::invalid(format!(
                "plugin exports {other:?}; a plugin exports exactly one of `resolve` (a resolver) or `validate` (a validator)"
            )));
        }
    };
    Ok((kind, version))
}

/// Accepts versions of a supported `major.minor` line.
fn check_version(v: &str) -> Result<()> {
    let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u64>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        return Err(Error::invalid(format!("plugin targets concord:plugin@{v}, which is not a version")));
    };
    if SUPPORTED.contains(&(major, minor)) {
        return Ok(());
    }
    let supported: Vec<String> = SUPPORTED.iter().map(|(a, b)| format!("{a}.{b}.x")).collect();
    Err(Error::invalid(format!(
        "plugin targets concord:plugin@{v}, but this node serves {}; rebuild it with a matching concord-guest",
        supported.join(", ")
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn versions() {
        check_version("0.1.0").unwrap();
        check_version("0.1.7").unwrap();
        let e = check_version("0.2.0").unwrap_err().to_string();
        assert!(e.contains("concord:plugin@0.2.0") && e.contains("0.1.x"), "{e}");
        assert!(check_version("x").is_err());
    }

    #[test]
    fn garbage_is_refused() {
        let e = prepare(b"not wasm at all").unwrap_err().to_string();
        assert!(e.contains("not a WebAssembly module or component"), "{e}");
        // A valid, empty core module without Concord's interface.
        let empty = b"\0asm\x01\0\0\0";
        assert!(prepare(empty).is_err());
    }

    /// A resolver component that also imports `interface`, declared in a
    /// package of its own as `package`.
    pub(crate) fn resolver_importing(package: &str, interface: &str) -> Vec<u8> {
        use wit_component::{ComponentEncoder, StringEncoding, dummy_module, embed_component_metadata};
        use wit_parser::{LiftLowerAbi, ManglingAndAbi, Resolve};
        let mut resolve = Resolve::default();
        resolve.push_str("plugin.wit", include_str!("../../../guest-sdk/wit/since_v0.1.0/plugin.wit")).unwrap();
        resolve
            .push_str("extra.wit", &format!("package {package};\ninterface {interface} {{ f: func(); }}\n"))
            .unwrap();
        let (ns_name, version) = package.split_once('@').unwrap();
        let pkg = resolve
            .push_str(
                "test.wit",
                &format!(
                    "package test:plugin;\nworld w {{\n  use concord:plugin/types@0.1.0.{{sibling, resolution}};\n  \
                     import concord:plugin/host@0.1.0;\n  import {ns_name}/{interface}@{version};\n  \
                     export resolve: func(bucket: string, key: list<u8>, siblings: list<sibling>) -> resolution;\n}}\n"
                ),
            )
            .unwrap();
        let world = resolve.select_world(&[pkg], Some("w")).unwrap();
        let mut module = dummy_module(&resolve, world, ManglingAndAbi::Legacy(LiftLowerAbi::Sync));
        embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).unwrap();
        ComponentEncoder::default().module(&module).unwrap().validate(true).encode().unwrap()
    }

    #[test]
    fn capability_free_wasi_is_accepted_and_anything_else_is_refused_by_name() {
        for (package, interface) in [("wasi:cli@0.2.9", "environment"), ("wasi:random@0.2.3", "random")] {
            let p = prepare(&resolver_importing(package, interface)).unwrap();
            assert_eq!((p.kind, p.interface_version.as_str()), (PluginKind::Resolver, "0.1.0"));
        }
        let e = prepare(&resolver_importing("wasi:http@0.2.10", "types")).unwrap_err().to_string();
        assert!(e.contains("wasi:http/types@0.2.10") && e.contains("--disable http"), "{e}");
        let e = prepare(&resolver_importing("wasi:cli@0.3.0", "environment")).unwrap_err().to_string();
        assert!(e.contains("WASI 0.2 only"), "{e}");
        let e = prepare(&resolver_importing("acme:db@1.0.0", "query")).unwrap_err().to_string();
        assert!(e.contains("acme:db/query@1.0.0"), "{e}");
    }
}
