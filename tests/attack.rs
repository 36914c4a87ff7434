//! Spoofed initiations from many fresh source addresses while a real pair (boringtun) works
//! through the relay, with default cookie settings. The security properties, with generous
//! time bounds (speed lives in the load generator's attack mode, docs/benchmarks.md):
//! - the attack addresses get back at most 0.45x the bytes they sent where a cookie can be
//!   sealed (allow-lists), at most what they sent in open mode;
//! - spoofed copies reach the legit responder only within the per-key budget;
//! - the legit pair re-handshakes during the attack (no lockout), and a cold pair in open
//!   mode still meets.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
use common::*;
use wgrelay::config::{Config, CookieMode};
use wgrelay::constants::{UNPROVEN_COPIES_PER_KEY_BURST, UNPROVEN_COPIES_PER_KEY_PER_SECOND};

/// Spoofed sources: one socket per fresh address, each used once, kept to count what the
/// relay sends back to it.
struct Attack {
    socks: Vec<UdpSocket>,
    sent: u64,
    received: u64,
}

impl Attack {
    fn new(n: usize, net: u8) -> Self {
        raise_fd_limit(8192);
        let socks = (0..n)
            .map(|i| {
                let ip = IpAddr::from([127, net, (i / 250) as u8, (i % 250) as u8 + 1]);
                let s = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("attack socket");
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect();
        Attack {
            socks,
            sent: 0,
            received: 0,
        }
    }

    fn send(&mut self, i: usize, datagram: &[u8], relay: SocketAddr) {
        if self.socks[i].send_to(datagram, relay).is_ok() {
            self.sent += datagram.len() as u64;
        }
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 2048];
        for s in &self.socks {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                self.received += n as u64;
            }
        }
    }
}

/// Initiations with a valid mac1 for `victim` from throwaway keys (what anyone who knows a
/// public key can make), each with its own sender index and mac1.
fn forged(victim: &Identity, n: usize) -> Vec<Vec<u8>> {
    let mut buf = [0u8; 256];
    (0..n)
        .map(|i| {
            let mut secret = [0u8; 32];
            secret[..8].copy_from_slice(&(0xa77a_c000 + i as u64).to_le_bytes());
            secret[31] = 0x40;
            let mut t = Tunn::new(
                StaticSecret::from(secret),
                XPublic::from(victim.public.0),
                None,
                None,
                0x0070_0000 + i as u32,
                None,
            );
            match t.format_handshake_initiation(&mut buf, true) {
                TunnResult::WriteToNetwork(p) => p.to_vec(),
                _ => panic!("no initiation"),
            }
        })
        .collect()
}

/// Random 148-byte type-1 datagrams: all open mode can check of an initiation.
fn junk(n: usize) -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            let mut d = vec![0u8; 148];
            for b in d.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            d[..4].copy_from_slice(&[1, 0, 0, 0]);
            d
        })
        .collect()
}

/// Runs the attack (`packets` from fresh sources over about `seconds`) while pumping the pair
/// and sending data both ways; `during` runs once, a quarter into the attack.
fn attack_while(
    attack: &mut Attack,
    packets: &[Vec<u8>],
    seconds: f64,
    relay: SocketAddr,
    a: &mut Peer,
    b: &mut Peer,
    mut during: impl FnMut(&mut Peer, &mut Peer),
) {
    let t0 = Instant::now();
    let per_ms = packets.len() as f64 / (seconds * 1000.0);
    let mut next = 0;
    let mut fired = false;
    while next < packets.len() && t0.elapsed() < Duration::from_secs_f64(seconds * 3.0) {
        let due = ((t0.elapsed().as_secs_f64() * 1000.0) * per_ms) as usize;
        while next < due.min(packets.len()) {
            attack.send(next, &packets[next], relay);
            next += 1;
        }
        if !fired && next >= packets.len() / 4 {
            fired = true;
            during(a, b);
        }
        a.send_data(64, 1);
        b.send_data(64, 2);
        pump_for(&mut [&mut *a, &mut *b], Duration::from_millis(5));
        attack.drain();
    }
}

fn handshake_count(p: &Peer) -> bool {
    p.established()
}

#[test]
fn spoofed_initiations_for_a_legit_key_are_answered_with_cookies_only() {
    let (ia, ib) = (Identity::from_seed(81), Identity::from_seed(82));
    let cfg = Config {
        cookie: CookieMode::UnderLoad,
        ..config(&[&ia, &ib])
    };
    let (relay, addr) = start(&cfg);
    let (mut a, mut b) = pair(
        &ia,
        &ib,
        localhost(0, 81, 1),
        localhost(0, 81, 2),
        addr,
        0x81,
    );
    assert!(handshake(&mut a, &mut b, Duration::from_secs(10)));
    pump_for(&mut [&mut a, &mut b], Duration::from_millis(200));
    assert_eq!(relay.stats().route.sessions_confirmed, 1);
    b.keep_raw = true;
    const N: usize = 3000;
    let packets = forged(&ib, N);
    let mut attack = Attack::new(N, 82);
    let t0 = Instant::now();
    let mut rekey_at = None;
    attack_while(&mut attack, &packets, 1.5, addr, &mut a, &mut b, |a, _| {
        rekey_at = Some(Instant::now());
        a.initiate();
    });
    let attack_time = t0.elapsed().as_secs_f64();
    // The rekey A started during the attack completes, and data flows both ways after it.
    let rekey_at = rekey_at.expect("rekey started");
    let (da, db) = (a.delivered, b.delivered);
    // (a new confirmed session at the relay, then data both ways)
    let rekeyed = |r: &wgrelay::relay::Relay| r.stats().route.sessions_confirmed >= 2;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while Instant::now() < deadline {
        if rekeyed(&relay) {
            a.send_data(64, 3);
            b.send_data(64, 4);
        }
        pump_for(&mut [&mut a, &mut b], Duration::from_millis(50));
        if rekeyed(&relay) && a.delivered > da + 1 && b.delivered > db + 1 {
            ok = true;
            break;
        }
    }
    let _ = rekey_at;
    attack.drain();
    let stats = relay.stop();
    assert!(ok, "legit rekey during the attack: {stats}");
    // Cookies (64 bytes for 148) and nothing else.
    let ratio = attack.received as f64 / attack.sent as f64;
    assert!(
        ratio <= 0.45,
        "{} bytes to attack addresses for {} ({ratio:.3}): {stats}",
        attack.received,
        attack.sent
    );
    // Spoofed copies that reached B: within the key's budget.
    let inits_at_b = b.raw.iter().filter(|d| d.first() == Some(&1)).count() as f64;
    let budget = f64::from(UNPROVEN_COPIES_PER_KEY_BURST)
        + f64::from(UNPROVEN_COPIES_PER_KEY_PER_SECOND) * (attack_time + 11.0);
    assert!(
        inits_at_b <= budget + 2.0,
        "{inits_at_b} initiations reached B (budget {budget}): {stats}"
    );
    assert!(stats.route.cookie_replies > (N / 2) as u64, "{stats}");
    assert!(handshake_count(&a) && handshake_count(&b));
}

#[test]
fn open_mode_cold_pair_meets_while_fresh_sources_flood() {
    let (ia, ib) = (Identity::from_seed(91), Identity::from_seed(92));
    let cfg = Config {
        cookie: CookieMode::UnderLoad,
        ..config(&[])
    };
    let (relay, addr) = start(&cfg);
    let (mut a, mut b) = pair(
        &ia,
        &ib,
        localhost(0, 91, 1),
        localhost(0, 91, 2),
        addr,
        0x91,
    );
    const N: usize = 3000;
    let packets = junk(N);
    let mut attack = Attack::new(N, 92);
    // Both come up during the attack; WireGuard's own timers retry.
    attack_while(&mut attack, &packets, 3.0, addr, &mut a, &mut b, |a, b| {
        a.initiate();
        b.initiate();
    });
    let ok = pump_until(&mut [&mut a, &mut b], Duration::from_secs(20), |p| {
        p[0].established() && p[1].established()
    });
    attack.drain();
    let stats = relay.stop();
    assert!(ok, "cold pair in open mode: {stats}");
    assert!(
        attack.received <= attack.sent,
        "{} bytes to attack addresses for {}: {stats}",
        attack.received,
        attack.sent
    );
    assert!(stats.route.handovers >= 1, "met by hand-over: {stats}");
}
