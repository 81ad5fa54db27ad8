//! Clients served by the Raft core (`cluster.consensus = true`): three nodes, users on
//! different nodes. Every write is a command proposed to its partition's leader and
//! every read is answered there after a read barrier, so whichever node a client uses
//! it sees the same accounts, inboxes and groups: registration on one node and login on
//! another, private messages pushed live across nodes and found by sync, resends
//! stored once with the first answer, receipts, groups with their fan-out in group
//! order, history, members and group receipts.

use chat_client::proto::{ConversationKind, ErrorCode};
use chat_client::{ClientError, Push};
use chat_tests::{DEADLINE, Node, NodeOpts, cluster_status, free_port, next_delivery, next_push, wait_for};

const COOKIE: &str = "served-cookie";

fn consensus_member(name: &str, port: u16, seeds: &[u16], first: &[&str]) -> NodeOpts {
    let mut opts = NodeOpts::member(name, port, seeds, COOKIE);
    opts.cluster_toml.push_str(&format!(
        "consensus = true\nreplicas = 3\ninitial_members = {first:?}\n"
    ));
    opts
}

async fn three_nodes(names: [&str; 3]) -> [Node; 3] {
    let ports = [free_port(), free_port(), free_port()];
    let start = |i: usize| {
        let seeds: Vec<u16> = (0..3).filter(|j| *j != i).map(|j| ports[j]).collect();
        Node::start_with(consensus_member(names[i], ports[i], &seeds, &names)).unwrap()
    };
    let nodes = [start(0), start(1), start(2)];
    for node in &nodes {
        wait_for("the consensus groups to settle", 2 * DEADLINE, || async {
            let s = cluster_status(node).await?;
            s["consensus"]["settled"].as_bool()?.then_some(())
        })
        .await
        .unwrap();
    }
    nodes
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test]
async fn users_on_different_nodes_chat_privately_through_the_raft_core() {
    let [a, b, c] = three_nodes(["s1", "s2", "s3"]).await;
    // Registered through one node, logged in through another.
    for (node, user) in [(&a, "alice"), (&b, "bob")] {
        let (client, _) = node.connect().await.unwrap();
        client.register(user, &chat_tests::password(user)).await.unwrap();
    }
    let (taken, _) = c.connect().await.unwrap();
    let again = taken.register("alice", "another-password").await.unwrap_err();
    assert_eq!(code(&again), Some(ErrorCode::UsernameTaken));
    let (alice, mut alice_pushes, _) = c.login("alice").await.unwrap();
    let (bob, mut bob_pushes, _) = a.login("bob").await.unwrap();

    // A message crosses nodes, is pushed live and acknowledged once committed.
    let ack = alice
        .send_private_with_id("bob", "m-1", "hello bob")
        .await
        .unwrap();
    let pushed = next_delivery(&mut bob_pushes).await.unwrap();
    assert_eq!((pushed.text.as_str(), pushed.seq), ("hello bob", ack.seq));
    assert_eq!(pushed.message_id, ack.message_id);
    // A resend with the same client id is stored once and answered the same way.
    let resent = alice
        .send_private_with_id("bob", "m-1", "hello bob")
        .await
        .unwrap();
    assert_eq!(
        (resent.message_id.as_str(), resent.seq),
        (ack.message_id.as_str(), ack.seq)
    );
    // To nobody: a typed error.
    let nobody = alice.send_private("nobody", "hi").await.unwrap_err();
    assert_eq!(code(&nobody), Some(ErrorCode::NotFound));

    // Every node reads the same inbox: once, in order.
    bob.send_private_with_id("alice", "r-1", "hi alice")
        .await
        .unwrap();
    // Alice's own copy of "hello bob" is not pushed back to the session that sent it:
    // the first delivery pushed to it is bob's answer.
    let first = next_delivery(&mut alice_pushes).await.unwrap();
    assert_eq!(first.text, "hi alice");
    for via in [&a, &b, &c] {
        let (reader, _, _) = via.login("bob").await.unwrap();
        let inbox = reader.sync_all(0).await.unwrap();
        let texts: Vec<&str> = inbox
            .iter()
            .filter(|d| d.receipt.is_none())
            .map(|d| d.text.as_str())
            .collect();
        assert_eq!(
            texts,
            ["hello bob", "hi alice"],
            "bob's inbox through {}",
            via.addr
        );
        let seqs: Vec<u64> = inbox.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, (1..=inbox.len() as u64).collect::<Vec<_>>(), "gap-free");
    }
    // Alice's other devices get her own copy; her history with bob has both ways.
    let page = alice
        .history(ConversationKind::Private, "bob", 0, 10)
        .await
        .unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["hi alice", "hello bob"], "newest first");
    // The first message to bob was copied once bob had it; bob having taken one, the
    // next is written with its copy at once. Both copies carry the acknowledged id,
    // named from the sender and the client id.
    let second = alice
        .send_private_with_id("bob", "m-2", "again, bob")
        .await
        .unwrap();
    assert_eq!(
        second.message_id,
        chat_state::keys::private_message_id("bob", "alice", "m-2")
    );
    let page = alice
        .history(ConversationKind::Private, "bob", 0, 10)
        .await
        .unwrap();
    let mine: Vec<(&str, &str)> = page
        .messages
        .iter()
        .filter(|d| d.from == "alice")
        .map(|d| (d.text.as_str(), d.message_id.as_str()))
        .collect();
    assert_eq!(
        mine,
        [
            ("again, bob", second.message_id.as_str()),
            ("hello bob", ack.message_id.as_str())
        ]
    );
    let at_bob = bob
        .history(ConversationKind::Private, "alice", 0, 1)
        .await
        .unwrap();
    assert_eq!(at_bob.messages[0].message_id, second.message_id);

    // Bob reads: alice gets a read receipt for her message, pushed and stored.
    let ok = bob.ack_read(ack.seq).await.unwrap();
    assert_eq!((ok.delivered_seq, ok.read_seq), (ack.seq, ack.seq));
    let receipt = next_push(&mut alice_pushes, |p| match p {
        Push::Receipt(r) => Some(r),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (receipt.message_id.as_str(), receipt.by.as_str()),
        (ack.message_id.as_str(), "bob")
    );
    let stored = chat_tests::receipts_after(&alice, 0).await.unwrap();
    assert_eq!(stored.len(), 1, "one receipt stored: {stored:?}");
}

#[tokio::test]
async fn groups_fan_out_in_group_order_to_members_on_every_node() {
    let [a, b, c] = three_nodes(["g1", "g2", "g3"]).await;
    let (ann, _) = a.user("ann").await.unwrap();
    let (ben, mut ben_pushes) = b.user("ben").await.unwrap();
    let (cy, mut cy_pushes) = c.user("cy").await.unwrap();
    ann.create_group("crew").await.unwrap();
    let twice = ben.create_group("crew").await.unwrap_err();
    assert_eq!(code(&twice), Some(ErrorCode::AlreadyExists));
    let outsider = ben.send_group("crew", "let me in").await.unwrap_err();
    assert_eq!(code(&outsider), Some(ErrorCode::NotAMember));
    ben.join_group("crew").await.unwrap();
    cy.join_group("crew").await.unwrap();
    assert_eq!(cy.members("crew").await.unwrap(), ["ann", "ben", "cy"]);
    assert_eq!(ben.my_groups().await.unwrap(), ["crew"]);
    let missing = cy.join_group("nowhere").await.unwrap_err();
    assert_eq!(code(&missing), Some(ErrorCode::NotFound));

    // Posts from two members, each waiting for its ack: every member's inbox holds them
    // in group order, pushed live too.
    let mut acks = Vec::new();
    for i in 0..6 {
        let (who, name) = if i % 2 == 0 { (&ann, "ann") } else { (&cy, "cy") };
        let ack = who
            .send_group_with_id("crew", &format!("p{i}"), &format!("{name} {i}"))
            .await
            .unwrap();
        acks.push(ack);
    }
    let seqs: Vec<u64> = acks.iter().map(|a| a.seq).collect();
    // Group seqs 1 and 2 are ben's and cy's joins.
    assert_eq!(seqs, [3, 4, 5, 6, 7, 8], "group seqs");
    let resent = ann.send_group_with_id("crew", "p0", "ann 0").await.unwrap();
    assert_eq!(resent.seq, 3, "a resend is the first post");
    let first = next_delivery(&mut ben_pushes).await.unwrap();
    assert_eq!((first.conversation.as_str(), first.group_seq), ("crew", 3));
    let cy_first = next_delivery(&mut cy_pushes).await.unwrap();
    assert_eq!(cy_first.group_seq, 3, "cy gets ann's posts, not her own");
    let group_order = |inbox: &[chat_client::proto::Delivery]| -> Vec<u64> {
        inbox
            .iter()
            .filter(|d| d.conversation == "crew" && d.group_event.is_none())
            .map(|d| d.group_seq)
            .collect()
    };
    let ben_inbox = wait_for("ben to have every post", DEADLINE, || async {
        let inbox = ben.sync_all(0).await.ok()?;
        (group_order(&inbox).len() == 6).then_some(inbox)
    })
    .await
    .unwrap();
    assert_eq!(group_order(&ben_inbox), [3, 4, 5, 6, 7, 8]);
    let cy_inbox = wait_for("cy to have ann's posts", DEADLINE, || async {
        let inbox = cy.sync_all(0).await.ok()?;
        (group_order(&inbox).len() == 3).then_some(inbox)
    })
    .await
    .unwrap();
    assert_eq!(group_order(&cy_inbox), [3, 5, 7]);

    // History for members only, newest first, in pages.
    let page = ben.history(ConversationKind::Group, "crew", 0, 4).await.unwrap();
    let got: Vec<u64> = page.messages.iter().map(|d| d.group_seq).collect();
    assert_eq!(got, [8, 7, 6, 5]);
    let older = ben
        .history(ConversationKind::Group, "crew", page.next_before_seq, 4)
        .await
        .unwrap();
    let got: Vec<u64> = older.messages.iter().map(|d| d.group_seq).collect();
    assert_eq!(got, [4, 3, 2, 1]);
    let joins: Vec<&str> = older.messages[2..]
        .iter()
        .filter_map(|d| Some(d.group_event.as_ref()?.actor.as_str()))
        .collect();
    assert_eq!(joins, ["cy", "ben"], "the joins are in the group's order too");
    let (eve, _) = a.user("eve").await.unwrap();
    let refused = eve
        .history(ConversationKind::Group, "crew", 0, 4)
        .await
        .unwrap_err();
    assert_eq!(code(&refused), Some(ErrorCode::NotAMember));

    // Group receipts follow the members' cursors.
    let ben_seq = ben_inbox.iter().find(|d| d.group_seq == 3).unwrap().seq;
    ben.ack_read(ben_seq).await.unwrap();
    let receipts = wait_for("ben's read to show", DEADLINE, || async {
        let r = ann.group_receipts("crew", 3).await.ok()?;
        r.iter().any(|m| m.user == "ben" && m.read).then_some(r)
    })
    .await
    .unwrap();
    let users: Vec<&str> = receipts.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, ["ben", "cy"]);
    assert!(receipts.iter().all(|m| !m.unknown), "{receipts:?}");

    // Leaving: no more posts reach the member, and it is no longer listed.
    cy.leave_group("crew").await.unwrap();
    assert_eq!(ann.members("crew").await.unwrap(), ["ann", "ben"]);
    assert!(cy.my_groups().await.unwrap().is_empty());
}

/// No acknowledgement without a majority: with two of three nodes gone, the survivor
/// refuses writes and reads (UNAVAILABLE) rather than serve from its own copy; once one
/// comes back, the resend is stored once and the inbox is whole.
#[tokio::test]
async fn a_node_without_a_majority_acknowledges_nothing_and_serves_no_stale_reads() {
    let [a, mut b, mut c] = three_nodes(["m1", "m2", "m3"]).await;
    let (dan, _) = a.user("dan").await.unwrap();
    let (_eli, _) = a.user("eli").await.unwrap();
    dan.send_private_with_id("eli", "d-1", "before").await.unwrap();
    b.kill9();
    c.kill9();
    // Whatever it still believed, the survivor's leases are none: it cannot confirm
    // leadership, so it neither writes nor reads.
    let refused = wait_for("the survivor to refuse a write", DEADLINE, || async {
        match dan.send_private_with_id("eli", "d-2", "during").await {
            Err(e) if e.code() == Some(ErrorCode::Unavailable) => Some(()),
            other => {
                eprintln!("while the others are down: {other:?}");
                None
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "a write was acknowledged without a majority");
    let (eli, _) = a.connect().await.unwrap();
    let login = eli.login("eli", &chat_tests::password("eli")).await;
    assert_eq!(
        login.err().and_then(|e| e.code()),
        Some(ErrorCode::Unavailable),
        "a login needs its account read at a leader"
    );
    // One node back: a majority again, and the resend lands once.
    b.restart().unwrap();
    let ack = wait_for("writes to be served again", 2 * DEADLINE, || async {
        dan.send_private_with_id("eli", "d-2", "during").await.ok()
    })
    .await
    .unwrap();
    let (eli, _, _) = b.login("eli").await.unwrap();
    let texts: Vec<String> = eli
        .sync_all(0)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, ["before", "during"]);
    assert_eq!(ack.seq, 2);
    drop(c);
}

/// Five nodes, three replicas: every partition has two nodes without a replica, and a
/// request reaching one of them goes to a node placement put a replica on (asking the
/// other replica-less node would send it back and forth). Through every node, a user
/// whose partition is on neither p1 nor p2 registers, logs in, sends and reads.
#[tokio::test]
async fn a_node_without_a_replica_of_a_partition_serves_it_through_one_that_has_one() {
    use chat_protocol::internal::MemberRecord;
    let names = ["p1", "p2", "p3", "p4", "p5"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let nodes: Vec<Node> = (0..5)
        .map(|i| {
            let seeds: Vec<u16> = (0..5).filter(|j| *j != i).map(|j| ports[j]).collect();
            Node::start_with(consensus_member(names[i], ports[i], &seeds, &names)).unwrap()
        })
        .collect();
    for node in &nodes {
        wait_for("the consensus groups to settle", 3 * DEADLINE, || async {
            let s = cluster_status(node).await?;
            s["consensus"]["settled"].as_bool()?.then_some(())
        })
        .await
        .unwrap();
    }
    let members = names
        .iter()
        .map(|n| (chat_node::consensus::node_id(n), MemberRecord::default()))
        .collect();
    let away = [
        chat_node::consensus::node_id("p1"),
        chat_node::consensus::node_id("p2"),
    ];
    let user = (0..10_000)
        .map(|i| format!("far{i}"))
        .find(|u| {
            let group = u32::from(chat_node::partition::of_user(u));
            let voters = chat_state::membership::voters_of(&members, group, 3);
            voters.iter().all(|v| !away.contains(v))
        })
        .unwrap();
    let (client, _) = nodes[0].connect().await.unwrap();
    client
        .register(&user, &chat_tests::password(&user))
        .await
        .unwrap();
    let (_, _) = nodes[1].user("near").await.unwrap();
    for (i, via) in nodes.iter().enumerate() {
        // A client retries what is answered UNAVAILABLE (a peer counted down for a
        // moment on a loaded machine); the send is idempotent by its id.
        let user = &user;
        let copies = wait_for("a send through every node", DEADLINE, || async move {
            let (client, _, _) = via.login(user).await.ok()?;
            let text = format!("through {}", names[i]);
            match client.send_private_with_id("near", &format!("c{i}"), &text).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(ErrorCode::Unavailable) => return None,
                Err(e) => panic!("send through {}: {e}", names[i]),
            }
            client.sync_all(0).await.ok()
        })
        .await
        .unwrap();
        assert_eq!(copies.len(), i + 1, "own copies read through {}", names[i]);
    }
}

/// Pushes of one inbox come from whichever node stored each entry, so they can overtake
/// each other: a session still gets every entry, in seq order, once (it fetches a gap
/// before going on).
#[tokio::test]
async fn pushes_from_several_nodes_reach_a_session_in_order_without_gaps() {
    let [a, b, c] = three_nodes(["o1", "o2", "o3"]).await;
    let (_rcv, mut pushes) = a.user("rcv").await.unwrap();
    let (from_b, _) = b.user("sb").await.unwrap();
    let (from_c, _) = c.user("sc").await.unwrap();
    const EACH: usize = 150;
    let blast = |client: chat_client::Client, name: &'static str| async move {
        let sends = (0..EACH).map(|i| {
            let client = &client;
            async move {
                client
                    .send_private_with_id("rcv", &format!("{name}-{i}"), &format!("{name} {i}"))
                    .await
                    .unwrap()
            }
        });
        futures::future::join_all(sends).await
    };
    let (acks_b, acks_c) = tokio::join!(blast(from_b, "b"), blast(from_c, "c"));
    assert_eq!(acks_b.len() + acks_c.len(), 2 * EACH);
    let mut seqs = Vec::new();
    while seqs.len() < 2 * EACH {
        let d = next_delivery(&mut pushes)
            .await
            .unwrap_or_else(|e| panic!("after {} pushes: {e}", seqs.len()));
        seqs.push(d.seq);
    }
    assert_eq!(seqs, (1..=2 * EACH as u64).collect::<Vec<_>>());
}
