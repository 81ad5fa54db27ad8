//! `xmpp-bench`: the `chat-bench` load, spoken in XMPP, so that an XMPP server (ejabberd
//! in `scripts/bench-vs-ejabberd.sh`) can be measured the same way as a chat node.
//!
//! It mirrors `chat-bench` mode for mode: the same users (registered fresh each run, here
//! by in-band registration), the same pairs (user i sends to user i+1), the same window of
//! unacknowledged sends per connection, the same fixed or maximum rate, the end-to-end
//! latency from a timestamp at the start of each body, and the same printed figures. The
//! acknowledgement of a send is stream management's (XEP-0198): every message is followed
//! by `<r/>`, and the server's cumulative `<a h='N'/>` releases the window.

mod xml;
mod xmpp;

use anyhow::{Context, Result, bail};
use chat_client::load::{self, Pacing, rss_kib};
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use xmpp::{Account, Conn, Incoming, REQUEST_ACK, chat_message};

/// XMPP load generator mirroring chat-bench. Users are registered fresh on every run by
/// in-band registration (XEP-0077), so the server must allow it (mod_register, no
/// registration rate limit) and offer SASL PLAIN and stream management on a plain port.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXAMPLES)]
struct Cli {
    /// Server's client port (repeatable: connections are spread over them round-robin).
    #[arg(long = "server", default_value = "127.0.0.1:5222")]
    servers: Vec<String>,
    /// The XMPP domain the accounts live in.
    #[arg(long, default_value = "localhost")]
    domain: String,
    /// The server's process id, to read its memory from /proc.
    #[arg(long)]
    node_pid: Option<u32>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

const EXAMPLES: &str = "Examples:
  xmpp-bench --node-pid $(cat ejabberd.pid) send --connections 100 --duration 10
  xmpp-bench send --connections 100 --rate 5000 --duration 10 --payload 100
  xmpp-bench offline --connections 100 --messages 200
  xmpp-bench --node-pid $(cat ejabberd.pid) idle --connections 10000";

#[derive(Debug, Subcommand)]
enum Mode {
    /// Chat messages: connection i sends to user i+1 (so every message is delivered live).
    Send(SendOpts),
    /// Offline storage: senders write to recipients that are not logged in (the store
    /// rate), then the recipients log in and receive everything (the drain rate, and the
    /// time until the last message arrived).
    Offline(OfflineOpts),
    /// Open logged-in connections that stay idle, and report server memory per connection.
    Idle {
        /// Connections to open, each its own user.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds to hold them before measuring.
        #[arg(long, default_value_t = 12)]
        hold: u64,
    },
}

/// What `send` does (the same options as chat-bench's).
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
    /// Message body size in bytes.
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

/// What `offline` does (the same options as chat-bench's).
#[derive(Debug, Clone, clap::Args)]
struct OfflineOpts {
    /// Sender connections; as many recipients, sender i writing to recipient i.
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Messages each recipient gets.
    #[arg(long, default_value_t = 200)]
    messages: usize,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Unacknowledged sends allowed per connection.
    #[arg(long, default_value_t = 32)]
    window: usize,
}

const PASSWORD: &str = "bench";

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let result = match &cli.mode {
        Mode::Send(opts) => send(&cli, opts).await?,
        Mode::Offline(opts) => offline(&cli, opts).await?,
        Mode::Idle { connections, hold } => idle(&cli, *connections, *hold).await?,
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

fn account(cli: &Cli, user: String, register: bool) -> Account {
    Account {
        domain: cli.domain.clone(),
        user,
        password: PASSWORD.to_string(),
        register,
    }
}

/// Registers (if asked) and logs in `n` users named `{prefix}{i}`, at most 64 at a time,
/// spread over the servers. Each connection keeps answering the server until all are in.
async fn open_users(cli: &Cli, n: usize, prefix: &str, register: bool) -> Result<Vec<Conn>> {
    let gate = Arc::new(Semaphore::new(64));
    let (go, ready) = tokio::sync::watch::channel(false);
    let (logged_in, mut logins) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let addr = cli.servers[i % cli.servers.len()].clone();
        let account = account(cli, format!("{prefix}{i}"), register);
        let (gate, logged_in, mut ready) = (gate.clone(), logged_in.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let login = async {
                let _slot = gate.acquire().await?;
                login_retrying(&addr, &account).await
            };
            let mut conn = match login.await {
                Ok(c) => c,
                Err(e) => {
                    let _ = logged_in.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let _ = logged_in.send(Ok(()));
            conn.idle_until(&mut ready).await?;
            anyhow::Ok(conn)
        }));
    }
    for _ in 0..n {
        match logins.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => bail!("login failed: {e}"),
            None => bail!("a login task ended without a word"),
        }
    }
    go.send(true)?;
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await??);
    }
    Ok(out)
}

/// Logs in, trying again on a fresh connection after a failure (a login that stalls on a
/// loaded server), at most three times in all; each retry is reported.
async fn login_retrying(addr: &str, account: &Account) -> Result<Conn> {
    let mut attempt = 1;
    loop {
        match Conn::login(addr, account).await {
            Ok(c) => return Ok(c),
            Err(e) if attempt < 3 => {
                eprintln!(
                    "WARNING: login attempt {attempt} of {} failed, retrying: {e:#}",
                    account.user
                );
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The send timestamp at the start of a body written by this tool, in ns since `origin`.
fn sent_at(body: &str) -> Option<u64> {
    body.get(..20).and_then(|t| t.parse().ok())
}

/// When a connection sends: the shared clock and the phase boundaries.
#[derive(Debug, Clone, Copy)]
struct Plan {
    origin: Instant,
    stop_at: Instant,
    drain_until: Instant,
    rate: u64,
    connections: usize,
    payload: usize,
    window: usize,
    pacing: Pacing,
}

/// What one connection measured.
#[derive(Debug)]
struct ConnResult {
    e2e: Histogram<u64>,
    ack: Histogram<u64>,
    acked: u64,
    received: u64,
    unacked: u64,
    /// When the last message sent before the stop was acknowledged.
    done_at: Option<Instant>,
}

/// One connection of `send`: sends to `to` within the window (at its share of the rate, or
/// as fast as acks allow) until the stop, and records every delivery until the drain ends.
/// A single task both reads and writes: reading is the only thing `select!` may cancel.
async fn send_and_receive(
    mut conn: Conn,
    index: usize,
    to: String,
    plan: Plan,
    acked_total: Arc<AtomicU64>,
) -> Result<ConnResult> {
    let mut tick = load::ticks(plan.rate, plan.connections, index, plan.origin, plan.pacing);
    let pad = "x".repeat(plan.payload.saturating_sub(20));
    let mut r = ConnResult {
        e2e: histogram(),
        ack: histogram(),
        acked: 0,
        received: 0,
        unacked: 0,
        done_at: None,
    };
    let mut pending: VecDeque<u64> = VecDeque::with_capacity(plan.window);
    let mut next_id = 0u64;
    loop {
        let now = Instant::now();
        if now >= plan.drain_until {
            break;
        }
        let sending = now < plan.stop_at;
        if !sending && pending.is_empty() && r.done_at.is_none() {
            r.done_at = Some(now);
        }
        let room = if sending { plan.window - pending.len() } else { 0 };
        tokio::select! {
            read = conn.read_more() => read?,
            _ = async {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
            }, if room > 0 => {
                // At a fixed rate one message per tick; at the maximum, fill the window.
                let n = if tick.is_some() { 1 } else { room };
                for _ in 0..n {
                    let sent = now_ns(plan.origin);
                    conn.queue_stanza(&chat_message(&to, next_id, &format!("{sent:020}{pad}")));
                    conn.queue_raw(REQUEST_ACK);
                    pending.push_back(sent);
                    next_id += 1;
                }
            }
            _ = tokio::time::sleep_until(plan.stop_at.into()), if sending => {}
            _ = tokio::time::sleep_until(plan.drain_until.into()) => {}
        }
        while let Some(incoming) = conn.take_incoming()? {
            match incoming {
                Incoming::Stanza(e) if e.name == "message" => {
                    let body = e.child("body").map(|b| b.text()).unwrap_or_default();
                    if let Some(sent) = sent_at(&body) {
                        let us = now_ns(plan.origin).saturating_sub(sent) / 1000;
                        let _ = r.e2e.record(us.max(1));
                    }
                    r.received += 1;
                }
                Incoming::Stanza(_) => {}
                Incoming::Acked(n) => {
                    let now = now_ns(plan.origin);
                    for _ in 0..n {
                        let sent = pending.pop_front().context("ack for a message never sent")?;
                        let _ = r.ack.record((now.saturating_sub(sent) / 1000).max(1));
                    }
                    r.acked += u64::from(n);
                    acked_total.fetch_add(u64::from(n), Ordering::Relaxed);
                }
            }
        }
        conn.flush().await?;
    }
    r.unacked = pending.len() as u64;
    conn.close().await?;
    Ok(r)
}

async fn send(cli: &Cli, opts: &SendOpts) -> Result<serde_json::Value> {
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
    if window == 0 {
        bail!("--window must be at least 1");
    }
    let prefix = format!("b{}-", run_id());
    let users = open_users(cli, connections, &prefix, true).await?;
    println!(
        "connected {connections} users over {} server(s); sending for {duration}s, rate {}, payload {payload} B, window {window}",
        cli.servers.len(),
        if rate == 0 {
            "max".to_string()
        } else {
            format!("{rate}/s")
        }
    );
    let origin = Instant::now();
    let stop_at = origin + Duration::from_secs(duration);
    let plan = Plan {
        origin,
        stop_at,
        // Receivers keep going a little after the senders stop, to collect what is in flight.
        drain_until: stop_at + Duration::from_secs(3),
        rate,
        connections,
        payload,
        window,
        pacing,
    };
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for (i, conn) in users.into_iter().enumerate() {
        let to = format!("{prefix}{}@{}", (i + 1) % connections, cli.domain);
        tasks.push(tokio::spawn(send_and_receive(conn, i, to, plan, acked.clone())));
    }
    let sampler = load::sample_peak_rss(cli.node_pid, plan.drain_until);
    let progress = load::Progress::start(duration, origin, stop_at, acked.clone());
    let (mut e2e, mut ack) = (histogram(), histogram());
    let (mut sent, mut got, mut errors, mut failed) = (0, 0, 0, 0);
    let mut done_at = stop_at;
    for t in tasks {
        match t.await? {
            Ok(r) => {
                e2e.add(&r.e2e)?;
                ack.add(&r.ack)?;
                sent += r.acked;
                got += r.received;
                errors += r.unacked;
                done_at = done_at.max(r.done_at.unwrap_or(plan.drain_until));
            }
            Err(e) => {
                failed += 1;
                eprintln!("connection failed: {e:#}");
            }
        }
    }
    progress.finish();
    let peak_rss = match sampler {
        Some(s) => s.await?,
        None => 0,
    };
    let send_elapsed = (done_at - origin).as_secs_f64();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "acknowledged sends: {sent} in {send_elapsed:.2}s = {:.0} msg/s",
        sent as f64 / send_elapsed
    );
    println!("deliveries received: {got} ({errors} send errors, {failed} connections failed)");
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
    if cli.node_pid.is_some() {
        println!("node peak RSS: {} MiB", peak_rss / 1024);
    }
    if got < sent {
        println!(
            "WARNING: {} acknowledged messages were not seen live before the drain ended",
            sent - got
        );
    }
    let summary = |h: &Histogram<u64>| {
        serde_json::json!({
            "p50": ms(h, 0.5), "p90": ms(h, 0.9), "p99": ms(h, 0.99), "p999": ms(h, 0.999),
            "max": h.max() as f64 / 1000.0,
        })
    };
    Ok(serde_json::json!({
        "mode": "send",
        "protocol": "xmpp",
        "servers": cli.servers.len(),
        "connections": connections,
        "duration_s": duration,
        "rate": rate,
        "payload_bytes": payload,
        "window": window,
        "acknowledged": sent,
        "received": got,
        "errors": errors,
        "messages_per_s": sent as f64 / send_elapsed,
        "end_to_end_ms": summary(&e2e),
        "send_to_ack_ms": summary(&ack),
        "node_peak_rss_mib": cli.node_pid.map(|_| peak_rss / 1024),
    }))
}

/// Sends `messages` bodies to `to` within the window, as fast as acks allow.
async fn store(mut conn: Conn, to: String, messages: usize, window: usize, body: String) -> Result<()> {
    let mut sent = 0;
    let mut unacked = 0usize;
    while sent < messages || unacked > 0 {
        while sent < messages && unacked < window {
            conn.queue_stanza(&chat_message(&to, sent as u64, &body));
            conn.queue_raw(REQUEST_ACK);
            sent += 1;
            unacked += 1;
        }
        if let Incoming::Acked(n) = conn.next_incoming().await? {
            unacked -= n as usize;
        }
    }
    conn.close().await
}

/// Logs in and waits for `messages` messages: those stored while it was away.
async fn drain(
    addr: String,
    account: Account,
    messages: usize,
    started: Instant,
) -> Result<(usize, Duration)> {
    let mut conn = Conn::login(&addr, &account).await?;
    let mut got = conn.early.iter().filter(|e| e.name == "message").count();
    let mut last = started.elapsed();
    while got < messages {
        match tokio::time::timeout(Duration::from_secs(30), conn.next_incoming()).await {
            Ok(incoming) => {
                if let Incoming::Stanza(e) = incoming?
                    && e.name == "message"
                {
                    got += 1;
                    last = started.elapsed();
                }
            }
            Err(_) => break,
        }
    }
    conn.close().await?;
    Ok((got, last))
}

async fn offline(cli: &Cli, opts: &OfflineOpts) -> Result<serde_json::Value> {
    let OfflineOpts {
        connections,
        messages,
        payload,
        window,
    } = opts.clone();
    if connections == 0 || messages == 0 || window == 0 {
        bail!("--connections, --messages and --window must be at least 1");
    }
    let id = run_id();
    let (senders, recipients) = (format!("s{id}-"), format!("r{id}-"));
    // Recipients are registered and logged in once (their accounts exist), then leave.
    for c in open_users(cli, connections, &recipients, true).await? {
        c.close().await?;
    }
    let users = open_users(cli, connections, &senders, true).await?;
    println!(
        "storing {messages} messages for each of {connections} offline users, payload {payload} B, window {window}"
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (i, conn) in users.into_iter().enumerate() {
        let to = format!("{recipients}{i}@{}", cli.domain);
        tasks.push(tokio::spawn(store(
            conn,
            to,
            messages,
            window,
            "x".repeat(payload),
        )));
    }
    for t in tasks {
        t.await??;
    }
    let store_s = started.elapsed().as_secs_f64();
    let stored = connections * messages;
    println!(
        "stored: {stored} in {store_s:.2}s = {:.0} msg/s",
        stored as f64 / store_s
    );
    // The recipients log in and receive everything, all at once.
    let started = Instant::now();
    let mut drains = Vec::with_capacity(connections);
    for i in 0..connections {
        let addr = cli.servers[i % cli.servers.len()].clone();
        let account = account(cli, format!("{recipients}{i}"), false);
        drains.push(tokio::spawn(drain(addr, account, messages, started)));
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
        "protocol": "xmpp",
        "servers": cli.servers.len(),
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

async fn idle(cli: &Cli, connections: usize, hold: u64) -> Result<serde_json::Value> {
    let pid = cli
        .node_pid
        .context("idle mode needs --node-pid to read the server's memory")?;
    let before = rss_kib(pid).context("cannot read the server's RSS")?;
    let started = Instant::now();
    let prefix = format!("i{}-", run_id());
    let open = open_users(cli, connections, &prefix, true).await?;
    println!(
        "opened {connections} logged-in connections for {connections} users in {:.1}s; holding {hold}s",
        started.elapsed().as_secs_f64()
    );
    // Idle, but alive: each connection still answers the server's ack requests.
    let keepers: Vec<_> = open
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                loop {
                    if c.next_incoming().await.is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = rss_kib(pid).context("cannot read the server's RSS")?;
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
    let alive = keepers.iter().filter(|k| !k.is_finished()).count();
    if alive < connections {
        println!("WARNING: {} connections ended while held", connections - alive);
    }
    for k in keepers {
        k.abort();
    }
    Ok(serde_json::json!({
        "mode": "idle",
        "protocol": "xmpp",
        "connections": connections,
        "users": connections,
        "node_rss_before_kib": before,
        "node_rss_after_kib": after,
        "bytes_per_connection": per,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_timestamp_is_read_back_from_the_first_twenty_characters() {
        let body = format!("{:020}{}", 987_654_321u64, "x".repeat(80));
        assert_eq!(body.len(), 100);
        assert_eq!(sent_at(&body), Some(987_654_321));
        assert_eq!(sent_at("short"), None);
        assert_eq!(sent_at(&"x".repeat(100)), None);
    }
}
