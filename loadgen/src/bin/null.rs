//! wgrelay-null: the cheapest forwarder the load generator can be pointed at, as a baseline.
//!
//! One thread, one socket: recvmmsg a batch, look each source address up in a pair table,
//! sendmmsg every datagram to its partner, without looking inside (no parsing). With `--gro`
//! it takes UDP_GRO-coalesced runs in and sends each run out as ONE UDP_SEGMENT send.
//!
//! How it learns the pairs (`--pairing`):
//! - `hello` (default): a 13-byte control datagram `ff ff ff ff 'N' 'U' 'L' 'L' session(le u32)
//!   side(u8)` from each peer; when both sides of a session said hello they are paired. The
//!   load generator sends them (with `--null`) right before a session's handshake, so pairing
//!   is exact whatever the ordering. Type 0xffffffff is no WireGuard message.
//! - `first-seen`: unknown sources are paired in the order they appear (1st with 2nd, 3rd
//!   with 4th, ...). The first packet of the first peer of each pair is dropped. Fragile under
//!   reordering; kept for tools that cannot send hellos.
//!
//! Packets from unpaired sources are dropped. SIGTERM/SIGINT print
//! `final stats: received=.. forwarded=.. dropped=..` (datagrams, GRO runs expanded) on stderr.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, ValueEnum};
use wgrelay_loadgen::net::{self, Forwarder, RecvBatch, SockOpts};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pairing {
    Hello,
    FirstSeen,
}

/// The null relay: forwards each datagram to its source's partner, nothing else.
#[derive(Parser, Debug)]
#[command(name = "wgrelay-null", version)]
struct Args {
    /// UDP address to listen on (IPv4).
    #[arg(long, default_value = "127.0.0.1:51821")]
    listen: SocketAddrV4,
    /// Take UDP_GRO runs in and send each out as one UDP_SEGMENT send.
    #[arg(long)]
    gro: bool,
    #[arg(long, value_enum, default_value = "hello")]
    pairing: Pairing,
    /// Socket buffers in bytes (the same as wgrelay's 4 MiB).
    #[arg(long, default_value_t = 4 << 20)]
    buffer: usize,
}

/// Multiply-shift hash of an address packed into a u64: one multiply per lookup.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type Map<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;

fn key(a: SocketAddrV4) -> u64 {
    (u64::from(u32::from(*a.ip())) << 16) | u64::from(a.port())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn install_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic is
        // async-signal-safe; no SA_RESTART, so a blocked recvmmsg returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

const HELLO_MAGIC: &[u8; 8] = b"\xff\xff\xff\xffNULL";

fn main() -> ExitCode {
    let args = Args::parse();
    install_signals();
    let sock = match net::bind(
        args.listen,
        SockOpts {
            pktinfo: false,
            gro: args.gro,
            loopback_only: false,
            buffer: args.buffer,
        },
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wgrelay-null: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Wake up every 100 ms to notice a signal that raced the blocking receive.
    if let Err(e) = sock.set_read_timeout(Some(std::time::Duration::from_millis(100))) {
        eprintln!("wgrelay-null: SO_RCVTIMEO: {e}");
        return ExitCode::FAILURE;
    }
    let fd = sock.as_raw_fd();
    eprintln!(
        "wgrelay-null listening on {} (gro={}, pairing={:?})",
        args.listen, args.gro, args.pairing
    );

    let mut pairs: Map<SocketAddrV4> = Map::default();
    let mut hellos: HashMap<u32, [Option<SocketAddrV4>; 2]> = HashMap::new();
    let mut first: Option<SocketAddrV4> = None;
    let mut rx = RecvBatch::new(if args.gro {
        net::SLOT_GRO
    } else {
        net::SLOT_PLAIN
    });
    let mut fwd = Forwarder::new();
    let mut items: Vec<(usize, SocketAddrV4, u16)> = Vec::with_capacity(net::BATCH);
    let (mut received, mut forwarded, mut dropped, mut failed) = (0u64, 0u64, 0u64, 0u64);

    while !STOP.load(Ordering::Relaxed) {
        let n = match rx.recv(fd, true) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("wgrelay-null: receive: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        items.clear();
        for i in 0..n {
            let m = *rx.meta(i);
            let count = m.len.div_ceil(m.stride.max(1)).max(1) as u64;
            received += count;
            if let Some(&to) = pairs.get(&key(m.from)) {
                let seg = if m.stride < m.len {
                    u16::try_from(m.stride).unwrap_or(0)
                } else {
                    0
                };
                items.push((i, to, seg));
                continue;
            }
            // Control path: unknown source.
            let data = rx.data(i);
            if data.len() == 13 && &data[..8] == HELLO_MAGIC {
                let session = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
                let side = usize::from(data[12] & 1);
                let e = hellos.entry(session).or_default();
                e[side] = Some(m.from);
                if let [Some(a), Some(b)] = *e {
                    pairs.insert(key(a), b);
                    pairs.insert(key(b), a);
                    hellos.remove(&session);
                }
                continue;
            } else if args.pairing == Pairing::FirstSeen {
                match first.take() {
                    None => first = Some(m.from),
                    Some(a) if a == m.from => first = Some(a),
                    Some(a) => {
                        pairs.insert(key(a), m.from);
                        pairs.insert(key(m.from), a);
                        items.push((i, a, 0));
                        continue;
                    }
                }
            }
            dropped += count;
        }
        let sent = fwd.send(fd, &mut rx, &items);
        failed += sent.failed;
        for &(i, _, _) in &items {
            let m = rx.meta(i);
            forwarded += m.len.div_ceil(m.stride.max(1)).max(1) as u64;
        }
    }
    eprintln!(
        "final stats: received={received} forwarded={forwarded} dropped={dropped} send_failed={failed} pairs={}",
        pairs.len() / 2
    );
    ExitCode::SUCCESS
}
