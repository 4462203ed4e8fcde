//! The replicated state of one shard and its deterministic `apply`.
//!
//! Each channel has an epoch, a gapless offset counter and a bounded history:
//!
//! ```text
//!  channel "chat.1"  epoch 17   last_offset 9
//!  history:  [5][6][7][8][9]     (1..4 dropped by max_entries / max_age)
//!  dedupe:   key "k-1" -> offset 7 (until time + dedupe_window)
//! ```
//!
//! The state lives in memory; the storage layer persists it as snapshots and re-applies the
//! committed log after them on restart, so the same inputs always rebuild the same state.

use crate::channel::ChannelName;
use crate::command::{Command, CommandResult, PublishCommand, Published};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Retention and dedupe limits. Replicated (see [`Command::SetLimits`]) so that every replica
/// retains and deduplicates identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLimits {
    /// Most events kept per channel.
    pub max_entries: u64,
    /// Events older than this (relative to the newest time applied) are dropped.
    pub max_age_ms: u64,
    /// How long an idempotency key is remembered.
    pub dedupe_window_ms: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            max_entries: 10_000,
            max_age_ms: 24 * 3600 * 1000,
            dedupe_window_ms: 10 * 60 * 1000,
        }
    }
}

/// Facts about the Raft entry being applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyContext {
    /// The entry's log index: unique within the shard, the same on every replica.
    pub log_index: u64,
}

/// One event in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Gapless offset within the channel, from 1.
    pub offset: u64,
    /// Optional application event type.
    pub event_type: Option<String>,
    /// JSON text.
    pub data: String,
    /// The publisher's subject.
    pub publisher: String,
    /// Milliseconds since the Unix epoch, as stamped at the accepting node.
    pub time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DedupeEntry {
    offset: u64,
    time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelLog {
    epoch: u64,
    last_offset: u64,
    messages: VecDeque<StoredMessage>,
    dedupe: HashMap<String, DedupeEntry>,
    /// Keys in the order they were recorded, for expiry.
    dedupe_order: VecDeque<(u64, String)>,
}

/// A page of a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The channel's epoch (0 when the channel has never been written).
    pub epoch: u64,
    /// The newest offset of the channel (0 when empty).
    pub last_offset: u64,
    /// The oldest offset still retained (`last_offset + 1` when nothing is retained).
    pub first_retained: u64,
    /// Events with offsets greater than `since`, oldest first, at most `limit`.
    pub messages: Vec<StoredMessage>,
}

/// The state machine of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    limits: HistoryLimits,
    cluster_id: Option<String>,
    /// The newest command time applied: apply's deterministic clock.
    clock_ms: u64,
    channels: BTreeMap<ChannelName, ChannelLog>,
}

impl ShardState {
    /// An empty shard with the given limits.
    pub fn new(limits: HistoryLimits) -> Self {
        ShardState {
            limits,
            ..Default::default()
        }
    }

    /// The replicated limits in force.
    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// The cluster id recorded by [`Command::SetClusterId`], if any.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.as_deref()
    }

    /// Number of channels with state.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Applies one committed command.
    pub fn apply(&mut self, ctx: ApplyContext, command: &Command) -> CommandResult {
        match command {
            Command::Publish(publish) => CommandResult::Published(self.publish(ctx, publish)),
            Command::SetLimits(limits) => {
                self.limits = *limits;
                let now = self.clock_ms;
                for log in self.channels.values_mut() {
                    log.enforce(limits, now);
                }
                CommandResult::LimitsSet
            }
            Command::SetClusterId(id) => {
                CommandResult::ClusterId(self.cluster_id.get_or_insert_with(|| id.clone()).clone())
            }
        }
    }

    /// Applies the commands of one entry, in order.
    pub fn apply_batch(&mut self, ctx: ApplyContext, batch: &[Command]) -> Vec<CommandResult> {
        batch.iter().map(|command| self.apply(ctx, command)).collect()
    }

    fn publish(&mut self, ctx: ApplyContext, cmd: &PublishCommand) -> Published {
        self.clock_ms = self.clock_ms.max(cmd.time_ms);
        let now = self.clock_ms;
        let limits = self.limits;
        let log = self
            .channels
            .entry(cmd.channel.clone())
            .or_insert_with(|| ChannelLog {
                epoch: ctx.log_index,
                last_offset: 0,
                messages: VecDeque::new(),
                dedupe: HashMap::new(),
                dedupe_order: VecDeque::new(),
            });
        log.expire_dedupe(limits.dedupe_window_ms, now);
        if let Some(key) = &cmd.idempotency_key
            && let Some(seen) = log.dedupe.get(key)
        {
            return Published {
                channel: cmd.channel.clone(),
                offset: seen.offset,
                epoch: log.epoch,
                duplicate: true,
            };
        }
        log.last_offset += 1;
        let offset = log.last_offset;
        log.messages.push_back(StoredMessage {
            offset,
            event_type: cmd.event_type.clone(),
            data: cmd.data.clone(),
            publisher: cmd.publisher.clone(),
            time_ms: cmd.time_ms,
        });
        if let Some(key) = &cmd.idempotency_key {
            // Recorded at the shard's clock (not the command's own time), so that the expiry
            // order stays monotonic even if a new leader's clock is behind the old one's.
            log.dedupe
                .insert(key.clone(), DedupeEntry { offset, time_ms: now });
            log.dedupe_order.push_back((now, key.clone()));
        }
        log.enforce(&limits, now);
        Published {
            channel: cmd.channel.clone(),
            offset,
            epoch: log.epoch,
            duplicate: false,
        }
    }

    /// Reads events of `channel` with offsets greater than `since`, at most `limit`.
    pub fn history(&self, channel: &ChannelName, since: u64, limit: usize) -> HistoryPage {
        let Some(log) = self.channels.get(channel) else {
            return HistoryPage {
                epoch: 0,
                last_offset: 0,
                first_retained: 1,
                messages: Vec::new(),
            };
        };
        let first_retained = log.messages.front().map_or(log.last_offset + 1, |m| m.offset);
        let skip = since.saturating_add(1).saturating_sub(first_retained);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        HistoryPage {
            epoch: log.epoch,
            last_offset: log.last_offset,
            first_retained,
            messages: log.messages.iter().skip(skip).take(limit).cloned().collect(),
        }
    }
}

impl ChannelLog {
    fn enforce(&mut self, limits: &HistoryLimits, now: u64) {
        while self.messages.len() as u64 > limits.max_entries {
            self.messages.pop_front();
        }
        while self
            .messages
            .front()
            .is_some_and(|m| m.time_ms.saturating_add(limits.max_age_ms) < now)
        {
            self.messages.pop_front();
        }
    }

    fn expire_dedupe(&mut self, window_ms: u64, now: u64) {
        while let Some((time_ms, _)) = self.dedupe_order.front() {
            if time_ms.saturating_add(window_ms) >= now {
                break;
            }
            let (_, key) = self.dedupe_order.pop_front().expect("front exists");
            if self
                .dedupe
                .get(&key)
                .is_some_and(|e| e.time_ms.saturating_add(window_ms) < now)
            {
                self.dedupe.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(channel: &str, data: &str, key: Option<&str>, time_ms: u64) -> Command {
        Command::Publish(PublishCommand {
            channel: ChannelName::new(channel).unwrap(),
            event_type: Some("message".into()),
            data: data.into(),
            publisher: "alice".into(),
            idempotency_key: key.map(String::from),
            time_ms,
        })
    }

    fn published(result: CommandResult) -> Published {
        match result {
            CommandResult::Published(p) => p,
            other => panic!("expected Published, got {other:?}"),
        }
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    #[test]
    fn offsets_are_gapless_per_channel_from_one() {
        let mut state = ShardState::default();
        let mut offsets = Vec::new();
        for (i, channel) in ["a", "b", "a", "a", "b"].iter().enumerate() {
            let ctx = ApplyContext {
                log_index: i as u64 + 1,
            };
            offsets.push(published(state.apply(ctx, &publish(channel, "1", None, 10))).offset);
        }
        assert_eq!(offsets, vec![1, 1, 2, 3, 2]);
        let page = state.history(&ch("a"), 0, 100);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(page.epoch, 1, "epoch is the log index that created the channel");
        assert_eq!(state.history(&ch("b"), 0, 100).epoch, 2);
    }

    #[test]
    fn idempotency_key_returns_original_offset_and_appends_nothing() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        let first = published(state.apply(ctx, &publish("a", "1", Some("k"), 10)));
        published(state.apply(ctx, &publish("a", "2", None, 11)));
        let retry = published(state.apply(ctx, &publish("a", "1", Some("k"), 12)));
        assert_eq!(retry.offset, first.offset);
        assert!(retry.duplicate && !first.duplicate);
        assert_eq!(state.history(&ch("a"), 0, 10).messages.len(), 2);
        // The same key on another channel is a different write.
        let other = published(state.apply(ctx, &publish("b", "1", Some("k"), 13)));
        assert!(!other.duplicate);
    }

    #[test]
    fn idempotency_key_expires_after_window() {
        let limits = HistoryLimits {
            dedupe_window_ms: 100,
            ..Default::default()
        };
        let mut state = ShardState::new(limits);
        let ctx = ApplyContext { log_index: 1 };
        published(state.apply(ctx, &publish("a", "1", Some("k"), 1_000)));
        let within = published(state.apply(ctx, &publish("a", "1", Some("k"), 1_100)));
        assert!(within.duplicate);
        let after = published(state.apply(ctx, &publish("a", "1", Some("k"), 1_101)));
        assert!(!after.duplicate);
        assert_eq!(after.offset, 2);
    }

    #[test]
    fn history_is_bounded_by_entries_and_age() {
        let limits = HistoryLimits {
            max_entries: 3,
            max_age_ms: 1_000,
            dedupe_window_ms: 0,
        };
        let mut state = ShardState::new(limits);
        let ctx = ApplyContext { log_index: 1 };
        for t in 0..5 {
            state.apply(ctx, &publish("a", "1", None, 100 + t));
        }
        let page = state.history(&ch("a"), 0, 10);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(page.first_retained, 3);
        // A write 2 s later ages out everything older than 1 s.
        state.apply(ctx, &publish("a", "1", None, 2_200));
        let page = state.history(&ch("a"), 0, 10);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![6]
        );
        assert_eq!(page.last_offset, 6);
    }

    #[test]
    fn history_reads_after_since_with_limit() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        for t in 0..10 {
            state.apply(ctx, &publish("a", &t.to_string(), None, t));
        }
        let page = state.history(&ch("a"), 4, 3);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            vec![5, 6, 7]
        );
        assert!(state.history(&ch("a"), 10, 3).messages.is_empty());
        assert!(state.history(&ch("a"), u64::MAX, 3).messages.is_empty());
        let unknown = state.history(&ch("nope"), 0, 3);
        assert_eq!((unknown.epoch, unknown.last_offset), (0, 0));
    }

    #[test]
    fn replicas_fed_the_same_commands_are_identical() {
        let commands: Vec<Command> = (0..200)
            .map(|i| publish(&format!("c{}", i % 7), "{}", (i % 3 == 0).then_some("k"), i))
            .collect();
        let run = || {
            let mut s = ShardState::default();
            for (i, c) in commands.iter().enumerate() {
                s.apply(ApplyContext { log_index: i as u64 }, c);
            }
            s
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn first_cluster_id_wins() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        let first = state.apply(ctx, &Command::SetClusterId("a".into()));
        let second = state.apply(ctx, &Command::SetClusterId("b".into()));
        assert_eq!(first, CommandResult::ClusterId("a".into()));
        assert_eq!(second, CommandResult::ClusterId("a".into()));
        assert_eq!(state.cluster_id(), Some("a"));
    }

    #[test]
    fn set_limits_applies_retention_at_once() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        for t in 0..5 {
            state.apply(ctx, &publish("a", "1", None, t));
        }
        let limits = HistoryLimits {
            max_entries: 2,
            ..Default::default()
        };
        assert_eq!(
            state.apply(ctx, &Command::SetLimits(limits)),
            CommandResult::LimitsSet
        );
        assert_eq!(state.limits(), limits);
        assert_eq!(state.history(&ch("a"), 0, 10).messages.len(), 2);
    }
}
