//! The generator's send and receive paths over a [`Topology`]: batched sends to the relay
//! from any peer, and receives demultiplexed to peers (GRO runs split into datagrams).

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, RawFd};

use crate::net::{self, Poller, RecvBatch, SendBatch};
use crate::topo::Topology;

/// Sends from peers to the relay, batched per socket.
pub struct Tx {
    pub relay: SocketAddrV4,
    batch: SendBatch,
    fd: RawFd,
    /// Messages the kernel took / refused.
    pub messages: u64,
    pub failed: u64,
    pub last_errno: i32,
}

impl Tx {
    pub fn new(relay: SocketAddrV4) -> Self {
        Tx {
            relay,
            batch: SendBatch::new(),
            fd: -1,
            messages: 0,
            failed: 0,
            last_errno: 0,
        }
    }

    /// Queues `len` bytes (a GSO run of `segment`-byte datagrams when 0 < segment < len) from
    /// `peer` to the relay; flushes first when the batch is full or belongs to another socket.
    pub fn send(
        &mut self,
        topo: &Topology,
        peer: usize,
        segment: usize,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) {
        let fd = topo.fd_of(peer);
        if self.batch.is_full() || (fd != self.fd && !self.batch.is_empty()) {
            self.flush();
        }
        self.fd = fd;
        self.batch
            .push(self.relay, topo.peers[peer].1, segment, len, fill);
    }

    pub fn pending(&self) -> usize {
        self.batch.len()
    }

    pub fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let s = self.batch.flush(self.fd);
        self.messages += s.messages;
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
    pub fn new(topo: &Topology, gro: bool) -> std::io::Result<Self> {
        let poller = Poller::new()?;
        for (i, s) in topo.sockets.iter().enumerate() {
            poller.add(s.as_raw_fd(), i as u64)?;
        }
        Ok(Rx {
            batch: RecvBatch::new(if gro { net::SLOT_GRO } else { net::SLOT_PLAIN }),
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
        if topo.sockets.len() == 1 && timeout_us == 0 {
            // One socket: skip epoll and just try.
            self.ready.push(0);
        } else {
            self.poller.wait(timeout_us, &mut self.ready);
        }
        let mut count = 0;
        for r in 0..self.ready.len() {
            let sock = self.ready[r] as usize;
            let Some(s) = topo.sockets.get(sock) else {
                continue;
            };
            let fd = s.as_raw_fd();
            for _ in 0..rounds {
                let n = match self.batch.recv(fd, false) {
                    Ok(n) => n,
                    Err(_) => {
                        self.errors += 1;
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                let now = clock();
                for i in 0..n {
                    let m = *self.batch.meta(i);
                    let Some(peer) = topo.demux(sock, m.dst).filter(|_| !m.truncated) else {
                        self.stray += 1;
                        continue;
                    };
                    let data = self.batch.data(i);
                    self.messages += 1;
                    for seg in data.chunks(m.stride.max(1)) {
                        f(peer, seg, now);
                        count += 1;
                        self.datagrams += 1;
                    }
                }
                if n < net::BATCH {
                    break;
                }
            }
        }
        count
    }
}
