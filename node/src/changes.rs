//! The edge of message changes (ChangeMessage): a request checked and sent where its
//! message is decided. Which changes are allowed is `chat_state::changes`.

use crate::error::{ChatError, ChatResult};
use chat_protocol::ids;
use chat_protocol::v1::{MessageChange, message_change};

/// Longest emoji of a reaction, in bytes (a flag or a family is well below it).
pub const MAX_EMOJI_BYTES: usize = 32;

/// Longest `reply_to` of a message, in bytes.
pub const MAX_REPLY_TO_BYTES: usize = 128;

/// Where a message is decided: its id says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    /// A private message: the recipient's inbox (`m:user:from:digest`, or `p:user:seq`).
    Inbox(String),
    /// A group message: the group (`g:group:seq`), and the seq.
    Group(String, u64),
}

/// Checks a change as a client sent it (before `by` is set) and says where it goes.
pub fn check(change: &MessageChange, max_text: usize) -> ChatResult<Home> {
    let bad = |why: &str| Err(ChatError::BadRequest(why.into()));
    match change.kind() {
        message_change::Kind::Unspecified => return bad("change kind must be EDIT, RECALL or REACT"),
        message_change::Kind::Edit if change.text.is_empty() => return bad("an edit needs a text"),
        message_change::Kind::Edit if change.text.len() > max_text => {
            return Err(ChatError::BadRequest(format!(
                "text is longer than {max_text} bytes"
            )));
        }
        message_change::Kind::React
            if change.text.len() > MAX_EMOJI_BYTES || change.text.chars().any(char::is_control) =>
        {
            return Err(ChatError::BadRequest(format!(
                "an emoji is at most {MAX_EMOJI_BYTES} bytes, without control characters"
            )));
        }
        _ => {}
    }
    home(&change.message_id).ok_or_else(|| ChatError::NotFound(format!("message {:?}", change.message_id)))
}

/// Where the message `id` lives; `None` for an id no message has
/// (`chat_protocol::ids`).
pub fn home(id: &str) -> Option<Home> {
    let home = ids::parse_message_id(id)?;
    Some(match home {
        ids::MessageHome::Group(group, seq) => Home::Group(group.to_owned(), seq),
        ids::MessageHome::Private { .. } | ids::MessageHome::Inbox(..) => Home::Inbox(home.name().to_owned()),
    })
}

/// Checks a message's `reply_to`: empty, or a well-formed message id. Whether that
/// message exists is not asked: it may live in another partition, and a reply to a
/// message that is gone (recalled, or removed by retention) is still a reply.
pub fn check_reply_to(reply_to: &str) -> ChatResult<()> {
    if reply_to.len() > MAX_REPLY_TO_BYTES {
        return Err(ChatError::BadRequest(format!(
            "reply_to is longer than {MAX_REPLY_TO_BYTES} bytes"
        )));
    }
    if !reply_to.is_empty() && home(reply_to).is_none() {
        return Err(ChatError::BadRequest(format!(
            "reply_to {reply_to:?} is not a message id (m:user:sender:digest, p:user:seq or g:group:seq)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: message_change::Kind, id: &str, text: &str) -> MessageChange {
        MessageChange {
            kind: kind as i32,
            message_id: id.into(),
            text: text.into(),
            by: String::new(),
        }
    }

    #[test]
    fn a_message_id_names_the_inbox_or_group_that_decides() {
        assert_eq!(home("p:bob:7"), Some(Home::Inbox("bob".into())));
        let id = chat_state::keys::private_message_id("bob", "alice", "c1");
        assert_eq!(home(&id), Some(Home::Inbox("bob".into())));
        assert_eq!(home("g:rust-fans:12"), Some(Home::Group("rust-fans".into(), 12)));
        for bad in ["", "p:bob", "p::3", "x:bob:3", "r:bob:3", "p:bob:zero", "g:g:0"] {
            assert_eq!(home(bad), None, "{bad}");
        }
    }

    #[test]
    fn bad_changes_get_a_typed_error() {
        use message_change::Kind::*;
        let code = |c: MessageChange| check(&c, 10).map_err(|e| e.code());
        use chat_protocol::v1::ErrorCode;
        assert_eq!(code(change(Edit, "p:bob:1", "")), Err(ErrorCode::BadRequest));
        assert_eq!(
            code(change(Edit, "p:bob:1", "01234567890")),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(change(Unspecified, "p:bob:1", "x")),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(change(React, "p:bob:1", &"x".repeat(33))),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(code(change(Recall, "nonsense", "")), Err(ErrorCode::NotFound));
        assert_eq!(code(change(React, "p:bob:1", "")), Ok(Home::Inbox("bob".into())));
    }

    #[test]
    fn a_reply_to_must_be_empty_or_a_well_formed_message_id() {
        use chat_protocol::v1::ErrorCode;
        let private = chat_state::keys::private_message_id(&"b".repeat(32), &"a".repeat(32), "c1");
        for good in ["", "p:bob:7", "g:rust-fans:12", private.as_str()] {
            assert!(check_reply_to(good).is_ok(), "{good}");
        }
        let long = format!("p:{}:1", "b".repeat(MAX_REPLY_TO_BYTES));
        for bad in ["hello", "p:bob", "p:bob:0", "x:bob:3", "g::4", long.as_str()] {
            let code = check_reply_to(bad).map_err(|e| e.code());
            assert_eq!(code, Err(ErrorCode::BadRequest), "{bad}");
        }
    }
}
