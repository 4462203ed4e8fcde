//! openraft's log storage of one shard: a thin adapter over the node's [`LogEngine`].

use crate::engine::LogEngine;
use crate::types::TypeConfig;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, RaftTypeConfig};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

type Entry = <TypeConfig as RaftTypeConfig>::Entry;

/// The log of one shard, in the node's shared log engine. Cloning shares it; it is its own
/// reader (reads never block appends for long: see [`LogEngine::entries`]).
#[derive(Clone)]
pub struct LogStore {
    engine: LogEngine,
    shard: u32,
}

/// The reader handed to openraft's replication tasks.
pub type LogReader = LogStore;

impl LogStore {
    pub(crate) fn new(engine: LogEngine, shard: u32) -> LogStore {
        LogStore { engine, shard }
    }
}

fn range_of(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_of(&range);
        self.engine.entries(self.shard, start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.engine.vote(self.shard))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let (last_purged_log_id, last_log_id) = self.engine.log_state(self.shard);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.engine.save_vote(self.shard, vote).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        // Durable with the next batch: a committed id older than the truth after a crash only
        // means re-applying less at start; one newer than the log can never be read back,
        // because the log replays in order.
        self.engine.save_committed(self.shard, committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.engine.committed(self.shard))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.engine
            .append(self.shard, entries.into_iter().collect(), callback)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> Result<(), io::Error> {
        self.engine.truncate_after(self.shard, last_log_id)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.engine.purge(self.shard, log_id)
    }
}
