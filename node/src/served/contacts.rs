//! Contacts, blocks and privacy settings, served through the Raft core.
//!
//! A contact action is decided in the pair's partition (`chat_state::contacts`); the
//! two users' views it leaves in that partition's outbox are delivered to their
//! partitions, the actor's before the answer (so its next list shows it), the other's
//! right after. Whatever is left undelivered (a proposer that died, a partition without
//! a leader for a while) is delivered by the pair partition's leader, every
//! [`super::FANOUT_SWEEP`]. Deliveries are idempotent: a view only takes newer versions.

use super::{Served, push, unexpected, unexpected_outcome};
use crate::error::{ChatError, ChatResult};
use crate::partition;
use crate::request::ContactMsg;
use crate::storage;
use chat_protocol::internal::answer::A;
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::outcome;
use chat_protocol::internal::query::{self, Q};
use chat_protocol::v1;
use chat_state::contacts::{self, Action};
use chat_state::{Store, keys};
use prost::Message;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// Most undelivered updates one sweep of a partition takes up.
const OUTBOX_SWEEP: usize = 256;

impl Served {
    pub(super) fn contacts(self: &Arc<Self>, user: String, msg: ContactMsg) {
        let me = self.clone();
        self.runtime.spawn(async move {
            match msg {
                ContactMsg::Act { other, action, reply } => reply(me.act(user, other, action).await),
                ContactMsg::List { presence, reply } => reply(me.list_contacts(user, presence).await),
                ContactMsg::Block {
                    other,
                    blocked,
                    reply,
                } => {
                    reply(me.block(user, other, blocked).await);
                }
                ContactMsg::Blocks { reply } => {
                    reply(
                        match me.read_async(partition::of_user(&user), Q::Blocks(user)).await {
                            Ok(A::Names(n)) => Ok(n.names),
                            Ok(other) => Err(unexpected(&other)),
                            Err(e) => Err(e),
                        },
                    );
                }
                ContactMsg::Seen { at_ms, reply } => {
                    let op = Op::Seen(command::Seen {
                        user: user.clone(),
                        at_ms,
                    });
                    reply(match me.propose_async(partition::of_user(&user), op).await {
                        Ok(outcome::Result::Account(a)) => Ok(a.hide_last_seen),
                        Ok(outcome::Result::NotFound(_)) => Err(ChatError::NotFound(format!("user {user}"))),
                        Ok(other) => Err(unexpected_outcome(&other)),
                        Err(e) => Err(e),
                    });
                }
                ContactMsg::MayMessage { from, reply } => {
                    let q = Q::MayMessage(query::Pair {
                        user: user.clone(),
                        other: from,
                    });
                    reply(match me.read_async(partition::of_user(&user), q).await {
                        Ok(A::Allowed(_)) => Ok(true),
                        Ok(A::NotAllowed(_)) => Ok(false),
                        Ok(A::NotFound(_)) => Err(ChatError::NotFound(format!("user {user}"))),
                        Ok(other) => Err(unexpected(&other)),
                        Err(e) => Err(e),
                    });
                }
                ContactMsg::Privacy {
                    contacts_only,
                    hide_last_seen,
                    reply,
                } => {
                    let op = Op::SetPrivacy(command::SetPrivacy {
                        user: user.clone(),
                        contacts_only,
                        hide_last_seen,
                    });
                    reply(match me.propose_async(partition::of_user(&user), op).await {
                        Ok(outcome::Result::Account(a)) => Ok(v1::Privacy {
                            contacts_only: a.contacts_only,
                            hide_last_seen: a.hide_last_seen,
                        }),
                        Ok(other) => Err(unexpected_outcome(&other)),
                        Err(e) => Err(e),
                    });
                }
            }
        });
    }

    async fn act(
        self: &Arc<Self>,
        user: String,
        other: String,
        action: Action,
    ) -> ChatResult<v1::ContactState> {
        if action == Action::Request {
            self.must_exist(&other).await?;
        }
        let op = Op::ContactAction(command::ContactAction {
            actor: user.clone(),
            other: other.clone(),
            action: action as u32,
            now_ms: storage::now_ms(),
        });
        let changed = match self
            .propose_async(contacts::pair_partition(&user, &other), op)
            .await?
        {
            outcome::Result::ContactChanged(c) => c,
            outcome::Result::NotFound(_) => {
                return Err(ChatError::NotFound(format!("a contact request from {other}")));
            }
            o => return Err(unexpected_outcome(&o)),
        };
        let (mine, theirs): (Vec<_>, Vec<_>) = changed.updates.into_iter().partition(|u| u.user == user);
        for update in theirs {
            if skip_delivery() {
                continue;
            }
            let me = self.clone();
            self.runtime.spawn(async move { me.deliver_logged(update).await });
        }
        // The actor's own view is durable before the answer, even while a sweep
        // delivers the same update (a repeat changes nothing).
        for mut update in mine {
            update.retention = Some(self.retention);
            self.deliver_now(update).await?;
        }
        Ok(v1::ContactState::try_from(changed.state as i32).unwrap_or_default())
    }

    async fn must_exist(&self, user: &str) -> ChatResult<()> {
        match self
            .read_async(partition::of_user(user), Q::Account(user.to_owned()))
            .await?
        {
            A::Account(_) => Ok(()),
            A::NotFound(_) => Err(ChatError::NotFound(format!("user {user}"))),
            other => Err(unexpected(&other)),
        }
    }

    /// The user's relations; with `presence`, contacts with theirs (online anywhere, or
    /// when last seen unless they hide it; nothing of a contact that blocks the user).
    async fn list_contacts(&self, user: String, presence: bool) -> ChatResult<Vec<v1::Contact>> {
        let mut contacts = match self
            .read_async(partition::of_user(&user), Q::Contacts(user.clone()))
            .await?
        {
            A::Contacts(c) => c.contacts,
            other => return Err(unexpected(&other)),
        };
        let names: Vec<String> = contacts
            .iter()
            .filter(|c| c.state() == v1::ContactState::Contact)
            .map(|c| c.user.clone())
            .collect();
        if !presence || names.is_empty() {
            return Ok(contacts);
        }
        let mut online: HashSet<String> = self.remote.with_sessions(names.clone()).into_iter().collect();
        online.extend(crate::view::with_sessions_elsewhere(names).await);
        let shown = contacts.iter().map(|c| {
            let contact = c.state() == v1::ContactState::Contact;
            let (name, me, on) = (c.user.clone(), user.clone(), online.contains(&c.user));
            async move {
                if !contact {
                    return (false, 0);
                }
                let q = Q::MayMessage(query::Pair {
                    user: name.clone(),
                    other: me,
                });
                if !matches!(
                    self.read_async(partition::of_user(&name), q).await,
                    Ok(A::Allowed(_))
                ) {
                    return (false, 0);
                }
                if on {
                    return (true, 0);
                }
                match self
                    .read_async(partition::of_user(&name), Q::Account(name.clone()))
                    .await
                {
                    Ok(A::Account(a)) if !a.hide_last_seen => (false, a.last_seen_ms),
                    _ => (false, 0),
                }
            }
        });
        let shown = futures::future::join_all(shown).await;
        for (c, (online, last_seen_ms)) in contacts.iter_mut().zip(shown) {
            c.online = online;
            c.last_seen_ms = last_seen_ms;
        }
        Ok(contacts)
    }

    async fn block(&self, user: String, other: String, blocked: bool) -> ChatResult<()> {
        if blocked {
            self.must_exist(&other).await?;
        }
        let op = Op::Block(command::Block {
            user: user.clone(),
            other,
            blocked,
        });
        match self.propose_async(partition::of_user(&user), op).await? {
            outcome::Result::Done(_) => Ok(()),
            outcome::Result::NotFound(_) => Err(ChatError::NotFound(format!("user {user}"))),
            o => Err(unexpected_outcome(&o)),
        }
    }

    /// Brings one user's view up to date, pushes the event to its sessions, and clears
    /// the update from the pair's outbox. One delivery per (user, other) runs at a time
    /// from here; a second one asked meanwhile is left to the next sweep.
    async fn deliver(&self, mut update: command::ContactUpdate) -> ChatResult<()> {
        let slot = (update.user.clone(), update.other.clone());
        if !locked(&self.contact_deliveries).insert(slot.clone()) {
            return Ok(());
        }
        update.retention = Some(self.retention);
        let result = self.deliver_now(update).await;
        locked(&self.contact_deliveries).remove(&slot);
        result
    }

    async fn deliver_now(&self, update: command::ContactUpdate) -> ChatResult<()> {
        let (user, other, version) = (update.user.clone(), update.other.clone(), update.version);
        let mut entry = contacts::event_entry(&update);
        match self
            .propose_async(partition::of_user(&user), Op::ContactUpdate(update))
            .await?
        {
            outcome::Result::Appended(a) => {
                entry.message_id = a.message_id;
                push(&self.remote, &user, a.seq, &entry, 0);
            }
            outcome::Result::Done(_) => {}
            o => return Err(unexpected_outcome(&o)),
        }
        let p = contacts::pair_partition(&user, &other);
        let done = Op::ContactDelivered(command::ContactDelivered { user, other, version });
        self.propose_async(p, done).await.map(|_| ())
    }

    async fn deliver_logged(&self, update: command::ContactUpdate) {
        let (user, other) = (update.user.clone(), update.other.clone());
        if let Err(e) = self.deliver(update).await {
            // The pair partition's leader delivers it with its next sweep.
            tracing::debug!(user = %user, other = %other, error = %e, "contact update not delivered yet");
        }
    }

    /// Delivers the updates left in the outboxes of partitions led here.
    pub(super) fn resume_contact_deliveries(self: &Arc<Self>) {
        for p in self.consensus.led() {
            let mut nothing_pending = crate::consensus::disk::Pending::new();
            let records = self.disk.overlay(&mut nothing_pending);
            let found = records.scan(&keys::contact_outbox_prefix(p), None, OUTBOX_SWEEP);
            match found {
                Ok(found) => {
                    for (_, value) in found {
                        let Ok(update) = command::ContactUpdate::decode(value.as_slice()) else {
                            continue;
                        };
                        let me = self.clone();
                        self.runtime.spawn(async move { me.deliver_logged(update).await });
                    }
                }
                Err(e) => tracing::warn!(partition = p, error = %e, "contact outbox not read"),
            }
        }
    }
}

/// A fault point for tests: `CHAT_FAULTS=skip-contact-delivery` leaves the other
/// user's update to the outbox sweep, as if this node died right after the change
/// committed.
fn skip_delivery() -> bool {
    static SKIP: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SKIP.get_or_init(|| {
        std::env::var("CHAT_FAULTS").is_ok_and(|f| f.split(',').any(|f| f.trim() == "skip-contact-delivery"))
    })
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The (user, other) pairs whose delivery runs from here.
pub(super) type Deliveries = Mutex<HashSet<(String, String)>>;
