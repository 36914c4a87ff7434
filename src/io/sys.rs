//! Low-level helpers shared by the system-call backends ([`super::mmsg`], [`super::uring`]):
//! socket address conversion, destination-family adaptation, the control-message helpers
//! (SO_RXQ_OVFL, UDP_GRO and IP_PKTINFO/IPV6_PKTINFO received; UDP_SEGMENT and the packet
//! info sent), per-socket offload probing, splitting a received GRO run into datagrams, the
//! GSO grouping rule and staging of one outgoing message, zeroed C structs and a log rate
//! limiter.

use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::ptr;
use std::time::{Duration, Instant};

use super::socket::{enable_gro, probe_gso, GRO_MAX_SEGMENTS};
use super::{Capabilities, Offload, Transmit, BATCH_SIZE};

/// Room for the control messages of one datagram, with slack (CMSG_SPACE on 64-bit): received,
/// SO_RXQ_OVFL (24), UDP_GRO (24) and IPV6_PKTINFO (40) plus IP_PKTINFO (32), 120 in all;
/// sent, UDP_SEGMENT (24) and IPV6_PKTINFO (40). A multiple of 8, so the io_uring receive
/// buffers that hold one stay aligned.
pub(super) const CMSG_BUF_LEN: usize = 128;

/// Bytes one UDP GRO receive buffer holds: the kernel's default `gro_max_size`
/// (`GRO_LEGACY_MAX_SIZE`, 65536) bounds a coalesced run, and a GSO send over loopback (at most
/// one 65507-byte UDP payload) also fits. A longer run (a device with a raised `gro_max_size`)
/// arrives truncated: the segments that fit are kept, the cut one is reported truncated.
pub(super) const GRO_BUF_LEN: usize = 1 << 16;

/// Largest payload of one GSO send: IPv4's 65535-byte `IP_MAX_MTU` minus the IPv4 (20) and UDP
/// (8) headers. IPv6 allows a little more; one limit for both keeps it simple.
pub(super) const MAX_GSO_PAYLOAD: usize = 65535 - 20 - 8;

/// Errors on the datapath can come per packet; one line per interval is enough to diagnose.
pub(super) const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Control-message buffer, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
pub(super) struct CmsgBuf(pub(super) [u8; CMSG_BUF_LEN]);

impl CmsgBuf {
    pub(super) const ZERO: CmsgBuf = CmsgBuf([0; CMSG_BUF_LEN]);
}

/// Address family of a listener, probed once when a backend is built to adapt destinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
    Unknown,
}

impl Family {
    /// The family of each socket's local address (`Unknown` where it cannot be read).
    pub(super) fn of_sockets(sockets: &[UdpSocket]) -> Vec<Family> {
        sockets
            .iter()
            .map(|s| match s.local_addr() {
                Ok(SocketAddr::V4(_)) => Family::V4,
                Ok(SocketAddr::V6(_)) => Family::V6,
                Err(_) => Family::Unknown,
            })
            .collect()
    }
}

/// Lets one log line through per [`WARN_INTERVAL`] and counts the rest.
#[derive(Debug, Default)]
pub(super) struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    /// Returns how many were suppressed since the last allowed line, or `None` to stay quiet.
    pub(super) fn allow(&mut self) -> Option<u64> {
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

/// Logs (rate-limited) that a datagram on `listener` was dropped for a source address that is
/// not IPv4/IPv6: cannot happen on an AF_INET/AF_INET6 socket; dropped rather than misattributed.
pub(super) fn warn_unusable_source(warn: &mut RateLimit, listener: usize) {
    if let Some(suppressed) = warn.allow() {
        log::warn!(
            "listener {listener}: datagram with unusable source address dropped \
             ({suppressed} similar suppressed)"
        );
    }
}

/// Per-listener socket state both backends keep: the sockets, their address families, the
/// kernel's drop counts and the offloads in force. Listener `i` is socket `i`.
#[derive(Debug)]
pub(super) struct Listeners {
    pub(super) sockets: Vec<UdpSocket>,
    /// Probed once: the destination-family adaptation in `send` depends on it.
    pub(super) families: Vec<Family>,
    /// Last SO_RXQ_OVFL value per listener (the kernel reports a cumulative count).
    pub(super) drops: Vec<u32>,
    /// GSO segments per send, per listener (1: no GSO). Only ever goes down to 1.
    pub(super) gso: Vec<usize>,
    /// UDP_GRO is on for this listener: its receives may hold coalesced runs.
    pub(super) gro: Vec<bool>,
}

impl Listeners {
    /// Takes `sockets`, reads their families and probes the offloads `offload` asks for on
    /// every one (switching UDP_GRO on where the kernel has it); where the kernel lacks one,
    /// that listener runs without it.
    pub(super) fn new(sockets: Vec<UdpSocket>, offload: Offload) -> Self {
        let families = Family::of_sockets(&sockets);
        let drops = vec![0; sockets.len()];
        let gso = sockets
            .iter()
            .map(|s| if offload.gso { probe_gso(s) } else { 1 })
            .collect();
        let gro = sockets
            .iter()
            .map(|s| offload.gro && enable_gro(s) > 1)
            .collect();
        Listeners {
            sockets,
            families,
            drops,
            gso,
            gro,
        }
    }

    /// Datagrams the kernel dropped on these sockets, as last reported via SO_RXQ_OVFL.
    pub(super) fn kernel_drops(&self) -> u64 {
        self.drops.iter().map(|&d| u64::from(d)).sum()
    }

    /// What every listener can do (GSO), and the most one receive may coalesce (GRO).
    pub(super) fn capabilities(&self) -> Capabilities {
        Capabilities {
            max_gso_segments: self.gso.iter().copied().min().unwrap_or(1),
            gro_segments: if self.gro.iter().any(|&g| g) {
                GRO_MAX_SEGMENTS
            } else {
                1
            },
            batch_size: BATCH_SIZE,
        }
    }

    /// The kernel refused a GSO send on `listener` (`err`): no GSO on any listener from now on.
    pub(super) fn disable_gso(&mut self, listener: usize, err: &std::io::Error) {
        if self.gso.iter().any(|&s| s > 1) {
            log::info!(
                "UDP GSO send refused on listener {listener} ({err}); sending datagrams one by \
                 one from now on"
            );
        }
        for s in &mut self.gso {
            *s = 1;
        }
    }
}

/// Makes `dest` sendable through a socket of `family`: an IPv6 socket takes IPv4 peers
/// v4-mapped, and an IPv4 socket takes a v4-mapped IPv6 address as plain IPv4. Anything else is
/// passed through for the kernel to accept or refuse.
pub(super) fn adapt_destination(dest: SocketAddr, family: Family) -> SocketAddr {
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
pub(super) fn sockaddr_to_std(
    ss: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
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
pub(super) fn std_to_sockaddr(
    addr: SocketAddr,
    ss: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
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

/// What the control messages of one received message say; each field `None` when absent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecvControl {
    /// SO_RXQ_OVFL: datagrams the kernel dropped on the socket so far (a cumulative count).
    pub(super) rxq_ovfl: Option<u32>,
    /// UDP_GRO: the length of every coalesced datagram but the last (which may be shorter).
    /// `None` when the message is one datagram (no such control message, or a size of 0).
    pub(super) gro_segment: Option<usize>,
    /// IP_PKTINFO / IPV6_PKTINFO: the address the datagram was sent to (`ipi_addr` /
    /// `ipi6_addr`, the header's destination), where the socket asked for it (see
    /// [`enable_pktinfo`](super::socket::enable_pktinfo)). As the kernel gives it: see
    /// [`RecvControl::local_for`] for the form to report.
    pub(super) local: Option<IpAddr>,
}

impl RecvControl {
    /// Parses a received message's control data (the `msg_controllen` bytes the kernel wrote;
    /// bytes beyond [`CMSG_BUF_LEN`] are ignored). The first message of each kind counts;
    /// other kinds, and payloads too short for their kind, are skipped.
    pub(super) fn parse(control: &[u8]) -> Self {
        let mut out = RecvControl::default();
        for_each_cmsg(control, |level, ty, data| match (level, ty) {
            (libc::SOL_SOCKET, libc::SO_RXQ_OVFL) if out.rxq_ovfl.is_none() => {
                out.rxq_ovfl = ne_u32(data);
            }
            // The kernel stores the gso_size as an int (udp_cmsg_recv).
            (libc::SOL_UDP, libc::UDP_GRO) if out.gro_segment.is_none() => {
                out.gro_segment = ne_u32(data)
                    .and_then(|v| usize::try_from(v).ok())
                    .filter(|&v| v > 0);
            }
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if out.local.is_none() => {
                let at = mem::offset_of!(libc::in_pktinfo, ipi_addr);
                out.local = octets_at::<4>(data, at).map(|b| IpAddr::V4(Ipv4Addr::from(b)));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if out.local.is_none() => {
                let at = mem::offset_of!(libc::in6_pktinfo, ipi6_addr);
                out.local = octets_at::<16>(data, at).map(|b| IpAddr::V6(Ipv6Addr::from(b)));
            }
            _ => {}
        });
        out
    }

    /// Length of every datagram of a message of `len` bytes but the last (which may be
    /// shorter): the UDP_GRO segment size when the message is a coalesced run, else `len`. At
    /// least 1, so splitting always advances (an empty datagram is one piece of 0 bytes).
    pub(super) fn stride(&self, len: usize) -> usize {
        self.gro_segment.filter(|&s| s < len).unwrap_or(len).max(1)
    }

    /// The local address in the form the source `addr` has: on a dual-stack IPv6 socket an
    /// IPv4 datagram's source is v4-mapped, and so is its local address then (IPV6_PKTINFO
    /// already gives it so; an IP_PKTINFO address is mapped here). On an IPv4 socket a
    /// v4-mapped address is given as plain IPv4.
    pub(super) fn local_for(&self, addr: &SocketAddr) -> Option<IpAddr> {
        self.local.map(|ip| match (ip, addr) {
            (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V6(v6), SocketAddr::V4(_)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        })
    }
}

/// The first 4 bytes of `data` as a native-endian `u32`.
fn ne_u32(data: &[u8]) -> Option<u32> {
    let b = data.get(..4)?;
    Some(u32::from_ne_bytes(<[u8; 4]>::try_from(b).ok()?))
}

/// Calls `f(level, type, payload)` for each control message in `control` (at most
/// [`CMSG_BUF_LEN`] bytes of it). A payload is cut to the bytes that are there.
fn for_each_cmsg(control: &[u8], mut f: impl FnMut(libc::c_int, libc::c_int, &[u8])) {
    if control.is_empty() {
        return;
    }
    // Copy into an aligned buffer so the CMSG_* walk needs no assumption about the source.
    let mut buf = CmsgBuf::ZERO;
    let len = control.len().min(CMSG_BUF_LEN);
    buf.0[..len].copy_from_slice(&control[..len]);
    let base = buf.0.as_ptr();
    let mut hdr: libc::msghdr = zeroed();
    // The walk only reads through it; the `*mut` is the C type's.
    hdr.msg_control = base as *mut libc::c_void;
    hdr.msg_controllen = len as _;
    // SAFETY: `hdr` describes `len` bytes of the live, aligned `buf`, which nothing writes while
    // the walk runs; CMSG_FIRSTHDR/CMSG_NXTHDR return null or a header that lies within
    // msg_controllen, so reading its fields is in bounds. The payload is not read through a
    // pointer: its offsets are turned into a bounds-checked slice of `buf`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        while !cmsg.is_null() {
            let (level, ty) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            let at = cmsg.cast::<u8>().cast_const().offset_from(base) as usize;
            let start = at + libc::CMSG_LEN(0) as usize;
            let end = (at + (*cmsg).cmsg_len as usize).min(len);
            if let Some(data) = buf.0.get(start..end) {
                f(level, ty, data);
            }
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
    }
}

/// The `N` bytes of a control message's payload at offset `at`, if it is that long.
fn octets_at<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// One received message: a datagram, or with GRO a coalesced run of datagrams `stride` bytes
/// apart (the last may be shorter), all from `addr`.
#[derive(Debug, Clone, Copy)]
pub(super) struct RecvRun {
    pub(super) addr: SocketAddr,
    /// The address it was sent to (see [`RecvControl::local_for`]), where the socket reports it.
    pub(super) local: Option<IpAddr>,
    /// Bytes received.
    pub(super) len: usize,
    /// See [`RecvControl::stride`]; `len` (at least 1) when not coalesced.
    pub(super) stride: usize,
    /// MSG_TRUNC: the buffer cut the message short, so its last piece is incomplete.
    pub(super) truncated: bool,
}

impl RecvRun {
    /// More than one datagram.
    pub(super) fn is_coalesced(&self) -> bool {
        self.stride < self.len
    }
}

/// Logs (rate-limited) that a coalesced run on `listener` was cut short by its receive buffer.
/// Only with a gro_max_size above [`GRO_BUF_LEN`]: the segments past the buffer are gone, and
/// the kernel does not say how many there were.
pub(super) fn warn_truncated_run(warn: &mut RateLimit, listener: usize) {
    if let Some(suppressed) = warn.allow() {
        log::warn!(
            "listener {listener}: coalesced run longer than {GRO_BUF_LEN} bytes truncated; \
             datagrams lost ({suppressed} similar suppressed)"
        );
    }
}

/// A source address as one outgoing message's packet-info control message carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pktinfo {
    /// IP_PKTINFO, `ipi_spec_dst`.
    V4(Ipv4Addr),
    /// IPV6_PKTINFO, `ipi6_addr`.
    V6(Ipv6Addr),
}

impl Pktinfo {
    /// How `source` goes out through a socket of `family`: IP_PKTINFO on an IPv4 socket (a
    /// v4-mapped address unmapped), IPV6_PKTINFO on an IPv6 one (an IPv4 address v4-mapped: the
    /// kernel takes that for a v4-mapped destination, `ip_cmsg_send`). `None` when the socket
    /// cannot express it (an IPv6 source through an IPv4 socket).
    pub(super) fn for_family(source: IpAddr, family: Family) -> Option<Pktinfo> {
        match (source, family) {
            (IpAddr::V4(v4), Family::V4 | Family::Unknown) => Some(Pktinfo::V4(v4)),
            (IpAddr::V6(v6), Family::V4) => v6.to_ipv4_mapped().map(Pktinfo::V4),
            (IpAddr::V4(v4), Family::V6) => Some(Pktinfo::V6(v4.to_ipv6_mapped())),
            (IpAddr::V6(v6), Family::V6 | Family::Unknown) => Some(Pktinfo::V6(v6)),
        }
    }

    /// CMSG_SPACE of its control message.
    fn space(&self) -> usize {
        let size = match self {
            Pktinfo::V4(_) => mem::size_of::<libc::in_pktinfo>(),
            Pktinfo::V6(_) => mem::size_of::<libc::in6_pktinfo>(),
        };
        // SAFETY: CMSG_SPACE is arithmetic on its argument only.
        unsafe { libc::CMSG_SPACE(size as u32) as usize }
    }
}

/// Writes the control messages of one outgoing message at the start of `buf`: UDP_SEGMENT
/// (segment size `segment`, a `u16` as the kernel's udp_cmsg_send requires) for a GSO
/// message, and IP_PKTINFO / IPV6_PKTINFO for a chosen source address. Returns the
/// `msg_controllen` to pass: 0, with `buf` untouched, when there is neither.
pub(super) fn put_send_cmsgs(
    buf: &mut CmsgBuf,
    segment: Option<u16>,
    source: Option<Pktinfo>,
) -> usize {
    if segment.is_none() && source.is_none() {
        return 0;
    }
    // SAFETY: CMSG_SPACE is arithmetic on its argument only.
    let segment_space = unsafe { libc::CMSG_SPACE(mem::size_of::<u16>() as u32) } as usize;
    let space = segment.map_or(0, |_| segment_space) + source.map_or(0, |p| p.space());
    debug_assert!(space <= CMSG_BUF_LEN);
    let space = space.min(CMSG_BUF_LEN);
    // CMSG_NXTHDR reads the next header's length: zero the bytes used.
    buf.0[..space].fill(0);
    let mut hdr: libc::msghdr = zeroed();
    hdr.msg_control = buf.0.as_mut_ptr().cast();
    hdr.msg_controllen = space as _;
    // SAFETY: `hdr` describes `space` bytes of the live, aligned, exclusively borrowed `buf`,
    // exactly the CMSG_SPACE of the messages written, so CMSG_FIRSTHDR, and CMSG_NXTHDR after
    // the first, are non-null and every write stays inside them (`put_cmsg`).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&hdr);
        if let Some(s) = segment {
            put_cmsg(cmsg, libc::SOL_UDP, libc::UDP_SEGMENT, s);
            cmsg = libc::CMSG_NXTHDR(&hdr, cmsg);
        }
        match source {
            Some(Pktinfo::V4(ip)) => put_cmsg(
                cmsg,
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(ip).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            Some(Pktinfo::V6(ip)) => put_cmsg(
                cmsg,
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                },
            ),
            None => {}
        }
    }
    space
}

/// Fills in one control message (header and `value`) at `cmsg`.
///
/// # Safety
/// `cmsg` must be non-null and point at CMSG_SPACE(size_of::<T>()) writable bytes, aligned
/// for `cmsghdr`.
unsafe fn put_cmsg<T>(cmsg: *mut libc::cmsghdr, level: libc::c_int, ty: libc::c_int, value: T) {
    debug_assert!(!cmsg.is_null());
    // SAFETY: the caller vouches for the room and the alignment of the header; the payload is
    // written unaligned (CMSG_DATA promises no alignment); CMSG_LEN is arithmetic.
    unsafe {
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = ty;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<T>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<T>(), value);
    }
}

/// How many transmits from the start of `run` (all through one listener) go as one GSO
/// message, and its segment size when that is more than one datagram.
///
/// The kernel's rule: one destination (and one source address), every segment the same length
/// except the last, which may be shorter (not empty: it would vanish), at most `max_segments`
/// (`UDP_MAX_SEGMENTS`) and [`MAX_GSO_PAYLOAD`] bytes in all. A group of one gets no UDP_SEGMENT, because some drivers
/// reject single-segment GSO (as quinn-udp notes). A transmit that carries a run is a group of
/// its own, and must be [`sendable`] (see [`split_unsendable`]).
pub(super) fn gso_group(run: &[Transmit<'_>], max_segments: usize) -> (usize, Option<u16>) {
    let Some(first) = run.first() else {
        return (0, None);
    };
    if let Some(s) = first.run_segment() {
        debug_assert!(sendable(first, max_segments));
        return (1, u16::try_from(s).ok());
    }
    let seg = first.contents.len();
    let Ok(segment) = u16::try_from(seg) else {
        return (1, None);
    };
    if max_segments <= 1 || seg == 0 {
        return (1, None);
    }
    let (mut count, mut total) = (1, seg);
    for t in &run[1..run.len().min(max_segments)] {
        let len = t.contents.len();
        if t.destination != first.destination
            || t.source != first.source
            || t.run_segment().is_some()
            || len == 0
            || len > seg
            || total + len > MAX_GSO_PAYLOAD
        {
            break;
        }
        count += 1;
        total += len;
        if len < seg {
            break; // a shorter datagram ends the group
        }
    }
    (count, (count > 1).then_some(segment))
}

/// Whether `t` can go as one message through a listener that sends `max_segments` per GSO
/// message: a single datagram always; a run within the kernel's GSO limits.
pub(super) fn sendable(t: &Transmit<'_>, max_segments: usize) -> bool {
    match t.run_segment() {
        None => true,
        Some(s) => {
            max_segments > 1
                && t.datagrams() <= max_segments
                && t.contents.len() <= MAX_GSO_PAYLOAD
                && u16::try_from(s).is_ok()
        }
    }
}

/// `transmits` with every run that its listener cannot send as one GSO message (`gso`: per
/// listener, as [`Listeners::gso`]) split into its datagrams, into `out`. `false` (and `out`
/// untouched) when every transmit is [`sendable`] as it is, which is the common case.
pub(super) fn split_unsendable<'a>(
    transmits: &[Transmit<'a>],
    gso: &[usize],
    out: &mut Vec<Transmit<'a>>,
) -> bool {
    let max = |t: &Transmit<'_>| gso.get(t.listener).copied().unwrap_or(1);
    if transmits.iter().all(|t| sendable(t, max(t))) {
        return false;
    }
    out.clear();
    for t in transmits {
        if sendable(t, max(t)) {
            out.push(*t);
        } else {
            out.extend(t.split());
        }
    }
    true
}

/// Stages one outgoing message carrying `group` (one destination, one source) for a socket of
/// `family`: writes its name, its iovecs into `iovs` (at most `group.len()` of them: transmits
/// whose bytes follow each other in memory, such as the datagrams of one received GRO run,
/// share one iovec) and its control messages into `ctrl`: UDP_SEGMENT for a GSO message
/// (`segment`), the packet info for a chosen source address. Returns the `msg_namelen`, the
/// `msg_controllen` and the number of iovecs used, or `None` (nothing staged) when the socket
/// cannot send from that source (see [`Pktinfo::for_family`]). The iovecs point into
/// `group`'s contents, which must outlive the system call.
pub(super) fn stage_message(
    group: &[Transmit<'_>],
    family: Family,
    segment: Option<u16>,
    name: &mut libc::sockaddr_storage,
    iovs: &mut [libc::iovec],
    ctrl: &mut CmsgBuf,
) -> Option<(libc::socklen_t, usize, usize)> {
    debug_assert!(iovs.len() >= group.len());
    let source = match group.first().and_then(|t| t.source) {
        Some(ip) => Some(Pktinfo::for_family(ip, family)?),
        None => None,
    };
    let namelen = match group.first() {
        Some(t) => std_to_sockaddr(adapt_destination(t.destination, family), name),
        None => 0,
    };
    let mut used = 0;
    let mut end: *const u8 = ptr::null();
    for t in group {
        let start = t.contents.as_ptr();
        if used > 0 && start == end {
            iovs[used - 1].iov_len += t.contents.len();
        } else {
            iovs[used] = libc::iovec {
                // The kernel only reads through it; the `*mut` is the C type's.
                iov_base: start as *mut libc::c_void,
                iov_len: t.contents.len(),
            };
            used += 1;
        }
        end = start.wrapping_add(t.contents.len());
    }
    let ctrl_len = put_send_cmsgs(ctrl, segment, source);
    Some((namelen, ctrl_len, used))
}

/// Drops `group` (one message's transmits), whose source address `listener`'s socket cannot
/// send from (an IPv6 address through an IPv4 socket), with a rate-limited warning; returns
/// the datagrams dropped, for [`SendStats::failed`](super::SendStats::failed).
pub(super) fn drop_unusable_source(
    warn: &mut RateLimit,
    listener: usize,
    group: &[Transmit<'_>],
) -> u64 {
    let datagrams: usize = group.iter().map(Transmit::datagrams).sum();
    if let (Some(first), Some(suppressed)) = (group.first(), warn.allow()) {
        log::warn!(
            "send via listener {listener} to {}: cannot send from {:?} through this socket; \
             {datagrams} datagrams dropped ({suppressed} similar suppressed)",
            first.destination,
            first.source
        );
    }
    datagrams as u64
}

/// Points a staged message's header (see [`stage_message`]) at its name, its `iovlen` iovecs
/// from `iov` on, and its control message (null when `msg_controllen` is 0). The pointers are
/// taken from one base pointer per array after the last write to it, so no later borrow
/// invalidates what the kernel reads.
pub(super) fn link_header(
    h: &mut libc::msghdr,
    name: *mut libc::sockaddr_storage,
    iov: *mut libc::iovec,
    iovlen: usize,
    ctrl: *mut CmsgBuf,
) {
    h.msg_name = name.cast();
    h.msg_iov = iov;
    h.msg_iovlen = iovlen as _;
    h.msg_control = if h.msg_controllen == 0 {
        ptr::null_mut()
    } else {
        ctrl.cast()
    };
    h.msg_flags = 0;
}

/// C structs for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for types made of integers, byte arrays and raw pointers (zero means null).
pub(super) unsafe trait Zeroable: Sized {}
// SAFETY: integers and raw pointers only.
unsafe impl Zeroable for libc::mmsghdr {}
// SAFETY: integers and raw pointers only.
unsafe impl Zeroable for libc::msghdr {}
// SAFETY: a raw pointer and a length.
unsafe impl Zeroable for libc::iovec {}
// SAFETY: integers and padding bytes only.
unsafe impl Zeroable for libc::sockaddr_storage {}
// SAFETY: integers only.
unsafe impl Zeroable for libc::sockaddr_in {}
// SAFETY: integers and a byte array only.
unsafe impl Zeroable for libc::sockaddr_in6 {}

/// A zeroed C struct.
pub(super) fn zeroed<T: Zeroable>() -> T {
    // SAFETY: `T: Zeroable` guarantees all-zero is a valid T.
    unsafe { mem::zeroed::<T>() }
}

/// A boxed slice of `n` zeroed C structs; pointers in them are null until set.
pub(super) fn zeroed_slice<T: Zeroable>(n: usize) -> Box<[T]> {
    (0..n).map(|_| zeroed()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RecvBatch;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address literal")
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
    fn family_of_sockets() {
        let v4 = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let got = Family::of_sockets(&[v4]);
        assert_eq!(got, [Family::V4]);
        if let Ok(v6) = UdpSocket::bind("[::1]:0") {
            assert_eq!(Family::of_sockets(&[v6]), [Family::V6]);
        }
    }

    #[test]
    fn rxq_ovfl_parses_and_ignores_garbage() {
        assert_eq!(RecvControl::parse(&[]).rxq_ovfl, None);
        assert_eq!(RecvControl::parse(&[0xff; 7]).rxq_ovfl, None);
        let mut buf = [0u8; 24];
        // SAFETY: CMSG_LEN is arithmetic on its argument only.
        let len = unsafe { libc::CMSG_LEN(4) } as usize;
        buf[..8].copy_from_slice(&len.to_ne_bytes());
        buf[8..12].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        buf[12..16].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        buf[16..20].copy_from_slice(&42u32.to_ne_bytes());
        assert_eq!(RecvControl::parse(&buf).rxq_ovfl, Some(42));
        // Another message type in the same place is not mistaken for it.
        buf[12..16].copy_from_slice(&libc::SO_TIMESTAMP.to_ne_bytes());
        assert_eq!(RecvControl::parse(&buf).rxq_ovfl, None);
        assert_eq!(RecvControl::parse(&buf).gro_segment, None);
    }

    #[test]
    fn udp_segment_round_trips_through_the_gro_parser() {
        // What we write for UDP_SEGMENT has the layout the kernel reports UDP_GRO in, except
        // for the type and the payload width; check the header and then parse a GRO message.
        let mut buf = CmsgBuf::ZERO;
        let len = put_send_cmsgs(&mut buf, Some(1420), None);
        // SAFETY: CMSG_SPACE is arithmetic on its argument only.
        assert_eq!(len, unsafe { libc::CMSG_SPACE(2) } as usize);
        let cmsg_len = usize::from_ne_bytes(buf.0[..8].try_into().expect("8 bytes"));
        // SAFETY: as above.
        assert_eq!(cmsg_len, unsafe { libc::CMSG_LEN(2) } as usize);
        assert_eq!(&buf.0[8..12], &libc::SOL_UDP.to_ne_bytes());
        assert_eq!(&buf.0[12..16], &libc::UDP_SEGMENT.to_ne_bytes());
        assert_eq!(&buf.0[16..18], &1420u16.to_ne_bytes());

        let mut gro = [0u8; 48];
        // SAFETY: as above.
        let l4 = unsafe { libc::CMSG_LEN(4) } as usize;
        gro[..8].copy_from_slice(&l4.to_ne_bytes());
        gro[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        gro[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        gro[16..20].copy_from_slice(&1420i32.to_ne_bytes());
        assert_eq!(RecvControl::parse(&gro).gro_segment, Some(1420));
        assert_eq!(RecvControl::parse(&gro).rxq_ovfl, None);
        // A second message (SO_RXQ_OVFL) after it is found too.
        gro[24..32].copy_from_slice(&l4.to_ne_bytes());
        gro[32..36].copy_from_slice(&libc::SOL_SOCKET.to_ne_bytes());
        gro[36..40].copy_from_slice(&libc::SO_RXQ_OVFL.to_ne_bytes());
        gro[40..44].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(RecvControl::parse(&gro).rxq_ovfl, Some(3));
        assert_eq!(RecvControl::parse(&gro).gro_segment, Some(1420));
        // A size of 0 means "not coalesced".
        gro[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(RecvControl::parse(&gro).gro_segment, None);
    }

    /// One control message of `level`/`ty` with payload `data`, as the kernel lays it out.
    fn cmsg_bytes(level: libc::c_int, ty: libc::c_int, data: &[u8]) -> Vec<u8> {
        // SAFETY: CMSG_LEN/CMSG_SPACE are arithmetic on their argument only.
        let (len, space) = unsafe {
            (
                libc::CMSG_LEN(data.len() as u32) as usize,
                libc::CMSG_SPACE(data.len() as u32) as usize,
            )
        };
        let mut b = vec![0u8; space];
        b[..8].copy_from_slice(&len.to_ne_bytes());
        b[8..12].copy_from_slice(&level.to_ne_bytes());
        b[12..16].copy_from_slice(&ty.to_ne_bytes());
        b[16..16 + data.len()].copy_from_slice(data);
        b
    }

    #[test]
    fn pktinfo_parses_for_both_families_and_maps_like_the_source() {
        // in_pktinfo: ifindex, spec_dst, addr (the header's destination)
        let mut v4 = [0u8; 12];
        v4[4..8].copy_from_slice(&[10, 0, 0, 1]);
        v4[8..12].copy_from_slice(&[127, 0, 0, 9]);
        let mut control = cmsg_bytes(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &7u32.to_ne_bytes());
        control.extend(cmsg_bytes(libc::IPPROTO_IP, libc::IP_PKTINFO, &v4));
        let c = RecvControl::parse(&control);
        assert_eq!(c.rxq_ovfl, Some(7));
        assert_eq!(
            c.local,
            Some(IpAddr::from([127, 0, 0, 9])),
            "ipi_addr, not spec_dst"
        );
        let v4_src = addr("127.0.0.2:5");
        let mapped_src = addr("[::ffff:127.0.0.2]:5");
        assert_eq!(c.local_for(&v4_src), Some(IpAddr::from([127, 0, 0, 9])));
        assert_eq!(
            c.local_for(&mapped_src),
            Some("::ffff:127.0.0.9".parse().expect("literal")),
            "v4-mapped like the source on a dual-stack socket"
        );

        // in6_pktinfo: addr, ifindex
        let mut v6 = [0u8; 20];
        v6[..16].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let c = RecvControl::parse(&cmsg_bytes(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &v6));
        assert_eq!(c.local, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!((c.rxq_ovfl, c.gro_segment), (None, None));
        let mapped = Ipv4Addr::new(127, 0, 0, 3).to_ipv6_mapped();
        v6[..16].copy_from_slice(&mapped.octets());
        let c = RecvControl::parse(&cmsg_bytes(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &v6));
        assert_eq!(c.local_for(&mapped_src), Some(IpAddr::V6(mapped)));
        assert_eq!(c.local_for(&v4_src), Some(IpAddr::from([127, 0, 0, 3])));

        // A payload too short for its kind is skipped, not read past.
        let c = RecvControl::parse(&cmsg_bytes(
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            &v6[..8],
        ));
        assert_eq!(c.local, None);
        assert_eq!(RecvControl::parse(&[]), RecvControl::default());
    }

    #[test]
    fn send_cmsgs_carry_segment_and_source() {
        let mut buf = CmsgBuf([0xa5; CMSG_BUF_LEN]);
        assert_eq!(put_send_cmsgs(&mut buf, None, None), 0);
        assert_eq!(
            buf.0, [0xa5; CMSG_BUF_LEN],
            "nothing to send: buffer untouched"
        );

        let src = Ipv4Addr::new(127, 0, 0, 2);
        let len = put_send_cmsgs(&mut buf, Some(1200), Some(Pktinfo::V4(src)));
        let mut want = cmsg_bytes(libc::SOL_UDP, libc::UDP_SEGMENT, &1200u16.to_ne_bytes());
        let mut info = [0u8; 12];
        info[4..8].copy_from_slice(&src.octets()); // ipi_spec_dst
        want.extend(cmsg_bytes(libc::IPPROTO_IP, libc::IP_PKTINFO, &info));
        assert_eq!(&buf.0[..len], &want[..]);

        let src6 = Ipv6Addr::LOCALHOST;
        let len = put_send_cmsgs(&mut buf, None, Some(Pktinfo::V6(src6)));
        let mut info6 = [0u8; 20];
        info6[..16].copy_from_slice(&src6.octets());
        assert_eq!(
            &buf.0[..len],
            &cmsg_bytes(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &info6)[..]
        );
        let len = put_send_cmsgs(&mut buf, Some(100), Some(Pktinfo::V6(src6)));
        assert!(len <= CMSG_BUF_LEN);
    }

    #[test]
    fn pktinfo_follows_the_socket_family() {
        let v4: IpAddr = "127.0.0.2".parse().expect("literal");
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().expect("literal");
        let v6: IpAddr = "::1".parse().expect("literal");
        let p4 = Pktinfo::V4(Ipv4Addr::new(127, 0, 0, 2));
        let p_mapped = Pktinfo::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped());
        assert_eq!(Pktinfo::for_family(v4, Family::V4), Some(p4));
        assert_eq!(Pktinfo::for_family(mapped, Family::V4), Some(p4));
        assert_eq!(
            Pktinfo::for_family(v6, Family::V4),
            None,
            "IPv6 through IPv4"
        );
        assert_eq!(Pktinfo::for_family(v4, Family::V6), Some(p_mapped));
        assert_eq!(
            Pktinfo::for_family(v6, Family::V6),
            Some(Pktinfo::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(Pktinfo::for_family(v4, Family::Unknown), Some(p4));
    }

    #[test]
    fn gso_group_follows_the_kernel_rule() {
        let d1: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        let d2: SocketAddr = "127.0.0.1:2".parse().expect("literal");
        let (a, b, c) = (vec![1u8; 100], vec![2u8; 50], vec![3u8; 150]);
        fn t(destination: SocketAddr, contents: &[u8]) -> Transmit<'_> {
            Transmit {
                listener: 0,
                destination,
                contents,
                segment_size: None,
                source: None,
            }
        }
        let g = |run: &[Transmit<'_>], max| gso_group(run, max);
        assert_eq!(g(&[], 64), (0, None));
        assert_eq!(g(&[t(d1, &a)], 64), (1, None), "one segment: no GSO");
        assert_eq!(g(&[t(d1, &a), t(d1, &a)], 64), (2, Some(100)));
        assert_eq!(g(&[t(d1, &a), t(d1, &a)], 1), (1, None), "GSO off");
        // A shorter datagram ends the group; a longer one starts the next.
        assert_eq!(g(&[t(d1, &a), t(d1, &b), t(d1, &b)], 64), (2, Some(100)));
        assert_eq!(g(&[t(d1, &a), t(d1, &c)], 64), (1, None));
        assert_eq!(
            g(&[t(d1, &a), t(d2, &a)], 64),
            (1, None),
            "other destination"
        );
        let from = |ip: [u8; 4], contents| Transmit {
            source: Some(IpAddr::from(ip)),
            ..t(d1, contents)
        };
        assert_eq!(
            g(&[from([127, 0, 0, 2], &a), from([127, 0, 0, 3], &a)], 64),
            (1, None),
            "other source"
        );
        assert_eq!(g(&[t(d1, &a), from([127, 0, 0, 2], &a)], 64), (1, None));
        assert_eq!(
            g(&[from([127, 0, 0, 2], &a), from([127, 0, 0, 2], &a)], 64),
            (2, Some(100))
        );
        // Empty datagrams never join a group (the kernel would drop them).
        let e = Vec::new();
        assert_eq!(g(&[t(d1, &a), t(d1, &e)], 64), (1, None));
        assert_eq!(g(&[t(d1, &e), t(d1, &e)], 64), (1, None));
        // Segment cap and payload cap.
        let many: Vec<Transmit<'_>> = (0..100).map(|_| t(d1, &a)).collect();
        assert_eq!(g(&many, 64), (64, Some(100)));
        let big = vec![0u8; 20_000];
        let bigs: Vec<Transmit<'_>> = (0..5).map(|_| t(d1, &big)).collect();
        assert_eq!(g(&bigs, 64), (3, Some(20_000)), "65507-byte payload cap");
        let huge = vec![0u8; 70_000];
        assert_eq!(g(&[t(d1, &huge), t(d1, &a)], 64), (1, None));
    }

    /// A run is a GSO message of its own where the listener can send it whole, and is split
    /// into its datagrams where it cannot; singles never join a run.
    #[test]
    fn runs_go_whole_or_split() {
        let d: SocketAddr = "127.0.0.1:1".parse().expect("literal");
        let bytes = vec![7u8; 1050];
        let run = Transmit {
            segment_size: Some(100),
            ..Transmit::new(0, d, &bytes)
        };
        assert_eq!((run.datagrams(), run.run_segment()), (11, Some(100)));
        let lens: Vec<usize> = run.split().map(|t| t.contents.len()).collect();
        assert_eq!(lens, [[100; 10].as_slice(), &[50]].concat());
        let single = Transmit::new(0, d, &bytes[..100]);
        let not_a_run = Transmit {
            segment_size: Some(2000),
            ..single
        };
        assert_eq!((not_a_run.datagrams(), not_a_run.run_segment()), (1, None));
        let empty = Transmit::new(0, d, &[]);
        assert_eq!((empty.datagrams(), empty.split().count()), (1, 1));

        assert_eq!(gso_group(&[run, single], 64), (1, Some(100)));
        assert_eq!(
            gso_group(&[single, run], 64),
            (1, None),
            "a single does not join a run"
        );
        assert_eq!(gso_group(&[single, single, run], 64), (2, Some(100)));
        assert!(sendable(&run, 64) && sendable(&run, 11));
        assert!(
            !sendable(&run, 10) && !sendable(&run, 1),
            "too many segments / no GSO"
        );
        let huge = vec![0u8; 70_000];
        let too_long = Transmit {
            segment_size: Some(1000),
            ..Transmit::new(0, d, &huge)
        };
        assert!(!sendable(&too_long, 128), "over the 65507-byte payload cap");

        let mut out = Vec::new();
        assert!(!split_unsendable(&[run, single], &[64], &mut out));
        assert!(
            out.is_empty(),
            "nothing to split: the list is used as it is"
        );
        assert!(split_unsendable(&[single, run], &[1], &mut out));
        assert_eq!(out.len(), 12);
        assert!(out.iter().all(|t| t.run_segment().is_none()));
        // an unknown listener counts as one without GSO (its send fails datagram by datagram)
        assert!(split_unsendable(
            &[Transmit { listener: 3, ..run }],
            &[64],
            &mut out
        ));
        assert_eq!(out.len(), 11);
    }

    #[test]
    fn gro_stride_is_the_segment_size_or_the_whole_message() {
        let mut gro = [0u8; 24];
        // SAFETY: CMSG_LEN is arithmetic on its argument only.
        let l4 = unsafe { libc::CMSG_LEN(4) } as usize;
        gro[..8].copy_from_slice(&l4.to_ne_bytes());
        gro[8..12].copy_from_slice(&libc::SOL_UDP.to_ne_bytes());
        gro[12..16].copy_from_slice(&libc::UDP_GRO.to_ne_bytes());
        gro[16..20].copy_from_slice(&100i32.to_ne_bytes());
        assert_eq!(RecvControl::parse(&gro).stride(250), 100);
        assert_eq!(
            RecvControl::parse(&gro).stride(100),
            100,
            "one segment: the whole message"
        );
        assert_eq!(
            RecvControl::parse(&gro).stride(60),
            60,
            "a size past the message is ignored"
        );
        assert_eq!(
            RecvControl::parse(&[]).stride(60),
            60,
            "no UDP_GRO: one datagram"
        );
        assert_eq!(
            RecvControl::parse(&[]).stride(0),
            1,
            "an empty datagram still advances"
        );
    }

    /// A run kept whole in one arena slot reads as its datagrams, in order, adjacent in
    /// memory; only the last carries MSG_TRUNC; an empty datagram is one datagram.
    #[test]
    fn a_run_in_the_arena_reads_as_its_datagrams() {
        let payload: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let run = RecvRun {
            addr: addr("192.0.2.1:7"),
            local: None,
            len: payload.len(),
            stride: 100,
            truncated: true,
        };
        assert!(run.is_coalesced());
        let mut batch = RecvBatch::new();
        let (first, base) = batch.slots();
        assert_eq!((first, batch.free_slots()), (0, batch.capacity()));
        let slot_len = batch.slot_len();
        // SAFETY: slot 1 is inside the arena (BATCH_SIZE slots of slot_len >= 250 bytes).
        unsafe {
            ptr::copy_nonoverlapping(payload.as_ptr(), base.add(slot_len), payload.len());
        }
        batch.take_slots(2);
        let empty = RecvRun {
            addr: run.addr,
            local: None,
            len: 0,
            stride: 1,
            truncated: false,
        };
        assert!(!empty.is_coalesced());
        batch.push_slot(1, run, 3);
        batch.push_slot(0, empty, 0);
        assert_eq!((batch.len(), batch.messages()), (4, 2));
        assert_eq!(batch.free_slots(), batch.capacity() - 2);
        for (i, want) in [&payload[..100], &payload[100..200], &payload[200..]]
            .into_iter()
            .enumerate()
        {
            assert_eq!(batch.datagram(i), want);
            assert_eq!(batch.meta(i).listener, 3);
            assert_eq!(batch.meta(i).truncated, i == 2, "datagram {i}");
        }
        let next = batch.datagram(1).as_ptr() as usize;
        assert_eq!(batch.datagram(0).as_ptr() as usize + 100, next, "adjacent");
        assert_eq!((batch.meta(3).len, batch.meta(3).listener), (0, 0));
        batch.clear();
        assert!(batch.is_empty() && batch.free_slots() == batch.capacity());
    }

    #[test]
    fn rate_limit_lets_one_through_then_counts() {
        let mut r = RateLimit::default();
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        assert_eq!(r.suppressed, 2);
    }
}
