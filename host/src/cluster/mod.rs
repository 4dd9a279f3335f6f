//! Cluster state a node shares with its peers: bucket properties (and, as
//! the cluster grows, membership, the ring and the plugin manifest).

pub mod buckets;

pub use buckets::{BucketChange, BucketProps, Buckets, PluginRef, ResolveOn, ValidatorFailure};
