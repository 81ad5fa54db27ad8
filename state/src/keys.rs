//! The key layout of a partition's records: every key starts with its partition, so a
//! partition is one contiguous range (a snapshot is a range scan, a move a range delete).
//!
//! `partition (u16 BE) ‖ tree (u8) ‖ ...`, numbers big-endian so ranges scan in order:
//! - accounts: `name` → `AccountRecord`
//! - tokens: `scope(user) ‖ token` → `TokenRecord`
//! - inbox: `scope(user) ‖ kind ‖ ...` with kinds META → `InboxMeta`, ENTRY ‖ seq →
//!   `InboxEntry`, ORIGIN ‖ origin → seq, GROUP ‖ group → (), CHANGES ‖ message id →
//!   `MessageState`
//! - groups: `scope(group) ‖ kind ‖ ...` with kinds META → `GroupRecord`, MEMBER ‖ user
//!   → `MemberEntry`, INVITED ‖ user → `Invitation`, BANNED ‖ user → (), ORIGIN ‖ scope(sender) ‖ client id → group seq, MESSAGE ‖ seq →
//!   `GroupMessage`, FANOUT ‖ partition → the group seq delivered there
//! - pending: `group` → () while the group has posts not yet in every member's inbox
//! - contacts: `scope(user) ‖ kind ‖ other` with kinds CONTACT → `ContactIndex` (the
//!   user's view), BLOCKED → (), PAIR → `PairRecord` (under the pair's smaller name, in
//!   its partition)
//! - contact outbox: `scope(user) ‖ other` → `ContactUpdate` not yet delivered to
//!   `user`'s partition (in the pair's partition)
//! - blobs: SHA-256 → `BlobRecord` (in the partition of the hash)
//! - uploads: `scope(user) ‖ 0 ‖ SHA-256` → size ‖ time (u64 BE each): what a user
//!   uploaded, for its quota
//! - applied: the index of the last log entry applied to the partition (written by the
//!   consensus driver in the same batch as the entry's effects)
//!
//! `scope(name)` is a length byte then the name, so no name's keys prefix another's.

use crate::placement::Partition;
use chat_protocol::ids;

/// Record kinds (the byte after the partition).
pub mod tree {
    /// Accounts.
    pub const ACCOUNTS: u8 = 1;
    /// Login tokens.
    pub const TOKENS: u8 = 2;
    /// Inboxes.
    pub const INBOX: u8 = 3;
    /// Groups.
    pub const GROUPS: u8 = 4;
    /// Groups whose fan-out is not complete.
    pub const PENDING: u8 = 5;
    /// Contacts, blocks and pair records.
    pub const CONTACTS: u8 = 6;
    /// Contact updates not yet delivered.
    pub const CONTACT_OUTBOX: u8 = 7;
    /// Files, by SHA-256.
    pub const BLOBS: u8 = 8;
    /// What each user uploaded, for its quota.
    pub const UPLOADS: u8 = 9;
    /// The applied index.
    pub const APPLIED: u8 = 0xf0;
}

/// Kinds inside an inbox or a group.
pub mod kind {
    /// Inbox or group metadata.
    pub const META: u8 = 0;
    /// Inbox entry by seq.
    pub const ENTRY: u8 = 1;
    /// Group member by name.
    pub const MEMBER: u8 = 1;
    /// Dedupe index.
    pub const ORIGIN: u8 = 2;
    /// A user's groups.
    pub const GROUP: u8 = 3;
    /// Group log entry by seq.
    pub const MESSAGE: u8 = 4;
    /// How far a group's fan-out reached, per destination partition.
    pub const FANOUT: u8 = 5;
    /// A user's view of a relation, by the other's name.
    pub const CONTACT: u8 = 1;
    /// A user blocked, by name.
    pub const BLOCKED: u8 = 2;
    /// The record of a pair, by the larger name.
    pub const PAIR: u8 = 3;
    /// A user invited to a group, by name.
    pub const INVITED: u8 = 6;
    /// A user banned from a group, by name.
    pub const BANNED: u8 = 7;
    /// What the changes of a message left of it (`MessageState`): by message id in an
    /// inbox, by group seq in a group.
    pub const CHANGES: u8 = 8;
}

/// Everything of a partition starts with this.
pub fn partition_prefix(p: Partition) -> [u8; 2] {
    p.to_be_bytes()
}

fn start(p: Partition, tree: u8, capacity: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + capacity);
    key.extend_from_slice(&partition_prefix(p));
    key.push(tree);
    key
}

/// `partition ‖ tree ‖ len ‖ name ‖ kind`: the prefix of everything of one user or group.
pub fn scoped(p: Partition, tree: u8, name: &str, kind: u8) -> Vec<u8> {
    let mut key = start(p, tree, name.len() + 2 + 8);
    key.push(name.len() as u8);
    key.extend_from_slice(name.as_bytes());
    key.push(kind);
    key
}

/// `scoped ‖ seq`.
pub fn seq_key(p: Partition, tree: u8, name: &str, kind: u8, seq: u64) -> Vec<u8> {
    let mut key = scoped(p, tree, name, kind);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// `scoped ‖ suffix`.
pub fn suffix_key(p: Partition, tree: u8, name: &str, kind: u8, suffix: &[u8]) -> Vec<u8> {
    let mut key = scoped(p, tree, name, kind);
    key.extend_from_slice(suffix);
    key
}

/// How far a group's fan-out reached in partition `to`.
pub fn fanout(p: Partition, group: &str, to: Partition) -> Vec<u8> {
    suffix_key(p, tree::GROUPS, group, kind::FANOUT, &to.to_be_bytes())
}

/// The marker of a group whose fan-out is not complete.
pub fn pending(p: Partition, group: &str) -> Vec<u8> {
    let mut key = start(p, tree::PENDING, group.len());
    key.extend_from_slice(group.as_bytes());
    key
}

/// A file's record, by its SHA-256.
pub fn blob(p: Partition, hash: &[u8; 32]) -> Vec<u8> {
    let mut key = start(p, tree::BLOBS, 32);
    key.extend_from_slice(hash);
    key
}

/// The prefix of every file record of partition `p`.
pub fn blob_prefix(p: Partition) -> Vec<u8> {
    start(p, tree::BLOBS, 0)
}

/// A user's upload of a file (its size and when), for the user's quota.
pub fn upload(p: Partition, user: &str, hash: &[u8; 32]) -> Vec<u8> {
    let mut key = scoped(p, tree::UPLOADS, user, 0);
    key.extend_from_slice(hash);
    key
}

/// The prefix of every pending marker of partition `p`.
pub fn pending_prefix(p: Partition) -> Vec<u8> {
    start(p, tree::PENDING, 0)
}

/// An account.
pub fn account(p: Partition, user: &str) -> Vec<u8> {
    let mut key = start(p, tree::ACCOUNTS, user.len());
    key.extend_from_slice(user.as_bytes());
    key
}

/// A login token of a user.
pub fn token(p: Partition, user: &str, token: &str) -> Vec<u8> {
    let mut key = start(p, tree::TOKENS, user.len() + token.len() + 1);
    key.push(user.len() as u8);
    key.extend_from_slice(user.as_bytes());
    key.extend_from_slice(token.as_bytes());
    key
}

/// `user`'s view of its relation with `other`.
pub fn contact(p: Partition, user: &str, other: &str) -> Vec<u8> {
    suffix_key(p, tree::CONTACTS, user, kind::CONTACT, other.as_bytes())
}

/// Whether `user` blocks `other`.
pub fn blocked(p: Partition, user: &str, other: &str) -> Vec<u8> {
    suffix_key(p, tree::CONTACTS, user, kind::BLOCKED, other.as_bytes())
}

/// The record of the pair `first < second`.
pub fn pair(p: Partition, first: &str, second: &str) -> Vec<u8> {
    suffix_key(p, tree::CONTACTS, first, kind::PAIR, second.as_bytes())
}

/// The undelivered update of `user`'s view of its relation with `other`.
pub fn contact_outbox(p: Partition, user: &str, other: &str) -> Vec<u8> {
    let mut key = start(p, tree::CONTACT_OUTBOX, user.len() + other.len() + 1);
    key.push(user.len() as u8);
    key.extend_from_slice(user.as_bytes());
    key.extend_from_slice(other.as_bytes());
    key
}

/// The prefix of every undelivered contact update of partition `p`.
pub fn contact_outbox_prefix(p: Partition) -> Vec<u8> {
    start(p, tree::CONTACT_OUTBOX, 0)
}

/// The origin of a contact event in `user`'s inbox: the other user and the version.
pub fn contact_origin(other: &str, version: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(2 + other.len() + 8);
    o.push(b'c');
    o.push(other.len() as u8);
    o.extend_from_slice(other.as_bytes());
    o.extend_from_slice(&version.to_be_bytes());
    o
}

/// The applied index of a partition.
pub fn applied(p: Partition) -> Vec<u8> {
    start(p, tree::APPLIED, 0)
}

/// Whether `key` is an inbox entry's (`seq_key(_, INBOX, user, ENTRY, seq)`): a stored
/// message, for counting them.
pub fn is_inbox_entry(key: &[u8]) -> bool {
    let Some(&len) = key.get(3) else {
        return false;
    };
    key[2] == tree::INBOX && key.len() == 4 + len as usize + 1 + 8 && key[4 + len as usize] == kind::ENTRY
}

/// The seq at the end of a `seq_key` (0 for a key too short to hold one).
pub fn seq_of(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A stored seq value.
pub fn seq_value(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The digest a private message's id and origin carry: of its sender and client id
/// (SHA-256, the first 16 bytes; the sender's name is in the origin too, so one sender's
/// messages could only collide with each other, with odds of 2^-64 per pair).
pub fn private_digest(from: &str, client_msg_id: &str) -> [u8; ids::DIGEST_BYTES] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update([from.len() as u8]);
    h.update(from.as_bytes());
    h.update(client_msg_id.as_bytes());
    let full = h.finalize();
    let mut out = [0u8; ids::DIGEST_BYTES];
    out.copy_from_slice(&full[..ids::DIGEST_BYTES]);
    out
}

/// The origin of a private message in its recipient's inbox: its sender and the digest
/// of its client id ([`private_digest`]), so that its id (`m:to:from:digest`) finds it.
pub fn private_origin(from: &str, client_msg_id: &str) -> Vec<u8> {
    private_origin_of(from, &private_digest(from, client_msg_id))
}

/// [`private_origin`] from the sender and the digest, as a message id carries them.
pub fn private_origin_of(from: &str, digest: &[u8; ids::DIGEST_BYTES]) -> Vec<u8> {
    let mut o = Vec::with_capacity(2 + from.len() + digest.len());
    o.push(b'm');
    o.push(from.len() as u8);
    o.extend_from_slice(from.as_bytes());
    o.extend_from_slice(digest);
    o
}

/// The id of a private message from `from` to `to` (see [`chat_protocol::ids`]): chosen
/// by the sender's node, before anything is stored.
pub fn private_message_id(to: &str, from: &str, client_msg_id: &str) -> String {
    ids::private_message_id(to, from, &private_digest(from, client_msg_id))
}

/// The origin of a group post in a member's inbox: the group and its seq.
pub fn group_origin(group: &str, group_seq: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(2 + group.len() + 8);
    o.push(b'g');
    o.push(group.len() as u8);
    o.extend_from_slice(group.as_bytes());
    o.extend_from_slice(&group_seq.to_be_bytes());
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_one_range_and_names_do_not_prefix_each_other() {
        let a = scoped(7, tree::INBOX, "ab", kind::ENTRY);
        let b = scoped(7, tree::INBOX, "abc", kind::ENTRY);
        assert!(!b.starts_with(&a));
        assert!(a.starts_with(&partition_prefix(7)));
        assert!(applied(7).starts_with(&partition_prefix(7)));
        assert!(!account(8, "x").starts_with(&partition_prefix(7)));
    }

    #[test]
    fn seqs_sort_in_order_and_short_keys_have_none() {
        let k1 = seq_key(1, tree::INBOX, "u", kind::ENTRY, 9);
        let k2 = seq_key(1, tree::INBOX, "u", kind::ENTRY, 256);
        assert!(k1 < k2);
        assert_eq!(seq_of(&k2), 256);
        assert_eq!(seq_of(&[1, 2]), 0);
    }

    #[test]
    fn origins_of_different_kinds_never_collide() {
        assert_ne!(private_origin("g", "x"), group_origin("g", 0));
        assert_ne!(private_origin("ab", "c"), private_origin("a", "bc"));
        assert_ne!(private_origin("a", "b1"), private_origin("a", "b2"));
    }

    #[test]
    fn a_private_id_leads_to_its_origin() {
        let id = private_message_id("bob", "alice", "c-1");
        let Some(ids::MessageHome::Private { to, from, digest }) = ids::parse_message_id(&id) else {
            panic!("{id} does not read back");
        };
        assert_eq!((to, from), ("bob", "alice"));
        assert_eq!(private_origin_of(from, &digest), private_origin("alice", "c-1"));
        assert_ne!(private_message_id("bob", "alice", "c-2"), id);
        assert_ne!(private_message_id("carol", "alice", "c-1"), id);
    }
}
