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
//!
//! `fastpath_cost N 0 memory` instead sets up N sessions through the shared `State` (open
//! mode, synthetic handshakes, as `benches/route.rs` does), installs the owner's copies in a
//! `SessionTable` the way a shard does, and prints where the bytes per session go: each
//! table's entries and hash-table slack computed from `size_of` and the load rule, and the
//! process's resident-memory growth.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use wgrelay::admit::TestEntropy;
use wgrelay::config::CookieMode;
use wgrelay::route::{Fast, Session, SessionTable, Settings, State};
use wgrelay::table::{Endpoint, EndpointInfo, IndexEntry, ListenerId, Tick};
use wgrelay::wire::Index;

fn endpoint(i: usize, port: u16) -> Endpoint {
    let ip = Ipv4Addr::new(127, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    Endpoint::new(ListenerId(0), SocketAddr::new(IpAddr::V4(ip), port))
}

fn main() {
    let mut args = std::env::args().skip(1);
    let sessions: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let passes: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let mode = args.next();
    if mode.as_deref() == Some("memory") {
        memory(sessions);
        return;
    }
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
    if mode.as_deref() == Some("hot") {
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

/// Resident bytes of this process (`/proc/self/statm`, in pages of 4 KiB).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split(' ').nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Bytes of a hashbrown table holding `len` entries of `entry` bytes, grown by inserts only:
/// the smallest power of two of buckets whose 7/8 holds them, one control byte each.
fn hashed(len: usize, entry: usize) -> usize {
    let buckets = if len < 4 {
        4
    } else if len < 8 {
        8
    } else {
        (len * 8).div_ceil(7).next_power_of_two()
    };
    buckets * (entry + 1)
}

fn memory(n: usize) {
    let settings = Settings {
        cookie: CookieMode::Never,
        ..Settings::default()
    };
    let now = std::time::Instant::now();
    let wall = std::time::SystemTime::now();
    let listen: SocketAddr = ([127, 0, 0, 1], 51820).into();
    // the sessions as a state file (`route::persist`): confirmed pairs, two entries each, the
    // way a restarted relay gets them (a handshake-built state also holds the parked
    // initiations, fan-out candidates and deliveries, which expire within seconds)
    let mut text = format!(
        "wgrelay-state 1 {}\n",
        wall.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );
    for i in 0..n {
        let (ea, eb) = (endpoint(i, 1000).addr(), endpoint(i, 2000).addr());
        let (a, b) = (2 * i as u32 + 1, 2 * i as u32 + 2);
        text += &format!("s {a} {listen}|{ea} {listen}|{eb} {b} - - 170000 7 i\n");
        text += &format!("s {b} {listen}|{eb} {listen}|{ea} {a} - - 170000 7 r\n");
    }
    let before = rss();
    let mut state = State::new(&settings, Box::new(TestEntropy(7)), now);
    let fixed = rss();
    let r = state.restore(&text, now, wall, &[listen]);
    drop(text);
    if r.sessions != n {
        eprintln!("{n} sessions asked, {r:?}");
        std::process::exit(1);
    }
    let mut table = SessionTable::new();
    let shared = rss();
    // what the owner shards install (all of it, as if one shard owned every index)
    let t = state.tick(now);
    for (i, e) in state.indices().iter() {
        table.apply((*i, Session::of(e, t)));
    }
    let with_table = rss();
    let indices = state.indices().len();
    let endpoints = state.endpoints().len();
    let index_entry = std::mem::size_of::<(Index, IndexEntry)>();
    let endpoint_entry = std::mem::size_of::<(Endpoint, EndpointInfo)>();
    let per = |bytes: usize| bytes as f64 / n as f64;
    println!(
        "{n} sessions: {indices} index entries, {endpoints} endpoints, {} fast-path sessions",
        table.len()
    );
    println!(
        "shared IndexTable:    {index_entry} B an entry, {:.0} B a session with slack",
        per(hashed(indices, index_entry))
    );
    println!(
        "shared EndpointTable: {endpoint_entry} B an entry, {:.0} B a session with slack",
        per(hashed(endpoints, endpoint_entry))
    );
    println!(
        "shard SessionTable:   {:.0} B a session (entries, slack, control bytes)",
        per(table.heap_bytes())
    );
    println!(
        "RSS growth: shared state {:.0} B a session ({} B fixed before any), shard table {:.0} B \
         a session",
        (shared - fixed) as f64 / n as f64,
        fixed - before,
        (with_table - shared) as f64 / n as f64
    );
}
