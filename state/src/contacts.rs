//! Contacts: who asked whom, and who agreed.
//!
//! The relation of two users is decided in one place only, the record of the pair in
//! the partition of its smaller name, so two users acting at once (one withdraws a
//! request while the other accepts it) are put in an order by that partition's log
//! and can never end up seeing different relations. Each user's partition keeps that
//! user's view (to list contacts, and to check "contacts only" on a private message in
//! the same command that stores it); a change of the pair leaves one update per user
//! in the pair's partition, delivered to the users' partitions and removed once
//! delivered, so a proposer that dies half-way leaves work the partition's leader
//! finishes. Views apply only updates newer than theirs (the pair's version), so late
//! or repeated deliveries change nothing.

use crate::placement::{self, Partition};
use chat_protocol::internal::command::ContactUpdate;
use chat_protocol::internal::{InboxEntry, PairRecord};
use chat_protocol::v1::{ContactEvent, ContactState, ConversationKind};

/// What a user does to a relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the other to become contacts (or accept, if the other asked first).
    Request = 1,
    /// Accept the other's request.
    Accept = 2,
    /// Decline the other's request.
    Decline = 3,
    /// End the relation: remove a contact, withdraw one's request, or decline theirs.
    Remove = 4,
}

impl Action {
    /// The action of a command's number.
    pub fn from_number(n: u32) -> Option<Self> {
        [Self::Request, Self::Accept, Self::Decline, Self::Remove]
            .into_iter()
            .find(|a| *a as u32 == n)
    }
}

/// The relation of a pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// None (never, or no more).
    None,
    /// One asked, the other has not answered.
    Requested {
        /// Who asked.
        by: String,
    },
    /// Both agreed.
    Contacts,
}

/// What an action does to a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to act on (accepting or declining a request that is not there).
    NotFound,
    /// Already so: nothing changes (a repeated request, a resend).
    Same(Relation),
    /// The relation becomes this.
    Changed(Relation),
}

/// Decides what `actor` doing `action` does to the pair's `current` relation.
pub fn decide(current: &Relation, actor: &str, action: Action) -> Decision {
    use Decision::{Changed, NotFound, Same};
    let asked_by_other = matches!(current, Relation::Requested { by } if by != actor);
    match (action, current) {
        (Action::Request, Relation::None) => Changed(Relation::Requested { by: actor.to_owned() }),
        (Action::Request | Action::Accept, Relation::Requested { .. }) if asked_by_other => {
            Changed(Relation::Contacts)
        }
        (Action::Request, _) => Same(current.clone()),
        (Action::Accept, Relation::Contacts) => Same(Relation::Contacts),
        (Action::Accept, _) => NotFound,
        (Action::Decline, Relation::Requested { .. }) if asked_by_other => Changed(Relation::None),
        (Action::Decline, Relation::None) => Same(Relation::None),
        (Action::Decline, _) => NotFound,
        (Action::Remove, Relation::None) => Same(Relation::None),
        (Action::Remove, _) => Changed(Relation::None),
    }
}

/// How `user` sees `relation`.
pub fn view(relation: &Relation, user: &str) -> ContactState {
    match relation {
        Relation::None => ContactState::None,
        Relation::Requested { by } if by == user => ContactState::Outgoing,
        Relation::Requested { .. } => ContactState::Incoming,
        Relation::Contacts => ContactState::Contact,
    }
}

/// The relation a stored pair record holds.
pub fn relation(record: &PairRecord) -> Relation {
    match record.state {
        1 => Relation::Requested {
            by: record.requested_by.clone(),
        },
        3 => Relation::Contacts,
        _ => Relation::None,
    }
}

/// The pair record of `relation` at `version`, changed at `now_ms`.
pub fn record(relation: &Relation, version: u64, now_ms: u64) -> PairRecord {
    let (state, requested_by) = match relation {
        Relation::None => (0, String::new()),
        Relation::Requested { by } => (1, by.clone()),
        Relation::Contacts => (3, String::new()),
    };
    PairRecord {
        state,
        requested_by,
        version,
        since_ms: now_ms,
    }
}

/// The inbox entry that tells `update.user` of the change (its id is assigned where
/// it is stored).
pub fn event_entry(update: &ContactUpdate) -> InboxEntry {
    InboxEntry {
        from: update.other.clone(),
        kind: ConversationKind::Private as u32,
        conversation: update.other.clone(),
        timestamp_ms: update.now_ms,
        contact: Some(ContactEvent {
            user: update.other.clone(),
            state: update.state as i32,
            by: update.by.clone(),
        }),
        ..InboxEntry::default()
    }
}

/// The pair's names in order: its record lives under the first.
pub fn ordered<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

/// The partition that decides the relation of `a` and `b`.
pub fn pair_partition(a: &str, b: &str) -> Partition {
    placement::of_user(ordered(a, b).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested(by: &str) -> Relation {
        Relation::Requested { by: by.into() }
    }

    #[test]
    fn a_request_answered_makes_contacts_and_both_see_it() {
        let asked = match decide(&Relation::None, "ann", Action::Request) {
            Decision::Changed(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(view(&asked, "ann"), ContactState::Outgoing);
        assert_eq!(view(&asked, "bob"), ContactState::Incoming);
        // Only the one asked can accept or decline.
        assert_eq!(decide(&asked, "ann", Action::Accept), Decision::NotFound);
        assert_eq!(decide(&asked, "ann", Action::Decline), Decision::NotFound);
        assert_eq!(
            decide(&asked, "bob", Action::Accept),
            Decision::Changed(Relation::Contacts)
        );
        assert_eq!(
            decide(&asked, "bob", Action::Decline),
            Decision::Changed(Relation::None)
        );
        assert_eq!(view(&Relation::Contacts, "bob"), ContactState::Contact);
    }

    #[test]
    fn asking_someone_who_asked_you_makes_contacts_at_once() {
        assert_eq!(
            decide(&requested("bob"), "ann", Action::Request),
            Decision::Changed(Relation::Contacts)
        );
    }

    #[test]
    fn repeats_change_nothing() {
        assert_eq!(
            decide(&requested("ann"), "ann", Action::Request),
            Decision::Same(requested("ann"))
        );
        assert_eq!(
            decide(&Relation::Contacts, "ann", Action::Request),
            Decision::Same(Relation::Contacts)
        );
        assert_eq!(
            decide(&Relation::Contacts, "bob", Action::Accept),
            Decision::Same(Relation::Contacts)
        );
        assert_eq!(
            decide(&Relation::None, "ann", Action::Remove),
            Decision::Same(Relation::None)
        );
    }

    #[test]
    fn either_ends_a_relation_or_withdraws_a_request() {
        for who in ["ann", "bob"] {
            assert_eq!(
                decide(&Relation::Contacts, who, Action::Remove),
                Decision::Changed(Relation::None)
            );
            assert_eq!(
                decide(&requested("ann"), who, Action::Remove),
                Decision::Changed(Relation::None)
            );
        }
        assert_eq!(
            decide(&Relation::Contacts, "ann", Action::Decline),
            Decision::NotFound
        );
    }

    #[test]
    fn records_round_trip_and_pairs_have_one_home() {
        for r in [Relation::None, requested("ann"), Relation::Contacts] {
            assert_eq!(relation(&record(&r, 3, 9)), r);
        }
        assert_eq!(ordered("bob", "ann"), ("ann", "bob"));
        assert_eq!(pair_partition("bob", "ann"), pair_partition("ann", "bob"));
        assert_eq!(pair_partition("bob", "ann"), placement::of_user("ann"));
        assert_eq!(Action::from_number(4), Some(Action::Remove));
        assert_eq!(Action::from_number(0), None);
    }

    /// Every sequence of up to six actions by either user (8^6 of them): the two views
    /// are always one relation seen from both sides (never "contacts" on one side
    /// only), a `Same` decision names the current relation, and contacts only come
    /// from both having asked or accepted since the relation was last ended.
    #[test]
    fn both_views_always_agree_whatever_the_two_do() {
        let moves: Vec<(bool, Action)> = [true, false]
            .into_iter()
            .flat_map(|ann| {
                [Action::Request, Action::Accept, Action::Decline, Action::Remove].map(|a| (ann, a))
            })
            .collect();
        let mut checked = 0;
        for n in 0..=6u32 {
            for mut code in 0..moves.len().pow(n) {
                let mut current = Relation::None;
                let mut asked = (false, false);
                for _ in 0..n {
                    let (by_ann, action) = moves[code % moves.len()];
                    code /= moves.len();
                    let actor = if by_ann { "ann" } else { "bob" };
                    let decision = decide(&current, actor, action);
                    if decision != Decision::NotFound && matches!(action, Action::Request | Action::Accept) {
                        if by_ann {
                            asked.0 = true;
                        } else {
                            asked.1 = true;
                        }
                    }
                    match decision {
                        Decision::NotFound => {}
                        Decision::Same(r) => assert_eq!(r, current),
                        Decision::Changed(r) => {
                            assert_ne!(r, current);
                            current = r;
                        }
                    }
                    if current == Relation::None {
                        asked = (false, false);
                    }
                    let seen = (view(&current, "ann"), view(&current, "bob"));
                    assert!(
                        matches!(
                            seen,
                            (ContactState::None, ContactState::None)
                                | (ContactState::Contact, ContactState::Contact)
                                | (ContactState::Outgoing, ContactState::Incoming)
                                | (ContactState::Incoming, ContactState::Outgoing)
                        ),
                        "{seen:?}"
                    );
                    if current == Relation::Contacts {
                        assert!(asked.0 && asked.1, "contacts without both agreeing");
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, (0..=6).map(|n| 8usize.pow(n)).sum::<usize>());
    }
}
