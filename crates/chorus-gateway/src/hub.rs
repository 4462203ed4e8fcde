//! The hub: one task per node that owns every subscription and delivers applied events.
//!
//! ```text
//!  connections ──HubCommand──┐
//!                            v
//!  applied-event feed ──> [hub task] ── per subscription: offset check, gap fill ──> outboxes
//!                            │
//!                            └── gap fills and recovery read the local shard state
//! ```
//!
//! For each exact-channel subscription the hub remembers the last offset it queued. An event
//! at that offset + 1 is queued; an older one is skipped (no duplicate); a newer one means
//! events were not seen on the feed (the hub lagged, or a snapshot replaced the state), and
//! the missing ones are read from the shard's applied history first (no gap). Because the
//! state machine reports an event while it holds the state lock, "what the state holds" and
//! "what the feed will still bring" never disagree.
//!
//! A subscription whose outbox is full is stopped and sent a `Resync`: the client subscribes
//! again from the last position it saw. Pattern subscriptions have no position; they get
//! live events only, and a `Resync` when the hub lagged.
//!
//! Notices (typing changes from the node's typing registry, read receipts from the feed) go
//! to the current subscribers of their channel without an offset; a full queue drops them.

use crate::metrics::{GatewayMetrics, ReasonLabel};
use crate::outbox::{Outbox, Priority};
use crate::presence::HubRosters;
use chorus_core::typing::TypingChange;
use chorus_core::{ChannelName, ChannelPattern, PatternIndex, ShardId, StoredMessage, shard_for};
use chorus_proto::client::{self, ServerFrame, server_frame::Kind};
use chorus_store::{AppliedEvent, AppliedNotice, EventFeed, FeedItem, ShardReader};
use std::cell::OnceCell;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc};

/// Events read per step when filling a gap or recovering.
const FILL_PAGE: usize = 512;
/// Event data at least this long is compressed for connections that negotiated it.
pub const COMPRESS_MIN_BYTES: usize = 512;

/// What a subscription is for.
#[derive(Debug, Clone)]
pub enum Target {
    /// One channel; recoverable by offset.
    Exact(ChannelName),
    /// Every channel matching; live only.
    Pattern(ChannelPattern),
}

/// The connection-side facts the hub needs.
#[derive(Clone)]
pub struct Subscriber {
    /// The connection's id on this node.
    pub conn: u64,
    /// Its outbound queues.
    pub outbox: Arc<Outbox>,
    /// Whether event data may be sent deflated.
    pub deflate: bool,
    /// The connection's user and device (roster memberships).
    pub member: Arc<(String, String)>,
}

/// A subscribe request, already authorized.
pub struct SubscribeRequest {
    /// Who.
    pub subscriber: Subscriber,
    /// The request id to reply to.
    pub request_id: u64,
    /// The client's subscription id.
    pub sub: u64,
    /// What.
    pub target: Target,
    /// Only these event types (all when empty).
    pub event_types: Vec<String>,
    /// Recover from this position (exact channels).
    pub since: Option<client::Position>,
}

enum HubCommand {
    Subscribe(SubscribeRequest),
    Unsubscribe {
        subscriber: Subscriber,
        request_id: u64,
        sub: u64,
    },
    Disconnected {
        conn: u64,
    },
}

/// A handle to the hub task. Cloning is cheap.
#[derive(Clone)]
pub struct Hub {
    commands: mpsc::UnboundedSender<HubCommand>,
}

impl Hub {
    /// Starts the hub task on the node's feed and shard readers (index = shard id).
    /// A connection may hold at most `max_per_connection` subscriptions.
    pub fn start(
        feed: &EventFeed,
        typing: broadcast::Receiver<Arc<TypingChange>>,
        readers: Vec<ShardReader>,
        metrics: GatewayMetrics,
        max_per_connection: usize,
        rosters: HubRosters,
        private_channels: Vec<ChannelPattern>,
    ) -> Hub {
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = HubTask {
            readers,
            metrics,
            subs: HashMap::new(),
            exact: HashMap::new(),
            patterns: PatternIndex::new(),
            by_conn: HashMap::new(),
            max_per_connection,
            rosters,
            private_channels,
        };
        tokio::spawn(task.run(feed.subscribe(), typing, receiver));
        Hub { commands }
    }

    /// Adds a subscription; the hub replies on the subscriber's outbox.
    pub fn subscribe(&self, request: SubscribeRequest) {
        let _ = self.commands.send(HubCommand::Subscribe(request));
    }

    /// Removes a subscription; the hub replies on the subscriber's outbox.
    pub fn unsubscribe(&self, subscriber: Subscriber, request_id: u64, sub: u64) {
        let _ = self.commands.send(HubCommand::Unsubscribe {
            subscriber,
            request_id,
            sub,
        });
    }

    /// Removes every subscription of a closed connection.
    pub fn disconnected(&self, conn: u64) {
        let _ = self.commands.send(HubCommand::Disconnected { conn });
    }
}

type SubKey = (u64, u64);

struct Subscription {
    subscriber: Subscriber,
    target: Target,
    event_types: Vec<String>,
    /// Exact channels: the epoch followed (0 until the channel exists here).
    epoch: u64,
    /// Exact channels: the last offset queued (or skipped by the filter).
    delivered: u64,
}

impl Subscription {
    fn wants(&self, event_type: Option<&str>) -> bool {
        self.event_types.is_empty() || event_type.is_some_and(|t| self.event_types.iter().any(|w| w == t))
    }
}

struct HubTask {
    readers: Vec<ShardReader>,
    metrics: GatewayMetrics,
    subs: HashMap<SubKey, Subscription>,
    exact: HashMap<ChannelName, Vec<SubKey>>,
    /// Pattern subscriptions by their tokens: matching an event does not scan them all.
    patterns: PatternIndex<SubKey>,
    /// Subscription ids per connection (disconnects without a scan of everything).
    by_conn: HashMap<u64, HashSet<u64>>,
    max_per_connection: usize,
    /// Roster memberships follow the subscriptions to roster channels.
    rosters: HubRosters,
    /// Channels read only with a subscription token: pattern subscriptions never see them.
    private_channels: Vec<ChannelPattern>,
}

/// Builds the frames of one event for its subscribers, compressing its data at most once.
pub struct EventEncoder<'a> {
    channel: &'a str,
    epoch: u64,
    message: &'a StoredMessage,
    deflated: OnceCell<Vec<u8>>,
}

impl<'a> EventEncoder<'a> {
    /// An encoder for one event.
    pub fn new(channel: &'a str, epoch: u64, message: &'a StoredMessage) -> Self {
        EventEncoder {
            channel,
            epoch,
            message,
            deflated: OnceCell::new(),
        }
    }

    /// The frame for subscription `sub` (0 in history pages); data deflated when `deflate`
    /// and the data is at least [`COMPRESS_MIN_BYTES`] long.
    pub fn frame(&self, sub: u64, deflate: bool) -> ServerFrame {
        let message = self.message;
        let mut event = client::Event {
            sub,
            channel: self.channel.to_string(),
            epoch: self.epoch,
            offset: message.offset,
            event_type: message.event_type.as_deref().unwrap_or_default().to_string(),
            data: String::new(),
            publisher: message.publisher.to_string(),
            time_ms: message.time_ms,
            data_deflate: Vec::new(),
        };
        if deflate && message.data.len() >= COMPRESS_MIN_BYTES {
            event.data_deflate = self
                .deflated
                .get_or_init(|| {
                    let mut encoder =
                        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
                    encoder
                        .write_all(message.data.as_bytes())
                        .expect("writing to a Vec cannot fail");
                    encoder.finish().expect("writing to a Vec cannot fail")
                })
                .clone();
        } else {
            event.data = message.data.to_string();
        }
        ServerFrame {
            id: 0,
            kind: Some(Kind::Event(event)),
        }
    }
}

/// The frame of one event for one subscription (see [`EventEncoder`] for many).
pub fn event_frame(
    sub: u64,
    channel: &str,
    epoch: u64,
    message: &StoredMessage,
    deflate: bool,
) -> ServerFrame {
    EventEncoder::new(channel, epoch, message).frame(sub, deflate)
}

/// A typing change as the notice subscribers get.
fn typing_notice(change: &TypingChange) -> AppliedNotice {
    let event_type = if change.typing {
        "typing.started"
    } else {
        "typing.stopped"
    };
    AppliedNotice {
        channel: change.channel.clone(),
        event_type: event_type.to_string(),
        data: serde_json::json!({"user": change.typist.user, "device": change.typist.device}).to_string(),
        publisher: change.typist.user.clone(),
        time_ms: chorus_cluster::clock::unix_ms(),
    }
}

fn reply(subscriber: &Subscriber, id: u64, kind: Kind) {
    // A reply that does not fit means the critical queue is full: the session closes.
    if subscriber
        .outbox
        .push(Priority::Critical, ServerFrame { id, kind: Some(kind) })
        .is_err()
    {
        subscriber.outbox.close();
    }
}

/// An error reply with a stable code.
pub fn error_kind(code: chorus_core::ErrorCode, message: impl Into<String>, sub: u64) -> Kind {
    Kind::Error(client::Error {
        code: code.as_str().to_string(),
        message: message.into(),
        sub,
        retry_after_ms: 0,
    })
}

impl HubTask {
    async fn run(
        mut self,
        mut feed: broadcast::Receiver<Arc<FeedItem>>,
        mut typing: broadcast::Receiver<Arc<TypingChange>>,
        mut commands: mpsc::UnboundedReceiver<HubCommand>,
    ) {
        loop {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => return,
                },
                item = feed.recv() => match item {
                    Ok(item) => match &*item {
                        FeedItem::Event(event) => self.on_event(event),
                        FeedItem::Notice(notice) => self.on_notice(notice, Priority::Normal),
                        FeedItem::SnapshotInstalled(shard) => self.catch_up(Some(*shard)),
                        // The gateway's revocation watcher closes those connections.
                        FeedItem::Revoked(_) => {}
                    },
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "event feed lagged; catching subscriptions up from history");
                        self.catch_up(None);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                change = typing.recv() => match change {
                    Ok(change) => {
                        let notice = typing_notice(&change);
                        self.on_notice(&notice, Priority::High);
                    }
                    // Typing is ephemeral: what lagged is gone, the next change follows.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    fn reader(&self, channel: &ChannelName) -> &ShardReader {
        let ShardId(shard) = shard_for(channel.as_str(), self.readers.len() as u32);
        &self.readers[shard as usize]
    }

    fn on_command(&mut self, command: HubCommand) {
        match command {
            HubCommand::Subscribe(request) => self.subscribe(request),
            HubCommand::Unsubscribe {
                subscriber,
                request_id,
                sub,
            } => {
                let kind = if self.remove((subscriber.conn, sub)).is_some() {
                    Kind::UnsubscribeOk(client::UnsubscribeOk { sub })
                } else {
                    error_kind(
                        chorus_core::ErrorCode::NotFound,
                        format!("no subscription {sub} on this connection"),
                        sub,
                    )
                };
                reply(&subscriber, request_id, kind);
            }
            HubCommand::Disconnected { conn } => {
                for sub in self.by_conn.remove(&conn).unwrap_or_default() {
                    self.remove((conn, sub));
                }
                self.rosters.disconnected(conn);
            }
        }
    }

    fn remove(&mut self, key: SubKey) -> Option<Subscription> {
        let removed = self.subs.remove(&key)?;
        if let Some(subs) = self.by_conn.get_mut(&key.0) {
            subs.remove(&key.1);
            if subs.is_empty() {
                self.by_conn.remove(&key.0);
            }
        }
        match &removed.target {
            Target::Exact(channel) => {
                self.rosters.removed(key.0, channel);
                if let Some(keys) = self.exact.get_mut(channel) {
                    keys.retain(|k| *k != key);
                    if keys.is_empty() {
                        self.exact.remove(channel);
                    }
                }
            }
            Target::Pattern(pattern) => {
                self.patterns.remove(pattern, key);
            }
        }
        self.metrics.subscriptions.dec();
        Some(removed)
    }

    fn subscribe(&mut self, request: SubscribeRequest) {
        let key = (request.subscriber.conn, request.sub);
        let refusal = if self.subs.contains_key(&key) {
            Some(format!(
                "subscription id {} is already in use on this connection",
                request.sub
            ))
        } else if self.by_conn.get(&key.0).map_or(0, HashSet::len) >= self.max_per_connection {
            Some(format!(
                "this connection already holds {} subscriptions, the most allowed",
                self.max_per_connection
            ))
        } else {
            None
        };
        if let Some(message) = refusal {
            let kind = error_kind(chorus_core::ErrorCode::BadRequest, message, request.sub);
            return reply(&request.subscriber, request.request_id, kind);
        }
        let mut ok = client::SubscribeOk {
            sub: request.sub,
            position: None,
            recovered: true,
            first_retained: 0,
        };
        let mut subscription = Subscription {
            subscriber: request.subscriber.clone(),
            target: request.target.clone(),
            event_types: request.event_types,
            epoch: 0,
            delivered: 0,
        };
        match &request.target {
            Target::Exact(channel) => {
                let now = self.reader(channel).history(channel, 0, 0);
                ok.position = Some(client::Position {
                    epoch: now.epoch,
                    offset: now.last_offset,
                });
                ok.first_retained = now.first_retained;
                subscription.epoch = now.epoch;
                subscription.delivered = now.last_offset;
                if let Some(since) = request.since {
                    let epoch_changed = now.epoch != 0 && since.epoch != 0 && since.epoch != now.epoch;
                    if epoch_changed {
                        ok.recovered = false;
                    } else {
                        if now.epoch == 0 {
                            // Not (yet) written here: follow the client's epoch.
                            subscription.epoch = since.epoch;
                        }
                        // Retention dropped some: deliver from the oldest retained.
                        ok.recovered = since.offset.saturating_add(1) >= now.first_retained
                            || since.offset >= now.last_offset;
                        subscription.delivered = if ok.recovered {
                            since.offset
                        } else {
                            now.first_retained - 1
                        };
                    }
                }
                self.exact.entry(channel.clone()).or_default().push(key);
            }
            Target::Pattern(pattern) => self.patterns.insert(pattern, key),
        }
        if let Target::Exact(channel) = &request.target {
            self.rosters.added(key.0, &request.subscriber.member, channel);
        }
        self.subs.insert(key, subscription);
        self.by_conn.entry(key.0).or_default().insert(key.1);
        self.metrics.subscriptions.inc();
        reply(&request.subscriber, request.request_id, Kind::SubscribeOk(ok));
        if let Target::Exact(channel) = &request.target {
            let last = self.reader(channel).history(channel, 0, 0).last_offset;
            self.fill(key, last);
        }
    }

    /// Whether `channel` is read only with a subscription token.
    fn is_private(&self, channel: &str) -> bool {
        self.private_channels.iter().any(|p| p.matches(channel))
    }

    fn on_event(&mut self, event: &AppliedEvent) {
        let encoder = EventEncoder::new(event.channel.as_str(), event.epoch, &event.message);
        let exact: Vec<SubKey> = self.exact.get(&event.channel).cloned().unwrap_or_default();
        for key in exact {
            self.deliver_exact(key, event, &encoder);
        }
        if self.is_private(event.channel.as_str()) {
            return;
        }
        let mut matching = Vec::new();
        self.patterns.matching(event.channel.as_str(), &mut matching);
        for key in matching {
            let sub = &self.subs[&key];
            if !sub.wants(event.message.event_type.as_deref()) {
                continue;
            }
            let frame = encoder.frame(key.1, sub.subscriber.deflate);
            self.queue_event(key, frame);
        }
    }

    /// Queues a notice for every subscription of its channel; dropped where the queue is
    /// full (notices are live-only: the state they report can be asked for).
    fn on_notice(&mut self, notice: &AppliedNotice, priority: Priority) {
        let channel = notice.channel.as_str();
        let mut keys: Vec<SubKey> = self.exact.get(&notice.channel).cloned().unwrap_or_default();
        if !self.is_private(channel) {
            self.patterns.matching(channel, &mut keys);
        }
        for key in &keys {
            let sub = &self.subs[key];
            if !sub.wants(Some(&notice.event_type)) {
                continue;
            }
            let frame = ServerFrame {
                id: 0,
                kind: Some(Kind::Notice(client::Notice {
                    sub: key.1,
                    channel: channel.to_string(),
                    event_type: notice.event_type.clone(),
                    data: notice.data.clone(),
                    publisher: notice.publisher.clone(),
                    time_ms: notice.time_ms,
                })),
            };
            if sub.subscriber.outbox.push(priority, frame).is_ok() {
                self.metrics.notices_delivered.inc();
            }
        }
    }

    fn deliver_exact(&mut self, key: SubKey, event: &AppliedEvent, encoder: &EventEncoder<'_>) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        if sub.epoch == 0 {
            sub.epoch = event.epoch;
        } else if sub.epoch != event.epoch {
            return self.resync(key, "epoch_changed");
        }
        let offset = event.message.offset;
        if offset <= sub.delivered {
            return;
        }
        if offset > sub.delivered.saturating_add(1) && !self.fill(key, offset - 1) {
            return;
        }
        let sub = self.subs.get_mut(&key).expect("still subscribed after fill");
        sub.delivered = offset;
        if !sub.wants(event.message.event_type.as_deref()) {
            return;
        }
        let frame = encoder.frame(key.1, sub.subscriber.deflate);
        self.queue_event(key, frame);
    }

    /// Queues an event frame for a subscription; a full queue stops it with a resync.
    /// False when it was stopped.
    fn queue_event(&mut self, key: SubKey, frame: ServerFrame) -> bool {
        let Some(sub) = self.subs.get(&key) else {
            return false;
        };
        if sub.subscriber.outbox.push(Priority::High, frame).is_err() {
            self.resync(key, "slow_consumer");
            return false;
        }
        self.metrics.events_delivered.inc();
        true
    }

    /// Queues the events after the subscription's last offset up to `upto`, from the
    /// shard's applied history. False when the subscription had to be stopped.
    fn fill(&mut self, key: SubKey, upto: u64) -> bool {
        loop {
            let Some(sub) = self.subs.get(&key) else {
                return false;
            };
            let Target::Exact(channel) = &sub.target else {
                return true;
            };
            if sub.delivered >= upto {
                return true;
            }
            let want = ((upto - sub.delivered) as usize).min(FILL_PAGE);
            let page = self.reader(channel).history(channel, sub.delivered, want);
            if page.epoch != 0 && sub.epoch != 0 && page.epoch != sub.epoch {
                self.resync(key, "epoch_changed");
                return false;
            }
            match page.messages.first() {
                None => return true, // not applied here yet; the feed brings it
                Some(first) if Some(first.offset) != sub.delivered.checked_add(1) => {
                    // Retention dropped what the subscriber still needed.
                    self.resync(key, "retention");
                    return false;
                }
                Some(_) => {}
            }
            let (channel, epoch) = (channel.clone(), page.epoch);
            for message in &page.messages {
                let sub = self.subs.get_mut(&key).expect("checked above");
                sub.delivered = message.offset;
                if !sub.wants(message.event_type.as_deref()) {
                    continue;
                }
                let frame = event_frame(key.1, channel.as_str(), epoch, message, sub.subscriber.deflate);
                if !self.queue_event(key, frame) {
                    return false;
                }
            }
        }
    }

    /// After a lag or a snapshot install: brings exact subscriptions (of `shard`, or all) up
    /// to what is applied; pattern subscriptions cannot be caught up and are told to resync.
    fn catch_up(&mut self, shard: Option<ShardId>) {
        let keys: Vec<SubKey> = self.subs.keys().copied().collect();
        for key in keys {
            let target = self.subs[&key].target.clone();
            match target {
                Target::Exact(channel) => {
                    let reader = self.reader(&channel);
                    if shard.is_some_and(|s| s != reader.shard()) {
                        continue;
                    }
                    let last = reader.history(&channel, 0, 0).last_offset;
                    self.fill(key, last);
                }
                // Any pattern may match channels of the shard: they cannot tell what they missed.
                Target::Pattern(_) if shard.is_none() => self.resync(key, "node_lagged"),
                Target::Pattern(_) => self.resync(key, "snapshot_installed"),
            }
        }
    }

    fn resync(&mut self, key: SubKey, reason: &'static str) {
        let Some(sub) = self.remove(key) else {
            return;
        };
        self.metrics.resyncs.get_or_create(&ReasonLabel { reason }).inc();
        let channel = match &sub.target {
            Target::Exact(c) => c.to_string(),
            Target::Pattern(p) => p.as_str().to_string(),
        };
        tracing::debug!(conn = key.0, sub = key.1, %channel, reason, "subscription told to resync");
        let frame = ServerFrame {
            id: 0,
            kind: Some(Kind::Resync(client::Resync {
                sub: key.1,
                channel,
                reason: reason.to_string(),
            })),
        };
        if sub.subscriber.outbox.push(Priority::Critical, frame).is_err() {
            sub.subscriber.outbox.close();
        }
    }
}
