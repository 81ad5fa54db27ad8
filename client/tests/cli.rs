//! The `chat` and `chat-bench` command lines: help text and usage errors.
//!
//! These tests also make `cargo test --workspace` build the binaries that the
//! multi-process tests in `tests/` run.

use std::process::Command;

#[test]
fn chat_help_lists_every_scripting_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "register",
        "send",
        "group-create",
        "group-join",
        "group-send",
        "recv",
        "online",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}:\n{help}");
    }
}

#[test]
fn chat_without_user_for_a_command_that_needs_one_fails_clearly() {
    // Nothing listens on port 1, so this fails at connect: a clear message, non-zero exit.
    let out = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["--server", "127.0.0.1:1", "online"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

#[test]
fn chat_bench_help_names_its_modes() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("send") && help.contains("idle"), "{help}");
}

#[test]
fn chat_prints_shell_completions_and_examples_for_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("group-send") && script.contains("complete"),
        "{script}"
    );
    for cmd in [
        "register",
        "send",
        "group-create",
        "group-join",
        "group-leave",
        "group-send",
        "recv",
        "online",
        "groups",
        "members",
        "nodes",
        "history",
        "completions",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chat"))
            .args([cmd, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Example"), "{cmd} --help has no example:\n{help}");
    }
}
