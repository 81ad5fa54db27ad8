//! Groups with governance across a three-node cluster (replicas 3), users on different
//! nodes: a private group is joined only by invitation and hides its history from
//! non-members and, by default, from new members; roles are enforced for every admin
//! action; a banned member cannot rejoin; every change is an event in the group's
//! order; ownership is handed over and the owner deletes the group. The CLI commands
//! do the same with their exit codes.

use chat_client::proto::{
    ConversationKind, ErrorCode, GroupEvent, GroupRole, GroupSetInfo, group_event::Kind,
};
use chat_client::{Client, ClientError, Push};
use chat_tests::{DEADLINE, Node, cli, next_push, wait_for};
use tokio::sync::mpsc::UnboundedReceiver;

const COOKIE: &str = "groups-cookie";

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Option<ErrorCode> {
    r.unwrap_err().code()
}

/// The next group event of `kind` pushed.
async fn next_event(pushes: &mut UnboundedReceiver<Push>, kind: Kind) -> GroupEvent {
    next_push(pushes, |p| match p {
        Push::Delivery(d) => d.group_event.filter(|e| e.kind() == kind),
        _ => None,
    })
    .await
    .unwrap()
}

fn texts(messages: &[chat_client::proto::Delivery]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.group_event.is_none())
        .map(|m| m.text.clone())
        .collect()
}

async fn role_of(client: &Client, group: &str, user: &str) -> Option<GroupRole> {
    let info = client.group_info(group).await.unwrap();
    info.members.iter().find(|m| m.user == user).map(|m| m.role())
}

#[tokio::test]
async fn a_private_group_is_governed_by_its_roles_across_nodes() {
    let [a, b, c] = chat_tests::three_nodes(["gr1", "gr2", "gr3"], COOKIE).await;
    let (reg, _) = a.connect().await.unwrap();
    for u in ["olga", "adam", "mia", "otto", "bart"] {
        reg.register(u, &chat_tests::password(u)).await.unwrap();
    }
    let (olga, mut olga_rx, _) = a.login("olga").await.unwrap();
    let (adam, _adam_rx, _) = b.login("adam").await.unwrap();
    let (mia, mut mia_rx, _) = c.login("mia").await.unwrap();
    let (otto, _, _) = a.login("otto").await.unwrap();
    let (bart, mut bart_rx, _) = b.login("bart").await.unwrap();

    olga.create_group_with("vault", true, "The vault").await.unwrap();
    olga.send_group("vault", "before mia").await.unwrap();
    // Not joinable, not readable, not listed for outsiders.
    assert_eq!(code(otto.join_group("vault").await), Some(ErrorCode::Forbidden));
    let history = otto.history(ConversationKind::Group, "vault", 0, 10).await;
    assert_eq!(code(history), Some(ErrorCode::NotAMember));
    assert_eq!(code(otto.group_info("vault").await), Some(ErrorCode::NotAMember));
    assert_eq!(
        code(mia.group_invite("vault", "otto").await),
        Some(ErrorCode::NotAMember)
    );
    assert_eq!(
        code(olga.leave_group("vault").await),
        Some(ErrorCode::Forbidden),
        "the owner stays"
    );

    // An invitation reaches mia on another node; she accepts and the owner is told.
    olga.group_invite("vault", "mia").await.unwrap();
    let invited = next_event(&mut mia_rx, Kind::Invited).await;
    assert_eq!((invited.actor.as_str(), invited.target.as_str()), ("olga", "mia"));
    olga.group_invite("vault", "mia").await.unwrap();
    mia.join_group("vault").await.unwrap();
    assert_eq!(next_event(&mut olga_rx, Kind::Joined).await.actor, "mia");
    // The history from before she joined stays hidden from her.
    olga.send_group("vault", "after mia").await.unwrap();
    let seen = wait_for("mia's history", DEADLINE, || async {
        let page = mia.history(ConversationKind::Group, "vault", 0, 50).await.ok()?;
        let t = texts(&page.messages);
        (!t.is_empty()).then_some(t)
    })
    .await
    .unwrap();
    assert_eq!(seen, ["after mia"]);
    let olgas = olga
        .history(ConversationKind::Group, "vault", 0, 50)
        .await
        .unwrap();
    assert_eq!(texts(&olgas.messages), ["after mia", "before mia"]);
    // Members do not invite to a private group.
    assert_eq!(
        code(mia.group_invite("vault", "otto").await),
        Some(ErrorCode::Forbidden)
    );

    // Adam joins and is made an admin: every member sees it, roles show in the lists.
    olga.group_invite("vault", "adam").await.unwrap();
    adam.join_group("vault").await.unwrap();
    olga.group_set_role("vault", "adam", GroupRole::Admin)
        .await
        .unwrap();
    let promoted = next_event(&mut mia_rx, Kind::RoleChanged).await;
    assert_eq!(
        (promoted.target.as_str(), promoted.role()),
        ("adam", GroupRole::Admin)
    );
    assert_eq!(role_of(&mia, "vault", "adam").await, Some(GroupRole::Admin));
    assert_eq!(role_of(&mia, "vault", "olga").await, Some(GroupRole::Owner));
    let roles = mia.members_with_roles("vault").await.unwrap();
    assert!(
        roles
            .iter()
            .any(|m| m.user == "mia" && m.role() == GroupRole::Member),
        "{roles:?}"
    );

    // An admin bans: bart is out, cannot rejoin, and his list of groups loses it.
    adam.group_invite("vault", "bart").await.unwrap();
    bart.join_group("vault").await.unwrap();
    adam.group_ban("vault", "bart").await.unwrap();
    let banned = next_event(&mut bart_rx, Kind::Banned).await;
    assert_eq!((banned.actor.as_str(), banned.target.as_str()), ("adam", "bart"));
    assert_eq!(code(bart.join_group("vault").await), Some(ErrorCode::Forbidden));
    assert_eq!(
        code(bart.send_group("vault", "let me back").await),
        Some(ErrorCode::NotAMember)
    );
    assert!(bart.my_groups().await.unwrap().is_empty());
    assert_eq!(
        code(olga.group_invite("vault", "bart").await),
        Some(ErrorCode::Forbidden)
    );
    olga.group_unban("vault", "bart").await.unwrap();
    olga.group_invite("vault", "bart").await.unwrap();
    bart.join_group("vault").await.unwrap();

    // Roles are enforced for every admin action.
    assert_eq!(
        code(mia.group_remove("vault", "bart").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(mia.group_ban("vault", "bart").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(mia.group_unban("vault", "otto").await),
        Some(ErrorCode::Forbidden)
    );
    let topic = |t: &str| GroupSetInfo {
        group: "vault".into(),
        topic: Some(t.into()),
        ..Default::default()
    };
    assert_eq!(
        code(mia.group_set_info(topic("mine")).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(adam.group_remove("vault", "olga").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(adam.group_set_role("vault", "mia", GroupRole::Admin).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(adam.group_transfer("vault", "adam").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(code(adam.group_delete("vault").await), Some(ErrorCode::Forbidden));
    assert_eq!(
        code(adam.group_remove("vault", "otto").await),
        Some(ErrorCode::NotFound)
    );
    adam.group_set_info(topic("gold")).await.unwrap();
    let info = next_event(&mut mia_rx, Kind::InfoChanged).await;
    assert_eq!(
        (info.topic.as_str(), info.history_for_new_members),
        ("gold", false)
    );
    adam.group_remove("vault", "bart").await.unwrap();
    assert_eq!(next_event(&mut bart_rx, Kind::Removed).await.actor, "adam");

    // Ownership is handed over; the old owner stays as an admin; the new owner deletes.
    olga.group_transfer("vault", "adam").await.unwrap();
    let info = olga.group_info("vault").await.unwrap();
    assert_eq!(info.owner, "adam");
    assert_eq!(role_of(&olga, "vault", "olga").await, Some(GroupRole::Admin));
    assert_eq!(code(olga.group_delete("vault").await), Some(ErrorCode::Forbidden));
    adam.group_delete("vault").await.unwrap();
    assert_eq!(code(mia.group_info("vault").await), Some(ErrorCode::NotFound));
    assert!(mia.my_groups().await.unwrap().is_empty());

    // A public group shows its history to new members, as before roles.
    olga.create_group("square").await.unwrap();
    olga.send_group("square", "welcome").await.unwrap();
    otto.join_group("square").await.unwrap();
    let page = otto
        .history(ConversationKind::Group, "square", 0, 10)
        .await
        .unwrap();
    assert_eq!(texts(&page.messages), ["welcome"]);
    assert_eq!(otto.group_info("square").await.unwrap().owner, "olga");
    // A ban keeps a user out of a public group too, until unbanned.
    olga.group_ban("square", "otto").await.unwrap();
    assert_eq!(code(otto.join_group("square").await), Some(ErrorCode::Forbidden));
    olga.group_unban("square", "otto").await.unwrap();
    otto.join_group("square").await.unwrap();
}

#[tokio::test]
async fn the_cli_runs_a_private_group() {
    let node = Node::start().unwrap();
    let (reg, _) = node.connect().await.unwrap();
    for u in ["rita", "sam", "tom"] {
        reg.register(u, &chat_tests::password(u)).await.unwrap();
    }
    let run = |user: &'static str, args: &'static [&'static str]| {
        let pw = chat_tests::password(user);
        let addr = node.addr.clone();
        async move {
            let mut all = vec!["--server", &addr, "--user", user, "--password", &pw];
            all.extend_from_slice(args);
            cli(&all).await.unwrap()
        }
    };
    let (ok, out, err) = run("rita", &["group-create", "den", "--private", "--title", "Den"]).await;
    assert!(ok && out.contains("created #den (private)"), "{out} {err}");
    let (ok, _, err) = run("sam", &["group-join", "den"]).await;
    assert!(!ok && err.contains("private"), "{err}");
    let (ok, out, _) = run("rita", &["group-invite", "den", "sam"]).await;
    assert!(ok && out.contains("invited sam to #den"), "{out}");
    let (ok, out, _) = run("sam", &["recv", "--wait", "0"]).await;
    assert!(ok && out.contains("#den: rita invited sam"), "{out}");
    let (ok, out, _) = run("sam", &["group-accept", "den"]).await;
    assert!(ok && out.contains("joined #den"), "{out}");
    let (ok, out, _) = run("rita", &["group-role", "den", "sam", "admin"]).await;
    assert!(ok && out.contains("sam is now admin of #den"), "{out}");
    let (ok, out, _) = run("sam", &["group-info", "den"]).await;
    assert!(ok && out.contains("#den (private): owner rita"), "{out}");
    assert!(
        out.lines().any(|l| l == "sam admin") && out.lines().any(|l| l == "rita owner"),
        "{out}"
    );
    let (ok, _, err) = run("sam", &["group-delete", "den"]).await;
    assert!(!ok && err.contains("only the owner"), "{err}");
    let (ok, out, _) = run("sam", &["group-invite", "den", "tom"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = run("tom", &["group-accept", "den"]).await;
    assert!(ok, "{out}");
    let (ok, out, _) = run("sam", &["group-ban", "den", "tom"]).await;
    assert!(ok && out.contains("banned tom from #den"), "{out}");
    let (ok, _, err) = run("tom", &["group-accept", "den"]).await;
    assert!(!ok && err.contains("banned"), "{err}");
    let (ok, out, _) = run("rita", &["group-set", "den", "--topic", "plans"]).await;
    assert!(ok && out.contains("updated #den"), "{out}");
    let (ok, out, _) = run("rita", &["group-delete", "den"]).await;
    assert!(ok && out.contains("deleted #den"), "{out}");
}
