//! Writes that an inbox or a group has submitted but that are not durable yet.
//!
//! Both actors assign a seq, submit the write, and answer once the committer
//! says it is durable. A resend of the same message (same dedupe key) that
//! arrives meanwhile must wait for that same write instead of being stored
//! again; this queue keeps those waiting replies.

use super::Reply;
use super::inbox::Appended;
use crate::error::ChatResult;
use crate::storage::{Storage, Writes};
use ractor::ActorRef;
use std::collections::{HashMap, VecDeque};

/// One write in flight.
pub struct InFlight<T> {
    /// Its seq.
    pub seq: u64,
    /// Its dedupe key.
    pub origin: Vec<u8>,
    /// What the owner needs once it is durable.
    pub payload: T,
    /// Everyone waiting for its outcome (the sender and any resends).
    pub replies: Vec<Reply<ChatResult<Appended>>>,
}

/// Writes in flight, in seq order (the committer completes them in that order).
pub struct PendingWrites<T> {
    queue: VecDeque<InFlight<T>>,
    by_origin: HashMap<Vec<u8>, u64>,
}

impl<T> Default for PendingWrites<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            by_origin: HashMap::new(),
        }
    }
}

impl<T> PendingWrites<T> {
    /// True if nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// If a write with this dedupe key is in flight, adds `reply` to its waiters and
    /// returns None; otherwise hands `reply` back.
    pub fn wait_for(
        &mut self,
        origin: &[u8],
        reply: Reply<ChatResult<Appended>>,
    ) -> Option<Reply<ChatResult<Appended>>> {
        let Some(seq) = self.by_origin.get(origin) else {
            return Some(reply);
        };
        match self.queue.iter_mut().find(|w| w.seq == *seq) {
            Some(w) => {
                w.replies.push(reply);
                None
            }
            None => Some(reply),
        }
    }

    /// Records a write just submitted.
    pub fn push(&mut self, seq: u64, origin: Vec<u8>, payload: T, reply: Reply<ChatResult<Appended>>) {
        self.by_origin.insert(origin.clone(), seq);
        self.queue.push_back(InFlight {
            seq,
            origin,
            payload,
            replies: vec![reply],
        });
    }

    /// Takes the oldest write, which the committer has just completed.
    pub fn complete(&mut self, seq: u64) -> Option<InFlight<T>> {
        let w = self.queue.pop_front()?;
        debug_assert_eq!(w.seq, seq, "the committer completes in order");
        self.by_origin.remove(&w.origin);
        Some(w)
    }
}

/// Submits `writes` and casts `done(seq, outcome)` to `actor` once they are durable.
pub fn commit_then<M: ractor::Message>(
    storage: &Storage,
    writes: Writes,
    actor: &ActorRef<M>,
    seq: u64,
    done: fn(u64, Result<(), String>) -> M,
) {
    let actor = actor.clone();
    storage.commit(
        writes,
        Box::new(move |r| {
            let _ = actor.cast(done(seq, r.map_err(|e| e.to_string())));
        }),
    );
}
