//! Portable Linux backend: `poll(2)` + `recvmmsg(2)` / `sendmmsg(2)`, with optional UDP GSO on
//! send and UDP GRO on receive ([`Offload`]).
//!
//! All system-call structures (mmsghdr, iovec, sockaddr and control buffers) are allocated once
//! in [`MmsgBackend::with_offload`]; `recv` and `send` only refill them, so the hot path never
//! allocates.
//!
//! - **GSO:** `send` groups consecutive transmits to one destination whose lengths follow the
//!   kernel's rule (all equal, the last one may be shorter) into one message: one iovec per
//!   datagram, so nothing is copied, and a UDP_SEGMENT control message. If the kernel refuses a
//!   GSO message with `EIO` (no checksum offload on the egress device) or `EINVAL`, GSO is
//!   turned off for good and those datagrams are sent again one by one.
//! - **GRO:** a listener with UDP_GRO receives into batch slots big enough for a coalesced run
//!   ([`GRO_BUF_LEN`]); the run stays whole where the kernel put it, and the batch reads it as
//!   its datagrams. Nothing is copied either way.

use std::io;
use std::mem;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::time::Duration;

use super::socket::GSO_MAX_SEGMENTS;
use super::sys::{
    drop_unusable_source, gso_group, link_header, sockaddr_to_std, split_unsendable, stage_message,
    warn_truncated_run, warn_unusable_source, zeroed_slice, CmsgBuf, Listeners, RateLimit,
    RecvControl, RecvRun, CMSG_BUF_LEN, GRO_BUF_LEN,
};
use super::{recycled, Backend, Capabilities, Offload, RecvBatch, SendStats, Transmit};
use super::{BATCH_SIZE, MAX_DATAGRAM_LEN};

/// Iovecs of one `sendmmsg`: one per datagram, up to [`GSO_MAX_SEGMENTS`] per message.
const SEND_IOVS: usize = BATCH_SIZE * GSO_MAX_SEGMENTS;

/// [`Backend`] over `poll` + `recvmmsg`/`sendmmsg`. Socket `i` is listener `i`.
pub struct MmsgBackend {
    /// The sockets, their families, drop counts and offloads.
    listeners: Listeners,
    /// One entry per listener (entry `i` is socket `i`), then the waker, if one is set.
    pollfds: Vec<libc::pollfd>,
    /// The waker's fd (see [`Backend::set_waker`]): its entry is the last of `pollfds`.
    waker: Option<libc::c_int>,
    /// Listener served first by the next `recv`, rotated so a busy one cannot starve the rest.
    next_first: usize,
    /// Some listener has UDP_GRO on: the batch's slots must hold a coalesced run.
    any_gro: bool,

    // Receive side, allocated once. The header pointers (into the boxes below, the caller's
    // batch or a GRO scratch buffer) are refreshed on every call, each derived from one base
    // pointer taken after the last write to its target, so no later borrow invalidates a
    // pointer the kernel will use.
    recv_hdrs: Box<[libc::mmsghdr]>,
    recv_iovs: Box<[libc::iovec]>,
    recv_names: Box<[libc::sockaddr_storage]>,
    recv_ctrl: Box<[CmsgBuf]>,

    // Send side, same scheme; `iov_base` points into the caller's transmits during a call only.
    send_hdrs: Box<[libc::mmsghdr]>,
    send_iovs: Box<[libc::iovec]>,
    send_names: Box<[libc::sockaddr_storage]>,
    send_ctrl: Box<[CmsgBuf]>,
    /// Per message of the current `sendmmsg`: which transmits it carries.
    send_groups: Box<[Group]>,
    /// Storage of the split-up send lists (runs sent datagram by datagram), kept empty.
    split: Vec<Transmit<'static>>,

    send_warn: RateLimit,
    recv_warn: RateLimit,
    /// errno of the last datagrams a send dropped (see [`MmsgBackend::last_send_errno`]).
    last_send_errno: Option<i32>,

    /// Test hook: the next GSO message fails with this errno without reaching the kernel.
    #[cfg(test)]
    fail_next_gso: super::testkit::GsoHook,
    /// Test counter: coalesced runs (more than one datagram) received with GRO.
    #[cfg(test)]
    gro_runs: usize,
}

// SAFETY: the raw pointers inside the mmsghdr/iovec arrays are either into heap storage this
// struct owns (and moves with it) or stale pointers into caller buffers that are overwritten
// before every system call and never dereferenced otherwise. Nothing is shared with another
// thread, so moving the backend to a shard thread is sound. It is deliberately not `Sync`.
unsafe impl Send for MmsgBackend {}

/// One `sendmmsg` message: it starts at `run[first]`, and its iovecs at `iov`.
#[derive(Debug, Clone, Copy, Default)]
struct Group {
    first: usize,
    iov: usize,
    /// Iovecs used (adjacent contents share one).
    iovs: usize,
    /// Datagrams it carries (a run counts each).
    datagrams: usize,
    /// A GSO message (UDP_SEGMENT).
    gso: bool,
}

impl MmsgBackend {
    /// Wraps `sockets` without offloads ([`Offload::OFF`]); socket `i` becomes listener `i`.
    /// See [`MmsgBackend::with_offload`].
    pub fn new(sockets: Vec<UdpSocket>) -> Self {
        Self::with_offload(sockets, Offload::OFF)
    }

    /// Wraps `sockets`; socket `i` becomes listener `i`. The sockets may be blocking (as
    /// [`super::bind_udp`] leaves them): receives use MSG_DONTWAIT, and blocking sends give
    /// backpressure. A non-blocking socket works too, but a full send buffer then counts as
    /// `failed`.
    ///
    /// Each offload that `offload` asks for is probed on every socket (GRO is switched on
    /// there); where the kernel lacks it, that listener runs without it.
    pub fn with_offload(sockets: Vec<UdpSocket>, offload: Offload) -> Self {
        let listeners = Listeners::new(sockets, offload);
        let pollfds = listeners
            .sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let any_gro = listeners.gro.iter().any(|&g| g);

        MmsgBackend {
            listeners,
            pollfds,
            waker: None,
            next_first: 0,
            any_gro,
            recv_hdrs: zeroed_slice(BATCH_SIZE),
            recv_iovs: zeroed_slice(BATCH_SIZE),
            recv_names: zeroed_slice(BATCH_SIZE),
            recv_ctrl: vec![CmsgBuf::ZERO; BATCH_SIZE].into_boxed_slice(),
            send_hdrs: zeroed_slice(BATCH_SIZE),
            send_iovs: zeroed_slice(SEND_IOVS),
            send_names: zeroed_slice(BATCH_SIZE),
            send_ctrl: vec![CmsgBuf::ZERO; BATCH_SIZE].into_boxed_slice(),
            send_groups: vec![Group::default(); BATCH_SIZE].into_boxed_slice(),
            split: Vec::new(),
            send_warn: RateLimit::default(),
            recv_warn: RateLimit::default(),
            last_send_errno: None,
            #[cfg(test)]
            fail_next_gso: None,
            #[cfg(test)]
            gro_runs: 0,
        }
    }

    /// The sockets, indexed by listener.
    pub fn sockets(&self) -> &[UdpSocket] {
        &self.listeners.sockets
    }

    /// Datagrams the kernel dropped on these sockets (receive buffer full), as last reported via
    /// SO_RXQ_OVFL. Stays 0 where the option is unavailable. The kernel attaches the count to
    /// datagrams queued after a drop, so it lags until the next datagram is received.
    pub fn kernel_drops(&self) -> u64 {
        self.listeners.kernel_drops()
    }

    /// Receives what is waiting on listener `listener` alone into `batch` (cleared first),
    /// without waiting: for a caller that knows which socket is readable (its own readiness
    /// loop over many sockets, where `recv`'s `poll` of every one would cost too much), or that
    /// just tries. Returns how many datagrams, 0 when nothing was waiting (or no such
    /// listener). Same receive path and errors as [`Backend::recv`].
    ///
    /// # Errors
    /// The socket is unusable (EBADF, ENOTSOCK, EFAULT, EINVAL from recvmmsg).
    pub fn recv_from(&mut self, listener: usize, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.clear();
        if listener >= self.listeners.sockets.len() {
            return Ok(0);
        }
        if self.any_gro {
            batch.reserve_slots(GRO_BUF_LEN);
        }
        self.recv_socket(listener, batch)?;
        Ok(batch.len())
    }

    /// The errno of the last datagrams a send dropped (the kernel's refusal, or EAFNOSUPPORT
    /// for a source address the socket cannot send from), `None` before any: what
    /// [`SendStats::failed`] counted, for a caller that reports why.
    pub fn last_send_errno(&self) -> Option<i32> {
        self.last_send_errno
    }

    /// Receives from listener `idx` into the free slots of `batch`, each message (a datagram,
    /// or with GRO a coalesced run) kept whole in its slot.
    fn recv_socket(&mut self, idx: usize, batch: &mut RecvBatch) -> io::Result<()> {
        let free = batch.free_slots();
        if free == 0 {
            return Ok(());
        }
        let gro = self.listeners.gro[idx];
        // A listener without GRO gets MAX_DATAGRAM_LEN of a (maybe larger) slot, so longer
        // datagrams come back truncated whatever the other listeners need.
        let room = if gro { GRO_BUF_LEN } else { MAX_DATAGRAM_LEN }.min(batch.slot_len());
        let slot_len = batch.slot_len();
        let (first, base) = batch.slots();
        let iovs = self.recv_iovs.as_mut_ptr();
        let names = self.recv_names.as_mut_ptr();
        let ctrl = self.recv_ctrl.as_mut_ptr();
        for k in 0..free {
            self.recv_iovs[k] = libc::iovec {
                iov_base: base.wrapping_add((first + k) * slot_len).cast(),
                iov_len: room,
            };
            let m = &mut self.recv_hdrs[k];
            m.msg_len = 0;
            let h = &mut m.msg_hdr;
            h.msg_name = names.wrapping_add(k).cast();
            // The kernel overwrites the lengths and flags on every receive.
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iovs.wrapping_add(k);
            h.msg_iovlen = 1;
            h.msg_control = ctrl.wrapping_add(k).cast();
            h.msg_controllen = CMSG_BUF_LEN as _;
            h.msg_flags = 0;
        }
        let fd = self.listeners.sockets[idx].as_raw_fd();
        let got = loop {
            // SAFETY: headers `0..free` were filled above; their name, iovec and control
            // pointers refer to live buffers of the stated lengths: backend-owned boxes, and
            // slots `first..first + free` of the exclusively borrowed `batch` (free, `room` <=
            // `slot_len` bytes each, in bounds: `first + free <= BATCH_SIZE`), derived from one
            // base pointer taken after the batch's last write. A null timeout is allowed.
            let rc = unsafe {
                libc::recvmmsg(
                    fd,
                    self.recv_hdrs.as_mut_ptr(),
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
        batch.take_slots(got);
        for k in 0..got {
            let hdr = &self.recv_hdrs[k];
            let truncated = hdr.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let namelen = hdr.msg_hdr.msg_namelen;
            // The kernel wrote `msg_controllen` bytes (at most the CMSG_BUF_LEN it was given).
            #[allow(clippy::unnecessary_cast)] // usize on glibc, socklen_t on musl
            let ctrl_len = (hdr.msg_hdr.msg_controllen as usize).min(CMSG_BUF_LEN);
            let control = RecvControl::parse(&self.recv_ctrl[k].0[..ctrl_len]);
            if let Some(d) = control.rxq_ovfl {
                self.listeners.drops[idx] = d;
            }
            let Some(addr) = sockaddr_to_std(&self.recv_names[k], namelen) else {
                warn_unusable_source(&mut self.recv_warn, idx);
                continue;
            };
            let len = (hdr.msg_len as usize).min(room);
            let run = RecvRun {
                addr,
                local: control.local_for(&addr),
                len,
                stride: if gro { control.stride(len) } else { len.max(1) },
                truncated,
            };
            if run.is_coalesced() && run.truncated {
                warn_truncated_run(&mut self.recv_warn, idx);
            }
            #[cfg(test)]
            if run.is_coalesced() {
                self.gro_runs += 1;
            }
            batch.push_slot(first + k, run, idx);
        }
        Ok(())
    }

    /// Sends `run` (transmits that all go through `listener`), in as many `sendmmsg` calls as
    /// it takes.
    fn send_run(&mut self, listener: usize, run: &[Transmit<'_>], stats: &mut SendStats) {
        let Some(sock) = self.listeners.sockets.get(listener) else {
            stats.failed += run.iter().map(|t| t.datagrams() as u64).sum::<u64>();
            if let Some(suppressed) = self.send_warn.allow() {
                log::warn!(
                    "send via listener {listener}: no such listener ({} sockets); {} datagrams \
                     dropped ({suppressed} similar suppressed)",
                    self.listeners.sockets.len(),
                    run.len()
                );
            }
            return;
        };
        let fd = sock.as_raw_fd();
        let mut had_gso = self.listeners.gso[listener] > 1;
        let mut next = 0;
        while next < run.len() {
            next = self.send_round(fd, listener, run, next, stats);
            if had_gso && next < run.len() && self.listeners.gso[listener] <= 1 {
                had_gso = false;
                // GSO was refused and is off now: runs still to go are sent one by one
                let mut rest = recycled(mem::take(&mut self.split));
                if split_unsendable(&run[next..], &self.listeners.gso, &mut rest) {
                    let mut k = 0;
                    while k < rest.len() {
                        k = self.send_round(fd, listener, &rest, k, stats);
                    }
                    self.split = recycled(rest);
                    return;
                }
                self.split = recycled(rest);
            }
        }
    }

    /// One `sendmmsg` (retried past refused messages) of up to [`BATCH_SIZE`] messages, from
    /// `run[from..]`. Returns where the next round starts: after the last transmit it covered,
    /// or at the first transmit of a GSO message the kernel refused (GSO is then off, so the
    /// next round sends those datagrams one by one; none was sent, so none is duplicated).
    fn send_round(
        &mut self,
        fd: libc::c_int,
        listener: usize,
        run: &[Transmit<'_>],
        from: usize,
        stats: &mut SendStats,
    ) -> usize {
        let family = self.listeners.families[listener];
        let max_segments = self.listeners.gso[listener];
        let (mut msgs, mut iov, mut i) = (0, 0, from);
        while i < run.len() && msgs < BATCH_SIZE {
            let (count, segment) = gso_group(&run[i..], max_segments);
            let group = &run[i..i + count];
            let Some((namelen, ctrl_len, iovs)) = stage_message(
                group,
                family,
                segment,
                &mut self.send_names[msgs],
                &mut self.send_iovs[iov..iov + count],
                &mut self.send_ctrl[msgs],
            ) else {
                stats.failed += drop_unusable_source(&mut self.send_warn, listener, group);
                self.last_send_errno = Some(libc::EAFNOSUPPORT);
                i += count;
                continue;
            };
            let h = &mut self.send_hdrs[msgs];
            h.msg_hdr.msg_namelen = namelen;
            h.msg_hdr.msg_controllen = ctrl_len as _;
            self.send_groups[msgs] = Group {
                first: i,
                iov,
                iovs,
                datagrams: run[i..i + count].iter().map(Transmit::datagrams).sum(),
                gso: segment.is_some(),
            };
            msgs += 1;
            iov += iovs;
            i += count;
        }
        let iovs = self.send_iovs.as_mut_ptr();
        let names = self.send_names.as_mut_ptr();
        let ctrl = self.send_ctrl.as_mut_ptr();
        for j in 0..msgs {
            let g = self.send_groups[j];
            let m = &mut self.send_hdrs[j];
            m.msg_len = 0;
            link_header(
                &mut m.msg_hdr,
                names.wrapping_add(j),
                iovs.wrapping_add(g.iov),
                g.iovs,
                ctrl.wrapping_add(j),
            );
        }

        let mut pos = 0;
        while pos < msgs {
            match self.sendmmsg(fd, pos, msgs) {
                Ok(n) => {
                    for g in &self.send_groups[pos..pos + n] {
                        stats.sent += g.datagrams as u64;
                    }
                    pos += n;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // sendmmsg reports an error only when the first remaining message failed.
                Err(err) => {
                    let g = self.send_groups[pos];
                    if g.gso && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                        self.listeners.disable_gso(listener, &err);
                        return g.first;
                    }
                    stats.failed += g.datagrams as u64;
                    self.last_send_errno = err.raw_os_error();
                    if let Some(suppressed) = self.send_warn.allow() {
                        log::warn!(
                            "send via listener {listener} to {} failed: {err} ({} datagrams; \
                             {suppressed} similar suppressed)",
                            run[g.first].destination,
                            g.datagrams
                        );
                    }
                    pos += 1;
                }
            }
        }
        i
    }

    /// `sendmmsg` of headers `pos..msgs`: how many messages went (at least 1), or the error of
    /// message `pos`.
    fn sendmmsg(&mut self, fd: libc::c_int, pos: usize, msgs: usize) -> io::Result<usize> {
        // Test hook: behave like a kernel that refuses the next GSO message, sending the
        // messages before it and stopping there.
        #[cfg(test)]
        let msgs = match self.fail_next_gso {
            Some(errno) => match (pos..msgs).find(|&j| self.send_groups[j].gso) {
                Some(j) if j == pos => {
                    self.fail_next_gso = None;
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Some(j) => j,
                None => msgs,
            },
            None => msgs,
        };
        let remaining = msgs - pos;
        // SAFETY: headers `pos..msgs` were filled by `send_round`; their name, iovec and control
        // pointers refer to backend-owned boxes and to the transmits' contents, which outlive
        // the call and which the kernel only reads; each iovec range is in bounds of
        // `send_iovs` (at most SEND_IOVS in all).
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                self.send_hdrs[pos..].as_mut_ptr(),
                remaining as libc::c_uint,
                0,
            )
        };
        if rc > 0 {
            Ok((rc as usize).min(remaining))
        } else if rc == 0 {
            // Not expected for vlen > 0; a failure, so the caller's loop always advances.
            Err(io::Error::from(io::ErrorKind::WriteZero))
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl std::fmt::Debug for MmsgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmsgBackend")
            .field("sockets", &self.listeners.sockets)
            .field("families", &self.listeners.families)
            .field("drops", &self.listeners.drops)
            .field("gso", &self.listeners.gso)
            .field("gro", &self.listeners.gro)
            .finish_non_exhaustive()
    }
}

impl Backend for MmsgBackend {
    fn drops(&self) -> super::Drops {
        super::Drops {
            kernel: self.kernel_drops(),
            enobufs: 0,
        }
    }

    fn recv(&mut self, batch: &mut RecvBatch, timeout: Duration) -> io::Result<usize> {
        batch.clear();
        if self.any_gro {
            batch.reserve_slots(GRO_BUF_LEN);
        }
        for p in &mut self.pollfds {
            p.revents = 0;
        }
        let wait = timeout_ms(timeout);
        // SAFETY: `pollfds` is a live, exclusively borrowed array of `len()` pollfd entries.
        let rc = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                wait,
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // A signal cut the wait short: report nothing received; the caller loops anyway.
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
            return Ok(0);
        } else if rc == 0 {
            return Ok(0);
        }
        // A readable waker only ends the wait (the caller drains it); the sockets that are
        // ready are still read below. POLLNVAL would make every later poll return at once: a
        // closed waker is a caller bug, so say so instead of spinning.
        if self.waker.is_some() {
            if let Some(w) = self.pollfds.last() {
                if w.revents & libc::POLLNVAL != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("waker fd {} is not open (POLLNVAL)", w.fd),
                    ));
                }
            }
        }

        let n = self.listeners.sockets.len();
        if n == 0 {
            return Ok(0);
        }
        let first = self.next_first % n;
        self.next_first = (first + 1) % n;
        for k in 0..n {
            if batch.is_full() {
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
        // runs a listener cannot send as one GSO message go datagram by datagram
        let mut split = recycled(mem::take(&mut self.split));
        let transmits = if split_unsendable(transmits, &self.listeners.gso, &mut split) {
            &split[..]
        } else {
            transmits
        };
        let mut i = 0;
        while i < transmits.len() {
            // Runs of consecutive transmits on the same listener share system calls.
            let listener = transmits[i].listener;
            let mut end = i + 1;
            while end < transmits.len() && transmits[end].listener == listener {
                end += 1;
            }
            self.send_run(listener, &transmits[i..end], &mut stats);
            i = end;
        }
        self.split = recycled(split);
        stats
    }

    fn capabilities(&self) -> Capabilities {
        self.listeners.capabilities()
    }

    fn name(&self) -> &'static str {
        "mmsg"
    }

    fn set_waker(&mut self, waker: RawFd) -> io::Result<()> {
        if waker < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("waker fd {waker}"),
            ));
        }
        let entry = libc::pollfd {
            fd: waker,
            events: libc::POLLIN,
            revents: 0,
        };
        if self.waker.is_some() {
            self.pollfds.pop();
        }
        self.pollfds.push(entry);
        self.waker = Some(waker);
        Ok(())
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
    use crate::io::testkit::{
        bind, conformance_tests, every_backend_test, offload_tests, Combo, GsoHook, TestBackend,
    };

    impl TestBackend for MmsgBackend {
        fn unavailable() -> Option<String> {
            None
        }
        fn from_sockets(sockets: Vec<UdpSocket>) -> Self {
            MmsgBackend::new(sockets)
        }
        fn with_offload(sockets: Vec<UdpSocket>, offload: Offload) -> Self {
            MmsgBackend::with_offload(sockets, offload)
        }
        fn sockets(&self) -> &[UdpSocket] {
            MmsgBackend::sockets(self)
        }
        fn kernel_drops(&self) -> u64 {
            MmsgBackend::kernel_drops(self)
        }
        fn gro_runs(&self) -> usize {
            self.gro_runs
        }
        fn gso_hook(&mut self) -> &mut GsoHook {
            &mut self.fail_next_gso
        }
    }

    every_backend_test!(MmsgBackend);

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
