//! What group commands do to a group's records, with the rules of
//! [`crate::governance`]: creation (the creator owns it), joining (bans, invitations),
//! leaving (or declining), and the admin actions. Every change is posted as a
//! `GroupEvent` in the group's log, with a group seq like a message, and fanned out to
//! the members (and to whoever it was done to) like one.

use crate::governance::{self, Action, Refusal};
use crate::keys::{self, kind, tree};
use crate::placement::Partition;
use crate::store::{Result, Store, decode};
use chat_protocol::internal::command::{CreateGroup, DropMember, GroupAdmin, JoinGroup, LeaveGroup};
use chat_protocol::internal::outcome;
use chat_protocol::internal::{Empty, GroupMessage, GroupRecord, Invitation, MemberEntry};
use chat_protocol::v1::{GroupEvent, GroupInfo, GroupMember, GroupRole, group_event::Kind};
use prost::Message;

/// The group's record, unless there is none or it is being deleted.
pub fn group(p: Partition, store: &impl Store, group: &str) -> Result<Option<GroupRecord>> {
    let record: Option<GroupRecord> = decode(
        store.get(&keys::scoped(p, tree::GROUPS, group, kind::META))?,
        "group record",
    )?;
    Ok(record.filter(|r| !r.deleting))
}

/// The key of a member of a group.
pub fn member_key(p: Partition, group: &str, user: &str) -> Vec<u8> {
    keys::suffix_key(p, tree::GROUPS, group, kind::MEMBER, user.as_bytes())
}

fn invited_key(p: Partition, group: &str, user: &str) -> Vec<u8> {
    keys::suffix_key(p, tree::GROUPS, group, kind::INVITED, user.as_bytes())
}

fn banned_key(p: Partition, group: &str, user: &str) -> Vec<u8> {
    keys::suffix_key(p, tree::GROUPS, group, kind::BANNED, user.as_bytes())
}

/// A member's entry, if `user` is a member.
pub fn member(p: Partition, store: &impl Store, group: &str, user: &str) -> Result<Option<MemberEntry>> {
    Ok(store
        .get(&member_key(p, group, user))?
        .map(|v| MemberEntry::decode(v.as_slice()).unwrap_or_default()))
}

/// The owner (groups from before roles: their creator).
pub fn owner(record: &GroupRecord) -> &str {
    if record.owner.is_empty() {
        &record.creator
    } else {
        &record.owner
    }
}

/// Who owns the group now: its owner while a member; otherwise (a group from before
/// roles whose creator left) its first admin by name, else its first member.
pub fn owner_now(p: Partition, store: &impl Store, name: &str, record: &GroupRecord) -> Result<String> {
    let recorded = owner(record);
    if member(p, store, name, recorded)?.is_some() {
        return Ok(recorded.to_owned());
    }
    let members = members_of(p, store, name)?;
    let admin = members.iter().find(|(_, e)| e.role == GroupRole::Admin as u32);
    Ok(admin
        .or(members.first())
        .map_or_else(|| recorded.to_owned(), |(m, _)| m.clone()))
}

/// `user`'s role in the group owned by `owner`, `None` when no member.
pub fn role(owner: &str, entry: Option<&MemberEntry>, user: &str) -> Option<GroupRole> {
    let entry = entry?;
    if owner == user {
        return Some(GroupRole::Owner);
    }
    Some(GroupRole::try_from(entry.role as i32).unwrap_or(GroupRole::Member))
}

/// Every member's name, in order.
pub fn members_of(p: Partition, store: &impl Store, group: &str) -> Result<Vec<(String, MemberEntry)>> {
    let prefix = keys::scoped(p, tree::GROUPS, group, kind::MEMBER);
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(&prefix, after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (key, value) in page {
            let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            out.push((name, MemberEntry::decode(value.as_slice()).unwrap_or_default()));
        }
    }
    Ok(out)
}

pub(crate) fn put_record(p: Partition, store: &mut impl Store, name: &str, record: &GroupRecord) {
    store.put(
        keys::scoped(p, tree::GROUPS, name, kind::META),
        record.encode_to_vec(),
    );
}

/// Posts `event` by `actor` in the group's order: told to every member but the actor,
/// and to `also` (whom it was done to, when no longer a member). Returns its seq.
fn post_event(
    p: Partition,
    store: &mut impl Store,
    name: &str,
    record: &mut GroupRecord,
    event: GroupEvent,
    now_ms: u64,
    also: Option<&str>,
) -> Result<u64> {
    let group_seq = record.last_seq + 1;
    let actor = event.actor.clone();
    let mut recipients: Vec<String> = members_of(p, store, name)?
        .into_iter()
        .map(|(m, _)| m)
        .filter(|m| *m != actor)
        .collect();
    if let Some(also) = also
        && also != actor
        && !recipients.iter().any(|r| r == also)
    {
        recipients.push(also.to_owned());
    }
    let message = GroupMessage {
        message_id: format!("g:{name}:{group_seq}"),
        from: actor,
        timestamp_ms: now_ms,
        recipients,
        event: Some(event),
        ..GroupMessage::default()
    };
    store.put(
        keys::seq_key(p, tree::GROUPS, name, kind::MESSAGE, group_seq),
        message.encode_to_vec(),
    );
    store.put(keys::pending(p, name), Vec::new());
    record.last_seq = group_seq;
    put_record(p, store, name, record);
    Ok(group_seq)
}

fn event(kind: Kind, actor: &str, target: &str) -> GroupEvent {
    GroupEvent {
        kind: kind as i32,
        actor: actor.to_owned(),
        target: target.to_owned(),
        ..GroupEvent::default()
    }
}

fn changed(group_seq: u64, invited_at_ms: u64) -> outcome::Result {
    outcome::Result::GroupChanged(outcome::GroupChanged {
        group_seq,
        invited_at_ms,
    })
}

fn done() -> outcome::Result {
    outcome::Result::Done(Empty {})
}

fn forbidden(why: &str) -> outcome::Result {
    outcome::Result::Forbidden(why.to_owned())
}

/// Creates a group owned by its creator, who is its first member.
pub fn create(p: Partition, store: &mut impl Store, c: &CreateGroup) -> Result<outcome::Result> {
    let meta = keys::scoped(p, tree::GROUPS, &c.group, kind::META);
    if store.get(&meta)?.is_some() {
        return Ok(outcome::Result::Exists(Empty {}));
    }
    let record = GroupRecord {
        creator: c.creator.clone(),
        created_at_ms: c.now_ms,
        owner: c.creator.clone(),
        private: c.private,
        title: c.title.clone(),
        history_hidden: c.private,
        ..GroupRecord::default()
    };
    store.put(meta, record.encode_to_vec());
    store.put(member_key(p, &c.group, &c.creator), Vec::new());
    Ok(done())
}

/// Joins (or accepts an invitation): a JOINED event; a member already is left as is.
pub fn join(p: Partition, store: &mut impl Store, j: &JoinGroup) -> Result<outcome::Result> {
    let Some(mut record) = group(p, store, &j.group)? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    if member(p, store, &j.group, &j.user)?.is_some() {
        return Ok(done());
    }
    let invited = store.get(&invited_key(p, &j.group, &j.user))?.is_some();
    let banned = store.get(&banned_key(p, &j.group, &j.user))?.is_some();
    if let Err(why) = governance::may_join(record.private, invited, banned) {
        return Ok(forbidden(why));
    }
    store.delete(invited_key(p, &j.group, &j.user));
    let entry = MemberEntry {
        role: GroupRole::Member as u32,
        joined_seq: record.last_seq,
    };
    store.put(member_key(p, &j.group, &j.user), entry.encode_to_vec());
    post_event(
        p,
        store,
        &j.group,
        &mut record,
        event(Kind::Joined, &j.user, ""),
        j.now_ms,
        None,
    )?;
    Ok(done())
}

/// Leaves (a LEFT event), or declines an invitation. The owner must hand over first.
pub fn leave(p: Partition, store: &mut impl Store, l: &LeaveGroup) -> Result<outcome::Result> {
    let Some(mut record) = group(p, store, &l.group)? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    if member(p, store, &l.group, &l.user)?.is_none() {
        let invite = invited_key(p, &l.group, &l.user);
        if store.get(&invite)?.is_some() {
            store.delete(invite);
            return Ok(done());
        }
        return Ok(outcome::Result::NotAMember(Empty {}));
    }
    if owner_now(p, store, &l.group, &record)? == l.user {
        return Ok(forbidden(
            "the owner hands the group over (or deletes it) before leaving",
        ));
    }
    store.delete(member_key(p, &l.group, &l.user));
    post_event(
        p,
        store,
        &l.group,
        &mut record,
        event(Kind::Left, &l.user, ""),
        l.now_ms,
        None,
    )?;
    Ok(done())
}

/// A deleted user leaves: its ownership passes to the first admin by name, else the
/// first member; a LEFT event (and OWNER_CHANGED) tell the others. `done` when no
/// member is left (the node then deletes the group).
pub fn drop_member(p: Partition, store: &mut impl Store, d: &DropMember) -> Result<outcome::Result> {
    let Some(mut record) = group(p, store, &d.group)? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    let purged = |done| {
        outcome::Result::Purged(outcome::Purged {
            members: Vec::new(),
            done,
        })
    };
    if member(p, store, &d.group, &d.user)?.is_none() {
        return Ok(purged(members_of(p, store, &d.group)?.is_empty()));
    }
    let was_owner = owner_now(p, store, &d.group, &record)? == d.user;
    store.delete(member_key(p, &d.group, &d.user));
    let left = members_of(p, store, &d.group)?;
    if left.is_empty() {
        return Ok(purged(true));
    }
    if was_owner {
        let admin = |e: &MemberEntry| e.role == GroupRole::Admin as u32;
        let (heir, _) = left.iter().find(|(_, e)| admin(e)).unwrap_or(&left[0]).clone();
        record.owner.clone_from(&heir);
        let mut e = event(Kind::OwnerChanged, &d.user, &heir);
        e.role = GroupRole::Owner as i32;
        post_event(p, store, &d.group, &mut record, e, d.now_ms, None)?;
    }
    post_event(
        p,
        store,
        &d.group,
        &mut record,
        event(Kind::Left, &d.user, ""),
        d.now_ms,
        None,
    )?;
    Ok(purged(false))
}

/// An admin action: refused as the roles say, or done with its event (group seq 0 when
/// nothing changed: a repeat).
pub fn admin(p: Partition, store: &mut impl Store, a: &GroupAdmin) -> Result<outcome::Result> {
    let Some(action) = Action::from_number(a.action) else {
        return Ok(outcome::Result::Invalid(format!("no group action {}", a.action)));
    };
    let Some(mut record) = group(p, store, &a.group)? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    let actor_entry = member(p, store, &a.group, &a.actor)?;
    let target_entry = member(p, store, &a.group, &a.target)?;
    let owner = owner_now(p, store, &a.group, &record)?;
    let actor_role = role(&owner, actor_entry.as_ref(), &a.actor);
    let target_role = role(&owner, target_entry.as_ref(), &a.target);
    let new_role = GroupRole::try_from(a.role as i32).unwrap_or(GroupRole::Member);
    match governance::may(action, actor_role, target_role, record.private, new_role) {
        Ok(()) => {}
        Err(Refusal::NotAMember) => return Ok(outcome::Result::NotAMember(Empty {})),
        Err(Refusal::TargetNotAMember) => return Ok(outcome::Result::NotFound(Empty {})),
        Err(Refusal::Forbidden(why)) => return Ok(forbidden(why)),
    }
    let (g, target, now) = (a.group.as_str(), a.target.as_str(), a.now_ms);
    let post = |store: &mut _, record: &mut GroupRecord, e: GroupEvent, also: Option<&str>| {
        post_event(p, store, g, record, e, now, also).map(|group_seq| changed(group_seq, 0))
    };
    let unchanged = changed(0, 0);
    match action {
        Action::Invite => {
            if target_entry.is_some() {
                return Ok(unchanged);
            }
            if let Some(pending) = store.get(&invited_key(p, g, target))? {
                let pending = Invitation::decode(pending.as_slice()).unwrap_or_default();
                return Ok(changed(0, pending.at_ms));
            }
            if store.get(&banned_key(p, g, target))?.is_some() {
                return Ok(forbidden("that user is banned from this group: unban first"));
            }
            let invitation = Invitation {
                by: a.actor.clone(),
                at_ms: now,
            };
            store.put(invited_key(p, g, target), invitation.encode_to_vec());
            let seq = post_event(
                p,
                store,
                g,
                &mut record,
                event(Kind::Invited, &a.actor, target),
                now,
                None,
            )?;
            Ok(changed(seq, now))
        }
        Action::Remove => {
            store.delete(member_key(p, g, target));
            post(
                store,
                &mut record,
                event(Kind::Removed, &a.actor, target),
                Some(target),
            )
        }
        Action::Ban => {
            if store.get(&banned_key(p, g, target))?.is_some() {
                return Ok(unchanged);
            }
            store.put(banned_key(p, g, target), Vec::new());
            store.delete(invited_key(p, g, target));
            let was_member = target_entry.is_some();
            store.delete(member_key(p, g, target));
            post(
                store,
                &mut record,
                event(Kind::Banned, &a.actor, target),
                was_member.then_some(target),
            )
        }
        Action::Unban => {
            if store.get(&banned_key(p, g, target))?.is_none() {
                return Ok(unchanged);
            }
            store.delete(banned_key(p, g, target));
            post(store, &mut record, event(Kind::Unbanned, &a.actor, target), None)
        }
        Action::SetRole => {
            let mut entry = target_entry.unwrap_or_default();
            if entry.role == new_role as u32 {
                return Ok(unchanged);
            }
            entry.role = new_role as u32;
            store.put(member_key(p, g, target), entry.encode_to_vec());
            let mut e = event(Kind::RoleChanged, &a.actor, target);
            e.role = new_role as i32;
            post(store, &mut record, e, None)
        }
        Action::Transfer => {
            record.owner = target.to_owned();
            let mut old = actor_entry.unwrap_or_default();
            old.role = GroupRole::Admin as u32;
            store.put(member_key(p, g, &a.actor), old.encode_to_vec());
            let mut e = event(Kind::OwnerChanged, &a.actor, target);
            e.role = GroupRole::Owner as i32;
            post(store, &mut record, e, None)
        }
        Action::SetInfo => {
            let before = record.clone();
            if let Some(title) = &a.title {
                record.title.clone_from(title);
            }
            if let Some(topic) = &a.topic {
                record.topic.clone_from(topic);
            }
            if let Some(history) = a.history_for_new_members {
                record.history_hidden = !history;
            }
            if record == before {
                return Ok(unchanged);
            }
            let e = GroupEvent {
                kind: Kind::InfoChanged as i32,
                actor: a.actor.clone(),
                title: record.title.clone(),
                topic: record.topic.clone(),
                history_for_new_members: !record.history_hidden,
                ..GroupEvent::default()
            };
            post(store, &mut record, e, None)
        }
        // The node deletes the group once the owner's right to is confirmed here.
        Action::Delete => Ok(unchanged),
    }
}

/// A group's settings and members with roles: for members, and for anyone about a
/// public group.
pub fn info(p: Partition, store: &impl Store, name: &str, user: &str) -> Result<Result_<GroupInfo>> {
    let Some(record) = group(p, store, name)? else {
        return Ok(Err(Missing::Group));
    };
    let members = members_of(p, store, name)?;
    if record.private && !members.iter().any(|(m, _)| m == user) {
        return Ok(Err(Missing::Membership));
    }
    let owner = owner_now(p, store, name, &record)?;
    Ok(Ok(GroupInfo {
        group: name.to_owned(),
        title: record.title.clone(),
        topic: record.topic.clone(),
        private: record.private,
        history_for_new_members: !record.history_hidden,
        owner: owner.clone(),
        created_at_ms: record.created_at_ms,
        members: members
            .into_iter()
            .map(|(m, entry)| GroupMember {
                role: role(&owner, Some(&entry), &m).unwrap_or(GroupRole::Member) as i32,
                user: m,
            })
            .collect(),
    }))
}

/// Why a group read finds nothing to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// No such group.
    Group,
    /// A private group, and the asker is no member.
    Membership,
}

/// A read's answer or why there is none.
pub type Result_<T> = std::result::Result<T, Missing>;

/// The first group seq `user` may read: everything for groups that show history to new
/// members, or for members from before roles; otherwise what came after joining.
pub fn first_readable(record: &GroupRecord, entry: &MemberEntry) -> u64 {
    if record.history_hidden {
        entry.joined_seq + 1
    } else {
        1
    }
}

/// Makes `user` a member without a JOINED event (tests of what follows a join).
#[cfg(test)]
pub(crate) fn add_member(p: Partition, store: &mut impl Store, group: &str, user: &str) {
    store.put(member_key(p, group, user), Vec::new());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement;
    use crate::store::MemStore;

    fn dropped(p: Partition, s: &mut MemStore, g: &str, user: &str) -> bool {
        let d = DropMember {
            group: g.into(),
            user: user.into(),
            now_ms: 9,
        };
        match drop_member(p, s, &d).unwrap() {
            outcome::Result::Purged(purged) => purged.done,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_dropped_owner_hands_the_group_to_an_admin_first_and_the_last_one_empties_it() {
        let p = 40;
        let g = placement::group_named_in(p, "g", 0);
        let mut s = MemStore::default();
        let c = CreateGroup {
            group: g.clone(),
            creator: "ann".into(),
            now_ms: 1,
            ..Default::default()
        };
        create(p, &mut s, &c).unwrap();
        add_member(p, &mut s, &g, "bob");
        add_member(p, &mut s, &g, "cy");
        let admin = MemberEntry {
            role: GroupRole::Admin as u32,
            joined_seq: 0,
        };
        s.put(member_key(p, &g, "cy"), admin.encode_to_vec());
        assert!(!dropped(p, &mut s, &g, "ann"));
        let record = group(p, &s, &g).unwrap().unwrap();
        assert_eq!(owner(&record), "cy", "an admin before a member");
        assert_eq!(record.last_seq, 2, "OWNER_CHANGED and LEFT are told");
        assert!(!dropped(p, &mut s, &g, "cy"));
        assert_eq!(owner(&group(p, &s, &g).unwrap().unwrap()), "bob");
        assert!(!dropped(p, &mut s, &g, "nobody"), "not a member: nothing changes");
        assert!(dropped(p, &mut s, &g, "bob"), "the last member leaves it empty");
    }

    #[test]
    fn a_group_from_before_roles_whose_creator_left_is_owned_by_a_member() {
        let p = 41;
        let g = placement::group_named_in(p, "g", 0);
        let mut s = MemStore::default();
        let record = GroupRecord {
            creator: "ann".into(),
            ..GroupRecord::default()
        };
        put_record(p, &mut s, &g, &record);
        add_member(p, &mut s, &g, "cy");
        add_member(p, &mut s, &g, "bob");
        assert_eq!(
            owner_now(p, &s, &g, &record).unwrap(),
            "bob",
            "the first member by name"
        );
        let set_info = GroupAdmin {
            group: g.clone(),
            actor: "bob".into(),
            action: Action::SetInfo as u32,
            topic: Some("ours".into()),
            now_ms: 3,
            ..GroupAdmin::default()
        };
        assert!(matches!(
            admin(p, &mut s, &set_info).unwrap(),
            outcome::Result::GroupChanged(_)
        ));
        let info = info(p, &s, &g, "cy").unwrap().unwrap();
        assert_eq!(info.owner, "bob");
    }
}
