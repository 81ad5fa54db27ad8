//! The web client in headless Chromium: a browser user on WebSocket and a CLI user on TCP
//! chat both ways against a real node, receipts show as ticks, and the page renders.
//! `web/e2e.mjs` drives the browser (playwright-core with Debian's chromium, which
//! `scripts/ci-setup.sh` installs); this test builds the page and runs it.

use chat_tests::{Node, NodeOpts, bin};
use std::path::{Path, PathBuf};
use std::process::Command;

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

#[tokio::test]
async fn a_browser_user_and_a_cli_user_chat_through_one_node() {
    let chromium = chromium();
    let build = tokio::task::spawn_blocking(|| Command::new(repo().join("scripts/build-web.sh")).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        build.status.success(),
        "building the web client failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );

    let node = Node::start_with(NodeOpts {
        client_toml: format!(
            "websocket_listen = \"127.0.0.1:0\"\nweb_dir = {:?}",
            repo().join("web/dist")
        ),
        ..NodeOpts::default()
    })
    .unwrap();
    let page_url = node
        .ws
        .clone()
        .unwrap()
        .replace("ws://", "http://")
        .replace("/ws", "/");
    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("page.png");
    let (addr, shot_arg) = (node.addr.clone(), shot.clone());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(repo().join("web"))
            .arg("e2e.mjs")
            .arg(&page_url)
            .arg(&addr)
            .arg(bin("chat"))
            .arg(&chromium)
            .arg(&shot_arg)
            .output()
    })
    .await
    .unwrap()
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "got the offline message",
        "live message from the CLI user shown",
        "delivered receipt (two ticks)",
        "group message shown",
        "page rendered and screenshot taken",
    ] {
        assert!(stdout.contains(step), "missing step {step:?}:\n{stdout}");
    }
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 5000,
        "not a real screenshot"
    );
}
