// A logged-in session that outlives its connections: login (password, or the token
// kept in localStorage), catching up on the inbox from the last seq seen, an outbox
// of messages sent again with the same client_msg_id until acknowledged, and
// reconnecting with backoff to any node the login listed.
import { Connection, ConnectionLost, ServerError } from "./connection.js";

const STORE_KEY = "chat.session";
const OUTBOX_KEY = "chat.outbox";
/** Login errors that retrying cannot fix: the user must log in again. */
const REFUSALS = new Set(["INVALID_CREDENTIALS", "NOT_FOUND", "INVALID_NAME", "BAD_REQUEST", "UNSUPPORTED_VERSION"]);
/** Send errors worth retrying on the same connection (a partition electing a leader). */
const RETRYABLE = new Set(["UNAVAILABLE", "RATE_LIMITED", "INTERNAL"]);
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];
const SYNC_PAGE = 500;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A node's WebSocket URL as this page can dial it: a node listening on every
 * interface (0.0.0.0) is reached at the host the page came from. */
function reachable(url) {
  try {
    const u = new URL(url);
    if (u.hostname === "0.0.0.0" || u.hostname === "[::]") u.hostname = location.hostname;
    return u.toString();
  } catch {
    return null;
  }
}

export function pageSocketUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
}

export class Session {
  /** `on` receives: state(kind, text), entries(list, {initial}), ready() after each
   * login and catch-up, sent(item, ack), failed(item, error), loggedOut(reason),
   * presence(update) and typing(notice) (pushes that are not inbox entries). */
  constructor(on) {
    this.on = on;
    this.urls = [pageSocketUrl()];
    this.reset();
  }

  reset() {
    this.conn = null;
    this.user = null;
    this.token = null;
    this.wanted = false; // the user is logged in: stay connected
    this.connecting = false;
    this.syncing = false;
    this.buffer = [];
    this.lastSeq = 0;
    this.readSeq = 0;
    this.wantRead = 0;
    this.deliveredAcked = 0;
    this.outbox = [];
    this.flushing = false;
    this.maxText = 0;
    this.maxFile = 0;
    this.loadedOnce = false;
    clearInterval(this.pinger);
  }

  /** The user and token kept from an earlier visit, if any. */
  static saved() {
    try {
      return JSON.parse(localStorage.getItem(STORE_KEY));
    } catch {
      return null;
    }
  }

  /** Logs in again with the kept token; false if there is none. An expired token
   * ends in `loggedOut`; an unreachable cluster is retried with backoff. */
  async resume() {
    const saved = Session.saved();
    if (!saved?.user || !saved?.token) return false;
    this.user = saved.user;
    this.token = saved.token;
    this.maxText = saved.maxText ?? 0;
    this.wanted = true;
    try {
      this.outbox = JSON.parse(localStorage.getItem(OUTBOX_KEY)) ?? [];
      if (this.outbox.some((m) => m.user !== this.user)) this.outbox = [];
    } catch {
      this.outbox = [];
    }
    this.reconnect();
    return true;
  }

  /** Logs in with a password on a new connection; throws what the server said. */
  async login(user, password) {
    this.user = user;
    try {
      await this.connectTo(this.urls[0], { password });
    } catch (e) {
      this.reset();
      this.on.state("offline", "Not connected");
      throw e;
    }
    this.wanted = true;
  }

  /** Registers on a connection of its own (the login that follows opens another). */
  async register(user, password) {
    this.on.state("connecting", "Connecting…");
    try {
      const conn = await Connection.open(this.urls[0], { onPush() {}, onClose() {} });
      try {
        await conn.request("register", { username: user, password });
      } finally {
        conn.close();
      }
    } catch (e) {
      this.on.state("offline", "Not connected");
      throw e;
    }
  }

  async logout() {
    const conn = this.conn;
    this.wanted = false;
    if (conn) {
      await conn.request("logout", { revoke_token: true }, 3000).catch(() => {});
      conn.close();
    }
    this.forget();
    this.reset();
    this.on.state("offline", "Not connected");
    this.on.loggedOut("");
  }

  forget() {
    localStorage.removeItem(STORE_KEY);
    localStorage.removeItem(OUTBOX_KEY);
  }

  /** A request on the current connection (rejects with ConnectionLost without one);
   * `timeoutMs` for one that takes longer than most (finishing an upload). */
  request(field, body, timeoutMs = undefined) {
    if (!this.conn || this.syncing) return Promise.reject(new ConnectionLost("not connected"));
    return this.conn.request(field, body, timeoutMs);
  }

  /** A request without an answer (Typing), dropped when not connected: it is only
   * worth something now. */
  tell(field, body) {
    if (this.conn && !this.syncing) this.conn.tell(field, body);
  }

  /** Queues a message (answering message `replyTo`, if given, and carrying files
   * already uploaded: `attachments`, each { blob_id, name, mime }); it is sent (again,
   * after a reconnect) until acknowledged. */
  send(conversation, text, replyTo = "", attachments = []) {
    const item = { user: this.user, conversation, text, client_msg_id: crypto.randomUUID() };
    if (replyTo) item.reply_to = replyTo;
    if (attachments.length) item.attachments = attachments;
    this.outbox.push(item);
    this.saveOutbox();
    this.flush();
    return item;
  }

  /** Changes message `messageId` (ChangeMessage): kind "EDIT" (`text` the new text),
   * "RECALL" or "REACT" (`text` the emoji, "" removes mine). Not queued: it needs the
   * connection now, and says why not; a retry on a busy partition keeps its
   * client_msg_id, so it is stored once. */
  async change(kind, messageId, text = "") {
    const body = { client_msg_id: crypto.randomUUID(), change: { kind, message_id: messageId, text } };
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request("change_message", body);
      } catch (e) {
        if (!(e instanceof ServerError) || !RETRYABLE.has(e.code) || attempt >= 3) throw e;
        await sleep(500);
      }
    }
  }

  /** Marks the inbox read up to `seq` (the server's read cursor only moves forward). */
  markRead(seq) {
    this.wantRead = Math.max(this.wantRead, seq);
    this.flushRead();
  }

  // ---- connecting ----------------------------------------------------------

  async connectTo(url, credential) {
    const again = this.loadedOnce ? "Reconnecting" : "Connecting";
    this.on.state("connecting", `${again} to ${new URL(url).host}…`);
    this.connecting = true;
    try {
      const conn = await Connection.open(url, {
        onPush: (kind, value) => this.push(conn, kind, value),
        onClose: () => this.lost(conn),
      });
      this.conn = conn;
      this.syncing = true; // pushes wait until the catch-up is done
      this.buffer = [];
      try {
        await this.loggedIn(conn, await conn.request("login", { username: this.user, ...credential }));
      } catch (e) {
        this.conn = null;
        conn.close();
        throw e;
      }
    } finally {
      this.connecting = false;
    }
  }

  async loggedIn(conn, ok) {
    this.token = ok.token;
    this.maxText = ok.max_text_bytes || conn.hello.max_frame_bytes - 512;
    // 0 from a node that does not say: its refusal tells.
    this.maxFile = ok.max_file_bytes || 0;
    localStorage.setItem(STORE_KEY, JSON.stringify({ user: this.user, token: ok.token, maxText: this.maxText }));
    this.learn(ok.nodes, conn.url);
    // An acknowledgement of nothing answers with the cursors: where reading stands.
    const cursors = await conn.request("ack_read", { up_to_seq: 0 });
    this.readSeq = cursors.read_seq;
    this.deliveredAcked = cursors.delivered_seq;
    await this.catchUp(conn);
    this.on.state("online", `Connected to ${conn.hello.node}`);
    const every = Math.min(15000, Math.max(1000, (conn.hello.idle_timeout_ms || 60000) / 3));
    clearInterval(this.pinger);
    this.pinger = setInterval(() => this.ping(conn), every);
    this.flush();
    this.flushRead();
    this.on.ready();
  }

  /** Remembers every node's WebSocket URL, the one just used first. */
  learn(nodes, current) {
    const urls = [current, ...nodes.filter((n) => n.up).map((n) => n.ws_url), ...this.urls, ...nodes.map((n) => n.ws_url)];
    this.urls = [...new Set(urls.filter(Boolean).map(reachable).filter(Boolean))];
  }

  /** The connection `conn` ended: unless it was given up on purpose, reconnect. */
  lost(conn) {
    if (conn !== this.conn) return;
    this.conn = null;
    clearInterval(this.pinger);
    // Its node is the least likely to answer now: try the others first.
    this.urls = [...this.urls.filter((u) => u !== conn.url), conn.url];
    if (!this.wanted) return;
    this.on.state("offline", "Connection lost; reconnecting…");
    if (!this.connecting) this.reconnect();
  }

  async reconnect() {
    if (this.reconnecting) return;
    this.reconnecting = true;
    try {
      for (let attempt = 0; this.wanted; attempt++) {
        const url = this.urls[attempt % this.urls.length];
        try {
          await this.connectTo(url, { token: this.token });
          return;
        } catch (e) {
          if (e instanceof ServerError && REFUSALS.has(e.code)) {
            this.expired();
            return;
          }
          if (!this.wanted) return;
          const wait = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
          this.on.state("offline", `Connection lost; reconnecting (attempt ${attempt + 1})…`);
          await sleep(wait);
        }
      }
    } finally {
      this.reconnecting = false;
    }
  }

  expired() {
    this.forget();
    this.reset();
    this.on.state("offline", "Not connected");
    this.on.loggedOut("Your session has expired; please log in again.");
  }

  ping(conn) {
    // No answer in time: the connection is dead without having closed (a frozen
    // node, a lost network); close it to reconnect elsewhere.
    conn.request("ping", { nonce: Date.now() }).catch((e) => {
      if (e instanceof ConnectionLost && conn === this.conn) conn.ws.close();
    });
  }

  // ---- the inbox -----------------------------------------------------------

  /** Fetches every inbox entry after the last seq seen, then what was pushed meanwhile. */
  async catchUp(conn) {
    const initial = !this.loadedOnce;
    for (;;) {
      const page = await conn.request("sync", { after_seq: this.lastSeq, limit: SYNC_PAGE });
      this.deliver(page.messages, initial);
      if (!page.has_more || page.messages.length === 0) break;
    }
    this.loadedOnce = true;
    this.syncing = false;
    this.deliver(this.buffer.splice(0), false);
    // What the catch-up fetched is on this device now (acks wait while syncing).
    this.ackDelivered();
  }

  push(conn, kind, value) {
    if (conn !== this.conn) return;
    let entry = null;
    if (kind === "delivery") entry = value;
    else if (kind === "receipt") entry = { seq: value.seq, receipt: value };
    else if (kind === "closing") conn.ws.close(); // the node is going away: reconnect
    else if (kind === "presence") this.on.presence(value);
    else if (kind === "typing") this.on.typing(value);
    if (!entry) return;
    if (this.syncing) this.buffer.push(entry);
    else this.deliver([entry], false);
  }

  /** Hands on the entries not seen yet, in seq order, and acknowledges them. */
  deliver(entries, initial) {
    const fresh = entries.filter((e) => e.seq > this.lastSeq).sort((a, b) => a.seq - b.seq);
    const unique = fresh.filter((e, i) => i === 0 || e.seq !== fresh[i - 1].seq);
    if (unique.length === 0) return;
    this.lastSeq = unique[unique.length - 1].seq;
    this.on.entries(unique, { initial });
    this.ackDelivered();
  }

  ackDelivered() {
    const conn = this.conn;
    if (!conn || this.syncing || this.lastSeq <= this.deliveredAcked) return;
    const upTo = this.lastSeq;
    conn.request("ack_delivered", { up_to_seq: upTo }).then(
      (ok) => (this.deliveredAcked = Math.max(this.deliveredAcked, ok.delivered_seq)),
      () => {},
    );
  }

  flushRead() {
    const conn = this.conn;
    if (!conn || this.syncing || this.wantRead <= this.readSeq) return;
    conn.request("ack_read", { up_to_seq: this.wantRead }).then(
      (ok) => (this.readSeq = Math.max(this.readSeq, ok.read_seq)),
      () => {},
    );
  }

  // ---- the outbox ----------------------------------------------------------

  saveOutbox() {
    localStorage.setItem(OUTBOX_KEY, JSON.stringify(this.outbox));
  }

  /** Sends the outbox one message at a time, in order, while connected. */
  async flush() {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.outbox.length && this.conn && !this.syncing) {
        const item = this.outbox[0];
        const conn = this.conn;
        try {
          const ack = await conn.request(...sendRequest(item));
          this.outbox.shift();
          this.saveOutbox();
          this.on.sent(item, ack);
        } catch (e) {
          if (e instanceof ConnectionLost) {
            if (conn.closed) break; // sent again after reconnecting
          } else if (RETRYABLE.has(e.code)) {
            await sleep(500);
          } else {
            this.outbox.shift();
            this.saveOutbox();
            this.on.failed(item, e);
          }
        }
      }
    } finally {
      this.flushing = false;
    }
  }
}

function sendRequest({ conversation, text, client_msg_id, reply_to = "", attachments = [] }) {
  return conversation.startsWith("#")
    ? ["send_group", { group: conversation.slice(1), client_msg_id, text, reply_to, attachments }]
    : ["send_private", { to: conversation.slice(1), client_msg_id, text, reply_to, attachments }];
}
