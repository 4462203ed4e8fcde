//! The log engine's only way to the file system: a small seam, so that a seeded simulation
//! (of a torn power loss here, of a whole cluster later) can replace the real disk.
//!
//! [`StdDisk`] is the real one. [`SimDisk`] keeps files in memory with a durable copy that
//! only `sync` updates; [`SimDisk::crash`] drops what was not synced, and with a seed lets
//! part of it reach the "disk" torn, as `../shared/tools/lazyfs crash-torn` does.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A file opened through a [`Disk`].
pub trait DiskFile: Send + Sync {
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Fills `buf` from `offset`; fails when the file is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The file's length.
    fn size(&self) -> io::Result<u64>;
    /// Makes the file's data (and its length) durable: `fdatasync`.
    fn sync(&self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// A file system.
pub trait Disk: Send + Sync + 'static {
    /// Opens `path` for reading and writing, creating it when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>>;
    /// Renames a file.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes a directory's entries (created, renamed and removed files) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdDisk;

struct StdFile(File);

impl DiskFile for StdFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Disk for StdDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        // Readable by this user only: the log holds every message.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }
}

const PAGE: usize = 4096;
const SECTOR: usize = 512;

#[derive(Default, Clone)]
struct SimContent {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Default)]
struct SimFs {
    files: BTreeMap<PathBuf, Arc<Mutex<SimContent>>>,
    dirs: std::collections::BTreeSet<PathBuf>,
}

/// An in-memory disk with a durable copy per file, for seeded power-loss tests. Directory
/// operations are durable at once (as on lazyfs).
#[derive(Clone, Default)]
pub struct SimDisk {
    fs: Arc<Mutex<SimFs>>,
    counters: Arc<SimCounters>,
}

#[derive(Default)]
struct SimCounters {
    syncs: std::sync::atomic::AtomicU64,
    /// Power is going: writes still land in the page cache, syncs fail.
    power_cut: std::sync::atomic::AtomicBool,
    /// Syncs wait while this is set (a slow disk, held still by a test).
    held: Mutex<bool>,
    released: std::sync::Condvar,
}

struct SimFile(Arc<Mutex<SimContent>>, Arc<SimCounters>);

impl DiskFile for SimFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut c = self.0.lock().expect("sim lock");
        let end = offset as usize + buf.len();
        if c.current.len() < end {
            c.current.resize(end, 0);
        }
        c.current[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let c = self.0.lock().expect("sim lock");
        let end = offset as usize + buf.len();
        if end > c.current.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&c.current[offset as usize..end]);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.lock().expect("sim lock").current.len() as u64)
    }

    fn sync(&self) -> io::Result<()> {
        let mut held = self.1.held.lock().expect("sim lock");
        while *held {
            held = self.1.released.wait(held).expect("sim lock");
        }
        drop(held);
        if self.1.power_cut.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("simulated power loss: the sync never completes"));
        }
        let mut c = self.0.lock().expect("sim lock");
        c.durable = c.current.clone();
        self.1.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.lock().expect("sim lock").current.resize(len as usize, 0);
        Ok(())
    }
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// How many file syncs were made.
    pub fn syncs(&self) -> u64 {
        self.counters.syncs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes syncs wait until [`SimDisk::release_syncs`] (a disk busy for a while).
    pub fn hold_syncs(&self) {
        *self.counters.held.lock().expect("sim lock") = true;
    }

    /// Lets waiting and later syncs complete.
    pub fn release_syncs(&self) {
        *self.counters.held.lock().expect("sim lock") = false;
        self.counters.released.notify_all();
    }

    /// The power starts to fail: writes still reach the page cache, but no sync completes
    /// (they fail), until [`SimDisk::crash`].
    pub fn cut_power(&self) {
        self.counters
            .power_cut
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The process dies (SIGKILL) but the machine stays up: the operating system keeps its
    /// page cache, so unsynced writes stay readable to the next process, and are lost only if
    /// the power fails before something syncs them. Syncs work again.
    pub fn process_crash(&self) {
        self.counters
            .power_cut
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.release_syncs();
    }

    /// A power loss. Without a seed every unsynced write is lost. With one, as with lazyfs's
    /// `crash-torn`: about half of each file's unsynced pages reach the disk, a quarter of
    /// those only their first 512-byte sector, and the rest is lost.
    pub fn crash(&self, torn_seed: Option<u64>) {
        self.counters
            .power_cut
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let fs = self.fs.lock().expect("sim lock");
        let mut rng = torn_seed.map(SplitMix);
        for file in fs.files.values() {
            let mut c = file.lock().expect("sim lock");
            let mut result = c.durable.clone();
            if let Some(rng) = rng.as_mut() {
                let pages = c.current.len().max(c.durable.len()).div_ceil(PAGE);
                for page in 0..pages {
                    let range = page * PAGE..((page + 1) * PAGE).min(c.current.len());
                    if range.is_empty() {
                        continue;
                    }
                    let old = c.durable.get(range.clone());
                    if old == Some(&c.current[range.clone()]) {
                        continue;
                    }
                    let roll = rng.next() % 8;
                    let reach = match roll {
                        0..=2 => range.len(),         // reached whole
                        3 => SECTOR.min(range.len()), // torn: first sector only
                        _ => 0,                       // lost
                    };
                    if reach > 0 {
                        let end = range.start + reach;
                        if result.len() < end {
                            result.resize(end, 0);
                        }
                        result[range.start..end].copy_from_slice(&c.current[range.start..end]);
                    }
                }
            }
            c.current = result.clone();
            c.durable = result;
        }
    }

    /// Whether any file has writes that are not synced.
    pub fn has_unsynced(&self) -> bool {
        let fs = self.fs.lock().expect("sim lock");
        fs.files.values().any(|f| {
            let c = f.lock().expect("sim lock");
            c.current != c.durable
        })
    }

    /// Flips bits of the durable and current content of `path` at `offset`.
    pub fn corrupt(&self, path: &Path, offset: usize) {
        let fs = self.fs.lock().expect("sim lock");
        let file = fs.files.get(path).expect("no such sim file");
        let mut c = file.lock().expect("sim lock");
        c.current[offset] ^= 0x5a;
        c.durable[offset] ^= 0x5a;
    }

    /// The files on this disk.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.fs.lock().expect("sim lock").files.keys().cloned().collect()
    }
}

impl Disk for SimDisk {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn DiskFile>> {
        let mut fs = self.fs.lock().expect("sim lock");
        let file = match fs.files.get(path) {
            Some(file) => file.clone(),
            None if create => {
                let file = Arc::new(Mutex::new(SimContent::default()));
                fs.files.insert(path.to_path_buf(), file.clone());
                file
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Arc::new(SimFile(file, self.counters.clone())))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock().expect("sim lock");
        let file = fs.files.remove(from).ok_or(io::ErrorKind::NotFound)?;
        fs.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock().expect("sim lock");
        fs.files
            .remove(path)
            .map(|_| ())
            .ok_or(io::ErrorKind::NotFound.into())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.fs.lock().expect("sim lock").dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let fs = self.fs.lock().expect("sim lock");
        Ok(fs
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }
}

/// A small seeded generator (splitmix64): deterministic torn crashes without a dependency.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
