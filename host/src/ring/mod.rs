//! The ring: which partition a key lives in and which nodes hold it.
//!
//! Keys hash to one of `Q` fixed partitions (`Q` a power of two, fixed when
//! the cluster is created); each partition has an owner, and a key's
//! replicas are the owners of its partition and the partitions after it,
//! skipping nodes already chosen. Pure code: membership comes in as data.

use serde::{Deserialize, Serialize};

/// A node's stable identity (its first advertised address unless configured).
pub type NodeId = String;

/// Default number of partitions.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The partition of `key` in `bucket` on a ring of `partitions` partitions:
/// `xxh3_64(bucket, 0x00, key) mod Q`.
pub fn partition_of(bucket: &str, key: &[u8], partitions: u32) -> u32 {
    debug_assert!(partitions.is_power_of_two());
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(bucket.as_bytes());
    h.update(&[0]);
    h.update(key);
    (h.digest() & (partitions as u64 - 1)) as u32
}

/// Partition ownership at one epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ring {
    /// Grows by one on every ownership change.
    epoch: u64,
    /// `owners[p]` owns partition `p`. Its length is `Q`.
    owners: Vec<NodeId>,
}

impl Ring {
    /// A ring where `node` owns every one of `partitions` partitions.
    pub fn single(node: &str, partitions: u32) -> Self {
        assert!(partitions.is_power_of_two(), "partition count must be a power of two");
        Self { epoch: 1, owners: vec![node.to_owned(); partitions as usize] }
    }

    /// Number of partitions (`Q`).
    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The ownership epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The partition of a key.
    pub fn partition_of(&self, bucket: &str, key: &[u8]) -> u32 {
        partition_of(bucket, key, self.partitions())
    }

    /// The first `n` distinct owners walking clockwise from `partition`.
    pub fn preference_list(&self, partition: u32, n: usize) -> Vec<NodeId> {
        let q = self.owners.len();
        let mut out: Vec<NodeId> = Vec::with_capacity(n);
        for i in 0..q {
            let owner = &self.owners[(partition as usize + i) % q];
            if !out.contains(owner) {
                out.push(owner.clone());
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }
}
