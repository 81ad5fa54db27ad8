//! The seeded client workload of the failover and fault-injection tests: senders that
//! send one message at a time and resend it with the same client message id, through a
//! new connection to another node if need be, until a `SendAck` comes; what they record
//! feeds the checker and the availability figures.

use crate::checker::{Ack, Entry, Sent, Target};
use chat_client::proto::ErrorCode;
use chat_client::{Client, ClientError};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// xorshift64*: a run's only randomness, from its seed, so a failing seed replays the
/// same choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; it is mixed first).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The client addresses of the nodes; a test may change one when a node restarts elsewhere.
pub type Addrs = Arc<Mutex<Vec<String>>>;

/// How a sender behaves.
#[derive(Debug, Clone)]
pub struct SenderOpts {
    /// The user it sends as (registered already, password [`crate::password`]).
    pub me: String,
    /// Its randomness: which node it connects to, and what `choose` draws.
    pub seed: u64,
    /// How long connecting and logging in, or one send, may take before the connection is
    /// given up (a frozen or cut-off node answers nothing).
    pub request_timeout: Duration,
    /// How long one message is retried before the sender gives up on it and records it
    /// as unacknowledged.
    pub message_deadline: Duration,
    /// The pause after each acknowledged message.
    pub pause: Duration,
    /// The pause between two attempts at one message.
    pub retry_pause: Duration,
    /// On `UNAVAILABLE`, retry on the same connection (the node said it is busy moving
    /// data) instead of moving to another node.
    pub stay_on_unavailable: bool,
}

impl SenderOpts {
    /// Settings for `me`: 5 s per request, 60 s per message, short pauses, moving to
    /// another node on any error.
    pub fn new(me: &str, seed: u64) -> Self {
        Self {
            me: me.to_owned(),
            seed,
            request_timeout: Duration::from_secs(5),
            message_deadline: Duration::from_secs(60),
            pause: Duration::from_millis(2),
            retry_pause: Duration::from_millis(20),
            stay_on_unavailable: false,
        }
    }
}

/// One message a sender tried.
#[derive(Debug, Clone)]
pub struct Record {
    /// What it sent, and the acknowledgement if one came.
    pub sent: Sent,
    /// When the acknowledgement came.
    pub acked_at: Option<Instant>,
    /// How many times it was sent.
    pub attempts: u32,
}

/// Everything one sender did.
#[derive(Debug, Default)]
pub struct SenderLog {
    /// Its messages, in order.
    pub records: Vec<Record>,
    /// Failed attempts by cause (`timeout`, `closed`, an error code...).
    pub errors: BTreeMap<String, usize>,
}

impl SenderLog {
    /// How many of its messages were acknowledged.
    pub fn acked(&self) -> usize {
        self.records.iter().filter(|r| r.sent.ack.is_some()).count()
    }
}

/// A sender's log, shared with the test that reads it.
pub type Log = Arc<Mutex<SenderLog>>;

/// What went wrong with one attempt.
fn cause(e: &chat_client::ClientError) -> String {
    use chat_client::ClientError as E;
    match e {
        E::Server { code, .. } => format!("{code:?}"),
        E::Closed => "closed".into(),
        E::Timeout(_) => "timeout".into(),
        E::Io(_) => "io".into(),
        other => format!("{other}"),
    }
}

/// Connects to `addr` and logs `me` in, within `limit`.
async fn log_in(addr: &str, me: &str, limit: Duration) -> Result<Client, String> {
    let attempt = async {
        let (client, _pushes) = Client::connect(addr).await.map_err(|e| cause(&e))?;
        client
            .login(me, &crate::password(me))
            .await
            .map_err(|e| cause(&e))?;
        Ok(client)
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// Sends until `stop` is set, one message at a time to whatever `choose` draws (given the
/// sender's generator and the message's number). Message `i` has client message id
/// `ME-i` and text `ME #i`; it is resent with the same id until acknowledged or until
/// the message deadline passes, on any error through a new connection to another node
/// (picked at random). Every message tried ends up in `log`.
pub async fn sender(
    opts: SenderOpts,
    addrs: Addrs,
    stop: Arc<AtomicBool>,
    log: Log,
    mut choose: impl FnMut(&mut Rng, u64) -> Target,
) {
    let me = &opts.me;
    let mut rng = Rng::new(opts.seed);
    let mut client: Option<Client> = None;
    // The node of the connection that failed last: the next one is another.
    let mut avoid: Option<usize> = None;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let target = choose(&mut rng, i);
        let cmid = format!("{me}-{i}");
        let text = format!("{me} #{i}");
        let give_up = Instant::now() + opts.message_deadline;
        let mut attempts = 0;
        let mut ack = None;
        while Instant::now() < give_up {
            if client.as_ref().is_none_or(Client::is_closed) {
                let (node, addr) = {
                    let a = addrs.lock().expect("addrs");
                    let mut node = rng.below(a.len());
                    if a.len() > 1 && avoid == Some(node) {
                        node = (node + 1 + rng.below(a.len() - 1)) % a.len();
                    }
                    (node, a[node].clone())
                };
                avoid = Some(node);
                match log_in(&addr, me, opts.request_timeout).await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        *log.lock()
                            .expect("log")
                            .errors
                            .entry(format!("login {e}"))
                            .or_default() += 1;
                    }
                }
            }
            if let Some(c) = &client {
                attempts += 1;
                let send = async {
                    match &target {
                        Target::Private(to) => c.send_private_with_id(to, &cmid, &text).await,
                        Target::Group(group) => c.send_group_with_id(group, &cmid, &text).await,
                    }
                };
                match tokio::time::timeout(opts.request_timeout, send).await {
                    Ok(Ok(a)) => {
                        ack = Some(Ack {
                            message_id: a.message_id,
                            seq: a.seq,
                        });
                        break;
                    }
                    Ok(Err(e)) => {
                        *log.lock().expect("log").errors.entry(cause(&e)).or_default() += 1;
                        if !(opts.stay_on_unavailable && e.code() == Some(ErrorCode::Unavailable)) {
                            client = None;
                        }
                    }
                    Err(_) => {
                        *log.lock()
                            .expect("log")
                            .errors
                            .entry("timeout".into())
                            .or_default() += 1;
                        client = None;
                    }
                }
            }
            tokio::time::sleep(opts.retry_pause).await;
        }
        let acked_at = ack.as_ref().map(|_| Instant::now());
        log.lock().expect("log").records.push(Record {
            sent: Sent {
                from: me.clone(),
                target,
                text,
                ack,
            },
            acked_at,
            attempts,
        });
        i += 1;
        tokio::time::sleep(opts.pause).await;
    }
}

/// Every message the senders tried, each sender's in order.
pub fn sent(logs: &[Log]) -> Vec<Sent> {
    logs.iter()
        .flat_map(|l| {
            let l = l.lock().expect("log");
            l.records.iter().map(|r| r.sent.clone()).collect::<Vec<_>>()
        })
        .collect()
}

/// How many messages the senders have had acknowledged.
pub fn acked(logs: &[Log]) -> usize {
    logs.iter().map(|l| l.lock().expect("log").acked()).sum()
}

/// Logs `user` in through `addr` and reads its whole inbox, all within `limit`.
/// A read answered `UNAVAILABLE` (the partition is between holders or leaders) is
/// retried, as a client would, until `limit`.
pub async fn read_inbox(addr: &str, user: &str, limit: Duration) -> anyhow::Result<Vec<Entry>> {
    let once = || async {
        let (client, _pushes) = Client::connect(addr).await?;
        client.login(user, &crate::password(user)).await?;
        let inbox = client.sync_all(0).await?;
        Ok::<_, ClientError>(inbox.iter().map(Entry::from).collect())
    };
    let read = async {
        loop {
            match once().await {
                Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other.map_err(anyhow::Error::from),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| anyhow::anyhow!("reading {user}'s inbox through {addr} took over {limit:?}"))?
}

/// A stretch of a run, for availability figures: from `start` to `end` (a fault, from
/// when it began to when it was healed), then healed until `next` (`end` itself for a
/// stretch without a fault).
#[derive(Debug, Clone)]
pub struct Window {
    /// What happened.
    pub label: String,
    /// When it began.
    pub start: Instant,
    /// When it ended (healed).
    pub end: Instant,
    /// When the next stretch began (or the run ended).
    pub next: Instant,
}

/// The availability of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowStats {
    /// What happened.
    pub label: String,
    /// How long it lasted.
    pub duration: Duration,
    /// Acknowledgements during it.
    pub acks: usize,
    /// Acknowledgements per second during it.
    pub rate: f64,
    /// How soon after its end every sender was acknowledged again.
    pub recovery: Recovery,
}

/// How soon after a fault every sender was acknowledged again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recovery {
    /// After this long.
    After(Duration),
    /// Some sender was not, before the next fault began.
    NotBeforeNext,
    /// No fault: nothing to recover from.
    NoFault,
}

impl std::fmt::Display for WindowStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recovery = match self.recovery {
            Recovery::After(r) => format!(
                "; every sender acknowledged again {:.1} s after the heal",
                r.as_secs_f64()
            ),
            Recovery::NotBeforeNext => {
                "; some sender not acknowledged again before the next fault".to_owned()
            }
            Recovery::NoFault => String::new(),
        };
        write!(
            f,
            "{:<32} {:>5.1} s: {:>5} acks, {:>6.1} acks/s{recovery}",
            self.label,
            self.duration.as_secs_f64(),
            self.acks,
            self.rate
        )
    }
}

/// Acknowledgements per window, and the time every one of `senders` senders took to be
/// acknowledged again after it; `acks` holds (sender, when) pairs.
pub fn availability(windows: &[Window], acks: &[(usize, Instant)], senders: usize) -> Vec<WindowStats> {
    windows
        .iter()
        .map(|w| {
            let duration = w.end.saturating_duration_since(w.start);
            let count = acks.iter().filter(|(_, t)| *t >= w.start && *t < w.end).count();
            let mut recovery = if w.next > w.end {
                Recovery::After(Duration::ZERO)
            } else {
                Recovery::NoFault
            };
            for s in 0..senders {
                let first = acks
                    .iter()
                    .filter(|(who, t)| *who == s && *t >= w.end && *t < w.next)
                    .map(|(_, t)| t.saturating_duration_since(w.end))
                    .min();
                recovery = match (recovery, first) {
                    (Recovery::After(r), Some(f)) => Recovery::After(r.max(f)),
                    (Recovery::After(_), None) => Recovery::NotBeforeNext,
                    (other, _) => other,
                };
            }
            WindowStats {
                label: w.label.clone(),
                duration,
                acks: count,
                rate: count as f64 / duration.as_secs_f64().max(1e-3),
                recovery,
            }
        })
        .collect()
}

/// Every acknowledgement as (sender, when), senders numbered in `logs` order.
pub fn ack_times(logs: &[Log]) -> Vec<(usize, Instant)> {
    logs.iter()
        .enumerate()
        .flat_map(|(i, l)| {
            let l = l.lock().expect("log");
            l.records
                .iter()
                .filter_map(|r| r.acked_at)
                .map(|t| (i, t))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generator_replays_its_seed_and_shuffles_into_a_permutation() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut v: Vec<usize> = (0..10).collect();
        a.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert!((0..100).all(|_| a.below(7) < 7));
    }

    #[test]
    fn availability_counts_acks_in_each_window_and_the_slowest_senders_return() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let window = Window {
            label: "split".into(),
            start: at(0),
            end: at(2000),
            next: at(5000),
        };
        // Sender 0 acknowledged twice during the fault and 100 ms after it; sender 1 only
        // 700 ms after it (and again later).
        let acks = [
            (0, at(10)),
            (0, at(1500)),
            (0, at(2100)),
            (1, at(2700)),
            (1, at(2900)),
        ];
        let stats = availability(std::slice::from_ref(&window), &acks, 2);
        assert_eq!(stats[0].acks, 2);
        assert!((stats[0].rate - 1.0).abs() < 1e-9);
        assert_eq!(stats[0].recovery, Recovery::After(Duration::from_millis(700)));
        // A third sender that never came back before the next window: no recovery time.
        assert_eq!(
            availability(std::slice::from_ref(&window), &acks, 3)[0].recovery,
            Recovery::NotBeforeNext
        );
        // A stretch without a fault has nothing to recover from.
        let quiet = Window {
            next: window.end,
            ..window
        };
        assert_eq!(availability(&[quiet], &acks, 2)[0].recovery, Recovery::NoFault);
    }
}
