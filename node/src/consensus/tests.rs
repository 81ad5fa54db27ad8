//! The driver with real sled databases and real syncs, several nodes in one process
//! joined by an in-memory transport (no ractor: these are plain threads).

use super::disk::Disk;
use super::driver::{self, Handle, ProposeError, Sync, Timing, Transport};
use super::wal::Wal;
use chat_consensus::eraftpb::Snapshot;
use chat_consensus::{GroupId, LogWrite, NodeId, RaftConfig};
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::{AccountRecord, Command, Outcome, outcome};
use chat_state::placement::{self, Partition};
use prost::Message as _;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// Delivers each peer's messages to its driver, unless the link is cut.
#[derive(Clone, Default)]
struct Net {
    handles: Arc<Mutex<HashMap<NodeId, Handle>>>,
    cut: Arc<Mutex<BTreeSet<NodeId>>>,
}

struct Link {
    from: NodeId,
    net: Net,
}

impl Transport for Link {
    fn send(&mut self, to: NodeId, messages: Vec<(GroupId, Vec<u8>)>) {
        let cut = self.net.cut.lock().unwrap();
        if cut.contains(&self.from) || cut.contains(&to) {
            return;
        }
        if let Some(handle) = self.net.handles.lock().unwrap().get(&to) {
            for (group, message) in messages {
                handle.step(group, message);
            }
        }
    }
}

/// sled's flush, counted.
#[derive(Clone)]
struct Flush(sled::Db, Arc<Mutex<u64>>);

impl Sync for Flush {
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(std::io::Error::other)?;
        *self.1.lock().unwrap() += 1;
        Ok(())
    }
}

fn timing() -> Timing {
    Timing {
        placement_ticks: 5,
        answer_within: Duration::from_secs(2),
        tick: Duration::from_millis(10),
        raft: RaftConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_threshold: 20,
            compact_keep: 5,
            compact_keep_for_followers: 10,
            compact_keep_silent_ticks: 20,
            ..RaftConfig::default()
        },
        flush_every: Duration::from_millis(50),
    }
}

struct TestNode {
    id: NodeId,
    db: sled::Db,
    handle: Handle,
    thread: Option<std::thread::JoinHandle<()>>,
    syncs: Arc<Mutex<u64>>,
}

impl TestNode {
    fn start(id: NodeId, dir: &std::path::Path, net: &Net) -> Self {
        Self::start_timed(id, dir, net, timing())
    }

    fn start_timed(id: NodeId, dir: &std::path::Path, net: &Net, timing: Timing) -> Self {
        let db = open_db(&dir.join(id.to_string()));
        // Small, so that tests rewrite the log file too.
        let log = Wal::open(&dir.join(format!("{id}-raft")), 8 << 10).unwrap();
        let syncs = Arc::new(Mutex::new(0));
        let link = Link {
            from: id,
            net: net.clone(),
        };
        let disk = Disk::open(&db).unwrap();
        let logger = chat_consensus::logger::discard();
        let settings = driver::Settings {
            id,
            replicas: 3,
            timing,
            bootstrap: Vec::new(),
        };
        let (handle, thread) = driver::start(
            settings,
            disk,
            log,
            Flush(db.clone(), syncs.clone()),
            link,
            logger,
        )
        .unwrap();
        net.handles.lock().unwrap().insert(id, handle.clone());
        Self {
            id,
            db,
            handle,
            thread: Some(thread),
            syncs,
        }
    }

    fn stop(&mut self, net: &Net) {
        net.handles.lock().unwrap().remove(&self.id);
        self.handle.stop();
        self.thread.take().unwrap().join().unwrap();
    }

    fn record(&self, key: &[u8]) -> Option<Vec<u8>> {
        Disk::open(&self.db).unwrap().record(key).unwrap()
    }
}

/// Opens a node's database; only the driver's flushes make its records durable, as in
/// the node. A database just closed in this process may still be locked for a moment
/// (sled's background work holds it after the last handle is dropped): retried until
/// [`DEADLINE`].
fn open_db(path: &std::path::Path) -> sled::Db {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match sled::Config::new().path(path).flush_every_ms(None).open() {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "database still locked; retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot open {}: {e}", path.display()),
        }
    }
}

/// Polls `done` until it holds, failing after [`DEADLINE`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Proposes once; the driver answers every proposal (within `answer_within`, 2 s here).
fn ask(handle: &Handle, p: Partition, command: &[u8]) -> Result<Outcome, ProposeError> {
    let (tx, rx) = std::sync::mpsc::channel();
    handle.propose(p, command.to_vec(), Box::new(move |r| drop(tx.send(r))));
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the driver answers every proposal")
}

/// Asks for a read barrier once; the driver answers every one.
fn barrier(handle: &Handle, p: Partition) -> Result<(), ProposeError> {
    let (tx, rx) = std::sync::mpsc::channel();
    handle.read(p, Box::new(move |r| drop(tx.send(r))));
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the driver answers every read barrier")
}

/// Proposes through whichever node leads, following leader hints, until a deadline.
fn propose(nodes: &[&TestNode], p: Partition, op: Op) -> outcome::Result {
    let command = Command { op: Some(op) }.encode_to_vec();
    let start = Instant::now();
    let mut at = 0;
    while start.elapsed() < DEADLINE {
        match ask(&nodes[at].handle, p, &command) {
            Ok(outcome) => return outcome.result.unwrap(),
            Err(ProposeError::NotLeader {
                leader: Some(leader), ..
            }) => {
                at = nodes
                    .iter()
                    .position(|n| n.id == leader)
                    .unwrap_or((at + 1) % nodes.len());
            }
            Err(_) => at = (at + 1) % nodes.len(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no leader of partition {p} took the proposal within {DEADLINE:?}");
}

fn user_in(p: Partition, n: usize) -> String {
    placement::user_named_in(p, "user", n)
}

fn register(user: &str) -> Op {
    Op::CreateAccount(command::CreateAccount {
        user: user.into(),
        record: Some(AccountRecord {
            password_hash: "h".into(),
            created_at_ms: 1,
            ..AccountRecord::default()
        }),
    })
}

fn send(to: &str, client_id: &str) -> Op {
    Op::Append(command::Append {
        user: to.into(),
        origin: chat_state::keys::private_origin("alice", client_id),
        entry: Some(chat_protocol::internal::InboxEntry {
            from: "alice".into(),
            text: client_id.into(),
            ..Default::default()
        }),
        require_account: true,
        now_ms: 1,
        retention: None,
    })
}

#[test]
fn a_one_node_group_applies_commands_durably_and_keeps_them_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let p = 5;
    let bob = user_in(p, 0);
    let mut node = TestNode::start(1, dir.path(), &net);
    node.handle.create(p, vec![1]);
    assert_eq!(
        propose(&[&node], p, register(&bob)),
        outcome::Result::Done(Default::default())
    );
    assert_eq!(
        propose(&[&node], p, register(&bob)),
        outcome::Result::Exists(Default::default())
    );
    let first = propose(&[&node], p, send(&bob, "m1"));
    assert!(
        matches!(first, outcome::Result::Appended(ref a) if a.seq == 1),
        "{first:?}"
    );
    // Each round that wrote syncs the log; the records are synced apart, about every
    // `flush_every`.
    wait_until("the log and the records synced", || {
        let status = node.handle.status();
        status.log_syncs > 0 && status.record_syncs > 0 && *node.syncs.lock().unwrap() > 0
    });
    node.stop(&net);
    drop(node);
    let node = TestNode::start(1, dir.path(), &net);
    // The group comes back from disk: no create.
    assert_eq!(
        propose(&[&node], p, register(&bob)),
        outcome::Result::Exists(Default::default())
    );
    match propose(&[&node], p, send(&bob, "m1")) {
        outcome::Result::Duplicate(a) => assert_eq!(a.seq, 1),
        other => panic!("a resend after the restart is a duplicate, got {other:?}"),
    }
    let second = propose(&[&node], p, send(&bob, "m2"));
    assert!(
        matches!(second, outcome::Result::Appended(ref a) if a.seq == 2),
        "{second:?}"
    );
}

/// Copies a folder's files as they are now: what a `kill -9` would leave on disk.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn records_a_power_cut_lost_are_applied_again_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let net = Net::default();
    let p = 5;
    let bob = user_in(p, 0);
    // The records are never synced after the group's creation: everything acknowledged
    // since lives in the log only (and the log must keep it: no compaction past them).
    let never = Timing {
        flush_every: Duration::from_secs(3600),
        ..timing()
    };
    let mut node = TestNode::start_timed(1, dir.path(), &net, never);
    node.handle.create(p, vec![1]);
    propose(&[&node], p, register(&bob));
    // A power cut keeps what was synced: the records as of about now...
    copy_dir(&dir.path().join("1"), &crashed.path().join("1"));
    let sent = 60;
    for i in 1..=sent {
        let outcome = propose(&[&node], p, send(&bob, &format!("m{i}")));
        assert!(
            matches!(outcome, outcome::Result::Appended(ref a) if a.seq == i),
            "{outcome:?}"
        );
    }
    node.stop(&net);
    // ...and the log as of its last sync.
    copy_dir(&dir.path().join("1-raft"), &crashed.path().join("1-raft"));
    drop(node);
    let node = TestNode::start(1, crashed.path(), &net);
    for i in 1..=sent {
        match propose(&[&node], p, send(&bob, &format!("m{i}"))) {
            outcome::Result::Duplicate(a) => assert_eq!(a.seq, i),
            other => panic!("m{i} was acknowledged before the crash, got {other:?}"),
        }
    }
    let next = propose(&[&node], p, send(&bob, "after"));
    assert!(
        matches!(next, outcome::Result::Appended(ref a) if a.seq == sent + 1),
        "{next:?}"
    );
}

/// Node 1 alone in `p`'s group, `user` registered and sent m1 to m3; stopped.
fn one_node_with_three_messages(dir: &std::path::Path, net: &Net, p: Partition, user: &str) -> TestNode {
    let mut node = TestNode::start(1, dir, net);
    node.handle.create(p, vec![1]);
    propose(&[&node], p, register(user));
    for i in 1..=3 {
        propose(&[&node], p, send(user, &format!("m{i}")));
    }
    node.stop(net);
    node
}

#[test]
fn a_snapshot_the_records_hold_and_the_log_file_lost_is_written_to_it_at_start() {
    // A crash between a snapshot round's sync of the records and its sync of the log
    // leaves records holding a snapshot the log file never recorded. The start installs
    // it in the log, and must write the file whole before appending after it: otherwise
    // the next start installs it again over everything that followed, and finds the
    // records beyond the end of the log (found by the simulation, seed 901623).
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let p = 5;
    let group = p as GroupId;
    let bob = user_in(p, 0);
    let node = one_node_with_three_messages(dir.path(), &net, p, &bob);
    let (_, logs) = Wal::open(&dir.path().join("1-raft"), 8 << 10).unwrap();
    let log = logs.unwrap().remove(&group).unwrap();
    let disk = Disk::open(&node.db).unwrap();
    let applied = disk.applied_state().unwrap()[&group].index;
    let last = log.entries.last().expect("entries after the first snapshot");
    assert_eq!(applied, last.index, "the records are synced at the stop");
    assert!(applied > log.snapshot.index);
    // The records say a snapshot was installed at their applied index.
    let mut snapshot = Snapshot::default();
    let meta = snapshot.mut_metadata();
    (meta.index, meta.term) = (applied, last.term);
    meta.set_conf_state(log.conf_state.clone());
    let mut batch = sled::Batch::default();
    let write = LogWrite {
        snapshot: Some(snapshot),
        applied: Some(applied),
        ..LogWrite::default()
    };
    disk.write_applied(&mut batch, group, &write);
    disk.apply(batch).unwrap();
    node.db.flush().unwrap();
    drop(disk);
    drop(node);
    // Started once, with more appended after the snapshot...
    let mut node = TestNode::start(1, dir.path(), &net);
    let next = propose(&[&node], p, send(&bob, "m4"));
    assert!(
        matches!(next, outcome::Result::Appended(ref a) if a.seq == 4),
        "{next:?}"
    );
    node.stop(&net);
    drop(node);
    // ...and again: everything is there.
    let mut node = TestNode::start(1, dir.path(), &net);
    for i in 1..=4 {
        match propose(&[&node], p, send(&bob, &format!("m{i}"))) {
            outcome::Result::Duplicate(a) => assert_eq!(a.seq, i),
            other => panic!("m{i} was acknowledged before the restart, got {other:?}"),
        }
    }
    node.stop(&net);
}

#[test]
fn a_data_folder_that_kept_the_log_in_sled_is_moved_to_the_log_file() {
    let net = Net::default();
    let p = 5;
    let bob = user_in(p, 0);
    // Whether the log file is missing, or empty (created, then a crash before the move).
    for empty_file in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let node = one_node_with_three_messages(dir.path(), &net, p, &bob);
        // The same log, as the previous format kept it.
        let raft_dir = dir.path().join("1-raft");
        let (_, logs) = Wal::open(&raft_dir, 8 << 10).unwrap();
        Disk::open(&node.db)
            .unwrap()
            .write_legacy(&logs.unwrap())
            .unwrap();
        std::fs::remove_dir_all(&raft_dir).unwrap();
        if empty_file {
            Wal::open(&raft_dir, 8 << 10).unwrap();
        }
        drop(node);
        let mut node = TestNode::start(1, dir.path(), &net);
        match propose(&[&node], p, send(&bob, "m1")) {
            outcome::Result::Duplicate(a) => assert_eq!(a.seq, 1, "empty file: {empty_file}"),
            other => panic!("moved log lost m1 (empty file: {empty_file}): {other:?}"),
        }
        let next = propose(&[&node], p, send(&bob, "m4"));
        assert!(
            matches!(next, outcome::Result::Appended(ref a) if a.seq == 4),
            "{next:?}"
        );
        node.stop(&net);
        // Moved once: the database no longer holds the log.
        assert!(Disk::open(&node.db).unwrap().load_legacy().unwrap().is_empty());
    }
}

#[test]
fn three_nodes_keep_serving_without_one_and_it_catches_up_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let partitions: Vec<Partition> = vec![1, 2, 3];
    let mut nodes: Vec<TestNode> = (1..=3).map(|id| TestNode::start(id, dir.path(), &net)).collect();
    for node in &nodes {
        for p in &partitions {
            node.handle.create(*p, vec![1, 2, 3]);
        }
    }
    let users: Vec<(Partition, String)> = partitions.iter().map(|p| (*p, user_in(*p, 0))).collect();
    for (p, user) in &users {
        let all: Vec<&TestNode> = nodes.iter().collect();
        assert_eq!(
            propose(&all, *p, register(user)),
            outcome::Result::Done(Default::default())
        );
        for i in 0..30 {
            propose(&all, *p, send(user, &format!("a{i}")));
        }
    }
    // Node 2 goes away; the others still form a majority of every group.
    nodes[1].stop(&net);
    let up: Vec<&TestNode> = vec![&nodes[0], &nodes[2]];
    for (p, user) in &users {
        for i in 0..30 {
            propose(&up, *p, send(user, &format!("b{i}")));
        }
    }
    nodes.remove(1);
    nodes.insert(1, TestNode::start(2, dir.path(), &net));
    // Everything acknowledged reaches node 2's records (by log or by snapshot: the
    // logs were compacted meanwhile).
    let start = Instant::now();
    for (p, user) in &users {
        let last = chat_state::keys::seq_key(
            *p,
            chat_state::keys::tree::INBOX,
            user,
            chat_state::keys::kind::ENTRY,
            60,
        );
        while nodes[1].record(&last).is_none() {
            assert!(
                start.elapsed() < DEADLINE,
                "node 2 did not catch up on partition {p}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for node in &mut nodes {
        node.stop(&net);
    }
}

/// Registers `user` in `p`, finds `p`'s leader among `nodes` (the one that answers) and
/// cuts its links.
fn cut_the_leader<'a>(nodes: &'a [TestNode], net: &Net, p: Partition, user: &str) -> &'a TestNode {
    let all: Vec<&TestNode> = nodes.iter().collect();
    propose(&all, p, register(user));
    let probe = Command {
        op: Some(register(user)),
    }
    .encode_to_vec();
    let leader = nodes
        .iter()
        .find(|n| ask(&n.handle, p, &probe).is_ok())
        .expect("a leader");
    net.cut.lock().unwrap().insert(leader.id);
    leader
}

#[test]
fn a_minority_does_not_acknowledge() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let p = 4;
    let nodes: Vec<TestNode> = (1..=3).map(|id| TestNode::start(id, dir.path(), &net)).collect();
    for node in &nodes {
        node.handle.create(p, vec![1, 2, 3]);
    }
    let bob = user_in(p, 0);
    // The leader, cut off: it can no longer commit, so it answers nothing that could
    // later be lost.
    let leader = cut_the_leader(&nodes, &net, p, &bob);
    let answer = ask(
        &leader.handle,
        p,
        &Command {
            op: Some(send(&bob, "cut")),
        }
        .encode_to_vec(),
    );
    assert!(
        matches!(
            answer,
            Err(ProposeError::Dropped | ProposeError::NotLeader { .. } | ProposeError::TimedOut)
        ),
        "a cut-off leader acknowledged: {answer:?}"
    );
    // Nor does it confirm a read: its records may be behind the others' by now.
    let read = barrier(&leader.handle, p);
    assert!(read.is_err(), "a cut-off leader confirmed a read: {read:?}");
    // The majority elects another leader and goes on.
    let others: Vec<&TestNode> = nodes.iter().filter(|n| n.id != leader.id).collect();
    assert!(matches!(
        propose(&others, p, send(&bob, "majority")),
        outcome::Result::Appended(_)
    ));
}

/// A leader cut off from its followers cannot commit; before check-quorum makes it step
/// down (ten ticks), the driver answers the proposal `TimedOut` at `answer_within`.
#[test]
fn a_proposal_that_cannot_commit_is_answered_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let p = 6;
    let quick = Timing {
        answer_within: Duration::from_millis(30),
        ..timing()
    };
    let nodes: Vec<TestNode> = (1..=3)
        .map(|id| TestNode::start_timed(id, dir.path(), &net, quick.clone()))
        .collect();
    for node in &nodes {
        node.handle.create(p, vec![1, 2, 3]);
    }
    let carol = user_in(p, 0);
    let leader = cut_the_leader(&nodes, &net, p, &carol);
    let answer = ask(
        &leader.handle,
        p,
        &Command {
            op: Some(send(&carol, "stuck")),
        }
        .encode_to_vec(),
    );
    assert_eq!(answer, Err(ProposeError::TimedOut));
}

#[test]
fn a_draining_node_hands_every_leadership_to_the_others_which_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let partitions: Vec<Partition> = vec![1, 2, 3, 4];
    let mut nodes: Vec<TestNode> = (1..=3).map(|id| TestNode::start(id, dir.path(), &net)).collect();
    for node in &nodes {
        for p in &partitions {
            node.handle.create(*p, vec![1, 2, 3]);
        }
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    for p in &partitions {
        propose(&all, *p, register(&user_in(*p, 0)));
    }
    // The node that leads the most groups drains: it hands every one of them over.
    let draining = nodes.iter().max_by_key(|n| n.handle.status().leading).unwrap();
    assert!(draining.handle.status().leading > 0);
    draining.handle.drain();
    let others: Vec<&TestNode> = nodes.iter().filter(|n| n.id != draining.id).collect();
    wait_until("the others to lead every group", || {
        draining.handle.status().movable == 0
            && others.iter().map(|n| n.handle.status().leading).sum::<usize>() == partitions.len()
    });
    // The draining node is still a voter: the others commit with it, and without it.
    for p in &partitions {
        assert!(matches!(
            propose(&others, *p, send(&user_in(*p, 0), "after")),
            outcome::Result::Appended(_)
        ));
    }
    let id = draining.id;
    let at = nodes.iter().position(|n| n.id == id).unwrap();
    nodes[at].stop(&net);
    nodes.remove(at);
    for p in &partitions {
        let up: Vec<&TestNode> = nodes.iter().collect();
        assert!(matches!(
            propose(&up, *p, send(&user_in(*p, 0), "without")),
            outcome::Result::Appended(_)
        ));
    }
    for node in &mut nodes {
        node.stop(&net);
    }
}

#[test]
fn requests_during_a_leadership_transfer_wait_for_the_new_leader_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let net = Net::default();
    let p: Partition = 5;
    let mut nodes: Vec<TestNode> = (1..=3).map(|id| TestNode::start(id, dir.path(), &net)).collect();
    for node in &nodes {
        node.handle.create(p, vec![1, 2, 3]);
    }
    let all: Vec<&TestNode> = nodes.iter().collect();
    propose(&all, p, register(&user_in(p, 0)));
    let command = |i: usize| {
        Command {
            op: Some(send(&user_in(p, 0), &format!("during-{i}"))),
        }
        .encode_to_vec()
    };
    let leader = nodes
        .iter()
        .find(|n| ask(&n.handle, p, &command(0)).is_ok())
        .expect("a leader");
    // The leader hands over; requests keep coming to it meanwhile.
    leader.handle.drain();
    let mut answers = Vec::new();
    for i in 1..=20 {
        answers.push(ask(&leader.handle, p, &command(i)));
        answers.push(barrier(&leader.handle, p).map(|()| Outcome::default()));
    }
    for answer in &answers {
        assert!(
            matches!(
                answer,
                Ok(_) | Err(ProposeError::NotLeader { leader: Some(_), .. })
            ),
            "{answer:?}"
        );
    }
    assert!(
        answers.iter().any(|a| a.is_err()),
        "the leadership moved away meanwhile"
    );
    for node in &mut nodes {
        node.stop(&net);
    }
}
