//! Host bindings, one module per released interface version (the WIT lives
//! in `guest-sdk/wit/since_vX.Y.Z/`). A new interface version adds a module
//! here and a branch where plugins are loaded; old plugins keep working.

/// `concord:plugin@0.1.x`.
pub mod v0_1 {
    /// The `resolver` world; defines the shared `types` and `host` interfaces.
    pub mod resolver {
        wasmtime::component::bindgen!({
            path: "../guest-sdk/wit/since_v0.1.0",
            world: "concord:plugin/resolver@0.1.0",
        });
    }

    /// The `validator` world, reusing the resolver world's shared interfaces.
    pub mod validator {
        wasmtime::component::bindgen!({
            path: "../guest-sdk/wit/since_v0.1.0",
            world: "concord:plugin/validator@0.1.0",
            with: {
                "concord:plugin/types": super::resolver::concord::plugin::types,
                "concord:plugin/host": super::resolver::concord::plugin::host,
            },
        });
    }

    pub use resolver::ResolverPre;
    pub use resolver::concord::plugin::host::{Host, Level, add_to_linker};
    pub use resolver::concord::plugin::types::{Dot, Resolution, Sibling, Verdict};
    pub use validator::{Validator, ValidatorPre};
}
