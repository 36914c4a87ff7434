//! Platform UDP I/O for the datapath.
//!
//! One small interface ([`Backend`]) over the platform's batched datagram calls, in the style of
//! quinn-udp: capabilities are probed once per socket, and anything the platform cannot do degrades
//! to something slower rather than failing. Backends only move bytes; they never look inside a
//! packet.
//!
//! Two backends: [`MmsgBackend`] (`poll` + `recvmmsg`/`sendmmsg`, any Linux) and
//! [`UringBackend`] (io_uring multishot receives into a provided buffer ring; [`uring::probe`]
//! says whether it can run here). Their shared low-level helpers live in `sys`. [`Poller`]
//! (epoll) is for callers that watch more sockets than a backend's `poll` should scan.

pub mod mmsg;
pub mod poller;
#[cfg(test)]
pub(crate) mod seccomp;
pub mod socket;
pub mod steer;
mod sys;
#[cfg(test)]
mod testkit;
pub mod uring;

use std::net::{IpAddr, SocketAddr};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

pub use mmsg::MmsgBackend;
pub use poller::Poller;
pub use socket::{
    bind_group, bind_udp, buffer_sizes, enable_gro, enable_pktinfo, probe_gso, SocketOptions,
    GRO_MAX_SEGMENTS, GSO_MAX_SEGMENTS,
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
    /// Local address: the address the datagram was sent to (IP_PKTINFO / IPV6_PKTINFO), so a
    /// socket bound to a wildcard address can tell which of its addresses a peer used. Only
    /// where the socket asked for it ([`SocketOptions::pktinfo`], [`enable_pktinfo`]), else
    /// `None`. In the form of `addr`: v4-mapped on a dual-stack socket when `addr` is.
    pub local: Option<IpAddr>,
    /// Bytes of the datagram held (at most [`MAX_DATAGRAM_LEN`], or a GRO segment's size).
    pub len: usize,
    /// The datagram was longer than its receive buffer; only the first `len` bytes were kept.
    pub truncated: bool,
}

/// One received message: a datagram, or with GRO a run of datagrams of one flow, `stride`
/// bytes apart (the last may be shorter), kept whole where the kernel put it.
#[derive(Debug, Clone, Copy)]
struct Record {
    listener: usize,
    addr: SocketAddr,
    local: Option<IpAddr>,
    /// Its datagrams are `first..first + count` of the batch.
    first: u32,
    count: u32,
    len: usize,
    /// The buffer cut the message short, so its last datagram is incomplete.
    truncated: bool,
    at: Loc,
}

/// Where a record's bytes are.
#[derive(Debug, Clone, Copy)]
enum Loc {
    /// At this offset of the batch's own arena (mmsg receives straight into it).
    Arena(usize),
    /// In a buffer lent by the backend (an io_uring provided buffer), held by the batch's
    /// [`Lease`] until the batch is cleared.
    Lent(NonNull<u8>),
}

/// One datagram of a record: where it starts in the record, and its length.
#[derive(Debug, Clone, Copy)]
struct Segment {
    record: u32,
    offset: u32,
    len: u32,
    /// Longer than [`MAX_DATAGRAM_LEN`] (a GRO segment), so cut to it, as a single datagram
    /// that long would have been.
    cut: bool,
}

/// A backend that lends its receive buffers to a [`RecvBatch`]: keeps their memory alive while
/// the batch holds them, and takes them back when the batch is cleared or dropped.
trait Lender: Send + Sync {
    /// Buffers `bids` are the backend's again (the batch no longer reads them).
    fn give_back(&self, bids: &mut Vec<u16>);
}

/// The buffers a batch holds on loan from one backend.
struct Lease {
    lender: Arc<dyn Lender>,
    bids: Vec<u16>,
}

/// Received datagrams, by message: a backend fills it with up to [`BATCH_SIZE`] messages,
/// each a datagram or a whole GRO run, without copying payload bytes: mmsg receives into the
/// batch's own arena (one slot per message), io_uring lends its provided buffers. Callers see
/// one datagram at a time ([`RecvBatch::meta`], [`RecvBatch::datagram`]); the datagrams of one
/// run are adjacent in memory, so sending them on to one destination can go as one GSO message
/// with the same segments.
///
/// Allocated once and reused for every receive, so the hot path does not allocate.
pub struct RecvBatch {
    /// `BATCH_SIZE` slots of `slot_len` bytes, zeroed by the allocator so only pages that
    /// datagrams touch become resident.
    arena: Box<[u8]>,
    slot_len: usize,
    /// Arena slots handed to the kernel this round (a message dropped by the backend still
    /// used its slot).
    slots_used: usize,
    records: Vec<Record>,
    segments: Vec<Segment>,
    lease: Option<Lease>,
}

// SAFETY: the only non-Send parts are the `Loc::Lent` pointers. They point into buffers that
// the batch's `Lease` keeps alive (its `Arc` owns the lender's memory) and that nobody else
// reads or writes until the lease gives them back, so the batch may move to another thread
// with them. It is not `Sync`: `datagram_mut` needs `&mut self`.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    /// Allocates an empty batch with slots of [`MAX_DATAGRAM_LEN`] bytes (a backend that
    /// receives coalesced runs into the arena makes them larger, once, see `reserve_slots`).
    pub fn new() -> Self {
        RecvBatch {
            arena: vec![0u8; BATCH_SIZE * MAX_DATAGRAM_LEN].into_boxed_slice(),
            slot_len: MAX_DATAGRAM_LEN,
            slots_used: 0,
            records: Vec::with_capacity(BATCH_SIZE),
            segments: Vec::with_capacity(BATCH_SIZE),
            lease: None,
        }
    }

    /// Number of datagrams held.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// True when no datagram is held.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Messages (datagrams or whole GRO runs) held.
    pub fn messages(&self) -> usize {
        self.records.len()
    }

    /// Most messages the batch can hold ([`BATCH_SIZE`]).
    pub fn capacity(&self) -> usize {
        BATCH_SIZE
    }

    /// True when no further message fits.
    pub fn is_full(&self) -> bool {
        self.records.len() >= BATCH_SIZE
    }

    fn segment(&self, i: usize) -> (&Segment, &Record) {
        assert!(
            i < self.segments.len(),
            "RecvBatch datagram {i} of {}",
            self.len()
        );
        let s = &self.segments[i];
        (s, &self.records[s.record as usize])
    }

    /// Metadata of datagram `i`.
    ///
    /// # Panics
    /// If `i >= self.len()` (a caller bug, not something the network can cause).
    pub fn meta(&self, i: usize) -> RecvMeta {
        let (s, r) = self.segment(i);
        RecvMeta {
            listener: r.listener,
            addr: r.addr,
            local: r.local,
            len: s.len as usize,
            truncated: self.truncated(i),
        }
    }

    /// The received bytes of datagram `i` (exactly `meta(i).len` bytes).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn datagram(&self, i: usize) -> &[u8] {
        let (s, r) = self.segment(i);
        let (offset, len) = (s.offset as usize, s.len as usize);
        match r.at {
            Loc::Arena(base) => &self.arena[base + offset..base + offset + len],
            // SAFETY: the record's `len` bytes from `p` are a buffer on loan to this batch
            // (`push_lent`): alive while the lease holds the lender, read or written by no one
            // else until `clear`; `offset + len <= r.len` by construction. The slice borrows
            // `self`, so it ends before `clear` can run.
            Loc::Lent(p) => unsafe { std::slice::from_raw_parts(p.as_ptr().add(offset), len) },
        }
    }

    /// The received bytes of datagram `i`, mutable (a relay may rewrite in place before sending).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn datagram_mut(&mut self, i: usize) -> &mut [u8] {
        assert!(
            i < self.segments.len(),
            "RecvBatch datagram {i} of {}",
            self.len()
        );
        let s = self.segments[i];
        let r = self.records[s.record as usize];
        let (offset, len) = (s.offset as usize, s.len as usize);
        match r.at {
            Loc::Arena(base) => &mut self.arena[base + offset..base + offset + len],
            // SAFETY: as in `datagram`; the exclusive borrow of `self` makes this the only
            // reference into the loaned buffer while it lives.
            Loc::Lent(p) => unsafe { std::slice::from_raw_parts_mut(p.as_ptr().add(offset), len) },
        }
    }

    /// Datagrams `first..=last` of one message, as the bytes they are in (one after the
    /// other, so sent on as one run with the first one's length as segment size).
    ///
    /// # Panics
    /// If they are not datagrams of one message, or out of range.
    pub fn adjacent(&self, first: usize, last: usize) -> &[u8] {
        let (a, r) = self.segment(first);
        let (b, _) = self.segment(last);
        assert!(
            a.record == b.record && first <= last && !b.cut,
            "RecvBatch::adjacent({first}, {last}): not one run of one message"
        );
        let (start, end) = (a.offset as usize, (b.offset + b.len) as usize);
        match r.at {
            Loc::Arena(base) => &self.arena[base + start..base + end],
            // SAFETY: as in `datagram`: `start..end` lies within the record's `len` bytes.
            Loc::Lent(p) => unsafe {
                std::slice::from_raw_parts(p.as_ptr().add(start), end - start)
            },
        }
    }

    /// Message `m` (`< messages()`): the listener it arrived on, its source, and the range of
    /// its datagrams, so a caller can decide what is per message once.
    ///
    /// # Panics
    /// If `m >= self.messages()`.
    pub fn message(&self, m: usize) -> (usize, SocketAddr, std::ops::Range<usize>) {
        let r = &self.records[m];
        let first = r.first as usize;
        (r.listener, r.addr, first..first + r.count as usize)
    }

    /// Whether datagram `i` was cut short (as `meta(i).truncated`).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn truncated(&self, i: usize) -> bool {
        let (s, r) = self.segment(i);
        s.cut || (r.truncated && (s.offset + s.len) as usize >= r.len)
    }

    /// Iterates over `(meta, bytes)` of the held datagrams.
    pub fn iter(&self) -> impl Iterator<Item = (RecvMeta, &[u8])> + '_ {
        (0..self.len()).map(move |i| (self.meta(i), self.datagram(i)))
    }

    /// Forgets all datagrams (the storage is kept) and gives lent buffers back.
    pub fn clear(&mut self) {
        self.records.clear();
        self.segments.clear();
        self.slots_used = 0;
        if let Some(lease) = &mut self.lease {
            if !lease.bids.is_empty() {
                lease.lender.give_back(&mut lease.bids);
                lease.bids.clear();
            }
        }
    }

    /// Makes every arena slot at least `len` bytes (a GRO listener's runs), reallocating once.
    /// Only on an empty batch.
    fn reserve_slots(&mut self, len: usize) {
        debug_assert!(self.records.is_empty() && self.slots_used == 0);
        if len > self.slot_len {
            self.arena = vec![0u8; BATCH_SIZE * len].into_boxed_slice();
            self.slot_len = len;
        }
    }

    /// Arena slots not yet handed to the kernel, and not more than the messages that still fit.
    fn free_slots(&self) -> usize {
        (BATCH_SIZE - self.slots_used).min(BATCH_SIZE - self.records.len())
    }

    /// The first free arena slot's index and the arena's base pointer, for a backend to receive
    /// into slots `first..first + free_slots()` (slot `k` at `k * slot_len()`). Derive every
    /// pointer of one receive from a single call, so a later borrow of the arena does not
    /// invalidate pointers the kernel is about to use. Then `take_slots` them.
    fn slots(&mut self) -> (usize, *mut u8) {
        (self.slots_used, self.arena.as_mut_ptr())
    }

    /// Bytes per arena slot.
    fn slot_len(&self) -> usize {
        self.slot_len
    }

    /// Marks `n` more slots as used by the kernel (whatever lands in them).
    fn take_slots(&mut self, n: usize) {
        self.slots_used = (self.slots_used + n).min(BATCH_SIZE);
    }

    /// Records arena slot `slot` as a message of `len` bytes (`stride` apart, see
    /// [`RecvControl::stride`](sys::RecvControl::stride)) from `addr` on `listener`. The caller
    /// wrote the bytes.
    fn push_slot(&mut self, slot: usize, run: sys::RecvRun, listener: usize) {
        debug_assert!(slot < self.slots_used && run.len <= self.slot_len);
        let len = run.len.min(self.slot_len);
        self.push_record(listener, run, len, Loc::Arena(slot * self.slot_len));
    }

    /// Records a buffer on loan from `lender` (buffer id `bid`), whose message's `run.len`
    /// bytes start at `bytes`: the batch reads (and may rewrite) them until it is cleared,
    /// then gives `bid` back through `lender`.
    ///
    /// # Safety
    /// `bytes..bytes + run.len` must stay valid while `lender` lives, and nothing else may
    /// read or write it until the batch gives `bid` back.
    unsafe fn push_lent(
        &mut self,
        lender: &Arc<dyn Lender>,
        bid: u16,
        bytes: NonNull<u8>,
        run: sys::RecvRun,
        listener: usize,
    ) {
        match &mut self.lease {
            Some(lease) if Arc::ptr_eq(&lease.lender, lender) => lease.bids.push(bid),
            _ => {
                // another lender's buffers (a different backend): those go back first
                if let Some(mut old) = self.lease.take() {
                    old.lender.give_back(&mut old.bids);
                }
                let mut bids = Vec::with_capacity(BATCH_SIZE);
                bids.push(bid);
                self.lease = Some(Lease {
                    lender: lender.clone(),
                    bids,
                });
            }
        }
        self.push_record(listener, run, run.len, Loc::Lent(bytes));
    }

    fn push_record(&mut self, listener: usize, run: sys::RecvRun, len: usize, at: Loc) {
        debug_assert!(self.records.len() < BATCH_SIZE);
        let record = self.records.len() as u32;
        let first = self.segments.len() as u32;
        let stride = run.stride.clamp(1, len.max(1));
        // a zero-length datagram is one datagram too
        let mut offset = 0;
        loop {
            let seg = stride.min(len - offset);
            self.segments.push(Segment {
                record,
                offset: offset as u32,
                len: seg.min(MAX_DATAGRAM_LEN) as u32,
                cut: seg > MAX_DATAGRAM_LEN,
            });
            offset += seg;
            if offset >= len {
                break;
            }
        }
        self.records.push(Record {
            listener,
            addr: run.addr,
            local: run.local,
            first,
            count: self.segments.len() as u32 - first,
            len,
            truncated: run.truncated,
            at,
        });
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for RecvBatch {
    fn drop(&mut self) {
        self.clear();
    }
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("messages", &self.records.len())
            .field("datagrams", &self.segments.len())
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

/// One datagram to send, or a run of datagrams to one destination.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    /// Index of the backend socket to send through.
    pub listener: usize,
    /// Where to send it.
    pub destination: SocketAddr,
    /// The datagram, or with `segment_size` the datagrams one after the other.
    pub contents: &'a [u8],
    /// `Some(s)`: `contents` are datagrams of `s` bytes each, the last one maybe shorter (a
    /// received GRO run passed on whole). The backend sends them as one GSO message where the
    /// listener can, else one by one. `None`, or `s` not shorter than `contents`: one datagram.
    pub segment_size: Option<usize>,
    /// `Some(ip)`: send from this local address (an IP_PKTINFO / IPV6_PKTINFO control message,
    /// beside UDP_SEGMENT for a run), e.g. one of several addresses a socket bound to a
    /// wildcard address has. The kernel refuses an address the host does not have (counted
    /// `failed`); an IPv6 address through an IPv4 socket is refused before it. `None`: the
    /// kernel picks, as for any send (no control message is added).
    pub source: Option<IpAddr>,
}

impl<'a> Transmit<'a> {
    /// One datagram.
    pub fn new(listener: usize, destination: SocketAddr, contents: &'a [u8]) -> Self {
        Transmit {
            listener,
            destination,
            contents,
            segment_size: None,
            source: None,
        }
    }

    /// The segment size when this carries more than one datagram.
    pub fn run_segment(&self) -> Option<usize> {
        self.segment_size
            .filter(|&s| s > 0 && s < self.contents.len())
    }

    /// Datagrams it carries.
    pub fn datagrams(&self) -> usize {
        self.run_segment()
            .map_or(1, |s| self.contents.len().div_ceil(s))
    }

    /// Its datagrams, one by one.
    pub fn split(&self) -> impl Iterator<Item = Transmit<'a>> + '_ {
        let s = self.run_segment().unwrap_or(self.contents.len().max(1));
        let whole = *self;
        // (an empty datagram is one datagram too)
        let chunks = (!whole.contents.is_empty()).then(|| whole.contents.chunks(s));
        let empty = whole.contents.is_empty().then_some(whole.contents);
        chunks
            .into_iter()
            .flatten()
            .chain(empty)
            .map(move |contents| Transmit {
                source: whole.source,
                ..Transmit::new(whole.listener, whole.destination, contents)
            })
    }
}

/// `v` emptied, as a list of transmits borrowing for another lifetime, on the same
/// allocation: std collects in place when the element layouts are the same, so a send list can
/// be allocated once instead of once per batch. (`filter_map` sees no element.)
// `filter` cannot change the element's lifetime; `filter_map` to `None` can
#[allow(clippy::unnecessary_filter_map)]
pub fn recycled<'a>(mut v: Vec<Transmit<'_>>) -> Vec<Transmit<'a>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Outcome of [`Backend::send`] (in datagrams: a run counts each of its datagrams).
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
