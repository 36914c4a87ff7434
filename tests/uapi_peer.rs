//! Port-per-peer mode with the responder's endpoint read from a real wireguard-go device.
//!
//! A wireguard-go device has a peer whose key is responder B's and whose endpoint is B's
//! boringtun socket on loopback (set with `wg set`). The relay's dedicated port for B has only
//! `uapi: <device>`: it learns where B is from the device, never from B (B only answers). A
//! (boringtun) initiates to B through that port; the handshake completes and data flows both
//! ways. Then B moves to another socket and `wg set` changes the device's endpoint: the relay
//! follows within its UAPI interval, and a new handshake reaches B at the new address.
//!
//! Needs root, wireguard-go, wg and /dev/net/tun; prints why and passes when any is missing.
//! The device is torn down (process killed, interface and socket removed) whatever happens;
//! every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::wgdev::{start_device, unavailable, wg};
use common::*;
use wgrelay::config::{Config, CookieMode, PortPeer};
use wgrelay::control::UAPI_INTERVAL;
use wgrelay::upstream::uapi::{socket_path, Client};

const LIMIT: Duration = Duration::from_secs(10);

fn skip(why: &str) {
    println!("uapi_peer: skipped: {why}");
}

/// Handshake responses A has received so far.
fn responses(p: &Peer) -> usize {
    p.raw.iter().filter(|d| d.first() == Some(&2)).count()
}

/// Initiations that reached B so far.
fn initiations(p: &Peer) -> usize {
    p.raw.iter().filter(|d| d.first() == Some(&1)).count()
}

/// A initiates again every `every` (as a real initiator retries) until a handshake response
/// beyond `before` arrives, at most `limit`. True when one did.
fn handshake_within(
    pa: &mut Peer,
    pb: &mut Peer,
    before: usize,
    every: Duration,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        pa.initiate();
        let round = every.min(deadline.saturating_duration_since(Instant::now()));
        if pump_until(&mut [&mut *pa, &mut *pb], round, |p| {
            responses(p[0]) > before && p[0].established()
        }) {
            return true;
        }
    }
    false
}

/// Data from A reaches B and data from B reaches A, on the current session.
fn data_both_ways(pa: &mut Peer, pb: &mut Peer, stamp: u64) -> Result<(), String> {
    let (a0, b0) = (pa.delivered, pb.delivered);
    if !pa.send_data(300, stamp) {
        return Err("A has no session to send on".into());
    }
    if !pump_until(&mut [&mut *pa, &mut *pb], LIMIT, |p| p[1].delivered > b0) {
        return Err("A's data did not reach B".into());
    }
    if !pb.send_data(300, stamp + 1) {
        return Err("B has no session to send on".into());
    }
    if !pump_until(&mut [&mut *pa, &mut *pb], LIMIT, |p| p[0].delivered > a0) {
        return Err("B's data did not reach A".into());
    }
    Ok(())
}

#[test]
fn port_peer_endpoint_follows_a_real_wireguard_go_device() {
    if let Some(why) = unavailable() {
        return skip(why);
    }

    let pid = std::process::id();
    let name = format!("wgpp{}", pid % 1_000_000);
    let dir = std::env::temp_dir().join(format!("wgrelay-uapi-peer-{pid}"));
    let dev = match start_device(&name, &dir) {
        Ok(d) => d,
        // A sandbox without working TUN: wireguard-go cannot create the interface.
        Err(e) if e.contains("exited") => return skip(&e),
        Err(e) => panic!("{e}"),
    };

    let a = Identity::from_seed(9500);
    let b = Identity::from_seed(9501);
    let b_sock = peer_socket(localhost(0, 44, 2));
    let b_addr = b_sock.local_addr().expect("addr");
    // The device only knows where B is: no private key (it never handshakes itself) and no
    // allowed IPs (nothing of the host's is routed to B).
    let b_key = b.public.to_string();
    wg(
        &[
            "set",
            &name,
            "peer",
            &b_key,
            "endpoint",
            &b_addr.to_string(),
        ],
        None,
    )
    .unwrap();
    let seen = Client::for_device(&name).unwrap().get().unwrap();
    assert_eq!(seen.peers.len(), 1, "{seen:?}");
    assert_eq!(seen.peers[0].endpoint, Some(b_addr), "{seen:?}");

    let cfg = Config {
        peers: vec![PortPeer {
            listen: "127.0.0.1:0".parse().expect("addr"),
            key: b.public,
            endpoint: None,
            uapi: Some(name.clone()),
            awg: None,
        }],
        cookie: CookieMode::Never,
        ..config(&[&a])
    };
    let (relay, _) = start(&cfg);
    // Listener 0 is the main one; B's dedicated port is listener 1.
    let b_port = relay.local_addrs()[1];
    let mut pa = Peer::new(&a, &b.public, localhost(0, 44, 1), b_port, 0x60);
    let mut pb = Peer::with_socket(&b, &a.public, b_sock, b_port, 0x70);
    pa.keep_raw = true;
    pb.keep_raw = true;

    // The control thread reads the device at start, then every UAPI_INTERVAL: an initiation
    // before the first read has nowhere to go (a counted drop), so A retries every 300 ms,
    // for at most 5 s.
    let t0 = Instant::now();
    assert!(
        handshake_within(
            &mut pa,
            &mut pb,
            0,
            Duration::from_millis(300),
            Duration::from_secs(5)
        ),
        "no handshake through B's port within 5 s: {}",
        relay.stats()
    );
    println!(
        "uapi_peer: first handshake after {} ms ({} initiation(s) reached B)",
        t0.elapsed().as_millis(),
        initiations(&pb)
    );
    data_both_ways(&mut pa, &mut pb, 1).unwrap_or_else(|e| panic!("{e}: {}", relay.stats()));

    // B moves to another socket; only the device is told.
    let new_sock = peer_socket(localhost(0, 44, 3));
    let new_addr = new_sock.local_addr().expect("addr");
    assert_ne!(new_addr, b_addr);
    let old_sock = std::mem::replace(&mut pb.sock, new_sock);
    pb.raw.clear();
    let before = responses(&pa);
    wg(
        &[
            "set",
            &name,
            "peer",
            &b_key,
            "endpoint",
            &new_addr.to_string(),
        ],
        None,
    )
    .unwrap();
    let t1 = Instant::now();
    // One UAPI interval plus a control tick and slack; A retries every 500 ms meanwhile.
    let follow = UAPI_INTERVAL + Duration::from_secs(3);
    assert!(
        handshake_within(&mut pa, &mut pb, before, Duration::from_millis(500), follow),
        "no new handshake with B at {new_addr} within {follow:?}: {}",
        relay.stats()
    );
    println!(
        "uapi_peer: relay followed the device to {new_addr}: new handshake after {} ms",
        t1.elapsed().as_millis()
    );
    assert!(
        initiations(&pb) >= 1,
        "the initiation reached B's new socket"
    );
    data_both_ways(&mut pa, &mut pb, 10).unwrap_or_else(|e| panic!("{e}: {}", relay.stats()));

    // Once the relay has followed, nothing goes to the old address any more: clear what the
    // retries sent there before the move was read, then handshake once more.
    drain(&old_sock, Duration::from_millis(50));
    let before = responses(&pa);
    pa.initiate();
    assert!(
        pump_until(&mut [&mut pa, &mut pb], LIMIT, |p| responses(p[0]) > before),
        "{}",
        relay.stats()
    );
    let stray = drain(&old_sock, Duration::from_millis(200));
    assert!(
        stray.is_empty(),
        "the old address got {} datagram(s) after the move",
        stray.len()
    );

    let stats = relay.stop();
    assert!(stats.route.sessions_confirmed >= 2, "{stats}");
    assert_eq!(stats.route.fanout_copies, 0, "{stats}");
    drop(dev);
    assert!(!socket_path(&name).unwrap().exists());
}
