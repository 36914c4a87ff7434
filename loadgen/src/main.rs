//! wgrelay-loadgen: real WireGuard handshakes through a relay, then synthetic transport
//! traffic; reports throughput, loss, latency, and the relay's CPU and memory.

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wgrelay_loadgen::attack::{self, AttackConfig, Forge, Rehandshake, Target};
use wgrelay_loadgen::matrix::{self, MatrixConfig};
use wgrelay_loadgen::procinfo;
use wgrelay_loadgen::run::{self, RunConfig};
use wgrelay_loadgen::setup::SetupOptions;
use wgrelay_loadgen::timers::{self, KeyConfig, TimersConfig};
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
    /// A cold start of P pairs on WireGuard's own timers (boringtun retries, jitter,
    /// cookies): pairs working over time, rejected copies, relay CPU/RSS and counters.
    Timers(TimersArgs),
    /// Spoofed initiations from fresh source addresses while a legit pair exchanges data and
    /// re-handshakes: amplification (bytes out/in), third-party copies, legit handshake time
    /// and loss, relay CPU/RSS.
    Attack(AttackArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Groups {
    /// Every key in one allow-list (`allow = [...]`).
    One,
    /// One group per pair (`groups = [[a, b], ...]`).
    PerPair,
    /// No keys: for a relay in open mode.
    Open,
}

#[derive(Args, Debug)]
struct TimersArgs {
    /// Relay address (IPv4 loopback).
    #[arg(long, default_value = "127.0.0.1:51820")]
    relay: SocketAddrV4,
    /// Start the relay with this command (split on whitespace), measure it, stop it with
    /// SIGTERM and read its `final stats` line.
    #[arg(long)]
    spawn: Option<String>,
    /// Measure an already running relay's CPU and memory.
    #[arg(long, conflicts_with = "spawn")]
    relay_pid: Option<u32>,
    #[arg(long)]
    relay_cpu: Option<usize>,
    /// Pin the generator to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Peer pairs (2 peers each, every peer on its own 127.64.x.y address).
    #[arg(long, default_value_t = 1000)]
    pairs: usize,
    /// Peers come up at random moments within this many seconds (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    ramp: f64,
    /// Stop after this many seconds (or when every pair works); at most 600.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Restart both peers of a pair that does not work yet every MS ms (new Tunns, same keys).
    #[arg(long, value_name = "MS")]
    flap: Option<u64>,
    /// Key seed: the same seed gives the same keys, so one relay configuration serves
    /// several runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How --write-config gives the keys to the relay.
    #[arg(long, value_enum, default_value = "one")]
    groups: Groups,
    /// Write the relay's TOML configuration with these keys here (before spawning it).
    #[arg(long, value_name = "FILE")]
    write_config: Option<String>,
    /// Only write --write-config, then exit.
    #[arg(long, requires = "write_config")]
    config_only: bool,
    /// UDP port of the generator's one socket (0: any). A fixed port makes a second run
    /// present the same endpoints to the relay.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Each peer's handshake rate limit (messages/s before it answers with cookie replies)
    /// [default: boringtun's own, 10].
    #[arg(long)]
    peer_handshake_limit: Option<u64>,
    /// Socket buffer bytes.
    #[arg(long, default_value_t = 8 << 20)]
    buffer: usize,
    #[arg(long, default_value = "")]
    note: String,
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ForgeArg {
    ValidMac1,
    Random,
    Replay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RehandshakeArg {
    /// Drop A's Tunn and make a new one (same keys, new index), initiating at once.
    Restart,
    /// format_handshake_initiation(force) on A's live Tunn.
    Rekey,
    Off,
}

#[derive(Args, Debug)]
struct AttackArgs {
    /// Relay address (IPv4 loopback).
    #[arg(long, default_value = "127.0.0.1:51820")]
    relay: SocketAddrV4,
    /// Start the relay with this command (split on whitespace; {KEY_A}, {KEY_B} and {B_ADDR}
    /// are replaced), measure it, stop it with SIGTERM and read its `final stats` line.
    #[arg(long)]
    spawn: Option<String>,
    #[arg(long, conflicts_with = "spawn")]
    relay_pid: Option<u32>,
    #[arg(long)]
    relay_cpu: Option<usize>,
    /// Pin the generator (legit peers) to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    /// Pin the attacker's sending thread to this CPU.
    #[arg(long)]
    attack_cpu: Option<usize>,
    /// Spoofed initiations per second (100k, 2000, max).
    #[arg(long, default_value = "2000")]
    rate: String,
    /// Attack length in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, value_enum, default_value = "valid-mac1")]
    forge: ForgeArg,
    /// B is a WireGuard server behind the relay (relay: --server B_ADDR --server-key KEY_B).
    #[arg(long, conflicts_with = "port_peer")]
    legit_server: bool,
    /// B is the responder of the relay's port PORT (relay: --peer PORT=KEY_B@B_ADDR).
    #[arg(long, value_name = "PORT")]
    port_peer: Option<u16>,
    /// B's address (fixed, so the relay can be configured with it).
    #[arg(long, default_value = "127.66.0.2:51821")]
    b_addr: SocketAddrV4,
    /// Legit packets per second, each way.
    #[arg(long, default_value_t = 200.0)]
    pps: f64,
    /// Seconds of legit traffic before the attack.
    #[arg(long, default_value_t = 1.0)]
    before: f64,
    /// Force A's re-handshake this many seconds into the attack (--cold: the pair comes up then).
    #[arg(long, default_value_t = 1.0)]
    rehandshake_after: f64,
    #[arg(long, value_enum, default_value = "restart")]
    rehandshake: RehandshakeArg,
    /// The relay has never seen the legit pair: the attack starts at once and the pair comes
    /// up (its first handshake) --rehandshake-after seconds into it; --before and
    /// --rehandshake are not used, and a pair that never works is reported, not an error.
    #[arg(long)]
    cold: bool,
    /// Seconds of legit traffic after the attack (10: room for two more REKEY_TIMEOUT
    /// retries of a handshake the attack held up).
    #[arg(long, default_value_t = 10.0)]
    after: f64,
    /// Give up if the legit pair does not work within this many seconds.
    #[arg(long, default_value_t = 15.0)]
    setup_timeout: f64,
    /// Key seed of A and B.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// First spoofed source address (counted up, one per initiation).
    #[arg(long, default_value = "127.128.0.1")]
    attack_base: std::net::Ipv4Addr,
    /// Send the spoofed initiations here [default: where A sends its initiations].
    #[arg(long)]
    attack_to: Option<SocketAddrV4>,
    /// Each legit peer's handshake rate limit [default: boringtun's own, 10/s].
    #[arg(long)]
    peer_handshake_limit: Option<u64>,
    /// Print the relay flags this target needs (with the keys) and exit.
    #[arg(long)]
    print_config: bool,
    /// Socket buffer bytes of each generator socket (see `timers --buffer`).
    #[arg(long, default_value_t = 256 << 20)]
    buffer: usize,
    #[arg(long, default_value = "")]
    note: String,
    #[arg(long)]
    quiet: bool,
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
    /// Socket buffer bytes (forced past rmem_max with CAP_NET_ADMIN): a fan-out storm from
    /// the relay comes in bursts; the report counts what the socket still dropped.
    #[arg(long, default_value_t = 256 << 20)]
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
        Cmd::Timers(a) => timers_cmd(a),
        Cmd::Attack(a) => attack_cmd(a),
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

fn pin_generator(cpu: Option<usize>) -> bool {
    if let Some(cpu) = cpu {
        if let Err(e) = procinfo::pin(cpu) {
            eprintln!("wgrelay-loadgen: pinning to CPU {cpu}: {e}");
            return false;
        }
    }
    true
}

fn report(
    r: Result<serde_json::Value, String>,
    summary: fn(&serde_json::Value) -> String,
) -> ExitCode {
    match r {
        Ok(v) => {
            eprint!("{}", summary(&v));
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wgrelay-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn timers_cmd(a: TimersArgs) -> ExitCode {
    if !pin_generator(a.cpu) {
        return ExitCode::FAILURE;
    }
    let cfg = TimersConfig {
        relay: a.relay,
        spawn: a.spawn,
        relay_pid: a.relay_pid,
        relay_cpu: a.relay_cpu,
        pairs: a.pairs,
        ramp: Duration::from_secs_f64(a.ramp.clamp(0.0, 600.0)),
        duration: Duration::from_secs_f64(a.duration.clamp(0.1, 600.0)),
        flap: a.flap.map(|ms| Duration::from_millis(ms.max(1))),
        seed: a.seed,
        keys: match a.groups {
            Groups::One => KeyConfig::One,
            Groups::PerPair => KeyConfig::PerPair,
            Groups::Open => KeyConfig::Open,
        },
        write_config: a.write_config,
        port: a.port,
        handshake_limit: a.peer_handshake_limit,
        buffer: a.buffer,
        progress: !a.quiet,
        note: a.note,
    };
    if a.config_only {
        let path = cfg.write_config.clone().unwrap_or_default();
        return match timers::write_config(&cfg, &path) {
            Ok(()) => {
                eprintln!(
                    "wrote {path}: {} keys ({})",
                    2 * cfg.pairs,
                    cfg.keys.as_str()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wgrelay-loadgen: {e}");
                ExitCode::FAILURE
            }
        };
    }
    report(timers::execute(&cfg), timers::summary)
}

fn attack_cmd(a: AttackArgs) -> ExitCode {
    if !pin_generator(a.cpu) {
        return ExitCode::FAILURE;
    }
    let rate = match run::parse_rate(&a.rate) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wgrelay-loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = AttackConfig {
        relay: a.relay,
        spawn: a.spawn,
        relay_pid: a.relay_pid,
        relay_cpu: a.relay_cpu,
        attack_cpu: a.attack_cpu,
        target: match (a.legit_server, a.port_peer) {
            (true, _) => Target::Server,
            (false, Some(p)) => Target::PortPeer(p),
            (false, None) => Target::Exchange,
        },
        b_addr: a.b_addr,
        rate,
        seconds: a.seconds,
        forge: match a.forge {
            ForgeArg::ValidMac1 => Forge::ValidMac1,
            ForgeArg::Random => Forge::Random,
            ForgeArg::Replay => Forge::Replay,
        },
        pps: a.pps,
        before: a.before,
        rehandshake_after: a.rehandshake_after,
        after: a.after,
        rehandshake: match a.rehandshake {
            RehandshakeArg::Restart => Rehandshake::Restart,
            RehandshakeArg::Rekey => Rehandshake::Rekey,
            RehandshakeArg::Off => Rehandshake::Off,
        },
        cold: a.cold,
        seed: a.seed,
        setup_timeout: a.setup_timeout,
        attack_base: a.attack_base,
        attack_to: a.attack_to,
        handshake_limit: a.peer_handshake_limit,
        buffer: a.buffer,
        progress: !a.quiet,
        note: a.note,
    };
    if a.print_config {
        println!("{}", attack::relay_flags(&cfg));
        return ExitCode::SUCCESS;
    }
    report(attack::execute(&cfg), attack::summary)
}
