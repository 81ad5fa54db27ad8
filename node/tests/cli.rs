//! The `chat-node` command line: help, flag validation and config errors.
//!
//! These tests also make `cargo test --workspace` build the `chat-node` binary
//! that the multi-process tests in `tests/` start.

use std::process::Command;

fn chat_node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chat-node"))
}

#[test]
fn help_lists_every_flag_the_issue_names() {
    let out = chat_node().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--name",
        "--listen",
        "--cluster-listen",
        "--seed",
        "--data-dir",
        "--cookie",
        "--ws-listen",
        "--web-dir",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = chat_node()
        .args(["--config", "/nonexistent/chat.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read config file"), "{err}");
}

#[test]
fn an_unknown_config_field_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[client]\nlisten_port = 1\n").unwrap();
    let out = chat_node().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_port"), "{err}");
}

#[test]
fn an_invalid_node_name_is_refused_before_starting() {
    let out = chat_node()
        .args(["--name", "has space", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("name must be"), "{err}");
}
