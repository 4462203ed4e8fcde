//! Errors of cluster operations, each with a stable [`ErrorCode`].

use chorus_core::ErrorCode;
use chorus_core::ShardId;

/// What can go wrong serving a request through the cluster.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known for the shard (an election is under way, or no quorum).
    #[error("shard {shard} has no leader right now; retry shortly")]
    NoLeader {
        /// The shard.
        shard: ShardId,
    },
    /// The write was handed to Raft but its fate is unknown (leader lost, connection cut).
    #[error(
        "the write to shard {shard} may or may not have been applied ({reason}); retry with the same idempotency key"
    )]
    Indeterminate {
        /// The shard.
        shard: ShardId,
        /// What happened.
        reason: String,
    },
    /// The operation did not finish within its deadline.
    #[error("shard {shard} did not answer within {millis} ms")]
    Timeout {
        /// The shard.
        shard: ShardId,
        /// The deadline.
        millis: u64,
    },
    /// A peer could not be reached.
    #[error("node {node} is unreachable: {reason}")]
    Unreachable {
        /// The peer.
        node: u64,
        /// Why.
        reason: String,
    },
    /// A membership change named a node that no shard has.
    #[error("node {node} is not a member of the cluster")]
    NotMember {
        /// The id given.
        node: u64,
    },
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// A session operation or creation was refused by the state machine (the document is
    /// unchanged).
    #[error("{0}")]
    Session(chorus_core::collab::OpError),
    /// A publish was refused for its publisher's history quota (nothing was appended).
    #[error(
        "history quota exceeded: your events hold {} bytes of this shard's history, this one adds {}, the quota is {} (max_bytes_per_user); room comes back as older events expire",
        .0.used, .0.adding, .0.quota
    )]
    QuotaExceeded(chorus_core::QuotaExceeded),
    /// A node or storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ClusterError {
    /// The stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClusterError::Session(e) => e.code(),
            ClusterError::NoLeader { .. } | ClusterError::Unreachable { .. } => ErrorCode::Unavailable,
            ClusterError::Indeterminate { .. } | ClusterError::Timeout { .. } => ErrorCode::Timeout,
            ClusterError::Membership(_) | ClusterError::BadRequest(_) => ErrorCode::BadRequest,
            ClusterError::Internal(_) => ErrorCode::Internal,
            ClusterError::QuotaExceeded(_) => ErrorCode::QuotaExceeded,
            ClusterError::NotMember { .. } => ErrorCode::NotFound,
        }
    }
}
