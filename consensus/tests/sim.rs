//! Deterministic simulation of a cluster built from `MultiRaft` and the chat's own
//! partition state machine (`chat-state`): many nodes in one process, a simulated
//! network that drops, delays, duplicates, reorders and partitions messages, crashes
//! that keep only what was synced (each node's Raft log every round, its records only
//! every `RECORDS_SYNC_MS`, as a node syncs its log file and sled), pauses and power
//! cuts, and clients that register,
//! create and join groups, send private messages and group posts, and resend with the
//! same client message id until acknowledged. Group posts reach members' inboxes
//! through the fan-out planner, driven by whichever node leads the group's partition.
//!
//! Every step checks the safety invariants; the end of a schedule checks that nothing
//! acknowledged was lost, duplicated or moved, that every inbox's seqs are gap-free,
//! that every member got every post once and in group order, and that one sender's
//! messages keep the order of their acknowledgements.
//!
//! A schedule is a seed. `SIM_SEEDS=N` runs N seeds (default 1000) from `SIM_BASE`,
//! `SIM_SEED=S` replays one and prints its faults (`SIM_RAFT_LOG=1` adds raft-rs's log).

use chat_consensus::eraftpb::Message;
use chat_consensus::eraftpb::SnapshotMetadata;
use chat_consensus::logger::discard;
use chat_consensus::{
    Applied, GroupId, LogWrite, MultiRaft, NodeId, PersistedLog, RaftConfig, Round, decode_message,
};
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::{
    AccountRecord, Command, GroupMessage, GroupRecord, InboxEntry, InboxMeta, MemberRecord, Outcome, outcome,
};
use chat_state::keys::{self, kind, tree};
use chat_state::membership::META;
use chat_state::placement::{self, Partition};
use chat_state::snapshot::Records;
use chat_state::{MemStore, Store, StoreError};
use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// xorshift64*: the schedule's only source of randomness.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// Nodes that may ever run: the first members, and one that may join later.
const NODES: u64 = 6;
/// The members the cluster starts with (its bootstrap list, the same on every node).
const FIRST_MEMBERS: u64 = 5;
/// Raft groups simulated: partitions 0 to GROUPS - 1 (names are picked to land there).
const GROUPS: u32 = 6;
const REPLICAS: usize = 3;
const USERS: usize = 8;
const CHAT_GROUPS: usize = 2;
const MESSAGES_PER_CLIENT: usize = 10;
/// Milliseconds per tick.
const TICK_MS: u64 = 10;
/// How long a client (or a fan-out driver) waits for an answer before trying another node.
const CLIENT_TIMEOUT_MS: u64 = 400;
/// How often the leader of a group's partition plans its fan-out.
const FANOUT_EVERY_MS: u64 = 20;
/// Each node syncs its records every this many milliseconds (its log every round).
const RECORDS_SYNC_MS: u64 = 173;
/// Faults happen in this window; then the network heals and everyone restarts.
const FAULT_WINDOW_MS: u64 = 6_000;
/// After the faults, everything must be acknowledged, fanned out and caught up within this.
const SETTLE_MS: u64 = 20_000;
/// A client still retrying when the cluster has settled (it tries random nodes, and one
/// that holds no replica of the partition costs it a timeout) gets this much longer.
const CLIENT_GRACE_MS: u64 = 20_000;

/// The first `n` names `{prefix}{i}` whose partition is simulated.
fn names(prefix: &str, n: usize, of: fn(&str) -> Partition) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|s| u32::from(of(s)) < GROUPS)
        .take(n)
        .collect()
}

fn users() -> Vec<String> {
    names("u", USERS, placement::of_user)
}

fn chat_groups() -> Vec<String> {
    names("g", CHAT_GROUPS, placement::of_group)
}

// ---------------------------------------------------------------------------------
// The state: chat-state's records, with every change recorded for the disk
// ---------------------------------------------------------------------------------

/// One change to the records, as the disk replays it.
#[derive(Debug, Clone)]
enum KvOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    /// Replace everything of a partition (a snapshot was installed).
    ReplacePartition(Partition, Vec<(Vec<u8>, Vec<u8>)>),
}

fn apply_kv(kv: &mut MemStore, op: &KvOp) {
    match op {
        KvOp::Put(k, v) => kv.put(k.clone(), v.clone()),
        KvOp::Delete(k) => kv.delete(k.clone()),
        KvOp::ReplacePartition(p, records) => {
            let prefix = keys::partition_prefix(*p);
            kv.0.retain(|k, _| !k.starts_with(&prefix));
            kv.0.extend(records.iter().cloned());
        }
    }
}

/// The live records, recording each change for the next sync.
struct Recording<'a> {
    kv: &'a mut MemStore,
    pending: &'a mut Vec<DiskOp>,
}

impl Store for Recording<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.kv.get(key)
    }
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.kv.scan(prefix, after, limit)
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending
            .push(DiskOp::Kv(KvOp::Put(key.clone(), value.clone())));
        self.kv.put(key, value);
    }
    fn delete(&mut self, key: Vec<u8>) {
        self.pending.push(DiskOp::Kv(KvOp::Delete(key.clone())));
        self.kv.delete(key);
    }
}

fn partition_records(kv: &MemStore, p: Partition) -> Records {
    kv.scan(&keys::partition_prefix(p), None, usize::MAX)
        .expect("memory")
}

fn snapshot_of(kv: &MemStore, p: Partition) -> Vec<u8> {
    let records = partition_records(kv, p);
    chat_state::snapshot::encode(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))
}

fn records_of(data: &[u8]) -> Records {
    chat_state::snapshot::decode(data).expect("snapshots decode")
}

fn decode_record<M: prost::Message + Default>(kv: &MemStore, key: &[u8]) -> Option<M> {
    kv.get(key)
        .expect("memory")
        .map(|v| M::decode(v.as_slice()).expect("stored records decode"))
}

/// A user's inbox entries by seq, and its metadata.
fn inbox_of(kv: &MemStore, user: &str) -> (InboxMeta, BTreeMap<u64, InboxEntry>) {
    let p = placement::of_user(user);
    let meta = decode_record(kv, &keys::scoped(p, tree::INBOX, user, kind::META)).unwrap_or_default();
    let prefix = keys::scoped(p, tree::INBOX, user, kind::ENTRY);
    let entries = kv
        .scan(&prefix, None, usize::MAX)
        .expect("memory")
        .into_iter()
        .map(|(k, v)| {
            (
                keys::seq_of(&k),
                InboxEntry::decode(v.as_slice()).expect("entries decode"),
            )
        })
        .collect();
    (meta, entries)
}

fn group_record(kv: &MemStore, group: &str) -> Option<GroupRecord> {
    decode_record(
        kv,
        &keys::scoped(placement::of_group(group), tree::GROUPS, group, kind::META),
    )
}

fn group_post(kv: &MemStore, group: &str, seq: u64) -> Option<GroupMessage> {
    decode_record(
        kv,
        &keys::seq_key(
            placement::of_group(group),
            tree::GROUPS,
            group,
            kind::MESSAGE,
            seq,
        ),
    )
}

// ---------------------------------------------------------------------------------
// Placement of the Raft groups
// ---------------------------------------------------------------------------------

/// The voters of a group: the first `REPLICAS` nodes by rendezvous weight.
/// The first members' records, as the metadata group starts with them.
fn first_members() -> BTreeMap<NodeId, MemberRecord> {
    (1..=FIRST_MEMBERS)
        .map(|id| {
            (
                id,
                MemberRecord {
                    name: format!("n{id}"),
                    addr: format!("sim:{id}"),
                    leaving: false,
                },
            )
        })
        .collect()
}

/// The metadata group's Raft group.
const META_GROUP: GroupId = META as GroupId;

/// Every Raft group the simulation runs: the partitions, then the metadata group.
fn all_groups() -> impl Iterator<Item = GroupId> {
    (0..GROUPS).chain(std::iter::once(META_GROUP))
}

/// The first voters of a group: placement over the first members.
fn voters(group: GroupId) -> Vec<NodeId> {
    let count = if group == META_GROUP {
        chat_state::membership::META_VOTERS
    } else {
        REPLICAS
    };
    chat_state::membership::voters_of(&first_members(), group, count)
}

/// The metadata group's first records: the first members.
fn first_meta_records() -> Vec<u8> {
    let mut store = MemStore::default();
    for (id, record) in first_members() {
        let join = command::JoinCluster {
            node: id,
            name: record.name,
            addr: record.addr,
        };
        chat_state::apply(
            META,
            &Command {
                op: Some(Op::JoinCluster(join)),
            }
            .encode_to_vec(),
            &mut store,
        )
        .expect("memory");
    }
    snapshot_of(&store, META)
}

/// Where placement wants every group now, by the members this node's replica of the
/// metadata group has applied.
fn targets_seen_by(kv: &MemStore) -> BTreeMap<GroupId, (Vec<NodeId>, Vec<NodeId>)> {
    let members = chat_state::membership::members(kv).expect("memory");
    if members.is_empty() {
        return BTreeMap::new();
    }
    all_groups()
        .map(|g| {
            let count = if g == META_GROUP {
                chat_state::membership::META_VOTERS
            } else {
                REPLICAS
            };
            let voters = chat_state::membership::voters_of(&members, g, count);
            let followers = chat_state::membership::learners_of(&members, g, &voters);
            (g, (voters, followers))
        })
        .collect()
}

fn raft_config() -> RaftConfig {
    RaftConfig {
        election_ticks: 10,
        heartbeat_ticks: 2,
        fixed_election_timeout: true,
        max_inflight: 16,
        max_size_per_msg: 4096,
        compact_threshold: 40,
        compact_keep: 2,
        compact_keep_for_followers: 8,
        compact_keep_silent_ticks: 20,
    }
}

// ---------------------------------------------------------------------------------
// Nodes with a disk that keeps only what was synced
// ---------------------------------------------------------------------------------

/// What a node's disk holds: the Raft logs, synced every round, and the records with
/// each group's applied state, synced apart and less often (as the node does: its log
/// file and sled).
#[derive(Debug, Clone, Default)]
struct Disk {
    logs: BTreeMap<GroupId, PersistedLog>,
    kv: MemStore,
    applied: BTreeMap<GroupId, Applied>,
}

#[derive(Debug, Clone)]
enum DiskOp {
    Kv(KvOp),
    /// A group's applied state changed (written with the round's records).
    Applied(GroupId, u64, Option<Box<SnapshotMetadata>>),
    /// This node left the group: its applied state goes.
    Forget(GroupId),
}

fn apply_log_write(log: &mut PersistedLog, write: &LogWrite) {
    if let Some(snapshot) = &write.snapshot {
        let meta = snapshot.get_metadata();
        log.snapshot = meta.clone();
        log.snapshot.clear_conf_state();
        log.entries.clear();
        log.conf_state = meta.get_conf_state().clone();
        log.hard_state.term = log.hard_state.term.max(meta.term);
        log.hard_state.commit = meta.index;
    }
    if let Some(from) = write.truncate_from {
        log.entries.retain(|e| e.index < from);
    }
    log.entries.extend(write.entries.iter().cloned());
    if let Some(hs) = &write.hard_state {
        log.hard_state = hs.clone();
    }
    if let Some(cs) = &write.conf_state {
        log.conf_state = cs.clone();
    }
    if let Some(to) = write.compact_to {
        if let Some(last_dropped) = log.entries.iter().find(|e| e.index == to - 1) {
            log.snapshot.index = last_dropped.index;
            log.snapshot.term = last_dropped.term;
        }
        log.entries.retain(|e| e.index >= to);
    }
    if let Some(term) = write.tombstone {
        log.tombstone = Some(term);
    }
}

/// Prints raft-rs's log when replaying a seed with `SIM_RAFT_LOG=1`.
struct StderrDrain;

impl slog::Drain for StderrDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV;
        struct Fields(String);
        impl slog::Serializer for Fields {
            fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
                self.0.push_str(&format!(" {key}={val}"));
                Ok(())
            }
        }
        let mut fields = Fields(String::new());
        let _ = values.serialize(record, &mut fields);
        let _ = record.kv().serialize(record, &mut fields);
        eprintln!("raft: {}{}", record.msg(), fields.0);
        Ok(())
    }
}

/// A proposal's token.
type Token = u64;

/// Who waits for a proposal made at a node.
#[derive(Debug, Clone)]
enum Requester {
    Client(usize),
    /// A fan-out batch sent by the node at index `driver` for `group` to partition `to`.
    Fanout {
        driver: usize,
        group: String,
        to: Partition,
        up_to: u64,
    },
    /// Nobody waits (the fan-out's own cursor updates).
    Nobody,
    /// A client's read of `user`'s inbox, which must see at least seq `floor` (the
    /// highest seq acknowledged in it before the read was asked).
    Read {
        client: usize,
        user: String,
        floor: u64,
    },
}

struct Node {
    id: NodeId,
    raft: MultiRaft<Token>,
    up: bool,
    paused: bool,
    /// The records as the process sees them (synced and not).
    kv: MemStore,
    disk: Disk,
    /// Log writes not yet synced, in order.
    log_pending: Vec<(GroupId, LogWrite)>,
    /// Record writes not yet synced, in order.
    pending: Vec<DiskOp>,
    /// Groups left in the round under way: their records go once its log is synced.
    leaving: Vec<GroupId>,
    /// Between start_round and finish_round: the round's sync is under way.
    mid_round: bool,
    tick_phase: u64,
    /// Proposals made here, by token.
    requests: HashMap<Token, Requester>,
    /// Fan-out batches this node has in flight: (group, partition) -> deadline.
    fanout_inflight: HashMap<(String, Partition), u64>,
    /// Where this node last heard a partition is led.
    hints: HashMap<Partition, NodeId>,
}

impl Node {
    fn start(id: NodeId, disk: Disk, tick_phase: u64) -> Self {
        let logger = if std::env::var("SIM_RAFT_LOG").is_ok() {
            slog::Logger::root(StderrDrain, slog::o!("node" => id))
        } else {
            discard()
        };
        let mut raft = MultiRaft::new(id, raft_config(), logger);
        // The log and the records are joined as the node joins them: the records may be
        // behind the log (applied again) or hold a snapshot the log lost.
        let mut logs = disk.logs.clone();
        let installed = chat_consensus::reconcile(id, &mut logs, disk.applied.clone())
            .unwrap_or_else(|group| panic!("node {id}: records of group {group} behind its log"));
        let mut disk = disk;
        if installed {
            // Written whole and synced, as the node rewrites its log file.
            disk.logs = logs.clone();
        }
        for group in all_groups() {
            match logs.get(&group) {
                // A replica removed from its group stays removed (its tombstone counts).
                Some(log) => raft.restore(group, log).expect("restore"),
                None if voters(group).contains(&id) => {
                    let data = if group == META_GROUP {
                        first_meta_records()
                    } else {
                        Vec::new()
                    };
                    raft.create_with(group, &voters(group), data).expect("create")
                }
                None => {}
            }
        }
        // Records of groups this node left, if it stopped before clearing them.
        let left: Vec<GroupId> = disk
            .applied
            .keys()
            .copied()
            .filter(|group| raft.applied(*group).is_none())
            .collect();
        for group in left {
            disk.applied.remove(&group);
            apply_kv(
                &mut disk.kv,
                &KvOp::ReplacePartition(group as Partition, Vec::new()),
            );
        }
        Self {
            id,
            raft,
            up: true,
            paused: false,
            kv: disk.kv.clone(),
            disk,
            log_pending: Vec::new(),
            pending: Vec::new(),
            leaving: Vec::new(),
            mid_round: false,
            tick_phase,
            requests: HashMap::new(),
            fanout_inflight: HashMap::new(),
            hints: HashMap::new(),
        }
    }

    /// Applies a round's writes and entries to the live records; returns the outcomes
    /// of proposals made here.
    /// Applies a round's writes and entries to the live records; returns the outcomes
    /// of proposals made here (`None`: a read barrier passed, serve the read now).
    fn take_round(&mut self, round: &mut Round<Token>, trace: &mut Trace) -> Vec<(Token, Option<Outcome>)> {
        let mut snapshots = false;
        for (group, write) in &round.writes {
            if let Some(snapshot) = &write.snapshot {
                let op = KvOp::ReplacePartition(*group as Partition, records_of(snapshot.get_data()));
                apply_kv(&mut self.kv, &op);
                self.pending.push(DiskOp::Kv(op));
                snapshots = true;
            }
        }
        let mut answers = Vec::new();
        for apply in round.apply.drain(..) {
            trace.applied(self.id, apply.group, apply.index, &apply.data);
            let mut store = Recording {
                kv: &mut self.kv,
                pending: &mut self.pending,
            };
            let outcome = chat_state::apply(apply.group as Partition, &apply.data, &mut store)
                .expect("memory never fails");
            if let Some(token) = apply.proposer {
                answers.push((token, Some(outcome)));
            }
        }
        // Reads are served after the round's entries are applied.
        answers.extend(round.reads.drain(..).map(|token| (token, None)));
        for group in round.snapshot_wanted.drain(..) {
            let data = snapshot_of(&self.kv, group as Partition);
            self.raft.offer_snapshot(group, data);
        }
        for group in round.removed.drain(..) {
            trace.note_removed(self.id, group);
            round.dropped.extend(self.raft.remove(group));
            self.leaving.push(group);
        }
        for (group, write) in round.writes.drain(..) {
            if write.applied.is_some() {
                let snapshot = write
                    .snapshot
                    .as_ref()
                    .map(|s| Box::new(s.get_metadata().clone()));
                self.pending.push(DiskOp::Applied(
                    group,
                    write.applied.unwrap_or_default(),
                    snapshot,
                ));
            }
            self.log_pending.push((group, write));
        }
        // A snapshot's records are synced before the log says it was installed.
        if snapshots {
            self.sync_records();
        }
        answers
    }

    /// The round's log is durable; the records of groups left in it go (not synced).
    fn sync(&mut self) {
        for (group, write) in self.log_pending.drain(..) {
            apply_log_write(self.disk.logs.entry(group).or_default(), &write);
        }
        for group in self.leaving.drain(..) {
            let op = KvOp::ReplacePartition(group as Partition, Vec::new());
            apply_kv(&mut self.kv, &op);
            self.pending.push(DiskOp::Kv(op));
            self.pending.push(DiskOp::Forget(group));
        }
    }

    /// Everything written to the records so far is durable: the log may drop what they
    /// hold.
    fn sync_records(&mut self) {
        for op in self.pending.drain(..) {
            match op {
                DiskOp::Kv(op) => apply_kv(&mut self.disk.kv, &op),
                DiskOp::Applied(group, index, snapshot) => {
                    let applied = self.disk.applied.entry(group).or_default();
                    applied.index = index;
                    if let Some(meta) = snapshot {
                        applied.snapshot = Some(*meta);
                    }
                }
                DiskOp::Forget(group) => {
                    self.disk.applied.remove(&group);
                }
            }
        }
        let applied = self.raft.applied_indexes();
        self.raft.applied_durable(&applied);
    }
}

// ---------------------------------------------------------------------------------
// Network, clients, faults
// ---------------------------------------------------------------------------------

struct InFlight {
    at: u64,
    from: NodeId,
    to: NodeId,
    group: GroupId,
    bytes: Vec<u8>,
}

/// One thing a client does, in order.
#[derive(Debug, Clone)]
enum Step {
    /// An operator's membership command: a node joins, or a dead one is removed.
    JoinCluster(NodeId),
    RemoveNode(NodeId),
    Register,
    CreateGroup(String),
    Join(String),
    Private {
        to: String,
        client_id: String,
    },
    Post {
        group: String,
        client_id: String,
    },
    /// Read a user's inbox at the leader of its partition (a read barrier).
    Read(String),
    /// Ask another user to be a contact (decided in the pair's partition).
    Contact(String),
    /// Block another user (its later private messages are refused, not acknowledged).
    Block(String),
}

#[derive(Debug, Clone)]
struct Client {
    user: String,
    plan: Vec<Step>,
    next: usize,
    /// The node asked, when to give up on it, and the proposal's token.
    asked: Option<(NodeId, u64, Token)>,
    /// A node to try next (a leader hint).
    hint: Option<NodeId>,
}

impl Client {
    /// The command for the current step, and the partition it goes to.
    fn command(&self, now: u64) -> (Partition, Op) {
        let user = self.user.clone();
        match self.plan[self.next].clone() {
            Step::JoinCluster(node) => (
                META,
                Op::JoinCluster(command::JoinCluster {
                    node,
                    name: format!("n{node}"),
                    addr: format!("sim:{node}"),
                }),
            ),
            Step::RemoveNode(node) => (META, Op::RemoveNode(command::RemoveNode { node })),
            Step::Read(_) => unreachable!("reads are no commands (Sim::read)"),
            Step::Contact(other) => (
                chat_state::contacts::pair_partition(&user, &other),
                Op::ContactAction(command::ContactAction {
                    actor: user,
                    other,
                    action: chat_state::contacts::Action::Request as u32,
                    now_ms: now,
                }),
            ),
            Step::Block(other) => (
                placement::of_user(&user),
                Op::Block(command::Block {
                    user,
                    other,
                    blocked: true,
                }),
            ),
            Step::Register => {
                let record = AccountRecord {
                    password_hash: "x".into(),
                    created_at_ms: now,
                    ..AccountRecord::default()
                };
                (
                    placement::of_user(&user),
                    Op::CreateAccount(command::CreateAccount {
                        user,
                        record: Some(record),
                    }),
                )
            }
            Step::CreateGroup(group) => (
                placement::of_group(&group),
                Op::CreateGroup(command::CreateGroup {
                    group,
                    creator: user,
                    now_ms: now,
                    ..Default::default()
                }),
            ),
            Step::Join(group) => (
                placement::of_group(&group),
                Op::JoinGroup(command::JoinGroup {
                    group,
                    user,
                    now_ms: 0,
                }),
            ),
            Step::Private { to, client_id } => (
                placement::of_user(&to),
                Op::Append(command::Append {
                    origin: keys::private_origin(&user, &client_id),
                    entry: Some(InboxEntry {
                        // Named by the sender's node, as a node does.
                        message_id: keys::private_message_id(&to, &user, &client_id),
                        from: user.clone(),
                        conversation: user.clone(),
                        text: format!("{client_id} to {to}"),
                        timestamp_ms: now,
                        ..InboxEntry::default()
                    }),
                    user: to,
                    require_account: true,
                    now_ms: now,
                    retention: None,
                }),
            ),
            Step::Post { group, client_id } => (
                placement::of_group(&group),
                Op::Post(command::Post {
                    text: format!("{client_id} in {group}"),
                    group,
                    from: user,
                    client_msg_id: client_id,
                    now_ms: now,
                    reply_to: String::new(),
                    attachments: Vec::new(),
                }),
            ),
        }
    }
}

/// Something a sender had acknowledged, in order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Acked {
    Private { to: String, client_id: String },
    Post { group: String, client_id: String },
}

/// Everything seen, for the invariants.
#[derive(Default)]
struct Trace {
    /// (group, term) -> the leader seen.
    leaders: HashMap<(GroupId, u64), NodeId>,
    /// (group, index) -> the entry applied there, by whoever applied it first.
    applied: HashMap<(GroupId, u64), Vec<u8>>,
    violations: Vec<String>,
    /// (recipient, sender, client id) -> (seq, message id) acknowledged.
    private_acks: BTreeMap<(String, String, String), (u64, String)>,
    /// (group, sender, client id) -> (group seq, message id) acknowledged.
    post_acks: BTreeMap<(String, String, String), (u64, String)>,
    /// Per sender, what was acknowledged, in order.
    acked_order: BTreeMap<String, Vec<Acked>>,
    log: Vec<String>,
    verbose: bool,
}

impl Trace {
    fn applied(&mut self, node: NodeId, group: GroupId, index: u64, data: &[u8]) {
        match self.applied.get(&(group, index)) {
            Some(seen) if seen.as_slice() != data => self.violations.push(format!(
                "node {node} applied a different entry at group {group} index {index}"
            )),
            Some(_) => {}
            None => {
                self.applied.insert((group, index), data.to_vec());
            }
        }
    }
    fn note_removed(&mut self, node: NodeId, group: GroupId) {
        if self.verbose {
            eprintln!("node {node} left group {group}");
        }
    }
    fn note(&mut self, now: u64, what: String) {
        if self.verbose {
            eprintln!("{now:>6} ms  {what}");
        }
        self.log.push(format!("{now} ms: {what}"));
    }
}

struct Sim {
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    net: Vec<InFlight>,
    /// Pairs that cannot talk (both directions are listed).
    cut: BTreeSet<(NodeId, NodeId)>,
    clients: Vec<Client>,
    next_token: Token,
    trace: Trace,
    /// Fault knobs, per mille.
    drop: u64,
    duplicate: u64,
    /// Nodes that do not run: not joined yet, or removed for good.
    absent: BTreeSet<NodeId>,
    /// Whether a node was removed (one per schedule at most).
    removed_one: bool,
    /// Paused nodes to resume at a time: (time, node).
    resume_at: Vec<(u64, NodeId)>,
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = (1..=NODES)
            .map(|id| Node::start(id, Disk::default(), rng.below(TICK_MS)))
            .collect();
        let users = users();
        let groups = chat_groups();
        let clients = users
            .iter()
            .enumerate()
            .map(|(c, user)| {
                let mut plan = vec![Step::Register];
                if c == 0 {
                    plan.extend(groups.iter().cloned().map(Step::CreateGroup));
                }
                plan.extend(groups.iter().filter(|_| rng.chance(800)).cloned().map(Step::Join));
                let joined: Vec<String> = plan
                    .iter()
                    .filter_map(|s| {
                        if let Step::Join(g) = s {
                            Some(g.clone())
                        } else {
                            None
                        }
                    })
                    .collect();
                let someone_else = |rng: &mut Rng| loop {
                    let other = &users[rng.below(users.len() as u64) as usize];
                    if other != user {
                        break other.clone();
                    }
                };
                if users.len() > 1 && rng.chance(300) {
                    plan.push(Step::Contact(someone_else(&mut rng)));
                }
                if users.len() > 1 && rng.chance(150) {
                    plan.push(Step::Block(someone_else(&mut rng)));
                }
                for m in 0..MESSAGES_PER_CLIENT {
                    let client_id = format!("{user}-{m}");
                    if !joined.is_empty() && rng.chance(400) {
                        let group = joined[rng.below(joined.len() as u64) as usize].clone();
                        plan.push(Step::Post { group, client_id });
                    } else {
                        let to = users[rng.below(users.len() as u64) as usize].clone();
                        plan.push(Step::Private { to, client_id });
                    }
                    if rng.chance(250) {
                        plan.push(Step::Read(users[rng.below(users.len() as u64) as usize].clone()));
                    }
                }
                Client {
                    user: user.clone(),
                    plan,
                    next: 0,
                    asked: None,
                    hint: None,
                }
            })
            .collect();
        let drop = rng.below(60);
        let duplicate = rng.below(40);
        let trace = Trace {
            verbose,
            ..Trace::default()
        };
        Self {
            rng,
            now: 0,
            nodes,
            net: Vec::new(),
            cut: BTreeSet::new(),
            clients,
            next_token: 1,
            trace,
            drop,
            duplicate,
            absent: ((FIRST_MEMBERS + 1)..=NODES).collect(),
            removed_one: false,
            resume_at: Vec::new(),
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn send(&mut self, from: NodeId, out: Vec<chat_consensus::Outgoing>) {
        for o in out {
            let to = o.to();
            if self.rng.chance(self.drop) {
                continue;
            }
            let copies = if self.rng.chance(self.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                // Delays from 1 to 15 ms reorder messages.
                let at = self.now + 1 + self.rng.below(15);
                self.net.push(InFlight {
                    at,
                    from,
                    to,
                    group: o.group,
                    bytes: o.encode(),
                });
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.net)
            .into_iter()
            .partition(|m| m.at <= now);
        self.net = later;
        for m in due {
            if self.cut.contains(&(m.from, m.to)) {
                continue;
            }
            let node = self.node(m.to);
            if !node.up {
                continue;
            }
            if node.paused {
                // The kernel keeps it in the socket until the process runs again; then
                // it is read in no particular order with the clients' requests, so a
                // resumed leader may hear a client before it hears of its successor.
                let at = now + 1 + self.rng.below(30);
                self.net.push(InFlight { at, ..m });
                continue;
            }
            let message: Message = decode_message(&m.bytes).expect("messages decode");
            // A replica being added learns its group from the leader (by snapshot).
            // Refused messages are dropped, as on a real node.
            let _ = node.raft.step_or_create(m.group, message);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.node(id);
        node.up = false;
        node.paused = false;
        node.pending.clear();
        node.log_pending.clear();
        node.leaving.clear();
        node.mid_round = false;
        node.requests.clear();
    }

    fn restart(&mut self, id: NodeId) {
        let phase = self.rng.below(TICK_MS);
        let disk = self.node(id).disk.clone();
        self.nodes[(id - 1) as usize] = Node::start(id, disk, phase);
    }

    /// One millisecond.
    fn step(&mut self) {
        let now = self.now;
        let due: Vec<NodeId> = self
            .resume_at
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        self.resume_at.retain(|(at, _)| *at > now);
        for id in due {
            if self.node(id).paused {
                self.trace.note(now, format!("resume node {id}"));
                self.node(id).paused = false;
            }
        }
        self.deliver();
        let now = self.now;
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            if !self.nodes[i].up || self.nodes[i].paused {
                continue;
            }
            if (now + self.nodes[i].tick_phase).is_multiple_of(TICK_MS) {
                self.nodes[i].raft.tick();
            }
            // Second half of a round: the sync completed.
            // Now and then the records are synced, in the middle of a round too.
            if (now + 3 * self.nodes[i].tick_phase).is_multiple_of(RECORDS_SYNC_MS) {
                self.nodes[i].sync_records();
            }
            if self.nodes[i].mid_round {
                self.nodes[i].sync();
                self.nodes[i].mid_round = false;
                let send = self.nodes[i].raft.finish_round_log_only();
                self.send(id, send);
                continue;
            }
            if self.nodes[i].raft.has_work() {
                let mut round = self.nodes[i].raft.start_round();
                let send = std::mem::take(&mut round.send);
                self.send(id, send);
                // Committed entries are answered at once; the round's writes wait for the sync.
                let answers = self.nodes[i].take_round(&mut round, &mut self.trace);
                let dropped = std::mem::take(&mut round.dropped);
                self.answer(i, answers, dropped);
                self.nodes[i].mid_round = true;
            }
            if (now + self.nodes[i].tick_phase).is_multiple_of(FANOUT_EVERY_MS) {
                self.fan_out(i);
                // Placement, from this node's replica of the metadata group.
                for (group, (target, followers)) in targets_seen_by(&self.nodes[i].kv) {
                    let full = group == META_GROUP || target.len() == REPLICAS;
                    if full && !target.is_empty() {
                        let raft = &mut self.nodes[i].raft;
                        let mut voters = raft.voters(group);
                        voters.sort();
                        let mut learners = raft.learners(group);
                        learners.sort();
                        if voters == target && learners == followers && raft.whole(group) {
                            if let Some(heir) = chat_state::membership::preferred_leader(&voters, group) {
                                raft.prefer_leader(group, heir);
                            }
                        } else {
                            raft.move_towards(group, &target, &followers);
                        }
                    }
                }
            }
        }
        self.check_leaders();
        self.clients_act();
        self.now += 1;
    }

    /// Proposes `op` to partition `p` at the node `target`; on success the token
    /// waits there. Returns the leader hint when the node does not lead `p`.
    fn propose(
        &mut self,
        target: NodeId,
        p: Partition,
        op: Op,
        requester: Requester,
    ) -> Result<Token, Option<NodeId>> {
        let token = self.next_token;
        self.next_token += 1;
        let node = self.node(target);
        if !node.up || node.paused {
            return Err(None);
        }
        let data = Command { op: Some(op) }.encode_to_vec();
        match node.raft.propose(u32::from(p), data, token) {
            Ok(()) => {
                node.requests.insert(token, requester);
                Ok(token)
            }
            Err(chat_consensus::Error::NotLeader { leader, .. }) => Err(leader),
            Err(_) => Err(None),
        }
    }

    /// The leader of a group's partition plans its fan-out and sends each batch to the
    /// node it believes leads the destination partition.
    fn fan_out(&mut self, i: usize) {
        for group in chat_groups() {
            let p = placement::of_group(&group);
            if !self.nodes[i].raft.is_leader(u32::from(p)) {
                continue;
            }
            let plan = chat_state::fanout::plan(p, &self.nodes[i].kv, &group, 16).expect("memory");
            if let Some(up_to) = plan.complete_up_to {
                let done = command::FanoutDone {
                    group: group.clone(),
                    partition: 0,
                    group_seq: up_to,
                    all: true,
                };
                let _ = self.propose(self.nodes[i].id, p, Op::FanoutDone(done), Requester::Nobody);
            }
            for batch in plan.batches {
                let key = (group.clone(), batch.partition);
                if self.nodes[i]
                    .fanout_inflight
                    .get(&key)
                    .is_some_and(|deadline| *deadline > self.now)
                {
                    continue;
                }
                let target = match self.nodes[i].hints.get(&batch.partition) {
                    Some(hint) => *hint,
                    None => 1 + self.rng.below(NODES),
                };
                let op = Op::Fanout(command::Fanout {
                    group: group.clone(),
                    items: batch.items,
                    now_ms: self.now,
                    retention: None,
                });
                let requester = Requester::Fanout {
                    driver: i,
                    group: group.clone(),
                    to: batch.partition,
                    up_to: batch.up_to,
                };
                self.nodes[i]
                    .fanout_inflight
                    .insert(key, self.now + CLIENT_TIMEOUT_MS);
                match self.propose(target, batch.partition, op, requester) {
                    Ok(_) => {}
                    Err(hint) => {
                        match hint {
                            Some(h) => self.nodes[i].hints.insert(batch.partition, h),
                            None => self.nodes[i].hints.remove(&batch.partition),
                        };
                        self.nodes[i]
                            .fanout_inflight
                            .remove(&(group.clone(), batch.partition));
                    }
                }
            }
        }
    }

    fn answer(&mut self, node: usize, answers: Vec<(Token, Option<Outcome>)>, dropped: Vec<Token>) {
        for (token, outcome) in answers {
            let Some(requester) = self.nodes[node].requests.remove(&token) else {
                continue;
            };
            let outcome = match (requester, outcome) {
                (Requester::Read { client, user, floor }, None) => {
                    let seen = inbox_of(&self.nodes[node].kv, &user).0.last_seq;
                    if seen < floor {
                        self.trace.violations.push(format!(
                            "a read of {user}'s inbox at node {} saw seq {seen}, below the acknowledged {floor}",
                            self.nodes[node].id
                        ));
                    }
                    let c = &mut self.clients[client];
                    if c.asked.map(|(_, _, t)| t) == Some(token) {
                        c.asked = None;
                        c.next += 1;
                    }
                    continue;
                }
                (requester, Some(outcome)) => (requester, outcome),
                (_, None) => continue,
            };
            match outcome {
                (Requester::Client(c), outcome) => self.client_answer(c, token, outcome),
                (
                    Requester::Fanout {
                        driver,
                        group,
                        to,
                        up_to,
                    },
                    outcome,
                ) => {
                    self.nodes[driver].fanout_inflight.remove(&(group.clone(), to));
                    if matches!(outcome.result, Some(outcome::Result::Fanned(_))) {
                        let p = placement::of_group(&group);
                        let done = command::FanoutDone {
                            group,
                            partition: u32::from(to),
                            group_seq: up_to,
                            all: false,
                        };
                        let id = self.nodes[driver].id;
                        let _ = self.propose(id, p, Op::FanoutDone(done), Requester::Nobody);
                    }
                }
                _ => {}
            }
        }
        for token in dropped {
            match self.nodes[node].requests.remove(&token) {
                Some(Requester::Client(c)) if self.clients[c].asked.map(|(_, _, t)| t) == Some(token) => {
                    self.clients[c].asked = None;
                }
                Some(Requester::Fanout {
                    driver, group, to, ..
                }) => {
                    self.nodes[driver].fanout_inflight.remove(&(group, to));
                }
                _ => {}
            }
        }
    }

    /// Records what `user` had acknowledged: the same request must always get the same
    /// answer.
    fn acked(&mut self, user: &str, acked: Acked, seq: u64, id: String) {
        let (acks, key) = match &acked {
            Acked::Private { to, client_id } => (
                &mut self.trace.private_acks,
                (to.clone(), user.to_owned(), client_id.clone()),
            ),
            Acked::Post { group, client_id } => (
                &mut self.trace.post_acks,
                (group.clone(), user.to_owned(), client_id.clone()),
            ),
        };
        if let Some(old) = acks.get(&key)
            && *old != (seq, id.clone())
        {
            self.trace.violations.push(format!(
                "{key:?} acknowledged as {old:?} and then as ({seq}, {id})"
            ));
        }
        acks.insert(key, (seq, id));
        self.trace
            .acked_order
            .entry(user.to_owned())
            .or_default()
            .push(acked);
    }

    fn client_answer(&mut self, c: usize, token: Token, outcome: Outcome) {
        let client = &mut self.clients[c];
        if client.asked.map(|(_, _, t)| t) != Some(token) {
            return;
        }
        client.asked = None;
        let user = client.user.clone();
        let step = client.plan[client.next].clone();
        use outcome::Result as R;
        let done = match (&step, outcome.result) {
            (Step::Register, Some(R::Done(_) | R::Exists(_))) => true,
            (
                Step::JoinCluster(_) | Step::RemoveNode(_),
                Some(R::Done(_) | R::Exists(_) | R::NotFound(_)),
            ) => true,
            (Step::CreateGroup(_), Some(R::Done(_) | R::Exists(_))) => true,
            (Step::Join(_), Some(R::Done(_))) => true,
            (Step::Contact(_), Some(R::ContactChanged(_))) => true,
            (Step::Block(_), Some(R::Done(_))) => true,
            // The recipient blocks the sender: refused, so never acknowledged.
            (Step::Private { .. }, Some(R::NotAllowed(_))) => true,
            (Step::Private { to, client_id }, Some(R::Appended(a) | R::Duplicate(a))) => {
                let acked = Acked::Private {
                    to: to.clone(),
                    client_id: client_id.clone(),
                };
                self.acked(&user, acked, a.seq, a.message_id);
                true
            }
            (Step::Post { group, client_id }, Some(R::Posted(p))) => {
                let acked = Acked::Post {
                    group: group.clone(),
                    client_id: client_id.clone(),
                };
                self.acked(&user, acked, p.group_seq, p.message_id);
                true
            }
            // Not yet possible (the group or the recipient is not created yet): retry.
            (_, Some(R::NotFound(_) | R::NotAMember(_))) => false,
            (_, other) => {
                self.trace
                    .violations
                    .push(format!("{user}: {step:?} answered {other:?}"));
                false
            }
        };
        if done {
            self.clients[c].next += 1;
        }
    }

    fn check_leaders(&mut self) {
        for node in &self.nodes {
            if !node.up {
                continue;
            }
            for group in node.raft.groups().collect::<Vec<_>>() {
                if node.raft.is_leader(group) {
                    let term = node.raft.term(group).expect("group");
                    let seen = *self.trace.leaders.entry((group, term)).or_insert(node.id);
                    if seen != node.id {
                        self.trace.violations.push(format!(
                            "group {group} term {term} has leaders {seen} and {}",
                            node.id
                        ));
                    }
                }
            }
        }
    }

    fn clients_act(&mut self) {
        for c in 0..self.clients.len() {
            let client = &self.clients[c];
            if client.next >= client.plan.len() {
                continue;
            }
            if let Some((_, deadline, _)) = client.asked
                && self.now < deadline
            {
                continue;
            }
            // Think a little between attempts.
            if !self.rng.chance(100) {
                continue;
            }
            let target = match self.clients[c].hint.take() {
                Some(hint) => hint,
                None => 1 + self.rng.below(NODES),
            };
            if let Step::Read(user) = self.clients[c].plan[self.clients[c].next].clone() {
                self.read(c, target, user);
                continue;
            }
            let (p, op) = self.clients[c].command(self.now);
            // Without an answer by the deadline the client tries elsewhere.
            self.clients[c].asked = Some((target, self.now + CLIENT_TIMEOUT_MS, 0));
            match self.propose(target, p, op, Requester::Client(c)) {
                Ok(token) => self.clients[c].asked = Some((target, self.now + CLIENT_TIMEOUT_MS, token)),
                Err(Some(leader)) => {
                    self.clients[c].asked = None;
                    self.clients[c].hint = Some(leader);
                }
                Err(None) => {}
            }
        }
    }

    /// A client reads `user`'s inbox through `target`: a read barrier at the leader,
    /// then the records there must hold everything acknowledged before the read.
    fn read(&mut self, c: usize, target: NodeId, user: String) {
        let floor = self
            .trace
            .private_acks
            .iter()
            .filter(|((to, _, _), _)| *to == user)
            .map(|(_, (seq, _))| *seq)
            .max();
        let token = self.next_token;
        self.next_token += 1;
        self.clients[c].asked = Some((target, self.now + CLIENT_TIMEOUT_MS, token));
        let node = self.node(target);
        if !node.up || node.paused {
            return;
        }
        match node.raft.read(u32::from(placement::of_user(&user)), token) {
            Ok(()) => {
                let floor = floor.unwrap_or(0);
                node.requests.insert(
                    token,
                    Requester::Read {
                        client: c,
                        user,
                        floor,
                    },
                );
            }
            Err(chat_consensus::Error::NotLeader { leader, .. }) => {
                self.clients[c].asked = None;
                self.clients[c].hint = leader;
            }
            Err(_) => self.clients[c].asked = None,
        }
    }

    fn fault(&mut self) {
        let kind = self.rng.below(12);
        let victim = 1 + self.rng.below(NODES);
        match kind {
            0 => {
                self.trace.note(self.now, format!("isolate node {victim}"));
                for other in 1..=NODES {
                    if other != victim {
                        self.cut.insert((victim, other));
                        self.cut.insert((other, victim));
                    }
                }
            }
            1 => {
                let mut side: Vec<NodeId> = (1..=NODES).filter(|_| self.rng.chance(500)).collect();
                if side.is_empty() {
                    side.push(victim);
                }
                self.trace.note(self.now, format!("split {side:?} from the rest"));
                for a in 1..=NODES {
                    for b in 1..=NODES {
                        if side.contains(&a) != side.contains(&b) {
                            self.cut.insert((a, b));
                        }
                    }
                }
            }
            2 => {
                // A bridge: the victim sees everyone, the two halves do not see each other.
                self.trace.note(self.now, format!("bridge through node {victim}"));
                let others: Vec<NodeId> = (1..=NODES).filter(|n| *n != victim).collect();
                let (left, right) = others.split_at(others.len() / 2);
                for a in left {
                    for b in right {
                        self.cut.insert((*a, *b));
                        self.cut.insert((*b, *a));
                    }
                }
            }
            3 => {
                // A ring: each node sees only its two neighbours.
                self.trace.note(self.now, "ring".into());
                for a in 1..=NODES {
                    for b in 1..=NODES {
                        let d = (a + NODES - b) % NODES;
                        if a != b && d != 1 && d != NODES - 1 {
                            self.cut.insert((a, b));
                        }
                    }
                }
            }
            4 => {
                if self.node(victim).up && !self.absent.contains(&victim) {
                    self.trace.note(self.now, format!("crash node {victim}"));
                    self.crash(victim);
                }
            }
            5 => {
                if !self.node(victim).up && !self.absent.contains(&victim) {
                    self.trace.note(self.now, format!("restart node {victim}"));
                    self.restart(victim);
                }
            }
            6 => {
                let node = self.node(victim);
                if node.up {
                    node.paused = !node.paused;
                    let paused = node.paused;
                    self.trace.note(
                        self.now,
                        format!("{} node {victim}", if paused { "pause" } else { "resume" }),
                    );
                }
            }
            11 => {
                // The leader of a partition stops (a long GC pause, SIGSTOP) while the
                // others elect a successor, then runs again believing it still leads.
                let p = self.rng.below(u64::from(GROUPS)) as Partition;
                if let Some(id) = self.leader_of(p).map(|n| n.id) {
                    let pause = 300 + self.rng.below(700);
                    self.trace.note(
                        self.now,
                        format!("pause node {id}, leader of partition {p}, for {pause} ms"),
                    );
                    self.node(id).paused = true;
                    self.resume_at.push((self.now + pause, id));
                }
            }
            8 => {
                // A new node joins: an operator starts it and asks the cluster to take it.
                let newcomer = self.absent.iter().copied().find(|id| *id > FIRST_MEMBERS);
                if let Some(id) = newcomer {
                    self.trace.note(self.now, format!("node {id} joins"));
                    self.absent.remove(&id);
                    self.restart(id);
                    self.operator(Step::JoinCluster(id));
                }
            }
            9 => {
                // A node dies for good and an operator removes it.
                if !self.removed_one && victim <= FIRST_MEMBERS {
                    self.trace
                        .note(self.now, format!("node {victim} dies for good and is removed"));
                    self.removed_one = true;
                    self.crash(victim);
                    self.absent.insert(victim);
                    self.operator(Step::RemoveNode(victim));
                }
            }
            7 => {
                // A power cut: every node loses what it had not synced, then starts again.
                self.trace
                    .note(self.now, "power cut: every node crashes and restarts".into());
                for id in 1..=NODES {
                    if !self.absent.contains(&id) {
                        self.crash(id);
                        self.restart(id);
                    }
                }
            }
            _ => {
                self.trace.note(self.now, "heal".into());
                self.cut.clear();
            }
        }
    }

    fn heal_all(&mut self) {
        self.trace
            .note(self.now, "heal everything, restart and resume every node".into());
        self.cut.clear();
        self.drop = 0;
        self.duplicate = 0;
        for id in 1..=NODES {
            if self.absent.contains(&id) {
                continue;
            }
            if !self.node(id).up {
                self.restart(id);
            }
            self.node(id).paused = false;
        }
    }

    /// An operator's command, sent like a client's until acknowledged.
    fn operator(&mut self, step: Step) {
        self.clients.push(Client {
            user: "operator".into(),
            plan: vec![step],
            next: 0,
            asked: None,
            hint: None,
        });
    }

    /// Where placement wants every group (voters, learners), by the metadata group's
    /// leader.
    fn final_targets(&self) -> BTreeMap<GroupId, (Vec<NodeId>, Vec<NodeId>)> {
        self.leader_of(META)
            .map(|l| targets_seen_by(&l.kv))
            .unwrap_or_default()
    }

    fn done(&self) -> bool {
        self.clients.iter().all(|c| c.next >= c.plan.len()) && self.caught_up() && self.fanned_out()
    }

    fn leader_of(&self, p: Partition) -> Option<&Node> {
        self.nodes.iter().find(|n| n.up && n.raft.is_leader(u32::from(p)))
    }

    /// Every group is on placement's target voters and learners, which have all applied
    /// the same last index, under a leader.
    fn caught_up(&self) -> bool {
        let targets = self.final_targets();
        !targets.is_empty()
            && all_groups().all(|group| {
                let (target, followers) = &targets[&group];
                let applied: BTreeSet<Option<u64>> = target
                    .iter()
                    .chain(followers)
                    .map(|id| self.nodes[(*id - 1) as usize].raft.applied(group))
                    .collect();
                let conf = self
                    .leader_of(group as Partition)
                    .and_then(|l| l.raft.conf_state(group));
                let full = group == META_GROUP || target.len() == REPLICAS;
                full && applied.len() == 1
                    && conf.is_some_and(|mut c| {
                        c.voters.sort();
                        c.learners.sort();
                        c.voters == *target && c.learners == *followers && c.voters_outgoing.is_empty()
                    })
            })
    }

    /// Every chat group's posts reached every member.
    fn fanned_out(&self) -> bool {
        chat_groups().iter().all(|g| {
            self.leader_of(placement::of_group(g))
                .and_then(|leader| group_record(&leader.kv, g))
                .is_some_and(|r| r.fanout_seq == r.last_seq)
        })
    }

    fn describe_groups(&self) -> Vec<String> {
        (0..GROUPS)
            .map(|group| {
                let states: Vec<String> = (1..=NODES)
                    .filter(|id| self.nodes[(*id - 1) as usize].raft.applied(group).is_some())
                    .map(|id| {
                        let r = &self.nodes[(id - 1) as usize].raft;
                        format!(
                            "node {id}: applied {:?} term {:?} leader {:?}{} configuration {:?}",
                            r.applied(group),
                            r.term(group),
                            r.leader(group),
                            if r.is_leader(group) { " (leading)" } else { "" },
                            r.conf_state(group)
                                .map(|c| (c.voters, c.learners, c.voters_outgoing))
                        )
                    })
                    .collect();
                let conf = self
                    .leader_of(group as Partition)
                    .and_then(|l| l.raft.conf_state(group));
                format!(
                    "group {group}: target {:?}, leader's configuration {:?}; {}",
                    self.final_targets().get(&group),
                    conf.map(|c| (c.voters, c.learners, c.voters_outgoing)),
                    states.join("; ")
                )
            })
            .collect()
    }

    /// Checks what was acknowledged against every replica's records.
    fn check_end(&mut self) {
        if !self.done() {
            let unacked: usize = self.clients.iter().map(|c| c.plan.len() - c.next).sum();
            let groups = self.describe_groups();
            self.trace.violations.push(format!(
                "not settled {SETTLE_MS} ms after the faults: {unacked} steps unacknowledged, fanned out: {}; {groups:#?}",
                self.fanned_out()
            ));
            return;
        }
        let mut violations = Vec::new();
        let targets = self.final_targets();
        // Every replica of a partition holds the same records.
        for group in all_groups() {
            let p = group as Partition;
            let (voters, followers) = &targets[&group];
            let copies: Vec<(NodeId, Records)> = voters
                .iter()
                .chain(followers)
                .copied()
                .map(|id| (id, partition_records(&self.nodes[(id - 1) as usize].kv, p)))
                .collect();
            for (id, copy) in &copies[1..] {
                if *copy != copies[0].1 {
                    violations.push(format!("partition {p}: replicas {} and {id} differ", copies[0].0));
                }
            }
        }
        let kv_of = |p: Partition| &self.leader_of(p).expect("settled").kv;
        // Inboxes: gap-free seqs, each origin once, group posts in group order.
        let mut inboxes = BTreeMap::new();
        for user in users() {
            let (meta, entries) = inbox_of(kv_of(placement::of_user(&user)), &user);
            let seqs: Vec<u64> = entries.keys().copied().collect();
            let expected: Vec<u64> = if meta.last_seq == 0 {
                Vec::new()
            } else {
                (meta.first_seq..=meta.last_seq).collect()
            };
            if seqs != expected {
                violations.push(format!("inbox {user}: seqs {seqs:?}, meta {meta:?}"));
            }
            let mut origins = BTreeSet::new();
            let mut last_group_seq: BTreeMap<&str, u64> = BTreeMap::new();
            for (seq, e) in &entries {
                if !origins.insert(e.origin.clone()) {
                    violations.push(format!(
                        "inbox {user}: seq {seq} is a duplicate of an earlier entry"
                    ));
                }
                if e.group_seq > 0
                    && let Some(prev) = last_group_seq.insert(e.conversation.as_str(), e.group_seq)
                    && prev >= e.group_seq
                {
                    violations.push(format!(
                        "inbox {user}: post {} of {} at seq {seq} after post {prev}",
                        e.group_seq, e.conversation
                    ));
                }
            }
            inboxes.insert(user, entries);
        }
        // Every acknowledged private message is where its acknowledgement said.
        for ((to, from, client_id), (seq, id)) in &self.trace.private_acks {
            match inboxes.get(to).and_then(|e| e.get(seq)) {
                Some(e)
                    if e.origin == keys::private_origin(from, client_id)
                        && &e.message_id == id
                        && *id == keys::private_message_id(to, from, client_id) => {}
                other => violations.push(format!(
                    "{from}/{client_id} acknowledged at {to}'s seq {seq} ({id}), found {other:?}"
                )),
            }
        }
        // Every acknowledged post is in its group's log where its acknowledgement said,
        // and every post reached every recipient exactly once.
        for ((group, from, client_id), (seq, id)) in &self.trace.post_acks {
            match group_post(kv_of(placement::of_group(group)), group, *seq) {
                Some(m) if &m.from == from && &m.client_msg_id == client_id && &m.message_id == id => {}
                other => violations.push(format!(
                    "{from}/{client_id} acknowledged as post {seq} of {group}, found {other:?}"
                )),
            }
        }
        for group in chat_groups() {
            let kv = kv_of(placement::of_group(&group));
            let last = group_record(kv, &group).map(|r| r.last_seq).unwrap_or(0);
            for seq in 1..=last {
                let post = group_post(kv, &group, seq).expect("posts are kept");
                for r in &post.recipients {
                    let origin = keys::group_origin(&group, seq);
                    let copies = inboxes
                        .get(r)
                        .map(|e| e.values().filter(|e| e.origin == origin).count())
                        .unwrap_or(0);
                    if copies != 1 {
                        violations.push(format!("post {seq} of {group} is {copies} times in {r}'s inbox"));
                    }
                }
            }
        }
        // One sender's messages keep the order of their acknowledgements, per conversation.
        for (sender, order) in &self.trace.acked_order {
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            for acked in order {
                let (conversation, seq) = match acked {
                    Acked::Private { to, client_id } => (
                        to.clone(),
                        self.trace.private_acks[&(to.clone(), sender.clone(), client_id.clone())].0,
                    ),
                    Acked::Post { group, client_id } => (
                        format!("#{group}"),
                        self.trace.post_acks[&(group.clone(), sender.clone(), client_id.clone())].0,
                    ),
                };
                if let Some(prev) = last.insert(conversation.clone(), seq)
                    && prev >= seq
                {
                    violations.push(format!(
                        "{sender}: {acked:?} at {seq} in {conversation} after {prev}"
                    ));
                }
            }
        }
        self.trace.violations.extend(violations);
    }
}

/// Runs one schedule; returns the violations (empty when it passed) and the fault trace.
/// A panic (raft-rs asserts that persisted state was not lost) counts as a violation.
fn run(seed: u64, verbose: bool) -> (Vec<String>, Vec<String>) {
    match std::panic::catch_unwind(|| run_schedule(seed, verbose)) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (vec![format!("panicked: {what}")], Vec::new())
        }
    }
}

fn run_schedule(seed: u64, verbose: bool) -> (Vec<String>, Vec<String>) {
    let mut sim = Sim::new(seed, verbose);
    let mut next_fault = 200 + sim.rng.below(800);
    while sim.now < FAULT_WINDOW_MS {
        if sim.now >= next_fault {
            sim.fault();
            next_fault = sim.now + 100 + sim.rng.below(1500);
        }
        sim.step();
        if !sim.trace.violations.is_empty() {
            return (sim.trace.violations, sim.trace.log);
        }
    }
    sim.heal_all();
    let mut end = sim.now + SETTLE_MS;
    let mut grace = true;
    loop {
        while sim.now < end && !sim.done() {
            sim.step();
            if !sim.trace.violations.is_empty() {
                return (sim.trace.violations, sim.trace.log);
            }
        }
        // Settled, every post fanned out, but a client not done yet (seed 919448: eight
        // tries in a row at nodes without the group, 400 ms each).
        if grace && !sim.done() && sim.caught_up() && sim.fanned_out() {
            grace = false;
            end = sim.now + CLIENT_GRACE_MS;
            continue;
        }
        break;
    }
    sim.check_end();
    (sim.trace.violations, sim.trace.log)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Seeds beyond the default range that once failed, replayed in every run:
/// - 701577: a voter removed outright deleted its replica while the two others had not
///   learned that the change was committed; with the leader gone, they needed its vote
///   and the group stayed leaderless (voters now step down to learners first).
/// - 901623: a power cut between a snapshot round's sync of the records and its log's;
///   the start installed the records' snapshot in the log in memory only, appended after
///   it, and the next start installed it again over those entries (the log is now
///   written whole at such a start).
/// - 919448: not a fault of the cluster (every group settled, every post fanned out),
///   a client still retrying at the end of the settling time (see `CLIENT_GRACE_MS`).
const FOUND_BY_LONGER_RUNS: &[u64] = &[701577, 901623, 919448];

#[test]
fn seeded_schedules_lose_duplicate_and_reorder_nothing() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let (violations, log) = run(seed, std::env::var("SIM_TRACE").is_ok());
        for line in &log {
            eprintln!("{line}");
        }
        assert!(violations.is_empty(), "seed {seed}: {violations:#?}");
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(1000);
    let base = env_u64("SIM_BASE").unwrap_or(1);
    let mut failures = Vec::new();
    for seed in (base..base + seeds).chain(FOUND_BY_LONGER_RUNS.iter().copied()) {
        let (violations, _) = run(seed, false);
        if !violations.is_empty() {
            failures.push((seed, violations));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} schedules failed; replay one with SIM_SEED=<seed>: {:#?}",
        failures.len(),
        failures.iter().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn a_schedule_replays_exactly() {
    let (a, log_a) = run(7, false);
    let (b, log_b) = run(7, false);
    assert_eq!(a, b);
    assert_eq!(log_a, log_b);
}
