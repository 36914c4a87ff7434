//! Creating and tuning the relay's UDP sockets.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// How [`bind_udp`] sets up a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOptions {
    /// Set SO_REUSEPORT so several shards can bind the same address and the kernel spreads
    /// flows across them.
    pub reuse_port: bool,
    /// Requested SO_RCVBUF in bytes; 0 keeps the kernel default.
    pub recv_buffer: usize,
    /// Requested SO_SNDBUF in bytes; 0 keeps the kernel default.
    pub send_buffer: usize,
    /// Report each received datagram's local (destination) address in
    /// [`RecvMeta::local`](super::RecvMeta::local): see [`enable_pktinfo`]. Off for the relay
    /// (its listeners are bound to one address each, so they know it); a socket bound to a
    /// wildcard address that answers from the address it was reached on needs it.
    pub pktinfo: bool,
}

impl Default for SocketOptions {
    /// SO_REUSEPORT on and 4 MiB buffers each way: the kernel default (~208 KiB) holds only a
    /// few hundred full-size datagrams and drops bursts while a shard is busy sending.
    fn default() -> Self {
        SocketOptions {
            reuse_port: true,
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            pktinfo: false,
        }
    }
}

/// A socket call that failed, with what it was doing; keeps the OS error, so callers can
/// still tell its cause (`os_error`), e.g. a host without IPv6 from a port in use.
#[derive(Debug)]
pub struct SocketError {
    context: String,
    source: io::Error,
}

impl std::fmt::Display for SocketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for SocketError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The OS error number behind `e`, also through a [`SocketError`].
pub fn os_error(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<SocketError>())
            .and_then(|s| s.source.raw_os_error())
    })
}

/// Binds a UDP socket for the relay.
///
/// - SO_REUSEPORT when `opts.reuse_port`;
/// - IPV6_V6ONLY=false for the IPv6 wildcard address, so `[::]` also serves IPv4 peers
///   (they appear v4-mapped);
/// - SO_RCVBUF/SO_SNDBUF to the requested sizes, trying SO_RCVBUFFORCE/SO_SNDBUFFORCE first
///   (they bypass `net.core.[rw]mem_max` but need CAP_NET_ADMIN) and falling back to the plain
///   option, logged at debug;
/// - SO_RXQ_OVFL when available, so receives report kernel drop counts (failure ignored);
/// - IP_PKTINFO / IPV6_RECVPKTINFO when `opts.pktinfo` ([`enable_pktinfo`]).
///
/// The socket is left blocking: receives pass MSG_DONTWAIT per call, and blocking sends give the
/// datapath backpressure instead of drops. Errors name the address, e.g.
/// `bind 127.0.0.1:51820: Address already in use (os error 98)`.
///
/// # Errors
/// Socket creation, a required option (SO_REUSEPORT, IPV6_V6ONLY, buffer sizes, pktinfo) or the bind
/// failed; the message says which and names `addr`.
pub fn bind_udp(addr: SocketAddr, opts: &SocketOptions) -> io::Result<UdpSocket> {
    let ctx = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            SocketError {
                context: format!("{what} {addr}"),
                source: e,
            },
        )
    };

    // socket2 sets SOCK_CLOEXEC, so the fd does not leak into children.
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| ctx("socket for", e))?;

    if opts.reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(|e| ctx("SO_REUSEPORT for", e))?;
    }
    if let SocketAddr::V6(v6) = addr {
        if v6.ip().is_unspecified() {
            // Distributions differ in net.ipv6.bindv6only; be explicit so `[::]` is dual-stack.
            socket
                .set_only_v6(false)
                .map_err(|e| ctx("IPV6_V6ONLY=0 for", e))?;
        }
    }
    if opts.recv_buffer > 0 {
        set_buffer(&socket, Direction::Recv, opts.recv_buffer)
            .map_err(|e| ctx("SO_RCVBUF for", e))?;
    }
    if opts.send_buffer > 0 {
        set_buffer(&socket, Direction::Send, opts.send_buffer)
            .map_err(|e| ctx("SO_SNDBUF for", e))?;
    }
    // Optional: only feeds the drop counter, so a kernel without it is fine.
    if let Err(e) = setsockopt_int(&socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1) {
        log::debug!("SO_RXQ_OVFL unavailable on {addr}: {e}");
    }

    if opts.pktinfo {
        set_pktinfo(&socket).map_err(|e| ctx("IP_PKTINFO/IPV6_RECVPKTINFO for", e))?;
    }

    socket.bind(&addr.into()).map_err(|e| ctx("bind", e))?;
    Ok(socket.into())
}

/// Makes `sock` report the local (destination) address of every datagram it receives, which
/// the backends put in [`RecvMeta::local`](super::RecvMeta::local): IP_PKTINFO on an IPv4
/// socket, IPV6_RECVPKTINFO on an IPv6 one (which also covers the IPv4 datagrams of a
/// dual-stack socket: the kernel gives their address v4-mapped). Sending from a chosen address
/// ([`Transmit::source`](super::Transmit::source)) needs no option.
///
/// # Errors
/// `setsockopt` failed (not expected on a UDP socket).
pub fn enable_pktinfo(sock: &UdpSocket) -> io::Result<()> {
    set_pktinfo(&SockRef::from(sock))
}

fn set_pktinfo(socket: &Socket) -> io::Result<()> {
    if socket.domain()? == Domain::IPV6 {
        setsockopt_int(socket, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        setsockopt_int(socket, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// Binds `members` sockets to `addr` as one SO_REUSEPORT group (one per shard).
///
/// A plain bind (no SO_REUSEPORT) comes first and is closed again: it fails if anyone holds
/// the port, even with SO_REUSEPORT (a stranger in the group would silently take a share of
/// the traffic), and for port 0 it makes the kernel pick a port nobody holds. A reuseport
/// bind of port 0 does not: it may return a port that another reuseport socket of the same
/// user already has, and the two then split each other's datagrams. Between the probe's
/// close and the group's first bind, only another process binding that very port can slip
/// in (a few microseconds, one port in the ephemeral range).
///
/// # Errors
/// The port is in use, `members` is 0, or a socket option or bind failed (the message names
/// the address, as `bind_udp`'s do).
pub fn bind_group(
    addr: SocketAddr,
    members: usize,
    opts: &SocketOptions,
) -> io::Result<Vec<UdpSocket>> {
    if members == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bind {addr}: a socket group needs at least one member"),
        ));
    }
    let probe = bind_udp(
        addr,
        &SocketOptions {
            reuse_port: false,
            recv_buffer: 0,
            send_buffer: 0,
            pktinfo: false,
        },
    )?;
    let actual = probe.local_addr()?;
    drop(probe);
    let member = SocketOptions {
        reuse_port: true,
        ..*opts
    };
    (0..members).map(|_| bind_udp(actual, &member)).collect()
}

/// Effective (SO_RCVBUF, SO_SNDBUF) as the kernel reports them, for the startup log line.
///
/// Linux reports twice the requested size (it reserves room for bookkeeping).
///
/// # Errors
/// `getsockopt` failed (not expected on an open UDP socket).
pub fn buffer_sizes(sock: &UdpSocket) -> io::Result<(usize, usize)> {
    let s = SockRef::from(sock);
    Ok((s.recv_buffer_size()?, s.send_buffer_size()?))
}

/// Segments one UDP GSO send may carry: the kernel's `UDP_MAX_SEGMENTS`, which is 64 before
/// Linux 6.9 and 128 since. 64 works on every kernel, and a shard never has more datagrams of
/// one run than a receive batch (64) anyway.
pub const GSO_MAX_SEGMENTS: usize = 64;

/// Segments the kernel coalesces into one UDP GRO receive at most (`UDP_GRO_CNT_MAX`).
pub const GRO_MAX_SEGMENTS: usize = 64;

/// Whether `sock` can send UDP GSO (UDP_SEGMENT, Linux 4.18): [`GSO_MAX_SEGMENTS`] or 1.
///
/// Probed as quinn-udp does: set UDP_SEGMENT as a socket default, then reset it to 0 so that
/// segmentation only happens where a send asks for it with a control message.
/// `ENOPROTOOPT`/`EOPNOTSUPP` (older kernel, other protocol) mean unsupported; any other error
/// is logged at debug and also taken as unsupported.
pub fn probe_gso(sock: &UdpSocket) -> usize {
    // Any valid size works for the test; 1500 is quinn-udp's.
    match set_supported(sock, libc::SOL_UDP, libc::UDP_SEGMENT, 1500) {
        Ok(true) => match set_supported(sock, libc::SOL_UDP, libc::UDP_SEGMENT, 0) {
            Ok(true) => GSO_MAX_SEGMENTS,
            // A socket stuck with a default segment size would split every send: no GSO.
            _ => 1,
        },
        Ok(false) => 1,
        Err(e) => {
            log::debug!("UDP_SEGMENT probe failed: {e}");
            1
        }
    }
}

/// Turns UDP GRO (UDP_GRO, Linux 5.0) on for `sock`: [`GRO_MAX_SEGMENTS`] when the kernel took
/// it, 1 when unsupported (same error mapping as [`probe_gso`]).
pub fn enable_gro(sock: &UdpSocket) -> usize {
    match set_supported(sock, libc::SOL_UDP, libc::UDP_GRO, 1) {
        Ok(true) => GRO_MAX_SEGMENTS,
        Ok(false) => 1,
        Err(e) => {
            log::debug!("UDP_GRO unavailable: {e}");
            1
        }
    }
}

/// `setsockopt` with an int value: `Ok(false)` when the option is unknown or not supported here
/// (`ENOPROTOOPT`/`EOPNOTSUPP`), as quinn-udp's `set_socket_option_supported`.
fn set_supported(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<bool> {
    match setsockopt_int(&SockRef::from(sock), level, name, value) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP)) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Recv,
    Send,
}

/// Sets one buffer size, preferring the FORCE variant that ignores the sysctl ceiling.
fn set_buffer(socket: &Socket, dir: Direction, size: usize) -> io::Result<()> {
    let (force, name) = match dir {
        Direction::Recv => (libc::SO_RCVBUFFORCE, "SO_RCVBUFFORCE"),
        Direction::Send => (libc::SO_SNDBUFFORCE, "SO_SNDBUFFORCE"),
    };
    // The kernel takes an int; clamp rather than wrap for absurd requests.
    let value = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    match setsockopt_int(socket, libc::SOL_SOCKET, force, value) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Expected without CAP_NET_ADMIN; the plain option is capped at net.core.*mem_max.
            log::debug!("{name}({size}) failed ({e}); using the plain option");
            match dir {
                Direction::Recv => socket.set_recv_buffer_size(size),
                Direction::Send => socket.set_send_buffer_size(size),
            }
        }
    }
}

/// `setsockopt` with an int value, for options socket2 does not wrap.
fn setsockopt_int(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    setsockopt(socket, level, name, &value)
}

/// `setsockopt` with any plain C value (an int, a `sock_fprog`, ...).
pub(super) fn setsockopt<T>(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: the fd is open for the lifetime of `socket`; the pointer and length describe a
    // live `T` the kernel only reads (and copies) during the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn loopback_any_port() -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    #[test]
    fn reuse_port_allows_two_binds() {
        let opts = SocketOptions::default();
        let a = bind_udp(loopback_any_port(), &opts).expect("first bind");
        let addr = a.local_addr().expect("local_addr");
        let b = bind_udp(addr, &opts).expect("second bind with SO_REUSEPORT");
        assert_eq!(b.local_addr().expect("local_addr"), addr);
    }

    /// Groups bound to port 0 at the same time each get a port of their own. Binding the
    /// first member with SO_REUSEPORT directly shares ports: of 400 groups held at once,
    /// several land on a port another group already has.
    #[test]
    fn groups_on_port_zero_never_share_a_port() {
        let groups: Vec<Vec<UdpSocket>> = (0..400)
            .map(|_| bind_group(loopback_any_port(), 2, &SocketOptions::default()).expect("group"))
            .collect();
        let mut ports = std::collections::HashSet::new();
        for g in &groups {
            let a = g[0].local_addr().expect("local_addr");
            assert_eq!(
                g[1].local_addr().expect("local_addr"),
                a,
                "one port per group"
            );
            assert!(
                ports.insert(a.port()),
                "port {} handed to two groups",
                a.port()
            );
        }
    }

    #[test]
    fn a_group_refuses_a_port_in_use() {
        let opts = SocketOptions::default();
        // Held with SO_REUSEPORT by someone else: joining it would split their traffic.
        let other = bind_udp(loopback_any_port(), &opts).expect("bind");
        let addr = other.local_addr().expect("local_addr");
        let err = bind_group(addr, 2, &opts).expect_err("port is held");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(
            err.to_string().starts_with(&format!("bind {addr}: ")),
            "{err}"
        );
        let err = bind_group(loopback_any_port(), 0, &opts).expect_err("no members");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn bind_error_names_address() {
        let no_reuse = SocketOptions {
            reuse_port: false,
            ..SocketOptions::default()
        };
        let a = bind_udp(loopback_any_port(), &no_reuse).expect("first bind");
        let addr = a.local_addr().expect("local_addr");
        let err = bind_udp(addr, &no_reuse).expect_err("port is taken");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("bind {addr}: ")), "{msg}");
    }

    #[test]
    fn buffer_sizes_are_reported() {
        let sock = bind_udp(loopback_any_port(), &SocketOptions::default()).expect("bind");
        let (rcv, snd) = buffer_sizes(&sock).expect("buffer_sizes");
        println!("SO_RCVBUF={rcv} SO_SNDBUF={snd}");
        assert!(rcv > 0 && snd > 0);

        // With 0 requested the kernel default stays (and is still reported).
        let plain = SocketOptions {
            reuse_port: false,
            recv_buffer: 0,
            send_buffer: 0,
            pktinfo: false,
        };
        let sock = bind_udp(loopback_any_port(), &plain).expect("bind");
        let (rcv0, snd0) = buffer_sizes(&sock).expect("buffer_sizes");
        println!("default SO_RCVBUF={rcv0} SO_SNDBUF={snd0}");
        assert!(rcv0 > 0 && snd0 > 0);
    }

    #[test]
    fn offload_probes_answer_one_or_the_kernel_cap() {
        let sock = bind_udp(loopback_any_port(), &SocketOptions::default()).expect("bind");
        let gso = probe_gso(&sock);
        let gro = enable_gro(&sock);
        println!("gso segments {gso}, gro segments {gro}");
        assert!(gso == 1 || gso == GSO_MAX_SEGMENTS);
        assert!(gro == 1 || gro == GRO_MAX_SEGMENTS);
        // The probe leaves no default segment size behind: a plain send stays one datagram.
        let rx = UdpSocket::bind(loopback_any_port()).expect("bind");
        sock.send_to(&[7u8; 3000], rx.local_addr().expect("local_addr"))
            .expect("send");
        let mut buf = [0u8; 4000];
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(rx.recv(&mut buf).expect("recv"), 3000);
    }

    #[test]
    fn dual_stack_wildcard_is_not_v6_only() {
        let addr: SocketAddr = "[::]:0".parse().expect("literal");
        let sock = match bind_udp(addr, &SocketOptions::default()) {
            Ok(s) => s,
            Err(e) => {
                println!("skipping: no IPv6 on this host ({e})");
                return;
            }
        };
        let only_v6 = SockRef::from(&sock).only_v6().expect("IPV6_V6ONLY");
        assert!(!only_v6);
    }
}
