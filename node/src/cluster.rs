//! Cluster membership: the ractor_cluster NodeServer, dialing seeds and lost peers with
//! backoff, and the member actor whose heartbeat keeps the view of which nodes are up.
//!
//! ractor_cluster forms the mesh (Transitive mode) and authenticates peers with
//! the cookie, but it detects neither frozen peers nor reconnects. So each
//! node runs one remotable [`Member`] actor in the pg group [`PG_GROUP`]; every
//! second it asks every other member for its [`NodeCard`] with a timeout, and
//! a peer that misses [`MISSES_DOWN`] answers in a row is marked down. Peers
//! that are down or gone are redialed with backoff, seeds included.
//!
//! The member actor is the only remotable actor of a node (see ARCHITECTURE.md).

use crate::actors::registry::RegistryMsg;
use crate::actors::wire;
use crate::remote::Remote;
use chat_protocol::internal::{NodeCard, OnlinePage};
use chat_protocol::internal::{item, request};
use chat_protocol::v1::NodeInfo;
use prost::Message;
use ractor::concurrency::Duration;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, pg};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage, RactorClusterMessage};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// The pg group every node's member actor joins.
pub const PG_GROUP: &str = "chat/nodes";
/// How often members ask each other for their cards.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long one heartbeat call may take.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(900);
/// Missed heartbeats in a row after which a peer counts as down.
pub const MISSES_DOWN: u32 = 3;
/// Longest pause between two dials of a lost peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Messages of the member actor. Every variant must cross the network.
#[derive(RactorClusterMessage)]
pub enum MemberMsg {
    /// A peer's heartbeat: answer with this node's card (a prost-encoded [`NodeCard`]).
    #[rpc]
    Card(RpcReplyPort<Vec<u8>>),
    /// A peer's online list: this node's users with names > the first field, at most the
    /// second; answered with a prost-encoded [`OnlinePage`].
    #[rpc]
    Online(String, u32, RpcReplyPort<Vec<u8>>),
    /// Traffic for this node's router: a prost-encoded [`chat_protocol::internal::Envelope`].
    Envelope(Vec<u8>),
    /// Local tick: ask every peer, redial the lost.
    Tick,
}

/// One node as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// What it said about itself last.
    pub card: NodeCard,
    /// Whether it answers.
    pub up: bool,
    /// When its card last arrived.
    pub seen_at: std::time::Instant,
}

/// The membership view, shared with the registry (for LoginOk) and tests.
#[derive(Clone, Default)]
pub struct ClusterView {
    inner: Arc<Mutex<ViewState>>,
}

#[derive(Default)]
struct ViewState {
    /// By node name; never shrinks, so lost peers can be redialed.
    peers: BTreeMap<String, Peer>,
    /// Consecutive missed heartbeats, by member actor.
    misses: HashMap<ActorId, (String, u32)>,
    /// The member actor of each node seen, for sending to it.
    cells: HashMap<String, ActorCell>,
    /// What this node says about the membership (from the registry).
    local: LocalView,
    /// What this node says about its Raft core: (bootstrap_expect, in_consensus).
    consensus: (u32, bool),
}

/// What this node says about itself in its card (set by the registry).
#[derive(Default, Clone)]
pub struct LocalView {
    /// The nodes it counts as members.
    pub members: Vec<String>,
    /// The nodes it knows have left.
    pub left: Vec<String>,
    /// Whether it is leaving.
    pub leaving: bool,
    /// Bitmap of the partitions whose data is here.
    pub holds: Vec<u8>,
    /// Bitmap of the partitions served here.
    pub serving: Vec<u8>,
}

impl ClusterView {
    /// Every known node but this one.
    pub fn peers(&self) -> Vec<Peer> {
        self.inner
            .lock()
            .expect("view lock")
            .peers
            .values()
            .cloned()
            .collect()
    }

    /// The view as the protocol lists it: this node first, then the others by name.
    pub fn nodes(&self, me: &NodeCard) -> Vec<NodeInfo> {
        let mut out = vec![to_info(me, true)];
        out.extend(self.peers().iter().map(|p| to_info(&p.card, p.up)));
        out
    }

    /// Whether `node` has ever answered this node's heartbeat.
    pub fn knows(&self, node: &str) -> bool {
        self.inner.lock().expect("view lock").peers.contains_key(node)
    }

    /// The member actor of `node`, if it is up.
    pub fn member(&self, node: &str) -> Option<ActorCell> {
        let v = self.inner.lock().expect("view lock");
        if !v.peers.get(node).is_some_and(|p| p.up) {
            return None;
        }
        v.cells.get(node).cloned()
    }

    /// Sets what this node tells its peers about its Raft core: waiting to start a
    /// cluster of `bootstrap_expect` nodes (0: not waiting), or in a cluster.
    pub fn set_consensus(&self, bootstrap_expect: u32, in_consensus: bool) {
        self.inner.lock().expect("view lock").consensus = (bootstrap_expect, in_consensus);
    }

    /// Sets what this node tells its peers about the membership.
    pub fn set_local(&self, local: LocalView) {
        self.inner.lock().expect("view lock").local = local;
    }

    fn fill_card(&self, card: &mut NodeCard) {
        let (local, consensus) = {
            let inner = self.inner.lock().expect("view lock");
            (inner.local.clone(), inner.consensus)
        };
        (card.bootstrap_expect, card.in_consensus) = consensus;
        card.members = local.members;
        card.left = local.left;
        card.leaving = local.leaving;
        card.holds = local.holds;
        card.serving = local.serving;
    }

    fn seen(&self, cell: ActorCell, card: NodeCard) {
        let id = cell.get_id();
        let mut v = self.inner.lock().expect("view lock");
        v.cells.insert(card.name.clone(), cell);
        if !v.peers.get(&card.name).is_some_and(|p| p.up) {
            tracing::info!(peer = %card.name, addr = %card.cluster_addr, "peer up");
        }
        v.misses.insert(id, (card.name.clone(), 0));
        let peer = Peer {
            card,
            up: true,
            seen_at: std::time::Instant::now(),
        };
        v.peers.insert(peer.card.name.clone(), peer);
    }

    fn missed(&self, id: ActorId) {
        let mut v = self.inner.lock().expect("view lock");
        let Some((name, misses)) = v.misses.get_mut(&id) else {
            return;
        };
        *misses += 1;
        if *misses == MISSES_DOWN {
            let name = name.clone();
            if let Some(p) = v.peers.get_mut(&name) {
                p.up = false;
                tracing::warn!(peer = %name, "peer down: no heartbeat answer");
            }
        }
    }

    /// Marks down every peer whose member actor is no longer in the group.
    fn keep_only(&self, present: &HashSet<ActorId>) {
        let mut v = self.inner.lock().expect("view lock");
        let gone: Vec<(ActorId, String)> = v
            .misses
            .iter()
            .filter(|(id, _)| !present.contains(id))
            .map(|(id, (name, _))| (*id, name.clone()))
            .collect();
        for (id, name) in gone {
            v.misses.remove(&id);
            if v.cells.get(&name).is_some_and(|c| c.get_id() == id) {
                v.cells.remove(&name);
            }
            // Another member actor of the same name (a restarted node) may be up already.
            if !v.misses.values().any(|(n, _)| *n == name)
                && let Some(p) = v.peers.get_mut(&name)
            {
                if p.up {
                    tracing::warn!(peer = %name, "peer down: disconnected");
                }
                p.up = false;
            }
        }
    }
}

fn to_info(card: &NodeCard, up: bool) -> NodeInfo {
    NodeInfo {
        name: card.name.clone(),
        client_addr: card.client_addr.clone(),
        up,
        sessions: card.sessions,
        ws_url: card.ws_url.clone(),
    }
}

/// What the member actor needs.
pub struct MemberArgs {
    /// This node's card, without the live session count.
    pub card: NodeCard,
    /// Live session count.
    pub sessions: Arc<AtomicUsize>,
    /// The view to keep.
    pub view: ClusterView,
    /// The NodeServer, for dialing.
    pub server: ActorRef<NodeServerMessage>,
    /// Cluster addresses to keep dialing until they answer.
    pub seeds: Vec<String>,
    /// This node's registry, for questions about its users.
    pub registry: ActorRef<RegistryMsg>,
    /// Links to the other nodes (responses and session pushes are handled here).
    pub remote: Arc<Remote>,
}

/// The member actor.
pub struct Member;

/// Its state.
pub struct MemberState {
    args: MemberArgs,
    /// Next dial time and current backoff, by cluster address.
    dials: HashMap<String, (Instant, Duration)>,
}

impl Actor for Member {
    type Msg = MemberMsg;
    type State = MemberState;
    type Arguments = MemberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MemberMsg>,
        args: MemberArgs,
    ) -> Result<MemberState, ActorProcessingErr> {
        pg::join(PG_GROUP.to_owned(), vec![myself.get_cell()]);
        myself.send_interval(HEARTBEAT, || MemberMsg::Tick);
        let _ = myself.cast(MemberMsg::Tick);
        Ok(MemberState {
            args,
            dials: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<MemberMsg>,
        msg: MemberMsg,
        state: &mut MemberState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MemberMsg::Card(reply) => {
                let mut card = state.args.card.clone();
                card.sessions = state.args.sessions.load(Ordering::Relaxed) as u32;
                state.args.view.fill_card(&mut card);
                let _ = reply.send(card.encode_to_vec());
            }
            MemberMsg::Online(after, limit, reply) => {
                let registry = state.args.registry.clone();
                tokio::spawn(async move {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let ask = RegistryMsg::ListOnline {
                        after,
                        limit: (limit as usize).min(crate::actors::session::MAX_ONLINE_PAGE),
                        local_only: true,
                        reply: crate::actors::reply(move |page| {
                            let _ = tx.send(page);
                        }),
                    };
                    if registry.cast(ask).is_ok()
                        && let Ok((users, has_more)) = rx.await
                    {
                        let _ = reply.send(OnlinePage { users, has_more }.encode_to_vec());
                    }
                });
            }
            MemberMsg::Envelope(bytes) => state.dispatch(&bytes),
            MemberMsg::Tick => {
                let members: Vec<ActorCell> = pg::get_members(&PG_GROUP.to_owned())
                    .into_iter()
                    .filter(|m| m.get_id() != myself.get_id())
                    .collect();
                let present: HashSet<ActorId> = members.iter().map(|m| m.get_id()).collect();
                state.args.view.keep_only(&present);
                for member in members {
                    let view = state.args.view.clone();
                    tokio::spawn(async move { heartbeat(member, view).await });
                }
                state.redial();
            }
        }
        Ok(())
    }
}

async fn heartbeat(member: ActorCell, view: ClusterView) {
    let id = member.get_id();
    let peer: ActorRef<MemberMsg> = member.clone().into();
    match peer.call(MemberMsg::Card, Some(HEARTBEAT_TIMEOUT)).await {
        Ok(ractor::rpc::CallResult::Success(bytes)) => match NodeCard::decode(bytes.as_slice()) {
            Ok(card) => view.seen(member, card),
            Err(e) => tracing::warn!(error = %e, "undecodable node card from a peer"),
        },
        _ => view.missed(id),
    }
}

impl MemberState {
    /// Hands every item of a peer's envelope to whoever handles it here.
    fn dispatch(&self, bytes: &[u8]) {
        let Some(items) = crate::remote::decode_envelope(bytes) else {
            return;
        };
        let (remote, registry) = (&self.args.remote, &self.args.registry);
        for item in items {
            match item.body {
                Some(item::Body::Request(req))
                    if matches!(req.op, Some(request::Op::Propose(_) | request::Op::Read(_))) =>
                {
                    remote.serve_at_leader(req)
                }
                Some(item::Body::Request(req)) => {
                    let (origin, id, hops) = (req.origin.clone(), req.id, req.hops);
                    match wire::from_request(req, remote) {
                        Ok(target) => {
                            let _ = registry.cast(RegistryMsg::Route { target, hops });
                        }
                        Err(why) => wire::refuse(remote, &origin, id, why),
                    }
                }
                Some(item::Body::Response(resp)) => remote.complete(resp),
                Some(item::Body::Push(push)) => remote.push_to_session(push),
                Some(item::Body::UserPush(push)) => remote.push_to_user(push),
                Some(item::Body::ReplicationAck(ack)) => remote.replication_ack(ack),
                Some(item::Body::Raft(batch)) => remote.raft(batch),
                Some(body) => {
                    let _ = registry.cast(RegistryMsg::Handoff(body));
                }
                None => tracing::warn!("empty item from a peer; dropped"),
            }
        }
    }

    /// Dials every seed and known peer that is not up, each with its own backoff.
    fn redial(&mut self) {
        let peers = self.args.view.peers();
        let up: HashSet<&str> = peers
            .iter()
            .filter(|p| p.up)
            .map(|p| p.card.cluster_addr.as_str())
            .collect();
        let mut wanted: Vec<String> = self.args.seeds.clone();
        wanted.extend(
            peers
                .iter()
                .filter(|p| !p.up)
                .map(|p| p.card.cluster_addr.clone()),
        );
        wanted.retain(|a| a != &self.args.card.cluster_addr && !up.contains(a.as_str()));
        let now = Instant::now();
        // Forget backoffs of peers that came back, so the next loss starts fast.
        self.dials.retain(|addr, _| wanted.contains(addr));
        for addr in wanted {
            let (next, backoff) = self.dials.entry(addr.clone()).or_insert((now, HEARTBEAT));
            if *next > now {
                continue;
            }
            *backoff = (*backoff * 2).min(MAX_BACKOFF);
            *next = now + *backoff;
            let server = self.args.server.clone();
            let seed = self.args.seeds.contains(&addr);
            tokio::spawn(async move {
                tracing::debug!(peer = %addr, "dialing");
                if let Err(e) = ractor_cluster::client_connect(&server, addr.as_str()).await {
                    // A seed that cannot be reached is worth an operator's attention (a
                    // wrong address, or the cluster is down); the backoff paces this.
                    if seed {
                        tracing::warn!(seed = %addr, error = %e, "cannot reach seed; retrying");
                    } else {
                        tracing::debug!(peer = %addr, error = %e, "dial failed");
                    }
                }
            });
        }
    }
}

/// Logs sessions that close before they authenticate: almost always a wrong cookie.
struct AuthWatch {
    authenticated: Mutex<HashSet<u64>>,
}

impl NodeEventSubscription for AuthWatch {
    fn node_session_opened(&self, _ses: ractor_cluster::node::NodeServerSessionInformation) {}

    fn node_session_authenticated(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.authenticated.lock().expect("lock").insert(ses.node_id);
    }

    fn node_session_disconnected(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        if !self.authenticated.lock().expect("lock").remove(&ses.node_id) {
            tracing::warn!(
                peer = %ses.peer_addr,
                "cluster peer refused: it closed before authenticating (wrong cookie or not a chat node)"
            );
        }
    }
}

/// ractor_cluster's NodeServer, watched for the port its listener really bound.
///
/// Given port 0, the listener binds a port the OS picks and reports it only to the
/// NodeServer (`PortChanged`), which uses it in what it tells peers for onward dials.
/// This node's card and the address it prints need it too, so every message passes
/// through here on its way to the NodeServer.
struct WatchedNodeServer {
    inner: NodeServer,
    /// Where the first reported port goes.
    port: Mutex<Option<tokio::sync::oneshot::Sender<u16>>>,
}

impl Actor for WatchedNodeServer {
    type Msg = NodeServerMessage;
    type State = <NodeServer as Actor>::State;
    type Arguments = <NodeServer as Actor>::Arguments;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeServerMessage>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        self.inner.pre_start(myself, args).await
    }

    async fn post_start(
        &self,
        myself: ActorRef<NodeServerMessage>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner.post_start(myself, state).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<NodeServerMessage>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner.post_stop(myself, state).await
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeServerMessage>,
        msg: NodeServerMessage,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let NodeServerMessage::PortChanged { port } = &msg {
            match self.port.lock().expect("lock").take() {
                Some(tx) => {
                    let _ = tx.send(*port);
                }
                // ractor_cluster rebinds port 0 when its listener fails; peers and this
                // node's card still have the first port.
                None => tracing::warn!(port, "cluster listener restarted on another port"),
            }
        }
        self.inner.handle(myself, msg, state).await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeServerMessage>,
        event: ractor::SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.inner.handle_supervisor_evt(myself, event, state).await
    }
}

/// A running cluster membership.
pub struct Cluster {
    /// The view of the other nodes.
    pub view: ClusterView,
    /// This node's card (sessions filled in on demand); `cluster_addr` is the address
    /// peers dial, with the real port when the listener was given port 0.
    pub card: NodeCard,
    server: ActorRef<NodeServerMessage>,
    member: ActorRef<MemberMsg>,
}

/// Why the cluster side could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the cluster listener on {addr}: {reason}")]
pub struct ClusterError {
    addr: SocketAddr,
    reason: String,
}

impl Cluster {
    /// Starts the NodeServer on `listen`, the member actor, and the dialing of `seeds`;
    /// keeps `view` up to date.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        name: &str,
        listen: SocketAddr,
        advertised: &str,
        cookie: &str,
        client_addr: &str,
        ws_url: &str,
        seeds: Vec<String>,
        sessions: Arc<AtomicUsize>,
        view: ClusterView,
        registry: ActorRef<RegistryMsg>,
        remote: Arc<Remote>,
    ) -> Result<Self, ClusterError> {
        let err = |reason: String| ClusterError { addr: listen, reason };
        // Peers dial us at hostname:port (ractor_cluster takes the port from the listener),
        // so the hostname is the advertised host.
        let host = advertised
            .rsplit_once(':')
            .map_or(advertised, |(h, _)| h)
            .trim_matches(|c| c == '[' || c == ']');
        let server = NodeServer::new(
            listen.port(),
            cookie.to_owned(),
            name.to_owned(),
            host.to_owned(),
            None,
            Some(ractor_cluster::node::NodeConnectionMode::Transitive),
        )
        .with_listen_addr(listen.ip());
        let (port_tx, port_rx) = tokio::sync::oneshot::channel();
        let server = WatchedNodeServer {
            inner: server,
            port: Mutex::new(Some(port_tx)),
        };
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| err(e.to_string()))?;
        // With port 0 the OS picks the port, and peers must be told the real one.
        let port = match listen.port() {
            0 => tokio::time::timeout(Duration::from_secs(10), port_rx)
                .await
                .map_err(|_| err("the listener did not report its port".into()))?
                .map_err(|_| err("the listener stopped before reporting its port".into()))?,
            port => port,
        };
        let advertised = match advertised.rsplit_once(':') {
            Some((host, _)) => format!("{host}:{port}"),
            None => format!("{advertised}:{port}"),
        };
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: "chat-auth-watch".into(),
                subscription: Box::new(AuthWatch {
                    authenticated: Mutex::default(),
                }),
            })
            .map_err(|e| err(e.to_string()))?;
        let card = NodeCard {
            name: name.to_owned(),
            client_addr: client_addr.to_owned(),
            cluster_addr: advertised.clone(),
            ws_url: ws_url.to_owned(),
            ..Default::default()
        };
        let (member, _) = Actor::spawn(
            None,
            Member,
            MemberArgs {
                card: card.clone(),
                sessions,
                view: view.clone(),
                server: server.clone(),
                seeds,
                registry,
                remote,
            },
        )
        .await
        .map_err(|e| err(e.to_string()))?;
        tracing::info!(node = %name, addr = %advertised, "cluster listener started");
        Ok(Self {
            view,
            card,
            server,
            member,
        })
    }

    /// Leaves the group and closes every peer connection.
    pub fn stop(&self) {
        pg::leave(PG_GROUP.to_owned(), vec![self.member.get_cell()]);
        self.member.stop(None);
        self.server.stop(None);
    }
}

/// Online users across the cluster: `local` (this node's page) merged with every reachable
/// peer's page, sorted and without duplicates; names > `after`, at most `limit`. A peer that
/// does not answer in time is left out.
pub async fn online_everywhere(
    after: String,
    limit: usize,
    local: (Vec<String>, bool),
) -> (Vec<String>, bool) {
    let peers: Vec<ActorRef<MemberMsg>> = pg::get_members(&PG_GROUP.to_owned())
        .into_iter()
        .filter(|m| !m.get_id().is_local())
        .map(ActorRef::from)
        .collect();
    let asks = peers.into_iter().map(|peer| {
        let after = after.clone();
        async move {
            let call = peer.call(
                |reply| MemberMsg::Online(after, limit as u32, reply),
                Some(HEARTBEAT_TIMEOUT),
            );
            match call.await {
                Ok(ractor::rpc::CallResult::Success(bytes)) => OnlinePage::decode(bytes.as_slice()).ok(),
                _ => None,
            }
        }
    });
    let mut names: std::collections::BTreeSet<String> = local.0.into_iter().collect();
    let mut more = local.1;
    for page in futures::future::join_all(asks).await.into_iter().flatten() {
        more |= page.has_more;
        names.extend(page.users);
    }
    more |= names.len() > limit;
    (names.into_iter().take(limit).collect(), more)
}
