//! Commands: what goes through Raft, and what applying them answers.
//!
//! A Raft entry carries a [`CommandBatch`] so that the shard leader can put many concurrent
//! client writes into one entry (one log write and one fsync for all of them). Each command
//! gets one [`CommandResult`], in order.

use crate::channel::ChannelName;
use crate::error::ErrorCode;
use crate::state::HistoryLimits;
use serde::{Deserialize, Serialize};

/// The payload of one Raft entry: commands applied in order.
pub type CommandBatch = Vec<Command>;

/// A replicated command. New variants are added at the end (the log stores them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Append an event to a channel's history.
    Publish(PublishCommand),
    /// Set the shard's retention and dedupe limits. The leader proposes it when the
    /// configured limits differ from the replicated ones, so every replica applies the same.
    SetLimits(HistoryLimits),
    /// Records the cluster's id (in shard 0) unless one is recorded already: the first
    /// committed proposal wins, so every node learns the same id through the log.
    SetClusterId(String),
}

/// Append an event to a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishCommand {
    /// The channel written to.
    pub channel: ChannelName,
    /// An optional application-defined event type (`"message"`, `"order.created"`...).
    pub event_type: Option<String>,
    /// The event's data: JSON text, validated at the edge.
    pub data: String,
    /// Who published it (the token's subject).
    pub publisher: String,
    /// Retries with the same key within the dedupe window are applied once.
    pub idempotency_key: Option<String>,
    /// Wall-clock time in milliseconds since the Unix epoch, stamped by the shard leader
    /// when it proposes the write. Apply never reads a clock: this is its only notion of time.
    pub time_ms: u64,
}

/// The outcome of applying one [`Command`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// A publish was applied (or recognized as a retry).
    Published(Published),
    /// Limits were set.
    LimitsSet,
    /// The cluster id in force after the command (the first one ever set).
    ClusterId(String),
}

/// Where a published event landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The channel.
    pub channel: ChannelName,
    /// The event's offset in the channel, gapless from 1.
    pub offset: u64,
    /// The channel's epoch: changes only if the channel's history is ever reset.
    pub epoch: u64,
    /// True when the idempotency key was seen before and nothing was appended.
    pub duplicate: bool,
}

/// Longest accepted idempotency key, bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Longest accepted event type, bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// Checks the client-supplied parts of a publish (the same rules on every face: HTTP, QUIC,
/// WebSocket). `data_len` is the JSON text's length. The message names the bad field.
pub fn check_publish_input(
    data_len: usize,
    max_payload_bytes: usize,
    event_type: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<(), (ErrorCode, String)> {
    if data_len > max_payload_bytes {
        return Err((
            ErrorCode::PayloadTooLarge,
            format!("data is {data_len} bytes; the limit is {max_payload_bytes}"),
        ));
    }
    if let Some(key) = idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
    {
        return Err((
            ErrorCode::BadRequest,
            format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
        ));
    }
    if let Some(event_type) = event_type
        && (event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_LEN)
    {
        return Err((
            ErrorCode::BadRequest,
            format!("type must be 1 to {MAX_EVENT_TYPE_LEN} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_input_rules_name_the_field() {
        assert!(check_publish_input(10, 10, Some("t"), Some("k")).is_ok());
        assert_eq!(
            check_publish_input(11, 10, None, None).unwrap_err().0,
            ErrorCode::PayloadTooLarge
        );
        let (code, message) = check_publish_input(1, 10, None, Some("")).unwrap_err();
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("idempotency_key"));
        let long = "x".repeat(MAX_EVENT_TYPE_LEN + 1);
        assert!(
            check_publish_input(1, 10, Some(&long), None)
                .unwrap_err()
                .1
                .contains("type")
        );
    }
}
