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
        })),
    })
    .await
    .unwrap();
    let RawEvent::Frame(f) = raw.next().await.unwrap() else {
        panic!("closed")
    };
    assert!(matches!(f.body, Some(server_frame::Body::Error(_))));
}
