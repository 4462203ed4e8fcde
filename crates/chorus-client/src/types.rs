//! What the SDK hands to applications.

use chorus_proto::client as wire;
use std::io::Read;

/// A position in a channel: (epoch, offset). Pass the last one seen to
/// [`crate::SubscribeOptions::since`] to recover what was missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    /// The channel's epoch (changes only if its history is reset).
    pub epoch: u64,
    /// The offset within the epoch, gapless from 1.
    pub offset: u64,
}

/// One event of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The channel.
    pub channel: String,
    /// Its epoch.
    pub epoch: u64,
    /// Its offset in the channel.
    pub offset: u64,
    /// The application event type, if any.
    pub event_type: Option<String>,
    /// The event's data: JSON text.
    pub data: String,
    /// Who published it (the token's subject).
    pub publisher: String,
    /// When the shard leader accepted it (ms since the Unix epoch).
    pub time_ms: u64,
}

impl Event {
    /// The event's position.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            offset: self.offset,
        }
    }

    /// The data, parsed.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(&self.data)
    }

    pub(crate) fn from_wire(event: wire::Event) -> Result<Event, String> {
        let data = if event.data_deflate.is_empty() {
            event.data
        } else {
            let mut text = String::new();
            flate2::read::DeflateDecoder::new(event.data_deflate.as_slice())
                .read_to_string(&mut text)
                .map_err(|e| format!("undecodable deflated event data: {e}"))?;
            text
        };
        Ok(Event {
            channel: event.channel,
            epoch: event.epoch,
            offset: event.offset,
            event_type: Some(event.event_type).filter(|t| !t.is_empty()),
            data,
            publisher: event.publisher,
            time_ms: event.time_ms,
        })
    }
}

/// The acknowledgement of a publish: a quorum of nodes has it on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The channel.
    pub channel: String,
    /// Where the event landed.
    pub position: Position,
    /// True when the idempotency key was seen before (a retry): nothing new was appended.
    pub duplicate: bool,
}

/// Options of one publish.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// The application event type.
    pub event_type: Option<String>,
    /// Retries with the same key are applied once. When `None`, the SDK makes one up, so that
    /// its own retries after a reconnect never publish twice.
    pub idempotency_key: Option<String>,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The channel's epoch.
    pub epoch: u64,
    /// The newest offset in the channel.
    pub last_offset: u64,
    /// The oldest offset still retained.
    pub first_retained: u64,
    /// Events after the requested offset, oldest first.
    pub events: Vec<Event>,
}

/// Options of one subscription.
#[derive(Debug, Clone, Default)]
pub struct SubscribeOptions {
    /// Exact channels: deliver everything after this position first.
    pub since: Option<Position>,
    /// Only these event types (all when empty).
    pub event_types: Vec<String>,
    /// Exact channels: a subscription token for this user and channel (minted by the
    /// application's backend), needed for a private channel; sent again on every reconnect.
    pub subscription_token: Option<String>,
}
