//! Many Raft groups on one node, driven together in rounds.
//!
//! A round batches the work of every group: [`MultiRaft::start_round`] collects each
//! group's ready state (messages a leader may send at once, log writes, committed entries
//! to apply), the caller writes all of it with one durable sync, then
//! [`MultiRaft::finish_round`] releases what had to wait for that sync (a follower's
//! answers, newly committed entries). So one fsync and one envelope per peer serve every
//! partition of the node, as TiKV's raftstore does.
//!
//! Nothing here does I/O or reads a clock: time is [`MultiRaft::tick`], the network is
//! [`Outgoing`] out and [`MultiRaft::step`] in, the disk is [`LogWrite`]s out and
//! [`PersistedLog`]s in, and the state machine is the caller's, fed [`Apply`] items.

use crate::store::{LogStore, LogWrite, PersistedLog};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType};
use raft::{RawNode, ReadOnlyOption, StateRole, Storage};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Election timeouts during which an heir that did not take over is passed over.
const TRANSFER_RETRY_ELECTIONS: u64 = 4;

/// A node of the cluster, as Raft numbers it (never 0).
pub type NodeId = u64;

/// A Raft group: one partition.
pub type GroupId = u32;

/// Failures of the multi-raft driver.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// This node has no replica of the group.
    #[error("no replica of group {0} here")]
    UnknownGroup(GroupId),
    /// This replica does not lead the group; `leader` is the last leader it heard of.
    #[error("not the leader of group {group} (leader: {leader:?})")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader this replica knows of, if any.
        leader: Option<NodeId>,
    },
    /// Raft refused the proposal (for example while leadership is being transferred).
    #[error("proposal to group {0} dropped")]
    Dropped(GroupId),
    /// A message from a peer could not be decoded or was refused.
    #[error("bad raft message: {0}")]
    BadMessage(String),
    /// A group already exists here.
    #[error("group {0} already exists here")]
    Exists(GroupId),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// Raft's timing and flow settings, in ticks; the caller decides how long a tick is.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Ticks without a heartbeat before a follower campaigns (randomised in
    /// `[election_ticks, 2 * election_ticks)` unless `fixed_election_timeout`).
    pub election_ticks: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Use exactly `election_ticks` (raft-rs draws the randomised timeout from its own
    /// thread-local generator; the simulator jitters ticks itself so that runs replay).
    pub fixed_election_timeout: bool,
    /// Appends in flight per follower.
    pub max_inflight: usize,
    /// Bytes of entries per append message.
    pub max_size_per_msg: u64,
    /// Compact a group's log once this many entries can go (compactions are written
    /// to the log, so they come in steps of at least this many).
    pub compact_threshold: u64,
    /// Entries always kept behind the durably applied index when compacting.
    pub compact_keep: u64,
    /// At most this many entries kept behind the durably applied index for a leader's
    /// followers that are behind, so that they catch up from the log; a follower
    /// further behind, or silent for longer than `compact_keep_silent_ticks`, catches up
    /// from a snapshot. Bounds the log held in memory (and rewritten with the log file)
    /// to about `compact_keep` entries per group while every follower keeps up.
    pub compact_keep_for_followers: u64,
    /// Ticks a follower may stay silent (a restart, a short partition) and still have
    /// entries kept for it.
    pub compact_keep_silent_ticks: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_ticks: 10,
            heartbeat_ticks: 2,
            fixed_election_timeout: false,
            max_inflight: 256,
            max_size_per_msg: 1 << 20,
            compact_threshold: 64,
            compact_keep: 32,
            compact_keep_for_followers: 2048,
            compact_keep_silent_ticks: 600,
        }
    }
}

/// A Raft message for a peer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The group it belongs to.
    pub group: GroupId,
    /// The message (its `to` names the peer).
    pub message: Message,
}

impl Outgoing {
    /// The peer it goes to.
    pub fn to(&self) -> NodeId {
        self.message.to
    }

    /// The message's wire form.
    pub fn encode(&self) -> Vec<u8> {
        self.message
            .write_to_bytes()
            .expect("raft messages always encode")
    }
}

/// Decodes a peer's Raft message.
pub fn decode_message(bytes: &[u8]) -> Result<Message> {
    Message::parse_from_bytes(bytes).map_err(|e| Error::BadMessage(e.to_string()))
}

/// A committed entry for the state machine.
#[derive(Debug, Clone)]
pub struct Apply<P> {
    /// Its group.
    pub group: GroupId,
    /// Its index in the group's log.
    pub index: u64,
    /// What was proposed.
    pub data: bytes::Bytes,
    /// The token of the proposal, when it was proposed on this node and is the entry
    /// that was proposed (not another one that took its index after a leader change).
    pub proposer: Option<P>,
}

/// What a round asks of the caller. Handle it in this order: send, write, apply; then sync.
#[derive(Debug)]
pub struct Round<P> {
    /// Messages that may go out before this round's writes are durable (a leader's
    /// appends and heartbeats: Raft counts the leader's own copy only once it is durable).
    pub send: Vec<Outgoing>,
    /// Per group, what to persist. A `LogWrite::snapshot` replaces the group's applied
    /// state by the snapshot's data before the group's `apply` items.
    pub writes: Vec<(GroupId, LogWrite)>,
    /// Committed entries, in log order within each group.
    pub apply: Vec<Apply<P>>,
    /// Proposals that will not be applied as proposed (their index went to another
    /// entry, or a snapshot covered it), or whose fate this node will not learn (it
    /// stopped leading), and reads it can no longer confirm: answer them as failed; a
    /// retry is safe when the state machine dedupes.
    pub dropped: Vec<P>,
    /// Groups led here that a follower needs a snapshot of: offer one with
    /// [`MultiRaft::offer_snapshot`] built from the group's applied state.
    pub snapshot_wanted: Vec<GroupId>,
    /// Read barriers that are satisfied: the group's applied state is at least as new as
    /// anything acknowledged before the read was asked (release after applying `apply`).
    pub reads: Vec<P>,
    /// Groups whose configuration no longer includes this node: drop them with
    /// [`MultiRaft::remove`] and delete their records.
    pub removed: Vec<GroupId>,
}

impl<P> Default for Round<P> {
    fn default() -> Self {
        Self {
            send: Vec::new(),
            writes: Vec::new(),
            apply: Vec::new(),
            dropped: Vec::new(),
            snapshot_wanted: Vec::new(),
            reads: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<P> Round<P> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.send.is_empty()
            && self.writes.is_empty()
            && self.apply.is_empty()
            && self.dropped.is_empty()
            && self.snapshot_wanted.is_empty()
            && self.reads.is_empty()
            && self.removed.is_empty()
    }
}

/// One replica of one group.
struct Group<P> {
    node: RawNode<LogStore>,
    /// The last index handed to the caller for applying.
    applied: u64,
    /// The applied index that the last completed sync made durable: the log may be
    /// compacted up to here.
    durable_applied: u64,
    /// Proposals made here, by index: (term, token).
    waiting: BTreeMap<u64, (u64, P)>,
    /// Read barriers asked here, by request number, until Raft confirms them.
    read_asked: BTreeMap<u64, P>,
    /// Of those, the numbers not handed to Raft yet: a leader that has not committed an
    /// entry of its own term would ignore them.
    read_deferred: Vec<u64>,
    /// Confirmed read barriers, waiting for `applied` to reach their index.
    read_confirmed: VecDeque<(u64, P)>,
    /// Messages that may leave only once the current round is durable.
    held: Vec<Outgoing>,
    /// A new group's first state, not on disk yet.
    initial_write: Option<LogWrite>,
    /// For a leader: ticks each follower has been waiting for a snapshot.
    snapshot_ticks: BTreeMap<NodeId, usize>,
    /// The last entry compaction dropped (index, term): where the log starts when it
    /// starts after a compaction (the in-memory log forgets that term).
    compacted: Option<(u64, u64)>,
    /// The last leadership transfer asked here: (heir, tick asked).
    transfer: Option<(NodeId, u64)>,
}

/// Every Raft group this node has a replica of.
pub struct MultiRaft<P> {
    id: NodeId,
    config: RaftConfig,
    logger: slog::Logger,
    groups: BTreeMap<GroupId, Group<P>>,
    /// Ticks so far, and the tick each peer was last heard from (any group): liveness is
    /// per node, not per group.
    ticks: u64,
    heard: BTreeMap<NodeId, u64>,
    /// Groups this node was removed from, and the term it was removed in.
    tombstones: BTreeMap<GroupId, u64>,
    /// Groups whose ready was taken in `start_round`: (group, ready number, applied).
    in_round: Vec<(GroupId, u64, u64)>,
    next_read: u64,
    /// About to stop: leadership handed over is refused (see [`MultiRaft::drain`]).
    draining: bool,
}

impl<P> std::fmt::Debug for MultiRaft<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiRaft")
            .field("id", &self.id)
            .field("groups", &self.groups.len())
            .finish()
    }
}

impl<P> MultiRaft<P> {
    /// A node with no groups yet.
    pub fn new(id: NodeId, config: RaftConfig, logger: slog::Logger) -> Self {
        assert!(id != 0, "raft node ids start at 1");
        Self {
            id,
            config,
            logger,
            groups: BTreeMap::new(),
            in_round: Vec::new(),
            next_read: 1,
            ticks: 0,
            heard: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            draining: false,
        }
    }

    /// This node is about to stop: it refuses leadership handed to it from now on (its
    /// driver hands its own away with [`MultiRaft::move_towards`]).
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        let election = self.config.election_ticks;
        raft::Config {
            id: self.id,
            election_tick: election,
            heartbeat_tick: self.config.heartbeat_ticks,
            applied,
            max_size_per_msg: self.config.max_size_per_msg,
            max_inflight_msgs: self.config.max_inflight,
            // A leader that loses its majority steps down, and a partitioned node does
            // not disrupt the majority with higher terms when it returns.
            check_quorum: true,
            pre_vote: true,
            min_election_tick: election,
            max_election_tick: if self.config.fixed_election_timeout {
                election + 1
            } else {
                2 * election
            },
            // Reads confirm leadership with a heartbeat round rather than trust a lease
            // that a paused process or a skewed clock could outlive.
            read_only_option: ReadOnlyOption::Safe,
            ..raft::Config::default()
        }
    }

    fn insert(
        &mut self,
        group: GroupId,
        store: LogStore,
        applied: u64,
        initial_write: Option<LogWrite>,
    ) -> Result<()> {
        if self.groups.contains_key(&group) {
            return Err(Error::Exists(group));
        }
        let config = self.raft_config(applied);
        let logger = self.logger.new(slog::o!("group" => group));
        let mut node = RawNode::new(&config, store, &logger).map_err(|e| Error::BadMessage(e.to_string()))?;
        let conf = node.raft.prs().conf().to_conf_state();
        if conf.voters == [self.id] && conf.voters_outgoing.is_empty() {
            // The only voter is its own majority: it leads at once rather than after an
            // election timeout (a one-node cluster serves as soon as it starts).
            node.campaign().map_err(|e| Error::BadMessage(e.to_string()))?;
        }
        self.groups.insert(
            group,
            Group {
                node,
                applied,
                durable_applied: applied,
                waiting: BTreeMap::new(),
                read_asked: BTreeMap::new(),
                read_deferred: Vec::new(),
                read_confirmed: VecDeque::new(),
                held: Vec::new(),
                initial_write,
                snapshot_ticks: BTreeMap::new(),
                compacted: None,
                transfer: None,
            },
        );
        Ok(())
    }

    /// Creates a replica of a new group whose first voters are `voters` (the same list on
    /// every voter). With no voters, the replica waits to learn its configuration from a
    /// leader's snapshot (a replica being added to an existing group).
    pub fn create(&mut self, group: GroupId, voters: &[NodeId]) -> Result<()> {
        self.create_with(group, voters, Vec::new())
    }

    /// Like [`MultiRaft::create`], with first records (`data`, encoded as the caller
    /// encodes snapshots; the same on every first voter): the group starts from them.
    pub fn create_with(&mut self, group: GroupId, voters: &[NodeId], data: Vec<u8>) -> Result<()> {
        let initial = crate::store::initial_snapshot(voters, data);
        let applied = initial.as_ref().map_or(0, |s| s.get_metadata().index);
        let write = match &initial {
            Some(snapshot) => LogWrite {
                conf_state: Some(snapshot.get_metadata().get_conf_state().clone()),
                applied: Some(applied),
                snapshot: Some(snapshot.clone()),
                ..LogWrite::default()
            },
            None => LogWrite {
                conf_state: Some(ConfState::default()),
                ..LogWrite::default()
            },
        };
        self.insert(group, LogStore::with_initial(initial), applied, Some(write))
    }

    /// Brings back a replica from its persisted log (after a restart).
    pub fn restore(&mut self, group: GroupId, log: &PersistedLog) -> Result<()> {
        if let Some(term) = log.tombstone {
            self.tombstones.insert(group, term);
        }
        let conf = &log.conf_state;
        let member = [&conf.voters, &conf.learners, &conf.voters_outgoing]
            .iter()
            .any(|ids| ids.contains(&self.id));
        if !member {
            // Removed (only its tombstone matters), or created empty and never reached.
            return Ok(());
        }
        self.insert(group, LogStore::restore(log), log.applied, None)
    }

    /// Drops this node's replica of a group (it was removed from the group). Its waiting
    /// proposals and reads are returned to be answered as failed.
    pub fn remove(&mut self, group: GroupId) -> Vec<P> {
        if let Some(g) = self.groups.get(&group) {
            self.tombstones.insert(group, g.node.raft.term);
        }
        let Some(g) = self.groups.remove(&group) else {
            return Vec::new();
        };
        self.in_round.retain(|(id, _, _)| *id != group);
        g.waiting
            .into_values()
            .map(|(_, p)| p)
            .chain(g.read_asked.into_values())
            .chain(g.read_confirmed.into_iter().map(|(_, p)| p))
            .collect()
    }

    /// The groups this node has a replica of.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Whether this node leads the group.
    pub fn is_leader(&self, group: GroupId) -> bool {
        self.groups
            .get(&group)
            .is_some_and(|g| g.node.raft.state == StateRole::Leader)
    }

    /// The leader this replica knows of.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.groups
            .get(&group)
            .map(|g| g.node.raft.leader_id)
            .filter(|id| *id != 0)
    }

    /// The group's current term, as this replica knows it.
    pub fn term(&self, group: GroupId) -> Option<u64> {
        self.groups.get(&group).map(|g| g.node.raft.term)
    }

    /// The group's voters, as this replica knows them.
    pub fn voters(&self, group: GroupId) -> Vec<NodeId> {
        self.groups
            .get(&group)
            .map(|g| g.node.raft.prs().conf().voters().ids().iter().collect())
            .unwrap_or_default()
    }

    /// The last index handed out for applying.
    pub fn applied(&self, group: GroupId) -> Option<u64> {
        self.groups.get(&group).map(|g| g.applied)
    }

    /// The group's learners, as this replica knows them.
    pub fn learners(&self, group: GroupId) -> Vec<NodeId> {
        self.groups
            .get(&group)
            .map(|g| g.node.raft.prs().conf().to_conf_state().learners)
            .unwrap_or_default()
    }

    /// For a leader: whether the group is whole: no change under way, and every replica
    /// (voter or learner) heard from lately and no more than a few entries behind.
    /// Whether its replicas are the ones placement wants is the caller's to compare.
    pub fn whole(&self, group: GroupId) -> bool {
        let Some(g) = self.groups.get(&group) else {
            return false;
        };
        if g.node.raft.state != StateRole::Leader {
            return false;
        }
        let conf = g.node.raft.prs().conf().to_conf_state();
        if !conf.voters_outgoing.is_empty() || !conf.learners_next.is_empty() {
            return false;
        }
        let last = g.node.raft.raft_log.last_index();
        g.node.raft.prs().iter().all(|(id, pr)| {
            *id == self.id || (self.alive(*id) && pr.matched + crate::reconfig::CAUGHT_UP_SLACK >= last)
        })
    }

    /// Whether `peer` was heard from (in any group) within two election timeouts.
    pub fn alive(&self, peer: NodeId) -> bool {
        alive(
            &self.heard,
            self.ticks,
            2 * self.config.election_ticks as u64,
            peer,
        )
    }

    /// For a leader: each replica's (id, matched index, heard from lately), and the last
    /// index (for status pages and logs).
    pub fn progress(&self, group: GroupId) -> (Vec<(NodeId, u64, bool)>, u64) {
        let Some(g) = self.groups.get(&group) else {
            return (Vec::new(), 0);
        };
        let replicas = g
            .node
            .raft
            .prs()
            .iter()
            .map(|(id, pr)| (*id, pr.matched, self.alive(*id)))
            .collect();
        (replicas, g.node.raft.raft_log.last_index())
    }

    /// Advances every group's logical clock by one tick.
    ///
    /// A snapshot message may be lost like any other, and raft-rs sends a follower
    /// nothing more while it waits for one; a follower that has not caught up within
    /// a few election timeouts is reported as failed, so the leader sends again.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let patience = 3 * self.config.election_ticks;
        for g in self.groups.values_mut() {
            g.node.tick();
            if g.node.raft.state != StateRole::Leader {
                g.snapshot_ticks.clear();
                continue;
            }
            let waiting: Vec<NodeId> = g
                .node
                .raft
                .prs()
                .iter()
                .filter(|(_, pr)| pr.state == raft::ProgressState::Snapshot)
                .map(|(id, _)| *id)
                .collect();
            g.snapshot_ticks.retain(|id, _| waiting.contains(id));
            for id in waiting {
                let ticks = g.snapshot_ticks.entry(id).or_insert(0);
                *ticks += 1;
                if *ticks > patience {
                    g.snapshot_ticks.remove(&id);
                    g.node.report_snapshot(id, raft::SnapshotStatus::Failure);
                }
            }
        }
    }

    /// Hands a peer's message to its group.
    pub fn step(&mut self, group: GroupId, message: Message) -> Result<()> {
        self.heard.insert(message.from, self.ticks);
        self.check_tombstone(group, &message)?;
        let g = self.groups.get_mut(&group).ok_or(Error::UnknownGroup(group))?;
        // A replica with nothing (new, or removed and added again) may still hear from a
        // leader that remembers how far its old log reached; raft-rs would take that as
        // a lost log and abort. Such a heartbeat's commit is stale: clamped to the empty
        // log, it is answered, and the leader's next probe finds the log empty and sends
        // a snapshot.
        // A node about to stop takes no leadership handed to it (another leader may
        // prefer it): the transfer fails, and that leader passes it over for a while.
        if self.draining && message.get_msg_type() == MessageType::MsgTimeoutNow {
            return Ok(());
        }
        let mut message = message;
        if message.get_msg_type() == MessageType::MsgHeartbeat && g.node.raft.raft_log.last_index() == 0 {
            message.commit = 0;
        }
        // A replica that knows nothing of the group (created empty for a leader that is
        // adding it, or removed and its records deleted) must not vote: it would be a
        // voter that lost its log, and with it a stale majority of an old configuration
        // could elect a leader and overwrite committed entries. Any replica that holds a
        // configuration votes, learners included: a learner promoted in a joint change
        // may be needed for the majority before it hears of its promotion.
        if matches!(
            message.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        ) {
            let conf = g.node.raft.prs().conf();
            if conf.voters().ids().iter().next().is_none() && conf.learners().is_empty() {
                return Err(Error::BadMessage(format!(
                    "vote request for group {group}, which this replica does not know yet"
                )));
            }
        }
        g.node.step(message).map_err(|e| Error::BadMessage(e.to_string()))
    }

    /// A node removed from a group in term T ignores the group's messages of older terms:
    /// they come from a leader deposed before the removal, which still counts this node
    /// in its old configuration; an empty replica answering it would let it confirm
    /// reads, or commit, without a real majority. A leader of term T or later knows the
    /// configuration that removed this node (it may be adding it back).
    fn check_tombstone(&self, group: GroupId, message: &Message) -> Result<()> {
        match self.tombstones.get(&group) {
            Some(term) if message.term < *term && message.term != 0 => Err(Error::BadMessage(format!(
                "message of term {} for group {group}, left in term {term}",
                message.term
            ))),
            _ => Ok(()),
        }
    }

    /// Like [`MultiRaft::step`], but a message for a group this node has no replica of
    /// creates an empty one first (a leader is adding this node; it catches up by
    /// snapshot). The caller decides whether the sender may do that.
    pub fn step_or_create(&mut self, group: GroupId, message: Message) -> Result<()> {
        self.check_tombstone(group, &message)?;
        if !self.groups.contains_key(&group) {
            self.create(group, &[])?;
        }
        self.step(group, message)
    }

    /// Proposes `data` to a group led here; `token` comes back with its [`Apply`] (or in
    /// `Round::dropped`).
    pub fn propose(&mut self, group: GroupId, data: Vec<u8>, token: P) -> Result<()> {
        let g = self.groups.get_mut(&group).ok_or(Error::UnknownGroup(group))?;
        if g.node.raft.state != StateRole::Leader {
            let leader = Some(g.node.raft.leader_id).filter(|id| *id != 0);
            return Err(Error::NotLeader { group, leader });
        }
        let before = g.node.raft.raft_log.last_index();
        g.node
            .propose(Vec::new(), data)
            .map_err(|_| Error::Dropped(group))?;
        let index = g.node.raft.raft_log.last_index();
        if index == before {
            return Err(Error::Dropped(group));
        }
        g.waiting.insert(index, (g.node.raft.term, token));
        Ok(())
    }

    /// Whether this node leads `group` and is handing its leadership over: raft-rs drops
    /// proposals meanwhile, so the caller holds them until the transfer ends (at most
    /// an election timeout), then proposes them here or sends them to the new leader.
    pub fn transferring(&self, group: GroupId) -> bool {
        self.groups
            .get(&group)
            .is_some_and(|g| g.node.raft.state == StateRole::Leader && g.node.raft.lead_transferee.is_some())
    }

    /// Proposes a configuration change (joint consensus) to a group led here.
    pub fn propose_conf_change(&mut self, group: GroupId, change: ConfChangeV2) -> Result<()> {
        let g = self.groups.get_mut(&group).ok_or(Error::UnknownGroup(group))?;
        if g.node.raft.state != StateRole::Leader {
            let leader = Some(g.node.raft.leader_id).filter(|id| *id != 0);
            return Err(Error::NotLeader { group, leader });
        }
        g.node
            .propose_conf_change(Vec::new(), change)
            .map_err(|_| Error::Dropped(group))
    }

    /// Asks for a read barrier on a group led here: `token` comes back in `Round::reads`
    /// once this replica is confirmed leader and has applied everything committed
    /// before the request. Reads are then served from the applied state.
    pub fn read(&mut self, group: GroupId, token: P) -> Result<()> {
        let g = self.groups.get_mut(&group).ok_or(Error::UnknownGroup(group))?;
        if g.node.raft.state != StateRole::Leader {
            let leader = Some(g.node.raft.leader_id).filter(|id| *id != 0);
            return Err(Error::NotLeader { group, leader });
        }
        let number = self.next_read;
        self.next_read += 1;
        g.read_asked.insert(number, token);
        if g.node.raft.commit_to_current_term() {
            g.node.read_index(number.to_be_bytes().to_vec());
        } else {
            // raft-rs drops a read index asked before the leader's first commit in its
            // term: asked again once there is one (see `tick`).
            g.read_deferred.push(number);
        }
        Ok(())
    }

    /// The group's configuration, as this replica knows it.
    pub fn conf_state(&self, group: GroupId) -> Option<ConfState> {
        self.groups
            .get(&group)
            .map(|g| g.node.raft.prs().conf().to_conf_state())
    }

    /// For a leader: takes the next step of moving the group's voters to `target` and
    /// its learners to `followers` (see [`crate::reconfig`]). Does nothing elsewhere or
    /// while a change is pending.
    pub fn move_towards(&mut self, group: GroupId, target: &[NodeId], followers: &[NodeId]) {
        // A peer not heard from lately is not caught up, whatever it matched before it
        // went silent: never the heir of a leadership transfer (raft-rs drops every
        // proposal while one is under way, and this one would be retried for ever).
        let alive: BTreeSet<NodeId> = self.heard.keys().copied().filter(|n| self.alive(*n)).collect();
        let election = self.config.election_ticks as u64;
        let (ticks, retry_after) = (self.ticks, TRANSFER_RETRY_ELECTIONS * election);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if !free_to_change(g) {
            return;
        }
        // Still leading after a transfer asked lately: it failed (raft-rs gave it up
        // after an election timeout, the heir never took over). That heir is passed
        // over for a while: another one is tried, or none, and proposals flow meanwhile
        // (raft-rs drops them while a transfer is under way).
        let since = g.transfer.map(|(_, asked)| ticks.saturating_sub(asked));
        if since.is_some_and(|t| t < 2 * election) {
            // The transfer ran for up to an election timeout; as long again for proposals.
            return;
        }
        let passed_over = g
            .transfer
            .filter(|_| since.is_some_and(|t| t < retry_after))
            .map(|(heir, _)| heir);
        let conf = g.node.raft.prs().conf().to_conf_state();
        let last = g.node.raft.raft_log.last_index();
        let prs = g.node.raft.prs();
        let matched = |n: NodeId| {
            prs.get(n)
                .filter(|_| alive.contains(&n))
                .map(|pr| pr.matched)
                .unwrap_or(0)
        };
        // Every other voter has answered with a commit index past the latest
        // configuration change (raft-rs's pending index: the change's own, or the last
        // index when this leader was elected).
        let me = self.id;
        let changed_at = g.node.raft.pending_conf_index;
        let known = conf
            .voters
            .iter()
            .chain(&conf.voters_outgoing)
            .filter(|n| **n != me)
            .all(|n| prs.get(*n).is_some_and(|pr| pr.committed_index >= changed_at));
        let mut step = crate::reconfig::next_step(me, &conf, target, followers, matched, last, known);
        if let (crate::reconfig::Step::TransferTo(heir), Some(failed)) = (&step, passed_over)
            && *heir == failed
        {
            let others = |n: NodeId| if n == failed { 0 } else { matched(n) };
            step = match crate::reconfig::next_step(me, &conf, target, followers, others, last, known) {
                crate::reconfig::Step::TransferTo(other) if other != failed => {
                    crate::reconfig::Step::TransferTo(other)
                }
                _ => crate::reconfig::Step::Wait,
            };
        }
        match step {
            crate::reconfig::Step::Wait => {}
            crate::reconfig::Step::TransferTo(heir) => {
                g.transfer = Some((heir, ticks));
                g.node.transfer_leader(heir);
            }
            crate::reconfig::Step::Change(cc) => {
                if let Err(e) = g.node.propose_conf_change(Vec::new(), cc) {
                    tracing::debug!(group, error = %e, "configuration change refused");
                }
            }
        }
    }

    /// For a leader whose group is where placement wants it: hands leadership to
    /// `heir` (the voter placement prefers as leader) once it is live and caught up, so
    /// that leaders spread over the nodes. Does nothing while a change or a transfer is
    /// under way, within two election timeouts of the last transfer, or when a transfer
    /// to this heir failed lately.
    pub fn prefer_leader(&mut self, group: GroupId, heir: NodeId) {
        if heir == self.id || !self.alive(heir) {
            return;
        }
        let election = self.config.election_ticks as u64;
        let (ticks, retry_after) = (self.ticks, TRANSFER_RETRY_ELECTIONS * election);
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if !free_to_change(g) {
            return;
        }
        if let Some((failed, asked)) = g.transfer {
            let since = ticks.saturating_sub(asked);
            if since < 2 * election || (failed == heir && since < retry_after) {
                return;
            }
        }
        let last = g.node.raft.raft_log.last_index();
        let caught_up =
            g.node.raft.prs().conf().voters().contains(heir)
                && g.node.raft.prs().get(heir).is_some_and(|pr| {
                    pr.matched > 0 && pr.matched + crate::reconfig::CAUGHT_UP_SLACK >= last
                });
        if caught_up {
            g.transfer = Some((heir, ticks));
            g.node.transfer_leader(heir);
        }
    }

    /// Offers followers of `group` a snapshot of its applied state (`data`, read at the
    /// applied index this driver last handed out). Returns false if the log no longer
    /// knows that index's term (then offer again after the next round).
    pub fn offer_snapshot(&mut self, group: GroupId, data: Vec<u8>) -> bool {
        let Some(g) = self.groups.get_mut(&group) else {
            return false;
        };
        g.node.store().offer_snapshot(g.applied, data)
    }

    /// Whether a round would do anything.
    pub fn has_work(&self) -> bool {
        self.groups
            .values()
            .any(|g| g.initial_write.is_some() || g.node.has_ready())
    }

    /// Collects every group's ready state. The round's `apply` items are committed
    /// (durable on a majority, this node included): apply them and answer their
    /// proposers at once. Persist `writes` with one sync, send `send` meanwhile, then
    /// call [`MultiRaft::finish_round`] before starting another round.
    pub fn start_round(&mut self) -> Round<P> {
        assert!(self.in_round.is_empty(), "finish_round was not called");
        let mut round = Round::default();
        let ids: Vec<GroupId> = self.groups.keys().copied().collect();
        let keep_window = self.config.compact_keep_silent_ticks;
        for id in ids {
            let g = self.groups.get_mut(&id).expect("listed group");
            if g.node.store().take_snapshot_wanted() {
                round.snapshot_wanted.push(id);
            }
            let mut write = g.initial_write.take().unwrap_or_default();
            if !g.node.has_ready() {
                if !write.is_empty() {
                    round.writes.push((id, write));
                }
                continue;
            }
            let mut ready = g.node.ready();
            round.send.extend(
                ready
                    .take_messages()
                    .into_iter()
                    .map(|message| Outgoing { group: id, message }),
            );
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                let index = snapshot.get_metadata().index;
                g.node
                    .mut_store()
                    .mem()
                    .wl()
                    .apply_snapshot(snapshot.clone())
                    .expect("raft hands out only newer snapshots");
                g.applied = index;
                write.applied = Some(index);
                write.conf_state = Some(snapshot.get_metadata().get_conf_state().clone());
                write.snapshot = Some(snapshot);
                // Proposals at or below the snapshot point were decided elsewhere.
                let later = g.waiting.split_off(&(index + 1));
                round.dropped.extend(
                    std::mem::replace(&mut g.waiting, later)
                        .into_values()
                        .map(|(_, p)| p),
                );
            }
            for state in ready.take_read_states() {
                let Ok(number) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
                    continue;
                };
                if let Some(token) = g.read_asked.remove(&u64::from_be_bytes(number)) {
                    g.read_confirmed.push_back((state.index, token));
                }
            }
            let committed = ready.take_committed_entries();
            apply_entries(id, g, committed, &mut write, &mut round);
            if !ready.entries().is_empty() {
                let first = ready.entries()[0].index;
                let last_before = g.node.store().last_index().unwrap_or(0);
                if first <= last_before {
                    write.truncate_from = Some(first);
                }
                g.node
                    .mut_store()
                    .mem()
                    .wl()
                    .append(ready.entries())
                    .expect("raft appends after its log");
                write.entries = ready.take_entries();
            }
            if let Some(hs) = ready.hs() {
                g.node.mut_store().mem().wl().set_hardstate(hs.clone());
                write.hard_state = Some(hs.clone());
            }
            // Compaction of what the previous sync made durably applied.
            let first = g.node.store().first_index().unwrap_or(1);
            let next = followers_next(g, |peer| alive(&self.heard, self.ticks, keep_window, peer));
            let to = compaction_point(g.durable_applied, &self.config, &next);
            if to > first && to >= first + self.config.compact_threshold {
                let term = g.node.store().term(to - 1).expect("compaction within the log");
                g.compacted = Some((to - 1, term));
                g.node
                    .mut_store()
                    .mem()
                    .wl()
                    .compact(to)
                    .expect("compaction below the applied index");
                write.compact_to = Some(to);
            }
            release_reads(g, &mut round.reads);
            if !write.is_empty() {
                round.writes.push((id, write));
            }
            // A follower's answers (and a candidate's votes) only once this is durable.
            g.held.extend(
                ready
                    .take_persisted_messages()
                    .into_iter()
                    .map(|message| Outgoing { group: id, message }),
            );
            let number = ready.number();
            g.node.advance_append_async(ready);
            self.in_round.push((id, number, g.applied));
        }
        for g in self.groups.values_mut() {
            if g.node.raft.state == StateRole::Leader {
                if !g.read_deferred.is_empty() && g.node.raft.commit_to_current_term() {
                    for number in std::mem::take(&mut g.read_deferred) {
                        g.node.read_index(number.to_be_bytes().to_vec());
                    }
                }
            } else {
                // Not leading any more (a newer term, or check-quorum found no majority):
                // what was proposed or asked here may or may not be decided by another
                // leader, which may never come. Its callers learn that now rather than
                // never; they retry, and dedupe makes a retried command count once.
                round
                    .dropped
                    .extend(std::mem::take(&mut g.waiting).into_values().map(|(_, p)| p));
                round
                    .dropped
                    .extend(std::mem::take(&mut g.read_asked).into_values());
                g.read_deferred.clear();
            }
        }
        round
    }

    /// Completes the round once its writes are durable, the applied state (the effects
    /// of `apply` items) included: returns the messages that had to wait for that.
    /// Entries this makes committed come with the next round.
    pub fn finish_round(&mut self) -> Vec<Outgoing> {
        self.finish(true)
    }

    /// Like [`MultiRaft::finish_round`] for a caller whose log is durable but whose
    /// applied state is not yet: it says later, with [`MultiRaft::applied_durable`], up
    /// to where it is. Until then the log keeps every entry after that point (a restart
    /// applies them again).
    pub fn finish_round_log_only(&mut self) -> Vec<Outgoing> {
        self.finish(false)
    }

    /// Every group's last index handed out for applying.
    pub fn applied_indexes(&self) -> BTreeMap<GroupId, u64> {
        self.groups.iter().map(|(id, g)| (*id, g.applied)).collect()
    }

    /// The applied state is durable up to these indexes (as [`MultiRaft::applied_indexes`]
    /// gave them before the caller made it durable): the log may be compacted up to there.
    pub fn applied_durable(&mut self, applied: &BTreeMap<GroupId, u64>) {
        for (id, index) in applied {
            if let Some(g) = self.groups.get_mut(id) {
                g.durable_applied = g.durable_applied.max((*index).min(g.applied));
            }
        }
    }

    /// Every group's log as the last completed round left it (for a caller that rewrites
    /// its log file): what [`MultiRaft::restore`] takes back, `applied` left at 0 (the
    /// caller keeps it with the applied state). A group created since the last round
    /// and not written yet is left out (its tombstone alone stays). Not between
    /// `start_round` and the end of the round.
    pub fn persisted_logs(&self) -> BTreeMap<GroupId, PersistedLog> {
        assert!(
            self.in_round.is_empty(),
            "persisted_logs in the middle of a round"
        );
        let mut logs: BTreeMap<GroupId, PersistedLog> = self
            .tombstones
            .iter()
            .map(|(id, term)| {
                let log = PersistedLog {
                    tombstone: Some(*term),
                    ..PersistedLog::default()
                };
                (*id, log)
            })
            .collect();
        for (id, g) in &self.groups {
            if g.initial_write.is_some() {
                continue;
            }
            let store = g.node.store();
            let log = logs.entry(*id).or_default();
            let state = store.initial_state().expect("memory storage");
            log.hard_state = state.hard_state;
            log.conf_state = state.conf_state;
            let first = store.first_index().expect("memory storage");
            let last = store.last_index().expect("memory storage");
            log.snapshot.index = first - 1;
            log.snapshot.term = match (store.term(first - 1), g.compacted) {
                (Ok(term), _) => term,
                (Err(_), Some((index, term))) if index == first - 1 => term,
                (Err(e), _) => panic!("the start of group {id}'s log has no term: {e}"),
            };
            if last >= first {
                log.entries = store
                    .entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
                    .expect("memory storage");
            }
        }
        logs
    }

    fn finish(&mut self, applied_durable: bool) -> Vec<Outgoing> {
        let mut send = Vec::new();
        for (id, number, applied) in std::mem::take(&mut self.in_round) {
            let Some(g) = self.groups.get_mut(&id) else {
                continue;
            };
            g.node.on_persist_ready(number);
            // Raft may count entries (or a snapshot) as applied only once they are persisted.
            g.node.advance_apply_to(applied);
            if applied_durable {
                g.durable_applied = applied;
            }
            send.append(&mut g.held);
        }
        send
    }
}

/// Whether `peer` was heard from within `window` ticks of `now`.
fn alive(heard: &BTreeMap<NodeId, u64>, now: u64, window: u64, peer: NodeId) -> bool {
    heard
        .get(&peer)
        .is_some_and(|at| now.saturating_sub(*at) <= window)
}

/// The next index each follower of `g` that `heard` accepts needs, if this replica leads
/// (none else).
fn followers_next<P>(g: &Group<P>, heard: impl Fn(NodeId) -> bool) -> Vec<u64> {
    if g.node.raft.state != StateRole::Leader {
        return Vec::new();
    }
    let me = g.node.raft.id;
    g.node
        .raft
        .prs()
        .iter()
        .filter(|(id, _)| **id != me && heard(**id))
        .map(|(_, pr)| pr.matched + 1)
        .collect()
}

/// Where a log may be compacted to (entries below it go), given the index the last
/// sync made durably applied and the next index each follower heard from lately needs
/// (a leader's; none for a follower): `compact_keep` entries behind `durable`, or
/// further back for a follower behind, by at most `compact_keep_for_followers` (one
/// further behind catches up from a snapshot).
fn compaction_point(durable: u64, config: &RaftConfig, followers_next: &[u64]) -> u64 {
    let floor = durable.saturating_sub(config.compact_keep_for_followers);
    followers_next
        .iter()
        .fold(durable.saturating_sub(config.compact_keep), |to, next| {
            to.min((*next).max(floor))
        })
}

/// Hands committed entries to the caller (normal ones) or applies them here
/// (configuration changes), and matches them with the proposals waiting for them.
fn apply_entries<P>(
    id: GroupId,
    g: &mut Group<P>,
    entries: Vec<Entry>,
    write: &mut LogWrite,
    round: &mut Round<P>,
) {
    let Some(last) = entries.last().map(|e| e.index) else {
        return;
    };
    for entry in entries {
        let proposer = match g.waiting.remove(&entry.index) {
            Some((term, token)) if term == entry.term => Some(token),
            Some((_, token)) => {
                round.dropped.push(token);
                None
            }
            None => None,
        };
        match entry.get_entry_type() {
            EntryType::EntryNormal if entry.data.is_empty() => {}
            EntryType::EntryNormal => {
                round.apply.push(Apply {
                    group: id,
                    index: entry.index,
                    data: entry.data.clone(),
                    proposer,
                });
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                let state = if entry.get_entry_type() == EntryType::EntryConfChange {
                    ConfChange::parse_from_bytes(&entry.data)
                        .ok()
                        .and_then(|cc| g.node.apply_conf_change(&cc).ok())
                } else {
                    ConfChangeV2::parse_from_bytes(&entry.data)
                        .ok()
                        .and_then(|cc| g.node.apply_conf_change(&cc).ok())
                };
                if let Some(state) = state {
                    g.node.mut_store().mem().wl().set_conf_state(state.clone());
                    let me = g.node.raft.id;
                    if !state.voters.contains(&me)
                        && !state.learners.contains(&me)
                        && !state.voters_outgoing.contains(&me)
                    {
                        round.removed.push(id);
                        write.tombstone = Some(g.node.raft.term);
                    }
                    write.conf_state = Some(state);
                }
            }
        }
    }
    // Earlier proposals whose index was skipped can no longer be applied as proposed.
    let later = g.waiting.split_off(&(last + 1));
    round.dropped.extend(
        std::mem::replace(&mut g.waiting, later)
            .into_values()
            .map(|(_, p)| p),
    );
    g.applied = last;
    write.applied = Some(last);
}

/// Moves confirmed read barriers whose index is applied into `reads`.
/// Whether `g` is led here with no configuration change and no leadership transfer
/// under way: the only state in which this node starts either.
fn free_to_change<P>(g: &Group<P>) -> bool {
    g.node.raft.state == StateRole::Leader
        && !g.node.raft.has_pending_conf()
        && g.node.raft.lead_transferee.is_none()
}

fn release_reads<P>(g: &mut Group<P>, reads: &mut Vec<P>) {
    while g
        .read_confirmed
        .front()
        .is_some_and(|(index, _)| *index <= g.applied)
    {
        let (_, token) = g.read_confirmed.pop_front().expect("checked front");
        reads.push(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logger::discard;

    fn single() -> MultiRaft<u32> {
        let mut raft = MultiRaft::new(
            1,
            RaftConfig {
                fixed_election_timeout: true,
                ..RaftConfig::default()
            },
            discard(),
        );
        raft.create(7, &[1]).unwrap();
        raft
    }

    /// What a round's writes leave on disk (without compaction).
    fn persist(log: &mut PersistedLog, w: &LogWrite) {
        if let Some(snapshot) = &w.snapshot {
            let mut meta = snapshot.get_metadata().clone();
            log.conf_state = meta.take_conf_state();
            log.hard_state.term = log.hard_state.term.max(meta.term);
            log.hard_state.commit = meta.index;
            log.snapshot = meta;
            log.entries.clear();
        }
        if let Some(hs) = &w.hard_state {
            log.hard_state = hs.clone();
        }
        if let Some(cs) = &w.conf_state {
            log.conf_state = cs.clone();
        }
        if let Some(from) = w.truncate_from {
            log.entries.retain(|e| e.index < from);
        }
        log.entries.extend(w.entries.iter().cloned());
        if let Some(applied) = w.applied {
            log.applied = applied;
        }
    }

    /// Runs rounds (writes taken as durable at once) until nothing is left to do.
    fn settle(raft: &mut MultiRaft<u32>) -> Round<u32> {
        settle_into(raft, &mut PersistedLog::default())
    }

    fn settle_into(raft: &mut MultiRaft<u32>, disk: &mut PersistedLog) -> Round<u32> {
        let mut seen = Round::default();
        for _ in 0..100 {
            if !raft.has_work() {
                break;
            }
            let round = raft.start_round();
            for (_, w) in &round.writes {
                persist(disk, w);
            }
            seen.writes.extend(round.writes);
            seen.apply.extend(round.apply);
            seen.dropped.extend(round.dropped);
            seen.reads.extend(round.reads);
            seen.send.extend(round.send);
            seen.send.extend(raft.finish_round());
        }
        seen
    }

    fn elect(raft: &mut MultiRaft<u32>) {
        elect_into(raft, &mut PersistedLog::default());
    }

    fn elect_into(raft: &mut MultiRaft<u32>, disk: &mut PersistedLog) {
        for _ in 0..40 {
            raft.tick();
            settle_into(raft, disk);
            if raft.is_leader(7) {
                return;
            }
        }
        panic!("a single voter elects itself");
    }

    /// Runs rounds whose log is durable at once and whose applied state is not, until
    /// nothing is left to do.
    fn settle_log_only(raft: &mut MultiRaft<u32>) -> Vec<(GroupId, LogWrite)> {
        let mut writes = Vec::new();
        for _ in 0..100 {
            if !raft.has_work() {
                break;
            }
            let round = raft.start_round();
            writes.extend(round.writes);
            raft.finish_round_log_only();
        }
        writes
    }

    #[test]
    fn the_log_is_compacted_only_up_to_applied_state_said_durable_and_can_be_written_whole() {
        let mut raft = MultiRaft::new(
            1,
            RaftConfig {
                fixed_election_timeout: true,
                compact_threshold: 10,
                compact_keep: 2,
                compact_keep_for_followers: 2,
                compact_keep_silent_ticks: 5,
                ..RaftConfig::default()
            },
            discard(),
        );
        raft.create(7, &[1]).unwrap();
        elect(&mut raft);
        for i in 0..30 {
            raft.propose(7, vec![i], i as u32).unwrap();
            settle_log_only(&mut raft);
        }
        let compacted = |writes: &[(GroupId, LogWrite)]| writes.iter().find_map(|(_, w)| w.compact_to);
        raft.propose(7, vec![99], 99).unwrap();
        assert_eq!(
            compacted(&settle_log_only(&mut raft)),
            None,
            "applied state not durable yet"
        );
        let applied = raft.applied_indexes();
        raft.applied_durable(&applied);
        raft.propose(7, vec![100], 100).unwrap();
        let to = compacted(&settle_log_only(&mut raft)).expect("compacted once durable");
        assert!(
            to <= applied[&7],
            "compacted to {to}, durable up to {}",
            applied[&7]
        );
        // The whole log, restored elsewhere, is the same log.
        let logs = raft.persisted_logs();
        let log = &logs[&7];
        assert_eq!(log.snapshot.index, to - 1);
        assert_eq!(log.entries.first().map(|e| e.index), Some(to));
        let mut again = MultiRaft::<u32>::new(1, RaftConfig::default(), discard());
        let restored = PersistedLog {
            applied: applied[&7],
            ..log.clone()
        };
        again.restore(7, &restored).unwrap();
        let (a, b) = (again.groups[&7].node.store(), raft.groups[&7].node.store());
        assert_eq!(a.first_index().unwrap(), b.first_index().unwrap());
        assert_eq!(a.last_index().unwrap(), b.last_index().unwrap());
        let (sa, sb) = (a.initial_state().unwrap(), b.initial_state().unwrap());
        assert_eq!((sa.hard_state, sa.conf_state), (sb.hard_state, sb.conf_state));
        assert_eq!(Some((to - 1, a.term(to - 1).unwrap())), raft.groups[&7].compacted);
        for i in to..=b.last_index().unwrap() {
            assert_eq!(a.term(i).unwrap(), b.term(i).unwrap());
        }
    }

    #[test]
    fn compaction_keeps_a_few_entries_and_more_only_for_followers_behind() {
        let config = RaftConfig {
            compact_keep: 32,
            compact_keep_for_followers: 1000,
            ..RaftConfig::default()
        };
        // A follower (or a leader whose followers keep up) keeps `compact_keep`.
        assert_eq!(compaction_point(5000, &config, &[]), 4968);
        assert_eq!(compaction_point(5000, &config, &[5001, 4990]), 4968);
        // A follower behind (heard from lately: the caller passes only those) keeps
        // what it needs next...
        assert_eq!(compaction_point(5000, &config, &[5001, 4500]), 4500);
        // ...up to a point: further behind, it gets a snapshot.
        assert_eq!(compaction_point(5000, &config, &[1]), 4000);
        // A young log is not compacted below its start.
        assert_eq!(compaction_point(10, &config, &[3]), 0);
    }

    #[test]
    fn a_new_group_saves_its_first_configuration() {
        let mut raft = single();
        let round = settle(&mut raft);
        let conf = round
            .writes
            .iter()
            .find_map(|(_, w)| w.conf_state.clone())
            .expect("conf state written");
        assert_eq!(conf.voters, vec![1]);
    }

    #[test]
    fn a_sole_voter_leads_without_waiting_for_an_election_timeout() {
        let mut raft = single();
        assert!(raft.is_leader(7), "leads once created");
        let mut disk = PersistedLog::default();
        settle_into(&mut raft, &mut disk);
        let mut restarted: MultiRaft<u32> = MultiRaft::new(1, RaftConfig::default(), discard());
        restarted.restore(7, &disk).unwrap();
        assert!(restarted.is_leader(7), "leads once restored, before any tick");
        // A group of several voters waits for an election, as Raft says.
        let mut three: MultiRaft<u32> = MultiRaft::new(1, RaftConfig::default(), discard());
        three.create(3, &[1, 2, 3]).unwrap();
        assert!(!three.is_leader(3));
    }

    #[test]
    fn a_proposal_is_applied_with_its_token_after_its_entry_is_written() {
        let mut raft = single();
        elect(&mut raft);
        raft.propose(7, b"hello".to_vec(), 42).unwrap();
        let first = raft.start_round();
        assert!(
            first.apply.is_empty(),
            "nothing applies before the entry is durable"
        );
        let written: Vec<_> = first
            .writes
            .iter()
            .flat_map(|(_, w)| w.entries.iter())
            .map(|e| e.data.to_vec())
            .collect();
        assert_eq!(written, vec![b"hello".to_vec()]);
        raft.finish_round();
        let later = settle(&mut raft);
        assert_eq!(later.apply.len(), 1);
        assert_eq!(later.apply[0].proposer, Some(42));
        assert_eq!(&later.apply[0].data[..], b"hello");
        assert_eq!(
            later.writes.iter().filter_map(|(_, w)| w.applied).max(),
            Some(later.apply[0].index)
        );
    }

    #[test]
    fn a_follower_refuses_proposals_and_reads() {
        let mut raft: MultiRaft<u32> = MultiRaft::new(1, RaftConfig::default(), discard());
        raft.create(3, &[1, 2, 3]).unwrap();
        assert_eq!(
            raft.propose(3, vec![1], 1),
            Err(Error::NotLeader {
                group: 3,
                leader: None
            })
        );
        assert_eq!(
            raft.read(3, 1),
            Err(Error::NotLeader {
                group: 3,
                leader: None
            })
        );
        assert_eq!(raft.propose(9, vec![1], 1), Err(Error::UnknownGroup(9)));
    }

    #[test]
    fn a_read_barrier_is_released_once_the_leader_is_confirmed() {
        let mut raft = single();
        elect(&mut raft);
        raft.read(7, 5).unwrap();
        let round = settle(&mut raft);
        assert_eq!(round.reads, vec![5]);
    }

    /// Node 1 leading group 3 of voters 1 and 2, node 2's side played by hand.
    fn leading_with_a_peer() -> MultiRaft<u32> {
        let mut raft = MultiRaft::new(
            1,
            RaftConfig {
                fixed_election_timeout: true,
                ..RaftConfig::default()
            },
            discard(),
        );
        raft.create(3, &[1, 2]).unwrap();
        for _ in 0..100 {
            raft.tick();
            let mut sent = settle(&mut raft).send;
            sent.extend(raft.finish_round());
            for out in sent {
                let m = out.message;
                let answer = match m.get_msg_type() {
                    MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
                    MessageType::MsgRequestVote => MessageType::MsgRequestVoteResponse,
                    _ => continue,
                };
                let mut vote = Message::default();
                vote.set_msg_type(answer);
                (vote.from, vote.to, vote.term) = (2, 1, m.term);
                raft.step(3, vote).unwrap();
            }
            if raft.is_leader(3) {
                return raft;
            }
        }
        panic!("node 1 was not elected");
    }

    /// Plays node 2 for what node 1 sent: appends are taken, heartbeats answered (with
    /// their read context) unless `lose_heartbeats`.
    fn node_2_answers(raft: &mut MultiRaft<u32>, sent: Vec<Outgoing>, lose_heartbeats: bool) {
        for out in sent {
            let m = out.message;
            let mut answer = Message::default();
            (answer.from, answer.to, answer.term) = (2, 1, m.term);
            match m.get_msg_type() {
                MessageType::MsgAppend => {
                    answer.set_msg_type(MessageType::MsgAppendResponse);
                    answer.index = m.entries.last().map_or(m.index, |e| e.index);
                }
                MessageType::MsgHeartbeat if !lose_heartbeats => {
                    answer.set_msg_type(MessageType::MsgHeartbeatResponse);
                    answer.context = m.context.clone();
                }
                _ => continue,
            }
            raft.step(3, answer).unwrap();
        }
    }

    /// Runs rounds and ticks, with node 2 answering, until `reads` holds `want`.
    fn until_read(raft: &mut MultiRaft<u32>, want: u32, lose_heartbeats: bool) -> usize {
        for ticks in 0..50 {
            let mut round = settle(raft);
            if round.reads.contains(&want) {
                return ticks;
            }
            round.send.extend(raft.finish_round());
            node_2_answers(raft, round.send, lose_heartbeats);
            let round = settle(raft);
            if round.reads.contains(&want) {
                return ticks;
            }
            node_2_answers(raft, round.send, lose_heartbeats);
            raft.tick();
        }
        panic!("read {want} never released");
    }

    #[test]
    fn a_read_asked_before_the_leaders_first_commit_is_answered_after_it() {
        let mut raft = leading_with_a_peer();
        assert!(!raft.groups[&3].node.raft.commit_to_current_term());
        raft.read(3, 21).unwrap();
        until_read(&mut raft, 21, false);
    }

    /// raft-rs's periodic heartbeats carry the newest pending read's context, so a
    /// barrier whose own heartbeat answers were lost is confirmed by a later round.
    #[test]
    fn a_read_whose_heartbeat_answers_were_lost_is_released_by_a_later_heartbeat() {
        let mut raft = leading_with_a_peer();
        // Commit in the leader's term first.
        raft.read(3, 1).unwrap();
        until_read(&mut raft, 1, false);
        raft.read(3, 2).unwrap();
        // Every heartbeat answer lost for a while: nothing confirms it.
        for _ in 0..3 {
            let mut round = settle(&mut raft);
            assert!(round.reads.is_empty());
            round.send.extend(raft.finish_round());
            node_2_answers(&mut raft, round.send, true);
            raft.tick();
        }
        // Answers get through again: the next heartbeat's confirmation releases it.
        until_read(&mut raft, 2, false);
    }

    #[test]
    fn a_leader_that_steps_down_drops_what_waits_on_it() {
        let mut raft = leading_with_a_peer();
        // Neither can commit or be confirmed without node 2.
        raft.propose(3, vec![1], 10).unwrap();
        raft.read(3, 11).unwrap();
        let round = settle(&mut raft);
        assert!(round.dropped.is_empty() && round.apply.is_empty() && round.reads.is_empty());
        // A newer term from node 2: node 1 follows, and learns nothing more of either.
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        let term = raft.term(3).unwrap() + 1;
        (heartbeat.from, heartbeat.to, heartbeat.term) = (2, 1, term);
        raft.step(3, heartbeat).unwrap();
        assert!(!raft.is_leader(3));
        let mut round = settle(&mut raft);
        round.dropped.sort_unstable();
        assert_eq!(round.dropped, vec![10, 11]);
    }

    /// Plays the peers in `answering` for what node 1 sent: votes granted, appends
    /// taken, heartbeats answered.
    fn peers_answer(raft: &mut MultiRaft<u32>, group: GroupId, sent: Vec<Outgoing>, answering: &[NodeId]) {
        answer_as_peers(raft, group, sent, answering, false);
    }

    /// As [`peers_answer`]; `tell_commit`: the answers say the peers know the commit
    /// index the leader sent them (otherwise they say nothing of it, as peers that have
    /// not learned it yet).
    fn answer_as_peers(
        raft: &mut MultiRaft<u32>,
        group: GroupId,
        sent: Vec<Outgoing>,
        answering: &[NodeId],
        tell_commit: bool,
    ) {
        for out in sent {
            let m = out.message;
            if !answering.contains(&m.to) {
                continue;
            }
            let mut answer = Message::default();
            (answer.from, answer.to, answer.term) = (m.to, 1, m.term);
            match m.get_msg_type() {
                MessageType::MsgRequestPreVote => answer.set_msg_type(MessageType::MsgRequestPreVoteResponse),
                MessageType::MsgRequestVote => answer.set_msg_type(MessageType::MsgRequestVoteResponse),
                MessageType::MsgAppend => {
                    answer.set_msg_type(MessageType::MsgAppendResponse);
                    answer.index = m.entries.last().map_or(m.index, |e| e.index);
                }
                MessageType::MsgHeartbeat => {
                    answer.set_msg_type(MessageType::MsgHeartbeatResponse);
                    answer.context = m.context.clone();
                }
                _ => continue,
            }
            if tell_commit {
                answer.commit = m.commit;
            }
            // A peer removed meanwhile is no longer heard.
            let conf = raft.conf_state(group).unwrap_or_default();
            if !conf.voters.contains(&m.to) && !conf.learners.contains(&m.to) {
                continue;
            }
            raft.step(group, answer).unwrap();
        }
    }

    #[test]
    fn a_voter_let_go_stays_a_learner_until_every_voter_has_answered_past_the_change() {
        let mut raft = leading_three();
        let run = |raft: &mut MultiRaft<u32>, ticks: usize, tell_commit: bool| {
            for _ in 0..ticks {
                raft.tick();
                raft.move_towards(3, &[1, 2], &[]);
                for _ in 0..3 {
                    let sent = settle(raft).send;
                    answer_as_peers(raft, 3, sent, &[2, 3], tell_commit);
                }
            }
        };
        let members = |raft: &MultiRaft<u32>| {
            let conf = raft.conf_state(3).unwrap();
            let (mut voters, mut learners) = (conf.voters, conf.learners);
            voters.sort_unstable();
            learners.sort_unstable();
            (voters, learners)
        };
        // Voter 2 may not know that 3's step-down is committed: were 3 gone and node 1
        // to fail, 2 would need 3's vote. 3 steps down to a learner and stays.
        run(&mut raft, 20, false);
        assert_eq!(members(&raft), (vec![1, 2], vec![3]));
        // Once 2 has answered with a commit index past the change, 3 leaves.
        run(&mut raft, 20, true);
        assert_eq!(members(&raft), (vec![1, 2], vec![]));
    }

    /// Node 1 leading group 3 of voters 1, 2 and 3, both peers answering and caught up.
    fn leading_three() -> MultiRaft<u32> {
        let mut raft = MultiRaft::new(
            1,
            RaftConfig {
                fixed_election_timeout: true,
                ..RaftConfig::default()
            },
            discard(),
        );
        raft.create(3, &[1, 2, 3]).unwrap();
        for _ in 0..40 {
            raft.tick();
            for _ in 0..3 {
                let sent = settle(&mut raft).send;
                peers_answer(&mut raft, 3, sent, &[2, 3]);
            }
        }
        assert!(raft.is_leader(3), "node 1 was not elected");
        raft
    }

    #[test]
    fn leadership_is_never_handed_to_a_peer_gone_silent() {
        let mut raft = leading_three();
        let mut transfers = Vec::new();
        let mut run = |raft: &mut MultiRaft<u32>, ticks: usize, answering: &[NodeId]| {
            for _ in 0..ticks {
                raft.tick();
                for _ in 0..3 {
                    let sent = settle(raft).send;
                    transfers.extend(
                        sent.iter()
                            .filter(|o| o.message.get_msg_type() == MessageType::MsgTimeoutNow)
                            .map(|o| o.message.to),
                    );
                    peers_answer(raft, 3, sent, answering);
                }
            }
        };
        raft.propose(3, vec![1], 1).unwrap();
        run(&mut raft, 3, &[2, 3]);
        // Node 2 goes silent (it was caught up when last heard); node 3 still answers.
        run(&mut raft, 2 * RaftConfig::default().election_ticks + 2, &[3]);
        assert!(raft.is_leader(3), "node 3 keeps the majority");
        // Placement wants node 1 out: leadership goes to the live voter, not node 2.
        raft.move_towards(3, &[2, 3], &[]);
        run(&mut raft, 1, &[3]);
        assert_eq!(transfers, vec![3], "handed over to the live voter only");
    }

    #[test]
    fn an_heir_that_never_takes_over_is_passed_over_and_proposals_flow_meanwhile() {
        let mut raft = leading_three();
        // Placement wants node 1 out; both heirs answer everything but never take over.
        let election = RaftConfig::default().election_ticks;
        let (mut transfers, mut accepted) = (Vec::new(), 0);
        for i in 0..8 * election {
            raft.tick();
            raft.move_towards(3, &[2, 3], &[]);
            accepted += usize::from(raft.propose(3, vec![1], i as u32).is_ok());
            for _ in 0..3 {
                let sent = settle(&mut raft).send;
                transfers.extend(
                    sent.iter()
                        .filter(|o| o.message.get_msg_type() == MessageType::MsgTimeoutNow)
                        .map(|o| o.message.to),
                );
                peers_answer(&mut raft, 3, sent, &[2, 3]);
            }
        }
        assert!(raft.is_leader(3));
        assert_eq!(
            transfers.get(..2),
            Some(&[2, 3][..]),
            "the other heir next: {transfers:?}"
        );
        assert!(
            transfers.len() <= 5,
            "at most one transfer per two election timeouts: {transfers:?}"
        );
        assert!(
            accepted >= 3 * election,
            "proposals flow between transfers: {accepted}"
        );
    }

    #[test]
    fn leadership_goes_to_the_preferred_voter_once_it_is_live_and_caught_up() {
        let mut raft = leading_three();
        let timeouts_now = |sent: &[Outgoing]| -> Vec<NodeId> {
            sent.iter()
                .filter(|o| o.message.get_msg_type() == MessageType::MsgTimeoutNow)
                .map(|o| o.message.to)
                .collect()
        };
        let mut transfers = Vec::new();
        // Node 2 goes silent; then, preferred as long as it stays so, it is never the heir.
        let election = RaftConfig::default().election_ticks;
        for i in 0..4 * election {
            raft.tick();
            if i >= 2 * election + 2 {
                raft.prefer_leader(3, 2);
            }
            let sent = settle(&mut raft).send;
            transfers.extend(timeouts_now(&sent));
            peers_answer(&mut raft, 3, sent, &[3]);
        }
        assert!(transfers.is_empty(), "{transfers:?}");
        // Node 2 answers again and catches up: leadership goes to it.
        for _ in 0..3 * election {
            raft.tick();
            raft.prefer_leader(3, 2);
            for _ in 0..3 {
                let sent = settle(&mut raft).send;
                transfers.extend(timeouts_now(&sent));
                peers_answer(&mut raft, 3, sent, &[2, 3]);
            }
        }
        assert_eq!(transfers.first(), Some(&2), "{transfers:?}");
        assert!(transfers.iter().all(|t| *t == 2), "{transfers:?}");
        // The leader itself preferred: nothing to do.
        let mut again = leading_three();
        again.prefer_leader(3, 1);
        assert!(timeouts_now(&settle(&mut again).send).is_empty());
    }

    #[test]
    fn a_draining_node_refuses_leadership_handed_to_it() {
        let campaigns = |drain: bool| {
            let mut raft: MultiRaft<u32> = MultiRaft::new(1, RaftConfig::default(), discard());
            raft.create(3, &[1, 2, 3]).unwrap();
            settle(&mut raft);
            if drain {
                raft.drain();
            }
            let mut timeout_now = Message::default();
            let term = raft.term(3).unwrap();
            (timeout_now.from, timeout_now.to, timeout_now.term) = (2, 1, term);
            timeout_now.set_msg_type(MessageType::MsgTimeoutNow);
            raft.step(3, timeout_now).unwrap();
            settle(&mut raft)
                .send
                .iter()
                .any(|o| o.message.get_msg_type() == MessageType::MsgRequestVote)
        };
        assert!(campaigns(false), "a node handed leadership campaigns at once");
        assert!(!campaigns(true), "a draining node does not");
    }

    #[test]
    fn an_undecodable_message_is_an_error_not_a_panic() {
        assert!(matches!(
            decode_message(&[0xff, 0xff, 0xff]),
            Err(Error::BadMessage(_))
        ));
    }

    #[test]
    fn the_log_survives_a_restart_from_its_writes() {
        let mut log = PersistedLog::default();
        let mut raft = single();
        elect_into(&mut raft, &mut log);
        for i in 0..5u32 {
            raft.propose(7, vec![i as u8 + 1], i).unwrap();
        }
        let round = settle_into(&mut raft, &mut log);
        assert_eq!(round.apply.len(), 5);
        let mut again: MultiRaft<u32> = MultiRaft::new(
            1,
            RaftConfig {
                fixed_election_timeout: true,
                ..RaftConfig::default()
            },
            discard(),
        );
        again.restore(7, &log).unwrap();
        assert_eq!(again.applied(7), Some(log.applied));
        assert_eq!(again.voters(7), vec![1]);
        elect_into(&mut again, &mut log);
        again.propose(7, vec![9], 99).unwrap();
        let round = settle_into(&mut again, &mut log);
        assert_eq!(
            round.apply.iter().map(|a| a.proposer).collect::<Vec<_>>(),
            vec![Some(99)],
            "entries applied before the restart are not applied again"
        );
    }
}
