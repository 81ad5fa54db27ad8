//! The web client in headless Chromium against a three-node cluster: two browser users
//! and a CLI user chat privately and in a group, the page survives a reload and the
//! loss of its node, refuses an oversized message, shows read ticks and lays out at
//! desktop and phone widths; the two browser users, on different nodes, become
//! contacts and see each other online, see each other typing, and block; one makes a
//! private group, invites the other, who accepts from the page, and makes them admin.
//! Files: one sends the other an image (its preview shows, a click opens the whole
//! image) and drops a text file (a link with its size saves it); a file over the size
//! limit and one over the quota are refused in words.
//! `web/e2e.mjs` drives the browsers (playwright-core with Debian's chromium, which
//! `scripts/ci-setup.sh` installs); this test builds the page, starts the nodes, and
//! kills a node when the script asks for it. The page's model has unit tests of its
//! own (`web/test/`), run here too.

use chat_tests::{Node, NodeOpts, bin, free_port, wait_settled};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole browser run must end within this (it takes well under a minute).
const SCRIPT_DEADLINE: Duration = Duration::from_secs(150);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(
        path.exists(),
        "Chromium is missing: run scripts/ci-setup.sh (it installs Debian's chromium)"
    );
    path
}

fn build_page() {
    let build = Command::new(repo().join("scripts/build-web.sh"))
        .output()
        .expect("scripts/build-web.sh runs");
    assert!(
        build.status.success(),
        "building the web client failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );
}

/// Three members serving WebSocket clients and the built page. Files are limited to
/// 1 MiB each and 600 KiB of new files per user, so that the page's refusals are cheap
/// to reach.
async fn cluster() -> Vec<Node> {
    let seed = free_port();
    let client_toml = format!(
        "websocket_listen = \"127.0.0.1:0\"\nweb_dir = {:?}\n",
        repo().join("web/dist")
    );
    let member = |name: &str, port: u16, seeds: &[u16]| NodeOpts {
        client_toml: client_toml.clone(),
        extra_toml: "[files]\nmax_file_bytes = 1048576\nquota_bytes = 614400\n".into(),
        ..NodeOpts::member(name, port, seeds, "web-cookie")
    };
    let a = Node::start_with(member("web-a", seed, &[])).unwrap();
    let b = Node::start_with(member("web-b", free_port(), &[seed])).unwrap();
    let c = Node::start_with(member("web-c", free_port(), &[seed])).unwrap();
    wait_settled(&[&a, &b, &c], 3).await.unwrap();
    vec![a, b, c]
}

fn page_url(node: &Node) -> String {
    node.ws
        .clone()
        .expect("the node serves WebSocket")
        .replace("ws://", "http://")
        .replace("/ws", "/")
}

/// Runs the browser script; it asks for a node to be killed with a line `@@kill N` on
/// stdout and waits for `killed` on stdin. Returns (success, stdout, stderr).
fn run_script(mut nodes: Vec<Node>, config: serde_json::Value) -> (bool, String, String) {
    let mut child = Command::new("node")
        .current_dir(repo().join("web"))
        .arg("e2e.mjs")
        .arg(config.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node (Node.js) runs");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    // A watchdog: a hung browser must fail the test, not hang it.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(SCRIPT_DEADLINE).is_err() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    });
    let started = Instant::now();
    let mut out = String::new();
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("@@kill ") {
            let n: usize = n.trim().parse().expect("a node index");
            nodes[n].kill9();
            writeln!(stdin, "killed").unwrap();
            stdin.flush().unwrap();
        }
        out.push_str(&format!("[{:>5.1}s] {line}\n", started.elapsed().as_secs_f64()));
    }
    let status = child.wait().unwrap();
    out.push_str(&format!("exit: {status}\n"));
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    (status.success(), out, err.join().unwrap())
}

/// The page's model (conversations, unread counts, receipts, the read cursor) without a
/// browser: `web/test/*.test.mjs` under Node's own test runner.
#[test]
fn the_web_clients_model_passes_its_unit_tests() {
    let out = Command::new("node")
        .current_dir(repo().join("web"))
        .args(["--test", "test/"])
        .output()
        .expect("node (Node.js) runs");
    assert!(
        out.status.success(),
        "web unit tests failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn browser_users_and_a_cli_user_chat_through_a_cluster_that_loses_a_node() {
    let chromium = chromium();
    tokio::task::spawn_blocking(build_page).await.unwrap();
    let nodes = cluster().await;
    let shots = tempfile::tempdir().unwrap();
    let config = serde_json::json!({
        "pages": nodes.iter().map(page_url).collect::<Vec<_>>(),
        // The CLI user stays on the nodes that are not killed.
        "cli_servers": [nodes[1].addr.clone(), nodes[2].addr.clone()],
        "chat": bin("chat"),
        "chromium": chromium,
        "shots": shots.path(),
    });
    let (success, stdout, stderr) = tokio::task::spawn_blocking(move || run_script(nodes, config))
        .await
        .unwrap();
    assert!(success, "browser test failed:\n{stdout}\n{stderr}");
    for step in [
        "conversation panel hidden before login",
        "unread counts and previews",
        "history on opening a conversation",
        "private chat with the CLI user",
        "read ticks",
        "reply, edit, react and delete from the message menu",
        "group chat",
        "group settings, invitation and roles",
        "oversized message refused",
        "files: an image shown by its preview, a file by a link, refusals in words",
        "session survives a reload",
        "layout at 1280 px",
        "layout at 390 px",
        "notifications while hidden",
        "contact request accepted, both online",
        "typing shown and gone",
        "blocking and contacts only refuse messages",
        "reconnected to another node",
        "every message once",
        "logout and an expired session",
        "waiting messages delivered at login",
        "last seen, then online again",
        "no console errors",
    ] {
        assert!(
            stdout.contains(&format!("ok: {step}")),
            "missing step {step:?}:\n{stdout}"
        );
    }
    for shot in [
        "desktop-1280.png",
        "phone-390.png",
        "phone-360.png",
        "phone-360-contacts.png",
        "desktop-1280-contacts.png",
        "phone-360-typing.png",
    ] {
        let png = std::fs::read(shots.path().join(shot)).unwrap();
        // CHAT_TEST_LOGS=folder keeps the screenshots there too, beside the node logs.
        if let Some(keep) = std::env::var_os("CHAT_TEST_LOGS") {
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(PathBuf::from(keep).join(shot), &png);
        }
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5000,
            "{shot} is not a real screenshot"
        );
    }
}
