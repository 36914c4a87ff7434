//! The provided-buffer ring: one anonymous mapping holding the ring entries and the receive
//! buffers, its registration with the ring, and lending buffers to completions and to the
//! caller's [`RecvBatch`](super::super::RecvBatch), and taking them back.

use std::io;
use std::mem;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

use super::super::sys::{CMSG_BUF_LEN, GRO_BUF_LEN};
use super::super::{Lender, MAX_DATAGRAM_LEN};

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
pub(super) const MAX_BUF_RING_ENTRIES: u32 = 32768;

/// `sizeof(struct io_uring_recvmsg_out)`: namelen, controllen, payloadlen, flags (4 x u32),
/// which the kernel writes at the start of every multishot recvmsg buffer.
const RECVMSG_OUT_LEN: usize = 16;

/// Name space in each receive buffer: any socket address.
pub(super) const NAME_LEN: usize = mem::size_of::<libc::sockaddr_storage>();

/// One provided buffer: the recvmsg_out header, name, control, then exactly
/// [`MAX_DATAGRAM_LEN`] payload bytes, so a longer datagram comes back with MSG_TRUNC. A multiple
/// of 8, so every buffer's control part stays aligned for `cmsghdr`.
pub(super) const RECV_BUF_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + CMSG_BUF_LEN + MAX_DATAGRAM_LEN;

/// One provided buffer when GRO is on: as [`RECV_BUF_LEN`], with room for a coalesced run.
pub(super) const GRO_RECV_BUF_LEN: usize = RECVMSG_OUT_LEN + NAME_LEN + CMSG_BUF_LEN + GRO_BUF_LEN;

/// Buffer group id of the shared buffer ring (one ring per io_uring instance).
pub(super) const BGID: u16 = 0;

/// The pool's anonymous mapping, shared with the batches its buffers are lent to: unmapped
/// when the last of them lets go, unless a request might still write into it.
pub(super) struct PoolMem {
    map: NonNull<u8>,
    map_len: usize,
    /// Set when a multishot request might still write into the buffers: the mapping is then
    /// leaked rather than unmapped under the kernel.
    pub(super) leak: AtomicBool,
    /// Buffers the batches gave back, to be provided again by the backend's next `recv`.
    returned: Mutex<Vec<u16>>,
}

// SAFETY: the mapping is plain memory; who may touch which buffer is decided by the lending
// protocol (a buffer is the kernel's, the backend's, or one batch's), never by sharing.
unsafe impl Send for PoolMem {}
// SAFETY: as above; the only shared mutable state is the mutex and the atomic.
unsafe impl Sync for PoolMem {}

impl Lender for PoolMem {
    fn give_back(&self, bids: &mut Vec<u16>) {
        let mut returned = self.returned.lock().unwrap_or_else(PoisonError::into_inner);
        returned.append(bids);
    }
}

impl Drop for PoolMem {
    fn drop(&mut self) {
        if *self.leak.get_mut() {
            return;
        }
        // SAFETY: the mapping was created in `BufPool::new` with this length and is unmapped
        // only here, by its last owner; `leak` is set whenever a request might still use it.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// A provided-buffer ring and its buffers, in one anonymous mapping: the ring entries first
/// (page aligned, as the kernel requires), then `entries` buffers of `buf_len` bytes.
///
/// Buffer ownership: buffer `bid` belongs to the kernel from the moment its entry is published
/// (tail store) until a completion names it; then to us, and from delivery on to the batch it
/// is lent to, until that batch gives it back and we publish it again.
pub(super) struct BufPool {
    pub(super) mem: Arc<PoolMem>,
    /// `mem`, as the batches see it.
    pub(super) lender: Arc<dyn Lender>,
    pub(super) map_len: usize,
    ring: *mut BufRingEntry,
    bufs: *mut u8,
    pub(super) entries: u32,
    pub(super) buf_len: usize,
    /// Local tail; published to the kernel by [`BufPool::publish`].
    tail: u16,
    /// Buffers handed to us by completions and not yet provided again (lent ones included).
    pub(super) held: u32,
    /// The other half of `reclaim`'s swap.
    spare: Vec<u16>,
}

impl BufPool {
    /// Maps the pool and fills the ring with every buffer (not yet published).
    pub(super) fn new(entries: u32, buf_len: usize) -> io::Result<BufPool> {
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
        let mem = Arc::new(PoolMem {
            map,
            map_len,
            leak: AtomicBool::new(false),
            returned: Mutex::new(Vec::with_capacity(entries as usize)),
        });
        let mut pool = BufPool {
            lender: mem.clone(),
            mem,
            map_len,
            ring: map.as_ptr().cast(),
            // In bounds: ring_len < map_len.
            bufs: map.as_ptr().wrapping_add(ring_len),
            entries,
            buf_len,
            tail: 0,
            held: entries,
            spare: Vec::with_capacity(entries as usize),
        };
        for bid in 0..entries {
            pool.provide(bid as u16);
        }
        Ok(pool)
    }

    /// Registers the ring with `ring` as buffer group [`BGID`] and publishes every buffer.
    pub(super) fn register(&mut self, ring: &IoUring) -> io::Result<()> {
        // SAFETY: `self.ring` points to `entries` ring entries in a page-aligned mapping that
        // lives until `self` is dropped; `UringBackend`/`probe` drop (or leak) the pool only
        // after the io_uring that uses it, and never while a request might still select from it
        // (see `PoolMem::leak`).
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
    pub(super) fn provide(&mut self, bid: u16) {
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
    pub(super) fn publish(&self) {
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
    pub(super) unsafe fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(u32::from(bid) < self.entries);
        let len = len.min(self.buf_len);
        // SAFETY: `bid < entries` (checked by the caller against the buffer count), so the range
        // is inside the mapping; the caller guarantees the kernel does not write it meanwhile.
        unsafe { std::slice::from_raw_parts(self.bufs.add(usize::from(bid) * self.buf_len), len) }
    }

    /// Provides again every buffer the batches gave back since the last call (published by
    /// the next [`BufPool::publish`]).
    pub(super) fn reclaim(&mut self) {
        // (swapped with a spare list under the lock, so `provide` runs without it)
        let mut bids = std::mem::take(&mut self.spare);
        std::mem::swap(
            &mut *self
                .mem
                .returned
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            &mut bids,
        );
        for &bid in &bids {
            if u32::from(bid) < self.entries {
                self.provide(bid);
            }
        }
        bids.clear();
        self.spare = bids;
    }

    /// Buffers out of the ring that no batch still holds (for the tests' accounting).
    #[cfg(test)]
    pub(super) fn outstanding(&mut self) -> u32 {
        self.reclaim();
        self.publish();
        self.held
    }
}
