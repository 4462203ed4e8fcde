//! The task that decides when each shard builds a snapshot (openraft's own policy is off):
//! after `snapshot_every_entries` entries, and once as many bytes were applied as the last
//! snapshot had (`chorus_store::snapshot_pace`), so that a large state is not copied and
//! written again every few thousand entries. One shard at a time: shards that fill at the same
//! pace come due together, and a dozen states encoded and fsynced at once held up the log's
//! own fsyncs (ack p99 44 ms in the third round of `chorus bench publish` on one cluster).

use crate::node::ClusterNode;
use chorus_store::snapshot_pace::snapshot_due;
use openraft::async_runtime::WatchReceiver;
use std::time::Duration;

/// How often every shard's pace is looked at.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// The longest a build keeps the others waiting (one that failed is not reported as such).
const BUILD_WAIT: Duration = Duration::from_secs(60);

/// The build under way: its shard, the shard's snapshot index before it, and when it began.
struct Building {
    shard: usize,
    before: u64,
    since: std::time::Instant,
}

impl ClusterNode {
    /// Runs for the life of the node.
    pub(crate) async fn snapshot_loop(self) {
        let every = self.config().snapshot_every_entries;
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut building: Option<Building> = None;
        let mut next = 0;
        loop {
            tick.tick().await;
            let progress: Vec<(u64, u64)> = self
                .shards()
                .iter()
                .map(|s| {
                    let metrics = s.raft.metrics();
                    let m = metrics.borrow_watched();
                    let applied = m.last_applied.map_or(0, |id| id.index);
                    (applied, m.snapshot.map_or(0, |id| id.index))
                })
                .collect();
            if let Some(b) = &building
                && progress[b.shard].1 == b.before
                && b.since.elapsed() < BUILD_WAIT
            {
                continue;
            }
            building = None;
            // Round robin from after the last shard picked: a shard whose builds never finish
            // (its Raft stopped on an I/O error) must not keep the others from theirs.
            let count = self.shards().len();
            for step in 1..=count {
                let i = (next + step - 1) % count;
                let s = &self.shards()[i];
                let (applied, snapshot) = progress[i];
                let (bytes_since, snapshot_bytes) = s.reader.snapshot_pace();
                if !snapshot_due(
                    applied.saturating_sub(snapshot),
                    every,
                    bytes_since,
                    snapshot_bytes,
                ) {
                    continue;
                }
                next = i + 1;
                // Dropped by openraft while a build of this shard is under way; an error means
                // the shard's Raft has stopped.
                if s.raft.trigger().snapshot().await.is_ok() {
                    building = Some(Building {
                        shard: i,
                        before: snapshot,
                        since: std::time::Instant::now(),
                    });
                    break;
                }
            }
        }
    }
}
