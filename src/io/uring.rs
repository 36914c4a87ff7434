//! Linux io_uring backend: multishot `recvmsg` into a provided buffer ring, batched `sendmsg`,
//! with optional UDP GSO on send and UDP GRO on receive ([`Offload`], as the mmsg backend).
//!
//! One ring per backend (a backend belongs to one shard thread):
//! - **Receive**: one multishot `RECVMSG` per socket selects buffers from one shared buffer ring
//!   ([`RECV_BUFS_PER_SOCKET`] buffers per socket). Each completion is parsed with
//!   [`RecvMsgOut::parse`], its payload copied into the caller's [`RecvBatch`] slot and the buffer
//!   handed straight back to the kernel, so the ring refills at the rate the caller consumes.
//!   A multishot that ends (buffer ring empty: `-ENOBUFS`, or any error) is re-armed by the next
//!   `recv` and counted. With **GRO**, a buffer holds a coalesced run, which is split back into
//!   one datagram per slot; a run that does not fit the batch keeps its buffer and completion
//!   for the next `recv` (never dropped).
//! - **Send**: one `SENDMSG` per message from preallocated msghdr/iovec/sockaddr slots, one
//!   submission per chunk of up to [`SEND_SLOTS`] messages, then the completions are reaped
//!   before `send` returns (the iovecs point into the caller's buffers, which only live for the
//!   call). With **GSO**, a message carries a run of datagrams to one destination (the kernel's
//!   rule, [`gso_group`]) with a UDP_SEGMENT control message. `EIO`/`EINVAL` on such a message
//!   turns GSO off for good and its datagrams are sent again one by one. Until a listener's
//!   first GSO message has gone through, a chunk ends with it, so that fallback keeps the order.
//! - **Waits** are `io_uring_enter` with `IORING_ENTER_EXT_ARG` and a timespec: bounded, one
//!   system call per batch, never a spin.
//! - **Waker** ([`Backend::set_waker`]): a multishot `POLL_ADD` on the eventfd, with its own
//!   token; each write posts one completion, which ends the current (or next) wait. Re-armed
//!   like the receives when the kernel ends it.
//!
//! The ring is created with `SINGLE_ISSUER | DEFER_TASKRUN` (completions run only when the owning
//! thread enters the kernel: no interrupts from task work) and `R_DISABLED`, and enabled on the
//! first `recv`/`send`, so the thread that first uses the backend becomes its issuer; a backend
//! can be built on the main thread and moved to its shard. Older kernels get `COOP_TASKRUN`, then
//! plain flags.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring, Probe};

use super::socket::{enable_gro, probe_gso, GRO_MAX_SEGMENTS, GSO_MAX_SEGMENTS};
use super::sys::{
    adapt_destination, gso_group, put_udp_segment, rxq_ovfl, sockaddr_to_std, std_to_sockaddr,
    udp_gro_segment, zeroed, zeroed_slice, CmsgBuf, Family, RateLimit, CMSG_BUF_LEN, GRO_BUF_LEN,
    WARN_INTERVAL,
};
use super::{Backend, Capabilities, Offload, RecvBatch, SendStats, Transmit};
use super::{BATCH_SIZE, MAX_DATAGRAM_LEN};

/// Provided receive buffers per socket. liburing #758: one multishot took 512 buffers in one go
/// and emptied a smaller ring; 1024 absorbs such a burst. At ~9.4 KiB each this is ~9.4 MiB per
/// socket (virtual; pages are touched only as datagrams land). Untuned.
pub const RECV_BUFS_PER_SOCKET: u32 = 1024;

/// Provided receive buffers per socket when GRO is on. Each buffer must hold a whole coalesced
/// run ([`GRO_BUF_LEN`], 64 KiB: a shorter one would cut runs and lose their tail), so 1024 of
/// them would be 64 MiB per socket, and since the ring hands buffers out in FIFO order, steady
/// coalesced traffic would touch (make resident) every one of them over time. 256 keeps the
/// worst case at ~16 MiB per socket (vs ~9.4 MiB without GRO) and still holds 256 datagrams
/// that did not coalesce (up to 16384 that did) between two enters; uncoalesced traffic touches
/// only the first page or so of each buffer. A burst beyond that ends the multishot with
/// `-ENOBUFS`: the datagrams wait in the socket buffer and the receive is re-armed (counted).
pub const GRO_RECV_BUFS_PER_SOCKET: u32 = 256;

/// The kernel's limit on buffer-ring entries (`io_uring_register_buf_ring.3`).
const MAX_BUF_RING_ENTRIES: u32 = 32768;

/// Send slots (msghdr + iovec + sockaddr), i.e. SENDMSG entries per submission: two receive
/// batches, so one received batch plus its fan-out copies usually go in one submission. Untuned.
pub const SEND_SLOTS: usize = 2 * BATCH_SIZE;

/// Iovecs of one chunk: one per datagram, up to [`GSO_MAX_SEGMENTS`] per message.
const SEND_IOVS: usize = SEND_SLOTS * GSO_MAX_SEGMENTS;

/// Submission queue entries: the send slots plus room for re-arms and cancels.
const SQ_ENTRIES: u32 = 256;

/// `sizeof(struct io_uring_recvmsg_out)`: namelen, controllen, payloadlen, flags (4 x u32),
/// which the kernel writes at the start of every multishot recvmsg buffer.
const RECVMSG_OUT_LEN: usize = 16;

/// Name space in each receive buffer: any socket address.
const NAME_LEN: usize = mem::size_of::<libc::sockaddr_storage>();

/// One provided buffer: the recvmsg_out header, name, control, then exactly
/// [`MAX_DATAGRAM_LEN`] payload bytes, so a longer datagram comes back with MSG_TRUNC. A multiple
/// of 8, so every buffer's control part stays aligned for `cmsghdr`.
const RECV_BUF_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + CMSG_BUF_LEN + MAX_DATAGRAM_LEN;

/// One provided buffer when GRO is on: as [`RECV_BUF_LEN`], with room for a coalesced run.
const GRO_RECV_BUF_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + CMSG_BUF_LEN + GRO_BUF_LEN;

/// Buffer group id of the shared buffer ring (one ring per io_uring instance).
const BGID: u16 = 0;

/// Longest single kernel wait; `recv` with a longer timeout waits in rounds of this (the
/// kernel's timespec is signed, so `Duration::MAX` cannot be passed as is).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Kernel waits per `recv` call at most (a wake-up by a completion that carries no datagram,
/// e.g. `-ENOBUFS`, re-arms and waits again for the rest of the timeout).
const MAX_WAIT_ROUNDS: usize = 8;

/// How long `send` waits for its completions before cancelling the stragglers (a blocking socket
/// whose send buffer stays full). Each wait is a slice of [`SEND_WAIT_SLICE`].
const SEND_DEADLINE: Duration = Duration::from_secs(2);
const SEND_WAIT_SLICE: Duration = Duration::from_millis(100);
/// Waits after cancelling, before the last resort (an unbounded wait; see `reap_sends`).
const CANCEL_WAIT_ROUNDS: usize = 20;

/// What a completion belongs to, encoded in `user_data` as `kind << 56 | index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    /// The multishot recvmsg of listener `idx`.
    Recv(usize),
    /// The sendmsg in send slot `slot`.
    Send(usize),
    /// An AsyncCancel request (its own result is not needed).
    Cancel,
    /// The multishot poll on the waker fd, generation `gen` (a replaced waker's late
    /// completions carry an older one and are ignored).
    Waker(usize),
}

impl Token {
    const SHIFT: u32 = 56;
    const INDEX_MASK: u64 = (1 << Self::SHIFT) - 1;

    fn encode(self) -> u64 {
        match self {
            Token::Recv(i) => (1 << Self::SHIFT) | (i as u64 & Self::INDEX_MASK),
            Token::Send(i) => (2 << Self::SHIFT) | (i as u64 & Self::INDEX_MASK),
            Token::Cancel => 3 << Self::SHIFT,
            Token::Waker(g) => (4 << Self::SHIFT) | (g as u64 & Self::INDEX_MASK),
        }
    }

    fn decode(user_data: u64) -> Option<Token> {
        let idx = (user_data & Self::INDEX_MASK) as usize;
        match user_data >> Self::SHIFT {
            1 => Some(Token::Recv(idx)),
            2 => Some(Token::Send(idx)),
            3 => Some(Token::Cancel),
            4 => Some(Token::Waker(idx)),
            _ => None,
        }
    }
}

/// A completion copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
struct Cqe {
    user_data: u64,
    result: i32,
    flags: u32,
    /// Payload bytes already delivered: non-zero only for a GRO run that did not fit the last
    /// batch and waits at the front of the backlog (holding its buffer).
    done: u32,
}

/// Setup flags the kernel accepted, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RingMode {
    /// SINGLE_ISSUER | DEFER_TASKRUN | R_DISABLED (| SUBMIT_ALL): Linux 6.1+.
    DeferTaskrun,
    /// COOP_TASKRUN (| SUBMIT_ALL): Linux 5.19+.
    CoopTaskrun,
    /// No optional flags.
    Plain,
}

/// Sets the optional setup flags of one attempt on a builder.
type SetupFlags = fn(&mut io_uring::Builder);

/// Creates a ring, trying the setup flags best first and falling back on EINVAL (a kernel that
/// does not know a flag rejects the whole setup with EINVAL).
fn build_ring(sq: u32, cq: u32) -> io::Result<(IoUring, RingMode)> {
    let attempts: [(RingMode, SetupFlags); 5] = [
        (RingMode::DeferTaskrun, |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_r_disabled()
                .setup_submit_all();
        }),
        (RingMode::DeferTaskrun, |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_r_disabled();
        }),
        (RingMode::CoopTaskrun, |b| {
            b.setup_coop_taskrun().setup_submit_all();
        }),
        (RingMode::CoopTaskrun, |b| {
            b.setup_coop_taskrun();
        }),
        (RingMode::Plain, |_| {}),
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for (mode, configure) in attempts {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq);
        configure(&mut builder);
        match builder.build(sq) {
            Ok(ring) => return Ok((ring, mode)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// A provided-buffer ring and its buffers, in one anonymous mapping: the ring entries first
/// (page aligned, as the kernel requires), then `entries` buffers of `buf_len` bytes.
///
/// Buffer ownership: buffer `bid` belongs to the kernel from the moment its entry is published
/// (tail store) until a completion names it; then to us until we publish it again.
struct BufPool {
    map: NonNull<u8>,
    map_len: usize,
    ring: *mut BufRingEntry,
    bufs: *mut u8,
    entries: u32,
    buf_len: usize,
    /// Local tail; published to the kernel by [`BufPool::publish`].
    tail: u16,
    /// Buffers handed to us by completions and not yet given back (for the tests' accounting).
    held: u32,
    /// Set when a multishot request might still write into the buffers: the mapping is then
    /// leaked rather than unmapped under the kernel.
    leak: bool,
}

impl BufPool {
    /// Maps the pool and fills the ring with every buffer (not yet published).
    fn new(entries: u32, buf_len: usize) -> io::Result<BufPool> {
        debug_assert!(entries.is_power_of_two() && entries <= MAX_BUF_RING_ENTRIES);
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let ring_len = (entries as usize * mem::size_of::<BufRingEntry>()).next_multiple_of(page);
        let map_len = ring_len + entries as usize * buf_len;
        // SAFETY: an anonymous private mapping with no address hint touches no existing memory.
        let map = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(map.cast::<u8>()).ok_or_else(|| io::Error::other("mmap: null"))?;
        let mut pool = BufPool {
            map,
            map_len,
            ring: map.as_ptr().cast(),
            // In bounds: ring_len < map_len.
            bufs: map.as_ptr().wrapping_add(ring_len),
            entries,
            buf_len,
            tail: 0,
            held: entries,
            leak: false,
        };
        for bid in 0..entries {
            pool.provide(bid as u16);
        }
        Ok(pool)
    }

    /// Registers the ring with `ring` as buffer group [`BGID`] and publishes every buffer.
    fn register(&mut self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: `self.ring` points to `entries` ring entries in a page-aligned mapping that
        // lives until `self` is dropped; `UringBackend`/`probe` drop (or leak) the pool only
        // after the io_uring that uses it, and never while a request might still select from it
        // (see `BufPool::leak`).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring as u64,
                self.entries as u16,
                BGID,
                0,
            )?;
        }
        self.publish();
        Ok(())
    }

    /// Queues buffer `bid` for the kernel (visible after the next [`BufPool::publish`]).
    fn provide(&mut self, bid: u16) {
        debug_assert!(u32::from(bid) < self.entries);
        let idx = usize::from(self.tail) & (self.entries as usize - 1);
        // SAFETY: `idx < entries`, so the entry is inside the ring part of the mapping. The
        // kernel only reads entries between its head and the published tail; this one is at or
        // past the published tail, so it is ours to write. For entry 0 the write leaves the
        // `resv` field (the shared tail) untouched: only addr, len and bid are set.
        let entry = unsafe { &mut *self.ring.add(idx) };
        entry.set_addr(self.bufs.wrapping_add(usize::from(bid) * self.buf_len) as u64);
        entry.set_len(self.buf_len as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.held -= 1;
    }

    /// Makes every provided buffer visible to the kernel.
    fn publish(&self) {
        // SAFETY: the ring base is the first entry of a live, page-aligned ring; its `resv`
        // field is the ring's tail, a naturally aligned u16 that the kernel reads concurrently,
        // hence the atomic store. Release orders the entry writes before the tail.
        unsafe {
            let tail = BufRingEntry::tail(self.ring).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The first `len` bytes of buffer `bid`, which a completion just handed to us.
    ///
    /// # Safety
    /// The caller must own buffer `bid`: a completion named it and it has not been provided
    /// again since, so the kernel does not write it while the slice lives.
    unsafe fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(u32::from(bid) < self.entries);
        let len = len.min(self.buf_len);
        // SAFETY: `bid < entries` (checked by the caller against the buffer count), so the range
        // is inside the mapping; the caller guarantees the kernel does not write it meanwhile.
        unsafe { std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * self.buf_len), len) }
    }
}

impl Drop for BufPool {
    fn drop(&mut self) {
        if self.leak {
            return;
        }
        // SAFETY: the mapping was created in `new` with this length and is unmapped only here;
        // `leak` is set whenever a request might still use it.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// [`Backend`] over io_uring. Socket `i` is listener `i`.
pub struct UringBackend {
    /// Declared first so it is dropped (its fd closed) before the buffer pool below.
    ring: IoUring,
    mode: RingMode,
    /// Rings enabled (R_DISABLED lifted) and the multishots armed: done on first use.
    enabled: bool,
    /// `stop_receiving` was called: the receives are cancelled and never armed again.
    stopping: bool,
    /// The thread that enabled the ring; with SINGLE_ISSUER only it may enter the kernel.
    issuer: Option<ThreadId>,

    sockets: Vec<UdpSocket>,
    families: Vec<Family>,
    /// A multishot recvmsg is in flight for this listener.
    armed: Vec<bool>,
    /// The listener's socket failed fatally; it is not re-armed.
    dead: Vec<bool>,
    /// Last SO_RXQ_OVFL value per listener (the kernel reports a cumulative count).
    drops: Vec<u32>,
    /// GSO segments per send, per listener (1: no GSO). Only ever goes down to 1.
    gso: Vec<usize>,
    /// A GSO message went through on this listener, so a refusal later is unlikely: chunks no
    /// longer end at its GSO messages.
    gso_confirmed: Vec<bool>,
    /// UDP_GRO is on for this listener: its completions may hold coalesced runs.
    gro: Vec<bool>,

    pool: BufPool,
    /// The msghdr template of every multishot recvmsg: only `msg_namelen` and `msg_controllen`
    /// matter (they size the name and control parts of each buffer). Boxed so the pointer handed
    /// to the kernel stays put when the backend moves.
    recv_hdr: Box<libc::msghdr>,
    /// Receive completions taken off the completion queue but not yet delivered (a full batch,
    /// or they arrived while `send` waited for its own completions). Each may hold a buffer.
    ///
    /// One queue per listener, in completion order; `harvest` takes from them in turn, so a
    /// listener whose backlog the kernel filled in one go (a multishot reads up to 32 datagrams
    /// or GRO runs per pass) cannot hold up another's datagrams by more than one completion.
    backlog: Vec<VecDeque<Cqe>>,
    /// Listener whose backlog `harvest` serves first, rotated per call.
    next_first: usize,

    // Send side, allocated once; pointers are refreshed per call (see `send_chunk`).
    send_hdrs: Box<[libc::msghdr]>,
    send_iovs: Box<[libc::iovec]>,
    send_names: Box<[libc::sockaddr_storage]>,
    send_ctrl: Box<[CmsgBuf]>,
    /// Per slot of the current chunk: which transmits its message carries.
    send_msgs: Box<[SendMsg]>,
    send_state: Box<[SlotState]>,
    /// SENDMSG entries submitted and not yet completed.
    send_outstanding: usize,

    /// The waker (see [`Backend::set_waker`]) and the generation of its poll request.
    waker: Option<RawFd>,
    waker_gen: usize,
    /// A multishot poll on the current waker is in flight.
    waker_armed: bool,
    /// The waker fired since the last `recv` returned: the next (or current) `recv` returns
    /// without waiting.
    woken: bool,
    /// The waker's poll failed for good (e.g. EBADF): reported by the next `recv`.
    waker_error: Option<i32>,

    enobufs: u64,
    rearms: u64,
    send_warn: RateLimit,
    recv_warn: RateLimit,

    /// Test hook: the next GSO message fails with this errno without reaching the kernel.
    #[cfg(test)]
    fail_next_gso: super::testkit::GsoHook,
    /// Test counter: coalesced runs (more than one datagram) received with GRO.
    #[cfg(test)]
    gro_runs: usize,
}

/// The transmits one send slot's message carries: `transmits[first..first + count]`, whose
/// iovecs start at `iov`, through socket `fd` of `listener`.
#[derive(Debug, Clone, Copy, Default)]
struct SendMsg {
    first: usize,
    count: usize,
    iov: usize,
    listener: usize,
    fd: RawFd,
}

/// Where one send slot stands within a `send` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Not used in this chunk, or refused before submission (already counted failed).
    Idle,
    /// Submitted; its completion has not been seen.
    InFlight,
    /// Completed with this result (bytes sent or `-errno`).
    Done(i32),
}

// SAFETY: the raw pointers inside the backend (msghdr/iovec fields, the buffer pool, the ring's
// mmaps) point into heap storage or mappings this struct owns and moves with it, or are stale
// pointers into caller buffers that are overwritten before every submission and never
// dereferenced otherwise (send completions are always reaped before `send` returns). The ring
// itself may be moved between threads; with SINGLE_ISSUER only the enabling thread uses it,
// which `ensure_enabled` checks. Nothing is shared, so the backend is not `Sync`.
unsafe impl Send for UringBackend {}

impl UringBackend {
    /// Wraps `sockets` without offloads ([`Offload::OFF`], as [`super::MmsgBackend::new`]);
    /// socket `i` becomes listener `i`. See [`UringBackend::with_offload`].
    ///
    /// # Errors
    /// As [`UringBackend::with_offload`].
    pub fn new(sockets: Vec<UdpSocket>) -> io::Result<Self> {
        Self::with_offload(sockets, Offload::OFF)
    }

    /// Wraps `sockets`; socket `i` becomes listener `i`. Sets up the ring and registers the
    /// buffer ring; the multishot receives are armed on the first `recv`/`send`, by the thread
    /// that will own the backend. The sockets may be blocking (as [`super::bind_udp`] leaves
    /// them): io_uring never blocks the thread on them, and a full send buffer delays the send
    /// completion (backpressure) for up to [`SEND_DEADLINE`].
    ///
    /// Each offload that `offload` asks for is probed on every socket (GRO is switched on
    /// there); where the kernel lacks it, that listener runs without it. With GRO on any
    /// listener, the receive buffers are sized for coalesced runs
    /// ([`GRO_RECV_BUFS_PER_SOCKET`] of 64 KiB per socket).
    ///
    /// # Errors
    /// io_uring cannot be set up (see [`probe`] for a diagnosis), the kernel lacks timed waits
    /// (IORING_FEAT_EXT_ARG, 5.11) or refuses the buffer ring (5.19), or mmap failed.
    pub fn with_offload(sockets: Vec<UdpSocket>, offload: Offload) -> io::Result<Self> {
        let gso: Vec<usize> = sockets
            .iter()
            .map(|s| if offload.gso { probe_gso(s) } else { 1 })
            .collect();
        let gro: Vec<bool> = sockets
            .iter()
            .map(|s| offload.gro && enable_gro(s) > 1)
            .collect();
        let (per_socket, buf_len) = if gro.iter().any(|&g| g) {
            (GRO_RECV_BUFS_PER_SOCKET, GRO_RECV_BUF_LEN)
        } else {
            (RECV_BUFS_PER_SOCKET, RECV_BUF_LEN)
        };
        let n = sockets.len().max(1) as u32;
        let entries = n
            .saturating_mul(per_socket)
            .next_power_of_two()
            .min(MAX_BUF_RING_ENTRIES);
        // Every receive completion holds a buffer, so at most `entries` of them (plus one final
        // error per socket) and SEND_SLOTS send completions can be pending: the CQ never
        // overflows. Cancels and the waker add a few.
        let cq = (entries + SEND_SLOTS as u32 + 4 * n + 64).next_power_of_two();
        let (ring, mode) = build_ring(SQ_ENTRIES, cq)
            .map_err(|e| io::Error::new(e.kind(), format!("io_uring_setup: {e}")))?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (timed waits, Linux 5.11)",
            ));
        }
        let mut pool = BufPool::new(entries, buf_len)
            .map_err(|e| io::Error::new(e.kind(), format!("mmap of receive buffers: {e}")))?;
        pool.register(&ring).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("io_uring buffer ring (IORING_REGISTER_PBUF_RING, Linux 5.19): {e}"),
            )
        })?;

        let families = Family::of_sockets(&sockets);
        let count = sockets.len();
        let mut recv_hdr: Box<libc::msghdr> = Box::new(zeroed());
        recv_hdr.msg_namelen = NAME_LEN as libc::socklen_t;
        recv_hdr.msg_controllen = CMSG_BUF_LEN as _;

        log::debug!(
            "uring: {count} sockets, {entries} receive buffers of {buf_len} bytes, \
             sq {SQ_ENTRIES}, cq {cq}, {mode:?}, gso {gso:?}, gro {gro:?}"
        );
        Ok(UringBackend {
            ring,
            mode,
            enabled: false,
            stopping: false,
            issuer: None,
            sockets,
            families,
            armed: vec![false; count],
            dead: vec![false; count],
            drops: vec![0; count],
            gso_confirmed: vec![false; count],
            gso,
            gro,
            pool,
            recv_hdr,
            backlog: (0..count)
                .map(|_| VecDeque::with_capacity(entries as usize / count.max(1) + 8))
                .collect(),
            next_first: 0,
            send_hdrs: zeroed_slice(SEND_SLOTS),
            send_iovs: zeroed_slice(SEND_IOVS),
            send_names: zeroed_slice(SEND_SLOTS),
            send_ctrl: vec![CmsgBuf::ZERO; SEND_SLOTS].into_boxed_slice(),
            send_msgs: vec![SendMsg::default(); SEND_SLOTS].into_boxed_slice(),
            send_state: vec![SlotState::Idle; SEND_SLOTS].into_boxed_slice(),
            send_outstanding: 0,
            waker: None,
            waker_gen: 0,
            waker_armed: false,
            woken: false,
            waker_error: None,
            enobufs: 0,
            rearms: 0,
            send_warn: RateLimit::default(),
            recv_warn: RateLimit::default(),
            #[cfg(test)]
            fail_next_gso: None,
            #[cfg(test)]
            gro_runs: 0,
        })
    }

    /// The sockets, indexed by listener.
    pub fn sockets(&self) -> &[UdpSocket] {
        &self.sockets
    }

    /// Datagrams the kernel dropped on these sockets (receive buffer full), as last reported via
    /// SO_RXQ_OVFL (see [`super::MmsgBackend::kernel_drops`]).
    pub fn kernel_drops(&self) -> u64 {
        self.drops.iter().map(|&d| u64::from(d)).sum()
    }

    /// Times a multishot receive ended because the buffer ring ran empty (`-ENOBUFS`). Each was
    /// re-armed; the datagrams stayed queued in the socket meanwhile (or were dropped by it when
    /// its buffer filled: see [`UringBackend::kernel_drops`]).
    pub fn enobufs(&self) -> u64 {
        self.enobufs
    }

    /// Times a multishot receive was re-armed after it ended (for any reason).
    pub fn rearms(&self) -> u64 {
        self.rearms
    }

    /// Receive buffers in the shared buffer ring.
    pub fn recv_buffers(&self) -> u32 {
        self.pool.entries
    }

    /// Lifts R_DISABLED and arms the receives on first use; afterwards checks that the caller
    /// is the issuer thread (SINGLE_ISSUER rings refuse others with EEXIST).
    fn ensure_enabled(&mut self) -> io::Result<()> {
        if self.enabled {
            if let Some(t) = self.issuer {
                if t != thread::current().id() {
                    return Err(io::Error::other(
                        "uring backend used from a second thread (its ring is SINGLE_ISSUER)",
                    ));
                }
            }
            return Ok(());
        }
        if self.mode == RingMode::DeferTaskrun {
            self.ring
                .submitter()
                .register_enable_rings()
                .map_err(|e| io::Error::new(e.kind(), format!("io_uring enable rings: {e}")))?;
            self.issuer = Some(thread::current().id());
        }
        self.enabled = true;
        if !self.stopping {
            for idx in 0..self.sockets.len() {
                self.arm(idx);
            }
        }
        self.arm_waker();
        Ok(())
    }

    /// Queues a multishot POLL_ADD (POLLIN) on the waker, if one is set and not armed. Each
    /// write to the eventfd wakes its wait queue and posts one completion; a waker that stays
    /// readable posts nothing more, so a caller that drains it late does not make `recv` spin.
    fn arm_waker(&mut self) {
        let Some(fd) = self.waker else {
            return;
        };
        if self.waker_armed || self.waker_error.is_some() {
            return;
        }
        let entry = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(Token::Waker(self.waker_gen).encode());
        // SAFETY: a poll request carries no pointers; the fd outlives the backend (the
        // `set_waker` contract), and a closed one only fails the request.
        if unsafe { push(&mut self.ring, &entry) } {
            self.waker_armed = true;
        }
    }

    /// Queues a multishot recvmsg for listener `idx` (submitted by the next enter).
    fn arm(&mut self, idx: usize) {
        let entry = opcode::RecvMsgMulti::new(
            Fd(self.sockets[idx].as_raw_fd()),
            &*self.recv_hdr as *const libc::msghdr,
            BGID,
        )
        .build()
        .user_data(Token::Recv(idx).encode());
        // SAFETY: the msghdr is boxed and lives as long as the ring (both are fields; the ring
        // is dropped first). The kernel reads only its name/control lengths. The buffers it
        // selects belong to `self.pool`, which is not unmapped while a multishot may be armed.
        if unsafe { push(&mut self.ring, &entry) } {
            self.armed[idx] = true;
        }
    }

    /// Re-arms listeners whose multishot ended, and the waker's poll.
    fn rearm(&mut self) {
        for idx in 0..self.sockets.len() {
            if !self.armed[idx] && !self.dead[idx] && !self.stopping {
                self.rearms += 1;
                self.arm(idx);
            }
        }
        self.arm_waker();
    }

    /// Submits queued entries and runs completions: waits up to `wait` for at least `want`
    /// completions, or does not wait at all for `Duration::ZERO`. Returns false when a signal
    /// cut the wait short.
    fn enter(&mut self, want: usize, wait: Duration) -> io::Result<bool> {
        let rc = if wait.is_zero() || want == 0 {
            let to_submit = self.ring.submission().len() as u32;
            // SAFETY: a plain io_uring_enter with no argument struct; GETEVENTS makes the kernel
            // run deferred task work (DEFER_TASKRUN) so completions reach the queue.
            unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    to_submit,
                    0,
                    EnterFlags::GETEVENTS.bits(),
                    None,
                )
            }
        } else {
            let wait = wait.min(MAX_WAIT);
            let ts = Timespec::new()
                .sec(wait.as_secs())
                .nsec(wait.subsec_nanos());
            let args = SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(want, &args)
        };
        match rc {
            Ok(_) => Ok(true),
            Err(e) => match e.raw_os_error() {
                // Timed out; or the CQ is full / the kernel is short of memory: reap and retry.
                Some(libc::ETIME | libc::EBUSY | libc::EAGAIN) => Ok(true),
                Some(libc::EINTR) => Ok(false),
                _ => Err(io::Error::new(e.kind(), format!("io_uring_enter: {e}"))),
            },
        }
    }

    /// Moves every completion off the queue: send results go to their slots, receive
    /// completions to the backlog (in order), cancel results are dropped.
    fn drain_cq(&mut self) {
        let mut cq = self.ring.completion();
        cq.sync();
        for c in &mut cq {
            let cqe = Cqe {
                user_data: c.user_data(),
                result: c.result(),
                flags: c.flags(),
                done: 0,
            };
            match Token::decode(cqe.user_data) {
                Some(Token::Recv(idx)) => {
                    if let Some(q) = self.backlog.get_mut(idx) {
                        q.push_back(cqe);
                    }
                }
                Some(Token::Send(slot)) => {
                    if let Some(s @ SlotState::InFlight) = self.send_state.get_mut(slot) {
                        *s = SlotState::Done(cqe.result);
                        self.send_outstanding -= 1;
                    }
                }
                Some(Token::Waker(gen)) if gen == self.waker_gen => {
                    if !cqueue::more(cqe.flags) {
                        self.waker_armed = false;
                    }
                    // Any completion ends the wait: a spurious early return is harmless.
                    self.woken = true;
                    if matches!(-cqe.result, libc::EBADF | libc::EINVAL | libc::EOPNOTSUPP) {
                        self.waker_error = Some(-cqe.result);
                    }
                }
                Some(Token::Waker(_) | Token::Cancel) | None => {}
            }
        }
    }

    /// Delivers backlog completions into `batch` until it is full, handing their buffers back.
    /// A coalesced run that does not fit goes back to the front of the backlog, with its
    /// buffer, to be continued by the next call.
    fn harvest(&mut self, batch: &mut RecvBatch) -> io::Result<()> {
        self.drain_cq();
        let mut result = Ok(());
        let n = self.backlog.len();
        if n == 0 {
            return result;
        }
        let mut idx = self.next_first % n;
        self.next_first = (idx + 1) % n;
        // Listeners found empty in a row; all of them: done.
        let mut empty = 0;
        while batch.len() < batch.capacity() && empty < n {
            let Some(cqe) = self.backlog[idx].pop_front() else {
                empty += 1;
                idx = (idx + 1) % n;
                continue;
            };
            empty = 0;
            match self.deliver(cqe, batch) {
                Ok(None) => idx = (idx + 1) % n,
                Ok(Some(done)) => {
                    self.backlog[idx].push_front(Cqe { done, ..cqe });
                    break;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.pool.publish();
        result
    }

    /// Handles one receive completion: its datagram (or each datagram of a coalesced run) goes
    /// into the next slot of `batch`; an error ends (or kills) the listener's multishot.
    /// Returns `Some(done)` when the batch filled up inside a run: `done` payload bytes of it
    /// were delivered, and the completion keeps its buffer until it is delivered from there.
    fn deliver(&mut self, cqe: Cqe, batch: &mut RecvBatch) -> io::Result<Option<u32>> {
        let Some(Token::Recv(idx)) = Token::decode(cqe.user_data) else {
            return Ok(None);
        };
        if idx >= self.sockets.len() {
            return Ok(None);
        }
        // A continued run was accounted for (flags, buffer, drop count) the first time.
        let first = cqe.done == 0;
        if first && !cqueue::more(cqe.flags) {
            self.armed[idx] = false;
        }
        let bid = cqueue::buffer_select(cqe.flags).filter(|&b| u32::from(b) < self.pool.entries);
        if cqe.result < 0 {
            if let Some(bid) = bid {
                self.pool.held += 1;
                self.pool.provide(bid);
            }
            let errno = -cqe.result;
            return match errno {
                libc::ENOBUFS => {
                    self.enobufs += 1;
                    Ok(None)
                }
                libc::ECANCELED | libc::EINTR | libc::EAGAIN => Ok(None),
                libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL | libc::EOPNOTSUPP => {
                    self.dead[idx] = true;
                    self.armed[idx] = false;
                    let e = io::Error::from_raw_os_error(errno);
                    Err(io::Error::new(
                        e.kind(),
                        format!("multishot recvmsg on listener {idx}: {e}"),
                    ))
                }
                // Transient (e.g. ENOMEM): the multishot ended and is re-armed.
                _ => {
                    if let Some(suppressed) = self.recv_warn.allow() {
                        log::warn!(
                            "recvmsg on listener {idx} failed: {} ({suppressed} similar \
                             suppressed)",
                            io::Error::from_raw_os_error(errno)
                        );
                    }
                    Ok(None)
                }
            };
        }
        let Some(bid) = bid else {
            if let Some(suppressed) = self.recv_warn.allow() {
                log::warn!(
                    "listener {idx}: receive completion without a buffer ({suppressed} similar \
                     suppressed)"
                );
            }
            return Ok(None);
        };
        if first {
            self.pool.held += 1;
        }
        let mut partial = None;
        let mut run = None;
        // SAFETY: the completion handed buffer `bid` (checked < entries above) to us; it is
        // provided again only below, after the last use of `buf`, and only once the whole
        // payload was delivered.
        let buf = unsafe { self.pool.buffer(bid, cqe.result as usize) };
        match RecvMsgOut::parse(buf, &self.recv_hdr) {
            Ok(out) => {
                let name = out.name_data();
                let mut ss: libc::sockaddr_storage = zeroed();
                let name_len = name.len().min(NAME_LEN);
                // SAFETY: `name_len` bytes fit both in `name` and in the exclusively borrowed
                // `ss`; the two do not overlap.
                unsafe {
                    ptr::copy_nonoverlapping(
                        name.as_ptr(),
                        (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
                        name_len,
                    );
                }
                let control = out.control_data();
                if first {
                    if let Some(d) = rxq_ovfl(control) {
                        self.drops[idx] = d;
                    }
                }
                match sockaddr_to_std(&ss, name_len as libc::socklen_t) {
                    Some(addr) => {
                        let payload = out.payload_data();
                        let truncated = out.is_payload_truncated();
                        let len = payload.len();
                        // Length of every datagram of the run but the last (which may be
                        // shorter); the whole payload when it is one datagram. At least 1, so
                        // the split always advances (an empty datagram is one piece of 0).
                        let stride = if self.gro[idx] {
                            udp_gro_segment(control).filter(|&s| s < len).unwrap_or(len)
                        } else {
                            len
                        }
                        .max(1);
                        if first && stride < len {
                            run = Some(truncated);
                        }
                        let mut off = (cqe.done as usize).min(len);
                        loop {
                            if batch.len() == batch.capacity() {
                                debug_assert!(off > 0, "harvest delivers into a full batch");
                                partial = Some(off as u32);
                                break;
                            }
                            let seg = stride.min(len - off);
                            let last = off + seg >= len;
                            batch.push_datagram(
                                idx,
                                addr,
                                &payload[off..off + seg],
                                truncated && last,
                            );
                            off += seg;
                            if last {
                                break;
                            }
                        }
                    }
                    None => {
                        if let Some(suppressed) = self.recv_warn.allow() {
                            log::warn!(
                                "listener {idx}: datagram with unusable source address dropped \
                                 ({suppressed} similar suppressed)"
                            );
                        }
                    }
                }
            }
            Err(()) => {
                if let Some(suppressed) = self.recv_warn.allow() {
                    log::warn!(
                        "listener {idx}: malformed recvmsg completion ({} bytes) dropped \
                         ({suppressed} similar suppressed)",
                        cqe.result
                    );
                }
            }
        }
        if let Some(truncated) = run {
            self.note_run(idx, truncated);
        }
        if partial.is_none() {
            self.pool.provide(bid);
        }
        Ok(partial)
    }

    /// A coalesced run arrived on listener `idx` (for the tests' counter, and a warning when
    /// the buffer cut it short).
    fn note_run(&mut self, idx: usize, truncated: bool) {
        #[cfg(test)]
        {
            self.gro_runs += 1;
        }
        if truncated {
            // Only with a gro_max_size above GRO_BUF_LEN: the segments past the buffer are
            // gone, and the kernel does not say how many there were.
            if let Some(suppressed) = self.recv_warn.allow() {
                log::warn!(
                    "listener {idx}: coalesced run longer than {GRO_BUF_LEN} bytes truncated; \
                     datagrams lost ({suppressed} similar suppressed)"
                );
            }
        }
    }

    /// Sends transmits from `transmits[from..]` with one submission of up to [`SEND_SLOTS`]
    /// messages, reaps their completions, and returns where the next chunk starts.
    ///
    /// A GSO message the kernel refuses with `EIO`/`EINVAL` turns GSO off and its datagrams are
    /// sent again, one per message, before returning. Until a listener has had one GSO message
    /// accepted, the chunk ends with its first GSO message, so such a resend keeps the order;
    /// later (a route through a device without checksum offload), the resent datagrams may
    /// follow others of the same chunk.
    fn send_chunk(
        &mut self,
        transmits: &[Transmit<'_>],
        from: usize,
        stats: &mut SendStats,
    ) -> usize {
        debug_assert_eq!(self.send_outstanding, 0);
        // 1. Names, iovecs and control messages, by index, before any pointer to them is taken.
        let (mut msgs, mut iov, mut i) = (0, 0, from);
        while i < transmits.len() && msgs < SEND_SLOTS {
            let t = &transmits[i];
            let listener = t.listener;
            let Some(sock) = self.sockets.get(listener) else {
                stats.failed += 1;
                if let Some(suppressed) = self.send_warn.allow() {
                    log::warn!(
                        "send via listener {listener}: no such listener ({} sockets); datagram \
                         dropped ({suppressed} similar suppressed)",
                        self.sockets.len()
                    );
                }
                i += 1;
                continue;
            };
            let fd = sock.as_raw_fd();
            let max_segments = self.gso[listener];
            let same = transmits[i..]
                .iter()
                .take(max_segments.clamp(1, GSO_MAX_SEGMENTS))
                .take_while(|x| x.listener == listener)
                .count();
            let (count, segment) = gso_group(&transmits[i..i + same], max_segments);
            if iov + count > SEND_IOVS {
                break; // not reached: SEND_IOVS covers SEND_SLOTS full messages
            }
            let dest = adapt_destination(t.destination, self.families[listener]);
            let namelen = std_to_sockaddr(dest, &mut self.send_names[msgs]);
            for (k, x) in transmits[i..i + count].iter().enumerate() {
                self.send_iovs[iov + k] = libc::iovec {
                    // The kernel only reads through it; the `*mut` is the C type's.
                    iov_base: x.contents.as_ptr() as *mut libc::c_void,
                    iov_len: x.contents.len(),
                };
            }
            let ctrl_len = match segment {
                Some(s) => put_udp_segment(&mut self.send_ctrl[msgs], s),
                None => 0,
            };
            let h = &mut self.send_hdrs[msgs];
            h.msg_namelen = namelen;
            h.msg_controllen = ctrl_len as _;
            self.send_msgs[msgs] = SendMsg {
                first: i,
                count,
                iov,
                listener,
                fd,
            };
            self.send_state[msgs] = SlotState::Idle;
            msgs += 1;
            iov += count;
            i += count;
            if segment.is_some() && !self.gso_confirmed[listener] {
                break;
            }
        }
        // 2. Headers, pointing into the boxes through one base pointer each.
        let names = self.send_names.as_mut_ptr();
        let iovs = self.send_iovs.as_mut_ptr();
        let ctrl = self.send_ctrl.as_mut_ptr();
        for j in 0..msgs {
            let m = self.send_msgs[j];
            let h = &mut self.send_hdrs[j];
            h.msg_name = names.wrapping_add(j).cast();
            h.msg_iov = iovs.wrapping_add(m.iov);
            h.msg_iovlen = m.count as _;
            h.msg_control = if h.msg_controllen == 0 {
                ptr::null_mut()
            } else {
                ctrl.wrapping_add(j).cast()
            };
            h.msg_flags = 0;
        }
        // 3. One SENDMSG per message; nothing touches the boxes again until every completion
        //    is reaped.
        let hdrs = self.send_hdrs.as_mut_ptr();
        for j in 0..msgs {
            let m = self.send_msgs[j];
            #[cfg(test)]
            if m.count > 1 {
                if let Some(errno) = self.fail_next_gso.take() {
                    self.send_state[j] = SlotState::Done(-errno);
                    continue;
                }
            }
            let entry = opcode::SendMsg::new(Fd(m.fd), hdrs.wrapping_add(j).cast_const())
                .build()
                .user_data(Token::Send(j).encode());
            // SAFETY: the msghdr, its name, control message and iovecs live in backend-owned
            // boxes that are not written until this entry completes; the iovecs point into the
            // contents of `transmits`, borrowed for this whole call. `reap_sends` below does not
            // return before every submitted entry has completed (cancelling stragglers, and as
            // a last resort waiting without a bound), so the kernel never reads them after
            // `send` returns.
            let mut pushed = unsafe { push(&mut self.ring, &entry) };
            if !pushed {
                // Submission queue full: hand what is queued to the kernel and continue.
                if let Err(e) = self.ring.submit() {
                    log::debug!("io_uring submit with a full queue: {e}");
                }
                // SAFETY: as above.
                pushed = unsafe { push(&mut self.ring, &entry) };
            }
            self.send_state[j] = if pushed {
                self.send_outstanding += 1;
                SlotState::InFlight
            } else {
                // Counted failed below, with this reason.
                SlotState::Done(-libc::EBUSY)
            };
        }
        self.reap_sends();
        // 4. Results. Refused GSO messages are collected and sent again once GSO is off.
        let mut resend: Vec<(usize, usize)> = Vec::new();
        for j in 0..msgs {
            let m = self.send_msgs[j];
            let count = m.count as u64;
            match mem::replace(&mut self.send_state[j], SlotState::Idle) {
                SlotState::Done(res) if res >= 0 => {
                    stats.sent += count;
                    if m.count > 1 {
                        self.gso_confirmed[m.listener] = true;
                    }
                }
                SlotState::Done(res) if m.count > 1 && matches!(-res, libc::EIO | libc::EINVAL) => {
                    self.disable_gso(m.listener, &io::Error::from_raw_os_error(-res));
                    resend.push((m.first, m.count));
                }
                SlotState::Done(res) => {
                    stats.failed += count;
                    if let Some(suppressed) = self.send_warn.allow() {
                        log::warn!(
                            "send via listener {} to {} failed: {} ({} datagrams; \
                             {suppressed} similar suppressed)",
                            m.listener,
                            transmits[m.first].destination,
                            io::Error::from_raw_os_error(-res),
                            m.count
                        );
                    }
                }
                // Not reached: reap_sends waits for every submitted entry.
                SlotState::InFlight | SlotState::Idle => stats.failed += count,
            }
        }
        // GSO is off now, so these go one datagram per message and are not refused again.
        for (first, count) in resend {
            let end = first + count;
            let mut k = first;
            while k < end {
                k = self.send_chunk(&transmits[..end], k, stats);
            }
        }
        i
    }

    /// The kernel refused a GSO send (`err`): no GSO on any listener from now on.
    fn disable_gso(&mut self, listener: usize, err: &io::Error) {
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

    /// Submits and waits until every in-flight send has completed. Sends still pending after
    /// [`SEND_DEADLINE`] are cancelled (they complete with -ECANCELED and count as failed).
    fn reap_sends(&mut self) {
        let deadline = Instant::now() + SEND_DEADLINE;
        let mut cancelled = false;
        let mut rounds_after_cancel = 0;
        while self.send_outstanding > 0 {
            let want = self.send_outstanding;
            if let Err(e) = self.enter(want, SEND_WAIT_SLICE) {
                if let Some(suppressed) = self.send_warn.allow() {
                    log::warn!("waiting for send completions: {e} ({suppressed} suppressed)");
                }
            }
            self.drain_cq();
            if self.send_outstanding == 0 {
                break;
            }
            if cancelled {
                rounds_after_cancel += 1;
                if rounds_after_cancel >= CANCEL_WAIT_ROUNDS {
                    break;
                }
            } else if Instant::now() >= deadline {
                cancelled = true;
                for j in 0..SEND_SLOTS {
                    if self.send_state[j] == SlotState::InFlight {
                        let entry = opcode::AsyncCancel::new(Token::Send(j).encode())
                            .build()
                            .user_data(Token::Cancel.encode());
                        // SAFETY: a cancel request carries no pointers.
                        if !unsafe { push(&mut self.ring, &entry) } {
                            let _ = self.ring.submit();
                            // SAFETY: as above.
                            let _ = unsafe { push(&mut self.ring, &entry) };
                        }
                    }
                }
            }
        }
        // Last resort: the kernel still holds pointers into the caller's buffers, so `send`
        // must not return. Cancelled requests do complete; wait for them without a bound.
        if self.send_outstanding > 0 {
            log::error!(
                "{} io_uring sends still pending after cancellation; waiting",
                self.send_outstanding
            );
        }
        // One line above, then at most one every WARN_INTERVAL: this loop must not flood.
        let mut next_log = Instant::now() + WARN_INTERVAL;
        while self.send_outstanding > 0 {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if Instant::now() >= next_log {
                    log::error!("io_uring_enter while waiting for sends: {e}");
                    next_log = Instant::now() + WARN_INTERVAL;
                }
                thread::sleep(SEND_WAIT_SLICE);
            }
            self.drain_cq();
        }
    }

    /// The body of `recv`: harvest, then wait in rounds until something arrives, the waker
    /// fires or the timeout passes.
    fn recv_rounds(
        &mut self,
        batch: &mut RecvBatch,
        start: Instant,
        timeout: Duration,
    ) -> io::Result<usize> {
        self.harvest(batch)?;
        for _ in 0..MAX_WAIT_ROUNDS {
            if batch.len() == batch.capacity() {
                break;
            }
            self.rearm();
            // Something in hand (or woken): only collect what is ready. Nothing: wait for the
            // rest of the timeout.
            let wait = if batch.is_empty() && !self.woken {
                timeout.saturating_sub(start.elapsed())
            } else {
                Duration::ZERO
            };
            let completed = self.enter(1, wait)?;
            self.harvest(batch)?;
            if !batch.is_empty()
                || self.woken
                || !completed
                || wait.is_zero()
                || start.elapsed() >= timeout
            {
                break;
            }
        }
        Ok(batch.len())
    }

    /// Cancels the armed multishots and waits (bounded) until each has reported its end, so
    /// the buffer pool can be unmapped. Returns false if some may still be armed.
    fn quiesce(&mut self) -> bool {
        // Buffers of undelivered completions are not needed any more; the multishot ends count.
        let pending: Vec<Cqe> = self.backlog.iter_mut().flat_map(|q| q.drain(..)).collect();
        for c in pending {
            if let Some(Token::Recv(idx)) = Token::decode(c.user_data) {
                if idx < self.armed.len() && !cqueue::more(c.flags) {
                    self.armed[idx] = false;
                }
            }
        }
        for idx in 0..self.sockets.len() {
            if self.armed[idx] {
                let entry = opcode::AsyncCancel::new(Token::Recv(idx).encode())
                    .build()
                    .user_data(Token::Cancel.encode());
                // SAFETY: a cancel request carries no pointers.
                let _ = unsafe { push(&mut self.ring, &entry) };
            }
        }
        for _ in 0..20 {
            if !self.armed.iter().any(|&a| a) {
                return true;
            }
            if self.enter(1, Duration::from_millis(50)).is_err() {
                return false;
            }
            self.drain_cq();
            let pending: Vec<Cqe> = self.backlog.iter_mut().flat_map(|q| q.drain(..)).collect();
            for c in pending {
                if let Some(Token::Recv(idx)) = Token::decode(c.user_data) {
                    if idx < self.armed.len() && !cqueue::more(c.flags) {
                        self.armed[idx] = false;
                    }
                }
            }
        }
        !self.armed.iter().any(|&a| a)
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        if !self.enabled || !self.armed.iter().any(|&a| a) {
            return;
        }
        let other_thread = self.issuer.is_some_and(|t| t != thread::current().id());
        if other_thread || !self.quiesce() {
            // A multishot may still write into the pool: leak it rather than unmap it.
            self.pool.leak = true;
            log::warn!(
                "uring backend dropped with receives still armed; leaking {} KiB of buffers",
                self.pool.map_len / 1024
            );
        }
    }
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend")
            .field("sockets", &self.sockets)
            .field("mode", &self.mode)
            .field("recv_buffers", &self.pool.entries)
            .field("enobufs", &self.enobufs)
            .field("rearms", &self.rearms)
            .finish_non_exhaustive()
    }
}

impl Backend for UringBackend {
    fn drops(&self) -> super::Drops {
        super::Drops {
            kernel: self.kernel_drops(),
            enobufs: self.enobufs(),
        }
    }

    fn recv(&mut self, batch: &mut RecvBatch, timeout: Duration) -> io::Result<usize> {
        batch.clear();
        self.ensure_enabled()?;
        if let Some(errno) = self.waker_error {
            let e = io::Error::from_raw_os_error(errno);
            return Err(io::Error::new(e.kind(), format!("poll on the waker: {e}")));
        }
        let start = Instant::now();
        let result = self.recv_rounds(batch, start, timeout);
        // The caller drains the waker now; a later write posts a new completion.
        self.woken = false;
        result
    }

    fn send(&mut self, transmits: &[Transmit<'_>]) -> SendStats {
        let mut stats = SendStats::default();
        if let Err(e) = self.ensure_enabled() {
            stats.failed = transmits.len() as u64;
            if let Some(suppressed) = self.send_warn.allow() {
                log::warn!(
                    "{} datagrams dropped: {e} ({suppressed} similar suppressed)",
                    transmits.len()
                );
            }
            return stats;
        }
        let mut next = 0;
        while next < transmits.len() {
            next = self.send_chunk(transmits, next, &mut stats);
        }
        stats
    }

    fn capabilities(&self) -> Capabilities {
        // What every listener can do (GSO), and the most one receive may coalesce (GRO).
        let gro = self.gro.iter().any(|&g| g);
        Capabilities {
            max_gso_segments: self.gso.iter().copied().min().unwrap_or(1),
            gro_segments: if gro { GRO_MAX_SEGMENTS } else { 1 },
            batch_size: BATCH_SIZE,
        }
    }

    fn name(&self) -> &'static str {
        "uring"
    }

    fn stop_receiving(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        for idx in 0..self.sockets.len() {
            if self.armed[idx] {
                let entry = opcode::AsyncCancel::new(Token::Recv(idx).encode())
                    .build()
                    .user_data(Token::Cancel.encode());
                // SAFETY: a cancel request carries no pointers. It is submitted by the next
                // `recv`, whose completions then end each multishot (no F_MORE).
                let _ = unsafe { push(&mut self.ring, &entry) };
            }
        }
    }

    fn receiving(&self) -> bool {
        self.armed.iter().any(|&a| a) || self.backlog.iter().any(|q| !q.is_empty())
    }

    fn set_waker(&mut self, waker: RawFd) -> io::Result<()> {
        if waker < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("waker fd {waker}"),
            ));
        }
        if self.waker_armed {
            // The old poll's completions carry the old generation and are ignored.
            let entry = opcode::AsyncCancel::new(Token::Waker(self.waker_gen).encode())
                .build()
                .user_data(Token::Cancel.encode());
            // SAFETY: a cancel request carries no pointers.
            if !unsafe { push(&mut self.ring, &entry) } {
                let _ = self.ring.submit();
                // SAFETY: as above.
                let _ = unsafe { push(&mut self.ring, &entry) };
            }
        }
        self.waker = Some(waker);
        self.waker_gen = (self.waker_gen + 1) & Token::INDEX_MASK as usize;
        self.waker_armed = false;
        self.waker_error = None;
        // Before the ring is enabled, `ensure_enabled` arms it.
        if self.enabled {
            self.arm_waker();
        }
        Ok(())
    }
}

/// Pushes one entry; false if the submission queue is full.
///
/// # Safety
/// Every pointer the entry carries must stay valid (and the memory it writes unused by Rust)
/// until its completion is reaped or it is known cancelled.
unsafe fn push(ring: &mut IoUring, entry: &squeue::Entry) -> bool {
    // SAFETY: forwarded to the caller.
    unsafe { ring.submission().push(entry).is_ok() }
}

/// Can the io_uring backend run here? Checks that a ring can be set up, that the kernel has the
/// opcodes and features it uses (RECVMSG, SENDMSG, ASYNC_CANCEL, EXT_ARG waits, a buffer ring)
/// and that a multishot recvmsg really delivers (Linux 6.0), on a private AF_UNIX socket pair.
///
/// # Errors
/// Why not, in one line for the `--backend auto` log, e.g.
/// `io_uring disabled by kernel.io_uring_disabled=2` or
/// `io_uring_setup: Operation not permitted (blocked, e.g. by a seccomp profile such as a
/// container runtime's default)`.
pub fn probe() -> Result<(), String> {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    if sysctl == Some(2) {
        return Err("io_uring disabled by kernel.io_uring_disabled=2".into());
    }
    let (ring, mode) = build_ring(8, 16).map_err(|e| setup_error(&e, sysctl))?;
    if mode == RingMode::DeferTaskrun {
        ring.submitter()
            .register_enable_rings()
            .map_err(|e| format!("io_uring enable rings: {}", strerror(&e)))?;
    }
    if !ring.params().is_feature_ext_arg() {
        return Err("io_uring lacks IORING_FEAT_EXT_ARG (timed waits; needs Linux 5.11)".into());
    }
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|e| {
        format!(
            "io_uring_register(PROBE): {} (needs Linux 5.6)",
            strerror(&e)
        )
    })?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("io_uring lacks IORING_OP_{name}"));
        }
    }
    let mut pool = BufPool::new(8, 256).map_err(|e| format!("mmap: {}", strerror(&e)))?;
    pool.register(&ring).map_err(|e| {
        format!(
            "io_uring buffer ring registration: {} (needs Linux 5.19)",
            strerror(&e)
        )
    })?;
    probe_multishot(ring, &mut pool)
}

/// Arms a multishot recvmsg on an AF_UNIX datagram pair, sends one byte and checks the
/// completion. Consumes the ring so it is closed before `pool` can be unmapped.
fn probe_multishot(mut ring: IoUring, pool: &mut BufPool) -> Result<(), String> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "socketpair for the io_uring probe: {}",
            strerror(&io::Error::last_os_error())
        ));
    }
    // SAFETY: socketpair succeeded, so both are fresh descriptors owned by nobody else.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut hdr: Box<libc::msghdr> = Box::new(zeroed());
    hdr.msg_namelen = NAME_LEN as libc::socklen_t;
    let entry = opcode::RecvMsgMulti::new(Fd(rx.as_raw_fd()), &*hdr, BGID)
        .build()
        .user_data(Token::Recv(0).encode());
    // SAFETY: `hdr` and `pool` outlive the request: before returning, the request is
    // cancelled and its end awaited, or else the pool is leaked (`hdr` is leaked too).
    if !unsafe { push(&mut ring, &entry) } {
        return Err("io_uring probe: submission queue full".into());
    }
    // SAFETY: sends one byte from a live local buffer on an open socket.
    let sent = unsafe { libc::send(tx.as_raw_fd(), b"p".as_ptr().cast(), 1, 0) };
    if sent != 1 {
        return Err(format!(
            "io_uring probe send: {}",
            strerror(&io::Error::last_os_error())
        ));
    }
    let mut verdict = Err("multishot recvmsg: no completion within 1 s".to_string());
    let mut armed = true;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut cancelled = false;
    for _ in 0..50 {
        let ts = Timespec::new().nsec(20_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        if let Err(e) = ring.submitter().submit_with_args(1, &args) {
            if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) {
                verdict = Err(format!("io_uring_enter: {}", strerror(&e)));
                break;
            }
        }
        for c in ring.completion() {
            if Token::decode(c.user_data()) != Some(Token::Recv(0)) {
                continue;
            }
            if !cqueue::more(c.flags()) {
                armed = false;
            }
            if cancelled {
                continue;
            }
            verdict = if c.result() < 0 {
                let e = io::Error::from_raw_os_error(-c.result());
                Err(format!(
                    "multishot recvmsg refused: {} (needs Linux 6.0)",
                    strerror(&e)
                ))
            } else if cqueue::buffer_select(c.flags()).is_none() {
                Err("multishot recvmsg completed without a provided buffer".into())
            } else if !cqueue::more(c.flags()) {
                Err("multishot recvmsg ended after one datagram (not multishot)".into())
            } else {
                Ok(())
            };
        }
        if !armed {
            break;
        }
        if !cancelled && (verdict.is_ok() || Instant::now() >= deadline) {
            cancelled = true;
            let cancel = opcode::AsyncCancel::new(Token::Recv(0).encode())
                .build()
                .user_data(Token::Cancel.encode());
            // SAFETY: a cancel request carries no pointers.
            let _ = unsafe { push(&mut ring, &cancel) };
        }
    }
    if armed {
        // Never seen the end of the request: keep what it may still use.
        pool.leak = true;
        mem::forget(hdr);
    }
    drop(ring);
    verdict
}

/// The io_uring_setup error, with what it can mean. ENOSYS does not prove a kernel without
/// io_uring: a seccomp filter fails a blocked syscall with whatever errno its profile names,
/// ENOSYS or EPERM as a rule (Docker's default profile blocks io_uring from Docker 25 on;
/// `scripts/container-test.sh` blocks it both ways).
fn setup_error(e: &io::Error, sysctl: Option<u8>) -> String {
    const SECCOMP: &str = "a seccomp profile such as a container runtime's default";
    let msg = strerror(e);
    match e.raw_os_error() {
        Some(libc::EPERM) if sysctl == Some(1) => format!(
            "io_uring_setup: {msg} (kernel.io_uring_disabled=1 allows only privileged processes, \
             or blocked by {SECCOMP})"
        ),
        Some(libc::EPERM) => format!("io_uring_setup: {msg} (blocked, e.g. by {SECCOMP})"),
        Some(libc::ENOSYS) => {
            format!("io_uring_setup: {msg} (not in this kernel, or blocked by {SECCOMP})")
        }
        Some(libc::ENOMEM) => format!("io_uring_setup: {msg} (RLIMIT_MEMLOCK too low?)"),
        _ => format!("io_uring_setup: {msg}"),
    }
}

/// An OS error's text without the trailing "(os error N)".
fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::socket::{bind_udp, SocketOptions};
    use crate::io::testkit::{
        self, addr, conformance_tests, every_backend_test, local, offload_tests, payloads, recv_n,
        run_payloads, sockets, transmits, Combo, GsoHook, TestBackend, DEADLINE,
    };
    use crate::io::MmsgBackend;

    impl TestBackend for UringBackend {
        fn unavailable() -> Option<String> {
            probe().err()
        }
        fn from_sockets(sockets: Vec<UdpSocket>) -> Self {
            UringBackend::new(sockets).expect("UringBackend::new")
        }
        fn with_offload(sockets: Vec<UdpSocket>, offload: Offload) -> Self {
            UringBackend::with_offload(sockets, offload).expect("UringBackend::with_offload")
        }
        fn sockets(&self) -> &[UdpSocket] {
            UringBackend::sockets(self)
        }
        fn kernel_drops(&self) -> u64 {
            UringBackend::kernel_drops(self)
        }
        fn gro_runs(&self) -> usize {
            self.gro_runs
        }
        fn gso_hook(&mut self) -> &mut GsoHook {
            &mut self.fail_next_gso
        }
    }

    every_backend_test!(UringBackend);

    /// Skips the test, with the probe's reason, where io_uring cannot run.
    macro_rules! require_uring {
        () => {
            if let Err(why) = probe() {
                println!("skipping: io_uring unavailable: {why}");
                return;
            }
        };
    }

    fn backend(addrs: &[&str]) -> UringBackend {
        testkit::bind(addrs)
    }

    #[test]
    fn probe_says_why() {
        match probe() {
            Ok(()) => println!("io_uring usable here"),
            Err(why) => {
                println!("io_uring unusable here: {why}");
                assert!(!why.is_empty());
            }
        }
    }

    /// The `--backend auto` fallback path: a seccomp filter (Docker's default profile does
    /// this) makes io_uring_setup fail with EPERM. Installed on a throwaway thread only:
    /// seccomp filters are per thread without TSYNC.
    #[test]
    fn probe_explains_seccomp_refusal() {
        let why = thread::spawn(|| {
            crate::io::seccomp::deny_io_uring_setup_on_this_thread();
            let err = UringBackend::new(Vec::new()).expect_err("setup refused");
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
            probe().expect_err("probe must fail under the filter")
        })
        .join()
        .expect("seccomp thread");
        println!("probe under seccomp: {why}");
        assert_eq!(
            why,
            "io_uring_setup: Operation not permitted (blocked, e.g. by a seccomp profile such \
             as a container runtime's default)"
        );
    }

    #[test]
    fn setup_errors_name_the_cause() {
        let e = |n| io::Error::from_raw_os_error(n);
        let disabled = setup_error(&e(libc::EPERM), Some(1));
        assert!(disabled.contains("io_uring_disabled=1"), "{disabled}");
        assert!(disabled.contains("seccomp profile"), "{disabled}");
        // ENOSYS is also what a seccomp profile can answer: the text must not blame the kernel
        // alone.
        assert_eq!(
            setup_error(&e(libc::ENOSYS), None),
            "io_uring_setup: Function not implemented (not in this kernel, or blocked by a \
             seccomp profile such as a container runtime's default)"
        );
        assert!(setup_error(&e(libc::ENOMEM), Some(0)).contains("RLIMIT_MEMLOCK"));
        assert_eq!(strerror(&e(libc::EPERM)), "Operation not permitted");
    }

    #[test]
    fn more_than_send_slots_in_one_call() {
        require_uring!();
        testkit::send_recv::<UringBackend>(
            "127.0.0.1:0",
            "127.0.0.1:0",
            &payloads(3 * SEND_SLOTS + 5),
        );
    }

    /// More datagrams queued than the buffer ring holds: the multishot ends with -ENOBUFS, is
    /// re-armed, and every datagram still arrives, in order (the socket buffer holds them
    /// meanwhile). Afterwards the backend keeps working.
    #[test]
    fn buffer_ring_exhaustion_rearms_and_keeps_working() {
        require_uring!();
        let mut tx = backend(&["127.0.0.1:0"]);
        let mut rx = backend(&["127.0.0.1:0"]);
        let ring = rx.recv_buffers() as usize;
        let count = 3 * ring;
        // Arm the multishot first so it races the burst (and, with the socket already full,
        // runs dry on the first enter at the latest).
        let mut batch = RecvBatch::new();
        assert_eq!(rx.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        let data: Vec<Vec<u8>> = (0..count as u32)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        let stats = tx.send(&transmits(local(&rx, 0), &data));
        assert_eq!(stats.sent, count as u64);

        // With DEFER_TASKRUN the kernel receives only when the thread enters it. A relay's
        // sends enter it too, and park the receive completions in the backlog without
        // recycling their buffers: send until the ring runs dry.
        let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
        let to_sink = Transmit {
            listener: 0,
            destination: sink.local_addr().expect("local_addr"),
            contents: b"tick",
        };
        for _ in 0..5_000 {
            if rx.backlog[0].iter().any(|c| c.result == -libc::ENOBUFS) {
                break;
            }
            assert_eq!(rx.send(&[to_sink]).sent, 1);
        }
        println!("backlog {} before the first recv", rx.backlog[0].len());

        let got = recv_n(&mut rx, count);
        let drops = rx.kernel_drops() as usize;
        println!(
            "ring {ring}, sent {count}, received {}, kernel drops {drops}, enobufs {}, rearms {}",
            got.len(),
            rx.enobufs(),
            rx.rearms()
        );
        assert_eq!(
            got.len() + drops,
            count,
            "every datagram received or counted dropped"
        );
        let seq: Vec<u32> = got
            .iter()
            .map(|(_, d)| u32::from_be_bytes(d[..4].try_into().expect("4 bytes")))
            .collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "out of order");
        assert!(rx.enobufs() > 0, "the burst never emptied the buffer ring");
        assert!(rx.rearms() >= rx.enobufs());
        assert_eq!(rx.pool.held, 0, "every buffer went back to the ring");

        // Still working.
        let after = payloads(50);
        let stats = tx.send(&transmits(local(&rx, 0), &after));
        assert_eq!(stats.sent, 50);
        let got = recv_n(&mut rx, 50);
        assert_eq!(got.len(), 50);
        for ((_, bytes), want) in got.iter().zip(&after) {
            assert_eq!(bytes, want);
        }
    }

    #[test]
    fn talks_to_mmsg_both_ways() {
        require_uring!();
        let mut u = backend(&["127.0.0.1:0"]);
        let mut m = MmsgBackend::new(sockets(&["127.0.0.1:0"]));
        let (u_addr, m_addr) = (local(&u, 0), m.sockets()[0].local_addr().expect("local"));
        let p = payloads(150);

        assert_eq!(u.send(&transmits(m_addr, &p)).sent, p.len() as u64);
        let got = recv_n(&mut m, p.len());
        assert_eq!(got.len(), p.len());
        for ((meta, bytes), want) in got.iter().zip(&p) {
            assert_eq!(bytes, want);
            assert_eq!(meta.addr, u_addr);
        }

        assert_eq!(m.send(&transmits(u_addr, &p)).sent, p.len() as u64);
        let got = recv_n(&mut u, p.len());
        assert_eq!(got.len(), p.len());
        for ((meta, bytes), want) in got.iter().zip(&p) {
            assert_eq!(bytes, want);
            assert_eq!(meta.addr, m_addr);
        }
    }

    /// GSO sends from one backend split by GRO on the other, both ways between uring and mmsg;
    /// and runs on two listeners at once, each in order, none lost across batch boundaries.
    #[test]
    fn offloads_interoperate_with_mmsg() {
        require_uring!();
        let mut u =
            UringBackend::with_offload(sockets(&["127.0.0.1:0", "127.0.0.1:0"]), Offload::ON)
                .expect("uring");
        let mut m = MmsgBackend::with_offload(sockets(&["127.0.0.1:0"]), Offload::ON);
        if u.capabilities().gro_segments == 1 || m.capabilities().max_gso_segments == 1 {
            println!("skipping: no UDP GSO/GRO on this host");
            return;
        }
        assert_eq!(u.recv_buffers(), 2 * GRO_RECV_BUFS_PER_SOCKET);
        assert_eq!(u.pool.buf_len, GRO_RECV_BUF_LEN);
        let (u_addr, m_addr) = (local(&u, 0), m.sockets()[0].local_addr().expect("local"));
        let p = run_payloads(100, 1200, Some(50));

        assert_eq!(u.send(&transmits(m_addr, &p)).sent, p.len() as u64);
        let got: Vec<Vec<u8>> = recv_n(&mut m, p.len())
            .into_iter()
            .map(|(_, d)| d)
            .collect();
        assert_eq!(got, p);

        // Two runs to each of u's listeners, interleaved: 4 x 101 datagrams, 7 batches.
        let dests = [u_addr, local(&u, 1)];
        for round in 0..2 {
            for d in dests {
                assert_eq!(
                    m.send(&transmits(d, &p)).sent,
                    p.len() as u64,
                    "round {round}"
                );
            }
        }
        let got = recv_n(&mut u, 4 * p.len());
        assert_eq!(got.len(), 4 * p.len(), "datagrams lost or duplicated");
        for listener in 0..2 {
            let mine: Vec<Vec<u8>> = got
                .iter()
                .filter(|(meta, _)| meta.listener == listener)
                .map(|(meta, d)| {
                    assert_eq!(meta.addr, m_addr);
                    d.clone()
                })
                .collect();
            let want: Vec<Vec<u8>> = p.iter().chain(&p).cloned().collect();
            assert_eq!(mine, want, "listener {listener}: order within the listener");
        }
        assert!(u.gro_runs > 0, "nothing was coalesced");
        assert_eq!(u.pool.held, 0, "every buffer went back to the ring");
    }

    /// Built on one thread, used on another (the shard): the ring's issuer is the user.
    #[test]
    fn built_here_used_on_shard_thread() {
        require_uring!();
        let mut rx = backend(&["127.0.0.1:0"]);
        let mut tx = backend(&["127.0.0.1:0"]);
        let dst = local(&rx, 0);
        let shard = thread::spawn(move || {
            let got = recv_n(&mut rx, 1);
            (got.len(), rx)
        });
        let p = payloads(1);
        let start = Instant::now();
        // Resend until the shard has it (its receive is armed when its first recv runs).
        while !shard.is_finished() && start.elapsed() < DEADLINE {
            tx.send(&transmits(dst, &p));
            thread::sleep(Duration::from_millis(20));
        }
        let (n, rx) = shard.join().expect("shard thread");
        assert_eq!(n, 1);
        // Dropped here, on another thread than its issuer: leaks its buffers rather than
        // unmapping them under an armed receive.
        drop(rx);
    }

    #[test]
    fn use_from_a_second_thread_is_an_error_not_a_hang() {
        require_uring!();
        let mut b = backend(&["127.0.0.1:0"]);
        let mut batch = RecvBatch::new();
        assert_eq!(b.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        if b.mode != RingMode::DeferTaskrun {
            println!("skipping: ring is not SINGLE_ISSUER here ({:?})", b.mode);
            return;
        }
        let b = thread::spawn(move || {
            let mut batch = RecvBatch::new();
            let err = b
                .recv(&mut batch, Duration::from_millis(10))
                .expect_err("second thread");
            assert!(err.to_string().contains("second thread"), "{err}");
            let t = Transmit {
                listener: 0,
                destination: addr("127.0.0.1:9"),
                contents: b"x",
            };
            assert_eq!(b.send(&[t]), SendStats { sent: 0, failed: 1 });
            b
        })
        .join()
        .expect("thread");
        drop(b);
    }

    #[test]
    fn drop_cancels_armed_receives() {
        require_uring!();
        let mut b = backend(&["127.0.0.1:0", "127.0.0.1:0"]);
        let mut batch = RecvBatch::new();
        assert_eq!(b.recv(&mut batch, Duration::ZERO).expect("recv"), 0);
        assert!(b.armed.iter().all(|&a| a));
        assert!(b.quiesce(), "multishots did not end after cancel");
        assert!(!b.pool.leak);
    }

    #[test]
    fn tokens_round_trip() {
        for t in [
            Token::Recv(0),
            Token::Recv(5),
            Token::Send(127),
            Token::Cancel,
        ] {
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }

    #[test]
    fn backend_is_send_and_reports_capabilities() {
        fn assert_send<T: Send>() {}
        assert_send::<UringBackend>();
        require_uring!();
        let b = backend(&["127.0.0.1:0"]);
        assert_eq!(b.name(), "uring");
        let caps = b.capabilities();
        assert_eq!(caps.batch_size, BATCH_SIZE);
        assert_eq!((caps.max_gso_segments, caps.gro_segments), (1, 1));
        assert_eq!(b.recv_buffers(), RECV_BUFS_PER_SOCKET);
        println!("{b:?}");
    }

    /// CPU time (user + system) of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ru: libc::rusage = unsafe_zeroed_rusage();
        // SAFETY: `ru` is a live rusage the kernel fills.
        let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
        assert_eq!(rc, 0, "getrusage");
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    fn unsafe_zeroed_rusage() -> libc::rusage {
        // SAFETY: rusage is made of integers only; all-zero is valid.
        unsafe { mem::zeroed() }
    }

    /// One relay run: a blaster thread (always mmsg, so only the relay differs) floods the
    /// relay socket with `size`-byte datagrams; the relay (backend `kind`, this thread)
    /// receives batches and forwards every datagram to a sink socket nobody reads (loopback
    /// drops there once it is full, after the relay's send succeeded). Returns (forwarded
    /// datagrams per second, relay CPU microseconds per datagram, mean datagrams per batch).
    fn relay_run(kind: &str, size: usize, run: Duration) -> (f64, f64, u64) {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;

        let relay_sock = bind_udp(addr("127.0.0.1:0"), &SocketOptions::default()).expect("bind");
        let relay_addr = relay_sock.local_addr().expect("local_addr");
        let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
        let sink_addr = sink.local_addr().expect("local_addr");
        let mut relay: Box<dyn Backend> = match kind {
            "uring" => Box::new(UringBackend::new(vec![relay_sock]).expect("uring")),
            _ => Box::new(MmsgBackend::new(vec![relay_sock])),
        };

        let stop = Arc::new(AtomicBool::new(false));
        let blaster = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut b = MmsgBackend::new(sockets(&["127.0.0.1:0"]));
                let payload = vec![0x5a_u8; size];
                let t: Vec<Transmit<'_>> = (0..BATCH_SIZE)
                    .map(|_| Transmit {
                        listener: 0,
                        destination: relay_addr,
                        contents: &payload,
                    })
                    .collect();
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < run * 4 {
                    b.send(&t);
                }
            })
        };

        let mut batch = RecvBatch::new();
        // The same per-batch work (one small Vec) for both backends.
        let forward = |relay: &mut Box<dyn Backend>, batch: &mut RecvBatch| -> u64 {
            let mut out: Vec<Transmit<'_>> = Vec::with_capacity(BATCH_SIZE);
            relay
                .recv(batch, Duration::from_millis(10))
                .expect("relay recv");
            out.extend(batch.iter().map(|(m, d)| Transmit {
                listener: 0,
                destination: sink_addr,
                contents: &d[..m.len],
            }));
            relay.send(&out).sent
        };
        // Warm up: buffers faulted in, queues full.
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(200) {
            forward(&mut relay, &mut batch);
        }
        let cpu0 = thread_cpu();
        let start = Instant::now();
        let mut forwarded = 0u64;
        let mut calls = 0u64;
        while start.elapsed() < run {
            forwarded += forward(&mut relay, &mut batch);
            calls += 1;
        }
        let elapsed = start.elapsed();
        let cpu = thread_cpu() - cpu0;
        stop.store(true, Ordering::Relaxed);
        blaster.join().expect("blaster");
        let pps = forwarded as f64 / elapsed.as_secs_f64();
        let us_per = cpu.as_secs_f64() * 1e6 / forwarded.max(1) as f64;
        (pps, us_per, forwarded / calls.max(1))
    }

    /// Forwarding rate of the relay loop on loopback, mmsg vs uring. Noisy on a shared
    /// machine: it alternates the two backends over several rounds.
    /// `cargo test --release throughput -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark; run explicitly"]
    fn throughput_mmsg_vs_uring() {
        require_uring!();
        let run = Duration::from_secs(2);
        for size in [64, 1400] {
            for round in 0..3 {
                for kind in ["mmsg", "uring"] {
                    let (pps, us, per_batch) = relay_run(kind, size, run);
                    println!(
                        "size {size:>4} round {round} {kind:>5}: {pps:>9.0} datagrams/s \
                         forwarded, {us:.2} us relay CPU per datagram, {per_batch} per batch"
                    );
                }
            }
        }
    }
}
