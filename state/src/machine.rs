//! What a committed command does to its partition's records.
//!
//! `apply` is deterministic: it reads only the store and the command (times come in
//! the command, from the proposer's clock), so every replica that applies the same log
//! holds the same records and computes the same outcome. That is where seqs are
//! assigned and duplicates caught: a message resent through another node, or proposed
//! twice after a leader change, finds its origin already stored and gets its first
//! outcome back.

use crate::contacts;
use crate::groups;
use crate::keys::{self, kind, tree};
use crate::membership;
use crate::placement::{self, Partition};
use crate::store::{Result, Store, decode};
use chat_protocol::internal::command::{self, Op};
use chat_protocol::internal::outcome::{self, ContactChanged, Fanned, Posted};
use chat_protocol::internal::response::{self, Appended, Cursors};
use chat_protocol::internal::{
    AccountRecord, Command, ContactIndex, Empty, GroupMessage, InboxEntry, InboxMeta, Outcome, PairRecord,
};
use chat_protocol::v1::{ContactState, ConversationKind};
use prost::Message;
use std::collections::BTreeMap;

/// Most of the oldest entries one append removes for retention (the rest go with later
/// appends, so one append never does unbounded work).
const MAX_TRIM_PER_APPEND: usize = 64;

/// Most inboxes one [`command::Sweep`] visits.
pub const MAX_SWEEP_INBOXES: u32 = 256;

/// Applies one command of partition `p`'s log.
///
/// An `Err` means the store failed: this replica must stop applying (nothing of this
/// command may be kept). A command that is wrong (undecodable, for another partition)
/// is not an error but an `invalid` outcome, the same on every replica.
pub fn apply(p: Partition, command: &[u8], store: &mut impl Store) -> Result<Outcome> {
    let Ok(Command { op: Some(op) }) = Command::decode(command) else {
        return Ok(invalid("undecodable command".into()));
    };
    if let Some(wrong) = misplaced(p, &op) {
        return Ok(invalid(format!("{wrong} is not in partition {p}")));
    }
    let meta_op = matches!(op, Op::JoinCluster(_) | Op::LeaveCluster(_) | Op::RemoveNode(_));
    if meta_op != (p == membership::META) {
        return Ok(invalid(format!("command of the wrong group for partition {p}")));
    }
    let result = match op {
        Op::CreateAccount(c) => {
            let key = keys::account(p, &c.user);
            if store.get(&key)?.is_some() {
                outcome::Result::Exists(Empty {})
            } else {
                store.put(key, c.record.unwrap_or_default().encode_to_vec());
                done()
            }
        }
        Op::PutToken(t) => {
            store.put(
                keys::token(p, &t.user, &t.token),
                t.record.unwrap_or_default().encode_to_vec(),
            );
            done()
        }
        Op::RevokeToken(t) => {
            store.delete(keys::token(p, &t.user, &t.token));
            done()
        }
        Op::RevokeTokens(r) => revoke_tokens(p, store, &r)?,
        Op::RevokeDevice(r) => crate::devices::revoke(p, store, &r)?,
        Op::TouchToken(t) => crate::devices::touch(p, store, &t)?,
        Op::SetDisabled(d) => {
            let revoke_all = command::RevokeTokens {
                user: d.user.clone(),
                ..Default::default()
            };
            let account_key = keys::account(p, &d.user);
            match live_account(store.get(&account_key)?)? {
                None => outcome::Result::NotFound(Empty {}),
                Some(mut account) => {
                    account.disabled = d.disabled;
                    store.put(account_key, account.encode_to_vec());
                    if d.disabled {
                        revoke_tokens(p, store, &revoke_all)?;
                    }
                    done()
                }
            }
        }
        Op::Append(a) => {
            let entry = a.entry.unwrap_or_default();
            let refusal = if a.require_account {
                refusal(p, store, &a.user, &entry.from)?
            } else {
                None
            };
            if let Some(refused) = refusal {
                refused
            } else {
                let retention = a.retention.unwrap_or_default();
                match append(p, store, &a.user, &a.origin, entry, a.now_ms, &retention)? {
                    (appended, false) => outcome::Result::Appended(appended),
                    (first, true) => outcome::Result::Duplicate(first),
                }
            }
        }
        Op::Ack(a) => outcome::Result::Cursors(ack(p, store, &a)?),
        Op::Membership(m) => {
            let key = keys::suffix_key(p, tree::INBOX, &m.user, kind::GROUP, m.group.as_bytes());
            if m.joined {
                store.put(key, Vec::new());
            } else {
                store.delete(key);
            }
            done()
        }
        Op::CreateGroup(c) => groups::create(p, store, &c)?,
        Op::JoinGroup(j) => groups::join(p, store, &j)?,
        Op::LeaveGroup(l) => groups::leave(p, store, &l)?,
        Op::GroupAdmin(a) => groups::admin(p, store, &a)?,
        Op::DropMember(d) => groups::drop_member(p, store, &d)?,
        Op::PurgeUser(u) => crate::admin::purge_user(p, store, &u)?,
        Op::Post(post) => self::post(p, store, post)?,
        Op::Fanout(f) => {
            let retention = f.retention.unwrap_or_default();
            let mut seqs = Vec::with_capacity(f.items.len());
            for item in f.items {
                // A member whose account is gone gets nothing.
                if live_account(store.get(&keys::account(p, &item.user))?)?.is_none() {
                    seqs.push(0);
                    continue;
                }
                let entry = InboxEntry {
                    message_id: item.message_id,
                    from: item.from,
                    kind: ConversationKind::Group as u32,
                    conversation: f.group.clone(),
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
                let origin = keys::group_origin(&f.group, item.group_seq);
                let (appended, _) = append(p, store, &item.user, &origin, entry, f.now_ms, &retention)?;
                seqs.push(appended.seq);
            }
            outcome::Result::Fanned(Fanned { seqs })
        }
        Op::Sweep(sweep) => outcome::Result::Swept(sweep_inboxes(p, store, &sweep)?),
        Op::ContactAction(c) => contact_action(p, store, &c)?,
        Op::ContactUpdate(u) => contact_update(p, store, u)?,
        Op::ContactDelivered(d) => {
            let key = keys::contact_outbox(p, &d.user, &d.other);
            let stored = decode::<command::ContactUpdate>(store.get(&key)?, "contact update")?;
            if stored.is_some_and(|u| u.version == d.version) {
                store.delete(key);
            }
            done()
        }
        Op::Block(b) => block(p, store, &b)?,
        Op::Seen(s) => {
            let key = keys::account(p, &s.user);
            match live_account(store.get(&key)?)? {
                Some(mut account) => {
                    if s.at_ms > account.last_seen_ms {
                        account.last_seen_ms = s.at_ms;
                        store.put(key, account.encode_to_vec());
                    }
                    outcome::Result::Account(account)
                }
                None => outcome::Result::NotFound(Empty {}),
            }
        }
        Op::SetPrivacy(s) => {
            let key = keys::account(p, &s.user);
            match live_account(store.get(&key)?)? {
                None => outcome::Result::NotFound(Empty {}),
                Some(mut account) => {
                    if let Some(only) = s.contacts_only {
                        account.contacts_only = only;
                    }
                    if let Some(hide) = s.hide_last_seen {
                        account.hide_last_seen = hide;
                    }
                    store.put(key, account.encode_to_vec());
                    outcome::Result::Account(account)
                }
            }
        }
        Op::JoinCluster(j) => membership::join(store, j)?,
        Op::LeaveCluster(l) => membership::leave(store, l)?,
        Op::RemoveNode(r) => membership::remove(store, r)?,
        Op::PurgeGroup(c) => crate::admin::purge_group(p, store, &c)?,
        Op::ChangeMessage(c) => crate::changes::apply_private(p, store, c, append)?,
        Op::ChangeGroupMessage(c) => crate::changes::apply_group(p, store, c)?,
        Op::StoreBlob(c) => crate::blobs::store_blob(p, store, &c)?,
        Op::GrantBlob(c) => crate::blobs::grant_blob(p, store, &c)?,
        Op::DropBlobs(c) => crate::blobs::drop_blobs(p, store, &c)?,
        Op::ChargeUpload(c) => crate::blobs::charge_upload(p, store, &c)?,
        Op::FanoutDone(d) if d.all => {
            if let Some(mut record) = group(p, store, &d.group)?
                && d.group_seq > record.fanout_seq
            {
                record.fanout_seq = d.group_seq.min(record.last_seq);
                store.put(
                    keys::scoped(p, tree::GROUPS, &d.group, kind::META),
                    record.encode_to_vec(),
                );
                if record.fanout_seq == record.last_seq {
                    store.delete(keys::pending(p, &d.group));
                }
            }
            done()
        }
        Op::FanoutDone(d) => {
            let key = keys::fanout(p, &d.group, d.partition as Partition);
            let before = store.get(&key)?.map(|v| keys::seq_of(&v)).unwrap_or(0);
            if d.group_seq > before {
                store.put(key, keys::seq_value(d.group_seq).to_vec());
            }
            done()
        }
    };
    Ok(Outcome { result: Some(result) })
}

/// Applies one command given as its operation (tests, tools and bootstrap records).
pub fn apply_op(p: Partition, op: Op, store: &mut impl Store) -> Result<Outcome> {
    apply(p, &Command { op: Some(op) }.encode_to_vec(), store)
}

fn done() -> outcome::Result {
    outcome::Result::Done(Empty {})
}

fn invalid(why: String) -> Outcome {
    Outcome {
        result: Some(outcome::Result::Invalid(why)),
    }
}

/// The first name of a command that does not belong to partition `p`.
fn misplaced(p: Partition, op: &Op) -> Option<String> {
    let user = |name: &str| (placement::of_user(name) != p).then(|| format!("user {name}"));
    let group = |name: &str| (placement::of_group(name) != p).then(|| format!("group {name}"));
    let blob = |id: &str| match crate::blobs::parse_id(id) {
        Some(hash) => (placement::of_blob(&hash) != p).then(|| format!("file {id}")),
        None => Some(format!("no file id {id:?}")),
    };
    let pair = |a: &str, b: &str| (contacts::pair_partition(a, b) != p).then(|| format!("pair {a}, {b}"));
    match op {
        Op::CreateAccount(c) => user(&c.user),
        Op::PutToken(t) => user(&t.user),
        Op::RevokeToken(t) => user(&t.user),
        Op::RevokeTokens(r) => user(&r.user),
        Op::RevokeDevice(r) => user(&r.user),
        Op::TouchToken(t) => user(&t.user),
        Op::SetDisabled(d) => user(&d.user),
        Op::Append(a) => user(&a.user),
        Op::Ack(a) => user(&a.user),
        Op::Membership(m) => user(&m.user),
        Op::CreateGroup(c) => group(&c.group),
        Op::JoinGroup(j) => group(&j.group),
        Op::LeaveGroup(l) => group(&l.group),
        Op::Post(post) => group(&post.group),
        Op::Fanout(f) => f.items.iter().find_map(|i| user(&i.user)),
        Op::FanoutDone(d) => group(&d.group),
        Op::ContactAction(c) => pair(&c.actor, &c.other),
        Op::ContactUpdate(u) => user(&u.user),
        Op::ContactDelivered(d) => pair(&d.user, &d.other),
        Op::Block(b) => user(&b.user),
        Op::SetPrivacy(s) => user(&s.user),
        Op::Seen(s) => user(&s.user),
        Op::PurgeGroup(c) => group(&c.group),
        Op::GroupAdmin(a) => group(&a.group),
        Op::DropMember(d) => group(&d.group),
        Op::PurgeUser(u) => user(&u.user),
        Op::ChangeMessage(c) => user(&c.user),
        Op::ChangeGroupMessage(c) => group(&c.group),
        Op::StoreBlob(c) => blob(&c.blob),
        Op::GrantBlob(c) => blob(&c.blob),
        Op::ChargeUpload(c) => user(&c.user),
        Op::Sweep(_) | Op::DropBlobs(_) | Op::JoinCluster(_) | Op::LeaveCluster(_) | Op::RemoveNode(_) => {
            None
        }
    }
}

/// Applies retention to the inboxes of `p` after `sweep.after`, at most
/// [`MAX_SWEEP_INBOXES`] of them (and, as an append does, at most
/// [`MAX_TRIM_PER_APPEND`] entries each). Returns the last inbox visited, or "" once the
/// partition's last inbox was.
fn sweep_inboxes(p: Partition, store: &mut impl Store, sweep: &command::Sweep) -> Result<String> {
    let mut prefix = keys::partition_prefix(p).to_vec();
    prefix.push(tree::INBOX);
    // Past every key of a user: its kinds are all below 0xff.
    let past = |user: &str| keys::scoped(p, tree::INBOX, user, u8::MAX);
    let mut after = (!sweep.after.is_empty()).then(|| past(&sweep.after));
    let retention = sweep.retention.unwrap_or_default();
    let mut last = String::new();
    for _ in 0..sweep.limit.clamp(1, MAX_SWEEP_INBOXES) {
        let Some((key, _)) = store.scan(&prefix, after.as_deref(), 1)?.into_iter().next() else {
            return Ok(String::new());
        };
        let len = key.get(3).copied().unwrap_or(0) as usize;
        let Some(user) = key.get(4..4 + len).and_then(|n| std::str::from_utf8(n).ok()) else {
            // Not an inbox key of this layout (nothing writes one): the sweep ends here.
            return Ok(String::new());
        };
        let user = user.to_owned();
        let mut meta = inbox_meta(p, store, &user)?;
        let before = meta;
        trim(p, store, &user, &mut meta, sweep.now_ms, &retention)?;
        if meta != before {
            store.put(
                keys::scoped(p, tree::INBOX, &user, kind::META),
                meta.encode_to_vec(),
            );
        }
        after = Some(past(&user));
        last = user;
    }
    Ok(last)
}

/// The account stored, unless there is none or it was deleted (a deleted account keeps
/// its name taken and nothing else).
pub(crate) fn live_account(bytes: Option<Vec<u8>>) -> Result<Option<AccountRecord>> {
    Ok(decode::<AccountRecord>(bytes, "account")?.filter(|a| !a.deleted))
}

/// Why `user` refuses a private message `from` someone (or its own copy, from itself):
/// NotFound without an account, NotAllowed when the user blocks the sender or takes
/// messages from contacts only and the sender is not one.
pub(crate) fn refusal(
    p: Partition,
    store: &impl Store,
    user: &str,
    from: &str,
) -> Result<Option<outcome::Result>> {
    let Some(account) = live_account(store.get(&keys::account(p, user))?)? else {
        return Ok(Some(outcome::Result::NotFound(Empty {})));
    };
    if from == user {
        return Ok(None);
    }
    let blocked = account.blocks > 0 && store.get(&keys::blocked(p, user, from))?.is_some();
    let stranger = account.contacts_only && {
        let view = decode::<ContactIndex>(store.get(&keys::contact(p, user, from))?, "contact")?;
        view.is_none_or(|v| v.state != ContactState::Contact as u32)
    };
    Ok((blocked || stranger).then_some(outcome::Result::NotAllowed(Empty {})))
}

/// A user acts on a relation, in the pair's partition: the pair record changes as
/// [`contacts::decide`] says, and each user's new view waits in the outbox until it is
/// delivered.
fn contact_action(
    p: Partition,
    store: &mut impl Store,
    c: &command::ContactAction,
) -> Result<outcome::Result> {
    let Some(action) = contacts::Action::from_number(c.action) else {
        return Ok(outcome::Result::Invalid(format!(
            "no contact action {}",
            c.action
        )));
    };
    if c.actor == c.other {
        return Ok(outcome::Result::Invalid("a relation needs two users".into()));
    }
    let (first, second) = contacts::ordered(&c.actor, &c.other);
    let key = keys::pair(p, first, second);
    let record = decode::<PairRecord>(store.get(&key)?, "pair")?.unwrap_or_default();
    let now = contacts::relation(&record);
    let changed = match contacts::decide(&now, &c.actor, action) {
        contacts::Decision::NotFound => return Ok(outcome::Result::NotFound(Empty {})),
        contacts::Decision::Same(same) => {
            return Ok(outcome::Result::ContactChanged(ContactChanged {
                updates: Vec::new(),
                state: contacts::view(&same, &c.actor) as u32,
            }));
        }
        contacts::Decision::Changed(changed) => changed,
    };
    let version = record.version + 1;
    store.put(key, contacts::record(&changed, version, c.now_ms).encode_to_vec());
    let updates: Vec<_> = [(&c.actor, &c.other), (&c.other, &c.actor)]
        .into_iter()
        .map(|(user, other)| command::ContactUpdate {
            user: user.clone(),
            other: other.clone(),
            state: contacts::view(&changed, user) as u32,
            version,
            by: c.actor.clone(),
            now_ms: c.now_ms,
            retention: None,
        })
        .collect();
    for u in &updates {
        store.put(keys::contact_outbox(p, &u.user, &u.other), u.encode_to_vec());
    }
    Ok(outcome::Result::ContactChanged(ContactChanged {
        updates,
        state: contacts::view(&changed, &c.actor) as u32,
    }))
}

/// Brings `u.user`'s view of its relation with `u.other` up to date (older or repeated
/// updates change nothing) and tells the user with an entry in its inbox. Nothing a
/// blocked user does is told; its request is kept, unlisted until the block ends.
fn contact_update(
    p: Partition,
    store: &mut impl Store,
    u: command::ContactUpdate,
) -> Result<outcome::Result> {
    let key = keys::contact(p, &u.user, &u.other);
    let view = decode::<ContactIndex>(store.get(&key)?, "contact")?;
    if view.is_some_and(|v| v.version >= u.version) {
        return Ok(done());
    }
    let Some(account) = live_account(store.get(&keys::account(p, &u.user))?)? else {
        return Ok(done());
    };
    // Kept, but not told (and not listed while the block lasts: see query::contacts_of).
    let blocked =
        u.by != u.user && account.blocks > 0 && store.get(&keys::blocked(p, &u.user, &u.by))?.is_some();
    let index = ContactIndex {
        state: u.state,
        version: u.version,
        since_ms: u.now_ms,
    };
    store.put(key, index.encode_to_vec());
    if blocked {
        return Ok(done());
    }
    let entry = contacts::event_entry(&u);
    let origin = keys::contact_origin(&u.other, u.version);
    let retention = u.retention.unwrap_or_default();
    let (appended, _) = append(p, store, &u.user, &origin, entry, u.now_ms, &retention)?;
    Ok(outcome::Result::Appended(appended))
}

/// Blocks or unblocks, keeping the account's count of blocks.
fn block(p: Partition, store: &mut impl Store, b: &command::Block) -> Result<outcome::Result> {
    let account_key = keys::account(p, &b.user);
    let Some(mut account) = live_account(store.get(&account_key)?)? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    let key = keys::blocked(p, &b.user, &b.other);
    let was = store.get(&key)?.is_some();
    if b.blocked && !was {
        store.put(key, Vec::new());
        account.blocks += 1;
    } else if !b.blocked && was {
        store.delete(key);
        account.blocks = account.blocks.saturating_sub(1);
    } else {
        return Ok(done());
    }
    store.put(account_key, account.encode_to_vec());
    Ok(done())
}

use crate::groups::member_key;

/// Revokes every token of a user but the one to keep, and sets a new password hash if
/// one is given; NotFound without an account.
fn revoke_tokens(p: Partition, store: &mut impl Store, r: &command::RevokeTokens) -> Result<outcome::Result> {
    let account_key = keys::account(p, &r.user);
    let Some(mut account) = live_account(store.get(&account_key)?)? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    if !r.password_hash.is_empty() {
        account.password_hash.clone_from(&r.password_hash);
        store.put(account_key, account.encode_to_vec());
    }
    let keep = (!r.keep.is_empty()).then(|| keys::token(p, &r.user, &r.keep));
    for (key, _) in store.scan(&keys::token(p, &r.user, ""), None, usize::MAX)? {
        if Some(&key) != keep.as_ref() {
            store.delete(key);
        }
    }
    Ok(done())
}

/// A group's record; `None` for no group, or one being deleted (gone for everything but
/// its deletion, see `crate::admin::purge_group`).
pub(crate) use crate::groups::group;

fn inbox_meta(p: Partition, store: &impl Store, user: &str) -> Result<InboxMeta> {
    Ok(decode(
        store.get(&keys::scoped(p, tree::INBOX, user, kind::META))?,
        "inbox meta",
    )?
    .unwrap_or_default())
}

/// Stores `entry` in `user`'s inbox unless `origin` is already there; returns the
/// entry's place and whether it was there before.
pub(crate) fn append(
    p: Partition,
    store: &mut impl Store,
    user: &str,
    origin: &[u8],
    mut entry: InboxEntry,
    now_ms: u64,
    retention: &command::Retention,
) -> Result<(Appended, bool)> {
    let origin_key = keys::suffix_key(p, tree::INBOX, user, kind::ORIGIN, origin);
    if let Some(seq) = store.get(&origin_key)? {
        let seq = keys::seq_of(&seq);
        let first: Option<InboxEntry> = decode(
            store.get(&keys::seq_key(p, tree::INBOX, user, kind::ENTRY, seq))?,
            "inbox entry",
        )?;
        let first = first.unwrap_or_default();
        return Ok((
            Appended {
                message_id: first.message_id,
                seq,
                timestamp_ms: first.timestamp_ms,
            },
            true,
        ));
    }
    let mut meta = inbox_meta(p, store, user)?;
    let seq = meta.last_seq + 1;
    if entry.message_id.is_empty() {
        let prefix = match (&entry.receipt, &entry.contact, &entry.change) {
            (Some(_), _, _) => "r",
            (None, Some(_), _) => "c",
            (None, None, Some(_)) => "x",
            (None, None, None) => "p",
        };
        entry.message_id = format!("{prefix}:{user}:{seq}");
    }
    entry.origin = origin.to_vec();
    let entry_timestamp = entry.timestamp_ms;
    let appended = Appended {
        message_id: entry.message_id.clone(),
        seq,
        timestamp_ms: entry.timestamp_ms,
    };
    store.put(
        keys::seq_key(p, tree::INBOX, user, kind::ENTRY, seq),
        entry.encode_to_vec(),
    );
    store.put(origin_key, keys::seq_value(seq).to_vec());
    meta.last_seq = seq;
    if meta.first_seq == 0 {
        meta.first_seq = seq;
        meta.first_timestamp_ms = entry_timestamp;
    }
    trim(p, store, user, &mut meta, now_ms, retention)?;
    store.put(
        keys::scoped(p, tree::INBOX, user, kind::META),
        meta.encode_to_vec(),
    );
    Ok((appended, false))
}

/// Removes the oldest entries beyond the retention limits (never the newest), at most
/// [`MAX_TRIM_PER_APPEND`] of them. Their origins go with them: a resend of a message
/// retention removed is stored again.
fn trim(
    p: Partition,
    store: &mut impl Store,
    user: &str,
    meta: &mut InboxMeta,
    now_ms: u64,
    retention: &command::Retention,
) -> Result<()> {
    let cutoff = (retention.max_age_ms > 0).then(|| now_ms.saturating_sub(retention.max_age_ms));
    for _ in 0..MAX_TRIM_PER_APPEND {
        let first = meta.first_seq;
        if first == 0 || first >= meta.last_seq {
            break;
        }
        let over_count = retention.max_messages > 0 && meta.last_seq - first + 1 > retention.max_messages;
        let key = keys::seq_key(p, tree::INBOX, user, kind::ENTRY, first);
        // The first entry's time is kept in the meta, so most appends read no entry
        // here: it is read when unknown (then kept), or to remove it.
        if meta.first_timestamp_ms == 0 && cutoff.is_some() {
            let entry: Option<InboxEntry> = decode(store.get(&key)?, "inbox entry")?;
            meta.first_timestamp_ms = entry.map_or(0, |e| e.timestamp_ms);
        }
        let too_old =
            cutoff.is_some_and(|cutoff| meta.first_timestamp_ms != 0 && meta.first_timestamp_ms < cutoff);
        if !(over_count || too_old) {
            break;
        }
        let entry: Option<InboxEntry> = decode(store.get(&key)?, "inbox entry")?;
        // The next first's time is read when needed.
        meta.first_timestamp_ms = 0;
        store.delete(key);
        if let Some(e) = entry {
            store.delete(keys::suffix_key(p, tree::INBOX, user, kind::ORIGIN, &e.origin));
            if e.change.is_none() {
                store.delete(crate::changes::inbox_state_key(p, user, &e.message_id));
            }
        }
        meta.first_seq = first + 1;
    }
    Ok(())
}

/// Moves a cursor; the outcome names the private messages it passed (see [`passed`]).
fn ack(p: Partition, store: &mut impl Store, a: &command::Ack) -> Result<Cursors> {
    let mut meta = inbox_meta(p, store, &a.user)?;
    let before = meta;
    let up_to = a.up_to.min(meta.last_seq);
    let from = if a.read { meta.read_seq } else { meta.delivered_seq };
    let passed = passed(p, store, &a.user, from, up_to)?;
    meta.delivered_seq = meta.delivered_seq.max(up_to);
    if a.read {
        // Reading implies delivery.
        meta.read_seq = meta.read_seq.max(up_to);
    }
    if meta != before {
        store.put(
            keys::scoped(p, tree::INBOX, &a.user, kind::META),
            meta.encode_to_vec(),
        );
    }
    Ok(Cursors {
        delivered: meta.delivered_seq,
        read: meta.read_seq,
        passed,
    })
}

/// Entries a receipt may look at per acknowledgement (the latest ones).
pub const MAX_RECEIPTS_PER_ACK: u64 = 1000;

/// The private messages from others in `user`'s inbox after seq `from` up to `to`
/// (at most the last [`MAX_RECEIPTS_PER_ACK`] of them), the latest per sender: a
/// receipt for it covers the sender's earlier ones. Not group messages, own copies or
/// receipts.
fn passed(p: Partition, store: &impl Store, user: &str, from: u64, to: u64) -> Result<Vec<response::Passed>> {
    if to <= from {
        return Ok(Vec::new());
    }
    let start = from.max(to - MAX_RECEIPTS_PER_ACK.min(to));
    let prefix = keys::scoped(p, tree::INBOX, user, kind::ENTRY);
    let after = keys::seq_key(p, tree::INBOX, user, kind::ENTRY, start);
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in store.scan(&prefix, Some(&after), (to - start) as usize)? {
        if keys::seq_of(&key) > to {
            break;
        }
        let Some(e) = decode::<InboxEntry>(Some(value), "inbox entry")? else {
            continue;
        };
        if e.kind == ConversationKind::Private as u32 && e.from != user && e.receipt.is_none() {
            latest.insert(e.from, e.message_id);
        }
    }
    Ok(latest
        .into_iter()
        .map(|(from, message_id)| response::Passed { from, message_id })
        .collect())
}

fn post(p: Partition, store: &mut impl Store, post: command::Post) -> Result<outcome::Result> {
    let Some(mut record) = group(p, store, &post.group)? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    if store.get(&member_key(p, &post.group, &post.from))?.is_none() {
        return Ok(outcome::Result::NotAMember(Empty {}));
    }
    let mut origin = vec![post.from.len() as u8];
    origin.extend_from_slice(post.from.as_bytes());
    origin.extend_from_slice(post.client_msg_id.as_bytes());
    let origin_key = keys::suffix_key(p, tree::GROUPS, &post.group, kind::ORIGIN, &origin);
    if let Some(seq) = store.get(&origin_key)? {
        let group_seq = keys::seq_of(&seq);
        let first: Option<GroupMessage> = decode(
            store.get(&keys::seq_key(
                p,
                tree::GROUPS,
                &post.group,
                kind::MESSAGE,
                group_seq,
            ))?,
            "group message",
        )?;
        let first = first.unwrap_or_default();
        return Ok(outcome::Result::Posted(Posted {
            group_seq,
            message_id: first.message_id,
            timestamp_ms: first.timestamp_ms,
            duplicate: true,
        }));
    }
    let group_seq = record.last_seq + 1;
    let message_id = format!("g:{}:{group_seq}", post.group);
    let members = keys::scoped(p, tree::GROUPS, &post.group, kind::MEMBER);
    let mut recipients = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(&members, after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, _) in &page {
            let name = String::from_utf8_lossy(&key[members.len()..]).into_owned();
            if name != post.from {
                recipients.push(name);
            }
        }
    }
    let mentions = crate::changes::mentions(&post.text, &recipients);
    let message = GroupMessage {
        message_id: message_id.clone(),
        from: post.from,
        timestamp_ms: post.now_ms,
        text: post.text,
        client_msg_id: post.client_msg_id,
        recipients,
        reply_to: post.reply_to,
        attachments: post.attachments,
        mentions,
        ..GroupMessage::default()
    };
    store.put(
        keys::seq_key(p, tree::GROUPS, &post.group, kind::MESSAGE, group_seq),
        message.encode_to_vec(),
    );
    store.put(origin_key, keys::seq_value(group_seq).to_vec());
    store.put(keys::pending(p, &post.group), Vec::new());
    record.last_seq = group_seq;
    store.put(
        keys::scoped(p, tree::GROUPS, &post.group, kind::META),
        record.encode_to_vec(),
    );
    Ok(outcome::Result::Posted(Posted {
        group_seq,
        message_id,
        timestamp_ms: post.now_ms,
        duplicate: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;
    use chat_protocol::internal::Command;

    fn user_in(p: Partition, n: usize) -> String {
        placement::user_named_in(p, "user", n)
    }

    fn group_in(p: Partition) -> String {
        placement::group_named_in(p, "group", 0)
    }

    fn run(p: Partition, store: &mut MemStore, op: Op) -> outcome::Result {
        apply_op(p, op, store).unwrap().result.unwrap()
    }

    fn register(p: Partition, store: &mut MemStore, user: &str) -> outcome::Result {
        let record = AccountRecord {
            password_hash: "h".into(),
            created_at_ms: 1,
            ..AccountRecord::default()
        };
        run(
            p,
            store,
            Op::CreateAccount(command::CreateAccount {
                user: user.into(),
                record: Some(record),
            }),
        )
    }

    #[test]
    fn revoking_tokens_keeps_only_the_one_asked_and_can_change_the_password() {
        let p = 7;
        let (ann, bob) = (user_in(p, 0), user_in(p, 1));
        let mut store = MemStore::default();
        let put = |user: &str, token: &str| {
            Op::PutToken(command::PutToken {
                user: user.into(),
                token: token.into(),
                record: None,
            })
        };
        let revoke = |user: &str, keep: &str, hash: &str| {
            Op::RevokeTokens(command::RevokeTokens {
                user: user.into(),
                keep: keep.into(),
                password_hash: hash.into(),
            })
        };
        assert_eq!(
            run(p, &mut store, revoke(&ann, "", "")),
            outcome::Result::NotFound(Empty {}),
            "no account"
        );
        register(p, &mut store, &ann);
        register(p, &mut store, &bob);
        for t in ["t1", "t2", "t3"] {
            run(p, &mut store, put(&ann, t));
        }
        run(p, &mut store, put(&bob, "b1"));
        let tokens =
            |store: &MemStore, user: &str| store.scan(&keys::token(p, user, ""), None, 100).unwrap().len();
        assert_eq!(run(p, &mut store, revoke(&ann, "t2", "new")), done());
        assert!(store.get(&keys::token(p, &ann, "t2")).unwrap().is_some());
        assert_eq!(tokens(&store, &ann), 1, "only the kept token is left");
        assert_eq!(tokens(&store, &bob), 1, "another user's tokens stay");
        let account: AccountRecord = decode(store.get(&keys::account(p, &ann)).unwrap(), "a")
            .unwrap()
            .unwrap();
        assert_eq!(account.password_hash, "new");
        assert_eq!(run(p, &mut store, revoke(&ann, "", "")), done());
        assert_eq!(tokens(&store, &ann), 0);
        let account: AccountRecord = decode(store.get(&keys::account(p, &ann)).unwrap(), "a")
            .unwrap()
            .unwrap();
        assert_eq!(account.password_hash, "new", "no hash given: the password stays");
    }

    #[test]
    fn disabling_an_account_revokes_its_tokens_and_enabling_keeps_the_password() {
        let p = 9;
        let ann = user_in(p, 0);
        let mut store = MemStore::default();
        let set = |disabled| {
            Op::SetDisabled(command::SetDisabled {
                user: ann.clone(),
                disabled,
            })
        };
        assert_eq!(run(p, &mut store, set(true)), outcome::Result::NotFound(Empty {}));
        register(p, &mut store, &ann);
        let token = Op::PutToken(command::PutToken {
            user: ann.clone(),
            token: "t".into(),
            record: None,
        });
        run(p, &mut store, token);
        let account = |store: &MemStore| -> AccountRecord {
            decode(store.get(&keys::account(p, &ann)).unwrap(), "a")
                .unwrap()
                .unwrap()
        };
        assert_eq!(run(p, &mut store, set(true)), done());
        assert!(account(&store).disabled);
        assert!(
            store.get(&keys::token(p, &ann, "t")).unwrap().is_none(),
            "tokens revoked"
        );
        assert_eq!(run(p, &mut store, set(false)), done());
        assert!(!account(&store).disabled);
        assert_eq!(account(&store).password_hash, "h");
    }

    fn send(user: &str, from: &str, client_id: &str, retention: command::Retention) -> Op {
        Op::Append(command::Append {
            user: user.into(),
            origin: keys::private_origin(from, client_id),
            entry: Some(InboxEntry {
                from: from.into(),
                conversation: from.into(),
                text: format!("{client_id} from {from}"),
                timestamp_ms: 1_000,
                ..InboxEntry::default()
            }),
            require_account: true,
            now_ms: 1_000,
            retention: Some(retention),
        })
    }

    fn appended(r: outcome::Result) -> Appended {
        match r {
            outcome::Result::Appended(a) => a,
            other => panic!("expected appended, got {other:?}"),
        }
    }

    #[test]
    fn an_account_name_is_taken_once() {
        let (p, mut s) = (3, MemStore::default());
        let alice = user_in(p, 0);
        assert_eq!(register(p, &mut s, &alice), done());
        assert_eq!(register(p, &mut s, &alice), outcome::Result::Exists(Empty {}));
    }

    #[test]
    fn appends_get_gap_free_seqs_and_a_resend_gets_its_first_answer() {
        let (p, mut s) = (5, MemStore::default());
        let bob = user_in(p, 0);
        let none = command::Retention::default();
        assert_eq!(
            run(p, &mut s, send(&bob, "alice", "m1", none)),
            outcome::Result::NotFound(Empty {})
        );
        register(p, &mut s, &bob);
        let seqs: Vec<u64> = (1..=3)
            .map(|i| appended(run(p, &mut s, send(&bob, "alice", &format!("m{i}"), none))).seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        let before = s.clone();
        match run(p, &mut s, send(&bob, "alice", "m2", none)) {
            outcome::Result::Duplicate(first) => {
                assert_eq!(first.seq, 2);
                assert_eq!(first.message_id, format!("p:{bob}:2"));
            }
            other => panic!("expected duplicate, got {other:?}"),
        }
        assert_eq!(s, before, "a duplicate writes nothing");
        // The same client id from another sender is another message.
        assert_eq!(appended(run(p, &mut s, send(&bob, "carol", "m2", none))).seq, 4);
    }

    #[test]
    fn a_sweep_applies_retention_to_quiet_inboxes_a_batch_at_a_time() {
        let (p, mut s) = (9, MemStore::default());
        let users: Vec<String> = (0..5).map(|i| user_in(p, i)).collect();
        for u in &users {
            register(p, &mut s, u);
            for i in 1..=3 {
                run(
                    p,
                    &mut s,
                    send(u, "alice", &format!("m{i}"), command::Retention::default()),
                );
            }
        }
        // Something else of the partition that is not an inbox.
        run(
            p,
            &mut s,
            Op::CreateGroup(command::CreateGroup {
                group: group_in(p),
                creator: users[0].clone(),
                now_ms: 1,
                ..Default::default()
            }),
        );
        // A day later, everything older than an hour goes (but each inbox's newest).
        let sweep = |after: &str| {
            Op::Sweep(command::Sweep {
                after: after.into(),
                limit: 2,
                now_ms: 86_400_000,
                retention: Some(command::Retention {
                    max_messages: 0,
                    max_age_ms: 3_600_000,
                }),
            })
        };
        let mut after = String::new();
        let mut batches = 0;
        loop {
            let outcome::Result::Swept(last) = run(p, &mut s, sweep(&after)) else {
                panic!("a sweep answers how far it went");
            };
            batches += 1;
            if last.is_empty() {
                break;
            }
            after = last;
        }
        assert_eq!(batches, 3, "five inboxes, two per sweep");
        // Nothing too old is left (but each inbox's newest): another sweep changes nothing.
        let before = s.clone();
        run(p, &mut s, sweep(""));
        assert!(s == before, "a second sweep changed the records");
        for u in &users {
            let meta = inbox_meta(p, &s, u).unwrap();
            assert_eq!((meta.first_seq, meta.last_seq), (3, 3), "{u}");
            for seq in 1..3 {
                assert!(
                    s.get(&keys::seq_key(p, tree::INBOX, u, kind::ENTRY, seq))
                        .unwrap()
                        .is_none()
                );
            }
            // Their origins went too: a resend of m1 is a new message.
            let again = run(p, &mut s, send(u, "alice", "m1", command::Retention::default()));
            assert_eq!(appended(again).seq, 4);
        }
    }

    /// A store that lists the keys read from it.
    struct Reads<'a>(&'a mut MemStore, std::cell::RefCell<Vec<Vec<u8>>>);

    impl Store for Reads<'_> {
        fn get(&self, key: &[u8]) -> crate::store::Result<Option<Vec<u8>>> {
            self.1.borrow_mut().push(key.to_vec());
            self.0.get(key)
        }
        fn scan(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> crate::store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
            self.0.scan(prefix, after, limit)
        }
        fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
            self.0.put(key, value);
        }
        fn delete(&mut self, key: Vec<u8>) {
            self.0.delete(key);
        }
    }

    #[test]
    fn retention_by_age_reads_no_entry_on_an_append_once_the_first_ones_time_is_known() {
        let (p, mut s) = (9, MemStore::default());
        let bob = user_in(p, 0);
        register(p, &mut s, &bob);
        let month = command::Retention {
            max_messages: 0,
            max_age_ms: 30 * 86_400_000,
        };
        for i in 1..=3 {
            run(p, &mut s, send(&bob, "alice", &format!("m{i}"), month));
        }
        let reads = Reads(&mut s, Default::default());
        let mut store = reads;
        apply_op(p, send(&bob, "alice", "m4", month), &mut store).unwrap();
        let entries = keys::scoped(p, tree::INBOX, &bob, kind::ENTRY);
        let read: Vec<_> = store
            .1
            .take()
            .into_iter()
            .filter(|k| k.starts_with(&entries))
            .collect();
        assert!(read.is_empty(), "entries read by an append: {read:?}");
        let meta = inbox_meta(p, store.0, &bob).unwrap();
        assert_eq!((meta.first_seq, meta.last_seq), (1, 4));
    }

    #[test]
    fn retention_trims_the_oldest_but_never_the_newest() {
        let (p, mut s) = (9, MemStore::default());
        let bob = user_in(p, 0);
        register(p, &mut s, &bob);
        let keep3 = command::Retention {
            max_messages: 3,
            max_age_ms: 0,
        };
        for i in 1..=5 {
            run(p, &mut s, send(&bob, "alice", &format!("m{i}"), keep3));
        }
        let meta = inbox_meta(p, &s, &bob).unwrap();
        assert_eq!((meta.first_seq, meta.last_seq), (3, 5));
        assert!(
            s.get(&keys::seq_key(p, tree::INBOX, &bob, kind::ENTRY, 2))
                .unwrap()
                .is_none()
        );
        assert!(
            s.get(&keys::seq_key(p, tree::INBOX, &bob, kind::ENTRY, 3))
                .unwrap()
                .is_some()
        );
        // Everything is older than a day at t = 1 day + 2 s: all go but the newest.
        let old = command::Retention {
            max_messages: 0,
            max_age_ms: 1_000,
        };
        let mut late = send(&bob, "alice", "m6", old);
        if let Op::Append(a) = &mut late {
            a.now_ms = 86_400_000;
            a.entry.as_mut().unwrap().timestamp_ms = 86_400_000;
        }
        run(p, &mut s, late);
        let meta = inbox_meta(p, &s, &bob).unwrap();
        assert_eq!((meta.first_seq, meta.last_seq), (6, 6));
    }

    #[test]
    fn acks_only_move_forward_within_the_inbox_and_reading_implies_delivery() {
        let (p, mut s) = (11, MemStore::default());
        let bob = user_in(p, 0);
        register(p, &mut s, &bob);
        for i in 1..=4 {
            run(
                p,
                &mut s,
                send(&bob, "alice", &format!("m{i}"), command::Retention::default()),
            );
        }
        let ack = |read, up_to| {
            Op::Ack(command::Ack {
                user: bob.clone(),
                read,
                up_to,
            })
        };
        let cursors = |r: outcome::Result| match r {
            outcome::Result::Cursors(c) => (c.delivered, c.read),
            other => panic!("{other:?}"),
        };
        assert_eq!(cursors(run(p, &mut s, ack(false, 2))), (2, 0));
        assert_eq!(cursors(run(p, &mut s, ack(false, 1))), (2, 0));
        assert_eq!(cursors(run(p, &mut s, ack(true, 99))), (4, 4));
    }

    #[test]
    fn an_ack_names_the_latest_private_message_it_passed_per_sender() {
        let (p, mut s) = (11, MemStore::default());
        let bob = user_in(p, 0);
        register(p, &mut s, &bob);
        let mut from = |sender: &str, id: &str, kind: ConversationKind, receipt: bool| {
            let mut op = send(&bob, sender, id, command::Retention::default());
            if let Op::Append(a) = &mut op {
                let entry = a.entry.as_mut().unwrap();
                entry.kind = kind as u32;
                if receipt {
                    entry.receipt = Some(chat_protocol::v1::Receipt::default());
                }
            }
            appended(run(p, &mut s, op)).message_id
        };
        let a1 = from("alice", "a1", ConversationKind::Private, false);
        let c1 = from("carol", "c1", ConversationKind::Private, false);
        let a2 = from("alice", "a2", ConversationKind::Private, false);
        from("dave", "g1", ConversationKind::Group, false);
        from(&bob, "own", ConversationKind::Private, false);
        from("erin", "r1", ConversationKind::Private, true);
        let c2 = from("carol", "c2", ConversationKind::Private, false);
        let ack = |read, up_to| {
            Op::Ack(command::Ack {
                user: bob.clone(),
                read,
                up_to,
            })
        };
        let passed = |r: outcome::Result| match r {
            outcome::Result::Cursors(c) => c
                .passed
                .into_iter()
                .map(|p| (p.from, p.message_id))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        let (alice, carol) = (String::from("alice"), String::from("carol"));
        assert_eq!(
            passed(run(p, &mut s, ack(false, 1))),
            vec![(alice.clone(), a1.clone())]
        );
        // Group messages, own copies and receipts get no receipt; only the latest per
        // sender does; the cursor stops at the inbox's end.
        assert_eq!(
            passed(run(p, &mut s, ack(false, 99))),
            vec![(alice.clone(), a2.clone()), (carol.clone(), c2.clone())]
        );
        assert_eq!(passed(run(p, &mut s, ack(false, 99))), vec![], "passed once");
        // Reading passes them again, for read receipts.
        assert_eq!(
            passed(run(p, &mut s, ack(true, 2))),
            vec![(alice.clone(), a1), (carol.clone(), c1)]
        );
        assert_eq!(
            passed(run(p, &mut s, ack(true, 7))),
            vec![(alice, a2), (carol, c2)]
        );
    }

    #[test]
    fn posts_get_group_seqs_once_per_client_id_and_only_members_post() {
        let p = 17;
        let mut s = MemStore::default();
        let g = group_in(p);
        let post = |from: &str, id: &str| {
            Op::Post(command::Post {
                group: g.clone(),
                from: from.into(),
                client_msg_id: id.into(),
                text: "hi".into(),
                now_ms: 5,
                reply_to: String::new(),
                attachments: Vec::new(),
            })
        };
        assert_eq!(
            run(p, &mut s, post("ann", "1")),
            outcome::Result::NotFound(Empty {})
        );
        let create = command::CreateGroup {
            group: g.clone(),
            creator: "ann".into(),
            now_ms: 1,
            ..Default::default()
        };
        assert_eq!(run(p, &mut s, Op::CreateGroup(create.clone())), done());
        assert_eq!(
            run(p, &mut s, Op::CreateGroup(create)),
            outcome::Result::Exists(Empty {})
        );
        assert_eq!(
            run(p, &mut s, post("ben", "1")),
            outcome::Result::NotAMember(Empty {})
        );
        run(
            p,
            &mut s,
            Op::JoinGroup(command::JoinGroup {
                group: g.clone(),
                user: "ben".into(),
                ..Default::default()
            }),
        );
        let first = run(p, &mut s, post("ann", "1"));
        let again = run(p, &mut s, post("ann", "1"));
        let second = run(p, &mut s, post("ben", "1"));
        let (first, again, second) = match (first, again, second) {
            (outcome::Result::Posted(a), outcome::Result::Posted(b), outcome::Result::Posted(c)) => (a, b, c),
            other => panic!("{other:?}"),
        };
        // Seq 1 is ben's JOINED event.
        assert_eq!((first.group_seq, first.duplicate), (2, false));
        assert_eq!(
            (again.group_seq, again.duplicate, &again.message_id),
            (2, true, &first.message_id)
        );
        assert_eq!(second.group_seq, 3);
        let stored: GroupMessage = decode(
            s.get(&keys::seq_key(p, tree::GROUPS, &g, kind::MESSAGE, 2))
                .unwrap(),
            "m",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            stored.recipients,
            vec!["ben".to_string()],
            "the sender is not a recipient"
        );
        let leave = |user: &str| {
            Op::LeaveGroup(command::LeaveGroup {
                group: g.clone(),
                user: user.into(),
                ..Default::default()
            })
        };
        assert_eq!(run(p, &mut s, leave("ben")), done());
        assert_eq!(
            run(p, &mut s, leave("ben")),
            outcome::Result::NotAMember(Empty {})
        );
    }

    #[test]
    fn a_fanout_is_stored_once_per_group_seq_whatever_the_retries() {
        let p = 21;
        let mut s = MemStore::default();
        let (bob, cid) = (user_in(p, 0), user_in(p, 1));
        register(p, &mut s, &bob);
        let item = |user: &str, seq: u64| command::FanoutItem {
            user: user.into(),
            group_seq: seq,
            message_id: format!("g:x:{seq}"),
            from: "ann".into(),
            timestamp_ms: 7,
            text: format!("post {seq}"),
            ..Default::default()
        };
        let fanout = |items| {
            Op::Fanout(command::Fanout {
                group: "x".into(),
                items,
                now_ms: 7,
                retention: None,
            })
        };
        let first = run(
            p,
            &mut s,
            fanout(vec![item(&bob, 1), item(&bob, 2), item(&cid, 2)]),
        );
        assert_eq!(
            first,
            outcome::Result::Fanned(Fanned { seqs: vec![1, 2, 0] }),
            "no account, no entry"
        );
        let again = run(p, &mut s, fanout(vec![item(&bob, 2), item(&bob, 3)]));
        assert_eq!(again, outcome::Result::Fanned(Fanned { seqs: vec![2, 3] }));
        let meta = inbox_meta(p, &s, &bob).unwrap();
        assert_eq!(meta.last_seq, 3);
    }

    #[test]
    fn a_command_for_another_partition_or_undecodable_is_refused_alike_everywhere() {
        let mut s = MemStore::default();
        let elsewhere = user_in(4, 0);
        let r = apply(
            3,
            &Command {
                op: Some(send(&elsewhere, "a", "1", command::Retention::default())),
            }
            .encode_to_vec(),
            &mut s,
        )
        .unwrap();
        assert!(matches!(r.result, Some(outcome::Result::Invalid(_))), "{r:?}");
        let r = apply(3, &[0xff, 0x01, 0x02], &mut s).unwrap();
        assert!(matches!(r.result, Some(outcome::Result::Invalid(_))));
        let r = apply(3, &[], &mut s).unwrap();
        assert!(matches!(r.result, Some(outcome::Result::Invalid(_))));
        assert!(s.0.is_empty());
    }

    #[test]
    fn a_corrupt_record_is_a_store_error_not_a_panic() {
        let p = 2;
        let mut s = MemStore::default();
        let bob = user_in(p, 0);
        register(p, &mut s, &bob);
        s.put(keys::scoped(p, tree::INBOX, &bob, kind::META), vec![0xff, 0xff]);
        let cmd = Command {
            op: Some(send(&bob, "a", "1", command::Retention::default())),
        }
        .encode_to_vec();
        assert!(apply(p, &cmd, &mut s).is_err());
    }

    fn private(user: &str, from: &str, id: &str) -> Op {
        Op::Append(command::Append {
            user: user.into(),
            origin: keys::private_origin(from, id),
            entry: Some(InboxEntry {
                from: from.into(),
                kind: ConversationKind::Private as u32,
                conversation: user.into(),
                text: "hi".into(),
                ..InboxEntry::default()
            }),
            require_account: true,
            now_ms: 5,
            retention: None,
        })
    }

    fn act(actor: &str, other: &str, action: contacts::Action) -> Op {
        Op::ContactAction(command::ContactAction {
            actor: actor.into(),
            other: other.into(),
            action: action as u32,
            now_ms: 9,
        })
    }

    /// Two users of one partition (it is both users' and the pair's).
    fn pair_in_one_partition() -> (Partition, String, String, MemStore) {
        let p = 9;
        let (ann, bob) = (user_in(p, 0), user_in(p, 1));
        let mut store = MemStore::default();
        register(p, &mut store, &ann);
        register(p, &mut store, &bob);
        (p, ann, bob, store)
    }

    /// Acts, then delivers every update the action left (as the node does), and
    /// returns the actor's view.
    fn act_and_deliver(p: Partition, store: &mut MemStore, op: Op) -> outcome::Result {
        let result = run(p, store, op);
        if let outcome::Result::ContactChanged(c) = &result {
            for u in &c.updates {
                run(p, store, Op::ContactUpdate(u.clone()));
                let delivered = command::ContactDelivered {
                    user: u.user.clone(),
                    other: u.other.clone(),
                    version: u.version,
                };
                run(p, store, Op::ContactDelivered(delivered));
            }
        }
        result
    }

    fn contacts_of(p: Partition, store: &MemStore, user: &str) -> Vec<(String, i32)> {
        let q = chat_protocol::internal::Query {
            q: Some(chat_protocol::internal::query::Q::Contacts(user.into())),
        };
        match crate::query::evaluate(p, &q, store).unwrap().a.unwrap() {
            chat_protocol::internal::answer::A::Contacts(c) => {
                c.contacts.into_iter().map(|c| (c.user, c.state)).collect()
            }
            other => panic!("{other:?}"),
        }
    }

    fn events(p: Partition, store: &MemStore, user: &str) -> Vec<chat_protocol::v1::ContactEvent> {
        let prefix = keys::scoped(p, tree::INBOX, user, kind::ENTRY);
        store
            .scan(&prefix, None, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|(_, v)| InboxEntry::decode(v.as_slice()).unwrap().contact)
            .collect()
    }

    #[test]
    fn a_contact_request_reaches_both_inboxes_and_an_accept_makes_contacts() {
        let (p, ann, bob, mut store) = pair_in_one_partition();
        let asked = act_and_deliver(p, &mut store, act(&ann, &bob, contacts::Action::Request));
        let outcome::Result::ContactChanged(c) = &asked else {
            panic!("{asked:?}")
        };
        assert_eq!(c.state, ContactState::Outgoing as u32);
        assert_eq!(
            contacts_of(p, &store, &bob),
            vec![(ann.clone(), ContactState::Incoming as i32)]
        );
        assert_eq!(
            contacts_of(p, &store, &ann),
            vec![(bob.clone(), ContactState::Outgoing as i32)]
        );
        let told = events(p, &store, &bob);
        assert_eq!(told.len(), 1);
        assert_eq!(
            (told[0].user.as_str(), told[0].by.as_str()),
            (ann.as_str(), ann.as_str())
        );
        // Asking again changes nothing and tells nobody again.
        let again = act_and_deliver(p, &mut store, act(&ann, &bob, contacts::Action::Request));
        assert!(matches!(again, outcome::Result::ContactChanged(ref c) if c.updates.is_empty()));
        assert_eq!(events(p, &store, &bob).len(), 1);
        act_and_deliver(p, &mut store, act(&bob, &ann, contacts::Action::Accept));
        assert_eq!(
            contacts_of(p, &store, &ann),
            vec![(bob.clone(), ContactState::Contact as i32)]
        );
        assert_eq!(
            contacts_of(p, &store, &bob),
            vec![(ann.clone(), ContactState::Contact as i32)]
        );
        assert_eq!(events(p, &store, &ann).len(), 2);
        // Every update was delivered: the outbox is empty.
        assert!(
            store
                .scan(&keys::contact_outbox_prefix(p), None, 10)
                .unwrap()
                .is_empty()
        );
        // Removed: neither lists the other.
        act_and_deliver(p, &mut store, act(&bob, &ann, contacts::Action::Remove));
        assert!(contacts_of(p, &store, &ann).is_empty());
        assert!(contacts_of(p, &store, &bob).is_empty());
        assert_eq!(
            run(p, &mut store, act(&ann, &bob, contacts::Action::Accept)),
            outcome::Result::NotFound(Empty {}),
            "nothing to accept"
        );
    }

    #[test]
    fn late_or_repeated_contact_updates_change_nothing() {
        let (p, ann, bob, mut store) = pair_in_one_partition();
        let outcome::Result::ContactChanged(first) =
            run(p, &mut store, act(&ann, &bob, contacts::Action::Request))
        else {
            panic!()
        };
        let outcome::Result::ContactChanged(second) =
            run(p, &mut store, act(&ann, &bob, contacts::Action::Remove))
        else {
            panic!()
        };
        let to_bob = |c: &ContactChanged| c.updates.iter().find(|u| u.user == bob).unwrap().clone();
        // The newer arrives first; the older one, late, is ignored.
        run(p, &mut store, Op::ContactUpdate(to_bob(&second)));
        run(p, &mut store, Op::ContactUpdate(to_bob(&first)));
        run(p, &mut store, Op::ContactUpdate(to_bob(&second)));
        assert!(contacts_of(p, &store, &bob).is_empty());
        assert_eq!(events(p, &store, &bob).len(), 1, "only the newer change is told");
        // Delivered with an old version: the newer update stays in the outbox.
        let old = command::ContactDelivered {
            user: bob.clone(),
            other: ann.clone(),
            version: first.updates[0].version,
        };
        run(p, &mut store, Op::ContactDelivered(old));
        assert!(store.get(&keys::contact_outbox(p, &bob, &ann)).unwrap().is_some());
    }

    #[test]
    fn blocks_and_contacts_only_refuse_private_messages_but_never_own_copies() {
        let (p, ann, bob, mut store) = pair_in_one_partition();
        let allowed = |r: &outcome::Result| matches!(r, outcome::Result::Appended(_));
        assert!(allowed(&run(p, &mut store, private(&bob, &ann, "1"))));
        let privacy = |only: bool| {
            Op::SetPrivacy(command::SetPrivacy {
                user: bob.clone(),
                contacts_only: Some(only),
                hide_last_seen: None,
            })
        };
        let account = run(p, &mut store, privacy(true));
        assert!(matches!(account, outcome::Result::Account(ref a) if a.contacts_only && !a.hide_last_seen));
        let not_allowed = outcome::Result::NotAllowed(Empty {});
        assert_eq!(run(p, &mut store, private(&bob, &ann, "2")), not_allowed);
        assert!(
            allowed(&run(p, &mut store, private(&bob, &bob, "own"))),
            "own copy"
        );
        act_and_deliver(p, &mut store, act(&ann, &bob, contacts::Action::Request));
        assert_eq!(
            run(p, &mut store, private(&bob, &ann, "3")),
            not_allowed,
            "a request is not enough"
        );
        act_and_deliver(p, &mut store, act(&bob, &ann, contacts::Action::Accept));
        assert!(allowed(&run(p, &mut store, private(&bob, &ann, "4"))));
        // A contact bob blocks is refused too; unblocked, allowed again.
        let block = |blocked: bool| {
            Op::Block(command::Block {
                user: bob.clone(),
                other: ann.clone(),
                blocked,
            })
        };
        run(p, &mut store, privacy(false));
        run(p, &mut store, block(true));
        run(p, &mut store, block(true));
        assert_eq!(run(p, &mut store, private(&bob, &ann, "5")), not_allowed);
        run(p, &mut store, block(false));
        assert!(allowed(&run(p, &mut store, private(&bob, &ann, "6"))));
        let count = decode::<AccountRecord>(store.get(&keys::account(p, &bob)).unwrap(), "a").unwrap();
        assert_eq!(count.unwrap().blocks, 0, "blocking twice counted once");
    }

    #[test]
    fn a_blocked_users_request_never_reaches_the_blocker() {
        let (p, ann, bob, mut store) = pair_in_one_partition();
        let block = Op::Block(command::Block {
            user: bob.clone(),
            other: ann.clone(),
            blocked: true,
        });
        run(p, &mut store, block);
        act_and_deliver(p, &mut store, act(&ann, &bob, contacts::Action::Request));
        assert!(contacts_of(p, &store, &bob).is_empty());
        assert!(events(p, &store, &bob).is_empty());
        // The requester sees its request as any other.
        assert_eq!(
            contacts_of(p, &store, &ann),
            vec![(bob.clone(), ContactState::Outgoing as i32)]
        );
        // Unblocked: the request is there (untold), and bob may accept it.
        let unblock = Op::Block(command::Block {
            user: bob.clone(),
            other: ann.clone(),
            blocked: false,
        });
        run(p, &mut store, unblock);
        assert_eq!(
            contacts_of(p, &store, &bob),
            vec![(ann.clone(), ContactState::Incoming as i32)]
        );
        assert!(events(p, &store, &bob).is_empty());
    }
}
