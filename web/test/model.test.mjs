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

const { Model, keyOf } = await import("../src/model.js");

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
