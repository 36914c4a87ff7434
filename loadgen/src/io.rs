//! The generator's send and receive paths over a [`Topology`]: batched sends to the relay
//! from any peer, and receives demultiplexed to peers (GRO runs split into datagrams), both
//! through the topology's `wgrelay::io` backend.

use std::net::{IpAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use wgrelay::io::RecvBatch;

use crate::net::{self, Poller, SendList};
use crate::topo::Topology;

/// Sends from peers to the relay, batched.
pub struct Tx {
    pub relay: SocketAddrV4,
    list: SendList,
    /// Datagrams the kernel took / refused.
    pub sent: u64,
    pub failed: u64,
    pub last_errno: i32,
}

impl Tx {
    pub fn new(relay: SocketAddrV4) -> Self {
        Tx {
            relay,
            list: SendList::new(),
            sent: 0,
            failed: 0,
            last_errno: 0,
        }
    }

    /// Queues `len` bytes (a GSO run of `segment`-byte datagrams when 0 < segment < len) from
    /// `peer` to the relay; flushes first when the batch is full.
    pub fn send(
        &mut self,
        topo: &Topology,
        peer: usize,
        segment: usize,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        if self.list.is_full() {
            self.flush(topo);
        }
        let (listener, src) = topo.peers[peer];
        self.list
            .push(listener as usize, self.relay, src, segment, len, fill);
    }

    pub fn pending(&self) -> usize {
        self.list.len()
    }

    /// Sends what is queued through `topo`'s sockets.
    pub fn flush(&mut self, topo: &Topology) {
        if self.list.is_empty() {
            return;
        }
        let s = self.list.flush(&mut topo.net.borrow_mut());
        self.sent += s.datagrams;
        self.failed += s.failed;
        if s.failed > 0 {
            self.last_errno = s.last_errno;
        }
    }
}

/// Receives for all peers.
pub struct Rx {
    batch: RecvBatch,
    poller: Poller,
    ready: Vec<u64>,
    /// Datagrams for no known peer, or truncated.
    pub stray: u64,
    pub errors: u64,
    /// Messages received (a GRO run is one) and the datagrams in them: with `--gro` their
    /// ratio is how many segments the relay sent per message (loopback keeps GSO sends whole).
    pub messages: u64,
    pub datagrams: u64,
}

impl Rx {
    /// # Errors
    /// epoll setup failed.
    pub fn new(topo: &Topology, _gro: bool) -> std::io::Result<Self> {
        let poller = Poller::new()?;
        for (i, s) in topo.net.borrow().sockets().iter().enumerate() {
            poller.add(s.as_raw_fd(), i as u64)?;
        }
        Ok(Rx {
            batch: RecvBatch::new(),
            poller,
            ready: Vec::new(),
            stray: 0,
            errors: 0,
            messages: 0,
            datagrams: 0,
        })
    }

    /// Waits up to `timeout_us` for datagrams, then hands each to `f(peer, datagram, now_ns)`
    /// (now from `clock`, read once per receive call). At most `rounds` recvmmsg calls per
    /// ready socket. Returns datagrams handed over.
    pub fn poll(
        &mut self,
        topo: &Topology,
        timeout_us: u64,
        rounds: usize,
        clock: impl Fn() -> u64,
        mut f: impl FnMut(usize, &[u8], u64),
    ) -> usize {
        self.ready.clear();
        if topo.sockets == 1 && timeout_us == 0 {
            // One socket: skip epoll and just try.
            self.ready.push(0);
        } else {
            self.poller.wait(timeout_us, &mut self.ready);
        }
        let mut count = 0;
        for r in 0..self.ready.len() {
            let sock = self.ready[r] as usize;
            if sock >= topo.sockets {
                continue;
            }
            for _ in 0..rounds {
                let got = topo.net.borrow_mut().recv_from(sock, &mut self.batch);
                if got.is_err() {
                    self.errors += 1;
                }
                let batch = &self.batch;
                if got.is_err() || batch.is_empty() {
                    break;
                }
                let now = clock();
                for m in 0..batch.messages() {
                    let (_, _, datagrams) = batch.message(m);
                    let dst = match batch.meta(datagrams.start).local {
                        Some(IpAddr::V4(ip)) => Some(ip),
                        _ => None,
                    };
                    let Some(peer) = topo
                        .demux(sock, dst)
                        .filter(|_| !datagrams.clone().any(|i| batch.truncated(i)))
                    else {
                        self.stray += 1;
                        continue;
                    };
                    self.messages += 1;
                    for i in datagrams {
                        f(peer, batch.datagram(i), now);
                        count += 1;
                        self.datagrams += 1;
                    }
                }
                if batch.messages() < net::BATCH {
                    break;
                }
            }
        }
        count
    }
}
