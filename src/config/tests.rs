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
    assert_eq!(args.scalars.port, Some(7));
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
    let c =
        Config::from_toml_str("listen = [\"10.0.0.1:1\"]\nbind = \"10.0.0.2\"\nport = 2").unwrap();
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
    assert!(
        e.ends_with(&format!(
        "line 2: groups entry [\"{one}\"]: a group needs at least 2 distinct public keys (got 1)"
    )),
        "{e}"
    );

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
         servers: none\n\
         peers: none\n\
         awg: plain\n\
         cookie replies: under-load\n\
         broadcast rate: 1000 handshake initiation copies/s\n\
         threads: 4\n\
         backend: auto\n\
         offload: gso on, gro on\n\
         steering: on\n\
         state file: none\n\
         control socket: /run/wgrelay/control.sock\n\
         metrics: off\n\
         log level: info\n\
         log format: text\n\
         stats: every 60s"
    );
}

#[test]
fn summary_servers_peers_awg_and_wgproxy_timeout() {
    let mut awg = AwgParams::plain();
    awg.jc = 4;
    awg.jmin = 40;
    awg.jmax = 70;
    awg.s1 = 20;
    let c = Config {
        threads: 1,
        servers: vec![
            Server {
                addr: "vpn.example.net:51820".parse().unwrap(),
                key: key(1),
            },
            Server {
                addr: "[2001:db8::1]:5".parse().unwrap(),
                key: key(2),
            },
        ],
        peers: vec![
            PortPeer {
                listen: sa("[::]:10001"),
                key: key(3),
                endpoint: None,
                uapi: None,
                awg: None,
            },
            PortPeer {
                listen: sa("127.0.0.1:10002"),
                key: key(4),
                endpoint: Some(sa("192.0.2.7:51820")),
                uapi: None,
                awg: None,
            },
            PortPeer {
                listen: sa("[::]:10003"),
                key: key(5),
                endpoint: None,
                uapi: Some("wg0".into()),
                awg: Some(awg),
            },
        ],
        awg,
        wgproxy_timeout: Some(Duration::from_secs(30)),
        ..Config::default()
    };
    assert_eq!(
        c.summary(),
        "listen: [::]:51820\n\
         mode: open (any public key is relayed)\n\
         servers: AQEBAQEB... -> vpn.example.net:51820, AgICAgIC... -> [2001:db8::1]:5\n\
         peers: [::]:10001 -> AwMDAwMD... (learned), \
         127.0.0.1:10002 -> BAQEBAQE... (endpoint 192.0.2.7:51820), \
         [::]:10003 -> BQUFBQUF... (uapi wg0, awg jc=4 jmin=40 jmax=70 s1=20 s2=0 s3=0 s4=0 h1=1 h2=2 h3=3 h4=4)\n\
         awg: jc=4 jmin=40 jmax=70 s1=20 s2=0 s3=0 s4=0 h1=1 h2=2 h3=3 h4=4\n\
         cookie replies: under-load\n\
         broadcast rate: 1000 handshake initiation copies/s\n\
         threads: 1\n\
         backend: auto\n\
         offload: gso on, gro on\n\
         steering: on\n\
         state file: none\n\
         control socket: /run/wgrelay/control.sock\n\
         metrics: off\n\
         log level: info\n\
         log format: text\n\
         stats: every 60s\n\
         wgproxy timeout: 30s (WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)"
    );
}

#[test]
fn state_file_from_flag_and_file() {
    assert_eq!(parse(&[]).state_file, None);
    // (its directory must exist: check_state_file)
    let c = parse(&["--state-file", "/tmp/wgrelay-state"]);
    assert_eq!(
        c.state_file.as_deref(),
        Some(std::path::Path::new("/tmp/wgrelay-state"))
    );
    assert!(c.summary().contains("\nstate file: /tmp/wgrelay-state\n"));
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

// ---- proxy servers ----

/// `Config::from_toml_str`'s error, which must be one line.
fn toml_err(text: &str) -> String {
    let e = Config::from_toml_str(text).unwrap_err().to_string();
    assert!(!e.contains('\n'), "multi-line error: {e}");
    e
}

fn host_port(s: &str) -> HostPort {
    s.parse().unwrap()
}

fn server(addr: &str, i: u8) -> Server {
    Server {
        addr: host_port(addr),
        key: key(i),
    }
}

#[test]
fn servers_from_flags_pair_in_order() {
    let c = parse(&[
        "--server",
        "vpn.example.net:51820",
        "--server-key",
        &k(1),
        "--server",
        "192.0.2.1:1,[2001:db8::1]:2",
        "--server-key",
        &format!("{}, {}", k(2), k(3)),
    ]);
    assert_eq!(
        c.servers,
        vec![
            server("vpn.example.net:51820", 1),
            server("192.0.2.1:1", 2),
            server("[2001:db8::1]:2", 3),
        ]
    );
    assert_eq!(c.servers[0].addr.name(), Some("vpn.example.net"));
    assert!(c.summary().contains(
        "\nservers: AQEBAQEB... -> vpn.example.net:51820, AgICAgIC... -> 192.0.2.1:1, AwMDAwMD... -> [2001:db8::1]:2\n"
    ));
    assert!(parse(&[]).servers.is_empty());
}

#[test]
fn server_flag_errors() {
    assert_eq!(
        parse_err(&["--server", "a.example:1"]),
        "--server and --server-key pair up in order, one key per server: got 1 server and 0 server keys"
    );
    assert_eq!(
        parse_err(&["--server", "a.example:1", "--server-key", &format!("{},{}", k(1), k(2))]),
        "--server and --server-key pair up in order, one key per server: got 1 server and 2 server keys"
    );
    assert_eq!(
        parse_err(&["--server-key", &k(1)]),
        "--server and --server-key pair up in order, one key per server: got 0 servers and 1 server key"
    );
    assert_eq!(
        parse_err(&["--server", "a.example", "--server-key", &k(1)]),
        "--server: invalid upstream address \"a.example\": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"
    );
    // A bad value is named before the counts are compared.
    let e = parse_err(&["--server", "a.example:0"]);
    assert!(
        e.starts_with(
            "--server: invalid upstream address \"a.example:0\": port 0 cannot be sent to"
        ),
        "{e}"
    );
    let e = parse_err(&["--server", "::1:51820", "--server-key", &k(1)]);
    assert!(e.contains("must be in brackets"), "{e}");
    assert_eq!(
        parse_err(&["--server", "a.example:1", "--server-key", "abc"]),
        "--server-key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
    );
    assert_eq!(
        parse_err(&[
            "--server",
            "a.example:1,b.example:2",
            "--server-key",
            &format!("{},{}", k(1), k(1)),
        ]),
        format!(
            "--server-key {}: given for two servers (a key chooses one server)",
            k(1)
        )
    );
    // An empty list entry is an error, not "no server".
    let e = parse_err(&["--server", "a.example:1,", "--server-key", &k(1)]);
    assert!(
        e.contains("invalid upstream address \"\": it is empty"),
        "{e}"
    );
}

#[test]
fn servers_in_file() {
    let text = format!(
        "[[server]]\naddress = \"vpn.example.net:51820\"\npublic_key = \"{}\"\n\n[[server]]\npublic_key = \"{}\"\naddress = \"[2001:db8::1]:51820\"\n",
        k(1),
        k(2)
    );
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(
        c.servers,
        vec![
            server("vpn.example.net:51820", 1),
            server("[2001:db8::1]:51820", 2)
        ]
    );
    // Flags replace the file's servers whole; the file's are still validated.
    let f = TempFile::new(&text);
    let c = parse(&[
        "--config",
        f.path(),
        "--server",
        "c.example:3",
        "--server-key",
        &k(3),
    ]);
    assert_eq!(c.servers, vec![server("c.example:3", 3)]);
    assert_eq!(parse(&["--config", f.path()]).servers.len(), 2);
    let f = TempFile::new("[[server]]\naddress = \"x\"\n");
    let e = parse_err(&[
        "--config",
        f.path(),
        "--server",
        "c.example:3",
        "--server-key",
        &k(3),
    ]);
    assert!(e.ends_with("line 2: server address: invalid upstream address \"x\": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"), "{e}");
}

#[test]
fn server_file_errors() {
    let one = k(1);
    assert_eq!(
        toml_err(&format!(
            "threads = 1\n[[server]]\npublic_key = \"{one}\"\n"
        )),
        "config: line 2: server: missing address = \"HOST:PORT\""
    );
    assert_eq!(
        toml_err("[[server]]\naddress = \"a.example:1\"\n"),
        "config: line 1: server: missing public_key = \"...\" (the server's base64 public key)"
    );
    assert_eq!(
        toml_err("[[server]]\naddress = \"a.example:1\"\npublic_key = \"abc\"\n"),
        "config: line 3: server public_key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
    );
    assert_eq!(
        toml_err(&format!("[[server]]\naddress = \"1.2.3:1\"\npublic_key = \"{one}\"\n")),
        "config: line 2: server address: invalid upstream address \"1.2.3:1\": host looks like an IPv4 address but is not a valid one (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"
    );
    assert_eq!(
        toml_err(&format!(
            "[[server]]\naddress = \"a.example:1\"\npublic_key = \"{one}\"\n[[server]]\naddress = \"b.example:1\"\npublic_key = \"{one}\"\n"
        )),
        format!("config: line 6: server public_key {one}: already the key of the server on line 3 (a key chooses one server)")
    );
    assert_eq!(
        toml_err("[[server]]\nadress = \"a.example:1\"\n"),
        "config: line 2: server: unknown key \"adress\" (did you mean \"address\"? expected one of: address, public_key)"
    );
    assert_eq!(
        toml_err("server = \"a.example:1\""),
        "config: line 1: server: invalid type: string \"a.example:1\", expected an array (write one [[server]] table per server)"
    );
    assert_eq!(
        toml_err("threads = 1\n[server]\naddress = \"a.example:1\"\n"),
        "config: line 2: server: invalid type: map, expected an array (write one [[server]] table per server)"
    );
    let e = toml_err("[[server]]\naddress = 5\n");
    assert!(
        e.starts_with("config: line 2: server address: invalid type: integer `5`"),
        "{e}"
    );
}

// ---- port-per-peer ----

fn port_peer(listen: &str, i: u8) -> PortPeer {
    PortPeer {
        listen: sa(listen),
        key: key(i),
        endpoint: None,
        uapi: None,
        awg: None,
    }
}

#[test]
fn peers_from_flags() {
    let c = parse(&[
        "--listen",
        "127.0.0.1:51820,[::1]:51820",
        "--peer",
        &format!("10001={}", k(1)),
        "--peer",
        &format!("[::1]:10002={}@192.0.2.7:51820", k(2)),
        "--peer",
        &format!(
            "10003={}@uapi:wg0, 10004={}@uapi:/run/wireguard/wg1.sock",
            k(3),
            k(4)
        ),
    ]);
    let mut expected = vec![
        port_peer("127.0.0.1:10001", 1),
        port_peer("[::1]:10002", 2),
        port_peer("127.0.0.1:10003", 3),
        port_peer("127.0.0.1:10004", 4),
    ];
    expected[1].endpoint = Some(sa("192.0.2.7:51820"));
    expected[2].uapi = Some("wg0".into());
    expected[3].uapi = Some("/run/wireguard/wg1.sock".into());
    assert_eq!(c.peers, expected);
    assert!(c.summary().contains(
        "\npeers: 127.0.0.1:10001 -> AQEBAQEB... (learned), [::1]:10002 -> AgICAgIC... (endpoint 192.0.2.7:51820), \
         127.0.0.1:10003 -> AwMDAwMD... (uapi wg0), 127.0.0.1:10004 -> BAQEBAQE... (uapi /run/wireguard/wg1.sock)\n"
    ));
    // A bare port goes on the host of the first listen address, the default one too.
    assert_eq!(
        parse(&["--peer", &format!("10001={}", k(1))]).peers,
        vec![port_peer("[::]:10001", 1)]
    );
    assert!(parse(&[]).peers.is_empty());
}

#[test]
fn peer_flag_errors() {
    let one = k(1);
    let syntax = "expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE";
    assert_eq!(
        parse_err(&["--peer", "10001"]),
        format!("--peer \"10001\": {syntax}")
    );
    assert_eq!(parse_err(&["--peer", ""]), format!("--peer \"\": {syntax}"));
    assert_eq!(
        parse_err(&["--peer", &format!("0={one}")]),
        format!("--peer \"0={one}\": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)")
    );
    assert_eq!(
        parse_err(&["--peer", &format!("127.0.0.1:0={one}")]),
        format!("--peer \"127.0.0.1:0={one}\": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)")
    );
    assert_eq!(
        parse_err(&["--peer", &format!("70000={one}")]),
        format!("--peer \"70000={one}\": port 70000 is out of range (1-65535)")
    );
    assert_eq!(
        parse_err(&["--peer", &format!("host:1={one}")]),
        format!("--peer \"host:1={one}\": \"host:1\" is neither a PORT nor an ADDR:PORT (IPv6 as [ADDR]:PORT)")
    );
    assert_eq!(
        parse_err(&["--peer", "5=abc"]),
        "--peer: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
    );
    assert_eq!(
        parse_err(&["--peer", &format!("5={one}@host:1")]),
        format!("--peer \"5={one}@host:1\": endpoint \"host:1\": invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT, or uapi:DEVICE for a local WireGuard device)")
    );
    assert_eq!(
        parse_err(&["--peer", &format!("5={one}@192.0.2.1:0")]),
        format!(
            "--peer \"5={one}@192.0.2.1:0\": endpoint \"192.0.2.1:0\": port 0 cannot be sent to"
        )
    );
    assert_eq!(
        parse_err(&["--peer", &format!("5={one}@0.0.0.0:5")]),
        format!("--peer \"5={one}@0.0.0.0:5\": endpoint \"0.0.0.0:5\": 0.0.0.0 is not an address to send to")
    );
    assert_eq!(
        parse_err(&["--peer", &format!("5={one}@uapi:wg 0")]),
        format!("--peer \"5={one}@uapi:wg 0\": uapi \"wg 0\": expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket")
    );
    let e = parse_err(&["--peer", &format!("5={one}@uapi:run/wg0.sock")]);
    assert!(e.ends_with("or an absolute path to its UAPI socket"), "{e}");
    let e = parse_err(&["--peer", &format!("5={one}@uapi:/")]);
    assert!(
        e.ends_with("uapi \"/\": not a path to a UAPI socket"),
        "{e}"
    );
    // Two peers may not share a key.
    assert_eq!(
        parse_err(&["--peer", &format!("5={one},6={one}")]),
        format!("--peer \"6={one}\": its public key is already the key of --peer \"5={one}\" (a key has one relay port)")
    );
}

#[test]
fn peer_ports_may_not_overlap() {
    let (one, two) = (k(1), k(2));
    // Not a relay listen address: the default [::]:51820 ...
    assert_eq!(
        parse_err(&["--peer", &format!("51820={one}")]),
        format!("--peer \"51820={one}\": [::]:51820 overlaps the relay listen address [::]:51820 (a peer needs a port of its own)")
    );
    // ... nor covered by a wildcard one, or covering one.
    let e = parse_err(&[
        "--listen",
        "127.0.0.1:7",
        "--peer",
        &format!("0.0.0.0:7={one}"),
    ]);
    assert!(e.ends_with("0.0.0.0:7 overlaps the relay listen address 127.0.0.1:7 (a peer needs a port of its own)"), "{e}");
    let e = parse_err(&[
        "--listen",
        "[::]:7",
        "--peer",
        &format!("127.0.0.1:7={one}"),
    ]);
    assert!(
        e.contains("127.0.0.1:7 overlaps the relay listen address [::]:7"),
        "{e}"
    );
    // Different addresses, or ports, are fine.
    let c = parse(&[
        "--listen",
        "127.0.0.1:7,0.0.0.0:8",
        "--peer",
        &format!("127.0.0.2:7={one},[::1]:8={two}"),
    ]);
    assert_eq!(
        c.peers,
        vec![port_peer("127.0.0.2:7", 1), port_peer("[::1]:8", 2)]
    );
    // Not another peer's port.
    assert_eq!(
        parse_err(&["--peer", &format!("5={one}"), "--peer", &format!("5={two}")]),
        format!("--peer \"5={two}\": [::]:5 overlaps the port of --peer \"5={one}\" ([::]:5)")
    );
    let e = parse_err(&[
        "--listen",
        "[::]:1",
        "--peer",
        &format!("5={one},127.0.0.1:5={two}"),
    ]);
    assert!(
        e.ends_with(&format!(
            "127.0.0.1:5 overlaps the port of --peer \"5={one}\" ([::]:5)"
        )),
        "{e}"
    );
}

#[test]
fn sockets_overlap_rules() {
    let o = |a: &str, b: &str| sockets_overlap(sa(a), sa(b));
    assert!(o("127.0.0.1:1", "127.0.0.1:1"));
    assert!(!o("127.0.0.1:1", "127.0.0.1:2"));
    assert!(!o("127.0.0.1:1", "127.0.0.2:1"));
    assert!(o("0.0.0.0:1", "127.0.0.1:1"));
    assert!(o("127.0.0.1:1", "0.0.0.0:1"));
    assert!(!o("0.0.0.0:1", "[::1]:1"));
    assert!(o("0.0.0.0:1", "[::ffff:127.0.0.1]:1"));
    assert!(o("[::]:1", "127.0.0.1:1"));
    assert!(o("[::]:1", "[::1]:1"));
    assert!(o("[::]:1", "0.0.0.0:1"));
    assert!(!o("[::1]:1", "[::2]:1"));
}

#[test]
fn peers_in_file() {
    let text = format!(
        "listen = [\"10.0.0.1:51820\"]\n\
         [[peer]]\nport = 10001\npublic_key = \"{}\"\n\
         [[peer]]\nlisten = \"[::1]:10002\"\npublic_key = \"{}\"\nendpoint = \"[2001:db8::7]:51820\"\n\
         [[peer]]\nport = 10003\npublic_key = \"{}\"\nuapi = \"wg0\"\nawg = {{ jc = 4, jmin = 40, jmax = 70, s1 = 20, h1 = \"100000-100099\", h2 = 200000, h3 = 300000, h4 = 400000 }}\n\
         [[peer]]\nport = 10004\npublic_key = \"{}\"\n[peer.awg]\ns2 = 30\n",
        k(1),
        k(2),
        k(3),
        k(4)
    );
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.peers.len(), 4);
    assert_eq!(c.peers[0], port_peer("10.0.0.1:10001", 1));
    let mut p = port_peer("[::1]:10002", 2);
    p.endpoint = Some(sa("[2001:db8::7]:51820"));
    assert_eq!(c.peers[1], p);
    assert_eq!(c.peers[2].listen, sa("10.0.0.1:10003"));
    assert_eq!(c.peers[2].uapi.as_deref(), Some("wg0"));
    let awg = c.peers[2].awg.unwrap();
    assert_eq!(
        (awg.jc, awg.jmin, awg.jmax, awg.s1, awg.s2),
        (4, 40, 70, 20, 0)
    );
    assert_eq!(awg.h1.to_string(), "100000-100099");
    assert_eq!(awg.h4.to_string(), "400000");
    assert_eq!(c.peers[3].awg.map(|a| a.s2), Some(30));
    assert_eq!(c.awg, AwgParams::plain());
    // Bare ports follow the first effective listen address, here the flag's.
    let f = TempFile::new(&text);
    let c = parse(&["--config", f.path(), "--listen", "10.0.0.2:1"]);
    assert_eq!(c.peers[0].listen, sa("10.0.0.2:10001"));
    assert_eq!(c.peers[1].listen, sa("[::1]:10002"));
    // --peer replaces the file's peers whole.
    let c = parse(&["--config", f.path(), "--peer", &format!("9={}", k(9))]);
    assert_eq!(c.peers, vec![port_peer("10.0.0.1:9", 9)]);
    // An empty awg table means the relay-wide parameters.
    let c = Config::from_toml_str(&format!(
        "[[peer]]\nport = 5\npublic_key = \"{}\"\nawg = {{}}\n",
        k(1)
    ))
    .unwrap();
    assert_eq!(c.peers[0].awg, None);
}

#[test]
fn peer_file_errors() {
    let (one, two) = (k(1), k(2));
    assert_eq!(
        toml_err(&format!("[[peer]]\npublic_key = \"{one}\"\n")),
        "config: line 1: peer: missing port = N (on the host of the first listen address) or listen = \"ADDR:PORT\""
    );
    assert_eq!(
        toml_err(&format!(
            "[[peer]]\nport = 5\nlisten = \"127.0.0.1:5\"\npublic_key = \"{one}\"\n"
        )),
        "config: line 2: peer: give port = N or listen = \"ADDR:PORT\", not both"
    );
    assert_eq!(
        toml_err("threads = 1\n\n[[peer]]\nport = 5\n"),
        "config: line 3: peer: missing public_key = \"...\" (the responder's base64 public key)"
    );
    assert_eq!(
        toml_err(&format!("[[peer]]\nport = 0\npublic_key = \"{one}\"\n")),
        "config: line 2: peer port 0: port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"
    );
    assert_eq!(
        toml_err(&format!("[[peer]]\nlisten = \"x\"\npublic_key = \"{one}\"\n")),
        "config: line 2: peer listen \"x\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"
    );
    assert_eq!(
        toml_err("[[peer]]\nport = 5\npublic_key = \"abc\"\n"),
        "config: line 3: peer public_key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
    );
    assert_eq!(
        toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\nendpoint = \"x:5\"\n")),
        "config: line 4: peer endpoint \"x:5\": invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT)"
    );
    assert_eq!(
        toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\nuapi = \"wg/0\"\n")),
        "config: line 4: peer uapi \"wg/0\": expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket"
    );
    assert_eq!(
        toml_err(&format!(
            "[[peer]]\nport = 5\npublic_key = \"{one}\"\nendpoint = \"192.0.2.1:5\"\nuapi = \"wg0\"\n"
        )),
        "config: line 5: peer: endpoint and uapi exclude each other (a fixed endpoint, or the one the device knows)"
    );
    assert_eq!(
        toml_err(&format!(
            "[[peer]]\nport = 5\npublic_key = \"{one}\"\n[[peer]]\nport = 5\npublic_key = \"{two}\"\n"
        )),
        "config: line 5: peer port 5: [::]:5 overlaps the port of the peer on line 2 ([::]:5)"
    );
    assert_eq!(
        toml_err(&format!(
            "[[peer]]\nport = 5\npublic_key = \"{one}\"\n[[peer]]\nport = 6\npublic_key = \"{one}\"\n"
        )),
        format!("config: line 5: peer port 6: public key {one} is already the key of the peer on line 2 (a key has one relay port)")
    );
    assert_eq!(
        toml_err(&format!("[[peer]]\nport = 51820\npublic_key = \"{one}\"\n")),
        "config: line 2: peer port 51820: [::]:51820 overlaps the relay listen address [::]:51820 (a peer needs a port of its own)"
    );
    assert_eq!(
        toml_err(&format!("listen = [\"0.0.0.0:1\"]\n[[peer]]\nlisten = \"127.0.0.1:1\"\npublic_key = \"{one}\"\n")),
        "config: line 3: peer listen \"127.0.0.1:1\": 127.0.0.1:1 overlaps the relay listen address 0.0.0.0:1 (a peer needs a port of its own)"
    );
    assert_eq!(
        toml_err("[[peer]]\njc = 1\n"),
        "config: line 2: peer: unknown key \"jc\" (expected one of: port, listen, public_key, endpoint, uapi, awg; AmneziaWG parameters go in an awg table)"
    );
    assert_eq!(
        toml_err("[[peer]]\nport = \"x\"\n"),
        "config: line 2: peer port: invalid type: string \"x\", expected an integer from 0 to 65535"
    );
    assert_eq!(
        toml_err("[[peer]]\nport = 70000\n"),
        "config: line 2: peer port: invalid value: integer `70000`, expected an integer from 0 to 65535"
    );
    assert_eq!(
        toml_err("peer = 1"),
        "config: line 1: peer: invalid type: integer `1`, expected an array (write one [[peer]] table per peer)"
    );
    assert_eq!(
        toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\nawg = {{ s1 = 100000 }}\n")),
        "config: line 4: peer awg: s1 must be ≤ 65386 (got 100000): a framed message must stay below amneziawg-go's 65535-byte limit"
    );
    assert_eq!(
        toml_err(&format!("[[peer]]\nport = 5\npublic_key = \"{one}\"\n[peer.awg]\nh1 = \"3-9\"\n")),
        "config: line 4: peer awg: h1 must be 1 (plain WireGuard) or lie wholly above 4 (got 3-9): AWG 1.x/2.0 read a value ≤ 4 as plain, newer builds take it literally"
    );
    assert_eq!(
        toml_err(&format!(
            "[[peer]]\nport = 5\npublic_key = \"{one}\"\nawg = 3\n"
        )),
        "config: line 4: peer awg: invalid type: integer `3`, expected a table"
    );
}

// ---- AmneziaWG ----

#[test]
fn awg_from_flags() {
    let c = parse(&[
        "--awg",
        "jc=4,jmin=40,jmax=70,s1=20,s2=30",
        "--awg",
        "h1=100000-100099",
        "--awg",
        "H2=200000, h3 = 300000,h4=400000",
    ]);
    let a = c.awg;
    assert_eq!(
        (a.jc, a.jmin, a.jmax, a.s1, a.s2, a.s3, a.s4),
        (4, 40, 70, 20, 30, 0, 0)
    );
    assert_eq!(
        [a.h1, a.h2, a.h3, a.h4].map(|h| h.to_string()),
        ["100000-100099", "200000", "300000", "400000"]
    );
    assert!(c.summary().contains(
        "\nawg: jc=4 jmin=40 jmax=70 s1=20 s2=30 s3=0 s4=0 h1=100000-100099 h2=200000 h3=300000 h4=400000\n"
    ));
    // Keys the relay has no use for are accepted, and a zero header protection key is off.
    let c = parse(&[
        "--awg",
        "i1=<r 16>,header_protection_key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ]);
    assert_eq!(c.awg, AwgParams::plain());
    assert!(c.summary().contains("\nawg: plain\n"));
}

#[test]
fn awg_flag_errors() {
    assert_eq!(
        parse_err(&["--awg", "jc"]),
        "--awg \"jc\": expected KEY=VALUE (e.g. jc=4 or h1=100000-100099)"
    );
    assert_eq!(
        parse_err(&["--awg", ""]),
        "--awg \"\": expected KEY=VALUE (e.g. jc=4 or h1=100000-100099)"
    );
    assert_eq!(
        parse_err(&["--awg", "s1=x"]),
        "--awg: awg: s1 must be a non-negative decimal integer (got \"x\")"
    );
    assert_eq!(
        parse_err(&["--awg", "jc=1,Jc=2"]),
        "--awg \"Jc=2\": Jc is given twice"
    );
    assert!(parse_err(&["--awg", "foo=1"])
        .starts_with("--awg: awg: unknown parameter \"foo\" (known: jc, jmin, jmax,"));
    assert_eq!(
        parse_err(&["--awg", "jmin=10,jmax=5"]),
        "--awg: awg: jmin must be ≤ jmax (got jmin 10, jmax 5)"
    );
    assert_eq!(
        parse_err(&["--awg", "s1=0,s2=56"]),
        "--awg: awg: s1 and s2 give two messages the same framed length (148 bytes); framed lengths s1+148, s2+92, s3+64, s4+32 must all differ (so s2 ≠ s1+56)"
    );
    assert_eq!(
        parse_err(&["--awg", "h1=5,h2=5"]),
        "--awg: awg: h1..h4 ranges overlap: h1 = 5 and h2 = 5 share values"
    );
    // Valid for AmneziaWG, but larger than the relay's datagram buffers.
    assert_eq!(
        parse_err(&["--awg", "s1=9100"]),
        "--awg: awg: s1 must be ≤ 9068 (got 9100): the framed message must fit the relay's datagram buffer"
    );
    assert_eq!(
        parse_err(&["--awg", "header_protection_key=0123456789abcdef"]),
        "--awg: awg: header protection (AWG 3, header_protection_key) cannot be relayed: indices are encrypted without its key"
    );
    assert_eq!(
        parse_err(&["--awg", "obfs_psk=secret"]),
        "--awg: awg: obfs_psk (whole-datagram obfuscation) cannot be relayed: indices are encrypted without its key"
    );
}

#[test]
fn awg_whose_cookie_reply_outgrows_the_initiation_needs_cookies_off() {
    let why = "(got s3 = 120, s1 = 10: a 184-byte cookie reply to a 158-byte initiation); the relay keeps no state for a source it challenges, so each challenge would send it more bytes than it sent; use s3 < s1 + 84";
    assert_eq!(
        parse_err(&["--awg", "s1=10,s3=120"]),
        format!("--awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}")
    );
    assert_eq!(
        parse_err(&["--awg", "s1=10,s3=120", "--cookie", "always"]),
        format!("--awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}")
    );
    assert_eq!(
        toml_err("[awg]\ns1 = 10\ns3 = 120\n"),
        format!(
            "config: awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}"
        )
    );
    // Just below is fine (equal lengths are refused anyway: framed lengths must differ),
    // and so is anything with cookie replies off.
    assert_eq!(parse(&["--awg", "s1=10,s3=93"]).awg.s3, 93);
    assert_eq!(
        parse(&["--awg", "s1=10,s3=120", "--cookie", "never"])
            .awg
            .s3,
        120
    );
    // A peer port's own parameters, named by where the peer is.
    let one = k(1);
    assert_eq!(
        toml_err(&format!(
            "[[peer]]\nport = 5\npublic_key = \"{one}\"\nawg = {{ s1 = 10, s3 = 120 }}\n"
        )),
        format!("config: line 2: peer port 5: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}")
    );
}

#[test]
fn awg_in_file() {
    let text = "[awg]\njc = 4\njmin = 40\njmax = 70\ns1 = 20\nh1 = \"100000-100099\"\nh2 = 200000\nh3 = 300000\nh4 = 400000\n";
    let a = Config::from_toml_str(text).unwrap().awg;
    assert_eq!((a.jc, a.s1, a.s2), (4, 20, 0));
    assert_eq!(a.h1.to_string(), "100000-100099");
    // awg-quick spellings are accepted too.
    let a = Config::from_toml_str("[awg]\nJc = 3\nS1 = 10").unwrap().awg;
    assert_eq!((a.jc, a.s1), (3, 10));
    assert_eq!(
        Config::from_toml_str("[awg]\n").unwrap().awg,
        AwgParams::plain()
    );
    // --awg replaces the table whole: s1 is plain again.
    let f = TempFile::new(text);
    let a = parse(&["--config", f.path(), "--awg", "jc=5"]).awg;
    assert_eq!((a.jc, a.s1, a.h1.to_string()), (5, 0, "1".to_string()));
    // The file's table is still validated.
    let f = TempFile::new("[awg]\ns1 = 0\ns2 = 56\n");
    let e = parse_err(&["--config", f.path(), "--awg", "jc=5"]);
    assert!(e.ends_with("line 1: awg: s1 and s2 give two messages the same framed length (148 bytes); framed lengths s1+148, s2+92, s3+64, s4+32 must all differ (so s2 ≠ s1+56)"), "{e}");
}

#[test]
fn awg_file_errors() {
    for (text, expected) in [
        ("threads = 1\n[awg]\njc = true\n".to_string(), "config: line 3: awg: jc must be an integer, or for h1..h4 also a \"N-M\" string (got boolean)".to_string()),
        ("[awg]\njc = -1\n".to_string(), "config: line 2: awg: jc must be a non-negative decimal integer (got \"-1\")".to_string()),
        ("[awg]\njc = 4294967296\n".to_string(), "config: line 2: awg: jc must be ≤ 4294967295 (got 4294967296): it must fit 32 bits".to_string()),
        ("[awg]\nh1 = \"9-5\"\n".to_string(), "config: line 2: awg: h1 must be a type value N or a range N-M (decimal, 0..=4294967295, N <= M) (got \"9-5\")".to_string()),
        ("threads = 1\n[awg]\njmin = 10\njmax = 5\n".to_string(), "config: line 2: awg: jmin must be ≤ jmax (got jmin 10, jmax 5)".to_string()),
        ("[awg]\nheader_protection_key = \"0123456789abcdef\"\n".to_string(), "config: line 2: awg: header protection (AWG 3, header_protection_key) cannot be relayed: indices are encrypted without its key".to_string()),
    ] {
        assert_eq!(toml_err(&text), expected, "{text}");
    }
    assert!(toml_err("[awg]\nfoo = 1\n")
        .starts_with("config: line 2: awg: unknown parameter \"foo\" (known: jc,"));
    assert_eq!(
        toml_err("awg = 3"),
        "config: line 1: awg: invalid type: integer `3`, expected a table"
    );
    assert_eq!(
        toml_err("[awg]\njc = 1\n[awg]\njc = 2\n"),
        "config: line 3: invalid table header; duplicate key `awg` in document root"
    );
}

// ---- wgproxy compatibility ----

/// Parses argv with `vars` as the `WGPROXY_*` environment.
fn with_wgproxy(argv: &[&str], vars: &[(&str, &str)]) -> Result<Config, String> {
    let _env = env_read();
    let mut full = vec!["wgrelay"];
    full.extend_from_slice(argv);
    let (_, args) = Cli::try_parse_from(full)
        .unwrap_or_else(|e| panic!("clap rejected {argv:?}: {e}"))
        .into_parts();
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Config::from_args_and_env(&args, |name| {
        vars.iter().find(|(n, _)| n == name).map(|(_, v)| v.into())
    })
    .map_err(|e| {
        let msg = e.to_string();
        assert!(!msg.contains('\n'), "multi-line error: {msg}");
        msg
    })
}

#[test]
fn wgproxy_variables_configure_one_server() {
    let one = k(1);
    let base = [
        ("WGPROXY_SERVER", "vpn.example.net:51820"),
        ("WGPROXY_PUBKEY", one.as_str()),
    ];
    let c = with_wgproxy(&[], &base).unwrap();
    assert_eq!(c.servers, vec![server("vpn.example.net:51820", 1)]);
    assert_eq!(c.listen, vec![sa("[::]:51820")]);
    // wgproxy's default log level is 1: warnings.
    assert_eq!(c.log_level, log::LevelFilter::Warn);
    assert_eq!(c.wgproxy_timeout, None);
    assert_eq!(
        Config {
            servers: Vec::new(),
            log_level: log::LevelFilter::Info,
            ..c
        },
        Config::default()
    );

    let mut all = base.to_vec();
    all.extend([
        ("WGPROXY_LISTEN", "127.0.0.1:51821"),
        ("WGPROXY_TIMEOUT", "30"),
        ("WGPROXY_LOGLEVEL", "3"),
    ]);
    let c = with_wgproxy(&[], &all).unwrap();
    assert_eq!(c.listen, vec![sa("127.0.0.1:51821")]);
    assert_eq!(c.wgproxy_timeout, Some(Duration::from_secs(30)));
    assert_eq!(c.log_level, log::LevelFilter::Debug);
    assert!(c.summary().ends_with(
        "\nwgproxy timeout: 30s (WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)"
    ));
    assert!(c
        .summary()
        .contains("\nservers: AQEBAQEB... -> vpn.example.net:51820\n"));

    for (level, filter) in [
        ("0", log::LevelFilter::Error),
        ("1", log::LevelFilter::Warn),
        ("2", log::LevelFilter::Info),
        ("3", log::LevelFilter::Debug),
    ] {
        let mut vars = base.to_vec();
        vars.push(("WGPROXY_LOGLEVEL", level));
        assert_eq!(with_wgproxy(&[], &vars).unwrap().log_level, filter);
    }
    // Through the subcommands too.
    let c = with_wgproxy(&["check-config"], &base).unwrap();
    assert_eq!(c.servers.len(), 1);
    // Nothing set: nothing changes.
    assert_eq!(with_wgproxy(&[], &[]).unwrap(), Config::default());
}

#[test]
fn wgproxy_variables_lose_to_wgrelay_settings() {
    let (one, two) = (k(1), k(2));
    let vars = [
        ("WGPROXY_SERVER", "vpn.example.net:51820"),
        ("WGPROXY_PUBKEY", one.as_str()),
        ("WGPROXY_LISTEN", "127.0.0.1:51821"),
        ("WGPROXY_LOGLEVEL", "0"),
    ];
    let c = with_wgproxy(
        &[
            "--listen",
            "127.0.0.1:9",
            "--server",
            "b.example:2",
            "--server-key",
            &two,
            "--log-level",
            "info",
        ],
        &vars,
    )
    .unwrap();
    assert_eq!(c.listen, vec![sa("127.0.0.1:9")]);
    assert_eq!(c.servers, vec![server("b.example:2", 2)]);
    assert_eq!(c.log_level, log::LevelFilter::Info);
    // Unset settings still come from WGPROXY_*; --debug raises its level.
    let c = with_wgproxy(&["--threads", "2", "--debug"], &vars).unwrap();
    assert_eq!(c.servers, vec![server("vpn.example.net:51820", 1)]);
    assert_eq!(c.listen, vec![sa("127.0.0.1:51821")]);
    assert_eq!(c.log_level, log::LevelFilter::Debug);
    // The file wins too.
    let f = TempFile::new(&format!(
        "listen = [\"127.0.0.1:7\"]\nlog_level = \"trace\"\n[[server]]\naddress = \"c.example:3\"\npublic_key = \"{two}\"\n"
    ));
    let c = with_wgproxy(&["--config", f.path()], &vars).unwrap();
    assert_eq!(c.listen, vec![sa("127.0.0.1:7")]);
    assert_eq!(c.servers, vec![server("c.example:3", 2)]);
    assert_eq!(c.log_level, log::LevelFilter::Trace);
    // An overridden WGPROXY_* value is still validated.
    let mut bad = vars.to_vec();
    bad.push(("WGPROXY_TIMEOUT", "0"));
    assert_eq!(
        with_wgproxy(&["--server", "b.example:2", "--server-key", &two], &bad).unwrap_err(),
        "WGPROXY_TIMEOUT \"0\": expected a positive whole number of seconds"
    );
}

#[test]
fn wgproxy_errors() {
    let one = k(1);
    let err = |vars: &[(&str, &str)]| with_wgproxy(&[], vars).unwrap_err();
    assert_eq!(
        err(&[("WGPROXY_SERVER", "vpn.example.net:51820")]),
        "WGPROXY_SERVER is set but WGPROXY_PUBKEY is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)"
    );
    assert_eq!(
        err(&[("WGPROXY_PUBKEY", &one)]),
        "WGPROXY_PUBKEY is set but WGPROXY_SERVER is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)"
    );
    assert_eq!(
        err(&[("WGPROXY_LISTEN", "[::]:51820")]),
        "WGPROXY_LISTEN is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"
    );
    assert_eq!(
        err(&[("WGPROXY_TIMEOUT", "60")]),
        "WGPROXY_TIMEOUT is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"
    );
    assert_eq!(
        err(&[("WGPROXY_SERVER", "vpn.example.net"), ("WGPROXY_PUBKEY", &one)]),
        "WGPROXY_SERVER: invalid upstream address \"vpn.example.net\": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"
    );
    // A bad value is named before whether the variables belong together.
    assert_eq!(
        err(&[("WGPROXY_PUBKEY", "abc")]),
        "WGPROXY_PUBKEY: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"
    );
    let with = |name: &'static str, value: &'static str| {
        err(&[
            ("WGPROXY_SERVER", "vpn.example.net:51820"),
            ("WGPROXY_PUBKEY", one.as_str()),
            (name, value),
        ])
    };
    assert_eq!(
        with("WGPROXY_LISTEN", "[::]:0"),
        "WGPROXY_LISTEN \"[::]:0\": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"
    );
    assert_eq!(
        with("WGPROXY_LISTEN", "localhost:51820"),
        "WGPROXY_LISTEN \"localhost:51820\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"
    );
    for bad in ["0", "-1", "1.5", "", "+5", "ten"] {
        assert_eq!(
            with("WGPROXY_TIMEOUT", bad),
            format!("WGPROXY_TIMEOUT {bad:?}: expected a positive whole number of seconds")
        );
    }
    for bad in ["4", "-1", "", "warn"] {
        assert_eq!(
            with("WGPROXY_LOGLEVEL", bad),
            format!("WGPROXY_LOGLEVEL {bad:?}: expected 0 (errors), 1 (and warnings), 2 (and info) or 3 (and debug)")
        );
    }
    let e = {
        use std::os::unix::ffi::OsStringExt;
        let _env = env_read();
        let (_, args) = Cli::try_parse_from(["wgrelay"]).unwrap().into_parts();
        Config::from_args_and_env(&args, |name| {
            (name == "WGPROXY_SERVER").then(|| std::ffi::OsString::from_vec(vec![b'a', 0xff]))
        })
        .unwrap_err()
        .to_string()
    };
    assert_eq!(e, "WGPROXY_SERVER \"a\\xFF\": not valid UTF-8");
}

// ---- robustness ----

#[test]
fn table_errors_stay_one_line() {
    for text in [
        "[[server]]\n[[server]]\naddress = 1",
        "[[peer]]\nport = 5\npublic_key = \"x\"\nawg = { jc = [] }",
        "[awg]\nh4 = { a = 1 }",
        "[peer]\nport = 1",
        "[[awg]]\njc = 1",
        "[peer.awg]\njc = 1",
    ] {
        let e = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(e.starts_with("config: line "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

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
        key in "(listen|allow|groups|cookie|threads|port|bind|lissten|server|peer|awg)",
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
        flag in "--(listen|allow|group|bind|server|server-key|peer|awg)",
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

    // Servers, peers and AmneziaWG parameters: comma-separated lists.
    env.set("WGRELAY_SERVER", "a.example:1,192.0.2.1:2");
    env.set("WGRELAY_SERVER_KEY", &format!("{},{}", k(1), k(2)));
    env.set(
        "WGRELAY_PEER",
        &format!("10001={},10002={}@192.0.2.9:5", k(3), k(4)),
    );
    env.set("WGRELAY_AWG", "jc=4,s1=20,h1=100000-100099");
    let c = parse(&[]);
    assert_eq!(
        c.servers,
        vec![
            Server {
                addr: "a.example:1".parse().unwrap(),
                key: key(1)
            },
            Server {
                addr: "192.0.2.1:2".parse().unwrap(),
                key: key(2)
            },
        ]
    );
    assert_eq!(
        c.peers
            .iter()
            .map(|p| (p.listen, p.key, p.endpoint))
            .collect::<Vec<_>>(),
        vec![
            (sa("[::]:10001"), key(3), None),
            (sa("[::]:10002"), key(4), Some(sa("192.0.2.9:5"))),
        ]
    );
    assert_eq!((c.awg.jc, c.awg.s1), (4, 20));
    assert_eq!(c.awg.h1.to_string(), "100000-100099");
    // A flag replaces its own variable only: --server pairs with WGRELAY_SERVER_KEY.
    assert_eq!(
        parse_err(&["--server", "c.example:3"]),
        "--server and --server-key pair up in order, one key per server: got 1 server and 2 server keys"
    );
    let c = parse(&["--awg", "jc=1", "--peer", &format!("7={}", k(5))]);
    assert_eq!((c.awg.jc, c.awg.s1), (1, 0));
    assert_eq!(c.peers.len(), 1);
    env.set("WGRELAY_AWG", "s1=x");
    assert_eq!(
        parse_err(&[]),
        "--awg: awg: s1 must be a non-negative decimal integer (got \"x\")"
    );
    env.clear();

    // wgproxy's variables, from the process environment.
    env.set("WGPROXY_SERVER", "vpn.example.net:51820");
    env.set("WGPROXY_PUBKEY", &k(1));
    env.set("WGPROXY_LISTEN", "127.0.0.1:51821");
    let c = parse(&[]);
    assert_eq!(c.servers.len(), 1);
    assert_eq!(c.listen, vec![sa("127.0.0.1:51821")]);
    env.set("WGRELAY_LISTEN", "127.0.0.1:9");
    assert_eq!(parse(&[]).listen, vec![sa("127.0.0.1:9")]);
    std::env::remove_var("WGPROXY_PUBKEY");
    assert!(parse_err(&[]).starts_with("WGPROXY_SERVER is set but WGPROXY_PUBKEY is not"));
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
    // load() reads the environment as it is at the call, and names the variable
    let e = load(&["wgrelay", "check-config"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "wgrelay: WGRELAY_THREADS=0: must be at least 1"
    );
    env.set("WGRELAY_THREADS", "5");
    assert_eq!(load(&["wgrelay"]).unwrap().1.threads, 5);
    assert_eq!(
        load(&["wgrelay", "--threads", "0"])
            .unwrap_err()
            .to_string(),
        "wgrelay: --threads 0: must be at least 1"
    );
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

    // A value outside a fixed set names the variable, the value and every accepted value.
    for (var, value, expected) in [
        ("WGRELAY_BACKEND", "foo", "invalid value for --backend <BACKEND>: expected one of auto, uring, mmsg"),
        ("WGRELAY_LOG_FORMAT", "xml", "invalid value for --log-format <FORMAT>: expected one of text, json"),
        ("WGRELAY_COOKIE", "sometimes", "invalid value for --cookie <MODE>: expected one of always, under-load, never"),
        ("WGRELAY_GSO", "maybe", "invalid value for --gso <on|off>: expected one of on, off"),
    ] {
        env.set(var, value);
        let e = load(&["wgrelay", "check-config"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), format!("wgrelay: {var}={value}: {expected}"));
        env.clear();
    }

    // Back to defaults once cleared.
    assert_eq!(parse(&[]), Config::default());
}

// ---- log format, metrics, control socket ----

#[test]
fn operating_settings_from_flags_and_file() {
    let json = |c: &Config| c.log_format == LogFormat::Json;
    let d = Config::default();
    assert_eq!(d.log_format, LogFormat::Text);
    assert_eq!(d.metrics, None);
    assert_eq!(
        d.control_socket.as_deref(),
        Some(Path::new("/run/wgrelay/control.sock"))
    );
    let f = TempFile::new(
        "log_format = \"json\"\nmetrics = \"127.0.0.1:9586\"\ncontrol_socket = \"/tmp/wgr.sock\"\n",
    );
    // (argv, metrics, control socket, json logs)
    type Case<'a> = (Vec<&'a str>, Option<&'a str>, Option<&'a str>, bool);
    let mut cases: Vec<Case> = vec![
        (
            vec!["--log-format", "json"],
            None,
            Some("/run/wgrelay/control.sock"),
            true,
        ),
        (
            vec!["--metrics", "[::1]:9586"],
            Some("[::1]:9586"),
            Some("/run/wgrelay/control.sock"),
            false,
        ),
        (vec!["--control-socket", "off"], None, None, false),
        (
            vec!["--control-socket", "/tmp/c.sock"],
            None,
            Some("/tmp/c.sock"),
            false,
        ),
        (
            vec!["--config", f.path()],
            Some("127.0.0.1:9586"),
            Some("/tmp/wgr.sock"),
            true,
        ),
        // flags win over the file
        (
            vec![
                "--config",
                f.path(),
                "--log-format",
                "text",
                "--control-socket",
                "off",
            ],
            Some("127.0.0.1:9586"),
            None,
            false,
        ),
    ];
    let off = TempFile::new("control_socket = \"off\"\n");
    cases.push((vec!["--config", off.path()], None, None, false));
    for (argv, metrics, socket, is_json) in cases {
        let c = parse(&argv);
        assert_eq!(c.metrics, metrics.map(sa), "{argv:?}");
        assert_eq!(
            c.control_socket.as_deref(),
            socket.map(Path::new),
            "{argv:?}"
        );
        assert_eq!(json(&c), is_json, "{argv:?}");
    }
    let s = parse(&[
        "--metrics",
        "127.0.0.1:9",
        "--log-format",
        "json",
        "--control-socket",
        "off",
    ])
    .summary();
    for line in [
        "\nmetrics: http://127.0.0.1:9/metrics\n",
        "\nlog format: json\n",
        "\ncontrol socket: off\n",
    ] {
        assert!(s.contains(line), "{s}");
    }
}

#[test]
fn operating_settings_errors() {
    let long = format!("/tmp/{}", "s".repeat(120));
    for (argv, expected) in [
        (vec!["--control-socket", "/run/wgrelay/"], "--control-socket \"/run/wgrelay/\": expected a path for the socket, or off".to_string()),
        (vec!["--control-socket", long.as_str()], format!("--control-socket {long}: 125 bytes long, but a Unix socket path may have at most 107")),
        (vec!["--metrics", "localhost:9586"], "--metrics \"localhost:9586\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)".to_string()),
    ] {
        assert_eq!(parse_err(&argv), expected, "{argv:?}");
    }
    let e = try_parse(&["--log-format", "xml"]).unwrap_err().to_string();
    assert!(e.contains("xml"), "{e}");
    for (text, expected) in [
        (
            "log_format = \"xml\"",
            "config: line 1: log_format: unknown variant `xml`, expected `text` or `json`",
        ),
        (
            "\nmetrics = \"nowhere\"",
            "config: line 2: metrics \"nowhere\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)",
        ),
        (
            "metrics = 9586",
            "config: line 1: metrics: invalid type: integer `9586`, expected a string",
        ),
        (
            "control_socket = \"\"",
            "config: line 1: control_socket \"\": expected a path for the socket, or off",
        ),
    ] {
        assert_eq!(toml_err(text), expected, "{text}");
    }
}

// ---- load and diff (what reload needs) ----

#[test]
fn load_builds_what_start_up_builds_and_fails_the_same_way() {
    let _env = env_read();
    let f = TempFile::new("threads = 3\ncookie = \"always\"\n");
    let (mode, c) = load(&["wgrelay", "check-config", "--config", f.path()]).unwrap();
    assert_eq!(mode, Mode::CheckConfig);
    assert_eq!((c.threads, c.cookie), (3, CookieMode::Always));
    // the file is read again at every call
    std::fs::write(&f.0, "threads = 4\n").unwrap();
    let (mode, c) = load(&["wgrelay", "--config", f.path()]).unwrap();
    assert_eq!(
        (mode, c.threads, c.cookie),
        (Mode::Run, 4, CookieMode::UnderLoad)
    );
    for (argv, shown, code) in [
        (
            vec!["wgrelay", "--threads", "0"],
            "wgrelay: --threads 0: must be at least 1",
            2,
        ),
        (
            vec!["wgrelay", "--peer", "10001"],
            "wgrelay: --peer \"10001\": expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE",
            2,
        ),
        (vec!["wgrelay", "--threads", "x"], "error: invalid value 'x' for '--threads <N>'", 2),
        (vec!["wgrelay", "--version"], "wgrelay ", 0),
    ] {
        let e = load(&argv).unwrap_err();
        assert!(e.to_string().starts_with(shown), "{argv:?}: {e}");
        assert_eq!(e.exit_code(), code, "{argv:?}");
    }
}

#[test]
fn name_the_variable_rewrites_only_what_came_from_it() {
    let env = [("--threads".to_string(), "WGRELAY_THREADS".to_string())];
    for (message, shown) in [
        (
            "--threads 0: must be at least 1",
            "WGRELAY_THREADS=0: must be at least 1",
        ),
        ("--threads: bad", "WGRELAY_THREADS: bad"),
        ("--threads-x 0: other", "--threads-x 0: other"),
        ("--listen \"x\": bad", "--listen \"x\": bad"),
    ] {
        assert_eq!(args::name_the_variable(message, &env), shown);
    }
}

#[test]
fn diff_names_each_changed_setting_and_whether_it_is_live() {
    let old = Config {
        threads: 2,
        allow: vec![key(1), key(2), key(3)],
        ..Config::default()
    };
    assert!(old.diff(&old.clone()).is_empty());
    assert_eq!(old.diff(&old).to_string(), "no changes");
    // reordering a list is no change
    let reordered = Config {
        allow: vec![key(3), key(1), key(2)],
        ..old.clone()
    };
    assert!(old.diff(&reordered).is_empty());
    let new = Config {
        allow: vec![key(1), key(2), key(4), key(5)],
        cookie: CookieMode::Always,
        threads: 4,
        ..old.clone()
    };
    let d = old.diff(&new);
    assert_eq!(
        d.to_string(),
        "allow: +2 -1 keys; cookie: under-load → always; threads: 2 → 4 (needs a restart)"
    );
    assert!(d.changed("allow") && !d.changed("groups"));
    assert_eq!(
        d.restart_only().map(|c| c.setting).collect::<Vec<_>>(),
        ["threads"]
    );
    // every setting, one at a time: (changed config, setting, detail, live)
    let mut awg = AwgParams::plain();
    awg.jc = 4;
    let d0 = Config::default();
    let cases: Vec<(Config, &str, &str, bool)> = vec![
        (
            Config {
                listen: vec![sa("127.0.0.1:5")],
                ..d0.clone()
            },
            "listen",
            "+127.0.0.1:5 -[::]:51820",
            false,
        ),
        (
            Config {
                groups: vec![vec![key(1), key(2)]],
                ..d0.clone()
            },
            "groups",
            "+1 -0 group",
            true,
        ),
        (
            Config {
                servers: vec![server("a.example:1", 1)],
                ..d0.clone()
            },
            "servers",
            "+1 -0 server",
            true,
        ),
        (
            Config {
                peers: vec![port_peer("[::]:7", 1)],
                ..d0.clone()
            },
            "peers",
            "+1 -0 peer",
            false,
        ),
        (
            Config { awg, ..d0.clone() },
            "awg",
            "plain → jc=4 jmin=0 jmax=0 s1=0 s2=0 s3=0 s4=0 h1=1 h2=2 h3=3 h4=4",
            false,
        ),
        (
            Config {
                broadcast_rate: None,
                ..d0.clone()
            },
            "broadcast_rate",
            "1000 → unlimited",
            true,
        ),
        (
            Config {
                log_level: log::LevelFilter::Debug,
                ..d0.clone()
            },
            "log_level",
            "info → debug",
            true,
        ),
        (
            Config {
                log_format: LogFormat::Json,
                ..d0.clone()
            },
            "log_format",
            "text → json",
            false,
        ),
        (
            Config {
                stats_interval: None,
                ..d0.clone()
            },
            "stats_interval",
            "60s → off",
            true,
        ),
        (
            Config {
                backend: BackendChoice::Mmsg,
                ..d0.clone()
            },
            "backend",
            "auto → mmsg",
            false,
        ),
        (
            Config {
                gso: false,
                ..d0.clone()
            },
            "gso",
            "on → off",
            false,
        ),
        (
            Config {
                gro: false,
                ..d0.clone()
            },
            "gro",
            "on → off",
            false,
        ),
        (
            Config {
                steering: false,
                ..d0.clone()
            },
            "steering",
            "on → off",
            false,
        ),
        (
            Config {
                state_file: Some("/tmp/s".into()),
                ..d0.clone()
            },
            "state_file",
            "none → /tmp/s",
            false,
        ),
        (
            Config {
                control_socket: None,
                ..d0.clone()
            },
            "control_socket",
            "/run/wgrelay/control.sock → off",
            false,
        ),
        (
            Config {
                metrics: Some(sa("127.0.0.1:9")),
                ..d0.clone()
            },
            "metrics",
            "off → 127.0.0.1:9",
            false,
        ),
    ];
    for (new, setting, detail, live) in cases {
        let d = d0.diff(&new);
        assert_eq!(
            d.changes,
            vec![Change {
                setting,
                detail: detail.to_string(),
                live
            }],
            "{setting}"
        );
        // and back
        assert_eq!(new.diff(&d0).changes.len(), 1, "{setting}");
    }
    // a port peer's new key on the same port: the sockets stay, so it applies live
    let one = Config {
        peers: vec![port_peer("[::]:7", 1)],
        ..d0.clone()
    };
    let other = Config {
        peers: vec![port_peer("[::]:7", 2)],
        ..d0.clone()
    };
    assert!(one.same_sockets(&other));
    assert_eq!(
        one.diff(&other).changes,
        vec![Change {
            setting: "peers",
            detail: "+1 -1 peers".to_string(),
            live: true
        }]
    );
}
