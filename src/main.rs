//! `wgrelay`: parse the command line into a `Config`, then run or check it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Write;

use clap::{CommandFactory, FromArgMatches};
use wgrelay::cli::{Cli, Mode};
use wgrelay::config::Config;
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
    let from_env = env_sourced(&matches);
    let (mode, args) = cli.into_parts();
    let config = match Config::from_args(&args) {
        Ok(c) => c,
        Err(e) => {
            wgrelay::logging::fatal(&name_the_variable(&e.to_string(), &from_env));
            return ExitCode::from(2);
        }
    };
    wgrelay::logging::init(config.log_level, config.log_format);
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
    }
}

fn run(config: &Config) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (signal, flag) in [
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGTERM, &stop),
        // SIGHUP reloads the configuration (it would otherwise end the process)
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        if let Err(e) = signal_hook::flag::register(signal, flag.clone()) {
            wgrelay::logging::fatal(&format!("cannot install a signal handler: {e}"));
            return ExitCode::from(1);
        }
    }
    let mut relay = match Relay::start(config) {
        Ok(r) => r,
        Err(e) => {
            wgrelay::logging::fatal(&format!("cannot start: {e}"));
            return ExitCode::from(1);
        }
    };
    // After the relay, so a scrape always has a relay to read; a bind error stops it cleanly.
    let metrics = match config.metrics {
        Some(addr) => match wgrelay::metrics::serve(addr, relay.observer()) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("wgrelay: cannot serve metrics on {addr}: {e}");
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
    // Every socket is bound (Relay::start returned): systemd may start what waits on us.
    wgrelay::notify::ready(&format!("relaying on {}", addrs.join(", ")));
    let mut next_stats = config.stats_interval.map(|d| Instant::now() + d);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if hup.swap(false, Ordering::Relaxed) {
            let before = relay.config().stats_interval;
            wgrelay::notify::reloading();
            match reload(&mut relay) {
                Ok(what) => log::info!("reload: {what}"),
                Err(why) => log::error!("reload refused, nothing changed: {why}"),
            }
            wgrelay::notify::ready(&format!("relaying on {}", addrs.join(", ")));
            if relay.config().stats_interval != before {
                next_stats = relay.config().stats_interval.map(|d| Instant::now() + d);
            }
        }
        if let (Some(at), Some(every)) = (next_stats, relay.config().stats_interval) {
            if Instant::now() >= at {
                log::info!("stats: {}", relay.stats());
                next_stats = Some(at + every);
            }
        }
    }
    wgrelay::notify::stopping();
    log::info!("stopping");
    if let Some(m) = metrics {
        m.stop();
    }
    let stats = relay.stop();
    log::info!("final stats: {stats}");
    ExitCode::SUCCESS
}

/// Reads the configuration again from every source (the same command line, the environment
/// and the file as they are now), validates it and applies it to `relay`. A configuration
/// that does not validate changes nothing.
fn reload(relay: &mut Relay) -> Result<String, String> {
    let matches = Cli::command()
        .try_get_matches_from(std::env::args_os())
        .map_err(|e| e.to_string().trim().to_string())?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string().trim().to_string())?;
    let from_env = env_sourced(&matches);
    let (_, args) = cli.into_parts();
    let config =
        Config::from_args(&args).map_err(|e| name_the_variable(&e.to_string(), &from_env))?;
    let done = relay.reload(&config).map_err(|e| e.to_string())?;
    wgrelay::logging::set_level(config.log_level);
    Ok(done.to_string())
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
