//! One validated [`Config`] from the configuration file, the environment and
//! the command line.
//!
//! Precedence for every setting: command-line flag > `WGRELAY_*` environment
//! variable (clap merges these two) > configuration file > built-in default.
//! List settings (`listen`, `allow`, `group`) are taken whole from the first
//! source that gives any value: flags/env replace the file's list entirely.
//!
//! The wpex-style `bind`/`port` pair belongs to the `listen` setting: if
//! either is given, they define one address `bind:port` (bind absent or `""`
//! → `[::]`, port absent → 40000) that is added after that source's `listen`
//! values. So `--port 40001` on the command line replaces the file's listen
//! addresses (and `bind`/`port`) just like `--listen` would.
//!
//! Every value from every source is validated, even one that a higher
//! precedence source overrides, so `check-config` reports all mistakes.
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
//! gso = "on"                   # on | off: UDP GSO sends (mmsg backend)
//! state_file = "/var/lib/wgrelay/state"  # keep confirmed sessions across a restart
//! gro = "on"                   # on | off: UDP GRO receives (mmsg backend)
//! steering = "on"              # on | off: steer packets to their owner shard in the kernel
//! log_level = "info"           # error | warn | info | debug | trace
//! stats_interval = 60          # seconds, 0 = off
//! bind = "0.0.0.0"             # wpex style, same rule as the flags
//! port = 40000
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
    "log_level",
    "stats_interval",
    "bind",
    "port",
];

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
    /// Let the relay choose (currently mmsg).
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
    /// Send runs of datagrams to one destination as UDP GSO sends where the kernel can (mmsg
    /// backend; turned off at runtime if the kernel refuses one).
    pub gso: bool,
    /// Let the kernel coalesce received datagrams with UDP GRO where it can (mmsg backend).
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
            servers: Vec::new(),
            peers: Vec::new(),
            awg: crate::wire::awg::Params::plain(),
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
    pub fn from_args(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => Layer::from_file(path)?,
            None => Layer::default(),
        };
        let cli = Layer::from_args(args)?;
        Ok(Config::merge(cli, file, args.debug))
    }

    /// Builds the configuration from TOML text alone (defaults elsewhere).
    /// Error messages start with `config: line N:`.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        let file = Layer::from_toml(s, "config")?;
        Ok(Config::merge(Layer::default(), file, false))
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
        format!(
            "listen: {}\nmode: {}\ncookie replies: {}\nbroadcast rate: {}\nthreads: {}\nbackend: {}\noffload: gso {}, gro {}\nsteering: {}\nstate file: {}\nlog level: {}\nstats: {}",
            listen.join(", "),
            mode,
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
            self.log_level.as_str().to_ascii_lowercase(),
            stats,
        )
    }

    fn merge(cli: Layer, file: Layer, debug: bool) -> Config {
        let defaults = Config::default();
        let mut log_level = cli
            .log_level
            .or(file.log_level)
            .map(log::LevelFilter::from)
            .unwrap_or(defaults.log_level);
        if debug {
            log_level = log_level.max(log::LevelFilter::Debug);
        }
        Config {
            listen: dedup(cli.listen.or(file.listen).unwrap_or(defaults.listen)),
            allow: dedup(cli.allow.or(file.allow).unwrap_or_default()),
            groups: cli.groups.or(file.groups).unwrap_or_default(),
            cookie: cli.cookie.or(file.cookie).unwrap_or(defaults.cookie),
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
            // Parsed from flags, env and file by the mode settings (proxy, port-per-peer,
            // AmneziaWG).
            servers: defaults.servers,
            peers: defaults.peers,
            awg: defaults.awg,
            log_level,
            stats_interval: match cli.stats_interval.or(file.stats_interval) {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => defaults.stats_interval,
            },
        }
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
    cookie: Option<CookieMode>,
    broadcast_rate: Option<u32>,
    threads: Option<usize>,
    backend: Option<BackendChoice>,
    gso: Option<Switch>,
    gro: Option<Switch>,
    steering: Option<Switch>,
    state_file: Option<std::path::PathBuf>,
    log_level: Option<LogLevel>,
    stats_interval: Option<u64>,
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
            log_level: a.log_level,
            stats_interval: a.stats_interval,
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
    log_level: Option<LogLevel>,
    stats_interval: Option<u64>,
    bind: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
}

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
        let message = humanize_types(&rewrite_unknown_field(e.message()));
        match e.span() {
            Some(span) => match self.key_before(span.start) {
                Some(key) => self.at(span, format!("{key}: {message}")),
                None => self.at(span, message),
            },
            None => ConfigError::new(format!("{}: {message}", self.origin)),
        }
    }

    /// The `key` of the `key = value` line that `pos` (inside the value) is
    /// on, so that type errors, which point at the value, can name the
    /// setting. `None` on continuation lines of multi-line arrays.
    fn key_before(&self, pos: usize) -> Option<&str> {
        let before = self.text.get(..pos)?;
        let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        let is_bare_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        is_bare_key.then_some(key)
    }
}

/// Replaces Rust type names in serde messages with what a user would write.
fn humanize_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, human) in [
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected u64", "expected a non-negative integer"),
        ("expected usize", "expected a non-negative integer"),
    ] {
        if out.ends_with(rust) {
            out.truncate(out.len() - rust.len());
            out.push_str(human);
        }
    }
    out
}

/// Turns serde's "unknown field `x`, expected one of ..." into
/// `unknown key "x" (did you mean "y"?; expected one of: ...)`.
fn rewrite_unknown_field(message: &str) -> String {
    let message = message.trim();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some(end) = rest.find('`') else {
        return message.to_string();
    };
    let name = &rest[..end];
    let suggestion = FILE_KEYS
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .filter(|&(d, _)| d <= 2)
        .min()
        .map(|(_, k)| format!("did you mean \"{k}\"? "))
        .unwrap_or_default();
    format!(
        "unknown key {name:?} ({suggestion}expected one of: {})",
        FILE_KEYS.join(", ")
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
             cookie replies: under-load\n\
             broadcast rate: 1000 handshake initiation copies/s\n\
             threads: 4\n\
             backend: auto\n\
             offload: gso on, gro on\n\
             steering: on\n\
             state file: none\n\
             log level: info\n\
             stats: every 60s"
        );
    }

    #[test]
    fn state_file_from_flag_and_file() {
        assert_eq!(parse(&[]).state_file, None);
        let c = parse(&["--state-file", "/var/lib/wgrelay/state"]);
        assert_eq!(
            c.state_file.as_deref(),
            Some(std::path::Path::new("/var/lib/wgrelay/state"))
        );
        assert!(c
            .summary()
            .contains("\nstate file: /var/lib/wgrelay/state\n"));
        let c = Config::from_toml_str("state_file = \"/tmp/s\"").unwrap();
        assert_eq!(
            c.state_file.as_deref(),
            Some(std::path::Path::new("/tmp/s"))
        );
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

    // ---- robustness ----

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
            key in "(listen|allow|groups|cookie|threads|port|bind|lissten)",
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
            flag in "--(listen|allow|group|bind)",
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
