//! Token buckets: one global for fan-out copies, one per source for handshakes under load
//! (wireguard-go `ratelimiter.go`). Time is passed in, never read, so tests step it by hand.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A token bucket counting in nanoseconds of "cost", like wireguard-go's limiter.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Cost of one token, in nanoseconds.
    cost: u64,
    /// Capacity, in nanoseconds.
    max: u64,
    /// Current balance, in nanoseconds.
    balance: u64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second (at least 1), holding at most `burst` tokens (at least 1).
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let cost = NANOS_PER_SECOND / u64::from(rate.max(1));
        let max = cost.saturating_mul(u64::from(burst.max(1)));
        TokenBucket {
            cost,
            max,
            balance: max,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now.max(self.last);
        let add = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.balance = self.balance.saturating_add(add).min(self.max);
    }

    /// Takes one token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.balance >= self.cost {
            self.balance -= self.cost;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, or what is left when there are fewer (work already done is paid for
    /// even if it overdraws the balance).
    pub fn take_up_to(&mut self, n: u32, now: Instant) {
        self.refill(now);
        self.balance = self
            .balance
            .saturating_sub(self.cost.saturating_mul(u64::from(n)));
    }

    /// Whether a token is there, without taking it.
    pub fn peek(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.balance >= self.cost
    }

    /// Whether the bucket has refilled completely (and so can be forgotten).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.balance == self.max
    }
}

/// Per-source buckets. An unproven source is keyed on its IPv4 address or IPv6 /64, as
/// WireGuard does. A source that proved its exact address with our cookie is keyed on that
/// address and port: the cookie shows it receives there, and many peers behind one NAT (one
/// public IP, many ports) then each get their own budget instead of sharing 20/s.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: u32,
    burst: u32,
    buckets: HashMap<SourceKey, TokenBucket>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    Network(u128),
    Address(u128, u16),
}

/// Sources tracked at most; past it, the limiter forgets full buckets first, then refuses.
const MAX_SOURCES: usize = 1 << 16;

fn ip_bits(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), true),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), true),
            None => (u128::from(v6), false),
        },
    }
}

impl SourceLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        SourceLimiter {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    fn key(src: SocketAddr, proven: bool) -> SourceKey {
        let (bits, v4) = ip_bits(src.ip());
        if proven {
            SourceKey::Address(bits, src.port())
        } else if v4 {
            SourceKey::Network(bits)
        } else {
            // The /64, with a bit no IPv4 key has so the two spaces never collide.
            SourceKey::Network((bits & !((1u128 << 64) - 1)) | 1 << 32)
        }
    }

    /// Takes a token for `src`; `proven` says it answered our cookie at exactly this address.
    pub fn allow(&mut self, src: SocketAddr, proven: bool, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES {
            self.sweep(now);
        }
        let key = Self::key(src, proven);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.allow(now);
        }
        if self.buckets.len() >= MAX_SOURCES {
            return false;
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let ok = bucket.allow(now);
        self.buckets.insert(key, bucket);
        ok
    }

    /// Forgets sources whose bucket is full again.
    pub fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// One token bucket per responder key (slot 0: open mode, where no key is known), for the
/// copies of unproven sources' initiations that may reach that key's holder or candidates.
/// An empty bucket is what "under load" means for that key.
#[derive(Debug)]
pub struct KeyBudgets {
    rate: u32,
    burst: u32,
    pinned_rate: u32,
    pinned_burst: u32,
    buckets: Vec<Option<TokenBucket>>,
}

impl KeyBudgets {
    /// `rate`/`burst` for a peer's key, `pinned_rate`/`pinned_burst` for a key the operator
    /// pinned (a proxy server, a port's responder): a server takes many clients.
    pub fn new(
        keys: usize,
        (rate, burst): (u32, u32),
        (pinned_rate, pinned_burst): (u32, u32),
    ) -> Self {
        KeyBudgets {
            rate,
            burst,
            pinned_rate,
            pinned_burst,
            buckets: vec![None; keys + 1],
        }
    }

    /// Room for `keys` key slots (a reload appends keys; existing buckets stay).
    pub fn grow(&mut self, keys: usize) {
        if self.buckets.len() < keys + 1 {
            self.buckets.resize(keys + 1, None);
        }
    }

    fn slot(
        &mut self,
        key: Option<crate::admit::KeyId>,
        pinned: bool,
        now: Instant,
    ) -> Option<&mut TokenBucket> {
        let i = key.map_or(0, |k| k.index() + 1);
        let (rate, burst) = if pinned {
            (self.pinned_rate, self.pinned_burst)
        } else {
            (self.rate, self.burst)
        };
        self.buckets
            .get_mut(i)
            .map(|b| b.get_or_insert_with(|| TokenBucket::new(rate, burst, now)))
    }

    /// Whether `key` has a token left, taking none: a spent budget means someone is sending
    /// more initiations for that key than its responder would take (an attack, likely).
    pub fn has_token(
        &mut self,
        key: Option<crate::admit::KeyId>,
        pinned: bool,
        now: Instant,
    ) -> bool {
        self.slot(key, pinned, now).is_some_and(|b| b.peek(now))
    }

    /// Takes a copy's token for `key` (`pinned`: the key is a server's or a port's).
    pub fn allow(&mut self, key: Option<crate::admit::KeyId>, pinned: bool, now: Instant) -> bool {
        self.slot(key, pinned, now).is_some_and(|b| b.allow(now))
    }
}

/// Tracks the initiation rate to decide "under load" (wireguard-go `IsUnderLoad`): once the
/// count in the current second reaches the threshold, the state holds for
/// `UNDER_LOAD_AFTER_TIME` after the last second that reached it.
#[derive(Debug)]
pub struct LoadTracker {
    threshold: u32,
    hold: Duration,
    window_start: Option<Instant>,
    count: u32,
    until: Option<Instant>,
}

impl LoadTracker {
    pub fn new(threshold: u32, hold: Duration) -> Self {
        LoadTracker {
            threshold,
            hold,
            window_start: None,
            count: 0,
            until: None,
        }
    }

    /// Counts one initiation.
    pub fn record(&mut self, now: Instant) {
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {}
            _ => {
                self.window_start = Some(now);
                self.count = 0;
            }
        }
        self.count = self.count.saturating_add(1);
        if self.count >= self.threshold {
            self.until = Some(now + self.hold);
        }
    }

    pub fn is_under_load(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        for _ in 0..5 {
            assert!(b.allow(t0));
        }
        assert!(!b.allow(t0));
        // One token per 100 ms.
        assert!(!b.allow(t0 + Duration::from_millis(99)));
        assert!(b.allow(t0 + Duration::from_millis(100)));
        assert!(!b.allow(t0 + Duration::from_millis(100)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(b.allow(later));
        }
        assert!(!b.allow(later));
    }

    #[test]
    fn bucket_tolerates_time_going_backwards() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1, 1, t0);
        assert!(b.allow(t0));
        assert!(!b.allow(t0 - Duration::from_secs(5)));
    }

    #[test]
    fn sources_are_independent_and_v6_uses_slash_64() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(20, 5);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let a2: SocketAddr = "127.0.0.1:2000".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1000".parse().unwrap();
        for _ in 0..5 {
            assert!(l.allow(a, false, t0));
        }
        assert!(!l.allow(a, false, t0));
        assert!(
            !l.allow(a2, false, t0),
            "unproven: the IP shares one bucket"
        );
        assert!(l.allow(b, false, t0));
        let v6a: SocketAddr = "[2001:db8::1]:1".parse().unwrap();
        let v6b: SocketAddr = "[2001:db8::ffff:1]:2".parse().unwrap();
        for _ in 0..5 {
            assert!(l.allow(v6a, false, t0));
        }
        assert!(!l.allow(v6b, false, t0), "same /64 shares a bucket");
        // A v4-mapped address is the v4 address.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:3000".parse().unwrap();
        assert!(!l.allow(mapped, false, t0));
        l.sweep(t0 + Duration::from_secs(1));
        assert!(l.is_empty());
    }

    #[test]
    fn proven_sources_behind_one_ip_each_get_a_budget() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(20, 5);
        for port in 1000..1100u16 {
            let src = SocketAddr::from(([198, 51, 100, 7], port));
            for _ in 0..5 {
                assert!(l.allow(src, true, t0), "port {port}");
            }
            assert!(!l.allow(src, true, t0));
        }
    }

    #[test]
    fn key_budgets_are_per_key() {
        let t0 = Instant::now();
        let k1 = crate::admit::KeyId::new(0);
        let k2 = crate::admit::KeyId::new(1);
        let mut b = KeyBudgets::new(2, (5, 10), (20, 40));
        for _ in 0..10 {
            assert!(b.allow(Some(k1), false, t0));
        }
        assert!(!b.allow(Some(k1), false, t0));
        assert!(b.allow(Some(k2), false, t0));
        assert!(b.allow(None, false, t0));
        assert!(b.allow(Some(k1), false, t0 + Duration::from_millis(200)));
        // A key beyond the directory has no budget at all.
        assert!(!b.allow(Some(crate::admit::KeyId::new(7)), false, t0));
        // a pinned key (a server's) gets the server-sized budget
        let mut b = KeyBudgets::new(2, (5, 10), (20, 40));
        for _ in 0..40 {
            assert!(b.allow(Some(k2), true, t0));
        }
        assert!(!b.allow(Some(k2), true, t0));
    }

    #[test]
    fn load_tracker_threshold_and_hold() {
        let t0 = Instant::now();
        let mut l = LoadTracker::new(3, Duration::from_secs(1));
        l.record(t0);
        l.record(t0);
        assert!(!l.is_under_load(t0));
        l.record(t0 + Duration::from_millis(10));
        assert!(l.is_under_load(t0 + Duration::from_millis(10)));
        assert!(l.is_under_load(t0 + Duration::from_millis(1009)));
        assert!(!l.is_under_load(t0 + Duration::from_millis(1011)));
        // A new second starts the count again.
        let t1 = t0 + Duration::from_secs(5);
        l.record(t1);
        l.record(t1);
        assert!(!l.is_under_load(t1));
    }
}
