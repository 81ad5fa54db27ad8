//! Deterministic simulation of a cluster built from `MultiRaft`: many nodes in one
//! process, a simulated network that drops, delays, duplicates, reorders and partitions
//! messages, crashes that keep only what was synced, pauses, and clients that resend
//! with the same client message id until acknowledged. Every step checks the safety
//! invariants; the end of a schedule checks that nothing acknowledged was lost,
//! duplicated or moved, and that every inbox's seqs are gap-free.
//!
//! A schedule is a seed. `SIM_SEEDS=N` runs N seeds (default 1000), `SIM_SEED=S` replays
//! one with a trace of every fault (`SIM_TRACE=1` adds every step's elections).

use chat_consensus::eraftpb::Message;
use chat_consensus::logger::discard;
use chat_consensus::{GroupId, LogWrite, MultiRaft, NodeId, PersistedLog, RaftConfig, Round, decode_message};
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

const NODES: u64 = 5;
const GROUPS: u32 = 6;
const REPLICAS: usize = 3;
const USERS: usize = 9;
const CLIENTS: usize = 6;
const MESSAGES_PER_CLIENT: usize = 12;
/// Milliseconds per tick.
const TICK_MS: u64 = 10;
/// How long a client waits for an answer before trying another node.
const CLIENT_TIMEOUT_MS: u64 = 400;
/// Faults happen in this window; then the network heals and everyone restarts.
const FAULT_WINDOW_MS: u64 = 6_000;
/// After the faults, everything must be acknowledged and caught up within this.
const SETTLE_MS: u64 = 20_000;

// ---------------------------------------------------------------------------------
// The model state machine: inboxes with dedupe by (sender, client id) and gap-free seqs.
// ---------------------------------------------------------------------------------

/// A send, as proposed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Send {
    inbox: String,
    sender: String,
    client_id: String,
    text: String,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn get_str(input: &mut &[u8]) -> Option<String> {
    let len = u16::from_be_bytes(input.get(..2)?.try_into().ok()?) as usize;
    let s = std::str::from_utf8(input.get(2..2 + len)?).ok()?.to_owned();
    *input = &input[2 + len..];
    Some(s)
}

impl Send {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for s in [&self.inbox, &self.sender, &self.client_id, &self.text] {
            put_str(&mut out, s);
        }
        out
    }
    fn decode(mut input: &[u8]) -> Option<Self> {
        Some(Self {
            inbox: get_str(&mut input)?,
            sender: get_str(&mut input)?,
            client_id: get_str(&mut input)?,
            text: get_str(&mut input)?,
        })
    }
}

type Kv = BTreeMap<Vec<u8>, Vec<u8>>;

fn group_prefix(group: GroupId) -> [u8; 4] {
    group.to_be_bytes()
}

fn key(group: GroupId, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = group_prefix(group).to_vec();
    for p in parts {
        k.extend_from_slice(&(p.len() as u16).to_be_bytes());
        k.extend_from_slice(p);
    }
    k
}

/// One change to the key-value state, as the disk records it.
#[derive(Debug, Clone)]
enum KvOp {
    Put(Vec<u8>, Vec<u8>),
    /// Replace everything of a group (a snapshot was installed).
    ReplaceGroup(GroupId, Vec<(Vec<u8>, Vec<u8>)>),
}

fn apply_kv(kv: &mut Kv, op: &KvOp) {
    match op {
        KvOp::Put(k, v) => {
            kv.insert(k.clone(), v.clone());
        }
        KvOp::ReplaceGroup(group, records) => {
            let prefix = group_prefix(*group);
            kv.retain(|k, _| !k.starts_with(&prefix));
            kv.extend(records.iter().cloned());
        }
    }
}

/// Applies a send: returns its seq (the old one for a duplicate) and the writes.
fn apply_send(kv: &Kv, group: GroupId, send: &Send) -> (u64, Vec<KvOp>) {
    let origin = key(
        group,
        &[
            b"o",
            send.inbox.as_bytes(),
            send.sender.as_bytes(),
            send.client_id.as_bytes(),
        ],
    );
    if let Some(seq) = kv.get(&origin) {
        return (
            u64::from_be_bytes(seq.as_slice().try_into().expect("seq")),
            Vec::new(),
        );
    }
    let meta = key(group, &[b"m", send.inbox.as_bytes()]);
    let last = kv
        .get(&meta)
        .map(|v| u64::from_be_bytes(v.as_slice().try_into().expect("seq")))
        .unwrap_or(0);
    let seq = last + 1;
    let entry = key(group, &[b"e", send.inbox.as_bytes(), &seq.to_be_bytes()]);
    (
        seq,
        vec![
            KvOp::Put(origin, seq.to_be_bytes().to_vec()),
            KvOp::Put(meta, seq.to_be_bytes().to_vec()),
            KvOp::Put(entry, send.encode()),
        ],
    )
}

fn snapshot_of(kv: &Kv, group: GroupId) -> Vec<u8> {
    let prefix = group_prefix(group);
    let mut out = Vec::new();
    for (k, v) in kv
        .range(prefix.to_vec()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
    {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    out
}

fn records_of(mut data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut records = Vec::new();
    let take = |data: &mut &[u8]| {
        let len = u32::from_be_bytes(data[..4].try_into().expect("len")) as usize;
        let out = data[4..4 + len].to_vec();
        *data = &data[4 + len..];
        out
    };
    while !data.is_empty() {
        let k = take(&mut data);
        let v = take(&mut data);
        records.push((k, v));
    }
    records
}

/// The inbox entries of one user, by seq, read from a group's state.
fn inbox_of(kv: &Kv, group: GroupId, user: &str) -> BTreeMap<u64, Send> {
    let prefix = key(group, &[b"e", user.as_bytes()]);
    let mut out = BTreeMap::new();
    for (k, v) in kv
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
    {
        let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("seq"));
        out.insert(seq, Send::decode(v).expect("stored sends decode"));
    }
    out
}

// ---------------------------------------------------------------------------------
// Placement
// ---------------------------------------------------------------------------------

fn hash(parts: &[u64]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.to_be_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The voters of a group: the first `REPLICAS` nodes by rendezvous weight.
fn voters(group: GroupId) -> Vec<NodeId> {
    let mut nodes: Vec<NodeId> = (1..=NODES).collect();
    nodes.sort_by_key(|n| std::cmp::Reverse(hash(&[group as u64, *n])));
    nodes.truncate(REPLICAS);
    nodes.sort();
    nodes
}

fn group_of(user: &str) -> GroupId {
    (hash(&[user.len() as u64, user.bytes().map(u64::from).sum()]) % GROUPS as u64) as GroupId
}

fn user(i: usize) -> String {
    format!("u{i}")
}

// ---------------------------------------------------------------------------------
// Nodes with a disk that keeps only what was synced
// ---------------------------------------------------------------------------------

/// What a node's disk holds.
#[derive(Debug, Clone, Default)]
struct Disk {
    logs: BTreeMap<GroupId, PersistedLog>,
    kv: Kv,
}

#[derive(Debug, Clone)]
enum DiskOp {
    Log(GroupId, Box<LogWrite>),
    Kv(KvOp),
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
    if let Some(applied) = write.applied {
        log.applied = applied;
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

/// A request of a client, waiting at a node for its entry to apply.
type Token = u64;

struct Node {
    id: NodeId,
    raft: MultiRaft<Token>,
    up: bool,
    paused: bool,
    /// The state as the process sees it (synced and not).
    kv: Kv,
    disk: Disk,
    /// Writes not yet synced, in order.
    pending: Vec<DiskOp>,
    /// Between start_round and finish_round: the round's sync is under way.
    mid_round: bool,
    tick_phase: u64,
    /// Requests proposed here, by token: which client asked.
    requests: HashMap<Token, usize>,
}

fn raft_config() -> RaftConfig {
    RaftConfig {
        election_ticks: 10,
        heartbeat_ticks: 2,
        fixed_election_timeout: true,
        max_inflight: 16,
        max_size_per_msg: 4096,
        compact_threshold: 40,
        compact_keep: 8,
    }
}

impl Node {
    fn start(id: NodeId, disk: Disk, tick_phase: u64) -> Self {
        let logger = if std::env::var("SIM_RAFT_LOG").is_ok() {
            slog::Logger::root(StderrDrain, slog::o!("node" => id))
        } else {
            discard()
        };
        let mut raft = MultiRaft::new(id, raft_config(), logger);
        for group in 0..GROUPS {
            if !voters(group).contains(&id) {
                continue;
            }
            match disk.logs.get(&group) {
                Some(log) => raft.restore(group, log).expect("restore"),
                None => raft.create(group, &voters(group)).expect("create"),
            }
        }
        Self {
            id,
            raft,
            up: true,
            paused: false,
            kv: disk.kv.clone(),
            disk,
            pending: Vec::new(),
            mid_round: false,
            tick_phase,
            requests: HashMap::new(),
        }
    }

    /// Applies a round's writes and entries to the live state; returns the answers.
    fn take_round(&mut self, round: &mut Round<Token>, trace: &mut Trace) -> Vec<(Token, u64)> {
        for (group, write) in round.writes.drain(..) {
            if let Some(snapshot) = &write.snapshot {
                let op = KvOp::ReplaceGroup(group, records_of(snapshot.get_data()));
                apply_kv(&mut self.kv, &op);
                self.pending.push(DiskOp::Kv(op));
            }
            self.pending.push(DiskOp::Log(group, Box::new(write)));
        }
        let mut answers = Vec::new();
        for apply in round.apply.drain(..) {
            let send = Send::decode(&apply.data).expect("proposals decode");
            trace.applied(self.id, apply.group, apply.index, &apply.data);
            let (seq, ops) = apply_send(&self.kv, apply.group, &send);
            for op in ops {
                apply_kv(&mut self.kv, &op);
                self.pending.push(DiskOp::Kv(op));
            }
            if let Some(token) = apply.proposer {
                answers.push((token, seq));
            }
        }
        for group in round.snapshot_wanted.drain(..) {
            let data = snapshot_of(&self.kv, group);
            self.raft.offer_snapshot(group, data);
        }
        answers
    }

    fn sync(&mut self) {
        for op in self.pending.drain(..) {
            match op {
                DiskOp::Log(group, write) => {
                    apply_log_write(self.disk.logs.entry(group).or_default(), &write)
                }
                DiskOp::Kv(op) => apply_kv(&mut self.disk.kv, &op),
            }
        }
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

#[derive(Debug, Clone)]
struct Client {
    sender: String,
    /// The messages to send, in order: (inbox, client id).
    plan: Vec<(String, String)>,
    next: usize,
    /// The node asked and when to give up on it.
    asked: Option<(NodeId, u64, Token)>,
    /// A node to try next (a leader hint).
    hint: Option<NodeId>,
}

/// Everything seen, for the invariants.
#[derive(Default)]
struct Trace {
    /// (group, term) -> the leader seen.
    leaders: HashMap<(GroupId, u64), NodeId>,
    /// (group, index) -> the entry applied there, by whoever applied it first.
    applied: HashMap<(GroupId, u64), Vec<u8>>,
    violations: Vec<String>,
    /// (inbox, sender, client id) -> acknowledged seq.
    acks: BTreeMap<(String, String, String), u64>,
    /// Per sender, the acknowledged messages in the order acknowledged.
    acked_order: BTreeMap<String, Vec<(String, String)>>,
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
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = Rng::new(seed);
        let nodes = (1..=NODES)
            .map(|id| Node::start(id, Disk::default(), rng.below(TICK_MS)))
            .collect();
        let clients = (0..CLIENTS)
            .map(|c| {
                let sender = user(c);
                let plan = (0..MESSAGES_PER_CLIENT)
                    .map(|m| (user(rng.below(USERS as u64) as usize), format!("{sender}-{m}")))
                    .collect();
                Client {
                    sender,
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
                // The kernel keeps it in the socket until the process runs again.
                self.net.push(InFlight { at: now + 1, ..m });
                continue;
            }
            let message: Message = decode_message(&m.bytes).expect("messages decode");
            // Unknown groups (never here) and refused messages are dropped, as on a real node.
            let _ = node.raft.step(m.group, message);
        }
    }

    fn crash(&mut self, id: NodeId) {
        let node = self.node(id);
        node.up = false;
        node.paused = false;
        node.pending.clear();
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
        self.deliver();
        let now = self.now;
        for i in 0..self.nodes.len() {
            let id = self.nodes[i].id;
            if !self.nodes[i].up || self.nodes[i].paused {
                continue;
            }
            if (now + self.nodes[i].tick_phase) % TICK_MS == 0 {
                self.nodes[i].raft.tick();
            }
            // Second half of a round: the sync completed.
            if self.nodes[i].mid_round {
                self.nodes[i].sync();
                self.nodes[i].mid_round = false;
                let send = self.nodes[i].raft.finish_round();
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
        }
        self.check_leaders();
        self.clients_act();
        self.now += 1;
    }

    fn answer(&mut self, node: usize, answers: Vec<(Token, u64)>, dropped: Vec<Token>) {
        for (token, seq) in answers {
            let Some(client) = self.nodes[node].requests.remove(&token) else {
                continue;
            };
            let c = &mut self.clients[client];
            if c.asked.map(|(_, _, t)| t) != Some(token) {
                continue;
            }
            let (inbox, client_id) = c.plan[c.next].clone();
            let sender = c.sender.clone();
            c.asked = None;
            c.next += 1;
            let ack_key = (inbox.clone(), sender.clone(), client_id.clone());
            if let Some(old) = self.trace.acks.get(&ack_key)
                && *old != seq
            {
                self.trace
                    .violations
                    .push(format!("{ack_key:?} acknowledged at seq {old} and then {seq}"));
            }
            self.trace.acks.insert(ack_key, seq);
            self.trace
                .acked_order
                .entry(sender)
                .or_default()
                .push((inbox, client_id));
        }
        for token in dropped {
            if let Some(client) = self.nodes[node].requests.remove(&token) {
                let c = &mut self.clients[client];
                if c.asked.map(|(_, _, t)| t) == Some(token) {
                    c.asked = None;
                }
            }
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
            let (inbox, client_id) = self.clients[c].plan[self.clients[c].next].clone();
            let send = Send {
                inbox: inbox.clone(),
                sender: self.clients[c].sender.clone(),
                client_id,
                text: format!("from {} to {inbox}", self.clients[c].sender),
            };
            let token = self.next_token;
            self.next_token += 1;
            self.clients[c].asked = Some((target, self.now + CLIENT_TIMEOUT_MS, token));
            let node = self.node(target);
            if !node.up || node.paused {
                continue; // no answer: the client times out
            }
            match node.raft.propose(group_of(&inbox), send.encode(), token) {
                Ok(()) => {
                    node.requests.insert(token, c);
                }
                Err(chat_consensus::Error::NotLeader { leader, .. }) => {
                    self.clients[c].asked = None;
                    self.clients[c].hint = leader;
                }
                Err(_) => self.clients[c].asked = None,
            }
        }
    }

    fn fault(&mut self) {
        let kind = self.rng.below(9);
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
                if self.node(victim).up {
                    self.trace.note(self.now, format!("crash node {victim}"));
                    self.crash(victim);
                }
            }
            5 => {
                if !self.node(victim).up {
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
            7 => {
                // A power cut: every node loses what it had not synced, then starts again.
                self.trace
                    .note(self.now, "power cut: every node crashes and restarts".into());
                for id in 1..=NODES {
                    self.crash(id);
                    self.restart(id);
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
            if !self.node(id).up {
                self.restart(id);
            }
            self.node(id).paused = false;
        }
    }

    fn done(&self) -> bool {
        self.clients.iter().all(|c| c.next >= c.plan.len()) && self.caught_up()
    }

    /// Every replica of every group has applied the same last index.
    fn caught_up(&self) -> bool {
        (0..GROUPS).all(|group| {
            let applied: BTreeSet<Option<u64>> = voters(group)
                .iter()
                .map(|id| self.nodes[(*id - 1) as usize].raft.applied(group))
                .collect();
            applied.len() == 1
                && voters(group)
                    .iter()
                    .any(|id| self.nodes[(*id - 1) as usize].raft.is_leader(group))
        })
    }

    /// Checks what was acknowledged against every replica's state.
    fn check_end(&mut self) {
        if !self.done() {
            let unacked: usize = self.clients.iter().map(|c| c.plan.len() - c.next).sum();
            let mut groups = Vec::new();
            for group in 0..GROUPS {
                let states: Vec<String> = voters(group)
                    .iter()
                    .map(|id| {
                        let r = &self.nodes[(*id - 1) as usize].raft;
                        format!(
                            "node {id}: applied {:?} term {:?} leader {:?}{}",
                            r.applied(group),
                            r.term(group),
                            r.leader(group),
                            if r.is_leader(group) { " (leading)" } else { "" }
                        )
                    })
                    .collect();
                groups.push(format!("group {group}: {}", states.join("; ")));
            }
            self.trace.violations.push(format!(
                "not settled {SETTLE_MS} ms after the faults: {unacked} sends unacknowledged; {groups:#?}"
            ));
            return;
        }
        for u in 0..USERS {
            let name = user(u);
            let group = group_of(&name);
            let mut copies = Vec::new();
            for id in voters(group) {
                copies.push((id, inbox_of(&self.nodes[(id - 1) as usize].kv, group, &name)));
            }
            let (first_id, first) = &copies[0];
            for (id, copy) in &copies[1..] {
                if copy != first {
                    self.trace
                        .violations
                        .push(format!("inbox {name}: replicas {first_id} and {id} differ"));
                }
            }
            let seqs: Vec<u64> = first.keys().copied().collect();
            if seqs != (1..=seqs.len() as u64).collect::<Vec<_>>() {
                self.trace
                    .violations
                    .push(format!("inbox {name}: seqs not gap-free: {seqs:?}"));
            }
            let mut seen = BTreeSet::new();
            for send in first.values() {
                if !seen.insert((send.sender.clone(), send.client_id.clone())) {
                    self.trace.violations.push(format!(
                        "inbox {name}: duplicate {}/{}",
                        send.sender, send.client_id
                    ));
                }
            }
        }
        for ((inbox, sender, client_id), seq) in &self.trace.acks {
            let group = group_of(inbox);
            let leader = voters(group)
                .into_iter()
                .find(|id| self.nodes[(*id - 1) as usize].raft.is_leader(group));
            let kv = &self.nodes[(leader.expect("caught up") - 1) as usize].kv;
            match inbox_of(kv, group, inbox).get(seq) {
                Some(send) if &send.sender == sender && &send.client_id == client_id => {}
                other => self.trace.violations.push(format!(
                    "acknowledged {sender}/{client_id} to {inbox} at seq {seq}, found {other:?}"
                )),
            }
        }
        // One sender's messages to one inbox are in the order they were acknowledged.
        for order in self.trace.acked_order.values() {
            let mut last: BTreeMap<&str, u64> = BTreeMap::new();
            for (inbox, client_id) in order {
                let sender = client_id.split('-').next().expect("client ids name their sender");
                let seq = self.trace.acks[&(inbox.clone(), sender.to_owned(), client_id.clone())];
                if let Some(prev) = last.insert(inbox, seq)
                    && prev >= seq
                {
                    self.trace
                        .violations
                        .push(format!("{client_id} to {inbox} at seq {seq} after seq {prev}"));
                }
            }
        }
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
    let end = sim.now + SETTLE_MS;
    while sim.now < end && !sim.done() {
        sim.step();
        if !sim.trace.violations.is_empty() {
            return (sim.trace.violations, sim.trace.log);
        }
    }
    sim.check_end();
    (sim.trace.violations, sim.trace.log)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

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
    for seed in base..base + seeds {
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
