//! What operators ask of a partition: a page of its accounts or groups by name, and the
//! removal of a deleted group's records one bounded batch at a time.
//!
//! A listing is a scatter: the node asks every partition for its page (accounts and
//! groups are spread over [`crate::placement::PARTITIONS`] partitions by a hash of
//! their names) and [`merge`]s the pages. Each page is bounded, and says how far it
//! looked (`covered`), so that the merged page never skips a name a partition did not
//! get to.

use crate::keys::{self, kind, tree};
use crate::placement::Partition;
use crate::store::{Result, Store, decode};
use chat_protocol::internal::answer::{AccountSummary, Accounts, GroupSummary, Groups};
use chat_protocol::internal::command::{PurgeGroup, PurgeUser};
use chat_protocol::internal::outcome::{self, Purged};
use chat_protocol::internal::query::ListPage;
use chat_protocol::internal::{AccountRecord, Empty, GroupRecord};
use prost::Message;

/// Most names one page holds, whatever it asks for.
pub const MAX_LIST: usize = 1000;
/// Most groups one page of one name length visits beyond the page (groups being
/// deleted are skipped, and must not make a page unbounded).
const MAX_SKIPPED: usize = 256;
/// Most members counted per group (more: "at least").
pub const MAX_MEMBERS_COUNTED: usize = 1000;
/// Most member records one page of groups counts over all its groups.
pub const MAX_MEMBERS_SCANNED: usize = 20_000;
/// Most records one [`PurgeGroup`] batch removes besides the members it forgets (and
/// most members it names).
pub const MAX_PURGE: u32 = 4096;

/// A page of names: the items, whether more may follow, and, when they may, the last
/// name looked at (the next page starts after it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listed<T> {
    /// In name order.
    pub items: Vec<T>,
    /// More names may follow `covered`.
    pub has_more: bool,
    /// With `has_more`: every name up to this one was looked at.
    pub covered: String,
}

/// Merges pages of disjoint name sets into one page of at most `limit` items, in name
/// order. A page that has more stopped at its `covered` name: nothing past the lowest
/// such name can be listed yet, since a page that stopped there may hold names before
/// the others'.
pub fn merge<T>(
    pages: impl IntoIterator<Item = Listed<T>>,
    limit: usize,
    name: impl Fn(&T) -> &str,
) -> Listed<T> {
    let mut cutoff: Option<String> = None;
    let mut items = Vec::new();
    for page in pages {
        if page.has_more && cutoff.as_ref().is_none_or(|c| page.covered < *c) {
            cutoff = Some(page.covered);
        }
        items.extend(page.items);
    }
    if let Some(cutoff) = &cutoff {
        items.retain(|i| name(i) <= cutoff.as_str());
    }
    items.sort_by(|a, b| name(a).cmp(name(b)));
    if items.len() > limit {
        items.truncate(limit);
        let covered = items.last().map(|i| name(i).to_owned()).unwrap_or_default();
        return Listed {
            items,
            has_more: true,
            covered,
        };
    }
    match cutoff {
        Some(covered) => Listed {
            items,
            has_more: true,
            covered,
        },
        None => Listed {
            items,
            has_more: false,
            covered: String::new(),
        },
    }
}

/// The page size asked, within 1 and [`MAX_LIST`].
pub fn page_size(asked: u32) -> usize {
    (asked as usize).clamp(1, MAX_LIST)
}

/// `after` as a scan's lower bound under `prefix`, or `None` to start at the prefix (a
/// scan that starts before its prefix would find nothing).
fn lower_bound(prefix: &[u8], after: Vec<u8>) -> Option<Vec<u8>> {
    (after.as_slice() > prefix).then_some(after)
}

/// Partition `p`'s accounts whose names start with `ask.prefix`, after `ask.after`.
pub fn list_accounts(p: Partition, store: &impl Store, ask: &ListPage) -> Result<Accounts> {
    let limit = page_size(ask.limit);
    let prefix = keys::account(p, &ask.prefix);
    let after = (!ask.after.is_empty())
        .then(|| keys::account(p, &ask.after))
        .and_then(|a| lower_bound(&prefix, a));
    let start = keys::account(p, "").len();
    let mut accounts = Vec::new();
    for (key, value) in store.scan(&prefix, after.as_deref(), limit + 1)? {
        let record: AccountRecord = decode(Some(value), "account")?.unwrap_or_default();
        accounts.push(AccountSummary {
            name: String::from_utf8_lossy(&key[start..]).into_owned(),
            created_at_ms: record.created_at_ms,
            disabled: record.disabled,
        });
    }
    let has_more = accounts.len() > limit;
    accounts.truncate(limit);
    let covered = if has_more {
        accounts.last().map(|a| a.name.clone()).unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Accounts {
        accounts,
        has_more,
        covered,
    })
}

/// Partition `p`'s groups whose names start with `ask.prefix`, after `ask.after`, with
/// their member counts (bounded: [`MAX_MEMBERS_COUNTED`], [`MAX_MEMBERS_SCANNED`]).
/// Groups being deleted are left out.
///
/// A group's records are keyed by its name's length first, so names sort by length,
/// then bytes: each length present is listed apart and the lists are merged.
pub fn list_groups(p: Partition, store: &impl Store, ask: &ListPage) -> Result<Groups> {
    let limit = page_size(ask.limit);
    let mut all_groups = keys::partition_prefix(p).to_vec();
    all_groups.push(tree::GROUPS);
    let mut pages = Vec::new();
    let mut len = ask.prefix.len().max(1);
    while len <= usize::from(u8::MAX) {
        // The first group whose name has `len` bytes or more: past every key of a
        // shorter name (names are UTF-8, which has no byte 0xff).
        let mut shorter = all_groups.clone();
        shorter.extend_from_slice(&[(len - 1) as u8, u8::MAX]);
        let Some((key, _)) = store.scan(&all_groups, Some(&shorter), 1)?.into_iter().next() else {
            break;
        };
        len = usize::from(key.get(3).copied().unwrap_or(u8::MAX)).max(len);
        pages.push(groups_of_length(p, store, ask, len, limit)?);
        len += 1;
    }
    let mut page = merge(pages, limit, |g: &GroupSummary| &g.name);
    let mut budget = MAX_MEMBERS_SCANNED;
    for g in &mut page.items {
        let members = keys::scoped(p, tree::GROUPS, &g.name, kind::MEMBER);
        let bound = MAX_MEMBERS_COUNTED.min(budget);
        let counted = store.scan(&members, None, bound + 1)?.len();
        g.members = counted.min(bound) as u64;
        g.members_at_least = counted > bound;
        budget -= counted.min(bound);
    }
    Ok(Groups {
        groups: page.items,
        has_more: page.has_more,
        covered: page.covered,
    })
}

/// The groups whose names have `len` bytes, start with the prefix and come after
/// `after`, at most `limit` (without member counts).
fn groups_of_length(
    p: Partition,
    store: &impl Store,
    ask: &ListPage,
    len: usize,
    limit: usize,
) -> Result<Listed<GroupSummary>> {
    let mut base = keys::partition_prefix(p).to_vec();
    base.extend_from_slice(&[tree::GROUPS, len as u8]);
    let mut prefix = base.clone();
    prefix.extend_from_slice(ask.prefix.as_bytes());
    // Past every key of the group named `name` (its kinds are below 0xff).
    let past = |name: &[u8]| {
        let mut key = base.clone();
        key.extend_from_slice(name);
        key.push(u8::MAX);
        key
    };
    let after = ask.after.as_bytes();
    let mut cursor = match after.len() {
        0 => None,
        // A name of `len` bytes comes after `after` only if it is above its first `len`.
        n if n >= len => lower_bound(&prefix, past(&after[..len])),
        // A longer name comes after `after` if it starts with it or sorts above it; no
        // key is exactly `base ‖ after`, so starting after it misses nothing.
        _ => lower_bound(&prefix, [base.as_slice(), after].concat()),
    };
    let mut items = Vec::new();
    let mut visited = 0;
    loop {
        let Some((key, _)) = store.scan(&prefix, cursor.as_deref(), 1)?.into_iter().next() else {
            return Ok(Listed {
                items,
                has_more: false,
                covered: String::new(),
            });
        };
        let Some(name_bytes) = key.get(base.len()..base.len() + len) else {
            // Not a key of this layout (nothing writes one): the listing ends here.
            return Ok(Listed {
                items,
                has_more: false,
                covered: String::new(),
            });
        };
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        if items.len() == limit || visited == limit + MAX_SKIPPED {
            // Another group is there: the page stops before it.
            let covered = past_name(&items, &cursor, &base, len);
            return Ok(Listed {
                items,
                has_more: true,
                covered,
            });
        }
        visited += 1;
        cursor = Some(past(name_bytes));
        if let Some(record) = live_group(p, store, &name)? {
            items.push(summary(name, record));
        }
    }
}

/// The last name a page of one length looked at: the last before the cursor.
fn past_name(items: &[GroupSummary], cursor: &Option<Vec<u8>>, base: &[u8], len: usize) -> String {
    match cursor {
        Some(c) if c.len() == base.len() + len + 1 && c.last() == Some(&u8::MAX) => {
            String::from_utf8_lossy(&c[base.len()..base.len() + len]).into_owned()
        }
        _ => items.last().map(|g| g.name.clone()).unwrap_or_default(),
    }
}

/// A group's record unless it is being deleted (as `crate::machine`'s reads see it; this
/// module stays below the machine, which applies [`purge_group`]).
fn live_group(p: Partition, store: &impl Store, name: &str) -> Result<Option<GroupRecord>> {
    let record: Option<GroupRecord> = decode(
        store.get(&keys::scoped(p, tree::GROUPS, name, kind::META))?,
        "group record",
    )?;
    Ok(record.filter(|r| !r.deleting))
}

fn summary(name: String, record: GroupRecord) -> GroupSummary {
    GroupSummary {
        name,
        creator: record.creator,
        created_at_ms: record.created_at_ms,
        members: 0,
        members_at_least: false,
    }
}

/// One batch of a user's deletion: the account becomes a tombstone (deleted and
/// disabled, no password: the name stays taken), then up to `limit` of the user's
/// records go: tokens, the inbox (entries, cursors, dedupe index, list of groups), and
/// contacts, blocks and pair records kept under its name. `done` once none is left.
pub fn purge_user(p: Partition, store: &mut impl Store, c: &PurgeUser) -> Result<outcome::Result> {
    let account_key = keys::account(p, &c.user);
    let Some(account) = decode::<AccountRecord>(store.get(&account_key)?, "account")? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    if !account.deleted {
        let tombstone = AccountRecord {
            created_at_ms: account.created_at_ms,
            disabled: true,
            deleted: true,
            ..AccountRecord::default()
        };
        store.put(account_key, tombstone.encode_to_vec());
    }
    let limit = c.limit.clamp(1, MAX_PURGE) as usize;
    let scope = |tree: u8| {
        let mut prefix = keys::scoped(p, tree, &c.user, 0);
        prefix.pop();
        prefix
    };
    let mut removed = 0;
    for prefix in [
        keys::token(p, &c.user, ""),
        scope(tree::INBOX),
        scope(tree::CONTACTS),
        scope(tree::UPLOADS),
    ] {
        for (key, _) in store.scan(&prefix, None, limit - removed)? {
            store.delete(key);
            removed += 1;
        }
        if removed == limit {
            break;
        }
    }
    Ok(outcome::Result::Purged(Purged {
        members: Vec::new(),
        done: removed < limit,
    }))
}

/// One batch of a group's deletion (see [`PurgeGroup`]): marks it deleting, removes
/// the members the proposer forgot and up to `limit` other records, and names the
/// members left. The last batch removes the group's record and its pending marker.
pub fn purge_group(p: Partition, store: &mut impl Store, c: &PurgeGroup) -> Result<outcome::Result> {
    let meta = keys::scoped(p, tree::GROUPS, &c.group, kind::META);
    let Some(mut record) = decode::<GroupRecord>(store.get(&meta)?, "group record")? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    let limit = c.limit.clamp(1, MAX_PURGE) as usize;
    if !record.deleting {
        record.deleting = true;
        store.put(meta.clone(), record.encode_to_vec());
    }
    for user in c.forget.iter().take(limit) {
        store.delete(keys::suffix_key(
            p,
            tree::GROUPS,
            &c.group,
            kind::MEMBER,
            user.as_bytes(),
        ));
    }
    // Everything of the group but its record and its members: past every member key
    // (names are UTF-8, which has no byte 0xff).
    let mut everything = meta.clone();
    everything.pop();
    let mut past_members = keys::scoped(p, tree::GROUPS, &c.group, kind::MEMBER);
    past_members.push(u8::MAX);
    let rest = store.scan(&everything, Some(&past_members), limit)?;
    let removed = rest.len();
    for (key, _) in rest {
        store.delete(key);
    }
    let members_prefix = keys::scoped(p, tree::GROUPS, &c.group, kind::MEMBER);
    let members: Vec<String> = store
        .scan(&members_prefix, None, limit)?
        .into_iter()
        .map(|(key, _)| String::from_utf8_lossy(&key[members_prefix.len()..]).into_owned())
        .collect();
    let done = removed < limit && members.is_empty();
    if done {
        store.delete(meta);
        store.delete(keys::pending(p, &c.group));
    }
    Ok(outcome::Result::Purged(Purged { members, done }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::apply_op;
    use crate::placement;
    use crate::query::evaluate;
    use crate::store::MemStore;
    use chat_protocol::internal::answer::A;
    use chat_protocol::internal::command::{self, Op};
    use chat_protocol::internal::query::Q;
    use chat_protocol::internal::{Outcome, Query};

    fn run(p: Partition, store: &mut MemStore, op: Op) -> outcome::Result {
        let Outcome { result } = apply_op(p, op, store).unwrap();
        result.unwrap()
    }

    fn register(store: &mut MemStore, user: &str, created_at_ms: u64) {
        let record = AccountRecord {
            password_hash: "h".into(),
            created_at_ms,
            ..AccountRecord::default()
        };
        let op = Op::CreateAccount(command::CreateAccount {
            user: user.into(),
            record: Some(record),
        });
        run(placement::of_user(user), store, op);
    }

    fn create(store: &mut MemStore, group: &str, creator: &str) {
        let op = Op::CreateGroup(command::CreateGroup {
            group: group.into(),
            creator: creator.into(),
            now_ms: 5,
            ..Default::default()
        });
        assert_eq!(
            run(placement::of_group(group), store, op),
            outcome::Result::Done(Empty {})
        );
    }

    fn ask(prefix: &str, after: &str, limit: u32) -> ListPage {
        ListPage {
            prefix: prefix.into(),
            after: after.into(),
            limit,
        }
    }

    /// What the node does: every partition's page, merged.
    fn list_all_accounts(store: &MemStore, page: &ListPage) -> Listed<AccountSummary> {
        let pages = (0..placement::PARTITIONS).map(|p| {
            let q = Query {
                q: Some(Q::ListAccounts(page.clone())),
            };
            let Some(A::Accounts(a)) = evaluate(p, &q, store).unwrap().a else {
                panic!("accounts answer")
            };
            Listed {
                items: a.accounts,
                has_more: a.has_more,
                covered: a.covered,
            }
        });
        merge(pages, page_size(page.limit), |a| &a.name)
    }

    fn list_all_groups(store: &MemStore, page: &ListPage) -> Listed<GroupSummary> {
        let pages = (0..placement::PARTITIONS).map(|p| {
            let q = Query {
                q: Some(Q::ListGroups(page.clone())),
            };
            let Some(A::Groups(g)) = evaluate(p, &q, store).unwrap().a else {
                panic!("groups answer")
            };
            Listed {
                items: g.groups,
                has_more: g.has_more,
                covered: g.covered,
            }
        });
        merge(pages, page_size(page.limit), |g| &g.name)
    }

    #[test]
    fn merging_never_lists_past_a_page_that_stopped_early() {
        let page = |items: &[&str], has_more: bool, covered: &str| Listed {
            items: items.iter().map(|s| s.to_string()).collect(),
            has_more,
            covered: covered.into(),
        };
        // "c" stopped at "d": "x" of the other page may come after names it did not
        // reach, so the merged page ends at "d".
        let merged = merge(
            [page(&["a", "d"], true, "d"), page(&["b", "x"], false, "")],
            10,
            |s| s,
        );
        assert_eq!(merged, page(&["a", "b", "d"], true, "d"));
        let merged = merge([page(&["a", "c"], false, ""), page(&["b"], false, "")], 2, |s| s);
        assert_eq!(merged, page(&["a", "b"], true, "b"));
        let merged = merge([page(&["a", "c"], false, ""), page(&["b"], false, "")], 3, |s| s);
        assert_eq!(merged, page(&["a", "b", "c"], false, ""));
    }

    #[test]
    fn accounts_are_listed_by_prefix_in_name_order_a_page_at_a_time_across_partitions() {
        let mut store = MemStore::default();
        let names: Vec<String> = (0..300).map(|i| format!("user{i:03}")).collect();
        for (i, name) in names.iter().enumerate() {
            register(&mut store, name, i as u64);
        }
        register(&mut store, "zed", 7);
        let disable = Op::SetDisabled(command::SetDisabled {
            user: "user005".into(),
            disabled: true,
        });
        run(placement::of_user("user005"), &mut store, disable);
        // Pages of 7 walk every user* in order, each once.
        let (mut seen, mut after, mut pages) = (Vec::new(), String::new(), 0);
        loop {
            let page = list_all_accounts(&store, &ask("user", &after, 7));
            pages += 1;
            seen.extend(page.items.iter().map(|a| a.name.clone()));
            if !page.has_more {
                break;
            }
            after = page.covered;
        }
        assert_eq!(seen, names);
        assert_eq!(pages, 300 / 7 + 1);
        let first = list_all_accounts(&store, &ask("user00", "", 10));
        assert_eq!(first.items.len(), 10);
        assert_eq!(
            first.items[5],
            AccountSummary {
                name: "user005".into(),
                created_at_ms: 5,
                disabled: true
            }
        );
        assert!(!first.has_more, "user000 to user009");
        let everyone = list_all_accounts(&store, &ask("", "user299", 0));
        assert_eq!(
            everyone.items.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["zed"],
            "after the last user*, only zed"
        );
        assert!(!everyone.has_more);
        let one = list_all_accounts(&store, &ask("", "", 0));
        assert_eq!(one.items.len(), 1, "a limit of 0 is a page of one");
        assert_eq!((one.items[0].name.as_str(), one.has_more), ("user000", true));
        assert!(list_all_accounts(&store, &ask("nobody", "", 10)).items.is_empty());
    }

    #[test]
    fn a_partition_answers_at_most_a_bounded_page() {
        let p = 3;
        let mut store = MemStore::default();
        for n in 0..MAX_LIST + 5 {
            register(&mut store, &placement::user_named_in(p, "u", n), 1);
        }
        let q = Query {
            q: Some(Q::ListAccounts(ask("", "", u32::MAX))),
        };
        let Some(A::Accounts(a)) = evaluate(p, &q, &store).unwrap().a else {
            panic!("accounts")
        };
        assert_eq!(a.accounts.len(), MAX_LIST);
        assert!(a.has_more);
        assert_eq!(a.covered, a.accounts.last().unwrap().name);
    }

    #[test]
    fn groups_of_every_name_length_are_listed_in_name_order_with_their_members() {
        let mut store = MemStore::default();
        let names = ["a", "ab", "abc", "b", "ba", "rust", "rustaceans", "rusty", "z"];
        for g in names {
            create(&mut store, g, "ann");
        }
        for user in ["ben", "cy"] {
            let join = Op::JoinGroup(command::JoinGroup {
                group: "rust".into(),
                user: user.into(),
                ..Default::default()
            });
            run(placement::of_group("rust"), &mut store, join);
        }
        let all = list_all_groups(&store, &ask("", "", 100));
        assert_eq!(
            all.items.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            names
        );
        assert!(!all.has_more);
        let rust = all.items.iter().find(|g| g.name == "rust").unwrap();
        assert_eq!(
            (rust.creator.as_str(), rust.created_at_ms, rust.members),
            ("ann", 5, 3)
        );
        let by_prefix = list_all_groups(&store, &ask("rust", "", 100));
        assert_eq!(
            by_prefix
                .items
                .iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>(),
            ["rust", "rustaceans", "rusty"]
        );
        // Pages of two, each after the last name of the one before.
        let (mut seen, mut after) = (Vec::new(), String::new());
        loop {
            let page = list_all_groups(&store, &ask("", &after, 2));
            assert!(page.items.len() <= 2);
            seen.extend(page.items.iter().map(|g| g.name.clone()));
            if !page.has_more {
                break;
            }
            after = page.covered;
        }
        assert_eq!(seen, names);
        // After a name that is longer or shorter than the names that follow it.
        let page = list_all_groups(&store, &ask("", "abz", 100));
        assert_eq!(page.items[0].name, "b");
        let page = list_all_groups(&store, &ask("", "ru", 100));
        assert_eq!(page.items[0].name, "rust");
    }

    #[test]
    fn a_purged_group_is_gone_for_everything_its_name_taken_until_the_last_batch() {
        let g = placement::group_named_in(40, "g", 0);
        let p = placement::of_group(&g);
        let mut store = MemStore::default();
        create(&mut store, &g, "ann");
        let members: Vec<String> = (0..5).map(|i| format!("m{i}")).collect();
        for user in &members {
            let join = Op::JoinGroup(command::JoinGroup {
                group: g.clone(),
                user: user.clone(),
                ..Default::default()
            });
            run(p, &mut store, join);
        }
        for i in 0..7 {
            let post = Op::Post(command::Post {
                group: g.clone(),
                from: "ann".into(),
                client_msg_id: format!("c{i}"),
                text: "t".into(),
                now_ms: 1,
                reply_to: String::new(),
                attachments: Vec::new(),
            });
            run(p, &mut store, post);
        }
        let done = Op::FanoutDone(command::FanoutDone {
            group: g.clone(),
            partition: 3,
            group_seq: 2,
            all: false,
        });
        run(p, &mut store, done);
        // A record of another group, which must stay.
        create(&mut store, &format!("{g}x"), "ann");
        let before_other = list_all_groups(&store, &ask(&format!("{g}x"), "", 10)).items;
        let purge = |forget: Vec<String>| {
            Op::PurgeGroup(command::PurgeGroup {
                group: g.clone(),
                limit: 4,
                forget,
            })
        };
        let outcome::Result::Purged(first) = run(p, &mut store, purge(vec![])) else {
            panic!("purged")
        };
        assert!(!first.done);
        assert_eq!(first.members.len(), 4, "at most the limit");
        // Gone at once: no posts, no joins, no listing; its name still taken.
        let post = Op::Post(command::Post {
            group: g.clone(),
            from: "ann".into(),
            client_msg_id: "late".into(),
            text: "t".into(),
            now_ms: 1,
            reply_to: String::new(),
            attachments: Vec::new(),
        });
        assert_eq!(run(p, &mut store, post), outcome::Result::NotFound(Empty {}));
        let join = Op::JoinGroup(command::JoinGroup {
            group: g.clone(),
            user: "eve".into(),
            ..Default::default()
        });
        assert_eq!(run(p, &mut store, join), outcome::Result::NotFound(Empty {}));
        assert!(
            list_all_groups(&store, &ask(&g, "", 10))
                .items
                .iter()
                .all(|x| x.name != g)
        );
        let again = Op::CreateGroup(command::CreateGroup {
            group: g.clone(),
            creator: "eve".into(),
            now_ms: 9,
            ..Default::default()
        });
        assert_eq!(run(p, &mut store, again), outcome::Result::Exists(Empty {}));
        // Batches until done, forgetting the members named each time.
        let (mut forget, mut batches, mut forgotten) = (first.members, 1, Vec::new());
        loop {
            forgotten.extend(forget.iter().cloned());
            let outcome::Result::Purged(next) = run(p, &mut store, purge(forget)) else {
                panic!("purged")
            };
            batches += 1;
            assert!(batches < 20, "a purge that never ends");
            if next.done {
                assert!(next.members.is_empty());
                break;
            }
            forget = next.members;
        }
        forgotten.sort();
        let mut everyone = members.clone();
        everyone.push("ann".into());
        everyone.sort();
        assert_eq!(forgotten, everyone, "every member named once");
        // Nothing of the group is left; the other group is untouched.
        let mut group_prefix = keys::scoped(p, tree::GROUPS, &g, kind::META);
        group_prefix.pop();
        assert!(store.scan(&group_prefix, None, 10).unwrap().is_empty());
        assert!(store.get(&keys::pending(p, &g)).unwrap().is_none());
        assert_eq!(
            list_all_groups(&store, &ask(&format!("{g}x"), "", 10)).items,
            before_other
        );
        assert_eq!(
            run(p, &mut store, purge(vec![])),
            outcome::Result::NotFound(Empty {})
        );
        let again = Op::CreateGroup(command::CreateGroup {
            group: g.clone(),
            creator: "eve".into(),
            now_ms: 9,
            ..Default::default()
        });
        assert_eq!(
            run(p, &mut store, again),
            outcome::Result::Done(Empty {}),
            "the name is free"
        );
    }

    #[test]
    fn a_deleted_user_leaves_a_tombstone_and_nothing_else_batch_by_batch() {
        let p = 12;
        let (gone, kept) = (
            placement::user_named_in(p, "u", 0),
            placement::user_named_in(p, "u", 1),
        );
        let mut s = MemStore::default();
        register(&mut s, &gone, 3);
        register(&mut s, &kept, 3);
        let token = |user: &str, t: &str| {
            Op::PutToken(command::PutToken {
                user: user.into(),
                token: t.into(),
                record: None,
            })
        };
        let message = |user: &str, id: &str| {
            Op::Append(command::Append {
                user: user.into(),
                origin: keys::private_origin("x", id),
                entry: Some(chat_protocol::internal::InboxEntry {
                    from: "x".into(),
                    text: id.into(),
                    ..Default::default()
                }),
                require_account: true,
                now_ms: 1,
                retention: None,
            })
        };
        for (user, t) in [(&gone, "t1"), (&gone, "t2"), (&kept, "t3")] {
            run(p, &mut s, token(user, t));
        }
        for id in ["a", "b", "c"] {
            run(p, &mut s, message(&gone, id));
            run(p, &mut s, message(&kept, id));
        }
        let block = Op::Block(command::Block {
            user: gone.clone(),
            other: kept.clone(),
            blocked: true,
        });
        run(p, &mut s, block);
        for user in [&gone, &kept] {
            let charge = Op::ChargeUpload(command::ChargeUpload {
                user: user.clone(),
                blob: crate::blobs::id_of(&[7; 32]),
                size: 10,
                now_ms: 1,
                window_ms: 100,
            });
            run(p, &mut s, charge);
        }
        let kept_before: Vec<_> = s.scan(&keys::partition_prefix(p), None, usize::MAX).unwrap();
        // Whose a key is: the name after the tree byte (accounts: the rest of the key).
        let owner = |k: &[u8]| -> Vec<u8> {
            if k[2] == tree::ACCOUNTS {
                return k[3..].to_vec();
            }
            let len = k[3] as usize;
            k[4..4 + len].to_vec()
        };
        let kept_before: Vec<_> = kept_before
            .into_iter()
            .filter(|(k, _)| owner(k) == kept.as_bytes())
            .collect();
        assert!(kept_before.len() > 5);
        let purge = || {
            Op::PurgeUser(command::PurgeUser {
                user: gone.clone(),
                limit: 2,
            })
        };
        let mut batches = 0;
        loop {
            batches += 1;
            match run(p, &mut s, purge()) {
                outcome::Result::Purged(Purged { done: true, .. }) => break,
                outcome::Result::Purged(_) => assert!(batches < 20),
                other => panic!("{other:?}"),
            }
        }
        assert!(batches > 2, "bounded batches: {batches}");
        // Only the tombstone is left of it; the other user's records are untouched.
        let left: Vec<_> = s
            .scan(&keys::partition_prefix(p), None, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| owner(k) == gone.as_bytes())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let tomb = decode::<AccountRecord>(Some(left[0].1.clone()), "a")
            .unwrap()
            .unwrap();
        assert!(tomb.deleted && tomb.disabled && tomb.password_hash.is_empty());
        for (k, v) in &kept_before {
            assert_eq!(s.get(k).unwrap().as_ref(), Some(v));
        }
        // Nothing reaches it, and its name stays taken.
        assert_eq!(
            run(p, &mut s, message(&gone, "d")),
            outcome::Result::NotFound(Empty {})
        );
        let again = Op::CreateAccount(command::CreateAccount {
            user: gone.clone(),
            record: None,
        });
        assert_eq!(run(p, &mut s, again), outcome::Result::Exists(Empty {}));
    }
}
