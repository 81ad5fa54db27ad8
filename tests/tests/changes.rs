//! Message changes across a three-node cluster (replicas 3): replies, edits, recalls
//! and reactions of private and group messages (and mentions in groups) reach every device of both participants live,
//! come back by sync, and history shows each message as its changes left it. Only
//! the author edits or recalls, edits only within the edit window, and a resent change
//! is stored once. The CLI commands do the same with their exit codes.

use chat_client::proto::message_change::Kind;
use chat_client::proto::{ConversationKind, Delivery, ErrorCode, MessageChange};
use chat_client::{Client, Push};
use chat_tests::{DEADLINE, Node, NodeOpts, cli, next_delivery, next_push, wait_for};
use tokio::sync::mpsc::UnboundedReceiver;

const COOKIE: &str = "changes-cookie";

async fn register(node: &Node, users: &[&str]) {
    let (c, _) = node.connect().await.unwrap();
    for u in users {
        c.register(u, &chat_tests::password(u)).await.unwrap();
    }
}

/// The next change pushed of `kind`.
async fn next_change(pushes: &mut UnboundedReceiver<Push>, kind: Kind) -> (Delivery, MessageChange) {
    next_push(pushes, |p| match p {
        Push::Delivery(d) => d.change.clone().filter(|c| c.kind() == kind).map(|c| (d, c)),
        _ => None,
    })
    .await
    .unwrap()
}

/// A private conversation's history as `client` sees it, newest first.
async fn history(client: &Client, with: &str) -> Vec<Delivery> {
    let page = client
        .history(ConversationKind::Private, with, 0, 0)
        .await
        .unwrap();
    page.messages
}

/// The changes in a user's inbox, in inbox order: (by, kind, message, text).
fn changes(inbox: &[Delivery]) -> Vec<(String, Kind, String, String)> {
    inbox
        .iter()
        .filter_map(|d| d.change.as_ref())
        .map(|c| (c.by.clone(), c.kind(), c.message_id.clone(), c.text.clone()))
        .collect()
}

fn code(r: chat_client::Result<chat_client::proto::SendAck>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

#[tokio::test]
async fn private_changes_reach_every_device_come_back_by_sync_and_show_in_history() {
    let [a, b, c] = chat_tests::three_nodes(["mc1", "mc2", "mc3"], COOKIE).await;
    register(&a, &["alice", "bob", "carol"]).await;
    let (alice, _alice_pushes, _) = a.login("alice").await.unwrap();
    let (alice_phone, mut phone_pushes, _) = b.login("alice").await.unwrap();
    let (bob, mut bob_pushes, _) = c.login("bob").await.unwrap();
    let (carol, _, _) = b.login("carol").await.unwrap();

    let hello = alice.send_private("bob", "helo").await.unwrap().message_id;
    assert_eq!(next_delivery(&mut bob_pushes).await.unwrap().text, "helo");
    // A reply names the message it answers, for both participants.
    let reply = bob
        .send_private_reply("alice", "r1", "hi!", &hello)
        .await
        .unwrap()
        .message_id;
    // (The phone first gets alice's own copy of what she sent.)
    let got = next_push(&mut phone_pushes, |p| match p {
        Push::Delivery(d) if d.text == "hi!" => Some(d),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (got.text.as_str(), got.reply_to.as_str()),
        ("hi!", hello.as_str())
    );

    // The author edits: the recipient and the author's other device are told live.
    let edit = alice
        .change_message("e1", Kind::Edit, &hello, "hello")
        .await
        .unwrap();
    let (told, change) = next_change(&mut bob_pushes, Kind::Edit).await;
    assert_eq!((told.from.as_str(), told.conversation.as_str()), ("alice", "bob"));
    assert_eq!(
        (change.message_id.as_str(), change.text.as_str()),
        (hello.as_str(), "hello")
    );
    assert_eq!(next_change(&mut phone_pushes, Kind::Edit).await.1.text, "hello");
    // A resend is the same change, acknowledged alike and stored once.
    let again = alice
        .change_message("e1", Kind::Edit, &hello, "hello")
        .await
        .unwrap();
    assert_eq!((again.message_id, again.seq), (edit.message_id, edit.seq));

    // Reactions: one per user, changeable, removable; the sender's devices are told.
    bob.react(&hello, "👍").await.unwrap();
    assert_eq!(next_change(&mut phone_pushes, Kind::React).await.1.text, "👍");
    bob.react(&hello, "🎉").await.unwrap();
    alice.react(&hello, "🎉").await.unwrap();
    alice_phone.react(&reply, "👍").await.unwrap();
    alice_phone.react(&reply, "").await.unwrap();

    // Recall: the text is gone for everyone.
    let oops = alice.send_private("bob", "wrong chat").await.unwrap().message_id;
    alice_phone.recall(&oops).await.unwrap();
    let (_, recall) = next_change(&mut bob_pushes, Kind::Recall).await;
    assert_eq!(recall.message_id, oops);

    // Refusals: someone else's message, a message one cannot see, a recalled one.
    assert_eq!(code(bob.edit(&hello, "mine").await), Some(ErrorCode::NotAuthor));
    assert_eq!(code(bob.recall(&hello).await), Some(ErrorCode::NotAuthor));
    assert_eq!(code(carol.edit(&hello, "x").await), Some(ErrorCode::NotFound));
    assert_eq!(code(carol.react(&hello, "👍").await), Some(ErrorCode::NotFound));
    assert_eq!(code(alice.edit(&oops, "x").await), Some(ErrorCode::NotFound));
    assert_eq!(
        code(alice.edit("p:bob:9999", "x").await),
        Some(ErrorCode::NotFound)
    );
    assert_eq!(code(alice.edit(&hello, "").await), Some(ErrorCode::BadRequest));

    // History, on both sides, shows each message as its changes left it.
    for (client, with) in [(&bob, "alice"), (&alice_phone, "bob")] {
        let shown = wait_for("the changes in history", DEADLINE, || async {
            let h = history(client, with).await;
            let done = h.iter().any(|d| d.recalled) && h.iter().any(|d| d.reactions.len() == 1);
            done.then_some(h)
        })
        .await
        .unwrap();
        let view: Vec<_> = shown
            .iter()
            .map(|d| {
                let reactions: Vec<_> = d
                    .reactions
                    .iter()
                    .map(|r| (r.emoji.clone(), r.users.join(",")))
                    .collect();
                (
                    d.text.clone(),
                    d.edited,
                    d.recalled,
                    d.reply_to.clone(),
                    reactions,
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                (String::new(), false, true, String::new(), vec![]),
                ("hi!".into(), false, false, hello.clone(), vec![]),
                (
                    "hello".into(),
                    true,
                    false,
                    String::new(),
                    vec![("🎉".into(), "bob,alice".into())]
                ),
            ],
            "{with}"
        );
    }

    // A device that was away syncs every change, in order, once each.
    let want = vec![
        (
            "alice".to_string(),
            Kind::Edit,
            hello.clone(),
            "hello".to_string(),
        ),
        ("bob".into(), Kind::React, hello.clone(), "👍".into()),
        ("bob".into(), Kind::React, hello.clone(), "🎉".into()),
        ("alice".into(), Kind::React, hello.clone(), "🎉".into()),
        ("alice".into(), Kind::React, reply.clone(), "👍".into()),
        ("alice".into(), Kind::React, reply.clone(), String::new()),
        ("alice".into(), Kind::Recall, oops.clone(), String::new()),
    ];
    for (node, user) in [(&a, "bob"), (&c, "alice")] {
        let (late, _, _) = node.login(user).await.unwrap();
        let inbox = late.sync_all(0).await.unwrap();
        assert_eq!(changes(&inbox), want, "{user}");
    }
}

#[tokio::test]
async fn group_changes_replies_and_mentions_reach_every_member_device_and_history() {
    let [a, b, c] = chat_tests::three_nodes(["gc1", "gc2", "gc3"], COOKIE).await;
    register(&a, &["olga", "ann", "ben"]).await;
    let (olga, mut olga_pushes, _) = a.login("olga").await.unwrap();
    let (ann, mut ann_pushes, _) = b.login("ann").await.unwrap();
    let (ben, mut ben_pushes, _) = c.login("ben").await.unwrap();
    let (_ben_laptop, mut laptop_pushes, _) = a.login("ben").await.unwrap();
    olga.create_group("crew").await.unwrap();
    ann.join_group("crew").await.unwrap();
    ben.join_group("crew").await.unwrap();

    // A mention flags the mentioned member's copy only.
    let post = ann.send_group("crew", "hi @ben, look").await.unwrap().message_id;
    let to_ben = next_delivery(&mut ben_pushes).await.unwrap();
    assert_eq!(
        (to_ben.message_id.as_str(), to_ben.mentioned),
        (post.as_str(), true)
    );
    assert!(next_delivery(&mut laptop_pushes).await.unwrap().mentioned);
    let to_olga = next_delivery(&mut olga_pushes).await.unwrap();
    assert_eq!(
        (to_olga.message_id.as_str(), to_olga.mentioned),
        (post.as_str(), false)
    );
    let answer = ben
        .send_group_reply("crew", "r1", "seen", &post)
        .await
        .unwrap()
        .message_id;
    let got = next_delivery(&mut ann_pushes).await.unwrap();
    assert_eq!(
        (got.text.as_str(), got.reply_to.as_str()),
        ("seen", post.as_str())
    );

    // Edits and reactions reach every member's devices, the author's too.
    ann.edit(&post, "hi @ben, look!").await.unwrap();
    for pushes in [
        &mut ben_pushes,
        &mut laptop_pushes,
        &mut olga_pushes,
        &mut ann_pushes,
    ] {
        let (d, c) = next_change(pushes, Kind::Edit).await;
        assert_eq!(
            (d.conversation.as_str(), c.message_id.as_str()),
            ("crew", post.as_str())
        );
    }
    ben.react(&post, "👍").await.unwrap();
    assert_eq!(next_change(&mut ann_pushes, Kind::React).await.1.text, "👍");

    // Only the author edits; a member may not recall another's post, the owner may.
    assert_eq!(code(ben.edit(&post, "mine").await), Some(ErrorCode::NotAuthor));
    assert_eq!(code(ann.recall(&answer).await), Some(ErrorCode::NotAuthor));
    olga.recall(&answer).await.unwrap();
    assert_eq!(
        next_change(&mut laptop_pushes, Kind::Recall).await.1.message_id,
        answer
    );

    let shown = wait_for("the changes in the group's history", DEADLINE, || async {
        let page = ben.history(ConversationKind::Group, "crew", 0, 0).await.ok()?;
        let msgs: Vec<Delivery> = page
            .messages
            .into_iter()
            .filter(|d| d.group_event.is_none())
            .collect();
        msgs.iter().any(|d| d.recalled).then_some(msgs)
    })
    .await
    .unwrap();
    let view: Vec<_> = shown
        .iter()
        .map(|d| {
            let reactions: Vec<_> = d
                .reactions
                .iter()
                .map(|r| (r.emoji.clone(), r.users.join(",")))
                .collect();
            (
                d.text.clone(),
                d.edited,
                d.recalled,
                d.reply_to.clone(),
                d.mentioned,
                reactions,
            )
        })
        .collect();
    assert_eq!(
        view,
        [
            (String::new(), false, true, post.clone(), false, vec![]),
            (
                "hi @ben, look!".into(),
                true,
                false,
                String::new(),
                true,
                vec![("👍".into(), "ben".into())]
            ),
        ]
    );
    // A device that was away syncs the changes in the group's order.
    let (late, _, _) = b.login("ben").await.unwrap();
    let inbox = late.sync_all(0).await.unwrap();
    let kinds: Vec<_> = changes(&inbox)
        .into_iter()
        .map(|(by, kind, ..)| (by, kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("ann".to_string(), Kind::Edit),
            ("ben".into(), Kind::React),
            ("olga".into(), Kind::Recall)
        ]
    );
}

#[tokio::test]
async fn an_edit_after_the_window_is_refused_but_a_recall_is_not() {
    let node = Node::start_with(NodeOpts {
        client_toml: "edit_window_ms = 1".into(),
        ..NodeOpts::default()
    })
    .unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    let sent = alice.send_private("bob", "old news").await.unwrap().message_id;
    let refused = wait_for("the window to close", DEADLINE, || async {
        (code(alice.edit(&sent, "new news").await) == Some(ErrorCode::EditWindowClosed)).then_some(())
    })
    .await;
    assert!(refused.is_ok(), "{refused:?}");
    alice.recall(&sent).await.unwrap();
}

#[tokio::test]
async fn the_cli_replies_edits_reacts_and_recalls_with_exit_codes() {
    let node = Node::start().unwrap();
    node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    let as_user = |user: &'static str| {
        let (server, password) = (node.addr.clone(), chat_tests::password(user));
        move |args: &[&str]| {
            let mut all: Vec<String> = ["--server", &server, "--user", user, "--password", &password]
                .iter()
                .map(|s| s.to_string())
                .collect();
            all.extend(args.iter().map(|s| s.to_string()));
            all
        }
    };
    let (alice, bob) = (as_user("alice"), as_user("bob"));
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args).await.unwrap()
    };
    let (ok, out, err) = run(alice(&["send", "bob", "lunch?"])).await;
    assert!(ok, "{err}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let (ok, _, err) = run(bob(&["send", "alice", "yes", "--reply-to", &id])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(alice(&["edit", &id, "lunch at 12?"])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(bob(&["react", &id, "👍"])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(bob(&["edit", &id, "dinner?"])).await;
    assert!(!ok && err.contains("author"), "{err}");
    let (ok, out, err) = run(bob(&["history", "alice"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("alice -> bob: lunch at 12? (edited) [👍 bob]"),
        "{out}"
    );
    assert!(
        out.contains(&format!("bob -> alice: yes (reply to {id})")),
        "{out}"
    );
    let (ok, out, err) = run(bob(&["recv", "--wait", "1"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("alice -> bob: edited {id}: lunch at 12?")),
        "{out}"
    );
    let (ok, _, err) = run(alice(&["recall", &id])).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(bob(&["history", "alice"])).await;
    assert!(ok, "{err}");
    assert!(out.contains("alice -> bob: (recalled)"), "{out}");

    // `reply` finds the message's conversation: a message to me (in my inbox), one
    // from me (my own copy), a group post.
    let (ok, out, err) = run(alice(&["send", "bob", "tea?"])).await;
    assert!(ok, "{err}");
    let tea = out.split_whitespace().nth(1).unwrap().to_owned();
    let (ok, out, err) = run(bob(&["reply", &tea, "green, please"])).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("to alice (reply to {tea})")), "{out}");
    let (ok, out, err) = run(alice(&["reply", &tea, "and a biscuit?"])).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("to bob (reply to {tea})")), "{out}");
    let (ok, out, err) = run(bob(&["recv", "--wait", "1"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("alice -> bob: and a biscuit? (reply to {tea})")),
        "{out}"
    );
    let (ok, out, err) = run(alice(&["history", "bob"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("bob -> alice: green, please (reply to {tea})")),
        "{out}"
    );
    let (ok, _, err) = run(alice(&["group-create", "tearoom"])).await;
    assert!(ok, "{err}");
    let (ok, _, err) = run(bob(&["group-join", "tearoom"])).await;
    assert!(ok, "{err}");
    let (ok, out, err) = run(alice(&["group-send", "tearoom", "who brews?"])).await;
    assert!(ok, "{err}");
    let post = out.split_whitespace().nth(1).unwrap().to_owned();
    let (ok, out, err) = run(bob(&["reply", &post, "me"])).await;
    assert!(ok, "{err}");
    assert!(out.contains(&format!("to #tearoom (reply to {post})")), "{out}");
    let (ok, out, err) = run(alice(&["history", "#tearoom"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("bob -> #tearoom: me (reply to {post})")),
        "{out}"
    );
    // No such message, or none of mine: a clear error and no message sent.
    for missing in ["p:bob:9999", "p:alice:9999", "g:tearoom:9999", "g:nowhere:1"] {
        let (ok, _, err) = run(bob(&["reply", missing, "?"])).await;
        assert!(!ok && err.contains(missing), "{missing}: {err}");
    }
    let (ok, _, err) = run(bob(&["reply", &tea.replace("bob", "carol"), "?"])).await;
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = run(bob(&["reply", "tea", "?"])).await;
    assert!(!ok && err.contains("not a message id"), "{err}");
    // `delete` is `recall`.
    let (ok, out, err) = run(alice(&["delete", &tea])).await;
    assert!(ok && out.contains(&format!("recalled {tea}")), "{out}{err}");
    let (ok, _, err) = run(alice(&["delete", &tea])).await;
    assert!(!ok && err.contains("not found"), "{err}");
}

#[tokio::test]
async fn a_reply_to_something_that_is_no_message_id_is_a_bad_request() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    alice.create_group("den").await.unwrap();
    let sent = alice.send_private("bob", "first").await.unwrap().message_id;
    for bad in ["first", "p:bob", "p:bob:0", "m:bob:1"] {
        let private = alice
            .send_private_reply("bob", &format!("p-{bad}"), "re", bad)
            .await;
        assert_eq!(code(private), Some(ErrorCode::BadRequest), "{bad}");
        let group = alice
            .send_group_reply("den", &format!("g-{bad}"), "re", bad)
            .await;
        assert_eq!(code(group), Some(ErrorCode::BadRequest), "{bad}");
    }
    // A well-formed id is taken as it is: whether it exists is not looked up.
    alice.send_private_reply("bob", "ok1", "re", &sent).await.unwrap();
    alice
        .send_group_reply("den", "ok2", "re", "g:den:99")
        .await
        .unwrap();
}
