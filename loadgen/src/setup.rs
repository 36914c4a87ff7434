//! Session set-up: real WireGuard handshakes (boringtun) through the relay.
//!
//! Session `s` is peers A = `2s` and B = `2s + 1`. Both send an initiation for the other, A
//! first: the relay parks A's cold initiation and hands it to B when B shows up. Whichever
//! handshake completes first defines the session: the indices are read off the wire (a
//! response's sender and receiver), and the session is ready when the responder receives the
//! initiator's first transport message (its keepalive), i.e. when the relay has confirmed it.
//! The `Tunn`s are then dropped; traffic is synthetic and needs only the indices.
//!
//! Cookie replies are handled by boringtun (it stores the cookie); once both peers of a
//! session hold one (or 100 ms after the first), both re-initiate at once, A first, instead of
//! waiting REKEY_TIMEOUT. A session not ready after `timeout` retries, up to `attempts` times.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use crate::io::{Rx, Tx};
use crate::topo::Topology;

/// Static key pair of one peer.
#[derive(Clone)]
pub struct Keys {
    pub secret: [u8; 32],
    pub public: [u8; 32],
}

/// Deterministic keys for `n` peers (not timed: a real peer has its key before it starts).
pub fn make_keys(n: usize, seed: u64) -> Vec<Keys> {
    (0..n as u64)
        .map(|k| {
            let mut secret = [0u8; 32];
            for (i, chunk) in secret.chunks_mut(8).enumerate() {
                let mut v = (seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                    .wrapping_add((i as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
                v ^= v >> 31;
                v = v.wrapping_mul(0x94d0_49bb_1331_11eb);
                v ^= v >> 29;
                chunk.copy_from_slice(&v.to_le_bytes());
            }
            let public = *PublicKey::from(&StaticSecret::from(secret)).as_bytes();
            Keys { secret, public }
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// Sessions in handshake at once.
    pub window: usize,
    /// Sessions started per second at most (0: only the window limits).
    pub rate: f64,
    pub timeout: Duration,
    pub attempts: u32,
    /// Give up on the whole set-up after this long.
    pub deadline: Duration,
    /// Send null-relay pairing hellos before each handshake.
    pub hello: bool,
    /// Added to every boringtun index (24 bits), so runs against a long-lived relay do not
    /// collide with its older sessions.
    pub index_base: u32,
    pub progress: bool,
}

/// What set-up achieved.
#[derive(Debug, Clone, Default)]
pub struct SetupResult {
    pub ready: usize,
    pub failed: usize,
    pub seconds: f64,
    /// Time until the first 50 % / 99 % of sessions were ready.
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub initiations: u64,
    pub retries: u64,
    pub cookie_replies: u64,
    /// Handshake messages a peer rejected (mostly initiations meant for another peer that the
    /// relay fanned out or handed over from its parking lot).
    pub rejected: u64,
    pub generator_cpu_s: f64,
}

/// Indices of a ready session: A's and B's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Indices {
    pub a: u32,
    pub b: u32,
}

#[derive(Default)]
struct PeerState {
    tunn: Option<Box<Tunn>>,
    /// (my index, their index) of every response this peer sent.
    responses: Vec<(u32, u32)>,
    cookie: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight,
    Ready,
    Failed,
}

struct Session {
    state: State,
    attempts: u32,
    deadline: Instant,
    cookie_at: Option<Instant>,
}

const HELLO: &[u8; 8] = b"\xff\xff\xff\xffNULL";

/// Runs the handshakes of `sessions` sessions; returns their indices (None: failed).
pub fn run(
    topo: &Topology,
    tx: &mut Tx,
    rx: &mut Rx,
    keys: &[Keys],
    opts: &SetupOptions,
) -> (Vec<Option<Indices>>, SetupResult) {
    let n = topo.peers.len() / 2;
    let t0 = Instant::now();
    let cpu0 = crate::procinfo::self_cpu_ns();
    let mut peers: Vec<PeerState> = (0..2 * n).map(|_| PeerState::default()).collect();
    let mut sessions: Vec<Session> = (0..n)
        .map(|_| Session {
            state: State::Waiting,
            attempts: 0,
            deadline: t0,
            cookie_at: None,
        })
        .collect();
    let mut out: Vec<Option<Indices>> = vec![None; n];
    let mut res = SetupResult::default();
    let mut in_flight: VecDeque<usize> = VecDeque::new();
    let mut next = 0usize;
    let mut ready_times: Vec<f64> = Vec::with_capacity(n);
    let mut buf = vec![0u8; 2048];
    let mut next_timer = t0;
    let mut next_progress = t0 + Duration::from_secs(1);

    // Null relay pairing hellos of session `s`, both before either initiation.
    let hello = |s: usize, tx: &mut Tx| {
        if opts.hello {
            for p in [2 * s, 2 * s + 1] {
                tx.send(topo, p, 0, 13, |d| {
                    d[..8].copy_from_slice(HELLO);
                    d[8..12].copy_from_slice(&(s as u32).to_le_bytes());
                    d[12] = (p % 2) as u8;
                });
            }
        }
    };
    // Sends a fresh initiation from peer `p`.
    let initiate =
        |p: usize, peers: &mut [PeerState], tx: &mut Tx, buf: &mut [u8], res: &mut SetupResult| {
            let Some(t) = peers[p].tunn.as_mut() else {
                return;
            };
            if let TunnResult::WriteToNetwork(pkt) = t.format_handshake_initiation(buf, true) {
                let len = pkt.len();
                tx.send(topo, p, 0, len, |d| d.copy_from_slice(&buf[..len]));
                res.initiations += 1;
            }
        };

    while res.ready + res.failed < n {
        let now = Instant::now();
        if now.duration_since(t0) > opts.deadline {
            break;
        }
        // start sessions
        while next < n && in_flight.len() < opts.window {
            if opts.rate > 0.0 && (next as f64) > now.duration_since(t0).as_secs_f64() * opts.rate {
                break;
            }
            let s = next;
            next += 1;
            for p in [2 * s, 2 * s + 1] {
                let other = p ^ 1;
                let index = (opts.index_base.wrapping_add(p as u32 + 1)) & 0x00ff_ffff;
                peers[p].tunn = Some(Box::new(Tunn::new(
                    StaticSecret::from(keys[p].secret),
                    PublicKey::from(keys[other].public),
                    None,
                    None,
                    index,
                    None,
                )));
            }
            hello(s, tx);
            initiate(2 * s, &mut peers, tx, &mut buf, &mut res);
            initiate(2 * s + 1, &mut peers, tx, &mut buf, &mut res);
            sessions[s].state = State::InFlight;
            sessions[s].attempts = 1;
            sessions[s].deadline = now + opts.timeout;
            in_flight.push_back(s);
        }
        tx.flush(topo);

        // receive
        let mut ready_now: Vec<(usize, Indices)> = Vec::new();
        rx.poll(
            topo,
            1000,
            8,
            || 0,
            |p, data, _| {
                let s = p / 2;
                if sessions[s].state != State::InFlight || data.len() < 4 {
                    return;
                }
                // The responder sees the initiator's keepalive: the relay confirmed the session.
                if data[0] == 4 && data.len() >= 32 {
                    let r = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
                    if let Some(&(mine, theirs)) = peers[p].responses.iter().find(|(m, _)| *m == r)
                    {
                        let idx = if p % 2 == 0 {
                            Indices { a: mine, b: theirs }
                        } else {
                            Indices { a: theirs, b: mine }
                        };
                        sessions[s].state = State::Ready;
                        ready_now.push((s, idx));
                        return;
                    }
                }
                let PeerState {
                    tunn,
                    responses,
                    cookie,
                } = &mut peers[p];
                let Some(t) = tunn.as_mut() else {
                    return;
                };
                let mut input: &[u8] = data;
                for _ in 0..16 {
                    match t.decapsulate(None, input, &mut buf) {
                        TunnResult::WriteToNetwork(pkt) => {
                            let len = pkt.len();
                            if len == 92 && buf[0] == 2 {
                                let mine = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
                                let theirs = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
                                responses.push((mine, theirs));
                            }
                            tx.send(topo, p, 0, len, |d| d.copy_from_slice(&buf[..len]));
                            input = &[];
                        }
                        TunnResult::Err(_) => {
                            res.rejected += 1;
                            break;
                        }
                        _ => break,
                    }
                }
                if data[0] == 3 {
                    res.cookie_replies += 1;
                    *cookie = true;
                    sessions[s].cookie_at.get_or_insert(Instant::now());
                }
            },
        );
        for (s, idx) in ready_now {
            out[s] = Some(idx);
            res.ready += 1;
            ready_times.push(t0.elapsed().as_secs_f64());
            peers[2 * s] = PeerState::default();
            peers[2 * s + 1] = PeerState::default();
        }
        tx.flush(topo);

        // timers: cookies, retries, failures
        let now = Instant::now();
        if now >= next_timer {
            next_timer = now + Duration::from_millis(5);
            let mut keep = VecDeque::with_capacity(in_flight.len());
            while let Some(s) = in_flight.pop_front() {
                if sessions[s].state != State::InFlight {
                    continue;
                }
                let (a, b) = (2 * s, 2 * s + 1);
                let cookies = peers[a].cookie && peers[b].cookie;
                let cookie_due = sessions[s]
                    .cookie_at
                    .is_some_and(|t| cookies || now.duration_since(t) > Duration::from_millis(100));
                if now >= sessions[s].deadline || cookie_due {
                    if !cookie_due {
                        sessions[s].attempts += 1;
                    }
                    if sessions[s].attempts > opts.attempts {
                        sessions[s].state = State::Failed;
                        res.failed += 1;
                        peers[a] = PeerState::default();
                        peers[b] = PeerState::default();
                        continue;
                    }
                    res.retries += 1;
                    sessions[s].cookie_at = None;
                    peers[a].cookie = false;
                    peers[b].cookie = false;
                    hello(s, tx);
                    initiate(a, &mut peers, tx, &mut buf, &mut res);
                    initiate(b, &mut peers, tx, &mut buf, &mut res);
                    sessions[s].deadline = now + opts.timeout;
                }
                keep.push_back(s);
            }
            in_flight = keep;
            // Let boringtun reset its own per-peer rate limiters once in a while.
            tx.flush(topo);
        }
        if opts.progress && now >= next_progress {
            next_progress = now + Duration::from_secs(1);
            eprintln!(
                "setup {:5.1}s: ready {}/{} in flight {} failed {} cookies {} retries {}",
                t0.elapsed().as_secs_f64(),
                res.ready,
                n,
                in_flight.len(),
                res.failed,
                res.cookie_replies,
                res.retries
            );
        }
    }
    res.failed = n - res.ready;
    res.seconds = ready_times.last().copied().unwrap_or(0.0);
    let q = |f: f64| {
        if ready_times.is_empty() {
            0.0
        } else {
            ready_times
                [((ready_times.len() as f64 * f).ceil() as usize).clamp(1, ready_times.len()) - 1]
        }
    };
    res.p50_seconds = q(0.5);
    res.p99_seconds = q(0.99);
    res.generator_cpu_s = (crate::procinfo::self_cpu_ns() - cpu0) as f64 / 1e9;
    (out, res)
}
