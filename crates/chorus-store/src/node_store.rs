//! Opening a node's data directory and handing out per-shard stores.

use crate::error::{StoreError, decode, encode};
use crate::feed::EventFeed;
use crate::log_store::LogStore;
use crate::state_machine::ShardStateMachine;
use crate::syncer::{StoreMetrics, Syncer};
use chorus_core::{HistoryLimits, ShardId};
use std::path::{Path, PathBuf};

/// Environment switch that turns off the fsync after sled's flush, and sled's own periodic
/// fsync: acknowledged writes are then lost in a power loss. It exists only so that tests
/// can show the power-loss test fails without the fsync; never set it in production.
pub const UNSAFE_SKIP_FSYNC_ENV: &str = "CHORUS_UNSAFE_SKIP_FSYNC_FOR_TESTS";

/// The storage format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A node's storage: one sled database and the snapshot directory.
#[derive(Clone)]
pub struct NodeStore {
    db: sled::Db,
    syncer: Syncer,
    snapshot_dir: PathBuf,
    feed: EventFeed,
}

impl NodeStore {
    /// Opens (or creates) the data directory of node `node_id` for `shard_count` shards.
    /// Refuses a directory made for another node id, shard count or storage format.
    pub fn open(
        data_dir: &Path,
        node_id: u64,
        shard_count: u32,
        metrics: StoreMetrics,
    ) -> Result<NodeStore, StoreError> {
        let sled_dir = data_dir.join("sled");
        let snapshot_dir = data_dir.join("snapshots");
        for dir in [data_dir, &snapshot_dir] {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                action: "creating directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let skip_fsync = std::env::var_os(UNSAFE_SKIP_FSYNC_ENV).is_some();
        let mut sled_config = sled::Config::new().path(&sled_dir);
        if skip_fsync {
            tracing::error!("{UNSAFE_SKIP_FSYNC_ENV} is set: writes are NOT durable (test-only switch)");
            sled_config = sled_config.flush_every_ms(None);
        }
        let db = sled_config.open()?;
        // Make the new directories themselves durable (their entries live in the parents).
        for dir in [data_dir, &sled_dir, &snapshot_dir] {
            sync_dir(dir)?;
        }
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let meta = db.open_tree("node-meta")?;
        check_or_record(&meta, "format_version", FORMAT_VERSION, |stored| {
            StoreError::FormatMismatch {
                stored,
                supported: FORMAT_VERSION,
            }
        })?;
        check_or_record(&meta, "node_id", node_id, |stored| StoreError::NodeIdMismatch {
            stored,
            configured: node_id,
        })?;
        check_or_record(&meta, "shard_count", shard_count, |stored| {
            StoreError::ShardCountMismatch {
                stored,
                configured: shard_count,
            }
        })?;
        let syncer = Syncer::start(db.clone(), sled_dir, metrics, skip_fsync)?;
        let store = NodeStore {
            db,
            syncer,
            snapshot_dir,
            feed: EventFeed::default(),
        };
        // Make the identity records durable before anything depends on them.
        futures::executor::block_on(store.syncer.flush()).map_err(|source| StoreError::Io {
            action: "syncing",
            path: data_dir.to_path_buf(),
            source,
        })?;
        Ok(store)
    }

    /// The log store of `shard`.
    pub fn log_store(&self, shard: ShardId) -> Result<LogStore, StoreError> {
        LogStore::open(&self.db, shard, self.syncer.clone())
    }

    /// The state machine of `shard` (empty until openraft installs its snapshot and
    /// re-applies the log). It starts with the default limits on every node; only committed
    /// `SetLimits` commands change them, so replicas never apply under different limits.
    pub fn state_machine(&self, shard: ShardId) -> ShardStateMachine {
        ShardStateMachine::new(
            shard,
            HistoryLimits::default(),
            self.snapshot_dir.clone(),
            self.feed.clone(),
        )
    }

    /// The feed of events applied by this node's state machines.
    pub fn feed(&self) -> &EventFeed {
        &self.feed
    }

    /// The cluster id this data directory belongs to, once recorded.
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        let meta = self.db.open_tree("node-meta")?;
        match meta.get("cluster_id")? {
            Some(bytes) => Ok(Some(decode("node metadata", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Records the cluster id this data directory belongs to.
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        self.db
            .open_tree("node-meta")?
            .insert("cluster_id", encode(&id.to_string()))?;
        let syncer = self.syncer.clone();
        // Durable soon; if lost in a crash, the id is learned again from shard 0.
        tokio::spawn(async move { syncer.flush().await });
        Ok(())
    }

    /// The group-commit syncer.
    pub fn syncer(&self) -> &Syncer {
        &self.syncer
    }

    /// Makes everything written so far durable, then stops the syncer thread.
    pub async fn close(&self) {
        if let Err(e) = self.syncer.flush().await {
            tracing::error!(error = %e, "final sync of the data directory failed");
        }
        self.syncer.stop();
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            action: "fsyncing directory",
            path: dir.to_path_buf(),
            source,
        })
}

fn check_or_record<T>(
    meta: &sled::Tree,
    key: &str,
    configured: T,
    mismatch: impl FnOnce(T) -> StoreError,
) -> Result<(), StoreError>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + Copy,
{
    match meta.get(key)? {
        Some(bytes) => {
            let stored: T = decode("node metadata", &bytes)?;
            if stored != configured {
                return Err(mismatch(stored));
            }
        }
        None => {
            meta.insert(key, encode(&configured))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_shard_count_and_node_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path(), 1, 12, StoreMetrics::default()).unwrap();
        futures::executor::block_on(store.close());
        drop(store);
        let err = NodeStore::open(dir.path(), 1, 8, StoreMetrics::default())
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                StoreError::ShardCountMismatch {
                    stored: 12,
                    configured: 8
                }
            ),
            "{err}"
        );
        let err = NodeStore::open(dir.path(), 2, 12, StoreMetrics::default())
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                StoreError::NodeIdMismatch {
                    stored: 1,
                    configured: 2
                }
            ),
            "{err}"
        );
        assert!(NodeStore::open(dir.path(), 1, 12, StoreMetrics::default()).is_ok());
    }
}
