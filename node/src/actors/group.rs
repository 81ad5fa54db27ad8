//! The group actor: one per group, on the group's owner node.
//!
//! It keeps the member list, assigns the group's own seq to each message,
//! persists the message (with the recipients at that moment) before
//! acknowledging the sender, then fans it out to every recipient's inbox.
//! Inboxes dedupe by (group, group seq), so a fan-out interrupted by a crash
//! is simply redone from `fanout_seq` when the group starts again.

use super::inbox::{self, Appended, Draft, InboxMsg};
use super::pending::{self, PendingWrites};
use super::registry::{RegistryMsg, Router};
use super::{Reply, reply};
use crate::error::{ChatError, ChatResult};
use crate::storage::{self, Storage, TreeId, Writes, kind};
use chat_protocol::internal::{GroupMessage, GroupRecord};
use chat_protocol::v1::{self, ConversationKind};
use prost::Message;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::{BTreeMap, BTreeSet};
use tokio::time::Instant;

/// Messages of the group actor.
pub enum GroupMsg {
    /// Create the group with `user` as its first member.
    Create {
        /// The creator.
        user: String,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
    /// Add a member (joining twice is fine).
    Join {
        /// Who joins.
        user: String,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
    /// Remove a member.
    Leave {
        /// Who leaves.
        user: String,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
    /// The members, for a member.
    Members {
        /// Who asks.
        user: String,
        /// Gets the sorted names.
        reply: Reply<ChatResult<Vec<String>>>,
    },
    /// Post a message (idempotent per sender and client message id).
    Post {
        /// Sender, who must be a member.
        from: String,
        /// Dedupe id.
        client_msg_id: String,
        /// Text.
        text: String,
        /// Gets the id and group seq once durable.
        reply: Reply<ChatResult<Appended>>,
    },
    /// The group's messages with seq < `before`, newest first, for a member.
    History {
        /// Who asks.
        user: String,
        /// Exclusive upper bound (0 = newest).
        before: u64,
        /// Most messages.
        limit: usize,
        /// Gets the page and where to continue.
        reply: Reply<ChatResult<(Vec<v1::Delivery>, u64)>>,
    },
    /// Where a message stands for each recipient, for a member.
    Receipts {
        /// Who asks.
        user: String,
        /// The message's group seq.
        group_seq: u64,
        /// Gets one entry per recipient, sorted.
        reply: Reply<ChatResult<Vec<v1::MemberReceipt>>>,
    },
    /// Start (and so finish any interrupted fan-out); nothing else.
    Wake,
    /// From the registry: it has forgotten this group; stop.
    Stop,
    /// Internal: the post with this seq is durable (or failed).
    Persisted {
        /// Group seq.
        seq: u64,
        /// Outcome.
        result: Result<(), pending::WriteFailed>,
    },
    /// Internal: one recipient's inbox has stored the message.
    FanoutAck {
        /// Group seq.
        seq: u64,
        /// Whether the inbox stored it.
        ok: bool,
    },
    /// Internal: retry the fan-out of a message some inbox did not store (its node was
    /// down or unreachable); inboxes drop the copies they already have.
    RetryFanout {
        /// Group seq.
        seq: u64,
    },
    /// Internal: time to check for idleness.
    IdleCheck,
}

impl ractor::Message for GroupMsg {}

/// Wait before a failed fan-out is tried again.
const FANOUT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl GroupMsg {
    fn routed(&self) -> bool {
        !matches!(
            self,
            Self::Persisted { .. }
                | Self::FanoutAck { .. }
                | Self::RetryFanout { .. }
                | Self::IdleCheck
                | Self::Stop
        )
    }

    /// Answers the request, if it expects an answer, with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Create { reply, .. } | Self::Join { reply, .. } | Self::Leave { reply, .. } => {
                reply(Err(err))
            }
            Self::Members { reply, .. } => reply(Err(err)),
            Self::Post { reply, .. } => reply(Err(err)),
            Self::History { reply, .. } => reply(Err(err)),
            Self::Receipts { reply, .. } => reply(Err(err)),
            _ => {}
        }
    }
}

/// The group actor.
pub struct Group;

/// Startup arguments.
pub struct GroupArgs {
    /// The group's name.
    pub group: String,
    /// The database.
    pub storage: Storage,
    /// To reach member inboxes and the registry.
    pub router: Router,
}

#[derive(Default)]
struct Fanout {
    remaining: usize,
    failed: bool,
}

/// The group's state.
pub struct GroupState {
    args: GroupArgs,
    record: Option<GroupRecord>,
    members: BTreeSet<String>,
    pending: PendingWrites<GroupMessage>,
    fanouts: BTreeMap<u64, Fanout>,
    handled: u64,
    idle_since: Option<Instant>,
    /// Stop was asked for while posts were being written: stop once they are durable.
    stopping: bool,
}

impl Actor for Group {
    type Msg = GroupMsg;
    type State = GroupState;
    type Arguments = GroupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GroupMsg>,
        args: GroupArgs,
    ) -> Result<GroupState, ActorProcessingErr> {
        let record = args.storage.group(&args.group)?;
        let members = if record.is_some() {
            args.storage.group_members(&args.group)?.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        let mut state = GroupState {
            args,
            record,
            members,
            pending: PendingWrites::default(),
            fanouts: BTreeMap::new(),
            handled: 0,
            idle_since: Some(Instant::now()),
            stopping: false,
        };
        state.resume_fanout(&myself)?;
        myself.send_after(inbox::IDLE_CHECK_EVERY, || GroupMsg::IdleCheck);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<GroupMsg>,
        msg: GroupMsg,
        state: &mut GroupState,
    ) -> Result<(), ActorProcessingErr> {
        if msg.routed() {
            state.handled += 1;
            state.idle_since = Some(Instant::now());
        }
        match msg {
            GroupMsg::Create { user, reply } => {
                if state.record.is_some() {
                    reply(Err(ChatError::AlreadyExists(state.args.group.clone())));
                } else {
                    state.record = Some(GroupRecord {
                        creator: user.clone(),
                        created_at_ms: storage::now_ms(),
                        last_seq: 0,
                        fanout_seq: 0,
                    });
                    state.set_member(user, true, reply);
                }
            }
            GroupMsg::Join { user, reply } => match state.check_member(&user) {
                Ok(()) => reply(Ok(())),
                Err(ChatError::NotAMember(_)) => state.set_member(user, true, reply),
                Err(e) => reply(Err(e)),
            },
            GroupMsg::Leave { user, reply } => match state.check_member(&user) {
                Ok(()) => state.set_member(user, false, reply),
                Err(e) => reply(Err(e)),
            },
            GroupMsg::Members { user, reply } => reply(
                state
                    .check_member(&user)
                    .map(|()| state.members.iter().cloned().collect()),
            ),
            GroupMsg::Post {
                from,
                client_msg_id,
                text,
                reply,
            } => state.post(&myself, from, client_msg_id, text, reply),
            GroupMsg::Persisted { seq, result } => state.persisted(&myself, seq, result),
            GroupMsg::FanoutAck { seq, ok } => state.fanout_ack(&myself, seq, ok),
            GroupMsg::RetryFanout { seq } => {
                if let Some(message) = state.args.storage.group_message(&state.args.group, seq)? {
                    state.fan_out(&myself, seq, &message);
                }
            }
            GroupMsg::History {
                user,
                before,
                limit,
                reply,
            } => reply(state.history(&user, before, limit)),
            GroupMsg::IdleCheck => {
                let quiet = state.pending.is_empty() && state.fanouts.is_empty();
                if quiet && state.idle_since.is_some_and(|t| t.elapsed() >= inbox::IDLE_AFTER) {
                    state.args.router.registry().cast(RegistryMsg::GroupIdle {
                        group: state.args.group.clone(),
                        handled: state.handled,
                    })?;
                }
                myself.send_after(inbox::IDLE_CHECK_EVERY, || GroupMsg::IdleCheck);
            }
            GroupMsg::Receipts {
                user,
                group_seq,
                reply,
            } => state.receipts(&user, group_seq, reply),
            GroupMsg::Wake => {}
            GroupMsg::Stop => state.stopping = true,
        }
        // Posts being written are answered before the group stops (their senders wait).
        if state.stopping && state.pending.is_empty() {
            myself.stop(None);
        }
        Ok(())
    }
}

/// How long a receipts query waits for the members' inboxes.
const RECEIPTS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl GroupState {
    /// Asks every recipient's inbox, wherever it is, and answers once all have replied
    /// (or the wait is over: those are `unknown`).
    fn receipts(&self, user: &str, group_seq: u64, reply: Reply<ChatResult<Vec<v1::MemberReceipt>>>) {
        if let Err(e) = self.check_member(user) {
            return reply(Err(e));
        }
        let message = match self.args.storage.group_message(&self.args.group, group_seq) {
            Ok(Some(m)) if group_seq <= self.record.as_ref().map_or(0, |r| r.last_seq) => m,
            Ok(_) => {
                return reply(Err(ChatError::NotFound(format!(
                    "message {group_seq} of #{}",
                    self.args.group
                ))));
            }
            Err(e) => return reply(Err(e.into())),
        };
        let mut asks = Vec::new();
        for member in message.recipients {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.args.router.to_inbox(
                &member,
                InboxMsg::GroupState {
                    group: self.args.group.clone(),
                    group_seq,
                    reply: super::reply(move |r| {
                        let _ = tx.send(r);
                    }),
                },
            );
            asks.push((member, rx));
        }
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + RECEIPTS_WAIT;
            let mut out = Vec::new();
            for (user, rx) in asks {
                let state = tokio::time::timeout_at(deadline, rx).await;
                out.push(match state {
                    Ok(Ok(Ok((delivered, read)))) => v1::MemberReceipt {
                        user,
                        delivered,
                        read,
                        unknown: false,
                    },
                    _ => v1::MemberReceipt {
                        user,
                        unknown: true,
                        ..Default::default()
                    },
                });
            }
            out.sort_by(|a, b| a.user.cmp(&b.user));
            reply(Ok(out));
        });
    }

    fn check_member(&self, user: &str) -> ChatResult<()> {
        if self.record.is_none() {
            Err(ChatError::NotFound(format!("group {}", self.args.group)))
        } else if !self.members.contains(user) {
            Err(ChatError::NotAMember(self.args.group.clone()))
        } else {
            Ok(())
        }
    }

    /// Persists a membership change, then records it in the user's inbox, then replies.
    fn set_member(&mut self, user: String, joined: bool, reply: Reply<ChatResult<()>>) {
        let group = self.args.group.clone();
        let mut batch = Writes::default();
        let key = storage::suffix_key(&group, kind::MEMBER, user.as_bytes());
        if joined {
            self.members.insert(user.clone());
            batch.put(TreeId::Groups, key, []);
        } else {
            self.members.remove(&user);
            batch.del(TreeId::Groups, key);
        }
        let record = self.record.as_ref().expect("callers check the group exists");
        batch.put(
            TreeId::Groups,
            storage::scoped(&group, kind::META),
            record.encode_to_vec(),
        );
        let router = self.args.router.clone();
        self.args.storage.commit(
            batch,
            Box::new(move |r| match r {
                Ok(()) => router.to_inbox(&user, InboxMsg::Membership { group, joined, reply }),
                Err(e) => reply(Err(e.into())),
            }),
        );
    }

    fn post(
        &mut self,
        myself: &ActorRef<GroupMsg>,
        from: String,
        client_msg_id: String,
        text: String,
        reply: Reply<ChatResult<Appended>>,
    ) {
        if let Err(e) = self.check_member(&from) {
            return reply(Err(e));
        }
        let origin = inbox::private_origin(&from, &client_msg_id);
        let Some(reply) = self.pending.wait_for(&origin, reply) else {
            return;
        };
        match self.already_stored(&origin) {
            Ok(Some((done, again))) => {
                // Written again, and once that is copied, fanned out again (the first
                // write may have failed before its fan-out; inboxes drop duplicates).
                let (me, seq) = (myself.clone(), done.seq);
                let refan: Reply<ChatResult<Appended>> = Box::new(move |r| {
                    if r.is_ok() {
                        let _ = me.cast(GroupMsg::RetryFanout { seq });
                    }
                    reply(r);
                });
                return pending::confirm_again(&self.args.storage, again, done, refan);
            }
            Ok(None) => {}
            Err(e) => return reply(Err(e)),
        }
        let group = &self.args.group;
        let record = self.record.as_mut().expect("membership checked above");
        let seq = record.last_seq + 1;
        record.last_seq = seq;
        let message = GroupMessage {
            message_id: format!("g:{group}:{seq}"),
            recipients: self.members.iter().filter(|m| **m != from).cloned().collect(),
            from,
            timestamp_ms: storage::now_ms(),
            text,
            client_msg_id,
        };
        let mut batch = Writes::default();
        batch.put(
            TreeId::Groups,
            storage::seq_key(group, kind::MESSAGE, seq),
            message.encode_to_vec(),
        );
        batch.put(
            TreeId::Groups,
            storage::suffix_key(group, kind::ORIGIN, &origin),
            storage::seq_value(seq),
        );
        batch.put(
            TreeId::Groups,
            storage::scoped(group, kind::META),
            record.encode_to_vec(),
        );
        batch.put(TreeId::Fanout, group.as_bytes(), []);
        self.pending.push(seq, origin, message, reply);
        pending::commit_then(&self.args.storage, batch, myself, seq, |seq, result| {
            GroupMsg::Persisted { seq, result }
        });
    }

    /// The earlier answer for a post already stored, and its records to write again
    /// (see [`pending::confirm_again`]).
    fn already_stored(&self, origin: &[u8]) -> ChatResult<Option<(Appended, Writes)>> {
        let (storage, group) = (&self.args.storage, &self.args.group);
        let Some(seq) = storage.group_origin(group, origin)? else {
            return Ok(None);
        };
        let Some(m) = storage.group_message(group, seq)? else {
            return Ok(None);
        };
        let mut again = Writes::default();
        again.put(
            TreeId::Groups,
            storage::seq_key(group, kind::MESSAGE, seq),
            m.encode_to_vec(),
        );
        again.put(
            TreeId::Groups,
            storage::suffix_key(group, kind::ORIGIN, origin),
            storage::seq_value(seq),
        );
        let done = Appended {
            message_id: m.message_id,
            seq,
            timestamp_ms: m.timestamp_ms,
        };
        Ok(Some((done, again)))
    }

    fn persisted(&mut self, myself: &ActorRef<GroupMsg>, seq: u64, result: Result<(), pending::WriteFailed>) {
        let Some(w) = self.pending.complete(seq) else {
            tracing::error!(group = %self.args.group, seq, "completion without a pending post");
            return;
        };
        if let Err(e) = result {
            tracing::warn!(group = %self.args.group, seq, error = %e.error, "group write failed");
            for r in w.replies {
                r(Err(e.error.clone()));
            }
            // Not fanned out: it may be missing from the replica that takes the group
            // over, which would give its seq to another post. A resend fans it out
            // once it is copied.
            return;
        }
        let appended = Appended {
            message_id: w.payload.message_id.clone(),
            seq: w.seq,
            timestamp_ms: w.payload.timestamp_ms,
        };
        for r in w.replies {
            r(Ok(appended.clone()));
        }
        self.fan_out(myself, w.seq, &w.payload);
    }

    /// Sends the message to every recipient's inbox and tracks their answers.
    fn fan_out(&mut self, myself: &ActorRef<GroupMsg>, seq: u64, message: &GroupMessage) {
        self.fanouts.insert(
            seq,
            Fanout {
                remaining: message.recipients.len(),
                failed: false,
            },
        );
        for member in &message.recipients {
            let me = myself.clone();
            let draft = Draft {
                from: message.from.clone(),
                kind: ConversationKind::Group,
                conversation: self.args.group.clone(),
                text: message.text.clone(),
                group: Some((seq, message.message_id.clone(), message.timestamp_ms)),
                receipt: None,
                own_copy: None,
            };
            self.args.router.to_inbox(
                member,
                InboxMsg::Append {
                    origin: inbox::group_origin(&self.args.group, seq),
                    draft,
                    reply: reply(move |r: ChatResult<Appended>| {
                        let _ = me.cast(GroupMsg::FanoutAck { seq, ok: r.is_ok() });
                    }),
                },
            );
        }
        self.fanout_ack_done();
    }

    fn fanout_ack(&mut self, myself: &ActorRef<GroupMsg>, seq: u64, ok: bool) {
        if let Some(f) = self.fanouts.get_mut(&seq) {
            f.remaining = f.remaining.saturating_sub(1);
            f.failed |= !ok;
            if f.remaining == 0 && f.failed {
                // The entry stays (failed) so that fanout_seq does not pass it.
                tracing::debug!(group = %self.args.group, seq, "fan-out incomplete; retrying");
                myself.send_after(FANOUT_RETRY, move || GroupMsg::RetryFanout { seq });
            }
        }
        self.fanout_ack_done();
    }

    /// Advances `fanout_seq` over the completed prefix and persists it (no one waits on it:
    /// after a crash the fan-out is redone and the inboxes drop the copies).
    fn fanout_ack_done(&mut self) {
        let mut advanced = None;
        while let Some(entry) = self.fanouts.first_entry() {
            let f = entry.get();
            if f.remaining > 0 || f.failed {
                break;
            }
            advanced = Some(*entry.key());
            entry.remove();
        }
        let (Some(seq), Some(record)) = (advanced, self.record.as_mut()) else {
            return;
        };
        record.fanout_seq = record.fanout_seq.max(seq);
        let mut batch = Writes::default();
        batch.put(
            TreeId::Groups,
            storage::scoped(&self.args.group, kind::META),
            record.encode_to_vec(),
        );
        if record.fanout_seq == record.last_seq {
            batch.del(TreeId::Fanout, self.args.group.as_bytes());
        }
        self.args.storage.commit(batch, Box::new(|_| {}));
    }

    /// Redoes the fan-out of messages a crash interrupted.
    fn resume_fanout(&mut self, myself: &ActorRef<GroupMsg>) -> storage::Result<()> {
        let Some(record) = &self.record else {
            return Ok(());
        };
        let (from, to) = (record.fanout_seq + 1, record.last_seq);
        if from > to {
            // A crash after the fan-out but before its marker was cleared.
            let mut done = Writes::default();
            done.del(TreeId::Fanout, self.args.group.as_bytes());
            self.args.storage.commit(done, Box::new(|_| {}));
        }
        for seq in from..=to {
            if let Some(message) = self.args.storage.group_message(&self.args.group, seq)? {
                tracing::info!(group = %self.args.group, seq, "resuming interrupted fan-out");
                self.fan_out(myself, seq, &message);
            }
        }
        Ok(())
    }

    fn history(&self, user: &str, before: u64, limit: usize) -> ChatResult<(Vec<v1::Delivery>, u64)> {
        self.check_member(user)?;
        let before = if before == 0 { u64::MAX } else { before };
        let page = self.args.storage.group_before(&self.args.group, before, limit)?;
        let next = match page.last() {
            Some((seq, _)) if page.len() == limit && *seq > 1 => *seq,
            _ => 0,
        };
        let messages = page
            .into_iter()
            .map(|(seq, m)| v1::Delivery {
                seq: 0,
                message_id: m.message_id,
                from: m.from,
                kind: ConversationKind::Group as i32,
                conversation: self.args.group.clone(),
                timestamp_ms: m.timestamp_ms,
                text: m.text,
                group_seq: seq,
                receipt: None,
            })
            .collect();
        Ok((messages, next))
    }
}
