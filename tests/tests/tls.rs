//! TLS for client connections, with a self-signed certificate made at test time.

use chat_client::{Client, TlsClient};
use chat_tests::{Node, NodeOpts, cli, next_delivery};

struct Certs {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn self_signed() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    Certs { _dir: dir, cert, key }
}

fn tls_node(certs: &Certs) -> Node {
    Node::start_with(NodeOpts {
        client_toml: format!("tls = {{ cert = {:?}, key = {:?} }}", certs.cert, certs.key),
        ..NodeOpts::default()
    })
    .unwrap()
}

#[tokio::test]
async fn clients_chat_over_tls_with_a_trusted_certificate() {
    let certs = self_signed();
    let node = tls_node(&certs);
    let tls = TlsClient::from_ca_file(&certs.cert, Some("localhost".into())).unwrap();
    let (alice, _) = Client::connect_tls(&node.addr, &tls).await.unwrap();
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "pw").await.unwrap();
    let (bob, mut rx) = Client::connect_tls(&node.addr, &tls).await.unwrap();
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "pw").await.unwrap();
    alice.send_private("bob", "encrypted hello").await.unwrap();
    assert_eq!(next_delivery(&mut rx).await.unwrap().text, "encrypted hello");

    // The CLI speaks TLS too (the certificate names 127.0.0.1 as well).
    let ca = certs.cert.to_str().unwrap();
    let (ok, out, err) = cli(&[
        "--server",
        &node.addr,
        "--ca",
        ca,
        "--user",
        "bob",
        "--password",
        "pw",
        "online",
    ])
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert!(out.contains("alice"), "{out}");
}

#[tokio::test]
async fn untrusted_certificates_and_plain_clients_are_refused_without_harm() {
    let certs = self_signed();
    let node = tls_node(&certs);
    // A client that trusts another certificate refuses the server.
    let other = self_signed();
    let wrong = TlsClient::from_ca_file(&other.cert, Some("localhost".into())).unwrap();
    assert!(Client::connect_tls(&node.addr, &wrong).await.is_err());
    // A plain-TCP client gets no chat service (the handshake fails) and the node carries on.
    assert!(Client::connect(&node.addr).await.is_err());
    let tls = TlsClient::from_ca_file(&certs.cert, Some("localhost".into())).unwrap();
    let (c, _) = Client::connect_tls(&node.addr, &tls).await.unwrap();
    c.ping(1).await.unwrap();
}

#[tokio::test]
async fn a_missing_key_file_stops_the_node_with_a_clear_error() {
    let certs = self_signed();
    let broken = Certs {
        key: certs.cert.with_file_name("nope.pem"),
        cert: certs.cert.clone(),
        _dir: tempfile::tempdir().unwrap(),
    };
    let err = Node::start_with(NodeOpts {
        client_toml: format!("tls = {{ cert = {:?}, key = {:?} }}", broken.cert, broken.key),
        ..NodeOpts::default()
    });
    // The node refuses to start, before announcing any address, and says which file.
    let message = match err {
        Ok(_) => panic!("a node started without its key"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("nope.pem"), "{message}");
}

#[tokio::test]
async fn websocket_clients_get_tls_too() {
    use futures::{SinkExt, StreamExt};
    use prost::Message as _;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let certs = self_signed();
    let node = Node::start_with(NodeOpts {
        client_toml: format!(
            "tls = {{ cert = {:?}, key = {:?} }}\nwebsocket_listen = \"127.0.0.1:0\"",
            certs.cert, certs.key
        ),
        ..NodeOpts::default()
    })
    .unwrap();
    let url = node.ws.clone().unwrap();
    assert!(url.starts_with("wss://"), "{url}");
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&certs.cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let host = url
        .trim_start_matches("wss://")
        .trim_end_matches("/ws")
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(&host).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .unwrap();
    let hello = chat_client::proto::ClientFrame {
        request_id: 1,
        body: Some(chat_client::proto::client_frame::Body::Hello(
            chat_client::proto::Hello {
                protocol_version: 1,
                client_name: "wss".into(),
            },
        )),
    };
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        hello.encode_to_vec().into(),
    ))
    .await
    .unwrap();
    let answer = tokio::time::timeout(chat_tests::DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let frame = chat_client::proto::ServerFrame::decode(answer.into_data()).unwrap();
    assert!(
        matches!(
            frame.body,
            Some(chat_client::proto::server_frame::Body::HelloOk(_))
        ),
        "{frame:?}"
    );
    // Plain ws:// to the same port gets no service.
    let plain = url.replace("wss://", "ws://");
    assert!(tokio_tungstenite::connect_async(plain).await.is_err());
}
