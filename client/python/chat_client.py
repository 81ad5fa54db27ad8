"""A small, synchronous Python client for the chat protocol.

Everything here follows the README's protocol section and protocol/chat.proto:
varint32-delimited frames, one ClientFrame per request with a request_id, answers
matched by request_id, pushes (request_id 0) collected on the side.

The protobuf module is generated from protocol/chat.proto with the standard tooling:
    python -m grpc_tools.protoc -I protocol --python_out=OUT protocol/chat.proto
and OUT must be on the import path (it provides chat_pb2).
"""

import itertools
import socket
import time
import uuid

from google.protobuf.internal.decoder import _DecodeVarint32
from google.protobuf.internal.encoder import _VarintBytes

import chat_pb2 as pb

PROTOCOL_VERSION = 1


class ChatError(Exception):
    """The server answered a request with an Error."""

    def __init__(self, code, message):
        super().__init__(f"{pb.ErrorCode.Name(code)}: {message}")
        self.code = code
        self.message = message


class ChatClient:
    """One connection to a chat node."""

    def __init__(self, host, port, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.ids = itertools.count(1)
        self.pushes = []  # ServerFrames with request_id 0, oldest first
        self.hello = self.request("hello", pb.Hello(protocol_version=PROTOCOL_VERSION, client_name="python"))

    def close(self):
        self.sock.close()

    # ---- framing -----------------------------------------------------------

    def _send(self, frame):
        data = frame.SerializeToString()
        self.sock.sendall(_VarintBytes(len(data)) + data)

    def _read_frame(self, deadline):
        while True:
            if self.buf:
                try:
                    size, pos = _DecodeVarint32(bytes(self.buf[:5]), 0)
                except IndexError:
                    size, pos = None, None  # the length prefix itself is incomplete
                if size is not None and len(self.buf) >= pos + size:
                    frame = pb.ServerFrame.FromString(bytes(self.buf[pos:pos + size]))
                    del self.buf[:pos + size]
                    return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the server in time")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            self.buf.extend(chunk)

    # ---- requests ----------------------------------------------------------

    def request(self, field, message):
        """Sends ClientFrame{field: message} and returns the answer's body message."""
        request_id = next(self.ids)
        frame = pb.ClientFrame(request_id=request_id)
        getattr(frame, field).CopyFrom(message)
        self._send(frame)
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._read_frame(deadline)
            if answer.request_id == 0:
                self.pushes.append(answer)
                continue
            if answer.request_id != request_id:
                continue  # an answer to an earlier request we stopped waiting for
            kind = answer.WhichOneof("body")
            if kind == "error":
                raise ChatError(answer.error.code, answer.error.message)
            return getattr(answer, kind)

    def register(self, username, password):
        self.request("register", pb.RegisterRequest(username=username, password=password))

    def login(self, username, password):
        """Returns LoginOk (token, delivered_seq, last_seq, nodes)."""
        return self.request("login", pb.LoginRequest(username=username, password=password))

    def logout(self):
        self.request("logout", pb.LogoutRequest())

    def send_private(self, to, text, client_msg_id=None, reply_to=""):
        """Returns SendAck once the message is durable. Resend with the same client_msg_id.
        reply_to: the message_id of the message this one answers (Delivery.reply_to)."""
        msg = pb.SendPrivate(to=to, text=text, client_msg_id=client_msg_id or uuid.uuid4().hex, reply_to=reply_to)
        return self.request("send_private", msg)

    def send_group(self, group, text, client_msg_id=None, reply_to=""):
        msg = pb.SendGroup(group=group, text=text, client_msg_id=client_msg_id or uuid.uuid4().hex, reply_to=reply_to)
        return self.request("send_group", msg)

    # ---- changes of messages already sent -------------------------------------
    # Each is a message of its own: answered SendAck once durable, deduplicated by
    # client_msg_id (resend with the same one), and delivered to both participants
    # (every member of a group) as a Delivery whose `change` is set.

    def change_message(self, kind, message_id, text="", client_msg_id=None):
        """kind: pb.MessageChange.EDIT (text: the new text), RECALL or REACT (text:
        the emoji, "" removes yours)."""
        change = pb.MessageChange(kind=kind, message_id=message_id, text=text)
        msg = pb.ChangeMessage(client_msg_id=client_msg_id or uuid.uuid4().hex, change=change)
        return self.request("change_message", msg)

    def edit(self, message_id, text, client_msg_id=None):
        """A new text for an own message, within the server's edit window."""
        return self.change_message(pb.MessageChange.EDIT, message_id, text, client_msg_id)

    def recall(self, message_id, client_msg_id=None):
        """Deletes a message for everyone (its author; in a group, also owner and admins)."""
        return self.change_message(pb.MessageChange.RECALL, message_id, "", client_msg_id)

    delete = recall

    def react(self, message_id, emoji, client_msg_id=None):
        """One reaction per user and message: a new one replaces yours, "" removes it."""
        return self.change_message(pb.MessageChange.REACT, message_id, emoji, client_msg_id)

    def create_group(self, group):
        self.request("create_group", pb.CreateGroup(group=group))

    def join_group(self, group):
        self.request("join_group", pb.JoinGroup(group=group))

    def ack_delivered(self, seq):
        return self.request("ack_delivered", pb.AckDelivered(up_to_seq=seq))

    def ack_read(self, seq):
        return self.request("ack_read", pb.AckRead(up_to_seq=seq))

    def sync_all(self, after_seq):
        """Every inbox entry after after_seq, following pages."""
        out = []
        while True:
            page = self.request("sync", pb.SyncRequest(after_seq=after_seq))
            out.extend(page.messages)
            if page.messages:
                after_seq = page.messages[-1].seq
            if not page.has_more:
                return out

    def history(self, conversation, group=False, before_seq=0, limit=0):
        """A page of a conversation's history (HistoryPage), newest first; each message
        as its changes left it (text, edited, recalled, reactions) with its reply_to."""
        kind = pb.GROUP if group else pb.PRIVATE
        req = pb.HistoryRequest(kind=kind, conversation=conversation, before_seq=before_seq, limit=limit)
        return self.request("history", req)

    def online(self):
        return list(self.request("list_online", pb.ListOnline()).users)

    # ---- pushes ------------------------------------------------------------

    def next_push(self, kind, timeout=None, where=None):
        """The next push whose body is `kind` ("delivery", "receipt", "closing") and
        that `where` (if given) accepts; other pushes are kept."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, frame in enumerate(self.pushes):
                if frame.WhichOneof("body") == kind and (where is None or where(getattr(frame, kind))):
                    del self.pushes[i]
                    return getattr(frame, kind)
            frame = self._read_frame(deadline)
            if frame.request_id == 0:
                self.pushes.append(frame)

    def next_message(self, timeout=None):
        """The next Delivery push that is a message (its reply_to names the message it
        answers, if any): no change, receipt, contact or group event."""
        return self.next_push("delivery", timeout, where=is_message)

    def next_change(self, kind=None, timeout=None):
        """The next Delivery push that is a change of a message (of `kind`, if given):
        its `change` holds the kind, the message_id, the text (new text or emoji) and
        `by`."""
        return self.next_push(
            "delivery", timeout, where=lambda d: d.HasField("change") and kind in (None, d.change.kind)
        )


def is_message(delivery):
    """Whether an inbox entry is a message (not a change, a receipt, a contact or a
    group event)."""
    return not any(delivery.HasField(f) for f in ("change", "receipt", "contact", "group_event"))


def apply_change(messages, delivery):
    """Applies a change entry to `messages` (message_id -> dict with text, edited,
    recalled, reactions {user: emoji}), as History would show it; returns whether it
    named a known message."""
    c = delivery.change
    m = messages.get(c.message_id)
    if m is None:
        return False
    if c.kind == pb.MessageChange.EDIT:
        m.update(text=c.text, edited=True)
    elif c.kind == pb.MessageChange.RECALL:
        m.update(text="", recalled=True)
    elif c.kind == pb.MessageChange.REACT:
        reactions = m.setdefault("reactions", {})
        if c.text:
            reactions[c.by] = c.text
        else:
            reactions.pop(c.by, None)
    return True
