//! Presence and typing: ephemeral news for users, pushed and never stored.
//!
//! - Presence: [`Remote`] reports when a user's first session on this node appears and
//!   its last one here goes. Going online is told at once; going offline only once no
//!   other node has a session of the user either, and it records the user's last seen
//!   time (durably, in the user's account). The audience is the user's contacts and the
//!   members of its groups, less those it blocks. One [`Notice`] per node carries the
//!   change and the audience; each node keeps the audience members that have sessions
//!   there, and gathers changes for [`FLUSH`] in a [`Coalescer`] (newest per user, a
//!   change older than one already seen is dropped) before pushing one
//!   `PresenceUpdate` per watcher.
//! - Typing: passed on at once as a ready frame, to whoever would get a message from
//!   the sender there (checked like a message: a group's members; a recipient that
//!   does not block the sender nor take messages from contacts only).
//!
//! Presence is advisory: a node that dies says nothing for its sessions.

use crate::actors::Reply;
use crate::error::{ChatError, ChatResult};
use crate::remote::Remote;
use crate::request::{ContactMsg, GroupMsg, InboxMsg, Router, Target, encode_push};
use crate::storage;
use chat_protocol::internal::{Notice, UserPush};
use chat_protocol::v1::{self, ConversationKind, server_frame::Body};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How long presence changes are gathered before they are pushed.
pub const FLUSH: Duration = Duration::from_millis(250);
/// At most one typing notice per conversation this often is passed on (and a "stopped"
/// right after a start).
pub const TYPING_EVERY: Duration = Duration::from_secs(2);
/// How long a client shows a typing notice unless another one comes.
pub const TYPING_SHOWN: Duration = Duration::from_secs(6);
/// Tries to tell one presence change before giving up.
const ANNOUNCE_ATTEMPTS: u32 = 4;
/// How long after a failed try the next one starts (times the tries so far).
const ANNOUNCE_RETRY: Duration = Duration::from_millis(500);
/// Most groups whose members a presence change is told to.
const MAX_GROUPS: usize = 200;
/// Most users one presence change is told to.
const MAX_AUDIENCE: usize = 10_000;
/// How long the newest change of a user is remembered, to drop older ones arriving late.
const REMEMBER_MS: u64 = 10 * 60 * 1000;

/// Presence changes waiting to be pushed, per watcher: the newest per user.
#[derive(Debug, Default)]
pub struct Coalescer {
    pending: BTreeMap<String, BTreeMap<String, v1::Presence>>,
    /// Per user: when its newest change seen here happened.
    newest: HashMap<String, u64>,
}

impl Coalescer {
    /// Takes a change of `presence.user` that happened at `at_ms` for `watchers`;
    /// false (and nothing kept) when a newer change of the user was already seen.
    pub fn offer(
        &mut self,
        watchers: impl IntoIterator<Item = String>,
        presence: &v1::Presence,
        at_ms: u64,
    ) -> bool {
        let newest = self.newest.entry(presence.user.clone()).or_default();
        if at_ms < *newest {
            return false;
        }
        *newest = at_ms;
        for watcher in watchers {
            self.pending
                .entry(watcher)
                .or_default()
                .insert(presence.user.clone(), presence.clone());
        }
        true
    }

    /// Every watcher's gathered changes, by user name; forgets changes older than
    /// [`REMEMBER_MS`] before `now_ms`.
    pub fn drain(&mut self, now_ms: u64) -> Vec<(String, Vec<v1::Presence>)> {
        self.newest
            .retain(|_, at| at.saturating_add(REMEMBER_MS) >= now_ms);
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(watcher, changes)| (watcher, changes.into_values().collect()))
            .collect()
    }
}

/// Presence and typing on this node.
pub struct Presence {
    router: Router,
    remote: Arc<Remote>,
    gathered: Mutex<Coalescer>,
}

impl Presence {
    /// Starts: hooks into `remote`'s session directory and notices, and pushes what is
    /// gathered every [`FLUSH`]. Must run inside the runtime.
    pub fn start(router: Router, remote: Arc<Remote>) -> Arc<Self> {
        let presence = Arc::new(Self {
            router,
            remote: remote.clone(),
            gathered: Mutex::default(),
        });
        let weak = Arc::downgrade(&presence);
        let runtime = tokio::runtime::Handle::current();
        remote.on_local_presence(Box::new(move |user, online| {
            if let Some(p) = weak.upgrade() {
                let at = storage::now_ms();
                runtime.spawn(async move {
                    // A partition without a leader for a moment must not leave watchers
                    // seeing a user online for good: a few tries, further apart.
                    for attempt in 1..=ANNOUNCE_ATTEMPTS {
                        match p.announce(&user, online, at).await {
                            Ok(()) => return,
                            Err(e) if attempt == ANNOUNCE_ATTEMPTS => {
                                tracing::info!(user = %user, online, error = %e, "presence not told");
                            }
                            Err(_) => tokio::time::sleep(ANNOUNCE_RETRY * attempt).await,
                        }
                    }
                });
            }
        }));
        let weak = Arc::downgrade(&presence);
        remote.on_presence_notice(Box::new(move |notice| {
            if let Some(p) = weak.upgrade() {
                p.gather(notice);
            }
        }));
        tokio::spawn(flush(Arc::downgrade(&presence)));
        presence
    }

    /// Tells the user's audience that it came online, or went offline everywhere.
    async fn announce(&self, user: &str, online: bool, at_ms: u64) -> ChatResult<()> {
        let mut last_seen_ms = 0;
        if !online {
            let elsewhere = crate::view::with_sessions_elsewhere(vec![user.to_owned()]).await;
            if self.remote.has_sessions(user) || !elsewhere.is_empty() {
                return Ok(());
            }
            let hidden = self
                .ask(|reply| Target::Contacts(user.to_owned(), ContactMsg::Seen { at_ms, reply }))
                .await?;
            if !hidden {
                last_seen_ms = at_ms;
            }
        }
        let users = self.audience(user).await?;
        if users.is_empty() {
            return Ok(());
        }
        self.remote.notice_everywhere(Notice {
            users,
            presence: Some(v1::Presence {
                user: user.to_owned(),
                online,
                last_seen_ms,
            }),
            at_ms,
            frame: Vec::new(),
        });
        Ok(())
    }

    /// Who is told of `user`'s presence: its contacts and the members of its groups,
    /// less those it blocks.
    async fn audience(&self, user: &str) -> ChatResult<Vec<String>> {
        let me = user.to_owned();
        let contacts = self
            .ask(|reply| {
                Target::Contacts(
                    me.clone(),
                    ContactMsg::List {
                        presence: false,
                        reply,
                    },
                )
            })
            .await?;
        let mut audience: BTreeSet<String> = contacts
            .into_iter()
            .filter(|c| c.state() == v1::ContactState::Contact)
            .map(|c| c.user)
            .collect();
        let groups = self
            .ask(|reply| Target::Inbox(me.clone(), InboxMsg::Groups { reply }))
            .await?;
        let asks = groups.into_iter().take(MAX_GROUPS).map(|group| {
            let user = me.clone();
            self.ask(move |reply| Target::Group(group, GroupMsg::Members { user, reply }))
        });
        for members in futures::future::join_all(asks).await.into_iter().flatten() {
            audience.extend(members);
        }
        let blocks = self
            .ask(|reply| Target::Contacts(me.clone(), ContactMsg::Blocks { reply }))
            .await?;
        for blocked in blocks {
            audience.remove(&blocked);
        }
        audience.remove(user);
        Ok(audience.into_iter().take(MAX_AUDIENCE).collect())
    }

    /// Keeps a presence change for the watchers with sessions here.
    fn gather(&self, notice: Notice) {
        let Some(presence) = notice.presence else { return };
        let here: Vec<String> = notice
            .users
            .into_iter()
            .filter(|u| self.remote.has_sessions(u))
            .collect();
        let mut gathered = self.gathered.lock().unwrap_or_else(|e| e.into_inner());
        gathered.offer(here, &presence, notice.at_ms);
    }

    /// Passes a typing notice of `from` on to whoever would get its message there.
    pub async fn typing(
        &self,
        from: String,
        kind: ConversationKind,
        conversation: String,
        stopped: bool,
    ) -> ChatResult<()> {
        let users = match kind {
            ConversationKind::Private => {
                let (to, sender) = (conversation.clone(), from.clone());
                let allowed = self
                    .ask(|reply| Target::Contacts(to, ContactMsg::MayMessage { from: sender, reply }))
                    .await?;
                if !allowed {
                    return Ok(());
                }
                vec![conversation.clone()]
            }
            ConversationKind::Group => {
                let (group, user) = (conversation.clone(), from.clone());
                let members = self
                    .ask(|reply| Target::Group(group, GroupMsg::Members { user, reply }))
                    .await?;
                members.into_iter().filter(|m| *m != from).collect()
            }
            ConversationKind::Unspecified => {
                return Err(ChatError::BadRequest(
                    "typing: kind must be PRIVATE or GROUP".into(),
                ));
            }
        };
        // A private conversation is named by the other user, as each side sees it.
        let conversation = if kind == ConversationKind::Private {
            from.clone()
        } else {
            conversation
        };
        let frame = encode_push(Body::Typing(v1::TypingNotice {
            from,
            kind: kind as i32,
            conversation,
            stopped,
            expires_in_ms: TYPING_SHOWN.as_millis() as u32,
        }));
        self.remote.notice_everywhere(Notice {
            users,
            presence: None,
            at_ms: 0,
            frame: frame.to_vec(),
        });
        Ok(())
    }

    async fn ask<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<ChatResult<T>>) -> Target,
    ) -> ChatResult<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.router.route(make(Box::new(move |r| {
            let _ = tx.send(r);
        })));
        rx.await
            .unwrap_or_else(|_| Err(ChatError::Unavailable("node is shutting down".into())))
    }
}

/// Whether a session's typing notice for a conversation is passed on, given how long
/// ago the last one passed (and whether it said "stopped"): one per [`TYPING_EVERY`],
/// but a "stopped" right after a start goes through, so it is not shown for nothing.
pub fn typing_passes(last: Option<(Duration, bool)>, stopped: bool) -> bool {
    match last {
        None => true,
        Some((ago, _)) if ago >= TYPING_EVERY => true,
        Some((_, last_stopped)) => stopped && !last_stopped,
    }
}

/// Every [`FLUSH`], pushes each watcher its gathered changes.
async fn flush(presence: Weak<Presence>) {
    loop {
        tokio::time::sleep(FLUSH).await;
        let Some(p) = presence.upgrade() else { return };
        let batches = p
            .gathered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(storage::now_ms());
        for (watcher, changes) in batches {
            let frame = encode_push(Body::Presence(v1::PresenceUpdate { changes }));
            p.remote.push_to_user(UserPush {
                user: watcher,
                seq: 0,
                frame: frame.to_vec(),
                skip_session: 0,
                log_out: String::new(),
                log_out_device: String::new(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, online: bool) -> v1::Presence {
        v1::Presence {
            user: user.into(),
            online,
            last_seen_ms: 0,
        }
    }

    #[test]
    fn a_flapping_user_is_pushed_once_per_watcher_with_its_newest_state() {
        let mut c = Coalescer::default();
        let watchers = || vec!["w1".to_string(), "w2".to_string()];
        for (i, online) in [true, false, true, false, true].into_iter().enumerate() {
            assert!(c.offer(watchers(), &change("ann", online), 10 + i as u64));
        }
        assert!(c.offer(vec!["w1".to_string()], &change("bob", true), 20));
        let out = c.drain(100);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            ("w1".to_string(), vec![change("ann", true), change("bob", true)])
        );
        assert_eq!(out[1], ("w2".to_string(), vec![change("ann", true)]));
        assert!(c.drain(100).is_empty(), "drained");
    }

    #[test]
    fn typing_is_passed_on_once_per_interval_but_a_stop_after_a_start_always() {
        let soon = Some((Duration::from_millis(300), false));
        assert!(typing_passes(None, false));
        assert!(!typing_passes(soon, false), "a start right after a start");
        assert!(typing_passes(soon, true), "a stop right after a start");
        let stopped = Some((Duration::from_millis(300), true));
        assert!(!typing_passes(stopped, true), "a stop right after a stop");
        assert!(!typing_passes(stopped, false), "a start right after a stop");
        assert!(typing_passes(Some((TYPING_EVERY, false)), false));
    }

    #[test]
    fn a_change_older_than_one_seen_is_dropped_until_it_is_forgotten() {
        let mut c = Coalescer::default();
        assert!(c.offer(vec!["w".to_string()], &change("ann", true), 50));
        c.drain(60);
        assert!(!c.offer(vec!["w".to_string()], &change("ann", false), 40), "late");
        assert!(c.drain(60).is_empty());
        // Long after, the user's newest change is forgotten.
        c.drain(50 + REMEMBER_MS + 1);
        assert!(c.offer(vec!["w".to_string()], &change("ann", false), 40));
    }
}
