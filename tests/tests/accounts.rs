//! Accounts and login through the real binary: register, login, wrong password, tokens,
//! naming rules, and requests in the wrong order.

use chat_client::proto::{
    ClientFrame, ErrorCode, LoginRequest, Ping, SendPrivate, client_frame::Body, login_request::Credential,
    server_frame,
};
use chat_tests::{Node, Raw, RawEvent, password};

#[tokio::test]
async fn register_then_login_gives_a_token_that_logs_in_another_device() {
    let node = Node::start().unwrap();
    let (c, _) = node.connect().await.unwrap();
    c.register("alice", "secret").await.unwrap();
    let ok = c.login("alice", "secret").await.unwrap();
    assert_eq!(ok.token.len(), 64);
    assert!(ok.token_expires_at_ms > 0);
    assert_eq!(ok.nodes.len(), 1);
    assert_eq!(ok.nodes[0].client_addr, node.addr);

    let (d, _) = node.connect().await.unwrap();
    d.login_token("alice", &ok.token).await.unwrap();
    let (e, _) = node.connect().await.unwrap();
    let err = e.login_token("alice", &"0".repeat(64)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCredentials));
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_refused_alike() {
    let node = Node::start().unwrap();
    let (c, _) = node.connect().await.unwrap();
    c.register("bob", "right").await.unwrap();
    let wrong = c.login("bob", "wrong").await.unwrap_err();
    let unknown = c.login("nobody", "right").await.unwrap_err();
    assert_eq!(wrong.code(), Some(ErrorCode::InvalidCredentials));
    assert_eq!(unknown.code(), Some(ErrorCode::InvalidCredentials));
    // The session is still usable after a failed login.
    c.login("bob", "right").await.unwrap();
}

#[tokio::test]
async fn taken_and_invalid_usernames_get_clear_errors() {
    let node = Node::start().unwrap();
    let (c, _) = node.connect().await.unwrap();
    c.register("carol", "pw").await.unwrap();
    let taken = c.register("carol", "other").await.unwrap_err();
    assert_eq!(taken.code(), Some(ErrorCode::UsernameTaken));
    assert!(taken.to_string().contains("carol"), "{taken}");
    for bad in ["", "has space", "slash/name", &"x".repeat(33)] {
        let err = c.register(bad, "pw").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidName), "{bad:?}: {err}");
    }
    let empty_pw = c.register("dave", "").await.unwrap_err();
    assert_eq!(empty_pw.code(), Some(ErrorCode::BadRequest));
}

#[tokio::test]
async fn requests_before_login_are_refused_and_the_session_carries_on() {
    let node = Node::start().unwrap();
    let (c, _) = node.connect().await.unwrap();
    let err = c.send_private("anyone", "hi").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAuthenticated));
    let err = c.sync(0, 10).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAuthenticated));
    c.ping(7).await.unwrap();
    c.register("erin", "pw").await.unwrap();
    c.login("erin", "pw").await.unwrap();
    let again = c.login("erin", "pw").await.unwrap_err();
    assert_eq!(again.code(), Some(ErrorCode::Unexpected));
}

#[tokio::test]
async fn requests_before_hello_are_answered_with_unexpected() {
    let node = Node::start().unwrap();
    let mut raw = Raw::connect(&node.addr).await.unwrap();
    raw.send(&ClientFrame {
        request_id: 5,
        body: Some(Body::Login(LoginRequest {
            username: "frank".into(),
            credential: Some(Credential::Password(password("frank"))),
            device: String::new(),
        })),
    })
    .await
    .unwrap();
    let RawEvent::Frame(f) = raw.next().await.unwrap() else {
        panic!("closed")
    };
    assert_eq!(f.request_id, 5);
    match f.body {
        Some(server_frame::Body::Error(e)) => assert_eq!(e.code, ErrorCode::Unexpected as i32),
        other => panic!("expected an error, got {other:?}"),
    }
    // Ping works in any state.
    raw.send(&ClientFrame {
        request_id: 6,
        body: Some(Body::Ping(Ping { nonce: 1 })),
    })
    .await
    .unwrap();
    let RawEvent::Frame(f) = raw.next().await.unwrap() else {
        panic!("closed")
    };
    assert!(matches!(f.body, Some(server_frame::Body::Pong(_))));
    // A send before Hello is refused too, not processed.
    raw.send(&ClientFrame {
        request_id: 7,
        body: Some(Body::SendPrivate(SendPrivate {
            to: "x".into(),
            client_msg_id: "1".into(),
            text: "t".into(),
            ..SendPrivate::default()
        })),
    })
    .await
    .unwrap();
    let RawEvent::Frame(f) = raw.next().await.unwrap() else {
        panic!("closed")
    };
    assert!(matches!(f.body, Some(server_frame::Body::Error(_))));
}

/// The value of an unlabelled metric line `name value`.
async fn metric(node: &Node, name: &str) -> u64 {
    let (_, text) = chat_tests::http_get(&node.admin, "/metrics").await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A login of a user that does not exist is verified against a dummy hash, so it costs
/// what a wrong password of a real user costs (names cannot be found by timing).
#[tokio::test]
async fn a_login_of_an_unknown_user_costs_a_password_check_like_a_wrong_password() {
    let node = Node::start().unwrap();
    let (c, _) = node.connect().await.unwrap();
    c.register("carol", "right").await.unwrap();
    let before = metric(&node, "chat_password_checks_total").await;
    c.login("carol", "wrong").await.unwrap_err();
    assert_eq!(metric(&node, "chat_password_checks_total").await, before + 1);
    c.login("nobody", "right").await.unwrap_err();
    assert_eq!(
        metric(&node, "chat_password_checks_total").await,
        before + 2,
        "the unknown user's login was checked against a hash too"
    );
}

/// A connection from another loopback address (the whole of 127/8 is local on Linux).
async fn connect_from(node: &Node, local: &str) -> chat_client::Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(node.addr.parse().unwrap()).await.unwrap();
    chat_client::Client::over(stream).await.unwrap().0
}

#[tokio::test]
async fn password_guessing_is_held_back_per_account_and_per_address_without_slowing_others() {
    let node = Node::start_with(chat_tests::NodeOpts {
        auth_toml: "max_failed_logins = 3\nmax_failed_logins_per_address = 6\n".into(),
        ..Default::default()
    })
    .unwrap();
    let (c, _) = node.connect().await.unwrap();
    c.register("dave", "right").await.unwrap();
    c.register("erin", "right").await.unwrap();
    for _ in 0..3 {
        let e = c.login("dave", "guess").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials));
    }
    // Past the free failures the account is held back, from any address, before any
    // hashing: even the right password waits.
    let checks = metric(&node, "chat_password_checks_total").await;
    c.login("dave", "guess").await.unwrap_err();
    let held = c.login("dave", "right").await.unwrap_err();
    assert_eq!(held.code(), Some(ErrorCode::RateLimited), "{held}");
    assert!(held.retry_after().is_some_and(|d| d.as_millis() > 0), "{held:?}");
    assert!(held.to_string().contains("try again in"), "{held}");
    let elsewhere = connect_from(&node, "127.0.0.2").await;
    let held = elsewhere.login("dave", "right").await.unwrap_err();
    assert_eq!(held.code(), Some(ErrorCode::RateLimited), "{held}");
    // Another user logs in at once, from the same address too (it is below its limit).
    c.login("erin", "right").await.unwrap();
    // Only the failure that set the delay and erin's login were hashed.
    assert_eq!(metric(&node, "chat_password_checks_total").await, checks + 2);
    // Guesses at other accounts from one address hold that address back...
    let (g, _) = node.connect().await.unwrap();
    for user in ["u1", "u2", "u3"] {
        let e = g.login(user, "guess").await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    }
    let held = g.login("erin", "right").await.unwrap_err();
    assert_eq!(held.code(), Some(ErrorCode::RateLimited), "{held}");
    // ...but not another address.
    let other = connect_from(&node, "127.0.0.3").await;
    other.login("erin", "right").await.unwrap();
}

#[tokio::test]
async fn registrations_from_one_address_are_limited_per_minute() {
    let node = Node::start_with(chat_tests::NodeOpts {
        auth_toml: "registrations_per_minute = 3\n".into(),
        ..Default::default()
    })
    .unwrap();
    let (c, _) = node.connect().await.unwrap();
    for name in ["r1", "r2", "r3"] {
        c.register(name, "pw").await.unwrap();
    }
    let held = c.register("r4", "pw").await.unwrap_err();
    assert_eq!(held.code(), Some(ErrorCode::RateLimited), "{held}");
    assert!(held.retry_after().is_some_and(|d| d.as_secs() <= 20), "{held:?}");
    // Another address has its own allowance; the connection goes on.
    connect_from(&node, "127.0.0.2")
        .await
        .register("r4", "pw")
        .await
        .unwrap();
    c.login("r1", "pw").await.unwrap();
}

/// Two nodes: the first starts the cluster, the second joins through it.
async fn two_nodes() -> Vec<Node> {
    let seed = chat_tests::free_port();
    let first = Node::start_with(chat_tests::NodeOpts::member("acc1", seed, &[], "acc")).unwrap();
    let second = Node::start_with(chat_tests::NodeOpts::member(
        "acc2",
        chat_tests::free_port(),
        &[seed],
        "acc",
    ))
    .unwrap();
    chat_tests::wait_settled(&[&first, &second], 2).await.unwrap();
    vec![first, second]
}

#[tokio::test]
async fn logging_out_everywhere_revokes_every_token_and_closes_sessions_on_every_node() {
    let nodes = two_nodes().await;
    let (a, _) = nodes[0].connect().await.unwrap();
    a.register("frank", "pw").await.unwrap();
    let token = a.login("frank", "pw").await.unwrap().token;
    let (b, mut b_pushes) = nodes[1].connect().await.unwrap();
    b.login_token("frank", &token).await.unwrap();
    let (c, mut c_pushes) = nodes[0].connect().await.unwrap();
    c.login("frank", "pw").await.unwrap();

    a.logout_everywhere().await.unwrap();
    assert!(
        chat_tests::next_closing(&mut b_pushes)
            .await
            .unwrap()
            .contains("logged out everywhere")
    );
    assert!(
        chat_tests::next_closing(&mut c_pushes)
            .await
            .unwrap()
            .contains("logged out everywhere")
    );
    // This session is logged out, and stays open for another login.
    let e = a.sync(0, 10).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAuthenticated), "{e}");
    // Every token is revoked; the password still works.
    let (d, _) = nodes[1].connect().await.unwrap();
    let e = d.login_token("frank", &token).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    a.login("frank", "pw").await.unwrap();
}

#[tokio::test]
async fn changing_the_password_needs_the_old_one_and_closes_the_other_sessions() {
    let nodes = two_nodes().await;
    let (a, mut a_pushes) = nodes[0].connect().await.unwrap();
    a.register("gail", "old-pw").await.unwrap();
    let kept = a.login("gail", "old-pw").await.unwrap().token;
    let (b, mut b_pushes) = nodes[1].connect().await.unwrap();
    let other = b.login("gail", "old-pw").await.unwrap().token;

    let e = a.change_password("wrong", "new-pw").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    a.change_password("old-pw", "new-pw").await.unwrap();
    assert!(
        chat_tests::next_closing(&mut b_pushes)
            .await
            .unwrap()
            .contains("password was changed")
    );
    // This session goes on, and its token still logs in; the other's does not.
    a.sync(0, 10).await.unwrap();
    assert!(a_pushes.try_recv().is_err(), "nothing closed this session");
    let (c, _) = nodes[1].connect().await.unwrap();
    c.login_token("gail", &kept).await.unwrap();
    let (d, _) = nodes[0].connect().await.unwrap();
    let e = d.login_token("gail", &other).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InvalidCredentials), "{e}");
    assert_eq!(
        d.login("gail", "old-pw").await.unwrap_err().code(),
        Some(ErrorCode::InvalidCredentials)
    );
    d.login("gail", "new-pw").await.unwrap();
}
