//! The thread that runs this node's Raft groups: it feeds [`MultiRaft`] with proposals,
//! peer messages and ticks, and executes its rounds: send what may go at once, apply
//! committed commands to the partitions' records, write everything in one batch, sync
//! once, then send what had to wait for the sync.
//!
//! It is a plain OS thread, not an actor on the async runtime: a round's sync blocks,
//! and nothing else should wait behind it. Callers talk to it through [`Handle`]; their
//! answers come back through the closures they hand in, run on this thread (so a
//! closure only sends or casts).

use super::disk::{self, Disk, Pending};
use chat_consensus::eraftpb::Message;
use chat_consensus::{Error as RaftError, GroupId, MultiRaft, NodeId, Outgoing, RaftConfig};
use chat_protocol::internal::Outcome;
use chat_state::placement::Partition;
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
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

/// Makes a round's writes durable (sled's flush, then `fdatasync`).
pub trait Sync: Send + 'static {
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
        }
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
    },
    Inspect(Look),
    Stop,
}

type Token = u64;

/// A look at the Raft state, run on the driver thread.
type Look = Box<dyn FnOnce(&MultiRaft<Token>) + Send>;

enum Waiter {
    Propose(ProposeReply),
    Read(ReadReply),
}

/// The way into the driver thread.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Input>,
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
        let _ = self.tx.send(Input::Create {
            group: GroupId::from(partition),
            voters,
        });
    }

    /// Runs `look` on the driver thread with the current Raft state (status pages, tests).
    pub fn inspect(&self, look: impl FnOnce(&MultiRaft<Token>) + Send + 'static) {
        let _ = self.tx.send(Input::Inspect(Box::new(look)));
    }

    /// Stops the thread after its current round; waiting callers get `Stopped`.
    pub fn stop(&self) {
        let _ = self.tx.send(Input::Stop);
    }
}

/// Starts the driver thread for node `id` over `disk`, restoring every group persisted
/// there.
pub fn start(
    id: NodeId,
    timing: Timing,
    disk: Disk,
    sync: impl Sync,
    transport: impl Transport,
    logger: chat_consensus::Logger,
) -> Result<(Handle, std::thread::JoinHandle<()>), disk::DiskError> {
    let mut raft = MultiRaft::new(id, timing.raft.clone(), logger);
    for (group, log) in disk.load()? {
        // Only a group with a configuration was ever created here.
        if !log.conf_state.voters.is_empty() || !log.conf_state.learners.is_empty() {
            raft.restore(group, &log)
                .map_err(|_| disk::DiskError::Corrupt(group))?;
        }
    }
    let (tx, rx) = mpsc::channel();
    let mut driver = Driver {
        raft,
        disk,
        sync,
        transport,
        rx,
        waiting: HashMap::new(),
        next_token: 1,
        tick: timing.tick,
    };
    let thread = std::thread::Builder::new()
        .name(format!("consensus-{id}"))
        .spawn(move || driver.run())
        .expect("spawn the consensus thread");
    Ok((Handle { tx }, thread))
}

struct Driver<S, T> {
    raft: MultiRaft<Token>,
    disk: Disk,
    sync: S,
    transport: T,
    rx: mpsc::Receiver<Input>,
    waiting: HashMap<Token, Waiter>,
    next_token: Token,
    tick: Duration,
}

impl<S: Sync, T: Transport> Driver<S, T> {
    fn run(&mut self) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let timeout = next_tick.saturating_duration_since(Instant::now());
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
            if Instant::now() >= next_tick {
                self.raft.tick();
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
    }

    /// Handles one input; true to stop.
    fn handle(&mut self, input: Input) -> bool {
        match input {
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
                    }
                    Err(e) => reply(Err(refusal(group, e))),
                }
            }
            Input::Read { group, reply } => {
                let token = self.next_token;
                self.next_token += 1;
                match self.raft.read(group, token) {
                    Ok(()) => {
                        self.waiting.insert(token, Waiter::Read(reply));
                    }
                    Err(e) => reply(Err(refusal(group, e))),
                }
            }
            Input::Peer { group, message } => match chat_consensus::decode_message(&message) {
                Ok(message) => self.step(group, message),
                Err(e) => tracing::warn!(group, error = %e, "undecodable raft message dropped"),
            },
            Input::Create { group, voters } => {
                if self.raft.voters(group).is_empty()
                    && let Err(e) = self.raft.create(group, &voters)
                {
                    tracing::warn!(group, error = %e, "group not created");
                }
            }
            Input::Inspect(look) => look(&self.raft),
            Input::Stop => return true,
        }
        false
    }

    fn step(&mut self, group: GroupId, message: Message) {
        if let Err(e) = self.raft.step(group, message) {
            tracing::debug!(group, error = %e, "raft message refused");
        }
    }

    /// One round: see the module's documentation.
    fn round(&mut self) -> Result<(), disk::DiskError> {
        let mut round = self.raft.start_round();
        self.send(std::mem::take(&mut round.send));
        let mut pending = Pending::new();
        let mut batch = sled::Batch::default();
        let mut answers = Vec::new();
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
            for group in round.snapshot_wanted.drain(..) {
                let prefix = chat_state::keys::partition_prefix(group as Partition);
                let records = chat_state::Store::scan(&overlay, &prefix, None, usize::MAX)
                    .map_err(|_| disk::DiskError::Corrupt(group))?;
                let data =
                    chat_state::snapshot::encode(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                self.raft.offer_snapshot(group, data);
            }
        }
        for (group, write) in &round.writes {
            self.disk.write_log(&mut batch, *group, write)?;
        }
        disk::write_records(&mut batch, pending);
        self.disk.apply(batch)?;
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
        self.sync
            .sync()
            .map_err(|e| disk::DiskError::Sled(sled::Error::Io(e)))?;
        let held = self.raft.finish_round();
        self.send(held);
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
