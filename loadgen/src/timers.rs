//! `wgrelay-loadgen timers`: a cold start of P pairs on WireGuard's own timers.
//!
//! Unlike `run` (whose set-up re-initiates as soon as a cookie arrives, to get sessions up
//! fast for the traffic phases), every peer here is a boringtun `Tunn` left to behave as a
//! WireGuard peer does:
//!
//! - Peer `2s` and `2s + 1` are pair `s`, each on its own 127.64.x.y address (one IP_PKTINFO
//!   socket), each `Tunn` configured with its partner's public key and pointing at the relay.
//! - Every peer comes up at a random moment within `--ramp` (0: all at once) and sends one
//!   initiation then, as a WireGuard interface with traffic for its peer does. BOTH peers of a
//!   pair initiate.
//! - Retries come from boringtun's own `update_timers`, called every 50–100 ms (random) for
//!   every `Tunn`. boringtun retries an unanswered initiation after exactly REKEY_TIMEOUT
//!   (5 s) and, although its comment says so, adds no jitter; WireGuard (Linux, wireguard-go)
//!   adds a random 0–333 ms. We add it: after each initiation a peer draws `j` in
//!   [0, 333 ms) and, between `sent + 5 s` and `sent + 5 s + j`, does not call
//!   `update_timers` (the only thing it would do then is the retry); its next call is at
//!   exactly `sent + 5 s + j`. Everything else in `update_timers` runs as boringtun wants.
//! - Cookie replies go into the `Tunn`, which stores the cookie and puts a mac2 on its next
//!   initiation, at its next timer retry. No early re-initiation.
//! - Handshake messages reach `decapsulate` with the relay's address as their source, so a
//!   `Tunn` whose own rate limiter (boringtun: 10 handshake messages/s per peer, see
//!   `--peer-handshake-limit`) says "under load" answers with a cookie reply, as a real peer
//!   would.
//!
//! A pair is WORKING once a handshake has completed and a data packet went each way: each
//! peer that has a current session sends a small IPv4 packet through `encapsulate` (again
//! every 250 ms until the pair works), and the pair works when both peers' `decapsulate` has
//! yielded the partner's packet. Datagrams that a `Tunn` rejects are counted by message type
//! and boringtun's error (`InvalidMac`: a copy of another pair's initiation or response that
//! reached this peer; `WrongIndex`/`UnexpectedPacket`: a response or cookie reply for an
//! initiation this peer no longer waits for; ...).
//!
//! `--flap MS`: each pair that does not work yet has both its peers restarted together (new
//! `Tunn`s with new indices, same keys, both initiating at once) every MS ms.
//!
//! The shared pieces (the peer, counters, keys, the relay process) are also used by
//! `attack`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use boringtun::noise::errors::WireGuardError;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde_json::{json, Value};

use crate::io::{Rx, Tx};
use crate::procinfo::{self, Spawned};
use crate::setup::{self, Keys};
use crate::topo::{self, Topology};

/// WireGuard's REKEY_TIMEOUT.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// WireGuard's retry jitter: up to a third of a second (Linux `REKEY_TIMEOUT_JITTER_MAX_JIFFIES`
/// = HZ / 3; wireguard-go: 0–333 ms).
pub const REKEY_JITTER_MAX: Duration = Duration::from_millis(333);
/// `update_timers` every 50–100 ms.
const TICK_MIN: Duration = Duration::from_millis(50);
const TICK_SPREAD: Duration = Duration::from_millis(50);
/// Repeated `decapsulate` calls after a WriteToNetwork (boringtun queues at most 256 packets).
const MAX_FLUSH: usize = 300;
/// A peer with a session re-sends its data packet this often until the pair works.
pub const PING_EVERY: Duration = Duration::from_millis(250);
/// Our IPv4 packets: 20-byte header + magic, tag, side, seq.
pub const IP_LEN: usize = 40;
const MAGIC: &[u8; 4] = b"WGLG";
/// recvmmsg calls per receive round at most (64 datagrams each): a fan-out storm must not
/// overflow the generator's socket while it does other work.
const RX_ROUNDS: usize = 64;
/// Peers brought up per loop round at most (~0.4 ms of x25519 each).
const UPS_PER_ROUND: usize = 8;
/// Work of one timer sweep round before receiving again.
const SWEEP_BUDGET: Duration = Duration::from_millis(2);

/// splitmix64: jitter, start times, forged bytes. Not for secrets.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }

    /// Seeded from the clock and the pid.
    pub fn from_time() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng::new(t ^ (u64::from(std::process::id()) << 32))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, d)`.
    pub fn duration_below(&mut self, d: Duration) -> Duration {
        Duration::from_nanos(self.below(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A WireGuard public key as the relay's configuration writes it.
pub fn key_b64(key: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// How the relay is told about the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyConfig {
    /// Every key in one allow-list (`allow = [...]`): one group of everybody.
    One,
    /// One group per pair (`groups = [[a, b], ...]`).
    PerPair,
    /// No keys (the relay in open mode).
    Open,
}

impl KeyConfig {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyConfig::One => "one",
            KeyConfig::PerPair => "per-pair",
            KeyConfig::Open => "open",
        }
    }
}

/// The relay's TOML (see wgrelay's src/config.rs: `allow = [...]`, `groups = [[...], ...]`)
/// for `keys` taken as pairs (2s, 2s + 1).
pub fn config_toml(keys: &[Keys], how: KeyConfig, seed: u64) -> String {
    let mut out = format!(
        "# wgrelay-loadgen: {} peers ({} pairs), --seed {seed}, keys: {}\n",
        keys.len(),
        keys.len() / 2,
        how.as_str()
    );
    match how {
        KeyConfig::One => {
            out.push_str("allow = [\n");
            for k in keys {
                let _ = writeln!(out, "  \"{}\",", key_b64(&k.public));
            }
            out.push_str("]\n");
        }
        KeyConfig::PerPair => {
            out.push_str("groups = [\n");
            for p in keys.chunks(2) {
                let names: Vec<String> = p
                    .iter()
                    .map(|k| format!("\"{}\"", key_b64(&k.public)))
                    .collect();
                let _ = writeln!(out, "  [{}],", names.join(", "));
            }
            out.push_str("]\n");
        }
        KeyConfig::Open => out.push_str("# open mode: no allow-list, no groups\n"),
    }
    out
}

/// What the simulated peers did and saw, summed over peers.
#[derive(Debug, Default, Clone)]
pub struct PeerCounters {
    /// Initiations sent when a peer came up (or was restarted).
    pub init_come_up: u64,
    /// Initiations sent by boringtun's `update_timers` (REKEY_TIMEOUT retries and others).
    pub init_timer: u64,
    /// Initiations boringtun sent because data was queued without a session.
    pub init_data: u64,
    /// Initiations we forced (`format_handshake_initiation(.., true)`).
    pub init_forced: u64,
    /// Initiations of peers restarted (`--flap`, `attack --rehandshake restart`): a new
    /// `Tunn` that initiates at once.
    pub init_restart: u64,
    pub responses_sent: u64,
    /// Cookie replies our own peers sent (their rate limiter said "under load").
    pub cookie_replies_sent: u64,
    pub transport_sent: u64,
    /// Cookie replies that reached a peer, and those its `Tunn` accepted.
    pub cookie_replies_received: u64,
    pub cookie_replies_accepted: u64,
    /// Valid responses an initiator processed (its handshake completed).
    pub handshakes_completed: u64,
    /// Valid initiations a responder answered.
    pub initiations_answered: u64,
    /// Data packets (not keepalives) `decapsulate` yielded.
    pub data_received: u64,
    /// (message type, boringtun error) -> datagrams a `Tunn` rejected.
    pub rejected: BTreeMap<(&'static str, &'static str), u64>,
    /// Errors `update_timers` returned (e.g. ConnectionExpired).
    pub timer_errors: BTreeMap<&'static str, u64>,
}

/// boringtun's error by name, without allocating (a storm of rejected copies is counted one
/// by one).
pub fn err_name(e: &WireGuardError) -> &'static str {
    use WireGuardError as E;
    match e {
        E::DestinationBufferTooSmall => "DestinationBufferTooSmall",
        E::IncorrectPacketLength => "IncorrectPacketLength",
        E::UnexpectedPacket => "UnexpectedPacket",
        E::WrongPacketType => "WrongPacketType",
        E::WrongIndex => "WrongIndex",
        E::WrongKey => "WrongKey",
        E::InvalidTai64nTimestamp => "InvalidTai64nTimestamp",
        E::WrongTai64nTimestamp => "WrongTai64nTimestamp",
        E::InvalidMac => "InvalidMac",
        E::InvalidAeadTag => "InvalidAeadTag",
        E::InvalidCounter => "InvalidCounter",
        E::DuplicateCounter => "DuplicateCounter",
        E::InvalidPacket => "InvalidPacket",
        E::NoCurrentSession => "NoCurrentSession",
        E::LockFailed => "LockFailed",
        E::ConnectionExpired => "ConnectionExpired",
        E::UnderLoad => "UnderLoad",
    }
}

/// Name of a WireGuard message type.
pub fn msg_kind(ty: u8) -> &'static str {
    match ty {
        1 => "initiation",
        2 => "response",
        3 => "cookie_reply",
        4 => "transport",
        _ => "other",
    }
}

impl PeerCounters {
    pub fn initiations(&self) -> u64 {
        self.init_come_up + self.init_timer + self.init_data + self.init_forced + self.init_restart
    }

    /// Rejected initiations and responses.
    pub fn rejected_handshake(&self) -> u64 {
        self.rejected
            .iter()
            .filter(|((k, _), _)| *k == "initiation" || *k == "response")
            .map(|(_, n)| n)
            .sum()
    }

    /// Rejected datagrams of one type with one error.
    pub fn rejected_of(&self, kind: &str, err: &str) -> u64 {
        self.rejected
            .iter()
            .filter(|((k, e), _)| *k == kind && *e == err)
            .map(|(_, n)| n)
            .sum()
    }

    /// `{"initiation": {"InvalidMac": n, ...}, ...}`
    pub fn rejected_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for ((kind, err), n) in &self.rejected {
            let e = m.entry(kind.to_string()).or_insert_with(|| json!({}));
            e[*err] = json!(n);
        }
        Value::Object(m)
    }

    pub fn json(&self) -> Value {
        json!({
            "initiations": {
                "total": self.initiations(),
                "come_up": self.init_come_up,
                "timer": self.init_timer,
                "data": self.init_data,
                "forced": self.init_forced,
                "restart": self.init_restart,
            },
            "responses_sent": self.responses_sent,
            "cookie_replies_sent_by_peers": self.cookie_replies_sent,
            "transport_sent": self.transport_sent,
            "cookie_replies_received": self.cookie_replies_received,
            "cookie_replies_accepted": self.cookie_replies_accepted,
            "handshakes_completed": self.handshakes_completed,
            "initiations_answered": self.initiations_answered,
            "data_received": self.data_received,
            "rejected_handshake": self.rejected_handshake(),
            "rejected": self.rejected_json(),
            "timer_errors": self.timer_errors,
        })
    }
}

/// Why an initiation left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    ComeUp,
    Restart,
    Timer,
    Data,
    Forced,
    /// A reply to a received datagram (a response, cookie reply or keepalive; an initiation
    /// here is boringtun flushing queued data without a session).
    Reply,
}

/// Why a peer initiates outside its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// It came up.
    ComeUp,
    /// It was restarted (a new `Tunn`).
    Restart,
    /// Asked to rekey: `format_handshake_initiation(.., force = true)`.
    Rekey,
}

/// What one received datagram did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    /// The `Tunn` rejected it.
    pub rejected: bool,
    /// It was a valid response: this peer's handshake completed.
    pub completed: bool,
    /// It was a valid initiation this peer answered.
    pub answered: bool,
    /// `decapsulate` yielded an IP packet.
    pub data: bool,
}

/// One simulated WireGuard peer: a boringtun `Tunn` (while up) and its timer bookkeeping.
pub struct WgPeer {
    secret: [u8; 32],
    public: [u8; 32],
    partner: [u8; 32],
    /// Per-peer handshake rate limit for a limiter of our own (None: boringtun's own, 10/s).
    limit: Option<u64>,
    limiter: Option<Arc<RateLimiter>>,
    tunn: Option<Box<Tunn>>,
    /// A `Tunn` built ahead for the next `up` with this index (a device configured before
    /// it comes up): its x25519 work is not the generator's at come-up time.
    ready: Option<(u32, Box<Tunn>)>,
    next_tick: Instant,
    /// boringtun would retry at `last_init + REKEY_TIMEOUT`; we let it at `retry_at`.
    last_init: Option<Instant>,
    retry_at: Option<Instant>,
    /// Times this peer came up.
    pub ups: u32,
    /// What this one peer sent and received (for pairs that never work: the report's
    /// `stuck` list).
    pub trace: Trace,
}

/// One peer's message counts, by type.
#[derive(Debug, Default, Clone, Copy)]
pub struct Trace {
    pub sent: [u32; 5],
    pub received: [u32; 5],
    pub completed: u32,
    pub answered: u32,
    pub data: u32,
    pub rejected: u32,
}

impl WgPeer {
    pub fn new(keys: &Keys, partner_public: [u8; 32], limit: Option<u64>, now: Instant) -> Self {
        WgPeer {
            secret: keys.secret,
            public: keys.public,
            partner: partner_public,
            limit,
            limiter: None,
            tunn: None,
            ready: None,
            next_tick: now,
            last_init: None,
            retry_at: None,
            ups: 0,
            trace: Trace::default(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.tunn.is_some()
    }

    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    fn build(&self, index: u32) -> Box<Tunn> {
        Box::new(Tunn::new(
            StaticSecret::from(self.secret),
            PublicKey::from(self.partner),
            None,
            None,
            index & 0x00ff_ffff,
            self.limiter.clone(),
        ))
    }

    /// Builds the `Tunn` the next `up(index)` will use (no packet, no timer started).
    pub fn prepare(&mut self, index: u32) {
        self.limiter = self
            .limit
            .map(|l| Arc::new(RateLimiter::new(&PublicKey::from(self.public), l.max(1))));
        self.ready = Some((index, self.build(index)));
    }

    /// A new `Tunn` (24-bit `index`), replacing any old one; no packet sent.
    pub fn up(&mut self, index: u32, now: Instant, rng: &mut Rng) {
        self.tunn = match self.ready.take() {
            Some((i, t)) if i == index => Some(t),
            _ => {
                self.limiter = self
                    .limit
                    .map(|l| Arc::new(RateLimiter::new(&PublicKey::from(self.public), l.max(1))));
                Some(self.build(index))
            }
        };
        self.next_tick = now + TICK_MIN + rng.duration_below(TICK_SPREAD);
        self.last_init = None;
        self.retry_at = None;
        self.ups += 1;
    }

    pub fn down(&mut self) {
        self.tunn = None;
        self.limiter = None;
    }

    /// Whether the `Tunn` has a current session (it can send data).
    pub fn has_session(&self) -> bool {
        self.tunn
            .as_ref()
            .is_some_and(|t| t.time_since_last_handshake().is_some())
    }

    fn note(
        &mut self,
        pkt: &[u8],
        cause: Cause,
        now: Instant,
        rng: &mut Rng,
        c: &mut PeerCounters,
    ) {
        let ty = pkt.first().copied().unwrap_or(0);
        self.trace.sent[usize::from(ty.min(4))] += 1;
        match ty {
            1 => {
                match cause {
                    Cause::ComeUp => c.init_come_up += 1,
                    Cause::Timer => c.init_timer += 1,
                    Cause::Forced => c.init_forced += 1,
                    Cause::Restart => c.init_restart += 1,
                    Cause::Data | Cause::Reply => c.init_data += 1,
                }
                self.last_init = Some(now);
                self.retry_at = Some(now + REKEY_TIMEOUT + rng.duration_below(REKEY_JITTER_MAX));
            }
            2 => c.responses_sent += 1,
            3 => c.cookie_replies_sent += 1,
            _ => c.transport_sent += 1,
        }
    }

    /// Sends an initiation now, as a peer that comes up (or was restarted) with traffic for
    /// its partner does; `Start::Rekey` even if a handshake is in progress. Returns whether
    /// one left.
    pub fn initiate(
        &mut self,
        start: Start,
        now: Instant,
        buf: &mut [u8],
        rng: &mut Rng,
        c: &mut PeerCounters,
        send: &mut dyn FnMut(&[u8]),
    ) -> bool {
        let Some(t) = self.tunn.as_mut() else {
            return false;
        };
        let forced = start == Start::Rekey;
        if let TunnResult::WriteToNetwork(pkt) = t.format_handshake_initiation(buf, forced) {
            // `pkt` borrows `buf`; keep its type byte for `note`, which needs `self`.
            let head = [pkt.first().copied().unwrap_or(0)];
            send(pkt);
            let cause = match start {
                Start::ComeUp => Cause::ComeUp,
                Start::Restart => Cause::Restart,
                Start::Rekey => Cause::Forced,
            };
            self.note(&head, cause, now, rng, c);
            return true;
        }
        false
    }

    /// Sends `ip` through `encapsulate` (without a session boringtun queues it and starts a
    /// handshake unless one is in progress). Returns whether a transport packet left.
    pub fn send_ip(
        &mut self,
        ip: &[u8],
        now: Instant,
        buf: &mut [u8],
        rng: &mut Rng,
        c: &mut PeerCounters,
        send: &mut dyn FnMut(&[u8]),
    ) -> bool {
        let Some(t) = self.tunn.as_mut() else {
            return false;
        };
        if let TunnResult::WriteToNetwork(pkt) = t.encapsulate(ip, buf) {
            let head = [pkt.first().copied().unwrap_or(0)];
            send(pkt);
            self.note(&head, Cause::Data, now, rng, c);
            return head[0] == 4;
        }
        false
    }

    /// Hands a datagram from `src` (the relay) to the `Tunn`, sends what it answers, and
    /// passes any IP packet it yields to `deliver`.
    #[allow(clippy::too_many_arguments)]
    pub fn receive(
        &mut self,
        data: &[u8],
        src: IpAddr,
        now: Instant,
        buf: &mut [u8],
        rng: &mut Rng,
        c: &mut PeerCounters,
        send: &mut dyn FnMut(&[u8]),
        deliver: &mut dyn FnMut(&[u8]),
    ) -> Received {
        let mut out = Received::default();
        let ty = data.first().copied().unwrap_or(0);
        self.trace.received[usize::from(ty.min(4))] += 1;
        if ty == 3 {
            c.cookie_replies_received += 1;
        }
        let Some(mut t) = self.tunn.take() else {
            return out;
        };
        for round in 0..MAX_FLUSH {
            let r = if round == 0 {
                t.decapsulate(Some(src), data, buf)
            } else {
                t.decapsulate(None, &[], buf)
            };
            match r {
                TunnResult::WriteToNetwork(pkt) => {
                    let head = [pkt.first().copied().unwrap_or(0)];
                    if round == 0 {
                        match (ty, head[0]) {
                            (2, _) => {
                                out.completed = true;
                                c.handshakes_completed += 1;
                            }
                            (1, 2) => {
                                out.answered = true;
                                c.initiations_answered += 1;
                            }
                            _ => {}
                        }
                    }
                    send(pkt);
                    self.note(&head, Cause::Reply, now, rng, c);
                }
                TunnResult::WriteToTunnelV4(pkt, _) | TunnResult::WriteToTunnelV6(pkt, _) => {
                    out.data = true;
                    c.data_received += 1;
                    deliver(pkt);
                    break;
                }
                TunnResult::Err(e) => {
                    if round == 0 {
                        out.rejected = true;
                        *c.rejected.entry((msg_kind(ty), err_name(&e))).or_insert(0) += 1;
                    }
                    break;
                }
                TunnResult::Done => {
                    if round == 0 && ty == 3 {
                        c.cookie_replies_accepted += 1;
                    }
                    break;
                }
            }
        }
        self.trace.completed += u32::from(out.completed);
        self.trace.answered += u32::from(out.answered);
        self.trace.data += u32::from(out.data);
        self.trace.rejected += u32::from(out.rejected);
        if out.completed {
            // boringtun stops retrying once its handshake completed.
            self.retry_at = None;
        }
        self.tunn = Some(t);
        out
    }

    /// boringtun's timers, when due (see the module comment for the retry jitter).
    pub fn tick(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        rng: &mut Rng,
        c: &mut PeerCounters,
        send: &mut dyn FnMut(&[u8]),
    ) {
        if now < self.next_tick || self.tunn.is_none() {
            return;
        }
        if let (Some(sent), Some(retry)) = (self.last_init, self.retry_at) {
            if now >= sent + REKEY_TIMEOUT && now < retry {
                // boringtun would retry now; WireGuard waits for its jitter.
                self.next_tick = retry;
                return;
            }
        }
        if let Some(l) = &self.limiter {
            // Our own limiter: boringtun resets only the ones it made itself.
            l.reset_count();
        }
        let Some(mut t) = self.tunn.take() else {
            return;
        };
        match t.update_timers(buf) {
            TunnResult::WriteToNetwork(pkt) => {
                let head = [pkt.first().copied().unwrap_or(0)];
                send(pkt);
                self.note(&head, Cause::Timer, now, rng, c);
            }
            TunnResult::Err(e) => *c.timer_errors.entry(err_name(&e)).or_insert(0) += 1,
            _ => {}
        }
        self.tunn = Some(t);
        self.next_tick = now + TICK_MIN + rng.duration_below(TICK_SPREAD);
        if let Some(retry) = self.retry_at.filter(|&r| r > now) {
            self.next_tick = self.next_tick.min(retry);
        }
    }
}

/// An IPv4 packet (10.x -> 10.y, no checksum: boringtun only checks version and length)
/// carrying `tag`, `side` and `seq`.
pub fn ip_packet(tag: u32, side: u8, seq: u64) -> [u8; IP_LEN] {
    let mut p = [0u8; IP_LEN];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(IP_LEN as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, side, (tag >> 8) as u8, tag as u8]);
    p[16..20].copy_from_slice(&[10, side ^ 1, (tag >> 8) as u8, tag as u8]);
    p[20..24].copy_from_slice(MAGIC);
    p[24..28].copy_from_slice(&tag.to_le_bytes());
    p[28] = side;
    p[32..40].copy_from_slice(&seq.to_le_bytes());
    p
}

/// (tag, side, seq) of one of our packets.
pub fn parse_ip(p: &[u8]) -> Option<(u32, u8, u64)> {
    if p.len() < IP_LEN || p.get(20..24)? != MAGIC {
        return None;
    }
    let tag = u32::from_le_bytes(p.get(24..28)?.try_into().ok()?);
    let seq = u64::from_le_bytes(p.get(32..40)?.try_into().ok()?);
    Some((tag, *p.get(28)?, seq))
}

/// The relay process under test: spawned by us, or an existing pid, or unknown.
pub struct RelayProc {
    spawned: Option<Spawned>,
    pub pid: Option<u32>,
}

impl RelayProc {
    /// Spawns `spawn` (when given) and waits until it has bound `port`.
    ///
    /// # Errors
    /// It could not be started or did not bind within 5 s (its log is in the message).
    pub fn start(
        spawn: Option<&str>,
        relay_pid: Option<u32>,
        cpu: Option<usize>,
        port: u16,
    ) -> Result<RelayProc, String> {
        let Some(cmd) = spawn else {
            return Ok(RelayProc {
                spawned: None,
                pid: relay_pid,
            });
        };
        let mut s = Spawned::start(cmd, cpu).map_err(|e| e.to_string())?;
        if !s.wait_bound(port, Duration::from_secs(5)) {
            let (_, log) = s.stop();
            return Err(format!(
                "relay `{cmd}` did not bind port {port} within 5 s; its log: {}",
                log.join(" | ")
            ));
        }
        let pid = Some(s.pid());
        Ok(RelayProc {
            spawned: Some(s),
            pid,
        })
    }

    pub fn sample(&self) -> Option<procinfo::Sample> {
        procinfo::sample(self.pid?).ok()
    }

    /// Stops a spawned relay; its `final stats` counters (empty when not spawned) and the
    /// tail of its log.
    pub fn stop(&mut self) -> (serde_json::Map<String, Value>, Vec<String>) {
        match self.spawned.take() {
            Some(s) => {
                let (stats, log) = s.stop();
                (stats.into_iter().map(|(k, n)| (k, json!(n))).collect(), log)
            }
            None => (serde_json::Map::new(), Vec::new()),
        }
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Puts the relay's final counters (and, if it printed none, its log tail) into `v`.
pub fn attach_relay_final(v: &mut Value, relay: &mut RelayProc) {
    let (stats, log) = relay.stop();
    let spawned = !log.is_empty() || !stats.is_empty();
    for k in [
        "fanout_copies",
        "handovers",
        "cookie_replies",
        "parked",
        "paired",
        "confirmed",
    ] {
        v[format!("relay_{k}")] = stats.get(k).cloned().unwrap_or(Value::Null);
    }
    if spawned && stats.is_empty() {
        v["relay_log_tail"] = json!(log.iter().rev().take(8).collect::<Vec<_>>());
    }
    v["relay_final"] = Value::Object(stats);
}

/// Settings of `timers`.
#[derive(Debug, Clone)]
pub struct TimersConfig {
    pub relay: SocketAddrV4,
    pub spawn: Option<String>,
    pub relay_pid: Option<u32>,
    pub relay_cpu: Option<usize>,
    pub pairs: usize,
    pub ramp: Duration,
    pub duration: Duration,
    pub flap: Option<Duration>,
    /// Keys from this seed (the same seed gives the same keys, so one config serves runs).
    pub seed: u64,
    pub keys: KeyConfig,
    pub write_config: Option<String>,
    /// The generator's socket port (0: any).
    pub port: u16,
    pub handshake_limit: Option<u64>,
    pub buffer: usize,
    pub progress: bool,
    pub note: String,
}

/// Seconds since `t0` at which pairs reached the checkpoints.
const CHECKPOINTS: [f64; 5] = [1.0, 2.0, 5.0, 10.0, 20.0];

/// The keys of `timers` (and what `--write-config` writes).
pub fn timers_keys(pairs: usize, seed: u64) -> Vec<Keys> {
    setup::make_keys(2 * pairs, 0x7133_0000_0000_0000 ^ seed)
}

/// Writes the relay's configuration for `cfg`'s keys.
///
/// # Errors
/// The file could not be written.
pub fn write_config(cfg: &TimersConfig, path: &str) -> Result<(), String> {
    let keys = timers_keys(cfg.pairs, cfg.seed);
    std::fs::write(path, config_toml(&keys, cfg.keys, cfg.seed))
        .map_err(|e| format!("writing {path}: {e}"))
}

struct Pair {
    /// Both peers came up (flapping starts then).
    up_at: Option<Instant>,
    got: [bool; 2],
    last_ping: [Option<Instant>; 2],
    working_at: Option<Instant>,
    next_flap: Option<Instant>,
    flaps: u32,
}

/// Runs `timers` and returns its report.
///
/// # Errors
/// Sockets, the relay process or the configuration file failed.
pub fn execute(cfg: &TimersConfig) -> Result<Value, String> {
    let t_start = Instant::now();
    if cfg.pairs == 0 || cfg.pairs > 1 << 20 {
        return Err("--pairs must be 1..=1048576".into());
    }
    if !cfg.relay.ip().is_loopback() {
        return Err(format!("--relay {} must be on 127.0.0.0/8", cfg.relay));
    }
    let keys = timers_keys(cfg.pairs, cfg.seed);
    if let Some(path) = &cfg.write_config {
        std::fs::write(path, config_toml(&keys, cfg.keys, cfg.seed))
            .map_err(|e| format!("writing {path}: {e}"))?;
    }
    topo::probe_pktinfo().map_err(|e| format!("IP_PKTINFO on loopback: {e}"))?;
    let topo = Topology::distinct_on_port(2 * cfg.pairs, cfg.port, cfg.buffer)
        .map_err(|e| e.to_string())?;
    let mut relay = RelayProc::start(
        cfg.spawn.as_deref(),
        cfg.relay_pid,
        cfg.relay_cpu,
        cfg.relay.port(),
    )?;
    let mut v = drive(cfg, &keys, &topo, &relay)?;
    attach_relay_final(&mut v, &mut relay);
    v["wall_s"] = json!(t_start.elapsed().as_secs_f64());
    Ok(v)
}

fn drive(
    cfg: &TimersConfig,
    keys: &[Keys],
    topo: &Topology,
    relay: &RelayProc,
) -> Result<Value, String> {
    let n = cfg.pairs;
    let mut tx = Tx::new(cfg.relay);
    let mut rx = Rx::new(topo, false).map_err(|e| e.to_string())?;
    let mut rng = Rng::from_time();
    let index_base = (rng.next_u64() as u32) & 0x00ff_ffff;
    let relay_ip = IpAddr::V4(*cfg.relay.ip());
    let stride = 2 * n as u32;
    let index_of = |p: usize, g: u32| {
        index_base
            .wrapping_add(g.wrapping_mul(stride))
            .wrapping_add(p as u32 + 1)
    };
    // Every device is configured before the clock starts (its `Tunn` built: x25519 of its
    // static keys); coming up is its first initiation. Otherwise 20k come-ups cost the
    // generator ~0.45 ms each and it, not the relay, set the pace.
    let t_prepare = Instant::now();
    let mut peers: Vec<WgPeer> = (0..2 * n)
        .map(|p| {
            let mut peer =
                WgPeer::new(&keys[p], keys[p ^ 1].public, cfg.handshake_limit, t_prepare);
            peer.prepare(index_of(p, 0));
            peer
        })
        .collect();
    let prepare_s = t_prepare.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let start_at: Vec<Instant> = (0..2 * n)
        .map(|_| t0 + rng.duration_below(cfg.ramp))
        .collect();
    let mut pairs: Vec<Pair> = (0..n)
        .map(|_| Pair {
            up_at: None,
            got: [false; 2],
            last_ping: [None; 2],
            working_at: None,
            next_flap: None,
            flaps: 0,
        })
        .collect();
    let mut c = PeerCounters::default();
    let mut buf = vec![0u8; 2048];
    let mut generation = vec![0u32; 2 * n];
    let mut working = 0usize;
    let mut misdelivered = 0u64;
    let load_before = procinfo::loadavg();
    let cpu0 = procinfo::self_cpu_ns();
    let before = relay.sample();
    let mut rss_max = before.map_or(0, |s| s.rss);
    let end = t0 + cfg.duration;
    let mut next_sweep = t0;
    let mut sweep_at: Option<usize> = None;
    // Peers by start time.
    let mut order: Vec<usize> = (0..2 * n).collect();
    order.sort_by_key(|&p| start_at[p]);
    let mut next_up = 0;
    let mut up_lag_max = Duration::ZERO;
    let mut all_up_at: Option<Instant> = None;
    let mut next_progress = t0 + Duration::from_secs(1);

    // One peer's data packet, if it is due (a session, the pair not working, none lately).
    #[allow(clippy::too_many_arguments)]
    fn maybe_ping(
        p: usize,
        now: Instant,
        peers: &mut [WgPeer],
        pairs: &mut [Pair],
        buf: &mut [u8],
        rng: &mut Rng,
        c: &mut PeerCounters,
        topo: &Topology,
        tx: &mut Tx,
    ) {
        let pair = &mut pairs[p / 2];
        if pair.working_at.is_some()
            || pair.last_ping[p % 2].is_some_and(|t| now.duration_since(t) < PING_EVERY)
            || !peers[p].has_session()
        {
            return;
        }
        pair.last_ping[p % 2] = Some(now);
        let ip = ip_packet((p / 2) as u32, (p % 2) as u8, 0);
        peers[p].send_ip(&ip, now, buf, rng, c, &mut |pkt| {
            tx.send(topo, p, 0, pkt.len(), |d| d.copy_from_slice(pkt))
        });
    }

    while working < n {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let ups_due = next_up < order.len() && start_at[order[next_up]] <= now;
        rx.poll(
            topo,
            if ups_due { 0 } else { 1000 },
            RX_ROUNDS,
            || 0,
            |p, data, _| {
                let now = Instant::now();
                let s = p / 2;
                let mut got_partner = false;
                let r = peers[p].receive(
                    data,
                    relay_ip,
                    now,
                    &mut buf,
                    &mut rng,
                    &mut c,
                    &mut |pkt| tx.send(topo, p, 0, pkt.len(), |d| d.copy_from_slice(pkt)),
                    &mut |ip| match parse_ip(ip) {
                        Some((tag, side, _))
                            if tag as usize == s && side as usize == (p ^ 1) % 2 =>
                        {
                            got_partner = true
                        }
                        _ => misdelivered += 1,
                    },
                );
                if got_partner {
                    let pair = &mut pairs[s];
                    pair.got[p % 2] = true;
                    if pair.got == [true, true] && pair.working_at.is_none() {
                        pair.working_at = Some(now);
                        working += 1;
                    }
                }
                if !r.rejected {
                    maybe_ping(
                        p, now, &mut peers, &mut pairs, &mut buf, &mut rng, &mut c, topo, &mut tx,
                    );
                }
            },
        );
        tx.flush(topo);

        // Come-ups that are due, a few per round so that receiving goes on meanwhile: each
        // costs the generator a `Tunn` and an initiation (~0.4 ms of x25519), and with
        // everybody due at once the generator, not the relay, would set the pace unseen.
        let mut ups = 0;
        while next_up < order.len() && ups < UPS_PER_ROUND {
            let p = order[next_up];
            let now = Instant::now();
            if now < start_at[p] {
                break;
            }
            next_up += 1;
            ups += 1;
            up_lag_max = up_lag_max.max(now.duration_since(start_at[p]));
            peers[p].up(index_of(p, generation[p]), now, &mut rng);
            peers[p].initiate(Start::ComeUp, now, &mut buf, &mut rng, &mut c, &mut |pkt| {
                tx.send(topo, p, 0, pkt.len(), |d| d.copy_from_slice(pkt))
            });
            let s = p / 2;
            if peers[p ^ 1].is_up() {
                pairs[s].up_at = Some(now);
                pairs[s].next_flap = cfg.flap.map(|f| now + f);
            }
            if next_up == order.len() {
                all_up_at = Some(now);
            }
        }
        tx.flush(topo);

        let now = Instant::now();
        // boringtun's timers (and flaps), every 5 ms; a sweep stops after SWEEP_BUDGET of work
        // and resumes after the next receive round, so that a wave of retries (2000 peers
        // that came up together retry together, ~0.3 ms of x25519 each) cannot stall
        // receiving until the socket overflows.
        if sweep_at.is_none() && now >= next_sweep {
            next_sweep = now + Duration::from_millis(5);
            sweep_at = Some(0);
        }
        if let Some(first) = sweep_at {
            let stop_at = Instant::now() + SWEEP_BUDGET;
            let mut now = Instant::now();
            let mut p = first;
            while p < 2 * n {
                if p % 16 == 0 {
                    now = Instant::now();
                    if p > first && now >= stop_at {
                        break;
                    }
                }
                if peers[p].is_up() {
                    peers[p].tick(now, &mut buf, &mut rng, &mut c, &mut |pkt| {
                        tx.send(topo, p, 0, pkt.len(), |d| d.copy_from_slice(pkt))
                    });
                    maybe_ping(
                        p, now, &mut peers, &mut pairs, &mut buf, &mut rng, &mut c, topo, &mut tx,
                    );
                }
                let s = p / 2;
                let flap_due = p % 2 == 1
                    && cfg.flap.is_some()
                    && pairs[s].working_at.is_none()
                    && pairs[s].next_flap.is_some_and(|t| now >= t);
                if let (true, Some(flap)) = (flap_due, cfg.flap) {
                    let pair = &mut pairs[s];
                    pair.next_flap = Some(now + flap);
                    pair.flaps += 1;
                    pair.got = [false; 2];
                    pair.last_ping = [None; 2];
                    // Both sides restart together: new Tunns (new indices), both initiate.
                    for q in [2 * s, 2 * s + 1] {
                        generation[q] += 1;
                        peers[q].up(index_of(q, generation[q]), now, &mut rng);
                    }
                    for q in [2 * s, 2 * s + 1] {
                        peers[q].initiate(
                            Start::Restart,
                            now,
                            &mut buf,
                            &mut rng,
                            &mut c,
                            &mut |pkt| tx.send(topo, q, 0, pkt.len(), |d| d.copy_from_slice(pkt)),
                        );
                    }
                }
                p += 1;
            }
            sweep_at = (p < 2 * n).then_some(p);
            tx.flush(topo);
        }
        if now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            if let Some(s) = relay.sample() {
                rss_max = rss_max.max(s.rss);
            }
            if cfg.progress {
                eprintln!(
                    "timers {:5.1}s: working {working}/{n}, initiations {}, cookies {}, rejected handshakes {}",
                    now.duration_since(t0).as_secs_f64(),
                    c.initiations(),
                    c.cookie_replies_received,
                    c.rejected_handshake()
                );
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let after = relay.sample();
    if let Some(s) = after {
        rss_max = rss_max.max(s.rss);
    }
    let gen_cpu = (procinfo::self_cpu_ns() - cpu0) as f64 / 1e9;

    let mut times: Vec<f64> = pairs
        .iter()
        .filter_map(|p| p.working_at.map(|t| t.duration_since(t0).as_secs_f64()))
        .collect();
    times.sort_by(f64::total_cmp);
    let mut per_pair: Vec<f64> = pairs
        .iter()
        .filter_map(|p| Some(p.working_at?.duration_since(p.up_at?).as_secs_f64()))
        .collect();
    per_pair.sort_by(f64::total_cmp);
    let at = |sec: f64| times.iter().filter(|&&t| t <= sec).count();
    let mut checkpoints = serde_json::Map::new();
    for cp in CHECKPOINTS {
        if cp <= cfg.duration.as_secs_f64() + 1e-9 {
            checkpoints.insert(format!("{cp}s"), json!(at(cp)));
        }
    }
    checkpoints.insert("end".into(), json!(times.len()));
    let time_to = |f: f64| -> Value {
        let need = ((n as f64 * f).ceil() as usize).clamp(1, n);
        times.get(need - 1).map_or(Value::Null, |&t| json!(t))
    };
    let quant = |v: &[f64], f: f64| -> Value {
        if v.is_empty() {
            return Value::Null;
        }
        json!(v[((v.len() as f64 * f).ceil() as usize).clamp(1, v.len()) - 1])
    };
    let flaps: u64 = pairs.iter().map(|p| u64::from(p.flaps)).sum();
    let relay_cpu_s = match (before, after) {
        (Some(a), Some(b)) => json!((b.sched_ns.saturating_sub(a.sched_ns)) as f64 / 1e9),
        _ => Value::Null,
    };
    // The first pairs that never worked, each side as the generator saw it.
    let side = |p: usize| {
        let w = &peers[p];
        let t = &w.trace;
        json!({
            "peer": p, "up": w.is_up(), "session": w.has_session(), "ups": w.ups,
            "sent": t.sent, "received": t.received, "completed": t.completed,
            "answered": t.answered, "data": t.data, "rejected": t.rejected,
        })
    };
    let stuck: Vec<Value> = (0..n)
        .filter(|&s| pairs[s].working_at.is_none())
        .take(10)
        .map(|s| json!({"pair": s, "got": pairs[s].got, "a": side(2 * s), "b": side(2 * s + 1)}))
        .collect();
    let mut v = json!({
        "mode": "timers",
        "relay": cfg.relay.to_string(),
        "relay_pid": relay.pid,
        "spawn": cfg.spawn,
        "note": cfg.note,
        "pairs": n,
        "peers": 2 * n,
        "keys": cfg.keys.as_str(),
        "seed": cfg.seed,
        "generator_port": topo.addrs.first().map(|a| a.port()),
        "ramp_s": cfg.ramp.as_secs_f64(),
        "duration_s": cfg.duration.as_secs_f64(),
        "flap_ms": cfg.flap.map(|f| f.as_millis() as u64),
        "peer_handshake_limit": cfg.handshake_limit.map_or(json!("boringtun (10/s)"), |l| json!(l)),
        "retry_jitter_ms": REKEY_JITTER_MAX.as_millis() as u64,
        "elapsed_s": elapsed,
        "prepare_s": prepare_s,
        "all_up_s": all_up_at.map(|t| t.duration_since(t0).as_secs_f64()),
        "come_up_lag_max_s": up_lag_max.as_secs_f64(),
        "generator_busy_pct": if elapsed > 0.0 { gen_cpu / elapsed * 100.0 } else { 0.0 },
        "working": checkpoints,
        "working_end": times.len(),
        "time_to": {"50%": time_to(0.5), "99%": time_to(0.99), "100%": time_to(1.0)},
        "pair_setup_s": {"p50": quant(&per_pair, 0.5), "p99": quant(&per_pair, 0.99),
                         "max": per_pair.last().copied()},
        "flaps": flaps,
        "peers_counters": c.json(),
        "initiations": c.initiations(),
        "rejected_handshake": c.rejected_handshake(),
        "cookie_replies_received": c.cookie_replies_received,
        "misdelivered": misdelivered,
        "tx_failed": tx.failed,
        "tx_last_errno": tx.last_errno,
        "rx_stray": rx.stray,
        "generator_rx_drops": topo.addrs.first().and_then(|a| procinfo::udp_drops(a.port())),
        "generator_cpu_s": gen_cpu,
        "relay_cpu_s": relay_cpu_s,
        "relay_cpu_pct": match (before, after) {
            (Some(a), Some(b)) if elapsed > 0.0 =>
                json!((b.sched_ns.saturating_sub(a.sched_ns)) as f64 / 1e9 / elapsed * 100.0),
            _ => Value::Null,
        },
        "relay_rss_before": before.map(|s| s.rss),
        "relay_rss_after": after.map(|s| s.rss),
        "relay_rss_max": relay.pid.map(|_| rss_max),
        "addr_mode": "distinct",
    });
    v["stuck"] = json!(stuck);
    v["loadavg_before"] = json!(load_before);
    v["loadavg_after"] = json!(procinfo::loadavg());
    Ok(v)
}

fn f(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

/// The human summary of a `timers` report.
pub fn summary(v: &Value) -> String {
    let mut out = String::new();
    let w = &v["working"];
    let cps: Vec<String> = CHECKPOINTS
        .iter()
        .map(|cp| format!("{cp}s"))
        .chain(std::iter::once("end".to_string()))
        .filter_map(|k| Some(format!("{k} {}", w.get(&k)?)))
        .collect();
    let _ = writeln!(
        out,
        "timers: {} pairs, keys {}, ramp {} s, flap {} (load average {}): working {}/{} ({})",
        v["pairs"],
        v["keys"].as_str().unwrap_or(""),
        f(&v["ramp_s"]),
        v["flap_ms"]
            .as_u64()
            .map_or("off".into(), |m| format!("{m} ms")),
        f(&v["loadavg_before"]),
        v["working_end"],
        v["pairs"],
        cps.join(", ")
    );
    let _ = writeln!(
        out,
        "  time to 50% {} s, 99% {} s, 100% {} s; per pair (from both up) p50 {} s, p99 {} s",
        f(&v["time_to"]["50%"]),
        f(&v["time_to"]["99%"]),
        f(&v["time_to"]["100%"]),
        f(&v["pair_setup_s"]["p50"]),
        f(&v["pair_setup_s"]["p99"]),
    );
    let pc = &v["peers_counters"];
    let _ = writeln!(
        out,
        "  initiations {} (come-up {}, restart {}, timer {}, data {}), handshakes completed {}, cookie replies received {} (accepted {}), rejected handshake messages {} {}",
        pc["initiations"]["total"],
        pc["initiations"]["come_up"],
        pc["initiations"]["restart"],
        pc["initiations"]["timer"],
        pc["initiations"]["data"],
        pc["handshakes_completed"],
        pc["cookie_replies_received"],
        pc["cookie_replies_accepted"],
        pc["rejected_handshake"],
        pc["rejected"],
    );
    let mb = |x: &Value| {
        x.as_u64()
            .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
    };
    let _ = writeln!(
        out,
        "  devices configured in {} s before the clock; all peers up after {} s (largest lag behind schedule {} s); generator CPU {} s ({:.0}% of the run, {} datagrams dropped by its socket); relay CPU {} s ({}%), RSS {} -> {} MiB (max {})",
        f(&v["prepare_s"]),
        f(&v["all_up_s"]),
        f(&v["come_up_lag_max_s"]),
        f(&v["generator_cpu_s"]),
        v["generator_busy_pct"].as_f64().unwrap_or(0.0),
        v["generator_rx_drops"],
        f(&v["relay_cpu_s"]),
        f(&v["relay_cpu_pct"]),
        mb(&v["relay_rss_before"]),
        mb(&v["relay_rss_after"]),
        mb(&v["relay_rss_max"]),
    );
    relay_final_line(&mut out, v);
    out
}

/// `relay: fanout_copies=.. handovers=.. cookie_replies=..` and the full final line.
pub fn relay_final_line(out: &mut String, v: &Value) {
    if let Some(m) = v["relay_final"].as_object().filter(|m| !m.is_empty()) {
        let _ = writeln!(
            out,
            "  relay: fanout_copies {} handovers {} cookie_replies {}",
            v["relay_fanout_copies"], v["relay_handovers"], v["relay_cookie_replies"]
        );
        let kv: Vec<String> = m.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(out, "  relay final stats: {}", kv.join(" "));
    } else if let Some(t) = v["relay_log_tail"].as_array() {
        let _ = writeln!(out, "  relay printed no final stats; its log ends: {t:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_packets_round_trip() {
        let p = ip_packet(7, 1, 99);
        assert_eq!(parse_ip(&p), Some((7, 1, 99)));
        assert_eq!(parse_ip(&p[..30]), None);
    }

    #[test]
    fn config_shapes() {
        let keys = timers_keys(2, 1);
        let one = config_toml(&keys, KeyConfig::One, 1);
        assert!(one.contains("allow = ["), "{one}");
        assert_eq!(one.matches("=\",").count(), 4, "{one}");
        let pp = config_toml(&keys, KeyConfig::PerPair, 1);
        assert!(pp.contains("groups = ["), "{pp}");
        assert_eq!(pp.matches("\"],").count(), 2, "{pp}");
    }

    #[test]
    fn two_peers_handshake_and_exchange_data_directly() {
        // No relay: A's and B's datagrams are handed straight to each other.
        let keys = timers_keys(1, 5);
        let now = Instant::now();
        let mut rng = Rng::new(1);
        let mut c = PeerCounters::default();
        let mut peers = [
            WgPeer::new(&keys[0], keys[1].public, None, now),
            WgPeer::new(&keys[1], keys[0].public, None, now),
        ];
        peers[0].up(1, now, &mut rng);
        peers[1].up(2, now, &mut rng);
        let mut buf = vec![0u8; 2048];
        let mut wire: Vec<(usize, Vec<u8>)> = Vec::new();
        peers[0].initiate(Start::ComeUp, now, &mut buf, &mut rng, &mut c, &mut |p| {
            wire.push((1, p.to_vec()))
        });
        let src = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let mut delivered = 0;
        for _ in 0..20 {
            let Some((to, d)) = wire.pop() else { break };
            let mut out = Vec::new();
            peers[to].receive(
                &d,
                src,
                now,
                &mut buf,
                &mut rng,
                &mut c,
                &mut |p| out.push((to ^ 1, p.to_vec())),
                &mut |_| delivered += 1,
            );
            if peers[to].has_session() {
                let ip = ip_packet(0, to as u8, 1);
                peers[to].send_ip(&ip, now, &mut buf, &mut rng, &mut c, &mut |p| {
                    out.push((to ^ 1, p.to_vec()))
                });
            }
            wire.extend(out);
        }
        assert_eq!(c.handshakes_completed, 1);
        assert!(delivered >= 2, "{c:?}");
    }
}
