//! Which posts of a group still have to reach which partitions: the plan the group's
//! leader follows to copy posts into members' inboxes, in group order.
//!
//! Order comes from the shape of the work, not from timing: per destination partition,
//! a batch covers every post after that partition's committed cursor, in group order,
//! and is applied there as one command; its cursor moves (`FanoutDone`) only after the
//! batch is applied. So whatever batches a deposed leader still has in flight, each
//! starts at or before the first post the partition lacks, and a member's inbox always
//! holds a prefix of the group's posts for it: retries are deduplicated by (group, group
//! seq) and nothing later can be stored before something earlier.

use crate::keys::{self, kind, tree};
use crate::machine::group;
use crate::placement::{self, Partition};
use crate::store::{Result, Store, decode};
use chat_protocol::internal::GroupMessage;
use chat_protocol::internal::command::FanoutItem;
use std::collections::BTreeMap;

/// The posts one partition lacks, in group order.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Where the recipients' inboxes are.
    pub partition: Partition,
    /// One item per (post, recipient in that partition).
    pub items: Vec<FanoutItem>,
    /// Every post up to here is covered for that partition once the batch is applied.
    pub up_to: u64,
}

/// What a group's leader should do next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// A batch per partition that lacks posts.
    pub batches: Vec<Batch>,
    /// Every post up to here has reached every partition: record it with
    /// `FanoutDone { all: true }` so later plans start after it.
    pub complete_up_to: Option<u64>,
}

/// Most bytes of text one batch carries (more posts wait for the next batch; a single
/// post's items for one partition always fit in a batch of their own).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// Most bytes of text one plan carries over all its batches (it crosses nodes).
pub const MAX_PLAN_BYTES: usize = 4 << 20;

/// Plans the fan-out of `group` (kept in partition `p`), looking at most `max_posts`
/// posts past the point where the fan-out is complete, within [`MAX_BATCH_BYTES`] per
/// batch and [`MAX_PLAN_BYTES`] in all. A destination that cannot take more stops at
/// the last post it got whole; the others go on, so one slow partition does not hold
/// the rest back within the window.
pub fn plan(p: Partition, store: &impl Store, group_name: &str, max_posts: u64) -> Result<Plan> {
    let Some(record) = group(p, store, group_name)? else {
        return Ok(Plan::default());
    };
    let first = record.fanout_seq + 1;
    let mut last = record.last_seq.min(record.fanout_seq.saturating_add(max_posts));
    let mut cursors: BTreeMap<Partition, u64> = BTreeMap::new();
    let mut batches: BTreeMap<Partition, (Vec<FanoutItem>, usize)> = BTreeMap::new();
    // Destinations whose batch is full, with the last post they got whole.
    let mut full: BTreeMap<Partition, u64> = BTreeMap::new();
    let mut plan_bytes = 0;
    // Posts up to here need nothing anywhere.
    let mut complete = record.fanout_seq;
    let mut pending_seen = false;
    for group_seq in first..=last {
        let key = keys::seq_key(p, tree::GROUPS, group_name, kind::MESSAGE, group_seq);
        let Some(post): Option<GroupMessage> = decode(store.get(&key)?, "group message")? else {
            // A post removed by retention has nothing left to deliver.
            if !pending_seen {
                complete = group_seq;
            }
            continue;
        };
        // This post's recipients that still lack it, by destination.
        let mut lacking: BTreeMap<Partition, Vec<&String>> = BTreeMap::new();
        for user in &post.recipients {
            let to = placement::of_user(user);
            let cursor = match cursors.get(&to) {
                Some(c) => *c,
                None => {
                    let c = store
                        .get(&keys::fanout(p, group_name, to))?
                        .map(|v| keys::seq_of(&v))
                        .unwrap_or(0);
                    cursors.insert(to, c);
                    c
                }
            };
            if group_seq > cursor {
                lacking.entry(to).or_default().push(user);
            }
        }
        let size = post.text.len() + post.message_id.len() + post.from.len() + 64;
        let post_bytes: usize = lacking.values().map(|users| users.len() * size).sum();
        if plan_bytes > 0 && plan_bytes + post_bytes > MAX_PLAN_BYTES {
            // The plan is full: the window ends before this post.
            last = group_seq - 1;
            break;
        }
        for (to, users) in lacking {
            pending_seen = true;
            if full.contains_key(&to) {
                continue;
            }
            let bytes = users.len() * size;
            let (items, batch_bytes) = batches.entry(to).or_default();
            if !items.is_empty() && *batch_bytes + bytes > MAX_BATCH_BYTES {
                full.insert(to, group_seq - 1);
                continue;
            }
            *batch_bytes += bytes;
            plan_bytes += bytes;
            items.extend(users.into_iter().map(|user| FanoutItem {
                group_seq,
                message_id: post.message_id.clone(),
                from: post.from.clone(),
                timestamp_ms: post.timestamp_ms,
                text: post.text.clone(),
                event: post.event.clone(),
                reply_to: post.reply_to.clone(),
                attachments: post.attachments.clone(),
                change: post.change.clone(),
                mentioned: post.mentions.contains(user),
                user: user.clone(),
            }));
        }
        if !pending_seen {
            complete = group_seq;
        }
    }
    Ok(Plan {
        batches: batches
            .into_iter()
            .map(|(partition, (items, _))| Batch {
                partition,
                items,
                up_to: full.get(&partition).copied().unwrap_or(last),
            })
            .collect(),
        complete_up_to: (complete > record.fanout_seq).then_some(complete),
    })
}

/// The groups of partition `p` with posts not yet in every member's inbox (a new
/// leader resumes their fan-out), at most `limit`.
pub fn pending_groups(p: Partition, store: &impl Store, limit: usize) -> Result<Vec<String>> {
    let prefix = keys::pending_prefix(p);
    Ok(store
        .scan(&prefix, None, limit)?
        .into_iter()
        .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::apply_op;
    use crate::store::MemStore;
    use chat_protocol::internal::command::{self, Op};
    use chat_protocol::internal::outcome;

    fn group_in(p: Partition) -> String {
        placement::group_named_in(p, "group", 0)
    }

    fn run(p: Partition, store: &mut MemStore, op: Op) -> outcome::Result {
        apply_op(p, op, store).unwrap().result.unwrap()
    }

    /// A group with members in several partitions and `posts` posts by its creator.
    fn group_with_posts(posts: u64) -> (Partition, MemStore, String, Vec<String>) {
        let p = 30;
        let mut s = MemStore::default();
        let g = group_in(p);
        run(
            p,
            &mut s,
            Op::CreateGroup(command::CreateGroup {
                group: g.clone(),
                creator: "owner".into(),
                now_ms: 1,
                ..Default::default()
            }),
        );
        let members: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
        for m in &members {
            crate::groups::add_member(p, &mut s, &g, m);
        }
        for i in 1..=posts {
            run(
                p,
                &mut s,
                Op::Post(command::Post {
                    group: g.clone(),
                    from: "owner".into(),
                    client_msg_id: i.to_string(),
                    text: format!("post {i}"),
                    now_ms: i,
                    reply_to: String::new(),
                    attachments: Vec::new(),
                }),
            );
        }
        (p, s, g, members)
    }

    #[test]
    fn every_recipient_partition_gets_every_post_in_order() {
        let (p, s, g, members) = group_with_posts(3);
        let plan = plan(p, &s, &g, 100).unwrap();
        let destinations: std::collections::BTreeSet<Partition> =
            members.iter().map(|m| placement::of_user(m)).collect();
        assert_eq!(plan.batches.len(), destinations.len());
        for batch in &plan.batches {
            let seqs: Vec<u64> = batch.items.iter().map(|i| i.group_seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "group order: {seqs:?}");
            assert_eq!(batch.up_to, 3);
            assert!(
                batch
                    .items
                    .iter()
                    .all(|i| placement::of_user(&i.user) == batch.partition)
            );
        }
        let items: usize = plan.batches.iter().map(|b| b.items.len()).sum();
        assert_eq!(items, 3 * members.len(), "the sender is not a recipient");
        assert_eq!(plan.complete_up_to, None);
    }

    #[test]
    fn cursors_move_the_plan_forward_and_complete_it() {
        let (p, mut s, g, _) = group_with_posts(3);
        let first = plan(p, &s, &g, 100).unwrap();
        // One partition got everything: it drops out of the plan.
        let done = first.batches[0].partition;
        run(
            p,
            &mut s,
            Op::FanoutDone(command::FanoutDone {
                group: g.clone(),
                partition: done as u32,
                group_seq: 3,
                all: false,
            }),
        );
        let second = plan(p, &s, &g, 100).unwrap();
        assert!(second.batches.iter().all(|b| b.partition != done));
        assert_eq!(second.batches.len(), first.batches.len() - 1);
        for b in &first.batches {
            run(
                p,
                &mut s,
                Op::FanoutDone(command::FanoutDone {
                    group: g.clone(),
                    partition: b.partition as u32,
                    group_seq: 2,
                    all: false,
                }),
            );
        }
        let third = plan(p, &s, &g, 100).unwrap();
        assert_eq!(third.complete_up_to, Some(2), "posts 1 and 2 reached everyone");
        assert!(
            third
                .batches
                .iter()
                .all(|b| b.items.iter().all(|i| i.group_seq == 3))
        );
        run(
            p,
            &mut s,
            Op::FanoutDone(command::FanoutDone {
                group: g.clone(),
                partition: 0,
                group_seq: 2,
                all: true,
            }),
        );
        let fourth = plan(p, &s, &g, 100).unwrap();
        assert_eq!(fourth.complete_up_to, None);
        assert_eq!(
            pending_groups(p, &s, 10).unwrap(),
            [g.as_str()],
            "post 3 is still pending"
        );
        assert_eq!(
            fourth,
            Plan {
                complete_up_to: None,
                ..third
            }
        );
    }

    #[test]
    fn a_group_is_pending_from_a_post_until_its_fan_out_is_complete() {
        let (p, mut s, g, _) = group_with_posts(2);
        assert_eq!(pending_groups(p, &s, 10).unwrap(), [g.as_str()]);
        let done = |s: &mut MemStore, group_seq| {
            let op = Op::FanoutDone(command::FanoutDone {
                group: g.clone(),
                partition: 0,
                group_seq,
                all: true,
            });
            run(p, s, op);
        };
        done(&mut s, 1);
        assert_eq!(pending_groups(p, &s, 10).unwrap(), [g.as_str()]);
        done(&mut s, 2);
        assert!(pending_groups(p, &s, 10).unwrap().is_empty());
        assert!(pending_groups(p + 1, &s, 10).unwrap().is_empty());
    }

    #[test]
    fn big_posts_go_in_several_batches_each_ending_at_a_whole_post() {
        let p = 31;
        let mut s = MemStore::default();
        let g = group_in(p);
        let create = Op::CreateGroup(command::CreateGroup {
            group: g.clone(),
            creator: "owner".into(),
            now_ms: 1,
            ..Default::default()
        });
        run(p, &mut s, create);
        let members: Vec<String> = (0..2).map(|i| placement::user_named_in(40 + i, "m", 0)).collect();
        for m in &members {
            crate::groups::add_member(p, &mut s, &g, m);
        }
        let big = "x".repeat(400 << 10);
        for i in 1..=7u64 {
            let post = Op::Post(command::Post {
                group: g.clone(),
                from: "owner".into(),
                client_msg_id: i.to_string(),
                text: big.clone(),
                now_ms: i,
                reply_to: String::new(),
                attachments: Vec::new(),
            });
            run(p, &mut s, post);
        }
        // Follow the plans, moving each destination's cursor as a driver would.
        let mut got: BTreeMap<Partition, Vec<u64>> = BTreeMap::new();
        for _ in 0..10 {
            let plan = plan(p, &s, &g, 100).unwrap();
            if let Some(up_to) = plan.complete_up_to {
                let done = Op::FanoutDone(command::FanoutDone {
                    group: g.clone(),
                    partition: 0,
                    group_seq: up_to,
                    all: true,
                });
                run(p, &mut s, done);
            }
            if plan.batches.is_empty() {
                break;
            }
            for b in plan.batches {
                let bytes: usize = b.items.iter().map(|i| i.text.len()).sum();
                assert!(bytes <= MAX_BATCH_BYTES, "{bytes} bytes in one batch");
                assert_eq!(
                    b.items.last().map(|i| i.group_seq),
                    Some(b.up_to),
                    "ends at a whole post"
                );
                got.entry(b.partition)
                    .or_default()
                    .extend(b.items.iter().map(|i| i.group_seq));
                let done = Op::FanoutDone(command::FanoutDone {
                    group: g.clone(),
                    partition: u32::from(b.partition),
                    group_seq: b.up_to,
                    all: false,
                });
                run(p, &mut s, done);
            }
        }
        assert_eq!(got.len(), 2);
        for seqs in got.values() {
            assert_eq!(seqs, &(1..=7).collect::<Vec<_>>(), "every post once, in order");
        }
        assert!(pending_groups(p, &s, 10).unwrap().is_empty(), "complete");
    }

    #[test]
    fn a_plan_looks_at_most_max_posts_ahead() {
        let (p, s, g, _) = group_with_posts(10);
        let plan = plan(p, &s, &g, 4).unwrap();
        assert!(
            plan.batches
                .iter()
                .all(|b| b.up_to == 4 && b.items.iter().all(|i| i.group_seq <= 4))
        );
    }

    #[test]
    fn an_unknown_group_has_nothing_to_do() {
        assert_eq!(
            plan(1, &MemStore::default(), "none", 10).unwrap(),
            Plan::default()
        );
    }
}
