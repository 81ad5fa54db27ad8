"""A small, synchronous Python client for the chat protocol.

Everything here follows the README's protocol section and protocol/chat.proto:
varint32-delimited frames, one ClientFrame per request with a request_id, answers
matched by request_id, pushes (request_id 0) collected on the side.

The protobuf module is generated from protocol/chat.proto with the standard tooling:
    python -m grpc_tools.protoc -I protocol --python_out=OUT protocol/chat.proto
and OUT must be on the import path (it provides chat_pb2).
"""

import hashlib
import itertools
import mimetypes
import os
import socket
import time
import uuid

from google.protobuf.internal.decoder import _DecodeVarint32
from google.protobuf.internal.encoder import _VarintBytes

import chat_pb2 as pb

PROTOCOL_VERSION = 1
# Chunks of one upload or download in flight at once (as the Rust client).
WINDOW = 8
# What is read of a file at once when hashing it.
READ_BYTES = 256 * 1024


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
        self.sent = 0  # requests sent on this connection
        self.waiting = set()  # request_ids sent and not answered yet
        self.answers = {}  # request_id -> ServerFrame, answers that came before asked for
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

    def request(self, field, message, timeout=None):
        """Sends ClientFrame{field: message} and returns the answer's body message."""
        return self.answer(self.start(field, message), timeout)

    def start(self, field, message):
        """Sends ClientFrame{field: message} without waiting; returns its request_id for
        answer(). Several requests may be in flight; answers come in any order."""
        request_id = next(self.ids)
        frame = pb.ClientFrame(request_id=request_id)
        getattr(frame, field).CopyFrom(message)
        self._send(frame)
        self.sent += 1
        self.waiting.add(request_id)
        return request_id

    def answer(self, request_id, timeout=None):
        """The answer's body message to a request sent with start() (raises ChatError for
        an Error); answers to other requests in flight are kept for their turn."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            while request_id not in self.answers:
                frame = self._read_frame(deadline)
                if frame.request_id == 0:
                    self.pushes.append(frame)
                elif frame.request_id in self.waiting:
                    self.answers[frame.request_id] = frame
                # else: an answer to a request we stopped waiting for
        finally:
            self.waiting.discard(request_id)
        answer = self.answers.pop(request_id)
        kind = answer.WhichOneof("body")
        if kind == "error":
            raise ChatError(answer.error.code, answer.error.message)
        return getattr(answer, kind)

    def forget(self, request_ids):
        """Stops waiting for these requests (after a failure): their answers are dropped."""
        for request_id in request_ids:
            self.waiting.discard(request_id)
            self.answers.pop(request_id, None)

    def windowed(self, requests, window=WINDOW):
        """Sends (field, message) pairs from the iterable `requests` with at most `window`
        in flight and yields their answers in order."""
        in_flight = []
        try:
            for field, message in requests:
                in_flight.append(self.start(field, message))
                if len(in_flight) >= window:
                    yield self.answer(in_flight.pop(0))
            while in_flight:
                yield self.answer(in_flight.pop(0))
        finally:
            self.forget(in_flight)

    def register(self, username, password):
        self.request("register", pb.RegisterRequest(username=username, password=password))

    def login(self, username, password):
        """Returns LoginOk (token, delivered_seq, last_seq, nodes)."""
        return self.request("login", pb.LoginRequest(username=username, password=password))

    def logout(self):
        self.request("logout", pb.LogoutRequest())

    def send_private(self, to, text, client_msg_id=None, reply_to="", attachments=()):
        """Returns SendAck once the message is durable. Resend with the same client_msg_id.
        reply_to: the message_id of the message this one answers (Delivery.reply_to).
        attachments: Attachments from upload() (at most 8); the message carries them."""
        msg = pb.SendPrivate(
            to=to,
            text=text,
            client_msg_id=client_msg_id or uuid.uuid4().hex,
            reply_to=reply_to,
            attachments=_slim(attachments),
        )
        return self.request("send_private", msg)

    def send_group(self, group, text, client_msg_id=None, reply_to="", attachments=()):
        msg = pb.SendGroup(
            group=group,
            text=text,
            client_msg_id=client_msg_id or uuid.uuid4().hex,
            reply_to=reply_to,
            attachments=_slim(attachments),
        )
        return self.request("send_group", msg)

    # ---- files -------------------------------------------------------------
    # A file is uploaded first, then carried by messages (send_*(attachments=[...]));
    # its blob_id is the lowercase hex SHA-256 of its bytes. Whoever may read such a
    # message may download it; anyone else gets NOT_FOUND.

    def upload(self, source, name=None, mime=None, window=WINDOW):
        """Uploads `source` (bytes, or a file's path: read in pieces) and returns its
        Attachment (blob_id, name, mime, size, sha256; an image's width, height and
        thumbnail). name: the file's name, else the path's; mime: guessed from the name.
        Bytes the cluster has already are not sent again. Raises ChatError: FILE_TOO_LARGE
        or QUOTA_EXCEEDED (before any byte is sent), HASH_MISMATCH."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            size, sha256 = len(data), hashlib.sha256(data).hexdigest()
            name = name or "file"

            def pieces(step):
                for offset in range(0, size, step):
                    yield offset, data[offset:offset + step]
        else:
            path = os.fspath(source)
            size, sha256 = _hash_file(path)
            name = name or os.path.basename(path)

            def pieces(step):
                with open(path, "rb") as f:
                    offset = 0
                    while piece := f.read(step):
                        yield offset, piece
                        offset += len(piece)

        mime = mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
        ready = self.request("upload_begin", pb.UploadBegin(name=name, mime=mime, size=size, sha256=sha256))
        if ready.stored:
            return ready.attachment
        chunks = (
            ("upload_chunk", pb.UploadChunk(blob_id=ready.blob_id, offset=offset, data=piece))
            for offset, piece in pieces(max(1, ready.chunk_bytes))
        )
        for _progress in self.windowed(chunks, window):
            pass
        # Storing on the replicas of a large file takes longer than a message.
        done = self.request("upload_finish", pb.UploadFinish(blob_id=ready.blob_id), timeout=self.timeout * 6)
        return done.attachment

    def download(self, blob_id, offset=0, window=WINDOW):
        """A file's bytes from `offset` to its end, in chunks (`window` in flight)."""
        first = self.request("download", pb.DownloadRequest(blob_id=blob_id, offset=offset))
        out = bytearray(first.data)
        step, size = len(first.data), first.size
        if step == 0:
            return bytes(out)
        requests = (
            ("download", pb.DownloadRequest(blob_id=blob_id, offset=at, length=step))
            for at in range(offset + step, size, step)
        )
        for chunk in self.windowed(requests, window):
            if chunk.offset != offset + len(out) or not chunk.data:
                raise ValueError(f"a chunk at {chunk.offset} ({len(chunk.data)} bytes), expected {offset + len(out)}")
            out.extend(chunk.data)
        return bytes(out)

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


def _slim(attachments):
    """What a message takes of each attachment: the server fills in the rest."""
    return [pb.Attachment(blob_id=a.blob_id, name=a.name, mime=a.mime) for a in attachments]


def _hash_file(path):
    """(size, lowercase hex SHA-256) of a file, read in pieces."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while piece := f.read(READ_BYTES):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


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
