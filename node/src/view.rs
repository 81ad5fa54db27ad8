//! What this node knows of its peers, and how to reach them: the membership view that
//! the member actor's heartbeats keep (`crate::cluster`), the message every member actor
//! understands, and the cluster-wide online list. The links (`crate::remote`) and the
//! node's context read it; it imports none of them.

use chat_protocol::internal::{NodeCard, OnlinePage, SessionsPage};
use chat_protocol::v1::NodeInfo;
use prost::Message;
use ractor::concurrency::Duration;
use ractor::{ActorCell, ActorId, ActorRef, RpcReplyPort, pg};
use ractor_cluster::RactorClusterMessage;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The pg group every node's member actor joins.
pub const PG_GROUP: &str = "chat/nodes";
/// How long one heartbeat call may take.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(900);
/// Missed heartbeats in a row after which a peer counts as down.
pub const MISSES_DOWN: u32 = 3;
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
    /// Which of some users have sessions on this node: a prost-encoded [`OnlinePage`] of
    /// names, answered with the same of those that do.
    #[rpc]
    SessionsAmong(Vec<u8>, RpcReplyPort<Vec<u8>>),
    /// A user's logged-in sessions on this node: answered with a prost-encoded
    /// [`SessionsPage`].
    #[rpc]
    SessionsOf(String, RpcReplyPort<Vec<u8>>),
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
    /// What this node says about its Raft core: (bootstrap_expect, in_consensus).
    consensus: (u32, bool),
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

    pub(crate) fn fill_card(&self, card: &mut NodeCard) {
        let consensus = self.inner.lock().expect("view lock").consensus;
        (card.bootstrap_expect, card.in_consensus) = consensus;
    }

    pub(crate) fn seen(&self, cell: ActorCell, card: NodeCard) {
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

    pub(crate) fn missed(&self, id: ActorId) {
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
    pub(crate) fn keep_only(&self, present: &HashSet<ActorId>) {
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

/// Asks every other reachable member actor (`ask` makes each call's message) and decodes
/// the answers; a peer that does not answer within [`HEARTBEAT_TIMEOUT`], or answers
/// with bytes that do not decode, is left out.
async fn ask_peers<T: Message + Default>(ask: impl Fn(RpcReplyPort<Vec<u8>>) -> MemberMsg + Clone) -> Vec<T> {
    let peers: Vec<ActorRef<MemberMsg>> = pg::get_members(&PG_GROUP.to_owned())
        .into_iter()
        .filter(|m| !m.get_id().is_local())
        .map(ActorRef::from)
        .collect();
    let asks = peers.into_iter().map(|peer| {
        let ask = ask.clone();
        async move {
            match peer.call(ask, Some(HEARTBEAT_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(bytes)) => T::decode(bytes.as_slice()).ok(),
                _ => None,
            }
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Online users across the cluster: `local` (this node's page) merged with every reachable
/// peer's page, sorted and without duplicates; names > `after`, at most `limit`. A peer that
/// does not answer in time is left out.
pub async fn online_everywhere(
    after: String,
    limit: usize,
    local: (Vec<String>, bool),
) -> (Vec<String>, bool) {
    let pages: Vec<OnlinePage> =
        ask_peers(move |reply| MemberMsg::Online(after.clone(), limit as u32, reply)).await;
    let mut names: std::collections::BTreeSet<String> = local.0.into_iter().collect();
    let mut more = local.1;
    for page in pages {
        more |= page.has_more;
        names.extend(page.users);
    }
    more |= names.len() > limit;
    (names.into_iter().take(limit).collect(), more)
}

/// Those of `names` with a session on some other reachable node (a peer that does not
/// answer in time counts as having none).
pub async fn with_sessions_elsewhere(names: Vec<String>) -> Vec<String> {
    let ask = OnlinePage {
        users: names,
        has_more: false,
    }
    .encode_to_vec();
    let pages: Vec<OnlinePage> = ask_peers(move |reply| MemberMsg::SessionsAmong(ask.clone(), reply)).await;
    let found: std::collections::BTreeSet<String> = pages.into_iter().flat_map(|p| p.users).collect();
    found.into_iter().collect()
}

/// `user`'s sessions on every other reachable node, as each node lists them; a peer that
/// does not answer within [`HEARTBEAT_TIMEOUT`] is left out.
pub async fn sessions_elsewhere(user: &str) -> Vec<chat_protocol::v1::SessionInfo> {
    let user = user.to_owned();
    let pages: Vec<SessionsPage> = ask_peers(move |reply| MemberMsg::SessionsOf(user.clone(), reply)).await;
    pages.into_iter().flat_map(|page| page.sessions).collect()
}
