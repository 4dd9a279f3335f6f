//! Concord's wire protocol, generated from `proto/concord/v1/*.proto`.
//!
//! `Kv` and `Admin` are the public services; `Internal` is node-to-node and not
//! for clients. Every message lives in the versioned package `concord.v1`.

/// The `concord.v1` protobuf package.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("concord.v1");
}

/// Encoded `FileDescriptorSet` of every Concord proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/concord_descriptor.bin"));
