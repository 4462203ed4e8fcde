//! Opening the log: replays every segment in order into a fresh catalog.
//!
//! A batch that does not check out ends the replay. If nothing intact follows it (in its
//! segment or any later one) it is the torn tail of a crash: the segment is cut there, and
//! what follows was never acknowledged. If an intact batch does follow, the log was damaged
//! in the middle: the damaged segment is copied aside as `*.corrupt`, cut at the damage,
//! later segments are renamed `*.corrupt`, and every shard is marked recovering.

use super::catalog::{Catalog, Loc};
use super::disk::{Disk, DiskFile};
use super::format::{self, SegmentHeader};
use super::{EngineConfig, segment_name};
use crate::error::StoreError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Damage found in the middle of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub path: PathBuf,
    /// Where the first damaged batch starts.
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
}

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: usize,
    /// Batches replayed.
    pub batches: u64,
    /// A torn last batch that was cut off: the file, the offset and the bytes dropped.
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// Damage in the middle: the log was cut there and every shard marked recovering.
    pub damage: Option<Damage>,
}

pub(super) struct Recovered {
    pub catalog: Catalog,
    pub files: BTreeMap<u64, Arc<dyn DiskFile>>,
    pub next_seq: u64,
    pub last_segment: u64,
    pub report: RecoveryReport,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn read_all(file: &dyn DiskFile, path: &Path) -> Result<Vec<u8>, StoreError> {
    let len = file.size().map_err(io_err("reading the length of", path))?;
    let mut bytes = vec![0u8; len as usize];
    file.read_at(&mut bytes, 0).map_err(io_err("reading", path))?;
    Ok(bytes)
}

/// Where a segment's replay stopped.
enum Stop {
    /// At its end: go on with the next segment.
    End,
    /// At a bad batch at this offset, for this reason.
    Bad(usize, String),
    /// At an intact batch whose records do not follow from the ones before.
    Invalid(usize, super::catalog::ReplayError),
}

/// Whether `bytes` of segment `id` hold an intact batch at or after `from`, newer than `seq`.
fn has_later_batch(bytes: &[u8], id: u64, from: usize, seq: Option<u64>) -> bool {
    format::find_later_batch(bytes, from, id, seq).is_some()
}

pub(super) fn recover(disk: &dyn Disk, config: &EngineConfig) -> Result<Recovered, StoreError> {
    let dir = &config.dir;
    disk.create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut ids: Vec<u64> = disk
        .list(dir)
        .map_err(io_err("listing", dir))?
        .iter()
        .filter_map(|name| name.strip_suffix(".seg")?.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut catalog = Catalog::new(config.shard_count);
    let mut files = BTreeMap::new();
    let mut report = RecoveryReport::default();
    let mut last_seq: Option<u64> = None;
    let last_segment = ids.last().copied().unwrap_or(0);
    let mut stopped_at: Option<(usize, usize, String)> = None; // (index in ids, offset, reason)
    let mut kept_bytes: Option<Vec<u8>> = None;
    for (i, &id) in ids.iter().enumerate() {
        let path = dir.join(segment_name(id));
        let file = disk.open(&path, false).map_err(io_err("opening", &path))?;
        let bytes = read_all(file.as_ref(), &path)?;
        report.segments += 1;
        let stop = match format::check_segment_header(&bytes) {
            SegmentHeader::OtherVersion(version) => {
                return Err(StoreError::LogFormatMismatch {
                    path,
                    stored: version,
                    supported: format::LOG_FORMAT_VERSION,
                });
            }
            SegmentHeader::Invalid => Stop::Bad(0, "no valid segment header".into()),
            SegmentHeader::Valid => replay_segment(&mut catalog, &bytes, id, &mut last_seq, &mut report),
        };
        if let Stop::Invalid(offset, source) = stop {
            return Err(StoreError::LogReplay {
                path,
                offset: offset as u64,
                source,
            });
        }
        files.insert(id, file);
        if let Stop::Bad(at, reason) = stop {
            stopped_at = Some((i, at, reason));
            kept_bytes = Some(bytes);
            break;
        }
    }
    if let Some((i, at, reason)) = stopped_at {
        let id = ids[i];
        let path = dir.join(segment_name(id));
        let bytes = kept_bytes.expect("bytes of the stopped segment");
        let mut later_intact = has_later_batch(&bytes, id, at + 1, last_seq);
        for &later in &ids[i + 1..] {
            let later_path = dir.join(segment_name(later));
            let file = disk
                .open(&later_path, false)
                .map_err(io_err("opening", &later_path))?;
            let later_bytes = read_all(file.as_ref(), &later_path)?;
            later_intact |= has_later_batch(&later_bytes, later, 0, last_seq);
        }
        let file = files.get(&id).expect("opened above").clone();
        if later_intact {
            tracing::error!(
                path = %path.display(),
                offset = at,
                %reason,
                "the Raft log is damaged in the middle (an intact batch follows a bad one); keeping the log before it, setting the rest aside as *.corrupt, and recovering every shard from the peers"
            );
            let aside = path.with_extension("seg.corrupt");
            let copy = disk.open(&aside, true).map_err(io_err("creating", &aside))?;
            copy.write_at(&bytes, 0).map_err(io_err("writing", &aside))?;
            copy.sync().map_err(io_err("syncing", &aside))?;
            for &later in &ids[i + 1..] {
                let from = dir.join(segment_name(later));
                files.remove(&later);
                disk.rename(&from, &from.with_extension("seg.corrupt"))
                    .map_err(io_err("setting aside", &from))?;
            }
            for shard in &mut catalog.shards {
                shard.meta.recovering = true;
            }
            report.damage = Some(Damage {
                path: path.clone(),
                offset: at as u64,
                reason,
            });
        } else {
            // Zeros past the last batch are space the writer prepared, not a torn write.
            let dropped = bytes[at..]
                .iter()
                .rposition(|b| *b != 0)
                .map_or(0, |last| last + 1);
            if dropped > 0 {
                tracing::warn!(
                    path = %path.display(),
                    offset = at,
                    dropped,
                    "cutting off the torn last batch of the Raft log (written but never synced before a crash)"
                );
            }
            report.torn_tail = Some((path.clone(), at as u64, dropped as u64));
            for &later in &ids[i + 1..] {
                let later_path = dir.join(segment_name(later));
                files.remove(&later);
                disk.remove(&later_path)
                    .map_err(io_err("removing", &later_path))?;
            }
        }
        file.truncate(at as u64).map_err(io_err("cutting", &path))?;
        file.sync().map_err(io_err("syncing", &path))?;
        disk.sync_dir(dir).map_err(io_err("syncing", dir))?;
        if at == 0 {
            files.remove(&id);
            disk.remove(&path).map_err(io_err("removing", &path))?;
        }
    }
    // A process killed between a write and its sync leaves that batch in the page cache,
    // readable as if durable: it was just replayed, so it is synced before anything is built
    // on it. Otherwise a later power loss takes it away from under batches acknowledged since
    // (a hole in the log; or a purge lost after the segments it made obsolete were deleted).
    if !config.skip_fsync {
        for (id, file) in &files {
            let path = dir.join(segment_name(*id));
            file.sync().map_err(io_err("syncing", &path))?;
        }
        disk.sync_dir(dir).map_err(io_err("syncing", dir))?;
    }
    // Entries that followed a deleted segment must have been made consecutive by a purge.
    catalog
        .check_consecutive()
        .map_err(|source| StoreError::LogReplay {
            path: dir.clone(),
            offset: 0,
            source,
        })?;
    Ok(Recovered {
        catalog,
        files,
        next_seq: last_seq.map_or(1, |s| s + 1),
        last_segment,
        report,
    })
}

/// Replays the batches of one segment; says where it stopped.
fn replay_segment(
    catalog: &mut Catalog,
    bytes: &[u8],
    id: u64,
    last_seq: &mut Option<u64>,
    report: &mut RecoveryReport,
) -> Stop {
    let mut at = format::SEGMENT_HEADER_LEN;
    while at < bytes.len() {
        let Some(batch) = format::read_batch(bytes, at, id) else {
            return Stop::Bad(at, "batch header or checksum does not match".into());
        };
        if last_seq.is_some_and(|s| batch.seq != s + 1) {
            return Stop::Bad(
                at,
                format!("batch {} follows batch {}", batch.seq, last_seq.unwrap_or(0)),
            );
        }
        // Every record is checked before any is replayed: a batch counts whole or not at all.
        let records: Result<Vec<_>, _> =
            format::records(&bytes[batch.payload_at..batch.end()], batch.payload_at).collect();
        let records = match records {
            Ok(records) => records,
            Err(e) => return Stop::Bad(at, format!("a record of an intact batch: {e}")),
        };
        for record in records {
            let loc = Loc {
                segment: id,
                offset: (record.body_at - format::RECORD_HEADER_LEN) as u64,
                len: format::RECORD_HEADER_LEN as u32 + record.body_len,
                batch: batch.seq,
            };
            if let Err(source) = catalog.replay(&record, loc) {
                // Intact bytes that make no sense: a bug, not a crash. Refuse to guess.
                return Stop::Invalid(at, source);
            }
        }
        *last_seq = Some(batch.seq);
        report.batches += 1;
        at = batch.end();
    }
    Stop::End
}
