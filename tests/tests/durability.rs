//! Durability through the real binary: what was acknowledged survives `kill -9`, and
//! SIGTERM shuts down in order and keeps everything.

use chat_tests::Node;
use std::collections::BTreeMap;

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_and_arrive_after_restart() {
    let mut node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (bob, _) = node.user("bob").await.unwrap();
    let (carol, _) = node.user("carol").await.unwrap();
    alice.create_group("team").await.unwrap();
    carol.join_group("team").await.unwrap();
    bob.logout().await.unwrap();
    carol.logout().await.unwrap();

    // Many concurrent senders; record exactly what was acknowledged.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let a = alice.clone();
        tasks.push(tokio::spawn(async move {
            let text = format!("p{i}");
            a.send_private("bob", &text).await.ok().map(|ack| (ack.seq, text))
        }));
    }
    let group_send = {
        let a = alice.clone();
        tokio::spawn(async move { a.send_group("team", "g1").await.ok() })
    };
    let mut acked = BTreeMap::new();
    for t in tasks {
        if let Some((seq, text)) = t.await.unwrap() {
            acked.insert(seq, text);
        }
    }
    let group_ack = group_send.await.unwrap();
    assert_eq!(acked.len(), 300, "all sends were acknowledged before the kill");

    // No clean shutdown: whatever sled had not flushed is gone, unless it was acknowledged.
    node.kill9();
    node.restart().unwrap();

    let (bob, _rx, ok) = node.login("bob").await.unwrap();
    let got = bob.sync_all(ok.delivered_seq).await.unwrap();
    let got: BTreeMap<u64, String> = got.into_iter().map(|d| (d.seq, d.text)).collect();
    assert_eq!(got, acked, "every acknowledged message, at its seq, nothing else");

    if group_ack.is_some() {
        let (carol, _rx, ok) = node.login("carol").await.unwrap();
        let got = chat_tests::wait_for("the group message to reach carol", chat_tests::DEADLINE, || {
            let c = carol.clone();
            async move {
                let all = c.sync_all(ok.delivered_seq).await.ok()?;
                (!all.is_empty()).then_some(all)
            }
        })
        .await
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "g1");
    }
}

#[tokio::test]
async fn sigterm_stops_the_node_in_order_and_keeps_its_data() {
    let mut node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    let (_connected, mut pushes) = node.connect().await.unwrap();
    let ack = alice.send_private("bob", "before stop").await.unwrap();

    let status = node.terminate().unwrap();
    assert!(status.success(), "clean exit, got {status}");
    // Connected clients were told why.
    let closing = chat_tests::next_push(&mut pushes, |p| match p {
        chat_client::Push::Closing(c) => Some(c),
        _ => None,
    })
    .await
    .unwrap();
    assert!(closing.reason.contains("shutting down"), "{closing:?}");
    let log = std::fs::read_to_string(&node.log).unwrap();
    let order = ["no longer accepting", "sessions closed", "storage flushed"];
    let positions: Vec<usize> = order
        .iter()
        .map(|s| log.find(s).unwrap_or_else(|| panic!("log lacks {s:?}:\n{log}")))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "shutdown out of order:\n{log}"
    );

    node.restart().unwrap();
    let (bob, _rx, ok) = node.login("bob").await.unwrap();
    let got = bob.sync_all(ok.delivered_seq).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, ack.message_id);
}

/// A second node started on a data folder in use says so plainly and exits, before
/// announcing any address; the first goes on serving.
#[test]
fn a_second_node_on_a_data_folder_in_use_says_so_and_announces_nothing() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        Command::new(chat_tests::bin("chat-node"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--cluster-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = start();
    let mut out = std::io::BufReader::new(first.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("listening for clients"), "{line}");
    let second = start().wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&second.stdout),
        String::from_utf8_lossy(&second.stderr),
    );
    assert!(!second.status.success());
    assert!(stdout.is_empty(), "announced something: {stdout}");
    assert!(stderr.contains("is in use by another chat-node"), "{stderr}");
    assert!(first.try_wait().unwrap().is_none(), "the first node stopped");
    first.kill().unwrap();
    first.wait().unwrap();
}

/// A node's name is its identity in the cluster: a data folder first started under one
/// name refuses another, plainly and before announcing anything; without a configured
/// name (the default derives from the client port, which changes with port 0) the
/// node keeps the folder's.
#[test]
fn a_data_folder_keeps_its_node_name_and_refuses_another() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let run = |name: Option<&str>| {
        let mut cmd = Command::new(chat_tests::bin("chat-node"));
        cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--cluster-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(name) = name {
            cmd.args(["--name", name]);
        }
        cmd.spawn().unwrap()
    };
    let first_line = |child: &mut std::process::Child| {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    let mut first = run(Some("keeper"));
    assert!(first_line(&mut first).starts_with("chat-node keeper listening"));
    first.kill().unwrap();
    first.wait().unwrap();
    let mut unnamed = run(None);
    let line = first_line(&mut unnamed);
    assert!(line.starts_with("chat-node keeper listening"), "{line}");
    unnamed.kill().unwrap();
    unnamed.wait().unwrap();
    let other = run(Some("taker")).wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&other.stdout),
        String::from_utf8_lossy(&other.stderr),
    );
    assert!(!other.status.success());
    assert!(stdout.is_empty(), "announced something: {stdout}");
    assert!(stderr.contains("belongs to node keeper, not taker"), "{stderr}");
}

/// This version does not read what the old core (removed) stored: a data folder it
/// wrote is refused with a clear message, never served as if empty.
#[tokio::test]
async fn a_data_folder_of_the_old_core_is_refused_not_served_empty() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        // What the old core left: an account in its `accounts` tree.
        let db = sled::open(&data).unwrap();
        db.open_tree("accounts")
            .unwrap()
            .insert(b"elder", b"record")
            .unwrap();
        db.flush().unwrap();
    }
    let mut new = Command::new(chat_tests::bin("chat-node"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + chat_tests::DEADLINE;
    let status = loop {
        if let Some(status) = new.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            new.kill().unwrap();
            panic!("the node started on a data folder of the old core");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut new.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("holds data of the old core"), "{stderr}");
}

/// Whoever started the node may read its address and close the pipe: the node goes on
/// (the cluster address it prints later must not kill it).
#[tokio::test]
async fn a_node_whose_stdout_is_closed_keeps_serving() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(chat_tests::bin("chat-node"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--cluster-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .rsplit_once("listening for clients on ")
        .unwrap()
        .1
        .trim()
        .to_owned();
    // The reader is gone. The node prints its cluster address before it accepts clients:
    // a registration that succeeds comes after that print.
    let registered = chat_tests::wait_for("a registration", chat_tests::DEADLINE, || async {
        let (client, _) = chat_client::Client::connect(&addr).await.ok()?;
        client.register("piper", "pw-piper").await.ok()
    })
    .await;
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    registered.unwrap();
    assert!(alive, "the node died");
}
