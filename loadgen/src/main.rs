//! wgrelay-loadgen: real WireGuard handshakes through a relay, then synthetic transport
//! traffic; reports throughput, loss, latency, and the relay's CPU and memory.

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wgrelay_loadgen::matrix::{self, MatrixConfig};
use wgrelay_loadgen::procinfo;
use wgrelay_loadgen::run::{self, RunConfig};
use wgrelay_loadgen::setup::SetupOptions;
use wgrelay_loadgen::topo::AddrMode;

#[derive(Parser, Debug)]
#[command(name = "wgrelay-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One run against one relay: set-up, then one traffic phase per (size, rate).
    Run(RunArgs),
    /// The benchmark matrix (wgrelay vs the null relay: datapath, GSO/GRO, shards); writes
    /// docs/benchmarks.md and an SVG.
    Matrix(MatrixArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Addr {
    Distinct,
    Shared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Direction {
    One,
    Both,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Relay address (IPv4 loopback).
    #[arg(long, default_value = "127.0.0.1:51820")]
    relay: SocketAddrV4,
    /// Start the relay with this command (split on whitespace), measure it, stop it with SIGTERM.
    #[arg(long)]
    spawn: Option<String>,
    /// Measure an already running relay's CPU and memory.
    #[arg(long, conflicts_with = "spawn")]
    relay_pid: Option<u32>,
    /// Pin the spawned relay to this CPU.
    #[arg(long)]
    relay_cpu: Option<usize>,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// The target is wgrelay-null: send its pairing hellos.
    #[arg(long)]
    null: bool,
    #[arg(long, default_value = "run")]
    label: String,
    /// Free text recorded in the report (e.g. the relay's flags).
    #[arg(long, default_value = "")]
    note: String,
    /// Sessions (peer pairs).
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    #[arg(long, value_enum, default_value = "distinct")]
    addr: Addr,
    /// Distinct addresses: one socket per peer instead of one IP_PKTINFO socket.
    #[arg(long)]
    no_pktinfo: bool,
    /// Sessions in handshake at once.
    #[arg(long, default_value_t = 512)]
    hs_window: usize,
    /// Sessions started per second at most (0: the window alone limits).
    #[arg(long, default_value_t = 0.0)]
    hs_rate: f64,
    /// Retry a handshake not confirmed after this many ms.
    #[arg(long, default_value_t = 1000)]
    hs_timeout_ms: u64,
    #[arg(long, default_value_t = 10)]
    hs_attempts: u32,
    /// Give up on set-up after this many seconds.
    #[arg(long, default_value_t = 60)]
    hs_deadline_s: u64,
    /// Datagram sizes (32..=1472), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    size: Vec<usize>,
    /// Offered rates in datagrams/s (total, both directions), comma separated: 100k, 20000, max.
    #[arg(long, value_delimiter = ',', default_value = "100k")]
    rate: Vec<String>,
    /// Seconds per traffic phase.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Wait this long for stragglers after each phase.
    #[arg(long, default_value_t = 300)]
    drain_ms: u64,
    #[arg(long, value_enum, default_value = "both")]
    direction: Direction,
    /// Datagrams per UDP GSO send (1: no GSO).
    #[arg(long, default_value_t = 1)]
    gso: usize,
    /// Receive with UDP GRO.
    #[arg(long)]
    gro: bool,
    /// Socket buffer bytes.
    #[arg(long, default_value_t = 8 << 20)]
    buffer: usize,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct MatrixArgs {
    /// Fewer points, one repetition, shorter phases.
    #[arg(long)]
    quick: bool,
    /// Only rewrite the reports from an earlier run's raw JSON lines (see --raw).
    #[arg(long)]
    from_raw: Option<String>,
    /// wgrelay binary.
    #[arg(long, default_value = "target/release/wgrelay")]
    wgrelay: String,
    /// wgrelay-null binary.
    #[arg(long, default_value = "target/release/wgrelay-null")]
    null: String,
    /// Extra flags for wgrelay.
    #[arg(long, default_value = "--cookie never")]
    relay_flags: String,
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: String,
    #[arg(long, default_value = "docs/benchmarks.svg")]
    svg: String,
    /// Raw JSON lines of every run.
    #[arg(long, default_value = "target/bench-results.jsonl")]
    raw: String,
    /// CPU for the relay; the generator takes the next one.
    #[arg(long, default_value_t = 0)]
    relay_cpu: usize,
    /// Sections to run, comma separated: datapath (per-datagram traffic, backends x sessions,
    /// and the set-up/memory table), gso (GSO/GRO traffic vs the coalescing and per-datagram
    /// null relays), shards (--threads 1 vs 2). Default: all; with --from-raw, those in the file.
    #[arg(long, value_delimiter = ',')]
    sections: Option<Vec<String>>,
    /// Session counts of the datapath section, comma separated [default: 1,1000,10000;
    /// --quick: 1,1000].
    #[arg(long, value_delimiter = ',')]
    sessions: Option<Vec<usize>>,
    /// GSO segments per send of the gso section, comma separated [default: 16,64].
    #[arg(long, value_delimiter = ',')]
    gso_segments: Option<Vec<usize>>,
    /// Sessions of the shards section [default: 1000].
    #[arg(long)]
    shard_sessions: Option<usize>,
    /// Repetitions of every point [default: 3; --quick: 1].
    #[arg(long)]
    reps: Option<usize>,
    /// The exact command line, recorded in the report (bench.sh passes it).
    #[arg(long, default_value = "")]
    command: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(a) => run_cmd(a),
        Cmd::Matrix(a) => {
            let cfg = MatrixConfig {
                quick: a.quick,
                from_raw: a.from_raw,
                wgrelay: a.wgrelay,
                null: a.null,
                relay_flags: a.relay_flags,
                out: a.out,
                svg: a.svg,
                raw: a.raw,
                relay_cpu: a.relay_cpu,
                sessions: a.sessions,
                reps: a.reps,
                command: a.command,
                sections: a.sections,
                gso_segments: a.gso_segments,
                shard_sessions: a.shard_sessions,
            };
            match matrix::run(&cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wgrelay-loadgen matrix: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_cmd(a: RunArgs) -> ExitCode {
    if let Some(cpu) = a.cpu {
        if let Err(e) = procinfo::pin(cpu) {
            eprintln!("wgrelay-loadgen: pinning to CPU {cpu}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut rates = Vec::new();
    for r in &a.rate {
        match run::parse_rate(r) {
            Ok(v) => rates.push(v),
            Err(e) => {
                eprintln!("wgrelay-loadgen: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if a.sessions == 0 || a.sessions > 1 << 21 {
        eprintln!("wgrelay-loadgen: --sessions must be 1..=2097152");
        return ExitCode::FAILURE;
    }
    if a.size.iter().any(|&s| !(32..=1472).contains(&s)) {
        eprintln!("wgrelay-loadgen: --size values must be 32..=1472");
        return ExitCode::FAILURE;
    }
    let index_base = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id())
        & 0x00ff_ffff;
    let cfg = RunConfig {
        label: a.label,
        relay: a.relay,
        spawn: a.spawn,
        relay_pid: a.relay_pid,
        relay_cpu: a.relay_cpu,
        null: a.null,
        sessions: a.sessions,
        addr: match a.addr {
            Addr::Distinct => AddrMode::Distinct,
            Addr::Shared => AddrMode::Shared,
        },
        pktinfo: !a.no_pktinfo,
        setup: SetupOptions {
            window: a.hs_window.max(1),
            rate: a.hs_rate,
            timeout: Duration::from_millis(a.hs_timeout_ms.max(10)),
            attempts: a.hs_attempts.max(1),
            deadline: Duration::from_secs(a.hs_deadline_s),
            hello: a.null,
            index_base,
            progress: !a.quiet,
        },
        sizes: a.size,
        rates,
        duration: Duration::from_secs_f64(a.duration.clamp(0.1, 3600.0)),
        drain: Duration::from_millis(a.drain_ms),
        both: a.direction == Direction::Both,
        gso: a.gso.max(1),
        gro: a.gro,
        buffer: a.buffer,
        progress: !a.quiet,
        note: a.note,
    };
    match run::execute(&cfg) {
        Ok(v) => {
            print!("{}", run::summary(&v));
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgrelay-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
