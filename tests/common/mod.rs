//! Test harness: boringtun peers (an independent WireGuard implementation) on real loopback
//! sockets, driving a real relay. Every wait is bounded.

#![allow(dead_code)]

pub mod wgdev;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
use wgrelay::config::{BackendChoice, Config, CookieMode};
use wgrelay::io::{bind_udp, SocketOptions};
use wgrelay::key::PublicKey;
use wgrelay::relay::Relay;

/// A WireGuard identity: a static key pair made from a seed.
#[derive(Clone)]
pub struct Identity {
    pub secret: [u8; 32],
    pub public: PublicKey,
}

impl Identity {
    pub fn from_seed(seed: u64) -> Self {
        let mut secret = [0u8; 32];
        for (i, chunk) in secret.chunks_mut(8).enumerate() {
            let v = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add((i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
                ^ 0x94d0_49bb_1331_11eb;
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        let public = XPublic::from(&StaticSecret::from(secret));
        Identity {
            secret,
            public: PublicKey(*public.as_bytes()),
        }
    }
}

/// Binds a UDP socket for a peer on `ip` (any port), non-blocking, with large buffers.
pub fn peer_socket(ip: IpAddr) -> UdpSocket {
    let sock = bind_udp(
        SocketAddr::new(ip, 0),
        &SocketOptions {
            reuse_port: false,
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            pktinfo: false,
        },
    )
    .expect("bind peer socket");
    sock.set_nonblocking(true).expect("nonblocking");
    sock
}

/// One WireGuard peer talking to one other peer through the relay.
pub struct Peer {
    pub id: Identity,
    pub tunn: Tunn,
    pub sock: UdpSocket,
    pub relay: SocketAddr,
    /// Decrypted IP packets received.
    pub delivered: u64,
    /// Bytes of the decrypted IP packets received.
    pub delivered_bytes: u64,
    /// Every datagram received from the network, when `keep_raw` is set.
    pub raw: Vec<Vec<u8>>,
    pub keep_raw: bool,
    /// Every datagram sent, when `keep_raw` is set.
    pub sent: Vec<Vec<u8>>,
    /// Every datagram on the socket in order, both ways, AmneziaWG junk included, as it went
    /// on or came off the wire, when `keep_raw` is set.
    pub wire: Vec<(Way, Vec<u8>)>,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Speak AmneziaWG on the wire: what boringtun sends is framed, what arrives unframed.
    pub awg: Option<Awg>,
}

/// Which way a datagram went on a peer's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Sent,
    Received,
}

/// What an AmneziaWG peer does to plain WireGuard messages: a prefix, its H type values with
/// mac1 recomputed over them, and junk datagrams before every initiation.
pub struct Awg {
    pub params: wgrelay::wire::awg::Params,
    pub framing: wgrelay::wire::awg::Framing,
    /// mac1 key of the other side (recipient of what this peer sends).
    pub theirs: wgrelay::wire::mac::Mac1Key,
    /// mac1 key of this peer (recipient of what arrives).
    pub ours: wgrelay::wire::mac::Mac1Key,
    seed: u64,
}

impl Awg {
    pub fn new(params: wgrelay::wire::awg::Params, ours: &PublicKey, theirs: &PublicKey) -> Self {
        Awg {
            framing: params.framing().expect("valid awg params"),
            params,
            theirs: wgrelay::wire::mac::Mac1Key::new(&theirs.0),
            ours: wgrelay::wire::mac::Mac1Key::new(&ours.0),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    fn fill(&mut self, b: &mut [u8]) {
        for x in b.iter_mut() {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            *x = self.seed as u8;
        }
    }
}

impl Peer {
    pub fn new(id: &Identity, peer: &PublicKey, ip: IpAddr, relay: SocketAddr, index: u32) -> Self {
        Self::with_socket(id, peer, peer_socket(ip), relay, index)
    }

    pub fn with_socket(
        id: &Identity,
        peer: &PublicKey,
        sock: UdpSocket,
        relay: SocketAddr,
        index: u32,
    ) -> Self {
        let tunn = Tunn::new(
            StaticSecret::from(id.secret),
            XPublic::from(peer.0),
            None,
            None,
            index & 0x00ff_ffff,
            None,
        );
        Peer {
            id: id.clone(),
            tunn,
            sock,
            relay,
            delivered: 0,
            delivered_bytes: 0,
            raw: Vec::new(),
            keep_raw: false,
            sent: Vec::new(),
            wire: Vec::new(),
            buf: vec![0u8; 65536],
            out: vec![0u8; 65536],
            awg: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("local addr")
    }

    fn transmit(&mut self, len: usize) {
        if let Some(mut awg) = self.awg.take() {
            let msg = self.out[..len].to_vec();
            if msg.first() == Some(&1) {
                // Jc junk datagrams of [Jmin, Jmax] bytes before each initiation.
                for j in 0..awg.params.jc {
                    let span = awg.params.jmax - awg.params.jmin + 1;
                    let mut junk = vec![0u8; (awg.params.jmin + j % span) as usize];
                    awg.fill(&mut junk);
                    if self.keep_raw {
                        self.wire.push((Way::Sent, junk.clone()));
                    }
                    let _ = self.sock.send_to(&junk, self.relay);
                }
            }
            let mut framed = vec![0u8; msg.len() + 2048];
            let mut seed = awg.seed;
            let theirs = awg.theirs;
            let n = awg
                .framing
                .reframe(&msg, Some(&theirs), &mut framed, |b| {
                    for x in b.iter_mut() {
                        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                        *x = (seed >> 33) as u8;
                    }
                })
                .expect("frame");
            awg.seed = seed;
            if self.keep_raw {
                self.sent.push(framed[..n].to_vec());
                self.wire.push((Way::Sent, framed[..n].to_vec()));
            }
            let _ = self.sock.send_to(&framed[..n], self.relay);
            self.awg = Some(awg);
            return;
        }
        let datagram = &self.out[..len];
        if self.keep_raw {
            self.sent.push(datagram.to_vec());
            self.wire.push((Way::Sent, datagram.to_vec()));
        }
        // Loopback sends only fail when the buffer is full; the test then sees loss.
        let _ = self.sock.send_to(datagram, self.relay);
    }

    /// Starts a handshake now (a new initiation even if one is in flight).
    pub fn initiate(&mut self) {
        let len = match self.tunn.format_handshake_initiation(&mut self.out, true) {
            TunnResult::WriteToNetwork(p) => p.len(),
            _ => return,
        };
        self.transmit(len);
    }

    /// Whether a handshake completed.
    pub fn established(&self) -> bool {
        self.tunn.stats().0.is_some()
    }

    /// Encrypts and sends one IPv4 packet of `len` bytes (at least 20). False without a session.
    pub fn send_data(&mut self, len: usize, stamp: u64) -> bool {
        let len = len.max(28);
        let mut ip = vec![0u8; len];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        ip[20..28].copy_from_slice(&stamp.to_le_bytes());
        match self.tunn.encapsulate(&ip, &mut self.out) {
            TunnResult::WriteToNetwork(p) => {
                let n = p.len();
                self.transmit(n);
                true
            }
            _ => false,
        }
    }

    /// Reads and processes everything waiting on the socket. Returns datagrams read.
    pub fn poll(&mut self) -> usize {
        let mut count = 0;
        loop {
            let n = match self.sock.recv_from(&mut self.buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            };
            count += 1;
            let mut datagram = self.buf[..n].to_vec();
            if self.keep_raw {
                self.wire.push((Way::Received, datagram.clone()));
            }
            if self.keep_raw && self.awg.is_some() {
                // as it came off the wire
                self.raw.push(datagram.clone());
            }
            if let Some(awg) = &self.awg {
                let mut plain = vec![0u8; n];
                match awg.framing.unframe(&datagram, Some(&awg.ours), &mut plain) {
                    Ok(m) => {
                        plain.truncate(m);
                        datagram = plain;
                    }
                    // Not a message of this framing: an AmneziaWG peer drops it.
                    Err(_) => continue,
                }
            }
            if self.keep_raw && self.awg.is_none() {
                self.raw.push(datagram.clone());
            }
            let _ = self.process(&datagram);
        }
        count
    }

    /// Hands one received datagram to boringtun (sending what it answers). Returns whether
    /// boringtun accepted it (answered or delivered something).
    pub fn process(&mut self, datagram: &[u8]) -> bool {
        let mut accepted = false;
        let mut input: &[u8] = datagram;
        // boringtun: repeat with an empty datagram until Done to flush queued packets.
        for _ in 0..64 {
            let mut out = std::mem::take(&mut self.out);
            let result = self.tunn.decapsulate(None, input, &mut out);
            let (send, delivered) = match result {
                TunnResult::WriteToNetwork(p) => (Some(p.len()), None),
                TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
                    (None, Some(p.len()))
                }
                _ => (None, None),
            };
            self.out = out;
            if let Some(n) = delivered {
                self.delivered += 1;
                self.delivered_bytes += n as u64;
                accepted = true;
            }
            match send {
                Some(n) => {
                    self.transmit(n);
                    accepted = true;
                    input = &[];
                }
                None => break,
            }
        }
        accepted
    }

    /// Runs boringtun's timers (handshake retries, keepalives).
    pub fn tick(&mut self) {
        let len = match self.tunn.update_timers(&mut self.out) {
            TunnResult::WriteToNetwork(p) => p.len(),
            _ => return,
        };
        self.transmit(len);
    }
}

/// A pair of peers that talk to each other.
pub fn pair(
    a: &Identity,
    b: &Identity,
    ip_a: IpAddr,
    ip_b: IpAddr,
    relay: SocketAddr,
    index: u32,
) -> (Peer, Peer) {
    (
        Peer::new(a, &b.public, ip_a, relay, index * 2),
        Peer::new(b, &a.public, ip_b, relay, index * 2 + 1),
    )
}

/// Polls peers (and runs their timers every 100 ms) until `done` or the deadline.
/// Returns whether `done` became true.
pub fn pump_until(
    peers: &mut [&mut Peer],
    limit: Duration,
    mut done: impl FnMut(&[&mut Peer]) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    let mut next_tick = Instant::now();
    while Instant::now() < deadline {
        let mut activity = 0;
        for p in peers.iter_mut() {
            activity += p.poll();
        }
        if Instant::now() >= next_tick {
            for p in peers.iter_mut() {
                p.tick();
            }
            next_tick = Instant::now() + Duration::from_millis(100);
        }
        if done(peers) {
            return true;
        }
        if activity == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done(peers)
}

/// Both peers initiate (as `PersistentKeepalive` makes real peers do, so the relay learns
/// both), then pump until both have a session, at most `limit`.
pub fn handshake(a: &mut Peer, b: &mut Peer, limit: Duration) -> bool {
    a.initiate();
    b.initiate();
    pump_until(&mut [a, b], limit, |p| {
        p[0].established() && p[1].established()
    })
}

/// Pumps for a fixed time (to show that something does NOT happen).
pub fn pump_for(peers: &mut [&mut Peer], time: Duration) {
    pump_until(peers, time, |_| false);
}

/// The datapath backend the suite runs on: `WGRELAY_TEST_BACKEND` (auto, uring or mmsg;
/// scripts/test.sh runs the suite once more with `uring`), else the default.
pub fn backend() -> BackendChoice {
    match std::env::var("WGRELAY_TEST_BACKEND") {
        Ok(name) => <BackendChoice as clap::ValueEnum>::from_str(&name, true)
            .unwrap_or_else(|e| panic!("WGRELAY_TEST_BACKEND={name}: {e}")),
        Err(_) => BackendChoice::default(),
    }
}

pub fn config(allow: &[&Identity]) -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        allow: allow.iter().map(|i| i.public).collect(),
        cookie: CookieMode::Never,
        threads: 2,
        stats_interval: None,
        backend: backend(),
        ..Config::default()
    }
}

/// Starts a relay; with an explicit backend, checks that it is the one running (an explicit
/// `uring` that cannot run fails here, loudly, rather than quietly testing mmsg).
pub fn start(config: &Config) -> (Relay, SocketAddr) {
    let relay = Relay::start(config).expect("relay starts");
    if config.backend != BackendChoice::Auto {
        assert_eq!(
            format!("{:?}", relay.backend()).to_lowercase(),
            config.backend.as_str(),
            "backend in use"
        );
    }
    let addr = relay.local_addrs()[0];
    (relay, addr)
}

pub fn localhost(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::from([127, a, b, c])
}

/// Drains a raw socket for up to `time`; returns what arrived.
pub fn drain(sock: &UdpSocket, time: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + time;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => got.push(buf[..n].to_vec()),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    got
}

/// Raises the open-file limit towards `want` (suites with thousands of peer sockets).
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The `wgrelay` binary with none of the caller's `WGRELAY_*`/`WGPROXY_*` settings: a test
/// says what it runs with.
pub fn wgrelay_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wgrelay"));
    for (k, _) in std::env::vars() {
        if k.starts_with("WGRELAY_") || k.starts_with("WGPROXY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}
