//! What `chorus cluster status` and `GET /api/v1/cluster` show, and readiness checks.

use crate::node::ClusterNode;
use openraft::ServerState;
use openraft::async_runtime::Instant as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One shard as this node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardStatus {
    /// Shard index.
    pub shard: u32,
    /// This node's role: leader, follower, candidate, learner.
    pub role: String,
    /// Known leader.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Voter ids.
    pub voters: Vec<u64>,
    /// Learner ids.
    pub learners: Vec<u64>,
    /// Last log index.
    pub last_log_index: u64,
    /// Committed index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Index of the last snapshot (0: none).
    pub snapshot_index: u64,
    /// Last purged log index (0: none).
    pub purged_index: u64,
    /// This node's replica is recovering its log from its peers (damage was found in the
    /// log at start): it does not vote or lead until it has caught up.
    #[serde(default)]
    pub recovering: bool,
    /// On a leader: milliseconds since a quorum last acknowledged it. A quiet shard hears
    /// nothing between writes, so this grows past the lease; the next write renews it.
    #[serde(default)]
    pub quorum_acked_ms_ago: Option<u64>,
    /// The retention limits this replica applies (the leader replicates the configured ones
    /// within a fraction of a second of taking over).
    #[serde(default)]
    pub limits: Option<chorus_core::HistoryLimits>,
    /// The history quotas this replica applies.
    #[serde(default)]
    pub quotas: Option<chorus_core::HistoryQuotas>,
}

/// A member node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    /// Node id.
    pub id: u64,
    /// Its node-to-node address.
    pub raft_addr: String,
    /// How many shards it leads, as this node knows.
    pub leads: usize,
}

/// The cluster as seen from one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    /// The answering node.
    pub node_id: u64,
    /// The answering node's process id (benchmarks and chaos tools on the same host use it).
    pub pid: u32,
    /// Its HTTP address.
    pub http_addr: String,
    /// The cluster id (none until recorded).
    pub cluster_id: Option<String>,
    /// Shard count.
    pub shard_count: u32,
    /// Members of the cluster (from shard 0's membership).
    pub nodes: Vec<NodeStatus>,
    /// Every shard.
    pub shards: Vec<ShardStatus>,
}

/// One readiness check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReadinessCheck {
    /// Check name.
    pub name: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

impl ClusterNode {
    /// The status of every shard and member.
    pub fn status(&self) -> ClusterStatus {
        let mut shards = Vec::new();
        let mut members: BTreeMap<u64, String> = BTreeMap::new();
        for shard in self.shards() {
            let m = self.metrics_of(shard);
            let membership = m.membership_config.membership();
            if shard.id.0 == 0 {
                for (id, node) in membership.nodes() {
                    members.insert(*id, node.raft_addr.clone());
                }
            }
            let role = match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            };
            shards.push(ShardStatus {
                shard: shard.id.0,
                role: role.to_string(),
                leader: self.leader_of(shard.id),
                term: m.current_term,
                voters: membership.voter_ids().collect(),
                learners: membership.learner_ids().collect(),
                last_log_index: m.last_log_index.unwrap_or(0),
                commit_index: m.local_committed.map_or(0, |l| l.index),
                applied_index: m.last_applied.map_or(0, |l| l.index),
                snapshot_index: m.snapshot.map_or(0, |l| l.index),
                purged_index: m.purged.map_or(0, |l| l.index),
                recovering: self.is_recovering(shard.id),
                quorum_acked_ms_ago: m
                    .last_quorum_acked
                    .as_ref()
                    .map(|acked| acked.elapsed().as_millis() as u64),
                limits: Some(shard.reader.limits()),
                quotas: Some(shard.reader.with_state(|state| state.quotas())),
            });
        }
        let nodes = members
            .into_iter()
            .map(|(id, raft_addr)| NodeStatus {
                id,
                raft_addr,
                leads: shards.iter().filter(|s| s.leader == Some(id)).count(),
            })
            .collect();
        ClusterStatus {
            node_id: self.node_id(),
            pid: std::process::id(),
            http_addr: self.config().http_addr.to_string(),
            cluster_id: self.cluster_id(),
            shard_count: self.shard_count(),
            nodes,
            shards,
        }
    }

    /// The readiness checks: member of every shard, every shard led, applied caught up.
    pub fn readiness(&self) -> Vec<ReadinessCheck> {
        let status = self.status();
        let me = self.node_id();
        let not_member: Vec<u32> = status
            .shards
            .iter()
            .filter(|s| !s.voters.contains(&me))
            .map(|s| s.shard)
            .collect();
        let leaderless: Vec<u32> = status
            .shards
            .iter()
            .filter(|s| s.leader.is_none())
            .map(|s| s.shard)
            .collect();
        let behind: Vec<u32> = status
            .shards
            .iter()
            .filter(|s| s.applied_index < s.commit_index)
            .map(|s| s.shard)
            .collect();
        let check = |name, bad: &Vec<u32>, what: &str| ReadinessCheck {
            name,
            ok: bad.is_empty(),
            detail: if bad.is_empty() {
                format!("all {} shards", status.shard_count)
            } else {
                format!("{what}: shards {bad:?}")
            },
        };
        vec![
            check("member", &not_member, "this node is not a voter of"),
            check("leaders", &leaderless, "no known leader for"),
            check("applied", &behind, "applied index behind commit index on"),
        ]
    }
}
