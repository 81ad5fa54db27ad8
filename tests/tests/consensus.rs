//! The Raft core on real processes (`cluster.consensus = true`): three nodes started from
//! the same first members form the metadata group and 256 partition groups over the
//! cluster links, and report `settled` on `/cluster`; a node killed with SIGKILL leaves
//! every group led by the others; back from its disk, it rejoins and all settle again. A
//! node that never comes back is removed by an operator (`chat remove-node`), and the
//! others re-place its replicas and settle without it. A new node joins through its
//! seeds and takes its share.

use chat_tests::{DEADLINE, Node, NodeOpts, cli, cluster_status, free_port, wait_for};
use std::time::Duration;

const COOKIE: &str = "consensus-cookie";

fn consensus_member(name: &str, port: u16, seeds: &[u16], first: &[&str]) -> NodeOpts {
    let mut opts = NodeOpts::member(name, port, seeds, COOKIE);
    opts.cluster_toml.push_str(&format!(
        "consensus = true\nreplicas = 3\ninitial_members = {first:?}\n"
    ));
    opts
}

/// The `consensus` object of a node's `/cluster`.
async fn consensus_of(node: &Node) -> Option<serde_json::Value> {
    let status = cluster_status(node).await?;
    let c = status.get("consensus")?;
    (!c.is_null()).then(|| c.clone())
}

async fn wait_settled(nodes: &[&Node], deadline: Duration) {
    for node in nodes {
        let settled = wait_for("the consensus groups to settle", deadline, || async move {
            let c = consensus_of(node).await?;
            c["settled"].as_bool()?.then_some(())
        })
        .await;
        if let Err(e) = settled {
            let last = consensus_of(node).await;
            panic!("{e}: {} says {last:?}", node.addr);
        }
    }
}

/// Waits until every node's metadata records name `count` members.
async fn wait_members(nodes: &[&Node], count: u64) {
    for node in nodes {
        wait_for("the members to be counted", 2 * DEADLINE, || async move {
            (consensus_of(node).await?["members"] == count).then_some(())
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn the_raft_core_settles_survives_a_kill_and_settles_again() {
    let first = ["r1", "r2", "r3"];
    let ports = [free_port(), free_port(), free_port()];
    let r1 = Node::start_with(consensus_member("r1", ports[0], &[ports[1], ports[2]], &first)).unwrap();
    let r2 = Node::start_with(consensus_member("r2", ports[1], &[ports[0], ports[2]], &first)).unwrap();
    let mut r3 = Node::start_with(consensus_member("r3", ports[2], &[ports[0], ports[1]], &first)).unwrap();
    wait_settled(&[&r1, &r2, &r3], 2 * DEADLINE).await;
    // Every node has a replica of every partition (three nodes, three replicas) and of
    // the metadata group, and all three members are known.
    for node in [&r1, &r2, &r3] {
        let c = consensus_of(node).await.unwrap();
        assert_eq!(c["groups"], 257, "{c}");
        assert_eq!(c["members"], 3, "{c}");
    }
    // A kill: the other two elect leaders for the groups r3 led, and see that the
    // groups with a replica on r3 are not whole any more.
    r3.kill9();
    let (a, b) = (r1.admin.clone(), r2.admin.clone());
    wait_for("the survivors to lead every group", 2 * DEADLINE, || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            let c1 = chat_tests::cluster_status_at(&a).await?["consensus"].clone();
            let c2 = chat_tests::cluster_status_at(&b).await?["consensus"].clone();
            let led = c1["leading"].as_u64()? + c2["leading"].as_u64()?;
            (led == 257 && c1["leaderless"] == 0 && c2["leaderless"] == 0).then_some(())
        }
    })
    .await
    .unwrap();
    wait_for("r1 to see that r3's replicas are gone", 2 * DEADLINE, || async {
        let c = consensus_of(&r1).await?;
        (c["settled"] == false && c["unsettled"].as_u64()? > 0).then_some(())
    })
    .await
    .unwrap();
    // Back from its disk, it catches up and everything settles again.
    r3.restart().unwrap();
    wait_settled(&[&r1, &r2, &r3], 2 * DEADLINE).await;
}

#[tokio::test]
async fn a_dead_node_is_removed_by_an_operator_and_its_replicas_are_placed_elsewhere() {
    let first = ["d1", "d2", "d3", "d4"];
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, name) in first.iter().enumerate() {
        let seeds: Vec<u16> = ports.iter().copied().filter(|p| *p != ports[i]).collect();
        nodes.push(Node::start_with(consensus_member(name, ports[i], &seeds, &first)).unwrap());
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_settled(&all, 2 * DEADLINE).await;
    let admin = nodes[0].admin.trim_start_matches("http://").to_owned();
    // Refusals: a name that is no member, and the node asked about itself.
    let (ok, _, err) = cli(&["remove-node", "nobody", "--admin", &admin]).await.unwrap();
    assert!(!ok && err.contains("404"), "{err}");
    let (ok, _, err) = cli(&["remove-node", "d1", "--admin", &admin]).await.unwrap();
    assert!(!ok && err.contains("409"), "{err}");
    // d4 dies for good; an operator removes it through d1.
    nodes[3].kill9();
    // 503 means "no reachable leader yet" (d4 may have led the metadata group until a
    // moment ago): an operator retries, and so does the test.
    let admin_for_retry = admin.clone();
    let out = wait_for("remove-node to be committed", 2 * DEADLINE, || {
        let admin = admin_for_retry.clone();
        async move {
            let (ok, out, err) = cli(&["remove-node", "d4", "--admin", &admin]).await.ok()?;
            assert!(ok || err.contains("503"), "remove-node failed: {err}");
            ok.then_some(out)
        }
    })
    .await
    .unwrap();
    assert!(out.contains("removed d4"), "{out}");
    // The survivors drop d4 from every group (three replicas on three members again)
    // and settle without it.
    let survivors: Vec<&Node> = nodes[..3].iter().collect();
    for node in &survivors {
        wait_for("the members to be three", DEADLINE, || async move {
            (consensus_of(node).await?["members"] == 3).then_some(())
        })
        .await
        .unwrap();
    }
    wait_settled(&survivors, 3 * DEADLINE).await;
    for node in &survivors {
        let c = consensus_of(node).await.unwrap();
        assert_eq!(c["groups"], 257, "every survivor holds every group again: {c}");
    }
    // A removed node is no member any more (404; 503 is retried).
    wait_for("a second removal to be refused", 2 * DEADLINE, || {
        let admin = admin.clone();
        async move {
            let (ok, _, err) = cli(&["remove-node", "d4", "--admin", &admin]).await.ok()?;
            assert!(!ok && (err.contains("404") || err.contains("503")), "{err}");
            err.contains("404").then_some(())
        }
    })
    .await
    .unwrap();
}

/// With more members than the metadata group has voters, the others follow it as
/// learners: a member that is no voter still knows the members, and takes its place
/// among the voters when one is removed.
#[tokio::test]
async fn members_beyond_the_metadata_voters_follow_it_and_see_membership_change() {
    let first = ["m1", "m2", "m3", "m4", "m5", "m6"];
    let ports: Vec<u16> = first.iter().map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for (i, name) in first.iter().enumerate() {
        let seeds: Vec<u16> = ports.iter().copied().filter(|p| *p != ports[i]).collect();
        nodes.push(Node::start_with(consensus_member(name, ports[i], &seeds, &first)).unwrap());
    }
    // Placement leaves one member out of the metadata group's five voters.
    let id = chat_node::consensus::node_id;
    let members = first
        .iter()
        .map(|n| (id(n), chat_protocol::internal::MemberRecord::default()))
        .collect();
    let meta = u32::from(chat_state::membership::META);
    let voters = chat_state::membership::voters_of(&members, meta, chat_state::membership::META_VOTERS);
    let follower = first.iter().position(|n| !voters.contains(&id(n))).unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_settled(&all, 3 * DEADLINE).await;
    wait_members(&all, 6).await;
    // Another member dies for good and is removed.
    let dead = (follower + 1) % first.len();
    nodes[dead].kill9();
    let admin = nodes[follower].admin.trim_start_matches("http://").to_owned();
    let name = first[dead];
    wait_for("remove-node to be committed", 2 * DEADLINE, || {
        let admin = admin.clone();
        async move {
            let (ok, _, err) = cli(&["remove-node", name, "--admin", &admin]).await.ok()?;
            assert!(ok || err.contains("503"), "remove-node failed: {err}");
            ok.then_some(())
        }
    })
    .await
    .unwrap();
    // Every survivor applies the removal (the follower becomes a voter on the way).
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != dead)
        .map(|(_, n)| n)
        .collect();
    wait_members(&survivors, 5).await;
    wait_settled(&survivors, 3 * DEADLINE).await;
}

#[tokio::test]
async fn a_new_node_joins_through_its_seeds_and_takes_its_share() {
    let first = ["j1", "j2", "j3"];
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, name) in first.iter().enumerate() {
        let seeds: Vec<u16> = ports[..3].iter().copied().filter(|p| *p != ports[i]).collect();
        nodes.push(Node::start_with(consensus_member(name, ports[i], &seeds, &first)).unwrap());
    }
    let three: Vec<&Node> = nodes.iter().collect();
    wait_settled(&three, 2 * DEADLINE).await;
    // j4 is not one of the first members: it asks to join through its seeds.
    nodes.push(Node::start_with(consensus_member("j4", ports[3], &ports[..3], &first)).unwrap());
    let four: Vec<&Node> = nodes.iter().collect();
    wait_members(&four, 4).await;
    wait_settled(&four, 3 * DEADLINE).await;
    // Three replicas over four members: the newcomer holds about three quarters of the
    // 257 groups (the metadata group's five voters include it too).
    let held = consensus_of(&nodes[3]).await.unwrap()["groups"].as_u64().unwrap();
    assert!((150..=230).contains(&held), "j4 holds {held} groups");
}

/// The old core is gone: a configuration asking for it is refused at start, saying what
/// to change, before anything is announced.
#[tokio::test]
async fn a_node_asked_for_the_removed_old_core_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("old.toml");
    std::fs::write(&config, "[cluster]\nconsensus = false\n").unwrap();
    let out = tokio::process::Command::new(chat_tests::bin("chat-node"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(DEADLINE, out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "announced something: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("cluster.consensus = false"), "{stderr}");
}

#[tokio::test]
async fn a_removal_without_a_reachable_majority_is_unavailable_not_done() {
    // One of three first members runs alone: the metadata group has no leader.
    let first = ["u1", "u2", "u3"];
    let ports = [free_port(), free_port(), free_port()];
    let alone = Node::start_with(consensus_member("u1", ports[0], &ports[1..], &first)).unwrap();
    let admin = alone.admin.trim_start_matches("http://").to_owned();
    let (ok, _, err) = cli(&["remove-node", "u3", "--admin", &admin]).await.unwrap();
    assert!(!ok && err.contains("503"), "{err}");
    let c = consensus_of(&alone).await.unwrap();
    assert_eq!(c["settled"], false, "{c}");
}

#[tokio::test]
async fn identical_nodes_with_seeds_only_start_one_cluster_and_a_later_one_joins_it() {
    // No first members named: each waits for three new nodes, then they start the
    // cluster together; a fourth, started later with the same settings, joins it.
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let opts = |name: &str, i: usize| {
        let seeds: Vec<u16> = ports[..3].iter().copied().filter(|p| *p != ports[i]).collect();
        let mut o = NodeOpts::member(name, ports[i], &seeds, COOKIE);
        o.cluster_toml
            .push_str("consensus = true\nreplicas = 3\nbootstrap_expect = 3\n");
        o
    };
    let mut nodes = Vec::new();
    for (i, name) in ["b1", "b2", "b3"].iter().enumerate() {
        nodes.push(Node::start_with(opts(name, i)).unwrap());
    }
    let three: Vec<&Node> = nodes.iter().collect();
    wait_settled(&three, 2 * DEADLINE).await;
    for node in &three {
        assert_eq!(consensus_of(node).await.unwrap()["members"], 3);
    }
    // One cluster: a message from a user on b1 reaches a user on b3.
    let (alice, _) = nodes[0].user("alice").await.unwrap();
    let (bob, mut bob_pushes) = nodes[2].user("bob").await.unwrap();
    alice.send_private("bob", "one cluster").await.unwrap();
    let d = chat_tests::next_delivery(&mut bob_pushes).await.unwrap();
    assert_eq!(d.text, "one cluster");
    drop(bob);
    nodes.push(Node::start_with(opts("b4", 3)).unwrap());
    let four: Vec<&Node> = nodes.iter().collect();
    wait_members(&four, 4).await;
    wait_settled(&four, 3 * DEADLINE).await;
}

#[tokio::test]
async fn a_default_node_is_a_one_node_cluster_of_the_raft_core_serving_at_once() {
    let node = Node::start().unwrap();
    // No wait: its groups have one voter each, which leads as soon as it starts.
    let (alice, _) = node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    alice.send_private("bob", "first").await.unwrap();
    let c = consensus_of(&node).await.unwrap();
    assert_eq!(c["members"], 1, "{c}");
    assert_eq!(c["leaderless"], 0, "{c}");
    assert_eq!(c["groups"], c["leading"], "{c}");
}

#[tokio::test]
async fn a_node_that_leaves_moves_its_replicas_away_then_removes_itself() {
    let first = ["v1", "v2", "v3", "v4"];
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut nodes = Vec::new();
    for (i, name) in first.iter().enumerate() {
        let seeds: Vec<u16> = ports.iter().copied().filter(|p| *p != ports[i]).collect();
        nodes.push(Node::start_with(consensus_member(name, ports[i], &seeds, &first)).unwrap());
    }
    let four: Vec<&Node> = nodes.iter().collect();
    wait_members(&four, 4).await;
    wait_settled(&four, 3 * DEADLINE).await;
    let (alice, _) = nodes[0].user("alice").await.unwrap();
    nodes[1].user("bob").await.unwrap();
    for i in 0..5 {
        alice.send_private("bob", &format!("before {i}")).await.unwrap();
    }
    assert!(consensus_of(&nodes[3]).await.unwrap()["groups"].as_u64().unwrap() > 0);

    let admin = nodes[3].admin.trim_start_matches("http://").to_owned();
    let (ok, out, err) = cli(&["leave", "--admin", &admin]).await.unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("v4 is leaving"), "{out}");
    // Its replicas move to the others, then it removes itself from the members.
    wait_for("v4 to hold no replica", 3 * DEADLINE, || async {
        (consensus_of(&nodes[3]).await?["groups"] == 0).then_some(())
    })
    .await
    .unwrap();
    let three: Vec<&Node> = nodes[..3].iter().collect();
    wait_members(&three, 3).await;
    wait_settled(&three, 3 * DEADLINE).await;
    wait_for("v4's log to say it left", DEADLINE, || async {
        let log = std::fs::read_to_string(&nodes[3].log).ok()?;
        log.contains("left the cluster").then_some(())
    })
    .await
    .unwrap();
    // Nothing acknowledged was lost, with v4 stopped.
    nodes[3].kill9();
    let (bob, _, _) = nodes[2].login("bob").await.unwrap();
    let texts: Vec<String> = bob
        .sync_all(0)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(texts, (0..5).map(|i| format!("before {i}")).collect::<Vec<_>>());
    // The cluster's last member cannot leave it.
    let single = Node::start().unwrap();
    let admin = single.admin.trim_start_matches("http://").to_owned();
    let (ok, _, err) = cli(&["leave", "--admin", &admin]).await.unwrap();
    assert!(!ok && err.contains("409"), "{err}");
}
