//! Fault injection with real network partitions, in the manner of Jepsen: five `chat-node`
//! processes, each in its own network namespace on one bridge (`chat_tests::netns`), and
//! ten clients in another namespace that send private and group messages through random
//! nodes, resending with the same client message id (through another node on any error
//! or timeout) until acknowledged. A seeded nemesis isolates a node, splits 2|3, bridges,
//! makes a ring, kills -9 and restarts, and pauses a node (SIGSTOP/SIGCONT), healing
//! between faults. At the end everything is healed, every user reads its whole inbox
//! through every node, and the checker compares it with what was acknowledged: lost,
//! duplicated, reordered, gaps and acknowledgement mismatches must all be zero.
//!
//! Seeds come from `CHAT_FI_SEEDS` (default `1,2,3`, as in CI), the number of faults per
//! seed from `CHAT_FI_FAULTS` (default 8). `cargo test` runs it (as root, with `ip` and `nft`); `scripts/fault-injection.sh`
//! runs chosen seeds.

use anyhow::{Context, Result, bail};
use chat_client::Client;
use chat_client::proto::ErrorCode;
use chat_tests::checker::{self, Counts, History, Inboxes, Target};
use chat_tests::nemesis::{self, Fault};
use chat_tests::netns::{self, Net};
use chat_tests::workload::{self, Addrs, Log, Rng, SenderOpts, Window, WindowStats};
use chat_tests::{Node, NodeOpts, cluster_status_at, password};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NODES: usize = 5;
const USERS: usize = 10;
const REPLICAS: usize = 3;
const COOKIE: &str = "fault-injection-cookie";
/// Every node listens on its own address, on the same ports.
const CLIENT_PORT: u16 = 7400;
const CLUSTER_PORT: u16 = 7500;
const ADMIN_PORT: u16 = 7600;
/// Each sender's pause between two messages: about ten messages a second per sender
/// when the cluster is healthy.
const PAUSE: Duration = Duration::from_millis(100);
/// How long one connection attempt or one send may take before the client moves on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a message is resent before its sender gives up (and records it unacknowledged).
const MESSAGE_DEADLINE: Duration = Duration::from_secs(60);
/// How long the cluster may take to form.
const FORM_DEADLINE: Duration = Duration::from_secs(120);
/// How long it may take to settle after the last heal (it should take seconds).
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// Acknowledgements needed before the first fault.
const WARM_UP_ACKS: usize = 200;
/// How long the cluster then runs healthy, to measure the rate faults are compared with.
const HEALTHY: Duration = Duration::from_secs(5);

/// What one seed's run found.
#[derive(Debug)]
struct Outcome {
    seed: u64,
    faults: usize,
    /// The worst counts over every node's view.
    counts: Counts,
    examples: Vec<String>,
    /// Users whose inbox differs between the nodes they were read through.
    diverging: usize,
    /// (node, user) pairs whose inbox could not be read after the heal.
    unreadable: usize,
    /// Time from the last heal until the cluster had settled; None if it did not.
    heal: Option<Duration>,
    windows: Vec<WindowStats>,
    errors: BTreeMap<String, usize>,
    elapsed: Duration,
}

impl Outcome {
    fn clean(&self) -> bool {
        self.counts.anomalies() == 0 && self.diverging == 0 && self.unreadable == 0 && self.heal.is_some()
    }

    fn summary(&self) -> String {
        let c = &self.counts;
        let heal = match self.heal {
            Some(h) => format!("settled {:.1} s after the last heal", h.as_secs_f64()),
            None => format!(
                "not settled within {} s of the last heal",
                SETTLE_DEADLINE.as_secs()
            ),
        };
        format!(
            "fault-injection seed {}: {} faults, {:.0} s; acked {} (unacked {}, stored anyway {}); \
             lost {} (of {} messages), duplicated {}, reordered private {}, reordered group order {}, \
             reordered group by sender {}, seq gaps {}, ack mismatches {}, ack conflicts {}, \
             unexpected {}, diverging inboxes {}, unreadable inboxes {} of {}; {heal}",
            self.seed,
            self.faults,
            self.elapsed.as_secs_f64(),
            c.acknowledged,
            c.unacknowledged,
            c.unacknowledged_stored,
            c.lost,
            c.lost_messages,
            c.duplicated,
            c.reordered_private,
            c.reordered_group_order,
            c.reordered_group_sender,
            c.seq_gaps,
            c.ack_mismatches,
            c.ack_conflicts,
            c.unexpected,
            self.diverging,
            self.unreadable,
            NODES * USERS,
        )
    }
}

/// A number list from the environment (`1,2,3`), or `default`.
fn env_list(var: &str, default: &[u64]) -> Vec<u64> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => v
            .split([',', ' '])
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: {s:?} is not a number"))
            })
            .collect(),
        _ => default.to_vec(),
    }
}

#[test]
fn nothing_acknowledged_is_lost_duplicated_or_reordered_under_partitions_pauses_and_kills() {
    if let Err(e) = netns::require_tools() {
        panic!("the fault-injection test cannot run: {e:#}");
    }
    let seeds = env_list("CHAT_FI_SEEDS", &[1, 2, 3]);
    let faults = env_list("CHAT_FI_FAULTS", &[8])[0] as usize;
    let mut outcomes = Vec::new();
    for seed in seeds {
        let outcome = run_seed(seed, faults).unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        eprintln!("{}", outcome.summary());
        outcomes.push(outcome);
    }
    eprintln!();
    for o in &outcomes {
        eprintln!("{}", o.summary());
    }
    let failed: Vec<u64> = outcomes.iter().filter(|o| !o.clean()).map(|o| o.seed).collect();
    assert!(
        failed.is_empty(),
        "seeds {failed:?} lost, duplicated or reordered acknowledged messages (see above)"
    );
}

/// The network itself: namespaces that reach each other over the bridge, cuts that drop
/// exactly the pairs they name (clients still reach every node), heals, and nothing left
/// behind. Needs root, `ip` and `nft`, like the test above; it takes about a second.
#[test]
fn the_test_network_cuts_and_heals_links_and_leaves_no_namespace_behind() {
    if let Err(e) = netns::require_tools() {
        panic!("the test network cannot be built: {e:#}");
    }
    let mut net = Net::create(3).unwrap();
    let names = net.namespaces().to_vec();
    assert_eq!(names.len(), 5, "{names:?}");
    // Something listening in node 0's namespace (the kernel completes handshakes into
    // the backlog, so nobody needs to accept).
    let addr: std::net::SocketAddr = format!("{}:9", Net::node_ip(0)).parse().unwrap();
    let listener = netns::run_in(net.node_ns(0), move || std::net::TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let reaches = |ns: &str| {
        netns::run_in(ns, move || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
        })
        .unwrap()
    };
    assert!(reaches(net.client_ns()));
    assert!(reaches(net.node_ns(1)));
    assert!(reaches(net.node_ns(2)));
    net.isolate(0).unwrap();
    assert!(reaches(net.client_ns()), "clients reach an isolated node");
    assert!(!reaches(net.node_ns(1)));
    assert!(!reaches(net.node_ns(2)));
    net.split(&[0, 2], &[1]).unwrap();
    assert!(!reaches(net.node_ns(1)));
    assert!(reaches(net.node_ns(2)));
    net.heal().unwrap();
    assert!(reaches(net.node_ns(1)));
    // The namespaces reach nothing outside: no default route.
    let routes = std::process::Command::new("ip")
        .args(["-n", net.node_ns(1), "route", "show", "default"])
        .output()
        .unwrap();
    assert!(
        routes.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&routes.stdout)
    );
    drop(listener);
    drop(net);
    let left = netns::leftovers_of(std::process::id()).unwrap();
    assert!(left.iter().all(|n| !names.contains(n)), "left behind: {left:?}");
}

fn run_seed(seed: u64, faults: usize) -> Result<Outcome> {
    let net = Arc::new(Mutex::new(Net::create(NODES)?));
    let client_ns = net.lock().expect("net").client_ns().to_owned();
    // The whole run (clients, admin polls, the nemesis) lives in the client namespace,
    // the only one from which every node is reachable. This thread keeps a handle on the
    // network so that it is deleted from here, outside it, once the run is over.
    let shared = net.clone();
    let outcome = netns::run_in(&client_ns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(scenario(seed, faults, shared))
    });
    drop(net);
    outcome?
}

/// The options of node `i` of the test network.
fn node_opts(net: &Net, i: usize) -> NodeOpts {
    let ip = Net::node_ip(i);
    // Every other node is a seed, so that any node, restarted, finds the cluster again.
    let seeds: Vec<String> = (0..NODES)
        .filter(|j| *j != i)
        .map(|j| format!("\"{}:{CLUSTER_PORT}\"", Net::node_ip(j)))
        .collect();
    let mut cluster_toml = format!(
        "listen = \"{ip}:{CLUSTER_PORT}\"\nseeds = [{}]\ncookie = {COOKIE:?}\nreplicas = {REPLICAS}\n",
        seeds.join(", ")
    );
    let first: Vec<String> = (0..NODES).map(|j| format!("n{j}")).collect();
    cluster_toml.push_str(&format!("initial_members = {first:?}\n"));
    NodeOpts {
        name: Some(format!("n{i}")),
        netns: Some(net.node_ns(i).to_owned()),
        client_toml: format!("listen = \"{ip}:{CLIENT_PORT}\"\n"),
        cluster_toml,
        admin_toml: format!("listen = \"{ip}:{ADMIN_PORT}\"\n"),
        ..NodeOpts::default()
    }
}

/// Polls `check` every 250 ms (each check reads every node) until it returns `Some`.
async fn poll<T, F, Fut>(what: &str, deadline: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    chat_tests::wait_for_every(what, deadline, Duration::from_millis(250), check).await
}

/// Waits until every node says the cluster is settled (`/cluster`'s `settled`: every
/// group it has a replica of knows a live leader, every group it leads is whole).
async fn settled(admins: &[String], deadline: Duration) -> Result<Duration> {
    let start = Instant::now();
    poll("the cluster to settle", deadline, || async {
        for admin in admins {
            if cluster_status_at(admin).await?["settled"] != true {
                return None;
            }
        }
        Some(())
    })
    .await?;
    Ok(start.elapsed())
}

/// Retries `op` on new connections to random nodes until it succeeds (a retried setup
/// request may answer "already done", which `op` maps to success), for up to a minute.
async fn retrying<F, Fut>(what: &str, addrs: &[String], rng: &mut Rng, mut op: F) -> Result<()>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = Result<(), chat_client::ClientError>>,
{
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let addr = &addrs[rng.below(addrs.len())];
        if let Ok(Ok((client, _pushes))) = tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(addr)).await
            && let Ok(Ok(())) = tokio::time::timeout(REQUEST_TIMEOUT, op(client)).await
        {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("timed out {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Accepts "already done" answers to a retried setup request.
fn done_or(e: chat_client::ClientError, already: ErrorCode) -> Result<(), chat_client::ClientError> {
    if e.code() == Some(already) { Ok(()) } else { Err(e) }
}

async fn scenario(seed: u64, faults: usize, net: Arc<Mutex<Net>>) -> Result<Outcome> {
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut nodes: Vec<Option<Node>> = Vec::new();
    for i in 0..NODES {
        let opts = node_opts(&net.lock().expect("net"), i);
        nodes.push(Some(
            Node::start_with(opts).with_context(|| format!("starting n{i}"))?,
        ));
    }
    let running = |nodes: &[Option<Node>], i: usize| -> Result<u32> {
        Ok(nodes[i].as_ref().context("node not running")?.pid())
    };
    let addrs: Vec<String> = nodes.iter().flatten().map(|n| n.addr.clone()).collect();
    let admins: Vec<String> = nodes.iter().flatten().map(|n| n.admin.clone()).collect();
    let formed = settled(&admins, FORM_DEADLINE)
        .await
        .context("the cluster did not form")?;
    eprintln!(
        "seed {seed}: {NODES} nodes, {REPLICAS} replicas, formed in {:.1} s",
        formed.as_secs_f64()
    );

    // Users and groups: "all" has every user, "half" the first half.
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    let groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::from([
        ("all".to_owned(), users.iter().cloned().collect()),
        ("half".to_owned(), users[..USERS / 2].iter().cloned().collect()),
    ]);
    for u in &users {
        retrying(&format!("registering {u}"), &addrs, &mut rng, |c| async move {
            c.register(u, &password(u))
                .await
                .or_else(|e| done_or(e, ErrorCode::UsernameTaken))
        })
        .await?;
    }
    for (group, members) in &groups {
        for (k, m) in members.iter().enumerate() {
            retrying(
                &format!("{m} joining {group}"),
                &addrs,
                &mut rng,
                |c| async move {
                    c.login(m, &password(m)).await?;
                    if k == 0 {
                        c.create_group(group)
                            .await
                            .or_else(|e| done_or(e, ErrorCode::AlreadyExists))
                    } else {
                        c.join_group(group)
                            .await
                            .or_else(|e| done_or(e, ErrorCode::AlreadyExists))
                    }
                },
            )
            .await?;
        }
    }

    // The clients.
    let shared: Addrs = Arc::new(Mutex::new(addrs.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Log> = (0..USERS).map(|_| Log::default()).collect();
    let mut tasks = Vec::new();
    for (i, me) in users.iter().enumerate() {
        let mine: Vec<String> = groups
            .iter()
            .filter(|(_, m)| m.contains(me))
            .map(|(g, _)| g.clone())
            .collect();
        let others: Vec<String> = users.iter().filter(|u| *u != me).cloned().collect();
        let opts = SenderOpts {
            request_timeout: REQUEST_TIMEOUT,
            message_deadline: MESSAGE_DEADLINE,
            pause: PAUSE,
            retry_pause: Duration::from_millis(100),
            stay_on_unavailable: false,
            ..SenderOpts::new(me, rng.next_u64())
        };
        let choose = move |rng: &mut Rng, _: u64| {
            if rng.below(10) < 3 {
                Target::Group(mine[rng.below(mine.len())].clone())
            } else {
                Target::Private(others[rng.below(others.len())].clone())
            }
        };
        tasks.push(tokio::spawn(workload::sender(
            opts,
            shared.clone(),
            stop.clone(),
            logs[i].clone(),
            choose,
        )));
    }
    poll(
        "traffic before the first fault",
        Duration::from_secs(60),
        || async { (workload::acked(&logs) >= WARM_UP_ACKS).then_some(()) },
    )
    .await?;

    // The nemesis.
    let plan = nemesis::schedule(seed, NODES, faults);
    // A healthy stretch first, as the yardstick for the rates under faults.
    let warm_up = Instant::now();
    tokio::time::sleep(HEALTHY).await;
    let mut marks: Vec<(String, Instant, Instant)> = Vec::new();
    for (k, step) in plan.iter().enumerate() {
        let start = Instant::now();
        eprintln!(
            "seed {seed} +{:>3.0} s: {} for {:.1} s",
            start.duration_since(started).as_secs_f64(),
            step.fault,
            step.duration.as_secs_f64()
        );
        match &step.fault {
            Fault::Kill(n) => nodes[*n].as_mut().context("node not running")?.kill9(),
            Fault::Pause(n) => chat_tests::send_signal(running(&nodes, *n)?, "STOP")?,
            partition => net.lock().expect("net").apply(partition)?,
        }
        // The fault lasts this long.
        tokio::time::sleep(step.duration).await;
        match &step.fault {
            Fault::Kill(n) => {
                let mut node = nodes[*n].take().context("node not running")?;
                let node = tokio::task::spawn_blocking(move || node.restart().map(|()| node)).await??;
                nodes[*n] = Some(node);
            }
            Fault::Pause(n) => chat_tests::send_signal(running(&nodes, *n)?, "CONT")?,
            _ => net.lock().expect("net").heal()?,
        }
        marks.push((step.fault.to_string(), start, Instant::now()));
        if k + 1 < plan.len() {
            // Healed running before the next fault.
            tokio::time::sleep(step.rest).await;
        }
    }
    // After the last heal, under traffic still: how long until the cluster has settled.
    let heal = match settled(&admins, SETTLE_DEADLINE).await {
        Ok(took) => Some(took),
        Err(e) => {
            eprintln!("seed {seed}: {e:#}");
            None
        }
    };
    let stopped = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        tokio::time::timeout(MESSAGE_DEADLINE + Duration::from_secs(10), task)
            .await
            .context("a sender did not stop")??;
    }

    // Every inbox through every node, once group fan-outs had their chance to finish:
    // read again until every inbox is readable and nothing is lost, for up to 30 s.
    let history = History {
        sent: workload::sent(&logs),
        groups,
        own_copies: true,
    };
    let settle_reads = Instant::now() + Duration::from_secs(30);
    let views = loop {
        let views = read_views(&addrs, &users).await;
        let lost = views
            .iter()
            .map(|v| checker::check(&history, &v.inboxes).counts.lost)
            .max();
        let complete = views.iter().all(|v| v.unreadable.is_empty());
        if (complete && lost == Some(0)) || Instant::now() > settle_reads {
            break views;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let mut unreadable = 0;
    let mut counts = Counts::default();
    let mut examples = Vec::new();
    for (i, view) in views.iter().enumerate() {
        for (user, error) in &view.unreadable {
            eprintln!("seed {seed}: {user}'s inbox unreadable through n{i}: {error}");
        }
        unreadable += view.unreadable.len();
        let report = checker::check(&history, &view.inboxes);
        counts.worst(&report.counts);
        if examples.is_empty() {
            examples = report.examples;
        }
    }
    let inboxes: Vec<Inboxes> = views.into_iter().map(|v| v.inboxes).collect();
    let diverging = checker::diverging(&inboxes);

    // Availability: each window until the next begins.
    let ended = Instant::now();
    let first_fault = marks.first().map_or(stopped, |m| m.1);
    let mut windows = vec![Window {
        label: "healthy (before the first fault)".to_owned(),
        start: warm_up,
        end: first_fault,
        next: first_fault,
    }];
    windows.extend(marks.iter().enumerate().map(|(k, (label, start, end))| Window {
        label: label.clone(),
        start: *start,
        end: *end,
        next: marks.get(k + 1).map_or(stopped, |m| m.1),
    }));
    let windows = workload::availability(&windows, &workload::ack_times(&logs), USERS);
    let mut errors = BTreeMap::new();
    for l in &logs {
        for (cause, n) in &l.lock().expect("log").errors {
            *errors.entry(cause.clone()).or_default() += n;
        }
    }
    let outcome = Outcome {
        seed,
        faults: plan.len(),
        counts,
        examples,
        diverging,
        unreadable,
        heal,
        windows,
        errors,
        elapsed: ended.duration_since(started),
    };
    report(&outcome);
    Ok(outcome)
}

/// The inboxes read through one node.
struct View {
    /// Those it let be read.
    inboxes: Inboxes,
    /// Those it did not, with the last error.
    unreadable: Vec<(String, String)>,
}

/// Every user's inbox through every node, all read at once, each retried for up to 20 s.
async fn read_views(addrs: &[String], users: &[String]) -> Vec<View> {
    let read = |addr: &str, user: &str| {
        let (addr, user) = (addr.to_owned(), user.to_owned());
        async move {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                match workload::read_inbox(&addr, &user, Duration::from_secs(10)).await {
                    Ok(inbox) => return (user, Ok(inbox)),
                    Err(e) if Instant::now() > end => return (user, Err(format!("{e:#}"))),
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    };
    let per_node = addrs.iter().map(|addr| {
        let reads = futures::future::join_all(users.iter().map(|u| read(addr, u)));
        async move {
            let mut view = View {
                inboxes: Inboxes::new(),
                unreadable: Vec::new(),
            };
            for (user, inbox) in reads.await {
                match inbox {
                    Ok(inbox) => {
                        view.inboxes.insert(user, inbox);
                    }
                    Err(e) => view.unreadable.push((user, e)),
                }
            }
            view
        }
    });
    futures::future::join_all(per_node).await
}

fn report(o: &Outcome) {
    eprintln!(
        "seed {}: availability (acknowledgements while each fault lasted)",
        o.seed
    );
    for w in &o.windows {
        eprintln!("  {w}");
    }
    let errors: Vec<String> = o.errors.iter().map(|(c, n)| format!("{c} {n}")).collect();
    eprintln!("seed {}: failed attempts by cause: {}", o.seed, errors.join(", "));
    eprintln!("seed {}: {}", o.seed, o.counts);
    for e in &o.examples {
        eprintln!("  {e}");
    }
}
