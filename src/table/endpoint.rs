//! What the relay knows of each endpoint, and the identity bindings "key K is held by
//! endpoint E" confirmed by the peers' own handshakes (DESIGN §4).
//!
//! A binding is a hint: it sends later initiations for K to E alone, and is dropped when the
//! initiator retries, when K shows up elsewhere, or when E goes idle.

use std::collections::HashMap;

use super::{Endpoint, Tick};
use crate::admit::{GroupId, KeyId};
use crate::constants::{ENDPOINT_IDLE_TIME, SOURCE_PROVEN_TIME};

/// The last initiation an endpoint sent that the relay admitted.
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub key: Option<KeyId>,
    pub at: Tick,
    /// Its sender index.
    pub index: crate::wire::Index,
}

/// One per endpoint, so kept small (36 bytes): ticks, not `Instant`s, and no heap.
#[derive(Debug, Clone)]
pub struct EndpointInfo {
    /// Last admitted handshake message from or to it.
    pub last_seen: Tick,
    /// Until when it counts as having proven its address (a valid mac2 with our cookie);
    /// `Tick(0)`: never.
    pub proven_until: Tick,
    /// The key it is confirmed to hold.
    pub bound: Option<KeyId>,
    pub pending: Option<Pending>,
    /// It sits on the candidate lists of the groups of `registered_key` (the key it named).
    /// Cleared when a list drops it, so its next initiation registers it again.
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
            registered: false,
            registered_key: None,
        }
    }

    pub fn is_idle(&self, now: Tick) -> bool {
        now.at_least_since(self.last_seen, ENDPOINT_IDLE_TIME)
    }
}

/// Entries a fan-out may examine per target it wants, so dead entries cannot make it scan a
/// whole list.
const EXAMINE_PER_MAX: usize = 4;

/// What a fan-out looks for: candidates of `groups` that may hold `key`, other than `from`,
/// at most `max` of them.
#[derive(Debug, Clone, Copy)]
pub struct Want<'a> {
    pub groups: &'a [GroupId],
    pub key: Option<KeyId>,
    pub from: Endpoint,
    pub max: usize,
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct EndpointTable {
    map: Map<Endpoint, EndpointInfo>,
    bindings: Map<KeyId, Endpoint>,
    candidates: Map<GroupId, Vec<Endpoint>>,
}

impl EndpointTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, e: &Endpoint) -> Option<&EndpointInfo> {
        self.map.get(e)
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

    /// Marks an endpoint seen, creating its record.
    pub fn touch(&mut self, e: Endpoint, now: Tick) -> &mut EndpointInfo {
        let info = self.map.entry(e).or_insert_with(|| EndpointInfo::new(now));
        info.last_seen = info.last_seen.max(now);
        info
    }

    pub fn is_proven(&self, e: &Endpoint, now: Tick) -> bool {
        self.map.get(e).is_some_and(|i| now < i.proven_until)
    }

    pub fn mark_proven(&mut self, e: Endpoint, now: Tick) {
        self.touch(e, now).proven_until = now.after(SOURCE_PROVEN_TIME);
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

    /// Records that `e` holds `key`, undoing any binding either had before.
    pub fn bind(&mut self, key: KeyId, e: Endpoint, now: Tick) {
        if let Some(old) = self.bindings.insert(key, e) {
            if old != e {
                if let Some(info) = self.map.get_mut(&old) {
                    if info.bound == Some(key) {
                        info.bound = None;
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
            self.candidates.entry(*g).or_default().push(e);
        }
    }

    /// Collects fan-out targets for an initiation naming `key`: live endpoints on the
    /// candidate lists of `groups`, other than `from`, not bound to a different key, at most
    /// `max`. When there are more, `cursor` rotates the starting point so retries reach the
    /// rest. Dead and bound-elsewhere entries met on the way are removed. Each call examines
    /// at most `EXAMINE_PER_MAX * max` entries per group, whatever the list length: a cold
    /// initiation costs the same with ten candidates as with a million.
    pub fn candidates(
        &mut self,
        want: &Want<'_>,
        now: Tick,
        cursor: &mut usize,
        out: &mut Vec<Endpoint>,
    ) {
        let Want {
            groups,
            key,
            from,
            max,
        } = *want;
        for g in groups {
            let Some(list) = self.candidates.get_mut(g) else {
                continue;
            };
            let len = list.len();
            let budget = max.saturating_mul(EXAMINE_PER_MAX).min(len);
            let start = if len == 0 { 0 } else { *cursor % len };
            let mut dead: Vec<usize> = Vec::new();
            // Visit each position at most once, from the cursor.
            for step in 0..budget {
                if out.len() >= max {
                    break;
                }
                let i = (start + step) % len;
                let c = list[i];
                match self.map.get_mut(&c) {
                    Some(info)
                        if !info.is_idle(now) && (info.bound.is_none() || info.bound == key) =>
                    {
                        if c != from && !out.contains(&c) {
                            out.push(c);
                        }
                    }
                    Some(info) => {
                        info.registered = false;
                        dead.push(i);
                    }
                    None => dead.push(i),
                }
            }
            // Highest first, so each swap_remove moves an entry that stays.
            dead.sort_unstable_by(|a, b| b.cmp(a));
            for i in dead {
                list.swap_remove(i);
            }
            *cursor = cursor.wrapping_add(max);
        }
    }

    /// Forgets idle endpoints and their bindings. Returns how many went.
    pub fn expired_endpoints(&mut self, now: Tick) -> usize {
        let before = self.map.len();
        self.map.retain(|_, info| !info.is_idle(now));
        let map = &self.map;
        self.bindings
            .retain(|k, e| map.get(e).is_some_and(|i| i.bound == Some(*k)));
        for list in self.candidates.values_mut() {
            list.retain(|e| map.contains_key(e));
        }
        self.candidates.retain(|_, list| !list.is_empty());
        before - self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ListenerId;
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
        }
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(ListenerId(0), format!("127.0.0.1:{port}").parse().unwrap())
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
    fn candidates_skip_sender_bound_and_idle() {
        let t = t0();
        let g = [GroupId(0)];
        let mut tab = EndpointTable::new();
        for p in 1..=4 {
            tab.add_candidate(ep(p), None, &g, t);
        }
        tab.bind(KeyId::new(9), ep(3), t);
        let mut out = Vec::new();
        let mut cursor = 0;
        tab.candidates(
            &want(&g, Some(KeyId::new(1)), ep(1), 64),
            t,
            &mut cursor,
            &mut out,
        );
        out.sort_by_key(|e| e.addr().port());
        assert_eq!(out, vec![ep(2), ep(4)]);
        // A bound endpoint is a candidate for its own key (a retry reaches it).
        tab.add_candidate(ep(3), Some(KeyId::new(7)), &g, t);
        out.clear();
        tab.candidates(
            &want(&g, Some(KeyId::new(9)), ep(1), 64),
            t,
            &mut cursor,
            &mut out,
        );
        assert!(out.contains(&ep(3)));
        // Idle endpoints drop out.
        let later = t.after(ENDPOINT_IDLE_TIME + Duration::from_secs(1));
        tab.touch(ep(2), later);
        out.clear();
        tab.candidates(
            &want(&g, Some(KeyId::new(1)), ep(1), 64),
            later,
            &mut cursor,
            &mut out,
        );
        assert_eq!(out, vec![ep(2)]);
    }

    #[test]
    fn candidates_rotate_past_the_cap() {
        let t = t0();
        let g = [GroupId(0)];
        let mut tab = EndpointTable::new();
        for p in 1..=10 {
            tab.add_candidate(ep(p), None, &g, t);
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        for _ in 0..4 {
            let mut out = Vec::new();
            tab.candidates(&want(&g, None, ep(100), 3), t, &mut cursor, &mut out);
            assert_eq!(out.len(), 3);
            seen.extend(out);
        }
        assert_eq!(seen.len(), 10, "four rounds of three cover all ten");
    }

    #[test]
    fn every_eligible_candidate_is_found_whatever_the_cursor() {
        let t = t0();
        let g = [GroupId(0)];
        for start in 0..6 {
            let mut tab = EndpointTable::new();
            for p in 1..=3 {
                tab.add_candidate(ep(p), None, &g, t);
            }
            tab.bind(KeyId::new(1), ep(1), t); // bound to another key: not a candidate for 2
            tab.bind(KeyId::new(2), ep(2), t); // the holder of 2: a candidate for 2
            let mut cursor = start;
            let mut out = Vec::new();
            tab.candidates(
                &want(&g, Some(KeyId::new(2)), ep(9), 64),
                t,
                &mut cursor,
                &mut out,
            );
            out.sort_by_key(|e| e.addr().port());
            assert_eq!(out, vec![ep(2), ep(3)], "cursor {start}");
        }
    }

    #[test]
    fn candidates_examine_a_bounded_number_of_entries() {
        let t = t0();
        let g = [GroupId(0)];
        let mut tab = EndpointTable::new();
        for p in 1..=1000 {
            tab.add_candidate(ep(p), None, &g, t);
        }
        // Everyone but the last goes idle.
        let later = t.after(ENDPOINT_IDLE_TIME);
        tab.touch(ep(1000), later);
        let mut cursor = 0;
        let mut out = Vec::new();
        tab.candidates(&want(&g, None, ep(5000), 2), later, &mut cursor, &mut out);
        // At most 8 examined (4 per wanted copy): 8 dead ones removed.
        assert!(out.is_empty());
        assert_eq!(tab.candidates[&GroupId(0)].len(), 1000 - 8);
        // Repeated calls prune their way to it.
        for _ in 0..200 {
            out.clear();
            tab.candidates(&want(&g, None, ep(5000), 2), later, &mut cursor, &mut out);
            if !out.is_empty() {
                break;
            }
        }
        assert_eq!(out, vec![ep(1000)]);
    }

    #[test]
    fn expiry_drops_idle_endpoints_and_their_bindings() {
        let t = t0();
        let mut tab = EndpointTable::new();
        tab.bind(KeyId::new(1), ep(1), t);
        tab.add_candidate(ep(2), None, &[GroupId(0)], t);
        let later = t.after(ENDPOINT_IDLE_TIME);
        assert_eq!(tab.expired_endpoints(later), 2);
        assert_eq!(tab.bindings_len(), 0);
        assert!(tab.is_empty());
    }
}
