//! What a session asks of the cluster: the requests for a user's inbox, a group and an
//! account, each with the continuation that gets its answer. `crate::served` serves
//! them through the Raft core, wherever the partition's leader is; the session neither
//! knows nor cares where that is.

use crate::actors::Reply;
use crate::error::{ChatError, ChatResult};
use crate::partition::{self, Partition};
use bytes::{Bytes, BytesMut};
use chat_protocol::internal::{AccountRecord, InboxEntry, InboxMeta, TokenRecord};
use chat_protocol::v1::{self, ConversationKind, server_frame};
use chat_state::{contacts, governance};
use prost::Message;
use std::sync::Arc;

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
    /// A private message (or its sender's own copy): the id and time the sender's node
    /// gave it. `None`: named where it is applied (a receipt).
    pub named: Option<Box<Named>>,
    /// The message this one answers (empty: none).
    pub reply_to: String,
    /// Files it carries.
    pub attachments: Vec<v1::Attachment>,
}

/// A private message's id and time, chosen by its sender's node before either copy is
/// stored (`chat_state::keys::private_message_id`), so that the recipient's entry and
/// the sender's own copy are written at once under the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The message id (as in both inboxes and the SendAck).
    pub message_id: String,
    /// The sender's node's time.
    pub timestamp_ms: u64,
    /// For the own copy, the session that sent it: the copy is pushed to the sender's
    /// other sessions only (0: to every session).
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
    /// The entry to store: a group message keeps the group's id and time, a named
    /// message its name's; a receipt or an unnamed message gets `id(is_receipt)`
    /// (empty: assigned where it is applied) and, for a message, `now_ms`. The origin is
    /// the caller's.
    pub fn into_entry(self, id: impl FnOnce(bool) -> String, now_ms: u64) -> InboxEntry {
        let (message_id, timestamp_ms, group_seq) = match (&self.group, &self.receipt, &self.named) {
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
            reply_to: self.reply_to,
            attachments: self.attachments,
            ..InboxEntry::default()
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
            named: None,
            reply_to: String::new(),
            attachments: Vec::new(),
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

/// Requests for a user's inbox.
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
        /// The session (on this node): pushes for the user reach it from now on.
        session: u64,
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
    /// Change a message of this inbox (the recipient's, for a private message): the
    /// change is decided here, and a copy goes to the other participant's inbox.
    Change {
        /// Dedupe key of the change (per author of the change).
        client_msg_id: String,
        /// What; `by` is the user.
        change: v1::MessageChange,
        /// Edits of older messages are refused.
        edit_window_ms: u64,
        /// The session that asked: its own copy is not pushed back to it.
        session: u64,
        /// Gets the change's place in this inbox once both inboxes have it.
        reply: Reply<ChatResult<Appended>>,
    },
    /// Withdraw this user's own copy of a private message its recipient refused (the
    /// copy was written with the message: a recall of it, in this inbox only).
    Withdraw {
        /// The copy's id.
        message_id: String,
        /// The recipient (the copy's conversation).
        to: String,
        /// The refused message's client id (the withdrawal's dedupe key comes from it).
        client_msg_id: String,
        /// The session that sent the message: not pushed the withdrawal (it got the
        /// refusal, and never the copy).
        session: u64,
        /// Runs once durable (or failed).
        reply: Reply<ChatResult<()>>,
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
}

impl InboxMsg {
    /// Answers the request, if it expects an answer, with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Append { reply, .. } => reply(Err(err)),
            Self::Change { reply, .. } => reply(Err(err)),
            Self::Attach { reply, .. } => reply(Err(err)),
            Self::Fetch { reply, .. } => reply(Err(err)),
            Self::History { reply, .. } => reply(Err(err)),
            Self::Ack { reply, .. } => reply(Err(err)),
            Self::Membership { reply, .. } => reply(Err(err)),
            Self::Withdraw { reply, .. } => reply(Err(err)),
            Self::Groups { reply, .. } => reply(Err(err)),
            Self::GroupState { reply, .. } => reply(Err(err)),
            Self::Detach { .. } => {}
        }
    }
}

/// Requests for a group.
pub enum GroupMsg {
    /// An admin action; once done, its consequences outside the group's partition
    /// (the target's list of groups, an invitee's inbox) follow before the answer.
    Admin {
        /// What.
        action: GroupAction,
        /// Runs once done.
        reply: Reply<ChatResult<()>>,
    },
    /// Settings and members with roles, for `user`.
    Info {
        /// Who asks.
        user: String,
        /// Gets them.
        reply: Reply<ChatResult<v1::GroupInfo>>,
    },
    /// Create the group with `user` as its owner and first member.
    Create {
        /// The creator.
        user: String,
        /// Invitation only, history hidden from new members.
        private: bool,
        /// Its title.
        title: String,
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
        /// The message it answers (empty: none).
        reply_to: String,
        /// Files it carries (their readers granted already).
        attachments: Vec<v1::Attachment>,
        /// Gets the id and group seq once durable.
        reply: Reply<ChatResult<Appended>>,
    },
    /// Change a message of the group (decided in the group's order, then fanned out).
    Change {
        /// Dedupe key of the change (per author of the change).
        client_msg_id: String,
        /// What; `by` is the user.
        change: v1::MessageChange,
        /// Edits of older messages are refused.
        edit_window_ms: u64,
        /// Gets the change's id and group seq once durable.
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
}

/// An admin action on a group (see `chat_state::governance`).
#[derive(Debug, Clone)]
pub struct GroupAction {
    /// Who does it.
    pub actor: String,
    /// What.
    pub action: governance::Action,
    /// To whom (empty for SetInfo and Delete).
    pub target: String,
    /// SetRole: the new role.
    pub role: v1::GroupRole,
    /// SetInfo: what to change.
    pub title: Option<String>,
    /// SetInfo.
    pub topic: Option<String>,
    /// SetInfo.
    pub history_for_new_members: Option<bool>,
}

impl GroupAction {
    /// `actor` does `action` to `target`.
    pub fn on(actor: &str, action: governance::Action, target: &str) -> Self {
        Self {
            actor: actor.to_owned(),
            action,
            target: target.to_owned(),
            role: v1::GroupRole::Member,
            title: None,
            topic: None,
            history_for_new_members: None,
        }
    }
}

impl GroupMsg {
    /// Answers the request with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Admin { reply, .. } => reply(Err(err)),
            Self::Info { reply, .. } => reply(Err(err)),
            Self::Create { reply, .. } | Self::Join { reply, .. } | Self::Leave { reply, .. } => {
                reply(Err(err))
            }
            Self::Members { reply, .. } => reply(Err(err)),
            Self::Post { reply, .. } => reply(Err(err)),
            Self::Change { reply, .. } => reply(Err(err)),
            Self::History { reply, .. } => reply(Err(err)),
            Self::Receipts { reply, .. } => reply(Err(err)),
        }
    }
}

/// Requests about a user's account, served by the node holding the user's partition.
pub enum AccountMsg {
    /// The account record.
    Get {
        /// Gets it (None: no such user).
        reply: Reply<ChatResult<Option<AccountRecord>>>,
    },
    /// Creates the account unless the name is taken (false).
    Create {
        /// The record.
        record: AccountRecord,
        /// Gets whether it was created, once durable.
        reply: Reply<ChatResult<bool>>,
    },
    /// Stores a session token.
    PutToken {
        /// The token.
        token: String,
        /// Its record.
        record: TokenRecord,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
    /// Looks a token up.
    GetToken {
        /// The token.
        token: String,
        /// Gets its record.
        reply: Reply<ChatResult<Option<TokenRecord>>>,
    },
    /// Revokes every token of the user but `keep` (empty: all), sets a new password hash
    /// if `password_hash` is not empty, and logs the user's sessions out everywhere but
    /// `skip_session`, telling them `reason`.
    RevokeTokens {
        /// The token that stays (the asking session's), or empty.
        keep: String,
        /// The new password's hash, or empty.
        password_hash: String,
        /// The asking session, which is not closed.
        skip_session: u64,
        /// What the closed sessions are told.
        reason: String,
        /// Runs once the revocation is committed.
        reply: Reply<ChatResult<()>>,
    },
    /// Disables (revoking every token and closing the user's sessions everywhere) or
    /// enables the account.
    SetDisabled {
        /// Disable, or enable.
        disabled: bool,
        /// Runs once committed.
        reply: Reply<ChatResult<()>>,
    },
    /// Revokes a token.
    RevokeToken {
        /// The token.
        token: String,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
}

impl AccountMsg {
    /// Answers the request with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Get { reply } => reply(Err(err)),
            Self::Create { reply, .. } => reply(Err(err)),
            Self::PutToken { reply, .. }
            | Self::RevokeToken { reply, .. }
            | Self::RevokeTokens { reply, .. }
            | Self::SetDisabled { reply, .. } => reply(Err(err)),
            Self::GetToken { reply, .. } => reply(Err(err)),
        }
    }
}

/// Requests about a user's contacts, blocks and privacy settings.
pub enum ContactMsg {
    /// Act on the relation with another user; gets the user's view afterwards, once
    /// the user's own view is durable (the other's follows).
    Act {
        /// The other user.
        other: String,
        /// What to do.
        action: contacts::Action,
        /// Gets where the relation stands.
        reply: Reply<ChatResult<v1::ContactState>>,
    },
    /// The user's relations.
    List {
        /// With the contacts' presence (online, last seen), as the user may see it.
        presence: bool,
        /// Gets them, by name.
        reply: Reply<ChatResult<Vec<v1::Contact>>>,
    },
    /// Block or unblock another user.
    Block {
        /// The other user.
        other: String,
        /// Block (true) or unblock.
        blocked: bool,
        /// Runs once durable.
        reply: Reply<ChatResult<()>>,
    },
    /// The users this user blocks.
    Blocks {
        /// Gets their names, sorted.
        reply: Reply<ChatResult<Vec<String>>>,
    },
    /// The user's last session anywhere ended at `at_ms`: gets whether the user hides
    /// its last seen time.
    Seen {
        /// When.
        at_ms: u64,
        /// Gets whether it is hidden.
        reply: Reply<ChatResult<bool>>,
    },
    /// Whether the user takes private messages from `from`.
    MayMessage {
        /// The sender.
        from: String,
        /// Gets the answer (NotFound: no such user).
        reply: Reply<ChatResult<bool>>,
    },
    /// Change (or, with both unset, read) the privacy settings.
    Privacy {
        /// Contacts only, or everyone, may send private messages.
        contacts_only: Option<bool>,
        /// Hide when the user was last online.
        hide_last_seen: Option<bool>,
        /// Gets the settings in effect.
        reply: Reply<ChatResult<v1::Privacy>>,
    },
}

impl ContactMsg {
    /// Answers the request with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Act { reply, .. } => reply(Err(err)),
            Self::List { reply, .. } => reply(Err(err)),
            Self::Block { reply, .. } => reply(Err(err)),
            Self::Blocks { reply } => reply(Err(err)),
            Self::Privacy { reply, .. } => reply(Err(err)),
            Self::Seen { reply, .. } | Self::MayMessage { reply, .. } => reply(Err(err)),
        }
    }
}

/// Requests about a user's devices (its tokens), served in the user's partition.
pub enum DeviceMsg {
    /// The devices whose tokens are unexpired at `now_ms`.
    List {
        /// The asking node's clock.
        now_ms: u64,
        /// Gets them, the most recently used first (`current` unset).
        reply: Reply<ChatResult<v1::DeviceList>>,
    },
    /// Revokes the token of device `device` and closes the sessions logged in with it
    /// on every node; NotFound when the user has no such device.
    LogOut {
        /// The device id (`chat_state::devices::id_of`).
        device: String,
        /// Runs once the revocation is committed.
        reply: Reply<ChatResult<()>>,
    },
    /// A login with `token` at `at_ms`: its last login moves forward.
    Touch {
        /// The token.
        token: String,
        /// When.
        at_ms: u64,
        /// Runs once committed (NotFound: the token is gone).
        reply: Reply<ChatResult<()>>,
    },
}

impl DeviceMsg {
    /// Answers the request with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::List { reply, .. } => reply(Err(err)),
            Self::LogOut { reply, .. } | Self::Touch { reply, .. } => reply(Err(err)),
        }
    }
}

/// What a routed request is for.
pub enum Target {
    /// A user's inbox.
    Inbox(String, InboxMsg),
    /// A group.
    Group(String, GroupMsg),
    /// A user's account.
    Account(String, AccountMsg),
    /// A user's contacts, blocks and privacy.
    Contacts(String, ContactMsg),
    /// A user's devices.
    Devices(String, DeviceMsg),
}

impl Target {
    /// The partition of the entity.
    pub fn partition(&self) -> Partition {
        match self {
            Self::Inbox(user, _)
            | Self::Account(user, _)
            | Self::Contacts(user, _)
            | Self::Devices(user, _) => partition::of_user(user),
            Self::Group(group, _) => partition::of_group(group),
        }
    }

    /// Answers the request, if it expects an answer, with `err`.
    pub fn fail(self, err: ChatError) {
        match self {
            Self::Inbox(_, m) => m.fail(err),
            Self::Group(_, m) => m.fail(err),
            Self::Account(_, m) => m.fail(err),
            Self::Contacts(_, m) => m.fail(err),
            Self::Devices(_, m) => m.fail(err),
        }
    }
}

/// Serves routed requests (the Raft core, `crate::served`).
pub trait Route: Send + Sync {
    /// Serves one request; answers it in any case.
    fn route(&self, target: Target);
}

/// A cheap handle for sending requests to inboxes, groups and accounts wherever they
/// live.
#[derive(Clone)]
pub struct Router {
    served: Arc<dyn Route>,
}

impl Router {
    /// Routes through `served`.
    pub fn new(served: Arc<dyn Route>) -> Self {
        Self { served }
    }

    /// Routes a request; it is answered in any case.
    pub fn route(&self, target: Target) {
        self.served.route(target);
    }

    /// Sends to the inbox of `user`.
    pub fn to_inbox(&self, user: &str, msg: InboxMsg) {
        self.route(Target::Inbox(user.to_owned(), msg));
    }

    /// Sends to `group`.
    pub fn to_group(&self, group: &str, msg: GroupMsg) {
        self.route(Target::Group(group.to_owned(), msg));
    }

    /// Asks the holder of `user`'s account.
    pub async fn account<T: Send + 'static>(
        &self,
        user: &str,
        make: impl FnOnce(Reply<ChatResult<T>>) -> AccountMsg,
    ) -> ChatResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = make(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        self.route(Target::Account(user.to_owned(), msg));
        rx.await
            .unwrap_or_else(|_| Err(ChatError::Unavailable("node is shutting down".into())))
    }
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
        contact: e.contact.clone(),
        group_event: e.group_event.clone(),
        reply_to: e.reply_to.clone(),
        attachments: e.attachments.clone(),
        change: e.change.clone(),
        edited: e.state.as_ref().is_some_and(|s| s.edited),
        recalled: e.state.as_ref().is_some_and(|s| s.recalled),
        reactions: e.state.as_ref().map(|s| s.reactions.clone()).unwrap_or_default(),
        mentioned: e.mentioned,
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
