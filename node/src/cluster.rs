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
use crate::remote::Remote;
use crate::view::{ClusterView, HEARTBEAT_TIMEOUT, MemberMsg, PG_GROUP};
use chat_protocol::internal::item;
use chat_protocol::internal::{NodeCard, OnlinePage, SessionsPage};
use prost::Message;
use ractor::concurrency::Duration;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, pg};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// How often members ask each other for their cards.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest pause between two dials of a lost peer.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

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
                        limit: (limit as usize).min(crate::actors::registry::MAX_ONLINE_PAGE),
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
            MemberMsg::SessionsAmong(bytes, reply) => {
                let names = OnlinePage::decode(bytes.as_slice())
                    .map(|p| p.users)
                    .unwrap_or_default();
                let users = state.args.remote.with_sessions(names);
                let _ = reply.send(
                    OnlinePage {
                        users,
                        has_more: false,
                    }
                    .encode_to_vec(),
                );
            }
            MemberMsg::SessionsOf(user, reply) => {
                let sessions = state.args.remote.sessions_of(&user);
                let page = SessionsPage {
                    sessions: sessions.into_iter().map(|(_, s)| s).collect(),
                };
                let _ = reply.send(page.encode_to_vec());
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
                // Requests to peers that are down, or that waited too long, are answered
                // UNAVAILABLE now rather than never.
                let remote = &state.args.remote;
                for peer in state.args.view.peers().iter().filter(|p| !p.up) {
                    remote.fail_node(&peer.card.name);
                }
                remote.sweep();
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
        let remote = &self.args.remote;
        for item in items {
            match item.body {
                Some(item::Body::Request(req)) => remote.serve_at_leader(req),
                Some(item::Body::Response(resp)) => remote.complete(resp),
                Some(item::Body::UserPush(push)) => remote.push_to_user(push),
                Some(item::Body::Notice(notice)) => remote.notice(notice),
                Some(item::Body::Raft(batch)) => remote.raft(batch),
                None => tracing::warn!("empty or unknown item from a peer; dropped"),
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
