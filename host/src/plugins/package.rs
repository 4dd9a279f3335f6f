//! Turning deployed bytes into a checked component.
//!
//! A deploy may send a component, or a core module that carries wit-bindgen's
//! `component-type` section (what `cargo build --target
//! wasm32-unknown-unknown` produces with `concord-guest`). Core modules are
//! turned into components here. Either way the component's interface is
//! then decoded *before* anything is instantiated, so a plugin built against
//! an interface version this host does not serve, or one that imports
//! anything but Concord's own interfaces (WASI, say), is refused with an
//! error that says why.

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
        let Some(rest) = name.strip_prefix(&format!("{NAMESPACE}:{PACKAGE}/")) else {
            let hint = if name.starts_with("wasi:") {
                ". Plugins get no files, sockets, clocks or environment, so WASI is not offered: build Python \
                 plugins with `componentize-py ... componentize --stub-wasi` and JavaScript ones with \
                 `componentize-js ... --disable stdio random clocks http fetch-event` (docs/PLUGINS.md)"
            } else {
                ""
            };
            return Err(Error::invalid(format!(
                "plugin imports {name}; plugins may import only concord:plugin interfaces{hint}"
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
mod tests {
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
}
