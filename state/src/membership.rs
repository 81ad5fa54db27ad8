//! Who is in the cluster, decided by consensus: the metadata group's records and commands,
//! and where placement wants every group's voters given those members.
//!
//! The metadata group is one more Raft group ([`META`]), whose records are the members.
//! Joining, leaving and removing a node are its commands, so every node derives the same
//! placement from the same applied member list, and no node decides membership from its
//! own view of who answers. A removed node id is remembered and refused if it tries to
//! join again (its data is from before its removal).

use crate::keys;
use crate::placement::{PARTITIONS, Partition};
use crate::store::{Result, Store, decode};
use chat_protocol::internal::command::{JoinCluster, LeaveCluster, RemoveNode};
use chat_protocol::internal::{Empty, MemberRecord, outcome};
use prost::Message;
use std::collections::BTreeMap;

/// The metadata group's "partition": outside the partitions' range, so its records and
/// its Raft group never collide with theirs.
pub const META: Partition = u16::MAX;

/// Most voters of the metadata group (the others follow placement like everyone else).
pub const META_VOTERS: usize = 5;

/// A node, as Raft numbers it.
pub type NodeId = u64;

const MEMBER: u8 = 0x10;
const REMOVED: u8 = 0x11;

fn key(kind: u8, node: NodeId) -> Vec<u8> {
    let mut k = keys::partition_prefix(META).to_vec();
    k.push(kind);
    k.extend_from_slice(&node.to_be_bytes());
    k
}

/// The members, by node id.
pub fn members(store: &impl Store) -> Result<BTreeMap<NodeId, MemberRecord>> {
    let mut prefix = keys::partition_prefix(META).to_vec();
    prefix.push(MEMBER);
    let mut out = BTreeMap::new();
    for (k, v) in store.scan(&prefix, None, usize::MAX)? {
        let Some(id) = k
            .get(prefix.len()..)
            .and_then(|b| b.try_into().ok())
            .map(NodeId::from_be_bytes)
        else {
            continue;
        };
        if let Some(record) = decode::<MemberRecord>(Some(v), "member record")? {
            out.insert(id, record);
        }
    }
    Ok(out)
}

pub(crate) fn join(store: &mut impl Store, j: JoinCluster) -> Result<outcome::Result> {
    if store.get(&key(REMOVED, j.node))?.is_some() {
        return Ok(outcome::Result::NotFound(Empty {}));
    }
    let member = key(MEMBER, j.node);
    match decode::<MemberRecord>(store.get(&member)?, "member record")? {
        Some(old) if old.name == j.name && old.addr == j.addr => Ok(outcome::Result::Exists(Empty {})),
        old => {
            // A member may come back at another address; it keeps its leaving mark.
            let leaving = old.is_some_and(|o| o.leaving);
            store.put(
                member,
                MemberRecord {
                    name: j.name,
                    addr: j.addr,
                    leaving,
                }
                .encode_to_vec(),
            );
            Ok(outcome::Result::Done(Empty {}))
        }
    }
}

pub(crate) fn leave(store: &mut impl Store, l: LeaveCluster) -> Result<outcome::Result> {
    let member = key(MEMBER, l.node);
    let Some(mut record) = decode::<MemberRecord>(store.get(&member)?, "member record")? else {
        return Ok(outcome::Result::NotFound(Empty {}));
    };
    record.leaving = true;
    store.put(member, record.encode_to_vec());
    Ok(outcome::Result::Done(Empty {}))
}

pub(crate) fn remove(store: &mut impl Store, r: RemoveNode) -> Result<outcome::Result> {
    let member = key(MEMBER, r.node);
    if store.get(&member)?.is_none() {
        return Ok(outcome::Result::NotFound(Empty {}));
    }
    store.delete(member);
    store.put(key(REMOVED, r.node), Vec::new());
    Ok(outcome::Result::Done(Empty {}))
}

/// The rendezvous weight of `node` for `group` (node ids, not names: ids are what Raft
/// configurations hold).
fn weight(node: NodeId, group: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.to_be_bytes().into_iter().chain(group.to_be_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser spreads FNV's weak low bits.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Where placement wants a group's voters: the first `count` members not leaving, by
/// rendezvous weight (sorted by id). Empty when no member is active.
pub fn voters_of(members: &BTreeMap<NodeId, MemberRecord>, group: u32, count: usize) -> Vec<NodeId> {
    let mut active: Vec<NodeId> = members
        .iter()
        .filter(|(_, m)| !m.leaving)
        .map(|(id, _)| *id)
        .collect();
    active.sort_by_key(|id| std::cmp::Reverse((weight(*id, group), *id)));
    active.truncate(count);
    active.sort();
    active
}

/// Where placement wants a group's learners, beside its `voters`: for the metadata group
/// every other member not leaving, so that every member applies the membership and sees
/// where each group belongs, however many members there are (a leaving member gives up
/// every replica, this one too, before it removes itself); none for a partition (a
/// learner there is only a voter on its way in). Sorted by id.
pub fn learners_of(members: &BTreeMap<NodeId, MemberRecord>, group: u32, voters: &[NodeId]) -> Vec<NodeId> {
    if group != u32::from(META) || voters.is_empty() {
        return Vec::new();
    }
    members
        .iter()
        .filter(|(id, m)| !m.leaving && !voters.contains(id))
        .map(|(id, _)| *id)
        .collect()
}

/// Which of a group's `voters` should lead it when all is well: the one of highest
/// rendezvous weight, so that leaders (and the writes they take) spread over the
/// members as evenly as replicas do. `None` without voters.
pub fn preferred_leader(voters: &[NodeId], group: u32) -> Option<NodeId> {
    voters.iter().copied().max_by_key(|id| (weight(*id, group), *id))
}

/// Every partition's target voters with `replicas` copies, and the metadata group's.
pub fn targets(members: &BTreeMap<NodeId, MemberRecord>, replicas: usize) -> BTreeMap<u32, Vec<NodeId>> {
    let mut out: BTreeMap<u32, Vec<NodeId>> = (0..PARTITIONS)
        .map(|p| (u32::from(p), voters_of(members, u32::from(p), replicas)))
        .collect();
    out.insert(u32::from(META), voters_of(members, u32::from(META), META_VOTERS));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{apply, apply_op};
    use crate::store::MemStore;
    use chat_protocol::internal::Command;
    use chat_protocol::internal::command::Op;

    #[test]
    fn every_member_beyond_the_metadata_voters_follows_it_as_a_learner() {
        let mut members: BTreeMap<NodeId, MemberRecord> =
            (1..=7).map(|id| (id, MemberRecord::default())).collect();
        members.get_mut(&7).unwrap().leaving = true;
        let meta = u32::from(META);
        let voters = voters_of(&members, meta, META_VOTERS);
        assert_eq!(voters.len(), META_VOTERS);
        let learners = learners_of(&members, meta, &voters);
        assert_eq!(learners.len(), 1, "{voters:?} {learners:?}");
        assert!(!learners.contains(&7), "a leaving member gives its replica up");
        assert!(learners.iter().all(|l| !voters.contains(l)));
        assert!(learners.windows(2).all(|w| w[0] < w[1]));
        // A partition has no lasting learners; nor does a group with no voters.
        assert!(learners_of(&members, 3, &voters_of(&members, 3, 3)).is_empty());
        assert!(learners_of(&members, meta, &[]).is_empty());
    }

    #[test]
    fn preferred_leaders_spread_evenly_and_are_voters() {
        let voters = [11, 22, 33];
        let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
        for p in 0..PARTITIONS {
            let leader = preferred_leader(&voters, u32::from(p)).unwrap();
            assert!(voters.contains(&leader));
            *led.entry(leader).or_default() += 1;
        }
        let fair = usize::from(PARTITIONS) / voters.len();
        for (id, n) in &led {
            assert!(
                n * 4 > fair * 3 && n * 4 < fair * 5,
                "node {id} leads {n} of {PARTITIONS}"
            );
        }
        assert_eq!(preferred_leader(&[], 1), None);
    }

    fn run(store: &mut MemStore, op: Op) -> outcome::Result {
        apply_op(META, op, store).unwrap().result.unwrap()
    }

    fn joined(n: u64) -> Op {
        Op::JoinCluster(JoinCluster {
            node: n,
            name: format!("n{n}"),
            addr: format!("10.0.0.{n}:7500"),
        })
    }

    #[test]
    fn members_join_once_leave_and_a_removed_id_stays_out() {
        let mut s = MemStore::default();
        for n in 1..=4 {
            assert_eq!(run(&mut s, joined(n)), outcome::Result::Done(Empty {}));
        }
        assert_eq!(run(&mut s, joined(2)), outcome::Result::Exists(Empty {}));
        assert_eq!(
            run(&mut s, Op::LeaveCluster(LeaveCluster { node: 3 })),
            outcome::Result::Done(Empty {})
        );
        assert_eq!(
            run(&mut s, Op::RemoveNode(RemoveNode { node: 4 })),
            outcome::Result::Done(Empty {})
        );
        assert_eq!(
            run(&mut s, joined(4)),
            outcome::Result::NotFound(Empty {}),
            "a removed id cannot rejoin"
        );
        let m = members(&s).unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(m[&3].leaving);
        // A leaving node is in no target.
        assert!(targets(&m, 3).values().all(|v| !v.contains(&3) && v.len() == 2));
    }

    #[test]
    fn membership_commands_belong_to_the_metadata_group_only() {
        let mut s = MemStore::default();
        let r = apply(3, &Command { op: Some(joined(1)) }.encode_to_vec(), &mut s).unwrap();
        assert!(matches!(r.result, Some(outcome::Result::Invalid(_))));
    }

    #[test]
    fn a_new_member_takes_about_its_share_and_moves_only_that() {
        let mut s = MemStore::default();
        for n in 1..=4 {
            run(&mut s, joined(n));
        }
        let before = targets(&members(&s).unwrap(), 3);
        run(&mut s, joined(5));
        let after = targets(&members(&s).unwrap(), 3);
        let mut moved = 0;
        for (group, old) in &before {
            let new = &after[group];
            let gained: Vec<_> = new.iter().filter(|n| !old.contains(n)).collect();
            assert!(
                gained.iter().all(|n| **n == 5),
                "only the new node gains replicas"
            );
            moved += gained.len();
        }
        // Its fair share is 3/5 of 257 groups' replicas.
        assert!((100..=210).contains(&moved), "{moved}");
        assert_eq!(after[&u32::from(META)].len(), META_VOTERS);
    }
}
