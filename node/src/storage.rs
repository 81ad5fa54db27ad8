//! The node's sled database: typed reads, key layout, and the group-commit writer.
//!
//! Writes go through one committer thread: it applies every batch waiting in
//! its queue, makes them durable once ([`Storage::sync_to_disk`]: sled's flush,
//! then `fdatasync`), then runs each batch's completion. A caller acknowledges a
//! client only from that completion, so "acknowledged" always means "on disk"
//! while the cost of a sync is shared by many messages.
//!
//! Key layout (big-endian numbers, so ranges scan in order):
//! - `inbox`:  `scope(user)` ‖ kind ‖ ...  with kinds META, ENTRY ‖ seq, ORIGIN ‖ origin, GROUP ‖ group
//! - `groups`: `scope(group)` ‖ kind ‖ ... with kinds META, MEMBER ‖ user, MESSAGE ‖ seq, ORIGIN ‖ sender ‖ client id
//! - `accounts`: user → AccountRecord; `tokens`: `scope(user)` ‖ token → TokenRecord
//!
//! `scope(name)` is a length byte then the name, so no name's keys are a
//! prefix of another's.

use crate::partition::{Entity, PARTITIONS, Partition, has_bit, partition, to_bits};
use crate::replication::Replicator;
use chat_protocol::internal::{AccountRecord, GroupMessage, GroupRecord, InboxEntry, InboxMeta, TokenRecord};
use prost::Message;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// sled reported an error.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record under {0}")]
    Corrupt(String),
    /// The committer has stopped (the node is shutting down).
    #[error("storage is closed")]
    Closed,
    /// Durable here, but a replica of the partition did not confirm it: not acknowledged.
    #[error("not copied to a replica: {0}")]
    NotReplicated(String),
}

/// Result alias for storage operations.
pub type Result<T> = std::result::Result<T, StorageError>;

/// Kind bytes inside a scoped key.
pub mod kind {
    /// Inbox or group metadata.
    pub const META: u8 = 0;
    /// Inbox entry by seq / group member by name.
    pub const ENTRY: u8 = 1;
    /// Group member by name.
    pub const MEMBER: u8 = 1;
    /// Dedupe index.
    pub const ORIGIN: u8 = 2;
    /// Groups of a user (inbox tree).
    pub const GROUP: u8 = 3;
    /// Group log entry by seq.
    pub const MESSAGE: u8 = 4;
}

/// The trees a commit may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeId {
    /// Accounts.
    Accounts,
    /// Session tokens.
    Tokens,
    /// Inboxes.
    Inbox,
    /// Groups.
    Groups,
    /// Groups whose latest messages are not yet in every member's inbox.
    Fanout,
    /// Node metadata: the partitions held here, the known members.
    Meta,
}

impl TreeId {
    /// The wire number of a tree (handoff records).
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The tree with this wire number; the meta tree never travels.
    pub fn from_number(n: u32) -> Option<Self> {
        TREES.into_iter().find(|t| t.number() == n && *t != Self::Meta)
    }

    /// The partition a key of this tree belongs to.
    pub fn partition_of(self, key: &[u8]) -> Option<crate::partition::Partition> {
        self.owner_of(key).map(partition)
    }

    /// What the keys of this tree belong to: a user or a group, and how to read its name.
    fn owner_of(self, key: &[u8]) -> Option<Entity<'_>> {
        let scoped_name = || {
            let len = *key.first()? as usize;
            std::str::from_utf8(key.get(1..1 + len)?).ok()
        };
        match self {
            Self::Accounts => std::str::from_utf8(key).ok().map(Entity::User),
            Self::Tokens | Self::Inbox => scoped_name().map(Entity::User),
            Self::Groups => scoped_name().map(Entity::Group),
            Self::Fanout => std::str::from_utf8(key).ok().map(Entity::Group),
            Self::Meta => None,
        }
    }
}

/// Meta key: the bitmap of partitions this node holds.
const META_HELD: &[u8] = b"held";
/// Meta key: the cluster members this node knows, newline-separated.
const META_MEMBERS: &[u8] = b"members";
/// Meta key: nodes known to have left, newline-separated.
const META_LEFT: &[u8] = b"left";
/// Meta key: leaving nodes last seen still holding data, newline-separated.
const META_DEPARTING: &[u8] = b"departing";
/// Meta key: partitions handed off but not yet acknowledged, as `partition node` lines.
const META_GIVING: &[u8] = b"giving";

/// One stored record of a partition, as a handoff ships it.
pub type Record = (TreeId, Vec<u8>, Vec<u8>);

/// A length-prefixed name followed by a kind byte.
pub fn scoped(name: &str, kind: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 2 + 8);
    key.push(name.len() as u8);
    key.extend_from_slice(name.as_bytes());
    key.push(kind);
    key
}

/// `scoped(name, kind)` ‖ seq (big-endian).
pub fn seq_key(name: &str, kind: u8, seq: u64) -> Vec<u8> {
    let mut key = scoped(name, kind);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `scoped(name, kind)` ‖ suffix.
pub fn suffix_key(name: &str, kind: u8, suffix: &[u8]) -> Vec<u8> {
    let mut key = scoped(name, kind);
    key.extend_from_slice(suffix);
    key
}

/// The big-endian seq at the end of a key or value; 0 if it is too short (a corrupt
/// record, for example one shipped by a faulty peer, must not panic the node).
fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|start| key[start..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// What runs once a commit is durable (or failed).
pub type Completion = Box<dyn FnOnce(Result<()>) + Send>;

/// The writes of one commit, applied atomically per tree and made durable together.
#[derive(Debug, Default)]
pub struct Writes {
    ops: Vec<Op>,
}

/// One write: a key of a tree set to a value, or removed (None).
pub type Op = (TreeId, Vec<u8>, Option<Vec<u8>>);

impl Writes {
    /// Sets `key` to `value` in `tree`.
    pub fn put(&mut self, tree: TreeId, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((tree, key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    /// Removes `key` from `tree`.
    pub fn del(&mut self, tree: TreeId, key: impl AsRef<[u8]>) {
        self.ops.push((tree, key.as_ref().to_vec(), None));
    }

    /// How many puts and removals.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

struct Commit {
    writes: Writes,
    done: Completion,
}

const TREES: [TreeId; 6] = [
    TreeId::Accounts,
    TreeId::Tokens,
    TreeId::Inbox,
    TreeId::Groups,
    TreeId::Fanout,
    TreeId::Meta,
];

/// A handle to the node's database; cheap to clone.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    accounts: sled::Tree,
    tokens: sled::Tree,
    inbox: sled::Tree,
    groups: sled::Tree,
    fanout: sled::Tree,
    meta: sled::Tree,
    committer: mpsc::Sender<Commit>,
    /// Ships the writes of held partitions to their replicas, once set.
    replicator: Arc<OnceLock<Arc<Replicator>>>,
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
    /// Opens (or creates) the database in `dir` with a page cache of `cache_bytes`
    /// and starts the committer thread.
    pub fn open(dir: &Path, max_batch: usize, cache_bytes: u64) -> Result<Self> {
        // The committer flushes after every round; sled's own periodic flusher would only
        // compete with it for the disk.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()?;
        let disk = DiskSync::open(dir).map_err(|e| StorageError::Sled(sync_failed(e)))?;
        let (tx, rx) = mpsc::channel::<Commit>();
        let storage = Self {
            accounts: db.open_tree("accounts")?,
            tokens: db.open_tree("tokens")?,
            inbox: db.open_tree("inbox")?,
            groups: db.open_tree("groups")?,
            fanout: db.open_tree("fanout")?,
            meta: db.open_tree("meta")?,
            db,
            committer: tx,
            replicator: Arc::default(),
            disk: Arc::new(disk),
        };
        // Whatever a crash left unsynced (the log's tail, blobs) is on disk before anything
        // new is acknowledged.
        storage.sync_to_disk()?;
        let worker = storage.clone_trees();
        std::thread::Builder::new()
            .name("sled-committer".into())
            .spawn(move || worker.run_committer(rx, max_batch.max(1)))
            .map_err(|e| StorageError::Sled(sled::Error::Io(e)))?;
        Ok(storage)
    }

    /// A copy of the tree handles whose committer sender goes nowhere, for the committer thread
    /// itself (holding a real sender would keep its own channel open forever).
    fn clone_trees(&self) -> Self {
        let (dead, _) = mpsc::channel();
        Self {
            committer: dead,
            ..self.clone()
        }
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Accounts => &self.accounts,
            TreeId::Tokens => &self.tokens,
            TreeId::Inbox => &self.inbox,
            TreeId::Groups => &self.groups,
            TreeId::Fanout => &self.fanout,
            TreeId::Meta => &self.meta,
        }
    }

    fn run_committer(self, rx: mpsc::Receiver<Commit>, max_batch: usize) {
        let mut pending = Vec::with_capacity(max_batch);
        while let Ok(first) = rx.recv() {
            pending.push(first);
            while pending.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => pending.push(next),
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            // One sled batch per tree for the whole round: each tree's writes land
            // atomically, and sled's per-batch cost is paid once per round, not per message.
            let mut batches: [sled::Batch; TREES.len()] = Default::default();
            for commit in &mut pending {
                for (tree, key, value) in std::mem::take(&mut commit.writes.ops) {
                    let batch = &mut batches[tree as usize];
                    match value {
                        Some(v) => batch.insert(key, v),
                        None => batch.remove(key),
                    }
                }
            }
            let mut applied = Ok(());
            for (tree, batch) in TREES.iter().zip(batches) {
                if let Err(e) = self.tree(*tree).apply_batch(batch) {
                    applied = Err(e);
                    break;
                }
            }
            let applied_at = std::time::Instant::now();
            // Once per round, never per commit: the sync is what makes group commit pay.
            let flushed = applied.and_then(|()| self.disk.sync(&self.db));
            tracing::trace!(
                commits = pending.len(),
                apply_us = (applied_at - started).as_micros() as u64,
                flush_us = applied_at.elapsed().as_micros() as u64,
                "group commit"
            );
            for commit in pending.drain(..) {
                let outcome = flushed
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| StorageError::Sled(e.clone()));
                // A completion that panics must not take the committer (and so every
                // later write of the node) down with it.
                let done = commit.done;
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || done(outcome))).is_err() {
                    tracing::error!("a commit completion panicked");
                }
            }
        }
        tracing::debug!("committer stopped");
    }

    /// From now on, writes of the partitions `replicator` copies are also shipped to
    /// their replicas, and complete only once those have them too.
    pub fn set_replicator(&self, replicator: Arc<Replicator>) {
        let _ = self.replicator.set(replicator);
    }

    /// Queues writes to be applied and flushed; `done` runs once they are durable (here,
    /// and on every replica of their partitions). Commits are applied in submission
    /// order, so a later write to a key wins.
    pub fn commit(&self, writes: Writes, done: Completion) {
        match self.replicator.get() {
            Some(r) => {
                let committer = &self.committer;
                r.commit(writes.ops, done, move |ops, done| {
                    Self::commit_here(committer, Writes { ops }, done);
                });
            }
            None => Self::commit_here(&self.committer, writes, done),
        }
    }

    /// Writes to this node's database only: the replicas' own applying of shipped writes.
    pub fn commit_unreplicated(&self, writes: Writes, done: Completion) {
        Self::commit_here(&self.committer, writes, done);
    }

    fn commit_here(committer: &mpsc::Sender<Commit>, writes: Writes, done: Completion) {
        if let Err(mpsc::SendError(commit)) = committer.send(Commit { writes, done }) {
            (commit.done)(Err(StorageError::Closed));
        }
    }

    /// Like [`Storage::commit`], awaiting durability.
    pub async fn commit_wait(&self, writes: Writes) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.commit(
            writes,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Resolves once everything written before it is durable.
    pub async fn barrier(&self) -> Result<()> {
        self.commit_wait(Writes::default()).await
    }

    /// The database itself, for stores that keep their own trees in it and share its
    /// syncs (the consensus log and records).
    pub fn database(&self) -> sled::Db {
        self.db.clone()
    }

    /// Makes everything written to the database so far durable, blocking: sled's flush,
    /// then an `fdatasync` of the files it wrote (see [`DiskSync`]). One call covers every
    /// write before it, so call it once per round of writes, never per write. Anything
    /// else that writes to this database (a log store, say) acknowledges only after it.
    pub fn sync_to_disk(&self) -> Result<()> {
        Ok(self.disk.sync(&self.db)?)
    }

    /// How many calls of [`Storage::sync_to_disk`] (the committer's rounds included) have
    /// completed.
    pub fn syncs_completed(&self) -> u64 {
        self.disk.syncs.load(Ordering::Acquire)
    }

    /// Whether the old core (`cluster.consensus = false`) stored accounts, messages or
    /// groups here: the Raft core keeps its records elsewhere and would not see them.
    pub fn holds_old_core_data(&self) -> bool {
        !(self.accounts.is_empty() && self.inbox.is_empty() && self.groups.is_empty())
    }

    /// Syncs to disk; used at shutdown.
    pub fn flush(&self) -> Result<()> {
        self.sync_to_disk()
    }

    // ---- partitions --------------------------------------------------------

    /// The partitions held here, or None if this database has never recorded any
    /// (a new node).
    pub fn held_partitions(&self) -> Result<Option<Vec<bool>>> {
        Ok(self
            .meta
            .get(META_HELD)?
            .map(|bits| (0..PARTITIONS).map(|p| has_bit(&bits, p)).collect()))
    }

    /// Adds the write of `held` (one flag per partition) to `writes`.
    pub fn put_held(writes: &mut Writes, held: &[bool]) {
        writes.put(TreeId::Meta, META_HELD, to_bits(|p| held[p as usize]));
    }

    fn meta_lines(&self, key: &[u8]) -> Result<Vec<String>> {
        Ok(self
            .meta
            .get(key)?
            .map(|v| {
                String::from_utf8_lossy(&v)
                    .split('\n')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The cluster members recorded here.
    pub fn members(&self) -> Result<Vec<String>> {
        self.meta_lines(META_MEMBERS)
    }

    /// The nodes recorded as having left.
    pub fn left_nodes(&self) -> Result<Vec<String>> {
        self.meta_lines(META_LEFT)
    }

    /// Leaving nodes last seen still holding data.
    pub fn departing_nodes(&self) -> Result<Vec<String>> {
        self.meta_lines(META_DEPARTING)
    }

    /// Partitions handed off but not acknowledged, with the node they went to.
    pub fn giving(&self) -> Result<Vec<(Partition, String)>> {
        Ok(self
            .meta_lines(META_GIVING)?
            .iter()
            .filter_map(|line| {
                let (p, node) = line.split_once(' ')?;
                let p: Partition = p.parse().ok().filter(|p| *p < PARTITIONS)?;
                Some((p, node.to_owned()))
            })
            .collect())
    }

    /// Adds the writes of the member list, the departed nodes and the departing ones.
    pub fn put_members<'a>(
        writes: &mut Writes,
        members: impl IntoIterator<Item = &'a String>,
        left: impl IntoIterator<Item = &'a String>,
        departing: impl IntoIterator<Item = &'a String>,
    ) {
        let lines = |names: Vec<&'a String>| names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join("\n");
        writes.put(TreeId::Meta, META_MEMBERS, lines(members.into_iter().collect()));
        writes.put(TreeId::Meta, META_LEFT, lines(left.into_iter().collect()));
        writes.put(
            TreeId::Meta,
            META_DEPARTING,
            lines(departing.into_iter().collect()),
        );
    }

    /// Adds the write of the unacknowledged handoffs to `writes`.
    pub fn put_giving<'a>(
        writes: &mut Writes,
        giving: impl IntoIterator<Item = (&'a Partition, &'a String)>,
    ) {
        let lines: Vec<String> = giving.into_iter().map(|(p, n)| format!("{p} {n}")).collect();
        writes.put(TreeId::Meta, META_GIVING, lines.join("\n"));
    }

    /// Every record of the given partitions, in every data tree. A full scan: handoffs
    /// are rare, and one scan serves all the partitions moving to one node.
    pub fn export(&self, partitions: &[bool]) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        self.export_chunks(partitions, usize::MAX, |chunk| {
            out.extend(chunk);
            true
        })?;
        Ok(out)
    }

    /// Like [`Storage::export`], handed to `take` in chunks of about `chunk_bytes`, so
    /// that a large share never sits in memory at once. Stops early when `take` returns
    /// false. Blocking: run it on a blocking thread.
    pub fn export_chunks(
        &self,
        partitions: &[bool],
        chunk_bytes: usize,
        mut take: impl FnMut(Vec<Record>) -> bool,
    ) -> Result<()> {
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        for tree in TREES {
            for item in self.tree(tree).iter() {
                let (k, v) = item?;
                let Some(entity) = tree.owner_of(&k) else {
                    continue;
                };
                if partitions[partition(entity) as usize] {
                    bytes += k.len() + v.len() + 8;
                    chunk.push((tree, k.to_vec(), v.to_vec()));
                    if bytes >= chunk_bytes {
                        bytes = 0;
                        if !take(std::mem::take(&mut chunk)) {
                            return Ok(());
                        }
                    }
                }
            }
        }
        if !chunk.is_empty() {
            take(chunk);
        }
        Ok(())
    }

    /// Users of the given partitions whose oldest kept inbox entry is older than
    /// `cutoff_ms`. A scan of every inbox's cursors and first entry: for a periodic sweep.
    pub fn inboxes_older_than(&self, cutoff_ms: u64, partitions: &[bool]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.inbox.iter() {
            let (k, v) = item?;
            let Some(len) = k.first().map(|l| *l as usize) else {
                continue;
            };
            if k.len() != len + 2 || k[len + 1] != kind::META {
                continue;
            }
            let Ok(user) = std::str::from_utf8(&k[1..1 + len]) else {
                continue;
            };
            if !partitions[partition(Entity::User(user)) as usize] {
                continue;
            }
            let Ok(meta) = InboxMeta::decode(v.as_ref()) else {
                continue;
            };
            if meta.first_seq == 0 || meta.first_seq > meta.last_seq {
                continue;
            }
            if let Some(e) = self.inbox_entry(user, meta.first_seq)?
                && e.timestamp_ms < cutoff_ms
            {
                out.push(user.to_owned());
            }
        }
        Ok(out)
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    // ---- accounts and tokens ----------------------------------------------

    /// The account of `user`, if registered.
    pub fn account(&self, user: &str) -> Result<Option<AccountRecord>> {
        decode_opt(self.accounts.get(user.as_bytes())?, user)
    }

    /// Creates the account unless the name is taken; returns false if taken.
    /// Durable (and replicated) when this returns true.
    pub async fn create_account(&self, user: &str, record: &AccountRecord) -> Result<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.create_account_then(
            user,
            record,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Creates the account unless the name is taken: at once (a second create of the
    /// name sees it), durably and on the replicas when `done` gets true.
    pub fn create_account_then(
        &self,
        user: &str,
        record: &AccountRecord,
        done: Box<dyn FnOnce(Result<bool>) + Send>,
    ) {
        let value = record.encode_to_vec();
        match self
            .accounts
            .compare_and_swap(user.as_bytes(), None::<&[u8]>, Some(value.clone()))
        {
            Ok(Ok(())) => {
                // The same record again, through the committer: flushed, and shipped to
                // the partition's replicas like any other write.
                let mut w = Writes::default();
                w.put(TreeId::Accounts, user, value);
                self.commit(w, Box::new(move |r| done(r.map(|()| true))));
            }
            Ok(Err(_)) => done(Ok(false)),
            Err(e) => done(Err(e.into())),
        }
    }

    /// The write that stores (Some) or revokes (None) a token of `user`.
    pub fn token_write(user: &str, token: &str, record: Option<&TokenRecord>) -> Writes {
        let mut writes = Writes::default();
        let key = suffix_key(user, 0, token.as_bytes());
        match record {
            Some(r) => writes.put(TreeId::Tokens, key, r.encode_to_vec()),
            None => writes.del(TreeId::Tokens, key),
        }
        writes
    }

    /// Stores a session token of `user`; durable when this returns.
    pub async fn put_token(&self, user: &str, token: &str, record: &TokenRecord) -> Result<()> {
        self.commit_wait(Self::token_write(user, token, Some(record)))
            .await
    }

    /// The token record of `user`, if the token exists.
    pub fn token(&self, user: &str, token: &str) -> Result<Option<TokenRecord>> {
        decode_opt(self.tokens.get(suffix_key(user, 0, token.as_bytes()))?, user)
    }

    /// Removes a token of `user`.
    pub async fn revoke_token(&self, user: &str, token: &str) -> Result<()> {
        self.commit_wait(Self::token_write(user, token, None)).await
    }

    // ---- inboxes ------------------------------------------------------------

    /// The cursors of `user`'s inbox (all zero for a new inbox).
    pub fn inbox_meta(&self, user: &str) -> Result<InboxMeta> {
        Ok(decode_opt(self.inbox.get(scoped(user, kind::META))?, user)?.unwrap_or_default())
    }

    /// Entries with seq > `after`, oldest first, at most `limit`.
    pub fn inbox_after(&self, user: &str, after: u64, limit: usize) -> Result<Vec<(u64, InboxEntry)>> {
        let start = seq_key(user, kind::ENTRY, after.saturating_add(1));
        let end = seq_key(user, kind::ENTRY, u64::MAX);
        let mut out = Vec::new();
        for item in self.inbox.range(start..=end).take(limit) {
            let (k, v) = item?;
            out.push((seq_of(&k), decode(&v, user)?));
        }
        Ok(out)
    }

    /// Entries with seq < `before`, newest first, that `keep` accepts: at most `limit` of them,
    /// looking at no more than `scan` entries. Also returns where to continue (0 when done).
    pub fn inbox_before(
        &self,
        user: &str,
        before: u64,
        limit: usize,
        scan: usize,
        keep: impl Fn(&InboxEntry) -> bool,
    ) -> Result<(Vec<(u64, InboxEntry)>, u64)> {
        let start = seq_key(user, kind::ENTRY, 0);
        let end = seq_key(user, kind::ENTRY, before);
        let mut out = Vec::new();
        let mut next = 0;
        for (scanned, item) in self.inbox.range(start..end).rev().enumerate() {
            let (k, v) = item?;
            let seq = seq_of(&k);
            if out.len() == limit || scanned == scan {
                next = seq + 1;
                break;
            }
            let entry: InboxEntry = decode(&v, user)?;
            if keep(&entry) {
                out.push((seq, entry));
            }
        }
        Ok((out, next))
    }

    /// The entry at `seq`, if still kept.
    pub fn inbox_entry(&self, user: &str, seq: u64) -> Result<Option<InboxEntry>> {
        decode_opt(self.inbox.get(seq_key(user, kind::ENTRY, seq))?, user)
    }

    /// The seq an origin (dedupe key) was stored under, if any.
    pub fn inbox_origin(&self, user: &str, origin: &[u8]) -> Result<Option<u64>> {
        Ok(self
            .inbox
            .get(suffix_key(user, kind::ORIGIN, origin))?
            .map(|v| seq_of(&v)))
    }

    /// How many inbox entries are stored, over all users (a full scan of the keys).
    pub fn count_inbox_entries(&self) -> Result<u64> {
        let mut n = 0;
        for key in self.inbox.iter().keys() {
            let key = key?;
            let len = key.first().copied().unwrap_or(0) as usize;
            if key.get(1 + len) == Some(&kind::ENTRY) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The groups `user` belongs to, sorted.
    pub fn user_groups(&self, user: &str) -> Result<Vec<String>> {
        names_under(&self.inbox, &scoped(user, kind::GROUP))
    }

    // ---- groups -------------------------------------------------------------

    /// The group's record, if it exists.
    pub fn group(&self, group: &str) -> Result<Option<GroupRecord>> {
        decode_opt(self.groups.get(scoped(group, kind::META))?, group)
    }

    /// The group's members, sorted.
    pub fn group_members(&self, group: &str) -> Result<Vec<String>> {
        names_under(&self.groups, &scoped(group, kind::MEMBER))
    }

    /// One message of the group's log.
    pub fn group_message(&self, group: &str, seq: u64) -> Result<Option<GroupMessage>> {
        decode_opt(self.groups.get(seq_key(group, kind::MESSAGE, seq))?, group)
    }

    /// Group messages with seq < `before`, newest first, at most `limit`.
    pub fn group_before(&self, group: &str, before: u64, limit: usize) -> Result<Vec<(u64, GroupMessage)>> {
        let start = seq_key(group, kind::MESSAGE, 0);
        let end = seq_key(group, kind::MESSAGE, before);
        let mut out = Vec::new();
        for item in self.groups.range(start..end).rev().take(limit) {
            let (k, v) = item?;
            out.push((seq_of(&k), decode(&v, group)?));
        }
        Ok(out)
    }

    /// Groups whose fan-out a crash may have interrupted.
    pub fn pending_fanouts(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.fanout.iter() {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }

    /// The group seq a sender's client message id was stored under, if any.
    pub fn group_origin(&self, group: &str, origin: &[u8]) -> Result<Option<u64>> {
        Ok(self
            .groups
            .get(suffix_key(group, kind::ORIGIN, origin))?
            .map(|v| seq_of(&v)))
    }
}

fn names_under(tree: &sled::Tree, prefix: &[u8]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(prefix) {
        let (k, _) = item?;
        out.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
    }
    Ok(out)
}

fn decode<M: Message + Default>(bytes: &[u8], owner: &str) -> Result<M> {
    M::decode(bytes).map_err(|_| StorageError::Corrupt(owner.to_owned()))
}

fn decode_opt<M: Message + Default>(bytes: Option<sled::IVec>, owner: &str) -> Result<Option<M>> {
    bytes.map(|b| decode(&b, owner)).transpose()
}

/// Encodes a seq as a stored value.
pub fn seq_value(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(dir.path(), 64, 8 << 20).unwrap();
        (dir, s)
    }

    fn entry(text: &str) -> InboxEntry {
        InboxEntry {
            text: text.into(),
            from: "alice".into(),
            kind: 1,
            ..Default::default()
        }
    }

    fn append(batch: &mut Writes, user: &str, seq: u64, text: &str) {
        batch.put(
            TreeId::Inbox,
            seq_key(user, kind::ENTRY, seq),
            entry(text).encode_to_vec(),
        );
    }

    #[tokio::test]
    async fn inbox_entries_come_back_in_seq_order_and_scoped_to_their_user() {
        let (_dir, s) = open();
        let mut batch = Writes::default();
        // Insert out of order, across two users whose names share a prefix.
        for seq in [3u64, 1, 256, 2, 255] {
            append(&mut batch, "bob", seq, &format!("m{seq}"));
        }
        append(&mut batch, "bo", 1, "other user");
        append(&mut batch, "bobby", 1, "other user");
        s.commit_wait(batch).await.unwrap();

        let seqs: Vec<u64> = s
            .inbox_after("bob", 0, 100)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 255, 256]);
        let page: Vec<u64> = s.inbox_after("bob", 2, 2).unwrap().iter().map(|e| e.0).collect();
        assert_eq!(page, vec![3, 255]);
        let (back, next) = s.inbox_before("bob", 256, 2, 100, |_| true).unwrap();
        assert_eq!(back.iter().map(|e| e.0).collect::<Vec<_>>(), vec![255, 3]);
        assert_eq!(next, 3, "the next page starts below seq 3");
        assert_eq!(s.inbox_after("bo", 0, 10).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn committed_writes_survive_reopening_the_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Storage::open(dir.path(), 8, 8 << 20).unwrap();
            let mut done = Vec::new();
            for seq in 1..=50u64 {
                let mut batch = Writes::default();
                append(&mut batch, "carol", seq, &format!("m{seq}"));
                let s2 = s.clone();
                done.push(tokio::spawn(async move { s2.commit_wait(batch).await }));
            }
            for d in done {
                d.await.unwrap().unwrap();
            }
        }
        // The first handle is gone; sled must reopen with everything acknowledged.
        let s = reopen_when_released(dir.path()).await;
        let got = s.inbox_after("carol", 0, 1000).unwrap();
        assert_eq!(got.len(), 50);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, (seq, e))| *seq == i as u64 + 1 && e.text == format!("m{seq}"))
        );
    }

    /// sled holds a file lock until its last handle (the committer thread's) is dropped.
    async fn reopen_when_released(dir: &Path) -> Storage {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Storage::open(dir, 8, 8 << 20) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("could not reopen: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn a_round_of_commits_is_synced_to_disk_once_and_acknowledged_after_the_sync() {
        let (_dir, s) = open();
        // A completion that blocks holds the committer, so the commits sent meanwhile
        // wait in its queue and are taken together as the next round.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        s.commit(
            Writes::default(),
            Box::new(move |r| {
                r.unwrap();
                let _ = held_tx.send(());
                let _ = release_rx.recv();
            }),
        );
        held_rx.await.unwrap();
        let before = s.syncs_completed();
        let mut acks = Vec::new();
        for seq in 1..=20u64 {
            let mut w = Writes::default();
            append(&mut w, "frank", seq, &format!("m{seq}"));
            let (tx, rx) = tokio::sync::oneshot::channel();
            let observer = s.clone();
            s.commit(
                w,
                Box::new(move |r| {
                    let _ = tx.send((r.is_ok(), observer.syncs_completed()));
                }),
            );
            acks.push(rx);
        }
        release_tx.send(()).unwrap();
        for ack in acks {
            let (ok, syncs_seen) = ack.await.unwrap();
            assert!(ok);
            assert_eq!(
                syncs_seen,
                before + 1,
                "each completion must run after its round's one sync"
            );
        }
        assert_eq!(
            s.syncs_completed(),
            before + 1,
            "20 commits in one round, one sync"
        );
        s.flush().unwrap();
        assert_eq!(s.syncs_completed(), before + 2, "a flush at shutdown syncs too");
    }

    #[tokio::test]
    async fn a_value_too_large_for_the_log_is_synced_in_its_own_blob_file() {
        let (dir, s) = open();
        let mut w = Writes::default();
        w.put(
            TreeId::Inbox,
            seq_key("gina", kind::ENTRY, 1),
            vec![7u8; 256 << 10],
        );
        s.commit_wait(w).await.unwrap();
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

    #[tokio::test]
    async fn origins_dedupe_index_points_at_the_stored_seq() {
        let (_dir, s) = open();
        let mut batch = Writes::default();
        append(&mut batch, "dave", 7, "hello");
        batch.put(
            TreeId::Inbox,
            suffix_key("dave", kind::ORIGIN, b"p\x05alicecm-1"),
            seq_value(7),
        );
        s.commit_wait(batch).await.unwrap();
        assert_eq!(s.inbox_origin("dave", b"p\x05alicecm-1").unwrap(), Some(7));
        assert_eq!(s.inbox_origin("dave", b"p\x05alicecm-2").unwrap(), None);
        assert_eq!(s.inbox_entry("dave", 7).unwrap().unwrap().text, "hello");
    }

    #[tokio::test]
    async fn a_taken_account_name_is_refused() {
        let (_dir, s) = open();
        let rec = AccountRecord {
            password_hash: "h1".into(),
            created_at_ms: 1,
        };
        assert!(s.create_account("erin", &rec).await.unwrap());
        let other = AccountRecord {
            password_hash: "h2".into(),
            created_at_ms: 2,
        };
        assert!(!s.create_account("erin", &other).await.unwrap());
        assert_eq!(s.account("erin").unwrap().unwrap().password_hash, "h1");
    }

    #[tokio::test]
    async fn corrupt_records_are_reported_not_panicked_on() {
        let (_dir, s) = open();
        s.accounts.insert("mallory", &[0xff, 0xff, 0xff][..]).unwrap();
        assert!(matches!(s.account("mallory"), Err(StorageError::Corrupt(_))));
        // Records a faulty peer could hand off: a dedupe value and a seq key too short
        // to hold a seq. Reading them must not panic.
        let mut w = Writes::default();
        w.put(TreeId::Inbox, suffix_key("bob", kind::ORIGIN, b"o"), [1u8, 2]);
        w.put(
            TreeId::Inbox,
            scoped("bob", kind::ENTRY),
            entry("short key").encode_to_vec(),
        );
        s.commit_wait(w).await.unwrap();
        assert_eq!(s.inbox_origin("bob", b"o").unwrap(), Some(0));
        let _ = s.inbox_after("bob", 0, 10);
        let _ = s.inbox_before("bob", u64::MAX, 10, 100, |_| true);
    }

    #[tokio::test]
    async fn an_export_holds_exactly_the_records_of_its_partitions() {
        let (_dir, s) = open();
        let mut w = Writes::default();
        for user in ["ann", "ben", "cat", "dan"] {
            append(&mut w, user, 1, "hi");
            w.put(TreeId::Accounts, user, b"acct");
        }
        w.put(TreeId::Groups, scoped("club", kind::META), b"meta");
        w.put(TreeId::Fanout, "club", b"");
        Storage::put_held(&mut w, &[true; PARTITIONS as usize]);
        s.commit_wait(w).await.unwrap();
        let mut set = vec![false; PARTITIONS as usize];
        set[crate::partition::of_user("ben") as usize] = true;
        set[crate::partition::of_group("club") as usize] = true;
        let records = s.export(&set).unwrap();
        for (tree, key, _) in &records {
            let p = tree.partition_of(key).expect("a data record");
            assert!(
                set[p as usize],
                "{tree:?} {key:?} is not in the exported partitions"
            );
        }
        // ben's account and inbox entry, the group's meta and fan-out marker; never the meta tree.
        let trees: Vec<TreeId> = records.iter().map(|r| r.0).collect();
        assert!(trees.contains(&TreeId::Accounts) && trees.contains(&TreeId::Inbox));
        assert!(trees.contains(&TreeId::Groups) && trees.contains(&TreeId::Fanout));
        assert!(!trees.contains(&TreeId::Meta));
        assert_eq!(TreeId::from_number(TreeId::Meta.number()), None);
        // In small chunks: the same records, split.
        let mut chunks = Vec::new();
        s.export_chunks(&set, 16, |c| {
            chunks.push(c);
            true
        })
        .unwrap();
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        assert_eq!(chunks.concat(), records);
    }
}
