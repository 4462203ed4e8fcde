//! The cluster layer's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ShardLabel {
    pub(super) shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabel {
    pub(super) outcome: &'static str,
}

/// Prometheus metrics of the cluster layer.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub(super) writes: Family<OutcomeLabel, Counter>,
    pub(super) forwards: Counter,
    pub(super) term: Family<ShardLabel, Gauge>,
    pub(super) leader: Family<ShardLabel, Gauge>,
    pub(super) committed: Family<ShardLabel, Gauge>,
    pub(super) applied: Family<ShardLabel, Gauge>,
    pub(super) last_log: Family<ShardLabel, Gauge>,
    pub(super) is_leader: Family<ShardLabel, Gauge>,
    pub(super) commands_per_entry: prometheus_client::metrics::histogram::Histogram,
    pub(super) resident_memory: Gauge,
}

impl Default for ClusterMetrics {
    fn default() -> Self {
        ClusterMetrics {
            writes: Family::default(),
            forwards: Counter::default(),
            term: Family::default(),
            leader: Family::default(),
            committed: Family::default(),
            applied: Family::default(),
            last_log: Family::default(),
            is_leader: Family::default(),
            resident_memory: Gauge::default(),
            commands_per_entry: prometheus_client::metrics::histogram::Histogram::new([
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
            ]),
        }
    }
}

impl ClusterMetrics {
    /// Registers under `chorus_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("chorus_writes", "client writes by outcome", self.writes.clone());
        registry.register(
            "chorus_forwards",
            "requests forwarded to another node's shard leader",
            self.forwards.clone(),
        );
        registry.register(
            "chorus_shard_term",
            "current Raft term per shard",
            self.term.clone(),
        );
        registry.register(
            "chorus_shard_leader",
            "id of the shard's leader (0: none known)",
            self.leader.clone(),
        );
        registry.register(
            "chorus_shard_is_leader",
            "1 when this node leads the shard",
            self.is_leader.clone(),
        );
        registry.register(
            "chorus_shard_commit_index",
            "committed log index per shard",
            self.committed.clone(),
        );
        registry.register(
            "chorus_shard_applied_index",
            "applied log index per shard",
            self.applied.clone(),
        );
        registry.register(
            "chorus_commands_per_entry",
            "client commands proposed in one Raft entry (proposal batching)",
            self.commands_per_entry.clone(),
        );
        registry.register(
            "chorus_shard_last_log_index",
            "last log index per shard",
            self.last_log.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "resident memory of the node process (Linux: VmRSS of /proc/self/status)",
            self.resident_memory.clone(),
        );
    }
}

/// The process's resident memory in bytes, from /proc (Linux only; `None` elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
