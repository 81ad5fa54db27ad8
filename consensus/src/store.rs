//! A group's Raft log as raft-rs reads it: entries, hard state and configuration in
//! memory, plus the one snapshot this replica can currently offer a lagging follower.
//!
//! The log here is a cache of what the caller persists: every change is also emitted as a
//! [`LogWrite`] so that the node writes it to disk (and the simulator to its "disk") in the
//! same round. raft-rs asks for snapshots synchronously; building one means reading the
//! partition's applied state, which is I/O, so this store never builds one itself: it
//! answers "temporarily unavailable", remembers that one is wanted, and the caller offers
//! one built from its state (raft-rs asks again on its next probe).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What a group's persisted log looks like after a restart.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PersistedLog {
    /// Term, vote and commit index.
    pub hard_state: HardState,
    /// Voters and learners.
    pub conf_state: ConfState,
    /// The snapshot the log starts after (index and term 0 when it starts at 1).
    pub snapshot: SnapshotMetadata,
    /// Entries after the snapshot, in index order.
    pub entries: Vec<Entry>,
    /// The index of the last entry whose effects are in the applied state.
    pub applied: u64,
    /// This node was removed from the group in this term: messages of older terms (a
    /// deposed leader's) must not bring an empty replica back to life.
    pub tombstone: Option<u64>,
}

/// A group's applied state, as a caller whose records are synced apart from its log
/// keeps it beside the records (see [`reconcile`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The last entry whose effects are in the records.
    pub index: u64,
    /// The last snapshot installed in the records, with its configuration.
    pub snapshot: Option<SnapshotMetadata>,
}

/// Joins each group's Raft log (from the log file) with its applied state (from the
/// records), for this node (`me`), at start:
/// - a snapshot the records hold and the log does not show yet (a crash between the
///   records' sync and the log's) is installed in the log as a round would have;
/// - the commit index is raised to the applied index: a round's entries may be applied
///   and reach the disk before that round's hard state does, and entries handed out for
///   applying were committed and durable in the log already;
/// - a replica whose records are behind the start of its log cannot be brought back:
///   that is an error (`Err(group)`), never a silent loss.
///
/// `Ok(true)`: a snapshot was installed, which the log file does not hold; the caller
/// writes the logs whole before it appends to them. Otherwise the entries appended
/// next would follow a snapshot the file never recorded, and the next start would
/// install the records' snapshot again, over those entries (and find the records
/// beyond the end of the log).
///
/// Groups are `GroupId`s and `me` a `NodeId` (spelled `u32` and `u64` here: this module
/// sits below `multi`, which imports it).
pub fn reconcile(
    me: u64,
    logs: &mut BTreeMap<u32, PersistedLog>,
    applied: BTreeMap<u32, Applied>,
) -> Result<bool, u32> {
    let mut installed = false;
    for (group, state) in applied {
        let log = logs.entry(group).or_default();
        if let Some(mut meta) = state.snapshot
            && meta.index > log.snapshot.index
        {
            log.entries.clear();
            log.conf_state = meta.take_conf_state();
            log.hard_state.term = log.hard_state.term.max(meta.term);
            log.hard_state.commit = log.hard_state.commit.max(meta.index);
            log.snapshot = meta;
            installed = true;
        }
        log.applied = state.index;
        log.hard_state.commit = log.hard_state.commit.max(state.index);
    }
    for (group, log) in logs.iter() {
        let conf = &log.conf_state;
        let member = [&conf.voters, &conf.learners, &conf.voters_outgoing]
            .iter()
            .any(|ids| ids.contains(&me));
        let last = log.entries.last().map_or(log.snapshot.index, |e| e.index);
        if member && (log.applied < log.snapshot.index || log.applied > last) {
            return Err(*group);
        }
    }
    Ok(installed)
}

/// One round's changes to one group's persisted log, in the order they must be applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogWrite {
    /// A snapshot was installed: drop every entry, the log now starts after it, and
    /// the partition's applied state is replaced by the snapshot's data.
    pub snapshot: Option<Snapshot>,
    /// Drop every persisted entry with an index at or above this one (a new leader
    /// overwrote the tail); then append `entries`.
    pub truncate_from: Option<u64>,
    /// New entries, contiguous.
    pub entries: Vec<Entry>,
    /// The hard state, when it changed.
    pub hard_state: Option<HardState>,
    /// The configuration, when a configuration change was applied.
    pub conf_state: Option<ConfState>,
    /// Entries below this index are no longer needed (applied and compacted).
    pub compact_to: Option<u64>,
    /// The applied index after this round's committed entries (persist it atomically
    /// with their effects).
    pub applied: Option<u64>,
    /// This node left the group (it applied its own removal) in this term.
    pub tombstone: Option<u64>,
}

impl LogWrite {
    /// Nothing to persist.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Where the log of a group created with its voters starts (after this index and term),
/// as TiKV starts a region's log after its initial snapshot.
pub const INITIAL_INDEX: u64 = 5;

/// The snapshot a new group's log starts after: its first records (`data`, the same on
/// every first voter) and its first configuration.
pub fn initial_snapshot(voters: &[u64], data: Vec<u8>) -> Option<Snapshot> {
    if voters.is_empty() {
        return None;
    }
    let mut snapshot = Snapshot::default();
    snapshot.set_data(data.into());
    let meta = snapshot.mut_metadata();
    meta.index = INITIAL_INDEX;
    meta.term = INITIAL_INDEX;
    meta.set_conf_state(ConfState::from((voters.to_vec(), vec![])));
    Some(snapshot)
}

/// raft-rs's view of a group's log.
pub struct LogStore {
    mem: MemStorage,
    offered: Mutex<Option<Snapshot>>,
    wanted: AtomicBool,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    /// A new group's log: with `voters`, it starts after [`INITIAL_INDEX`], whose
    /// snapshot holds the first configuration (so a replica added later gets the
    /// configuration with a snapshot instead of replaying a log that never held it);
    /// without, it is empty and waits for a leader's snapshot.
    pub fn new(voters: &[u64]) -> Self {
        Self::with_initial(initial_snapshot(voters, Vec::new()))
    }

    /// A new group's log starting after `initial` (see [`initial_snapshot`]), or empty.
    pub fn with_initial(initial: Option<Snapshot>) -> Self {
        let mem = MemStorage::new();
        if let Some(snapshot) = initial {
            mem.wl()
                .apply_snapshot(snapshot)
                .expect("an empty store takes any snapshot");
        }
        Self::from_mem(mem)
    }

    /// The log as it was persisted.
    pub fn restore(log: &PersistedLog) -> Self {
        let mem = MemStorage::new();
        {
            let mut core = mem.wl();
            let mut snapshot = Snapshot::default();
            let mut meta = log.snapshot.clone();
            meta.set_conf_state(log.conf_state.clone());
            snapshot.set_metadata(meta);
            if snapshot.get_metadata().index > 0 {
                core.apply_snapshot(snapshot)
                    .expect("empty store takes any snapshot");
            }
            core.set_conf_state(log.conf_state.clone());
            core.append(&log.entries)
                .expect("persisted entries follow the snapshot");
            core.set_hardstate(log.hard_state.clone());
        }
        Self::from_mem(mem)
    }

    fn from_mem(mem: MemStorage) -> Self {
        Self {
            mem,
            offered: Mutex::new(None),
            wanted: AtomicBool::new(false),
        }
    }

    /// The in-memory log, for the driver's writes.
    pub(crate) fn mem(&self) -> &MemStorage {
        &self.mem
    }

    /// Whether raft-rs asked for a snapshot this replica could not offer yet.
    pub(crate) fn take_snapshot_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::Relaxed)
    }

    /// Offers a snapshot of the applied state at `index` (which must still be in the
    /// log or be the log's snapshot point) to followers that need one.
    pub(crate) fn offer_snapshot(&self, index: u64, data: Vec<u8>) -> bool {
        // The term of the snapshot point itself is known even after compaction.
        let Ok(term) = self.mem.term(index) else {
            return false;
        };
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        let Ok(state) = self.mem.initial_state() else {
            return false;
        };
        meta.set_conf_state(state.conf_state);
        *self.offered.lock().expect("snapshot lock") = Some(snapshot);
        true
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A follower asks for a snapshot when the entries it needs are compacted: the
        // snapshot must reach at least the compaction point. An offered snapshot is
        // used once: the next follower gets a fresh one, with the configuration of
        // its time, which must name the follower (a stale one could leave out the very
        // replica being added).
        let needed = request_index.max(self.mem.first_index()?.saturating_sub(1));
        let names = |s: &Snapshot| {
            let conf = s.get_metadata().get_conf_state();
            conf.voters.contains(&to) || conf.learners.contains(&to) || conf.learners_next.contains(&to)
        };
        let mut offered = self.offered.lock().expect("snapshot lock");
        match offered.take() {
            Some(snapshot) if snapshot.get_metadata().index >= needed && names(&snapshot) => Ok(snapshot),
            _ => {
                self.wanted.store(true, Ordering::Relaxed);
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Default::default()
        }
    }

    fn log_at(snapshot: (u64, u64), entries: std::ops::RangeInclusive<u64>, commit: u64) -> PersistedLog {
        let mut log = PersistedLog {
            entries: entries.map(|i| entry(i, 3)).collect(),
            conf_state: ConfState::from((vec![1, 2], vec![])),
            ..PersistedLog::default()
        };
        (log.snapshot.index, log.snapshot.term) = snapshot;
        log.hard_state.term = 3;
        log.hard_state.commit = commit;
        log
    }

    #[test]
    fn the_log_and_the_records_are_joined_after_a_crash() {
        // Records applied to 9 reached the disk before the hard state saying 9 is
        // committed did: the commit index is raised to what was applied.
        let mut logs = BTreeMap::from([(1, log_at((5, 3), 6..=10, 7))]);
        let applied = Applied {
            index: 9,
            snapshot: None,
        };
        // Nothing the log file lacks: it need not be written again.
        assert!(!reconcile(1, &mut logs, BTreeMap::from([(1, applied)])).unwrap());
        assert_eq!((logs[&1].applied, logs[&1].hard_state.commit), (9, 9));
        // A snapshot the records installed and synced, the log's round lost.
        let mut meta = SnapshotMetadata::default();
        (meta.index, meta.term) = (20, 4);
        meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        let mut logs = BTreeMap::from([(1, log_at((5, 3), 6..=10, 7))]);
        let applied = Applied {
            index: 20,
            snapshot: Some(meta),
        };
        // The log file must be written again before anything is appended to it.
        assert!(reconcile(1, &mut logs, BTreeMap::from([(1, applied)])).unwrap());
        let log = &logs[&1];
        assert!(log.entries.is_empty());
        assert_eq!((log.snapshot.index, log.snapshot.term), (20, 4));
        assert_eq!(log.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(
            (log.applied, log.hard_state.commit, log.hard_state.term),
            (20, 20, 4)
        );
        // Records behind the start of the log (or beyond its end) cannot be mended;
        // for a group this node is not in, it does not matter.
        for (index, me) in [(3, 1), (11, 1)] {
            let mut logs = BTreeMap::from([(1, log_at((5, 3), 6..=10, 7))]);
            let applied = Applied {
                index,
                snapshot: None,
            };
            assert!(
                matches!(reconcile(me, &mut logs, BTreeMap::from([(1, applied)])), Err(1)),
                "applied {index}"
            );
        }
        let mut logs = BTreeMap::from([(1, log_at((5, 3), 6..=10, 7))]);
        let applied = Applied {
            index: 3,
            snapshot: None,
        };
        reconcile(3, &mut logs, BTreeMap::from([(1, applied)])).unwrap();
    }
}
