//! The control plane of the proxy and port-per-peer modes: keeps the routing state's pinned
//! endpoints current, off the datapath.
//!
//! One thread, woken every [`TICK`]: it reads each server's resolved address (resolution runs
//! on the resolver's own thread, `upstream::resolve`), asks for a fresh lookup when the relay
//! saw failures that a stale address would explain (send errors, initiations dropped for want
//! of an address), reads the peers of local WireGuard devices through their UAPI sockets
//! every [`UAPI_INTERVAL`], and writes what changed into the `State` (one short lock per
//! change). A failed lookup or an unreadable device is logged and retried; it never stops the
//! relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::key::PublicKey;
use crate::route::{DropReason, State};
use crate::shard::{lock, IoCounters};
use crate::table::{Endpoint, ListenerId};
use crate::upstream::resolve::{Family, HostPort, Options, Upstream, UpstreamHandle};
use crate::upstream::uapi::Client;

/// How often the control thread looks for changes.
pub const TICK: Duration = Duration::from_millis(200);

/// How often a local device's peers are read.
pub const UAPI_INTERVAL: Duration = Duration::from_secs(2);

/// A proxy server to keep resolved.
pub struct ServerUpstream {
    pub key: PublicKey,
    pub addr: HostPort,
}

/// A port peer whose endpoint a local WireGuard device knows.
pub struct DevicePeer {
    pub key: PublicKey,
    /// Device name (`wg0`) or UAPI socket path.
    pub device: String,
    /// The peer's dedicated listener: where its NAT pinhole expects the relay's packets from.
    pub listener: ListenerId,
}

/// Which listener a packet to `to` leaves by: one of the same family, else a dual-stack
/// (unspecified IPv6) one for an IPv4 destination.
pub fn listener_for(listeners: &[SocketAddr], to: SocketAddr) -> Option<ListenerId> {
    let to_v4 = match to {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
    };
    // port 0: a listener a reload closed
    let pick =
        |f: &dyn Fn(&SocketAddr) -> bool| listeners.iter().position(|l| l.port() != 0 && f(l));
    let found = if to_v4 {
        pick(&|l| l.is_ipv4()).or_else(|| pick(&|l| l.is_ipv6() && l.ip().is_unspecified()))
    } else {
        pick(&|l| l.is_ipv6())
    };
    found.and_then(|i| u16::try_from(i).ok()).map(ListenerId)
}

/// The running control thread. Dropping it stops the thread (and the resolvers).
pub struct Control {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Server {
    key: PublicKey,
    upstream: Upstream,
    handle: UpstreamHandle,
    current: Option<Endpoint>,
}

impl Control {
    /// Starts the resolvers and the thread; `None` when there is nothing to keep current.
    pub fn start(
        servers: Vec<ServerUpstream>,
        devices: Vec<DevicePeer>,
        listeners: Vec<SocketAddr>,
        state: Arc<Mutex<State>>,
        io: Arc<IoCounters>,
    ) -> std::io::Result<Option<Control>> {
        if servers.is_empty() && devices.is_empty() {
            return Ok(None);
        }
        let can_v4 = listeners
            .iter()
            .any(|l| l.is_ipv4() || l.ip().is_unspecified());
        let can_v6 = listeners.iter().any(|l| l.is_ipv6());
        let family = Family::for_sockets(can_v4, can_v6);
        let mut running = Vec::new();
        for s in servers {
            let upstream = Upstream::start(
                s.addr,
                Options {
                    family,
                    ..Options::default()
                },
            )?;
            let handle = upstream.handle();
            running.push(Server {
                key: s.key,
                upstream,
                handle,
                current: None,
            });
        }
        // Literal addresses are known now: in the State before the first packet arrives.
        update_servers(&mut running, &listeners, &state);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wgrelay-control".into())
            .spawn(move || run(running, devices, listeners, state, io, flag))?;
        Ok(Some(Control {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut servers: Vec<Server>,
    devices: Vec<DevicePeer>,
    listeners: Vec<SocketAddr>,
    state: Arc<Mutex<State>>,
    io: Arc<IoCounters>,
    stop: Arc<AtomicBool>,
) {
    let mut last_failures = 0u64;
    let mut next_uapi = Instant::now();
    let mut device_errors: HashMap<String, String> = HashMap::new();
    let mut device_endpoints: HashMap<PublicKey, Option<Endpoint>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        // servers: take what the resolvers found
        update_servers(&mut servers, &listeners, &state);
        // a stale address shows as send failures or initiations with nowhere to go: look again
        let failures = io.send_failed.load(Ordering::Relaxed)
            + lock(&state).counters().dropped(DropReason::NoUpstream);
        if failures > last_failures {
            for s in &servers {
                if s.upstream.target().name().is_some() {
                    s.upstream.request_refresh();
                }
            }
            last_failures = failures;
        }
        // local devices: their peers' endpoints
        if !devices.is_empty() && Instant::now() >= next_uapi {
            next_uapi = Instant::now() + UAPI_INTERVAL;
            read_devices(&devices, &state, &mut device_errors, &mut device_endpoints);
        }
        std::thread::sleep(TICK);
    }
}

/// Writes each server's address into the State when it changed.
fn update_servers(servers: &mut [Server], listeners: &[SocketAddr], state: &Mutex<State>) {
    for s in servers {
        let endpoint = s.handle.get().and_then(|addr| {
            let listener = listener_for(listeners, addr);
            if listener.is_none() {
                log::warn!("server {addr}: no listener of its address family to reach it");
            }
            listener.map(|l| Endpoint::new(l, addr))
        });
        if endpoint != s.current {
            match endpoint {
                Some(e) => log::info!("server {} is at {}", s.upstream.target(), e.addr()),
                None => log::warn!("server {}: no address", s.upstream.target()),
            }
            lock(state).set_pinned_endpoint(&s.key, endpoint);
            s.current = endpoint;
        }
    }
}

fn read_devices(
    devices: &[DevicePeer],
    state: &Mutex<State>,
    errors: &mut HashMap<String, String>,
    known: &mut HashMap<PublicKey, Option<Endpoint>>,
) {
    let mut by_device: HashMap<&str, Vec<&DevicePeer>> = HashMap::new();
    for d in devices {
        by_device.entry(d.device.as_str()).or_default().push(d);
    }
    for (device, peers) in by_device {
        let client = if device.starts_with('/') {
            Ok(Client::new(device))
        } else {
            Client::for_device(device)
        };
        let answer = client.and_then(|c| c.get());
        let dev = match answer {
            Ok(dev) => {
                if errors.remove(device).is_some() {
                    log::info!("device {device}: readable again");
                }
                dev
            }
            Err(e) => {
                // Once per distinct error, not every two seconds.
                let msg = e.to_string();
                if errors.get(device) != Some(&msg) {
                    log::warn!("device {device}: {msg}; keeping what was known");
                    errors.insert(device.to_string(), msg);
                }
                continue;
            }
        };
        for p in peers {
            let endpoint = dev
                .peers
                .iter()
                .find(|d| d.public_key == p.key)
                .and_then(|d| d.endpoint)
                .map(|addr| Endpoint::new(p.listener, addr));
            if known.get(&p.key) != Some(&endpoint) {
                match endpoint {
                    Some(e) => log::info!("device {device}: peer {} is at {}", p.key, e.addr()),
                    None => log::info!("device {device}: peer {} has no endpoint", p.key),
                }
                lock(state).set_pinned_endpoint(&p.key, endpoint);
                known.insert(p.key, endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn listener_by_family() {
        let l = [a("[::1]:1"), a("127.0.0.1:2")];
        assert_eq!(listener_for(&l, a("10.0.0.1:5")), Some(ListenerId(1)));
        assert_eq!(listener_for(&l, a("[2001:db8::1]:5")), Some(ListenerId(0)));
        assert_eq!(
            listener_for(&l, a("[::ffff:10.0.0.1]:5")),
            Some(ListenerId(1))
        );
        let dual = [a("[::]:1")];
        assert_eq!(listener_for(&dual, a("10.0.0.1:5")), Some(ListenerId(0)));
        let v6only = [a("[::1]:1")];
        assert_eq!(listener_for(&v6only, a("10.0.0.1:5")), None);
        let v4only = [a("0.0.0.0:1")];
        assert_eq!(listener_for(&v4only, a("[2001:db8::1]:5")), None);
    }
}
