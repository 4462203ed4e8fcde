//! History quotas: bytes of retained history per channel and per user.
//!
//! `[history] max_entries` bounds a channel's events, not their size: 10,000 events of 64 KiB
//! are 640 MB of one channel on every replica, and a user could fill every channel they may
//! write. The quotas bound the bytes (of event data) instead:
//!
//! - per channel: the oldest events are dropped (as for `max_entries`) until the channel holds
//!   at most `max_bytes_per_channel`; its newest event is always kept;
//! - per user: a publish that would take the bytes its publisher has retained in the shard
//!   over `max_bytes_per_user` is refused (`quota_exceeded`); the room comes back as
//!   retention drops the user's older events.
//!
//! Both are replicated ([`crate::Command::SetQuotas`]) and applied deterministically, like the
//! retention limits, so that every replica keeps and refuses the same. The byte counts are
//! part of the shard state; a state from a build before quotas gets them counted once.

use crate::channel::ChannelName;
use crate::state::StoredMessage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The quotas of a shard (0: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryQuotas {
    /// Most bytes of event data one channel retains.
    pub max_bytes_per_channel: u64,
    /// Most bytes of event data one user's publishes may hold in the shard's history.
    pub max_bytes_per_user: u64,
}

/// A publish refused for its publisher's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaExceeded {
    /// Bytes the user's retained events hold in the shard.
    pub used: u64,
    /// Bytes the publish would add.
    pub adding: u64,
    /// The quota.
    pub quota: u64,
}

/// What an event counts against the quotas: its data's bytes.
pub fn message_bytes(message: &StoredMessage) -> u64 {
    message.data.len() as u64
}

/// Bytes of retained history per channel and per publisher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryBytes {
    per_channel: BTreeMap<ChannelName, u64>,
    per_user: BTreeMap<Arc<str>, u64>,
}

impl HistoryBytes {
    /// Counts every event of `channels` (for a state that had no counts).
    pub fn counted<'a>(
        channels: impl IntoIterator<Item = (&'a ChannelName, impl IntoIterator<Item = &'a StoredMessage>)>,
    ) -> Self {
        let mut bytes = HistoryBytes::default();
        for (channel, messages) in channels {
            for message in messages {
                bytes.added(channel, message);
            }
        }
        bytes
    }

    /// `message` was appended to `channel`.
    pub fn added(&mut self, channel: &ChannelName, message: &StoredMessage) {
        let size = message_bytes(message);
        // Looked up before inserting: a channel's name is cloned once, not per event.
        match self.per_channel.get_mut(channel) {
            Some(bytes) => *bytes += size,
            None => {
                self.per_channel.insert(channel.clone(), size);
            }
        }
        match self.per_user.get_mut(&*message.publisher) {
            Some(bytes) => *bytes += size,
            None => {
                self.per_user.insert(message.publisher.clone(), size);
            }
        }
    }

    /// `message` was dropped from `channel`.
    pub fn removed(&mut self, channel: &ChannelName, message: &StoredMessage) {
        let size = message_bytes(message);
        fn take<K: Ord + std::borrow::Borrow<Q>, Q: Ord + ?Sized>(
            map: &mut BTreeMap<K, u64>,
            key: &Q,
            size: u64,
        ) {
            if let Some(bytes) = map.get_mut(key) {
                *bytes = bytes.saturating_sub(size);
                if *bytes == 0 {
                    map.remove(key);
                }
            }
        }
        take(&mut self.per_channel, channel, size);
        take(&mut self.per_user, &*message.publisher, size);
    }

    /// Bytes `channel` retains.
    pub fn of_channel(&self, channel: &ChannelName) -> u64 {
        self.per_channel.get(channel).copied().unwrap_or(0)
    }

    /// Bytes `user`'s events hold.
    pub fn of_user(&self, user: &str) -> u64 {
        self.per_user.get(user).copied().unwrap_or(0)
    }

    /// Refuses a publish of `adding` bytes by `user` that would go over `quotas`.
    pub fn check_user(&self, quotas: &HistoryQuotas, user: &str, adding: u64) -> Result<(), QuotaExceeded> {
        if quotas.max_bytes_per_user == 0 {
            return Ok(());
        }
        let used = self.of_user(user);
        if used.saturating_add(adding) > quotas.max_bytes_per_user {
            return Err(QuotaExceeded {
                used,
                adding,
                quota: quotas.max_bytes_per_user,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, CommandResult, PublishCommand};
    use crate::state::{ApplyContext, HistoryLimits, ShardState};

    fn publish(
        state: &mut ShardState,
        index: u64,
        channel: &str,
        user: &str,
        key: Option<&str>,
    ) -> CommandResult {
        publish_at(state, index, index, channel, user, key)
    }

    fn publish_at(
        state: &mut ShardState,
        index: u64,
        time_ms: u64,
        channel: &str,
        user: &str,
        key: Option<&str>,
    ) -> CommandResult {
        state.apply(
            ApplyContext { log_index: index },
            &Command::Publish(PublishCommand {
                channel: ChannelName::new(channel).unwrap(),
                data: "\"abcdefgh\"".into(), // 10 bytes
                event_type: None,
                publisher: user.into(),
                idempotency_key: key.map(str::to_string),
                time_ms,
            }),
        )
    }

    fn quotas(per_channel: u64, per_user: u64) -> Command {
        Command::SetQuotas(HistoryQuotas {
            max_bytes_per_channel: per_channel,
            max_bytes_per_user: per_user,
        })
    }

    #[test]
    fn a_channel_keeps_its_newest_events_within_its_byte_quota() {
        let mut state = ShardState::new(HistoryLimits::default());
        state.apply(ApplyContext { log_index: 1 }, &quotas(35, 0));
        for i in 0..5 {
            assert!(matches!(
                publish(&mut state, 10 + i, "chat.room", "alice", None),
                CommandResult::Published(_)
            ));
        }
        let channel = ChannelName::new("chat.room").unwrap();
        let page = state.history(&channel, 0, 100);
        assert_eq!(
            page.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(state.history_bytes().of_channel(&channel), 30);
        assert_eq!(state.history_bytes().of_user("alice"), 30);
        // A lower quota applies at once; the newest event stays even when alone over it.
        state.apply(ApplyContext { log_index: 20 }, &quotas(5, 0));
        assert_eq!(state.history(&channel, 0, 100).messages.len(), 1);
        assert_eq!(state.history_bytes().of_user("alice"), 10);
    }

    #[test]
    fn a_user_over_their_quota_is_refused_until_retention_makes_room() {
        let mut state = ShardState::new(HistoryLimits {
            max_entries: 2,
            ..HistoryLimits::default()
        });
        state.apply(ApplyContext { log_index: 1 }, &quotas(0, 30));
        for (i, channel) in ["a", "b", "c"].iter().enumerate() {
            let result = publish(&mut state, 10 + i as u64, channel, "mallory", Some(channel));
            assert!(matches!(result, CommandResult::Published(_)), "{result:?}");
        }
        let refused = publish(&mut state, 20, "d", "mallory", None);
        assert_eq!(
            refused,
            CommandResult::QuotaExceeded(QuotaExceeded {
                used: 30,
                adding: 10,
                quota: 30
            })
        );
        // A retry of an accepted publish is still answered as a duplicate.
        let retry = publish(&mut state, 21, "a", "mallory", Some("a"));
        assert!(matches!(retry, CommandResult::Published(p) if p.duplicate));
        // Another user has their own quota.
        assert!(matches!(
            publish(&mut state, 22, "a", "alice", None),
            CommandResult::Published(_)
        ));
        assert!(matches!(
            publish(&mut state, 23, "a", "alice", None),
            CommandResult::Published(_)
        ));
        // Channel a keeps 2 events (max_entries): mallory's was dropped, and she has room.
        assert_eq!(state.history_bytes().of_user("mallory"), 20);
        assert!(matches!(
            publish(&mut state, 24, "d", "mallory", None),
            CommandResult::Published(_)
        ));
    }

    #[test]
    fn events_past_their_age_in_quiet_channels_stop_counting() {
        let mut state = ShardState::new(HistoryLimits {
            max_age_ms: 1_000,
            ..HistoryLimits::default()
        });
        state.apply(ApplyContext { log_index: 1 }, &quotas(0, 20));
        for (i, channel) in ["a", "b"].iter().enumerate() {
            let result = publish_at(&mut state, 10 + i as u64, 10, channel, "mallory", None);
            assert!(matches!(result, CommandResult::Published(_)), "{result:?}");
        }
        let refused = publish_at(&mut state, 20, 500, "c", "mallory", None);
        assert!(matches!(refused, CommandResult::QuotaExceeded(_)), "{refused:?}");
        assert_eq!(
            state.channel_count(),
            2,
            "a refused publish leaves no channel behind"
        );
        // Channels a and b are never written again, but their events expire.
        let later = publish_at(&mut state, 21, 2_000, "c", "mallory", None);
        assert!(matches!(later, CommandResult::Published(_)), "{later:?}");
        assert_eq!(state.history_bytes().of_user("mallory"), 10);
    }
}
