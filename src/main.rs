//! `wgrelay`: parse the command line into a `Config`, then run or check it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Write;

use wgrelay::config::{self, Config, Mode};
use wgrelay::relay::Relay;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (mode, config) = match config::load(&argv) {
        Ok(loaded) => loaded,
        Err(e) => {
            e.print();
            return ExitCode::from(e.exit_code());
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
    let stats = relay.stop();
    log::info!("final stats: {stats}");
    ExitCode::SUCCESS
}
