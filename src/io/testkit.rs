//! Test support shared by the backends' tests: helpers, and one conformance suite that every
//! [`Backend`] runs ([`conformance_tests!`]), so the mmsg and uring backends are held to the same
//! behaviour by the same code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::io::socket::{bind_group, bind_udp, SocketOptions};
use crate::io::{
    Backend, Capabilities, Drops, Offload, RecvBatch, RecvMeta, SendStats, Transmit, BATCH_SIZE,
    MAX_DATAGRAM_LEN,
};

/// What the conformance suite needs from a backend beyond [`Backend`].
pub(in crate::io) trait TestBackend: Backend + Sized {
    /// Why the backend cannot run on this host (the test is then skipped), or `None`.
    fn unavailable() -> Option<String>;
    /// Wraps `sockets`; socket `i` becomes listener `i`.
    fn from_sockets(sockets: Vec<UdpSocket>) -> Self;
    /// Wraps `sockets` with the offloads `offload` asks for (where the kernel has them).
    fn with_offload(sockets: Vec<UdpSocket>, offload: Offload) -> Self;
    /// The sockets, indexed by listener.
    fn sockets(&self) -> &[UdpSocket];
    /// Datagrams the kernel reported dropped (SO_RXQ_OVFL).
    fn kernel_drops(&self) -> u64;
    /// Coalesced runs (more than one datagram) received with GRO so far.
    fn gro_runs(&self) -> usize;
    /// The backend's [`GsoHook`].
    fn gso_hook(&mut self) -> &mut GsoHook;
}

/// True (after saying why) when `B` cannot run here.
pub(in crate::io) fn skip<B: TestBackend>() -> bool {
    match B::unavailable() {
        Some(why) => {
            println!("skipping: backend unavailable: {why}");
            true
        }
        None => false,
    }
}

/// Sockets bound to `addrs` with the relay's default options.
pub(in crate::io) fn sockets(addrs: &[&str]) -> Vec<UdpSocket> {
    addrs
        .iter()
        .map(|a| {
            // A group of one: a port of its own (see `bind_group`), with the relay's options.
            let mut g = bind_group(addr(a), 1, &SocketOptions::default()).expect("bind");
            g.remove(0)
        })
        .collect()
}

/// A backend with one listener per address.
pub(in crate::io) fn bind<B: TestBackend>(addrs: &[&str]) -> B {
    B::from_sockets(sockets(addrs))
}

/// The local address of `b`'s listener `listener`.
pub(in crate::io) fn local<B: TestBackend>(b: &B, listener: usize) -> SocketAddr {
    b.sockets()[listener].local_addr().expect("local_addr")
}

/// Upper bound on any wait in these tests.
pub(in crate::io) const DEADLINE: Duration = Duration::from_secs(5);

pub(in crate::io) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("address literal")
}

pub(in crate::io) fn have_ipv6() -> bool {
    match UdpSocket::bind("[::1]:0") {
        Ok(_) => true,
        Err(e) => {
            println!("skipping: no IPv6 on this host ({e})");
            false
        }
    }
}

/// Where a sender of `from`'s family reaches a receiver bound to `to` (a wildcard bind is
/// reached on the sender's loopback address).
pub(in crate::io) fn reachable(to: SocketAddr, from: SocketAddr) -> SocketAddr {
    if !to.ip().is_unspecified() {
        return to;
    }
    match from {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, to.port())),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, to.port())),
    }
}

/// The source a receiver bound to `to` sees for a sender bound to `from`.
pub(in crate::io) fn seen_as(from: SocketAddr, to: SocketAddr) -> SocketAddr {
    match (from, to) {
        (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        _ => from,
    }
}

/// Receives until `want` datagrams arrived or the deadline passed (bounded both ways).
pub(in crate::io) fn recv_n<B: Backend>(b: &mut B, want: usize) -> Vec<(RecvMeta, Vec<u8>)> {
    let mut batch = RecvBatch::new();
    let mut out = Vec::new();
    let start = Instant::now();
    for _ in 0..10_000 {
        if out.len() >= want || start.elapsed() > DEADLINE {
            break;
        }
        let n = b
            .recv(&mut batch, Duration::from_millis(100))
            .expect("recv");
        assert_eq!(n, batch.len());
        out.extend(batch.iter().map(|(m, d)| (m, d.to_vec())));
    }
    out
}

/// One transmit per payload, all through listener 0 to `destination`.
pub(in crate::io) fn transmits(destination: SocketAddr, payloads: &[Vec<u8>]) -> Vec<Transmit<'_>> {
    payloads
        .iter()
        .map(|p| Transmit {
            listener: 0,
            destination,
            contents: p,
            segment_size: None,
            source: None,
        })
        .collect()
}

/// quinn-udp style round trip: a backend on `tx_addr` sends `payloads` to one on `rx_addr`;
/// all arrive, in order, with the right contents and source address.
pub(in crate::io) fn send_recv<B: TestBackend>(tx_addr: &str, rx_addr: &str, payloads: &[Vec<u8>]) {
    let mut tx = bind::<B>(&[tx_addr]);
    let mut rx = bind::<B>(&[rx_addr]);
    let (src, dst) = (local(&tx, 0), local(&rx, 0));
    let t = transmits(reachable(dst, src), payloads);
    let stats = tx.send(&t);
    assert_eq!(
        stats,
        SendStats {
            sent: payloads.len() as u64,
            failed: 0
        }
    );

    let got = recv_n(&mut rx, payloads.len());
    assert_eq!(got.len(), payloads.len(), "datagrams lost");
    for (i, ((meta, bytes), want)) in got.iter().zip(payloads).enumerate() {
        assert_eq!(bytes, want, "datagram {i} contents");
        assert_eq!(meta.len, want.len());
        assert!(!meta.truncated);
        assert_eq!(meta.listener, 0);
        assert_eq!(meta.addr, seen_as(src, dst), "datagram {i} source");
    }
}

/// Distinct, index-bearing payloads of varied sizes.
pub(in crate::io) fn payloads(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let mut p = (i as u32).to_be_bytes().to_vec();
            p.resize(4 + (i * 37) % 1400, i as u8);
            p
        })
        .collect()
}

/// `count` datagrams of `len` bytes, each starting with its index, then `tail` (if any).
pub(in crate::io) fn run_payloads(count: usize, len: usize, tail: Option<usize>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut p = (i as u32).to_be_bytes().to_vec();
            p.resize(len, i as u8);
            p
        })
        .collect();
    if let Some(t) = tail {
        let mut p = (count as u32).to_be_bytes().to_vec();
        p.resize(t, 0xEE);
        out.push(p);
    }
    out
}

/// Reads up to `want` datagrams from a plain socket (bounded by a 5 s read timeout).
pub(in crate::io) fn plain_recv(sock: &UdpSocket, want: usize) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    while out.len() < want {
        match sock.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(_) => break,
        }
    }
    out
}

/// A non-blocking eventfd, as a shard's waker.
pub(in crate::io) struct EventFd(OwnedFd);

impl EventFd {
    pub(in crate::io) fn new() -> EventFd {
        // SAFETY: eventfd takes integer arguments only.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor that nothing else owns.
        EventFd(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(in crate::io) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Adds 1 to the counter (what another shard does to wake this one).
    pub(in crate::io) fn wake(&self) {
        wake_fd(self.fd());
    }

    /// Reads the counter back to 0 (what the woken shard does); false if it was 0 already.
    pub(in crate::io) fn drain(&self) -> bool {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from an open, non-blocking eventfd.
        let rc = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        rc == 8
    }
}

/// Writes 1 to the eventfd `fd` (usable from another thread, which only gets the number).
pub(in crate::io) fn wake_fd(fd: RawFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd the caller keeps open.
    let rc = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    assert_eq!(rc, 8, "eventfd write: {}", std::io::Error::last_os_error());
}

/// The conformance suite as `#[test]` functions for backend type `$backend`, each skipped where
/// [`TestBackend::unavailable`] says so. Invoke inside a backend's test module.
macro_rules! conformance_tests {
    ($backend:ty) => {
        $crate::io::testkit::conformance_tests!(@each $backend; basic_v4, larger_than_batch_arrives_in_order, ipv6_loopback, dual_stack_receives_v4_mapped, dual_stack_replies_reach_v4_peer, two_listeners_tag_and_reply, busy_listener_does_not_starve_another, timeout_returns_zero, backend_without_sockets_just_times_out, oversized_datagram_is_truncated, failed_destination_is_counted_and_others_still_go, unknown_listener_is_counted_failed, kernel_drops_are_reported, waker_ends_a_long_wait, drained_waker_does_not_spin, waker_written_between_calls_is_not_lost, datagrams_and_waker_together, replaced_waker_is_ignored, waker_without_sockets);
    };
    (@each $backend:ty; $($name:ident),*) => {
        $crate::io::testkit::conformance_tests!(@each_in conformance $backend; $($name),*);
    };
    (@each_in $suite:ident $backend:ty; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                if !$crate::io::testkit::skip::<$backend>() {
                    $crate::io::testkit::$suite::$name::<$backend>();
                }
            }
        )*
    };
}
pub(in crate::io) use conformance_tests;

/// The tests every backend passes.
pub(in crate::io) mod conformance {
    use super::*;

    pub(in crate::io) fn basic_v4<B: TestBackend>() {
        let mut p = payloads(5);
        p.push(Vec::new()); // empty datagrams are legal UDP
        p.push(vec![0xAB; MAX_DATAGRAM_LEN]); // exactly fits: not truncated
        send_recv::<B>("127.0.0.1:0", "127.0.0.1:0", &p);
    }

    pub(in crate::io) fn larger_than_batch_arrives_in_order<B: TestBackend>() {
        send_recv::<B>("127.0.0.1:0", "127.0.0.1:0", &payloads(200));
    }

    pub(in crate::io) fn ipv6_loopback<B: TestBackend>() {
        if have_ipv6() {
            send_recv::<B>("[::1]:0", "[::1]:0", &payloads(100));
        }
    }

    pub(in crate::io) fn dual_stack_receives_v4_mapped<B: TestBackend>() {
        if !have_ipv6() {
            return;
        }
        send_recv::<B>("127.0.0.1:0", "[::]:0", &payloads(10));
    }

    pub(in crate::io) fn dual_stack_replies_reach_v4_peer<B: TestBackend>() {
        if !have_ipv6() {
            return;
        }
        let mut v4 = bind::<B>(&["127.0.0.1:0"]);
        let mut ds = bind::<B>(&["[::]:0"]);
        let ds_port = local(&ds, 0).port();
        let v4_addr = local(&v4, 0);
        let hello = Transmit {
            listener: 0,
            destination: SocketAddr::from((Ipv4Addr::LOCALHOST, ds_port)),
            contents: b"hello",
            segment_size: None,
            source: None,
        };
        assert_eq!(v4.send(&[hello]).sent, 1);
        let got = recv_n(&mut ds, 1);
        assert_eq!(got.len(), 1);
        let mapped = got[0].0.addr;
        assert_eq!(mapped, seen_as(v4_addr, local(&ds, 0)));

        // Reply both to the mapped address as received and to the plain IPv4 address.
        let replies = [
            Transmit {
                listener: 0,
                destination: mapped,
                contents: b"reply-mapped",
                segment_size: None,
                source: None,
            },
            Transmit {
                listener: 0,
                destination: v4_addr,
                contents: b"reply-plain",
                segment_size: None,
                source: None,
            },
        ];
        assert_eq!(ds.send(&replies), SendStats { sent: 2, failed: 0 });
        let got = recv_n(&mut v4, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, b"reply-mapped");
        assert_eq!(got[1].1, b"reply-plain");
        for (meta, _) in &got {
            assert_eq!(meta.addr, SocketAddr::from((Ipv4Addr::LOCALHOST, ds_port)));
        }
    }

    pub(in crate::io) fn two_listeners_tag_and_reply<B: TestBackend>() {
        let mut client = bind::<B>(&["127.0.0.1:0"]);
        let mut relay = bind::<B>(&["127.0.0.1:0", "127.0.0.1:0"]);
        let client_addr = local(&client, 0);
        let listeners = [local(&relay, 0), local(&relay, 1)];
        let to_relay: Vec<Transmit<'_>> = (0..6)
            .map(|i| Transmit {
                listener: 0,
                destination: listeners[i % 2],
                contents: if i % 2 == 0 { b"to-0" } else { b"to-1" },
                segment_size: None,
                source: None,
            })
            .collect();
        assert_eq!(client.send(&to_relay).sent, 6);

        let got = recv_n(&mut relay, 6);
        assert_eq!(got.len(), 6);
        for (meta, bytes) in &got {
            let expect: &[u8] = if meta.listener == 0 { b"to-0" } else { b"to-1" };
            assert!(meta.listener < 2);
            assert_eq!(bytes, expect);
            assert_eq!(meta.addr, client_addr);
        }
        assert_eq!(got.iter().filter(|(m, _)| m.listener == 1).count(), 3);

        // Interleaved listeners in one call: each reply leaves through its own socket.
        let replies: Vec<Transmit<'_>> = got
            .iter()
            .map(|(meta, bytes)| Transmit {
                listener: meta.listener,
                destination: meta.addr,
                contents: bytes,
                segment_size: None,
                source: None,
            })
            .collect();
        assert_eq!(relay.send(&replies), SendStats { sent: 6, failed: 0 });
        let back = recv_n(&mut client, 6);
        assert_eq!(back.len(), 6);
        for (meta, bytes) in &back {
            let from = if bytes == b"to-0" { 0 } else { 1 };
            assert_eq!(meta.addr, listeners[from]);
        }
    }

    /// A busy listener delays a quiet one by at most what arrived before it, never
    /// indefinitely (uring: completions come in arrival order across listeners, one shared
    /// completion queue; mmsg: each `recv` starts with the next listener).
    pub(in crate::io) fn busy_listener_does_not_starve_another<B: TestBackend>() {
        let mut client = bind::<B>(&["127.0.0.1:0"]);
        let mut relay = bind::<B>(&["127.0.0.1:0", "127.0.0.1:0"]);
        let (busy, quiet) = (local(&relay, 0), local(&relay, 1));
        // uring: arm the receives first, so the datagrams land in arrival order.
        let mut batch = RecvBatch::new();
        assert_eq!(relay.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        let flood: Vec<Transmit<'_>> = (0..3 * BATCH_SIZE)
            .map(|_| Transmit {
                listener: 0,
                destination: busy,
                contents: b"flood",
                segment_size: None,
                source: None,
            })
            .collect();
        assert_eq!(client.send(&flood).sent, flood.len() as u64);
        let one = Transmit {
            listener: 0,
            destination: quiet,
            contents: b"quiet",
            segment_size: None,
            source: None,
        };
        assert_eq!(client.send(&[one]).sent, 1);
        assert_eq!(client.send(&flood).sent, flood.len() as u64);

        // 3 batches of flood arrived before it: it is in the 4th batch at the latest, while
        // another 3 batches of flood are still queued behind it.
        let mut seen_quiet_at = None;
        for call in 0..4 {
            relay
                .recv(&mut batch, Duration::from_millis(500))
                .expect("recv");
            if batch.iter().any(|(m, _)| m.listener == 1) {
                seen_quiet_at = Some(call);
                break;
            }
        }
        assert!(seen_quiet_at.is_some(), "listener 1 starved by listener 0");
    }

    pub(in crate::io) fn timeout_returns_zero<B: TestBackend>() {
        let mut b = bind::<B>(&["127.0.0.1:0"]);
        let mut batch = RecvBatch::new();
        let timeout = Duration::from_millis(200);
        let start = Instant::now();
        let n = b.recv(&mut batch, timeout).expect("recv");
        let elapsed = start.elapsed();
        assert_eq!(n, 0);
        assert!(batch.is_empty());
        assert!(elapsed >= timeout / 2, "returned early: {elapsed:?}");
        assert!(
            elapsed < Duration::from_secs(2),
            "waited too long: {elapsed:?}"
        );

        // A zero timeout polls without waiting.
        let start = Instant::now();
        assert_eq!(b.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        assert!(start.elapsed() < Duration::from_secs(1));

        // A huge timeout is accepted (capped per kernel wait) and ends with the first datagram.
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let t = Transmit {
            listener: 0,
            destination: local(&b, 0),
            contents: b"wake",
            segment_size: None,
            source: None,
        };
        assert_eq!(tx.send(&[t]).sent, 1);
        let start = Instant::now();
        assert_eq!(b.recv(&mut batch, Duration::MAX).expect("recv"), 1);
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    pub(in crate::io) fn backend_without_sockets_just_times_out<B: TestBackend>() {
        let mut b = B::from_sockets(Vec::new());
        let mut batch = RecvBatch::new();
        let n = b.recv(&mut batch, Duration::from_millis(10)).expect("recv");
        assert_eq!(n, 0);
        let t = Transmit {
            listener: 0,
            destination: addr("127.0.0.1:9"),
            contents: b"x",
            segment_size: None,
            source: None,
        };
        assert_eq!(b.send(&[t]), SendStats { sent: 0, failed: 1 });
    }

    pub(in crate::io) fn oversized_datagram_is_truncated<B: TestBackend>() {
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let mut rx = bind::<B>(&["127.0.0.1:0"]);
        let big: Vec<u8> = (0..9300u32).map(|i| i as u8).collect();
        let small = b"after".to_vec();
        let destination = local(&rx, 0);
        let t = [
            Transmit {
                listener: 0,
                destination,
                contents: &big,
                segment_size: None,
                source: None,
            },
            Transmit {
                listener: 0,
                destination,
                contents: &small,
                segment_size: None,
                source: None,
            },
        ];
        assert_eq!(tx.send(&t).sent, 2);
        let got = recv_n(&mut rx, 2);
        assert_eq!(got.len(), 2);
        assert!(got[0].0.truncated);
        assert_eq!(got[0].0.len, MAX_DATAGRAM_LEN);
        assert_eq!(got[0].1, &big[..MAX_DATAGRAM_LEN]);
        assert!(!got[1].0.truncated);
        assert_eq!(got[1].1, small);
    }

    pub(in crate::io) fn failed_destination_is_counted_and_others_still_go<B: TestBackend>() {
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let mut rx = bind::<B>(&["127.0.0.1:0"]);
        let good = local(&rx, 0);
        let bad = addr("[::1]:9"); // IPv6 through an IPv4 socket: refused by the kernel
        let t: Vec<Transmit<'_>> = [good, bad, good, bad, bad, good]
            .iter()
            .enumerate()
            .map(|(i, &destination)| Transmit {
                listener: 0,
                destination,
                contents: [b"a", b"b", b"c", b"d", b"e", b"f"][i],
                segment_size: None,
                source: None,
            })
            .collect();
        assert_eq!(tx.send(&t), SendStats { sent: 3, failed: 3 });
        let got = recv_n(&mut rx, 3);
        let contents: Vec<&[u8]> = got.iter().map(|(_, d)| d.as_slice()).collect();
        assert_eq!(contents, [b"a", b"c", b"f"]);
    }

    pub(in crate::io) fn unknown_listener_is_counted_failed<B: TestBackend>() {
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let mut rx = bind::<B>(&["127.0.0.1:0"]);
        let destination = local(&rx, 0);
        let t = [
            Transmit {
                listener: 7,
                destination,
                contents: b"nowhere",
                segment_size: None,
                source: None,
            },
            Transmit {
                listener: 0,
                destination,
                contents: b"ok",
                segment_size: None,
                source: None,
            },
        ];
        assert_eq!(tx.send(&t), SendStats { sent: 1, failed: 1 });
        let got = recv_n(&mut rx, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"ok");
    }

    pub(in crate::io) fn kernel_drops_are_reported<B: TestBackend>() {
        let tiny = SocketOptions {
            reuse_port: false,
            recv_buffer: 4096,
            send_buffer: 0,
            pktinfo: false,
        };
        let rx_sock = bind_udp(addr("127.0.0.1:0"), &tiny).expect("bind");
        let mut rx = B::from_sockets(vec![rx_sock]);
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let destination = local(&rx, 0);
        let payload = [0u8; 1000];
        let flood: Vec<Transmit<'_>> = (0..200)
            .map(|_| Transmit {
                listener: 0,
                destination,
                contents: &payload,
                segment_size: None,
                source: None,
            })
            .collect();
        tx.send(&flood);
        // Drain what fit; the count rides on datagrams queued after the drops, so send one more.
        let mut batch = RecvBatch::new();
        for _ in 0..10 {
            if rx
                .recv(&mut batch, Duration::from_millis(50))
                .expect("recv")
                == 0
            {
                break;
            }
        }
        tx.send(&flood[..1]);
        let got = recv_n(&mut rx, 1);
        assert_eq!(got.len(), 1);
        println!("kernel_drops = {}", rx.kernel_drops());
        assert!(rx.kernel_drops() > 0);
    }

    /// How long a woken `recv` may take to return (the bound the shards rely on).
    const WAKE_BOUND: Duration = Duration::from_millis(500);
    /// The `recv` timeout in the waker tests: long, so only the waker can end it early.
    const LONG: Duration = Duration::from_secs(5);

    /// Calls `recv(timeout)` for `window` and returns how many calls returned (each bounded
    /// by `timeout`, so the loop ends shortly after the window).
    fn returns_within<B: Backend>(b: &mut B, timeout: Duration, window: Duration) -> usize {
        let mut batch = RecvBatch::new();
        let start = Instant::now();
        let mut calls = 0;
        while start.elapsed() < window && calls < 10_000 {
            b.recv(&mut batch, timeout).expect("recv");
            calls += 1;
        }
        calls
    }

    /// Another thread writes the waker while `recv` waits with a 5 s timeout: it returns
    /// within [`WAKE_BOUND`] of the write.
    pub(in crate::io) fn waker_ends_a_long_wait<B: TestBackend>() {
        let mut b = bind::<B>(&["127.0.0.1:0"]);
        let waker = EventFd::new();
        b.set_waker(waker.fd()).expect("set_waker");
        let mut batch = RecvBatch::new();
        // Armed and settled first (uring arms on first use).
        assert_eq!(b.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        for round in 0..3 {
            let fd = waker.fd();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let at = Instant::now();
                wake_fd(fd);
                at
            });
            let n = b.recv(&mut batch, LONG).expect("recv");
            let returned = Instant::now();
            let written = writer.join().expect("writer");
            assert_eq!(n, 0, "round {round}: nothing was sent");
            let late = returned.saturating_duration_since(written);
            assert!(
                late < WAKE_BOUND,
                "round {round}: returned {late:?} after the write"
            );
            assert!(
                waker.drain(),
                "round {round}: the backend must not read the waker"
            );
        }
    }

    /// Once the caller drained the waker, `recv` waits for its timeout again: a handful of
    /// returns in a window, not thousands.
    pub(in crate::io) fn drained_waker_does_not_spin<B: TestBackend>() {
        let mut b = bind::<B>(&["127.0.0.1:0"]);
        let waker = EventFd::new();
        b.set_waker(waker.fd()).expect("set_waker");
        waker.wake();
        let mut batch = RecvBatch::new();
        let start = Instant::now();
        assert_eq!(b.recv(&mut batch, LONG).expect("recv"), 0);
        assert!(start.elapsed() < WAKE_BOUND, "already readable: no wait");
        assert!(waker.drain());
        // 100 ms timeouts over 400 ms: about 4 returns; a spin would be thousands.
        let calls = returns_within(
            &mut b,
            Duration::from_millis(100),
            Duration::from_millis(400),
        );
        assert!(
            calls <= 8,
            "{calls} returns in 400 ms: recv spins on a drained waker"
        );
        // And a long wait is really long again (cut short by a late write, bounded).
        let fd = waker.fd();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            wake_fd(fd);
        });
        let start = Instant::now();
        assert_eq!(b.recv(&mut batch, LONG).expect("recv"), 0);
        let waited = start.elapsed();
        writer.join().expect("writer");
        assert!(
            waited >= Duration::from_millis(250),
            "returned early: {waited:?}"
        );
        assert!(
            waited < Duration::from_millis(300) + WAKE_BOUND,
            "{waited:?}"
        );
    }

    /// A write while the caller is busy (between two `recv` calls) ends the next wait at once.
    pub(in crate::io) fn waker_written_between_calls_is_not_lost<B: TestBackend>() {
        let mut b = bind::<B>(&["127.0.0.1:0"]);
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let waker = EventFd::new();
        b.set_waker(waker.fd()).expect("set_waker");
        let mut batch = RecvBatch::new();
        assert_eq!(b.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        // The backend's own sends enter the kernel (uring) while the write is pending.
        waker.wake();
        let t = Transmit {
            listener: 0,
            destination: local(&tx, 0),
            contents: b"busy",
            segment_size: None,
            source: None,
        };
        assert_eq!(b.send(&[t]).sent, 1);
        let start = Instant::now();
        assert_eq!(b.recv(&mut batch, LONG).expect("recv"), 0);
        assert!(start.elapsed() < WAKE_BOUND, "{:?}", start.elapsed());
        assert!(waker.drain());
        assert_eq!(recv_n(&mut tx, 1).len(), 1);
    }

    /// Datagrams that are ready when the waker fires are returned, not left for later; and a
    /// waker firing with datagrams queued behind it loses none of them.
    pub(in crate::io) fn datagrams_and_waker_together<B: TestBackend>() {
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let mut rx = bind::<B>(&["127.0.0.1:0", "127.0.0.1:0"]);
        let waker = EventFd::new();
        rx.set_waker(waker.fd()).expect("set_waker");
        let mut batch = RecvBatch::new();
        assert_eq!(rx.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        let p = payloads(10);
        let dests = [local(&rx, 0), local(&rx, 1)];
        let t: Vec<Transmit<'_>> = p
            .iter()
            .enumerate()
            .map(|(i, c)| Transmit {
                listener: 0,
                destination: dests[i % 2],
                contents: c,
                segment_size: None,
                source: None,
            })
            .collect();
        assert_eq!(tx.send(&t).sent, 10);
        waker.wake();
        // Give loopback a moment so the datagrams are queued before the wait starts.
        std::thread::sleep(Duration::from_millis(20));
        let start = Instant::now();
        let n = rx.recv(&mut batch, LONG).expect("recv");
        assert!(start.elapsed() < WAKE_BOUND);
        assert!(n > 0, "woken with datagrams ready, but none returned");
        let mut got: Vec<Vec<u8>> = batch.iter().map(|(_, d)| d.to_vec()).collect();
        assert!(waker.drain());
        got.extend(recv_n(&mut rx, 10 - got.len()).into_iter().map(|(_, d)| d));
        got.sort();
        let mut want = p.clone();
        want.sort();
        assert_eq!(got, want, "every datagram exactly once");

        // Datagrams and wakes interleaved over several rounds: nothing lost, no long waits.
        let mut total = 0;
        for round in 0..5u8 {
            let q = [vec![round; 100], vec![round; 200]];
            assert_eq!(tx.send(&transmits(dests[0], &q)).sent, 2);
            waker.wake();
            let start = Instant::now();
            for _ in 0..20 {
                total += rx.recv(&mut batch, LONG).expect("recv");
                waker.drain();
                if total == 2 * (usize::from(round) + 1) {
                    break;
                }
            }
            assert!(start.elapsed() < 2 * WAKE_BOUND, "round {round}");
        }
        assert_eq!(total, 10);
    }

    /// After `set_waker` with a new fd, only the new one wakes `recv`.
    pub(in crate::io) fn replaced_waker_is_ignored<B: TestBackend>() {
        let mut b = bind::<B>(&["127.0.0.1:0"]);
        let (old, new) = (EventFd::new(), EventFd::new());
        b.set_waker(old.fd()).expect("set_waker");
        let mut batch = RecvBatch::new();
        assert_eq!(b.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        b.set_waker(new.fd()).expect("set_waker again");
        assert_eq!(b.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        old.wake();
        let start = Instant::now();
        assert_eq!(
            b.recv(&mut batch, Duration::from_millis(300))
                .expect("recv"),
            0
        );
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "woken by the replaced waker"
        );
        new.wake();
        let start = Instant::now();
        assert_eq!(b.recv(&mut batch, LONG).expect("recv"), 0);
        assert!(start.elapsed() < WAKE_BOUND);
        assert!(new.drain());
        assert!(b.set_waker(-1).is_err(), "a negative fd is refused");
    }

    /// A backend with no sockets still waits on its waker.
    pub(in crate::io) fn waker_without_sockets<B: TestBackend>() {
        let mut b = B::from_sockets(Vec::new());
        let waker = EventFd::new();
        b.set_waker(waker.fd()).expect("set_waker");
        let fd = waker.fd();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            wake_fd(fd);
        });
        let mut batch = RecvBatch::new();
        let start = Instant::now();
        assert_eq!(b.recv(&mut batch, LONG).expect("recv"), 0);
        writer.join().expect("writer");
        assert!(start.elapsed() < Duration::from_millis(50) + WAKE_BOUND);
    }
}

/// Transmit-side hook of the offload tests: `Some(errno)` makes the backend's next GSO message
/// fail with `errno` without reaching the kernel (then it is reset to `None`).
pub(in crate::io) type GsoHook = Option<i32>;

/// Backend `B` with GSO and GRO as given, for running the conformance suite per combination.
pub(in crate::io) struct Combo<B, const GSO: bool, const GRO: bool>(pub(in crate::io) B);

impl<B: Backend, const GSO: bool, const GRO: bool> Backend for Combo<B, GSO, GRO> {
    fn recv(&mut self, batch: &mut RecvBatch, timeout: Duration) -> std::io::Result<usize> {
        self.0.recv(batch, timeout)
    }
    fn send(&mut self, transmits: &[Transmit<'_>]) -> SendStats {
        self.0.send(transmits)
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn drops(&self) -> Drops {
        self.0.drops()
    }
    fn set_waker(&mut self, waker: RawFd) -> std::io::Result<()> {
        self.0.set_waker(waker)
    }
}

impl<B: TestBackend, const GSO: bool, const GRO: bool> TestBackend for Combo<B, GSO, GRO> {
    fn unavailable() -> Option<String> {
        B::unavailable()
    }
    fn from_sockets(sockets: Vec<UdpSocket>) -> Self {
        Combo(B::with_offload(sockets, Offload { gso: GSO, gro: GRO }))
    }
    fn with_offload(sockets: Vec<UdpSocket>, offload: Offload) -> Self {
        Combo(B::with_offload(sockets, offload))
    }
    fn sockets(&self) -> &[UdpSocket] {
        self.0.sockets()
    }
    fn kernel_drops(&self) -> u64 {
        self.0.kernel_drops()
    }
    fn gro_runs(&self) -> usize {
        self.0.gro_runs()
    }
    fn gso_hook(&mut self) -> &mut GsoHook {
        self.0.gso_hook()
    }
}

/// The offload tests (GSO grouping, GRO splitting and carry-over, the EIO/EINVAL fallback) as
/// `#[test]` functions for backend type `$backend`, each skipped where the backend or the
/// offload is unavailable. Invoke inside a backend's test module.
macro_rules! offload_tests {
    ($backend:ty) => {
        $crate::io::testkit::conformance_tests!(@each_in offload_suite $backend; gso_run_arrives_as_individual_datagrams_at_a_plain_receiver, gso_splits_mixed_destinations_into_groups, gro_splits_a_gso_burst_back_in_order, gro_keeps_runs_whole, gro_keeps_truncation_per_datagram, gso_eio_falls_back_without_loss_or_duplicates, gso_einval_falls_back_without_loss_or_duplicates, a_run_transmit_arrives_as_its_datagrams, a_refused_run_falls_back_without_loss_or_duplicates, other_errors_on_a_gso_message_count_its_datagrams_and_keep_gso, capabilities_follow_the_switches, local_address_is_reported, source_address_is_used);
    };
}
pub(in crate::io) use offload_tests;

/// Everything a backend must pass: the conformance suite with offloads off and in each
/// GSO/GRO combination (modules `gso_on_gro_off`, `gso_off_gro_on`, `gso_on_gro_on`), and the
/// offload tests (module `offload`). Invoke inside a backend's test module, with `Combo` and
/// both suites' macros in scope.
macro_rules! every_backend_test {
    ($backend:ty) => {
        // Offloads off: the plain batched receive/send behaviour.
        conformance_tests!($backend);

        mod gso_on_gro_off {
            use super::*;
            conformance_tests!(Combo<$backend, true, false>);
        }

        mod gso_off_gro_on {
            use super::*;
            conformance_tests!(Combo<$backend, false, true>);
        }

        mod gso_on_gro_on {
            use super::*;
            conformance_tests!(Combo<$backend, true, true>);
        }

        mod offload {
            use super::*;
            offload_tests!($backend);
        }
    };
}
pub(in crate::io) use every_backend_test;

/// The offload tests every backend passes.
pub(in crate::io) mod offload_suite {
    use super::*;
    use crate::io::{GRO_MAX_SEGMENTS, GSO_MAX_SEGMENTS};

    fn offload<B: TestBackend>(addrs: &[&str], gso: bool, gro: bool) -> B {
        B::with_offload(sockets(addrs), Offload { gso, gro })
    }

    fn gso_supported<B: TestBackend>(b: &B) -> bool {
        let ok = b.capabilities().max_gso_segments > 1;
        if !ok {
            println!("skipping: no UDP GSO on this host");
        }
        ok
    }

    fn gro_supported<B: TestBackend>(b: &B) -> bool {
        let ok = b.capabilities().gro_segments > 1;
        if !ok {
            println!("skipping: no UDP GRO on this host");
        }
        ok
    }

    pub(in crate::io) fn gso_run_arrives_as_individual_datagrams_at_a_plain_receiver<
        B: TestBackend,
    >() {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        if !gso_supported(&tx) {
            return;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = run_payloads(40, 1000, Some(300));
        let stats = tx.send(&transmits(rx.local_addr().expect("local_addr"), &p));
        assert_eq!(
            stats,
            SendStats {
                sent: 41,
                failed: 0
            }
        );
        assert_eq!(plain_recv(&rx, 41), p);
    }

    pub(in crate::io) fn gso_splits_mixed_destinations_into_groups<B: TestBackend>() {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        if !gso_supported(&tx) {
            return;
        }
        let (ra, rb) = (
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
            UdpSocket::bind("127.0.0.1:0").expect("bind"),
        );
        let (da, db) = (
            ra.local_addr().expect("local_addr"),
            rb.local_addr().expect("local_addr"),
        );
        let p = run_payloads(30, 200, None);
        // a a a b b a a(short) a b(short) b, ...
        let dests = [da, da, da, db, db, da, da, da, db, db];
        let mut lens = vec![200; 30];
        lens[6] = 90;
        lens[9] = 10;
        let t: Vec<Transmit<'_>> = p
            .iter()
            .enumerate()
            .map(|(i, q)| Transmit {
                listener: 0,
                destination: dests[i % dests.len()],
                contents: &q[..lens[i]],
                segment_size: None,
                source: None,
            })
            .collect();
        assert_eq!(
            tx.send(&t),
            SendStats {
                sent: 30,
                failed: 0
            }
        );
        let want = |d: SocketAddr| -> Vec<Vec<u8>> {
            t.iter()
                .filter(|x| x.destination == d)
                .map(|x| x.contents.to_vec())
                .collect()
        };
        let (wa, wb) = (want(da), want(db));
        assert_eq!(plain_recv(&ra, wa.len()), wa);
        assert_eq!(plain_recv(&rb, wb.len()), wb);
    }

    pub(in crate::io) fn gro_splits_a_gso_burst_back_in_order<B: TestBackend>() {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        let mut rx = offload::<B>(&["127.0.0.1:0"], false, true);
        if !gso_supported(&tx) || !gro_supported(&rx) {
            return;
        }
        let p = run_payloads(40, 1000, Some(300));
        let src = local(&tx, 0);
        assert_eq!(tx.send(&transmits(local(&rx, 0), &p)).sent, 41);
        let got = recv_n(&mut rx, 41);
        assert_eq!(got.len(), 41);
        for (i, ((meta, bytes), want)) in got.iter().zip(&p).enumerate() {
            assert_eq!(bytes, want, "datagram {i}");
            assert_eq!(meta.len, want.len());
            assert!(!meta.truncated);
            assert_eq!(meta.addr, src);
            assert_eq!(meta.listener, 0);
        }
        assert!(rx.gro_runs() > 0, "the burst was not coalesced");
    }

    pub(in crate::io) fn gro_keeps_runs_whole<B: TestBackend>() {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        let mut rx = offload::<B>(&["127.0.0.1:0"], false, true);
        if !gso_supported(&tx) || !gro_supported(&rx) {
            return;
        }
        // Three runs of 60 (the last one ends shorter): 181 datagrams, more than BATCH_SIZE.
        let mut p = run_payloads(180, 100, Some(7));
        p[59].truncate(50);
        let dest = local(&rx, 0);
        assert_eq!(tx.send(&transmits(dest, &p)).sent, 181);
        let mut batch = RecvBatch::new();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let start = Instant::now();
        let mut coalesced = false;
        while got.len() < p.len() && start.elapsed() < Duration::from_secs(5) {
            rx.recv(&mut batch, Duration::from_millis(200))
                .expect("recv");
            // a message is a whole run: its datagrams follow each other in memory, and only
            // they do (so sending them on can use one iovec per run)
            coalesced |= batch.messages() < batch.len();
            let adjacent = (1..batch.len())
                .filter(|&i| {
                    let (a, b) = (batch.datagram(i - 1), batch.datagram(i));
                    a.as_ptr().wrapping_add(a.len()) == b.as_ptr()
                })
                .count();
            assert_eq!(adjacent, batch.len() - batch.messages());
            got.extend(batch.iter().map(|(_, d)| d.to_vec()));
        }
        assert_eq!(got.len(), 181, "datagrams lost or duplicated");
        assert_eq!(got, p);
        assert!(coalesced && rx.gro_runs() > 0, "nothing was coalesced");
        // Nothing left behind.
        assert_eq!(
            rx.recv(&mut batch, Duration::from_millis(50))
                .expect("recv"),
            0
        );
    }

    pub(in crate::io) fn gro_keeps_truncation_per_datagram<B: TestBackend>() {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        let mut rx = offload::<B>(&["127.0.0.1:0"], false, true);
        if !gso_supported(&tx) || !gro_supported(&rx) {
            return;
        }
        // Segments longer than a slot: each is cut to MAX_DATAGRAM_LEN and flagged.
        let p = run_payloads(3, 9300, Some(20));
        assert_eq!(tx.send(&transmits(local(&rx, 0), &p)).sent, 4);
        let got = recv_n(&mut rx, 4);
        assert_eq!(got.len(), 4);
        for (meta, bytes) in &got[..3] {
            assert!(meta.truncated);
            assert_eq!(meta.len, MAX_DATAGRAM_LEN);
            assert_eq!(bytes.len(), MAX_DATAGRAM_LEN);
        }
        assert_eq!(got[1].1, &p[1][..MAX_DATAGRAM_LEN]);
        assert!(!got[3].0.truncated);
        assert_eq!(got[3].1, p[3]);
    }

    fn fallback_after<B: TestBackend>(errno: i32) {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        if !gso_supported(&tx) {
            return;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dest = rx.local_addr().expect("local_addr");
        // Two GSO groups with single datagrams between them; the first group is refused.
        let mut p = vec![b"single-0".to_vec()];
        p.extend(run_payloads(20, 500, Some(30)));
        p.push(b"single-1".to_vec());
        p.extend(run_payloads(10, 700, None));
        *tx.gso_hook() = Some(errno);
        let n = p.len() as u64;
        assert_eq!(
            tx.send(&transmits(dest, &p)),
            SendStats { sent: n, failed: 0 }
        );
        assert_eq!(*tx.gso_hook(), None, "the hook fired");
        assert_eq!(
            plain_recv(&rx, p.len()),
            p,
            "each datagram exactly once, in order"
        );
        assert_eq!(tx.capabilities().max_gso_segments, 1, "GSO is off for good");
        // Later sends keep working, one datagram per message.
        let q = run_payloads(5, 100, None);
        assert_eq!(tx.send(&transmits(dest, &q)).sent, 5);
        assert_eq!(plain_recv(&rx, 5), q);
        assert!(rx.set_read_timeout(Some(Duration::from_millis(50))).is_ok());
        let mut buf = [0u8; 2048];
        assert!(rx.recv(&mut buf).is_err(), "no duplicate arrived late");
    }

    /// `payloads` as one run transmit (their bytes one after the other, the first one's length
    /// as segment size).
    fn run_bytes(payloads: &[Vec<u8>]) -> (Vec<u8>, usize) {
        (payloads.concat(), payloads[0].len())
    }

    /// A transmit that carries a run: one GSO message where the listener has GSO (a GRO
    /// receiver gets it as one message of the same segments), its datagrams one by one
    /// without; either way every datagram arrives once, in order, and counts as sent.
    pub(in crate::io) fn a_run_transmit_arrives_as_its_datagrams<B: TestBackend>() {
        for gso in [true, false] {
            let mut tx = offload::<B>(&["127.0.0.1:0"], gso, false);
            let mut rx = offload::<B>(&["127.0.0.1:0"], false, true);
            let p = run_payloads(40, 300, Some(77));
            let (bytes, seg) = run_bytes(&p);
            let run = Transmit {
                listener: 0,
                destination: local(&rx, 0),
                contents: &bytes,
                segment_size: Some(seg),
                source: None,
            };
            assert_eq!(run.datagrams(), 41);
            let stats = tx.send(&[run]);
            assert_eq!(
                stats,
                SendStats {
                    sent: 41,
                    failed: 0
                },
                "gso {gso}"
            );
            let mut batch = RecvBatch::new();
            let (mut got, mut messages) = (Vec::new(), 0);
            let start = Instant::now();
            while got.len() < p.len() && start.elapsed() < Duration::from_secs(5) {
                rx.recv(&mut batch, Duration::from_millis(200))
                    .expect("recv");
                messages += batch.messages();
                got.extend(batch.iter().map(|(_, d)| d.to_vec()));
            }
            assert_eq!(got, p, "gso {gso}: each datagram once, in order");
            if gso && gso_supported(&tx) && gro_supported(&rx) {
                assert_eq!(messages, 1, "one GSO message, received whole");
            } else if !gso {
                assert_eq!(messages, 41, "no GSO: one message per datagram");
            }
        }
    }

    /// A run the kernel refuses as GSO is sent again datagram by datagram, as a group of
    /// single transmits is: nothing lost, nothing twice.
    fn run_fallback_after<B: TestBackend>(errno: i32) {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        if !gso_supported(&tx) {
            return;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dest = rx.local_addr().expect("local_addr");
        let first = run_payloads(20, 500, Some(30));
        let second = run_payloads(10, 700, None);
        let (a, sa) = run_bytes(&first);
        let (b, sb) = run_bytes(&second);
        let list = [
            Transmit::new(0, dest, b"single-0"),
            Transmit {
                segment_size: Some(sa),
                ..Transmit::new(0, dest, &a)
            },
            Transmit::new(0, dest, b"single-1"),
            Transmit {
                segment_size: Some(sb),
                ..Transmit::new(0, dest, &b)
            },
        ];
        *tx.gso_hook() = Some(errno);
        assert_eq!(
            tx.send(&list),
            SendStats {
                sent: 33,
                failed: 0
            }
        );
        assert_eq!(*tx.gso_hook(), None, "the hook fired");
        let mut want = vec![b"single-0".to_vec()];
        want.extend(first);
        want.push(b"single-1".to_vec());
        want.extend(second);
        assert_eq!(
            plain_recv(&rx, want.len()),
            want,
            "each datagram once, in order"
        );
        assert_eq!(tx.capabilities().max_gso_segments, 1, "GSO is off for good");
        // A run sent with GSO off goes datagram by datagram from the start.
        assert_eq!(tx.send(&list[1..2]).sent, 21);
        assert_eq!(plain_recv(&rx, 21).len(), 21);
        assert!(rx.set_read_timeout(Some(Duration::from_millis(50))).is_ok());
        let mut buf = [0u8; 2048];
        assert!(rx.recv(&mut buf).is_err(), "no duplicate arrived late");
    }

    pub(in crate::io) fn a_refused_run_falls_back_without_loss_or_duplicates<B: TestBackend>() {
        run_fallback_after::<B>(libc::EIO);
        run_fallback_after::<B>(libc::EINVAL);
    }

    pub(in crate::io) fn gso_eio_falls_back_without_loss_or_duplicates<B: TestBackend>() {
        fallback_after::<B>(libc::EIO);
    }

    pub(in crate::io) fn gso_einval_falls_back_without_loss_or_duplicates<B: TestBackend>() {
        fallback_after::<B>(libc::EINVAL);
    }

    pub(in crate::io) fn other_errors_on_a_gso_message_count_its_datagrams_and_keep_gso<
        B: TestBackend,
    >() {
        let mut tx = offload::<B>(&["127.0.0.1:0"], true, false);
        if !gso_supported(&tx) {
            return;
        }
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let p = run_payloads(8, 100, None);
        *tx.gso_hook() = Some(libc::ENOBUFS);
        // One group of 8, refused for a reason that is not GSO's: all 8 count as failed.
        let stats = tx.send(&transmits(rx.local_addr().expect("local_addr"), &p));
        assert_eq!(stats, SendStats { sent: 0, failed: 8 });
        assert!(tx.capabilities().max_gso_segments > 1);
    }

    /// Sockets bound to `addrs` that report each datagram's local address.
    fn pktinfo_sockets(addrs: &[&str]) -> Vec<UdpSocket> {
        let opts = SocketOptions {
            reuse_port: false,
            pktinfo: true,
            ..SocketOptions::default()
        };
        addrs
            .iter()
            .map(|a| bind_udp(addr(a), &opts).expect("bind"))
            .collect()
    }

    /// With pktinfo on, every datagram (and every datagram of a GRO run) reports the address
    /// it was sent to: the bound one, one of a wildcard socket's, IPv6, and v4-mapped on a
    /// dual-stack socket as its source is. Without pktinfo, none.
    pub(in crate::io) fn local_address_is_reported<B: TestBackend>() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("literal") };
        let mut cases = vec![
            (
                "127.0.0.1:0",
                "127.0.0.1:0",
                ip("127.0.0.1"),
                ip("127.0.0.1"),
            ),
            ("0.0.0.0:0", "127.0.0.1:0", ip("127.0.0.3"), ip("127.0.0.3")),
        ];
        if have_ipv6() {
            cases.push(("[::1]:0", "[::1]:0", ip("::1"), ip("::1")));
            cases.push((
                "[::]:0",
                "127.0.0.1:0",
                ip("127.0.0.4"),
                ip("::ffff:127.0.0.4"),
            ));
        }
        for gro in [false, true] {
            for &(rx_addr, tx_addr, to, want) in &cases {
                let mut tx = offload::<B>(&[tx_addr], true, false);
                let mut rx =
                    B::with_offload(pktinfo_sockets(&[rx_addr]), Offload { gso: false, gro });
                let dest = SocketAddr::new(to, local(&rx, 0).port());
                let p = run_payloads(5, 200, None);
                assert_eq!(tx.send(&transmits(dest, &p)).sent, 5);
                let got = recv_n(&mut rx, p.len());
                assert_eq!(got.len(), p.len(), "{rx_addr} via {to}, gro {gro}");
                for (meta, bytes) in &got {
                    assert_eq!(meta.local, Some(want), "{rx_addr} via {to}, gro {gro}");
                    assert_eq!(
                        meta.addr.is_ipv4(),
                        want.is_ipv4(),
                        "same form as the source"
                    );
                    assert_eq!(bytes.len(), 200);
                }
            }
        }
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let mut rx = bind::<B>(&["127.0.0.1:0"]);
        assert_eq!(tx.send(&transmits(local(&rx, 0), &payloads(3))).sent, 3);
        let got = recv_n(&mut rx, 3);
        assert_eq!(got.len(), 3);
        assert!(
            got.iter().all(|(m, _)| m.local.is_none()),
            "pktinfo off: no local address"
        );
    }

    /// A transmit with `source` leaves from that address, alone, as a run (GSO on or off) and
    /// next to transmits from other sources (never grouped with them); a dual-stack socket
    /// sends from an IPv4 source to an IPv4 peer; an IPv6 source through an IPv4 socket is
    /// refused and counted.
    pub(in crate::io) fn source_address_is_used<B: TestBackend>() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("literal") };
        let mut senders = vec!["0.0.0.0:0"];
        if have_ipv6() {
            senders.push("[::]:0");
        }
        for tx_addr in senders {
            for gso in [false, true] {
                let mut tx = offload::<B>(&[tx_addr], gso, false);
                let mut rx = B::with_offload(pktinfo_sockets(&["127.0.0.1:0"]), Offload::OFF);
                let dest = local(&rx, 0);
                let port = local(&tx, 0).port();
                let single = vec![1u8; 100];
                let (run, seg) = run_bytes(&run_payloads(3, 100, Some(40)));
                let from = |contents, s: &str| Transmit {
                    source: Some(ip(s)),
                    ..Transmit::new(0, dest, contents)
                };
                let list = [
                    from(&single, "127.0.0.2"),
                    Transmit {
                        segment_size: Some(seg),
                        ..from(&run, "127.0.0.5")
                    },
                    from(&single, "127.0.0.6"),
                    from(&single, "127.0.0.7"),
                    Transmit::new(0, dest, &single),
                ];
                let stats = tx.send(&list);
                assert_eq!(
                    stats,
                    SendStats { sent: 8, failed: 0 },
                    "{tx_addr} gso {gso}"
                );
                let got = recv_n(&mut rx, 8);
                let seen: Vec<(IpAddr, usize)> = got
                    .iter()
                    .map(|(m, d)| {
                        assert_eq!(m.addr.port(), port);
                        (m.addr.ip(), d.len())
                    })
                    .collect();
                let want: Vec<(IpAddr, usize)> = [
                    ("127.0.0.2", 100),
                    ("127.0.0.5", 100),
                    ("127.0.0.5", 100),
                    ("127.0.0.5", 100),
                    ("127.0.0.5", 40),
                    ("127.0.0.6", 100),
                    ("127.0.0.7", 100),
                    ("127.0.0.1", 100),
                ]
                .iter()
                .map(|&(s, n)| (ip(s), n))
                .collect();
                assert_eq!(
                    seen, want,
                    "{tx_addr} gso {gso}: each from its source, in order"
                );
            }
        }
        let mut tx = bind::<B>(&["127.0.0.1:0"]);
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dest = rx.local_addr().expect("local_addr");
        let bytes = [7u8; 10];
        let v6_src = Transmit {
            source: Some(ip("::1")),
            ..Transmit::new(0, dest, &bytes)
        };
        let ok = Transmit::new(0, dest, &bytes);
        assert_eq!(tx.send(&[v6_src, ok]), SendStats { sent: 1, failed: 1 });
    }

    pub(in crate::io) fn capabilities_follow_the_switches<B: TestBackend>() {
        let b = offload::<B>(&["127.0.0.1:0", "127.0.0.1:0"], false, false);
        let caps = b.capabilities();
        assert_eq!((caps.max_gso_segments, caps.gro_segments), (1, 1));
        let b = offload::<B>(&["127.0.0.1:0"], true, true);
        let caps = b.capabilities();
        println!("gso {} gro {}", caps.max_gso_segments, caps.gro_segments);
        assert!([1, GSO_MAX_SEGMENTS].contains(&caps.max_gso_segments));
        assert!([1, GRO_MAX_SEGMENTS].contains(&caps.gro_segments));
        let none = B::with_offload(Vec::new(), Offload::ON);
        assert_eq!(none.capabilities().max_gso_segments, 1);
        assert_eq!(none.capabilities().gro_segments, 1);
    }
}
