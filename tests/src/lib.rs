//! Test harness: starts the real `chat-node` binary on free loopback ports (or inside a
//! test network namespace) with its own temporary data folder, and offers clients, raw
//! sockets and polling helpers. Its modules hold what the failover and fault-injection
//! tests share: the workload, the history checker, the nemesis and the test network.

pub mod checker;
pub mod nemesis;
pub mod netns;
pub mod workload;

use anyhow::{Context, Result, bail};
use bytes::BytesMut;
use chat_client::{Client, Push};
use chat_protocol::codec::FrameCodec;
use chat_protocol::v1::ServerFrame;
use prost::Message;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::codec::Decoder;

/// The default deadline for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A built binary of this workspace (target/<profile>/NAME), next to the test executable,
/// or in the folder `CHAT_TEST_BIN_DIR` names (to run the tests against another build of
/// the binaries, for example today's main against a branch).
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("CHAT_TEST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> -> target/<profile>/<name>
            let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
            dir.to_owned()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` so the binaries are built",
        path.display()
    );
    path
}

/// Settings the tests commonly change. Everything else stays at the node's defaults,
/// except argon2's cost, which is lowered so that tests register users quickly.
#[derive(Debug, Clone, Default)]
pub struct NodeOpts {
    /// The node's name (default: derived from its client port).
    pub name: Option<String>,
    /// Extra TOML appended to the generated config (whole sections).
    pub extra_toml: String,
    /// `[client]` lines.
    pub client_toml: String,
    /// `[cluster]` lines (the listen address defaults to a port chosen by the OS).
    pub cluster_toml: String,
    /// `[admin]` lines (the listen address defaults to a port chosen by the OS).
    pub admin_toml: String,
    /// `[auth]` lines (argon2 is made cheap in any case).
    pub auth_toml: String,
    /// Environment variables for the node (for example `CHAT_FAULTS`, its fault points).
    pub env: Vec<(String, String)>,
    /// Run the node inside this network namespace (`ip netns exec NS chat-node ...`; `ip`
    /// execs, so the child's pid is the node's). Default: the test's own namespace.
    pub netns: Option<String>,
}

/// A currently free TCP port on 127.0.0.1 for a cluster listener that must keep its port
/// across restarts (a seed). It is drawn below the kernel's ephemeral range, so the
/// port-0 listeners of other nodes started meanwhile cannot take it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread parallel test binaries apart, then walk upwards within this process.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 100) as u16 * 100;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 100;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl NodeOpts {
    /// Options for a cluster member: a name, a fixed cluster port, seeds and a cookie.
    pub fn member(name: &str, cluster_port: u16, seeds: &[u16], cookie: &str) -> Self {
        let seeds: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        Self {
            name: Some(name.to_owned()),
            cluster_toml: format!(
                "listen = \"127.0.0.1:{cluster_port}\"\nseeds = [{}]\ncookie = {cookie:?}\n",
                seeds.join(", ")
            ),
            ..Self::default()
        }
    }
}

/// A running `chat-node` child process; killed when dropped.
pub struct Node {
    child: Option<Child>,
    /// The client address it printed.
    pub addr: String,
    /// The admin endpoint's base URL it printed (`http://host:port`).
    pub admin: String,
    /// The WebSocket URL it printed (`ws://host:port`), if it serves WebSocket.
    pub ws: Option<String>,
    /// The cluster address it printed (`host:port`, what peers dial).
    pub cluster: String,
    dir: tempfile::TempDir,
    opts: NodeOpts,
    /// Its stderr log.
    pub log: PathBuf,
}

impl Node {
    /// Starts a node with default test settings.
    pub fn start() -> Result<Self> {
        Self::start_with(NodeOpts::default())
    }

    /// Starts a node with the given settings, in a fresh data folder.
    pub fn start_with(opts: NodeOpts) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (child, addr, admin, ws, cluster, log) = spawn_node(dir.path(), &opts)?;
        Ok(Self {
            child: Some(child),
            addr,
            admin,
            ws,
            cluster,
            dir,
            opts,
            log,
        })
    }

    /// The node's data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the node with SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        send_signal(child.id(), "TERM")?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("node did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on its data folder (it gets a new port).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        let (child, addr, admin, ws, cluster, log) = spawn_node(self.dir.path(), &self.opts)?;
        self.child = Some(child);
        self.addr = addr;
        self.admin = admin;
        self.ws = ws;
        self.cluster = cluster;
        self.log = log;
        Ok(())
    }

    /// Kills the node (SIGKILL) and starts it again on the same data folder with other
    /// options (its name and cluster port must stay).
    pub fn restart_with(&mut self, opts: NodeOpts) -> Result<()> {
        self.opts = opts;
        self.restart()
    }

    /// A connected client (after Hello).
    pub async fn connect(&self) -> Result<(Client, UnboundedReceiver<Push>)> {
        Ok(Client::connect(&self.addr).await?)
    }

    /// Registers `name` (password "pw-NAME") and logs it in on a new connection.
    pub async fn user(&self, name: &str) -> Result<(Client, UnboundedReceiver<Push>)> {
        let (c, p) = self.connect().await?;
        c.register(name, &password(name)).await?;
        c.login(name, &password(name)).await?;
        Ok((c, p))
    }

    /// Logs an already registered user in on a new connection.
    pub async fn login(
        &self,
        name: &str,
    ) -> Result<(Client, UnboundedReceiver<Push>, chat_protocol::v1::LoginOk)> {
        let (c, p) = self.connect().await?;
        let ok = c.login(name, &password(name)).await?;
        Ok((c, p, ok))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // For debugging a failed run: CHAT_TEST_LOGS=folder keeps every node's logs there.
        if let Some(keep) = std::env::var_os("CHAT_TEST_LOGS") {
            let name = self.opts.name.clone().unwrap_or_else(|| "node".into());
            if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
                for e in entries.flatten() {
                    let file = e.file_name().to_string_lossy().into_owned();
                    if file.ends_with(".log") {
                        let _ = std::fs::create_dir_all(&keep);
                        let _ = std::fs::copy(e.path(), PathBuf::from(&keep).join(format!("{name}-{file}")));
                    }
                }
            }
        }
    }
}

/// The password the harness uses for `name`.
pub fn password(name: &str) -> String {
    format!("pw-{name}")
}

/// Sends a signal (TERM, STOP, CONT...) to a process.
pub fn send_signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// True if the TOML lines `toml` set `key` itself (at the start of a line, so not a
/// longer key that ends with it, such as `websocket_listen`).
fn sets_key(toml: &str, key: &str) -> bool {
    toml.lines().any(|line| {
        line.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

type Spawned = (Child, String, String, Option<String>, String, PathBuf);

fn spawn_node(dir: &Path, opts: &NodeOpts) -> Result<Spawned> {
    let config = dir.join("node.toml");
    let name = opts
        .name
        .as_ref()
        .map(|n| format!("name = {n:?}\n"))
        .unwrap_or_default();
    let cluster_listen = if opts.cluster_toml.contains("listen") {
        ""
    } else {
        "listen = \"127.0.0.1:0\"\n"
    };
    let client_listen = if sets_key(&opts.client_toml, "listen") {
        ""
    } else {
        "listen = \"127.0.0.1:0\"\n"
    };
    let admin_listen = if sets_key(&opts.admin_toml, "listen") {
        ""
    } else {
        "listen = \"127.0.0.1:0\"\n"
    };
    std::fs::write(
        &config,
        format!(
            "{name}data_dir = {data:?}\n[client]\n{client_listen}{client}\n[cluster]\n{cluster_listen}{cluster}\n[auth]\nargon2_memory_kib = 64\nargon2_iterations = 1\n{auth}\n[admin]\n{admin_listen}{admin}\n{extra}\n",
            data = dir.join("data"),
            client = opts.client_toml,
            cluster = opts.cluster_toml,
            admin = opts.admin_toml,
            auth = opts.auth_toml,
            extra = opts.extra_toml,
        ),
    )?;
    let log = dir.join(format!(
        "node-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    let mut command = match &opts.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("chat-node"));
            c
        }
        None => Command::new(bin("chat-node")),
    };
    let mut child = command
        .arg("--config")
        .arg(&config)
        // CHAT_TEST_RUST_LOG sets the nodes' log filter when debugging (default: info).
        .env(
            "RUST_LOG",
            std::env::var("CHAT_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("cannot start chat-node")?;
    let stdout = child.stdout.take().context("stdout")?;
    // Read the announcement lines on a thread so a silent node cannot hang the test; it
    // keeps draining so the node never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Lines are told apart by what they say, not by their order. The cluster line is
    // awaited only when the address cannot be known otherwise (port 0), so that builds
    // which do not print it (before it was added) still run with a fixed cluster port.
    let wants_ws = sets_key(&opts.client_toml, "websocket_listen");
    let configured_cluster = toml_value(&opts.cluster_toml, "listen").filter(|a| !a.ends_with(":0"));
    let (mut addr, mut admin, mut ws, mut cluster) = (None, None, None, None);
    let end = Instant::now() + DEADLINE;
    while addr.is_none()
        || admin.is_none()
        || (wants_ws && ws.is_none())
        || (configured_cluster.is_none() && cluster.is_none())
    {
        let Ok(line) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "chat-node did not print its addresses; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let after = |marker: &str| line.rsplit_once(marker).map(|(_, a)| a.trim().to_owned());
        if let Some(a) = after("listening for clients on ") {
            addr = Some(a);
        } else if let Some(a) = after("admin endpoint on ") {
            admin = Some(a);
        } else if let Some(a) = after("websocket clients on ") {
            ws = Some(a);
        } else if let Some(a) = after("cluster peers on ") {
            cluster = Some(a);
        }
    }
    let (Some(addr), Some(admin), Some(cluster)) = (addr, admin, cluster.or(configured_cluster)) else {
        unreachable!("the loop ends once every address is known")
    };
    Ok((child, addr, admin, ws, cluster, log))
}

/// The string value of `key = "value"` among the TOML lines `toml`, if they set it.
fn toml_value(toml: &str, key: &str) -> Option<String> {
    toml.lines().find_map(|line| {
        let rest = line
            .trim_start()
            .strip_prefix(key)?
            .trim_start()
            .strip_prefix('=')?;
        Some(rest.trim().trim_matches('"').to_owned())
    })
}

/// Polls `check` until it returns `Some`, or fails after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_every(what, deadline, Duration::from_millis(25), check).await
}

/// Waits until every node of `nodes` sees `members` members and says the cluster is
/// settled (`/cluster`: every partition led, its replicas caught up), as a script
/// would before sending traffic.
pub async fn wait_settled(nodes: &[&Node], members: usize) -> Result<()> {
    for node in nodes {
        let last = std::sync::Mutex::new(None);
        let settled = wait_for("the cluster to settle", 3 * DEADLINE, || async {
            let status = cluster_status(node).await?;
            *last.lock().unwrap() = Some(status["consensus"].clone());
            let seen = status["consensus"]["members"].as_u64()?;
            (status["settled"] == true && seen == members as u64).then_some(())
        })
        .await;
        if let Err(e) = settled {
            let mut last = last.lock().unwrap().take().unwrap_or_default();
            if let Some(c) = last.as_object_mut() {
                c.remove("led");
            }
            bail!("{e}: {} says {last}", node.addr);
        }
    }
    Ok(())
}

/// The partitions `node` leads, as its `/cluster` says, once it leads any (leadership
/// spreads over the nodes once the groups are placed).
pub async fn led_by(node: &Node) -> Result<Vec<u16>> {
    wait_for("the node to lead partitions", DEADLINE, || async {
        let status = cluster_status(node).await?;
        let led: Vec<u16> = status["consensus"]["led"]
            .as_array()?
            .iter()
            .filter_map(|p| p.as_u64().map(|p| p as u16))
            .collect();
        (!led.is_empty()).then_some(led)
    })
    .await
}

/// Polls `check` every `interval` until it returns `Some`, or fails after `deadline`
/// (a longer interval for checks that are themselves expensive).
pub async fn wait_for_every<T, F, Fut>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(interval).await;
    }
}

/// The next push that `pick` accepts, within the deadline.
pub async fn next_push<T>(
    pushes: &mut UnboundedReceiver<Push>,
    mut pick: impl FnMut(Push) -> Option<T>,
) -> Result<T> {
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::time::timeout_at(end, pushes.recv()).await {
            Ok(Some(p)) => {
                if let Some(v) = pick(p) {
                    return Ok(v);
                }
            }
            Ok(None) => bail!("connection closed while waiting for a push"),
            Err(_) => bail!("no matching push within {DEADLINE:?}"),
        }
    }
}

/// The next message pushed (a delivery that is no contact or group event, nor a change
/// of a message).
pub async fn next_delivery(pushes: &mut UnboundedReceiver<Push>) -> Result<chat_protocol::v1::Delivery> {
    next_push(pushes, |p| match p {
        Push::Delivery(d) if d.contact.is_none() && d.group_event.is_none() && d.change.is_none() => Some(d),
        _ => None,
    })
    .await
}

/// The reason of the next `Closing` push (the server closing the connection).
pub async fn next_closing(pushes: &mut UnboundedReceiver<Push>) -> Result<String> {
    next_push(pushes, |p| match p {
        Push::Closing(c) => Some(c.reason),
        _ => None,
    })
    .await
}

/// The receipts stored in a logged-in user's inbox after `after_seq` (its inbox also
/// holds messages, and its own copies of what it sent); None if the sync fails.
pub async fn receipts_after(client: &Client, after_seq: u64) -> Option<Vec<chat_protocol::v1::Delivery>> {
    let all = client.sync_all(after_seq).await.ok()?;
    Some(all.into_iter().filter(|d| d.receipt.is_some()).collect())
}

/// A raw TCP connection for sending arbitrary bytes and reading server frames.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

/// What a raw read saw.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // a test helper: one event at a time
pub enum RawEvent {
    /// A decoded server frame.
    Frame(ServerFrame),
    /// The server closed the connection.
    Closed,
}

impl Raw {
    /// Connects to a node.
    pub async fn connect(addr: &str) -> Result<Self> {
        Ok(Self {
            stream: TcpStream::connect(addr).await?,
            buf: BytesMut::new(),
            codec: FrameCodec::new(16 * 1024 * 1024),
        })
    }

    /// Writes bytes as they are.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Writes one well-formed client frame.
    pub async fn send(&mut self, frame: &chat_protocol::v1::ClientFrame) -> Result<()> {
        self.write(&frame.encode_length_delimited_to_vec()).await
    }

    /// The next frame, or Closed; fails after the deadline.
    pub async fn next(&mut self) -> Result<RawEvent> {
        let end = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(RawEvent::Frame(ServerFrame::decode(frame)?));
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(end, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(RawEvent::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => bail!("no frame and no close within {DEADLINE:?}"),
            }
        }
    }

    /// Reads until the server closes the connection, returning every frame seen.
    pub async fn until_closed(&mut self) -> Result<Vec<ServerFrame>> {
        let mut frames = Vec::new();
        loop {
            match self.next().await? {
                RawEvent::Frame(f) => frames.push(f),
                RawEvent::Closed => return Ok(frames),
            }
        }
    }
}

/// Runs the `chat` CLI with `args`, returning (success, stdout, stderr).
pub async fn cli(args: &[&str]) -> Result<(bool, String, String)> {
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new(bin("chat"))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("chat CLI did not finish in time")??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The node's `/cluster` admin JSON (view, membership, partitions), if it answers.
pub async fn cluster_status(node: &Node) -> Option<serde_json::Value> {
    cluster_status_at(&node.admin).await
}

/// The `/cluster` admin JSON of the endpoint `base` (`http://host:port`), if it answers
/// within a few seconds (a frozen node must not hold up whoever asks).
pub async fn cluster_status_at(base: &str) -> Option<serde_json::Value> {
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), http_get(base, "/cluster"))
        .await
        .ok()?
        .ok()?;
    if status != 200 {
        return None;
    }
    serde_json::from_str(&body).ok()
}

/// A plain HTTP GET against `base` (`http://host:port`); returns (status, body).
pub async fn http_get(base: &str, path: &str) -> Result<(u16, String)> {
    http_request(base, "GET", path, &[]).await
}

/// Sends an HTTP/1.1 request with no body and `headers` (name, value), and returns the
/// status code and body.
pub async fn http_request(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    http_request_with_body(base, method, path, headers, b"").await
}

/// An HTTP request with a body (give its `Content-Type` in `headers`); returns (status,
/// body).
pub async fn http_request_with_body(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let host = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).await?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    Ok((status, body.to_owned()))
}

/// Milliseconds since the Unix epoch, as the nodes' clocks count them.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Three nodes named `names` (replicas 3, each seeded with the other two, `cookie`
/// shared), once every node says the cluster is settled.
pub async fn three_nodes(names: [&str; 3], cookie: &str) -> [Node; 3] {
    three_nodes_with(names, cookie, "").await
}

/// [`three_nodes`], with `extra_toml` (whole sections) in each node's configuration.
pub async fn three_nodes_with(names: [&str; 3], cookie: &str, extra_toml: &str) -> [Node; 3] {
    let ports = [free_port(), free_port(), free_port()];
    let start = |i: usize| {
        let seeds: Vec<u16> = (0..3).filter(|j| *j != i).map(|j| ports[j]).collect();
        let mut opts = NodeOpts::member(names[i], ports[i], &seeds, cookie);
        opts.cluster_toml
            .push_str(&format!("replicas = 3\ninitial_members = {names:?}\n"));
        opts.extra_toml.push_str(extra_toml);
        Node::start_with(opts).expect("node starts")
    };
    let nodes = [start(0), start(1), start(2)];
    wait_settled(&[&nodes[0], &nodes[1], &nodes[2]], 3)
        .await
        .expect("the cluster settles");
    nodes
}
