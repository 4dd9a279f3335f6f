//! Cluster state a node shares with its peers: membership (gossip), the
//! ring, bucket properties and the plugin manifest, and the worker that
//! keeps them converged.

pub mod buckets;
pub mod membership;
mod state;

pub use buckets::{BucketChange, BucketProps, Buckets, PluginRef, ResolveOn, ValidatorFailure};
pub use membership::{Members, Membership, MembershipConfig, Peer, Status};
pub use state::{Cluster, load_ring, load_seeds};
