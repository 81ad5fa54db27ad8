//! What the load generators (`chat-bench` and `xmpp-bench`) share: a server process's
//! memory and CPU time read from /proc, its peak memory sampled during a run, and the
//! progress bar of a timed run, and the pacing of a fixed-rate run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A memory figure of a process from /proc (`VmRSS`, `VmHWM`...), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of a process now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// CPU time a process has used so far (user and system), in microseconds: /proc counts
/// it in USER_HZ ticks, which Linux fixes at 100 a second for /proc.
pub fn cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000)
}

/// Samples the resident memory of `pid` (if given) every 200 ms until `until`; the
/// task returns the peak, in KiB.
pub fn sample_peak_rss(pid: Option<u32>, until: Instant) -> Option<tokio::task::JoinHandle<u64>> {
    pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0;
            while Instant::now() < until {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    })
}

/// How a fixed-rate run spreads its sends over time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Pacing {
    /// Connection `i` of `n` starts `i/n` of a period after the first, so that the sends
    /// of all connections together are evenly spaced (5,000 msg/s: one every 200 µs), as
    /// independent users' sends are.
    #[default]
    Spread,
    /// Every connection starts at once, so that each period begins with a burst of one
    /// send per connection (100 at once every 20 ms at 100 connections and 5,000 msg/s):
    /// what these generators did before 2026-12-02.
    InPhase,
}

/// The ticks of connection `index` of `connections` sending at its share of `rate`
/// messages a second in all, from `start` on; `None` at rate 0 (as fast as possible).
/// A late tick is sent late, not twice.
pub fn ticks(
    rate: u64,
    connections: usize,
    index: usize,
    start: Instant,
    pacing: Pacing,
) -> Option<tokio::time::Interval> {
    if rate == 0 {
        return None;
    }
    let period = Duration::from_secs_f64(connections as f64 / rate as f64);
    let first = start + first_tick(period, connections, index, pacing);
    let mut t = tokio::time::interval_at(first.into(), period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Some(t)
}

/// How long after the run's start connection `index` of `connections` sends first.
fn first_tick(period: Duration, connections: usize, index: usize, pacing: Pacing) -> Duration {
    match pacing {
        Pacing::Spread => period.mul_f64(index as f64 / connections.max(1) as f64),
        Pacing::InPhase => Duration::ZERO,
    }
}

/// A progress bar of a run of `seconds` from `origin` to `stop_at`, showing how many
/// sends were acknowledged so far.
pub struct Progress {
    bar: indicatif::ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    /// Shows the bar and keeps it current until `stop_at`.
    pub fn start(seconds: u64, origin: Instant, stop_at: Instant, acked: Arc<AtomicU64>) -> Self {
        let bar = indicatif::ProgressBar::new(seconds);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} s  {msg}")
                .expect("valid template"),
        );
        let shown = bar.clone();
        let ticker = tokio::spawn(async move {
            while Instant::now() < stop_at {
                tokio::time::sleep(Duration::from_millis(250)).await;
                shown.set_position(origin.elapsed().as_secs().min(seconds));
                shown.set_message(format!("{} acknowledged", acked.load(Ordering::Relaxed)));
            }
        });
        Self { bar, ticker }
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_a_process_grows_while_it_computes() {
        let me = std::process::id();
        let before = cpu_us(me).expect("this process's CPU time");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut x = 0u64;
        loop {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            if cpu_us(me).expect("this process's CPU time") >= before + 50_000 {
                break;
            }
            assert!(Instant::now() < deadline, "CPU time did not grow while computing");
        }
        assert!(cpu_us(u32::MAX).is_none(), "no such process");
    }

    #[test]
    fn spread_connections_send_evenly_over_the_period_and_in_phase_ones_at_once() {
        // 5,000 msg/s over 100 connections: each sends every 20 ms.
        let period = Duration::from_millis(20);
        let spread: Vec<Duration> = (0..100)
            .map(|i| first_tick(period, 100, i, Pacing::Spread))
            .collect();
        assert_eq!(spread[0], Duration::ZERO);
        for pair in spread.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap.abs_diff(Duration::from_micros(200)) < Duration::from_micros(1),
                "{gap:?}"
            );
        }
        assert!(spread[99] < period);
        assert!((0..100).all(|i| first_tick(period, 100, i, Pacing::InPhase).is_zero()));
    }

    #[test]
    fn memory_figures_of_a_process_are_read_and_a_missing_one_is_none() {
        let me = std::process::id();
        let rss = rss_kib(me).expect("this process's RSS");
        let peak = status_kib(me, "VmHWM").expect("this process's peak RSS");
        assert!(rss > 0 && peak >= rss, "rss {rss} KiB, peak {peak} KiB");
        assert!(status_kib(me, "NoSuchField").is_none());
        assert!(rss_kib(u32::MAX).is_none(), "no such process");
    }
}
