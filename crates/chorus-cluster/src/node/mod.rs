//! A node's cluster core: the shard groups, routing to leaders, membership and upkeep.

use crate::ShardRaft;
use crate::error::ClusterError;
use crate::network::{PeerPool, ShardNetworkFactory};
use crate::placement;
use crate::proposer::{NodeSlots, Proposer};
use chorus_core::{Command, HistoryLimits, ShardId};
use chorus_store::{ChorusNode, NodeStore, ShardReader, ShardRequest, TypeConfig};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::RaftError;
use openraft::{RaftMetrics, ServerState, SnapshotPolicy};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

mod membership;
mod metrics;
mod routing;

use metrics::ShardLabel;
pub use metrics::{ClusterMetrics, resident_memory_bytes};
pub(crate) use routing::{failed, write_error};

/// How long a routed request keeps retrying leader changes before giving up.
const ROUTE_DEADLINE: Duration = Duration::from_secs(10);
/// How long a membership change may take (a learner may need a whole snapshot).
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between attempts while no leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Settings of the cluster layer.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: u64,
    /// Address peers reach this node's gRPC endpoint at.
    pub raft_addr: SocketAddr,
    /// Address of this node's HTTP API.
    pub http_addr: SocketAddr,
    /// Number of shards.
    pub shard_count: u32,
    /// Initial voters (id to raft address); empty for a joining node.
    pub peers: BTreeMap<u64, String>,
    /// The shared cluster secret.
    pub cluster_secret: String,
    /// Replicated history limits to enforce.
    pub limits: HistoryLimits,
    /// Replicated history quotas to enforce.
    pub quotas: chorus_core::HistoryQuotas,
    /// How often the shards this node leads are swept for expired history; zero: never.
    pub sweep_interval: Duration,
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms.
    pub election_timeout_ms: (u64, u64),
    /// Entries between snapshots.
    pub snapshot_every_entries: u64,
    /// Log entries kept after a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Most client commands in one Raft entry; 1 turns proposal batching off.
    pub max_batch_commands: usize,
    /// Most entries in flight over all the shards this node leads (`crate::proposer`).
    pub node_entries_in_flight: usize,
    /// Typing indicator timers.
    pub typing: crate::typing::TypingConfig,
    /// Mutual TLS with peers (`None`: plain TCP).
    pub peer_tls: Option<crate::tls::PeerTls>,
    /// The audit log.
    pub audit: crate::audit::AuditLog,
}

pub(crate) struct Shard {
    pub(crate) id: ShardId,
    pub(crate) raft: ShardRaft,
    pub(crate) reader: ShardReader,
    /// Batches writes into entries; `None` when batching is off.
    proposer: Option<Proposer>,
    /// This replica's log was cut at damage found at start: it neither votes nor leads until
    /// it has caught up with what the shard committed (see [`ClusterNode::recover_shards`]).
    recovering: std::sync::atomic::AtomicBool,
}

struct Inner {
    config: ClusterConfig,
    shards: Vec<Shard>,
    pool: Arc<PeerPool>,
    proof: Option<String>,
    store: NodeStore,
    metrics: ClusterMetrics,
    cluster_id: RwLock<Option<String>>,
    started: Instant,
    typing: crate::typing::Typing,
    /// The process start time in ms: tells this run's connections from an earlier run's.
    incarnation: u64,
    /// What peers said they lead, and when they last said it (`crate::liveness`).
    liveness: crate::liveness::Liveness,
    /// Shards whose leadership this node began to hand over (`crate::quiet`).
    hand_overs: crate::liveness::HandOvers,
    /// When the shards this node leads are next swept for expired history.
    next_sweep: std::sync::Mutex<Instant>,
}

/// The cluster core of a node. Cloning is cheap and shares it.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

/// Before any shard group starts: asks the configured peers who they are, and fails if one
/// that answers belongs to another cluster than this data directory, or runs another shard
/// count (a data directory from another cluster, or a misconfigured node). Peers that do not
/// answer within `timeout`, or have no cluster id yet, are skipped.
async fn preflight(
    pool: &PeerPool,
    config: &ClusterConfig,
    ours: Option<&str>,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let own_addr = config.raft_addr.to_string();
    for (id, addr) in config.peers.iter().filter(|(_, addr)| **addr != own_addr) {
        let info = match pool.node_info(*id, addr, timeout).await {
            Ok(info) => info,
            Err(e) => {
                tracing::info!(peer = id, %addr, error = %e, "startup check: peer did not answer");
                continue;
            }
        };
        if info.shard_count != config.shard_count {
            return Err(ClusterError::BadRequest(format!(
                "node {id} at {addr} runs {} shards, this node is configured for {}",
                info.shard_count, config.shard_count
            )));
        }
        if let Some(ours) = ours
            && !info.cluster_id.is_empty()
            && info.cluster_id != ours
        {
            return Err(ClusterError::BadRequest(format!(
                "this data directory belongs to cluster {ours}, but peer {id} at {addr} belongs to cluster {}; start this node with an empty data directory, or with its own cluster's peers",
                info.cluster_id
            )));
        }
    }
    Ok(())
}

impl ClusterNode {
    /// Opens every shard group on `store` and, with `peers` configured, initializes them
    /// (every node does so with the same membership, which openraft makes safe).
    pub async fn start(
        config: ClusterConfig,
        store: NodeStore,
        metrics: ClusterMetrics,
    ) -> Result<ClusterNode, ClusterError> {
        let tcp: Arc<dyn crate::transport::Connector> = Arc::new(crate::transport::TcpConnector {
            timeout: Duration::from_millis(500),
        });
        let connector = match &config.peer_tls {
            Some(tls) => tls.connector(tcp),
            None => tcp,
        };
        Self::start_with(config, store, metrics, connector).await
    }

    /// [`ClusterNode::start`], reaching peers through `connector` (see `crate::transport`).
    pub async fn start_with(
        config: ClusterConfig,
        store: NodeStore,
        metrics: ClusterMetrics,
        connector: Arc<dyn crate::transport::Connector>,
    ) -> Result<ClusterNode, ClusterError> {
        // Over mutual TLS the secret is proven per connection, bound to its TLS session
        // (`crate::tls`): no static, replayable proof is sent or accepted.
        let proof = config
            .peer_tls
            .is_none()
            .then(|| crate::auth::secret_proof(&config.cluster_secret));
        let pool = PeerPool::new(
            proof.clone(),
            Arc::new(crate::faults::Faults::from_env()),
            connector,
        );
        let raft_config = openraft::Config {
            cluster_name: "chorus".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            install_snapshot_timeout: 10_000,
            // Bounds one AppendEntries message: with batched entries of up to 1 MiB.
            max_payload_entries: 64,
            // Snapshots are built when `crate::snapshots` says, by entries and bytes.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            // A restarted leader stands for election instead of resuming its term. Resuming is
            // what made replicas diverge after power losses: a leader may lose the tail of its
            // log that it had not synced yet (legal: not acknowledged) while followers synced
            // it; resuming the same term, it then writes other entries under the same (term,
            // index), and a follower that has the old ones keeps them, since Raft takes equal
            // log ids for equal entries. It also served reads from a stale commit index (the
            // committed id is not fsynced on its own). tests/power_loss.rs shows both.
            enable_leader_restore: Some(false),
            // A replica that found damage in its log keeps only the log before it, so its
            // leader sees its log go back. openraft panics on that unless allowed; it then
            // replicates to it again from where its log ends. The replica neither votes nor
            // leads until caught up (`recover_shards`), which keeps this safe.
            allow_log_reversion: Some(true),
            // No ticks, no periodic heartbeats, and no election timer until the quiet loop has
            // heard whether a peer leads the shard (`crate::liveness`).
            enable_tick: false,
            // A candidate first asks whether it would win (persisting nothing). Without it, a
            // survivor with a shorter log bumps the term first and is refused; the other
            // survivor's own election in that term is then refused by the first one's vote
            // for itself, and both wait out another timeout: failovers of about a second.
            enable_pre_vote: Some(true),
            enable_heartbeat: false,
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Internal(format!("raft config: {e}")))?;
        let raft_config = Arc::new(raft_config);
        let recorded_cluster_id = store.cluster_id();
        pool.set_cluster_id(recorded_cluster_id.clone());
        preflight(
            &pool,
            &config,
            recorded_cluster_id.as_deref(),
            Duration::from_secs(2),
        )
        .await?;
        let mut shards = Vec::with_capacity(config.shard_count as usize);
        let node_slots = NodeSlots::new(config.node_entries_in_flight);
        for s in 0..config.shard_count {
            let id = ShardId(s);
            let log = store.log_store(id);
            let sm = store.state_machine(id);
            let reader = sm.reader();
            let network = ShardNetworkFactory {
                shard: s,
                pool: pool.clone(),
            };
            // openraft's tasks run in this span, so that their log lines name the shard.
            let raft = ShardRaft::new(config.node_id, raft_config.clone(), network, log, sm)
                .instrument(tracing::info_span!("shard", id = s))
                .await
                .map_err(|e| ClusterError::Internal(format!("starting shard {s}: {e}")))?;
            let proposer = (config.max_batch_commands > 1).then(|| {
                Proposer::start(
                    raft.clone(),
                    config.max_batch_commands,
                    node_slots.clone(),
                    metrics.commands_per_entry.clone(),
                )
            });
            let recovering = store.engine().recovering_shards().contains(&s);
            if recovering {
                tracing::warn!(
                    shard = s,
                    "this replica's log was cut at damage found at start: it does not vote or lead until it has caught up from its peers"
                );
            }
            shards.push(Shard {
                id,
                raft,
                reader,
                proposer,
                recovering: std::sync::atomic::AtomicBool::new(recovering),
            });
        }
        let peer_source = shards[0].raft.clone();
        let own_id = config.node_id;
        let peers: crate::typing::PeerList = Arc::new(move || {
            let metrics = peer_source.metrics();
            let m = metrics.borrow_watched();
            m.membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != own_id)
                .map(|(id, node)| (*id, node.raft_addr.clone()))
                .collect()
        });
        let typing = crate::typing::Typing::start(config.node_id, config.typing, pool.clone(), peers);
        let node = ClusterNode {
            inner: Arc::new(Inner {
                typing,
                // The start time: a later process of this node has a higher incarnation, so
                // late writes of an earlier one are recognized and ignored.
                incarnation: crate::clock::unix_ms().max(1),
                config,
                shards,
                pool,
                proof,
                store,
                metrics,
                cluster_id: RwLock::new(recorded_cluster_id),
                started: crate::clock::now(),
                liveness: crate::liveness::Liveness::default(),
                hand_overs: Default::default(),
                next_sweep: std::sync::Mutex::new(Instant::now()),
            }),
        };
        node.refresh_cluster_id();
        if !node.inner.config.peers.is_empty() {
            node.bootstrap().await?;
        }
        let upkeep = node.clone();
        tokio::spawn(async move { upkeep.upkeep_loop().await });
        tokio::spawn(node.clone().quiet_loop());
        tokio::spawn(node.clone().snapshot_loop());
        if node.shards().iter().any(|s| node.is_recovering(s.id)) {
            let recovery = node.clone();
            tokio::spawn(async move { recovery.recover_shards().await });
        }
        Ok(node)
    }

    async fn bootstrap(&self) -> Result<(), ClusterError> {
        let members: BTreeMap<u64, ChorusNode> = self
            .inner
            .config
            .peers
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    ChorusNode {
                        raft_addr: addr.clone(),
                    },
                )
            })
            .collect();
        for shard in &self.inner.shards {
            let initialized = shard
                .raft
                .is_initialized()
                .await
                .map_err(|e| ClusterError::Internal(e.to_string()))?;
            if !initialized {
                match shard.raft.initialize(members.clone()).await {
                    Ok(()) => {}
                    Err(RaftError::APIError(openraft::errors::InitializeError::NotAllowed(_))) => {}
                    Err(e) => {
                        return Err(ClusterError::Internal(format!(
                            "initializing shard {}: {e}",
                            shard.id
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.config.node_id
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.inner.config
    }

    /// The number of shards.
    pub fn shard_count(&self) -> u32 {
        self.inner.config.shard_count
    }

    /// The cluster id, once the cluster has recorded one.
    pub fn cluster_id(&self) -> Option<String> {
        self.inner.cluster_id.read().expect("lock").clone()
    }

    /// The node's typing indicators.
    pub fn typing(&self) -> &crate::typing::Typing {
        &self.inner.typing
    }

    /// This process's incarnation (its start time in ms).
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// The static proof of the cluster secret that peers present (`None` over mutual TLS).
    pub fn secret_proof(&self) -> Option<&str> {
        self.inner.proof.as_deref()
    }

    /// The node's fault-injection switches (test-only; see [`crate::faults`]).
    pub fn faults(&self) -> &crate::faults::Faults {
        self.inner.pool.faults()
    }

    /// The store's syncer metrics and other storage facilities.
    pub fn store(&self) -> &NodeStore {
        &self.inner.store
    }

    pub(crate) fn shard(&self, shard: u32) -> Option<&Shard> {
        self.inner.shards.get(shard as usize)
    }

    pub(crate) fn shards(&self) -> &[Shard] {
        &self.inner.shards
    }

    /// A read-only view of what this node has applied for `shard` (not linearizable: use
    /// [`ClusterNode::history`] for reads that must include every acknowledged write).
    pub fn local_reader(&self, shard: ShardId) -> Option<ShardReader> {
        self.shard(shard.0).map(|s| s.reader.clone())
    }

    /// Whether this node's replica of `shard` is recovering its log from its peers: it then
    /// refuses to vote or take leadership.
    pub fn is_recovering(&self, shard: ShardId) -> bool {
        self.shard(shard.0)
            .is_some_and(|s| s.recovering.load(std::sync::atomic::Ordering::Acquire))
    }

    /// The shards this node's replicas of are recovering.
    pub fn recovering_shards(&self) -> Vec<u32> {
        self.shards()
            .iter()
            .filter(|s| self.is_recovering(s.id))
            .map(|s| s.id.0)
            .collect()
    }

    /// Brings recovering replicas back: once a shard's leader has confirmed its commit index
    /// after this start and this replica has applied up to it, the replica holds everything it
    /// could have acknowledged before the damage, so it may vote and lead again.
    async fn recover_shards(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let pending = self.recovering_shards();
            if pending.is_empty() {
                return;
            }
            for s in pending {
                let shard = ShardId(s);
                let caught_up = tokio::time::timeout(Duration::from_secs(2), self.read_barrier(shard)).await;
                if !matches!(caught_up, Ok(Ok(()))) {
                    continue;
                }
                if let Err(e) = self.inner.store.engine().set_recovering(s, false).await {
                    tracing::error!(shard = s, error = %e, "could not record that the shard has recovered");
                    continue;
                }
                if let Some(replica) = self.shard(s) {
                    // The quiet loop turns its election timer on when no peer leads it.
                    replica
                        .recovering
                        .store(false, std::sync::atomic::Ordering::Release);
                }
                tracing::info!(
                    shard = s,
                    "replica recovered from its peers: it votes and may lead again"
                );
            }
        }
    }

    /// What peers said they lead.
    pub(crate) fn liveness(&self) -> &crate::liveness::Liveness {
        &self.inner.liveness
    }

    /// The shards whose leadership this node began to hand over.
    pub(crate) fn hand_overs(&self) -> &crate::liveness::HandOvers {
        &self.inner.hand_overs
    }

    /// The connections to peers.
    pub(crate) fn pool(&self) -> &Arc<PeerPool> {
        &self.inner.pool
    }

    /// Whether `peer` was heard from within `within`.
    pub fn heard_from(&self, peer: u64, within: Duration) -> bool {
        self.inner.liveness.heard_from(peer, within, crate::clock::now())
    }

    /// The leader of `shard` as this node knows it: from Raft, else from a live peer that says
    /// it leads the shard at this node's term or later (a follower that has seen no append
    /// since it started learns its leader this way while the shard is quiet).
    pub fn leader_of(&self, shard: ShardId) -> Option<u64> {
        let s = self.shard(shard.0)?;
        let (leader, term) = {
            let metrics = s.raft.metrics();
            let m = metrics.borrow_watched();
            (m.current_leader, m.current_term)
        };
        leader.or_else(|| {
            self.inner
                .liveness
                .claimed_leader(shard.0, term, crate::clock::now())
                .map(|(peer, _)| peer)
        })
    }

    /// The Raft handle of a shard.
    pub fn raft(&self, shard: u32) -> Option<&ShardRaft> {
        self.shard(shard).map(|s| &s.raft)
    }

    fn refresh_cluster_id(&self) {
        let id = self.inner.shards.first().and_then(|s| s.reader.cluster_id());
        if let Some(new_id) = &id
            && *self.inner.cluster_id.read().expect("lock") != id
        {
            tracing::info!(cluster_id = %new_id, "cluster id known");
            if let Err(e) = self.inner.store.set_cluster_id(new_id) {
                tracing::error!(error = %e, "cannot record the cluster id in the data directory");
            }
            self.inner.pool.set_cluster_id(id.clone());
            *self.inner.cluster_id.write().expect("lock") = id;
        }
    }

    pub(crate) fn metrics_of(&self, shard: &Shard) -> RaftMetrics<TypeConfig> {
        shard.raft.metrics().borrow_watched().clone()
    }

    fn raft_addr_of(&self, shard: &Shard, node: u64) -> Option<String> {
        let metrics = shard.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.raft_addr.clone())
    }

    /// Asks the member reached at `member` (its node-to-node address) to add this node to
    /// every shard; answers the cluster id once this node is a voter everywhere.
    pub async fn join_via(&self, member: &str) -> Result<String, ClusterError> {
        self.inner
            .pool
            .join(
                member,
                self.node_id(),
                &self.inner.config.raft_addr.to_string(),
                MEMBERSHIP_DEADLINE * 2,
            )
            .await
            .map_err(|e| ClusterError::Unreachable {
                node: 0,
                reason: format!("joining through {member}: {e}"),
            })
    }

    /// Where this node's security-relevant events go.
    pub fn audit(&self) -> &crate::audit::AuditLog {
        &self.inner.config.audit
    }

    /// Updates the per-shard gauges from Raft's metrics.
    pub fn refresh_metrics(&self) {
        let m = &self.inner.metrics;
        if let Some(bytes) = resident_memory_bytes() {
            m.resident_memory.set(bytes as i64);
        }
        for shard in self.shards() {
            let raft_metrics = self.metrics_of(shard);
            let label = ShardLabel { shard: shard.id.0 };
            m.term.get_or_create(&label).set(raft_metrics.current_term as i64);
            m.leader
                .get_or_create(&label)
                .set(raft_metrics.current_leader.unwrap_or(0) as i64);
            m.is_leader
                .get_or_create(&label)
                .set(i64::from(raft_metrics.state == ServerState::Leader));
            m.committed
                .get_or_create(&label)
                .set(raft_metrics.local_committed.map_or(0, |l| l.index) as i64);
            m.applied
                .get_or_create(&label)
                .set(raft_metrics.last_applied.map_or(0, |l| l.index) as i64);
            m.last_log
                .get_or_create(&label)
                .set(raft_metrics.last_log_index.unwrap_or(0) as i64);
        }
    }

    async fn upkeep_loop(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            self.refresh_cluster_id();
            if let Err(e) = self.upkeep().await {
                tracing::debug!(error = %e, "upkeep round failed");
            }
        }
    }

    /// One round of leader duties: record the cluster id, replicate configured limits, and
    /// hand leadership to each shard's preferred node so every node leads its share.
    async fn upkeep(&self) -> Result<(), ClusterError> {
        let sweep = {
            let interval = self.inner.config.sweep_interval;
            let mut next = self.inner.next_sweep.lock().expect("lock");
            let now = Instant::now();
            let due = !interval.is_zero() && now >= *next;
            if due {
                *next = now.checked_add(interval).unwrap_or(now);
            }
            due
        };
        for shard in self.shards() {
            let metrics = self.metrics_of(shard);
            if metrics.state != ServerState::Leader {
                continue;
            }
            if shard.id.0 == 0 && shard.reader.cluster_id().is_none() {
                let id = format!("{:016x}", crate::clock::random_u64());
                let request = ShardRequest::new(vec![Command::SetClusterId(id)]);
                let _ = shard.raft.client_write(request).await.map_err(write_error);
            }
            self.expire_leases(shard.id, crate::clock::unix_ms()).await;
            if sweep {
                self.sweep_history(shard.id, crate::clock::unix_ms()).await;
            }
            if shard.reader.limits() != self.inner.config.limits {
                let request = ShardRequest::new(vec![Command::SetLimits(self.inner.config.limits)]);
                let _ = shard.raft.client_write(request).await.map_err(write_error);
            }
            if shard.reader.with_state(|state| state.quotas()) != self.inner.config.quotas {
                let request = ShardRequest::new(vec![Command::SetQuotas(self.inner.config.quotas)]);
                let _ = shard.raft.client_write(request).await.map_err(write_error);
            }
        }
        // Give nodes time to start before moving leaders around.
        if crate::clock::now().duration_since(self.inner.started) > Duration::from_secs(2)
            && let Some((shard, target)) = placement::next_transfer(self)
        {
            tracing::info!(
                shard = shard.0,
                to = target,
                "transferring shard leadership to its preferred node"
            );
            // A leader that asks a recovering replica to take over stops proposing until the
            // next election: ask the target first.
            if let Some(s) = self.shard(shard.0)
                && self.accepts_leadership(shard, target).await
            {
                let term = self.metrics_of(s).current_term;
                self.inner.hand_overs.begin(shard.0, term);
                let _ = s.raft.trigger().transfer_leader(target).await;
            }
        }
        Ok(())
    }

    /// Whether node `target` says its replica of `shard` can lead (it is not recovering).
    async fn accepts_leadership(&self, shard: ShardId, target: u64) -> bool {
        let Some(addr) = self.shard(shard.0).and_then(|s| self.raft_addr_of(s, target)) else {
            return false;
        };
        match self
            .inner
            .pool
            .node_info(target, &addr, Duration::from_secs(1))
            .await
        {
            Ok(info) => !info.recovering_shards.contains(&shard.0),
            Err(_) => false,
        }
    }

    /// Stops every shard group and the log writer.
    pub async fn shutdown(&self) {
        for shard in self.shards() {
            let _ = shard.raft.shutdown().await;
        }
        self.inner.store.close().await;
    }
}
