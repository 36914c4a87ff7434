//! Transport messages, and the roaming rule.
//!
//! Roaming policy (explicit, because the relay cannot authenticate packets as WireGuard does):
//! a transport packet from a source other than the sending side's recorded endpoint moves that
//! endpoint only if its counter is above every counter the relay has seen from that side and
//! at most ROAM_COUNTER_WINDOW above. A replayed packet (old counter) or a blind spoof (it
//! cannot know the counter) is dropped, not forwarded, and changes nothing. A genuine roam
//! continues the sequence, so the next packet after a NAT rebinding moves the endpoint at once.
//! The first transport message of a session must come from the recorded endpoint (there is no
//! sequence yet to continue); if it does not, the peers simply handshake again.

use std::time::Instant;

use super::{Actions, Decision, DropReason, State};
use crate::constants::{REJECT_AFTER_TIME, ROAM_COUNTER_WINDOW};
use crate::table::{Endpoint, Tick};
use crate::wire::{Index, TransportPacket};

/// Whether `counter` from a new source continues a sequence whose highest counter is `max`.
pub fn continues_sequence(max: Option<u64>, counter: u64) -> bool {
    match max {
        Some(max) => counter > max && counter - max <= ROAM_COUNTER_WINDOW,
        None => false,
    }
}

impl State {
    pub(super) fn on_transport(
        &mut self,
        now: Instant,
        from: Endpoint,
        packet: &mut [u8],
        out: &mut Actions,
    ) -> Decision {
        // size gate
        let Ok(transport) = TransportPacket::new_checked(&*packet) else {
            return self.drop(DropReason::BadLength);
        };
        let receiver = transport.receiver();
        let counter = transport.counter();

        // look up the receiver: one lookup holds where to send and whom to expect
        let t = self.clock.tick(now);
        let Some(entry) = self.indices.lookup_mut(receiver, t) else {
            return self.drop(DropReason::UnknownReceiver);
        };
        let Some(sender) = entry.peer else {
            return self.drop(DropReason::NotPaired);
        };
        let destination = entry.endpoint;
        let confirming = entry.responder && !entry.confirmed;
        if destination == from {
            return self.drop(DropReason::Loop);
        }
        // proof before reach: a responder sends nothing on a new session before the
        // initiator's first transport message confirms it (WireGuard's rule), so anything
        // towards an unconfirmed initiator is a spoof or a replay, and an unproven initiator's
        // address may be a victim's
        if !entry.confirmed && !entry.responder && !self.endpoints.is_proven(&destination, t) {
            return self.drop(DropReason::Unproven);
        }

        if entry.source == from {
            if entry.max_counter.is_none_or(|m| counter > m) {
                entry.max_counter = Some(counter);
            }
        } else {
            // roaming rule on the counter
            if !continues_sequence(entry.max_counter, counter) {
                return self.drop(DropReason::RoamRejected);
            }
            let old = entry.source;
            entry.source = from;
            entry.max_counter = Some(counter);
            self.roam(t, sender, old, from, destination);
        }

        // the initiator's first transport message confirms the session: both sides accepted
        // the handshake, so each side's key is bound to its endpoint
        if confirming {
            self.confirm(t, receiver, sender);
        }
        out.targets.push(destination);
        Decision::Forward
    }

    /// The sending side of a session moved from `old` to `new` (already recorded on the
    /// receiver's entry): move its own entry, its other sessions with the same counterpart,
    /// and its identity binding.
    fn roam(
        &mut self,
        now: Tick,
        sender: Index,
        old: Endpoint,
        new: Endpoint,
        counterpart: Endpoint,
    ) {
        self.counters.roams += 1;
        let (key, roamer) = match self.indices.lookup_mut(sender, now) {
            Some(side) => {
                side.endpoint = new;
                (side.owner_key.filter(|_| side.confirmed), side.owner_key)
            }
            None => (None, None),
        };
        if let Some(k) = roamer {
            self.activity_of(k).roams += 1;
        }
        self.move_sessions(old, new, counterpart, now);
        match key {
            Some(k) => self.endpoints.bind(k, new, now),
            None => {
                self.endpoints.touch(new, now);
            }
        }
        // a continuing counter proves the peer is at its new address
        self.endpoints
            .mark_proven_for(new, now, crate::constants::PROVEN_BY_SESSION_TIME);
    }

    /// After a roam, the peer's other live sessions with the same counterpart (the previous
    /// keypair, or the second session of a simultaneous handshake) follow it: the other side
    /// may still send on them. Linear in the table, but only a counter-verified roam runs it.
    fn move_sessions(&mut self, old: Endpoint, new: Endpoint, counterpart: Endpoint, now: Tick) {
        let moving: Vec<(Index, Option<Index>)> = self
            .indices
            .iter()
            .filter(|(_, e)| e.is_live(now) && e.endpoint == old && e.source == counterpart)
            .map(|(i, e)| (*i, e.peer))
            .collect();
        for (index, peer) in moving {
            if let Some(e) = self.indices.lookup_mut(index, now) {
                e.endpoint = new;
            }
            if let Some(p) = peer.and_then(|p| self.indices.lookup_mut(p, now)) {
                p.source = new;
            }
        }
    }

    fn confirm(&mut self, now: Tick, responder: Index, initiator: Index) {
        let expires = now.after(REJECT_AFTER_TIME);
        let mut bind = [None, None];
        for (slot, index) in [responder, initiator].into_iter().enumerate() {
            if let Some(e) = self.indices.lookup_mut(index, now) {
                e.confirmed = true;
                e.expires = expires;
                bind[slot] = e.owner_key.map(|k| (k, e.endpoint));
            }
        }
        let mut ends = [None, None];
        for (slot, index) in [responder, initiator].into_iter().enumerate() {
            ends[slot] = self.indices.lookup(index, now).map(|e| e.endpoint);
        }
        for (k, e) in bind.into_iter().flatten() {
            self.endpoints.bind(k, e, now);
            // a bound key is searched last, unless many may name it (a hub's key stays
            // where its clients' initiations put it; the expiry sweep settles it later)
            if self.keys.only_partner(Some(k)) != crate::admit::Partner::Many {
                self.keys.settle(k);
            }
        }
        // both sides answered each other's cryptography: both addresses are proven
        for e in ends.into_iter().flatten() {
            self.endpoints
                .mark_proven_for(e, now, crate::constants::PROVEN_BY_SESSION_TIME);
        }
        // open mode binds endpoints to each other instead of keys
        if let (true, [Some(r), Some(i)]) = (self.keys.is_open(), ends) {
            self.endpoints.set_partner(r, i, now, REJECT_AFTER_TIME);
            self.endpoints.set_partner(i, r, now, REJECT_AFTER_TIME);
        }
        self.counters.sessions_confirmed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roaming_window() {
        assert!(!continues_sequence(None, 0));
        assert!(!continues_sequence(None, 5));
        assert!(!continues_sequence(Some(10), 10), "replay of the newest");
        assert!(!continues_sequence(Some(10), 3), "replay of an old one");
        assert!(continues_sequence(Some(10), 11));
        assert!(continues_sequence(Some(10), 10 + ROAM_COUNTER_WINDOW));
        assert!(!continues_sequence(Some(10), 11 + ROAM_COUNTER_WINDOW));
        assert!(!continues_sequence(Some(u64::MAX - 1), 0));
        assert!(continues_sequence(Some(u64::MAX - 1), u64::MAX));
    }
}
