//! The communication features on top of the shard groups: collaborative sessions, presence
//! and read receipts. Each write is one replicated command routed to the shard of its
//! channel; each read waits for a read barrier, so it sees every acknowledged write.
//!
//! ```text
//!  session op  ─► shard_for(session channel)    ─► leader orders it ─► every replica applies
//!  presence    ─► shard_for("presence.<user>")  ─► node leases take dead nodes' devices offline
//!  read receipt─► shard_for(channel)            ─► read positions, unread counts
//!  roster      ─► shard_for(channel)            ─► members per connection, node leases
//! ```

use crate::error::ClusterError;
use crate::node::ClusterNode;
use chorus_core::collab::{ConflictPolicy, DocPath, OpKind, SessionDoc};
use chorus_core::command::RosterCommand;
use chorus_core::command::{
    CreateSessionCommand, DeviceGoneCommand, ExpireLeaseCommand, MarkReadCommand, ReadPosition,
    RenewLeaseCommand, SessionOpApplied, SessionOpCommand, SessionPosition, SetPresenceCommand,
};
use chorus_core::presence::{PRESENCE_CHANNEL_PREFIX, UserPresence};
use chorus_core::roster::Member;
use chorus_core::{ChannelName, Command, CommandResult, ConnRef, PresenceStatus, ShardId, shard_for};
use std::time::Duration;

/// The shard holding `user`'s presence.
pub fn presence_shard(user: &str, shard_count: u32) -> ShardId {
    shard_for(&format!("{PRESENCE_CHANNEL_PREFIX}{user}"), shard_count)
}

/// A device's presence as a connection reports it.
#[derive(Debug, Clone)]
pub struct DeviceStatus {
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// The status.
    pub status: PresenceStatus,
    /// Optional free text.
    pub custom_status: Option<String>,
}

impl ClusterNode {
    /// Proposes one command to `shard`'s leader and returns its result once applied.
    pub async fn submit(&self, shard: ShardId, command: Command) -> Result<CommandResult, ClusterError> {
        let response = self.write(shard, vec![command]).await?;
        response
            .0
            .into_iter()
            .next()
            .ok_or_else(|| ClusterError::Internal("no result for the command".into()))
    }

    fn shard_of(&self, channel: &ChannelName) -> ShardId {
        shard_for(channel.as_str(), self.shard_count())
    }

    /// Creates a session on `channel` with `policy` and an initial JSON object.
    pub async fn create_session(
        &self,
        channel: ChannelName,
        policy: ConflictPolicy,
        document: serde_json::Value,
        creator: &str,
    ) -> Result<SessionPosition, ClusterError> {
        let shard = self.shard_of(&channel);
        let command = Command::CreateSession(CreateSessionCommand {
            channel,
            policy,
            document,
            creator: creator.to_string(),
            time_ms: 0,
        });
        match self.submit(shard, command).await? {
            CommandResult::SessionCreated(result) => result.map_err(ClusterError::Session),
            other => Err(unexpected(other)),
        }
    }

    /// Applies one operation to a session (or says why not: the document is then unchanged).
    pub async fn session_op(
        &self,
        channel: ChannelName,
        path: DocPath,
        kind: OpKind,
        base_version: u64,
        author: &str,
    ) -> Result<SessionOpApplied, ClusterError> {
        let shard = self.shard_of(&channel);
        let command = Command::SessionOp(SessionOpCommand {
            channel,
            path,
            kind,
            base_version,
            author: author.to_string(),
            time_ms: 0,
        });
        match self.submit(shard, command).await? {
            CommandResult::SessionOp(result) => result.map_err(ClusterError::Session),
            other => Err(unexpected(other)),
        }
    }

    /// A session's document and version with its channel's position, linearizably: a
    /// client that subscribes from that position sees every later operation, with no gap.
    pub async fn session_snapshot(
        &self,
        channel: &ChannelName,
    ) -> Result<(SessionDoc, SessionPosition), ClusterError> {
        let shard = self.shard_of(channel);
        self.read_barrier(shard).await?;
        self.read_state(shard, |state| state.session(channel))
            .ok_or_else(|| {
                ClusterError::Session(chorus_core::collab::OpError::NoSession {
                    session: channel.to_string(),
                })
            })
    }

    /// A user's presence, linearizably (offline with no devices when never seen).
    pub async fn presence(&self, user: &str) -> Result<UserPresence, ClusterError> {
        let shard = presence_shard(user, self.shard_count());
        self.read_barrier(shard).await?;
        Ok(self
            .read_state(shard, |state| state.presence(user).cloned())
            .unwrap_or_default())
    }

    /// Records a device's presence on connection `conn` of this node; `connect` when the
    /// connection opens (it takes the device over from any other connection).
    pub async fn set_presence(
        &self,
        device: DeviceStatus,
        conn: u64,
        connect: bool,
        lease: Duration,
    ) -> Result<PresenceStatus, ClusterError> {
        let shard = presence_shard(&device.user, self.shard_count());
        let command = Command::SetPresence(SetPresenceCommand {
            user: device.user,
            device: device.device,
            status: device.status,
            custom_status: device.custom_status,
            conn: self.conn_ref(conn),
            lease_ms: lease.as_millis() as u64,
            connect,
            time_ms: 0,
        });
        match self.submit(shard, command).await? {
            CommandResult::Presence(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// Records that connection `conn` of this node, a device of `user`, closed.
    pub async fn device_gone(&self, user: &str, device: &str, conn: u64) -> Result<(), ClusterError> {
        let shard = presence_shard(user, self.shard_count());
        let command = Command::DeviceGone(DeviceGoneCommand {
            user: user.to_string(),
            device: device.to_string(),
            conn: self.conn_ref(conn),
            time_ms: 0,
        });
        self.submit(shard, command).await.map(|_| ())
    }

    /// Renews this node's lease in `shard`. Returns how many times the lease has lapsed so far
    /// (when that grew, its devices and memberships there were taken away while this node
    /// lived, say behind a partition, and the caller writes them again); `None` when the shard
    /// ignored the renewal as coming from a replaced process.
    pub async fn renew_lease(&self, shard: ShardId, lease: Duration) -> Result<Option<u64>, ClusterError> {
        let command = Command::RenewLease(RenewLeaseCommand {
            node: self.node_id(),
            incarnation: self.incarnation(),
            lease_ms: lease.as_millis() as u64,
            time_ms: 0,
        });
        match self.submit(shard, command).await? {
            CommandResult::Renewed { expirations } => Ok(expirations),
            other => Err(unexpected(other)),
        }
    }

    /// Connection `conn` of this node (a device of `user`) joins or leaves `channel`'s roster.
    pub async fn roster_change(
        &self,
        channel: ChannelName,
        member: (&str, &str),
        conn: u64,
        join: bool,
        lease: Duration,
    ) -> Result<u32, ClusterError> {
        let shard = self.shard_of(&channel);
        let change = RosterCommand {
            channel,
            user: member.0.to_string(),
            device: member.1.to_string(),
            conn: self.conn_ref(conn),
            lease_ms: lease.as_millis() as u64,
            time_ms: 0,
        };
        let command = if join {
            Command::RosterJoin(change)
        } else {
            Command::RosterLeave(change)
        };
        match self.submit(shard, command).await? {
            CommandResult::Roster { connections } => Ok(connections),
            other => Err(unexpected(other)),
        }
    }

    /// The members of `channel`'s roster, linearizably.
    pub async fn roster(&self, channel: &ChannelName) -> Result<Vec<Member>, ClusterError> {
        let shard = self.shard_of(channel);
        self.read_barrier(shard).await?;
        Ok(self.read_state(shard, |state| state.roster(channel)))
    }

    fn conn_ref(&self, conn: u64) -> ConnRef {
        ConnRef {
            node: self.node_id(),
            incarnation: self.incarnation(),
            conn,
        }
    }

    /// Moves `user`'s read position in `channel` forward to `offset`.
    pub async fn mark_read(
        &self,
        channel: ChannelName,
        user: &str,
        offset: u64,
    ) -> Result<ReadPosition, ClusterError> {
        let shard = self.shard_of(&channel);
        let command = Command::MarkRead(MarkReadCommand {
            channel,
            user: user.to_string(),
            offset,
            time_ms: 0,
        });
        match self.submit(shard, command).await? {
            CommandResult::Read(position) => Ok(position),
            other => Err(unexpected(other)),
        }
    }

    /// `user`'s read positions and unread counts, linearizably: in `channels`, or, when
    /// empty, in every channel where the user has marked something read.
    pub async fn unread(
        &self,
        user: &str,
        channels: &[ChannelName],
    ) -> Result<Vec<ReadPosition>, ClusterError> {
        let mut positions = Vec::new();
        if channels.is_empty() {
            for shard in 0..self.shard_count() {
                let shard = ShardId(shard);
                self.read_barrier(shard).await?;
                positions.extend(self.read_state(shard, |state| state.read_positions_of(user)));
            }
        } else {
            for channel in channels {
                let shard = self.shard_of(channel);
                self.read_barrier(shard).await?;
                positions.push(self.read_state(shard, |state| state.read_position(channel, user)));
            }
        }
        Ok(positions)
    }

    fn read_state<T>(&self, shard: ShardId, read: impl FnOnce(&chorus_core::ShardState) -> T) -> T {
        self.local_reader(shard)
            .expect("shards below shard_count exist")
            .with_state(read)
    }

    /// Leader duty: proposes the expiry of every lapsed node lease in the shards this node
    /// leads (apply checks the lease again at the proposal's time).
    pub(crate) async fn expire_leases(&self, shard: ShardId, now_ms: u64) {
        let lapsed = self.read_state(shard, |state| state.lapsed_leases(now_ms));
        for node in lapsed {
            let command = Command::ExpireLease(ExpireLeaseCommand { node, time_ms: 0 });
            match self.submit(shard, command).await {
                Ok(CommandResult::Expired { offline }) if offline > 0 => {
                    tracing::info!(
                        shard = shard.0,
                        node,
                        offline,
                        "node lease lapsed: its devices are offline"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(shard = shard.0, node, error = %e, "lease expiry not written"),
            }
        }
    }
}

impl ClusterNode {
    /// Leader duty: proposes a retention sweep of `shard` when one would change anything (an
    /// idle shard stays quiet otherwise).
    pub(crate) async fn sweep_history(&self, shard: ShardId, now_ms: u64) {
        if !self.read_state(shard, |state| state.sweep_due(now_ms)) {
            return;
        }
        let command = Command::Sweep(chorus_core::command::SweepCommand { time_ms: 0 });
        match self.submit(shard, command).await {
            Ok(CommandResult::Swept { events, keys }) => {
                tracing::debug!(shard = shard.0, events, keys, "history swept");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(shard = shard.0, error = %e, "history sweep not written"),
        }
    }
}

fn unexpected(result: CommandResult) -> ClusterError {
    ClusterError::Internal(format!("unexpected apply result {result:?}"))
}
