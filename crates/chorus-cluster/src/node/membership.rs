//! Membership changes: a node joins every shard as a learner and is made a voter only once
//! it has caught up; a node leaves every shard. A node that cannot be reached never becomes a
//! voter (with three voters, one that never answers leaves no room for another failure), and
//! an id that is not a member is an error, not a silent success.

use super::routing::failed;
use crate::ClusterNode;
use crate::error::ClusterError;
use crate::forward::{ForwardError, ForwardRequest};
use chorus_core::{ErrorCode, ShardId};
use chorus_store::{ChorusNode, TypeConfig};
use openraft::RaftMetrics;
use std::time::Duration;

/// How long a joining node may show no replication progress on a shard before its join is
/// given up. A node that does not answer at all is refused before it is added (see
/// `add_node`); this catches one that stops answering, or never takes what it is sent. Long
/// enough for a snapshot, which shows as progress only once installed; the whole step stays
/// within the membership request's deadline (`MEMBERSHIP_DEADLINE`, 120 s).
pub(super) const CATCH_UP_STALL: Duration = Duration::from_secs(60);
/// How long the node to add has to say who it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a learner stands, from its leader's metrics.
#[derive(Debug, PartialEq)]
enum CatchUp {
    /// This node does not lead the shard (any more).
    NotLeader(Option<u64>),
    /// The learner has acknowledged entries up to this index (`None`: none yet).
    Behind(Option<u64>),
    /// It holds the entry that added it and is within openraft's replication lag.
    CaughtUp,
}

fn catch_up(metrics: &RaftMetrics<TypeConfig>, id: u64, added_at: u64, max_lag: u64) -> CatchUp {
    let Some(replication) = &metrics.replication else {
        return CatchUp::NotLeader(metrics.current_leader);
    };
    let matched = replication.get(&id).cloned().flatten().map(|log| log.index);
    match matched {
        Some(index)
            if index >= added_at && metrics.last_log_index.unwrap_or(0).saturating_sub(index) <= max_lag =>
        {
            CatchUp::CaughtUp
        }
        other => CatchUp::Behind(other),
    }
}

/// How a wait for a joining node ended.
pub(super) enum LearnerWait {
    /// It caught up: it may become a voter.
    CaughtUp,
    /// It made no progress for [`CATCH_UP_STALL`].
    Stalled {
        /// The last index it acknowledged, if any.
        acknowledged: Option<u64>,
    },
}

/// The refusal of a join whose node did not catch up (it was taken out again).
pub(super) fn not_caught_up(
    id: u64,
    raft_addr: &str,
    shard: ShardId,
    acknowledged: Option<u64>,
) -> ForwardError {
    let acknowledged = match acknowledged {
        Some(index) => format!("it acknowledged entries up to {index}"),
        None => "it acknowledged nothing".to_string(),
    };
    failed(
        ErrorCode::BadRequest,
        format!(
            "node {id} at {raft_addr} did not catch up on shard {shard} ({acknowledged}, then nothing for {} s): is it running, and reachable at that address from every member? It was not made a voter",
            CATCH_UP_STALL.as_secs()
        ),
        false,
    )
}

impl ClusterNode {
    /// Adds node `id` at `raft_addr` to every shard: as a learner that catches up (from a
    /// snapshot when the log was purged), then as a voter.
    pub async fn add_node(&self, id: u64, raft_addr: String) -> Result<(), ClusterError> {
        if id == 0 {
            return Err(ClusterError::BadRequest("node id must be positive".into()));
        }
        // Another address for a member would also repoint this node's links to it.
        let known = self
            .shards()
            .iter()
            .find_map(|shard| self.raft_addr_of(shard, id));
        if let Some(known) = known.filter(|known| *known != raft_addr) {
            return Err(ClusterError::Membership(format!(
                "node {id} is already a member, at {known}: remove it first to move it to {raft_addr}"
            )));
        }
        self.probe_joining_node(id, &raft_addr).await?;
        for shard in self.shards() {
            if self.voters_of(shard).contains(&id) {
                continue;
            }
            let node = ChorusNode {
                raft_addr: raft_addr.clone(),
            };
            self.leader_call(shard.id, ForwardRequest::AddLearner { id, node })
                .await?;
            self.leader_call(shard.id, ForwardRequest::AddVoter { id })
                .await?;
            tracing::info!(node = id, shard = shard.id.0, "node added as voter");
        }
        self.audit().record(crate::audit::AuditEvent::Membership {
            action: "added",
            node: id,
            raft_addr: Some(raft_addr),
        });
        Ok(())
    }

    /// Asks the node at `raft_addr` who it is, before it is added anywhere: one that does not
    /// answer, or is another node, or runs another shard count, is refused at once.
    async fn probe_joining_node(&self, id: u64, raft_addr: &str) -> Result<(), ClusterError> {
        let refuse = |why: String| {
            ClusterError::Membership(format!("node {id} at {raft_addr} {why}: it was not made a voter"))
        };
        let info = self
            .inner
            .pool
            .node_info(id, raft_addr, PROBE_TIMEOUT)
            .await
            .map_err(|e| {
                refuse(format!(
                    "did not answer ({e}); is it running, and reachable at that address from this node?"
                ))
            })?;
        if info.node_id != id {
            return Err(refuse(format!("answered as node {}", info.node_id)));
        }
        if info.shard_count != self.shard_count() {
            return Err(refuse(format!(
                "runs {} shards, this cluster {}",
                info.shard_count,
                self.shard_count()
            )));
        }
        Ok(())
    }

    /// On the shard's leader, after node `id` was added as a learner by the membership entry
    /// at `added_at`: waits until it has caught up, or until it showed no progress for
    /// [`CATCH_UP_STALL`] (the caller then takes it out again: [`not_caught_up`]).
    pub(super) async fn wait_for_learner(
        &self,
        raft: &crate::ShardRaft,
        id: u64,
        added_at: u64,
    ) -> Result<LearnerWait, ForwardError> {
        let max_lag = raft.config().replication_lag_threshold;
        let mut seen = CatchUp::Behind(None);
        let mut acknowledged = None;
        loop {
            let waited = raft
                .wait(Some(CATCH_UP_STALL))
                .metrics(
                    |m| catch_up(m, id, added_at, max_lag) != seen,
                    "a joining node's progress",
                )
                .await;
            let Ok(metrics) = waited else {
                return Ok(LearnerWait::Stalled { acknowledged });
            };
            seen = catch_up(&metrics, id, added_at, max_lag);
            match seen {
                CatchUp::CaughtUp => return Ok(LearnerWait::CaughtUp),
                CatchUp::NotLeader(leader) => return Err(ForwardError::NotLeader { leader }),
                CatchUp::Behind(index) => acknowledged = index,
            }
        }
    }

    /// The voters of `shard` as this node knows them.
    fn voters_of(&self, shard: &super::Shard) -> Vec<u64> {
        self.metrics_of(shard)
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Removes node `id` from every shard; an id no shard knows is an error.
    pub async fn remove_node(&self, id: u64) -> Result<(), ClusterError> {
        let known = self.shards().iter().any(|shard| {
            self.metrics_of(shard)
                .membership_config
                .membership()
                .get_node(&id)
                .is_some()
        });
        if !known {
            return Err(ClusterError::NotMember { node: id });
        }
        for shard in self.shards() {
            let voters = self.voters_of(shard);
            if voters.len() <= 1 && voters.contains(&id) {
                return Err(ClusterError::Membership(format!(
                    "node {id} is the last voter of shard {}",
                    shard.id
                )));
            }
            self.leader_call(shard.id, ForwardRequest::RemoveNode { id })
                .await?;
            tracing::info!(node = id, shard = shard.id.0, "node removed");
        }
        self.audit().record(crate::audit::AuditEvent::Membership {
            action: "removed",
            node: id,
            raft_addr: None,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::LogId;
    use openraft::vote::leader_id_adv::LeaderId;
    use std::collections::BTreeMap;

    fn leader_metrics(last: u64, learner: Option<u64>) -> RaftMetrics<TypeConfig> {
        let mut m = RaftMetrics::new_initial(1);
        m.last_log_index = Some(last);
        let log = |index| LogId::new(LeaderId { term: 1, node_id: 1 }, index);
        m.replication = Some(BTreeMap::from([(1, Some(log(last))), (4, learner.map(log))]));
        m
    }

    /// openraft's own wait (`add_learner(.., true)`) counts a learner that acknowledged
    /// nothing as caught up while the log is within its lag threshold (5,000 entries): an
    /// address where nothing listens was made a voter in 0.3 s.
    #[test]
    fn a_learner_that_acknowledged_nothing_has_not_caught_up() {
        assert_eq!(
            catch_up(&leader_metrics(40, None), 4, 38, 5_000),
            CatchUp::Behind(None)
        );
        assert_eq!(
            catch_up(&leader_metrics(40, Some(30)), 4, 38, 5_000),
            CatchUp::Behind(Some(30))
        );
        assert_eq!(
            catch_up(&leader_metrics(40, Some(38)), 4, 38, 5_000),
            CatchUp::CaughtUp
        );
        assert_eq!(
            catch_up(&leader_metrics(20_000, Some(38)), 4, 38, 5_000),
            CatchUp::Behind(Some(38))
        );
        let mut follower = leader_metrics(40, Some(40));
        follower.replication = None;
        follower.current_leader = Some(2);
        assert_eq!(catch_up(&follower, 4, 38, 5_000), CatchUp::NotLeader(Some(2)));
    }
}
