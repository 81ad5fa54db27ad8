//! Serving clients through the Raft core: every request a
//! session routes becomes a command proposed to the leader of its partition (a write,
//! acknowledged once a majority of the partition's replicas has it durable and it is
//! applied), or a query answered there after a read barrier (never from a deposed
//! leader's records). Nothing here decides anything: `chat_state` does, the same on
//! every replica.
//!
//! - Pushes: whoever proposed an inbox entry pushes it, once committed, to the user's
//!   sessions on every node (`Remote::push_everywhere`); a push lost on the way is
//!   only a shortcut lost, the entry waits in the inbox for the session's next sync.
//! - Group posts: a post is acknowledged once it is in the group's log; its fan-out
//!   into members' inboxes follows `chat_state::fanout`'s plan, read at the group's
//!   leader, batch by destination partition, in group order. The node that proposed
//!   the post starts it; the group's leader resumes any fan-out left pending (the
//!   pending marker is part of the records), every [`FANOUT_SWEEP`].
//! - Receipts: an acknowledgement that moves a cursor stores a receipt in each
//!   sender's inbox, deduplicated by (kind, reader, message).

mod changes;
mod contacts;
mod devices;
mod groups;

use crate::actors::Reply;
use crate::consensus::disk::{Disk, Pending};
use crate::consensus::driver::Handle;
use crate::error::{ChatError, ChatResult};
use crate::partition::{self, Partition};
use crate::remote::{self, Remote};
use crate::request::{
    self as inbox, AccountMsg, AckKind, Appended, Draft, GroupMsg, InboxMsg, Page, Route, Target,
};
use crate::storage;
use chat_protocol::internal::answer::{self, A};
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::outcome::{self, Fanned, Posted};
use chat_protocol::internal::query::{self, Q};
use chat_protocol::internal::{Command, InboxEntry, Query, UserPush};
use chat_protocol::v1::{self, ConversationKind, server_frame};
use prost::Message;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long after the start the first retention sweep runs (the later ones run every
/// `storage.retention_sweep_minutes`).
pub const RETENTION_FIRST_SWEEP: Duration = Duration::from_secs(5);
/// How often the leader of a partition looks for group fan-outs left pending there.
pub const FANOUT_SWEEP: Duration = Duration::from_secs(2);
/// Most posts one fan-out plan covers.
const FANOUT_POSTS: u64 = 1024;
/// Attempts to store one receipt before giving up.
const RECEIPT_ATTEMPTS: u32 = 12;
/// How long a group's receipts wait for the members' inboxes.
const RECEIPTS_WAIT: Duration = Duration::from_secs(5);

/// The requests of this node's sessions, served by the Raft core.
pub struct Served {
    remote: Arc<Remote>,
    consensus: Handle,
    /// This node's records (to find pending fan-outs of partitions led here).
    disk: Disk,
    retention: command::Retention,
    runtime: tokio::runtime::Handle,
    /// Groups whose fan-out runs here, and whether it must look again when done.
    fanouts: Mutex<HashMap<String, bool>>,
    /// Contact updates whose delivery runs here.
    contact_deliveries: contacts::Deliveries,
    /// Itself, for work that outlives a call.
    myself: Weak<Served>,
}

impl Served {
    /// Serves through `consensus`, reaching leaders over `remote`; starts the sweep
    /// for pending fan-outs. Must run inside the runtime.
    pub fn start(
        remote: Arc<Remote>,
        consensus: Handle,
        disk: Disk,
        max_messages: u64,
        max_age: Option<Duration>,
        sweep_every: Duration,
    ) -> Arc<Self> {
        let served = Arc::new_cyclic(|myself| Self {
            remote,
            consensus,
            disk,
            retention: command::Retention {
                max_messages,
                max_age_ms: max_age.map_or(0, |a| a.as_millis() as u64),
            },
            runtime: tokio::runtime::Handle::current(),
            fanouts: Mutex::default(),
            contact_deliveries: Mutex::default(),
            myself: myself.clone(),
        });
        tokio::spawn(sweep(Arc::downgrade(&served)));
        if max_messages > 0 || max_age.is_some() {
            tokio::spawn(sweep_retention(Arc::downgrade(&served), sweep_every));
        }
        served
    }

    fn propose(
        &self,
        p: Partition,
        op: Op,
        reply: impl FnOnce(ChatResult<outcome::Result>) + Send + 'static,
    ) {
        let command = Command { op: Some(op) }.encode_to_vec();
        self.remote
            .propose(p, command, Box::new(move |r| reply(r.and_then(remote::decided))));
    }

    fn read(&self, p: Partition, q: Q, reply: impl FnOnce(ChatResult<A>) + Send + 'static) {
        self.remote.read(
            p,
            Query { q: Some(q) },
            Box::new(move |r| reply(r.and_then(remote::answered))),
        );
    }

    async fn propose_async(&self, p: Partition, op: Op) -> ChatResult<outcome::Result> {
        self.remote.propose_op(p, op).await
    }

    async fn read_async(&self, p: Partition, q: Q) -> ChatResult<A> {
        self.remote.query(p, q).await
    }

    // ---- accounts -------------------------------------------------------------

    fn account(&self, user: String, msg: AccountMsg) {
        let p = partition::of_user(&user);
        match msg {
            AccountMsg::Get { reply } => self.read(p, Q::Account(user), move |r| {
                reply(r.and_then(|a| match a {
                    A::Account(record) => Ok(Some(record)),
                    A::NotFound(_) => Ok(None),
                    other => Err(unexpected(&other)),
                }))
            }),
            AccountMsg::Create { record, reply } => {
                let op = Op::CreateAccount(command::CreateAccount {
                    user,
                    record: Some(record),
                });
                self.propose(p, op, move |r| {
                    reply(r.and_then(|o| match o {
                        outcome::Result::Done(_) => Ok(true),
                        outcome::Result::Exists(_) => Ok(false),
                        other => Err(unexpected_outcome(&other)),
                    }))
                });
            }
            AccountMsg::PutToken { token, record, reply } => {
                let op = Op::PutToken(command::PutToken {
                    user,
                    token,
                    record: Some(record),
                });
                self.propose(p, op, move |r| reply(r.map(|_| ())));
            }
            AccountMsg::GetToken { token, reply } => {
                self.read(p, Q::Token(query::TokenKey { user, token }), move |r| {
                    reply(r.and_then(|a| match a {
                        A::Token(record) => Ok(Some(record)),
                        A::NotFound(_) => Ok(None),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            AccountMsg::RevokeToken { token, reply } => {
                let op = Op::RevokeToken(command::RevokeToken { user, token });
                self.propose(p, op, move |r| reply(r.map(|_| ())));
            }
            AccountMsg::SetDisabled { disabled, reply } => {
                let op = Op::SetDisabled(command::SetDisabled {
                    user: user.clone(),
                    disabled,
                });
                let log_out = disabled.then(|| (0, "this account was disabled by an operator".into()));
                self.revoke(p, op, user, log_out, reply);
            }
            AccountMsg::RevokeTokens {
                keep,
                password_hash,
                skip_session,
                reason,
                reply,
            } => {
                let op = Op::RevokeTokens(command::RevokeTokens {
                    user: user.clone(),
                    keep,
                    password_hash,
                });
                self.revoke(p, op, user, Some((skip_session, reason)), reply);
            }
        }
    }

    /// Proposes a command that revokes tokens of `user`; once done, with `log_out`
    /// (a session to spare, a reason), the user's sessions on every node are logged out
    /// and closed with the reason.
    fn revoke(
        &self,
        p: Partition,
        op: Op,
        user: String,
        log_out: Option<(u64, String)>,
        reply: Reply<ChatResult<()>>,
    ) {
        let remote = self.remote.clone();
        self.propose(p, op, move |r| match r {
            Ok(outcome::Result::Done(_)) => {
                if let Some((skip_session, reason)) = log_out {
                    remote.push_everywhere(UserPush {
                        user,
                        seq: 0,
                        frame: Vec::new(),
                        skip_session,
                        log_out: reason,
                        log_out_device: String::new(),
                    });
                }
                reply(Ok(()));
            }
            Ok(outcome::Result::NotFound(_)) => reply(Err(ChatError::NotFound(format!("user {user}")))),
            Ok(other) => reply(Err(unexpected_outcome(&other))),
            Err(e) => reply(Err(e)),
        });
    }

    // ---- inboxes --------------------------------------------------------------

    fn inbox(self: &Arc<Self>, user: String, msg: InboxMsg) {
        let p = partition::of_user(&user);
        match msg {
            InboxMsg::Append { origin, draft, reply } => self.append(user, origin, draft, reply),
            InboxMsg::Change {
                client_msg_id,
                change,
                edit_window_ms,
                session,
                reply,
            } => {
                let ask = changes::ChangeAsk {
                    client_msg_id,
                    change,
                    edit_window_ms,
                    session,
                };
                self.change_private(user, ask, reply);
            }
            InboxMsg::Withdraw {
                message_id,
                to,
                client_msg_id,
                session,
                reply,
            } => self.withdraw(user, message_id, to, client_msg_id, session, reply),
            InboxMsg::Attach { session, reply } => {
                // Pushes for the user reach the session from now on (its node is this one).
                self.remote.set_session_user(session, Some(user.clone()));
                self.read(p, Q::InboxMeta(user), move |r| {
                    reply(r.and_then(|a| match a {
                        A::InboxMeta(meta) => Ok(meta),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            InboxMsg::Fetch { after, limit, reply } => {
                let q = Q::Entries(query::Entries {
                    user,
                    after,
                    limit: limit as u32,
                });
                self.read(p, q, move |r| {
                    reply(r.and_then(|a| match a {
                        A::Entries(e) => {
                            let meta = e.meta.unwrap_or_default();
                            Ok(Page {
                                messages: deliveries(e.entries),
                                last_seq: meta.last_seq,
                                first_seq: meta.first_seq,
                            })
                        }
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            InboxMsg::History {
                peer,
                before,
                limit,
                reply,
            } => {
                let q = Q::PrivateHistory(query::PrivateHistory {
                    user,
                    peer,
                    before,
                    limit: limit as u32,
                    scan: (limit as u32).saturating_mul(20),
                });
                self.read(p, q, move |r| {
                    reply(r.and_then(|a| match a {
                        A::Entries(e) => Ok((deliveries(e.entries), e.next)),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            InboxMsg::Ack { kind, up_to, reply } => {
                let me = self.clone();
                self.runtime
                    .spawn(async move { reply(me.ack(user, kind, up_to).await) });
            }
            InboxMsg::Membership { group, joined, reply } => {
                let op = Op::Membership(command::Membership { user, group, joined });
                self.propose(p, op, move |r| reply(r.map(|_| ())));
            }
            InboxMsg::GroupState {
                group,
                group_seq,
                reply,
            } => {
                let q = Q::GroupState(query::GroupAsk {
                    group,
                    user,
                    group_seq,
                });
                self.read(p, q, move |r| {
                    reply(r.and_then(|a| match a {
                        A::Flags(f) => Ok((f.delivered, f.read)),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            InboxMsg::Groups { reply } => self.read(p, Q::GroupsOf(user), move |r| {
                reply(r.and_then(|a| match a {
                    A::Names(n) => Ok(n.names),
                    other => Err(unexpected(&other)),
                }))
            }),
            // Sessions leave the directory with `Remote::set_session_user`; retention
            // runs with each append and `sweep_retention`; there are no inbox actors.
            // Its node forgets the session itself (`Remote::set_session_user`).
            InboxMsg::Detach { .. } => {}
        }
    }

    /// Stores `draft` in `user`'s inbox once per `origin`; the answer is where it is
    /// (the first place, for a resend), and every session of the user gets it.
    fn append(&self, user: String, origin: Vec<u8>, draft: Draft, reply: Reply<ChatResult<Appended>>) {
        let now = storage::now_ms();
        // Messages (and own copies) need the account; fan-outs and receipts do not.
        let require_account = draft.group.is_none() && draft.receipt.is_none();
        let skip_session = draft.named.as_ref().map_or(0, |c| c.skip_session);
        // The id of a receipt or a message is assigned where it is applied.
        let mut entry = draft.into_entry(|_| String::new(), now);
        let op = Op::Append(command::Append {
            user: user.clone(),
            origin,
            entry: Some(entry.clone()),
            require_account,
            now_ms: now,
            retention: Some(self.retention),
        });
        let remote = self.remote.clone();
        self.propose(partition::of_user(&user), op, move |r| match r {
            // A resend finds the first one: pushed again (sessions drop what they have),
            // in case whoever stored it first could not push it.
            Ok(outcome::Result::Appended(a) | outcome::Result::Duplicate(a)) => {
                entry.message_id.clone_from(&a.message_id);
                entry.timestamp_ms = a.timestamp_ms;
                push(&remote, &user, a.seq, &entry, skip_session);
                reply(Ok(Appended {
                    message_id: a.message_id,
                    seq: a.seq,
                    timestamp_ms: a.timestamp_ms,
                }));
            }
            Ok(outcome::Result::NotFound(_)) => reply(Err(ChatError::NotFound(format!("user {user}")))),
            Ok(outcome::Result::NotAllowed(_)) => reply(Err(ChatError::NotAllowed(user))),
            Ok(other) => reply(Err(unexpected_outcome(&other))),
            Err(e) => reply(Err(e)),
        });
    }

    async fn append_async(&self, user: String, origin: Vec<u8>, draft: Draft) -> ChatResult<Appended> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.append(
            user,
            origin,
            draft,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Moves a cursor; then stores a receipt for the private messages it passed, one per
    /// sender (for its latest message there: a receipt covers the earlier ones). One
    /// command: the state machine clamps the cursor to the inbox and names the messages
    /// it passed, so the cursor moves exactly as far as the receipts cover.
    async fn ack(self: &Arc<Self>, user: String, kind: AckKind, up_to: u64) -> ChatResult<(u64, u64)> {
        let p = partition::of_user(&user);
        let receipt_kind = match kind {
            AckKind::Delivered => v1::ReceiptKind::Delivered,
            AckKind::Read => v1::ReceiptKind::Read,
        };
        let op = Op::Ack(command::Ack {
            user: user.clone(),
            read: kind == AckKind::Read,
            up_to,
        });
        let cursors = match self.propose_async(p, op).await? {
            outcome::Result::Cursors(c) => c,
            other => return Err(unexpected_outcome(&other)),
        };
        let now = storage::now_ms();
        for passed in cursors.passed {
            let receipt = v1::Receipt {
                kind: receipt_kind as i32,
                message_id: passed.message_id,
                by: user.clone(),
                timestamp_ms: now,
                seq: 0,
            };
            let me = self.clone();
            let sender = passed.from;
            self.runtime
                .spawn(async move { me.store_receipt(sender, receipt).await });
        }
        Ok((cursors.delivered, cursors.read))
    }

    /// Stores a receipt in its sender's inbox, retrying with backoff while that
    /// partition has no leader.
    async fn store_receipt(&self, sender: String, receipt: v1::Receipt) {
        for attempt in 1..=RECEIPT_ATTEMPTS {
            let (origin, draft) = (inbox::receipt_origin(&receipt), Draft::receipt(receipt.clone()));
            match self.append_async(sender.clone(), origin, draft).await {
                Ok(_) | Err(ChatError::NotFound(_)) => return,
                Err(e) if attempt == RECEIPT_ATTEMPTS => {
                    tracing::warn!(sender = %sender, error = %e, "receipt not stored");
                }
                Err(_) => {
                    let wait =
                        (Duration::from_millis(500) * 2u32.pow(attempt - 1)).min(Duration::from_secs(10));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    // ---- groups ---------------------------------------------------------------

    fn group(self: &Arc<Self>, group: String, msg: GroupMsg) {
        let p = partition::of_group(&group);
        let missing = {
            let group = group.clone();
            move || no_such_group(&group)
        };
        match msg {
            GroupMsg::Admin { action, reply } => {
                let me = self.clone();
                self.runtime
                    .spawn(async move { reply(me.group_admin(group, action).await) });
            }
            GroupMsg::Info { user, reply } => {
                let q = Q::GroupInfo(query::GroupAsk {
                    group: group.clone(),
                    user,
                    group_seq: 0,
                });
                self.read(p, q, move |r| {
                    reply(r.and_then(|a| match a {
                        A::GroupInfo(info) => Ok(info),
                        A::NotFound(_) => Err(missing()),
                        A::NotAMember(_) => Err(ChatError::NotAMember(group)),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            GroupMsg::Create {
                user,
                private,
                title,
                reply,
            } => {
                let op = Op::CreateGroup(command::CreateGroup {
                    group: group.clone(),
                    creator: user.clone(),
                    now_ms: storage::now_ms(),
                    private,
                    title,
                });
                let me = self.clone();
                self.propose(p, op, move |r| match r {
                    Ok(outcome::Result::Done(_)) => me.membership(user, group, true, reply),
                    // Maybe this user's own earlier attempt, whose answer was lost (its
                    // membership may not be recorded yet): the creator is a member.
                    Ok(outcome::Result::Exists(_)) => me.created_by(user, group, reply),
                    Ok(other) => reply(Err(unexpected_outcome(&other))),
                    Err(e) => reply(Err(e)),
                });
            }
            GroupMsg::Join { user, reply } => self.join_or_leave(p, group, user, true, reply),
            GroupMsg::Leave { user, reply } => self.join_or_leave(p, group, user, false, reply),
            GroupMsg::Members { user, reply } => {
                let q = Q::Members(query::GroupAsk {
                    group: group.clone(),
                    user,
                    group_seq: 0,
                });
                self.read(p, q, move |r| {
                    reply(r.and_then(|a| match a {
                        A::Names(n) => Ok(n.names),
                        A::NotFound(_) => Err(missing()),
                        A::NotAMember(_) => Err(ChatError::NotAMember(group)),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            GroupMsg::Post {
                from,
                client_msg_id,
                text,
                reply_to,
                attachments,
                reply,
            } => {
                let op = Op::Post(command::Post {
                    group: group.clone(),
                    from,
                    client_msg_id,
                    text,
                    now_ms: storage::now_ms(),
                    reply_to,
                    attachments,
                });
                let me = self.clone();
                self.propose(p, op, move |r| match r {
                    Ok(outcome::Result::Posted(Posted {
                        group_seq,
                        message_id,
                        timestamp_ms,
                        ..
                    })) => {
                        reply(Ok(Appended {
                            message_id,
                            seq: group_seq,
                            timestamp_ms,
                        }));
                        me.fan_out(group);
                    }
                    Ok(outcome::Result::NotFound(_)) => reply(Err(missing())),
                    Ok(outcome::Result::NotAMember(_)) => reply(Err(ChatError::NotAMember(group))),
                    Ok(other) => reply(Err(unexpected_outcome(&other))),
                    Err(e) => reply(Err(e)),
                });
            }
            GroupMsg::Change {
                client_msg_id,
                change,
                edit_window_ms,
                reply,
            } => {
                let ask = changes::ChangeAsk {
                    client_msg_id,
                    change,
                    edit_window_ms,
                    session: 0,
                };
                self.change_group(group, ask, reply);
            }
            GroupMsg::History {
                user,
                before,
                limit,
                reply,
            } => {
                let q = Q::GroupHistory(query::GroupHistory {
                    group: group.clone(),
                    user,
                    before,
                    limit: limit as u32,
                });
                self.read(p, q, move |r| {
                    reply(r.and_then(|a| match a {
                        A::Posts(posts) => Ok((group_deliveries(&group, posts.posts), posts.next)),
                        A::NotFound(_) => Err(missing()),
                        A::NotAMember(_) => Err(ChatError::NotAMember(group)),
                        other => Err(unexpected(&other)),
                    }))
                });
            }
            GroupMsg::Receipts {
                user,
                group_seq,
                reply,
            } => {
                let me = self.clone();
                self.runtime
                    .spawn(async move { reply(me.group_receipts(group, user, group_seq).await) });
            }
        }
    }

    /// Records in the user's partition that the user joined or left the group.
    fn membership(&self, user: String, group: String, joined: bool, reply: Reply<ChatResult<()>>) {
        let op = Op::Membership(command::Membership {
            user: user.clone(),
            group,
            joined,
        });
        self.propose(partition::of_user(&user), op, move |r| reply(r.map(|_| ())));
    }

    /// A `CreateGroup` found the group: if `user` created it (an earlier attempt whose
    /// answer was lost), it is done once the user's list has it; otherwise the name is
    /// taken.
    fn created_by(self: &Arc<Self>, user: String, group: String, reply: Reply<ChatResult<()>>) {
        let me = self.clone();
        let p = partition::of_group(&group);
        self.read(p, Q::GroupCreator(group.clone()), move |r| match r {
            Ok(A::Names(n)) if n.names.first() == Some(&user) => me.membership(user, group, true, reply),
            Ok(_) => reply(Err(ChatError::AlreadyExists(group))),
            Err(e) => reply(Err(e)),
        });
    }

    /// Where post `group_seq` stands in each recipient's inbox.
    async fn group_receipts(
        &self,
        group: String,
        user: String,
        group_seq: u64,
    ) -> ChatResult<Vec<v1::MemberReceipt>> {
        let q = Q::GroupPost(query::GroupAsk {
            group: group.clone(),
            user,
            group_seq,
        });
        let post = match self.read_async(partition::of_group(&group), q).await? {
            A::Post(post) => post,
            A::NotFound(_) => return Err(ChatError::NotFound(format!("message {group_seq} of #{group}"))),
            A::NotAMember(_) => return Err(ChatError::NotAMember(group)),
            other => return Err(unexpected(&other)),
        };
        let asks = post.recipients.into_iter().map(|member| {
            let q = Q::GroupState(query::GroupAsk {
                group: group.clone(),
                user: member.clone(),
                group_seq,
            });
            async move {
                let state =
                    tokio::time::timeout(RECEIPTS_WAIT, self.read_async(partition::of_user(&member), q))
                        .await;
                match state {
                    Ok(Ok(A::Flags(f))) => v1::MemberReceipt {
                        user: member,
                        delivered: f.delivered,
                        read: f.read,
                        unknown: false,
                    },
                    _ => v1::MemberReceipt {
                        user: member,
                        unknown: true,
                        ..Default::default()
                    },
                }
            }
        });
        let mut out = futures::future::join_all(asks).await;
        out.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(out)
    }

    /// Runs the fan-out of `group` from here until it is complete (once at a time per
    /// group; a request while it runs makes it look again when done).
    fn fan_out(self: &Arc<Self>, group: String) {
        {
            let mut running = self.fanouts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(again) = running.get_mut(&group) {
                *again = true;
                return;
            }
            running.insert(group.clone(), false);
        }
        let me = self.clone();
        self.runtime.spawn(async move {
            loop {
                let result = me.fan_out_until_complete(&group).await;
                let mut running = me.fanouts.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = &result {
                    // The sweep at the group's leader takes it up again.
                    tracing::debug!(group = %group, error = %e, "fan-out interrupted");
                }
                if result.is_ok() && running.get(&group) == Some(&true) {
                    running.insert(group.clone(), false);
                    continue;
                }
                running.remove(&group);
                return;
            }
        });
    }

    /// Follows the group's fan-out plan, read at its leader, until nothing is left:
    /// each batch goes to its destination partition as one command, and only once it
    /// is applied does the partition's cursor move (so order holds whatever fails).
    async fn fan_out_until_complete(&self, group: &str) -> ChatResult<()> {
        let p = partition::of_group(group);
        loop {
            let q = Q::FanoutPlan(query::GroupAsk {
                group: group.to_owned(),
                user: String::new(),
                group_seq: FANOUT_POSTS,
            });
            let plan = match self.read_async(p, q).await? {
                A::Plan(plan) => plan,
                other => return Err(unexpected(&other)),
            };
            if plan.complete_up_to > 0 {
                let done = Op::FanoutDone(command::FanoutDone {
                    group: group.to_owned(),
                    partition: 0,
                    group_seq: plan.complete_up_to,
                    all: true,
                });
                self.propose_async(p, done).await?;
            }
            if plan.batches.is_empty() {
                if plan.complete_up_to == 0 {
                    return Ok(());
                }
                // A window is complete: the next plan looks past it.
                continue;
            }
            let batches = plan.batches.into_iter().map(|b| self.fan_out_batch(group, b));
            for result in futures::future::join_all(batches).await {
                result?;
            }
        }
    }

    async fn fan_out_batch(&self, group: &str, batch: answer::Batch) -> ChatResult<()> {
        let to = Partition::try_from(batch.partition)
            .map_err(|_| ChatError::Internal(format!("no partition {}", batch.partition)))?;
        let op = Op::Fanout(command::Fanout {
            group: group.to_owned(),
            items: batch.items.clone(),
            now_ms: storage::now_ms(),
            retention: Some(self.retention),
        });
        let seqs = match self.propose_async(to, op).await? {
            outcome::Result::Fanned(Fanned { seqs }) => seqs,
            other => return Err(unexpected_outcome(&other)),
        };
        for (item, seq) in batch.items.into_iter().zip(seqs) {
            // 0: the member has no account any more.
            if seq == 0 {
                continue;
            }
            let entry = InboxEntry {
                message_id: item.message_id,
                from: item.from,
                kind: ConversationKind::Group as u32,
                conversation: group.to_owned(),
                timestamp_ms: item.timestamp_ms,
                text: item.text,
                group_seq: item.group_seq,
                group_event: item.event,
                reply_to: item.reply_to,
                attachments: item.attachments,
                change: item.change,
                mentioned: item.mentioned,
                ..InboxEntry::default()
            };
            push(&self.remote, &item.user, seq, &entry, 0);
        }
        let done = Op::FanoutDone(command::FanoutDone {
            group: group.to_owned(),
            partition: batch.partition,
            group_seq: batch.up_to,
            all: false,
        });
        self.propose_async(partition::of_group(group), done).await?;
        Ok(())
    }

    /// Joins `user` to `group` or makes it leave, then records the change in the user's
    /// list of groups and starts the group's fan-out (members see the change).
    fn join_or_leave(
        self: &Arc<Self>,
        p: Partition,
        group: String,
        user: String,
        joined: bool,
        reply: Reply<ChatResult<()>>,
    ) {
        let now_ms = storage::now_ms();
        let op = if joined {
            Op::JoinGroup(command::JoinGroup {
                group: group.clone(),
                user: user.clone(),
                now_ms,
            })
        } else {
            Op::LeaveGroup(command::LeaveGroup {
                group: group.clone(),
                user: user.clone(),
                now_ms,
            })
        };
        let me = self.clone();
        self.propose(p, op, move |r| match r {
            Ok(outcome::Result::Done(_)) => {
                me.fan_out(group.clone());
                me.membership(user, group, joined, reply);
            }
            Ok(outcome::Result::NotFound(_)) => reply(Err(no_such_group(&group))),
            Ok(outcome::Result::Forbidden(why)) => reply(Err(ChatError::Forbidden(why))),
            // Maybe an earlier attempt left the group but not the user's list: the list
            // is made to agree, and the answer stays NOT_A_MEMBER.
            Ok(outcome::Result::NotAMember(_)) if !joined => me.membership(
                user,
                group.clone(),
                false,
                Box::new(move |_| reply(Err(ChatError::NotAMember(group)))),
            ),
            Ok(other) => reply(Err(unexpected_outcome(&other))),
            Err(e) => reply(Err(e)),
        });
    }

    /// Starts the fan-out of every group with one pending in a partition led here.
    fn resume_fanouts(self: &Arc<Self>) {
        for p in self.consensus.led() {
            let mut nothing_pending = Pending::new();
            let records = self.disk.overlay(&mut nothing_pending);
            match chat_state::fanout::pending_groups(p, &records, 1024) {
                Ok(groups) => groups.into_iter().for_each(|g| self.fan_out(g)),
                Err(e) => tracing::warn!(partition = p, error = %e, "pending fan-outs not read"),
            }
        }
    }
}

impl Route for Served {
    fn route(&self, target: Target) {
        // Routing happens through an `Arc<dyn Route>`; the work needs the `Arc`.
        let Some(me) = self.myself.upgrade() else {
            return target.fail(stopped());
        };
        match target {
            Target::Inbox(user, msg) => me.inbox(user, msg),
            Target::Group(group, msg) => me.group(group, msg),
            Target::Account(user, msg) => me.account(user, msg),
            Target::Contacts(user, msg) => me.contacts(user, msg),
            Target::Devices(user, msg) => me.devices(user, msg),
        }
    }
}

/// Every [`FANOUT_SWEEP`], resumes the fan-outs pending in partitions led here.
async fn sweep(served: Weak<Served>) {
    loop {
        tokio::time::sleep(FANOUT_SWEEP).await;
        match served.upgrade() {
            Some(served) => {
                served.resume_fanouts();
                served.resume_contact_deliveries();
            }
            None => return,
        }
    }
}

/// Applies retention to every inbox of the partitions led here (those that receive
/// nothing new, which no append trims): [`RETENTION_FIRST_SWEEP`] after the start, then
/// every `every`, a batch of inboxes per command (`chat_state`'s `Sweep`).
async fn sweep_retention(served: Weak<Served>, every: Duration) {
    let mut wait = RETENTION_FIRST_SWEEP.min(every);
    loop {
        tokio::time::sleep(wait).await;
        wait = every;
        let Some(led) = served.upgrade().map(|s| s.consensus.led()) else {
            return;
        };
        let (mut commands, mut partitions) = (0u64, 0usize);
        for p in led {
            let mut after = String::new();
            loop {
                let Some(me) = served.upgrade() else {
                    return;
                };
                let op = Op::Sweep(command::Sweep {
                    after: std::mem::take(&mut after),
                    limit: chat_state::machine::MAX_SWEEP_INBOXES,
                    now_ms: storage::now_ms(),
                    retention: Some(me.retention),
                });
                match me.propose_async(p, op).await {
                    Ok(outcome::Result::Swept(last)) if !last.is_empty() => {
                        commands += 1;
                        after = last;
                    }
                    Ok(_) => {
                        commands += 1;
                        break;
                    }
                    Err(e) => {
                        // Led elsewhere now, or no majority: its leader sweeps it.
                        tracing::debug!(partition = p, error = %e, "retention sweep skipped");
                        break;
                    }
                }
            }
            partitions += 1;
        }
        tracing::debug!(partitions, commands, "retention sweep done");
    }
}

/// Pushes an inbox entry at `seq` to the user's sessions on every node.
fn push(remote: &Arc<Remote>, user: &str, seq: u64, entry: &InboxEntry, skip_session: u64) {
    let frame = match &entry.receipt {
        Some(r) => inbox::encode_push(server_frame::Body::Receipt(v1::Receipt { seq, ..r.clone() })),
        None => inbox::encode_push(server_frame::Body::Delivery(inbox::to_delivery(seq, entry))),
    };
    remote.push_everywhere(UserPush {
        user: user.to_owned(),
        seq,
        frame: frame.to_vec(),
        skip_session,
        log_out: String::new(),
        log_out_device: String::new(),
    });
}

fn deliveries(entries: Vec<answer::Entry>) -> Vec<v1::Delivery> {
    entries
        .into_iter()
        .filter_map(|e| Some(inbox::to_delivery(e.seq, &e.entry?)))
        .collect()
}

fn group_deliveries(group: &str, posts: Vec<answer::Post>) -> Vec<v1::Delivery> {
    posts
        .into_iter()
        .filter_map(|p| {
            let m = p.message?;
            Some(v1::Delivery {
                seq: 0,
                message_id: m.message_id,
                from: m.from,
                kind: ConversationKind::Group as i32,
                conversation: group.to_owned(),
                timestamp_ms: m.timestamp_ms,
                text: m.text,
                group_seq: p.group_seq,
                group_event: m.event,
                reply_to: m.reply_to,
                attachments: m.attachments,
                edited: m.state.as_ref().is_some_and(|s| s.edited),
                recalled: m.state.as_ref().is_some_and(|s| s.recalled),
                reactions: m.state.map(|s| s.reactions).unwrap_or_default(),
                mentioned: !m.mentions.is_empty(),
                ..v1::Delivery::default()
            })
        })
        .collect()
}

fn stopped() -> ChatError {
    ChatError::Unavailable("node is shutting down".into())
}

fn unexpected(answer: &A) -> ChatError {
    ChatError::Internal(format!("unexpected answer {answer:?}"))
}

/// The answer about a group that does not exist.
pub(super) fn no_such_group(group: &str) -> ChatError {
    ChatError::NotFound(format!("group {group}"))
}

fn unexpected_outcome(outcome: &outcome::Result) -> ChatError {
    ChatError::Internal(format!("unexpected outcome {outcome:?}"))
}
