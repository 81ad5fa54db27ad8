//! Synchronous copies of partitions on other nodes: the primary's side.
//!
//! The node holding a partition (its primary) streams every write of it to the
//! partition's replicas, and a write's completion (the client's acknowledgement)
//! runs only once the local flush *and* every replica's acknowledgement are in.
//! So every acknowledged write is durable on every replica the partition had
//! when it was written, and a replica whose copy is whole (synced) can take over
//! the partition when the primary dies.
//!
//! One [`OutStream`] runs to each replica node. Its items are numbered and travel
//! in order on the link to that node, so a replica applies writes in the order
//! the primary committed them; a replica that sees a number out of order refuses
//! the stream, and the primary starts a new one. A new replica of a partition gets
//! `start` (it deletes what it had), then the live writes and, alongside, the
//! snapshot in chunks, then `synced` once the snapshot is complete.
//!
//! Writes enter here from [`crate::storage::Storage::commit`]: every write carries
//! its key, and [`TreeId::partition_of`] says which partition it belongs to.

use crate::partition::{PARTITIONS, Partition};
use crate::remote::Remote;
use crate::storage::{Completion, Op, StorageError};
use chat_protocol::internal::{Empty, Replication, handoff_chunk, item, replication};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A replica that has not acknowledged a write after this long breaks its stream
/// (the write fails, and the replica is copied afresh).
pub const ACK_LIMIT: Duration = Duration::from_secs(10);
/// A broken stream is replaced by a new one (and a new snapshot) after this long.
const RESTART_AFTER: Duration = Duration::from_millis(500);

/// Counts the arrivals a write waits for (the local flush and each replica's
/// acknowledgement) and runs the completion after the last one.
struct Gate {
    state: Mutex<GateState>,
}

struct GateState {
    waiting: usize,
    /// Replicas that may fail to confirm while the write still reaches the required
    /// number of copies (it was shipped to more: a copy being replaced, say).
    spare: usize,
    failed: Option<StorageError>,
    done: Option<Completion>,
}

impl Gate {
    fn new(waiting: usize, spare: usize, done: Completion) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(GateState {
                waiting,
                spare,
                failed: None,
                done: Some(done),
            }),
        })
    }

    /// A replica will not confirm the write (down, refused, stream broken): fine while
    /// enough others got it, a failure otherwise.
    fn lose(&self, why: &str) {
        let spared = {
            let mut s = self.state.lock().expect("gate lock");
            let spared = s.spare > 0;
            s.spare = s.spare.saturating_sub(1);
            spared
        };
        self.arrive(if spared {
            Ok(())
        } else {
            Err(StorageError::NotReplicated(why.to_owned()))
        });
    }

    fn arrive(&self, outcome: Result<(), StorageError>) {
        let done = {
            let mut s = self.state.lock().expect("gate lock");
            if let Err(e) = outcome {
                s.failed.get_or_insert(e);
            }
            s.waiting = s.waiting.saturating_sub(1);
            if s.waiting > 0 {
                return;
            }
            (s.done.take(), s.failed.take())
        };
        if let (Some(done), failed) = done {
            done(failed.map_or(Ok(()), Err));
        }
    }
}

/// One partition copied on a stream.
#[derive(Clone, Copy)]
struct Copy {
    /// The number of the `start` item that began this copy (its snapshot's generation).
    start: u64,
    /// The replica has acknowledged the end of the snapshot: the copy is whole.
    whole: bool,
}

/// The stream to one replica node.
struct OutStream {
    id: u64,
    next_seq: u64,
    /// Partitions copied to this node.
    partitions: BTreeMap<Partition, Copy>,
    /// Writes waiting for this node's acknowledgement, by item number.
    pending: BTreeMap<u64, (Instant, Arc<Gate>)>,
    /// `synced` items not yet acknowledged (when sent, the snapshot's start, its
    /// partitions): they become whole when it is.
    syncing: BTreeMap<u64, (Instant, u64, Vec<Partition>)>,
    /// A send failed or the replica refused: replaced by a new stream by a later plan.
    broken: bool,
    /// When a plan first found it broken: it is replaced a moment later, so that a
    /// replica that keeps refusing is not sent a snapshot four times a second.
    broken_seen: Option<Instant>,
}

impl OutStream {
    fn whole(&self) -> impl Iterator<Item = Partition> + '_ {
        self.partitions.iter().filter(|(_, c)| c.whole).map(|(p, _)| *p)
    }
}

/// A snapshot to send: the partitions a new stream member needs, on stream `stream` to `node`.
pub struct Bootstrap {
    /// The replica.
    pub node: String,
    /// The stream the snapshot travels on.
    pub stream: u64,
    /// The number of the `start` item (the snapshot's generation).
    pub start: u64,
    /// The partitions to copy.
    pub partitions: Vec<Partition>,
}

/// Why an item could not be put on a stream.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The stream was replaced or removed, or the partitions restarted: whatever was
    /// being sent for them is moot.
    Gone,
    /// The link is full for now; try again shortly.
    Full,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, OutStream>,
}

impl State {
    /// Drops the stream to `node`: its waiting writes fail (the replica may not have
    /// them; their resends are copied elsewhere).
    fn drop_stream(&mut self, node: &str, gates: &mut Vec<Arc<Gate>>) {
        if let Some(s) = self.streams.remove(node) {
            gates.extend(s.pending.into_values().map(|(_, g)| g));
        }
    }

    /// Marks a stream broken: its waiting writes fail; a later plan replaces it.
    fn break_stream(&mut self, node: &str, gates: &mut Vec<Arc<Gate>>) {
        let Some(s) = self.streams.get_mut(node) else {
            return;
        };
        if s.broken {
            return;
        }
        s.broken = true;
        gates.extend(std::mem::take(&mut s.pending).into_values().map(|(_, g)| g));
    }

    /// Live copies of `p` on other nodes (whole or being made).
    fn copies(&self, p: Partition) -> usize {
        self.streams
            .values()
            .filter(|s| !s.broken && s.partitions.contains_key(&p))
            .count()
    }
}

fn fail_all(gates: Vec<Arc<Gate>>, why: &str) {
    for gate in gates {
        gate.lose(why);
    }
}

/// The primary's side of replication, shared by the storage (which ships writes)
/// and the registry (which decides who copies what).
pub struct Replicator {
    me: String,
    remote: Arc<Remote>,
    /// Copies on other nodes every write of a held partition must reach to be
    /// acknowledged (the replica count, capped by the members, less this node's).
    required: AtomicUsize,
    state: Mutex<State>,
    next_stream: Mutex<u64>,
}

impl Replicator {
    /// The replicator of node `me`.
    pub fn new(me: &str, remote: Arc<Remote>) -> Arc<Self> {
        // Stream ids differ across restarts of this node, so a replica never takes a
        // new stream for the continuation of an old one.
        let base = crate::storage::now_ms() << 16;
        let replicator = Arc::new(Self {
            me: me.to_owned(),
            remote,
            required: AtomicUsize::new(0),
            state: Mutex::default(),
            next_stream: Mutex::new(base),
        });
        replicator.remote.set_replicator(&replicator);
        replicator
    }

    fn send(&self, node: &str, stream: &mut OutStream, start: u64, body: replication::Body) -> Option<u64> {
        let seq = stream.next_seq;
        let item = Replication {
            from: self.me.clone(),
            stream: stream.id,
            seq,
            body: Some(body),
            generation: start,
        };
        if self.remote.send(node, item::Body::Replication(item)) {
            stream.next_seq += 1;
            Some(seq)
        } else {
            None
        }
    }

    /// Ships `ops` to the replicas of their partitions, and returns the completion the
    /// local commit must run: `done` runs once it and every replica have the writes.
    /// `local` is called with the lock held, so the local commit order is the stream order.
    ///
    /// A write of a partition that fewer replicas than required copy (they are down,
    /// or their stream broke) is still stored here and shipped where it can be, but
    /// not acknowledged: a resend is answered once it is copied (see
    /// [`crate::actors::pending::confirm_again`]).
    pub fn commit(&self, ops: Vec<Op>, done: Completion, local: impl FnOnce(Vec<Op>, Completion)) {
        let required = self.required.load(Ordering::Relaxed);
        let mut state = self.state.lock().expect("replication lock");
        // (Nothing to check on a single node or without replicas: the common case.)
        let short = (required > 0)
            .then(|| {
                ops.iter()
                    .filter_map(|(tree, key, _)| tree.partition_of(key))
                    .find(|p| state.copies(*p) < required)
            })
            .flatten();
        let done: Completion = match short {
            None => done,
            Some(p) => {
                let why = format!(
                    "{} of {required} other copies of its partition are up",
                    state.copies(p)
                );
                Box::new(move |_| done(Err(StorageError::NotReplicated(why))))
            }
        };
        if state.streams.is_empty() {
            drop(state);
            return local(ops, done);
        }
        let mut shipments: Vec<(String, Vec<handoff_chunk::Record>)> = Vec::new();
        for (node, stream) in state.streams.iter().filter(|(_, s)| !s.broken) {
            let records: Vec<handoff_chunk::Record> = ops
                .iter()
                .filter(|(tree, key, _)| {
                    tree.partition_of(key)
                        .is_some_and(|p| stream.partitions.contains_key(&p))
                })
                .map(|(tree, key, value)| handoff_chunk::Record {
                    tree: tree.number(),
                    key: key.clone(),
                    value: value.clone().unwrap_or_default(),
                    delete: value.is_none(),
                })
                .collect();
            if !records.is_empty() {
                shipments.push((node.clone(), records));
            }
        }
        if shipments.is_empty() {
            drop(state);
            return local(ops, done);
        }
        let spare = shipments.len().saturating_sub(required);
        let gate = Gate::new(shipments.len() + 1, spare, done);
        let mut failed = Vec::new();
        for (node, records) in shipments {
            let stream = state.streams.get_mut(&node).expect("listed above");
            let body = replication::Body::Write(replication::Records { records });
            match self.send(&node, stream, 0, body) {
                Some(seq) => {
                    stream.pending.insert(seq, (Instant::now(), gate.clone()));
                }
                None => {
                    // The replica would miss this write: it is not acknowledged, and the
                    // replica is copied afresh.
                    tracing::warn!(replica = %node, "link to a replica full; breaking its stream");
                    state.break_stream(&node, &mut failed);
                    failed.push(gate.clone());
                }
            }
        }
        let g = gate.clone();
        local(ops, Box::new(move |r| g.arrive(r)));
        drop(state);
        fail_all(failed, "the link to a replica is full");
    }

    /// Sets how many copies on other nodes a write needs to be acknowledged.
    pub fn set_required(&self, copies: usize) {
        self.required.store(copies, Ordering::Relaxed);
    }

    /// A replica answered item `seq` of stream `stream`.
    pub fn acked(&self, node: &str, stream: u64, seq: u64, ok: bool) {
        let mut done = None;
        let mut failed = Vec::new();
        {
            let mut state = self.state.lock().expect("replication lock");
            let Some(s) = state.streams.get_mut(node).filter(|s| s.id == stream) else {
                return;
            };
            if ok {
                done = s.pending.remove(&seq).map(|(_, gate)| gate);
                if let Some((_, start, parts)) = s.syncing.remove(&seq) {
                    for p in parts {
                        // Only the copy that snapshot was for (not a later restart of it).
                        if let Some(c) = s.partitions.get_mut(&p).filter(|c| c.start == start) {
                            c.whole = true;
                        }
                    }
                    tracing::info!(replica = node, stream, "replica copy complete");
                }
            } else {
                tracing::warn!(replica = node, stream, seq, "replica refused the stream");
                state.break_stream(node, &mut failed);
            }
        }
        if let Some(gate) = done {
            gate.arrive(Ok(()));
        }
        fail_all(failed, "a replica refused the write");
    }

    /// `node` is down: its stream ends and the writes waiting for it fail (it may not
    /// have them; their resends are copied elsewhere). Its copy is taken afresh when
    /// it is back.
    pub fn node_down(&self, node: &str) {
        let mut failed = Vec::new();
        self.state
            .lock()
            .expect("replication lock")
            .drop_stream(node, &mut failed);
        if !failed.is_empty() {
            tracing::info!(
                replica = node,
                writes = failed.len(),
                "replica down; its waiting writes fail"
            );
        }
        fail_all(failed, "a replica went down");
    }

    /// Breaks the streams with writes or completed copies unacknowledged for longer than
    /// [`ACK_LIMIT`] (the replica is copied afresh), and sends a keepalive on the others
    /// (so that a link which no longer drains fills up and breaks its stream).
    pub fn tick(&self) {
        let mut failed = Vec::new();
        {
            let mut state = self.state.lock().expect("replication lock");
            let nodes: Vec<String> = state.streams.keys().cloned().collect();
            for node in nodes {
                let s = state.streams.get_mut(&node).expect("listed above");
                if s.broken {
                    continue;
                }
                let late_write = s
                    .pending
                    .values()
                    .next()
                    .is_some_and(|(t, _)| t.elapsed() > ACK_LIMIT);
                let late_copy = s
                    .syncing
                    .values()
                    .next()
                    .is_some_and(|(t, _, _)| t.elapsed() > ACK_LIMIT);
                let alive = !late_write
                    && !late_copy
                    && self
                        .send(&node, s, 0, replication::Body::Keepalive(Empty {}))
                        .is_some();
                if !alive {
                    tracing::warn!(replica = %node, "replica does not acknowledge; breaking its stream");
                    state.break_stream(&node, &mut failed);
                }
            }
        }
        fail_all(failed, "a replica did not acknowledge in time");
    }

    /// Makes the streams copy exactly `want` (replica node -> partitions): stops what is
    /// no longer wanted, replaces broken streams, and starts what is new. Returns the
    /// snapshots to send for the started partitions.
    pub fn plan(&self, want: &BTreeMap<String, BTreeSet<Partition>>) -> Vec<Bootstrap> {
        let mut boots = Vec::new();
        let mut failed = Vec::new();
        {
            let mut state = self.state.lock().expect("replication lock");
            let gone: Vec<String> = state
                .streams
                .keys()
                .filter(|n| want.get(*n).is_none_or(BTreeSet::is_empty))
                .cloned()
                .collect();
            for node in gone {
                let s = state.streams.get_mut(&node).expect("listed above");
                if s.partitions.is_empty() {
                    // Stopped earlier: it goes once the writes shipped before are in.
                    if s.pending.is_empty() || s.broken {
                        state.drop_stream(&node, &mut failed);
                    }
                    continue;
                }
                let parts: Vec<u32> = s.partitions.keys().map(|p| u32::from(*p)).collect();
                let stop = replication::Body::Stop(replication::Partitions { partitions: parts });
                if !s.broken && self.send(&node, s, 0, stop).is_some() {
                    // The replica applies (and acknowledges) what was shipped before, then
                    // drops the copies; nothing new is shipped to it.
                    s.partitions.clear();
                    s.syncing.clear();
                } else {
                    state.drop_stream(&node, &mut failed);
                }
            }
            for (node, parts) in want.iter().filter(|(_, p)| !p.is_empty()) {
                if let Some(s) = state.streams.get_mut(node).filter(|s| s.broken) {
                    if s.broken_seen.get_or_insert_with(Instant::now).elapsed() < RESTART_AFTER {
                        continue;
                    }
                    state.drop_stream(node, &mut failed);
                }
                if !state.streams.contains_key(node) {
                    let mut next = self.next_stream.lock().expect("stream ids");
                    *next += 1;
                    state.streams.insert(
                        node.clone(),
                        OutStream {
                            id: *next,
                            next_seq: 1,
                            partitions: BTreeMap::new(),
                            pending: BTreeMap::new(),
                            syncing: BTreeMap::new(),
                            broken: false,
                            broken_seen: None,
                        },
                    );
                }
                let stream = state.streams.get_mut(node).expect("inserted above");
                let stop: Vec<Partition> = stream
                    .partitions
                    .keys()
                    .filter(|p| !parts.contains(p))
                    .copied()
                    .collect();
                if !stop.is_empty() {
                    let body = replication::Body::Stop(replication::Partitions {
                        partitions: stop.iter().map(|p| u32::from(*p)).collect(),
                    });
                    if self.send(node, stream, 0, body).is_none() {
                        state.break_stream(node, &mut failed);
                        continue;
                    }
                    for p in &stop {
                        stream.partitions.remove(p);
                    }
                }
                let start: Vec<Partition> = parts
                    .iter()
                    .filter(|p| !stream.partitions.contains_key(p))
                    .copied()
                    .collect();
                if start.is_empty() {
                    continue;
                }
                let body = replication::Body::Start(replication::Partitions {
                    partitions: start.iter().map(|p| u32::from(*p)).collect(),
                });
                let Some(seq) = self.send(node, stream, 0, body) else {
                    state.break_stream(node, &mut failed);
                    continue;
                };
                tracing::info!(replica = %node, stream = stream.id, partitions = start.len(), "copying partitions to a replica");
                for p in &start {
                    stream.partitions.insert(
                        *p,
                        Copy {
                            start: seq,
                            whole: false,
                        },
                    );
                }
                boots.push(Bootstrap {
                    node: node.clone(),
                    stream: stream.id,
                    start: seq,
                    partitions: start,
                });
            }
        }
        fail_all(failed, "the replica set changed");
        boots
    }

    /// Puts an item of `boot`'s snapshot on its stream; a `synced` item is then
    /// awaited: its partitions count as copied once the replica acknowledges it.
    /// `Gone` once the stream was replaced or none of the partitions is still on the
    /// copy this snapshot began.
    pub fn send_snapshot(&self, boot: &Bootstrap, body: replication::Body) -> Result<(), StreamError> {
        let mut state = self.state.lock().expect("replication lock");
        let Some(s) = state
            .streams
            .get_mut(&boot.node)
            .filter(|s| s.id == boot.stream && !s.broken)
        else {
            return Err(StreamError::Gone);
        };
        let current = |p: &Partition| s.partitions.get(p).is_some_and(|c| c.start == boot.start);
        if !boot.partitions.iter().any(current) {
            return Err(StreamError::Gone);
        }
        let synced = matches!(body, replication::Body::Synced(_));
        match self.send(&boot.node, s, boot.start, body) {
            Some(seq) => {
                if synced {
                    s.syncing
                        .insert(seq, (Instant::now(), boot.start, boot.partitions.clone()));
                }
                Ok(())
            }
            None => Err(StreamError::Full),
        }
    }

    /// A snapshot could not be completed: the stream is broken, so that the next plan
    /// starts the copies again on a new one.
    pub fn abandon(&self, boot: &Bootstrap) {
        let mut failed = Vec::new();
        {
            let mut state = self.state.lock().expect("replication lock");
            if state.streams.get(&boot.node).is_some_and(|s| s.id == boot.stream) {
                state.break_stream(&boot.node, &mut failed);
            }
        }
        fail_all(failed, "a replica's copy could not be made");
    }

    /// For each partition, the replica nodes whose copy is whole.
    pub fn synced(&self) -> Vec<BTreeSet<String>> {
        let mut out = vec![BTreeSet::new(); PARTITIONS as usize];
        for (node, s) in self.state.lock().expect("replication lock").streams.iter() {
            if s.broken {
                continue;
            }
            for p in s.whole() {
                out[p as usize].insert(node.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterView;

    use crate::storage::TreeId;

    fn ops(user: &str) -> Vec<Op> {
        vec![(TreeId::Accounts, user.as_bytes().to_vec(), Some(b"rec".to_vec()))]
    }

    fn completion() -> (Completion, std::sync::mpsc::Receiver<Result<(), StorageError>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
            rx,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_completes_only_once_the_local_flush_and_every_replica_have_it() {
        let r = Replicator::new("p", Remote::new("p", ClusterView::default()));
        let p = crate::partition::of_user("bob");
        let want = BTreeMap::from([("r1".to_owned(), BTreeSet::from([p]))]);
        let boots = r.plan(&want);
        assert_eq!(boots.len(), 1);
        let stream = boots[0].stream;

        let (done, rx) = completion();
        let mut local_done = None;
        r.commit(ops("bob"), done, |_, d| local_done = Some(d));
        (local_done.take().expect("local commit called"))(Ok(()));
        assert!(
            rx.try_recv().is_err(),
            "completed before the replica acknowledged"
        );
        // item 1 was `start`; the write is item 2.
        r.acked("r1", stream, 2, true);
        assert!(rx.try_recv().unwrap().is_ok());

        // A write of another partition is not shipped and completes on the local flush.
        let other = (0..1000)
            .map(|i| format!("u{i}"))
            .find(|u| crate::partition::of_user(u) != p)
            .unwrap();
        let (done, rx) = completion();
        r.commit(ops(&other), done, |_, d| d(Ok(())));
        assert!(rx.try_recv().unwrap().is_ok());

        // With one copy required: a refusal fails the waiting write; so does a replica
        // going down (it may lack the write).
        r.set_required(1);
        let (done, rx) = completion();
        r.commit(ops("bob"), done, |_, d| d(Ok(())));
        r.acked("r1", stream, 3, false);
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(StorageError::NotReplicated(_))
        ));
        assert!(r.plan(&want).is_empty(), "not replaced at once");
        tokio::time::advance(RESTART_AFTER * 2).await;
        let boots = r.plan(&want);
        assert_eq!(
            boots.len(),
            1,
            "a broken stream is replaced and the copy restarted"
        );
        assert_ne!(boots[0].stream, stream);
        let (done, rx) = completion();
        r.commit(ops("bob"), done, |_, d| d(Ok(())));
        assert!(rx.try_recv().is_err());
        // A replica that goes down fails the writes waiting for it (it may lack them).
        r.node_down("r1");
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(StorageError::NotReplicated(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_counts_as_whole_once_its_own_snapshot_is_acknowledged() {
        let r = Replicator::new("p", Remote::new("p", ClusterView::default()));
        let want = BTreeMap::from([("r1".to_owned(), BTreeSet::from([3, 4]))]);
        let boot = r.plan(&want).pop().unwrap();
        assert_eq!(boot.partitions, vec![3, 4]);
        assert!(r.plan(&want).is_empty(), "nothing new to start");
        let synced = || {
            replication::Body::Synced(replication::Partitions {
                partitions: vec![3, 4],
            })
        };
        r.send_snapshot(&boot, synced()).unwrap();
        assert!(r.synced()[3].is_empty());
        // item 1 was `start`, item 2 `synced`.
        r.acked("r1", boot.stream, 2, true);
        assert!(r.synced()[3].contains("r1") && r.synced()[4].contains("r1"));

        // 4 is stopped and started again on the same stream: the first snapshot's items
        // are moot for it, and only the new snapshot's acknowledgement makes it whole.
        r.plan(&BTreeMap::from([("r1".to_owned(), BTreeSet::from([3]))]));
        let again = r.plan(&want).pop().unwrap();
        assert_eq!(again.partitions, vec![4]);
        assert_eq!(again.stream, boot.stream);
        let stale = Bootstrap {
            node: "r1".into(),
            stream: boot.stream,
            start: boot.start,
            partitions: vec![4],
        };
        assert_eq!(r.send_snapshot(&stale, synced()), Err(StreamError::Gone));
        assert!(r.synced()[4].is_empty());
        r.send_snapshot(&again, synced()).unwrap();
        // items 3 `stop`, 4 `start`, 5 `synced`.
        r.acked("r1", boot.stream, 5, true);
        assert!(r.synced()[4].contains("r1"));

        // The replica goes down: its copies no longer count.
        r.node_down("r1");
        assert!(r.synced()[3].is_empty());
        let user3 = (0..100_000)
            .map(|i| format!("u{i}"))
            .find(|u| crate::partition::of_user(u) == 3)
            .unwrap();

        // With a copy required and none up, a write is stored here but not acknowledged.
        r.set_required(1);
        let (done, rx) = completion();
        let mut stored = false;
        r.commit(ops(&user3), done, |_, d| {
            stored = true;
            d(Ok(()))
        });
        assert!(stored);
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(StorageError::NotReplicated(_))
        ));
    }
}
