//! The node's sled database and how it is made durable.
//!
//! The Raft core keeps its records in trees of this database (`consensus::disk`) and
//! its log in a file of its own (`consensus::wal`). [`Storage::sync_to_disk`] makes
//! everything written to the database so far durable: sled's flush, then `fdatasync`
//! of the files sled wrote (see [`DiskSync`]). The Raft driver calls it once per round,
//! never per write.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled reported an error.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
}

/// Result alias for storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// Trees the old core (`cluster.consensus = false`, removed) kept its accounts, inboxes
/// and groups in.
const OLD_CORE_TREES: [&str; 3] = ["accounts", "inbox", "groups"];

/// A handle to the node's database; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    /// The files sled writes, for the `fdatasync` after its flush.
    disk: Arc<DiskSync>,
}

/// The files sled 0.34 writes, kept open so that [`Storage::sync_to_disk`] can make them
/// durable.
///
/// sled's `flush()` writes with `pwrite` and ends with `sync_file_range`, which neither
/// empties the device's write cache nor commits a grown file's size: its writes survive
/// a crash of the process, not a power cut. What each file needs (read in sled 0.34.7):
/// - `db`, the log holding every page: one `fdatasync` per sync. It also commits the
///   file's new size, so a growing log needs no directory sync.
/// - `blobs/LSN`, a page fragment too big for the log (over a quarter of a 512 KiB
///   segment, about 128 KiB: one large value, or a leaf of 17 values of 8 KiB). sled
///   creates each with `create_new` and never syncs it, so each new one gets an
///   `fdatasync`, and `blobs/` an `fsync` for the new names.
/// - `conf` (written without a sync) and `snap.*` (synced, but renamed without a
///   directory sync) are written only while sled opens: [`DiskSync::open`] syncs them
///   and their folder once, before anything can be acknowledged.
struct DiskSync {
    db: File,
    blobs: PathBuf,
    /// The blob files already synced; held for the whole sync, so that a concurrent
    /// caller cannot return before a blob the other is still syncing is durable.
    synced_blobs: Mutex<HashSet<OsString>>,
    /// Set by the first failed `fsync` or `fdatasync`. After one fails, Linux may drop
    /// the dirty pages it could not write and report the next as a success, so no later
    /// sync may claim durability.
    failed: AtomicBool,
    /// Syncs completed.
    syncs: AtomicU64,
    /// Blob files synced.
    blob_syncs: AtomicU64,
}

impl DiskSync {
    /// Opens the files of the database in `dir` (after sled has opened it) and makes
    /// durable what sled wrote while opening.
    fn open(dir: &Path) -> std::io::Result<Self> {
        File::open(dir.join("conf"))?.sync_all()?;
        // The names of `db`, `conf`, `blobs/` and the snapshot, and the folder's own.
        File::open(dir)?.sync_all()?;
        let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
        Ok(Self {
            db: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::default(),
            failed: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            blob_syncs: AtomicU64::new(0),
        })
    }

    /// Flushes `db` with sled, then syncs the files it wrote.
    fn sync(&self, db: &sled::Db) -> sled::Result<()> {
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|e| e.into_inner());
        if self.failed.load(Ordering::Relaxed) {
            return Err(sync_failed(std::io::Error::other("an earlier sync failed")));
        }
        // Blobs are listed before the flush: sled writes a blob before the log record
        // that points at it, and the flush waits for every record reserved before it,
        // so each blob listed here is complete once the flush returns.
        let listed = self.list_blobs().map_err(sync_failed)?;
        db.flush()?;
        if let Err(e) = self.sync_files(&listed, &synced) {
            tracing::error!(error = %e, poisoned = self.failed.load(Ordering::Relaxed), "sync to disk failed");
            return Err(sync_failed(e));
        }
        *synced = listed;
        self.syncs.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Passes on the outcome of an `fsync` or `fdatasync`, remembering a failure for good.
    fn synced(&self, outcome: std::io::Result<()>) -> std::io::Result<()> {
        if outcome.is_err() {
            self.failed.store(true, Ordering::Relaxed);
        }
        outcome
    }

    fn list_blobs(&self) -> std::io::Result<HashSet<OsString>> {
        std::fs::read_dir(&self.blobs)?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect()
    }

    fn sync_files(&self, listed: &HashSet<OsString>, synced: &HashSet<OsString>) -> std::io::Result<()> {
        let mut new_blobs = false;
        for name in listed.difference(synced) {
            match File::open(self.blobs.join(name)) {
                Ok(blob) => {
                    self.synced(blob.sync_data())?;
                    self.blob_syncs.fetch_add(1, Ordering::Relaxed);
                }
                // sled removed it meanwhile (its page was rewritten): nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            new_blobs = true;
        }
        if new_blobs {
            self.synced(File::open(&self.blobs)?.sync_all())?;
        }
        self.synced(self.db.sync_data())
    }
}

fn sync_failed(e: std::io::Error) -> sled::Error {
    sled::Error::Io(std::io::Error::new(e.kind(), format!("cannot sync to disk: {e}")))
}

impl Storage {
    /// Opens (or creates) the database in `dir` with a page cache of `cache_bytes`, and
    /// makes durable whatever a crash left unsynced.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        // The Raft driver syncs after every round; sled's own periodic flusher would only
        // compete with it for the disk.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()?;
        let disk = DiskSync::open(dir).map_err(|e| StorageError::Sled(sync_failed(e)))?;
        let storage = Self {
            db,
            disk: Arc::new(disk),
        };
        // Whatever a crash left unsynced (the log's tail, blobs) is on disk before anything
        // new is acknowledged.
        storage.sync_to_disk()?;
        Ok(storage)
    }

    /// The database itself, for the stores that keep their trees in it and share its
    /// syncs (the consensus records).
    pub fn database(&self) -> sled::Db {
        self.db.clone()
    }

    /// Makes everything written to the database so far durable, blocking: sled's flush,
    /// then an `fdatasync` of the files it wrote (see [`DiskSync`]). One call covers every
    /// write before it, so call it once per round of writes, never per write. Anything
    /// else that writes to this database acknowledges only after it.
    pub fn sync_to_disk(&self) -> Result<()> {
        Ok(self.disk.sync(&self.db)?)
    }

    /// How many calls of [`Storage::sync_to_disk`] have completed.
    pub fn syncs_completed(&self) -> u64 {
        self.disk.syncs.load(Ordering::Acquire)
    }

    /// Whether the old core (`cluster.consensus = false`, removed) stored accounts,
    /// messages or groups here: this version would not see them.
    pub fn holds_old_core_data(&self) -> bool {
        OLD_CORE_TREES.iter().any(|name| {
            self.db.tree_names().iter().any(|t| t.as_ref() == name.as_bytes())
                && self.db.open_tree(name).is_ok_and(|t| !t.is_empty())
        })
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 8 << 20).unwrap();
        (dir, s)
    }

    /// sled releases its lock on the folder a moment after the last handle is dropped.
    fn reopen_when_released(dir: &Path) -> Storage {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Storage::open(dir, 8 << 20) {
                Ok(s) => return s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("cannot reopen: {e}"),
            }
        }
    }

    #[test]
    fn synced_writes_survive_reopening_the_database() {
        let (dir, s) = open();
        s.database().open_tree("t").unwrap().insert(b"k", b"v").unwrap();
        let before = s.syncs_completed();
        s.sync_to_disk().unwrap();
        assert_eq!(s.syncs_completed(), before + 1, "one call, one sync");
        drop(s);
        let s = reopen_when_released(dir.path());
        let value = s.database().open_tree("t").unwrap().get(b"k").unwrap();
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_value_too_large_for_the_log_is_synced_in_its_own_blob_file() {
        let (dir, s) = open();
        s.database()
            .open_tree("t")
            .unwrap()
            .insert(b"big", vec![7u8; 256 << 10])
            .unwrap();
        s.sync_to_disk().unwrap();
        let blobs: HashSet<OsString> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "sled kept a 256 KiB value in its log");
        assert_eq!(
            s.disk.blob_syncs.load(Ordering::Relaxed),
            blobs.len() as u64,
            "each blob file is synced once"
        );
        assert_eq!(*s.disk.synced_blobs.lock().unwrap(), blobs);
        // Blobs already synced are not synced again.
        s.sync_to_disk().unwrap();
        assert_eq!(s.disk.blob_syncs.load(Ordering::Relaxed), blobs.len() as u64);
    }

    #[test]
    fn data_of_the_old_core_is_recognised_and_empty_trees_are_not() {
        let (_dir, s) = open();
        assert!(!s.holds_old_core_data(), "a new database");
        s.database().open_tree("inbox").unwrap();
        assert!(!s.holds_old_core_data(), "an empty tree of the old core");
        s.database()
            .open_tree("accounts")
            .unwrap()
            .insert(b"ann", b"x")
            .unwrap();
        assert!(s.holds_old_core_data());
    }
}
