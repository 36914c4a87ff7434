//! Target `config`: the configuration from TOML text, and from the environment.
//!
//! The input is text (invalid UTF-8 replaced). All of it goes to `Config::from_toml_str`, the
//! function that turns a configuration file into the effective configuration. Then, if some
//! lines are `NAME=VALUE` with a `WGRELAY_*` or `WGPROXY_*` name, those become the environment
//! of a `wgrelay check-config` parsed by clap (which reads `WGRELAY_*`), the other lines its
//! `--config` file, and `Config::from_args_and_env` merges the three sources (flags/env >
//! file > `WGPROXY_*`), as `main` does.
//!
//! Asserts: nothing panics; an error is one non-empty line; an accepted configuration keeps
//! the promises of `Config`'s docs (listen addresses non-empty, distinct, no port 0; allow-list
//! distinct; groups of at least two distinct keys; threads in 1..=MAX_THREADS; `broadcast_rate`
//! never `Some(0)`; valid AmneziaWG parameters relay-wide and per peer port; peer ports
//! non-zero, overlapping neither a listen address nor each other, with distinct keys;
//! distinct server keys; a control socket path that fits a Unix socket address), its durations can be added to `Instant::now()` as `main` does, and
//! `summary()` prints it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use clap::Parser;
use wgrelay::cli::Cli;
use wgrelay::config::{Config, ConfigError, MAX_THREADS};

/// The variables clap reads for `RunArgs` (src/config/args.rs), but `WGRELAY_CONFIG`: the file is the
/// input's other lines.
const WGRELAY_VARS: [&str; 23] = [
    "WGRELAY_LISTEN",
    "WGRELAY_ALLOW",
    "WGRELAY_GROUP",
    "WGRELAY_SERVER",
    "WGRELAY_SERVER_KEY",
    "WGRELAY_PEER",
    "WGRELAY_AWG",
    "WGRELAY_COOKIE",
    "WGRELAY_BROADCAST_RATE",
    "WGRELAY_THREADS",
    "WGRELAY_BACKEND",
    "WGRELAY_GSO",
    "WGRELAY_GRO",
    "WGRELAY_STEERING",
    "WGRELAY_STATE_FILE",
    "WGRELAY_LOG_LEVEL",
    "WGRELAY_DEBUG",
    "WGRELAY_STATS_INTERVAL",
    "WGRELAY_BIND",
    "WGRELAY_PORT",
    "WGRELAY_LOG_FORMAT",
    "WGRELAY_METRICS",
    "WGRELAY_CONTROL_SOCKET",
];

const WGPROXY_VARS: [&str; 5] = [
    "WGPROXY_SERVER",
    "WGPROXY_PUBKEY",
    "WGPROXY_LISTEN",
    "WGPROXY_TIMEOUT",
    "WGPROXY_LOGLEVEL",
];

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check(Config::from_toml_str(&text));
    with_env(&text);
}

fn check(result: Result<Config, ConfigError>) {
    match result {
        Ok(c) => check_config(&c),
        Err(e) => {
            let m = e.to_string();
            assert!(!m.is_empty(), "an empty error");
            assert!(!m.contains('\n'), "a multi-line error: {m:?}");
        }
    }
}

fn check_config(c: &Config) {
    assert!(!c.listen.is_empty());
    assert_eq!(
        c.listen.iter().collect::<HashSet<_>>().len(),
        c.listen.len(),
        "listen not de-duplicated: {:?}",
        c.listen
    );
    assert!(
        c.listen.iter().all(|a| a.port() != 0),
        "port 0: {:?}",
        c.listen
    );
    assert_eq!(c.allow.iter().collect::<HashSet<_>>().len(), c.allow.len());
    for g in &c.groups {
        let distinct = g.iter().collect::<HashSet<_>>().len();
        assert!(distinct >= 2 && distinct == g.len(), "group {g:?}");
    }
    assert!(
        (1..=MAX_THREADS).contains(&c.threads),
        "threads {}",
        c.threads
    );
    assert_ne!(c.broadcast_rate, Some(0));
    assert_eq!(c.awg.validate(), Ok(()));
    let mut peer_keys = HashSet::new();
    for (i, p) in c.peers.iter().enumerate() {
        assert_ne!(p.listen.port(), 0);
        if let Some(a) = &p.awg {
            assert_eq!(a.validate(), Ok(()));
        }
        for l in &c.listen {
            assert!(
                !overlap(p.listen, *l),
                "peer {} overlaps listen {l}",
                p.listen
            );
        }
        for q in &c.peers[..i] {
            assert!(
                !overlap(p.listen, q.listen),
                "peers {} and {}",
                p.listen,
                q.listen
            );
        }
        assert!(peer_keys.insert(p.key), "two peers share a key");
    }
    let server_keys: HashSet<_> = c.servers.iter().map(|s| s.key).collect();
    assert_eq!(
        server_keys.len(),
        c.servers.len(),
        "a server key given twice"
    );
    if let Some(path) = &c.control_socket {
        let len = path.as_os_str().len();
        assert!((1..=107).contains(&len), "control socket {path:?}");
    }
    // What main and the shards do with the durations.
    let now = Instant::now();
    for d in [c.stats_interval, c.wgproxy_timeout].into_iter().flatten() {
        assert!(now.checked_add(d).is_some(), "{d:?} overflows an Instant");
        assert!(!d.is_zero());
    }
    assert!(!c.summary().is_empty());
}

/// The overlap rule of src/config/'s docs, restated on its own as the oracle for
/// validate.rs: the same port, and the same address or a wildcard covering the other (`[::]`
/// covers everything, `0.0.0.0` every IPv4 address).
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    fn covers(wild: IpAddr, other: IpAddr) -> bool {
        match wild {
            IpAddr::V6(w) => w.is_unspecified(),
            IpAddr::V4(w) => {
                w.is_unspecified()
                    && match other {
                        IpAddr::V4(_) => true,
                        IpAddr::V6(o) => o.to_ipv4_mapped().is_some(),
                    }
            }
        }
    }
    a.port() == b.port() && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// A file of this process's own for the `--config` layer.
fn config_path() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        std::env::temp_dir().join(format!("wgrelay-fuzz-config-{}.toml", std::process::id()))
    })
}

fn with_env(text: &str) {
    let mut relay: Vec<(&str, &str)> = Vec::new();
    let mut proxy: Vec<(&str, &str)> = Vec::new();
    let mut file = String::new();
    for line in text.lines() {
        let var = line.split_once('=').and_then(|(name, value)| {
            let known = WGRELAY_VARS.contains(&name) || WGPROXY_VARS.contains(&name);
            (known && !value.contains('\0')).then_some((name, value))
        });
        match var {
            Some((name, value)) if name.starts_with("WGRELAY_") => relay.push((name, value)),
            Some(pair) => proxy.push(pair),
            None => {
                file.push_str(line);
                file.push('\n');
            }
        }
    }
    if relay.is_empty() && proxy.is_empty() {
        return;
    }
    for name in WGRELAY_VARS.iter().chain(["WGRELAY_CONFIG"].iter()) {
        std::env::remove_var(name);
    }
    for (name, value) in &relay {
        std::env::set_var(name, value);
    }
    let parsed = Cli::try_parse_from(["wgrelay", "check-config"]);
    for (name, _) in &relay {
        std::env::remove_var(name);
    }
    let Ok(cli) = parsed else {
        return;
    };
    let (_, mut args) = cli.into_parts();
    assert_eq!(args.config, None);
    if !file.trim().is_empty() {
        if std::fs::write(config_path(), &file).is_err() {
            return;
        }
        args.config = Some(config_path().clone());
    }
    let env = |name: &str| -> Option<OsString> {
        proxy
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| OsString::from(v))
    };
    check(Config::from_args_and_env(&args, env));
}
