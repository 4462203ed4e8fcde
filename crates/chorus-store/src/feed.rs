//! The applied-event feed: what a node's state machines report after applying, so that the
//! node can deliver committed events to its own subscribers.
//!
//! ```text
//!  shard 0 apply ─┐
//!  shard 1 apply ─┼─> broadcast (bounded ring) ──> gateway hub ──> connections
//!  shard n apply ─┘
//! ```
//!
//! Sending never blocks apply: the feed is a bounded broadcast ring. A receiver that falls
//! behind is told how much it missed (`Lagged`) and catches up from the shards' history,
//! which already holds every event it missed.

use chorus_core::{ChannelName, ShardId, StoredMessage};
use std::sync::Arc;
use tokio::sync::broadcast;

/// One event that a shard applied (not a deduplicated retry).
#[derive(Debug, Clone)]
pub struct AppliedEvent {
    /// The shard that applied it.
    pub shard: ShardId,
    /// The channel.
    pub channel: ChannelName,
    /// The channel's epoch.
    pub epoch: u64,
    /// The event, with its offset (shared with the channel's history).
    pub message: std::sync::Arc<StoredMessage>,
}

/// A live-only notice a shard applied (read receipts): delivered to the channel's current
/// subscribers, not kept in its history.
#[derive(Debug, Clone)]
pub struct AppliedNotice {
    /// The channel.
    pub channel: ChannelName,
    /// `message.read`.
    pub event_type: String,
    /// JSON text.
    pub data: String,
    /// Who caused it.
    pub publisher: String,
    /// When (the shard leader's stamp).
    pub time_ms: u64,
}

/// What the feed carries.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// An event was applied.
    Event(AppliedEvent),
    /// A notice was applied.
    Notice(AppliedNotice),
    /// A shard's state was replaced by a snapshot: events in it were never reported one by one.
    SnapshotInstalled(ShardId),
    /// Tokens were revoked (shard 0): connections holding them must close.
    Revoked(chorus_core::revocation::RevokeTarget),
}

/// The sending side, shared by every state machine of a node. Cloning shares it.
#[derive(Debug, Clone)]
pub struct EventFeed {
    sender: broadcast::Sender<Arc<FeedItem>>,
}

impl EventFeed {
    /// A feed that buffers up to `capacity` items for its slowest receiver.
    pub fn new(capacity: usize) -> Self {
        EventFeed {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// A new receiver, seeing items sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.sender.subscribe()
    }

    /// Sends an item to every receiver; never blocks (no receiver is fine).
    pub fn send(&self, item: FeedItem) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new(item));
        }
    }
}

impl Default for EventFeed {
    fn default() -> Self {
        EventFeed::new(16 * 1024)
    }
}
