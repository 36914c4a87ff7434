//! The per-thread datapath loop: receive a batch → route each packet → send the batch.
//!
//! Each shard owns its sockets (one per listener, all bound with SO_REUSEPORT) and its
//! backend. For now the routing state is shared behind one mutex taken once per batch, not
//! per packet; per-shard ownership of indices replaces it with the io_uring datapath.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::io::steer::owner_shard;
use crate::io::{Backend, Drops, RecvBatch, Transmit};
use crate::route::{Actions, Datagram, Decision, DropReason, State};
use crate::table::{Endpoint, ListenerId};
use crate::wire;

/// How long a shard waits for packets before checking for shutdown and expiry.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

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
}

/// Where a routed packet's copies go, recorded per batch.
enum Out {
    /// Copy of received datagram `i`.
    Packet(usize, Endpoint),
    /// Extra datagram `i` in the batch's extras.
    Extra(usize),
}

pub struct Shard<B: Backend> {
    /// This shard's number, and how many there are (for ownership by receiver index).
    pub id: usize,
    pub shards: usize,
    pub backend: B,
    pub state: Arc<Mutex<State>>,
    pub io: Arc<IoCounters>,
    pub shutdown: Arc<AtomicBool>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock would be a bug in the routing core; keep relaying with
    // the state as it is rather than taking every shard down with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B: Backend> Shard<B> {
    /// Runs until `shutdown` is set.
    pub fn run(mut self) {
        let mut batch = RecvBatch::new();
        let mut actions = Actions::new();
        let mut outs: Vec<Out> = Vec::with_capacity(batch.capacity() * 2);
        let mut extras: Vec<Datagram> = Vec::new();
        let mut drops = Drops::default();
        while !self.shutdown.load(Ordering::Relaxed) {
            let n = match self.backend.recv(&mut batch, POLL_INTERVAL) {
                Ok(n) => n,
                Err(e) => {
                    self.io.recv_errors.fetch_add(1, Ordering::Relaxed);
                    log::error!("receive failed: {e}");
                    std::thread::sleep(POLL_INTERVAL);
                    continue;
                }
            };
            self.publish_drops(&mut drops);
            outs.clear();
            extras.clear();
            let mut off_owner = 0u64;
            {
                let mut state = lock(&self.state);
                let now = Instant::now();
                state.expire_if_due(now);
                for i in 0..n {
                    let meta = *batch.meta(i);
                    if meta.truncated {
                        state.count_drop(DropReason::Truncated);
                        continue;
                    }
                    let Ok(listener) = u16::try_from(meta.listener) else {
                        continue;
                    };
                    let from = Endpoint::new(ListenerId(listener), meta.addr);
                    if let Some(index) = wire::receiver_of(batch.datagram(i)) {
                        if owner_shard(index, self.shards) != self.id {
                            off_owner += 1;
                        }
                    }
                    let decision = state.route(now, from, batch.datagram_mut(i), &mut actions);
                    if decision == Decision::Forward {
                        outs.extend(actions.targets.iter().map(|t| Out::Packet(i, *t)));
                    }
                    for x in actions.extra.drain(..) {
                        outs.push(Out::Extra(extras.len()));
                        extras.push(x);
                    }
                }
            }
            if off_owner > 0 {
                self.io.off_owner.fetch_add(off_owner, Ordering::Relaxed);
            }
            if outs.is_empty() {
                continue;
            }
            // In receive order, never reordered: the datagrams of one GRO run (one flow, so one
            // destination) stay adjacent, which is what lets the backend send them as one GSO
            // message.
            let transmits: Vec<Transmit<'_>> = outs
                .iter()
                .map(|o| {
                    let (to, contents) = match o {
                        Out::Packet(i, to) => (*to, batch.datagram(*i)),
                        Out::Extra(j) => (extras[*j].to, extras[*j].contents()),
                    };
                    Transmit {
                        listener: usize::from(to.listener.0),
                        destination: to.addr(),
                        contents,
                    }
                })
                .collect();
            let stats = self.backend.send(&transmits);
            if stats.failed > 0 {
                self.io
                    .send_failed
                    .fetch_add(stats.failed, Ordering::Relaxed);
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
