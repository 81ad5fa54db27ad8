//! Moving a group's replicas towards a target set, one safe change at a time.
//!
//! The leader of a group compares its configuration with where placement wants the
//! group and proposes the next change: a missing replica joins as a learner (it does
//! not count for the majority while it catches up, by log or snapshot); a caught-up
//! learner is promoted together with the removal of a voter that is no longer wanted, in
//! one joint-consensus change (so the group never has fewer voters than it needs); extra
//! voters and learners go last. A leader that must leave hands leadership to a caught-up
//! voter that stays, and lets it finish. Decisions only: the driver proposes them.
//!
//! A voter is never removed outright: it steps down to a learner, and a learner leaves
//! only once every voter is known to have the current configuration committed. A
//! replica removed from the group deletes itself; a voter that has not yet learned that
//! the step-down was committed still counts the old voter in its majority (raft-rs takes
//! a configuration into account when it is applied), and with the leader gone it could
//! never be elected without that vote. Kept as a learner, the old voter still votes.

use crate::NodeId;
use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState};
use std::collections::BTreeSet;

/// What the leader should do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing: the configuration is the target, or a change is under way.
    Wait,
    /// Propose this change.
    Change(ConfChangeV2),
    /// Hand leadership to this voter first (the leader itself is to be removed).
    TransferTo(NodeId),
}

/// A replica counts as caught up when it is at most this many entries behind.
pub const CAUGHT_UP_SLACK: u64 = 16;

fn single(node_id: NodeId, change_type: ConfChangeType) -> ConfChangeSingle {
    let mut s = ConfChangeSingle {
        node_id,
        ..Default::default()
    };
    s.set_change_type(change_type);
    s
}

fn change(changes: Vec<ConfChangeSingle>) -> Step {
    let mut cc = ConfChangeV2::default();
    // Joint consensus when more than one voter changes, left automatically.
    cc.set_transition(ConfChangeTransition::Auto);
    cc.set_changes(changes.into());
    Step::Change(cc)
}

/// The next step for the leader `me` of a group configured as `conf`, towards the
/// voters `target` and the learners `followers` (replicas that follow the group without
/// voting: every member beyond the metadata group's voters). `matched(n)` is how far
/// replica `n`'s log is known to match the leader's, whose last index is `last`.
/// `config_known`: every voter has told the leader that the latest configuration change
/// is committed (only then may a learner that was a voter leave).
pub fn next_step(
    me: NodeId,
    conf: &ConfState,
    target: &[NodeId],
    followers: &[NodeId],
    matched: impl Fn(NodeId) -> u64,
    last: u64,
    config_known: bool,
) -> Step {
    if !conf.voters_outgoing.is_empty() || target.is_empty() {
        // In a joint configuration: raft-rs leaves it by itself.
        return Step::Wait;
    }
    let voters: BTreeSet<NodeId> = conf.voters.iter().copied().collect();
    let learners: BTreeSet<NodeId> = conf.learners.iter().copied().collect();
    let target: BTreeSet<NodeId> = target.iter().copied().collect();
    let followers: BTreeSet<NodeId> = followers
        .iter()
        .copied()
        .filter(|n| !target.contains(n))
        .collect();
    // A voter no longer wanted as one steps down to a learner: it stays if it should
    // follow, and otherwise leaves later as an unwanted learner (see the module comment).
    let out = |n: NodeId| single(n, ConfChangeType::AddLearnerNode);
    // A replica that has received nothing (matched 0: not even the snapshot a new
    // replica starts from) is never caught up, however short the log.
    let caught_up = |n: NodeId| n == me || (matched(n) > 0 && matched(n) + CAUGHT_UP_SLACK >= last);

    if let Some(missing) = target
        .iter()
        .find(|n| !voters.contains(n) && !learners.contains(n))
    {
        return change(vec![single(*missing, ConfChangeType::AddLearnerNode)]);
    }
    let ready: Vec<NodeId> = learners
        .iter()
        .copied()
        .filter(|n| target.contains(n) && caught_up(*n))
        .collect();
    let unwanted: Vec<NodeId> = voters.iter().copied().filter(|n| !target.contains(n)).collect();
    if unwanted.contains(&me) {
        // Leave leadership to a caught-up voter that stays; it finishes the move. With
        // no such voter yet (a group of one voter moving elsewhere), promote a caught-up
        // learner that stays first, alone: the leader leaves only once it can hand over.
        return match voters
            .iter()
            .copied()
            .find(|n| *n != me && target.contains(n) && caught_up(*n))
        {
            Some(heir) => Step::TransferTo(heir),
            None => match ready.first() {
                Some(promoted) => change(vec![single(*promoted, ConfChangeType::AddNode)]),
                None => Step::Wait,
            },
        };
    }
    if let Some(promoted) = ready.first() {
        let mut changes = vec![single(*promoted, ConfChangeType::AddNode)];
        if let Some(removed) = unwanted.first() {
            changes.push(out(*removed));
        }
        return change(changes);
    }
    if voters.len() > target.len()
        && let Some(removed) = unwanted.first()
    {
        return change(vec![out(*removed)]);
    }
    if let Some(follower) = followers
        .iter()
        .find(|n| !voters.contains(n) && !learners.contains(n))
    {
        return change(vec![single(*follower, ConfChangeType::AddLearnerNode)]);
    }
    if config_known
        && let Some(extra) = learners
            .iter()
            .find(|n| !target.contains(n) && !followers.contains(n))
    {
        return change(vec![single(*extra, ConfChangeType::RemoveNode)]);
    }
    Step::Wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[NodeId], learners: &[NodeId]) -> ConfState {
        ConfState::from((voters.to_vec(), learners.to_vec()))
    }

    fn changes(step: Step) -> Vec<(NodeId, ConfChangeType)> {
        match step {
            Step::Change(cc) => cc
                .get_changes()
                .iter()
                .map(|c| (c.node_id, c.get_change_type()))
                .collect(),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn a_lone_voter_moving_elsewhere_promotes_its_successor_then_hands_over() {
        // Group of voter 1 only, placed on 2 alone; 2 is a caught-up learner.
        let step = next_step(1, &conf(&[1], &[2]), &[2], &[], |_| 100, 100, true);
        assert_eq!(changes(step), vec![(2, ConfChangeType::AddNode)]);
        // Once 2 votes, leadership goes to it, and 2 then removes 1.
        assert_eq!(
            next_step(1, &conf(&[1, 2], &[]), &[2], &[], |_| 100, 100, true),
            Step::TransferTo(2)
        );
        assert_eq!(
            changes(next_step(2, &conf(&[1, 2], &[]), &[2], &[], |_| 100, 100, true)),
            vec![(1, ConfChangeType::AddLearnerNode)]
        );
        assert_eq!(
            changes(next_step(2, &conf(&[2], &[1]), &[2], &[], |_| 100, 100, true)),
            vec![(1, ConfChangeType::RemoveNode)]
        );
        // A learner still catching up is not promoted.
        assert_eq!(
            next_step(
                1,
                &conf(&[1], &[2]),
                &[2],
                &[],
                |n| if n == 2 { 10 } else { 100 },
                100,
                true
            ),
            Step::Wait
        );
    }

    #[test]
    fn a_new_replica_first_joins_as_a_learner() {
        let step = next_step(1, &conf(&[1, 2, 3], &[]), &[1, 2, 4], &[], |_| 100, 100, true);
        assert_eq!(changes(step), vec![(4, ConfChangeType::AddLearnerNode)]);
    }

    #[test]
    fn a_learner_is_promoted_with_the_removal_only_once_caught_up() {
        let behind = next_step(
            1,
            &conf(&[1, 2, 3], &[4]),
            &[1, 2, 4],
            &[],
            |n| if n == 4 { 10 } else { 100 },
            100,
            true,
        );
        assert_eq!(behind, Step::Wait);
        let ready = next_step(1, &conf(&[1, 2, 3], &[4]), &[1, 2, 4], &[], |_| 100, 100, true);
        assert_eq!(
            changes(ready),
            vec![(4, ConfChangeType::AddNode), (3, ConfChangeType::AddLearnerNode)]
        );
    }

    #[test]
    fn a_learner_that_received_nothing_is_not_promoted_even_when_the_log_is_short() {
        let step = next_step(
            1,
            &conf(&[1, 2, 3], &[4]),
            &[1, 2, 4],
            &[],
            |n| if n == 4 { 0 } else { 9 },
            9,
            true,
        );
        assert_eq!(step, Step::Wait);
    }

    #[test]
    fn a_leader_to_be_removed_hands_over_first() {
        let step = next_step(3, &conf(&[1, 2, 3], &[4]), &[1, 2, 4], &[], |_| 100, 100, true);
        assert_eq!(step, Step::TransferTo(1));
        let nobody_ready = next_step(3, &conf(&[1, 2, 3], &[]), &[1, 2, 4], &[], |_| 0, 100, true);
        assert_eq!(changes(nobody_ready), vec![(4, ConfChangeType::AddLearnerNode)]);
    }

    #[test]
    fn nothing_happens_in_a_joint_configuration_or_at_the_target() {
        let mut joint = conf(&[1, 2, 4], &[]);
        joint.voters_outgoing = vec![1, 2, 3];
        assert_eq!(
            next_step(1, &joint, &[1, 2, 4], &[], |_| 100, 100, true),
            Step::Wait
        );
        assert_eq!(
            next_step(1, &conf(&[1, 2, 4], &[]), &[4, 2, 1], &[], |_| 100, 100, true),
            Step::Wait
        );
    }

    #[test]
    fn a_group_shrinks_and_drops_unwanted_learners() {
        // A voter too many steps down to a learner first...
        let shrink = next_step(1, &conf(&[1, 2, 3, 4], &[]), &[1, 2, 3], &[], |_| 100, 100, true);
        assert_eq!(changes(shrink), vec![(4, ConfChangeType::AddLearnerNode)]);
        // ...and an unwanted learner leaves once every voter knows the configuration.
        let drop = next_step(1, &conf(&[1, 2, 3], &[5]), &[1, 2, 3], &[], |_| 100, 100, true);
        assert_eq!(changes(drop), vec![(5, ConfChangeType::RemoveNode)]);
    }

    #[test]
    fn a_former_voter_stays_a_learner_until_every_voter_knows_it_stepped_down() {
        // 3 stepped down in a joint change; voter 2 may not have learned that the change
        // is committed, and with leader 1 gone it needs 3's vote: 3 stays.
        let early = next_step(1, &conf(&[1, 2, 4], &[3]), &[1, 2, 4], &[], |_| 100, 100, false);
        assert_eq!(early, Step::Wait);
        // Other steps are not held back meanwhile.
        let missing = next_step(1, &conf(&[1, 2, 4], &[3]), &[1, 2, 4], &[6], |_| 100, 100, false);
        assert_eq!(changes(missing), vec![(6, ConfChangeType::AddLearnerNode)]);
        let known = next_step(1, &conf(&[1, 2, 4], &[3]), &[1, 2, 4], &[], |_| 100, 100, true);
        assert_eq!(changes(known), vec![(3, ConfChangeType::RemoveNode)]);
    }

    /// The next step of leader 1 with every replica caught up.
    fn step_caught_up(
        voters: &[NodeId],
        learners: &[NodeId],
        target: &[NodeId],
        followers: &[NodeId],
    ) -> Step {
        next_step(1, &conf(voters, learners), target, followers, |_| 100, 100, true)
    }

    #[test]
    fn members_beyond_the_voters_follow_as_learners_and_a_dropped_voter_steps_down_to_one() {
        use ConfChangeType::{AddLearnerNode, AddNode};
        // 4 should follow: it joins as a learner once the voters are in place.
        assert_eq!(
            changes(step_caught_up(&[1, 2, 3], &[], &[1, 2, 3], &[4])),
            vec![(4, AddLearnerNode)]
        );
        // A follower is kept, not removed as an unwanted learner, nor promoted.
        assert_eq!(step_caught_up(&[1, 2, 3], &[4], &[1, 2, 3], &[4]), Step::Wait);
        // 3 is no longer a voter but still a member: it steps down to a learner while 5
        // is promoted, in one change.
        assert_eq!(
            changes(step_caught_up(&[1, 2, 3], &[5], &[1, 2, 5], &[3])),
            vec![(5, AddNode), (3, AddLearnerNode)]
        );
        // A voter the group has too many of steps down too, if it follows.
        assert_eq!(
            changes(step_caught_up(&[1, 2, 3, 4], &[], &[1, 2, 3], &[4])),
            vec![(4, AddLearnerNode)]
        );
        // A target voter listed as a follower too is a voter.
        assert_eq!(
            changes(step_caught_up(&[1, 2], &[], &[1, 2, 3], &[3])),
            vec![(3, AddLearnerNode)]
        );
        assert_eq!(
            changes(step_caught_up(&[1, 2], &[3], &[1, 2, 3], &[3])),
            vec![(3, AddNode)]
        );
    }
}
