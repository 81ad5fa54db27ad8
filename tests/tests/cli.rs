//! The `chat` CLI's scripting subcommands against a real node: output and exit codes.

use chat_tests::{Node, cli};

#[tokio::test]
async fn cli_scripting_commands_work_end_to_end() {
    let node = Node::start().unwrap();
    let s = node.addr.as_str();
    let ok = |r: (bool, String, String)| {
        assert!(r.0, "command failed: {}", r.2);
        r.1
    };
    ok(cli(&["--server", s, "register", "alice", "--password", "pa"])
        .await
        .unwrap());
    ok(cli(&["--server", s, "register", "bob", "--password", "pb"])
        .await
        .unwrap());
    let out = ok(cli(&[
        "--server",
        s,
        "--user",
        "alice",
        "--password",
        "pa",
        "send",
        "bob",
        "hello from the cli",
    ])
    .await
    .unwrap());
    assert!(out.contains("sent"), "{out}");
    ok(cli(&[
        "--server",
        s,
        "--user",
        "alice",
        "--password",
        "pa",
        "group-create",
        "ops",
    ])
    .await
    .unwrap());
    ok(cli(&[
        "--server",
        s,
        "--user",
        "bob",
        "--password",
        "pb",
        "group-join",
        "ops",
    ])
    .await
    .unwrap());
    ok(cli(&[
        "--server",
        s,
        "--user",
        "alice",
        "--password",
        "pa",
        "group-send",
        "ops",
        "deploy done",
    ])
    .await
    .unwrap());

    // recv prints offline messages first, one line each with sender, conversation and text.
    let out = ok(cli(&[
        "--server",
        s,
        "--user",
        "bob",
        "--password",
        "pb",
        "recv",
        "--wait",
        "1",
    ])
    .await
    .unwrap());
    let lines = messages(&out);
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("alice") && lines[0].contains("bob") && lines[0].contains("hello from the cli"),
        "{out}"
    );
    assert!(
        lines[1].contains("alice") && lines[1].contains("#ops") && lines[1].contains("deploy done"),
        "{out}"
    );
    // They were acknowledged as delivered: a second recv prints nothing old.
    let out = ok(cli(&[
        "--server",
        s,
        "--user",
        "bob",
        "--password",
        "pb",
        "recv",
        "--wait",
        "1",
    ])
    .await
    .unwrap());
    assert!(messages(&out).is_empty(), "{out}");

    let out = ok(
        cli(&["--server", s, "--user", "alice", "--password", "pa", "online"])
            .await
            .unwrap(),
    );
    assert_eq!(out.trim(), "alice", "only the CLI's own session is online: {out}");
}

/// The lines of `recv`'s output that are not presence changes: those come live, when a
/// user whose presence this one sees goes offline (here, alice's CLI that just sent),
/// and may or may not fall within the wait.
fn messages(out: &str) -> Vec<&str> {
    out.lines().filter(|l| !l.starts_with("presence: ")).collect()
}

#[tokio::test]
async fn passwd_and_logout_everywhere_from_the_cli() {
    let node = Node::start().unwrap();
    let s = node.addr.as_str();
    let run = |args: Vec<&'static str>| {
        let s = s.to_owned();
        async move {
            let mut all = vec!["--server", s.as_str()];
            all.extend(args);
            cli(&all).await.unwrap()
        }
    };
    let (ok, _, err) = run(vec!["register", "hal", "--password", "old"]).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(vec![
        "--user",
        "hal",
        "--password",
        "old",
        "passwd",
        "--new-password",
        "new",
    ])
    .await;
    assert!(ok && out.contains("password changed"), "{out} {err}");
    let (ok, _, err) = run(vec!["--user", "hal", "--password", "old", "groups"]).await;
    assert!(!ok && err.contains("invalid username or credentials"), "{err}");
    let (ok, out, err) = run(vec!["--user", "hal", "--password", "new", "logout-everywhere"]).await;
    assert!(ok && out.contains("logged out everywhere"), "{out} {err}");
}

#[tokio::test]
async fn recv_prints_live_messages_as_they_arrive() {
    let node = Node::start().unwrap();
    node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    let s = node.addr.clone();
    let recv = tokio::spawn(async move {
        cli(&[
            "--server",
            &s,
            "--user",
            "bob",
            "--password",
            "pw-bob",
            "recv",
            "--wait",
            "4",
        ])
        .await
        .unwrap()
    });
    let (alice, _, _) = node.login("alice").await.unwrap();
    // Send once bob's CLI is online, so the message arrives live.
    chat_tests::wait_for("bob to be online", chat_tests::DEADLINE, || {
        let a = alice.clone();
        async move { a.online().await.ok()?.contains(&"bob".to_string()).then_some(()) }
    })
    .await
    .unwrap();
    alice.send_private("bob", "live one").await.unwrap();
    let (success, out, err) = recv.await.unwrap();
    assert!(success, "{err}");
    assert!(out.contains("alice -> bob: live one"), "{out}");
}

#[tokio::test]
async fn cli_failures_exit_non_zero_with_a_clear_message() {
    let node = Node::start().unwrap();
    let s = node.addr.as_str();
    cli(&["--server", s, "register", "carol", "--password", "pc"])
        .await
        .unwrap();
    let (success, _, err) = cli(&["--server", s, "register", "carol", "--password", "pc"])
        .await
        .unwrap();
    assert!(!success);
    assert!(err.contains("taken"), "{err}");
    let (success, _, err) = cli(&["--server", s, "--user", "carol", "--password", "bad", "online"])
        .await
        .unwrap();
    assert!(!success);
    assert!(err.contains("invalid"), "{err}");
    let (success, _, err) = cli(&[
        "--server",
        s,
        "--user",
        "carol",
        "--password",
        "pc",
        "send",
        "nobody",
        "x",
    ])
    .await
    .unwrap();
    assert!(!success);
    assert!(err.contains("not found"), "{err}");
    assert!(!err.contains("NotFound"), "no enum names: {err}");
    // History with someone who does not exist, or of a group that does not, says so
    // (with a user who exists it is just empty).
    for with in ["nobody", "#nogroup"] {
        let (success, _, err) = cli(&[
            "--server",
            s,
            "--user",
            "carol",
            "--password",
            "pc",
            "history",
            with,
        ])
        .await
        .unwrap();
        assert!(!success, "history {with}");
        assert!(err.contains("not found"), "history {with}: {err}");
    }
    let (success, out, err) = cli(&[
        "--server",
        s,
        "--user",
        "carol",
        "--password",
        "pc",
        "history",
        "carol",
    ])
    .await
    .unwrap();
    assert!(success && out.is_empty(), "{out} {err}");
    // Over the node's text limit (16384 by default, told at login): refused before
    // sending, with the limit, in every mode that sends.
    let long = "x".repeat(20_000);
    for command in [["send", "carol"], ["group-send", "nogroup"]] {
        let (success, _, err) = cli(&[
            "--server",
            s,
            "--user",
            "carol",
            "--password",
            "pc",
            command[0],
            command[1],
            &long,
        ])
        .await
        .unwrap();
        assert!(!success);
        assert!(
            err.contains("20000 bytes") && err.contains("at most 16384"),
            "{err}"
        );
    }
    let (success, _, err) = cli(&["--server", "127.0.0.1:1", "register", "x", "--password", "p"])
        .await
        .unwrap();
    assert!(!success);
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn cli_fails_over_to_the_next_server_address() {
    let node = Node::start().unwrap();
    let (success, out, err) = cli(&[
        "--server",
        "127.0.0.1:1",
        "--server",
        &node.addr,
        "register",
        "dan",
        "--password",
        "pd",
    ])
    .await
    .unwrap();
    assert!(success, "{err}");
    assert!(out.contains("registered dan"));
}

/// Lines of a running interactive session's stdout and stderr, as they come.
async fn wait_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) if want(&line) => return line,
            Ok(Some(line)) => seen.push(line),
            Ok(None) => panic!("the session ended before: {what}; it said {seen:#?}"),
            Err(_) => panic!("timed out waiting for: {what}; it said {seen:#?}"),
        }
    }
}

#[tokio::test]
async fn an_interactive_session_refuses_an_oversized_line_goes_on_and_names_messages_in_receipts() {
    use tokio::io::AsyncWriteExt;
    let node = Node::start().unwrap();
    let s = node.addr.as_str();
    let (success, _, err) = cli(&["--server", s, "register", "alice", "--password", "pa"])
        .await
        .unwrap();
    assert!(success, "{err}");
    let (bob, _bob_pushes) = node.user("bob").await.unwrap();
    let (_child, mut stdin, mut lines) = interactive(&["--server", s, "--user", "alice", "--password", "pa"]);
    wait_line(&mut lines, "logged in", |l| l.contains("logged in as alice")).await;
    let long = format!("@bob {}\n", "y".repeat(20_000));
    stdin.write_all(long.as_bytes()).await.unwrap();
    let refused = wait_line(&mut lines, "the limit", |l| l.contains("at most")).await;
    assert!(refused.contains("at most 16384"), "{refused}");
    // The session goes on.
    stdin
        .write_all(b"@bob see you at five o'clock on the pier\n")
        .await
        .unwrap();
    wait_line(&mut lines, "sent", |l| l.contains("(sent")).await;
    let page = bob.sync(0, 10).await.unwrap();
    let last = page.messages.iter().map(|d| d.seq).max().unwrap();
    bob.ack_read(last).await.unwrap();
    let receipt = wait_line(&mut lines, "the read receipt", |l| l.contains("read by bob")).await;
    assert!(
        receipt.contains("\"see you at five o'clock on the…\""),
        "{receipt}"
    );
    // A plain line goes to the conversation last used; `:to` changes it.
    stdin.write_all(b"and bring the map\n").await.unwrap();
    wait_line(&mut lines, "sent", |l| l.contains("(sent")).await;
    stdin.write_all(b":to @nobody-here\nhello?\n").await.unwrap();
    let refused = wait_line(&mut lines, "an error", |l| l.starts_with("error:")).await;
    assert!(refused.contains("not found"), "{refused}");
    let texts: Vec<String> = bob
        .sync_all(0)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.from == "alice")
        .map(|d| d.text)
        .collect();
    assert_eq!(
        texts,
        vec!["see you at five o'clock on the pier", "and bring the map"]
    );
    // What the session shows, it acknowledges as read: bob gets a read receipt.
    let before = bob.sync(0, 100).await.unwrap().last_seq;
    let ack = bob.send_private("alice", "did you see this?").await.unwrap();
    let shown = wait_line(&mut lines, "bob's message", |l| {
        l.contains("bob -> alice: did you see this?")
    })
    .await;
    // With its time: `HH:MM` (or the date before it, across midnight).
    let time = shown.split(" [").next().unwrap_or_default();
    let (hours, minutes) = time
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .split_once(':')
        .unwrap_or_default();
    assert!(
        hours.len() == 2
            && minutes.len() == 2
            && hours.parse::<u8>().is_ok()
            && minutes.parse::<u8>().is_ok(),
        "{shown}"
    );
    let read = chat_tests::wait_for("a read receipt", std::time::Duration::from_secs(20), || async {
        let receipts = chat_tests::receipts_after(&bob, before).await?;
        receipts.into_iter().find_map(|d| {
            let r = d.receipt?;
            (r.message_id == ack.message_id && r.kind() == chat_client::proto::ReceiptKind::Read).then_some(r)
        })
    })
    .await
    .unwrap();
    assert_eq!(read.by, "alice");
    stdin.write_all(b":q\n").await.unwrap();
}

#[tokio::test]
async fn an_interactive_session_replies_edits_reacts_and_deletes_by_message_id() {
    use chat_client::Push;
    use chat_client::proto::message_change::Kind;
    use tokio::io::AsyncWriteExt;
    let node = Node::start().unwrap();
    let s = node.addr.as_str();
    let (success, _, err) = cli(&["--server", s, "register", "alice", "--password", "pa"])
        .await
        .unwrap();
    assert!(success, "{err}");
    let (bob, mut bob_pushes) = node.user("bob").await.unwrap();
    let (_child, mut stdin, mut lines) = interactive(&["--server", s, "--user", "alice", "--password", "pa"]);
    wait_line(&mut lines, "logged in", |l| l.contains("logged in as alice")).await;
    // An incoming message shows its id at the end of its line, to copy.
    let asked = bob.send_private("alice", "ready?").await.unwrap().message_id;
    let shown = wait_line(&mut lines, "bob's message", |l| {
        l.contains("bob -> alice: ready?")
    })
    .await;
    assert!(shown.ends_with(&format!("  id {asked}")), "{shown}");
    async fn next_change(
        pushes: &mut tokio::sync::mpsc::UnboundedReceiver<Push>,
        kind: Kind,
    ) -> chat_client::proto::MessageChange {
        chat_tests::next_push(pushes, |p| match p {
            Push::Delivery(d) => d.change.filter(|c| c.kind() == kind),
            _ => None,
        })
        .await
        .unwrap()
    }

    stdin
        .write_all(format!(":reply {asked} yes\n").as_bytes())
        .await
        .unwrap();
    let sent = wait_line(&mut lines, "sent", |l| l.contains("(sent")).await;
    let answer = sent
        .trim()
        .trim_start_matches("(sent ")
        .trim_end_matches(')')
        .to_owned();
    let got = chat_tests::next_delivery(&mut bob_pushes).await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.reply_to.as_str(), got.message_id.as_str()),
        ("yes", asked.as_str(), answer.as_str())
    );
    stdin
        .write_all(format!(":edit {answer} yes, now\n").as_bytes())
        .await
        .unwrap();
    wait_line(&mut lines, "edited", |l| {
        l.contains(&format!("(edited {answer})"))
    })
    .await;
    assert_eq!(next_change(&mut bob_pushes, Kind::Edit).await.text, "yes, now");
    stdin
        .write_all(format!(":react {asked} 👍\n").as_bytes())
        .await
        .unwrap();
    wait_line(&mut lines, "reacted", |l| l.contains("(reacted 👍")).await;
    assert_eq!(next_change(&mut bob_pushes, Kind::React).await.text, "👍");
    stdin
        .write_all(format!(":react {asked}\n").as_bytes())
        .await
        .unwrap();
    wait_line(&mut lines, "unreacted", |l| l.contains("(removed your reaction")).await;
    assert_eq!(next_change(&mut bob_pushes, Kind::React).await.text, "");
    stdin
        .write_all(format!(":delete {answer}\n").as_bytes())
        .await
        .unwrap();
    wait_line(&mut lines, "deleted", |l| {
        l.contains(&format!("(deleted {answer}"))
    })
    .await;
    assert_eq!(
        next_change(&mut bob_pushes, Kind::Recall).await.message_id,
        answer
    );
    // Changes by the other side show on their own lines.
    bob.edit(&asked, "ready now?").await.unwrap();
    wait_line(&mut lines, "bob's edit", |l| {
        l.contains(&format!("bob -> alice: edited {asked}: ready now?"))
    })
    .await;
    // Refusals say why, and the session goes on.
    stdin.write_all(b":reply p:alice:9999 hello?\n").await.unwrap();
    let refused = wait_line(&mut lines, "not found", |l| l.starts_with("error:")).await;
    assert!(refused.contains("p:alice:9999 not found"), "{refused}");
    stdin
        .write_all(format!(":edit {asked}\n").as_bytes())
        .await
        .unwrap();
    let refused = wait_line(&mut lines, "usage", |l| l.starts_with("error:")).await;
    assert!(refused.contains("usage: :edit ID TEXT"), "{refused}");
    stdin
        .write_all(format!(":edit {asked} mine now\n").as_bytes())
        .await
        .unwrap();
    let refused = wait_line(&mut lines, "not the author", |l| l.starts_with("error:")).await;
    assert!(refused.contains("author"), "{refused}");
    stdin.write_all(b"@bob still here\n").await.unwrap();
    wait_line(&mut lines, "sent", |l| l.contains("(sent")).await;
    stdin.write_all(b":q\n").await.unwrap();
}

/// Starts an interactive `chat` session with `args`; its stdout and stderr lines arrive
/// on the returned channel.
fn interactive(
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::process::ChildStdin,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(chat_tests::bin("chat"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let out_tx = tx.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            let _ = out_tx.send(line);
        }
    });
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = tx.send(line);
        }
    });
    let stdin = child.stdin.take().unwrap();
    (child, stdin, lines)
}

#[tokio::test]
async fn an_interactive_session_rides_out_the_loss_of_its_node() {
    use chat_tests::{NodeOpts, free_port, wait_for};
    use tokio::io::AsyncWriteExt;
    // Three nodes, three replicas of every partition: two of them are a majority.
    let seed = free_port();
    let mut a = Node::start_with(NodeOpts::member("cli-a", seed, &[], "cli-cookie")).unwrap();
    let b = Node::start_with(NodeOpts::member("cli-b", free_port(), &[seed], "cli-cookie")).unwrap();
    let c = Node::start_with(NodeOpts::member("cli-c", free_port(), &[seed], "cli-cookie")).unwrap();
    chat_tests::wait_settled(&[&a, &b, &c], 3).await.unwrap();
    let (success, _, err) = cli(&["--server", &a.addr, "register", "alice", "--password", "pa"])
        .await
        .unwrap();
    assert!(success, "{err}");
    let (bob, _bob_pushes) = b.user("bob").await.unwrap();
    let (_child, mut stdin, mut lines) = interactive(&[
        "--server",
        &a.addr,
        "--server",
        &b.addr,
        "--user",
        "alice",
        "--password",
        "pa",
    ]);
    wait_line(&mut lines, "logged in", |l| l.contains("logged in as alice")).await;
    a.kill9();
    wait_line(&mut lines, "the loss", |l| {
        l.contains("connection to the server lost")
    })
    .await;
    // Bob writes while alice is away (resending until the surviving node takes it).
    let id = chat_client::new_client_msg_id();
    wait_for(
        "bob's message to be taken",
        std::time::Duration::from_secs(40),
        || async {
            bob.send_private_with_id("alice", &id, "while you were away")
                .await
                .ok()
        },
    )
    .await
    .unwrap();
    wait_line(&mut lines, "reconnected", |l| l.starts_with("-- reconnected")).await;
    wait_line(&mut lines, "bob's message", |l| {
        l.contains("bob -> alice: while you were away")
    })
    .await;
    // And alice writes on.
    stdin.write_all(b"@bob back again\n").await.unwrap();
    wait_line(&mut lines, "sent", |l| l.contains("(sent")).await;
    // Stored once in bob's inbox (read back: pushes to a session whose inbox moved
    // with the failover are the core's business, not the CLI's).
    let count = wait_for(
        "alice's message in bob's inbox",
        std::time::Duration::from_secs(20),
        || async {
            let inbox = bob.sync_all(0).await.ok()?;
            let n = inbox
                .iter()
                .filter(|d| d.from == "alice" && d.text == "back again")
                .count();
            (n > 0).then_some(n)
        },
    )
    .await
    .unwrap();
    assert_eq!(count, 1);
    stdin.write_all(b":q\n").await.unwrap();
}

#[tokio::test]
async fn an_interactive_session_sends_and_downloads_files() {
    use tokio::io::AsyncWriteExt;
    let node = Node::start().unwrap();
    let s = node.addr.as_str();
    let (success, _, err) = cli(&["--server", s, "register", "alice", "--password", "pa"])
        .await
        .unwrap();
    assert!(success, "{err}");
    let (bob, mut bob_pushes) = node.user("bob").await.unwrap();
    let (_child, mut stdin, mut lines) = interactive(&["--server", s, "--user", "alice", "--password", "pa"]);
    wait_line(&mut lines, "logged in", |l| l.contains("logged in as alice")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.txt");
    std::fs::write(&path, b"the plan").unwrap();
    stdin
        .write_all(format!(":file @bob {}\n", path.display()).as_bytes())
        .await
        .unwrap();
    wait_line(&mut lines, "sent with a file", |l| {
        l.contains("(sent") && l.contains("file")
    })
    .await;
    let got = chat_tests::next_delivery(&mut bob_pushes).await.unwrap();
    assert_eq!(got.attachments[0].name, "plan.txt");
    // A file that comes in shows on a line of its own, with its blob id.
    let mine = bob
        .upload_bytes("reply.txt", "text/plain", b"the reply")
        .await
        .unwrap();
    bob.send_private_files("alice", "here", vec![mine.clone()])
        .await
        .unwrap();
    wait_line(&mut lines, "the file's line", |l| {
        l.contains(&format!("file reply.txt (9 B, text/plain) blob {}", mine.blob_id))
    })
    .await;
    let out = dir.path().join("reply.txt");
    stdin
        .write_all(format!(":download {} {}\n", mine.blob_id, out.display()).as_bytes())
        .await
        .unwrap();
    wait_line(&mut lines, "downloaded", |l| l.contains("(downloaded 9 B")).await;
    assert_eq!(std::fs::read(&out).unwrap(), b"the reply");
}
