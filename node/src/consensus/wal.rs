//! The Raft log of every group this node has a replica of, in one append-only file that
//! the node syncs itself (`raft/log` in the data folder).
//!
//! A round appends every group's [`LogWrite`] (entries, hard state, configuration,
//! compaction, a snapshot's metadata, a tombstone) with one `write` and makes it durable
//! with one `fdatasync`: the log costs no tree descents, and nothing of it is ever
//! rewritten in place. The `fdatasync` runs on the log's own thread
//! ([`Wal::start_sync`], [`Wal::finish_sync`]), so that the round applies what is
//! committed while the disk syncs; the round still ends only once its sync is done.
//! Once a sync has failed, every later one fails too (Linux may report a write-back
//! error once only). Replaying the file from the start gives each group's
//! [`PersistedLog`] back. Once the file has grown well past what is still live (entries
//! the groups compacted away stay in it until then), [`Wal::rewrite`] writes the live
//! logs to a new file, syncs it and renames it over the old one.
//!
//! What the log does not hold: the applied state (the partitions' records and each
//! group's applied index live in sled, see [`super::disk`]), nor a snapshot's data.
//!
//! A record is `length (u32 LE) ‖ crc32 of the payload (u32 LE) ‖ payload`, the payload
//! `group (u32 LE) ‖ kind (u8) ‖ body`; a round ends with an `END` record, and a replay
//! applies a round whole or not at all. A crash can leave the last round half written
//! (it was never synced, so nothing of it was acknowledged or voted with): a round
//! without its end, or a bad record at the very end of the file (or followed by nothing
//! but zeros), is cut off at start; a bad record with good data after it is corruption
//! and stops the node.

use chat_consensus::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use chat_consensus::protobuf::Message as _;
use chat_consensus::{GroupId, LogWrite, PersistedLog};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};

const SNAPSHOT: u8 = 1;
const TRUNCATE: u8 = 2;
const ENTRY: u8 = 3;
const COMPACT: u8 = 4;
const HARD_STATE: u8 = 5;
const CONF_STATE: u8 = 6;
const TOMBSTONE: u8 = 7;
/// Ends a round: a replay applies a round's records only once it reads this.
const END: u8 = 8;

const HEADER: usize = 8;
/// The longest payload a reader accepts: far above any entry (frames are capped well
/// below), so that a corrupt length cannot make it allocate without bound.
const MAX_PAYLOAD: usize = 1 << 30;

/// Failures of the log file.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Reading, writing or syncing failed.
    #[error("raft log: {0}")]
    Io(#[from] std::io::Error),
    /// A record in the middle of the file is damaged.
    #[error("raft log {path}: damaged record at byte {offset} with {after} bytes after it")]
    Corrupt {
        /// The file.
        path: String,
        /// Where the damaged record starts.
        offset: usize,
        /// Bytes after it.
        after: usize,
    },
}

/// The open log file.
pub struct Wal {
    dir: PathBuf,
    file: Arc<File>,
    syncer: Syncer,
    len: u64,
    /// Rewrite once the file is longer than this.
    rewrite_at: u64,
    /// The least `rewrite_at` after a rewrite.
    min_rewrite: u64,
    buf: Vec<u8>,
    syncs: u64,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("log")
}

fn new_path(dir: &Path) -> PathBuf {
    dir.join("log.new")
}

impl Wal {
    /// Opens the log in `dir` (created if missing) and replays it. `None` when there
    /// was no log file yet (a new node, or a data folder from before this log existed);
    /// the file then exists, empty. A rewrite happens once the file passes
    /// `min_rewrite` bytes and twice the live logs.
    pub fn open(
        dir: &Path,
        min_rewrite: u64,
    ) -> Result<(Self, Option<BTreeMap<GroupId, PersistedLog>>), WalError> {
        std::fs::create_dir_all(dir)?;
        // A rewrite that did not reach its rename: the old file is whole.
        match std::fs::remove_file(new_path(dir)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let path = log_path(dir);
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (logs, good) = replay(&bytes).map_err(|offset| WalError::Corrupt {
            path: path.display().to_string(),
            offset,
            after: bytes.len() - offset,
        })?;
        if good < bytes.len() {
            tracing::warn!(
                cut = bytes.len() - good,
                at = good,
                "raft log: a round cut short by a crash was dropped (it was never acknowledged)"
            );
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        if !existed {
            file.sync_all()?;
            sync_dir(dir)?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let wal = Self {
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            syncer: Syncer::start()?,
            len: good as u64,
            rewrite_at: min_rewrite.max(2 * good as u64),
            min_rewrite,
            buf: Vec::new(),
            syncs: 0,
        };
        Ok((wal, existed.then_some(logs)))
    }

    /// Writes a round's log changes (not durable until [`Wal::sync`]).
    pub fn append<'a>(
        &mut self,
        writes: impl IntoIterator<Item = (GroupId, &'a LogWrite)>,
    ) -> Result<(), WalError> {
        self.buf.clear();
        for (group, write) in writes {
            encode_write(&mut self.buf, group, write);
        }
        if !self.buf.is_empty() {
            record(&mut self.buf, 0, END, &[]);
            (&*self.file).write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
        }
        Ok(())
    }

    /// Makes everything appended durable.
    pub fn sync(&mut self) -> Result<(), WalError> {
        let started = self.start_sync()?;
        self.finish_sync(started)
    }

    /// Starts making everything appended so far durable, on the log's thread; the
    /// caller goes on meanwhile and waits with [`Wal::finish_sync`] before it relies on
    /// it. Appends made in between may or may not be covered.
    pub fn start_sync(&mut self) -> Result<SyncStarted, WalError> {
        self.syncer.next += 1;
        let number = self.syncer.next;
        let sent = self
            .syncer
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send((number, self.file.clone())).is_ok());
        if !sent {
            return Err(syncer_gone());
        }
        Ok(SyncStarted(number))
    }

    /// Waits until the sync `started` is done: everything appended before it started is
    /// durable.
    ///
    /// A failed sync fails every later one too, including one whose own `fdatasync`
    /// succeeded: Linux may report a write-back error once only, so what a failed sync
    /// covered may be lost although a later sync says nothing of it.
    pub fn finish_sync(&mut self, started: SyncStarted) -> Result<(), WalError> {
        loop {
            if let Some(error) = &self.syncer.failed {
                return Err(WalError::Io(std::io::Error::new(error.kind(), error.to_string())));
            }
            // Answers come in order; one older than `started` belongs to a sync whose
            // round failed before it waited.
            let (number, result) = self.syncer.rx.recv().map_err(|_| syncer_gone())?;
            if let Err(error) = result {
                self.syncer.failed = Some(error);
                continue;
            }
            if number == started.0 {
                self.syncs += 1;
                return Ok(());
            }
        }
    }

    /// Syncs completed (tests count them).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// The file's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the file has grown enough to be rewritten.
    pub fn wants_rewrite(&self) -> bool {
        self.len > self.rewrite_at
    }

    /// Replaces the file by one holding only `logs` (every group's whole persisted log,
    /// as it is durable now): written and synced beside it, then renamed over it.
    pub fn rewrite(&mut self, logs: &BTreeMap<GroupId, PersistedLog>) -> Result<(), WalError> {
        let new = new_path(&self.dir);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&new)?;
        file.set_len(0)?;
        // A group at a time through the round buffer: no copy of the whole log in memory.
        let mut len = 0;
        for (group, log) in logs {
            self.buf.clear();
            encode_log(&mut self.buf, *group, log);
            file.write_all(&self.buf)?;
            len += self.buf.len();
        }
        self.buf.clear();
        record(&mut self.buf, 0, END, &[]);
        file.write_all(&self.buf)?;
        len += self.buf.len();
        file.sync_all()?;
        std::fs::rename(&new, log_path(&self.dir))?;
        sync_dir(&self.dir)?;
        self.file = Arc::new(file);
        self.len = len as u64;
        self.rewrite_at = self.min_rewrite.max(2 * self.len);
        Ok(())
    }
}

/// A sync under way on the log's thread, to wait for with [`Wal::finish_sync`].
#[derive(Debug)]
#[must_use = "a started sync is only known done once finish_sync says so"]
pub struct SyncStarted(u64);

/// The log's thread: syncs the file each request names, in order, and answers with the
/// request's number.
struct Syncer {
    tx: Option<mpsc::Sender<(u64, Arc<File>)>>,
    rx: mpsc::Receiver<(u64, std::io::Result<()>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The number of the last sync started.
    next: u64,
    /// The first sync that failed: every later one fails too.
    failed: Option<std::io::Error>,
}

impl Syncer {
    fn start() -> std::io::Result<Self> {
        let (tx, requests) = mpsc::channel::<(u64, Arc<File>)>();
        let (answers, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || {
                for (number, file) in requests {
                    if answers.send((number, file.sync_data())).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            rx,
            thread: Some(thread),
            next: 0,
            failed: None,
        })
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // The thread ends once its sync under way (if any) is done.
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn syncer_gone() -> WalError {
    WalError::Io(std::io::Error::other("the raft log's sync thread is gone"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn record(buf: &mut Vec<u8>, group: GroupId, kind: u8, body: &[u8]) {
    let len = 5 + body.len();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&group.to_le_bytes());
    crc.update(&[kind]);
    crc.update(body);
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&group.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(body);
}

fn encode(m: &impl chat_consensus::protobuf::Message) -> Vec<u8> {
    m.write_to_bytes().expect("raft records always encode")
}

/// One group's changes, in the order [`replay`] applies them (the order of
/// `LogWrite`'s fields).
fn encode_write(buf: &mut Vec<u8>, group: GroupId, w: &LogWrite) {
    if let Some(snapshot) = &w.snapshot {
        let mut meta = snapshot.get_metadata().clone();
        meta.clear_conf_state();
        record(buf, group, SNAPSHOT, &encode(&meta));
    }
    if let Some(from) = w.truncate_from {
        record(buf, group, TRUNCATE, &from.to_le_bytes());
    }
    for entry in &w.entries {
        record(buf, group, ENTRY, &encode(entry));
    }
    if let Some(hard) = &w.hard_state {
        record(buf, group, HARD_STATE, &encode(hard));
    }
    if let Some(conf) = &w.conf_state {
        record(buf, group, CONF_STATE, &encode(conf));
    }
    if let Some(to) = w.compact_to {
        record(buf, group, COMPACT, &to.to_le_bytes());
    }
    if let Some(term) = w.tombstone {
        record(buf, group, TOMBSTONE, &term.to_le_bytes());
    }
}

/// A group's whole log, as a replay of these records rebuilds it.
fn encode_log(buf: &mut Vec<u8>, group: GroupId, log: &PersistedLog) {
    if log.snapshot.index > 0 {
        record(buf, group, SNAPSHOT, &encode(&log.snapshot));
    }
    for entry in &log.entries {
        record(buf, group, ENTRY, &encode(entry));
    }
    record(buf, group, HARD_STATE, &encode(&log.hard_state));
    record(buf, group, CONF_STATE, &encode(&log.conf_state));
    if let Some(term) = log.tombstone {
        record(buf, group, TOMBSTONE, &term.to_le_bytes());
    }
}

/// Applies one record to the logs; `None` when its body does not decode.
fn apply_record(
    logs: &mut BTreeMap<GroupId, PersistedLog>,
    group: GroupId,
    kind: u8,
    body: &[u8],
) -> Option<()> {
    let log = logs.entry(group).or_default();
    let number = || body.try_into().ok().map(u64::from_le_bytes);
    match kind {
        SNAPSHOT => {
            let meta = SnapshotMetadata::parse_from_bytes(body).ok()?;
            log.entries.clear();
            log.hard_state.term = log.hard_state.term.max(meta.term);
            log.hard_state.commit = log.hard_state.commit.max(meta.index);
            log.snapshot = meta;
        }
        TRUNCATE => {
            let from = number()?;
            let keep = log.entries.partition_point(|e| e.index < from);
            log.entries.truncate(keep);
        }
        ENTRY => log.entries.push(Entry::parse_from_bytes(body).ok()?),
        HARD_STATE => log.hard_state = HardState::parse_from_bytes(body).ok()?,
        CONF_STATE => log.conf_state = ConfState::parse_from_bytes(body).ok()?,
        COMPACT => {
            let to = number()?;
            let drop = log.entries.partition_point(|e| e.index < to);
            if let Some(last) = drop.checked_sub(1).map(|i| &log.entries[i]) {
                log.snapshot.index = last.index;
                log.snapshot.term = last.term;
            }
            log.entries.drain(..drop);
        }
        TOMBSTONE => log.tombstone = Some(number()?),
        _ => return None,
    }
    Some(())
}

/// Rebuilds every group's log from the file's bytes; also returns how many bytes hold
/// whole rounds (the rest is a round a crash cut short). `Err(offset)` for a damaged
/// record with good data after it.
pub fn replay(bytes: &[u8]) -> Result<(BTreeMap<GroupId, PersistedLog>, usize), usize> {
    let mut logs = BTreeMap::new();
    let mut round = Vec::new();
    let mut round_start = 0;
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some((len, group, kind, body)) = parse_record(rest) else {
            let declared = rest
                .get(..4)
                .map(|l| u32::from_le_bytes(l.try_into().expect("four bytes")) as usize);
            // Cut short: the record runs past the end, or the end is the zeros a file
            // system leaves where a write never landed.
            let torn = declared.is_none_or(|len| HEADER + len >= rest.len()) || rest.iter().all(|b| *b == 0);
            return if torn { Ok((logs, round_start)) } else { Err(at) };
        };
        if kind == END {
            for (group, kind, body) in round.drain(..) {
                apply_record(&mut logs, group, kind, body).ok_or(round_start)?;
            }
            round_start = at + len;
        } else {
            round.push((group, kind, body));
        }
        at += len;
    }
    // A round without its end was cut short too.
    Ok((logs, round_start))
}

/// One record at the start of `bytes`: (its whole length, group, kind, body).
fn parse_record(bytes: &[u8]) -> Option<(usize, GroupId, u8, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    if !(5..=MAX_PAYLOAD).contains(&len) {
        return None;
    }
    let payload = bytes.get(HEADER..HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let group = GroupId::from_le_bytes(payload[..4].try_into().ok()?);
    Some((HEADER + len, group, payload[4], &payload[5..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_consensus::eraftpb::Snapshot;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 3].into(),
            ..Default::default()
        }
    }

    fn writes() -> Vec<(GroupId, LogWrite)> {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 5;
        snapshot.mut_metadata().term = 5;
        snapshot.set_data(vec![1, 2, 3].into());
        vec![
            (
                7,
                LogWrite {
                    snapshot: Some(snapshot),
                    conf_state: Some(ConfState::from((vec![1, 2, 3], vec![]))),
                    applied: Some(5),
                    ..LogWrite::default()
                },
            ),
            (
                7,
                LogWrite {
                    entries: (6..=11).map(|i| entry(i, 6)).collect(),
                    hard_state: Some(HardState {
                        term: 6,
                        vote: 2,
                        commit: 9,
                        ..Default::default()
                    }),
                    ..LogWrite::default()
                },
            ),
            (
                9,
                LogWrite {
                    conf_state: Some(ConfState::default()),
                    ..LogWrite::default()
                },
            ),
            // A new leader overwrote 10 and 11; then the log was compacted below 8.
            (
                7,
                LogWrite {
                    truncate_from: Some(10),
                    entries: vec![entry(10, 7)],
                    compact_to: Some(8),
                    ..LogWrite::default()
                },
            ),
            (
                9,
                LogWrite {
                    tombstone: Some(4),
                    ..LogWrite::default()
                },
            ),
        ]
    }

    /// The bytes of one round.
    fn bytes_of(writes: &[(GroupId, LogWrite)]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (group, write) in writes {
            encode_write(&mut buf, *group, write);
        }
        record(&mut buf, 0, END, &[]);
        buf
    }

    fn expected() -> BTreeMap<GroupId, PersistedLog> {
        let mut seven = PersistedLog {
            hard_state: HardState {
                term: 6,
                vote: 2,
                commit: 9,
                ..Default::default()
            },
            conf_state: ConfState::from((vec![1, 2, 3], vec![])),
            entries: vec![entry(8, 6), entry(9, 6), entry(10, 7)],
            ..PersistedLog::default()
        };
        seven.snapshot.index = 7;
        seven.snapshot.term = 6;
        let nine = PersistedLog {
            tombstone: Some(4),
            ..PersistedLog::default()
        };
        BTreeMap::from([(7, seven), (9, nine)])
    }

    #[test]
    fn a_replay_gives_back_what_was_written_truncated_and_compacted() {
        let bytes = bytes_of(&writes());
        let (logs, good) = replay(&bytes).unwrap();
        assert_eq!(good, bytes.len());
        assert_eq!(logs, expected());
    }

    #[test]
    fn a_rewrite_holds_the_same_logs() {
        let mut buf = Vec::new();
        for (group, log) in expected() {
            encode_log(&mut buf, group, &log);
        }
        record(&mut buf, 0, END, &[]);
        assert_eq!(replay(&buf).unwrap().0, expected());
    }

    #[test]
    fn a_torn_last_round_is_cut_and_damage_inside_is_an_error() {
        let first = bytes_of(&writes()[..3]);
        let second = bytes_of(&writes()[3..]);
        let bytes = [first.clone(), second].concat();
        // Every cut inside the second round leaves the first whole, and nothing of the
        // second (its truncation without its new entry would be a log no round made).
        for cut in first.len()..bytes.len() {
            let (logs, good) = replay(&bytes[..cut]).unwrap();
            assert_eq!(good, first.len(), "cut at {cut}");
            assert_eq!(logs[&7].entries.last().unwrap().index, 11, "cut at {cut}");
            assert_eq!(logs[&9].tombstone, None, "cut at {cut}");
        }
        // A write that never landed reads back as zeros.
        let mut zeros = bytes.clone();
        zeros.extend(std::iter::repeat_n(0, 100));
        assert_eq!(replay(&zeros).unwrap().1, bytes.len());
        // A flipped byte in an early record, with good records after it.
        let mut damaged = bytes.clone();
        damaged[HEADER + 6] ^= 0x40;
        assert_eq!(replay(&damaged), Err(0));
    }

    #[test]
    fn the_file_survives_reopening_a_torn_tail_and_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        let (mut wal, logs) = Wal::open(&path, 1 << 20).unwrap();
        assert!(logs.is_none(), "no log before");
        let all = writes();
        wal.append(all.iter().map(|(g, w)| (*g, w))).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.syncs(), 1);
        drop(wal);
        // A crash in the middle of the next round.
        let mut file = OpenOptions::new().append(true).open(log_path(&path)).unwrap();
        let next = bytes_of(&[(
            7,
            LogWrite {
                entries: vec![entry(11, 7)],
                ..LogWrite::default()
            },
        )]);
        file.write_all(&next[..next.len() - 2]).unwrap();
        drop(file);
        let (mut wal, logs) = Wal::open(&path, 1 << 20).unwrap();
        assert_eq!(logs.unwrap(), expected());
        wal.rewrite(&expected()).unwrap();
        wal.append([(
            9,
            &LogWrite {
                tombstone: Some(5),
                ..LogWrite::default()
            },
        )])
        .unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, logs) = Wal::open(&path, 1 << 20).unwrap();
        let mut want = expected();
        want.get_mut(&9).unwrap().tombstone = Some(5);
        assert_eq!(logs.unwrap(), want);
    }

    #[test]
    fn a_sync_runs_beside_the_caller_and_one_left_unwaited_for_does_not_confuse_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        let (mut wal, _) = Wal::open(&path, 1 << 20).unwrap();
        let all = writes();
        let (first, rest) = all.split_at(3);
        wal.append(first.iter().map(|(g, w)| (*g, w))).unwrap();
        // A round that failed after starting its sync never waits for it.
        let _abandoned = wal.start_sync().unwrap();
        wal.append(rest.iter().map(|(g, w)| (*g, w))).unwrap();
        let started = wal.start_sync().unwrap();
        wal.finish_sync(started).unwrap();
        assert_eq!(wal.syncs(), 1, "only syncs waited for are counted");
        wal.sync().unwrap();
        assert_eq!(wal.syncs(), 2);
        drop(wal);
        let (_, logs) = Wal::open(&path, 1 << 20).unwrap();
        assert_eq!(logs.unwrap(), expected());
    }

    #[test]
    fn a_failed_sync_nobody_waited_for_fails_every_later_sync() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(&dir.path().join("raft"), 1 << 20).unwrap();
        let real = wal.file.clone();
        // fdatasync on a pipe fails (EINVAL): a sync whose write-back failed.
        let (reader, _writer) = std::io::pipe().unwrap();
        wal.file = Arc::new(File::from(std::os::fd::OwnedFd::from(reader)));
        let _abandoned = wal.start_sync().unwrap();
        wal.file = real;
        // The next sync of the real file succeeds by itself, but what the failed one
        // covered may be lost: it fails too, and so does every one after it.
        let started = wal.start_sync().unwrap();
        assert!(wal.finish_sync(started).is_err());
        assert!(wal.sync().is_err());
        assert_eq!(wal.syncs(), 0);
    }
}
