// Unit tests of the web client's model (no DOM, no network): run with
// `node --test web/test/` (tests/tests/web.rs does).
import { test } from "node:test";
import assert from "node:assert/strict";

// The model keeps what was read on this device in localStorage.
globalThis.localStorage = {
  items: new Map(),
  getItem(k) {
    return this.items.has(k) ? this.items.get(k) : null;
  },
  setItem(k, v) {
    this.items.set(k, String(v));
  },
  removeItem(k) {
    this.items.delete(k);
  },
};

const { Model, TypingOut, describeGroupEvent, keyOf, mayInGroup, groupPanel, roleName, excerpt, previewText } = await import("../src/model.js");

let nextId = 1;
const delivery = (seq, from, conversation, text, extra = {}) => ({
  seq,
  message_id: `m${nextId++}`,
  from,
  kind: "PRIVATE",
  conversation,
  timestamp_ms: 1000 * seq,
  text,
  group_seq: 0,
  receipt: null,
  ...extra,
});

test("a private message belongs to the other person's conversation, both ways", () => {
  assert.equal(keyOf(delivery(1, "bob", "alice", "hi"), "alice"), "@bob");
  assert.equal(keyOf(delivery(2, "alice", "bob", "hi"), "alice"), "@bob");
  assert.equal(keyOf(delivery(3, "bob", "team", "hi", { kind: "GROUP" }), "alice"), "#team");
});

test("a message seen twice (push and sync, or history) is kept once", () => {
  const m = new Model("alice");
  const d = delivery(1, "bob", "alice", "once");
  assert.ok(m.entry(d, 0));
  assert.equal(m.entry(d, 0), null);
  m.history(m.conv("@bob"), { messages: [d], next_before_seq: 0 });
  assert.equal(m.conv("@bob").messages.size, 1);
});

test("only messages from others after the read cursor count as unread", () => {
  const m = new Model("alice-unread");
  m.entry(delivery(1, "bob", "alice-unread", "old"), 1);
  m.entry(delivery(2, "bob", "alice-unread", "new"), 1);
  m.entry(delivery(3, "alice-unread", "bob", "mine"), 1);
  assert.deepEqual([...m.conv("@bob").unread], [2]);
});

test("the read cursor stops before the first message still unread elsewhere", () => {
  const m = new Model("alice-cursor");
  m.entry(delivery(1, "bob", "alice-cursor", "from bob"), 0);
  m.entry(delivery(2, "carol", "alice-cursor", "from carol"), 0);
  m.entry(delivery(3, "bob", "alice-cursor", "bob again"), 0);
  m.readAll(m.conv("@carol"));
  assert.equal(m.readCursor(), 0, "bob's first message is still unread");
  m.readAll(m.conv("@bob"));
  assert.equal(m.readCursor(), 3);
});

test("what was read on this device stays read after a reload", () => {
  const m = new Model("alice-reload");
  const d = delivery(5, "bob", "alice-reload", "seen");
  m.entry(d, 0);
  m.readAll(m.conv("@bob"));
  const again = new Model("alice-reload");
  again.entry(d, 0);
  assert.equal(again.conv("@bob").unread.size, 0);
});

test("a receipt covers the message it names and every earlier one", () => {
  const m = new Model("alice-ticks");
  const c = m.conv("@bob");
  const [a, b, later] = [1, 2, 3].map((i) => delivery(i, "alice-ticks", "bob", `m${i}`));
  for (const d of [a, b, later]) m.entry(d, 0);
  m.entry({ seq: 4, receipt: { kind: "DELIVERED", message_id: later.message_id, by: "bob" } }, 0);
  m.entry({ seq: 5, receipt: { kind: "READ", message_id: b.message_id, by: "bob" } }, 0);
  const tick = m.ticks(c);
  assert.deepEqual(
    m.ordered(c).map((x) => tick(x)),
    ["read", "read", "delivered"],
  );
});

test("a pending message becomes the acknowledged one, not a second copy", () => {
  const m = new Model("alice-pending");
  const item = { conversation: "@bob", text: "hello", client_msg_id: "c1" };
  m.pending(item);
  // Its own copy arrives (a catch-up after a reconnect) before the ack of the resend.
  m.entry(delivery(7, "alice-pending", "bob", "hello", { message_id: "srv-1" }), 0);
  m.acked(item, { message_id: "srv-1", timestamp_ms: 7000, seq: 1 });
  assert.deepEqual(m.ordered(m.conv("@bob")).map((x) => x.id), ["srv-1"]);
});

test("a group message is read when every member has read it", () => {
  const m = new Model("alice-group");
  const c = m.conv("#team");
  const item = { conversation: "#team", text: "hi team", client_msg_id: "g1" };
  m.pending(item);
  m.acked(item, { message_id: "g-1", timestamp_ms: 1, seq: 9 });
  const [msg] = m.openGroupReceipts(c, 10);
  assert.equal(msg.gseq, 9);
  assert.ok(m.groupReceipts(c, msg, [{ user: "bob", delivered: true, read: true }, { user: "carol", delivered: true, read: false }]));
  assert.equal(m.ticks(c)(msg), "delivered");
  assert.equal(m.groupReceipts(c, msg, [{ user: "bob", read: true }, { user: "carol", unknown: true }]), false);
  assert.ok(m.groupReceipts(c, msg, [{ user: "bob", read: true }, { user: "carol", read: true }]));
  assert.equal(m.ticks(c)(msg), "read");
  assert.deepEqual(m.openGroupReceipts(c, 10), []);
});

test("conversations are listed by their last activity", () => {
  const m = new Model("alice-order");
  m.entry(delivery(1, "bob", "alice-order", "first"), 0);
  m.entry(delivery(2, "carol", "alice-order", "second"), 0);
  m.entry(delivery(3, "bob", "alice-order", "third"), 0);
  assert.deepEqual(m.sorted().map((c) => c.key), ["@bob", "@carol"]);
});

/** A contact change as the inbox carries it: a Delivery with `contact` set. */
const contactEntry = (seq, user, state, by) => ({
  ...delivery(seq, user, "", ""),
  contact: { user, state, by },
});

test("contact changes are inbox entries but never messages, and never unread", () => {
  const m = new Model("alice-contacts");
  assert.equal(m.entry(contactEntry(1, "bob", "INCOMING", "bob"), 0), null);
  assert.equal(m.entry(contactEntry(2, "carol", "OUTGOING", "alice-contacts"), 0), null);
  assert.equal(m.convs.size, 0, "no conversation appears for a contact change");
  assert.equal(m.lastSeq, 2, "they are acknowledged like messages");
  assert.equal(m.readCursor(), 2, "nothing unread holds the read cursor back");
  assert.deepEqual(
    m.contactRows().map((c) => [c.user, c.state]),
    [["bob", "INCOMING"], ["carol", "OUTGOING"]],
  );
  assert.equal(m.incoming(), 1);
  m.entry(contactEntry(3, "bob", "CONTACT", "alice-contacts"), 0);
  m.entry(contactEntry(4, "carol", "CONTACT_STATE_NONE", "carol"), 0);
  assert.deepEqual(m.contactRows().map((c) => [c.user, c.state]), [["bob", "CONTACT"]]);
  assert.equal(m.incoming(), 0);
});

test("the contact list replaces what was known and brings presence with it", () => {
  const m = new Model("alice-list");
  m.entry(contactEntry(1, "old", "CONTACT", "old"), 0);
  m.contactList({
    contacts: [
      { user: "zed", state: "CONTACT", since_ms: 5, online: false, last_seen_ms: 1234 },
      { user: "bob", state: "CONTACT", since_ms: 6, online: true, last_seen_ms: 0 },
      { user: "carol", state: "OUTGOING", since_ms: 7, online: false, last_seen_ms: 0 },
      { user: "dave", state: "INCOMING", since_ms: 8, online: false, last_seen_ms: 0 },
    ],
  });
  assert.deepEqual(
    m.contactRows().map((c) => [c.user, c.state, c.online, c.lastSeen]),
    [
      ["dave", "INCOMING", false, 0],
      ["bob", "CONTACT", true, 0],
      ["zed", "CONTACT", false, 1234],
      ["carol", "OUTGOING", false, 0],
    ],
  );
});

test("presence pushes move the dot and the last seen time", () => {
  const m = new Model("alice-presence");
  m.contactList({ contacts: [{ user: "bob", state: "CONTACT", since_ms: 1, online: false, last_seen_ms: 10 }] });
  m.presenceUpdate({ changes: [{ user: "bob", online: true, last_seen_ms: 0 }] });
  assert.deepEqual(m.contactRows()[0], { user: "bob", state: "CONTACT", online: true, lastSeen: 0 });
  m.presenceUpdate({ changes: [{ user: "bob", online: false, last_seen_ms: 99 }, { user: "member", online: true }] });
  assert.deepEqual(m.contactRows()[0], { user: "bob", state: "CONTACT", online: false, lastSeen: 99 });
  assert.equal(m.presence.get("member").online, true, "group co-members have presence too");
});

test("typing shows until it expires, is stopped, or a message from the typist comes", () => {
  const m = new Model("alice-typing");
  const notice = (from, extra = {}) => ({ from, kind: "PRIVATE", conversation: "alice-typing", stopped: false, expires_in_ms: 6000, ...extra });
  assert.equal(m.typingNotice(notice("bob"), 1000), "@bob");
  assert.deepEqual(m.typers("@bob", 1000), ["bob"]);
  assert.equal(m.typingExpiry("@bob"), 7000);
  assert.deepEqual(m.typers("@bob", 6999), ["bob"]);
  assert.deepEqual(m.typers("@bob", 7000), [], "gone once expired");
  assert.equal(m.typingExpiry("@bob"), Infinity);

  m.typingNotice(notice("bob"), 8000);
  m.typingNotice(notice("bob", { stopped: true }), 8500);
  assert.deepEqual(m.typers("@bob", 8500), [], "gone when stopped");

  m.typingNotice(notice("bob"), 9000);
  m.entry(delivery(1, "bob", "alice-typing", "done typing"), 0);
  assert.deepEqual(m.typers("@bob", 9001), [], "gone when the message comes");

  const group = (from) => notice(from, { kind: "GROUP", conversation: "team" });
  assert.equal(m.typingNotice(group("carol"), 0), "#team");
  m.typingNotice(group("bob"), 0);
  assert.deepEqual(m.typers("#team", 1), ["bob", "carol"]);
  assert.deepEqual(m.typers("@carol", 1), [], "a group notice is not a private one");
});

test("typing notices go out at most once per window, and a late stop waits for it", () => {
  const t = new TypingOut(2000);
  assert.deepEqual(t.typed("@bob", 0), { send: "typing" });
  assert.deepEqual(t.typed("@bob", 500), {}, "within the window");
  assert.deepEqual(t.typed("#team", 600), { send: "typing" }, "windows are per conversation");
  assert.deepEqual(t.typed("@bob", 2100), { send: "typing" }, "renewed after the window");
  // Sent at 2500: the server would drop a "stopped" before 4100.
  assert.deepEqual(t.stopped("@bob", 2500), { retryIn: 1600 });
  assert.deepEqual(t.due("@bob", 4100), { send: "stopped" });
  assert.deepEqual(t.stopped("@bob", 4200), {}, "already stopped");
  assert.deepEqual(t.stopped("@carol", 0), {}, "never started");
  // Typing again before a delayed stop went out cancels it.
  assert.deepEqual(t.typed("@dave", 0), { send: "typing" });
  assert.deepEqual(t.stopped("@dave", 100), { retryIn: 1900 });
  assert.deepEqual(t.typed("@dave", 1000), {});
  assert.deepEqual(t.due("@dave", 2000), {});
  // And typing right after a stop waits for the window too.
  assert.deepEqual(t.stopped("@dave", 2500), { send: "stopped" });
  assert.deepEqual(t.typed("@dave", 3000), { retryIn: 1500 });
  assert.deepEqual(t.due("@dave", 4500), { send: "typing" });
});

test("after a message, typing again is announced anew, once the window allows", () => {
  const t = new TypingOut(2000);
  assert.deepEqual(t.typed("@bob", 0), { send: "typing" });
  // The message ends "typing…" over there; the "stopped" waits for the window.
  assert.deepEqual(t.messageSent("@bob", 100), { retryIn: 1900 });
  assert.deepEqual(t.typed("@bob", 200), { retryIn: 1800 }, "not taken as still shown");
  assert.deepEqual(t.due("@bob", 2000), { send: "typing" });
  assert.deepEqual(t.messageSent("@bob", 4500), { send: "stopped" });
  assert.deepEqual(t.typed("@bob", 7000), { send: "typing" });
});

test("group events are lines of their own: described, never unread", () => {
  const m = new Model("ann");
  const event = (seq, kind, actor, target, extra = {}) => ({
    seq,
    message_id: `g:crew:${seq}`,
    from: actor,
    kind: "GROUP",
    conversation: "crew",
    timestamp_ms: seq,
    text: "",
    group_seq: seq,
    receipt: null,
    contact: null,
    group_event: { kind, actor, target, role: "GROUP_ROLE_MEMBER", ...extra },
  });
  const joined = m.entry(event(1, "JOINED", "bob", ""), 0);
  assert.equal(joined.text, "bob joined");
  assert.ok(joined.event);
  const promoted = m.entry(event(2, "ROLE_CHANGED", "bob", "ann", { role: "ADMIN" }), 0);
  assert.equal(promoted.text, "bob made you an admin");
  assert.equal(describeGroupEvent({ kind: "INVITED", actor: "ann", target: "cy" }, "ann"), "you invited cy");
  assert.equal(m.conv("#crew").unread.size, 0, "events are not unread messages");
});

// ---- group roles and invitations ---------------------------------------------------

const ROLES = [null, "member", "admin", "owner"];

/** Who may do what, written out by hand from state/src/governance.rs (not derived
 * from the code under test): for each action, the [actor, target] pairs allowed, in a
 * public group and in a private one. */
const ALLOWED = {
  invite: { public: [["member", null], ["admin", null], ["owner", null]], private: [["admin", null], ["owner", null]] },
  remove: { both: [["admin", "member"], ["owner", "member"], ["owner", "admin"]] },
  ban: { both: [["admin", null], ["admin", "member"], ["owner", null], ["owner", "member"], ["owner", "admin"]] },
  unban: { both: ["admin", "owner"].flatMap((a) => ROLES.map((t) => [a, t])) },
  setInfo: { both: ["admin", "owner"].flatMap((a) => ROLES.map((t) => [a, t])) },
  makeAdmin: { both: [["owner", "member"]] },
  makeMember: { both: [["owner", "admin"]] },
  transfer: { both: [["owner", "member"], ["owner", "admin"]] },
  delete: { both: ROLES.map((t) => ["owner", t]) },
  leave: { both: ["member", "admin"].flatMap((a) => ROLES.map((t) => [a, t])) },
};

test("each role may take exactly the group actions the server allows it", () => {
  for (const [action, table] of Object.entries(ALLOWED)) {
    for (const isPrivate of [false, true]) {
      const pairs = table.both ?? (isPrivate ? table.private : table.public);
      for (const actor of ROLES) {
        for (const target of ROLES) {
          const expected = pairs.some(([a, t]) => a === actor && t === target);
          assert.equal(mayInGroup(action, actor, target, isPrivate), expected, `${action} by ${actor} on ${target}, private ${isPrivate}`);
        }
      }
    }
  }
  assert.equal(mayInGroup("fly", "owner", null, false), false, "an unknown action is never offered");
});

test("the settings panel offers each member the actions of its role", () => {
  const info = {
    private: true,
    members: [
      { user: "cy", role: "GROUP_ROLE_MEMBER" },
      { user: "ann", role: "OWNER" },
      { user: "bob", role: "ADMIN" },
      { user: "al", role: "GROUP_ROLE_MEMBER" },
    ],
  };
  const owner = groupPanel(info, "ann");
  assert.equal(owner.role, "owner");
  assert.deepEqual(owner.actions, ["invite", "setInfo", "unban", "delete"]);
  assert.deepEqual(owner.members.map((m) => `${m.user}:${m.role}`), ["ann:owner", "bob:admin", "al:member", "cy:member"]);
  assert.deepEqual(owner.members[0].actions, [], "nothing to do to oneself");
  assert.deepEqual(owner.members[1].actions, ["makeMember", "transfer", "remove", "ban"]);
  assert.deepEqual(owner.members[2].actions, ["makeAdmin", "transfer", "remove", "ban"]);
  const admin = groupPanel(info, "bob");
  assert.deepEqual(admin.actions, ["invite", "setInfo", "unban", "leave"]);
  assert.deepEqual(admin.members.map((m) => m.actions), [[], [], ["remove", "ban"], ["remove", "ban"]]);
  const member = groupPanel(info, "cy");
  assert.deepEqual(member.actions, ["leave"], "no invitations to a private group");
  assert.ok(member.members.every((m) => m.actions.length === 0));
  assert.deepEqual(groupPanel({ ...info, private: false }, "cy").actions, ["invite", "leave"]);
  assert.equal(groupPanel(info, "dan").role, null, "a non-member may do nothing");
  assert.deepEqual(groupPanel(info, "dan").actions, []);
  assert.equal(roleName("GROUP_ROLE_MEMBER"), "member");
});

const groupEvent = (seq, group, kind, actor, target) => ({
  seq,
  message_id: `e:${group}:${seq}`,
  from: actor,
  kind: "GROUP",
  conversation: group,
  timestamp_ms: seq,
  text: "",
  group_seq: 0,
  receipt: null,
  contact: null,
  group_event: { kind, actor, target, role: "GROUP_ROLE_MEMBER" },
});

test("an invitation for me waits for an answer, until I join or am a member", () => {
  const m = new Model("ivy");
  m.entry(groupEvent(1, "club", "INVITED", "ann", "ivy"), 0);
  m.entry(groupEvent(2, "other", "INVITED", "ann", "bob"), 0);
  assert.deepEqual(m.invitation("#club"), { from: "ann", id: "e:club:1" });
  assert.equal(m.invitation("#other"), null, "an invitation of someone else");
  assert.equal(m.conv("#club").last.text, "ann invited you");
  m.entry(groupEvent(3, "club", "JOINED", "ivy", ""), 0);
  assert.equal(m.invitation("#club"), null);
  // Removed, then invited again: a new question.
  m.entry(groupEvent(4, "club", "REMOVED", "ann", "ivy"), 0);
  m.entry(groupEvent(5, "club", "INVITED", "ann", "ivy"), 0);
  assert.equal(m.invitation("#club")?.id, "e:club:5");
  m.memberOf(["club"]);
  assert.equal(m.invitation("#club"), null, "a member has nothing to accept");
});

test("an answered invitation is not asked again when the inbox is read anew", () => {
  const m = new Model("ivy-answers");
  const invite = groupEvent(1, "club", "INVITED", "ann", "ivy-answers");
  m.entry(invite, 0);
  m.entry(groupEvent(2, "crew", "INVITED", "bob", "ivy-answers"), 0);
  m.answered("#club");
  assert.equal(m.invitation("#club"), null);
  const reloaded = new Model("ivy-answers");
  reloaded.entry(invite, 0);
  reloaded.entry(groupEvent(2, "crew", "INVITED", "bob", "ivy-answers"), 0);
  assert.equal(reloaded.invitation("#club"), null);
  assert.equal(reloaded.invitation("#crew")?.from, "bob", "the other one still waits");
  // Banned after the invitation: nothing to accept any more.
  reloaded.entry(groupEvent(3, "crew", "BANNED", "bob", "ivy-answers"), 0);
  assert.equal(reloaded.invitation("#crew"), null);
});

test("edits and recalls change the message they name and are no messages themselves", () => {
  const m = new Model("ann");
  const base = { kind: "PRIVATE", conversation: "ann", receipt: null, contact: null, group_event: null, change: null };
  const msg = m.entry({ ...base, seq: 1, message_id: "p:ann:1", from: "bob", text: "helo", timestamp_ms: 1 }, 0);
  assert.equal(msg.text, "helo");
  const change = (seq, kind, text) => ({
    ...base,
    seq,
    message_id: `p:ann:${seq}`,
    from: "bob",
    text: "",
    timestamp_ms: seq,
    change: { kind, message_id: "p:ann:1", text, by: "bob" },
  });
  assert.equal(m.entry(change(2, "EDIT", "hello"), 0), null);
  assert.equal(msg.text, "hello");
  assert.ok(msg.edited);
  assert.equal(m.entry(change(3, "REACT", "👍"), 0), null);
  assert.equal(msg.reactions.bob, "👍");
  assert.equal(m.entry(change(4, "RECALL", ""), 0), null);
  assert.ok(msg.recalled);
  assert.equal(m.conv("@bob").messages.size, 1, "changes are no messages");
});

test("history brings a message's reply, reactions and deletion with it", () => {
  const m = new Model("ann");
  const c = m.conv("@bob");
  m.history(c, {
    messages: [
      delivery(3, "bob", "ann", "", { message_id: "p:ann:3", recalled: true }),
      delivery(2, "ann", "bob", "yes", { message_id: "p:bob:7", reply_to: "p:ann:1" }),
      delivery(1, "bob", "ann", "tea?", { message_id: "p:ann:1", edited: true, reactions: [{ emoji: "👍", users: ["ann", "bob"] }] }),
    ],
    next_before_seq: 0,
  });
  const [tea, yes, gone] = m.ordered(c);
  assert.deepEqual([tea.edited, tea.reactions], [true, { ann: "👍", bob: "👍" }]);
  assert.equal(yes.replyTo, "p:ann:1");
  assert.deepEqual([gone.recalled, gone.text], [true, "(message deleted)"]);
  assert.deepEqual(m.reactionRows(tea), [{ emoji: "👍", users: ["ann", "bob"], mine: true }]);
  assert.equal(m.myReaction(tea), "👍");
});

test("a reply quotes the message it answers, or says it is not here", () => {
  const m = new Model("ann");
  const c = m.conv("@bob");
  const long = "x".repeat(100);
  const asked = m.entry(delivery(1, "bob", "ann", `${long}\nmore`, { message_id: "p:ann:1" }), 0);
  const reply = m.entry(delivery(2, "ann", "bob", "yes", { message_id: "p:bob:1", reply_to: "p:ann:1" }), 0);
  const orphan = m.entry(delivery(3, "bob", "ann", "and?", { message_id: "p:ann:3", reply_to: "p:ann:0" }), 0);
  assert.equal(m.quote(c, asked), null);
  assert.deepEqual(m.quote(c, reply), { id: "p:ann:1", from: "bob", mine: false, text: `${"x".repeat(80)}…`, recalled: false });
  assert.deepEqual(m.quote(c, orphan), { id: "p:ann:0", missing: true });
  m.change("@bob", { kind: "RECALL", message_id: "p:ann:1", text: "", by: "bob" });
  assert.equal(m.quote(c, reply).recalled, true);
  // A reply being sent quotes too.
  const pending = m.pending({ conversation: "@bob", text: "also", client_msg_id: "c1", reply_to: "p:ann:3" });
  assert.equal(m.quote(c, pending).text, "and?");
});

test("the message menu offers what the server allows", () => {
  const m = new Model("ann");
  const dm = m.conv("@bob");
  const theirs = m.entry(delivery(1, "bob", "ann", "hi", { message_id: "p:ann:1" }), 0);
  const mine = m.entry(delivery(2, "ann", "bob", "hey", { message_id: "p:bob:1" }), 0);
  assert.deepEqual(m.messageActions(dm, theirs), ["reply", "react"]);
  assert.deepEqual(m.messageActions(dm, mine), ["reply", "react", "edit", "delete"]);
  const group = m.conv("#crew");
  const post = m.entry(delivery(3, "bob", "crew", "yo", { kind: "GROUP", message_id: "g:crew:4" }), 0);
  assert.deepEqual(m.messageActions(group, post, "member"), ["reply", "react"]);
  assert.deepEqual(m.messageActions(group, post, null), ["reply", "react"], "the role not known yet");
  assert.deepEqual(m.messageActions(group, post, "admin"), ["reply", "react", "delete"]);
  assert.deepEqual(m.messageActions(group, post, "owner"), ["reply", "react", "delete"]);
  // Nothing for a message not sent yet, an event, or a deleted message.
  const pending = m.pending({ conversation: "@bob", text: "wait", client_msg_id: "c2" });
  assert.deepEqual(m.messageActions(dm, pending), []);
  const joined = m.entry({ ...delivery(4, "bob", "crew", "", { kind: "GROUP", message_id: "g:crew:5" }), group_event: { kind: "JOINED", actor: "bob" } }, 0);
  assert.deepEqual(m.messageActions(group, joined, "owner"), []);
  m.change("@bob", { kind: "RECALL", message_id: "p:bob:1", text: "", by: "ann" });
  assert.deepEqual(m.messageActions(dm, mine), []);
});

test("a change applied twice changes nothing more, and a deleted message stays deleted", () => {
  const m = new Model("ann");
  const msg = m.entry(delivery(1, "ann", "bob", "helo", { message_id: "p:bob:1" }), 0);
  const apply = (kind, text, by = "ann") => m.change("@bob", { kind, message_id: "p:bob:1", text, by });
  // The page applies its own change once acknowledged; the entry comes after.
  apply("EDIT", "hello");
  apply("EDIT", "hello");
  apply("REACT", "🎉", "bob");
  apply("REACT", "👍");
  apply("REACT", "👍");
  assert.deepEqual([msg.text, msg.edited, msg.reactions], ["hello", true, { bob: "🎉", ann: "👍" }]);
  apply("REACT", "");
  assert.deepEqual(m.reactionRows(msg), [{ emoji: "🎉", users: ["bob"], mine: false }]);
  apply("RECALL", "");
  apply("EDIT", "back again");
  apply("REACT", "👍", "bob");
  assert.deepEqual([msg.text, msg.recalled, msg.reactions], ["(message deleted)", true, {}]);
});

test("an excerpt is one line, cut with an ellipsis", () => {
  assert.equal(excerpt("  two\n lines "), "two lines");
  assert.equal(excerpt("abcdef", 3), "abc…");
  assert.equal(excerpt("👍👍👍👍", 3), "👍👍👍…");
  assert.equal(excerpt(undefined), "");
});

test("a message keeps its files, and one without text is described by them", () => {
  const m = new Model("alice-files");
  const photo = { blob_id: "aa", name: "cat.png", mime: "image/png", size: 10, thumbnail: new Uint8Array([1]) };
  const msg = m.entry(delivery(1, "bob", "alice-files", "", { attachments: [photo] }), 0);
  assert.deepEqual(msg.attachments, [photo]);
  assert.equal(previewText(msg), "📎 cat.png");
  assert.equal(m.sorted()[0].last, msg);
  assert.equal(previewText({ text: "", attachments: [photo, photo] }), "📎 2 files");
  assert.equal(previewText({ text: "look", attachments: [photo] }), "look");
  // A reply to it quotes the file.
  const c = m.conv("@bob");
  const reply = m.entry(delivery(2, "bob", "alice-files", "nice?", { reply_to: msg.id }), 0);
  assert.equal(m.quote(c, reply).text, "📎 cat.png");
  // Deleted for everyone: the files go too.
  m.change("@bob", { kind: "RECALL", message_id: msg.id, by: "bob" });
  assert.deepEqual(msg.attachments, []);
  assert.deepEqual(m.add(c, delivery(3, "bob", "alice-files", "", { recalled: true, attachments: [photo] })).attachments, []);
});

test("a pending message shows the files its uploads answered, else the outbox's", () => {
  const m = new Model("alice-pfiles");
  const full = { blob_id: "bb", name: "cat.png", mime: "image/png", size: 10, thumbnail: new Uint8Array([1]) };
  const item = { conversation: "@bob", text: "", client_msg_id: "f1", attachments: [{ blob_id: "bb", name: "cat.png", mime: "image/png" }] };
  assert.deepEqual(m.pending(item, [full]).attachments, [full]);
  m.acked(item, { message_id: "p:bob:1", timestamp_ms: 5, seq: 1 });
  assert.deepEqual(m.conv("@bob").messages.get("p:bob:1").attachments, [full]);
  const again = { ...item, client_msg_id: "f2" };
  assert.deepEqual(m.pending(again).attachments, item.attachments);
});
