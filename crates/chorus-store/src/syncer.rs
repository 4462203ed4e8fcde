//! Group commit: one thread makes sled's writes durable for every shard at once.
//!
//! ```text
//!  shard 0 append ─┐
//!  shard 5 append ─┼─► pending waiters ─► [sync thread] flush() + fsync(db) ─► complete all
//!  save_vote      ─┘
//! ```
//!
//! sled 0.34's `flush()` writes with `sync_file_range`, which is not durable (and never
//! reaches FUSE); the fsync of the `db` file after it is what makes writes survive a power
//! loss. While one sync runs, new waiters queue up and share the next one.

use crate::error::StoreError;
use crate::types::TypeConfig;
use openraft::storage::IOFlushed;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Metrics of the syncer.
#[derive(Clone)]
pub struct StoreMetrics {
    /// fsyncs done.
    pub fsyncs: Counter,
    /// Seconds per flush + fsync.
    pub fsync_seconds: Histogram,
    /// Waiters (appends and votes) completed by one fsync.
    pub entries_per_fsync: Histogram,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            fsyncs: Counter::default(),
            fsync_seconds: Histogram::new([0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5]),
            entries_per_fsync: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        }
    }
}

impl StoreMetrics {
    /// Registers the metrics under `chorus_store_*`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "chorus_store_fsyncs",
            "fsyncs of the sled db file",
            self.fsyncs.clone(),
        );
        registry.register(
            "chorus_store_fsync_seconds",
            "time of one sled flush plus fsync",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "chorus_store_writes_per_fsync",
            "log appends and votes made durable by one fsync (group commit)",
            self.entries_per_fsync.clone(),
        );
    }
}

enum Waiter {
    Log(IOFlushed<TypeConfig>),
    Notify(tokio::sync::oneshot::Sender<Result<(), String>>),
}

#[derive(Default)]
struct Queue {
    waiters: Vec<Waiter>,
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// Handle to the group-commit thread. Cloning is cheap.
#[derive(Clone)]
pub struct Syncer {
    shared: Arc<Shared>,
    metrics: StoreMetrics,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Syncer {
    /// Starts the sync thread for `db`, whose directory is `dir`. With `skip_fsync` (a
    /// test-only switch that breaks durability on purpose) it only calls sled's `flush()`.
    pub fn start(
        db: sled::Db,
        dir: PathBuf,
        metrics: StoreMetrics,
        skip_fsync: bool,
    ) -> Result<Syncer, StoreError> {
        let db_file_path = dir.join("db");
        let db_file = File::open(&db_file_path).map_err(|source| StoreError::Io {
            action: "opening sled's db file for fsync",
            path: db_file_path.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let thread_shared = shared.clone();
        let thread_metrics = metrics.clone();
        let blobs = BlobSyncer::new(dir.join("blobs"));
        let thread = std::thread::Builder::new()
            .name("chorus-syncer".into())
            .spawn(move || sync_loop(thread_shared, db, db_file, blobs, thread_metrics, skip_fsync))
            .map_err(|source| StoreError::Io {
                action: "starting the syncer thread",
                path: dir,
                source,
            })?;
        Ok(Syncer {
            shared,
            metrics,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// The syncer's metrics.
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    fn push(&self, waiter: Waiter) -> Result<(), Waiter> {
        let mut queue = self.shared.queue.lock().expect("syncer lock poisoned");
        if queue.stopped {
            return Err(waiter);
        }
        queue.waiters.push(waiter);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Completes `callback` once everything written to sled so far is on disk.
    pub fn flush_then(&self, callback: IOFlushed<TypeConfig>) {
        if let Err(Waiter::Log(callback)) = self.push(Waiter::Log(callback)) {
            callback.io_completed(Err(StoreError::SyncerStopped.into()));
        }
    }

    /// Waits until everything written to sled so far is on disk.
    pub async fn flush(&self) -> Result<(), std::io::Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.push(Waiter::Notify(tx)).is_err() {
            return Err(StoreError::SyncerStopped.into());
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(std::io::Error::other(message)),
            Err(_) => Err(StoreError::SyncerStopped.into()),
        }
    }

    /// Stops the thread after it has completed what is queued, and waits for it to exit
    /// (it holds the database open until then).
    pub fn stop(&self) {
        self.shared.queue.lock().expect("syncer lock poisoned").stopped = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().expect("syncer lock poisoned").take() {
            let _ = thread.join();
        }
    }
}

/// sled writes values too large for its log segments to files in `blobs/` and never fsyncs
/// them; a power loss then loses acknowledged appends (the lazyfs test with 60 KiB payloads
/// showed it). After each flush, every blob file not yet synced is fsynced, then the folder.
struct BlobSyncer {
    dir: PathBuf,
    /// Blob files fsynced, with the length they had when fsynced: sled writes a blob on the
    /// inserting thread while this one may list it half written, so a file whose length
    /// changed is fsynced again.
    synced: std::collections::HashMap<std::ffi::OsString, u64>,
}

impl BlobSyncer {
    fn new(dir: PathBuf) -> Self {
        BlobSyncer {
            dir,
            synced: Default::default(),
        }
    }

    fn sync_new(&mut self) -> Result<(), String> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("listing {}: {e}", self.dir.display())),
        };
        let mut present = std::collections::HashMap::new();
        let mut synced_any = false;
        for entry in entries {
            let entry = entry.map_err(|e| format!("listing {}: {e}", self.dir.display()))?;
            let name = entry.file_name();
            let file = match File::open(entry.path()) {
                Ok(file) => file,
                // Removed by sled's garbage collection meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("opening blob {name:?}: {e}")),
            };
            // A blob that sled removes while we hold it open needs no fsync. Some file
            // systems (FUSE, NFS) then fail fstat/fsync on the open handle (ESTALE) instead
            // of serving the unlinked inode: skip it when its path is gone.
            let gone = || matches!(std::fs::symlink_metadata(entry.path()), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
            // The length read before the fsync: every byte up to it is covered by the fsync.
            let len = match file.metadata() {
                Ok(meta) => meta.len(),
                Err(_) if gone() => continue,
                Err(e) => return Err(format!("stat of blob {name:?}: {e}")),
            };
            if self.synced.get(&name) != Some(&len) {
                match file.sync_all() {
                    Ok(()) => synced_any = true,
                    Err(_) if gone() => continue,
                    Err(e) => return Err(format!("fsync of blob {name:?}: {e}")),
                }
            }
            present.insert(name, len);
        }
        if synced_any {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("fsync of {}: {e}", self.dir.display()))?;
        }
        self.synced = present;
        Ok(())
    }
}

fn sync_loop(
    shared: Arc<Shared>,
    db: sled::Db,
    db_file: File,
    mut blobs: BlobSyncer,
    metrics: StoreMetrics,
    skip_fsync: bool,
) {
    let mut failure: Option<String> = None;
    loop {
        let (waiters, stopped) = {
            let mut queue = shared.queue.lock().expect("syncer lock poisoned");
            while queue.waiters.is_empty() && !queue.stopped {
                queue = shared.wake.wait(queue).expect("syncer lock poisoned");
            }
            (std::mem::take(&mut queue.waiters), queue.stopped)
        };
        if !waiters.is_empty() {
            let started = Instant::now();
            // After one failure nothing is acknowledged again: a later fsync may succeed
            // although the earlier data was dropped by the kernel.
            let result = match &failure {
                Some(message) => Err(message.clone()),
                None => db
                    .flush()
                    .map_err(|e| format!("sled flush failed: {e}"))
                    .and_then(|_| {
                        if skip_fsync {
                            return Ok(());
                        }
                        blobs.sync_new()?;
                        db_file
                            .sync_all()
                            .map_err(|e| format!("fsync of sled's db file failed: {e}"))
                    }),
            };
            if let Err(message) = &result {
                failure = Some(message.clone());
            }
            metrics.fsyncs.inc();
            metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
            metrics.entries_per_fsync.observe(waiters.len() as f64);
            if let Err(message) = &result {
                tracing::error!(%message, "storage sync failed; acknowledging nothing");
            }
            for waiter in waiters {
                match waiter {
                    Waiter::Log(callback) => {
                        callback.io_completed(result.clone().map_err(std::io::Error::other))
                    }
                    Waiter::Notify(tx) => {
                        let _ = tx.send(result.clone());
                    }
                }
            }
        }
        if stopped {
            return;
        }
    }
}
