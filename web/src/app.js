// The web client: the chat protocol over WebSocket (binary messages, one protobuf
// message each), with protobufjs reading protocol/chat.proto, bundled at build time.
import protobuf from "protobufjs";
import protoText from "../../protocol/chat.proto";

const root = protobuf.parse(protoText, { keepCase: true }).root;
const ClientFrame = root.lookupType("chat.v1.ClientFrame");
const ServerFrame = root.lookupType("chat.v1.ServerFrame");
const asObject = (m) => ServerFrame.toObject(m, { longs: Number, enums: String, defaults: true, oneofs: true });

const $ = (id) => document.getElementById(id);
const pending = new Map();
let nextId = 1;
let ws;
let me = null;
let lastSeq = 0;

function connect() {
  return new Promise((resolve, reject) => {
    ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("cannot connect"));
    ws.onclose = () => status("disconnected");
    ws.onmessage = (ev) => onFrame(asObject(ServerFrame.decode(new Uint8Array(ev.data))));
  });
}

function request(field, body) {
  const id = nextId++;
  ws.send(ClientFrame.encode(ClientFrame.create({ request_id: id, [field]: body })).finish());
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    setTimeout(() => pending.delete(id) && reject(new Error("no answer")), 15000);
  });
}

function onFrame(frame) {
  const kind = frame.body;
  const value = frame[kind];
  if (frame.request_id !== 0) {
    const waiter = pending.get(frame.request_id);
    pending.delete(frame.request_id);
    if (!waiter) return;
    if (kind === "error") waiter.reject(new Error(`${value.code}: ${value.message}`));
    else waiter.resolve(value);
    return;
  }
  if (kind === "delivery") showDelivery(value);
  else if (kind === "receipt") showReceipt(value);
  else if (kind === "closing") status(`closed by server: ${value.reason}`);
}

function status(text) { $("status").textContent = text; }
function error(text) { $("error").textContent = text; }

function addMessage({ id, from, to, text, mine }) {
  const div = document.createElement("div");
  div.className = "msg" + (mine ? " mine" : "");
  if (id) div.dataset.id = id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = `${from} → ${to}: `;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  if (mine) {
    const tick = document.createElement("span");
    tick.className = "tick";
    tick.textContent = "✓";
    tick.title = "sent";
    div.append(tick);
  }
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
}

function showDelivery(d) {
  if (d.seq && d.seq <= lastSeq) return;
  // A stored receipt (returned by sync) for messages I sent.
  if (d.receipt) return showReceipt(d.receipt);
  const to = d.kind === "GROUP" ? `#${d.conversation}` : d.conversation;
  addMessage({ id: d.message_id, from: d.from, to, text: d.text, mine: false });
  if (d.seq) {
    lastSeq = d.seq;
    request("ack_delivered", { up_to_seq: d.seq }).catch(() => {});
  }
}

function showReceipt(r) {
  // Receipts are inbox entries too: acknowledge them like messages.
  if (r.seq && r.seq > lastSeq) {
    lastSeq = r.seq;
    request("ack_delivered", { up_to_seq: r.seq }).catch(() => {});
  }
  const el = document.querySelector(`.msg.mine[data-id="${CSS.escape(r.message_id)}"] .tick`);
  if (!el) return;
  if (r.kind === "READ") { el.textContent = "✓✓"; el.classList.add("read"); el.title = "read"; }
  else if (!el.classList.contains("read")) { el.textContent = "✓✓"; el.title = "delivered"; }
}

async function refreshOnline() {
  if (!me) return;
  const page = await request("list_online", {});
  $("online").replaceChildren(...page.users.map((u) => Object.assign(document.createElement("li"), { textContent: u })));
  const groups = await request("list_my_groups", {});
  $("groups").replaceChildren(...groups.groups.map((g) => Object.assign(document.createElement("li"), { textContent: `#${g}` })));
}

async function login() {
  const username = $("user").value.trim();
  const ok = await request("login", { username, password: $("password").value });
  me = username;
  $("me").textContent = me;
  $("login").hidden = true;
  $("side").hidden = false;
  $("conv").hidden = false;
  // Offline messages first, then live pushes above the last seq seen.
  let after = ok.delivered_seq;
  for (;;) {
    const page = await request("sync", { after_seq: after });
    for (const d of page.messages) showDelivery(d);
    if (page.messages.length) after = page.messages[page.messages.length - 1].seq;
    if (!page.has_more) break;
  }
  await refreshOnline();
  setInterval(() => refreshOnline().catch(() => {}), 2000);
  setInterval(() => request("ping", { nonce: 0 }).catch(() => {}), 15000);
}

async function send() {
  const to = $("to").value.trim();
  const text = $("text").value;
  const client_msg_id = crypto.randomUUID();
  error("");
  try {
    if (to.startsWith("#")) {
      const ack = await request("send_group", { group: to.slice(1), client_msg_id, text });
      addMessage({ id: ack.message_id, from: me, to, text, mine: true });
    } else {
      const user = to.replace(/^@/, "");
      const ack = await request("send_private", { to: user, client_msg_id, text });
      addMessage({ id: ack.message_id, from: me, to: user, text, mine: true });
    }
    $("text").value = "";
  } catch (e) {
    error(e.message);
  }
}

async function groupOp(field) {
  try {
    await request(field, { group: $("group").value.trim() });
    await refreshOnline();
  } catch (e) {
    error(e.message);
  }
}

async function main() {
  await connect();
  await request("hello", { protocol_version: 1, client_name: "web" });
  $("register").onclick = () =>
    request("register", { username: $("user").value.trim(), password: $("password").value })
      .then(() => status("registered; now log in"), (e) => status(e.message));
  $("login-btn").onclick = () => login().catch((e) => status(e.message));
  $("send").onclick = send;
  $("text").onkeydown = (e) => { if (e.key === "Enter") send(); };
  $("create").onclick = () => groupOp("create_group");
  $("join").onclick = () => groupOp("join_group");
  // Reading the page marks everything shown as read.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && lastSeq) request("ack_read", { up_to_seq: lastSeq }).catch(() => {});
  });
  status("connected");
}

main().catch((e) => status(e.message));
