//! Leader placement: spread shard leadership evenly over the voters.
//!
//! Shard `s` prefers the voter at position `s % voters` of its sorted voter list, so with 3
//! nodes and 12 shards each node prefers 4. A leader that is not its shard's preferred node
//! hands leadership over once the preferred node has caught up with its log; a preferred
//! node that is down simply is not caught up, and leadership stays where it is.

use crate::node::ClusterNode;
use chorus_core::ShardId;
use openraft::ServerState;
use std::time::Duration;

/// The preferred leader of `shard` among `voters` (sorted ascending).
pub fn preferred_leader(shard: ShardId, voters: &[u64]) -> Option<u64> {
    if voters.is_empty() {
        return None;
    }
    Some(voters[shard.0 as usize % voters.len()])
}

/// One leadership transfer this node should make now, if any: the first shard it leads
/// whose preferred node is fully caught up.
pub(crate) fn next_transfer(node: &ClusterNode) -> Option<(ShardId, u64)> {
    for shard in node.shards() {
        let metrics = node.metrics_of(shard);
        if metrics.state != ServerState::Leader {
            continue;
        }
        let mut voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
        voters.sort_unstable();
        let preferred = preferred_leader(shard.id, &voters)?;
        if preferred == node.node_id() {
            continue;
        }
        let last = metrics.last_log_index;
        let caught_up = metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&preferred).cloned().flatten())
            .is_some_and(|matched| Some(matched.index) == last);
        // Heard from within a second: the node is up and reaches us.
        let answering = node.heard_from(preferred, Duration::from_secs(1));
        if caught_up && answering {
            return Some((shard.id, preferred));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_spreads_twelve_shards_four_per_node() {
        let voters = [1, 2, 3];
        let mut counts = std::collections::BTreeMap::new();
        for s in 0..12 {
            *counts
                .entry(preferred_leader(ShardId(s), &voters).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![4, 4, 4]);
        assert_eq!(preferred_leader(ShardId(0), &[]), None);
    }
}
