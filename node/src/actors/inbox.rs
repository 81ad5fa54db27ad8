//! The inbox actor: one per user, on the user's owner node, started on demand and stopped when idle.
//!
//! It assigns the user's gap-free sequence numbers, persists each entry (with
//! its dedupe key) through the group-commit writer, and only once durable
//! acknowledges the sender and pushes the entry to every attached session.
//! Offline messages are simply the entries above the delivered cursor.

use super::pending::{self, PendingWrites};
use super::registry::{RegistryMsg, Router};
use super::{Reply, SessionRef};
use crate::error::{ChatError, ChatResult};
use crate::storage::{self, Storage, TreeId, Writes, kind};
use bytes::{Bytes, BytesMut};
use chat_protocol::internal::{InboxEntry, InboxMeta};
use chat_protocol::v1::{self, ConversationKind, server_frame};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long an inbox with no sessions and no pending writes lives on.
pub const IDLE_AFTER: Duration = Duration::from_secs(30);
/// How often an inbox or group checks whether it has been idle.
pub const IDLE_CHECK_EVERY: Duration = Duration::from_secs(10);
/// Most receipts one acknowledgement sends.
const MAX_RECEIPTS_PER_ACK: usize = 1000;
/// Most entries one append removes for retention.
const MAX_TRIM_PER_APPEND: usize = 64;
/// Most entries one sweep message removes (the next sweep continues).
const MAX_TRIM_PER_SWEEP: usize = 10_000;

/// What a sender learns once its message is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Cluster-unique id.
    pub message_id: String,
    /// The seq in this inbox.
    pub seq: u64,
    /// Server timestamp.
    pub timestamp_ms: u64,
}

/// A message to store in an inbox; the inbox adds the seq.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Sender.
    pub from: String,
    /// Private or group.
    pub kind: ConversationKind,
    /// Recipient (private) or group name.
    pub conversation: String,
    /// Text.
    pub text: String,
    /// For group messages: the group's seq, id and timestamp.
    pub group: Option<(u64, String, u64)>,
    /// For receipts stored in a sender's inbox: the receipt (its seq is assigned here).
    pub receipt: Option<v1::Receipt>,
    /// For the sender's own copy of a private message it sent.
    pub own_copy: Option<Box<OwnCopy>>,
}

/// What the sender's own copy of a private message keeps of the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnCopy {
    /// The original's message id (as in the recipient's inbox and the SendAck).
    pub message_id: String,
    /// The original's timestamp.
    pub timestamp_ms: u64,
    /// The session that sent it: the copy is pushed to the sender's other sessions.
    pub skip_session: u64,
}

/// Dedupe key of the sender's own copy of a private message to `to`.
pub fn own_origin(to: &str, client_msg_id: &str) -> Vec<u8> {
    let mut o = Vec::with_capacity(2 + to.len() + client_msg_id.len());
    o.push(b's');
    o.push(to.len() as u8);
    o.extend_from_slice(to.as_bytes());
    o.extend_from_slice(client_msg_id.as_bytes());
    o
}

impl Draft {
    /// The entry to store: a group message keeps the group's id and time, an own copy
    /// the original's; a receipt or a message gets `id(is_receipt)` (empty: assigned
    /// where it is applied) and, for a message, `now_ms`. The origin is the caller's.
    pub fn into_entry(self, id: impl FnOnce(bool) -> String, now_ms: u64) -> InboxEntry {
        let (message_id, timestamp_ms, group_seq) = match (&self.group, &self.receipt, &self.own_copy) {
            (Some((gseq, id, ts)), _, _) => (id.clone(), *ts, *gseq),
            (None, Some(r), _) => (id(true), r.timestamp_ms, 0),
            (None, None, Some(c)) => (c.message_id.clone(), c.timestamp_ms, 0),
            (None, None, None) => (id(false), now_ms, 0),
        };
        InboxEntry {
            message_id,
            from: self.from,
            kind: self.kind as u32,
            conversation: self.conversation,
            timestamp_ms,
            text: self.text,
            group_seq,
            origin: Vec::new(),
            receipt: self.receipt,
        }
    }

    /// A receipt for the sender of the receipted message.
    pub fn receipt(receipt: v1::Receipt) -> Self {
        Self {
            from: receipt.by.clone(),
            kind: ConversationKind::Private,
            conversation: receipt.by.clone(),
            text: String::new(),
            group: None,
            receipt: Some(receipt),
            own_copy: None,
        }
    }
}

/// Dedupe key of a receipt: its kind, who acknowledged, and the message.
pub fn receipt_origin(r: &v1::Receipt) -> Vec<u8> {
    let mut o = vec![b'r', r.kind as u8, r.by.len() as u8];
    o.extend_from_slice(r.by.as_bytes());
    o.extend_from_slice(r.message_id.as_bytes());
    o
}

/// Attempts to store one receipt in its sender's inbox before giving up.
const RECEIPT_ATTEMPTS: u32 = 12;

/// Dedupe key of a private message: sender and its client message id.
pub fn private_origin(from: &str, client_msg_id: &str) -> Vec<u8> {
    let mut o = vec![b'p', from.len() as u8];
    o.extend_from_slice(from.as_bytes());
    o.extend_from_slice(client_msg_id.as_bytes());
    o
}

/// Dedupe key of a group message fanned out into an inbox.
pub fn group_origin(group: &str, group_seq: u64) -> Vec<u8> {
    let mut o = vec![b'g', group.len() as u8];
    o.extend_from_slice(group.as_bytes());
    o.extend_from_slice(&group_seq.to_be_bytes());
    o
}

/// Which cursor an acknowledgement moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// A device has the messages.
    Delivered,
    /// The user has read them.
    Read,
}

/// A page of entries for Sync.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Entries in seq order.
    pub messages: Vec<v1::Delivery>,
    /// Highest durable seq.
    pub last_seq: u64,
    /// Lowest kept seq.
    pub first_seq: u64,
}

/// Messages of the inbox actor.
pub enum InboxMsg {
    /// Store a message (idempotent per origin) and reply once durable.
    Append {
        /// Dedupe key.
        origin: Vec<u8>,
        /// The message.
        draft: Draft,
        /// Gets the id and seq.
        reply: Reply<ChatResult<Appended>>,
    },
    /// A session of this user logs in: it gets pushes from now on.
    Attach {
        /// The session.
        session: SessionRef,
        /// Gets the cursors (last_seq is the highest durable seq).
        reply: Reply<ChatResult<InboxMeta>>,
    },
    /// A session logs out or closes.
    Detach {
        /// Its id.
        session: u64,
    },
    /// Entries after a seq.
    Fetch {
        /// Exclusive lower bound.
        after: u64,
        /// Most entries.
        limit: usize,
        /// Gets the page.
        reply: Reply<ChatResult<Page>>,
    },
    /// Private history with one peer, newest first.
    History {
        /// The other user.
        peer: String,
        /// Exclusive upper bound (0 = newest).
        before: u64,
        /// Most entries.
        limit: usize,
        /// Gets the entries and where to continue.
        reply: Reply<ChatResult<(Vec<v1::Delivery>, u64)>>,
    },
    /// Move the delivered or read cursor.
    Ack {
        /// Which cursor.
        kind: AckKind,
        /// New position.
        up_to: u64,
        /// Gets (delivered, read) once durable.
        reply: Reply<ChatResult<(u64, u64)>>,
    },
    /// Record that the user joined (true) or left (false) a group.
    Membership {
        /// The group.
        group: String,
        /// Joined or left.
        joined: bool,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
    /// Whether this inbox's copy of a group message is (delivered, read).
    GroupState {
        /// The group.
        group: String,
        /// The message's group seq.
        group_seq: u64,
        /// Gets the flags.
        reply: Reply<ChatResult<(bool, bool)>>,
    },
    /// The user's groups.
    Groups {
        /// Gets the names.
        reply: Reply<ChatResult<Vec<String>>>,
    },
    /// From the registry: `node` is down; forget the sessions attached from it (if it
    /// was only cut off, it attaches them again when it sees this node back).
    ForgetNode(String),
    /// From the registry's retention sweep: remove entries past the age limit.
    Sweep,
    /// From the registry: it has forgotten this inbox; stop once pending writes are durable.
    Stop,
    /// From the registry, which hands this inbox to another node: stop once pending
    /// writes are durable, handing back the attached sessions.
    Release {
        /// Gets the sessions.
        reply: Reply<Vec<SessionRef>>,
    },
    /// Internal: the write of `seq` is durable (or failed).
    Persisted {
        /// The seq written.
        seq: u64,
        /// The outcome.
        result: Result<(), pending::WriteFailed>,
    },
    /// Internal: a resend found entry `seq` stored and has had it copied: it (and
    /// what is stored before it) counts as durable now.
    Confirmed {
        /// The seq confirmed.
        seq: u64,
    },
    /// Internal: time to check for idleness.
    IdleCheck,
}

impl ractor::Message for InboxMsg {}

impl InboxMsg {
    /// Answers the request, if it expects an answer, with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Append { reply, .. } => reply(Err(err)),
            Self::Attach { reply, .. } => reply(Err(err)),
            Self::Fetch { reply, .. } => reply(Err(err)),
            Self::History { reply, .. } => reply(Err(err)),
            Self::Ack { reply, .. } => reply(Err(err)),
            Self::Membership { reply, .. } => reply(Err(err)),
            Self::Groups { reply, .. } => reply(Err(err)),
            Self::GroupState { reply, .. } => reply(Err(err)),
            _ => {}
        }
    }

    /// True for messages routed through the registry (counted for the idle handshake).
    fn routed(&self) -> bool {
        !matches!(
            self,
            Self::Persisted { .. }
                | Self::Confirmed { .. }
                | Self::IdleCheck
                | Self::Stop
                | Self::Release { .. }
                | Self::ForgetNode(_)
        )
    }
}

/// The inbox actor.
pub struct Inbox;

/// Startup arguments.
pub struct InboxArgs {
    /// Whose inbox.
    pub user: String,
    /// The database.
    pub storage: Storage,
    /// For receipts to other inboxes and the idle handshake.
    pub router: Router,
    /// Most entries kept.
    pub max_messages: u64,
    /// Entries older than this are removed (None: no age limit).
    pub max_age: Option<Duration>,
    /// Sessions attached while the inbox was stopped (kept by the registry).
    pub sessions: Vec<SessionRef>,
    /// Node counters (stored message count).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What a pending inbox write delivers once durable.
struct Durable {
    appended: Appended,
    frame: Bytes,
    since: Instant,
    /// A session not to push it to (the one that sent it, for an own copy).
    skip_session: Option<u64>,
}

/// The inbox's state.
pub struct InboxState {
    args: InboxArgs,
    meta: InboxMeta,
    /// Highest seq whose write is durable; last_seq may be ahead while writes are pending.
    durable_seq: u64,
    pending: PendingWrites<Durable>,
    sessions: Vec<SessionRef>,
    handled: u64,
    last_active: Instant,
    /// Stop (and who gets the sessions) was asked for while writes were pending.
    stopping: Option<Option<Reply<Vec<SessionRef>>>>,
}

impl Actor for Inbox {
    type Msg = InboxMsg;
    type State = InboxState;
    type Arguments = InboxArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<InboxMsg>,
        mut args: InboxArgs,
    ) -> Result<InboxState, ActorProcessingErr> {
        let meta = args.storage.inbox_meta(&args.user)?;
        myself.send_after(IDLE_CHECK_EVERY, || InboxMsg::IdleCheck);
        let sessions = std::mem::take(&mut args.sessions);
        Ok(InboxState {
            sessions,
            durable_seq: meta.last_seq,
            meta,
            args,
            pending: PendingWrites::default(),
            handled: 0,
            last_active: Instant::now(),
            stopping: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<InboxMsg>,
        msg: InboxMsg,
        state: &mut InboxState,
    ) -> Result<(), ActorProcessingErr> {
        if msg.routed() {
            state.handled += 1;
            state.last_active = Instant::now();
        }
        match msg {
            InboxMsg::Append { origin, draft, reply } => state.append(&myself, origin, draft, reply),
            InboxMsg::Persisted { seq, result } => state.persisted(seq, result),
            InboxMsg::Confirmed { seq } => state.confirmed(seq),
            InboxMsg::Attach { session, reply } => {
                // Attached again (its node re-announces it after this node restarted): once.
                state.sessions.retain(|s| s.id != session.id);
                state.sessions.push(session);
                let mut meta = state.meta;
                meta.last_seq = state.durable_seq;
                reply(Ok(meta));
            }
            InboxMsg::Detach { session } => {
                state.sessions.retain(|s| s.id != session);
            }
            InboxMsg::Fetch { after, limit, reply } => reply(state.fetch(after, limit)),
            InboxMsg::History {
                peer,
                before,
                limit,
                reply,
            } => reply(state.history(&peer, before, limit)),
            InboxMsg::Ack { kind, up_to, reply } => state.ack(kind, up_to, reply),
            InboxMsg::Sweep => {
                let mut batch = Writes::default();
                let before = state.meta.first_seq;
                state.trim_up_to(&mut batch, MAX_TRIM_PER_SWEEP, false);
                if state.meta.first_seq != before {
                    batch.put(
                        TreeId::Inbox,
                        storage::scoped(&state.args.user, kind::META),
                        state.meta.encode_to_vec(),
                    );
                    state.args.storage.commit(batch, Box::new(|_| {}));
                }
            }
            InboxMsg::ForgetNode(node) => state.sessions.retain(|s| s.node() != Some(node.as_str())),
            InboxMsg::Membership { group, joined, reply } => {
                let mut batch = Writes::default();
                let key = storage::suffix_key(&state.args.user, kind::GROUP, group.as_bytes());
                if joined {
                    batch.put(TreeId::Inbox, key, []);
                } else {
                    batch.del(TreeId::Inbox, key);
                }
                state
                    .args
                    .storage
                    .commit(batch, Box::new(move |r| reply(r.map_err(ChatError::from))));
            }
            InboxMsg::GroupState {
                group,
                group_seq,
                reply,
            } => {
                let origin = group_origin(&group, group_seq);
                let seq = state.args.storage.inbox_origin(&state.args.user, &origin);
                let (delivered, read) = (state.meta.delivered_seq, state.meta.read_seq);
                reply(
                    seq.map(|s| s.map_or((false, false), |s| (s <= delivered, s <= read)))
                        .map_err(Into::into),
                );
            }
            InboxMsg::Groups { reply } => reply(
                state
                    .args
                    .storage
                    .user_groups(&state.args.user)
                    .map_err(Into::into),
            ),
            InboxMsg::IdleCheck => {
                // Idle means no traffic and no pending write; attached sessions do not
                // keep an inbox alive: the registry holds them until it starts again.
                if state.pending.is_empty() && state.last_active.elapsed() >= IDLE_AFTER {
                    state.args.router.registry().cast(RegistryMsg::InboxIdle {
                        user: state.args.user.clone(),
                        handled: state.handled,
                        sessions: state.sessions.clone(),
                    })?;
                }
                myself.send_after(IDLE_CHECK_EVERY, || InboxMsg::IdleCheck);
            }
            InboxMsg::Stop => state.stopping = Some(None),
            InboxMsg::Release { reply } => state.stopping = Some(Some(reply)),
        }
        // Writes in flight are answered before the inbox stops (their senders wait).
        if state.stopping.is_some() && state.pending.is_empty() {
            if let Some(Some(reply)) = state.stopping.take() {
                reply(std::mem::take(&mut state.sessions));
            }
            myself.stop(None);
        }
        Ok(())
    }
}

impl InboxState {
    fn append(
        &mut self,
        myself: &ActorRef<InboxMsg>,
        origin: Vec<u8>,
        draft: Draft,
        reply: Reply<ChatResult<Appended>>,
    ) {
        // The account lives in this inbox's partition, so the owner checks it.
        if draft.group.is_none() && draft.receipt.is_none() {
            match self.args.storage.account(&self.args.user) {
                Ok(Some(_)) => {}
                Ok(None) => return reply(Err(ChatError::NotFound(format!("user {}", self.args.user)))),
                Err(e) => return reply(Err(e.into())),
            }
        }
        // A resend while the first copy is still being written waits for that write.
        let Some(reply) = self.pending.wait_for(&origin, reply) else {
            return;
        };
        match self.already_stored(&origin) {
            Ok(Some((done, again))) => {
                // Its first write may have failed to reach a replica: then it did not
                // count as durable, and the entries after it may not either.
                let (me, seq) = (myself.clone(), done.seq);
                let confirm: Reply<ChatResult<Appended>> = Box::new(move |r| {
                    if r.is_ok() {
                        let _ = me.cast(InboxMsg::Confirmed { seq });
                    }
                    reply(r);
                });
                return pending::confirm_again(&self.args.storage, again, done, confirm);
            }
            Ok(None) => {}
            Err(e) => return reply(Err(e)),
        }

        let seq = self.meta.last_seq + 1;
        let user = self.args.user.clone();
        let user = &user;
        let skip_session = draft.own_copy.as_ref().map(|c| c.skip_session);
        let id = |receipt: bool| format!("{}:{user}:{seq}", if receipt { "r" } else { "p" });
        let entry = InboxEntry {
            origin: origin.clone(),
            ..draft.into_entry(id, storage::now_ms())
        };
        let (message_id, timestamp_ms) = (entry.message_id.clone(), entry.timestamp_ms);
        let mut batch = Writes::default();
        batch.put(
            TreeId::Inbox,
            storage::seq_key(user, kind::ENTRY, seq),
            entry.encode_to_vec(),
        );
        batch.put(
            TreeId::Inbox,
            storage::suffix_key(user, kind::ORIGIN, &origin),
            storage::seq_value(seq),
        );
        self.meta.last_seq = seq;
        if self.meta.first_seq == 0 {
            self.meta.first_seq = seq;
        }
        self.trim(&mut batch);
        batch.put(
            TreeId::Inbox,
            storage::scoped(user, kind::META),
            self.meta.encode_to_vec(),
        );

        // A receipt is pushed as a Receipt (with its seq), a message as a Delivery.
        let frame = match &entry.receipt {
            Some(r) => encode_push(server_frame::Body::Receipt(v1::Receipt { seq, ..r.clone() })),
            None => encode_push(server_frame::Body::Delivery(to_delivery(seq, &entry))),
        };
        let appended = Appended {
            message_id,
            seq,
            timestamp_ms,
        };
        self.pending.push(
            seq,
            origin,
            Durable {
                appended,
                frame,
                since: Instant::now(),
                skip_session,
            },
            reply,
        );
        pending::commit_then(&self.args.storage, batch, myself, seq, |seq, result| {
            InboxMsg::Persisted { seq, result }
        });
    }

    /// Entries up to `seq` are durable on every copy (a resend confirmed them): they
    /// become visible to syncs, and are pushed to the sessions, in order.
    fn confirmed(&mut self, seq: u64) {
        if seq <= self.durable_seq {
            return;
        }
        let from = self.durable_seq;
        match self
            .args
            .storage
            .inbox_after(&self.args.user, from, (seq - from) as usize)
        {
            Ok(entries) => {
                for (s, entry) in entries.into_iter().filter(|(s, _)| *s <= seq) {
                    let frame = match &entry.receipt {
                        Some(r) => {
                            encode_push(server_frame::Body::Receipt(v1::Receipt { seq: s, ..r.clone() }))
                        }
                        None => encode_push(server_frame::Body::Delivery(to_delivery(s, &entry))),
                    };
                    let now = Instant::now();
                    let user: Arc<str> = Arc::from(self.args.user.as_str());
                    self.sessions
                        .retain(|session| session.deliver(&user, s, frame.clone(), now));
                }
            }
            Err(e) => tracing::warn!(user = %self.args.user, error = %e, "confirmed entries not pushed"),
        }
        self.durable_seq = seq;
    }

    /// The earlier answer for an origin that is already stored, and its records to
    /// write again (see [`pending::confirm_again`]).
    fn already_stored(&self, origin: &[u8]) -> ChatResult<Option<(Appended, Writes)>> {
        let (storage, user) = (&self.args.storage, &self.args.user);
        let Some(seq) = storage.inbox_origin(user, origin)? else {
            return Ok(None);
        };
        let Some(entry) = storage.inbox_entry(user, seq)? else {
            return Ok(None);
        };
        let mut again = Writes::default();
        // Not if retention is removing it (a later trim is already queued).
        if seq >= self.meta.first_seq {
            again.put(
                TreeId::Inbox,
                storage::seq_key(user, kind::ENTRY, seq),
                entry.encode_to_vec(),
            );
            again.put(
                TreeId::Inbox,
                storage::suffix_key(user, kind::ORIGIN, origin),
                storage::seq_value(seq),
            );
        }
        let done = Appended {
            message_id: entry.message_id,
            seq,
            timestamp_ms: entry.timestamp_ms,
        };
        Ok(Some((done, again)))
    }

    /// Adds removals of the oldest entries beyond the retention limits to `batch`.
    fn trim(&mut self, batch: &mut Writes) {
        self.trim_up_to(batch, MAX_TRIM_PER_APPEND, true);
    }

    /// Adds removals of at most `most` of the oldest entries beyond the retention limits;
    /// `keep_newest` spares the newest entry (the one an append is writing).
    fn trim_up_to(&mut self, batch: &mut Writes, most: usize, keep_newest: bool) {
        let user = &self.args.user;
        let cutoff = self
            .args
            .max_age
            .map(|age| storage::now_ms().saturating_sub(age.as_millis() as u64));
        for _ in 0..most {
            let first = self.meta.first_seq;
            if first == 0 || first > self.meta.last_seq {
                break;
            }
            let over_count = self.meta.last_seq - first + 1 > self.args.max_messages;
            let entry = match self.args.storage.inbox_entry(user, first) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(user = %user, error = %e, "retention skipped");
                    break;
                }
            };
            let too_old = match (&entry, cutoff) {
                (Some(e), Some(cutoff)) => e.timestamp_ms < cutoff,
                _ => false,
            };
            if !(over_count || too_old) || (keep_newest && first == self.meta.last_seq) {
                break;
            }
            batch.del(TreeId::Inbox, storage::seq_key(user, kind::ENTRY, first));
            if let Some(e) = entry {
                batch.del(TreeId::Inbox, storage::suffix_key(user, kind::ORIGIN, &e.origin));
            }
            self.meta.first_seq = first + 1;
            self.args.metrics.inbox_messages(-1);
        }
    }

    fn persisted(&mut self, seq: u64, result: Result<(), pending::WriteFailed>) {
        let Some(w) = self.pending.complete(seq) else {
            tracing::error!(user = %self.args.user, seq, "completion without a pending write");
            return;
        };
        match result {
            Ok(()) => {
                // With replicas, a later write can complete first (its copy went to a
                // faster replica after the set changed): never go back.
                self.durable_seq = self.durable_seq.max(w.seq);
                let user: Arc<str> = Arc::from(self.args.user.as_str());
                let Durable {
                    appended,
                    frame,
                    since,
                    skip_session,
                } = w.payload;
                self.args.metrics.inbox_messages(1);
                self.sessions.retain(|s| match skip_session {
                    // The session that sent it only moves past its seq.
                    Some(id) if s.id == id => s.deliver(&user, w.seq, Bytes::new(), since),
                    _ => s.deliver(&user, w.seq, frame.clone(), since),
                });
                for r in w.replies {
                    r(Ok(appended.clone()));
                }
            }
            Err(e) => {
                // Not acknowledged; a resend (same origin) is answered once the entry,
                // stored here in any case, is on every replica.
                tracing::warn!(user = %self.args.user, seq, error = %e.error, "inbox write failed");
                for r in w.replies {
                    r(Err(e.error.clone()));
                }
            }
        }
    }

    fn fetch(&self, after: u64, limit: usize) -> ChatResult<Page> {
        let mut messages = Vec::new();
        if after < self.durable_seq {
            let max = limit.min((self.durable_seq - after) as usize);
            for (seq, entry) in self.args.storage.inbox_after(&self.args.user, after, max)? {
                messages.push(to_delivery(seq, &entry));
            }
        }
        Ok(Page {
            messages,
            last_seq: self.durable_seq,
            first_seq: self.meta.first_seq,
        })
    }

    fn history(&self, peer: &str, before: u64, limit: usize) -> ChatResult<(Vec<v1::Delivery>, u64)> {
        let before = if before == 0 {
            self.durable_seq + 1
        } else {
            before.min(self.durable_seq + 1)
        };
        let (entries, next) =
            self.args
                .storage
                .inbox_before(&self.args.user, before, limit, limit * 20, |e| {
                    // Both directions: the peer's messages, and this user's own copies
                    // of what it sent the peer.
                    e.kind == ConversationKind::Private as u32
                        && e.receipt.is_none()
                        && (e.from == peer || (e.from == self.args.user && e.conversation == peer))
                })?;
        Ok((entries.iter().map(|(s, e)| to_delivery(*s, e)).collect(), next))
    }

    fn ack(&mut self, kind: AckKind, up_to: u64, reply: Reply<ChatResult<(u64, u64)>>) {
        let up_to = up_to.min(self.durable_seq);
        let before = self.meta;
        match kind {
            AckKind::Delivered => self.meta.delivered_seq = self.meta.delivered_seq.max(up_to),
            AckKind::Read => {
                // Reading implies delivery.
                self.meta.read_seq = self.meta.read_seq.max(up_to);
                self.meta.delivered_seq = self.meta.delivered_seq.max(up_to);
            }
        }
        let cursors = (self.meta.delivered_seq, self.meta.read_seq);
        if self.meta == before {
            return reply(Ok(cursors));
        }
        let receipts = match kind {
            AckKind::Delivered => self.receipts(
                before.delivered_seq,
                self.meta.delivered_seq,
                v1::ReceiptKind::Delivered,
            ),
            AckKind::Read => self.receipts(before.read_seq, self.meta.read_seq, v1::ReceiptKind::Read),
        };
        let mut batch = Writes::default();
        batch.put(
            TreeId::Inbox,
            storage::scoped(&self.args.user, kind::META),
            self.meta.encode_to_vec(),
        );
        let router = self.args.router.clone();
        // The completion runs on the committer thread, outside the runtime.
        let runtime = tokio::runtime::Handle::current();
        self.args.storage.commit(
            batch,
            Box::new(move |r| match r {
                Ok(()) => {
                    // First attempts go out here, in order (a delivered receipt before
                    // the read one); only retries run in tasks.
                    for (sender, receipt) in receipts {
                        store_receipt(router.clone(), runtime.clone(), sender, receipt, 1);
                    }
                    reply(Ok(cursors));
                }
                Err(e) => reply(Err(e.into())),
            }),
        );
    }

    /// Receipts for the private messages in (from, to]: one per sender, for its latest
    /// message there (a receipt covers the earlier ones too).
    fn receipts(&self, from: u64, to: u64, kind: v1::ReceiptKind) -> Vec<(String, v1::Receipt)> {
        let count = ((to - from) as usize).min(MAX_RECEIPTS_PER_ACK);
        let entries = match self.args.storage.inbox_after(&self.args.user, from, count) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(user = %self.args.user, error = %e, "receipts skipped");
                return Vec::new();
            }
        };
        let now = storage::now_ms();
        let mut latest: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        for (_, e) in entries {
            // Not for group messages, own copies, or receipts themselves.
            if e.kind == ConversationKind::Private as u32 && e.from != self.args.user && e.receipt.is_none() {
                latest.insert(e.from, e.message_id);
            }
        }
        latest
            .into_iter()
            .map(|(sender, message_id)| {
                let receipt = v1::Receipt {
                    kind: kind as i32,
                    message_id,
                    by: self.args.user.clone(),
                    timestamp_ms: now,
                    seq: 0,
                };
                (sender, receipt)
            })
            .collect()
    }
}

/// Stores a receipt in the inbox of the message's sender, wherever it lives, retrying
/// with backoff while that inbox is unreachable (its node down or moving).
fn store_receipt(
    router: Router,
    runtime: tokio::runtime::Handle,
    sender: String,
    receipt: v1::Receipt,
    attempt: u32,
) {
    let (r, to) = (router.clone(), sender.clone());
    let (origin, draft) = (receipt_origin(&receipt), Draft::receipt(receipt.clone()));
    let retry = move |outcome: ChatResult<Appended>| match outcome {
        Ok(_) | Err(ChatError::NotFound(_)) => {}
        Err(e) if attempt >= RECEIPT_ATTEMPTS => {
            tracing::warn!(sender = %sender, error = %e, "receipt not stored");
        }
        Err(_) => {
            let wait = (Duration::from_millis(500) * 2u32.pow(attempt - 1)).min(Duration::from_secs(10));
            let handle = runtime.clone();
            runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                store_receipt(router, handle, sender, receipt, attempt + 1);
            });
        }
    };
    r.to_inbox(
        &to,
        InboxMsg::Append {
            origin,
            draft,
            reply: Box::new(retry),
        },
    );
}

/// The wire form of a stored entry.
pub fn to_delivery(seq: u64, e: &InboxEntry) -> v1::Delivery {
    v1::Delivery {
        receipt: e.receipt.clone().map(|r| v1::Receipt { seq, ..r }),
        seq,
        message_id: e.message_id.clone(),
        from: e.from.clone(),
        kind: e.kind as i32,
        conversation: e.conversation.clone(),
        timestamp_ms: e.timestamp_ms,
        text: e.text.clone(),
        group_seq: e.group_seq,
    }
}

/// Encodes a push (request id 0) once, to be shared by every session it goes to.
pub fn encode_push(body: server_frame::Body) -> Bytes {
    let frame = v1::ServerFrame {
        request_id: 0,
        body: Some(body),
    };
    let mut buf = BytesMut::with_capacity(frame.encoded_len() + 5);
    frame
        .encode_length_delimited(&mut buf)
        .expect("buffer sized for the frame");
    buf.freeze()
}
