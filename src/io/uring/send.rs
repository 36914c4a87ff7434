//! Send: batched SENDMSG from preallocated msghdr/iovec/sockaddr slots, UDP GSO grouping, the
//! GSO fallback, and reaping every completion before `send` returns.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use io_uring::opcode;
use io_uring::types::Fd;

use super::super::socket::GSO_MAX_SEGMENTS;
use super::super::sys::{
    drop_unusable_source, gso_group, link_header, split_unsendable, stage_message, WARN_INTERVAL,
};
use super::super::{recycled, SendStats, Transmit, BATCH_SIZE};
use super::{push, Token, UringBackend};

/// Send slots (msghdr + iovec + sockaddr), i.e. SENDMSG entries per submission: two receive
/// batches, so one received batch plus its fan-out copies usually go in one submission. Untuned.
pub const SEND_SLOTS: usize = 2 * BATCH_SIZE;

/// Iovecs of one chunk: one per datagram, up to [`GSO_MAX_SEGMENTS`] per message.
pub(super) const SEND_IOVS: usize = SEND_SLOTS * GSO_MAX_SEGMENTS;

/// How long `send` waits for its completions before cancelling the stragglers (a blocking socket
/// whose send buffer stays full). Each wait is a slice of [`SEND_WAIT_SLICE`].
pub(super) const SEND_DEADLINE: Duration = Duration::from_secs(2);

const SEND_WAIT_SLICE: Duration = Duration::from_millis(100);

/// Waits after cancelling, before the last resort (an unbounded wait; see `reap_sends`).
const CANCEL_WAIT_ROUNDS: usize = 20;

/// The transmits one send slot's message carries: `transmits[first..first + count]`, whose
/// iovecs start at `iov`, through socket `fd` of `listener`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SendMsg {
    first: usize,
    count: usize,
    iov: usize,
    /// Iovecs used (adjacent contents share one).
    iovs: usize,
    /// Datagrams it carries (a run counts each).
    datagrams: usize,
    /// A GSO message (UDP_SEGMENT).
    gso: bool,
    listener: usize,
    fd: RawFd,
}

/// Where one send slot stands within a `send` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// Not used in this chunk, or refused before submission (already counted failed).
    Idle,
    /// Submitted; its completion has not been seen.
    InFlight,
    /// Completed with this result (bytes sent or `-errno`).
    Done(i32),
}

impl UringBackend {
    /// Sends transmits from `transmits[from..]` with one submission of up to [`SEND_SLOTS`]
    /// messages, reaps their completions, and returns where the next chunk starts.
    ///
    /// A GSO message the kernel refuses with `EIO`/`EINVAL` turns GSO off and its datagrams are
    /// sent again, one per message, before returning. Until a listener has had one GSO message
    /// accepted, the chunk ends with its first GSO message, so such a resend keeps the order;
    /// later (a route through a device without checksum offload), the resent datagrams may
    /// follow others of the same chunk.
    pub(super) fn send_chunk(
        &mut self,
        transmits: &[Transmit<'_>],
        from: usize,
        stats: &mut SendStats,
    ) -> usize {
        debug_assert_eq!(self.send_outstanding, 0);
        let (msgs, next) = self.stage_chunk(transmits, from, stats);
        self.link_headers(msgs);
        // SAFETY: `transmits` is borrowed for this whole call and the boxes are not touched
        // before `reap_sends` returns, which it does only once every submitted entry has
        // completed (cancelling stragglers, and as a last resort waiting without a bound), so
        // the kernel never reads them after `send` returns.
        unsafe { self.submit_chunk(msgs) };
        self.reap_sends();
        self.settle_chunk(transmits, msgs, stats);
        next
    }

    /// Step 1: names, iovecs and control messages of the chunk's messages, by index, before any
    /// pointer to them is taken. Returns how many messages, and where the next chunk starts.
    /// Transmits through an unknown listener are counted failed here.
    fn stage_chunk(
        &mut self,
        transmits: &[Transmit<'_>],
        from: usize,
        stats: &mut SendStats,
    ) -> (usize, usize) {
        let (mut msgs, mut iov, mut i) = (0, 0, from);
        while i < transmits.len() && msgs < SEND_SLOTS {
            let listener = transmits[i].listener;
            let Some(sock) = self.listeners.sockets.get(listener) else {
                stats.failed += transmits[i].datagrams() as u64;
                if let Some(suppressed) = self.send_warn.allow() {
                    log::warn!(
                        "send via listener {listener}: no such listener ({} sockets); datagram \
                         dropped ({suppressed} similar suppressed)",
                        self.listeners.sockets.len()
                    );
                }
                i += 1;
                continue;
            };
            let fd = sock.as_raw_fd();
            let max_segments = self.listeners.gso[listener];
            let same = transmits[i..]
                .iter()
                .take(max_segments.clamp(1, GSO_MAX_SEGMENTS))
                .take_while(|x| x.listener == listener)
                .count();
            let (count, segment) = gso_group(&transmits[i..i + same], max_segments);
            if iov + count > SEND_IOVS {
                break; // not reached: SEND_IOVS covers SEND_SLOTS full messages
            }
            let group = &transmits[i..i + count];
            let Some((namelen, ctrl_len, iovs)) = stage_message(
                group,
                self.listeners.families[listener],
                segment,
                &mut self.send_names[msgs],
                &mut self.send_iovs[iov..iov + count],
                &mut self.send_ctrl[msgs],
            ) else {
                stats.failed += drop_unusable_source(&mut self.send_warn, listener, group);
                i += count;
                continue;
            };
            let h = &mut self.send_hdrs[msgs];
            h.msg_namelen = namelen;
            h.msg_controllen = ctrl_len as _;
            self.send_msgs[msgs] = SendMsg {
                first: i,
                count,
                iov,
                iovs,
                datagrams: transmits[i..i + count]
                    .iter()
                    .map(Transmit::datagrams)
                    .sum(),
                gso: segment.is_some(),
                listener,
                fd,
            };
            self.send_state[msgs] = SlotState::Idle;
            msgs += 1;
            iov += iovs;
            i += count;
            if segment.is_some() && !self.gso_confirmed[listener] {
                break;
            }
        }
        (msgs, i)
    }

    /// Step 2: the headers of messages `0..msgs`, pointing into the boxes through one base
    /// pointer each.
    fn link_headers(&mut self, msgs: usize) {
        let names = self.send_names.as_mut_ptr();
        let iovs = self.send_iovs.as_mut_ptr();
        let ctrl = self.send_ctrl.as_mut_ptr();
        for j in 0..msgs {
            let m = self.send_msgs[j];
            link_header(
                &mut self.send_hdrs[j],
                names.wrapping_add(j),
                iovs.wrapping_add(m.iov),
                m.iovs,
                ctrl.wrapping_add(j),
            );
        }
    }

    /// Step 3: one SENDMSG per staged and linked message `0..msgs`.
    ///
    /// # Safety
    /// The entries point at the send boxes and, through the iovecs, at the contents of the
    /// transmits `stage_chunk` staged. The caller must not touch the boxes, and must keep those
    /// transmits borrowed, until `reap_sends` has returned.
    unsafe fn submit_chunk(&mut self, msgs: usize) {
        let hdrs = self.send_hdrs.as_mut_ptr();
        for j in 0..msgs {
            let m = self.send_msgs[j];
            #[cfg(test)]
            if m.gso {
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
            // staged transmits, which this function's caller keeps borrowed until `reap_sends`
            // has returned (the `# Safety` contract above).
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
    }

    /// Step 4: the results of messages `0..msgs`, into `stats`. Refused GSO messages are
    /// collected and sent again once GSO is off.
    fn settle_chunk(&mut self, transmits: &[Transmit<'_>], msgs: usize, stats: &mut SendStats) {
        let mut resend: Vec<(usize, usize)> = Vec::new();
        for j in 0..msgs {
            let m = self.send_msgs[j];
            let count = m.datagrams as u64;
            match mem::replace(&mut self.send_state[j], SlotState::Idle) {
                SlotState::Done(res) if res >= 0 => {
                    stats.sent += count;
                    if m.gso {
                        self.gso_confirmed[m.listener] = true;
                    }
                }
                SlotState::Done(res) if m.gso && matches!(-res, libc::EIO | libc::EINVAL) => {
                    self.listeners
                        .disable_gso(m.listener, &io::Error::from_raw_os_error(-res));
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
                            m.datagrams
                        );
                    }
                }
                // Not reached: reap_sends waits for every submitted entry.
                SlotState::InFlight | SlotState::Idle => stats.failed += count,
            }
        }
        // GSO is off now, so these go one datagram per message (runs split) and are not
        // refused again.
        for (first, count) in resend {
            let group = &transmits[first..first + count];
            let mut split = recycled(mem::take(&mut self.split));
            let group = if split_unsendable(group, &self.listeners.gso, &mut split) {
                &split[..]
            } else {
                group
            };
            let mut k = 0;
            while k < group.len() {
                k = self.send_chunk(group, k, stats);
            }
            self.split = recycled(split);
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
                        self.cancel(Token::Send(j));
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testkit::{self, payloads};

    #[test]
    fn more_than_send_slots_in_one_call() {
        require_uring!();
        testkit::send_recv::<UringBackend>(
            "127.0.0.1:0",
            "127.0.0.1:0",
            &payloads(3 * SEND_SLOTS + 5),
        );
    }
}
