//! Receive: multishot recvmsg per listener into the buffer ring, completions harvested into
//! the caller's batch (each buffer lent to it, GRO runs kept whole), re-arming, and quiescing
//! on drop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use io_uring::cqueue;
use io_uring::opcode;
use io_uring::types::{Fd, RecvMsgOut};

use super::super::sys::{
    sockaddr_to_std, warn_truncated_run, warn_unusable_source, zeroed, RecvControl, RecvRun,
};
use super::super::RecvBatch;
use super::bufpool::{BGID, NAME_LEN};
use super::{cancel_entry, push, Cqe, Token, UringBackend};

/// Kernel waits per `recv` call at most (a wake-up by a completion that carries no datagram,
/// e.g. `-ENOBUFS`, re-arms and waits again for the rest of the timeout).
const MAX_WAIT_ROUNDS: usize = 8;

impl UringBackend {
    /// Queues a multishot recvmsg for listener `idx` (submitted by the next enter).
    pub(super) fn arm(&mut self, idx: usize) {
        let entry = opcode::RecvMsgMulti::new(
            Fd(self.listeners.sockets[idx].as_raw_fd()),
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
    pub(super) fn rearm(&mut self) {
        for idx in 0..self.listeners.sockets.len() {
            if !self.armed[idx] && !self.dead[idx] && !self.stopping {
                self.rearms += 1;
                self.arm(idx);
            }
        }
        self.arm_waker();
    }

    /// Delivers backlog completions into `batch` until it is full, lending it their buffers.
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
        while !batch.is_full() && empty < n {
            let Some(cqe) = self.backlog[idx].pop_front() else {
                empty += 1;
                idx = (idx + 1) % n;
                continue;
            };
            empty = 0;
            if let Err(e) = self.deliver(cqe, batch) {
                result = Err(e);
                break;
            }
            idx = (idx + 1) % n;
        }
        self.pool.publish();
        result
    }

    /// Handles one receive completion: its message (a datagram, or a coalesced run) goes into
    /// `batch` on the buffer the kernel filled, lent until the batch is cleared; an error ends
    /// (or kills) the listener's multishot.
    fn deliver(&mut self, cqe: Cqe, batch: &mut RecvBatch) -> io::Result<()> {
        let Some(Token::Recv(idx)) = Token::decode(cqe.user_data) else {
            return Ok(());
        };
        if idx >= self.listeners.sockets.len() {
            return Ok(());
        }
        if !cqueue::more(cqe.flags) {
            self.armed[idx] = false;
        }
        let bid = cqueue::buffer_select(cqe.flags).filter(|&b| u32::from(b) < self.pool.entries);
        if let Some(bid) = bid {
            self.pool.held += 1;
            if cqe.result < 0 {
                self.pool.provide(bid);
            }
        }
        if cqe.result < 0 {
            return self.recv_failed(idx, -cqe.result);
        }
        let Some(bid) = bid else {
            if let Some(suppressed) = self.recv_warn.allow() {
                log::warn!(
                    "listener {idx}: receive completion without a buffer ({suppressed} similar \
                     suppressed)"
                );
            }
            return Ok(());
        };
        if !self.lend_buffer(idx, bid, cqe, batch) {
            self.pool.provide(bid);
        }
        Ok(())
    }

    /// The multishot recvmsg of listener `idx` failed with `errno` (and has ended, or ends the
    /// listener for good when the socket itself is unusable).
    fn recv_failed(&mut self, idx: usize, errno: i32) -> io::Result<()> {
        match errno {
            libc::ENOBUFS => {
                self.enobufs += 1;
                Ok(())
            }
            libc::ECANCELED | libc::EINTR | libc::EAGAIN => Ok(()),
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
                        "recvmsg on listener {idx} failed: {} ({suppressed} similar suppressed)",
                        io::Error::from_raw_os_error(errno)
                    );
                }
                Ok(())
            }
        }
    }

    /// Lends buffer `bid`, which completion `cqe` of listener `idx` filled, to `batch` as one
    /// message. False when it was not lent (malformed, or from an unusable source) and can go
    /// back to the ring.
    fn lend_buffer(&mut self, idx: usize, bid: u16, cqe: Cqe, batch: &mut RecvBatch) -> bool {
        // SAFETY: the completion handed buffer `bid` (checked < entries by the caller) to us;
        // it goes back to the ring only after this function (if not lent) or once the batch
        // gave it back (if lent), so the kernel does not write it while `buf` lives.
        let buf = unsafe { self.pool.buffer(bid, cqe.result as usize) };
        let Ok(out) = RecvMsgOut::parse(buf, &self.recv_hdr) else {
            if let Some(suppressed) = self.recv_warn.allow() {
                log::warn!(
                    "listener {idx}: malformed recvmsg completion ({} bytes) dropped \
                     ({suppressed} similar suppressed)",
                    cqe.result
                );
            }
            return false;
        };
        let control = RecvControl::parse(out.control_data());
        if let Some(d) = control.rxq_ovfl {
            self.listeners.drops[idx] = d;
        }
        let Some(addr) = source_address(out.name_data()) else {
            warn_unusable_source(&mut self.recv_warn, idx);
            return false;
        };
        let payload = out.payload_data();
        let len = payload.len();
        let stride = if self.listeners.gro[idx] {
            control.stride(len)
        } else {
            len.max(1)
        };
        let run = RecvRun {
            addr,
            local: control.local_for(&addr),
            len,
            stride,
            truncated: out.is_payload_truncated(),
        };
        // (a zero-length payload still has an address inside the buffer)
        let bytes = NonNull::from(payload).cast::<u8>();
        // SAFETY: `payload` is `run.len` bytes inside buffer `bid` of the pool's mapping, which
        // `self.pool.lender` keeps alive; the buffer is out of the ring (a completion named it)
        // and is provided again only after the batch gives `bid` back (`BufPool::reclaim`).
        unsafe { batch.push_lent(&self.pool.lender, bid, bytes, run, idx) };
        if run.is_coalesced() {
            self.note_run(idx, run.truncated);
        }
        true
    }

    /// A coalesced run arrived on listener `idx` (for the tests' counter, and a warning when
    /// the buffer cut it short).
    fn note_run(&mut self, idx: usize, truncated: bool) {
        #[cfg(test)]
        {
            self.gro_runs += 1;
        }
        if truncated {
            warn_truncated_run(&mut self.recv_warn, idx);
        }
    }

    /// The body of `recv`: harvest, then wait in rounds until something arrives, the waker
    /// fires or the timeout passes.
    pub(super) fn recv_rounds(
        &mut self,
        batch: &mut RecvBatch,
        start: Instant,
        timeout: Duration,
    ) -> io::Result<usize> {
        self.harvest(batch)?;
        for _ in 0..MAX_WAIT_ROUNDS {
            if batch.is_full() {
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
    pub(super) fn quiesce(&mut self) -> bool {
        self.forget_backlog();
        for idx in 0..self.listeners.sockets.len() {
            if self.armed[idx] {
                // SAFETY: a cancel request carries no pointers.
                let _ = unsafe { push(&mut self.ring, &cancel_entry(Token::Recv(idx))) };
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
            self.forget_backlog();
        }
        !self.armed.iter().any(|&a| a)
    }

    /// Drops every undelivered receive completion (when quiescing, their buffers are not
    /// needed any more), noting the multishots that they say have ended.
    fn forget_backlog(&mut self) {
        let pending: Vec<Cqe> = self.backlog.iter_mut().flat_map(|q| q.drain(..)).collect();
        for c in pending {
            if let Some(Token::Recv(idx)) = Token::decode(c.user_data) {
                if idx < self.armed.len() && !cqueue::more(c.flags) {
                    self.armed[idx] = false;
                }
            }
        }
    }
}

/// The source address in a multishot recvmsg buffer's name part (`name`: the bytes the
/// kernel wrote, at most a `sockaddr_storage`); `None` for anything but IPv4/IPv6.
fn source_address(name: &[u8]) -> Option<SocketAddr> {
    let mut ss: libc::sockaddr_storage = zeroed();
    let name_len = name.len().min(NAME_LEN);
    // SAFETY: `name_len` bytes fit both in `name` and in the exclusively borrowed `ss` (NAME_LEN
    // is its size); the two do not overlap.
    unsafe {
        ptr::copy_nonoverlapping(
            name.as_ptr(),
            (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
            name_len,
        );
    }
    sockaddr_to_std(&ss, name_len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::super::bufpool::{GRO_RECV_BUFS_PER_SOCKET, GRO_RECV_BUF_LEN};
    use super::super::tests::backend;
    use super::*;
    use crate::io::testkit::{local, payloads, recv_n, run_payloads, sockets, transmits};
    use crate::io::{Backend, MmsgBackend, Offload, Transmit};

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
            segment_size: None,
            source: None,
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
        assert_eq!(
            rx.pool.outstanding(),
            0,
            "every buffer went back to the ring"
        );

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
        assert_eq!(
            u.pool.outstanding(),
            0,
            "every buffer went back to the ring"
        );
    }
}
