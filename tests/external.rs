//! A relay that runs outside this process (the container image, run by
//! scripts/container-test.sh with `--network host`), driven by two boringtun peers on loopback:
//! a real handshake, data both ways, then a restart of the relay through the caller's command
//! (`docker stop` = SIGTERM, so the relay saves its state file; `docker start`), after which the
//! same session must carry on with no new handshake.
//!
//! Ignored by default; scripts/container-test.sh runs it as
//! `cargo test --test external -- --ignored --nocapture` with
//! - `WGRELAY_EXTERNAL_ADDR`: where the relay listens (127.0.0.1:PORT);
//! - `WGRELAY_EXTERNAL_START`: a shell command that starts the relay; `{KEY_A}` and `{KEY_B}`
//!   are replaced by the two peers' public keys (base64), for `--allow`;
//! - `WGRELAY_EXTERNAL_RESTART`: a shell command that stops the relay and starts it again with
//!   the same state file.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (see tests/external.rs)"))
}

fn shell(what: &str, command: &str) {
    let t = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .status()
        .unwrap_or_else(|e| panic!("{what}: sh: {e}"));
    assert!(status.success(), "{what} failed ({status}): {command}");
    println!("external: {what} took {:.2} s", t.elapsed().as_secs_f64());
}

/// Message types boringtun sent since `from` (the first byte of each datagram).
fn sent_types(p: &Peer, from: usize) -> Vec<u8> {
    p.sent[from..].iter().map(|d| d[0]).collect()
}

/// Sends `n` packets each way, paced, and waits for them; returns what each side received.
fn exchange(a: &mut Peer, b: &mut Peer, n: u64, stamp: u64) -> (u64, u64) {
    let (da, db) = (a.delivered, b.delivered);
    for i in 0..n {
        assert!(a.send_data(1000, stamp + i), "A has a session");
        assert!(b.send_data(1000, stamp + i), "B has a session");
        pump_for(&mut [&mut *a, &mut *b], Duration::from_millis(2));
    }
    pump_until(&mut [&mut *a, &mut *b], Duration::from_secs(3), |p| {
        p[0].delivered - da >= n && p[1].delivered - db >= n
    });
    (b.delivered - db, a.delivered - da)
}

#[test]
#[ignore = "needs a relay started by scripts/container-test.sh (WGRELAY_EXTERNAL_*)"]
fn external_relay_relays_and_resumes_after_a_restart() {
    let addr: SocketAddr = env("WGRELAY_EXTERNAL_ADDR")
        .parse()
        .expect("WGRELAY_EXTERNAL_ADDR is IP:PORT");
    let (ia, ib) = (Identity::from_seed(7101), Identity::from_seed(7102));
    let start = env("WGRELAY_EXTERNAL_START")
        .replace("{KEY_A}", &ia.public.to_base64())
        .replace("{KEY_B}", &ib.public.to_base64());
    shell("start", &start);

    let (mut a, mut b) = pair(
        &ia,
        &ib,
        localhost(77, 0, 1),
        localhost(77, 0, 2),
        addr,
        711,
    );
    // The relay may still be binding: initiate again every 500 ms (rather than wait for
    // boringtun's 5 s retry) until both peers have the session.
    let t = Instant::now();
    let mut up = false;
    while !up && t.elapsed() < Duration::from_secs(20) {
        up = handshake(&mut a, &mut b, Duration::from_millis(500));
    }
    assert!(up, "handshake through the relay at {addr} within 20 s");
    println!(
        "external: handshake through {addr} after {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // Let the responder's confirmation (its first transport message) reach the relay.
    pump_for(&mut [&mut a, &mut b], Duration::from_millis(200));
    let (to_b, to_a) = exchange(&mut a, &mut b, 200, 1);
    println!("external: data before the restart: {to_b}/200 A->B, {to_a}/200 B->A");
    assert_eq!((to_b, to_a), (200, 200), "every packet arrives both ways");

    a.keep_raw = true;
    b.keep_raw = true;
    let restart = env("WGRELAY_EXTERNAL_RESTART");
    shell("restart", &restart);

    // The restarted relay binds within a moment; until then packets are lost. Send one each
    // way every 100 ms until both arrive.
    let t = Instant::now();
    let (da, db) = (a.delivered, b.delivered);
    let mut stamp = 10_000;
    while (a.delivered == da || b.delivered == db) && t.elapsed() < Duration::from_secs(5) {
        a.send_data(100, stamp);
        b.send_data(100, stamp);
        stamp += 1;
        pump_for(&mut [&mut a, &mut b], Duration::from_millis(100));
    }
    assert!(
        a.delivered > da && b.delivered > db,
        "traffic flows again within 5 s of the restart"
    );
    println!(
        "external: traffic flows again {:.2} s after the restart command returned",
        t.elapsed().as_secs_f64()
    );
    let (to_b, to_a) = exchange(&mut a, &mut b, 200, 20_000);
    println!("external: data after the restart: {to_b}/200 A->B, {to_a}/200 B->A");
    assert_eq!((to_b, to_a), (200, 200), "every packet arrives both ways");
    let (ta, tb) = (sent_types(&a, 0), sent_types(&b, 0));
    assert!(
        ta.iter().chain(&tb).all(|&t| t == 4),
        "no handshake message after the restart (message types sent: A {ta:?}, B {tb:?})"
    );
    println!(
        "external: after the restart A sent {} and B {} datagrams, all transport: the session resumed",
        ta.len(),
        tb.len()
    );
}
