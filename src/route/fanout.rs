//! Where an admitted initiation goes when its responder is not known for sure: the copy
//! rules, the systematic sweep of candidates, and the parking lot from which a cold
//! initiation is handed to a candidate that shows up after it (both peers of a fresh pair
//! start at the same time, and neither is known to the relay yet).
//!
//! Every copy of an initiation, whatever the path (unicast to a holder, sweep, hand-over,
//! a pinned key's clients), goes through [`State::copy_rules`]:
//! - the recipient must be allowed the bytes: proven, or unproven with enough credit (the
//!   relay never sends an unproven endpoint more handshake bytes than it sent);
//! - a copy of an unproven sender's initiation takes a token from its named key's budget
//!   (open mode: the fan-out budget), so unproven sources reach third parties only at a
//!   bounded rate per responder key;
//! - it is recorded exactly (`Deliveries`), so only its recipients may answer it and two
//!   peers' initiations are never crossed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::{framed_len, Actions, Datagram, State};
use crate::admit::{GroupId, KeyId};
use crate::constants::{
    MAX_FANOUT_PER_INITIATION, PROVEN_HANDOVERS, PROVEN_SWEEP_CAP, PROVEN_SWEEP_STEP,
    REKEY_TIMEOUT, SWEEP_MIN_INTERVAL, SWEEP_STEP_BUDGET, SWEEP_STEP_INTERVAL,
};
use crate::table::endpoint::Want;
use crate::table::{Endpoint, Tick};
use crate::wire::{self, Index, MessageType};

const INITIATION: usize = wire::initiation::LEN;

/// An initiation kept until REKEY_TIMEOUT, when its initiator gives up on it anyway.
#[derive(Clone)]
struct Parked {
    sender: Index,
    from: Endpoint,
    key: Option<KeyId>,
    groups: Vec<GroupId>,
    /// Its sender was proven when it was parked.
    proven: bool,
    /// Its sender was proven or peer-like: handed out before the others.
    preferred: bool,
    /// It was sent to someone already (fan-out or hand-over).
    delivered: bool,
    /// The token its admission took is still unspent: it pays for its first hand-over, so
    /// spoofers draining the named key's budget cannot strand it.
    prepaid: bool,
    /// Copies its proven sweep sent so far (at most PROVEN_SWEEP_CAP).
    swept: usize,
    expires: Instant,
    bytes: [u8; INITIATION],
}

/// Cold initiations waiting for candidates, bounded in count and time.
pub struct ParkingLot {
    by_group: HashMap<GroupId, Vec<Index>>,
    parked: HashMap<Index, Parked>,
    order: VecDeque<Index>,
    /// Proven sweeps still going, in turn (an entry whose initiation is gone or answered is
    /// dropped when its turn comes).
    sweeping: VecDeque<Index>,
    next_step: Option<Instant>,
    capacity: usize,
}

impl ParkingLot {
    pub fn new(capacity: usize) -> Self {
        ParkingLot {
            by_group: HashMap::new(),
            parked: HashMap::new(),
            order: VecDeque::new(),
            sweeping: VecDeque::new(),
            next_step: None,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.parked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// Whether a proven sweep is still going (the shards then step it every
    /// SWEEP_STEP_INTERVAL).
    pub fn sweeping(&self) -> bool {
        !self.sweeping.is_empty()
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
    /// A reload changed the key directory: each parked initiation moves to the groups
    /// `regroup` gives its named key, or is dropped (`None`: its key is gone). Returns how
    /// many were dropped.
    pub fn reconfigure(
        &mut self,
        regroup: impl Fn(Option<KeyId>) -> Option<Vec<GroupId>>,
    ) -> usize {
        self.retain(|p| match regroup(p.key) {
            Some(groups) => {
                p.groups = groups;
                true
            }
            None => false,
        })
    }

    /// Drops the initiations whose sender `gone` names (its listener closed). Returns how
    /// many.
    pub fn forget(&mut self, gone: impl Fn(&Endpoint) -> bool) -> usize {
        self.retain(|p| !gone(&p.from))
    }

    /// Keeps the parked initiations `keep` says (it may change their groups) and rebuilds
    /// the lists that name them. Returns how many went.
    fn retain(&mut self, mut keep: impl FnMut(&mut Parked) -> bool) -> usize {
        let before = self.parked.len();
        self.parked.retain(|_, p| keep(p));
        let parked = &self.parked;
        self.order.retain(|i| parked.contains_key(i));
        self.sweeping.retain(|i| parked.contains_key(i));
        self.by_group.clear();
        for i in &self.order {
            if let Some(p) = self.parked.get(i) {
                for g in &p.groups {
                    self.by_group.entry(*g).or_default().push(*i);
                }
            }
        }
        before - self.parked.len()
    }

    pub fn expired(&mut self, now: Instant) {
        self.parked.retain(|_, p| now < p.expires);
        let parked = &self.parked;
        self.order.retain(|i| parked.contains_key(i));
        self.sweeping.retain(|i| parked.contains_key(i));
        for list in self.by_group.values_mut() {
            list.retain(|i| parked.contains_key(i));
        }
        self.by_group.retain(|_, l| !l.is_empty());
    }
}

/// Parked initiations considered beyond a hand-over's limit, for when the first ones cannot
/// be paid for (their named key's budget is spent).
const HANDOVER_SPARES: usize = 16;

/// A parked initiation is handed over only while this much of its REKEY_TIMEOUT is left: the
/// answer must reach the initiator before it retries with a new index (and forgets this
/// one). A responder handed a dead initiation answers it and then waits, silent, for a
/// confirmation that never comes (found by a cold start of 10k pairs under overload: one
/// pair in ~700 never met).
const HANDOVER_MARGIN: Duration = Duration::from_secs(1);

/// Who sends an initiation being copied, as the copy rules need it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sender {
    pub index: Index,
    pub from: Endpoint,
    pub key: Option<KeyId>,
    pub proven: bool,
    /// Admission already took a token from the named key's budget for this (unproven)
    /// initiation: it pays for the first copy.
    pub prepaid: bool,
}

/// What a sweep did: copies added to the targets, and whether candidates are left for the
/// next step.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Swept {
    pub copies: usize,
    pub more: bool,
}

/// Whether initiation `index` (entry `e`) of some peer is still in flight with `from`: sent to
/// it and unanswered, or answered by it and not yet confirmed. Either way an initiation from
/// `from` to that peer now would cross it. The second case is a real interop failure
/// (docs/e2e.md, "boringtun and wireguard-go"): boringtun answers an initiation and sends one
/// of its own 0.1-0.7 ms later; wireguard-go, consuming that initiation and the response
/// together on two workers, ends on a keypair whose index it deleted, and the pair loses
/// every packet until WireGuard's 15 s timer.
fn in_flight(
    e: &crate::table::IndexEntry,
    index: Index,
    from: &Endpoint,
    deliveries: &crate::table::Deliveries,
    t: Tick,
) -> bool {
    match e.peer {
        None => deliveries.contains(index, from, t),
        Some(_) => !e.confirmed && e.source == *from,
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

    /// The copy rules (module docs) for one copy of `s`'s initiation to `to`; on success the
    /// copy is paid for and recorded. `budgeted`: the copy also needs a fan-out token (a
    /// sweep or a further hand-over; a unicast to the responder does not). `pinned`: `to` is
    /// where the operator pinned a key (a server, a port's responder), not a possible victim.
    pub(super) fn copy_rules(
        &mut self,
        now: Instant,
        s: &mut Sender,
        to: Endpoint,
        budgeted: bool,
        pinned: bool,
    ) -> bool {
        let t = self.clock.tick(now);
        if to == s.from {
            return false;
        }
        let recipient_proven = pinned || self.endpoints.is_proven(&to, t);
        // the copy as it goes out on `to`'s listener (a parked one is framed for it there)
        let bytes = self.wire_len(&to, MessageType::Initiation, INITIATION);
        if !recipient_proven
            && !self
                .endpoints
                .get(&to)
                .is_some_and(|i| i.may_receive(bytes, t))
        {
            return false;
        }
        if !s.proven
            && s.key.is_some()
            && !s.prepaid
            && !self
                .key_budgets
                .allow(s.key, self.pins.is_pinned(s.key), now)
        {
            return false;
        }
        // Copies between proven endpoints cannot be aimed at a third party: they are bounded
        // per sender (PROVEN_SWEEP_CAP per sweep, one sweep per SWEEP_MIN_INTERVAL), so the
        // budget grows with the proven peers. Anything involving an unproven endpoint pays
        // from `--broadcast-rate`.
        if budgeted && !(s.proven && recipient_proven) && !self.fanout_token(now) {
            return false;
        }
        if !s.proven {
            s.prepaid = false;
            self.counters.unproven_copies += 1;
        }
        if !recipient_proven {
            self.counters.bytes_to_unproven += bytes as u64;
            self.endpoints.spend(&to, bytes, t);
        }
        self.deliveries.record(s.index, to, t)
    }

    /// A sweep for `s`'s initiation: candidates of `key`'s groups that could be WireGuard
    /// peers (proven; for a proven sender also peer-like ones with credit), never crossing, continuing where `s.from`'s
    /// last sweep stopped. Returns the copies added to `out.targets`.
    ///
    /// A proven sender's sweep sends its first PROVEN_SWEEP_STEP copies here; `more` in the
    /// result says candidates are left (the initiation is then parked as sweeping, and
    /// [`State::step_sweeps`] goes on). `step`: such a continuation, with at most this many
    /// copies (not limited to one per SWEEP_MIN_INTERVAL: it is the same sweep).
    pub(super) fn sweep(
        &mut self,
        now: Instant,
        s: &mut Sender,
        out: &mut Actions,
        step: Option<usize>,
    ) -> Swept {
        let t = self.clock.tick(now);
        if let (Some(info), None) = (self.endpoints.get(&s.from), step) {
            if info.swept_at != Tick(0) && !t.at_least_since(info.swept_at, SWEEP_MIN_INTERVAL) {
                return Swept::default();
            }
        }
        let max = match step {
            Some(n) => n,
            None if s.proven => PROVEN_SWEEP_STEP,
            None => MAX_FANOUT_PER_INITIATION,
        };
        let groups: Vec<GroupId> = self.keys.groups_of(s.key).to_vec();
        let want = Want {
            groups: &groups,
            key: s.key,
            from: s.from,
            max,
            examine: max.saturating_mul(4),
        };
        let first = out.targets.len();
        let (indices, deliveries, framings) = (&self.indices, &self.deliveries, &self.framings);
        let targets = &mut out.targets;
        let mut seqs: Vec<u64> = Vec::new();
        self.endpoints.sweep(&want, t, |c, info, seq| {
            // an unproven sender reaches proven candidates only: unproven ones get what they
            // can answer by hand-over, one per initiation they send, and a blind copy would
            // spend the credit that hand-over needs
            let eligible = (info.is_proven(t) || (info.peer_like && s.proven))
                && info.may_receive(
                    framed_len(framings, c, MessageType::Initiation, INITIATION),
                    t,
                );
            // crossing: c's own unanswered initiation is with the sender already
            let crossing = info.pending.is_some_and(|p| {
                !t.at_least_since(p.at, REKEY_TIMEOUT)
                    && indices
                        .lookup(p.index, t)
                        .is_some_and(|e| in_flight(e, p.index, &s.from, deliveries, t))
            });
            if eligible && !crossing && !targets.contains(c) {
                targets.push(*c);
                seqs.push(seq);
                true
            } else {
                false
            }
        });
        if let Some(info) = self.endpoints.get_mut(&s.from) {
            info.swept_at = t;
        }
        // Pay for each copy; the first refused one ends the sweep.
        let mut kept = first;
        for i in first..out.targets.len() {
            let to = out.targets[i];
            if !self.copy_rules(now, s, to, true, false) {
                // not paid for: the next sweep of this initiator starts here
                if let Some(seq) = seqs.get(i - first) {
                    self.endpoints.rewind_sweep(&s.from, *seq);
                }
                break;
            }
            out.targets[kept] = to;
            kept += 1;
        }
        out.targets.truncate(kept);
        let n = kept - first;
        self.counters.fanout_copies += n as u64;
        // the cursor is back at 0 when the lap ended (or a refused copy rewound it there);
        // a step that found few eligible candidates (most bound by now) still goes on
        let more = s.proven
            && self
                .endpoints
                .get(&s.from)
                .is_some_and(|i| i.sweep_from != 0);
        Swept { copies: n, more }
    }

    /// One turn of the proven sweeps still going (at most once per SWEEP_STEP_INTERVAL,
    /// whichever shard asks first): each, in turn, sends its next PROVEN_SWEEP_STEP copies,
    /// up to SWEEP_STEP_BUDGET in all. A sweep ends when its initiation was answered, its
    /// sender got bound (it paired with someone), less than HANDOVER_MARGIN of its life is
    /// left (a late answer reaches an initiator that has moved on), its lap ended, or it sent
    /// PROVEN_SWEEP_CAP. The copies go to `out`. Returns whether sweeps are left.
    pub fn step_sweeps(&mut self, now: Instant, out: &mut Vec<Datagram>) -> bool {
        if self.parked.sweeping.is_empty() {
            return false;
        }
        if self.parked.next_step.is_some_and(|at| now < at) {
            return true;
        }
        self.parked.next_step = Some(now + SWEEP_STEP_INTERVAL);
        let t = self.clock.tick(now);
        let mut budget = SWEEP_STEP_BUDGET;
        let mut scratch = Actions::new();
        for _ in 0..self.parked.sweeping.len() {
            if budget == 0 {
                break;
            }
            let Some(index) = self.parked.sweeping.pop_front() else {
                break;
            };
            let Some(p) = self.parked.parked.get(&index) else {
                continue;
            };
            let waiting = self
                .indices
                .lookup(index, t)
                .is_some_and(|e| e.peer.is_none() && e.endpoint == p.from);
            if !waiting
                || !p.proven
                || p.swept >= PROVEN_SWEEP_CAP
                || now + HANDOVER_MARGIN >= p.expires
                || self.endpoints.bound_key(&p.from).is_some()
            {
                continue;
            }
            let (from, key, bytes) = (p.from, p.key, p.bytes);
            let room = PROVEN_SWEEP_STEP
                .min(PROVEN_SWEEP_CAP - p.swept)
                .min(budget);
            let mut s = Sender {
                index,
                from,
                key,
                proven: true,
                prepaid: false,
            };
            scratch.clear();
            let swept = self.sweep(now, &mut s, &mut scratch, Some(room));
            budget -= swept.copies;
            for to in &scratch.targets {
                out.push(Datagram::new(*to, &bytes));
            }
            self.counters.forwarded += swept.copies as u64;
            if let Some(p) = self.parked.parked.get_mut(&index) {
                p.swept += swept.copies;
                if swept.more && p.swept < PROVEN_SWEEP_CAP {
                    self.parked.sweeping.push_back(index);
                }
            }
        }
        !self.parked.sweeping.is_empty()
    }

    /// Fills `out.targets` with a pinned key's recent clients, for a handshake it starts with
    /// a client the relay cannot name: newest first, never the sender, each copy under the
    /// copy rules.
    pub(super) fn pin_clients(
        &mut self,
        now: Instant,
        pin: KeyId,
        s: &mut Sender,
        out: &mut Actions,
    ) {
        let clients: Vec<Endpoint> = self
            .pins
            .recent_clients(pin)
            .filter(|c| *c != s.from)
            .take(MAX_FANOUT_PER_INITIATION)
            .collect();
        for c in clients {
            if !self.copy_rules(now, s, c, true, false) {
                break;
            }
            out.targets.push(c);
            self.counters.fanout_copies += 1;
        }
    }

    /// Whether `to` has an unanswered initiation of its own out with `from` (sent or handed
    /// to it in the last REKEY_TIMEOUT). Sending `from`'s initiation to `to` as well would
    /// cross them: each WireGuard peer answers the other's initiation, which replaces its own
    /// handshake (one per peer), and both responses are then refused. The one already out is
    /// left to finish; if it does not, the next retry goes through.
    pub(super) fn crossing(&self, to: &Endpoint, from: &Endpoint, t: Tick) -> bool {
        let Some(p) = self.endpoints.get(to).and_then(|i| i.pending) else {
            return false;
        };
        if t.at_least_since(p.at, REKEY_TIMEOUT) {
            return false;
        }
        self.indices
            .lookup(p.index, t)
            .is_some_and(|e| in_flight(e, p.index, from, &self.deliveries, t))
    }

    /// Keeps a cold initiation so candidates that appear within REKEY_TIMEOUT still get it.
    pub(super) fn park(
        &mut self,
        now: Instant,
        s: &Sender,
        preferred: bool,
        delivered: bool,
        swept: Swept,
        packet: &[u8],
    ) {
        let mut bytes = [0u8; INITIATION];
        if packet.len() != bytes.len() {
            return;
        }
        bytes.copy_from_slice(packet);
        let groups = self.keys.groups_of(s.key).to_vec();
        self.parked.park(Parked {
            sender: s.index,
            from: s.from,
            key: s.key,
            groups,
            proven: s.proven,
            preferred,
            delivered,
            prepaid: s.prepaid,
            swept: swept.copies,
            expires: now + REKEY_TIMEOUT,
            bytes,
        });
        if swept.more && s.proven {
            self.parked.sweeping.push_back(s.index);
        }
        self.counters.parked += 1;
    }

    pub(super) fn unpark(&mut self, sender: Index) {
        self.parked.unpark(sender);
    }

    /// A candidate `to` (unbound) that named `named`, so may hold any other key sharing a
    /// group with it: hand it the parked initiations it could answer. Proven senders' and
    /// peer-like senders' first, then newest first; never one whose named key is bound to
    /// another endpoint; each under the copy rules (so an unproven `to` gets at most one per
    /// initiation it sent). The first hand-over needs no fan-out token: it answers the
    /// initiation `to` just sent with one of the same size, and a burst of cold fan-out must
    /// not starve the hand-overs that pair sessions. Returns how many it handed.
    pub(super) fn deliver_parked(
        &mut self,
        now: Instant,
        to: Endpoint,
        named: Option<KeyId>,
        retrying: bool,
        out: &mut Actions,
    ) -> usize {
        if self.parked.is_empty() || self.endpoints.bound_key(&to).is_some() {
            return 0;
        }
        let t = self.clock.tick(now);
        let limit = if self.endpoints.is_proven(&to, t) {
            PROVEN_HANDOVERS
        } else {
            1
        };
        let proven = self.endpoints.is_proven(&to, t);
        let open = self.keys.is_open();
        let groups: Vec<GroupId> = self.keys.groups_of(named).to_vec();
        let mut chosen: Vec<Index> = Vec::new();
        // Passes: initiations nobody holds yet (proven or peer-like senders' first), then, for
        // a proven candidate only, those already delivered elsewhere (a blind copy may have
        // gone to the wrong peer). An unproven candidate gets one hand-over per initiation it
        // sends, so it gets the likeliest: one that reached nobody.
        // An unproven candidate that retries (peer-like) gets proven or peer-like senders'
        // only (peer-like by now: their sender may have retried since it was parked): taking
        // another unproven one (a spoofer's with a valid mac1, under attack) would spend the
        // credit its partner's initiation needs and hold its own back. Keyed modes only: open
        // mode admits no unproven sender that is not peer-like.
        let passes: &[(bool, bool)] = if proven {
            &[(true, false), (false, false), (true, true), (false, true)]
        } else {
            &[(true, false), (false, false)]
        };
        // a retrying candidate (keyed modes) takes an unproven sender's initiation for a key
        // whose budget is spent (someone floods it) only if that sender has retried since, as
        // a peer does and a spoofer does not
        let strict = retrying && !open;
        for &(preferred_pass, delivered_pass) in passes {
            for g in &groups {
                let Some(list) = self.parked.by_group.get(g) else {
                    continue;
                };
                for sender in list.iter().rev() {
                    if chosen.len() >= limit + HANDOVER_SPARES {
                        break;
                    }
                    let Some(p) = self.parked.parked.get(sender) else {
                        continue;
                    };
                    let flooded = strict
                        && !p.preferred
                        && !self
                            .key_budgets
                            .has_token(p.key, self.pins.is_pinned(p.key), now);
                    let preferred = p.preferred
                        || (flooded
                            && (self.endpoints.is_proven(&p.from, t)
                                || self.endpoints.get(&p.from).is_some_and(|i| i.peer_like)));
                    if preferred != preferred_pass
                        || (flooded && !preferred)
                        || p.delivered != delivered_pass
                        || p.from == to
                        || now + HANDOVER_MARGIN >= p.expires
                        || chosen.contains(sender)
                        || self.deliveries.contains(*sender, &to, t)
                    {
                        continue;
                    }
                    if !open {
                        // `to` may hold p's key only if it named another key of p's groups.
                        if p.key == named || !self.keys.share_group(p.key, named) {
                            continue;
                        }
                        if p.key
                            .and_then(|k| self.endpoints.holder_of(k, t))
                            .is_some_and(|h| h != to)
                        {
                            continue;
                        }
                    }
                    chosen.push(*sender);
                }
            }
        }
        let mut handed = 0;
        for sender in chosen {
            if handed >= limit {
                break;
            }
            // Still waiting for a response?
            let waiting = self
                .indices
                .lookup(sender, t)
                .is_some_and(|e| e.peer.is_none());
            let Some(p) = self.parked.parked.get(&sender).cloned().filter(|_| waiting) else {
                self.parked.unpark(sender);
                continue;
            };
            let mut s = Sender {
                index: sender,
                from: p.from,
                key: p.key,
                proven: p.proven,
                prepaid: p.prepaid,
            };
            // a copy its own key's budget cannot pay (spoofers draining it) must not keep the
            // next one, maybe the recipient's real partner, from being handed over
            if !self.copy_rules(now, &mut s, to, handed > 0, false) {
                continue;
            }
            out.extra.push(Datagram::new(to, &p.bytes));
            if let Some(p) = self.parked.parked.get_mut(&sender) {
                p.delivered = true;
                p.prepaid = s.prepaid;
            }
            self.counters.handovers += 1;
            handed += 1;
        }
        handed
    }
}
