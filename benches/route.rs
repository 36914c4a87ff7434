//! Micro-benchmarks of the routing core: the decision for a transport packet at 1k and 100k
//! sessions, and index table lookup and insert at 1k, 100k and 1M. Sessions are set up
//! through `route()` itself (open mode, synthetic handshake messages), so the tables hold what
//! a real relay would hold.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wgrelay::admit::TestEntropy;
use wgrelay::config::CookieMode;
use wgrelay::route::{Actions, Decision, Settings, State};
use wgrelay::table::{Endpoint, IndexEntry, IndexTable, ListenerId, Tick};
use wgrelay::wire::Index;

// (1M sessions set up through open mode's handshake path, 10k a second, trip its guards
// against handshake floods before they are all confirmed; the table benchmark below still
// goes to 1M)
const SIZES: [usize; 2] = [1_000, 100_000];
const TABLE_SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];

fn endpoint(i: usize, port: u16) -> Endpoint {
    let ip = Ipv4Addr::new(127, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    Endpoint::new(ListenerId(0), SocketAddr::new(IpAddr::V4(ip), port))
}

fn handshake(ty: u8, sender: u32, receiver: Option<u32>, tag: u64) -> Vec<u8> {
    let len = if ty == 1 { 148 } else { 92 };
    let mut m = vec![0u8; len];
    m[0] = ty;
    m[4..8].copy_from_slice(&sender.to_le_bytes());
    if let Some(r) = receiver {
        m[8..12].copy_from_slice(&r.to_le_bytes());
    }
    // A unique mac1, so the replay filter admits every message.
    m[len - 32..len - 24].copy_from_slice(&tag.to_le_bytes());
    m
}

fn transport(receiver: u32, counter: u64, len: usize) -> Vec<u8> {
    let mut m = vec![0u8; len];
    m[0] = 4;
    m[4..8].copy_from_slice(&receiver.to_le_bytes());
    m[8..16].copy_from_slice(&counter.to_le_bytes());
    m
}

/// A state with `n` confirmed sessions; returns it, the time to use, and one transport packet
/// (with its source) per direction of every session.
fn populate(n: usize) -> (State, Instant, Vec<(Endpoint, Vec<u8>)>) {
    let now = Instant::now();
    let settings = Settings {
        cookie: CookieMode::Never,
        broadcast_rate: None,
        ..Settings::default()
    };
    let mut state = State::new(&settings, Box::new(TestEntropy(7)), now);
    let mut out = Actions::new();
    let mut packets = Vec::with_capacity(2 * n);
    let mut now = now;
    // Open mode admits an unproven source once it retries as a WireGuard peer does (a second
    // initiation 0.9-16 s after its first), and remembers 65k recent sources in 8-way buckets:
    // so sessions are set up in chunks, every source of a chunk initiating once, then 1 s later
    // for real. A source whose first initiation was forgotten (its bucket overflowed) goes
    // again with the next chunk, with fresh indices.
    const CHUNK: usize = 10_000;
    let mut tags = 0u64;
    let mut tag = || {
        tags += 1;
        tags
    };
    let mut next_index = 1u32;
    let mut todo: Vec<usize> = Vec::new();
    let mut next = 0usize;
    for _round in 0..4 * (n / CHUNK + 1) {
        let fresh = (n - next).min(CHUNK.saturating_sub(todo.len()));
        todo.extend(next..next + fresh);
        next += fresh;
        if todo.is_empty() {
            break;
        }
        for &i in &todo {
            let (ea, eb) = (endpoint(i, 1000), endpoint(i, 2000));
            state.route(now, ea, &mut handshake(1, 0, None, tag()), &mut out);
            state.route(now, eb, &mut handshake(1, 0, None, tag()), &mut out);
            out.clear();
        }
        now += std::time::Duration::from_secs(1);
        // What the shards do once a second.
        state.expire(now);
        let mut again = Vec::new();
        for i in std::mem::take(&mut todo) {
            let (ea, eb) = (endpoint(i, 1000), endpoint(i, 2000));
            let (a, b_init, b) = (next_index, next_index + 1, next_index + 2);
            next_index += 4;
            let da = state.route(now, ea, &mut handshake(1, a, None, tag()), &mut out);
            // B's own initiation makes it a candidate: it receives A's parked initiation.
            let db = state.route(now, eb, &mut handshake(1, b_init, None, tag()), &mut out);
            let handed = out.extra.iter().any(|d| d.to == eb);
            out.clear();
            if da != Decision::Parked || db != Decision::Parked || !handed {
                again.push(i);
                continue;
            }
            let d = state.route(now, eb, &mut handshake(2, b, Some(a), tag()), &mut out);
            assert_eq!(d, Decision::Forward, "response {i}: {}", state.counters());
            let d = state.route(now, ea, &mut transport(b, 0, 32), &mut out);
            assert_eq!(d, Decision::Forward, "confirmation {i}");
            out.clear();
            packets.push((ea, transport(b, 1, 128)));
            packets.push((eb, transport(a, 1, 128)));
        }
        todo = again;
    }
    assert_eq!(
        packets.len(),
        2 * n,
        "sessions set up: {}",
        state.counters()
    );
    // Visit sessions in a scattered order, as traffic from many peers would.
    let len = packets.len();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for k in (1..len).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        packets.swap(k, (x % (k as u64 + 1)) as usize);
    }
    (state, now, packets)
}

fn route_transport(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    for n in SIZES {
        let (mut state, now, packets) = populate(n);
        let mut out = Actions::new();
        let mut buf = vec![0u8; 128];
        let mut k = 0usize;
        g.bench_function(format!("transport_sessions_{n}"), |b| {
            b.iter(|| {
                let (from, p) = &packets[k % packets.len()];
                k = k.wrapping_add(1);
                buf.copy_from_slice(p);
                black_box(state.route(now, *from, black_box(&mut buf), &mut out))
            })
        });
        g.bench_function(format!("unknown_receiver_sessions_{n}"), |b| {
            let mut junk = transport(0xffff_fff0, 1, 64);
            let from = endpoint(1, 9);
            b.iter(|| black_box(state.route(now, from, black_box(&mut junk), &mut out)))
        });
    }
    g.finish();
}

fn entry(i: u32, now: Tick) -> IndexEntry {
    IndexEntry {
        endpoint: endpoint(i as usize, 1000),
        source: endpoint(i as usize, 2000),
        peer: Some(Index(i ^ 1)),
        owner_key: None,
        peer_key: None,
        expires: now.after(std::time::Duration::from_secs(180)),
        max_counter: Some(0),
        responder: false,
        confirmed: true,
    }
}

fn table(c: &mut Criterion) {
    let mut g = c.benchmark_group("index_table");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    let now = Tick(1);
    for n in TABLE_SIZES {
        let mut t = IndexTable::new();
        // Indices are random per peer: spread them.
        let keys: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
        for k in &keys {
            t.insert(Index(*k), entry(*k, now));
        }
        let mut k = 0usize;
        g.bench_function(format!("lookup_{n}"), |b| {
            b.iter(|| {
                k = k.wrapping_add(7919);
                black_box(t.lookup(Index(keys[k % n]), now).map(|e| e.endpoint))
            })
        });
        let mut fresh = 0x8000_0000u32;
        g.bench_function(format!("insert_remove_{n}"), |b| {
            b.iter_batched(
                || {
                    fresh = fresh.wrapping_add(0x9e37_79b9);
                    fresh
                },
                |key| {
                    t.insert(Index(key), entry(key, now));
                    black_box(t.remove(Index(key)))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, route_transport, table);
criterion_main!(benches);
