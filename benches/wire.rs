//! Micro-benchmarks of the wire layer: checked views, mac1 verification, mac2, cookie replies.
//! Messages come from boringtun (an independent WireGuard implementation).

use std::hint::black_box;
use std::time::Instant;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use wgrelay::admit::{CookieChecker, KeyDirectory, TestEntropy};
use wgrelay::key::PublicKey;
use wgrelay::wire::mac::{self, CookieKey, Mac1Key};
use wgrelay::wire::{self, InitiationPacket, TransportPacket};

fn messages() -> (Vec<u8>, Vec<u8>, [u8; 32]) {
    let (sa, sb) = ([0x11u8; 32], [0x22u8; 32]);
    let pb = XPublic::from(&StaticSecret::from(sb));
    let pa = XPublic::from(&StaticSecret::from(sa));
    let mut a = Tunn::new(StaticSecret::from(sa), pb, None, None, 1, None);
    let mut b = Tunn::new(StaticSecret::from(sb), pa, None, None, 2, None);
    let mut buf = [0u8; 2048];
    let init = match a.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => unreachable!("initiation"),
    };
    let mut out = [0u8; 2048];
    let resp = match b.decapsulate(None, &init, &mut out) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => unreachable!("response"),
    };
    let mut out2 = [0u8; 2048];
    let keepalive = match a.decapsulate(None, &resp, &mut out2) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => unreachable!("keepalive"),
    };
    (init, keepalive, *pb.as_bytes())
}

fn bench(c: &mut Criterion) {
    let (init, transport, responder) = messages();
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_transport", |b| {
        b.iter(|| {
            let p = TransportPacket::new_checked(black_box(&transport[..])).ok();
            black_box(p.map(|p| (p.receiver(), p.counter())))
        })
    });
    g.bench_function("parse_initiation", |b| {
        b.iter(|| {
            let t = wire::message_type(black_box(&init[..])).ok();
            let p = InitiationPacket::new_checked(black_box(&init[..])).ok();
            black_box((t, p.map(|p| (p.sender(), p.mac1()))))
        })
    });
    let key = Mac1Key::new(&responder);
    g.bench_function("mac1_verify", |b| {
        b.iter(|| black_box(mac::check_mac1(&key, black_box(&init))))
    });
    // the lane search (`Mac1Bank`) against the one-key-at-a-time reference, same keys, same run
    for keys in [1usize, 100, 1000, 20_000] {
        let mut allow: Vec<PublicKey> = (1..keys as u32)
            .map(|i| {
                let mut k = [7u8; 32];
                k[..4].copy_from_slice(&i.to_le_bytes());
                PublicKey(k)
            })
            .collect();
        allow.push(PublicKey(responder));
        let dir = KeyDirectory::new(&allow, &[]);
        g.bench_function(format!("mac1_match_worst_case_keys_{keys}"), |b| {
            b.iter(|| black_box(dir.match_mac1(black_box(&init))))
        });
        let reference: Vec<Mac1Key> = allow.iter().map(|k| Mac1Key::new(&k.0)).collect();
        g.bench_function(format!("mac1_match_reference_keys_{keys}"), |b| {
            b.iter(|| {
                black_box(
                    reference
                        .iter()
                        .position(|k| mac::check_mac1(k, black_box(&init))),
                )
            })
        });
    }
    let mut checker = CookieChecker::new();
    let mut entropy = TestEntropy(1);
    let now = Instant::now();
    let src = "127.0.0.1:5000".parse().expect("addr");
    let ck = CookieKey::new(&responder);
    let sender = wire::Index(1);
    g.bench_function("cookie_reply", |b| {
        b.iter(|| {
            black_box(checker.create_reply(black_box(&init), sender, &ck, src, now, &mut entropy))
        })
    });
    g.bench_function("mac2_verify", |b| {
        b.iter(|| black_box(checker.check_mac2(black_box(&init), src, now, &mut entropy)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
