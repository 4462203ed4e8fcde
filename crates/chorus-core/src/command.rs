//! Commands: what goes through Raft, and what applying them answers.
//!
//! A Raft entry carries a [`CommandBatch`] so that the shard leader can put many concurrent
//! client writes into one entry (one log write and one fsync for all of them). Each command
//! gets one [`CommandResult`], in order.

use crate::channel::ChannelName;
use crate::collab::{ConflictPolicy, DocPath, OpApplied, OpError, OpKind};
use crate::error::ErrorCode;
use crate::presence::{ConnRef, PresenceStatus};
use crate::state::HistoryLimits;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    /// Creates a collaborative session on a channel.
    CreateSession(CreateSessionCommand),
    /// Applies one operation to a session's document.
    SessionOp(SessionOpCommand),
    /// A connected device's presence (on connect, and when the client sets its status).
    SetPresence(SetPresenceCommand),
    /// A device's connection closed.
    DeviceGone(DeviceGoneCommand),
    /// A node renews its lease in this shard: its connections are still alive.
    RenewLease(RenewLeaseCommand),
    /// The shard leader found a node's lease lapsed: that node's devices go offline.
    ExpireLease(ExpireLeaseCommand),
    /// A user read a channel up to an offset.
    MarkRead(MarkReadCommand),
    /// A connection subscribed to a channel with a roster.
    RosterJoin(RosterCommand),
    /// A connection's subscription to a channel with a roster ended.
    RosterLeave(RosterCommand),
    /// Revokes a user's tokens or one token (in shard 0, read by every node).
    Revoke(crate::revocation::RevokeCommand),
    /// Sets the shard's history quotas (proposed like [`Command::SetLimits`]).
    SetQuotas(crate::quota::HistoryQuotas),
    /// Runs retention over every channel, the idle ones too (proposed by the shard leader
    /// when one is due: `ShardState::sweep_due`).
    Sweep(SweepCommand),
}

impl Command {
    /// Sets the command's time (the shard leader stamps every command it proposes, so that
    /// apply's notion of time is one clock per shard).
    pub fn stamp_time(&mut self, now_ms: u64) {
        match self {
            Command::Publish(c) => c.time_ms = now_ms,
            Command::CreateSession(c) => c.time_ms = now_ms,
            Command::SessionOp(c) => c.time_ms = now_ms,
            Command::SetPresence(c) => c.time_ms = now_ms,
            Command::DeviceGone(c) => c.time_ms = now_ms,
            Command::RenewLease(c) => c.time_ms = now_ms,
            Command::ExpireLease(c) => c.time_ms = now_ms,
            Command::MarkRead(c) => c.time_ms = now_ms,
            Command::RosterJoin(c) | Command::RosterLeave(c) => c.time_ms = now_ms,
            Command::Revoke(c) => c.time_ms = now_ms,
            Command::Sweep(c) => c.time_ms = now_ms,
            Command::SetLimits(_) | Command::SetClusterId(_) | Command::SetQuotas(_) => {}
        }
    }

    /// Bytes of client data the command carries (what dominates an entry's size).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Publish(p) => p.data.len() + p.channel.as_str().len(),
            Command::CreateSession(c) => c.document.to_string().len(),
            Command::SessionOp(c) => match &c.kind {
                OpKind::Set(v) | OpKind::Increment(v) | OpKind::Append(v) => v.to_string().len() + 64,
                OpKind::Delete => 64,
            },
            _ => 64,
        }
    }
}

/// Create a session: a channel with a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSessionCommand {
    /// The session's channel.
    pub channel: ChannelName,
    /// How conflicts are resolved.
    pub policy: ConflictPolicy,
    /// The initial document (a JSON object).
    #[serde(with = "crate::collab::json_text")]
    pub document: serde_json::Value,
    /// Who created it.
    pub creator: String,
    /// Stamped by the shard leader.
    pub time_ms: u64,
}

/// One operation on a session's document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpCommand {
    /// The session's channel.
    pub channel: ChannelName,
    /// Where in the document.
    pub path: DocPath,
    /// What to do there.
    pub kind: OpKind,
    /// The session version the client had seen.
    pub base_version: u64,
    /// Who sent it.
    pub author: String,
    /// Stamped by the shard leader.
    pub time_ms: u64,
}

/// A connected device's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPresenceCommand {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// The status.
    pub status: PresenceStatus,
    /// Optional free text.
    pub custom_status: Option<String>,
    /// The connection (its node's lease keeps it alive).
    pub conn: ConnRef,
    /// The node's lease length, renewed by this command too.
    pub lease_ms: u64,
    /// True when the connection opens (it takes the device over from any other connection);
    /// false for a status change, ignored when the device has moved to another connection.
    pub connect: bool,
    /// Stamped by the shard leader.
    pub time_ms: u64,
}

/// A device's connection closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceGoneCommand {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// The connection that closed (ignored if the device is on another one by now).
    pub conn: ConnRef,
    /// Stamped by the shard leader.
    pub time_ms: u64,
}

/// A node's lease renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewLeaseCommand {
    /// The node.
    pub node: u64,
    /// Its incarnation: devices on earlier incarnations go offline.
    pub incarnation: u64,
    /// How long the lease lasts from this command's time.
    pub lease_ms: u64,
    /// Stamped by the shard leader.
    pub time_ms: u64,
}

/// The leader saw a node's lease lapse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireLeaseCommand {
    /// The node.
    pub node: u64,
    /// Stamped by the shard leader; apply checks the lease against it.
    pub time_ms: u64,
}

/// A retention sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepCommand {
    /// Stamped by the shard leader: what "too old" is measured against.
    pub time_ms: u64,
}

/// A roster membership: one connection's subscription to a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterCommand {
    /// The channel.
    pub channel: ChannelName,
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// The connection (its node's lease keeps the membership alive).
    pub conn: ConnRef,
    /// The node's lease length, renewed by a join.
    pub lease_ms: u64,
    /// Stamped by the shard leader.
    pub time_ms: u64,
}

/// A read position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkReadCommand {
    /// The channel.
    pub channel: ChannelName,
    /// Who read.
    pub user: String,
    /// Up to which offset (clamped to the channel's last offset; positions never go back).
    pub offset: u64,
    /// Stamped by the shard leader.
    pub time_ms: u64,
}

/// Append an event to a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishCommand {
    /// The channel written to.
    pub channel: ChannelName,
    /// An optional application-defined event type (`"message"`, `"order.created"`...).
    pub event_type: Option<Arc<str>>,
    /// The event's data: JSON text, validated at the edge. Shared (`Arc`) from the decoded
    /// command into the channel's history and the applied event; each subscriber's frame
    /// still copies it (the delivery issue's one encoded frame per event takes that away).
    pub data: Arc<str>,
    /// Who published it (the token's subject).
    pub publisher: Arc<str>,
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
    /// A session was created (or why not).
    SessionCreated(Result<SessionPosition, OpError>),
    /// A session operation was applied (or why not).
    SessionOp(Result<SessionOpApplied, OpError>),
    /// A presence change was recorded; the user's status after it.
    Presence(PresenceStatus),
    /// A lease was renewed.
    Renewed {
        /// How many times the node's lease has lapsed (its devices and memberships taken
        /// away) so far; the node writes its connections' presence again when this grew
        /// since it last looked. `None`: a late renewal of a replaced process, ignored.
        expirations: Option<u64>,
    },
    /// A lapsed lease was expired.
    Expired {
        /// Devices that went offline.
        offline: u32,
    },
    /// A read position after the command.
    Read(ReadPosition),
    /// A roster's member connections after a join or leave.
    Roster {
        /// Member connections.
        connections: u32,
    },
    /// A revocation was recorded.
    Revoked,
    /// A publish was refused: its publisher's retained bytes would go over their quota.
    QuotaExceeded(crate::quota::QuotaExceeded),
    /// A retention sweep ran.
    Swept {
        /// Events dropped.
        events: u64,
        /// Idempotency keys forgotten.
        keys: u64,
    },
}

/// A session's version and its channel's position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPosition {
    /// The session's version.
    pub version: u64,
    /// The session channel's epoch.
    pub epoch: u64,
    /// The session channel's last offset.
    pub offset: u64,
}

/// An applied session operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOpApplied {
    /// What it did.
    pub applied: OpApplied,
    /// Where its `session.operation_applied` event is.
    pub epoch: u64,
    /// The event's offset.
    pub offset: u64,
}

/// A user's read position in a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPosition {
    /// The channel.
    pub channel: ChannelName,
    /// Read up to here.
    pub read_offset: u64,
    /// The channel's last offset.
    pub last_offset: u64,
    /// Whether the command moved the position.
    pub moved: bool,
}

impl ReadPosition {
    /// Events after the read position.
    pub fn unread(&self) -> u64 {
        self.last_offset.saturating_sub(self.read_offset)
    }
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

/// Refuses client writes (publishes, session changes, typing) to channels the cluster writes
/// itself: `presence.<user>` carries presence events only.
pub fn check_client_writable(channel: &ChannelName) -> Result<(), (ErrorCode, String)> {
    if channel
        .as_str()
        .starts_with(crate::presence::PRESENCE_CHANNEL_PREFIX)
    {
        return Err((
            ErrorCode::Forbidden,
            format!("{channel} is a presence channel: only the cluster writes to it"),
        ));
    }
    Ok(())
}

/// Longest accepted idempotency key, bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

/// The idempotency key a publish carries into the log: the client's `key` scoped to its
/// `publisher` (the publisher's length first, so that no two pairs give the same string), so
/// that another user cannot make a publish look like a retry by using its key first.
///
/// The edges scope keys before proposing, rather than `apply` scoping them, so that what a
/// log entry means never depends on the build that replays it: replicas that replay the same
/// log from snapshots taken by different builds still agree.
pub fn scoped_idempotency_key(publisher: &str, key: &str) -> String {
    format!("{}:{publisher}{key}", publisher.len())
}
/// Event type prefixes only the cluster writes (session operations, presence changes, notices),
/// so that subscribers can trust them.
pub const RESERVED_EVENT_TYPES: [&str; 4] = ["session.", "presence.", "typing.", "message.read"];

/// Longest accepted event type, bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// Deepest nesting of arrays and objects accepted in event data. Common JSON parsers give up
/// (or overflow their stack) on deep nesting: serde_json at 128, several JavaScript and Python
/// setups in the low thousands; data nested 30,000 deep used to be stored and delivered to
/// every subscriber, a poison message.
pub const MAX_JSON_DEPTH: usize = 64;

/// How deeply `json`'s arrays and objects nest (brackets inside strings do not count). A
/// scan, not a parse: it is meant for text that is (or is about to be checked to be) JSON.
pub fn json_depth(json: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Checks the client-supplied parts of a publish (the same rules on every face: HTTP, QUIC,
/// WebSocket). `data` is the JSON text. The message names the bad field.
pub fn check_publish_input(
    data: &str,
    max_payload_bytes: usize,
    event_type: Option<&str>,
    idempotency_key: Option<&str>,
) -> Result<(), (ErrorCode, String)> {
    let data_len = data.len();
    if data_len > max_payload_bytes {
        return Err((
            ErrorCode::PayloadTooLarge,
            format!("data is {data_len} bytes; the limit is {max_payload_bytes}"),
        ));
    }
    let depth = json_depth(data);
    if depth > MAX_JSON_DEPTH {
        return Err((
            ErrorCode::BadRequest,
            format!("data nests {depth} levels of arrays and objects; the limit is {MAX_JSON_DEPTH}"),
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
    if let Some(event_type) = event_type {
        if event_type.is_empty() || event_type.len() > MAX_EVENT_TYPE_LEN {
            return Err((
                ErrorCode::BadRequest,
                format!("type must be 1 to {MAX_EVENT_TYPE_LEN} bytes"),
            ));
        }
        // In any case: a subscriber that compares types without regard to case must not take
        // `Session.op` for the cluster's `session.op`.
        let reserved = |prefix: &&&str| {
            event_type
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
        };
        if let Some(prefix) = RESERVED_EVENT_TYPES.iter().find(reserved) {
            return Err((
                ErrorCode::BadRequest,
                format!(
                    "type {event_type:?}: types starting with {prefix:?} are written by the cluster only"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_input_rules_name_the_field() {
        let ten = "\"12345678\"";
        assert!(check_publish_input(ten, 10, Some("t"), Some("k")).is_ok());
        assert_eq!(
            check_publish_input("\"123456789\"", 10, None, None)
                .unwrap_err()
                .0,
            ErrorCode::PayloadTooLarge
        );
        let (code, message) = check_publish_input("1", 10, None, Some("")).unwrap_err();
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("idempotency_key"));
        let long = "x".repeat(MAX_EVENT_TYPE_LEN + 1);
        let forged = check_publish_input("1", 10, Some("session.operation_applied"), None);
        assert!(forged.unwrap_err().1.contains("cluster only"));
        // Found by a third-party client: the check ignored other cases.
        for forged in ["Session.op", "PRESENCE.join", "Typing.started", "Message.Read"] {
            let refused = check_publish_input("1", 10, Some(forged), None);
            assert!(refused.unwrap_err().1.contains("cluster only"), "{forged}");
        }
        assert!(check_publish_input("1", 10, Some("sessions"), None).is_ok());
        assert!(check_publish_input("1", 10, Some("é"), None).is_ok());
        assert!(
            check_publish_input("1", 10, Some(&long), None)
                .unwrap_err()
                .1
                .contains("type")
        );
    }

    /// Found by probing: data nested 30,000 deep was stored and delivered.
    #[test]
    fn deeply_nested_data_is_refused() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(check_publish_input(&nested(MAX_JSON_DEPTH), 1 << 20, None, None).is_ok());
        let (code, message) = check_publish_input(&nested(30_000), 1 << 20, None, None).unwrap_err();
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("nests 30000 levels"), "{message}");
        let objects = format!("{}1{}", "{\"a\":".repeat(65), "}".repeat(65));
        assert_eq!(json_depth(&objects), 65);
        // Brackets in strings, escaped quotes included, are text.
        assert_eq!(json_depth(r#"{"a":"[[[{{\"]]]","b":[1,[2]]}"#), 3);
        assert_eq!(json_depth("\"plain\""), 0);
    }
}
