//! Durable storage of a Chorus node: one sled database holding every shard's Raft log and
//! vote, plus snapshot files, behind openraft's storage traits.
//!
//! ```text
//!  data_dir/
//!    sled/                 one sled database for the node
//!      node-meta           node id, shard count, format version
//!      shard-<n>-log       index (u64 BE) -> Entry          (postcard)
//!      shard-<n>-meta      vote, committed, last purged      (postcard)
//!    snapshots/shard-<n>.snap   the latest snapshot of shard n (written, fsynced, renamed)
//! ```
//!
//! Durability: sled's `flush()` is not an fsync (it uses `sync_file_range`), so every
//! acknowledged append and vote goes through the [`Syncer`], which calls `flush()` and then
//! fsyncs sled's `db` file. One fsync serves every shard's pending appends (group commit).
//!
//! The state machine is [`chorus_core::ShardState`], held in memory; snapshots persist it and
//! openraft re-applies the committed log after the snapshot on restart.

pub mod error;
pub mod feed;
pub mod log_store;
pub mod node_store;
pub mod state_machine;
pub mod syncer;
pub mod types;

pub use error::StoreError;
pub use feed::{AppliedEvent, AppliedNotice, EventFeed, FeedItem};
pub use log_store::{LogReader, LogStore};
pub use node_store::NodeStore;
pub use state_machine::{ShardReader, ShardStateMachine};
pub use syncer::{StoreMetrics, Syncer};
pub use types::{ChorusNode, ShardRequest, ShardResponse, TypeConfig};
