//! Changes of messages (edits, recalls, reactions), served through the Raft core. A
//! group message's change is decided and posted in the group's partition, then fanned
//! out like a post. A private message's change is decided in the recipient's inbox (its partition's state machine,
//! `chat_state::changes`), then copied to the other participant's inbox; each entry
//! is pushed to its user's sessions once committed. The SendAck waits for both, so a
//! resend (same client_msg_id) completes whichever is missing.

use super::{Served, push, unexpected_outcome};
use crate::error::{ChatError, ChatResult};
use crate::partition;
use crate::request::Appended;
use chat_protocol::internal::InboxEntry;
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::outcome::{self, Changed};
use chat_protocol::v1::{ConversationKind, MessageChange, message_change};
use chat_state::changes::Refusal;
use std::sync::Arc;

/// What a change asks, as the session hands it over.
pub struct ChangeAsk {
    pub client_msg_id: String,
    pub change: MessageChange,
    pub edit_window_ms: u64,
    /// The session that asked (not pushed its own entry back).
    pub session: u64,
}

impl Served {
    /// Changes a private message of `user`'s inbox (its recipient's).
    pub(super) fn change_private(
        self: &Arc<Self>,
        user: String,
        ask: ChangeAsk,
        reply: crate::actors::Reply<ChatResult<Appended>>,
    ) {
        let me = self.clone();
        self.runtime
            .spawn(async move { reply(me.change_private_async(user, ask).await) });
    }

    async fn change_private_async(&self, user: String, ask: ChangeAsk) -> ChatResult<Appended> {
        let now = crate::storage::now_ms();
        let op =
            |user: &str, copy: bool, conversation: &str| self.change_op(user, &ask, now, copy, conversation);
        let first = self
            .propose_async(partition::of_user(&user), op(&user, false, ""))
            .await;
        let first = changed(first?, ask.edit_window_ms)?;
        let at = first.appended.clone().unwrap_or_default();
        self.push_change(&user, &ask, &first);
        if !first.peer.is_empty() {
            let copy = op(&first.peer, true, &first.conversation);
            let copied = changed(
                self.propose_async(partition::of_user(&first.peer), copy).await?,
                ask.edit_window_ms,
            )?;
            self.push_change(&first.peer, &ask, &copied);
        }
        Ok(Appended {
            message_id: at.message_id,
            seq: at.seq,
            timestamp_ms: at.timestamp_ms,
        })
    }

    /// Recalls `user`'s own copy of a private message to `to` that `to` refused: the
    /// copy's change, as a recall's copy is applied (no decision: the copy is the
    /// user's own), pushed to the user's other sessions.
    pub(super) fn withdraw(
        self: &Arc<Self>,
        user: String,
        message_id: String,
        to: String,
        client_msg_id: String,
        session: u64,
        reply: crate::actors::Reply<ChatResult<()>>,
    ) {
        let ask = ChangeAsk {
            client_msg_id: withdrawal_id(&client_msg_id),
            change: MessageChange {
                kind: message_change::Kind::Recall as i32,
                message_id,
                text: String::new(),
                by: user.clone(),
            },
            edit_window_ms: 0,
            session,
        };
        let op = self.change_op(&user, &ask, crate::storage::now_ms(), true, &to);
        let me = self.clone();
        self.propose(partition::of_user(&user), op, move |r| {
            reply(
                r.and_then(|r| changed(r, 0))
                    .map(|c| me.push_change(&user, &ask, &c)),
            )
        });
    }

    /// The command that stores `ask` in `user`'s inbox: decided there, or a `copy` of a
    /// change decided elsewhere (in the conversation with `conversation`).
    fn change_op(&self, user: &str, ask: &ChangeAsk, now_ms: u64, copy: bool, conversation: &str) -> Op {
        Op::ChangeMessage(command::ChangeMessage {
            user: user.to_owned(),
            client_msg_id: ask.client_msg_id.clone(),
            change: Some(ask.change.clone()),
            now_ms,
            edit_window_ms: ask.edit_window_ms,
            copy,
            conversation: conversation.to_owned(),
            retention: Some(self.retention),
        })
    }

    /// Changes a message of `group`: decided and posted in the group's order, then
    /// fanned out to its members like a post.
    pub(super) fn change_group(
        self: &Arc<Self>,
        group: String,
        ask: ChangeAsk,
        reply: crate::actors::Reply<ChatResult<Appended>>,
    ) {
        let op = Op::ChangeGroupMessage(command::ChangeGroupMessage {
            group: group.clone(),
            client_msg_id: ask.client_msg_id,
            change: Some(ask.change),
            now_ms: crate::storage::now_ms(),
            edit_window_ms: ask.edit_window_ms,
        });
        let me = self.clone();
        self.propose(partition::of_group(&group), op, move |r| match r {
            Ok(outcome::Result::Posted(p)) => {
                reply(Ok(Appended {
                    message_id: p.message_id,
                    seq: p.group_seq,
                    timestamp_ms: p.timestamp_ms,
                }));
                me.fan_out(group);
            }
            Ok(other) => reply(
                changed(other, ask.edit_window_ms)
                    .and_then(|c| Err(ChatError::Internal(format!("a group change answered {c:?}")))),
            ),
            Err(e) => reply(Err(e)),
        });
    }

    fn push_change(&self, user: &str, ask: &ChangeAsk, c: &Changed) {
        let Some(at) = &c.appended else { return };
        let entry = InboxEntry {
            message_id: at.message_id.clone(),
            from: ask.change.by.clone(),
            kind: ConversationKind::Private as u32,
            conversation: c.conversation.clone(),
            timestamp_ms: at.timestamp_ms,
            change: Some(ask.change.clone()),
            ..InboxEntry::default()
        };
        let skip = if ask.change.by == user { ask.session } else { 0 };
        push(&self.remote, user, at.seq, &entry, skip);
    }
}

/// The dedupe key of the withdrawal of the copy of the message sent as
/// `client_msg_id`: apart from the user's own changes' keys, which are client ids of at
/// most [`crate::actors::session::MAX_CLIENT_MSG_ID`] bytes, as this one is longer.
fn withdrawal_id(client_msg_id: &str) -> String {
    let longer = crate::actors::session::MAX_CLIENT_MSG_ID + 1;
    format!("{:\0<longer$}{client_msg_id}", "withdrawn")
}

/// The outcome of a change, or why it was refused.
fn changed(r: outcome::Result, edit_window_ms: u64) -> ChatResult<Changed> {
    match r {
        outcome::Result::Changed(c) => match Refusal::from_u32(c.refused) {
            None => Ok(c),
            Some(Refusal::NotFound) => Err(ChatError::NotFound("message".into())),
            Some(Refusal::NotAuthor) => Err(ChatError::NotAuthor(
                "only the author may edit or recall this message".into(),
            )),
            Some(Refusal::TooLate) => Err(ChatError::EditWindowClosed(edit_window_ms / 1000)),
        },
        other => Err(unexpected_outcome(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::withdrawal_id;

    #[test]
    fn a_withdrawal_never_shares_its_key_with_a_change_a_client_names() {
        let ids = ["m1", "", &"x".repeat(crate::actors::session::MAX_CLIENT_MSG_ID)];
        for id in ids {
            let key = withdrawal_id(id);
            assert!(key.len() > crate::actors::session::MAX_CLIENT_MSG_ID, "{key:?}");
            assert_eq!(key, withdrawal_id(id), "the same for a resend");
        }
        assert_ne!(withdrawal_id("a"), withdrawal_id("b"));
    }
}
