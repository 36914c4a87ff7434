//! Command-line interface (clap derive types only).
//!
//! ```text
//! wgrelay [RUN-FLAGS]               run the relay (no subcommand = run)
//! wgrelay run [RUN-FLAGS]           run the relay
//! wgrelay check-config [RUN-FLAGS]  validate and print the effective configuration
//! wgrelay show [--json]             show a running relay (over its control socket)
//! wgrelay reload                    ask a running relay to re-read its configuration
//! ```
//!
//! Every flag can also be set through a `WGRELAY_*` environment variable;
//! a flag on the command line wins over its variable. Keys and addresses are
//! kept as plain strings here: [`crate::config::Config::from_args`]
//! validates them and produces messages that name the offending value.
//! wgproxy's `WGPROXY_*` variables are not flags: the configuration reads them
//! itself, below every other source (see [`crate::config`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::config::{BackendChoice, CookieMode, Switch};

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

/// Log verbosity as spelled on the command line and in the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
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

    /// When unproven sources must answer a cookie challenge (DoS protection):
    /// always; under-load (when the named key's budget is spent, or a search
    /// is needed); never. [default: under-load]
    #[arg(long, value_enum, value_name = "MODE", env = "WGRELAY_COOKIE")]
    pub cookie: Option<CookieMode>,

    /// Fan-out copies of handshake initiations per second that involve an
    /// unproven endpoint; 0 means unlimited (copies between proven peers are
    /// bounded per sender instead: 4096 per sweep, one sweep a second). [default: 1000]
    #[arg(long, value_name = "PPS", env = "WGRELAY_BROADCAST_RATE")]
    pub broadcast_rate: Option<u32>,

    /// Number of worker threads (1-1024). [default: number of CPUs]
    #[arg(long, value_name = "N", env = "WGRELAY_THREADS")]
    pub threads: Option<usize>,

    /// Datagram I/O backend: uring (io_uring; an error where io_uring cannot run), mmsg
    /// (poll + recvmmsg/sendmmsg) or auto: io_uring where it can run (a container's seccomp
    /// profile or kernel.io_uring_disabled may forbid it), else mmsg, with one log line saying
    /// why. [default: auto]
    #[arg(long, value_enum, value_name = "BACKEND", env = "WGRELAY_BACKEND")]
    pub backend: Option<BackendChoice>,

    /// UDP GSO: send runs of datagrams to one destination as one segmentation-offload send
    /// (Linux 4.18+). on is turned off at runtime if the kernel refuses it.
    /// [default: on]
    #[arg(long, value_enum, value_name = "on|off", env = "WGRELAY_GSO")]
    pub gso: Option<Switch>,

    /// UDP GRO: let the kernel coalesce received datagrams of one flow (Linux
    /// 5.0+); they are split again before routing. [default: on]
    #[arg(long, value_enum, value_name = "on|off", env = "WGRELAY_GRO")]
    pub gro: Option<Switch>,

    /// Kernel steering: with several threads, a reuseport BPF program hands each packet to
    /// the shard that owns its receiver index. off leaves it to the kernel's hash, and shards
    /// hand packets to their owner themselves. [default: on]
    #[arg(long, value_enum, value_name = "on|off", env = "WGRELAY_STEERING")]
    pub steering: Option<Switch>,

    /// Keep confirmed sessions across a restart: written here on a clean stop (SIGINT or
    /// SIGTERM) and read back at start, so peers need no new handshake. [default: none]
    #[arg(long, value_name = "FILE", env = "WGRELAY_STATE_FILE")]
    pub state_file: Option<std::path::PathBuf>,

    /// Control socket answering `wgrelay show` and `wgrelay reload` (owner-only; its
    /// directory is created 0700 if missing); off turns it off. Two relays on one host need
    /// two paths. [default: /run/wgrelay/control.sock]
    #[arg(long, value_name = "PATH", env = "WGRELAY_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,

    /// TOML configuration file; flags and environment variables override
    /// its settings.
    #[arg(long, value_name = "FILE", env = "WGRELAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log verbosity. [default: info]
    #[arg(long, value_enum, value_name = "LEVEL", env = "WGRELAY_LOG_LEVEL")]
    pub log_level: Option<LogLevel>,

    /// Log at least at debug level (wpex compatibility).
    #[arg(
        long,
        env = "WGRELAY_DEBUG",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub debug: bool,

    /// Seconds between statistics log lines; 0 turns them off. [default: 60]
    #[arg(long, value_name = "SECS", env = "WGRELAY_STATS_INTERVAL")]
    pub stats_interval: Option<u64>,

    /// wpex compatibility: IP address to listen on ("" = all addresses).
    /// With --port, defines one listen address added to --listen.
    #[arg(long, value_name = "ADDR", env = "WGRELAY_BIND")]
    pub bind: Option<String>,

    /// wpex compatibility: UDP port to listen on (default 40000 when --bind
    /// is given). With --bind, defines one listen address added to --listen.
    #[arg(long, value_name = "PORT", env = "WGRELAY_PORT")]
    pub port: Option<u16>,
}
