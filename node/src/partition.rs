//! Which node owns what: the placement functions live in `chat-state` (the layer below
//! the node) so that the partition state machine and the simulator share them.

pub use chat_state::placement::*;
