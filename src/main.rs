//! `wgrelay`: parse the command line into a `Config`, then run or check it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::io::Write;

use clap::Parser;
use wgrelay::cli::{Cli, Command};
use wgrelay::config::{self, Config, Mode};
use wgrelay::ctl;
use wgrelay::relay::Relay;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // show and reload talk to a running relay: no configuration of their own
    if let Ok(cli) = Cli::try_parse_from(&argv) {
        match &cli.command {
            Some(Command::Show(a)) => {
                return ctl::client::show(a.socket.control_socket.as_deref(), a.json)
            }
            Some(Command::Reload(a)) => return ctl::client::reload(a.control_socket.as_deref()),
            _ => {}
        }
    }
    let (mode, config) = match config::load(&argv) {
        Ok(loaded) => loaded,
        Err(e) => {
            match &e {
                // in the style of the logs (the journal's priority prefix under systemd)
                config::LoadError::Invalid(message) => wgrelay::logging::fatal(message),
                config::LoadError::Clap(_) => e.print(),
            }
            return ExitCode::from(e.exit_code());
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
        // dispatched above, before any configuration is read
        Mode::Client => ExitCode::from(2),
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
    // The control socket's `reload` runs here, on the thread that owns the relay: the
    // socket's thread asks over a channel and waits for the answer.
    let (reload_tx, reload_rx) = crossbeam_channel::bounded::<ReloadReply>(1);
    let hook: ctl::ReloadHook = Box::new(move || {
        let (tx, rx) = crossbeam_channel::bounded(1);
        reload_tx
            .send_timeout(tx, Duration::from_secs(5))
            .map_err(|_| "the relay is busy with another reload".to_string())?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the relay did not answer within 30 s".to_string())?
    });
    // once the relay runs (it answers from the shards)
    let control = match &config.control_socket {
        Some(path) => match ctl::serve(path, relay.inspector(), hook) {
            Ok(h) => Some(h),
            // A path that cannot be made here (a read-only root without the state volume, no
            // permission) must not keep the relay from relaying: said loudly, and SIGHUP still
            // reloads. Another relay's socket at that path is a configuration error.
            Err(e) if e.kind() != std::io::ErrorKind::AddrInUse => {
                log::warn!(
                    "no control socket: {e}; wgrelay show and wgrelay reload cannot reach this \
                     relay (SIGHUP still reloads)"
                );
                None
            }
            Err(e) => {
                wgrelay::logging::fatal(&format!("cannot start: {e}"));
                if let Some(m) = metrics {
                    m.stop();
                }
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
        let asked = reload_rx.try_recv().ok();
        if hup.swap(false, Ordering::Relaxed) || asked.is_some() {
            let before = relay.config().stats_interval;
            wgrelay::notify::reloading();
            let result = reload(&mut relay);
            match &result {
                Ok(what) => log::info!("reload: {what}"),
                Err(why) => log::error!("reload refused, nothing changed: {why}"),
            }
            if let Some(reply) = asked {
                // the asking client may have given up: nothing to do then
                let _ = reply.send(result);
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
    drop(control);
    if let Some(m) = metrics {
        m.stop();
    }
    let stats = relay.stop();
    log::info!("final stats: {stats}");
    ExitCode::SUCCESS
}

/// Where the main loop answers a control-socket `reload`.
type ReloadReply = crossbeam_channel::Sender<Result<String, String>>;

/// Reads the configuration again from every source (the same command line, the environment
/// and the file as they are now), validates it and applies it to `relay`. A configuration
/// that does not validate changes nothing.
fn reload(relay: &mut Relay) -> Result<String, String> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (_, new) = config::load(&argv).map_err(|e| match e {
        config::LoadError::Invalid(message) => message,
        config::LoadError::Clap(e) => e.render().to_string().trim_end().to_string(),
    })?;
    let diff = relay.config().diff(&new);
    if diff.is_empty() {
        return Ok("no changes".to_string());
    }
    let done = relay.reload(&new).map_err(|e| e.to_string())?;
    wgrelay::logging::set_level(new.log_level);
    Ok(format!("applied {diff}; {}", done.routing))
}
