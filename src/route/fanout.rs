//! Where an initiation goes: unicast to the endpoint confirmed to hold its key, or a bounded,
//! rate-limited fan-out to candidates, and a parking lot so a cold initiation still reaches a
//! holder that shows up after it (both peers of a fresh pair start at the same time, and
//! neither is known to the relay yet).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::{Actions, Datagram, State};
use crate::admit::{GroupId, KeyId};
use crate::constants::{MAX_FANOUT_PER_INITIATION, REKEY_TIMEOUT};
use crate::table::endpoint::Want;
use crate::table::Endpoint;
use crate::wire::{self, Index};

/// An initiation kept until REKEY_TIMEOUT, when its initiator gives up on it anyway.
#[derive(Clone)]
struct Parked {
    sender: Index,
    from: Endpoint,
    key: Option<KeyId>,
    groups: Vec<GroupId>,
    expires: Instant,
    bytes: [u8; wire::initiation::LEN],
}

/// Cold initiations waiting for candidates, bounded in count and time.
pub struct ParkingLot {
    by_group: HashMap<GroupId, Vec<Index>>,
    parked: HashMap<Index, Parked>,
    order: VecDeque<Index>,
    capacity: usize,
}

impl ParkingLot {
    pub fn new(capacity: usize) -> Self {
        ParkingLot {
            by_group: HashMap::new(),
            parked: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    fn park(&mut self, p: Parked) {
        while self.parked.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.parked.remove(&old);
                }
                None => break,
            }
        }
        for g in &p.groups {
            self.by_group.entry(*g).or_default().push(p.sender);
        }
        self.order.push_back(p.sender);
        self.parked.insert(p.sender, p);
    }

    fn unpark(&mut self, sender: Index) {
        self.parked.remove(&sender);
    }

    /// Drops what has expired; group lists are pruned of gone entries.
    pub fn expired(&mut self, now: Instant) {
        self.parked.retain(|_, p| now < p.expires);
        let parked = &self.parked;
        self.order.retain(|i| parked.contains_key(i));
        for list in self.by_group.values_mut() {
            list.retain(|i| parked.contains_key(i));
        }
        self.by_group.retain(|_, l| !l.is_empty());
    }
}

impl State {
    /// Takes one fan-out token; `true` when unlimited.
    fn fanout_token(&mut self, now: Instant) -> bool {
        match &mut self.fanout {
            Some(bucket) => bucket.allow(now),
            None => true,
        }
    }

    /// Fills `out.targets` for an initiation from `from` naming `key`. `retry` means the
    /// initiator asked for the same key before and saw no response: a binding is only a hint,
    /// so fan out then. Returns whether it fanned out (as opposed to unicast).
    pub(super) fn initiation_targets(
        &mut self,
        now: Instant,
        from: &Endpoint,
        key: Option<KeyId>,
        retry: bool,
        out: &mut Actions,
    ) -> bool {
        if let Some(k) = key {
            if let Some(holder) = self.endpoints.holder_of(k, self.clock.tick(now)) {
                if holder != *from && !retry {
                    if self.crossing(&holder, from, now) {
                        // Wait: the holder's own initiation is with the sender already.
                        return true;
                    }
                    out.targets.push(holder);
                    return false;
                }
            }
        }
        let groups: Vec<GroupId> = self.keys.groups_of(key).to_vec();
        let mut cursor = self.fanout_cursor;
        let want = Want {
            groups: &groups,
            key,
            from: *from,
            max: MAX_FANOUT_PER_INITIATION,
        };
        self.endpoints
            .candidates(&want, self.clock.tick(now), &mut cursor, &mut out.targets);
        self.fanout_cursor = cursor;
        out.targets.retain(|t| !self.crossing(t, from, now));
        // Each copy costs a token; copies past the limit are not sent.
        let mut allowed = 0;
        while allowed < out.targets.len() && self.fanout_token(now) {
            allowed += 1;
        }
        out.targets.truncate(allowed);
        true
    }

    /// Fills `out.targets` with a pinned key's recent clients, for a handshake it starts with
    /// a client the relay cannot name: newest first, never the sender, each copy under the
    /// fan-out rate limit.
    pub(super) fn pin_clients(
        &mut self,
        now: Instant,
        pin: KeyId,
        from: &Endpoint,
        out: &mut Actions,
    ) {
        let clients: Vec<Endpoint> = self
            .pins
            .recent_clients(pin)
            .filter(|c| c != from)
            .take(MAX_FANOUT_PER_INITIATION)
            .collect();
        for c in clients {
            if !self.fanout_token(now) {
                break;
            }
            out.targets.push(c);
        }
    }

    /// Whether `to` has an unanswered initiation of its own out with `from` (sent or handed
    /// to it in the last REKEY_TIMEOUT). Sending `from`'s initiation to `to` as well would
    /// cross them: each WireGuard peer answers the other's initiation, which replaces its own
    /// handshake (one per peer), and both responses are then refused. The one already out is
    /// left to finish; if it does not, the next retry goes through.
    fn crossing(&self, to: &Endpoint, from: &Endpoint, now: Instant) -> bool {
        let t = self.clock.tick(now);
        let Some(p) = self.endpoints.get(to).and_then(|i| i.pending) else {
            return false;
        };
        if t.at_least_since(p.at, REKEY_TIMEOUT) {
            return false;
        }
        let bit = self.mask_bit(from);
        self.indices
            .lookup(p.index, t)
            .is_some_and(|e| e.peer.is_none() && e.sent_to & bit != 0)
    }

    /// Keeps a cold initiation so candidates that appear within REKEY_TIMEOUT still get it.
    pub(super) fn park(
        &mut self,
        now: Instant,
        sender: Index,
        from: Endpoint,
        key: Option<KeyId>,
        packet: &[u8],
    ) {
        let mut bytes = [0u8; wire::initiation::LEN];
        if packet.len() != bytes.len() {
            return;
        }
        bytes.copy_from_slice(packet);
        let groups = self.keys.groups_of(key).to_vec();
        self.parked.park(Parked {
            sender,
            from,
            key,
            groups,
            expires: now + REKEY_TIMEOUT,
            bytes,
        });
        self.counters.parked += 1;
    }

    pub(super) fn unpark(&mut self, sender: Index) {
        self.parked.unpark(sender);
    }

    /// A new candidate `to` named `named` (so it may hold any key sharing a group with it):
    /// deliver the parked initiations it could answer, within the fan-out budget. A source
    /// that has not proven its address gets at most one (148 bytes for the 148 it sent), so
    /// a spoofed initiation never makes the relay send more to its victim than it received.
    pub(super) fn deliver_parked(
        &mut self,
        now: Instant,
        to: Endpoint,
        named: Option<KeyId>,
        out: &mut Actions,
    ) {
        if self.parked.is_empty() || self.endpoints.bound_key(&to).is_some() {
            return;
        }
        let groups: Vec<GroupId> = self.keys.groups_of(named).to_vec();
        let t = self.clock.tick(now);
        let limit = if self.endpoints.is_proven(&to, t) {
            MAX_FANOUT_PER_INITIATION
        } else {
            1
        };
        let mut chosen: Vec<Index> = Vec::new();
        for g in &groups {
            let Some(list) = self.parked.by_group.get(g) else {
                continue;
            };
            for sender in list.iter().rev() {
                if chosen.len() >= limit {
                    break;
                }
                let Some(p) = self.parked.parked.get(sender) else {
                    continue;
                };
                if p.from == to || now >= p.expires || chosen.contains(sender) {
                    continue;
                }
                // `to` may hold p's key only if it named a key sharing a group with it.
                if !self.keys.is_open() && !self.keys.share_group(p.key, named) {
                    continue;
                }
                chosen.push(*sender);
            }
        }
        // The first hand-over answers the initiation `to` just sent with one of the same size,
        // so it is no amplification and does not spend the fan-out budget: a burst of cold
        // fan-out copies must not starve the hand-overs that actually pair sessions. Any
        // further ones (to a proven source) pay like fan-out copies.
        let mut free = true;
        for sender in chosen {
            // Still waiting for a response?
            let waiting = self
                .indices
                .lookup(sender, t)
                .is_some_and(|e| e.peer.is_none());
            if !waiting {
                self.parked.unpark(sender);
                continue;
            }
            if !std::mem::take(&mut free) && !self.fanout_token(now) {
                break;
            }
            let bit = self.mask_bit(&to);
            if let Some(entry) = self.indices.lookup_mut(sender, t) {
                entry.sent_to |= bit;
            }
            if let Some(p) = self.parked.parked.get(&sender) {
                out.extra.push(Datagram::new(to, &p.bytes));
                self.counters.handovers += 1;
            }
        }
    }
}
