//! The routing decision: a pure function of (packet, source, time, state) that returns what to
//! do with the packet. No syscalls, no clock, no hidden randomness (entropy is injected), and a
//! bounded amount of work per call. Backends only move bytes; every rule lives here.
//!
//! Steps (one comment each in the code, as in wireguard-go's `receive.go`): size gate → type →
//! transport: look up the receiver, apply the roaming rule on the counter → handshake: admit →
//! update tables → forward, fan out, reply with a cookie, or drop with a counted reason.
//!
//! In-place rewrites: an initiation whose mac2 was made with the relay's cookie has mac2
//! zeroed before it is forwarded (the responder could never verify it).

mod fanout;
mod handshake;
mod latency;
mod persist;
mod pinned;
mod reconfigure;
mod session;
mod transport;

pub use fanout::ParkingLot;
pub use persist::Restored;
pub use pinned::{PinKind, PinRoute, MAX_RECENT_CLIENTS};
pub use reconfigure::Reconfigured;
pub use session::{Change, Fast, Found, KeyTraffic, Session, SessionTable, Traffic};

use std::fmt;
use std::time::Instant;

use crate::admit::{
    CookieChecker, Entropy, KeyBudgets, KeyDirectory, LoadTracker, RecentSources, ReplayFilter,
    SourceLimiter, TokenBucket,
};
use crate::config::CookieMode;
use crate::constants::*;
use crate::key::PublicKey;
use crate::table::{Clock, Deliveries, Endpoint, EndpointTable, IndexTable, ListenerId, Tick};
use crate::wire::awg::Framing;
use crate::wire::{self, MessageType};

/// What to do with a packet. Targets and extra datagrams are in the caller's `Actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the (possibly rewritten) packet to every endpoint in `Actions::targets`.
    Forward,
    /// Do not forward; the relay's cookie reply to the sender is in `Actions::extra`.
    Reply,
    /// Keep the initiation for a candidate that has not shown up yet (cold fan-out).
    Parked,
    Drop(DropReason),
}

/// Why a packet was dropped. `Display` is the snake_case metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than the type field.
    TooShort,
    /// The type is not 1..=4 (reserved bytes must be zero).
    UnknownType,
    /// The size does not match the type.
    BadLength,
    /// The datagram did not fit the receive buffer.
    Truncated,
    /// No allowed key matches mac1.
    BadMac1,
    /// This mac1 was admitted before: a replayed handshake message.
    Mac1Replayed,
    /// Under load and over the source's handshake budget.
    RateLimited,
    /// The two keys share no group.
    NotInGroup,
    /// The fan-out rate limit allowed no copy.
    FanOutLimited,
    /// The index is already taken by a live entry.
    IndexCollision,
    /// No live entry for the receiver index.
    UnknownReceiver,
    /// A response or cookie reply for an index that is no longer waiting for one.
    AlreadyPaired,
    /// Transport to an index whose session has no other side yet.
    NotPaired,
    /// A response or cookie reply from an endpoint the message it answers was not sent to.
    UnknownSource,
    /// Transport from a new source whose counter does not continue the session.
    RoamRejected,
    /// The index table is full.
    TableFull,
    /// The destination is the sender itself.
    Loop,
    /// An initiation for a pinned key (a proxy server, a port peer) whose address is not known
    /// yet (unresolved name, device not read, responder never seen).
    NoUpstream,
    /// An AmneziaWG junk datagram (sent before initiations; never parsed).
    Junk,
    /// The destination's listener frames packets differently (AmneziaWG parameters), so the
    /// datagram would be meaningless there.
    FramingMismatch,
    /// An unproven source that could not be challenged (open mode) and has not retried as a
    /// WireGuard peer does, or a message that would send an unproven endpoint more bytes
    /// than it sent.
    Unproven,
}

impl DropReason {
    pub const ALL: [DropReason; 21] = [
        DropReason::TooShort,
        DropReason::UnknownType,
        DropReason::BadLength,
        DropReason::Truncated,
        DropReason::BadMac1,
        DropReason::Mac1Replayed,
        DropReason::RateLimited,
        DropReason::NotInGroup,
        DropReason::FanOutLimited,
        DropReason::IndexCollision,
        DropReason::UnknownReceiver,
        DropReason::AlreadyPaired,
        DropReason::NotPaired,
        DropReason::UnknownSource,
        DropReason::RoamRejected,
        DropReason::TableFull,
        DropReason::Loop,
        DropReason::NoUpstream,
        DropReason::Junk,
        DropReason::FramingMismatch,
        DropReason::Unproven,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::UnknownType => "unknown_type",
            DropReason::BadLength => "bad_length",
            DropReason::Truncated => "truncated",
            DropReason::BadMac1 => "bad_mac1",
            DropReason::Mac1Replayed => "mac1_replayed",
            DropReason::RateLimited => "rate_limited",
            DropReason::NotInGroup => "not_in_group",
            DropReason::FanOutLimited => "fan_out_limited",
            DropReason::IndexCollision => "index_collision",
            DropReason::UnknownReceiver => "unknown_receiver",
            DropReason::AlreadyPaired => "already_paired",
            DropReason::NotPaired => "not_paired",
            DropReason::UnknownSource => "unknown_source",
            DropReason::RoamRejected => "roam_rejected",
            DropReason::TableFull => "table_full",
            DropReason::Loop => "loop",
            DropReason::NoUpstream => "no_upstream",
            DropReason::Junk => "awg_junk",
            DropReason::FramingMismatch => "framing_mismatch",
            DropReason::Unproven => "unproven",
        }
    }

    const fn slot(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A datagram the relay sends that is not the packet being routed: its own cookie reply, or a
/// parked initiation delivered to a newly seen candidate.
#[derive(Clone)]
pub struct Datagram {
    pub to: Endpoint,
    len: usize,
    bytes: [u8; wire::initiation::LEN],
}

impl Datagram {
    fn new(to: Endpoint, contents: &[u8]) -> Self {
        let mut bytes = [0u8; wire::initiation::LEN];
        let len = contents.len().min(bytes.len());
        bytes[..len].copy_from_slice(&contents[..len]);
        Datagram { to, len, bytes }
    }

    pub fn contents(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Debug for Datagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Datagram(to={}, len={})", self.to, self.len)
    }
}

/// Caller-owned output of `route`, reused across calls so the hot path never allocates.
#[derive(Debug, Default)]
pub struct Actions {
    pub targets: Vec<Endpoint>,
    pub extra: Vec<Datagram>,
}

impl Actions {
    pub fn new() -> Self {
        Actions {
            targets: Vec::with_capacity(MAX_FANOUT_PER_INITIATION),
            extra: Vec::with_capacity(MAX_FANOUT_PER_INITIATION),
        }
    }

    pub fn clear(&mut self) {
        self.targets.clear();
        self.extra.clear();
    }
}

/// Counters kept by the routing core. Plain integers: one core owns them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    /// Datagrams sent on (one per target).
    pub forwarded: u64,
    /// Of which: copies of cold initiations sent by fan-out.
    pub fanout_copies: u64,
    /// Of which: parked initiations handed to a candidate that showed up later.
    pub handovers: u64,
    pub cookie_replies: u64,
    pub parked: u64,
    pub handshakes_paired: u64,
    pub sessions_confirmed: u64,
    pub roams: u64,
    /// Copies of unproven senders' initiations that reached a third party (each within the
    /// named key's budget).
    pub unproven_copies: u64,
    /// Handshake bytes received from, and sent to, unproven endpoints, as they are on the
    /// wire: with their listener's AmneziaWG prefixes, and the junk a source sent just before
    /// its initiation.
    pub bytes_from_unproven: u64,
    pub bytes_to_unproven: u64,
    pub drops: [u64; DropReason::ALL.len()],
}

impl Counters {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.slot()]
    }

    pub fn total_dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    pub fn add(&mut self, other: &Counters) {
        self.received += other.received;
        self.forwarded += other.forwarded;
        self.fanout_copies += other.fanout_copies;
        self.handovers += other.handovers;
        self.cookie_replies += other.cookie_replies;
        self.parked += other.parked;
        self.handshakes_paired += other.handshakes_paired;
        self.sessions_confirmed += other.sessions_confirmed;
        self.roams += other.roams;
        self.unproven_copies += other.unproven_copies;
        self.bytes_from_unproven += other.bytes_from_unproven;
        self.bytes_to_unproven += other.bytes_to_unproven;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received={} forwarded={} fanout_copies={} handovers={} cookie_replies={} parked={} paired={} confirmed={} roams={} unproven_copies={} bytes_from_unproven={} bytes_to_unproven={} dropped={}",
            self.received,
            self.forwarded,
            self.fanout_copies,
            self.handovers,
            self.cookie_replies,
            self.parked,
            self.handshakes_paired,
            self.sessions_confirmed,
            self.roams,
            self.unproven_copies,
            self.bytes_from_unproven,
            self.bytes_to_unproven,
            self.total_dropped()
        )?;
        for reason in DropReason::ALL {
            let n = self.dropped(reason);
            if n > 0 {
                write!(f, " drop_{reason}={n}")?;
            }
        }
        Ok(())
    }
}

/// Settings of the routing core (the relevant part of `Config`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub allow: Vec<PublicKey>,
    pub groups: Vec<Vec<PublicKey>>,
    pub cookie: CookieMode,
    /// Fan-out copies per second; `None` = unlimited.
    pub broadcast_rate: Option<u32>,
    /// Proxy mode: server keys (allowed implicitly); their endpoints are set at runtime.
    pub servers: Vec<PublicKey>,
    /// Port-per-peer mode: each dedicated listener's responder key (allowed implicitly), and
    /// its configured endpoint if it has one.
    pub port_peers: Vec<(ListenerId, PublicKey, Option<Endpoint>)>,
    /// Each listener's framing, by listener id (the shards' list; a listener not in it is
    /// plain WireGuard). Byte budgets count messages as framed on the wire.
    pub framings: Vec<Framing>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            allow: Vec::new(),
            groups: Vec::new(),
            cookie: CookieMode::UnderLoad,
            broadcast_rate: Some(1000),
            servers: Vec::new(),
            port_peers: Vec::new(),
            framings: Vec::new(),
        }
    }
}

/// Everything the routing core knows. One owner; no locks inside.
pub struct State {
    keys: KeyDirectory,
    cookie_mode: CookieMode,
    cookies: CookieChecker,
    replay: ReplayFilter,
    load: LoadTracker,
    sources: SourceLimiter,
    /// Copies that involve an unproven endpoint (`--broadcast-rate`), and that rate.
    fanout: Option<TokenBucket>,
    broadcast_rate: Option<u32>,
    /// Per responder key: copies of unproven senders' initiations.
    key_budgets: KeyBudgets,
    /// BLAKE2s spent on unproven sources' mac1 searches.
    mac1_work: TokenBucket,
    recent: RecentSources,
    deliveries: Deliveries,
    clock: Clock,
    /// When `expire_if_due` sweeps next.
    next_expire: Instant,
    indices: IndexTable,
    endpoints: EndpointTable,
    parked: ParkingLot,
    entropy: Box<dyn Entropy>,
    pins: pinned::Pins,
    /// Each listener's framing, for [`State::wire_len`].
    framings: Vec<Framing>,
    counters: Counters,
    latency: latency::HandshakeTimer,
    /// Per key (by `KeyId`): its last handshake and roams, for `wgrelay show`.
    activity: Vec<KeyActivity>,
}

/// What the routing core remembers of one key's sessions (their traffic is in the shards).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyActivity {
    /// When a response last paired a handshake of this key (`Tick(0)`: never).
    pub last_handshake: Tick,
    /// Counter-verified moves of this key's endpoint.
    pub roams: u64,
}

/// [`State::wire_len`] with the framings passed in (for code that borrows other fields).
fn framed_len(framings: &[Framing], e: &Endpoint, kind: MessageType, len: usize) -> usize {
    let prefix = framings
        .get(usize::from(e.listener.0))
        .map_or(0, |f| f.prefix_len(kind));
    len + prefix
}

impl State {
    pub fn new(settings: &Settings, mut entropy: Box<dyn Entropy>, now: Instant) -> Self {
        let mut seed = [0u8; 8];
        entropy.fill(&mut seed);
        let mut allow = settings.allow.clone();
        allow.extend(settings.servers.iter().copied());
        allow.extend(settings.port_peers.iter().map(|p| p.1));
        let keys = KeyDirectory::new(&allow, &settings.groups);
        let key_count = keys.len();
        let mut pins = pinned::Pins::default();
        for server in &settings.servers {
            if let Some(k) = keys.id_of(server) {
                pins.add(k, PinKind::Server, None);
            }
        }
        for (listener, key, endpoint) in &settings.port_peers {
            if let Some(k) = keys.id_of(key) {
                pins.add(k, PinKind::PortPeer(*listener), *endpoint);
            }
        }
        State {
            keys,
            cookie_mode: settings.cookie,
            cookies: CookieChecker::new(),
            replay: ReplayFilter::new(REPLAY_HISTORY),
            load: LoadTracker::new(UNDER_LOAD_INITIATIONS_PER_SECOND, UNDER_LOAD_AFTER_TIME),
            sources: SourceLimiter::new(
                HANDSHAKES_PER_SECOND_PER_SOURCE,
                HANDSHAKE_BURST_PER_SOURCE,
            ),
            fanout: settings
                .broadcast_rate
                .map(|rate| TokenBucket::new(rate, rate.saturating_mul(FANOUT_BURST_SECONDS), now)),
            broadcast_rate: settings.broadcast_rate,
            key_budgets: KeyBudgets::new(
                key_count,
                (
                    UNPROVEN_COPIES_PER_KEY_PER_SECOND,
                    UNPROVEN_COPIES_PER_KEY_BURST,
                ),
                (
                    UNPROVEN_COPIES_PER_PINNED_KEY_PER_SECOND,
                    UNPROVEN_COPIES_PER_PINNED_KEY_BURST,
                ),
            ),
            mac1_work: TokenBucket::new(
                UNPROVEN_MAC1_TRIALS_PER_SECOND,
                UNPROVEN_MAC1_TRIALS_PER_SECOND,
                now,
            ),
            // Seeded from the injected entropy: unpredictable to peers, reproducible in tests.
            recent: RecentSources::new(u64::from_le_bytes(seed)),
            deliveries: Deliveries::new(),
            clock: Clock::new(now),
            next_expire: now,
            indices: IndexTable::new(),
            endpoints: EndpointTable::new(),
            parked: ParkingLot::new(MAX_PARKED_INITIATIONS),
            entropy,
            pins,
            framings: settings.framings.clone(),
            counters: Counters::default(),
            latency: latency::HandshakeTimer::new(now),
            activity: vec![KeyActivity::default(); key_count],
        }
    }

    /// The bytes a message of `kind`, `len` bytes long, takes on the wire from or to `e`: the
    /// message and the AmneziaWG prefix of `e`'s listener (none on a plain one). A forwarded
    /// datagram keeps its sender's prefix, and leaves only on a listener that frames like the
    /// sender's (shard.rs), so this is its length at its destination too.
    pub fn wire_len(&self, e: &Endpoint, kind: MessageType, len: usize) -> usize {
        framed_len(&self.framings, e, kind, len)
    }

    /// `now` as the tables count time.
    pub fn tick(&self, now: Instant) -> Tick {
        self.clock.tick(now)
    }

    /// Each listener's framing (the shards' list).
    pub fn framings(&self) -> &[Framing] {
        &self.framings
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Handshake latency at the relay (`route::latency`), readable without this state's lock.
    pub fn handshake_latency(&self) -> std::sync::Arc<crate::metrics::histogram::Histogram> {
        self.latency.histogram()
    }

    /// Initiations parked until a candidate shows up.
    pub fn parked_len(&self) -> usize {
        self.parked.len()
    }

    pub fn keys(&self) -> &KeyDirectory {
        &self.keys
    }

    /// A key's last handshake and roams (all zero for a key not in the directory).
    pub fn key_activity(&self, key: crate::admit::KeyId) -> KeyActivity {
        self.activity.get(key.index()).copied().unwrap_or_default()
    }

    fn activity_of(&mut self, key: crate::admit::KeyId) -> &mut KeyActivity {
        let i = key.index();
        if i >= self.activity.len() {
            self.activity.resize(i + 1, KeyActivity::default());
        }
        &mut self.activity[i]
    }

    pub fn indices(&self) -> &IndexTable {
        &self.indices
    }

    pub fn endpoints(&self) -> &EndpointTable {
        &self.endpoints
    }

    /// Sets where a pinned key (proxy server, port peer) is now: its resolved address, or the
    /// endpoint a local device reports. `None` = unknown. Returns false for a key that is not
    /// pinned.
    pub fn set_pinned_endpoint(&mut self, key: &PublicKey, endpoint: Option<Endpoint>) -> bool {
        match self.keys.id_of(key) {
            Some(k) => self.pins.set_endpoint(k, endpoint),
            None => false,
        }
    }

    /// The responder key a listener is dedicated to (port-per-peer), if any.
    pub fn dedicated_key(&self, listener: ListenerId) -> Option<PublicKey> {
        self.pins
            .dedicated(listener)
            .and_then(|k| self.keys.get(k))
            .map(|i| i.public)
    }

    /// Counts a packet the backend dropped before routing (e.g. truncated).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.received += 1;
        self.counters.drops[reason.slot()] += 1;
    }

    /// Counts datagrams the backend failed to send after a decision (already counted as
    /// forwarded; the backend's own counters say how many failed).
    fn drop(&mut self, reason: DropReason) -> Decision {
        self.counters.drops[reason.slot()] += 1;
        Decision::Drop(reason)
    }

    /// Routes one datagram from `from`. See the module docs.
    pub fn route(
        &mut self,
        now: Instant,
        from: Endpoint,
        packet: &mut [u8],
        out: &mut Actions,
    ) -> Decision {
        let kind = wire::message_type(packet);
        self.route_as(now, from, kind, packet, 0, out)
    }

    /// [`State::route`] for a message whose type the caller already knows: an AmneziaWG
    /// listener's framing says it (`wire::awg`), and `packet` is the message without its
    /// prefix, its type field holding the listener's H value, which mac1 covers as it is.
    /// `junk`: bytes of AmneziaWG junk `from` sent just before this message
    /// ([`crate::admit::JunkMemory`]); an initiation from an unproven source is credited them
    /// with its own bytes, other messages ignore them.
    pub fn route_as(
        &mut self,
        now: Instant,
        from: Endpoint,
        kind: wire::Result<MessageType>,
        packet: &mut [u8],
        junk: usize,
        out: &mut Actions,
    ) -> Decision {
        out.clear();
        self.counters.received += 1;
        // type
        let decision = match kind {
            Err(_) => self.drop(DropReason::TooShort),
            Ok(MessageType::Transport) => self.on_transport(now, from, packet, out),
            Ok(MessageType::Initiation) => self.on_initiation(now, from, packet, junk, out),
            Ok(MessageType::Response) => self.on_response(now, from, packet, out),
            Ok(MessageType::CookieReply) => self.on_cookie_reply(now, from, packet, out),
            Ok(MessageType::Unknown(_)) => self.drop(DropReason::UnknownType),
        };
        if decision == Decision::Forward {
            self.counters.forwarded += out.targets.len() as u64;
        }
        self.counters.forwarded += out.extra.len() as u64;
        decision
    }

    /// Whether proven sweeps are still going: a shard that sees it calls
    /// [`State::step_sweeps`] at least every SWEEP_STEP_INTERVAL.
    pub fn sweeps_pending(&self) -> bool {
        self.parked.sweeping()
    }

    /// Runs `expire` if EXPIRE_INTERVAL has passed since it last ran. Every shard calls this
    /// once per batch; the state itself remembers when the sweep is due.
    pub fn expire_if_due(&mut self, now: Instant) {
        if now >= self.next_expire {
            self.expire(now);
            self.next_expire = now + EXPIRE_INTERVAL;
        }
    }

    /// Removes what has expired. Call about once a second; cost is linear in the tables.
    pub fn expire(&mut self, now: Instant) {
        let t = self.clock.tick(now);
        self.indices.expired_entries(t);
        self.endpoints.expired_endpoints(t);
        self.parked.expired(now);
        self.sources.sweep(now);
        self.deliveries.expired(t);
        // the mac1 search order: stale expectations out of the front, bound keys to the end
        let stale = t.0.saturating_sub(Tick(0).after(EXPECTED_KEY_TIME).0);
        let endpoints = &self.endpoints;
        self.keys
            .reorder(stale, |k| endpoints.holder_of(k, t).is_some());
    }
}

#[cfg(test)]
mod tests;
