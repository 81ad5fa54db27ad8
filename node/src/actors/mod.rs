//! The node's actors: one session per connection, one inbox per user, one group per group,
//! and one registry per node that routes between them.
//!
//! Only the registry may ever become remotable; sessions, inboxes and groups
//! are local-only so that peers never mirror them (see ARCHITECTURE.md).
//! Sessions run in plain tokio tasks with a mailbox, the cheapest actor shape.

pub mod group;
pub mod inbox;
pub mod pending;
pub mod registry;
pub mod session;
pub mod wire;

use bytes::Bytes;

/// A continuation run with a request's outcome. Replies are closures rather than
/// ports so that a caller can route the answer wherever it must go (a session's
/// outbound queue, a group's fan-out tracker) without a task per request.
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// Wraps a closure as a [`Reply`].
pub fn reply<T>(f: impl FnOnce(T) + Send + 'static) -> Reply<T> {
    Box::new(f)
}

/// The identity of one connected session, as inboxes see it.
#[derive(Clone)]
pub struct SessionRef {
    /// Unique in the cluster (each node starts its ids at a random point).
    pub id: u64,
    /// Where pushes go.
    pub target: SessionTarget,
}

/// Where a session lives.
#[derive(Clone)]
pub enum SessionTarget {
    /// On this node.
    Local(session::Mailbox),
    /// On another node: pushes cross the link to it.
    Remote {
        /// The node.
        node: std::sync::Arc<str>,
        /// This node's links.
        remote: std::sync::Arc<crate::remote::Remote>,
    },
}

impl SessionRef {
    /// A session of this node.
    pub fn local(id: u64, mailbox: session::Mailbox) -> Self {
        Self {
            id,
            target: SessionTarget::Local(mailbox),
        }
    }

    /// The node of a remote session (None: this node).
    pub fn node(&self) -> Option<&str> {
        match &self.target {
            SessionTarget::Local(_) => None,
            SessionTarget::Remote { node, .. } => Some(node),
        }
    }

    /// Pushes an encoded inbox delivery with its seq (the session drops duplicates); an
    /// empty frame only moves the session past the seq (an own copy, not pushed to the
    /// session that sent it). False if the session is gone.
    /// `user` is whose inbox it is from (a session logged in as someone else drops it).
    pub fn deliver(
        &self,
        user: &std::sync::Arc<str>,
        seq: u64,
        frame: Bytes,
        since: tokio::time::Instant,
    ) -> bool {
        match &self.target {
            SessionTarget::Local(mailbox) => mailbox
                .send(session::SessionMsg::Deliver {
                    user: user.clone(),
                    seq,
                    frame,
                    since,
                })
                .is_ok(),
            SessionTarget::Remote { node, remote } => self.push_remote(remote, node, user, seq, frame),
        }
    }

    /// Pushes any other encoded frame (receipts). False if the session is gone.
    pub fn push(&self, frame: Bytes) -> bool {
        match &self.target {
            SessionTarget::Local(mailbox) => mailbox.send(session::SessionMsg::Push(frame)).is_ok(),
            SessionTarget::Remote { node, remote } => self.push_remote(remote, node, "", 0, frame),
        }
    }

    fn push_remote(
        &self,
        remote: &std::sync::Arc<crate::remote::Remote>,
        node: &str,
        user: &str,
        seq: u64,
        frame: Bytes,
    ) -> bool {
        use chat_protocol::internal::SessionPush;
        let push = SessionPush {
            session: self.id,
            seq,
            frame: frame.to_vec(),
            user: user.to_owned(),
        };
        remote.push(node, push)
    }
}
