//! Metrics of the storage layer (`chorus_store_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Metrics of the log engine. Cloning shares them.
#[derive(Clone)]
pub struct StoreMetrics {
    /// Batches written and synced.
    pub fsyncs: Counter,
    /// Seconds per batch write plus fdatasync.
    pub fsync_seconds: Histogram,
    /// Appends, votes and flushes made durable by one batch (group commit).
    pub writes_per_fsync: Histogram,
    /// Bytes written to the log.
    pub bytes_written: Counter,
    /// Entries read back from segment files (not found decoded in memory).
    pub entries_read_from_disk: Counter,
    /// Segment files deleted after purges.
    pub segments_deleted: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            fsyncs: Counter::default(),
            fsync_seconds: Histogram::new([0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5]),
            writes_per_fsync: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            bytes_written: Counter::default(),
            entries_read_from_disk: Counter::default(),
            segments_deleted: Counter::default(),
        }
    }
}

impl StoreMetrics {
    /// Registers the metrics under `chorus_store_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "chorus_store_fsyncs",
            "log batches written and fdatasynced",
            self.fsyncs.clone(),
        );
        registry.register(
            "chorus_store_fsync_seconds",
            "time of one log batch write plus fdatasync",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "chorus_store_writes_per_fsync",
            "log appends and votes made durable by one fdatasync (group commit over all shards)",
            self.writes_per_fsync.clone(),
        );
        registry.register(
            "chorus_store_bytes_written",
            "bytes written to the Raft log",
            self.bytes_written.clone(),
        );
        registry.register(
            "chorus_store_entries_read_from_disk",
            "Raft entries read back from log segments because they were no longer kept decoded",
            self.entries_read_from_disk.clone(),
        );
        registry.register(
            "chorus_store_segments_deleted",
            "log segment files deleted once every shard had purged their entries",
            self.segments_deleted.clone(),
        );
    }
}
