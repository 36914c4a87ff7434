//! One validated [`Config`] from the configuration file, the environment and
//! the command line.
//!
//! Precedence for every setting: command-line flag > `WGRELAY_*` environment
//! variable (clap merges these two) > configuration file > wgproxy's
//! `WGPROXY_*` variables (see below) > built-in default.
//! List settings (`listen`, `allow`, `group`, `server`, `peer`) are taken whole
//! from the first source that gives any value: flags/env replace the file's list
//! entirely. The AmneziaWG parameters (`awg`) are one setting too: `--awg` (or
//! `WGRELAY_AWG`) replaces the file's `[awg]` table whole, keys it does not give
//! are plain WireGuard values, not the file's.
//!
//! The wpex-style `bind`/`port` pair belongs to the `listen` setting: if
//! either is given, they define one address `bind:port` (bind absent or `""`
//! → `[::]`, port absent → 40000) that is added after that source's `listen`
//! values. So `--port 40001` on the command line replaces the file's listen
//! addresses (and `bind`/`port`) just like `--listen` would.
//!
//! Every value from every source is validated, even one that a higher
//! precedence source overrides, so `check-config` reports all mistakes.
//! Checks that relate values to each other (a peer port against the listen
//! addresses) apply to the effective configuration.
//!
//! # Proxy servers
//!
//! `--server HOST:PORT` with `--server-key PUBKEY`, repeatable and paired in
//! order (`WGRELAY_SERVER` / `WGRELAY_SERVER_KEY`: comma-separated lists, paired
//! the same way), or `[[server]]` tables with `address` and `public_key`. HOST
//! is an IP address (IPv6 in brackets) or a DNS name. Each key chooses one
//! server: a key given twice is an error.
//!
//! # Port-per-peer responders
//!
//! `--peer [ADDR:]PORT=PUBKEY[@ENDPOINT]` (repeatable, comma-separated lists
//! accepted, `WGRELAY_PEER`), ENDPOINT being `IP:PORT` or `uapi:DEVICE`; or
//! `[[peer]]` tables. A bare PORT (`port = N`) is bound on the host of the first
//! effective `listen` address; `ADDR:PORT` (`listen = "ADDR:PORT"`) is taken
//! whole. A peer port may not be 0, nor overlap a relay listen address or
//! another peer's port (same port on the same address, or on a wildcard address
//! covering it), and two peers may not share a key. Per-peer AmneziaWG
//! parameters exist only in the file, as an `awg` sub-table of the `[[peer]]`
//! (the same keys as `[awg]`); without one a peer port uses the relay-wide
//! `awg`.
//!
//! # AmneziaWG
//!
//! `[awg]` (and a peer's `awg`) takes `jc`, `jmin`, `jmax`, `s1`..`s4`
//! (integers) and `h1`..`h4` (an integer or a `"N-M"` range string); awg-quick
//! spellings (`Jc`, `H1`) are accepted too. `--awg KEY=VALUE` (repeatable,
//! comma-separated lists accepted) and `WGRELAY_AWG="jc=4,s1=20,..."` take the
//! same keys. The set is validated as [`crate::wire::awg::Params::validate`]
//! says and must fit the relay's datagram buffers; AWG 3 header protection
//! (`header_protection_key`) cannot be relayed and is an error.
//!
//! # wgproxy compatibility
//!
//! wgproxy is configured by the environment alone, and so `wgrelay` with no
//! arguments behaves as wgproxy when its variables are set:
//!
//! - `WGPROXY_SERVER` (`HOST:PORT`) and `WGPROXY_PUBKEY` (base64) add one proxy
//!   server. Both or neither: one without the other is an error, and so is any
//!   other `WGPROXY_*` variable below without them.
//! - `WGPROXY_LISTEN` (default `[::]:51820`) is the listen address.
//! - `WGPROXY_TIMEOUT` (seconds, a positive integer, default 60) was wgproxy's
//!   idle expiry of a NAT mapping. wgrelay expires sessions by WireGuard's own
//!   timers instead; the value is validated, kept in
//!   [`Config::wgproxy_timeout`] and reported as superseded.
//! - `WGPROXY_LOGLEVEL`: 0 error, 1 warn (wgproxy's default, and ours when
//!   wgproxy's variables are used), 2 info, 3 debug.
//!
//! They form the lowest-precedence source: anything the command line, the
//! `WGRELAY_*` variables or the configuration file set wins (`--listen`
//! replaces `WGPROXY_LISTEN`, `--server` replaces the `WGPROXY_SERVER` server,
//! `--log-level` replaces `WGPROXY_LOGLEVEL`).
//!
//! # Configuration file (TOML, every key optional, unknown keys are errors)
//!
//! ```toml
//! listen = ["[::]:51820"]
//! allow = ["base64key=", "..."]
//! groups = [["k1", "k2"], ["k3", "k4"]]
//! cookie = "under-load"        # always | under-load | never
//! broadcast_rate = 1000        # 0 = unlimited
//! threads = 2
//! backend = "auto"             # auto | uring | mmsg
//! gso = "on"                   # on | off: UDP GSO sends
//! state_file = "/var/lib/wgrelay/state"  # keep confirmed sessions across a restart
//! gro = "on"                   # on | off: UDP GRO receives
//! steering = "on"              # on | off: steer packets to their owner shard in the kernel
//! log_level = "info"           # error | warn | info | debug | trace
//! stats_interval = 60          # seconds, 0 = off
//! bind = "0.0.0.0"             # wpex style, same rule as the flags
//! port = 40000
//!
//! # Proxy mode: one table per WireGuard server behind the relay.
//! # [[server]]
//! # address = "vpn.example.net:51820"   # HOST:PORT, IPv6 as [ADDR]:PORT
//! # public_key = "base64key="
//!
//! # Port-per-peer mode: one table per responder with its own relay port.
//! # [[peer]]
//! # port = 10001                        # on the host of the first listen address,
//! # # listen = "192.0.2.1:10001"        # or a whole address (exactly one of the two)
//! # public_key = "base64key="
//! # endpoint = "198.51.100.7:51820"     # optional fixed IP:PORT, or:
//! # # uapi = "wg0"                      # optional device name or absolute socket path
//! # awg = { jc = 4, jmin = 40, jmax = 70, s1 = 20, s2 = 30, h1 = 123456, h2 = 234567, h3 = 345678, h4 = 456789 }
//!
//! # AmneziaWG framing of every listener without its own (default: plain WireGuard).
//! # [awg]
//! # jc = 4
//! # jmin = 40
//! # jmax = 70
//! # s1 = 20
//! # s2 = 30
//! # h1 = "100000-100099"                # an integer, or a "N-M" range
//! # h2 = 200000
//! # h3 = 300000
//! # h4 = 400000
//! ```

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cli::{LogLevel, RunArgs};
use crate::key::PublicKey;
use crate::upstream::resolve::HostPort;
use crate::wire::awg::Params as AwgParams;

/// Listen address when no source gives one.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 51820);

/// Port of the wpex-style `bind`/`port` address when only `bind` is given
/// (wpex's default port).
pub const WPEX_DEFAULT_PORT: u16 = 40000;

/// Default cap on handshake-initiation copies per second sent by fan-out.
///
/// Finite by default because fan-out amplifies: a handshake initiation whose
/// destination the relay cannot yet tell is copied to every candidate peer,
/// and in open mode (no allow-list, no groups) anyone can send initiations,
/// with spoofed source addresses, so one small packet from an attacker would
/// otherwise turn into as many packets as there are peers, towards those peers.
/// 1000 copies per second is far above what legitimate peers need (each peer
/// starts a handshake at most every few seconds) while bounding the damage.
/// `0` (flag, env or file) lifts the cap, as in wpex.
pub const DEFAULT_BROADCAST_RATE: u32 = 1000;

/// Seconds between statistics log lines when not configured.
pub const DEFAULT_STATS_INTERVAL_SECS: u64 = 60;

/// Largest accepted `threads` value.
pub const MAX_THREADS: usize = 1024;

/// Where the control socket is unless `control_socket` says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/wgrelay/control.sock";

/// Names of the keys accepted in the configuration file.
pub const FILE_KEYS: &[&str] = &[
    "listen",
    "allow",
    "groups",
    "cookie",
    "broadcast_rate",
    "threads",
    "backend",
    "gso",
    "gro",
    "steering",
    "state_file",
    "control_socket",
    "log_level",
    "stats_interval",
    "bind",
    "port",
    "server",
    "peer",
    "awg",
];

/// Keys of a `[[server]]` table.
pub const SERVER_KEYS: &[&str] = &["address", "public_key"];

/// Keys of a `[[peer]]` table.
pub const PEER_KEYS: &[&str] = &["port", "listen", "public_key", "endpoint", "uapi", "awg"];

/// The AmneziaWG parameters of `[awg]`, a peer's `awg` and `--awg`.
pub const AWG_KEYS: &[&str] = &[
    "jc", "jmin", "jmax", "s1", "s2", "s3", "s4", "h1", "h2", "h3", "h4",
];

/// wgproxy's listen address when `WGPROXY_LISTEN` is not set.
pub const WGPROXY_DEFAULT_LISTEN: SocketAddr = DEFAULT_LISTEN;

/// When the relay answers handshake initiations with cookie replies instead
/// of forwarding them (WireGuard's DoS protection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CookieMode {
    /// Always require a valid cookie (mac2).
    Always,
    /// Require a cookie only while the relay is under load.
    #[default]
    UnderLoad,
    /// Never send cookie replies.
    Never,
}

impl CookieMode {
    /// The spelling used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            CookieMode::Always => "always",
            CookieMode::UnderLoad => "under-load",
            CookieMode::Never => "never",
        }
    }
}

impl fmt::Display for CookieMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which datagram I/O backend the shards use (see [`crate::relay`] for how `auto` resolves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// io_uring where it can run, else mmsg (one log line says why).
    #[default]
    Auto,
    /// io_uring; refuse to start where it cannot run.
    Uring,
    /// poll + recvmmsg/sendmmsg; runs on any Linux.
    Mmsg,
}

impl BackendChoice {
    /// The spelling used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Uring => "uring",
            BackendChoice::Mmsg => "mmsg",
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An on/off setting (`--gso`, `--gro`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

/// A WireGuard server behind the relay (proxy mode): initiations whose mac1 names `key` go to
/// `addr`, re-resolved when it is a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub addr: crate::upstream::resolve::HostPort,
    pub key: PublicKey,
}

/// A responder with its own relay port (port-per-peer mode): initiations arriving on `listen`
/// go to the holder of `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortPeer {
    /// The dedicated relay address: `port = N` binds N on the host of the first `listen`
    /// address; `listen = "ADDR:PORT"` gives it whole.
    pub listen: SocketAddr,
    pub key: PublicKey,
    /// Where the responder is, when it is fixed (else learned from its own traffic or `uapi`).
    pub endpoint: Option<SocketAddr>,
    /// A local WireGuard device (name, e.g. `wg0`, or a UAPI socket path) whose peer list
    /// gives the responder's endpoint.
    pub uapi: Option<String>,
    /// AmneziaWG framing of this port; `None` = the relay-wide `awg`.
    pub awg: Option<crate::wire::awg::Params>,
}

/// The complete, validated relay configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP addresses to listen on; never empty, de-duplicated, order kept,
    /// no port 0.
    pub listen: Vec<SocketAddr>,
    /// Keys that may use the relay; de-duplicated. Empty = no allow-list.
    pub allow: Vec<PublicKey>,
    /// Groups of keys that may reach each other; each de-duplicated and of at
    /// least 2 distinct keys.
    pub groups: Vec<Vec<PublicKey>>,
    pub cookie: CookieMode,
    /// Cap on handshake-initiation copies per second sent by fan-out;
    /// `None` = unlimited.
    pub broadcast_rate: Option<u32>,
    /// Worker threads, 1..=[`MAX_THREADS`].
    pub threads: usize,
    /// Datagram I/O backend as requested (`auto` is resolved when the relay starts).
    pub backend: BackendChoice,
    /// Send runs of datagrams to one destination as UDP GSO sends where the kernel can (turned
    /// off at runtime if the kernel refuses one).
    pub gso: bool,
    /// Let the kernel coalesce received datagrams with UDP GRO where it can.
    pub gro: bool,
    /// With several threads, steer each packet to the shard that owns its receiver index in
    /// the kernel (SO_ATTACH_REUSEPORT_CBPF); off leaves the hand-off to the shards.
    pub steering: bool,
    /// Where confirmed sessions are kept across a restart; `None` = nowhere.
    pub state_file: Option<std::path::PathBuf>,
    /// The control socket (`wgrelay show`, `reload`); `None` = off.
    pub control_socket: Option<std::path::PathBuf>,
    /// Proxy mode: servers chosen by the key mac1 names. Their keys are allowed implicitly.
    pub servers: Vec<Server>,
    /// Port-per-peer mode: one relay port per responder. Their keys are allowed implicitly.
    pub peers: Vec<PortPeer>,
    /// AmneziaWG framing of every listener without its own (plain WireGuard by default).
    pub awg: crate::wire::awg::Params,
    /// `WGPROXY_TIMEOUT`, when wgproxy's variables configure the relay and it is set: wgproxy's
    /// idle expiry of a NAT mapping. Superseded (sessions expire by WireGuard's own timers);
    /// kept to be reported.
    pub wgproxy_timeout: Option<Duration>,
    pub log_level: log::LevelFilter,
    /// Period of statistics log lines; `None` = off.
    pub stats_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN],
            allow: Vec::new(),
            groups: Vec::new(),
            cookie: CookieMode::default(),
            broadcast_rate: Some(DEFAULT_BROADCAST_RATE),
            threads: default_threads(),
            backend: BackendChoice::default(),
            gso: true,
            gro: true,
            steering: true,
            state_file: None,
            control_socket: Some(DEFAULT_CONTROL_SOCKET.into()),
            servers: Vec::new(),
            peers: Vec::new(),
            awg: crate::wire::awg::Params::plain(),
            wgproxy_timeout: None,
            log_level: log::LevelFilter::Info,
            stats_interval: Some(Duration::from_secs(DEFAULT_STATS_INTERVAL_SECS)),
        }
    }
}

/// Number of CPUs available to the process, at least 1, at most
/// [`MAX_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_THREADS)
}

impl Config {
    /// Builds the configuration from parsed flags/env, reading the `--config`
    /// file if one is given.
    ///
    /// Also reads wgproxy's `WGPROXY_*` variables from the process environment
    /// (the lowest-precedence source, see the module docs).
    pub fn from_args(args: &RunArgs) -> Result<Config, ConfigError> {
        Config::from_args_and_env(args, |name| std::env::var_os(name))
    }

    /// [`Config::from_args`] with the `WGPROXY_*` variables looked up by `env`.
    pub fn from_args_and_env(
        args: &RunArgs,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => Layer::from_file(path)?,
            None => Layer::default(),
        };
        let cli = Layer::from_args(args)?;
        let wgproxy = Layer::from_wgproxy_env(env)?;
        Config::merge(cli, file, wgproxy, args.debug)
    }

    /// Builds the configuration from TOML text alone (defaults elsewhere).
    /// Error messages start with `config: line N:`.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let file = Layer::from_toml(s, "config")?;
        Config::merge(Layer::default(), file, Layer::default(), false)
    }

    /// True when there is neither an allow-list nor groups: any key is
    /// relayed.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.groups.is_empty()
    }

    /// Multi-line human description of the effective configuration (no
    /// trailing newline), printed by `check-config` and at startup.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        let mode = if self.is_open() {
            "open (any public key is relayed)".to_string()
        } else {
            let mut parts = Vec::new();
            if !self.allow.is_empty() {
                parts.push(format!("allow-list ({})", plural(self.allow.len(), "key")));
            }
            if !self.groups.is_empty() {
                let distinct: HashSet<&PublicKey> = self.groups.iter().flatten().collect();
                parts.push(format!(
                    "groups ({}, {})",
                    plural(self.groups.len(), "group"),
                    plural(distinct.len(), "distinct key")
                ));
            }
            parts.join(" + ")
        };
        let rate = match self.broadcast_rate {
            Some(pps) => format!("{pps} handshake initiation copies/s"),
            None => "unlimited".to_string(),
        };
        let stats = match self.stats_interval {
            Some(d) => format!("every {}s", d.as_secs()),
            None => "off".to_string(),
        };
        let servers = if self.servers.is_empty() {
            "none".to_string()
        } else {
            let parts: Vec<String> = self
                .servers
                .iter()
                .map(|s| format!("{} -> {}", abbrev(&s.key), s.addr))
                .collect();
            parts.join(", ")
        };
        let peers = if self.peers.is_empty() {
            "none".to_string()
        } else {
            let parts: Vec<String> = self
                .peers
                .iter()
                .map(|p| {
                    let mut how = match (&p.endpoint, &p.uapi) {
                        (Some(e), _) => format!("endpoint {e}"),
                        (None, Some(dev)) => format!("uapi {dev}"),
                        (None, None) => "learned".to_string(),
                    };
                    if let Some(awg) = &p.awg {
                        how.push_str(&format!(", awg {}", awg_text(awg)));
                    }
                    format!("{} -> {} ({how})", p.listen, abbrev(&p.key))
                })
                .collect();
            parts.join(", ")
        };
        let wgproxy = match self.wgproxy_timeout {
            Some(t) => format!(
                "\nwgproxy timeout: {}s (WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)",
                t.as_secs()
            ),
            None => String::new(),
        };
        format!(
            "listen: {}\nmode: {}\nservers: {}\npeers: {}\nawg: {}\ncookie replies: {}\nbroadcast rate: {}\nthreads: {}\nbackend: {}\noffload: gso {}, gro {}\nsteering: {}\nstate file: {}\ncontrol socket: {}\nlog level: {}\nstats: {}{}",
            listen.join(", "),
            mode,
            servers,
            peers,
            awg_text(&self.awg),
            self.cookie,
            rate,
            self.threads,
            self.backend,
            on_off(self.gso),
            on_off(self.gro),
            on_off(self.steering),
            self.state_file
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string()),
            self.control_socket
                .as_ref()
                .map_or("off".into(), |p| p.display().to_string()),
            self.log_level.as_str().to_ascii_lowercase(),
            stats,
            wgproxy,
        )
    }

    /// Merges the sources (`cli` > `file` > `wgproxy` > defaults) and checks what relates
    /// values to each other.
    fn merge(cli: Layer, file: Layer, wgproxy: Layer, debug: bool) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let mut log_level = cli
            .log_level
            .or(file.log_level)
            .or(wgproxy.log_level)
            .map(log::LevelFilter::from)
            .unwrap_or(defaults.log_level);
        if debug {
            log_level = log_level.max(log::LevelFilter::Debug);
        }
        let listen_label = if cli.listen.is_some() {
            "--listen"
        } else if file.listen.is_some() {
            "config: listen"
        } else if wgproxy.listen.is_some() {
            "WGPROXY_LISTEN"
        } else {
            "the default --listen"
        };
        let listen = dedup(
            cli.listen
                .or(file.listen)
                .or(wgproxy.listen)
                .unwrap_or(defaults.listen),
        );
        check_listen_overlap(&listen, listen_label)?;
        let (stats_label, stats_secs) = match (cli.stats_interval, file.stats_interval) {
            (Some(v), _) => ("--stats-interval", Some(v)),
            (None, Some(v)) => ("config: stats_interval =", Some(v)),
            (None, None) => ("", None),
        };
        if let Some(secs) = stats_secs.filter(|s| *s > MAX_STATS_INTERVAL_SECS) {
            return Err(ConfigError::new(format!(
                "{stats_label} {secs}: at most {MAX_STATS_INTERVAL_SECS} seconds (one day); 0 turns the statistics line off"
            )));
        }
        let state_label = if cli.state_file.is_some() {
            "--state-file"
        } else {
            "config: state_file ="
        };
        if let Some(path) = cli.state_file.as_ref().or(file.state_file.as_ref()) {
            check_state_file(path, state_label)?;
        }
        let awg_label = if cli.awg.is_some() {
            "--awg"
        } else {
            "config: awg"
        };
        let cookie = cli.cookie.or(file.cookie).unwrap_or(defaults.cookie);
        let awg = cli.awg.or(file.awg).unwrap_or(defaults.awg);
        let peer_specs = cli.peers.or(file.peers).unwrap_or_default();
        check_cookie_replies(cookie, &awg, awg_label, &peer_specs)?;
        let peers = resolve_peers(peer_specs, &listen)?;
        Ok(Config {
            listen,
            allow: dedup(cli.allow.or(file.allow).unwrap_or_default()),
            groups: cli.groups.or(file.groups).unwrap_or_default(),
            cookie,
            broadcast_rate: match cli.broadcast_rate.or(file.broadcast_rate) {
                Some(0) => None,
                Some(pps) => Some(pps),
                None => defaults.broadcast_rate,
            },
            threads: cli.threads.or(file.threads).unwrap_or(defaults.threads),
            backend: cli.backend.or(file.backend).unwrap_or(defaults.backend),
            gso: cli.gso.or(file.gso).map_or(defaults.gso, Switch::is_on),
            gro: cli.gro.or(file.gro).map_or(defaults.gro, Switch::is_on),
            steering: cli
                .steering
                .or(file.steering)
                .map_or(defaults.steering, Switch::is_on),
            state_file: cli.state_file.or(file.state_file),
            // `off` turns it off
            control_socket: match cli.control_socket.or(file.control_socket) {
                Some(p) if p.as_os_str() == "off" => None,
                Some(p) => Some(p),
                None => defaults.control_socket,
            },
            servers: cli
                .servers
                .or(file.servers)
                .or(wgproxy.servers)
                .unwrap_or_default(),
            peers,
            awg,
            wgproxy_timeout: wgproxy.wgproxy_timeout,
            log_level,
            stats_interval: match cli.stats_interval.or(file.stats_interval) {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => defaults.stats_interval,
            },
        })
    }
}

/// While the relay sends cookie replies, every listener's AmneziaWG parameters must frame
/// them no longer than the initiations they answer ([`AwgParams::check_cookie_reply`]).
fn check_cookie_replies(
    cookie: CookieMode,
    awg: &AwgParams,
    awg_label: &str,
    peers: &[PeerSpec],
) -> Result<(), ConfigError> {
    if cookie == CookieMode::Never {
        return Ok(());
    }
    // (the relay-wide parameters frame every listener, and every peer port without its own)
    awg.check_cookie_reply()
        .map_err(|e| ConfigError::new(format!("{awg_label}: {e}")))?;
    for p in peers {
        if let Some(awg) = &p.awg {
            awg.check_cookie_reply()
                .map_err(|e| ConfigError::new(format!("{}: {e}", p.at)))?;
        }
    }
    Ok(())
}

/// Why the configuration is invalid: one line naming the offending value,
/// e.g. `--listen "1.2.3.4": invalid socket address (expected IP:PORT, IPv6
/// as [ADDR]:PORT)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        // Keep the promise of one line whatever a library message contains.
        let message: String = message.into();
        let message = message.trim().replace('\n', "; ");
        ConfigError { message }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The settings given by one source (command line + env, or the file),
/// validated; `None` = the source does not set it.
#[derive(Debug, Default)]
struct Layer {
    listen: Option<Vec<SocketAddr>>,
    allow: Option<Vec<PublicKey>>,
    groups: Option<Vec<Vec<PublicKey>>>,
    cookie: Option<CookieMode>,
    broadcast_rate: Option<u32>,
    threads: Option<usize>,
    backend: Option<BackendChoice>,
    gso: Option<Switch>,
    gro: Option<Switch>,
    steering: Option<Switch>,
    state_file: Option<std::path::PathBuf>,
    control_socket: Option<std::path::PathBuf>,
    servers: Option<Vec<Server>>,
    peers: Option<Vec<PeerSpec>>,
    awg: Option<AwgParams>,
    wgproxy_timeout: Option<Duration>,
    log_level: Option<LogLevel>,
    stats_interval: Option<u64>,
}

/// A port-per-peer responder as one source gives it, before its port is placed on the
/// effective listen host.
#[derive(Debug)]
struct PeerSpec {
    /// Starts this peer's errors: `--peer "10001=K..."` or `config file x: line 7: peer port 10001`.
    at: String,
    /// How another peer's error names this one: `--peer "10001=K..."` or `the peer on line 7`.
    name: String,
    listen: PeerListen,
    key: PublicKey,
    endpoint: Option<SocketAddr>,
    uapi: Option<String>,
    awg: Option<AwgParams>,
}

/// Where a peer's relay port is.
#[derive(Debug, Clone, Copy)]
enum PeerListen {
    /// This port on the host of the first effective listen address.
    Port(u16),
    /// This whole address.
    Addr(SocketAddr),
}

impl Layer {
    fn from_args(a: &RunArgs) -> Result<Layer, ConfigError> {
        let mut listen = a
            .listen
            .iter()
            .map(|s| parse_listen("--listen", s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::new)?;
        let bind = match &a.bind {
            Some(b) => Some(parse_bind("--bind", b).map_err(ConfigError::new)?),
            None => None,
        };
        let port = match a.port {
            Some(p) => Some(check_port("--port", p).map_err(ConfigError::new)?),
            None => None,
        };
        listen.extend(wpex_listen(bind, port));

        let allow = a
            .allow
            .iter()
            .map(|s| parse_key("--allow", s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::new)?;

        let mut groups = Vec::new();
        for g in &a.group {
            let keys = g
                .split(',')
                .map(|s| parse_key("--group", s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ConfigError::new)?;
            groups.push(check_group("--group", &format!("{g:?}"), keys).map_err(ConfigError::new)?);
        }

        let threads = match a.threads {
            Some(n) => Some(check_threads("--threads", n).map_err(ConfigError::new)?),
            None => None,
        };

        let servers = servers_from_args(&a.server, &a.server_key).map_err(ConfigError::new)?;
        let peers = a
            .peer
            .iter()
            .map(|s| parse_peer_flag(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ConfigError::new)?;
        check_peer_keys(&peers).map_err(ConfigError::new)?;
        let awg = awg_from_args(&a.awg).map_err(ConfigError::new)?;

        Ok(Layer {
            listen: non_empty(listen),
            allow: non_empty(allow),
            groups: non_empty(groups),
            cookie: a.cookie,
            broadcast_rate: a.broadcast_rate,
            threads,
            backend: a.backend,
            gso: a.gso,
            gro: a.gro,
            steering: a.steering,
            state_file: a.state_file.clone(),
            control_socket: a.control_socket.clone(),
            servers: non_empty(servers),
            peers: non_empty(peers),
            awg,
            wgproxy_timeout: None,
            log_level: a.log_level,
            stats_interval: a.stats_interval,
        })
    }

    /// wgproxy's variables (see the module docs), looked up by `env`.
    fn from_wgproxy_env(
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Layer, ConfigError> {
        let var = |name: &str| -> Result<Option<String>, ConfigError> {
            match env(name) {
                None => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(Some)
                    .map_err(|v| ConfigError::new(format!("{name} {v:?}: not valid UTF-8"))),
            }
        };
        let server = var("WGPROXY_SERVER")?;
        let pubkey = var("WGPROXY_PUBKEY")?;
        let listen = var("WGPROXY_LISTEN")?;
        let timeout = var("WGPROXY_TIMEOUT")?;
        let loglevel = var("WGPROXY_LOGLEVEL")?;

        // Every value is checked before whether they belong together.
        let addr = match &server {
            Some(s) => Some(
                s.parse::<HostPort>()
                    .map_err(|e| ConfigError::new(format!("WGPROXY_SERVER: {e}")))?,
            ),
            None => None,
        };
        let key = match &pubkey {
            Some(s) => Some(parse_key("WGPROXY_PUBKEY", s).map_err(ConfigError::new)?),
            None => None,
        };
        let listen = match &listen {
            Some(s) => Some(parse_listen("WGPROXY_LISTEN", s).map_err(ConfigError::new)?),
            None => None,
        };
        let timeout = match &timeout {
            Some(s) => Some(parse_wgproxy_timeout(s).map_err(ConfigError::new)?),
            None => None,
        };
        let log_level = match &loglevel {
            Some(s) => Some(parse_wgproxy_loglevel(s).map_err(ConfigError::new)?),
            None => None,
        };

        let server = match (addr, key) {
            (Some(addr), Some(key)) => Server { addr, key },
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "WGPROXY_SERVER is set but WGPROXY_PUBKEY is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "WGPROXY_PUBKEY is set but WGPROXY_SERVER is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)",
                ))
            }
            (None, None) => {
                let set: Vec<&str> = [
                    ("WGPROXY_LISTEN", listen.is_some()),
                    ("WGPROXY_TIMEOUT", timeout.is_some()),
                    ("WGPROXY_LOGLEVEL", log_level.is_some()),
                ]
                .iter()
                .filter(|(_, set)| *set)
                .map(|(name, _)| *name)
                .collect();
                if let Some(first) = set.first() {
                    return Err(ConfigError::new(format!(
                        "{first} is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"
                    )));
                }
                return Ok(Layer::default());
            }
        };
        Ok(Layer {
            listen: Some(vec![listen.unwrap_or(WGPROXY_DEFAULT_LISTEN)]),
            servers: Some(vec![server]),
            wgproxy_timeout: timeout,
            log_level: Some(log_level.unwrap_or(LogLevel::Warn)),
            ..Layer::default()
        })
    }

    fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let origin = format!("config file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                ConfigError::new(format!("{origin}: cannot read: not valid UTF-8 text ({e})"))
            } else {
                ConfigError::new(format!("{origin}: cannot read: {e}"))
            }
        })?;
        Layer::from_toml(&text, &origin)
    }

    /// `origin` starts every error message, e.g. `config file /etc/x.toml`.
    fn from_toml(text: &str, origin: &str) -> Result<Layer, ConfigError> {
        let ctx = FileCtx { origin, text };
        let f: FileConfig = toml::from_str(text).map_err(|e| ctx.toml_error(&e))?;

        let mut listen = None;
        if let Some(items) = &f.listen {
            let mut addrs = Vec::new();
            for s in items {
                addrs.push(parse_listen("listen", s.get_ref()).map_err(|m| ctx.at(s.span(), m))?);
            }
            listen = Some(addrs);
        }
        let bind = match &f.bind {
            Some(b) => Some(parse_bind("bind", b.get_ref()).map_err(|m| ctx.at(b.span(), m))?),
            None => None,
        };
        let port = match &f.port {
            Some(p) => Some(check_port("port", *p.get_ref()).map_err(|m| ctx.at(p.span(), m))?),
            None => None,
        };
        if let Some(addr) = wpex_listen(bind, port) {
            listen.get_or_insert_with(Vec::new).push(addr);
        }

        let allow = match &f.allow {
            Some(items) => Some(
                items
                    .iter()
                    .map(|s| parse_key("allow", s.get_ref()).map_err(|m| ctx.at(s.span(), m)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };

        let groups = match &f.groups {
            Some(groups) => {
                let mut out = Vec::new();
                for g in groups {
                    let keys = g
                        .get_ref()
                        .iter()
                        .map(|s| parse_key("groups", s.get_ref()).map_err(|m| ctx.at(s.span(), m)))
                        .collect::<Result<Vec<_>, _>>()?;
                    let shown: Vec<&str> =
                        g.get_ref().iter().map(|s| s.get_ref().as_str()).collect();
                    out.push(
                        check_group("groups entry", &format!("{shown:?}"), keys)
                            .map_err(|m| ctx.at(g.span(), m))?,
                    );
                }
                Some(out)
            }
            None => None,
        };

        let threads = match &f.threads {
            Some(n) => {
                Some(check_threads("threads", *n.get_ref()).map_err(|m| ctx.at(n.span(), m))?)
            }
            None => None,
        };

        let mut servers = Vec::new();
        let mut server_lines: Vec<(PublicKey, usize)> = Vec::new();
        for entry in f.server.iter().flatten() {
            let e = entry.get_ref();
            let missing = |what: &str| ctx.at(entry.span(), format!("server: missing {what}"));
            let address = e
                .address
                .as_ref()
                .ok_or_else(|| missing("address = \"HOST:PORT\""))?;
            let addr = address
                .get_ref()
                .parse::<HostPort>()
                .map_err(|err| ctx.at(address.span(), format!("server address: {err}")))?;
            let public_key = e
                .public_key
                .as_ref()
                .ok_or_else(|| missing("public_key = \"...\" (the server's base64 public key)"))?;
            let key = parse_key("server public_key", public_key.get_ref())
                .map_err(|m| ctx.at(public_key.span(), m))?;
            let line = ctx.line(&public_key.span());
            if let Some((_, first)) = server_lines.iter().find(|(k, _)| *k == key) {
                return Err(ctx.at(
                    public_key.span(),
                    format!(
                        "server public_key {key}: already the key of the server on line {first} (a key chooses one server)"
                    ),
                ));
            }
            server_lines.push((key, line));
            servers.push(Server { addr, key });
        }

        let mut peers = Vec::new();
        for entry in f.peer.iter().flatten() {
            peers.push(peer_from_file(&ctx, entry)?);
        }
        check_peer_keys(&peers).map_err(ConfigError::new)?;

        let awg = match &f.awg {
            Some(table) => awg_from_file(&ctx, table, "")?,
            None => None,
        };

        Ok(Layer {
            listen: listen.and_then(non_empty),
            allow: allow.and_then(non_empty),
            groups: groups.and_then(non_empty),
            cookie: f.cookie,
            broadcast_rate: f.broadcast_rate,
            threads,
            backend: f.backend,
            gso: f.gso,
            gro: f.gro,
            steering: f.steering,
            state_file: f.state_file,
            control_socket: f.control_socket,
            servers: non_empty(servers),
            peers: non_empty(peers),
            awg,
            wgproxy_timeout: None,
            log_level: f.log_level,
            stats_interval: f.stats_interval,
        })
    }
}

/// The configuration file as written; values needing validation keep their
/// position for error messages.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<Spanned<String>>>,
    allow: Option<Vec<Spanned<String>>>,
    groups: Option<Vec<Spanned<Vec<Spanned<String>>>>>,
    cookie: Option<CookieMode>,
    broadcast_rate: Option<u32>,
    threads: Option<Spanned<usize>>,
    backend: Option<BackendChoice>,
    gso: Option<Switch>,
    gro: Option<Switch>,
    steering: Option<Switch>,
    state_file: Option<std::path::PathBuf>,
    control_socket: Option<std::path::PathBuf>,
    log_level: Option<LogLevel>,
    stats_interval: Option<u64>,
    bind: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    server: Option<Vec<Spanned<FileServer>>>,
    peer: Option<Vec<Spanned<FilePeer>>>,
    awg: Option<Spanned<AwgTable>>,
}

/// A `[[server]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    address: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
}

/// A `[[peer]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    port: Option<Spanned<u16>>,
    listen: Option<Spanned<String>>,
    public_key: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    uapi: Option<Spanned<String>>,
    awg: Option<Spanned<AwgTable>>,
}

/// An `[awg]` table: parameter name → value, checked by [`AwgParams::set`].
type AwgTable = std::collections::BTreeMap<String, Spanned<toml::Value>>;

/// Where file errors come from, to prefix them with `origin: line N:`.
struct FileCtx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl FileCtx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::new(format!(
            "{}: line {}: {message}",
            self.origin,
            self.line(&span)
        ))
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let mut message = humanize_types(&rewrite_unknown_field(e.message()));
        // An unknown key is named by the message; say which table it is in.
        let name = |pos: usize| {
            if message.starts_with("unknown key") {
                self.table_before(pos).map(str::to_string)
            } else {
                self.key_before(pos)
            }
        };
        match e.span() {
            Some(span) => match name(span.start) {
                Some(key) => {
                    if (key == "server" || key == "peer") && message.contains("invalid type") {
                        message.push_str(&format!(" (write one [[{key}]] table per {key})"));
                    }
                    self.at(span, format!("{key}: {message}"))
                }
                None => self.at(span, message),
            },
            None => ConfigError::new(format!("{}: {message}", self.origin)),
        }
    }

    /// The `key` of the `key = value` line that `pos` (inside the value) is
    /// on, so that type errors, which point at the value, can name the
    /// setting, after the table it is in (`peer port`); the table alone for
    /// an error on a key of it or on its header. `None` on continuation lines
    /// of multi-line arrays outside tables.
    fn key_before(&self, pos: usize) -> Option<String> {
        let before = self.text.get(..pos)?;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[pos..]
            .find('\n')
            .map_or(self.text.len(), |i| pos + i);
        if let Some(header) = header_name(&self.text[start..end]) {
            return Some(header.to_string());
        }
        let key = before[start..]
            .split_once('=')
            .map(|(key, _)| key.trim())
            .filter(|key| is_bare_key(key));
        let table = self.table_before(pos);
        match (table, key) {
            (Some(table), Some(key)) => Some(format!("{table} {key}")),
            (None, Some(key)) => Some(key.to_string()),
            (Some(table), None) => Some(table.to_string()),
            (None, None) => None,
        }
    }

    /// The table that the line of `pos` is in (the last header above it), if any.
    fn table_before(&self, pos: usize) -> Option<&str> {
        let before = self.text.get(..pos)?;
        let start = before.rfind('\n').map_or(0, |i| i + 1);
        before[..start].lines().rev().find_map(header_name)
    }
}

/// The name in a table header line (`[awg]`, `[[peer]]`, `[peer.awg]`).
fn header_name(line: &str) -> Option<&str> {
    let line = line.trim();
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let (name, rest) = inner.split_once(']')?;
    let rest = rest.strip_prefix(']').unwrap_or(rest).trim();
    let name = name.trim();
    (is_bare_key(name) && (rest.is_empty() || rest.starts_with('#'))).then_some(name)
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Replaces Rust type names in serde messages with what a user would write.
fn humanize_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, human) in [
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected struct FileServer", "expected a table"),
        ("expected struct FilePeer", "expected a table"),
    ] {
        if out.ends_with(rust) {
            out.truncate(out.len() - rust.len());
            out.push_str(human);
        }
    }
    out
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into
/// `unknown key "x" (did you mean "y"?; expected one of: a, b)`, the keys being those of the
/// table the key is in.
fn rewrite_unknown_field(message: &str) -> String {
    let message = message.trim();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some(end) = rest.find('`') else {
        return message.to_string();
    };
    let name = &rest[..end];
    // serde names the expected fields in backquotes, in declaration order.
    let expected: Vec<&str> = rest[end + 1..].split('`').skip(1).step_by(2).collect();
    let expected = if expected.is_empty() {
        FILE_KEYS.to_vec()
    } else {
        expected
    };
    let suggestion = expected
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, k)| format!("did you mean \"{k}\"? "))
        .unwrap_or_default();
    let hint =
        if expected.contains(&"awg") && AWG_KEYS.contains(&name.to_ascii_lowercase().as_str()) {
            "; AmneziaWG parameters go in an awg table"
        } else {
            ""
        };
    format!(
        "unknown key {name:?} ({suggestion}expected one of: {}{hint})",
        expected.join(", ")
    )
}

/// Levenshtein distance, for "did you mean" hints.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// Validators shared by flags and file. `name` is how the setting is called
// in the source (`--listen`, `listen`); messages name the value and say what
// was expected.

fn parse_listen(name: &str, s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        format!("{name} {s:?}: invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)")
    })?;
    if addr.port() == 0 {
        return Err(format!(
            "{name} {s:?}: port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"
        ));
    }
    Ok(addr)
}

fn parse_key(name: &str, s: &str) -> Result<PublicKey, String> {
    s.parse().map_err(|e| format!("{name}: {e}"))
}

fn parse_bind(name: &str, s: &str) -> Result<IpAddr, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    let unbracketed = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    unbracketed.parse().map_err(|_| {
        format!(
            "{name} {s:?}: invalid IP address (expected e.g. 0.0.0.0 or ::, or \"\" for all addresses; set the port with {})",
            if name.starts_with("--") { "--port" } else { "port" }
        )
    })
}

fn check_port(name: &str, port: u16) -> Result<u16, String> {
    if port == 0 {
        Err(format!(
            "{name} 0: port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"
        ))
    } else {
        Ok(port)
    }
}

fn check_threads(name: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        Err(format!("{name} 0: must be at least 1"))
    } else if n > MAX_THREADS {
        Err(format!("{name} {n}: must be at most {MAX_THREADS}"))
    } else {
        Ok(n)
    }
}

/// De-duplicates a group's keys and requires at least 2 distinct ones.
fn check_group(name: &str, shown: &str, keys: Vec<PublicKey>) -> Result<Vec<PublicKey>, String> {
    let keys = dedup(keys);
    if keys.len() < 2 {
        return Err(format!(
            "{name} {shown}: a group needs at least 2 distinct public keys (got {})",
            keys.len()
        ));
    }
    Ok(keys)
}

/// `--server`/`--server-key` pairs, in order.
fn servers_from_args(addrs: &[String], keys: &[String]) -> Result<Vec<Server>, String> {
    let addrs = addrs
        .iter()
        .map(|s| s.parse::<HostPort>().map_err(|e| format!("--server: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let keys = keys
        .iter()
        .map(|s| parse_key("--server-key", s))
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.len() != keys.len() {
        return Err(format!(
            "--server and --server-key pair up in order, one key per server: got {} and {}",
            plural(addrs.len(), "server"),
            plural(keys.len(), "server key")
        ));
    }
    let mut seen = HashSet::new();
    for key in &keys {
        if !seen.insert(*key) {
            return Err(format!(
                "--server-key {key}: given for two servers (a key chooses one server)"
            ));
        }
    }
    Ok(addrs
        .into_iter()
        .zip(keys)
        .map(|(addr, key)| Server { addr, key })
        .collect())
}

/// `--peer [ADDR:]PORT=PUBKEY[@IP:PORT|@uapi:DEVICE]`.
fn parse_peer_flag(s: &str) -> Result<PeerSpec, String> {
    let at = format!("--peer {s:?}");
    let syntax = || {
        format!(
            "{at}: expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE"
        )
    };
    let (place, rest) = s.split_once('=').ok_or_else(syntax)?;
    let place = place.trim();
    let listen = if !place.is_empty() && place.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = place
            .parse()
            .map_err(|_| format!("{at}: port {place} is out of range (1-65535)"))?;
        PeerListen::Port(check_port(&at, port).map_err(|_| {
            format!("{at}: port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)")
        })?)
    } else {
        match place.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                return Err(format!(
                    "{at}: port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"
                ))
            }
            Ok(addr) => PeerListen::Addr(addr),
            Err(_) => {
                return Err(format!(
                    "{at}: {place:?} is neither a PORT nor an ADDR:PORT (IPv6 as [ADDR]:PORT)"
                ))
            }
        }
    };
    let (key, how) = match rest.split_once('@') {
        Some((key, how)) => (key, Some(how)),
        None => (rest, None),
    };
    let key = parse_key("--peer", key)?;
    let (mut endpoint, mut uapi) = (None, None);
    match how {
        None => {}
        Some(how) => match how.trim().strip_prefix("uapi:") {
            Some(dev) => uapi = Some(check_uapi(&format!("{at}: uapi"), dev.trim())?),
            None => {
                endpoint = Some(parse_endpoint(
                    &format!("{at}: endpoint"),
                    how,
                    ", or uapi:DEVICE for a local WireGuard device",
                )?)
            }
        },
    }
    Ok(PeerSpec {
        name: at.clone(),
        at,
        listen,
        key,
        endpoint,
        uapi,
        awg: None,
    })
}

/// A `[[peer]]` table.
fn peer_from_file(ctx: &FileCtx<'_>, entry: &Spanned<FilePeer>) -> Result<PeerSpec, ConfigError> {
    let e = entry.get_ref();
    let (listen, place_span, at) = match (&e.port, &e.listen) {
        (Some(port), None) => {
            let p = check_port("peer port", *port.get_ref()).map_err(|m| ctx.at(port.span(), m))?;
            (PeerListen::Port(p), port.span(), format!("peer port {p}"))
        }
        (None, Some(listen)) => {
            let addr =
                parse_listen("peer listen", listen.get_ref()).map_err(|m| ctx.at(listen.span(), m))?;
            (
                PeerListen::Addr(addr),
                listen.span(),
                format!("peer listen {:?}", listen.get_ref()),
            )
        }
        (Some(port), Some(_)) => {
            return Err(ctx.at(
                port.span(),
                "peer: give port = N or listen = \"ADDR:PORT\", not both".to_string(),
            ))
        }
        (None, None) => {
            return Err(ctx.at(
                entry.span(),
                "peer: missing port = N (on the host of the first listen address) or listen = \"ADDR:PORT\"".to_string(),
            ))
        }
    };
    let public_key = e.public_key.as_ref().ok_or_else(|| {
        ctx.at(
            entry.span(),
            "peer: missing public_key = \"...\" (the responder's base64 public key)".to_string(),
        )
    })?;
    let key = parse_key("peer public_key", public_key.get_ref())
        .map_err(|m| ctx.at(public_key.span(), m))?;
    let endpoint = match &e.endpoint {
        Some(ep) => Some(
            parse_endpoint("peer endpoint", ep.get_ref(), "").map_err(|m| ctx.at(ep.span(), m))?,
        ),
        None => None,
    };
    let uapi = match &e.uapi {
        Some(u) => Some(check_uapi("peer uapi", u.get_ref()).map_err(|m| ctx.at(u.span(), m))?),
        None => None,
    };
    if let (Some(_), Some(u)) = (&e.endpoint, &e.uapi) {
        return Err(ctx.at(
            u.span(),
            "peer: endpoint and uapi exclude each other (a fixed endpoint, or the one the device knows)"
                .to_string(),
        ));
    }
    let awg = match &e.awg {
        Some(table) => awg_from_file(ctx, table, "peer ")?,
        None => None,
    };
    let line = ctx.line(&place_span);
    Ok(PeerSpec {
        at: format!("{}: line {line}: {at}", ctx.origin),
        name: format!("the peer on line {line}"),
        listen,
        key,
        endpoint,
        uapi,
        awg,
    })
}

/// Two peers of one source may not share a key.
fn check_peer_keys(peers: &[PeerSpec]) -> Result<(), String> {
    for (i, p) in peers.iter().enumerate() {
        if let Some(first) = peers[..i].iter().find(|q| q.key == p.key) {
            // A flag's own text already shows the key.
            let key = p.key.to_string();
            let which = if p.at.contains(&key) {
                "its public key".to_string()
            } else {
                format!("public key {key}")
            };
            return Err(format!(
                "{}: {which} is already the key of {} (a key has one relay port)",
                p.at, first.name
            ));
        }
    }
    Ok(())
}

/// Places the peers' ports on the effective listen host and checks that no two sockets of the
/// relay overlap.
fn resolve_peers(
    specs: Vec<PeerSpec>,
    listen: &[SocketAddr],
) -> Result<Vec<PortPeer>, ConfigError> {
    let mut out: Vec<PortPeer> = Vec::with_capacity(specs.len());
    for spec in &specs {
        let addr = match spec.listen {
            PeerListen::Addr(a) => a,
            PeerListen::Port(p) => {
                let mut a = listen.first().copied().unwrap_or(DEFAULT_LISTEN);
                a.set_port(p);
                a
            }
        };
        if let Some(l) = listen.iter().find(|l| sockets_overlap(addr, **l)) {
            return Err(ConfigError::new(format!(
                "{}: {addr} overlaps the relay listen address {l} (a peer needs a port of its own)",
                spec.at
            )));
        }
        if let Some((j, _)) = out
            .iter()
            .enumerate()
            .find(|(_, q)| sockets_overlap(addr, q.listen))
        {
            return Err(ConfigError::new(format!(
                "{}: {addr} overlaps the port of {} ({})",
                spec.at, specs[j].name, out[j].listen
            )));
        }
        out.push(PortPeer {
            listen: addr,
            key: spec.key,
            endpoint: spec.endpoint,
            uapi: spec.uapi.clone(),
            awg: spec.awg,
        });
    }
    Ok(out)
}

/// Whether two UDP sockets would claim the same datagrams: the same port, and the same address
/// or a wildcard covering the other (`[::]` is dual-stack, so it covers everything).
fn sockets_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    fn covers(wild: IpAddr, other: IpAddr) -> bool {
        match wild {
            IpAddr::V6(w) => w.is_unspecified(),
            IpAddr::V4(w) => {
                w.is_unspecified()
                    && match other {
                        IpAddr::V4(_) => true,
                        IpAddr::V6(o) => o.to_ipv4_mapped().is_some(),
                    }
            }
        }
    }
    a.port() == b.port() && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// A literal `IP:PORT` to send to; `alternative` ends the "expected" hint.
fn parse_endpoint(name: &str, s: &str, alternative: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        format!(
            "{name} {s:?}: invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT{alternative})"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!("{name} {s:?}: port 0 cannot be sent to"));
    }
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{name} {s:?}: {} is not an address to send to",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// A WireGuard device name (`wg0`) or an absolute UAPI socket path.
fn check_uapi(name: &str, s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        if s.len() < 2 || s.ends_with('/') || s.contains('\0') {
            return Err(format!("{name} {s:?}: not a path to a UAPI socket"));
        }
        return Ok(s.to_string());
    }
    match crate::upstream::uapi::socket_path(s) {
        Ok(_) => Ok(s.to_string()),
        Err(_) => Err(format!(
            "{name} {s:?}: expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket"
        )),
    }
}

/// `--awg KEY=VALUE ...`: `None` when not given.
fn awg_from_args(items: &[String]) -> Result<Option<AwgParams>, String> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut params = AwgParams::plain();
    let mut seen = HashSet::new();
    for item in items {
        let (key, value) = item.split_once('=').ok_or_else(|| {
            format!("--awg {item:?}: expected KEY=VALUE (e.g. jc=4 or h1=100000-100099)")
        })?;
        let key = key.trim();
        let norm: String = key
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if !seen.insert(norm) {
            return Err(format!("--awg {item:?}: {key} is given twice"));
        }
        params.set(key, value).map_err(|e| format!("--awg: {e}"))?;
    }
    check_awg(&params).map_err(|e| format!("--awg: {e}"))?;
    Ok(Some(params))
}

/// An `[awg]` table or a peer's `awg`; `prefix` starts the setting's name in errors (`""` or
/// `"peer "`). `None` when the table is empty.
fn awg_from_file(
    ctx: &FileCtx<'_>,
    table: &Spanned<AwgTable>,
    prefix: &str,
) -> Result<Option<AwgParams>, ConfigError> {
    if table.get_ref().is_empty() {
        return Ok(None);
    }
    // In file order, so the first mistake is the one reported.
    let mut entries: Vec<(&String, &Spanned<toml::Value>)> = table.get_ref().iter().collect();
    entries.sort_by_key(|(_, v)| v.span().start);
    let mut params = AwgParams::plain();
    for (key, value) in entries {
        let text = match value.get_ref() {
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::String(s) => s.clone(),
            other => {
                return Err(ctx.at(
                    value.span(),
                    format!(
                        "{prefix}awg: {key} must be an integer, or for h1..h4 also a \"N-M\" string (got {})",
                        other.type_str()
                    ),
                ))
            }
        };
        params
            .set(key, &text)
            .map_err(|e| ctx.at(value.span(), format!("{prefix}{e}")))?;
    }
    check_awg(&params).map_err(|e| ctx.at(table.span(), format!("{prefix}{e}")))?;
    Ok(Some(params))
}

/// The rules of [`AwgParams::validate`], and fitting the relay's datagram buffers.
fn check_awg(params: &AwgParams) -> Result<(), crate::wire::awg::ParamError> {
    params.validate()?;
    params.check_fits(crate::io::MAX_DATAGRAM_LEN)
}

fn parse_wgproxy_timeout(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    match t.parse::<u64>() {
        Ok(secs) if secs > 0 && t.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(Duration::from_secs(secs))
        }
        _ => Err(format!(
            "WGPROXY_TIMEOUT {s:?}: expected a positive whole number of seconds"
        )),
    }
}

fn parse_wgproxy_loglevel(s: &str) -> Result<LogLevel, String> {
    match s.trim() {
        "0" => Ok(LogLevel::Error),
        "1" => Ok(LogLevel::Warn),
        "2" => Ok(LogLevel::Info),
        "3" => Ok(LogLevel::Debug),
        _ => Err(format!(
            "WGPROXY_LOGLEVEL {s:?}: expected 0 (errors), 1 (and warnings), 2 (and info) or 3 (and debug)"
        )),
    }
}

/// A key shortened for summaries: its first 8 base64 characters.
fn abbrev(key: &PublicKey) -> String {
    let text = key.to_base64();
    format!("{}...", &text[..8])
}

/// AmneziaWG parameters for summaries: `plain`, or every parameter.
fn awg_text(p: &AwgParams) -> String {
    if *p == AwgParams::plain() {
        return "plain".to_string();
    }
    format!(
        "jc={} jmin={} jmax={} s1={} s2={} s3={} s4={} h1={} h2={} h3={} h4={}",
        p.jc, p.jmin, p.jmax, p.s1, p.s2, p.s3, p.s4, p.h1, p.h2, p.h3, p.h4
    )
}

/// The wpex-style listen address, if `bind` or `port` is given.
fn wpex_listen(bind: Option<IpAddr>, port: Option<u16>) -> Option<SocketAddr> {
    if bind.is_none() && port.is_none() {
        return None;
    }
    Some(SocketAddr::new(
        bind.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        port.unwrap_or(WPEX_DEFAULT_PORT),
    ))
}

/// Removes later duplicates, keeping the first occurrence's position.
/// Longest `stats_interval`: a longer one is a typo, and past ~2^63 ns it overflows a clock.
const MAX_STATS_INTERVAL_SECS: u64 = 86_400;

/// Two listen addresses that would claim the same datagrams ([`sockets_overlap`]) cannot both
/// be bound: the second bind fails with "Address already in use" at run time. `[::]:P` is
/// dual-stack (the relay sets IPV6_V6ONLY=0), so it already receives IPv4 on P.
fn check_listen_overlap(listen: &[SocketAddr], label: &str) -> Result<(), ConfigError> {
    for (i, a) in listen.iter().enumerate().filter(|(_, a)| a.port() != 0) {
        let Some(b) = listen[i + 1..].iter().find(|b| sockets_overlap(*a, **b)) else {
            continue;
        };
        // the covering side: [::] over 0.0.0.0, a wildcard over a specific address
        let a_covers = a.ip().is_unspecified() && (a.is_ipv6() || !b.ip().is_unspecified());
        let (wild, other) = if a_covers { (a, b) } else { (b, a) };
        let message = if wild.is_ipv6() && other.is_ipv4() {
            format!(
                "{label}: {wild} is dual-stack and already receives IPv4 on port {}, so {other} cannot be bound beside it; list one of them",
                wild.port()
            )
        } else {
            format!(
                "{label}: {wild} already receives what {other} would (the same port, and it covers that address), so {other} cannot be bound beside it; list one of them"
            )
        };
        return Err(ConfigError::new(message));
    }
    Ok(())
}

/// The state file is written at every clean stop: its directory must exist and be writable,
/// and the path must not be a directory, or every restart would lose the sessions.
fn check_state_file(path: &std::path::Path, label: &str) -> Result<(), ConfigError> {
    let shown = path.display();
    if path.is_dir() {
        return Err(ConfigError::new(format!(
            "{label} {shown}: is a directory; name a file in it, e.g. {}",
            path.join("state").display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(ConfigError::new(format!(
            "{label} {shown}: directory {} does not exist (create it, e.g. mkdir -p {})",
            dir.display(),
            dir.display()
        )));
    }
    let Ok(c_dir) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
    else {
        return Err(ConfigError::new(format!(
            "{label} {shown}: path contains a NUL byte"
        )));
    };
    // SAFETY: access() reads a NUL-terminated path that lives across the call.
    let writable = unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    if !writable {
        return Err(ConfigError::new(format!(
            "{label} {shown}: directory {} is not writable by this user, so sessions could not be saved",
            dir.display()
        )));
    }
    Ok(())
}

fn dedup<T: Eq + Hash + Copy>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|x| seen.insert(*x)).collect()
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Mode};
    use clap::{CommandFactory, Parser};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{RwLock, RwLockReadGuard};

    /// clap reads the process environment, which is global: every test that
    /// parses argv holds this for reading; the one env test holds it for
    /// writing while it changes `WGRELAY_*` variables.
    static ENV_LOCK: RwLock<()> = RwLock::new(());

    fn env_read() -> RwLockReadGuard<'static, ()> {
        ENV_LOCK.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Test key number `i` (all bytes `i`).
    fn key(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    fn k(i: u8) -> String {
        key(i).to_string()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn try_parse_with_env_held(
        argv: &[&str],
    ) -> Result<(Mode, Result<Config, ConfigError>), clap::Error> {
        let mut full = vec!["wgrelay"];
        full.extend_from_slice(argv);
        let (mode, args) = Cli::try_parse_from(full)?.into_parts();
        Ok((mode, Config::from_args(&args)))
    }

    fn try_parse(argv: &[&str]) -> Result<(Mode, Result<Config, ConfigError>), clap::Error> {
        let _env = env_read();
        try_parse_with_env_held(argv)
    }

    /// Parses argv (without the program name) into a Config, which must be valid.
    fn parse(argv: &[&str]) -> Config {
        match try_parse(argv).unwrap_or_else(|e| panic!("clap rejected {argv:?}: {e}")) {
            (_, Ok(c)) => c,
            (_, Err(e)) => panic!("config rejected {argv:?}: {e}"),
        }
    }

    /// Parses argv, which clap must accept and config must reject; returns
    /// the message.
    fn parse_err(argv: &[&str]) -> String {
        match try_parse(argv).unwrap_or_else(|e| panic!("clap rejected {argv:?}: {e}")) {
            (_, Ok(c)) => panic!("config accepted {argv:?}: {c:?}"),
            (_, Err(e)) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line error: {msg}");
                msg
            }
        }
    }

    /// A temporary file removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(contents: &str) -> TempFile {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "wgconfig-test-{}-{}.toml",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn file_err(contents: &str) -> (TempFile, String) {
        let f = TempFile::new(contents);
        let msg = parse_err(&["--config", f.path()]);
        assert!(
            msg.starts_with(&format!("config file {}: ", f.path())),
            "{msg}"
        );
        (f, msg)
    }

    // ---- command line structure ----

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn subcommands_and_modes() {
        let (mode, _) = try_parse(&[]).unwrap();
        assert_eq!(mode, Mode::Run);
        let (mode, c) = try_parse(&["run", "--threads", "3"]).unwrap();
        assert_eq!(mode, Mode::Run);
        assert_eq!(c.unwrap().threads, 3);
        let (mode, c) = try_parse(&["check-config", "--threads", "2"]).unwrap();
        assert_eq!(mode, Mode::CheckConfig);
        assert_eq!(c.unwrap().threads, 2);
        // Flags without subcommand mean run.
        let (mode, c) = try_parse(&["--allow", &k(1)]).unwrap();
        assert_eq!(mode, Mode::Run);
        assert_eq!(c.unwrap().allow, vec![key(1)]);
        // Top-level flags cannot be mixed with a subcommand.
        assert!(try_parse(&["--allow", &k(1), "run"]).is_err());
        assert!(try_parse(&["--threads", "2", "check-config"]).is_err());
        // Unknown flags and subcommands are rejected by clap.
        assert!(try_parse(&["--lissten", "[::]:1"]).is_err());
        assert!(try_parse(&["serve"]).is_err());
    }

    #[test]
    fn into_parts_uses_subcommand_args() {
        let cli = Cli::try_parse_from(["wgrelay", "check-config", "--port", "7"]).unwrap();
        let (mode, args) = cli.into_parts();
        assert_eq!(mode, Mode::CheckConfig);
        assert_eq!(args.port, Some(7));
    }

    // ---- defaults ----

    #[test]
    fn defaults() {
        let c = parse(&[]);
        assert_eq!(c, Config::default());
        assert_eq!(c.listen, vec![sa("[::]:51820")]);
        assert!(c.allow.is_empty());
        assert!(c.groups.is_empty());
        assert!(c.is_open());
        assert_eq!(c.cookie, CookieMode::UnderLoad);
        assert_eq!(c.broadcast_rate, Some(DEFAULT_BROADCAST_RATE));
        assert_eq!(c.broadcast_rate, Some(1000));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.threads, cpus.clamp(1, MAX_THREADS));
        assert!(c.threads >= 1);
        assert_eq!(c.backend, BackendChoice::Auto);
        assert!(c.gso && c.gro);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.stats_interval, Some(Duration::from_secs(60)));
        assert_eq!(Config::from_toml_str("").unwrap(), c);
    }

    // ---- listen ----

    #[test]
    fn repeated_and_comma_separated_listen() {
        let c = parse(&["--listen", "0.0.0.0:1000", "--listen", "[::1]:2000"]);
        assert_eq!(c.listen, vec![sa("0.0.0.0:1000"), sa("[::1]:2000")]);
        let c = parse(&[
            "--listen",
            "0.0.0.0:1000,[::1]:2000",
            "--listen",
            "127.0.0.1:3",
        ]);
        assert_eq!(
            c.listen,
            vec![sa("0.0.0.0:1000"), sa("[::1]:2000"), sa("127.0.0.1:3")]
        );
        let c = parse(&["--listen=10.0.0.1:5, [fe80::1]:6"]);
        assert_eq!(c.listen, vec![sa("10.0.0.1:5"), sa("[fe80::1]:6")]);
    }

    #[test]
    fn listen_deduplicated_order_kept() {
        let c = parse(&[
            "--listen",
            "[::1]:2,127.0.0.1:1,[::1]:2",
            "--listen",
            "127.0.0.1:1",
        ]);
        assert_eq!(c.listen, vec![sa("[::1]:2"), sa("127.0.0.1:1")]);
    }

    #[test]
    fn listen_errors() {
        assert_eq!(
            parse_err(&["--listen", "1.2.3.4"]),
            r#"--listen "1.2.3.4": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"#
        );
        for bad in [
            "::1:51820",
            "localhost:51820",
            "1.2.3.4:70000",
            "1.2.3.4:",
            ":51820",
            "",
        ] {
            let e = parse_err(&["--listen", bad]);
            assert!(e.contains(&format!("{bad:?}")), "{e}");
            assert!(e.contains("invalid socket address"), "{e}");
        }
        let e = parse_err(&["--listen", "[::]:51820,bogus"]);
        assert!(e.starts_with(r#"--listen "bogus""#), "{e}");
    }

    #[test]
    fn listen_port_zero_is_an_error() {
        let e = parse_err(&["--listen", "[::]:0"]);
        assert!(e.starts_with(r#"--listen "[::]:0": port 0"#), "{e}");
        assert!(e.contains("fixed port"), "{e}");
        let e = parse_err(&["--listen", "127.0.0.1:0"]);
        assert!(e.contains(r#""127.0.0.1:0""#), "{e}");
    }

    // ---- wpex --bind / --port ----

    #[test]
    fn wpex_only_port() {
        assert_eq!(parse(&["--port", "40001"]).listen, vec![sa("[::]:40001")]);
    }

    #[test]
    fn wpex_only_bind() {
        assert_eq!(
            parse(&["--bind", "0.0.0.0"]).listen,
            vec![sa("0.0.0.0:40000")]
        );
        assert_eq!(parse(&["--bind", "::1"]).listen, vec![sa("[::1]:40000")]);
        assert_eq!(parse(&["--bind", "[::1]"]).listen, vec![sa("[::1]:40000")]);
        // "" means all addresses, as in wpex.
        assert_eq!(parse(&["--bind", ""]).listen, vec![sa("[::]:40000")]);
        assert_eq!(parse(&["--bind="]).listen, vec![sa("[::]:40000")]);
    }

    #[test]
    fn wpex_bind_and_port() {
        assert_eq!(
            parse(&["--bind", "127.0.0.1", "--port", "5000"]).listen,
            vec![sa("127.0.0.1:5000")]
        );
        assert_eq!(
            parse(&["--bind", "", "--port", "1"]).listen,
            vec![sa("[::]:1")]
        );
    }

    #[test]
    fn wpex_added_to_listen() {
        assert_eq!(
            parse(&["--listen", "10.1.1.1:51820", "--port", "5000"]).listen,
            vec![sa("10.1.1.1:51820"), sa("[::]:5000")]
        );
        assert_eq!(
            parse(&[
                "--port",
                "5000",
                "--listen",
                "10.1.1.1:51820",
                "--bind",
                "10.0.0.1"
            ])
            .listen,
            vec![sa("10.1.1.1:51820"), sa("10.0.0.1:5000")]
        );
        assert_eq!(
            parse(&["--listen", "10.1.1.1:51820", "--bind", "10.0.0.1"]).listen,
            vec![sa("10.1.1.1:51820"), sa("10.0.0.1:40000")]
        );
        // The same address twice is listened on once.
        assert_eq!(
            parse(&["--listen", "[::]:40000", "--port", "40000"]).listen,
            vec![sa("[::]:40000")]
        );
    }

    #[test]
    fn wpex_errors() {
        let e = parse_err(&["--port", "0"]);
        assert!(e.starts_with("--port 0: port 0 is not allowed"), "{e}");
        let e = parse_err(&["--bind", "0.0.0.0:40000"]);
        assert!(
            e.starts_with(r#"--bind "0.0.0.0:40000": invalid IP address"#),
            "{e}"
        );
        assert!(e.contains("--port"), "{e}");
        let e = parse_err(&["--bind", "example.com", "--port", "1"]);
        assert!(e.contains(r#""example.com""#), "{e}");
        // Out-of-range and non-numeric ports are refused by clap, naming the value.
        let e = try_parse(&["--port", "70000"]).unwrap_err().to_string();
        assert!(e.contains("70000"), "{e}");
        let e = try_parse(&["--port", "http"]).unwrap_err().to_string();
        assert!(e.contains("http"), "{e}");
    }

    // ---- allow ----

    #[test]
    fn allow_repeated_comma_and_dedup() {
        let c = parse(&["--allow", &k(1), "--allow", &k(2)]);
        assert_eq!(c.allow, vec![key(1), key(2)]);
        assert!(!c.is_open());
        let c = parse(&["--allow", &format!("{},{}", k(3), k(1))]);
        assert_eq!(c.allow, vec![key(3), key(1)]);
        let c = parse(&[
            "--allow",
            &format!("{}, {} ,{}", k(2), k(1), k(2)),
            "--allow",
            &k(1),
        ]);
        assert_eq!(c.allow, vec![key(2), key(1)]);
    }

    #[test]
    fn allow_bad_key() {
        let e = parse_err(&["--allow", "abc"]);
        assert_eq!(
            e,
            "--allow: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        );
        let e = parse_err(&["--allow", &format!("{},nope", k(1))]);
        assert!(e.contains(r#""nope""#), "{e}");
        // A trailing comma is an empty key, not "no key": never silently open.
        let e = parse_err(&["--allow", &format!("{},", k(1))]);
        assert!(e.contains(r#"invalid public key """#), "{e}");
        let bad = format!("{}!", &k(1)[..43]);
        let e = parse_err(&["--allow", &bad]);
        assert!(e.contains(&bad), "{e}");
    }

    // ---- groups ----

    #[test]
    fn groups_repeated_and_semicolon() {
        let c = parse(&[
            "--group",
            &format!("{},{}", k(1), k(2)),
            "--group",
            &format!("{},{},{}", k(3), k(4), k(5)),
        ]);
        assert_eq!(
            c.groups,
            vec![vec![key(1), key(2)], vec![key(3), key(4), key(5)]]
        );
        assert!(c.allow.is_empty());
        assert!(!c.is_open());
        let c = parse(&["--group", &format!("{},{};{},{}", k(1), k(2), k(3), k(4))]);
        assert_eq!(c.groups, vec![vec![key(1), key(2)], vec![key(3), key(4)]]);
    }

    #[test]
    fn group_keys_deduplicated() {
        let c = parse(&["--group", &format!("{},{},{}", k(1), k(2), k(1))]);
        assert_eq!(c.groups, vec![vec![key(1), key(2)]]);
    }

    #[test]
    fn group_errors() {
        let one = k(1);
        let e = parse_err(&["--group", &one]);
        assert_eq!(
            e,
            format!("--group \"{one}\": a group needs at least 2 distinct public keys (got 1)")
        );
        let same = format!("{one},{one}");
        let e = parse_err(&["--group", &same]);
        assert!(e.contains(&format!("{same:?}")), "{e}");
        assert!(e.contains("got 1"), "{e}");
        let e = parse_err(&["--group", &format!("{one},xyz")]);
        assert!(e.starts_with(r#"--group: invalid public key "xyz""#), "{e}");
        let e = parse_err(&["--group", &format!("{one},{};{one}", k(2))]);
        assert!(e.contains(&format!("\"{one}\": a group needs")), "{e}");
    }

    #[test]
    fn allow_and_groups_together() {
        let c = parse(&["--allow", &k(9), "--group", &format!("{},{}", k(1), k(2))]);
        assert_eq!(c.allow, vec![key(9)]);
        assert_eq!(c.groups.len(), 1);
    }

    // ---- scalar settings ----

    #[test]
    fn cookie_values() {
        assert_eq!(parse(&["--cookie", "always"]).cookie, CookieMode::Always);
        assert_eq!(
            parse(&["--cookie", "under-load"]).cookie,
            CookieMode::UnderLoad
        );
        assert_eq!(parse(&["--cookie", "never"]).cookie, CookieMode::Never);
        let e = try_parse(&["--cookie", "sometimes"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes"), "{e}");
        assert!(e.contains("under-load"), "{e}");
        assert_eq!(CookieMode::UnderLoad.to_string(), "under-load");
        assert_eq!(CookieMode::Always.to_string(), "always");
        assert_eq!(CookieMode::Never.to_string(), "never");
    }

    #[test]
    fn broadcast_rate_values() {
        assert_eq!(parse(&["--broadcast-rate", "0"]).broadcast_rate, None);
        assert_eq!(parse(&["--broadcast-rate", "5"]).broadcast_rate, Some(5));
        assert_eq!(
            parse(&["--broadcast-rate", "4294967295"]).broadcast_rate,
            Some(u32::MAX)
        );
        let e = try_parse(&["--broadcast-rate", "-1"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn threads_values() {
        assert_eq!(parse(&["--threads", "1"]).threads, 1);
        assert_eq!(parse(&["--threads", "1024"]).threads, 1024);
        assert_eq!(
            parse_err(&["--threads", "0"]),
            "--threads 0: must be at least 1"
        );
        assert_eq!(
            parse_err(&["--threads", "1025"]),
            "--threads 1025: must be at most 1024"
        );
        let e = try_parse(&["--threads", "many"]).unwrap_err().to_string();
        assert!(e.contains("many"), "{e}");
    }

    #[test]
    fn backend_values() {
        assert_eq!(parse(&["--backend", "auto"]).backend, BackendChoice::Auto);
        assert_eq!(parse(&["--backend", "uring"]).backend, BackendChoice::Uring);
        assert_eq!(parse(&["--backend", "mmsg"]).backend, BackendChoice::Mmsg);
        assert_eq!(
            parse(&["run", "--backend", "mmsg"]).backend,
            BackendChoice::Mmsg
        );
        let e = try_parse(&["--backend", "epoll"]).unwrap_err().to_string();
        assert!(e.contains("epoll"), "{e}");
        assert!(e.contains("uring"), "{e}");
        for b in [
            BackendChoice::Auto,
            BackendChoice::Uring,
            BackendChoice::Mmsg,
        ] {
            assert_eq!(parse(&["--backend", b.as_str()]).backend, b);
            assert_eq!(b.to_string(), b.as_str());
        }
        assert!(parse(&["--backend", "uring"])
            .summary()
            .contains("\nbackend: uring\n"));
    }

    #[test]
    fn backend_in_file() {
        let c = Config::from_toml_str("backend = \"mmsg\"").unwrap();
        assert_eq!(c.backend, BackendChoice::Mmsg);
        // The flag wins over the file.
        let f = TempFile::new("backend = \"mmsg\"");
        assert_eq!(
            parse(&["--config", f.path(), "--backend", "uring"]).backend,
            BackendChoice::Uring
        );
        assert_eq!(parse(&["--config", f.path()]).backend, BackendChoice::Mmsg);
        let e = Config::from_toml_str("threads = 1\nbackend = \"io_uring\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: line 2: "), "{e}");
        assert!(e.contains("io_uring"), "{e}");
        assert!(e.contains("mmsg"), "{e}");
    }

    #[test]
    fn offload_switches() {
        let c = parse(&["--gso", "off"]);
        assert!(!c.gso && c.gro);
        let c = parse(&["--gro", "off"]);
        assert!(c.gso && !c.gro);
        let c = parse(&["run", "--gso", "off", "--gro", "off"]);
        assert!(!c.gso && !c.gro);
        assert!(c.summary().contains("\noffload: gso off, gro off\n"));
        let c = parse(&["--gso", "on", "--gro", "on"]);
        assert!(c.gso && c.gro);
        for bad in ["--gso", "--gro"] {
            let e = try_parse(&[bad, "maybe"]).unwrap_err().to_string();
            assert!(e.contains("maybe"), "{e}");
            assert!(e.contains("off"), "{e}");
        }
    }

    #[test]
    fn offload_switches_in_file() {
        let c = Config::from_toml_str("gso = \"off\"\ngro = \"off\"").unwrap();
        assert!(!c.gso && !c.gro);
        // The flag wins over the file.
        let f = TempFile::new("gso = \"off\"\ngro = \"off\"");
        let c = parse(&["--config", f.path(), "--gro", "on"]);
        assert!(!c.gso && c.gro);
        let e = Config::from_toml_str("threads = 1\ngso = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: line 2: "), "{e}");
        assert!(e.contains("yes"), "{e}");
        let e = Config::from_toml_str("gro = true").unwrap_err().to_string();
        assert!(e.starts_with("config: line 1: "), "{e}");
    }

    #[test]
    fn log_level_and_debug() {
        assert_eq!(
            parse(&["--log-level", "trace"]).log_level,
            log::LevelFilter::Trace
        );
        assert_eq!(
            parse(&["--log-level", "error"]).log_level,
            log::LevelFilter::Error
        );
        assert_eq!(
            parse(&["--log-level", "warn"]).log_level,
            log::LevelFilter::Warn
        );
        assert_eq!(parse(&["--debug"]).log_level, log::LevelFilter::Debug);
        // --debug raises to at least debug; it never lowers trace.
        assert_eq!(
            parse(&["--debug", "--log-level", "warn"]).log_level,
            log::LevelFilter::Debug
        );
        assert_eq!(
            parse(&["--log-level", "trace", "--debug"]).log_level,
            log::LevelFilter::Trace
        );
        let e = try_parse(&["--log-level", "loud"]).unwrap_err().to_string();
        assert!(e.contains("loud"), "{e}");
    }

    #[test]
    fn stats_interval_values() {
        assert_eq!(parse(&["--stats-interval", "0"]).stats_interval, None);
        assert_eq!(
            parse(&["--stats-interval", "15"]).stats_interval,
            Some(Duration::from_secs(15))
        );
    }

    // ---- configuration file ----

    const FULL_FILE: &str = r#"
listen = ["127.0.0.1:1111", "[::1]:2222", "127.0.0.1:1111"]
allow = ["K1", "K2", "K1"]
groups = [["K3", "K4"], ["K5", "K6", "K5"]]
cookie = "always"
broadcast_rate = 7
threads = 3
backend = "uring"
gso = "off"
gro = "off"
log_level = "warn"
stats_interval = 9
"#;

    fn full_file() -> String {
        FULL_FILE
            .replace("K1", &k(1))
            .replace("K2", &k(2))
            .replace("K3", &k(3))
            .replace("K4", &k(4))
            .replace("K5", &k(5))
            .replace("K6", &k(6))
    }

    fn check_full_file(c: &Config) {
        assert_eq!(c.listen, vec![sa("127.0.0.1:1111"), sa("[::1]:2222")]);
        assert_eq!(c.allow, vec![key(1), key(2)]);
        assert_eq!(c.groups, vec![vec![key(3), key(4)], vec![key(5), key(6)]]);
        assert_eq!(c.cookie, CookieMode::Always);
        assert_eq!(c.broadcast_rate, Some(7));
        assert_eq!(c.threads, 3);
        assert_eq!(c.backend, BackendChoice::Uring);
        assert!(!c.gso && !c.gro);
        assert_eq!(c.log_level, log::LevelFilter::Warn);
        assert_eq!(c.stats_interval, Some(Duration::from_secs(9)));
    }

    #[test]
    fn file_values() {
        let text = full_file();
        check_full_file(&Config::from_toml_str(&text).unwrap());
        let f = TempFile::new(&text);
        check_full_file(&parse(&["--config", f.path()]));
        check_full_file(&parse(&["check-config", "--config", f.path()]));
    }

    #[test]
    fn file_zero_means_off_or_unlimited() {
        let c = Config::from_toml_str("broadcast_rate = 0\nstats_interval = 0").unwrap();
        assert_eq!(c.broadcast_rate, None);
        assert_eq!(c.stats_interval, None);
    }

    #[test]
    fn file_wpex_bind_port() {
        let c = Config::from_toml_str("port = 40001").unwrap();
        assert_eq!(c.listen, vec![sa("[::]:40001")]);
        let c = Config::from_toml_str("bind = \"0.0.0.0\"").unwrap();
        assert_eq!(c.listen, vec![sa("0.0.0.0:40000")]);
        let c = Config::from_toml_str("bind = \"\"\nport = 7").unwrap();
        assert_eq!(c.listen, vec![sa("[::]:7")]);
        let c = Config::from_toml_str("listen = [\"10.0.0.1:1\"]\nbind = \"10.0.0.2\"\nport = 2")
            .unwrap();
        assert_eq!(c.listen, vec![sa("10.0.0.1:1"), sa("10.0.0.2:2")]);
    }

    #[test]
    fn file_empty_lists_mean_unset() {
        let c = Config::from_toml_str("listen = []\nallow = []\ngroups = []").unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn flags_override_file() {
        let f = TempFile::new(&full_file());
        let c = parse(&[
            "--config",
            f.path(),
            "--cookie",
            "never",
            "--broadcast-rate",
            "0",
            "--threads",
            "5",
            "--log-level",
            "debug",
            "--stats-interval",
            "0",
        ]);
        assert_eq!(c.cookie, CookieMode::Never);
        assert_eq!(c.broadcast_rate, None);
        assert_eq!(c.threads, 5);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert_eq!(c.stats_interval, None);
        // Lists not given on the command line still come from the file.
        assert_eq!(c.listen, vec![sa("127.0.0.1:1111"), sa("[::1]:2222")]);
        assert_eq!(c.allow, vec![key(1), key(2)]);
        assert_eq!(c.groups.len(), 2);
    }

    #[test]
    fn flag_lists_replace_file_lists() {
        let f = TempFile::new(&full_file());
        let c = parse(&[
            "--config",
            f.path(),
            "--listen",
            "127.0.0.1:9",
            "--allow",
            &k(7),
            "--group",
            &format!("{},{}", k(8), k(9)),
        ]);
        assert_eq!(c.listen, vec![sa("127.0.0.1:9")]);
        assert_eq!(c.allow, vec![key(7)]);
        assert_eq!(c.groups, vec![vec![key(8), key(9)]]);
        // --port alone is a listen setting too: it replaces the file's listen.
        let c = parse(&["--config", f.path(), "--port", "4"]);
        assert_eq!(c.listen, vec![sa("[::]:4")]);
        // Scalars not given on the command line still come from the file.
        assert_eq!(c.threads, 3);
    }

    #[test]
    fn flag_listen_replaces_file_bind_port() {
        let f = TempFile::new("bind = \"10.0.0.2\"\nport = 2\n");
        assert_eq!(
            parse(&["--config", f.path()]).listen,
            vec![sa("10.0.0.2:2")]
        );
        let c = parse(&["--config", f.path(), "--listen", "127.0.0.1:3"]);
        assert_eq!(c.listen, vec![sa("127.0.0.1:3")]);
    }

    #[test]
    fn debug_flag_raises_file_level() {
        let f = TempFile::new("log_level = \"error\"");
        assert_eq!(
            parse(&["--config", f.path()]).log_level,
            log::LevelFilter::Error
        );
        assert_eq!(
            parse(&["--config", f.path(), "--debug"]).log_level,
            log::LevelFilter::Debug
        );
    }

    #[test]
    fn file_unknown_key() {
        let (_f, e) = file_err("# comment\nthreads = 2\nlissten = [\"[::]:1\"]\n");
        assert!(e.contains(": line 3: unknown key \"lissten\""), "{e}");
        assert!(e.contains("did you mean \"listen\""), "{e}");
        let e = Config::from_toml_str("[relay]\nport = 1")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config: line 1: unknown key \"relay\" (expected one of: listen,"),
            "{e}"
        );
        let e = Config::from_toml_str("group = []").unwrap_err().to_string();
        assert!(e.contains("\"group\" (did you mean \"groups\"?"), "{e}");
    }

    #[test]
    fn file_missing() {
        let path = std::env::temp_dir().join(format!(
            "wgconfig-test-{}-does-not-exist.toml",
            std::process::id()
        ));
        let path = path.to_str().unwrap();
        let e = parse_err(&["--config", path]);
        assert!(
            e.starts_with(&format!("config file {path}: cannot read: ")),
            "{e}"
        );
        assert!(e.contains("os error 2"), "{e}");
        // A directory is not a config file either.
        let dir = std::env::temp_dir();
        let e = parse_err(&["--config", dir.to_str().unwrap()]);
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn file_not_utf8() {
        let f = TempFile::new("");
        std::fs::write(&f.0, b"threads = \xff\n").unwrap();
        let e = parse_err(&["--config", f.path()]);
        assert!(e.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn file_bad_values_name_line_and_value() {
        let (_f, e) = file_err("allow = [\n  \"abc\",\n]\n");
        assert!(e.ends_with(
            "line 2: allow: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        ), "{e}");

        let (_f, e) = file_err("\nlisten = [\"1.2.3.4\"]");
        assert!(e.ends_with(
            "line 2: listen \"1.2.3.4\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"
        ), "{e}");

        let (_f, e) = file_err("listen = [\"[::]:0\"]");
        assert!(
            e.contains("line 1: listen \"[::]:0\": port 0 is not allowed"),
            "{e}"
        );

        let (_f, e) = file_err("port = 0");
        assert!(e.contains("line 1: port 0: port 0 is not allowed"), "{e}");

        let (_f, e) = file_err("bind = \"nowhere\"");
        assert!(
            e.contains("line 1: bind \"nowhere\": invalid IP address"),
            "{e}"
        );

        let (_f, e) = file_err("cookie = \"never\"\nthreads = 0");
        assert!(e.ends_with("line 2: threads 0: must be at least 1"), "{e}");

        let (_f, e) = file_err("threads = 5000");
        assert!(
            e.ends_with("line 1: threads 5000: must be at most 1024"),
            "{e}"
        );

        let one = k(1);
        let (_f, e) = file_err(&format!("groups = [\n  [\"{one}\"],\n]"));
        assert!(e.ends_with(&format!(
            "line 2: groups entry [\"{one}\"]: a group needs at least 2 distinct public keys (got 1)"
        )), "{e}");

        let (_f, e) = file_err(&format!("groups = [[\"{one}\", \"{one}\"]]"));
        assert!(e.contains("got 1"), "{e}");

        let (_f, e) = file_err(&format!("groups = [[\"{one}\", \"zzz\"]]"));
        assert!(
            e.contains("line 1: groups: invalid public key \"zzz\""),
            "{e}"
        );
    }

    #[test]
    fn file_type_and_syntax_errors() {
        let e = Config::from_toml_str("threads = \"two\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: line 1: "), "{e}");
        assert!(e.contains("two"), "{e}");
        let e = Config::from_toml_str("\nport = 70000")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: line 2: "), "{e}");
        assert!(e.contains("70000"), "{e}");
        let e = Config::from_toml_str("threads = -1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("-1"), "{e}");
        let e = Config::from_toml_str("cookie = \"sometimes\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sometimes"), "{e}");
        assert!(e.contains("under-load"), "{e}");
        let e = Config::from_toml_str("log_level = \"loud\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("loud"), "{e}");
        let e = Config::from_toml_str("allow = \"K\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
        let e = Config::from_toml_str("threads = 2\nthreads = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = Config::from_toml_str("listen = [\"[::]:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config: "), "{e}");
        for text in ["threads = \"two\"", "listen = [", "= 1", "allow = [1]"] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn file_errors_reported_even_when_overridden() {
        let f = TempFile::new("threads = 0");
        let e = parse_err(&["--config", f.path(), "--threads", "2"]);
        assert!(e.contains("threads 0"), "{e}");
    }

    // ---- summary ----

    #[test]
    fn summary_open_defaults() {
        let c = Config {
            threads: 4,
            ..Config::default()
        };
        assert_eq!(
            c.summary(),
            "listen: [::]:51820\n\
             mode: open (any public key is relayed)\n\
             servers: none\n\
             peers: none\n\
             awg: plain\n\
             cookie replies: under-load\n\
             broadcast rate: 1000 handshake initiation copies/s\n\
             threads: 4\n\
             backend: auto\n\
             offload: gso on, gro on\n\
             steering: on\n\
             state file: none\n\
             control socket: /run/wgrelay/control.sock\n\
             log level: info\n\
             stats: every 60s"
        );
    }

    #[test]
    fn summary_servers_peers_awg_and_wgproxy_timeout() {
        let mut awg = AwgParams::plain();
        awg.jc = 4;
        awg.jmin = 40;
        awg.jmax = 70;
        awg.s1 = 20;
        let c = Config {
            threads: 1,
            servers: vec![
                Server {
                    addr: "vpn.example.net:51820".parse().unwrap(),
                    key: key(1),
                },
                Server {
                    addr: "[2001:db8::1]:5".parse().unwrap(),
                    key: key(2),
                },
            ],
            peers: vec![
                PortPeer {
                    listen: sa("[::]:10001"),
                    key: key(3),
                    endpoint: None,
                    uapi: None,
                    awg: None,
                },
                PortPeer {
                    listen: sa("127.0.0.1:10002"),
                    key: key(4),
                    endpoint: Some(sa("192.0.2.7:51820")),
                    uapi: None,
                    awg: None,
                },
                PortPeer {
                    listen: sa("[::]:10003"),
                    key: key(5),
                    endpoint: None,
                    uapi: Some("wg0".into()),
                    awg: Some(awg),
                },
            ],
            awg,
            wgproxy_timeout: Some(Duration::from_secs(30)),
            ..Config::default()
        };
        assert_eq!(
            c.summary(),
            "listen: [::]:51820\n\
             mode: open (any public key is relayed)\n\
             servers: AQEBAQEB... -> vpn.example.net:51820, AgICAgIC... -> [2001:db8::1]:5\n\
             peers: [::]:10001 -> AwMDAwMD... (learned), \
             127.0.0.1:10002 -> BAQEBAQE... (endpoint 192.0.2.7:51820), \
             [::]:10003 -> BQUFBQUF... (uapi wg0, awg jc=4 jmin=40 jmax=70 s1=20 s2=0 s3=0 s4=0 h1=1 h2=2 h3=3 h4=4)\n\
             awg: jc=4 jmin=40 jmax=70 s1=20 s2=0 s3=0 s4=0 h1=1 h2=2 h3=3 h4=4\n\
             cookie replies: under-load\n\
             broadcast rate: 1000 handshake initiation copies/s\n\
             threads: 1\n\
             backend: auto\n\
             offload: gso on, gro on\n\
             steering: on\n\
             state file: none\n\
             control socket: /run/wgrelay/control.sock\n\
             log level: info\n\
             stats: every 60s\n\
             wgproxy timeout: 30s (WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)"
        );
    }

    #[test]
    fn state_file_from_flag_and_file() {
        assert_eq!(parse(&[]).state_file, None);
        // (its directory must exist: check_state_file)
        let c = parse(&["--state-file", "/tmp/wgrelay-state"]);
        assert_eq!(
            c.state_file.as_deref(),
            Some(std::path::Path::new("/tmp/wgrelay-state"))
        );
        assert!(c.summary().contains("\nstate file: /tmp/wgrelay-state\n"));
        let c = Config::from_toml_str("state_file = \"/tmp/s\"").unwrap();
        assert_eq!(
            c.state_file.as_deref(),
            Some(std::path::Path::new("/tmp/s"))
        );
    }

    #[test]
    fn control_socket_from_flag_and_file_and_off() {
        let path = |c: &Config| c.control_socket.clone();
        assert_eq!(path(&parse(&[])), Some(DEFAULT_CONTROL_SOCKET.into()));
        let c = parse(&["--control-socket", "/tmp/w.sock"]);
        assert_eq!(path(&c), Some("/tmp/w.sock".into()));
        assert!(c.summary().contains("\ncontrol socket: /tmp/w.sock\n"));
        let c = parse(&["--control-socket", "off"]);
        assert_eq!(path(&c), None);
        assert!(c.summary().contains("\ncontrol socket: off\n"));
        let c = Config::from_toml_str("control_socket = \"/tmp/f.sock\"").unwrap();
        assert_eq!(path(&c), Some("/tmp/f.sock".into()));
        let c = Config::from_toml_str("control_socket = \"off\"").unwrap();
        assert_eq!(path(&c), None);
    }

    #[test]
    fn summary_modes() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:1,[::1]:2",
            "--allow",
            &k(1),
            "--broadcast-rate",
            "0",
            "--stats-interval",
            "0",
            "--cookie",
            "never",
        ]);
        let s = c.summary();
        assert!(s.contains("listen: 127.0.0.1:1, [::1]:2\n"), "{s}");
        assert!(s.contains("mode: allow-list (1 key)\n"), "{s}");
        assert!(s.contains("broadcast rate: unlimited\n"), "{s}");
        assert!(s.contains("cookie replies: never\n"), "{s}");
        assert!(s.ends_with("stats: off"), "{s}");

        let c = parse(&["--group", &format!("{},{};{},{}", k(1), k(2), k(2), k(3))]);
        assert!(c
            .summary()
            .contains("mode: groups (2 groups, 3 distinct keys)\n"));

        let c = parse(&[
            "--allow",
            &format!("{},{}", k(1), k(4)),
            "--group",
            &format!("{},{}", k(1), k(2)),
        ]);
        assert!(c
            .summary()
            .contains("mode: allow-list (2 keys) + groups (1 group, 2 distinct keys)\n"));
    }

    // ---- proxy servers ----

    /// `Config::from_toml_str`'s error, which must be one line.
    fn toml_err(text: &str) -> String {
        let e = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(!e.contains('\n'), "multi-line error: {e}");
        e
    }

    fn host_port(s: &str) -> HostPort {
        s.parse().unwrap()
    }

    fn server(addr: &str, i: u8) -> Server {
        Server {
            addr: host_port(addr),
            key: key(i),
        }
    }

    #[test]
    fn servers_from_flags_pair_in_order() {
        let c = parse(&[
            "--server",
            "vpn.example.net:51820",
            "--server-key",
            &k(1),
            "--server",
            "192.0.2.1:1,[2001:db8::1]:2",
            "--server-key",
            &format!("{}, {}", k(2), k(3)),
        ]);
        assert_eq!(
            c.servers,
            vec![
                server("vpn.example.net:51820", 1),
                server("192.0.2.1:1", 2),
                server("[2001:db8::1]:2", 3),
            ]
        );
        assert_eq!(c.servers[0].addr.name(), Some("vpn.example.net"));
        assert!(c.summary().contains(
            "\nservers: AQEBAQEB... -> vpn.example.net:51820, AgICAgIC... -> 192.0.2.1:1, AwMDAwMD... -> [2001:db8::1]:2\n"
        ));
        assert!(parse(&[]).servers.is_empty());
    }

    #[test]
    fn server_flag_errors() {
        assert_eq!(
            parse_err(&["--server", "a.example:1"]),
            "--server and --server-key pair up in order, one key per server: got 1 server and 0 server keys"
        );
        assert_eq!(
            parse_err(&["--server", "a.example:1", "--server-key", &format!("{},{}", k(1), k(2))]),
            "--server and --server-key pair up in order, one key per server: got 1 server and 2 server keys"
        );
        assert_eq!(
            parse_err(&["--server-key", &k(1)]),
            "--server and --server-key pair up in order, one key per server: got 0 servers and 1 server key"
        );
        assert_eq!(
            parse_err(&["--server", "a.example", "--server-key", &k(1)]),
            "--server: invalid upstream address \"a.example\": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"
        );
        // A bad value is named before the counts are compared.
        let e = parse_err(&["--server", "a.example:0"]);
        assert!(
            e.starts_with(
                "--server: invalid upstream address \"a.example:0\": port 0 cannot be sent to"
            ),
            "{e}"
        );
        let e = parse_err(&["--server", "::1:51820", "--server-key", &k(1)]);
        assert!(e.contains("must be in brackets"), "{e}");
        assert_eq!(
            parse_err(&["--server", "a.example:1", "--server-key", "abc"]),
            "--server-key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        );
        assert_eq!(
            parse_err(&[
                "--server",
                "a.example:1,b.example:2",
                "--server-key",
                &format!("{},{}", k(1), k(1)),
            ]),
            format!(
                "--server-key {}: given for two servers (a key chooses one server)",
                k(1)
            )
        );
        // An empty list entry is an error, not "no server".
        let e = parse_err(&["--server", "a.example:1,", "--server-key", &k(1)]);
        assert!(
            e.contains("invalid upstream address \"\": it is empty"),
            "{e}"
        );
    }

    #[test]
    fn servers_in_file() {
        let text = format!(
            "[[server]]\naddress = \"vpn.example.net:51820\"\npublic_key = \"{}\"\n\n[[server]]\npublic_key = \"{}\"\naddress = \"[2001:db8::1]:51820\"\n",
            k(1),
            k(2)
        );
        let c = Config::from_toml_str(&text).unwrap();
        assert_eq!(
            c.servers,
            vec![
                server("vpn.example.net:51820", 1),
                server("[2001:db8::1]:51820", 2)
            ]
        );
        // Flags replace the file's servers whole; the file's are still validated.
        let f = TempFile::new(&text);
        let c = parse(&[
            "--config",
            f.path(),
            "--server",
            "c.example:3",
            "--server-key",
            &k(3),
        ]);
        assert_eq!(c.servers, vec![server("c.example:3", 3)]);
        assert_eq!(parse(&["--config", f.path()]).servers.len(), 2);
        let f = TempFile::new("[[server]]\naddress = \"x\"\n");
        let e = parse_err(&[
            "--config",
            f.path(),
            "--server",
            "c.example:3",
            "--server-key",
            &k(3),
        ]);
        assert!(e.ends_with("line 2: server address: invalid upstream address \"x\": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"), "{e}");
    }

    #[test]
    fn server_file_errors() {
        let one = k(1);
        assert_eq!(
            toml_err(&format!(
                "threads = 1\n[[server]]\npublic_key = \"{one}\"\n"
            )),
            "config: line 2: server: missing address = \"HOST:PORT\""
        );
        assert_eq!(
            toml_err("[[server]]\naddress = \"a.example:1\"\n"),
            "config: line 1: server: missing public_key = \"...\" (the server's base64 public key)"
        );
        assert_eq!(
            toml_err("[[server]]\naddress = \"a.example:1\"\npublic_key = \"abc\"\n"),
            "config: line 3: server public_key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        );
        assert_eq!(
            toml_err(&format!("[[server]]\naddress = \"1.2.3:1\"\npublic_key = \"{one}\"\n")),
            "config: line 2: server address: invalid upstream address \"1.2.3:1\": host looks like an IPv4 address but is not a valid one (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"
        );
        assert_eq!(
            toml_err(&format!(
                "[[server]]\naddress = \"a.example:1\"\npublic_key = \"{one}\"\n[[server]]\naddress = \"b.example:1\"\npublic_key = \"{one}\"\n"
            )),
            format!("config: line 6: server public_key {one}: already the key of the server on line 3 (a key chooses one server)")
        );
        assert_eq!(
            toml_err("[[server]]\nadress = \"a.example:1\"\n"),
            "config: line 2: server: unknown key \"adress\" (did you mean \"address\"? expected one of: address, public_key)"
        );
        assert_eq!(
            toml_err("server = \"a.example:1\""),
            "config: line 1: server: invalid type: string \"a.example:1\", expected an array (write one [[server]] table per server)"
        );
        assert_eq!(
            toml_err("threads = 1\n[server]\naddress = \"a.example:1\"\n"),
            "config: line 2: server: invalid type: map, expected an array (write one [[server]] table per server)"
        );
        let e = toml_err("[[server]]\naddress = 5\n");
        assert!(
            e.starts_with("config: line 2: server address: invalid type: integer `5`"),
            "{e}"
        );
    }

    // ---- port-per-peer ----

    fn port_peer(listen: &str, i: u8) -> PortPeer {
        PortPeer {
            listen: sa(listen),
            key: key(i),
            endpoint: None,
            uapi: None,
            awg: None,
        }
    }

    #[test]
    fn peers_from_flags() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:51820,[::1]:51820",
            "--peer",
            &format!("10001={}", k(1)),
            "--peer",
            &format!("[::1]:10002={}@192.0.2.7:51820", k(2)),
            "--peer",
            &format!(
                "10003={}@uapi:wg0, 10004={}@uapi:/run/wireguard/wg1.sock",
                k(3),
                k(4)
            ),
        ]);
        let mut expected = vec![
            port_peer("127.0.0.1:10001", 1),
            port_peer("[::1]:10002", 2),
            port_peer("127.0.0.1:10003", 3),
            port_peer("127.0.0.1:10004", 4),
        ];
        expected[1].endpoint = Some(sa("192.0.2.7:51820"));
        expected[2].uapi = Some("wg0".into());
        expected[3].uapi = Some("/run/wireguard/wg1.sock".into());
        assert_eq!(c.peers, expected);
        assert!(c.summary().contains(
            "\npeers: 127.0.0.1:10001 -> AQEBAQEB... (learned), [::1]:10002 -> AgICAgIC... (endpoint 192.0.2.7:51820), \
             127.0.0.1:10003 -> AwMDAwMD... (uapi wg0), 127.0.0.1:10004 -> BAQEBAQE... (uapi /run/wireguard/wg1.sock)\n"
        ));
        // A bare port goes on the host of the first listen address, the default one too.
        assert_eq!(
            parse(&["--peer", &format!("10001={}", k(1))]).peers,
            vec![port_peer("[::]:10001", 1)]
        );
        assert!(parse(&[]).peers.is_empty());
    }

    #[test]
    fn peer_flag_errors() {
        let one = k(1);
        let syntax = "expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE";
        assert_eq!(
            parse_err(&["--peer", "10001"]),
            format!("--peer \"10001\": {syntax}")
        );
        assert_eq!(parse_err(&["--peer", ""]), format!("--peer \"\": {syntax}"));
        assert_eq!(
            parse_err(&["--peer", &format!("0={one}")]),
            format!("--peer \"0={one}\": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)")
        );
        assert_eq!(
            parse_err(&["--peer", &format!("127.0.0.1:0={one}")]),
            format!("--peer \"127.0.0.1:0={one}\": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)")
        );
        assert_eq!(
            parse_err(&["--peer", &format!("70000={one}")]),
            format!("--peer \"70000={one}\": port 70000 is out of range (1-65535)")
        );
        assert_eq!(
            parse_err(&["--peer", &format!("host:1={one}")]),
            format!("--peer \"host:1={one}\": \"host:1\" is neither a PORT nor an ADDR:PORT (IPv6 as [ADDR]:PORT)")
        );
        assert_eq!(
            parse_err(&["--peer", "5=abc"]),
            "--peer: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        );
        assert_eq!(
            parse_err(&["--peer", &format!("5={one}@host:1")]),
            format!("--peer \"5={one}@host:1\": endpoint \"host:1\": invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT, or uapi:DEVICE for a local WireGuard device)")
        );
        assert_eq!(
            parse_err(&["--peer", &format!("5={one}@192.0.2.1:0")]),
            format!("--peer \"5={one}@192.0.2.1:0\": endpoint \"192.0.2.1:0\": port 0 cannot be sent to")
        );
        assert_eq!(
            parse_err(&["--peer", &format!("5={one}@0.0.0.0:5")]),
            format!("--peer \"5={one}@0.0.0.0:5\": endpoint \"0.0.0.0:5\": 0.0.0.0 is not an address to send to")
        );
        assert_eq!(
            parse_err(&["--peer", &format!("5={one}@uapi:wg 0")]),
            format!("--peer \"5={one}@uapi:wg 0\": uapi \"wg 0\": expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket")
        );
        let e = parse_err(&["--peer", &format!("5={one}@uapi:run/wg0.sock")]);
        assert!(e.ends_with("or an absolute path to its UAPI socket"), "{e}");
        let e = parse_err(&["--peer", &format!("5={one}@uapi:/")]);
        assert!(
            e.ends_with("uapi \"/\": not a path to a UAPI socket"),
            "{e}"
        );
        // Two peers may not share a key.
        assert_eq!(
            parse_err(&["--peer", &format!("5={one},6={one}")]),
            format!("--peer \"6={one}\": its public key is already the key of --peer \"5={one}\" (a key has one relay port)")
        );
    }

    #[test]
    fn peer_ports_may_not_overlap() {
        let (one, two) = (k(1), k(2));
        // Not a relay listen address: the default [::]:51820 ...
        assert_eq!(
            parse_err(&["--peer", &format!("51820={one}")]),
            format!("--peer \"51820={one}\": [::]:51820 overlaps the relay listen address [::]:51820 (a peer needs a port of its own)")
        );
        // ... nor covered by a wildcard one, or covering one.
        let e = parse_err(&[
            "--listen",
            "127.0.0.1:7",
            "--peer",
            &format!("0.0.0.0:7={one}"),
        ]);
        assert!(e.ends_with("0.0.0.0:7 overlaps the relay listen address 127.0.0.1:7 (a peer needs a port of its own)"), "{e}");
        let e = parse_err(&[
            "--listen",
            "[::]:7",
            "--peer",
            &format!("127.0.0.1:7={one}"),
        ]);
        assert!(
            e.contains("127.0.0.1:7 overlaps the relay listen address [::]:7"),
            "{e}"
        );
        // Different addresses, or ports, are fine.
        let c = parse(&[
            "--listen",
            "127.0.0.1:7,0.0.0.0:8",
            "--peer",
            &format!("127.0.0.2:7={one},[::1]:8={two}"),
        ]);
        assert_eq!(
            c.peers,
            vec![port_peer("127.0.0.2:7", 1), port_peer("[::1]:8", 2)]
        );
        // Not another peer's port.
        assert_eq!(
            parse_err(&["--peer", &format!("5={one}"), "--peer", &format!("5={two}")]),
            format!("--peer \"5={two}\": [::]:5 overlaps the port of --peer \"5={one}\" ([::]:5)")
        );
        let e = parse_err(&[
            "--listen",
            "[::]:1",
            "--peer",
            &format!("5={one},127.0.0.1:5={two}"),
        ]);
        assert!(
            e.ends_with(&format!(
                "127.0.0.1:5 overlaps the port of --peer \"5={one}\" ([::]:5)"
            )),
            "{e}"
        );
    }

    #[test]
    fn sockets_overlap_rules() {
        let o = |a: &str, b: &str| sockets_overlap(sa(a), sa(b));
        assert!(o("127.0.0.1:1", "127.0.0.1:1"));
        assert!(!o("127.0.0.1:1", "127.0.0.1:2"));
        assert!(!o("127.0.0.1:1", "127.0.0.2:1"));
        assert!(o("0.0.0.0:1", "127.0.0.1:1"));
        assert!(o("127.0.0.1:1", "0.0.0.0:1"));
        assert!(!o("0.0.0.0:1", "[::1]:1"));
        assert!(o("0.0.0.0:1", "[::ffff:127.0.0.1]:1"));
        assert!(o("[::]:1", "127.0.0.1:1"));
        assert!(o("[::]:1", "[::1]:1"));
        assert!(o("[::]:1", "0.0.0.0:1"));
        assert!(!o("[::1]:1", "[::2]:1"));
    }

    #[test]
    fn peers_in_file() {
        let text = format!(
            "listen = [\"10.0.0.1:51820\"]\n\
             [[peer]]\nport = 10001\npublic_key = \"{}\"\n\
             [[peer]]\nlisten = \"[::1]:10002\"\npublic_key = \"{}\"\nendpoint = \"[2001:db8::7]:51820\"\n\
             [[peer]]\nport = 10003\npublic_key = \"{}\"\nuapi = \"wg0\"\nawg = {{ jc = 4, jmin = 40, jmax = 70, s1 = 20, h1 = \"100000-100099\", h2 = 200000, h3 = 300000, h4 = 400000 }}\n\
             [[peer]]\nport = 10004\npublic_key = \"{}\"\n[peer.awg]\ns2 = 30\n",
            k(1),
            k(2),
            k(3),
            k(4)
        );
        let c = Config::from_toml_str(&text).unwrap();
        assert_eq!(c.peers.len(), 4);
        assert_eq!(c.peers[0], port_peer("10.0.0.1:10001", 1));
        let mut p = port_peer("[::1]:10002", 2);
        p.endpoint = Some(sa("[2001:db8::7]:51820"));
        assert_eq!(c.peers[1], p);
        assert_eq!(c.peers[2].listen, sa("10.0.0.1:10003"));
        assert_eq!(c.peers[2].uapi.as_deref(), Some("wg0"));
        let awg = c.peers[2].awg.unwrap();
        assert_eq!(
            (awg.jc, awg.jmin, awg.jmax, awg.s1, awg.s2),
            (4, 40, 70, 20, 0)
        );
        assert_eq!(awg.h1.to_string(), "100000-100099");
        assert_eq!(awg.h4.to_string(), "400000");
        assert_eq!(c.peers[3].awg.map(|a| a.s2), Some(30));
        assert_eq!(c.awg, AwgParams::plain());
        // Bare ports follow the first effective listen address, here the flag's.
        let f = TempFile::new(&text);
        let c = parse(&["--config", f.path(), "--listen", "10.0.0.2:1"]);
        assert_eq!(c.peers[0].listen, sa("10.0.0.2:10001"));
        assert_eq!(c.peers[1].listen, sa("[::1]:10002"));
        // --peer replaces the file's peers whole.
        let c = parse(&["--config", f.path(), "--peer", &format!("9={}", k(9))]);
        assert_eq!(c.peers, vec![port_peer("10.0.0.1:9", 9)]);
        // An empty awg table means the relay-wide parameters.
        let c = Config::from_toml_str(&format!(
            "[[peer]]\nport = 5\npublic_key = \"{}\"\nawg = {{}}\n",
            k(1)
        ))
        .unwrap();
        assert_eq!(c.peers[0].awg, None);
    }

    #[test]
    fn peer_file_errors() {
        let (one, two) = (k(1), k(2));
        assert_eq!(
            toml_err(&format!("[[peer]]\npublic_key = \"{one}\"\n")),
            "config: line 1: peer: missing port = N (on the host of the first listen address) or listen = \"ADDR:PORT\""
        );
        assert_eq!(
            toml_err(&format!(
                "[[peer]]\nport = 5\nlisten = \"127.0.0.1:5\"\npublic_key = \"{one}\"\n"
            )),
            "config: line 2: peer: give port = N or listen = \"ADDR:PORT\", not both"
        );
        assert_eq!(
            toml_err("threads = 1\n\n[[peer]]\nport = 5\n"),
            "config: line 3: peer: missing public_key = \"...\" (the responder's base64 public key)"
        );
        assert_eq!(
            toml_err(&format!("[[peer]]\nport = 0\npublic_key = \"{one}\"\n")),
            "config: line 2: peer port 0: port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"
        );
        assert_eq!(
            toml_err(&format!("[[peer]]\nlisten = \"x\"\npublic_key = \"{one}\"\n")),
            "config: line 2: peer listen \"x\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"
        );
        assert_eq!(
            toml_err("[[peer]]\nport = 5\npublic_key = \"abc\"\n"),
            "config: line 3: peer public_key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        );
        assert_eq!(
            toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\nendpoint = \"x:5\"\n")),
            "config: line 4: peer endpoint \"x:5\": invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT)"
        );
        assert_eq!(
            toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\nuapi = \"wg/0\"\n")),
            "config: line 4: peer uapi \"wg/0\": expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket"
        );
        assert_eq!(
            toml_err(&format!(
                "[[peer]]\nport = 5\npublic_key = \"{one}\"\nendpoint = \"192.0.2.1:5\"\nuapi = \"wg0\"\n"
            )),
            "config: line 5: peer: endpoint and uapi exclude each other (a fixed endpoint, or the one the device knows)"
        );
        assert_eq!(
            toml_err(&format!(
                "[[peer]]\nport = 5\npublic_key = \"{one}\"\n[[peer]]\nport = 5\npublic_key = \"{two}\"\n"
            )),
            "config: line 5: peer port 5: [::]:5 overlaps the port of the peer on line 2 ([::]:5)"
        );
        assert_eq!(
            toml_err(&format!(
                "[[peer]]\nport = 5\npublic_key = \"{one}\"\n[[peer]]\nport = 6\npublic_key = \"{one}\"\n"
            )),
            format!("config: line 5: peer port 6: public key {one} is already the key of the peer on line 2 (a key has one relay port)")
        );
        assert_eq!(
            toml_err(&format!("[[peer]]\nport = 51820\npublic_key = \"{one}\"\n")),
            "config: line 2: peer port 51820: [::]:51820 overlaps the relay listen address [::]:51820 (a peer needs a port of its own)"
        );
        assert_eq!(
            toml_err(&format!("listen = [\"0.0.0.0:1\"]\n[[peer]]\nlisten = \"127.0.0.1:1\"\npublic_key = \"{one}\"\n")),
            "config: line 3: peer listen \"127.0.0.1:1\": 127.0.0.1:1 overlaps the relay listen address 0.0.0.0:1 (a peer needs a port of its own)"
        );
        assert_eq!(
            toml_err("[[peer]]\njc = 1\n"),
            "config: line 2: peer: unknown key \"jc\" (expected one of: port, listen, public_key, endpoint, uapi, awg; AmneziaWG parameters go in an awg table)"
        );
        assert_eq!(
            toml_err("[[peer]]\nport = \"x\"\n"),
            "config: line 2: peer port: invalid type: string \"x\", expected an integer from 0 to 65535"
        );
        assert_eq!(
            toml_err("[[peer]]\nport = 70000\n"),
            "config: line 2: peer port: invalid value: integer `70000`, expected an integer from 0 to 65535"
        );
        assert_eq!(
            toml_err("peer = 1"),
            "config: line 1: peer: invalid type: integer `1`, expected an array (write one [[peer]] table per peer)"
        );
        assert_eq!(
            toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\nawg = {{ s1 = 100000 }}\n")),
            "config: line 4: peer awg: s1 must be ≤ 65386 (got 100000): a framed message must stay below amneziawg-go's 65535-byte limit"
        );
        assert_eq!(
            toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\n[peer.awg]\nh1 = \"3-9\"\n")),
            "config: line 4: peer awg: h1 must be 1 (plain WireGuard) or lie wholly above 4 (got 3-9): AWG 1.x/2.0 read a value ≤ 4 as plain, newer builds take it literally"
        );
        assert_eq!(
            toml_err(&format!(
                "[[peer]]\nport = 5\npublic_key = \"{one}\"\nawg = 3\n"
            )),
            "config: line 4: peer awg: invalid type: integer `3`, expected a table"
        );
    }

    // ---- AmneziaWG ----

    #[test]
    fn awg_from_flags() {
        let c = parse(&[
            "--awg",
            "jc=4,jmin=40,jmax=70,s1=20,s2=30",
            "--awg",
            "h1=100000-100099",
            "--awg",
            "H2=200000, h3 = 300000,h4=400000",
        ]);
        let a = c.awg;
        assert_eq!(
            (a.jc, a.jmin, a.jmax, a.s1, a.s2, a.s3, a.s4),
            (4, 40, 70, 20, 30, 0, 0)
        );
        assert_eq!(
            [a.h1, a.h2, a.h3, a.h4].map(|h| h.to_string()),
            ["100000-100099", "200000", "300000", "400000"]
        );
        assert!(c.summary().contains(
            "\nawg: jc=4 jmin=40 jmax=70 s1=20 s2=30 s3=0 s4=0 h1=100000-100099 h2=200000 h3=300000 h4=400000\n"
        ));
        // Keys the relay has no use for are accepted, and a zero header protection key is off.
        let c = parse(&[
            "--awg",
            "i1=<r 16>,header_protection_key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ]);
        assert_eq!(c.awg, AwgParams::plain());
        assert!(c.summary().contains("\nawg: plain\n"));
    }

    #[test]
    fn awg_flag_errors() {
        assert_eq!(
            parse_err(&["--awg", "jc"]),
            "--awg \"jc\": expected KEY=VALUE (e.g. jc=4 or h1=100000-100099)"
        );
        assert_eq!(
            parse_err(&["--awg", ""]),
            "--awg \"\": expected KEY=VALUE (e.g. jc=4 or h1=100000-100099)"
        );
        assert_eq!(
            parse_err(&["--awg", "s1=x"]),
            "--awg: awg: s1 must be a non-negative decimal integer (got \"x\")"
        );
        assert_eq!(
            parse_err(&["--awg", "jc=1,Jc=2"]),
            "--awg \"Jc=2\": Jc is given twice"
        );
        assert!(parse_err(&["--awg", "foo=1"])
            .starts_with("--awg: awg: unknown parameter \"foo\" (known: jc, jmin, jmax,"));
        assert_eq!(
            parse_err(&["--awg", "jmin=10,jmax=5"]),
            "--awg: awg: jmin must be ≤ jmax (got jmin 10, jmax 5)"
        );
        assert_eq!(
            parse_err(&["--awg", "s1=0,s2=56"]),
            "--awg: awg: s1 and s2 give two messages the same framed length (148 bytes); framed lengths s1+148, s2+92, s3+64, s4+32 must all differ (so s2 ≠ s1+56)"
        );
        assert_eq!(
            parse_err(&["--awg", "h1=5,h2=5"]),
            "--awg: awg: h1..h4 ranges overlap: h1 = 5 and h2 = 5 share values"
        );
        // Valid for AmneziaWG, but larger than the relay's datagram buffers.
        assert_eq!(
            parse_err(&["--awg", "s1=9100"]),
            "--awg: awg: s1 must be ≤ 9068 (got 9100): the framed message must fit the relay's datagram buffer"
        );
        assert_eq!(
            parse_err(&["--awg", "header_protection_key=0123456789abcdef"]),
            "--awg: awg: header protection (AWG 3, header_protection_key) cannot be relayed: indices are encrypted without its key"
        );
        assert_eq!(
            parse_err(&["--awg", "obfs_psk=secret"]),
            "--awg: awg: obfs_psk (whole-datagram obfuscation) cannot be relayed: indices are encrypted without its key"
        );
    }

    #[test]
    fn awg_whose_cookie_reply_outgrows_the_initiation_needs_cookies_off() {
        let why = "(got s3 = 120, s1 = 10: a 184-byte cookie reply to a 158-byte initiation); the relay keeps no state for a source it challenges, so each challenge would send it more bytes than it sent; use s3 < s1 + 84";
        assert_eq!(
            parse_err(&["--awg", "s1=10,s3=120"]),
            format!("--awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}")
        );
        assert_eq!(
            parse_err(&["--awg", "s1=10,s3=120", "--cookie", "always"]),
            format!("--awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}")
        );
        assert_eq!(
            toml_err("[awg]\ns1 = 10\ns3 = 120\n"),
            format!("config: awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}")
        );
        // Just below is fine (equal lengths are refused anyway: framed lengths must differ),
        // and so is anything with cookie replies off.
        assert_eq!(parse(&["--awg", "s1=10,s3=93"]).awg.s3, 93);
        assert_eq!(
            parse(&["--awg", "s1=10,s3=120", "--cookie", "never"])
                .awg
                .s3,
            120
        );
        // A peer port's own parameters, named by where the peer is.
        let one = k(1);
        assert_eq!(
            toml_err(&format!(
                "[[peer]]\nport = 5\npublic_key = \"{one}\"\nawg = {{ s1 = 10, s3 = 120 }}\n"
            )),
            format!("config: line 2: peer port 5: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}")
        );
    }

    #[test]
    fn awg_in_file() {
        let text = "[awg]\njc = 4\njmin = 40\njmax = 70\ns1 = 20\nh1 = \"100000-100099\"\nh2 = 200000\nh3 = 300000\nh4 = 400000\n";
        let a = Config::from_toml_str(text).unwrap().awg;
        assert_eq!((a.jc, a.s1, a.s2), (4, 20, 0));
        assert_eq!(a.h1.to_string(), "100000-100099");
        // awg-quick spellings are accepted too.
        let a = Config::from_toml_str("[awg]\nJc = 3\nS1 = 10").unwrap().awg;
        assert_eq!((a.jc, a.s1), (3, 10));
        assert_eq!(
            Config::from_toml_str("[awg]\n").unwrap().awg,
            AwgParams::plain()
        );
        // --awg replaces the table whole: s1 is plain again.
        let f = TempFile::new(text);
        let a = parse(&["--config", f.path(), "--awg", "jc=5"]).awg;
        assert_eq!((a.jc, a.s1, a.h1.to_string()), (5, 0, "1".to_string()));
        // The file's table is still validated.
        let f = TempFile::new("[awg]\ns1 = 0\ns2 = 56\n");
        let e = parse_err(&["--config", f.path(), "--awg", "jc=5"]);
        assert!(e.ends_with("line 1: awg: s1 and s2 give two messages the same framed length (148 bytes); framed lengths s1+148, s2+92, s3+64, s4+32 must all differ (so s2 ≠ s1+56)"), "{e}");
    }

    #[test]
    fn awg_file_errors() {
        assert_eq!(
            toml_err("threads = 1\n[awg]\njc = true\n"),
            "config: line 3: awg: jc must be an integer, or for h1..h4 also a \"N-M\" string (got boolean)"
        );
        assert_eq!(
            toml_err("[awg]\njc = -1\n"),
            "config: line 2: awg: jc must be a non-negative decimal integer (got \"-1\")"
        );
        assert_eq!(
            toml_err("[awg]\njc = 4294967296\n"),
            "config: line 2: awg: jc must be ≤ 4294967295 (got 4294967296): it must fit 32 bits"
        );
        assert_eq!(
            toml_err("[awg]\nh1 = \"9-5\"\n"),
            "config: line 2: awg: h1 must be a type value N or a range N-M (decimal, 0..=4294967295, N <= M) (got \"9-5\")"
        );
        assert_eq!(
            toml_err("threads = 1\n[awg]\njmin = 10\njmax = 5\n"),
            "config: line 2: awg: jmin must be ≤ jmax (got jmin 10, jmax 5)"
        );
        assert_eq!(
            toml_err("[awg]\nheader_protection_key = \"0123456789abcdef\"\n"),
            "config: line 2: awg: header protection (AWG 3, header_protection_key) cannot be relayed: indices are encrypted without its key"
        );
        assert!(toml_err("[awg]\nfoo = 1\n")
            .starts_with("config: line 2: awg: unknown parameter \"foo\" (known: jc,"));
        assert_eq!(
            toml_err("awg = 3"),
            "config: line 1: awg: invalid type: integer `3`, expected a table"
        );
        assert_eq!(
            toml_err("[awg]\njc = 1\n[awg]\njc = 2\n"),
            "config: line 3: awg: invalid table header; duplicate key `awg` in document root"
        );
    }

    // ---- wgproxy compatibility ----

    /// Parses argv with `vars` as the `WGPROXY_*` environment.
    fn with_wgproxy(argv: &[&str], vars: &[(&str, &str)]) -> Result<Config, String> {
        let _env = env_read();
        let mut full = vec!["wgrelay"];
        full.extend_from_slice(argv);
        let (_, args) = Cli::try_parse_from(full)
            .unwrap_or_else(|e| panic!("clap rejected {argv:?}: {e}"))
            .into_parts();
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        Config::from_args_and_env(&args, |name| {
            vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.into())
        })
        .map_err(|e| {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line error: {msg}");
            msg
        })
    }

    #[test]
    fn wgproxy_variables_configure_one_server() {
        let one = k(1);
        let base = [
            ("WGPROXY_SERVER", "vpn.example.net:51820"),
            ("WGPROXY_PUBKEY", one.as_str()),
        ];
        let c = with_wgproxy(&[], &base).unwrap();
        assert_eq!(c.servers, vec![server("vpn.example.net:51820", 1)]);
        assert_eq!(c.listen, vec![sa("[::]:51820")]);
        // wgproxy's default log level is 1: warnings.
        assert_eq!(c.log_level, log::LevelFilter::Warn);
        assert_eq!(c.wgproxy_timeout, None);
        assert_eq!(
            Config {
                servers: Vec::new(),
                log_level: log::LevelFilter::Info,
                ..c
            },
            Config::default()
        );

        let mut all = base.to_vec();
        all.extend([
            ("WGPROXY_LISTEN", "127.0.0.1:51821"),
            ("WGPROXY_TIMEOUT", "30"),
            ("WGPROXY_LOGLEVEL", "3"),
        ]);
        let c = with_wgproxy(&[], &all).unwrap();
        assert_eq!(c.listen, vec![sa("127.0.0.1:51821")]);
        assert_eq!(c.wgproxy_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        assert!(c.summary().ends_with(
            "\nwgproxy timeout: 30s (WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)"
        ));
        assert!(c
            .summary()
            .contains("\nservers: AQEBAQEB... -> vpn.example.net:51820\n"));

        for (level, filter) in [
            ("0", log::LevelFilter::Error),
            ("1", log::LevelFilter::Warn),
            ("2", log::LevelFilter::Info),
            ("3", log::LevelFilter::Debug),
        ] {
            let mut vars = base.to_vec();
            vars.push(("WGPROXY_LOGLEVEL", level));
            assert_eq!(with_wgproxy(&[], &vars).unwrap().log_level, filter);
        }
        // Through the subcommands too.
        let c = with_wgproxy(&["check-config"], &base).unwrap();
        assert_eq!(c.servers.len(), 1);
        // Nothing set: nothing changes.
        assert_eq!(with_wgproxy(&[], &[]).unwrap(), Config::default());
    }

    #[test]
    fn wgproxy_variables_lose_to_wgrelay_settings() {
        let (one, two) = (k(1), k(2));
        let vars = [
            ("WGPROXY_SERVER", "vpn.example.net:51820"),
            ("WGPROXY_PUBKEY", one.as_str()),
            ("WGPROXY_LISTEN", "127.0.0.1:51821"),
            ("WGPROXY_LOGLEVEL", "0"),
        ];
        let c = with_wgproxy(
            &[
                "--listen",
                "127.0.0.1:9",
                "--server",
                "b.example:2",
                "--server-key",
                &two,
                "--log-level",
                "info",
            ],
            &vars,
        )
        .unwrap();
        assert_eq!(c.listen, vec![sa("127.0.0.1:9")]);
        assert_eq!(c.servers, vec![server("b.example:2", 2)]);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        // Unset settings still come from WGPROXY_*; --debug raises its level.
        let c = with_wgproxy(&["--threads", "2", "--debug"], &vars).unwrap();
        assert_eq!(c.servers, vec![server("vpn.example.net:51820", 1)]);
        assert_eq!(c.listen, vec![sa("127.0.0.1:51821")]);
        assert_eq!(c.log_level, log::LevelFilter::Debug);
        // The file wins too.
        let f = TempFile::new(&format!(
            "listen = [\"127.0.0.1:7\"]\nlog_level = \"trace\"\n[[server]]\naddress = \"c.example:3\"\npublic_key = \"{two}\"\n"
        ));
        let c = with_wgproxy(&["--config", f.path()], &vars).unwrap();
        assert_eq!(c.listen, vec![sa("127.0.0.1:7")]);
        assert_eq!(c.servers, vec![server("c.example:3", 2)]);
        assert_eq!(c.log_level, log::LevelFilter::Trace);
        // An overridden WGPROXY_* value is still validated.
        let mut bad = vars.to_vec();
        bad.push(("WGPROXY_TIMEOUT", "0"));
        assert_eq!(
            with_wgproxy(&["--server", "b.example:2", "--server-key", &two], &bad).unwrap_err(),
            "WGPROXY_TIMEOUT \"0\": expected a positive whole number of seconds"
        );
    }

    #[test]
    fn wgproxy_errors() {
        let one = k(1);
        let err = |vars: &[(&str, &str)]| with_wgproxy(&[], vars).unwrap_err();
        assert_eq!(
            err(&[("WGPROXY_SERVER", "vpn.example.net:51820")]),
            "WGPROXY_SERVER is set but WGPROXY_PUBKEY is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)"
        );
        assert_eq!(
            err(&[("WGPROXY_PUBKEY", &one)]),
            "WGPROXY_PUBKEY is set but WGPROXY_SERVER is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)"
        );
        assert_eq!(
            err(&[("WGPROXY_LISTEN", "[::]:51820")]),
            "WGPROXY_LISTEN is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"
        );
        assert_eq!(
            err(&[("WGPROXY_TIMEOUT", "60")]),
            "WGPROXY_TIMEOUT is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"
        );
        assert_eq!(
            err(&[("WGPROXY_SERVER", "vpn.example.net"), ("WGPROXY_PUBKEY", &one)]),
            "WGPROXY_SERVER: invalid upstream address \"vpn.example.net\": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"
        );
        // A bad value is named before whether the variables belong together.
        assert_eq!(
            err(&[("WGPROXY_PUBKEY", "abc")]),
            "WGPROXY_PUBKEY: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
        );
        let with = |name: &'static str, value: &'static str| {
            err(&[
                ("WGPROXY_SERVER", "vpn.example.net:51820"),
                ("WGPROXY_PUBKEY", one.as_str()),
                (name, value),
            ])
        };
        assert_eq!(
            with("WGPROXY_LISTEN", "[::]:0"),
            "WGPROXY_LISTEN \"[::]:0\": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"
        );
        assert_eq!(
            with("WGPROXY_LISTEN", "localhost:51820"),
            "WGPROXY_LISTEN \"localhost:51820\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"
        );
        for bad in ["0", "-1", "1.5", "", "+5", "ten"] {
            assert_eq!(
                with("WGPROXY_TIMEOUT", bad),
                format!("WGPROXY_TIMEOUT {bad:?}: expected a positive whole number of seconds")
            );
        }
        for bad in ["4", "-1", "", "warn"] {
            assert_eq!(
                with("WGPROXY_LOGLEVEL", bad),
                format!("WGPROXY_LOGLEVEL {bad:?}: expected 0 (errors), 1 (and warnings), 2 (and info) or 3 (and debug)")
            );
        }
        let e = {
            use std::os::unix::ffi::OsStringExt;
            let _env = env_read();
            let (_, args) = Cli::try_parse_from(["wgrelay"]).unwrap().into_parts();
            Config::from_args_and_env(&args, |name| {
                (name == "WGPROXY_SERVER").then(|| std::ffi::OsString::from_vec(vec![b'a', 0xff]))
            })
            .unwrap_err()
            .to_string()
        };
        assert_eq!(e, "WGPROXY_SERVER \"a\\xFF\": not valid UTF-8");
    }

    // ---- robustness ----

    #[test]
    fn table_errors_stay_one_line() {
        for text in [
            "[[server]]\n[[server]]\naddress = 1",
            "[[peer]]\nport = 5\npublic_key = \"x\"\nawg = { jc = [] }",
            "[awg]\nh4 = { a = 1 }",
            "[peer]\nport = 1",
            "[[awg]]\njc = 1",
            "[peer.awg]\njc = 1",
        ] {
            let e = Config::from_toml_str(text).unwrap_err().to_string();
            assert!(e.starts_with("config: line "), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_toml_never_panics(text in proptest::prelude::any::<String>()) {
            if let Err(e) = Config::from_toml_str(&text) {
                let msg = e.to_string();
                proptest::prop_assert!(msg.starts_with("config"));
                proptest::prop_assert!(!msg.contains('\n'));
            }
        }

        #[test]
        fn tomlish_text_never_panics(
            key in "(listen|allow|groups|cookie|threads|port|bind|lissten|server|peer|awg)",
            value in "[\\[\\]\" ,=0-9a-z:.A-Z+/-]{0,30}",
            line in 0usize..3,
        ) {
            let text = format!("{}{key} = {value}", "\n".repeat(line));
            if let Err(e) = Config::from_toml_str(&text) {
                proptest::prop_assert!(!e.to_string().contains('\n'));
            }
        }

        #[test]
        fn arbitrary_flag_values_never_panic(
            flag in "--(listen|allow|group|bind|server|server-key|peer|awg)",
            value in "[^\\x00]{0,50}",
        ) {
            let _env = env_read();
            let args = ["wgrelay", flag.as_str(), value.as_str()];
            if let Ok(cli) = Cli::try_parse_from(args) {
                let (_, run) = cli.into_parts();
                if let Err(e) = Config::from_args(&run) {
                    proptest::prop_assert!(!e.to_string().contains('\n'));
                }
            }
        }
    }

    // ---- environment (process-global: all env assertions live here) ----

    struct EnvVars(Vec<&'static str>);

    impl EnvVars {
        fn set(&mut self, name: &'static str, value: &str) {
            std::env::set_var(name, value);
            if !self.0.contains(&name) {
                self.0.push(name);
            }
        }

        fn clear(&mut self) {
            for name in self.0.drain(..) {
                std::env::remove_var(name);
            }
        }
    }

    impl Drop for EnvVars {
        fn drop(&mut self) {
            self.clear();
        }
    }

    #[test]
    fn environment_variables() {
        let _lock = ENV_LOCK.write().unwrap_or_else(|e| e.into_inner());
        let mut env = EnvVars(Vec::new());
        let parse = |argv: &[&str]| match try_parse_with_env_held(argv) {
            Ok((_, Ok(c))) => c,
            Ok((_, Err(e))) => panic!("config rejected {argv:?}: {e}"),
            Err(e) => panic!("clap rejected {argv:?}: {e}"),
        };
        let parse_err = |argv: &[&str]| match try_parse_with_env_held(argv) {
            Ok((_, Err(e))) => e.to_string(),
            Ok((_, Ok(c))) => panic!("config accepted {argv:?}: {c:?}"),
            Err(e) => panic!("clap rejected {argv:?}: {e}"),
        };

        // Lists: comma-separated; groups separated by ';'.
        env.set("WGRELAY_LISTEN", "127.0.0.1:1,[::1]:2");
        env.set("WGRELAY_ALLOW", &format!("{},{}", k(1), k(2)));
        env.set(
            "WGRELAY_GROUP",
            &format!("{},{};{},{}", k(3), k(4), k(5), k(6)),
        );
        env.set("WGRELAY_COOKIE", "always");
        env.set("WGRELAY_BROADCAST_RATE", "0");
        env.set("WGRELAY_THREADS", "7");
        env.set("WGRELAY_BACKEND", "mmsg");
        env.set("WGRELAY_GSO", "off");
        env.set("WGRELAY_GRO", "off");
        env.set("WGRELAY_LOG_LEVEL", "error");
        env.set("WGRELAY_STATS_INTERVAL", "11");
        let c = parse(&[]);
        assert_eq!(c.listen, vec![sa("127.0.0.1:1"), sa("[::1]:2")]);
        assert_eq!(c.allow, vec![key(1), key(2)]);
        assert_eq!(c.groups, vec![vec![key(3), key(4)], vec![key(5), key(6)]]);
        assert_eq!(c.cookie, CookieMode::Always);
        assert_eq!(c.broadcast_rate, None);
        assert_eq!(c.threads, 7);
        assert_eq!(c.backend, BackendChoice::Mmsg);
        assert!(!c.gso && !c.gro);
        assert_eq!(c.log_level, log::LevelFilter::Error);
        assert_eq!(c.stats_interval, Some(Duration::from_secs(11)));

        // The same through the subcommands (env feeds the subcommand's flags
        // and does not count as top-level flags conflicting with them).
        for sub in ["run", "check-config"] {
            let (mode, c) = try_parse_with_env_held(&[sub]).unwrap();
            assert_eq!(mode == Mode::CheckConfig, sub == "check-config");
            assert_eq!(c.unwrap().threads, 7);
        }

        // Flags win over env, list flags replace env lists.
        let c = parse(&[
            "--listen",
            "127.0.0.1:9",
            "--allow",
            &k(9),
            "--group",
            &format!("{},{}", k(7), k(8)),
            "--cookie",
            "never",
            "--broadcast-rate",
            "3",
            "--threads",
            "2",
            "--backend",
            "uring",
            "--gso",
            "on",
            "--gro",
            "on",
            "--log-level",
            "trace",
            "--stats-interval",
            "0",
        ]);
        assert_eq!(c.listen, vec![sa("127.0.0.1:9")]);
        assert_eq!(c.allow, vec![key(9)]);
        assert_eq!(c.groups, vec![vec![key(7), key(8)]]);
        assert_eq!(c.cookie, CookieMode::Never);
        assert_eq!(c.broadcast_rate, Some(3));
        assert_eq!(c.threads, 2);
        assert_eq!(c.backend, BackendChoice::Uring);
        assert!(c.gso && c.gro);
        assert_eq!(c.log_level, log::LevelFilter::Trace);
        assert_eq!(c.stats_interval, None);
        let c = parse(&["run", "--threads", "4"]);
        assert_eq!(c.threads, 4);
        assert_eq!(c.allow, vec![key(1), key(2)]);

        // Env wins over the file; the file still fills what env leaves unset.
        let f = TempFile::new(&full_file());
        env.set("WGRELAY_CONFIG", f.path());
        env.set("WGRELAY_STATS_INTERVAL", "0");
        let c = parse(&[]);
        assert_eq!(c.threads, 7);
        assert_eq!(c.allow, vec![key(1), key(2)]);
        assert_eq!(c.stats_interval, None);
        assert_eq!(c.backend, BackendChoice::Mmsg);
        std::env::remove_var("WGRELAY_THREADS");
        std::env::remove_var("WGRELAY_ALLOW");
        let c = parse(&[]);
        assert_eq!(c.threads, 3);
        assert_eq!(c.allow, vec![key(1), key(2)]);
        assert_eq!(c.groups, vec![vec![key(3), key(4)], vec![key(5), key(6)]]);
        env.clear();

        // wpex bind/port from env, added to --listen / WGRELAY_LISTEN.
        env.set("WGRELAY_PORT", "40001");
        assert_eq!(parse(&[]).listen, vec![sa("[::]:40001")]);
        env.set("WGRELAY_BIND", "127.0.0.1");
        assert_eq!(parse(&[]).listen, vec![sa("127.0.0.1:40001")]);
        assert_eq!(parse(&["--port", "5"]).listen, vec![sa("127.0.0.1:5")]);
        env.set("WGRELAY_LISTEN", "[::1]:3");
        assert_eq!(
            parse(&[]).listen,
            vec![sa("[::1]:3"), sa("127.0.0.1:40001")]
        );
        env.clear();

        // Servers, peers and AmneziaWG parameters: comma-separated lists.
        env.set("WGRELAY_SERVER", "a.example:1,192.0.2.1:2");
        env.set("WGRELAY_SERVER_KEY", &format!("{},{}", k(1), k(2)));
        env.set(
            "WGRELAY_PEER",
            &format!("10001={},10002={}@192.0.2.9:5", k(3), k(4)),
        );
        env.set("WGRELAY_AWG", "jc=4,s1=20,h1=100000-100099");
        let c = parse(&[]);
        assert_eq!(
            c.servers,
            vec![
                Server {
                    addr: "a.example:1".parse().unwrap(),
                    key: key(1)
                },
                Server {
                    addr: "192.0.2.1:2".parse().unwrap(),
                    key: key(2)
                },
            ]
        );
        assert_eq!(
            c.peers
                .iter()
                .map(|p| (p.listen, p.key, p.endpoint))
                .collect::<Vec<_>>(),
            vec![
                (sa("[::]:10001"), key(3), None),
                (sa("[::]:10002"), key(4), Some(sa("192.0.2.9:5"))),
            ]
        );
        assert_eq!((c.awg.jc, c.awg.s1), (4, 20));
        assert_eq!(c.awg.h1.to_string(), "100000-100099");
        // A flag replaces its own variable only: --server pairs with WGRELAY_SERVER_KEY.
        assert_eq!(
            parse_err(&["--server", "c.example:3"]),
            "--server and --server-key pair up in order, one key per server: got 1 server and 2 server keys"
        );
        let c = parse(&["--awg", "jc=1", "--peer", &format!("7={}", k(5))]);
        assert_eq!((c.awg.jc, c.awg.s1), (1, 0));
        assert_eq!(c.peers.len(), 1);
        env.set("WGRELAY_AWG", "s1=x");
        assert_eq!(
            parse_err(&[]),
            "--awg: awg: s1 must be a non-negative decimal integer (got \"x\")"
        );
        env.clear();

        // wgproxy's variables, from the process environment.
        env.set("WGPROXY_SERVER", "vpn.example.net:51820");
        env.set("WGPROXY_PUBKEY", &k(1));
        env.set("WGPROXY_LISTEN", "127.0.0.1:51821");
        let c = parse(&[]);
        assert_eq!(c.servers.len(), 1);
        assert_eq!(c.listen, vec![sa("127.0.0.1:51821")]);
        env.set("WGRELAY_LISTEN", "127.0.0.1:9");
        assert_eq!(parse(&[]).listen, vec![sa("127.0.0.1:9")]);
        std::env::remove_var("WGPROXY_PUBKEY");
        assert!(parse_err(&[]).starts_with("WGPROXY_SERVER is set but WGPROXY_PUBKEY is not"));
        env.clear();

        // --debug from env: any non-false value enables it.
        env.set("WGRELAY_DEBUG", "1");
        assert_eq!(parse(&[]).log_level, log::LevelFilter::Debug);
        env.set("WGRELAY_DEBUG", "false");
        assert_eq!(parse(&[]).log_level, log::LevelFilter::Info);
        env.clear();

        // Bad env values name the value.
        env.set("WGRELAY_ALLOW", "notakey");
        assert!(parse_err(&[]).contains(r#"invalid public key "notakey""#));
        // An empty variable is an error, never a silently open relay.
        env.set("WGRELAY_ALLOW", "");
        assert!(parse_err(&[]).contains(r#"invalid public key """#));
        env.clear();
        env.set("WGRELAY_LISTEN", "nowhere");
        assert!(parse_err(&[]).contains(r#""nowhere""#));
        env.set("WGRELAY_LISTEN", "[::]:0");
        assert!(parse_err(&[]).contains(r#""[::]:0": port 0"#));
        env.clear();
        env.set("WGRELAY_THREADS", "0");
        assert_eq!(parse_err(&[]), "--threads 0: must be at least 1");
        env.set("WGRELAY_THREADS", "lots");
        let e = try_parse_with_env_held(&[]).unwrap_err().to_string();
        assert!(e.contains("lots"), "{e}");
        env.clear();
        env.set("WGRELAY_GROUP", &k(1));
        assert!(parse_err(&[]).contains("at least 2 distinct"));
        env.clear();
        env.set("WGRELAY_CONFIG", "/nonexistent/wgrelay-test.toml");
        let e = parse_err(&[]);
        assert!(
            e.starts_with("config file /nonexistent/wgrelay-test.toml: cannot read:"),
            "{e}"
        );
        env.clear();

        // Back to defaults once cleared.
        assert_eq!(parse(&[]), Config::default());
    }
}
