//! wgrelay-null: the cheapest forwarder the load generator can be pointed at, as a baseline.
//!
//! One thread, one socket, on wgrelay's own I/O layer (`wgrelay::io`, the backend of
//! `--backend`): receive a batch, look each source address up in a pair table, send every
//! datagram to its partner, without looking inside (no parsing). With `--gro` (UDP GRO and GSO
//! on) it takes coalesced runs in and, since the backend keeps a run whole and sends adjacent
//! datagrams to one destination as one UDP_SEGMENT message, sends each run out as ONE send. So
//! the relay and this baseline differ only by the relay's routing.
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
use std::net::{SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use wgrelay::io::{self, Backend, MmsgBackend, Offload, RecvBatch, Transmit, UringBackend};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Mmsg,
    Uring,
}

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
    /// wgrelay's datagram I/O backend to run on.
    #[arg(long, value_enum, default_value = "mmsg")]
    backend: BackendArg,
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
    // wgrelay's own socket set-up (its buffer sizes), then its backend
    let sock = match io::bind_udp(SocketAddr::V4(args.listen), &io::SocketOptions::default()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wgrelay-null: bind {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let offload = if args.gro { Offload::ON } else { Offload::OFF };
    let backend: Box<dyn Backend> = match args.backend {
        BackendArg::Mmsg => Box::new(MmsgBackend::with_offload(vec![sock], offload)),
        BackendArg::Uring => match UringBackend::with_offload(vec![sock], offload) {
            Ok(b) => Box::new(b),
            Err(e) => {
                eprintln!("wgrelay-null: io_uring: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    eprintln!(
        "wgrelay-null listening on {} (gro={}, pairing={:?}, backend {})",
        args.listen,
        args.gro,
        args.pairing,
        backend.name()
    );
    run(backend, &args)
}

fn run(mut backend: Box<dyn Backend>, args: &Args) -> ExitCode {
    let mut pairs: Map<SocketAddrV4> = Map::default();
    let mut hellos: HashMap<u32, [Option<SocketAddrV4>; 2]> = HashMap::new();
    let mut first: Option<SocketAddrV4> = None;
    let mut rx = RecvBatch::new();
    // (first datagram, last datagram, partner): adjacent datagrams of one message
    let mut items: Vec<(usize, usize, SocketAddrV4)> = Vec::new();
    // the send list's storage, kept from batch to batch (empty between them)
    let mut spare: Vec<Transmit<'static>> = Vec::new();
    let (mut received, mut forwarded, mut dropped, mut failed) = (0u64, 0u64, 0u64, 0u64);

    while !STOP.load(Ordering::Relaxed) {
        // Wake up every 100 ms to notice a signal that raced the wait.
        if let Err(e) = backend.recv(&mut rx, Duration::from_millis(100)) {
            eprintln!("wgrelay-null: receive: {e}");
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        items.clear();
        for m in 0..rx.messages() {
            let (_, addr, datagrams) = rx.message(m);
            let count = datagrams.len() as u64;
            received += count;
            let from = match addr {
                SocketAddr::V4(a) => a,
                SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                    Some(ip) => SocketAddrV4::new(ip, a.port()),
                    None => {
                        dropped += count;
                        continue;
                    }
                },
            };
            if let Some(&to) = pairs.get(&key(from)) {
                // the whole message (a GRO run) goes on as one run
                if datagrams.clone().all(|i| !rx.truncated(i)) {
                    items.push((datagrams.start, datagrams.end - 1, to));
                } else {
                    items.extend(datagrams.map(|i| (i, i, to)));
                }
                continue;
            }
            for i in datagrams {
                // Control path: unknown source.
                let data = rx.datagram(i);
                if data.len() == 13 && &data[..8] == HELLO_MAGIC {
                    let session = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
                    let side = usize::from(data[12] & 1);
                    let e = hellos.entry(session).or_default();
                    e[side] = Some(from);
                    if let [Some(a), Some(b)] = *e {
                        pairs.insert(key(a), b);
                        pairs.insert(key(b), a);
                        hellos.remove(&session);
                    }
                    continue;
                } else if args.pairing == Pairing::FirstSeen {
                    match first.take() {
                        None => first = Some(from),
                        Some(a) if a == from => first = Some(a),
                        Some(a) => {
                            pairs.insert(key(a), from);
                            pairs.insert(key(from), a);
                            items.push((i, i, a));
                            continue;
                        }
                    }
                }
                dropped += 1;
            }
        }
        if items.is_empty() {
            continue;
        }
        let mut transmits = io::recycled(std::mem::take(&mut spare));
        transmits.extend(items.iter().map(|&(i, last, to)| Transmit {
            listener: 0,
            destination: SocketAddr::V4(to),
            contents: rx.adjacent(i, last),
            segment_size: (last > i).then(|| rx.datagram(i).len()),
            source: None,
        }));
        let sent = backend.send(&transmits);
        spare = io::recycled(transmits);
        forwarded += sent.sent;
        failed += sent.failed;
    }
    eprintln!(
        "final stats: received={received} forwarded={forwarded} dropped={dropped} send_failed={failed} pairs={}",
        pairs.len() / 2
    );
    ExitCode::SUCCESS
}
