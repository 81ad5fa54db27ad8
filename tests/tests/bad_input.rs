//! Bad input through the real binary: garbage, oversized and malformed frames, unknown
//! request types, login and idle timeouts, and slow readers. None of it may crash the
//! node or disturb other users.

use bytes::BytesMut;
use chat_client::proto::{ClientFrame, ErrorCode, Hello, server_frame::Body};
use chat_protocol::codec::encode_raw_frame;
use chat_tests::{Node, NodeOpts, Raw, RawEvent, next_delivery};
use prost::Message;
use std::time::Duration;

fn error_code(frame: &chat_client::proto::ServerFrame) -> Option<ErrorCode> {
    match &frame.body {
        Some(Body::Error(e)) => ErrorCode::try_from(e.code).ok(),
        Some(Body::Closing(c)) => ErrorCode::try_from(c.code).ok(),
        _ => None,
    }
}

/// Two users who chat while the test abuses the node; proves others are unaffected.
async fn bystanders_still_chat(node: &Node, n: usize) {
    let (alice, _, _) = node.login("alice").await.unwrap();
    let (_bob, mut rx, _) = node.login("bob").await.unwrap();
    let text = format!("still fine {n}");
    alice.send_private("bob", &text).await.unwrap();
    assert_eq!(next_delivery(&mut rx).await.unwrap().text, text);
}

async fn node_with_bystanders(opts: NodeOpts) -> Node {
    let node = Node::start_with(opts).unwrap();
    node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    node
}

#[tokio::test]
async fn garbage_bytes_get_an_error_and_a_closed_connection() {
    let node = node_with_bystanders(NodeOpts::default()).await;
    let mut raw = Raw::connect(&node.addr).await.unwrap();
    // Ten bytes with the continuation bit set: not a valid varint32 length.
    raw.write(&[0xff; 10]).await.unwrap();
    let frames = raw.until_closed().await.unwrap();
    assert!(
        frames
            .iter()
            .any(|f| error_code(f) == Some(ErrorCode::BadRequest)),
        "{frames:?}"
    );
    bystanders_still_chat(&node, 1).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_with_frame_too_large_and_closed() {
    let node = node_with_bystanders(NodeOpts::default()).await;
    let mut raw = Raw::connect(&node.addr).await.unwrap();
    // Announce 1 GiB; the node must refuse it from the prefix alone.
    let mut buf = BytesMut::new();
    prost::encoding::encode_varint(1 << 30, &mut buf);
    raw.write(&buf).await.unwrap();
    let frames = raw.until_closed().await.unwrap();
    assert!(
        frames
            .iter()
            .any(|f| error_code(f) == Some(ErrorCode::FrameTooLarge)),
        "{frames:?}"
    );
    bystanders_still_chat(&node, 2).await;
}

#[tokio::test]
async fn malformed_protobuf_in_a_good_frame_gets_bad_request_and_the_stream_goes_on() {
    let node = node_with_bystanders(NodeOpts::default()).await;
    let mut raw = Raw::connect(&node.addr).await.unwrap();
    let mut buf = BytesMut::new();
    encode_raw_frame(&[0x0a, 0xff, 0xff, 0xff], &mut buf);
    raw.write(&buf).await.unwrap();
    let RawEvent::Frame(f) = raw.next().await.unwrap() else {
        panic!("closed")
    };
    assert_eq!(error_code(&f), Some(ErrorCode::BadRequest), "{f:?}");

    // An unknown request type (a field number the server does not know) decodes to
    // an empty body: it is answered with BAD_REQUEST and the request id.
    let mut unknown = ClientFrame {
        request_id: 9,
        body: None,
    }
    .encode_to_vec();
    unknown.extend_from_slice(&[0xf8, 0x3e, 0x01]); // field 999, varint 1
    let mut buf = BytesMut::new();
    encode_raw_frame(&unknown, &mut buf);
    raw.write(&buf).await.unwrap();
    let RawEvent::Frame(f) = raw.next().await.unwrap() else {
        panic!("closed")
    };
    assert_eq!((f.request_id, error_code(&f)), (9, Some(ErrorCode::BadRequest)));

    // The same connection still works.
    raw.send(&ClientFrame {
        request_id: 10,
        body: Some(chat_client::proto::client_frame::Body::Hello(Hello {
            protocol_version: 1,
            client_name: "raw".into(),
        })),
    })
    .await
    .unwrap();
    let RawEvent::Frame(f) = raw.next().await.unwrap() else {
        panic!("closed")
    };
    assert!(matches!(f.body, Some(Body::HelloOk(_))), "{f:?}");
    bystanders_still_chat(&node, 3).await;
}

#[tokio::test]
async fn unsupported_protocol_version_is_refused_and_closed() {
    let node = Node::start().unwrap();
    let mut raw = Raw::connect(&node.addr).await.unwrap();
    raw.send(&ClientFrame {
        request_id: 1,
        body: Some(chat_client::proto::client_frame::Body::Hello(Hello {
            protocol_version: 99,
            client_name: "future".into(),
        })),
    })
    .await
    .unwrap();
    let frames = raw.until_closed().await.unwrap();
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::UnsupportedVersion));
}

#[tokio::test]
async fn connections_that_do_not_log_in_in_time_are_closed() {
    let node = node_with_bystanders(NodeOpts {
        client_toml: "login_timeout_ms = 300".into(),
        ..NodeOpts::default()
    })
    .await;
    let (idle, mut pushes) = node.connect().await.unwrap();
    let closing = chat_tests::next_push(&mut pushes, |p| match p {
        chat_client::Push::Closing(c) => Some(c),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(closing.code, ErrorCode::NotAuthenticated as i32);
    assert!(idle.ping(1).await.is_err(), "the connection is closed");
    // Logged-in users are not affected by the login timeout.
    bystanders_still_chat(&node, 4).await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let node = Node::start_with(NodeOpts {
        client_toml: "idle_timeout_ms = 1000".into(),
        ..NodeOpts::default()
    })
    .unwrap();
    let mut raw = Raw::connect(&node.addr).await.unwrap();
    let started = std::time::Instant::now();
    let frames = raw.until_closed().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Some(Body::Closing(c)) if c.reason.contains("idle"))),
        "{frames:?}"
    );
}

/// Logs `user` in on a raw socket that is never read, floods it with `count` messages of
/// 16 KB from alice, and returns how many frames the socket held when the node closed it.
async fn flood_a_sloth(node: &Node, user: &str, count: usize) -> usize {
    node.user(user).await.unwrap();
    let mut raw = Raw::connect(&node.addr).await.unwrap();
    raw.send(&hello(1)).await.unwrap();
    raw.send(&login(2, user)).await.unwrap();
    let (alice, _, _) = node.login("alice").await.unwrap();
    let text = "z".repeat(16000);
    for _ in 0..count {
        alice
            .send_private(user, &text)
            .await
            .expect("senders are not affected");
    }
    // Only now read: what the kernel buffered comes out, then the close the node made.
    raw.until_closed().await.unwrap().len()
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_disconnected_and_others_carry_on() {
    let node = node_with_bystanders(NodeOpts {
        client_toml: "outbound_queue = 16\nmax_text_bytes = 16000".into(),
        ..NodeOpts::default()
    })
    .await;
    // 2000 messages of 16 KB (32 MB) cannot sit in socket buffers and a 16-frame queue.
    let frames = flood_a_sloth(&node, "sloth1", 2000).await;
    assert!(
        frames < 2000,
        "got all {frames} frames: the reader was never cut off"
    );
    // Nothing was lost: the inbox still has every message for the next login.
    let (sloth, _rx, ok) = node.login("sloth1").await.unwrap();
    assert_eq!(ok.last_seq, 2000);
    assert_eq!(sloth.sync(1997, 0).await.unwrap().messages.len(), 3);
    bystanders_still_chat(&node, 5).await;
}

fn hello(id: u64) -> ClientFrame {
    ClientFrame {
        request_id: id,
        body: Some(chat_client::proto::client_frame::Body::Hello(Hello {
            protocol_version: 1,
            client_name: "raw".into(),
        })),
    }
}

fn login(id: u64, user: &str) -> ClientFrame {
    ClientFrame {
        request_id: id,
        body: Some(chat_client::proto::client_frame::Body::Login(
            chat_client::proto::LoginRequest {
                username: user.into(),
                credential: Some(chat_client::proto::login_request::Credential::Password(
                    chat_tests::password(user),
                )),
                device: String::new(),
            },
        )),
    }
}

#[tokio::test]
async fn after_logout_the_connection_gets_a_fresh_login_window() {
    let node = Node::start_with(NodeOpts {
        client_toml: "login_timeout_ms = 400".into(),
        ..NodeOpts::default()
    })
    .unwrap();
    node.user("walt").await.unwrap();
    let (c, mut pushes, _) = node.login("walt").await.unwrap();
    // Stay logged in well past the login timeout, then log out.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    c.logout().await.unwrap();
    // The old deadline has long passed, yet the connection is still usable...
    c.ping(1).await.unwrap();
    c.login("walt", &chat_tests::password("walt")).await.unwrap();
    c.logout().await.unwrap();
    // ...and without a new login it is closed once the fresh window ends.
    let closing = chat_tests::next_push(&mut pushes, |p| match p {
        chat_client::Push::Closing(c) => Some(c),
        _ => None,
    })
    .await
    .unwrap();
    assert!(closing.reason.contains("login timeout"), "{closing:?}");
}

#[tokio::test]
async fn a_connection_over_its_request_rate_gets_rate_limited_and_recovers() {
    let node = node_with_bystanders(NodeOpts {
        client_toml: "max_requests_per_sec = 5\nrequest_burst = 5".into(),
        ..NodeOpts::default()
    })
    .await;
    let (c, _, _) = node.login("alice").await.unwrap();
    // Twenty requests at once: the burst of 5 passes (login took one), the rest are refused.
    let asks = (0..20).map(|_| {
        let c = c.clone();
        tokio::spawn(async move { c.my_groups().await })
    });
    let mut limited = 0;
    for ask in asks {
        if let Err(e) = ask.await.unwrap() {
            assert_eq!(e.code(), Some(ErrorCode::RateLimited), "{e}");
            assert!(e.to_string().contains("5 per second"), "{e}");
            limited += 1;
        }
    }
    assert!(limited >= 10, "only {limited} of 20 were limited");
    // Pings are exempt, so keep-alives never fail.
    for i in 0..10 {
        c.ping(i).await.unwrap();
    }
    // The bucket refills: after a while the connection is served again.
    chat_tests::wait_for("the rate limit to lift", chat_tests::DEADLINE, || {
        let c = c.clone();
        async move { c.my_groups().await.ok() }
    })
    .await
    .unwrap();
    bystanders_still_chat(&node, 6).await;
}
