//! The replicated state of one shard and its deterministic `apply`.
//!
//! Each channel has an epoch, a gapless offset counter and a bounded history:
//!
//! ```text
//!  channel "chat.1"  epoch 17   last_offset 9
//!  history:  [5][6][7][8][9]     (1..4 dropped by max_entries / max_age)
//!  dedupe:   key "5:alicek-1" -> offset 7 (until time + dedupe_window)
//! ```
//!
//! The state lives in memory; the storage layer persists it as snapshots and re-applies the
//! committed log after them on restart, so the same inputs always rebuild the same state.
//!
//! Here: [`ShardState`], its `apply` dispatch, sessions, rosters and read positions. A
//! channel's history, retention (with the sweep over idle channels) and dedupe are in
//! `channel_log`; presence and node leases in
//! `leases`; the layouts of earlier builds' snapshots in `layouts`.

use crate::channel::ChannelName;
use crate::collab::{OpError, SessionDoc};
use crate::command::{
    Command, CommandResult, CreateSessionCommand, DeviceGoneCommand, MarkReadCommand, PublishCommand,
    Published, ReadPosition, RenewLeaseCommand, RosterCommand, SessionOpApplied, SessionOpCommand,
    SessionPosition, SetPresenceCommand,
};
use crate::presence::{
    DevicePresence, NodeLease, PRESENCE_CHANNEL_PREFIX, PresenceStatus, UserPresence, change_event_type,
};
use crate::quota::{HistoryBytes, HistoryQuotas, QuotaExceeded};
use crate::roster::{Member, Rosters};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

mod channel_log;
mod layouts;
mod leases;
#[cfg(test)]
mod tests;

use channel_log::ChannelLog;
pub use channel_log::{HistoryPage, StoredMessage};
pub use layouts::{ShardStateWithoutQuotas, ShardStateWithoutRevocations};

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

/// What applying a command produced for subscribers, besides its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppliedOutput {
    /// An event appended to a channel's history (a publish, a session operation, a presence
    /// change).
    Event {
        /// The channel.
        channel: ChannelName,
        /// Its epoch.
        epoch: u64,
        /// The event, shared with the channel's history.
        message: Arc<StoredMessage>,
    },
    /// A notice for the channel's live subscribers, not kept in its history (read receipts).
    Notice {
        /// The channel.
        channel: ChannelName,
        /// `message.read`.
        event_type: String,
        /// JSON text.
        data: String,
        /// Who caused it.
        publisher: String,
        /// The command's time.
        time_ms: u64,
    },
    /// Tokens were revoked: connections holding them are closed.
    Revoked(crate::revocation::RevokeTarget),
}

/// An event the cluster writes itself (session operations, presence changes).
struct ClusterEvent<'a> {
    event_type: &'a str,
    data: String,
    publisher: &'a str,
    time_ms: u64,
}

/// The state machine of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    limits: HistoryLimits,
    cluster_id: Option<String>,
    /// The newest command time applied: apply's deterministic clock.
    clock_ms: u64,
    channels: BTreeMap<ChannelName, ChannelLog>,
    /// Collaborative sessions by channel.
    sessions: BTreeMap<ChannelName, SessionDoc>,
    /// Presence of the users whose presence channel is in this shard.
    presence: BTreeMap<String, UserPresence>,
    /// Leases of the nodes holding connections of those users.
    leases: BTreeMap<u64, NodeLease>,
    /// Read positions: channel, then user.
    reads: BTreeMap<ChannelName, BTreeMap<String, u64>>,
    /// Who is subscribed to the channels with rosters.
    rosters: Rosters,
    /// Revoked tokens (shard 0 only). A snapshot written before it existed ends just before
    /// it (see [`ShardStateWithoutRevocations`]).
    revocations: crate::revocation::Revocations,
    /// History quotas (replicated, see [`Command::SetQuotas`]). New fields go last: a
    /// snapshot of a build before quotas ends just before them ([`ShardStateWithoutQuotas`]).
    quotas: HistoryQuotas,
    /// Bytes of retained history per channel and per user, which the quotas bound.
    history_bytes: HistoryBytes,
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

    /// The revocations in force (replicated in shard 0).
    pub fn revocations(&self) -> &crate::revocation::Revocations {
        &self.revocations
    }

    /// Number of channels with state.
    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Applies one committed command, dropping what it produced for subscribers.
    pub fn apply(&mut self, ctx: ApplyContext, command: &Command) -> CommandResult {
        self.apply_with_output(ctx, command, &mut Vec::new())
    }

    /// Applies one committed command; events and notices for subscribers go to `out`.
    pub fn apply_with_output(
        &mut self,
        ctx: ApplyContext,
        command: &Command,
        out: &mut Vec<AppliedOutput>,
    ) -> CommandResult {
        match command {
            Command::Publish(publish) => match self.publish(ctx, publish, out) {
                Ok(published) => CommandResult::Published(published),
                Err(exceeded) => CommandResult::QuotaExceeded(exceeded),
            },
            Command::CreateSession(create) => {
                CommandResult::SessionCreated(self.create_session(ctx, create, out))
            }
            Command::SessionOp(op) => CommandResult::SessionOp(self.session_op(ctx, op, out)),
            Command::SetPresence(set) => CommandResult::Presence(self.set_presence(ctx, set, out)),
            Command::DeviceGone(gone) => CommandResult::Presence(self.device_gone(ctx, gone, out)),
            Command::RenewLease(renew) => CommandResult::Renewed {
                expirations: self.renew_lease(ctx, renew, out),
            },
            Command::ExpireLease(expire) => CommandResult::Expired {
                offline: self.expire_lease(ctx, expire.node, expire.time_ms, out),
            },
            Command::MarkRead(read) => CommandResult::Read(self.mark_read(read, out)),
            Command::RosterJoin(join) => CommandResult::Roster {
                connections: self.roster_join(ctx, join, out),
            },
            Command::RosterLeave(leave) => {
                let now = self.advance_clock(leave.time_ms);
                CommandResult::Roster {
                    connections: self.rosters.leave(&leave.channel, leave.conn, now, out),
                }
            }
            Command::SetLimits(limits) => {
                self.limits = *limits;
                self.enforce_everywhere();
                CommandResult::LimitsSet
            }
            Command::SetQuotas(quotas) => {
                self.quotas = *quotas;
                self.enforce_everywhere();
                CommandResult::LimitsSet
            }
            Command::SetClusterId(id) => {
                CommandResult::ClusterId(self.cluster_id.get_or_insert_with(|| id.clone()).clone())
            }
            Command::Sweep(sweep) => self.sweep(sweep.time_ms),
            Command::Revoke(revoke) => {
                let now = self.advance_clock(revoke.time_ms);
                self.revocations.revoke(revoke, now);
                out.push(AppliedOutput::Revoked(revoke.target.clone()));
                CommandResult::Revoked
            }
        }
    }

    /// Applies the commands of one entry, in order.
    pub fn apply_batch(&mut self, ctx: ApplyContext, batch: &[Command]) -> Vec<CommandResult> {
        self.apply_batch_with_output(ctx, batch, &mut Vec::new())
    }

    /// Applies the commands of one entry, in order; what they produced goes to `out`.
    pub fn apply_batch_with_output(
        &mut self,
        ctx: ApplyContext,
        batch: &[Command],
        out: &mut Vec<AppliedOutput>,
    ) -> Vec<CommandResult> {
        batch
            .iter()
            .map(|command| self.apply_with_output(ctx, command, out))
            .collect()
    }

    fn advance_clock(&mut self, time_ms: u64) -> u64 {
        self.clock_ms = self.clock_ms.max(time_ms);
        self.clock_ms
    }

    /// Applies the retention limits and quotas to every channel (after they changed).
    fn enforce_everywhere(&mut self) {
        let now = self.clock_ms;
        let retention = self.retention();
        for (channel, log) in &mut self.channels {
            log.enforce(channel, &retention, now, &mut self.history_bytes);
        }
    }

    /// The history quotas in force.
    pub fn quotas(&self) -> HistoryQuotas {
        self.quotas
    }

    /// Bytes of retained history per channel and per user.
    pub fn history_bytes(&self) -> &HistoryBytes {
        &self.history_bytes
    }

    fn create_session(
        &mut self,
        ctx: ApplyContext,
        cmd: &CreateSessionCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> Result<SessionPosition, OpError> {
        if self.sessions.contains_key(&cmd.channel) {
            return Err(OpError::Exists {
                session: cmd.channel.to_string(),
            });
        }
        let doc = SessionDoc::new(cmd.policy, cmd.document.clone())?;
        let data = serde_json::json!({
            "version": 0,
            "policy": cmd.policy.as_str(),
            "document": cmd.document,
        });
        self.sessions.insert(cmd.channel.clone(), doc);
        let event = ClusterEvent {
            event_type: "session.created",
            data: data.to_string(),
            publisher: &cmd.creator,
            time_ms: cmd.time_ms,
        };
        let (epoch, offset) = self.append_event(ctx, &cmd.channel, event, out);
        Ok(SessionPosition {
            version: 0,
            epoch,
            offset,
        })
    }

    fn session_op(
        &mut self,
        ctx: ApplyContext,
        cmd: &SessionOpCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> Result<SessionOpApplied, OpError> {
        let Some(doc) = self.sessions.get_mut(&cmd.channel) else {
            return Err(OpError::NoSession {
                session: cmd.channel.to_string(),
            });
        };
        let applied = doc.apply(&cmd.path, &cmd.kind, cmd.base_version)?;
        let mut data = serde_json::json!({
            "version": applied.version,
            "op": cmd.kind.name(),
            "path": cmd.path.to_string(),
            "base_version": cmd.base_version,
            "author": cmd.author,
        });
        if let Some(value) = cmd.kind.value() {
            data["value"] = value.clone();
        }
        if applied.overwrote_newer {
            data["overwrote"] = applied.previous.clone().unwrap_or(serde_json::Value::Null);
        }
        let event = ClusterEvent {
            event_type: "session.operation_applied",
            data: data.to_string(),
            publisher: &cmd.author,
            time_ms: cmd.time_ms,
        };
        let (epoch, offset) = self.append_event(ctx, &cmd.channel, event, out);
        Ok(SessionOpApplied {
            applied,
            epoch,
            offset,
        })
    }

    fn roster_join(&mut self, ctx: ApplyContext, cmd: &RosterCommand, out: &mut Vec<AppliedOutput>) -> u32 {
        let now = self.advance_clock(cmd.time_ms);
        if !self.node_alive(ctx, cmd.conn.node, cmd.conn.incarnation, cmd.lease_ms, now, out) {
            return 0;
        }
        let member = Member {
            user: cmd.user.clone(),
            device: cmd.device.clone(),
        };
        self.rosters.join(&cmd.channel, cmd.conn, member, now, out)
    }

    fn mark_read(&mut self, cmd: &MarkReadCommand, out: &mut Vec<AppliedOutput>) -> ReadPosition {
        self.advance_clock(cmd.time_ms);
        let last_offset = self.channels.get(&cmd.channel).map_or(0, |log| log.last_offset);
        let target = cmd.offset.min(last_offset);
        let position = self
            .reads
            .entry(cmd.channel.clone())
            .or_default()
            .entry(cmd.user.clone())
            .or_insert(0);
        let moved = target > *position;
        if moved {
            *position = target;
            out.push(AppliedOutput::Notice {
                channel: cmd.channel.clone(),
                event_type: "message.read".into(),
                data: serde_json::json!({"user": cmd.user, "offset": target}).to_string(),
                publisher: cmd.user.clone(),
                time_ms: cmd.time_ms,
            });
        }
        ReadPosition {
            channel: cmd.channel.clone(),
            read_offset: *position,
            last_offset,
            moved,
        }
    }

    /// The members of a channel's roster: each (user, device) once, sorted.
    pub fn roster(&self, channel: &ChannelName) -> Vec<Member> {
        self.rosters.members(channel)
    }

    /// A session's document, version and policy, with its channel's position.
    pub fn session(&self, channel: &ChannelName) -> Option<(SessionDoc, SessionPosition)> {
        let doc = self.sessions.get(channel)?;
        let (epoch, offset) = self
            .channels
            .get(channel)
            .map_or((0, 0), |log| (log.epoch, log.last_offset));
        Some((
            doc.clone(),
            SessionPosition {
                version: doc.version(),
                epoch,
                offset,
            },
        ))
    }

    /// A user's read position in a channel.
    pub fn read_position(&self, channel: &ChannelName, user: &str) -> ReadPosition {
        let read_offset = self
            .reads
            .get(channel)
            .and_then(|users| users.get(user))
            .copied()
            .unwrap_or(0);
        ReadPosition {
            channel: channel.clone(),
            read_offset,
            last_offset: self.channels.get(channel).map_or(0, |log| log.last_offset),
            moved: false,
        }
    }

    /// Every channel of this shard where `user` has a read position.
    pub fn read_positions_of(&self, user: &str) -> Vec<ReadPosition> {
        self.reads
            .iter()
            .filter(|(_, users)| users.contains_key(user))
            .map(|(channel, _)| self.read_position(channel, user))
            .collect()
    }
}
