//! Cluster membership through real processes: mesh formation from seeds, the view after a
//! seed leaves, cluster port 0, wrong cookies, garbage on the cluster port, and frozen peers.

use chat_tests::{DEADLINE, Node, NodeOpts, free_port, send_signal, wait_for};
use std::collections::BTreeMap;
use std::time::Duration;

const COOKIE: &str = "test-cookie";

/// name -> up, as `node`'s admin endpoint lists the cluster.
async fn view(node: &Node) -> Option<BTreeMap<String, bool>> {
    let status = chat_tests::cluster_status(node).await?;
    let nodes = status["nodes"].as_array()?;
    nodes
        .iter()
        .map(|n| Some((n["name"].as_str()?.to_owned(), n["up"].as_bool()?)))
        .collect()
}

async fn wait_view(node: &Node, want: &[(&str, bool)], deadline: Duration) {
    let want: BTreeMap<String, bool> = want.iter().map(|(n, up)| (n.to_string(), *up)).collect();
    let end = std::time::Instant::now() + deadline;
    let mut last = None;
    while std::time::Instant::now() < end {
        last = view(node).await;
        if last.as_ref() == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("view of {} never became {want:?}; last {last:?}", node.addr);
}

#[tokio::test]
async fn three_nodes_with_one_seed_each_form_a_full_mesh_that_outlives_the_seed() {
    let ports = [free_port(), free_port(), free_port()];
    let mut n1 = Node::start_with(NodeOpts::member("n1", ports[0], &[], COOKIE)).unwrap();
    // A chain: n2 knows only n1, n3 knows only n2; Transitive mode closes the triangle.
    let n2 = Node::start_with(NodeOpts::member("n2", ports[1], &[ports[0]], COOKIE)).unwrap();
    let n3 = Node::start_with(NodeOpts::member("n3", ports[2], &[ports[1]], COOKIE)).unwrap();
    let all = [("n1", true), ("n2", true), ("n3", true)];
    for node in [&n1, &n2, &n3] {
        wait_view(node, &all, DEADLINE).await;
    }
    // The seed leaves; the others stay connected to each other.
    n1.terminate().unwrap();
    let without_seed = [("n1", false), ("n2", true), ("n3", true)];
    wait_view(&n2, &without_seed, DEADLINE).await;
    wait_view(&n3, &without_seed, DEADLINE).await;
    // And it rejoins by itself when it comes back (the others redial it).
    n1.restart().unwrap();
    for node in [&n1, &n2, &n3] {
        wait_view(node, &all, DEADLINE).await;
    }
}

#[tokio::test]
async fn nodes_on_cluster_port_zero_print_their_real_address_and_form_a_mesh() {
    let on_port_zero = |name: &str, seeds: &[&str]| NodeOpts {
        name: Some(name.to_owned()),
        cluster_toml: format!("listen = \"127.0.0.1:0\"\nseeds = {seeds:?}\ncookie = {COOKIE:?}\n"),
        ..NodeOpts::default()
    };
    let z1 = Node::start_with(on_port_zero("z1", &[])).unwrap();
    assert!(
        z1.cluster.starts_with("127.0.0.1:") && !z1.cluster.ends_with(":0"),
        "printed cluster address {:?}",
        z1.cluster
    );
    // A chain again: z3 reaches z1 only through the address z2 passes on, which must
    // carry z1's real port too.
    let z2 = Node::start_with(on_port_zero("z2", &[&z1.cluster])).unwrap();
    let z3 = Node::start_with(on_port_zero("z3", &[&z2.cluster])).unwrap();
    let all = [("z1", true), ("z2", true), ("z3", true)];
    for node in [&z1, &z2, &z3] {
        wait_view(node, &all, DEADLINE).await;
    }
}

#[tokio::test]
async fn a_node_with_the_wrong_cookie_is_refused_and_says_so() {
    let ports = [free_port(), free_port()];
    let good = Node::start_with(NodeOpts::member("good", ports[0], &[], COOKIE)).unwrap();
    let bad = Node::start_with(NodeOpts::member("bad", ports[1], &[ports[0]], "not-the-cookie")).unwrap();
    wait_for("a refusal in a log", DEADLINE, || async {
        let logs = std::fs::read_to_string(&good.log).ok()? + &std::fs::read_to_string(&bad.log).ok()?;
        logs.contains("refused").then_some(())
    })
    .await
    .unwrap();
    // Neither ever lists the other.
    wait_view(&good, &[("good", true)], Duration::from_secs(3)).await;
    wait_view(&bad, &[("bad", true)], Duration::from_secs(3)).await;
}

#[tokio::test]
async fn garbage_on_the_cluster_port_does_not_crash_the_node() {
    use tokio::io::AsyncWriteExt;
    let ports = [free_port(), free_port()];
    let n1 = Node::start_with(NodeOpts::member("g1", ports[0], &[], COOKIE)).unwrap();
    for garbage in [
        &[0xffu8; 64][..],
        b"GET / HTTP/1.1\r\n\r\n",
        &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 1, 2, 3][..],
    ] {
        // The cluster listener starts just after the client one: wait for it.
        let mut s = wait_for("the cluster listener", DEADLINE, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", ports[0])).await.ok()
        })
        .await
        .unwrap();
        let _ = s.write_all(garbage).await;
        drop(s);
    }
    // The node still serves clients, and a real peer can still join.
    let n2 = Node::start_with(NodeOpts::member("g2", ports[1], &[ports[0]], COOKIE)).unwrap();
    wait_view(&n1, &[("g1", true), ("g2", true)], DEADLINE).await;
    wait_view(&n2, &[("g1", true), ("g2", true)], DEADLINE).await;
}

#[tokio::test]
async fn a_frozen_peer_is_marked_down_and_up_again_when_it_thaws() {
    let ports = [free_port(), free_port()];
    let n1 = Node::start_with(NodeOpts::member("f1", ports[0], &[], COOKIE)).unwrap();
    let n2 = Node::start_with(NodeOpts::member("f2", ports[1], &[ports[0]], COOKIE)).unwrap();
    wait_view(&n1, &[("f1", true), ("f2", true)], DEADLINE).await;
    send_signal(n2.pid(), "STOP").unwrap();
    let frozen_at = std::time::Instant::now();
    wait_view(&n1, &[("f1", true), ("f2", false)], Duration::from_secs(10)).await;
    let took = frozen_at.elapsed();
    send_signal(n2.pid(), "CONT").unwrap();
    assert!(
        took < Duration::from_secs(8),
        "took {took:?} to notice the frozen peer"
    );
    wait_view(&n1, &[("f1", true), ("f2", true)], DEADLINE).await;
}

#[tokio::test]
async fn the_online_list_is_cluster_wide_from_every_node() {
    let ports = [free_port(), free_port(), free_port()];
    let n1 = Node::start_with(NodeOpts::member("o1", ports[0], &[], COOKIE)).unwrap();
    let n2 = Node::start_with(NodeOpts::member("o2", ports[1], &[ports[0]], COOKIE)).unwrap();
    let n3 = Node::start_with(NodeOpts::member("o3", ports[2], &[ports[0]], COOKIE)).unwrap();
    let all = [("o1", true), ("o2", true), ("o3", true)];
    for node in [&n1, &n2, &n3] {
        wait_view(node, &all, DEADLINE).await;
    }
    chat_tests::wait_settled(&[&n1, &n2, &n3], 3).await.unwrap();
    let (alice, _) = n1.user("alice").await.unwrap();
    let (bob, _) = n2.user("bob").await.unwrap();
    let (carol, _) = n3.user("carol").await.unwrap();
    // The probes of wait_view logged out when their connections closed.
    for client in [&alice, &bob, &carol] {
        let c = client.clone();
        wait_for("everyone in every online list", DEADLINE, || {
            let c = c.clone();
            async move { (c.online().await.ok()? == ["alice", "bob", "carol"]).then_some(()) }
        })
        .await
        .unwrap();
    }
    bob.logout().await.unwrap();
    wait_for("bob to leave alice's list", DEADLINE, || {
        let a = alice.clone();
        async move { (a.online().await.ok()? == ["alice", "carol"]).then_some(()) }
    })
    .await
    .unwrap();
}
