//! `chat-bench`: a load generator for a running chat node. It measures durable private
//! message throughput, end-to-end latency percentiles, and node memory per idle connection.

use anyhow::{Context, Result, bail};
use chat_client::load::{self, Pacing, cpu_us, rss_kib, status_kib};
use chat_client::{Client, Push};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

/// Load generator for chat nodes. Users are registered fresh on every run, so run the
/// node with a low argon2 cost (cluster-config/bench.toml) when using many connections.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Node address (repeatable: connections are spread over them round-robin).
    #[arg(long = "server", default_value = "127.0.0.1:7400")]
    servers: Vec<String>,
    /// The node's process id, to read its memory from /proc.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// send: also draw the latency distribution as an SVG plot to this file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

const EXAMPLES: &str = "Examples:
  chat-bench --node-pid $(pgrep chat-node) send --connections 100 --duration 10
  chat-bench offline --connections 100 --messages 200
  chat-bench --node-pid $(pgrep chat-node) files --size-mib 20 --count 3
  chat-bench send --connections 100 --rate 5000 --duration 10 --payload 100
  chat-bench --node-pid $(pgrep chat-node) idle --connections 10000";

#[derive(Debug, Subcommand)]
enum Mode {
    /// Private messages: connection i sends to connection i+1 (so every message is pushed live).
    Send(SendOpts),
    /// Offline storage: senders write to recipients that are not logged in (the store
    /// rate), then the recipients log in and sync everything (the drain rate, and the
    /// time until the last message arrived).
    Offline(OfflineOpts),
    /// Files: one user uploads files of a given size (streamed from disk), then
    /// downloads them (from the last --server, so across nodes when several are given):
    /// MB/s both ways, and the node's peak memory growth meanwhile (--node-pid).
    Files(FilesOpts),
    /// Open logged-in connections that stay idle, and report node memory per connection.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Distinct users behind the connections (0 = one per connection); the
        /// rest log in as further devices of those users, with their tokens.
        #[arg(long, default_value_t = 0)]
        users: usize,
        /// Seconds to hold them before measuring (past the login timeout, so its timers are gone).
        #[arg(long, default_value_t = 12)]
        hold: u64,
    },
}

/// What `offline` does.
#[derive(Debug, Clone, clap::Args)]
struct OfflineOpts {
    /// Sender connections; as many recipients, sender i writing to recipient i.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Messages each recipient gets.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Unacknowledged sends allowed per connection.
    #[arg(long, default_value_t = 32)]
    window: usize,
}

/// What `files` does.
#[derive(Debug, Clone, clap::Args)]
struct FilesOpts {
    /// Size of each file, in MiB (the node's files.max_file_bytes must allow it).
    #[arg(long, default_value_t = 20)]
    size_mib: u64,
    /// Files to upload and download (each with other bytes, so none is deduplicated).
    #[arg(long, default_value_t = 3)]
    count: usize,
}

/// What `send` does.
#[derive(Debug, Clone, clap::Args)]
struct SendOpts {
    /// Client connections (each its own user).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Total messages per second across all connections; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Unacknowledged sends allowed per connection.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// At a fixed rate: the connections' sends evenly spaced, or in bursts of one per
    /// connection (all in phase).
    #[arg(long, value_enum, default_value_t = Pacing::Spread)]
    pacing: Pacing,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let result = match &cli.mode {
        Mode::Send(opts) => send(&cli.servers, cli.node_pid, opts, cli.plot.as_deref()).await?,
        Mode::Offline(opts) => offline(&cli.servers, opts).await?,
        Mode::Files(opts) => files(&cli.servers, cli.node_pid, opts).await?,
        Mode::Idle {
            connections,
            users,
            hold,
        } => idle(&cli.servers, cli.node_pid, *connections, *users, *hold).await?,
    };
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// Registers and logs in `n` users, at most 64 at a time, spread over the servers.
async fn open_users(
    servers: &[String],
    n: usize,
    prefix: &str,
) -> Result<Vec<(Client, tokio::sync::mpsc::UnboundedReceiver<Push>, String)>> {
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let addr = servers[i % servers.len()].clone();
        let user = format!("{prefix}{i}");
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire().await?;
            let (c, rx) = Client::connect(&addr)
                .await
                .with_context(|| format!("connect {addr}"))?;
            c.register(&user, "bench")
                .await
                .with_context(|| format!("register {user}"))?;
            let ok = c
                .login(&user, "bench")
                .await
                .with_context(|| format!("login {user}"))?;
            anyhow::Ok((c, rx, ok.token))
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Stores `messages` for each of `connections` recipients that are offline, then logs
/// them in and syncs everything.
async fn offline(servers: &[String], opts: &OfflineOpts) -> Result<serde_json::Value> {
    let OfflineOpts {
        connections,
        messages,
        payload,
        window,
    } = opts.clone();
    if connections == 0 || messages == 0 {
        bail!("--connections and --messages must be at least 1");
    }
    let id = run_id();
    let (senders, recipients) = (format!("s{id}-"), format!("r{id}-"));
    // Recipients are registered and logged in once (their accounts exist), then leave.
    for (c, _, _) in open_users(servers, connections, &recipients).await? {
        c.logout().await?;
    }
    let users = open_users(servers, connections, &senders).await?;
    println!(
        "storing {messages} messages for each of {connections} offline users, payload {payload} B, window {window}"
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (i, (client, _, _)) in users.iter().enumerate() {
        let (client, to) = (client.clone(), format!("{recipients}{i}"));
        let gate = Arc::new(Semaphore::new(window));
        let text = "x".repeat(payload);
        tasks.push(tokio::spawn(async move {
            let mut sends = Vec::with_capacity(messages);
            for _ in 0..messages {
                let permit = gate.clone().acquire_owned().await?;
                let (c, to, text) = (client.clone(), to.clone(), text.clone());
                sends.push(tokio::spawn(async move {
                    let _permit = permit;
                    c.send_private(&to, &text).await
                }));
            }
            for s in sends {
                s.await??;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let store_s = started.elapsed().as_secs_f64();
    let stored = connections * messages;
    drop(users);
    println!(
        "stored: {stored} in {store_s:.2}s = {:.0} msg/s",
        stored as f64 / store_s
    );
    // The recipients log in and sync everything, all at once.
    let started = Instant::now();
    let mut drains = Vec::with_capacity(connections);
    for i in 0..connections {
        let (addr, user) = (servers[i % servers.len()].clone(), format!("{recipients}{i}"));
        drains.push(tokio::spawn(async move {
            let (c, _pushes) = Client::connect(&addr).await?;
            let ok = c.login(&user, "bench").await?;
            let got = c.sync_all(ok.delivered_seq).await?.len();
            anyhow::Ok((got, started.elapsed()))
        }));
    }
    let (mut drained, mut last) = (0, Duration::ZERO);
    for d in drains {
        let (got, at) = d.await??;
        drained += got;
        last = last.max(at);
    }
    let drain_s = last.as_secs_f64();
    println!(
        "drained: {drained} in {drain_s:.2}s = {:.0} msg/s (the last message {:.0} ms after the first login)",
        drained as f64 / drain_s,
        drain_s * 1000.0
    );
    if drained != stored {
        println!("WARNING: {stored} stored but {drained} drained");
    }
    Ok(serde_json::json!({
        "mode": "offline",
        "servers": servers.len(),
        "connections": connections,
        "messages_per_user": messages,
        "payload_bytes": payload,
        "window": window,
        "stored": stored,
        "store_messages_per_s": stored as f64 / store_s,
        "drained": drained,
        "drain_messages_per_s": drained as f64 / drain_s,
        "drain_last_ms": drain_s * 1000.0,
    }))
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

async fn send(
    servers: &[String],
    node_pid: Option<u32>,
    opts: &SendOpts,
    plot: Option<&std::path::Path>,
) -> Result<serde_json::Value> {
    let SendOpts {
        connections,
        duration,
        rate,
        payload,
        window,
        pacing,
    } = opts.clone();
    if connections < 2 {
        bail!("--connections must be at least 2 (each sends to the next)");
    }
    let prefix = format!("b{}-", run_id());
    let users = open_users(servers, connections, &prefix).await?;
    println!(
        "connected {connections} users over {} node(s); sending for {duration}s, rate {}, payload {payload} B, window {window}",
        servers.len(),
        if rate == 0 {
            "max".to_string()
        } else {
            format!("{rate}/s")
        }
    );
    let origin = Instant::now();
    let cpu_before = node_pid.and_then(cpu_us);
    let e2e = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let ack_lat = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let received = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop_at = origin + Duration::from_secs(duration);
    // Receivers keep going a little after the senders stop, to collect what is in flight.
    let drain_until = stop_at + Duration::from_secs(3);

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let clients: Vec<Client> = users.iter().map(|(c, _, _)| c.clone()).collect();
    for (i, (client, mut pushes, _)) in users.into_iter().enumerate() {
        let (e2e, received) = (e2e.clone(), received.clone());
        let me = client.clone();
        receivers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut last_acked = 0;
            loop {
                let push = tokio::select! {
                    p = pushes.recv() => p,
                    _ = tokio::time::sleep_until(drain_until.into()) => break,
                };
                match push {
                    Some(Push::Delivery(d)) => {
                        if let Some(sent) = d.text.get(..20).and_then(|t| t.parse::<u64>().ok()) {
                            let us = now_ns(origin).saturating_sub(sent) / 1000;
                            let _ = local.record(us.max(1));
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        // Acknowledge in batches, as a real client would.
                        if d.seq >= last_acked + 64 {
                            last_acked = d.seq;
                            let c = me.clone();
                            tokio::spawn(async move { c.ack_delivered(d.seq).await });
                        }
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            e2e.lock().await.add(&local).expect("same bounds");
        }));
        let to = format!("{prefix}{}", (i + 1) % connections);
        let (ack_lat, acked, errors) = (ack_lat.clone(), acked.clone(), errors.clone());
        let gate = Arc::new(Semaphore::new(window));
        senders.push(tokio::spawn(async move {
            let mut tick = load::ticks(rate, connections, i, origin, pacing);
            let pad = "x".repeat(payload.saturating_sub(20));
            let mut inflight = Vec::new();
            while Instant::now() < stop_at {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                let permit = gate.clone().acquire_owned().await.expect("open");
                let (c, to, ack_lat, acked, errors) = (
                    client.clone(),
                    to.clone(),
                    ack_lat.clone(),
                    acked.clone(),
                    errors.clone(),
                );
                let sent = now_ns(origin);
                let text = format!("{sent:020}{pad}");
                inflight.push(tokio::spawn(async move {
                    let _permit = permit;
                    match c.send_private(&to, &text).await {
                        Ok(_) => {
                            acked.fetch_add(1, Ordering::Relaxed);
                            let us = now_ns(origin).saturating_sub(sent) / 1000;
                            let _ = ack_lat.lock().await.record(us.max(1));
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
                if inflight.len() > 4 * window {
                    inflight.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
                }
            }
            for h in inflight {
                let _ = h.await;
            }
        }));
    }
    let mut peak_rss = 0;
    let sampler = load::sample_peak_rss(node_pid, drain_until);
    let progress = load::Progress::start(duration, origin, stop_at, acked.clone());
    for s in senders {
        s.await?;
    }
    progress.finish();
    let send_elapsed = origin.elapsed().as_secs_f64();
    let sent = acked.load(Ordering::Relaxed);
    // The node's CPU time per acknowledged message while sending: steadier than the rate
    // on a shared machine, to compare builds.
    let cpu_per_message = match (cpu_before, node_pid.and_then(cpu_us)) {
        (Some(before), Some(after)) if sent > 0 => Some(after.saturating_sub(before) as f64 / sent as f64),
        _ => None,
    };
    for r in receivers {
        r.await?;
    }
    if let Some(s) = sampler {
        peak_rss = s.await?;
    }
    drop(clients);
    let got = received.load(Ordering::Relaxed);
    let e2e = e2e.lock().await;
    let ack = ack_lat.lock().await;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "acknowledged sends: {sent} in {send_elapsed:.2}s = {:.0} msg/s",
        sent as f64 / send_elapsed
    );
    println!(
        "deliveries received: {got} ({} send errors)",
        errors.load(Ordering::Relaxed)
    );
    println!(
        "end-to-end latency ms: p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        ms(&e2e, 0.5),
        ms(&e2e, 0.99),
        ms(&e2e, 0.999),
        e2e.max() as f64 / 1000.0
    );
    println!(
        "send->ack latency ms:  p50 {:.2}  p99 {:.2}  p99.9 {:.2}",
        ms(&ack, 0.5),
        ms(&ack, 0.99),
        ms(&ack, 0.999)
    );
    if node_pid.is_some() {
        println!("node peak RSS: {} MiB", peak_rss / 1024);
    }
    if let Some(us) = cpu_per_message {
        println!("node CPU per acknowledged message: {us:.1} µs");
    }
    if got < sent {
        println!(
            "WARNING: {} acknowledged messages were not seen live before the drain ended",
            sent - got
        );
    }
    if let Some(path) = plot {
        std::fs::write(path, latency_svg(&e2e, &ack, opts))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let summary = |h: &Histogram<u64>| {
        serde_json::json!({
            "p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99), "p999": ms(h, 0.999),
            "max": h.max() as f64 / 1000.0,
        })
    };
    Ok(serde_json::json!({
        "mode": "send",
        "servers": servers.len(),
        "connections": connections,
        "duration_s": duration,
        "rate": rate,
        "payload_bytes": payload,
        "window": window,
        "acknowledged": sent,
        "received": got,
        "errors": errors.load(Ordering::Relaxed),
        "messages_per_s": sent as f64 / send_elapsed,
        "end_to_end_ms": summary(&e2e),
        "send_to_ack_ms": summary(&ack),
        "node_peak_rss_mib": node_pid.map(|_| peak_rss / 1024),
        "node_cpu_us_per_message": cpu_per_message,
    }))
}

/// The latency distributions as an SVG line chart: latency (ms) against percentile, with
/// the percentile axis stretched towards the tail as HdrHistogram plots do.
fn latency_svg(e2e: &Histogram<u64>, ack: &Histogram<u64>, opts: &SendOpts) -> String {
    const W: f64 = 800.0;
    const H: f64 = 420.0;
    const PAD: f64 = 60.0;
    // x = log10(1 / (1 - q)) / 4: 0 at p0, 1/4 at p90, 2/4 at p99, 3/4 at p99.9, 1 at p99.99.
    let qs: Vec<f64> = (0..=400).map(|i| 1.0 - 10f64.powf(-(i as f64) / 100.0)).collect();
    let max_ms = (e2e.max().max(ack.max()) as f64 / 1000.0).max(0.001);
    let x = |q: f64| PAD + (-(1.0 - q).max(1e-4).log10() / 4.0) * (W - 2.0 * PAD);
    let y = |ms: f64| H - PAD - ms / max_ms * (H - 2.0 * PAD);
    let line = |h: &Histogram<u64>| {
        qs.iter()
            .map(|q| format!("{:.1},{:.1}", x(*q), y(h.value_at_quantile(*q) as f64 / 1000.0)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let rate = if opts.rate == 0 {
        "max".to_string()
    } else {
        format!("{}/s", opts.rate)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{PAD}\" y=\"24\" font-size=\"14\">chat-bench send: {} connections, rate {rate}, {} B: latency by percentile</text>\n",
        opts.connections, opts.payload
    );
    for (i, label) in ["p0", "p90", "p99", "p99.9", "p99.99"].iter().enumerate() {
        let gx = PAD + i as f64 / 4.0 * (W - 2.0 * PAD);
        svg += &format!(
            "<line x1=\"{gx:.1}\" y1=\"{PAD}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
            H - PAD,
            H - PAD + 18.0
        );
    }
    for i in 0..=4 {
        let ms = max_ms * i as f64 / 4.0;
        svg += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{ms:.1} ms</text>\n",
            PAD - 6.0,
            y(ms) + 4.0
        );
    }
    svg += &format!(
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n\
         <polyline fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"2\" points=\"{}\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f77b4\">end to end</text>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#ff7f0e\">send to durable ack</text>\n</svg>\n",
        line(e2e),
        line(ack),
        W - PAD - 150.0,
        H - PAD - 40.0,
        W - PAD - 150.0,
        H - PAD - 24.0
    );
    svg
}

async fn idle(
    servers: &[String],
    node_pid: Option<u32>,
    connections: usize,
    users: usize,
    hold: u64,
) -> Result<serde_json::Value> {
    let pid = node_pid.context("idle mode needs --node-pid to read the node's memory")?;
    let users = if users == 0 {
        connections
    } else {
        users.min(connections)
    };
    let before = rss_kib(pid).context("cannot read the node's RSS")?;
    let started = Instant::now();
    let prefix = format!("i{}-", run_id());
    let mut open = open_users(servers, users, &prefix).await?;
    // Further devices log in with the first device's token (no password hashing).
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    let tokens: Vec<String> = open.iter().map(|(_, _, t)| t.clone()).collect();
    for i in users..connections {
        let addr = servers[i % servers.len()].clone();
        let user = format!("{prefix}{}", i % users);
        let token = tokens[i % users].clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire().await?;
            let (c, rx) = Client::connect(&addr).await?;
            c.login_token(&user, &token).await?;
            anyhow::Ok((c, rx, token))
        }));
    }
    for t in tasks {
        open.push(t.await??);
    }
    println!(
        "opened {connections} logged-in connections for {users} users in {:.1}s; holding {hold}s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = rss_kib(pid).context("cannot read the node's RSS")?;
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / connections as f64;
    println!(
        "node RSS before {} MiB, after {} MiB",
        before / 1024,
        after / 1024
    );
    println!(
        "node memory per idle logged-in connection: {:.1} KB",
        per / 1000.0
    );
    drop(open);
    Ok(serde_json::json!({
        "mode": "idle",
        "connections": connections,
        "users": users,
        "node_rss_before_kib": before,
        "node_rss_after_kib": after,
        "bytes_per_connection": per,
    }))
}

/// Peak resident memory of a process so far, in KiB.
fn peak_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// The median of some figures (the mean of the middle two for an even count).
fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Uploads `count` files of `size_mib` through the first server and downloads them
/// through the last.
async fn files(servers: &[String], node_pid: Option<u32>, opts: &FilesOpts) -> Result<serde_json::Value> {
    let id = run_id();
    let up_server = servers.first().context("no server")?.clone();
    let down_server = servers.last().context("no server")?.clone();
    let mut users = open_users(std::slice::from_ref(&up_server), 1, &format!("f{id}u")).await?;
    let (uploader, _pushes, _) = users.pop().context("no user")?;
    let (downloader, _pushes) = Client::connect(&down_server).await?;
    downloader.login(&format!("f{id}u0"), "bench").await?;
    let dir = std::env::temp_dir().join(format!("chat-bench-files-{id}"));
    std::fs::create_dir_all(&dir)?;
    let size = opts.size_mib << 20;
    let peak_before = node_pid.and_then(peak_kib);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for n in 0..opts.count {
        let path = dir.join(format!("file{n}.bin"));
        {
            use std::io::Write;
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            let mut block = vec![0u8; 1 << 20];
            for m in 0..opts.size_mib {
                rand::fill(&mut block[..]);
                block[0] = n as u8;
                block[1] = m as u8;
                f.write_all(&block)?;
            }
        }
        let started = Instant::now();
        let file = uploader
            .upload_file(&path, Some("application/octet-stream"))
            .await?;
        let secs = started.elapsed().as_secs_f64();
        up.push(size as f64 / 1e6 / secs);
        let started = Instant::now();
        let got = downloader
            .download_to(&file.blob_id, 0, &mut tokio::io::sink())
            .await?;
        let secs = started.elapsed().as_secs_f64();
        if got != size {
            bail!("downloaded {got} bytes of {size}");
        }
        down.push(size as f64 / 1e6 / secs);
        std::fs::remove_file(&path)?;
        println!(
            "file {n}: {} MiB up {:.1} MB/s, down {:.1} MB/s",
            opts.size_mib, up[n], down[n]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    let growth_mib = match (peak_before, node_pid.and_then(peak_kib)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1024.0),
        _ => None,
    };
    let (up, down) = (median_of(up), median_of(down));
    println!("median: upload {up:.1} MB/s via {up_server}, download {down:.1} MB/s via {down_server}");
    if let Some(g) = growth_mib {
        println!("node peak memory grew by {g:.1} MiB");
    }
    Ok(serde_json::json!({
        "mode": "files",
        "size_mib": opts.size_mib,
        "count": opts.count,
        "upload_mb_per_s": up,
        "download_mb_per_s": down,
        "upload_server": up_server,
        "download_server": down_server,
        "node_peak_growth_mib": growth_mib,
    }))
}
