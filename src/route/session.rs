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

use super::transport::continues_sequence;
use super::{DropReason, State};
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
        })
    }
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

/// Indices are chosen by peers, so by anyone: the map's hasher is seeded per process.
type Map = HashMap<Index, Session, foldhash::fast::RandomState>;

/// One shard's paired sessions. Single owner, no locks.
#[derive(Debug, Default)]
pub struct SessionTable {
    sessions: Map,
}

impl SessionTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn get(&self, index: Index) -> Option<&Session> {
        self.sessions.get(&index)
    }

    /// Routes one transport packet (the type is already known to be transport). Mirrors
    /// `State::on_transport` for everything it decides itself.
    #[inline]
    pub fn route(&mut self, now: Tick, from: Endpoint, packet: &[u8]) -> Fast {
        // size gate
        let Ok(transport) = TransportPacket::new_checked(packet) else {
            return Fast::Drop(DropReason::BadLength);
        };
        // look up the receiver
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
            return Fast::Forward(s.destination);
        }
        // roaming rule on the counter: only a continuing sequence reaches the shared state
        if continues_sequence(s.max_counter, counter) {
            Fast::Control
        } else {
            Fast::Drop(DropReason::RoamRejected)
        }
    }

    /// Installs a change from the shared state. The highest counter is the larger of the two:
    /// the shared state does not see the packets forwarded here, and must not lower the bar a
    /// roam has to clear.
    pub fn apply(&mut self, (index, session): Change) {
        match session {
            Some(mut s) => {
                if let Some(old) = self.sessions.get(&index) {
                    s.max_counter = s.max_counter.max(old.max_counter);
                }
                self.sessions.insert(index, s);
            }
            None => {
                self.sessions.remove(&index);
            }
        }
    }

    /// Removes dead sessions. Returns how many went.
    pub fn expire(&mut self, now: Tick) -> usize {
        let before = self.sessions.len();
        self.sessions.retain(|_, s| now < s.expires);
        before - self.sessions.len()
    }

    /// Highest counters, to merge back into the shared state (before it is saved).
    pub fn counters(&self) -> impl Iterator<Item = (Index, u64)> + '_ {
        self.sessions
            .iter()
            .filter_map(|(i, s)| s.max_counter.map(|c| (*i, c)))
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
        let s = t.get(Index(7)).copied();
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
}
