//! Linux io_uring backend: multishot `recvmsg` into a provided buffer ring, batched `sendmsg`,
//! with optional UDP GSO on send and UDP GRO on receive ([`Offload`], as the mmsg backend).
//!
//! One ring per backend (a backend belongs to one shard thread):
//! - **Receive**: one multishot `RECVMSG` per socket selects buffers from one shared buffer ring
//!   ([`RECV_BUFS_PER_SOCKET`] buffers per socket). Each completion is parsed with
//!   [`RecvMsgOut::parse`](io_uring::types::RecvMsgOut::parse) and its buffer lent to the
//!   caller's [`RecvBatch`] as one message (no copy); the batch gives it back when it is cleared,
//!   and the next `recv` provides it to the kernel again, so the ring refills at the rate the
//!   caller consumes. A multishot that ends (buffer ring empty: `-ENOBUFS`, or any error) is
//!   re-armed by the next `recv` and counted. With **GRO**, a buffer holds a coalesced run, kept
//!   whole; a completion that does not fit the batch waits in the backlog (never dropped).
//! - **Send**: one `SENDMSG` per message from preallocated msghdr/iovec/sockaddr slots, one
//!   submission per chunk of up to [`SEND_SLOTS`] messages, then the completions are reaped
//!   before `send` returns (the iovecs point into the caller's buffers, which only live for the
//!   call). With **GSO**, a message carries a run of datagrams to one destination (the kernel's
//!   rule, [`gso_group`](super::sys::gso_group)) with a UDP_SEGMENT control message. `EIO`/`EINVAL` on such a message
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
//!
//! One file per concern: `setup` (ring flags, enabling, [`probe`]), `bufpool` (the provided
//! buffer ring), `recv` (multishot receive, harvesting completions into records), `send`
//! (SENDMSG batching and reaping); this file holds the backend, its completion-queue glue and
//! the [`Backend`] impl. What the mmsg backend does the same way (offload probing, GRO-run
//! splitting, message staging, cmsg and address parsing) lives in `super::sys`.

use std::collections::VecDeque;
use std::io;
use std::net::UdpSocket;
use std::os::fd::RawFd;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, EnterFlags, IoUring};

use super::sys::{
    split_unsendable, zeroed, zeroed_slice, CmsgBuf, Listeners, RateLimit, CMSG_BUF_LEN,
};
use super::{recycled, Backend, Capabilities, Offload, RecvBatch, SendStats, Transmit};

/// Skips the test, with the probe's reason, where io_uring cannot run.
#[cfg(test)]
macro_rules! require_uring {
    () => {
        if let Err(why) = $crate::io::uring::probe() {
            println!("skipping: io_uring unavailable: {why}");
            return;
        }
    };
}

mod bufpool;
mod recv;
mod send;
mod setup;

pub use bufpool::{GRO_RECV_BUFS_PER_SOCKET, RECV_BUFS_PER_SOCKET};
pub use send::SEND_SLOTS;
pub use setup::probe;

use bufpool::{BufPool, GRO_RECV_BUF_LEN, MAX_BUF_RING_ENTRIES, NAME_LEN, RECV_BUF_LEN};
use send::{SendMsg, SlotState, SEND_IOVS};
use setup::{build_ring, RingMode};

/// Submission queue entries: the send slots plus room for re-arms and cancels.
const SQ_ENTRIES: u32 = 256;

/// Longest single kernel wait; `recv` with a longer timeout waits in rounds of this (the
/// kernel's timespec is signed, so `Duration::MAX` cannot be passed as is).
const MAX_WAIT: Duration = Duration::from_secs(3600);

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

    /// The sockets, their families, drop counts and offloads.
    listeners: Listeners,
    /// A multishot recvmsg is in flight for this listener.
    armed: Vec<bool>,
    /// The listener's socket failed fatally; it is not re-armed.
    dead: Vec<bool>,
    /// A GSO message went through on this listener, so a refusal later is unlikely: chunks no
    /// longer end at its GSO messages.
    gso_confirmed: Vec<bool>,

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
    /// Storage of the split-up send lists (runs sent datagram by datagram), kept empty.
    split: Vec<Transmit<'static>>,

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
    /// completion (backpressure) for up to [`send::SEND_DEADLINE`].
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
        let listeners = Listeners::new(sockets, offload);
        let (gso, gro) = (&listeners.gso, &listeners.gro);
        let (per_socket, buf_len) = if gro.iter().any(|&g| g) {
            (GRO_RECV_BUFS_PER_SOCKET, GRO_RECV_BUF_LEN)
        } else {
            (RECV_BUFS_PER_SOCKET, RECV_BUF_LEN)
        };
        let n = listeners.sockets.len().max(1) as u32;
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

        let count = listeners.sockets.len();
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
            listeners,
            armed: vec![false; count],
            dead: vec![false; count],
            gso_confirmed: vec![false; count],
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
            split: Vec::new(),
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
        &self.listeners.sockets
    }

    /// Datagrams the kernel dropped on these sockets (receive buffer full), as last reported via
    /// SO_RXQ_OVFL (see [`super::MmsgBackend::kernel_drops`]).
    pub fn kernel_drops(&self) -> u64 {
        self.listeners.kernel_drops()
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

    /// Queues a cancel of the request whose completions carry `target`; with a full submission
    /// queue, submits what is queued and tries once more.
    fn cancel(&mut self, target: Token) {
        let entry = cancel_entry(target);
        // SAFETY: a cancel request carries no pointers.
        if !unsafe { push(&mut self.ring, &entry) } {
            let _ = self.ring.submit();
            // SAFETY: as above.
            let _ = unsafe { push(&mut self.ring, &entry) };
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
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        if !self.enabled || !self.armed.iter().any(|&a| a) {
            return;
        }
        let other_thread = self.issuer.is_some_and(|t| t != thread::current().id());
        if other_thread || !self.quiesce() {
            // A multishot may still write into the pool: leak it rather than unmap it.
            self.pool
                .mem
                .leak
                .store(true, std::sync::atomic::Ordering::Relaxed);
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
            .field("sockets", &self.listeners.sockets)
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
        // the buffers the batch held (and any other batch gave back) go back to the ring
        batch.clear();
        self.pool.reclaim();
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
            stats.failed = transmits.iter().map(|t| t.datagrams() as u64).sum();
            if let Some(suppressed) = self.send_warn.allow() {
                log::warn!(
                    "{} datagrams dropped: {e} ({suppressed} similar suppressed)",
                    transmits.len()
                );
            }
            return stats;
        }
        // runs a listener cannot send as one GSO message go datagram by datagram
        let mut split = recycled(std::mem::take(&mut self.split));
        let transmits = if split_unsendable(transmits, &self.listeners.gso, &mut split) {
            &split[..]
        } else {
            transmits
        };
        // GSO refused mid-send turns it off everywhere (once): the runs still to go, split
        let mut had_gso = self.listeners.gso.iter().any(|&g| g > 1);
        let mut next = 0;
        while next < transmits.len() {
            next = self.send_chunk(transmits, next, &mut stats);
            if had_gso && next < transmits.len() && self.listeners.gso.iter().all(|&g| g <= 1) {
                had_gso = false;
                let mut rest = Vec::new();
                if split_unsendable(&transmits[next..], &self.listeners.gso, &mut rest) {
                    let mut k = 0;
                    while k < rest.len() {
                        k = self.send_chunk(&rest, k, &mut stats);
                    }
                    break;
                }
            }
        }
        self.split = recycled(split);
        stats
    }

    fn capabilities(&self) -> Capabilities {
        self.listeners.capabilities()
    }

    fn name(&self) -> &'static str {
        "uring"
    }

    fn stop_receiving(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        // submitted by the next `recv`, whose completions then end each multishot (no F_MORE)
        for idx in 0..self.listeners.sockets.len() {
            if self.armed[idx] {
                self.cancel(Token::Recv(idx));
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
            self.cancel(Token::Waker(self.waker_gen));
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

/// An AsyncCancel of the request whose completions carry `target`; its own completion carries
/// [`Token::Cancel`].
fn cancel_entry(target: Token) -> squeue::Entry {
    opcode::AsyncCancel::new(target.encode())
        .build()
        .user_data(Token::Cancel.encode())
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

#[cfg(test)]
mod tests {
    use std::mem;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::io::socket::{bind_udp, SocketOptions};
    use crate::io::testkit::{
        self, addr, conformance_tests, every_backend_test, local, offload_tests, payloads, recv_n,
        sockets, transmits, Combo, GsoHook, TestBackend, DEADLINE,
    };
    use crate::io::{MmsgBackend, BATCH_SIZE};

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

    pub(super) fn backend(addrs: &[&str]) -> UringBackend {
        testkit::bind(addrs)
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
                segment_size: None,
                source: None,
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
        assert!(!b.pool.mem.leak.load(std::sync::atomic::Ordering::Relaxed));
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
                        segment_size: None,
                        source: None,
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
                segment_size: None,
                source: None,
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
