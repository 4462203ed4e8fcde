//! The writer thread: takes the pending batch, writes it with one `write` and one
//! `fdatasync`, completes its waiters, then deletes segments the batch made obsolete.
//!
//! Ahead of the tail it keeps zeros written (`prepare_bytes` at a time, in a second write of
//! the batch that reaches past them, under the same sync), so that most syncs flush data
//! alone and not the file's length too. Recovery reads zeros past the last batch as prepared
//! space, not as a torn write.

use super::{Shared, State, Tail, Waiter, segment_name};
use crate::engine::format;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often an idle writer checks whether every handle to the engine is gone.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// A batch taken from the tail, to be written.
struct Taken {
    segment: u64,
    start: u64,
    seq: u64,
    buf: Vec<u8>,
    header_len: usize,
    waiters: Vec<Waiter>,
    /// Segments older than every live entry once this batch is on disk.
    obsolete: Vec<u64>,
}

/// Waits for a batch to write: at once when someone waits for one, after the lazy delay when
/// only unacknowledged records are pending. `None` when the engine stops with nothing left.
fn next_batch(shared: &Arc<Shared>) -> Option<Taken> {
    let mut state = shared.state.lock().expect("log engine lock poisoned");
    let mut lazy_since: Option<Instant> = None;
    loop {
        if state.tail.urgent || (state.stopped && !state.tail.is_empty()) {
            break;
        }
        if state.stopped || (Arc::strong_count(shared) == 1 && state.tail.is_empty()) {
            return None;
        }
        let wait = if state.tail.is_empty() {
            lazy_since = None;
            IDLE_CHECK
        } else {
            let since = *lazy_since.get_or_insert_with(Instant::now);
            match shared.config.lazy_flush.checked_sub(since.elapsed()) {
                Some(left) if !left.is_zero() => left,
                _ => break,
            }
        };
        state.writer_idle = true;
        state = shared
            .wake
            .wait_timeout(state, wait)
            .expect("log engine lock poisoned")
            .0;
        state.writer_idle = false;
    }
    Some(take(&mut state))
}

fn take(state: &mut State) -> Taken {
    let next_start = state.tail.start + state.tail.buf.len() as u64;
    let next = Tail::new(state.tail.segment, next_start, state.tail.seq + 1);
    let tail = std::mem::replace(&mut state.tail, next);
    // What the catalog says now is exactly what this batch and the ones before it wrote.
    let keep_from = state
        .catalog
        .oldest_live_segment()
        .unwrap_or(u64::MAX)
        .min(tail.segment);
    let obsolete: Vec<u64> = state.files.range(..keep_from).map(|(id, _)| *id).collect();
    Taken {
        segment: tail.segment,
        start: tail.start,
        seq: tail.seq,
        buf: tail.buf,
        header_len: tail.header_len,
        waiters: tail.waiters,
        obsolete,
    }
}

/// How far the current segment's file already has space (data or prepared zeros).
#[derive(Default)]
struct Prepared {
    segment: u64,
    until: u64,
}

/// Writes and syncs one batch (creating its segment when it opens one).
fn write(shared: &Shared, batch: &mut Taken, prepared: &mut Prepared) -> Result<(), io::Error> {
    let config = &shared.config;
    let header_at = batch.header_len - format::BATCH_HEADER_LEN;
    format::seal_batch(&mut batch.buf[header_at..], batch.seq, batch.segment);
    let file = if batch.start == 0 {
        let path = config.dir.join(segment_name(batch.segment));
        let file = shared.disk.open(&path, true)?;
        shared
            .state
            .lock()
            .expect("log engine lock poisoned")
            .files
            .insert(batch.segment, file.clone());
        file
    } else {
        let state = shared.state.lock().expect("log engine lock poisoned");
        state
            .files
            .get(&batch.segment)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("segment {} is not open", batch.segment)))?
    };
    if batch.start == 0 || prepared.segment != batch.segment {
        // A new segment has no space yet; one opened at start has what its file holds.
        let until = if batch.start == 0 { 0 } else { file.size()? };
        *prepared = Prepared {
            segment: batch.segment,
            until,
        };
    }
    file.write_at(&batch.buf, batch.start)?;
    let end = batch.start + batch.buf.len() as u64;
    if end > prepared.until && config.prepare_bytes > 0 && end < config.segment_bytes {
        // This batch grew the file; the same sync makes the next stretch ready.
        let until = (end + config.prepare_bytes).min(config.segment_bytes);
        file.write_at(&vec![0; (until - end) as usize], end)?;
        prepared.until = until;
    }
    if !config.skip_fsync {
        file.sync()?;
        if batch.start == 0 {
            shared.disk.sync_dir(&config.dir)?;
        }
    }
    Ok(())
}

/// The writer thread's loop.
pub(super) fn run(shared: Arc<Shared>) {
    let mut prepared = Prepared::default();
    while let Some(mut batch) = next_batch(&shared) {
        let started = Instant::now();
        let failed_before = shared
            .state
            .lock()
            .expect("log engine lock poisoned")
            .failed
            .clone();
        // After one failure nothing is acknowledged again: a later fsync may succeed although
        // the kernel dropped the earlier data.
        let result = match failed_before {
            Some(message) => Err(message),
            None => write(&shared, &mut batch, &mut prepared).map_err(|e| {
                format!(
                    "writing segment {} at byte {}: {e}",
                    shared.config.dir.join(segment_name(batch.segment)).display(),
                    batch.start
                )
            }),
        };
        let metrics = &shared.metrics;
        metrics.fsyncs.inc();
        metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        metrics.writes_per_fsync.observe(batch.waiters.len() as f64);
        metrics.bytes_written.inc_by(batch.buf.len() as u64);
        let obsolete_files = {
            let mut state = shared.state.lock().expect("log engine lock poisoned");
            match &result {
                Ok(()) => {
                    state.written_batch = batch.seq;
                    batch
                        .obsolete
                        .iter()
                        .filter_map(|id| state.files.remove(id).map(|_| *id))
                        .collect::<Vec<_>>()
                }
                Err(message) => {
                    tracing::error!(%message, "log write failed; acknowledging nothing from now on");
                    state.failed = Some(message.clone());
                    Vec::new()
                }
            }
        };
        for waiter in batch.waiters.drain(..) {
            waiter(result.clone().map_err(io::Error::other));
        }
        if !obsolete_files.is_empty() {
            for id in &obsolete_files {
                let path = shared.config.dir.join(segment_name(*id));
                if let Err(e) = shared.disk.remove(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not delete an obsolete log segment");
                }
            }
            if let Err(e) = shared.disk.sync_dir(&shared.config.dir) {
                tracing::warn!(error = %e, "could not sync the log directory after deleting segments");
            }
            metrics.segments_deleted.inc_by(obsolete_files.len() as u64);
        }
    }
}
