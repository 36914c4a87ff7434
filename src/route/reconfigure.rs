//! A reload: the routing state takes a new configuration in place.
//!
//! What a reload keeps: every session whose two keys are still configured and still share a
//! group, every key → endpoint binding of a key still configured, the proof of every source,
//! parked initiations and candidate lists (moved to the new groups), the counters. What it
//! ends: sessions naming a key that is gone, or whose keys no longer share a group (the pair
//! could not handshake again), and, when open mode becomes an allow-list, sessions of
//! unknown keys (they could not be admitted now). Keys keep their ids across reloads
//! (`KeyDirectory::reconfigured`), so nothing that names a key by id needs rewriting.

use std::collections::HashSet;
use std::time::Instant;

use super::{PinKind, Settings, State};
use crate::admit::keys::OPEN_GROUP;
use crate::admit::ratelimit::TokenBucket;
use crate::admit::{GroupId, KeyId};
use crate::constants::FANOUT_BURST_SECONDS;
use crate::table::index::IndexEntry;
use crate::table::{Endpoint, ListenerId};
use crate::wire::Index;

/// What a reload changed in the routing state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    pub keys_added: usize,
    pub keys_removed: usize,
    /// Sessions ended, and their index entries (a paired session has one per direction).
    pub sessions_ended: usize,
    pub indices_ended: usize,
    pub bindings_ended: usize,
    pub parked_dropped: usize,
}

impl std::fmt::Display for Reconfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sessions ended ({} receiver indices), {} key bindings ended, {} parked \
             initiations dropped",
            self.sessions_ended, self.indices_ended, self.bindings_ended, self.parked_dropped
        )
    }
}

impl Reconfigured {
    /// Adds `other`'s counts (a reload's two steps: closed listeners, then keys).
    pub fn add(&mut self, other: &Reconfigured) {
        self.keys_added += other.keys_added;
        self.keys_removed += other.keys_removed;
        self.sessions_ended += other.sessions_ended;
        self.indices_ended += other.indices_ended;
        self.bindings_ended += other.bindings_ended;
        self.parked_dropped += other.parked_dropped;
    }
}

impl State {
    /// Ends what lives on the listeners in `gone` (a reload closed them, so nothing reaches
    /// them any more): sessions with either side there, the endpoints there with their
    /// bindings, and their parked initiations. Recorded as changes, like `reconfigure`'s.
    pub fn close_listeners(&mut self, gone: &[ListenerId], done: &mut Reconfigured) {
        if gone.is_empty() {
            return;
        }
        let on = |e: &Endpoint| gone.contains(&e.listener);
        let mut ended: Vec<Index> = Vec::new();
        for (index, e) in self.indices.iter() {
            // a session's two entries name each other's endpoint as `source`: both match
            if on(&e.endpoint) || on(&e.source) {
                ended.push(*index);
                done.sessions_ended += usize::from(!e.responder && e.peer.is_some());
            }
        }
        for index in &ended {
            self.indices.remove(*index);
        }
        done.indices_ended += ended.len();
        done.bindings_ended += self.endpoints.forget(on);
        done.parked_dropped += self.parked.forget(on);
    }

    /// Takes `settings` (the routing part of a new configuration) without a restart. The
    /// sessions it ends are recorded as changes (`take_changes`): the caller hands them to
    /// the shards that hold them.
    pub fn reconfigure(&mut self, settings: &Settings, now: Instant) -> Reconfigured {
        let mut allow = settings.allow.clone();
        allow.extend(settings.servers.iter().copied());
        allow.extend(settings.port_peers.iter().map(|p| p.1));
        let was_open = self.keys.is_open();
        let live_before = self.keys.live_len();
        let signature = self.keys.group_signature();
        let (keys, removed) = self.keys.reconfigured(&allow, &settings.groups);
        let regrouped = keys.group_signature() != signature;
        self.keys = keys;
        let open = self.keys.is_open();
        let gone: HashSet<KeyId> = removed.iter().copied().collect();
        let mut done = Reconfigured {
            keys_added: (self.keys.live_len() + removed.len()).saturating_sub(live_before),
            keys_removed: removed.len(),
            ..Reconfigured::default()
        };
        self.key_budgets.grow(self.keys.len());

        let mut pins = Vec::new();
        for server in &settings.servers {
            if let Some(k) = self.keys.id_of(server) {
                pins.push((k, PinKind::Server, None));
            }
        }
        for (listener, key, endpoint) in &settings.port_peers {
            if let Some(k) = self.keys.id_of(key) {
                pins.push((k, PinKind::PortPeer(*listener), *endpoint));
            }
        }
        self.pins = self.pins.rebuilt(&pins);

        let keys = &self.keys;
        let allowed = |e: &IndexEntry| -> bool {
            if open {
                return true;
            }
            let (a, b) = (e.owner_key, e.peer_key);
            if a.is_some_and(|k| gone.contains(&k)) || b.is_some_and(|k| gone.contains(&k)) {
                return false;
            }
            match (a, b) {
                (Some(_), Some(_)) => keys.share_group(a, b),
                (None, None) => !was_open,
                // one side unknown (a proxy client, say): its known key decides
                _ => true,
            }
        };
        let mut ended: Vec<Index> = Vec::new();
        for (index, e) in self.indices.iter() {
            if !allowed(e) {
                ended.push(*index);
                // a responder's entry mirrors its initiator's: count each paired session once
                done.sessions_ended += usize::from(!e.responder && e.peer.is_some());
            }
        }
        for index in &ended {
            self.indices.remove(*index);
        }
        done.indices_ended = ended.len();

        if regrouped || !gone.is_empty() || was_open != open {
            let regroup = |key: Option<KeyId>| -> Option<Vec<GroupId>> {
                match key {
                    Some(k) => keys.get(k).map(|info| info.groups.clone()),
                    None if open => Some(vec![OPEN_GROUP]),
                    None => None,
                }
            };
            done.bindings_ended = self.endpoints.reconfigure(|k| gone.contains(&k), regroup);
            done.parked_dropped = self.parked.reconfigure(regroup);
        }

        self.cookie_mode = settings.cookie;
        if self.broadcast_rate != settings.broadcast_rate {
            self.broadcast_rate = settings.broadcast_rate;
            self.fanout = settings
                .broadcast_rate
                .map(|rate| TokenBucket::new(rate, rate.saturating_mul(FANOUT_BURST_SECONDS), now));
        }
        if !settings.framings.is_empty() {
            self.framings = settings.framings.clone();
        }
        done
    }
}
