//! Writes that an inbox or a group has submitted but that are not durable yet.
//!
//! Both actors assign a seq, submit the write, and answer once the committer
//! says it is durable. A resend of the same message (same dedupe key) that
//! arrives meanwhile must wait for that same write instead of being stored
//! again; this queue keeps those waiting replies.

use super::Reply;
use super::inbox::Appended;
use crate::error::{ChatError, ChatResult};
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

    /// Takes the write of `seq`, just completed. Completions come in order (the
    /// committer's, and each replica's acknowledgements, are in order), so it is the
    /// oldest; a search covers a write failed early (its stream broke).
    pub fn complete(&mut self, seq: u64) -> Option<InFlight<T>> {
        let at = if self.queue.front().is_some_and(|w| w.seq == seq) {
            0
        } else {
            self.queue.iter().position(|w| w.seq == seq)?
        };
        let w = self.queue.remove(at)?;
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
    done: fn(u64, Result<(), WriteFailed>) -> M,
) {
    let actor = actor.clone();
    storage.commit(
        writes,
        Box::new(move |r| {
            let outcome = r.map_err(|e| WriteFailed {
                // Durable here, though not (yet) on every replica.
                stored_here: matches!(e, crate::storage::StorageError::NotReplicated(_)),
                error: e.into(),
            });
            let _ = actor.cast(done(seq, outcome));
        }),
    );
}

/// Answers a resend of something already stored: `writes` (its records, again) are
/// written before the answer, so that the answer waits, like the first one, for every
/// replica to have them (the first write may have reached only this node).
pub fn confirm_again(storage: &Storage, writes: Writes, done: Appended, reply: Reply<ChatResult<Appended>>) {
    storage.commit(
        writes,
        Box::new(move |r| reply(r.map(|()| done).map_err(ChatError::from))),
    );
}

/// Why a write did not complete.
#[derive(Debug, Clone)]
pub struct WriteFailed {
    /// What to answer.
    pub error: ChatError,
    /// The write is durable on this node, only its replicas may lack it.
    pub stored_here: bool,
}
