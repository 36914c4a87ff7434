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
    /// (fingerprint, tick) per slot, `WAYS` slots a bucket; fingerprint 0 = empty.
    slots: Vec<(u32, Tick)>,
    hasher: foldhash::fast::FixedState,
}

/// Slots a source may use: a bucket is 64 bytes, one or two cache lines. One slot per source
/// (direct-mapped) locked two peers that hashed to the same slot out for good: each overwrote
/// the other, so neither ever looked like a retry (~15 % of 10k peers; one run in ten of an
/// 80-peer test). With eight ways that needs nine live sources in one bucket (four ways still
/// lost 0.25 % of 10k); a flood still only overwrites, oldest first.
const WAYS: usize = 8;

impl RecentSources {
    /// `seed` keeps the slot choice unpredictable to peers.
    pub fn new(seed: u64) -> Self {
        RecentSources {
            slots: vec![(0, Tick(0)); RECENT_SOURCES.next_multiple_of(WAYS)],
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    /// Records an initiation from `src` at `now`; returns whether it is a retry: the same
    /// address sent one between RETRY_MIN_GAP and RETRY_MAX_GAP ago. A source sending faster
    /// than RETRY_MIN_GAP keeps its first time, so a flood from one address qualifies at most
    /// once a second (and the per-source limiter holds it).
    pub fn retried(&mut self, src: SocketAddr, now: Tick) -> bool {
        let h = self.hasher.hash_one(src);
        let buckets = self.slots.len() / WAYS;
        let base = (h as usize % buckets) * WAYS;
        // never 0, so an empty slot never matches
        let fp = ((h >> 32) as u32).max(1);
        let bucket = &mut self.slots[base..base + WAYS];
        if let Some(slot) = bucket.iter_mut().find(|(f, _)| *f == fp) {
            let at = slot.1;
            let waited = now.at_least_since(at, RETRY_MIN_GAP);
            if waited {
                slot.1 = now;
            }
            return waited && !now.at_least_since(at, RETRY_MAX_GAP);
        }
        // a new source takes an empty slot, else the one written longest ago
        if let Some(slot) = bucket.iter_mut().min_by_key(|(_, at)| at.0) {
            *slot = (fp, now);
        }
        false
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

    #[test]
    fn sources_sharing_a_bucket_do_not_lock_each_other_out() {
        // 10k peers, each retrying every 5 s: every one of them is a retry the second time.
        let mut r = RecentSources::new(7);
        // addresses and ports as NATs hand them out: scattered (splitmix64)
        let addr = |i: u32| -> SocketAddr {
            let mut z = u64::from(i).wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            SocketAddr::from((std::net::Ipv4Addr::from(z as u32), (z >> 32) as u16))
        };
        let t = Tick(10);
        for i in 0..10_000 {
            assert!(!r.retried(addr(i), t));
        }
        let later = t.after(Duration::from_secs(5));
        let missed = (0..10_000).filter(|&i| !r.retried(addr(i), later)).count();
        // nine of 10k in one bucket of eight: expected well under once
        assert!(missed <= 4, "{missed} of 10000 retries missed");
    }

    #[test]
    fn a_peer_outlives_a_flood_smaller_than_the_memory() {
        let mut r = RecentSources::new(3);
        let peer: SocketAddr = "198.51.100.1:51820".parse().unwrap();
        let t = Tick(10);
        assert!(!r.retried(peer, t));
        // fresh spoofed sources, fewer than the memory holds: the peer's slot survives unless
        // its bucket fills with newer ones
        for i in 0..RECENT_SOURCES as u32 / 8 {
            let spoofed = SocketAddr::from((std::net::Ipv4Addr::from(0xc000_0000 + i), 1));
            r.retried(spoofed, t.after(Duration::from_millis(100)));
        }
        assert!(r.retried(peer, t.after(Duration::from_secs(5))));
    }
}
