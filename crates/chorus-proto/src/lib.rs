//! Code generated from `proto/` by tonic-prost-build (through protox, so no `protoc`).

/// The node-to-node protocol (`proto/chorus/v1/cluster.proto`).
pub mod cluster {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("chorus.cluster.v1");
}

/// The client protocol (`proto/chorus/v1/client.proto`, described in `docs/protocol.md`).
pub mod client {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("chorus.client.v1");
}

pub mod codec;
