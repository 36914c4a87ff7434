//! Portable Linux backend: `poll(2)` + `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! All system-call structures (mmsghdr, iovec, sockaddr and control buffers) are allocated once
//! in [`MmsgBackend::new`]; `recv` and `send` only refill them, so the hot path never allocates.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::{Duration, Instant};

use super::{Backend, Capabilities, RecvBatch, RecvMeta, SendStats, Transmit};
use super::{BATCH_SIZE, MAX_DATAGRAM_LEN};

/// Room for the SO_RXQ_OVFL control message (CMSG_SPACE(4) is 24 on 64-bit) with slack.
const CMSG_BUF_LEN: usize = 64;

/// Errors on the datapath can come per packet; one line per interval is enough to diagnose.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Control-message buffer for one receive slot, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

/// Address family of a listener, probed once in `new` to adapt destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Unknown,
}

/// Lets one log line through per [`WARN_INTERVAL`] and counts the rest.
#[derive(Debug, Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// Returns how many were suppressed since the last allowed line, or `None` to stay quiet.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < WARN_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(mem::take(&mut self.suppressed))
            }
        }
    }
}

/// [`Backend`] over `poll` + `recvmmsg`/`sendmmsg`. Socket `i` is listener `i`.
pub struct MmsgBackend {
    sockets: Vec<UdpSocket>,
    families: Vec<Family>,
    pollfds: Vec<libc::pollfd>,
    /// Listener served first by the next `recv`, rotated so a busy one cannot starve the rest.
    next_first: usize,
    /// Last SO_RXQ_OVFL value per listener (the kernel reports a cumulative count).
    drops: Vec<u32>,

    // Receive side, allocated once. The header pointers (into the boxes below and the caller's
    // batch) are refreshed on every call, each derived from one base pointer taken after the
    // last write to its target, so no later borrow invalidates a pointer the kernel will use.
    recv_hdrs: Box<[libc::mmsghdr]>,
    recv_iovs: Box<[libc::iovec]>,
    recv_names: Box<[libc::sockaddr_storage]>,
    recv_ctrl: Box<[CmsgBuf]>,

    // Send side, same scheme; `iov_base` points into the caller's transmits during a call only.
    send_hdrs: Box<[libc::mmsghdr]>,
    send_iovs: Box<[libc::iovec]>,
    send_names: Box<[libc::sockaddr_storage]>,

    send_warn: RateLimit,
    recv_warn: RateLimit,
}

// SAFETY: the raw pointers inside the mmsghdr/iovec arrays are either into heap storage this
// struct owns (and moves with it) or stale pointers into caller buffers that are overwritten
// before every system call and never dereferenced otherwise. Nothing is shared with another
// thread, so moving the backend to a shard thread is sound. It is deliberately not `Sync`.
unsafe impl Send for MmsgBackend {}

impl MmsgBackend {
    /// Wraps `sockets`; socket `i` becomes listener `i`. The sockets may be blocking (as
    /// [`super::bind_udp`] leaves them): receives use MSG_DONTWAIT, and blocking sends give
    /// backpressure. A non-blocking socket works too, but a full send buffer then counts as
    /// `failed`.
    pub fn new(sockets: Vec<UdpSocket>) -> Self {
        // Probe once: the destination-family adaptation in `send` depends on it.
        let families = sockets
            .iter()
            .map(|s| match s.local_addr() {
                Ok(SocketAddr::V4(_)) => Family::V4,
                Ok(SocketAddr::V6(_)) => Family::V6,
                Err(_) => Family::Unknown,
            })
            .collect();
        let pollfds = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let drops = vec![0; sockets.len()];

        MmsgBackend {
            sockets,
            families,
            pollfds,
            next_first: 0,
            drops,
            recv_hdrs: zeroed_slice(BATCH_SIZE),
            recv_iovs: zeroed_slice(BATCH_SIZE),
            recv_names: zeroed_slice(BATCH_SIZE),
            recv_ctrl: vec![CmsgBuf([0; CMSG_BUF_LEN]); BATCH_SIZE].into_boxed_slice(),
            send_hdrs: zeroed_slice(BATCH_SIZE),
            send_iovs: zeroed_slice(BATCH_SIZE),
            send_names: zeroed_slice(BATCH_SIZE),
            send_warn: RateLimit::default(),
            recv_warn: RateLimit::default(),
        }
    }

    /// The sockets, indexed by listener.
    pub fn sockets(&self) -> &[UdpSocket] {
        &self.sockets
    }

    /// Datagrams the kernel dropped on these sockets (receive buffer full), as last reported via
    /// SO_RXQ_OVFL. Stays 0 where the option is unavailable. The kernel attaches the count to
    /// datagrams queued after a drop, so it lags until the next datagram is received.
    pub fn kernel_drops(&self) -> u64 {
        self.drops.iter().map(|&d| u64::from(d)).sum()
    }

    /// Receives from listener `idx` into the free slots of `batch`.
    fn recv_socket(&mut self, idx: usize, batch: &mut RecvBatch) -> io::Result<()> {
        let start = batch.len();
        let free = batch.capacity() - start;
        if free == 0 {
            return Ok(());
        }
        let slots = batch.slots_ptr();
        for slot in start..batch.capacity() {
            self.recv_iovs[slot] = libc::iovec {
                iov_base: slots.wrapping_add(slot * MAX_DATAGRAM_LEN).cast(),
                iov_len: MAX_DATAGRAM_LEN,
            };
        }
        let iovs = self.recv_iovs.as_mut_ptr();
        let names = self.recv_names.as_mut_ptr();
        let ctrl = self.recv_ctrl.as_mut_ptr();
        for slot in start..batch.capacity() {
            let m = &mut self.recv_hdrs[slot];
            m.msg_len = 0;
            let h = &mut m.msg_hdr;
            h.msg_name = names.wrapping_add(slot).cast();
            // The kernel overwrites the lengths and flags on every receive.
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iovs.wrapping_add(slot);
            h.msg_iovlen = 1;
            h.msg_control = ctrl.wrapping_add(slot).cast();
            h.msg_controllen = CMSG_BUF_LEN as _;
            h.msg_flags = 0;
        }
        let fd = self.sockets[idx].as_raw_fd();
        let got = loop {
            // SAFETY: headers `start..start + free` were filled above; their name, iovec and
            // control pointers refer to live buffers of the stated lengths (backend-owned boxes,
            // and one MAX_DATAGRAM_LEN slot of `batch` each, in bounds and exclusively borrowed
            // for this call). A null timeout is allowed.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.recv_hdrs[start..].as_mut_ptr(),
                    free as libc::c_uint,
                    libc::MSG_DONTWAIT as _,
                    ptr::null_mut(),
                )
            };
            if rc >= 0 {
                break (rc as usize).min(free);
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ if is_fatal(&err) => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!("recvmmsg on listener {idx}: {err}"),
                    ))
                }
                // Transient (e.g. a queued ICMP error, ENOMEM): skip this socket this round.
                _ => {
                    if let Some(suppressed) = self.recv_warn.allow() {
                        log::warn!(
                            "recvmmsg on listener {idx} failed: {err} ({suppressed} similar suppressed)"
                        );
                    }
                    return Ok(());
                }
            }
        };

        let mut write = start;
        for slot in start..start + got {
            let hdr = &self.recv_hdrs[slot];
            let len = (hdr.msg_len as usize).min(MAX_DATAGRAM_LEN);
            let truncated = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let namelen = hdr.msg_hdr.msg_namelen;
            if let Some(d) = rxq_ovfl(&hdr.msg_hdr) {
                self.drops[idx] = d;
            }
            let Some(addr) = sockaddr_to_std(&self.recv_names[slot], namelen) else {
                // Cannot happen on an AF_INET/AF_INET6 socket; drop rather than misattribute.
                if let Some(suppressed) = self.recv_warn.allow() {
                    log::warn!(
                        "listener {idx}: datagram with unusable source address dropped \
                         ({suppressed} similar suppressed)"
                    );
                }
                continue;
            };
            if write != slot {
                batch.move_slot(slot, write, len);
            }
            batch.push_meta(RecvMeta {
                listener: idx,
                addr,
                len,
                truncated,
            });
            write += 1;
        }
        Ok(())
    }

    /// Sends `chunk` (at most BATCH_SIZE transmits, all for `listener`).
    fn send_chunk(&mut self, listener: usize, chunk: &[Transmit<'_>], stats: &mut SendStats) {
        debug_assert!(chunk.len() <= BATCH_SIZE);
        let Some(sock) = self.sockets.get(listener) else {
            stats.failed += chunk.len() as u64;
            if let Some(suppressed) = self.send_warn.allow() {
                log::warn!(
                    "send via listener {listener}: no such listener ({} sockets); {} datagrams \
                     dropped ({suppressed} similar suppressed)",
                    self.sockets.len(),
                    chunk.len()
                );
            }
            return;
        };
        let fd = sock.as_raw_fd();
        let family = self.families[listener];
        for (j, t) in chunk.iter().enumerate() {
            let dest = adapt_destination(t.destination, family);
            let namelen = std_to_sockaddr(dest, &mut self.send_names[j]);
            self.send_hdrs[j].msg_hdr.msg_namelen = namelen;
            self.send_iovs[j] = libc::iovec {
                // The kernel only reads through it; the `*mut` is the C type's.
                iov_base: t.contents.as_ptr() as *mut libc::c_void,
                iov_len: t.contents.len(),
            };
        }
        let iovs = self.send_iovs.as_mut_ptr();
        let names = self.send_names.as_mut_ptr();
        for j in 0..chunk.len() {
            let m = &mut self.send_hdrs[j];
            m.msg_len = 0;
            m.msg_hdr.msg_name = names.wrapping_add(j).cast();
            m.msg_hdr.msg_iov = iovs.wrapping_add(j);
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_control = ptr::null_mut();
            m.msg_hdr.msg_controllen = 0;
            m.msg_hdr.msg_flags = 0;
        }

        let mut pos = 0;
        while pos < chunk.len() {
            let remaining = chunk.len() - pos;
            // SAFETY: headers `pos..chunk.len()` were filled above; their name and iovec pointers
            // refer to backend-owned boxes and to `chunk`'s contents, which outlive the call and
            // which the kernel only reads.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_hdrs[pos..].as_mut_ptr(),
                    remaining as libc::c_uint,
                    0,
                )
            };
            if rc > 0 {
                let n = (rc as usize).min(remaining);
                pos += n;
                stats.sent += n as u64;
                continue;
            }
            // sendmmsg reports an error only when the first remaining message failed.
            let err = if rc == 0 {
                // Not expected for vlen > 0; treat as a failure so the loop always advances.
                io::Error::from(io::ErrorKind::WriteZero)
            } else {
                io::Error::last_os_error()
            };
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            stats.failed += 1;
            if let Some(suppressed) = self.send_warn.allow() {
                log::warn!(
                    "send via listener {listener} to {} failed: {err} ({suppressed} similar \
                     suppressed)",
                    chunk[pos].destination
                );
            }
            pos += 1;
        }
    }
}

impl std::fmt::Debug for MmsgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgBackend")
            .field("sockets", &self.sockets)
            .field("families", &self.families)
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

impl Backend for MmsgBackend {
    fn recv(&mut self, batch: &mut RecvBatch, timeout: Duration) -> io::Result<usize> {
        batch.clear();
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        // SAFETY: `pollfds` is a live, exclusively borrowed array of `len()` pollfd entries.
        let rc = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                timeout_ms(timeout),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // A signal cut the wait short: report nothing received; the caller loops anyway.
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(err);
        }
        if rc == 0 {
            return Ok(0);
        }

        let n = self.sockets.len();
        if n == 0 {
            return Ok(0);
        }
        let first = self.next_first % n;
        self.next_first = (first + 1) % n;
        for k in 0..n {
            if batch.len() == batch.capacity() {
                break;
            }
            let idx = (first + k) % n;
            let revents = self.pollfds[idx].revents;
            if revents & libc::POLLNVAL != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("listener {idx}: socket is not open (POLLNVAL)"),
                ));
            }
            // POLLERR too: recvmmsg reports and clears the pending error.
            if revents & (libc::POLLIN | libc::POLLERR) != 0 {
                self.recv_socket(idx, batch)?;
            }
        }
        Ok(batch.len())
    }

    fn send(&mut self, transmits: &[Transmit<'_>]) -> SendStats {
        let mut stats = SendStats::default();
        let mut i = 0;
        while i < transmits.len() {
            // One sendmmsg per run of consecutive transmits on the same listener.
            let listener = transmits[i].listener;
            let mut end = i + 1;
            while end < transmits.len()
                && end - i < BATCH_SIZE
                && transmits[end].listener == listener
            {
                end += 1;
            }
            self.send_chunk(listener, &transmits[i..end], &mut stats);
            i = end;
        }
        stats
    }

    fn capabilities(&self) -> Capabilities {
        // GSO/GRO support comes later; until then every datagram is its own segment.
        Capabilities {
            max_gso_segments: 1,
            gro_segments: 1,
            batch_size: BATCH_SIZE,
        }
    }

    fn name(&self) -> &'static str {
        "mmsg"
    }
}

/// Errors that mean the socket itself is unusable (a bug, not the network): worth surfacing.
fn is_fatal(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL)
    )
}

/// `poll` timeout in milliseconds: rounded up (so a short timeout still waits instead of
/// spinning) and capped at `c_int::MAX`.
fn timeout_ms(timeout: Duration) -> libc::c_int {
    let ms = timeout.as_millis() + u128::from(timeout.subsec_nanos() % 1_000_000 != 0);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// Makes `dest` sendable through a socket of `family`: an IPv6 socket takes IPv4 peers
/// v4-mapped, and an IPv4 socket takes a v4-mapped IPv6 address as plain IPv4. Anything else is
/// passed through for the kernel to accept or refuse.
fn adapt_destination(dest: SocketAddr, family: Family) -> SocketAddr {
    match (dest, family) {
        (SocketAddr::V4(v4), Family::V6) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (SocketAddr::V6(v6), Family::V4) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::V4(SocketAddrV4::new(ip, v6.port())),
            None => dest,
        },
        _ => dest,
    }
}

/// Converts a kernel-filled source address; `None` for a family other than AF_INET/AF_INET6 or
/// a length too short for it.
fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is at least as large and as aligned as sockaddr_in, and
            // the family says the kernel stored one.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            // flowinfo is passed through as stored, exactly as std does, so addresses round-trip.
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `ss` in kernel form and returns its length.
fn std_to_sockaddr(addr: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            let mut sin: libc::sockaddr_in = zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            // SAFETY: sockaddr_storage is at least as large and as aligned as sockaddr_in, and
            // `ss` is exclusively borrowed.
            unsafe { ptr::write((ss as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            let mut sin6: libc::sockaddr_in6 = zeroed();
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_scope_id = v6.scope_id();
            // SAFETY: as above, for sockaddr_in6.
            unsafe { ptr::write((ss as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The SO_RXQ_OVFL drop count in a received message's control data, if present.
fn rxq_ovfl(hdr: &libc::msghdr) -> Option<u32> {
    let mut found = None;
    // SAFETY: `hdr` was filled by recvmmsg: msg_control points to a live CmsgBuf and
    // msg_controllen is what the kernel wrote (at most its size), so the CMSG_* walk stays in
    // bounds. The payload is read unaligned because CMSG_DATA gives no alignment guarantee.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL
                && (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(4) as usize
            {
                found = Some(ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<u32>()));
            }
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    found
}

/// C structs for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for types made of integers, byte arrays and raw pointers (zero means null).
unsafe trait Zeroable: Sized {}
// SAFETY: integers and raw pointers only.
unsafe impl Zeroable for libc::mmsghdr {}
// SAFETY: a raw pointer and a length.
unsafe impl Zeroable for libc::iovec {}
// SAFETY: integers and padding bytes only.
unsafe impl Zeroable for libc::sockaddr_storage {}
// SAFETY: integers only.
unsafe impl Zeroable for libc::sockaddr_in {}
// SAFETY: integers and a byte array only.
unsafe impl Zeroable for libc::sockaddr_in6 {}

/// A zeroed C struct.
fn zeroed<T: Zeroable>() -> T {
    // SAFETY: `T: Zeroable` guarantees all-zero is a valid T.
    unsafe { mem::zeroed::<T>() }
}

/// A boxed slice of `n` zeroed C structs; pointers in them are null until set.
fn zeroed_slice<T: Zeroable>(n: usize) -> Box<[T]> {
    (0..n).map(|_| zeroed()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::socket::{bind_udp, SocketOptions};

    /// Upper bound on any wait in these tests.
    const DEADLINE: Duration = Duration::from_secs(5);

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address literal")
    }

    fn have_ipv6() -> bool {
        match UdpSocket::bind("[::1]:0") {
            Ok(_) => true,
            Err(e) => {
                println!("skipping: no IPv6 on this host ({e})");
                false
            }
        }
    }

    fn backend(addrs: &[&str]) -> MmsgBackend {
        let sockets = addrs
            .iter()
            .map(|a| bind_udp(addr(a), &SocketOptions::default()).expect("bind"))
            .collect();
        MmsgBackend::new(sockets)
    }

    fn local(b: &MmsgBackend, listener: usize) -> SocketAddr {
        b.sockets()[listener].local_addr().expect("local_addr")
    }

    /// Where a sender of `from`'s family reaches a receiver bound to `to` (a wildcard bind is
    /// reached on the sender's loopback address).
    fn reachable(to: SocketAddr, from: SocketAddr) -> SocketAddr {
        if !to.ip().is_unspecified() {
            return to;
        }
        match from {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, to.port())),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, to.port())),
        }
    }

    /// The source a receiver bound to `to` sees for a sender bound to `from`.
    fn seen_as(from: SocketAddr, to: SocketAddr) -> SocketAddr {
        match (from, to) {
            (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            _ => from,
        }
    }

    /// Receives until `want` datagrams arrived or the deadline passed (bounded both ways).
    fn recv_n(b: &mut MmsgBackend, want: usize) -> Vec<(RecvMeta, Vec<u8>)> {
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
            out.extend(batch.iter().map(|(m, d)| (*m, d.to_vec())));
        }
        out
    }

    /// quinn-udp style round trip: `tx` sends `payloads` to `rx`; all arrive, in order, with
    /// the right contents and source address.
    fn send_recv(tx_addr: &str, rx_addr: &str, payloads: &[Vec<u8>]) {
        let mut tx = backend(&[tx_addr]);
        let mut rx = backend(&[rx_addr]);
        let (src, dst) = (local(&tx, 0), local(&rx, 0));
        let destination = reachable(dst, src);
        let transmits: Vec<Transmit<'_>> = payloads
            .iter()
            .map(|p| Transmit {
                listener: 0,
                destination,
                contents: p,
            })
            .collect();

        let stats = tx.send(&transmits);
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
    fn payloads(count: usize) -> Vec<Vec<u8>> {
        (0..count)
            .map(|i| {
                let mut p = (i as u32).to_be_bytes().to_vec();
                p.resize(4 + (i * 37) % 1400, i as u8);
                p
            })
            .collect()
    }

    #[test]
    fn basic_v4() {
        let mut p = payloads(5);
        p.push(Vec::new()); // empty datagrams are legal UDP
        p.push(vec![0xAB; MAX_DATAGRAM_LEN]); // exactly fits: not truncated
        send_recv("127.0.0.1:0", "127.0.0.1:0", &p);
    }

    #[test]
    fn larger_than_batch_arrives_in_order() {
        send_recv("127.0.0.1:0", "127.0.0.1:0", &payloads(200));
    }

    #[test]
    fn ipv6_loopback() {
        if have_ipv6() {
            send_recv("[::1]:0", "[::1]:0", &payloads(100));
        }
    }

    #[test]
    fn dual_stack_receives_v4_mapped() {
        if !have_ipv6() {
            return;
        }
        send_recv("127.0.0.1:0", "[::]:0", &payloads(10));
    }

    #[test]
    fn dual_stack_replies_reach_v4_peer() {
        if !have_ipv6() {
            return;
        }
        let mut v4 = backend(&["127.0.0.1:0"]);
        let mut ds = backend(&["[::]:0"]);
        let ds_port = local(&ds, 0).port();
        let v4_addr = local(&v4, 0);
        let hello = Transmit {
            listener: 0,
            destination: SocketAddr::from((Ipv4Addr::LOCALHOST, ds_port)),
            contents: b"hello",
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
            },
            Transmit {
                listener: 0,
                destination: v4_addr,
                contents: b"reply-plain",
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

    #[test]
    fn two_listeners_tag_and_reply() {
        let mut client = backend(&["127.0.0.1:0"]);
        let mut relay = backend(&["127.0.0.1:0", "127.0.0.1:0"]);
        let client_addr = local(&client, 0);
        let listeners = [local(&relay, 0), local(&relay, 1)];
        let to_relay: Vec<Transmit<'_>> = (0..6)
            .map(|i| Transmit {
                listener: 0,
                destination: listeners[i % 2],
                contents: if i % 2 == 0 { b"to-0" } else { b"to-1" },
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

    #[test]
    fn busy_listener_does_not_starve_another() {
        let mut client = backend(&["127.0.0.1:0"]);
        let mut relay = backend(&["127.0.0.1:0", "127.0.0.1:0"]);
        let (busy, quiet) = (local(&relay, 0), local(&relay, 1));
        let flood: Vec<Transmit<'_>> = (0..3 * BATCH_SIZE)
            .map(|_| Transmit {
                listener: 0,
                destination: busy,
                contents: b"flood",
            })
            .collect();
        assert_eq!(client.send(&flood).sent, flood.len() as u64);
        let one = Transmit {
            listener: 0,
            destination: quiet,
            contents: b"quiet",
        };
        assert_eq!(client.send(&[one]).sent, 1);

        // Whichever listener goes first fills the batch; the next call starts with the other.
        let mut batch = RecvBatch::new();
        let mut seen_quiet = false;
        for _ in 0..2 {
            relay
                .recv(&mut batch, Duration::from_millis(500))
                .expect("recv");
            seen_quiet |= batch.iter().any(|(m, _)| m.listener == 1);
        }
        assert!(seen_quiet, "listener 1 starved by listener 0");
    }

    #[test]
    fn timeout_returns_zero() {
        let mut b = backend(&["127.0.0.1:0"]);
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
    }

    #[test]
    fn backend_without_sockets_just_times_out() {
        let mut b = MmsgBackend::new(Vec::new());
        let mut batch = RecvBatch::new();
        let n = b.recv(&mut batch, Duration::from_millis(10)).expect("recv");
        assert_eq!(n, 0);
        let t = Transmit {
            listener: 0,
            destination: addr("127.0.0.1:9"),
            contents: b"x",
        };
        assert_eq!(b.send(&[t]), SendStats { sent: 0, failed: 1 });
    }

    #[test]
    fn timeout_ms_rounds_up_and_caps() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(7)), 7);
        assert_eq!(timeout_ms(Duration::from_micros(7001)), 8);
        assert_eq!(timeout_ms(Duration::MAX), libc::c_int::MAX);
    }

    #[test]
    fn oversized_datagram_is_truncated() {
        let mut tx = backend(&["127.0.0.1:0"]);
        let mut rx = backend(&["127.0.0.1:0"]);
        let big: Vec<u8> = (0..9300u32).map(|i| i as u8).collect();
        let small = b"after".to_vec();
        let destination = local(&rx, 0);
        let t = [
            Transmit {
                listener: 0,
                destination,
                contents: &big,
            },
            Transmit {
                listener: 0,
                destination,
                contents: &small,
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

    #[test]
    fn failed_destination_is_counted_and_others_still_go() {
        let mut tx = backend(&["127.0.0.1:0"]);
        let mut rx = backend(&["127.0.0.1:0"]);
        let good = local(&rx, 0);
        let bad = addr("[::1]:9"); // IPv6 through an IPv4 socket: refused by the kernel
        let t: Vec<Transmit<'_>> = [good, bad, good, bad, bad, good]
            .iter()
            .enumerate()
            .map(|(i, &destination)| Transmit {
                listener: 0,
                destination,
                contents: [b"a", b"b", b"c", b"d", b"e", b"f"][i],
            })
            .collect();
        assert_eq!(tx.send(&t), SendStats { sent: 3, failed: 3 });
        let got = recv_n(&mut rx, 3);
        let contents: Vec<&[u8]> = got.iter().map(|(_, d)| d.as_slice()).collect();
        assert_eq!(contents, [b"a", b"c", b"f"]);
    }

    #[test]
    fn unknown_listener_is_counted_failed() {
        let mut tx = backend(&["127.0.0.1:0"]);
        let mut rx = backend(&["127.0.0.1:0"]);
        let destination = local(&rx, 0);
        let t = [
            Transmit {
                listener: 7,
                destination,
                contents: b"nowhere",
            },
            Transmit {
                listener: 0,
                destination,
                contents: b"ok",
            },
        ];
        assert_eq!(tx.send(&t), SendStats { sent: 1, failed: 1 });
        let got = recv_n(&mut rx, 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, b"ok");
    }

    #[test]
    fn kernel_drops_are_reported() {
        let tiny = SocketOptions {
            reuse_port: false,
            recv_buffer: 4096,
            send_buffer: 0,
        };
        let rx_sock = bind_udp(addr("127.0.0.1:0"), &tiny).expect("bind");
        let mut rx = MmsgBackend::new(vec![rx_sock]);
        let mut tx = backend(&["127.0.0.1:0"]);
        let destination = local(&rx, 0);
        let payload = [0u8; 1000];
        let flood: Vec<Transmit<'_>> = (0..200)
            .map(|_| Transmit {
                listener: 0,
                destination,
                contents: &payload,
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

    #[test]
    fn sockaddr_round_trip_keeps_v6_scope_and_flowinfo() {
        let cases = [
            addr("192.0.2.7:51820"),
            SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().expect("literal"),
                51820,
                0x1234,
                3,
            )),
        ];
        for a in cases {
            let mut ss: libc::sockaddr_storage = zeroed();
            let len = std_to_sockaddr(a, &mut ss);
            assert_eq!(sockaddr_to_std(&ss, len), Some(a));
            assert_eq!(sockaddr_to_std(&ss, len - 1), None, "short length rejected");
        }
        let unspec: libc::sockaddr_storage = zeroed();
        assert_eq!(sockaddr_to_std(&unspec, 128), None);
    }

    #[test]
    fn adapt_destination_maps_families() {
        let v4 = addr("127.0.0.1:5");
        let mapped = addr("[::ffff:127.0.0.1]:5");
        assert_eq!(adapt_destination(v4, Family::V6), mapped);
        assert_eq!(adapt_destination(mapped, Family::V4), v4);
        assert_eq!(
            adapt_destination(addr("[::1]:5"), Family::V4),
            addr("[::1]:5")
        );
        assert_eq!(adapt_destination(v4, Family::Unknown), v4);
    }

    #[test]
    fn backend_is_send_and_reports_capabilities() {
        fn assert_send<T: Send>() {}
        assert_send::<MmsgBackend>();
        let b = backend(&["127.0.0.1:0"]);
        assert_eq!(b.name(), "mmsg");
        let caps = b.capabilities();
        assert_eq!(caps.batch_size, BATCH_SIZE);
        assert_eq!((caps.max_gso_segments, caps.gro_segments), (1, 1));
    }
}
