//! Where the simulated peers live: their addresses and the sockets they send from.
//!
//! - `distinct` with IP_PKTINFO (the default when the probe passes): ONE socket bound to
//!   `0.0.0.0:P` and restricted to `lo`; peer `k` sends from `127.64.0.0 + k + 1` by setting
//!   `ipi_spec_dst` per message, and received datagrams are demultiplexed by their destination
//!   address (IP_PKTINFO on receive). Every peer is `(its own IP, P)` as the relay sees it.
//!   200k peers cost one file descriptor.
//! - `distinct` without it (`--no-pktinfo`): one socket per peer bound to its own 127.x.y.z.
//! - `shared`: one socket per peer on 127.0.0.1, distinct ports.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use wgrelay::io::{Backend, MmsgBackend, Offload, RecvBatch};

use crate::net::{self, SendList, SockOpts};

/// First address of the peers' block (127.64.0.0/10 holds 4M peers).
pub const PEER_BASE: u32 = 0x7F40_0000;

/// Address of peer `k` in distinct mode.
pub fn peer_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(PEER_BASE + 1 + k as u32)
}

/// Peer number for a destination address in distinct mode.
pub fn peer_of_ip(ip: Ipv4Addr, peers: usize) -> Option<usize> {
    let v = u32::from(ip).checked_sub(PEER_BASE + 1)? as usize;
    (v < peers).then_some(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrMode {
    Distinct,
    Shared,
}

/// The peers' sockets and addresses.
pub struct Topology {
    /// The sockets (listener `i` is socket `i`) on wgrelay's mmsg backend, which both the
    /// send path and the receive path use, one after the other (hence the cell).
    pub net: RefCell<MmsgBackend>,
    /// How many sockets.
    pub sockets: usize,
    /// Per peer: socket index and, with pktinfo, the source address to set.
    pub peers: Vec<(u32, Option<Ipv4Addr>)>,
    /// Per peer: the address the relay sees.
    pub addrs: Vec<SocketAddrV4>,
    pub pktinfo: bool,
}

impl Topology {
    /// Binds the sockets for `n` peers. `gso`: sends may carry GSO runs (otherwise every
    /// datagram is a message of its own, as with `--gso 1`); `gro`: receive with UDP GRO.
    ///
    /// # Errors
    /// A bind failed (e.g. too many open files without pktinfo).
    pub fn new(
        n: usize,
        mode: AddrMode,
        pktinfo: bool,
        gso: bool,
        gro: bool,
        buffer: usize,
    ) -> io::Result<Self> {
        let opts = SockOpts {
            pktinfo: false,
            loopback_only: false,
            buffer,
        };
        let offload = Offload { gso, gro };
        if mode == AddrMode::Distinct && pktinfo {
            let s = net::bind_udp(
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
                SockOpts {
                    pktinfo: true,
                    loopback_only: true,
                    ..opts
                },
            )?;
            let port = net::local_addr_v4(&s)?.port();
            return Ok(Topology {
                net: RefCell::new(MmsgBackend::with_offload(vec![s], offload)),
                sockets: 1,
                peers: (0..n).map(|k| (0, Some(peer_ip(k)))).collect(),
                addrs: (0..n)
                    .map(|k| SocketAddrV4::new(peer_ip(k), port))
                    .collect(),
                pktinfo: true,
            });
        }
        raise_fd_limit(n as u64 + 1024);
        let mut sockets = Vec::with_capacity(n);
        let mut addrs = Vec::with_capacity(n);
        for k in 0..n {
            let ip = match mode {
                AddrMode::Distinct => peer_ip(k),
                AddrMode::Shared => Ipv4Addr::LOCALHOST,
            };
            let s = net::bind_udp(SocketAddrV4::new(ip, 0), opts)?;
            addrs.push(net::local_addr_v4(&s)?);
            sockets.push(s);
        }
        Ok(Topology {
            sockets: sockets.len(),
            net: RefCell::new(MmsgBackend::with_offload(sockets, offload)),
            peers: (0..n).map(|k| (k as u32, None)).collect(),
            addrs,
            pktinfo: false,
        })
    }

    /// Distinct addresses through ONE IP_PKTINFO socket bound to `0.0.0.0:port` (0: any free
    /// port). A fixed port lets a second run present the same endpoints (address and port) to
    /// the relay, as a real peer with a `ListenPort` would after a restart.
    ///
    /// # Errors
    /// The bind failed (e.g. the port is taken).
    pub fn distinct_on_port(n: usize, port: u16, buffer: usize) -> io::Result<Self> {
        let s = net::bind_udp(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            SockOpts {
                pktinfo: true,
                loopback_only: true,
                buffer,
            },
        )?;
        let port = net::local_addr_v4(&s)?.port();
        Ok(Topology {
            net: RefCell::new(MmsgBackend::with_offload(vec![s], Offload::OFF)),
            sockets: 1,
            peers: (0..n).map(|k| (0, Some(peer_ip(k)))).collect(),
            addrs: (0..n)
                .map(|k| SocketAddrV4::new(peer_ip(k), port))
                .collect(),
            pktinfo: true,
        })
    }

    /// The peer a datagram received on socket `sock` (destination `dst`) is for.
    pub fn demux(&self, sock: usize, dst: Option<Ipv4Addr>) -> Option<usize> {
        if self.pktinfo {
            peer_of_ip(dst?, self.peers.len())
        } else {
            (sock < self.peers.len()).then_some(sock)
        }
    }
}

/// Raises RLIMIT_NOFILE towards `want` (up to the hard limit).
pub fn raise_fd_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Checks on loopback that a wildcard socket with IP_PKTINFO sends from a chosen 127.x.y.z
/// source and reports the destination address on receive: peer 0 sends to peer 1's address on
/// the same socket; the datagram must arrive from peer 0's address, addressed to peer 1's.
///
/// # Errors
/// Says what did not work; callers fall back to one socket per peer.
pub fn probe_pktinfo() -> io::Result<()> {
    let s: UdpSocket = net::bind_udp(
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        SockOpts {
            pktinfo: true,
            loopback_only: true,
            buffer: 0,
        },
    )?;
    let port = net::local_addr_v4(&s)?.port();
    let mut backend = MmsgBackend::new(vec![s]);
    let (a, b) = (peer_ip(0), peer_ip(1));
    let mut tx = SendList::new();
    tx.push(0, SocketAddrV4::new(b, port), Some(a), 0, 5, |d| {
        d.copy_from_slice(b"probe")
    });
    let sent = tx.flush(&mut backend);
    if sent.datagrams != 1 {
        return Err(io::Error::from_raw_os_error(sent.last_errno));
    }
    let mut rx = RecvBatch::new();
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if backend.recv(&mut rx, Duration::from_millis(10))? > 0 {
            let m = rx.meta(0);
            let from = std::net::SocketAddr::V4(SocketAddrV4::new(a, port));
            if m.addr != from || m.local != Some(IpAddr::V4(b)) || rx.datagram(0) != b"probe" {
                return Err(io::Error::other(format!(
                    "pktinfo probe: got from {} to {:?}, want from {a}:{port} to {b}",
                    m.addr, m.local
                )));
            }
            return Ok(());
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "pktinfo probe: nothing arrived",
    ))
}
