//! A fixed amount of fast-path work, for instruction counts under
//! `valgrind --tool=cachegrind` (repeatable on a shared machine, unlike timings):
//!
//! ```text
//! cargo build --release --example fastpath_cost
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/fastpath_cost 10000 0
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/fastpath_cost 10000 100
//! ```
//!
//! The first argument is the number of sessions, the second the number of passes; each pass
//! routes one transport packet per session through `SessionTable::route`. The difference of the
//! two runs' instruction counts, divided by sessions × passes, is the cost per packet.
//!
//! A third argument `hot` routes every packet from one reused buffer (its index rewritten):
//! with `--cache-sim=yes` the cache misses per packet are then the table's alone, not those of
//! the benchmark's own packet buffers (a relay's packets arrive in a few hot receive buffers).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use wgrelay::route::{Fast, Session, SessionTable};
use wgrelay::table::{Endpoint, IndexEntry, ListenerId, Tick};
use wgrelay::wire::Index;

fn endpoint(i: usize, port: u16) -> Endpoint {
    let ip = Ipv4Addr::new(127, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    Endpoint::new(ListenerId(0), SocketAddr::new(IpAddr::V4(ip), port))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let passes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let now = Tick::EPOCH;
    let mut table = SessionTable::new();
    let mut packets = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let entry = IndexEntry {
            endpoint: endpoint(i, 1000),
            source: endpoint(i, 2000),
            peer: Some(Index(u32::MAX - i as u32)),
            owner_key: None,
            peer_key: None,
            expires: now.after(std::time::Duration::from_secs(180)),
            max_counter: Some(0),
            responder: false,
            confirmed: true,
        };
        if let Some(s) = Session::of(&entry, now) {
            table.apply((Index(i as u32), Some(s)));
        }
        let mut m = vec![0u8; 128];
        m[0] = 4;
        m[4..8].copy_from_slice(&(i as u32).to_le_bytes());
        packets.push((endpoint(i, 2000), m));
    }
    let mut forwarded = 0u64;
    if args.next().as_deref() == Some("hot") {
        let mut m = [0u8; 128];
        m[0] = 4;
        for pass in 0..passes {
            // the source computed, not read from a list (which would add its own misses)
            for i in 0..sessions {
                m[4..8].copy_from_slice(&(i as u32).to_le_bytes());
                m[8..16].copy_from_slice(&(pass + 1).to_le_bytes());
                if let Fast::Forward(_) = table.route(now, endpoint(i, 2000), black_box(&m[..])) {
                    forwarded += 1;
                }
            }
        }
        println!(
            "{forwarded} packets forwarded; a session entry is {} bytes (with its index {}), an \
             endpoint {}",
            std::mem::size_of::<Session>(),
            std::mem::size_of::<(Index, Session)>(),
            std::mem::size_of::<Endpoint>()
        );
        return;
    }
    for pass in 0..passes {
        for (from, m) in &mut packets {
            m[8..16].copy_from_slice(&(pass + 1).to_le_bytes());
            if let Fast::Forward(_) = table.route(now, *from, black_box(m)) {
                forwarded += 1;
            }
        }
    }
    println!("{forwarded} packets forwarded");
}
