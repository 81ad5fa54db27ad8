//! Clients over WebSocket: binary messages carrying the same protobuf envelopes, chatting
//! with a TCP client through a real node.

use chat_client::proto::{
    self, ClientFrame, ServerFrame, client_frame::Body as Req, server_frame::Body as Resp,
};
use chat_tests::{Node, NodeOpts, next_delivery};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(ws: &mut Ws, id: u64, body: Req) {
    let frame = ClientFrame {
        request_id: id,
        body: Some(body),
    };
    ws.send(Message::Binary(frame.encode_to_vec().into()))
        .await
        .unwrap();
}

/// The next frame with `request_id` (pushes are collected into `pushes`).
async fn answer(ws: &mut Ws, id: u64, pushes: &mut Vec<ServerFrame>) -> Resp {
    let deadline = tokio::time::Instant::now() + chat_tests::DEADLINE;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("an answer in time");
        let Some(Ok(Message::Binary(bytes))) = msg else {
            panic!("unexpected websocket message {msg:?}");
        };
        let frame = ServerFrame::decode(bytes).unwrap();
        if frame.request_id == id {
            return frame.body.unwrap();
        }
        pushes.push(frame);
    }
}

fn ws_node() -> Node {
    Node::start_with(NodeOpts {
        client_toml: "websocket_listen = \"127.0.0.1:0\"".into(),
        ..NodeOpts::default()
    })
    .unwrap()
}

#[tokio::test]
async fn a_websocket_client_and_a_tcp_client_chat_both_ways() {
    let node = ws_node();
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws.clone().unwrap())
        .await
        .unwrap();
    let mut pushes = Vec::new();
    send(
        &mut ws,
        1,
        Req::Hello(proto::Hello {
            protocol_version: 1,
            client_name: "ws-test".into(),
        }),
    )
    .await;
    assert!(matches!(answer(&mut ws, 1, &mut pushes).await, Resp::HelloOk(_)));
    send(
        &mut ws,
        2,
        Req::Register(proto::RegisterRequest {
            username: "web".into(),
            password: "pw".into(),
        }),
    )
    .await;
    assert!(matches!(
        answer(&mut ws, 2, &mut pushes).await,
        Resp::RegisterOk(_)
    ));
    let login = proto::LoginRequest {
        username: "web".into(),
        credential: Some(proto::login_request::Credential::Password("pw".into())),
        device: String::new(),
    };
    send(&mut ws, 3, Req::Login(login)).await;
    let Resp::LoginOk(ok) = answer(&mut ws, 3, &mut pushes).await else {
        panic!("no LoginOk")
    };
    // The node list tells web clients where to reconnect.
    let ws_urls: Vec<&str> = ok.nodes.iter().map(|n| n.ws_url.as_str()).collect();
    assert_eq!(ws_urls, vec![node.ws.as_deref().unwrap()]);

    // TCP -> WebSocket.
    let (tcp, mut tcp_rx) = node.user("tcpuser").await.unwrap();
    let ack = tcp.send_private("web", "to the browser").await.unwrap();
    send(&mut ws, 4, Req::Ping(proto::Ping { nonce: 4 })).await;
    answer(&mut ws, 4, &mut pushes).await;
    let delivered = pushes
        .iter()
        .find_map(|f| match &f.body {
            Some(Resp::Delivery(d)) => Some(d.clone()),
            _ => None,
        })
        .expect("the message was pushed over the websocket");
    assert_eq!(
        (delivered.text.as_str(), delivered.message_id.as_str()),
        ("to the browser", ack.message_id.as_str())
    );

    // WebSocket -> TCP.
    let msg = proto::SendPrivate {
        to: "tcpuser".into(),
        client_msg_id: "w1".into(),
        text: "from the browser".into(),
        ..proto::SendPrivate::default()
    };
    send(&mut ws, 5, Req::SendPrivate(msg)).await;
    assert!(matches!(answer(&mut ws, 5, &mut pushes).await, Resp::SendAck(_)));
    assert_eq!(next_delivery(&mut tcp_rx).await.unwrap().text, "from the browser");
}

#[tokio::test]
async fn text_and_oversized_websocket_messages_are_refused_without_harm() {
    let node = ws_node();
    let (mut ws, _) = tokio_tungstenite::connect_async(node.ws.clone().unwrap())
        .await
        .unwrap();
    ws.send(Message::Text("hello?".into())).await.unwrap();
    let mut pushes = Vec::new();
    // The text is answered as a malformed frame, and the connection goes on.
    send(&mut ws, 1, Req::Ping(proto::Ping { nonce: 1 })).await;
    answer(&mut ws, 1, &mut pushes).await;
    assert!(
        pushes.iter().any(
            |f| matches!(&f.body, Some(Resp::Error(e)) if e.code == proto::ErrorCode::BadRequest as i32)
        ),
        "{pushes:?}"
    );
    // A message over the frame limit closes this connection only.
    let _ = ws.send(Message::Binary(vec![0u8; 1 << 20].into())).await;
    let closed = tokio::time::timeout(chat_tests::DEADLINE, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the oversized message did not close the connection"
    );
    let (c, _) = node.user("still-fine").await.unwrap();
    c.ping(2).await.unwrap();
}
