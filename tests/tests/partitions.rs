//! Location transparency and rebalancing through real processes, on the Raft core: users
//! on different nodes chat as on one node, a node joining under traffic gets its
//! replicas with every message delivered exactly once, a node stopped with SIGTERM
//! hands its leaderships over and loses nothing, and a frozen node does not stop the
//! others from serving what they lead.

use chat_client::proto::{ConversationKind, ErrorCode};
use chat_client::{Client, Push};
use chat_node::partition::{self, PARTITIONS};
use chat_tests::{
    DEADLINE, Node, NodeOpts, cluster_status, free_port, next_delivery, next_push, send_signal, wait_for,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

const COOKIE: &str = "partition-cookie";

/// Starts `names.len()` nodes; the first without seeds, every other seeded with the
/// first; three replicas of every partition (the default).
fn start(names: &[&str]) -> (Vec<Node>, u16) {
    start_with_replicas(names, 3)
}

/// Like [`start`], keeping `replicas` copies of every partition.
fn start_with_replicas(names: &[&str], replicas: usize) -> (Vec<Node>, u16) {
    let seed = free_port();
    let opts = |name: &str, port: u16, seeds: &[u16]| {
        let mut o = NodeOpts::member(name, port, seeds, COOKIE);
        o.cluster_toml.push_str(&format!("replicas = {replicas}\n"));
        o
    };
    let mut nodes = vec![Node::start_with(opts(names[0], seed, &[])).unwrap()];
    for name in &names[1..] {
        nodes.push(Node::start_with(opts(name, free_port(), &[seed])).unwrap());
    }
    (nodes, seed)
}

/// Waits until `nodes` are all members and settled: every partition led, on the
/// voters placement wants, caught up.
async fn settled(nodes: &[&Node]) {
    chat_tests::wait_settled(nodes, nodes.len()).await.unwrap();
}

/// The partitions `node` leads, once it leads any.
async fn led_by(node: &Node) -> Vec<u16> {
    chat_tests::led_by(node).await.unwrap()
}

/// A name `prefix…` whose partition `node` leads.
async fn user_led_by(node: &Node, prefix: &str) -> String {
    partition::user_named_in(led_by(node).await[0], prefix, 0)
}

/// Whether placement puts a voter of partition `p` on `node` when `members` are the
/// members (as every node computes it from the same names).
fn placed_on(members: &[&str], node: &str, p: u16, replicas: usize) -> bool {
    use chat_node::consensus::node_id;
    let records = members
        .iter()
        .map(|m| (node_id(m), chat_protocol::internal::MemberRecord::default()))
        .collect();
    chat_state::membership::voters_of(&records, u32::from(p), replicas).contains(&node_id(node))
}

/// Registers `name` through `node` without logging in.
async fn register(node: &Node, name: &str) {
    let (c, _) = node.connect().await.unwrap();
    c.register(name, &chat_tests::password(name)).await.unwrap();
}

/// Messages acknowledged so far, over all senders.
async fn total(acked: &BTreeMap<String, Acked>) -> usize {
    let mut n = 0;
    for a in acked.values() {
        n += a.lock().await.len();
    }
    n
}

/// How many Raft groups `node` has a replica of.
async fn held(node: &Node) -> u64 {
    cluster_status(node).await.unwrap()["consensus"]["groups"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn users_on_different_nodes_chat_as_if_on_one_node() {
    let (nodes, _) = start(&["a1", "a2", "a3"]);
    let [n1, n2, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    settled(&[n1, n2, n3]).await;
    for n in [n1, n2, n3] {
        assert!(held(n).await > 0, "every node owns a share");
    }

    // Registered through three different nodes...
    let (alice, _) = n1.user("alice").await.unwrap();
    let (bob, mut bob_rx) = n2.user("bob").await.unwrap();
    let (carol, _) = n3.user("carol").await.unwrap();
    // ...and logged in through another one.
    let (alice2, mut alice2_rx, _) = n3.login("alice").await.unwrap();

    // Private, across nodes, both ways, with receipts.
    let ack = alice.send_private_with_id("bob", "c-1", "hi bob").await.unwrap();
    let d = next_delivery(&mut bob_rx).await.unwrap();
    assert_eq!(
        (d.from.as_str(), d.text.as_str(), d.seq),
        ("alice", "hi bob", ack.seq)
    );
    bob.ack_delivered(d.seq).await.unwrap();
    let receipt = next_push(&mut alice2_rx, |p| match p {
        Push::Receipt(r) => Some(r),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (receipt.message_id.as_str(), receipt.by.as_str()),
        (ack.message_id.as_str(), "bob")
    );
    bob.send_private("alice", "hi alice").await.unwrap();
    assert_eq!(next_delivery(&mut alice2_rx).await.unwrap().text, "hi alice");

    // A resend through yet another node is the same message, delivered once.
    let again = alice2.send_private_with_id("bob", "c-1", "hi bob").await.unwrap();
    assert_eq!(again.message_id, ack.message_id);
    let all = bob.sync_all(0).await.unwrap();
    assert_eq!(all.iter().filter(|d| d.text == "hi bob").count(), 1);

    // Unknown users are unknown from every node.
    let err = alice.send_private("nobody", "x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));

    // A group with members on three nodes; carol is offline when the message is sent.
    alice.create_group("crew").await.unwrap();
    bob.join_group("crew").await.unwrap();
    carol.join_group("crew").await.unwrap();
    assert_eq!(bob.members("crew").await.unwrap(), ["alice", "bob", "carol"]);
    assert_eq!(carol.my_groups().await.unwrap(), ["crew"]);
    carol.logout().await.unwrap();
    alice.send_group("crew", "to the crew").await.unwrap();
    let g = next_push(&mut bob_rx, |p| match p {
        Push::Delivery(d) if d.kind == ConversationKind::Group as i32 && d.group_event.is_none() => Some(d),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (g.conversation.as_str(), g.text.as_str()),
        ("crew", "to the crew")
    );
    bob.send_private("carol", "while you were out").await.unwrap();

    // Carol comes back through the first node and finds both, in order.
    let (carol_again, _, ok) = n1.login("carol").await.unwrap();
    let missed = carol_again.sync_all(ok.delivered_seq).await.unwrap();
    let texts: Vec<&str> = missed.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["to the crew", "while you were out"]);
    assert!(
        missed.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "gap-free seqs"
    );
    assert_eq!(ok.nodes.len(), 3, "LoginOk lists the cluster");

    // The online list is the same from every node.
    for n in [n1, n2, n3] {
        let (c, _, _) = n.login("bob").await.unwrap();
        let online = c.online().await.unwrap();
        assert!(
            ["alice", "bob", "carol"]
                .iter()
                .all(|u| online.iter().any(|o| o == u)),
            "{online:?}"
        );
    }
}

/// One sender's acknowledged messages: client message id -> text.
type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Sends private messages to `to` until `stop`, resending each with the same client
/// message id (through a new connection to any node, if need be) until acknowledged.
async fn keep_sending(addrs: Vec<String>, me: String, to: String, stop: Arc<AtomicBool>, acked: Acked) {
    let mut client: Option<Client> = None;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let cmid = format!("{me}-{i}");
        let text = format!("{me} #{i}");
        let give_up = std::time::Instant::now() + DEADLINE;
        loop {
            assert!(std::time::Instant::now() < give_up, "{cmid} never acknowledged");
            if client.as_ref().is_none_or(Client::is_closed) {
                let addr = &addrs[i % addrs.len()];
                client = match Client::connect(addr).await {
                    Ok((c, _)) if c.login(&me, &chat_tests::password(&me)).await.is_ok() => Some(c),
                    _ => None,
                };
            }
            if let Some(c) = &client {
                match c.send_private_with_id(&to, &cmid, &text).await {
                    Ok(_) => break,
                    Err(e) if e.code() == Some(ErrorCode::Unavailable) => {}
                    Err(_) => client = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        acked.lock().await.insert(cmid, text);
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks that `user`'s inbox holds exactly the acknowledged messages of its senders,
/// each once, with gap-free seqs; returns how many.
async fn check_inbox(node: &Node, user: &str, senders: &BTreeMap<String, Acked>) -> usize {
    let (c, _, _) = node.login(user).await.unwrap();
    let all = c.sync_all(0).await.unwrap();
    assert!(
        all.windows(2).all(|w| w[1].seq == w[0].seq + 1),
        "{user}: seqs have gaps"
    );
    assert_eq!(all.first().map(|d| d.seq), Some(1), "{user}: starts at 1");
    // What others sent (the user's own copies of what it sent are checked by the
    // failover tests).
    let got: Vec<(String, String)> = all
        .iter()
        .filter(|d| d.from != user)
        .map(|d| (d.from.clone(), d.text.clone()))
        .collect();
    let unique: BTreeSet<&(String, String)> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "{user}: a message was delivered twice");
    let mut want = BTreeSet::new();
    for (from, acked) in senders {
        for text in acked.lock().await.values() {
            want.insert((from.clone(), text.clone()));
        }
    }
    let got: BTreeSet<(String, String)> = got.into_iter().collect();
    // The sender may stop between a send reaching the inbox and its ack: extra is fine
    // only for such a last message, never a lost acknowledged one.
    let lost: Vec<_> = want.difference(&got).collect();
    assert!(lost.is_empty(), "{user}: acknowledged but lost: {lost:?}");
    assert!(
        got.len() <= want.len() + senders.len(),
        "{user}: unexpected extra messages"
    );
    got.len()
}

#[tokio::test]
async fn a_fourth_node_joins_under_traffic_and_every_message_arrives_exactly_once() {
    let (mut nodes, seed) = start(&["j1", "j2", "j3"]);
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    // Six users chat in a ring, each connected to some node. Three of their inboxes
    // are in partitions that get a replica on the new node, three do not.
    let four = ["j1", "j2", "j3", "j4"];
    let moves = |u: &String| placed_on(&four, "j4", partition::of_user(u), 3);
    let candidates: Vec<String> = (0..1000).map(|i| format!("ring{i}")).collect();
    let mut users: Vec<String> = candidates.iter().filter(|u| moves(u)).take(3).cloned().collect();
    users.extend(candidates.iter().filter(|u| !moves(u)).take(3).cloned());
    // Interleave movers and stayers around the ring.
    users = vec![
        users[0].clone(),
        users[3].clone(),
        users[1].clone(),
        users[4].clone(),
        users[2].clone(),
        users[5].clone(),
    ];
    for (i, u) in users.iter().enumerate() {
        nodes[i % 3].user(u).await.unwrap();
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut acked: BTreeMap<String, Acked> = BTreeMap::new();
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let a = Acked::default();
        acked.insert(u.clone(), a.clone());
        let to = users[(i + 1) % users.len()].clone();
        let mine: Vec<String> = addrs.iter().cycle().skip(i).take(3).cloned().collect();
        tasks.push(tokio::spawn(keep_sending(mine, u.clone(), to, stop.clone(), a)));
    }
    // Let traffic flow, then add a node.
    wait_for("some traffic", DEADLINE, || async {
        (total(&acked).await >= 60).then_some(())
    })
    .await
    .unwrap();
    let before = total(&acked).await;
    nodes.push(Node::start_with(NodeOpts::member("j4", free_port(), &[seed], COOKIE)).unwrap());
    settled(&[&nodes[0], &nodes[1], &nodes[2], &nodes[3]]).await;
    assert!(held(&nodes[3]).await > 0, "the new node holds replicas");
    // And keep going a little after the move.
    let after_join = before + 60;
    wait_for("traffic after the join", DEADLINE, || async {
        (total(&acked).await >= after_join).then_some(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Every inbox, read through the new node, has every acknowledged message once.
    let mut total = 0;
    for (i, u) in users.iter().enumerate() {
        let sender = &users[(i + users.len() - 1) % users.len()];
        let senders = BTreeMap::from([(sender.clone(), acked[sender].clone())]);
        total += check_inbox(&nodes[3], u, &senders).await;
    }
    assert!(total >= after_join, "{total} messages checked");
}

#[tokio::test]
async fn a_node_stopped_with_sigterm_hands_its_leaderships_over_and_loses_nothing() {
    let (mut nodes, _) = start(&["l1", "l2", "l3"]);
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    // Offline mailboxes and a group spread over every node's partitions.
    let (sender, _) = nodes[0].user("sender").await.unwrap();
    let receivers: Vec<String> = (0..12).map(|i| format!("rcv{i}")).collect();
    for r in &receivers {
        register(&nodes[1], r).await;
    }
    sender.create_group("club").await.unwrap();
    for r in &receivers {
        let (c, _, _) = nodes[2].login(r).await.unwrap();
        c.join_group("club").await.unwrap();
    }
    for r in &receivers {
        for k in 0..3 {
            sender.send_private(r, &format!("{r} {k}")).await.unwrap();
        }
    }
    sender.send_group("club", "club news").await.unwrap();
    assert!(!led_by(&nodes[2]).await.is_empty());

    // The third node stops (SIGTERM): it hands every leadership over first, and stays a
    // member (two voters of three keep every partition writable).
    let status = nodes[2].terminate().unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(&nodes[2].log).unwrap();
    assert!(log.contains("leadership handed over"), "{log}");
    wait_for("the others to lead every partition", DEADLINE, || async {
        let mut led = 0;
        for n in &nodes[..2] {
            led += cluster_status(n).await?["consensus"]["led"].as_array()?.len();
        }
        (led == usize::from(PARTITIONS)).then_some(())
    })
    .await
    .unwrap();

    for r in &receivers {
        let (c, _, _) = nodes[1].login(r).await.unwrap();
        let texts: Vec<String> = c
            .sync_all(0)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.group_event.is_none())
            .map(|d| d.text)
            .collect();
        assert_eq!(
            texts,
            [
                format!("{r} 0"),
                format!("{r} 1"),
                format!("{r} 2"),
                "club news".into()
            ],
            "{r}"
        );
    }
    assert_eq!(sender.members("club").await.unwrap().len(), receivers.len() + 1);
}

#[tokio::test]
async fn a_frozen_node_is_marked_down_and_the_others_keep_serving_what_they_own() {
    // Without replicas: nobody else has the frozen node's data.
    let (nodes, _) = start_with_replicas(&["s1", "s2", "s3"], 1);
    let [n1, n2, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    settled(&[n1, n2, n3]).await;
    // Two users whose partitions s1 and s2 lead (their only voters), and one whose
    // partition the node that will freeze leads.
    let (x, y, z) = (
        user_led_by(n1, "user").await,
        user_led_by(n2, "user").await,
        user_led_by(n3, "user").await,
    );
    let (xc, _) = n1.user(&x).await.unwrap();
    let (_yc, mut y_rx) = n2.user(&y).await.unwrap();
    n1.user(&z).await.unwrap();

    send_signal(n3.pid(), "STOP").unwrap();
    wait_for("s3 to be marked down", Duration::from_secs(10), || async {
        let s = cluster_status(n1).await?;
        let nodes = s["nodes"].as_array()?;
        nodes
            .iter()
            .any(|n| n["name"] == "s3" && n["up"] == false)
            .then_some(())
    })
    .await
    .unwrap();
    // Partitions of s1 and s2 are served as before.
    xc.send_private(&y, "still here").await.unwrap();
    assert_eq!(next_delivery(&mut y_rx).await.unwrap().text, "still here");
    let (x2, _, _) = n2.login(&x).await.unwrap();
    assert!(x2.sync_all(0).await.is_ok());
    // Those of the frozen node say so at once instead of hanging.
    let err = xc.send_private(&z, "are you there").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");

    send_signal(n3.pid(), "CONT").unwrap();
    wait_for("s3 to serve again", DEADLINE, || async {
        xc.send_private(&z, "welcome back").await.ok()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn after_a_node_restarts_its_users_get_pushes_again_and_group_fan_outs_complete() {
    // Without replicas, so that v's inbox is down with r3.
    let (mut nodes, _) = start_with_replicas(&["r1", "r2", "r3"], 1);
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    // v's inbox lives on r3; v is connected to r1. The group lives elsewhere.
    let (v, w) = (
        user_led_by(&nodes[2], "member").await,
        user_led_by(&nodes[0], "member").await,
    );
    let r3 = led_by(&nodes[2]).await;
    let group = (0..1000)
        .map(|i| format!("grp{i}"))
        .find(|g| !r3.contains(&partition::of_group(g)))
        .unwrap();
    let (_v_client, mut v_rx) = nodes[0].user(&v).await.unwrap();
    let (w_client, _) = nodes[1].user(&w).await.unwrap();
    w_client.create_group(&group).await.unwrap();
    let (v_joiner, _, _) = nodes[1].login(&v).await.unwrap();
    v_joiner.join_group(&group).await.unwrap();
    v_joiner.logout().await.unwrap();

    nodes[2].kill9();
    wait_for("r3 to be seen down", DEADLINE, || async {
        let s = cluster_status(&nodes[0]).await?;
        s["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["name"] == "r3" && n["up"] == false)
            .then_some(())
    })
    .await
    .unwrap();
    // The group is up, so the post is acknowledged; v's inbox is not, so its copy waits.
    w_client
        .send_group(&group, "posted while r3 was down")
        .await
        .unwrap();
    let err = w_client.send_private(&v, "not now").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));

    nodes[2].restart().unwrap();
    // The group's fan-out is retried and reaches v, whose session on r1 was attached
    // again to the restarted inbox.
    let d = next_delivery(&mut v_rx).await.unwrap();
    assert_eq!(d.text, "posted while r3 was down");
    wait_for("private messages to v to be served again", DEADLINE, || async {
        w_client.send_private(&v, "welcome back").await.ok()
    })
    .await
    .unwrap();
    assert_eq!(next_delivery(&mut v_rx).await.unwrap().text, "welcome back");
}

#[tokio::test]
async fn a_whole_cluster_stopped_and_started_again_delivers_everything_acknowledged() {
    let (mut nodes, _) = start(&["w1", "w2", "w3"]);
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let (sender, _) = nodes[0].user("sender").await.unwrap();
    let receivers: Vec<String> = (0..9).map(|i| format!("away{i}")).collect();
    sender.create_group("all").await.unwrap();
    for (i, r) in receivers.iter().enumerate() {
        let (c, _) = nodes[i % 3].user(r).await.unwrap();
        c.join_group("all").await.unwrap();
        c.logout().await.unwrap();
    }
    let mut acked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in &receivers {
        for k in 0..3 {
            let text = format!("for {r} #{k}");
            sender.send_private(r, &text).await.unwrap();
            acked.entry(r.clone()).or_default().push(text);
        }
    }
    sender.send_group("all", "to all").await.unwrap();
    drop(sender);

    // Stop every node (each hands its leaderships to those still up), then start them all.
    for n in nodes.iter_mut().rev() {
        assert!(n.terminate().unwrap().success());
    }
    for n in nodes.iter_mut() {
        n.restart().unwrap();
    }
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    for (i, r) in receivers.iter().enumerate() {
        let (c, _, ok) = nodes[(i + 1) % 3].login(r).await.unwrap();
        assert_eq!(ok.delivered_seq, 0);
        let texts: Vec<String> = c
            .sync_all(0)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.group_event.is_none())
            .map(|d| d.text)
            .collect();
        let mut want = acked[r].clone();
        want.push("to all".into());
        assert_eq!(texts, want, "{r}");
    }
}

#[tokio::test]
async fn a_joining_node_killed_during_its_takeover_and_restarted_loses_nothing() {
    let (nodes, seed) = start(&["k1", "k2", "k3"]);
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let four = ["k1", "k2", "k3", "k4"];
    // Receivers whose inboxes get a replica on k4, each with a stored backlog.
    let movers: Vec<String> = (0..2000)
        .map(|i| format!("mv{i}"))
        .filter(|u| placed_on(&four, "k4", partition::of_user(u), 3))
        .take(8)
        .collect();
    let (sender, _) = nodes[0].user("sender").await.unwrap();
    for r in &movers {
        register(&nodes[1], r).await;
        for k in 0..20 {
            sender.send_private(r, &format!("{r} {k}")).await.unwrap();
        }
    }
    let mut k4 = Node::start_with(NodeOpts::member("k4", free_port(), &[seed], COOKIE)).unwrap();
    // Kill it as soon as it has its first replicas.
    wait_for("the first replicas to reach k4", DEADLINE, || async {
        let s = cluster_status(&k4).await?;
        (s["consensus"]["groups"].as_u64()? > 0).then_some(())
    })
    .await
    .unwrap();
    k4.kill9();
    k4.restart().unwrap();
    settled(&[&nodes[0], &nodes[1], &nodes[2], &k4]).await;
    for r in &movers {
        let (c, _, _) = k4.login(r).await.unwrap();
        let texts: Vec<String> = c
            .sync_all(0)
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.group_event.is_none())
            .map(|d| d.text)
            .collect();
        let want: Vec<String> = (0..20).map(|k| format!("{r} {k}")).collect();
        assert_eq!(texts, want, "{r}");
    }
}

#[tokio::test]
async fn receipts_cross_nodes_and_wait_for_an_offline_sender() {
    let (nodes, _) = start(&["c1", "c2", "c3"]);
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    // The sender's inbox is led by c1, the recipient's by c2; they connect through c3
    // and c1.
    let (sender, recipient) = (
        user_led_by(&nodes[0], "snd").await,
        user_led_by(&nodes[1], "rcp").await,
    );
    let (s, _) = nodes[2].user(&sender).await.unwrap();
    let (r, _) = nodes[0].user(&recipient).await.unwrap();
    s.send_private(&recipient, "one").await.unwrap();
    let ack = s.send_private(&recipient, "two").await.unwrap();
    s.logout().await.unwrap();
    let got = r.sync_all(0).await.unwrap();
    r.ack_read(got.last().unwrap().seq).await.unwrap();

    let (back, _, ok) = nodes[1].login(&sender).await.unwrap();
    let receipts = wait_for("the read receipt in the sender's inbox", DEADLINE, || {
        let b = back.clone();
        async move {
            let w = chat_tests::receipts_after(&b, ok.delivered_seq).await?;
            (!w.is_empty()).then_some(w)
        }
    })
    .await
    .unwrap();
    let rc = receipts[0].receipt.as_ref().expect("a receipt");
    assert_eq!(
        (rc.message_id.as_str(), rc.by.as_str(), rc.kind),
        (
            ack.message_id.as_str(),
            recipient.as_str(),
            chat_client::proto::ReceiptKind::Read as i32
        )
    );
    assert_eq!(receipts.len(), 1, "one receipt covers both messages");
}

#[tokio::test]
async fn a_group_message_reports_per_member_delivered_and_read_across_nodes() {
    let (nodes, _) = start(&["g1", "g2", "g3"]);
    settled(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let (ann, _) = nodes[0].user("ann").await.unwrap();
    let (bea, mut bea_rx) = nodes[1].user("bea").await.unwrap();
    let (cy, mut cy_rx) = nodes[2].user("cy").await.unwrap();
    let (dot, _) = nodes[0].user("dot").await.unwrap();
    ann.create_group("team").await.unwrap();
    for c in [&bea, &cy, &dot] {
        c.join_group("team").await.unwrap();
    }
    let sent = ann.send_group("team", "status?").await.unwrap();
    let b = next_delivery(&mut bea_rx).await.unwrap();
    let c = next_delivery(&mut cy_rx).await.unwrap();
    bea.ack_delivered(b.seq).await.unwrap();
    cy.ack_read(c.seq).await.unwrap();
    let states = dot.group_receipts("team", sent.seq).await.unwrap();
    let got: Vec<(&str, bool, bool, bool)> = states
        .iter()
        .map(|m| (m.user.as_str(), m.delivered, m.read, m.unknown))
        .collect();
    assert_eq!(
        got,
        [
            ("bea", true, false, false),
            ("cy", true, true, false),
            ("dot", false, false, false)
        ]
    );
    // Members only, and only messages that exist.
    let (eve, _) = nodes[1].user("eve").await.unwrap();
    let err = eve.group_receipts("team", sent.seq).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAMember));
    let err = ann.group_receipts("team", sent.seq + 5).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}
