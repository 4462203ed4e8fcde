//! Code generated from `proto/` by tonic-prost-build (through protox, so no `protoc`).

/// The node-to-node protocol (`proto/chorus/v1/cluster.proto`).
pub mod cluster {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("chorus.cluster.v1");
}
