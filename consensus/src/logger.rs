//! raft-rs logs through `slog`; this drain hands its records to `tracing`, so a node has
//! one log with one filter (`RUST_LOG=chat_consensus=debug`).

use slog::{Drain, Level, OwnedKVList, Record};

/// A `slog` drain that forwards to `tracing` (raft's chatter at debug and trace).
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, _values: &OwnedKVList) -> Result<(), slog::Never> {
        let message = record.msg();
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: "chat_consensus::raft", "{message}"),
            Level::Warning => tracing::warn!(target: "chat_consensus::raft", "{message}"),
            Level::Info => tracing::debug!(target: "chat_consensus::raft", "{message}"),
            // raft-rs logs every message it sends at debug.
            Level::Debug | Level::Trace => tracing::trace!(target: "chat_consensus::raft", "{message}"),
        }
        Ok(())
    }
}

/// A logger for [`crate::MultiRaft`] that writes through `tracing`.
pub fn tracing_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// A logger that drops everything (the simulator runs thousands of schedules).
pub fn discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}
