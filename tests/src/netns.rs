//! A private test network of Linux network namespaces for fault injection: a hub holding
//! a bridge, one namespace per node and one for the clients, each joined to the bridge by
//! a veth pair, and nftables rules in the node namespaces that cut chosen pairs of nodes
//! apart (clients always reach every node). Nothing links it to the machine's own
//! network: no link to the root namespace, no default route. Every namespace is deleted
//! when the `Net` is dropped (a failed test unwinds through that too), on SIGINT, SIGTERM
//! and SIGHUP, and, if a run was killed outright, by the next run once its process is gone.

use crate::nemesis::{Cut, Fault};
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Every name this module gives a namespace starts with this, then the test process's
/// pid, a dash and a per-process number: `cfi<pid>-<k>h` (hub), `cfi<pid>-<k>n<i>`
/// (node i), `cfi<pid>-<k>c` (clients).
const PREFIX: &str = "cfi";

/// The test network's addresses: 10.77.0.0/24 inside the namespaces only.
const SUBNET: &str = "10.77.0";

/// The nftables table every node namespace gets: traffic to or from an address in
/// `blocked` is dropped (silently, as a cut cable would).
const TABLE: &str = "table inet cfi {
    set blocked { type ipv4_addr; }
    chain input { type filter hook input priority 0; policy accept; ip saddr @blocked drop; }
    chain output { type filter hook output priority 0; policy accept; ip daddr @blocked drop; }
}
";

/// Namespaces that exist now, oldest first, for the signal handler.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Fails with a clear message unless this process is root and `ip` and `nft` are there.
pub fn require_tools() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the fault-injection test needs root (it creates network namespaces and nftables rules)");
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let works = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            bail!("`{tool}` is missing: install Debian's {package} package (scripts/ci-setup.sh does)");
        }
    }
    Ok(())
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args), None)
}

/// Runs a command (with `input` on stdin), failing with its stderr.
fn run(command: &mut Command, input: Option<&str>) -> Result<String> {
    let what = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    if let Some(input) = input {
        stdin.write_all(input.as_bytes())?;
    }
    drop(stdin);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The pid in a name this module gave, if it is one.
fn owner_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let pid: u32 = pid.parse().ok()?;
    let role = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if role.len() == rest.len() {
        return None;
    }
    let known = role == "h"
        || role == "c"
        || role
            .strip_prefix('n')
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()));
    known.then_some(pid)
}

/// The names of every network namespace.
fn namespaces() -> Result<Vec<String>> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills every process in `ns` (only ever a node this module's test started), waits for
/// them to go, and deletes it.
fn delete(ns: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_in(ns);
        if pids.is_empty() || Instant::now() > end {
            break;
        }
        for pid in pids {
            let _ = crate::send_signal(pid, "KILL");
        }
        // Polls until the killed processes are gone (they leave the namespace as they exit).
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = ip(&["netns", "del", ns]) {
        eprintln!("netns: cannot delete {ns}: {e}");
    }
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|n| n != ns);
}

/// The processes in the namespace `ns` (what `ip netns pids` says, read here so that
/// the `ip` run to list them, if started from inside `ns`, is not among them). Never
/// this process itself, whose main thread never enters a test namespace.
fn pids_in(ns: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(format!("/run/netns/{ns}")) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
        })
        .collect()
}

/// Deletes the namespaces of earlier runs whose process no longer exists (a run killed
/// with SIGKILL cannot clean up after itself). Names of live processes are left alone,
/// and so is anything not named by this module.
fn remove_stale() -> Result<()> {
    for ns in namespaces()? {
        let Some(pid) = owner_pid(&ns) else { continue };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("netns: deleting {ns}, left by process {pid} which is gone");
            delete(&ns);
        }
    }
    Ok(())
}

/// On SIGINT, SIGTERM or SIGHUP (Ctrl-C, a CI timeout), deletes every live namespace
/// (killing the nodes in them) and exits with 130; a signal would otherwise end the
/// process without running any `Drop`.
fn cleanup_on_signals() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let (ready, registered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the signal handler");
            runtime.block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    eprintln!("netns: cannot handle signals; an interrupted run leaves its namespaces");
                    let _ = ready.send(());
                    return std::future::pending().await;
                };
                let _ = ready.send(());
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            });
            eprintln!("netns: interrupted; deleting the test network");
            let live: Vec<String> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for ns in live.iter().rev() {
                delete(ns);
            }
            std::process::exit(130);
        });
        let _ = registered.recv();
    });
}

/// A test network: `nodes` node namespaces and a client namespace on one bridge.
#[derive(Debug)]
pub struct Net {
    /// Every namespace created, oldest (the hub) first.
    created: Vec<String>,
    hub: String,
    nodes: Vec<String>,
    client: String,
    cuts: BTreeSet<Cut>,
}

impl Net {
    /// Creates the network (after deleting stale ones of dead runs). Fails with a clear
    /// message if this is not root or `ip` or `nft` is missing.
    pub fn create(nodes: usize) -> Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        require_tools()?;
        assert!((1..100).contains(&nodes), "1 to 99 nodes");
        remove_stale()?;
        cleanup_on_signals();
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut net = Net {
            created: Vec::new(),
            hub: format!("{base}h"),
            nodes: (0..nodes).map(|i| format!("{base}n{i}")).collect(),
            client: format!("{base}c"),
            cuts: BTreeSet::new(),
        };
        // On any error below, dropping `net` deletes what was created.
        let hub = net.hub.clone();
        net.add_namespace(&hub)?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let ns = net.nodes[i].clone();
            net.join(&ns, &format!("n{i}"), &Self::node_ip(i))?;
            run(
                Command::new("ip").args(["netns", "exec", &ns, "nft", "-f", "-"]),
                Some(TABLE),
            )?;
        }
        let client = net.client.clone();
        net.join(&client, "c", &Self::client_ip())?;
        Ok(net)
    }

    /// Adds a namespace with its loopback up.
    fn add_namespace(&mut self, ns: &str) -> Result<()> {
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(ns.to_owned());
        self.created.push(ns.to_owned());
        ip(&["netns", "add", ns])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Adds `ns` joined to the bridge: its `eth0` is one end of a veth pair whose other
    /// end, `port`, is a port of the bridge in the hub.
    fn join(&mut self, ns: &str, port: &str, addr: &str) -> Result<()> {
        self.add_namespace(ns)?;
        let hub = self.hub.clone();
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &hub,
        ])?;
        ip(&["-n", &hub, "link", "set", port, "master", "br0", "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// Node `i`'s address (on its `eth0`).
    pub fn node_ip(i: usize) -> String {
        format!("{SUBNET}.{}", i + 1)
    }

    /// The clients' address.
    pub fn client_ip() -> String {
        format!("{SUBNET}.200")
    }

    /// Node `i`'s namespace, to start it in (`NodeOpts::netns`).
    pub fn node_ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// The clients' namespace.
    pub fn client_ns(&self) -> &str {
        &self.client
    }

    /// Every namespace of this network.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The pairs of nodes cut apart now.
    pub fn cuts(&self) -> &BTreeSet<Cut> {
        &self.cuts
    }

    /// Cuts exactly the pairs `cuts` apart (healing every other pair): each node drops
    /// what comes from or goes to the nodes it is cut from. One nft transaction per node.
    pub fn cut(&mut self, cuts: BTreeSet<Cut>) -> Result<()> {
        for (i, ns) in self.nodes.iter().enumerate() {
            let blocked: Vec<String> = cuts
                .iter()
                .filter_map(|&(a, b)| {
                    if a == i {
                        Some(b)
                    } else if b == i {
                        Some(a)
                    } else {
                        None
                    }
                })
                .map(Self::node_ip)
                .collect();
            let mut script = "flush set inet cfi blocked\n".to_owned();
            if !blocked.is_empty() {
                script += &format!("add element inet cfi blocked {{ {} }}\n", blocked.join(", "));
            }
            run(
                Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
                Some(&script),
            )?;
        }
        self.cuts = cuts;
        Ok(())
    }

    /// Applies a partition fault (kills and pauses are for the caller: they cut nothing).
    pub fn apply(&mut self, fault: &Fault) -> Result<()> {
        self.cut(fault.cuts(self.nodes.len()))
    }

    /// Node `n` reaches no other node.
    pub fn isolate(&mut self, n: usize) -> Result<()> {
        self.apply(&Fault::Isolate(n))
    }

    /// Nodes in `a` reach only each other, and so do nodes in `b`.
    pub fn split(&mut self, a: &[usize], b: &[usize]) -> Result<()> {
        self.apply(&Fault::Split(a.to_vec(), b.to_vec()))
    }

    /// `left` and `right` do not reach each other; `bridge` reaches both.
    pub fn bridge(&mut self, left: &[usize], bridge: usize, right: &[usize]) -> Result<()> {
        self.apply(&Fault::Bridge {
            left: left.to_vec(),
            bridge,
            right: right.to_vec(),
        })
    }

    /// Each node reaches only its two neighbours in the circular `order`.
    pub fn ring(&mut self, order: &[usize]) -> Result<()> {
        self.apply(&Fault::Ring(order.to_vec()))
    }

    /// Every node reaches every node again.
    pub fn heal(&mut self) -> Result<()> {
        self.cut(BTreeSet::new())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Node and client namespaces first: their veth pairs go with them.
        for ns in self.created.iter().rev() {
            delete(ns);
        }
    }
}

/// Runs `f` on a new thread that has entered the network namespace `ns`: every socket it
/// (and any thread or tokio runtime it starts) opens lives there. A panic in `f` is
/// passed on.
pub fn run_in<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
    let thread = std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || -> Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .context("setns into the test network")?;
            drop(file);
            Ok(f())
        })?;
    match thread.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The namespaces that exist now with a name this module gave for the process `pid`.
pub fn leftovers_of(pid: u32) -> Result<Vec<String>> {
    Ok(namespaces()?
        .into_iter()
        .filter(|ns| owner_pid(ns) == Some(pid))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_module_gives_have_an_owner() {
        assert_eq!(owner_pid("cfi123-0h"), Some(123));
        assert_eq!(owner_pid("cfi123-4n17"), Some(123));
        assert_eq!(owner_pid("cfi9-0c"), Some(9));
        for other in [
            "cfi123h",
            "cfi-0h",
            "cfi123-h",
            "cfi123-0n",
            "cfi123-0x",
            "cfi12a-0h",
            "docker0",
            "cfi123-0nx",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }
}
