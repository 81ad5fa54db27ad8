//! Requests to entities owned by another node, in and out of their wire form
//! (`chat.internal.Request` / `Response`).
//!
//! Going out, a [`Target`]'s reply closure becomes the handler of the response;
//! coming in, the request gets a reply closure that sends the response back to
//! the node that asked. Undecodable or unexpected input is an error, never a panic.

use super::group::GroupMsg;
use super::inbox::{AckKind, Appended, Draft, InboxMsg, OwnCopy, Page};
use super::registry::{AccountMsg, Target};
use super::{Reply, SessionRef, SessionTarget};
use crate::error::{ChatError, ChatResult};
use crate::remote::{OnResponse, Remote};
use chat_protocol::internal::{
    AccountOp, Empty, GroupOp, InboxOp, Request, account_op, group_op, inbox_op, request, response,
};
use chat_protocol::v1::{self, ConversationKind};
use std::sync::Arc;

/// Turns the response into the reply's value with `pick`, or into the peer's error.
fn expect<T: 'static>(
    reply: Reply<ChatResult<T>>,
    pick: impl FnOnce(response::Result) -> Option<T> + Send + 'static,
) -> Option<OnResponse> {
    Some(Box::new(move |r: ChatResult<response::Result>| {
        reply(r.and_then(|res| match res {
            response::Result::Error(e) => Err(ChatError::from_proto(e)),
            other => pick(other).ok_or_else(|| ChatError::Internal("unexpected response from a peer".into())),
        }))
    }))
}

fn done(r: response::Result) -> Option<()> {
    matches!(r, response::Result::Done(_)).then_some(())
}

fn names(r: response::Result) -> Option<Vec<String>> {
    match r {
        response::Result::Names(n) => Some(n.names),
        _ => None,
    }
}

fn appended(r: response::Result) -> Option<Appended> {
    match r {
        response::Result::Appended(a) => Some(Appended {
            message_id: a.message_id,
            seq: a.seq,
            timestamp_ms: a.timestamp_ms,
        }),
        _ => None,
    }
}

fn messages(r: response::Result) -> Option<(Vec<v1::Delivery>, u64)> {
    match r {
        response::Result::Messages(m) => Some((m.messages, m.next)),
        _ => None,
    }
}

/// The wire form of a target and the handler of its response (None: no response wanted).
/// None as a whole for messages that never leave a node.
pub fn to_request(target: Target, me: &str) -> Option<(request::Op, Option<OnResponse>)> {
    Some(match target {
        Target::Inbox(user, msg) => {
            let (op, on) = inbox_to_wire(msg, me)?;
            (request::Op::Inbox(InboxOp { user, op: Some(op) }), on)
        }
        Target::Group(group, msg) => {
            let (op, on) = group_to_wire(msg)?;
            (request::Op::Group(GroupOp { group, op: Some(op) }), on)
        }
        Target::Account(user, msg) => {
            let (op, on) = account_to_wire(msg);
            (request::Op::Account(AccountOp { user, op: Some(op) }), on)
        }
    })
}

fn inbox_to_wire(msg: InboxMsg, me: &str) -> Option<(inbox_op::Op, Option<OnResponse>)> {
    use inbox_op::Op;
    Some(match msg {
        InboxMsg::Append { origin, draft, reply } => {
            let (in_group, (group_seq, group_message_id, group_timestamp_ms)) = match draft.group {
                Some(g) => (true, g),
                None => (false, (0, String::new(), 0)),
            };
            let copy = draft.own_copy.clone();
            let op = Op::Append(inbox_op::Append {
                origin,
                from: draft.from,
                kind: draft.kind as u32,
                conversation: draft.conversation,
                text: draft.text,
                in_group,
                group_seq,
                group_message_id,
                group_timestamp_ms,
                receipt: draft.receipt,
                own_copy: copy.is_some(),
                copy_message_id: copy.as_ref().map(|c| c.message_id.clone()).unwrap_or_default(),
                copy_timestamp_ms: copy.as_ref().map_or(0, |c| c.timestamp_ms),
                copy_skip_session: copy.as_ref().map_or(0, |c| c.skip_session),
            });
            (op, expect(reply, appended))
        }
        InboxMsg::Attach { session, reply } => {
            let node = session.node().unwrap_or(me).to_owned();
            let op = Op::Attach(inbox_op::Attach {
                node,
                session: session.id,
            });
            let on = expect(reply, |r| match r {
                response::Result::Meta(m) => Some(m),
                _ => None,
            });
            (op, on)
        }
        InboxMsg::Detach { session } => (Op::Detach(session), None),
        InboxMsg::Fetch { after, limit, reply } => {
            let op = Op::Fetch(inbox_op::Fetch {
                after,
                limit: limit as u32,
            });
            let on = expect(reply, |r| match r {
                response::Result::Page(p) => Some(Page {
                    messages: p.messages,
                    last_seq: p.last_seq,
                    first_seq: p.first_seq,
                }),
                _ => None,
            });
            (op, on)
        }
        InboxMsg::History {
            peer,
            before,
            limit,
            reply,
        } => {
            let op = Op::History(inbox_op::History {
                peer,
                before,
                limit: limit as u32,
            });
            (op, expect(reply, messages))
        }
        InboxMsg::Ack { kind, up_to, reply } => {
            let op = Op::Ack(inbox_op::Ack {
                read: kind == AckKind::Read,
                up_to,
            });
            let on = expect(reply, |r| match r {
                response::Result::Cursors(c) => Some((c.delivered, c.read)),
                _ => None,
            });
            (op, on)
        }
        InboxMsg::Membership { group, joined, reply } => (
            Op::Membership(inbox_op::Membership { group, joined }),
            expect(reply, done),
        ),
        InboxMsg::Groups { reply } => (Op::Groups(Empty {}), expect(reply, names)),
        InboxMsg::GroupState {
            group,
            group_seq,
            reply,
        } => (
            Op::GroupState(inbox_op::GroupState { group, group_seq }),
            expect(reply, |r| match r {
                response::Result::Flags(f) => Some((f.delivered, f.read)),
                _ => None,
            }),
        ),
        InboxMsg::Stop
        | InboxMsg::Release { .. }
        | InboxMsg::ForgetNode(_)
        | InboxMsg::Sweep
        | InboxMsg::Persisted { .. }
        | InboxMsg::Confirmed { .. }
        | InboxMsg::IdleCheck => {
            return None;
        }
    })
}

fn group_to_wire(msg: GroupMsg) -> Option<(group_op::Op, Option<OnResponse>)> {
    use group_op::Op;
    Some(match msg {
        GroupMsg::Create { user, reply } => (Op::Create(user), expect(reply, done)),
        GroupMsg::Join { user, reply } => (Op::Join(user), expect(reply, done)),
        GroupMsg::Leave { user, reply } => (Op::Leave(user), expect(reply, done)),
        GroupMsg::Members { user, reply } => (Op::Members(user), expect(reply, names)),
        GroupMsg::Post {
            from,
            client_msg_id,
            text,
            reply,
        } => (
            Op::Post(group_op::Post {
                from,
                client_msg_id,
                text,
            }),
            expect(reply, appended),
        ),
        GroupMsg::History {
            user,
            before,
            limit,
            reply,
        } => (
            Op::History(group_op::History {
                user,
                before,
                limit: limit as u32,
            }),
            expect(reply, messages),
        ),
        GroupMsg::Receipts {
            user,
            group_seq,
            reply,
        } => (
            Op::Receipts(group_op::Receipts { user, group_seq }),
            expect(reply, |r| match r {
                response::Result::MemberReceipts(m) => Some(m.members),
                _ => None,
            }),
        ),
        GroupMsg::Wake => (Op::Wake(Empty {}), None),
        GroupMsg::Stop
        | GroupMsg::Persisted { .. }
        | GroupMsg::FanoutAck { .. }
        | GroupMsg::RetryFanout { .. }
        | GroupMsg::IdleCheck => {
            return None;
        }
    })
}

fn account_to_wire(msg: AccountMsg) -> (account_op::Op, Option<OnResponse>) {
    use account_op::Op;
    match msg {
        AccountMsg::Get { reply } => (
            Op::Get(Empty {}),
            expect(reply, |r| match r {
                response::Result::Account(a) => Some(Some(a)),
                response::Result::Missing(_) => Some(None),
                _ => None,
            }),
        ),
        AccountMsg::Create { record, reply } => (
            Op::Create(record),
            expect(reply, |r| match r {
                response::Result::Created(c) => Some(c),
                _ => None,
            }),
        ),
        AccountMsg::PutToken { token, record, reply } => (
            Op::PutToken(account_op::PutToken {
                token,
                record: Some(record),
            }),
            expect(reply, done),
        ),
        AccountMsg::GetToken { token, reply } => (
            Op::GetToken(token),
            expect(reply, |r| match r {
                response::Result::Token(t) => Some(Some(t)),
                response::Result::Missing(_) => Some(None),
                _ => None,
            }),
        ),
        AccountMsg::RevokeToken { token, reply } => (Op::RevokeToken(token), expect(reply, done)),
    }
}

/// Builds replies that answer a remote request.
struct Answer {
    remote: Arc<Remote>,
    origin: String,
    id: u64,
}

impl Answer {
    fn with<T: 'static>(&self, put: fn(T) -> response::Result) -> Reply<ChatResult<T>> {
        let (remote, origin, id) = (self.remote.clone(), self.origin.clone(), self.id);
        Box::new(move |r: ChatResult<T>| {
            let result = match r {
                Ok(v) => put(v),
                Err(e) => response::Result::Error(e.to_proto()),
            };
            remote.respond(&origin, id, result);
        })
    }
}

fn put_done(_: ()) -> response::Result {
    response::Result::Done(Empty {})
}

fn put_names(names: Vec<String>) -> response::Result {
    response::Result::Names(response::Names { names })
}

fn put_appended(a: Appended) -> response::Result {
    response::Result::Appended(response::Appended {
        message_id: a.message_id,
        seq: a.seq,
        timestamp_ms: a.timestamp_ms,
    })
}

fn put_messages((messages, next): (Vec<v1::Delivery>, u64)) -> response::Result {
    response::Result::Messages(response::Messages { messages, next })
}

fn bad(what: &str) -> String {
    format!("request without {what}")
}

/// The target a peer's request names, with replies that answer the peer.
/// Err for a request that cannot be decoded (the caller answers BAD_REQUEST).
pub fn from_request(req: Request, remote: &Arc<Remote>) -> Result<Target, String> {
    let answer = Answer {
        remote: remote.clone(),
        origin: req.origin,
        id: req.id,
    };
    match req.op.ok_or_else(|| bad("an op"))? {
        request::Op::Inbox(op) => {
            let msg = inbox_from_wire(op.op.ok_or_else(|| bad("an inbox op"))?, &answer, remote)?;
            Ok(Target::Inbox(op.user, msg))
        }
        request::Op::Group(op) => {
            let msg = group_from_wire(op.op.ok_or_else(|| bad("a group op"))?, &answer);
            Ok(Target::Group(op.group, msg))
        }
        request::Op::Account(op) => {
            let msg = account_from_wire(op.op.ok_or_else(|| bad("an account op"))?, &answer)?;
            Ok(Target::Account(op.user, msg))
        }
        // Served by consensus before routing (`Remote::serve_at_leader`).
        request::Op::Propose(_) | request::Op::Read(_) => {
            Err("consensus traffic where no consensus runs".into())
        }
    }
}

fn inbox_from_wire(op: inbox_op::Op, a: &Answer, remote: &Arc<Remote>) -> Result<InboxMsg, String> {
    use inbox_op::Op;
    Ok(match op {
        Op::Append(m) => {
            let kind = ConversationKind::try_from(m.kind as i32).map_err(|_| "bad conversation kind")?;
            InboxMsg::Append {
                origin: m.origin,
                draft: Draft {
                    from: m.from,
                    kind,
                    conversation: m.conversation,
                    text: m.text,
                    group: m
                        .in_group
                        .then_some((m.group_seq, m.group_message_id, m.group_timestamp_ms)),
                    receipt: m.receipt,
                    own_copy: m.own_copy.then_some(Box::new(OwnCopy {
                        message_id: m.copy_message_id,
                        timestamp_ms: m.copy_timestamp_ms,
                        skip_session: m.copy_skip_session,
                    })),
                },
                reply: a.with(put_appended),
            }
        }
        Op::Attach(at) => {
            let session = if at.node == remote.me() {
                let mailbox = remote.session(at.session).ok_or("the session has closed")?;
                SessionRef::local(at.session, mailbox)
            } else {
                SessionRef {
                    id: at.session,
                    target: SessionTarget::Remote {
                        node: at.node.into(),
                        remote: remote.clone(),
                    },
                }
            };
            InboxMsg::Attach {
                session,
                reply: a.with(response::Result::Meta),
            }
        }
        Op::Detach(session) => InboxMsg::Detach { session },
        Op::Fetch(f) => InboxMsg::Fetch {
            after: f.after,
            limit: f.limit as usize,
            reply: a.with(|p: Page| {
                response::Result::Page(response::Page {
                    messages: p.messages,
                    last_seq: p.last_seq,
                    first_seq: p.first_seq,
                })
            }),
        },
        Op::History(h) => InboxMsg::History {
            peer: h.peer,
            before: h.before,
            limit: h.limit as usize,
            reply: a.with(put_messages),
        },
        Op::Ack(k) => InboxMsg::Ack {
            kind: if k.read { AckKind::Read } else { AckKind::Delivered },
            up_to: k.up_to,
            reply: a.with(|(delivered, read)| {
                response::Result::Cursors(response::Cursors {
                    delivered,
                    read,
                    passed: Vec::new(),
                })
            }),
        },
        Op::Membership(m) => InboxMsg::Membership {
            group: m.group,
            joined: m.joined,
            reply: a.with(put_done),
        },
        Op::Groups(_) => InboxMsg::Groups {
            reply: a.with(put_names),
        },
        Op::GroupState(g) => InboxMsg::GroupState {
            group: g.group,
            group_seq: g.group_seq,
            reply: a.with(|(delivered, read)| response::Result::Flags(response::Flags { delivered, read })),
        },
    })
}

fn group_from_wire(op: group_op::Op, a: &Answer) -> GroupMsg {
    use group_op::Op;
    match op {
        Op::Create(user) => GroupMsg::Create {
            user,
            reply: a.with(put_done),
        },
        Op::Join(user) => GroupMsg::Join {
            user,
            reply: a.with(put_done),
        },
        Op::Leave(user) => GroupMsg::Leave {
            user,
            reply: a.with(put_done),
        },
        Op::Members(user) => GroupMsg::Members {
            user,
            reply: a.with(put_names),
        },
        Op::Post(p) => GroupMsg::Post {
            from: p.from,
            client_msg_id: p.client_msg_id,
            text: p.text,
            reply: a.with(put_appended),
        },
        Op::History(h) => GroupMsg::History {
            user: h.user,
            before: h.before,
            limit: h.limit as usize,
            reply: a.with(put_messages),
        },
        Op::Receipts(r) => GroupMsg::Receipts {
            user: r.user,
            group_seq: r.group_seq,
            reply: a.with(|members| response::Result::MemberReceipts(response::MemberReceipts { members })),
        },
        Op::Wake(_) => GroupMsg::Wake,
    }
}

fn account_from_wire(op: account_op::Op, a: &Answer) -> Result<AccountMsg, String> {
    use account_op::Op;
    Ok(match op {
        Op::Get(_) => AccountMsg::Get {
            reply: a.with(|r| match r {
                Some(acc) => response::Result::Account(acc),
                None => response::Result::Missing(Empty {}),
            }),
        },
        Op::Create(record) => AccountMsg::Create {
            record,
            reply: a.with(response::Result::Created),
        },
        Op::PutToken(t) => AccountMsg::PutToken {
            token: t.token,
            record: t.record.ok_or_else(|| bad("a token record"))?,
            reply: a.with(put_done),
        },
        Op::GetToken(token) => AccountMsg::GetToken {
            token,
            reply: a.with(|r| match r {
                Some(t) => response::Result::Token(t),
                None => response::Result::Missing(Empty {}),
            }),
        },
        Op::RevokeToken(token) => AccountMsg::RevokeToken {
            token,
            reply: a.with(put_done),
        },
    })
}

/// Answers an undecodable request with BAD_REQUEST.
pub fn refuse(remote: &Arc<Remote>, origin: &str, id: u64, why: String) {
    tracing::warn!(peer = origin, reason = %why, "bad request from a peer");
    remote.respond(
        origin,
        id,
        response::Result::Error(ChatError::BadRequest(why).to_proto()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterView;
    use chat_protocol::internal::{InboxOp, Request};
    use std::sync::Mutex;

    fn remote() -> Arc<Remote> {
        Remote::new("here", ClusterView::default())
    }

    #[test]
    fn requests_missing_parts_are_errors_not_panics() {
        let r = remote();
        let bare = Request {
            id: 1,
            origin: "there".into(),
            hops: 0,
            op: None,
        };
        assert!(from_request(bare, &r).is_err());
        let no_inbox_op = Request {
            id: 1,
            origin: "there".into(),
            hops: 0,
            op: Some(request::Op::Inbox(InboxOp {
                user: "bob".into(),
                op: None,
            })),
        };
        assert!(from_request(no_inbox_op, &r).is_err());
        let bad_kind = Request {
            id: 1,
            origin: "there".into(),
            hops: 0,
            op: Some(request::Op::Inbox(InboxOp {
                user: "bob".into(),
                op: Some(inbox_op::Op::Append(inbox_op::Append {
                    kind: 99,
                    ..Default::default()
                })),
            })),
        };
        assert!(from_request(bad_kind, &r).is_err());
        // A session of this node that has closed cannot be attached.
        let gone = Request {
            id: 1,
            origin: "there".into(),
            hops: 0,
            op: Some(request::Op::Inbox(InboxOp {
                user: "bob".into(),
                op: Some(inbox_op::Op::Attach(inbox_op::Attach {
                    node: "here".into(),
                    session: 42,
                })),
            })),
        };
        assert!(from_request(gone, &r).is_err());
        assert!(crate::remote::decode_envelope(&[0xff, 0xff, 0xff, 0x01, 0x02]).is_none());
    }

    /// Sends `target` through its wire form and back, answers it on the far side with
    /// `answer`, and returns what the original reply received.
    fn round_trip<T: Send + 'static>(
        make: impl FnOnce(Reply<ChatResult<T>>) -> Target,
        answer: impl FnOnce(Target),
    ) -> ChatResult<T> {
        let r = remote();
        let got = Arc::new(Mutex::new(None));
        let slot = got.clone();
        let target = make(Box::new(move |v| *slot.lock().unwrap() = Some(v)));
        let (op, on) = to_request(target, "here").expect("routable");
        r.wait_for_response(9, on.expect("expects an answer"));
        let req = Request {
            id: 9,
            origin: "here".into(),
            hops: 1,
            op: Some(op),
        };
        answer(from_request(req, &r).expect("decodes"));
        got.lock().unwrap().take().expect("answered")
    }

    #[test]
    fn an_append_crosses_both_ways_with_its_fields_and_its_answer() {
        let got = round_trip(
            |reply| {
                Target::Inbox(
                    "bob".into(),
                    InboxMsg::Append {
                        origin: b"origin".to_vec(),
                        draft: Draft {
                            from: "alice".into(),
                            kind: ConversationKind::Group,
                            conversation: "crew".into(),
                            text: "hello".into(),
                            group: Some((7, "g:crew:7".into(), 123)),
                            receipt: None,
                            own_copy: None,
                        },
                        reply,
                    },
                )
            },
            |target| match target {
                Target::Inbox(user, InboxMsg::Append { origin, draft, reply }) => {
                    assert_eq!((user.as_str(), origin.as_slice()), ("bob", &b"origin"[..]));
                    assert_eq!(draft.group, Some((7, "g:crew:7".into(), 123)));
                    assert_eq!((draft.from.as_str(), draft.text.as_str()), ("alice", "hello"));
                    assert_eq!(draft.kind, ConversationKind::Group);
                    reply(Ok(Appended {
                        message_id: "g:crew:7".into(),
                        seq: 5,
                        timestamp_ms: 123,
                    }));
                }
                _ => panic!("not an append"),
            },
        );
        assert_eq!(got.unwrap().seq, 5);
    }

    #[test]
    fn errors_and_missing_accounts_come_back_as_sent() {
        let err = round_trip(
            |reply| {
                Target::Group(
                    "crew".into(),
                    GroupMsg::Members {
                        user: "eve".into(),
                        reply,
                    },
                )
            },
            |target| target.fail(ChatError::NotAMember("crew".into())),
        )
        .unwrap_err();
        assert_eq!(err.code(), v1::ErrorCode::NotAMember);
        assert_eq!(err.to_string(), ChatError::NotAMember("crew".into()).to_string());
        let missing = round_trip(
            |reply| Target::Account("nobody".into(), AccountMsg::Get { reply }),
            |target| match target {
                Target::Account(_, AccountMsg::Get { reply }) => reply(Ok(None)),
                _ => panic!("not an account get"),
            },
        );
        assert_eq!(missing.unwrap(), None);
    }
}
