//! A replay filter on mac1 values, bounded FIFO (wgproxy keeps 262,144; see constants).
//!
//! A replayed initiation carries the same mac1 as the original. mac1 values are recorded only
//! when an initiation is admitted, so a racing copy from a spoofed source that was merely
//! challenged cannot poison the filter against the genuine one.

use std::collections::{HashSet, VecDeque};

#[derive(Debug)]
pub struct ReplayFilter {
    seen: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl ReplayFilter {
    pub fn new(capacity: usize) -> Self {
        ReplayFilter {
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
        }
    }

    pub fn contains(&self, mac1: &[u8; 16]) -> bool {
        self.seen.contains(&u128::from_le_bytes(*mac1))
    }

    /// Records a mac1, forgetting the oldest when full. Returns false if it was already there.
    pub fn insert(&mut self, mac1: &[u8; 16]) -> bool {
        let v = u128::from_le_bytes(*mac1);
        if !self.seen.insert(v) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.order.push_back(v);
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_repeats() {
        let mut f = ReplayFilter::new(4);
        assert!(!f.contains(&[1; 16]));
        assert!(f.insert(&[1; 16]));
        assert!(f.contains(&[1; 16]));
        assert!(!f.insert(&[1; 16]));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn forgets_oldest_when_full() {
        let mut f = ReplayFilter::new(3);
        for i in 0..5u8 {
            f.insert(&[i; 16]);
        }
        assert_eq!(f.len(), 3);
        assert!(!f.contains(&[0; 16]));
        assert!(!f.contains(&[1; 16]));
        assert!(f.contains(&[2; 16]) && f.contains(&[4; 16]));
    }
}
