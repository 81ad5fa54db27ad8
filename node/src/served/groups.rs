//! Group governance served through the Raft core: an admin action is decided in the
//! group's partition (`chat_state::groups`); what follows outside it happens here
//! before the answer: the event's fan-out is started, a removed or banned member's
//! list of groups loses the group, an invitee gets the invitation in its inbox
//! (deduplicated by the invitation's time, so a resend stores it once), and a deletion
//! the owner asked for is carried out batch by batch.

use super::{Served, push, unexpected_outcome};
use crate::error::{ChatError, ChatResult};
use crate::partition;
use crate::request::GroupAction;
use chat_protocol::internal::InboxEntry;
use chat_protocol::internal::answer::A;
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::outcome;
use chat_protocol::internal::query::Q;
use chat_protocol::v1::{self, ConversationKind, group_event::Kind};
use chat_state::governance::Action;
use std::sync::Arc;

impl Served {
    pub(super) async fn group_admin(self: &Arc<Self>, group: String, a: GroupAction) -> ChatResult<()> {
        if matches!(a.action, Action::Invite | Action::Ban) {
            match self
                .read_async(partition::of_user(&a.target), Q::Account(a.target.clone()))
                .await?
            {
                A::Account(_) => {}
                _ => return Err(ChatError::NotFound(format!("user {}", a.target))),
            }
        }
        let op = Op::GroupAdmin(command::GroupAdmin {
            group: group.clone(),
            actor: a.actor.clone(),
            action: a.action as u32,
            target: a.target.clone(),
            role: a.role as u32,
            title: a.title.clone(),
            topic: a.topic.clone(),
            history_for_new_members: a.history_for_new_members,
            now_ms: crate::storage::now_ms(),
        });
        let changed = match self.propose_async(partition::of_group(&group), op).await? {
            outcome::Result::GroupChanged(c) => c,
            outcome::Result::NotFound(_) if a.target.is_empty() => {
                return Err(super::no_such_group(&group));
            }
            outcome::Result::NotFound(_) => {
                if a.action == Action::Remove {
                    // Maybe a resend of a removal whose answer was lost: its member's
                    // list of groups is made to agree before the answer.
                    let op = Op::Membership(command::Membership {
                        user: a.target.clone(),
                        group: group.clone(),
                        joined: false,
                    });
                    self.propose_async(partition::of_user(&a.target), op).await?;
                }
                return Err(ChatError::NotFound(format!("{} in group {group}", a.target)));
            }
            outcome::Result::NotAMember(_) => return Err(ChatError::NotAMember(group)),
            outcome::Result::Forbidden(why) => return Err(ChatError::Forbidden(why)),
            other => return Err(unexpected_outcome(&other)),
        };
        if changed.group_seq > 0 {
            self.fan_out(group.clone());
        }
        match a.action {
            Action::Remove | Action::Ban => {
                let op = Op::Membership(command::Membership {
                    user: a.target.clone(),
                    group,
                    joined: false,
                });
                self.propose_async(partition::of_user(&a.target), op).await?;
            }
            Action::Invite if changed.invited_at_ms > 0 => {
                self.invite(&group, &a.actor, &a.target, changed.invited_at_ms)
                    .await?;
            }
            Action::Delete => {
                crate::admin_users::delete_group(&self.remote, &group).await?;
                tracing::info!(group = %group, owner = %a.actor, "group deleted by its owner");
            }
            _ => {}
        }
        Ok(())
    }

    /// Stores the invitation in the invitee's inbox (once per invitation) and pushes it.
    async fn invite(&self, group: &str, by: &str, invitee: &str, at_ms: u64) -> ChatResult<()> {
        let entry = InboxEntry {
            from: by.to_owned(),
            kind: ConversationKind::Group as u32,
            conversation: group.to_owned(),
            timestamp_ms: at_ms,
            group_event: Some(v1::GroupEvent {
                kind: Kind::Invited as i32,
                actor: by.to_owned(),
                target: invitee.to_owned(),
                ..v1::GroupEvent::default()
            }),
            ..InboxEntry::default()
        };
        let mut origin = vec![b'i', group.len() as u8];
        origin.extend_from_slice(group.as_bytes());
        origin.extend_from_slice(&at_ms.to_be_bytes());
        let op = Op::Append(command::Append {
            user: invitee.to_owned(),
            origin,
            entry: Some(entry.clone()),
            require_account: false,
            now_ms: at_ms,
            retention: Some(self.retention),
        });
        match self.propose_async(partition::of_user(invitee), op).await? {
            outcome::Result::Appended(a) | outcome::Result::Duplicate(a) => {
                let entry = InboxEntry {
                    message_id: a.message_id,
                    ..entry
                };
                push(&self.remote, invitee, a.seq, &entry, 0);
                Ok(())
            }
            other => Err(unexpected_outcome(&other)),
        }
    }
}
