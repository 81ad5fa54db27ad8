//! The node's actors: one session per connection and one registry per node (who is
//! online here). Inboxes and groups are served by the Raft core (`crate::served`).
//!
//! Sessions run in plain tokio tasks with a mailbox, the cheapest actor shape; they are
//! local-only, so that peers never mirror them (see ARCHITECTURE.md).

pub mod registry;
pub mod session;

/// A continuation run with a request's outcome. Replies are closures rather than
/// ports so that a caller can route the answer wherever it must go (a session's
/// outbound queue, a group's fan-out tracker) without a task per request.
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// Wraps a closure as a [`Reply`].
pub fn reply<T>(f: impl FnOnce(T) + Send + 'static) -> Reply<T> {
    Box::new(f)
}
