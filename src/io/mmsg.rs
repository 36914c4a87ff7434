//! Portable Linux backend: `poll(2)` + `recvmmsg(2)` / `sendmmsg(2)`.
//!
//! All system-call structures (mmsghdr, iovec, sockaddr and control buffers) are allocated once
//! in [`MmsgBackend::new`]; `recv` and `send` only refill them, so the hot path never allocates.

use std::io;
use std::mem;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::ptr;
use std::time::Duration;

use super::sys::{
    adapt_destination, rxq_ovfl, sockaddr_to_std, std_to_sockaddr, zeroed_slice, CmsgBuf, Family,
    RateLimit, CMSG_BUF_LEN,
};
use super::{Backend, Capabilities, RecvBatch, RecvMeta, SendStats, Transmit};
use super::{BATCH_SIZE, MAX_DATAGRAM_LEN};

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
        let families = Family::of_sockets(&sockets);
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
            recv_ctrl: vec![CmsgBuf::ZERO; BATCH_SIZE].into_boxed_slice(),
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
            // The kernel wrote `msg_controllen` bytes (at most the CMSG_BUF_LEN it was given).
            #[allow(clippy::unnecessary_cast)] // usize on glibc, socklen_t on musl
            let ctrl_len = (hdr.msg_hdr.msg_controllen as usize).min(CMSG_BUF_LEN);
            if let Some(d) = rxq_ovfl(&self.recv_ctrl[slot].0[..ctrl_len]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testkit::{bind, conformance_tests, TestBackend};

    impl TestBackend for MmsgBackend {
        fn unavailable() -> Option<String> {
            None
        }
        fn from_sockets(sockets: Vec<UdpSocket>) -> Self {
            MmsgBackend::new(sockets)
        }
        fn sockets(&self) -> &[UdpSocket] {
            MmsgBackend::sockets(self)
        }
        fn kernel_drops(&self) -> u64 {
            MmsgBackend::kernel_drops(self)
        }
    }

    conformance_tests!(MmsgBackend);

    #[test]
    fn timeout_ms_rounds_up_and_caps() {
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::from_millis(7)), 7);
        assert_eq!(timeout_ms(Duration::from_micros(7001)), 8);
        assert_eq!(timeout_ms(Duration::MAX), libc::c_int::MAX);
    }

    #[test]
    fn backend_is_send_and_reports_capabilities() {
        fn assert_send<T: Send>() {}
        assert_send::<MmsgBackend>();
        let b: MmsgBackend = bind(&["127.0.0.1:0"]);
        assert_eq!(b.name(), "mmsg");
        let caps = b.capabilities();
        assert_eq!(caps.batch_size, BATCH_SIZE);
        assert_eq!((caps.max_gso_segments, caps.gro_segments), (1, 1));
    }
}
