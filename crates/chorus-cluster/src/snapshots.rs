//! The task that decides when each shard builds a snapshot (openraft's own policy is off):
//! after `snapshot_every_entries` entries, and once as many bytes were applied as the last
//! snapshot had (`chorus_store::snapshot_pace`), so that a large state is not copied and
//! written again every few thousand entries.

use crate::node::ClusterNode;
use chorus_store::snapshot_pace::snapshot_due;
use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

/// How often every shard's pace is looked at.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);

impl ClusterNode {
    /// Runs for the life of the node.
    pub(crate) async fn snapshot_loop(self) {
        let every = self.config().snapshot_every_entries;
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            for s in self.shards() {
                let entries_since = {
                    let metrics = s.raft.metrics();
                    let m = metrics.borrow_watched();
                    let applied = m.last_applied.map_or(0, |id| id.index);
                    let snapshot = m.snapshot.map_or(0, |id| id.index);
                    applied.saturating_sub(snapshot)
                };
                let (bytes_since, snapshot_bytes) = s.reader.snapshot_pace();
                if snapshot_due(entries_since, every, bytes_since, snapshot_bytes) {
                    // Dropped by openraft while a build of this shard is under way.
                    let _ = s.raft.trigger().snapshot().await;
                }
            }
        }
    }
}
