//! `wgrelay-loadgen attack`: spoofed initiations from fresh source addresses while a legit
//! pair keeps talking and re-handshakes.
//!
//! - The legit pair: peers A (127.66.0.1) and B (`--b-addr`, default 127.66.0.2:51821), each
//!   a boringtun `Tunn` on WireGuard's timers exactly as in `timers` (come-up initiation,
//!   boringtun's `update_timers` every 50–100 ms, REKEY_TIMEOUT retries with 0–333 ms
//!   jitter, cookie replies consumed by the `Tunn`). Target shapes:
//!   - `exchange` (default): both point at the relay and both initiate on come-up;
//!   - `server` (`--legit-server`): B is a fixed WireGuard server the relay forwards to
//!     (`wgrelay --server B_ADDR --server-key KEY_B`); A points at the relay; B waits to be
//!     contacted and answers where packets came from, as a server does;
//!   - `port-peer` (`--port-peer PORT`): B is the responder of the relay's dedicated port
//!     (`wgrelay --peer PORT=KEY_B@B_ADDR`); A sends to relay-host:PORT.
//! - Once the pair works, both sides send numbered IPv4 packets through `encapsulate` at
//!   `--pps` each way (open loop; without a session boringtun queues them and starts a
//!   handshake). Loss = packets offered and never yielded by the other side's `decapsulate`,
//!   per phase (before, during and after the attack).
//! - `--before` s after the pair works the attack starts; `--rehandshake-after` s into it A is
//!   restarted (`restart`: a new `Tunn`, same keys, new index, initiating at once) or asked to
//!   rekey (`rekey`: `format_handshake_initiation(.., force = true)` on the live `Tunn`). The
//!   legit handshake time is from then until an initiator of the pair processes a valid
//!   response; `recovered` is until packets offered after that moment have arrived both ways.
//! - `--cold`: the relay has never seen the legit pair when the attack begins. The attack
//!   starts at once and the pair comes up (both sides in `exchange`, A alone otherwise, as on
//!   come-up) `--rehandshake-after` s into it, instead of being forced to re-handshake;
//!   the handshake time is from that come-up, `--rehandshake` is not used, there is no
//!   `before` phase, the `attack` loss phase starts once the pair works, and a pair that never
//!   works is reported (handshake `never`) instead of being an error.
//! - The attacker (its own thread) sends 148-byte type-1 initiations at `--rate` (`max`: as
//!   fast as that thread can) for `--seconds`, each from a FRESH source address counted up
//!   from `--attack-base` (127.128.0.1: 8M addresses away from the legit peers), all through
//!   one IP_PKTINFO socket that also RECEIVES whatever the relay sends to those addresses (a
//!   second thread counts it). `--forge`:
//!   - `valid-mac1`: 64 real initiations for B's key made by boringtun with throwaway static
//!     keys, replayed with a random sender index each and mac1 recomputed (keyed BLAKE2s-128,
//!     key BLAKE2s-256("mac1----" || B's public key), over bytes 0..116), mac2 zero: to the
//!     relay and to B a well-formed initiation for B from a stranger (B's `Tunn` rejects it as
//!     `WrongKey` after its DH work);
//!   - `random`: 148 random bytes with type 1 (what an open-mode relay cannot tell apart);
//!   - `replay`: the latest initiation A really sent, byte for byte, from new sources
//!     (nothing is sent until A has sent one, which matters with `--cold`).
//! - Third-party copies: initiations reaching A or B that their partner did not send (by
//!   mac1), and copies of the partner's own initiations beyond the first (replays); plus what
//!   the `Tunn`s rejected, by message type and boringtun error.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use serde_json::{json, Value};

use wgrelay::io::{Backend, MmsgBackend, RecvBatch};

use crate::net::{self, Poller, SendList, SockOpts};
use crate::procinfo::{self, Sample};
use crate::setup::{self, Keys};
use crate::timers::{
    attach_relay_final, ip_packet, key_b64, parse_ip, relay_final_line, PeerCounters, RelayProc,
    Rng, Start, WgPeer,
};

pub const INIT_LEN: usize = 148;
const MAC1_AT: usize = 116;
const RESP_LEN: usize = 92;
const RESP_MAC1_AT: usize = 60;
const TEMPLATES: usize = 64;
/// Legit A's address (B's is `--b-addr`).
pub const A_ADDR: Ipv4Addr = Ipv4Addr::new(127, 66, 0, 1);
/// Default first spoofed source: 127.128.0.1, 2^23 - 2 addresses up to 127.255.255.254.
pub const ATTACK_BASE: Ipv4Addr = Ipv4Addr::new(127, 128, 0, 1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    ValidMac1,
    Random,
    Replay,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::ValidMac1 => "valid-mac1",
            Forge::Random => "random",
            Forge::Replay => "replay",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Both peers point at the relay.
    Exchange,
    /// B is a proxy server behind the relay (`--server B_ADDR --server-key KEY_B`).
    Server,
    /// B is the responder of the relay's port PORT (`--peer PORT=KEY_B@B_ADDR`).
    PortPeer(u16),
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Exchange => "exchange",
            Target::Server => "server",
            Target::PortPeer(_) => "port-peer",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rehandshake {
    Restart,
    Rekey,
    Off,
}

impl Rehandshake {
    pub fn as_str(self) -> &'static str {
        match self {
            Rehandshake::Restart => "restart",
            Rehandshake::Rekey => "rekey",
            Rehandshake::Off => "off",
        }
    }
}

#[derive(Debug, Clone)]
pub struct AttackConfig {
    pub relay: SocketAddrV4,
    /// Placeholders `{KEY_A}`, `{KEY_B}`, `{B_ADDR}` are substituted.
    pub spawn: Option<String>,
    pub relay_pid: Option<u32>,
    pub relay_cpu: Option<usize>,
    pub attack_cpu: Option<usize>,
    pub target: Target,
    pub b_addr: SocketAddrV4,
    /// Spoofed initiations per second; None = max.
    pub rate: Option<f64>,
    pub seconds: f64,
    pub forge: Forge,
    /// Legit packets per second, each way.
    pub pps: f64,
    pub before: f64,
    pub rehandshake_after: f64,
    pub after: f64,
    pub rehandshake: Rehandshake,
    /// The relay has never seen the pair: it comes up `rehandshake_after` s into the attack.
    pub cold: bool,
    pub seed: u64,
    pub setup_timeout: f64,
    pub attack_base: Ipv4Addr,
    /// Where the spoofed initiations go (default: where A sends its initiations).
    pub attack_to: Option<SocketAddrV4>,
    pub handshake_limit: Option<u64>,
    pub buffer: usize,
    pub progress: bool,
    pub note: String,
}

/// Keys of A and B (deterministic from the seed, so the relay's flags stay valid).
pub fn attack_keys(seed: u64) -> Vec<Keys> {
    setup::make_keys(2, 0xa77a_c000_0000_0000 ^ seed)
}

/// `{KEY_A}`, `{KEY_B}`, `{B_ADDR}` in a command.
pub fn expand(cmd: &str, keys: &[Keys], b_addr: SocketAddrV4) -> String {
    cmd.replace("{KEY_A}", &key_b64(&keys[0].public))
        .replace("{KEY_B}", &key_b64(&keys[1].public))
        .replace("{B_ADDR}", &b_addr.to_string())
}

/// The relay flags each target needs (allow-list mode adds `--allow` for both keys).
pub fn relay_flags(cfg: &AttackConfig) -> String {
    let keys = attack_keys(cfg.seed);
    let (a, b) = (key_b64(&keys[0].public), key_b64(&keys[1].public));
    match cfg.target {
        Target::Exchange => format!(
            "open mode: no key flags; allow-list mode: --allow {a} --allow {b}\n(A = {a}, B = {b})"
        ),
        Target::Server => format!(
            "--server {} --server-key {b}   (allow-list mode adds --allow {a})\n(A = {a}, B = {b})",
            cfg.b_addr
        ),
        Target::PortPeer(port) => format!(
            "--peer {port}={b}@{}   (allow-list mode adds --allow {a})\n(A = {a}, B = {b})",
            cfg.b_addr
        ),
    }
}

/// BLAKE2s-256("mac1----" || public key): the key of mac1 for messages to that key.
pub fn mac1_key(public: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, b"mac1----");
    Digest::update(&mut h, public);
    h.finalize().into()
}

/// Keyed BLAKE2s with a 16-byte output.
pub fn mac16(key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
    // A 32-byte key is always accepted by BLAKE2s (at most 32).
    let Ok(mut m) = <Blake2sMac<U16> as KeyInit>::new_from_slice(key) else {
        return [0; 16];
    };
    Update::update(&mut m, msg);
    m.finalize_fixed().into()
}

/// Puts `sender` and a fresh mac1 (mac2 zero) on an initiation.
pub fn remac(pkt: &mut [u8; INIT_LEN], sender: u32, key: &[u8; 32]) {
    pkt[4..8].copy_from_slice(&sender.to_le_bytes());
    let m = mac16(key, &pkt[..MAC1_AT]);
    pkt[MAC1_AT..MAC1_AT + 16].copy_from_slice(&m);
    pkt[MAC1_AT + 16..].fill(0);
}

/// Real initiations for `responder` from throwaway static keys.
fn templates(responder: &[u8; 32], rng: &mut Rng) -> Vec<[u8; INIT_LEN]> {
    let mut buf = vec![0u8; 2048];
    let mut out = Vec::with_capacity(TEMPLATES);
    for i in 0..TEMPLATES {
        let mut secret = [0u8; 32];
        rng.fill(&mut secret);
        let mut t = Tunn::new(
            StaticSecret::from(secret),
            PublicKey::from(*responder),
            None,
            None,
            i as u32 + 1,
            None,
        );
        if let TunnResult::WriteToNetwork(p) = t.format_handshake_initiation(&mut buf, false) {
            if let Ok(a) = <[u8; INIT_LEN]>::try_from(&p[..]) {
                out.push(a);
            }
        }
    }
    out
}

fn mac1_of(pkt: &[u8], at: usize) -> Option<[u8; 16]> {
    pkt.get(at..at + 16)?.try_into().ok()
}

/// What the attacker thread sent.
#[derive(Debug, Default, Clone)]
struct TxReport {
    sent: u64,
    bytes: u64,
    failed: u64,
    last_errno: i32,
    seconds: f64,
    cpu_s: f64,
}

/// What arrived at the attack addresses.
#[derive(Debug, Default, Clone)]
struct RxReport {
    datagrams: u64,
    bytes: u64,
    by_type: [u64; 5],
    /// Datagrams to addresses outside the attack range.
    other: u64,
    sources_answered: u64,
}

struct Attacker {
    /// The attack socket (a clone of the receiver's), on wgrelay's mmsg backend.
    net: MmsgBackend,
    to: SocketAddrV4,
    forge: Forge,
    rate: Option<f64>,
    seconds: f64,
    base: u32,
    span: u32,
    templates: Vec<[u8; INIT_LEN]>,
    key: [u8; 32],
    replay: Arc<Mutex<[u8; INIT_LEN]>>,
    stop: Arc<AtomicBool>,
    seed: u64,
    cpu: Option<usize>,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live timespec the call only writes.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Attacker {
    fn run(mut self) -> TxReport {
        if let Some(cpu) = self.cpu {
            if let Err(e) = procinfo::pin(cpu) {
                eprintln!("attack: pinning the attacker to CPU {cpu}: {e}");
            }
        }
        let cpu0 = thread_cpu_ns();
        let mut rng = Rng::new(self.seed);
        let mut batch = SendList::new();
        let mut rep = TxReport::default();
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(self.seconds);
        let mut k: u64 = 0;
        let mut pkt = [0u8; INIT_LEN];
        let read = |m: &Mutex<[u8; INIT_LEN]>| match m.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        };
        let mut replay = read(&self.replay);
        let mut last_replay_read = start;
        loop {
            let now = Instant::now();
            if now >= end || self.stop.load(Ordering::Relaxed) {
                break;
            }
            let due = match self.rate {
                None => k + net::BATCH as u64,
                Some(r) => (now.duration_since(start).as_secs_f64() * r) as u64,
            };
            let n = due.saturating_sub(k).min(net::BATCH as u64);
            if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            if self.forge == Forge::Replay
                && now.duration_since(last_replay_read) > Duration::from_millis(10)
            {
                last_replay_read = now;
                replay = read(&self.replay);
            }
            if self.forge == Forge::Replay && replay[0] != 1 {
                // Nothing captured yet (a cold pair not up): skip these slots, no burst later.
                k += n;
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            for _ in 0..n {
                match self.forge {
                    Forge::ValidMac1 => {
                        pkt = self.templates[(k % self.templates.len() as u64) as usize];
                        remac(&mut pkt, rng.next_u64() as u32, &self.key);
                    }
                    Forge::Random => {
                        rng.fill(&mut pkt);
                        pkt[..4].copy_from_slice(&[1, 0, 0, 0]);
                    }
                    Forge::Replay => pkt = replay,
                }
                let src = Ipv4Addr::from(self.base + (k % u64::from(self.span)) as u32);
                batch.push(0, self.to, Some(src), 0, INIT_LEN, |d| {
                    d.copy_from_slice(&pkt)
                });
                k += 1;
            }
            let s = batch.flush(&mut self.net);
            rep.sent += s.datagrams;
            rep.failed += s.failed;
            if s.failed > 0 {
                rep.last_errno = s.last_errno;
            }
        }
        rep.bytes = rep.sent * INIT_LEN as u64;
        rep.seconds = start.elapsed().as_secs_f64();
        rep.cpu_s = (thread_cpu_ns() - cpu0) as f64 / 1e9;
        rep
    }
}

fn attack_rx(sock: UdpSocket, base: u32, span: u32, stop: Arc<AtomicBool>) -> RxReport {
    let mut rep = RxReport::default();
    let mut net = MmsgBackend::new(vec![sock]);
    let mut rx = RecvBatch::new();
    let mut answered = vec![0u64; (span as usize).div_ceil(64)];
    // Bounded by the stop flag, which the main thread sets after its bounded run.
    while !stop.load(Ordering::Relaxed) {
        if net.recv(&mut rx, Duration::from_millis(20)).unwrap_or(0) == 0 {
            continue;
        }
        for round in 0..64 {
            if round > 0 && net.recv_from(0, &mut rx).unwrap_or(0) == 0 {
                break;
            }
            for (m, data) in rx.iter() {
                let Some(off) = m
                    .local
                    .and_then(|d| match d {
                        IpAddr::V4(d) => u32::from(d).checked_sub(base),
                        IpAddr::V6(_) => None,
                    })
                    .filter(|&o| o < span)
                else {
                    rep.other += 1;
                    continue;
                };
                rep.datagrams += 1;
                rep.bytes += m.len as u64;
                let ty = data.first().copied().unwrap_or(0);
                rep.by_type[usize::from(ty).min(4)] += 1;
                let w = &mut answered[(off / 64) as usize];
                if *w & (1 << (off % 64)) == 0 {
                    *w |= 1 << (off % 64);
                    rep.sources_answered += 1;
                }
            }
            if rx.messages() < net::BATCH {
                break;
            }
        }
    }
    rep
}

/// One legit peer with its socket and what it saw.
struct Side {
    peer: WgPeer,
    /// Its listener in the pair's backend (side `k` is listener `k`) and its address.
    listener: usize,
    local: SocketAddrV4,
    batch: SendList,
    /// Where it sends (None: a server that has not been contacted yet).
    to: Option<SocketAddrV4>,
    /// `to` follows the source of accepted packets (a server answering its clients).
    learns: bool,
    c: PeerCounters,
    seq: u64,
    /// Partner's packets yielded here, by seq.
    delivered: Vec<bool>,
    delivered_count: u64,
    /// mac1 of every initiation / response this side sent.
    sent_inits: HashSet<[u8; 16]>,
    sent_resps: HashSet<[u8; 16]>,
    /// Partner initiations already seen here (a second copy is a replay).
    seen_partner_inits: HashSet<[u8; 16]>,
    third_party_inits: u64,
    third_party_resps: u64,
    replayed: u64,
    unroutable: u64,
    /// The last initiation this side queued, published to the attacker once it has left.
    captured: Option<[u8; INIT_LEN]>,
    next_data: Instant,
    /// First seq yielded from the partner after the forced re-handshake.
    recovered_at: Option<Instant>,
}

const MAX_SEQ: u64 = 1 << 22;

impl Side {
    fn flush(&mut self, net: &mut MmsgBackend) -> (u64, i32) {
        let s = self.batch.flush(net);
        (s.failed, s.last_errno)
    }
}

/// Phase marks of one direction: seq offered by then.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    established: u64,
    attack_start: u64,
    forced: u64,
    attack_end: u64,
    end: u64,
}

fn loss_json(delivered: &[bool], from: u64, to: u64) -> Value {
    let sent = to.saturating_sub(from);
    let got = (from..to)
        .filter(|&s| delivered.get(s as usize).copied().unwrap_or(false))
        .count() as u64;
    json!({
        "sent": sent,
        "delivered": got,
        "lost": sent - got,
        "loss_pct": if sent > 0 { (sent - got) as f64 * 100.0 / sent as f64 } else { 0.0 },
    })
}

/// Runs `attack` and returns its report.
///
/// # Errors
/// Sockets or the relay process failed, or the legit pair never worked.
pub fn execute(cfg: &AttackConfig) -> Result<Value, String> {
    let t_start = Instant::now();
    let keys = attack_keys(cfg.seed);
    let base = u32::from(cfg.attack_base);
    if !cfg.attack_base.is_loopback() {
        return Err(format!(
            "--attack-base {} must be in 127.0.0.0/8",
            cfg.attack_base
        ));
    }
    let span = (u32::from(Ipv4Addr::new(127, 255, 255, 254)) - base + 1).min(1 << 23);
    let range = base..base + span;
    if range.contains(&u32::from(A_ADDR)) || range.contains(&u32::from(*cfg.b_addr.ip())) {
        return Err("--attack-base range overlaps the legit peers' addresses".into());
    }
    if !cfg.relay.ip().is_loopback() || !cfg.b_addr.ip().is_loopback() {
        return Err("the relay and --b-addr must be on 127.0.0.0/8".into());
    }
    let opts = SockOpts {
        pktinfo: false,
        loopback_only: false,
        buffer: cfg.buffer,
    };
    let sa = net::bind_udp(SocketAddrV4::new(A_ADDR, 0), opts).map_err(|e| e.to_string())?;
    let sb = net::bind_udp(cfg.b_addr, opts).map_err(|e| e.to_string())?;
    let b_addr = net::local_addr_v4(&sb).map_err(|e| e.to_string())?;
    let sx = net::bind_udp(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        SockOpts {
            pktinfo: true,
            loopback_only: true,
            ..opts
        },
    )
    .map_err(|e| e.to_string())?;
    let spawn = cfg.spawn.as_deref().map(|c| expand(c, &keys, b_addr));
    let mut relay = RelayProc::start(
        spawn.as_deref(),
        cfg.relay_pid,
        cfg.relay_cpu,
        cfg.relay.port(),
    )?;
    let mut v = drive(cfg, &keys, sa, sb, b_addr, &sx, base, span, &relay)?;
    attach_relay_final(&mut v, &mut relay);
    v["spawn"] = json!(spawn);
    v["wall_s"] = json!(t_start.elapsed().as_secs_f64());
    Ok(v)
}

#[allow(clippy::too_many_arguments)]
fn drive(
    cfg: &AttackConfig,
    keys: &[Keys],
    sa: UdpSocket,
    sb: UdpSocket,
    b_addr: SocketAddrV4,
    sx: &UdpSocket,
    base: u32,
    span: u32,
    relay: &RelayProc,
) -> Result<Value, String> {
    let load_before = procinfo::loadavg();
    let mut rng = Rng::from_time();
    let t0 = Instant::now();
    let a_to = match cfg.target {
        Target::PortPeer(port) => SocketAddrV4::new(*cfg.relay.ip(), port),
        _ => cfg.relay,
    };
    let attack_to = cfg.attack_to.unwrap_or(a_to);
    let b_learns = cfg.target != Target::Exchange;
    let interval = Duration::from_secs_f64(1.0 / cfg.pps.clamp(1.0, 100_000.0));
    let a_addr = net::local_addr_v4(&sa).map_err(|e| e.to_string())?;
    let mk = |k: usize, local: SocketAddrV4, to: Option<SocketAddrV4>, learns: bool| Side {
        peer: WgPeer::new(&keys[k], keys[k ^ 1].public, cfg.handshake_limit, t0),
        listener: k,
        local,
        batch: SendList::new(),
        to,
        learns,
        c: PeerCounters::default(),
        seq: 0,
        delivered: Vec::new(),
        delivered_count: 0,
        sent_inits: HashSet::new(),
        sent_resps: HashSet::new(),
        seen_partner_inits: HashSet::new(),
        third_party_inits: 0,
        third_party_resps: 0,
        replayed: 0,
        unroutable: 0,
        captured: None,
        next_data: t0,
        recovered_at: None,
    };
    let mut sides = [
        mk(0, a_addr, Some(a_to), false),
        mk(1, b_addr, (!b_learns).then_some(cfg.relay), b_learns),
    ];
    // The legit pair's two sockets on wgrelay's mmsg backend: A is listener 0, B listener 1.
    let mut legit = MmsgBackend::new(vec![sa, sb]);
    let poller = Poller::new().map_err(|e| e.to_string())?;
    for (i, s) in legit.sockets().iter().enumerate() {
        poller
            .add(s.as_raw_fd(), i as u64)
            .map_err(|e| e.to_string())?;
    }
    let mut poller = poller;
    let index_base = (rng.next_u64() as u32) & 0x00ff_ff00;
    let mut gen = 0u32;
    let replay = Arc::new(Mutex::new([0u8; INIT_LEN]));
    let mut buf = vec![0u8; 2048];
    let mut rb = RecvBatch::new();
    let mut ready = Vec::new();
    let mut send_failed = 0u64;
    let mut last_errno = 0;

    // Sends `pkt` from side `k` (recording what it is for the third-party count).
    fn out(side: &mut Side, net: &mut MmsgBackend, pkt: &[u8]) {
        match (pkt.first().copied(), pkt.len()) {
            (Some(1), INIT_LEN) => {
                if let Some(m) = mac1_of(pkt, MAC1_AT) {
                    side.sent_inits.insert(m);
                }
                side.captured = <[u8; INIT_LEN]>::try_from(pkt).ok();
            }
            (Some(2), RESP_LEN) => {
                if let Some(m) = mac1_of(pkt, RESP_MAC1_AT) {
                    side.sent_resps.insert(m);
                }
            }
            _ => {}
        }
        let Some(to) = side.to else {
            side.unroutable += 1;
            return;
        };
        if side.batch.is_full() {
            side.batch.flush(net);
        }
        side.batch.push(side.listener, to, None, 0, pkt.len(), |d| {
            d.copy_from_slice(pkt)
        });
    }

    let come_up = |k: usize,
                   side: &mut Side,
                   gen: u32,
                   now: Instant,
                   buf: &mut [u8],
                   rng: &mut Rng,
                   start: Option<Start>| {
        side.peer
            .up(index_base.wrapping_add(gen * 2 + k as u32 + 1), now, rng);
        if let Some(start) = start {
            let Side { peer, c, .. } = side;
            let mut pending: Vec<Vec<u8>> = Vec::new();
            peer.initiate(start, now, buf, rng, c, &mut |p| pending.push(p.to_vec()));
            pending
        } else {
            Vec::new()
        }
    };

    // Come-up: A always initiates; B too in exchange mode (a server waits). Cold: later,
    // during the attack.
    for (k, side) in sides.iter_mut().enumerate() {
        if cfg.cold {
            break;
        }
        let pend = come_up(
            k,
            side,
            gen,
            t0,
            &mut buf,
            &mut rng,
            (k == 0 || !b_learns).then_some(Start::ComeUp),
        );
        for p in pend {
            out(side, &mut legit, &p);
        }
    }

    let cold_up = if cfg.cold {
        cfg.rehandshake_after.clamp(0.0, 600.0)
    } else {
        0.0
    };
    let setup_deadline =
        t0 + Duration::from_secs_f64(cold_up + cfg.setup_timeout.clamp(1.0, 120.0));
    let mut established: Option<Instant> = None;
    let mut attack_start: Option<Instant> = None;
    let mut forced_at: Option<Instant> = None;
    let mut handshake_at: Option<Instant> = None;
    let mut attack_end_at: Option<Instant> = None;
    let mut end_at: Option<Instant> = None;
    let mut end_marked = false;
    let mut marks = [Marks::default(); 2];
    let mut s_attack: Option<Sample> = None;
    let mut s_attack_end: Option<Sample> = None;
    let mut rss_before: Option<u64> = None;
    let mut rss_max = 0u64;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tx_thread: Option<std::thread::JoinHandle<TxReport>> = None;
    let mut rx_thread: Option<std::thread::JoinHandle<RxReport>> = None;
    let mut next_sweep = t0;
    let mut next_sample = t0;
    let mut next_progress = t0 + Duration::from_secs(1);
    let cpu0 = procinfo::self_cpu_ns();
    let drain = Duration::from_millis(300);
    let hard_end = setup_deadline
        + Duration::from_secs_f64(
            cfg.before.clamp(0.0, 60.0)
                + cfg.seconds.clamp(0.1, 600.0)
                + cfg.after.clamp(0.0, 120.0),
        )
        + drain;
    let templates = if cfg.forge == Forge::ValidMac1 {
        templates(&keys[1].public, &mut rng)
    } else {
        Vec::new()
    };
    if cfg.forge == Forge::ValidMac1 && templates.is_empty() {
        return Err("could not make initiation templates".into());
    }

    loop {
        let now = Instant::now();
        if now >= hard_end {
            break;
        }
        if end_at.is_some_and(|e| now >= e + drain) {
            break;
        }
        if established.is_none() && now >= setup_deadline && !cfg.cold {
            stop.store(true, Ordering::Relaxed);
            return Err(format!(
                "the legit pair did not work within {:.0} s (A: {}, B: {})",
                cfg.setup_timeout,
                sides[0].c.json(),
                sides[1].c.json()
            ));
        }
        let sending = end_at.is_none_or(|e| now < e);

        // receive
        ready.clear();
        poller.wait(1000, &mut ready);
        for &tok in &ready {
            let k = tok as usize & 1;
            for _ in 0..64 {
                let n = legit.recv_from(k, &mut rb).unwrap_or(0);
                for i in 0..n {
                    let m = rb.meta(i);
                    let SocketAddr::V4(from) = m.addr else {
                        continue;
                    };
                    if m.truncated {
                        continue;
                    }
                    let data = rb.datagram(i);
                    let now = Instant::now();
                    // Third-party copies, judged against what the partner really sent.
                    let (partner, me) = if k == 0 {
                        let (a, b) = sides.split_at_mut(1);
                        (&b[0], &mut a[0])
                    } else {
                        let (a, b) = sides.split_at_mut(1);
                        (&a[0], &mut b[0])
                    };
                    match (data.first().copied(), data.len()) {
                        (Some(1), INIT_LEN) => {
                            if let Some(mac) = mac1_of(data, MAC1_AT) {
                                if partner.sent_inits.contains(&mac) {
                                    if !me.seen_partner_inits.insert(mac) {
                                        me.replayed += 1;
                                    }
                                } else {
                                    me.third_party_inits += 1;
                                }
                            }
                        }
                        (Some(2), RESP_LEN)
                            if mac1_of(data, RESP_MAC1_AT)
                                .is_none_or(|mac| !partner.sent_resps.contains(&mac)) =>
                        {
                            me.third_party_resps += 1;
                        }
                        _ => {}
                    }
                    let side = me;
                    let src = IpAddr::V4(*from.ip());
                    let mut pending: Vec<Vec<u8>> = Vec::new();
                    let mut got: Option<u64> = None;
                    let r = {
                        let Side { peer, c, .. } = &mut *side;
                        peer.receive(
                            data,
                            src,
                            now,
                            &mut buf,
                            &mut rng,
                            c,
                            &mut |p| pending.push(p.to_vec()),
                            &mut |ip| {
                                if let Some((_, s, seq)) = parse_ip(ip) {
                                    if usize::from(s) == (k ^ 1) {
                                        got = Some(seq);
                                    }
                                }
                            },
                        )
                    };
                    if !r.rejected && side.learns {
                        side.to = Some(from);
                    }
                    if r.completed && forced_at.is_some_and(|f| now >= f) && handshake_at.is_none()
                    {
                        handshake_at = Some(now);
                    }
                    if let Some(seq) = got.filter(|&s| s < MAX_SEQ) {
                        let i = seq as usize;
                        if side.delivered.len() <= i {
                            side.delivered.resize(i + 1, false);
                        }
                        if !side.delivered[i] {
                            side.delivered[i] = true;
                            side.delivered_count += 1;
                        }
                        if forced_at.is_some()
                            && side.recovered_at.is_none()
                            && seq >= marks[k ^ 1].forced
                        {
                            side.recovered_at = Some(now);
                        }
                    }
                    for p in pending {
                        out(side, &mut legit, &p);
                    }
                }
                if rb.messages() < net::BATCH {
                    break;
                }
            }
        }

        let now = Instant::now();
        if established.is_none() && sides[0].delivered_count > 0 && sides[1].delivered_count > 0 {
            established = Some(now);
            for k in 0..2 {
                marks[k].established = sides[k].seq;
                sides[k].next_data = now;
                if cfg.cold {
                    // Loss counts from when the pair works, as in a warm run.
                    marks[k].attack_start = sides[k].seq;
                    if attack_end_at.is_some() {
                        marks[k].attack_end = sides[k].seq;
                    }
                }
            }
            if cfg.progress {
                eprintln!(
                    "attack: legit pair works after {:.2} s",
                    now.duration_since(t0).as_secs_f64()
                );
            }
        }
        // phases
        let attack_from = if cfg.cold {
            Some(t0)
        } else {
            established.map(|e| e + Duration::from_secs_f64(cfg.before.clamp(0.0, 60.0)))
        };
        if let Some(from) = attack_from {
            if attack_start.is_none() && now >= from {
                attack_start = Some(now);
                for k in 0..2 {
                    marks[k].attack_start = sides[k].seq;
                }
                s_attack = relay.sample();
                rss_before = s_attack.map(|s| s.rss);
                let (rx_sock, tx_sock) = match (sx.try_clone(), sx.try_clone()) {
                    (Ok(r), Ok(t)) => (r, t),
                    (Err(e), _) | (_, Err(e)) => return Err(format!("attack socket: {e}")),
                };
                let st = Arc::clone(&stop);
                rx_thread = Some(std::thread::spawn(move || {
                    attack_rx(rx_sock, base, span, st)
                }));
                let att = Attacker {
                    net: MmsgBackend::new(vec![tx_sock]),
                    to: attack_to,
                    forge: cfg.forge,
                    rate: cfg.rate,
                    seconds: cfg.seconds.clamp(0.1, 600.0),
                    base,
                    span,
                    templates: templates.clone(),
                    key: mac1_key(&keys[1].public),
                    replay: Arc::clone(&replay),
                    stop: Arc::clone(&stop),
                    seed: rng.next_u64(),
                    cpu: cfg.attack_cpu,
                };
                tx_thread = Some(std::thread::spawn(move || att.run()));
                if cfg.progress {
                    eprintln!(
                        "attack: {} initiations at {} to {attack_to} for {} s",
                        cfg.forge.as_str(),
                        cfg.rate.map_or("max".into(), |r| format!("{r}/s")),
                        cfg.seconds
                    );
                }
            }
        }
        if let Some(a) = attack_start {
            let force_time = a + Duration::from_secs_f64(cfg.rehandshake_after.clamp(0.0, 600.0));
            if forced_at.is_none()
                && (cfg.cold || cfg.rehandshake != Rehandshake::Off)
                && now >= force_time
            {
                forced_at = Some(now);
                for k in 0..2 {
                    marks[k].forced = sides[k].seq;
                }
                let mut pending: Vec<Vec<u8>> = Vec::new();
                if cfg.cold {
                    // The pair's first come-up, with the attack already running.
                    for (k, side) in sides.iter_mut().enumerate() {
                        let pend = come_up(
                            k,
                            side,
                            gen,
                            now,
                            &mut buf,
                            &mut rng,
                            (k == 0 || !b_learns).then_some(Start::ComeUp),
                        );
                        for p in pend {
                            out(side, &mut legit, &p);
                        }
                    }
                }
                match cfg.rehandshake {
                    _ if cfg.cold => {}
                    Rehandshake::Restart => {
                        gen += 1;
                        pending = come_up(
                            0,
                            &mut sides[0],
                            gen,
                            now,
                            &mut buf,
                            &mut rng,
                            Some(Start::Restart),
                        );
                    }
                    Rehandshake::Rekey => {
                        let Side { peer, c, .. } = &mut sides[0];
                        peer.initiate(Start::Rekey, now, &mut buf, &mut rng, c, &mut |p| {
                            pending.push(p.to_vec())
                        });
                    }
                    Rehandshake::Off => {}
                }
                for p in pending {
                    out(&mut sides[0], &mut legit, &p);
                }
            }
            let attack_len = Duration::from_secs_f64(cfg.seconds.clamp(0.1, 600.0));
            if attack_end_at.is_none() && now >= a + attack_len {
                attack_end_at = Some(now);
                for k in 0..2 {
                    marks[k].attack_end = sides[k].seq;
                }
                s_attack_end = relay.sample();
                end_at = Some(now + Duration::from_secs_f64(cfg.after.clamp(0.0, 120.0)));
            }
        }
        if let Some(e) = end_at {
            if now >= e && !end_marked {
                end_marked = true;
                for k in 0..2 {
                    marks[k].end = sides[k].seq;
                }
            }
        }

        // data, timers
        if sending {
            for (k, side) in sides.iter_mut().enumerate() {
                if established.is_none() && !side.peer.has_session() {
                    side.next_data = now;
                    continue;
                }
                if now.duration_since(side.next_data) > Duration::from_millis(100) {
                    side.next_data = now;
                }
                let mut burst = 0;
                while side.next_data <= now && burst < 64 {
                    burst += 1;
                    side.next_data += interval;
                    let ip = ip_packet(0, k as u8, side.seq);
                    side.seq += 1;
                    let mut pending: Vec<Vec<u8>> = Vec::new();
                    let Side { peer, c, .. } = &mut *side;
                    peer.send_ip(&ip, now, &mut buf, &mut rng, c, &mut |p| {
                        pending.push(p.to_vec())
                    });
                    for p in pending {
                        out(side, &mut legit, &p);
                    }
                }
            }
            if now >= next_sweep {
                next_sweep = now + Duration::from_millis(5);
                for side in sides.iter_mut() {
                    let mut pending: Vec<Vec<u8>> = Vec::new();
                    let Side { peer, c, .. } = &mut *side;
                    peer.tick(now, &mut buf, &mut rng, c, &mut |p| {
                        pending.push(p.to_vec())
                    });
                    for p in pending {
                        out(side, &mut legit, &p);
                    }
                }
            }
        }
        for s in sides.iter_mut() {
            let (f, e) = s.flush(&mut legit);
            send_failed += f;
            if f > 0 {
                last_errno = e;
            }
        }
        // What `replay` replays: A's latest initiation, once it has left.
        if let Some(init) = sides[0].captured.take() {
            if let Ok(mut g) = replay.lock() {
                *g = init;
            }
        }
        if attack_start.is_some() && now >= next_sample {
            next_sample = now + Duration::from_millis(200);
            if let Some(s) = relay.sample() {
                rss_max = rss_max.max(s.rss);
            }
        }
        if cfg.progress && now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            eprintln!(
                "attack {:5.1}s: A got {} B got {} | third-party initiations at A {} at B {} | rejected A {} B {}",
                now.duration_since(t0).as_secs_f64(),
                sides[0].delivered_count,
                sides[1].delivered_count,
                sides[0].third_party_inits,
                sides[1].third_party_inits,
                sides[0].c.rejected_handshake(),
                sides[1].c.rejected_handshake(),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let txr = tx_thread.and_then(|t| t.join().ok()).unwrap_or_default();
    let rxr = rx_thread.and_then(|t| t.join().ok()).unwrap_or_default();
    let s_end = relay.sample();
    if let Some(s) = s_end {
        rss_max = rss_max.max(s.rss);
    }
    for k in 0..2 {
        if !end_marked {
            marks[k].end = sides[k].seq;
        }
        if attack_end_at.is_none() {
            marks[k].attack_end = marks[k].end;
        }
    }
    let gen_cpu = (procinfo::self_cpu_ns() - cpu0) as f64 / 1e9;
    let since = |t: Option<Instant>, from: Option<Instant>| -> Value {
        match (t, from) {
            (Some(t), Some(f)) => json!(t.saturating_duration_since(f).as_secs_f64()),
            _ => Value::Null,
        }
    };
    let recovered = match (sides[0].recovered_at, sides[1].recovered_at) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    // Direction A->B is delivered at B (sides[1]), with A's marks.
    let dir = |from: usize, lo: fn(&Marks) -> u64, hi: fn(&Marks) -> u64| {
        loss_json(
            &sides[from ^ 1].delivered,
            lo(&marks[from]),
            hi(&marks[from]),
        )
    };
    let phase = |lo: fn(&Marks) -> u64, hi: fn(&Marks) -> u64| json!({ "a_to_b": dir(0, lo, hi), "b_to_a": dir(1, lo, hi) });
    let attack_secs = match (attack_start, attack_end_at) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let (relay_cpu_s, relay_cpu_pct) = match (s_attack, s_attack_end) {
        (Some(a), Some(b)) if attack_secs > 0.0 => {
            let s = b.sched_ns.saturating_sub(a.sched_ns) as f64 / 1e9;
            (json!(s), json!(s / attack_secs * 100.0))
        }
        _ => (Value::Null, Value::Null),
    };
    let ratio = |a: u64, b: u64| {
        if b > 0 {
            json!(a as f64 / b as f64)
        } else {
            Value::Null
        }
    };
    let third_party = sides[0].third_party_inits + sides[1].third_party_inits;
    let legit_drops: Vec<Option<u64>> = sides
        .iter()
        .map(|s| procinfo::udp_drops(s.local.port()))
        .collect();
    let mut v = json!({
        "mode": "attack",
        "target": cfg.target.as_str(),
        "forge": cfg.forge.as_str(),
        "rate": cfg.rate.map_or(json!("max"), |r| json!(r)),
        "seconds": cfg.seconds,
        "relay": cfg.relay.to_string(),
        "relay_pid": relay.pid,
        "note": cfg.note,
        "a_addr": Some(sides[0].local.to_string()),
        "b_addr": b_addr.to_string(),
        "a_sends_to": a_to.to_string(),
        "attack_to": attack_to.to_string(),
        "attack_sources": format!("{}..{}", Ipv4Addr::from(base), Ipv4Addr::from(base + span - 1)),
        "key_a": key_b64(&keys[0].public),
        "key_b": key_b64(&keys[1].public),
        "peer_handshake_limit": cfg.handshake_limit.map_or(json!("boringtun (10/s)"), |l| json!(l)),
        "legit": {
            "setup_s": since(established, Some(t0)),
            "pps_each_way": cfg.pps,
            "cold": cfg.cold,
            "rehandshake": if cfg.cold { "cold come-up" } else { cfg.rehandshake.as_str() },
            "forced_after_attack_start_s": since(forced_at, attack_start),
            "handshake_s": since(handshake_at, forced_at),
            "handshake_during_attack": match (handshake_at, attack_end_at) {
                (Some(h), Some(e)) => json!(h <= e),
                (Some(_), None) => json!(true),
                _ => json!(false),
            },
            "recovered_s": since(recovered, forced_at),
            "loss": {
                "before": phase(|m| m.established, |m| m.attack_start),
                "attack": phase(|m| m.attack_start, |m| m.attack_end),
                "after": phase(|m| m.attack_end, |m| m.end),
            },
            "third_party_initiations": third_party,
            "third_party_initiations_at": {"a": sides[0].third_party_inits, "b": sides[1].third_party_inits},
            "replayed_copies": sides[0].replayed + sides[1].replayed,
            "third_party_responses": sides[0].third_party_resps + sides[1].third_party_resps,
            "rejected_handshake": sides[0].c.rejected_handshake() + sides[1].c.rejected_handshake(),
            "unroutable": sides[0].unroutable + sides[1].unroutable,
            "send_failed": send_failed,
            "rx_drops": legit_drops,
            "send_last_errno": last_errno,
            "a": sides[0].c.json(),
            "b": sides[1].c.json(),
        },
        "attack": {
            "sent": txr.sent,
            "bytes_sent": txr.bytes,
            "send_failed": txr.failed,
            "send_last_errno": txr.last_errno,
            "seconds": txr.seconds,
            "pps": if txr.seconds > 0.0 { txr.sent as f64 / txr.seconds } else { 0.0 },
            "attacker_cpu_s": txr.cpu_s,
            "received": rxr.datagrams,
            "bytes_received": rxr.bytes,
            "received_by_type": {
                "initiation": rxr.by_type[1], "response": rxr.by_type[2],
                "cookie_reply": rxr.by_type[3], "transport_or_other": rxr.by_type[4] + rxr.by_type[0],
            },
            "received_elsewhere": rxr.other,
            "rx_drops": net::local_addr_v4(sx).ok().and_then(|a| procinfo::udp_drops(a.port())),
            "sources_answered": rxr.sources_answered,
            "ratio_bytes_out_in": ratio(rxr.bytes, txr.bytes),
            "ratio_datagrams_out_in": ratio(rxr.datagrams, txr.sent),
            "third_party_per_1k_sent": if txr.sent > 0 { json!(third_party as f64 * 1000.0 / txr.sent as f64) } else { Value::Null },
        },
        "generator_cpu_s": gen_cpu,
        "relay_cpu_attack_s": relay_cpu_s,
        "relay_cpu_attack_pct": relay_cpu_pct,
        "relay_rss_before_attack": rss_before,
        "relay_rss_attack_end": s_attack_end.map(|s| s.rss),
        "relay_rss_end": s_end.map(|s| s.rss),
        "relay_rss_max": relay.pid.map(|_| rss_max),
        "relay_rss_growth": rss_before.map(|b| rss_max as i64 - b as i64),
    });
    v["loadavg_before"] = json!(load_before);
    v["loadavg_after"] = json!(procinfo::loadavg());
    Ok(v)
}

/// Seconds as milliseconds; `-` for never.
fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or("never".into(), |x| format!("{:.1}", x * 1000.0))
}

fn f2(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
}

/// The human summary of an `attack` report.
pub fn summary(v: &Value) -> String {
    let mut out = String::new();
    let a = &v["attack"];
    let l = &v["legit"];
    let _ = writeln!(
        out,
        "attack: {} target, forge {}, rate {} (load average {}): sent {} datagrams / {} bytes in {} s ({:.0}/s) to {}; relay sent back {} datagrams / {} bytes to {} of the spoofed sources (bytes out/in {}, datagrams {}) {}",
        v["target"].as_str().unwrap_or(""),
        v["forge"].as_str().unwrap_or(""),
        v["rate"],
        f2(&v["loadavg_before"]),
        a["sent"],
        a["bytes_sent"],
        f2(&a["seconds"]),
        a["pps"].as_f64().unwrap_or(0.0),
        v["attack_to"].as_str().unwrap_or(""),
        a["received"],
        a["bytes_received"],
        a["sources_answered"],
        f2(&a["ratio_bytes_out_in"]),
        f2(&a["ratio_datagrams_out_in"]),
        a["received_by_type"],
    );
    let _ = writeln!(
        out,
        "  legit pair: set up in {} ms; {} {} s into the attack: handshake {} ms (during attack: {}), recovered {} ms",
        ms(&l["setup_s"]),
        if l["cold"].as_bool() == Some(true) {
            "cold: the pair came up".to_string()
        } else {
            format!("{} of A forced", l["rehandshake"].as_str().unwrap_or(""))
        },
        f2(&l["forced_after_attack_start_s"]),
        ms(&l["handshake_s"]),
        l["handshake_during_attack"],
        ms(&l["recovered_s"]),
    );
    for ph in ["before", "attack", "after"] {
        let p = &l["loss"][ph];
        let _ = writeln!(
            out,
            "  loss {ph:>6}: A->B {}/{} lost ({}%), B->A {}/{} lost ({}%)",
            p["a_to_b"]["lost"],
            p["a_to_b"]["sent"],
            f2(&p["a_to_b"]["loss_pct"]),
            p["b_to_a"]["lost"],
            p["b_to_a"]["sent"],
            f2(&p["b_to_a"]["loss_pct"]),
        );
    }
    let _ = writeln!(
        out,
        "  third-party initiations at the legit peers {} (A {}, B {}), replayed copies {}; rejected by the Tunns: A {} B {}; cookie replies received A {} B {}, sent by B {}",
        l["third_party_initiations"],
        l["third_party_initiations_at"]["a"],
        l["third_party_initiations_at"]["b"],
        l["replayed_copies"],
        l["a"]["rejected"],
        l["b"]["rejected"],
        l["a"]["cookie_replies_received"],
        l["b"]["cookie_replies_received"],
        l["b"]["cookie_replies_sent_by_peers"],
    );
    let mb = |x: &Value| {
        x.as_u64()
            .map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
    };
    let _ = writeln!(
        out,
        "  relay CPU during the attack {} s ({}%), RSS {} -> max {} MiB (growth {} bytes); attacker thread CPU {} s, generator CPU {} s",
        f2(&v["relay_cpu_attack_s"]),
        f2(&v["relay_cpu_attack_pct"]),
        mb(&v["relay_rss_before_attack"]),
        mb(&v["relay_rss_max"]),
        v["relay_rss_growth"],
        f2(&a["attacker_cpu_s"]),
        f2(&v["generator_cpu_s"]),
    );
    relay_final_line(&mut out, v);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remac_reproduces_boringtuns_mac1() {
        let keys = attack_keys(3);
        let mut t = Tunn::new(
            StaticSecret::from(keys[0].secret),
            PublicKey::from(keys[1].public),
            None,
            None,
            9,
            None,
        );
        let mut buf = vec![0u8; 256];
        let TunnResult::WriteToNetwork(p) = t.format_handshake_initiation(&mut buf, false) else {
            panic!("no initiation");
        };
        let orig: [u8; INIT_LEN] = p[..].try_into().expect("148 bytes");
        let sender = u32::from_le_bytes(orig[4..8].try_into().expect("4"));
        let mut again = orig;
        again[MAC1_AT..].fill(0xaa);
        remac(&mut again, sender, &mac1_key(&keys[1].public));
        assert_eq!(again, orig);
    }

    #[test]
    fn remacked_templates_reach_the_responder_as_wrong_key() {
        let keys = attack_keys(4);
        let mut rng = Rng::new(1);
        let tpl = templates(&keys[1].public, &mut rng);
        assert_eq!(tpl.len(), TEMPLATES);
        let mut pkt = tpl[0];
        remac(&mut pkt, 0x1234_5678, &mac1_key(&keys[1].public));
        let mut b = Tunn::new(
            StaticSecret::from(keys[1].secret),
            PublicKey::from(keys[0].public),
            None,
            None,
            2,
            None,
        );
        let mut buf = vec![0u8; 256];
        match b.decapsulate(None, &pkt, &mut buf) {
            TunnResult::Err(e) => assert_eq!(format!("{e:?}"), "WrongKey"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
