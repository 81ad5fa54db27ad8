//! Private and group chat through the real binary: live pushes, several devices, offline
//! mailboxes, dedupe of resends, receipts, and group membership rules.

use chat_client::Push;
use chat_client::proto::{ConversationKind, ErrorCode, ReceiptKind};
use chat_tests::{DEADLINE, Node, next_delivery, next_push, wait_for};
use std::collections::HashSet;

#[tokio::test]
async fn private_message_to_an_online_user_is_pushed_at_once() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (_bob, mut bob_rx) = node.user("bob").await.unwrap();
    let ack = alice.send_private("bob", "hello bob").await.unwrap();
    let d = next_delivery(&mut bob_rx).await.unwrap();
    assert_eq!(
        (d.from.as_str(), d.conversation.as_str(), d.text.as_str()),
        ("alice", "bob", "hello bob")
    );
    assert_eq!(d.kind, ConversationKind::Private as i32);
    assert_eq!(d.message_id, ack.message_id);
    assert_eq!(d.seq, ack.seq);
    assert!(d.timestamp_ms > 0);
}

#[tokio::test]
async fn every_device_of_a_user_receives_the_message() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (_bob1, mut rx1) = node.user("bob").await.unwrap();
    let (_bob2, mut rx2, _) = node.login("bob").await.unwrap();
    alice.send_private("bob", "to both").await.unwrap();
    assert_eq!(next_delivery(&mut rx1).await.unwrap().text, "to both");
    assert_eq!(next_delivery(&mut rx2).await.unwrap().text, "to both");
}

#[tokio::test]
async fn sending_to_an_unknown_user_is_not_found() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let err = alice.send_private("ghost", "boo").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn offline_messages_arrive_in_order_on_next_login_none_missing_none_twice() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (bob, _) = node.user("bob").await.unwrap();
    bob.logout().await.unwrap();
    drop(bob);
    // Send concurrently so the group commit sees many writes at once.
    let sends = (0..200).map(|i| {
        let a = alice.clone();
        async move { a.send_private("bob", &format!("m{i}")).await.unwrap() }
    });
    let acks = futures_join(sends).await;
    let seqs: HashSet<u64> = acks.iter().map(|a| a.seq).collect();
    assert_eq!(seqs.len(), 200, "every message has its own seq");

    let (bob, _rx, ok) = node.login("bob").await.unwrap();
    assert_eq!(ok.delivered_seq, 0);
    assert_eq!(ok.last_seq, 200);
    let got = bob.sync_all(ok.delivered_seq).await.unwrap();
    let got_seqs: Vec<u64> = got.iter().map(|d| d.seq).collect();
    assert_eq!(got_seqs, (1..=200).collect::<Vec<_>>(), "gap-free and in order");
    let texts: HashSet<&str> = got.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts.len(), 200);
    // Once acknowledged, they are no longer offline.
    bob.ack_delivered(200).await.unwrap();
    let (_bob2, _rx2, ok2) = node.login("bob").await.unwrap();
    assert_eq!(ok2.delivered_seq, 200);
    assert!(bob.sync(200, 0).await.unwrap().messages.is_empty());
}

async fn futures_join<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn resending_with_the_same_client_msg_id_returns_the_same_id_and_delivers_once() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (bob, mut bob_rx) = node.user("bob").await.unwrap();
    // Concurrent resends (the first may still be in the group commit) and a later one.
    let (a, b) = tokio::join!(
        alice.send_private_with_id("bob", "cm-1", "once"),
        alice.send_private_with_id("bob", "cm-1", "once")
    );
    let c = alice.send_private_with_id("bob", "cm-1", "once").await.unwrap();
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.message_id, b.message_id);
    assert_eq!(a.message_id, c.message_id);
    assert_eq!(a.seq, c.seq);
    alice.send_private_with_id("bob", "cm-2", "twice?").await.unwrap();
    assert_eq!(next_delivery(&mut bob_rx).await.unwrap().text, "once");
    assert_eq!(next_delivery(&mut bob_rx).await.unwrap().text, "twice?");
    let all = bob.sync_all(0).await.unwrap();
    assert_eq!(all.len(), 2, "the resends were not stored again: {all:?}");
}

#[tokio::test]
async fn group_chat_reaches_members_but_the_sender_and_offline_members_on_login() {
    let node = Node::start().unwrap();
    let (alice, mut alice_rx) = node.user("alice").await.unwrap();
    let (bob, mut bob_rx) = node.user("bob").await.unwrap();
    let (carol, _) = node.user("carol").await.unwrap();
    alice.create_group("rust").await.unwrap();
    bob.join_group("rust").await.unwrap();
    carol.join_group("rust").await.unwrap();
    carol.logout().await.unwrap();
    drop(carol);

    let ack = alice.send_group("rust", "hello group").await.unwrap();
    assert_eq!(ack.seq, 3, "the group's own seq, after bob's and carol's joins");
    let d = next_delivery(&mut bob_rx).await.unwrap();
    assert_eq!(
        (d.from.as_str(), d.conversation.as_str(), d.text.as_str()),
        ("alice", "rust", "hello group")
    );
    assert_eq!(d.kind, ConversationKind::Group as i32);
    assert_eq!(d.group_seq, 3);
    assert_eq!(d.message_id, ack.message_id);

    let (carol, _rx, ok) = node.login("carol").await.unwrap();
    let missed = carol.sync_all(ok.delivered_seq).await.unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0].text, "hello group");

    // The sender does not get its own message pushed.
    bob.send_group("rust", "reply").await.unwrap();
    let d = next_delivery(&mut alice_rx).await.unwrap();
    assert_eq!(d.text, "reply");

    let mut members = alice.members("rust").await.unwrap();
    members.sort();
    assert_eq!(members, ["alice", "bob", "carol"]);
    assert_eq!(bob.my_groups().await.unwrap(), ["rust"]);
    let history = carol
        .history(ConversationKind::Group, "rust", 0, 10)
        .await
        .unwrap();
    let texts: Vec<&str> = history
        .messages
        .iter()
        .filter(|m| m.group_event.is_none())
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(texts, ["reply", "hello group"], "newest first");
    // The joins are in the group's history too, in its order.
    let joins: Vec<(u64, &str)> = history
        .messages
        .iter()
        .filter_map(|m| Some((m.group_seq, m.group_event.as_ref()?.actor.as_str())))
        .collect();
    assert_eq!(joins, [(2, "carol"), (1, "bob")]);
}

#[tokio::test]
async fn only_members_post_to_or_read_a_group() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (mallory, _) = node.user("mallory").await.unwrap();
    alice.create_group("secret").await.unwrap();
    alice.send_group("secret", "for members").await.unwrap();

    let err = mallory.send_group("secret", "let me in").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAMember));
    let err = mallory.members("secret").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAMember));
    let err = mallory
        .history(ConversationKind::Group, "secret", 0, 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAMember));
    let err = mallory.send_group("nosuch", "x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = mallory.create_group("secret").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AlreadyExists));

    // After leaving, a member can no longer post.
    mallory.join_group("secret").await.unwrap();
    mallory.send_group("secret", "joined").await.unwrap();
    mallory.leave_group("secret").await.unwrap();
    let err = mallory.send_group("secret", "left").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAMember));
    assert!(mallory.my_groups().await.unwrap().is_empty());
    // Leaving twice, and joining or leaving a group that does not exist, are refused.
    let err = mallory.leave_group("secret").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAMember));
    for err in [
        mallory.join_group("nosuch").await.unwrap_err(),
        mallory.leave_group("nosuch").await.unwrap_err(),
    ] {
        assert_eq!(err.code(), Some(ErrorCode::NotFound));
    }
}

#[tokio::test]
async fn sender_gets_delivered_and_read_receipts() {
    let node = Node::start().unwrap();
    let (alice, mut alice_rx) = node.user("alice").await.unwrap();
    let (bob, mut bob_rx) = node.user("bob").await.unwrap();
    let ack = alice.send_private("bob", "did you get this?").await.unwrap();
    let d = next_delivery(&mut bob_rx).await.unwrap();
    bob.ack_delivered(d.seq).await.unwrap();
    let r = next_push(&mut alice_rx, |p| match p {
        Push::Receipt(r) => Some(r),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(
        (r.kind, r.message_id.as_str(), r.by.as_str()),
        (ReceiptKind::Delivered as i32, ack.message_id.as_str(), "bob")
    );
    let cursors = bob.ack_read(d.seq).await.unwrap();
    assert_eq!((cursors.delivered_seq, cursors.read_seq), (d.seq, d.seq));
    let r = next_push(&mut alice_rx, |p| match p {
        Push::Receipt(r) => Some(r),
        _ => None,
    })
    .await
    .unwrap();
    assert_eq!(r.kind, ReceiptKind::Read as i32);
    // Receipts are entries of alice's inbox: pushed with their seq, after the delivered one.
    assert!(r.seq > 0);
}

#[tokio::test]
async fn receipts_wait_in_an_offline_senders_inbox_and_cover_earlier_messages() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (bob, _) = node.user("bob").await.unwrap();
    let mut acks = Vec::new();
    for i in 0..3 {
        acks.push(alice.send_private("bob", &format!("m{i}")).await.unwrap());
    }
    alice.logout().await.unwrap();
    let all = bob.sync_all(0).await.unwrap();
    assert_eq!(all.len(), 3);
    bob.ack_delivered(all[2].seq).await.unwrap();
    bob.ack_read(all[2].seq).await.unwrap();

    // Alice comes back: two receipts wait for her, each covering all three messages.
    let (alice2, _, ok) = node.login("alice").await.unwrap();
    let waiting = wait_for("both receipts in alice's inbox", DEADLINE, || {
        let a = alice2.clone();
        async move {
            let w = chat_tests::receipts_after(&a, ok.delivered_seq).await?;
            (w.len() == 2).then_some(w)
        }
    })
    .await
    .unwrap();
    let kinds: Vec<(i32, &str, &str)> = waiting
        .iter()
        .map(|d| {
            let r = d.receipt.as_ref().expect("a receipt entry");
            assert_eq!((r.seq, d.text.as_str()), (d.seq, ""));
            (r.kind, r.message_id.as_str(), r.by.as_str())
        })
        .collect();
    let last = acks[2].message_id.as_str();
    assert_eq!(
        kinds,
        [
            (ReceiptKind::Delivered as i32, last, "bob"),
            (ReceiptKind::Read as i32, last, "bob")
        ]
    );
    assert_eq!(waiting[1].seq, waiting[0].seq + 1);
    // Acknowledging receipts makes no receipts for bob, and history shows messages only
    // (bob never wrote to alice: her own three).
    alice2.ack_read(waiting[1].seq).await.unwrap();
    let history = alice2
        .history(ConversationKind::Private, "bob", 0, 10)
        .await
        .unwrap();
    let texts: Vec<(&str, &str)> = history
        .messages
        .iter()
        .map(|d| (d.from.as_str(), d.text.as_str()))
        .collect();
    assert_eq!(texts, [("alice", "m2"), ("alice", "m1"), ("alice", "m0")]);
    let bob_inbox = bob.sync_all(0).await.unwrap();
    assert!(bob_inbox.iter().all(|d| d.receipt.is_none()), "{bob_inbox:?}");
}

#[tokio::test]
async fn online_list_shows_logged_in_users_and_drops_them_on_logout() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (bob, _) = node.user("bob").await.unwrap();
    assert_eq!(alice.online().await.unwrap(), ["alice", "bob"]);
    bob.logout().await.unwrap();
    wait_for("bob to go offline", DEADLINE, || {
        let a = alice.clone();
        async move { (a.online().await.ok()? == ["alice"]).then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn private_history_pages_backwards_through_a_conversation() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (carol, _) = node.user("carol").await.unwrap();
    let (bob, _) = node.user("bob").await.unwrap();
    for i in 1..=5 {
        alice.send_private("bob", &format!("a{i}")).await.unwrap();
        carol.send_private("bob", &format!("c{i}")).await.unwrap();
    }
    let first = bob
        .history(ConversationKind::Private, "alice", 0, 3)
        .await
        .unwrap();
    let texts: Vec<&str> = first.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["a5", "a4", "a3"]);
    assert!(first.next_before_seq > 0);
    let second = bob
        .history(ConversationKind::Private, "alice", first.next_before_seq, 3)
        .await
        .unwrap();
    let texts: Vec<&str> = second.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["a2", "a1"]);
}

#[tokio::test]
async fn retention_keeps_the_newest_messages_and_says_where_history_starts() {
    let node = Node::start_with(chat_tests::NodeOpts {
        extra_toml: "[storage]\nretention_max_messages = 5".into(),
        ..Default::default()
    })
    .unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (bob, _) = node.user("bob").await.unwrap();
    bob.logout().await.unwrap();
    for i in 1..=8 {
        alice
            .send_private_with_id("bob", &format!("c{i}"), &format!("m{i}"))
            .await
            .unwrap();
    }
    let (bob2, _rx, ok) = node.login("bob").await.unwrap();
    assert_eq!(ok.last_seq, 8, "seqs keep counting past what is retained");
    let page = bob2.sync(0, 0).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [4, 5, 6, 7, 8]);
    assert_eq!(
        page.first_available_seq, 4,
        "the client learns that 1..=3 are gone"
    );
    // A retained message still dedupes.
    let again = alice.send_private_with_id("bob", "c8", "m8").await.unwrap();
    assert_eq!(again.seq, 8);
    assert_eq!(bob2.sync(0, 0).await.unwrap().messages.len(), 5);
    drop(bob);
}

#[tokio::test]
async fn retention_reaches_inboxes_that_receive_nothing_new() {
    let mut node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    node.user("bob").await.unwrap();
    for i in 1..=6 {
        alice.send_private("bob", &format!("m{i}")).await.unwrap();
    }
    // A stricter limit from now on; bob's inbox receives nothing more: the sweep after
    // the start trims it.
    node.restart_with(chat_tests::NodeOpts {
        extra_toml: "[storage]\nretention_max_messages = 2".into(),
        ..Default::default()
    })
    .unwrap();
    let (bob, _, _) = node.login("bob").await.unwrap();
    let page = wait_for("the sweep to trim bob's inbox", DEADLINE, || async {
        let page = bob.sync(0, 0).await.ok()?;
        (page.first_available_seq == 5).then_some(page)
    })
    .await
    .unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["m5", "m6"]);
}

#[tokio::test]
async fn dropping_the_last_client_handle_closes_the_connection_and_the_user_goes_offline() {
    let node = Node::start().unwrap();
    let (alice, _) = node.user("alice").await.unwrap();
    let (bob, bob_rx) = node.user("bob").await.unwrap();
    let bob_copy = bob.clone();
    drop((bob, bob_rx));
    assert_eq!(
        alice.online().await.unwrap(),
        ["alice", "bob"],
        "a clone keeps it open"
    );
    drop(bob_copy);
    wait_for("bob to go offline", DEADLINE, || {
        let a = alice.clone();
        async move { (a.online().await.ok()? == ["alice"]).then_some(()) }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_senders_other_devices_get_what_it_sent_and_history_shows_both_directions() {
    let node = Node::start().unwrap();
    let (bob, mut bob_rx) = node.user("bob").await.unwrap();
    let (phone, mut phone_rx) = node.user("carl").await.unwrap();
    let (laptop, mut laptop_rx, _) = node.login("carl").await.unwrap();

    let sent = phone
        .send_private_with_id("bob", "c-1", "hello from the phone")
        .await
        .unwrap();
    assert_eq!(
        next_delivery(&mut bob_rx).await.unwrap().text,
        "hello from the phone"
    );
    // The laptop gets a copy: from carl, in the conversation with bob, the same message id.
    let copy = next_delivery(&mut laptop_rx).await.unwrap();
    assert_eq!(
        (copy.from.as_str(), copy.conversation.as_str(), copy.text.as_str()),
        ("carl", "bob", "hello from the phone")
    );
    assert_eq!(copy.message_id, sent.message_id);
    // The phone, which sent it, is not pushed its own message: the next push it gets is bob's.
    bob.send_private("carl", "hi carl").await.unwrap();
    assert_eq!(next_delivery(&mut phone_rx).await.unwrap().text, "hi carl");

    // A resend with the same client message id: same answer, still one copy each.
    let again = phone
        .send_private_with_id("bob", "c-1", "hello from the phone")
        .await
        .unwrap();
    assert_eq!((again.message_id, again.seq), (sent.message_id.clone(), sent.seq));
    let carls: Vec<String> = laptop
        .sync_all(0)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(carls, ["hello from the phone", "hi carl"]);
    // bob's inbox: carl's message, and bob's own copy of his answer.
    let bobs: Vec<(String, String)> = bob
        .sync_all(0)
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.from, d.text))
        .collect();
    assert_eq!(
        bobs,
        [
            ("carl".to_owned(), "hello from the phone".to_owned()),
            ("bob".to_owned(), "hi carl".to_owned())
        ]
    );

    // History of the conversation (from the laptop, which sent nothing): both
    // directions, newest first.
    let page = laptop
        .history(ConversationKind::Private, "bob", 0, 10)
        .await
        .unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|d| d.text.as_str()).collect();
    assert_eq!(texts, ["hi carl", "hello from the phone"]);
}

#[tokio::test]
async fn without_own_copies_a_senders_inbox_holds_only_what_it_received() {
    let node = Node::start_with(chat_tests::NodeOpts {
        client_toml: "copy_own_messages = false".into(),
        ..Default::default()
    })
    .unwrap();
    let (bob, mut bob_rx) = node.user("bob").await.unwrap();
    let (dora, _) = node.user("dora").await.unwrap();
    dora.send_private("bob", "no copy for me").await.unwrap();
    assert_eq!(next_delivery(&mut bob_rx).await.unwrap().text, "no copy for me");
    bob.send_private("dora", "but one for you").await.unwrap();
    let doras: Vec<String> = dora
        .sync_all(0)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.text)
        .collect();
    assert_eq!(doras, ["but one for you"]);
}
