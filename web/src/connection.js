// One WebSocket to one node: the Hello handshake, requests matched to their answers
// by request_id, and pushes handed on. Reconnecting is the session's business
// (session.js); a Connection is used until it closes, then thrown away.
import { encodeRequest, decodeFrame } from "./proto.js";

/** The server answered a request with an Error. */
export class ServerError extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

/** The connection closed (or never opened, or a request timed out) before an answer. */
export class ConnectionLost extends Error {}

const REQUEST_TIMEOUT_MS = 15000;
const OPEN_TIMEOUT_MS = 5000;

export class Connection {
  /** Opens a WebSocket to `url` and says Hello. `onPush(body, value)` gets pushes,
   * `onClose()` is called once when an open connection ends. */
  static open(url, { onPush, onClose }) {
    return new Promise((resolve, reject) => {
      const conn = new Connection(url, onPush);
      const timer = setTimeout(() => conn.ws.close(), OPEN_TIMEOUT_MS);
      let opened = false;
      conn.ws.onopen = () => {
        conn.request("hello", { protocol_version: 1, client_name: "chat-web" }).then(
          (hello) => {
            clearTimeout(timer);
            conn.hello = hello;
            opened = true;
            resolve(conn);
          },
          (e) => {
            clearTimeout(timer);
            conn.ws.close();
            reject(e);
          },
        );
      };
      conn.ws.onclose = () => {
        clearTimeout(timer);
        conn.fail();
        if (opened) onClose();
        else reject(new ConnectionLost(`cannot connect to ${url}`));
      };
    });
  }

  constructor(url, onPush) {
    this.url = url;
    this.onPush = onPush;
    this.pending = new Map();
    this.nextId = 1;
    this.closed = false;
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (ev) => this.receive(decodeFrame(new Uint8Array(ev.data)));
  }

  /** Sends one request; resolves with the answer's body, rejects with a ServerError
   * or, if the connection ends or the answer does not come in time, ConnectionLost. */
  request(field, body, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) {
      return Promise.reject(new ConnectionLost("not connected"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ConnectionLost("no answer in time"));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.ws.send(encodeRequest(id, field, body));
    });
  }

  /** Sends a request that is never answered (Typing): nothing waits for it, and an
   * error about it, having no waiter, is dropped. */
  tell(field, body) {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return;
    this.ws.send(encodeRequest(this.nextId++, field, body));
  }

  close() {
    this.closed = true;
    this.ws.close();
  }

  receive(frame) {
    const kind = frame.body;
    const value = frame[kind];
    if (frame.request_id === 0) {
      this.onPush(kind, value);
      return;
    }
    const waiter = this.pending.get(frame.request_id);
    if (!waiter) return;
    this.pending.delete(frame.request_id);
    clearTimeout(waiter.timer);
    if (kind === "error") waiter.reject(new ServerError(value.code, value.message));
    else waiter.resolve(value);
  }

  /** Every outstanding request fails: its answer can no longer come. */
  fail() {
    this.closed = true;
    for (const { reject, timer } of this.pending.values()) {
      clearTimeout(timer);
      reject(new ConnectionLost("connection lost"));
    }
    this.pending.clear();
  }
}
