//! Pinned keys: the proxy and port-per-peer modes as configurations of the same core.
//!
//! A pinned key has a known place to go instead of a binding learned by handshakes:
//! - a **server** (proxy mode): initiations whose mac1 names its key go to its address, on
//!   whatever listener they arrived (many servers on one port, chosen by key);
//! - a **port peer** (port-per-peer mode): initiations arriving on its dedicated listener must
//!   name its key, and go to its endpoint (configured, read from a local WireGuard device, or
//!   learned from its own confirmed traffic through the relay).
//!
//! The relay's control plane sets the endpoints (`State::set_pinned_endpoint`, from DNS or a
//! device's UAPI); routing stays a pure function of the state.
//!
//! Clients of a pinned key may be unknown to the relay (wgproxy serves any client that knows
//! the server's key). Two consequences, both handled here:
//! - a response from the pinned endpoint names the client's key in mac1, which the relay
//!   cannot check; it is accepted because it comes from the endpoint the initiation was sent
//!   to (the `sent_to` check) — the same trust wgproxy gives the server;
//! - a handshake the server starts (a rekey) names the client's key too: the relay cannot tell
//!   which client it is for, so it copies it to the pinned key's recent clients (bounded, under
//!   the fan-out rate limit); only the right client answers. With the clients' keys in the
//!   allow-list, such handshakes are unicast like any other.

use std::collections::{HashMap, VecDeque};

use crate::admit::KeyId;
use crate::table::{Endpoint, ListenerId};

/// Recent clients remembered per pinned key (the targets of a handshake it starts).
pub const MAX_RECENT_CLIENTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinKind {
    Server,
    /// The listener dedicated to this responder.
    PortPeer(ListenerId),
}

#[derive(Debug, Clone)]
pub struct Pin {
    pub key: KeyId,
    pub kind: PinKind,
    /// Where it is now; `None` until resolved or learned.
    pub endpoint: Option<Endpoint>,
    /// Initiators it answered lately, newest last, no duplicates.
    recent: VecDeque<Endpoint>,
}

/// Where an initiation for a key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinRoute {
    /// Not a pinned key: exchange rules.
    NotPinned,
    To(Endpoint),
    /// Pinned, but where it is is not known (yet).
    Unknown,
}

#[derive(Debug, Default)]
pub struct Pins {
    pins: Vec<Pin>,
    by_key: HashMap<KeyId, usize>,
    by_listener: HashMap<ListenerId, usize>,
}

impl Pins {
    pub fn add(&mut self, key: KeyId, kind: PinKind, endpoint: Option<Endpoint>) {
        let i = self.pins.len();
        self.pins.push(Pin {
            key,
            kind,
            endpoint,
            recent: VecDeque::new(),
        });
        self.by_key.insert(key, i);
        if let PinKind::PortPeer(l) = kind {
            self.by_listener.insert(l, i);
        }
    }

    /// The pins of a new configuration (a reload): a pin this set already has, same key
    /// and kind, keeps where it is now (unless the new one fixes an endpoint) and the
    /// initiators it answered.
    pub fn rebuilt(&self, wanted: &[(KeyId, PinKind, Option<Endpoint>)]) -> Pins {
        let mut next = Pins::default();
        for (key, kind, endpoint) in wanted {
            let old = self
                .by_key
                .get(key)
                .and_then(|i| self.pins.get(*i))
                .filter(|p| p.kind == *kind);
            next.add(*key, *kind, endpoint.or(old.and_then(|p| p.endpoint)));
            if let (Some(old), Some(new)) = (old, next.pins.last_mut()) {
                new.recent = old.recent.clone();
            }
        }
        next
    }

    pub fn is_pinned(&self, key: Option<KeyId>) -> bool {
        key.is_some_and(|k| self.by_key.contains_key(&k))
    }

    /// Whether `key` is a proxy server's (reachable through every listener).
    pub fn is_server(&self, key: Option<KeyId>) -> bool {
        key.and_then(|k| self.by_key.get(&k))
            .is_some_and(|&i| self.pins[i].kind == PinKind::Server)
    }

    /// The responder key a listener is dedicated to.
    pub fn dedicated(&self, listener: ListenerId) -> Option<KeyId> {
        self.by_listener.get(&listener).map(|&i| self.pins[i].key)
    }

    /// Where an initiation naming `key` goes. A port peer without a configured endpoint falls
    /// back to `learned` (the endpoint its own confirmed handshakes bound to its key).
    pub fn route(&self, key: Option<KeyId>, learned: Option<Endpoint>) -> PinRoute {
        let Some(&i) = key.and_then(|k| self.by_key.get(&k)) else {
            return PinRoute::NotPinned;
        };
        let pin = &self.pins[i];
        match (pin.endpoint, pin.kind) {
            (Some(e), _) => PinRoute::To(e),
            (None, PinKind::PortPeer(_)) => learned.map_or(PinRoute::Unknown, PinRoute::To),
            (None, PinKind::Server) => PinRoute::Unknown,
        }
    }

    pub fn set_endpoint(&mut self, key: KeyId, endpoint: Option<Endpoint>) -> bool {
        match self.by_key.get(&key) {
            Some(&i) => {
                self.pins[i].endpoint = endpoint;
                true
            }
            None => false,
        }
    }

    /// The pinned key whose endpoint is `e` (configured, or `bound` = the key `e` is bound to).
    pub fn key_at(&self, e: &Endpoint, bound: Option<KeyId>) -> Option<KeyId> {
        if let Some(k) = bound.filter(|k| self.by_key.contains_key(k)) {
            return Some(k);
        }
        self.pins
            .iter()
            .find(|p| p.endpoint.as_ref() == Some(e))
            .map(|p| p.key)
    }

    /// `client` started or answered a handshake with `key`.
    pub fn note_client(&mut self, key: KeyId, client: Endpoint) {
        let Some(&i) = self.by_key.get(&key) else {
            return;
        };
        let recent = &mut self.pins[i].recent;
        recent.retain(|c| *c != client);
        if recent.len() == MAX_RECENT_CLIENTS {
            recent.pop_front();
        }
        recent.push_back(client);
    }

    /// Recent clients of `key`, newest first.
    pub fn recent_clients(&self, key: KeyId) -> impl Iterator<Item = Endpoint> + '_ {
        self.by_key
            .get(&key)
            .into_iter()
            .flat_map(move |&i| self.pins[i].recent.iter().rev().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(ListenerId(0), ([127, 0, 0, 1], port).into())
    }

    #[test]
    fn routes_by_kind() {
        let mut p = Pins::default();
        let (s, r, x) = (KeyId::new(0), KeyId::new(1), KeyId::new(2));
        p.add(s, PinKind::Server, None);
        p.add(r, PinKind::PortPeer(ListenerId(3)), None);
        assert_eq!(p.route(Some(x), None), PinRoute::NotPinned);
        assert_eq!(p.route(None, None), PinRoute::NotPinned);
        assert_eq!(
            p.route(Some(s), Some(ep(9))),
            PinRoute::Unknown,
            "servers never learn"
        );
        assert_eq!(p.route(Some(r), None), PinRoute::Unknown);
        assert_eq!(p.route(Some(r), Some(ep(9))), PinRoute::To(ep(9)));
        assert!(p.set_endpoint(s, Some(ep(1))));
        assert!(p.set_endpoint(r, Some(ep(2))));
        assert!(!p.set_endpoint(x, Some(ep(2))));
        assert_eq!(p.route(Some(s), None), PinRoute::To(ep(1)));
        assert_eq!(
            p.route(Some(r), Some(ep(9))),
            PinRoute::To(ep(2)),
            "configured wins"
        );
        assert_eq!(p.dedicated(ListenerId(3)), Some(r));
        assert!(p.is_server(Some(s)) && !p.is_server(Some(r)) && !p.is_server(None));
        assert_eq!(p.dedicated(ListenerId(0)), None);
        assert_eq!(p.key_at(&ep(1), None), Some(s));
        assert_eq!(p.key_at(&ep(7), Some(r)), Some(r));
        assert_eq!(p.key_at(&ep(7), Some(x)), None);
    }

    #[test]
    fn recent_clients_are_bounded_newest_first_without_duplicates() {
        let mut p = Pins::default();
        let s = KeyId::new(0);
        p.add(s, PinKind::Server, None);
        for port in 0..(MAX_RECENT_CLIENTS as u16 + 10) {
            p.note_client(s, ep(port));
        }
        p.note_client(s, ep(20));
        let r: Vec<Endpoint> = p.recent_clients(s).collect();
        assert_eq!(r.len(), MAX_RECENT_CLIENTS);
        assert_eq!(r[0], ep(20));
        assert_eq!(r.iter().filter(|e| **e == ep(20)).count(), 1);
        assert!(!r.contains(&ep(0)), "oldest forgotten");
        p.note_client(KeyId::new(5), ep(1));
        assert_eq!(p.recent_clients(KeyId::new(5)).count(), 0);
    }
}
