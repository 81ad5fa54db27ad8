//! Throttling of password guessing and of sign-ups: failed logins per account and per
//! client address get increasing delays, registrations per client address a token
//! bucket. Pure bookkeeping with the clock passed in (milliseconds); sessions ask before
//! they hash anything, so a refused attempt costs the node no argon2 work and other
//! users are not slowed.
//!
//! The counts are per node: an attacker spreading over the cluster's nodes gets each
//! node's allowance, which is still far below what argon2 alone would allow.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

/// Most keys one table tracks; past it, expired ones are dropped, and if none has
/// expired a new key is not tracked (memory stays bounded whatever the attacker sends).
const MAX_KEYS: usize = 100_000;

/// How failed attempts on one key are slowed down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Failures allowed before any delay; 0 turns the limit off.
    pub free: u32,
    /// The delay after the first failure past `free`; each further one doubles it.
    pub first_delay_ms: u64,
    /// The longest delay.
    pub max_delay_ms: u64,
    /// A key with no failure for this long starts again from nothing.
    pub forget_after_ms: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    blocked_until: u64,
    last: u64,
}

/// Failed attempts per key, with [`Backoff`]'s delays.
#[derive(Debug)]
pub struct FailureTable<K> {
    backoff: Backoff,
    keys: HashMap<K, Failures>,
}

impl<K: Hash + Eq + Clone> FailureTable<K> {
    /// An empty table.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            keys: HashMap::new(),
        }
    }

    /// `Err(retry_after_ms)` while `key` is held back.
    pub fn check(&self, key: &K, now: u64) -> Result<(), u64> {
        match self.keys.get(key) {
            Some(f) if f.blocked_until > now => Err(f.blocked_until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt.
    pub fn failed(&mut self, key: &K, now: u64) {
        let b = self.backoff;
        if b.free == 0 {
            return;
        }
        if !self.keys.contains_key(key) && !make_room(&mut self.keys, |f| now >= f.last + b.forget_after_ms) {
            return;
        }
        let f = self.keys.entry(key.clone()).or_default();
        if now >= f.last + b.forget_after_ms {
            *f = Failures::default();
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count > b.free {
            let doublings = (f.count - b.free - 1).min(32);
            let delay = b
                .first_delay_ms
                .saturating_mul(1 << doublings)
                .min(b.max_delay_ms);
            f.blocked_until = now + delay;
        }
    }

    /// Records a successful attempt: the key starts again from nothing.
    pub fn succeeded(&mut self, key: &K) {
        self.keys.remove(key);
    }
}

/// A token bucket per key: `burst` at once, then one every `refill_ms`.
#[derive(Debug)]
pub struct RateTable<K> {
    burst: u32,
    refill_ms: u64,
    /// Tokens left and when they were counted.
    keys: HashMap<K, (u32, u64)>,
}

impl<K: Hash + Eq + Clone> RateTable<K> {
    /// `per_minute` a minute, and as many at once; 0 turns the limit off.
    pub fn per_minute(per_minute: u32) -> Self {
        Self {
            burst: per_minute,
            refill_ms: 60_000 / u64::from(per_minute.max(1)),
            keys: HashMap::new(),
        }
    }

    /// Takes one token for `key`, or says how long until one is there.
    pub fn take(&mut self, key: &K, now: u64) -> Result<(), u64> {
        if self.burst == 0 {
            return Ok(());
        }
        let (burst, refill) = (self.burst, self.refill_ms);
        let full_after = u64::from(burst) * refill;
        if !self.keys.contains_key(key) && !make_room(&mut self.keys, |(_, at)| now >= at + full_after) {
            return Ok(());
        }
        let (tokens, at) = self.keys.entry(key.clone()).or_insert((burst, now));
        let earned = now.saturating_sub(*at) / refill;
        if earned > 0 {
            *tokens = (u64::from(*tokens) + earned).min(u64::from(burst)) as u32;
            *at += earned * refill;
        }
        if *tokens == 0 {
            return Err(*at + refill - now);
        }
        if *tokens == burst {
            // A full bucket starts counting its refill from now.
            *at = now;
        }
        *tokens -= 1;
        Ok(())
    }
}

/// Makes room for one more key, dropping the expired ones when the table is full;
/// false if none could be dropped.
fn make_room<K, V>(keys: &mut HashMap<K, V>, expired: impl Fn(&V) -> bool) -> bool {
    if keys.len() < MAX_KEYS {
        return true;
    }
    keys.retain(|_, v| !expired(v));
    keys.len() < MAX_KEYS
}

/// What a node holds back: logins per account and per address, sign-ups per address.
#[derive(Debug)]
pub struct Guard {
    accounts: FailureTable<String>,
    addresses: FailureTable<IpAddr>,
    signups: RateTable<IpAddr>,
}

/// Delays of failed logins: 5 s after the first failure past the free ones, doubling up
/// to 5 minutes; forgotten after 15 quiet minutes.
const FIRST_DELAY_MS: u64 = 5_000;
const MAX_DELAY_MS: u64 = 5 * 60_000;
const FORGET_AFTER_MS: u64 = 15 * 60_000;

impl Guard {
    /// Failed logins allowed per account and per address before delays start (0: no
    /// limit), and sign-ups per address per minute (0: no limit).
    pub fn new(per_account: u32, per_address: u32, signups_per_minute: u32) -> Self {
        let backoff = |free| Backoff {
            free,
            first_delay_ms: FIRST_DELAY_MS,
            max_delay_ms: MAX_DELAY_MS,
            forget_after_ms: FORGET_AFTER_MS,
        };
        Self {
            accounts: FailureTable::new(backoff(per_account)),
            addresses: FailureTable::new(backoff(per_address)),
            signups: RateTable::per_minute(signups_per_minute),
        }
    }

    /// `Err(retry_after_ms)` while logins of `user` or from `addr` are held back.
    pub fn may_log_in(&self, user: &str, addr: IpAddr, now: u64) -> Result<(), u64> {
        let account = self.accounts.check(&user.to_owned(), now);
        let address = self.addresses.check(&addr, now);
        match (account, address) {
            (Ok(()), Ok(())) => Ok(()),
            (a, b) => Err(a.err().unwrap_or(0).max(b.err().unwrap_or(0))),
        }
    }

    /// A login of `user` from `addr` failed on its credentials.
    pub fn login_failed(&mut self, user: &str, addr: IpAddr, now: u64) {
        self.accounts.failed(&user.to_owned(), now);
        self.addresses.failed(&addr, now);
    }

    /// A login of `user` succeeded: its account starts again from nothing (the
    /// address's failures stay: they may be guesses at other accounts).
    pub fn login_succeeded(&mut self, user: &str) {
        self.accounts.succeeded(&user.to_owned());
    }

    /// Takes a sign-up from `addr`, or says how long until one is allowed.
    pub fn may_register(&mut self, addr: IpAddr, now: u64) -> Result<(), u64> {
        self.signups.take(&addr, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(free: u32) -> Backoff {
        Backoff {
            free,
            first_delay_ms: 1_000,
            max_delay_ms: 8_000,
            forget_after_ms: 60_000,
        }
    }

    #[test]
    fn failures_past_the_free_ones_hold_a_key_back_longer_each_time() {
        let mut t = FailureTable::new(backoff(3));
        let k = "alice".to_owned();
        for i in 0..3 {
            t.failed(&k, i);
            assert_eq!(t.check(&k, i), Ok(()), "free failure {i}");
        }
        t.failed(&k, 10);
        assert_eq!(t.check(&k, 10), Err(1_000));
        assert_eq!(t.check(&k, 1_010), Ok(()));
        t.failed(&k, 1_010);
        assert_eq!(t.check(&k, 1_010), Err(2_000));
        t.failed(&k, 3_010);
        assert_eq!(t.check(&k, 3_010), Err(4_000));
        t.failed(&k, 7_010);
        t.failed(&k, 15_010);
        assert_eq!(t.check(&k, 15_010), Err(8_000), "capped");
        // Another key is not held back.
        assert_eq!(t.check(&"bob".to_owned(), 15_010), Ok(()));
        // A success, or a long quiet, starts again from nothing.
        t.succeeded(&k);
        assert_eq!(t.check(&k, 15_010), Ok(()));
        for i in 0..4 {
            t.failed(&k, 20_000 + i);
        }
        assert!(t.check(&k, 20_003).is_err());
        t.failed(&k, 200_000);
        assert_eq!(t.check(&k, 200_000), Ok(()), "forgotten after a quiet minute");
    }

    #[test]
    fn no_free_failures_means_no_limit() {
        let mut t = FailureTable::new(backoff(0));
        for i in 0..100 {
            t.failed(&1u8, i);
        }
        assert_eq!(t.check(&1u8, 100), Ok(()));
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_per_refill() {
        let mut t = RateTable::per_minute(3);
        let k = 7u8;
        for _ in 0..3 {
            assert_eq!(t.take(&k, 0), Ok(()));
        }
        assert_eq!(t.take(&k, 0), Err(20_000));
        assert_eq!(t.take(&k, 19_999), Err(1));
        assert_eq!(t.take(&k, 20_000), Ok(()));
        assert_eq!(t.take(&k, 20_000), Err(20_000));
        // Refilled to the burst, never beyond.
        for _ in 0..3 {
            assert_eq!(t.take(&k, 1_000_000), Ok(()));
        }
        assert!(t.take(&k, 1_000_000).is_err());
        assert_eq!(t.take(&8u8, 1_000_000), Ok(()), "another key has its own bucket");
        let mut off = RateTable::per_minute(0);
        for _ in 0..1000 {
            assert_eq!(off.take(&k, 0), Ok(()));
        }
    }

    #[test]
    fn a_full_table_drops_expired_keys_and_stops_tracking_rather_than_grow() {
        let mut t = FailureTable::new(backoff(1));
        for i in 0..MAX_KEYS as u32 {
            t.failed(&i, 0);
        }
        t.failed(&u32::MAX, 1);
        assert_eq!(
            t.keys.len(),
            MAX_KEYS,
            "nothing expired: the new key is not tracked"
        );
        t.failed(&u32::MAX, 60_000);
        assert_eq!(t.keys.len(), 1, "the expired ones are dropped");
    }

    #[test]
    fn a_guard_holds_back_an_account_and_an_address_apart() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut g = Guard::new(2, 4, 2);
        for _ in 0..3 {
            g.login_failed("alice", a, 0);
        }
        assert!(g.may_log_in("alice", b, 0).is_err(), "the account, from anywhere");
        assert_eq!(
            g.may_log_in("bob", a, 0),
            Ok(()),
            "the address is below its limit"
        );
        g.login_failed("carol", a, 0);
        g.login_failed("dave", a, 0);
        assert!(
            g.may_log_in("erin", a, 0).is_err(),
            "the address, for any account"
        );
        assert_eq!(g.may_log_in("erin", b, 0), Ok(()));
        g.login_succeeded("alice");
        assert_eq!(g.may_log_in("alice", b, 0), Ok(()));
        assert_eq!(g.may_register(a, 0), Ok(()));
        assert_eq!(g.may_register(a, 0), Ok(()));
        assert_eq!(g.may_register(a, 0), Err(30_000));
        assert_eq!(g.may_register(b, 0), Ok(()));
    }
}
