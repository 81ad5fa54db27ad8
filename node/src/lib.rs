//! A clustered chat node: sessions as actors, inboxes and groups in partitions replicated by Raft, durable in sled.
//!
//! The binary (`main.rs`) parses flags and binds; [`server::run`] does the rest.

pub mod actors;
pub mod admin;
pub mod admin_users;
pub mod auth;
pub mod changes;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod context;
pub mod devices;
pub mod error;
pub mod files;
pub mod files_http;
pub mod metrics;
pub mod partition;
pub mod presence;
pub mod remote;
pub mod request;
pub mod served;
pub mod server;
pub mod storage;
pub mod throttle;
pub mod tls;
pub mod view;
pub mod websocket;

pub use config::Config;
pub use server::{Listeners, NodeError, run};
