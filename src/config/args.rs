//! Command-line interface (clap derive types only).
//!
//! ```text
//! wgrelay [RUN-FLAGS]               run the relay (no subcommand = run)
//! wgrelay run [RUN-FLAGS]           run the relay
//! wgrelay check-config [RUN-FLAGS]  validate and print the effective configuration
//! ```
//!
//! Every flag can also be set through a `WGRELAY_*` environment variable;
//! a flag on the command line wins over its variable. Keys and addresses are
//! kept as plain strings here: [`crate::config::Config::from_args`]
//! validates them and produces messages that name the offending value.
//! wgproxy's `WGPROXY_*` variables are not flags: the configuration reads them
//! itself, below every other source (see [`crate::config`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use super::*;

/// A WireGuard relay: forwards packets between peers by receiver index,
/// never decrypting them.
#[derive(Debug, Clone, Parser)]
#[command(name = "wgrelay", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the relay (the default when no subcommand is given).
    Run(RunArgs),
    /// Validate everything `run` would, print the effective configuration and
    /// exit (non-zero on error).
    CheckConfig(RunArgs),
    /// Show a running relay: listeners, keys, sessions, counters (like `wg show`).
    Show(ShowArgs),
    /// Ask a running relay to re-read its configuration; non-zero exit if it refuses.
    Reload(SocketArgs),
}

/// Where a running relay's control socket is (`show`, `reload`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct SocketArgs {
    /// The relay's control socket. [default: /run/wgrelay/control.sock]
    #[arg(long, value_name = "PATH", env = "WGRELAY_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ShowArgs {
    /// Print the snapshot as JSON, for scripts.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub socket: SocketArgs,
}

/// What the process was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    CheckConfig,
    /// `show` or `reload`: talks to a running relay (`Cli::command`), needs no configuration.
    Client,
}

impl Cli {
    /// Splits the parsed command line into what to do and the flags to do it
    /// with. Without a subcommand the top-level flags apply to `run`.
    pub fn into_parts(self) -> (Mode, RunArgs) {
        match self.command {
            Some(Command::Run(args)) => (Mode::Run, args),
            Some(Command::CheckConfig(args)) => (Mode::CheckConfig, args),
            Some(Command::Show(_) | Command::Reload(_)) => (Mode::Client, RunArgs::default()),
            None => (Mode::Run, self.run),
        }
    }
}

choices! {
    /// Log verbosity as spelled on the command line and in the config file.
    #[derive(PartialOrd, Ord)]
    LogLevel {
        Error = "error",
        Warn = "warn",
        Info = "info",
        Debug = "debug",
        Trace = "trace",
    }
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// Flags shared by `run` and `check-config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct RunArgs {
    /// UDP socket address to listen on, IPv6 in brackets (e.g. 0.0.0.0:51820,
    /// [::]:51820). Repeatable; comma-separated lists accepted.
    /// [default: [::]:51820]
    #[arg(
        long,
        value_name = "ADDR",
        env = "WGRELAY_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,

    /// Only relay for this WireGuard public key (base64). Repeatable;
    /// comma-separated lists accepted. Without --allow and --group any key is
    /// relayed (open mode).
    #[arg(
        long,
        value_name = "PUBKEY",
        env = "WGRELAY_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,

    /// A group of public keys that may only reach each other, as
    /// K1,K2[,...] (at least 2 keys). Repeatable; in WGRELAY_GROUP separate
    /// groups with ';'.
    #[arg(
        long,
        value_name = "K1,K2,...",
        env = "WGRELAY_GROUP",
        value_delimiter = ';'
    )]
    pub group: Vec<String>,

    /// Proxy mode: a WireGuard server behind the relay, as HOST:PORT (an IP address, IPv6 in
    /// brackets, or a DNS name, re-resolved while running). Initiations whose mac1 names its
    /// --server-key go there. Repeatable; comma-separated lists accepted. Each --server pairs
    /// with the --server-key at the same position.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "WGRELAY_SERVER",
        value_delimiter = ','
    )]
    pub server: Vec<String>,

    /// Public key (base64) of the --server at the same position; a key chooses one server.
    /// Repeatable; comma-separated lists accepted.
    #[arg(
        long,
        value_name = "PUBKEY",
        env = "WGRELAY_SERVER_KEY",
        value_delimiter = ','
    )]
    pub server_key: Vec<String>,

    /// Port-per-peer mode: initiations arriving on relay port PORT (bound on the host of the
    /// first --listen address) or on ADDR:PORT go to the holder of PUBKEY. Its endpoint is
    /// learned from its own traffic, or fixed with @IP:PORT, or read from a local WireGuard
    /// device with @uapi:DEVICE (a name such as wg0, or an absolute UAPI socket path).
    /// Repeatable; comma-separated lists accepted. Examples: 10001=PUBKEY,
    /// 10002=PUBKEY@192.0.2.7:51820, [::1]:10003=PUBKEY@uapi:wg0.
    #[arg(
        long,
        value_name = "[ADDR:]PORT=PUBKEY[@ENDPOINT]",
        env = "WGRELAY_PEER",
        value_delimiter = ','
    )]
    pub peer: Vec<String>,

    /// AmneziaWG framing of every listener (and every --peer port): one parameter as
    /// KEY=VALUE, KEY one of jc, jmin, jmax, s1, s2, s3, s4 (integers), h1, h2, h3, h4 (N or
    /// N-M). Repeatable; comma-separated lists accepted (WGRELAY_AWG="jc=4,s1=20,..."). Keys
    /// not given keep plain WireGuard values. [default: plain WireGuard]
    #[arg(
        long,
        value_name = "KEY=VALUE",
        env = "WGRELAY_AWG",
        value_delimiter = ','
    )]
    pub awg: Vec<String>,

    /// TOML configuration file; flags and environment variables override
    /// its settings.
    #[arg(long, value_name = "FILE", env = "WGRELAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log at least at debug level (wpex compatibility).
    #[arg(
        long,
        env = "WGRELAY_DEBUG",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub debug: bool,

    /// Every setting that each source gives as one value.
    #[command(flatten)]
    pub scalars: Scalars,
}

/// Declares the single-valued settings once: the flag, its variable and help (clap), the
/// file key (serde, the field's name) and the generic merge all come from this list. Lists
/// (listen, allow, groups, servers, peers, awg) are spelled differently per source and are
/// read by hand.
macro_rules! scalar_settings {
    ($( $(#[$meta:meta])* $name:ident: $ty:ty, )*) => {
        /// The single-valued settings of one source; `None` = that source does not set it.
        #[derive(Debug, Clone, Default, PartialEq, Eq, Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Scalars {
            $( $(#[$meta])* pub $name: Option<$ty>, )*
        }

        impl Scalars {
            /// Their keys in the configuration file.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Each setting from `self` where it is set, else from `lower`.
            pub fn or(self, lower: Scalars) -> Scalars {
                Scalars { $( $name: self.$name.or(lower.$name), )* }
            }
        }
    };
}

scalar_settings! {
    /// When unproven sources must answer a cookie challenge (DoS protection):
    /// always; under-load (when the named key's budget is spent, or a search
    /// is needed); never. [default: under-load]
    #[arg(long, value_enum, value_name = "MODE", env = "WGRELAY_COOKIE")]
    cookie: CookieMode,

    /// Fan-out copies of handshake initiations per second that involve an
    /// unproven endpoint; 0 means unlimited (copies between proven peers are
    /// bounded per sender instead: 4096 per sweep, one sweep a second). [default: 1000]
    #[arg(long, value_name = "PPS", env = "WGRELAY_BROADCAST_RATE")]
    broadcast_rate: u32,

    /// Number of worker threads (1-1024). [default: number of CPUs]
    #[arg(long, value_name = "N", env = "WGRELAY_THREADS")]
    threads: usize,

    /// Datagram I/O backend: uring (io_uring; an error where io_uring cannot run), mmsg
    /// (poll + recvmmsg/sendmmsg) or auto: io_uring where it can run (a container's seccomp
    /// profile or kernel.io_uring_disabled may forbid it), else mmsg, with one log line saying
    /// why. [default: auto]
    #[arg(long, value_enum, value_name = "BACKEND", env = "WGRELAY_BACKEND")]
    backend: BackendChoice,

    /// UDP GSO: send runs of datagrams to one destination as one segmentation-offload send
    /// (Linux 4.18+). on is turned off at runtime if the kernel refuses it.
    /// [default: on]
    #[arg(long, value_enum, value_name = "on|off", env = "WGRELAY_GSO")]
    gso: Switch,

    /// UDP GRO: let the kernel coalesce received datagrams of one flow (Linux 5.0+); each run
    /// is kept whole, its datagrams routed one by one, and sent on to one destination as one
    /// GSO message. [default: on]
    #[arg(long, value_enum, value_name = "on|off", env = "WGRELAY_GRO")]
    gro: Switch,

    /// Kernel steering: with several threads, a reuseport BPF program hands each packet to
    /// the shard that owns its receiver index. off leaves it to the kernel's hash, and shards
    /// hand packets to their owner themselves. [default: on]
    #[arg(long, value_enum, value_name = "on|off", env = "WGRELAY_STEERING")]
    steering: Switch,

    /// Keep confirmed sessions across a restart: written here on a clean stop (SIGINT or
    /// SIGTERM) and read back at start, so peers need no new handshake. [default: none]
    #[arg(long, value_name = "FILE", env = "WGRELAY_STATE_FILE")]
    state_file: std::path::PathBuf,

    /// Log verbosity. [default: info]
    #[arg(long, value_enum, value_name = "LEVEL", env = "WGRELAY_LOG_LEVEL")]
    log_level: LogLevel,

    /// Seconds between statistics log lines; 0 turns them off. [default: 60]
    #[arg(long, value_name = "SECS", env = "WGRELAY_STATS_INTERVAL")]
    stats_interval: u64,

    /// wpex compatibility: IP address to listen on ("" = all addresses).
    /// With --port, defines one listen address added to --listen.
    #[arg(long, value_name = "ADDR", env = "WGRELAY_BIND")]
    bind: String,

    /// wpex compatibility: UDP port to listen on (default 40000 when --bind
    /// is given). With --bind, defines one listen address added to --listen.
    #[arg(long, value_name = "PORT", env = "WGRELAY_PORT")]
    port: u16,

    /// Log line format: text (plain lines; with syslog priority prefixes when stderr is the
    /// journal) or json (one object per line, for log shippers). [default: text]
    #[arg(long, value_enum, value_name = "FORMAT", env = "WGRELAY_LOG_FORMAT")]
    log_format: LogFormat,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9586).
    /// [default: off]
    #[arg(long, value_name = "ADDR", env = "WGRELAY_METRICS")]
    metrics: String,

    /// Unix socket (owner-only) that `wgrelay show` and `wgrelay reload` talk to; off turns it
    /// off. [default: /run/wgrelay/control.sock]
    #[arg(long, value_name = "PATH", env = "WGRELAY_CONTROL_SOCKET")]
    control_socket: PathBuf,
}

impl Layer {
    pub(super) fn from_args(a: &RunArgs) -> Result<Layer, ConfigError> {
        let mut listen =
            each(&a.listen, |s| parse_listen("--listen", s)).map_err(ConfigError::new)?;
        let flag = |key: &str| format!("--{}", key.replace('_', "-"));
        listen.extend(check_scalars(&a.scalars, flag, |_, m| ConfigError::new(m))?);
        // (checked in the order the flags are documented: the first mistake is reported)
        let lists = || -> Result<Layer, String> {
            let allow = each(&a.allow, |s| parse_key("--allow", s))?;
            let mut groups = Vec::new();
            for g in &a.group {
                let keys = g.split(',').map(|s| parse_key("--group", s));
                groups.push(check_group(
                    "--group",
                    &format!("{g:?}"),
                    keys.collect::<Result<_, _>>()?,
                )?);
            }
            let servers = servers_from_args(&a.server, &a.server_key)?;
            let peers = each(&a.peer, parse_peer_flag)?;
            check_peer_keys(&peers)?;
            Ok(Layer {
                listen: non_empty(listen),
                allow: non_empty(allow),
                groups: non_empty(groups),
                servers: non_empty(servers),
                peers: non_empty(peers),
                awg: awg_from_args(&a.awg)?,
                wgproxy_timeout: None,
                scalars: a.scalars.clone(),
            })
        };
        lists().map_err(ConfigError::new)
    }
}

/// Every item parsed, or the first one's error.
fn each<T>(items: &[String], parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    items.iter().map(|s| parse(s)).collect()
}

/// `--server`/`--server-key` pairs, in order.
pub(super) fn servers_from_args(addrs: &[String], keys: &[String]) -> Result<Vec<Server>, String> {
    let addrs = each(addrs, |s| {
        s.parse::<HostPort>().map_err(|e| format!("--server: {e}"))
    })?;
    let keys = each(keys, |s| parse_key("--server-key", s))?;
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
pub(super) fn parse_peer_flag(s: &str) -> Result<PeerSpec, String> {
    let at = format!("--peer {s:?}");
    let syntax = || {
        format!(
            "{at}: expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE"
        )
    };
    let (place, rest) = s.split_once('=').ok_or_else(syntax)?;
    let place = place.trim();
    let port0 = || format!("{at}: {PORT_0}");
    let listen = if !place.is_empty() && place.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = place
            .parse()
            .map_err(|_| format!("{at}: port {place} is out of range (1-65535)"))?;
        PeerListen::Port(check_port(&at, port).map_err(|_| port0())?)
    } else {
        match place.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => return Err(port0()),
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

/// `--awg KEY=VALUE ...`: `None` when not given.
pub(super) fn awg_from_args(items: &[String]) -> Result<Option<AwgParams>, String> {
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

/// The flags whose value came from their environment variable, as (`--flag`, `VARIABLE`),
/// for the subcommand that runs.
pub(super) fn env_sourced(matches: &clap::ArgMatches) -> Vec<(String, String)> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let (sub, m) = match matches.subcommand() {
        Some((name, m)) => (cmd.find_subcommand(name).cloned(), m),
        None => (None, matches),
    };
    let cmd = sub.unwrap_or(cmd);
    cmd.get_arguments()
        .filter(|a| {
            m.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::EnvVariable)
        })
        .filter_map(|a| {
            let long = a.get_long()?;
            let var = a.get_env()?.to_str()?;
            Some((format!("--{long}"), var.to_string()))
        })
        .collect()
}

/// An error about `--flag` names `VARIABLE` instead when that is where the value came from.
pub(super) fn name_the_variable(message: &str, from_env: &[(String, String)]) -> String {
    for (flag, var) in from_env {
        if let Some(rest) = message.strip_prefix(flag.as_str()) {
            if let Some(value) = rest.strip_prefix(' ') {
                return format!("{var}={value}");
            }
            if rest.is_empty() || rest.starts_with(':') {
                return format!("{var}{rest}");
            }
        }
    }
    message.to_string()
}

/// clap's own error, or, for a bad value that came from an environment variable (clap names
/// only the flag), one line naming the variable: `VAR=value: invalid value for --flag: why`.
pub(super) fn env_clap_error(
    e: clap::Error,
    argv: &[std::ffi::OsString],
) -> Result<clap::Error, String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return Ok(e);
    }
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let long = arg
        .split([' ', '='])
        .next()
        .unwrap_or("")
        .trim_start_matches("--");
    let (flag, flag_eq) = (format!("--{long}"), format!("--{long}="));
    let on_argv = argv.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == flag || a.starts_with(&flag_eq)
    });
    let var = Cli::command()
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env().and_then(|v| v.to_str()).map(str::to_string));
    match (var, on_argv) {
        (Some(var), false) => match std::env::var_os(&var) {
            Some(value) => {
                // a value parser says why; a fixed set of values (clap's value_enum) lists them
                let why = match (
                    std::error::Error::source(&e),
                    e.get(ContextKind::ValidValue),
                ) {
                    (Some(source), _) => source.to_string(),
                    (None, Some(ContextValue::Strings(valid))) => {
                        format!("expected one of {}", valid.join(", "))
                    }
                    _ => "invalid value".to_string(),
                };
                Err(format!(
                    "{var}={}: invalid value for {arg}: {why}",
                    value.to_string_lossy()
                ))
            }
            None => Ok(e),
        },
        _ => Ok(e),
    }
}
