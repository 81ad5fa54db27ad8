//! Devices and sessions on a three-node cluster (replicas 3): one user logged in from
//! two devices on different nodes sees both devices (its own marked current) and its
//! sessions on every node; logging one device out closes only that device's sessions,
//! wherever they are, and its token no longer logs in, while the other device stays
//! connected. Unknown ids are NOT_FOUND. The CLI commands do the same.

use chat_client::Push;
use chat_client::proto::ErrorCode;
use chat_state::devices::id_of;
use chat_tests::{DEADLINE, cli, next_closing, wait_for};

const COOKIE: &str = "devices-cookie";

#[tokio::test]
async fn logging_out_one_device_closes_only_its_sessions_on_every_node() {
    let [a, b, c] = chat_tests::three_nodes(["dv1", "dv2", "dv3"], COOKIE).await;
    let pw = chat_tests::password("alice");
    let (laptop, mut laptop_pushes) = a.connect().await.unwrap();
    laptop.register("alice", &pw).await.unwrap();
    let laptop_ok = laptop.login_device("alice", &pw, "laptop firefox").await.unwrap();
    let (phone, mut phone_pushes) = b.connect().await.unwrap();
    let phone_ok = phone.login_device("alice", &pw, "phone").await.unwrap();
    // The phone's token on a third node: the same device, a second session.
    let (phone_too, mut phone_too_pushes) = c.connect().await.unwrap();
    phone_too.login_token("alice", &phone_ok.token).await.unwrap();
    let (laptop_id, phone_id) = (id_of(&laptop_ok.token), id_of(&phone_ok.token));

    // Both devices, each marked current by its own session; no token shown.
    let list = laptop.devices().await.unwrap();
    let mut seen: Vec<(&str, &str, bool)> = list
        .devices
        .iter()
        .map(|d| (d.id.as_str(), d.device.as_str(), d.current))
        .collect();
    seen.sort();
    let mut want = vec![
        (laptop_id.as_str(), "laptop firefox", true),
        (phone_id.as_str(), "phone", false),
    ];
    want.sort();
    assert_eq!(seen, want);
    for d in &list.devices {
        assert_ne!(d.id, laptop_ok.token);
        assert_ne!(d.id, phone_ok.token);
        assert!(d.created_at_ms > 0 && d.last_login_ms >= d.created_at_ms, "{d:?}");
        assert!(d.expires_at_ms > d.created_at_ms, "{d:?}");
    }
    let from_phone = phone_too.devices().await.unwrap();
    let current: Vec<&str> = from_phone
        .devices
        .iter()
        .filter(|d| d.current)
        .map(|d| d.id.as_str())
        .collect();
    assert_eq!(current, vec![phone_id.as_str()]);

    // Sessions on all three nodes, only the asking one current.
    let sessions = wait_for("alice's sessions on three nodes", DEADLINE, || async {
        let s = laptop.sessions().await.ok()?;
        (s.len() == 3).then_some(s)
    })
    .await
    .unwrap();
    let mut where_: Vec<(&str, &str, bool)> = sessions
        .iter()
        .map(|s| (s.node.as_str(), s.device_id.as_str(), s.current))
        .collect();
    where_.sort();
    assert_eq!(
        where_,
        vec![
            ("dv1", laptop_id.as_str(), true),
            ("dv2", phone_id.as_str(), false),
            ("dv3", phone_id.as_str(), false),
        ]
    );
    assert!(
        sessions
            .iter()
            .all(|s| s.connected_since_ms > 0 && s.client_address.starts_with("127.0.0.1:")),
        "{sessions:?}"
    );

    // The laptop logs the phone out: both its sessions close, on dv2 and on dv3.
    laptop.logout_device(&phone_id).await.unwrap();
    let why = next_closing(&mut phone_pushes).await.unwrap();
    assert!(why.contains("device was logged out"), "{why}");
    next_closing(&mut phone_too_pushes).await.unwrap();
    // Its token no longer logs in.
    let (again, _) = c.connect().await.unwrap();
    let err = again.login_token("alice", &phone_ok.token).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCredentials), "{err}");
    // The laptop stays: it is served, listed alone, and was told nothing.
    let left = wait_for("only the laptop's session left", DEADLINE, || async {
        let s = laptop.sessions().await.ok()?;
        (s.len() == 1).then_some(s)
    })
    .await
    .unwrap();
    assert_eq!((left[0].node.as_str(), left[0].current), ("dv1", true));
    let ids: Vec<String> = laptop
        .devices()
        .await
        .unwrap()
        .devices
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, vec![laptop_id.clone()]);
    while let Ok(p) = laptop_pushes.try_recv() {
        assert!(!matches!(p, Push::Closing(_)), "the laptop was closed: {p:?}");
    }
    // Its token still logs in elsewhere.
    let (later, _) = b.connect().await.unwrap();
    later.login_token("alice", &laptop_ok.token).await.unwrap();

    // Unknown ids.
    let err = laptop.logout_device(&phone_id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = laptop.logout_device("0123456789abcdef").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = laptop.logout_device("not-an-id").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    // A device name too long, or with a line break, is refused.
    let (bad, _) = a.connect().await.unwrap();
    let err = bad.login_device("alice", &pw, &"x".repeat(65)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    let err = bad.login_device("alice", &pw, "a\nb").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
}

#[tokio::test]
async fn the_cli_lists_devices_and_sessions_and_logs_a_device_out() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let [a, b, _c] = chat_tests::three_nodes(["dc1", "dc2", "dc3"], COOKIE).await;
    let pw = chat_tests::password("bob");
    let (tablet, mut tablet_pushes) = b.connect().await.unwrap();
    tablet.register("bob", &pw).await.unwrap();
    let tablet_ok = tablet.login_device("bob", &pw, "tablet").await.unwrap();
    let tablet_id = id_of(&tablet_ok.token);
    let as_bob = |more: &[&str]| {
        let mut args = vec![
            "--server",
            a.addr.as_str(),
            "--user",
            "bob",
            "--password",
            pw.as_str(),
        ];
        args.extend_from_slice(more);
        args.into_iter().map(str::to_owned).collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args).await.unwrap()
    };

    let (ok, out, err) = run(as_bob(&["--device", "work laptop", "devices"])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let mine = lines
        .iter()
        .find(|l| l.contains("(this device)"))
        .expect("current device");
    assert!(mine.contains("  work laptop  created "), "{mine}");
    let theirs = lines
        .iter()
        .find(|l| l.starts_with(&tablet_id))
        .expect("the tablet");
    assert!(
        theirs.contains("  tablet  ") && !theirs.contains("(this device)"),
        "{theirs}"
    );

    // Sessions: the CLI's own on dc1 and the tablet's on dc2 (by default the device is
    // "chat cli").
    let (ok, out, err) = run(as_bob(&["sessions"])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("dc1  127.0.0.1:") && lines[0].ends_with("(this session)"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("dc2  127.0.0.1:") && lines[1].contains(&tablet_id),
        "{out}"
    );

    // An interactive session lists the same, and ends when its device is logged out.
    let mut child = tokio::process::Command::new(chat_tests::bin("chat"))
        .args(as_bob(&["--device", "desk"]))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line_with = async |what: &str| -> String {
        let wait = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                if line.contains(what) {
                    return line;
                }
            }
            panic!("the session ended before printing {what:?}");
        });
        wait.await.unwrap_or_else(|_| panic!("no line with {what:?}"))
    };
    line_with("logged in as bob").await;
    stdin.write_all(b":devices\n").await.unwrap();
    let desk = line_with("(this device)").await;
    assert!(desk.contains("  desk  "), "{desk}");
    let desk_id = desk.split_whitespace().next().unwrap().to_owned();
    stdin.write_all(b":sessions\n").await.unwrap();
    let session = line_with("(this session)").await;
    assert!(session.contains(&desk_id), "{session}");

    // `chat logout-device` logs the tablet out, then the desk; the CLI's own
    // session stays open until it is done.
    let (ok, out, err) = run(as_bob(&["logout-device", &tablet_id])).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("logged out device {tablet_id}"));
    next_closing(&mut tablet_pushes).await.unwrap();
    let (ok, _, err) = run(as_bob(&["logout-device", &desk_id])).await;
    assert!(ok, "{err}");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !status.success(),
        "a logged-out interactive session must not log in again"
    );
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(stderr.contains("logged out by the server"), "{stderr}");

    // An unknown id fails, saying so.
    let (ok, _, err) = run(as_bob(&["logout-device", "0123456789abcdef"])).await;
    assert!(!ok);
    assert!(err.contains("device 0123456789abcdef not found"), "{err}");
}
