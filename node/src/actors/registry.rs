//! The node registry: the router of everything addressed to a user or a group, the
//! partition map, and the handoff of partitions between nodes.
//!
//! Every user (account, tokens, inbox) and every group lives in one of
//! [`PARTITIONS`] partitions, and every partition has one owner among the
//! cluster's members (rendezvous hashing, see [`crate::partition`]). A node
//! *holds* a partition when it has its data and serves it. A request for an
//! entity goes to the local actor if this node holds its partition; to the
//! owner's registry, through [`Remote`], if another node owns it; and waits
//! here if this node owns it but is still taking it over.
//!
//! Taking over: a node that owns partitions it does not hold asks every other
//! node ([`TakeoverAsk`]). A node that holds one and agrees on the owner
//! freezes it (stops its actors once their writes are durable, so every
//! later request is forwarded to the new owner, which buffers it), ships its
//! records in [`HandoffChunk`]s and a [`HandoffDone`]; the new owner makes
//! them durable, serves the partition, and acknowledges with [`HandoffDone`],
//! after which the old holder deletes its copy. A partition nobody holds is
//! claimed only when every member answered and agreed.
//!
//! Inboxes and groups are started here on demand and forgotten through an
//! idle handshake: an idle actor reports how many routed messages it has
//! handled, and the registry stops it only if that equals the number it has
//! routed to it, so no message can be lost in a stopping actor.

use super::group::{Group, GroupArgs, GroupMsg};
use super::inbox::{Inbox, InboxArgs, InboxMsg};
use super::session::SessionMsg;
use super::{Reply, SessionRef, SessionTarget, wire};
use crate::cluster::ClusterView;
use crate::error::{ChatError, ChatResult};
use crate::partition::{self, PARTITIONS, Partition};
use crate::remote::Remote;
use crate::replication::{Bootstrap, Replicator, StreamError};
use crate::storage::{Storage, TreeId, Writes};
use chat_protocol::internal::{
    AccountRecord, HandoffChunk, HandoffDone, NodeCard, Replication, ReplicationAck, TakeoverAnswer,
    TakeoverAsk, TokenRecord, handoff_chunk, item, replication,
};
use chat_protocol::v1::NodeInfo;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How often the registry compares the membership view with its partition map.
pub const TICK: Duration = Duration::from_millis(250);
/// Most times a request may be forwarded before it is refused (views disagree briefly).
const MAX_HOPS: u32 = 4;
/// Requests waiting for a partition being taken over, at most.
const MAX_WAITING: usize = 100_000;
/// How long a request waits for a partition being taken over.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// A takeover round whose answers do not all arrive in this time is retried.
const ROUND_LIMIT: Duration = Duration::from_secs(2);
/// Bytes of records per handoff chunk.
const CHUNK_BYTES: usize = 1 << 20;
/// A handoff that sends nothing for this long is asked for again (the giver ships
/// it again: handoffs are idempotent).
const RECEIVE_LIMIT: Duration = Duration::from_secs(10);
/// How often a giver repeats its HandoffDone until the new holder acknowledges it.
const DONE_REPEAT: Duration = Duration::from_secs(5);
/// A registry whose ticks are this far apart was not running in between (see
/// `RegistryState::tick`); a holder counts a replica down after about 3 s of silence.
const STALL_LIMIT: Duration = Duration::from_secs(2);
/// Keys a replica remembers as written during snapshots, at most; a snapshot that
/// would need more is refused (the holder starts again), bounding the memory.
const MAX_TOUCHED: usize = 1_000_000;
/// Two nodes serving one partition for this long (longer than a card takes to
/// refresh) is a real conflict, not a stale card: the owner stops serving it.
const CONFLICT_LIMIT: Duration = Duration::from_secs(3);

/// How the registry starts inboxes and groups.
#[derive(Clone)]
pub struct RegistryArgs {
    /// This node's name.
    pub node: String,
    /// This node's client address, as clients should dial it.
    pub client_addr: String,
    /// This node's WebSocket URL (`ws://host:port/ws`), empty without a listener.
    pub ws_url: String,
    /// The database.
    pub storage: Storage,
    /// Inbox retention: most messages.
    pub max_messages: u64,
    /// Inbox retention: oldest message.
    pub max_age: Option<Duration>,
    /// How often every inbox of the held partitions is checked against `max_age`.
    pub sweep_every: Duration,
    /// Connected sessions on this node.
    pub sessions: Arc<AtomicUsize>,
    /// The other nodes, as the cluster membership sees them.
    pub view: ClusterView,
    /// Node counters, handed to inboxes.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Links to the other nodes.
    pub remote: Arc<Remote>,
    /// The seeds this node was given. A new node with seeds holds nothing, and no node
    /// with seeds claims or answers for partitions, until it has met one of its seeds;
    /// a new node without seeds starts a cluster and holds everything.
    pub seeds: Vec<String>,
    /// Copies of each partition (the holder's included); 1 keeps no replicas.
    pub replicas: usize,
    /// Ships the writes of held partitions to their replicas (set on `storage` too).
    pub replicator: Arc<Replicator>,
}

/// Requests about a user's account, served by the node holding the user's partition.
pub enum AccountMsg {
    /// The account record.
    Get {
        /// Gets it (None: no such user).
        reply: Reply<ChatResult<Option<AccountRecord>>>,
    },
    /// Creates the account unless the name is taken (false).
    Create {
        /// The record.
        record: AccountRecord,
        /// Gets whether it was created, once durable.
        reply: Reply<ChatResult<bool>>,
    },
    /// Stores a session token.
    PutToken {
        /// The token.
        token: String,
        /// Its record.
        record: TokenRecord,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
    /// Looks a token up.
    GetToken {
        /// The token.
        token: String,
        /// Gets its record.
        reply: Reply<ChatResult<Option<TokenRecord>>>,
    },
    /// Revokes a token.
    RevokeToken {
        /// The token.
        token: String,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
}

impl AccountMsg {
    fn fail(self, err: ChatError) {
        match self {
            Self::Get { reply } => reply(Err(err)),
            Self::Create { reply, .. } => reply(Err(err)),
            Self::PutToken { reply, .. } | Self::RevokeToken { reply, .. } => reply(Err(err)),
            Self::GetToken { reply, .. } => reply(Err(err)),
        }
    }
}

/// What a routed request is for.
pub enum Target {
    /// A user's inbox.
    Inbox(String, InboxMsg),
    /// A group.
    Group(String, GroupMsg),
    /// A user's account.
    Account(String, AccountMsg),
}

impl Target {
    /// The partition of the entity.
    pub fn partition(&self) -> Partition {
        match self {
            Self::Inbox(user, _) | Self::Account(user, _) => partition::of_user(user),
            Self::Group(group, _) => partition::of_group(group),
        }
    }

    /// Answers the request, if it expects an answer, with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Inbox(_, m) => m.fail(err),
            Self::Group(_, m) => m.fail(err),
            Self::Account(_, m) => m.fail(err),
        }
    }
}

/// Messages of the registry.
pub enum RegistryMsg {
    /// Route a request to its entity, wherever it lives; `hops` counts forwards so far.
    Route {
        /// What for.
        target: Target,
        /// Forwards so far.
        hops: u32,
    },
    /// An inbox has been idle; `handled` is how many routed messages it processed.
    InboxIdle {
        /// Whose inbox.
        user: String,
        /// Routed messages it handled.
        handled: u64,
        /// Its attached sessions, kept here until the inbox starts again.
        sessions: Vec<SessionRef>,
    },
    /// A group has been idle.
    GroupIdle {
        /// Which group.
        group: String,
        /// Routed messages it handled.
        handled: u64,
    },
    /// A session of `user` logged in on this node.
    Online(String),
    /// A session of `user` logged out or closed.
    Offline(String),
    /// Online users with names > `after`, sorted, at most `limit`; and whether more follow.
    ListOnline {
        /// Exclusive lower bound.
        after: String,
        /// Most names.
        limit: usize,
        /// Only this node's users (a peer asking), not the whole cluster's.
        local_only: bool,
        /// Gets the page.
        reply: Reply<(Vec<String>, bool)>,
    },
    /// The cluster's nodes.
    Nodes {
        /// Gets them.
        reply: Reply<Vec<NodeInfo>>,
    },
    /// Counts of what this registry holds.
    Stats {
        /// Gets them.
        reply: Reply<RegistryStats>,
    },
    /// Stop every inbox and group after their pending writes; reply when done.
    Drain {
        /// Runs when all have stopped.
        reply: Reply<()>,
    },
    /// Leave the cluster: own nothing, hand everything held to the other members.
    /// The reply says whether everything was handed off before `deadline`.
    Leave {
        /// Give up waiting then.
        deadline: Instant,
        /// Gets the outcome.
        reply: Reply<bool>,
    },
    /// Partition traffic from a peer (takeover and handoff items).
    Handoff(item::Body),
    /// Internal: the records received for these partitions from `from` are durable.
    Installed {
        /// The old holder.
        from: String,
        /// The partitions.
        partitions: Vec<Partition>,
    },
    /// Internal: these users' inboxes have entries past the age limit.
    Sweep(Vec<String>),
    /// Internal: compare the view with the partition map.
    Tick,
}

impl ractor::Message for RegistryMsg {}

/// What a registry holds, for operators and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// Running inbox actors.
    pub inboxes: usize,
    /// Running group actors.
    pub groups: usize,
    /// Users whose sessions are parked here while their inbox is stopped.
    pub parked_users: usize,
    /// Users with at least one session on this node.
    pub online_users: usize,
    /// Partitions this node holds.
    pub held_partitions: usize,
    /// Requests waiting for a partition being taken over.
    pub waiting: usize,
    /// Partitions on their way here or away from here.
    pub moving: usize,
    /// Nodes counted as members (owning partitions).
    pub members: usize,
    /// Whether this node has met the cluster (see [`RegistryArgs::seeds`]).
    pub joined: bool,
    /// Held partitions with fewer whole copies on other nodes than they should have.
    pub under_replicated: usize,
    /// Whole copies of other nodes' partitions kept here.
    pub copies: usize,
}

/// Serves routed requests some other way than through the registry's actors (the
/// Raft core, `crate::served`).
pub trait Route: Send + Sync {
    /// Serves one request; answers it in any case.
    fn route(&self, target: Target);
}

/// A cheap handle for routing to entities wherever they live.
#[derive(Clone)]
pub struct Router {
    registry: ActorRef<RegistryMsg>,
    served: Option<std::sync::Arc<dyn Route>>,
}

impl Router {
    /// Wraps the registry's reference.
    pub fn new(registry: ActorRef<RegistryMsg>) -> Self {
        Self {
            registry,
            served: None,
        }
    }

    /// Routes requests to `served` instead of the registry's inboxes and groups.
    pub fn served_by(registry: ActorRef<RegistryMsg>, served: std::sync::Arc<dyn Route>) -> Self {
        Self {
            registry,
            served: Some(served),
        }
    }

    /// The registry actor.
    pub fn registry(&self) -> &ActorRef<RegistryMsg> {
        &self.registry
    }

    /// Routes a request; if the registry is gone, the request is answered UNAVAILABLE.
    pub fn route(&self, target: Target) {
        if let Some(served) = &self.served {
            return served.route(target);
        }
        if let Err(MessagingErr::SendErr(RegistryMsg::Route { target, .. })) =
            self.registry.cast(RegistryMsg::Route { target, hops: 0 })
        {
            target.fail(ChatError::Unavailable("node is shutting down".into()));
        }
    }

    /// Sends to the inbox of `user`, wherever it lives.
    pub fn to_inbox(&self, user: &str, msg: InboxMsg) {
        self.route(Target::Inbox(user.to_owned(), msg));
    }

    /// Sends to `group`'s actor, wherever it lives.
    pub fn to_group(&self, group: &str, msg: GroupMsg) {
        self.route(Target::Group(group.to_owned(), msg));
    }

    /// Asks the holder of `user`'s account.
    pub async fn account<T: Send + 'static>(
        &self,
        user: &str,
        make: impl FnOnce(Reply<ChatResult<T>>) -> AccountMsg,
    ) -> ChatResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = make(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        self.route(Target::Account(user.to_owned(), msg));
        rx.await
            .unwrap_or_else(|_| Err(ChatError::Unavailable("node is shutting down".into())))
    }
}

struct Routed<M> {
    actor: ActorRef<M>,
    routed: u64,
}

/// A takeover in progress: the question sent to every other node, and the answers.
struct Round {
    id: u64,
    partitions: Vec<Partition>,
    expect: BTreeSet<String>,
    answered: BTreeSet<String>,
    not_held: HashMap<Partition, BTreeSet<String>>,
    refused: BTreeSet<Partition>,
    /// Partitions some node is shipping here.
    given: BTreeSet<Partition>,
    started: Instant,
}

/// A replication stream from the holder of partitions copied here.
struct InStream {
    id: u64,
    /// The number the next item must have.
    next: u64,
    /// Partitions this stream copies here.
    partitions: BTreeSet<Partition>,
    /// Those whose snapshot is still arriving, with the number of their `start` item
    /// (a late item of an earlier snapshot of the same partition is ignored).
    syncing: BTreeMap<Partition, u64>,
    /// Keys written by the stream since their partition started, by partition: the
    /// snapshot's older record of such a key must not overwrite them.
    touched: HashMap<Partition, HashSet<(u32, Vec<u8>)>>,
    /// Keys in `touched`, over all partitions (bounded by [`MAX_TOUCHED`]).
    touched_count: usize,
}

impl InStream {
    /// Stops copying `p` on this stream.
    fn forget(&mut self, p: Partition) {
        self.partitions.remove(&p);
        self.syncing.remove(&p);
        if let Some(keys) = self.touched.remove(&p) {
            self.touched_count -= keys.len();
        }
    }
}

/// Where a request should go.
enum Decision {
    Local,
    Forward(String),
    Wait,
    Unavailable(String),
}

/// The registry actor.
pub struct Registry;

/// The registry's state.
pub struct RegistryState {
    args: RegistryArgs,
    router: Router,
    inboxes: HashMap<String, Routed<InboxMsg>>,
    /// Sessions of users whose inbox is stopped; handed back when it starts.
    parked: HashMap<String, Vec<SessionRef>>,
    groups: HashMap<String, Routed<GroupMsg>>,
    online: BTreeMap<String, u32>,
    /// Nodes that own partitions (this one included unless it is leaving).
    members: BTreeSet<String>,
    /// Nodes that left gracefully; they rejoin only by showing up themselves.
    left: BTreeSet<String>,
    /// Leaving nodes last seen still holding data (a leave cut short): not owners, but
    /// no partition is claimed as new without their answer.
    departing: BTreeSet<String>,
    /// Peers that answer heartbeats.
    up: BTreeSet<String>,
    /// Partitions whose data is here and served here.
    held: Vec<bool>,
    /// Knows the cluster: has no seeds, or has met one. Only then does it claim
    /// partitions or answer for them (two groups of new nodes that have not met
    /// must not both claim the same partitions).
    joined: bool,
    /// The seeds, as given and as resolved.
    seeds: (BTreeSet<String>, BTreeSet<std::net::SocketAddr>),
    /// Leaving the cluster (for good: this node is shutting down).
    leaving: bool,
    /// Who waits for the leave to finish, and until when.
    leave_reply: Option<(Instant, Reply<bool>)>,
    round: Option<Round>,
    next_round: u64,
    /// Partitions on their way here, by the node sending them.
    receiving: HashMap<Partition, String>,
    /// When each of them last showed progress.
    receiving_seen: HashMap<Partition, Instant>,
    /// Partitions on their way out, by the node receiving them (until it acknowledges;
    /// stored, so that a restart resumes the handoff instead of serving them again).
    giving: HashMap<Partition, String>,
    /// When the HandoffDone of the unacknowledged handoffs was last sent.
    done_sent: Instant,
    /// Partitions whose data is here from before a restart, not served until it is
    /// known that nobody else took them over meanwhile (replicated clusters only).
    suspect: Vec<bool>,
    /// Whole copies of partitions held by another node (its replica here), by holder.
    copies: Vec<Option<String>>,
    /// Replication streams from the holders of partitions copied here.
    streams_in: HashMap<String, InStream>,
    /// Streams refused here, by holder: their later items are dropped without a word.
    refused_streams: HashMap<String, u64>,
    /// Since when another node serves a partition this node serves too.
    conflicts: HashMap<Partition, Instant>,
    /// When the last tick ran.
    last_tick: Instant,
    /// When the last retention sweep started.
    swept: Instant,
    /// Requests for partitions being taken over.
    waiting: HashMap<Partition, VecDeque<(Instant, Target)>>,
    waiting_count: usize,
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RegistryMsg>,
        args: RegistryArgs,
    ) -> Result<RegistryState, ActorProcessingErr> {
        let held = match args.storage.held_partitions()? {
            Some(held) => held,
            None => {
                // A new database: a node without seeds starts a cluster of its own.
                let held = vec![args.seeds.is_empty(); PARTITIONS as usize];
                let mut w = Writes::default();
                Storage::put_held(&mut w, &held);
                args.storage.commit_wait(w).await?;
                held
            }
        };
        let mut members: BTreeSet<String> = args.storage.members()?.into_iter().collect();
        members.insert(args.node.clone());
        // With replicas, another node may have taken these partitions over while this one
        // was down: serve them only once that is ruled out.
        let mut held = held;
        let mut suspect = vec![false; PARTITIONS as usize];
        if args.replicas > 1 && members.len() > 1 {
            std::mem::swap(&mut held, &mut suspect);
            let n = suspect.iter().filter(|s| **s).count();
            if n > 0 {
                tracing::info!(
                    partitions = n,
                    "not serving what was held before the restart until the cluster agrees"
                );
            }
        }
        let mut resolved = BTreeSet::new();
        for seed in &args.seeds {
            match tokio::net::lookup_host(seed.as_str()).await {
                Ok(addrs) => resolved.extend(addrs),
                Err(e) => tracing::warn!(seed = %seed, error = %e, "cannot resolve seed"),
            }
        }
        myself.send_interval(TICK, || RegistryMsg::Tick);
        let state = RegistryState {
            router: Router::new(myself),
            inboxes: HashMap::new(),
            parked: HashMap::new(),
            groups: HashMap::new(),
            online: BTreeMap::new(),
            members,
            left: args.storage.left_nodes()?.into_iter().collect(),
            departing: args.storage.departing_nodes()?.into_iter().collect(),
            up: BTreeSet::new(),
            joined: args.seeds.is_empty(),
            seeds: (args.seeds.iter().cloned().collect(), resolved),
            held,
            leaving: false,
            leave_reply: None,
            round: None,
            next_round: 1,
            receiving: HashMap::new(),
            receiving_seen: HashMap::new(),
            giving: args.storage.giving()?.into_iter().collect(),
            done_sent: Instant::now(),
            suspect,
            copies: vec![None; PARTITIONS as usize],
            streams_in: HashMap::new(),
            refused_streams: HashMap::new(),
            conflicts: HashMap::new(),
            last_tick: Instant::now(),
            swept: Instant::now(),
            waiting: HashMap::new(),
            waiting_count: 0,
            args,
        };
        state.publish();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Route { target, hops } => state.route(target, hops).await,
            RegistryMsg::InboxIdle {
                user,
                handled,
                sessions,
            } => {
                if state.inboxes.get(&user).is_some_and(|i| i.routed == handled) {
                    let inbox = state.inboxes.remove(&user).expect("checked above");
                    inbox.actor.cast(InboxMsg::Stop)?;
                    if !sessions.is_empty() {
                        state.parked.insert(user, sessions);
                    }
                }
            }
            RegistryMsg::GroupIdle { group, handled } => {
                if state.groups.get(&group).is_some_and(|g| g.routed == handled) {
                    let g = state.groups.remove(&group).expect("checked above");
                    g.actor.cast(GroupMsg::Stop)?;
                }
            }
            RegistryMsg::Online(user) => *state.online.entry(user).or_default() += 1,
            RegistryMsg::Offline(user) => {
                if let Some(n) = state.online.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        state.online.remove(&user);
                    }
                }
            }
            RegistryMsg::ListOnline {
                after,
                limit,
                local_only,
                reply,
            } => {
                use std::ops::Bound::{Excluded, Unbounded};
                let mut names = state
                    .online
                    .range::<String, _>((Excluded(&after), Unbounded))
                    .map(|(k, _)| k.clone());
                let page: Vec<String> = names.by_ref().take(limit).collect();
                let more = names.next().is_some();
                if local_only {
                    reply((page, more));
                } else {
                    // Peers answer on their own time; the registry does not wait for them.
                    tokio::spawn(async move {
                        reply(crate::cluster::online_everywhere(after, limit, (page, more)).await);
                    });
                }
            }
            RegistryMsg::Nodes { reply } => {
                let me = NodeCard {
                    name: state.args.node.clone(),
                    client_addr: state.args.client_addr.clone(),
                    ws_url: state.args.ws_url.clone(),
                    sessions: state.args.sessions.load(Ordering::Relaxed) as u32,
                    ..Default::default()
                };
                reply(state.args.view.nodes(&me));
            }
            RegistryMsg::Stats { reply } => reply(RegistryStats {
                inboxes: state.inboxes.len(),
                groups: state.groups.len(),
                parked_users: state.parked.len(),
                online_users: state.online.len(),
                held_partitions: state.held.iter().filter(|h| **h).count(),
                waiting: state.waiting_count,
                moving: state.receiving.len() + state.giving.len(),
                members: state.members.len(),
                joined: state.joined,
                under_replicated: state.under_replicated(),
                copies: state.copies.iter().filter(|c| c.is_some()).count(),
            }),
            RegistryMsg::Drain { reply } => {
                // Stop is queued behind every message already routed, and an actor
                // stops only once its writes are durable.
                let mut waits = Vec::new();
                for (_, i) in state.inboxes.drain() {
                    waits.push(i.actor.get_cell());
                    let _ = i.actor.cast(InboxMsg::Stop);
                }
                for (_, g) in state.groups.drain() {
                    waits.push(g.actor.get_cell());
                    let _ = g.actor.cast(GroupMsg::Stop);
                }
                tokio::spawn(async move {
                    for cell in waits {
                        let _ = cell.wait(Some(Duration::from_secs(5))).await;
                    }
                    reply(());
                });
            }
            RegistryMsg::Leave { deadline, reply } => {
                tracing::info!("leaving the cluster: handing off every partition held here");
                state.members.remove(&state.args.node);
                state.leaving = true;
                state.leave_reply = Some((deadline, reply));
                state.persist_members();
                state.publish();
                // Requests waiting for partitions this node would have taken go elsewhere.
                state.release_waiting(|_| true).await;
                state.check_left();
            }
            RegistryMsg::Handoff(body) => state.handoff(body).await,
            RegistryMsg::Installed { from, partitions } => state.installed(from, partitions).await,
            RegistryMsg::Sweep(users) => {
                for user in users {
                    state.route(Target::Inbox(user, InboxMsg::Sweep), 0).await;
                }
            }
            RegistryMsg::Tick => state.tick().await,
        }
        Ok(())
    }
}

impl RegistryState {
    fn me(&self) -> &str {
        &self.args.node
    }

    /// The owner of `p` in this node's view: the first member by rendezvous weight,
    /// among those up if partitions are replicated (a replica takes over from a node
    /// that is down); without replicas, a down owner's partitions wait for it.
    fn owner(&self, p: Partition) -> Option<&str> {
        let me = self.me();
        let candidates = self
            .members
            .iter()
            .map(String::as_str)
            .filter(|m| self.args.replicas < 2 || *m == me || self.up.contains(*m));
        partition::owner(candidates, p)
    }

    /// The nodes that should keep a copy of `p`, held here: the next members by
    /// rendezvous weight that are up, skipping the owner if that is not this node
    /// (it is about to take the partition over).
    fn replica_targets(&self, p: Partition) -> Vec<&str> {
        let me = self.me();
        let owner = self.owner(p);
        partition::ranked(self.members.iter().map(String::as_str), p)
            .into_iter()
            .filter(|n| *n != me && self.up.contains(*n) && (Some(*n) != owner || owner == Some(me)))
            .take(self.args.replicas.saturating_sub(1))
            .collect()
    }

    /// Held partitions without a whole copy on each of their replica targets.
    fn under_replicated(&self) -> usize {
        let synced = self.args.replicator.synced();
        (0..PARTITIONS)
            .filter(|p| {
                self.held[*p as usize]
                    && !self
                        .replica_targets(*p)
                        .iter()
                        .all(|t| synced[*p as usize].contains(*t))
            })
            .count()
    }

    /// Starts and stops copies so that every held partition is copied to its targets,
    /// and sends the snapshots of new copies.
    fn plan_replicas(&self) {
        let copies = self.args.replicas.min(self.members.len().max(1));
        self.args.replicator.set_required(copies - 1);
        let mut want: BTreeMap<String, BTreeSet<Partition>> = BTreeMap::new();
        if self.args.replicas > 1 && self.joined {
            let whole = self.args.replicator.synced();
            for p in (0..PARTITIONS).filter(|p| self.held[*p as usize]) {
                let targets = self.replica_targets(p);
                // Make before break: a whole copy is kept until the new targets are whole.
                if !targets.iter().all(|t| whole[p as usize].contains(*t)) {
                    for w in &whole[p as usize] {
                        if self.up.contains(w) {
                            want.entry(w.clone()).or_default().insert(p);
                        }
                    }
                }
                for t in targets {
                    want.entry(t.to_owned()).or_default().insert(p);
                }
            }
        }
        for boot in self.args.replicator.plan(&want) {
            let (storage, replicator) = (self.args.storage.clone(), self.args.replicator.clone());
            tokio::spawn(send_snapshot(storage, replicator, boot));
        }
    }

    fn decide(&self, p: Partition) -> Decision {
        if self.held[p as usize] {
            return Decision::Local;
        }
        match self.owner(p) {
            None => Decision::Unavailable("this node has no cluster members".into()),
            Some(o) if o == self.me() => Decision::Wait,
            // A partition frozen here moves to its new owner, which buffers until it has the data.
            Some(o) if self.up.contains(o) || self.giving.get(&p).is_some_and(|g| g == o) => {
                Decision::Forward(o.to_owned())
            }
            Some(o) => Decision::Unavailable(format!("node {o}, which owns this data, is down; retry later")),
        }
    }

    async fn route(&mut self, target: Target, hops: u32) {
        let p = target.partition();
        match self.decide(p) {
            Decision::Local => self.route_local(target).await,
            Decision::Forward(node) => {
                if hops >= MAX_HOPS {
                    target.fail(ChatError::Unavailable("the cluster is rebalancing; retry".into()));
                    return;
                }
                match wire::to_request(target, self.me()) {
                    Some((op, Some(on))) => self.args.remote.request(&node, hops + 1, op, on),
                    Some((op, None)) => self.args.remote.tell(&node, hops + 1, op),
                    None => tracing::error!("a node-local message was routed to a peer"),
                }
            }
            Decision::Wait => {
                if self.waiting_count >= MAX_WAITING {
                    target.fail(ChatError::Unavailable("too many requests waiting; retry".into()));
                } else {
                    self.waiting_count += 1;
                    self.waiting
                        .entry(p)
                        .or_default()
                        .push_back((Instant::now(), target));
                }
            }
            Decision::Unavailable(why) => target.fail(ChatError::Unavailable(why)),
        }
    }

    async fn route_local(&mut self, target: Target) {
        match target {
            Target::Inbox(user, InboxMsg::Detach { session }) if !self.inboxes.contains_key(&user) => {
                // No need to start an inbox to forget a parked session.
                if let Some(parked) = self.parked.get_mut(&user) {
                    parked.retain(|s| s.id != session);
                    if parked.is_empty() {
                        self.parked.remove(&user);
                    }
                }
            }
            Target::Inbox(user, InboxMsg::Attach { session, reply }) if !self.inboxes.contains_key(&user) => {
                // A login needs no running inbox: with none running nothing is pending, so
                // the stored cursors are current. Parking the session here keeps idle
                // logged-in users down to a few bytes each.
                match self.args.storage.inbox_meta(&user) {
                    Ok(meta) => {
                        let parked = self.parked.entry(user).or_default();
                        parked.retain(|s| s.id != session.id);
                        parked.push(session);
                        reply(Ok(meta));
                    }
                    Err(e) => reply(Err(e.into())),
                }
            }
            Target::Inbox(user, msg) => {
                let parked = &mut self.parked;
                let args = || inbox_args(&self.args, &self.router, &user, parked.remove(&user));
                route(&mut self.inboxes, &user, msg, Inbox, args, InboxMsg::fail).await;
            }
            Target::Group(group, msg) => {
                let args = || group_args(&self.args, &self.router, &group);
                route(&mut self.groups, &group, msg, Group, args, GroupMsg::fail).await;
            }
            Target::Account(user, msg) => account(&self.args.storage, user, msg),
        }
    }

    /// Tells the member actor what to say about this node.
    fn publish(&self) {
        self.args.view.set_local(crate::cluster::LocalView {
            members: self.members.iter().cloned().collect(),
            left: self.left.iter().cloned().collect(),
            leaving: self.leaving,
            holds: self.holds_bitmap(),
            serving: partition::to_bits(|p| self.held[p as usize]),
        });
    }

    /// The partitions whose data is here: held, handed off but not acknowledged, or
    /// held before a restart and not settled yet.
    fn holds_bitmap(&self) -> Vec<u8> {
        partition::to_bits(|p| {
            self.held[p as usize] || self.suspect[p as usize] || self.giving.contains_key(&p)
        })
    }

    /// What is stored as held: the partitions served here and those held before a
    /// restart and not settled yet (a second restart must not forget them).
    fn stored_held(&self) -> Vec<bool> {
        self.held
            .iter()
            .zip(&self.suspect)
            .map(|(h, s)| *h || *s)
            .collect()
    }

    fn persist_members(&self) {
        let mut w = Writes::default();
        Storage::put_members(&mut w, &self.members, &self.left, &self.departing);
        self.args.storage.commit(w, Box::new(|_| {}));
    }

    /// Queues the write of the held partitions and the unacknowledged handoffs, and
    /// tells the peers.
    fn persist_held(&self) {
        let mut w = Writes::default();
        Storage::put_held(&mut w, &self.stored_held());
        Storage::put_giving(&mut w, &self.giving);
        self.args.storage.commit(w, Box::new(|_| {}));
        self.publish();
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        let stalled = now - std::mem::replace(&mut self.last_tick, now);
        if stalled > STALL_LIMIT && !self.streams_in.is_empty() {
            // This node did not run for a while (frozen, or starved): its holders may
            // have counted it down and gone on with other replicas, so its copies may
            // be behind. They no longer count; the holders copy them again.
            tracing::warn!(
                stalled_ms = stalled.as_millis() as u64,
                "this node stalled; dropping its copies of others' partitions"
            );
            let holders: Vec<String> = self.streams_in.keys().cloned().collect();
            for h in holders {
                self.drop_stream(&h);
            }
        }
        self.update_membership().await;
        self.args.remote.sweep();
        self.args.replicator.tick();
        self.expire_waiting();
        if self
            .round
            .as_ref()
            .is_some_and(|r| r.started.elapsed() > ROUND_LIMIT)
        {
            tracing::debug!("takeover round timed out; retrying");
            self.round = None;
        }
        let now = Instant::now();
        let stalled: Vec<Partition> = self
            .receiving_seen
            .iter()
            .filter(|(_, seen)| now - **seen > RECEIVE_LIMIT)
            .map(|(p, _)| *p)
            .collect();
        if !stalled.is_empty() {
            for p in &stalled {
                tracing::warn!(partition = p, from = ?self.receiving.get(p), "handoff stalled; asking again");
                self.receiving.remove(p);
                self.receiving_seen.remove(p);
            }
            // What arrived of them is incomplete: delete it before asking again.
            self.forget(&stalled).await;
        }
        if !self.giving.is_empty() && now - self.done_sent > DONE_REPEAT {
            self.repeat_done();
        }
        if let Some(max_age) = self
            .args
            .max_age
            .filter(|_| now - self.swept >= self.args.sweep_every)
        {
            self.swept = now;
            self.sweep(max_age);
        }
        self.resolve_conflicts();
        if self.round.is_none() && self.joined && !self.leaving {
            self.start_round().await;
        }
        self.plan_replicas();
        self.check_left();
    }

    /// Stops serving a partition that another node serves too, if this node is its
    /// owner: the other one took it over while this node was counted down (its copy
    /// got the writes since; this node's writes were refused by its replica), so
    /// this node asks for it back.
    fn resolve_conflicts(&mut self) {
        // Only fresh cards count: a peer that stopped answering (frozen) keeps its last
        // card, which may predate a handoff of the partition to this node.
        let serving: Vec<(String, Vec<u8>)> = self
            .args
            .view
            .peers()
            .into_iter()
            .filter(|p| p.up && p.seen_at.elapsed() < crate::cluster::HEARTBEAT * 2)
            .map(|p| (p.card.name, p.card.serving))
            .collect();
        let now = Instant::now();
        let mut seen = HashMap::new();
        for p in (0..PARTITIONS).filter(|p| self.held[*p as usize]) {
            if serving.iter().any(|(_, bits)| partition::has_bit(bits, p)) {
                seen.insert(p, self.conflicts.get(&p).copied().unwrap_or(now));
            }
        }
        self.conflicts = seen;
        let mut stepped_down = Vec::new();
        for (p, since) in &self.conflicts {
            if now - *since > CONFLICT_LIMIT && self.owner(*p) == Some(self.me()) {
                self.held[*p as usize] = false;
                self.suspect[*p as usize] = true;
                stepped_down.push(*p);
            }
        }
        if !stepped_down.is_empty() {
            tracing::warn!(
                partitions = ?stepped_down,
                "another node serves these too (it took them over while this one was counted down): taking its copies"
            );
            for p in &stepped_down {
                self.conflicts.remove(p);
            }
            self.stop_actors(&stepped_down);
            self.persist_held();
        }
    }

    /// Finds, off the actor, the inboxes held here with entries past `max_age` and has
    /// each trim itself (through the normal route, so ordering with appends holds).
    fn sweep(&self, max_age: Duration) {
        let (storage, registry, held) = (
            self.args.storage.clone(),
            self.router.registry().clone(),
            self.held.clone(),
        );
        let cutoff = crate::storage::now_ms().saturating_sub(max_age.as_millis() as u64);
        tokio::task::spawn_blocking(move || match storage.inboxes_older_than(cutoff, &held) {
            Ok(users) if !users.is_empty() => {
                tracing::info!(inboxes = users.len(), "retention sweep");
                let _ = registry.cast(RegistryMsg::Sweep(users));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
        });
    }

    /// Sends HandoffDone again for every handoff not acknowledged yet: a new holder that
    /// has the partition acknowledges it again (its first answer may have been lost).
    fn repeat_done(&mut self) {
        self.done_sent = Instant::now();
        let mut by_node: BTreeMap<&String, Vec<u32>> = BTreeMap::new();
        for (p, node) in &self.giving {
            by_node.entry(node).or_default().push(u32::from(*p));
        }
        for (node, partitions) in by_node {
            if self.up.contains(node) {
                let done = HandoffDone {
                    from: self.me().to_owned(),
                    partitions,
                    repeat: true,
                };
                self.args.remote.send(node, item::Body::HandoffDone(done));
            }
        }
    }

    /// Folds the heartbeat view into the member list.
    async fn update_membership(&mut self) {
        let me = self.args.node.clone();
        let peers = self.args.view.peers();
        let up: BTreeSet<String> = peers
            .iter()
            .filter(|p| p.up)
            .map(|p| p.card.name.clone())
            .collect();
        let went_down: Vec<String> = self.up.difference(&up).cloned().collect();
        for gone in &went_down {
            self.args.remote.fail_node(gone);
            self.args.replicator.node_down(gone);

            // Its sessions are gone, or will be attached again when it is back.
            for parked in self.parked.values_mut() {
                parked.retain(|s| s.node() != Some(gone.as_str()));
            }
            self.parked.retain(|_, parked| !parked.is_empty());
            for inbox in self.inboxes.values() {
                let _ = inbox.actor.cast(InboxMsg::ForgetNode(gone.clone()));
            }
        }
        let back: Vec<String> = up.difference(&self.up).cloned().collect();
        // A giver that went away and came back (perhaps restarted) has lost its
        // shipment: treat what was coming from it as stalled, so it is asked again.
        let lost: Vec<Partition> = self
            .receiving
            .iter()
            .filter(|(_, giver)| back.contains(giver) || !up.contains(*giver))
            .map(|(p, _)| *p)
            .collect();
        for p in lost {
            let long_ago = Instant::now().checked_sub(RECEIVE_LIMIT * 2);
            self.receiving_seen
                .insert(p, long_ago.unwrap_or_else(Instant::now));
        }
        if !self.joined {
            let (names, addrs) = &self.seeds;
            let is_seed = |addr: &str| {
                names.contains(addr)
                    || addr
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|a| addrs.contains(&a))
            };
            if let Some(seed) = peers.iter().find(|p| p.up && is_seed(&p.card.cluster_addr)) {
                tracing::info!(seed = %seed.card.name, "met a seed: joined the cluster");
                self.joined = true;
            }
        }
        let before = (self.members.clone(), self.left.clone(), self.departing.clone());
        // What a node says about itself wins over what others say about it.
        let mut direct = BTreeSet::new();
        for p in peers.iter().filter(|p| p.up) {
            let name = &p.card.name;
            direct.insert(name.clone());
            if p.card.leaving {
                self.members.remove(name);
                // Gone for good only once it has handed everything over.
                if p.card.holds.iter().all(|b| *b == 0) {
                    self.left.insert(name.clone());
                    self.departing.remove(name);
                } else {
                    self.departing.insert(name.clone());
                }
            } else {
                self.members.insert(name.clone());
                self.left.remove(name);
                self.departing.remove(name);
            }
        }
        for p in peers.iter().filter(|p| p.up) {
            for name in &p.card.left {
                if !direct.contains(name) && *name != me {
                    self.members.remove(name);
                    self.departing.remove(name);
                    self.left.insert(name.clone());
                }
            }
            for name in &p.card.members {
                if !direct.contains(name) && !self.left.contains(name) && *name != me {
                    self.members.insert(name.clone());
                }
            }
        }
        if self.leaving {
            self.members.remove(&me);
        }
        let old_up = std::mem::replace(&mut self.up, up);
        let gone: Vec<String> = old_up.difference(&self.up).cloned().collect();
        if self.args.replicas > 1 && !gone.is_empty() {
            self.reattach_orphans(&old_up, &gone).await;
        }
        if !back.is_empty() {
            self.reattach(&back).await;
            // They may not have seen this node go away, yet their sessions were dropped
            // here when they went down: ask them to attach them again.
            for node in &back {
                let me = self.me().to_owned();
                self.args.remote.send(node, item::Body::Reattach(me));
            }
        }
        if before != (self.members.clone(), self.left.clone(), self.departing.clone()) {
            tracing::info!(
                members = ?self.members,
                left = ?self.left,
                departing = ?self.departing,
                "cluster members changed"
            );
            self.persist_members();
            self.publish();
            // Requests parked for partitions that are no longer ours go where they belong now.
            self.release_waiting(|_| true).await;
        } else if self.args.replicas > 1 && old_up != self.up {
            // With replicas, owners are chosen among the nodes up: the same applies.
            self.release_waiting(|_| true).await;
        }
    }

    /// Attaches this node's logged-in sessions again to their inboxes where the node
    /// that served them is gone: another node takes those inboxes over from its copy.
    async fn reattach_orphans(&mut self, old_up: &BTreeSet<String>, gone: &[String]) {
        let me = self.me().to_owned();
        let served_by_gone = |p: Partition| {
            let candidates = self
                .members
                .iter()
                .map(String::as_str)
                .filter(|m| *m == me || old_up.contains(*m));
            partition::owner(candidates, p).is_some_and(|o| gone.iter().any(|g| g == o))
        };
        let orphans: Vec<_> = self
            .args
            .remote
            .logged_in()
            .into_iter()
            .filter(|(_, user, _)| served_by_gone(partition::of_user(user)))
            .collect();
        self.attach_sessions(orphans).await;
    }

    fn expire_waiting(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for queue in self.waiting.values_mut() {
            while queue.front().is_some_and(|(t, _)| now - *t > WAIT_LIMIT) {
                expired.extend(queue.pop_front().map(|(_, target)| target));
            }
        }
        self.waiting.retain(|_, q| !q.is_empty());
        self.waiting_count -= expired.len();
        for target in expired {
            target.fail(ChatError::Unavailable(
                "this part of the cluster is being moved; retry".into(),
            ));
        }
    }

    /// Routes again the waiting requests of the partitions `which` selects that this
    /// node holds now or no longer owns.
    /// They are routed in arrival order, before anything that arrives later.
    async fn release_waiting(&mut self, which: impl Fn(Partition) -> bool) {
        let ready: Vec<Partition> = self
            .waiting
            .keys()
            .copied()
            .filter(|p| which(*p) && (self.held[*p as usize] || self.owner(*p) != Some(self.me())))
            .collect();
        for p in ready {
            let queue = self.waiting.remove(&p).unwrap_or_default();
            self.waiting_count -= queue.len();
            for (_, target) in queue {
                Box::pin(self.route(target, 0)).await;
            }
        }
    }

    /// Attaches this node's logged-in sessions again to their inboxes on `nodes`, which
    /// have just come (back) up: a node that restarted has forgotten every session
    /// attached to its inboxes. Attaching twice is harmless (inboxes keep one per id).
    async fn reattach(&mut self, nodes: &[String]) {
        let sessions: Vec<_> = self
            .args
            .remote
            .logged_in()
            .into_iter()
            .filter(|(_, user, _)| {
                let p = partition::of_user(user);
                !self.held[p as usize] && self.owner(p).is_some_and(|o| nodes.iter().any(|n| n == o))
            })
            .collect();
        self.attach_sessions(sessions).await;
    }

    /// Attaches these local sessions to their users' inboxes, wherever they are now.
    async fn attach_sessions(&mut self, sessions: Vec<(u64, String, crate::actors::session::Mailbox)>) {
        for (id, user, mailbox) in sessions {
            let catch_up = mailbox.clone();
            let attach = InboxMsg::Attach {
                session: SessionRef::local(id, mailbox),
                // Pushes made while it was not attached are caught up.
                reply: Box::new(move |meta| {
                    if let Ok(meta) = meta {
                        let _ = catch_up.send(SessionMsg::CatchUp {
                            last_seq: meta.last_seq,
                        });
                    }
                }),
            };
            self.route(Target::Inbox(user, attach), 0).await;
        }
    }

    /// Asks every other node for the partitions this node owns but does not hold.
    async fn start_round(&mut self) {
        let wanted: Vec<Partition> = (0..PARTITIONS)
            .filter(|p| {
                !self.held[*p as usize]
                    && !self.receiving.contains_key(p)
                    && self.owner(*p) == Some(self.me())
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        let me = self.me().to_owned();
        let expect: BTreeSet<String> = self.up.iter().filter(|n| **n != me).cloned().collect();
        if expect.is_empty() && self.members.len() > 1 {
            // Every other member is down: nobody can hand anything over or agree.
            return;
        }
        let id = self.next_round;
        self.next_round += 1;
        tracing::debug!(
            round = id,
            partitions = wanted.len(),
            asking = ?expect,
            "asking for partitions"
        );
        for node in &expect {
            let ask = TakeoverAsk {
                from: me.clone(),
                partitions: wanted.iter().map(|p| u32::from(*p)).collect(),
                round: id,
            };
            self.args.remote.send(node, item::Body::TakeoverAsk(ask));
        }
        self.round = Some(Round {
            id,
            partitions: wanted,
            expect,
            answered: BTreeSet::new(),
            not_held: HashMap::new(),
            refused: BTreeSet::new(),
            given: BTreeSet::new(),
            started: Instant::now(),
        });
        self.finish_round_if_answered().await;
    }

    async fn finish_round_if_answered(&mut self) {
        let Some(round) = &self.round else {
            return;
        };
        if round.answered != round.expect {
            return;
        }
        let round = self.round.take().expect("checked above");
        // A partition nobody holds is new only if every member has said so, and no node
        // that did not answer (down, or gone) last said it has the partition's data.
        let everyone = self
            .members
            .iter()
            .chain(&self.departing)
            .all(|m| m == self.me() || round.answered.contains(m));
        let silent_holds: Vec<Vec<u8>> = self
            .args
            .view
            .peers()
            .into_iter()
            .filter(|p| !round.answered.contains(&p.card.name))
            .map(|p| p.card.holds)
            .collect();
        let held_elsewhere = |p: Partition| silent_holds.iter().any(|bits| partition::has_bit(bits, p));
        let mut claimed = Vec::new();
        let mut promoted: BTreeMap<String, Vec<Partition>> = BTreeMap::new();
        for p in round.partitions {
            let said_no = round.not_held.get(&p);
            let all_said_no = said_no.map_or(0, BTreeSet::len) == round.expect.len();
            let gave = round.given.contains(&p);
            if let Some(source) = self.copies[p as usize].clone() {
                // A whole copy whose holder is down, and nobody up has the partition:
                // the copy has every acknowledged write (they waited for it). Serve it.
                if !self.up.contains(&source)
                    && !gave
                    && !round.refused.contains(&p)
                    && !self.receiving.contains_key(&p)
                    && self.owner(p) == Some(self.me())
                {
                    promoted.entry(source.clone()).or_default().push(p);
                    self.copies[p as usize] = None;
                    if let Some(s) = self.streams_in.get_mut(&source) {
                        s.forget(p);
                    }
                    self.held[p as usize] = true;
                    claimed.push(p);
                }
                continue;
            }
            if let Some(to) = self.giving.get(&p).cloned() {
                // Owned here again while a handoff of it to `to` was never acknowledged:
                // if `to` does not have it, the handoff never finished, and the copy here
                // (never deleted) is the partition. If it has it, it ships it back.
                if said_no.is_some_and(|n| n.contains(&to)) && self.owner(p) == Some(self.me()) {
                    tracing::info!(partition = p, to = %to, "unfinished handoff cancelled");
                    self.giving.remove(&p);
                    self.held[p as usize] = true;
                    claimed.push(p);
                }
                continue;
            }
            if everyone
                && all_said_no
                && !held_elsewhere(p)
                && !round.refused.contains(&p)
                && !self.receiving.contains_key(&p)
                && self.owner(p) == Some(self.me())
            {
                // New, or (suspect) held here before a restart and nobody has it since.
                self.held[p as usize] = true;
                self.suspect[p as usize] = false;
                claimed.push(p);
            }
        }
        for (holder, parts) in &promoted {
            tracing::warn!(holder = %holder, partitions = parts.len(), "holder down: serving the copies kept here");
        }
        if !claimed.is_empty() {
            tracing::info!(round = round.id, partitions = claimed.len(), "claimed partitions");
            self.persist_held();
            self.plan_replicas();
            // Group fan-outs the old holder had not finished are finished here.
            self.wake_fanouts(&claimed);
            self.release_waiting(|p| claimed.contains(&p)).await;
        }
    }

    async fn handoff(&mut self, body: item::Body) {
        match body {
            item::Body::TakeoverAsk(ask) => self.answer_takeover(ask).await,
            item::Body::TakeoverAnswer(answer) => {
                let mut superseded = false;
                let given: Vec<Partition> = answer
                    .given
                    .iter()
                    .filter_map(|p| valid_partition(*p))
                    .filter(|p| self.receiving.get(p).is_none_or(|g| *g == answer.from))
                    .collect();
                // Whatever is here of them (a copy, or data from before a restart) is
                // older than what is coming: delete it before the records arrive.
                let stale: Vec<Partition> = given
                    .iter()
                    .copied()
                    .filter(|p| !self.receiving.contains_key(p))
                    .collect();
                self.drop_copies(&stale);
                wipe(self.args.storage.clone(), stale.to_vec()).await;
                if let Some(round) = self.round.as_mut().filter(|r| r.id == answer.round) {
                    round.given.extend(given.iter().copied());
                }
                for p in given {
                    self.receiving.insert(p, answer.from.clone());
                    self.receiving_seen.insert(p, Instant::now());
                    // Shipped back by the node it was being handed to: that handoff is over,
                    // and no late acknowledgement of it may delete what is arriving now.
                    if self.giving.get(&p) == Some(&answer.from) {
                        self.giving.remove(&p);
                        superseded = true;
                    }
                }
                if superseded {
                    self.persist_held();
                }
                if let Some(round) = self.round.as_mut().filter(|r| r.id == answer.round)
                    && round.expect.contains(&answer.from)
                    && round.answered.insert(answer.from.clone())
                {
                    for p in answer.not_held.iter().filter_map(|p| valid_partition(*p)) {
                        round.not_held.entry(p).or_default().insert(answer.from.clone());
                    }
                    round
                        .refused
                        .extend(answer.refused.iter().filter_map(|p| valid_partition(*p)));
                }
                self.finish_round_if_answered().await;
            }
            item::Body::HandoffChunk(chunk) => self.install_chunk(chunk),
            item::Body::Departed(node) => {
                if node != self.me() && !self.left.contains(&node) {
                    tracing::info!(node = %node, "a node left the cluster");
                    self.members.remove(&node);
                    self.departing.remove(&node);
                    self.left.insert(node);
                    self.persist_members();
                    self.publish();
                }
            }
            item::Body::Replication(r) => self.replicate(r).await,
            item::Body::Reattach(node) => {
                if self.up.contains(&node) {
                    self.reattach(&[node]).await;
                }
            }
            item::Body::HandoffDone(done) => {
                let parts: Vec<Partition> = done
                    .partitions
                    .iter()
                    .filter_map(|p| valid_partition(*p))
                    .collect();
                // Only the giver's own end of shipment completes a handoff, never a reminder.
                let incoming: Vec<Partition> = parts
                    .iter()
                    .copied()
                    .filter(|p| !done.repeat && self.receiving.get(p) == Some(&done.from))
                    .collect();
                if !incoming.is_empty() {
                    // Everything the old holder sent is queued before this; a barrier makes it durable.
                    let (storage, registry, from) = (
                        self.args.storage.clone(),
                        self.router.registry().clone(),
                        done.from.clone(),
                    );
                    tokio::spawn(async move {
                        match storage.barrier().await {
                            Ok(()) => {
                                let _ = registry.cast(RegistryMsg::Installed {
                                    from,
                                    partitions: incoming,
                                });
                            }
                            Err(e) => tracing::error!(error = %e, "cannot store handed-off partitions"),
                        }
                    });
                }
                // A repeated HandoffDone for partitions already installed here: acknowledge again.
                let reack: Vec<u32> = parts
                    .iter()
                    .filter(|p| self.held[**p as usize] && self.receiving.get(p) != Some(&done.from))
                    .map(|p| u32::from(*p))
                    .collect();
                if !reack.is_empty() {
                    let ack = HandoffDone {
                        from: self.me().to_owned(),
                        partitions: reack,
                        repeat: false,
                    };
                    self.args.remote.send(&done.from, item::Body::HandoffDone(ack));
                }
                let acked: Vec<Partition> = parts
                    .into_iter()
                    .filter(|p| self.giving.get(p) == Some(&done.from))
                    .collect();
                if !acked.is_empty() {
                    self.forget(&acked).await;
                }
            }
            _ => tracing::warn!("unexpected item routed to the registry"),
        }
    }

    async fn answer_takeover(&mut self, ask: TakeoverAsk) {
        let asker = ask.from.clone();
        let mut answer = TakeoverAnswer {
            from: self.me().to_owned(),
            round: ask.round,
            ..Default::default()
        };
        let mut give = Vec::new();
        // A node that has not met the cluster yet cannot speak for it, and data can only
        // be shipped to a node this one can reach.
        let can_answer = self.joined && self.up.contains(&asker);
        for p in ask.partitions.iter().filter_map(|p| valid_partition(*p)) {
            let theirs = can_answer && self.owner(p) == Some(asker.as_str());
            let wire = u32::from(p);
            if !theirs {
                answer.refused.push(wire);
            } else if self.held[p as usize]
                || self.giving.get(&p) == Some(&asker)
                || self.copies[p as usize]
                    .as_ref()
                    .is_some_and(|s| !self.up.contains(s))
                || (self.suspect[p as usize] && self.suspect_is_latest(p))
            {
                // Held; or shipped to the asker before and not acknowledged (lost, or the
                // asker restarted); or a whole copy whose holder is down; or held before a
                // restart with nobody else having it since: ship it (again; installing
                // twice is harmless).
                answer.given.push(wire);
                give.push(p);
            } else if self.giving.contains_key(&p)
                || self.receiving.contains_key(&p)
                || self.suspect[p as usize]
                || self.round.as_ref().is_some_and(|r| r.partitions.contains(&p))
            {
                answer.refused.push(wire);
            } else {
                answer.not_held.push(wire);
            }
        }
        self.args.remote.send(&asker, item::Body::TakeoverAnswer(answer));
        if !give.is_empty() {
            self.give(asker, give);
        }
    }

    /// Whether this node's data of `p`, held before a restart, is the latest there is:
    /// every member is up, and none of them serves `p`.
    fn suspect_is_latest(&self, p: Partition) -> bool {
        let peers = self.args.view.peers();
        let card = |m: &String| peers.iter().find(|peer| peer.up && peer.card.name == *m);
        self.members
            .iter()
            .filter(|m| *m != self.me())
            .all(|m| card(m).is_some_and(|peer| !partition::has_bit(&peer.card.serving, p)))
    }

    /// Forgets that the copies of `parts` kept here are whole (they are about to be
    /// replaced or deleted), and that the data from before a restart is pending.
    fn drop_copies(&mut self, parts: &[Partition]) {
        for p in parts {
            self.copies[*p as usize] = None;
            for s in self.streams_in.values_mut() {
                s.forget(*p);
            }
            self.suspect[*p as usize] = false;
        }
    }

    /// Stops the inboxes and groups of `parts` (after their pending writes); their
    /// requests are routed afresh from now on.
    fn stop_actors(&mut self, parts: &[Partition]) {
        let user_in = |u: &String| parts.contains(&partition::of_user(u));
        for (_, i) in take_where(&mut self.inboxes, user_in) {
            let _ = i.actor.cast(InboxMsg::Stop);
        }
        take_where(&mut self.parked, user_in);
        for (_, g) in take_where(&mut self.groups, |g| parts.contains(&partition::of_group(g))) {
            let _ = g.actor.cast(GroupMsg::Stop);
        }
    }

    /// Freezes `parts` and ships them to `to`: later requests are forwarded to it.
    fn give(&mut self, to: String, parts: Vec<Partition>) {
        tracing::info!(to = %to, partitions = parts.len(), "handing off partitions");
        let mut set = vec![false; PARTITIONS as usize];
        // A copy or pre-restart data shipped from here is no longer either.
        let copies: Vec<Partition> = parts
            .iter()
            .copied()
            .filter(|p| self.copies[*p as usize].is_some() || self.suspect[*p as usize])
            .collect();
        self.drop_copies(&copies);
        for p in &parts {
            set[*p as usize] = true;
            self.held[*p as usize] = false;
            self.giving.insert(*p, to.clone());
        }
        // Recorded before anything is shipped (the export waits for a barrier behind
        // it): after a crash this node resumes the handoff instead of serving them.
        self.persist_held();
        // Its replicas stop copying them (the new holder picks its own).
        self.plan_replicas();
        self.done_sent = Instant::now();
        let moving_user = |u: &String| set[partition::of_user(u) as usize];
        let inboxes: Vec<(String, ActorRef<InboxMsg>)> = take_where(&mut self.inboxes, moving_user)
            .into_iter()
            .map(|(u, i)| (u, i.actor))
            .collect();
        let mut group_cells = Vec::new();
        for (_, g) in take_where(&mut self.groups, |g| set[partition::of_group(g) as usize]) {
            let _ = g.actor.cast(GroupMsg::Stop);
            group_cells.push(g.actor.get_cell());
        }
        let mut sessions: Vec<(String, SessionRef)> = Vec::new();
        for (user, parked) in take_where(&mut self.parked, moving_user) {
            sessions.extend(parked.into_iter().map(|s| (user.clone(), s)));
        }
        let (storage, remote, me) = (
            self.args.storage.clone(),
            self.args.remote.clone(),
            self.me().to_owned(),
        );
        tokio::spawn(async move {
            for (user, actor) in inboxes {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let release = InboxMsg::Release {
                    reply: Box::new(move |s| {
                        let _ = tx.send(s);
                    }),
                };
                if actor.cast(release).is_ok()
                    && let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(10), rx).await
                {
                    sessions.extend(list.into_iter().map(|s| (user.clone(), s)));
                }
                let _ = actor.get_cell().wait(Some(Duration::from_secs(5))).await;
            }
            for cell in group_cells {
                let _ = cell.wait(Some(Duration::from_secs(10))).await;
            }
            if let Err(e) = storage.barrier().await {
                tracing::error!(error = %e, "handoff: storage barrier failed");
                return;
            }
            let attached: Vec<handoff_chunk::AttachedSession> = sessions
                .into_iter()
                .map(|(user, s)| handoff_chunk::AttachedSession {
                    user,
                    node: s.node().unwrap_or(&me).to_owned(),
                    session: s.id,
                })
                .collect();
            send_reliably(
                &remote,
                &to,
                item::Body::HandoffChunk(HandoffChunk {
                    from: me.clone(),
                    records: Vec::new(),
                    sessions: attached,
                }),
            )
            .await;
            // The scan runs on a blocking thread and hands over a few chunks at a time,
            // so a large share is never in memory at once.
            let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<crate::storage::Record>>(2);
            let scan = tokio::task::spawn_blocking(move || {
                storage.export_chunks(&set, CHUNK_BYTES, |chunk| chunks_tx.blocking_send(chunk).is_ok())
            });
            let mut count = 0;
            while let Some(records) = chunks.recv().await {
                count += records.len();
                let chunk = HandoffChunk {
                    from: me.clone(),
                    records: records
                        .into_iter()
                        .map(|(tree, key, value)| handoff_chunk::Record {
                            tree: tree.number(),
                            key,
                            value,
                            delete: false,
                        })
                        .collect(),
                    sessions: Vec::new(),
                };
                send_reliably(&remote, &to, item::Body::HandoffChunk(chunk)).await;
            }
            match scan.await {
                Ok(Ok(())) => {}
                other => {
                    // No HandoffDone: the new owner asks again and gets it shipped again.
                    tracing::error!(result = ?other, "handoff: export failed");
                    return;
                }
            }
            let done = HandoffDone {
                from: me,
                partitions: parts.iter().map(|p| u32::from(*p)).collect(),
                repeat: false,
            };
            send_reliably(&remote, &to, item::Body::HandoffDone(done)).await;
            tracing::info!(to = %to, records = count, "handoff sent");
        });
    }

    fn install_chunk(&mut self, chunk: HandoffChunk) {
        let from = chunk.from;
        for (p, giver) in &self.receiving {
            if *giver == from {
                self.receiving_seen.insert(*p, Instant::now());
            }
        }
        let mut writes = Writes::default();
        let total = chunk.records.len();
        for (tree, p, r) in decode_records(chunk.records) {
            if self.receiving.get(&p) == Some(&from) {
                writes.put(tree, r.key, r.value);
            }
        }
        let dropped = total - writes.len();
        if dropped > 0 {
            tracing::warn!(from = %from, dropped, "handoff records for partitions not expected from that node");
        }
        // Not held here yet: copied to replicas once it is, by a snapshot.
        self.args.storage.commit_unreplicated(
            writes,
            Box::new(|r| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot store handed-off records");
                }
            }),
        );
        for s in chunk.sessions {
            if self.receiving.get(&partition::of_user(&s.user)) != Some(&from) {
                continue;
            }
            let session = if s.node == self.me() {
                match self.args.remote.session(s.session) {
                    Some(mailbox) => SessionRef::local(s.session, mailbox),
                    None => continue,
                }
            } else {
                SessionRef {
                    id: s.session,
                    target: SessionTarget::Remote {
                        node: s.node.into(),
                        remote: self.args.remote.clone(),
                    },
                }
            };
            self.parked.entry(s.user).or_default().push(session);
        }
    }

    async fn installed(&mut self, from: String, partitions: Vec<Partition>) {
        let mut now_held = Vec::new();
        for p in partitions {
            if self.receiving.get(&p) == Some(&from) {
                self.receiving.remove(&p);
                self.receiving_seen.remove(&p);
                // Shipped back by the node it was being handed to: that handoff is over.
                self.giving.remove(&p);
                self.held[p as usize] = true;
                now_held.push(p);
            }
        }
        if now_held.is_empty() {
            return;
        }
        tracing::info!(from = %from, partitions = now_held.len(), "partitions taken over");
        let mut w = Writes::default();
        Storage::put_held(&mut w, &self.stored_held());
        Storage::put_giving(&mut w, &self.giving);
        if let Err(e) = self.args.storage.commit_wait(w).await {
            tracing::error!(error = %e, "cannot record held partitions");
        }
        self.publish();
        let done = HandoffDone {
            from: self.me().to_owned(),
            partitions: now_held.iter().map(|p| u32::from(*p)).collect(),
            repeat: false,
        };
        self.args.remote.send(&from, item::Body::HandoffDone(done));
        self.plan_replicas();
        // Group fan-outs the old holder had not finished are finished here.
        self.wake_fanouts(&now_held);
        self.release_waiting(|p| now_held.contains(&p)).await;
    }

    /// Wakes the groups of `parts` whose fan-out their last holder may not have finished.
    fn wake_fanouts(&self, parts: &[Partition]) {
        if let Ok(groups) = self.args.storage.pending_fanouts() {
            for g in groups {
                if parts.contains(&partition::of_group(&g)) {
                    self.router.to_group(&g, GroupMsg::Wake);
                }
            }
        }
    }

    /// The new holder has the data of `parts`: delete this node's copy.
    async fn forget(&mut self, parts: &[Partition]) {
        let mut forgotten = Vec::new();
        for p in parts {
            self.giving.remove(p);
            // Never delete a partition held here again or on its way here.
            if !self.held[*p as usize] && !self.receiving.contains_key(p) {
                forgotten.push(*p);
            }
        }
        self.persist_held();
        wipe(self.args.storage.clone(), forgotten.to_vec()).await;
        self.check_left();
    }

    /// An item of a replication stream from the holder of partitions copied here.
    async fn replicate(&mut self, r: Replication) {
        let Replication {
            from,
            stream,
            seq,
            body,
            generation: start,
        } = r;
        if self.refused_streams.get(&from) == Some(&stream) {
            return;
        }
        let known = self.streams_in.get(&from).is_some_and(|s| s.id == stream);
        if !known && seq == 1 {
            // A new stream from this holder: whatever its old one copied is not whole.
            self.drop_stream(&from);
            self.streams_in.insert(
                from.clone(),
                InStream {
                    id: stream,
                    next: 1,
                    partitions: BTreeSet::new(),
                    syncing: BTreeMap::new(),
                    touched: HashMap::new(),
                    touched_count: 0,
                },
            );
        }
        let in_order = self
            .streams_in
            .get(&from)
            .is_some_and(|s| s.id == stream && s.next == seq);
        if !in_order {
            tracing::warn!(holder = %from, stream, seq, "replication item out of order; refusing the stream");
            self.refuse_stream(&from, stream, seq);
            return;
        }
        if let Some(s) = self.streams_in.get_mut(&from) {
            s.next += 1;
        }
        let valid = |ps: &replication::Partitions| -> Vec<Partition> {
            ps.partitions.iter().filter_map(|p| valid_partition(*p)).collect()
        };
        match body {
            Some(replication::Body::Start(ps)) => {
                let parts = valid(&ps);
                if parts.iter().any(|p| {
                    self.held[*p as usize] || self.receiving.contains_key(p) || self.giving.contains_key(p)
                }) {
                    // This node has the partition as more than a copy: the views disagree.
                    tracing::warn!(holder = %from, "asked to copy a partition held or moving here; refusing");
                    self.refuse_stream(&from, stream, seq);
                    return;
                }
                self.drop_copies(&parts);
                wipe(self.args.storage.clone(), parts.to_vec()).await;
                if let Some(s) = self.streams_in.get_mut(&from) {
                    for p in &parts {
                        s.partitions.insert(*p);
                        s.syncing.insert(*p, seq);
                        if let Some(old) = s.touched.insert(*p, HashSet::new()) {
                            s.touched_count -= old.len();
                        }
                    }
                }
            }
            Some(replication::Body::Write(records)) => {
                let Some(s) = self.streams_in.get_mut(&from) else {
                    return;
                };
                let records = decode_records(records.records);
                // A write of a partition this stream does not copy here means the holder
                // and this node disagree (this node took it over while the holder was
                // counted down): refuse, so that the holder cannot acknowledge it.
                if records.iter().any(|(_, p, _)| !s.partitions.contains(p)) {
                    tracing::warn!(holder = %from, "a write of a partition not copied here; refusing the stream");
                    self.refuse_stream(&from, stream, seq);
                    return;
                }
                let mut w = Writes::default();
                for (tree, p, r) in records {
                    if let Some(keys) = s.touched.get_mut(&p)
                        && keys.insert((r.tree, r.key.clone()))
                    {
                        s.touched_count += 1;
                    }
                    if r.delete {
                        w.del(tree, r.key);
                    } else {
                        w.put(tree, r.key, r.value);
                    }
                }
                if s.touched_count > MAX_TOUCHED {
                    tracing::warn!(holder = %from, "too many writes during a snapshot; refusing the stream");
                    self.refuse_stream(&from, stream, seq);
                    return;
                }
                self.apply_then_ack(w, from, stream, seq);
            }
            Some(replication::Body::Chunk(records)) => {
                let Some(s) = self.streams_in.get(&from) else {
                    return;
                };
                let mut w = Writes::default();
                for (tree, p, r) in decode_records(records.records) {
                    let fresh = s.syncing.get(&p) == Some(&start)
                        && !s
                            .touched
                            .get(&p)
                            .is_some_and(|keys| keys.contains(&(r.tree, r.key.clone())));
                    if fresh && !r.delete {
                        w.put(tree, r.key, r.value);
                    }
                }
                self.args.storage.commit_unreplicated(w, Box::new(|_| {}));
            }
            Some(replication::Body::Synced(ps)) => {
                let parts = valid(&ps);
                let Some(s) = self.streams_in.get_mut(&from) else {
                    return;
                };
                let mut whole = Vec::new();
                for p in parts {
                    if s.syncing.get(&p) == Some(&start) {
                        s.syncing.remove(&p);
                        if let Some(keys) = s.touched.remove(&p) {
                            s.touched_count -= keys.len();
                        }
                        whole.push(p);
                    }
                }
                for p in &whole {
                    self.copies[*p as usize] = Some(from.clone());
                }
                tracing::info!(holder = %from, partitions = whole.len(), "copies complete");
                // Acknowledged once everything before it is durable.
                self.apply_then_ack(Writes::default(), from, stream, seq);
            }
            Some(replication::Body::Stop(ps)) => {
                let parts: Vec<Partition> = valid(&ps)
                    .into_iter()
                    .filter(|p| {
                        self.streams_in
                            .get(&from)
                            .is_some_and(|s| s.partitions.contains(p))
                    })
                    .collect();
                self.drop_copies(&parts);
                if let Some(s) = self.streams_in.get_mut(&from) {
                    for p in &parts {
                        s.forget(*p);
                    }
                }
                let idle: Vec<Partition> = parts
                    .into_iter()
                    .filter(|p| !self.held[*p as usize] && !self.receiving.contains_key(p))
                    .collect();
                wipe(self.args.storage.clone(), idle.to_vec()).await;
            }
            Some(replication::Body::Keepalive(_)) | None => {}
        }
    }

    /// Applies `w` here and acknowledges item `seq` of `holder`'s stream once durable.
    fn apply_then_ack(&self, w: Writes, holder: String, stream: u64, seq: u64) {
        let (remote, me) = (self.args.remote.clone(), self.me().to_owned());
        self.args.storage.commit_unreplicated(
            w,
            Box::new(move |r| {
                let ack = ReplicationAck {
                    from: me,
                    stream,
                    seq,
                    ok: r.is_ok(),
                };
                remote.send(&holder, item::Body::ReplicationAck(ack));
            }),
        );
    }

    /// Ends the stream from `holder`: the copies it fed are no longer whole.
    fn drop_stream(&mut self, holder: &str) {
        if let Some(s) = self.streams_in.remove(holder) {
            for p in s.partitions {
                if self.copies[p as usize].as_deref() == Some(holder) {
                    self.copies[p as usize] = None;
                }
            }
        }
    }

    /// Refuses stream `stream` of `holder` (once): the holder starts a new one.
    fn refuse_stream(&mut self, holder: &str, stream: u64, seq: u64) {
        self.drop_stream(holder);
        self.refused_streams.insert(holder.to_owned(), stream);
        let nack = ReplicationAck {
            from: self.me().to_owned(),
            stream,
            seq,
            ok: false,
        };
        self.args.remote.send(holder, item::Body::ReplicationAck(nack));
    }
}

/// Deletes this node's records of `parts`. The registry awaits it, so the deletes are
/// queued (a chunk at a time, as the scan finds them) before it handles anything
/// else, and no record that arrives later can be deleted by them. A scan of every
/// tree: rare (copies starting or moving), and the registry waits for it.
async fn wipe(storage: Storage, parts: Vec<Partition>) {
    if parts.is_empty() {
        return;
    }
    // Writes already queued (an old stream's, a handoff's) must be visible to the scan,
    // or they would land after the deletes and survive them.
    if let Err(e) = storage.barrier().await {
        tracing::error!(error = %e, "cannot delete partitions: storage closed");
        return;
    }
    let mut set = vec![false; PARTITIONS as usize];
    for p in &parts {
        set[*p as usize] = true;
    }
    let s = storage;
    let scanned = tokio::task::spawn_blocking(move || {
        s.export_chunks(&set, CHUNK_BYTES, |records| {
            let mut w = Writes::default();
            for (tree, key, _) in records {
                w.del(tree, key);
            }
            s.commit_unreplicated(w, Box::new(|_| {}));
            true
        })
    })
    .await;
    if !matches!(scanned, Ok(Ok(()))) {
        tracing::error!(result = ?scanned, "partitions not fully deleted");
    }
}

impl RegistryState {
    fn check_left(&mut self) {
        let Some((deadline, _)) = &self.leave_reply else {
            return;
        };
        let done = !self.held.iter().any(|h| *h) && self.giving.is_empty();
        let others_up = self.up.iter().any(|n| self.members.contains(n));
        if done || Instant::now() >= *deadline || !others_up {
            let (_, reply) = self.leave_reply.take().expect("checked above");
            if !done {
                tracing::warn!(
                    held = self.held.iter().filter(|h| **h).count(),
                    "left the cluster before every partition was handed off"
                );
            }
            // `leaving` stays set: this node is shutting down and must not be a member again.
            if done {
                let me = self.me().to_owned();
                for node in &self.up {
                    self.args.remote.send(node, item::Body::Departed(me.clone()));
                }
            }
            reply(done);
        }
    }
}

/// Removes and returns the entries whose key `pick` selects.
fn take_where<V>(map: &mut HashMap<String, V>, pick: impl Fn(&String) -> bool) -> Vec<(String, V)> {
    let keys: Vec<String> = map.keys().filter(|k| pick(k)).cloned().collect();
    keys.into_iter()
        .filter_map(|k| map.remove(&k).map(|v| (k, v)))
        .collect()
}

/// Sends the snapshot of a new replica's partitions on its stream, then `synced`.
/// Writes of those partitions travel on the stream from its `start` on; the scan
/// begins after a barrier, so every write before the start is in the scan.
async fn send_snapshot(storage: Storage, replicator: Arc<Replicator>, boot: Bootstrap) {
    if storage.barrier().await.is_err() {
        return replicator.abandon(&boot);
    }
    let mut set = vec![false; PARTITIONS as usize];
    for p in &boot.partitions {
        set[*p as usize] = true;
    }
    // Waits while the link is full; false once the snapshot is moot (or the link stayed
    // full for a minute).
    let send = |body: replication::Body| {
        let (replicator, boot) = (replicator.clone(), &boot);
        async move {
            for _ in 0..1200 {
                match replicator.send_snapshot(boot, body.clone()) {
                    Ok(()) => return Ok(()),
                    Err(StreamError::Gone) => return Err(StreamError::Gone),
                    Err(StreamError::Full) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            Err(StreamError::Full)
        }
    };
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<crate::storage::Record>>(2);
    let scan = tokio::task::spawn_blocking(move || {
        storage.export_chunks(&set, CHUNK_BYTES, |chunk| chunks_tx.blocking_send(chunk).is_ok())
    });
    let mut count = 0;
    let mut outcome = Ok(());
    while let Some(records) = chunks.recv().await {
        count += records.len();
        let records = records
            .into_iter()
            .map(|(tree, key, value)| handoff_chunk::Record {
                tree: tree.number(),
                key,
                value,
                delete: false,
            })
            .collect();
        outcome = send(replication::Body::Chunk(replication::Records { records })).await;
        if outcome.is_err() {
            break;
        }
    }
    drop(chunks);
    let scanned = matches!(scan.await, Ok(Ok(())));
    match outcome {
        Ok(()) if scanned => {}
        Err(StreamError::Gone) => return,
        _ => {
            tracing::error!(replica = %boot.node, "snapshot not sent; the copy starts again");
            return replicator.abandon(&boot);
        }
    }
    let synced = replication::Partitions {
        partitions: boot.partitions.iter().map(|p| u32::from(*p)).collect(),
    };
    match send(replication::Body::Synced(synced)).await {
        Ok(()) => {
            tracing::info!(replica = %boot.node, records = count, partitions = boot.partitions.len(), "snapshot sent")
        }
        Err(StreamError::Gone) => {}
        Err(StreamError::Full) => replicator.abandon(&boot),
    }
}

/// The records a peer shipped whose tree and key name a data partition, with both;
/// the others (a faulty peer's) are left out.
fn decode_records(records: Vec<handoff_chunk::Record>) -> Vec<(TreeId, Partition, handoff_chunk::Record)> {
    records
        .into_iter()
        .filter_map(|r| {
            let tree = TreeId::from_number(r.tree)?;
            let p = tree.partition_of(&r.key)?;
            Some((tree, p, r))
        })
        .collect()
}

/// Sends an item that must not be dropped, waiting while the link is full.
async fn send_reliably(remote: &Arc<Remote>, to: &str, body: item::Body) {
    let mut body = Some(body);
    for _ in 0..600 {
        let b = body.take().expect("kept until sent");
        if remote.send(to, b.clone()) {
            return;
        }
        body = Some(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::error!(to, "handoff item not sent: the link stayed full");
}

fn valid_partition(p: u32) -> Option<Partition> {
    (p < u32::from(PARTITIONS)).then_some(p as Partition)
}

/// Serves an account request from this node's storage.
fn account(storage: &Storage, user: String, msg: AccountMsg) {
    match msg {
        AccountMsg::Get { reply } => reply(storage.account(&user).map_err(Into::into)),
        AccountMsg::GetToken { token, reply } => reply(storage.token(&user, &token).map_err(Into::into)),
        // Writes are applied or queued here, not in a task, so that a handoff's export
        // (which waits for a barrier queued after them) cannot miss them.
        AccountMsg::Create { record, reply } => {
            storage.create_account_then(&user, &record, Box::new(move |r| reply(r.map_err(Into::into))));
        }
        AccountMsg::PutToken { token, record, reply } => storage.commit(
            Storage::token_write(&user, &token, Some(&record)),
            Box::new(move |r| reply(r.map_err(Into::into))),
        ),
        AccountMsg::RevokeToken { token, reply } => storage.commit(
            Storage::token_write(&user, &token, None),
            Box::new(move |r| reply(r.map_err(Into::into))),
        ),
    }
}

fn inbox_args(
    args: &RegistryArgs,
    router: &Router,
    user: &str,
    parked: Option<Vec<SessionRef>>,
) -> InboxArgs {
    InboxArgs {
        sessions: parked.unwrap_or_default(),
        user: user.to_owned(),
        storage: args.storage.clone(),
        router: router.clone(),
        max_messages: args.max_messages,
        max_age: args.max_age,
        metrics: args.metrics.clone(),
    }
}

fn group_args(args: &RegistryArgs, router: &Router, group: &str) -> GroupArgs {
    GroupArgs {
        group: group.to_owned(),
        storage: args.storage.clone(),
        router: router.clone(),
    }
}

/// Casts `msg` to the actor for `key`, starting one if there is none or the old one died.
/// If no actor can be started, the request is answered with an error instead of dropped.
async fn route<A: Actor>(
    map: &mut HashMap<String, Routed<A::Msg>>,
    key: &str,
    msg: A::Msg,
    handler: A,
    args: impl FnOnce() -> A::Arguments,
    fail: fn(A::Msg, ChatError),
) {
    let msg = match map.get_mut(key) {
        Some(routed) => match routed.actor.cast(msg) {
            Ok(()) => {
                routed.routed += 1;
                return;
            }
            Err(MessagingErr::SendErr(msg)) => {
                tracing::warn!(key, "actor had stopped; starting a new one");
                map.remove(key);
                msg
            }
            Err(e) => {
                tracing::error!(key, error = %e, "routing failed");
                return;
            }
        },
        None => msg,
    };
    match Actor::spawn(None, handler, args()).await {
        Ok((actor, _)) => {
            let routed = Routed { actor, routed: 1 };
            if let Err(MessagingErr::SendErr(msg)) = routed.actor.cast(msg) {
                fail(msg, ChatError::Internal("actor stopped at start".into()));
            }
            map.insert(key.to_owned(), routed);
        }
        Err(e) => {
            tracing::error!(key, error = %e, "cannot start actor");
            fail(msg, ChatError::Internal("cannot load this entity".into()));
        }
    }
}

/// A registry over `storage` with test settings (retention 100, no cluster peers).
#[cfg(test)]
pub(crate) async fn test_registry(storage: Storage) -> ActorRef<RegistryMsg> {
    test_registry_with(storage, |_| {}).await
}

/// Like [`test_registry`], with changes to the arguments.
#[cfg(test)]
pub(crate) async fn test_registry_with(
    storage: Storage,
    change: impl FnOnce(&mut RegistryArgs),
) -> ActorRef<RegistryMsg> {
    let mut args = RegistryArgs {
        node: "t".into(),
        client_addr: "127.0.0.1:1".into(),
        ws_url: String::new(),
        storage,
        max_messages: 100,
        max_age: None,
        sweep_every: Duration::from_secs(3600),
        sessions: Arc::default(),
        view: ClusterView::default(),
        metrics: Arc::default(),
        remote: Remote::new("t", ClusterView::default()),
        seeds: Vec::new(),
        replicas: 1,
        replicator: Replicator::new("t", Remote::new("t", ClusterView::default())),
    };
    change(&mut args);
    Actor::spawn(None, Registry, args)
        .await
        .expect("registry starts")
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::inbox::{Draft, IDLE_AFTER};
    use crate::actors::reply;
    use crate::actors::session::SessionMsg;
    use chat_protocol::v1::ConversationKind;
    use tokio::sync::{mpsc, oneshot};

    async fn ask<T: Send + 'static>(send: impl FnOnce(Reply<T>)) -> T {
        let (tx, rx) = oneshot::channel();
        send(reply(move |v| {
            let _ = tx.send(v);
        }));
        rx.await.expect("answered")
    }

    async fn stats(router: &Router) -> RegistryStats {
        ask(|reply| router.registry().cast(RegistryMsg::Stats { reply }).unwrap()).await
    }

    #[tokio::test(start_paused = true)]
    async fn logged_in_users_need_no_running_inbox_and_an_idle_inbox_parks_its_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 16, 8 << 20).unwrap();
        assert!(
            storage
                .create_account("bob", &AccountRecord::default())
                .await
                .unwrap()
        );
        let registry = test_registry(storage).await;
        let router = Router::new(registry.clone());
        let (mailbox, mut pushes) = mpsc::unbounded_channel();
        let session = SessionRef::local(7, mailbox);
        ask(|reply| router.to_inbox("bob", InboxMsg::Attach { session, reply }))
            .await
            .unwrap();
        // Logging in needs no inbox actor: the session is parked in the registry.
        let s = stats(&router).await;
        assert_eq!((s.inboxes, s.parked_users), (0, 1), "{s:?}");

        // A message for bob starts a new inbox, which still knows bob's session.
        let draft = Draft {
            from: "alice".into(),
            kind: ConversationKind::Private,
            conversation: "bob".into(),
            text: "wake up".into(),
            group: None,
            receipt: None,
            own_copy: None,
        };
        let origin = crate::actors::inbox::private_origin("alice", "c1");
        let appended = ask(|reply| router.to_inbox("bob", InboxMsg::Append { origin, draft, reply }))
            .await
            .unwrap();
        match pushes.recv().await {
            Some(SessionMsg::Deliver { seq, .. }) => assert_eq!(seq, appended.seq),
            _ => panic!("the parked session got no delivery"),
        }
        // (No check that the inbox runs now: paused time jumps ahead while the test
        // waits for the committer thread, so it may already have gone idle again.)

        // Paused time runs ahead while nothing else happens: the inbox goes idle and
        // stops, although bob is still logged in, and hands the session back.
        tokio::time::sleep(IDLE_AFTER * 3).await;
        let s = stats(&router).await;
        assert_eq!((s.inboxes, s.parked_users), (0, 1), "{s:?}");

        // Detaching while the inbox is stopped forgets the parked session without starting it.
        router.to_inbox("bob", InboxMsg::Detach { session: 7 });
        let s = stats(&router).await;
        assert_eq!((s.inboxes, s.parked_users), (0, 0), "{s:?}");
        registry.stop(None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_retention_sweep_trims_inboxes_that_receive_nothing() {
        use crate::storage::{TreeId, Writes, kind, scoped, seq_key};
        use chat_protocol::internal::{InboxEntry, InboxMeta};
        use prost::Message;
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), 16, 8 << 20).unwrap();
        // Three ancient entries and a fresh one, and nothing arriving any more.
        let now = crate::storage::now_ms();
        let mut w = Writes::default();
        for (seq, ts) in [(1, 1), (2, 2), (3, 3), (4, now)] {
            let e = InboxEntry {
                text: format!("m{seq}"),
                timestamp_ms: ts,
                ..Default::default()
            };
            w.put(TreeId::Inbox, seq_key("bob", kind::ENTRY, seq), e.encode_to_vec());
        }
        let meta = InboxMeta {
            last_seq: 4,
            first_seq: 1,
            ..Default::default()
        };
        w.put(TreeId::Inbox, scoped("bob", kind::META), meta.encode_to_vec());
        storage.commit_wait(w).await.unwrap();
        let registry = test_registry_with(storage.clone(), |a| {
            a.max_age = Some(Duration::from_secs(24 * 3600));
            a.sweep_every = Duration::from_secs(60);
        })
        .await;
        let mut first = 0;
        for _ in 0..200 {
            first = storage.inbox_meta("bob").unwrap().first_seq;
            if first == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(first, 4, "the old entries were not swept");
        let left: Vec<u64> = storage
            .inbox_after("bob", 0, 10)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, [4]);
        registry.stop(None);
    }
}
