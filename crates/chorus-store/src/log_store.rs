//! The Raft log and vote of one shard, in two sled trees of the node's database.

use crate::error::{StoreError, decode, encode};
use crate::syncer::Syncer;
use crate::types::TypeConfig;
use chorus_core::ShardId;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

type Entry = <TypeConfig as RaftTypeConfig>::Entry;

/// Reads a shard's log; shares the trees with the [`LogStore`], so it sees every append.
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
    meta: sled::Tree,
}

/// The log storage of one shard.
#[derive(Clone)]
pub struct LogStore {
    reader: LogReader,
    syncer: Syncer,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn io_err(err: impl Into<StoreError>) -> io::Error {
    err.into().into()
}

impl LogStore {
    pub(crate) fn open(db: &sled::Db, shard: ShardId, syncer: Syncer) -> Result<LogStore, StoreError> {
        Ok(LogStore {
            reader: LogReader {
                log: db.open_tree(format!("shard-{}-log", shard.0))?,
                meta: db.open_tree(format!("shard-{}-meta", shard.0))?,
            },
            syncer,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        self.reader.read_meta(key)
    }
}

impl LogReader {
    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, io::Error> {
        match self.meta.get(key).map_err(io_err)? {
            Some(bytes) => Ok(Some(decode("raft metadata", &bytes).map_err(io_err)?)),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.log
            .range::<[u8; 8], _>((start, end))
            .map(|item| {
                let (_, value) = item.map_err(io_err)?;
                decode::<Entry>("raft log entry", &value).map_err(io_err)
            })
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.read_meta(VOTE)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.reader.try_get_log_entries(range).await
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.reader.read_vote().await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.read_meta(LAST_PURGED)?;
        let last = match self.reader.log.last().map_err(io_err)? {
            Some((_, value)) => Some(
                decode::<EntryOf<TypeConfig>>("raft log entry", &value)
                    .map_err(io_err)?
                    .log_id,
            ),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.reader.meta.insert(VOTE, encode(vote)).map_err(io_err)?;
        self.syncer.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        // Not synced on its own: a committed id older than the truth after a crash is safe,
        // openraft only uses it to re-apply sooner on restart.
        self.reader
            .meta
            .insert(COMMITTED, encode(&committed))
            .map_err(io_err)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .read_meta::<Option<LogIdOf<TypeConfig>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.log_id.index), encode(&entry));
        }
        self.reader.log.apply_batch(batch).map_err(io_err)?;
        self.syncer.flush_then(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut batch = sled::Batch::default();
        for item in self.reader.log.range(index_key(from)..) {
            let (key, _) = item.map_err(io_err)?;
            batch.remove(key);
        }
        self.reader.log.apply_batch(batch).map_err(io_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.reader
            .meta
            .insert(LAST_PURGED, encode(&log_id))
            .map_err(io_err)?;
        let mut batch = sled::Batch::default();
        for item in self.reader.log.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(io_err)?;
            batch.remove(key);
        }
        self.reader.log.apply_batch(batch).map_err(io_err)?;
        Ok(())
    }
}
