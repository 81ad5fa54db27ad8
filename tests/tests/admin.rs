//! The admin HTTP endpoint of a real node: `/health`, `/metrics` and `/cluster`.

use chat_tests::{DEADLINE, Node, NodeOpts, free_port, http_get, next_delivery, wait_for};

/// The value of an unlabelled metric line `name value`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_single_node_is_healthy_and_lists_itself() {
    let node = Node::start().unwrap();
    let (status, body) = http_get(&node.admin, "/health").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(&node.admin, "/cluster").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains(&format!("\"client_addr\":\"{}\"", node.addr)),
        "{body}"
    );
    let (status, _) = http_get(&node.admin, "/nope").await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_node_with_seeds_is_not_ready_until_it_has_joined() {
    let ports = [free_port(), free_port()];
    let joiner = Node::start_with(NodeOpts::member("late", ports[1], &[ports[0]], "c")).unwrap();
    let (status, body) = http_get(&joiner.admin, "/health").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let _seed = Node::start_with(NodeOpts::member("seed", ports[0], &[], "c")).unwrap();
    wait_for("the joiner to become ready", DEADLINE, || async {
        let (status, _) = http_get(&joiner.admin, "/health").await.ok()?;
        (status == 200).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn metrics_count_connections_logins_and_messages() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (_bob, mut rx) = node.user("bob").await.unwrap();
    alice.send_private("bob", "counted").await.unwrap();
    next_delivery(&mut rx).await.unwrap();
    let (status, text) = http_get(&node.admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "chat_connections"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "chat_online_users"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "chat_logins_total"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "chat_messages_in_total"), Some(1.0), "{text}");
    assert_eq!(metric(&text, "chat_messages_out_total"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "chat_send_latency_seconds_count"),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "chat_sled_size_bytes").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    assert!(text.contains("chat_cluster_peers{state=\"up\"} 0"), "{text}");
    // Every acknowledged write waited for a sync to disk.
    assert!(
        metric(&text, "chat_storage_syncs_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    // bob's copy and alice's own (for her other devices).
    assert_eq!(metric(&text, "chat_inbox_messages"), Some(2.0), "{text}");
    assert_eq!(
        metric(&text, "chat_delivery_latency_seconds_count"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn the_stored_message_gauge_is_counted_from_disk_after_a_restart() {
    let mut node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    for i in 0..3 {
        alice.send_private("bob", &format!("m{i}")).await.unwrap();
    }
    node.restart().unwrap();
    let admin = node.admin.clone();
    // Three in bob's inbox, and alice's own copies of them.
    wait_for("the gauge to count the 6 stored messages", DEADLINE, || {
        let admin = admin.clone();
        async move {
            let (_, text) = http_get(&admin, "/metrics").await.ok()?;
            (metric(&text, "chat_inbox_messages") == Some(6.0)).then_some(())
        }
    })
    .await
    .unwrap();
}

/// A node's log written to a file (stderr not a terminal) has no ANSI colour codes.
#[tokio::test]
async fn a_log_written_to_a_file_has_no_colour_codes() {
    let node = Node::start().unwrap();
    let (_, _) = node.user("painter").await.unwrap();
    let log = wait_for("the node to log its start", DEADLINE, || async {
        let log = std::fs::read_to_string(&node.log).ok()?;
        log.contains("node started").then_some(log)
    })
    .await
    .unwrap();
    assert!(!log.contains('\u{1b}'), "escape codes in the log: {log}");
}

/// A node whose seed cannot be reached says so in its log at the default level, with
/// the seed's address (and keeps saying it, paced by the redial backoff).
#[tokio::test]
async fn a_node_logs_a_seed_it_cannot_reach() {
    let nobody = free_port();
    let node = Node::start_with(NodeOpts::member("lonely", free_port(), &[nobody], "c")).unwrap();
    let seed = format!("127.0.0.1:{nobody}");
    wait_for("the node to log the unreachable seed", DEADLINE, || async {
        let log = std::fs::read_to_string(&node.log).ok()?;
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("cannot reach seed") && l.contains(&seed))
            .then_some(())
    })
    .await
    .unwrap();
}
