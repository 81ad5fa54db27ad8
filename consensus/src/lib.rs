//! Consensus for the chat cluster: one Raft group per partition (tikv's `raft` crate),
//! many groups per node driven together in rounds, with no I/O, clock or actor of its own.
//!
//! - [`multi`]: the multi-raft driver: propose, step, tick; rounds of writes to persist
//!   with one sync, messages to send, committed entries to apply.
//! - [`reconfig`]: the next safe step of moving a group's replicas.
//! - [`store`]: a group's log as raft-rs reads it, and the writes that persist it.
//! - [`logger`]: raft-rs logs through `slog`; this forwards it to `tracing`.
//!
//! The simulator in `tests/` runs many nodes built from this crate over a simulated
//! network and disk, and checks the safety invariants after every step.

pub mod logger;
pub mod multi;
pub mod reconfig;
pub mod store;

pub use multi::{Apply, Error, GroupId, MultiRaft, NodeId, Outgoing, RaftConfig, Round, decode_message};
pub use protobuf;
pub use raft::eraftpb;
pub use slog::Logger;
pub use store::{Applied, INITIAL_INDEX, LogWrite, PersistedLog, reconcile};
