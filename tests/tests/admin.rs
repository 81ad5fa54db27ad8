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

#[tokio::test]
async fn user_administration_needs_the_admin_token() {
    use chat_tests::http_request;
    let plain = Node::start().unwrap();
    let (status, body) = http_request(&plain.admin, "POST", "/users/x/disable", &[])
        .await
        .unwrap();
    assert_eq!(status, 403, "no token configured: {body}");
    let node = Node::start_with(NodeOpts {
        admin_toml: "token = \"s3cret-admin\"\n".into(),
        ..NodeOpts::default()
    })
    .unwrap();
    for auth in [None, Some("Bearer wrong"), Some("s3cret-admin")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let (status, body) = http_request(&node.admin, "POST", "/users/x/disable", &headers)
            .await
            .unwrap();
        assert_eq!(status, 401, "{auth:?}: {body}");
    }
    // With a token set, the other changes need it too.
    let (status, _) = http_request(&node.admin, "POST", "/leave", &[]).await.unwrap();
    assert_eq!(status, 401);
    // Reading stays open.
    assert_eq!(http_get(&node.admin, "/health").await.unwrap().0, 200);
}

#[tokio::test]
async fn an_operator_disables_an_account_closing_its_sessions_and_enables_it_again() {
    use chat_client::proto::ErrorCode;
    use chat_tests::http_request;
    let node = Node::start_with(NodeOpts {
        admin_toml: "token = \"s3cret-admin\"\n".into(),
        ..NodeOpts::default()
    })
    .unwrap();
    let auth = [("Authorization", "Bearer s3cret-admin")];
    let post = |path: String| {
        let admin = node.admin.clone();
        async move { http_request(&admin, "POST", &path, &auth).await.unwrap() }
    };
    let (ivy, mut pushes) = node.connect().await.unwrap();
    ivy.register("ivy", &chat_tests::password("ivy")).await.unwrap();
    let token = ivy
        .login("ivy", &chat_tests::password("ivy"))
        .await
        .unwrap()
        .token;
    let (status, body) = post("/users/ivy/disable".into()).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        chat_tests::next_closing(&mut pushes)
            .await
            .unwrap()
            .contains("disabled")
    );
    let (c, _) = node.connect().await.unwrap();
    let e = c.login("ivy", &chat_tests::password("ivy")).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::AccountDisabled), "{e}");
    // A wrong password does not learn that the account is disabled.
    let e = c.login("ivy", "wrong").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    let e = c.login_token("ivy", &token).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    assert_eq!(post("/users/ivy/enable".into()).await.0, 200);
    c.login("ivy", &chat_tests::password("ivy")).await.unwrap();
    // Logged out everywhere by the operator: its sessions close, its tokens go.
    let (d, mut d_pushes) = node.connect().await.unwrap();
    let token = d.login("ivy", &chat_tests::password("ivy")).await.unwrap().token;
    assert_eq!(post("/users/ivy/logout".into()).await.0, 200);
    assert!(
        chat_tests::next_closing(&mut d_pushes)
            .await
            .unwrap()
            .contains("operator")
    );
    let (e2, _) = node.connect().await.unwrap();
    let e = e2.login_token("ivy", &token).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    assert_eq!(post("/users/nobody/disable".into()).await.0, 404);
    assert_eq!(post("/users/ivy/explode".into()).await.0, 404);
    // Every action is in the node's log with who asked.
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("admin action") && log.contains("disable"), "{log}");
}
