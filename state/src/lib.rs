//! The chat's partition state machine: where entities live, how a partition's records
//! are laid out, and what each committed command does to them. Pure: no I/O beyond the
//! [`store::Store`] it is handed, no clock, no actors. The node applies a partition's
//! Raft log through [`machine::apply`]; the simulator applies the same code.
//!
//! - [`placement`]: entity → partition (a stable hash), partition → nodes (rendezvous).
//! - [`keys`]: the partition-prefixed key layout.
//! - [`store`]: the key-value interface the machine reads and writes.
//! - [`machine`]: commands in, records and outcomes out.
//! - [`membership`]: the metadata group's members, and placement's target voters.
//! - [`devices`]: a user's tokens as devices: ids, listing, revoking one, last logins.
//! - [`contacts`]: who asked whom, and who agreed (the pair's record decides).
//! - [`governance`]: who may do what in a group (roles, invitations, bans).
//! - [`changes`]: edits, recalls and reactions of sent messages: who may, and what
//!   they leave of a message.
//! - [`groups`]: what group commands do, each change an event in the group's order.
//! - [`fanout`]: which posts of a group still have to reach which partitions.
//! - [`query`]: what a leader answers reads with.
//! - [`admin`]: what operators ask: listings of accounts and groups, group deletion.
//! - [`snapshot`]: a partition's records as the bytes of a Raft snapshot.

pub mod admin;
pub mod blobs;
pub mod changes;
pub mod contacts;
pub mod devices;
pub mod fanout;
pub mod governance;
pub mod groups;
pub mod keys;
pub mod machine;
pub mod membership;
pub mod placement;
pub mod query;
pub mod snapshot;
pub mod store;

pub use machine::apply;
pub use store::{MemStore, Store, StoreError};
