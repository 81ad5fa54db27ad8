//! The session actor: one per client connection, local-only, in its own tokio task.
//!
//! The session reads frames only while it holds one of a bounded number of
//! in-flight permits (so a flooding client is simply not read), turns frames
//! into requests for inboxes, groups and the registry, takes pushes and
//! completions from its mailbox, and hands encoded frames to a writer task
//! through a bounded queue. A
//! client that lets that queue fill up is disconnected: it resyncs from its
//! inbox when it reconnects, so no message is lost and no memory grows.
//!
//! Both queues are `futures` channels, not tokio's: a tokio channel allocates a block
//! of 32 slots and about 0.5 KB of padded state when it opens, 3.4 KB for the two of an
//! idle connection, where a `futures` channel allocates 0.15 KB and a node per queued
//! message (BENCHMARKS.md, "Idle memory").

use super::registry::{MAX_ONLINE_PAGE, RegistryMsg};
use super::{Reply, reply};
use crate::auth;
use crate::context::NodeCtx;
use crate::error::{ChatError, ChatResult};
use crate::request::GroupAction;
use crate::request::{
    self as inbox, AccountMsg, AckKind, Appended, ContactMsg, Draft, GroupMsg, InboxMsg, Page, Target,
};
use crate::storage;
use bytes::{Bytes, BytesMut};
use chat_protocol::codec::{CodecError, FrameCodec, encode_frame};
use chat_protocol::internal::{AccountRecord, InboxMeta};
use chat_protocol::v1::{self, ClientFrame, ConversationKind, ErrorCode, client_frame, server_frame::Body};
use chat_state::contacts::Action as ContactAction;
use chat_state::governance::Action;
use futures::StreamExt;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::codec::FramedRead;

/// Longest client message id, in bytes.
pub const MAX_CLIENT_MSG_ID: usize = 64;
/// Most entries in one Sync or History page.
pub const MAX_PAGE: usize = 500;
/// Longest a single socket write may block before the client counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most own-copy seqs a session remembers not to push back while it catches up.
const MAX_SKIPS: usize = 64;
/// Longest group title, in bytes.
const MAX_TITLE: usize = 128;
/// Longest group topic, in bytes.
const MAX_TOPIC: usize = 1024;
/// Room kept below the frame limit when filling pages.
const PAGE_HEADROOM: usize = 512;

type Permit = OwnedSemaphorePermit;

/// What a session's mailbox carries: pushes from inboxes and completions of its own requests.
pub enum SessionMsg {
    /// The outbound queue overflowed: the client does not read.
    Overflow,
    /// An inbox entry for this user (dropped if this session has seen `seq`).
    Deliver {
        /// Whose inbox it is from.
        user: Arc<str>,
        /// Inbox seq.
        seq: u64,
        /// Encoded push frame; empty: nothing to push, only move past `seq` (an own
        /// copy of what this session sent).
        frame: Bytes,
        /// When the message reached its inbox (for the delivery latency metric).
        since: tokio::time::Instant,
    },
    /// Any other encoded push.
    Push(Bytes),
    /// Attached again to an inbox whose newest seq is `last_seq` (its node came back):
    /// push what this session has not seen yet, since it may have missed pushes.
    CatchUp {
        /// The inbox's newest durable seq.
        last_seq: u64,
    },
    /// What a catch-up fetched for `user`: its entries, encoded, in seq order, and the
    /// inbox's newest seq (None: the fetch failed; the next gap tries again).
    CaughtUp {
        /// Whose inbox.
        user: String,
        /// ((seq, push frame) in order, newest seq).
        page: Option<(Vec<(u64, Bytes)>, u64)>,
    },
    /// Login finished: attached to the inbox (boxed: it is much larger than the rest).
    LoggedIn(Box<LoggedIn>),
    /// `user`'s tokens were revoked: if logged in as `user`, log out, and with a reason
    /// close the connection telling it.
    LogOut {
        /// Whose tokens.
        user: Arc<str>,
        /// Close the connection with this reason (None: stay open for another Login).
        closing: Option<String>,
    },
    /// Login failed before attaching.
    LoginFailed {
        /// The Login's request id.
        request_id: u64,
        /// Why.
        error: ChatError,
    },
}

/// The outcome of a login that reached the inbox.
pub struct LoggedIn {
    /// The Login's request id.
    pub request_id: u64,
    /// Who.
    pub user: String,
    /// The session token and its expiry.
    pub token: (String, u64),
    /// The cluster view.
    pub nodes: Vec<v1::NodeInfo>,
    /// The inbox cursors, or why attaching failed.
    pub meta: ChatResult<InboxMeta>,
}

/// A session's mailbox address.
pub type Mailbox = futures::channel::mpsc::UnboundedSender<SessionMsg>;

impl crate::remote::PushTarget for Mailbox {
    fn deliver(&self, user: Arc<str>, seq: u64, frame: Bytes, since: tokio::time::Instant) {
        let _ = self.unbounded_send(SessionMsg::Deliver {
            user,
            seq,
            frame,
            since,
        });
    }

    fn push(&self, frame: Bytes) {
        let _ = self.unbounded_send(SessionMsg::Push(frame));
    }

    fn log_out(&self, user: Arc<str>, reason: &str) {
        let _ = self.unbounded_send(SessionMsg::LogOut {
            user,
            closing: Some(reason.to_owned()),
        });
    }
}

/// Encodes frames into the bounded outbound queue.
#[derive(Clone)]
pub struct Outbound {
    tx: futures::channel::mpsc::UnboundedSender<Bytes>,
    /// Most frames queued for the writer: beyond it the client is a slow reader.
    capacity: usize,
    session: Mailbox,
    max_frame: usize,
}

impl Outbound {
    /// Queues an encoded frame; a full queue marks the client as a slow reader.
    pub fn send_bytes(&self, frame: Bytes) {
        // Answers arrive from other tasks as well, so two may pass the check at once:
        // the bound is a slow reader's, not an exact count.
        if self.tx.len() >= self.capacity {
            let _ = self.session.unbounded_send(SessionMsg::Overflow);
        } else {
            // Fails only once the writer has stopped (the socket failed): nothing to do.
            let _ = self.tx.unbounded_send(frame);
        }
    }

    /// Encodes and queues one frame.
    pub fn send(&self, request_id: u64, body: Body) {
        let frame = v1::ServerFrame {
            request_id,
            body: Some(body),
        };
        let mut buf = BytesMut::with_capacity(frame.encoded_len() + 5);
        if let Err(e) = encode_frame(&frame, self.max_frame, &mut buf) {
            tracing::error!(error = %e, "answer too large to send");
            buf.clear();
            let err = ChatError::Internal("answer too large".into());
            let frame = v1::ServerFrame {
                request_id,
                body: Some(Body::Error(err.to_proto())),
            };
            frame.encode_length_delimited(&mut buf).expect("vec grows");
        }
        self.send_bytes(buf.freeze());
    }

    /// Queues an error answer.
    pub fn error(&self, request_id: u64, err: &ChatError) {
        self.send(request_id, Body::Error(err.to_proto()));
    }
}

/// Why the session loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Keep going.
    No,
    /// Close after the writer has sent what is queued.
    Graceful,
    /// Close at once (the client does not read).
    Abort,
}

/// The session's state. The session is an actor in its own tokio task rather than a
/// ractor actor: a ractor actor costs about 13 KB (measured), and a node holds one
/// session per connection, which is the dominant per-connection memory.
pub struct SessionState {
    id: u64,
    peer: SocketAddr,
    ctx: Arc<NodeCtx>,
    out: Outbound,
    mailbox: Mailbox,
    hello: bool,
    login_pending: bool,
    /// Set by Logout: the connection gets a fresh login timeout for its next Login.
    new_login_window: bool,
    /// Request tokens left (a token bucket refilled at `max_requests_per_sec`).
    tokens: f64,
    /// When the bucket was last refilled.
    refilled: tokio::time::Instant,
    user: Option<(String, String)>,
    /// The next inbox seq to push: pushes go out in seq order, without gaps.
    next_seq: u64,
    /// The highest seq pushed to this session so far (maybe beyond a gap).
    pushed_up_to: u64,
    /// A fetch of the entries of a gap is on its way.
    catching_up: bool,
    /// Seqs beyond a gap not to push here (own copies of what this session sent).
    skips: Vec<u64>,
    /// When a typing notice was last passed on, per conversation (kind, name), and
    /// whether it said "stopped".
    typing: std::collections::HashMap<(i32, String), (tokio::time::Instant, bool)>,
    /// Uploads under way on this connection, by file id: their steps, in order.
    uploads: std::collections::HashMap<String, mpsc::Sender<crate::files::Step>>,
    /// Files this session's user was found to be allowed to read (a download of many
    /// chunks asks once).
    readable: Arc<std::sync::Mutex<std::collections::HashMap<String, chat_protocol::internal::BlobRecord>>>,
    /// Recipients that stored this session's last private message to them (see
    /// [`send_private`]).
    accepting: Accepting,
    ending: Ending,
}

/// Most uploads one connection runs at once.
const MAX_UPLOADS: usize = 4;
/// Most files a session remembers it may read.
const MAX_READABLE: usize = 64;

/// Runs one client connection until it closes: reads frames, handles them and the
/// mailbox, one at a time, and tears down in order (detach, log out, drain the writer).
pub async fn run<S>(stream: S, peer: SocketAddr, ctx: Arc<NodeCtx>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let cfg = &ctx.config.client;
    let (read, write) = tokio::io::split(stream);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let (mailbox, mut inbox_rx) = futures::channel::mpsc::unbounded();
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight));
    let mut frames = FramedRead::with_capacity(read, FrameCodec::new(cfg.max_frame_bytes), 256);
    let writer = tokio::spawn(write_loop(write, rx));
    let idle_timeout = ctx.config.idle_timeout();
    let login_deadline = tokio::time::sleep(ctx.config.login_timeout());
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(login_deadline, idle);
    ctx.sessions.fetch_add(1, Ordering::Relaxed);
    let mut state = SessionState {
        id: ctx.next_session_id.fetch_add(1, Ordering::Relaxed),
        peer,
        out: Outbound {
            tx,
            capacity: cfg.outbound_queue,
            session: mailbox.clone(),
            max_frame: cfg.max_frame_bytes,
        },
        mailbox,
        ctx: ctx.clone(),
        hello: false,
        login_pending: false,
        user: None,
        next_seq: 1,
        pushed_up_to: 0,
        catching_up: false,
        skips: Vec::new(),
        typing: std::collections::HashMap::new(),
        uploads: std::collections::HashMap::new(),
        readable: Arc::default(),
        accepting: Arc::default(),
        ending: Ending::No,
        new_login_window: false,
        tokens: f64::from(cfg.request_burst),
        refilled: tokio::time::Instant::now(),
    };
    // Pushes for this session's user reach it through this node's directory.
    ctx.remote
        .add_session(state.id, Arc::new(state.mailbox.clone()), peer.to_string());
    tracing::debug!(session = state.id, peer = %peer, "session opened");
    // A frame is read only with a permit in hand, so at most max_in_flight requests
    // are being served; further frames wait in the socket.
    let mut permit: Option<Permit> = None;
    while state.ending == Ending::No {
        if std::mem::take(&mut state.new_login_window) {
            login_deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + ctx.config.login_timeout());
        }
        tokio::select! {
            biased;
            Some(msg) = inbox_rx.next() => state.handle(msg),
            _ = ctx.shutdown.cancelled() => state.close(ErrorCode::Unavailable, "node shutting down"),
            _ = &mut login_deadline, if state.user.is_none() && !state.login_pending => {
                state.close(ErrorCode::NotAuthenticated, "login timeout");
            }
            _ = &mut idle => state.close(ErrorCode::Unavailable, "idle timeout"),
            p = permits.clone().acquire_owned(), if permit.is_none() => permit = p.ok(),
            next = frames.next(), if permit.is_some() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                match next {
                    Some(Ok(bytes)) => {
                        let permit = permit.take().expect("guarded by the branch condition");
                        match ClientFrame::decode(bytes) {
                            Ok(frame) => state.request(frame, permit),
                            Err(e) => state.out.error(0, &ChatError::BadRequest(format!("malformed frame: {e}"))),
                        }
                    }
                    Some(Err(e)) => {
                        let code = match e {
                            CodecError::FrameTooLarge { .. } => Some(ErrorCode::FrameTooLarge),
                            CodecError::BadLength => Some(ErrorCode::BadRequest),
                            _ => None,
                        };
                        match code {
                            Some(code) => state.close(code, &e.to_string()),
                            None => state.ending = Ending::Graceful,
                        }
                    }
                    None => state.ending = Ending::Graceful,
                }
            }
        }
    }
    if state.ending == Ending::Abort {
        tracing::info!(session = state.id, peer = %state.peer, "slow reader disconnected");
        writer.abort();
    }
    state.logout();
    ctx.remote.remove_session(state.id);
    ctx.sessions.fetch_sub(1, Ordering::Relaxed);
    tracing::debug!(session = state.id, peer = %state.peer, "session closed");
    // Dropping the state drops the outbound sender: the writer sends what is queued
    // (and answers still in flight), then closes the socket.
}

impl SessionState {
    fn handle(&mut self, msg: SessionMsg) {
        match msg {
            SessionMsg::Overflow => self.ending = Ending::Abort,
            SessionMsg::Deliver {
                user,
                seq,
                frame,
                since,
            } => {
                if !user.is_empty() && self.user.as_ref().is_some_and(|(me, _)| **me != *user) {
                    // For a user logged out of this connection since (empty: a peer of an
                    // older version did not say whose).
                } else if self.user.is_none() {
                    // Attached, but the login has not finished reading the cursors: if
                    // this is past them, the login catches up once done.
                    if self.login_pending {
                        self.pushed_up_to = self.pushed_up_to.max(seq);
                    }
                } else if seq < self.next_seq {
                    // Seen already (a resend's push, or delivered by a catch-up).
                } else if seq == self.next_seq {
                    self.next_seq = seq + 1;
                    // Empty: an own copy of what this session sent, not pushed back to it.
                    if !frame.is_empty() {
                        self.ctx.metrics.delivered(since.elapsed());
                        self.out.send_bytes(frame);
                    }
                } else {
                    // Entries before it were not pushed here (pushes of one inbox come
                    // from whichever node stored each entry, so they may overtake each
                    // other, and a push can be lost): fetch the gap, then go on in order.
                    self.pushed_up_to = self.pushed_up_to.max(seq);
                    if frame.is_empty() && self.skips.len() < MAX_SKIPS {
                        // An own copy of what this session sent: the catch-up passes it.
                        self.skips.push(seq);
                    }
                    if !self.catching_up {
                        self.catch_up();
                    }
                }
            }
            SessionMsg::CaughtUp { user, page } => {
                // For the user logged in when it was asked, not one logged in since.
                if self.user.as_ref().map(|(u, _)| u) != Some(&user) {
                    return;
                }
                self.catching_up = false;
                // The fetch failed: the next push past a gap tries again.
                let Some((entries, last_seq)) = page else { return };
                let before = self.next_seq;
                let since = tokio::time::Instant::now();
                for (seq, frame) in entries {
                    if seq >= self.next_seq {
                        self.next_seq = seq + 1;
                        if !self.skips.contains(&seq) {
                            self.ctx.metrics.delivered(since.elapsed());
                            self.out.send_bytes(frame);
                        }
                    }
                }
                let next = self.next_seq;
                self.skips.retain(|s| *s >= next);
                // Nothing beyond the inbox's newest entry is owed (a stale hint).
                self.pushed_up_to = self.pushed_up_to.min(last_seq);
                // A push that arrived meanwhile may be beyond what the fetch saw.
                if self.next_seq > before && self.pushed_up_to >= self.next_seq {
                    self.catch_up();
                }
            }
            SessionMsg::Push(frame) => {
                if self.user.is_some() {
                    self.out.send_bytes(frame);
                }
            }
            SessionMsg::LogOut { user, closing } => {
                if self.user.as_ref().is_some_and(|(me, _)| **me == *user) {
                    self.logout();
                    self.new_login_window = true;
                    if let Some(reason) = closing {
                        self.close(ErrorCode::NotAuthenticated, &reason);
                    }
                }
            }
            SessionMsg::CatchUp { last_seq } => {
                if self.user.is_none() || last_seq < self.next_seq {
                    return;
                }
                self.pushed_up_to = self.pushed_up_to.max(last_seq);
                if !self.catching_up {
                    self.catch_up();
                }
            }
            SessionMsg::LoggedIn(done) => {
                let LoggedIn {
                    request_id,
                    user,
                    token,
                    nodes,
                    meta,
                } = *done;
                self.login_pending = false;
                match meta {
                    Ok(meta) => {
                        self.next_seq = meta.last_seq + 1;
                        self.catching_up = false;
                        let _ = self.ctx.registry.cast(RegistryMsg::Online(user.clone()));
                        tracing::debug!(session = self.id, user = %user, "logged in");
                        self.ctx.metrics.login();
                        self.ctx.remote.set_session_user(self.id, Some(user.clone()));
                        let device = chat_state::devices::id_of(&token.0);
                        self.ctx.remote.set_session_device(self.id, device);
                        self.user = Some((user, token.0.clone()));
                        self.out.send(
                            request_id,
                            Body::LoginOk(v1::LoginOk {
                                token: token.0,
                                token_expires_at_ms: token.1,
                                delivered_seq: meta.delivered_seq,
                                last_seq: meta.last_seq,
                                nodes,
                                max_text_bytes: u32::try_from(self.ctx.config.client.max_text_bytes)
                                    .unwrap_or(u32::MAX),
                                max_file_bytes: self.ctx.config.files.max_file_bytes,
                            }),
                        );
                        // Pushed while the login read the cursors, past them.
                        if self.pushed_up_to >= self.next_seq {
                            self.catch_up();
                        }
                    }
                    Err(e) => {
                        // Attached before the cursors could be read: no pushes here.
                        self.ctx.remote.set_session_user(self.id, None);
                        self.pushed_up_to = 0;
                        self.out.error(request_id, &e);
                    }
                }
            }
            SessionMsg::LoginFailed { request_id, error } => {
                self.login_pending = false;
                self.out.error(request_id, &error);
            }
        }
    }

    /// Says why, then ends the session; the writer sends what is queued and closes the socket.
    fn close(&mut self, code: ErrorCode, reason: &str) {
        self.out.send(
            0,
            Body::Closing(v1::Closing {
                code: code as i32,
                reason: reason.to_owned(),
            }),
        );
        if self.ending == Ending::No {
            self.ending = Ending::Graceful;
        }
    }

    fn logout(&mut self) {
        self.pushed_up_to = 0;
        self.catching_up = false;
        self.skips.clear();
        if let Some((user, _)) = self.user.take() {
            self.ctx.remote.set_session_user(self.id, None);
            self.ctx
                .router
                .to_inbox(&user, InboxMsg::Detach { session: self.id });
            let _ = self.ctx.registry.cast(RegistryMsg::Offline(user));
        }
    }

    /// A reply that answers `request_id` with `ok(value)` or the error, then releases the permit.
    fn respond<T: Send + 'static>(
        &self,
        request_id: u64,
        permit: Permit,
        ok: impl FnOnce(T) -> Body + Send + 'static,
    ) -> Reply<ChatResult<T>> {
        let out = self.out.clone();
        reply(move |r: ChatResult<T>| {
            let body = match r {
                Ok(v) => ok(v),
                Err(e) => Body::Error(e.to_proto()),
            };
            out.send(request_id, body);
            drop(permit);
        })
    }

    /// The answer to a send: a SendAck, counted with its latency.
    fn send_reply(&self, id: u64, permit: Permit, client_msg_id: String) -> Reply<ChatResult<Appended>> {
        let ctx = self.ctx.clone();
        let started = std::time::Instant::now();
        self.respond(id, permit, move |a: Appended| {
            ctx.metrics.sent(started.elapsed());
            send_ack(client_msg_id, a)
        })
    }

    fn request(&mut self, frame: ClientFrame, permit: Permit) {
        let id = frame.request_id;
        let Some(body) = frame.body else {
            return self
                .out
                .error(id, &ChatError::BadRequest("empty or unknown request type".into()));
        };
        if id == 0 {
            return self
                .out
                .error(0, &ChatError::BadRequest("request_id must not be 0".into()));
        }
        // Ping is exempt, so a busy client's keep-alive never fails; so are the chunks of
        // files, which the connection's bandwidth and its requests in flight bound.
        let exempt = matches!(
            body,
            client_frame::Body::Ping(_)
                | client_frame::Body::UploadChunk(_)
                | client_frame::Body::Download(_)
        );
        if !exempt && !self.take_token() {
            let limit = self.ctx.config.client.max_requests_per_sec;
            return self.out.error(id, &ChatError::RateLimited(limit));
        }
        if let Err(e) = self.dispatch(id, body, permit) {
            self.out.error(id, &e);
        }
    }

    /// Takes one request token, refilling the bucket for the time since the last one.
    fn take_token(&mut self) -> bool {
        let cfg = &self.ctx.config.client;
        if cfg.max_requests_per_sec == 0 {
            return true;
        }
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.refilled).as_secs_f64() * f64::from(cfg.max_requests_per_sec);
        self.tokens = (self.tokens + refill).min(f64::from(cfg.request_burst));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn dispatch(&mut self, id: u64, body: client_frame::Body, permit: Permit) -> ChatResult<()> {
        use client_frame::Body as B;
        let cfg = &self.ctx.config;
        match body {
            B::Hello(hello) => {
                if self.hello {
                    return Err(ChatError::Unexpected("Hello was already sent".into()));
                }
                if hello.protocol_version != chat_protocol::PROTOCOL_VERSION {
                    let msg = format!(
                        "protocol version {} is not supported; this node speaks {}",
                        hello.protocol_version,
                        chat_protocol::PROTOCOL_VERSION
                    );
                    self.out.send(
                        id,
                        Body::Error(v1::Error {
                            code: ErrorCode::UnsupportedVersion as i32,
                            message: msg.clone(),
                            retry_after_ms: 0,
                        }),
                    );
                    self.close(ErrorCode::UnsupportedVersion, &msg);
                    return Ok(());
                }
                self.hello = true;
                self.out.send(
                    id,
                    Body::HelloOk(v1::HelloOk {
                        protocol_version: chat_protocol::PROTOCOL_VERSION,
                        node: self.ctx.node_name.clone(),
                        max_frame_bytes: cfg.client.max_frame_bytes as u32,
                        idle_timeout_ms: cfg.client.idle_timeout_ms as u32,
                    }),
                );
            }
            B::Ping(p) => self.out.send(
                id,
                Body::Pong(v1::Pong {
                    nonce: p.nonce,
                    server_time_ms: storage::now_ms(),
                }),
            ),
            _ if !self.hello => return Err(ChatError::Unexpected("send Hello first".into())),
            B::Register(r) => self.register(id, r, permit)?,
            B::Login(l) => self.login(id, l, permit)?,
            _ if self.user.is_none() => return Err(ChatError::NotAuthenticated),
            B::Logout(l) => {
                if let Some((user, token)) = &self.user
                    && l.revoke_token
                {
                    let (router, user, token) = (self.ctx.router.clone(), user.clone(), token.clone());
                    tokio::spawn(async move {
                        let revoke = |reply| AccountMsg::RevokeToken { token, reply };
                        if let Err(e) = router.account(&user, revoke).await {
                            tracing::warn!(user = %user, error = %e, "token not revoked");
                        }
                    });
                }
                self.logout();
                self.new_login_window = true;
                self.out.send(id, Body::LogoutOk(v1::LogoutOk {}));
            }
            B::ChangePassword(c) => self.change_password(id, c, permit)?,
            B::LogoutEverywhere(_) => self.logout_everywhere(id, permit)?,
            B::SendPrivate(m) => {
                let me = self.me().to_owned();
                check_name(&m.to)?;
                check_msg(&m.client_msg_id, &m.text, cfg.client.max_text_bytes)?;
                crate::changes::check_reply_to(&m.reply_to)?;
                let ack = self.send_reply(id, permit, m.client_msg_id.clone());
                let (ctx, session) = (self.ctx.clone(), (self.id, self.accepting.clone()));
                if m.attachments.is_empty() {
                    send_private(&ctx, session, me, m, Vec::new(), ack);
                } else {
                    // The recipient (and the sender's other devices) may read the files
                    // before the message can reach them.
                    tokio::spawn(async move {
                        let readers = vec![m.to.clone(), me.clone()];
                        let asked = m.attachments.clone();
                        match ctx.files.attach(&me, asked, readers, Vec::new()).await {
                            Ok(files) => send_private(&ctx, session, me, m, files, ack),
                            Err(e) => ack(Err(e)),
                        }
                    });
                }
            }
            B::SendGroup(m) => {
                check_name(&m.group)?;
                check_msg(&m.client_msg_id, &m.text, cfg.client.max_text_bytes)?;
                crate::changes::check_reply_to(&m.reply_to)?;
                let reply = self.send_reply(id, permit, m.client_msg_id.clone());
                let from = self.me().to_owned();
                let ctx = self.ctx.clone();
                let group = m.group.clone();
                let asked = m.attachments.clone();
                let post = move |attachments: Vec<v1::Attachment>, reply: Reply<ChatResult<Appended>>| {
                    ctx.router.to_group(
                        &m.group,
                        GroupMsg::Post {
                            from,
                            client_msg_id: m.client_msg_id,
                            text: m.text,
                            reply_to: m.reply_to,
                            attachments,
                            reply,
                        },
                    );
                };
                if asked.is_empty() {
                    post(Vec::new(), reply);
                } else {
                    // The group's members may read the files before the post reaches them
                    // (the post itself checks that the sender is a member).
                    let (ctx, me) = (self.ctx.clone(), self.me().to_owned());
                    tokio::spawn(async move {
                        match ctx.files.attach(&me, asked, vec![me.clone()], vec![group]).await {
                            Ok(files) => post(files, reply),
                            Err(e) => reply(Err(e)),
                        }
                    });
                }
            }
            B::UploadBegin(b) => self.upload_begin(id, b, permit)?,
            B::UploadChunk(c) => {
                let blob_id = c.blob_id.clone();
                let reply = self.respond(id, permit, move |received| {
                    Body::UploadProgress(v1::UploadProgress { blob_id, received })
                });
                self.upload_step(
                    &c.blob_id,
                    |reply| crate::files::Step::Chunk {
                        offset: c.offset,
                        data: c.data,
                        reply,
                    },
                    reply,
                )?;
            }
            B::UploadFinish(f) => {
                let reply = self.respond(id, permit, |attachment| {
                    Body::UploadDone(v1::UploadDone {
                        attachment: Some(attachment),
                    })
                });
                self.upload_step(&f.blob_id, |reply| crate::files::Step::Finish { reply }, reply)?;
                self.uploads.remove(&f.blob_id);
            }
            B::Download(d) => self.download(id, d, permit)?,
            B::ChangeMessage(m) => {
                let mut change = m.change.unwrap_or_default();
                check_msg(&m.client_msg_id, "", cfg.client.max_text_bytes)?;
                let home = crate::changes::check(&change, cfg.client.max_text_bytes)?;
                change.by = self.me().to_owned();
                let reply = self.send_reply(id, permit, m.client_msg_id.clone());
                match home {
                    crate::changes::Home::Inbox(user) => self.ctx.router.to_inbox(
                        &user,
                        InboxMsg::Change {
                            client_msg_id: m.client_msg_id,
                            change,
                            edit_window_ms: cfg.client.edit_window_ms,
                            session: self.id,
                            reply,
                        },
                    ),
                    crate::changes::Home::Group(group, _) => self.ctx.router.to_group(
                        &group,
                        GroupMsg::Change {
                            client_msg_id: m.client_msg_id,
                            change,
                            edit_window_ms: cfg.client.edit_window_ms,
                            reply,
                        },
                    ),
                }
            }
            B::AckDelivered(a) => self.ack(id, AckKind::Delivered, a.up_to_seq, permit),
            B::AckRead(a) => self.ack(id, AckKind::Read, a.up_to_seq, permit),
            B::Sync(s) => {
                let limit = page_limit(s.limit, MAX_PAGE);
                let max_frame = cfg.client.max_frame_bytes;
                let reply = self.respond(id, permit, move |p: Page| sync_page(p, max_frame));
                let me = self.me().to_owned();
                self.ctx.router.to_inbox(
                    &me,
                    InboxMsg::Fetch {
                        after: s.after_seq,
                        limit,
                        reply,
                    },
                );
            }
            B::History(h) => {
                check_name(&h.conversation)?;
                let limit = page_limit(h.limit, MAX_PAGE);
                let max_frame = cfg.client.max_frame_bytes;
                let reply = self.respond(id, permit, move |(msgs, next)| {
                    history_page(msgs, next, max_frame)
                });
                let me = self.me().to_owned();
                match ConversationKind::try_from(h.kind) {
                    Ok(ConversationKind::Private) => {
                        // An empty first page: say whether the peer exists at all.
                        let (router, peer) = (self.ctx.router.clone(), h.conversation.clone());
                        let first = h.before_seq == 0;
                        let reply = super::reply(move |r: ChatResult<(Vec<v1::Delivery>, u64)>| match r {
                            Ok((msgs, next)) if first && msgs.is_empty() => {
                                router.route(crate::request::Target::Account(
                                    peer.clone(),
                                    AccountMsg::Get {
                                        reply: super::reply(move |a: ChatResult<Option<AccountRecord>>| {
                                            reply(match a {
                                                Ok(None) => {
                                                    Err(ChatError::NotFound(format!("user {peer} not found")))
                                                }
                                                _ => Ok((msgs, next)),
                                            })
                                        }),
                                    },
                                ));
                            }
                            other => reply(other),
                        });
                        self.ctx.router.to_inbox(
                            &me,
                            InboxMsg::History {
                                peer: h.conversation,
                                before: h.before_seq,
                                limit,
                                reply,
                            },
                        )
                    }
                    Ok(ConversationKind::Group) => self.ctx.router.to_group(
                        &h.conversation,
                        GroupMsg::History {
                            user: me,
                            before: h.before_seq,
                            limit,
                            reply,
                        },
                    ),
                    _ => reply(Err(ChatError::BadRequest(
                        "history kind must be PRIVATE or GROUP".into(),
                    ))),
                }
            }
            B::CreateGroup(g) => {
                check_text("title", &g.title, MAX_TITLE)?;
                let (private, title) = (g.private, g.title);
                self.group_op(id, permit, g.group, move |user, reply| GroupMsg::Create {
                    user,
                    private,
                    title,
                    reply,
                })?
            }
            B::GroupInvite(g) => self.group_admin(id, permit, g.group, Action::Invite, g.user, |_| {})?,
            B::GroupRemove(g) => self.group_admin(id, permit, g.group, Action::Remove, g.user, |_| {})?,
            B::GroupBan(g) => self.group_admin(id, permit, g.group, Action::Ban, g.user, |_| {})?,
            B::GroupUnban(g) => self.group_admin(id, permit, g.group, Action::Unban, g.user, |_| {})?,
            B::GroupTransfer(g) => self.group_admin(id, permit, g.group, Action::Transfer, g.user, |_| {})?,
            B::GroupSetRole(g) => {
                let role = v1::GroupRole::try_from(g.role)
                    .map_err(|_| ChatError::BadRequest(format!("no group role {}", g.role)))?;
                self.group_admin(id, permit, g.group, Action::SetRole, g.user, |a| a.role = role)?
            }
            B::GroupSetInfo(g) => {
                check_text("title", g.title.as_deref().unwrap_or(""), MAX_TITLE)?;
                check_text("topic", g.topic.as_deref().unwrap_or(""), MAX_TOPIC)?;
                let me = self.me().to_owned();
                self.group_admin(id, permit, g.group, Action::SetInfo, me, |a| {
                    a.target.clear();
                    a.title = g.title;
                    a.topic = g.topic;
                    a.history_for_new_members = g.history_for_new_members;
                })?
            }
            B::GroupDelete(g) => {
                let me = self.me().to_owned();
                self.group_admin(id, permit, g.group, Action::Delete, me, |a| a.target.clear())?
            }
            B::GroupInfo(g) => {
                check_name(&g.group)?;
                let reply = self.respond(id, permit, Body::GroupInfo);
                let user = self.me().to_owned();
                self.ctx.router.to_group(&g.group, GroupMsg::Info { user, reply });
            }
            B::JoinGroup(g) => {
                self.group_op(id, permit, g.group, |user, reply| GroupMsg::Join { user, reply })?
            }
            B::LeaveGroup(g) => {
                self.group_op(id, permit, g.group, |user, reply| GroupMsg::Leave { user, reply })?
            }
            B::ListMembers(g) => {
                check_name(&g.group)?;
                let (group, me) = (g.group.clone(), self.me().to_owned());
                let reply = self.respond(id, permit, Body::MemberList);
                let reply = super::reply(move |r: ChatResult<v1::GroupInfo>| {
                    reply(r.and_then(|info| {
                        // Members only, public group or not.
                        if !info.members.iter().any(|m| m.user == me) {
                            return Err(ChatError::NotAMember(group));
                        }
                        Ok(v1::MemberList {
                            group,
                            members: info.members.iter().map(|m| m.user.clone()).collect(),
                            roles: info.members,
                        })
                    }))
                });
                let user = self.me().to_owned();
                self.ctx.router.to_group(&g.group, GroupMsg::Info { user, reply });
            }
            B::GroupReceipts(g) => {
                check_name(&g.group)?;
                let (group, group_seq) = (g.group.clone(), g.group_seq);
                let reply = self.respond(id, permit, move |members| {
                    Body::GroupReceipts(v1::GroupReceipts {
                        group,
                        group_seq,
                        members,
                    })
                });
                let user = self.me().to_owned();
                self.ctx.router.to_group(
                    &g.group,
                    GroupMsg::Receipts {
                        user,
                        group_seq,
                        reply,
                    },
                );
            }
            B::ContactRequest(c) => self.contact_act(id, permit, c.user, ContactAction::Request)?,
            B::ContactAccept(c) => self.contact_act(id, permit, c.user, ContactAction::Accept)?,
            B::ContactDecline(c) => self.contact_act(id, permit, c.user, ContactAction::Decline)?,
            B::ContactRemove(c) => self.contact_act(id, permit, c.user, ContactAction::Remove)?,
            B::ListContacts(_) => {
                let reply = self.respond(id, permit, |contacts| {
                    Body::ContactList(v1::ContactList { contacts })
                });
                self.to_contacts(ContactMsg::List {
                    presence: true,
                    reply,
                });
            }
            B::Block(b) => self.block(id, permit, b.user, true)?,
            B::Unblock(b) => self.block(id, permit, b.user, false)?,
            B::ListBlocks(_) => {
                let reply = self.respond(id, permit, |users| Body::BlockList(v1::BlockList { users }));
                self.to_contacts(ContactMsg::Blocks { reply });
            }
            B::SetPrivacy(s) => {
                let reply = self.respond(id, permit, Body::Privacy);
                self.to_contacts(ContactMsg::Privacy {
                    contacts_only: s.contacts_only,
                    hide_last_seen: s.hide_last_seen,
                    reply,
                });
            }
            B::Typing(t) => {
                drop(permit);
                self.typing(t)?;
            }
            B::ListMyGroups(_) => {
                let reply = self.respond(id, permit, |groups| Body::GroupList(v1::GroupList { groups }));
                let me = self.me().to_owned();
                self.ctx.router.to_inbox(&me, InboxMsg::Groups { reply });
            }
            B::ListDevices(_) => {
                let reply = self.respond(id, permit, Body::DeviceList);
                let current = chat_state::devices::id_of(&self.user.as_ref().expect("checked above").1);
                crate::devices::list_devices(&self.ctx, self.me(), current, reply);
            }
            B::LogoutDevice(l) => {
                let reply = self.respond(id, permit, |id| Body::LogoutDeviceOk(v1::LogoutDeviceOk { id }));
                crate::devices::logout_device(&self.ctx, self.me(), &l.id, reply)?;
            }
            B::ListSessions(_) => {
                let reply = self.respond(id, permit, |sessions| {
                    Body::SessionList(v1::SessionList { sessions })
                });
                crate::devices::list_sessions(&self.ctx, self.me(), self.id, reply);
            }
            B::ListOnline(l) => {
                let limit = page_limit(l.limit, MAX_ONLINE_PAGE);
                let reply = self.respond(id, permit, |(users, has_more)| {
                    Body::OnlineList(v1::OnlineList { users, has_more })
                });
                let reply = super::reply(move |page| reply(Ok(page)));
                self.ctx
                    .registry
                    .cast(RegistryMsg::ListOnline {
                        after: l.after,
                        limit,
                        local_only: false,
                        reply,
                    })
                    .map_err(|_| ChatError::Unavailable("node is shutting down".into()))?;
            }
        }
        Ok(())
    }

    fn me(&self) -> &str {
        &self.user.as_ref().expect("checked by dispatch").0
    }

    /// Starts an upload: its steps (chunks, finish) queue in order for one task.
    fn upload_begin(&mut self, id: u64, b: v1::UploadBegin, permit: Permit) -> ChatResult<()> {
        self.uploads.retain(|_, steps| !steps.is_closed());
        if self.uploads.len() >= MAX_UPLOADS && !self.uploads.contains_key(&b.sha256) {
            return Err(ChatError::BadRequest(format!(
                "at most {MAX_UPLOADS} uploads at once per connection"
            )));
        }
        let cfg = &self.ctx.config.client;
        // A chunk fits a frame with room for its header.
        let chunk_bytes =
            u32::try_from(cfg.max_frame_bytes.saturating_sub(512).max(1024)).unwrap_or(u32::MAX);
        // Each chunk in flight holds one of the connection's permits: never full.
        let (tx, rx) = mpsc::channel(cfg.max_in_flight + 2);
        self.uploads.insert(b.sha256.clone(), tx);
        let ready = self.respond(id, permit, Body::UploadReady);
        let (files, user) = (self.ctx.files.clone(), self.me().to_owned());
        tokio::spawn(crate::files::run_upload(files, user, b, chunk_bytes, rx, ready));
        Ok(())
    }

    /// Hands a step to the upload of file `blob_id`.
    fn upload_step<T>(
        &mut self,
        blob_id: &str,
        step: impl FnOnce(Box<dyn FnOnce(ChatResult<T>) + Send>) -> crate::files::Step,
        reply: Reply<ChatResult<T>>,
    ) -> ChatResult<()> {
        let Some(steps) = self.uploads.get(blob_id) else {
            reply(Err(no_upload(blob_id)));
            return Ok(());
        };
        if let Err(e) = steps.try_send(step(reply)) {
            self.uploads.remove(blob_id);
            let step = match e {
                mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
            };
            let e = no_upload(blob_id);
            match step {
                crate::files::Step::Chunk { reply, .. } => reply(Err(e)),
                crate::files::Step::Finish { reply } => reply(Err(e)),
            }
        }
        Ok(())
    }

    /// Answers a download of part of a file the user may read.
    fn download(&self, id: u64, d: v1::DownloadRequest, permit: Permit) -> ChatResult<()> {
        let cap = self
            .ctx
            .config
            .client
            .max_frame_bytes
            .saturating_sub(512)
            .max(1024) as u32;
        let length = if d.length == 0 { cap } else { d.length.min(cap) };
        let reply = self.respond(id, permit, Body::BlobChunk);
        let (ctx, user, readable) = (self.ctx.clone(), self.me().to_owned(), self.readable.clone());
        tokio::spawn(async move {
            let result = async {
                let known = readable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&d.blob_id)
                    .cloned();
                let record = match known {
                    Some(record) => record,
                    None => {
                        let mut record = ctx.files.may_read(&user, &d.blob_id).await?;
                        // What a later chunk needs: size, type and where it is.
                        record.users.clear();
                        record.groups.clear();
                        record.thumbnail.clear();
                        let mut known = readable.lock().unwrap_or_else(|e| e.into_inner());
                        if known.len() >= MAX_READABLE {
                            known.clear();
                        }
                        known.insert(d.blob_id.clone(), record.clone());
                        record
                    }
                };
                let data = ctx
                    .files
                    .read_range(&d.blob_id, &record, d.offset, length)
                    .await?;
                Ok(v1::BlobChunk {
                    blob_id: d.blob_id.clone(),
                    offset: d.offset,
                    data,
                    size: record.size,
                    mime: record.mime,
                })
            }
            .await;
            reply(result);
        });
        Ok(())
    }

    /// Pushes, in order, the entries after the last one pushed here (one page), then
    /// says `CaughtUp`.
    fn catch_up(&mut self) {
        self.catching_up = true;
        let mailbox = self.mailbox.clone();
        let user = self.me().to_owned();
        let fetch = InboxMsg::Fetch {
            after: self.next_seq - 1,
            limit: MAX_PAGE,
            reply: reply(move |page: ChatResult<Page>| {
                let page = page.ok().map(|page| {
                    let entries = page
                        .messages
                        .into_iter()
                        .map(|mut d| {
                            let seq = d.seq;
                            let body = match d.receipt.take() {
                                Some(r) => Body::Receipt(r),
                                None => Body::Delivery(d),
                            };
                            (seq, inbox::encode_push(body))
                        })
                        .collect();
                    (entries, page.last_seq)
                });
                let _ = mailbox.unbounded_send(SessionMsg::CaughtUp { user, page });
            }),
        };
        let me = self.me().to_owned();
        self.ctx.router.to_inbox(&me, fetch);
    }

    fn ack(&self, id: u64, kind: AckKind, up_to: u64, permit: Permit) {
        let reply = self.respond(id, permit, |(delivered_seq, read_seq)| {
            Body::AckOk(v1::AckOk {
                delivered_seq,
                read_seq,
            })
        });
        self.ctx
            .router
            .to_inbox(self.me(), InboxMsg::Ack { kind, up_to, reply });
    }

    /// Passes a typing notice on, at most one per conversation every
    /// [`TYPING_EVERY`] (a "stopped" one too, so a client cannot flood with them);
    /// never answered.
    fn typing(&mut self, t: v1::Typing) -> ChatResult<()> {
        check_name(&t.conversation)?;
        let kind = ConversationKind::try_from(t.kind)
            .ok()
            .filter(|k| *k != ConversationKind::Unspecified)
            .ok_or_else(|| ChatError::BadRequest("typing: kind must be PRIVATE or GROUP".into()))?;
        let now = tokio::time::Instant::now();
        if self.typing.len() > 64 {
            self.typing
                .retain(|_, (at, _)| now.duration_since(*at) < crate::presence::TYPING_EVERY);
        }
        let key = (t.kind, t.conversation.clone());
        let last = self
            .typing
            .get(&key)
            .map(|(at, stopped)| (now.duration_since(*at), *stopped));
        if !crate::presence::typing_passes(last, t.stopped) {
            return Ok(());
        }
        self.typing.insert(key, (now, t.stopped));
        let (presence, from) = (self.ctx.presence.clone(), self.me().to_owned());
        tokio::spawn(async move {
            if let Err(e) = presence.typing(from, kind, t.conversation, t.stopped).await {
                tracing::debug!(error = %e, "typing notice not passed on");
            }
        });
        Ok(())
    }

    fn to_contacts(&self, msg: ContactMsg) {
        let me = self.me().to_owned();
        self.ctx.router.route(Target::Contacts(me, msg));
    }

    fn contact_act(&self, id: u64, permit: Permit, user: String, action: ContactAction) -> ChatResult<()> {
        check_name(&user)?;
        if user == self.me() {
            return Err(ChatError::BadRequest("a contact is someone else".into()));
        }
        let name = user.clone();
        let reply = self.respond(id, permit, move |state: v1::ContactState| {
            Body::ContactOk(v1::ContactOk {
                user: name,
                state: state as i32,
            })
        });
        self.to_contacts(ContactMsg::Act {
            other: user,
            action,
            reply,
        });
        Ok(())
    }

    fn block(&self, id: u64, permit: Permit, user: String, blocked: bool) -> ChatResult<()> {
        check_name(&user)?;
        if user == self.me() {
            return Err(ChatError::BadRequest("you cannot block yourself".into()));
        }
        let name = user.clone();
        let reply = self.respond(id, permit, move |()| {
            Body::BlockOk(v1::BlockOk { user: name, blocked })
        });
        self.to_contacts(ContactMsg::Block {
            other: user,
            blocked,
            reply,
        });
        Ok(())
    }

    /// An admin action of this user on a group, answered GroupOk once done.
    fn group_admin(
        &self,
        id: u64,
        permit: Permit,
        group: String,
        action: Action,
        target: String,
        set: impl FnOnce(&mut GroupAction),
    ) -> ChatResult<()> {
        check_name(&group)?;
        if !target.is_empty() {
            check_name(&target)?;
        }
        let mut a = GroupAction::on(self.me(), action, &target);
        set(&mut a);
        let name = group.clone();
        let reply = self.respond(id, permit, move |()| Body::GroupOk(v1::GroupOk { group: name }));
        self.ctx
            .router
            .to_group(&group, GroupMsg::Admin { action: a, reply });
        Ok(())
    }

    fn group_op(
        &self,
        id: u64,
        permit: Permit,
        group: String,
        make: impl FnOnce(String, Reply<ChatResult<()>>) -> GroupMsg,
    ) -> ChatResult<()> {
        check_name(&group)?;
        let name = group.clone();
        let reply = self.respond(id, permit, move |()| Body::GroupOk(v1::GroupOk { group: name }));
        self.ctx
            .router
            .to_group(&group, make(self.me().to_owned(), reply));
        Ok(())
    }

    /// Changes the password: the old one checked (a wrong one counts as a failed login),
    /// the new one hashed, then every other token revoked and the user's other
    /// sessions closed.
    fn change_password(&self, id: u64, c: v1::ChangePasswordRequest, permit: Permit) -> ChatResult<()> {
        auth::check_password(&c.new_password)?;
        let (user, token) = self.user.clone().ok_or(ChatError::NotAuthenticated)?;
        let user = user.to_string();
        let addr = self.peer.ip();
        self.ctx.may_log_in(&user, addr)?;
        let (ctx, session) = (self.ctx.clone(), self.id);
        let reply = self.respond(id, permit, |()| Body::ChangePasswordOk(v1::ChangePasswordOk {}));
        tokio::spawn(async move {
            let result = async {
                let checked = check_password_of(&ctx, &user, c.old_password).await;
                ctx.login_outcome(&user, addr, &checked);
                checked?;
                let password_hash = ctx.hash_password(c.new_password).await?;
                let revoke = |reply| AccountMsg::RevokeTokens {
                    keep: token,
                    password_hash,
                    skip_session: session,
                    reason: "the password was changed: log in again".into(),
                    reply,
                };
                ctx.router.account(&user, revoke).await
            };
            reply(result.await);
        });
        Ok(())
    }

    /// Revokes every token of the user, closes the user's other sessions, answers
    /// LogoutOk, and logs this session out.
    fn logout_everywhere(&self, id: u64, permit: Permit) -> ChatResult<()> {
        let (user, _) = self.user.clone().ok_or(ChatError::NotAuthenticated)?;
        let (router, session, me) = (self.ctx.router.clone(), self.id, self.mailbox.clone());
        let reply = self.respond(id, permit, |()| Body::LogoutOk(v1::LogoutOk {}));
        tokio::spawn(async move {
            let revoke = |reply| AccountMsg::RevokeTokens {
                keep: String::new(),
                password_hash: String::new(),
                skip_session: session,
                reason: "logged out everywhere: log in again".into(),
                reply,
            };
            let result = router.account(&user, revoke).await;
            if result.is_ok() {
                let _ = me.unbounded_send(SessionMsg::LogOut {
                    user: user.as_str().into(),
                    closing: None,
                });
            }
            reply(result);
        });
        Ok(())
    }

    fn register(&self, id: u64, r: v1::RegisterRequest, permit: Permit) -> ChatResult<()> {
        check_name(&r.username)?;
        auth::check_password(&r.password)?;
        // Before any hashing: a flood of sign-ups costs the node nothing.
        self.ctx.may_register(self.peer.ip())?;
        let ctx = self.ctx.clone();
        let reply = self.respond(id, permit, |()| Body::RegisterOk(v1::RegisterOk {}));
        tokio::spawn(async move {
            let result = async {
                let hash = ctx.hash_password(r.password).await?;
                let record = AccountRecord {
                    password_hash: hash,
                    created_at_ms: storage::now_ms(),
                    ..AccountRecord::default()
                };
                let create = |reply| AccountMsg::Create { record, reply };
                if ctx.router.account(&r.username, create).await? {
                    tracing::info!(user = %r.username, "registered");
                    Ok(())
                } else {
                    Err(ChatError::UsernameTaken(r.username))
                }
            };
            reply(result.await);
        });
        Ok(())
    }

    fn login(&mut self, id: u64, l: v1::LoginRequest, permit: Permit) -> ChatResult<()> {
        if self.user.is_some() {
            return Err(ChatError::Unexpected("already logged in; log out first".into()));
        }
        if self.login_pending {
            return Err(ChatError::Unexpected("a login is already in progress".into()));
        }
        check_name(&l.username)?;
        crate::devices::check_device_name(&l.device)?;
        let credential = l
            .credential
            .ok_or_else(|| ChatError::BadRequest("login needs a password or a token".into()))?;
        // Before any hashing: guesses held back cost the node nothing.
        let addr = self.peer.ip();
        self.ctx.may_log_in(&l.username, addr)?;
        self.login_pending = true;
        let ctx = self.ctx.clone();
        let session = self.id;
        let me = self.mailbox.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let user = l.username;
            let outcome = authenticate(&ctx, &user, credential, l.device).await;
            ctx.login_outcome(&user, addr, &outcome);
            match outcome {
                Ok(token) => {
                    let nodes = ctx.nodes().await;
                    ctx.router.to_inbox(
                        &user.clone(),
                        InboxMsg::Attach {
                            session,
                            reply: reply(move |meta| {
                                let _ = me.unbounded_send(SessionMsg::LoggedIn(Box::new(LoggedIn {
                                    request_id: id,
                                    user,
                                    token,
                                    nodes,
                                    meta,
                                })));
                            }),
                        },
                    );
                }
                Err(error) => {
                    let _ = me.unbounded_send(SessionMsg::LoginFailed {
                        request_id: id,
                        error,
                    });
                }
            }
        });
        Ok(())
    }
}

/// Checks `password` against `user`'s account. A user that does not exist costs a hash
/// too: a wrong password takes as long either way, so names cannot be found by timing.
async fn check_password_of(ctx: &NodeCtx, user: &str, password: String) -> ChatResult<()> {
    auth::check_password(&password)?;
    let account = ctx
        .router
        .account(user, |reply| AccountMsg::Get { reply })
        .await?;
    let Some(account) = account else {
        let _ = ctx.verify_password(password, ctx.dummy_hash.clone()).await;
        return Err(ChatError::InvalidCredentials);
    };
    ctx.verify_password(password, account.password_hash).await?;
    // Said only to whoever knows the password.
    if account.disabled {
        return Err(ChatError::AccountDisabled);
    }
    Ok(())
}

/// Checks a credential and returns the session token to use (a new one for a password).
async fn authenticate(
    ctx: &NodeCtx,
    user: &str,
    credential: v1::login_request::Credential,
    device: String,
) -> ChatResult<(String, u64)> {
    use v1::login_request::Credential;
    let now = storage::now_ms();
    match credential {
        Credential::Password(password) => {
            check_password_of(ctx, user, password).await?;
            let token = auth::new_token();
            let record = crate::devices::new_token_record(device, now, ctx.config.auth.token_ttl_secs * 1000);
            let expires = record.expires_at_ms;
            let put = |reply| AccountMsg::PutToken {
                token: token.clone(),
                record,
                reply,
            };
            ctx.router.account(user, put).await?;
            Ok((token, expires))
        }
        Credential::Token(token) => {
            if !auth::plausible_token(&token) {
                return Err(ChatError::InvalidCredentials);
            }
            let get = |reply| AccountMsg::GetToken {
                token: token.clone(),
                reply,
            };
            match ctx.router.account(user, get).await? {
                Some(t) if t.expires_at_ms > now => {
                    crate::devices::touch(ctx, user, token.clone(), &t, now);
                    Ok((token, t.expires_at_ms))
                }
                _ => Err(ChatError::InvalidCredentials),
            }
        }
    }
}

/// Recipients known to accept a session's private messages: they stored its last one.
type Accepting = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// At most this many recipients are remembered per session (then it starts afresh).
const MAX_ACCEPTING: usize = 1024;

/// Stores a private message in its recipient's inbox and (unless it is to oneself or
/// own copies are off) a copy in the sender's. Its id is chosen here, from its sender
/// and client id, so the copy need not wait for the recipient's write to know it:
/// to a recipient that stored this session's last message (`accepting`), both are
/// written at once. A first message, or one after a refusal, is written to the
/// recipient first and copied only once stored, so that a message refused (no such
/// user, blocked) leaves no copy. The SendAck waits for both and gives the recipient's
/// place; a resend (same client_msg_id) stores whichever is missing under the same id.
fn send_private(
    ctx: &Arc<NodeCtx>,
    (session, accepting): (u64, Accepting),
    me: String,
    m: v1::SendPrivate,
    attachments: Vec<v1::Attachment>,
    ack: Reply<ChatResult<Appended>>,
) {
    let message_id = chat_state::keys::private_message_id(&m.to, &me, &m.client_msg_id);
    let now = storage::now_ms();
    let named = |skip_session| {
        Some(Box::new(inbox::Named {
            message_id: message_id.clone(),
            timestamp_ms: now,
            skip_session,
        }))
    };
    let draft = Draft {
        from: me.clone(),
        kind: ConversationKind::Private,
        conversation: m.to.clone(),
        text: m.text,
        group: None,
        receipt: None,
        named: named(0),
        reply_to: m.reply_to,
        attachments,
    };
    let recipient_origin = chat_state::keys::private_origin(&me, &m.client_msg_id);
    if m.to == me || !ctx.config.client.copy_own_messages {
        ctx.router.to_inbox(
            &m.to,
            InboxMsg::Append {
                origin: recipient_origin,
                draft,
                reply: ack,
            },
        );
        return;
    }
    let copy = (
        inbox::own_origin(&m.to, &m.client_msg_id),
        Draft {
            named: named(session),
            ..draft.clone()
        },
    );
    let known = accepting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&m.to);
    let to = m.to.clone();
    let learn = move |r: &ChatResult<Appended>| {
        let mut known = accepting.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(_) => {
                if known.len() >= MAX_ACCEPTING {
                    known.clear();
                }
                known.insert(to);
            }
            Err(ChatError::NotFound(_) | ChatError::NotAllowed(_)) => {
                known.remove(&to);
            }
            Err(_) => {}
        }
    };
    let recipient = |reply: Reply<ChatResult<Appended>>| InboxMsg::Append {
        origin: recipient_origin,
        draft,
        reply,
    };
    if known {
        // Written at once, the copy may be stored and the message refused: withdrawn
        // then, before the refusal is answered.
        let withdrawal = Withdrawal {
            router: ctx.router.clone(),
            user: me.clone(),
            to: m.to.clone(),
            message_id: message_id.clone(),
            client_msg_id: m.client_msg_id.clone(),
            session,
        };
        let both = Both::new(ack, withdrawal);
        let first = both.clone();
        ctx.router.to_inbox(
            &m.to,
            recipient(Box::new(move |r| {
                learn(&r);
                first.recipient(r);
            })),
        );
        let (origin, draft) = copy;
        ctx.router.to_inbox(
            &me,
            InboxMsg::Append {
                origin,
                draft,
                reply: Box::new(move |r| both.own_copy(r)),
            },
        );
        return;
    }
    let router = ctx.router.clone();
    ctx.router.to_inbox(
        &m.to,
        recipient(Box::new(move |r| {
            learn(&r);
            match r {
                Ok(sent) => {
                    let (origin, draft) = copy;
                    router.to_inbox(
                        &me,
                        InboxMsg::Append {
                            origin,
                            draft,
                            reply: Box::new(move |r| ack(r.map(|_| sent))),
                        },
                    );
                }
                Err(e) => ack(Err(e)),
            }
        })),
    );
}

/// The two writes of a private message and its own copy, answered once both are in:
/// the recipient's place if both were stored, else the first error (a resend completes
/// what is missing). A copy stored for a message the recipient refused is withdrawn
/// first.
struct Both {
    state: std::sync::Mutex<BothState>,
}

/// What withdrawing an own copy needs (`InboxMsg::Withdraw` to the sender's inbox).
struct Withdrawal {
    router: crate::request::Router,
    user: String,
    to: String,
    message_id: String,
    client_msg_id: String,
    session: u64,
}

impl Withdrawal {
    /// Runs `reply` once the withdrawal is durable or failed.
    fn send(self, reply: Reply<ChatResult<()>>) {
        let Self {
            router,
            user,
            to,
            message_id,
            client_msg_id,
            session,
        } = self;
        router.to_inbox(
            &user,
            InboxMsg::Withdraw {
                message_id,
                to,
                client_msg_id,
                session,
                reply,
            },
        );
    }
}

struct BothState {
    recipient: Option<ChatResult<Appended>>,
    own_copy: Option<ChatResult<Appended>>,
    ack: Option<Reply<ChatResult<Appended>>>,
    withdraw: Option<Withdrawal>,
}

impl Both {
    fn new(ack: Reply<ChatResult<Appended>>, withdraw: Withdrawal) -> Arc<Self> {
        Arc::new(Self {
            state: std::sync::Mutex::new(BothState {
                recipient: None,
                own_copy: None,
                ack: Some(ack),
                withdraw: Some(withdraw),
            }),
        })
    }

    fn recipient(&self, r: ChatResult<Appended>) {
        self.done(|s| s.recipient = Some(r));
    }

    fn own_copy(&self, r: ChatResult<Appended>) {
        self.done(|s| s.own_copy = Some(r));
    }

    fn done(&self, record: impl FnOnce(&mut BothState)) {
        let (ack, result, withdraw) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            record(&mut s);
            let (Some(recipient), Some(own_copy)) = (&s.recipient, &s.own_copy) else {
                return;
            };
            let result = match (recipient, own_copy) {
                (Err(e), _) | (Ok(_), Err(e)) => Err(e.clone()),
                (Ok(sent), Ok(_)) => Ok(sent.clone()),
            };
            // Refused for good (a resend would be refused too): the copy must go. Any
            // other failure leaves it for the resend that completes the message.
            let refused = matches!(
                (recipient, own_copy),
                (Err(ChatError::NotFound(_) | ChatError::NotAllowed(_)), Ok(_))
            );
            let withdraw = s.withdraw.take().filter(|_| refused);
            (s.ack.take(), result, withdraw)
        };
        let Some(ack) = ack else { return };
        match withdraw {
            None => ack(result),
            Some(withdraw) => withdraw.send(Box::new(move |withdrawn| {
                if let Err(e) = withdrawn {
                    tracing::warn!(error = %e, "the own copy of a refused message was not withdrawn");
                }
                ack(result);
            })),
        }
    }
}

fn no_upload(blob_id: &str) -> ChatError {
    ChatError::BadRequest(format!(
        "no upload of {blob_id} under way here: send UploadBegin first"
    ))
}

fn check_name(name: &str) -> ChatResult<()> {
    if auth::valid_name(name) {
        Ok(())
    } else {
        Err(ChatError::InvalidName(name.chars().take(40).collect()))
    }
}

/// A group's title or topic: at most `max` bytes.
fn check_text(what: &str, text: &str, max: usize) -> ChatResult<()> {
    if text.len() > max {
        return Err(ChatError::BadRequest(format!(
            "{what} must be at most {max} bytes"
        )));
    }
    Ok(())
}

fn check_msg(client_msg_id: &str, text: &str, max_text: usize) -> ChatResult<()> {
    if client_msg_id.is_empty() || client_msg_id.len() > MAX_CLIENT_MSG_ID {
        return Err(ChatError::BadRequest(format!(
            "client_msg_id must be 1 to {MAX_CLIENT_MSG_ID} bytes"
        )));
    }
    if text.len() > max_text {
        return Err(ChatError::BadRequest(format!(
            "text is longer than {max_text} bytes"
        )));
    }
    Ok(())
}

fn page_limit(asked: u32, cap: usize) -> usize {
    match asked as usize {
        0 => cap,
        n => n.min(cap),
    }
}

fn send_ack(client_msg_id: String, a: Appended) -> Body {
    Body::SendAck(v1::SendAck {
        client_msg_id,
        message_id: a.message_id,
        seq: a.seq,
        timestamp_ms: a.timestamp_ms,
    })
}

/// Keeps as many messages as fit in one frame.
fn fit(messages: &mut Vec<v1::Delivery>, max_frame: usize) -> bool {
    let budget = max_frame.saturating_sub(PAGE_HEADROOM);
    let mut used = 0;
    for (i, m) in messages.iter().enumerate() {
        let len = m.encoded_len() + 6;
        if used + len > budget {
            messages.truncate(i);
            return true;
        }
        used += len;
    }
    false
}

fn sync_page(mut page: Page, max_frame: usize) -> Body {
    fit(&mut page.messages, max_frame);
    let has_more = page.messages.last().is_some_and(|m| m.seq < page.last_seq);
    Body::SyncPage(v1::SyncPage {
        messages: page.messages,
        last_seq: page.last_seq,
        has_more,
        first_available_seq: page.first_seq,
    })
}

fn history_page(mut messages: Vec<v1::Delivery>, next: u64, max_frame: usize) -> Body {
    let cut = fit(&mut messages, max_frame);
    let next_before_seq = match messages.last() {
        Some(m) if cut => m.seq.max(m.group_seq),
        _ => next,
    };
    Body::HistoryPage(v1::HistoryPage {
        messages,
        next_before_seq,
    })
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: futures::channel::mpsc::UnboundedReceiver<Bytes>,
) {
    const GATHER: usize = 64 * 1024;
    while let Some(first) = rx.next().await {
        let result = if let Ok(second) = rx.try_recv() {
            // Several frames are waiting: gather them into one write.
            let mut buf = BytesMut::with_capacity(GATHER.max(first.len() + second.len()));
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&second);
            while buf.len() < GATHER {
                match rx.try_recv() {
                    Ok(next) => buf.extend_from_slice(&next),
                    Err(_) => break,
                }
            }
            tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&buf)).await
        } else {
            tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&first)).await
        };
        if !matches!(result, Ok(Ok(()))) {
            return;
        }
    }
    let _ = write.shutdown().await;
}
