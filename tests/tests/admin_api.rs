//! User and group administration on the admin endpoint, and `chat admin`: listing and
//! searching users and groups a page at a time across partitions, resetting a password,
//! deleting a group for members on every node, and what is refused (no token, a wrong
//! one, no such user or group, a bad request).

use chat_client::proto::ErrorCode;
use chat_tests::{
    DEADLINE, Node, NodeOpts, cli, cluster_status, free_port, http_request, http_request_with_body,
    next_closing, wait_for,
};

const TOKEN: &str = "s3cret-admin";
const AUTH: (&str, &str) = ("Authorization", "Bearer s3cret-admin");

fn with_token(mut opts: NodeOpts) -> NodeOpts {
    opts.admin_toml = format!("token = \"{TOKEN}\"\n");
    opts
}

async fn three_nodes(names: [&str; 3]) -> [Node; 3] {
    let ports = [free_port(), free_port(), free_port()];
    let start = |i: usize| {
        let seeds: Vec<u16> = (0..3).filter(|j| *j != i).map(|j| ports[j]).collect();
        let mut opts = NodeOpts::member(names[i], ports[i], &seeds, "admin-api");
        opts.cluster_toml.push_str(&format!(
            "consensus = true\nreplicas = 3\ninitial_members = {names:?}\n"
        ));
        Node::start_with(with_token(opts)).unwrap()
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

async fn get_json(node: &Node, path: &str) -> serde_json::Value {
    let (status, body) = http_request(&node.admin, "GET", path, &[AUTH]).await.unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Follows `path`'s pages of `limit` names (asking each page through the next node) to
/// the end; the names, and how many pages it took.
async fn all_names(
    nodes: &[Node],
    path: &str,
    field: &str,
    prefix: &str,
    limit: usize,
) -> (Vec<String>, usize) {
    let (mut names, mut after, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let node = &nodes[pages % nodes.len()];
        let page = get_json(
            node,
            &format!("{path}?prefix={prefix}&after={after}&limit={limit}"),
        )
        .await;
        pages += 1;
        let items = page[field].as_array().unwrap();
        assert!(items.len() <= limit, "{page}");
        names.extend(items.iter().map(|i| i["name"].as_str().unwrap().to_owned()));
        if page["has_more"] == false {
            return (names, pages);
        }
        after = page["next_after"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn every_new_route_needs_the_admin_token() {
    let routes = [
        ("GET", "/users"),
        ("GET", "/groups?prefix=a"),
        ("POST", "/users/ann/reset-password"),
        ("POST", "/groups/rust/delete"),
    ];
    let plain = Node::start().unwrap();
    for (method, path) in routes {
        let (status, body) = http_request(&plain.admin, method, path, &[]).await.unwrap();
        assert_eq!(status, 403, "{method} {path} without a token configured: {body}");
    }
    let node = Node::start_with(with_token(NodeOpts::default())).unwrap();
    for (method, path) in routes {
        for auth in [None, Some("Bearer wrong"), Some(TOKEN)] {
            let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
            let (status, body) = http_request(&node.admin, method, path, &headers).await.unwrap();
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {body}");
        }
    }
    // The CLI exits non-zero and says why.
    let (ok, _, err) = cli(&[
        "admin",
        "users",
        "--admin",
        &admin_addr(&node),
        "--token",
        "wrong",
    ])
    .await
    .unwrap();
    assert!(!ok && err.contains("401"), "{err}");
}

#[tokio::test]
async fn unknown_names_are_not_found_and_bad_requests_are_refused_not_panicked_on() {
    let node = Node::start_with(with_token(NodeOpts::default())).unwrap();
    node.user("ann").await.unwrap();
    let json = [AUTH, ("Content-Type", "application/json")];
    let reset = |user: &'static str, body: &'static [u8]| {
        let admin = node.admin.clone();
        async move {
            http_request_with_body(
                &admin,
                "POST",
                &format!("/users/{user}/reset-password"),
                &json,
                body,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(reset("nobody", br#"{"password":"fine-pw"}"#).await.0, 404);
    assert_eq!(reset("not%20a%20name", br#"{"password":"fine-pw"}"#).await.0, 404);
    for bad in [
        &b"{"[..],
        b"",
        br#"{"password":""}"#,
        br#"{"password":7}"#,
        br#"{"pw":"x"}"#,
    ] {
        let (status, body) = reset("ann", bad).await;
        assert_eq!(status, 400, "{:?}: {body}", String::from_utf8_lossy(bad));
    }
    let long = serde_json::json!({ "password": "x".repeat(2000) }).to_string();
    let (status, _) = http_request_with_body(
        &node.admin,
        "POST",
        "/users/ann/reset-password",
        &json,
        long.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "a password over the limit");
    let form = [AUTH, ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _) =
        http_request_with_body(&node.admin, "POST", "/users/ann/reset-password", &form, b"pw=x")
            .await
            .unwrap();
    assert_eq!(status, 400);
    for path in [
        "/users?limit=many",
        "/users?colour=red",
        "/groups?limit=-1",
        "/groups?prefix=%zz",
    ] {
        let (status, body) = http_request(&node.admin, "GET", path, &[AUTH]).await.unwrap();
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, _) = http_request(&node.admin, "POST", "/groups/nothing/delete", &[AUTH])
        .await
        .unwrap();
    assert_eq!(status, 404);
    // The CLI exits non-zero for them, and the node still serves.
    let addr = admin_addr(&node);
    for args in [
        &["admin", "delete-group", "nothing"][..],
        &["admin", "disable", "nobody"],
        &["admin", "reset-password", "nobody", "--password", "fine-pw"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--admin", &addr, "--token", TOKEN]);
        let (ok, _, err) = cli(&args).await.unwrap();
        assert!(!ok && err.contains("404"), "{args:?}: {err}");
    }
    assert_eq!(get_json(&node, "/users").await["users"][0]["name"], "ann");
}

#[tokio::test]
async fn users_are_listed_a_page_at_a_time_across_partitions_and_a_reset_password_logs_them_out() {
    let nodes = three_nodes(["ad1", "ad2", "ad3"]).await;
    let mut names: Vec<String> = (0..23).map(|i| format!("user{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let (c, _) = nodes[i % 3].connect().await.unwrap();
        c.register(name, &chat_tests::password(name)).await.unwrap();
    }
    nodes[0].user("zoe").await.unwrap();
    names.sort();
    // Spread over partitions, so over leaders on every node.
    let partitions: std::collections::HashSet<u16> =
        names.iter().map(|n| chat_state::placement::of_user(n)).collect();
    assert!(partitions.len() > 10, "{partitions:?}");
    let (listed, pages) = all_names(&nodes, "/users", "users", "user", 5).await;
    assert_eq!(listed, names);
    assert_eq!(pages, 5, "23 names in pages of 5");
    let (everyone, _) = all_names(&nodes, "/users", "users", "", 1000).await;
    assert_eq!(everyone.len(), 24);
    let page = get_json(&nodes[1], "/users?prefix=user1&limit=3").await;
    assert_eq!(page["users"][0]["name"], "user10");
    assert_eq!(page["users"][0]["disabled"], false);
    assert!(page["users"][0]["created_at_ms"].as_u64().unwrap() > 0);
    assert_eq!(
        (page["has_more"].clone(), page["next_after"].clone()),
        (true.into(), "user12".into())
    );

    // Disabled users say so; the CLI lists them by prefix.
    let addr = admin_addr(&nodes[2]);
    let admin = |args: &[&str]| {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(["--admin".into(), addr.clone(), "--token".into(), TOKEN.into()]);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cli(&args).await.unwrap()
        }
    };
    let (ok, out, err) = admin(&["admin", "disable", "user03"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("user03"), "{out}");
    let (ok, out, err) = admin(&["admin", "users", "--prefix", "user0"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 10, "{out}");
    assert!(
        lines[3].starts_with("user03 ") && lines[3].ends_with("disabled"),
        "{out}"
    );
    assert!(!lines[4].contains("disabled"), "{out}");
    let (ok, _, err) = admin(&["admin", "enable", "user03"]).await;
    assert!(ok, "{err}");

    // A reset closes the user's sessions on every node; the new password logs in, the
    // old one and the old token do not.
    let user = "user07";
    let mut sessions = Vec::new();
    let mut token = String::new();
    for node in &nodes {
        let (c, pushes, ok) = node.login(user).await.unwrap();
        token = ok.token;
        sessions.push((c, pushes));
    }
    let (status, body) = http_request_with_body(
        &nodes[0].admin,
        "POST",
        &format!("/users/{user}/reset-password"),
        &[AUTH, ("Content-Type", "application/x-www-form-urlencoded")],
        b"password=brand+new%21",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    for (_, pushes) in &mut sessions {
        let reason = next_closing(pushes).await.unwrap();
        assert!(reason.contains("reset"), "{reason}");
    }
    let fresh = || async { nodes[1].connect().await.unwrap().0 };
    fresh().await.login(user, "brand new!").await.unwrap();
    let e = fresh()
        .await
        .login(user, &chat_tests::password(user))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    let e = fresh().await.login_token(user, &token).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    // The CLI does the same, with the password given.
    let (ok, _, err) = admin(&["admin", "reset-password", user, "--password", "third-pw"]).await;
    assert!(ok, "{err}");
    fresh().await.login(user, "third-pw").await.unwrap();
    // Each action is logged with who asked.
    let log = std::fs::read_to_string(&nodes[0].log).unwrap();
    assert!(
        log.contains("admin action") && log.contains("reset-password"),
        "{log}"
    );
}

#[tokio::test]
async fn a_deleted_group_is_gone_for_its_members_on_every_node() {
    let nodes = three_nodes(["gd1", "gd2", "gd3"]).await;
    let (ann, _) = nodes[0].user("ann").await.unwrap();
    let (ben, _) = nodes[1].user("ben").await.unwrap();
    let (cy, _) = nodes[2].user("cy").await.unwrap();
    for g in ["rust", "rusty", "go", "doomed"] {
        ann.create_group(g).await.unwrap();
    }
    for member in [&ben, &cy] {
        member.join_group("doomed").await.unwrap();
        member.join_group("rust").await.unwrap();
    }
    ann.send_group("doomed", "last words").await.unwrap();
    // The post reaches the members' inboxes (their copies stay after the deletion).
    for member in [&ben, &cy] {
        wait_for("the post to reach a member", DEADLINE, || async {
            let all = member.sync_all(0).await.ok()?;
            all.iter().any(|d| d.text == "last words").then_some(())
        })
        .await
        .unwrap();
    }

    let page = get_json(&nodes[1], "/groups").await;
    let listed: Vec<&str> = page["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["doomed", "go", "rust", "rusty"]);
    let rust = &page["groups"][2];
    assert_eq!(
        (rust["creator"].as_str(), rust["members"].as_u64()),
        (Some("ann"), Some(3))
    );
    let (names, pages) = all_names(&nodes, "/groups", "groups", "rus", 1).await;
    assert_eq!((names, pages), (vec!["rust".to_owned(), "rusty".to_owned()], 2));

    let addr = admin_addr(&nodes[2]);
    let (ok, out, err) = cli(&[
        "admin", "groups", "--prefix", "do", "--admin", &addr, "--token", TOKEN,
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.starts_with("doomed  by ann  created ") && out.trim_end().ends_with("3 members"),
        "{out}"
    );
    let (ok, out, err) = cli(&[
        "admin",
        "delete-group",
        "doomed",
        "--admin",
        &addr,
        "--token",
        TOKEN,
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("deleted group doomed"), "{out}");

    for member in [&ann, &ben, &cy] {
        let groups = member.my_groups().await.unwrap();
        assert!(!groups.contains(&"doomed".to_owned()), "{groups:?}");
        assert!(groups.contains(&"rust".to_owned()), "{groups:?}");
        let e = member.send_group("doomed", "anyone?").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
        let all = member.sync_all(0).await.unwrap();
        if !std::ptr::eq(member, &ann) {
            assert!(
                all.iter().any(|d| d.text == "last words"),
                "the members' copies stay"
            );
        }
    }
    let page = get_json(&nodes[0], "/groups").await;
    assert_eq!(page["groups"].as_array().unwrap().len(), 3, "{page}");
    let (status, _) = http_request(&nodes[0].admin, "POST", "/groups/doomed/delete", &[AUTH])
        .await
        .unwrap();
    assert_eq!(status, 404, "deleted already");
    // Its name is free again.
    ben.create_group("doomed").await.unwrap();
    let members = ben.members("doomed").await.unwrap();
    assert_eq!(members, vec!["ben".to_owned()]);
    let log = std::fs::read_to_string(&nodes[2].log).unwrap();
    assert!(log.contains("admin action") && log.contains("doomed"), "{log}");
}

/// The admin endpoint's host:port (the CLI takes no scheme).
fn admin_addr(node: &Node) -> String {
    node.admin.trim_start_matches("http://").to_owned()
}

/// The value of an unlabelled metric line `name value`.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test]
async fn a_deleted_user_is_gone_from_every_replica_and_the_others_keep_what_it_sent() {
    let nodes = three_nodes(["del1", "del2", "del3"]).await;
    let (reg, _) = nodes[0].connect().await.unwrap();
    let users = ["gone", "kim", "lee"];
    for u in users {
        reg.register(u, &chat_tests::password(u)).await.unwrap();
    }
    let (gone, mut gone_rx, _) = nodes[0].login("gone").await.unwrap();
    let (kim, _kim_rx, _) = nodes[1].login("kim").await.unwrap();
    let (lee, _lee_rx, _) = nodes[2].login("lee").await.unwrap();
    // Messages both ways, a contact, a group it owns with lee in it, and kim's group.
    for i in 0..3 {
        kim.send_private("gone", &format!("to gone {i}")).await.unwrap();
    }
    gone.send_private("kim", "from gone").await.unwrap();
    gone.contact_request("kim").await.unwrap();
    kim.contact_accept("gone").await.unwrap();
    gone.create_group("gones").await.unwrap();
    lee.join_group("gones").await.unwrap();
    kim.create_group("kims").await.unwrap();
    gone.join_group("kims").await.unwrap();
    gone.send_group("kims", "hello kims").await.unwrap();

    // Without the token: refused.
    let (status, _) = http_request(&nodes[1].admin, "POST", "/users/gone/delete", &[])
        .await
        .unwrap();
    assert_eq!(status, 401);
    let (status, body) = http_request(&nodes[1].admin, "POST", "/users/gone/delete", &[AUTH])
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    next_closing(&mut gone_rx).await.unwrap();
    let (status, _) = http_request(&nodes[2].admin, "POST", "/users/nobody/delete", &[AUTH])
        .await
        .unwrap();
    assert_eq!(status, 404);

    // It cannot log in, and its name stays taken.
    let (c, _) = nodes[2].connect().await.unwrap();
    let err = c.login("gone", &chat_tests::password("gone")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCredentials));
    let err = c.register("gone", "another").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UsernameTaken));
    // Its contact lost it; its group passed to lee; kim's group lost it.
    wait_for("kim's contacts to lose it", DEADLINE, || async {
        kim.contacts().await.ok()?.is_empty().then_some(())
    })
    .await
    .unwrap();
    assert_eq!(lee.group_info("gones").await.unwrap().owner, "lee");
    let members = kim.members("kims").await.unwrap();
    assert_eq!(members, ["kim"]);
    let err = kim.send_private("gone", "still there?").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    // What it sent stays with the others, under its name.
    let kims = kim.sync_all(0).await.unwrap();
    assert!(kims.iter().any(|d| d.from == "gone" && d.text == "from gone"));
    assert!(kims.iter().any(|d| d.from == "gone" && d.text == "hello kims"));

    // Every replica holds exactly what the others' inboxes hold: nothing of gone's.
    let (kim, lee) = (&kim, &lee);
    let nodes = &nodes;
    wait_for("every replica to drop its inbox", DEADLINE, || async move {
        let mut left = 0;
        for c in [kim, lee] {
            left += c.sync_all(0).await.ok()?.len() as u64;
        }
        for n in nodes {
            let (_, text) = http_request(&n.admin, "GET", "/metrics", &[]).await.ok()?;
            if metric(&text, "chat_inbox_messages")? != left {
                return None;
            }
        }
        Some(())
    })
    .await
    .unwrap();
}
