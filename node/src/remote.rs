//! Talking to other nodes: one bounded outbound link per peer that batches items into
//! envelopes, requests waiting for their responses, and the directory of this node's
//! sessions that remote inboxes push to.
//!
//! Everything that crosses nodes is an [`Item`] of `protocol/cluster.proto`. A link
//! is a bounded queue drained by one task, which packs whatever is waiting (up to
//! [`MAX_BATCH_ITEMS`] items or [`MAX_BATCH_BYTES`]) into one [`Envelope`] and casts
//! it to the peer's member actor: one cast per destination carries many messages.
//! A full link refuses new items (the caller answers UNAVAILABLE), so a slow or
//! frozen peer cannot grow this node's memory without bound.

use crate::actors::session::{Mailbox, SessionMsg};
use crate::cluster::{ClusterView, MemberMsg};
use crate::error::{ChatError, ChatResult};
use bytes::Bytes;
use chat_protocol::internal::{Envelope, Item, Request, Response, SessionPush, item, request, response};
use prost::Message;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Items one link may queue before it refuses more.
pub const LINK_QUEUE: usize = 65_536;
/// Most items in one envelope.
pub const MAX_BATCH_ITEMS: usize = 1024;
/// Envelopes stop growing past this many bytes (ractor_cluster refuses frames over 16 MiB).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// A request with no response after this long is answered UNAVAILABLE.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs with the response to a request (or the reason there is none).
pub type OnResponse = Box<dyn FnOnce(ChatResult<response::Result>) + Send>;

struct Waiting {
    node: String,
    deadline: Instant,
    on_response: OnResponse,
}

/// This node's side of the traffic between nodes.
pub struct Remote {
    me: String,
    view: ClusterView,
    links: Mutex<HashMap<String, mpsc::Sender<Item>>>,
    pending: Mutex<HashMap<u64, Waiting>>,
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, LocalSession>>,
}

struct LocalSession {
    mailbox: Mailbox,
    /// The logged-in user, if any.
    user: Option<String>,
}

fn unavailable(node: &str) -> ChatError {
    ChatError::Unavailable(format!("node {node} cannot be reached; retry"))
}

impl Remote {
    /// The hub of node `me`.
    pub fn new(me: &str, view: ClusterView) -> Arc<Self> {
        Arc::new(Self {
            me: me.to_owned(),
            view,
            links: Mutex::default(),
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            sessions: Mutex::default(),
        })
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Queues a push for a session on `node`. False only if the link is gone; a full
    /// link drops the push but keeps the session attached (pushes are a shortcut: the
    /// client sees the gap in seqs, and the entry waits in the inbox for its sync).
    pub fn push(self: &Arc<Self>, node: &str, push: SessionPush) -> bool {
        self.send(node, item::Body::Push(push)) || self.links.lock().expect("links lock").contains_key(node)
    }

    /// Queues `body` for `node`; false if its link is full.
    pub fn send(self: &Arc<Self>, node: &str, body: item::Body) -> bool {
        let item = Item { body: Some(body) };
        let mut links = self.links.lock().expect("links lock");
        let link = links.entry(node.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            tokio::spawn(pump(Arc::downgrade(self), node.to_owned(), rx));
            tx
        });
        match link.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(peer = node, "link full; refusing");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Sends a request to `node`; `on_response` runs once with its outcome.
    pub fn request(self: &Arc<Self>, node: &str, hops: u32, op: request::Op, on_response: OnResponse) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().expect("pending lock").insert(
            id,
            Waiting {
                node: node.to_owned(),
                deadline: Instant::now() + REQUEST_TIMEOUT,
                on_response,
            },
        );
        let req = Request {
            id,
            origin: self.me.clone(),
            hops,
            op: Some(op),
        };
        if !self.send(node, item::Body::Request(req)) {
            self.fail(id, unavailable(node));
        }
    }

    /// Sends a request nobody waits for.
    pub fn tell(self: &Arc<Self>, node: &str, hops: u32, op: request::Op) {
        let req = Request {
            id: 0,
            origin: self.me.clone(),
            hops,
            op: Some(op),
        };
        self.send(node, item::Body::Request(req));
    }

    /// Sends the response to request `id` of `origin`.
    pub fn respond(self: &Arc<Self>, origin: &str, id: u64, result: response::Result) {
        if id == 0 {
            return;
        }
        let resp = Response {
            id,
            result: Some(result),
        };
        if origin == self.me {
            self.complete(resp);
        } else {
            self.send(origin, item::Body::Response(resp));
        }
    }

    /// A response arrived.
    pub fn complete(&self, resp: Response) {
        let waiting = self.pending.lock().expect("pending lock").remove(&resp.id);
        if let Some(w) = waiting {
            (w.on_response)(
                resp.result
                    .ok_or_else(|| ChatError::Internal("empty response from a peer".into())),
            );
        }
    }

    fn fail(&self, id: u64, error: ChatError) {
        let waiting = self.pending.lock().expect("pending lock").remove(&id);
        if let Some(w) = waiting {
            (w.on_response)(Err(error));
        }
    }

    /// `node` is down: its requests will get no answer.
    pub fn fail_node(&self, node: &str) {
        let failed: Vec<Waiting> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, w)| w.node == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
        };
        for w in failed {
            (w.on_response)(Err(unavailable(node)));
        }
    }

    /// Answers requests that waited too long.
    pub fn sweep(&self) {
        let now = Instant::now();
        let late: Vec<Waiting> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, w)| w.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
        };
        for w in late {
            (w.on_response)(Err(ChatError::Unavailable(format!(
                "node {} did not answer in time; retry",
                w.node
            ))));
        }
    }

    /// Registers `on_response` for a request id, as [`Remote::request`] does (tests).
    #[cfg(test)]
    pub(crate) fn wait_for_response(&self, id: u64, on_response: OnResponse) {
        self.pending.lock().expect("pending lock").insert(
            id,
            Waiting {
                node: self.me.clone(),
                deadline: Instant::now() + REQUEST_TIMEOUT,
                on_response,
            },
        );
    }

    /// Requests waiting for a response.
    pub fn waiting(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }

    /// A session of this node, reachable for pushes from remote inboxes.
    pub fn add_session(&self, id: u64, mailbox: Mailbox) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(id, LocalSession { mailbox, user: None });
    }

    /// The session logged in as `user` (or logged out: None).
    pub fn set_session_user(&self, id: u64, user: Option<String>) {
        if let Some(s) = self.sessions.lock().expect("sessions lock").get_mut(&id) {
            s.user = user;
        }
    }

    /// This node's logged-in sessions: id, user, mailbox.
    pub fn logged_in(&self) -> Vec<(u64, String, Mailbox)> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .filter_map(|(id, s)| Some((*id, s.user.clone()?, s.mailbox.clone())))
            .collect()
    }

    /// The session closed.
    pub fn remove_session(&self, id: u64) {
        self.sessions.lock().expect("sessions lock").remove(&id);
    }

    /// The mailbox of a session of this node.
    pub fn session(&self, id: u64) -> Option<Mailbox> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(&id)
            .map(|s| s.mailbox.clone())
    }

    /// A push from a remote inbox to one of this node's sessions.
    pub fn push_to_session(&self, push: SessionPush) {
        let Some(mailbox) = self.session(push.session) else {
            return;
        };
        let frame = Bytes::from(push.frame);
        let _ = mailbox.send(if push.seq == 0 {
            SessionMsg::Push(frame)
        } else {
            SessionMsg::Deliver {
                seq: push.seq,
                frame,
                since: Instant::now(),
            }
        });
    }
}

/// Drains one link: packs waiting items into envelopes and casts them to the peer.
async fn pump(remote: std::sync::Weak<Remote>, peer: String, mut rx: mpsc::Receiver<Item>) {
    let mut batch: Vec<Item> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut bytes = first.encoded_len();
        batch.push(first);
        while batch.len() < MAX_BATCH_ITEMS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(item) => {
                    bytes += item.encoded_len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        let Some(remote) = remote.upgrade() else {
            return;
        };
        let items = std::mem::take(&mut batch);
        let target = remote.view.member(&peer).map(ActorRef::<MemberMsg>::from);
        let undelivered = match target {
            Some(member) => {
                let envelope = Envelope { items }.encode_to_vec();
                match member.cast(MemberMsg::Envelope(envelope)) {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::debug!(peer = %peer, error = %e, "envelope not sent");
                        Vec::new()
                    }
                }
            }
            None => items,
        };
        // Requests in a lost batch fail now instead of at their timeout.
        for item in undelivered {
            if let Some(item::Body::Request(r)) = item.body {
                if r.id != 0 && r.origin == remote.me {
                    remote.fail(r.id, unavailable(&peer));
                }
            }
        }
    }
}

/// Decodes an envelope from a peer; a bad one is logged and dropped.
pub fn decode_envelope(bytes: &[u8]) -> Option<Vec<Item>> {
    match Envelope::decode(bytes) {
        Ok(e) => Some(e.items),
        Err(e) => {
            tracing::warn!(error = %e, len = bytes.len(), "undecodable envelope from a peer; dropped");
            None
        }
    }
}
