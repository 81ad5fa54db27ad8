//! Contacts, blocking and privacy across nodes: users on different nodes of a
//! three-node cluster (replicas 3). A contact request waits in the inbox of a recipient
//! who is offline and is pushed live to one who is online; an accept makes both
//! contacts on both sides; "contacts only" refuses strangers with NOT_ALLOWED; a
//! blocked user's messages are refused the same way and its requests never reach the
//! blocker. The CLI commands do the same with their exit codes.

use chat_client::proto::{ContactEvent, ContactState, ConversationKind, ErrorCode, Presence};
use chat_client::{Client, Push};
use chat_tests::{DEADLINE, Node, NodeOpts, cli, next_push, wait_for};
use tokio::sync::mpsc::UnboundedReceiver;

const COOKIE: &str = "contacts-cookie";

async fn register(node: &Node, users: &[&str]) {
    let (c, _) = node.connect().await.unwrap();
    for u in users {
        c.register(u, &chat_tests::password(u)).await.unwrap();
    }
}

/// The next contact event pushed that says `state`.
async fn next_contact_event(pushes: &mut UnboundedReceiver<Push>, state: ContactState) -> ContactEvent {
    next_push(pushes, |p| match p {
        Push::Delivery(d) => d.contact.filter(|c| c.state() == state),
        _ => None,
    })
    .await
    .unwrap()
}

/// `user`'s view of its relation with `other`, as its contact list says.
async fn state_of(client: &Client, other: &str) -> ContactState {
    let list = client.contacts().await.unwrap();
    list.iter()
        .find(|c| c.user == other)
        .map_or(ContactState::None, |c| c.state())
}

#[tokio::test]
async fn requests_wait_for_offline_users_and_accepting_makes_contacts_on_both_sides() {
    let [a, b, c] = chat_tests::three_nodes(["ct1", "ct2", "ct3"], COOKIE).await;
    register(&a, &["alice", "bob", "carol", "mallory"]).await;
    let (alice, mut alice_pushes, _) = a.login("alice").await.unwrap();

    // Bob is offline: the request waits in his inbox.
    assert_eq!(
        alice.contact_request("bob").await.unwrap(),
        ContactState::Outgoing
    );
    assert_eq!(state_of(&alice, "bob").await, ContactState::Outgoing);
    let (bob, _bob_pushes, _) = b.login("bob").await.unwrap();
    let waiting = wait_for("the request in bob's inbox", DEADLINE, || async {
        let all = bob.sync_all(0).await.ok()?;
        all.into_iter().find_map(|d| d.contact)
    })
    .await
    .unwrap();
    assert_eq!(
        (waiting.user.as_str(), waiting.state(), waiting.by.as_str()),
        ("alice", ContactState::Incoming, "alice")
    );
    assert_eq!(state_of(&bob, "alice").await, ContactState::Incoming);
    // Nothing to accept from someone who did not ask; no such user.
    let err = bob.contact_accept("carol").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = bob.contact_request("nobody").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");
    let err = bob.contact_request("bob").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");

    // Bob accepts on node 2; alice, online on node 1, is told at once.
    assert_eq!(bob.contact_accept("alice").await.unwrap(), ContactState::Contact);
    // (Alice's own sessions were told of her request too: skip to the answer.)
    let told = next_contact_event(&mut alice_pushes, ContactState::Contact).await;
    assert_eq!(
        (told.user.as_str(), told.state(), told.by.as_str()),
        ("bob", ContactState::Contact, "bob")
    );
    assert_eq!(state_of(&alice, "bob").await, ContactState::Contact);
    assert_eq!(state_of(&bob, "alice").await, ContactState::Contact);
    // Accepting again changes nothing.
    assert_eq!(bob.contact_accept("alice").await.unwrap(), ContactState::Contact);

    // Contacts only: a stranger is refused, a contact is not.
    let (carol, _, _) = c.login("carol").await.unwrap();
    let privacy = bob.set_privacy(Some(true), None).await.unwrap();
    assert!(privacy.contacts_only && !privacy.hide_last_seen);
    let refused = carol.send_private("bob", "hello?").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NotAllowed), "{refused}");
    alice.send_private("bob", "hi bob").await.unwrap();
    // Asking is allowed (it is not a message), and accepting lets carol write.
    carol.contact_request("bob").await.unwrap();
    wait_for("carol's request at bob", DEADLINE, || async {
        (state_of(&bob, "carol").await == ContactState::Incoming).then_some(())
    })
    .await
    .unwrap();
    bob.contact_accept("carol").await.unwrap();
    carol.send_private("bob", "thanks").await.unwrap();
    // Removed by either side: both lists lose it, and contacts-only refuses again.
    assert_eq!(carol.contact_remove("bob").await.unwrap(), ContactState::None);
    wait_for("bob to lose carol", DEADLINE, || async {
        (state_of(&bob, "carol").await == ContactState::None).then_some(())
    })
    .await
    .unwrap();
    let refused = carol.send_private("bob", "again").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NotAllowed), "{refused}");
    assert!(!bob.set_privacy(Some(false), None).await.unwrap().contacts_only);
    carol
        .send_private("bob", "everyone may write again")
        .await
        .unwrap();

    // Blocking: mallory's messages are refused like a stranger's...
    let (mallory, _, _) = c.login("mallory").await.unwrap();
    mallory.send_private("bob", "before the block").await.unwrap();
    bob.block("mallory", true).await.unwrap();
    assert_eq!(bob.blocks().await.unwrap(), vec!["mallory".to_string()]);
    let refused = mallory.send_private("bob", "spam").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NotAllowed), "{refused}");
    let refused = mallory.send_private("bob", "spam again").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NotAllowed), "{refused}");
    // ...and its request never reaches bob. Proof without waiting on a clock: bob
    // unblocks, mallory withdraws; once bob is told of the withdrawal (a newer change of
    // the same pair), the request can never arrive any more.
    assert_eq!(
        mallory.contact_request("bob").await.unwrap(),
        ContactState::Outgoing
    );
    bob.block("mallory", false).await.unwrap();
    assert!(bob.blocks().await.unwrap().is_empty());
    mallory.contact_remove("bob").await.unwrap();
    let from_mallory = wait_for("the withdrawal at bob", DEADLINE, || async {
        let all = bob.sync_all(0).await.ok()?;
        let events: Vec<ContactEvent> = all
            .into_iter()
            .filter_map(|d| d.contact)
            .filter(|e| e.user == "mallory")
            .collect();
        (!events.is_empty()).then_some(events)
    })
    .await
    .unwrap();
    assert!(
        from_mallory.iter().all(|e| e.state() != ContactState::Incoming),
        "a blocked user's request reached bob: {from_mallory:?}"
    );
    mallory.send_private("bob", "unblocked").await.unwrap();
    // A refused message leaves no own copy with its sender: none is written once the
    // session has seen a refusal, and the copy written together with the first message
    // after the block ("spam": bob had taken mallory's last one) is withdrawn, a recall
    // of it in mallory's inbox, before the refusal is answered.
    let own = |client: Client| async move {
        let page = client
            .history(chat_client::proto::ConversationKind::Private, "bob", 0, 50)
            .await
            .unwrap();
        page.messages
    };
    let texts = |messages: &[chat_client::proto::Delivery]| {
        messages.iter().map(|d| d.text.clone()).collect::<Vec<_>>()
    };
    let carols = texts(&own(carol.clone()).await);
    assert!(!carols.contains(&"hello?".to_string()), "{carols:?}");
    assert!(carols.contains(&"thanks".to_string()), "{carols:?}");
    let mallorys = own(mallory.clone()).await;
    let withdrawn: Vec<_> = mallorys.iter().filter(|d| d.recalled).collect();
    assert_eq!(withdrawn.len(), 1, "the copy of \"spam\" withdrawn: {mallorys:?}");
    assert!(withdrawn[0].text.is_empty(), "{mallorys:?}");
    let mallorys = texts(&mallorys);
    assert!(!mallorys.iter().any(|t| t.starts_with("spam")), "{mallorys:?}");
    assert!(mallorys.contains(&"before the block".to_string()), "{mallorys:?}");
    assert!(mallorys.contains(&"unblocked".to_string()), "{mallorys:?}");
    // Its other devices learn it as a change in the inbox.
    let recall = mallory
        .sync_all(0)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|d| d.change)
        .find(|c| c.message_id == withdrawn[0].message_id);
    assert!(
        recall.is_some_and(
            |c| c.kind() == chat_client::proto::message_change::Kind::Recall && c.by == "mallory"
        )
    );
    // Contact events are not messages: the private history with alice has only text.
    let history = bob
        .history(chat_client::proto::ConversationKind::Private, "alice", 0, 50)
        .await
        .unwrap();
    assert_eq!(history.messages.len(), 1, "{:?}", history.messages);
}

#[tokio::test]
async fn the_cli_manages_contacts_and_blocks_and_recv_prints_contact_events() {
    let node = Node::start().unwrap();
    register(&node, &["ann", "ben", "eve"]).await;
    let run = |user: &'static str, args: &'static [&'static str]| {
        let pw = chat_tests::password(user);
        let addr = node.addr.clone();
        async move {
            let mut all = vec!["--server", &addr, "--user", user, "--password", &pw];
            all.extend_from_slice(args);
            cli(&all).await.unwrap()
        }
    };
    let (ok, out, err) = run("ann", &["contact-add", "ben"]).await;
    assert!(ok && out.contains("ben: outgoing"), "{out} {err}");
    let (ok, out, _) = run("ben", &["recv", "--wait", "0"]).await;
    assert!(
        ok && out.contains("contact: ann asked to be your contact"),
        "{out}"
    );
    let (ok, out, _) = run("ben", &["contacts"]).await;
    assert!(ok && out.lines().any(|l| l == "ann incoming"), "{out}");
    let (ok, _, err) = run("ben", &["contact-accept", "eve"]).await;
    assert!(!ok && err.contains("contact request from eve"), "{err}");
    let (ok, out, _) = run("ben", &["contact-accept", "ann"]).await;
    assert!(ok && out.contains("ann: contact"), "{out}");
    let (ok, out, _) = run("ann", &["contacts"]).await;
    assert!(ok && out.lines().any(|l| l.starts_with("ben contact ")), "{out}");
    let (ok, out, _) = run("ann", &["contact-remove", "ben"]).await;
    assert!(ok && out.contains("ben: none"), "{out}");
    let (ok, out, _) = run("ben", &["block", "eve"]).await;
    assert!(ok && out.contains("blocked eve"), "{out}");
    let (ok, out, _) = run("ben", &["blocks"]).await;
    assert!(ok && out.lines().any(|l| l == "eve"), "{out}");
    let (ok, _, err) = run("eve", &["send", "ben", "hi"]).await;
    assert!(!ok && err.contains("does not accept messages from you"), "{err}");
    let (ok, out, _) = run("ben", &["unblock", "eve"]).await;
    assert!(ok && out.contains("unblocked eve"), "{out}");
    let (ok, out, _) = run("ben", &["privacy", "--messages", "contacts"]).await;
    assert!(ok && out.contains("messages from: contacts"), "{out}");
    let (ok, _, err) = run("eve", &["send", "ben", "hi"]).await;
    assert!(!ok && err.contains("does not accept messages from you"), "{err}");
    let (ok, out, _) = run("ben", &["privacy"]).await;
    assert!(
        ok && out.contains("messages from: contacts") && out.contains("last seen: shown"),
        "{out}"
    );
    let (ok, out, err) = run("ben", &["block", "nobody"]).await;
    assert!(!ok && err.contains("nobody"), "{out} / {err}");
}

#[tokio::test]
async fn a_change_whose_delivery_was_cut_short_reaches_the_other_user_through_the_outbox() {
    // The fault point leaves the other user's update undelivered, as if the node had
    // died right after the change committed: the partition's leader delivers it.
    let node = Node::start_with(NodeOpts {
        env: vec![("CHAT_FAULTS".into(), "skip-contact-delivery".into())],
        ..NodeOpts::default()
    })
    .unwrap();
    register(&node, &["dora", "eli"]).await;
    let (dora, _, _) = node.login("dora").await.unwrap();
    let (eli, mut eli_pushes, _) = node.login("eli").await.unwrap();
    assert_eq!(dora.contact_request("eli").await.unwrap(), ContactState::Outgoing);
    let told = next_contact_event(&mut eli_pushes, ContactState::Incoming).await;
    assert_eq!((told.user.as_str(), told.by.as_str()), ("dora", "dora"));
    assert_eq!(state_of(&eli, "dora").await, ContactState::Incoming);
}

/// The next presence change of `user` pushed.
async fn next_presence_of(pushes: &mut UnboundedReceiver<Push>, user: &str) -> Presence {
    next_push(pushes, |p| match p {
        Push::Presence(update) => update.changes.into_iter().rev().find(|c| c.user == user),
        _ => None,
    })
    .await
    .unwrap()
}

/// Makes `a` and `b` contacts.
async fn befriend(a: &Client, b: &Client, b_name: &str, a_name: &str) {
    a.contact_request(b_name).await.unwrap();
    wait_for("the request to arrive", DEADLINE, || async {
        (state_of(b, a_name).await == ContactState::Incoming).then_some(())
    })
    .await
    .unwrap();
    b.contact_accept(a_name).await.unwrap();
}

#[tokio::test]
async fn presence_reaches_contacts_and_group_members_on_other_nodes_and_typing_passes_on() {
    let [a, b, c] = chat_tests::three_nodes(["pr1", "pr2", "pr3"], COOKIE).await;
    register(&a, &["amy", "ben", "cat", "dan"]).await;
    let (amy, _, _) = a.login("amy").await.unwrap();
    let (ben, mut ben_pushes, _) = b.login("ben").await.unwrap();
    let (cat, mut cat_pushes, _) = c.login("cat").await.unwrap();
    befriend(&amy, &ben, "ben", "amy").await;
    // Cat is no contact of amy's, but they share a group.
    amy.create_group("crew").await.unwrap();
    cat.join_group("crew").await.unwrap();
    drop(amy);

    // Amy goes offline (her only session ended): ben and cat are told, with the time.
    let before_offline = chat_tests::now_ms();
    let gone = next_presence_of(&mut ben_pushes, "amy").await;
    assert!(
        !gone.online && gone.last_seen_ms >= before_offline.saturating_sub(5_000),
        "{gone:?}"
    );
    assert!(!next_presence_of(&mut cat_pushes, "amy").await.online);
    let listed = ben.contacts().await.unwrap();
    let amy_listed = listed.iter().find(|c| c.user == "amy").unwrap();
    assert!(
        !amy_listed.online && amy_listed.last_seen_ms > 0,
        "{amy_listed:?}"
    );

    // Back on another node: told online within the deadline.
    let started = std::time::Instant::now();
    let (amy, _, _) = b.login("amy").await.unwrap();
    assert!(next_presence_of(&mut ben_pushes, "amy").await.online);
    assert!(next_presence_of(&mut cat_pushes, "amy").await.online);
    eprintln!("presence of a login reached a contact in {:?}", started.elapsed());
    assert!(
        ben.contacts()
            .await
            .unwrap()
            .iter()
            .any(|c| c.user == "amy" && c.online)
    );

    // A second session elsewhere: closing one of the two says nothing; closing the
    // last one says offline, as of then.
    let (amy_too, _, _) = c.login("amy").await.unwrap();
    drop(amy);
    // Dan's login is told to ben after amy's first close was handled on its node.
    let (dan, _, _) = a.login("dan").await.unwrap();
    befriend(&dan, &ben, "ben", "dan").await;
    drop(dan);
    let mut amy_meanwhile: Vec<Presence> = Vec::new();
    next_push(&mut ben_pushes, |p| match p {
        Push::Presence(update) => {
            let dan_seen = update.changes.iter().any(|c| c.user == "dan");
            amy_meanwhile.extend(update.changes.into_iter().filter(|c| c.user == "amy"));
            dan_seen.then_some(())
        }
        _ => None,
    })
    .await
    .unwrap();
    assert!(
        amy_meanwhile.iter().all(|c| c.online),
        "told offline while a session was left: {amy_meanwhile:?}"
    );
    let last_close = chat_tests::now_ms();
    drop(amy_too);
    let gone = next_presence_of(&mut ben_pushes, "amy").await;
    assert!(
        !gone.online && gone.last_seen_ms >= last_close,
        "told offline while a session was left: {gone:?} (last close at {last_close})"
    );

    // Hiding last seen: the next offline has no time, nor does the list.
    let (amy, _, _) = a.login("amy").await.unwrap();
    assert!(next_presence_of(&mut ben_pushes, "amy").await.online);
    amy.set_privacy(None, Some(true)).await.unwrap();
    drop(amy);
    let gone = next_presence_of(&mut ben_pushes, "amy").await;
    assert_eq!((gone.online, gone.last_seen_ms), (false, 0));
    let listed = ben.contacts().await.unwrap();
    assert_eq!(listed.iter().find(|c| c.user == "amy").unwrap().last_seen_ms, 0);

    // Typing: to a contact across nodes, and to a group's other members.
    let (amy, _, _) = a.login("amy").await.unwrap();
    amy.typing(ConversationKind::Private, "ben", false).await.unwrap();
    let typing = next_push(&mut ben_pushes, |p| match p {
        Push::Typing(t) => Some(t),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (typing.from.as_str(), typing.conversation.as_str()),
        ("amy", "amy")
    );
    assert!(typing.expires_in_ms > 0 && !typing.stopped);
    amy.typing(ConversationKind::Group, "crew", false).await.unwrap();
    let typing = next_push(&mut cat_pushes, |p| match p {
        Push::Typing(t) => Some(t),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (typing.from.as_str(), typing.kind(), typing.conversation.as_str()),
        ("amy", ConversationKind::Group, "crew")
    );
    // A malformed one is answered with an error; the session goes on.
    amy.typing(ConversationKind::Unspecified, "ben", false)
        .await
        .unwrap();
    amy.ping(1).await.unwrap();

    // A contact who blocks amy shows her nothing of its presence.
    let listed = amy.contacts().await.unwrap();
    assert!(listed.iter().any(|c| c.user == "ben" && c.online), "{listed:?}");
    ben.block("amy", true).await.unwrap();
    let listed = amy.contacts().await.unwrap();
    let shown = listed.iter().find(|c| c.user == "ben").unwrap();
    assert!(!shown.online && shown.last_seen_ms == 0, "{shown:?}");
}
