//! The task that keeps idle shards quiet (see `crate::liveness`): it tells peers which shards
//! this node leads, turns each shard's election timer on or off from what peers say, and
//! nudges leaders when a peer comes back or claims a newer term.

use crate::liveness::{CHECK_INTERVAL, ElectionSwitch, LeadingNotice, PING_INTERVAL};
use crate::node::ClusterNode;
use chorus_proto::cluster::LinkKind;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::time::Duration;

impl ClusterNode {
    /// The shards this node leads now, with their terms; not those it began to hand over in
    /// this term (such a leader proposes nothing more: if the hand-over fails, the others
    /// must elect).
    fn leading(&self) -> Vec<(u32, u64)> {
        self.shards()
            .iter()
            .filter_map(|s| {
                let metrics = s.raft.metrics();
                let m = metrics.borrow_watched();
                (m.state == ServerState::Leader && self.hand_overs().may_claim(s.id.0, m.current_term))
                    .then_some((s.id.0, m.current_term))
            })
            .collect()
    }

    /// Every other member, by id, with its node-to-node address.
    fn peers(&self) -> BTreeMap<u64, String> {
        let mut peers = BTreeMap::new();
        for s in self.shards() {
            let metrics = s.raft.metrics();
            let m = metrics.borrow_watched();
            for (id, node) in m.membership_config.membership().nodes() {
                if *id != self.node_id() {
                    peers.insert(*id, node.raft_addr.clone());
                }
            }
        }
        peers
    }

    fn send_leading_notices(&self) {
        let notice = LeadingNotice {
            from: self.node_id(),
            leads: self.leading(),
        };
        for (peer, addr) in self.peers() {
            // Lost notices are sent again next interval.
            let _ = self.pool().notify(peer, &addr, LinkKind::Leading, 0, &notice);
        }
    }

    /// A peer's notice arrived.
    pub(crate) fn leading_notice(&self, notice: LeadingNotice) {
        if self.liveness().record(notice, crate::clock::now()) {
            // A peer (re)appeared: let it learn at once who leads what here, and the commit
            // index, as a heartbeat round would.
            for s in self.shards() {
                if s.raft.is_leader() {
                    let raft = s.raft.clone();
                    tokio::spawn(async move { raft.trigger().heartbeat().await });
                }
            }
        }
    }

    /// Runs for the life of the node.
    pub(crate) async fn quiet_loop(self) {
        let mut switches: Vec<ElectionSwitch> =
            self.shards().iter().map(|_| ElectionSwitch::default()).collect();
        let (min, max) = self.config().election_timeout_ms;
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_notice = crate::clock::now() - PING_INTERVAL;
        // Each shard's (leader, term) as last logged: operators see every change of leader.
        let mut known: Vec<(Option<u64>, u64)> = self.shards().iter().map(|_| (None, 0)).collect();
        loop {
            tick.tick().await;
            let now = crate::clock::now();
            if now.duration_since(last_notice) >= PING_INTERVAL {
                last_notice = now;
                self.send_leading_notices();
            }
            let (mut changes, mut timers_on) = (Vec::new(), Vec::new());
            for ((s, switch), known) in self
                .shards()
                .iter()
                .zip(switches.iter_mut())
                .zip(known.iter_mut())
            {
                let (state, term, leader) = {
                    let metrics = s.raft.metrics();
                    let m = metrics.borrow_watched();
                    (m.state, m.current_term, m.current_leader)
                };
                if let Some(node) = leader
                    && *known != (leader, term)
                {
                    changes.push(format!("shard {}: node {node} (term {term})", s.id.0));
                    *known = (leader, term);
                }
                if state == ServerState::Leader {
                    switch.leading(&s.raft);
                    // A peer leading it at a later term: this leader missed an election. A
                    // heartbeat round makes it learn the new term and step down.
                    if self.liveness().claimed_leader(s.id.0, term + 1, now).is_some() {
                        let raft = s.raft.clone();
                        tokio::spawn(async move { raft.trigger().heartbeat().await });
                    }
                    continue;
                }
                let claimed =
                    self.is_recovering(s.id) || self.liveness().claimed_leader(s.id.0, term, now).is_some();
                let jitter = || crate::clock::random_delay(Duration::from_millis(max.saturating_sub(min)));
                if let Some(enabled) = switch.decide(claimed, now, jitter) {
                    if enabled {
                        timers_on.push(s.id.0);
                    }
                    ElectionSwitch::apply(&s.raft, enabled);
                }
            }
            // One line per round, not per shard: a node's restart changes every shard at once.
            if !changes.is_empty() {
                tracing::info!(leaders = %changes.join(", "), "shard leaders changed");
            }
            if !timers_on.is_empty() {
                tracing::info!(shards = ?timers_on, "no live peer claims these shards: election timers on");
            }
        }
    }
}
