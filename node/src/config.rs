//! Node configuration: a TOML file, overridden by command-line flags, validated into [`Config`].
//!
//! Every field has a default, so `chat-node` with no arguments runs a single
//! node on loopback with its data in `./chat-data`.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole node configuration, as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name, unique in the cluster: its identity (its Raft id). The data
    /// folder keeps the name it was first started with (`node.name`) and refuses
    /// another. Default: that kept name, else `node-<client port>`.
    pub name: Option<String>,
    /// Folder holding this node's sled database. Default: `./chat-data`.
    pub data_dir: PathBuf,
    /// The client-facing listener and per-connection limits.
    pub client: ClientConfig,
    /// The cluster listener and membership.
    pub cluster: ClusterConfig,
    /// Accounts and session tokens.
    pub auth: AuthConfig,
    /// Durability and retention.
    pub storage: StorageConfig,
    /// The operators' HTTP endpoint.
    pub admin: AdminConfig,
    /// Files (attachments).
    pub files: FilesConfig,
}

/// Files: uploads, quotas and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// The largest file a user may upload, in bytes. Default: 26214400 (25 MiB).
    pub max_file_bytes: u64,
    /// New files one user may upload within `retention_days` (the same bytes
    /// uploaded again, or bytes the cluster has, do not count), in bytes. 0: no limit.
    /// Default: 1073741824 (1 GiB).
    pub quota_bytes: u64,
    /// A file no message carried for this many days (fractions allowed) is removed;
    /// 0 keeps files. Default: 30 (as messages).
    pub retention_days: f64,
    /// How often, in seconds, the leader of each partition makes sure every replica
    /// holds the partition's files (fetching them for a replica that missed them, or
    /// joined later) and applies retention. Default: 600 (first 10 s after the start).
    pub check_every_secs: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 25 << 20,
            quota_bytes: 1 << 30,
            retention_days: 30.0,
            check_every_secs: 600,
        }
    }
}

/// The operators' HTTP endpoint (`/health`, `/metrics`, `/cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve it at all. Default: true.
    pub enabled: bool,
    /// Its address; keep it on loopback or a private network. Default: `127.0.0.1:7600`.
    pub listen: SocketAddr,
    /// The token the user administration endpoints (`/users/...`) and every `POST`
    /// require, as `Authorization: Bearer TOKEN`; the environment variable
    /// `CHAT_ADMIN_TOKEN` overrides it. Unset: user administration is refused, and the
    /// other `POST`s need no token (the endpoint stays on loopback). Default: unset.
    pub token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            token: None,
        }
    }
}

/// The client-facing side of a node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Address clients connect to. Port 0 picks a free port (it is printed).
    /// Default: `127.0.0.1:7400`.
    pub listen: SocketAddr,
    /// Largest frame accepted from a client, in bytes. Default: 65536.
    pub max_frame_bytes: usize,
    /// Longest message text, in bytes. Default: 16384.
    pub max_text_bytes: usize,
    /// A connection silent for this long is closed. Default: 60000 ms.
    pub idle_timeout_ms: u64,
    /// A connection that has not logged in after this long is closed. Default: 10000 ms.
    pub login_timeout_ms: u64,
    /// Frames queued for a client before it counts as a slow reader and is
    /// disconnected (it resyncs from its inbox on reconnect). Default: 1024.
    pub outbound_queue: usize,
    /// Requests one connection may have in flight; further frames wait
    /// unread, so a flood cannot grow the node's memory. Default: 256.
    pub max_in_flight: usize,
    /// Requests per second one connection may make on average (Ping is exempt); more
    /// get RATE_LIMITED. 0 means no limit. Default: 1000.
    pub max_requests_per_sec: u32,
    /// Requests one connection may make at once above that rate. Default: 2000.
    pub request_burst: u32,
    /// Store a copy of every private message in its sender's inbox too, so that the
    /// sender's other devices get it (and History shows both directions). It doubles
    /// the inbox writes of private messages. Default: true.
    pub copy_own_messages: bool,
    /// How long after sending its author may edit a message (ChangeMessage EDIT), in
    /// milliseconds; older ones get EDIT_WINDOW_CLOSED. Default: 86400000 (24 h).
    pub edit_window_ms: u64,
    /// Serve clients over TLS with this certificate and key. Default: none (plain TCP).
    pub tls: Option<TlsFiles>,
    /// Also accept clients over WebSocket here (binary messages, one protobuf message
    /// each). Default: none (off).
    pub websocket_listen: Option<SocketAddr>,
    /// Folder with the built web client (`index.html`, `app.js`; see `scripts/build-web.sh`),
    /// served at `/` on the WebSocket address. Default: none.
    pub web_dir: Option<PathBuf>,
}

/// A certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The cluster side of a node: its listener, seeds, cookie, and how partitions are
/// replicated (see README, "Run a cluster").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Address peers connect to. Default: `127.0.0.1:7500`.
    pub listen: SocketAddr,
    /// Peers to join at start (host:port of their cluster listeners).
    pub seeds: Vec<String>,
    /// The host or IP peers use to reach this node's cluster port (the port is the
    /// listen port). Default: the listen IP; required when that is 0.0.0.0 or [::].
    pub advertise_host: Option<String>,
    /// Shared secret every node of a cluster must have. Default: "chat-cluster-dev-cookie";
    /// set your own for anything but a local trial.
    pub cookie: String,
    /// On SIGTERM (when a peer is up), hand the leadership of every Raft group led here
    /// to a caught-up live voter before stopping, waiting up to 10 s; the node stays a
    /// member and a voter, and catches up when it starts again. False: stop at once;
    /// its groups elect new leaders after an election timeout. Default: true.
    pub handoff_on_shutdown: bool,
    /// Voters of every partition's Raft group, on different nodes (capped by the number
    /// of members): a write is acknowledged once a majority of them has it durable, so
    /// with 3 any one of them may fail. 1: a down node's partitions wait for it.
    /// Between 1 and 5. Default: 3.
    pub replicas: usize,
    /// Always true: every partition is a Raft group of `replicas` voters, with
    /// membership decided by the metadata group (see ARCHITECTURE.md, "Consensus").
    /// False asked for the old core, which is removed: refused at start.
    pub consensus: bool,
    /// The names of the nodes a new cluster starts with, the same
    /// on each of them. Empty: a node without seeds starts a cluster of its own.
    pub initial_members: Vec<String>,
    /// With no `initial_members`: a new node waits until it sees this
    /// many new nodes (itself included) all waiting with the same number, and they
    /// start the cluster together, their names as the first members; a node that sees
    /// a node already in a cluster joins it instead. 0: off.
    pub bootstrap_expect: usize,
}

/// Accounts and tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a session token from Login stays valid. Default: 30 days.
    pub token_ttl_secs: u64,
    /// argon2id memory cost in KiB. Default: 19456 (OWASP's recommendation).
    pub argon2_memory_kib: u32,
    /// argon2id passes. Default: 2.
    pub argon2_iterations: u32,
    /// Failed logins of one account (from anywhere) before each further one is held
    /// back, 5 s then doubling up to 5 minutes (answered RATE_LIMITED with a retry-after,
    /// without hashing); forgotten after 15 quiet minutes or a successful login. Counted
    /// per node. 0: no limit. Default: 5.
    pub max_failed_logins: u32,
    /// The same for failed logins from one client address, whatever the account.
    /// Default: 20.
    pub max_failed_logins_per_address: u32,
    /// Registrations from one client address per minute (and as many at once); more
    /// get RATE_LIMITED with a retry-after. Counted per node. 0: no limit. Default: 60.
    pub registrations_per_minute: u32,
}

/// Storage and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// sled's page cache, in MiB: the largest part of a busy node's memory. Default: 256.
    pub cache_mib: u64,
    /// Most messages kept per inbox; older ones are removed. Default: 100000.
    pub retention_max_messages: u64,
    /// Messages older than this are removed from inboxes, in days; 0 keeps
    /// them until the count limit. Default: 30.
    pub retention_max_age_days: u64,
    /// How often, in minutes, every inbox is checked against the retention limits
    /// (first 5 s after the start; an inbox also trims itself whenever a message
    /// arrives). Default: 60.
    pub retention_sweep_minutes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: None,
            data_dir: PathBuf::from("chat-data"),
            client: ClientConfig::default(),
            cluster: ClusterConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            admin: AdminConfig::default(),
            files: FilesConfig::default(),
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            max_frame_bytes: chat_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_text_bytes: 16 * 1024,
            idle_timeout_ms: 60_000,
            login_timeout_ms: 10_000,
            outbound_queue: 1024,
            max_in_flight: 256,
            max_requests_per_sec: 1000,
            request_burst: 2000,
            copy_own_messages: true,
            edit_window_ms: 24 * 3_600_000,
            tls: None,
            websocket_listen: None,
            web_dir: None,
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
            seeds: Vec::new(),
            advertise_host: None,
            cookie: "chat-cluster-dev-cookie".to_owned(),
            handoff_on_shutdown: true,
            replicas: 3,
            consensus: true,
            initial_members: Vec::new(),
            bootstrap_expect: 0,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 30 * 24 * 3600,
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            max_failed_logins: 5,
            max_failed_logins_per_address: 20,
            registrations_per_minute: 60,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            cache_mib: 256,
            retention_max_messages: 100_000,
            retention_max_age_days: 30,
            retention_sweep_minutes: 60,
        }
    }
}

impl Config {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks ranges and consistency; call after applying overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.client;
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid(what.to_owned()))
            }
        };
        check(
            (256..=16 * 1024 * 1024).contains(&c.max_frame_bytes),
            "client.max_frame_bytes must be between 256 and 16777216",
        )?;
        check(
            c.max_text_bytes >= 1 && c.max_text_bytes + 512 <= c.max_frame_bytes,
            "client.max_text_bytes must be at least 1 and leave 512 bytes of room below client.max_frame_bytes",
        )?;
        check(
            c.idle_timeout_ms >= 1000,
            "client.idle_timeout_ms must be at least 1000",
        )?;
        check(
            c.login_timeout_ms >= 100,
            "client.login_timeout_ms must be at least 100",
        )?;
        check(
            c.outbound_queue >= 16,
            "client.outbound_queue must be at least 16",
        )?;
        check(c.max_in_flight >= 1, "client.max_in_flight must be at least 1")?;
        check(
            (1..=5).contains(&self.cluster.replicas),
            "cluster.replicas must be between 1 and 5",
        )?;
        check(
            self.cluster.bootstrap_expect == 0 || self.cluster.initial_members.is_empty(),
            "set cluster.initial_members or cluster.bootstrap_expect, not both",
        )?;
        check(
            self.cluster.bootstrap_expect <= 64,
            "cluster.bootstrap_expect must be at most 64",
        )?;
        check(
            c.max_requests_per_sec == 0 || c.request_burst >= 1,
            "client.request_burst must be at least 1 when client.max_requests_per_sec is set",
        )?;
        check(
            !self.cluster.cookie.is_empty(),
            "cluster.cookie must not be empty",
        )?;
        check(
            !self.cluster.listen.ip().is_unspecified() || self.cluster.advertise_host.is_some(),
            "cluster.listen is a wildcard address: set cluster.advertise_host to an address peers can reach",
        )?;
        check(
            self.auth.token_ttl_secs >= 60,
            "auth.token_ttl_secs must be at least 60",
        )?;
        check(
            self.auth.argon2_memory_kib >= 8 && self.auth.argon2_iterations >= 1,
            "auth.argon2_memory_kib must be at least 8 and auth.argon2_iterations at least 1",
        )?;
        check(
            self.cluster.consensus,
            "cluster.consensus = false asked for the old core, which this version no longer has: \
             remove the line (the Raft core is the only core)",
        )?;
        check(
            self.files.max_file_bytes >= 1,
            "files.max_file_bytes must be at least 1",
        )?;
        check(
            self.files.retention_days.is_finite() && self.files.retention_days >= 0.0,
            "files.retention_days must be 0 (keep files) or more",
        )?;
        check(
            self.storage.retention_max_messages >= 1,
            "storage.retention_max_messages must be at least 1",
        )?;
        if let Some(name) = &self.name {
            check(
                crate::auth::valid_name(name),
                "name must be 1 to 32 characters of [A-Za-z0-9_.-]",
            )?;
        }
        Ok(())
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.client.idle_timeout_ms)
    }

    /// The host:port peers dial to reach this node's cluster listener.
    pub fn cluster_advertised(&self) -> String {
        let port = self.cluster.listen.port();
        match &self.cluster.advertise_host {
            Some(host) => format!("{host}:{port}"),
            None => self.cluster.listen.to_string(),
        }
    }

    /// The login timeout as a duration.
    pub fn login_timeout(&self) -> Duration {
        Duration::from_millis(self.client.login_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_embedded_defaults() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg.client.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(cfg.data_dir, PathBuf::from("chat-data"));
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Config::from_toml("[client]\nlisten_port = 3\n").unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused_with_the_field_named() {
        let mut cfg = Config::default();
        cfg.client.max_frame_bytes = 10;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("client.max_frame_bytes"), "{err}");
    }

    #[test]
    fn first_members_are_named_or_expected_not_both() {
        let toml = "[cluster]\nconsensus = true\ninitial_members = [\"a\"]\nbootstrap_expect = 3\n";
        let err = Config::from_toml(toml)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap_expect"), "{err}");
        let cfg = Config::from_toml("[cluster]\nconsensus = true\nbootstrap_expect = 3\n").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.cluster.bootstrap_expect, 3);
    }

    #[test]
    fn asking_for_the_removed_old_core_is_refused_with_what_to_do() {
        let cfg = Config::from_toml("[cluster]\nconsensus = false\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("cluster.consensus") && err.contains("remove the line"),
            "{err}"
        );
        let old = Config::from_toml("[storage]\ncommit_max_batch = 4096\n").unwrap_err();
        assert!(old.to_string().contains("commit_max_batch"), "{old}");
    }

    #[test]
    fn a_wildcard_cluster_address_needs_an_advertised_host() {
        let mut cfg = Config::from_toml("[cluster]\nlisten = \"0.0.0.0:7500\"\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("advertise_host"), "{err}");
        cfg.cluster.advertise_host = Some("node1.internal".into());
        cfg.validate().unwrap();
        assert_eq!(cfg.cluster_advertised(), "node1.internal:7500");
    }

    #[test]
    fn shipped_example_configs_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let cfg = Config::from_file(&path).unwrap();
                cfg.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert!(seen >= 1, "no example config found");
    }
}
