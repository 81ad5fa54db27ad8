//! Changes of messages already sent: edits, recalls (delete for everyone) and
//! reactions. [`decide`] says who may make one, [`fold`] what the changes of a message
//! leave of it, and [`apply_private`] stores a change in an inbox.
//!
//! A change is an entry of its own in every inbox that got the message (so devices
//! learn it by push and by sync, in the inbox's order), and it also updates the
//! message's [`MessageState`] beside it, which history applies to the message. A
//! private message is decided in its recipient's inbox, where its id (`p:user:seq`)
//! names its entry; the sender's inbox gets a copy without a second decision.

use crate::groups;
use crate::keys::{self, kind, tree};
use crate::placement::Partition;
use crate::store::{Result, Store, decode};
use chat_protocol::ids;
use chat_protocol::internal::command;
use chat_protocol::internal::outcome::{self, Changed, Posted};
use chat_protocol::internal::response::Appended;
use chat_protocol::internal::{GroupMessage, InboxEntry, MessageState};
use chat_protocol::v1::{ConversationKind, GroupRole, MessageChange, Reaction, message_change};
use prost::Message;

/// Why a change is refused (`Outcome.changed.refused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Refusal {
    /// No such message, it was recalled, or the actor cannot see it.
    NotFound = 1,
    /// Only the author edits or recalls it (or, in a group, a moderator recalls it).
    NotAuthor = 2,
    /// An edit after the edit window.
    TooLate = 3,
}

impl Refusal {
    /// The refusal a number names (0 and unknown numbers: none).
    pub fn from_u32(n: u32) -> Option<Self> {
        match n {
            1 => Some(Self::NotFound),
            2 => Some(Self::NotAuthor),
            3 => Some(Self::TooLate),
            _ => None,
        }
    }
}

/// What a decision needs to know of the message changed and of the actor.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Who sent it.
    pub author: &'a str,
    /// When it was sent.
    pub sent_at_ms: u64,
    /// What its changes so far left of it.
    pub state: &'a MessageState,
    /// The actor sees the message (a participant of the conversation, a member).
    pub visible: bool,
    /// The actor may recall others' messages here (a group's owner or admins).
    pub moderator: bool,
}

/// Whether `change` (by `change.by`, at `now_ms`) may be made to `target`.
pub fn decide(
    change: &MessageChange,
    target: &Target,
    now_ms: u64,
    edit_window_ms: u64,
) -> std::result::Result<(), Refusal> {
    if !target.visible || target.state.recalled {
        return Err(Refusal::NotFound);
    }
    let own = change.by == target.author;
    match change.kind() {
        message_change::Kind::Edit if !own => Err(Refusal::NotAuthor),
        message_change::Kind::Edit if now_ms.saturating_sub(target.sent_at_ms) > edit_window_ms => {
            Err(Refusal::TooLate)
        }
        message_change::Kind::Recall if !own && !target.moderator => Err(Refusal::NotAuthor),
        message_change::Kind::Edit | message_change::Kind::Recall | message_change::Kind::React => Ok(()),
        message_change::Kind::Unspecified => Err(Refusal::NotFound),
    }
}

/// Applies `change` to what the earlier changes left of a message: an edit replaces
/// the text, a recall empties it for good, a reaction replaces the user's earlier one
/// (an empty emoji only removes it).
pub fn fold(state: &mut MessageState, change: &MessageChange) {
    match change.kind() {
        message_change::Kind::Edit => {
            state.text.clone_from(&change.text);
            state.edited = true;
        }
        message_change::Kind::Recall => {
            state.recalled = true;
            state.text.clear();
            state.reactions.clear();
        }
        message_change::Kind::React => {
            for r in &mut state.reactions {
                r.users.retain(|u| *u != change.by);
            }
            state.reactions.retain(|r| !r.users.is_empty());
            if !change.text.is_empty() {
                match state.reactions.iter_mut().find(|r| r.emoji == change.text) {
                    Some(r) => r.users.push(change.by.clone()),
                    None => state.reactions.push(Reaction {
                        emoji: change.text.clone(),
                        users: vec![change.by.clone()],
                    }),
                }
            }
        }
        message_change::Kind::Unspecified => {}
    }
}

/// Shows a message as its changes left it (for history): the current text, and the
/// state for the marks.
pub fn view(entry: &mut InboxEntry, state: Option<MessageState>) {
    if let Some(state) = state {
        if state.edited || state.recalled {
            entry.text.clone_from(&state.text);
        }
        entry.state = Some(state);
    }
}

/// The members a group message's text mentions (`@name`, a name ending at a
/// character no name has), among `members`, once each in text order.
pub fn mentions(text: &str, members: &[String]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (i, _) in text.match_indices('@') {
        let name: String = text[i + 1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            .collect();
        // A sentence may end right after a name.
        let name = name.trim_end_matches('.');
        if members.iter().any(|m| m == name) && !found.iter().any(|f| f == name) {
            found.push(name.to_owned());
        }
    }
    found
}

/// Where the state of group message `group_seq` is kept.
pub fn group_state_key(p: Partition, group: &str, group_seq: u64) -> Vec<u8> {
    keys::seq_key(p, tree::GROUPS, group, kind::CHANGES, group_seq)
}

fn group_state(p: Partition, store: &impl Store, group: &str, group_seq: u64) -> Result<MessageState> {
    Ok(decode(store.get(&group_state_key(p, group, group_seq))?, "message state")?.unwrap_or_default())
}

/// Shows a group message to `user` in history as its changes left it; of its
/// mentions, only whether it mentions `user`.
pub fn view_post(
    p: Partition,
    store: &impl Store,
    group: &str,
    group_seq: u64,
    user: &str,
    message: &mut GroupMessage,
) -> Result<()> {
    message.mentions.retain(|m| m == user);
    let state = group_state(p, store, group, group_seq)?;
    if state != MessageState::default() {
        if state.edited || state.recalled {
            message.text.clone_from(&state.text);
        }
        message.state = Some(state);
    }
    Ok(())
}

/// Applies a [`command::ChangeGroupMessage`]: decided in the group's order, then
/// posted in its log as a message whose `change` is set, for every member (the actor
/// too: its other devices learn it from its inbox).
pub fn apply_group(
    p: Partition,
    store: &mut impl Store,
    c: command::ChangeGroupMessage,
) -> Result<outcome::Result> {
    let change = c.change.clone().unwrap_or_default();
    let refused = |r: Refusal| {
        Ok(outcome::Result::Changed(Changed {
            refused: r as u32,
            ..Changed::default()
        }))
    };
    let Some(mut record) = groups::group(p, store, &c.group)? else {
        return refused(Refusal::NotFound);
    };
    let Some(entry) = groups::member(p, store, &c.group, &change.by)? else {
        return refused(Refusal::NotFound);
    };
    // No post origin starts with 0xff (theirs start with a name's length).
    let mut origin = vec![0xff, change.by.len() as u8];
    origin.extend_from_slice(change.by.as_bytes());
    origin.extend_from_slice(c.client_msg_id.as_bytes());
    let origin_key = keys::suffix_key(p, tree::GROUPS, &c.group, kind::ORIGIN, &origin);
    if let Some(seq) = store.get(&origin_key)? {
        let group_seq = keys::seq_of(&seq);
        let key = keys::seq_key(p, tree::GROUPS, &c.group, kind::MESSAGE, group_seq);
        let first = decode::<GroupMessage>(store.get(&key)?, "group message")?.unwrap_or_default();
        return Ok(outcome::Result::Posted(Posted {
            group_seq,
            message_id: first.message_id,
            timestamp_ms: first.timestamp_ms,
            duplicate: true,
        }));
    }
    let seq = change
        .message_id
        .strip_prefix("g:")
        .and_then(|r| r.strip_prefix(c.group.as_str()))
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|r| r.parse::<u64>().ok())
        .filter(|s| *s >= groups::first_readable(&record, &entry));
    let target = match seq {
        Some(seq) => decode::<GroupMessage>(
            store.get(&keys::seq_key(p, tree::GROUPS, &c.group, kind::MESSAGE, seq))?,
            "group message",
        )?
        .filter(|m| m.event.is_none() && m.change.is_none())
        .map(|m| (seq, m)),
        None => None,
    };
    let Some((seq, target)) = target else {
        return refused(Refusal::NotFound);
    };
    let owner = groups::owner_now(p, store, &c.group, &record)?;
    let role = groups::role(&owner, Some(&entry), &change.by);
    let mut state = group_state(p, store, &c.group, seq)?;
    let decided = decide(
        &change,
        &Target {
            author: &target.from,
            sent_at_ms: target.timestamp_ms,
            state: &state,
            visible: true,
            moderator: matches!(role, Some(GroupRole::Owner | GroupRole::Admin)),
        },
        c.now_ms,
        c.edit_window_ms,
    );
    if let Err(r) = decided {
        return refused(r);
    }
    fold(&mut state, &change);
    store.put(group_state_key(p, &c.group, seq), state.encode_to_vec());
    let group_seq = record.last_seq + 1;
    let message_id = format!("g:{}:{group_seq}", c.group);
    let recipients = groups::members_of(p, store, &c.group)?
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    let message = GroupMessage {
        message_id: message_id.clone(),
        from: change.by.clone(),
        timestamp_ms: c.now_ms,
        client_msg_id: c.client_msg_id,
        recipients,
        change: Some(change),
        ..GroupMessage::default()
    };
    store.put(
        keys::seq_key(p, tree::GROUPS, &c.group, kind::MESSAGE, group_seq),
        message.encode_to_vec(),
    );
    store.put(origin_key, keys::seq_value(group_seq).to_vec());
    store.put(keys::pending(p, &c.group), Vec::new());
    record.last_seq = group_seq;
    groups::put_record(p, store, &c.group, &record);
    Ok(outcome::Result::Posted(Posted {
        group_seq,
        message_id,
        timestamp_ms: c.now_ms,
        duplicate: false,
    }))
}

/// Where the state of message `message_id` of `user`'s inbox is kept.
pub fn inbox_state_key(p: Partition, user: &str, message_id: &str) -> Vec<u8> {
    keys::suffix_key(p, tree::INBOX, user, kind::CHANGES, message_id.as_bytes())
}

/// The state of message `message_id` in `user`'s inbox (the default: unchanged).
pub fn inbox_state(p: Partition, store: &impl Store, user: &str, message_id: &str) -> Result<MessageState> {
    Ok(decode(store.get(&inbox_state_key(p, user, message_id))?, "message state")?.unwrap_or_default())
}

/// Where in `user`'s inbox the private message `message_id` is: the seq a `p:user:seq`
/// id names, or the one a `m:user:from:digest` id's origin leads to (`None`: it is not
/// an id of a message to `user`, or no such message is stored).
fn private_seq(p: Partition, store: &impl Store, user: &str, message_id: &str) -> Result<Option<u64>> {
    Ok(match ids::parse_message_id(message_id) {
        Some(ids::MessageHome::Inbox(to, seq)) if to == user => Some(seq),
        Some(ids::MessageHome::Private { to, from, digest }) if to == user => {
            let origin = keys::private_origin_of(from, &digest);
            store
                .get(&keys::suffix_key(p, tree::INBOX, user, kind::ORIGIN, &origin))?
                .map(|seq| keys::seq_of(&seq))
        }
        _ => None,
    })
}

/// Dedupe key of a change in an inbox: the decided one and its copy differ, so a user
/// changing a message to itself keeps both apart.
fn origin(c: &command::ChangeMessage, by: &str) -> Vec<u8> {
    let mut o = vec![if c.copy { b'f' } else { b'e' }, by.len() as u8];
    o.extend_from_slice(by.as_bytes());
    o.extend_from_slice(c.client_msg_id.as_bytes());
    o
}

/// How an entry is stored in an inbox once per origin (`machine::append`, handed in
/// so that this module needs nothing of the machine): the entry's place, and whether
/// it was there before.
pub type Append<S> =
    fn(Partition, &mut S, &str, &[u8], InboxEntry, u64, &command::Retention) -> Result<(Appended, bool)>;

/// Applies a [`command::ChangeMessage`] of a private message to `c.user`'s inbox.
pub fn apply_private<S: Store>(
    p: Partition,
    store: &mut S,
    c: command::ChangeMessage,
    append: Append<S>,
) -> Result<outcome::Result> {
    let change = c.change.clone().unwrap_or_default();
    let retention = c.retention.unwrap_or_default();
    let origin = origin(&c, &change.by);
    let origin_key = keys::suffix_key(p, tree::INBOX, &c.user, kind::ORIGIN, &origin);
    // The message: the decision and the copy's destination come from it (a resend too).
    let seq = if c.copy {
        None
    } else {
        private_seq(p, store, &c.user, &change.message_id)?
    };
    let target = match seq {
        Some(seq) => decode::<InboxEntry>(
            store.get(&keys::seq_key(p, tree::INBOX, &c.user, kind::ENTRY, seq))?,
            "inbox entry",
        )?
        .filter(|e| {
            e.message_id == change.message_id
                && e.kind == ConversationKind::Private as u32
                && e.receipt.is_none()
                && e.contact.is_none()
                && e.change.is_none()
        }),
        _ => None,
    };
    let (peer, conversation) = match &target {
        Some(t) => {
            let peer = if t.from == c.user {
                String::new()
            } else {
                t.from.clone()
            };
            // As for a message of the actor's: the other participant.
            let conversation = if change.by == t.from {
                c.user.clone()
            } else {
                t.from.clone()
            };
            (peer, conversation)
        }
        None => (String::new(), c.conversation.clone()),
    };
    let refused = |r: Refusal| {
        Ok(outcome::Result::Changed(Changed {
            refused: r as u32,
            ..Changed::default()
        }))
    };
    let resend = store.get(&origin_key)?.is_some();
    if !resend && !c.copy {
        let Some(t) = &target else {
            return refused(Refusal::NotFound);
        };
        let state = inbox_state(p, store, &c.user, &change.message_id)?;
        let decided = decide(
            &change,
            &Target {
                author: &t.from,
                sent_at_ms: t.timestamp_ms,
                state: &state,
                visible: change.by == c.user || change.by == t.from,
                moderator: false,
            },
            c.now_ms,
            c.edit_window_ms,
        );
        if let Err(r) = decided {
            return refused(r);
        }
    }
    if !resend {
        let mut state = inbox_state(p, store, &c.user, &change.message_id)?;
        fold(&mut state, &change);
        store.put(
            inbox_state_key(p, &c.user, &change.message_id),
            state.encode_to_vec(),
        );
    }
    let entry = InboxEntry {
        from: change.by.clone(),
        kind: ConversationKind::Private as u32,
        conversation: conversation.clone(),
        timestamp_ms: c.now_ms,
        change: Some(change),
        ..InboxEntry::default()
    };
    let (appended, duplicate) = append(p, store, &c.user, &origin, entry, c.now_ms, &retention)?;
    Ok(outcome::Result::Changed(Changed {
        appended: Some(appended),
        duplicate,
        peer,
        refused: 0,
        conversation,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::apply_op;
    use crate::placement;
    use crate::store::MemStore;
    use chat_protocol::internal::command::Op;

    const HOUR: u64 = 3_600_000;

    fn change(kind: message_change::Kind, id: &str, text: &str, by: &str) -> MessageChange {
        MessageChange {
            kind: kind as i32,
            message_id: id.into(),
            text: text.into(),
            by: by.into(),
        }
    }

    fn target<'a>(author: &'a str, state: &'a MessageState) -> Target<'a> {
        Target {
            author,
            sent_at_ms: 1_000,
            state,
            visible: true,
            moderator: false,
        }
    }

    #[test]
    fn only_the_author_edits_and_only_within_the_window() {
        let state = MessageState::default();
        let edit = |by| change(message_change::Kind::Edit, "m", "fixed", by);
        let t = target("alice", &state);
        assert_eq!(decide(&edit("alice"), &t, 1_000 + 24 * HOUR, 24 * HOUR), Ok(()));
        assert_eq!(
            decide(&edit("alice"), &t, 1_001 + 24 * HOUR, 24 * HOUR),
            Err(Refusal::TooLate)
        );
        assert_eq!(
            decide(&edit("bob"), &t, 2_000, 24 * HOUR),
            Err(Refusal::NotAuthor)
        );
    }

    #[test]
    fn a_recall_is_the_authors_or_a_moderators_at_any_age_and_ends_all_changes() {
        let state = MessageState::default();
        let recall = |by| change(message_change::Kind::Recall, "m", "", by);
        let mut t = target("alice", &state);
        assert_eq!(decide(&recall("alice"), &t, 1_000 + 100 * HOUR, HOUR), Ok(()));
        assert_eq!(decide(&recall("bob"), &t, 2_000, HOUR), Err(Refusal::NotAuthor));
        t.moderator = true;
        assert_eq!(decide(&recall("bob"), &t, 2_000, HOUR), Ok(()));
        let recalled = MessageState {
            recalled: true,
            ..MessageState::default()
        };
        let t = target("alice", &recalled);
        for kind in [message_change::Kind::Edit, message_change::Kind::React] {
            assert_eq!(
                decide(&change(kind, "m", "x", "alice"), &t, 2_000, HOUR),
                Err(Refusal::NotFound)
            );
        }
    }

    #[test]
    fn whoever_cannot_see_a_message_cannot_learn_it_exists() {
        let state = MessageState::default();
        let mut t = target("alice", &state);
        t.visible = false;
        for kind in [
            message_change::Kind::Edit,
            message_change::Kind::Recall,
            message_change::Kind::React,
        ] {
            assert_eq!(
                decide(&change(kind, "m", "x", "mallory"), &t, 2_000, HOUR),
                Err(Refusal::NotFound)
            );
        }
    }

    #[test]
    fn reactions_are_one_per_user_changeable_and_removable() {
        let mut state = MessageState::default();
        let react = |by, emoji| change(message_change::Kind::React, "m", emoji, by);
        fold(&mut state, &react("bob", "👍"));
        fold(&mut state, &react("carol", "👍"));
        fold(&mut state, &react("alice", "🎉"));
        fold(&mut state, &react("bob", "🎉"));
        let view = |s: &MessageState| {
            s.reactions
                .iter()
                .map(|r| (r.emoji.clone(), r.users.join(",")))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            view(&state),
            [("👍".into(), "carol".into()), ("🎉".into(), "alice,bob".into())]
        );
        fold(&mut state, &react("carol", ""));
        assert_eq!(view(&state), [("🎉".to_string(), "alice,bob".to_string())]);
        fold(
            &mut state,
            &change(message_change::Kind::Edit, "m", "new", "alice"),
        );
        assert!(state.edited && state.text == "new");
        fold(
            &mut state,
            &change(message_change::Kind::Recall, "m", "", "alice"),
        );
        assert!(state.recalled && state.text.is_empty() && state.reactions.is_empty());
    }

    fn run(p: Partition, store: &mut MemStore, op: Op) -> outcome::Result {
        apply_op(p, op, store).unwrap().result.unwrap()
    }

    /// A private message as a node sends it: named by its sender's node.
    fn send(p: Partition, store: &mut MemStore, to: &str, from: &str, id: &str) -> String {
        send_as(p, store, to, from, id, keys::private_message_id(to, from, id))
    }

    /// `message_id` empty: named where it is applied, as before `m:` ids (`p:to:seq`).
    fn send_as(
        p: Partition,
        store: &mut MemStore,
        to: &str,
        from: &str,
        id: &str,
        message_id: String,
    ) -> String {
        let op = Op::Append(command::Append {
            user: to.into(),
            origin: keys::private_origin(from, id),
            entry: Some(InboxEntry {
                message_id,
                from: from.into(),
                kind: ConversationKind::Private as u32,
                conversation: to.into(),
                timestamp_ms: 1_000,
                text: format!("text {id}"),
                ..InboxEntry::default()
            }),
            ..command::Append::default()
        });
        match run(p, store, op) {
            outcome::Result::Appended(a) => a.message_id,
            other => panic!("not appended: {other:?}"),
        }
    }

    fn changing(user: &str, client_id: &str, c: MessageChange, now_ms: u64) -> Op {
        Op::ChangeMessage(command::ChangeMessage {
            user: user.into(),
            client_msg_id: client_id.into(),
            change: Some(c),
            now_ms,
            edit_window_ms: HOUR,
            ..command::ChangeMessage::default()
        })
    }

    fn changed(r: outcome::Result) -> Changed {
        match r {
            outcome::Result::Changed(c) => c,
            other => panic!("not changed: {other:?}"),
        }
    }

    #[test]
    fn a_private_change_is_decided_in_the_recipients_inbox_once_per_client_id() {
        let p = 9;
        let bob = placement::user_named_in(p, "user", 0);
        let mut store = MemStore::default();
        let id = send(p, &mut store, &bob, "alice", "m1");
        let edit = change(message_change::Kind::Edit, &id, "fixed", "alice");
        let first = changed(run(p, &mut store, changing(&bob, "e1", edit.clone(), 2_000)));
        assert_eq!((first.refused, first.duplicate), (0, false));
        assert_eq!(
            (first.peer.as_str(), first.conversation.as_str()),
            ("alice", bob.as_str())
        );
        // A resend, even after the window, gets the first answer and stores nothing.
        let again = changed(run(p, &mut store, changing(&bob, "e1", edit, 10 * HOUR)));
        assert!(again.duplicate);
        assert_eq!(again.appended, first.appended);
        assert_eq!(again.peer, "alice");
        let late = change(message_change::Kind::Edit, &id, "later", "alice");
        let refused = |r: outcome::Result| Refusal::from_u32(changed(r).refused);
        assert_eq!(
            refused(run(p, &mut store, changing(&bob, "e2", late, 10 * HOUR))),
            Some(Refusal::TooLate)
        );
        let by_bob = change(message_change::Kind::Edit, &id, "mine now", &bob);
        assert_eq!(
            refused(run(p, &mut store, changing(&bob, "e3", by_bob, 2_000))),
            Some(Refusal::NotAuthor)
        );
        let by_stranger = change(message_change::Kind::React, &id, "👍", "mallory");
        assert_eq!(
            refused(run(p, &mut store, changing(&bob, "e4", by_stranger, 2_000))),
            Some(Refusal::NotFound)
        );
        for (n, missing) in [
            format!("p:{bob}:99"),
            keys::private_message_id(&bob, "alice", "never sent"),
            keys::private_message_id("carol", "alice", "m1"),
        ]
        .into_iter()
        .enumerate()
        {
            let missing = change(message_change::Kind::Edit, &missing, "x", "alice");
            assert_eq!(
                refused(run(
                    p,
                    &mut store,
                    changing(&bob, &format!("e5.{n}"), missing, 2_000)
                )),
                Some(Refusal::NotFound)
            );
        }
        // The recipient reacts: told to the sender, as a message of the recipient's.
        let react = change(message_change::Kind::React, &id, "👍", &bob);
        let reacted = changed(run(p, &mut store, changing(&bob, "r1", react, 3_000)));
        assert_eq!(
            (reacted.peer.as_str(), reacted.conversation.as_str()),
            ("alice", "alice")
        );
        let state = inbox_state(p, &store, &bob, &id).unwrap();
        assert_eq!((state.text.as_str(), state.edited), ("fixed", true));
        assert_eq!(state.reactions[0].users, [bob]);
    }

    #[test]
    fn a_message_stored_under_a_seq_id_is_still_found_by_it() {
        let p = 9;
        let bob = placement::user_named_in(p, "user", 0);
        let mut store = MemStore::default();
        send(p, &mut store, &bob, "alice", "m1");
        let old = send_as(p, &mut store, &bob, "alice", "m0", String::new());
        assert_eq!(old, format!("p:{bob}:2"));
        let edit = change(message_change::Kind::Edit, &old, "fixed", "alice");
        assert_eq!(
            changed(run(p, &mut store, changing(&bob, "e1", edit, 2_000))).refused,
            0
        );
        let state = inbox_state(p, &store, &bob, &old).unwrap();
        assert_eq!((state.text.as_str(), state.edited), ("fixed", true));
    }

    #[test]
    fn history_shows_the_current_text_the_marks_and_the_reactions_but_not_the_changes() {
        use chat_protocol::internal::query::{self, Q};
        use chat_protocol::internal::{Query, answer::A};
        let p = 9;
        let bob = placement::user_named_in(p, "user", 0);
        let mut store = MemStore::default();
        let kept = send(p, &mut store, &bob, "alice", "m1");
        let gone = send(p, &mut store, &bob, "alice", "m2");
        let ops = [
            change(message_change::Kind::Edit, &kept, "fixed", "alice"),
            change(message_change::Kind::React, &kept, "👍", &bob),
            change(message_change::Kind::React, &kept, "👍", "alice"),
            change(message_change::Kind::Recall, &gone, "", "alice"),
        ];
        for (n, c) in ops.into_iter().enumerate() {
            let r = changed(run(p, &mut store, changing(&bob, &format!("c{n}"), c, 2_000)));
            assert_eq!(r.refused, 0);
        }
        let q = Q::PrivateHistory(query::PrivateHistory {
            user: bob.clone(),
            peer: "alice".into(),
            before: 0,
            limit: 10,
            scan: 100,
        });
        let Some(A::Entries(page)) = crate::query::evaluate(p, &Query { q: Some(q) }, &store)
            .unwrap()
            .a
        else {
            panic!("no entries");
        };
        let shown: Vec<_> = page
            .entries
            .iter()
            .map(|e| {
                let e = e.entry.clone().unwrap();
                let s = e.state.unwrap_or_default();
                let reactions: Vec<_> = s
                    .reactions
                    .iter()
                    .map(|r| (r.emoji.clone(), r.users.len()))
                    .collect();
                (e.text, s.edited, s.recalled, reactions)
            })
            .collect();
        assert_eq!(
            shown,
            [
                (String::new(), false, true, vec![]),
                ("fixed".to_string(), true, false, vec![("👍".to_string(), 2)]),
            ]
        );
    }

    #[test]
    fn mentions_name_members_once_and_nobody_else() {
        let members = ["bob".to_string(), "carol".into(), "d.e".into()];
        assert_eq!(
            mentions("hi @bob and @carol, @bob again; @mallory @d.e. @ @@", &members),
            ["bob", "carol", "d.e"]
        );
        assert!(mentions("mail bob@carol.org", &members).is_empty());
    }

    #[test]
    fn a_group_change_is_decided_in_the_groups_order_and_moderators_may_recall() {
        use chat_protocol::internal::query::{self, Q};
        use chat_protocol::internal::{Query, answer::A};
        let p = 11;
        let group = placement::group_named_in(p, "group", 0);
        let mut store = MemStore::default();
        let create = Op::CreateGroup(command::CreateGroup {
            group: group.clone(),
            creator: "owner".into(),
            now_ms: 1_000,
            ..command::CreateGroup::default()
        });
        run(p, &mut store, create);
        for user in ["alice", "bob", "carol"] {
            let join = Op::JoinGroup(command::JoinGroup {
                group: group.clone(),
                user: user.into(),
                now_ms: 1_000,
            });
            run(p, &mut store, join);
        }
        let post = |store: &mut MemStore, id: &str, text: &str| {
            let op = Op::Post(command::Post {
                group: group.clone(),
                from: "alice".into(),
                client_msg_id: id.into(),
                text: text.into(),
                now_ms: 1_000,
                reply_to: String::new(),
                attachments: Vec::new(),
            });
            match run(p, store, op) {
                outcome::Result::Posted(posted) => posted.message_id,
                other => panic!("not posted: {other:?}"),
            }
        };
        let first = post(&mut store, "m1", "hi @bob and @zed");
        let second = post(&mut store, "m2", "oops");
        let change_op = |client_id: &str, c: MessageChange, now_ms: u64| {
            Op::ChangeGroupMessage(command::ChangeGroupMessage {
                group: group.clone(),
                client_msg_id: client_id.into(),
                change: Some(c),
                now_ms,
                edit_window_ms: HOUR,
            })
        };
        let refusal = |r: outcome::Result| match r {
            outcome::Result::Changed(c) => Refusal::from_u32(c.refused),
            _ => None,
        };
        let edit = change(message_change::Kind::Edit, &first, "hi @bob", "alice");
        let Some(outcome::Result::Posted(edited)) =
            Some(run(p, &mut store, change_op("e1", edit.clone(), 2_000)))
        else {
            panic!("edit refused")
        };
        let Some(outcome::Result::Posted(again)) = Some(run(p, &mut store, change_op("e1", edit, 9 * HOUR)))
        else {
            panic!("resend refused")
        };
        assert!(again.duplicate && again.group_seq == edited.group_seq);
        let cases = [
            (
                change(message_change::Kind::Edit, &first, "x", "bob"),
                2_000,
                Some(Refusal::NotAuthor),
            ),
            (
                change(message_change::Kind::Edit, &first, "x", "alice"),
                9 * HOUR,
                Some(Refusal::TooLate),
            ),
            (
                change(message_change::Kind::Recall, &first, "", "carol"),
                2_000,
                Some(Refusal::NotAuthor),
            ),
            (
                change(message_change::Kind::React, &first, "👍", "mallory"),
                2_000,
                Some(Refusal::NotFound),
            ),
            (
                change(message_change::Kind::React, &edited.message_id, "👍", "bob"),
                2_000,
                Some(Refusal::NotFound),
            ),
            (
                change(message_change::Kind::React, &first, "👍", "bob"),
                2_000,
                None,
            ),
            (
                change(message_change::Kind::Recall, &second, "", "owner"),
                2_000,
                None,
            ),
            (
                change(message_change::Kind::Edit, &second, "back", "alice"),
                2_000,
                Some(Refusal::NotFound),
            ),
        ];
        for (n, (c, now, want)) in cases.into_iter().enumerate() {
            let got = refusal(run(p, &mut store, change_op(&format!("c{n}"), c.clone(), now)));
            assert_eq!(got, want, "{c:?}");
        }
        let history = |user: &str| {
            let q = Q::GroupHistory(query::GroupHistory {
                group: group.clone(),
                user: user.into(),
                before: 0,
                limit: 10,
            });
            let Some(A::Posts(page)) = crate::query::evaluate(p, &Query { q: Some(q) }, &store)
                .unwrap()
                .a
            else {
                panic!("no posts");
            };
            page.posts
                .into_iter()
                .filter_map(|post| post.message)
                .filter(|m| m.event.is_none())
                .map(|m| {
                    let s = m.state.unwrap_or_default();
                    (m.text, s.edited, s.recalled, s.reactions.len(), m.mentions)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            history("bob"),
            [
                (String::new(), false, true, 0, vec![]),
                ("hi @bob".to_string(), true, false, 1, vec!["bob".to_string()]),
            ]
        );
        assert_eq!(history("carol")[1].4, Vec::<String>::new());
    }
}
