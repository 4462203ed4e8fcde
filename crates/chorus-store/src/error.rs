//! Storage errors.

use std::path::PathBuf;

/// What can go wrong opening or using a node's storage.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error.
    #[error("sled database error: {0}")]
    Sled(#[from] sled::Error),
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
    /// The background syncer stopped.
    #[error("the storage syncer has stopped")]
    SyncerStopped,
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
