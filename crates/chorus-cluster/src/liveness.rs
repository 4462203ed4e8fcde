//! Quiet shards: node-level liveness instead of a heartbeat per shard group.
//!
//! ```text
//!  every PING_INTERVAL, to each peer:  Leading { from, [(shard, term) this node leads] }
//!  every CHECK_INTERVAL, per shard:
//!    leader here        → no ticks, no periodic heartbeats (replication carries writes and commits)
//!    a peer claims it   → election timer off: the leader is alive
//!    no fresh claim     → election timer on, after a random delay (one candidate goes first)
//! ```
//!
//! Twelve groups heartbeating every 60 ms cost an idle 3-node cluster about a fifth of a core.
//! Here a node says which shards it leads once per `PING_INTERVAL` to each peer, and a
//! follower keeps its election timer off while a peer it has heard from within `SILENCE`
//! claims the shard at its term or a later one. When the claims stop (the leader died, was
//! cut off, or stepped down), the timer comes back on and Raft elects as before: the failover
//! time is `SILENCE` plus the jitter, or openraft's follower lease (`election_timeout_max`)
//! plus the election timeout since the leader's last message if that is later, plus an
//! election (docs/architecture.md, "What a failover waits for"). Writes, commits and linearizable reads
//! need no periodic heartbeat (openraft replicates on every append and commit, and a
//! ReadIndex read sends its own heartbeat round).

use crate::ShardRaft;
use openraft::async_runtime::{Instant as _, WatchReceiver};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a node tells each peer which shards it leads.
pub const PING_INTERVAL: Duration = Duration::from_millis(150);
/// How often each shard's election timer is reconsidered.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(75);
/// A peer not heard from for this long no longer counts as alive.
pub const SILENCE: Duration = Duration::from_millis(400);

/// What a node tells its peers every `PING_INTERVAL`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadingNotice {
    /// The sender.
    pub from: u64,
    /// The shards it leads, with their terms.
    pub leads: Vec<(u32, u64)>,
}

#[derive(Debug, Clone)]
struct Heard {
    at: Instant,
    leads: Vec<(u32, u64)>,
}

/// What this node has heard from its peers.
#[derive(Debug, Default)]
pub struct Liveness {
    peers: Mutex<HashMap<u64, Heard>>,
}

impl Liveness {
    /// Records a notice; says whether the peer was silent (or unknown) before it.
    pub fn record(&self, notice: LeadingNotice, now: Instant) -> bool {
        let mut peers = self.peers.lock().expect("liveness lock");
        let returned = peers
            .get(&notice.from)
            .is_none_or(|h| now.duration_since(h.at) > SILENCE);
        peers.insert(
            notice.from,
            Heard {
                at: now,
                leads: notice.leads,
            },
        );
        returned
    }

    /// Whether `peer` was heard from within `within`.
    pub fn heard_from(&self, peer: u64, within: Duration, now: Instant) -> bool {
        self.peers
            .lock()
            .expect("liveness lock")
            .get(&peer)
            .is_some_and(|h| now.duration_since(h.at) <= within)
    }

    /// The peer heard within `SILENCE` that claims to lead `shard`, with the highest term;
    /// only claims at `min_term` or later count.
    pub fn claimed_leader(&self, shard: u32, min_term: u64, now: Instant) -> Option<(u64, u64)> {
        let peers = self.peers.lock().expect("liveness lock");
        peers
            .iter()
            .filter(|(_, h)| now.duration_since(h.at) <= SILENCE)
            .filter_map(|(peer, h)| {
                h.leads
                    .iter()
                    .find(|(s, term)| *s == shard && *term >= min_term)
                    .map(|(_, term)| (*peer, *term))
            })
            .max_by_key(|(_, term)| *term)
    }
}

/// The shards whose leadership this node began to hand over (leader placement), each with
/// the term it led them at. openraft's leader proposes nothing more in that term once a
/// transfer began, so the node must not claim such a shard for the rest of the term (however
/// long it lasts): if the target never takes over, the others elect.
#[derive(Debug, Default)]
pub struct HandOvers {
    begun: Mutex<HashMap<u32, u64>>,
}

impl HandOvers {
    /// A transfer of `shard`, led at `term`, begins.
    pub fn begin(&self, shard: u32, term: u64) {
        self.begun.lock().expect("hand-over lock").insert(shard, term);
    }

    /// Whether this node, leading `shard` at `term`, may tell peers so.
    pub fn may_claim(&self, shard: u32, term: u64) -> bool {
        self.begun.lock().expect("hand-over lock").get(&shard) != Some(&term)
    }
}

/// The election timer of one shard on a node that does not lead it.
#[derive(Debug, Default)]
pub struct ElectionSwitch {
    enabled: Option<bool>,
    enable_at: Option<Instant>,
}

impl ElectionSwitch {
    /// Decides the timer: off while a live peer claims the shard (`claimed`), on once no claim
    /// has been seen for `jitter` (drawn again each time the claims stop). Returns the new
    /// setting when it changes.
    pub fn decide(&mut self, claimed: bool, now: Instant, jitter: impl FnOnce() -> Duration) -> Option<bool> {
        let want = if claimed {
            self.enable_at = None;
            false
        } else {
            let at = *self.enable_at.get_or_insert_with(|| now + jitter());
            now >= at
        };
        if self.enabled == Some(want) {
            return None;
        }
        if !want && self.enabled.is_none() {
            // Starting quiet: nothing to switch off yet.
            self.enabled = Some(false);
            return Some(false);
        }
        self.enabled = Some(want);
        Some(want)
    }

    /// Applies `enabled` to the group: its election timer, and its ticks (they only check that
    /// timer and the heartbeat one, and a quiet group should not wake up at all).
    pub fn apply(raft: &ShardRaft, enabled: bool) {
        raft.runtime_config().elect(enabled);
        raft.runtime_config().tick(enabled);
    }

    /// The group leads here: no ticks (no heartbeats, no election timer).
    pub fn leading(&mut self, raft: &ShardRaft) {
        if self.enabled != Some(false) {
            Self::apply(raft, false);
        }
        self.enabled = Some(false);
        self.enable_at = None;
    }
}

/// Makes sure a leader has heard from a quorum within half of `lease` before it proposes.
///
/// openraft refuses proposals from a leader whose last quorum acknowledgement is older than its
/// lease (`election_timeout_max`), and without periodic heartbeats a quiet shard's leader hears
/// nothing: the first write after a pause sends one heartbeat round and waits for it.
pub async fn fresh_lease(raft: &ShardRaft, lease: Duration) {
    let fresh = |m: &openraft::RaftMetrics<chorus_store::TypeConfig>| {
        m.last_quorum_acked
            .as_ref()
            .is_some_and(|acked| acked.elapsed() < lease / 2)
    };
    if fresh(&raft.metrics().borrow_watched()) {
        return;
    }
    if raft.trigger().heartbeat().await.is_err() {
        return;
    }
    let _ = raft
        .wait(Some(lease))
        .metrics(fresh, "a fresh leader lease")
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_being_handed_over_is_not_claimed_for_the_rest_of_its_term() {
        let hand_overs = HandOvers::default();
        assert!(hand_overs.may_claim(3, 7));
        hand_overs.begin(3, 7);
        assert!(!hand_overs.may_claim(3, 7), "the transfer began in term 7");
        assert!(hand_overs.may_claim(4, 7), "another shard");
        assert!(hand_overs.may_claim(3, 8), "led again after an election");
    }

    #[test]
    fn claims_count_while_fresh_and_at_a_current_term() {
        let live = Liveness::default();
        let t0 = Instant::now();
        assert!(live.record(
            LeadingNotice {
                from: 2,
                leads: vec![(0, 5), (3, 7)]
            },
            t0
        ));
        assert!(!live.record(
            LeadingNotice {
                from: 2,
                leads: vec![(0, 5), (3, 7)]
            },
            t0 + PING_INTERVAL
        ));
        assert_eq!(live.claimed_leader(3, 7, t0 + PING_INTERVAL), Some((2, 7)));
        assert_eq!(
            live.claimed_leader(3, 8, t0 + PING_INTERVAL),
            None,
            "an older term does not count"
        );
        assert_eq!(live.claimed_leader(1, 0, t0 + PING_INTERVAL), None);
        let late = t0 + PING_INTERVAL + SILENCE + Duration::from_millis(1);
        assert_eq!(
            live.claimed_leader(0, 5, late),
            None,
            "a silent peer does not count"
        );
        assert!(!live.heard_from(2, SILENCE, late));
        assert!(
            live.record(
                LeadingNotice {
                    from: 2,
                    leads: vec![]
                },
                late
            ),
            "back after silence"
        );
        // Two claims (a stale leader not yet aware of the new term): the later term wins.
        live.record(
            LeadingNotice {
                from: 3,
                leads: vec![(0, 9)],
            },
            late,
        );
        live.record(
            LeadingNotice {
                from: 2,
                leads: vec![(0, 5)],
            },
            late,
        );
        assert_eq!(live.claimed_leader(0, 5, late), Some((3, 9)));
    }

    #[test]
    fn the_election_timer_comes_back_after_the_jitter_once_claims_stop() {
        let mut switch = ElectionSwitch::default();
        let t0 = Instant::now();
        let jitter = Duration::from_millis(120);
        assert_eq!(switch.decide(true, t0, || jitter), Some(false));
        assert_eq!(switch.decide(true, t0, || jitter), None);
        // Claims stop: on only after the jitter.
        assert_eq!(switch.decide(false, t0, || jitter), None);
        assert_eq!(
            switch.decide(false, t0 + Duration::from_millis(119), || unreachable!()),
            None
        );
        assert_eq!(switch.decide(false, t0 + jitter, || unreachable!()), Some(true));
        assert_eq!(switch.decide(false, t0 + jitter * 2, || unreachable!()), None);
        // A leader again: off at once, and a later silence draws a new delay.
        assert_eq!(
            switch.decide(true, t0 + jitter * 3, || unreachable!()),
            Some(false)
        );
        assert_eq!(
            switch.decide(false, t0 + jitter * 3, || Duration::ZERO),
            Some(true)
        );
    }
}
