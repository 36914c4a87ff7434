//! Starting and stopping a relay: bind every socket first (so a bad address fails before
//! anything runs), then start one shard thread per configured thread.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::admit::{Entropy, OsEntropy};
use crate::config::Config;
use crate::io::{bind_udp, buffer_sizes, Backend, MmsgBackend, SocketOptions};
use crate::route::{Counters, Settings, State};
use crate::shard::{IoCounters, Shard};

/// A running relay.
pub struct Relay {
    local_addrs: Vec<SocketAddr>,
    state: Arc<Mutex<State>>,
    io: Arc<IoCounters>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Counters of a running relay: the routing core's and the I/O layer's.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub route: Counters,
    pub send_failed: u64,
    pub recv_errors: u64,
    pub indices: usize,
    pub endpoints: usize,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} send_failed={} recv_errors={} indices={} endpoints={}",
            self.route, self.send_failed, self.recv_errors, self.indices, self.endpoints
        )
    }
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Settings {
            allow: config.allow.clone(),
            groups: config.groups.clone(),
            cookie: config.cookie,
            broadcast_rate: config.broadcast_rate,
        }
    }
}

/// Binds `threads` sockets to `addr` with SO_REUSEPORT. A plain bind first makes sure no
/// other process holds the port (a second reuseport group member would silently take a share
/// of the traffic) and resolves port 0 to one port for all shards.
fn bind_listener(addr: SocketAddr, threads: usize) -> io::Result<Vec<UdpSocket>> {
    let probe = bind_udp(
        addr,
        &SocketOptions {
            reuse_port: false,
            recv_buffer: 0,
            send_buffer: 0,
        },
    )?;
    let actual = probe.local_addr()?;
    drop(probe);
    (0..threads)
        .map(|_| bind_udp(actual, &SocketOptions::default()))
        .collect()
}

impl Relay {
    /// Binds every listener and starts the shards. On error nothing is left running.
    pub fn start(config: &Config) -> io::Result<Relay> {
        Self::start_with_entropy(config, Box::new(OsEntropy))
    }

    pub fn start_with_entropy(config: &Config, entropy: Box<dyn Entropy>) -> io::Result<Relay> {
        let threads = config.threads.max(1);
        let mut per_listener: Vec<Vec<UdpSocket>> = Vec::new();
        let mut local_addrs = Vec::new();
        for addr in &config.listen {
            let sockets = match bind_listener(*addr, threads) {
                Ok(s) => s,
                // A host without IPv6: the default [::] falls back to IPv4 with a warning.
                Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && is_no_ipv6(&e) => {
                    let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
                    log::warn!("IPv6 unavailable ({e}); listening on {v4} instead of {addr}");
                    bind_listener(v4, threads)?
                }
                Err(e) => return Err(e),
            };
            local_addrs.push(sockets[0].local_addr()?);
            per_listener.push(sockets);
        }
        if let Some(first) = per_listener.first().and_then(|s| s.first()) {
            if let Ok((rcv, snd)) = buffer_sizes(first) {
                log::info!("socket buffers: receive {rcv} bytes, send {snd} bytes");
            }
        }
        let state = Arc::new(Mutex::new(State::new(
            &Settings::from_config(config),
            entropy,
            Instant::now(),
        )));
        let io = Arc::new(IoCounters::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let next_expire = Arc::new(Mutex::new(Instant::now()));
        let mut relay = Relay {
            local_addrs,
            state,
            io,
            shutdown,
            threads: Vec::new(),
        };
        for t in 0..threads {
            let sockets: Vec<UdpSocket> = per_listener.iter_mut().map(|l| l.remove(0)).collect();
            let backend = MmsgBackend::new(sockets);
            if t == 0 {
                let caps = backend.capabilities();
                log::info!(
                    "backend {}: {} shard(s), batch {}, gso segments {}, gro segments {}",
                    backend.name(),
                    threads,
                    caps.batch_size,
                    caps.max_gso_segments,
                    caps.gro_segments
                );
            }
            let shard = Shard {
                backend,
                state: relay.state.clone(),
                io: relay.io.clone(),
                shutdown: relay.shutdown.clone(),
                next_expire: next_expire.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("wgrelay-shard-{t}"))
                .spawn(move || shard.run());
            match spawned {
                Ok(handle) => relay.threads.push(handle),
                // Dropping `relay` stops the shards already started.
                Err(e) => return Err(e),
            }
        }
        Ok(relay)
    }

    /// The bound addresses, one per listener (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn stats(&self) -> Stats {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Stats {
            route: state.counters().clone(),
            send_failed: self.io.send_failed.load(Ordering::Relaxed),
            recv_errors: self.io.recv_errors.load(Ordering::Relaxed),
            indices: state.indices().len(),
            endpoints: state.endpoints().len(),
        }
    }

    /// Stops the shards and waits for them.
    pub fn stop(mut self) -> Stats {
        self.halt();
        self.stats()
    }

    fn halt(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt();
    }
}

fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}
