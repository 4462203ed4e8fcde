//! The pure, deterministic domain of Chorus.
//!
//! Everything here is plain data and functions: no tokio, no sled, no sockets. Every replica
//! of a shard feeds the same committed commands into [`ShardState::apply`] and therefore
//! reaches the same state, assigns the same offsets and returns the same results. The I/O
//! layers (`chorus-store`, `chorus-cluster`, `chorus-http`) are thin adapters around it.
//!
//! ```text
//!   client write ─► edge (http/quic) ─► raft (chorus-cluster) ─► log (chorus-store)
//!                                                                   │ committed
//!                                                                   ▼
//!                                         ShardState::apply(ctx, batch) ─► results
//! ```

pub mod channel;
pub mod collab;
pub mod command;
pub mod error;
pub mod pattern;
pub mod presence;
pub mod quota;
pub mod revocation;
pub mod roster;
pub mod shard;
pub mod state;
pub mod typing;

pub use channel::{ChannelName, ChannelNameError};
pub use command::{
    Command, CommandBatch, CommandResult, MAX_EVENT_TYPE_LEN, MAX_IDEMPOTENCY_KEY_LEN, PublishCommand,
    Published, check_client_writable, check_publish_input, scoped_idempotency_key,
};
pub use error::ErrorCode;
pub use pattern::{ChannelPattern, PatternError, PatternIndex};
pub use presence::{ConnRef, PresenceStatus};
pub use quota::{HistoryQuotas, QuotaExceeded};
pub use shard::{ShardId, shard_for};
pub use state::{
    AppliedOutput, ApplyContext, HistoryLimits, HistoryPage, ShardState, ShardStateWithoutQuotas,
    ShardStateWithoutRevocations, StoredMessage,
};
