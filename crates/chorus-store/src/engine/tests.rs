//! The log engine on the simulated disk: round trips, group commit, torn power losses,
//! corruption in the middle, segment purging and reads past the cache.

use super::catalog::{Entry, LogId, Vote};
use super::disk::{Disk, SimDisk};
use super::*;
use crate::types::ShardRequest;
use chorus_core::{ChannelName, Command, PublishCommand};
use openraft::entry::RaftEntry;
use openraft::type_config::TypeConfigExt;
use std::sync::Mutex;

const SHARDS: u32 = 4;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(
        openraft::vote::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    )
}

fn entry(shard: u32, term: u64, index: u64) -> Entry {
    let command = Command::Publish(PublishCommand {
        channel: ChannelName::new(format!("s{shard}.c")).unwrap(),
        event_type: None,
        data: format!(
            "{{\"shard\":{shard},\"index\":{index},\"pad\":\"{}\"}}",
            "x".repeat(100)
        )
        .into(),
        publisher: "test".into(),
        idempotency_key: None,
        time_ms: index,
    });
    Entry::new_normal(log_id(term, index), ShardRequest::new(vec![command]))
}

fn config(segment_bytes: u64) -> EngineConfig {
    let mut config = EngineConfig::new("/sim/log", SHARDS);
    config.segment_bytes = segment_bytes;
    config.lazy_flush = Duration::from_millis(1);
    config
}

fn open(disk: &SimDisk, config: EngineConfig) -> LogEngine {
    let disk: Arc<dyn Disk> = Arc::new(disk.clone());
    match LogEngine::open(disk, config, StoreMetrics::default()) {
        Ok(engine) => engine,
        Err(e) => {
            if std::env::var_os("DEBUG_TRACE").is_some() {
                eprintln!("{}", TRACE.lock().unwrap().join("\n"));
            }
            panic!("open: {e}")
        }
    }
}

static TRACE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn trace(line: String) {
    TRACE.lock().unwrap().push(line);
}

/// Appends and waits until durable.
fn append_durably(engine: &LogEngine, shard: u32, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    engine.append(shard, entries, IOFlushed::signal(tx)).unwrap();
    futures::executor::block_on(rx).unwrap().unwrap();
}

fn indexes(engine: &LogEngine, shard: u32) -> Vec<u64> {
    engine
        .entries(shard, 0, u64::MAX)
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

/// Found by the chaos suite: a process killed after writing a batch and before syncing it
/// leaves the batch readable in the page cache. The next process must make what it recovered
/// durable before it builds on it, or a later power loss takes that batch away from under
/// batches that were acknowledged (a hole in the log, or a purge lost after the segments it
/// made obsolete were deleted).
#[test]
fn what_a_killed_process_left_in_the_page_cache_is_made_durable_at_open() {
    let disk = SimDisk::new();
    let engine = open(&disk, config(1 << 20));
    append_durably(&engine, 0, (1..=3).map(|i| entry(0, 1, i)).collect());
    // The next batch reaches the page cache; its sync never completes (the process dies).
    disk.cut_power();
    let (tx, _rx) = TypeConfig::oneshot();
    let _ = engine.append(
        0,
        (4..=6).map(|i| entry(0, 1, i)).collect(),
        IOFlushed::signal(tx),
    );
    while !disk.has_unsynced() {
        std::thread::yield_now();
    }
    engine.stop();
    drop(engine);
    disk.process_crash();
    // The next process reads 1-6 and acknowledges 7-9 on top of them.
    let engine = open(&disk, config(1 << 20));
    assert_eq!(indexes(&engine, 0), (1..=6).collect::<Vec<_>>());
    append_durably(&engine, 0, (7..=9).map(|i| entry(0, 1, i)).collect());
    engine.stop();
    drop(engine);
    disk.crash(None);
    let engine = open(&disk, config(1 << 20));
    assert!(
        engine.recovery_report().damage.is_none(),
        "{:?}",
        engine.recovery_report()
    );
    assert_eq!(indexes(&engine, 0), (1..=9).collect::<Vec<_>>());
}

/// Zeros written ahead of the tail (so that syncs flush data, not the file's length) are
/// read back as prepared space: nothing torn, nothing damaged, and later batches fill them.
#[test]
fn space_prepared_ahead_of_the_tail_is_not_a_torn_write() {
    let disk = SimDisk::new();
    let mut cfg = config(1 << 20);
    cfg.prepare_bytes = 16 * 1024;
    let segment = Path::new("/sim/log").join(segment_name(1));
    let engine = open(&disk, cfg.clone());
    append_durably(&engine, 0, (1..=3).map(|i| entry(0, 1, i)).collect());
    let size = disk.open(&segment, false).unwrap().size().unwrap();
    assert!(
        size >= 16 * 1024,
        "the next 16 KiB are prepared: the file has {size} bytes"
    );
    engine.stop();
    drop(engine);
    disk.crash(None);
    for round in 0..2u64 {
        let engine = open(&disk, cfg.clone());
        let report = engine.recovery_report();
        assert_eq!(report.damage, None);
        assert_eq!(report.torn_tail.as_ref().map(|t| t.2), Some(0), "{report:?}");
        let last = 3 + round * 3;
        assert_eq!(indexes(&engine, 0), (1..=last).collect::<Vec<_>>());
        // The next batches follow the recovered ones (in a new segment: each open starts one).
        append_durably(
            &engine,
            0,
            (last + 1..=last + 3).map(|i| entry(0, 1, i)).collect(),
        );
        engine.stop();
        drop(engine);
        disk.crash(None);
    }
    let engine = open(&disk, cfg);
    assert_eq!(indexes(&engine, 0), (1..=9).collect::<Vec<_>>());
}

#[test]
fn entries_votes_and_metadata_survive_a_reopen() {
    let disk = SimDisk::new();
    let engine = open(&disk, config(1 << 20));
    for shard in 0..SHARDS {
        append_durably(&engine, shard, (1..=5).map(|i| entry(shard, 1, i)).collect());
    }
    futures::executor::block_on(engine.save_vote(2, &Vote::new_committed(3, 1))).unwrap();
    engine.save_committed(1, Some(log_id(1, 4))).unwrap();
    engine.truncate_after(0, Some(log_id(1, 3))).unwrap();
    engine.purge(3, log_id(1, 2)).unwrap();
    futures::executor::block_on(engine.flush()).unwrap();
    let before: Vec<_> = (0..SHARDS).map(|s| engine.entries(s, 0, 100).unwrap()).collect();
    engine.stop();

    disk.crash(None);
    let engine = open(&disk, config(1 << 20));
    assert_eq!(engine.recovery_report().damage, None);
    assert_eq!(indexes(&engine, 0), vec![1, 2, 3]);
    assert_eq!(indexes(&engine, 3), vec![3, 4, 5]);
    assert_eq!(engine.vote(2), Some(Vote::new_committed(3, 1)));
    assert_eq!(engine.committed(1), Some(log_id(1, 4)));
    assert_eq!(engine.log_state(3), (Some(log_id(1, 2)), Some(log_id(1, 5))));
    let after: Vec<_> = (0..SHARDS).map(|s| engine.entries(s, 0, 100).unwrap()).collect();
    assert_eq!(
        before, after,
        "entries read back from disk equal the ones written"
    );
    engine.stop();
}

#[test]
fn unsynced_records_are_lost_but_never_acknowledged_ones() {
    let disk = SimDisk::new();
    let engine = open(&disk, config(1 << 20));
    append_durably(&engine, 0, vec![entry(0, 1, 1)]);
    // Never acknowledged: the writer is stopped before it writes.
    engine.with_state(|state| state.stopped = true);
    let (tx, _rx) = TypeConfig::oneshot();
    assert!(
        engine
            .append(0, vec![entry(0, 1, 2)], IOFlushed::signal(tx))
            .is_err()
    );
    engine.stop();
    disk.crash(None);
    let engine = open(&disk, config(1 << 20));
    assert_eq!(indexes(&engine, 0), vec![1]);
    engine.stop();
}

#[test]
fn one_sync_serves_the_appends_of_many_shards() {
    let disk = SimDisk::new();
    let engine = open(&disk, config(1 << 20));
    let syncs_before = disk.syncs();
    // The disk is busy with a first append while 400 more arrive, from every shard.
    disk.hold_syncs();
    let (tx, first) = TypeConfig::oneshot();
    engine
        .append(0, vec![entry(0, 1, 1)], IOFlushed::signal(tx))
        .unwrap();
    let mut waits = vec![first];
    for index in 2..=101 {
        for shard in 0..SHARDS {
            let (tx, rx) = TypeConfig::oneshot();
            engine
                .append(
                    shard,
                    vec![entry(shard, 1, index - u64::from(shard > 0))],
                    IOFlushed::signal(tx),
                )
                .unwrap();
            waits.push(rx);
        }
    }
    disk.release_syncs();
    for rx in waits {
        futures::executor::block_on(rx).unwrap().unwrap();
    }
    // The first batch (maybe with some of the others) and one more: at most 2 syncs.
    let syncs = disk.syncs() - syncs_before;
    assert!(syncs <= 2, "401 appends took {syncs} syncs");
    assert_eq!(
        engine.metrics().fsyncs.get(),
        1 + syncs,
        "the opening batch and these"
    );
    engine.stop();
}

/// Writes batches of entries to every shard while "power" is cut at a random point with a torn
/// writeback; after each crash every acknowledged entry is there and every shard's log is a
/// consecutive run of what was written. Many seeds, several crashes each.
#[test]
fn torn_power_losses_keep_every_acknowledged_entry_and_a_prefix_of_the_rest() {
    let mut unsynced_rounds = 0;
    let mut torn_cuts = 0;
    for seed in 0..100u64 {
        let disk = SimDisk::new();
        let mut acked = vec![0u64; SHARDS as usize];
        let mut next = vec![1u64; SHARDS as usize];
        for round in 0..3 {
            let engine = open(&disk, config(8 * 1024));
            for shard in 0..SHARDS as usize {
                // What survived the last crash is where this round continues.
                next[shard] = engine.log_state(shard as u32).1.map_or(1, |id| id.index + 1);
                assert!(
                    next[shard] > acked[shard],
                    "seed {seed} round {round}: shard {shard} lost acked entries"
                );
            }
            let mut pending = Vec::new();
            let steps = 20 + seed % 17;
            let cut_at = (seed * 7 + round) % steps;
            for step in 0..steps {
                if step == cut_at {
                    // From here on writes reach the page cache but no sync completes.
                    disk.cut_power();
                }
                let shard = ((seed + step) % SHARDS as u64) as usize;
                let count = 1 + (seed + step) % 3;
                let entries = (0..count)
                    .map(|k| entry(shard as u32, 1, next[shard] + k))
                    .collect();
                let (tx, rx) = TypeConfig::oneshot();
                if engine
                    .append(shard as u32, entries, IOFlushed::signal(tx))
                    .is_err()
                {
                    break; // the log failed (a sync failed): nothing more is accepted
                }
                pending.push((shard, next[shard] + count - 1, rx));
                next[shard] += count;
                if step % 5 == 4 || step + 1 == steps {
                    // Waited for: acknowledged only when the callback says so.
                    for (shard, last, rx) in pending.drain(..) {
                        if let Ok(Ok(())) = futures::executor::block_on(rx) {
                            acked[shard] = acked[shard].max(last);
                        }
                    }
                }
            }
            for (shard, last, rx) in pending.drain(..) {
                if let Ok(Ok(())) = futures::executor::block_on(rx) {
                    acked[shard] = acked[shard].max(last);
                }
            }
            unsynced_rounds += u64::from(disk.has_unsynced());
            engine.stop();
            disk.crash(Some(seed * 31 + round));
            let engine = open(&disk, config(8 * 1024));
            assert_eq!(
                engine.recovery_report().damage,
                None,
                "seed {seed}: a torn tail is not damage"
            );
            torn_cuts += u64::from(
                engine
                    .recovery_report()
                    .torn_tail
                    .as_ref()
                    .is_some_and(|t| t.2 > 0),
            );
            for shard in 0..SHARDS {
                let got = indexes(&engine, shard);
                assert!(
                    got.len() as u64 >= acked[shard as usize],
                    "seed {seed}: shard {shard} has {got:?}, acked {}",
                    acked[shard as usize]
                );
                let expected: Vec<u64> = (1..=got.len() as u64).collect();
                assert_eq!(
                    got, expected,
                    "seed {seed}: shard {shard} is not a consecutive prefix"
                );
                for e in engine.entries(shard, 0, u64::MAX).unwrap() {
                    assert_eq!(e, entry(shard, 1, e.log_id.index), "seed {seed}: wrong content");
                }
            }
            engine.stop();
        }
    }
    assert!(
        unsynced_rounds > 150,
        "only {unsynced_rounds} of 300 crashes had unsynced data"
    );
    assert!(
        torn_cuts > 10,
        "only {torn_cuts} of 300 recoveries cut a torn batch off"
    );
}

#[test]
fn damage_in_the_middle_is_named_set_aside_and_marks_every_shard_recovering() {
    let disk = SimDisk::new();
    let engine = open(&disk, config(1 << 20));
    for n in 0..32u64 {
        let shard = (n % SHARDS as u64) as u32;
        append_durably(&engine, shard, vec![entry(shard, 1, n / SHARDS as u64 + 1)]);
    }
    engine.stop();
    let segment = disk
        .paths()
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    // A byte in the middle of the segment's records (not of the zeros prepared after them).
    let file = disk.open(&segment, false).unwrap();
    let mut bytes = vec![0; file.size().unwrap() as usize];
    file.read_at(&mut bytes, 0).unwrap();
    let len = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
    disk.corrupt(&segment, len / 2);
    let engine = open(&disk, config(1 << 20));
    let damage = engine.recovery_report().damage.clone().expect("damage reported");
    assert_eq!(damage.path, segment);
    assert!(
        damage.offset > 0 && damage.offset as usize <= len / 2,
        "{damage:?}"
    );
    assert_eq!(engine.recovering_shards(), vec![0, 1, 2, 3]);
    assert!(
        disk.paths()
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".seg.corrupt"))
    );
    // Whatever is kept is a consecutive prefix per shard.
    for shard in 0..SHARDS {
        let got = indexes(&engine, shard);
        assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
    }
    // The marks survive a restart, until cleared.
    engine.stop();
    let engine = open(&disk, config(1 << 20));
    assert_eq!(engine.recovering_shards(), vec![0, 1, 2, 3]);
    futures::executor::block_on(engine.set_recovering(2, false)).unwrap();
    engine.stop();
    let engine = open(&disk, config(1 << 20));
    assert_eq!(engine.recovering_shards(), vec![0, 1, 3]);
    engine.stop();
}

#[test]
fn purged_segments_are_deleted_and_reads_past_the_cache_come_from_disk() {
    let disk = SimDisk::new();
    let mut cfg = config(4 * 1024);
    cfg.cache_bytes = 4 * 1024;
    let engine = open(&disk, cfg.clone());
    for index in 1..=200 {
        append_durably(&engine, 1, vec![entry(1, 1, index)]);
    }
    futures::executor::block_on(engine.save_vote(1, &Vote::new_committed(1, 1))).unwrap();
    let segments = engine.segment_count();
    assert!(segments > 5, "{segments} segments");
    // Old entries are no longer decoded in memory, but read back intact.
    let (_, cached) = engine.shard_stats(1);
    assert!(
        cached <= 4 * 1024 / SHARDS as usize + 400,
        "{cached} bytes cached"
    );
    let all = engine.entries(1, 1, 201).unwrap();
    assert_eq!(all.len(), 200);
    assert_eq!(all[0], entry(1, 1, 1));
    assert!(engine.metrics().entries_read_from_disk.get() > 0);
    engine.purge(1, log_id(1, 190)).unwrap();
    futures::executor::block_on(engine.flush()).unwrap();
    futures::executor::block_on(engine.flush()).unwrap();
    assert!(
        engine.segment_count() <= 2,
        "{} segments left",
        engine.segment_count()
    );
    engine.stop();
    let engine = open(&disk, cfg);
    assert_eq!(indexes(&engine, 1), (191..=200).collect::<Vec<_>>());
    assert_eq!(
        engine.vote(1),
        Some(Vote::new_committed(1, 1)),
        "the vote lives on in checkpoints"
    );
    engine.stop();
}

/// What one shard's log should hold, kept by the test: the model the engine is checked
/// against after every reopen.
#[derive(Default, Clone, Debug, PartialEq)]
struct ModelShard {
    purged: Option<LogId>,
    entries: Vec<LogId>,
    vote: Option<Vote>,
}

impl ModelShard {
    fn last(&self) -> Option<LogId> {
        self.entries.last().copied().or(self.purged)
    }
}

fn engine_view(engine: &LogEngine, shard: u32) -> ModelShard {
    let (purged, _) = engine.log_state(shard);
    ModelShard {
        purged,
        entries: engine
            .entries(shard, 0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.log_id)
            .collect(),
        vote: engine.vote(shard),
    }
}

/// Random sequences of what openraft asks of a log (appends, conflicting appends after a
/// truncation, purges behind the log and beyond it as a snapshot install does, votes),
/// interleaved with reopens on small segments so that segments rotate and get deleted: after
/// every reopen each shard holds exactly what the model says.
#[test]
fn replaying_the_log_rebuilds_exactly_what_was_written() {
    for seed in 0..30u64 {
        let disk = SimDisk::new();
        let mut cfg = config(2 * 1024);
        cfg.cache_bytes = 2 * 1024;
        let mut engine = open(&disk, cfg.clone());
        let mut model = vec![ModelShard::default(); SHARDS as usize];
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut term = 1u64;
        TRACE.lock().unwrap().clear();
        for step in 0..400 {
            let shard = (next() % SHARDS as u64) as u32;
            let m = &mut model[shard as usize];
            trace(format!(
                "step {step} shard {shard} segments {:?} model {:?}",
                engine.segment_ids(),
                m
            ));
            match next() % 10 {
                0..=4 => {
                    let from = m.last().map_or(1, |l| l.index + 1);
                    let entries: Vec<Entry> = (from..from + 1 + next() % 4)
                        .map(|i| entry(shard, term, i))
                        .collect();
                    m.entries.extend(entries.iter().map(|e| e.log_id));
                    append_durably(&engine, shard, entries);
                }
                5 => {
                    // A new leader's entries replace the tail after a conflict.
                    if let Some(keep) = m.entries.len().checked_sub(1 + (next() % 3) as usize) {
                        term += 1;
                        let after = if keep == 0 {
                            m.purged
                        } else {
                            Some(m.entries[keep - 1])
                        };
                        engine.truncate_after(shard, after).unwrap();
                        m.entries.truncate(keep);
                        let from = after.map_or(1, |l| l.index + 1);
                        let entries: Vec<Entry> = (from..from + 2).map(|i| entry(shard, term, i)).collect();
                        m.entries.extend(entries.iter().map(|e| e.log_id));
                        append_durably(&engine, shard, entries);
                    }
                }
                6 => {
                    // Purge behind a snapshot, keeping some entries.
                    if m.entries.len() > 2 {
                        let upto = m.entries[(next() as usize) % (m.entries.len() - 1)];
                        engine.purge(shard, upto).unwrap();
                        m.entries.retain(|e| e.index > upto.index);
                        m.purged = Some(upto);
                    }
                }
                7 => {
                    // A snapshot installed beyond the log: purge past its end, then go on.
                    let beyond = log_id(term, m.last().map_or(0, |l| l.index) + 3 + next() % 5);
                    engine.purge(shard, beyond).unwrap();
                    m.entries.clear();
                    m.purged = Some(beyond);
                }
                8 => {
                    term += 1;
                    let vote = Vote::new_committed(term, 1);
                    futures::executor::block_on(engine.save_vote(shard, &vote)).unwrap();
                    m.vote = Some(vote);
                }
                _ => {
                    futures::executor::block_on(engine.flush()).unwrap();
                    engine.stop();
                    engine = open(&disk, cfg.clone());
                    for s in 0..SHARDS {
                        assert_eq!(
                            engine_view(&engine, s),
                            model[s as usize],
                            "seed {seed} step {step} shard {s}"
                        );
                    }
                }
            }
        }
        futures::executor::block_on(engine.flush()).unwrap();
        engine.stop();
        let engine = open(&disk, cfg.clone());
        for s in 0..SHARDS {
            assert_eq!(
                engine_view(&engine, s),
                model[s as usize],
                "seed {seed} at the end, shard {s}"
            );
        }
        engine.stop();
    }
}
