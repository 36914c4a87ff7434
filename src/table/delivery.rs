//! Which endpoints each initiation was really sent to: the exact set, so that only they may
//! answer it (a response or a cookie reply from anyone else is `unknown_source`) and so that
//! two peers' initiations are never crossed. A hashed bit mask was tried first: after a big
//! fan-out most bits were set, and it let strangers answer and hid the right peer.
//!
//! Full, the table forgets its oldest half rather than refuse new records: refusing starved
//! every initiation that came after the first million copies (a cold start of 1000 pairs in
//! one group records ~1M; its last ~15 % of pairs got no copy at all and waited a retry),
//! while the oldest records are of copies nearly expired and mostly never answered.

use std::collections::HashMap;

use super::{Endpoint, Tick};
use crate::constants::{MAX_DELIVERIES, REKEY_TIMEOUT};
use crate::wire::Index;

/// A delivery lives as long as the initiation it records (REKEY_TIMEOUT).
#[derive(Debug, Default)]
pub struct Deliveries {
    map: HashMap<(Index, Endpoint), Tick, foldhash::fast::RandomState>,
}

impl Deliveries {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that initiation `index` went to `to`; when full, the oldest half of the
    /// records goes first. Always true (kept so the caller still says "not sent what it
    /// cannot record").
    pub fn record(&mut self, index: Index, to: Endpoint, now: Tick) -> bool {
        self.record_within(index, to, now, MAX_DELIVERIES)
    }

    fn record_within(&mut self, index: Index, to: Endpoint, now: Tick, cap: usize) -> bool {
        if self.map.len() >= cap && !self.map.contains_key(&(index, to)) {
            self.forget_oldest_half(now);
        }
        self.map.insert((index, to), now.after(REKEY_TIMEOUT));
        true
    }

    /// Drops expired records and then the oldest ones until at most half are left. Linear,
    /// and run once per `cap / 2` records at most, so a record costs O(1) amortised.
    fn forget_oldest_half(&mut self, now: Tick) {
        self.expired(now);
        let keep = self.map.len() / 2;
        // Every live record expires within REKEY_TIMEOUT of `now`: count them per tick, then
        // keep the newest `keep` (whole ticks; ties at the cut go too).
        let span = now.after(REKEY_TIMEOUT).0.saturating_sub(now.0) as usize + 1;
        let mut per_tick = vec![0usize; span];
        for until in self.map.values() {
            let slot = (until.0.saturating_sub(now.0) as usize).min(span - 1);
            per_tick[slot] += 1;
        }
        let mut kept = 0;
        let mut cut = span;
        while cut > 0 && kept + per_tick[cut - 1] <= keep {
            cut -= 1;
            kept += per_tick[cut];
        }
        let cut = Tick(now.0.saturating_add(cut as u32));
        self.map.retain(|_, until| *until >= cut);
    }

    /// Whether initiation `index` was sent to `to` (and the record is live).
    pub fn contains(&self, index: Index, to: &Endpoint, now: Tick) -> bool {
        self.map
            .get(&(index, *to))
            .is_some_and(|until| now < *until)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn expired(&mut self, now: Tick) {
        self.map.retain(|_, until| now < *until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ListenerId;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(ListenerId(0), format!("127.0.0.1:{port}").parse().unwrap())
    }

    #[test]
    fn exact_for_thousands_of_copies() {
        let t = Tick(1);
        let mut d = Deliveries::new();
        for p in 1..=2000 {
            assert!(d.record(Index(7), ep(p), t));
        }
        for p in 1..=2000 {
            assert!(d.contains(Index(7), &ep(p), t));
        }
        for p in 2001..=4000 {
            assert!(!d.contains(Index(7), &ep(p), t), "never sent to {p}");
        }
        assert!(!d.contains(Index(8), &ep(1), t));
        let later = t.after(REKEY_TIMEOUT);
        assert!(!d.contains(Index(7), &ep(1), later));
        d.expired(later);
        assert!(d.is_empty());
    }

    /// A full table takes new records and forgets its oldest: the newest are still known
    /// exactly, the oldest half is gone.
    #[test]
    fn full_table_forgets_its_oldest_half() {
        let mut d = Deliveries::new();
        let cap = 1000;
        // 20 records per tick over 50 ticks (5 s): all still live at the last one
        for i in 0..cap as u32 {
            assert!(d.record_within(Index(i), ep(1), Tick(1 + i / 20), cap));
        }
        assert_eq!(d.len(), cap);
        let now = Tick(50);
        assert!(d.record_within(Index(5000), ep(2), now, cap));
        assert!(d.len() <= cap / 2 + 1, "{}", d.len());
        assert!(d.contains(Index(5000), &ep(2), now));
        for i in 0..cap as u32 {
            if i < cap as u32 / 2 {
                assert!(!d.contains(Index(i), &ep(1), now), "old {i} forgotten");
            } else {
                assert!(d.contains(Index(i), &ep(1), now), "newer {i} kept");
            }
        }
        // a full table keeps taking records, never growing past its cap
        for i in 0..3 * cap as u32 {
            assert!(d.record_within(Index(10_000 + i), ep(3), now, cap));
            assert!(d.len() <= cap);
        }
        // full of records of this very tick: they all go (ties at the cut), and it goes on
        let mut same = Deliveries::new();
        for i in 0..(cap as u32 + 1) {
            assert!(same.record_within(Index(i), ep(3), now, cap));
        }
        assert!(same.len() <= cap && same.contains(Index(cap as u32), &ep(3), now));
    }
}
