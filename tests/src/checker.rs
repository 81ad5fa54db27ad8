//! The history checker of the failover and fault-injection tests: a pure function that
//! compares what the senders had acknowledged with what every inbox holds, and counts
//! each kind of anomaly (lost, duplicated, reordered, gaps, acknowledgement mismatches).

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Where a message was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A private message to this user.
    Private(String),
    /// A post to this group.
    Group(String),
}

/// What a `SendAck` said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The message id, the same in every inbox the message is in.
    pub message_id: String,
    /// Private: the seq in the recipient's inbox. Group: the group's seq.
    pub seq: u64,
}

/// One message a sender tried to send, acknowledged or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The sender.
    pub from: String,
    /// The recipient or group.
    pub target: Target,
    /// The text, unique in the whole history: it identifies the message in inboxes.
    pub text: String,
    /// The acknowledgement, or None if the sender gave up on it (it may or may not be
    /// stored: an indeterminate operation, neither required nor forbidden).
    pub ack: Option<Ack>,
}

/// One inbox entry as a sync returned it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Its seq in this inbox.
    pub seq: u64,
    /// The message id.
    pub message_id: String,
    /// The sender (for a receipt: who acknowledged).
    pub from: String,
    /// Private: the recipient. Group: the group.
    pub conversation: String,
    /// Group: the group's seq of the post; 0 for private messages.
    pub group_seq: u64,
    /// The text.
    pub text: String,
    /// A receipt, an event (a group's or a contact's) or a change of a message (an
    /// edit, a recall, a reaction) rather than a message: it takes a seq but is no
    /// message.
    pub no_message: bool,
}

impl From<&chat_client::proto::Delivery> for Entry {
    fn from(d: &chat_client::proto::Delivery) -> Self {
        Self {
            seq: d.seq,
            message_id: d.message_id.clone(),
            from: d.from.clone(),
            conversation: d.conversation.clone(),
            group_seq: d.group_seq,
            text: d.text.clone(),
            no_message: d.receipt.is_some()
                || d.group_event.is_some()
                || d.contact.is_some()
                || d.change.is_some(),
        }
    }
}

/// Every inbox, by user, in seq order.
pub type Inboxes = BTreeMap<String, Vec<Entry>>;

/// What was sent, and what the checker needs to know to say where it belongs.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every message tried, each sender's in the order it sent them (a sender waits for
    /// each acknowledgement before the next, so this is also its acknowledgement order).
    pub sent: Vec<Sent>,
    /// The members of every group (fixed for the whole run).
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// The node stores a private message in its sender's inbox too
    /// (`client.copy_own_messages`).
    pub own_copies: bool,
}

/// What the checker counted. Everything but the first four is an anomaly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages acknowledged.
    pub acknowledged: usize,
    /// Messages whose sender gave up before an acknowledgement came.
    pub unacknowledged: usize,
    /// Of those, how many are stored somewhere anyway (allowed).
    pub unacknowledged_stored: usize,
    /// Inbox entries read.
    pub entries: usize,
    /// Copies of acknowledged messages missing from an inbox they belong in (one per
    /// message and inbox).
    pub lost: usize,
    /// Acknowledged messages missing from at least one inbox they belong in.
    pub lost_messages: usize,
    /// Extra copies of a message in one inbox.
    pub duplicated: usize,
    /// Private messages out of their sender's order in an inbox (per sender and
    /// recipient, in the recipient's inbox and in the sender's own copies).
    pub reordered_private: usize,
    /// Group posts out of the group's order in a member's inbox (inbox order against
    /// `group_seq`; two posts with one `group_seq` count too).
    pub reordered_group_order: usize,
    /// A sender's group posts whose group order differs from the order of their
    /// acknowledgements (in a member's inbox, sorted by `group_seq`).
    pub reordered_group_sender: usize,
    /// Inbox seqs that do not follow the one before (the first must be 1).
    pub seq_gaps: usize,
    /// Copies of acknowledged messages found where they belong but with another message
    /// id, or another seq or group seq, than their `SendAck` gave.
    pub ack_mismatches: usize,
    /// Acknowledgements that collide: one message id, one private (recipient, seq) or one
    /// (group, group seq) given to two different messages.
    pub ack_conflicts: usize,
    /// Entries that are no message sent to this inbox (unknown text, or in an inbox it
    /// does not belong to, or with another sender or conversation than sent).
    pub unexpected: usize,
}

impl Counts {
    /// The sum of every anomaly count; zero for a correct history.
    pub fn anomalies(&self) -> usize {
        self.lost
            + self.duplicated
            + self.reordered_private
            + self.reordered_group_order
            + self.reordered_group_sender
            + self.seq_gaps
            + self.ack_mismatches
            + self.ack_conflicts
            + self.unexpected
    }

    /// Keeps, for each count, the larger of `self`'s and `other`'s (the worst of several
    /// views of the same history).
    pub fn worst(&mut self, other: &Counts) {
        let pairs = [
            (&mut self.acknowledged, other.acknowledged),
            (&mut self.unacknowledged, other.unacknowledged),
            (&mut self.unacknowledged_stored, other.unacknowledged_stored),
            (&mut self.entries, other.entries),
            (&mut self.lost, other.lost),
            (&mut self.lost_messages, other.lost_messages),
            (&mut self.duplicated, other.duplicated),
            (&mut self.reordered_private, other.reordered_private),
            (&mut self.reordered_group_order, other.reordered_group_order),
            (&mut self.reordered_group_sender, other.reordered_group_sender),
            (&mut self.seq_gaps, other.seq_gaps),
            (&mut self.ack_mismatches, other.ack_mismatches),
            (&mut self.ack_conflicts, other.ack_conflicts),
            (&mut self.unexpected, other.unexpected),
        ];
        for (mine, theirs) in pairs {
            *mine = (*mine).max(theirs);
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {} (unacked {}, of which stored {}), entries {}: lost {} (of {} messages), duplicated {}, \
             reordered private {}, reordered group order {}, reordered group by sender {}, \
             seq gaps {}, ack mismatches {}, ack conflicts {}, unexpected {}",
            self.acknowledged,
            self.unacknowledged,
            self.unacknowledged_stored,
            self.entries,
            self.lost,
            self.lost_messages,
            self.duplicated,
            self.reordered_private,
            self.reordered_group_order,
            self.reordered_group_sender,
            self.seq_gaps,
            self.ack_mismatches,
            self.ack_conflicts,
            self.unexpected,
        )
    }
}

/// The counts, and a few anomalies spelled out for whoever reads a failure.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The counts.
    pub counts: Counts,
    /// The first anomalies of each kind, one line each.
    pub examples: Vec<String>,
    /// Examples given so far per kind.
    noted: BTreeMap<&'static str, usize>,
}

/// How many anomalies of each kind a report spells out.
const EXAMPLES: usize = 3;

impl Report {
    fn note(&mut self, kind: &'static str, what: impl FnOnce() -> String) {
        let noted = self.noted.entry(kind).or_default();
        if *noted < EXAMPLES {
            *noted += 1;
            self.examples.push(format!("{kind}: {}", what()));
        }
    }
}

/// Where a sent message must be: (inbox owner, whether it is the sender's own copy).
fn destinations<'a>(history: &'a History, sent: &'a Sent) -> Vec<(&'a str, bool)> {
    match &sent.target {
        Target::Private(to) => {
            let mut at = vec![(to.as_str(), false)];
            if history.own_copies && *to != sent.from {
                at.push((sent.from.as_str(), true));
            }
            at
        }
        // Your own group posts are not copied to your inbox.
        Target::Group(group) => history
            .groups
            .get(group)
            .into_iter()
            .flatten()
            .filter(|m| **m != sent.from)
            .map(|m| (m.as_str(), false))
            .collect(),
    }
}

/// Compares every inbox in `inboxes` with the history. A user missing from `inboxes` (one
/// whose inbox could not be read) is not checked: say so separately.
pub fn check(history: &History, inboxes: &Inboxes) -> Report {
    let mut report = Report::default();
    // Each message by its text, with its position in its sender's order.
    let mut by_text: HashMap<&str, (usize, &Sent)> = HashMap::new();
    let mut per_sender: HashMap<&str, usize> = HashMap::new();
    for sent in &history.sent {
        let order = per_sender.entry(sent.from.as_str()).or_default();
        let previous = by_text.insert(sent.text.as_str(), (*order, sent));
        assert!(previous.is_none(), "texts must be unique: {:?}", sent.text);
        *order += 1;
        if sent.ack.is_some() {
            report.counts.acknowledged += 1;
        } else {
            report.counts.unacknowledged += 1;
        }
    }
    count_ack_conflicts(history, &mut report);

    // Every inbox an acknowledged message must be in.
    let mut wanted: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for sent in history.sent.iter().filter(|s| s.ack.is_some()) {
        for (user, _) in destinations(history, sent) {
            wanted.entry(user).or_default().push(sent);
        }
    }
    let mut stored_unacked: BTreeSet<&str> = BTreeSet::new();
    let mut lost_messages: BTreeSet<&str> = BTreeSet::new();
    for (user, inbox) in inboxes {
        let user = user.as_str();
        report.counts.entries += inbox.len();
        let mut expected_seq = 1;
        for e in inbox {
            if e.seq != expected_seq {
                report.counts.seq_gaps += 1;
                report.note("seq gap", || {
                    format!("{user}: seq {} where {expected_seq} was due", e.seq)
                });
            }
            expected_seq = e.seq + 1;
        }
        // The first copy of each message, in inbox order.
        let mut first: Vec<(&Entry, usize, &Sent)> = Vec::new();
        let mut seen: HashMap<&str, &Entry> = HashMap::new();
        for e in inbox.iter().filter(|e| !e.no_message) {
            let Some(&(order, sent)) = by_text.get(e.text.as_str()) else {
                report.counts.unexpected += 1;
                report.note("unexpected", || format!("{user}: unknown entry {e:?}"));
                continue;
            };
            let conversation = match &sent.target {
                Target::Private(to) | Target::Group(to) => to,
            };
            let belongs = destinations(history, sent).iter().any(|(u, _)| *u == user);
            if !belongs || e.from != sent.from || e.conversation != *conversation {
                report.counts.unexpected += 1;
                report.note("unexpected", || {
                    format!("{user}: entry that does not belong here {e:?}")
                });
                continue;
            }
            if seen.contains_key(e.text.as_str()) {
                report.counts.duplicated += 1;
                report.note("duplicated", || {
                    format!("{user}: duplicate {:?} at seq {}", e.text, e.seq)
                });
                continue;
            }
            seen.insert(e.text.as_str(), e);
            if sent.ack.is_none() {
                stored_unacked.insert(sent.text.as_str());
            }
            first.push((e, order, sent));
        }
        for sent in wanted.get(user).unwrap_or(&Vec::new()) {
            let Some(e) = seen.get(sent.text.as_str()) else {
                report.counts.lost += 1;
                lost_messages.insert(sent.text.as_str());
                report.note("lost", || {
                    format!("{user}: lost {:?} (acknowledged as {:?})", sent.text, sent.ack)
                });
                continue;
            };
            let ack = sent.ack.as_ref().expect("wanted messages are acknowledged");
            let matches = match &sent.target {
                Target::Private(to) if to == user => e.message_id == ack.message_id && e.seq == ack.seq,
                Target::Private(_) => e.message_id == ack.message_id,
                Target::Group(_) => e.message_id == ack.message_id && e.group_seq == ack.seq,
            };
            if !matches {
                report.counts.ack_mismatches += 1;
                report.note("ack mismatch", || {
                    format!(
                        "{user}: {:?} stored as {} seq {} group seq {}, acknowledged as {ack:?}",
                        sent.text, e.message_id, e.seq, e.group_seq
                    )
                });
            }
        }
        count_reorders(user, &first, &mut report);
    }
    report.counts.unacknowledged_stored = stored_unacked.len();
    report.counts.lost_messages = lost_messages.len();
    report
}

/// Counts inversions in each conversation of one inbox; `first` is the first copy of
/// each message in inbox order, with its position in its sender's order.
fn count_reorders(user: &str, first: &[(&Entry, usize, &Sent)], report: &mut Report) {
    // Private: per (sender, recipient), acknowledged messages in inbox order.
    let mut last_private: HashMap<(&str, &str), usize> = HashMap::new();
    // Group order: per group, the highest group seq so far in inbox order.
    let mut last_group_seq: HashMap<&str, u64> = HashMap::new();
    // By sender: per (group, sender), the posts by group seq.
    let mut posts: BTreeMap<(&str, &str), Vec<(u64, usize)>> = BTreeMap::new();
    for (e, order, sent) in first {
        match &sent.target {
            Target::Private(to) => {
                if sent.ack.is_none() {
                    continue;
                }
                let last = last_private.entry((sent.from.as_str(), to.as_str())).or_insert(0);
                if *order < *last {
                    report.counts.reordered_private += 1;
                    report.note("reordered private", || {
                        format!("{user}: private {:?} after a later message of its sender", e.text)
                    });
                }
                *last = (*last).max(*order);
            }
            Target::Group(group) => {
                if let Some(last) = last_group_seq.get(group.as_str())
                    && e.group_seq <= *last
                {
                    report.counts.reordered_group_order += 1;
                    report.note("reordered group order", || {
                        format!(
                            "{user}: {group} post {:?} with group seq {} after {last}",
                            e.text, e.group_seq
                        )
                    });
                }
                let last = last_group_seq.entry(group.as_str()).or_insert(0);
                *last = (*last).max(e.group_seq);
                if sent.ack.is_some() {
                    posts
                        .entry((group.as_str(), sent.from.as_str()))
                        .or_default()
                        .push((e.group_seq, *order));
                }
            }
        }
    }
    for ((group, sender), mut list) in posts {
        list.sort_unstable();
        let mut last = 0;
        for (group_seq, order) in list {
            if order < last {
                report.counts.reordered_group_sender += 1;
                report.note("reordered group by sender", || {
                    format!("{user}: {group} post #{order} of {sender} has group seq {group_seq}, before a later post")
                });
            }
            last = last.max(order);
        }
    }
}

/// Counts acknowledgements that give one identity to two messages.
fn count_ack_conflicts(history: &History, report: &mut Report) {
    let mut ids: HashMap<&str, &str> = HashMap::new();
    // (is a group, recipient or group, seq): users and groups may share a name.
    let mut slots: HashMap<(bool, &str, u64), &str> = HashMap::new();
    for sent in &history.sent {
        let Some(ack) = &sent.ack else { continue };
        let slot = match &sent.target {
            Target::Private(to) => (false, to.as_str(), ack.seq),
            Target::Group(group) => (true, group.as_str(), ack.seq),
        };
        let earlier = ids.insert(&ack.message_id, &sent.text);
        let earlier = slots.insert(slot, &sent.text).or(earlier);
        if let Some(earlier) = earlier {
            report.counts.ack_conflicts += 1;
            report.note("ack conflict", || {
                format!("{:?} acknowledged as {ack:?}, as {earlier:?} had been", sent.text)
            });
        }
    }
}

/// How many users' inboxes differ between `views` (each the inboxes as read through one
/// node); only views that hold a user's inbox are compared.
pub fn diverging(views: &[Inboxes]) -> usize {
    let users: BTreeSet<&String> = views.iter().flat_map(BTreeMap::keys).collect();
    users
        .into_iter()
        .filter(|u| {
            let mut inboxes = views.iter().filter_map(|v| v.get(*u));
            let first = inboxes.next();
            inboxes.any(|other| Some(other) != first)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice";
    const BOB: &str = "bob";
    const CAROL: &str = "carol";
    const ROOM: &str = "room";

    /// A small world: three users, all in one group, own copies on.
    struct World {
        history: History,
        inboxes: Inboxes,
    }

    impl World {
        fn new() -> Self {
            let members = [ALICE, BOB, CAROL].map(String::from).into_iter().collect();
            Self {
                history: History {
                    sent: Vec::new(),
                    groups: BTreeMap::from([(ROOM.to_owned(), members)]),
                    own_copies: true,
                },
                inboxes: [ALICE, BOB, CAROL]
                    .map(|u| (u.to_owned(), Vec::new()))
                    .into_iter()
                    .collect(),
            }
        }

        fn sent(&mut self, from: &str, target: Target, text: &str, ack: Option<(&str, u64)>) {
            self.history.sent.push(Sent {
                from: from.into(),
                target,
                text: text.into(),
                ack: ack.map(|(id, seq)| Ack {
                    message_id: id.into(),
                    seq,
                }),
            });
        }

        /// Appends to `user`'s inbox with the next seq.
        fn store(
            &mut self,
            user: &str,
            from: &str,
            conversation: &str,
            id: &str,
            group_seq: u64,
            text: &str,
        ) {
            let inbox = self.inboxes.get_mut(user).unwrap();
            let seq = inbox.last().map_or(1, |e| e.seq + 1);
            inbox.push(Entry {
                seq,
                message_id: id.into(),
                from: from.into(),
                conversation: conversation.into(),
                group_seq,
                text: text.into(),
                no_message: false,
            });
        }

        /// Alice sends bob two private messages and posts once to the room; everything
        /// is stored where it belongs, as acknowledged.
        fn clean() -> Self {
            let mut w = Self::new();
            w.sent(ALICE, Target::Private(BOB.into()), "a1", Some(("p:bob:1", 1)));
            w.sent(ALICE, Target::Private(BOB.into()), "a2", Some(("p:bob:2", 2)));
            w.sent(ALICE, Target::Group(ROOM.into()), "a3", Some(("g:room:1", 1)));
            w.sent(BOB, Target::Group(ROOM.into()), "b1", Some(("g:room:2", 2)));
            for (id, text) in [("p:bob:1", "a1"), ("p:bob:2", "a2")] {
                w.store(BOB, ALICE, BOB, id, 0, text);
                w.store(ALICE, ALICE, BOB, id, 0, text);
            }
            w.store(BOB, ALICE, ROOM, "g:room:1", 1, "a3");
            w.store(CAROL, ALICE, ROOM, "g:room:1", 1, "a3");
            w.store(ALICE, BOB, ROOM, "g:room:2", 2, "b1");
            w.store(CAROL, BOB, ROOM, "g:room:2", 2, "b1");
            w
        }

        fn counts(&self) -> Counts {
            check(&self.history, &self.inboxes).counts
        }
    }

    fn clean_counts() -> Counts {
        Counts {
            acknowledged: 4,
            entries: 8,
            ..Counts::default()
        }
    }

    #[test]
    fn a_history_stored_as_acknowledged_has_no_anomaly() {
        let w = World::clean();
        assert_eq!(w.counts(), clean_counts());
        assert_eq!(w.counts().anomalies(), 0);
    }

    #[test]
    fn a_missing_acknowledged_message_counts_as_lost_once_per_inbox() {
        let mut w = World::clean();
        // a2 vanished from bob's inbox (seqs renumbered so that only the loss shows).
        w.inboxes.get_mut(BOB).unwrap().remove(1);
        for (i, e) in w.inboxes.get_mut(BOB).unwrap().iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        // The room post is missing from carol's inbox, whose seqs start over.
        w.inboxes.get_mut(CAROL).unwrap().remove(0);
        w.inboxes.get_mut(CAROL).unwrap()[0].seq = 1;
        let c = w.counts();
        assert_eq!((c.lost, c.lost_messages), (2, 2), "{c:?}");
        assert_eq!(c.anomalies(), 2, "{c:?}");
    }

    #[test]
    fn an_unacknowledged_message_may_be_missing_or_stored() {
        let mut w = World::clean();
        w.sent(ALICE, Target::Private(BOB.into()), "a4", None);
        w.sent(ALICE, Target::Private(CAROL.into()), "a5", None);
        w.store(CAROL, ALICE, CAROL, "p:carol:9", 0, "a5");
        let c = w.counts();
        assert_eq!((c.unacknowledged, c.unacknowledged_stored), (2, 1));
        assert_eq!(c.anomalies(), 0, "{c:?}");
    }

    #[test]
    fn a_second_copy_in_one_inbox_counts_as_duplicated() {
        let mut w = World::clean();
        w.store(BOB, ALICE, BOB, "p:bob:5", 0, "a1");
        let c = w.counts();
        assert_eq!(c.duplicated, 1, "{c:?}");
        assert_eq!(c.anomalies(), 1, "{c:?}");
    }

    #[test]
    fn private_messages_out_of_their_senders_order_count_as_reordered() {
        let mut w = World::clean();
        // Bob's inbox holds a2 before a1 (with the seqs they got).
        let inbox = w.inboxes.get_mut(BOB).unwrap();
        inbox.swap(0, 1);
        inbox[0].seq = 1;
        inbox[1].seq = 2;
        w.history.sent[0].ack = Some(Ack {
            message_id: "p:bob:1".into(),
            seq: 2,
        });
        w.history.sent[1].ack = Some(Ack {
            message_id: "p:bob:2".into(),
            seq: 1,
        });
        let c = w.counts();
        assert_eq!(c.reordered_private, 1, "{c:?}");
        assert_eq!(c.anomalies(), 1, "{c:?}");
    }

    #[test]
    fn group_posts_out_of_group_order_in_an_inbox_count_as_reordered() {
        let mut w = World::clean();
        // Carol got b1 (group seq 2) before a3 (group seq 1).
        let inbox = w.inboxes.get_mut(CAROL).unwrap();
        inbox.swap(0, 1);
        inbox[0].seq = 1;
        inbox[1].seq = 2;
        let c = w.counts();
        assert_eq!(c.reordered_group_order, 1, "{c:?}");
        assert_eq!(c.anomalies(), 1, "{c:?}");
    }

    #[test]
    fn a_senders_posts_whose_group_order_contradicts_its_acks_count_as_reordered_by_sender() {
        let mut w = World::new();
        // Alice's second post got the lower group seq: in group order it comes first.
        w.sent(ALICE, Target::Group(ROOM.into()), "a1", Some(("g:room:2", 2)));
        w.sent(ALICE, Target::Group(ROOM.into()), "a2", Some(("g:room:1", 1)));
        for user in [BOB, CAROL] {
            w.store(user, ALICE, ROOM, "g:room:1", 1, "a2");
            w.store(user, ALICE, ROOM, "g:room:2", 2, "a1");
        }
        let c = w.counts();
        assert_eq!(c.reordered_group_sender, 2, "{c:?}");
        assert_eq!(c.anomalies(), 2, "{c:?}");
    }

    #[test]
    fn a_skipped_or_repeated_seq_counts_as_a_gap() {
        let mut w = World::clean();
        // Bob's room post, his third entry, has seq 5.
        w.inboxes.get_mut(BOB).unwrap()[2].seq = 5;
        w.inboxes.get_mut(ALICE).unwrap()[0].seq = 0;
        let c = w.counts();
        // Bob: 1, 2, 5 (gap); alice: 0 (gap), 2 (gap: 1 was due after 0), 3.
        assert_eq!(c.seq_gaps, 3, "{c:?}");
        assert_eq!(c.anomalies(), 3, "{c:?}");
    }

    #[test]
    fn a_message_stored_with_another_id_or_seq_than_acknowledged_counts_as_a_mismatch() {
        let mut w = World::clean();
        w.history.sent[0].ack = Some(Ack {
            message_id: "p:bob:1".into(),
            seq: 7,
        });
        w.inboxes.get_mut(CAROL).unwrap()[0].message_id = "g:room:9".into();
        let c = w.counts();
        assert_eq!(c.ack_mismatches, 2, "{c:?}");
        assert_eq!(c.anomalies(), 2, "{c:?}");
    }

    #[test]
    fn one_acknowledgement_given_to_two_messages_counts_as_a_conflict() {
        let mut w = World::clean();
        // Carol's message to bob got a2's seq (and an id of its own).
        w.sent(CAROL, Target::Private(BOB.into()), "c1", Some(("p:bob:2b", 2)));
        let c = w.counts();
        assert_eq!(c.ack_conflicts, 1, "{c:?}");
        // It is stored nowhere either.
        assert_eq!(c.lost, 2, "{c:?}");
    }

    #[test]
    fn entries_nobody_sent_to_that_inbox_count_as_unexpected() {
        let mut w = World::clean();
        w.store(CAROL, ALICE, BOB, "p:bob:1", 0, "a1");
        w.store(CAROL, "mallory", CAROL, "p:carol:2", 0, "hello");
        let c = w.counts();
        assert_eq!(c.unexpected, 2, "{c:?}");
        assert_eq!(c.anomalies(), 2, "{c:?}");
    }

    #[test]
    fn receipts_take_seqs_but_are_no_messages() {
        let mut w = World::clean();
        let inbox = w.inboxes.get_mut(ALICE).unwrap();
        let seq = inbox.last().unwrap().seq + 1;
        inbox.push(Entry {
            seq,
            from: BOB.into(),
            no_message: true,
            ..Entry::default()
        });
        assert_eq!(w.counts().anomalies(), 0);
    }

    #[test]
    fn views_that_disagree_on_an_inbox_count_each_user_once() {
        let w = World::clean();
        let mut other = w.inboxes.clone();
        assert_eq!(diverging(&[w.inboxes.clone(), other.clone()]), 0);
        other.get_mut(BOB).unwrap().pop();
        other.get_mut(CAROL).unwrap().pop();
        // A view without alice's inbox (unreadable there) does not disagree on it.
        other.remove(ALICE);
        assert_eq!(
            diverging(&[w.inboxes.clone(), other.clone(), w.inboxes.clone()]),
            2
        );
    }

    #[test]
    fn users_whose_inbox_could_not_be_read_are_not_checked() {
        let mut w = World::clean();
        w.inboxes.remove(BOB);
        assert_eq!(w.counts().anomalies(), 0);
    }

    #[test]
    fn the_worst_of_two_counts_keeps_each_maximum() {
        let mut a = Counts {
            lost: 3,
            ..Counts::default()
        };
        a.worst(&Counts {
            lost: 1,
            duplicated: 2,
            ..Counts::default()
        });
        assert_eq!((a.lost, a.duplicated), (3, 2));
    }
}
