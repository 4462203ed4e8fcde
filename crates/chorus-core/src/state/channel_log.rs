//! A channel's history: its events, retention (entries, age, byte quotas) and the
//! idempotency keys that dedupe publishes; and the shard's operations on them.

use super::*;

/// One event in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Gapless offset within the channel, from 1.
    pub offset: u64,
    /// Optional application event type.
    pub event_type: Option<Arc<str>>,
    /// JSON text, shared with the command it came from.
    pub data: Arc<str>,
    /// The publisher's subject.
    pub publisher: Arc<str>,
    /// Milliseconds since the Unix epoch, as stamped at the accepting node.
    pub time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct DedupeEntry {
    pub(super) offset: u64,
    pub(super) time_ms: u64,
}

/// A channel's recorded idempotency keys. Every publish with a key looks one up and inserts
/// one, on every replica. Hashed with foldhash, seeded per process as the standard SipHash
/// is but several times faster on short keys: SipHash and these inserts were 3-4 % of
/// the cluster's CPU in a profile under `chorus bench publish`. The seed never reaches the
/// state's encoding or its results, only the map's layout in memory. Keys are shared with
/// the expiry queue: one allocation per key.
pub(super) type DedupeKeys = HashMap<Arc<str>, DedupeEntry, foldhash::quality::RandomState>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ChannelLog {
    pub(super) epoch: u64,
    pub(super) last_offset: u64,
    /// Shared with the applied output (and from there with every subscriber's frame).
    pub(super) messages: VecDeque<Arc<StoredMessage>>,
    /// Keyed by the command's key as it is in the log (the edge scopes a client's key to its
    /// publisher: see [`crate::scoped_idempotency_key`]).
    pub(super) dedupe: DedupeKeys,
    /// Keys in the order they were recorded, for expiry (shared with `dedupe`).
    pub(super) dedupe_order: VecDeque<(u64, Arc<str>)>,
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
    pub messages: Vec<Arc<StoredMessage>>,
}

/// What bounds a channel's history.
pub(super) struct Retention {
    pub(super) limits: HistoryLimits,
    pub(super) quotas: HistoryQuotas,
}

impl ChannelLog {
    /// Drops the oldest events beyond `max_entries`, older than `max_age`, and beyond the
    /// channel's byte quota (keeping the newest), counting them out of `bytes`.
    pub(super) fn enforce(
        &mut self,
        channel: &ChannelName,
        retention: &Retention,
        now: u64,
        bytes: &mut HistoryBytes,
    ) {
        let Retention { limits, quotas } = retention;
        while let Some(oldest) = self.messages.front() {
            let too_many = self.messages.len() as u64 > limits.max_entries;
            let too_old = oldest.time_ms.saturating_add(limits.max_age_ms) < now;
            let too_big = quotas.max_bytes_per_channel > 0
                && self.messages.len() > 1
                && bytes.of_channel(channel) > quotas.max_bytes_per_channel;
            if !(too_many || too_old || too_big) {
                break;
            }
            let dropped = self.messages.pop_front().expect("front exists");
            bytes.removed(channel, &dropped);
        }
    }

    pub(super) fn expire_dedupe(&mut self, window_ms: u64, now: u64) {
        while let Some((time_ms, _)) = self.dedupe_order.front() {
            if time_ms.saturating_add(window_ms) >= now {
                break;
            }
            let (_, key) = self.dedupe_order.pop_front().expect("front exists");
            if self
                .dedupe
                .get(&*key)
                .is_some_and(|e| e.time_ms.saturating_add(window_ms) < now)
            {
                self.dedupe.remove(&*key);
            }
        }
    }
}

impl ShardState {
    pub(super) fn retention(&self) -> Retention {
        Retention {
            limits: self.limits,
            quotas: self.quotas,
        }
    }

    pub(super) fn channel_log<'a>(
        channels: &'a mut BTreeMap<ChannelName, ChannelLog>,
        ctx: ApplyContext,
        channel: &ChannelName,
    ) -> &'a mut ChannelLog {
        channels.entry(channel.clone()).or_insert_with(|| ChannelLog {
            epoch: ctx.log_index,
            last_offset: 0,
            messages: VecDeque::new(),
            dedupe: DedupeKeys::default(),
            dedupe_order: VecDeque::new(),
        })
    }

    /// Appends an event produced by the cluster itself (session operations, presence).
    pub(super) fn append_event(
        &mut self,
        ctx: ApplyContext,
        channel: &ChannelName,
        event: ClusterEvent<'_>,
        out: &mut Vec<AppliedOutput>,
    ) -> (u64, u64) {
        let ClusterEvent {
            event_type,
            data,
            publisher,
            time_ms,
        } = event;
        let now = self.advance_clock(time_ms);
        let retention = self.retention();
        let log = Self::channel_log(&mut self.channels, ctx, channel);
        log.last_offset += 1;
        let message = Arc::new(StoredMessage {
            offset: log.last_offset,
            event_type: Some(event_type.into()),
            data: data.into(),
            publisher: publisher.into(),
            time_ms,
        });
        log.messages.push_back(message.clone());
        self.history_bytes.added(channel, &message);
        log.enforce(channel, &retention, now, &mut self.history_bytes);
        let (epoch, offset) = (log.epoch, log.last_offset);
        out.push(AppliedOutput::Event {
            channel: channel.clone(),
            epoch,
            message,
        });
        (epoch, offset)
    }

    pub(super) fn publish(
        &mut self,
        ctx: ApplyContext,
        cmd: &PublishCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> Result<Published, QuotaExceeded> {
        let now = self.advance_clock(cmd.time_ms);
        let retention = self.retention();
        if let Some(log) = self.channels.get_mut(&cmd.channel) {
            log.expire_dedupe(retention.limits.dedupe_window_ms, now);
            if let Some(key) = &cmd.idempotency_key
                && let Some(seen) = log.dedupe.get(key.as_str())
            {
                return Ok(Published {
                    channel: cmd.channel.clone(),
                    offset: seen.offset,
                    epoch: log.epoch,
                    duplicate: true,
                });
            }
        }
        let adding = cmd.data.len() as u64;
        if self
            .history_bytes
            .check_user(&self.quotas, &cmd.publisher, adding)
            .is_err()
        {
            // Retention runs on a channel when it is written: events past their age in
            // channels written to since still count. Drop them everywhere, then look again
            // (only a user at their quota pays for the walk).
            self.enforce_everywhere();
            self.history_bytes
                .check_user(&self.quotas, &cmd.publisher, adding)?;
        }
        // Created only now: a refused publish leaves no trace.
        let log = Self::channel_log(&mut self.channels, ctx, &cmd.channel);
        log.last_offset += 1;
        let offset = log.last_offset;
        let message = Arc::new(StoredMessage {
            offset,
            event_type: cmd.event_type.clone(),
            data: cmd.data.clone(),
            publisher: cmd.publisher.clone(),
            time_ms: cmd.time_ms,
        });
        log.messages.push_back(message.clone());
        if let Some(key) = &cmd.idempotency_key {
            // Recorded at the shard's clock (not the command's own time), so that the expiry
            // order stays monotonic even if a new leader's clock is behind the old one's.
            let key: Arc<str> = key.as_str().into();
            log.dedupe
                .insert(key.clone(), DedupeEntry { offset, time_ms: now });
            log.dedupe_order.push_back((now, key));
        }
        self.history_bytes.added(&cmd.channel, &message);
        log.enforce(&cmd.channel, &retention, now, &mut self.history_bytes);
        let epoch = log.epoch;
        out.push(AppliedOutput::Event {
            channel: cmd.channel.clone(),
            epoch,
            message,
        });
        Ok(Published {
            channel: cmd.channel.clone(),
            offset,
            epoch,
            duplicate: false,
        })
    }

    /// Whether a sweep at `now_ms` would change anything: an event past `max_age` or an
    /// idempotency key past the dedupe window. The leader asks before it proposes one, so that
    /// an idle shard stays quiet.
    pub fn sweep_due(&self, now_ms: u64) -> bool {
        let limits = self.limits;
        self.channels.values().any(|log| {
            log.messages
                .front()
                .is_some_and(|oldest| oldest.time_ms.saturating_add(limits.max_age_ms) < now_ms)
                || log
                    .dedupe_order
                    .front()
                    .is_some_and(|(time_ms, _)| time_ms.saturating_add(limits.dedupe_window_ms) < now_ms)
        })
    }

    /// Retention at `time_ms` over every channel, also those nobody writes to any more, which
    /// publishes never reach. A channel left empty keeps its epoch and last offset: its
    /// subscribers are not replicated, and a channel started over under a new epoch would
    /// make each of them resynchronize and miss the event that restarted it.
    pub(super) fn sweep(&mut self, time_ms: u64) -> CommandResult {
        let now = self.advance_clock(time_ms);
        let retention = self.retention();
        let mut events = 0;
        let mut keys = 0;
        for (channel, log) in &mut self.channels {
            let (messages, dedupe) = (log.messages.len(), log.dedupe.len());
            log.enforce(channel, &retention, now, &mut self.history_bytes);
            log.expire_dedupe(retention.limits.dedupe_window_ms, now);
            events += (messages - log.messages.len()) as u64;
            keys += (dedupe - log.dedupe.len()) as u64;
        }
        CommandResult::Swept { events, keys }
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
