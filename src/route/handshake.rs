//! Initiations, responses and cookie replies.

use std::time::Instant;

use super::fanout::Sender;
use super::{Actions, Datagram, Decision, DropReason, PinRoute, State};
use crate::admit::{KeyId, Partner};
use crate::config::CookieMode;
use crate::constants::{MAX_INDICES, REKEY_TIMEOUT};
use crate::table::{Endpoint, IndexEntry, Tick};
use crate::wire::{self, CookieReplyPacket, Index, InitiationPacket, MessageType, ResponsePacket};

const fn resp_len() -> usize {
    crate::wire::response::LEN
}

impl State {
    /// Whether an initiation from `from` naming `key` retries one that got no answer: the
    /// same key within 3 x REKEY_TIMEOUT, and the earlier initiation was not answered (a
    /// rekey soon after a completed handshake is no retry).
    fn is_retry(&self, from: &Endpoint, key: Option<KeyId>, t: Tick) -> bool {
        self.endpoints
            .get(from)
            .and_then(|i| i.pending)
            .is_some_and(|p| {
                p.key == key
                    && !t.at_least_since(p.at, 3 * REKEY_TIMEOUT)
                    && self
                        .indices
                        .lookup(p.index, t)
                        .is_none_or(|e| e.peer.is_none())
            })
    }

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
        junk: usize,
        out: &mut Actions,
    ) -> Decision {
        // size gate
        let Ok(init) = InitiationPacket::new_checked(&*packet) else {
            return self.drop(DropReason::BadLength);
        };
        let t = self.clock.tick(now);
        // what it cost its sender on the wire: the framed initiation, and the junk it sent
        // just before (an AmneziaWG peer's Jc datagrams, dropped unparsed by the shard)
        let received = self.wire_len(&from, MessageType::Initiation, packet.len()) + junk;
        let sender = init.sender();
        let mac1 = init.mac1();
        let has_mac2 = init.mac2() != [0; 16];

        let dedicated = self.pins.dedicated(from.listener);
        let bound = self.endpoints.bound_key(&from);
        // The pinned key (server, port peer) whose endpoint sends this, if any: an address
        // the operator configured (or a local device reported) counts as proven.
        let from_pin = self.pins.key_at(&from, bound);
        let was_proven = from_pin.is_some() || self.endpoints.is_proven(&from, t);

        // cheapest first: under load, the per-source bucket before any BLAKE2s
        self.load.record(now);
        let under_load = self.load.is_under_load(now);
        if under_load && !self.sources.allow(from.addr(), was_proven, now) {
            return self.drop(DropReason::RateLimited);
        }

        // mac1 against the key directory (open mode: any key, unknown); the key this source
        // named last is tried first, and a full search for an unproven source is paid for
        // from the mac1 work budget
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
            let hinted = hint.filter(|k| self.keys.check_mac1_of(*k, packet));
            let found = match hinted {
                Some(k) => Some(k),
                None => {
                    if !was_proven && !self.mac1_work.peek(now) {
                        return self.drop(DropReason::RateLimited);
                    }
                    let (found, trials) = self.keys.match_mac1_counted(packet);
                    if !was_proven {
                        self.mac1_work.take_up_to(trials, now);
                    }
                    // what the next cold initiation will likely name: in a group of two,
                    // the sender's own key (its partner's first initiation names it); else
                    // the key just named (a hub's, named by every new client)
                    if let Some(k) = found {
                        match self.keys.only_partner(Some(k)) {
                            Partner::One(sender) => self.keys.expect(sender, t.0),
                            Partner::None => {}
                            Partner::Many => self.keys.expect(k, t.0),
                        }
                    }
                    found
                }
            };
            match found {
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

        // mac2: a source that answered our cookie is proven
        let mac2_ok = has_mac2
            && self
                .cookies
                .check_mac2(packet, from.addr(), now, self.entropy.as_mut());
        if mac2_ok {
            self.endpoints
                .mark_proven_for(from, t, crate::constants::SOURCE_PROVEN_TIME);
        }
        if from_pin.is_some() {
            self.endpoints
                .mark_proven_for(from, t, crate::constants::SOURCE_PROVEN_TIME);
        }
        let proven = was_proven || mac2_ok;
        let peer_like = !proven
            && (self.recent.retried(from.addr(), t)
                || self.endpoints.get(&from).is_some_and(|i| i.peer_like));

        // where it could go: a confirmed holder or a pinned place; else a search, which is
        // ambiguous unless the named key has a single possible partner
        // (open mode: the endpoint this one last had a confirmed session with)
        let learned = match key {
            Some(k) => self.endpoints.holder_of(k, t),
            None if self.keys.is_open() => self.endpoints.partner_of(&from, t),
            None => None,
        };
        let pin_route = self.pins.route(key, learned);
        // A retry (same key, no response in between) means the holder did not answer: it may
        // have moved, so for the challenge it counts as unknown.
        let retrying = self.is_retry(&from, key, t);
        let has_target = (learned.is_some() && !retrying) || matches!(pin_route, PinRoute::To(_));
        let ambiguous =
            !has_target && started_by_pin.is_none() && self.keys.identity_ambiguous(key);

        // proof before reach: the cookie challenge for unproven sources, always, or when the
        // named key's budget for unproven copies is spent (what reaches its responder), or
        // when finding its responder needs a search
        // (an unproven initiation that is not challenged for ambiguity takes a token from
        // its named key's budget; open mode has no keys, and a pinned key's own handshake is
        // the operator's)
        // `prepaid`: the token taken here pays for the first copy too (taking a second one
        // there dropped a newcomer admitted on the last token, with no cookie either)
        let mut prepaid = false;
        let mut key_ok = |st: &mut Self| {
            if proven || key.is_none() || started_by_pin.is_some() {
                return true;
            }
            let pinned = st.pins.is_pinned(key);
            prepaid = st.key_budgets.allow(key, pinned, now);
            prepaid
        };
        let challenge = !proven
            && match self.cookie_mode {
                CookieMode::Always => true,
                CookieMode::UnderLoad => ambiguous || !key_ok(self),
                CookieMode::Never => false,
            };
        if challenge {
            // Sealing a cookie needs the recipient's public key, which open mode lacks.
            if let Some(info) = key.and_then(|k| self.keys.get(k)) {
                let cookie_key = info.cookie;
                // No state for a challenged source but the memory of its address: its cookie
                // reply, framed for its listener, must not be longer than what it sent
                // (check-config refuses AmneziaWG parameters with s3 + 64 > s1 + 148 unless
                // cookies are off)
                let reply_len =
                    self.wire_len(&from, MessageType::CookieReply, wire::cookie_reply::LEN);
                if reply_len > received {
                    return self.drop(DropReason::Unproven);
                }
                if let Some(reply) = self.cookies.create_reply(
                    packet,
                    sender,
                    &cookie_key,
                    from.addr(),
                    now,
                    self.entropy.as_mut(),
                ) {
                    // (on a plain listener: 64 bytes for its 148)
                    self.counters.bytes_from_unproven += received as u64;
                    self.counters.bytes_to_unproven += reply_len as u64;
                    out.extra.push(Datagram::new(from, &reply));
                    self.counters.cookie_replies += 1;
                    return Decision::Reply;
                }
            }
        }
        // an unproven source that was not challenged: open mode admits only a source that
        // retried as a WireGuard peer does; keyed modes only within the named key's budget
        if !proven && started_by_pin.is_none() {
            if key.is_none() && !peer_like {
                return self.drop(DropReason::Unproven);
            }
            // (Never: the budget was not consulted above; Always and UnderLoad challenged)
            if key.is_some() && self.cookie_mode == CookieMode::Never && !key_ok(self) {
                return self.drop(DropReason::RateLimited);
            }
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
        let retry = retrying;
        let info = self.endpoints.touch(from, t);
        info.peer_like |= peer_like;
        info.pending = Some(crate::table::endpoint::Pending {
            key,
            at: t,
            index: sender,
        });
        let owner_key = info.bound;
        if !proven {
            self.endpoints.credit(&from, received);
            self.counters.bytes_from_unproven += received as u64;
        }
        self.endpoints.add_candidate(from, key, &groups, t);
        // The record of this initiation comes first: the copy rules record deliveries on it.
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
                responder: false,
                confirmed: false,
            },
        );
        self.latency.on_initiation(sender, now);
        let mut s = Sender {
            index: sender,
            from,
            key,
            proven,
            prepaid,
        };

        // The sender is a new candidate: hand it the parked initiations it could answer. This
        // comes first, so the targets below leave out the peers whose initiation it now
        // holds (see `crossing`). An unproven sender that got one is owed nothing more.
        let handed = self.deliver_parked(now, from, key, peer_like, out);
        let hold_own = handed > 0 && !proven;

        // forward: to a pinned key's place; a pinned key's own handshake to its recent
        // clients; else unicast to the confirmed holder, and a sweep when there is none or
        // the initiator retries (a binding is a hint: the holder may have moved)
        let mut park = false;
        let mut swept = super::fanout::Swept::default();
        match (pin_route, started_by_pin) {
            (PinRoute::To(e), _) => {
                if self.copy_rules(now, &mut s, e, false, true) {
                    out.targets.push(e);
                }
            }
            (_, Some(p)) => self.pin_clients(now, p, &mut s, out),
            // its credit went on the hand-over: its own initiation goes nowhere (a response
            // to it would be owed bytes it did not send); it answers what it got, or retries
            _ if hold_own => {}
            _ => {
                if let Some(h) = learned.filter(|h| *h != from) {
                    if self.crossing(&h, &from, t) {
                        // held back so the two do not cross: parked, as a sweep's would be,
                        // and withdrawn once its sender answers the other one
                        park = true;
                    } else if self.copy_rules(now, &mut s, h, false, false) {
                        out.targets.push(h);
                    }
                }
                if learned.is_none() || retry {
                    swept = self.sweep(now, &mut s, out, None);
                    park = true;
                }
            }
        }
        if park {
            // (a sweep's copies are probes; only a hand-over marks a parked one as held)
            self.park(now, &s, proven || peer_like, false, swept, packet);
        }
        if !out.targets.is_empty() {
            Decision::Forward
        } else if park || hold_own {
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

        // the initiation it answers, sent to exactly this endpoint
        let Some(init) = self.indices.lookup(receiver, t) else {
            return self.drop(DropReason::UnknownReceiver);
        };
        if init.peer.is_some() || init.responder {
            return self.drop(DropReason::AlreadyPaired);
        }
        if !self.deliveries.contains(receiver, &from, t) {
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

        // an unproven initiator is owed no more bytes than it sent (both counted as framed
        // on the wire: the response leaves on the initiator's listener; on an AmneziaWG one
        // with s2 > s1 + 56 a response is longer than the initiation it answers)
        let to_initiator = self.wire_len(&initiator, MessageType::Response, resp_len());
        if !self
            .endpoints
            .get(&initiator)
            .is_some_and(|i| i.may_receive(to_initiator, t))
        {
            // Held back, but the responder's address is as real as if it went through (see
            // below): proven, it gets the initiator's retry, which pays for the answer, by the
            // proven sweep. Left unproven it would get nothing: it waits silently for a
            // confirmation, and only its own initiation would have it handed the retry.
            self.prove_responder(from, t);
            return self.drop(DropReason::Unproven);
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
        let from_responder = self.wire_len(&from, MessageType::Response, resp_len());
        self.endpoints.credit(&from, from_responder);
        // It answered, from its own address, an initiation the relay sent only there: the
        // responder's address is real (return routability, as a cookie proves it). A
        // responder then waits silently for the initiator's confirmation; if that is lost
        // (the initiator retried meanwhile), the retry must be able to reach it, and an
        // unproven candidate gets initiations only by hand-over, when it initiates itself.
        self.prove_responder(from, t);
        if !self.endpoints.is_proven(&initiator, t) {
            self.counters.bytes_to_unproven += to_initiator as u64;
        }
        self.endpoints.spend(&initiator, to_initiator, t);
        // (the initiator's pending initiation stays recorded: until the session is confirmed,
        // an initiation from the responder to it would cross this handshake; see `crossing`)
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
        self.latency.on_response(receiver, now);
        for k in [responder_key, initiator_key].into_iter().flatten() {
            self.activity_of(k).last_handshake = t;
        }
        out.targets.push(initiator);
        Decision::Forward
    }

    /// A responder answered, from its own address, an initiation sent only there: proven.
    /// Not in open mode: there a proven endpoint is handed up to 64 parked initiations per
    /// initiation it sends, and with no keys to match they are other pairs'; marked
    /// `delivered`, they are then withheld from the newcomers they were for (an open-mode
    /// cold start in tests/scale.rs stalled 3 of 40 pairs).
    fn prove_responder(&mut self, from: Endpoint, t: Tick) {
        if !self.keys.is_open() {
            self.endpoints
                .mark_proven_for(from, t, crate::constants::SOURCE_PROVEN_TIME);
        }
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
        let t = self.clock.tick(now);
        let receiver = reply.receiver();
        let Some(entry) = self.indices.lookup(receiver, t) else {
            return self.drop(DropReason::UnknownReceiver);
        };
        let allowed = match entry.peer {
            // An unanswered initiation: one of the endpoints it went to.
            None => self.deliveries.contains(receiver, &from, t),
            // A response (or a session): the other side.
            Some(_) => entry.source == from,
        };
        if !allowed {
            return self.drop(DropReason::UnknownSource);
        }
        let to = entry.endpoint;
        if to == from {
            return self.drop(DropReason::Loop);
        }
        // an unproven recipient is owed no more bytes than it sent (framed on the wire)
        let len = packet.len();
        let from_sender = self.wire_len(&from, MessageType::CookieReply, len);
        let to_recipient = self.wire_len(&to, MessageType::CookieReply, len);
        self.endpoints.credit(&from, from_sender);
        if !self.endpoints.is_proven(&to, t) {
            if !self.endpoints.spend(&to, to_recipient, t) {
                return self.drop(DropReason::Unproven);
            }
            self.counters.bytes_to_unproven += to_recipient as u64;
        }
        out.targets.push(to);
        Decision::Forward
    }
}
