//! When a shard builds its next snapshot: once `every_entries` entries were applied since the
//! last one *and* the commands applied since then add up to as many bytes as that snapshot
//! had.
//!
//! A snapshot costs in proportion to the whole state (copied, encoded, written, fsynced),
//! while what it saves (log to keep on disk and to replay at start) grows with what was applied
//! since the last one. Counting entries alone made a node with a long history spend ever more
//! on snapshots: three 10-second rounds of `chorus bench publish` on one cluster that keeps
//! every message went 21,922 / 22,819 / 19,464 msgs/s with ack p99 22 / 21 / 38 ms, and
//! 22,854 / 21,567 / 21,648 with p99 21 / 23 / 22 ms when no snapshot was built. Tied to bytes,
//! each byte applied pays for at most about one byte of snapshot, and the log between two
//! snapshots of a shard holds about the smaller of its state and
//! [`MAX_BYTES_BETWEEN_SNAPSHOTS`] (bytes are counted from the commands, a little less than
//! their log records take).

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes counted for a command besides its payload (its log id, channel, ids), so that
/// commands without payload still move the pace.
const COMMAND_OVERHEAD: u64 = 32;

/// The most bytes applied since the last snapshot that a shard waits for, however large its
/// state: the log is one for all shards, and a segment is deleted only once every shard's
/// snapshot has passed it, so one shard with a large state must not keep the whole node's log.
pub const MAX_BYTES_BETWEEN_SNAPSHOTS: u64 = 64 * 1024 * 1024;

/// Whether a snapshot is due, from what happened since the last one.
pub fn snapshot_due(
    entries_since: u64,
    every_entries: u64,
    bytes_since: u64,
    last_snapshot_bytes: u64,
) -> bool {
    entries_since >= every_entries && bytes_since >= last_snapshot_bytes.min(MAX_BYTES_BETWEEN_SNAPSHOTS)
}

/// Bytes applied and the size of the last snapshot of one shard (shared with its reader).
#[derive(Debug, Default)]
pub struct SnapshotPace {
    /// Bytes of every command applied since start.
    applied: AtomicU64,
    /// `applied` when the state of the last snapshot was taken.
    applied_at_snapshot: AtomicU64,
    /// Bytes of the last snapshot's encoded state.
    snapshot_bytes: AtomicU64,
}

impl SnapshotPace {
    /// Counts a command of `payload_bytes` applied.
    pub(crate) fn applied(&self, payload_bytes: usize) {
        self.applied
            .fetch_add(payload_bytes as u64 + COMMAND_OVERHEAD, Ordering::Relaxed);
    }

    /// Bytes applied so far (taken with the state a snapshot copies).
    pub(crate) fn applied_so_far(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// A snapshot of `snapshot_bytes` holds what was applied up to `applied_at` (a count from
    /// [`SnapshotPace::applied_so_far`]).
    pub(crate) fn snapshot_taken(&self, applied_at: u64, snapshot_bytes: usize) {
        self.applied_at_snapshot.store(applied_at, Ordering::Relaxed);
        self.snapshot_bytes
            .store(snapshot_bytes as u64, Ordering::Relaxed);
    }

    /// Bytes applied since the last snapshot, and that snapshot's size.
    pub fn since_last(&self) -> (u64, u64) {
        let applied = self.applied.load(Ordering::Relaxed);
        let at = self.applied_at_snapshot.load(Ordering::Relaxed);
        (
            applied.saturating_sub(at),
            self.snapshot_bytes.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_entries_and_for_as_many_bytes_as_the_last_one() {
        // The first snapshot (none before) comes after the entries alone.
        assert!(!snapshot_due(99, 100, 0, 0));
        assert!(snapshot_due(100, 100, 0, 0));
        // A large state: enough entries, not yet enough bytes.
        assert!(!snapshot_due(5_000, 100, 999_999, 1_000_000));
        assert!(snapshot_due(5_000, 100, 1_000_000, 1_000_000));
        // Enough bytes in a few large entries: the entry count still holds it back.
        assert!(!snapshot_due(10, 100, 10_000_000, 1_000_000));
        // A state larger than the cap waits for the cap only.
        let huge = 10 * MAX_BYTES_BETWEEN_SNAPSHOTS;
        assert!(!snapshot_due(5_000, 100, MAX_BYTES_BETWEEN_SNAPSHOTS - 1, huge));
        assert!(snapshot_due(5_000, 100, MAX_BYTES_BETWEEN_SNAPSHOTS, huge));
    }

    #[test]
    fn the_pace_counts_from_the_state_the_snapshot_copied() {
        let pace = SnapshotPace::default();
        pace.applied(968);
        let copied_at = pace.applied_so_far();
        assert_eq!(copied_at, 1_000);
        // Applied while the snapshot was being encoded: not in it.
        pace.applied(68);
        pace.snapshot_taken(copied_at, 5_000);
        assert_eq!(pace.since_last(), (100, 5_000));
        // Commands without payload move the pace too.
        pace.applied(0);
        assert_eq!(pace.since_last(), (132, 5_000));
    }
}
