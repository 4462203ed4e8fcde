//! Presence and roster memberships of this node's connections: written through Raft, kept
//! alive by node leases.
//!
//! ```text
//!  connection ──ConnPresence──> [writer task per connection] ── SetPresence … DeviceGone ──> Raft
//!  hub: subscription to a roster channel ──RosterWriter──> [writer task per (connection,
//!       channel)] ── RosterJoin / RosterLeave … ──> Raft
//!  [lease task] every lease/3 ── RenewLease ──> each shard holding this node's writers
//! ```
//!
//! Each writer task writes in order (a leave never overtakes its join, an offline never its
//! connect); different writers run in parallel. Writes that bring something online or into a
//! roster, and writes that take it away, are retried until they succeed: a lease only ever
//! takes things away. A status the client sets is tried a few times and the client told.
//! Every renewal reports how many times the lease has lapsed; when that number grew, the
//! lease lapsed while this node lived (a partition, a stall), its devices and memberships
//! were taken away, and every writer of the shard writes them again.

use crate::metrics::GatewayMetrics;
use chorus_cluster::ClusterNode;
use chorus_cluster::features::{DeviceStatus, presence_shard};
use chorus_core::{ChannelName, ChannelPattern, PresenceStatus, ShardId, shard_for};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
// futures' unbounded channel allocates per message; tokio's allocates a block of 32 slots up
// front, 1.8 KiB for every connection's presence queue, which is nearly always empty.
use futures::StreamExt;
use futures::channel::mpsc;
use tokio::sync::oneshot;

/// Attempts of a status write the client asked for before it is told of the failure.
const STATUS_ATTEMPTS: u32 = 5;

type Reply = oneshot::Sender<Result<(), chorus_cluster::ClusterError>>;

enum Write {
    Status {
        status: PresenceStatus,
        custom_status: Option<String>,
        reply: Reply,
    },
    /// Write the current state again (the node's lease lapsed meanwhile).
    Reassert,
    Gone,
}

enum RosterWrite {
    Join,
    Leave,
    Reassert,
    Gone,
}

/// A writer registered for lease renewals and reasserts.
#[derive(Clone)]
enum Writer {
    Presence(mpsc::UnboundedSender<Write>),
    Roster(mpsc::UnboundedSender<RosterWrite>),
}

impl Writer {
    fn reassert(&self) {
        let _ = match self {
            Writer::Presence(w) => w.unbounded_send(Write::Reassert).map_err(|_| ()),
            Writer::Roster(w) => w.unbounded_send(RosterWrite::Reassert).map_err(|_| ()),
        };
    }
}

/// The writers of one shard: by connection id, and the roster's channel for memberships.
type ShardWriters = HashMap<(u64, Option<ChannelName>), Writer>;

/// Tracks this node's connections' presence and roster memberships and renews the node's
/// leases. Cloning shares it.
#[derive(Clone)]
pub struct PresenceKeeper {
    cluster: ClusterNode,
    lease: Duration,
    metrics: GatewayMetrics,
    shards: Arc<Mutex<HashMap<ShardId, ShardWriters>>>,
    /// The lease expirations each shard reported last.
    expirations: Arc<Mutex<HashMap<ShardId, u64>>>,
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
        let _ = self.writes.unbounded_send(Write::Status {
            status,
            custom_status,
            reply,
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
        let _ = self.writes.unbounded_send(Write::Gone);
    }
}

/// One connection's membership of one channel's roster, for the connection's lifetime:
/// joined and left as its subscriptions to the channel come and go. Dropping it leaves.
pub struct RosterWriter {
    writes: mpsc::UnboundedSender<RosterWrite>,
}

impl RosterWriter {
    fn join(&self) {
        let _ = self.writes.unbounded_send(RosterWrite::Join);
    }

    fn leave(&self) {
        let _ = self.writes.unbounded_send(RosterWrite::Leave);
    }
}

impl Drop for RosterWriter {
    fn drop(&mut self) {
        let _ = self.writes.unbounded_send(RosterWrite::Gone);
    }
}

/// The hub's side of rosters: it owns the subscriptions, so it knows when a connection's
/// first subscription to a roster channel starts and its last one ends (unsubscribe, resync,
/// disconnect).
pub struct HubRosters {
    keeper: PresenceKeeper,
    patterns: Vec<ChannelPattern>,
    /// Per connection, per roster channel: the writer and the subscriptions on the channel.
    by_conn: HashMap<u64, HashMap<ChannelName, (RosterWriter, usize)>>,
}

impl HubRosters {
    /// Rosters for the channels matching `patterns`.
    pub fn new(keeper: PresenceKeeper, patterns: Vec<ChannelPattern>) -> Self {
        HubRosters {
            keeper,
            patterns,
            by_conn: HashMap::new(),
        }
    }

    /// A subscription of connection `conn` (of `member`: user, device) to `channel` started.
    pub fn added(&mut self, conn: u64, member: &(String, String), channel: &ChannelName) {
        if !self.patterns.iter().any(|p| p.matches(channel.as_str())) {
            return;
        }
        let channels = self.by_conn.entry(conn).or_default();
        let (writer, count) = channels.entry(channel.clone()).or_insert_with(|| {
            let writer = self.keeper.roster_writer(conn, channel.clone(), member.clone());
            (writer, 0)
        });
        *count += 1;
        if *count == 1 {
            writer.join();
        }
    }

    /// A subscription of connection `conn` to `channel` ended.
    pub fn removed(&mut self, conn: u64, channel: &ChannelName) {
        if let Some((writer, count)) = self
            .by_conn
            .get_mut(&conn)
            .and_then(|channels| channels.get_mut(channel))
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                writer.leave();
            }
        }
    }

    /// Connection `conn` closed: its writers finish and exit.
    pub fn disconnected(&mut self, conn: u64) {
        self.by_conn.remove(&conn);
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
            expirations: Arc::new(Mutex::new(HashMap::new())),
        };
        tokio::spawn(keeper.clone().renew_loop());
        keeper
    }

    fn register(&self, shard: ShardId, key: (u64, Option<ChannelName>), writer: Writer) {
        self.shards
            .lock()
            .expect("lock")
            .entry(shard)
            .or_default()
            .insert(key, writer);
    }

    fn forget(&self, shard: ShardId, key: &(u64, Option<ChannelName>)) {
        let mut shards = self.shards.lock().expect("lock");
        if let Some(writers) = shards.get_mut(&shard) {
            writers.remove(key);
            if writers.is_empty() {
                shards.remove(&shard);
            }
        }
    }

    /// A connection of `user`'s `device` opened: it is online from now on.
    pub fn connected(&self, conn: u64, user: String, device: String) -> ConnPresence {
        let shard = presence_shard(&user, self.cluster.shard_count());
        let (writes, queue) = mpsc::unbounded();
        self.register(shard, (conn, None), Writer::Presence(writes.clone()));
        tokio::spawn(self.clone().presence_loop(conn, user, device, shard, queue));
        ConnPresence { writes }
    }

    async fn presence_loop(
        self,
        conn: u64,
        user: String,
        device: String,
        shard: ShardId,
        mut queue: mpsc::UnboundedReceiver<Write>,
    ) {
        let mut current = DeviceStatus {
            user,
            device,
            status: PresenceStatus::Online,
            custom_status: None,
        };
        // This task lives as long as its connection, mostly waiting on the queue. The writes
        // are boxed so that their futures take memory only while they run: inline they made
        // the task 4.8 KiB per idle connection (docs/benchmarks.md).
        // The connect write takes the device over from any other connection.
        Box::pin(self.until_written(|| self.cluster.set_presence(current.clone(), conn, true, self.lease)))
            .await;
        while let Some(write) = queue.next().await {
            match write {
                Write::Status {
                    status,
                    custom_status,
                    reply,
                } => {
                    current.status = status;
                    current.custom_status = custom_status;
                    let result = Box::pin(self.retry(|| {
                        self.cluster
                            .set_presence(current.clone(), conn, false, self.lease)
                    }))
                    .await;
                    let _ = reply.send(result.map(|_| ()));
                }
                Write::Reassert => {
                    Box::pin(self.until_written(|| {
                        self.cluster
                            .set_presence(current.clone(), conn, false, self.lease)
                    }))
                    .await;
                }
                Write::Gone => {
                    Box::pin(
                        self.until_written(|| self.cluster.device_gone(&current.user, &current.device, conn)),
                    )
                    .await;
                    break;
                }
            }
        }
        self.forget(shard, &(conn, None));
    }

    /// The roster writer of connection `conn` (of `member`) for `channel`.
    fn roster_writer(&self, conn: u64, channel: ChannelName, member: (String, String)) -> RosterWriter {
        let shard = shard_for(channel.as_str(), self.cluster.shard_count());
        let (writes, queue) = mpsc::unbounded();
        self.register(
            shard,
            (conn, Some(channel.clone())),
            Writer::Roster(writes.clone()),
        );
        tokio::spawn(self.clone().roster_loop(conn, channel, member, shard, queue));
        RosterWriter { writes }
    }

    async fn roster_loop(
        self,
        conn: u64,
        channel: ChannelName,
        member: (String, String),
        shard: ShardId,
        mut queue: mpsc::UnboundedReceiver<RosterWrite>,
    ) {
        let who = (member.0.as_str(), member.1.as_str());
        let mut joined = false;
        while let Some(write) = queue.next().await {
            match write {
                RosterWrite::Join if !joined => {
                    self.roster_write(&channel, who, conn, true).await;
                    joined = true;
                }
                RosterWrite::Reassert if joined => self.roster_write(&channel, who, conn, true).await,
                RosterWrite::Leave if joined => {
                    self.roster_write(&channel, who, conn, false).await;
                    joined = false;
                }
                RosterWrite::Gone => {
                    if joined {
                        self.roster_write(&channel, who, conn, false).await;
                    }
                    break;
                }
                _ => {}
            }
        }
        self.forget(shard, &(conn, Some(channel.clone())));
    }

    /// Joins or leaves a roster, until written (boxed, as in `presence_loop`: the roster
    /// task waits far longer than it writes).
    async fn roster_write(&self, channel: &ChannelName, who: (&str, &str), conn: u64, join: bool) {
        Box::pin(self.until_written(|| {
            self.cluster
                .roster_change(channel.clone(), who, conn, join, self.lease)
        }))
        .await;
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
                Err(e) if attempt >= STATUS_ATTEMPTS => {
                    self.metrics.presence_write_failures.inc();
                    tracing::warn!(error = %e, "presence status write failed");
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

    /// Retries `write` until it succeeds: what goes online must, and what goes offline must
    /// (a node that keeps renewing its lease for other connections would keep it otherwise).
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

    /// Renews this node's lease every third of its length in every shard holding its writers.
    async fn renew_loop(self) {
        let mut tick = tokio::time::interval(self.lease / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let shards: Vec<ShardId> = self.shards.lock().expect("lock").keys().copied().collect();
            for shard in shards {
                let keeper = self.clone();
                tokio::spawn(async move { keeper.renew(shard).await });
            }
        }
    }

    async fn renew(&self, shard: ShardId) {
        match self.cluster.renew_lease(shard, self.lease).await {
            Ok(Some(expirations)) => {
                let seen = self.expirations.lock().expect("lock").insert(shard, expirations);
                if seen.unwrap_or(0) < expirations {
                    tracing::warn!(
                        shard = shard.0,
                        "presence lease had lapsed; writing this node's presence again"
                    );
                    let writers = self.shards.lock().expect("lock").get(&shard).cloned();
                    for writer in writers.into_iter().flat_map(|w| w.into_values()) {
                        writer.reassert();
                    }
                }
            }
            Ok(None) => tracing::warn!(
                shard = shard.0,
                "the shard ignored this node's renewal as coming from an earlier process"
            ),
            Err(e) => {
                self.metrics.presence_write_failures.inc();
                tracing::warn!(shard = shard.0, error = %e, "presence lease not renewed");
            }
        }
    }
}
