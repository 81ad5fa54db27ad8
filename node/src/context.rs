//! What every session shares (the node's context), and why a node stops.
//!
//! Kept apart from `server` (which starts and stops the node) so that what sessions
//! use does not depend on how the node is put together.

use crate::actors::registry::RegistryMsg;
use crate::auth::PasswordHashing;
use crate::config::Config;
use crate::error::{ChatError, ChatResult};
use crate::request::Router;
use crate::storage::{Storage, StorageError};
use chat_protocol::v1::NodeInfo;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Why a node could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database could not be opened.
    #[error("cannot open storage: {0}")]
    Storage(#[from] StorageError),
    /// The data folder could not be created.
    #[error("cannot create data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Another node runs on the data folder.
    #[error(
        "data folder {0} is in use by another chat-node: stop that node first, or give this one \
         its own data folder (--data-dir)"
    )]
    DataDirInUse(String),
    /// The data folder belongs to a node of another name: a node's name is its identity
    /// in the cluster (its Raft id), kept in the folder's `node.name`.
    #[error(
        "the data folder {dir} belongs to node {stored}, not {configured}: start it as {stored}, \
         or give {configured} a data folder of its own"
    )]
    NameChanged {
        dir: String,
        stored: String,
        configured: String,
    },
    /// The data folder holds accounts and messages of the old core, which the Raft core
    /// does not read: starting on it would serve an empty cluster.
    #[error(
        "the data folder {0} holds data of the old core (`cluster.consensus = false`, removed \
         in this version), which this version cannot read: give this node a new data folder \
         (the old one is left untouched)"
    )]
    OldCoreData(String),
    /// An actor could not start.
    #[error("cannot start {0}")]
    Spawn(String),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// The cluster listener could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// What every session shares.
pub struct NodeCtx {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// This node's name.
    pub node_name: String,
    /// The database.
    pub storage: Storage,
    /// Routes to inboxes, groups and accounts.
    pub router: Router,
    /// Who is online here, and the cluster's nodes.
    pub registry: ractor::ActorRef<RegistryMsg>,
    /// Connected sessions.
    pub sessions: Arc<AtomicUsize>,
    /// Session id allocator.
    pub next_session_id: AtomicU64,
    /// Cancelled when the node shuts down.
    pub shutdown: CancellationToken,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The other nodes, as membership sees them.
    pub view: crate::view::ClusterView,
    /// Links to the other nodes, and this node's session directory.
    pub remote: Arc<crate::remote::Remote>,
    /// The Raft core.
    pub consensus: crate::consensus::driver::Handle,
    /// Presence and typing notices.
    pub presence: Arc<crate::presence::Presence>,
    /// Files: uploads, downloads and their copies on other nodes.
    pub files: Arc<crate::files::Files>,
    pub(crate) hashing: PasswordHashing,
    /// A hash of no one's password: a login of a user that does not exist is verified
    /// against it, so that it takes as long as a wrong password of one that does.
    pub(crate) dummy_hash: String,
    /// Failed logins and registrations held back (see `crate::throttle`).
    pub(crate) guard: std::sync::Mutex<crate::throttle::Guard>,
    /// argon2 is memory-hard: bound how many hashes run at once.
    pub(crate) hash_slots: Semaphore,
}

impl NodeCtx {
    /// Hashes a password on the blocking pool.
    pub async fn hash_password(&self, password: String) -> ChatResult<String> {
        let _slot = self.hash_slots.acquire().await.map_err(|_| unavailable())?;
        let hashing = self.hashing.clone();
        tokio::task::spawn_blocking(move || hashing.hash(&password))
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))
    }

    /// Verifies a password on the blocking pool.
    pub async fn verify_password(&self, password: String, phc: String) -> ChatResult<()> {
        let _slot = self.hash_slots.acquire().await.map_err(|_| unavailable())?;
        self.metrics.password_checked();
        let hashing = self.hashing.clone();
        tokio::task::spawn_blocking(move || hashing.verify(&password, &phc))
            .await
            .map_err(|e| ChatError::Internal(e.to_string()))?
            .map_err(|_| ChatError::InvalidCredentials)
    }

    /// The cluster view, for LoginOk.
    pub async fn nodes(&self) -> Vec<NodeInfo> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply = crate::actors::reply(move |nodes| {
            let _ = tx.send(nodes);
        });
        if self.registry.cast(RegistryMsg::Nodes { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

impl NodeCtx {
    /// Whether a login of `user` from `addr` may be tried now.
    pub(crate) fn may_log_in(&self, user: &str, addr: std::net::IpAddr) -> ChatResult<()> {
        let guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .may_log_in(user, addr, crate::storage::now_ms())
            .map_err(|retry_after_ms| ChatError::TooManyAttempts { retry_after_ms })
    }

    /// Counts a login's outcome: a wrong credential holds further attempts back.
    pub(crate) fn login_outcome<T>(&self, user: &str, addr: std::net::IpAddr, outcome: &ChatResult<T>) {
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(_) => guard.login_succeeded(user),
            Err(ChatError::InvalidCredentials) => guard.login_failed(user, addr, crate::storage::now_ms()),
            Err(_) => {}
        }
    }

    /// Takes a registration from `addr`, if its allowance has one left.
    pub(crate) fn may_register(&self, addr: std::net::IpAddr) -> ChatResult<()> {
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .may_register(addr, crate::storage::now_ms())
            .map_err(|retry_after_ms| ChatError::TooManyAttempts { retry_after_ms })
    }
}

fn unavailable() -> ChatError {
    ChatError::Unavailable("node is shutting down".into())
}
