//! The Raft log engine: one append-only log per node, shared by every shard.
//!
//! ```text
//!  shard 0 append ─┐                      ┌─ one write + one fdatasync per batch ─► log/<id>.seg
//!  shard 7 vote   ─┼─► pending batch ─► [writer thread] ─► callbacks of the whole batch
//!  shard 3 purge  ─┘   (records, waiters)  while it syncs, the next batch fills up
//!
//!  readers (replication, apply) ─► catalog: decoded recent entries (shared, no disk read)
//!                                    └─ older ones: read back by position, checksum verified
//! ```
//!
//! - **Group commit.** Every shard's appends and votes that arrive while the writer syncs go
//!   into the next batch: one `write` and one `fdatasync` for all of them. Records that need no
//!   acknowledgement (committed ids, truncations, purges) ride along with the next batch, or go
//!   out after [`EngineConfig::lazy_flush`] when nothing else comes.
//! - **Only the last batch can be torn.** The writer never writes a batch before the previous
//!   one is synced, so after a power loss recovery keeps the intact batches and cuts the torn
//!   one off: what is rebuilt is always a prefix of what was written, in order (sled 0.34 did
//!   not give that: see docs/architecture.md, "Storage").
//! - **Segments.** A segment starts with a checkpoint of every shard's metadata, so a segment
//!   older than every shard's oldest live entry holds nothing needed: purging deletes whole
//!   files, once the records that made them obsolete are on disk.
//! - **Corruption** in the middle of the log (an intact batch after a damaged one) is not a
//!   torn tail: recovery names the file and offset, keeps the log before it, sets the damaged
//!   part aside (`*.corrupt`) and marks every shard as recovering: the cluster layer then
//!   refuses votes for them until they have caught up from their peers.

mod catalog;
pub mod disk;
pub mod format;
mod recovery;
mod writer;

pub use catalog::ReplayError;
pub use recovery::{Damage, RecoveryReport};

use crate::error::StoreError;
use crate::metrics::StoreMetrics;
use crate::types::TypeConfig;
use catalog::{Catalog, Entry, Loc, LogId, Lookup, Vote};
use disk::{Disk, DiskFile};
use format::RecordKind;
use openraft::storage::IOFlushed;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Settings of the log engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The directory of the segment files.
    pub dir: PathBuf,
    /// How many shards share the log.
    pub shard_count: u32,
    /// A segment is closed once it holds this many bytes (the next batch starts a new one).
    pub segment_bytes: u64,
    /// Decoded entries kept in memory, in bytes of their records, over all shards.
    pub cache_bytes: usize,
    /// How long records that need no acknowledgement may wait for a batch to ride along.
    pub lazy_flush: Duration,
    /// Zeros written ahead of the tail of the current segment, so that later batches
    /// overwrite space the file already has: an `fdatasync` of an overwrite flushes the data
    /// alone, one of an append also the inode's new length (measured on this machine's ext4:
    /// 124-142 µs against 219-232 µs at the median). 0 turns it off.
    pub prepare_bytes: u64,
    /// Test-only: never fsync (acknowledged writes are then lost in a power loss).
    pub skip_fsync: bool,
}

impl EngineConfig {
    /// Defaults for a log in `dir` shared by `shard_count` shards.
    pub fn new(dir: impl Into<PathBuf>, shard_count: u32) -> EngineConfig {
        EngineConfig {
            dir: dir.into(),
            shard_count,
            segment_bytes: 64 * 1024 * 1024,
            cache_bytes: 64 * 1024 * 1024,
            lazy_flush: Duration::from_millis(20),
            prepare_bytes: 1024 * 1024,
            skip_fsync: false,
        }
    }
}

/// What a waiter is told when its batch is on disk.
type Waiter = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// The batch being filled.
struct Tail {
    segment: u64,
    /// File offset where the batch goes.
    start: u64,
    /// Its sequence number.
    seq: u64,
    /// `[segment header, when the batch opens the segment][batch header][records]`.
    buf: Vec<u8>,
    /// Bytes before the first record.
    header_len: usize,
    waiters: Vec<Waiter>,
    /// Something waits for this batch: write it now.
    urgent: bool,
}

impl Tail {
    fn new(segment: u64, start: u64, seq: u64) -> Tail {
        let mut buf = Vec::with_capacity(64 * 1024);
        if start == 0 {
            buf.extend_from_slice(&format::segment_header());
        }
        buf.resize(buf.len() + format::BATCH_HEADER_LEN, 0);
        Tail {
            segment,
            start,
            seq,
            header_len: buf.len(),
            buf,
            waiters: Vec::new(),
            urgent: false,
        }
    }

    fn is_empty(&self) -> bool {
        self.buf.len() == self.header_len
    }

    /// Adds a record; returns where it will lie.
    fn put(&mut self, kind: RecordKind, shard: u32, data: &[u8]) -> Loc {
        let offset = self.start + self.buf.len() as u64;
        format::put_record(&mut self.buf, kind, shard, data);
        Loc {
            segment: self.segment,
            offset,
            len: format::record_len(data.len()) as u32,
            batch: self.seq,
        }
    }
}

struct State {
    catalog: Catalog,
    tail: Tail,
    /// Open handles of the live segments.
    files: BTreeMap<u64, Arc<dyn DiskFile>>,
    /// The last batch written and synced.
    written_batch: u64,
    /// After a failed write or sync nothing is acknowledged again.
    failed: Option<String>,
    stopped: bool,
    /// The writer thread waits on `Shared::wake` and must be woken for an urgent batch.
    /// While it writes, a submit leaves it be: it takes the tail when it is done anyway, and
    /// a wake-up costs a futex syscall per append (7 % more publishes/s without them).
    writer_idle: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    disk: Arc<dyn Disk>,
    config: EngineConfig,
    metrics: StoreMetrics,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    report: RecoveryReport,
}

/// The log engine of a node. Cloning is cheap and shares it.
#[derive(Clone)]
pub struct LogEngine {
    shared: Arc<Shared>,
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

fn encode<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encoding of in-memory values cannot fail")
}

impl LogEngine {
    /// Opens the log in `config.dir` (creating it), recovering what is on disk: a torn last
    /// batch is cut off, corruption in the middle is set aside (see the module docs). Returns
    /// once the new segment it writes to is on disk.
    pub fn open(
        disk: Arc<dyn Disk>,
        config: EngineConfig,
        metrics: StoreMetrics,
    ) -> Result<LogEngine, StoreError> {
        let recovered = recovery::recover(disk.as_ref(), &config)?;
        let next_segment = recovered.last_segment + 1;
        let mut state = State {
            catalog: recovered.catalog,
            tail: Tail::new(next_segment, 0, recovered.next_seq),
            files: recovered.files,
            written_batch: recovered.next_seq.saturating_sub(1),
            failed: None,
            stopped: false,
            writer_idle: false,
        };
        let checkpoint = encode(&state.catalog.checkpoint());
        state
            .tail
            .put(RecordKind::Checkpoint, format::NO_SHARD, &checkpoint);
        let engine = LogEngine {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                wake: Condvar::new(),
                disk,
                config,
                metrics,
                thread: Mutex::new(None),
                report: recovered.report,
            }),
        };
        let writer_shared = engine.shared.clone();
        let thread = std::thread::Builder::new()
            .name("chorus-log-writer".into())
            .spawn(move || writer::run(writer_shared))
            .map_err(|source| StoreError::Io {
                action: "starting the log writer thread",
                path: engine.shared.config.dir.clone(),
                source,
            })?;
        *engine.shared.thread.lock().expect("engine lock") = Some(thread);
        // The new segment (and with it any recovery marks) is durable before anything is served.
        let (tx, rx) = std::sync::mpsc::channel();
        engine.with_state(|state| {
            state.tail.waiters.push(Box::new(move |r| {
                let _ = tx.send(r);
            }));
            state.tail.urgent = true;
        });
        engine.shared.wake.notify_one();
        rx.recv()
            .map_err(|_| StoreError::LogWriterStopped)?
            .map_err(|source| StoreError::Io {
                action: "writing the first batch of a new segment in",
                path: engine.shared.config.dir.clone(),
                source,
            })?;
        Ok(engine)
    }

    /// What recovery found when the log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared.report
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.shared.metrics
    }

    /// The directory of the segments.
    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("log engine lock poisoned")
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.lock())
    }

    /// Adds records under the lock, then wakes the writer when `waiter` waits for them.
    fn submit(
        &self,
        waiter: Option<Waiter>,
        add: impl FnOnce(&mut State) -> Result<(), io::Error>,
    ) -> Result<(), io::Error> {
        let mut state = self.lock();
        if let Some(message) = &state.failed {
            return Err(io::Error::other(format!("the log failed earlier: {message}")));
        }
        if state.stopped {
            return Err(StoreError::LogWriterStopped.into());
        }
        self.rotate_if_full(&mut state);
        add(&mut state)?;
        let mut wake = false;
        if let Some(waiter) = waiter {
            state.tail.waiters.push(waiter);
            state.tail.urgent = true;
            wake = std::mem::take(&mut state.writer_idle);
        }
        drop(state);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Starts a new segment when the current one is full and the batch is still empty; the
    /// new segment opens with a checkpoint of every shard's metadata.
    fn rotate_if_full(&self, state: &mut State) {
        if state.tail.is_empty() && state.tail.start >= self.shared.config.segment_bytes {
            state.tail = Tail::new(state.tail.segment + 1, 0, state.tail.seq);
            let checkpoint = encode(&state.catalog.checkpoint());
            state
                .tail
                .put(RecordKind::Checkpoint, format::NO_SHARD, &checkpoint);
        }
    }

    fn check_shard(&self, shard: u32) -> Result<(), io::Error> {
        if shard >= self.shared.config.shard_count {
            return Err(io::Error::other(format!(
                "no shard {shard} in a log of {} shards",
                self.shared.config.shard_count
            )));
        }
        Ok(())
    }

    fn cache_budget(&self) -> usize {
        self.shared.config.cache_bytes / self.shared.config.shard_count.max(1) as usize
    }

    /// Appends entries of `shard`; readable at once, `callback` completes once they are on disk.
    pub fn append(
        &self,
        shard: u32,
        entries: Vec<Entry>,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error> {
        self.check_shard(shard)?;
        let encoded: Vec<Vec<u8>> = entries.iter().map(encode).collect();
        let budget = self.cache_budget();
        let waiter: Waiter = Box::new(move |result| callback.io_completed(result));
        self.submit(Some(waiter), |state| {
            // Checked before anything is written: a refused append leaves no record behind.
            if let Some(first) = entries.first() {
                state.catalog.shards[shard as usize]
                    .check_append(shard, first.log_id.index)
                    .map_err(io::Error::other)?;
            }
            for (entry, bytes) in entries.into_iter().zip(encoded) {
                let loc = state.tail.put(RecordKind::Entry, shard, &bytes);
                let log_id = entry.log_id;
                state.catalog.shards[shard as usize]
                    .append(shard, log_id, loc, Some(entry))
                    .map_err(io::Error::other)?;
            }
            let written = state.written_batch;
            state.catalog.shards[shard as usize].evict(budget, written);
            Ok(())
        })
    }

    /// Records `shard`'s vote and returns once it is on disk.
    pub async fn save_vote(&self, shard: u32, vote: &Vote) -> Result<(), io::Error> {
        self.check_shard(shard)?;
        let bytes = encode(vote);
        let vote = *vote;
        self.durably(move |state| {
            state.tail.put(RecordKind::Vote, shard, &bytes);
            state.catalog.shards[shard as usize].meta.vote = Some(vote);
            Ok(())
        })
        .await
    }

    /// Adds records and waits until they are on disk.
    async fn durably(&self, add: impl FnOnce(&mut State) -> Result<(), io::Error>) -> Result<(), io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter: Waiter = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.submit(Some(waiter), add)?;
        rx.await
            .map_err(|_| io::Error::from(StoreError::LogWriterStopped))?
    }

    /// Records `shard`'s committed log id (durable with the next batch).
    pub fn save_committed(&self, shard: u32, committed: Option<LogId>) -> Result<(), io::Error> {
        self.check_shard(shard)?;
        let bytes = encode(&committed);
        self.submit(None, |state| {
            state.tail.put(RecordKind::Committed, shard, &bytes);
            state.catalog.shards[shard as usize].meta.committed = committed;
            Ok(())
        })
    }

    /// Removes `shard`'s entries after `log_id`.
    pub fn truncate_after(&self, shard: u32, log_id: Option<LogId>) -> Result<(), io::Error> {
        self.check_shard(shard)?;
        let bytes = encode(&log_id);
        self.submit(None, |state| {
            state.tail.put(RecordKind::TruncateAfter, shard, &bytes);
            state.catalog.shards[shard as usize].truncate_after(log_id);
            Ok(())
        })
    }

    /// Removes `shard`'s entries up to `log_id`; segments nothing needs any more are deleted
    /// once this is on disk.
    pub fn purge(&self, shard: u32, log_id: LogId) -> Result<(), io::Error> {
        self.check_shard(shard)?;
        let bytes = encode(&log_id);
        self.submit(None, |state| {
            state.tail.put(RecordKind::Purge, shard, &bytes);
            state.catalog.shards[shard as usize].purge(log_id);
            Ok(())
        })
    }

    /// Marks `shard`'s replica as recovering (or recovered), durably.
    pub async fn set_recovering(&self, shard: u32, recovering: bool) -> Result<(), io::Error> {
        self.check_shard(shard)?;
        self.durably(move |state| {
            state
                .tail
                .put(RecordKind::Recovering, shard, &[u8::from(recovering)]);
            state.catalog.shards[shard as usize].meta.recovering = recovering;
            Ok(())
        })
        .await
    }

    /// The shards whose replicas are recovering from their peers.
    pub fn recovering_shards(&self) -> Vec<u32> {
        let state = self.lock();
        (0..state.catalog.shards.len() as u32)
            .filter(|s| state.catalog.shards[*s as usize].meta.recovering)
            .collect()
    }

    /// `shard`'s vote.
    pub fn vote(&self, shard: u32) -> Option<Vote> {
        self.lock().catalog.shards.get(shard as usize)?.meta.vote
    }

    /// `shard`'s committed log id.
    pub fn committed(&self, shard: u32) -> Option<LogId> {
        self.lock().catalog.shards.get(shard as usize)?.meta.committed
    }

    /// `shard`'s purged and last log ids.
    pub fn log_state(&self, shard: u32) -> (Option<LogId>, Option<LogId>) {
        let state = self.lock();
        match state.catalog.shards.get(shard as usize) {
            Some(log) => (log.meta.purged, log.last_log_id()),
            None => (None, None),
        }
    }

    /// `shard`'s entries in `[start, end)`: decoded ones from memory, the rest read back from
    /// their segments (one read per run of neighbouring records), checksums verified.
    pub fn entries(&self, shard: u32, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        self.check_shard(shard)?;
        let (lookups, files) = {
            let state = self.lock();
            let lookups = state.catalog.shards[shard as usize].lookup(start, end);
            let mut files = BTreeMap::new();
            for lookup in &lookups {
                if let Lookup::OnDisk(loc) = lookup
                    && !files.contains_key(&loc.segment)
                {
                    let file = state.files.get(&loc.segment).cloned().ok_or_else(|| {
                        io::Error::other(format!(
                            "segment {} of shard {shard}'s entry is gone",
                            loc.segment
                        ))
                    })?;
                    files.insert(loc.segment, file);
                }
            }
            (lookups, files)
        };
        let on_disk = lookups.iter().filter(|l| matches!(l, Lookup::OnDisk(_))).count();
        if on_disk > 0 {
            self.shared.metrics.entries_read_from_disk.inc_by(on_disk as u64);
        }
        let mut out = Vec::with_capacity(lookups.len());
        let mut i = 0;
        while i < lookups.len() {
            match &lookups[i] {
                Lookup::Cached(entry) => {
                    out.push(entry.clone());
                    i += 1;
                }
                Lookup::OnDisk(first) => {
                    // A run of on-disk entries close together in one segment: one read.
                    let mut j = i + 1;
                    let mut end = first.offset + first.len as u64;
                    while let Some(Lookup::OnDisk(next)) = lookups.get(j) {
                        if next.segment != first.segment || next.offset < end || next.offset > end + 64 * 1024
                        {
                            break;
                        }
                        end = next.offset + next.len as u64;
                        j += 1;
                    }
                    let mut buf = vec![0u8; (end - first.offset) as usize];
                    files[&first.segment].read_at(&mut buf, first.offset)?;
                    for lookup in &lookups[i..j] {
                        let Lookup::OnDisk(loc) = lookup else {
                            unreachable!()
                        };
                        let at = (loc.offset - first.offset) as usize;
                        out.push(self.decode_entry(shard, loc, &buf[at..at + loc.len as usize])?);
                    }
                    i = j;
                }
            }
        }
        Ok(out)
    }

    fn decode_entry(&self, shard: u32, loc: &Loc, record: &[u8]) -> Result<Entry, io::Error> {
        let path = self.shared.config.dir.join(segment_name(loc.segment));
        let corrupt = |what: String| {
            io::Error::other(format!(
                "corrupt log record of shard {shard} in {} at byte {}: {what}",
                path.display(),
                loc.offset
            ))
        };
        let parsed = format::read_record_exact(record).map_err(|e| corrupt(e.to_string()))?;
        if parsed.kind != RecordKind::Entry || parsed.shard != shard {
            return Err(corrupt(format!(
                "a {:?} record of shard {}",
                parsed.kind, parsed.shard
            )));
        }
        postcard::from_bytes(parsed.data).map_err(|e| corrupt(e.to_string()))
    }

    /// Makes everything submitted so far durable.
    pub async fn flush(&self) -> Result<(), io::Error> {
        self.durably(|_| Ok(())).await
    }

    /// Writes what is pending, then stops the writer thread and waits for it.
    pub fn stop(&self) {
        self.with_state(|state| {
            state.stopped = true;
        });
        self.shared.wake.notify_one();
        if let Some(thread) = self.shared.thread.lock().expect("engine lock").take() {
            let _ = thread.join();
        }
    }

    /// The number of segment files live.
    pub fn segment_count(&self) -> usize {
        self.lock().files.len()
    }

    /// The ids of the live segment files, oldest first.
    pub fn segment_ids(&self) -> Vec<u64> {
        self.lock().files.keys().copied().collect()
    }

    /// Live entries and decoded bytes of `shard` (for tests and metrics).
    pub fn shard_stats(&self, shard: u32) -> (usize, usize) {
        let state = self.lock();
        state
            .catalog
            .shards
            .get(shard as usize)
            .map_or((0, 0), |log| (log.len(), log.cache_bytes()))
    }
}

#[cfg(test)]
mod tests;
