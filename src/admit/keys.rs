//! The key directory: which public keys may be named by mac1, and which pairs may talk.
//!
//! Open mode has no keys at all: mac1 cannot be checked and every endpoint is a candidate for
//! every initiation. An allow-list alone is one group of all its keys. With `--group`, a pair
//! may talk only if both keys share a group; allowed keys in no group form one more group.

use std::collections::HashMap;

use crate::key::PublicKey;
use crate::wire::mac::{self, CookieKey, Mac1Key};
use crate::wire::mac1_bank::Mac1Bank;

/// A key's position in the directory. Never zero inside, so `Option<KeyId>` takes 4 bytes in
/// the tables that hold one per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(std::num::NonZeroU32);

impl KeyId {
    /// The key at position `index` (below u32::MAX).
    pub const fn new(index: u32) -> Self {
        match std::num::NonZeroU32::new(index.wrapping_add(1)) {
            Some(v) => KeyId(v),
            None => KeyId(std::num::NonZeroU32::MAX),
        }
    }

    pub const fn index(self) -> usize {
        (self.0.get() - 1) as usize
    }
}

/// Past this many members, a response's mac1 is matched by the lane search over every key.
const BIG_GROUP: usize = 64;

/// The keys a sender naming a key can hold (`KeyDirectory::only_partner`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partner {
    None,
    One(KeyId),
    Many,
}

/// A group's position in the directory. In open mode there is one group, `GroupId(0)`, that
/// every endpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

#[derive(Clone)]
pub struct KeyInfo {
    pub public: PublicKey,
    pub mac1: Mac1Key,
    pub cookie: CookieKey,
    pub groups: Vec<GroupId>,
    /// Configured now; `false` for a tombstone left by a reload.
    pub live: bool,
}

#[derive(Clone, Default)]
pub struct KeyDirectory {
    keys: Vec<KeyInfo>,
    /// Every key's mac1 key laid out for the lane search, in search order (`SearchOrder`).
    bank: Mac1Bank,
    order: SearchOrder,
    by_public: HashMap<PublicKey, KeyId>,
    /// Members of each group, by `GroupId`.
    members: Vec<Vec<KeyId>>,
    group_count: u32,
}

/// The one group of open mode.
pub const OPEN_GROUP: GroupId = GroupId(0);
const OPEN_GROUPS: &[GroupId] = &[OPEN_GROUP];

impl KeyDirectory {
    /// Builds the directory from an allow-list and groups (see module docs for the rules).
    pub fn new(allow: &[PublicKey], groups: &[Vec<PublicKey>]) -> Self {
        KeyDirectory::default().reconfigured(allow, groups).0
    }

    /// The directory for a new allow-list and groups (a reload), and the keys it no longer
    /// holds. Every key keeps its id, so the tables that name keys by id stay right: a key
    /// that is gone keeps its slot as a tombstone (no mac1 matches it, it is in no group),
    /// and comes back to it if a later configuration names it again. The search order starts
    /// over (the once-a-second `reorder` puts bound keys back at the end).
    pub fn reconfigured(
        &self,
        allow: &[PublicKey],
        groups: &[Vec<PublicKey>],
    ) -> (KeyDirectory, Vec<KeyId>) {
        let wanted: std::collections::HashSet<PublicKey> = allow
            .iter()
            .chain(groups.iter().flatten())
            .copied()
            .collect();
        let mut dir = KeyDirectory::default();
        let mut removed = Vec::new();
        for (i, old) in self.keys.iter().enumerate() {
            let id = KeyId::new(i as u32);
            let live = wanted.contains(&old.public);
            if !live && old.live {
                removed.push(id);
            }
            dir.push_slot(old.public, live);
        }
        for group in groups {
            let g = GroupId(dir.group_count);
            dir.group_count += 1;
            for key in group {
                let id = dir.intern(*key);
                let info = &mut dir.keys[id.index()];
                if !info.groups.contains(&g) {
                    info.groups.push(g);
                }
            }
        }
        let mut loose = Vec::new();
        for key in allow {
            let id = dir.intern(*key);
            if dir.keys[id.index()].groups.is_empty() && !loose.contains(&id) {
                loose.push(id);
            }
        }
        if !loose.is_empty() {
            let g = GroupId(dir.group_count);
            dir.group_count += 1;
            for id in loose {
                dir.keys[id.index()].groups.push(g);
            }
        }
        dir.members = vec![Vec::new(); dir.group_count as usize];
        for (i, info) in dir.keys.iter().enumerate() {
            for g in &info.groups {
                dir.members[g.0 as usize].push(KeyId::new(i as u32));
            }
        }
        (dir, removed)
    }

    /// The members of every group, as public keys in id order: two directories with the same
    /// signature give every `GroupId` the same meaning.
    pub fn group_signature(&self) -> Vec<Vec<PublicKey>> {
        self.members
            .iter()
            .map(|m| {
                m.iter()
                    .filter_map(|k| self.get(*k))
                    .map(|i| i.public)
                    .collect()
            })
            .collect()
    }

    /// Appends a key slot: live (searched by mac1) or a tombstone.
    fn push_slot(&mut self, public: PublicKey, live: bool) -> KeyId {
        let id = KeyId::new(self.keys.len() as u32);
        let mac1 = Mac1Key::new(public.as_bytes());
        if live {
            self.bank.push(mac1);
            self.order.push(id);
            self.by_public.insert(public, id);
        } else {
            self.order.push_absent();
        }
        self.keys.push(KeyInfo {
            public,
            mac1,
            cookie: CookieKey::new(public.as_bytes()),
            groups: Vec::new(),
            live,
        });
        id
    }

    fn intern(&mut self, public: PublicKey) -> KeyId {
        match self.by_public.get(&public) {
            Some(id) => *id,
            None => self.push_slot(public, true),
        }
    }

    /// No keys configured: relay any key, check no mac1.
    pub fn is_open(&self) -> bool {
        self.by_public.is_empty()
    }

    /// Key slots, tombstones included: ids are below this.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Keys configured now (tombstones left out).
    pub fn live_len(&self) -> usize {
        self.by_public.len()
    }

    pub fn group_count(&self) -> u32 {
        self.group_count.max(1)
    }

    pub fn get(&self, id: KeyId) -> Option<&KeyInfo> {
        self.keys.get(id.index()).filter(|k| k.live)
    }

    pub fn id_of(&self, public: &PublicKey) -> Option<KeyId> {
        self.by_public.get(public).copied()
    }

    /// The key whose mac1 a handshake message carries, if it is one of ours.
    /// A linear search, but in lanes over precomputed key states (`Mac1Bank`).
    pub fn match_mac1(&self, msg: &[u8]) -> Option<KeyId> {
        self.match_mac1_counted(msg).0
    }

    /// The key whose mac1 a handshake message carries, trying `hint` first (a retry names
    /// the same key as the initiation before it), then every key.
    /// Whether mac1 was made with `key`'s public key (one BLAKE2s).
    pub fn check_mac1_of(&self, key: KeyId, msg: &[u8]) -> bool {
        self.get(key)
            .is_some_and(|info| mac::check_mac1(&info.mac1, msg))
    }

    /// [`KeyDirectory::match_mac1`], with the number of keys tried (the BLAKE2s spent).
    /// Expected keys are tried first (newest first), bound keys last.
    pub fn match_mac1_counted(&self, msg: &[u8]) -> (Option<KeyId>, u32) {
        let (found, tried) = self.bank.find_from(msg, self.order.front);
        (
            found.and_then(|p| self.order.at.get(p).copied()),
            u32::try_from(tried).unwrap_or(u32::MAX),
        )
    }

    /// A cold initiation will likely name `key` soon: search it first (see `SearchOrder`).
    pub fn expect(&mut self, key: KeyId, now: u32) {
        self.order.expect(&mut self.bank, key, now);
    }

    /// `key` is bound to an endpoint: a cold initiation rarely names it, search it last.
    pub fn settle(&mut self, key: KeyId) {
        self.order.settle(&mut self.bank, key);
    }

    /// Back to the middle of the search order.
    pub fn release(&mut self, key: KeyId) {
        self.order.release(&mut self.bank, key);
    }

    /// Puts every key where it belongs now: expected keys marked before `stale` go back to
    /// the middle, bound keys (`bound(key)`) to the end, unbound keys out of the end. Linear
    /// in the keys; the State runs it with its once-a-second expiry.
    pub fn reorder(&mut self, stale: u32, bound: impl Fn(KeyId) -> bool) {
        for i in 0..self.order.pos.len() {
            let k = KeyId::new(i as u32);
            let Some(p) = self.order.position(k) else {
                continue;
            };
            let expected = p < self.order.front;
            let fresh = expected && self.order.marked[k.index()] >= stale;
            if fresh {
                continue;
            }
            if bound(k) {
                self.order.settle(&mut self.bank, k);
            } else {
                self.order.release(&mut self.bank, k);
            }
        }
    }

    /// The search position of each region's end, for tests and `show`: (expected, not bound).
    pub fn search_regions(&self) -> (usize, usize) {
        (self.order.front, self.order.back)
    }

    pub fn match_mac1_hinted(&self, msg: &[u8], hint: Option<KeyId>) -> Option<KeyId> {
        if let Some(info) = hint.and_then(|k| self.get(k)) {
            if mac::check_mac1(&info.mac1, msg) {
                return hint;
            }
        }
        self.match_mac1(msg)
    }

    /// The key among those sharing a group with `peer` whose mac1 the message carries. A
    /// response's mac1 must name such a key (or the pair is refused anyway), so only they are
    /// tried: two MACs for a pair-sized group instead of one per configured key.
    pub fn match_mac1_in_groups_of(&self, msg: &[u8], peer: KeyId) -> Option<KeyId> {
        let info = self.get(peer)?;
        // big groups (one allow-list of thousands): the lane search over every key beats
        // one BLAKE2s per member (a response in a 2000-key group cost 0.6 ms one by one)
        let members: usize = info
            .groups
            .iter()
            .filter_map(|g| self.members.get(g.0 as usize))
            .map(Vec::len)
            .sum();
        if members > BIG_GROUP {
            return self
                .match_mac1(msg)
                .filter(|k| self.share_group(Some(*k), Some(peer)));
        }
        for g in &info.groups {
            let Some(members) = self.members.get(g.0 as usize) else {
                continue;
            };
            for k in members {
                if let Some(candidate) = self.get(*k) {
                    if mac::check_mac1(&candidate.mac1, msg) {
                        return Some(*k);
                    }
                }
            }
        }
        None
    }

    /// Whether a sender naming `key` could hold more than one key: the keys sharing a group
    /// with `key`, itself left out, number more than one (open mode: always). Only then does
    /// finding a cold responder need a search; in a group of two the other key is the answer.
    pub fn identity_ambiguous(&self, key: Option<KeyId>) -> bool {
        self.only_partner(key) == Partner::Many
    }

    /// Which key a sender naming `key` can hold: none, exactly one, or several (open mode:
    /// always several).
    pub fn only_partner(&self, key: Option<KeyId>) -> Partner {
        let Some(info) = key.and_then(|k| self.get(k)) else {
            return Partner::Many;
        };
        let mut other: Option<KeyId> = None;
        for g in &info.groups {
            for m in self.members.get(g.0 as usize).into_iter().flatten() {
                if Some(*m) == key || Some(*m) == other {
                    continue;
                }
                if other.is_some() {
                    return Partner::Many;
                }
                other = Some(*m);
            }
        }
        match other {
            Some(k) => Partner::One(k),
            None => Partner::None,
        }
    }

    /// The groups of a key; in open mode (no key) the single open group.
    pub fn groups_of(&self, key: Option<KeyId>) -> &[GroupId] {
        match key.and_then(|k| self.get(k)) {
            Some(info) => &info.groups,
            None => OPEN_GROUPS,
        }
    }

    /// Whether two keys may talk: they share a group. In open mode everything may.
    pub fn share_group(&self, a: Option<KeyId>, b: Option<KeyId>) -> bool {
        match (a.and_then(|k| self.get(k)), b.and_then(|k| self.get(k))) {
            (Some(a), Some(b)) => a.groups.iter().any(|g| b.groups.contains(g)),
            _ => self.is_open(),
        }
    }
}

/// The order a full mac1 search tries keys in. It is exact whatever the order (every key is
/// tried before the answer is "none"); the order only decides how soon a hit comes, and a cold
/// initiation costs as many BLAKE2s as keys tried. Three regions of bank positions:
/// - `[0, front)`: *expected* keys, tried first, newest first: the key a sender is known to
///   hold when its group has two keys (its partner's first initiation will name it), and a
///   key named by an ambiguous sender (a hub's key is named by every new client);
/// - `[front, back)`: the rest;
/// - `[back, len)`: keys bound to an endpoint, tried last: their holder is known, so a cold
///   initiation from a new address rarely names one (the hub's key stays expected).
///
/// Moves are swaps, O(1). Measured by simulation on a cold start of 10k pairs with a group per
/// pair (docs/benchmarks.md): 0.59 of the keys tried in a fixed order when peers come up in a
/// random order, 0.25 when both peers of a pair come up together.
/// `SearchOrder::pos` of a key with no bank position (a tombstone).
const ABSENT: u32 = u32::MAX;

#[derive(Clone, Default)]
struct SearchOrder {
    /// Bank position -> key.
    at: Vec<KeyId>,
    /// Key -> bank position.
    pos: Vec<u32>,
    /// When each key was last expected (the caller's clock).
    marked: Vec<u32>,
    front: usize,
    back: usize,
}

impl SearchOrder {
    fn push(&mut self, key: KeyId) {
        let p = self.at.len();
        self.at.push(key);
        self.pos.push(p as u32);
        self.marked.push(0);
        // a new key joins the middle: the bound region (empty while keys are added) moves up
        self.back = self.at.len();
    }

    /// A tombstone's slot: no bank position.
    fn push_absent(&mut self) {
        self.pos.push(ABSENT);
        self.marked.push(0);
    }

    fn position(&self, key: KeyId) -> Option<usize> {
        self.pos
            .get(key.index())
            .filter(|p| **p != ABSENT)
            .map(|p| *p as usize)
    }

    fn swap(&mut self, bank: &mut Mac1Bank, i: usize, j: usize) {
        if i == j || i >= self.at.len() || j >= self.at.len() {
            return;
        }
        bank.swap(i, j);
        self.at.swap(i, j);
        let (a, b) = (self.at[i], self.at[j]);
        self.pos[a.index()] = i as u32;
        self.pos[b.index()] = j as u32;
    }

    /// To the newest slot of the front region.
    fn expect(&mut self, bank: &mut Mac1Bank, key: KeyId, now: u32) {
        let Some(mut p) = self.position(key) else {
            return;
        };
        if let Some(m) = self.marked.get_mut(key.index()) {
            *m = now;
        }
        if p >= self.back {
            self.swap(bank, p, self.back);
            p = self.back;
            self.back += 1;
        }
        if p >= self.front {
            self.swap(bank, p, self.front);
            self.front += 1;
        } else {
            self.swap(bank, p, self.front - 1);
        }
    }

    /// To the bound region.
    fn settle(&mut self, bank: &mut Mac1Bank, key: KeyId) {
        let Some(mut p) = self.position(key) else {
            return;
        };
        if p < self.front {
            self.swap(bank, p, self.front - 1);
            self.front -= 1;
            p = self.front;
        }
        if p < self.back {
            self.swap(bank, p, self.back - 1);
            self.back -= 1;
        }
    }

    /// To the middle region.
    fn release(&mut self, bank: &mut Mac1Bank, key: KeyId) {
        let Some(p) = self.position(key) else {
            return;
        };
        if p < self.front {
            self.swap(bank, p, self.front - 1);
            self.front -= 1;
        } else if p >= self.back {
            self.swap(bank, p, self.back);
            self.back += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u8) -> PublicKey {
        PublicKey([b; 32])
    }

    #[test]
    fn open_mode() {
        let d = KeyDirectory::new(&[], &[]);
        assert!(d.is_open());
        assert_eq!(d.groups_of(None), &[OPEN_GROUP]);
        assert!(d.share_group(None, None));
        assert_eq!(d.match_mac1(&[0u8; 148]), None);
    }

    #[test]
    fn allow_list_is_one_group() {
        let d = KeyDirectory::new(&[k(1), k(2), k(3)], &[]);
        assert_eq!(d.len(), 3);
        let ids: Vec<_> = [1, 2, 3].iter().map(|b| d.id_of(&k(*b)).unwrap()).collect();
        assert!(d.share_group(Some(ids[0]), Some(ids[2])));
        assert_eq!(d.group_count(), 1);
    }

    #[test]
    fn identity_is_ambiguous_beyond_a_pair() {
        let d = KeyDirectory::new(&[], &[vec![k(1), k(2)], vec![k(3), k(4), k(5)]]);
        let id = |b| Some(d.id_of(&k(b)).unwrap());
        assert!(
            !d.identity_ambiguous(id(1)),
            "a pair: the other key is the answer"
        );
        assert!(!d.identity_ambiguous(id(2)));
        assert!(d.identity_ambiguous(id(3)));
        assert!(d.identity_ambiguous(None), "open mode");
        let one = KeyDirectory::new(&[k(1), k(2)], &[]);
        assert!(!one.identity_ambiguous(Some(one.id_of(&k(1)).unwrap())));
        let overlap = KeyDirectory::new(&[], &[vec![k(1), k(2)], vec![k(1), k(3)]]);
        assert!(overlap.identity_ambiguous(Some(overlap.id_of(&k(1)).unwrap())));
        assert!(!overlap.identity_ambiguous(Some(overlap.id_of(&k(2)).unwrap())));
    }

    #[test]
    fn groups_isolate() {
        let d = KeyDirectory::new(&[], &[vec![k(1), k(2)], vec![k(3), k(4)], vec![k(2), k(3)]]);
        let id = |b| Some(d.id_of(&k(b)).unwrap());
        assert!(d.share_group(id(1), id(2)));
        assert!(d.share_group(id(3), id(4)));
        assert!(d.share_group(id(2), id(3)), "overlapping groups");
        assert!(!d.share_group(id(1), id(3)));
        assert!(!d.share_group(id(1), id(4)));
        assert!(!d.share_group(id(1), None), "unknown key never shares");
        assert_eq!(d.groups_of(id(2)).len(), 2);
    }

    #[test]
    fn loose_allowed_keys_form_their_own_group() {
        let d = KeyDirectory::new(&[k(1), k(5), k(6)], &[vec![k(1), k(2)]]);
        let id = |b| Some(d.id_of(&k(b)).unwrap());
        assert!(d.share_group(id(5), id(6)));
        assert!(!d.share_group(id(5), id(2)));
        assert!(d.share_group(id(1), id(2)));
        assert!(
            !d.share_group(id(1), id(5)),
            "k1 is in a group, so not loose"
        );
    }

    #[test]
    fn hinted_and_group_matching() {
        use crate::wire::testvec::{
            INITIATION_BYTES, INITIATOR_PUBLIC, RESPONDER_PUBLIC, RESPONSE_BYTES,
        };
        let (ki, kr) = (PublicKey(INITIATOR_PUBLIC), PublicKey(RESPONDER_PUBLIC));
        let d = KeyDirectory::new(&[], &[vec![ki, kr], vec![k(7), k(8)]]);
        let (i, r) = (d.id_of(&ki).unwrap(), d.id_of(&kr).unwrap());
        assert_eq!(d.match_mac1_hinted(&INITIATION_BYTES, Some(r)), Some(r));
        assert_eq!(
            d.match_mac1_hinted(&INITIATION_BYTES, Some(i)),
            Some(r),
            "bad hint"
        );
        assert_eq!(d.match_mac1_hinted(&INITIATION_BYTES, None), Some(r));
        // A response names the initiator, a member of the responder's groups.
        assert_eq!(d.match_mac1_in_groups_of(&RESPONSE_BYTES, r), Some(i));
        // Not found among the groups of a key in another group.
        let other = d.id_of(&k(7)).unwrap();
        assert_eq!(d.match_mac1_in_groups_of(&RESPONSE_BYTES, other), None);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Expect(usize),
        Settle(usize),
        Release(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0usize..40).prop_map(Op::Expect),
            (0usize..40).prop_map(Op::Settle),
            (0usize..40).prop_map(Op::Release),
        ]
    }

    proptest::proptest! {
        // Whatever moves happen, every key sits in the region its last move put it in, the
        // bank moved with it (a message naming it finds it), and the maps stay inverse.
        #[test]
        fn search_order_keeps_regions_and_finds_every_key(
            n in 1usize..40,
            ops in proptest::collection::vec(op(), 0..200),
            pick in 0usize..40,
        ) {
            use proptest::prelude::*;
            let keys: Vec<PublicKey> = (0..n as u8).map(k).collect();
            let mut d = KeyDirectory::new(&keys, &[]);
            // 0 middle, 1 expected, 2 bound
            let mut model = vec![0u8; n];
            for (t, o) in ops.iter().enumerate() {
                match *o {
                    Op::Expect(i) if i < n => { d.expect(KeyId::new(i as u32), t as u32); model[i] = 1 }
                    Op::Settle(i) if i < n => { d.settle(KeyId::new(i as u32)); model[i] = 2 }
                    Op::Release(i) if i < n => { d.release(KeyId::new(i as u32)); model[i] = 0 }
                    _ => {}
                }
            }
            let (front, back) = d.search_regions();
            prop_assert!(front <= back && back <= n);
            for (i, m) in model.iter().enumerate() {
                let key = KeyId::new(i as u32);
                let p = d.order.position(key).unwrap();
                prop_assert_eq!(d.order.at[p], key);
                let region = if p < front { 1 } else if p < back { 0 } else { 2 };
                prop_assert_eq!(region, *m, "key {} at {}", i, p);
            }
            // The bank moved with the keys: a message naming a key finds that key.
            let named = KeyId::new((pick % n) as u32);
            let mut msg = vec![1u8; 116];
            let key = d.get(named).unwrap().mac1;
            let m = crate::wire::mac::mac(&key.0, &[&msg[..]]);
            msg.extend_from_slice(&m);
            msg.extend_from_slice(&[0; 16]);
            prop_assert_eq!(d.match_mac1_counted(&msg).0, Some(named));
        }
    }

    #[test]
    fn big_groups_match_responses_through_the_bank() {
        use crate::wire::testvec::{INITIATOR_PUBLIC, RESPONDER_PUBLIC, RESPONSE_BYTES};
        let (ki, kr) = (PublicKey(INITIATOR_PUBLIC), PublicKey(RESPONDER_PUBLIC));
        let mut big: Vec<PublicKey> = (0..100).map(k).collect();
        big.push(ki);
        big.push(kr);
        let outside = k(200);
        let d = KeyDirectory::new(&[], &[big, vec![outside, k(201)]]);
        let (i, r) = (d.id_of(&ki).unwrap(), d.id_of(&kr).unwrap());
        assert_eq!(d.match_mac1_in_groups_of(&RESPONSE_BYTES, r), Some(i));
        let o = d.id_of(&outside).unwrap();
        assert_eq!(d.match_mac1_in_groups_of(&RESPONSE_BYTES, o), None);
    }

    #[test]
    fn reorder_releases_stale_expectations_and_settles_bound_keys() {
        let keys: Vec<PublicKey> = (0..8).map(k).collect();
        let mut d = KeyDirectory::new(&keys, &[]);
        let id = |i: u32| KeyId::new(i);
        d.expect(id(1), 10);
        d.expect(id(2), 20);
        d.settle(id(3));
        assert_eq!(d.search_regions(), (2, 7));
        // key 1 is stale and bound, key 2 fresh, key 3 no longer bound, key 4 now bound
        d.reorder(15, |k| k == id(1) || k == id(4));
        let (front, back) = d.search_regions();
        assert_eq!((front, back), (1, 6));
        assert_eq!(d.order.at[0], id(2));
        let mut bound: Vec<KeyId> = d.order.at[back..].to_vec();
        bound.sort();
        assert_eq!(bound, vec![id(1), id(4)]);
    }

    #[test]
    fn expected_keys_are_found_first() {
        use crate::wire::testvec::{INITIATION_BYTES, RESPONDER_PUBLIC};
        let mut keys: Vec<PublicKey> = (0..100).map(k).collect();
        keys.push(PublicKey(RESPONDER_PUBLIC));
        let mut d = KeyDirectory::new(&keys, &[]);
        let r = d.id_of(&PublicKey(RESPONDER_PUBLIC)).unwrap();
        let (found, cold) = d.match_mac1_counted(&INITIATION_BYTES);
        assert_eq!(found, Some(r));
        d.expect(r, 1);
        let (found, warm) = d.match_mac1_counted(&INITIATION_BYTES);
        assert_eq!(found, Some(r));
        assert!(warm < cold, "{warm} keys tried, {cold} before");
        assert_eq!(warm, 16);
    }

    #[test]
    fn match_mac1_finds_boringtun_responder() {
        use crate::wire::testvec::{INITIATION_BYTES, INITIATOR_PUBLIC, RESPONDER_PUBLIC};
        let d = KeyDirectory::new(
            &[PublicKey(INITIATOR_PUBLIC), PublicKey(RESPONDER_PUBLIC)],
            &[],
        );
        assert_eq!(
            d.match_mac1(&INITIATION_BYTES),
            d.id_of(&PublicKey(RESPONDER_PUBLIC))
        );
        let mut bad = INITIATION_BYTES;
        bad[20] ^= 1;
        assert_eq!(d.match_mac1(&bad), None);
    }

    /// A handshake-shaped message whose mac1 names `key`.
    fn named(key: &PublicKey) -> Vec<u8> {
        let mut msg = vec![7u8; 148];
        let mac1 = mac::compute_mac1(&Mac1Key::new(key.as_bytes()), &msg).unwrap();
        msg[116..132].copy_from_slice(&mac1);
        msg
    }

    #[test]
    fn a_reload_keeps_ids_and_leaves_tombstones() {
        let d = KeyDirectory::new(&[k(1), k(2), k(3)], &[]);
        let (id1, id2) = (d.id_of(&k(1)).unwrap(), d.id_of(&k(2)).unwrap());
        let (d2, removed) = d.reconfigured(&[k(1), k(3), k(4)], &[]);
        assert_eq!(removed, vec![id2]);
        assert_eq!(d2.id_of(&k(1)), Some(id1));
        assert_eq!(d2.id_of(&k(2)), None);
        assert!(d2.get(id2).is_none(), "a tombstone is no key");
        assert_eq!(d2.match_mac1(&named(&k(2))), None);
        assert!(!d2.check_mac1_of(id2, &named(&k(2))));
        assert_eq!(d2.match_mac1(&named(&k(4))), d2.id_of(&k(4)));
        assert_eq!((d2.len(), d2.live_len()), (4, 3));
        // named again: back in its old slot
        let (d3, removed) = d2.reconfigured(&[k(2)], &[]);
        assert_eq!(d3.id_of(&k(2)), Some(id2));
        assert_eq!(removed.len(), 3);
        assert_eq!(d3.match_mac1(&named(&k(2))), Some(id2));
        // every key gone: open mode
        let (open, _) = d3.reconfigured(&[], &[]);
        assert!(open.is_open());
        assert_eq!(open.match_mac1(&named(&k(2))), None);
    }

    proptest::proptest! {
        /// Across any sequence of reloads (allow-lists and groups drawn from eight keys): a key
        /// keeps the id it first got, mac1 finds exactly the configured keys, two keys share
        /// a group exactly as a directory built from scratch says, and the search order
        /// stays a permutation of the live keys after expect/settle/reorder.
        #[test]
        fn reloads_keep_ids_and_match_exactly(
            configs in proptest::collection::vec(
                (proptest::collection::vec(0u8..8, 0..8),
                 proptest::collection::vec(proptest::collection::vec(0u8..8, 2..4), 0..3)),
                1..6),
            touches in proptest::collection::vec((0u8..8, 0u8..3), 0..12),
        ) {
            let mut dir = KeyDirectory::default();
            let mut first_id: HashMap<u8, KeyId> = HashMap::new();
            for (allow, groups) in &configs {
                let allow: Vec<PublicKey> = allow.iter().map(|b| k(*b)).collect();
                let groups: Vec<Vec<PublicKey>> =
                    groups.iter().map(|g| g.iter().map(|b| k(*b)).collect()).collect();
                let (next, _) = dir.reconfigured(&allow, &groups);
                dir = next;
                for (b, op) in &touches {
                    if let Some(id) = dir.id_of(&k(*b)) {
                        match op { 0 => dir.expect(id, 1), 1 => dir.settle(id), _ => dir.release(id) }
                    }
                }
                dir.reorder(0, |id| id.index() % 2 == 0);
                let fresh = KeyDirectory::new(&allow, &groups);
                proptest::prop_assert_eq!(dir.is_open(), fresh.is_open());
                proptest::prop_assert_eq!(dir.live_len(), fresh.live_len());
                for b in 0u8..8 {
                    let id = dir.id_of(&k(b));
                    if let Some(id) = id {
                        let first = *first_id.entry(b).or_insert(id);
                        proptest::prop_assert_eq!(first, id, "key {} changed id", b);
                    }
                    proptest::prop_assert_eq!(id.is_some(), fresh.id_of(&k(b)).is_some());
                    proptest::prop_assert_eq!(dir.match_mac1(&named(&k(b))), id);
                    for c in 0u8..8 {
                        let (x, y) = (dir.id_of(&k(c)), fresh.id_of(&k(c)));
                        if let (Some(id), Some(_)) = (id, x) {
                            proptest::prop_assert_eq!(
                                dir.share_group(Some(id), x),
                                fresh.share_group(fresh.id_of(&k(b)), y)
                            );
                        }
                    }
                }
            }
        }
    }
}
