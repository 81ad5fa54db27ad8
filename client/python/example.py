"""Example and end-to-end check of the Python client against a running node.

Usage: python example.py HOST:PORT [NAME_PREFIX]
Prints one line per step ("ok: ...") and exits non-zero on the first failure.
"""

import hashlib
import os
import struct
import sys
import tempfile
import zlib

import chat_pb2 as pb
from chat_client import ChatClient, ChatError, apply_change


def png(width, height):
    """A small RGB PNG (a gradient), written by hand so that the example needs no imaging
    library."""
    rows = b"".join(
        b"\0" + b"".join(bytes((x * 255 // width, y * 255 // height, 128)) for x in range(width)) for y in range(height)
    )

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    prefix = sys.argv[2] if len(sys.argv) > 2 else "py"
    alice_name, bob_name, group = f"{prefix}alice", f"{prefix}bob", f"{prefix}group"

    alice = ChatClient(host, int(port))
    bob = ChatClient(host, int(port))
    print(f"ok: hello from node {alice.hello.node}")
    alice.register(alice_name, "pw-a")
    bob.register(bob_name, "pw-b")
    try:
        alice.register(alice_name, "again")
        raise SystemExit("a taken name was accepted")
    except ChatError as e:
        assert e.code == pb.USERNAME_TAKEN, e
    print("ok: register, and a taken name is refused")

    alice.login(alice_name, "pw-a")
    bob_login = bob.login(bob_name, "pw-b")
    print(f"ok: login (cluster of {len(bob_login.nodes)} node(s))")

    ack = alice.send_private(bob_name, "hello from python")
    got = bob.next_push("delivery")
    assert (got.text, got.message_id, got.seq) == ("hello from python", ack.message_id, ack.seq), got
    again = alice.send_private(bob_name, "hello from python", client_msg_id=ack.message_id + "-x")
    assert again.seq == ack.seq + 1
    dup = alice.send_private(bob_name, "hello from python", client_msg_id=ack.message_id + "-x")
    assert dup.message_id == again.message_id, "resend must return the same id"
    print("ok: private message pushed live; resend deduplicated")

    bob.ack_delivered(bob.next_push("delivery").seq)
    receipt = alice.next_push("receipt")
    assert receipt.by == bob_name and receipt.kind == pb.DELIVERED, receipt
    print("ok: delivered receipt")

    alice.create_group(group)
    bob.join_group(group)
    gack = alice.send_group(group, "hello group")
    gmsg = bob.next_push("delivery")
    assert gmsg.kind == pb.GROUP and gmsg.conversation == group and gmsg.group_seq == gack.seq, gmsg
    bob.ack_delivered(gmsg.seq)
    print("ok: group message")

    # Files: uploaded in chunks on one connection, carried by a message, downloaded
    # back by its recipient on another; the same bytes again are not sent.
    data = bytes((i * 7 + i // 251) % 256 for i in range(200_000))  # several chunks
    sent = alice.upload(data, "data.bin")
    assert (sent.blob_id, sent.sha256, sent.size) == (hashlib.sha256(data).hexdigest(),) * 2 + (len(data),), sent
    before = alice.sent
    assert alice.upload(data, "copy.bin").blob_id == sent.blob_id
    assert alice.sent == before + 1, "the same bytes again: UploadBegin only"
    try:
        bob.download(sent.blob_id)
        raise SystemExit("a file was readable before a message carried it")
    except ChatError as e:
        assert e.code == pb.NOT_FOUND, e
    alice.send_private(bob_name, "the data", attachments=[sent])
    got = bob.next_message()
    (file,) = got.attachments
    assert (got.text, file.blob_id, file.name, file.size) == ("the data", sent.blob_id, "data.bin", len(data)), got
    assert bob.download(file.blob_id) == data
    assert bob.download(file.blob_id, offset=150_000) == data[150_000:]
    bob.ack_delivered(got.seq)
    # From a path, to a group: an image, which the server measures and previews.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "gradient.png")
        with open(path, "wb") as f:
            f.write(png(640, 480))
        picture = bob.upload(path)
    assert (picture.name, picture.mime, picture.width, picture.height) == ("gradient.png", "image/png", 640, 480), picture
    bob.send_group(group, "", attachments=[picture])
    shown = alice.next_message()
    (image,) = shown.attachments
    assert (shown.conversation, image.blob_id, image.width) == (group, picture.blob_id, 640), shown
    assert image.thumbnail.startswith(b"\xff\xd8"), "the preview is a JPEG"
    assert alice.download(image.blob_id) == png(640, 480)
    print("ok: file uploaded, sent, and downloaded back")

    # A reply names the message it answers; changes arrive as entries of their own.
    question = alice.send_private(bob_name, "tea at five?")
    asked = bob.next_message()
    assert asked.message_id == question.message_id, asked
    seen = {asked.message_id: {"text": asked.text}}
    answer = bob.send_private(alice_name, "yes", reply_to=question.message_id)
    got = alice.next_message()
    assert (got.text, got.reply_to, got.message_id) == ("yes", question.message_id, answer.message_id), got
    alice.edit(question.message_id, "tea at six?")
    alice.react(question.message_id, "🎉")
    alice.react(question.message_id, "")
    for _ in range(3):
        assert apply_change(seen, bob.next_change()), seen
    assert seen[question.message_id] == {"text": "tea at six?", "edited": True, "reactions": {}}, seen
    bob.react(question.message_id, "👍")
    try:
        bob.edit(question.message_id, "coffee")
        raise SystemExit("someone else's message was edited")
    except ChatError as e:
        assert e.code == pb.NOT_AUTHOR, e
    try:
        bob.send_private(alice_name, "?", reply_to="not an id")
        raise SystemExit("a reply to something that is no message id was taken")
    except ChatError as e:
        assert e.code == pb.BAD_REQUEST, e
    shown = [m for m in bob.history(alice_name).messages if m.message_id == question.message_id][0]
    reactions = [(r.emoji, list(r.users)) for r in shown.reactions]
    assert (shown.text, shown.edited, reactions) == ("tea at six?", True, [("👍", [bob_name])]), shown
    alice.delete(question.message_id)
    recall = bob.next_change(pb.MessageChange.RECALL)
    assert recall.change.kind == pb.MessageChange.RECALL and recall.change.by == alice_name, recall
    apply_change(seen, recall)
    assert seen[question.message_id]["recalled"], seen
    print("ok: reply, edit, react and recall, private")

    post = alice.send_group(group, "who brings cake?")
    assert bob.next_message().message_id == post.message_id
    bob.send_group(group, "me", reply_to=post.message_id)
    got = alice.next_message()
    assert (got.conversation, got.text, got.reply_to) == (group, "me", post.message_id), got
    alice.recall(post.message_id)
    recall = bob.next_change(pb.MessageChange.RECALL)
    assert (recall.conversation, recall.change.message_id) == (group, post.message_id), recall
    shown = [m for m in bob.history(group, group=True).messages if m.message_id == post.message_id][0]
    assert shown.recalled and shown.text == "", shown
    bob.ack_delivered(bob.sync_all(0)[-1].seq)
    print("ok: reply and recall in a group")

    bob.logout()
    bob.close()
    alice.send_private(bob_name, "while you were away")
    bob = ChatClient(host, int(port))
    login = bob.login(bob_name, "pw-b")
    missed = bob.sync_all(login.delivered_seq)
    assert [m.text for m in missed] == ["while you were away"], missed
    bob.ack_read(missed[-1].seq)
    print("ok: offline message synced after login")
    assert sorted(alice.online()) == sorted([alice_name, bob_name]), alice.online()
    print("ok: online list")
    alice.close()
    bob.close()


if __name__ == "__main__":
    main()
