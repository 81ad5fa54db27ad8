"""Example and end-to-end check of the Python client against a running node.

Usage: python example.py HOST:PORT [NAME_PREFIX]
Prints one line per step ("ok: ...") and exits non-zero on the first failure.
"""

import sys

import chat_pb2 as pb
from chat_client import ChatClient, ChatError


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
