//! The per-thread datapath loop: receive a batch → route each packet → send the batch.
//!
//! Each shard owns its sockets (one per listener, all bound with SO_REUSEPORT), its backend,
//! and the paired sessions whose receiver index it owns ([`owner_shard`], the same function
//! the kernel steering program computes). Transport packets, nearly all of the traffic, are
//! routed from that [`SessionTable`] without a lock. Handshake messages and the few transport
//! packets that change shared state (a confirmation, a roam) go through the shared routing
//! [`State`], locked at most once per batch and only by batches that need it.
//!
//! Shards talk over lock-free channels ([`Mesh`]): the State's changes to another shard's
//! sessions, and transport packets that arrived at a shard other than their owner (when the
//! kernel could not steer them). A shard that sends either writes the owner's eventfd, which
//! its backend waits on next to its sockets: no spinning, one wake-up per batch.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::admit::JunkMemory;
use crate::admit::KeyId;
use crate::constants::{EXPIRE_INTERVAL, JUNK_SOURCES, SWEEP_STEP_INTERVAL};
use crate::io::steer::{owner_shard, Owners};
use crate::io::{recycled, Backend, Drops, RecvBatch, Transmit};
use crate::route::{
    Actions, Change, Counters, Datagram, Decision, DropReason, Fast, Found, KeyTraffic, Session,
    SessionTable, State,
};
use crate::table::{Endpoint, ListenerId, Tick};
use crate::wire::awg::{Classified, Framing};
use crate::wire::{self, Index, MessageType};

/// How long a shard waits for packets before checking for shutdown and expiry.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long a stopping shard goes on routing what its backend had already taken.
const STOP_DRAIN_LIMIT: Duration = Duration::from_millis(200);

/// Transport packets one shard may have waiting for it from the others. A full queue drops
/// (counted): the kernel steers nearly every packet to its owner, so only a burst of
/// unsteerable traffic can fill it, and dropping beats blocking the sender's datapath.
pub const HANDOFF_QUEUE: usize = 4096;

/// Counters of the I/O layer, shared by all shards.
#[derive(Debug, Default)]
pub struct IoCounters {
    pub send_failed: AtomicU64,
    pub recv_errors: AtomicU64,
    /// Datagrams the kernel dropped for a full receive queue, all shards.
    pub kernel_drops: AtomicU64,
    /// io_uring buffer-ring exhaustions, all shards.
    pub enobufs: AtomicU64,
    /// Packets with a receiver index that arrived at a shard other than its owner
    /// (`io::steer::owner_shard`): what kernel steering did not place, all shards.
    pub off_owner: AtomicU64,
    /// Transport packets handed to their owner shard over its channel.
    pub handoffs: AtomicU64,
    /// Hand-offs dropped because the owner's queue was full.
    pub handoff_drops: AtomicU64,
}

/// Routing counters of one shard's fast path, published once per batch. The shared State
/// counts what it routes itself; the relay's totals are the sum.
#[derive(Debug, Default)]
pub struct FastCounters {
    received: AtomicU64,
    forwarded: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl FastCounters {
    /// Adds `c` and zeroes it.
    fn publish(&self, c: &mut Counters) {
        if c.received == 0 {
            return;
        }
        self.received.fetch_add(c.received, Ordering::Relaxed);
        self.forwarded.fetch_add(c.forwarded, Ordering::Relaxed);
        for (a, n) in self.drops.iter().zip(c.drops.iter()) {
            if *n > 0 {
                a.fetch_add(*n, Ordering::Relaxed);
            }
        }
        *c = Counters::default();
    }

    /// What was published so far.
    pub fn snapshot(&self) -> Counters {
        let mut c = Counters {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            ..Counters::default()
        };
        for (n, a) in c.drops.iter_mut().zip(self.drops.iter()) {
            *n = a.load(Ordering::Relaxed);
        }
        c
    }
}

/// Sessions one shard lists in a [`ShardReport`] at most (it still counts them all): a
/// snapshot of a million sessions would be a hundred megabytes nobody reads.
pub const MAX_REPORTED_SESSIONS: usize = 10_000;

/// Inspection requests one shard may have waiting (each a `show` on the control socket).
const INSPECT_QUEUE: usize = 8;

/// What a shard says about itself when asked ([`Mesh::inspect`]): its sessions and their
/// counters, its keys' traffic, and how busy it is.
#[derive(Debug, Clone)]
pub struct ShardReport {
    pub id: usize,
    /// Up to [`MAX_REPORTED_SESSIONS`] sessions, with their receiver index.
    pub sessions: Vec<(Index, Session)>,
    /// How many sessions the shard owns.
    pub session_count: usize,
    /// Per key, the traffic of its sessions owned here (live and ended).
    pub keys: HashMap<KeyId, KeyTraffic>,
    /// The shard thread's CPU time (user and system: the kernel's share of receiving and
    /// sending counts), and time since the shard started.
    pub busy: Duration,
    pub uptime: Duration,
}

/// An inspection request: where to send the report.
type Inspect = Sender<ShardReport>;

/// A transport packet that arrived at the wrong shard, on its way to the owner.
#[derive(Debug)]
pub struct Handoff {
    from: Endpoint,
    packet: Box<[u8]>,
}

/// A shard's wake-up: an eventfd its backend waits on (`Backend::set_waker`).
#[derive(Debug)]
pub struct Waker(OwnedFd);

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Waker(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd. A full counter (EAGAIN) is
        // already a pending wake-up, so the result does not matter.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Resets the counter, so the backend waits again.
    fn drain(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; EAGAIN (nothing pending) is fine.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut n as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// The sending ends of every shard's channels, shared by all shards.
#[derive(Debug)]
pub struct Mesh {
    changes: Vec<Sender<Change>>,
    handoffs: Vec<Sender<Handoff>>,
    inspect: Vec<Sender<Inspect>>,
    /// Set after a request is queued: the shard's loop reads a flag, not a channel, per pass.
    asked: Vec<Arc<AtomicBool>>,
    wakers: Vec<Arc<Waker>>,
}

/// The receiving ends of one shard's channels.
#[derive(Debug)]
pub struct Mailbox {
    changes: Receiver<Change>,
    handoffs: Receiver<Handoff>,
    inspect: Receiver<Inspect>,
    asked: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Mesh {
    /// Channels for `shards` shards: the shared mesh and one mailbox per shard.
    pub fn new(shards: usize) -> std::io::Result<(Arc<Mesh>, Vec<Mailbox>)> {
        let mut mesh = Mesh {
            changes: Vec::new(),
            handoffs: Vec::new(),
            inspect: Vec::new(),
            asked: Vec::new(),
            wakers: Vec::new(),
        };
        let mut mailboxes = Vec::new();
        for _ in 0..shards {
            // Changes are never dropped (a lost install would lose a session), and there is
            // at most one per handshake message, so this channel is unbounded.
            let (ctx, crx) = crossbeam_channel::unbounded();
            let (htx, hrx) = crossbeam_channel::bounded(HANDOFF_QUEUE);
            let (itx, irx) = crossbeam_channel::bounded(INSPECT_QUEUE);
            let waker = Arc::new(Waker::new()?);
            mesh.changes.push(ctx);
            mesh.handoffs.push(htx);
            mesh.inspect.push(itx);
            let asked = Arc::new(AtomicBool::new(false));
            mesh.asked.push(asked.clone());
            mesh.wakers.push(waker.clone());
            mailboxes.push(Mailbox {
                changes: crx,
                handoffs: hrx,
                inspect: irx,
                asked,
                waker,
            });
        }
        Ok((Arc::new(mesh), mailboxes))
    }

    /// Hands each change to the shard that owns its index and wakes the shards that got one
    /// (a reload's ended sessions; shards send their own changes themselves).
    pub fn deliver(&self, changes: Vec<Change>, shards: usize) {
        let mut woken = vec![false; self.wakers.len()];
        for change in changes {
            let owner = owner_shard(change.0, shards);
            if let Some(tx) = self.changes.get(owner) {
                // Only fails when the owner has exited (shutdown).
                let _ = tx.send(change);
                woken[owner] = true;
            }
        }
        for (owner, wake) in woken.into_iter().enumerate() {
            if let (true, Some(w)) = (wake, self.wakers.get(owner)) {
                w.wake();
            }
        }
    }

    /// Wakes every shard (a stop: each sees it before its next wait).
    pub fn wake_all(&self) {
        for w in &self.wakers {
            w.wake();
        }
    }

    /// Asks every shard for its report and waits at most `timeout` for the answers. The
    /// datapath never stops for it: each shard answers between two batches (at the latest
    /// after [`POLL_INTERVAL`]). A shard that does not answer in time (or whose queue of
    /// requests is full) is missing from the result.
    pub fn inspect(&self, timeout: Duration) -> Vec<ShardReport> {
        let deadline = Instant::now() + timeout;
        let (tx, rx) = crossbeam_channel::bounded(self.inspect.len());
        let mut asked = 0;
        for ((queue, flag), waker) in self.inspect.iter().zip(&self.asked).zip(&self.wakers) {
            if queue.try_send(tx.clone()).is_ok() {
                asked += 1;
                flag.store(true, Ordering::Release);
                waker.wake();
            }
        }
        drop(tx);
        let mut reports = Vec::with_capacity(asked);
        while reports.len() < asked {
            match rx.recv_deadline(deadline) {
                Ok(r) => reports.push(r),
                Err(_) => break,
            }
        }
        reports.sort_by_key(|r| r.id);
        reports
    }
}

/// Where a routed packet's copies go, recorded per batch.
#[derive(Debug, Clone, Copy)]
enum Out {
    /// Copy of received datagrams `first..=last`, adjacent datagrams of one message (a GRO run
    /// whose datagrams all went to one destination): sent on as one run.
    Packet(usize, usize, Endpoint),
    /// Copy of handed-over datagram `i`.
    Handed(usize, Endpoint),
    /// Extra datagram `i` in the batch's extras.
    Extra(usize),
    /// Framed datagram `i` (an extra framed for an AmneziaWG listener).
    Framed(usize),
}

/// Which datagram is being routed.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// Received datagram `i`; `true` when it follows datagram `i - 1` in the same message.
    Batch(usize, bool),
    Handed(usize),
}

/// What a stopped shard hands back: what it owned and a successor needs.
#[derive(Debug)]
pub struct Stopped {
    pub sessions: SessionTable,
    pub mailbox: Mailbox,
}

pub struct Shard<B: Backend> {
    /// This shard's number, and how many there are (for ownership by receiver index).
    pub id: usize,
    pub shards: usize,
    pub backend: B,
    pub state: Arc<Mutex<State>>,
    pub io: Arc<IoCounters>,
    pub fast: Arc<FastCounters>,
    pub shutdown: Arc<AtomicBool>,
    pub mesh: Arc<Mesh>,
    pub mailbox: Mailbox,
    /// The sessions this shard owns (restored ones already installed).
    pub sessions: SessionTable,
    /// Each listener's framing (plain WireGuard, or AmneziaWG parameters).
    pub framings: Arc<[Framing]>,
    /// The listener of each backend socket. A listener's first socket is the one sends go
    /// through; shard 0's later ones are listeners' handshake queues. Listener ids are stable
    /// across reloads, so a closed listener leaves a gap.
    pub listener_of: Vec<u16>,
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`); zero if the clock fails.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec into a live local.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// A seed for a shard's junk memory, unpredictable to peers when the OS can say.
fn junk_seed() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

/// Locks the shared routing state. A panic while holding the lock would be a bug in the
/// routing core; keep relaying with the state as it is rather than taking every shard (and
/// the control plane, and the final stats) down with it.
pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shared State, locked on first use and held until the batch is routed.
struct Control<'a> {
    state: &'a Mutex<State>,
    guard: Option<MutexGuard<'a, State>>,
}

impl<'a> Control<'a> {
    fn get(&mut self) -> &mut State {
        self.guard.get_or_insert_with(|| lock(self.state))
    }
}

/// A shard's routing work for one batch, apart from the backend and the received bytes.
struct Router {
    id: usize,
    owners: Owners,
    sessions: SessionTable,
    /// Fast-path counters not yet published.
    local: Counters,
    actions: Actions,
    outs: Vec<Out>,
    extras: Vec<Datagram>,
    /// The State's changes, per owner shard, not yet sent.
    remote: Vec<Vec<Change>>,
    changes: Vec<Change>,
    scratch: Vec<Index>,
    framings: Arc<[Framing]>,
    /// Extras framed for AmneziaWG listeners, this batch.
    framed: Vec<(Endpoint, Vec<u8>)>,
    /// AmneziaWG junk just received, per source: credited to the initiation that follows.
    junk: JunkMemory,
}

/// Where the message sits in a datagram, and what it is, per the listener's framing.
enum Parsed {
    Message(MessageType, usize),
    Drop(DropReason),
}

/// The receiver index of a transport message whose type is already known (the type field may
/// hold an AmneziaWG H4 value, so this reads the view, not the type).
fn transport_receiver(packet: &[u8]) -> Option<Index> {
    wire::TransportPacket::new_checked(packet)
        .ok()
        .map(|p| p.receiver())
}

fn parse(framing: &Framing, datagram: &[u8]) -> Parsed {
    if framing.is_plain() {
        return match wire::message_type(datagram) {
            Err(_) => Parsed::Drop(DropReason::TooShort),
            Ok(MessageType::Unknown(_)) => Parsed::Drop(DropReason::UnknownType),
            Ok(kind) => Parsed::Message(kind, 0),
        };
    }
    match framing.classify(datagram) {
        Classified::Message { kind, offset } => Parsed::Message(kind, offset),
        Classified::Junk => Parsed::Drop(DropReason::Junk),
        Classified::Unknown => Parsed::Drop(DropReason::UnknownType),
    }
}

impl Router {
    fn framing(&self, listener: ListenerId) -> Framing {
        self.framings
            .get(usize::from(listener.0))
            .copied()
            .unwrap_or_default()
    }

    /// Records a copy of the datagram being routed for `to`, unless `to`'s listener frames
    /// packets differently from the one it came in on.
    /// False when it was dropped instead.
    fn push_out(&mut self, src: Src, from: Endpoint, to: Endpoint) -> bool {
        if from.listener != to.listener && self.framing(from.listener) != self.framing(to.listener)
        {
            self.local.drops[DropReason::FramingMismatch as usize] += 1;
            return false;
        }
        let out = match src {
            Src::Batch(i, continues) => {
                // the next datagram of a run, to where the one before went: the run grows
                if let (true, Some(Out::Packet(_, last, dest))) = (continues, self.outs.last_mut())
                {
                    if *last + 1 == i && *dest == to {
                        *last = i;
                        return true;
                    }
                }
                Out::Packet(i, i, to)
            }
            Src::Handed(j) => Out::Handed(j, to),
        };
        self.outs.push(out);
        true
    }

    /// Datagram `i` of the batch goes where datagram `i - 1` went, and that was the last out
    /// recorded (what [`Router::transport`] returning a [`Found`] promises): the run grows.
    #[inline]
    fn grow_run(&mut self, i: usize, to: Endpoint) {
        self.local.received += 1;
        self.local.forwarded += 1;
        match self.outs.last_mut() {
            Some(Out::Packet(_, last, _)) if *last + 1 == i => *last = i,
            _ => self.outs.push(Out::Packet(i, i, to)),
        }
    }

    /// Records one of the relay's own datagrams, framed for its listener.
    fn push_extra(&mut self, x: Datagram) {
        let framing = self.framing(x.to.listener);
        if framing.is_plain() {
            self.outs.push(Out::Extra(self.extras.len()));
            self.extras.push(x);
            return;
        }
        let contents = x.contents();
        let prefix = framing
            .prefix_len(MessageType::Initiation)
            .max(framing.prefix_len(MessageType::CookieReply));
        let mut buf = vec![0u8; contents.len() + prefix];
        let fill = |b: &mut [u8]| {
            // The prefix is meant to look random; if the OS cannot say, zeros still frame.
            let _ = getrandom::getrandom(b);
        };
        let framed = match <&[u8; wire::cookie_reply::LEN]>::try_from(contents) {
            // The relay's own cookie reply: plain type 3, framed with S3 and an H3 value.
            Ok(reply) => framing.frame_cookie_reply(reply, &mut buf, fill),
            // A parked initiation from this framing: its type field already holds an H1 value
            // (mac1 covers it); only the prefix is new.
            Err(_) => {
                let at = framing.prefix_len(MessageType::Initiation);
                fill(&mut buf[..at]);
                buf[at..at + contents.len()].copy_from_slice(contents);
                Ok(at + contents.len())
            }
        };
        match framed {
            Ok(n) => {
                buf.truncate(n);
                self.outs.push(Out::Framed(self.framed.len()));
                self.framed.push((x.to, buf));
            }
            Err(_) => self.local.drops[DropReason::FramingMismatch as usize] += 1,
        }
    }

    fn count(&mut self, reason: DropReason) {
        self.local.received += 1;
        self.local.drops[reason as usize] += 1;
    }

    /// Routes a transport packet this shard owns: fast path, or the State when it must.
    /// `Some` when the fast path forwarded it as the batch's last out, so that the next
    /// datagram of its run may take [`SessionTable::route_next`].
    fn transport(
        &mut self,
        ctl: &mut Control<'_>,
        now: Instant,
        t: Tick,
        from: Endpoint,
        src: Src,
        packet: &mut [u8],
    ) -> Option<Found> {
        match self.sessions.route_found(t, from, packet) {
            (Fast::Forward(to), found) => {
                self.local.received += 1;
                self.local.forwarded += 1;
                if self.push_out(src, from, to) {
                    return found;
                }
            }
            (Fast::Drop(reason), _) => self.count(reason),
            (Fast::Control, _) => {
                let receiver = transport_receiver(packet);
                if let Some(receiver) = receiver {
                    if let Some(c) = self.sessions.get(receiver).and_then(|s| s.max_counter) {
                        ctl.get().note_counter(receiver, c, t);
                    }
                }
                let decision =
                    self.control(ctl, now, t, from, src, MessageType::Transport, 0, packet);
                // the session's own traffic, though the shared state forwarded this one
                if let (Decision::Forward, Some(receiver)) = (decision, receiver) {
                    self.sessions.count(receiver, packet.len());
                }
            }
        }
        None
    }

    /// Routes through the shared State, and takes its changes: this shard's own are applied
    /// at once (the next packet of the batch may need them), the others' queued. `junk`: the
    /// junk bytes `from` sent just before (`State::route_as`).
    #[allow(clippy::too_many_arguments)]
    fn control(
        &mut self,
        ctl: &mut Control<'_>,
        now: Instant,
        t: Tick,
        from: Endpoint,
        src: Src,
        kind: MessageType,
        junk: usize,
        packet: &mut [u8],
    ) -> Decision {
        let state = ctl.get();
        let decision = state.route_as(now, from, Ok(kind), packet, junk, &mut self.actions);
        state.take_changes(t, &mut self.scratch, &mut self.changes);
        if decision == Decision::Forward {
            for i in 0..self.actions.targets.len() {
                let to = self.actions.targets[i];
                self.push_out(src, from, to);
            }
        }
        // (taken out and put back, so its capacity is reused and `push_extra` may borrow self)
        let mut extra = std::mem::take(&mut self.actions.extra);
        for x in extra.drain(..) {
            self.push_extra(x);
        }
        self.actions.extra = extra;
        for change in self.changes.drain(..) {
            let owner = self.owners.of(change.0);
            if owner == self.id {
                self.sessions.apply(change);
            } else if let Some(q) = self.remote.get_mut(owner) {
                q.push(change);
            }
        }
        decision
    }

    fn report(&self, started: Instant, cpu_at_start: Duration) -> ShardReport {
        ShardReport {
            id: self.id,
            sessions: self.sessions.iter().take(MAX_REPORTED_SESSIONS).collect(),
            session_count: self.sessions.len(),
            keys: self.sessions.key_traffic(),
            busy: thread_cpu_time().saturating_sub(cpu_at_start),
            uptime: started.elapsed(),
        }
    }
}

impl<B: Backend> Shard<B> {
    /// Runs until `shutdown` is set. Returns the shard's sessions (their highest counters go
    /// back into the State before it is saved) and its mailbox, so that a successor on other
    /// sockets (a reload that changed the listeners) carries on with both.
    pub fn run(mut self) -> Stopped {
        let clock = lock(&self.state).clock();
        if self.shards > 1 {
            if let Err(e) = self.backend.set_waker(self.mailbox.waker.0.as_raw_fd()) {
                log::warn!(
                    "shard {}: {} backend cannot wait on a waker ({e}); hand-offs wait for \
                     the next packet or {POLL_INTERVAL:?}",
                    self.id,
                    self.backend.name()
                );
            }
        }
        let mut batch = RecvBatch::new();
        let mut router = Router {
            id: self.id,
            owners: Owners::new(self.shards),
            sessions: std::mem::take(&mut self.sessions),
            local: Counters::default(),
            actions: Actions::new(),
            outs: Vec::with_capacity(batch.capacity() * 2),
            extras: Vec::new(),
            remote: vec![Vec::new(); self.shards],
            changes: Vec::new(),
            scratch: Vec::new(),
            framings: self.framings.clone(),
            framed: Vec::new(),
            junk: JunkMemory::new(
                if self.framings.iter().any(|f| f.expects_junk()) {
                    JUNK_SOURCES
                } else {
                    0
                },
                junk_seed(),
            ),
        };
        // listener id -> the backend socket its sends go through
        let mut socket_of: Vec<Option<usize>> = Vec::new();
        for (i, &l) in self.listener_of.iter().enumerate() {
            let l = usize::from(l);
            if socket_of.len() <= l {
                socket_of.resize(l + 1, None);
            }
            socket_of[l].get_or_insert(i);
        }
        let mut handed: Vec<Handoff> = Vec::new();
        // the send list's storage, kept from batch to batch (empty between them)
        let mut spare: Vec<Transmit<'static>> = Vec::with_capacity(batch.capacity() * 2);
        let mut wake = vec![false; self.shards];
        let mut drops = Drops::default();
        let mut next_expire = Instant::now() + EXPIRE_INTERVAL;
        // proven sweeps going on in the State (learned whenever a batch locks it): step them
        let mut sweeping = false;
        let mut next_step = Instant::now();
        let mut swept: Vec<Datagram> = Vec::new();
        let started = Instant::now();
        // CPU time read when asked, not a clock read per pass
        let cpu_at_start = thread_cpu_time();
        // since when the shard stops: it routes what its backend took before it stopped
        // taking datagrams off the sockets (a successor may be reading them already)
        let mut stopping: Option<Instant> = None;
        loop {
            if stopping.is_none() && self.shutdown.load(Ordering::Relaxed) {
                self.backend.stop_receiving();
                stopping = Some(Instant::now());
            }
            if let Some(since) = stopping {
                if !self.backend.receiving() || since.elapsed() >= STOP_DRAIN_LIMIT {
                    break;
                }
            }
            let wait = if stopping.is_some() {
                STOP_DRAIN_LIMIT / 10
            } else if sweeping {
                SWEEP_STEP_INTERVAL.min(POLL_INTERVAL)
            } else {
                POLL_INTERVAL
            };
            let n = match self.backend.recv(&mut batch, wait) {
                Ok(n) => n,
                Err(e) => {
                    self.io.recv_errors.fetch_add(1, Ordering::Relaxed);
                    log::error!("receive failed: {e}");
                    std::thread::sleep(POLL_INTERVAL);
                    continue;
                }
            };
            self.publish_drops(&mut drops);
            // mail: changes first, then hand-offs, then changes again, so every change sent
            // before a hand-off is installed before that hand-off is routed
            handed.clear();
            if self.shards > 1 {
                self.mailbox.waker.drain();
                self.mailbox
                    .changes
                    .try_iter()
                    .for_each(|c| router.sessions.apply(c));
                handed.extend(self.mailbox.handoffs.try_iter().take(HANDOFF_QUEUE));
                self.mailbox
                    .changes
                    .try_iter()
                    .for_each(|c| router.sessions.apply(c));
            }
            // a `show` on the control socket: answered between batches, never blocking
            if self.mailbox.asked.load(Ordering::Relaxed)
                && self.mailbox.asked.swap(false, Ordering::Acquire)
            {
                while let Ok(reply) = self.mailbox.inspect.try_recv() {
                    let _ = reply.try_send(router.report(started, cpu_at_start));
                }
            }
            let step_due = sweeping && Instant::now() >= next_step;
            if n == 0 && handed.is_empty() && !step_due && Instant::now() < next_expire {
                continue;
            }
            router.outs.clear();
            router.extras.clear();
            router.framed.clear();
            let now = Instant::now();
            let t = clock.tick(now);
            let mut ctl = Control {
                state: &self.state,
                guard: None,
            };
            if now >= next_expire {
                router.sessions.expire(t);
                ctl.get().expire_if_due(now);
                next_expire = now + EXPIRE_INTERVAL;
            }
            let mut off_owner = 0u64;
            // by message (a datagram, or a GRO run of one flow): what the source and the
            // listener decide is decided once per message; each datagram's header still
            // decides its own route
            for m in 0..batch.messages() {
                let (socket, addr, datagrams) = batch.message(m);
                let Some(&listener) = self.listener_of.get(socket) else {
                    continue;
                };
                let from = Endpoint::new(ListenerId(listener), addr);
                let framing = router.framing(from.listener);
                let plain = framing.is_plain();
                let start = datagrams.start;
                // the session the run's previous datagram was forwarded on, if it was
                let mut run: Option<Found> = None;
                for i in datagrams {
                    let src = Src::Batch(i, i > start);
                    if let Some(found) = run.take() {
                        // not looked up again; this datagram's header still decides
                        if !batch.truncated(i) {
                            let datagram = batch.datagram(i);
                            if datagram.get(..4) == Some(&[4, 0, 0, 0]) {
                                if let Some(to) = router.sessions.route_next(found, t, datagram) {
                                    router.grow_run(i, to);
                                    run = Some(found);
                                    continue;
                                }
                            }
                        }
                    }
                    if batch.truncated(i) {
                        router.count(DropReason::Truncated);
                        continue;
                    }
                    let datagram = batch.datagram_mut(i);
                    // type (after the listener's AmneziaWG prefix, if any)
                    let (kind, offset) = match parse(&framing, datagram) {
                        Parsed::Message(kind, offset) => (kind, offset),
                        Parsed::Drop(reason) => {
                            if reason == DropReason::Junk {
                                // bytes this source sent: they count for its next initiation
                                router.junk.note(from, datagram.len(), t);
                            }
                            router.count(reason);
                            continue;
                        }
                    };
                    let Some(packet) = datagram.get_mut(offset..) else {
                        router.count(DropReason::BadLength);
                        continue;
                    };
                    if kind == MessageType::Transport {
                        let Some(receiver) = transport_receiver(packet) else {
                            router.count(DropReason::BadLength);
                            continue;
                        };
                        let owner = router.owners.of(receiver);
                        if owner == self.id {
                            let found = router.transport(&mut ctl, now, t, from, src, packet);
                            run = found.filter(|_| plain);
                        } else {
                            off_owner += 1;
                            self.hand_off(owner, from, batch.datagram(i), &mut wake);
                        }
                    } else {
                        if let Some(receiver) = framing.receiver_of(datagram) {
                            if router.owners.of(receiver) != self.id {
                                off_owner += 1;
                            }
                        }
                        let junk = match kind {
                            MessageType::Initiation => router.junk.take(&from, t),
                            _ => 0,
                        };
                        let packet = &mut batch.datagram_mut(i)[offset..];
                        let _ = router.control(&mut ctl, now, t, from, src, kind, junk, packet);
                    }
                }
            }
            for (j, h) in handed.iter_mut().enumerate() {
                let framing = router.framing(h.from.listener);
                let offset = match parse(&framing, &h.packet) {
                    Parsed::Message(MessageType::Transport, offset) => offset,
                    _ => continue,
                };
                if let Some(packet) = h.packet.get_mut(offset..) {
                    let _ = router.transport(&mut ctl, now, t, h.from, Src::Handed(j), packet);
                }
            }
            if step_due {
                sweeping = ctl.get().step_sweeps(now, &mut swept);
                for x in swept.drain(..) {
                    router.push_extra(x);
                }
                next_step = now + SWEEP_STEP_INTERVAL;
            } else if let Some(state) = ctl.guard.as_ref() {
                sweeping = state.sweeps_pending();
            }
            drop(ctl);
            // changes out before any packet that depends on them
            for (owner, queue) in router.remote.iter_mut().enumerate() {
                if queue.is_empty() {
                    continue;
                }
                if let Some(tx) = self.mesh.changes.get(owner) {
                    for change in queue.drain(..) {
                        // Only fails when the owner has exited (shutdown).
                        let _ = tx.send(change);
                    }
                }
                wake[owner] = true;
            }
            for (owner, w) in wake.iter_mut().enumerate() {
                if std::mem::take(w) {
                    if let Some(waker) = self.mesh.wakers.get(owner) {
                        waker.wake();
                    }
                }
            }
            if off_owner > 0 {
                self.io.off_owner.fetch_add(off_owner, Ordering::Relaxed);
            }
            self.fast.publish(&mut router.local);
            if router.outs.is_empty() {
                continue;
            }
            // In receive order, never reordered: the datagrams of one GRO run (one flow, so one
            // destination) stay adjacent, which is what lets the backend send them as one GSO
            // message.
            let mut transmits = recycled(std::mem::take(&mut spare));
            let mut unsendable = 0u64;
            transmits.extend(router.outs.iter().filter_map(|o| {
                let (to, contents, segment_size) = match *o {
                    Out::Packet(i, last, to) if last > i => {
                        (to, batch.adjacent(i, last), Some(batch.datagram(i).len()))
                    }
                    Out::Packet(i, _, to) => (to, batch.datagram(i), None),
                    Out::Handed(j, to) => (to, &*handed[j].packet, None),
                    Out::Extra(j) => (router.extras[j].to, router.extras[j].contents(), None),
                    Out::Framed(j) => (router.framed[j].0, &router.framed[j].1[..], None),
                };
                let t = Transmit {
                    listener: 0,
                    destination: to.addr(),
                    contents,
                    segment_size,
                    source: None,
                };
                // `None`: its listener closed (a reload) after the route was decided
                match socket_of.get(usize::from(to.listener.0)).copied().flatten() {
                    Some(listener) => Some(Transmit { listener, ..t }),
                    None => {
                        unsendable += t.datagrams() as u64;
                        None
                    }
                }
            }));
            let stats = self.backend.send(&transmits);
            spare = recycled(transmits);
            if stats.failed + unsendable > 0 {
                self.io
                    .send_failed
                    .fetch_add(stats.failed + unsendable, Ordering::Relaxed);
            }
        }
        Stopped {
            sessions: router.sessions,
            mailbox: self.mailbox,
        }
    }

    /// Queues a transport packet for the shard that owns its receiver index.
    fn hand_off(&self, owner: usize, from: Endpoint, packet: &[u8], wake: &mut [bool]) {
        let Some(tx) = self.mesh.handoffs.get(owner) else {
            return;
        };
        let handoff = Handoff {
            from,
            packet: packet.into(),
        };
        match tx.try_send(handoff) {
            Ok(()) => {
                self.io.handoffs.fetch_add(1, Ordering::Relaxed);
                wake[owner] = true;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.io.handoff_drops.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds what the backend lost since the last call to the relay's counters.
    fn publish_drops(&self, last: &mut Drops) {
        let now = self.backend.drops();
        let add = |counter: &AtomicU64, was: u64, is: u64| {
            if is > was {
                counter.fetch_add(is - was, Ordering::Relaxed);
            }
        };
        add(&self.io.kernel_drops, last.kernel, now.kernel);
        add(&self.io.enobufs, last.enobufs, now.enobufs);
        *last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The send list really is allocated once: recycling keeps the allocation and empties it.
    #[test]
    fn recycled_send_lists_keep_their_allocation() {
        let mut spare: Vec<Transmit<'static>> = Vec::with_capacity(128);
        let at = spare.as_ptr() as usize;
        for round in 0..3u8 {
            let bytes = vec![round; 64];
            let mut list = recycled(std::mem::take(&mut spare));
            assert!(list.is_empty());
            list.extend((0..100).map(|i| Transmit {
                listener: i,
                destination: "127.0.0.1:1".parse().expect("addr"),
                contents: &bytes,
                segment_size: None,
                source: None,
            }));
            assert_eq!(list.as_ptr() as usize, at, "round {round}: same storage");
            spare = recycled(list);
            assert!(spare.is_empty() && spare.capacity() >= 128);
        }
    }
}
