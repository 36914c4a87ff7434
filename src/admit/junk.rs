//! A small fixed memory of the AmneziaWG junk each source just sent. An AmneziaWG peer sends
//! `Jc` junk datagrams right before every initiation; the shard drops them unparsed, but they
//! are bytes the relay received from that address, so the initiation that follows is credited
//! them too (`State::route_as`): with `S2 > S1 + 56` a framed response is longer than the
//! framed initiation it answers, and without the junk an unproven initiator would have to
//! retry before its first response fits its credit (docs/handshake.md, invariant 1).
//!
//! One per shard, never shared: an AmneziaWG listener is not steered, so the kernel's
//! reuseport hash sends a source's junk and its initiation to the same shard. Fixed size and
//! exact (each slot holds the whole endpoint), so a flood costs no memory and credits nobody
//! but its own source: it can only overwrite slots, and the initiator then waits for its
//! retry, as without this memory.

use std::hash::BuildHasher;

use crate::constants::JUNK_CREDIT_TIME;
use crate::table::{Endpoint, Tick};

#[derive(Debug, Clone, Copy)]
struct Slot {
    from: Endpoint,
    bytes: u32,
    /// When junk from `from` last arrived; `Tick(0)`: empty.
    at: Tick,
}

pub struct JunkMemory {
    slots: Vec<Slot>,
    hasher: foldhash::fast::FixedState,
}

impl JunkMemory {
    /// `slots` slots (0: remembers nothing, for listeners that expect no junk); `seed` keeps
    /// the slot choice unpredictable to peers.
    pub fn new(slots: usize, seed: u64) -> Self {
        let empty = Slot {
            from: Endpoint::new(
                crate::table::ListenerId(0),
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            ),
            bytes: 0,
            at: Tick(0),
        };
        JunkMemory {
            slots: vec![empty; slots],
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    fn slot(&self, from: &Endpoint) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        Some((self.hasher.hash_one(from) as usize) % self.slots.len())
    }

    fn live(s: &Slot, from: &Endpoint, now: Tick) -> bool {
        s.at != Tick(0) && s.from == *from && !now.at_least_since(s.at, JUNK_CREDIT_TIME)
    }

    /// Records a junk datagram of `len` bytes from `from` at `now`.
    pub fn note(&mut self, from: Endpoint, len: usize, now: Tick) {
        let Some(i) = self.slot(&from) else {
            return;
        };
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let s = &mut self.slots[i];
        let bytes = if Self::live(s, &from, now) {
            s.bytes.saturating_add(len)
        } else {
            len
        };
        *s = Slot {
            from,
            bytes,
            at: now,
        };
    }

    /// Takes the junk bytes `from` sent, the last within JUNK_CREDIT_TIME of `now`: 0 if none
    /// (or another source's junk took the slot since).
    pub fn take(&mut self, from: &Endpoint, now: Tick) -> usize {
        let Some(i) = self.slot(from) else {
            return 0;
        };
        let s = &mut self.slots[i];
        if !Self::live(s, from, now) {
            return 0;
        }
        s.at = Tick(0);
        s.bytes as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ListenerId;
    use std::time::Duration;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(ListenerId(1), format!("192.0.2.1:{port}").parse().unwrap())
    }

    #[test]
    fn junk_is_taken_once_by_its_own_source_and_only_while_recent() {
        let t = Tick(100);
        let mut m = JunkMemory::new(64, 7);
        m.note(ep(1), 40, t);
        m.note(ep(1), 41, t.after(Duration::from_millis(100)));
        assert_eq!(m.take(&ep(2), t), 0, "another source");
        assert_eq!(
            m.take(&Endpoint::new(ListenerId(0), ep(1).addr()), t),
            0,
            "the same address on another listener"
        );
        assert_eq!(m.take(&ep(1), t.after(Duration::from_millis(200))), 81);
        assert_eq!(m.take(&ep(1), t), 0, "taken");
        m.note(ep(1), 50, t);
        assert_eq!(m.take(&ep(1), t.after(JUNK_CREDIT_TIME)), 0, "too old");
        // Old junk does not add to new junk.
        m.note(ep(3), 50, t);
        m.note(ep(3), 60, t.after(JUNK_CREDIT_TIME));
        assert_eq!(m.take(&ep(3), t.after(JUNK_CREDIT_TIME)), 60);
        // No slots, no memory.
        let mut none = JunkMemory::new(0, 7);
        none.note(ep(1), 40, t);
        assert_eq!(none.take(&ep(1), t), 0);
    }

    #[test]
    fn a_colliding_source_overwrites_and_credits_only_itself() {
        let t = Tick(100);
        let mut m = JunkMemory::new(1, 7);
        m.note(ep(1), 40, t);
        m.note(ep(2), 70, t);
        assert_eq!(m.take(&ep(1), t), 0);
        assert_eq!(m.take(&ep(2), t), 70);
    }
}
