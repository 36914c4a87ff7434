//! Target `route`: the routing state machine (`wgrelay::route::State`) fed a sequence of
//! datagrams from a small set of sources, with time advancing between them, in every key mode
//! (allow-list, open, groups, proxy, port-per-peer) and every cookie mode.
//!
//! Input: one mode byte, then operations (see [`Op`], [`Mode`]; [`encode`] writes them). The
//! datagrams are real boringtun messages from the pool (as they are, corrupted, or framed for
//! the AmneziaWG listener), raw bytes, an initiation retried with the mac2 of the cookie the
//! relay sent (decrypted as a peer would), or what the relay last sent to a source, echoed.
//! Other operations run the expiry sweep or restart the relay through its state file.
//!
//! Asserts, after every datagram (the property tests `routing_invariants` and
//! `unproven_endpoints_never_get_more_than_they_sent` in src/route/tests.rs, and
//! docs/handshake.md's invariants):
//! - nothing panics; every routed datagram is counted once (`counters().received`);
//! - a drop or a parked initiation forwards nothing (a drop's only own datagrams are
//!   initiations handed over to its sender); a reply is a 64-byte cookie reply to the
//!   sender of a 148-byte initiation; a forward has targets; nothing goes back to its sender;
//!   targets are within `PROVEN_SWEEP_CAP`; the relay's own datagrams are at most an
//!   initiation long;
//! - **bytes**: every endpoint has received, while unproven, at most the bytes it sent
//!   (summed over the run, as the property test does, and counted as datagrams on the wire:
//!   AmneziaWG prefixes and junk included, a forwarded datagram only where the shard would
//!   send it), and the relay's own counters agree (`bytes_to_unproven <= bytes_from_unproven`);
//! - **reach**: with keys, copies of unproven senders' initiations stay within the per-key
//!   budgets (burst + rate × elapsed, per key);
//! - **bounded tables**: index entries at most one per handshake message routed (plus those
//!   restored), endpoints at most the sources that exist, bindings at most one per key (open
//!   mode: per endpoint), and, right after an expiry sweep, each live endpoint on each group's
//!   candidate list at most once;
//! - **restart**: what `save` writes, a fresh relay `restore`s whole (no line skipped, every
//!   session, proof and binding back).

use std::collections::HashMap;
use std::time::Instant;

use wgrelay::admit::{JunkMemory, TestEntropy};
use wgrelay::config::CookieMode;
use wgrelay::constants::{
    PROVEN_SWEEP_CAP, UNPROVEN_COPIES_PER_KEY_BURST, UNPROVEN_COPIES_PER_KEY_PER_SECOND,
};
use wgrelay::key::PublicKey;
use wgrelay::route::{Actions, Counters, Decision, Settings, State};
use wgrelay::table::{Endpoint, ListenerId};
use wgrelay::wire::awg::{Classified, Framing};
use wgrelay::wire::mac::{self, CookieKey};
use wgrelay::wire::{self, CookieReplyPacket, MessageType};

use crate::common::{
    awg_framing, endpoint_index, endpoints, filler, framed_pool, listeners, pool, time_step, wall,
    Reader, ENDPOINT_COUNT,
};

/// Key topologies (mode bits 2-4). Devices are the pool's, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// `--allow` devices 1-4.
    AllowAll,
    /// No keys: open mode.
    Open,
    /// `--group 1,2 --group 3,4`.
    Groups,
    /// `--allow` 1-3: device 4 is a stranger.
    AllowThree,
    /// Proxy: servers 2 (at endpoint 1) and 4 (unresolved); `--allow` 1, 3.
    Proxy,
    /// Port-per-peer: listener 1 dedicated to device 2, learned; `--allow` 1, 3, 4.
    PortPeer,
    /// `--group 1,2` and `--allow` 3, 4 (the ungrouped allowed keys form a group).
    Mixed,
    /// Port-per-peer: listener 1 dedicated to device 2 at endpoint 1; `--allow` 1, 3, 4.
    PortPeerFixed,
}

const TOPOLOGIES: [Topology; 8] = [
    Topology::AllowAll,
    Topology::Open,
    Topology::Groups,
    Topology::AllowThree,
    Topology::Proxy,
    Topology::PortPeer,
    Topology::Mixed,
    Topology::PortPeerFixed,
];

const COOKIES: [CookieMode; 4] = [
    CookieMode::Never,
    CookieMode::UnderLoad,
    CookieMode::Always,
    CookieMode::UnderLoad,
];

const RATES: [Option<u32>; 4] = [Some(1000), None, Some(1), Some(64)];

/// The first input byte: cookie mode (bits 0-1), topology (2-4), `--broadcast-rate` (5-6:
/// 1000, unlimited, 1, 64), AmneziaWG framing on listener 1 (bit 7; else plain).
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub cookie: CookieMode,
    pub topology: Topology,
    pub rate: Option<u32>,
    pub awg: bool,
}

impl Mode {
    pub fn decode(b: u8) -> Mode {
        Mode {
            cookie: COOKIES[usize::from(b & 3)],
            topology: TOPOLOGIES[usize::from((b >> 2) & 7)],
            rate: RATES[usize::from((b >> 5) & 3)],
            awg: b & 0x80 != 0,
        }
    }

    pub fn encode(&self) -> u8 {
        let c = COOKIES.iter().position(|c| *c == self.cookie).unwrap() as u8;
        let t = TOPOLOGIES.iter().position(|t| *t == self.topology).unwrap() as u8;
        let r = RATES.iter().position(|r| *r == self.rate).unwrap() as u8;
        c | t << 2 | r << 5 | u8::from(self.awg) << 7
    }

    fn settings(&self) -> Settings {
        let pool = pool();
        let d = |i: u8| pool.device(i);
        let keys = |ids: &[u8]| -> Vec<PublicKey> { ids.iter().filter_map(|i| d(*i)).collect() };
        let eps = endpoints();
        let mut s = Settings {
            cookie: self.cookie,
            broadcast_rate: self.rate,
            ..Settings::default()
        };
        match self.topology {
            Topology::AllowAll => s.allow = keys(&[1, 2, 3, 4]),
            Topology::Open => {}
            Topology::Groups => s.groups = vec![keys(&[1, 2]), keys(&[3, 4])],
            Topology::AllowThree => s.allow = keys(&[1, 2, 3]),
            Topology::Proxy => {
                s.allow = keys(&[1, 3]);
                s.servers = keys(&[2, 4]);
            }
            Topology::PortPeer | Topology::PortPeerFixed => {
                s.allow = keys(&[1, 3, 4]);
                let at = (self.topology == Topology::PortPeerFixed).then_some(eps[1]);
                s.port_peers = keys(&[2])
                    .into_iter()
                    .map(|k| (ListenerId(1), k, at))
                    .collect();
            }
            Topology::Mixed => {
                s.groups = vec![keys(&[1, 2])];
                s.allow = keys(&[3, 4]);
            }
        }
        if self.awg {
            s.framings = vec![Framing::plain(), awg_framing()];
        }
        s
    }

    /// What the control thread would set: the resolved proxy server.
    fn pin(&self, state: &mut State) {
        if self.topology == Topology::Proxy {
            if let Some(k) = pool().device(2) {
                state.set_pinned_endpoint(&k, Some(endpoints()[1]));
            }
        }
    }
}

/// One operation. Encoded as a control byte (source endpoint in bits 0-2, kind in 3-5, bit 6
/// set: no time step) then, unless bit 6, a time step byte ([`time_step`]), then the kind's
/// operands.
#[derive(Debug, Clone)]
pub enum Op {
    /// Pool message `idx` (modulo the pool) from `ep` (framed if `ep` is on listener 1).
    Pool { ep: u8, idx: u8 },
    /// The same with one byte XORed (`at` modulo the length).
    Corrupt { ep: u8, idx: u8, at: u16, xor: u8 },
    /// Raw bytes (up to 255) from `ep`.
    Raw { ep: u8, bytes: Vec<u8> },
    /// `ep` answers the relay's last cookie reply to it: its challenged initiation again,
    /// with mac2 made from the decrypted cookie.
    CookieAnswer { ep: u8 },
    /// `ep` sends back what the relay last sent it.
    Echo { ep: u8 },
    /// The expiry sweep runs (then the candidate bound is checked).
    Expire,
    /// The relay stops and starts again with its state file.
    Restart,
    /// Pool message `idx` from the endpoint of the device that sent it.
    Natural { idx: u8 },
}

pub fn encode(mode: Mode, ops: &[(Option<u8>, Op)]) -> Vec<u8> {
    let mut out = vec![mode.encode()];
    for (dt, op) in ops {
        let (ep, kind) = match op {
            Op::Pool { ep, .. } => (*ep, 0),
            Op::Corrupt { ep, .. } => (*ep, 1),
            Op::Raw { ep, .. } => (*ep, 2),
            Op::CookieAnswer { ep } => (*ep, 3),
            Op::Echo { ep } => (*ep, 4),
            Op::Expire => (0, 5),
            Op::Restart => (0, 6),
            Op::Natural { .. } => (0, 7),
        };
        out.push((ep & 7) | kind << 3 | u8::from(dt.is_none()) << 6);
        if let Some(dt) = dt {
            out.push(*dt);
        }
        match op {
            Op::Pool { idx, .. } | Op::Natural { idx } => out.push(*idx),
            Op::Corrupt { idx, at, xor, .. } => {
                out.push(*idx);
                out.extend_from_slice(&at.to_le_bytes());
                out.push(*xor);
            }
            Op::Raw { bytes, .. } => {
                out.push(bytes.len().min(255) as u8);
                out.extend_from_slice(&bytes[..bytes.len().min(255)]);
            }
            _ => {}
        }
    }
    out
}

/// A challenged initiation and the cookie reply that answered it.
#[derive(Clone)]
struct Challenge {
    reply: Vec<u8>,
    datagram: Vec<u8>,
    offset: usize,
}

struct Harness {
    mode: Mode,
    settings: Settings,
    state: State,
    start: Instant,
    /// When the current `state` was made (budgets count from there).
    born: Instant,
    now: Instant,
    out: Actions,
    awg: Framing,
    /// The shard's memory of junk (one shard: every source's junk reaches it).
    junk: JunkMemory,
    restarts: u64,
    /// Counters of the states before the last restart.
    total: Counters,
    /// Datagrams routed by the current `state`, and of them initiations and responses.
    routed: u64,
    handshakes: u64,
    restored_indices: usize,
    /// Over the whole run: bytes received from each endpoint, and sent to it while unproven.
    from_bytes: HashMap<Endpoint, usize>,
    to_unproven: HashMap<Endpoint, usize>,
    last_sent: [Option<Vec<u8>>; ENDPOINT_COUNT],
    challenge: [Option<Challenge>; ENDPOINT_COUNT],
}

impl Harness {
    fn new(mode: Mode) -> Self {
        let start = Instant::now();
        let settings = mode.settings();
        let mut state = State::new(&settings, Box::new(TestEntropy(42)), start);
        mode.pin(&mut state);
        Harness {
            mode,
            settings,
            state,
            start,
            born: start,
            now: start,
            out: Actions::new(),
            awg: if mode.awg {
                awg_framing()
            } else {
                Framing::plain()
            },
            junk: JunkMemory::new(64, 7),
            restarts: 0,
            total: Counters::default(),
            routed: 0,
            handshakes: 0,
            restored_indices: 0,
            from_bytes: HashMap::new(),
            to_unproven: HashMap::new(),
            last_sent: Default::default(),
            challenge: Default::default(),
        }
    }

    fn framing(&self, e: &Endpoint) -> Framing {
        if e.listener == ListenerId(1) {
            self.awg
        } else {
            Framing::plain()
        }
    }

    fn pool_datagram(&self, ep: usize, idx: u8) -> Option<Vec<u8>> {
        let pool = pool();
        if pool.msgs.is_empty() {
            return None;
        }
        let i = usize::from(idx) % pool.msgs.len();
        if endpoints()[ep].listener == ListenerId(1) && self.mode.awg {
            Some(framed_pool()[i].clone())
        } else {
            Some(pool.msgs[i].bytes.clone())
        }
    }

    /// Routes one datagram as a shard would: the listener's framing says what it is, the
    /// State decides. Then checks the invariants.
    fn route(&mut self, ep: usize, mut datagram: Vec<u8>) {
        let from = endpoints()[ep];
        let framing = self.framing(&from);
        self.state.expire_if_due(self.now);
        let t = self.state.tick(self.now);
        let (kind, offset) = if framing.is_plain() {
            (wire::message_type(&datagram), 0)
        } else {
            match framing.classify(&datagram) {
                Classified::Message { kind, offset } => (Ok(kind), offset),
                // Junk and unknown datagrams are counted by the shard, never routed; junk
                // counts for the sender's next initiation.
                Classified::Junk => {
                    *self.from_bytes.entry(from).or_default() += datagram.len();
                    self.junk.note(from, datagram.len(), t);
                    return;
                }
                Classified::Unknown => return,
            }
        };
        let junk = match kind {
            Ok(MessageType::Initiation) => self.junk.take(&from, t),
            _ => 0,
        };
        *self.from_bytes.entry(from).or_default() += datagram.len();
        let on_wire = datagram.len();
        let packet = &mut datagram[offset..];
        let len = packet.len();
        let d = self
            .state
            .route_as(self.now, from, kind, packet, junk, &mut self.out);
        self.routed += 1;
        if matches!(kind, Ok(MessageType::Initiation | MessageType::Response)) {
            self.handshakes += 1;
        }
        let out = &self.out;

        // The decision and what it sends agree.
        match d {
            // The decision is about the routed packet: a drop forwards nothing. The relay's
            // own datagrams go out whatever the decision (shard.rs), and the only ones that
            // may come with a drop are parked initiations handed over to the sender itself
            // (a proven sender whose own initiation then reaches nobody, e.g. a proxy
            // server's with no recent client).
            Decision::Drop(_) => assert!(
                out.targets.is_empty()
                    && out
                        .extra
                        .iter()
                        .all(|x| { x.to == from && x.contents().len() == wire::initiation::LEN }),
                "{d:?} sends {:?} and {:?}",
                out.targets,
                out.extra
            ),
            Decision::Parked => assert!(out.targets.is_empty(), "parked, but forwarded"),
            Decision::Reply => {
                assert!(out.targets.is_empty());
                assert_eq!(len, wire::initiation::LEN, "a reply to a non-initiation");
                assert!(
                    out.extra
                        .iter()
                        .any(|x| x.to == from && x.contents().len() == wire::cookie_reply::LEN),
                    "a reply with no cookie reply to the sender"
                );
            }
            Decision::Forward => assert!(!out.targets.is_empty(), "forward to nobody"),
        }
        assert!(!out.targets.contains(&from), "sent back to its sender");
        assert!(out.targets.len() <= PROVEN_SWEEP_CAP);
        for x in &out.extra {
            assert!(x.contents().len() <= wire::initiation::LEN);
        }

        // Bytes: nothing sent to an unproven endpoint beyond what it sent, as the shard sends
        // it: a forwarded datagram whole, and only to a listener that frames like its own; the
        // relay's own datagrams framed for their listener.
        let mut sends: Vec<(Endpoint, usize)> = out
            .targets
            .iter()
            .filter(|e| self.framing(e) == framing)
            .map(|e| (*e, on_wire))
            .collect();
        sends.extend(
            out.extra
                .iter()
                .map(|x| (x.to, self.frame_extra(&x.to, x.contents()).len())),
        );
        for (to, n) in &sends {
            if !self.state.endpoints().is_proven(to, t) && !self.pinned(to) {
                *self.to_unproven.entry(*to).or_default() += n;
            }
        }
        for (e, got) in &self.to_unproven {
            let gave = self.from_bytes.get(e).copied().unwrap_or(0);
            assert!(
                *got <= gave,
                "{e} got {got} bytes while unproven, sent {gave}"
            );
        }
        let c = self.state.counters();
        assert!(c.bytes_to_unproven <= c.bytes_from_unproven, "{c}");
        assert_eq!(c.received, self.routed);

        // Reach: copies of unproven senders' initiations within the per-key budgets.
        if !self.state.keys().is_open() {
            let secs = self.now.duration_since(self.born).as_secs_f64();
            let per_key = f64::from(UNPROVEN_COPIES_PER_KEY_BURST)
                + f64::from(UNPROVEN_COPIES_PER_KEY_PER_SECOND) * secs;
            let keys = self.state.keys().len() as f64;
            assert!(
                c.unproven_copies as f64 <= keys * per_key,
                "{} third-party copies from unproven senders in {secs} s",
                c.unproven_copies
            );
        }
        self.check_tables();

        // What the sources got, for echoes and cookie answers.
        let sent_on = datagram.clone();
        let mut reply = None;
        for to in &self.out.targets {
            if let Some(i) = endpoint_index(to) {
                self.last_sent[i] = Some(sent_on.clone());
            }
        }
        for x in &self.out.extra {
            let Some(i) = endpoint_index(&x.to) else {
                continue;
            };
            let contents = x.contents();
            if x.to == from && d == Decision::Reply && contents.len() == wire::cookie_reply::LEN {
                reply = Some(contents.to_vec());
            }
            self.last_sent[i] = Some(self.frame_extra(&x.to, contents));
        }
        if let Some(reply) = reply {
            self.challenge[ep] = Some(Challenge {
                reply,
                datagram: sent_on,
                offset,
            });
        }
    }

    /// A configured upstream (a proxy server's or port peer's endpoint, or the endpoint a
    /// pinned key is bound to) counts as proven (docs/handshake.md, "Definitions").
    fn pinned(&self, e: &Endpoint) -> bool {
        let keys: &[u8] = match self.mode.topology {
            Topology::Proxy => &[2, 4],
            Topology::PortPeer | Topology::PortPeerFixed => &[2],
            _ => return false,
        };
        let configured = matches!(
            self.mode.topology,
            Topology::Proxy | Topology::PortPeerFixed
        ) && *e == endpoints()[1];
        let bound = self.state.endpoints().bound_key(e);
        configured
            || keys.iter().any(|d| {
                let id = pool().device(*d).and_then(|k| self.state.keys().id_of(&k));
                id.is_some() && id == bound
            })
    }

    /// One of the relay's own datagrams as the shard sends it on `to`'s listener.
    fn frame_extra(&self, to: &Endpoint, contents: &[u8]) -> Vec<u8> {
        let framing = self.framing(to);
        if framing.is_plain() {
            return contents.to_vec();
        }
        let mut buf = vec![0u8; contents.len() + 128];
        let n = match <&[u8; wire::cookie_reply::LEN]>::try_from(contents) {
            Ok(reply) => framing.frame_cookie_reply(reply, &mut buf, filler(self.routed)),
            Err(_) => {
                let at = framing.prefix_len(MessageType::Initiation);
                filler(self.routed)(&mut buf[..at]);
                buf[at..at + contents.len()].copy_from_slice(contents);
                Ok(at + contents.len())
            }
        };
        match n {
            Ok(n) => {
                buf.truncate(n);
                buf
            }
            Err(_) => contents.to_vec(),
        }
    }

    fn check_tables(&self) {
        let s = &self.state;
        assert!(
            s.indices().len() <= self.handshakes as usize + self.restored_indices,
            "{} index entries from {} handshake messages and {} restored",
            s.indices().len(),
            self.handshakes,
            self.restored_indices
        );
        assert!(s.endpoints().len() <= ENDPOINT_COUNT, "unknown endpoints");
        let bindings_max = if s.keys().is_open() {
            ENDPOINT_COUNT
        } else {
            s.keys().len()
        };
        assert!(s.endpoints().bindings_len() <= bindings_max);
    }

    /// Right after a sweep, every live endpoint is on each group's candidate list at most once.
    fn check_candidates(&self) {
        let s = &self.state;
        let groups = (s.keys().group_count() as usize).max(1);
        assert!(
            s.endpoints().candidate_entries() <= s.endpoints().len() * groups,
            "{} candidate entries for {} endpoints in {} groups",
            s.endpoints().candidate_entries(),
            s.endpoints().len(),
            groups
        );
    }

    fn cookie_answer(&mut self, ep: usize) {
        let Some(Challenge {
            reply,
            mut datagram,
            offset,
        }) = self.challenge[ep].take()
        else {
            return;
        };
        let Ok(p) = CookieReplyPacket::new_checked(&reply[..]) else {
            return;
        };
        let msg = &datagram[offset..];
        let Some(mac1) = mac::mac1_of(msg) else {
            return;
        };
        let cookie = pool().devices.iter().find_map(|k| {
            mac::open_cookie(
                &CookieKey::new(&k.0),
                &p.nonce(),
                &p.encrypted_cookie(),
                &mac1,
            )
        });
        let Some(cookie) = cookie else {
            return;
        };
        let Some(mac2) = mac::compute_mac2(&cookie, msg) else {
            return;
        };
        let end = datagram.len();
        datagram[end - 16..].copy_from_slice(&mac2);
        self.route(ep, datagram);
    }

    fn restart(&mut self) {
        let wall_now = wall() + self.now.duration_since(self.start);
        let text = self.state.save(self.now, wall_now, listeners());
        self.restarts += 1;
        self.total.add(self.state.counters());
        let mut state = State::new(
            &self.settings,
            Box::new(TestEntropy(42 + self.restarts)),
            self.now,
        );
        self.mode.pin(&mut state);
        let r = state.restore(&text, self.now, wall_now, listeners());
        let count = |c: char| text.lines().skip(1).filter(|l| l.starts_with(c)).count();
        assert_eq!(
            r.skipped, 0,
            "a restart lost lines of its own state file:\n{text}"
        );
        assert_eq!(2 * r.sessions, count('s'), "sessions lost:\n{text}");
        assert_eq!(r.proven, count('p'));
        assert_eq!(r.bindings, count('b'));
        assert_eq!(state.indices().len(), 2 * r.sessions);
        self.state = state;
        self.born = self.now;
        self.routed = 0;
        self.handshakes = 0;
        self.restored_indices = 2 * r.sessions;
        self.challenge = Default::default();
        self.check_tables();
    }
}

pub fn run(data: &[u8]) {
    let _ = run_counted(data);
}

/// [`run`], returning the relay's counters summed over its restarts (the seeds' tests check
/// that they reach confirmed sessions).
pub fn run_counted(data: &[u8]) -> Counters {
    let mut r = Reader::new(data);
    let Some(mode) = r.u8().map(Mode::decode) else {
        return Counters::default();
    };
    let mut h = Harness::new(mode);
    // Bounded work per input: libFuzzer's inputs are short, but keep the sweep count sane.
    let mut ops = 0;
    while let Some(ctrl) = r.u8() {
        ops += 1;
        if ops > 2000 {
            break;
        }
        let ep = usize::from(ctrl & 7);
        if ctrl & 0x40 == 0 {
            let Some(dt) = r.u8() else {
                break;
            };
            h.now += time_step(dt);
        }
        match (ctrl >> 3) & 7 {
            0 => {
                let Some(idx) = r.u8() else { break };
                if let Some(d) = h.pool_datagram(ep, idx) {
                    h.route(ep, d);
                }
            }
            1 => {
                let (Some(idx), Some(at), Some(xor)) = (r.u8(), r.u16(), r.u8()) else {
                    break;
                };
                if let Some(mut d) = h.pool_datagram(ep, idx) {
                    let at = usize::from(at) % d.len();
                    d[at] ^= xor;
                    h.route(ep, d);
                }
            }
            2 => {
                let Some(len) = r.u8() else { break };
                let bytes = r.take_up_to(usize::from(len)).to_vec();
                h.route(ep, bytes);
            }
            3 => h.cookie_answer(ep),
            4 => {
                if let Some(d) = h.last_sent[ep].clone() {
                    h.route(ep, d);
                }
            }
            5 => {
                h.state.expire(h.now);
                h.check_candidates();
            }
            6 => h.restart(),
            _ => {
                let Some(idx) = r.u8() else { break };
                let pool = pool();
                if pool.msgs.is_empty() {
                    continue;
                }
                let from = pool.msgs[usize::from(idx) % pool.msgs.len()].from;
                let ep = usize::from(from.saturating_sub(1)) % ENDPOINT_COUNT;
                if let Some(d) = h.pool_datagram(ep, idx) {
                    h.route(ep, d);
                }
            }
        }
    }
    h.total.add(h.state.counters());
    h.total
}
