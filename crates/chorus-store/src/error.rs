//! Storage errors.

use std::path::PathBuf;

/// What can go wrong opening or using a node's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Stored bytes did not decode.
    #[error("corrupt {what}: {source}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// The cause.
        source: postcard::Error,
    },
    /// The data directory was created with another shard count.
    #[error(
        "the data directory was created for {stored} shards but the configuration says {configured}; the shard count is fixed when a cluster is created"
    )]
    ShardCountMismatch {
        /// Shard count recorded in the data directory.
        stored: u32,
        /// Shard count in the configuration.
        configured: u32,
    },
    /// The data directory belongs to another node id.
    #[error("the data directory belongs to node {stored} but this node is configured as node {configured}")]
    NodeIdMismatch {
        /// Node id recorded in the data directory.
        stored: u64,
        /// Node id in the configuration.
        configured: u64,
    },
    /// The data directory was written by an incompatible version.
    #[error("the data directory has storage format {stored}; this build reads format {supported}")]
    FormatMismatch {
        /// Format recorded.
        stored: u32,
        /// Format this build understands.
        supported: u32,
    },
    /// The log's writer thread has stopped.
    #[error("the log writer has stopped")]
    LogWriterStopped,
    /// A log segment was written in another log format.
    #[error("log segment {path} has log format {stored}; this build reads format {supported}")]
    LogFormatMismatch {
        /// The segment.
        path: PathBuf,
        /// Its format.
        stored: u32,
        /// The format this build reads.
        supported: u32,
    },
    /// Intact log records that do not follow from the ones before them.
    #[error("log segment {path}, batch at byte {offset}: {source}")]
    LogReplay {
        /// The segment.
        path: PathBuf,
        /// Where the batch starts.
        offset: u64,
        /// What did not fit.
        source: crate::engine::ReplayError,
    },
    /// The data directory has the layout of an earlier release.
    #[error(
        "{path} holds the storage of an earlier Chorus release (format 1: the Raft log in sled); this build reads format {supported}. To upgrade this node: stop it, remove it from the cluster (`chorus cluster remove --node <member URL> <id>`), move its data directory aside, and start it with an empty one and `--join <member raft address>`; it copies everything from its peers"
    )]
    OldLayout {
        /// The directory found.
        path: PathBuf,
        /// The format this build reads.
        supported: u32,
    },
    /// The node metadata file did not parse.
    #[error("node metadata file {path}: {reason}")]
    BadNodeMeta {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl From<StoreError> for std::io::Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Io { source, .. } => source,
            other => std::io::Error::other(other),
        }
    }
}

/// Encodes with postcard.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encoding of in-memory values cannot fail")
}

/// Decodes with postcard, naming `what` on failure.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}
