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
    pub event_type: Option<Arc<str>>,
    /// JSON text, shared with the command it came from.
    pub data: Arc<str>,
    /// The publisher's subject.
    pub publisher: Arc<str>,
    /// Milliseconds since the Unix epoch, as stamped at the accepting node.
    pub time_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DedupeEntry {
    offset: u64,
    time_ms: u64,
}

/// A channel's recorded idempotency keys. Every publish with a key looks one up and inserts
/// one, on every replica. Hashed with foldhash, seeded per process as the standard SipHash
/// is but several times faster on short keys: SipHash and these inserts were 3-4 % of
/// the cluster's CPU in a profile under `chorus bench publish`. The seed never reaches the
/// state's encoding or its results, only the map's layout in memory. Keys are shared with
/// the expiry queue: one allocation per key.
type DedupeKeys = HashMap<Arc<str>, DedupeEntry, foldhash::quality::RandomState>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ChannelLog {
    epoch: u64,
    last_offset: u64,
    /// Shared with the applied output (and from there with every subscriber's frame).
    messages: VecDeque<Arc<StoredMessage>>,
    /// Keyed by the command's key as it is in the log (the edge scopes a client's key to its
    /// publisher: see [`crate::scoped_idempotency_key`]).
    dedupe: DedupeKeys,
    /// Keys in the order they were recorded, for expiry (shared with `dedupe`).
    dedupe_order: VecDeque<(u64, Arc<str>)>,
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

/// [`ShardState`] as snapshots of builds before quotas encoded it.
#[derive(Deserialize)]
pub struct ShardStateWithoutQuotas {
    limits: HistoryLimits,
    cluster_id: Option<String>,
    clock_ms: u64,
    channels: BTreeMap<ChannelName, ChannelLog>,
    sessions: BTreeMap<ChannelName, SessionDoc>,
    presence: BTreeMap<String, UserPresence>,
    leases: BTreeMap<u64, NodeLease>,
    reads: BTreeMap<ChannelName, BTreeMap<String, u64>>,
    rosters: Rosters,
    revocations: crate::revocation::Revocations,
}

impl From<ShardStateWithoutQuotas> for ShardState {
    fn from(old: ShardStateWithoutQuotas) -> Self {
        ShardState {
            history_bytes: HistoryBytes::counted(
                old.channels
                    .iter()
                    .map(|(channel, log)| (channel, log.messages.iter().map(|m| &**m))),
            ),
            limits: old.limits,
            cluster_id: old.cluster_id,
            clock_ms: old.clock_ms,
            channels: old.channels,
            sessions: old.sessions,
            presence: old.presence,
            leases: old.leases,
            reads: old.reads,
            rosters: old.rosters,
            revocations: old.revocations,
            quotas: HistoryQuotas::default(),
        }
    }
}

/// [`ShardState`] as snapshots of builds before revocations encoded it (postcard has no
/// field names: a new field cannot be read as absent, so the old layout is read whole).
#[derive(Deserialize)]
pub struct ShardStateWithoutRevocations {
    limits: HistoryLimits,
    cluster_id: Option<String>,
    clock_ms: u64,
    channels: BTreeMap<ChannelName, ChannelLog>,
    sessions: BTreeMap<ChannelName, SessionDoc>,
    presence: BTreeMap<String, UserPresence>,
    leases: BTreeMap<u64, NodeLease>,
    reads: BTreeMap<ChannelName, BTreeMap<String, u64>>,
    rosters: Rosters,
}

impl From<ShardStateWithoutRevocations> for ShardState {
    fn from(old: ShardStateWithoutRevocations) -> Self {
        ShardStateWithoutQuotas {
            limits: old.limits,
            cluster_id: old.cluster_id,
            clock_ms: old.clock_ms,
            channels: old.channels,
            sessions: old.sessions,
            presence: old.presence,
            leases: old.leases,
            reads: old.reads,
            rosters: old.rosters,
            revocations: Default::default(),
        }
        .into()
    }
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

    fn retention(&self) -> Retention {
        Retention {
            limits: self.limits,
            quotas: self.quotas,
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

    fn channel_log<'a>(
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
    fn append_event(
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

    fn publish(
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

    /// Changes a user's presence with `change` and appends the event it makes visible.
    fn change_presence(
        &mut self,
        ctx: ApplyContext,
        user: &str,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
        change: impl FnOnce(&mut UserPresence),
    ) -> PresenceStatus {
        let entry = self.presence.entry(user.to_string()).or_default();
        let before = entry.clone();
        change(entry);
        let after = entry.clone();
        if let Some(event_type) = change_event_type(&before, &after)
            && let Ok(channel) = ChannelName::new(format!("{PRESENCE_CHANNEL_PREFIX}{user}"))
        {
            let data = after.to_json(user).to_string();
            let event = ClusterEvent {
                event_type,
                data,
                publisher: user,
                time_ms,
            };
            self.append_event(ctx, &channel, event, out);
        }
        after.status()
    }

    /// Accepts a sign of life from `incarnation` of `node` at `now`: extends its lease, and
    /// when the node restarted, takes its earlier connections' devices and memberships away.
    /// False (nothing done) for a late write of a replaced process: an older incarnation
    /// while the newer one's lease is live. (Once that lease lapsed, an older incarnation
    /// number is accepted: a node whose clock went back on restart still comes online.)
    fn node_alive(
        &mut self,
        ctx: ApplyContext,
        node: u64,
        incarnation: u64,
        lease_ms: u64,
        now: u64,
        out: &mut Vec<AppliedOutput>,
    ) -> bool {
        let expires_ms = now.saturating_add(lease_ms);
        let lease = self.leases.entry(node).or_insert(NodeLease {
            incarnation,
            expires_ms,
            expirations: 0,
        });
        if incarnation < lease.incarnation && lease.expires_ms > now {
            return false;
        }
        let restarted = lease.incarnation != incarnation;
        lease.incarnation = incarnation;
        lease.expires_ms = if restarted {
            expires_ms
        } else {
            lease.expires_ms.max(expires_ms)
        };
        if restarted {
            let users: Vec<String> = self
                .presence
                .iter()
                .filter(|(_, p)| {
                    p.devices.values().any(|d| {
                        d.conn
                            .is_some_and(|c| c.node == node && c.incarnation != incarnation)
                    })
                })
                .map(|(user, _)| user.clone())
                .collect();
            let earlier = |c: &crate::presence::ConnRef| c.node == node && c.incarnation != incarnation;
            self.devices_offline(ctx, users, now, out, earlier);
            self.rosters.drop_where(earlier, now, out);
        }
        true
    }

    /// Every device whose connection matches `gone` goes offline; returns how many.
    fn devices_offline(
        &mut self,
        ctx: ApplyContext,
        users: Vec<String>,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
        gone: impl Fn(&crate::presence::ConnRef) -> bool,
    ) -> u32 {
        let mut count = 0;
        for user in users {
            self.change_presence(ctx, &user, time_ms, out, |p| {
                for device in p.devices.values_mut() {
                    if device.conn.as_ref().is_some_and(&gone) {
                        device.conn = None;
                        device.status = PresenceStatus::Offline;
                        device.last_seen_ms = time_ms;
                        count += 1;
                    }
                }
            });
        }
        count
    }

    fn set_presence(
        &mut self,
        ctx: ApplyContext,
        cmd: &SetPresenceCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> PresenceStatus {
        let now = self.advance_clock(cmd.time_ms);
        let current = |state: &Self| {
            state
                .presence
                .get(&cmd.user)
                .map_or(PresenceStatus::Offline, UserPresence::status)
        };
        // A status change (not a connect) from a connection the device has left since: the
        // device belongs to its newer connection.
        if !cmd.connect
            && self
                .presence
                .get(&cmd.user)
                .and_then(|p| p.devices.get(&cmd.device))
                .and_then(|d| d.conn)
                .is_some_and(|c| c != cmd.conn)
        {
            return current(self);
        }
        if !self.node_alive(ctx, cmd.conn.node, cmd.conn.incarnation, cmd.lease_ms, now, out) {
            return current(self);
        }
        self.change_presence(ctx, &cmd.user, cmd.time_ms, out, |p| {
            p.devices.insert(
                cmd.device.clone(),
                DevicePresence {
                    status: cmd.status,
                    custom_status: cmd.custom_status.clone(),
                    last_seen_ms: cmd.time_ms,
                    conn: Some(cmd.conn),
                },
            );
        })
    }

    fn device_gone(
        &mut self,
        ctx: ApplyContext,
        cmd: &DeviceGoneCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> PresenceStatus {
        self.advance_clock(cmd.time_ms);
        if !self.presence.contains_key(&cmd.user) {
            return PresenceStatus::Offline;
        }
        self.change_presence(ctx, &cmd.user, cmd.time_ms, out, |p| {
            if let Some(device) = p.devices.get_mut(&cmd.device)
                && device.conn == Some(cmd.conn)
            {
                device.conn = None;
                device.status = PresenceStatus::Offline;
                device.last_seen_ms = cmd.time_ms;
            }
        })
    }

    /// A renewal: returns how many times the node's lease has lapsed so far (the node
    /// compares it with what it saw last, and writes its connections' presence again when
    /// it grew), or `None` for a late renewal of a replaced process.
    fn renew_lease(
        &mut self,
        ctx: ApplyContext,
        cmd: &RenewLeaseCommand,
        out: &mut Vec<AppliedOutput>,
    ) -> Option<u64> {
        let now = self.advance_clock(cmd.time_ms);
        if !self.node_alive(ctx, cmd.node, cmd.incarnation, cmd.lease_ms, now, out) {
            return None;
        }
        self.leases.get(&cmd.node).map(|lease| lease.expirations)
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

    fn expire_lease(
        &mut self,
        ctx: ApplyContext,
        node: u64,
        time_ms: u64,
        out: &mut Vec<AppliedOutput>,
    ) -> u32 {
        let now = self.advance_clock(time_ms);
        match self.leases.get_mut(&node) {
            // Kept, marked: the node's next renewal learns that its devices were taken offline.
            Some(lease) if lease.expires_ms <= now => lease.expirations += 1,
            _ => return 0, // Renewed meanwhile.
        }
        let users: Vec<String> = self
            .presence
            .iter()
            .filter(|(_, p)| p.devices.values().any(|d| d.conn.is_some_and(|c| c.node == node)))
            .map(|(user, _)| user.clone())
            .collect();
        self.rosters.drop_where(|c| c.node == node, now, out);
        self.devices_offline(ctx, users, now, out, |c| c.node == node)
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

    /// Nodes whose lease in this shard lapsed at `now_ms` while devices still count on it:
    /// the shard leader proposes [`Command::ExpireLease`] for each.
    pub fn lapsed_leases(&self, now_ms: u64) -> Vec<u64> {
        self.leases
            .iter()
            .filter(|(_, lease)| lease.expires_ms <= now_ms)
            .map(|(node, _)| *node)
            .filter(|node| {
                self.rosters.has_node(*node)
                    || self.presence.values().any(|p| {
                        p.devices
                            .values()
                            .any(|d| d.conn.is_some_and(|c| c.node == *node))
                    })
            })
            .collect()
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

    /// A user's presence, if this shard has any for them.
    pub fn presence(&self, user: &str) -> Option<&UserPresence> {
        self.presence.get(user)
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

/// What bounds a channel's history.
struct Retention {
    limits: HistoryLimits,
    quotas: HistoryQuotas,
}

impl ChannelLog {
    /// Drops the oldest events beyond `max_entries`, older than `max_age`, and beyond the
    /// channel's byte quota (keeping the newest), counting them out of `bytes`.
    fn enforce(&mut self, channel: &ChannelName, retention: &Retention, now: u64, bytes: &mut HistoryBytes) {
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

    fn expire_dedupe(&mut self, window_ms: u64, now: u64) {
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

    /// Found by probing: a publish by mallory with key `order-42` made alice's later publish
    /// with the same key answer `duplicate: true`, and alice's message was lost. The edges
    /// scope a client's key to its publisher before proposing.
    #[test]
    fn another_publishers_key_does_not_swallow_a_publish() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        let by = |publisher: &str, data: &str, time_ms: u64| {
            let key = crate::scoped_idempotency_key(publisher, "order-42");
            let mut command = publish("orders", data, Some(&key), time_ms);
            if let Command::Publish(p) = &mut command {
                p.publisher = publisher.into();
            }
            command
        };
        let squatted = published(state.apply(ctx, &by("mallory", "\"fake\"", 10)));
        let real = published(state.apply(ctx, &by("alice", "\"real\"", 11)));
        assert!(!real.duplicate, "alice's publish was taken for mallory's");
        assert_eq!(real.offset, squatted.offset + 1);
        let retry = published(state.apply(ctx, &by("alice", "\"real\"", 12)));
        assert!(
            retry.duplicate && retry.offset == real.offset,
            "alice's own retry is one"
        );
        // Publisher and key are told apart whatever they contain.
        assert_ne!(
            crate::scoped_idempotency_key("ab", "c"),
            crate::scoped_idempotency_key("a", "bc")
        );
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

    fn conn(node: u64, incarnation: u64, conn: u64) -> crate::ConnRef {
        crate::ConnRef {
            node,
            incarnation,
            conn,
        }
    }

    fn online(user: &str, device: &str, c: crate::ConnRef, time_ms: u64) -> Command {
        Command::SetPresence(SetPresenceCommand {
            user: user.into(),
            device: device.into(),
            status: PresenceStatus::Online,
            custom_status: None,
            conn: c,
            lease_ms: 10_000,
            connect: true,
            time_ms,
        })
    }

    fn gone(user: &str, device: &str, c: crate::ConnRef, time_ms: u64) -> Command {
        Command::DeviceGone(DeviceGoneCommand {
            user: user.into(),
            device: device.into(),
            conn: c,
            time_ms,
        })
    }

    fn event_types(out: &[AppliedOutput]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                AppliedOutput::Event { message, .. } => message.event_type.as_deref().map(String::from),
                AppliedOutput::Notice { event_type, .. } => Some(event_type.clone()),
                AppliedOutput::Revoked(_) => None,
            })
            .collect()
    }

    #[test]
    fn presence_follows_devices_and_node_leases() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        let mut out = Vec::new();
        let (phone, laptop) = (conn(1, 11, 1), conn(2, 22, 1));
        state.apply_with_output(ctx, &online("al", "phone", phone, 100), &mut out);
        state.apply_with_output(ctx, &online("al", "laptop", laptop, 200), &mut out);
        // A stale disconnect (another connection of the device) changes nothing.
        state.apply_with_output(ctx, &gone("al", "phone", conn(1, 11, 99), 300), &mut out);
        assert_eq!(
            state.apply_with_output(ctx, &gone("al", "phone", phone, 400), &mut out),
            CommandResult::Presence(PresenceStatus::Online)
        );
        assert_eq!(
            event_types(&out),
            vec!["presence.online", "presence.changed", "presence.changed"]
        );
        // Node 2 renews until 5_000 + 10_000; an expiry before that does nothing.
        let renew = |time_ms| {
            Command::RenewLease(RenewLeaseCommand {
                node: 2,
                incarnation: 22,
                lease_ms: 10_000,
                time_ms,
            })
        };
        state.apply(ctx, &renew(5_000));
        assert!(state.lapsed_leases(14_999).is_empty());
        assert_eq!(state.lapsed_leases(15_000), vec![2]);
        let expire = |time_ms| Command::ExpireLease(crate::command::ExpireLeaseCommand { node: 2, time_ms });
        assert_eq!(
            state.apply(ctx, &expire(14_000)),
            CommandResult::Expired { offline: 0 }
        );
        out.clear();
        assert_eq!(
            state.apply_with_output(ctx, &expire(15_000), &mut out),
            CommandResult::Expired { offline: 1 }
        );
        assert_eq!(event_types(&out), vec!["presence.offline"]);
        let al = state.presence("al").unwrap();
        assert_eq!(al.status(), PresenceStatus::Offline);
        assert_eq!(al.last_seen_ms(), 15_000);
        assert!(state.lapsed_leases(u64::MAX).is_empty());
        // Presence events land in the user's presence channel, in order.
        let page = state.history(&ch("presence.al"), 0, 10);
        assert_eq!(page.messages.len(), 4);
    }

    #[test]
    fn a_restarted_node_takes_its_old_connections_offline() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        state.apply(ctx, &online("bo", "d", conn(3, 1, 1), 100));
        let renewed = Command::RenewLease(RenewLeaseCommand {
            node: 3,
            incarnation: 2,
            lease_ms: 10_000,
            time_ms: 200,
        });
        assert_eq!(
            state.apply(ctx, &renewed),
            CommandResult::Renewed { expirations: Some(0) }
        );
        assert_eq!(state.presence("bo").unwrap().status(), PresenceStatus::Offline);
        // After an expiry, renewals count it.
        let expire = Command::ExpireLease(crate::command::ExpireLeaseCommand {
            node: 3,
            time_ms: 60_000,
        });
        state.apply(ctx, &expire);
        let late = Command::RenewLease(RenewLeaseCommand {
            node: 3,
            incarnation: 2,
            lease_ms: 10_000,
            time_ms: 61_000,
        });
        assert_eq!(
            state.apply(ctx, &late),
            CommandResult::Renewed { expirations: Some(1) }
        );
        // A late write of the first process (incarnation 1) while incarnation 2's lease is
        // live is ignored...
        let late_old = Command::RenewLease(RenewLeaseCommand {
            node: 3,
            incarnation: 1,
            lease_ms: 10_000,
            time_ms: 62_000,
        });
        assert_eq!(
            state.apply(ctx, &late_old),
            CommandResult::Renewed { expirations: None }
        );
        // ...but once that lease lapsed, a lower incarnation (a clock that went back on
        // restart) is a new process like any other.
        state.apply(ctx, &online("bo", "d", conn(3, 1, 5), 80_000));
        assert_eq!(state.presence("bo").unwrap().status(), PresenceStatus::Online);
    }

    #[test]
    fn renewals_report_lapsed_leases_even_after_a_status_write() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        state.apply(ctx, &online("cy", "a", conn(4, 7, 1), 0));
        state.apply(
            ctx,
            &Command::ExpireLease(crate::command::ExpireLeaseCommand {
                node: 4,
                time_ms: 20_000,
            }),
        );
        assert_eq!(state.presence("cy").unwrap().status(), PresenceStatus::Offline);
        // A write of the node lands first (a retry after a partition healed)...
        state.apply(ctx, &online("cy", "b", conn(4, 7, 2), 20_100));
        let renew = |time_ms| {
            Command::RenewLease(RenewLeaseCommand {
                node: 4,
                incarnation: 7,
                lease_ms: 10_000,
                time_ms,
            })
        };
        // ...renewals still report the expiry (every one: a node that missed a reply learns
        // it from the next).
        for time_ms in [20_200, 20_300] {
            assert_eq!(
                state.apply(ctx, &renew(time_ms)),
                CommandResult::Renewed { expirations: Some(1) }
            );
        }
    }

    #[test]
    fn late_writes_of_replaced_connections_and_processes_change_nothing() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        let (old, new) = (conn(5, 1, 1), conn(5, 1, 2));
        state.apply(ctx, &online("di", "d", old, 0));
        state.apply(ctx, &online("di", "d", new, 10));
        // A status change of the old connection, applied late, does not take the device back.
        let mut late = online("di", "d", old, 20);
        if let Command::SetPresence(set) = &mut late {
            set.connect = false;
            set.status = PresenceStatus::Away;
        }
        state.apply(ctx, &late);
        state.apply(ctx, &gone("di", "d", old, 30));
        let di = state.presence("di").unwrap();
        assert_eq!(
            (di.status(), di.devices["d"].conn),
            (PresenceStatus::Online, Some(new))
        );
        // A write of an earlier process of the node (incarnation 0 < 1) is ignored.
        state.apply(ctx, &online("di", "e", conn(5, 0, 9), 40));
        assert!(!state.presence("di").unwrap().devices.contains_key("e"));
    }

    #[test]
    fn roster_members_leave_with_their_nodes_lease_or_restart() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        let join = |c: crate::ConnRef, user: &str, time_ms| {
            Command::RosterJoin(RosterCommand {
                channel: ch("room.a"),
                user: user.into(),
                device: "d".into(),
                conn: c,
                lease_ms: 10_000,
                time_ms,
            })
        };
        let mut out = Vec::new();
        state.apply_with_output(ctx, &join(conn(1, 5, 1), "ann", 0), &mut out);
        state.apply_with_output(ctx, &join(conn(2, 5, 1), "bo", 0), &mut out);
        // A roster member alone keeps its node's lease checked.
        assert_eq!(state.lapsed_leases(10_000), vec![1, 2]);
        let expire = Command::ExpireLease(crate::command::ExpireLeaseCommand {
            node: 1,
            time_ms: 10_000,
        });
        state.apply_with_output(ctx, &expire, &mut out);
        // Node 2 restarts (incarnation 6): its earlier members leave.
        state.apply_with_output(ctx, &join(conn(2, 6, 3), "cy", 10_500), &mut out);
        assert_eq!(
            event_types(&out),
            vec![
                "presence.join",
                "presence.join",
                "presence.leave",
                "presence.leave",
                "presence.join"
            ]
        );
        let members: Vec<String> = state.roster(&ch("room.a")).into_iter().map(|m| m.user).collect();
        assert_eq!(members, vec!["cy"]);
    }

    #[test]
    fn read_positions_only_move_forward_and_count_unread() {
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        for t in 0..5 {
            state.apply(ctx, &publish("a", "1", None, t));
        }
        let read = |offset| {
            Command::MarkRead(MarkReadCommand {
                channel: ch("a"),
                user: "al".into(),
                offset,
                time_ms: 10,
            })
        };
        let mut out = Vec::new();
        let CommandResult::Read(position) = state.apply_with_output(ctx, &read(3), &mut out) else {
            panic!("a read position")
        };
        assert_eq!(
            (position.read_offset, position.unread(), position.moved),
            (3, 2, true)
        );
        assert_eq!(event_types(&out), vec!["message.read"]);
        let CommandResult::Read(back) = state.apply(ctx, &read(1)) else {
            panic!()
        };
        assert_eq!((back.read_offset, back.moved), (3, false));
        let CommandResult::Read(beyond) = state.apply(ctx, &read(99)) else {
            panic!()
        };
        assert_eq!((beyond.read_offset, beyond.unread()), (5, 0));
        assert_eq!(state.read_positions_of("al").len(), 1);
        assert_eq!(state.read_position(&ch("a"), "bo").unread(), 5);
    }

    #[test]
    fn session_operations_append_events_and_refuse_without_change() {
        use crate::collab::{ConflictPolicy, DocPath, OpKind};
        let mut state = ShardState::default();
        let ctx = ApplyContext { log_index: 1 };
        let op = |path: &str, kind: OpKind, base_version| {
            Command::SessionOp(SessionOpCommand {
                channel: ch("doc"),
                path: DocPath::parse(path).unwrap(),
                kind,
                base_version,
                author: "al".into(),
                time_ms: 1,
            })
        };
        let missing = state.apply(ctx, &op("/a", OpKind::Delete, 0));
        assert!(matches!(
            missing,
            CommandResult::SessionOp(Err(OpError::NoSession { .. }))
        ));
        let create = Command::CreateSession(CreateSessionCommand {
            channel: ch("doc"),
            policy: ConflictPolicy::Reject,
            document: serde_json::json!({"n": 1}),
            creator: "al".into(),
            time_ms: 1,
        });
        assert!(matches!(
            state.apply(ctx, &create),
            CommandResult::SessionCreated(Ok(_))
        ));
        assert!(matches!(
            state.apply(ctx, &create),
            CommandResult::SessionCreated(Err(OpError::Exists { .. }))
        ));
        let CommandResult::SessionOp(Ok(applied)) =
            state.apply(ctx, &op("/n", OpKind::Increment(serde_json::json!(2)), 0))
        else {
            panic!("applied")
        };
        assert_eq!((applied.applied.version, applied.offset), (1, 2));
        let refused = state.apply(ctx, &op("/n", OpKind::Set(serde_json::json!(0)), 0));
        assert!(matches!(
            refused,
            CommandResult::SessionOp(Err(OpError::Conflict { .. }))
        ));
        let (doc, position) = state.session(&ch("doc")).unwrap();
        assert_eq!(doc.document(), &serde_json::json!({"n": 3}));
        assert_eq!((position.version, position.offset), (1, 2));
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
