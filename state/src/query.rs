//! Reads of a partition's records: what a leader answers after a read barrier.
//!
//! Pure like [`crate::machine`]: a [`Query`] and a [`Store`] in, an [`Answer`] out. The
//! node evaluates queries only where a read barrier has just confirmed that it leads the
//! partition and has applied everything committed before the query arrived, so an
//! answer never misses an acknowledged write.

use crate::groups::{self, group};
use crate::keys::{self, kind, tree};
use crate::placement::Partition;
use crate::store::{Result, Store, decode};
use chat_protocol::internal::answer::{self, A};
use chat_protocol::internal::outcome;
use chat_protocol::internal::query::{self, Q};
use chat_protocol::internal::response::Flags;
use chat_protocol::internal::{
    Answer, ContactIndex, Empty, GroupMessage, InboxEntry, InboxMeta, Query, TokenRecord,
};
use chat_protocol::v1::{Contact, ContactState, ConversationKind};

/// Most entries or posts one query returns, whatever it asks for.
pub const MAX_PAGE: usize = 1000;
/// Most inbox entries one private-history query looks at, whatever it asks for.
pub const MAX_SCAN: usize = 20_000;

/// Answers `query` from partition `p`'s records.
pub fn evaluate(p: Partition, query: &Query, store: &impl Store) -> Result<Answer> {
    let a = match &query.q {
        None => A::NotFound(Empty {}),
        Some(Q::Account(user)) => match crate::machine::live_account(store.get(&keys::account(p, user))?)? {
            Some(record) => A::Account(record),
            None => A::NotFound(Empty {}),
        },
        Some(Q::Token(t)) => {
            match decode::<TokenRecord>(store.get(&keys::token(p, &t.user, &t.token))?, "token")? {
                Some(record) => A::Token(record),
                None => A::NotFound(Empty {}),
            }
        }
        Some(Q::Devices(d)) => A::Devices(crate::devices::list(p, store, &d.user, d.now_ms)?),
        Some(Q::Blob(id)) => match crate::blobs::record(p, store, id)? {
            Some(record) => A::Blob(record),
            None => A::NotFound(Empty {}),
        },
        Some(Q::UploadUsage(u)) => A::Usage(crate::blobs::usage(p, store, u)?),
        Some(Q::InboxMeta(user)) => A::InboxMeta(inbox_meta(p, store, user)?),
        Some(Q::Entries(e)) => A::Entries(entries(p, store, e)?),
        Some(Q::PrivateHistory(h)) => A::Entries(private_history(p, store, h)?),
        Some(Q::Contacts(user)) => A::Contacts(answer::Contacts {
            contacts: contacts_of(p, store, user)?,
        }),
        Some(Q::Blocks(user)) => A::Names(answer::Names {
            names: names_under(store, &keys::scoped(p, tree::CONTACTS, user, kind::BLOCKED))?,
        }),
        Some(Q::GroupInfo(g)) => match groups::info(p, store, &g.group, &g.user)? {
            Ok(info) => A::GroupInfo(info),
            Err(groups::Missing::Group) => A::NotFound(Empty {}),
            Err(groups::Missing::Membership) => A::NotAMember(Empty {}),
        },
        Some(Q::MayMessage(pair)) => match crate::machine::refusal(p, store, &pair.user, &pair.other)? {
            None => A::Allowed(Empty {}),
            Some(outcome::Result::NotFound(_)) => A::NotFound(Empty {}),
            Some(_) => A::NotAllowed(Empty {}),
        },
        Some(Q::GroupsOf(user)) => {
            let prefix = keys::scoped(p, tree::INBOX, user, kind::GROUP);
            A::Names(answer::Names {
                names: names_under(store, &prefix)?,
            })
        }
        Some(Q::Members(g)) => match member_check(p, store, &g.group, &g.user)? {
            Some(refusal) => refusal,
            None => {
                let prefix = keys::scoped(p, tree::GROUPS, &g.group, kind::MEMBER);
                A::Names(answer::Names {
                    names: names_under(store, &prefix)?,
                })
            }
        },
        Some(Q::GroupHistory(h)) => match member_check(p, store, &h.group, &h.user)? {
            Some(refusal) => refusal,
            None => A::Posts(group_history(p, store, h)?),
        },
        Some(Q::GroupState(g)) => {
            let origin = keys::group_origin(&g.group, g.group_seq);
            let at = store.get(&keys::suffix_key(p, tree::INBOX, &g.user, kind::ORIGIN, &origin))?;
            let meta = inbox_meta(p, store, &g.user)?;
            let flags = match at.map(|v| keys::seq_of(&v)) {
                Some(seq) => Flags {
                    delivered: seq <= meta.delivered_seq,
                    read: seq <= meta.read_seq,
                },
                None => Flags::default(),
            };
            A::Flags(flags)
        }
        Some(Q::GroupPost(g)) => match member_check(p, store, &g.group, &g.user)? {
            Some(refusal) => refusal,
            None => {
                // What the member may not read (history hidden from new members) is
                // answered as missing, receipts included.
                let record = group(p, store, &g.group)?.unwrap_or_default();
                let entry = groups::member(p, store, &g.group, &g.user)?.unwrap_or_default();
                let key = keys::seq_key(p, tree::GROUPS, &g.group, kind::MESSAGE, g.group_seq);
                let readable = g.group_seq >= groups::first_readable(&record, &entry);
                match decode::<GroupMessage>(store.get(&key)?, "group message")?.filter(|_| readable) {
                    Some(post) => A::Post(post),
                    None => A::NotFound(Empty {}),
                }
            }
        },
        Some(Q::GroupCreator(name)) => match group(p, store, name)? {
            Some(record) => A::Names(answer::Names {
                names: vec![record.creator],
            }),
            None => A::NotFound(Empty {}),
        },
        Some(Q::ListAccounts(ask)) => A::Accounts(crate::admin::list_accounts(p, store, ask)?),
        Some(Q::ListGroups(ask)) => A::Groups(crate::admin::list_groups(p, store, ask)?),
        Some(Q::FanoutPlan(g)) => {
            let plan = crate::fanout::plan(p, store, &g.group, g.group_seq.max(1))?;
            A::Plan(answer::Plan {
                batches: plan
                    .batches
                    .into_iter()
                    .map(|b| answer::Batch {
                        partition: u32::from(b.partition),
                        items: b.items,
                        up_to: b.up_to,
                    })
                    .collect(),
                complete_up_to: plan.complete_up_to.unwrap_or(0),
            })
        }
    };
    Ok(Answer { a: Some(a) })
}

fn inbox_meta(p: Partition, store: &impl Store, user: &str) -> Result<InboxMeta> {
    Ok(decode(
        store.get(&keys::scoped(p, tree::INBOX, user, kind::META))?,
        "inbox meta",
    )?
    .unwrap_or_default())
}

/// The names after `prefix` of every key under it, in order.
fn names_under(store: &impl Store, prefix: &[u8]) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(prefix, after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        names.extend(
            page.iter()
                .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned()),
        );
    }
    Ok(names)
}

/// `user`'s relations, by name (a relation that ended is not listed, nor a request from
/// a user it blocks while the block lasts).
fn contacts_of(p: Partition, store: &impl Store, user: &str) -> Result<Vec<Contact>> {
    let blocks = crate::machine::live_account(store.get(&keys::account(p, user))?)?.map_or(0, |a| a.blocks);
    let prefix = keys::scoped(p, tree::CONTACTS, user, kind::CONTACT);
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(&prefix, after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, value) in page {
            let Some(view) = decode::<ContactIndex>(Some(value), "contact")? else {
                continue;
            };
            let other = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let hidden = view.state == ContactState::Incoming as u32
                && blocks > 0
                && store.get(&keys::blocked(p, user, &other))?.is_some();
            if view.state == ContactState::None as u32 || hidden {
                continue;
            }
            out.push(Contact {
                user: other,
                state: view.state as i32,
                since_ms: view.since_ms,
                ..Contact::default()
            });
        }
    }
    Ok(out)
}

/// `None` when `user` is a member of `group`; otherwise the answer that says why not.
fn member_check(p: Partition, store: &impl Store, group_name: &str, user: &str) -> Result<Option<A>> {
    if group(p, store, group_name)?.is_none() {
        return Ok(Some(A::NotFound(Empty {})));
    }
    let key = keys::suffix_key(p, tree::GROUPS, group_name, kind::MEMBER, user.as_bytes());
    Ok(store.get(&key)?.is_none().then_some(A::NotAMember(Empty {})))
}

fn entries(p: Partition, store: &impl Store, e: &query::Entries) -> Result<answer::Entries> {
    let meta = inbox_meta(p, store, &e.user)?;
    let limit = (e.limit as usize).min(MAX_PAGE);
    let prefix = keys::scoped(p, tree::INBOX, &e.user, kind::ENTRY);
    let after = keys::seq_key(p, tree::INBOX, &e.user, kind::ENTRY, e.after);
    let mut out = Vec::new();
    if limit > 0 {
        for (key, value) in store.scan(&prefix, Some(&after), limit)? {
            let entry: Option<InboxEntry> = decode(Some(value), "inbox entry")?;
            out.push(answer::Entry {
                seq: keys::seq_of(&key),
                entry,
            });
        }
    }
    Ok(answer::Entries {
        entries: out,
        meta: Some(meta),
        next: 0,
    })
}

/// The private conversation of `user` with `peer`, both directions (the peer's
/// messages, and `user`'s own copies of what it sent the peer), newest first.
fn private_history(p: Partition, store: &impl Store, h: &query::PrivateHistory) -> Result<answer::Entries> {
    let meta = inbox_meta(p, store, &h.user)?;
    let limit = (h.limit as usize).min(MAX_PAGE);
    let scan = (h.scan as usize).clamp(limit, MAX_SCAN);
    let top = if h.before == 0 {
        meta.last_seq
    } else {
        h.before.saturating_sub(1).min(meta.last_seq)
    };
    let (mut out, mut next, mut scanned) = (Vec::new(), 0, 0);
    let mut seq = top;
    while seq >= meta.first_seq.max(1) {
        if out.len() == limit || scanned == scan {
            next = seq + 1;
            break;
        }
        scanned += 1;
        let key = keys::seq_key(p, tree::INBOX, &h.user, kind::ENTRY, seq);
        if let Some(entry) = decode::<InboxEntry>(store.get(&key)?, "inbox entry")?
            && entry.kind == ConversationKind::Private as u32
            && entry.receipt.is_none()
            && entry.contact.is_none()
            && entry.change.is_none()
            && (entry.from == h.peer || (entry.from == h.user && entry.conversation == h.peer))
        {
            let mut entry = entry;
            let state = crate::changes::inbox_state(p, store, &h.user, &entry.message_id)?;
            crate::changes::view(&mut entry, (state != Default::default()).then_some(state));
            out.push(answer::Entry {
                seq,
                entry: Some(entry),
            });
        }
        seq -= 1;
    }
    Ok(answer::Entries {
        entries: out,
        meta: Some(meta),
        next,
    })
}

fn group_history(p: Partition, store: &impl Store, h: &query::GroupHistory) -> Result<answer::Posts> {
    let record = group(p, store, &h.group)?.unwrap_or_default();
    let entry = groups::member(p, store, &h.group, &h.user)?.unwrap_or_default();
    let first = groups::first_readable(&record, &entry);
    let limit = (h.limit as usize).min(MAX_PAGE);
    let top = if h.before == 0 {
        record.last_seq
    } else {
        h.before.saturating_sub(1).min(record.last_seq)
    };
    let mut posts = Vec::new();
    let mut seq = top;
    while seq >= first && posts.len() < limit {
        let key = keys::seq_key(p, tree::GROUPS, &h.group, kind::MESSAGE, seq);
        if let Some(mut message) = decode::<GroupMessage>(store.get(&key)?, "group message")?
            && message.change.is_none()
        {
            crate::changes::view_post(p, store, &h.group, seq, &h.user, &mut message)?;
            posts.push(answer::Post {
                group_seq: seq,
                message: Some(message),
            });
        }
        seq -= 1;
    }
    let next = match posts.last() {
        Some(last) if posts.len() == limit && last.group_seq > first => last.group_seq,
        _ => 0,
    };
    Ok(answer::Posts { posts, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::apply_op;
    use crate::placement;
    use crate::store::MemStore;
    use chat_protocol::internal::AccountRecord;
    use chat_protocol::internal::command::{self, Op};

    fn user_in(p: Partition, n: usize) -> String {
        placement::user_named_in(p, "user", n)
    }

    fn ask(p: Partition, store: &MemStore, q: Q) -> A {
        evaluate(p, &Query { q: Some(q) }, store).unwrap().a.unwrap()
    }

    fn register(p: Partition, store: &mut MemStore, user: &str) {
        let record = AccountRecord {
            password_hash: "h".into(),
            created_at_ms: 1,
            ..AccountRecord::default()
        };
        let op = Op::CreateAccount(command::CreateAccount {
            user: user.into(),
            record: Some(record),
        });
        apply_op(p, op, store).unwrap();
    }

    fn append(p: Partition, store: &mut MemStore, user: &str, from: &str, to: &str, text: &str) {
        let op = Op::Append(command::Append {
            user: user.into(),
            origin: keys::private_origin(from, text),
            entry: Some(InboxEntry {
                from: from.into(),
                kind: ConversationKind::Private as u32,
                conversation: to.into(),
                text: text.into(),
                timestamp_ms: 1,
                ..InboxEntry::default()
            }),
            require_account: false,
            now_ms: 1,
            retention: None,
        });
        apply_op(p, op, store).unwrap();
    }

    #[test]
    fn accounts_and_tokens_are_found_or_not() {
        let p = 3;
        let (alice, mut store) = (user_in(p, 0), MemStore::default());
        assert_eq!(ask(p, &store, Q::Account(alice.clone())), A::NotFound(Empty {}));
        register(p, &mut store, &alice);
        assert!(matches!(ask(p, &store, Q::Account(alice.clone())), A::Account(r) if r.password_hash == "h"));
        let key = query::TokenKey {
            user: alice.clone(),
            token: "t".into(),
        };
        assert_eq!(ask(p, &store, Q::Token(key.clone())), A::NotFound(Empty {}));
        let op = Op::PutToken(command::PutToken {
            user: alice,
            token: "t".into(),
            record: Some(TokenRecord {
                expires_at_ms: 9,
                ..TokenRecord::default()
            }),
        });
        apply_op(p, op, &mut store).unwrap();
        assert_eq!(
            ask(p, &store, Q::Token(key)),
            A::Token(TokenRecord {
                expires_at_ms: 9,
                ..TokenRecord::default()
            })
        );
    }

    #[test]
    fn entries_page_after_a_seq_with_the_cursors() {
        let p = 5;
        let (bob, mut store) = (user_in(p, 0), MemStore::default());
        for i in 0..5 {
            append(p, &mut store, &bob, "alice", &bob, &format!("m{i}"));
        }
        let page = |after, limit| match ask(
            p,
            &store,
            Q::Entries(query::Entries {
                user: bob.clone(),
                after,
                limit,
            }),
        ) {
            A::Entries(e) => e,
            other => panic!("{other:?}"),
        };
        let e = page(1, 2);
        assert_eq!(e.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(e.entries[0].entry.as_ref().unwrap().text, "m1");
        assert_eq!(e.meta.unwrap().last_seq, 5);
        assert!(page(5, 10).entries.is_empty());
        assert!(page(0, 0).entries.is_empty());
    }

    #[test]
    fn private_history_keeps_one_conversation_both_ways_newest_first() {
        let p = 6;
        let (bob, mut store) = (user_in(p, 0), MemStore::default());
        append(p, &mut store, &bob, "alice", &bob, "a1"); // 1
        append(p, &mut store, &bob, "carol", &bob, "c1"); // 2
        append(p, &mut store, &bob, &bob, "alice", "b1"); // 3: bob's own copy to alice
        append(p, &mut store, &bob, &bob, "carol", "b2"); // 4: to carol
        append(p, &mut store, &bob, "alice", &bob, "a2"); // 5
        let history = |before, limit, scan| match ask(
            p,
            &store,
            Q::PrivateHistory(query::PrivateHistory {
                user: bob.clone(),
                peer: "alice".into(),
                before,
                limit,
                scan,
            }),
        ) {
            A::Entries(e) => (e.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), e.next),
            other => panic!("{other:?}"),
        };
        assert_eq!(history(0, 10, 100), (vec![5, 3, 1], 0));
        // A full page says where to go on: below the last seq looked at.
        assert_eq!(history(0, 2, 100), (vec![5, 3], 3));
        assert_eq!(history(3, 10, 100), (vec![1], 0));
    }

    #[test]
    fn members_history_and_posts_are_for_members_only() {
        let p = 7;
        let group = placement::group_named_in(p, "group", 0);
        let mut store = MemStore::default();
        let asks = |user: &str| query::GroupAsk {
            group: group.clone(),
            user: user.into(),
            group_seq: 1,
        };
        assert_eq!(ask(p, &store, Q::Members(asks("ann"))), A::NotFound(Empty {}));
        let create = Op::CreateGroup(command::CreateGroup {
            group: group.clone(),
            creator: "ann".into(),
            now_ms: 1,
            ..Default::default()
        });
        apply_op(p, create, &mut store).unwrap();
        crate::groups::add_member(p, &mut store, &group, "ben");
        for i in 0..3 {
            let post = Op::Post(command::Post {
                group: group.clone(),
                from: "ann".into(),
                client_msg_id: format!("c{i}"),
                text: format!("t{i}"),
                now_ms: 1,
                reply_to: String::new(),
                attachments: Vec::new(),
            });
            apply_op(p, post, &mut store).unwrap();
        }
        assert_eq!(
            ask(p, &store, Q::Members(asks("ben"))),
            A::Names(answer::Names {
                names: vec!["ann".into(), "ben".into()]
            })
        );
        assert_eq!(ask(p, &store, Q::Members(asks("eve"))), A::NotAMember(Empty {}));
        assert_eq!(
            ask(p, &store, Q::GroupCreator(group.clone())),
            A::Names(answer::Names {
                names: vec!["ann".into()]
            })
        );
        assert_eq!(
            ask(p, &store, Q::GroupCreator("none".into())),
            A::NotFound(Empty {})
        );
        assert_eq!(ask(p, &store, Q::GroupPost(asks("eve"))), A::NotAMember(Empty {}));
        assert!(matches!(ask(p, &store, Q::GroupPost(asks("ben"))), A::Post(m) if m.text == "t0"));
        let history = |before, limit| match ask(
            p,
            &store,
            Q::GroupHistory(query::GroupHistory {
                group: group.clone(),
                user: "ben".into(),
                before,
                limit,
            }),
        ) {
            A::Posts(posts) => (
                posts.posts.iter().map(|p| p.group_seq).collect::<Vec<_>>(),
                posts.next,
            ),
            other => panic!("{other:?}"),
        };
        assert_eq!(history(0, 2), (vec![3, 2], 2));
        assert_eq!(history(2, 2), (vec![1], 0));
    }

    #[test]
    fn the_fan_out_plan_is_the_planners() {
        let p = 11;
        let group = placement::group_named_in(p, "group", 0);
        let mut store = MemStore::default();
        let create = Op::CreateGroup(command::CreateGroup {
            group: group.clone(),
            creator: "ann".into(),
            now_ms: 1,
            ..Default::default()
        });
        apply_op(p, create, &mut store).unwrap();
        for user in ["ben", "cy"] {
            crate::groups::add_member(p, &mut store, &group, user);
        }
        let post = Op::Post(command::Post {
            group: group.clone(),
            from: "ann".into(),
            client_msg_id: "c".into(),
            text: "t".into(),
            now_ms: 1,
            reply_to: String::new(),
            attachments: Vec::new(),
        });
        apply_op(p, post, &mut store).unwrap();
        let ask_plan = Q::FanoutPlan(query::GroupAsk {
            group: group.clone(),
            user: String::new(),
            group_seq: 10,
        });
        let A::Plan(plan) = ask(p, &store, ask_plan) else {
            panic!("a plan")
        };
        let want = crate::fanout::plan(p, &store, &group, 10).unwrap();
        assert_eq!(plan.batches.len(), want.batches.len());
        for (got, want) in plan.batches.iter().zip(&want.batches) {
            assert_eq!(got.partition, u32::from(want.partition));
            assert_eq!(got.items, want.items);
            assert_eq!(got.up_to, 1);
        }
        let users: usize = plan.batches.iter().map(|b| b.items.len()).sum();
        assert_eq!(users, 2, "ben and cy, not the sender");
        assert_eq!(plan.complete_up_to, 0);
    }

    #[test]
    fn group_state_follows_the_members_cursors() {
        let p = 9;
        let (bob, mut store) = (user_in(p, 0), MemStore::default());
        register(p, &mut store, &bob);
        let fanout = Op::Fanout(command::Fanout {
            group: "g".into(),
            items: vec![command::FanoutItem {
                user: bob.clone(),
                group_seq: 4,
                message_id: "g:g:4".into(),
                from: "ann".into(),
                timestamp_ms: 1,
                text: "hi".into(),
                ..Default::default()
            }],
            now_ms: 1,
            retention: None,
        });
        apply_op(p, fanout, &mut store).unwrap();
        let state = |store: &MemStore, group_seq| {
            ask(
                p,
                store,
                Q::GroupState(query::GroupAsk {
                    group: "g".into(),
                    user: bob.clone(),
                    group_seq,
                }),
            )
        };
        assert_eq!(state(&store, 4), A::Flags(Flags::default()));
        let ack = Op::Ack(command::Ack {
            user: bob.clone(),
            read: false,
            up_to: 1,
        });
        apply_op(p, ack, &mut store).unwrap();
        assert_eq!(
            state(&store, 4),
            A::Flags(Flags {
                delivered: true,
                read: false
            })
        );
        assert_eq!(state(&store, 5), A::Flags(Flags::default()));
    }
}
