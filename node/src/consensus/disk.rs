//! Where this node's partitions' records and applied state live in sled.
//!
//! Everything is in one tree, `consensus`:
//! - `r ‖ key`: a partition's records, `key` as `chat_state::keys` lays it out;
//! - `s ‖ group (u32 BE) ‖ kind`: the group's applied index (`a`), and the metadata of
//!   the last snapshot installed here (`p`, with its configuration).
//!
//! The applied index is written in the same batch as the effects of the entries it
//! covers, so the records are always exactly the log applied up to it. sled is not
//! synced every round: the Raft log ([`super::wal`]) is, and a restart applies again
//! what the records had not made durable. A snapshot's records are synced before the
//! log says it was installed, so that the log never starts after what the records hold.
//!
//! Data folders written before the log had its own file kept it here too (`l ‖ group ‖
//! index` entries, `s ‖ group ‖ h|c|t` hard state, configuration and tombstone):
//! [`Disk::load_legacy`] reads them once, to move them into the log file.

use chat_consensus::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use chat_consensus::protobuf::Message as _;
use chat_consensus::{Applied, GroupId, LogWrite, PersistedLog};
use chat_state::store::{Result as StoreResult, Store, StoreError};
use std::collections::BTreeMap;

const RECORD: u8 = b'r';
const LOG: u8 = b'l';
const STATE: u8 = b's';
const HARD_STATE: u8 = b'h';
const CONF_STATE: u8 = b'c';
const SNAPSHOT: u8 = b'p';
const APPLIED: u8 = b'a';
const TOMBSTONE: u8 = b't';
/// How many inbox entries the records hold (u64, big-endian), written with them.
const ENTRIES: &[u8] = b"e";

/// Failures of the consensus disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// sled failed.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A stored Raft record could not be decoded.
    #[error("corrupt raft record of group {0}")]
    Corrupt(GroupId),
    /// The Raft log file failed.
    #[error(transparent)]
    Log(#[from] super::wal::WalError),
    /// Syncing the records failed.
    #[error("syncing the records: {0}")]
    Sync(std::io::Error),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, DiskError>;

fn record_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(RECORD);
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
fn log_key(group: GroupId, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(LOG);
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn log_prefix(group: GroupId) -> Vec<u8> {
    let mut k = vec![LOG];
    k.extend_from_slice(&group.to_be_bytes());
    k
}

fn state_key(group: GroupId, kind: u8) -> Vec<u8> {
    let mut k = vec![STATE];
    k.extend_from_slice(&group.to_be_bytes());
    k.push(kind);
    k
}

/// The tree holding every group's log and records.
#[derive(Clone)]
pub struct Disk {
    tree: sled::Tree,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").finish_non_exhaustive()
    }
}

impl Disk {
    /// Opens (or creates) the tree in `db`.
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            tree: db.open_tree("consensus")?,
        })
    }

    /// Whether nothing of consensus was ever stored here (a new node, or one of the old
    /// core).
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The Raft logs a data folder of the previous format kept in this tree (empty for
    /// any other), with their applied indexes.
    pub fn load_legacy(&self) -> Result<BTreeMap<GroupId, PersistedLog>> {
        let mut logs: BTreeMap<GroupId, PersistedLog> = BTreeMap::new();
        let mut legacy = false;
        for item in self.tree.scan_prefix([STATE]) {
            let (key, value) = item?;
            let (Some(group), Some(kind)) = (key.get(1..5), key.get(5)) else {
                continue;
            };
            let group = GroupId::from_be_bytes(group.try_into().expect("four bytes"));
            let log = logs.entry(group).or_default();
            let corrupt = |_| DiskError::Corrupt(group);
            match *kind {
                HARD_STATE => {
                    legacy = true;
                    log.hard_state = HardState::parse_from_bytes(&value).map_err(corrupt)?
                }
                CONF_STATE => log.conf_state = ConfState::parse_from_bytes(&value).map_err(corrupt)?,
                SNAPSHOT => log.snapshot = SnapshotMetadata::parse_from_bytes(&value).map_err(corrupt)?,
                TOMBSTONE => {
                    let term = value.as_ref().try_into().map_err(|_| DiskError::Corrupt(group))?;
                    log.tombstone = Some(u64::from_be_bytes(term));
                }
                APPLIED => log.applied = decode_index(group, &value)?,
                _ => {}
            }
        }
        if !legacy {
            return Ok(BTreeMap::new());
        }
        for (group, log) in logs.iter_mut() {
            // The previous format kept the configuration apart from the snapshot's.
            log.snapshot.clear_conf_state();
            for item in self.tree.scan_prefix(log_prefix(*group)) {
                let (_, value) = item?;
                log.entries
                    .push(Entry::parse_from_bytes(&value).map_err(|_| DiskError::Corrupt(*group))?);
            }
        }
        Ok(logs)
    }

    /// Writes `logs` as a data folder of the previous format kept them (for tests of
    /// the move).
    #[cfg(test)]
    pub(crate) fn write_legacy(&self, logs: &BTreeMap<GroupId, PersistedLog>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (group, log) in logs {
            for entry in &log.entries {
                batch.insert(log_key(*group, entry.index), encode(entry));
            }
            batch.insert(state_key(*group, HARD_STATE), encode(&log.hard_state));
            batch.insert(state_key(*group, CONF_STATE), encode(&log.conf_state));
            batch.insert(state_key(*group, SNAPSHOT), encode(&log.snapshot));
            if let Some(term) = log.tombstone {
                batch.insert(state_key(*group, TOMBSTONE), term.to_be_bytes().to_vec());
            }
        }
        Ok(self.tree.apply_batch(batch)?)
    }

    /// Removes what [`Disk::load_legacy`] read, once the log file holds it.
    pub fn clear_legacy(&self) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in self.tree.scan_prefix([LOG]).keys() {
            batch.remove(key?);
        }
        for key in self.tree.scan_prefix([STATE]).keys() {
            let key = key?;
            if matches!(key.get(5), Some(&HARD_STATE | &CONF_STATE | &TOMBSTONE)) {
                batch.remove(key);
            }
        }
        Ok(self.tree.apply_batch(batch)?)
    }

    /// Each group's applied index and the last snapshot installed here, as the records
    /// hold them.
    pub fn applied_state(&self) -> Result<BTreeMap<GroupId, Applied>> {
        let mut state: BTreeMap<GroupId, Applied> = BTreeMap::new();
        for item in self.tree.scan_prefix([STATE]) {
            let (key, value) = item?;
            let (Some(group), Some(kind)) = (key.get(1..5), key.get(5)) else {
                continue;
            };
            let group = GroupId::from_be_bytes(group.try_into().expect("four bytes"));
            match *kind {
                APPLIED => state.entry(group).or_default().index = decode_index(group, &value)?,
                SNAPSHOT => {
                    let meta =
                        SnapshotMetadata::parse_from_bytes(&value).map_err(|_| DiskError::Corrupt(group))?;
                    state.entry(group).or_default().snapshot = Some(meta);
                }
                _ => {}
            }
        }
        Ok(state)
    }

    /// Adds what a round's write changes of the group's applied state to its batch: the
    /// applied index, and an installed snapshot's metadata.
    pub fn write_applied(&self, batch: &mut sled::Batch, group: GroupId, write: &LogWrite) {
        if let Some(snapshot) = &write.snapshot {
            batch.insert(state_key(group, SNAPSHOT), encode(snapshot.get_metadata()));
        }
        if let Some(applied) = write.applied {
            batch.insert(state_key(group, APPLIED), applied.to_be_bytes().to_vec());
        }
    }

    /// Removes a group's records and applied state (this node left the group), and its
    /// inbox entries from the count `entries`. Returns the count left.
    pub fn clear(&self, group: GroupId, entries: u64) -> Result<u64> {
        let mut batch = sled::Batch::default();
        let prefix = record_key(&chat_state::keys::partition_prefix(
            group as chat_state::placement::Partition,
        ));
        let mut removed = 0;
        for key in self.tree.scan_prefix(prefix).keys() {
            let key = key?;
            removed += u64::from(chat_state::keys::is_inbox_entry(&key[1..]));
            batch.remove(key);
        }
        let left = entries.saturating_sub(removed);
        Self::write_inbox_entries(&mut batch, left);
        batch.remove(state_key(group, APPLIED));
        batch.remove(state_key(group, SNAPSHOT));
        self.tree.apply_batch(batch)?;
        Ok(left)
    }

    /// Applies a round's batch: visible to reads at once, durable after the sync.
    pub fn apply(&self, batch: sled::Batch) -> Result<()> {
        Ok(self.tree.apply_batch(batch)?)
    }

    /// A partition's records as they are on disk (for reads after a read barrier).
    pub fn record(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(record_key(key))?.map(|v| v.to_vec()))
    }

    /// A view for applying a round's entries: reads see the round's own writes.
    pub fn overlay<'a>(&'a self, pending: &'a mut Pending) -> Overlay<'a> {
        Overlay {
            tree: &self.tree,
            pending,
            entries: 0,
        }
    }

    /// How many inbox entries (stored messages) the records hold, over every partition
    /// with a replica here, as counted with them; counted by a scan of every record
    /// (and kept) the first time.
    pub fn inbox_entries(&self) -> Result<u64> {
        if let Some(n) = self.tree.get(ENTRIES)? {
            let n: [u8; 8] = n.as_ref().try_into().map_err(|_| DiskError::Corrupt(0))?;
            return Ok(u64::from_be_bytes(n));
        }
        let mut n = 0;
        for key in self.tree.scan_prefix([RECORD]).keys() {
            n += u64::from(chat_state::keys::is_inbox_entry(&key?[1..]));
        }
        self.tree.insert(ENTRIES, &n.to_be_bytes())?;
        Ok(n)
    }

    /// Adds the inbox entry count to a round's batch (with the records it counts).
    pub fn write_inbox_entries(batch: &mut sled::Batch, n: u64) {
        batch.insert(ENTRIES, &n.to_be_bytes());
    }
}

fn decode_index(group: GroupId, value: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(
        value.try_into().map_err(|_| DiskError::Corrupt(group))?,
    ))
}

fn encode(m: &impl chat_consensus::protobuf::Message) -> Vec<u8> {
    m.write_to_bytes().expect("raft records always encode")
}

/// Record writes of a round not yet in sled: `None` is a removal.
pub type Pending = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Adds a round's record writes to its batch.
pub fn write_records(batch: &mut sled::Batch, pending: Pending) {
    for (key, value) in pending {
        match value {
            Some(value) => batch.insert(record_key(&key), value),
            None => batch.remove(record_key(&key)),
        }
    }
}

/// sled's records with a round's pending writes on top.
pub struct Overlay<'a> {
    tree: &'a sled::Tree,
    pending: &'a mut Pending,
    /// Inbox entries written less those removed, through this overlay.
    entries: i64,
}

impl Overlay<'_> {
    /// Replaces every record under `prefix` by `records` (a snapshot was installed).
    pub fn replace(&mut self, prefix: &[u8], records: Vec<(Vec<u8>, Vec<u8>)>) -> StoreResult<()> {
        for (key, _) in self.scan(prefix, None, usize::MAX)? {
            self.entries -= i64::from(chat_state::keys::is_inbox_entry(&key));
            self.pending.insert(key, None);
        }
        for (key, value) in records {
            self.entries += i64::from(chat_state::keys::is_inbox_entry(&key));
            self.pending.insert(key, Some(value));
        }
        Ok(())
    }

    /// Inbox entries added less those removed through this overlay. Exact because the
    /// state machine writes an entry once, at a new seq, and removes only entries that
    /// exist.
    pub fn entries_added(&self) -> i64 {
        self.entries
    }
}

fn sled_error(e: sled::Error) -> StoreError {
    StoreError(e.to_string())
}

impl Store for Overlay<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        match self.pending.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(self
                .tree
                .get(record_key(key))
                .map_err(sled_error)?
                .map(|v| v.to_vec())),
        }
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let start = after.unwrap_or(prefix);
        let lower = if after.is_some() {
            Bound::Excluded(start.to_vec())
        } else {
            Bound::Included(start.to_vec())
        };
        let mut pending = self
            .pending
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let disk_start = record_key(start);
        let mut disk = self
            .tree
            .range(disk_start.clone()..)
            .map(|item| item.map(|(k, v)| (k[1..].to_vec(), v.to_vec())))
            .filter(|item| !matches!(item, Ok((k, _)) if after.is_some() && k.as_slice() == start))
            .take_while(|item| !matches!(item, Ok((k, _)) if !k.starts_with(prefix)))
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let take_pending = match (pending.peek(), disk.peek()) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((pk, _)), Some(Ok((dk, _)))) => pk.as_slice() <= dk.as_slice(),
                (Some(_), Some(Err(_))) => false,
            };
            if take_pending {
                let (key, value) = pending.next().expect("peeked");
                // The pending write replaces the disk's record of the same key.
                if matches!(disk.peek(), Some(Ok((dk, _))) if dk == key) {
                    disk.next();
                }
                if let Some(value) = value {
                    out.push((key.clone(), value.clone()));
                }
            } else {
                let (key, value) = disk.next().expect("peeked").map_err(sled_error)?;
                out.push((key, value));
            }
        }
        Ok(out)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        if chat_state::keys::is_inbox_entry(&key) && !matches!(self.pending.get(&key), Some(Some(_))) {
            self.entries += 1;
        }
        self.pending.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
        if chat_state::keys::is_inbox_entry(&key) && !matches!(self.pending.get(&key), Some(None)) {
            self.entries -= 1;
        }
        self.pending.insert(key, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_state::MemStore;

    fn disk() -> (tempfile::TempDir, sled::Db, Disk) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let disk = Disk::open(&db).unwrap();
        (dir, db, disk)
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn inbox_entries_are_counted_with_the_records_and_leave_with_a_cleared_group() {
        use chat_state::keys::{kind, seq_key, tree};
        let (_dir, db, disk) = disk();
        let entry = |p, user: &str, seq| seq_key(p, tree::INBOX, user, kind::ENTRY, seq);
        // Written by an older version: counted by a scan, once.
        let mut batch = sled::Batch::default();
        let old: Pending = [(entry(1, "ann", 1), Some(vec![1]))].into();
        write_records(&mut batch, old);
        disk.apply(batch).unwrap();
        assert_eq!(disk.inbox_entries().unwrap(), 1);
        // A round: two entries in partition 2, one of them trimmed in the same round, and
        // a record that is not an entry.
        let mut pending = Pending::new();
        let mut overlay = disk.overlay(&mut pending);
        overlay.put(entry(2, "bob", 1), vec![1]);
        overlay.put(entry(2, "bob", 2), vec![2]);
        overlay.delete(entry(2, "bob", 1));
        overlay.put(chat_state::keys::account(2, "bob"), vec![3]);
        overlay.delete(entry(1, "ann", 1));
        assert_eq!(overlay.entries_added(), 0);
        overlay.put(entry(2, "bob", 3), vec![3]);
        let added = overlay.entries_added();
        assert_eq!(added, 1);
        let mut batch = sled::Batch::default();
        write_records(&mut batch, pending);
        Disk::write_inbox_entries(&mut batch, 1 + added as u64);
        disk.apply(batch).unwrap();
        let disk = Disk::open(&db).unwrap();
        assert_eq!(disk.inbox_entries().unwrap(), 2);
        assert_eq!(disk.clear(2, 2).unwrap(), 0);
        assert_eq!(Disk::open(&db).unwrap().inbox_entries().unwrap(), 0);
    }

    #[test]
    fn the_overlay_reads_like_the_records_with_the_round_on_top() {
        let (_dir, _db, disk) = disk();
        let mut base = sled::Batch::default();
        let mut model = MemStore::default();
        for (k, v) in [("a1", "x"), ("a2", "y"), ("a4", "z"), ("b1", "w")] {
            base.insert(record_key(k.as_bytes()), v.as_bytes());
            model.put(k.into(), v.into());
        }
        disk.apply(base).unwrap();
        let mut pending = Pending::new();
        let mut overlay = disk.overlay(&mut pending);
        for op in [
            ("a2", None),
            ("a3", Some("n")),
            ("a4", Some("q")),
            ("a0", Some("m")),
        ] {
            match op {
                (k, Some(v)) => {
                    overlay.put(k.into(), v.into());
                    model.put(k.into(), v.into());
                }
                (k, None) => {
                    overlay.delete(k.into());
                    model.delete(k.into());
                }
            }
        }
        for after in [None, Some(&b"a0"[..]), Some(&b"a2"[..]), Some(&b"a3"[..])] {
            for limit in [1, 2, 10] {
                assert_eq!(
                    overlay.scan(b"a", after, limit).unwrap(),
                    model.scan(b"a", after, limit).unwrap(),
                    "after {after:?}, limit {limit}"
                );
            }
        }
        assert_eq!(overlay.get(b"a2").unwrap(), None);
        assert_eq!(overlay.get(b"a1").unwrap(), Some(b"x".to_vec()));
        assert_eq!(overlay.get(b"a4").unwrap(), Some(b"q".to_vec()));
    }

    #[test]
    fn a_log_of_the_previous_format_is_read_once_and_cleared() {
        let (_dir, _db, disk) = disk();
        assert!(disk.load_legacy().unwrap().is_empty(), "nothing to move");
        let hard = HardState {
            term: 2,
            commit: 4,
            ..Default::default()
        };
        let snapshot = SnapshotMetadata {
            index: 2,
            term: 1,
            ..Default::default()
        };
        let mut batch = sled::Batch::default();
        for i in 3..=5 {
            batch.insert(log_key(7, i), encode(&entry(i, 1)));
        }
        batch.insert(state_key(7, HARD_STATE), encode(&hard));
        batch.insert(
            state_key(7, CONF_STATE),
            encode(&ConfState::from((vec![1, 2, 3], vec![]))),
        );
        batch.insert(state_key(7, SNAPSHOT), encode(&snapshot));
        batch.insert(state_key(7, APPLIED), 4u64.to_be_bytes().to_vec());
        batch.insert(state_key(7, TOMBSTONE), 9u64.to_be_bytes().to_vec());
        batch.insert(record_key(b"k"), b"v".to_vec());
        disk.apply(batch).unwrap();
        let logs = disk.load_legacy().unwrap();
        let log = &logs[&7];
        assert_eq!(
            log.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(3, 1), (4, 1), (5, 1)]
        );
        assert_eq!((log.snapshot.index, log.snapshot.term), (2, 1));
        assert_eq!(log.hard_state, hard);
        assert_eq!(log.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(log.applied, 4);
        assert_eq!(log.tombstone, Some(9));
        disk.clear_legacy().unwrap();
        assert!(disk.load_legacy().unwrap().is_empty(), "moved once");
        // The applied state and the records stay.
        assert_eq!(disk.applied_state().unwrap()[&7].index, 4);
        assert_eq!(disk.record(b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_corrupt_raft_record_is_an_error() {
        let (_dir, _db, disk) = disk();
        let mut batch = sled::Batch::default();
        batch.insert(state_key(3, APPLIED), vec![0xff, 0xff, 0xff]);
        disk.apply(batch).unwrap();
        assert!(matches!(disk.applied_state(), Err(DiskError::Corrupt(3))));
    }
}
