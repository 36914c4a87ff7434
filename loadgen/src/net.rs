//! Loopback UDP plumbing shared by the load generator and the null relay: socket setup,
//! sendmmsg batches with optional per-message source address (IP_PKTINFO) and UDP GSO
//! (UDP_SEGMENT), recvmmsg batches that report the destination address and the UDP GRO
//! segment size, and a small epoll wrapper.
//!
//! IPv4 only: everything runs on 127.0.0.0/8.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

use socket2::{Domain, Protocol, Socket, Type};

/// Datagrams per sendmmsg/recvmmsg call (the same as wgrelay's `io::BATCH_SIZE`).
pub const BATCH: usize = 64;
/// Receive slot without GRO: the largest WireGuard datagram on a 1500-byte path fits.
pub const SLOT_PLAIN: usize = 2048;
/// Receive slot with GRO: a coalesced run can be up to 64 KiB.
pub const SLOT_GRO: usize = 65536;
/// Largest UDP payload of one (GSO) send.
pub const MAX_UDP_PAYLOAD: usize = 65507;
/// Kernel `UDP_MAX_SEGMENTS`.
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Room for IP_PKTINFO (CMSG_SPACE(12) = 32) plus UDP_SEGMENT/UDP_GRO (CMSG_SPACE(2 or 4) = 16).
const CMSG_LEN: usize = 64;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Cmsg([u8; CMSG_LEN]);

/// How to set up one socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct SockOpts {
    /// Report the destination address of received datagrams and allow setting the source per send.
    pub pktinfo: bool,
    /// Enable UDP_GRO on receive.
    pub gro: bool,
    /// Restrict a wildcard-bound socket to the loopback device (SO_BINDTODEVICE "lo").
    pub loopback_only: bool,
    /// SO_RCVBUF/SO_SNDBUF in bytes (0: kernel default). FORCE variants are tried first.
    pub buffer: usize,
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `v` is a live c_int and the length matches; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds a blocking UDP socket to `addr` (receives use MSG_DONTWAIT).
///
/// # Errors
/// Socket creation, a requested option or the bind failed; the message names the address.
pub fn bind(addr: SocketAddrV4, opts: SockOpts) -> io::Result<Socket> {
    let ctx = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("{what} {addr}: {e}"));
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| ctx("socket", e))?;
    let fd = s.as_raw_fd();
    if opts.buffer > 0 {
        let v = libc::c_int::try_from(opts.buffer).unwrap_or(libc::c_int::MAX);
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v).is_err() {
            s.set_recv_buffer_size(opts.buffer)
                .map_err(|e| ctx("SO_RCVBUF", e))?;
        }
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, v).is_err() {
            s.set_send_buffer_size(opts.buffer)
                .map_err(|e| ctx("SO_SNDBUF", e))?;
        }
    }
    if opts.pktinfo {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
            .map_err(|e| ctx("IP_PKTINFO", e))?;
    }
    if opts.gro {
        setsockopt_int(fd, libc::SOL_UDP, libc::UDP_GRO, 1).map_err(|e| ctx("UDP_GRO", e))?;
    }
    if opts.loopback_only {
        s.bind_device(Some(b"lo"))
            .map_err(|e| ctx("SO_BINDTODEVICE lo", e))?;
    }
    s.bind(&std::net::SocketAddr::V4(addr).into())
        .map_err(|e| ctx("bind", e))?;
    Ok(s)
}

/// The IPv4 address and port a socket is bound to.
///
/// # Errors
/// `getsockname` failed or the socket is not IPv4.
pub fn local_v4(s: &Socket) -> io::Result<SocketAddrV4> {
    s.local_addr()?
        .as_socket_ipv4()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4 socket"))
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// One queued datagram (or GSO run) of a [`SendBatch`].
#[derive(Clone, Copy)]
struct Pending {
    to: SocketAddrV4,
    src: Option<Ipv4Addr>,
    segment: u16,
    start: usize,
    len: usize,
}

/// Outcome of a flush.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// Messages (datagrams or GSO runs) the kernel took.
    pub messages: u64,
    /// Messages refused (counted and skipped).
    pub failed: u64,
    /// errno of the last refusal.
    pub last_errno: i32,
}

/// Up to [`BATCH`] datagrams for one socket, sent with one sendmmsg (more if the kernel takes
/// fewer). The bytes are copied in, so callers build packets in place with [`SendBatch::push`].
pub struct SendBatch {
    data: Vec<u8>,
    pending: Vec<Pending>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    ctrl: Vec<Cmsg>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        SendBatch {
            data: Vec::with_capacity(BATCH * SLOT_PLAIN),
            pending: Vec::with_capacity(BATCH),
            // SAFETY: mmsghdr/iovec/sockaddr_in are plain C structs for which all-zero bytes
            // are a valid value (null pointers, zero lengths).
            hdrs: vec![unsafe { mem::zeroed() }; BATCH],
            // SAFETY: as above.
            iovs: vec![unsafe { mem::zeroed() }; BATCH],
            // SAFETY: as above.
            names: vec![unsafe { mem::zeroed() }; BATCH],
            ctrl: vec![Cmsg([0; CMSG_LEN]); BATCH],
        }
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.pending.len() >= BATCH
    }

    /// Queues one message of `len` bytes to `to`, from source address `src` (IP_PKTINFO; the
    /// socket must be wildcard-bound for other loopback addresses), as a GSO run of
    /// `segment`-byte datagrams when `segment` > 0 and < `len`. `fill` writes the bytes.
    ///
    /// # Panics
    /// When the batch is full (a caller bug: check [`SendBatch::is_full`]).
    pub fn push(
        &mut self,
        to: SocketAddrV4,
        src: Option<Ipv4Addr>,
        segment: usize,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        assert!(!self.is_full(), "SendBatch::push on a full batch");
        let start = self.data.len();
        self.data.resize(start + len, 0);
        fill(&mut self.data[start..]);
        let segment = if segment > 0 && segment < len {
            u16::try_from(segment).unwrap_or(0)
        } else {
            0
        };
        self.pending.push(Pending {
            to,
            src,
            segment,
            start,
            len,
        });
    }

    /// Sends everything queued through `fd`, then empties the batch. Messages the kernel
    /// refuses are counted and skipped; the others still go.
    pub fn flush(&mut self, fd: RawFd) -> Sent {
        let n = self.pending.len();
        let mut out = Sent::default();
        if n == 0 {
            return out;
        }
        let base = self.data.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let ctrl = self.ctrl.as_mut_ptr();
        for (i, p) in self.pending.iter().enumerate() {
            self.iovs[i] = libc::iovec {
                iov_base: base.wrapping_add(p.start).cast(),
                iov_len: p.len,
            };
            self.names[i] = to_sockaddr(p.to);
            let clen = encode_cmsgs(&mut self.ctrl[i], p.src, p.segment);
            point_header(
                &mut self.hdrs[i],
                names.wrapping_add(i),
                iovs.wrapping_add(i),
                ctrl.wrapping_add(i),
                clen,
            );
        }
        // SAFETY: headers `..n` were filled above and point into `self.data`,
        // `self.iovs`, `self.names` and `self.ctrl`, which are not touched until the call
        // returns; the lengths match the buffers.
        unsafe { send_all(fd, &mut self.hdrs[..n], &mut out) };
        self.pending.clear();
        self.data.clear();
        out
    }
}

/// Points a send header at its name, its one iovec and, when `clen > 0`, its control buffer.
fn point_header(
    h: &mut libc::mmsghdr,
    name: *mut libc::sockaddr_in,
    iov: *mut libc::iovec,
    ctrl: *mut Cmsg,
    clen: usize,
) {
    h.msg_len = 0;
    h.msg_hdr.msg_name = name.cast();
    h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    h.msg_hdr.msg_iov = iov;
    h.msg_hdr.msg_iovlen = 1;
    h.msg_hdr.msg_control = if clen > 0 {
        ctrl.cast()
    } else {
        ptr::null_mut()
    };
    h.msg_hdr.msg_controllen = clen as _;
    h.msg_hdr.msg_flags = 0;
}

/// `sendmmsg` of every header, past refusals: a refused message (always the first of the
/// remainder) is counted and skipped, and the rest go on.
///
/// # Safety
/// Every header's name, iovec and control pointers must point at live buffers of the lengths
/// they give, untouched until this returns.
unsafe fn send_all(fd: RawFd, hdrs: &mut [libc::mmsghdr], out: &mut Sent) {
    let n = hdrs.len();
    let mut at = 0;
    while at < n {
        // SAFETY: the caller vouches for the headers' pointers; `at..n` is in bounds.
        let rc =
            unsafe { libc::sendmmsg(fd, hdrs[at..].as_mut_ptr(), (n - at) as libc::c_uint, 0) };
        if rc > 0 {
            out.messages += rc as u64;
            at += rc as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        out.failed += 1;
        out.last_errno = err.raw_os_error().unwrap_or(0);
        at += 1;
    }
}

/// Writes the control messages for one send into `buf`; returns their total length.
fn encode_cmsgs(buf: &mut Cmsg, src: Option<Ipv4Addr>, segment: u16) -> usize {
    buf.0 = [0; CMSG_LEN];
    let mut off = 0;
    if let Some(ip) = src {
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        off += put_cmsg(&mut buf.0[off..], libc::IPPROTO_IP, libc::IP_PKTINFO, &info);
    }
    if segment > 0 {
        off += put_cmsg(
            &mut buf.0[off..],
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &segment,
        );
    }
    off
}

/// Writes one cmsghdr + `value` at the start of `buf` (8-byte aligned); returns CMSG_SPACE.
fn put_cmsg<T: Copy>(buf: &mut [u8], level: libc::c_int, ty: libc::c_int, value: &T) -> usize {
    let size = mem::size_of::<T>() as u32;
    // SAFETY: pure arithmetic on lengths.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(size) as usize,
            libc::CMSG_LEN(size) as usize,
        )
    };
    assert!(buf.len() >= space, "control buffer too small");
    let hdr = libc::cmsghdr {
        cmsg_len: len as _,
        cmsg_level: level,
        cmsg_type: ty,
    };
    let hlen = len - size as usize;
    // SAFETY: `buf` has at least `space` >= `hlen + size_of::<T>()` bytes; the writes are
    // unaligned-safe byte copies of plain C values.
    unsafe {
        ptr::write_unaligned(buf.as_mut_ptr().cast::<libc::cmsghdr>(), hdr);
        ptr::write_unaligned(buf.as_mut_ptr().add(hlen).cast::<T>(), *value);
    }
    space
}

/// Metadata of one received buffer.
#[derive(Debug, Clone, Copy)]
pub struct RecvMeta {
    pub from: SocketAddrV4,
    /// Destination address from IP_PKTINFO (when enabled on the socket).
    pub dst: Option<Ipv4Addr>,
    /// Bytes in the buffer.
    pub len: usize,
    /// Spacing of GRO-coalesced datagrams (equal to `len` when not coalesced).
    pub stride: usize,
    pub truncated: bool,
}

/// Receive storage for [`BATCH`] buffers of `slot` bytes each, reused for every call.
pub struct RecvBatch {
    slot: usize,
    buf: Vec<u8>,
    meta: Vec<RecvMeta>,
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    ctrl: Vec<Cmsg>,
}

impl RecvBatch {
    pub fn new(slot: usize) -> Self {
        RecvBatch {
            slot,
            buf: vec![0; slot * BATCH],
            meta: Vec::with_capacity(BATCH),
            // SAFETY: plain C structs; all-zero is valid.
            hdrs: vec![unsafe { mem::zeroed() }; BATCH],
            // SAFETY: as above.
            iovs: vec![unsafe { mem::zeroed() }; BATCH],
            // SAFETY: as above.
            names: vec![unsafe { mem::zeroed() }; BATCH],
            ctrl: vec![Cmsg([0; CMSG_LEN]); BATCH],
        }
    }

    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    pub fn meta(&self, i: usize) -> &RecvMeta {
        &self.meta[i]
    }

    pub fn data(&self, i: usize) -> &[u8] {
        let start = i * self.slot;
        &self.buf[start..start + self.meta[i].len]
    }

    pub fn data_mut(&mut self, i: usize) -> &mut [u8] {
        let start = i * self.slot;
        let len = self.meta[i].len;
        &mut self.buf[start..start + len]
    }

    /// Receives what is waiting on `fd` (MSG_DONTWAIT, or blocking until at least one arrives
    /// with `wait`). Returns how many buffers; 0 when nothing was waiting.
    ///
    /// # Errors
    /// A receive error other than EAGAIN/EINTR.
    pub fn recv(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        self.meta.clear();
        let base = self.buf.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let ctrl = self.ctrl.as_mut_ptr();
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: base.wrapping_add(i * self.slot).cast(),
                iov_len: self.slot,
            };
            let h = &mut self.hdrs[i];
            h.msg_len = 0;
            h.msg_hdr.msg_name = names.wrapping_add(i).cast();
            h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = iovs.wrapping_add(i);
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = ctrl.wrapping_add(i).cast();
            h.msg_hdr.msg_controllen = CMSG_LEN as _;
            h.msg_hdr.msg_flags = 0;
        }
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: every header points at live buffers of the stated lengths owned by `self`,
        // which are not touched until the call returns. A null timeout is allowed.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags as _,
                ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let got = (rc as usize).min(BATCH);
        for i in 0..got {
            let h = &self.hdrs[i];
            let len = (h.msg_len as usize).min(self.slot);
            let (dst, stride) = decode_cmsgs(&h.msg_hdr);
            self.meta.push(RecvMeta {
                from: from_sockaddr(&self.names[i]),
                dst,
                len,
                stride: stride.filter(|&s| s > 0 && s < len).unwrap_or(len),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            });
        }
        Ok(got)
    }
}

/// Reads IP_PKTINFO (destination address) and UDP_GRO (segment size) from a received header.
fn decode_cmsgs(h: &libc::msghdr) -> (Option<Ipv4Addr>, Option<usize>) {
    let (mut dst, mut stride) = (None, None);
    // SAFETY: `h` was filled by the kernel: msg_control/msg_controllen describe the control
    // bytes it wrote into our buffer, and the CMSG_* macros stay within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            let hdr = ptr::read_unaligned(c);
            let data = libc::CMSG_DATA(c);
            match (hdr.cmsg_level, hdr.cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info = ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                    dst = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                }
                (libc::SOL_UDP, libc::UDP_GRO) => {
                    let v = ptr::read_unaligned(data.cast::<libc::c_int>());
                    stride = usize::try_from(v).ok();
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    (dst, stride)
}

/// Level-triggered epoll over many sockets; each registration carries a token.
pub struct Poller {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// # Errors
    /// epoll_create1 failed.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall without pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024],
        })
    }

    /// # Errors
    /// epoll_ctl failed.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event the kernel only reads.
        let rc = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_us` microseconds (0: poll) and appends ready tokens to `out`.
    pub fn wait(&mut self, timeout_us: u64, out: &mut Vec<u64>) {
        let ts = libc::timespec {
            tv_sec: (timeout_us / 1_000_000) as libc::time_t,
            tv_nsec: ((timeout_us % 1_000_000) * 1000) as libc::c_long,
        };
        // SAFETY: the events buffer is owned and its length is passed; `ts` is live; a null
        // sigmask is allowed.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &ts,
                ptr::null(),
            )
        };
        for ev in self.events.iter().take(usize::try_from(n).unwrap_or(0)) {
            out.push(ev.u64);
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: we own the epoll fd and close it once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

/// Sends received buffers back out without copying them (the null relay's send path).
pub struct Forwarder {
    hdrs: Vec<libc::mmsghdr>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in>,
    ctrl: Vec<Cmsg>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Self::new()
    }
}

impl Forwarder {
    pub fn new() -> Self {
        Forwarder {
            // SAFETY: plain C structs; all-zero is valid.
            hdrs: vec![unsafe { mem::zeroed() }; BATCH],
            // SAFETY: as above.
            iovs: vec![unsafe { mem::zeroed() }; BATCH],
            // SAFETY: as above.
            names: vec![unsafe { mem::zeroed() }; BATCH],
            ctrl: vec![Cmsg([0; CMSG_LEN]); BATCH],
        }
    }

    /// Sends buffer `i` of `rx` to `to` for each `(i, to, segment)` (segment > 0: one
    /// UDP_SEGMENT send of that stride) through `fd`.
    pub fn send(
        &mut self,
        fd: RawFd,
        rx: &mut RecvBatch,
        items: &[(usize, SocketAddrV4, u16)],
    ) -> Sent {
        let n = items.len().min(BATCH);
        let mut out = Sent::default();
        if n == 0 {
            return out;
        }
        let slot = rx.slot;
        let base = rx.buf.as_mut_ptr();
        let iovs = self.iovs.as_mut_ptr();
        let names = self.names.as_mut_ptr();
        let ctrl = self.ctrl.as_mut_ptr();
        for (k, &(i, to, segment)) in items.iter().take(n).enumerate() {
            let len = rx.meta.get(i).map_or(0, |m| m.len);
            self.iovs[k] = libc::iovec {
                iov_base: base.wrapping_add(i.min(BATCH - 1) * slot).cast(),
                iov_len: len,
            };
            self.names[k] = to_sockaddr(to);
            let seg = if segment > 0 && usize::from(segment) < len {
                segment
            } else {
                0
            };
            let clen = encode_cmsgs(&mut self.ctrl[k], None, seg);
            point_header(
                &mut self.hdrs[k],
                names.wrapping_add(k),
                iovs.wrapping_add(k),
                ctrl.wrapping_add(k),
                clen,
            );
        }
        // SAFETY: headers `..n` point into `rx.buf` (slots in bounds, lengths at most
        // the slot size) and into our own arrays; nothing else touches them during the call.
        unsafe { send_all(fd, &mut self.hdrs[..n], &mut out) };
        out
    }
}

/// Binds a blocking UDP socket to `addr` through wgrelay's socket set-up
/// (`wgrelay::io::bind_udp`: buffers, forced past `rmem_max` where allowed, and IP_PKTINFO),
/// restricted to `lo` when `opts.loopback_only`. GRO is the backend's to switch on
/// (`wgrelay::io::Offload`).
///
/// # Errors
/// Socket creation, a requested option or the bind failed; the message names the address.
pub fn bind_udp(addr: SocketAddrV4, opts: SockOpts) -> io::Result<std::net::UdpSocket> {
    let s = wgrelay::io::bind_udp(
        std::net::SocketAddr::V4(addr),
        &wgrelay::io::SocketOptions {
            reuse_port: false,
            recv_buffer: opts.buffer,
            send_buffer: opts.buffer,
            pktinfo: opts.pktinfo,
        },
    )?;
    if opts.loopback_only {
        socket2::SockRef::from(&s)
            .bind_device(Some(b"lo"))
            .map_err(|e| io::Error::new(e.kind(), format!("SO_BINDTODEVICE lo {addr}: {e}")))?;
    }
    Ok(s)
}

/// The IPv4 address and port a socket is bound to.
///
/// # Errors
/// `getsockname` failed or the socket is not IPv4.
pub fn local_addr_v4(s: &std::net::UdpSocket) -> io::Result<SocketAddrV4> {
    match s.local_addr()? {
        std::net::SocketAddr::V4(a) => Ok(a),
        std::net::SocketAddr::V6(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an IPv4 socket",
        )),
    }
}

/// One staged datagram (or GSO run) of a [`SendList`].
#[derive(Clone, Copy)]
struct Staged {
    listener: usize,
    to: SocketAddrV4,
    src: Option<Ipv4Addr>,
    segment: usize,
    start: usize,
    len: usize,
}

/// Up to [`BATCH`] datagrams built in place, then sent through a `wgrelay::io` backend as one
/// list of transmits (one sendmmsg per socket, more if the kernel takes fewer).
#[derive(Default)]
pub struct SendList {
    data: Vec<u8>,
    staged: Vec<Staged>,
    /// The transmit list's storage, kept from flush to flush (empty between them).
    spare: Vec<wgrelay::io::Transmit<'static>>,
}

impl SendList {
    pub fn new() -> Self {
        SendList {
            data: Vec::with_capacity(BATCH * SLOT_PLAIN),
            staged: Vec::with_capacity(BATCH),
            spare: Vec::with_capacity(BATCH),
        }
    }

    pub fn len(&self) -> usize {
        self.staged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.staged.len() >= BATCH
    }

    /// Stages one message of `len` bytes to `to` through the backend's listener `listener`,
    /// from source address `src` (IP_PKTINFO; the socket must be wildcard-bound for other
    /// loopback addresses), as a GSO run of `segment`-byte datagrams when `segment` > 0 and
    /// < `len`. `fill` writes the bytes.
    ///
    /// # Panics
    /// When the list is full (a caller bug: check [`SendList::is_full`]).
    pub fn push(
        &mut self,
        listener: usize,
        to: SocketAddrV4,
        src: Option<Ipv4Addr>,
        segment: usize,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        assert!(!self.is_full(), "SendList::push on a full list");
        let start = self.data.len();
        self.data.resize(start + len, 0);
        fill(&mut self.data[start..]);
        self.staged.push(Staged {
            listener,
            to,
            src,
            segment,
            start,
            len,
        });
    }

    /// Sends everything staged through `backend`, then empties the list. Datagrams the
    /// kernel refuses are counted and skipped; the others still go.
    pub fn flush(&mut self, backend: &mut wgrelay::io::MmsgBackend) -> Sent {
        use wgrelay::io::{Backend, Transmit};
        if self.staged.is_empty() {
            return Sent::default();
        }
        let data = &self.data;
        let mut list = wgrelay::io::recycled(std::mem::take(&mut self.spare));
        list.extend(self.staged.iter().map(|p| Transmit {
            listener: p.listener,
            destination: std::net::SocketAddr::V4(p.to),
            contents: &data[p.start..p.start + p.len],
            segment_size: (p.segment > 0 && p.segment < p.len).then_some(p.segment),
            source: p.src.map(std::net::IpAddr::V4),
        }));
        let stats = backend.send(&list);
        self.spare = wgrelay::io::recycled(list);
        self.staged.clear();
        self.data.clear();
        Sent {
            messages: stats.sent,
            failed: stats.failed,
            last_errno: if stats.failed > 0 {
                backend.last_send_errno().unwrap_or(0)
            } else {
                0
            },
        }
    }
}
