//! Soft state across a restart. On a clean stop the relay writes its confirmed sessions (both
//! index entries of each, with their counters) and its proven sources; at start it reads them
//! back, so peers keep talking through a restarted relay instead of waiting for WireGuard's
//! own re-handshake (15 s after their traffic stops being answered, more with a cookie round).
//!
//! The file is text, one record a line, versioned:
//! ```text
//! wgrelay-state 1 <unix ms when written>
//! s <index> <listen>|<endpoint> <listen>|<source> <peer index> <owner key|-> <peer key|-> <ms left> <max counter|-> <i|r>
//! p <listen>|<endpoint> <ms left>
//! b <key> <listen>|<endpoint> <ms left>
//! ```
//! `b` lines are the identity bindings (key K is held by endpoint E), which outlive sessions:
//! after a restart a returning peer's initiation goes straight to its partner, with no
//! fan-out. The time left is how long the endpoint would still have been remembered.
//! Listeners are named by their bound address, so a restart with other listeners drops what
//! no longer fits. Keys are public keys: a session whose key is no longer allowed is dropped.
//! Every line is checked; a bad line is skipped and counted, never trusted half-way. A pair is
//! restored only if both of its entries are. Nothing older than REJECT_AFTER_TIME survives: the
//! peers themselves stop using keys that old. A restored record dates its endpoint back to when
//! it was last seen (before this run started: see `table::Tick`), so the endpoint and its
//! binding expire when they would have, not a whole lifetime after the restart.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::State;
use crate::admit::KeyId;
use crate::constants::{
    ENDPOINT_IDLE_TIME, PROVEN_BY_SESSION_TIME, REJECT_AFTER_TIME, SOURCE_PROVEN_TIME,
};
use crate::key::PublicKey;
use crate::table::{Endpoint, IndexEntry, ListenerId, Tick};
use crate::wire::Index;

const MAGIC: &str = "wgrelay-state";
const VERSION: u32 = 1;

/// What a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Sessions (pairs of entries) restored.
    pub sessions: usize,
    /// Proven sources restored.
    pub proven: usize,
    /// Identity bindings restored.
    pub bindings: usize,
    /// Lines skipped: malformed, expired, or no longer fitting the configuration.
    pub skipped: usize,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Milliseconds from `now` to `until` (tables count in tenths of a second).
fn ms_left(now: Tick, until: Tick) -> u64 {
    u64::from(until.0.saturating_sub(now.0)) * 100
}

fn endpoint_text(e: &Endpoint, listeners: &[SocketAddr]) -> Option<String> {
    let listen = listeners.get(usize::from(e.listener.0))?;
    Some(format!("{listen}|{}", e.addr()))
}

fn parse_endpoint(s: &str, listeners: &[SocketAddr]) -> Option<Endpoint> {
    let (listen, addr) = s.split_once('|')?;
    let listen: SocketAddr = listen.parse().ok()?;
    let addr: SocketAddr = addr.parse().ok()?;
    let i = listeners.iter().position(|l| *l == listen)?;
    Some(Endpoint::new(ListenerId(u16::try_from(i).ok()?), addr))
}

impl State {
    fn key_text(&self, k: Option<KeyId>) -> String {
        match k.and_then(|k| self.keys.get(k)) {
            Some(info) => info.public.to_string(),
            None => "-".into(),
        }
    }

    /// `Ok(None)`: no key. `Err`: a key that is not (or no longer) in the directory.
    fn parse_key(&self, s: &str) -> Result<Option<KeyId>, ()> {
        if s == "-" {
            return Ok(None);
        }
        let public: PublicKey = s.parse().map_err(|_| ())?;
        self.keys.id_of(&public).map(Some).ok_or(())
    }

    /// The state worth keeping, as text (see the module docs). `listeners` are the bound
    /// addresses, in listener order.
    pub fn save(&self, now: Instant, wall: SystemTime, listeners: &[SocketAddr]) -> String {
        let t = self.clock.tick(now);
        let mut out = format!("{MAGIC} {VERSION} {}\n", unix_ms(wall));
        for (index, e) in self.indices.iter() {
            let Some(peer) = e.peer.filter(|_| e.confirmed && e.is_live(t)) else {
                continue;
            };
            let (Some(endpoint), Some(source)) = (
                endpoint_text(&e.endpoint, listeners),
                endpoint_text(&e.source, listeners),
            ) else {
                continue;
            };
            let counter = e.max_counter.map_or("-".into(), |c| c.to_string());
            let _ = writeln!(
                out,
                "s {} {endpoint} {source} {} {} {} {} {counter} {}",
                index.0,
                peer.0,
                self.key_text(e.owner_key),
                self.key_text(e.peer_key),
                ms_left(t, e.expires),
                if e.responder { 'r' } else { 'i' },
            );
        }
        for (k, e) in self.endpoints.bindings() {
            let Some(info) = self.endpoints.get(&e) else {
                continue;
            };
            let until = info.last_seen.after(ENDPOINT_IDLE_TIME);
            if let (Some(endpoint), true) = (endpoint_text(&e, listeners), t < until) {
                let key = self.key_text(Some(k));
                let _ = writeln!(out, "b {key} {endpoint} {}", ms_left(t, until));
            }
        }
        for (e, info) in self.endpoints.iter() {
            if now_proven(t, info.proven_until) {
                if let Some(endpoint) = endpoint_text(e, listeners) {
                    let _ = writeln!(out, "p {endpoint} {}", ms_left(t, info.proven_until));
                }
            }
        }
        out
    }

    /// Reads back what `save` wrote, `wall - saved` later. Never fails on bad content: what
    /// does not parse, has expired or no longer fits is skipped and counted.
    pub fn restore(
        &mut self,
        text: &str,
        now: Instant,
        wall: SystemTime,
        listeners: &[SocketAddr],
    ) -> Restored {
        let mut done = Restored::default();
        let mut lines = text.lines();
        let Some(header) = lines.next() else {
            return done;
        };
        let mut h = header.split(' ');
        let (Some(MAGIC), Some(version), Some(saved), None) =
            (h.next(), h.next(), h.next(), h.next())
        else {
            done.skipped = text.lines().count();
            return done;
        };
        let (Ok(VERSION), Ok(saved)) = (version.parse::<u32>(), saved.parse::<u64>()) else {
            done.skipped = text.lines().count();
            return done;
        };
        // Time the relay was down; a clock that went backwards counts as no time.
        let elapsed = Duration::from_millis(unix_ms(wall).saturating_sub(saved));
        let t = self.clock.tick(now);
        let mut restored: HashMap<Index, IndexEntry> = HashMap::new();
        for line in lines {
            let ok = match line.split_once(' ') {
                Some(("s", rest)) => self.parse_session(rest, elapsed, t, listeners, &mut restored),
                Some(("p", rest)) => self.parse_proven(rest, elapsed, t, listeners),
                Some(("b", rest)) => self.parse_binding(rest, elapsed, t, listeners),
                _ => false,
            };
            if !ok {
                done.skipped += 1;
            } else if line.starts_with('p') {
                done.proven += 1;
            } else if line.starts_with('b') {
                done.bindings += 1;
            }
        }
        // Only whole pairs, pointing at each other, that collide with nothing live. An entry
        // that names itself as its peer is no pair.
        let keep: Vec<Index> = restored
            .iter()
            .filter(|(i, e)| {
                e.peer
                    .filter(|p| p != *i)
                    .and_then(|p| restored.get(&p).map(|q| q.peer == Some(**i)))
                    .unwrap_or(false)
                    && !self.indices.contains(**i, t)
            })
            .map(|(i, _)| *i)
            .collect();
        done.skipped += restored.len() - keep.len();
        for index in &keep {
            if let Some(e) = restored.remove(index) {
                // A confirmed session expires REJECT_AFTER_TIME after its confirmation, when
                // both of its endpoints were seen (and bound): seen then, not now, so the
                // endpoint and its binding expire when they would have.
                let seen = e.expires.before(REJECT_AFTER_TIME);
                self.endpoints.touch(e.endpoint, seen);
                if let Some(k) = e.owner_key {
                    self.endpoints.bind(k, e.endpoint, seen);
                }
                self.indices.insert(*index, e);
            }
        }
        done.sessions = keep.len() / 2;
        done
    }

    fn parse_session(
        &self,
        rest: &str,
        elapsed: Duration,
        t: Tick,
        listeners: &[SocketAddr],
        out: &mut HashMap<Index, IndexEntry>,
    ) -> bool {
        let f: Vec<&str> = rest.split(' ').collect();
        let [index, endpoint, source, peer, owner, peer_key, left, counter, side] = f[..] else {
            return false;
        };
        let (Ok(index), Ok(peer), Ok(left)) = (
            index.parse::<u32>(),
            peer.parse::<u32>(),
            left.parse::<u64>(),
        ) else {
            return false;
        };
        let (Some(endpoint), Some(source)) = (
            parse_endpoint(endpoint, listeners),
            parse_endpoint(source, listeners),
        ) else {
            return false;
        };
        let (Ok(owner_key), Ok(peer_key)) = (self.parse_key(owner), self.parse_key(peer_key))
        else {
            return false;
        };
        // Open mode has no keys; a keyed relay keeps only sessions whose keys it still allows,
        // but for a pinned key's (proxy server's, port peer's) client, which it need not know.
        let known = match (owner_key, peer_key) {
            (Some(_), Some(_)) => true,
            (None, pinned) | (pinned, None) => self.pins.is_pinned(pinned),
        };
        if !self.keys.is_open() && !known {
            return false;
        }
        let max_counter = match counter {
            "-" => None,
            c => match c.parse::<u64>() {
                Ok(c) => Some(c),
                Err(_) => return false,
            },
        };
        let responder = match side {
            "r" => true,
            "i" => false,
            _ => return false,
        };
        let Some(expires) =
            remaining(left, elapsed, REJECT_AFTER_TIME).and_then(|l| deadline(t, l))
        else {
            return false;
        };
        out.insert(
            Index(index),
            IndexEntry {
                endpoint,
                source,
                peer: Some(Index(peer)),
                owner_key,
                peer_key,
                expires,
                max_counter,
                responder,
                confirmed: true,
            },
        );
        true
    }

    fn parse_proven(
        &mut self,
        rest: &str,
        elapsed: Duration,
        t: Tick,
        listeners: &[SocketAddr],
    ) -> bool {
        let Some((endpoint, left)) = rest.split_once(' ') else {
            return false;
        };
        let (Some(endpoint), Ok(left)) = (parse_endpoint(endpoint, listeners), left.parse::<u64>())
        else {
            return false;
        };
        let longest = SOURCE_PROVEN_TIME.max(PROVEN_BY_SESSION_TIME);
        let Some(until) = remaining(left, elapsed, longest).and_then(|l| deadline(t, l)) else {
            return false;
        };
        // A proof is granted when the endpoint is seen, so it was seen at `until - longest`
        // or later. Touched as then, not now: the record (and a binding it holds, restored
        // from its own line) must not outlive what it would have.
        self.endpoints
            .touch(endpoint, until.before(longest))
            .proven_until = until;
        true
    }

    fn parse_binding(
        &mut self,
        rest: &str,
        elapsed: Duration,
        t: Tick,
        listeners: &[SocketAddr],
    ) -> bool {
        let f: Vec<&str> = rest.split(' ').collect();
        let [key, endpoint, left] = f[..] else {
            return false;
        };
        let (Ok(Some(key)), Some(endpoint), Ok(left)) = (
            self.parse_key(key),
            parse_endpoint(endpoint, listeners),
            left.parse::<u64>(),
        ) else {
            return false;
        };
        let Some(until) = remaining(left, elapsed, ENDPOINT_IDLE_TIME).and_then(|l| deadline(t, l))
        else {
            return false;
        };
        // Remembered as last seen when it was: a binding lives while its holder is not idle,
        // ENDPOINT_IDLE_TIME from then (before this run started, as a rule; see `Tick`).
        self.endpoints
            .bind(key, endpoint, until.before(ENDPOINT_IDLE_TIME));
        true
    }
}

/// What is left of a record's `ms` after `elapsed` of downtime: `None` when nothing is, or
/// when it claims more than `max` (no record of ours lives that long).
fn remaining(ms: u64, elapsed: Duration, max: Duration) -> Option<Duration> {
    let left = Duration::from_millis(ms).saturating_sub(elapsed);
    (!left.is_zero() && left <= max).then_some(left)
}

/// `left` from `t`, if that is still a later tick: the tables count tenths of a second, so a
/// record with less than one left would be restored already expired.
fn deadline(t: Tick, left: Duration) -> Option<Tick> {
    let at = t.after(left);
    (at > t).then_some(at)
}

fn now_proven(now: Tick, until: Tick) -> bool {
    now < until
}
