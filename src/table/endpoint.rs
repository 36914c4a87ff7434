//! What the relay knows of each endpoint, and the identity bindings "key K is held by
//! endpoint E" confirmed by the peers' own handshakes (DESIGN §4).
//!
//! Invariants (docs/handshake.md has the whole argument):
//! - **Proof.** An endpoint is *proven* while `now < proven_until`: it answered the relay's
//!   cookie (mac2), took part in a confirmed session, or roamed with a continuing counter.
//!   Anything else is *unproven*, and the relay sends it at most as many handshake bytes as it
//!   received from it: `credit` is that balance, spent by every handshake message sent to it
//!   (bytes as framed on the wire: `State::wire_len`).
//! - **Peer-like.** An unproven endpoint that retried from the same address after a pause, as
//!   a WireGuard peer does every REKEY_TIMEOUT, is `peer_like`; a spoofer cycling fresh source
//!   addresses never is. Only proven or peer-like endpoints are fan-out (sweep) targets.
//! - **Bindings** are hints that outlive sessions: a key keeps its holder until the key shows
//!   up elsewhere or the holder goes idle. They are what makes a second handshake free of
//!   fan-out, and `--state-file` keeps them across restarts.
//! - **Candidate lists are skipped, not pruned, by searches.** A sweep never removes an entry
//!   (another pair's search must not delete this pair's holder); only expiry compacts them,
//!   in order, so each initiator's sweep cursor stays meaningful and successive sweeps of one
//!   initiator reach disjoint candidates.

use std::collections::HashMap;

use super::{Endpoint, Tick};
use crate::admit::{GroupId, KeyId};
use crate::constants::{ENDPOINT_IDLE_TIME, UNPROVEN_IDLE_TIME};

/// The last initiation an endpoint sent that the relay admitted.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub key: Option<KeyId>,
    pub at: Tick,
    /// Its sender index.
    pub index: crate::wire::Index,
}

/// One per endpoint that got past admission, so kept small: ticks, not `Instant`s, no heap.
#[derive(Debug, Clone)]
pub struct EndpointInfo {
    /// Last admitted handshake message from or to it.
    pub last_seen: Tick,
    /// Until when it counts as proven (see the module docs); `Tick(0)`: never.
    pub proven_until: Tick,
    /// The key it is confirmed to hold.
    pub bound: Option<KeyId>,
    pub pending: Option<Pending>,
    /// While unproven: handshake bytes received from it minus bytes sent to it.
    pub credit: u32,
    /// It retried from this address as a WireGuard peer does.
    pub peer_like: bool,
    /// Where its next sweep continues: a candidate sequence number.
    pub sweep_from: u64,
    /// When it last swept (a sweep per initiator per SWEEP_MIN_INTERVAL at most).
    pub swept_at: Tick,
    /// Open mode has no keys to bind: the endpoint its last confirmed session was with, and
    /// until when that counts (the open-mode binding).
    pub partner: Option<Endpoint>,
    pub partner_until: Tick,
    /// It sits on the candidate lists of the groups of `registered_key` (the key it named).
    registered: bool,
    registered_key: Option<KeyId>,
}

impl EndpointInfo {
    fn new(now: Tick) -> Self {
        EndpointInfo {
            last_seen: now,
            proven_until: Tick(0),
            bound: None,
            pending: None,
            credit: 0,
            peer_like: false,
            sweep_from: 0,
            swept_at: Tick(0),
            partner: None,
            partner_until: Tick(0),
            registered: false,
            registered_key: None,
        }
    }

    pub fn is_proven(&self, now: Tick) -> bool {
        now < self.proven_until
    }

    /// Its open-mode partner, while that counts.
    pub fn partner(&self, now: Tick) -> Option<Endpoint> {
        self.partner.filter(|_| now < self.partner_until)
    }

    /// Taken: bound to a key other than `key`, or (open mode) in a session with a partner.
    fn taken(&self, key: Option<KeyId>, now: Tick) -> bool {
        match key {
            Some(_) => self.bound.is_some_and(|b| Some(b) != key),
            None => self.bound.is_some() || self.partner(now).is_some(),
        }
    }

    /// Unproven endpoints are forgotten soon (a spoofed source must not hold memory for a
    /// key lifetime); proven or bound ones after a key lifetime of silence.
    pub fn is_idle(&self, now: Tick) -> bool {
        let keep = if self.bound.is_some() || self.proven_until > self.last_seen {
            ENDPOINT_IDLE_TIME
        } else {
            UNPROVEN_IDLE_TIME
        };
        now.at_least_since(self.last_seen, keep)
    }

    /// Whether the relay may send it `bytes` more handshake bytes now.
    pub fn may_receive(&self, bytes: usize, now: Tick) -> bool {
        self.is_proven(now) || bytes <= self.credit as usize
    }
}

/// What a sweep looks for: candidates of `groups` that may hold `key`, other than `from`.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub groups: &'a [GroupId],
    pub key: Option<KeyId>,
    pub from: Endpoint,
    /// Copies wanted at most.
    pub max: usize,
    /// Entries examined at most (dead and ineligible ones included).
    pub examine: usize,
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One group's candidates in the order they registered (sequence numbers increase).
#[derive(Debug, Default)]
struct Candidates {
    entries: Vec<(u64, Endpoint)>,
}

#[derive(Debug, Default)]
pub struct EndpointTable {
    map: Map<Endpoint, EndpointInfo>,
    bindings: Map<KeyId, Endpoint>,
    candidates: Map<GroupId, Candidates>,
    next_seq: u64,
}

impl EndpointTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, e: &Endpoint) -> Option<&EndpointInfo> {
        self.map.get(e)
    }

    pub fn get_mut(&mut self, e: &Endpoint) -> Option<&mut EndpointInfo> {
        self.map.get_mut(e)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Endpoint, &EndpointInfo)> {
        self.map.iter()
    }

    pub fn bindings_len(&self) -> usize {
        self.bindings.len()
    }

    /// Every binding, for `--state-file`.
    pub fn bindings(&self) -> impl Iterator<Item = (KeyId, Endpoint)> + '_ {
        self.bindings.iter().map(|(k, e)| (*k, *e))
    }

    /// Entries on candidate lists (all groups), for tests and status.
    pub fn candidate_entries(&self) -> usize {
        self.candidates.values().map(|c| c.entries.len()).sum()
    }

    /// Marks an endpoint seen, creating its record.
    pub fn touch(&mut self, e: Endpoint, now: Tick) -> &mut EndpointInfo {
        let info = self.map.entry(e).or_insert_with(|| EndpointInfo::new(now));
        info.last_seen = info.last_seen.max(now);
        info
    }

    pub fn is_proven(&self, e: &Endpoint, now: Tick) -> bool {
        self.map.get(e).is_some_and(|i| i.is_proven(now))
    }

    /// Proven for at least `d` from `now` (never shortens an earlier proof).
    pub fn mark_proven_for(&mut self, e: Endpoint, now: Tick, d: std::time::Duration) {
        let info = self.touch(e, now);
        info.proven_until = info.proven_until.max(now.after(d));
    }

    /// Counts handshake bytes received from `e` (its credit while unproven).
    pub fn credit(&mut self, e: &Endpoint, bytes: usize) {
        if let Some(info) = self.map.get_mut(e) {
            let b = u32::try_from(bytes).unwrap_or(u32::MAX);
            info.credit = info.credit.saturating_add(b);
        }
    }

    /// Takes `bytes` from `e`'s credit if the relay may send them (always, once proven).
    /// An endpoint without a record has no credit.
    pub fn spend(&mut self, e: &Endpoint, bytes: usize, now: Tick) -> bool {
        let Some(info) = self.map.get_mut(e) else {
            return false;
        };
        if info.is_proven(now) {
            return true;
        }
        match u32::try_from(bytes) {
            Ok(b) if b <= info.credit => {
                info.credit -= b;
                true
            }
            _ => false,
        }
    }

    /// The key an endpoint is confirmed to hold.
    pub fn bound_key(&self, e: &Endpoint) -> Option<KeyId> {
        self.map.get(e).and_then(|i| i.bound)
    }

    /// The endpoint confirmed to hold a key.
    pub fn holder_of(&self, key: KeyId, now: Tick) -> Option<Endpoint> {
        let e = *self.bindings.get(&key)?;
        match self.map.get(&e) {
            Some(info) if !info.is_idle(now) => Some(e),
            _ => None,
        }
    }

    /// Records that `e` holds `key`, undoing any binding either had before. An endpoint that
    /// loses its binding is registered again by its next initiation.
    pub fn bind(&mut self, key: KeyId, e: Endpoint, now: Tick) {
        if let Some(old) = self.bindings.insert(key, e) {
            if old != e {
                if let Some(info) = self.map.get_mut(&old) {
                    if info.bound == Some(key) {
                        info.bound = None;
                        info.registered = false;
                    }
                }
            }
        }
        let info = self.touch(e, now);
        if let Some(prev) = info.bound.replace(key) {
            if prev != key && self.bindings.get(&prev) == Some(&e) {
                self.bindings.remove(&prev);
            }
        }
    }

    /// Puts an endpoint on the candidate lists of `groups`, the groups of the key it named
    /// (so it may hold another key of theirs).
    pub fn add_candidate(
        &mut self,
        e: Endpoint,
        named: Option<KeyId>,
        groups: &[GroupId],
        now: Tick,
    ) {
        let info = self.map.entry(e).or_insert_with(|| EndpointInfo::new(now));
        if info.registered && info.registered_key == named {
            return;
        }
        info.registered = true;
        info.registered_key = named;
        for g in groups {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.candidates
                .entry(*g)
                .or_default()
                .entries
                .push((seq, e));
        }
    }

    /// One systematic sweep step for `want.from`: starting at its own cursor, visits the
    /// candidates of `want.groups` in registration order up to the end of the list, and
    /// offers each one
    /// that is live, not the sender, and not bound to another key to `accept`, which says
    /// whether a copy went there. Stops after `want.max` copies or `want.examine` entries
    /// (per group), and moves the cursor past the last entry visited, so the sender's next
    /// sweep continues with candidates this one did not reach. Removes nothing.
    pub fn sweep(
        &mut self,
        want: &Want<'_>,
        now: Tick,
        mut accept: impl FnMut(&Endpoint, &EndpointInfo, u64) -> bool,
    ) -> usize {
        let Want {
            groups,
            key,
            from,
            max,
            examine,
        } = *want;
        let start = self.map.get(&from).map_or(0, |i| i.sweep_from);
        let mut sent = 0;
        let mut next = start;
        for g in groups {
            let Some(list) = self.candidates.get(g) else {
                continue;
            };
            let len = list.entries.len();
            if len == 0 {
                continue;
            }
            // From the cursor to the end of the list (a lap ends there: the next sweep
            // starts again from the first entry); a cursor past the end starts a new lap.
            let mut first = list.entries.partition_point(|(s, _)| *s < start);
            if first >= len {
                first = 0;
            }
            next = 0;
            for &(seq, c) in list.entries[first..].iter().take(examine) {
                if sent >= max {
                    break;
                }
                next = seq.wrapping_add(1);
                if c == from {
                    continue;
                }
                let Some(info) = self.map.get(&c) else {
                    continue;
                };
                if info.is_idle(now) || info.taken(key, now) {
                    continue;
                }
                if accept(&c, info, seq) {
                    sent += 1;
                }
            }
            if list.entries.last().is_some_and(|(s, _)| next > *s) {
                next = 0;
            }
        }
        if let Some(info) = self.map.get_mut(&from) {
            info.sweep_from = next;
        }
        sent
    }

    /// Records an open-mode partner (both sides of a confirmed session), for `d`.
    pub fn set_partner(
        &mut self,
        e: Endpoint,
        partner: Endpoint,
        now: Tick,
        d: std::time::Duration,
    ) {
        let info = self.touch(e, now);
        info.partner = Some(partner);
        info.partner_until = now.after(d);
    }

    /// The open-mode partner of `e`, while it counts and is not idle.
    pub fn partner_of(&self, e: &Endpoint, now: Tick) -> Option<Endpoint> {
        let p = self.map.get(e)?.partner(now)?;
        self.map.get(&p).filter(|i| !i.is_idle(now)).map(|_| p)
    }

    /// Moves `e`'s sweep cursor back to `seq` (a candidate it chose but could not pay for, so
    /// its next sweep starts there).
    pub fn rewind_sweep(&mut self, e: &Endpoint, seq: u64) {
        if let Some(info) = self.map.get_mut(e) {
            info.sweep_from = seq;
        }
    }

    /// A reload changed the key directory: bindings of keys `gone` says are gone end, and
    /// every candidate entry moves to the groups `regroup` gives its endpoint's named key
    /// (`None`: it leaves the lists and registers again with its next initiation). Entries
    /// keep their sequence numbers, so the sweeps' cursors stay where they were. Returns the
    /// bindings that ended.
    pub fn reconfigure(
        &mut self,
        gone: impl Fn(KeyId) -> bool,
        regroup: impl Fn(Option<KeyId>) -> Option<Vec<GroupId>>,
    ) -> usize {
        let before = self.bindings.len();
        self.bindings.retain(|k, _| !gone(*k));
        for info in self.map.values_mut() {
            if info.bound.is_some_and(&gone) {
                info.bound = None;
                info.registered = false;
            }
        }
        let mut entries: Vec<(u64, Endpoint)> = self
            .candidates
            .drain()
            .flat_map(|(_, list)| list.entries)
            .collect();
        entries.sort_unstable_by_key(|(seq, _)| *seq);
        entries.dedup();
        for (seq, e) in entries {
            let Some(info) = self.map.get_mut(&e) else {
                continue;
            };
            if !info.registered {
                continue;
            }
            match regroup(info.registered_key) {
                Some(groups) => {
                    for g in groups {
                        let list = &mut self.candidates.entry(g).or_default().entries;
                        if list.last() != Some(&(seq, e)) {
                            list.push((seq, e));
                        }
                    }
                }
                None => info.registered = false,
            }
        }
        before - self.bindings.len()
    }

    /// Forgets every endpoint `gone` names (a listener closed by a reload: nothing can reach
    /// them any more), with its bindings and candidate entries. Returns the bindings that ended.
    pub fn forget(&mut self, gone: impl Fn(&Endpoint) -> bool) -> usize {
        let before = self.bindings.len();
        self.map.retain(|e, _| !gone(e));
        self.bindings.retain(|_, e| !gone(e));
        for list in self.candidates.values_mut() {
            list.entries.retain(|(_, e)| !gone(e));
        }
        before - self.bindings.len()
    }

    /// Forgets idle endpoints and their bindings, and compacts the candidate lists (in
    /// order) of gone and bound endpoints, and of earlier entries of an endpoint listed again
    /// (it registers anew each time it names another key, which may share a group with the
    /// last). Returns how many endpoints went.
    pub fn expired_endpoints(&mut self, now: Tick) -> usize {
        let before = self.map.len();
        self.map.retain(|_, info| !info.is_idle(now));
        let map = &mut self.map;
        self.bindings
            .retain(|k, e| map.get(e).is_some_and(|i| i.bound == Some(*k)));
        let mut last: Map<Endpoint, u64> = Map::default();
        for list in self.candidates.values_mut() {
            // Keep an endpoint's last entry: every cursor that would reach an earlier one
            // reaches it too.
            last.clear();
            for (seq, e) in &list.entries {
                last.insert(*e, *seq);
            }
            list.entries.retain(|(seq, e)| last.get(e) == Some(seq));
            list.entries.retain(|(_, e)| match map.get_mut(e) {
                // Bound endpoints leave the lists (a search for their own key finds them as
                // the holder); they register again if the binding goes.
                Some(info) if info.bound.is_some() || info.partner(now).is_some() => {
                    info.registered = false;
                    false
                }
                Some(_) => true,
                None => false,
            });
        }
        self.candidates.retain(|_, list| !list.entries.is_empty());
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ListenerId;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::time::Duration;

    fn t0() -> Tick {
        Tick(1)
    }

    fn want(groups: &[GroupId], key: Option<KeyId>, from: Endpoint, max: usize) -> Want<'_> {
        Want {
            groups,
            key,
            from,
            max,
            examine: usize::MAX,
        }
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(ListenerId(0), format!("127.0.0.1:{port}").parse().unwrap())
    }

    fn collect(tab: &mut EndpointTable, w: &Want<'_>, t: Tick) -> Vec<Endpoint> {
        let mut out = Vec::new();
        tab.sweep(w, t, |c, _, _| {
            out.push(*c);
            true
        });
        out
    }

    #[test]
    fn an_endpoint_naming_keys_in_turn_stays_listed_once() {
        // Found by the `route` fuzz target: each initiation naming another key of the same
        // group added one more entry, which expiry kept while the endpoint stayed live, so
        // one endpoint alternating two keys grew the list without bound.
        let t = t0();
        let g = [GroupId(0)];
        let mut tab = EndpointTable::new();
        tab.add_candidate(ep(2), Some(KeyId::new(9)), &g, t);
        for i in 0..100 {
            tab.add_candidate(ep(1), Some(KeyId::new(1 + i % 2)), &g, t);
        }
        tab.add_candidate(ep(3), Some(KeyId::new(9)), &g, t);
        tab.expired_endpoints(t);
        assert_eq!(tab.candidate_entries(), 3);
        // Order kept, the endpoint at its last registration.
        let out = collect(&mut tab, &want(&g, Some(KeyId::new(7)), ep(9), 64), t);
        assert_eq!(out, vec![ep(2), ep(1), ep(3)]);
    }

    #[test]
    fn bind_moves_and_replaces() {
        let t = t0();
        let mut tab = EndpointTable::new();
        tab.bind(KeyId::new(1), ep(1), t);
        assert_eq!(tab.holder_of(KeyId::new(1), t), Some(ep(1)));
        // The key moved.
        tab.bind(KeyId::new(1), ep(2), t);
        assert_eq!(tab.holder_of(KeyId::new(1), t), Some(ep(2)));
        assert_eq!(tab.bound_key(&ep(1)), None);
        // The endpoint now holds another key.
        tab.bind(KeyId::new(2), ep(2), t);
        assert_eq!(tab.holder_of(KeyId::new(1), t), None);
        assert_eq!(tab.bound_key(&ep(2)), Some(KeyId::new(2)));
        assert_eq!(tab.bindings_len(), 1);
    }

    #[test]
    fn sweep_skips_sender_bound_and_idle_and_removes_nothing() {
        let t = t0();
        let g = [GroupId(0)];
        let mut tab = EndpointTable::new();
        for p in 1..=4 {
            tab.add_candidate(ep(p), None, &g, t);
            tab.mark_proven_for(ep(p), t, Duration::from_secs(600));
        }
        tab.bind(KeyId::new(9), ep(3), t);
        let mut out = collect(&mut tab, &want(&g, Some(KeyId::new(1)), ep(1), 64), t);
        out.sort_by_key(|e| e.addr().port());
        assert_eq!(out, vec![ep(2), ep(4)]);
        assert_eq!(tab.candidate_entries(), 4, "a sweep prunes nothing");
        // A bound endpoint is still found by a search for its own key.
        let out = collect(&mut tab, &want(&g, Some(KeyId::new(9)), ep(1), 64), t);
        assert!(out.contains(&ep(3)));
        // Idle endpoints are skipped (unproven ones go idle soon).
        let later = t.after(ENDPOINT_IDLE_TIME + Duration::from_secs(1));
        tab.touch(ep(2), later);
        let out = collect(&mut tab, &want(&g, Some(KeyId::new(1)), ep(1), 64), later);
        assert_eq!(out, vec![ep(2)]);
    }

    #[test]
    fn unproven_endpoints_go_idle_sooner_than_proven_ones() {
        let t = t0();
        let mut tab = EndpointTable::new();
        tab.touch(ep(1), t);
        tab.mark_proven_for(ep(2), t, Duration::from_secs(120));
        let later = t.after(UNPROVEN_IDLE_TIME);
        assert!(tab.get(&ep(1)).unwrap().is_idle(later));
        assert!(!tab.get(&ep(2)).unwrap().is_idle(later));
    }

    #[test]
    fn credit_is_spent_only_while_unproven() {
        let t = t0();
        let mut tab = EndpointTable::new();
        assert!(!tab.spend(&ep(1), 1, t), "no record, no credit");
        tab.touch(ep(1), t);
        tab.credit(&ep(1), 148);
        assert!(tab.spend(&ep(1), 64, t));
        assert!(!tab.spend(&ep(1), 148, t), "84 left");
        assert!(tab.spend(&ep(1), 84, t));
        assert!(!tab.spend(&ep(1), 1, t));
        tab.mark_proven_for(ep(1), t, Duration::from_secs(1));
        assert!(tab.spend(&ep(1), 100_000, t));
    }

    #[test]
    fn another_pairs_search_does_not_hide_a_holder() {
        // Pair i's holder is bound; pair j's sweep passes over it; pair i's own search still
        // finds it (it is skipped, not removed).
        let t = t0();
        let g = [GroupId(0)];
        let mut tab = EndpointTable::new();
        for p in 1..=3 {
            tab.add_candidate(ep(p), None, &g, t);
        }
        tab.bind(KeyId::new(1), ep(1), t);
        let out = collect(&mut tab, &want(&g, Some(KeyId::new(2)), ep(9), 64), t);
        assert!(!out.contains(&ep(1)));
        let out = collect(&mut tab, &want(&g, Some(KeyId::new(1)), ep(8), 64), t);
        assert!(out.contains(&ep(1)));
    }

    #[test]
    fn expiry_compacts_lists_in_order_and_drops_idle_endpoints() {
        let t = t0();
        let mut tab = EndpointTable::new();
        tab.bind(KeyId::new(1), ep(1), t);
        tab.add_candidate(ep(2), None, &[GroupId(0)], t);
        let later = t.after(ENDPOINT_IDLE_TIME);
        assert_eq!(tab.expired_endpoints(later), 2);
        assert_eq!(tab.bindings_len(), 0);
        assert!(tab.is_empty());
        assert_eq!(tab.candidate_entries(), 0);
    }

    proptest! {
        /// Successive sweeps of one initiator reach disjoint candidates and cover the whole
        /// group in ceil(candidates / cap) rounds, whatever other initiators do in between.
        #[test]
        fn successive_sweeps_cover_every_candidate(
            n in 1usize..200,
            cap in 1usize..40,
            others in proptest::collection::vec(0u16..300, 0..20),
        ) {
            let t = t0();
            let g = [GroupId(0)];
            let mut tab = EndpointTable::new();
            for p in 0..n {
                tab.add_candidate(ep(1000 + p as u16), None, &g, t);
            }
            let me = ep(1);
            tab.touch(me, t);
            let rounds = n.div_ceil(cap);
            let mut seen = HashSet::new();
            for r in 0..rounds {
                // Someone else sweeps in between (must not disturb this initiator's cursor).
                if let Some(o) = others.get(r) {
                    let other = ep(2 + *o);
                    tab.touch(other, t);
                    collect(&mut tab, &want(&g, None, other, cap), t);
                }
                let got = collect(&mut tab, &want(&g, None, me, cap), t);
                for c in got {
                    prop_assert!(seen.insert(c), "reached twice before a full lap: {c}");
                }
            }
            prop_assert_eq!(seen.len(), n);
        }
    }
}
