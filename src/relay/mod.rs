//! Starting and stopping a relay: choose the I/O backend, bind every socket (so a bad address
//! fails before anything runs), then start one shard thread per configured thread.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use crate::admit::{Entropy, OsEntropy};
use crate::config::{BackendChoice, Config};
use crate::control::{Control, DevicePeer, ServerUpstream};
use crate::ctl::{Inspector, ListenerView};
use crate::io::steer::owner_shard;
use crate::io::{buffer_sizes, uring, Backend, MmsgBackend, Offload, SocketOptions, UringBackend};
use crate::route::{Counters, Reconfigured, SessionTable, Settings, State};
use crate::shard::{lock, FastCounters, IoCounters, Mesh, Shard, Stopped};
use crate::table::Endpoint;

mod listeners;
use listeners::Listeners;

/// A shard's backend, built before the shard starts, and the listener of each of its sockets.
struct Prepared {
    backend: Box<dyn Backend + Send>,
    listener_of: Vec<u16>,
}

/// The datagram I/O backend a relay runs on, once `--backend auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// [`UringBackend`].
    Uring,
    /// [`MmsgBackend`].
    Mmsg,
}

impl BackendKind {
    /// The name the backend gives itself in logs ([`Backend::name`]).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Uring => "uring",
            BackendKind::Mmsg => "mmsg",
        }
    }
}

/// Resolves the requested backend. `uring_probe` ([`uring::probe`] outside tests) is called
/// only when the answer depends on it; its error says why io_uring cannot run here.
///
/// - `mmsg` is always mmsg.
/// - `uring` is uring, or an error naming the reason when io_uring cannot run: someone who asked
///   for it explicitly should not silently get something else.
/// - `auto` is uring where it can run (the io_uring setup a container's seccomp profile or
///   `kernel.io_uring_disabled` forbids is probed on a real ring), else mmsg, with one log line
///   saying why. With GSO/GRO in both backends they measured within this machine's noise of
///   each other (docs/benchmarks.md, including the one case where uring loses).
pub fn choose(
    requested: BackendChoice,
    uring_probe: impl FnOnce() -> Result<(), String>,
) -> Result<BackendKind, String> {
    match requested {
        BackendChoice::Mmsg => Ok(BackendKind::Mmsg),
        BackendChoice::Auto => match uring_probe() {
            Ok(()) => Ok(BackendKind::Uring),
            Err(why) => {
                log::info!("io_uring unavailable ({why}); falling back to the mmsg backend");
                Ok(BackendKind::Mmsg)
            }
        },
        BackendChoice::Uring => match uring_probe() {
            Ok(()) => Ok(BackendKind::Uring),
            Err(why) => Err(format!(
                "--backend uring: io_uring unavailable ({why}); use --backend mmsg or auto"
            )),
        },
    }
}

/// A running relay.
pub struct Relay {
    local_addrs: Vec<SocketAddr>,
    backend: BackendKind,
    offload: Offload,
    state: Arc<Mutex<State>>,
    io: Arc<IoCounters>,
    /// Each shard's fast-path counters (kept across a reload's restart of the shards).
    fast: Vec<Arc<FastCounters>>,
    /// Keeps proxy servers resolved and port peers' device endpoints read.
    control: Option<Control>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Stopped>>,
    /// The core each shard runs on, when pinned.
    cores: Vec<Option<core_affinity::CoreId>>,
    /// Where confirmed sessions are saved on `stop`.
    state_file: Option<PathBuf>,
    /// The configuration running now (a reload compares the new one with it).
    config: Config,
    /// The shards' channels: a reload hands them the sessions it ended.
    mesh: Arc<Mesh>,
    /// Every listener of this run, by id.
    listeners: Listeners,
    /// For `inspector`: what each listener is for (replaced by a reload), and when the relay
    /// started.
    views: Arc<Mutex<Vec<ListenerView>>>,
    started: Instant,
}

/// Counters of a running relay: the routing core's and the I/O layer's.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub route: Counters,
    pub send_failed: u64,
    pub recv_errors: u64,
    /// Datagrams the kernel dropped for full receive queues (`SO_RXQ_OVFL`).
    pub kernel_drops: u64,
    /// io_uring buffer-ring exhaustions (each re-armed).
    pub enobufs: u64,
    /// Packets that arrived at a shard other than the owner of their receiver index.
    pub off_owner: u64,
    /// Transport packets handed to their owner shard, and hand-offs dropped (queue full).
    pub handoffs: u64,
    pub handoff_drops: u64,
    /// Packets the shards forwarded from their own session tables, without the shared state.
    pub fast_forwarded: u64,
    pub indices: usize,
    pub endpoints: usize,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} send_failed={} recv_errors={} kernel_drops={} enobufs={} off_owner={} handoffs={} handoff_drops={} fast_forwarded={} indices={} endpoints={}",
            self.route,
            self.send_failed,
            self.recv_errors,
            self.kernel_drops,
            self.enobufs,
            self.off_owner,
            self.handoffs,
            self.handoff_drops,
            self.fast_forwarded,
            self.indices,
            self.endpoints
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
            servers: config.servers.iter().map(|s| s.key).collect(),
            // Listener ids and endpoints are only known once the sockets are bound.
            port_peers: Vec::new(),
            // Filled in with the shards' list (`Relay::start`).
            framings: Vec::new(),
        }
    }
}

/// Reads a state file written by an earlier run into `state`. A missing file is a first
/// start; anything else that goes wrong is logged and the relay starts empty.
fn restore_state(path: &Path, state: &mut State, listeners: &[SocketAddr]) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let r = state.restore(&text, Instant::now(), SystemTime::now(), listeners);
            log::info!(
                "restored {} sessions, {} proven sources and {} key bindings from {} ({} lines skipped)",
                r.sessions,
                r.proven,
                r.bindings,
                path.display(),
                r.skipped
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            log::info!("no state file at {} yet", path.display());
        }
        Err(e) => log::warn!(
            "cannot read state file {}: {e}; starting empty",
            path.display()
        ),
    }
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), readable by the
/// owner only: it names peers' addresses and keys.
fn write_state(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The control thread for `config`'s proxy servers and device-backed port peers (`None`
/// when there are none), over `listeners`.
fn start_control(
    config: &Config,
    listeners: &Listeners,
    state: &Arc<Mutex<State>>,
    io: &Arc<IoCounters>,
) -> io::Result<Option<Control>> {
    let servers = config
        .servers
        .iter()
        .map(|s| ServerUpstream {
            key: s.key,
            addr: s.addr.clone(),
        })
        .collect();
    let peer_ids = listeners.order().get(config.listen.len()..).unwrap_or(&[]);
    let devices = config
        .peers
        .iter()
        .zip(peer_ids)
        .filter_map(|(p, &listener)| {
            Some(DevicePeer {
                key: p.key,
                device: p.uapi.clone()?,
                listener,
            })
        })
        .collect();
    Control::start(
        servers,
        devices,
        listeners.addrs_by_id(),
        state.clone(),
        io.clone(),
    )
}

/// The routing settings of `config` over `listeners` (bound for it): each port peer on its
/// listener's id, and the listeners' framings.
fn routing_settings(config: &Config, listeners: &Listeners) -> Settings {
    let mut settings = Settings::from_config(config);
    settings.framings = listeners.framings();
    let peer_ids = listeners.order().get(config.listen.len()..).unwrap_or(&[]);
    for (p, &listener) in config.peers.iter().zip(peer_ids) {
        let endpoint = p.endpoint.map(|e| Endpoint::new(listener, e));
        settings.port_peers.push((listener, p.key, endpoint));
    }
    settings
}

/// A shard's backend on `sockets`, of the relay's kind.
fn make_backend(
    kind: BackendKind,
    offload: Offload,
    sockets: Vec<UdpSocket>,
) -> io::Result<Box<dyn Backend + Send>> {
    let backend: Box<dyn Backend + Send> = match kind {
        BackendKind::Uring => Box::new(UringBackend::with_offload(sockets, offload)?),
        BackendKind::Mmsg => Box::new(MmsgBackend::with_offload(sockets, offload)),
    };
    Ok(backend)
}

/// `new` with what waits for a restart taken from `running`: the configuration a reload
/// runs. [`Config::diff`] names the same settings restart-only (a test holds them together).
fn live_part(running: &Config, new: &Config) -> Config {
    let mut next = new.clone();
    next.threads = running.threads;
    next.backend = running.backend;
    next.gso = running.gso;
    next.gro = running.gro;
    next.steering = running.steering;
    next.state_file = running.state_file.clone();
    next.control_socket = running.control_socket.clone();
    next.metrics = running.metrics;
    next.log_format = running.log_format;
    next
}

/// What a reload did: the settings it applied, those that wait for a restart, and what the
/// routing state changed.
#[derive(Debug, Clone, Default)]
pub struct Reloaded {
    pub applied: Vec<&'static str>,
    pub needs_restart: Vec<&'static str>,
    pub routing: Reconfigured,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.applied.is_empty() {
            write!(f, "nothing changed")?;
        } else {
            write!(f, "applied {}; {}", self.applied.join(", "), self.routing)?;
        }
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; not applied until a restart: {}",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Relay {
    /// Binds every listener and starts the shards. On error nothing is left running.
    pub fn start(config: &Config) -> io::Result<Relay> {
        Self::start_with_entropy(config, Box::new(OsEntropy))
    }

    /// [`Relay::start`] with the routing core's randomness from `entropy`.
    ///
    /// # Errors
    /// The requested backend cannot run here (see [`choose`]), a listener cannot be bound, or
    /// a backend or thread cannot be set up. Nothing is left bound or running.
    pub fn start_with_entropy(config: &Config, entropy: Box<dyn Entropy>) -> io::Result<Relay> {
        let kind = choose(config.backend, uring::probe)
            .map_err(|why| io::Error::new(io::ErrorKind::Unsupported, why))?;
        let offload = Offload {
            gso: config.gso,
            gro: config.gro,
        };
        let threads = config.threads.max(1);
        let listeners = Listeners::bind(config, threads)?;
        if let Some(first) = listeners.first_socket() {
            if let Ok((rcv, snd)) = buffer_sizes(first) {
                // Linux reports twice what was set (it counts its bookkeeping): say what the
                // datagrams get, as the README and the options state it
                let asked = SocketOptions::default();
                log::info!(
                    "socket buffers: receive {} KiB, send {} KiB (asked {} KiB each; the kernel \
                     reports twice that, {rcv} and {snd} bytes)",
                    rcv / 2 / 1024,
                    snd / 2 / 1024,
                    asked.recv_buffer / 1024
                );
            }
        }
        // The routing core counts handshake bytes as the shards frame them.
        let settings = routing_settings(config, &listeners);
        let mut initial = State::new(&settings, entropy, Instant::now());
        initial.track_changes();
        if let Some(path) = &config.state_file {
            restore_state(path, &mut initial, &listeners.addrs_by_id());
        }
        // Restored sessions go straight into their owners' tables, before any packet arrives.
        let mut tables: Vec<SessionTable> = (0..threads).map(|_| SessionTable::new()).collect();
        let mut restored = Vec::new();
        let now = initial.tick(Instant::now());
        initial.take_changes(now, &mut Vec::new(), &mut restored);
        for change in restored {
            if let Some(table) = tables.get_mut(owner_shard(change.0, threads)) {
                table.apply(change);
            }
        }
        let (mesh, mailboxes) = Mesh::new(threads)?;
        let state = Arc::new(Mutex::new(initial));
        let io = Arc::new(IoCounters::default());
        let control = start_control(config, &listeners, &state, &io)?;
        // Pin shard t to the t-th core this process may run on, when there are enough of them
        // (sched_getaffinity, so a container's cpuset is respected).
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let pin = threads <= cores.len();
        if pin {
            let ids: Vec<String> = cores[..threads].iter().map(|c| c.id.to_string()).collect();
            log::info!("shards pinned to cores {}", ids.join(", "));
        } else {
            log::info!("{threads} shards on {} cores: not pinned", cores.len());
        }
        let backends = Self::backends(kind, offload, &listeners, threads)?;
        if let Some(b) = backends.first() {
            let caps = b.backend.capabilities();
            log::info!(
                "backend {}: {} shard(s), batch {}, gso segments {} (--gso {}), gro segments \
                 {} (--gro {})",
                b.backend.name(),
                threads,
                caps.batch_size,
                caps.max_gso_segments,
                if config.gso { "on" } else { "off" },
                caps.gro_segments,
                if config.gro { "on" } else { "off" },
            );
        }
        let mut relay = Relay {
            local_addrs: listeners.local_addrs(),
            backend: kind,
            offload,
            state,
            io,
            fast: (0..threads)
                .map(|_| Arc::new(FastCounters::default()))
                .collect(),
            control,
            shutdown: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            cores: (0..threads)
                .map(|t| cores.get(t).copied().filter(|_| pin))
                .collect(),
            state_file: config.state_file.clone(),
            config: config.clone(),
            mesh,
            views: Arc::new(Mutex::new(listeners.views(!config.servers.is_empty()))),
            listeners,
            started: Instant::now(),
        };
        let stopped = tables
            .into_iter()
            .zip(mailboxes)
            .map(|(sessions, mailbox)| Stopped { sessions, mailbox });
        for (backend, stopped) in backends.into_iter().zip(stopped) {
            // On error, dropping `relay` stops the shards already started and closes every
            // socket.
            relay.spawn(backend, stopped)?;
        }
        Ok(relay)
    }

    /// One backend per shard over `listeners`' sockets, all built before any shard is
    /// touched: a failure leaves a running relay as it was.
    fn backends(
        kind: BackendKind,
        offload: Offload,
        listeners: &Listeners,
        threads: usize,
    ) -> io::Result<Vec<Prepared>> {
        (0..threads)
            .map(|t| {
                let (sockets, listener_of) = listeners.shard_sockets(t)?;
                let backend = make_backend(kind, offload, sockets).map_err(|e| {
                    io::Error::new(e.kind(), format!("{} backend: {e}", kind.as_str()))
                })?;
                Ok(Prepared {
                    backend,
                    listener_of,
                })
            })
            .collect()
    }

    /// Starts the next shard (number `self.threads.len()`) on `prepared`, with what the
    /// shard before it on that number left (`stopped`).
    fn spawn(&mut self, prepared: Prepared, stopped: Stopped) -> io::Result<()> {
        let t = self.threads.len();
        let shard = Shard {
            id: t,
            shards: self.fast.len(),
            backend: prepared.backend,
            state: self.state.clone(),
            io: self.io.clone(),
            fast: self.fast[t].clone(),
            shutdown: self.shutdown.clone(),
            mesh: self.mesh.clone(),
            mailbox: stopped.mailbox,
            sessions: stopped.sessions,
            framings: self.listeners.framings().into(),
            listener_of: prepared.listener_of,
        };
        let core = self.cores.get(t).copied().flatten();
        let handle = std::thread::Builder::new()
            .name(format!("wgrelay-shard-{t}"))
            .spawn(move || {
                // One shard per core, each on its own: no migrations, warm caches.
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        log::debug!("could not pin a shard to core {}", core.id);
                    }
                }
                shard.run()
            })?;
        self.threads.push(handle);
        Ok(())
    }

    /// Stops the shards and waits for them: what each owned, by shard number.
    fn stop_shards(&mut self) -> Vec<Stopped> {
        self.shutdown.store(true, Ordering::Relaxed);
        self.mesh.wake_all();
        let stopped = self
            .threads
            .drain(..)
            .enumerate()
            .filter_map(|(t, h)| match h.join() {
                Ok(s) => Some(s),
                Err(_) => {
                    // its sessions and channels went with it: the others restart
                    log::error!("shard {t} had panicked; it is not restarted");
                    None
                }
            })
            .collect();
        self.shutdown.store(false, Ordering::Relaxed);
        stopped
    }

    /// Applies a new configuration without a restart: keys, groups, cookie mode, fan-out
    /// rate, proxy servers, port peers, listen addresses and AmneziaWG framing. Sessions
    /// whose keys are still allowed, on listeners still there, go on; the others end
    /// (`State::reconfigure`, `State::close_listeners`). A change of listeners or framing
    /// restarts the shards on the new set of sockets: the listeners it keeps keep their
    /// kernel sockets (and what is queued in them), and the shards hand their sessions and
    /// channels to their successors. Settings that shape the threads (threads, backend,
    /// offloads, steering) and the process (state file, control socket, metrics, log
    /// format) are reported as waiting for a restart and kept as they run ([`Config::diff`]
    /// says which). Log level and statistics period are the caller's (main's).
    ///
    /// # Errors
    /// A new listener cannot be bound, a backend cannot be built on the new sockets, or the
    /// new proxy servers' resolvers cannot start. In the first two cases nothing changed.
    pub fn reload(&mut self, new: &Config) -> io::Result<Reloaded> {
        let old = &self.config;
        let mut done = Reloaded::default();
        // what applies live and what waits for a restart: the configuration's own diff
        let diff = old.diff(new);
        done.applied = diff
            .changes
            .iter()
            .filter(|c| c.live)
            .map(|c| c.setting)
            .collect();
        done.needs_restart = diff.restart_only().map(|c| c.setting).collect();
        let next = live_part(old, new);
        let reshape = !old.same_sockets(&next) || old.awg != next.awg;
        let upstreams_changed = reshape || old.servers != next.servers || old.peers != next.peers;
        // Everything that can fail on the sockets, before anything changes.
        let prepared = if reshape {
            let (listeners, closed) = self.listeners.reshaped(&next)?;
            let backends = Self::backends(self.backend, self.offload, &listeners, self.fast.len())?;
            Some((listeners, closed, backends))
        } else {
            None
        };
        // The old control thread writes server endpoints into the state: stop it first, so
        // it cannot pin a removed server again after the reconfiguration.
        if upstreams_changed {
            self.control = None;
        }
        let mut stopped = Vec::new();
        let mut closed = Vec::new();
        let mut backends = Vec::new();
        if let Some((listeners, c, b)) = prepared {
            stopped = self.stop_shards();
            // the old set's descriptors close here; the kept sockets live on in the new one
            self.listeners = listeners;
            closed = c;
            backends = b;
        }
        let settings = routing_settings(&next, &self.listeners);
        let mut changes = Vec::new();
        {
            let mut state = lock(&self.state);
            let now = Instant::now();
            state.close_listeners(&closed, &mut done.routing);
            let r = state.reconfigure(&settings, now);
            done.routing.add(&r);
            let t = state.tick(now);
            state.take_changes(t, &mut Vec::new(), &mut changes);
        }
        // the ended sessions wait in the mailboxes of shards being restarted
        self.mesh.deliver(changes, self.fast.len());
        let mut spawned = Ok(());
        for (b, s) in backends.into_iter().zip(stopped) {
            if let Err(e) = self.spawn(b, s) {
                log::error!("reload: a shard did not restart: {e}");
                spawned = Err(e);
            }
        }
        self.local_addrs = self.listeners.local_addrs();
        if reshape {
            let addrs: Vec<String> = self.local_addrs.iter().map(|a| a.to_string()).collect();
            log::info!(
                "reload: shards restarted on {} listener(s): {}",
                addrs.len(),
                addrs.join(", ")
            );
        }
        *self.views.lock().unwrap_or_else(|p| p.into_inner()) =
            self.listeners.views(!next.servers.is_empty());
        self.config = next;
        spawned?;
        if upstreams_changed {
            self.control = start_control(&self.config, &self.listeners, &self.state, &self.io)?;
        }
        Ok(done)
    }

    /// The configuration running now (after the reloads applied to it).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend the shards run on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The bound addresses, one per listener (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn stats(&self) -> Stats {
        collect_stats(&self.state, &self.io, &self.fast)
    }

    /// A read-only view of this relay's counters for the metrics endpoint, usable from other
    /// threads while the relay runs.
    pub fn observer(&self) -> Observer {
        let latency = lock(&self.state).handshake_latency();
        Observer {
            state: self.state.clone(),
            io: self.io.clone(),
            fast: self.fast.clone(),
            latency,
            backend: self.backend,
        }
    }

    /// A view of the running relay for the control socket (`ctl::serve`).
    pub fn inspector(&self) -> Inspector {
        Inspector {
            state: self.state.clone(),
            io: self.io.clone(),
            fast: self.fast.clone(),
            mesh: self.mesh.clone(),
            listeners: self.views.clone(),
            backend: self.backend,
            started: self.started,
        }
    }

    /// Stops the shards, waits for them, and saves the sessions to the state file if one is
    /// configured.
    pub fn stop(mut self) -> Stats {
        self.halt();
        if let Some(path) = &self.state_file {
            let text = {
                let state = lock(&self.state);
                state.save(
                    Instant::now(),
                    SystemTime::now(),
                    &self.listeners.addrs_by_id(),
                )
            };
            let sessions = text.lines().filter(|l| l.starts_with("s ")).count() / 2;
            match write_state(path, &text) {
                Ok(()) => log::info!("saved {sessions} sessions to {}", path.display()),
                Err(e) => log::warn!("cannot write state file {}: {e}", path.display()),
            }
        }
        self.stats()
    }

    fn halt(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.control = None;
        let tables: Vec<SessionTable> = self
            .threads
            .drain(..)
            .filter_map(|t| t.join().ok())
            .map(|s| s.sessions)
            .collect();
        // The shards forwarded packets the State never saw: their highest counters go back,
        // so a saved and restored session keeps the bar a roam must clear.
        let mut state = lock(&self.state);
        let now = state.tick(Instant::now());
        for table in &tables {
            for (index, counter) in table.counters() {
                state.note_counter(index, counter, now);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The relay's totals: the shared State's counters plus every shard's fast path. Holds the
/// State's lock only to copy its counters.
pub(crate) fn collect_stats(
    state: &Mutex<State>,
    io: &IoCounters,
    fast: &[Arc<FastCounters>],
) -> Stats {
    let state = lock(state);
    let mut route = state.counters().clone();
    let mut fast_forwarded = 0;
    for fast in fast {
        let c = fast.snapshot();
        fast_forwarded += c.forwarded;
        route.add(&c);
    }
    Stats {
        route,
        send_failed: io.send_failed.load(Ordering::Relaxed),
        recv_errors: io.recv_errors.load(Ordering::Relaxed),
        kernel_drops: io.kernel_drops.load(Ordering::Relaxed),
        enobufs: io.enobufs.load(Ordering::Relaxed),
        off_owner: io.off_owner.load(Ordering::Relaxed),
        handoffs: io.handoffs.load(Ordering::Relaxed),
        handoff_drops: io.handoff_drops.load(Ordering::Relaxed),
        fast_forwarded,
        indices: state.indices().len(),
        endpoints: state.endpoints().len(),
    }
}

/// Sizes of the shared routing tables, as gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// Live paired index pairs: confirmed (the initiator's first transport packet came) and
    /// not yet.
    pub sessions_confirmed: usize,
    pub sessions_confirming: usize,
    pub indices: usize,
    pub endpoints: usize,
    /// Keys bound to the endpoint confirmed to hold them.
    pub bindings: usize,
    pub parked: usize,
    /// Entries on the fan-out candidate lists (an endpoint is on one list per group).
    pub candidates: usize,
}

/// What the metrics endpoint reads of a running relay ([`Relay::observer`]): atomics, and
/// the routing State's lock held only to copy counters or count a table.
#[derive(Clone)]
pub struct Observer {
    state: Arc<Mutex<State>>,
    io: Arc<IoCounters>,
    fast: Vec<Arc<FastCounters>>,
    latency: Arc<crate::metrics::histogram::Histogram>,
    backend: BackendKind,
}

impl Observer {
    /// The relay's totals, as [`Relay::stats`] gives them.
    pub fn stats(&self) -> Stats {
        collect_stats(&self.state, &self.io, &self.fast)
    }

    /// Each shard's fast-path counters (what it routed from its own session table without
    /// the shared State), by shard number.
    pub fn shards(&self) -> Vec<Counters> {
        self.fast.iter().map(|f| f.snapshot()).collect()
    }

    /// Handshake latency at the relay (lock-free).
    pub fn handshake_latency(&self) -> &crate::metrics::histogram::Histogram {
        &self.latency
    }

    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Counts the tables. Sessions are counted by walking the index table under the State's
    /// lock: linear in it (like the once-a-second expiry sweep), so callers rate-limit it.
    pub fn table_sizes(&self) -> TableSizes {
        let state = lock(&self.state);
        let t = state.tick(Instant::now());
        let (mut confirmed, mut confirming) = (0, 0);
        // One entry per pair: the initiator's (the responder's entry mirrors it).
        for (_, e) in state.indices().iter() {
            if e.peer.is_some() && !e.responder && e.is_live(t) {
                if e.confirmed {
                    confirmed += 1;
                } else {
                    confirming += 1;
                }
            }
        }
        TableSizes {
            sessions_confirmed: confirmed,
            sessions_confirming: confirming,
            indices: state.indices().len(),
            endpoints: state.endpoints().len(),
            bindings: state.endpoints().bindings_len(),
            parked: state.parked_len(),
            candidates: state.endpoints().candidate_entries(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CookieMode;
    use crate::route::DropReason;
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
    use std::time::Duration;

    /// Upper bound on any wait in these tests.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn never_probed() -> Result<(), String> {
        panic!("the io_uring probe must not run for this choice")
    }

    #[test]
    fn choose_resolves_each_request() {
        assert_eq!(
            choose(BackendChoice::Mmsg, never_probed),
            Ok(BackendKind::Mmsg)
        );
        assert_eq!(
            choose(BackendChoice::Auto, || Ok(())),
            Ok(BackendKind::Uring)
        );
        assert_eq!(
            choose(BackendChoice::Auto, || Err("seccomp: EPERM".into())),
            Ok(BackendKind::Mmsg),
            "auto falls back"
        );
        assert_eq!(
            choose(BackendChoice::Uring, || Ok(())),
            Ok(BackendKind::Uring)
        );
        let e = choose(BackendChoice::Uring, || Err("io_uring_setup: nope".into())).unwrap_err();
        assert_eq!(
            e,
            "--backend uring: io_uring unavailable (io_uring_setup: nope); use --backend mmsg or auto"
        );
        assert_eq!(BackendKind::Uring.as_str(), "uring");
        assert_eq!(BackendKind::Mmsg.as_str(), "mmsg");
    }

    /// `live_part` keeps from the running configuration exactly what `Config::diff` calls
    /// restart-only: every live change survives it, no restart-only one does.
    #[test]
    fn live_part_takes_what_diff_calls_live() {
        let d0 = Config::default();
        let one = |f: &dyn Fn(&mut Config)| {
            let mut c = d0.clone();
            f(&mut c);
            c
        };
        let key = crate::key::PublicKey([7; 32]);
        let changed = [
            one(&|c| c.listen = vec!["127.0.0.1:9".parse().expect("addr")]),
            one(&|c| c.allow = vec![key]),
            one(&|c| c.groups = vec![vec![key]]),
            one(&|c| c.cookie = CookieMode::Always),
            one(&|c| c.broadcast_rate = None),
            one(&|c| c.threads = 7),
            one(&|c| c.backend = BackendChoice::Mmsg),
            one(&|c| c.gso = !c.gso),
            one(&|c| c.gro = !c.gro),
            one(&|c| c.steering = !c.steering),
            one(&|c| c.state_file = Some("/tmp/x".into())),
            one(&|c| c.awg.jc = 3),
            one(&|c| c.log_level = log::LevelFilter::Trace),
            one(&|c| c.log_format = crate::config::LogFormat::Json),
            one(&|c| c.stats_interval = None),
            one(&|c| c.metrics = Some("127.0.0.1:9100".parse().expect("addr"))),
            one(&|c| c.control_socket = None),
        ];
        let mut restart_only = 0;
        for new in &changed {
            let diff = d0.diff(new);
            assert_eq!(diff.changes.len(), 1, "one setting each: {diff}");
            let change = &diff.changes[0];
            let after = d0.diff(&live_part(&d0, new));
            assert_eq!(
                after.changed(change.setting),
                change.live,
                "{}: live {} but live_part {}",
                change.setting,
                change.live,
                if after.changed(change.setting) {
                    "applies it"
                } else {
                    "keeps the old"
                }
            );
            assert_eq!(after.changes.len(), usize::from(change.live), "{after}");
            restart_only += usize::from(!change.live);
        }
        assert_eq!(
            restart_only, 9,
            "threads backend gso gro steering state_file log_format metrics control_socket"
        );
    }

    fn config(backend: BackendChoice) -> Config {
        Config {
            listen: vec!["127.0.0.1:0".parse().expect("addr")],
            cookie: CookieMode::Never,
            threads: 1,
            stats_interval: None,
            backend,
            ..Config::default()
        }
    }

    /// A boringtun peer on its own loopback socket, talking through the relay.
    struct Peer {
        tunn: Tunn,
        sock: UdpSocket,
        relay: SocketAddr,
        /// Decrypted IPv4 packets received.
        delivered: Vec<Vec<u8>>,
        out: Vec<u8>,
    }

    impl Peer {
        fn new(own: u8, other: u8, index: u32, relay: SocketAddr) -> Peer {
            let peer_public = XPublic::from(&StaticSecret::from([other; 32]));
            let tunn = Tunn::new(
                StaticSecret::from([own; 32]),
                peer_public,
                None,
                None,
                index,
                None,
            );
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
            sock.set_nonblocking(true).expect("nonblocking");
            Peer {
                tunn,
                sock,
                relay,
                delivered: Vec::new(),
                out: vec![0; 2048],
            }
        }

        fn initiate(&mut self) {
            if let TunnResult::WriteToNetwork(p) =
                self.tunn.format_handshake_initiation(&mut self.out, true)
            {
                let _ = self.sock.send_to(p, self.relay);
            }
        }

        fn established(&self) -> bool {
            self.tunn.stats().0.is_some()
        }

        /// Encrypts and sends a minimal IPv4 packet carrying `marker`.
        fn send_data(&mut self, marker: u8) {
            let mut ip = [marker; 28];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&28u16.to_be_bytes());
            if let TunnResult::WriteToNetwork(p) = self.tunn.encapsulate(&ip, &mut self.out) {
                let _ = self.sock.send_to(p, self.relay);
            }
        }

        /// Processes every datagram waiting on the socket, answering as boringtun says.
        fn poll(&mut self) {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let mut input = &buf[..n];
                // boringtun: repeat with an empty datagram until Done to flush queued packets.
                for _ in 0..16 {
                    match self.tunn.decapsulate(None, input, &mut self.out) {
                        TunnResult::WriteToNetwork(p) => {
                            let _ = self.sock.send_to(p, self.relay);
                            input = &[];
                        }
                        TunnResult::WriteToTunnelV4(p, _) => {
                            self.delivered.push(p.to_vec());
                            break;
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    /// Polls both peers until `done` or [`DEADLINE`]; `every_second` runs once a second.
    fn pump(
        a: &mut Peer,
        b: &mut Peer,
        mut every_second: impl FnMut(&mut Peer, &mut Peer),
        done: impl Fn(&Peer, &Peer) -> bool,
    ) -> bool {
        let start = Instant::now();
        let mut next = start;
        while start.elapsed() < DEADLINE {
            if Instant::now() >= next {
                every_second(a, b);
                next += Duration::from_secs(1);
            }
            a.poll();
            b.poll();
            if done(a, b) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    /// Two boringtun peers complete a handshake and exchange data through a relay on
    /// `backend`; a malformed datagram is counted as dropped.
    fn relays_a_session(backend: BackendChoice, expect: BackendKind) {
        relays_a_session_with(&config(backend), expect);
    }

    fn relays_a_session_with(config: &Config, expect: BackendKind) {
        let relay = Relay::start(config).expect("relay starts");
        assert_eq!(relay.backend(), expect);
        let relay_addr = relay.local_addrs()[0];

        let junk = UdpSocket::bind("127.0.0.1:0").expect("bind");
        junk.send_to(b"x", relay_addr).expect("send junk");

        let mut a = Peer::new(1, 2, 0x10, relay_addr);
        let mut b = Peer::new(2, 1, 0x20, relay_addr);
        // Both announce themselves (the relay learns where they are), and retry until paired.
        let paired = pump(
            &mut a,
            &mut b,
            |a, b| {
                if !a.established() {
                    a.initiate();
                }
                if !b.established() {
                    b.initiate();
                }
            },
            |a, b| a.established() && b.established(),
        );
        assert!(
            paired,
            "handshake through the {expect:?} relay did not complete"
        );

        let exchanged = pump(
            &mut a,
            &mut b,
            |a, b| {
                a.send_data(0xa1);
                b.send_data(0xb2);
            },
            |a, b| !a.delivered.is_empty() && !b.delivered.is_empty(),
        );
        assert!(
            exchanged,
            "data through the {expect:?} relay did not arrive"
        );
        assert_eq!(b.delivered[0][27], 0xa1);
        assert_eq!(a.delivered[0][27], 0xb2);

        let stats = relay.stop();
        assert!(stats.route.handshakes_paired >= 1, "{stats}");
        assert!(stats.route.forwarded >= 4, "{stats}");
        assert_eq!(stats.route.dropped(DropReason::TooShort), 1, "{stats}");
        assert_eq!(stats.send_failed, 0, "{stats}");
        assert_eq!(stats.recv_errors, 0, "{stats}");
    }

    #[test]
    fn relays_a_session_on_mmsg() {
        relays_a_session(BackendChoice::Mmsg, BackendKind::Mmsg);
    }

    #[test]
    fn relays_a_session_on_mmsg_without_offloads() {
        let plain = Config {
            gso: false,
            gro: false,
            ..config(BackendChoice::Mmsg)
        };
        relays_a_session_with(&plain, BackendKind::Mmsg);
    }

    #[test]
    fn relays_a_session_on_auto() {
        let expect = if uring::probe().is_ok() {
            BackendKind::Uring
        } else {
            BackendKind::Mmsg
        };
        relays_a_session(BackendChoice::Auto, expect);
    }

    #[test]
    fn relays_a_session_on_uring() {
        if let Err(why) = uring::probe() {
            println!("skipping: io_uring unavailable: {why}");
            return;
        }
        relays_a_session(BackendChoice::Uring, BackendKind::Uring);
    }

    /// An explicit `uring` that cannot run is a startup error naming the reason, and leaves
    /// nothing bound. io_uring is made unavailable the way Docker's default seccomp profile
    /// does it, on a throwaway thread (seccomp filters are per thread without TSYNC).
    #[test]
    fn explicit_uring_unavailable_is_an_error_and_binds_nothing() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port")
            .port();
        let listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let result = std::thread::spawn(move || {
            crate::io::seccomp::deny_io_uring_setup_on_this_thread();
            let explicit = Config {
                listen: vec![listen],
                ..config(BackendChoice::Uring)
            };
            let uring = Relay::start(&explicit).err();
            // auto and mmsg never need io_uring.
            let auto = Relay::start(&config(BackendChoice::Auto)).map(|r| r.backend());
            (uring, auto.ok())
        })
        .join()
        .expect("seccomp thread");
        let e = result
            .0
            .expect("--backend uring must fail without io_uring");
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert_eq!(
            e.to_string(),
            "--backend uring: io_uring unavailable (io_uring_setup: Operation not permitted \
             (blocked, e.g. by a seccomp profile such as a container runtime's default)); use \
             --backend mmsg or auto"
        );
        assert_eq!(result.1, Some(BackendKind::Mmsg));
        // Nothing was left bound: the port is free (not even held with SO_REUSEPORT).
        UdpSocket::bind(listen).expect("port still free");
    }

    /// On a host without IPv6 the default `[::]` listener falls back to 0.0.0.0 with a
    /// warning (the bind error's OS code has to survive the socket layer's context for that),
    /// and a handshake passes through it. IPv6 is made unavailable the way a kernel booted
    /// with ipv6.disable=1 does: socket(AF_INET6) fails with EAFNOSUPPORT.
    #[test]
    fn no_ipv6_falls_back_to_ipv4() {
        let result = std::thread::spawn(|| {
            crate::io::seccomp::deny_ipv6_sockets_on_this_thread();
            let c = Config {
                listen: vec!["[::]:0".parse().expect("addr")],
                ..config(BackendChoice::Mmsg)
            };
            let relay = Relay::start(&c)?;
            let local = relay.local_addrs().to_vec();
            relay.stop();
            Ok::<_, io::Error>(local)
        })
        .join()
        .expect("seccomp thread");
        let local = result.expect("falls back instead of failing");
        assert_eq!(local.len(), 1);
        assert!(local[0].is_ipv4(), "{local:?}");
        assert!(local[0].ip().is_unspecified());
    }
}
