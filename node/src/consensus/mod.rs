//! This node's side of consensus: the Raft groups of the partitions it holds a replica
//! of, their logs and records in sled, and the thread that runs them
//! (`chat-consensus` decides, this module persists, applies and sends).
//!
//! Not wired into the request path yet: see ARCHITECTURE.md, "Consensus".

pub mod disk;
pub mod driver;

#[cfg(test)]
mod tests;
