//! What the log engine knows of every shard's log, in memory (pure: no I/O).
//!
//! Per shard: the vote, the committed and purged log ids, whether the replica is recovering
//! from its peers, and one slot per live entry: its log id and where its record lies. The
//! newest entries are also kept decoded (a suffix of the slots), so replication and apply take
//! them without reading or decoding anything. The same code replays the records found on disk
//! at start, so what is rebuilt is exactly what was written.

use super::format::{RecordKind, RecordRef};
use crate::types::TypeConfig;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

pub(crate) type Entry = EntryOf<TypeConfig>;
pub(crate) type LogId = LogIdOf<TypeConfig>;
pub(crate) type Vote = VoteOf<TypeConfig>;

/// Where a record lies: its segment, the offset of its header, its whole length and the
/// batch that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub batch: u64,
}

#[derive(Debug, Clone)]
struct Slot {
    log_id: LogId,
    loc: Loc,
}

/// The metadata of one shard, as a checkpoint record carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShardMeta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    pub recovering: bool,
}

/// One shard's log.
#[derive(Default)]
pub(crate) struct ShardLog {
    pub meta: ShardMeta,
    slots: VecDeque<Slot>,
    /// Decoded entries of the last `cache.len()` slots, with their record lengths.
    cache: VecDeque<(Entry, u32)>,
    cache_bytes: usize,
}

/// Why a record cannot follow what came before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// An entry leaves a gap after the shard's last one.
    #[error("shard {shard}: entry {index} follows entry {last} (a hole in the log)")]
    Hole {
        /// The shard.
        shard: u32,
        /// The entry's index.
        index: u64,
        /// The index before it.
        last: u64,
    },
    /// A record names a shard this node does not have.
    #[error("record of shard {shard}, but the node has {count} shards")]
    UnknownShard {
        /// The shard.
        shard: u32,
        /// The node's shard count.
        count: u32,
    },
    /// A record's data does not decode.
    #[error("undecodable {kind:?} record of shard {shard}: {reason}")]
    Undecodable {
        /// What it was.
        kind: RecordKind,
        /// The shard.
        shard: u32,
        /// The decoder's message.
        reason: String,
    },
}

impl ShardLog {
    /// The last log id: of the last entry, else the purged one.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.slots.back().map(|s| s.log_id).or(self.meta.purged)
    }

    fn next_index(&self) -> u64 {
        self.last_log_id().map_or(0, |id| id.index + 1)
    }

    fn first_index(&self) -> u64 {
        self.slots.front().map_or(self.next_index(), |s| s.log_id.index)
    }

    /// Whether an entry at `index` may be appended: not after a gap.
    pub fn check_append(&self, shard: u32, index: u64) -> Result<(), ReplayError> {
        let next = self.next_index();
        if index > next && self.last_log_id().is_some() {
            return Err(ReplayError::Hole {
                shard,
                index,
                last: next.saturating_sub(1),
            });
        }
        Ok(())
    }

    /// Adds an entry at `log_id.index`, replacing any entries from there on (a replay of an
    /// append after a conflict). An entry at or below the purged index is skipped.
    pub fn append(
        &mut self,
        shard: u32,
        log_id: LogId,
        loc: Loc,
        decoded: Option<Entry>,
    ) -> Result<(), ReplayError> {
        if self.meta.purged.is_some_and(|p| log_id.index <= p.index) {
            return Ok(());
        }
        // Replayed from disk with no entry before it: the ones before it may have lain in
        // segments deleted because a purge still ahead in the replay made them obsolete;
        // `Catalog::check_consecutive` checks at the end that it came.
        let replayed_after_deleted_segments = decoded.is_none() && self.slots.is_empty();
        if !replayed_after_deleted_segments {
            self.check_append(shard, log_id.index)?;
        }
        let next = self.next_index();
        if log_id.index < next {
            self.truncate_from(log_id.index);
        }
        self.slots.push_back(Slot { log_id, loc });
        match decoded {
            Some(entry) => {
                self.cache_bytes += loc.len as usize;
                self.cache.push_back((entry, loc.len));
            }
            // An entry replayed from disk: whatever is cached no longer ends at the last slot.
            None => self.drop_cache(),
        }
        Ok(())
    }

    fn drop_cache(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    fn truncate_from(&mut self, index: u64) {
        let first = self.first_index();
        let keep = index.saturating_sub(first) as usize;
        let drop = self.slots.len().saturating_sub(keep);
        self.slots.truncate(keep);
        for _ in 0..drop.min(self.cache.len()) {
            if let Some((_, len)) = self.cache.pop_back() {
                self.cache_bytes -= len as usize;
            }
        }
    }

    /// Removes the entries after `log_id`.
    pub fn truncate_after(&mut self, log_id: Option<LogId>) {
        self.truncate_from(log_id.map_or(0, |id| id.index + 1));
    }

    /// Removes the entries up to `log_id` and records it as purged.
    pub fn purge(&mut self, log_id: LogId) {
        if self.meta.purged.is_some_and(|p| p.index >= log_id.index) {
            return;
        }
        while self.slots.front().is_some_and(|s| s.log_id.index <= log_id.index) {
            self.slots.pop_front();
        }
        while self.cache.len() > self.slots.len() {
            if let Some((_, len)) = self.cache.pop_front() {
                self.cache_bytes -= len as usize;
            }
        }
        self.meta.purged = Some(log_id);
    }

    /// Forgets decoded entries, oldest first, until at most `max_bytes` are kept; never an
    /// entry whose batch is not written yet (it could not be read back).
    pub fn evict(&mut self, max_bytes: usize, written_batch: u64) {
        while self.cache_bytes > max_bytes {
            let cached_from = self.slots.len() - self.cache.len();
            let Some(slot) = self.slots.get(cached_from) else {
                break;
            };
            if slot.loc.batch > written_batch {
                break;
            }
            let (_, len) = self.cache.pop_front().expect("cache is a suffix of the slots");
            self.cache_bytes -= len as usize;
        }
    }

    /// Bytes of decoded entries kept.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// The entries in `[start, end)` that exist: decoded where cached, else where to read them.
    pub fn lookup(&self, start: u64, end: u64) -> Vec<Lookup> {
        let first = self.first_index();
        let start = start.max(first);
        let end = end.min(self.next_index());
        if start >= end || self.slots.is_empty() {
            return Vec::new();
        }
        let cached_from = self.slots.len() - self.cache.len();
        (start..end)
            .map(|index| {
                let pos = (index - first) as usize;
                if pos >= cached_from {
                    Lookup::Cached(self.cache[pos - cached_from].0.clone())
                } else {
                    Lookup::OnDisk(self.slots[pos].loc)
                }
            })
            .collect()
    }

    /// The segment of the oldest live entry.
    pub fn first_segment(&self) -> Option<u64> {
        self.slots.front().map(|s| s.loc.segment)
    }

    /// The number of live entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

/// An entry found by [`ShardLog::lookup`].
#[derive(Debug, Clone)]
pub(crate) enum Lookup {
    /// Decoded in memory.
    Cached(Entry),
    /// To be read from disk.
    OnDisk(Loc),
}

/// Every shard's log.
pub(crate) struct Catalog {
    pub shards: Vec<ShardLog>,
}

impl Catalog {
    pub fn new(shard_count: u32) -> Catalog {
        Catalog {
            shards: (0..shard_count).map(|_| ShardLog::default()).collect(),
        }
    }

    /// The shard's log; `None` for a shard this node does not have.
    pub fn shard(&mut self, shard: u32) -> Result<&mut ShardLog, ReplayError> {
        let count = self.shards.len() as u32;
        self.shards
            .get_mut(shard as usize)
            .ok_or(ReplayError::UnknownShard { shard, count })
    }

    /// After a replay: every shard's entries follow its purged log id without a gap.
    pub fn check_consecutive(&self) -> Result<(), ReplayError> {
        for (shard, log) in self.shards.iter().enumerate() {
            if let (Some(first), Some(purged)) = (log.slots.front(), log.meta.purged)
                && first.log_id.index != purged.index + 1
            {
                return Err(ReplayError::Hole {
                    shard: shard as u32,
                    index: first.log_id.index,
                    last: purged.index,
                });
            }
        }
        Ok(())
    }

    /// Every shard's metadata (the data of a checkpoint record).
    pub fn checkpoint(&self) -> Vec<ShardMeta> {
        self.shards.iter().map(|s| s.meta.clone()).collect()
    }

    /// The oldest segment a live entry lies in.
    pub fn oldest_live_segment(&self) -> Option<u64> {
        self.shards.iter().filter_map(ShardLog::first_segment).min()
    }

    /// Applies one record read back from disk at `loc`.
    pub fn replay(&mut self, record: &RecordRef<'_>, loc: Loc) -> Result<(), ReplayError> {
        let shard = record.shard;
        let undecodable = |reason: postcard::Error| ReplayError::Undecodable {
            kind: record.kind,
            shard,
            reason: reason.to_string(),
        };
        match record.kind {
            RecordKind::Entry => {
                // Only the log id, which postcard puts first: entries are decoded when read.
                let (log_id, _) = postcard::take_from_bytes::<LogId>(record.data).map_err(undecodable)?;
                self.shard(shard)?.append(shard, log_id, loc, None)?;
            }
            RecordKind::Vote => {
                self.shard(shard)?.meta.vote = Some(postcard::from_bytes(record.data).map_err(undecodable)?);
            }
            RecordKind::Committed => {
                self.shard(shard)?.meta.committed = postcard::from_bytes(record.data).map_err(undecodable)?;
            }
            RecordKind::TruncateAfter => {
                let log_id = postcard::from_bytes(record.data).map_err(undecodable)?;
                self.shard(shard)?.truncate_after(log_id);
            }
            RecordKind::Purge => {
                let log_id = postcard::from_bytes(record.data).map_err(undecodable)?;
                self.shard(shard)?.purge(log_id);
            }
            RecordKind::Recovering => {
                self.shard(shard)?.meta.recovering = record.data.first() == Some(&1);
            }
            RecordKind::Checkpoint => {
                let metas: Vec<ShardMeta> = postcard::from_bytes(record.data).map_err(undecodable)?;
                let count = self.shards.len() as u32;
                if metas.len() != self.shards.len() {
                    return Err(ReplayError::UnknownShard {
                        shard: metas.len() as u32,
                        count,
                    });
                }
                for (log, meta) in self.shards.iter_mut().zip(metas) {
                    if let Some(purged) = meta.purged {
                        log.purge(purged);
                    }
                    log.meta = meta;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ShardRequest;
    use openraft::entry::RaftEntry;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(
            openraft::vote::leader_id_adv::LeaderId { term, node_id: 1 },
            index,
        )
    }

    fn loc(segment: u64, batch: u64) -> Loc {
        Loc {
            segment,
            offset: 0,
            len: 100,
            batch,
        }
    }

    fn entry(term: u64, index: u64) -> Entry {
        Entry::new_normal(log_id(term, index), ShardRequest::new(Vec::new()))
    }

    fn append(log: &mut ShardLog, term: u64, index: u64, segment: u64) {
        log.append(
            0,
            log_id(term, index),
            loc(segment, index),
            Some(entry(term, index)),
        )
        .unwrap();
    }

    fn indexes(log: &ShardLog, from: u64, to: u64) -> Vec<(u64, bool)> {
        log.lookup(from, to)
            .into_iter()
            .map(|l| match l {
                Lookup::Cached(e) => (e.log_id.index, true),
                Lookup::OnDisk(loc) => (loc.batch, false),
            })
            .collect()
    }

    #[test]
    fn appends_conflicts_and_purges_keep_the_log_consecutive() {
        let mut log = ShardLog::default();
        for i in 1..=5 {
            append(&mut log, 1, i, 1);
        }
        assert_eq!(log.last_log_id(), Some(log_id(1, 5)));
        // A new leader overwrites from 4.
        append(&mut log, 2, 4, 2);
        assert_eq!(log.last_log_id(), Some(log_id(2, 4)));
        assert_eq!(
            indexes(&log, 0, 100),
            vec![(1, true), (2, true), (3, true), (4, true)]
        );
        log.purge(log_id(1, 2));
        assert_eq!(indexes(&log, 0, 100), vec![(3, true), (4, true)]);
        assert_eq!(log.first_segment(), Some(1));
        log.truncate_after(Some(log_id(1, 3)));
        assert_eq!(log.last_log_id(), Some(log_id(1, 3)));
        let err = log.append(0, log_id(2, 9), loc(2, 9), None).unwrap_err();
        assert_eq!(
            err,
            ReplayError::Hole {
                shard: 0,
                index: 9,
                last: 3
            }
        );
        // Purged beyond the last entry (a snapshot installed): the next entry follows it.
        log.purge(log_id(3, 20));
        assert_eq!(log.len(), 0);
        assert_eq!(log.last_log_id(), Some(log_id(3, 20)));
        append(&mut log, 3, 21, 3);
        assert_eq!(indexes(&log, 0, 100), vec![(21, true)]);
        // Replayed entries at or below the purge are skipped.
        log.append(0, log_id(1, 5), loc(1, 5), None).unwrap();
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn eviction_keeps_unwritten_entries_and_reads_fall_back_to_disk() {
        let mut log = ShardLog::default();
        for i in 1..=4 {
            append(&mut log, 1, i, 1);
        }
        assert_eq!(log.cache_bytes(), 400);
        // Batches up to 2 written: entries 3 and 4 stay decoded whatever the budget.
        log.evict(0, 2);
        assert_eq!(
            indexes(&log, 1, 5),
            vec![(1, false), (2, false), (3, true), (4, true)]
        );
        log.evict(100, 4);
        assert_eq!(
            indexes(&log, 1, 5),
            vec![(1, false), (2, false), (3, false), (4, true)]
        );
        // Truncating a cached suffix keeps the cache aligned with the slots.
        log.truncate_after(Some(log_id(1, 2)));
        append(&mut log, 2, 3, 2);
        assert_eq!(indexes(&log, 1, 5), vec![(1, false), (2, false), (3, true)]);
    }

    #[test]
    fn a_checkpoint_restores_every_shards_metadata() {
        let mut catalog = Catalog::new(2);
        catalog.shards[1].meta.vote = Some(Vote::new_committed(3, 2));
        catalog.shards[1].meta.recovering = true;
        for i in 1..=3 {
            append(&mut catalog.shards[0], 1, i, 1);
        }
        catalog.shards[0].purge(log_id(1, 1));
        let data = postcard::to_stdvec(&catalog.checkpoint()).unwrap();
        let mut rebuilt = Catalog::new(2);
        let record = RecordRef {
            kind: RecordKind::Checkpoint,
            shard: super::super::format::NO_SHARD,
            data: &data,
            body_at: 0,
            body_len: 0,
        };
        rebuilt.replay(&record, loc(5, 1)).unwrap();
        assert_eq!(rebuilt.checkpoint(), catalog.checkpoint());
        assert!(rebuilt.shards[1].meta.recovering);
        assert_eq!(rebuilt.shards[0].last_log_id(), Some(log_id(1, 1)));
        let wrong = Catalog::new(3).replay(&record, loc(5, 1)).unwrap_err();
        assert!(matches!(wrong, ReplayError::UnknownShard { .. }));
    }
}
