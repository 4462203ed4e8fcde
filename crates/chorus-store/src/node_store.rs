//! Opening a node's data directory and handing out per-shard stores.
//!
//! ```text
//!  data_dir/
//!    node.json                  format version, node id, shard count, cluster id
//!    log/<id>.seg               the Raft log of every shard (crate::engine)
//!    snapshots/shard-<n>.snap   the latest snapshot of shard n (written, fsynced, renamed)
//! ```

use crate::engine::disk::{Disk, StdDisk};
use crate::engine::{EngineConfig, LogEngine, RecoveryReport};
use crate::error::StoreError;
use crate::feed::EventFeed;
use crate::log_store::LogStore;
use crate::metrics::StoreMetrics;
use crate::state_machine::ShardStateMachine;
use chorus_core::{HistoryLimits, ShardId};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Environment switch that turns off every fsync of the log: acknowledged writes are then
/// lost in a power loss. It exists only so that tests can show the power-loss test fails
/// without the fsync; never set it in production.
pub const UNSAFE_SKIP_FSYNC_ENV: &str = "CHORUS_UNSAFE_SKIP_FSYNC_FOR_TESTS";

/// The storage format this build writes and reads (1 was the Raft log in sled).
pub const FORMAT_VERSION: u32 = 2;

const META_FILE: &str = "node.json";

/// Settings of a node's storage.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Size at which a log segment is closed and the next one started.
    pub segment_bytes: u64,
    /// Decoded Raft entries kept in memory (bytes of their records, all shards together).
    pub entry_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_bytes: 64 * 1024 * 1024,
            entry_cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What `node.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeMeta {
    format_version: u32,
    node_id: u64,
    shard_count: u32,
    cluster_id: Option<String>,
}

/// A node's storage: the log engine and the snapshot directory.
#[derive(Clone)]
pub struct NodeStore {
    engine: LogEngine,
    snapshot_dir: PathBuf,
    feed: EventFeed,
    meta_path: PathBuf,
    meta: Arc<Mutex<NodeMeta>>,
}

impl NodeStore {
    /// Opens (or creates) the data directory of node `node_id` for `shard_count` shards with
    /// default options.
    pub fn open(
        data_dir: &Path,
        node_id: u64,
        shard_count: u32,
        metrics: StoreMetrics,
    ) -> Result<NodeStore, StoreError> {
        NodeStore::open_with(data_dir, node_id, shard_count, StoreOptions::default(), metrics)
    }

    /// Opens (or creates) the data directory of node `node_id` for `shard_count` shards.
    /// Refuses a directory made for another node id, shard count or storage format.
    pub fn open_with(
        data_dir: &Path,
        node_id: u64,
        shard_count: u32,
        options: StoreOptions,
        metrics: StoreMetrics,
    ) -> Result<NodeStore, StoreError> {
        let old_sled = data_dir.join("sled");
        if old_sled.exists() {
            return Err(StoreError::OldLayout {
                path: old_sled,
                supported: FORMAT_VERSION,
            });
        }
        let snapshot_dir = data_dir.join("snapshots");
        for dir in [data_dir, &snapshot_dir] {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                action: "creating directory",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let meta_path = data_dir.join(META_FILE);
        let meta = match std::fs::read(&meta_path) {
            Ok(bytes) => {
                let meta: NodeMeta = serde_json::from_slice(&bytes).map_err(|e| StoreError::BadNodeMeta {
                    path: meta_path.clone(),
                    reason: e.to_string(),
                })?;
                check_meta(&meta, node_id, shard_count)?;
                meta
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let meta = NodeMeta {
                    format_version: FORMAT_VERSION,
                    node_id,
                    shard_count,
                    cluster_id: None,
                };
                write_meta(&meta_path, &meta)?;
                meta
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "reading",
                    path: meta_path,
                    source,
                });
            }
        };
        // Make the new directories themselves durable (their entries live in the parents).
        for dir in [data_dir, &snapshot_dir] {
            sync_dir(dir)?;
        }
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let skip_fsync = std::env::var_os(UNSAFE_SKIP_FSYNC_ENV).is_some();
        if skip_fsync {
            tracing::error!("{UNSAFE_SKIP_FSYNC_ENV} is set: writes are NOT durable (test-only switch)");
        }
        let mut config = EngineConfig::new(data_dir.join("log"), shard_count);
        config.segment_bytes = options.segment_bytes;
        config.cache_bytes = options.entry_cache_bytes;
        config.skip_fsync = skip_fsync;
        let disk: Arc<dyn Disk> = Arc::new(StdDisk);
        let engine = LogEngine::open(disk, config, metrics)?;
        sync_dir(data_dir)?;
        Ok(NodeStore {
            engine,
            snapshot_dir,
            feed: EventFeed::default(),
            meta_path,
            meta: Arc::new(Mutex::new(meta)),
        })
    }

    /// The log store of `shard`.
    pub fn log_store(&self, shard: ShardId) -> LogStore {
        LogStore::new(self.engine.clone(), shard.0)
    }

    /// The log engine shared by every shard.
    pub fn engine(&self) -> &LogEngine {
        &self.engine
    }

    /// What opening the log found (a torn tail cut off, damage set aside).
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.engine.recovery_report()
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
            self.engine.clone(),
        )
    }

    /// The feed of events applied by this node's state machines.
    pub fn feed(&self) -> &EventFeed {
        &self.feed
    }

    /// The cluster id this data directory belongs to, once recorded.
    pub fn cluster_id(&self) -> Option<String> {
        self.meta.lock().expect("meta lock").cluster_id.clone()
    }

    /// Records the cluster id this data directory belongs to (durably: if lost in a crash, it
    /// is learned again from shard 0 anyway).
    pub fn set_cluster_id(&self, id: &str) -> Result<(), StoreError> {
        let mut meta = self.meta.lock().expect("meta lock");
        if meta.cluster_id.as_deref() == Some(id) {
            return Ok(());
        }
        let mut updated = meta.clone();
        updated.cluster_id = Some(id.to_string());
        write_meta(&self.meta_path, &updated)?;
        *meta = updated;
        Ok(())
    }

    /// Makes everything written so far durable, then stops the log writer.
    pub async fn close(&self) {
        if let Err(e) = self.engine.flush().await {
            tracing::error!(error = %e, "final sync of the log failed");
        }
        self.engine.stop();
    }
}

fn check_meta(meta: &NodeMeta, node_id: u64, shard_count: u32) -> Result<(), StoreError> {
    if meta.format_version != FORMAT_VERSION {
        return Err(StoreError::FormatMismatch {
            stored: meta.format_version,
            supported: FORMAT_VERSION,
        });
    }
    if meta.node_id != node_id {
        return Err(StoreError::NodeIdMismatch {
            stored: meta.node_id,
            configured: node_id,
        });
    }
    if meta.shard_count != shard_count {
        return Err(StoreError::ShardCountMismatch {
            stored: meta.shard_count,
            configured: shard_count,
        });
    }
    Ok(())
}

/// Writes `node.json` atomically: a temporary file, fsynced, renamed over, directory fsynced.
fn write_meta(path: &Path, meta: &NodeMeta) -> Result<(), StoreError> {
    let tmp = path.with_extension("json.tmp");
    let io = |action, source| StoreError::Io {
        action,
        path: tmp.clone(),
        source,
    };
    let text = serde_json::to_vec_pretty(meta).expect("node metadata encodes");
    let mut file = std::fs::File::create(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(&text).map_err(|e| io("writing", e))?;
    file.sync_all().map_err(|e| io("fsyncing", e))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_shard_count_node_id_and_the_old_layout() {
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
        let store = NodeStore::open(dir.path(), 1, 12, StoreMetrics::default()).unwrap();
        store.set_cluster_id("c-1").unwrap();
        futures::executor::block_on(store.close());
        let store = NodeStore::open(dir.path(), 1, 12, StoreMetrics::default()).unwrap();
        assert_eq!(store.cluster_id().as_deref(), Some("c-1"));
        futures::executor::block_on(store.close());

        // A data directory of the sled layout is refused, with what to do.
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("sled")).unwrap();
        let err = NodeStore::open(old.path(), 1, 12, StoreMetrics::default())
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::OldLayout { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains("cluster remove") && message.contains("--join"),
            "{message}"
        );
        assert!(
            !old.path().join("log").exists(),
            "nothing written next to the old layout"
        );
    }
}
