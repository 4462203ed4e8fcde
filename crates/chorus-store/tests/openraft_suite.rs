//! openraft's own storage conformance suite against the log engine's per-shard store.

use chorus_core::ShardId;
use chorus_store::{LogStore, NodeStore, ShardStateMachine, StoreMetrics, TypeConfig};
use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

struct EngineBuilder;

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, TempDir> for EngineBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, ShardStateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let store = NodeStore::open(dir.path(), 1, 4, StoreMetrics::default())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let log = store.log_store(ShardId(2));
        let sm = store.state_machine(ShardId(2));
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_engine_store_passes_openraft_suite() {
    Suite::test_all(EngineBuilder)
        .await
        .expect("openraft storage suite");
}
