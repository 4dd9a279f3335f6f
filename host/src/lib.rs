//! Concord: a Dynamo-style, always-writable distributed key-value store whose
//! conflict resolution and validation are WebAssembly plugins.
//!
//! The crate is the node, as a library (so tests can run nodes in process)
//! and the `concord` binary. Modules, bottom up; see `docs/ARCHITECTURE.md`
//! for how a request flows through them:
//!
//! | module | owns |
//! |---|---|
//! | [`causal`] | dots, version vectors, sibling sets, context tokens (pure) |
//! | [`ring`] | partitions, ownership and preference lists (pure) |
//! | [`buckets`] | bucket properties: replication, limits, plugin bindings |
//! | [`storage`] | the engine seam, object codec, durability, data directory |
//! | [`plugins`] | WebAssembly resolvers and validators: engine, registry, calls |
//! | [`cluster`] | state shared with peers: membership (gossip), ring changes, metadata sync |
//! | [`net`] | every node-to-node call, and the fault rules tests use |
//! | [`coordinator`] | the get / put / delete paths and quorums |
//! | [`handoff`] | hints for replicas that missed writes, and their delivery |
//! | [`antientropy`] | hash trees, exchanges between replicas, tombstone reaping |
//! | [`api`] | the gRPC services |
//! | [`node`] | wiring, background workers, shutdown |
//! | [`env`] | what a node takes from its surroundings (clock, randomness, network), for the simulation |

pub mod antientropy;
pub mod api;
pub mod buckets;
pub mod causal;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod env;
mod error;
pub mod handoff;
pub mod net;
pub mod node;
pub mod planted;
pub mod plugins;
pub mod ring;
pub mod security;
pub mod storage;
pub mod telemetry;

#[cfg(test)]
mod hostile_tests;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Node;

/// Milliseconds since the Unix epoch, from the system clock (or the
/// simulation's; see [`env::since_epoch`]). Causality never depends on it:
/// it dates siblings, hints and tombstones.
pub fn now_ms() -> u64 {
    env::since_epoch().as_millis() as u64
}
