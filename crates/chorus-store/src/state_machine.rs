//! The state machine of one shard: [`ShardState`] in memory, persisted as snapshot files.
//!
//! openraft restores it on start by installing the last snapshot and re-applying the
//! committed log after it (`save_committed` makes that log known). Readers of history go
//! through a [`ShardReader`], which shares the state behind a lock that is never held
//! across an `.await`.

use crate::engine::LogEngine;
use crate::error::{StoreError, decode, encode};
use crate::feed::{AppliedEvent, AppliedNotice, EventFeed, FeedItem};
use crate::snapshot_pace::SnapshotPace;
use crate::types::{ShardResponse, TypeConfig};
use chorus_core::{
    AppliedOutput, ApplyContext, ChannelName, HistoryLimits, HistoryPage, ShardId, ShardState,
};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// A snapshot file is written and synced this many bytes at a time.
const SNAPSHOT_SYNC_BYTES: usize = 256 * 1024;

/// What is applied, shared with readers.
#[derive(Debug, Default)]
struct Applied {
    state: ShardState,
    last_applied: Option<LogIdOf<TypeConfig>>,
    last_membership: StoredMembershipOf<TypeConfig>,
}

/// A snapshot file: metadata plus the encoded [`ShardState`]. On disk, the postcard encoding
/// of the two in turn (the data as its length, then its bytes), put together from the pieces:
/// encoding the whole as one struct copied megabytes of state into a second buffer a byte at
/// a time (serde sees a `Vec<u8>` as a sequence), which was most of a snapshot's CPU.
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

impl SnapshotFile {
    /// What the file holds before the data: the metadata and the data's length.
    fn header(&self) -> Vec<u8> {
        encode(&(&self.meta, self.data.len() as u64))
    }

    /// Reads a file's bytes back (the data keeps the buffer, without its header).
    fn parse(mut bytes: Vec<u8>) -> Result<SnapshotFile, StoreError> {
        let what = "snapshot file";
        let (meta, len, header_len) = {
            let ((meta, len), rest) = postcard::take_from_bytes::<(SnapshotMetaOf<TypeConfig>, u64)>(&bytes)
                .map_err(|source| StoreError::Decode { what, source })?;
            if (rest.len() as u64) < len {
                return Err(StoreError::Decode {
                    what,
                    source: postcard::Error::DeserializeUnexpectedEnd,
                });
            }
            (meta, len as usize, bytes.len() - rest.len())
        };
        bytes.truncate(header_len + len);
        bytes.drain(..header_len);
        Ok(SnapshotFile { meta, data: bytes })
    }
}

/// Encodes a state as a snapshot holds it, into a buffer of exactly its size: grown by
/// doubling, the copies and the fresh pages they touched cost more than the encoding itself
/// (`make bench-core`, "snapshot").
pub fn encode_state(state: &ShardState) -> Vec<u8> {
    let size = postcard::experimental::serialized_size(state)
        .expect("postcard encoding of in-memory values cannot fail");
    let mut buf = vec![0; size];
    let used = postcard::to_slice(state, &mut buf)
        .expect("postcard encoding of in-memory values cannot fail")
        .len();
    debug_assert_eq!(used, size);
    buf
}

struct Shared {
    shard: ShardId,
    applied: RwLock<Applied>,
    snapshot_path: PathBuf,
    /// Serializes snapshot file writes (a build and an install may race) and remembers the
    /// last log index of the file on disk (`None` inside: no file; outer `None`: not read yet).
    snapshot_write: std::sync::Mutex<Option<Option<u64>>>,
    /// Where applied events are reported.
    feed: EventFeed,
    /// The node's log, purged up to an installed snapshot at once (see `install_snapshot`).
    log: LogEngine,
    /// What was applied since the last snapshot, against its size (`crate::snapshot_pace`).
    pace: SnapshotPace,
}

/// The openraft state machine of one shard. Cloning shares it.
#[derive(Clone)]
pub struct ShardStateMachine {
    shared: Arc<Shared>,
}

/// A read-only view of a shard's applied state, for serving history.
#[derive(Clone)]
pub struct ShardReader {
    shared: Arc<Shared>,
}

impl ShardReader {
    /// Events of `channel` after `since`, at most `limit`.
    pub fn history(&self, channel: &ChannelName, since: u64, limit: usize) -> HistoryPage {
        self.shared
            .applied
            .read()
            .expect("state lock poisoned")
            .state
            .history(channel, since, limit)
    }

    /// The index of the last applied entry (0 when none).
    pub fn applied_index(&self) -> u64 {
        let applied = self.shared.applied.read().expect("state lock poisoned");
        applied.last_applied.as_ref().map_or(0, |id| id.index)
    }

    /// The replicated cluster id (recorded in shard 0).
    pub fn cluster_id(&self) -> Option<String> {
        let applied = self.shared.applied.read().expect("state lock poisoned");
        applied.state.cluster_id().map(str::to_string)
    }

    /// The replicated history limits.
    pub fn limits(&self) -> HistoryLimits {
        self.shared
            .applied
            .read()
            .expect("state lock poisoned")
            .state
            .limits()
    }

    /// Runs `read` on the applied state (under its read lock: keep it short).
    pub fn with_state<T>(&self, read: impl FnOnce(&ShardState) -> T) -> T {
        read(&self.shared.applied.read().expect("state lock poisoned").state)
    }

    /// The shard read.
    pub fn shard(&self) -> ShardId {
        self.shared.shard
    }

    /// Bytes applied since the last snapshot, and that snapshot's size
    /// (`crate::snapshot_pace`).
    pub fn snapshot_pace(&self) -> (u64, u64) {
        self.shared.pace.since_last()
    }
}

impl ShardStateMachine {
    pub(crate) fn new(
        shard: ShardId,
        limits: HistoryLimits,
        snapshot_dir: PathBuf,
        feed: EventFeed,
        log: LogEngine,
    ) -> Self {
        ShardStateMachine {
            shared: Arc::new(Shared {
                shard,
                applied: RwLock::new(Applied {
                    state: ShardState::new(limits),
                    ..Default::default()
                }),
                snapshot_path: snapshot_dir.join(format!("shard-{}.snap", shard.0)),
                snapshot_write: std::sync::Mutex::new(None),
                feed,
                log,
                pace: SnapshotPace::default(),
            }),
        }
    }

    /// A reader sharing this state machine's state.
    pub fn reader(&self) -> ShardReader {
        ShardReader {
            shared: self.shared.clone(),
        }
    }

    fn read_snapshot_file(&self) -> Result<Option<SnapshotFile>, StoreError> {
        match std::fs::read(&self.shared.snapshot_path) {
            Ok(bytes) => Ok(Some(SnapshotFile::parse(bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                action: "reading snapshot",
                path: self.shared.snapshot_path.clone(),
                source,
            }),
        }
    }

    /// Writes the snapshot durably: temp file, fsync, rename, fsync of the directory. Says
    /// whether it did: a snapshot not newer than the file on disk is not written.
    fn write_snapshot_file(&self, file: &SnapshotFile) -> Result<bool, StoreError> {
        let mut on_disk = self.shared.snapshot_write.lock().expect("snapshot lock poisoned");
        if on_disk.is_none() {
            let existing = self.read_snapshot_file()?;
            *on_disk = Some(existing.and_then(|f| f.meta.last_log_id.map(|l| l.index)));
        }
        let new_index = file.meta.last_log_id.map(|l| l.index);
        if let Some(Some(existing)) = *on_disk
            && new_index <= Some(existing)
        {
            // A build that started before a newer snapshot was installed: keep the newer one,
            // the log behind it may already be purged.
            tracing::debug!(?new_index, existing, "not replacing a newer snapshot file");
            return Ok(false);
        }
        let path = &self.shared.snapshot_path;
        let tmp = path.with_extension("snap.tmp");
        let io = |action, source| StoreError::Io {
            action,
            path: tmp.clone(),
            source,
        };
        // Readable by this user only: a snapshot holds every retained message of the shard.
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
        }
        .map_err(|e| io("creating snapshot", e))?;
        // Synced a piece at a time: the Raft log's fsyncs share the disk, and one that comes
        // while megabytes of snapshot are being written back waits for all of them.
        out.write_all(&file.header())
            .map_err(|e| io("writing snapshot", e))?;
        for piece in file.data.chunks(SNAPSHOT_SYNC_BYTES) {
            out.write_all(piece).map_err(|e| io("writing snapshot", e))?;
            out.sync_data().map_err(|e| io("fsyncing snapshot", e))?;
        }
        out.sync_all().map_err(|e| io("fsyncing snapshot", e))?;
        drop(out);
        std::fs::rename(&tmp, path).map_err(|e| io("renaming snapshot", e))?;
        *on_disk = Some(new_index);
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("fsyncing snapshot directory", e))?;
        }
        Ok(true)
    }
}

/// Decodes a snapshot's state, also in the layouts of builds before quotas and before
/// revocations (each ends where the next build's new fields begin).
fn decode_state(bytes: &[u8]) -> Result<ShardState, StoreError> {
    decode::<ShardState>("snapshot state", bytes)
        .or_else(|error| {
            decode::<chorus_core::ShardStateWithoutQuotas>("snapshot state", bytes)
                .map(ShardState::from)
                .map_err(|_| error)
        })
        .or_else(|error| {
            decode::<chorus_core::ShardStateWithoutRevocations>("snapshot state", bytes)
                .map(ShardState::from)
                .map_err(|_| error)
        })
}

impl ShardStateMachine {
    fn report_applied(&self, outputs: Vec<AppliedOutput>) {
        let shard = self.shared.shard;
        for output in outputs {
            self.shared.feed.send(match output {
                AppliedOutput::Event {
                    channel,
                    epoch,
                    message,
                } => FeedItem::Event(AppliedEvent {
                    shard,
                    channel,
                    epoch,
                    message,
                }),
                AppliedOutput::Notice {
                    channel,
                    event_type,
                    data,
                    publisher,
                    time_ms,
                } => FeedItem::Notice(AppliedNotice {
                    channel,
                    event_type,
                    data,
                    publisher,
                    time_ms,
                }),
                AppliedOutput::Revoked(target) => FeedItem::Revoked(target),
            });
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        // Copy under the lock (apply waits only for the copy); encode and write outside it.
        let started = std::time::Instant::now();
        let (meta, state, applied_at) = {
            let applied = self.shared.applied.read().expect("state lock poisoned");
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: applied.last_applied,
                last_membership: applied.last_membership.clone(),
            };
            (meta, applied.state.clone(), self.shared.pace.applied_so_far())
        };
        let copied = started.elapsed();
        let this = self.clone();
        let file = tokio::task::spawn_blocking(move || {
            let file = SnapshotFile {
                meta,
                data: encode_state(&state),
            };
            let encoded = started.elapsed();
            drop(state);
            this.write_snapshot_file(&file)
                .map(|written| (file, written, encoded))
        })
        .await
        .map_err(io::Error::other)??;
        let (file, written, encoded) = file;
        tracing::info!(
            shard = self.shared.shard.0,
            index = file.meta.last_log_id.map(|l| l.index),
            bytes = file.data.len(),
            copy_ms = copied.as_millis() as u64,
            encode_ms = (encoded - copied).as_millis() as u64,
            write_ms = (started.elapsed() - encoded).as_millis() as u64,
            written,
            "snapshot built"
        );
        // Not written: a newer snapshot was installed meanwhile, and the pace counts from it.
        if written {
            self.shared.pace.snapshot_taken(applied_at, file.data.len());
        }
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta: file.meta,
            snapshot: file.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let applied = self.shared.applied.read().expect("state lock poisoned");
        Ok((applied.last_applied, applied.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let response = {
                let mut applied = self.shared.applied.write().expect("state lock poisoned");
                applied.last_applied = Some(entry.log_id);
                match &entry.payload {
                    EntryPayload::Blank => ShardResponse::default(),
                    EntryPayload::Normal(request) => {
                        let ctx = ApplyContext {
                            log_index: entry.log_id.index,
                        };
                        let mut outputs = Vec::new();
                        let results = applied
                            .state
                            .apply_batch_with_output(ctx, &request.0, &mut outputs);
                        for command in request.0.iter() {
                            self.shared.pace.applied(command.payload_bytes());
                        }
                        // Reported while the state lock is held, so that a reader of the
                        // state and a receiver of the feed agree on what came first.
                        self.report_applied(outputs);
                        ShardResponse(results)
                    }
                    EntryPayload::Membership(membership) => {
                        applied.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        ShardResponse::default()
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let state = decode_state(&snapshot).map_err(io::Error::from)?;
        let snapshot_bytes = snapshot.len();
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot,
        };
        let this = self.clone();
        let received = tokio::task::spawn_blocking(move || this.write_snapshot_file(&file))
            .await
            .map_err(io::Error::other)??;
        // openraft purges the log up to a received snapshot too, but may do it after appending
        // the entries that follow the snapshot: the log would then have a hole between its old
        // entries and the new ones. Purging here, once the snapshot is on disk and before this
        // install is answered (the leader sends what follows only after the answer), keeps
        // the log consecutive. Not at start, when openraft restores the snapshot already on
        // disk: the log after it is then still to be re-applied.
        if received && let Some(last) = meta.last_log_id {
            self.shared.log.purge(self.shared.shard.0, last)?;
        }
        let mut applied = self.shared.applied.write().expect("state lock poisoned");
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.last_membership = meta.last_membership.clone();
        self.shared
            .pace
            .snapshot_taken(self.shared.pace.applied_so_far(), snapshot_bytes);
        self.shared
            .feed
            .send(FeedItem::SnapshotInstalled(self.shared.shard));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let this = self.clone();
        let file = tokio::task::spawn_blocking(move || this.read_snapshot_file())
            .await
            .map_err(io::Error::other)??;
        Ok(file.map(|file| SnapshotOf::<TypeConfig, Vec<u8>> {
            meta: file.meta,
            snapshot: file.data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::{ApplyContext, Command, PublishCommand};

    #[test]
    fn snapshots_of_the_layouts_before_quotas_and_before_revocations_still_load() {
        let mut state = ShardState::new(HistoryLimits::default());
        let channel = ChannelName::new("chat.room").unwrap();
        state.apply(
            ApplyContext { log_index: 1 },
            &Command::Publish(PublishCommand {
                channel: channel.clone(),
                data: "{\"n\":1}".into(),
                event_type: None,
                publisher: "alice".into(),
                idempotency_key: None,
                time_ms: 1_000,
            }),
        );
        assert_eq!(state.history_bytes().of_channel(&channel), 7);
        let bytes = encode(&state);
        // Each older layout is the newer one without its trailing fields: the quotas and the
        // byte counts, then the (empty) revocations, two empty maps of one length byte each.
        let quota_fields = encode(&(state.quotas(), state.history_bytes())).len();
        let before_quotas = &bytes[..bytes.len() - quota_fields];
        assert_eq!(&before_quotas[before_quotas.len() - 2..], &[0, 0]);
        let before_revocations = &before_quotas[..before_quotas.len() - 2];
        for old_layout in [before_quotas, before_revocations] {
            assert!(decode::<ShardState>("snapshot state", old_layout).is_err());
            let loaded = decode_state(old_layout).unwrap();
            assert_eq!(loaded, state, "the byte counts are counted again on load");
        }
        assert_eq!(decode_state(&bytes).unwrap(), state);
    }

    /// Files written by earlier builds (one struct encoded whole) read back, and new files have
    /// the same bytes; a file cut short is refused.
    #[test]
    fn snapshot_files_keep_the_layout_of_one_encoded_struct() {
        #[derive(serde::Serialize)]
        struct Whole<'a> {
            meta: &'a SnapshotMetaOf<TypeConfig>,
            data: &'a Vec<u8>,
        }
        let mut state = ShardState::new(HistoryLimits::default());
        for i in 1..=300u64 {
            state.apply(
                ApplyContext { log_index: i },
                &Command::Publish(PublishCommand {
                    channel: ChannelName::new(format!("chat.room-{}", i % 3)).unwrap(),
                    data: format!("{{\"n\":{i}}}").into(),
                    event_type: None,
                    publisher: "alice".into(),
                    idempotency_key: None,
                    time_ms: 1_000 + i,
                }),
            );
        }
        let data = encode_state(&state);
        assert_eq!(data, encode(&state));
        let file = SnapshotFile {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: Some(openraft::LogId::new(
                    openraft::vote::leader_id_adv::LeaderId { term: 3, node_id: 1 },
                    300,
                )),
                ..Default::default()
            },
            data,
        };
        let whole = encode(&Whole {
            meta: &file.meta,
            data: &file.data,
        });
        assert_eq!(whole, [file.header(), file.data.clone()].concat());
        let read = SnapshotFile::parse(whole.clone()).unwrap();
        assert_eq!(read.meta, file.meta);
        assert_eq!(decode_state(&read.data).unwrap(), state);
        assert!(matches!(
            SnapshotFile::parse(whole[..whole.len() - 1].to_vec()),
            Err(StoreError::Decode { .. })
        ));
    }
}
