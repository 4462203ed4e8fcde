//! Presence of this node's connections: written through Raft, kept alive by node leases.
//!
//! ```text
//!  connection ──ConnPresence──> [writer task per connection] ── SetPresence … DeviceGone ──> Raft
//!                                   (in order: a close never overtakes the connect)
//!  [lease task] every lease/3 ── RenewLease ──> each shard holding this node's devices
//! ```
//!
//! The writes of one connection go through its own task, in order; different connections
//! write in parallel. A failed write is retried a few times; what still fails is left to the
//! lease (when this node dies or stops renewing, its devices go offline on every node). When a
//! renewal finds the lease lost (it lapsed while this node lived, e.g. behind a partition),
//! every connection of the shard writes its presence again.

use crate::metrics::GatewayMetrics;
use chorus_cluster::ClusterNode;
use chorus_cluster::features::{DeviceStatus, presence_shard};
use chorus_core::{ChannelName, PresenceStatus, ShardId, shard_for};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Attempts of a presence write before it is left to the lease.
const WRITE_ATTEMPTS: u32 = 5;

/// Tracks this node's connections' presence and renews the node's leases.
#[derive(Clone)]
pub struct PresenceKeeper {
    cluster: ClusterNode,
    lease: Duration,
    metrics: GatewayMetrics,
    /// The writers of this node's connections, per shard of their user's presence.
    shards: Arc<Mutex<HashMap<ShardId, ConnWriters>>>,
}

/// The presence and roster writers of one shard: by connection id, and the roster's channel
/// for roster memberships.
type ConnWriters = HashMap<(u64, Option<ChannelName>), mpsc::UnboundedSender<Write>>;

enum Write {
    Status {
        status: PresenceStatus,
        custom_status: Option<String>,
        reply: Option<oneshot::Sender<Result<(), chorus_cluster::ClusterError>>>,
    },
    /// Write the last status again (the node's lease was lost).
    Reassert,
    Gone,
}

/// One connection's presence. Dropping it writes the device offline.
pub struct ConnPresence {
    writes: mpsc::UnboundedSender<Write>,
}

impl ConnPresence {
    /// Sets the device's status; the returned future answers once it is replicated.
    pub fn set(
        &self,
        status: PresenceStatus,
        custom_status: Option<String>,
    ) -> impl std::future::Future<Output = Result<(), chorus_cluster::ClusterError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let _ = self.writes.send(Write::Status {
            status,
            custom_status,
            reply: Some(reply),
        });
        async move {
            answer.await.unwrap_or_else(|_| {
                Err(chorus_cluster::ClusterError::Internal(
                    "presence writer gone".into(),
                ))
            })
        }
    }
}

impl Drop for ConnPresence {
    fn drop(&mut self) {
        let _ = self.writes.send(Write::Gone);
    }
}

/// One connection's membership of a channel's roster. Dropping it leaves the roster.
pub struct RosterHandle {
    writes: mpsc::UnboundedSender<Write>,
}

impl Drop for RosterHandle {
    fn drop(&mut self) {
        let _ = self.writes.send(Write::Gone);
    }
}

/// The roster memberships of one connection: one per channel, however many of the
/// connection's subscriptions are on it.
pub struct RosterMemberships {
    keeper: PresenceKeeper,
    conn: u64,
    member: (String, String),
    by_sub: HashMap<u64, ChannelName>,
    by_channel: HashMap<ChannelName, (RosterHandle, usize)>,
}

impl RosterMemberships {
    /// No memberships yet.
    pub fn new(keeper: PresenceKeeper, conn: u64, member: (String, String)) -> Self {
        RosterMemberships {
            keeper,
            conn,
            member,
            by_sub: HashMap::new(),
            by_channel: HashMap::new(),
        }
    }

    /// Subscription `sub` is on `channel` (which has a roster).
    pub fn subscribed(&mut self, sub: u64, channel: ChannelName) {
        if self.by_sub.contains_key(&sub) {
            return; // The hub refuses a second subscription with the same id.
        }
        self.by_sub.insert(sub, channel.clone());
        let entry = self.by_channel.entry(channel.clone()).or_insert_with(|| {
            let handle = self.keeper.roster_join(self.conn, channel, self.member.clone());
            (handle, 0)
        });
        entry.1 += 1;
    }

    /// Subscription `sub` ended.
    pub fn unsubscribed(&mut self, sub: u64) {
        let Some(channel) = self.by_sub.remove(&sub) else {
            return;
        };
        if let Some((_, count)) = self.by_channel.get_mut(&channel) {
            *count -= 1;
            if *count == 0 {
                self.by_channel.remove(&channel);
            }
        }
    }
}

impl PresenceKeeper {
    /// Starts the lease renewal task.
    pub fn start(cluster: ClusterNode, lease: Duration, metrics: GatewayMetrics) -> PresenceKeeper {
        let keeper = PresenceKeeper {
            cluster,
            lease,
            metrics,
            shards: Arc::new(Mutex::new(HashMap::new())),
        };
        tokio::spawn(keeper.clone().renew_loop());
        keeper
    }

    /// A connection of `user`'s `device` opened: it is online from now on.
    pub fn connected(&self, conn: u64, user: String, device: String) -> ConnPresence {
        let shard = presence_shard(&user, self.cluster.shard_count());
        let (writes, queue) = mpsc::unbounded_channel();
        self.shards
            .lock()
            .expect("lock")
            .entry(shard)
            .or_default()
            .insert((conn, None), writes.clone());
        let _ = writes.send(Write::Status {
            status: PresenceStatus::Online,
            custom_status: None,
            reply: None,
        });
        tokio::spawn(self.clone().write_loop(conn, user, device, shard, queue));
        ConnPresence { writes }
    }

    async fn write_loop(
        self,
        conn: u64,
        user: String,
        device: String,
        shard: ShardId,
        mut queue: mpsc::UnboundedReceiver<Write>,
    ) {
        let mut custom = None;
        let mut last = PresenceStatus::Online;
        let mut connect = true;
        while let Some(write) = queue.recv().await {
            let (status, custom_status, reply) = match write {
                Write::Status {
                    status,
                    custom_status,
                    reply,
                } => (status, Some(custom_status), reply),
                Write::Reassert => (last, None, None),
                Write::Gone => {
                    self.until_written(|| self.cluster.device_gone(&user, &device, conn))
                        .await;
                    break;
                }
            };
            last = status;
            if let Some(replaced) = custom_status {
                custom = replaced;
            }
            let device_status = DeviceStatus {
                user: user.clone(),
                device: device.clone(),
                status,
                custom_status: custom.clone(),
            };
            let result = self
                .retry(|| {
                    self.cluster
                        .set_presence(device_status.clone(), conn, connect, self.lease)
                })
                .await
                .map(|_| ());
            connect = false;
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
        self.forget_writer(shard, (conn, None));
    }

    fn forget_writer(&self, shard: ShardId, key: (u64, Option<ChannelName>)) {
        let mut shards = self.shards.lock().expect("lock");
        if let Some(conns) = shards.get_mut(&shard) {
            conns.remove(&key);
            if conns.is_empty() {
                shards.remove(&shard);
            }
        }
    }

    /// Connection `conn` of `member` (user, device) subscribed to `channel`, which has a
    /// roster: it is a member until the returned handle is dropped.
    pub fn roster_join(&self, conn: u64, channel: ChannelName, member: (String, String)) -> RosterHandle {
        let shard = shard_for(channel.as_str(), self.cluster.shard_count());
        let (writes, queue) = mpsc::unbounded_channel();
        self.shards
            .lock()
            .expect("lock")
            .entry(shard)
            .or_default()
            .insert((conn, Some(channel.clone())), writes.clone());
        let _ = writes.send(Write::Reassert);
        tokio::spawn(self.clone().roster_loop(conn, channel, member, shard, queue));
        RosterHandle { writes }
    }

    async fn roster_loop(
        self,
        conn: u64,
        channel: ChannelName,
        member: (String, String),
        shard: ShardId,
        mut queue: mpsc::UnboundedReceiver<Write>,
    ) {
        let who = (member.0.as_str(), member.1.as_str());
        while let Some(write) = queue.recv().await {
            let join = !matches!(write, Write::Gone);
            let change = || {
                self.cluster
                    .roster_change(channel.clone(), who, conn, join, self.lease)
            };
            if join {
                let _ = self.retry(change).await;
            } else {
                self.until_written(change).await;
                break;
            }
        }
        self.forget_writer(shard, (conn, Some(channel)));
    }

    async fn retry<T, F, Fut>(&self, write: F) -> Result<T, chorus_cluster::ClusterError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, chorus_cluster::ClusterError>>,
    {
        let mut pause = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match write().await {
                Ok(value) => return Ok(value),
                Err(e) if attempt >= WRITE_ATTEMPTS => {
                    self.metrics.presence_write_failures.inc();
                    tracing::warn!(error = %e, "presence write failed; the node lease will correct it");
                    return Err(e);
                }
                Err(e) => {
                    tracing::debug!(error = %e, attempt, "presence write failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
            }
        }
    }

    /// Retries `write` until it succeeds (a closed connection's device must go offline even
    /// when the node keeps renewing its lease for other connections).
    async fn until_written<T, F, Fut>(&self, write: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, chorus_cluster::ClusterError>>,
    {
        let mut pause = Duration::from_millis(100);
        while let Err(e) = write().await {
            self.metrics.presence_write_failures.inc();
            tracing::warn!(error = %e, "presence write failed; retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Renews this node's lease every third of its length in every shard holding its devices.
    async fn renew_loop(self) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let shards: Vec<ShardId> = self.shards.lock().expect("lock").keys().copied().collect();
            for shard in shards {
                let keeper = self.clone();
                tokio::spawn(async move {
                    match keeper.cluster.renew_lease(shard, keeper.lease).await {
                        Ok(false) => {}
                        Ok(true) => {
                            tracing::warn!(
                                shard = shard.0,
                                "presence lease was lost; writing this node's presence again"
                            );
                            let conns = keeper.shards.lock().expect("lock").get(&shard).cloned();
                            for writer in conns.into_iter().flat_map(|c| c.into_values()) {
                                let _ = writer.send(Write::Reassert);
                            }
                        }
                        Err(e) => {
                            keeper.metrics.presence_write_failures.inc();
                            tracing::warn!(shard = shard.0, error = %e, "presence lease not renewed");
                        }
                    }
                });
            }
        }
    }
}
