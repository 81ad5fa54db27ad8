//! Where this node's Raft groups and their partitions' records live in sled.
//!
//! Everything is in one tree, `consensus`, so that a round's writes (every group's log
//! entries, hard states and applied records) are one atomic batch followed by one sync:
//! - `r ‖ key`: a partition's records, `key` as `chat_state::keys` lays it out;
//! - `l ‖ group (u32 BE) ‖ index (u64 BE)`: a log entry;
//! - `s ‖ group ‖ kind`: the group's hard state (`h`), configuration (`c`), the snapshot
//!   its log starts after (`p`), and its applied index (`a`).
//!
//! The applied index is written in the same batch as the effects of the entries it
//! covers, so after a crash a partition's records are exactly the log applied up to it.

use chat_consensus::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use chat_consensus::protobuf::Message as _;
use chat_consensus::{GroupId, LogWrite, PersistedLog};
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

/// Failures of the consensus disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// sled failed.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A stored Raft record could not be decoded.
    #[error("corrupt raft record of group {0}")]
    Corrupt(GroupId),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, DiskError>;

fn record_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(RECORD);
    k.extend_from_slice(key);
    k
}

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

    /// Every group with anything persisted, as it was persisted.
    pub fn load(&self) -> Result<BTreeMap<GroupId, PersistedLog>> {
        let mut logs: BTreeMap<GroupId, PersistedLog> = BTreeMap::new();
        for item in self.tree.scan_prefix([STATE]) {
            let (key, value) = item?;
            let (Some(group), Some(kind)) = (key.get(1..5), key.get(5)) else {
                continue;
            };
            let group = GroupId::from_be_bytes(group.try_into().expect("four bytes"));
            let log = logs.entry(group).or_default();
            let corrupt = |_| DiskError::Corrupt(group);
            match *kind {
                HARD_STATE => log.hard_state = HardState::parse_from_bytes(&value).map_err(corrupt)?,
                CONF_STATE => log.conf_state = ConfState::parse_from_bytes(&value).map_err(corrupt)?,
                SNAPSHOT => log.snapshot = SnapshotMetadata::parse_from_bytes(&value).map_err(corrupt)?,
                TOMBSTONE => {
                    let term = value.as_ref().try_into().map_err(|_| DiskError::Corrupt(group))?;
                    log.tombstone = Some(u64::from_be_bytes(term));
                }
                APPLIED => {
                    log.applied =
                        u64::from_be_bytes(value.as_ref().try_into().map_err(|_| DiskError::Corrupt(group))?)
                }
                _ => {}
            }
        }
        for (group, log) in logs.iter_mut() {
            for item in self.tree.scan_prefix(log_prefix(*group)) {
                let (_, value) = item?;
                log.entries
                    .push(Entry::parse_from_bytes(&value).map_err(|_| DiskError::Corrupt(*group))?);
            }
        }
        Ok(logs)
    }

    /// Adds one group's log changes to a round's batch. Removals come first: a batch
    /// keeps the last operation on a key, and new entries may reuse truncated indexes.
    pub fn write_log(&self, batch: &mut sled::Batch, group: GroupId, write: &LogWrite) -> Result<()> {
        if let Some(snapshot) = &write.snapshot {
            for key in self.tree.scan_prefix(log_prefix(group)).keys() {
                batch.remove(key?);
            }
            let mut meta = snapshot.get_metadata().clone();
            meta.clear_conf_state();
            batch.insert(state_key(group, SNAPSHOT), encode(&meta));
            let mut hard = self.hard_state(group)?;
            hard.term = hard.term.max(meta.term);
            hard.commit = meta.index;
            batch.insert(state_key(group, HARD_STATE), encode(&hard));
        }
        if let Some(from) = write.truncate_from {
            for key in self
                .tree
                .range(log_key(group, from)..log_key(group, u64::MAX))
                .keys()
            {
                batch.remove(key?);
            }
        }
        if let Some(to) = write.compact_to {
            let mut meta = SnapshotMetadata::default();
            if let Some(last) = self.tree.get(log_key(group, to - 1))? {
                let last = Entry::parse_from_bytes(&last).map_err(|_| DiskError::Corrupt(group))?;
                meta.index = last.index;
                meta.term = last.term;
                batch.insert(state_key(group, SNAPSHOT), encode(&meta));
            }
            for key in self.tree.range(log_key(group, 0)..log_key(group, to)).keys() {
                batch.remove(key?);
            }
        }
        for entry in &write.entries {
            batch.insert(log_key(group, entry.index), encode(entry));
        }
        if let Some(hard) = &write.hard_state {
            batch.insert(state_key(group, HARD_STATE), encode(hard));
        }
        if let Some(conf) = &write.conf_state {
            batch.insert(state_key(group, CONF_STATE), encode(conf));
        }
        if let Some(applied) = write.applied {
            batch.insert(state_key(group, APPLIED), applied.to_be_bytes().to_vec());
        }
        if let Some(term) = write.tombstone {
            batch.insert(state_key(group, TOMBSTONE), term.to_be_bytes().to_vec());
        }
        Ok(())
    }

    fn hard_state(&self, group: GroupId) -> Result<HardState> {
        match self.tree.get(state_key(group, HARD_STATE))? {
            Some(v) => HardState::parse_from_bytes(&v).map_err(|_| DiskError::Corrupt(group)),
            None => Ok(HardState::default()),
        }
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
        }
    }
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
}

impl Overlay<'_> {
    /// Replaces every record under `prefix` by `records` (a snapshot was installed).
    pub fn replace(&mut self, prefix: &[u8], records: Vec<(Vec<u8>, Vec<u8>)>) -> StoreResult<()> {
        for (key, _) in self.scan(prefix, None, usize::MAX)? {
            self.pending.insert(key, None);
        }
        for (key, value) in records {
            self.pending.insert(key, Some(value));
        }
        Ok(())
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
        self.pending.insert(key, Some(value));
    }

    fn delete(&mut self, key: Vec<u8>) {
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
    fn a_log_comes_back_as_written_truncated_and_compacted() {
        let (_dir, _db, disk) = disk();
        let hard = HardState {
            term: 2,
            commit: 4,
            ..Default::default()
        };
        let first = LogWrite {
            entries: (1..=6).map(|i| entry(i, 1)).collect(),
            hard_state: Some(hard.clone()),
            conf_state: Some(ConfState::from((vec![1, 2, 3], vec![]))),
            ..LogWrite::default()
        };
        let mut batch = sled::Batch::default();
        disk.write_log(&mut batch, 7, &first).unwrap();
        disk.apply(batch).unwrap();
        // A new leader overwrote 5 and 6; then the log was compacted below 3.
        let second = LogWrite {
            truncate_from: Some(5),
            entries: vec![entry(5, 2)],
            applied: Some(4),
            ..LogWrite::default()
        };
        let mut batch = sled::Batch::default();
        disk.write_log(&mut batch, 7, &second).unwrap();
        disk.apply(batch).unwrap();
        let third = LogWrite {
            compact_to: Some(3),
            tombstone: Some(9),
            ..LogWrite::default()
        };
        let mut batch = sled::Batch::default();
        disk.write_log(&mut batch, 7, &third).unwrap();
        disk.apply(batch).unwrap();
        let logs = disk.load().unwrap();
        let log = &logs[&7];
        assert_eq!(
            log.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(3, 1), (4, 1), (5, 2)]
        );
        assert_eq!((log.snapshot.index, log.snapshot.term), (2, 1));
        assert_eq!(log.hard_state, hard);
        assert_eq!(log.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(log.applied, 4);
        assert_eq!(log.tombstone, Some(9));
    }

    #[test]
    fn a_corrupt_raft_record_is_an_error() {
        let (_dir, _db, disk) = disk();
        let mut batch = sled::Batch::default();
        batch.insert(state_key(3, HARD_STATE), vec![0xff, 0xff, 0xff]);
        disk.apply(batch).unwrap();
        assert!(matches!(disk.load(), Err(DiskError::Corrupt(3))));
    }
}
