//! The `chat-node` binary: parse flags, load the config, start tracing, bind, run.

use anyhow::Context;
use chat_node::Config;
use clap::Parser;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

// glibc's malloc showed up as about 15% of the node's CPU under load (many small,
// short-lived allocations across threads); mimalloc handles that pattern better.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A clustered chat node. With no arguments it runs one node on 127.0.0.1:7400
/// with its data in ./chat-data.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// TOML config file (see cluster-config/ for documented examples).
    #[arg(long, env = "CHAT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's name, unique in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// Client listen address (port 0 picks a free port; the real one is printed).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Cluster listen address (port 0 picks a free port; the real one is printed).
    #[arg(long)]
    cluster_listen: Option<SocketAddr>,
    /// Host or IP peers use to reach the cluster port (needed when it listens on 0.0.0.0).
    #[arg(long)]
    cluster_advertise: Option<String>,
    /// A peer's cluster address to join (repeatable).
    #[arg(long = "seed")]
    seeds: Vec<String>,
    /// Folder for this node's database.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also accept clients over WebSocket on this address.
    #[arg(long)]
    ws_listen: Option<SocketAddr>,
    /// Serve the built web client from this folder (web/dist after scripts/build-web.sh)
    /// at / on the WebSocket address.
    #[arg(long)]
    web_dir: Option<PathBuf>,
    /// Admin HTTP listen address (/health, /metrics, /cluster).
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Shared cluster secret.
    #[arg(long, env = "CHAT_COOKIE", hide_env_values = true)]
    cookie: Option<String>,
    /// Voters of every partition's Raft group, on different nodes (cluster.replicas).
    #[arg(long)]
    replicas: Option<usize>,
}

const EXAMPLES: &str = "Examples:
  chat-node
  chat-node --listen 127.0.0.1:0 --data-dir /tmp/n1
  chat-node --config cluster-config/node1.toml
  chat-node --ws-listen 127.0.0.1:7480 --web-dir web/dist
  RUST_LOG=chat_node=debug chat-node";

impl Cli {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(name) = self.name {
            cfg.name = Some(name);
        }
        if let Some(addr) = self.listen {
            cfg.client.listen = addr;
        }
        if let Some(addr) = self.cluster_listen {
            cfg.cluster.listen = addr;
        }
        if let Some(host) = self.cluster_advertise {
            cfg.cluster.advertise_host = Some(host);
        }
        if !self.seeds.is_empty() {
            cfg.cluster.seeds = self.seeds;
        }
        if let Some(addr) = self.ws_listen {
            cfg.client.websocket_listen = Some(addr);
        }
        if let Some(dir) = self.web_dir {
            cfg.client.web_dir = Some(dir);
        }
        if let Some(addr) = self.admin_listen {
            cfg.admin.listen = addr;
        }
        if let Some(dir) = self.data_dir {
            cfg.data_dir = dir;
        }
        if let Some(cookie) = self.cookie {
            cfg.cluster.cookie = cookie;
        }
        if let Some(n) = self.replicas {
            cfg.cluster.replicas = n;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn main() -> anyhow::Result<()> {
    let cfg = Cli::parse().into_config()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(blocking_threads())
        .build()?
        .block_on(serve(cfg))
}

/// Most threads of the blocking pool. Reads after a read barrier, password hashes and
/// file work run there; each is short, and the hashes are bounded apart (one per core).
/// tokio's default (512) let a burst of reads, all released by one Raft round, start a
/// thread each: 250 threads after 10,000 logins, each with its own allocator pages,
/// which an idle node kept (about 4 KB of memory per logged-in connection, measured).
fn blocking_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (4 * cores).max(16)
}

/// Prints one line on stdout, now. Written, not `println!`ed: whoever reads these
/// lines may close the pipe after the first, and a node must not die of that.
fn announce(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    // Fail before announcing an address if another node runs on this data folder (held
    // until the process exits) or the TLS files are unusable.
    let _data_dir = chat_node::server::lock_data_dir(&cfg.data_dir)?;
    if let Some(files) = &cfg.client.tls {
        chat_node::tls::acceptor(files)?;
    }
    let listener = tokio::net::TcpListener::bind(cfg.client.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.client.listen))?;
    let addr = listener.local_addr()?;
    let name = chat_node::server::node_name(&cfg.data_dir, cfg.name.as_deref(), addr)?;
    let admin = if cfg.admin.enabled {
        let l = tokio::net::TcpListener::bind(cfg.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", cfg.admin.listen))?;
        Some(l)
    } else {
        None
    };
    let websocket = match cfg.client.websocket_listen {
        Some(ws) => Some(
            tokio::net::TcpListener::bind(ws)
                .await
                .with_context(|| format!("cannot listen on {ws} (websocket)"))?,
        ),
        None => None,
    };
    // Tests and scripts read these lines to learn the real ports.
    announce(&format!("chat-node {name} listening for clients on {addr}"));
    if let Some(l) = &admin {
        announce(&format!(
            "chat-node {name} admin endpoint on http://{}",
            l.local_addr()?
        ));
    }
    if let Some(l) = &websocket {
        let scheme = if cfg.client.tls.is_some() { "wss" } else { "ws" };
        announce(&format!(
            "chat-node {name} websocket clients on {scheme}://{}/ws",
            l.local_addr()?
        ));
        if cfg.client.web_dir.is_some() {
            // Scripts find these lines by what they say, so one more disturbs none of them.
            let scheme = if cfg.client.tls.is_some() { "https" } else { "http" };
            announce(&format!(
                "chat-node {name} web client on {scheme}://{}/",
                l.local_addr()?
            ));
        }
    } else if cfg.client.web_dir.is_some() {
        tracing::warn!(
            "client.web_dir is set but client.websocket_listen is not: the web client is not served"
        );
    }

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    // Printed last, once ractor_cluster has bound it: the lines above keep their order.
    let on_cluster_listening = Box::new(move |addr: &str| {
        announce(&format!("chat-node {name} cluster peers on {addr}"));
    });
    let listeners = chat_node::Listeners {
        client: listener,
        admin,
        websocket,
        on_cluster_listening: Some(on_cluster_listening),
    };
    chat_node::run(cfg, listeners, shutdown).await?;
    Ok(())
}

/// First SIGINT or SIGTERM: orderly shutdown. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("signal received; shutting down (again to force)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
