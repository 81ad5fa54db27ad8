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
