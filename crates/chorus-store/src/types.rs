//! The openraft type configuration shared by storage and the cluster.

use chorus_core::{Command, CommandResult};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// The payload of a normal Raft entry: commands applied in order (proposal batching puts
/// many client writes in one entry). Shared, not copied: the log engine keeps recent entries
/// decoded, and replication and apply take them by cloning the `Arc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRequest(pub Arc<[Command]>);

impl ShardRequest {
    /// An entry payload of `commands`.
    pub fn new(commands: Vec<Command>) -> ShardRequest {
        ShardRequest(commands.into())
    }

    /// The commands, in order.
    pub fn commands(&self) -> &[Command] {
        &self.0
    }
}

impl fmt::Display for ShardRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardRequest({} commands)", self.0.len())
    }
}

/// One result per command of the applied [`ShardRequest`] (empty for blank and membership
/// entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResponse(pub Vec<CommandResult>);

/// A cluster member as Raft knows it: where its node-to-node endpoint listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChorusNode {
    /// `host:port` of the gRPC (Raft) endpoint.
    pub raft_addr: String,
}

impl fmt::Display for ChorusNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raft_addr)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of every Chorus shard group.
    pub TypeConfig:
        D = ShardRequest,
        R = ShardResponse,
        NodeId = u64,
        Node = ChorusNode,
);
