//! Criterion benchmarks of the log engine on the real file system (the target directory's
//! disk): group commits of 1, 16 and 256 appends, reads of decoded (cached) entries against
//! reads back from segment files, and opening a log of many entries.
//!
//! `cargo bench -p chorus-store --bench log_engine` (= `make bench-log`).

use chorus_core::{ChannelName, Command, PublishCommand};
use chorus_store::engine::disk::{Disk, StdDisk};
use chorus_store::engine::{EngineConfig, LogEngine};
use chorus_store::{ShardRequest, StoreMetrics, TypeConfig};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use openraft::alias::{EntryOf, LogIdOf};
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::type_config::TypeConfigExt;
use std::sync::Arc;
use std::time::Duration;

const SHARDS: u32 = 12;

fn log_id(index: u64) -> LogIdOf<TypeConfig> {
    LogIdOf::<TypeConfig>::new(
        openraft::vote::leader_id_adv::LeaderId { term: 1, node_id: 1 },
        index,
    )
}

/// An entry of one 128-byte publish, as the publish benchmark writes.
fn entry(index: u64) -> EntryOf<TypeConfig> {
    let command = Command::Publish(PublishCommand {
        channel: ChannelName::new("bench.channel").unwrap(),
        event_type: None,
        data: format!("\"{}\"", "x".repeat(126)).into(),
        publisher: "bench".into(),
        idempotency_key: None,
        time_ms: index,
    });
    EntryOf::<TypeConfig>::new_normal(log_id(index), ShardRequest::new(vec![command]))
}

fn open(dir: &std::path::Path, cache_bytes: usize) -> LogEngine {
    let mut config = EngineConfig::new(dir, SHARDS);
    config.cache_bytes = cache_bytes;
    let disk: Arc<dyn Disk> = Arc::new(StdDisk);
    LogEngine::open(disk, config, StoreMetrics::default()).unwrap()
}

fn bench_dir() -> tempfile::TempDir {
    // Next to the build, on the project's disk (not a RAM-backed /tmp).
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// `n` entries spread over the 12 shards, one append per shard (as openraft hands them over),
/// all waited for: what one group commit costs. Entries are built outside the timing.
fn group_commit(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_engine/group_commit");
    group.measurement_time(Duration::from_secs(8));
    for n in [1u64, 16, 256] {
        let dir = bench_dir();
        let engine = open(dir.path(), 64 << 20);
        let mut next = vec![1u64; SHARDS as usize];
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter_batched(
                || {
                    let mut per_shard: Vec<Vec<EntryOf<TypeConfig>>> = vec![Vec::new(); SHARDS as usize];
                    for k in 0..n {
                        let shard = (k % SHARDS as u64) as usize;
                        per_shard[shard].push(entry(next[shard]));
                        next[shard] += 1;
                    }
                    per_shard
                },
                |per_shard| {
                    let mut waits = Vec::with_capacity(SHARDS as usize);
                    for (shard, entries) in per_shard.into_iter().enumerate() {
                        if entries.is_empty() {
                            continue;
                        }
                        let (tx, rx) = TypeConfig::oneshot();
                        engine
                            .append(shard as u32, entries, IOFlushed::signal(tx))
                            .unwrap();
                        waits.push(rx);
                    }
                    for rx in waits {
                        futures::executor::block_on(rx).unwrap().unwrap();
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
        engine.stop();
    }
    group.finish();
}

/// One append on each of 12 shards, all waited for: in the shared log (one group commit) and
/// in 12 logs of one shard each (the layout of a one-group log library such as raft-log: a
/// file and an fdatasync per group).
fn shared_versus_per_shard_logs(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_engine/12_shards_one_append_each");
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(SHARDS as u64));
    let dir = bench_dir();
    let shared = open(dir.path(), 64 << 20);
    let mut next = 1u64;
    group.bench_function("one_shared_log", |b| {
        b.iter(|| {
            let mut waits = Vec::new();
            for shard in 0..SHARDS {
                let (tx, rx) = TypeConfig::oneshot();
                shared
                    .append(shard, vec![entry(next)], IOFlushed::signal(tx))
                    .unwrap();
                waits.push(rx);
            }
            next += 1;
            for rx in waits {
                futures::executor::block_on(rx).unwrap().unwrap();
            }
        })
    });
    shared.stop();
    let dirs: Vec<_> = (0..SHARDS).map(|_| bench_dir()).collect();
    let logs: Vec<LogEngine> = dirs
        .iter()
        .map(|d| {
            let mut config = EngineConfig::new(d.path(), 1);
            config.cache_bytes = 64 << 20;
            let disk: Arc<dyn Disk> = Arc::new(StdDisk);
            LogEngine::open(disk, config, StoreMetrics::default()).unwrap()
        })
        .collect();
    let mut next = 1u64;
    group.bench_function("a_log_per_shard", |b| {
        b.iter(|| {
            let mut waits = Vec::new();
            for log in &logs {
                let (tx, rx) = TypeConfig::oneshot();
                log.append(0, vec![entry(next)], IOFlushed::signal(tx)).unwrap();
                waits.push(rx);
            }
            next += 1;
            for rx in waits {
                futures::executor::block_on(rx).unwrap().unwrap();
            }
        })
    });
    for log in &logs {
        log.stop();
    }
    group.finish();
}

/// Reading 64 entries: decoded in memory against read back from the segment and decoded.
fn reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_engine/read_64");
    for (name, cache_bytes) in [("cached", 64usize << 20), ("uncached", 0)] {
        let dir = bench_dir();
        let engine = open(dir.path(), cache_bytes);
        for chunk in 0..16u64 {
            let (tx, rx) = TypeConfig::oneshot();
            let entries = (chunk * 64 + 1..=chunk * 64 + 64).map(entry).collect();
            engine.append(0, entries, IOFlushed::signal(tx)).unwrap();
            futures::executor::block_on(rx).unwrap().unwrap();
        }
        // One more append, so that a zero budget evicts what was written before it.
        let (tx, rx) = TypeConfig::oneshot();
        engine
            .append(0, vec![entry(1025)], IOFlushed::signal(tx))
            .unwrap();
        futures::executor::block_on(rx).unwrap().unwrap();
        group.throughput(Throughput::Elements(64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let got = engine.entries(0, 257, 321).unwrap();
                assert_eq!(got.len(), 64);
                got
            })
        });
        engine.stop();
    }
    group.finish();
}

/// Opening a log of 1,000,000 entries (12 shards), as a restarting node does.
fn open_large(c: &mut Criterion) {
    let dir = bench_dir();
    {
        let engine = open(dir.path(), 64 << 20);
        let per_shard = 1_000_000 / SHARDS as u64;
        for start in (1..=per_shard).step_by(1000) {
            let mut waits = Vec::new();
            for shard in 0..SHARDS {
                let (tx, rx) = TypeConfig::oneshot();
                let entries = (start..(start + 1000).min(per_shard + 1)).map(entry).collect();
                engine.append(shard, entries, IOFlushed::signal(tx)).unwrap();
                waits.push(rx);
            }
            for rx in waits {
                futures::executor::block_on(rx).unwrap().unwrap();
            }
        }
        engine.stop();
    }
    let mut group = c.benchmark_group("log_engine/open");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.bench_function("1m_entries", |b| {
        b.iter(|| {
            let engine = open(dir.path(), 64 << 20);
            engine.stop();
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    group_commit,
    shared_versus_per_shard_logs,
    reads,
    open_large
);
criterion_main!(benches);
