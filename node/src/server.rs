//! Starting, running and stopping a node: the accept loop and the shutdown order (stop
//! accepting, close sessions, hand leaderships over, stop the Raft core, sync sled).

pub use crate::context::{NodeCtx, NodeError};

use crate::actors::registry::{Registry, RegistryArgs};
use crate::auth::PasswordHashing;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::ChatError;
use crate::request::Router;
use crate::storage::Storage;
use ractor::Actor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How long a starting node waits for its Raft groups to know a leader before serving.
const LEADERS_AT_START: Duration = Duration::from_secs(5);
/// How long a stopping node waits for its Raft groups to be led elsewhere.
const DRAIN_LEADERSHIP: Duration = Duration::from_secs(10);
/// How long shutdown waits for sessions to say goodbye.
const DRAIN_SESSIONS: Duration = Duration::from_secs(5);

/// Takes the data folder for this process (creating it if need be): a lock on the file
/// `node.lock` in it, held while the returned file is open. Another node on the same
/// folder gets [`NodeError::DataDirInUse`]; call it before announcing anything.
pub fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, NodeError> {
    let io = |source| NodeError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("node.lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(NodeError::DataDirInUse(dir.display().to_string())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// This node's name: the one its data folder was first started with (kept in
/// `node.name` there), else `configured`, else [`default_name`] of the client address.
/// A name is the node's identity in the cluster, so a folder never changes hands:
/// a configured name other than the kept one is [`NodeError::NameChanged`].
pub fn node_name(
    dir: &std::path::Path,
    configured: Option<&str>,
    addr: SocketAddr,
) -> Result<String, NodeError> {
    let path = dir.join("node.name");
    let io = |source| NodeError::DataDir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(stored) => {
            let stored = stored.trim().to_owned();
            match configured {
                Some(configured) if configured != stored => Err(NodeError::NameChanged {
                    dir: dir.display().to_string(),
                    stored,
                    configured: configured.to_owned(),
                }),
                _ => Ok(stored),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let name = configured.map_or_else(|| default_name(addr), str::to_owned);
            std::fs::create_dir_all(dir).map_err(io)?;
            let tmp = dir.join("node.name.tmp");
            let mut file = std::fs::File::create(&tmp).map_err(io)?;
            std::io::Write::write_all(&mut file, format!("{name}\n").as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&tmp, &path).map_err(io)?;
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            Ok(name)
        }
        Err(e) => Err(io(e)),
    }
}

/// The default node name for a client address.
pub fn default_name(addr: SocketAddr) -> String {
    format!("node-{}", addr.port())
}

/// The sockets a node serves on, bound by the caller (so tests can use port 0).
pub struct Listeners {
    /// Clients over TCP (or TLS).
    pub client: TcpListener,
    /// The admin HTTP endpoint.
    pub admin: Option<TcpListener>,
    /// Clients over WebSocket.
    pub websocket: Option<TcpListener>,
    /// Told the address peers dial once the cluster listener is up: ractor_cluster binds
    /// that listener itself, so with port 0 its real port is known only then.
    pub on_cluster_listening: Option<OnClusterListening>,
}

/// Where WebSocket clients reach this node (told to clients at login, so that a web
/// client can reconnect to another node), or empty without a WebSocket listener.
fn websocket_url(listener: Option<&TcpListener>, tls: bool) -> std::io::Result<String> {
    let Some(listener) = listener else {
        return Ok(String::new());
    };
    let scheme = if tls { "wss" } else { "ws" };
    Ok(format!("{scheme}://{}/ws", listener.local_addr()?))
}

/// Called with the cluster address (`host:port`) peers dial.
pub type OnClusterListening = Box<dyn FnOnce(&str) + Send>;

/// Runs a node on its listeners until `shutdown` is cancelled, then stops in order.
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> Result<(), NodeError> {
    let Listeners {
        client: listener,
        admin,
        websocket,
        on_cluster_listening,
    } = listeners;
    config.validate()?;
    let tls = config.client.tls.as_ref().map(crate::tls::acceptor).transpose()?;
    let config = Arc::new(config);
    let client_addr = listener.local_addr()?;
    let ws_url = websocket_url(websocket.as_ref(), tls.is_some())?;
    let node_name = node_name(&config.data_dir, config.name.as_deref(), client_addr)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let storage = Storage::open(&config.data_dir, config.storage.cache_mib << 20)?;
    let sessions = Arc::new(AtomicUsize::new(0));
    let view = crate::view::ClusterView::default();
    let remote = crate::remote::Remote::new(&node_name, view.clone());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let max_age = match config.storage.retention_max_age_days {
        0 => None,
        days => Some(Duration::from_secs(days * 24 * 3600)),
    };
    let (registry, registry_handle) = Actor::spawn(
        None,
        Registry,
        RegistryArgs {
            node: node_name.clone(),
            client_addr: client_addr.to_string(),
            ws_url: ws_url.clone(),
            sessions: sessions.clone(),
            view: view.clone(),
        },
    )
    .await
    .map_err(|e| NodeError::Spawn(format!("registry: {e}")))?;
    let cluster = Cluster::start(
        &node_name,
        config.cluster.listen,
        &config.cluster_advertised(),
        &config.cluster.cookie,
        &client_addr.to_string(),
        &ws_url,
        config.cluster.seeds.clone(),
        sessions.clone(),
        view,
        registry.clone(),
        remote.clone(),
    )
    .await?;
    if let Some(announce) = on_cluster_listening {
        announce(&cluster.card.cluster_addr);
    }
    let (consensus, consensus_thread, records) =
        start_consensus(&config, &node_name, &storage, &remote, &cluster.view)?;
    let waits = config.cluster.bootstrap_expect > 0 && consensus.started_fresh();
    if !waits && !first_members(&config, &node_name).contains(&node_name) {
        let addr = cluster.card.cluster_addr.clone();
        tokio::spawn(join_cluster(
            remote.clone(),
            node_name.clone(),
            addr,
            shutdown.clone(),
        ));
    }
    tokio::spawn(consensus_card(
        ConsensusCard {
            view: cluster.view.clone(),
            handle: consensus.clone(),
            remote: remote.clone(),
            name: node_name.clone(),
            addr: cluster.card.cluster_addr.clone(),
            expect: if waits { config.cluster.bootstrap_expect } else { 0 },
        },
        shutdown.clone(),
    ));
    if consensus.started_with_groups() {
        wait_for_leaders(&consensus, &node_name).await;
    }
    let hashing = PasswordHashing::new(config.auth.argon2_memory_kib, config.auth.argon2_iterations)
        .map_err(|e| NodeError::Config(crate::config::ConfigError::Invalid(e)))?;
    let dummy_hash = hashing.hash(&crate::auth::new_token());
    let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Requests go to partition leaders through the Raft core.
    let files = crate::files::Files::start(
        &config,
        &node_name,
        remote.clone(),
        consensus.clone(),
        cluster.view.clone(),
        records.clone(),
    )?;
    let router = Router::new(crate::served::Served::start(
        remote.clone(),
        consensus.clone(),
        records,
        config.storage.retention_max_messages,
        max_age,
        Duration::from_secs(config.storage.retention_sweep_minutes.max(1) * 60),
    ));
    let presence = crate::presence::Presence::start(router.clone(), remote.clone());
    let ctx = Arc::new(NodeCtx {
        config: config.clone(),
        node_name: node_name.clone(),
        storage: storage.clone(),
        router,
        registry: registry.clone(),
        sessions: sessions.clone(),
        // Session ids are unique in the cluster: remote inboxes know sessions by id.
        next_session_id: AtomicU64::new(crate::auth::random_u64() >> 1),
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
        view: cluster.view.clone(),
        remote,
        consensus: consensus.clone(),
        presence,
        files,
        dummy_hash,
        guard: std::sync::Mutex::new(crate::throttle::Guard::new(
            config.auth.max_failed_logins,
            config.auth.max_failed_logins_per_address,
            config.auth.registrations_per_minute,
        )),
        hashing,
        hash_slots: Semaphore::new(parallelism),
    });
    let admin = admin.map(|l| tokio::spawn(crate::admin::serve(l, ctx.clone(), shutdown.clone())));
    let websocket = websocket.map(|l| tokio::spawn(crate::websocket::serve(l, tls.clone(), ctx.clone())));
    tracing::info!(node = %node_name, addr = %client_addr, data = %config.data_dir.display(), "node started");

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match &tls {
                        None => {
                            tokio::spawn(crate::actors::session::run(stream, peer, ctx.clone()));
                        }
                        Some(acceptor) => {
                            tokio::spawn(crate::tls::serve(acceptor.clone(), stream, peer, ctx.clone()));
                        }
                    }
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }

    tracing::info!(node = %node_name, "shutting down: no longer accepting");
    drop(listener);
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Some(websocket) = websocket {
        let _ = websocket.await;
    }
    let deadline = Instant::now() + DRAIN_SESSIONS;
    while sessions.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(node = %node_name, left = sessions.load(Ordering::Relaxed), "sessions closed");
    let peers_up = cluster.view.peers().iter().any(|p| p.up);
    if config.cluster.handoff_on_shutdown && peers_up {
        drain_leadership(&consensus, &node_name).await;
    }
    consensus.stop();
    let _ = tokio::task::spawn_blocking(move || consensus_thread.join()).await;
    storage.sync_to_disk()?;
    registry.stop(None);
    let _ = registry_handle.await;
    tracing::info!(node = %node_name, "storage flushed; leaving the cluster");
    cluster.stop();
    tracing::info!(node = %node_name, "stopped");
    Ok(())
}

/// Waits (at most [`LEADERS_AT_START`]) until every group this node has a replica of
/// knows a leader, so that the first clients are not told `UNAVAILABLE` while the
/// groups elect one (a one-node cluster's groups lead at once). Past the limit (the
/// other members are not up yet), clients are served anyway and retry.
async fn wait_for_leaders(handle: &crate::consensus::driver::Handle, node_name: &str) {
    let deadline = Instant::now() + LEADERS_AT_START;
    loop {
        let status = handle.status();
        if status.groups > 0 && status.leaderless == 0 {
            return;
        }
        if Instant::now() >= deadline {
            tracing::info!(node = %node_name, leaderless = status.leaderless, "serving clients before every partition has a leader");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Hands the leadership of every group led here to other voters and waits (at most
/// [`DRAIN_LEADERSHIP`]) until none is led here: the partitions keep being served while
/// this node stops, instead of waiting out an election timeout. The node stays a member.
async fn drain_leadership(handle: &crate::consensus::driver::Handle, node_name: &str) {
    handle.drain();
    let deadline = Instant::now() + DRAIN_LEADERSHIP;
    loop {
        let movable = handle.status().movable;
        if movable == 0 {
            tracing::info!(node = %node_name, "leadership handed over");
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(node = %node_name, movable, "still leading some groups; they elect a new leader after this node stops");
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts the Raft core (see `cluster.consensus`): its log and records in
/// this node's database, synced with it; its messages over the links to the peers.
fn start_consensus(
    config: &Config,
    node_name: &str,
    storage: &Storage,
    remote: &Arc<crate::remote::Remote>,
    view: &crate::view::ClusterView,
) -> Result<Consensus, NodeError> {
    use crate::consensus::{disk::Disk, driver, node_id};
    let first = first_members(config, node_name);
    let bootstrap: Vec<(u64, String)> = first.iter().map(|name| (node_id(name), name.clone())).collect();
    let disk = Disk::open(&storage.database()).map_err(|e| NodeError::Spawn(format!("consensus: {e}")))?;
    let log = crate::consensus::wal::Wal::open(&config.data_dir.join("raft"), RAFT_LOG_REWRITE_BYTES)
        .map_err(|e| NodeError::Spawn(format!("consensus: {e}")))?;
    let raft_state = log.1.as_ref().is_some_and(|l| !l.is_empty()) || !disk.is_empty();
    if !raft_state && storage.holds_old_core_data() {
        return Err(NodeError::OldCoreData(config.data_dir.display().to_string()));
    }
    let links = RaftLinks {
        remote: remote.clone(),
        view: view.clone(),
        names: first,
    };
    let settings = driver::Settings {
        id: node_id(node_name),
        replicas: config.cluster.replicas,
        timing: driver::Timing::default(),
        bootstrap,
    };
    let logger = chat_consensus::logger::tracing_logger();
    let records = disk.clone();
    let served_records = disk.clone();
    let (handle, thread) = driver::start(settings, disk, log, StorageSync(storage.clone()), links, logger)
        .map_err(|e| NodeError::Spawn(format!("consensus: {e}")))?;
    remote.set_consensus(handle.clone());
    remote.set_reader(Arc::new(move |partition, query| {
        let mut nothing_pending = crate::consensus::disk::Pending::new();
        let store = records.overlay(&mut nothing_pending);
        chat_state::query::evaluate(partition, query, &store).map_err(|e| ChatError::Internal(e.to_string()))
    }));
    Ok((handle, thread, served_records))
}

/// The Raft core's handle, its thread, and its records.
type Consensus = (
    crate::consensus::driver::Handle,
    std::thread::JoinHandle<()>,
    crate::consensus::disk::Disk,
);

/// The members a new cluster starts with: `cluster.initial_members`, or a node without
/// seeds alone.
fn first_members(config: &Config, node_name: &str) -> Vec<String> {
    let mut first = config.cluster.initial_members.clone();
    if first.is_empty() && config.cluster.seeds.is_empty() {
        first.push(node_name.to_owned());
    }
    first
}

/// What [`consensus_card`] needs.
struct ConsensusCard {
    view: crate::view::ClusterView,
    handle: crate::consensus::driver::Handle,
    remote: Arc<crate::remote::Remote>,
    name: String,
    addr: String,
    /// `cluster.bootstrap_expect` for a new node waiting to start a cluster, else 0.
    expect: usize,
}

/// Keeps this node's card saying whether it is in a cluster, and, for a new node with
/// `cluster.bootstrap_expect`, starts the cluster once that many new nodes (itself
/// included) wait with the same number: their names, sorted, are the first members,
/// the same list on each of them. A node that sees one already in a cluster joins it
/// instead. More new nodes than expected waiting at once is a mistake of the
/// operator's: it waits (two clusters would be worse) and says so.
async fn consensus_card(card: ConsensusCard, shutdown: CancellationToken) {
    let ConsensusCard {
        view,
        handle,
        remote,
        name,
        addr,
        expect,
    } = card;
    let mut waiting = expect > 0;
    let mut warned = false;
    if waiting {
        tracing::info!(
            expect,
            "new node: waiting for {expect} new nodes (this one included) to start a cluster, or for one already in a cluster to join"
        );
    }
    loop {
        let status = handle.status();
        // A replica of any group (the metadata group's records may live elsewhere).
        let in_cluster = status.groups > 0 || status.members > 0;
        waiting &= !in_cluster;
        view.set_consensus(if waiting { expect as u32 } else { 0 }, in_cluster);
        if waiting {
            let up: Vec<_> = view.peers().into_iter().filter(|p| p.up).collect();
            if let Some(member) = up.iter().find(|p| p.card.in_consensus) {
                tracing::info!(through = %member.card.name, "a cluster exists: joining it");
                waiting = false;
                view.set_consensus(0, false);
                tokio::spawn(join_cluster(
                    remote.clone(),
                    name.clone(),
                    addr.clone(),
                    shutdown.clone(),
                ));
            } else {
                let mut names: Vec<String> = up
                    .iter()
                    .filter(|p| p.card.bootstrap_expect as usize == expect)
                    .map(|p| p.card.name.clone())
                    .collect();
                names.push(name.clone());
                names.sort();
                if names.len() == expect {
                    let id = crate::consensus::node_id;
                    handle.bootstrap(names.iter().map(|n| (id(n), n.clone())).collect());
                } else if names.len() > expect && !warned {
                    warned = true;
                    tracing::error!(
                        expected = expect,
                        waiting = ?names,
                        "more new nodes wait to start a cluster than cluster.bootstrap_expect says: not starting one"
                    );
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// A node that is not one of the first members asks the metadata group, through its
/// seeds, to take it in; it retries until the cluster answers (placement then gives it
/// its share of replicas). A removed name is refused for good.
async fn join_cluster(
    remote: Arc<crate::remote::Remote>,
    name: String,
    addr: String,
    shutdown: CancellationToken,
) {
    use chat_protocol::internal::command::{JoinCluster, Op};
    use chat_protocol::internal::{Command, outcome};
    use prost::Message;
    let join = JoinCluster {
        node: crate::consensus::node_id(&name),
        name: name.clone(),
        addr,
    };
    let command = Command {
        op: Some(Op::JoinCluster(join)),
    }
    .encode_to_vec();
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        remote.propose(
            chat_state::membership::META,
            command.clone(),
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        match rx.await {
            Ok(Ok(o)) => match o.result {
                Some(outcome::Result::Done(_) | outcome::Result::Exists(_)) => {
                    tracing::info!(node = %name, "joined the cluster's members");
                    return;
                }
                Some(outcome::Result::NotFound(_)) => {
                    tracing::error!(node = %name, "this node was removed from the cluster and cannot join again under its name");
                    return;
                }
                other => tracing::warn!(node = %name, ?other, "unexpected answer to joining"),
            },
            Ok(Err(e)) => tracing::debug!(node = %name, error = %e, "joining: retrying"),
            Err(_) => return,
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The Raft log file is rewritten (dropping what the groups compacted) once it passes
/// this size and twice what is still live.
const RAFT_LOG_REWRITE_BYTES: u64 = 64 << 20;

/// The Raft core's records are durable once the database is synced.
#[derive(Clone)]
struct StorageSync(Storage);

impl crate::consensus::driver::Sync for StorageSync {
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.sync_to_disk().map_err(std::io::Error::other)
    }
}

/// The Raft core's messages travel on the links to the peers, one item per peer per
/// round; a node's Raft id is the hash of its name.
struct RaftLinks {
    remote: Arc<crate::remote::Remote>,
    view: crate::view::ClusterView,
    /// Names known before the peers are seen (the first members).
    names: Vec<String>,
}

impl crate::consensus::driver::Transport for RaftLinks {
    fn send(&mut self, to: u64, messages: Vec<(u32, Vec<u8>)>) {
        let id = crate::consensus::node_id;
        let name = self.names.iter().find(|n| id(n) == to).cloned().or_else(|| {
            self.view
                .peers()
                .into_iter()
                .map(|p| p.card.name)
                .find(|n| id(n) == to)
        });
        let Some(name) = name else {
            tracing::debug!(peer = to, "raft messages for an unknown node dropped");
            return;
        };
        let messages = messages
            .into_iter()
            .map(|(group, message)| chat_protocol::internal::RaftMessage { group, message })
            .collect();
        // A full link drops them: Raft sends again.
        let batch = chat_protocol::internal::RaftBatch { messages };
        self.remote
            .send(&name, chat_protocol::internal::item::Body::Raft(batch));
    }
}
