//! The node registry: who is logged in on this node, and the cluster's nodes as this
//! node sees them. It routes nothing and holds no partition: requests go to their
//! partition's leader through `crate::served`, and the Raft core decides who leads.

use super::Reply;
use crate::view::ClusterView;
use chat_protocol::internal::NodeCard;
use chat_protocol::v1::NodeInfo;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most names in one online list page.
pub const MAX_ONLINE_PAGE: usize = 1000;

/// What the registry needs to know about its node.
#[derive(Clone)]
pub struct RegistryArgs {
    /// This node's name.
    pub node: String,
    /// This node's client address, as clients should dial it.
    pub client_addr: String,
    /// This node's WebSocket URL (`ws://host:port/ws`), empty without a listener.
    pub ws_url: String,
    /// Connected sessions on this node.
    pub sessions: Arc<AtomicUsize>,
    /// The other nodes, as the cluster membership sees them.
    pub view: ClusterView,
}

/// Messages of the registry.
pub enum RegistryMsg {
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
    /// How many users have at least one session on this node.
    OnlineUsers {
        /// Gets the count.
        reply: Reply<usize>,
    },
}

impl ractor::Message for RegistryMsg {}

/// The registry actor.
pub struct Registry;

/// The registry's state.
pub struct RegistryState {
    args: RegistryArgs,
    /// Sessions per user logged in here.
    online: BTreeMap<String, u32>,
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<RegistryMsg>,
        args: RegistryArgs,
    ) -> Result<RegistryState, ActorProcessingErr> {
        Ok(RegistryState {
            args,
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
                let (page, more) = state.online_page(&after, limit);
                if local_only {
                    reply((page, more));
                } else {
                    // Peers answer on their own time; the registry does not wait for them.
                    tokio::spawn(async move {
                        reply(crate::view::online_everywhere(after, limit, (page, more)).await);
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
            RegistryMsg::OnlineUsers { reply } => reply(state.online.len()),
        }
        Ok(())
    }
}

impl RegistryState {
    /// This node's online users after `after`, at most `limit`, and whether more follow.
    fn online_page(&self, after: &str, limit: usize) -> (Vec<String>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut names = self
            .online
            .range::<str, _>((Excluded(after), Unbounded))
            .map(|(k, _)| k.clone());
        let page: Vec<String> = names.by_ref().take(limit).collect();
        (page, names.next().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(users: &[(&str, u32)]) -> RegistryState {
        RegistryState {
            args: RegistryArgs {
                node: "n".into(),
                client_addr: "127.0.0.1:1".into(),
                ws_url: String::new(),
                sessions: Arc::default(),
                view: ClusterView::default(),
            },
            online: users.iter().map(|(u, n)| (u.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn online_pages_continue_after_the_last_name_and_say_whether_more_follow() {
        let s = state(&[("ann", 1), ("bob", 2), ("cid", 1)]);
        assert_eq!(s.online_page("", 2), (vec!["ann".into(), "bob".into()], true));
        assert_eq!(s.online_page("bob", 2), (vec!["cid".into()], false));
        assert_eq!(s.online_page("cid", 2), (vec![], false));
    }

    #[tokio::test]
    async fn a_user_stays_online_until_the_last_session_goes() {
        let (registry, handle) = Actor::spawn(None, Registry, state(&[]).args).await.unwrap();
        let count = || async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let reply = crate::actors::reply(move |n| {
                let _ = tx.send(n);
            });
            registry.cast(RegistryMsg::OnlineUsers { reply }).unwrap();
            rx.await.unwrap()
        };
        registry.cast(RegistryMsg::Online("ann".into())).unwrap();
        registry.cast(RegistryMsg::Online("ann".into())).unwrap();
        assert_eq!(count().await, 1);
        registry.cast(RegistryMsg::Offline("ann".into())).unwrap();
        assert_eq!(count().await, 1, "one session of ann is left");
        registry.cast(RegistryMsg::Offline("ann".into())).unwrap();
        assert_eq!(count().await, 0);
        registry.stop(None);
        handle.await.unwrap();
    }
}
