//! Platform UDP I/O for the datapath.
//!
//! One small interface ([`Backend`]) over the platform's batched datagram calls, in the style of
//! quinn-udp: capabilities are probed once per socket, and anything the platform cannot do degrades
//! to something slower rather than failing. Backends only move bytes; they never look inside a
//! packet.
//!
//! Two backends: [`MmsgBackend`] (`poll` + `recvmmsg`/`sendmmsg`, any Linux) and
//! [`UringBackend`] (io_uring multishot receives into a provided buffer ring; [`uring::probe`]
//! says whether it can run here). Their shared low-level helpers live in `sys`.

pub mod mmsg;
#[cfg(test)]
pub(crate) mod seccomp;
pub mod socket;
pub mod steer;
mod sys;
#[cfg(test)]
mod testkit;
pub mod uring;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use mmsg::MmsgBackend;
pub use socket::{
    bind_group, bind_udp, buffer_sizes, enable_gro, probe_gso, SocketOptions, GRO_MAX_SEGMENTS,
    GSO_MAX_SEGMENTS,
};
pub use uring::UringBackend;

/// Largest datagram a receive slot holds; longer ones are reported truncated.
///
/// WireGuard packets are at most the tunnel MTU plus 32 bytes of overhead, so a 1500-byte path
/// never needs more than ~1.5 KiB. 9216 bytes covers jumbo-frame networks (the common 9000-byte
/// MTU and switches that allow 9216) so a relay on such a network forwards every datagram intact,
/// at a cost of 576 KiB per [`RecvBatch`].
pub const MAX_DATAGRAM_LEN: usize = 9216;

/// Datagrams per recvmmsg/sendmmsg call. Untuned.
pub const BATCH_SIZE: usize = 64;

/// Metadata of one received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// Index of the backend socket (listener) the datagram arrived on.
    pub listener: usize,
    /// Source address. On a dual-stack IPv6 socket an IPv4 peer shows up v4-mapped
    /// (`::ffff:a.b.c.d`); replies through the same listener accept it unchanged.
    pub addr: SocketAddr,
    /// Bytes stored in the slot (at most [`MAX_DATAGRAM_LEN`]).
    pub len: usize,
    /// The datagram was longer than [`MAX_DATAGRAM_LEN`]; only the first `len` bytes were kept.
    pub truncated: bool,
}

impl RecvMeta {
    /// Placeholder for empty slots; never handed out through [`RecvBatch::meta`].
    const EMPTY: RecvMeta = RecvMeta {
        listener: 0,
        addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
        len: 0,
        truncated: false,
    };
}

/// Caller-owned receive storage: [`BATCH_SIZE`] slots of [`MAX_DATAGRAM_LEN`] bytes, and their
/// metadata.
///
/// Allocated once (by [`RecvBatch::new`]) and reused for every receive, so the hot path does not
/// allocate. Backends write into it through the `pub(crate)` slot accessors.
pub struct RecvBatch {
    /// `BATCH_SIZE * MAX_DATAGRAM_LEN` bytes; slot `i` starts at `i * MAX_DATAGRAM_LEN`.
    buf: Box<[u8]>,
    meta: Box<[RecvMeta]>,
    len: usize,
}

impl RecvBatch {
    /// Allocates an empty batch.
    pub fn new() -> Self {
        RecvBatch {
            buf: vec![0u8; BATCH_SIZE * MAX_DATAGRAM_LEN].into_boxed_slice(),
            meta: vec![RecvMeta::EMPTY; BATCH_SIZE].into_boxed_slice(),
            len: 0,
        }
    }

    /// Number of datagrams held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no datagram is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most datagrams the batch can hold ([`BATCH_SIZE`]).
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Metadata of datagram `i`.
    ///
    /// # Panics
    /// If `i >= self.len()` (a caller bug, not something the network can cause).
    pub fn meta(&self, i: usize) -> &RecvMeta {
        assert!(i < self.len, "RecvBatch::meta({i}) with len {}", self.len);
        &self.meta[i]
    }

    /// The received bytes of datagram `i` (exactly `meta(i).len` bytes).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let len = self.meta(i).len;
        let start = i * MAX_DATAGRAM_LEN;
        &self.buf[start..start + len]
    }

    /// The received bytes of datagram `i`, mutable (a relay may rewrite in place before sending).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn datagram_mut(&mut self, i: usize) -> &mut [u8] {
        let len = self.meta(i).len;
        let start = i * MAX_DATAGRAM_LEN;
        &mut self.buf[start..start + len]
    }

    /// Iterates over `(meta, bytes)` of the held datagrams.
    pub fn iter(&self) -> impl Iterator<Item = (&RecvMeta, &[u8])> + '_ {
        (0..self.len).map(move |i| (&self.meta[i], self.datagram(i)))
    }

    /// Forgets all datagrams (the storage is kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Base pointer of the slot storage, for a backend to receive into: slot `i` starts at
    /// `i * MAX_DATAGRAM_LEN`. Derive every slot pointer of one receive from a single call, so a
    /// later borrow of the storage does not invalidate pointers the kernel is about to use.
    pub(crate) fn slots_ptr(&mut self) -> *mut u8 {
        self.buf.as_mut_ptr()
    }

    /// Records slot `self.len()` as filled with `meta`. The caller has written the bytes.
    pub(crate) fn push_meta(&mut self, meta: RecvMeta) {
        debug_assert!(self.len < self.meta.len());
        debug_assert!(meta.len <= MAX_DATAGRAM_LEN);
        self.meta[self.len] = meta;
        self.len += 1;
    }

    /// Copies `bytes` into the next free slot (at most [`MAX_DATAGRAM_LEN`] of them; longer is
    /// reported truncated) and records it. For backends that receive into their own buffers.
    pub(crate) fn push_datagram(
        &mut self,
        listener: usize,
        addr: SocketAddr,
        bytes: &[u8],
        truncated: bool,
    ) {
        debug_assert!(self.len < self.meta.len());
        let len = bytes.len().min(MAX_DATAGRAM_LEN);
        let start = self.len * MAX_DATAGRAM_LEN;
        self.buf[start..start + len].copy_from_slice(&bytes[..len]);
        self.push_meta(RecvMeta {
            listener,
            addr,
            len,
            truncated: truncated || bytes.len() > MAX_DATAGRAM_LEN,
        });
    }

    /// Moves the bytes of slot `from` to slot `to` (`to < from`). Used to close a gap when a
    /// slot in the middle of a received run has to be dropped.
    pub(crate) fn move_slot(&mut self, from: usize, to: usize, len: usize) {
        let src = from * MAX_DATAGRAM_LEN;
        self.buf.copy_within(src..src + len, to * MAX_DATAGRAM_LEN);
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("len", &self.len)
            .field("meta", &&self.meta[..self.len])
            .finish_non_exhaustive()
    }
}

/// One datagram to send.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    /// Index of the backend socket to send through.
    pub listener: usize,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram.
    pub contents: &'a [u8],
}

/// Outcome of [`Backend::send`].
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    /// Datagrams handed to the kernel.
    pub sent: u64,
    /// Datagrams dropped because the kernel refused them (or the listener index was invalid).
    pub failed: u64,
}

/// Which UDP offloads a backend should use, where the kernel supports them. Each one that is
/// on is probed per socket and dropped (for good) at runtime if the kernel refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offload {
    /// Send consecutive datagrams to one destination as one UDP GSO (UDP_SEGMENT) send.
    pub gso: bool,
    /// Let the kernel coalesce received datagrams of one flow (UDP_GRO); the backend splits
    /// them again, so callers still see one datagram per slot.
    pub gro: bool,
}

impl Offload {
    /// Neither offload: one system-call message per datagram both ways.
    pub const OFF: Offload = Offload {
        gso: false,
        gro: false,
    };
    /// Both offloads, where supported.
    pub const ON: Offload = Offload {
        gso: true,
        gro: true,
    };
}

/// What a backend can do, for sizing the datapath's batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Segments one send may carry via UDP GSO (1: no GSO).
    pub max_gso_segments: usize,
    /// Segments one receive may coalesce via UDP GRO (1: no GRO).
    pub gro_segments: usize,
    /// Datagrams per receive/send system call.
    pub batch_size: usize,
}

/// What a shard's datapath needs from the platform. Implementations only move bytes; they never
/// look inside a packet.
///
/// Kept small so that a completion-based backend (io_uring) fits: it can fill `recv` from
/// harvested completions with a bounded wait.
pub trait Backend {
    /// Waits at most `timeout` for datagrams on any of the backend's sockets, then fills `batch`
    /// (cleared first) with as many as are ready, up to its capacity. Returns how many. `Ok(0)` on
    /// timeout. EINTR is retried/ignored (an interrupted wait returns `Ok(0)` early).
    fn recv(&mut self, batch: &mut RecvBatch, timeout: Duration) -> std::io::Result<usize>;

    /// Sends every transmit through the socket of its `listener`. Per-datagram failures (EPERM,
    /// ENETUNREACH, EINVAL for an address of the wrong family, ...) are counted in `failed` and
    /// skipped; the rest still go.
    fn send(&mut self, transmits: &[Transmit<'_>]) -> SendStats;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Short name for logs ("mmsg", "uring").
    fn name(&self) -> &'static str;

    /// Datagrams lost below the backend so far (cumulative), for the relay's counters.
    fn drops(&self) -> Drops {
        Drops::default()
    }

    /// Stops taking datagrams off the sockets: a successor backend on the same sockets (a
    /// reload's restarted shard) takes over, so nothing may be left inside this one. What was
    /// taken already is still returned by `recv` while [`Backend::receiving`] says so. A
    /// backend that only reads what `recv` returns (recvmmsg) has nothing to stop.
    fn stop_receiving(&mut self) {}

    /// After [`Backend::stop_receiving`]: whether `recv` may still return datagrams taken
    /// before it.
    fn receiving(&self) -> bool {
        false
    }

    /// Makes `recv` also return (early, possibly with `Ok(0)`) when `waker` becomes readable.
    /// `waker` is a non-blocking eventfd that other shards write to when they hand this shard
    /// work; the backend only waits on it and never reads it (the caller drains it after
    /// `recv` returns). The fd outlives the backend. Without a waker, handed-over work waits for
    /// the next datagram or the `recv` timeout.
    fn set_waker(&mut self, waker: std::os::fd::RawFd) -> std::io::Result<()> {
        let _ = waker;
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

/// A backend chosen at run time (the relay's shards): one virtual call per batch.
impl<B: Backend + ?Sized> Backend for Box<B> {
    fn recv(&mut self, batch: &mut RecvBatch, timeout: Duration) -> std::io::Result<usize> {
        (**self).recv(batch, timeout)
    }

    fn send(&mut self, transmits: &[Transmit<'_>]) -> SendStats {
        (**self).send(transmits)
    }

    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }

    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn drops(&self) -> Drops {
        (**self).drops()
    }

    fn stop_receiving(&mut self) {
        (**self).stop_receiving()
    }

    fn receiving(&self) -> bool {
        (**self).receiving()
    }

    fn set_waker(&mut self, waker: std::os::fd::RawFd) -> std::io::Result<()> {
        (**self).set_waker(waker)
    }
}

/// Datagrams lost below a backend, cumulative since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drops {
    /// The kernel dropped them for a full receive queue (`SO_RXQ_OVFL`).
    pub kernel: u64,
    /// io_uring's buffer ring ran dry (`ENOBUFS`); the receive was re-armed.
    pub enobufs: u64,
}
