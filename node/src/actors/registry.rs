//! The node registry: routes every request to the actor that owns its entity, and keeps
//! the node's view of who is online.
//!
//! Inboxes and groups are started here on demand and forgotten through an
//! idle handshake: an idle actor reports how many routed messages it has
//! handled, and the registry stops it only if that equals the number it has
//! routed to it, so no message can be lost in a stopping actor.
//!
//! [`Router`] is the one entry point the rest of the node uses
//! (`to_inbox`, `to_group`). Today every entity is owned by this node; the
//! cluster issue puts the owner lookup and the forwarding to a peer's
//! registry behind the same calls.

use super::group::{Group, GroupArgs, GroupMsg};
use super::inbox::{Inbox, InboxArgs, InboxMsg};
use super::{Reply, SessionRef};
use crate::cluster::ClusterView;
use crate::error::ChatError;
use crate::storage::Storage;
use chat_protocol::internal::NodeCard;
use chat_protocol::v1::NodeInfo;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How the registry starts inboxes and groups.
#[derive(Clone)]
pub struct RegistryArgs {
    /// This node's name.
    pub node: String,
    /// This node's client address, as clients should dial it.
    pub client_addr: String,
    /// The database.
    pub storage: Storage,
    /// Inbox retention: most messages.
    pub max_messages: u64,
    /// Inbox retention: oldest message.
    pub max_age: Option<Duration>,
    /// Connected sessions on this node.
    pub sessions: Arc<AtomicUsize>,
    /// The other nodes, as the cluster membership sees them.
    pub view: ClusterView,
    /// Node counters, handed to inboxes.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Messages of the registry.
pub enum RegistryMsg {
    /// Route to a user's inbox.
    Inbox(String, InboxMsg),
    /// Route to a group.
    Group(String, GroupMsg),
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
}

/// A cheap handle for routing to entities wherever they live.
#[derive(Clone)]
pub struct Router {
    registry: ActorRef<RegistryMsg>,
}

impl Router {
    /// Wraps the registry's reference.
    pub fn new(registry: ActorRef<RegistryMsg>) -> Self {
        Self { registry }
    }

    /// The registry actor.
    pub fn registry(&self) -> &ActorRef<RegistryMsg> {
        &self.registry
    }

    /// Sends to the inbox of `user`, starting it if needed.
    pub fn to_inbox(&self, user: &str, msg: InboxMsg) {
        if self
            .registry
            .cast(RegistryMsg::Inbox(user.to_owned(), msg))
            .is_err()
        {
            tracing::debug!(user, "registry gone; inbox message dropped");
        }
    }

    /// Sends to `group`'s actor, starting it if needed.
    pub fn to_group(&self, group: &str, msg: GroupMsg) {
        if self
            .registry
            .cast(RegistryMsg::Group(group.to_owned(), msg))
            .is_err()
        {
            tracing::debug!(group, "registry gone; group message dropped");
        }
    }
}

struct Routed<M> {
    actor: ActorRef<M>,
    routed: u64,
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
        Ok(RegistryState {
            args,
            router: Router::new(myself),
            inboxes: HashMap::new(),
            parked: HashMap::new(),
            groups: HashMap::new(),
            online: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RegistryMsg>,
        msg: RegistryMsg,
        state: &mut RegistryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::Inbox(user, InboxMsg::Detach { session }) if !state.inboxes.contains_key(&user) => {
                // No need to start an inbox to forget a parked session.
                if let Some(parked) = state.parked.get_mut(&user) {
                    parked.retain(|s| s.id != session);
                    if parked.is_empty() {
                        state.parked.remove(&user);
                    }
                }
            }
            RegistryMsg::Inbox(user, InboxMsg::Attach { session, reply })
                if !state.inboxes.contains_key(&user) =>
            {
                // A login needs no running inbox: with none running nothing is pending, so
                // the stored cursors are current. Parking the session here keeps idle
                // logged-in users down to a few bytes each.
                match state.args.storage.inbox_meta(&user) {
                    Ok(meta) => {
                        state.parked.entry(user).or_default().push(session);
                        reply(Ok(meta));
                    }
                    Err(e) => reply(Err(e.into())),
                }
            }
            RegistryMsg::Inbox(user, msg) => {
                let parked = &mut state.parked;
                let args = || inbox_args(&state.args, &state.router, &user, parked.remove(&user));
                route(&mut state.inboxes, &user, msg, Inbox, args, InboxMsg::fail).await;
            }
            RegistryMsg::Group(group, msg) => {
                let args = || group_args(&state.args, &state.router, &group);
                route(&mut state.groups, &group, msg, Group, args, GroupMsg::fail).await;
            }
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
                    cluster_addr: String::new(),
                    sessions: state.args.sessions.load(Ordering::Relaxed) as u32,
                };
                reply(state.args.view.nodes(&me));
            }
            RegistryMsg::Stats { reply } => reply(RegistryStats {
                inboxes: state.inboxes.len(),
                groups: state.groups.len(),
                parked_users: state.parked.len(),
                online_users: state.online.len(),
            }),
            RegistryMsg::Drain { reply } => {
                // Stop is queued behind every message already routed, so pending
                // writes are submitted first; the storage barrier then covers them.
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
        }
        Ok(())
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
    let args = RegistryArgs {
        node: "t".into(),
        client_addr: "127.0.0.1:1".into(),
        storage,
        max_messages: 100,
        max_age: None,
        sessions: Arc::default(),
        view: ClusterView::default(),
        metrics: Arc::default(),
    };
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
        let registry = test_registry(storage).await;
        let router = Router::new(registry.clone());
        let (mailbox, mut pushes) = mpsc::unbounded_channel();
        let session = SessionRef { id: 7, mailbox };
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
}
