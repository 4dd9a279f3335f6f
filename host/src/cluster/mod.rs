//! Cluster state a node shares with its peers: membership (gossip), the
//! ring, bucket properties and the plugin manifest, and the worker that
//! keeps them converged.

pub mod membership;
mod state;

pub use membership::{Members, Membership, MembershipConfig, Peer, Status};
pub use state::{Cluster, Credentials, LocalData, load_ring, load_seeds};
#[cfg(test)]
pub(crate) use state::{decode_ring, encode_ring};
