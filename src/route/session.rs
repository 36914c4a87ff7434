//! The transport fast path: a shard's own copy of the paired sessions whose receiver index it
//! owns (`io::steer::owner_shard`), so a transport packet is forwarded without touching the
//! shared routing state or any lock.
//!
//! The shared [`State`] stays the authority: it handles handshakes (rare), and every change it
//! makes to a paired index is exported as a [`Change`] and installed here by the owner shard
//! (over a channel for other shards). The fast path decides only what it can decide alone:
//! forward from the recorded source, or drop; anything that changes shared state (the first
//! transport message that confirms a session, a counter-verified roam) goes back to the
//! [`State`] as [`Fast::Control`], with this table's highest counter synced first.
//!
//! Ordering argument (why an install is never late): the State exports a change before the
//! shard that made it sends the packet that caused it, and an owner shard drains its changes
//! after every receive and before routing what it received. A packet that depends on a change
//! (e.g. the initiator's first transport message after a response) can only arrive after the
//! peer received the packet sent after the change, so the owner has the change by then.

use std::collections::HashMap;
use std::hash::BuildHasher as _;

use super::transport::continues_sequence;
use super::{DropReason, State};
use crate::admit::KeyId;
use crate::table::{Endpoint, IndexEntry, Tick};
use crate::wire::{Index, TransportPacket};

/// What the owner shard needs to forward a paired session's transport packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Where packets to this index go (the index owner's endpoint).
    pub destination: Endpoint,
    /// Where they come from (the other side's endpoint).
    pub source: Endpoint,
    /// Highest counter seen towards this index (roaming checks against it).
    pub max_counter: Option<u64>,
    pub expires: Tick,
    /// An index whose session is not confirmed yet, so the shared state decides: a
    /// responder's index is confirmed by the first transport message, and nothing goes to an
    /// unconfirmed initiator that is unproven.
    pub confirming: bool,
    /// The key of the index owner (the receiving side) and of the other side (the sender),
    /// when known: a session's traffic is added to its keys' totals when it ends.
    pub owner_key: Option<KeyId>,
    pub peer_key: Option<KeyId>,
    /// When this shard first installed the session (installs after that keep it).
    pub since: Tick,
    /// Transport packets, and their bytes (the WireGuard messages), forwarded to this index:
    /// plain integers, since only the owner shard touches them.
    pub traffic: Traffic,
}

/// Packets and bytes one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    #[inline]
    pub fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    pub fn merge(&mut self, other: Traffic) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// A key's traffic through one shard: what it received and what it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyTraffic {
    pub rx: Traffic,
    pub tx: Traffic,
}

impl Session {
    /// The fast-path view of a routing-table entry; `None` unless it is live and paired.
    pub fn of(entry: &IndexEntry, now: Tick) -> Option<Session> {
        if !entry.is_live(now) || entry.peer.is_none() {
            return None;
        }
        Some(Session {
            destination: entry.endpoint,
            source: entry.source,
            max_counter: entry.max_counter,
            expires: entry.expires,
            confirming: !entry.confirmed,
            owner_key: entry.owner_key,
            peer_key: entry.peer_key,
            since: now,
            traffic: Traffic::default(),
        })
    }
}

/// Where [`SessionTable::route_found`] found a session: its bucket in the table, valid until
/// the table next changes, and its index (checked again, so a stale bucket is only a miss).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    bucket: usize,
    index: Index,
}

/// A change to an owned index: its new fast-path view, or `None` to forget it.
pub type Change = (Index, Option<Session>);

/// What the fast path decided for one transport packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fast {
    Forward(Endpoint),
    Drop(DropReason),
    /// Needs the shared state: confirmation or a roam.
    Control,
}

/// Indices are chosen by peers, so by anyone: the tables' hashers are seeded per process.
type Hasher = foldhash::fast::RandomState;

/// What routing a transport packet reads and writes, in one cache line: a lookup touches the
/// table's control bytes and this line only. Endpoints are kept whole (20 bytes each), not
/// interned: the line has room for both, and an id would cost every packet a second, dependent
/// load (the arena entry) to compare the source and to return the destination.
///
/// The traffic counts here are the part since the last spill into [`Cold`]: 30 bits of
/// packets, 32 of bytes, so the two flags fit beside them.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Hot {
    index: Index,
    expires: Tick,
    /// Valid when `HAS_COUNTER` is set.
    max_counter: u64,
    destination: Endpoint,
    source: Endpoint,
    /// `CONFIRMING`, `HAS_COUNTER` and the packets since the last spill.
    state: u32,
    bytes: u32,
}

const CONFIRMING: u32 = 1 << 31;
const HAS_COUNTER: u32 = 1 << 30;
const PACKETS: u32 = HAS_COUNTER - 1;

/// What only installs, removals and reports need, apart from the hot line (32 bytes, keyed
/// by the same index and hash).
#[derive(Debug, Clone, Copy)]
struct Cold {
    index: Index,
    /// Traffic spilled from the hot counters (and any an install brought).
    traffic: Traffic,
    since: Tick,
    owner_key: Option<KeyId>,
    peer_key: Option<KeyId>,
}

impl Hot {
    fn new(index: Index, s: &Session) -> Hot {
        let mut hot = Hot {
            index,
            expires: s.expires,
            max_counter: 0,
            destination: s.destination,
            source: s.source,
            state: 0,
            bytes: 0,
        };
        hot.set_route(s);
        hot
    }

    /// Takes what routing reads from `s`, keeping the traffic counts.
    fn set_route(&mut self, s: &Session) {
        self.expires = s.expires;
        self.destination = s.destination;
        self.source = s.source;
        self.state &= PACKETS;
        if s.confirming {
            self.state |= CONFIRMING;
        }
        self.set_counter(s.max_counter);
    }

    fn max_counter(&self) -> Option<u64> {
        (self.state & HAS_COUNTER != 0).then_some(self.max_counter)
    }

    fn set_counter(&mut self, c: Option<u64>) {
        match c {
            Some(c) => {
                self.max_counter = c;
                self.state |= HAS_COUNTER;
            }
            None => self.state &= !HAS_COUNTER,
        }
    }

    fn confirming(&self) -> bool {
        self.state & CONFIRMING != 0
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            packets: u64::from(self.state & PACKETS),
            bytes: u64::from(self.bytes),
        }
    }

    /// Counts one packet; false (and nothing counted) when a counter is full and must spill.
    #[inline]
    fn add(&mut self, bytes: usize) -> bool {
        let Some(b) = u32::try_from(bytes)
            .ok()
            .and_then(|b| self.bytes.checked_add(b))
        else {
            return false;
        };
        if self.state & PACKETS == PACKETS {
            return false;
        }
        self.bytes = b;
        self.state += 1;
        true
    }

    /// Moves the counts into `cold` (rare: a session's first 2^30 packets or 4 GiB fit).
    #[cold]
    fn spill(&mut self, cold: &mut Cold, bytes: usize) {
        cold.traffic.merge(self.traffic());
        cold.traffic.add(bytes);
        self.state &= !PACKETS;
        self.bytes = 0;
    }
}

/// One shard's paired sessions. Single owner, no locks. A session is one 64-byte [`Hot`] line
/// in a hash table keyed by its index (no allocation of its own), and a small [`Cold`] record
/// the fast path does not touch.
#[derive(Debug, Default)]
pub struct SessionTable {
    hasher: Hasher,
    hot: hashbrown::HashTable<Hot>,
    cold: hashbrown::HashTable<Cold>,
    /// Traffic of sessions that ended, per key (the live ones' is in `hot` and `cold`).
    ended: HashMap<KeyId, KeyTraffic, Hasher>,
}

impl SessionTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.hot.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hot.is_empty()
    }

    /// Heap bytes the table holds (entries, slack, control bytes), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        let buckets = |cap: usize| match cap {
            0 => 0,
            1..=3 => 4,
            4..=7 => 8,
            c => (c * 8 / 7).next_power_of_two(),
        };
        self.hot.allocation_size()
            + self.cold.allocation_size()
            + buckets(self.ended.capacity()) * (std::mem::size_of::<(KeyId, KeyTraffic)>() + 1)
    }

    #[inline]
    fn hash(&self, index: Index) -> u64 {
        self.hasher.hash_one(index.0)
    }

    /// The session of an index, as the shared state would describe it (counts included).
    pub fn get(&self, index: Index) -> Option<Session> {
        let hash = self.hash(index);
        let hot = self.hot.find(hash, |h| h.index == index)?;
        Some(whole(hot, self.cold.find(hash, |c| c.index == index)))
    }

    /// Routes one transport packet (the type is already known to be transport). Mirrors
    /// `State::on_transport` for everything it decides itself.
    #[inline]
    pub fn route(&mut self, now: Tick, from: Endpoint, packet: &[u8]) -> Fast {
        self.route_found(now, from, packet).0
    }

    /// [`SessionTable::route`], and when it forwarded, where the session is: the next
    /// datagrams of the same GRO run (same source) go through [`SessionTable::route_next`].
    #[inline]
    pub fn route_found(
        &mut self,
        now: Tick,
        from: Endpoint,
        packet: &[u8],
    ) -> (Fast, Option<Found>) {
        // size gate
        let Ok(transport) = TransportPacket::new_checked(packet) else {
            return (Fast::Drop(DropReason::BadLength), None);
        };
        // look up the receiver
        let receiver = transport.receiver();
        let hash = self.hash(receiver);
        let Some(bucket) = self.hot.find_bucket_index(hash, |h| h.index == receiver) else {
            return (Fast::Drop(DropReason::UnknownReceiver), None);
        };
        let Some(s) = self.hot.get_bucket_mut(bucket).filter(|s| now < s.expires) else {
            return (Fast::Drop(DropReason::UnknownReceiver), None);
        };
        let (counter, len) = (transport.counter(), packet.len());
        let fast = Self::decide(s, &mut self.cold, &self.hasher, hash, from, counter, len);
        let found = matches!(fast, Fast::Forward(_)).then_some(Found {
            bucket,
            index: receiver,
        });
        (fast, found)
    }

    /// Routes the next datagram of a GRO run whose previous datagram [`SessionTable::route_found`]
    /// (or this) forwarded from the same source, with no change to the table since: the
    /// run's session is not looked up again, but this datagram's own header still decides.
    /// Its receiver index must be the session's, its counter moves the session's highest,
    /// and the session must still be live and confirmed. `None`: not so (another index, a
    /// short packet, an expired session), and the datagram takes [`SessionTable::route`].
    ///
    /// The source is not compared again: every datagram of a GRO run has the run's source,
    /// and the session's recorded source cannot have changed without a change to the table.
    #[inline]
    pub fn route_next(&mut self, found: Found, now: Tick, packet: &[u8]) -> Option<Endpoint> {
        let transport = TransportPacket::new_checked(packet).ok()?;
        if transport.receiver() != found.index {
            return None;
        }
        let s = self.hot.get_bucket_mut(found.bucket)?;
        if s.index != found.index || now >= s.expires || s.confirming() {
            return None;
        }
        let counter = transport.counter();
        if s.max_counter().is_none_or(|m| counter > m) {
            s.set_counter(Some(counter));
        }
        if !s.add(packet.len()) {
            let hash = self.hasher.hash_one(found.index.0);
            let cold = cold_of(&mut self.cold, &self.hasher, hash, found.index);
            s.spill(cold, packet.len());
        }
        Some(s.destination)
    }

    /// The fast path's decision for a packet to a live session `s`.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn decide(
        s: &mut Hot,
        cold: &mut hashbrown::HashTable<Cold>,
        hasher: &Hasher,
        hash: u64,
        from: Endpoint,
        counter: u64,
        len: usize,
    ) -> Fast {
        let receiver = s.index;
        if s.confirming() {
            return Fast::Control;
        }
        if s.destination == from {
            return Fast::Drop(DropReason::Loop);
        }
        if s.source == from {
            if s.max_counter().is_none_or(|m| counter > m) {
                s.set_counter(Some(counter));
            }
            if !s.add(len) {
                let cold = cold_of(cold, hasher, hash, receiver);
                s.spill(cold, len);
            }
            return Fast::Forward(s.destination);
        }
        // roaming rule on the counter: only a continuing sequence reaches the shared state
        if continues_sequence(s.max_counter(), counter) {
            Fast::Control
        } else {
            Fast::Drop(DropReason::RoamRejected)
        }
    }

    /// Installs a change from the shared state. The highest counter is the larger of the two:
    /// the shared state does not see the packets forwarded here, and must not lower the bar a
    /// roam has to clear.
    pub fn apply(&mut self, (index, session): Change) {
        let hash = self.hash(index);
        match session {
            Some(s) => {
                let hasher = &self.hasher;
                match self
                    .hot
                    .entry(hash, |h| h.index == index, |h| hasher.hash_one(h.index.0))
                {
                    hashbrown::hash_table::Entry::Occupied(mut e) => {
                        let hot = e.get_mut();
                        let counter = s.max_counter.max(hot.max_counter());
                        hot.set_route(&s);
                        hot.set_counter(counter);
                        let cold = cold_of(&mut self.cold, hasher, hash, index);
                        cold.owner_key = s.owner_key;
                        cold.peer_key = s.peer_key;
                    }
                    hashbrown::hash_table::Entry::Vacant(e) => {
                        e.insert(Hot::new(index, &s));
                        *cold_of(&mut self.cold, hasher, hash, index) = Cold {
                            index,
                            traffic: s.traffic,
                            since: s.since,
                            owner_key: s.owner_key,
                            peer_key: s.peer_key,
                        };
                    }
                }
            }
            None => {
                if let Ok(e) = self.hot.find_entry(hash, |h| h.index == index) {
                    let (hot, _) = e.remove();
                    let cold = self
                        .cold
                        .find_entry(hash, |c| c.index == index)
                        .ok()
                        .map(|c| c.remove().0);
                    add_to_keys(&mut self.ended, &whole(&hot, cold.as_ref()));
                }
            }
        }
    }

    /// Counts a transport packet to `index` that the shared state forwarded (a confirmation,
    /// a roam): the fast path never saw it.
    pub fn count(&mut self, index: Index, bytes: usize) {
        let hash = self.hash(index);
        if let Some(s) = self.hot.find_mut(hash, |h| h.index == index) {
            if !s.add(bytes) {
                s.spill(cold_of(&mut self.cold, &self.hasher, hash, index), bytes);
            }
        }
    }

    /// Removes dead sessions. Returns how many went.
    pub fn expire(&mut self, now: Tick) -> usize {
        let before = self.hot.len();
        let (ended, cold, hasher) = (&mut self.ended, &mut self.cold, &self.hasher);
        self.hot.retain(|s| {
            let live = now < s.expires;
            if !live {
                let c = cold
                    .find_entry(hasher.hash_one(s.index.0), |c| c.index == s.index)
                    .ok()
                    .map(|c| c.remove().0);
                add_to_keys(ended, &whole(s, c.as_ref()));
            }
            live
        });
        before - self.hot.len()
    }

    /// Every session, with its index.
    pub fn iter(&self) -> impl Iterator<Item = (Index, Session)> + '_ {
        self.hot.iter().map(|h| {
            let cold = self.cold.find(self.hash(h.index), |c| c.index == h.index);
            (h.index, whole(h, cold))
        })
    }

    /// Each key's traffic through this shard: the ended sessions' and the live ones'.
    pub fn key_traffic(&self) -> HashMap<KeyId, KeyTraffic> {
        let mut out: HashMap<KeyId, KeyTraffic> =
            self.ended.iter().map(|(k, t)| (*k, *t)).collect();
        for (_, s) in self.iter() {
            add_to_keys(&mut out, &s);
        }
        out
    }

    /// Highest counters, to merge back into the shared state (before it is saved).
    pub fn counters(&self) -> impl Iterator<Item = (Index, u64)> + '_ {
        self.hot
            .iter()
            .filter_map(|h| h.max_counter().map(|c| (h.index, c)))
    }
}

/// An index's cold record. Every hot entry has one (installed together); the default only
/// keeps a spill from being lost if that ever stopped being true.
fn cold_of<'a>(
    cold: &'a mut hashbrown::HashTable<Cold>,
    hasher: &Hasher,
    hash: u64,
    index: Index,
) -> &'a mut Cold {
    cold.entry(hash, |c| c.index == index, |c| hasher.hash_one(c.index.0))
        .or_insert(Cold {
            index,
            traffic: Traffic::default(),
            since: Tick(0),
            owner_key: None,
            peer_key: None,
        })
        .into_mut()
}

/// The whole session from its two parts.
fn whole(hot: &Hot, cold: Option<&Cold>) -> Session {
    let mut traffic = hot.traffic();
    if let Some(c) = cold {
        traffic.merge(c.traffic);
    }
    Session {
        destination: hot.destination,
        source: hot.source,
        max_counter: hot.max_counter(),
        expires: hot.expires,
        confirming: hot.confirming(),
        owner_key: cold.and_then(|c| c.owner_key),
        peer_key: cold.and_then(|c| c.peer_key),
        since: cold.map_or(Tick(0), |c| c.since),
        traffic,
    }
}

/// Adds a session's traffic to its keys: packets to an index were received by its owner and
/// sent by the other side.
fn add_to_keys<S: std::hash::BuildHasher>(to: &mut HashMap<KeyId, KeyTraffic, S>, s: &Session) {
    if s.traffic.packets == 0 {
        return;
    }
    if let Some(k) = s.owner_key {
        to.entry(k).or_default().rx.merge(s.traffic);
    }
    if let Some(k) = s.peer_key {
        to.entry(k).or_default().tx.merge(s.traffic);
    }
}

impl State {
    /// Starts exporting changes to paired indices (see the module docs). Until this is called
    /// the state keeps no change log, so a state used on its own never grows one.
    pub fn track_changes(&mut self) {
        self.indices.track_changes();
    }

    /// Moves the changes since the last call into `out`, each with its current fast-path view.
    /// `scratch` is reused storage.
    pub fn take_changes(&mut self, now: Tick, scratch: &mut Vec<Index>, out: &mut Vec<Change>) {
        scratch.clear();
        self.indices.take_changed(scratch);
        out.extend(scratch.iter().map(|&index| {
            let view = self
                .indices
                .lookup(index, now)
                .and_then(|e| Session::of(e, now));
            (index, view)
        }));
    }

    /// Raises the highest counter the shared state knows for `index` to `counter` (the fast
    /// path forwarded packets it never saw).
    pub fn note_counter(&mut self, index: Index, counter: u64, now: Tick) {
        if let Some(e) = self.indices.lookup_mut(index, now) {
            if e.max_counter.is_none_or(|m| counter > m) {
                e.max_counter = Some(counter);
            }
        }
    }

    /// The clock the tables count time with (shards keep a copy for their session tables).
    pub fn clock(&self) -> crate::table::Clock {
        self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ListenerId;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(ListenerId(0), ([127, 0, 0, 1], port).into())
    }

    fn transport(receiver: u32, counter: u64) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 4;
        p[4..8].copy_from_slice(&receiver.to_le_bytes());
        p[8..16].copy_from_slice(&counter.to_le_bytes());
        p
    }

    fn session(confirming: bool) -> Session {
        Session {
            destination: ep(1),
            source: ep(2),
            max_counter: None,
            expires: Tick(100),
            confirming,
            owner_key: Some(KeyId::new(0)),
            peer_key: Some(KeyId::new(1)),
            since: Tick(1),
            traffic: Traffic::default(),
        }
    }

    #[test]
    fn forwards_from_the_recorded_source_only() {
        let mut t = SessionTable::new();
        t.apply((Index(7), Some(session(false))));
        let now = Tick(10);
        assert_eq!(t.route(now, ep(2), &transport(7, 0)), Fast::Forward(ep(1)));
        assert_eq!(t.route(now, ep(2), &transport(7, 1)), Fast::Forward(ep(1)));
        assert_eq!(t.get(Index(7)).and_then(|s| s.max_counter), Some(1));
        // a replay from elsewhere is rejected; a continuing counter goes to the shared state
        assert_eq!(
            t.route(now, ep(3), &transport(7, 1)),
            Fast::Drop(DropReason::RoamRejected)
        );
        assert_eq!(t.route(now, ep(3), &transport(7, 2)), Fast::Control);
        assert_eq!(
            t.route(now, ep(1), &transport(7, 5)),
            Fast::Drop(DropReason::Loop)
        );
    }

    #[test]
    fn unknown_short_expired_and_confirming() {
        let mut t = SessionTable::new();
        t.apply((Index(7), Some(session(false))));
        t.apply((Index(8), Some(session(true))));
        assert_eq!(
            t.route(Tick(1), ep(2), &transport(9, 0)),
            Fast::Drop(DropReason::UnknownReceiver)
        );
        assert_eq!(
            t.route(Tick(1), ep(2), &transport(7, 0)[..31]),
            Fast::Drop(DropReason::BadLength)
        );
        assert_eq!(t.route(Tick(1), ep(2), &transport(8, 0)), Fast::Control);
        assert_eq!(
            t.route(Tick(100), ep(2), &transport(7, 0)),
            Fast::Drop(DropReason::UnknownReceiver)
        );
        assert_eq!(t.expire(Tick(100)), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn unconfirmed_sessions_go_to_the_shared_state_both_ways() {
        // Found by the `route` fuzz target: the responder's side of a paired, unconfirmed
        // session forwarded transport to an unproven initiator (the State now drops it as
        // `unproven`, so the fast path must not forward it either).
        let mut entry = IndexEntry {
            endpoint: ep(1),
            source: ep(2),
            peer: Some(Index(8)),
            owner_key: None,
            peer_key: None,
            expires: Tick(100),
            max_counter: None,
            responder: false,
            confirmed: false,
        };
        for responder in [false, true] {
            entry.responder = responder;
            let s = Session::of(&entry, Tick(1)).expect("paired and live");
            assert!(s.confirming);
            let mut t = SessionTable::new();
            t.apply((Index(7), Some(s)));
            assert_eq!(t.route(Tick(1), ep(2), &transport(7, 0)), Fast::Control);
        }
        entry.confirmed = true;
        assert!(!Session::of(&entry, Tick(1)).unwrap().confirming);
    }

    #[test]
    fn installs_never_lower_the_counter_and_removals_forget() {
        let mut t = SessionTable::new();
        t.apply((Index(7), Some(session(false))));
        assert_eq!(
            t.route(Tick(1), ep(2), &transport(7, 50)),
            Fast::Forward(ep(1))
        );
        let mut stale = session(false);
        stale.max_counter = Some(3);
        stale.source = ep(4);
        t.apply((Index(7), Some(stale)));
        let s = t.get(Index(7));
        assert_eq!(
            s.map(|s| (s.source, s.max_counter)),
            Some((ep(4), Some(50)))
        );
        // a replayed counter from the old source after the move does not pass as a roam
        assert_eq!(
            t.route(Tick(1), ep(2), &transport(7, 40)),
            Fast::Drop(DropReason::RoamRejected)
        );
        t.apply((Index(7), None));
        assert!(t.get(Index(7)).is_none());
    }

    #[test]
    fn counts_forwarded_traffic_and_keeps_it_per_key_when_sessions_end() {
        let mut t = SessionTable::new();
        t.apply((Index(7), Some(session(false))));
        t.apply((Index(9), Some(session(false))));
        for c in 0..3 {
            assert_eq!(
                t.route(Tick(1), ep(2), &transport(7, c)),
                Fast::Forward(ep(1))
            );
        }
        // drops are not traffic
        let _ = t.route(Tick(1), ep(3), &transport(7, 1));
        let _ = t.route(Tick(1), ep(1), &transport(7, 9));
        t.count(Index(7), 100);
        let s = t.get(Index(7)).unwrap();
        assert_eq!(
            s.traffic,
            Traffic {
                packets: 4,
                bytes: 3 * 48 + 100
            }
        );
        // a later install (a roam, a confirmation) keeps the counters and the start
        let mut moved = session(false);
        moved.since = Tick(50);
        t.apply((Index(7), Some(moved)));
        let s = t.get(Index(7)).unwrap();
        assert_eq!((s.traffic.packets, s.since), (4, Tick(1)));
        assert_eq!(
            t.route(Tick(1), ep(2), &transport(9, 0)),
            Fast::Forward(ep(1))
        );
        let live = t.key_traffic();
        // owner key 0 received both sessions' packets, peer key 1 sent them
        assert_eq!(live[&KeyId::new(0)].rx.packets, 5);
        assert_eq!(live[&KeyId::new(1)].tx.packets, 5);
        assert_eq!(live[&KeyId::new(1)].rx.packets, 0);
        // removal and expiry keep the totals
        t.apply((Index(7), None));
        assert_eq!(t.expire(Tick(100)), 1);
        assert!(t.is_empty());
        assert_eq!(t.key_traffic(), live);
    }

    #[test]
    fn the_rest_of_a_run_is_checked_against_the_runs_session() {
        let mut t = SessionTable::new();
        t.apply((Index(7), Some(session(false))));
        t.apply((Index(8), Some(session(false))));
        t.apply((Index(9), Some(session(true))));
        let now = Tick(10);
        let (fast, found) = t.route_found(now, ep(2), &transport(7, 5));
        assert_eq!(fast, Fast::Forward(ep(1)));
        let found = found.expect("forwarded, so found");
        assert_eq!(t.route_next(found, now, &transport(7, 6)), Some(ep(1)));
        // a lower counter is forwarded but does not lower the highest
        assert_eq!(t.route_next(found, now, &transport(7, 2)), Some(ep(1)));
        assert_eq!(t.get(Index(7)).and_then(|s| s.max_counter), Some(6));
        assert_eq!(t.get(Index(7)).map(|s| s.traffic.packets), Some(3));
        // another index, a short packet, an expired session: the full path decides
        assert_eq!(t.route_next(found, now, &transport(8, 7)), None);
        assert_eq!(t.route_next(found, now, &transport(7, 7)[..31]), None);
        assert_eq!(t.route_next(found, Tick(100), &transport(7, 7)), None);
        // nothing but forwards is found: not a confirming session, not a drop
        assert_eq!(
            t.route_found(now, ep(2), &transport(9, 0)),
            (Fast::Control, None)
        );
        assert_eq!(
            t.route_found(now, ep(3), &transport(7, 1)),
            (Fast::Drop(DropReason::RoamRejected), None)
        );
        // a stale bucket is a miss, never another session's route
        t.apply((Index(7), None));
        assert_eq!(t.route_next(found, now, &transport(7, 8)), None);
        for i in 100..400 {
            t.apply((Index(i), Some(session(false))));
        }
        assert_eq!(t.route_next(found, now, &transport(7, 8)), None);
    }

    #[test]
    fn a_session_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Hot>(), 64);
        assert_eq!(std::mem::align_of::<Hot>(), 64);
        assert_eq!(std::mem::size_of::<Cold>(), 32);
    }

    #[test]
    fn full_hot_counters_spill_without_losing_traffic() {
        let mut t = SessionTable::new();
        t.apply((Index(7), Some(session(false))));
        t.route(Tick(1), ep(2), &transport(7, 0));
        let hash = t.hash(Index(7));
        let hot = t.hot.find_mut(hash, |h| h.index == Index(7)).unwrap();
        // one packet from full on packets, then on bytes
        hot.state = (hot.state & !PACKETS) | (PACKETS - 1);
        hot.bytes = 48;
        let packets = u64::from(PACKETS - 1);
        for c in 1..4 {
            assert_eq!(
                t.route(Tick(1), ep(2), &transport(7, c)),
                Fast::Forward(ep(1))
            );
        }
        let s = t.get(Index(7)).unwrap();
        assert_eq!(s.traffic.packets, packets + 3);
        assert_eq!(s.traffic.bytes, 4 * 48);
        assert_eq!(s.max_counter, Some(3));
        let hot = t.hot.find_mut(hash, |h| h.index == Index(7)).unwrap();
        // (replacing the last packet's 48 bytes in the hot count)
        hot.bytes = u32::MAX - 10;
        t.count(Index(7), 100);
        let s = t.get(Index(7)).unwrap();
        assert_eq!(s.traffic.packets, packets + 4);
        assert_eq!(s.traffic.bytes, 3 * 48 + u64::from(u32::MAX - 10) + 100);
        // and the flags survived both spills
        assert!(!s.confirming);
        t.apply((Index(7), None));
        assert_eq!(t.key_traffic()[&KeyId::new(0)].rx, s.traffic);
    }

    /// The table before it was packed into one line per session: a map of whole sessions.
    #[derive(Default)]
    struct Model {
        sessions: HashMap<Index, Session>,
        ended: HashMap<KeyId, KeyTraffic>,
    }

    impl Model {
        fn route(&mut self, now: Tick, from: Endpoint, packet: &[u8]) -> Fast {
            let Ok(transport) = TransportPacket::new_checked(packet) else {
                return Fast::Drop(DropReason::BadLength);
            };
            let Some(s) = self
                .sessions
                .get_mut(&transport.receiver())
                .filter(|s| now < s.expires)
            else {
                return Fast::Drop(DropReason::UnknownReceiver);
            };
            if s.confirming {
                return Fast::Control;
            }
            if s.destination == from {
                return Fast::Drop(DropReason::Loop);
            }
            let counter = transport.counter();
            if s.source == from {
                if s.max_counter.is_none_or(|m| counter > m) {
                    s.max_counter = Some(counter);
                }
                s.traffic.add(packet.len());
                return Fast::Forward(s.destination);
            }
            if continues_sequence(s.max_counter, counter) {
                Fast::Control
            } else {
                Fast::Drop(DropReason::RoamRejected)
            }
        }

        fn apply(&mut self, (index, session): Change) {
            match session {
                Some(mut s) => {
                    if let Some(old) = self.sessions.get(&index) {
                        s.max_counter = s.max_counter.max(old.max_counter);
                        s.since = old.since;
                        s.traffic = old.traffic;
                    }
                    self.sessions.insert(index, s);
                }
                None => {
                    if let Some(old) = self.sessions.remove(&index) {
                        add_to_keys(&mut self.ended, &old);
                    }
                }
            }
        }

        fn count(&mut self, index: Index, bytes: usize) {
            if let Some(s) = self.sessions.get_mut(&index) {
                s.traffic.add(bytes);
            }
        }

        fn expire(&mut self, now: Tick) -> usize {
            let before = self.sessions.len();
            let ended = &mut self.ended;
            self.sessions.retain(|_, s| {
                let live = now < s.expires;
                if !live {
                    add_to_keys(ended, s);
                }
                live
            });
            before - self.sessions.len()
        }

        fn key_traffic(&self) -> HashMap<KeyId, KeyTraffic> {
            let mut out = self.ended.clone();
            for s in self.sessions.values() {
                add_to_keys(&mut out, s);
            }
            out
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Install(u32, Session),
        Remove(u32),
        Route {
            now: u32,
            from: u16,
            index: u32,
            counter: u64,
            len: usize,
            /// The next datagram of the previous route's run (its source and time).
            next: bool,
        },
        Count(u32, usize),
        Expire(u32),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // few indices, endpoints, counters and times, so every branch is hit often
        let session = (
            0u16..4,
            0u16..4,
            proptest::option::of(0u64..8),
            0u32..40,
            any::<bool>(),
            proptest::option::of(0u32..3),
            proptest::option::of(0u32..3),
            0u32..40,
            0u64..3,
        )
            .prop_map(
                |(d, s, max_counter, expires, confirming, ok, pk, since, packets)| Session {
                    destination: ep(d),
                    source: ep(s),
                    max_counter,
                    expires: Tick(expires),
                    confirming,
                    owner_key: ok.map(KeyId::new),
                    peer_key: pk.map(KeyId::new),
                    since: Tick(since),
                    traffic: Traffic {
                        packets,
                        bytes: packets * 100,
                    },
                },
            );
        prop_oneof![
            3 => (0u32..24, session).prop_map(|(i, s)| Op::Install(i, s)),
            1 => (0u32..24).prop_map(Op::Remove),
            6 => (0u32..40, 0u16..4, 0u32..26, 0u64..10, 0usize..80, any::<bool>()).prop_map(
                |(now, from, index, counter, len, next)| Op::Route {
                    now,
                    from,
                    index,
                    counter,
                    len,
                    next,
                }
            ),
            1 => (0u32..24, 0usize..2000).prop_map(|(i, b)| Op::Count(i, b)),
            1 => (0u32..40).prop_map(Op::Expire),
        ]
    }

    proptest::proptest! {
        /// The packed table decides, counts and reports exactly as a map of whole sessions.
        #[test]
        fn behaves_as_a_map_of_sessions(ops in proptest::collection::vec(op(), 1..300)) {
            let (mut t, mut m) = (SessionTable::new(), Model::default());
            // consecutive routes from one source at one time are a GRO run: after a forward,
            // the next goes through `route_next` first, as the shard does
            let mut run: Option<(Found, u32, u16)> = None;
            for op in ops {
                let last = run.take();
                match op {
                    Op::Install(i, s) => {
                        t.apply((Index(i), Some(s)));
                        m.apply((Index(i), Some(s)));
                    }
                    Op::Remove(i) => {
                        t.apply((Index(i), None));
                        m.apply((Index(i), None));
                    }
                    Op::Route { now, from, index, counter, len, next } => {
                        let (now, from) = match last {
                            Some((_, n, f)) if next => (n, f),
                            _ => (now, from),
                        };
                        let mut p = transport(index, counter);
                        p.resize(len, 0);
                        let want = m.route(Tick(now), ep(from), &p);
                        let next = last
                            .filter(|&(_, n, f)| n == now && f == from)
                            .and_then(|(found, _, _)| t.route_next(found, Tick(now), &p));
                        match next {
                            Some(to) => {
                                proptest::prop_assert_eq!(Fast::Forward(to), want);
                                run = last;
                            }
                            None => {
                                let (got, found) = t.route_found(Tick(now), ep(from), &p);
                                proptest::prop_assert_eq!(got, want);
                                proptest::prop_assert_eq!(
                                    found.is_some(),
                                    matches!(got, Fast::Forward(_))
                                );
                                run = found.map(|f| (f, now, from));
                            }
                        }
                    }
                    Op::Count(i, b) => {
                        t.count(Index(i), b);
                        m.count(Index(i), b);
                    }
                    Op::Expire(now) => {
                        proptest::prop_assert_eq!(t.expire(Tick(now)), m.expire(Tick(now)));
                    }
                }
                proptest::prop_assert_eq!(t.len(), m.sessions.len());
                let mut got: Vec<(Index, Session)> = t.iter().collect();
                got.sort_by_key(|(i, _)| *i);
                let mut want: Vec<(Index, Session)> =
                    m.sessions.iter().map(|(i, s)| (*i, *s)).collect();
                want.sort_by_key(|(i, _)| *i);
                proptest::prop_assert_eq!(&got, &want);
                for (i, s) in &want {
                    proptest::prop_assert_eq!(t.get(*i), Some(*s));
                }
                let mut counters: Vec<(Index, u64)> = t.counters().collect();
                counters.sort();
                let mut model_counters: Vec<(Index, u64)> = want
                    .iter()
                    .filter_map(|(i, s)| s.max_counter.map(|c| (*i, c)))
                    .collect();
                model_counters.sort();
                proptest::prop_assert_eq!(counters, model_counters);
                proptest::prop_assert_eq!(t.key_traffic(), m.key_traffic());
            }
        }
    }
}
