// The web client's page: login, the conversation list, the open conversation and
// its composer. The session (session.js) talks to the cluster; the model
// (model.js) keeps what is known; this module only turns both into DOM and back.
import { Session } from "./session.js";
import { Model, keyOf } from "./model.js";
import { ServerError, ConnectionLost } from "./connection.js";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;
/** How often the open group's receipts are asked for (groups have no receipt pushes). */
const GROUP_RECEIPTS_MS = 3000;
const GROUP_RECEIPTS_MESSAGES = 10;
const bytes = (text) => new TextEncoder().encode(text).length;

let model = null;
let current = null; // key of the open conversation

const session = new Session({
  state: showState,
  entries: onEntries,
  ready: onReady,
  sent(item, ack) {
    model?.acked(item, ack);
    refresh(item.conversation);
    if (item.conversation === current) refreshGroupReceipts();
  },
  failed(item, error) {
    model?.failed(item, human(error));
    refresh(item.conversation);
    if (item.conversation === current) $("send-error").textContent = `Not sent: ${human(error)}`;
  },
  loggedOut: showLogin,
});

// ---- words for people ------------------------------------------------------

const MESSAGES = {
  INVALID_CREDENTIALS: "Wrong username or password.",
  USERNAME_TAKEN: "That username is taken.",
  INVALID_NAME: "Names are 1 to 32 letters, digits, '_', '.' or '-'.",
  NOT_A_MEMBER: "You are not a member of that group.",
  ALREADY_EXISTS: "A group with that name exists already.",
  RATE_LIMITED: "Too many requests; try again in a moment.",
  UNAVAILABLE: "The server cannot do that right now; try again.",
};

function human(e) {
  if (e instanceof ConnectionLost) return "Not connected; try again once the connection is back.";
  if (e instanceof ServerError) {
    if (MESSAGES[e.code]) return MESSAGES[e.code];
    const text = e.message || e.code;
    return text.charAt(0).toUpperCase() + text.slice(1);
  }
  return e?.message ?? String(e);
}

function showState(kind, text) {
  const status = $("status");
  status.dataset.state = kind;
  status.textContent = text;
}

// ---- login and logout ------------------------------------------------------

function showLogin(reason) {
  model = null;
  current = null;
  document.body.classList.remove("conv-open");
  $("app").hidden = true;
  $("me-line").hidden = true;
  $("logout").hidden = true;
  $("notify").hidden = true;
  $("login").hidden = false;
  $("conv-list").replaceChildren();
  closeConversation();
  $("login-error").textContent = reason || "";
  document.title = "chat";
  $("user").focus();
}

function showApp(user) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("me").textContent = user;
  $("me-line").hidden = false;
  $("logout").hidden = false;
  $("password").value = "";
  updateNotifyButton();
  renderList();
}

/** Logs in (after registering, if asked); the form says what went wrong. */
async function enter(register) {
  const user = $("user").value.trim();
  const password = $("password").value;
  $("login-error").textContent = "";
  if (!user || !password) {
    $("login-error").textContent = "Enter a username and a password.";
    return;
  }
  for (const b of [$("login-btn"), $("register")]) b.disabled = true;
  try {
    if (register) await session.register(user, password);
    model = new Model(user);
    await session.login(user, password);
    showApp(user);
  } catch (e) {
    model = null;
    $("login-error").textContent = human(e);
  } finally {
    for (const b of [$("login-btn"), $("register")]) b.disabled = false;
  }
}

// ---- the inbox -------------------------------------------------------------

function onEntries(list, { initial }) {
  if (!model) return;
  const touched = new Set();
  for (const d of list) {
    const msg = model.entry(d, session.readSeq);
    if (d.receipt) {
      touched.add(`@${d.receipt.by}`);
    } else if (msg) {
      const key = keyOf(d, model.me);
      touched.add(key);
      if (!initial && !msg.mine) notify(key, msg);
    }
  }
  renderList();
  if (touched.has(current)) renderMessages();
  markReadIfVisible();
}

/** After each login: the groups the user is in, even those without messages yet,
 * each with its newest message (own group posts are not in the inbox, so the
 * inbox alone can show an older last message). */
async function onReady() {
  if (!model) return;
  try {
    const { groups } = await session.request("list_my_groups", {});
    for (const g of groups) {
      const c = model.conv(`#${g}`);
      const page = await session.request("history", { kind: "GROUP", conversation: g, before_seq: 0, limit: 1 });
      for (const d of page.messages) model.add(c, d);
    }
    renderList();
  } catch {
    // Not connected any more: the next login asks again.
  }
  // Opened while the connection was down or catching up: its history is still to load.
  const c = current && model.convs.get(current);
  if (c && c.older === null) loadOlder(c);
}

function refresh(key) {
  renderList();
  if (key === current) renderMessages({ bottom: true });
}

// ---- the conversation list -------------------------------------------------

function renderList() {
  if (!model) return;
  const items = model.sorted().map((c) => {
    const button = document.createElement("button");
    button.type = "button";
    if (c.key === current) button.setAttribute("aria-current", "true");
    const title = c.kind === "GROUP" ? c.key : c.name;
    const name = span("conv-name", title);
    const time = span("conv-time", c.last ? shortTime(c.last.ts) : "");
    const last = c.last;
    const preview = span("conv-preview", last ? `${last.mine ? "You" : last.from}: ${last.text}` : "No messages yet");
    button.append(name, time, preview);
    if (c.unread.size) button.append(span("badge", String(c.unread.size)));
    // One spoken name for the whole entry: who, how many unread, the last message.
    const unread = c.unread.size ? `, ${c.unread.size} unread` : "";
    const said = last ? `, last from ${last.mine ? "you" : last.from}: ${last.text}` : "";
    button.setAttribute("aria-label", `${title}${unread}${said}`);
    button.onclick = () => openConversation(c.key);
    const li = document.createElement("li");
    li.dataset.key = c.key;
    li.append(button);
    return li;
  });
  $("conv-list").replaceChildren(...items);
  $("no-convs").hidden = items.length > 0;
  const unread = model.sorted().reduce((n, c) => n + c.unread.size, 0);
  document.title = unread ? `(${unread}) chat` : "chat";
}

function span(className, text) {
  const s = document.createElement("span");
  s.className = className;
  s.textContent = text;
  return s;
}

// ---- the open conversation -------------------------------------------------

function openConversation(key) {
  if (!model) return;
  const c = model.conv(key);
  current = key;
  document.body.classList.add("conv-open");
  $("placeholder").hidden = true;
  for (const id of ["conv-head", "messages", "composer"]) $(id).hidden = false;
  $("conv-title").textContent = c.kind === "GROUP" ? key : c.name;
  $("members-btn").hidden = c.kind !== "GROUP";
  $("leave").hidden = c.kind !== "GROUP";
  $("members").hidden = true;
  $("members-btn").setAttribute("aria-expanded", "false");
  $("send-error").textContent = "";
  $("side-error").textContent = "";
  renderList();
  renderMessages({ bottom: true });
  updateLimit();
  $("message").focus();
  if (c.older === null) loadOlder(c);
  markReadIfVisible();
}

function closeConversation() {
  current = null;
  document.body.classList.remove("conv-open");
  $("placeholder").hidden = false;
  for (const id of ["conv-head", "messages", "composer", "members"]) $(id).hidden = true;
  renderList();
}

/** Loads the next page of older messages (the first page when none is loaded yet). */
async function loadOlder(c) {
  if (c.loading || c.older === 0) return;
  c.loading = true;
  try {
    // A private page may come back empty with more to scan; a few more tries fill it.
    for (let tries = 0; tries < 5; tries++) {
      const before = c.older ?? 0;
      const page = await session.request("history", { kind: c.kind, conversation: c.name, before_seq: before, limit: HISTORY_PAGE });
      model.history(c, page);
      if (page.messages.length || !page.next_before_seq) break;
    }
  } catch (e) {
    if (e instanceof ServerError && model) {
      c.older = 0;
      // No such user, or not a member: nothing to show, so no conversation to list.
      if (c.messages.size === 0) {
        model.remove(c.key);
        if (c.key === current) closeConversation();
        $("side-error").textContent = human(e);
      } else if (c.key === current) {
        $("send-error").textContent = human(e);
      }
    }
  } finally {
    c.loading = false;
  }
  if (model?.convs.get(c.key) !== c) return;
  renderList();
  if (c.key === current) {
    renderMessages({ keep: true });
    // Not enough to scroll yet: nothing would ask for the older pages.
    const list = $("messages");
    if (c.older && list.scrollHeight <= list.clientHeight) loadOlder(c);
  }
}

/** Draws the open conversation. `bottom`: scroll to the newest; `keep`: older
 * messages were added above, keep what is on screen in place; otherwise stay at
 * the bottom if it was there. */
function renderMessages({ bottom = false, keep = false } = {}) {
  if (!model || !current) return;
  const c = model.conv(current);
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  const atBottom = fromBottom - list.clientHeight < 40;
  const tick = model.ticks(c);
  const items = [];
  const top = document.createElement("li");
  top.className = "more";
  top.textContent = c.older === 0 ? "Beginning of the conversation" : c.loading || c.older === null ? "Loading…" : "Scroll up for older messages";
  items.push(top);
  let day = "";
  for (const m of model.ordered(c)) {
    const d = dayLabel(m.ts);
    if (d !== day) {
      day = d;
      const sep = document.createElement("li");
      sep.className = "day";
      sep.setAttribute("role", "separator");
      sep.textContent = d;
      items.push(sep);
    }
    items.push(messageItem(c, m, tick(m)));
  }
  list.replaceChildren(...items);
  if (keep) list.scrollTop = list.scrollHeight - fromBottom;
  else if (bottom || atBottom) list.scrollTop = list.scrollHeight;
}

const TICKS = {
  pending: ["🕓", "sending"],
  sent: ["✓", "sent"],
  delivered: ["✓✓", "delivered"],
  read: ["✓✓", "read"],
  failed: ["!", "not sent"],
};

function messageItem(c, m, state) {
  const li = document.createElement("li");
  li.className = m.mine ? "msg mine" : "msg";
  li.dataset.id = m.id;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  if (!m.mine && c.kind === "GROUP") bubble.append(span("who", m.from));
  bubble.append(span("text", m.text));
  const meta = document.createElement("div");
  meta.className = "meta";
  const time = document.createElement("time");
  time.dateTime = new Date(m.ts).toISOString();
  time.textContent = clock(m.ts);
  meta.append(time);
  if (m.mine) {
    const [mark, label] = TICKS[state];
    const t = span(`tick ${state}`, mark);
    t.title = label;
    t.setAttribute("aria-label", label);
    meta.append(t);
  }
  bubble.append(meta);
  if (state === "failed") {
    li.classList.add("failed");
    bubble.append(span("fail", `Not sent: ${m.error}`));
  }
  li.append(bubble);
  return li;
}

// ---- time --------------------------------------------------------------------

const clock = (ts) => new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

function dayLabel(ts) {
  const d = new Date(ts);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.toLocaleDateString([], { weekday: "short", day: "numeric", month: "short", year: "numeric" });
}

function shortTime(ts) {
  const d = new Date(ts);
  return d.toDateString() === new Date().toDateString() ? clock(ts) : d.toLocaleDateString([], { day: "numeric", month: "short" });
}

// ---- reading -----------------------------------------------------------------

/** The open conversation counts as read while the page is on screen and focused;
 * the server's read cursor follows as far as nothing unread is skipped. */
function markReadIfVisible() {
  if (!model || !current || document.visibilityState !== "visible" || !document.hasFocus()) return;
  if (model.readAll(model.conv(current))) renderList();
  session.markRead(model.readCursor());
}

/** Asks where the open group's latest own messages stand, while the page is seen. */
async function refreshGroupReceipts() {
  const c = current && model?.convs.get(current);
  if (!c || c.kind !== "GROUP" || document.visibilityState !== "visible" || c.asking) return;
  c.asking = true;
  let changed = false;
  try {
    for (const m of model.openGroupReceipts(c, GROUP_RECEIPTS_MESSAGES)) {
      const r = await session.request("group_receipts", { group: c.name, group_seq: m.gseq });
      changed = model.groupReceipts(c, m, r.members) || changed;
    }
  } catch {
    // Not connected, or no longer a member: asked again later.
  } finally {
    c.asking = false;
  }
  if (changed && c.key === current) renderMessages();
}

function notify(key, msg) {
  if (document.visibilityState !== "hidden" || !("Notification" in window) || Notification.permission !== "granted") return;
  const where = key.startsWith("#") ? ` in ${key}` : "";
  try {
    const n = new Notification(`${msg.from}${where}`, { body: msg.text.slice(0, 200), tag: key });
    n.onclick = () => {
      window.focus();
      openConversation(key);
      n.close();
    };
  } catch {
    // Some browsers (Chrome on Android) show notifications only from a service worker.
  }
}

function updateNotifyButton() {
  $("notify").hidden = !("Notification" in window) || Notification.permission !== "default" || !model;
}

// ---- the composer --------------------------------------------------------------

/** Shows the size against the node's limit once it matters, before anything is sent. */
function updateLimit() {
  const max = session.maxText;
  const size = bytes($("message").value);
  const el = $("limit");
  el.classList.toggle("over", max > 0 && size > max);
  if (max > 0 && size > max) el.textContent = `Too long: ${size} bytes; at most ${max} bytes can be sent.`;
  else if (max > 0 && size > max * 0.8) el.textContent = `${size} of ${max} bytes`;
  else el.textContent = "";
}

function sendComposed() {
  const box = $("message");
  const text = box.value;
  $("send-error").textContent = "";
  if (!current || text.trim() === "") return;
  const max = session.maxText || 16384;
  const size = bytes(text);
  if (size > max) {
    $("send-error").textContent = `This message is too long: ${size} bytes, and at most ${max} bytes can be sent. Shorten it or split it.`;
    return;
  }
  model.pending(session.send(current, text));
  box.value = "";
  updateLimit();
  refresh(current);
}

// ---- groups and starting conversations -------------------------------------------

function typedName() {
  const raw = $("open-name").value.trim();
  return { group: raw.startsWith("#"), name: raw.replace(/^[#@]/, "") };
}

async function groupAction(field, what) {
  const { name } = typedName();
  $("side-error").textContent = "";
  if (!name) {
    $("side-error").textContent = `Type the name of the group to ${what}.`;
    return;
  }
  try {
    await session.request(field, { group: name });
    $("open-name").value = "";
    openConversation(`#${name}`);
  } catch (e) {
    $("side-error").textContent = human(e);
  }
}

function openTyped() {
  const { group, name } = typedName();
  $("side-error").textContent = "";
  if (!name) return;
  $("open-name").value = "";
  openConversation(`${group ? "#" : "@"}${name}`);
}

async function leaveGroup() {
  const c = model?.conv(current);
  if (!c || c.kind !== "GROUP") return;
  try {
    await session.request("leave_group", { group: c.name });
    model.remove(c.key);
    closeConversation();
  } catch (e) {
    $("send-error").textContent = human(e);
  }
}

async function toggleMembers() {
  const c = model?.conv(current);
  const box = $("members");
  if (!c || !box.hidden) {
    box.hidden = true;
    $("members-btn").setAttribute("aria-expanded", "false");
    return;
  }
  try {
    const list = await session.request("list_members", { group: c.name });
    box.textContent = `Members: ${list.members.join(", ")}`;
    box.hidden = false;
    $("members-btn").setAttribute("aria-expanded", "true");
  } catch (e) {
    $("send-error").textContent = human(e);
  }
}

// ---- wiring ----------------------------------------------------------------------

function wire() {
  $("login-form").onsubmit = (e) => {
    e.preventDefault();
    enter(false);
  };
  $("register").onclick = () => enter(true);
  $("logout").onclick = () => session.logout();
  $("notify").onclick = () => Notification.requestPermission().then(updateNotifyButton, updateNotifyButton);
  $("open-form").onsubmit = (e) => {
    e.preventDefault();
    openTyped();
  };
  $("create").onclick = () => groupAction("create_group", "create");
  $("join").onclick = () => groupAction("join_group", "join");
  $("leave").onclick = leaveGroup;
  $("members-btn").onclick = toggleMembers;
  $("back").onclick = () => {
    closeConversation();
    $("conversations").querySelector("button")?.focus();
  };
  $("composer").onsubmit = (e) => {
    e.preventDefault();
    sendComposed();
    $("message").focus();
  };
  $("message").addEventListener("input", updateLimit);
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendComposed();
    }
  });
  $("messages").addEventListener("scroll", () => {
    const c = current && model?.conv(current);
    if (c && c.older && $("messages").scrollTop < 60) loadOlder(c);
  });
  setInterval(refreshGroupReceipts, GROUP_RECEIPTS_MS);
  window.addEventListener("focus", markReadIfVisible);
  document.addEventListener("visibilitychange", markReadIfVisible);
}

wire();
const saved = Session.saved();
if (saved?.user) {
  model = new Model(saved.user);
  showApp(saved.user);
  session.resume();
  // Messages written before the reload and not yet acknowledged are sent again.
  for (const item of session.outbox) model.pending(item);
  renderList();
} else {
  showLogin("");
}
