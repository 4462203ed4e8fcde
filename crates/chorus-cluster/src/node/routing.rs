//! Routing: writes and reads go to the shard's leader, here or on a peer (the forward lane of
//! `crate::link`), and a leader handles what is routed to it (`handle_forward`).

use super::membership::{LearnerWait, not_caught_up};
use super::metrics::OutcomeLabel;
use super::{MEMBERSHIP_DEADLINE, RETRY_PAUSE, ROUTE_DEADLINE};
use crate::ClusterNode;
use crate::error::ClusterError;
use crate::forward::{ForwardError, ForwardRequest, ForwardResponse, ForwardResult};
use crate::network::{CallError, Rpc};
use chorus_core::revocation::{RevokeCommand, RevokeTarget, Revoked};
use chorus_core::{
    ChannelName, Command, CommandResult, ErrorCode, HistoryPage, PublishCommand, Published, ShardId,
    shard_for,
};
use chorus_store::{ShardRequest, ShardResponse, TypeConfig};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, ForwardReason, RaftError};
use openraft::{ChangeMembers, ReadPolicy};
use std::collections::BTreeSet;
use std::time::Duration;

pub(crate) fn failed(code: ErrorCode, message: impl ToString, indeterminate: bool) -> ForwardError {
    ForwardError::Failed {
        code,
        message: message.to_string(),
        indeterminate,
    }
}

pub(crate) fn write_error(err: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ForwardError {
    match &err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f))
            if f.reason == ForwardReason::LeaseExpired =>
        {
            ForwardError::LeaseExpired
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ForwardError::NotLeader { leader: f.leader_id }
        }
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => failed(ErrorCode::Timeout, &err, true),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            failed(ErrorCode::BadRequest, e, false)
        }
        _ => failed(ErrorCode::Unavailable, &err, true),
    }
}

impl ClusterNode {
    /// Publishes one event through the channel's shard leader; answers after commit.
    pub async fn publish(&self, command: PublishCommand) -> Result<Published, ClusterError> {
        if self.faults().ack_before_commit() {
            // The deliberately broken build of the chaos suite's negative control: answer
            // now and commit (perhaps) later.
            let channel = command.channel.clone();
            let node = self.clone();
            tokio::spawn(async move { node.publish_committed(command).await });
            return Ok(Published {
                channel,
                offset: 0,
                epoch: 0,
                duplicate: false,
            });
        }
        self.publish_committed(command).await
    }

    async fn publish_committed(&self, command: PublishCommand) -> Result<Published, ClusterError> {
        let shard = shard_for(command.channel.as_str(), self.shard_count());
        let response = self.write(shard, vec![Command::Publish(command)]).await;
        let outcome = if response.is_ok() { "ok" } else { "error" };
        self.inner
            .metrics
            .writes
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        match response?.0.into_iter().next() {
            Some(CommandResult::Published(published)) => Ok(published),
            Some(CommandResult::QuotaExceeded(exceeded)) => Err(ClusterError::QuotaExceeded(exceeded)),
            other => Err(ClusterError::Internal(format!(
                "unexpected apply result {other:?}"
            ))),
        }
    }

    /// Revokes a user's tokens or one token on every node (through shard 0, which every node
    /// replicates); kept until `until_s`, when no refused token can be valid any more.
    pub async fn revoke(&self, target: RevokeTarget, until_s: u64) -> Result<(), ClusterError> {
        let command = Command::Revoke(RevokeCommand {
            target,
            until_s,
            time_ms: 0, // stamped by the leader
        });
        self.write(ShardId(0), vec![command]).await.map(|_| ())
    }

    /// Whether a token of `user` (issued at `issued_at_s`, with id `token_id`) is revoked,
    /// by this node's replica of shard 0.
    pub fn revoked(&self, user: &str, issued_at_s: Option<u64>, token_id: Option<&str>) -> Option<Revoked> {
        self.inner.shards[0]
            .reader
            .with_state(|state| state.revocations().check(user, issued_at_s, token_id))
    }

    /// Proposes `commands` (in this order, in one entry) to `shard`'s leader, wherever it is.
    pub async fn write(&self, shard: ShardId, commands: Vec<Command>) -> Result<ShardResponse, ClusterError> {
        match self.leader_call(shard, ForwardRequest::Write(commands)).await? {
            ForwardResponse::Written(response) => Ok(response),
            other => Err(ClusterError::Internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Reads a channel's history, linearizably: it includes every write acknowledged before
    /// the read began, whichever node acknowledged it.
    pub async fn history(
        &self,
        channel: &ChannelName,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, ClusterError> {
        let shard = shard_for(channel.as_str(), self.shard_count());
        self.read_barrier(shard).await?;
        Ok(self.inner.shards[shard.0 as usize]
            .reader
            .history(channel, since, limit))
    }

    /// Waits until this node has applied everything the shard had committed when called.
    pub async fn read_barrier(&self, shard: ShardId) -> Result<(), ClusterError> {
        let index = match self.leader_call(shard, ForwardRequest::ReadIndex).await? {
            ForwardResponse::ReadIndex(index) => index,
            other => return Err(ClusterError::Internal(format!("unexpected reply {other:?}"))),
        };
        let raft = &self.inner.shards[shard.0 as usize].raft;
        raft.wait(Some(ROUTE_DEADLINE))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|_| ClusterError::Timeout {
                shard,
                millis: ROUTE_DEADLINE.as_millis() as u64,
            })?;
        Ok(())
    }

    /// Runs `request` on the shard's leader: here if this node leads, else over gRPC.
    /// Retries while leadership moves, until [`ROUTE_DEADLINE`].
    pub async fn leader_call(
        &self,
        shard: ShardId,
        request: ForwardRequest,
    ) -> Result<ForwardResponse, ClusterError> {
        let s = self
            .shard(shard.0)
            .ok_or_else(|| ClusterError::BadRequest(format!("no shard {shard}")))?;
        // Membership changes wait for a learner to catch up, possibly through a snapshot.
        let allowed = match request {
            ForwardRequest::Write(_) | ForwardRequest::ReadIndex => ROUTE_DEADLINE,
            _ => MEMBERSHIP_DEADLINE,
        };
        let deadline = crate::clock::now() + allowed;
        let mut hint: Option<u64> = None;
        loop {
            let leader = hint.take().or_else(|| self.leader_of(shard));
            let result = match leader {
                Some(leader) if leader == self.node_id() => self.handle_forward(shard, request.clone()).await,
                Some(leader) => match self.raft_addr_of(s, leader) {
                    Some(addr) => {
                        self.inner.metrics.forwards.inc();
                        let remaining = deadline
                            .saturating_duration_since(crate::clock::now())
                            .max(Duration::from_millis(100));
                        match self
                            .inner
                            .pool
                            .call::<_, ForwardResult>(
                                leader,
                                &addr,
                                Rpc::Forward,
                                shard.0,
                                &request,
                                remaining,
                            )
                            .await
                        {
                            Ok(result) => result,
                            Err(CallError::NotDelivered(_)) => {
                                // Never sent: safe to try again once a leader is known.
                                Err(ForwardError::NotLeader { leader: None })
                            }
                            Err(CallError::Refused(_)) => {
                                // Refused before handling (a stale leader hint pointing at a
                                // process that is not one of ours): try again.
                                Err(ForwardError::NotLeader { leader: None })
                            }
                            Err(e) => {
                                let indeterminate = matches!(request, ForwardRequest::Write(_));
                                Err(failed(
                                    ErrorCode::Unavailable,
                                    format!("forwarding to node {leader}: {e}"),
                                    indeterminate,
                                ))
                            }
                        }
                    }
                    None => Err(ForwardError::NotLeader { leader: None }),
                },
                None => Err(ForwardError::NotLeader { leader: None }),
            };
            match result {
                Ok(response) => return Ok(response),
                Err(ForwardError::LeaseExpired) => {
                    // The leader could not refresh its lease in three tries (it is probably
                    // losing its quorum): same leader again after a pause, never in a tight loop.
                    if crate::clock::now() >= deadline {
                        return Err(ClusterError::NoLeader { shard });
                    }
                    hint = leader;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(ForwardError::NotLeader { leader }) => {
                    if crate::clock::now() >= deadline {
                        return Err(ClusterError::NoLeader { shard });
                    }
                    if leader.is_some() && leader != Some(self.node_id()) {
                        hint = leader;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(ForwardError::Failed {
                    code,
                    message,
                    indeterminate,
                }) => {
                    return Err(if indeterminate {
                        ClusterError::Indeterminate {
                            shard,
                            reason: message,
                        }
                    } else {
                        match code {
                            ErrorCode::BadRequest => ClusterError::Membership(message),
                            ErrorCode::Unavailable => ClusterError::Unreachable {
                                node: leader.unwrap_or(0),
                                reason: message,
                            },
                            _ => ClusterError::Internal(message),
                        }
                    });
                }
            }
        }
    }

    /// Does what a forwarded request asks, if this node leads the shard.
    /// Bounded in time: a leader that lost its quorum answers with an error, not never.
    pub async fn handle_forward(&self, shard: ShardId, request: ForwardRequest) -> ForwardResult {
        let (allowed, on_timeout) = match request {
            ForwardRequest::Write(_) => (
                ROUTE_DEADLINE,
                failed(ErrorCode::Timeout, "no commit in time", true),
            ),
            ForwardRequest::ReadIndex => (
                ROUTE_DEADLINE,
                failed(
                    ErrorCode::Unavailable,
                    "no quorum confirmed leadership in time",
                    false,
                ),
            ),
            _ => (
                MEMBERSHIP_DEADLINE,
                failed(
                    ErrorCode::Timeout,
                    "membership change not committed in time",
                    true,
                ),
            ),
        };
        tokio::time::timeout(allowed, self.handle_forward_unbounded(shard, request))
            .await
            .unwrap_or(Err(on_timeout))
    }

    async fn handle_forward_unbounded(&self, shard: ShardId, request: ForwardRequest) -> ForwardResult {
        let s = self
            .shard(shard.0)
            .ok_or_else(|| failed(ErrorCode::BadRequest, format!("no shard {shard}"), false))?;
        let raft = &s.raft;
        match request {
            ForwardRequest::Write(mut commands) => {
                // The leader stamps publish times: one clock per shard orders retention and
                // the dedupe window, whatever the clocks of the nodes that accepted them.
                let now = crate::clock::unix_ms();
                for command in &mut commands {
                    command.stamp_time(now);
                }
                if !raft.is_leader() {
                    let leader = s.raft.metrics().borrow_watched().current_leader;
                    return Err(ForwardError::NotLeader { leader });
                }
                self.with_fresh_lease(raft, || async {
                    match &s.proposer {
                        Some(proposer) => proposer.propose(commands.clone()).await,
                        None => raft
                            .client_write(ShardRequest::new(commands.clone()))
                            .await
                            .map(|response| ForwardResponse::Written(response.data))
                            .map_err(write_error),
                    }
                })
                .await
            }
            ForwardRequest::ReadIndex => {
                let read = raft
                    .ensure_linearizable(ReadPolicy::ReadIndex)
                    .await
                    .map_err(|e| match e {
                        RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(f)) => {
                            ForwardError::NotLeader { leader: f.leader_id }
                        }
                        other => failed(ErrorCode::Unavailable, other, false),
                    })?;
                Ok(ForwardResponse::ReadIndex(read.index()))
            }
            ForwardRequest::AddLearner { id, node } => {
                let added_at = std::sync::atomic::AtomicU64::new(0);
                self.with_fresh_lease(raft, || async {
                    let added = raft
                        .add_learner(id, node.clone(), false)
                        .await
                        .map_err(write_error)?;
                    added_at.store(added.log_id.index, std::sync::atomic::Ordering::Relaxed);
                    Ok(ForwardResponse::Done)
                })
                .await?;
                let added_at = added_at.into_inner();
                match self.wait_for_learner(raft, id, added_at).await? {
                    LearnerWait::CaughtUp => Ok(ForwardResponse::Done),
                    LearnerWait::Stalled { acknowledged } => {
                        tracing::warn!(node = id, raft_addr = %node.raft_addr, shard = shard.0, "joining node made no progress; taking it out");
                        self.with_fresh_lease(raft, || async {
                            raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                                .await
                                .map_err(write_error)?;
                            Ok(ForwardResponse::Done)
                        })
                        .await?;
                        Err(not_caught_up(id, &node.raft_addr, shard, acknowledged))
                    }
                }
            }
            ForwardRequest::AddVoter { id } => {
                self.with_fresh_lease(raft, || async {
                    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                        .await
                        .map_err(write_error)?;
                    Ok(ForwardResponse::Done)
                })
                .await
            }
            ForwardRequest::RemoveNode { id } => {
                let membership = self.metrics_of(s).membership_config.membership().clone();
                let is_voter = membership.voter_ids().any(|v| v == id);
                let change = if is_voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else if membership.get_node(&id).is_some() {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                } else {
                    return Ok(ForwardResponse::Done);
                };
                self.with_fresh_lease(raft, || async {
                    raft.change_membership(change.clone(), false)
                        .await
                        .map_err(write_error)?;
                    Ok(ForwardResponse::Done)
                })
                .await
            }
        }
    }

    /// Proposes through `propose` once this leader has a fresh lease, and again (up to three
    /// times) when openraft refused it for an expired lease: a quiet shard's leader hears from
    /// nobody between writes, so its lease has usually run out when a write or a membership
    /// change arrives after a pause. A refusal for the lease means nothing was proposed.
    async fn with_fresh_lease<F, Fut>(&self, raft: &crate::ShardRaft, mut propose: F) -> ForwardResult
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = ForwardResult>,
    {
        let lease = Duration::from_millis(self.inner.config.election_timeout_ms.1);
        let mut attempts = 0;
        loop {
            crate::liveness::fresh_lease(raft, lease).await;
            let result = propose().await;
            attempts += 1;
            if matches!(result, Err(ForwardError::LeaseExpired)) && attempts < 3 {
                continue;
            }
            return result;
        }
    }
}
