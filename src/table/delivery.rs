//! Which endpoints each initiation was really sent to: the exact set, so that only they may
//! answer it (a response or a cookie reply from anyone else is `unknown_source`) and so that
//! two peers' initiations are never crossed. A hashed bit mask was tried first: after a big
//! fan-out most bits were set, and it let strangers answer and hid the right peer.

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

    /// Records that initiation `index` went to `to`. False when the table is full: the
    /// caller must not send what it cannot record.
    pub fn record(&mut self, index: Index, to: Endpoint, now: Tick) -> bool {
        if self.map.len() >= MAX_DELIVERIES && !self.map.contains_key(&(index, to)) {
            return false;
        }
        self.map.insert((index, to), now.after(REKEY_TIMEOUT));
        true
    }

    pub fn has_room(&self) -> bool {
        self.map.len() < MAX_DELIVERIES
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
}
