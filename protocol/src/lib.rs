//! The chat cluster's wire contract: generated protobuf types and the length-delimited frame codec.
//!
//! `v1` is the public client protocol (`chat.proto`); `internal` holds the
//! records nodes store and ship to each other (`cluster.proto`).

pub mod codec;
pub mod ids;

/// The public client protocol, generated from `protocol/chat.proto`.
pub mod v1 {
    #![allow(missing_docs, clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/chat.v1.rs"));
}

/// Internal records and envelopes, generated from `protocol/cluster.proto`.
pub mod internal {
    #![allow(missing_docs, clippy::large_enum_variant)]
    include!(concat!(env!("OUT_DIR"), "/chat.internal.rs"));
}

/// The protocol version this crate speaks (`ProtocolVersion::Current`).
pub const PROTOCOL_VERSION: u32 = v1::ProtocolVersion::Current as u32;

/// The default largest frame, in bytes, that either side accepts.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;
