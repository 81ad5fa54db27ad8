//! This node's side of consensus: the Raft groups of the partitions it holds a replica
//! of, their logs and records in sled, and the thread that runs them
//! (`chat-consensus` decides, this module persists, applies and sends).
//!
//! Runs when `cluster.consensus` is set; `crate::served` then serves requests through
//! it: see ARCHITECTURE.md, "Consensus".

pub mod disk;
pub mod driver;
pub mod wal;

use chat_consensus::NodeId;

/// A node's Raft id: a stable hash of its name (64-bit FNV-1a, never 0), so every node
/// computes every other's id from the names membership and the links already use.
pub fn node_id(name: &str) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

#[cfg(test)]
mod tests;
