//! Failover under load, with every partition kept on two nodes: while clients send
//! private and group messages continuously across three nodes, a node is killed with
//! SIGKILL, started again, and then another is killed. Clients reconnect to any node
//! and resend what was not acknowledged with the same client message id. At the end
//! every recipient's inbox is compared with what every sender had acknowledged:
//! lost, duplicated and out-of-order counts must all be zero, and every inbox's seqs
//! gap-free. The run is driven by a seed (which nodes die, where clients connect);
//! several seeds run.

use chat_client::Client;
use chat_client::proto::ErrorCode;
use chat_tests::{DEADLINE, Node, NodeOpts, cluster_status, free_port, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COOKIE: &str = "failover-cookie";
/// Users sending and receiving; each sends privately to the next, and all post to the group.
const USERS: usize = 6;
/// How long a message may take to be acknowledged, failovers included.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(60);
/// Messages acknowledged between two steps of the run (so traffic spans each step).
const STEP: usize = 60;

/// xorshift64*: the run's only randomness, from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What one sender had acknowledged, in order: (recipient or group, text).
type Log = Arc<Mutex<Vec<(String, String)>>>;

/// The client addresses of the nodes, as they change with restarts.
type Addrs = Arc<Mutex<Vec<String>>>;

/// Sends until `stop`, one message at a time: privately to `peer`, and every third
/// message to `group`. Each is resent with the same client message id, through a new
/// connection to a random node if need be, until acknowledged.
async fn sender(
    me: String,
    peer: String,
    group: String,
    addrs: Addrs,
    seed: u64,
    stop: Arc<AtomicBool>,
    log: Log,
) {
    let mut rng = Rng(seed | 1);
    let mut client: Option<Client> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let to_group = i % 3 == 2;
        let cmid = format!("{me}-{i}");
        let text = format!("{me} #{i}");
        let give_up = std::time::Instant::now() + MESSAGE_DEADLINE;
        loop {
            assert!(std::time::Instant::now() < give_up, "{cmid} never acknowledged");
            if client.as_ref().is_none_or(Client::is_closed) {
                let addr = {
                    let a = addrs.lock().unwrap();
                    a[rng.below(a.len())].clone()
                };
                client = match Client::connect(&addr).await {
                    Ok((c, _)) if c.login(&me, &chat_tests::password(&me)).await.is_ok() => Some(c),
                    _ => None,
                };
            }
            if let Some(c) = &client {
                let sent = if to_group {
                    c.send_group_with_id(&group, &cmid, &text).await
                } else {
                    c.send_private_with_id(&peer, &cmid, &text).await
                };
                match sent {
                    Ok(_) => break,
                    // The partition is moving or being taken over: retry on this connection.
                    Err(e) if e.code() == Some(ErrorCode::Unavailable) => {}
                    Err(_) => client = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let to = if to_group { group.clone() } else { peer.clone() };
        log.lock().unwrap().push((to, text));
        i += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until the running `nodes` see each other up, hold every partition exactly
/// once between them, nothing is moving, and every held partition has its whole copies.
async fn fully_replicated(nodes: &[&Node]) {
    wait_for(
        "every partition held once and copied",
        Duration::from_secs(90),
        || async {
            let mut held = 0;
            for n in nodes {
                let s = cluster_status(n).await?;
                let up = s["nodes"].as_array()?.iter().filter(|n| n["up"] == true).count();
                let p = &s["partitions"];
                if up != nodes.len()
                    || !s["joined"].as_bool()?
                    || p["moving"].as_u64()? != 0
                    || p["under_replicated"].as_u64()? != 0
                {
                    return None;
                }
                held += p["held"].as_u64()?;
            }
            (held == u64::from(chat_node::partition::PARTITIONS)).then_some(())
        },
    )
    .await
    .unwrap();
}

async fn acked(logs: &[Log]) -> usize {
    logs.iter().map(|l| l.lock().unwrap().len()).sum()
}

/// Waits until `more` messages beyond `since` are acknowledged.
async fn progress(logs: &[Log], since: usize, more: usize, what: &str) -> usize {
    wait_for(what, MESSAGE_DEADLINE, || async {
        let n = acked(logs).await;
        (n >= since + more).then_some(n)
    })
    .await
    .unwrap()
}

async fn seen_down(observer: &Node, name: &str) {
    wait_for(
        "the killed node to be seen down",
        Duration::from_secs(15),
        || async {
            let s = cluster_status(observer).await?;
            s["nodes"]
                .as_array()?
                .iter()
                .any(|n| n["name"] == name && n["up"] == false)
                .then_some(())
        },
    )
    .await
    .unwrap();
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Report {
    delivered: usize,
    lost: usize,
    duplicated: usize,
    /// A sender's messages in one conversation out of the order it sent them: private
    /// messages in inbox order, group messages in group order (`group_seq`).
    out_of_order: usize,
    unexpected: usize,
    seq_gaps: usize,
}

/// Compares every user's inbox, read through `via`, with what was acknowledged for it.
async fn compare(via: &Node, users: &[String], group: &str, logs: &[Log]) -> Report {
    let mut report = Report::default();
    for (u, user) in users.iter().enumerate() {
        // What this user should have from each sender, in that sender's order, tagged
        // with whether it went to the group; and its own copies of what it sent privately
        // (its other devices get them).
        let mut want: BTreeMap<&String, Vec<(bool, String)>> = BTreeMap::new();
        for (s, sender) in users.iter().enumerate() {
            let texts = logs[s]
                .lock()
                .unwrap()
                .iter()
                .filter(|(to, _)| {
                    if s == u {
                        to != group
                    } else {
                        to == user || to == group
                    }
                })
                .map(|(to, text)| (to == group, text.clone()))
                .collect();
            want.insert(sender, texts);
        }
        let (c, _, _) = via.login(user).await.unwrap();
        let inbox = c.sync_all(0).await.unwrap();
        report.delivered += inbox.len();
        let mut expected_seq = 1;
        for d in &inbox {
            if d.seq != expected_seq {
                report.seq_gaps += 1;
            }
            expected_seq = d.seq + 1;
        }
        // What it has from each sender: private messages in inbox order, group ones in
        // group order (a group message can reach an inbox after a later one of the same
        // group when its fan-out was retried; clients order a group by group_seq).
        let mut got: BTreeMap<&String, Vec<(bool, String)>> = BTreeMap::new();
        let mut posts: Vec<&chat_client::proto::Delivery> =
            inbox.iter().filter(|d| d.conversation == group).collect();
        posts.sort_by_key(|d| d.group_seq);
        for d in inbox.iter().filter(|d| d.conversation != group).chain(posts) {
            match users.iter().find(|s| **s == d.from) {
                Some(sender) => got
                    .entry(sender)
                    .or_default()
                    .push((d.conversation == group, d.text.clone())),
                None => report.unexpected += 1,
            }
        }
        for (sender, wanted) in &want {
            let position: BTreeMap<&(bool, String), usize> =
                wanted.iter().enumerate().map(|(i, t)| (t, i)).collect();
            let have = got.remove(sender).unwrap_or_default();
            let mut seen = BTreeSet::new();
            // The last position seen in each conversation (private, group).
            let mut last: [Option<usize>; 2] = [None, None];
            for t in &have {
                if !seen.insert(t) {
                    report.duplicated += 1;
                    continue;
                }
                match position.get(t) {
                    None => report.unexpected += 1,
                    Some(i) => {
                        let conv = usize::from(t.0);
                        if last[conv].is_some_and(|l| *i < l) {
                            report.out_of_order += 1;
                        }
                        last[conv] = Some(*i);
                    }
                }
            }
            let lost: Vec<&(bool, String)> = wanted.iter().filter(|t| !seen.contains(t)).collect();
            if !lost.is_empty() {
                eprintln!("{user}: lost from {sender}: {:?}", &lost[..lost.len().min(5)]);
            }
            report.lost += lost.len();
        }
        report.unexpected += got.values().map(Vec::len).sum::<usize>();
    }
    report
}

/// Compares until nothing is lost (group fan-outs finish in the background) or the
/// deadline passes; returns the last report.
async fn settle_and_compare(via: &Node, users: &[String], group: &str, logs: &[Log]) -> Report {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let report = compare(via, users, group, logs).await;
        if report.lost == 0 || std::time::Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run(seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let names: Vec<String> = (1..=3).map(|i| format!("f{seed}n{i}")).collect();
    let first = free_port();
    let mut nodes = vec![Node::start_with(NodeOpts::member(&names[0], first, &[], COOKIE)).unwrap()];
    for name in &names[1..] {
        nodes.push(Node::start_with(NodeOpts::member(name, free_port(), &[first], COOKIE)).unwrap());
    }
    fully_replicated(&[&nodes[0], &nodes[1], &nodes[2]]).await;

    let users: Vec<String> = (0..USERS).map(|i| format!("s{seed}u{i}")).collect();
    let group = format!("room{seed}");
    for (i, u) in users.iter().enumerate() {
        let (c, _) = nodes[rng.below(3)].user(u).await.unwrap();
        if i == 0 {
            c.create_group(&group).await.unwrap();
        } else {
            c.join_group(&group).await.unwrap();
        }
    }
    let addrs: Addrs = Arc::new(Mutex::new(nodes.iter().map(|n| n.addr.clone()).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Log> = (0..USERS).map(|_| Log::default()).collect();
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        tasks.push(tokio::spawn(sender(
            u.clone(),
            users[(i + 1) % USERS].clone(),
            group.clone(),
            addrs.clone(),
            rng.next(),
            stop.clone(),
            logs[i].clone(),
        )));
    }

    let n = progress(&logs, 0, STEP, "traffic to start").await;
    let first_victim = rng.below(3);
    let survivor = (first_victim + 1) % 3;
    nodes[first_victim].kill9();
    seen_down(&nodes[survivor], &names[first_victim]).await;
    let n = progress(&logs, n, STEP, "traffic to go on without the killed node").await;

    nodes[first_victim].restart().unwrap();
    addrs.lock().unwrap()[first_victim] = nodes[first_victim].addr.clone();
    fully_replicated(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let n = progress(&logs, n, STEP, "traffic after the restart").await;

    let second_victim = (first_victim + 1 + rng.below(2)) % 3;
    // The node never killed.
    let survivor = 3 - first_victim - second_victim;
    nodes[second_victim].kill9();
    seen_down(&nodes[survivor], &names[second_victim]).await;
    progress(&logs, n, STEP, "traffic to go on without the second killed node").await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    // Read through a surviving node: the second victim is still down.
    let report = settle_and_compare(&nodes[survivor], &users, &group, &logs).await;
    eprintln!("seed {seed}: killed {first_victim} then {second_victim}; {report:?}");
    assert!(report.delivered > 0);
    assert_eq!(
        Report {
            delivered: report.delivered,
            ..Report::default()
        },
        report,
        "seed {seed}: lost, duplicated or out-of-order messages"
    );

    // The second victim comes back, takes its share back, and nothing changes.
    nodes[second_victim].restart().unwrap();
    fully_replicated(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    let again = settle_and_compare(&nodes[second_victim], &users, &group, &logs).await;
    assert_eq!(
        again, report,
        "seed {seed}: the returned node changed what is stored"
    );
}

// Seeds chosen so that the runs kill different nodes first: (2 then 1), (1 then 0),
// (0 then 2), (0 then 1).
#[tokio::test]
async fn nothing_acknowledged_is_lost_or_duplicated_when_nodes_are_killed_seed_1() {
    run(1).await;
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_or_duplicated_when_nodes_are_killed_seed_4() {
    run(4).await;
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_or_duplicated_when_nodes_are_killed_seed_5() {
    run(5).await;
}

#[tokio::test]
async fn nothing_acknowledged_is_lost_or_duplicated_when_nodes_are_killed_seed_8() {
    run(8).await;
}

/// A holder frozen with SIGSTOP is replaced by its replica; when it thaws it finds
/// the partition served elsewhere, stops serving it and takes the newer copy back:
/// every acknowledged message is there once, in order.
#[tokio::test]
async fn a_frozen_holder_is_replaced_and_gives_way_when_it_thaws() {
    let names = ["z1", "z2", "z3"];
    let first = free_port();
    let mut nodes = vec![Node::start_with(NodeOpts::member(names[0], first, &[], COOKIE)).unwrap()];
    for name in &names[1..] {
        nodes.push(Node::start_with(NodeOpts::member(name, free_port(), &[first], COOKIE)).unwrap());
    }
    let all = [&nodes[0], &nodes[1], &nodes[2]];
    fully_replicated(&all).await;
    // The victim's inbox is held by z3, the node that will freeze.
    let victim = (0..10_000)
        .map(|i| format!("iced{i}"))
        .find(|u| chat_node::partition::owner(names, chat_node::partition::of_user(u)) == Some("z3"))
        .unwrap();
    nodes[2].user(&victim).await.unwrap();
    let (sender, _) = nodes[0].user("thawer").await.unwrap();
    let mut want = Vec::new();
    let send = |text: String| {
        let sender = &sender;
        let victim = &victim;
        async move {
            wait_for("a send to be acknowledged", MESSAGE_DEADLINE, || async {
                sender
                    .send_private_with_id(victim, &format!("id-{text}"), &text)
                    .await
                    .ok()
            })
            .await
            .unwrap();
            text
        }
    };
    for i in 0..3 {
        want.push(send(format!("before {i}")).await);
    }
    chat_tests::send_signal(nodes[2].pid(), "STOP").unwrap();
    seen_down(&nodes[0], "z3").await;
    for i in 0..3 {
        want.push(send(format!("while frozen {i}")).await);
    }
    chat_tests::send_signal(nodes[2].pid(), "CONT").unwrap();
    fully_replicated(&all).await;
    for i in 0..3 {
        want.push(send(format!("after {i}")).await);
    }
    for via in all {
        let (c, _, _) = via.login(&victim).await.unwrap();
        let inbox = c.sync_all(0).await.unwrap();
        let texts: Vec<String> = inbox.iter().map(|d| d.text.clone()).collect();
        assert_eq!(texts, want, "through {}", via.addr);
        let seqs: Vec<u64> = inbox.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, (1..=want.len() as u64).collect::<Vec<_>>());
    }
}

/// With two copies on two nodes, a send while one node is down cannot be copied: the
/// client gets UNAVAILABLE (the message is stored, not acknowledged). Once the node is
/// back and copied again, the resend with the same client message id is acknowledged
/// with the same id, and the recipient has the message once.
#[tokio::test]
async fn with_too_few_copies_up_a_send_is_refused_and_its_resend_delivered_once() {
    let names = ["y1", "y2"];
    let first = free_port();
    let mut nodes = [
        Node::start_with(NodeOpts::member(names[0], first, &[], COOKIE)).unwrap(),
        Node::start_with(NodeOpts::member(names[1], free_port(), &[first], COOKIE)).unwrap(),
    ];
    fully_replicated(&[&nodes[0], &nodes[1]]).await;
    // A recipient held by y1, which stays up; its copy is on y2, which goes down.
    let to = (0..10_000)
        .map(|i| format!("lonely{i}"))
        .find(|u| chat_node::partition::owner(names, chat_node::partition::of_user(u)) == Some("y1"))
        .unwrap();
    nodes[0].user(&to).await.unwrap();
    let (sender, _) = nodes[0].user("ysender").await.unwrap();
    sender.send_private(&to, "before").await.unwrap();

    nodes[1].kill9();
    seen_down(&nodes[0], "y2").await;
    let err = wait_for("a send to be refused for want of copies", DEADLINE, || async {
        sender
            .send_private_with_id(&to, "cm-1", "while alone")
            .await
            .err()
            .filter(|e| e.code() == Some(ErrorCode::Unavailable))
    })
    .await
    .unwrap();
    assert!(err.to_string().contains("not stored on every replica"), "{err}");

    nodes[1].restart().unwrap();
    fully_replicated(&[&nodes[0], &nodes[1]]).await;
    let ack = wait_for("the resend to be acknowledged", MESSAGE_DEADLINE, || async {
        sender.send_private_with_id(&to, "cm-1", "while alone").await.ok()
    })
    .await
    .unwrap();
    let again = sender
        .send_private_with_id(&to, "cm-1", "while alone")
        .await
        .unwrap();
    assert_eq!((again.message_id, again.seq), (ack.message_id.clone(), ack.seq));
    let (c, _, _) = nodes[0].login(&to).await.unwrap();
    let texts: Vec<String> = c.sync_all(0).await.unwrap().into_iter().map(|d| d.text).collect();
    assert_eq!(texts, ["before", "while alone"]);
}
