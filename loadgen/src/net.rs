//! The generator's socket set-up and send staging over wgrelay's I/O layer (`wgrelay::io`,
//! which does the batched system calls, IP_PKTINFO both ways, UDP GSO and GRO, and has the
//! epoll wrapper for waiting on many sockets with microsecond timeouts).
//!
//! IPv4 only: everything runs on 127.0.0.0/8.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Level-triggered epoll over many sockets with microsecond timeouts (wgrelay's).
pub use wgrelay::io::Poller;

/// Datagrams per send list and receive batch (wgrelay's `io::BATCH_SIZE`).
pub const BATCH: usize = wgrelay::io::BATCH_SIZE;
/// Bytes a send list reserves per datagram: the largest WireGuard datagram on a 1500-byte
/// path fits.
pub const SLOT_PLAIN: usize = 2048;
/// Largest UDP payload of one (GSO) send.
pub const MAX_UDP_PAYLOAD: usize = 65507;
/// Kernel `UDP_MAX_SEGMENTS` as wgrelay uses it.
pub const MAX_GSO_SEGMENTS: usize = wgrelay::io::GSO_MAX_SEGMENTS;

/// How to set up one socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct SockOpts {
    /// Report the destination address of received datagrams (sending from a chosen source
    /// needs no option).
    pub pktinfo: bool,
    /// Restrict a wildcard-bound socket to the loopback device (SO_BINDTODEVICE "lo").
    pub loopback_only: bool,
    /// SO_RCVBUF/SO_SNDBUF in bytes (0: kernel default). FORCE variants are tried first.
    pub buffer: usize,
}

/// Outcome of a flush.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sent {
    /// Datagrams the kernel took (a GSO run counts each of its datagrams).
    pub datagrams: u64,
    /// Datagrams refused (counted and skipped).
    pub failed: u64,
    /// errno of the last refusal.
    pub last_errno: i32,
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
            datagrams: stats.sent,
            failed: stats.failed,
            last_errno: if stats.failed > 0 {
                backend.last_send_errno().unwrap_or(0)
            } else {
                0
            },
        }
    }
}
