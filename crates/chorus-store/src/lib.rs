//! Durable storage of a Chorus node: one log engine holding every shard's Raft log and vote
//! (`engine`), snapshot files, and the shards' state machines, behind openraft's storage
//! traits.
//!
//! ```text
//!  data_dir/
//!    node.json                  node id, shard count, format version, cluster id
//!    log/<id>.seg               one append-only log for all shards: group commit, checksums
//!    snapshots/shard-<n>.snap   the latest snapshot of shard n (written, fsynced, renamed)
//! ```
//!
//! Durability: an append or a vote is acknowledged (its openraft callback completed) only
//! after the batch holding it was written and fdatasynced; one fdatasync serves every shard's
//! pending writes (group commit). The state machine is [`chorus_core::ShardState`], held in
//! memory; snapshots persist it and openraft re-applies the committed log after the snapshot
//! on restart.

pub mod engine;
pub mod error;
pub mod feed;
pub mod log_store;
pub mod metrics;
pub mod node_store;
pub mod snapshot_pace;
pub mod state_machine;
pub mod types;

pub use error::StoreError;
pub use feed::{AppliedEvent, AppliedNotice, EventFeed, FeedItem};
pub use log_store::{LogReader, LogStore};
pub use metrics::StoreMetrics;
pub use node_store::{NodeStore, StoreOptions};
pub use state_machine::{ShardReader, ShardStateMachine};
pub use types::{ChorusNode, ShardRequest, ShardResponse, TypeConfig};
