//! `wgrelay`: parse the command line into a `Config`, then run or check it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Write;

use clap::{CommandFactory, FromArgMatches};
use wgrelay::cli::{Cli, Command, Mode};
use wgrelay::config::Config;
use wgrelay::ctl;
use wgrelay::relay::Relay;

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return clap_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    // show and reload talk to a running relay: no configuration of their own
    match &cli.command {
        Some(Command::Show(a)) => {
            return ctl::client::show(a.socket.control_socket.as_deref(), a.json)
        }
        Some(Command::Reload(a)) => return ctl::client::reload(a.control_socket.as_deref()),
        _ => {}
    }
    let from_env = env_sourced(&matches);
    let (mode, args) = cli.into_parts();
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wgrelay: {}", name_the_variable(&e.to_string(), &from_env));
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(config.log_level)
        .parse_env("WGRELAY_LOG")
        .format_target(false)
        .init();
    match mode {
        Mode::CheckConfig => {
            // stdout may be closed or full (`| true`, `> /dev/full`): say so, never panic
            let mut out = std::io::stdout().lock();
            match writeln!(out, "{}\nconfiguration OK", config.summary()).and_then(|()| out.flush())
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wgrelay: configuration OK, but it could not be printed: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Mode::Run => run(&config),
        // dispatched above, before any configuration is read
        Mode::Client => ExitCode::from(2),
    }
}

fn run(config: &Config) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, stop.clone()) {
            eprintln!("wgrelay: cannot install a signal handler: {e}");
            return ExitCode::from(1);
        }
    }
    let relay = match Relay::start(config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wgrelay: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    // the control socket, once the relay runs (it answers from the shards)
    let control = match &config.control_socket {
        Some(path) => match ctl::serve(path, relay.inspector(), ctl::no_reload()) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("wgrelay: cannot start: {e}");
                relay.stop();
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    for line in config.summary().lines() {
        log::info!("{line}");
    }
    if let Some(timeout) = config.wgproxy_timeout {
        log::warn!(
            "WGPROXY_TIMEOUT={} is accepted for wgproxy compatibility but superseded: sessions expire by WireGuard's own timers",
            timeout.as_secs()
        );
    }
    let addrs: Vec<String> = relay.local_addrs().iter().map(|a| a.to_string()).collect();
    log::info!("relaying on {}", addrs.join(", "));
    let mut next_stats = config.stats_interval.map(|d| Instant::now() + d);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if let (Some(at), Some(every)) = (next_stats, config.stats_interval) {
            if Instant::now() >= at {
                log::info!("stats: {}", relay.stats());
                next_stats = Some(at + every);
            }
        }
    }
    log::info!("stopping");
    drop(control);
    let stats = relay.stop();
    log::info!("final stats: {stats}");
    ExitCode::SUCCESS
}

/// The flags whose value came from their environment variable, as (`--flag`, `VARIABLE`),
/// for the subcommand that runs.
fn env_sourced(matches: &clap::ArgMatches) -> Vec<(String, String)> {
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
fn name_the_variable(message: &str, from_env: &[(String, String)]) -> String {
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

/// clap's own errors (help and version included), with a bad value that came from an
/// environment variable reported as that variable: clap names only the flag.
fn clap_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        let long = arg
            .split([' ', '='])
            .next()
            .unwrap_or("")
            .trim_start_matches("--");
        let on_argv = std::env::args()
            .any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
        let var = Cli::command()
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env().and_then(|v| v.to_str()).map(str::to_string));
        if let (Some(var), false) = (var, on_argv) {
            if let Some(value) = std::env::var_os(&var) {
                let why = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "invalid value".to_string());
                eprintln!(
                    "wgrelay: {var}={}: invalid value for {arg}: {why}",
                    value.to_string_lossy()
                );
                return ExitCode::from(2);
            }
        }
    }
    let code = e.exit_code();
    let _ = e.print();
    ExitCode::from(u8::try_from(code).unwrap_or(2))
}
