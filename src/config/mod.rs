//! One validated [`Config`] from the configuration file, the environment and the command
//! line: [`load`] builds it from argv, [`Config::diff`] compares two.
//!
//! Sources, one file each: `args` (clap; the single-valued settings are declared once, in its
//! `scalar_settings!` list), `file` (TOML), `wgproxy` (`WGPROXY_*`); `validate` holds the checks
//! every source shares, `summary` the printed form, `diff` what a reload changes. Each setting
//! is described once, in its flag's help; README.md has the rules and packaging/wgrelay.toml a
//! commented file.
//!
//! Precedence: flag > `WGRELAY_*` variable (clap merges these two) > file > wgproxy's
//! `WGPROXY_*` variables (only when `WGPROXY_SERVER` and `WGPROXY_PUBKEY` are both set) >
//! default. A list setting (`listen`, `allow`, `group`, `server`, `peer`, and `awg` as one
//! set of parameters) is taken whole from the first source that gives any of it. The wpex-style
//! `bind`/`port` pair belongs to `listen`: either one defines `bind:port` (`[::]`, 40000 when
//! absent), added after that source's `listen` values.
//!
//! Every value of every source is validated, even one a higher source overrides, so
//! `check-config` reports every mistake; checks that relate values to each other (a peer port
//! against the listen addresses, cookie replies against the AmneziaWG framing) apply to the
//! effective configuration. An error is one line that names the value as the operator wrote
//! it (`--listen "x"`, `WGRELAY_THREADS=0`, `config file F: line N: ...`).

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::key::PublicKey;
use crate::upstream::resolve::HostPort;
use crate::wire::awg::Params as AwgParams;

/// Enums of fixed spellings, each spelling given once for the flag (clap), the file (serde)
/// and `as_str`/`Display`.
macro_rules! choices {
    ($( $(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $v:ident = $s:literal, )* } )*) => { $(
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Deserialize)]
        pub enum $name { $( $(#[$vm])* #[value(name = $s)] #[serde(rename = $s)] $v, )* }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $( $name::$v => $s, )* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )* };
}

pub mod args;
mod diff;
mod file;
mod summary;
#[cfg(test)]
mod tests;
mod validate;
mod wgproxy;

pub use args::{Cli, Command, LogLevel, Mode, RunArgs, Scalars};
pub use diff::{Change, Diff};
use summary::{awg_text, on_off, path_or, plural};
use validate::*;

/// Listen address when no source gives one.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 51820);

/// Port of the wpex-style `bind`/`port` address when only `bind` is given
/// (wpex's default port).
pub const WPEX_DEFAULT_PORT: u16 = 40000;

/// Default cap on handshake-initiation copies per second sent by fan-out: finite because
/// fan-out amplifies (in open mode one spoofed initiation is copied to every candidate peer),
/// and far above what real peers need (a handshake every few seconds each). `0` lifts it.
pub const DEFAULT_BROADCAST_RATE: u32 = 1000;

/// Seconds between statistics log lines when not configured.
pub const DEFAULT_STATS_INTERVAL_SECS: u64 = 60;

/// Largest accepted `threads` value.
pub const MAX_THREADS: usize = 1024;

/// The file's keys that are not single-valued settings ([`Scalars::KEYS`] are the others).
pub const LIST_KEYS: &[&str] = &["listen", "allow", "groups", "server", "peer", "awg"];

/// Where the control socket is when no source says (`off` turns it off).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/wgrelay/control.sock";

/// Keys of a `[[server]]` table.
pub const SERVER_KEYS: &[&str] = &["address", "public_key"];

/// Keys of a `[[peer]]` table.
pub const PEER_KEYS: &[&str] = &["port", "listen", "public_key", "endpoint", "uapi", "awg"];

/// The AmneziaWG parameters of `[awg]`, a peer's `awg` and `--awg`.
pub const AWG_KEYS: &[&str] = &[
    "jc", "jmin", "jmax", "s1", "s2", "s3", "s4", "h1", "h2", "h3", "h4",
];

choices! {
    /// When the relay answers handshake initiations with cookie replies instead of forwarding
    /// them (WireGuard's DoS protection).
    #[derive(Default)]
    CookieMode {
        /// Always require a valid cookie (mac2).
        Always = "always",
        /// Require a cookie only while the relay is under load.
        #[default]
        UnderLoad = "under-load",
        /// Never send cookie replies.
        Never = "never",
    }

    /// Which datagram I/O backend the shards use (see [`crate::relay`] for how `auto` resolves).
    #[derive(Default)]
    BackendChoice {
        /// io_uring where it can run, else mmsg (one log line says why).
        #[default]
        Auto = "auto",
        /// io_uring; refuse to start where it cannot run.
        Uring = "uring",
        /// poll + recvmmsg/sendmmsg; runs on any Linux.
        Mmsg = "mmsg",
    }

    /// An on/off setting (`--gso`, `--gro`, `--steering`).
    Switch {
        On = "on",
        Off = "off",
    }

    /// How log lines are written (`--log-format`).
    #[derive(Default)]
    LogFormat {
        /// Plain lines (with syslog priority prefixes when stderr is the journal).
        #[default]
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
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
    pub log_format: LogFormat,
    /// Period of statistics log lines; `None` = off.
    pub stats_interval: Option<Duration>,
    /// Where Prometheus metrics are served; `None` = nowhere.
    pub metrics: Option<SocketAddr>,
    /// The control socket of `wgrelay show` / `reload`; `None` = none.
    pub control_socket: Option<PathBuf>,
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
            servers: Vec::new(),
            peers: Vec::new(),
            awg: crate::wire::awg::Params::plain(),
            wgproxy_timeout: None,
            log_level: log::LevelFilter::Info,
            log_format: LogFormat::Text,
            stats_interval: Some(Duration::from_secs(DEFAULT_STATS_INTERVAL_SECS)),
            metrics: None,
            control_socket: Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
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

/// Builds the effective configuration from every source, as at start-up: parses `argv`
/// (the program name first) with clap, which reads the `WGRELAY_*` environment as it is now,
/// reads the `--config` file afresh, and the `WGPROXY_*` variables. A reload calls it again
/// with the original argv.
pub fn load<T: Into<std::ffi::OsString> + Clone>(argv: &[T]) -> Result<(Mode, Config), LoadError> {
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<std::ffi::OsString> = argv.iter().cloned().map(Into::into).collect();
    let clap = |e| match args::env_clap_error(e, &argv) {
        Ok(e) => LoadError::Clap(e),
        Err(line) => LoadError::Invalid(line),
    };
    let matches = Cli::command().try_get_matches_from(&argv).map_err(clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(clap)?;
    let from_env = args::env_sourced(&matches);
    let (mode, run) = cli.into_parts();
    match Config::from_args(&run) {
        Ok(config) => Ok((mode, config)),
        Err(e) => Err(LoadError::Invalid(args::name_the_variable(
            &e.to_string(),
            &from_env,
        ))),
    }
}

/// Why [`load`] built no configuration. Its `Display` is what `wgrelay` prints on stderr
/// (without the final newline), and [`LoadError::exit_code`] what it exits with.
#[derive(Debug)]
pub enum LoadError {
    /// clap's own answer: a usage error, or the help or version text that was asked for.
    Clap(clap::Error),
    /// A value that no source may give: one line naming it as the operator wrote it
    /// (`--listen "x": ...`, `WGRELAY_THREADS=0: ...`, `config file F: line N: ...`), also
    /// for a value clap refused when it came from a variable.
    Invalid(String),
}

impl LoadError {
    /// 2 for an invalid configuration; clap's code (0 for help and version) otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Clap(e) => u8::try_from(e.exit_code()).unwrap_or(2),
            LoadError::Invalid(_) => 2,
        }
    }

    /// Prints it as `wgrelay` does: help and version on stdout, errors on stderr.
    pub fn print(&self) {
        match self {
            LoadError::Clap(e) => {
                let _ = e.print();
            }
            _ => eprintln!("{self}"),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Clap(e) => f.write_str(e.render().to_string().trim_end()),
            LoadError::Invalid(message) => write!(f, "wgrelay: {message}"),
        }
    }
}

impl std::error::Error for LoadError {}

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
}

impl Config {
    /// Merges the sources (`cli` > `file` > `wgproxy` > defaults) and checks what relates
    /// values to each other.
    fn merge(cli: Layer, file: Layer, wgproxy: Layer, debug: bool) -> Result<Config, ConfigError> {
        let d = Config::default();
        // (these two checks name the effective value by the source it came from)
        let stats_label = match cli.scalars.stats_interval {
            Some(_) => "--stats-interval",
            None => "config: stats_interval =",
        };
        let state_label = match cli.scalars.state_file {
            Some(_) => "--state-file",
            None => "config: state_file =",
        };
        let s = cli.scalars.or(file.scalars).or(wgproxy.scalars);
        let mut log_level = s.log_level.map_or(d.log_level, log::LevelFilter::from);
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
                .unwrap_or(d.listen),
        );
        check_listen_overlap(&listen, listen_label)?;
        if let Some(secs) = s.stats_interval.filter(|s| *s > MAX_STATS_INTERVAL_SECS) {
            return Err(ConfigError::new(format!(
                "{stats_label} {secs}: at most {MAX_STATS_INTERVAL_SECS} seconds (one day); 0 turns the statistics line off"
            )));
        }
        if let Some(path) = &s.state_file {
            check_state_file(path, state_label)?;
        }
        let awg_label = if cli.awg.is_some() {
            "--awg"
        } else {
            "config: awg"
        };
        let cookie = s.cookie.unwrap_or(d.cookie);
        let awg = cli.awg.or(file.awg).unwrap_or(d.awg);
        let peer_specs = cli.peers.or(file.peers).unwrap_or_default();
        check_cookie_replies(cookie, &awg, awg_label, &peer_specs)?;
        let peers = resolve_peers(peer_specs, &listen)?;
        let on = |v: Option<Switch>, default: bool| v.map_or(default, Switch::is_on);
        Ok(Config {
            listen,
            allow: dedup(cli.allow.or(file.allow).unwrap_or_default()),
            groups: cli.groups.or(file.groups).unwrap_or_default(),
            cookie,
            // 0 lifts the cap / turns the statistics line off
            broadcast_rate: s
                .broadcast_rate
                .map_or(d.broadcast_rate, |r| Some(r).filter(|r| *r > 0)),
            threads: s.threads.unwrap_or(d.threads),
            backend: s.backend.unwrap_or(d.backend),
            gso: on(s.gso, d.gso),
            gro: on(s.gro, d.gro),
            steering: on(s.steering, d.steering),
            state_file: s.state_file,
            servers: cli
                .servers
                .or(file.servers)
                .or(wgproxy.servers)
                .unwrap_or_default(),
            peers,
            awg,
            wgproxy_timeout: wgproxy.wgproxy_timeout,
            log_level,
            log_format: s.log_format.unwrap_or(d.log_format),
            stats_interval: s.stats_interval.map_or(d.stats_interval, |secs| {
                Some(Duration::from_secs(secs)).filter(|_| secs > 0)
            }),
            // checked in every source (`check_scalars`)
            metrics: s
                .metrics
                .as_deref()
                .and_then(|m| validate::parse_metrics("metrics", m).ok()),
            control_socket: match s.control_socket {
                Some(p) if p.as_os_str() == "off" => None,
                Some(p) => Some(p),
                None => d.control_socket,
            },
        })
    }
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
    servers: Option<Vec<Server>>,
    peers: Option<Vec<PeerSpec>>,
    awg: Option<AwgParams>,
    wgproxy_timeout: Option<Duration>,
    scalars: Scalars,
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
