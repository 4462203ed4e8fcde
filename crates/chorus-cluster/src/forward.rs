//! Requests a node sends to a shard's leader, and their answers (postcard in a
//! `ShardMessage` of the `Forward` call).

use chorus_core::{Command, ErrorCode};
use chorus_store::{ChorusNode, ShardResponse};
use serde::{Deserialize, Serialize};

/// What a non-leader asks the leader to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// Propose commands (in this order, in one entry).
    Write(Vec<Command>),
    /// Confirm leadership and say up to which index a linearizable read must wait.
    ReadIndex,
    /// Add a learner and wait until it has caught up.
    AddLearner {
        /// New node id.
        id: u64,
        /// Its address.
        node: ChorusNode,
    },
    /// Promote learners to voters.
    AddVoter {
        /// Node id.
        id: u64,
    },
    /// Remove a node from the group.
    RemoveNode {
        /// Node id.
        id: u64,
    },
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardResponse {
    /// The write's results.
    Written(ShardResponse),
    /// The read index.
    ReadIndex(u64),
    /// A membership change was committed.
    Done,
}

/// Why the leader did not do it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardError {
    /// The receiver is not the leader (any more); it names the leader it knows.
    NotLeader {
        /// The leader the receiver knows of.
        leader: Option<u64>,
    },
    /// The receiver leads the shard but has heard from no quorum lately: it asked its peers and
    /// the request may be tried again at once.
    LeaseExpired,
    /// Any other failure.
    Failed {
        /// Stable code.
        code: ErrorCode,
        /// Message.
        message: String,
        /// Whether a write may have been applied anyway.
        indeterminate: bool,
    },
}

/// The payload of a `Forward` reply.
pub type ForwardResult = Result<ForwardResponse, ForwardError>;
