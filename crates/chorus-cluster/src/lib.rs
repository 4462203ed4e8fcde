//! The cluster layer of a Chorus node: one openraft group per shard, the gRPC transport
//! between nodes, forwarding to shard leaders, membership and leader placement.
//!
//! ```text
//!            ┌──────────────── ClusterNode ────────────────┐
//!  write ──► │ shard_for(channel) ─► Raft[shard]            │
//!            │   leader here?  yes ─► client_write          │
//!            │                 no  ─► Forward ─► gRPC ──────┼──► leader's node
//!            │ gRPC server: AppendEntries/Vote/Snapshot ──► Raft[shard]
//!            └──────────────────────────────────────────────┘
//! ```

pub mod audit;
pub mod auth;
pub mod clock;
pub mod error;
pub mod faults;
pub mod features;
pub mod forward;
pub mod link;
pub mod liveness;
pub mod network;
pub mod node;
pub mod placement;
pub mod proposer;
mod quiet;
pub mod service;
mod snapshots;
pub mod status;
pub mod tls;
pub mod transport;
pub mod typing;

pub use error::ClusterError;
pub use node::{ClusterConfig, ClusterMetrics, ClusterNode};
pub use status::{ClusterStatus, NodeStatus, ShardStatus};
pub use typing::{Typing, TypingConfig};

/// The Raft handle of one shard.
pub type ShardRaft = openraft::Raft<chorus_store::TypeConfig, chorus_store::ShardStateMachine>;
