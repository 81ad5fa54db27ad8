// What the page knows of the user's conversations, without the DOM: messages by
// conversation (deduplicated by message id), unread counts, receipts and the
// read cursor; contacts, presence and who is typing where; invitations to groups
// and what a group role allows. Conversations are keyed "@user" (private) or
// "#group". Time comes in as an argument (`now`). A message keeps the files it
// carries (`attachments`, as the wire has them; files.js knows what to do with them).

const READ_KEY = "chat.read.";
const ANSWERED_KEY = "chat.invites.";

export class Model {
  constructor(me) {
    this.me = me;
    this.convs = new Map();
    /** message_id -> "DELIVERED" | "READ": the newest receipt for each message. */
    this.receipts = new Map();
    this.lastSeq = 0;
    /** user -> { state: "OUTGOING" | "INCOMING" | "CONTACT", since }: relations in effect. */
    this.contacts = new Map();
    /** user -> { online, lastSeen } (lastSeen 0: unknown or hidden), for contacts and
     * group co-members, as the last ContactList or presence push said. */
    this.presence = new Map();
    /** Users this user blocks. */
    this.blocked = new Set();
    /** conversation key -> Map(user -> when their typing notice expires). */
    this.typing = new Map();
    /** group key -> { from, id }: invitations of mine not answered yet. */
    this.invites = new Map();
    /** Ids of invitations answered on this device (the inbox keeps them). */
    try {
      this.answeredInvites = new Set(JSON.parse(localStorage.getItem(ANSWERED_KEY + me)) ?? []);
    } catch {
      this.answeredInvites = new Set();
    }
    /** Conversations read on this device beyond the server's read cursor. */
    try {
      this.localRead = JSON.parse(localStorage.getItem(READ_KEY + me)) ?? {};
    } catch {
      this.localRead = {};
    }
  }

  conv(key) {
    let c = this.convs.get(key);
    if (!c) {
      c = {
        key,
        kind: key.startsWith("#") ? "GROUP" : "PRIVATE",
        name: key.slice(1),
        messages: new Map(),
        unread: new Set(),
        last: null,
        older: null, // null: history not loaded; 0: nothing older; else before_seq
        loading: false,
      };
      this.convs.set(key, c);
    }
    return c;
  }

  /** An inbox entry (a Delivery from sync or a push). Returns the message added to a
   * conversation, or null (a receipt, a contact change, or a message already known). */
  entry(d, readSeq) {
    this.lastSeq = Math.max(this.lastSeq, d.seq);
    if (d.receipt) {
      this.receipt(d.receipt);
      return null;
    }
    if (d.contact) {
      this.contactEvent(d.contact);
      return null;
    }
    if (d.change) {
      this.change(keyOf(d, this.me), d.change);
      return null;
    }
    const key = keyOf(d, this.me);
    if (d.group_event) this.membership(key, d);
    const c = this.conv(key);
    // A message ends its sender's typing there, whether or not its "stopped" came.
    this.typing.get(key)?.delete(d.from);
    const msg = this.add(c, d);
    if (msg && !msg.mine && !msg.event && d.seq > readSeq && d.seq > (this.localRead[key] ?? 0)) c.unread.add(d.seq);
    return msg;
  }

  /** An edit, recall or reaction of a message in conversation `key`: applied to the
   * message if the page has it (history brings the current state otherwise). Applying
   * one twice changes nothing, so the page may apply its own at once, before its
   * entry comes. Nothing changes a recalled message. */
  change(key, ch) {
    const msg = this.convs.get(key)?.messages.get(ch.message_id);
    if (!msg || msg.recalled) return;
    if (ch.kind === "EDIT") Object.assign(msg, { text: ch.text, edited: true });
    if (ch.kind === "RECALL") Object.assign(msg, { text: "(message deleted)", recalled: true, reactions: {}, attachments: [] });
    if (ch.kind === "REACT") {
      msg.reactions = { ...(msg.reactions ?? {}) };
      if (ch.text) msg.reactions[ch.by] = ch.text;
      else delete msg.reactions[ch.by];
    }
  }

  /** What a reply shows above its text: the message it answers in `c`, as
   * `{ from, text }` (an excerpt), or `{ missing: true }` when the page does not have
   * it (not loaded, or gone); null for a message that answers none. */
  quote(c, msg) {
    if (!msg.replyTo) return null;
    const to = c.messages.get(msg.replyTo);
    if (!to) return { id: msg.replyTo, missing: true };
    return { id: to.id, from: to.from, mine: to.mine, text: excerpt(previewText(to)), recalled: Boolean(to.recalled) };
  }

  /** A message's reactions to show: per emoji, who (by name), in the order of the
   * emoji's first use, and whether I am among them. */
  reactionRows(msg) {
    const rows = new Map();
    for (const [user, emoji] of Object.entries(msg.reactions ?? {})) {
      if (!rows.has(emoji)) rows.set(emoji, { emoji, users: [], mine: false });
      const row = rows.get(emoji);
      row.users.push(user);
      if (user === this.me) row.mine = true;
    }
    return [...rows.values()];
  }

  /** The actions the message menu offers on `msg` in `c`, by the rules the server
   * applies (state/src/changes.rs): anyone who sees a message replies and reacts;
   * its author edits it; its author, and in a group the owner and admins (`role`,
   * when known), delete it for everyone. Events, messages not sent yet and
   * deleted ones offer nothing. */
  messageActions(c, msg, role = null) {
    if (msg.event || msg.recalled || msg.state !== "sent" || !msg.id || msg.id.startsWith("pending:")) return [];
    const actions = ["reply", "react"];
    if (msg.mine) actions.push("edit");
    if (msg.mine || (c.kind === "GROUP" && (role === "owner" || role === "admin"))) actions.push("delete");
    return actions;
  }

  /** My reaction to `msg` ("" for none). */
  myReaction(msg) {
    return msg.reactions?.[this.me] ?? "";
  }

  receipt(r) {
    if (this.receipts.get(r.message_id) !== "READ") this.receipts.set(r.message_id, r.kind);
  }

  /** Adds a delivery (inbox or history) to `c` unless its message is known. */
  add(c, d) {
    if (c.messages.has(d.message_id)) return null;
    const msg = {
      id: d.message_id,
      from: d.from,
      // A change of the group (joined, invited, roles...) is shown as a line of its own.
      text: d.group_event
        ? describeGroupEvent(d.group_event, this.me)
        : d.recalled
          ? "(message deleted)"
          : d.text,
      edited: Boolean(d.edited),
      recalled: Boolean(d.recalled),
      replyTo: d.reply_to || "",
      attachments: d.recalled ? [] : (d.attachments ?? []),
      reactions: reactionMap(d.reactions),
      event: Boolean(d.group_event),
      ts: d.timestamp_ms,
      seq: d.seq,
      gseq: d.group_seq, // a group message's seq in its group (for its receipts)
      mine: d.from === this.me,
      state: "sent",
    };
    c.messages.set(msg.id, msg);
    if (!c.last || msg.ts >= c.last.ts) c.last = msg;
    return msg;
  }

  /** A message being sent (from the outbox): shown at once, acknowledged later. Its
   * files are `attachments` as their uploads answered them (with their previews), else
   * as the outbox keeps them (name and type only). */
  pending(item, attachments = null) {
    const c = this.conv(item.conversation);
    const msg = {
      id: `pending:${item.client_msg_id}`,
      from: this.me,
      text: item.text,
      replyTo: item.reply_to || "",
      attachments: attachments ?? item.attachments ?? [],
      reactions: {},
      ts: Date.now(),
      seq: 0,
      mine: true,
      state: "pending",
    };
    c.messages.set(msg.id, msg);
    c.last = msg;
    return msg;
  }

  /** The send of `item` was acknowledged: its message gets its id and time. */
  acked(item, ack) {
    const c = this.conv(item.conversation);
    const msg = c.messages.get(`pending:${item.client_msg_id}`);
    if (!msg) return;
    c.messages.delete(msg.id);
    if (c.messages.has(ack.message_id)) return; // its copy came first (another device, or a sync)
    Object.assign(msg, { id: ack.message_id, ts: ack.timestamp_ms || msg.ts, state: "sent" });
    if (c.kind === "GROUP") msg.gseq = ack.seq;
    c.messages.set(msg.id, msg);
    if (!c.last || msg.ts >= c.last.ts) c.last = msg;
  }

  failed(item, error) {
    const msg = this.conv(item.conversation).messages.get(`pending:${item.client_msg_id}`);
    if (msg) Object.assign(msg, { state: "failed", error });
  }

  /** A page of history (newest first) for `c`; `next` is where older ones start. */
  history(c, page) {
    for (const d of page.messages) this.add(c, d);
    c.older = page.next_before_seq;
  }

  /** The conversation's messages, oldest first. */
  ordered(c) {
    return [...c.messages.values()].sort((a, b) => a.ts - b.ts || a.seq - b.seq);
  }

  /** Own group messages whose members' receipts may still change (newest first). */
  openGroupReceipts(c, most) {
    const mine = this.ordered(c).filter((m) => m.mine && m.gseq && m.state === "sent" && m.groupTick !== "read");
    return mine.reverse().slice(0, most);
  }

  /** Where one own group message stands for the other members (GroupReceipts):
   * "read" once all have read it, "delivered" once all have it. */
  groupReceipts(c, m, members) {
    const known = members.filter((r) => !r.unknown);
    if (members.length === 0 || known.length < members.length) return false;
    const state = known.every((r) => r.read) ? "read" : known.every((r) => r.delivered || r.read) ? "delivered" : undefined;
    if (state === m.groupTick) return false;
    m.groupTick = state;
    return true;
  }

  /** Own private messages are "read" or "delivered" up to the newest one a receipt
   * of that kind names (receipts are cumulative), else "sent" (or "pending"); own
   * group messages as every member's receipt says. */
  ticks(c) {
    let delivered = -1;
    let read = -1;
    for (const m of c.messages.values()) {
      const kind = m.mine && this.receipts.get(m.id);
      if (kind) delivered = Math.max(delivered, m.ts);
      if (kind === "READ") read = Math.max(read, m.ts);
    }
    return (m) => {
      if (m.state !== "sent") return m.state;
      if (c.kind === "GROUP") return m.groupTick ?? "sent";
      if (m.ts <= read) return "read";
      if (m.ts <= delivered) return "delivered";
      return "sent";
    };
  }

  /** Conversations, the most recently active first. */
  sorted() {
    const ts = (c) => c.last?.ts ?? 0;
    return [...this.convs.values()].sort((a, b) => ts(b) - ts(a) || a.key.localeCompare(b.key));
  }

  /** Everything in `c` counts as read on this device. */
  readAll(c) {
    if (c.unread.size === 0) return false;
    this.localRead[c.key] = Math.max(this.localRead[c.key] ?? 0, ...c.unread);
    c.unread.clear();
    localStorage.setItem(READ_KEY + this.me, JSON.stringify(this.localRead));
    return true;
  }

  /** How far the server's read cursor may move: it is one number for the whole
   * inbox, so it stops before the first message still unread in any conversation. */
  readCursor() {
    let first = Infinity;
    for (const c of this.convs.values()) for (const seq of c.unread) first = Math.min(first, seq);
    return first === Infinity ? this.lastSeq : first - 1;
  }

  remove(key) {
    this.convs.delete(key);
  }

  // ---- group membership and invitations ------------------------------------------

  /** A group event in my inbox, in seq order: an invitation for me waits for an
   * answer until I join, leave (decline), am removed or banned. */
  membership(key, d) {
    const e = d.group_event;
    if (e.kind === "INVITED" && e.target === this.me) {
      if (!this.answeredInvites.has(d.message_id)) this.invites.set(key, { from: e.actor, id: d.message_id });
    } else if (((e.kind === "JOINED" || e.kind === "LEFT") && e.actor === this.me) || ((e.kind === "REMOVED" || e.kind === "BANNED") && e.target === this.me)) {
      this.invites.delete(key);
    }
  }

  /** The groups I am a member of (ListMyGroups): no invitation waits there. */
  memberOf(groups) {
    for (const g of groups) this.invites.delete(`#${g}`);
  }

  /** The invitation to `key` waiting for an answer, or null. */
  invitation(key) {
    return this.invites.get(key) ?? null;
  }

  /** I accepted or declined the invitation to `key`: it is not asked again, even when
   * the inbox is read anew. */
  answered(key) {
    const invite = this.invites.get(key);
    if (!invite) return;
    this.invites.delete(key);
    this.answeredInvites.add(invite.id);
    localStorage.setItem(ANSWERED_KEY + this.me, JSON.stringify([...this.answeredInvites]));
  }

  // ---- contacts and presence ------------------------------------------------

  /** A change of a relation (ContactEvent): `state` is where it stands for me now. */
  contactEvent(e) {
    this.setContact(e.user, e.state, 0);
  }

  /** The whole list (ContactList) replaces what was known; it carries presence for
   * contacts. */
  contactList(list) {
    this.contacts.clear();
    for (const c of list.contacts) {
      this.setContact(c.user, c.state, c.since_ms);
      if (c.state === "CONTACT") this.presence.set(c.user, { online: c.online, lastSeen: c.last_seen_ms });
    }
  }

  setContact(user, state, since) {
    if (state === "OUTGOING" || state === "INCOMING" || state === "CONTACT") {
      const was = this.contacts.get(user);
      this.contacts.set(user, { state, since: since || (was?.state === state ? was.since : 0) });
    } else {
      this.contacts.delete(user);
    }
  }

  /** A PresenceUpdate push. */
  presenceUpdate(update) {
    for (const p of update.changes) this.presence.set(p.user, { online: p.online, lastSeen: p.online ? 0 : p.last_seen_ms });
  }

  /** Contacts and requests for the panel: requests to me first, then contacts, then
   * my own requests; each by name. */
  contactRows() {
    const order = { INCOMING: 0, CONTACT: 1, OUTGOING: 2 };
    return [...this.contacts.entries()]
      .map(([user, c]) => ({ user, state: c.state, online: false, lastSeen: 0, ...this.presence.get(user) }))
      .sort((a, b) => order[a.state] - order[b.state] || a.user.localeCompare(b.user));
  }

  /** How many contact requests wait for my answer. */
  incoming() {
    let n = 0;
    for (const c of this.contacts.values()) if (c.state === "INCOMING") n++;
    return n;
  }

  // ---- typing ---------------------------------------------------------------------

  /** A TypingNotice push, received at `now`. Returns the conversation's key. */
  typingNotice(n, now) {
    const key = n.kind === "GROUP" ? `#${n.conversation}` : `@${n.from}`;
    let who = this.typing.get(key);
    if (n.stopped) {
      who?.delete(n.from);
    } else {
      if (!who) this.typing.set(key, (who = new Map()));
      who.set(n.from, now + n.expires_in_ms);
    }
    return key;
  }

  /** Who is typing in `key` at `now`, by name (expired notices are forgotten). */
  typers(key, now) {
    const who = this.typing.get(key);
    if (!who) return [];
    for (const [user, until] of who) if (until <= now) who.delete(user);
    return [...who.keys()].sort();
  }

  /** When the next typing notice in `key` expires (Infinity: none shown). */
  typingExpiry(key) {
    return Math.min(Infinity, ...(this.typing.get(key)?.values() ?? []));
  }
}

/** Decides when to tell the server that the user is typing (data in, commands out):
 * the server passes on one notice per conversation every `every` ms and drops the
 * rest, "stopped" ones included, so a notice that would be dropped waits for the end
 * of that window instead. Each method returns `{ send: "typing" | "stopped" }` (send
 * that now), `{ retryIn: ms }` (call `due` again then) or `{}`. */
export class TypingOut {
  constructor(every = 2000) {
    this.every = every;
    /** key -> { at, sent, shown, want }: when the last notice went, what it said,
     * whether the others show the user typing now, and what they should show. */
    this.state = new Map();
  }

  /** The user typed something in `key`. */
  typed(key, now) {
    return this.decide(key, now, "typing", true);
  }

  /** The field was cleared, or the conversation left. */
  stopped(key, now) {
    return this.decide(key, now, "stopped", false);
  }

  /** A message was sent: its arrival ends the "typing…" on the other side, so typing
   * again must say so anew, but a "stopped" still goes for clients that wait for it. */
  messageSent(key, now) {
    this.entry(key).shown = false;
    return this.stopped(key, now);
  }

  /** A `retryIn` came due. */
  due(key, now) {
    return this.decide(key, now, undefined, false);
  }

  entry(key) {
    let s = this.state.get(key);
    if (!s) this.state.set(key, (s = { at: -Infinity, sent: "stopped", shown: false, want: "stopped" }));
    return s;
  }

  decide(key, now, want, keystroke) {
    const s = this.entry(key);
    if (want) s.want = want;
    const wait = s.at + this.every - now;
    if (s.want === "typing") {
      // Typing again past the window renews the notice (it expires on the other side).
      if (s.shown && (wait > 0 || !keystroke)) return {};
    } else if (s.sent === "stopped") {
      return {};
    }
    if (wait > 0) return { retryIn: wait };
    s.at = now;
    s.sent = s.want;
    s.shown = s.want === "typing";
    return { send: s.sent };
  }
}

// ---- group roles -----------------------------------------------------------------

/** A GroupRole as the wire names it, in the page's words. */
export function roleName(role) {
  return role === "OWNER" ? "owner" : role === "ADMIN" ? "admin" : "member";
}

const RANK = { member: 0, admin: 1, owner: 2 };

/** Whether a user with role `actor` ("owner" | "admin" | "member"; null: not a member)
 * may do `action` to a user with role `target` (null: not a member) in a group that is
 * `isPrivate`; the rules of state/src/governance.rs, so that the page offers only
 * what the server allows. Actions: invite, remove, ban, unban, setInfo, makeAdmin,
 * makeMember, transfer, delete, leave. */
export function mayInGroup(action, actor, target, isPrivate) {
  if (!actor) return false;
  const admin = RANK[actor] >= RANK.admin;
  const owner = actor === "owner";
  const outranks = target === null || RANK[actor] > RANK[target];
  switch (action) {
    case "invite":
      return (!isPrivate || admin) && target === null;
    case "remove":
      return admin && target !== null && outranks;
    case "ban":
      return admin && outranks;
    case "unban":
    case "setInfo":
      return admin;
    case "makeAdmin":
      return owner && target === "member";
    case "makeMember":
      return owner && target === "admin";
    case "transfer":
      return owner && (target === "member" || target === "admin");
    case "delete":
      return owner;
    case "leave":
      return !owner; // the owner hands the group over first
    default:
      return false;
  }
}

/** What the settings panel of a group shows `me`, from its GroupInfo: my role, the
 * actions on the group I may take, and each member with its role and the actions I
 * may take on it (the owner first, then admins, then members, each by name). */
export function groupPanel(info, me) {
  const members = info.members.map((m) => ({ user: m.user, role: roleName(m.role) }));
  const mine = members.find((m) => m.user === me)?.role ?? null;
  const may = (action, target = null) => mayInGroup(action, mine, target, info.private);
  const ON_MEMBERS = ["makeAdmin", "makeMember", "transfer", "remove", "ban"];
  return {
    role: mine,
    actions: ["invite", "setInfo", "unban", "delete", "leave"].filter((a) => may(a)),
    members: members
      .map((m) => ({ ...m, actions: m.user === me ? [] : ON_MEMBERS.filter((a) => may(a, m.role)) }))
      .sort((a, b) => RANK[b.role] - RANK[a.role] || a.user.localeCompare(b.user)),
  };
}

/** A group event in words, as `me` reads it. */
export function describeGroupEvent(e, me) {
  const who = (u) => (u === me ? "you" : u);
  const [actor, target] = [who(e.actor), who(e.target)];
  switch (e.kind) {
    case "JOINED":
      return `${actor} joined`;
    case "LEFT":
      return `${actor} left`;
    case "INVITED":
      return `${actor} invited ${target}`;
    case "REMOVED":
      return `${actor} removed ${target}`;
    case "BANNED":
      return `${actor} banned ${target}`;
    case "UNBANNED":
      return `${actor} unbanned ${target}`;
    case "ROLE_CHANGED":
      return `${actor} made ${target} ${e.role === "ADMIN" ? "an admin" : "a member"}`;
    case "OWNER_CHANGED":
      return `${actor} handed the group over to ${target}`;
    case "INFO_CHANGED":
      return `${actor} changed the group's title, topic or history setting`;
    default:
      return `${actor} changed the group`;
  }
}

/** At most this many characters of a message quote it above a reply. */
export const QUOTE_CHARS = 80;

/** The start of `text` on one line, with "…" when cut. */
export function excerpt(text, most = QUOTE_CHARS) {
  const line = String(text ?? "").replace(/\s+/g, " ").trim();
  const chars = [...line];
  return chars.length > most ? `${chars.slice(0, most).join("")}…` : line;
}

/** A message in one line of words, for the conversation list, a quote or a
 * notification: its text, else what files it carries ("📎 photo.png", "📎 3 files"). */
export function previewText(msg) {
  if (msg.text) return msg.text;
  const files = msg.attachments ?? [];
  if (files.length === 1) return `📎 ${files[0].name || "a file"}`;
  if (files.length > 1) return `📎 ${files.length} files`;
  return "";
}

/** History's reactions (per emoji, the users) as the page keeps them: user -> emoji. */
function reactionMap(list) {
  const out = {};
  for (const r of list ?? []) for (const user of r.users ?? []) out[user] = r.emoji;
  return out;
}

/** The conversation a delivery belongs to, as seen by `me`. */
export function keyOf(d, me) {
  if (d.kind === "GROUP") return `#${d.conversation}`;
  return d.from === me ? `@${d.conversation}` : `@${d.from}`;
}
