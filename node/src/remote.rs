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

use crate::error::{ChatError, ChatResult};
use crate::view::{ClusterView, MemberMsg};
use bytes::Bytes;
use chat_protocol::internal::{
    Answer, Envelope, Item, Notice, Query, Request, Response, UserPush, item, request, response,
};
use prost::Message;
use ractor::ActorRef;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Items one link may queue before it refuses more.
pub const LINK_QUEUE: usize = 65_536;
/// Bytes (encoded) one link may queue before it refuses more.
pub const LINK_BYTES: usize = 64 << 20;
/// Most items in one envelope.
pub const MAX_BATCH_ITEMS: usize = 1024;
/// Envelopes stop growing past this many bytes (ractor_cluster refuses frames over 16 MiB).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// A request with no response after this long is answered UNAVAILABLE.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most sessions of one user a node lists (`Remote::sessions_of`).
pub const MAX_SESSIONS_LISTED: usize = 256;

/// Runs with the response to a request (or the reason there is none).
pub type OnResponse = Box<dyn FnOnce(ChatResult<response::Result>) + Send>;

/// Most hops a proposal travels towards its group's leader.
pub const MAX_PROPOSE_HOPS: u32 = 2;

/// What a proposal through [`Remote::propose`] is answered with.
pub type ProposeReply = Box<dyn FnOnce(ChatResult<chat_protocol::internal::Outcome>) + Send>;

/// What a read through [`Remote::read`] is answered with.
pub type ReadReply = Box<dyn FnOnce(ChatResult<Answer>) + Send>;

/// Answers a query from this node's records of a partition (called only after a read
/// barrier confirmed this node leads it).
pub type Reader = Arc<dyn Fn(u16, &Query) -> ChatResult<Answer> + Send + Sync>;

/// What runs at a partition's leader.
enum AtLeader {
    Propose(Vec<u8>),
    Read(Query),
}

/// What the leader's work is answered with (as a peer's response would be).
type LeaderReply = Box<dyn FnOnce(ChatResult<response::Result>) + Send>;

/// The queue to one peer, bounded in items and in bytes.
struct Link {
    /// Items with their encoded size (measured once, on the way in).
    tx: mpsc::Sender<(Item, usize)>,
    bytes: Arc<AtomicUsize>,
}

struct Waiting {
    node: String,
    deadline: Instant,
    on_response: OnResponse,
}

/// This node's side of the traffic between nodes.
pub struct Remote {
    me: String,
    view: ClusterView,
    links: Mutex<HashMap<String, Link>>,
    pending: Mutex<HashMap<u64, Waiting>>,
    next_id: AtomicU64,
    sessions: Mutex<HashMap<u64, LocalSession>>,
    /// The logged-in sessions of each user (locked after `sessions` when both are).
    users: Mutex<HashMap<String, Vec<u64>>>,
    /// The runtime links are spawned on: replies may be sent from the committer thread.
    runtime: Option<tokio::runtime::Handle>,
    /// Where peers' Raft messages go, when this node runs consensus.
    consensus: std::sync::OnceLock<crate::consensus::driver::Handle>,
    /// What answers reads of partitions led here.
    reader: std::sync::OnceLock<Reader>,
    /// Continuations of proposals' outcomes, run in order by one task rather than on
    /// the consensus thread (they encode, decode and push; the thread only decides).
    outcomes: Option<tokio::sync::mpsc::UnboundedSender<Continuation>>,
    /// Told when a user's first session here logs in (true) or its last one here ends.
    local_presence: std::sync::OnceLock<PresenceHook>,
    /// Gets the presence changes of notices.
    presence_notices: std::sync::OnceLock<NoticeHook>,
    /// Serves peers' requests for files (`crate::files`).
    files: std::sync::OnceLock<FileHook>,
}

/// See [`Remote::on_file_request`].
pub type FileHook = Box<dyn Fn(Request) + Send + Sync>;

/// See [`Remote::on_local_presence`].
pub type PresenceHook = Box<dyn Fn(String, bool) + Send + Sync>;
/// See [`Remote::on_presence_notice`].
pub type NoticeHook = Box<dyn Fn(Notice) + Send + Sync>;

/// Work handed off the consensus thread.
type Continuation = Box<dyn FnOnce() + Send>;

/// One of this node's sessions as the links see it: where pushes for it go (its
/// mailbox; `crate::actors::session` implements it).
pub trait PushTarget: Send + Sync {
    /// An entry of `user`'s inbox with its seq; an empty `frame` only moves the session
    /// past `seq` (an own copy, not pushed to the session that sent it). `since`: when
    /// it reached the inbox.
    fn deliver(&self, user: Arc<str>, seq: u64, frame: Bytes, since: Instant);
    /// Any other encoded push (receipts).
    fn push(&self, frame: Bytes);
    /// `user`'s tokens were revoked: if the session is logged in as `user`, it is logged
    /// out and closed, telling the client `reason`.
    fn log_out(&self, user: Arc<str>, reason: &str);
}

struct LocalSession {
    target: Arc<dyn PushTarget>,
    /// The logged-in user, if any.
    user: Option<String>,
    /// The device (`chat_state::devices::id_of` its token) it logged in with, if any.
    device: Option<String>,
    /// The client's address, as the session saw it.
    address: String,
    /// When the connection opened (ms since the epoch).
    since_ms: u64,
}

fn unavailable(node: &str) -> ChatError {
    ChatError::Unavailable(format!("node {node} cannot be reached; retry"))
}

impl Remote {
    /// The hub of node `me`.
    pub fn new(me: &str, view: ClusterView) -> Arc<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let outcomes = runtime.as_ref().map(|runtime| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Continuation>();
            runtime.spawn(async move {
                while let Some(work) = rx.recv().await {
                    work();
                }
            });
            tx
        });
        Arc::new(Self {
            me: me.to_owned(),
            view,
            links: Mutex::default(),
            pending: Mutex::default(),
            // Random, never 0 (no answer expected): a response to the node's previous
            // run (killed and restarted while a peer still answered it) must not
            // complete one of this run's requests.
            next_id: AtomicU64::new((crate::auth::random_u64() >> 1).max(1)),
            sessions: Mutex::default(),
            users: Mutex::default(),
            runtime,
            consensus: std::sync::OnceLock::new(),
            reader: std::sync::OnceLock::new(),
            outcomes,
            local_presence: std::sync::OnceLock::new(),
            presence_notices: std::sync::OnceLock::new(),
            files: std::sync::OnceLock::new(),
        })
    }

    /// Calls `hook(user, true)` when a user's first session on this node logs in, and
    /// `hook(user, false)` when its last one here logs out or closes.
    pub fn on_local_presence(&self, hook: PresenceHook) {
        let _ = self.local_presence.set(hook);
    }

    /// Hands the presence changes of notices (from peers and from here) to `hook`.
    pub fn on_presence_notice(&self, hook: NoticeHook) {
        let _ = self.presence_notices.set(hook);
    }

    /// Whether `user` has a logged-in session on this node.
    pub fn has_sessions(&self, user: &str) -> bool {
        self.users.lock().expect("users lock").contains_key(user)
    }

    /// Those of `names` with a logged-in session on this node.
    pub fn with_sessions(&self, names: Vec<String>) -> Vec<String> {
        let users = self.users.lock().expect("users lock");
        names.into_iter().filter(|n| users.contains_key(n)).collect()
    }

    /// Sends a notice to every node up, this one included.
    pub fn notice_everywhere(self: &Arc<Self>, notice: Notice) {
        for peer in self.view.peers().into_iter().filter(|p| p.up) {
            self.send(&peer.card.name, item::Body::Notice(notice.clone()));
        }
        self.notice(notice);
    }

    /// A notice for users of this node: its frame is pushed to their sessions here, its
    /// presence change goes to the presence hook.
    pub fn notice(&self, notice: Notice) {
        if !notice.frame.is_empty() {
            let frame = Bytes::from(notice.frame);
            for user in notice.users {
                self.push_frame(&user, &frame);
            }
        } else if let Some(hook) = self.presence_notices.get() {
            hook(notice);
        }
    }

    /// Pushes `frame` to every session of `user` on this node.
    fn push_frame(&self, user: &str, frame: &Bytes) {
        let ids = match self.users.lock().expect("users lock").get(user) {
            Some(ids) => ids.clone(),
            None => return,
        };
        for id in ids {
            if let Some((target, _)) = self.session(id) {
                target.push(frame.clone());
            }
        }
    }

    fn presence_changed(&self, user: &str, online: bool) {
        if let Some(hook) = self.local_presence.get() {
            hook(user.to_owned(), online);
        }
    }

    /// Runs `work` after the continuations handed off before it, off the calling
    /// (consensus) thread; on it when there is no runtime.
    fn off_driver(&self, work: Continuation) {
        match &self.outcomes {
            Some(tx) => {
                if let Err(tokio::sync::mpsc::error::SendError(work)) = tx.send(work) {
                    work();
                }
            }
            None => work(),
        }
    }

    /// Hands peers' Raft messages to `consensus` from now on.
    pub fn set_consensus(&self, consensus: crate::consensus::driver::Handle) {
        let _ = self.consensus.set(consensus);
    }

    /// A peer's Raft messages arrived (dropped when this node runs no consensus).
    pub fn raft(&self, batch: chat_protocol::internal::RaftBatch) {
        if let Some(consensus) = self.consensus.get() {
            for m in batch.messages {
                consensus.step(m.group, m.message);
            }
        }
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Queues `body` for `node`; false if its link is full.
    pub fn send(self: &Arc<Self>, node: &str, body: item::Body) -> bool {
        let item = Item { body: Some(body) };
        let size = item.encoded_len();
        let mut links = self.links.lock().expect("links lock");
        let link = links.entry(node.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(LINK_QUEUE);
            let bytes = Arc::new(AtomicUsize::new(0));
            let pump = pump(Arc::downgrade(self), node.to_owned(), rx, bytes.clone());
            match &self.runtime {
                Some(runtime) => drop(runtime.spawn(pump)),
                None => drop(tokio::spawn(pump)),
            }
            Link { tx, bytes }
        });
        // Counted before it is queued, so the pump never subtracts what was not added.
        if link.bytes.fetch_add(size, Ordering::Relaxed) + size > LINK_BYTES {
            link.bytes.fetch_sub(size, Ordering::Relaxed);
            tracing::warn!(peer = node, "link full (bytes); refusing");
            return false;
        }
        match link.tx.try_send((item, size)) {
            Ok(()) => true,
            Err(e) => {
                link.bytes.fetch_sub(size, Ordering::Relaxed);
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    tracing::warn!(peer = node, "link full; refusing");
                }
                false
            }
        }
    }

    /// Sends a request to `node`; `on_response` runs once with its outcome.
    pub fn request(self: &Arc<Self>, node: &str, hops: u32, op: request::Op, on_response: OnResponse) {
        self.request_within(node, hops, op, REQUEST_TIMEOUT, on_response);
    }

    /// [`Remote::request`], answered UNAVAILABLE after `timeout` rather than the default.
    pub fn request_within(
        self: &Arc<Self>,
        node: &str,
        hops: u32,
        op: request::Op,
        timeout: Duration,
        on_response: OnResponse,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().expect("pending lock").insert(
            id,
            Waiting {
                node: node.to_owned(),
                deadline: Instant::now() + timeout,
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

    /// Proposes `command` to the consensus group of `partition` where it is led: here,
    /// at the leader this node knows of, or, with no replica here, through a peer that
    /// may know it (at most [`MAX_PROPOSE_HOPS`] hops). `reply` gets the outcome, or
    /// `UNAVAILABLE` (no consensus here, no known leader, the leader changed): retry.
    pub fn propose(self: &Arc<Self>, partition: u16, command: Vec<u8>, reply: ProposeReply) {
        let reply: LeaderReply = Box::new(move |r| {
            reply(r.and_then(|r| {
                match r {
                    response::Result::Outcome(bytes) => {
                        chat_protocol::internal::Outcome::decode(bytes.as_slice())
                            .map_err(|e| ChatError::Internal(format!("undecodable outcome: {e}")))
                    }
                    response::Result::Error(e) => Err(ChatError::from_proto(e)),
                    _ => Err(ChatError::Internal("unexpected answer to a proposal".into())),
                }
            }))
        });
        self.at_leader(partition, AtLeader::Propose(command), 0, reply);
    }

    /// Answers `query` from the records of `partition` at its leader, after a read
    /// barrier there (never from a deposed leader's records); routed like
    /// [`Remote::propose`]. `UNAVAILABLE`: retry.
    pub fn read(self: &Arc<Self>, partition: u16, query: Query, reply: ReadReply) {
        let reply: LeaderReply = Box::new(move |r| {
            reply(r.and_then(|r| match r {
                response::Result::Answer(answer) => Ok(answer),
                response::Result::Error(e) => Err(ChatError::from_proto(e)),
                _ => Err(ChatError::Internal("unexpected answer to a read".into())),
            }))
        });
        self.at_leader(partition, AtLeader::Read(query), 0, reply);
    }

    /// [`Remote::propose`] of an operation, awaited: its outcome's result (an `Invalid`
    /// outcome, a command the state machine refused to read, is an internal error).
    pub async fn propose_op(
        self: &Arc<Self>,
        partition: u16,
        op: chat_protocol::internal::command::Op,
    ) -> ChatResult<chat_protocol::internal::outcome::Result> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = chat_protocol::internal::Command { op: Some(op) }.encode_to_vec();
        self.propose(
            partition,
            command,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        decided(rx.await.unwrap_or_else(|_| Err(stopping()))?)
    }

    /// [`Remote::read`] of a query, awaited: what it found.
    pub async fn query(
        self: &Arc<Self>,
        partition: u16,
        q: chat_protocol::internal::query::Q,
    ) -> ChatResult<chat_protocol::internal::answer::A> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.read(
            partition,
            Query { q: Some(q) },
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        answered(rx.await.unwrap_or_else(|_| Err(stopping()))?)
    }

    /// Answers queries with this node's records from now on.
    pub fn set_reader(&self, reader: Reader) {
        let _ = self.reader.set(reader);
    }

    /// Runs `op` here if this node leads `partition`, else passes it on (see
    /// [`Remote::propose`]); `reply` gets what to answer.
    fn at_leader(self: &Arc<Self>, partition: u16, op: AtLeader, hops: u32, reply: LeaderReply) {
        use crate::consensus::driver::ProposeError;
        let Some(consensus) = self.consensus.get() else {
            return reply(Err(ChatError::Unavailable("this node runs no consensus".into())));
        };
        let me = self.clone();
        // Where to go next when this node cannot serve it.
        let next = move |me: &Arc<Self>, e: &ProposeError| match e {
            _ if hops >= MAX_PROPOSE_HOPS => None,
            ProposeError::NotLeader {
                leader: Some(leader), ..
            } => me.name_of(*leader),
            // No replica here, or no leader known: a replica placement put there knows
            // better (while a new member joins, placement may name it before it holds
            // the replica: then the next hop tries another).
            ProposeError::NoReplica(_) | ProposeError::NotLeader { leader: None, .. } => {
                me.placed_peer(partition)
            }
            _ => None,
        };
        let unavailable =
            move |e: ProposeError| ChatError::Unavailable(format!("partition {partition}: {e}"));
        match op {
            AtLeader::Propose(command) => {
                let again = command.clone();
                consensus.propose(
                    partition,
                    command,
                    Box::new(move |result| {
                        let handoff = me.clone();
                        handoff.off_driver(Box::new(move || match result {
                            Ok(outcome) => reply(Ok(response::Result::Outcome(outcome.encode_to_vec()))),
                            Err(e) => match next(&me, &e) {
                                Some(node) => {
                                    me.forward(&node, partition, AtLeader::Propose(again), hops + 1, reply)
                                }
                                None => reply(Err(unavailable(e))),
                            },
                        }))
                    }),
                );
            }
            AtLeader::Read(query) => {
                consensus.read(
                    partition,
                    Box::new(move |result| match result {
                        // The barrier holds: this node's records have every write
                        // committed before the read. Read them off the driver's thread.
                        Ok(()) => {
                            let reader = me.reader.get().cloned();
                            let run = move || match reader {
                                Some(reader) => {
                                    reply(reader(partition, &query).map(response::Result::Answer))
                                }
                                None => {
                                    reply(Err(ChatError::Unavailable("this node serves no reads".into())))
                                }
                            };
                            match &me.runtime {
                                Some(runtime) => drop(runtime.spawn_blocking(run)),
                                None => run(),
                            }
                        }
                        Err(e) => match next(&me, &e) {
                            Some(node) => {
                                me.forward(&node, partition, AtLeader::Read(query), hops + 1, reply)
                            }
                            None => reply(Err(unavailable(e))),
                        },
                    }),
                );
            }
        }
    }

    /// An up peer that placement puts a replica of `partition` on (one at random, to
    /// spread the load), or any up peer before the members are known.
    fn placed_peer(&self, partition: u16) -> Option<String> {
        let placed = self
            .consensus
            .get()
            .map(|c| c.placed(partition))
            .unwrap_or_default();
        let up: Vec<String> = self
            .view
            .peers()
            .into_iter()
            .filter(|p| p.up)
            .map(|p| p.card.name)
            .filter(|n| placed.is_empty() || placed.contains(&crate::consensus::node_id(n)))
            .collect();
        // At random: a rotation shared with request ids can fall into step with another
        // node's and send two joining nodes' requests to each other for ever.
        let turn = crate::auth::random_u64() as usize;
        up.get(turn % up.len().max(1)).cloned()
    }

    /// The name of the node with Raft id `id`, among the peers.
    fn name_of(&self, id: u64) -> Option<String> {
        self.view
            .peers()
            .into_iter()
            .map(|p| p.card.name)
            .find(|n| crate::consensus::node_id(n) == id)
    }

    fn forward(self: &Arc<Self>, node: &str, partition: u16, op: AtLeader, hops: u32, reply: LeaderReply) {
        let partition = u32::from(partition);
        let op = match op {
            AtLeader::Propose(command) => {
                request::Op::Propose(chat_protocol::internal::Propose { partition, command })
            }
            AtLeader::Read(query) => request::Op::Read(chat_protocol::internal::Read {
                partition,
                query: Some(query),
            }),
        };
        self.request(node, hops, op, reply);
    }

    /// Serves peers' requests for files with `hook` from now on.
    pub fn on_file_request(&self, hook: FileHook) {
        let _ = self.files.set(hook);
    }

    /// A peer's proposal or read: served here, or passed on to the leader (within the
    /// hops); or a request for a file, served by the files hook.
    pub fn serve_at_leader(self: &Arc<Self>, req: Request) {
        if matches!(req.op, Some(request::Op::BlobRead(_) | request::Op::BlobFetch(_))) {
            return match self.files.get() {
                Some(hook) => hook(req),
                None => {
                    let e = ChatError::Unavailable("this node serves no files yet".into());
                    self.respond(&req.origin, req.id, response::Result::Error(e.to_proto()));
                }
            };
        }
        let (origin, id, hops) = (req.origin, req.id, req.hops);
        let (partition, op) = match req.op {
            Some(request::Op::Propose(p)) => (p.partition, AtLeader::Propose(p.command)),
            Some(request::Op::Read(r)) => (r.partition, AtLeader::Read(r.query.unwrap_or_default())),
            Some(request::Op::BlobRead(_) | request::Op::BlobFetch(_)) | None => {
                let e = ChatError::BadRequest("a request with no operation".into());
                return self.respond(&origin, id, response::Result::Error(e.to_proto()));
            }
        };
        let Ok(partition) = u16::try_from(partition) else {
            let e = ChatError::BadRequest(format!("no partition {partition}"));
            return self.respond(&origin, id, response::Result::Error(e.to_proto()));
        };
        let me = self.clone();
        self.at_leader(
            partition,
            op,
            hops.max(1),
            Box::new(move |result| {
                let result = result.unwrap_or_else(|e| response::Result::Error(e.to_proto()));
                me.respond(&origin, id, result);
            }),
        );
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

    /// Requests waiting for a response.
    pub fn waiting(&self) -> usize {
        self.pending.lock().expect("pending lock").len()
    }

    /// A session of this node, reachable for pushes from remote inboxes, connected from
    /// `address` (listed by [`Remote::sessions_of`]).
    pub fn add_session(&self, id: u64, target: Arc<dyn PushTarget>, address: String) {
        let session = LocalSession {
            target,
            user: None,
            device: None,
            address,
            since_ms: crate::storage::now_ms(),
        };
        self.sessions.lock().expect("sessions lock").insert(id, session);
    }

    /// The device the session logged in with (a log-out forgets it).
    pub fn set_session_device(&self, id: u64, device: String) {
        if let Some(s) = self.sessions.lock().expect("sessions lock").get_mut(&id) {
            s.device = Some(device);
        }
    }

    /// `user`'s logged-in sessions on this node, by connection time, with their ids
    /// (`current` unset); at most [`MAX_SESSIONS_LISTED`].
    pub fn sessions_of(&self, user: &str) -> Vec<(u64, chat_protocol::v1::SessionInfo)> {
        let Some(ids) = self.users.lock().expect("users lock").get(user).cloned() else {
            return Vec::new();
        };
        let sessions = self.sessions.lock().expect("sessions lock");
        let mut found: Vec<(u64, chat_protocol::v1::SessionInfo)> = ids
            .into_iter()
            .filter_map(|id| {
                let s = sessions.get(&id).filter(|s| s.user.as_deref() == Some(user))?;
                let info = chat_protocol::v1::SessionInfo {
                    node: self.me.clone(),
                    client_address: s.address.clone(),
                    connected_since_ms: s.since_ms,
                    device_id: s.device.clone().unwrap_or_default(),
                    current: false,
                };
                Some((id, info))
            })
            .collect();
        found.sort_by_key(|(id, s)| (s.connected_since_ms, *id));
        found.truncate(MAX_SESSIONS_LISTED);
        found
    }

    /// The session logged in as `user` (or logged out: None).
    pub fn set_session_user(&self, id: u64, user: Option<String>) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let Some(s) = sessions.get_mut(&id) else { return };
        let before = std::mem::replace(&mut s.user, user.clone());
        if user.is_none() {
            s.device = None;
        }
        if before == user {
            return;
        }
        let mut users = self.users.lock().expect("users lock");
        let gone = before.filter(|before| forget_user_session(&mut users, before, id));
        let came = user.filter(|user| {
            let ids = users.entry(user.clone()).or_default();
            ids.push(id);
            ids.len() == 1
        });
        drop(users);
        drop(sessions);
        if let Some(gone) = gone {
            self.presence_changed(&gone, false);
        }
        if let Some(came) = came {
            self.presence_changed(&came, true);
        }
    }

    /// The session closed.
    pub fn remove_session(&self, id: u64) {
        let removed = self.sessions.lock().expect("sessions lock").remove(&id);
        if let Some(user) = removed.and_then(|s| s.user)
            && forget_user_session(&mut self.users.lock().expect("users lock"), &user, id)
        {
            self.presence_changed(&user, false);
        }
    }

    /// Pushes an entry of `user`'s inbox to the user's sessions on every node up (this
    /// one included), but `skip_session`.
    pub fn push_everywhere(self: &Arc<Self>, push: UserPush) {
        for peer in self.view.peers().into_iter().filter(|p| p.up) {
            self.send(&peer.card.name, item::Body::UserPush(push.clone()));
        }
        self.push_to_user(push);
    }

    /// A push for the sessions of a user on this node.
    pub fn push_to_user(&self, push: UserPush) {
        let ids = match self.users.lock().expect("users lock").get(&push.user) {
            Some(ids) => ids.clone(),
            None => return,
        };
        let frame = Bytes::from(push.frame);
        let user: Arc<str> = Arc::from(push.user.as_str());
        for id in ids {
            let Some((target, device)) = self.session(id) else {
                continue;
            };
            if !push.log_out.is_empty() {
                // A device's log-out closes only the sessions logged in with its token.
                let targeted =
                    push.log_out_device.is_empty() || device.as_deref() == Some(&push.log_out_device);
                if id != push.skip_session && targeted {
                    target.log_out(user.clone(), &push.log_out);
                }
            } else if push.seq == 0 {
                target.push(frame.clone());
            } else {
                // The session that sent an own copy only moves past its seq.
                let frame = if id == push.skip_session {
                    Bytes::new()
                } else {
                    frame.clone()
                };
                target.deliver(user.clone(), push.seq, frame, Instant::now());
            }
        }
    }

    /// Where pushes for a session of this node go, and the device it logged in with.
    fn session(&self, id: u64) -> Option<(Arc<dyn PushTarget>, Option<String>)> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(&id)
            .map(|s| (s.target.clone(), s.device.clone()))
    }
}

/// Forgets one session of `user`; true when it was the user's last one here.
fn forget_user_session(users: &mut HashMap<String, Vec<u64>>, user: &str, id: u64) -> bool {
    let Some(ids) = users.get_mut(user) else {
        return false;
    };
    ids.retain(|s| *s != id);
    if ids.is_empty() {
        users.remove(user);
        return true;
    }
    false
}

/// Drains one link: packs waiting items into envelopes and casts them to the peer.
async fn pump(
    remote: std::sync::Weak<Remote>,
    peer: String,
    mut rx: mpsc::Receiver<(Item, usize)>,
    queued: Arc<AtomicUsize>,
) {
    let mut batch: Vec<Item> = Vec::new();
    while let Some((first, mut bytes)) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH_ITEMS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok((item, size)) => {
                    bytes += size;
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(bytes, Ordering::Relaxed);
        let Some(remote) = remote.upgrade() else {
            return;
        };
        let items = std::mem::take(&mut batch);
        let mut target = remote.view.member(&peer).map(ActorRef::<MemberMsg>::from);
        // A new peer may talk to this node before this node's heartbeat has ever seen
        // it: give it a moment before dropping what is for it. (A known peer that is
        // down gets nothing: a request failed for it must not arrive later.)
        for _ in 0..20 {
            if target.is_some() || remote.view.knows(&peer) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            target = remote.view.member(&peer).map(ActorRef::<MemberMsg>::from);
        }
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
            if let Some(item::Body::Request(r)) = item.body
                && r.id != 0
                && r.origin == remote.me
            {
                remote.fail(r.id, unavailable(&peer));
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

/// Why an awaited proposal or read has no answer: the node is stopping.
fn stopping() -> ChatError {
    ChatError::Unavailable("node is shutting down".into())
}

/// What a command's outcome says: its result, or an error for a command the state
/// machine refused as invalid.
pub(crate) fn decided(
    outcome: chat_protocol::internal::Outcome,
) -> ChatResult<chat_protocol::internal::outcome::Result> {
    use chat_protocol::internal::outcome;
    match outcome.result {
        Some(outcome::Result::Invalid(why)) => Err(ChatError::Internal(format!("refused command: {why}"))),
        Some(result) => Ok(result),
        None => Err(ChatError::Internal("empty outcome".into())),
    }
}

/// What a query found.
pub(crate) fn answered(
    answer: chat_protocol::internal::Answer,
) -> ChatResult<chat_protocol::internal::answer::A> {
    answer.a.ok_or_else(|| ChatError::Internal("empty answer".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_link_refuses_what_would_exceed_its_byte_bound_and_fails_requests_it_cannot_send() {
        let remote = Remote::new("here", ClusterView::default());
        let push = |seq, bytes| UserPush {
            user: "u".into(),
            seq,
            frame: vec![0; bytes],
            skip_session: 0,
            log_out: String::new(),
            log_out_device: String::new(),
        };
        assert!(!remote.send("there", item::Body::UserPush(push(1, LINK_BYTES + 1))));
        assert!(remote.send("there", item::Body::UserPush(push(2, 16))));

        // "there" is not up: a request to it is answered UNAVAILABLE, not left waiting.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let op = request::Op::Propose(chat_protocol::internal::Propose {
            partition: 1,
            command: Vec::new(),
        });
        remote.request(
            "there",
            0,
            op,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let answer = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(answer, Err(ChatError::Unavailable(_))), "{answer:?}");
        assert_eq!(remote.waiting(), 0);
    }

    /// Records the log-outs it is told.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl PushTarget for Recorder {
        fn deliver(&self, _: Arc<str>, _: u64, _: Bytes, _: Instant) {}
        fn push(&self, _: Bytes) {}
        fn log_out(&self, _: Arc<str>, reason: &str) {
            self.0.lock().unwrap().push(reason.to_owned());
        }
    }

    #[tokio::test]
    async fn a_devices_log_out_reaches_only_the_sessions_logged_in_with_it() {
        let remote = Remote::new("here", ClusterView::default());
        let sessions: Vec<Arc<Recorder>> = (0..3).map(|_| Arc::new(Recorder::default())).collect();
        for (id, (s, device)) in sessions.iter().zip(["d1", "d2", "d1"]).enumerate() {
            let id = id as u64 + 1;
            remote.add_session(id, s.clone(), format!("127.0.0.1:{id}"));
            remote.set_session_user(id, Some("ann".into()));
            remote.set_session_device(id, device.into());
        }
        let listed: Vec<(u64, String)> = remote
            .sessions_of("ann")
            .into_iter()
            .map(|(id, s)| (id, s.device_id))
            .collect();
        assert_eq!(listed, vec![(1, "d1".into()), (2, "d2".into()), (3, "d1".into())]);
        assert!(remote.sessions_of("bob").is_empty());
        remote.push_to_user(UserPush {
            user: "ann".into(),
            log_out: "bye".into(),
            log_out_device: "d1".into(),
            ..UserPush::default()
        });
        let told: Vec<usize> = sessions.iter().map(|s| s.0.lock().unwrap().len()).collect();
        assert_eq!(told, vec![1, 0, 1], "only d1's sessions");
        // Without a device, every session of the user is logged out.
        remote.push_to_user(UserPush {
            user: "ann".into(),
            log_out: "all".into(),
            ..UserPush::default()
        });
        let told: Vec<usize> = sessions.iter().map(|s| s.0.lock().unwrap().len()).collect();
        assert_eq!(told, vec![2, 1, 2]);
        // A session that logged out forgets its device.
        remote.set_session_user(2, None);
        remote.set_session_user(2, Some("ann".into()));
        let second = remote
            .sessions_of("ann")
            .into_iter()
            .find(|(id, _)| *id == 2)
            .unwrap();
        assert_eq!(second.1.device_id, "");
    }

    #[tokio::test]
    async fn replies_can_be_sent_from_a_thread_outside_the_runtime() {
        // Outcomes of the Raft core are decided on its own thread; a reply sent from
        // there may open the first link to a peer.
        let remote = Remote::new("here", ClusterView::default());
        let r = remote.clone();
        let sent = std::thread::spawn(move || {
            r.respond(
                "elsewhere",
                7,
                response::Result::Done(chat_protocol::internal::Empty {}),
            );
            r.links.lock().unwrap().contains_key("elsewhere")
        })
        .join()
        .expect("no panic off the runtime");
        assert!(sent);
    }
}
