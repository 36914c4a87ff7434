//! A small fixed memory of recent unproven initiation sources, to tell a WireGuard peer (it
//! retries from the same address every REKEY_TIMEOUT) from a spoofer cycling fresh source
//! addresses (it never comes back). Fixed size, so a flood costs no memory: it can only
//! overwrite slots, which makes legit retries look new again (open mode then waits for the
//! next one; allow-lists have the cookie).

use std::hash::BuildHasher;
use std::net::SocketAddr;

use crate::constants::{RECENT_SOURCES, RETRY_MAX_GAP, RETRY_MIN_GAP};
use crate::table::Tick;

pub struct RecentSources {
    /// (fingerprint, tick) per slot; tick 0 = empty.
    slots: Vec<(u32, Tick)>,
    hasher: foldhash::fast::FixedState,
}

impl RecentSources {
    /// `seed` keeps the slot choice unpredictable to peers.
    pub fn new(seed: u64) -> Self {
        RecentSources {
            slots: vec![(0, Tick(0)); RECENT_SOURCES],
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    /// Records an initiation from `src` at `now`; returns whether it is a retry: the same
    /// address sent one between RETRY_MIN_GAP and RETRY_MAX_GAP ago. A source sending faster
    /// than RETRY_MIN_GAP keeps its first time, so a flood from one address qualifies at most
    /// once a second (and the per-source limiter holds it).
    pub fn retried(&mut self, src: SocketAddr, now: Tick) -> bool {
        let h = self.hasher.hash_one(src);
        let slot = (h as usize) % self.slots.len();
        let fp = (h >> 32) as u32;
        let (old_fp, at) = self.slots[slot];
        let same = at != Tick(0) && old_fp == fp;
        let retry =
            same && now.at_least_since(at, RETRY_MIN_GAP) && !now.at_least_since(at, RETRY_MAX_GAP);
        if !same || now.at_least_since(at, RETRY_MIN_GAP) {
            self.slots[slot] = (fp, now);
        }
        retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_retry_after_a_pause_counts_a_flood_does_not() {
        let mut r = RecentSources::new(1);
        let a: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let t = Tick(10);
        assert!(!r.retried(a, t));
        assert!(
            !r.retried(a, t.after(Duration::from_millis(100))),
            "too soon"
        );
        assert!(r.retried(a, t.after(Duration::from_secs(5))));
        assert!(r.retried(a, t.after(Duration::from_secs(10))));
        assert!(
            !r.retried(a, t.after(Duration::from_secs(40))),
            "too long ago"
        );
        // A flood from one address: each packet within RETRY_MIN_GAP of the last kept one.
        let b: SocketAddr = "192.0.2.2:5000".parse().unwrap();
        let mut any = false;
        for ms in 0..500u64 {
            any |= r.retried(b, t.after(Duration::from_millis(ms)));
        }
        assert!(!any);
        // Another port is another source.
        let c: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        assert!(!r.retried(c, t.after(Duration::from_secs(5))));
    }
}
