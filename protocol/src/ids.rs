//! Message ids (`SendAck.message_id`, `Delivery.message_id`): what they look like and
//! where the message they name lives. Clients treat them as opaque strings; the node and
//! the command-line client read them to find a message's home.
//!
//! - `m:bob:alice:<32 hex digits>`: a private message from `alice` to `bob`. The digits
//!   are a digest of its sender and client message id, so the sender's node names the
//!   message before it is stored anywhere, and both copies (the recipient's and the
//!   sender's own) are written at once under that name.
//! - `p:bob:17`: a private message stored before such names existed, by its seq in
//!   `bob`'s inbox.
//! - `g:rust:3`: a group message, by its seq in the group.

/// Length of a private message's digest, in bytes.
pub const DIGEST_BYTES: usize = 16;

/// Where a message lives, as its id says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageHome<'a> {
    /// A private message, in the recipient's inbox: recipient, sender and digest
    /// (`m:bob:alice:…`).
    Private {
        /// The recipient, whose inbox decides changes to the message.
        to: &'a str,
        /// The sender.
        from: &'a str,
        /// Digest of the sender and its client message id.
        digest: [u8; DIGEST_BYTES],
    },
    /// A private message of the earlier form: the recipient's inbox and the entry's seq
    /// (`p:bob:17`).
    Inbox(&'a str, u64),
    /// A group message: the group and the message's group seq (`g:rust:3`).
    Group(&'a str, u64),
}

impl<'a> MessageHome<'a> {
    /// The inbox (private) or group where the message is decided.
    pub fn name(&self) -> &'a str {
        match self {
            MessageHome::Private { to, .. } => to,
            MessageHome::Inbox(name, _) | MessageHome::Group(name, _) => name,
        }
    }
}

/// Longest user or group name an id may carry, in bytes.
const MAX_NAME_BYTES: usize = 32;

/// The id of a private message from `from` to `to` whose digest is `digest`.
pub fn private_message_id(to: &str, from: &str, digest: &[u8; DIGEST_BYTES]) -> String {
    use std::fmt::Write;
    let mut id = String::with_capacity(4 + to.len() + from.len() + 2 * DIGEST_BYTES);
    id.push_str("m:");
    id.push_str(to);
    id.push(':');
    id.push_str(from);
    id.push(':');
    for b in digest {
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// Reads a message id; `None` for a string no message has as its id.
pub fn parse_message_id(id: &str) -> Option<MessageHome<'_>> {
    let name_ok = |n: &str| !n.is_empty() && n.len() <= MAX_NAME_BYTES;
    let (kind, rest) = id.split_once(':')?;
    if kind == "m" {
        let (to, rest) = rest.split_once(':')?;
        let (from, hex) = rest.split_once(':')?;
        if !(name_ok(to) && name_ok(from)) {
            return None;
        }
        return Some(MessageHome::Private {
            to,
            from,
            digest: from_hex(hex)?,
        });
    }
    let (name, seq) = rest.rsplit_once(':')?;
    let seq: u64 = seq.parse().ok()?;
    if !name_ok(name) || seq == 0 {
        return None;
    }
    match kind {
        "p" => Some(MessageHome::Inbox(name, seq)),
        "g" => Some(MessageHome::Group(name, seq)),
        _ => None,
    }
}

/// Exactly `2 * DIGEST_BYTES` lowercase hex digits.
fn from_hex(hex: &str) -> Option<[u8; DIGEST_BYTES]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 2 * DIGEST_BYTES {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; DIGEST_BYTES];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_id_names_its_recipient_sender_and_digest_and_reads_back() {
        let digest: [u8; DIGEST_BYTES] = std::array::from_fn(|i| (i * 17) as u8);
        let id = private_message_id("bob", "alice", &digest);
        assert_eq!(id, "m:bob:alice:00112233445566778899aabbccddeeff");
        assert_eq!(
            parse_message_id(&id),
            Some(MessageHome::Private {
                to: "bob",
                from: "alice",
                digest
            })
        );
        assert_eq!(parse_message_id(&id).map(|h| h.name()), Some("bob"));
    }

    #[test]
    fn seq_ids_read_as_before() {
        assert_eq!(parse_message_id("p:bob:17"), Some(MessageHome::Inbox("bob", 17)));
        assert_eq!(
            parse_message_id("g:rust-fans:3"),
            Some(MessageHome::Group("rust-fans", 3))
        );
    }

    #[test]
    fn anything_else_is_no_id() {
        let long = "b".repeat(MAX_NAME_BYTES + 1);
        let hex = "00112233445566778899aabbccddeeff";
        for bad in [
            String::new(),
            "bob".into(),
            "p:bob".into(),
            "p::1".into(),
            "p:bob:0".into(),
            "p:bob:x".into(),
            "q:bob:1".into(),
            "g::4".into(),
            format!("p:{long}:1"),
            format!("m:bob:alice:{}", &hex[1..]),
            format!("m:bob:alice:{hex}0"),
            format!("m:bob:alice:{}", hex.to_uppercase()),
            format!("m:bob:alice:{}g", &hex[1..]),
            format!("m::alice:{hex}"),
            format!("m:bob::{hex}"),
            format!("m:bob:{hex}"),
            format!("m:{long}:alice:{hex}"),
        ] {
            assert_eq!(parse_message_id(&bad), None, "{bad}");
        }
    }
}
