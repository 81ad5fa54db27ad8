//! A client nobody wrote in Rust: the Python example in `client/python/` runs against a
//! real node (chat, replies and changes, files uploaded, sent and downloaded back). Its
//! protobuf module is generated from `protocol/chat.proto` with the standard tooling
//! (grpcio-tools' protoc), installed from PyPI into a virtualenv kept in the target
//! folder.

use chat_tests::Node;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A virtualenv with protobuf and grpcio-tools, created once per target folder.
fn venv_python() -> PathBuf {
    let target = chat_tests::bin("chat-node")
        .parent()
        .and_then(Path::parent)
        .expect("target")
        .to_owned();
    let venv = target.join("python-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    if !ready.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "protobuf", "grpcio-tools"]));
        std::fs::write(&ready, "protobuf grpcio-tools\n").unwrap();
    }
    python
}

#[tokio::test]
async fn the_python_example_client_chats_with_a_real_node() {
    let python = tokio::task::spawn_blocking(venv_python).await.unwrap();
    let generated = tempfile::tempdir().unwrap();
    run(Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(repo().join("protocol"))
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(repo().join("protocol/chat.proto")));

    let node = Node::start().unwrap();
    let pythonpath = format!(
        "{}:{}",
        generated.path().display(),
        repo().join("client/python").display()
    );
    let out = tokio::task::spawn_blocking(move || {
        run(Command::new(&python)
            .arg(repo().join("client/python/example.py"))
            .arg(&node.addr)
            .env("PYTHONPATH", pythonpath))
    })
    .await
    .unwrap();
    for step in [
        "register, and a taken name is refused",
        "private message pushed live; resend deduplicated",
        "delivered receipt",
        "group message",
        "file uploaded, sent, and downloaded back",
        "reply, edit, react and recall, private",
        "reply and recall in a group",
        "offline message synced after login",
        "online list",
    ] {
        assert!(
            out.contains(&format!("ok: {step}")),
            "missing step {step:?}:\n{out}"
        );
    }
}
