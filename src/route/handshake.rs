//! Initiations, responses and cookie replies.

use std::time::Instant;

use super::{Actions, Datagram, Decision, DropReason, PinRoute, State};
use crate::admit::KeyId;
use crate::config::CookieMode;
use crate::constants::{MAX_INDICES, REKEY_TIMEOUT};
use crate::table::{Endpoint, IndexEntry, Tick};
use crate::wire::{CookieReplyPacket, Index, InitiationPacket, ResponsePacket};

impl State {
    /// Why a new sender index cannot be recorded, if it cannot: taken by a live entry, or the
    /// table is full.
    fn index_unavailable(&self, sender: Index, t: Tick) -> Option<DropReason> {
        if self.indices.contains(sender, t) {
            Some(DropReason::IndexCollision)
        } else if self.indices.len() >= MAX_INDICES {
            Some(DropReason::TableFull)
        } else {
            None
        }
    }

    pub(super) fn on_initiation(
        &mut self,
        now: Instant,
        from: Endpoint,
        packet: &mut [u8],
        out: &mut Actions,
    ) -> Decision {
        // size gate
        let Ok(init) = InitiationPacket::new_checked(&*packet) else {
            return self.drop(DropReason::BadLength);
        };
        let t = self.clock.tick(now);
        let sender = init.sender();
        let mac1 = init.mac1();
        let has_mac2 = init.mac2() != [0; 16];

        // mac1 against the key directory (open mode: any key, unknown)
        let dedicated = self.pins.dedicated(from.listener);
        let bound = self.endpoints.bound_key(&from);
        // The pinned key (server, port peer) whose endpoint sends this, if any.
        let from_pin = self.pins.key_at(&from, bound);
        // A handshake a pinned key starts for a client the relay does not know.
        let mut started_by_pin = None;
        let key: Option<KeyId> = if self.keys.is_open() {
            None
        } else {
            let hint = dedicated.or_else(|| {
                self.endpoints
                    .get(&from)
                    .and_then(|i| i.pending)
                    .and_then(|p| p.key)
            });
            match self.keys.match_mac1_hinted(packet, hint) {
                Some(k) => Some(k),
                None if from_pin.is_some() => {
                    started_by_pin = from_pin;
                    None
                }
                None => return self.drop(DropReason::BadMac1),
            }
        };
        // a dedicated port takes initiations for its responder only, the responder's own, and
        // those for a proxy server (reachable through every port: a responder may reach its
        // hub through its own port, which keeps its NAT pinhole on that port)
        if let Some(d) = dedicated {
            if key != Some(d) && from_pin != Some(d) && !self.pins.is_server(key) {
                return self.drop(DropReason::BadMac1);
            }
        }

        // mac1 replay filter
        if self.replay.contains(&mac1) {
            return self.drop(DropReason::Mac1Replayed);
        }

        // mac2, or a cookie reply
        self.load.record(now);
        let under_load = self.load.is_under_load(now);
        let mac2_ok = has_mac2
            && self
                .cookies
                .check_mac2(packet, from.addr(), now, self.entropy.as_mut());
        if mac2_ok {
            self.endpoints.mark_proven(from, t);
        }
        let proven = mac2_ok || self.endpoints.is_proven(&from, t);
        let challenge = match self.cookie_mode {
            CookieMode::Always => !proven,
            CookieMode::UnderLoad => under_load && !proven,
            CookieMode::Never => false,
        };
        if challenge {
            // Sealing a cookie needs the recipient's public key, which open mode lacks.
            if let Some(info) = key.and_then(|k| self.keys.get(k)) {
                let cookie_key = info.cookie;
                if let Some(reply) = self.cookies.create_reply(
                    packet,
                    sender,
                    &cookie_key,
                    from.addr(),
                    now,
                    self.entropy.as_mut(),
                ) {
                    out.extra.push(Datagram::new(from, &reply));
                    self.counters.cookie_replies += 1;
                    return Decision::Reply;
                }
            }
        }

        // per-source token bucket under load
        if under_load && !self.sources.allow(from.addr(), proven, now) {
            return self.drop(DropReason::RateLimited);
        }

        // both keys must share a group, when the sender's key is known
        if let Some(own) = bound.filter(|_| started_by_pin.is_none()) {
            if !self.keys.share_group(Some(own), key) {
                return self.drop(DropReason::NotInGroup);
            }
        }

        // the sender index must be free
        if let Some(reason) = self.index_unavailable(sender, t) {
            return self.drop(reason);
        }

        // a pinned key goes where it is pinned, and nowhere else
        let learned = key.and_then(|k| self.endpoints.holder_of(k, t));
        let pin_route = self.pins.route(key, learned);
        match pin_route {
            PinRoute::Unknown => return self.drop(DropReason::NoUpstream),
            PinRoute::To(e) if e == from => return self.drop(DropReason::Loop),
            _ => {}
        }

        // admitted: update tables
        self.replay.insert(&mac1);
        if mac2_ok {
            InitiationPacket::new_unchecked(&mut *packet).set_mac2([0; 16]);
        }
        let groups = self.keys.groups_of(key).to_vec();
        let info = self.endpoints.touch(from, t);
        let retry = info
            .pending
            .is_some_and(|p| p.key == key && !t.at_least_since(p.at, 3 * REKEY_TIMEOUT));
        info.pending = Some(crate::table::endpoint::Pending {
            key,
            at: t,
            index: sender,
        });
        let owner_key = info.bound;
        self.endpoints.add_candidate(from, key, &groups, t);

        // The sender is a new candidate: hand it the parked initiations it could answer. This
        // comes first, so the targets below can leave out the peers whose initiation it now
        // holds (see `crossing`).
        self.deliver_parked(now, from, key, out);

        // forward: to a pinned key's place; a pinned key's own handshake to its recent
        // clients; else unicast to the confirmed holder, or fan out and park
        let (fanned_out, park) = match (pin_route, started_by_pin) {
            (PinRoute::To(e), _) => {
                out.targets.push(e);
                (false, false)
            }
            (_, Some(p)) => {
                self.pin_clients(now, p, &from, out);
                (true, false)
            }
            _ => {
                let fanned_out = self.initiation_targets(now, &from, key, retry, out);
                (fanned_out, fanned_out)
            }
        };
        let mut sent_to = 0;
        for t in &out.targets {
            sent_to |= self.mask_bit(t);
        }
        if fanned_out {
            self.counters.fanout_copies += out.targets.len() as u64;
        }
        self.indices.insert(
            sender,
            IndexEntry {
                endpoint: from,
                // Meaningless until a response pairs it.
                source: from,
                peer: None,
                owner_key,
                peer_key: key,
                expires: t.after(REKEY_TIMEOUT),
                max_counter: None,
                sent_to,
                responder: false,
                confirmed: false,
            },
        );
        if park {
            self.park(now, sender, from, key, packet);
        }
        if !out.targets.is_empty() {
            Decision::Forward
        } else if park {
            Decision::Parked
        } else {
            self.drop(DropReason::FanOutLimited)
        }
    }

    pub(super) fn on_response(
        &mut self,
        now: Instant,
        from: Endpoint,
        packet: &mut [u8],
        out: &mut Actions,
    ) -> Decision {
        // size gate
        let Ok(resp) = ResponsePacket::new_checked(&*packet) else {
            return self.drop(DropReason::BadLength);
        };
        let t = self.clock.tick(now);
        let sender = resp.sender();
        let receiver = resp.receiver();
        let mac1 = resp.mac1();

        // the initiation it answers
        let bit = self.mask_bit(&from);
        let Some(init) = self.indices.lookup(receiver, t) else {
            return self.drop(DropReason::UnknownReceiver);
        };
        if init.peer.is_some() || init.responder {
            return self.drop(DropReason::AlreadyPaired);
        }
        if init.sent_to & bit == 0 {
            return self.drop(DropReason::UnknownSource);
        }
        let initiator = init.endpoint;
        let responder_key = init.peer_key;
        if initiator == from {
            return self.drop(DropReason::Loop);
        }

        // mac1 names the initiator's key; the pair must share a group
        let initiator_key: Option<KeyId> = match responder_key {
            None => None,
            Some(kb) => match self.keys.match_mac1_in_groups_of(packet, kb) {
                Some(k) => Some(k),
                // Not a key the responder may talk to: say which failure it was.
                None if self.keys.match_mac1(packet).is_some() => {
                    return self.drop(DropReason::NotInGroup)
                }
                // A pinned key answering a client the relay does not know: it comes from the
                // endpoint the initiation was sent to (checked above), the trust a proxy
                // gives its server.
                None if self.pins.is_pinned(Some(kb)) => None,
                None => return self.drop(DropReason::BadMac1),
            },
        };
        if self.replay.contains(&mac1) {
            return self.drop(DropReason::Mac1Replayed);
        }
        if let Some(reason) = self.index_unavailable(sender, t) {
            return self.drop(reason);
        }

        // pair the two indices; unconfirmed until the initiator's first transport message
        self.replay.insert(&mac1);
        if let Some(init) = self.indices.lookup_mut(receiver, t) {
            init.peer = Some(sender);
            init.source = from;
            init.owner_key = initiator_key;
            init.expires = t.after(REKEY_TIMEOUT);
        }
        self.indices.insert(
            sender,
            IndexEntry {
                endpoint: from,
                source: initiator,
                peer: Some(receiver),
                owner_key: responder_key,
                peer_key: initiator_key,
                expires: t.after(REKEY_TIMEOUT),
                max_counter: None,
                sent_to: 0,
                responder: true,
                confirmed: false,
            },
        );
        self.unpark(receiver);
        // By answering, the responder gave up its own initiation to the same peer (WireGuard
        // keeps one handshake per peer): do not hand that one out any more.
        if let Some(p) = self.endpoints.get(&from).and_then(|i| i.pending) {
            if p.key == initiator_key {
                self.unpark(p.index);
            }
        }
        self.endpoints.touch(from, t);
        if let Some(info) = self.endpoints.get(&initiator) {
            if info.pending.is_some() {
                self.endpoints.touch(initiator, t).pending = None;
            }
        }
        // remember a pinned key's clients, for the handshakes it starts itself
        if let Some(kb) = responder_key.filter(|k| self.pins.is_pinned(Some(*k))) {
            self.pins.note_client(kb, initiator);
        }
        if let Some(p) = self
            .pins
            .key_at(&initiator, self.endpoints.bound_key(&initiator))
        {
            self.pins.note_client(p, from);
        }
        self.counters.handshakes_paired += 1;
        out.targets.push(initiator);
        Decision::Forward
    }

    pub(super) fn on_cookie_reply(
        &mut self,
        now: Instant,
        from: Endpoint,
        packet: &mut [u8],
        out: &mut Actions,
    ) -> Decision {
        // size gate
        let Ok(reply) = CookieReplyPacket::new_checked(&*packet) else {
            return self.drop(DropReason::BadLength);
        };
        // the handshake message it answers, and who may answer it
        let bit = self.mask_bit(&from);
        let Some(entry) = self.indices.lookup(reply.receiver(), self.clock.tick(now)) else {
            return self.drop(DropReason::UnknownReceiver);
        };
        let allowed = match entry.peer {
            // An unanswered initiation: one of the endpoints it went to.
            None => entry.sent_to & bit != 0,
            // A response (or a session): the other side.
            Some(_) => entry.source == from,
        };
        if !allowed {
            return self.drop(DropReason::UnknownSource);
        }
        if entry.endpoint == from {
            return self.drop(DropReason::Loop);
        }
        out.targets.push(entry.endpoint);
        Decision::Forward
    }
}
