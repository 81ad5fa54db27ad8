//! The thread that runs this node's Raft groups: it feeds [`MultiRaft`] with proposals,
//! peer messages and ticks, and executes its rounds: send what may go at once, append
//! every group's log changes to the log file and start its sync (on the log's thread),
//! apply committed commands to the partitions' records (one sled batch) and answer
//! their proposers while the disk syncs, wait for the sync, then send what had to wait
//! for it. A committed entry is durable on a majority already (this node's share by an
//! earlier round's sync), so answering it does not wait for this one.
//!
//! The records are not synced every round: a flusher thread syncs sled about once per
//! `Timing::flush_every`, and only then may the log drop the entries those records hold
//! (a restart applies again what the records had not made durable). A round that
//! installs a snapshot syncs the records before the log, so the log never starts after
//! what the records hold.
//!
//! It is a plain OS thread, not an actor on the async runtime: a round's sync blocks,
//! and nothing else should wait behind it. Callers talk to it through [`Handle`]; their
//! answers come back through the closures they hand in, run on this thread (so a
//! closure only sends or casts).

use super::disk::{self, Disk, Pending};
use super::wal::Wal;
use chat_consensus::{Error as RaftError, GroupId, MultiRaft, NodeId, Outgoing, RaftConfig};
use chat_protocol::internal::Outcome;
use chat_state::placement::Partition;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Why a proposal or a read was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Another replica leads the partition (or none is known).
    #[error("not the leader of partition {partition} (leader: {leader:?})")]
    NotLeader {
        /// The partition.
        partition: Partition,
        /// The leader this node knows of.
        leader: Option<NodeId>,
    },
    /// The proposal's place in the log went to another entry (a leader change): it was
    /// not applied as proposed; a resend is deduplicated.
    #[error("proposal dropped by a leader change")]
    Dropped,
    /// This node has no replica of the partition.
    #[error("no replica of partition {0} here")]
    NoReplica(Partition),
    /// The driver stopped (shutdown, or a storage failure).
    #[error("consensus stopped")]
    Stopped,
    /// No outcome within `Timing::answer_within` (no majority to commit it, or to
    /// confirm a read): the outcome is unknown; a resend is deduplicated.
    #[error("no answer in time: no majority reachable")]
    TimedOut,
}

/// What the driver answers a proposal with.
pub type ProposeReply = Box<dyn FnOnce(Result<Outcome, ProposeError>) + Send>;
/// What the driver answers a read barrier with.
pub type ReadReply = Box<dyn FnOnce(Result<(), ProposeError>) + Send>;

/// Sends Raft messages to peers: one call per peer per round, carrying every group's
/// messages for it.
pub trait Transport: Send + 'static {
    /// Hands `messages` (group, encoded Raft message) to the link to `to`.
    fn send(&mut self, to: NodeId, messages: Vec<(GroupId, Vec<u8>)>);
}

/// Makes the records durable (sled's flush, then `fdatasync`); cloned into the flusher
/// thread.
pub trait Sync: Clone + Send + 'static {
    /// Returns once everything applied to the database so far is on disk.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// Timing of the driver, injected so that tests can shorten it.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Length of a Raft tick.
    pub tick: Duration,
    /// Raft's settings, in ticks.
    pub raft: RaftConfig,
    /// Ticks between two looks at placement (moving groups towards their targets).
    pub placement_ticks: u32,
    /// How long a proposal or a read barrier may wait for its outcome before it is
    /// answered [`ProposeError::TimedOut`].
    pub answer_within: Duration,
    /// How often the records are synced (when anything was applied), letting the log
    /// drop what they hold.
    pub flush_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            tick: Duration::from_millis(100),
            raft: RaftConfig {
                election_ticks: 10,
                heartbeat_ticks: 2,
                ..RaftConfig::default()
            },
            placement_ticks: 5,
            answer_within: Duration::from_secs(10),
            flush_every: Duration::from_secs(1),
        }
    }
}

/// What this node sees of consensus, refreshed every tick (for `/cluster`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Groups this node has a replica of.
    pub groups: usize,
    /// Of those, groups it leads.
    pub leading: usize,
    /// Groups whose replica here knows no leader.
    pub leaderless: usize,
    /// Groups led here that are not whole (a voter behind or silent, a change under
    /// way, or not on placement's voters yet).
    pub unsettled: usize,
    /// Groups led here that have another voter to take over (what draining waits for).
    pub movable: usize,
    /// Members in the metadata group's records, as applied here.
    pub members: usize,
    /// Syncs of the Raft log so far (one per round that wrote anything).
    pub log_syncs: u64,
    /// Syncs of the records so far.
    pub record_syncs: u64,
}

impl Status {
    /// Every group here has a live leader, and every group led here is whole: as this
    /// node sees it (a cluster is settled when every node says so).
    pub fn settled(&self) -> bool {
        self.groups > 0 && self.leaderless == 0 && self.unsettled == 0
    }
}

enum Input {
    Propose {
        group: GroupId,
        command: Vec<u8>,
        reply: ProposeReply,
    },
    Read {
        group: GroupId,
        reply: ReadReply,
    },
    Peer {
        group: GroupId,
        message: Vec<u8>,
    },
    Create {
        group: GroupId,
        voters: Vec<NodeId>,
        data: Vec<u8>,
    },
    /// The flusher synced the records, applied up to these indexes (or failed).
    Flushed(std::io::Result<BTreeMap<GroupId, u64>>),
    /// Start a new cluster with these first members, if this node has no group yet.
    Bootstrap(Vec<(NodeId, String)>),
    /// Hand the leadership of every group led here to another voter (before stopping).
    Drain,
    Stop,
}

type Token = u64;

/// A request waiting for its group to have a leader.
enum Held {
    Propose(Vec<u8>, ProposeReply),
    Read(ReadReply),
}

enum Waiter {
    Propose(ProposeReply),
    Read(ReadReply),
}

/// The way into the driver thread.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Input>,
    /// The node started with no consensus state at all.
    fresh: bool,
    /// Groups this node had a replica of when it started (restored or bootstrapped).
    groups_at_start: usize,
    entries: Arc<AtomicU64>,
    status: Arc<Mutex<Status>>,
    led: Arc<Mutex<Vec<Partition>>>,
    placed: Arc<Mutex<Placed>>,
}

/// The members as this node's replica of the metadata group last applied them, and how
/// many voters a partition has: where placement puts each partition.
#[derive(Debug, Default)]
struct Placed {
    members: BTreeMap<NodeId, chat_protocol::internal::MemberRecord>,
    voters: usize,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl Handle {
    /// Proposes a command (an encoded `chat.internal.Command`) to `partition`; `reply`
    /// gets its outcome once it is committed and applied here.
    pub fn propose(&self, partition: Partition, command: Vec<u8>, reply: ProposeReply) {
        let input = Input::Propose {
            group: GroupId::from(partition),
            command,
            reply,
        };
        if let Err(mpsc::SendError(Input::Propose { reply, .. })) = self.tx.send(input) {
            reply(Err(ProposeError::Stopped));
        }
    }

    /// Waits until this node is confirmed leader of `partition` and has applied
    /// everything committed before the call: then its records answer reads.
    pub fn read(&self, partition: Partition, reply: ReadReply) {
        if let Err(mpsc::SendError(Input::Read { reply, .. })) = self.tx.send(Input::Read {
            group: GroupId::from(partition),
            reply,
        }) {
            reply(Err(ProposeError::Stopped));
        }
    }

    /// A message from a peer.
    pub fn step(&self, group: GroupId, message: Vec<u8>) {
        let _ = self.tx.send(Input::Peer { group, message });
    }

    /// Creates a replica of a new group with these first voters (the same on every voter).
    pub fn create(&self, partition: Partition, voters: Vec<NodeId>) {
        self.create_with(partition, voters, Vec::new());
    }

    /// Like [`Handle::create`], starting from records (`chat_state::snapshot` bytes, the
    /// same on every first voter).
    pub fn create_with(&self, partition: Partition, voters: Vec<NodeId>, data: Vec<u8>) {
        let _ = self.tx.send(Input::Create {
            group: GroupId::from(partition),
            voters,
            data,
        });
    }

    /// What this node sees of consensus, as of the last tick.
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The nodes placement puts `partition` on, as this node last saw the members (empty
    /// before it knows any): where to ask for it when this node has no replica.
    pub fn placed(&self, partition: Partition) -> Vec<NodeId> {
        let placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        chat_state::membership::voters_of(&placed.members, GroupId::from(partition), placed.voters)
    }

    /// How many members are not leaving, as this node's replica of the metadata group
    /// last applied them (0 before it has).
    pub fn active_members(&self) -> usize {
        let placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        placed.members.values().filter(|m| !m.leaving).count()
    }

    /// The partitions (not the metadata group) led here, as of the last tick.
    pub fn led(&self) -> Vec<Partition> {
        self.led.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts a new cluster with these first members (id, name), the same list on each
    /// of them, as `Settings::bootstrap` does at start; ignored once this node has any
    /// group (it joined, or a cluster was started already).
    pub fn bootstrap(&self, members: Vec<(NodeId, String)>) {
        let _ = self.tx.send(Input::Bootstrap(members));
    }

    /// Whether this node started with no consensus state at all (a new node).
    pub fn started_fresh(&self) -> bool {
        self.fresh
    }

    /// Inbox entries (stored messages) the records of this node's replicas hold.
    pub fn inbox_entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    /// Whether this node started with replicas of groups (its own, or a new
    /// cluster's first ones): then it has leaders to wait for before serving.
    pub fn started_with_groups(&self) -> bool {
        self.groups_at_start > 0
    }

    /// Hands the leadership of every group led here to a caught-up live voter, and keeps
    /// doing so (a group that elects this node again is handed on): before stopping,
    /// so that no partition waits out an election timeout. See [`Status::movable`].
    pub fn drain(&self) {
        let _ = self.tx.send(Input::Drain);
    }

    /// Stops the thread after its current round; waiting callers get `Stopped`.
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}

/// Who this node is and how its groups are kept.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This node's Raft id.
    pub id: NodeId,
    /// Voters per partition (capped by the active members).
    pub replicas: usize,
    /// Ticks and Raft's settings.
    pub timing: Timing,
    /// The first members of a new cluster (id, name), the same list on each of them.
    pub bootstrap: Vec<(NodeId, String)>,
}

/// Starts the driver thread over `disk` (the records) and `log` (the Raft log, with
/// what [`Wal::open`] replayed from it), restoring every group persisted there. Groups
/// are kept on `replicas` voters where placement (over the metadata group's members)
/// wants them. On a node with no consensus state at all, and only there, the bootstrap
/// list creates the metadata group and this node's replicas of the partitions: a node
/// that lost a group must never create it again from scratch.
pub fn start(
    settings: Settings,
    disk: Disk,
    log: (Wal, Option<BTreeMap<GroupId, chat_consensus::PersistedLog>>),
    sync: impl Sync,
    transport: impl Transport,
    logger: chat_consensus::Logger,
) -> Result<(Handle, std::thread::JoinHandle<()>), disk::DiskError> {
    let Settings {
        id,
        replicas,
        timing,
        bootstrap,
    } = settings;
    let (mut wal, replayed) = log;
    let mut persisted = replayed.unwrap_or_default();
    // A data folder that kept the log in sled: moved to the file once. An empty file
    // does not count as moved (it is created before the move: a crash may come
    // between), a full one does (a crash came between the move and the clearing).
    let legacy = disk.load_legacy()?;
    if !legacy.is_empty() {
        if persisted.is_empty() {
            tracing::info!(
                groups = legacy.len(),
                "moving the raft log from the database to its own file"
            );
            wal.rewrite(&legacy)?;
            persisted = legacy;
        }
        disk.clear_legacy()?;
    }
    match chat_consensus::reconcile(id, &mut persisted, disk.applied_state()?) {
        Ok(false) => {}
        // A snapshot the records hold and the log file does not (a crash came between
        // the records' sync and the log's): the file is written whole with it before
        // anything is appended after it.
        Ok(true) => wal.rewrite(&persisted)?,
        Err(group) => {
            tracing::error!(
                group,
                "the records of a partition are behind the start of its raft log"
            );
            return Err(disk::DiskError::Corrupt(group));
        }
    }
    let mut raft = MultiRaft::new(id, timing.raft.clone(), logger);
    let fresh = persisted.is_empty();
    let mut stale = Vec::new();
    for (group, log) in persisted {
        // A group this node was removed from comes back as its tombstone only.
        raft.restore(group, &log)
            .map_err(|_| disk::DiskError::Corrupt(group))?;
        if raft.applied(group).is_none() {
            stale.push(group);
        }
    }
    // Records of groups this node left, if a crash came between the round that left
    // and the clearing after it.
    let mut entries = disk.inbox_entries()?;
    for group in stale {
        entries = disk.clear(group, entries)?;
    }
    let bootstrapped = fresh && bootstrap.iter().any(|(member, _)| *member == id);
    if bootstrapped {
        create_first_groups(&mut raft, id, replicas, &bootstrap);
    }
    let groups_at_start = raft.groups().count();
    let entries = Arc::new(AtomicU64::new(entries));
    let (tx, rx) = mpsc::channel();
    let status = Arc::new(Mutex::new(Status::default()));
    let led = Arc::new(Mutex::new(Vec::new()));
    let placed = Arc::new(Mutex::new(Placed::default()));
    let flusher = Flusher::start(id, sync.clone(), tx.clone());
    let mut driver = Driver {
        raft,
        disk,
        wal,
        sync,
        flusher,
        transport,
        rx,
        waiting: HashMap::new(),
        deadlines: VecDeque::new(),
        answer_within: timing.answer_within,
        next_token: 1,
        tick: timing.tick,
        flush_every: timing.flush_every,
        placement_ticks: timing.placement_ticks.max(1),
        replicas,
        status: status.clone(),
        led: led.clone(),
        placed: placed.clone(),
        draining: false,
        held: Vec::new(),
        // An election timeout at its longest: elections, once started, take a round
        // trip or two; a replica cut off from the majority answers within this.
        wait_for_leader: timing.tick * 2 * timing.raft.election_ticks as u32,
        entries: entries.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("consensus-{id}"))
        .spawn(move || driver.run())
        .expect("spawn the consensus thread");
    Ok((
        Handle {
            tx,
            fresh: fresh && !bootstrapped,
            groups_at_start,
            entries,
            status,
            led,
            placed,
        },
        thread,
    ))
}

/// Syncs the records on its own thread, so that rounds do not wait for sled's flush;
/// one sync at a time.
struct Flusher {
    tx: Option<mpsc::Sender<BTreeMap<GroupId, u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A sync is under way.
    busy: bool,
    /// When the last one was asked.
    last: Instant,
    /// The applied indexes the last one covered.
    covered: BTreeMap<GroupId, u64>,
    /// Syncs completed.
    syncs: u64,
}

impl Flusher {
    fn start(id: NodeId, mut sync: impl Sync, driver: mpsc::Sender<Input>) -> Self {
        let (tx, rx) = mpsc::channel::<BTreeMap<GroupId, u64>>();
        let thread = std::thread::Builder::new()
            .name(format!("records-flush-{id}"))
            .spawn(move || {
                for applied in rx {
                    let done = sync.sync().map(|()| applied);
                    if driver.send(Input::Flushed(done)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn the records' flusher");
        Self {
            tx: Some(tx),
            thread: Some(thread),
            busy: false,
            last: Instant::now(),
            covered: BTreeMap::new(),
            syncs: 0,
        }
    }

    /// Ends the thread once its sync under way (if any) is done.
    fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The metadata group (its records: the first members) and this node's replicas of the
/// partitions, with placement's voters over the first members.
fn create_first_groups(
    raft: &mut MultiRaft<Token>,
    id: NodeId,
    replicas: usize,
    members: &[(NodeId, String)],
) {
    use chat_protocol::internal::command::{JoinCluster, Op};
    use chat_state::membership::{self, META, META_VOTERS};
    let mut records = chat_state::MemStore::default();
    for (node, name) in members {
        let join = JoinCluster {
            node: *node,
            name: name.clone(),
            addr: String::new(),
        };
        chat_state::machine::apply_op(META, Op::JoinCluster(join), &mut records).expect("memory");
    }
    let members = membership::members(&records).expect("memory");
    let data = chat_state::snapshot::encode(records.0.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
    let meta_voters = membership::voters_of(&members, GroupId::from(META), META_VOTERS);
    if meta_voters.contains(&id) {
        let _ = raft.create_with(GroupId::from(META), &meta_voters, data);
    }
    for p in 0..chat_state::placement::PARTITIONS {
        let voters = membership::voters_of(&members, GroupId::from(p), replicas.min(members.len()));
        if voters.contains(&id) {
            let _ = raft.create(GroupId::from(p), &voters);
        }
    }
}

struct Driver<S, T> {
    raft: MultiRaft<Token>,
    disk: Disk,
    wal: Wal,
    /// For the rare round that must sync the records itself (a snapshot installed).
    sync: S,
    flusher: Flusher,
    transport: T,
    rx: mpsc::Receiver<Input>,
    waiting: HashMap<Token, Waiter>,
    /// When each waiting token is answered `TimedOut` at the latest, oldest first.
    deadlines: VecDeque<(Instant, Token)>,
    answer_within: Duration,
    next_token: Token,
    tick: Duration,
    flush_every: Duration,
    placement_ticks: u32,
    replicas: usize,
    status: Arc<Mutex<Status>>,
    led: Arc<Mutex<Vec<Partition>>>,
    placed: Arc<Mutex<Placed>>,
    /// Handing every leadership away: this node is about to stop.
    draining: bool,
    /// Requests waiting for a leader (see [`Driver::must_wait`]), and until when a
    /// leaderless group's may wait.
    held: Vec<(Option<Instant>, GroupId, Held)>,
    /// How long a request may wait for a group here to elect a leader.
    wait_for_leader: Duration,
    /// Inbox entries the records hold (written with them every round).
    entries: Arc<AtomicU64>,
}

impl<S: Sync, T: Transport> Driver<S, T> {
    fn run(&mut self) {
        let mut next_tick = Instant::now() + self.tick;
        let mut ticks: u32 = 0;
        loop {
            // With work left from the last round (entries it made durable are now
            // committed and can be applied), only look for inputs, never wait for them.
            let timeout = if self.raft.has_work() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            let mut inputs = Vec::new();
            match self.rx.recv_timeout(timeout) {
                Ok(input) => inputs.push(input),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Everything waiting joins this round.
            inputs.extend(self.rx.try_iter());
            let mut stop = false;
            for input in inputs {
                stop |= self.handle(input);
            }
            self.release_held();
            if Instant::now() >= next_tick {
                self.expire();
                self.flush_records();
                self.raft.tick();
                ticks = ticks.wrapping_add(1);
                if let Err(e) = self.placement(ticks.is_multiple_of(self.placement_ticks)) {
                    tracing::error!(error = %e, "consensus stopped: storage failed");
                    stop = true;
                }
                next_tick += self.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.tick;
                }
            }
            if self.raft.has_work()
                && let Err(e) = self.round()
            {
                tracing::error!(error = %e, "consensus stopped: storage failed");
                stop = true;
            }
            if stop {
                break;
            }
        }
        for (_, waiter) in self.waiting.drain() {
            fail(waiter, ProposeError::Stopped);
        }
        for (_, _, held) in self.held.drain(..) {
            match held {
                Held::Propose(_, reply) => reply(Err(ProposeError::Stopped)),
                Held::Read(reply) => reply(Err(ProposeError::Stopped)),
            }
        }
        self.flusher.stop();
    }

    /// Proposes again what was held for a transfer that has ended (or answers it: the
    /// new leader's name lets the caller send it there).
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        for (until, group, held) in std::mem::take(&mut self.held) {
            let input = match held {
                Held::Propose(command, reply) => Input::Propose {
                    group,
                    command,
                    reply,
                },
                Held::Read(reply) => Input::Read { group, reply },
            };
            self.handle_held(input, until);
        }
    }

    /// Whether a request for `group` should wait rather than be refused: its leadership
    /// is being handed over from here (raft-rs would drop a proposal), or its replica
    /// here knows no leader (an election is under way) and `until` has not passed
    /// (`until` is set, if unset, to how long a request may wait for one).
    fn must_wait(&mut self, group: GroupId, until: &mut Option<Instant>) -> bool {
        if self.raft.transferring(group) {
            return true;
        }
        if self.raft.applied(group).is_none() || self.raft.leader(group).is_some() {
            return false;
        }
        let until = until.get_or_insert_with(|| Instant::now() + self.wait_for_leader);
        Instant::now() < *until
    }

    /// Handles one input; true to stop.
    fn handle(&mut self, input: Input) -> bool {
        self.handle_held(input, None)
    }

    /// Handles one input, held until `hold_until` at most if it was held; true to stop.
    fn handle_held(&mut self, input: Input, mut hold_until: Option<Instant>) -> bool {
        match input {
            Input::Propose {
                group,
                command,
                reply,
            } if self.must_wait(group, &mut hold_until) => {
                // Proposed once there is a leader to take it: here or at the new leader.
                self.held.push((hold_until, group, Held::Propose(command, reply)));
            }
            Input::Propose {
                group,
                command,
                reply,
            } => {
                let token = self.next_token;
                self.next_token += 1;
                match self.raft.propose(group, command, token) {
                    Ok(()) => {
                        self.waiting.insert(token, Waiter::Propose(reply));
                        self.deadlines
                            .push_back((Instant::now() + self.answer_within, token));
                    }
                    Err(e) => reply(Err(refusal(group, e))),
                }
            }
            Input::Read { group, reply } if self.must_wait(group, &mut hold_until) => {
                self.held.push((hold_until, group, Held::Read(reply)));
            }
            Input::Read { group, reply } => {
                let token = self.next_token;
                self.next_token += 1;
                match self.raft.read(group, token) {
                    Ok(()) => {
                        self.waiting.insert(token, Waiter::Read(reply));
                        self.deadlines
                            .push_back((Instant::now() + self.answer_within, token));
                    }
                    Err(e) => reply(Err(refusal(group, e))),
                }
            }
            Input::Peer { group, message } => match chat_consensus::decode_message(&message) {
                // A leader adding this node sends before this node knows the group: it
                // starts empty and catches up by snapshot.
                Ok(message) => {
                    if let Err(e) = self.raft.step_or_create(group, message) {
                        tracing::debug!(group, error = %e, "raft message refused");
                    }
                }
                Err(e) => tracing::warn!(group, error = %e, "undecodable raft message dropped"),
            },
            Input::Create { group, voters, data } => {
                if self.raft.applied(group).is_none()
                    && let Err(e) = self.raft.create_with(group, &voters, data)
                {
                    tracing::warn!(group, error = %e, "group not created");
                }
            }
            Input::Flushed(Ok(applied)) => {
                self.raft.applied_durable(&applied);
                self.flusher.busy = false;
                self.flusher.syncs += 1;
                self.flusher.covered = applied;
            }
            Input::Flushed(Err(e)) => {
                tracing::error!(error = %e, "consensus stopped: syncing the records failed");
                return true;
            }
            Input::Bootstrap(members) => {
                if self.raft.groups().next().is_none() && self.raft.persisted_logs().is_empty() {
                    tracing::info!(members = ?members.iter().map(|(_, n)| n).collect::<Vec<_>>(), "starting a new cluster");
                    let id = self.raft.id();
                    create_first_groups(&mut self.raft, id, self.replicas, &members);
                }
            }
            Input::Drain => {
                tracing::info!("handing over the leadership of every group led here");
                self.draining = true;
                self.raft.drain();
            }
            Input::Stop => return true,
        }
        false
    }

    /// Asks the flusher for a sync of the records when one is due and anything was
    /// applied since the last.
    fn flush_records(&mut self) {
        if self.flusher.busy || self.flusher.last.elapsed() < self.flush_every {
            return;
        }
        let applied = self.raft.applied_indexes();
        if applied == self.flusher.covered {
            return;
        }
        // Everything applied so far is in sled already: the sync covers it.
        if let Some(tx) = &self.flusher.tx
            && tx.send(applied).is_ok()
        {
            self.flusher.busy = true;
            self.flusher.last = Instant::now();
        }
    }

    /// Answers what has waited past its deadline (tokens and deadlines both grow, so
    /// the oldest come first).
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((deadline, token)) = self.deadlines.front().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(waiter) = self.waiting.remove(&token) {
                fail(waiter, ProposeError::TimedOut);
            }
        }
    }

    /// One round: see the module's documentation.
    fn round(&mut self) -> Result<(), disk::DiskError> {
        let mut round = self.raft.start_round();
        self.send(std::mem::take(&mut round.send));
        // A snapshot's records must be durable before the log says it was installed.
        let snapshots = round.writes.iter().any(|(_, w)| w.snapshot.is_some());
        // The log's sync runs while this round applies and answers what is committed.
        let mut log_sync = None;
        if !snapshots {
            self.wal.append(round.writes.iter().map(|(g, w)| (*g, w)))?;
            if !round.writes.is_empty() {
                log_sync = Some(self.wal.start_sync()?);
            }
        }
        let mut pending = Pending::new();
        let mut batch = sled::Batch::default();
        let mut answers = Vec::new();
        let mut removed = Vec::new();
        {
            let mut overlay = self.disk.overlay(&mut pending);
            for (group, write) in &round.writes {
                if let Some(snapshot) = &write.snapshot {
                    let records = chat_state::snapshot::decode(snapshot.get_data())
                        .ok_or(disk::DiskError::Corrupt(*group))?;
                    let prefix = chat_state::keys::partition_prefix(*group as Partition);
                    overlay
                        .replace(&prefix, records)
                        .map_err(|_| disk::DiskError::Corrupt(*group))?;
                }
            }
            for apply in round.apply.drain(..) {
                let outcome = chat_state::apply(apply.group as Partition, &apply.data, &mut overlay)
                    .map_err(|_| disk::DiskError::Corrupt(apply.group))?;
                if let Some(token) = apply.proposer {
                    answers.push((token, outcome));
                }
            }
            for group in round.removed.drain(..) {
                // This node was removed from the group: its records go once the log's
                // tombstone is durable (a later move back brings a fresh snapshot).
                for token in self.raft.remove(group) {
                    if let Some(waiter) = self.waiting.remove(&token) {
                        fail(waiter, ProposeError::NoReplica(group as Partition));
                    }
                }
                removed.push(group);
            }
            for group in round.snapshot_wanted.drain(..) {
                let prefix = chat_state::keys::partition_prefix(group as Partition);
                let records = chat_state::Store::scan(&overlay, &prefix, None, usize::MAX)
                    .map_err(|_| disk::DiskError::Corrupt(group))?;
                let data =
                    chat_state::snapshot::encode(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                self.raft.offer_snapshot(group, data);
            }
            let added = overlay.entries_added();
            if added != 0 {
                let now = self.entries.load(Ordering::Relaxed).saturating_add_signed(added);
                Disk::write_inbox_entries(&mut batch, now);
                self.entries.store(now, Ordering::Relaxed);
            }
        }
        for (group, write) in &round.writes {
            self.disk.write_applied(&mut batch, *group, write);
        }
        disk::write_records(&mut batch, pending);
        self.disk.apply(batch)?;
        if snapshots {
            self.sync.sync().map_err(disk::DiskError::Sync)?;
            self.wal.append(round.writes.iter().map(|(g, w)| (*g, w)))?;
        }
        // Committed entries are durable on a majority: answer now; their effects are
        // visible, and the sync below makes them durable here too.
        for (token, outcome) in answers {
            if let Some(Waiter::Propose(reply)) = self.waiting.remove(&token) {
                reply(Ok(outcome));
            }
        }
        for token in round.dropped {
            if let Some(waiter) = self.waiting.remove(&token) {
                fail(waiter, ProposeError::Dropped);
            }
        }
        for token in round.reads {
            if let Some(Waiter::Read(reply)) = self.waiting.remove(&token) {
                reply(Ok(()));
            }
        }
        match log_sync {
            Some(started) => self.wal.finish_sync(started)?,
            None if !round.writes.is_empty() => self.wal.sync()?,
            None => {}
        }
        for group in removed {
            let left = self.disk.clear(group, self.entries.load(Ordering::Relaxed))?;
            self.entries.store(left, Ordering::Relaxed);
        }
        let held = self.raft.finish_round_log_only();
        self.send(held);
        if self.wal.wants_rewrite() {
            let logs = self.raft.persisted_logs();
            let before = self.wal.len();
            self.wal.rewrite(&logs)?;
            tracing::debug!(before, after = self.wal.len(), "raft log rewritten");
        }
        Ok(())
    }

    /// Refreshes the status and, when `look`, moves every group led here towards the
    /// voters placement wants, by the members this node's replica of the metadata group
    /// has applied.
    fn placement(&mut self, look: bool) -> Result<(), disk::DiskError> {
        let meta = GroupId::from(chat_state::membership::META);
        let mut pending = Pending::new();
        let members = chat_state::membership::members(&self.disk.overlay(&mut pending))
            .map_err(|_| disk::DiskError::Corrupt(meta))?;
        let active = members.values().filter(|m| !m.leaving).count();
        let mut status = Status {
            members: members.len(),
            log_syncs: self.wal.syncs(),
            record_syncs: self.flusher.syncs,
            ..Status::default()
        };
        let groups: Vec<GroupId> = self.raft.groups().collect();
        let mut led = Vec::new();
        for group in groups {
            status.groups += 1;
            let count = if group == meta {
                chat_state::membership::META_VOTERS
            } else {
                self.replicas
            };
            let target = chat_state::membership::voters_of(&members, group, count.min(active));
            // Every member beyond the metadata group's voters follows it as a learner.
            let followers = chat_state::membership::learners_of(&members, group, &target);
            if !self.raft.is_leader(group) {
                // A leader that is no member any more (removed: dead for good) leads
                // nothing: raft-rs still names it until an election replaces it.
                let led = self.raft.leader(group).is_some_and(|l| members.contains_key(&l));
                status.leaderless += usize::from(!led);
                continue;
            }
            status.leading += 1;
            if group != meta {
                led.extend(Partition::try_from(group).ok());
            }
            let mut voters = self.raft.voters(group);
            voters.sort();
            let mut learners = self.raft.learners(group);
            learners.sort();
            let placed = target.is_empty() || (voters == target && learners == followers);
            if !(placed && self.raft.whole(group)) {
                status.unsettled += 1;
                if look {
                    let (progress, last) = self.raft.progress(group);
                    tracing::debug!(group, placed, ?progress, last, "group not settled");
                }
            }
            let others: Vec<NodeId> = voters.iter().copied().filter(|v| *v != self.raft.id()).collect();
            status.movable += usize::from(!others.is_empty());
            if self.draining {
                // Placement as if this node were leaving: leadership goes to a caught-up
                // live voter that stays, and no other change starts from here.
                if !others.is_empty() {
                    self.raft.move_towards(group, &others, &followers);
                }
            } else if look && !target.is_empty() {
                if placed && self.raft.whole(group) {
                    // Where it should be: leadership goes where placement prefers it, so
                    // that every node leads its share.
                    if let Some(heir) = chat_state::membership::preferred_leader(&voters, group) {
                        self.raft.prefer_leader(group, heir);
                    }
                } else {
                    self.raft.move_towards(group, &target, &followers);
                }
            }
        }
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
        *self.led.lock().unwrap_or_else(|e| e.into_inner()) = led;
        *self.placed.lock().unwrap_or_else(|e| e.into_inner()) = Placed {
            members,
            voters: self.replicas.min(active),
        };
        Ok(())
    }

    fn send(&mut self, messages: Vec<Outgoing>) {
        let mut by_peer: BTreeMap<NodeId, Vec<(GroupId, Vec<u8>)>> = BTreeMap::new();
        for m in messages {
            by_peer.entry(m.to()).or_default().push((m.group, m.encode()));
        }
        for (to, messages) in by_peer {
            self.transport.send(to, messages);
        }
    }
}

fn refusal(group: GroupId, e: RaftError) -> ProposeError {
    match e {
        RaftError::NotLeader { leader, .. } => ProposeError::NotLeader {
            partition: group as Partition,
            leader,
        },
        RaftError::UnknownGroup(_) => ProposeError::NoReplica(group as Partition),
        _ => ProposeError::Dropped,
    }
}

fn fail(waiter: Waiter, e: ProposeError) {
    match waiter {
        Waiter::Propose(reply) => reply(Err(e)),
        Waiter::Read(reply) => reply(Err(e)),
    }
}
