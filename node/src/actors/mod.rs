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
    /// Unique within this node's lifetime.
    pub id: u64,
    /// Where pushes go.
    pub mailbox: session::Mailbox,
}

impl SessionRef {
    /// Pushes an encoded inbox delivery with its seq (the session drops duplicates).
    /// False if the session is gone.
    pub fn deliver(&self, seq: u64, frame: Bytes, since: tokio::time::Instant) -> bool {
        self.mailbox
            .send(session::SessionMsg::Deliver { seq, frame, since })
            .is_ok()
    }

    /// Pushes any other encoded frame (receipts). False if the session is gone.
    pub fn push(&self, frame: Bytes) -> bool {
        self.mailbox.send(session::SessionMsg::Push(frame)).is_ok()
    }
}
