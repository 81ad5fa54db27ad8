// The web client's page: login, the conversation list, contacts and privacy, the
// open conversation, its composer and the files sent there. The session
// (session.js) talks to the cluster; the model (model.js) keeps what is known;
// files.js moves files; this module only turns them into DOM and back.
import { Session } from "./session.js";
import { Model, TypingOut, keyOf, groupPanel, excerpt, previewText } from "./model.js";
import { ServerError, ConnectionLost } from "./connection.js";
import { upload, download, formatSize, isImage, mimeOf, slim } from "./files.js";

const $ = (id) => document.getElementById(id);
const HISTORY_PAGE = 50;
/** How often the open group's receipts are asked for (groups have no receipt pushes). */
const GROUP_RECEIPTS_MS = 3000;
const GROUP_RECEIPTS_MESSAGES = 10;
const bytes = (text) => new TextEncoder().encode(text).length;

let model = null;
let current = null; // key of the open conversation
/** The open group's GroupInfo (null: not known, or not a group). */
let groupInfo = null;
/** The server passes on one typing notice per conversation every 2 s; the margin keeps
 * a "stopped" sent at the end of that window from arriving a little inside it. */
const TYPING_EVERY_MS = 2000 + 150;
let typingOut = new TypingOut(TYPING_EVERY_MS);
/** conversation key -> the timer of a typing notice waiting for its window. */
const typingTimers = new Map();
let typingShown = null; // the timer that hides an expired "typing…"
/** The message whose menu is open (its id), if any. */
let menuFor = null;
/** What the composer does besides sending: { mode: "reply" | "edit", key, id }, or null. */
let composing = null;
/** The emoji the message menu offers. */
const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

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
    const why = refused(item.conversation, error);
    model?.failed(item, why);
    refresh(item.conversation);
    if (item.conversation === current) $("send-error").textContent = `Not sent: ${why}`;
  },
  presence(update) {
    if (!model) return;
    model.presenceUpdate(update);
    renderContacts();
    renderList();
    renderPresence();
  },
  typing(notice) {
    if (!model) return;
    const key = model.typingNotice(notice, Date.now());
    if (key === current) renderTyping();
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
  NOT_ALLOWED: "That user does not accept messages from you.",
  NOT_AUTHOR: "Only its author may do that.",
  EDIT_WINDOW_CLOSED: "That message is too old to edit.",
};

/** A refused change of a message in words: NOT_FOUND is the message, not a user. */
function changeError(e) {
  if (e instanceof ServerError && e.code === "NOT_FOUND") return "That message is gone: deleted, or not one you can see.";
  return human(e);
}

/** A refused group action in words: FORBIDDEN says why (role, private group, ban). */
function groupError(e) {
  if (e instanceof ServerError && e.code === "FORBIDDEN") return `Not allowed: ${e.message || "your role does not allow that"}.`;
  return human(e);
}

/** Why a message to `key` was refused, in words. */
function refused(key, e) {
  if (e instanceof ServerError && e.code === "NOT_ALLOWED" && key.startsWith("@")) {
    return `${key.slice(1)} does not accept messages from you (they take messages from their contacts only, or they blocked you).`;
  }
  return human(e);
}

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
  $("contact-list").replaceChildren();
  forgetFiles();
  for (const t of typingTimers.values()) clearTimeout(t);
  typingTimers.clear();
  typingOut = new TypingOut(TYPING_EVERY_MS);
  showTab("chats");
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
  renderContacts();
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
  let contactsChanged = false;
  let contactsStale = false;
  let groupChanged = false;
  for (const d of list) {
    const msg = model.entry(d, session.readSeq);
    if (d.receipt) {
      touched.add(`@${d.receipt.by}`);
    } else if (d.contact) {
      contactsChanged = true;
      // Presence comes with the list, for contacts only: a new contact's is asked for.
      if (d.contact.state === "CONTACT") contactsStale = true;
    } else if (d.change) {
      touched.add(keyOf(d, model.me)); // an edit, deletion or reaction to show
    } else if (msg) {
      const key = keyOf(d, model.me);
      touched.add(key);
      if (d.group_event && key === current) groupChanged = true;
      if (!initial && !msg.mine && !msg.event) notify(key, msg);
    }
  }
  renderList();
  if (touched.has(current)) {
    renderMessages();
    renderTyping(); // a message ends its sender's "typing…"
    renderInvitation();
  }
  if (groupChanged) refreshGroupInfo();
  if (contactsChanged) {
    renderContacts();
    renderPresence();
  }
  if (contactsStale && !initial) refreshContacts();
  markReadIfVisible();
}

/** After each login: the groups the user is in, even those without messages yet,
 * each with its newest message (own group posts are not in the inbox, so the
 * inbox alone can show an older last message). */
async function onReady() {
  if (!model) return;
  refreshContacts();
  try {
    const { groups } = await session.request("list_my_groups", {});
    model.memberOf(groups);
    renderInvitation();
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
  if (c && c.older === null && !model.invitation(c.key)) loadOlder(c);
  if (c?.kind === "GROUP") refreshGroupInfo();
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
    const seen = c.kind === "PRIVATE" && model.presence.get(c.name);
    if (seen) name.prepend(dot(seen.online ? "online" : "offline"));
    const time = span("conv-time", c.last ? shortTime(c.last.ts) : "");
    const last = c.last;
    const preview = span("conv-preview", last ? `${last.mine ? "You" : last.from}: ${previewText(last)}` : "No messages yet");
    button.append(name, time, preview);
    if (c.unread.size) button.append(span("badge", String(c.unread.size)));
    // One spoken name for the whole entry: who, how many unread, the last message.
    const unread = c.unread.size ? `, ${c.unread.size} unread` : "";
    const said = last ? `, last from ${last.mine ? "you" : last.from}: ${previewText(last)}` : "";
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

function dot(kind) {
  const d = span(`dot ${kind}`, "");
  d.setAttribute("aria-hidden", "true");
  d.title = kind;
  return d;
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
  if (current && current !== key) stopTyping(current);
  if (current !== key) {
    setComposing(null);
    menuFor = null;
  }
  current = key;
  document.body.classList.add("conv-open");
  $("placeholder").hidden = true;
  for (const id of ["conv-head", "messages", "composer"]) $(id).hidden = false;
  $("conv-title").textContent = c.kind === "GROUP" ? key : c.name;
  $("members-btn").hidden = c.kind !== "GROUP";
  $("leave").hidden = c.kind !== "GROUP";
  $("group-panel").hidden = true;
  $("members-btn").setAttribute("aria-expanded", "false");
  $("group-error").textContent = "";
  $("invite-error").textContent = "";
  groupInfo = null;
  $("send-error").textContent = "";
  $("side-error").textContent = "";
  renderList();
  renderMessages({ bottom: true });
  renderPresence();
  renderTyping();
  updateLimit();
  renderUploads();
  renderInvitation();
  $("message").focus();
  // An invitation not accepted yet: no history to see before joining.
  if (c.older === null && !model.invitation(key)) loadOlder(c);
  if (c.kind === "GROUP") refreshGroupInfo();
  markReadIfVisible();
}

function closeConversation() {
  if (current) stopTyping(current);
  setComposing(null);
  menuFor = null;
  current = null;
  document.body.classList.remove("conv-open");
  $("placeholder").hidden = false;
  for (const id of ["conv-head", "messages", "typing", "composer", "group-panel", "invite-prompt"]) $(id).hidden = true;
  groupInfo = null;
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
  li.className = m.event ? "msg event" : m.mine ? "msg mine" : "msg";
  li.dataset.id = m.id;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  if (!m.mine && !m.event && c.kind === "GROUP") bubble.append(span("who", m.from));
  const quote = model.quote(c, m);
  if (quote) bubble.append(quoteBox(quote));
  if (m.text || !m.attachments?.length) bubble.append(span(m.recalled ? "text recalled" : "text", m.text));
  if (m.attachments?.length) bubble.append(attachmentsBox(m.attachments));
  const reactions = model.reactionRows(m);
  if (reactions.length) {
    const row = document.createElement("div");
    row.className = "reactions";
    for (const r of reactions) {
      const chip = span(r.mine ? "reaction mine" : "reaction", `${r.emoji} ${r.users.length}`);
      chip.title = r.users.join(", ");
      chip.setAttribute("aria-label", `${r.emoji} by ${r.users.join(", ")}`);
      row.append(chip);
    }
    bubble.append(row);
  }
  const meta = document.createElement("div");
  meta.className = "meta";
  const time = document.createElement("time");
  time.dateTime = new Date(m.ts).toISOString();
  time.textContent = clock(m.ts);
  meta.append(time);
  if (m.edited && !m.recalled) meta.append(span("edited", "edited"));
  if (m.recalled) meta.append(span("deleted", "deleted"));
  if (m.mine) {
    const [mark, label] = TICKS[state];
    const t = span(`tick ${state}`, mark);
    t.title = label;
    t.setAttribute("aria-label", label);
    meta.append(t);
  }
  const actions = model.messageActions(c, m, myRole(c));
  if (actions.length) {
    const more = document.createElement("button");
    more.type = "button";
    more.className = "plain more-btn";
    more.textContent = "⋯";
    more.setAttribute("aria-label", "Message actions");
    more.setAttribute("aria-expanded", String(menuFor === m.id));
    more.onclick = () => {
      menuFor = menuFor === m.id ? null : m.id;
      renderMessages();
    };
    meta.append(more);
  }
  bubble.append(meta);
  if (state === "failed") {
    li.classList.add("failed");
    bubble.append(span("fail", `Not sent: ${m.error}`));
  }
  li.append(bubble);
  if (menuFor === m.id && actions.length) li.append(messageMenu(c, m, actions));
  return li;
}

/** The message a reply answers, above its text; a click shows it, when the page has it. */
function quoteBox(q) {
  const box = document.createElement("button");
  box.type = "button";
  box.className = "quote";
  if (q.missing) {
    box.append(span("quote-text", "Reply to a message not shown here"));
    box.disabled = true;
  } else {
    box.append(span("quote-from", q.mine ? "You" : q.from), span("quote-text", q.recalled ? "(message deleted)" : q.text));
    box.onclick = () => $("messages").querySelector(`li[data-id="${CSS.escape(q.id)}"]`)?.scrollIntoView({ block: "center" });
  }
  box.setAttribute("aria-label", q.missing ? "In reply to a message not shown here" : `In reply to ${q.mine ? "you" : q.from}: ${q.text}`);
  return box;
}

/** My role in the open group, when its GroupInfo is known (null otherwise). */
function myRole(c) {
  if (c.kind !== "GROUP" || !groupInfo || `#${groupInfo.group}` !== c.key) return null;
  return groupPanel(groupInfo, model.me).role;
}

/** The menu of one message: reply, edit, delete, and the reactions. */
function messageMenu(c, m, actions) {
  const menu = document.createElement("div");
  menu.className = "msg-menu";
  menu.setAttribute("role", "group");
  menu.setAttribute("aria-label", "Message actions");
  const close = () => {
    menuFor = null;
    renderMessages();
  };
  if (actions.includes("reply")) {
    menu.append(
      actionButton("Reply", "Reply", () => {
        close();
        setComposing({ mode: "reply", key: c.key, id: m.id });
      }),
    );
  }
  if (actions.includes("edit")) {
    menu.append(
      actionButton("Edit", "Edit", () => {
        close();
        setComposing({ mode: "edit", key: c.key, id: m.id });
        $("message").value = m.text;
        updateLimit();
      }),
    );
  }
  if (actions.includes("delete")) {
    menu.append(
      actionButton(
        "Delete",
        "Delete for everyone",
        () => {
          if (!confirm(m.mine ? "Delete this message for everyone?" : `Delete ${m.from}'s message for everyone?`)) return;
          close();
          changeMessage(c.key, "RECALL", m.id);
        },
        true,
      ),
    );
  }
  if (actions.includes("react")) {
    const mine = model.myReaction(m);
    for (const emoji of REACTIONS) {
      const b = actionButton(emoji, emoji === mine ? `Remove reaction ${emoji}` : `React ${emoji}`, () => {
        close();
        changeMessage(c.key, "REACT", m.id, emoji === mine ? "" : emoji);
      }, emoji !== mine);
      b.classList.add("emoji");
      menu.append(b);
    }
  }
  return menu;
}

/** Sends a change of a message; once acknowledged, it is applied at once (its entry,
 * when it comes, changes nothing more). Refusals show under the composer. */
async function changeMessage(key, kind, id, text = "") {
  $("send-error").textContent = "";
  try {
    await session.change(kind, id, text);
  } catch (e) {
    if (current === key) $("send-error").textContent = `Not done: ${changeError(e)}`;
    return false;
  }
  if (!model) return false;
  model.change(key, { kind, message_id: id, text, by: model.me });
  refresh(key);
  return true;
}

/** Puts the composer into reply or edit mode (null: back to plain messages). */
function setComposing(what) {
  const was = composing;
  composing = what;
  const box = $("compose-context");
  if (!what) {
    box.hidden = true;
    if (was?.mode === "edit") {
      $("message").value = "";
      updateLimit();
    }
    return;
  }
  const msg = model?.convs.get(what.key)?.messages.get(what.id);
  const who = !msg ? "" : msg.mine ? "yourself" : msg.from;
  $("compose-what").textContent = what.mode === "edit" ? "Editing your message" : `Replying to ${who}: ${excerpt(msg ? previewText(msg) : "")}`;
  box.hidden = false;
  $("message").focus();
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
    const n = new Notification(`${msg.from}${where}`, { body: previewText(msg).slice(0, 200), tag: key });
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
  const what = composing?.key === current ? composing : null;
  if (what?.mode === "edit") {
    const key = current;
    const msg = model.conv(key).messages.get(what.id);
    setComposing(null);
    if (msg && msg.text !== text) changeMessage(key, "EDIT", what.id, text);
    stopTyping(key);
    box.value = "";
    updateLimit();
    return;
  }
  model.pending(session.send(current, text, what?.mode === "reply" ? what.id : ""));
  setComposing(null);
  typingCommand(current, typingOut.messageSent(current, Date.now()));
  box.value = "";
  updateLimit();
  refresh(current);
}

// ---- files -------------------------------------------------------------------------

/** Object URLs of thumbnails, by blob id: made once, revoked at logout. */
const thumbUrls = new Map();
/** Whole files, by blob id: { promise, url } once asked for; revoked at logout. */
const fileUrls = new Map();
/** What each download under way has got, in words, by blob id (kept across renders). */
const fetching = new Map();
/** Uploads under way: { key, name, sent, size, file }. */
let uploads = [];

function forgetFiles() {
  for (const url of thumbUrls.values()) URL.revokeObjectURL(url);
  for (const f of fileUrls.values()) if (f.url) URL.revokeObjectURL(f.url);
  thumbUrls.clear();
  fileUrls.clear();
  fetching.clear();
  uploads = [];
  renderUploads();
  if ($("viewer").open) $("viewer").close();
}

/** The files of a message: images as their previews (a click opens the whole image),
 * other files as a link with name and size (a click downloads and saves it). */
function attachmentsBox(list) {
  const box = document.createElement("div");
  box.className = "attachments";
  for (const a of list) box.append(isImage(a) ? imageButton(a) : fileLink(a));
  return box;
}

function thumbUrl(a) {
  let url = thumbUrls.get(a.blob_id);
  if (!url) {
    url = URL.createObjectURL(new Blob([a.thumbnail], { type: "image/jpeg" }));
    thumbUrls.set(a.blob_id, url);
  }
  return url;
}

function imageButton(a) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "thumb";
  b.setAttribute("aria-label", `Open image ${a.name}, ${formatSize(a.size)}`);
  const img = document.createElement("img");
  img.alt = a.name;
  img.src = thumbUrl(a);
  // The preview's own size (at most 320 px), so the list does not jump when it loads.
  const scale = Math.min(1, 320 / Math.max(a.width || 1, a.height || 1));
  if (a.width && a.height) {
    img.width = Math.max(1, Math.round(a.width * scale));
    img.height = Math.max(1, Math.round(a.height * scale));
  }
  b.append(img);
  b.onclick = () => openImage(a);
  return b;
}

function fileLink(a) {
  const link = document.createElement("a");
  link.className = "file";
  link.dataset.blob = a.blob_id;
  const ready = fileUrls.get(a.blob_id)?.url;
  link.href = ready ?? "#";
  if (ready) link.download = a.name || "file";
  link.append(span("file-name", `📄 ${a.name || "file"}`));
  if (a.size) link.append(span("file-size", formatSize(a.size)));
  link.append(span("file-state", fetching.get(a.blob_id) ?? ""));
  link.setAttribute("aria-label", `Download ${a.name || "file"}${a.size ? `, ${formatSize(a.size)}` : ""}`);
  link.onclick = (e) => {
    if (link.download) return; // the whole file is here: the browser saves it
    e.preventDefault();
    saveFile(a);
  };
  return link;
}

/** The whole file as an object URL, downloaded in chunks once; `progress(text)` says
 * how far it got. */
function wholeFile(a, progress) {
  let f = fileUrls.get(a.blob_id);
  if (!f) {
    const promise = download(
      (field, body) => session.request(field, body),
      a.blob_id,
      (got, size) => progress(size ? `${Math.floor((got * 100) / size)}%` : ""),
    ).then(({ data, mime }) => {
      f.url = URL.createObjectURL(new Blob([data], { type: a.mime || mime || "application/octet-stream" }));
      return f.url;
    });
    f = { promise };
    fileUrls.set(a.blob_id, f);
    // A failure is not kept: a click tries again.
    promise.catch(() => fileUrls.delete(a.blob_id));
  }
  return f.promise;
}

/** Shows how a download stands on every link to that file on screen. */
function showFetching(blobId, text) {
  if (text) fetching.set(blobId, text);
  else fetching.delete(blobId);
  for (const el of document.querySelectorAll(`a.file[data-blob="${CSS.escape(blobId)}"] .file-state`)) el.textContent = text;
}

async function saveFile(a) {
  $("send-error").textContent = "";
  try {
    const url = await wholeFile(a, (p) => showFetching(a.blob_id, `downloading ${p}`));
    showFetching(a.blob_id, "");
    renderMessages(); // the links now point at the file itself
    const save = document.createElement("a");
    save.href = url;
    save.download = a.name || "file";
    save.click();
  } catch (e) {
    showFetching(a.blob_id, "");
    $("send-error").textContent = `Cannot download ${a.name || "the file"}: ${fileError(e)}`;
  }
}

/** The viewer: the preview at once, the whole image once downloaded. */
async function openImage(a) {
  const viewer = $("viewer");
  const img = $("viewer-img");
  img.alt = a.name;
  img.src = fileUrls.get(a.blob_id)?.url ?? thumbUrl(a);
  $("viewer-name").textContent = `${a.name} · ${a.width && a.height ? `${a.width}×${a.height} · ` : ""}${formatSize(a.size)}`;
  const save = $("viewer-save");
  save.hidden = true;
  $("viewer-state").textContent = "";
  viewer.dataset.blob = a.blob_id;
  if (!viewer.open) viewer.showModal();
  try {
    const url = await wholeFile(a, (p) => {
      if (viewer.dataset.blob === a.blob_id) $("viewer-state").textContent = `Loading the whole image… ${p}`;
    });
    if (viewer.dataset.blob !== a.blob_id) return;
    img.src = url;
    save.href = url;
    save.download = a.name || "image";
    save.hidden = false;
    $("viewer-state").textContent = "";
  } catch (e) {
    if (viewer.dataset.blob === a.blob_id) $("viewer-state").textContent = `Cannot load the whole image: ${fileError(e)}`;
  }
}

/** A refused upload or download in words. */
function fileError(e, file = null) {
  // The limit the refusal names; for a file too large, the one announced at login.
  const named = (e.message ?? "").match(/(\d+) bytes/)?.[1];
  const name = file?.name ?? "The file";
  if (e instanceof ServerError) {
    switch (e.code) {
      case "FILE_TOO_LARGE": {
        const limit = session?.maxFile || named;
        return `${name} is too large (${formatSize(file?.size ?? 0)}): this server takes files of at most ${limit ? formatSize(limit) : "its limit"}.`;
      }
      case "QUOTA_EXCEEDED": {
        const limit = named;
        return `${name} (${formatSize(file?.size ?? 0)}) would take you over your quota of new files${limit ? ` (${formatSize(limit)})` : ""}; send it later, or a smaller one.`;
      }
      case "HASH_MISMATCH":
        return `${name} changed while it was being sent; try again.`;
      case "NOT_FOUND":
        return "that file is gone, or not yours to see.";
    }
  }
  return human(e);
}

/** Sends each file as a message of its own in conversation `key`, in order: upload
 * (with progress under the composer), then the message that carries it. */
async function sendFiles(files) {
  const key = current;
  const list = [...files];
  if (!key || !model || list.length === 0) return;
  $("send-error").textContent = "";
  const rows = list.map((file) => ({ key, name: file.name, sent: 0, size: file.size, file }));
  uploads.push(...rows);
  renderUploads();
  for (const row of rows) {
    try {
      // Refused before a byte is read when larger than the node takes.
      if (session.maxFile > 0 && row.file.size > session.maxFile) throw new ServerError("FILE_TOO_LARGE");
      const data = new Uint8Array(await row.file.arrayBuffer());
      const mime = mimeOf(row.file.name, row.file.type);
      const attachment = await upload(
        (field, body, timeoutMs) => session.request(field, body, timeoutMs),
        { name: row.file.name, mime, data },
        (sent) => {
          row.sent = sent;
          renderUploads();
        },
      );
      if (!model) return;
      model.pending(session.send(key, "", "", [slim(attachment)]), [attachment]);
      refresh(key);
    } catch (e) {
      if (current === key) $("send-error").textContent = `Not sent: ${fileError(e, row.file)}`;
    } finally {
      uploads = uploads.filter((u) => u !== row);
      renderUploads();
    }
  }
}

/** The uploads of the open conversation, each with its progress. */
function renderUploads() {
  const rows = uploads
    .filter((u) => u.key === current)
    .map((u) => {
      const li = document.createElement("li");
      const bar = document.createElement("progress");
      bar.max = Math.max(1, u.size);
      bar.value = u.sent;
      const pct = u.size ? Math.floor((u.sent * 100) / u.size) : 100;
      bar.setAttribute("aria-label", `Uploading ${u.name}`);
      li.append(span("upload-name", u.name), bar, span("upload-pct", `${pct}%`));
      return li;
    });
  $("uploads").replaceChildren(...rows);
  $("uploads").hidden = rows.length === 0;
}

/** Files dragged onto the open conversation are sent there. */
function wireDrops() {
  const conv = $("conv");
  const hasFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  const accepting = () => Boolean(current && model && !$("composer").hidden);
  conv.addEventListener("dragover", (e) => {
    if (!hasFiles(e) || !accepting()) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "copy";
    conv.classList.add("dropping");
  });
  conv.addEventListener("dragleave", (e) => {
    if (!conv.contains(e.relatedTarget)) conv.classList.remove("dropping");
  });
  conv.addEventListener("drop", (e) => {
    conv.classList.remove("dropping");
    if (!hasFiles(e)) return;
    e.preventDefault();
    if (accepting()) sendFiles(e.dataTransfer.files);
  });
  // A file dropped anywhere else must not replace the page with itself.
  for (const kind of ["dragover", "drop"]) {
    window.addEventListener(kind, (e) => {
      if (hasFiles(e) && !e.defaultPrevented) e.preventDefault();
    });
  }
  $("attach").onclick = () => $("file-input").click();
  $("file-input").onchange = () => {
    const files = [...$("file-input").files];
    $("file-input").value = "";
    sendFiles(files);
  };
  $("viewer-close").onclick = () => $("viewer").close();
  $("viewer").addEventListener("close", () => {
    delete $("viewer").dataset.blob;
    $("viewer-img").removeAttribute("src");
  });
}

// ---- groups and starting conversations -------------------------------------------

function typedName() {
  const raw = $("open-name").value.trim();
  return { group: raw.startsWith("#"), name: raw.replace(/^[#@]/, "") };
}

async function groupAction(field, what, extra = {}) {
  const { name } = typedName();
  $("side-error").textContent = "";
  if (!name) {
    $("side-error").textContent = `Type the name of the group to ${what}.`;
    return false;
  }
  try {
    await session.request(field, { group: name, ...extra });
    $("open-name").value = "";
    model.answered(`#${name}`); // joining accepts an invitation, if there was one
    openConversation(`#${name}`);
    return true;
  } catch (e) {
    $("side-error").textContent = groupError(e);
    return false;
  }
}

/** "Create group" opens the options of the new group (title, private); "Create" sends. */
function showCreate(open) {
  $("create-box").hidden = !open;
  $("create").setAttribute("aria-expanded", String(open));
  if (open) {
    $("side-error").textContent = "";
    (typedName().name ? $("create-title") : $("open-name")).focus();
  } else {
    $("create-title").value = "";
    $("create-private").checked = false;
  }
}

async function createGroup() {
  const title = $("create-title").value.trim();
  if (await groupAction("create_group", "create", { private: $("create-private").checked, title })) showCreate(false);
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
  $("group-error").textContent = "";
  try {
    await session.request("leave_group", { group: c.name });
    model.remove(c.key);
    closeConversation();
  } catch (e) {
    $("send-error").textContent = groupError(e);
  }
}

// ---- invitations ------------------------------------------------------------------

/** "… invited you" with Accept and Decline, instead of the composer, while an
 * invitation to the open group waits for an answer. */
function renderInvitation() {
  const invite = current && model?.invitation(current);
  $("invite-prompt").hidden = !invite;
  $("composer").hidden = !current || Boolean(invite);
  if (invite) $("invite-text").textContent = `${invite.from} invited you to ${current}.`;
}

async function answerInvitation(accept) {
  const key = current;
  const c = key && model?.conv(key);
  if (!c || c.kind !== "GROUP") return;
  $("invite-error").textContent = "";
  try {
    await session.request(accept ? "join_group" : "leave_group", { group: c.name });
  } catch (e) {
    $("invite-error").textContent = groupError(e);
    return;
  }
  if (!model) return;
  model.answered(key);
  if (!accept) {
    model.remove(key);
    if (current === key) closeConversation();
    return;
  }
  if (current !== key) return;
  renderInvitation();
  c.older = null; // the history a member may see
  loadOlder(c);
  refreshGroupInfo();
  $("message").focus();
}

// ---- group settings ----------------------------------------------------------------

async function toggleMembers() {
  const c = model?.conv(current);
  const box = $("group-panel");
  if (!c || !box.hidden) {
    box.hidden = true;
    $("members-btn").setAttribute("aria-expanded", "false");
    return;
  }
  $("group-error").textContent = "";
  box.hidden = false;
  $("members-btn").setAttribute("aria-expanded", "true");
  renderGroupPanel();
  refreshGroupInfo();
}

let infoAsking = null; // the group whose GroupInfo is being asked for
let infoAgain = false;

/** Asks for the open group's settings and members; once at a time, again if a change
 * came meanwhile. */
async function refreshGroupInfo() {
  const key = current;
  if (!key?.startsWith("#")) return;
  if (infoAsking === key) {
    infoAgain = true;
    return;
  }
  infoAsking = key;
  try {
    do {
      infoAgain = false;
      try {
        const info = await session.request("group_info", { group: key.slice(1) });
        if (current !== key) return;
        const roleWas = groupInfo && groupPanel(groupInfo, model.me).role;
        groupInfo = info;
        // Admins may delete others' messages: the menus follow the role.
        if (groupPanel(info, model.me).role !== roleWas) renderMessages();
        if (!$("group-panel").hidden && $("group-error").dataset.from === "load") $("group-error").textContent = "";
      } catch (e) {
        if (current !== key) return;
        groupInfo = null;
        // Not a member (an invitation not accepted yet): nothing to show but why.
        if (!$("group-panel").hidden) {
          $("group-error").textContent = groupError(e);
          $("group-error").dataset.from = "load";
        }
      }
      renderGroupPanel();
    } while (infoAgain && current === key);
  } finally {
    if (infoAsking === key) infoAsking = null;
  }
}

const ROLE_WORDS = { owner: "owner", admin: "admin", member: "member" };

function renderGroupPanel() {
  const info = groupInfo;
  const view = info && model ? groupPanel(info, model.me) : { role: null, actions: [], members: [] };
  // The owner hands the group over before leaving: no "Leave" to refuse.
  if (current?.startsWith("#")) $("leave").hidden = Boolean(info) && view.role === "owner";
  if ($("group-panel").hidden) return;
  if (!info) {
    $("group-summary").textContent = "Loading…";
    $("group-topic").textContent = "";
    $("group-members").replaceChildren();
  } else {
    const title = info.title ? `${info.title} · ` : "";
    $("group-summary").textContent = `${title}${info.private ? "Private (by invitation)" : "Public"} · owner ${info.owner || "none"}`;
    $("group-topic").textContent = info.topic ? `Topic: ${info.topic}` : "No topic";
    $("group-members").replaceChildren(...view.members.map(memberRow));
  }
  const can = new Set(view.actions);
  const editing = document.activeElement?.closest?.("#info-form");
  $("info-form").hidden = !can.has("setInfo");
  if (info && can.has("setInfo") && !editing) {
    $("info-title").value = info.title;
    $("info-topic").value = info.topic;
    $("info-history").checked = info.history_for_new_members;
  }
  $("invite-form").hidden = !can.has("invite");
  $("unban-form").hidden = !can.has("unban");
  $("delete-group").hidden = !can.has("delete");
}

function memberRow(m) {
  const li = document.createElement("li");
  li.dataset.user = m.user;
  li.dataset.role = m.role;
  const badge = span(`role ${m.role}`, ROLE_WORDS[m.role]);
  li.append(span("member-name", m.user === model.me ? `${m.user} (you)` : m.user), badge);
  const group = current;
  const ACTIONS = {
    makeAdmin: ["Make admin", `Make ${m.user} an admin`, () => groupRequest("group_set_role", { user: m.user, role: "ADMIN" })],
    makeMember: ["Make member", `Make ${m.user} a member`, () => groupRequest("group_set_role", { user: m.user, role: "GROUP_ROLE_MEMBER" })],
    transfer: ["Hand over", `Hand ${group} over to ${m.user}`, () => confirm(`Make ${m.user} the owner of ${group}? You stay an admin.`) && groupRequest("group_transfer", { user: m.user })],
    remove: ["Remove", `Remove ${m.user}`, () => groupRequest("group_remove", { user: m.user })],
    ban: ["Ban", `Ban ${m.user}`, () => groupRequest("group_ban", { user: m.user })],
  };
  for (const a of m.actions) {
    const [text, label, run] = ACTIONS[a];
    li.append(actionButton(text, label, run, a !== "makeAdmin"));
  }
  return li;
}

/** One governance request about the open group; refused ones say why in the panel.
 * What it changed comes back as a group event, which refreshes the panel. */
async function groupRequest(field, body) {
  const key = current;
  if (!key?.startsWith("#")) return false;
  $("group-error").textContent = "";
  $("group-error").dataset.from = "";
  try {
    await session.request(field, { group: key.slice(1), ...body });
    if (current === key) refreshGroupInfo();
    newestEvents(key);
    return true;
  } catch (e) {
    if (current === key) $("group-error").textContent = groupError(e);
    return false;
  }
}

/** Own group events are not in the actor's inbox: the group's newest entries show
 * the line of what was just done. */
async function newestEvents(key) {
  try {
    const page = await session.request("history", { kind: "GROUP", conversation: key.slice(1), before_seq: 0, limit: 5 });
    const c = model?.convs.get(key);
    if (!c) return;
    for (const d of page.messages) model.add(c, d);
    refresh(key);
  } catch {
    // Not connected, or the group is gone: the line shows with the next history load.
  }
}

async function inviteTyped(field, box) {
  const user = box.value.trim().replace(/^@/, "");
  if (!user) {
    $("group-error").textContent = "Type a user's name.";
    return;
  }
  if (await groupRequest(field, { user })) box.value = "";
}

async function saveInfo() {
  const info = groupInfo;
  if (!info) return;
  const change = {};
  const title = $("info-title").value.trim();
  const topic = $("info-topic").value.trim();
  const history = $("info-history").checked;
  if (title !== info.title) change.title = title;
  if (topic !== info.topic) change.topic = topic;
  if (history !== info.history_for_new_members) change.history_for_new_members = history;
  if (Object.keys(change).length === 0) return;
  await groupRequest("group_set_info", change);
  document.activeElement?.blur();
}

async function deleteGroup() {
  const key = current;
  if (!key || !confirm(`Delete ${key} for all its members? This cannot be undone.`)) return;
  if (await groupRequest("group_delete", {})) {
    model.remove(key);
    closeConversation();
  }
}

// ---- presence and typing -----------------------------------------------------------

/** "online" or "last seen …" under the open private conversation's name. */
function renderPresence() {
  const el = $("conv-presence");
  const c = current && model?.conv(current);
  const seen = c && c.kind === "PRIVATE" && model.presence.get(c.name);
  el.hidden = !seen;
  if (seen) el.replaceChildren(dot(seen.online ? "online" : "offline"), presenceText(seen) || "offline");
  const block = $("block");
  block.hidden = !c || c.kind !== "PRIVATE";
  if (c && c.kind === "PRIVATE") {
    const blocked = model.blocked.has(c.name);
    block.textContent = blocked ? "Unblock" : "Block";
    block.title = blocked ? `${c.name} can message you again` : `${c.name} can no longer message you`;
  }
}

function presenceText(p) {
  if (p.online) return "online";
  return p.lastSeen ? `last seen ${when(p.lastSeen)}` : "";
}

function when(ts) {
  const d = new Date(ts);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (d.toDateString() === today.toDateString()) return `today at ${clock(ts)}`;
  if (d.toDateString() === yesterday.toDateString()) return `yesterday at ${clock(ts)}`;
  return `${d.toLocaleDateString([], { day: "numeric", month: "short", year: "numeric" })} at ${clock(ts)}`;
}

/** "… is typing…" in the open conversation, until the notice expires. */
function renderTyping() {
  clearTimeout(typingShown);
  const el = $("typing");
  if (!model || !current) {
    el.hidden = true;
    return;
  }
  const now = Date.now();
  const who = model.typers(current, now);
  el.hidden = false;
  el.textContent = who.length === 0 ? "" : `${who.join(", ")} ${who.length === 1 ? "is" : "are"} typing…`;
  const next = model.typingExpiry(current);
  if (next !== Infinity) typingShown = setTimeout(renderTyping, Math.max(0, next - now) + 10);
}

/** The composer changed: tell the other side that the user is typing, or stopped. */
function composerTyped() {
  if (!current) return;
  if ($("message").value === "") stopTyping(current);
  else typingCommand(current, typingOut.typed(current, Date.now()));
}

function stopTyping(key) {
  if (key) typingCommand(key, typingOut.stopped(key, Date.now()));
}

function typingCommand(key, { send, retryIn }) {
  clearTimeout(typingTimers.get(key));
  typingTimers.delete(key);
  if (send) {
    const kind = key.startsWith("#") ? "GROUP" : "PRIVATE";
    session.tell("typing", { kind, conversation: key.slice(1), stopped: send === "stopped" });
  } else if (retryIn !== undefined) {
    typingTimers.set(key, setTimeout(() => typingCommand(key, typingOut.due(key, Date.now())), retryIn));
  }
}

// ---- contacts, blocking, privacy ------------------------------------------------------

let contactsAsked = null; // the ListContacts in flight
let contactsAgain = false;

/** Asks for the contacts (with their presence), the blocked users and the privacy
 * settings; once at a time, again if asked meanwhile. */
async function refreshContacts() {
  if (contactsAsked) {
    contactsAgain = true;
    return;
  }
  contactsAsked = (async () => {
    do {
      contactsAgain = false;
      try {
        const [list, blocks, privacy] = await Promise.all([
          session.request("list_contacts", {}),
          session.request("list_blocks", {}),
          session.request("set_privacy", {}), // an empty SetPrivacy only reads
        ]);
        if (!model) return;
        model.contactList(list);
        model.blocked = new Set(blocks.users);
        showPrivacy(privacy);
      } catch {
        return; // not connected: the next login asks again
      }
      renderContacts();
      renderList();
      renderPresence();
    } while (contactsAgain);
  })();
  try {
    await contactsAsked;
  } finally {
    contactsAsked = null;
  }
}

function renderContacts() {
  if (!model) return;
  const rows = model.contactRows().map((c) => {
    const li = document.createElement("li");
    li.className = "contact";
    li.dataset.user = c.user;
    li.dataset.state = c.state;
    const name = span("contact-name", c.user);
    const actions = document.createElement("span");
    actions.className = "contact-actions";
    let status;
    if (c.state === "INCOMING") {
      li.append(dot("request"));
      status = "wants to be your contact";
      actions.append(
        actionButton("Accept", `Accept ${c.user}`, () => contactAction("contact_accept", c.user)),
        actionButton("Decline", `Decline ${c.user}`, () => contactAction("contact_decline", c.user), true),
      );
    } else if (c.state === "OUTGOING") {
      li.append(dot("pending"));
      status = "request sent, pending";
      actions.append(actionButton("Withdraw", `Withdraw the request to ${c.user}`, () => contactAction("contact_remove", c.user), true));
    } else {
      li.append(dot(c.online ? "online" : "offline"));
      status = presenceText(c) || "offline";
      actions.append(
        actionButton("Chat", `Chat with ${c.user}`, () => openConversation(`@${c.user}`)),
        actionButton("Remove", `Remove ${c.user} from contacts`, () => contactAction("contact_remove", c.user), true),
      );
    }
    li.append(name, span("contact-seen", status), actions);
    return li;
  });
  $("contact-list").replaceChildren(...rows);
  $("no-contacts").hidden = rows.length > 0;
  const waiting = model.incoming();
  const badge = $("requests");
  badge.hidden = waiting === 0;
  badge.textContent = String(waiting);
  $("tab-contacts").setAttribute("aria-label", waiting ? `Contacts, ${waiting} ${waiting === 1 ? "request" : "requests"}` : "Contacts");
}

function actionButton(text, label, onclick, plain = false) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  if (plain) b.className = "plain";
  b.onclick = onclick;
  return b;
}

/** ContactRequest, ContactAccept, ContactDecline or ContactRemove for `user`. */
async function contactAction(field, user) {
  $("contacts-error").textContent = "";
  try {
    const ok = await session.request(field, { user });
    if (!model) return;
    model.setContact(ok.user, ok.state, 0);
    renderContacts();
    if (ok.state === "CONTACT") refreshContacts(); // for their presence
    return true;
  } catch (e) {
    $("contacts-error").textContent = human(e);
    return false;
  }
}

async function addContact() {
  const user = $("add-contact").value.trim().replace(/^@/, "");
  if (!user) {
    $("contacts-error").textContent = "Type the name of the user to add.";
    return;
  }
  if (await contactAction("contact_request", user)) $("add-contact").value = "";
}

function showTab(which) {
  const contacts = which === "contacts";
  $("tab-chats").setAttribute("aria-selected", String(!contacts));
  $("tab-contacts").setAttribute("aria-selected", String(contacts));
  $("tab-chats").tabIndex = contacts ? -1 : 0;
  $("tab-contacts").tabIndex = contacts ? 0 : -1;
  $("conversations").hidden = contacts;
  $("contacts").hidden = !contacts;
}

async function toggleBlock() {
  const c = current && model?.conv(current);
  if (!c || c.kind !== "PRIVATE") return;
  $("send-error").textContent = "";
  const blocking = !model.blocked.has(c.name);
  try {
    const ok = await session.request(blocking ? "block" : "unblock", { user: c.name });
    if (ok.blocked) model.blocked.add(ok.user);
    else model.blocked.delete(ok.user);
    renderPresence();
  } catch (e) {
    $("send-error").textContent = human(e);
  }
}

function showPrivacy(p) {
  $("contacts-only").checked = p.contacts_only;
  $("hide-last-seen").checked = p.hide_last_seen;
}

async function setPrivacy(field, box) {
  $("contacts-error").textContent = "";
  box.disabled = true;
  try {
    showPrivacy(await session.request("set_privacy", { [field]: box.checked }));
  } catch (e) {
    box.checked = !box.checked;
    $("contacts-error").textContent = human(e);
  } finally {
    box.disabled = false;
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
  $("create").onclick = () => showCreate($("create-box").hidden);
  $("create-go").onclick = createGroup;
  $("create-cancel").onclick = () => showCreate(false);
  $("accept-invite").onclick = () => answerInvitation(true);
  $("decline-invite").onclick = () => answerInvitation(false);
  $("invite-form").onsubmit = (e) => {
    e.preventDefault();
    inviteTyped("group_invite", $("invite-user"));
  };
  $("unban-form").onsubmit = (e) => {
    e.preventDefault();
    inviteTyped("group_unban", $("unban-user"));
  };
  $("info-form").onsubmit = (e) => {
    e.preventDefault();
    saveInfo();
  };
  $("delete-group").onclick = deleteGroup;
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
  $("message").addEventListener("input", () => {
    updateLimit();
    composerTyped();
  });
  $("tab-chats").onclick = () => showTab("chats");
  $("tab-contacts").onclick = () => showTab("contacts");
  for (const [tab, other] of [["tab-chats", "tab-contacts"], ["tab-contacts", "tab-chats"]]) {
    $(tab).addEventListener("keydown", (e) => {
      if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
      showTab(other === "tab-contacts" ? "contacts" : "chats");
      $(other).focus();
    });
  }
  $("add-contact-form").onsubmit = (e) => {
    e.preventDefault();
    addContact();
  };
  $("contacts-only").onchange = (e) => setPrivacy("contacts_only", e.target);
  $("hide-last-seen").onchange = (e) => setPrivacy("hide_last_seen", e.target);
  $("block").onclick = toggleBlock;
  $("compose-cancel").onclick = () => {
    setComposing(null);
    $("message").focus();
  };
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Escape" && composing) {
      e.preventDefault();
      setComposing(null);
      return;
    }
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      sendComposed();
    }
  });
  $("messages").addEventListener("scroll", () => {
    const c = current && model?.conv(current);
    if (c && c.older && $("messages").scrollTop < 60) loadOlder(c);
  });
  wireDrops();
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
