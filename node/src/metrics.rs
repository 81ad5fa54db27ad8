//! Counters and a latency histogram, rendered in Prometheus' text format by the admin endpoint.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the send-latency histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets, updated with relaxed atomics.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// The node's counters; shared by every session and inbox.
#[derive(Debug, Default)]
pub struct Metrics {
    logins: AtomicU64,
    password_checks: AtomicU64,
    sends: AtomicU64,
    deliveries: AtomicU64,
    send_latency: LatencyHistogram,
    delivery_latency: LatencyHistogram,
}

/// Gauges read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Inbox entries this node's records hold (every replica here, led or not).
    pub inbox_entries: u64,
    /// Open client connections.
    pub connections: u64,
    /// Users with at least one session here.
    pub online_users: u64,
    /// Peers answering heartbeats.
    pub peers_up: u64,
    /// Peers not answering.
    pub peers_down: u64,
    /// Bytes sled uses on disk.
    pub sled_bytes: u64,
    /// The Raft core as this node sees it.
    pub raft: crate::consensus::driver::Status,
    /// Requests waiting for an answer from another node.
    pub requests_waiting: u64,
    /// Syncs to disk so far: the database's and the Raft log's.
    pub storage_syncs: u64,
}

impl Metrics {
    /// A login succeeded.
    pub fn login(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
    }

    /// A message was acknowledged as durable, `took` after the request arrived.
    pub fn sent(&self, took: Duration) {
        self.sends.fetch_add(1, Ordering::Relaxed);
        self.send_latency.observe(took);
    }

    /// A password was verified against a stored (or the dummy) hash.
    pub fn password_checked(&self) {
        self.password_checks.fetch_add(1, Ordering::Relaxed);
    }

    /// An inbox entry was pushed to a session, `took` after it reached the inbox.
    pub fn delivered(&self, took: Duration) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        self.delivery_latency.observe(took);
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, g: Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        };
        metric(
            "chat_connections",
            "gauge",
            "Open client connections.",
            g.connections,
        );
        metric(
            "chat_online_users",
            "gauge",
            "Users with a session on this node.",
            g.online_users,
        );
        let raft = &g.raft;
        metric(
            "chat_raft_groups",
            "gauge",
            "Raft groups (partitions and the metadata group) with a replica on this node.",
            raft.groups as u64,
        );
        metric(
            "chat_raft_groups_led",
            "gauge",
            "Raft groups led by this node.",
            raft.leading as u64,
        );
        metric(
            "chat_raft_groups_leaderless",
            "gauge",
            "Raft groups whose replica here knows no leader.",
            raft.leaderless as u64,
        );
        metric(
            "chat_raft_groups_unsettled",
            "gauge",
            "Raft groups led here that are not whole (a voter behind or silent, or a move under way).",
            raft.unsettled as u64,
        );
        metric(
            "chat_requests_waiting",
            "gauge",
            "Requests waiting for an answer from another node.",
            g.requests_waiting,
        );
        metric(
            "chat_sled_size_bytes",
            "gauge",
            "Bytes the database uses on disk.",
            g.sled_bytes,
        );
        metric(
            "chat_storage_syncs_total",
            "counter",
            "Syncs to disk of the Raft log and of the database (flush, then fdatasync), one per round that wrote.",
            g.storage_syncs,
        );
        metric(
            "chat_inbox_messages",
            "gauge",
            "Messages stored in the inboxes this node has a replica of (mailbox sizes, summed).",
            g.inbox_entries,
        );
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            "chat_logins_total",
            "counter",
            "Successful logins.",
            load(&self.logins),
        );
        metric(
            "chat_password_checks_total",
            "counter",
            "Passwords verified at login (wrong ones and unknown users included).",
            load(&self.password_checks),
        );
        metric(
            "chat_messages_in_total",
            "counter",
            "Messages accepted and made durable.",
            load(&self.sends),
        );
        metric(
            "chat_messages_out_total",
            "counter",
            "Messages pushed to sessions.",
            load(&self.deliveries),
        );
        let _ = writeln!(
            out,
            "# HELP chat_cluster_peers Known peers by state.\n# TYPE chat_cluster_peers gauge\n\
             chat_cluster_peers{{state=\"up\"}} {}\nchat_cluster_peers{{state=\"down\"}} {}",
            g.peers_up, g.peers_down
        );
        self.send_latency.render(
            &mut out,
            "chat_send_latency_seconds",
            "From a send request to its durable acknowledgement.",
        );
        self.delivery_latency.render(
            &mut out,
            "chat_delivery_latency_seconds",
            "From a message reaching its inbox to its push to a session.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let m = Metrics::default();
        m.sent(Duration::from_micros(300));
        m.sent(Duration::from_millis(3));
        m.sent(Duration::from_secs(10));
        let text = m.render(Gauges::default());
        assert!(
            text.contains("chat_send_latency_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chat_send_latency_seconds_bucket{le=\"0.005\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("chat_send_latency_seconds_bucket{le=\"2.5\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("chat_send_latency_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("chat_messages_in_total 3\n"), "{text}");
        m.delivered(Duration::from_millis(30));
        let text = m.render(Gauges::default());
        assert!(
            text.contains("chat_delivery_latency_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("chat_delivery_latency_seconds_count 1\n"), "{text}");
    }
}
