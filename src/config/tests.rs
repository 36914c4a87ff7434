//! Most cases are table rows: argv or TOML text → the expected error (exact, or with `*`
//! matching anything) or the expected change from `Config::default()`. `K1`..`K9` in any
//! argv, TOML text or expected message stand for the test keys 1..9.

use super::*;
use crate::cli::{Cli, Mode};
use clap::{CommandFactory, Parser};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

/// clap reads the process environment, which is global: every test that parses argv holds
/// this for reading; the one env test holds it for writing while it changes variables.
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

/// `K1`..`K9` replaced by the test keys.
fn keys(s: &str) -> String {
    (1..=9).fold(s.to_string(), |s, i| s.replace(&format!("K{i}"), &k(i)))
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// `text` is `pattern`, each `*` of which matches any run of characters.
fn glob(text: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return text == pattern;
    }
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

fn try_parse_with_env_held(
    argv: &[&str],
) -> Result<(Mode, Result<Config, ConfigError>), clap::Error> {
    let full = std::iter::once("wgrelay".to_string()).chain(argv.iter().map(|a| keys(a)));
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

/// The one-line message of argv that clap accepts and the configuration refuses.
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

fn toml(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(&keys(text))
}

/// `Config::from_toml_str`'s error, which must be one line.
fn toml_err(text: &str) -> String {
    let e = toml(text).unwrap_err().to_string();
    assert!(!e.contains('\n'), "multi-line error: {e}");
    e
}

/// A change to the default configuration: what a table row expects.
type Edit = fn(&mut Config);

fn edited(edit: Edit) -> Config {
    let mut c = Config::default();
    edit(&mut c);
    c
}

fn flag_values(cases: &[(&[&str], Edit)]) {
    for (argv, edit) in cases {
        assert_eq!(parse(argv), edited(*edit), "{argv:?}");
    }
}

fn toml_values(cases: &[(&str, Edit)]) {
    for (text, edit) in cases {
        assert_eq!(toml(text).unwrap(), edited(*edit), "{text}");
    }
}

fn flag_errors(cases: &[(&[&str], &str)]) {
    for (argv, want) in cases {
        let e = parse_err(argv);
        assert!(glob(&e, &keys(want)), "{argv:?}:\n got {e}\nwant {want}");
    }
}

fn toml_errors(cases: &[(&str, &str)]) {
    for (text, want) in cases {
        let e = toml_err(text);
        assert!(glob(&e, &keys(want)), "{text:?}:\n got {e}\nwant {want}");
    }
}

/// argv that clap itself refuses, its message containing each of the strings.
fn clap_errors(cases: &[(&[&str], &[&str])]) {
    for (argv, parts) in cases {
        let e = try_parse(argv).unwrap_err().to_string();
        for p in *parts {
            assert!(e.contains(p), "{argv:?}: {e}");
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
        std::fs::write(&path, keys(contents)).unwrap();
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

fn server(addr: &str, i: u8) -> Server {
    Server {
        addr: addr.parse().unwrap(),
        key: key(i),
    }
}

fn port_peer(listen: &str, i: u8) -> PortPeer {
    PortPeer {
        listen: sa(listen),
        key: key(i),
        endpoint: None,
        uapi: None,
        awg: None,
    }
}

fn awg(text: &str) -> AwgParams {
    let mut p = AwgParams::plain();
    for item in text.split(',') {
        let (key, value) = item.split_once('=').unwrap();
        p.set(key, value).unwrap();
    }
    p
}

// ---- command line structure ----

#[test]
fn glob_matches_only_what_it_says() {
    for (text, pattern, matches) in [
        ("abc", "abc", true),
        ("abc", "ab", false),
        ("abc", "a*c", true),
        ("abc", "*b*", true),
        ("abc", "a*b*d", false),
        ("abc", "b*", false),
        ("abc", "*a", false),
    ] {
        assert_eq!(glob(text, pattern), matches, "{text} {pattern}");
    }
}

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn subcommands_and_modes() {
    #[rustfmt::skip]
    let cases: &[(&[&str], Mode, usize)] = &[
        (&["--threads", "1"], Mode::Run, 1),
        (&["run", "--threads", "3"], Mode::Run, 3),
        (&["check-config", "--threads", "2"], Mode::CheckConfig, 2),
    ];
    for (argv, mode, threads) in cases {
        let (m, c) = try_parse(argv).unwrap();
        assert_eq!((m, c.unwrap().threads), (*mode, *threads), "{argv:?}");
    }
    let cli = Cli::try_parse_from(["wgrelay", "check-config", "--port", "7"]).unwrap();
    assert_eq!(cli.into_parts().1.scalars.port, Some(7));
    // Top-level flags cannot be mixed with a subcommand; unknown flags and subcommands fail.
    let refused: &[&[&str]] = &[
        &["--allow", "K1", "run"],
        &["--threads", "2", "check-config"],
        &["--lissten", "[::]:1"],
        &["serve"],
    ];
    for argv in refused {
        assert!(try_parse(argv).is_err(), "{argv:?}");
    }
}

#[test]
fn defaults() {
    let c = parse(&[]);
    assert_eq!(c, Config::default());
    assert_eq!(c.listen, vec![sa("[::]:51820")]);
    assert!(c.allow.is_empty() && c.groups.is_empty() && c.is_open());
    assert_eq!(c.cookie, CookieMode::UnderLoad);
    assert_eq!(c.broadcast_rate, Some(1000));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.threads, cpus.clamp(1, MAX_THREADS));
    assert_eq!(c.backend, BackendChoice::Auto);
    assert!(c.gso && c.gro && c.steering);
    assert_eq!(
        (c.log_level, c.log_format),
        (log::LevelFilter::Info, LogFormat::Text)
    );
    assert_eq!(c.stats_interval, Some(Duration::from_secs(60)));
    assert_eq!((c.state_file.clone(), c.metrics), (None, None));
    assert_eq!(
        c.control_socket,
        Some(PathBuf::from("/run/wgrelay/control.sock"))
    );
    assert_eq!(toml("").unwrap(), c);
}

// ---- values from flags ----

#[test]
fn flag_values_table() {
    #[rustfmt::skip]
    let cases: &[(&[&str], Edit)] = &[
        // listen: repeatable, comma lists, de-duplicated in order
        (&["--listen", "0.0.0.0:1000", "--listen", "[::1]:2000"], |c| c.listen = vec![sa("0.0.0.0:1000"), sa("[::1]:2000")]),
        (&["--listen", "0.0.0.0:1000,[::1]:2000", "--listen", "127.0.0.1:3"], |c| c.listen = vec![sa("0.0.0.0:1000"), sa("[::1]:2000"), sa("127.0.0.1:3")]),
        (&["--listen=10.0.0.1:5, [fe80::1]:6"], |c| c.listen = vec![sa("10.0.0.1:5"), sa("[fe80::1]:6")]),
        (&["--listen", "[::1]:2,127.0.0.1:1,[::1]:2", "--listen", "127.0.0.1:1"], |c| c.listen = vec![sa("[::1]:2"), sa("127.0.0.1:1")]),
        // wpex --bind/--port: one more address
        (&["--port", "40001"], |c| c.listen = vec![sa("[::]:40001")]),
        (&["--bind", "0.0.0.0"], |c| c.listen = vec![sa("0.0.0.0:40000")]),
        (&["--bind", "::1"], |c| c.listen = vec![sa("[::1]:40000")]),
        (&["--bind", "[::1]"], |c| c.listen = vec![sa("[::1]:40000")]),
        (&["--bind", ""], |c| c.listen = vec![sa("[::]:40000")]),
        (&["--bind="], |c| c.listen = vec![sa("[::]:40000")]),
        (&["--bind", "127.0.0.1", "--port", "5000"], |c| c.listen = vec![sa("127.0.0.1:5000")]),
        (&["--bind", "", "--port", "1"], |c| c.listen = vec![sa("[::]:1")]),
        (&["--listen", "10.1.1.1:51820", "--port", "5000"], |c| c.listen = vec![sa("10.1.1.1:51820"), sa("[::]:5000")]),
        (&["--port", "5000", "--listen", "10.1.1.1:51820", "--bind", "10.0.0.1"], |c| c.listen = vec![sa("10.1.1.1:51820"), sa("10.0.0.1:5000")]),
        (&["--listen", "10.1.1.1:51820", "--bind", "10.0.0.1"], |c| c.listen = vec![sa("10.1.1.1:51820"), sa("10.0.0.1:40000")]),
        (&["--listen", "[::]:40000", "--port", "40000"], |c| c.listen = vec![sa("[::]:40000")]),
        // allow and groups
        (&["--allow", "K1", "--allow", "K2"], |c| c.allow = vec![key(1), key(2)]),
        (&["--allow", "K3,K1"], |c| c.allow = vec![key(3), key(1)]),
        (&["--allow", "K2, K1 ,K2", "--allow", "K1"], |c| c.allow = vec![key(2), key(1)]),
        (&["--group", "K1,K2", "--group", "K3,K4,K5"], |c| c.groups = vec![vec![key(1), key(2)], vec![key(3), key(4), key(5)]]),
        (&["--group", "K1,K2;K3,K4"], |c| c.groups = vec![vec![key(1), key(2)], vec![key(3), key(4)]]),
        (&["--group", "K1,K2,K1"], |c| c.groups = vec![vec![key(1), key(2)]]),
        (&["--allow", "K9", "--group", "K1,K2"], |c| { c.allow = vec![key(9)]; c.groups = vec![vec![key(1), key(2)]] }),
        // single-valued settings
        (&["--cookie", "always"], |c| c.cookie = CookieMode::Always),
        (&["--cookie", "under-load"], |_| {}),
        (&["--cookie", "never"], |c| c.cookie = CookieMode::Never),
        (&["--broadcast-rate", "0"], |c| c.broadcast_rate = None),
        (&["--broadcast-rate", "5"], |c| c.broadcast_rate = Some(5)),
        (&["--broadcast-rate", "4294967295"], |c| c.broadcast_rate = Some(u32::MAX)),
        (&["--threads", "1"], |c| c.threads = 1),
        (&["--threads", "1024"], |c| c.threads = 1024),
        (&["--backend", "auto"], |_| {}),
        (&["--backend", "uring"], |c| c.backend = BackendChoice::Uring),
        (&["run", "--backend", "mmsg"], |c| c.backend = BackendChoice::Mmsg),
        (&["--gso", "off"], |c| c.gso = false),
        (&["--gro", "off"], |c| c.gro = false),
        (&["--steering", "off"], |c| c.steering = false),
        (&["--gso", "on", "--gro", "on", "--steering", "on"], |_| {}),
        (&["--log-level", "trace"], |c| c.log_level = log::LevelFilter::Trace),
        (&["--log-level", "error"], |c| c.log_level = log::LevelFilter::Error),
        (&["--log-level", "warn"], |c| c.log_level = log::LevelFilter::Warn),
        // --debug raises to at least debug; it never lowers trace
        (&["--debug"], |c| c.log_level = log::LevelFilter::Debug),
        (&["--debug", "--log-level", "warn"], |c| c.log_level = log::LevelFilter::Debug),
        (&["--log-level", "trace", "--debug"], |c| c.log_level = log::LevelFilter::Trace),
        (&["--stats-interval", "0"], |c| c.stats_interval = None),
        (&["--stats-interval", "15"], |c| c.stats_interval = Some(Duration::from_secs(15))),
        (&["--state-file", "/tmp/wgrelay-state"], |c| c.state_file = Some("/tmp/wgrelay-state".into())),
        (&["--log-format", "json"], |c| c.log_format = LogFormat::Json),
        (&["--metrics", "[::1]:9586"], |c| c.metrics = Some(sa("[::1]:9586"))),
        (&["--metrics", "127.0.0.1:0"], |c| c.metrics = Some(sa("127.0.0.1:0"))),
        (&["--control-socket", "off"], |c| c.control_socket = None),
        (&["--control-socket", "/tmp/c.sock"], |c| c.control_socket = Some("/tmp/c.sock".into())),
        // servers pair with their keys in order
        (&["--server", "vpn.example.net:51820", "--server-key", "K1", "--server", "192.0.2.1:1,[2001:db8::1]:2", "--server-key", "K2, K3"],
            |c| c.servers = vec![server("vpn.example.net:51820", 1), server("192.0.2.1:1", 2), server("[2001:db8::1]:2", 3)]),
        // a bare peer port goes on the host of the first listen address, the default one too
        (&["--peer", "10001=K1"], |c| c.peers = vec![port_peer("[::]:10001", 1)]),
        (&["--listen", "127.0.0.1:7,0.0.0.0:8", "--peer", "127.0.0.2:7=K1,[::1]:8=K2"],
            |c| { c.listen = vec![sa("127.0.0.1:7"), sa("0.0.0.0:8")]; c.peers = vec![port_peer("127.0.0.2:7", 1), port_peer("[::1]:8", 2)] }),
        // awg: KEY=VALUE items; keys the relay has no use for, and a zero header protection key, change nothing
        (&["--awg", "jc=4,jmin=40,jmax=70,s1=20,s2=30", "--awg", "h1=100000-100099", "--awg", "H2=200000, h3 = 300000,h4=400000"],
            |c| c.awg = awg("jc=4,jmin=40,jmax=70,s1=20,s2=30,h1=100000-100099,h2=200000,h3=300000,h4=400000")),
        (&["--awg", "i1=<r 16>,header_protection_key=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="], |_| {}),
        // a cookie reply just shorter than the initiation, or any with cookie replies off
        (&["--awg", "s1=10,s3=93"], |c| c.awg = awg("s1=10,s3=93")),
        (&["--awg", "s1=10,s3=120", "--cookie", "never"], |c| { c.awg = awg("s1=10,s3=120"); c.cookie = CookieMode::Never }),
    ];
    flag_values(cases);
    assert_eq!(
        parse(&["--server", "vpn.example.net:51820", "--server-key", "K1"]).servers[0]
            .addr
            .name(),
        Some("vpn.example.net")
    );
}

#[test]
fn peers_from_flags() {
    let c = parse(&[
        "--listen",
        "127.0.0.1:51820,[::1]:51820",
        "--peer",
        "10001=K1",
        "--peer",
        "[::1]:10002=K2@192.0.2.7:51820",
        "--peer",
        "10003=K3@uapi:wg0, 10004=K4@uapi:/run/wireguard/wg1.sock",
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
}

// ---- errors from flags ----

#[test]
fn flag_errors_table() {
    let long = format!("/tmp/{}", "s".repeat(120));
    let long_err = format!(
        "--control-socket {long}: 125 bytes long, but a Unix socket path may have at most 107"
    );
    let syntax = "expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE";
    let port0 = "port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)";
    let (peer_syntax, peer_port0, peer_addr0) = (
        format!("--peer \"10001\": {syntax}"),
        format!("--peer \"0=K1\": {port0}"),
        format!("--peer \"127.0.0.1:0=K1\": {port0}"),
    );
    let why = "(got s3 = 120, s1 = 10: a 184-byte cookie reply to a 158-byte initiation); the relay keeps no state for a source it challenges, so each challenge would send it more bytes than it sent; use s3 < s1 + 84";
    let cookie =
        format!("--awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}");
    #[rustfmt::skip]
    let cases: &[(&[&str], &str)] = &[
        (&["--listen", "1.2.3.4"], r#"--listen "1.2.3.4": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"#),
        (&["--listen", "::1:51820"], r#"--listen "::1:51820": invalid socket address*"#),
        (&["--listen", "localhost:51820"], r#"--listen "localhost:51820": invalid socket address*"#),
        (&["--listen", "1.2.3.4:70000"], r#"--listen "1.2.3.4:70000": invalid socket address*"#),
        (&["--listen", "1.2.3.4:"], r#"--listen "1.2.3.4:": invalid socket address*"#),
        (&["--listen", ":51820"], r#"--listen ":51820": invalid socket address*"#),
        (&["--listen", ""], r#"--listen "": invalid socket address*"#),
        (&["--listen", "[::]:51820,bogus"], r#"--listen "bogus": invalid socket address*"#),
        (&["--listen", "[::]:0"], r#"--listen "[::]:0": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"#),
        (&["--listen", "127.0.0.1:0"], r#"--listen "127.0.0.1:0": port 0*"#),
        (&["--port", "0"], "--port 0: port 0 is not allowed*"),
        (&["--bind", "0.0.0.0:40000"], r#"--bind "0.0.0.0:40000": invalid IP address (expected e.g. 0.0.0.0 or ::, or "" for all addresses; set the port with --port)"#),
        (&["--bind", "example.com", "--port", "1"], r#"--bind "example.com": invalid IP address*"#),
        (&["--allow", "abc"], r#"--allow: invalid public key "abc": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"#),
        (&["--allow", "K1,nope"], r#"--allow: invalid public key "nope"*"#),
        // a trailing comma is an empty key, not "no key": never silently open
        (&["--allow", "K1,"], r#"--allow: invalid public key ""*"#),
        (&["--allow", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE!"], r#"--allow: invalid public key "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE!"*"#),
        (&["--group", "K1"], r#"--group "K1": a group needs at least 2 distinct public keys (got 1)"#),
        (&["--group", "K1,K1"], r#"--group "K1,K1": a group needs at least 2 distinct public keys (got 1)"#),
        (&["--group", "K1,xyz"], r#"--group: invalid public key "xyz"*"#),
        (&["--group", "K1,K2;K1"], r#"--group "K1": a group needs*"#),
        (&["--threads", "0"], "--threads 0: must be at least 1"),
        (&["--threads", "1025"], "--threads 1025: must be at most 1024"),
        (&["--stats-interval", "86401"], "--stats-interval 86401: at most 86400 seconds (one day); 0 turns the statistics line off"),
        (&["--control-socket", "/run/wgrelay/"], r#"--control-socket "/run/wgrelay/": expected a path for the socket, or off"#),
        (&["--control-socket", &long], &long_err),
        (&["--metrics", "localhost:9586"], r#"--metrics "localhost:9586": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"#),
        (&["--listen", "[::]:7,0.0.0.0:7"], "--listen: [::]:7 is dual-stack and already receives IPv4 on port 7, so 0.0.0.0:7 cannot be bound beside it; list one of them"),
        (&["--listen", "127.0.0.1:7,0.0.0.0:7"], "--listen: 0.0.0.0:7 already receives what 127.0.0.1:7 would (the same port, and it covers that address), so 127.0.0.1:7 cannot be bound beside it; list one of them"),
        // servers
        (&["--server", "a.example:1"], "--server and --server-key pair up in order, one key per server: got 1 server and 0 server keys"),
        (&["--server", "a.example:1", "--server-key", "K1,K2"], "--server and --server-key pair up in order, one key per server: got 1 server and 2 server keys"),
        (&["--server-key", "K1"], "--server and --server-key pair up in order, one key per server: got 0 servers and 1 server key"),
        (&["--server", "a.example", "--server-key", "K1"], r#"--server: invalid upstream address "a.example": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"#),
        // a bad value is named before the counts are compared
        (&["--server", "a.example:0"], r#"--server: invalid upstream address "a.example:0": port 0 cannot be sent to*"#),
        (&["--server", "::1:51820", "--server-key", "K1"], "*must be in brackets*"),
        (&["--server", "a.example:1", "--server-key", "abc"], r#"--server-key: invalid public key "abc": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"#),
        (&["--server", "a.example:1,b.example:2", "--server-key", "K1,K1"], "--server-key K1: given for two servers (a key chooses one server)"),
        (&["--server", "a.example:1,", "--server-key", "K1"], r#"*invalid upstream address "": it is empty*"#),
        // peers
        (&["--peer", "10001"], &peer_syntax),
        (&["--peer", ""], &format!("--peer \"\": {syntax}")),
        (&["--peer", "0=K1"], &peer_port0),
        (&["--peer", "127.0.0.1:0=K1"], &peer_addr0),
        (&["--peer", "70000=K1"], r#"--peer "70000=K1": port 70000 is out of range (1-65535)"#),
        (&["--peer", "host:1=K1"], r#"--peer "host:1=K1": "host:1" is neither a PORT nor an ADDR:PORT (IPv6 as [ADDR]:PORT)"#),
        (&["--peer", "5=abc"], r#"--peer: invalid public key "abc": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"#),
        (&["--peer", "5=K1@host:1"], r#"--peer "5=K1@host:1": endpoint "host:1": invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT, or uapi:DEVICE for a local WireGuard device)"#),
        (&["--peer", "5=K1@192.0.2.1:0"], r#"--peer "5=K1@192.0.2.1:0": endpoint "192.0.2.1:0": port 0 cannot be sent to"#),
        (&["--peer", "5=K1@0.0.0.0:5"], r#"--peer "5=K1@0.0.0.0:5": endpoint "0.0.0.0:5": 0.0.0.0 is not an address to send to"#),
        (&["--peer", "5=K1@uapi:wg 0"], r#"--peer "5=K1@uapi:wg 0": uapi "wg 0": expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket"#),
        (&["--peer", "5=K1@uapi:run/wg0.sock"], "*or an absolute path to its UAPI socket"),
        (&["--peer", "5=K1@uapi:/"], r#"*uapi "/": not a path to a UAPI socket"#),
        (&["--peer", "5=K1,6=K1"], r#"--peer "6=K1": its public key is already the key of --peer "5=K1" (a key has one relay port)"#),
        // a peer port is not a relay listen address, nor covered by one, nor covering one ...
        (&["--peer", "51820=K1"], r#"--peer "51820=K1": [::]:51820 overlaps the relay listen address [::]:51820 (a peer needs a port of its own)"#),
        (&["--listen", "127.0.0.1:7", "--peer", "0.0.0.0:7=K1"], "*0.0.0.0:7 overlaps the relay listen address 127.0.0.1:7 (a peer needs a port of its own)"),
        (&["--listen", "[::]:7", "--peer", "127.0.0.1:7=K1"], "*127.0.0.1:7 overlaps the relay listen address [::]:7*"),
        // ... nor another peer's port
        (&["--peer", "5=K1", "--peer", "5=K2"], r#"--peer "5=K2": [::]:5 overlaps the port of --peer "5=K1" ([::]:5)"#),
        (&["--listen", "[::]:1", "--peer", "5=K1,127.0.0.1:5=K2"], r#"*127.0.0.1:5 overlaps the port of --peer "5=K1" ([::]:5)"#),
        // awg
        (&["--awg", "jc"], r#"--awg "jc": expected KEY=VALUE (e.g. jc=4 or h1=100000-100099)"#),
        (&["--awg", ""], r#"--awg "": expected KEY=VALUE (e.g. jc=4 or h1=100000-100099)"#),
        (&["--awg", "s1=x"], r#"--awg: awg: s1 must be a non-negative decimal integer (got "x")"#),
        (&["--awg", "jc=1,Jc=2"], r#"--awg "Jc=2": Jc is given twice"#),
        (&["--awg", "foo=1"], r#"--awg: awg: unknown parameter "foo" (known: jc, jmin, jmax,*"#),
        (&["--awg", "jmin=10,jmax=5"], "--awg: awg: jmin must be ≤ jmax (got jmin 10, jmax 5)"),
        (&["--awg", "s1=0,s2=56"], "--awg: awg: s1 and s2 give two messages the same framed length (148 bytes); framed lengths s1+148, s2+92, s3+64, s4+32 must all differ (so s2 ≠ s1+56)"),
        (&["--awg", "h1=5,h2=5"], "--awg: awg: h1..h4 ranges overlap: h1 = 5 and h2 = 5 share values"),
        // valid for AmneziaWG, but larger than the relay's datagram buffers
        (&["--awg", "s1=9100"], "--awg: awg: s1 must be ≤ 9068 (got 9100): the framed message must fit the relay's datagram buffer"),
        (&["--awg", "header_protection_key=0123456789abcdef"], "--awg: awg: header protection (AWG 3, header_protection_key) cannot be relayed: indices are encrypted without its key"),
        (&["--awg", "obfs_psk=secret"], "--awg: awg: obfs_psk (whole-datagram obfuscation) cannot be relayed: indices are encrypted without its key"),
        // a cookie reply longer than the initiation it answers, unless cookie replies are off
        (&["--awg", "s1=10,s3=120"], &cookie),
        (&["--awg", "s1=10,s3=120", "--cookie", "always"], &cookie),
    ];
    flag_errors(cases);
    // clap refuses what does not parse, naming the value (and the choices, for a fixed set)
    #[rustfmt::skip]
    let cases: &[(&[&str], &[&str])] = &[
        (&["--port", "70000"], &["70000"]),
        (&["--port", "http"], &["http"]),
        (&["--cookie", "sometimes"], &["sometimes", "under-load"]),
        (&["--broadcast-rate", "-1"], &["-1"]),
        (&["--threads", "many"], &["many"]),
        (&["--backend", "epoll"], &["epoll", "uring"]),
        (&["--gso", "maybe"], &["maybe", "off"]),
        (&["--gro", "maybe"], &["maybe", "off"]),
        (&["--log-level", "loud"], &["loud"]),
        (&["--log-format", "xml"], &["xml", "json"]),
    ];
    clap_errors(cases);
}

#[test]
fn sockets_overlap_rules() {
    #[rustfmt::skip]
    let cases = [
        ("127.0.0.1:1", "127.0.0.1:1", true), ("127.0.0.1:1", "127.0.0.1:2", false),
        ("127.0.0.1:1", "127.0.0.2:1", false), ("0.0.0.0:1", "127.0.0.1:1", true),
        ("127.0.0.1:1", "0.0.0.0:1", true), ("0.0.0.0:1", "[::1]:1", false),
        ("0.0.0.0:1", "[::ffff:127.0.0.1]:1", true), ("[::]:1", "127.0.0.1:1", true),
        ("[::]:1", "[::1]:1", true), ("[::]:1", "0.0.0.0:1", true), ("[::1]:1", "[::2]:1", false),
    ];
    for (a, b, overlap) in cases {
        assert_eq!(sockets_overlap(sa(a), sa(b)), overlap, "{a} {b}");
    }
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
steering = "off"
log_level = "warn"
stats_interval = 9
state_file = "/tmp/s"
log_format = "json"
metrics = "127.0.0.1:9586"
control_socket = "/tmp/wgr.sock"
"#;

fn full_file(c: &mut Config) {
    c.listen = vec![sa("127.0.0.1:1111"), sa("[::1]:2222")];
    c.allow = vec![key(1), key(2)];
    c.groups = vec![vec![key(3), key(4)], vec![key(5), key(6)]];
    c.cookie = CookieMode::Always;
    c.broadcast_rate = Some(7);
    c.threads = 3;
    c.backend = BackendChoice::Uring;
    (c.gso, c.gro, c.steering) = (false, false, false);
    c.log_level = log::LevelFilter::Warn;
    c.stats_interval = Some(Duration::from_secs(9));
    c.state_file = Some("/tmp/s".into());
    c.log_format = LogFormat::Json;
    c.metrics = Some(sa("127.0.0.1:9586"));
    c.control_socket = Some("/tmp/wgr.sock".into());
}

const PEERS_FILE: &str = "listen = [\"10.0.0.1:51820\"]
[[peer]]\nport = 10001\npublic_key = \"K1\"
[[peer]]\nlisten = \"[::1]:10002\"\npublic_key = \"K2\"\nendpoint = \"[2001:db8::7]:51820\"
[[peer]]\nport = 10003\npublic_key = \"K3\"\nuapi = \"wg0\"\nawg = { jc = 4, jmin = 40, jmax = 70, s1 = 20, h1 = \"100000-100099\", h2 = 200000, h3 = 300000, h4 = 400000 }
[[peer]]\nport = 10004\npublic_key = \"K4\"\n[peer.awg]\ns2 = 30\n";

fn peers_file(c: &mut Config) {
    c.listen = vec![sa("10.0.0.1:51820")];
    let mut p = vec![
        port_peer("10.0.0.1:10001", 1),
        port_peer("[::1]:10002", 2),
        port_peer("10.0.0.1:10003", 3),
        port_peer("10.0.0.1:10004", 4),
    ];
    p[1].endpoint = Some(sa("[2001:db8::7]:51820"));
    p[2].uapi = Some("wg0".into());
    p[2].awg = Some(awg(
        "jc=4,jmin=40,jmax=70,s1=20,h1=100000-100099,h2=200000,h3=300000,h4=400000",
    ));
    p[3].awg = Some(awg("s2=30"));
    c.peers = p;
}

const AWG_FILE: &str = "[awg]\njc = 4\njmin = 40\njmax = 70\ns1 = 20\nh1 = \"100000-100099\"\nh2 = 200000\nh3 = 300000\nh4 = 400000\n";

#[test]
fn file_values_table() {
    #[rustfmt::skip]
    let cases: &[(&str, Edit)] = &[
        (FULL_FILE, full_file),
        (PEERS_FILE, peers_file),
        (AWG_FILE, |c| c.awg = awg("jc=4,jmin=40,jmax=70,s1=20,h1=100000-100099,h2=200000,h3=300000,h4=400000")),
        // awg-quick spellings; an empty table is plain WireGuard, for a peer the relay-wide awg
        ("[awg]\nJc = 3\nS1 = 10", |c| c.awg = awg("jc=3,s1=10")),
        ("[awg]\n", |_| {}),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\nawg = {}\n", |c| c.peers = vec![port_peer("[::]:5", 1)]),
        ("cookie = \"never\"\n[awg]\ns1 = 10\ns3 = 120", |c| { c.cookie = CookieMode::Never; c.awg = awg("s1=10,s3=120") }),
        ("backend = \"mmsg\"", |c| c.backend = BackendChoice::Mmsg),
        ("broadcast_rate = 0\nstats_interval = 0", |c| { c.broadcast_rate = None; c.stats_interval = None }),
        ("control_socket = \"off\"", |c| c.control_socket = None),
        ("port = 40001", |c| c.listen = vec![sa("[::]:40001")]),
        ("bind = \"0.0.0.0\"", |c| c.listen = vec![sa("0.0.0.0:40000")]),
        ("bind = \"\"\nport = 7", |c| c.listen = vec![sa("[::]:7")]),
        ("listen = [\"10.0.0.1:1\"]\nbind = \"10.0.0.2\"\nport = 2", |c| c.listen = vec![sa("10.0.0.1:1"), sa("10.0.0.2:2")]),
        // empty lists mean unset
        ("listen = []\nallow = []\ngroups = []", |_| {}),
        ("[[server]]\naddress = \"vpn.example.net:51820\"\npublic_key = \"K1\"\n\n[[server]]\npublic_key = \"K2\"\naddress = \"[2001:db8::1]:51820\"\n",
            |c| c.servers = vec![server("vpn.example.net:51820", 1), server("[2001:db8::1]:51820", 2)]),
    ];
    toml_values(cases);
}

#[test]
fn flags_and_the_file() {
    let full = TempFile::new(FULL_FILE);
    let peers = TempFile::new(PEERS_FILE);
    let awg_file = TempFile::new(AWG_FILE);
    let servers = TempFile::new("[[server]]\naddress = \"a.example:1\"\npublic_key = \"K1\"\n[[server]]\naddress = \"b.example:2\"\npublic_key = \"K2\"\n");
    let wpex = TempFile::new("bind = \"10.0.0.2\"\nport = 2\n");
    let debug = TempFile::new("log_level = \"error\"");
    let (full, peers, awg_file, servers, wpex, debug) = (
        full.path(),
        peers.path(),
        awg_file.path(),
        servers.path(),
        wpex.path(),
        debug.path(),
    );
    // (argv, the file's configuration changed by the flags)
    #[rustfmt::skip]
    let cases: &[(&[&str], Edit, Edit)] = &[
        (&["--config", full], full_file, |_| {}),
        (&["check-config", "--config", full], full_file, |_| {}),
        // flags win over single values; lists not given on the command line come from the file
        (&["--config", full, "--cookie", "never", "--broadcast-rate", "0", "--threads", "5", "--log-level", "debug", "--stats-interval", "0", "--backend", "mmsg", "--gro", "on", "--log-format", "text", "--control-socket", "off"],
            full_file, |c| { c.cookie = CookieMode::Never; c.broadcast_rate = None; c.threads = 5; c.log_level = log::LevelFilter::Debug; c.stats_interval = None; c.backend = BackendChoice::Mmsg; c.gro = true; c.log_format = LogFormat::Text; c.control_socket = None }),
        // list flags replace the file's lists whole; --port alone is a listen setting too
        (&["--config", full, "--listen", "127.0.0.1:9", "--allow", "K7", "--group", "K8,K9"],
            full_file, |c| { c.listen = vec![sa("127.0.0.1:9")]; c.allow = vec![key(7)]; c.groups = vec![vec![key(8), key(9)]] }),
        (&["--config", full, "--port", "4"], full_file, |c| c.listen = vec![sa("[::]:4")]),
        (&["--config", wpex], |c| c.listen = vec![sa("10.0.0.2:2")], |_| {}),
        (&["--config", wpex, "--listen", "127.0.0.1:3"], |_| {}, |c| c.listen = vec![sa("127.0.0.1:3")]),
        (&["--config", debug], |c| c.log_level = log::LevelFilter::Error, |_| {}),
        (&["--config", debug, "--debug"], |_| {}, |c| c.log_level = log::LevelFilter::Debug),
        (&["--config", servers, "--server", "c.example:3", "--server-key", "K3"], |_| {}, |c| c.servers = vec![server("c.example:3", 3)]),
        // bare peer ports follow the first effective listen address, here the flag's
        (&["--config", peers, "--listen", "10.0.0.2:1"], peers_file, |c| {
            c.listen = vec![sa("10.0.0.2:1")];
            for p in &mut c.peers { if p.listen.ip() == sa("10.0.0.1:1").ip() { p.listen.set_ip(sa("10.0.0.2:1").ip()) } }
        }),
        (&["--config", peers, "--peer", "9=K9"], peers_file, |c| c.peers = vec![port_peer("10.0.0.1:9", 9)]),
        // --awg replaces the file's table whole: keys it does not give are plain again
        (&["--config", awg_file, "--awg", "jc=5"], |_| {}, |c| c.awg = awg("jc=5")),
    ];
    for (argv, file, flags) in cases {
        let mut want = edited(*file);
        flags(&mut want);
        assert_eq!(parse(argv), want, "{argv:?}");
    }
}

#[test]
fn file_errors_table() {
    let why = "(got s3 = 120, s1 = 10: a 184-byte cookie reply to a 158-byte initiation); the relay keeps no state for a source it challenges, so each challenge would send it more bytes than it sent; use s3 < s1 + 84";
    let (awg_cookie, peer_cookie) = (
        format!("config: awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}"),
        format!("config: line 2: peer port 5: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never {why}"),
    );
    #[rustfmt::skip]
    let cases: &[(&str, &str)] = &[
        ("# comment\nthreads = 2\nlissten = [\"[::]:1\"]\n", "config: line 3: unknown key \"lissten\" (did you mean \"listen\"? expected one of: listen, allow, groups, server, peer, awg, cookie,*"),
        ("[relay]\nport = 1", "config: line 1: unknown key \"relay\" (expected one of: listen,*"),
        ("group = []", "config: line 1: unknown key \"group\" (did you mean \"groups\"?*"),
        ("allow = [\n  \"abc\",\n]\n", "config: line 2: allow: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"),
        ("\nlisten = [\"1.2.3.4\"]", "config: line 2: listen \"1.2.3.4\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"),
        ("listen = [\"[::]:0\"]", "config: line 1: listen \"[::]:0\": port 0 is not allowed*"),
        ("listen = [\"[::]:1\", \"0.0.0.0:1\"]", "config: listen: [::]:1 is dual-stack and already receives IPv4 on port 1, so 0.0.0.0:1 cannot be bound beside it; list one of them"),
        ("port = 0", "config: line 1: port 0: port 0 is not allowed*"),
        ("bind = \"nowhere\"", "config: line 1: bind \"nowhere\": invalid IP address (expected e.g. 0.0.0.0 or ::, or \"\" for all addresses; set the port with port)"),
        ("cookie = \"never\"\nthreads = 0", "config: line 2: threads 0: must be at least 1"),
        ("threads = 5000", "config: line 1: threads 5000: must be at most 1024"),
        ("stats_interval = 86401", "config: stats_interval = 86401: at most 86400 seconds (one day); 0 turns the statistics line off"),
        ("groups = [\n  [\"K1\"],\n]", "config: line 2: groups entry [\"K1\"]: a group needs at least 2 distinct public keys (got 1)"),
        ("groups = [[\"K1\", \"K1\"]]", "config: line 1: groups entry [\"K1\", \"K1\"]: a group needs at least 2 distinct public keys (got 1)"),
        ("groups = [[\"K1\", \"zzz\"]]", "config: line 1: groups: invalid public key \"zzz\"*"),
        // types and syntax
        ("threads = \"two\"", "config: line 1: threads: invalid type: string \"two\"*"),
        ("\nport = 70000", "config: line 2: port: *70000*"),
        ("threads = -1", "config: line 1: threads: *-1*"),
        ("cookie = \"sometimes\"", "config: line 1: cookie: unknown variant `sometimes`, expected one of `always`, `under-load`, `never`"),
        ("log_level = \"loud\"", "config: line 1: log_level: unknown variant `loud`*"),
        ("threads = 1\nbackend = \"io_uring\"", "config: line 2: backend: unknown variant `io_uring`, expected one of `auto`, `uring`, `mmsg`"),
        ("threads = 1\ngso = \"yes\"", "config: line 2: gso: unknown variant `yes`, expected `on` or `off`"),
        ("gro = true", "config: line 1: gro: invalid type: *"),
        ("log_format = \"xml\"", "config: line 1: log_format: unknown variant `xml`, expected `text` or `json`"),
        ("\nmetrics = \"nowhere\"", "config: line 2: metrics \"nowhere\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"),
        ("metrics = 9586", "config: line 1: metrics: invalid type: integer `9586`, expected a string"),
        ("control_socket = \"\"", "config: line 1: control_socket \"\": expected a path for the socket, or off"),
        ("allow = \"K\"", "config: line 1: allow: invalid type: string \"K\", expected an array"),
        ("threads = 2\nthreads = 3", "config: line 2: *"),
        ("listen = [\"[::]:1\"\n", "config: *"),
        ("listen = [", "config: *"),
        ("= 1", "config: line 1: *"),
        ("allow = [1]", "config: line 1: allow: *"),
        // tables of any shape stay one line
        ("[[server]]\n[[server]]\naddress = 1", "config: line *"),
        ("[[peer]]\nport = 5\npublic_key = \"x\"\nawg = { jc = [] }", "config: line *"),
        ("[awg]\nh4 = { a = 1 }", "config: line *"),
        ("[peer]\nport = 1", "config: line *"),
        ("[[awg]]\njc = 1", "config: line *"),
        ("[peer.awg]\njc = 1", "config: line *"),
        // servers
        ("threads = 1\n[[server]]\npublic_key = \"K1\"\n", "config: line 2: server: missing address = \"HOST:PORT\""),
        ("[[server]]\naddress = \"a.example:1\"\n", "config: line 1: server: missing public_key = \"...\" (the server's base64 public key)"),
        ("[[server]]\naddress = \"a.example:1\"\npublic_key = \"abc\"\n", "config: line 3: server public_key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"),
        ("[[server]]\naddress = \"1.2.3:1\"\npublic_key = \"K1\"\n", "config: line 2: server address: invalid upstream address \"1.2.3:1\": host looks like an IPv4 address but is not a valid one (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"),
        ("[[server]]\naddress = \"a.example:1\"\npublic_key = \"K1\"\n[[server]]\naddress = \"b.example:1\"\npublic_key = \"K1\"\n", "config: line 6: server public_key K1: already the key of the server on line 3 (a key chooses one server)"),
        ("[[server]]\nadress = \"a.example:1\"\n", "config: line 2: server: unknown key \"adress\" (did you mean \"address\"? expected one of: address, public_key)"),
        ("server = \"a.example:1\"", "config: line 1: server: invalid type: string \"a.example:1\", expected an array (write one [[server]] table per server)"),
        ("threads = 1\n[server]\naddress = \"a.example:1\"\n", "config: line 2: server: invalid type: map, expected an array (write one [[server]] table per server)"),
        ("[[server]]\naddress = 5\n", "config: line 2: server address: invalid type: integer `5`, expected a string"),
        // peers
        ("[[peer]]\npublic_key = \"K1\"\n", "config: line 1: peer: missing port = N (on the host of the first listen address) or listen = \"ADDR:PORT\""),
        ("[[peer]]\nport = 5\nlisten = \"127.0.0.1:5\"\npublic_key = \"K1\"\n", "config: line 2: peer: give port = N or listen = \"ADDR:PORT\", not both"),
        ("threads = 1\n\n[[peer]]\nport = 5\n", "config: line 3: peer: missing public_key = \"...\" (the responder's base64 public key)"),
        ("[[peer]]\nport = 0\npublic_key = \"K1\"\n", "config: line 2: peer port 0: port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"),
        ("[[peer]]\nlisten = \"x\"\npublic_key = \"K1\"\n", "config: line 2: peer listen \"x\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"),
        ("[[peer]]\nport = 5\npublic_key = \"abc\"\n", "config: line 3: peer public_key: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\nendpoint = \"x:5\"\n", "config: line 4: peer endpoint \"x:5\": invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT)"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\nuapi = \"wg/0\"\n", "config: line 4: peer uapi \"wg/0\": expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\nendpoint = \"192.0.2.1:5\"\nuapi = \"wg0\"\n", "config: line 5: peer: endpoint and uapi exclude each other (a fixed endpoint, or the one the device knows)"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\n[[peer]]\nport = 5\npublic_key = \"K2\"\n", "config: line 5: peer port 5: [::]:5 overlaps the port of the peer on line 2 ([::]:5)"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\n[[peer]]\nport = 6\npublic_key = \"K1\"\n", "config: line 5: peer port 6: public key K1 is already the key of the peer on line 2 (a key has one relay port)"),
        ("[[peer]]\nport = 51820\npublic_key = \"K1\"\n", "config: line 2: peer port 51820: [::]:51820 overlaps the relay listen address [::]:51820 (a peer needs a port of its own)"),
        ("listen = [\"0.0.0.0:1\"]\n[[peer]]\nlisten = \"127.0.0.1:1\"\npublic_key = \"K1\"\n", "config: line 3: peer listen \"127.0.0.1:1\": 127.0.0.1:1 overlaps the relay listen address 0.0.0.0:1 (a peer needs a port of its own)"),
        ("[[peer]]\njc = 1\n", "config: line 2: peer: unknown key \"jc\" (expected one of: port, listen, public_key, endpoint, uapi, awg; AmneziaWG parameters go in an awg table)"),
        ("[[peer]]\nport = \"x\"\n", "config: line 2: peer port: invalid type: string \"x\", expected an integer from 0 to 65535"),
        ("[[peer]]\nport = 70000\n", "config: line 2: peer port: invalid value: integer `70000`, expected an integer from 0 to 65535"),
        ("peer = 1", "config: line 1: peer: invalid type: integer `1`, expected an array (write one [[peer]] table per peer)"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\nawg = { s1 = 100000 }\n", "config: line 4: peer awg: s1 must be ≤ 65386 (got 100000): a framed message must stay below amneziawg-go's 65535-byte limit"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\n[peer.awg]\nh1 = \"3-9\"\n", "config: line 4: peer awg: h1 must be 1 (plain WireGuard) or lie wholly above 4 (got 3-9): AWG 1.x/2.0 read a value ≤ 4 as plain, newer builds take it literally"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\nawg = 3\n", "config: line 4: peer awg: invalid type: integer `3`, expected a table"),
        ("[[peer]]\nport = 5\npublic_key = \"K1\"\nawg = { s1 = 10, s3 = 120 }\n", &peer_cookie),
        // awg
        ("[awg]\ns1 = 10\ns3 = 120\n", &awg_cookie),
        ("threads = 1\n[awg]\njc = true\n", "config: line 3: awg: jc must be an integer, or for h1..h4 also a \"N-M\" string (got boolean)"),
        ("[awg]\njc = -1\n", "config: line 2: awg: jc must be a non-negative decimal integer (got \"-1\")"),
        ("[awg]\njc = 4294967296\n", "config: line 2: awg: jc must be ≤ 4294967295 (got 4294967296): it must fit 32 bits"),
        ("[awg]\nh1 = \"9-5\"\n", "config: line 2: awg: h1 must be a type value N or a range N-M (decimal, 0..=4294967295, N <= M) (got \"9-5\")"),
        ("threads = 1\n[awg]\njmin = 10\njmax = 5\n", "config: line 2: awg: jmin must be ≤ jmax (got jmin 10, jmax 5)"),
        ("[awg]\nheader_protection_key = \"0123456789abcdef\"\n", "config: line 2: awg: header protection (AWG 3, header_protection_key) cannot be relayed: indices are encrypted without its key"),
        ("[awg]\nfoo = 1\n", "config: line 2: awg: unknown parameter \"foo\" (known: jc,*"),
        ("awg = 3", "config: line 1: awg: invalid type: integer `3`, expected a table"),
        ("[awg]\njc = 1\n[awg]\njc = 2\n", "config: line 3: invalid table header; duplicate key `awg` in document root"),
    ];
    toml_errors(cases);
}

#[test]
fn file_errors_name_the_file_and_are_reported_even_when_overridden() {
    let missing = std::env::temp_dir().join(format!(
        "wgconfig-test-{}-does-not-exist.toml",
        std::process::id()
    ));
    let missing = missing.to_str().unwrap();
    let dir = std::env::temp_dir();
    let not_utf8 = TempFile::new("");
    std::fs::write(&not_utf8.0, b"threads = \xff\n").unwrap();
    let threads0 = TempFile::new("threads = 0");
    let bad_server = TempFile::new("[[server]]\naddress = \"x\"\n");
    let bad_awg = TempFile::new("[awg]\ns1 = 0\ns2 = 56\n");
    let unknown = TempFile::new("# comment\nthreads = 2\nlissten = [\"[::]:1\"]\n");
    let (f, t, s, a, u) = (
        not_utf8.path(),
        threads0.path(),
        bad_server.path(),
        bad_awg.path(),
        unknown.path(),
    );
    let (m_err, d_err, f_err, t_err, s_err, a_err, u_err) = (
        format!("config file {missing}: cannot read: *os error 2*"),
        format!("config file {}: cannot read: *", dir.display()),
        format!("config file {f}: cannot read: not valid UTF-8 text*"),
        format!("config file {t}: line 1: threads 0: must be at least 1"),
        format!(
            "config file {s}: line 2: server address: invalid upstream address \"x\": no port*"
        ),
        format!(
            "config file {a}: line 1: awg: s1 and s2 give two messages the same framed length*"
        ),
        format!("config file {u}: line 3: unknown key \"lissten\"*"),
    );
    #[rustfmt::skip]
    let cases: &[(&[&str], &str)] = &[
        (&["--config", missing], &m_err),
        (&["--config", dir.to_str().unwrap()], &d_err),
        (&["--config", f], &f_err),
        (&["--config", t, "--threads", "2"], &t_err),
        (&["--config", s, "--server", "c.example:3", "--server-key", "K3"], &s_err),
        (&["--config", a, "--awg", "jc=5"], &a_err),
        (&["--config", u], &u_err),
    ];
    flag_errors(cases);
}

// ---- summary ----

#[test]
fn summary_servers_peers_awg_and_wgproxy_timeout() {
    let awg = awg("jc=4,jmin=40,jmax=70,s1=20");
    let mut peers = vec![
        port_peer("[::]:10001", 3),
        port_peer("127.0.0.1:10002", 4),
        port_peer("[::]:10003", 5),
    ];
    peers[1].endpoint = Some(sa("192.0.2.7:51820"));
    peers[2].uapi = Some("wg0".into());
    peers[2].awg = Some(awg);
    let c = Config {
        threads: 1,
        servers: vec![
            server("vpn.example.net:51820", 1),
            server("[2001:db8::1]:5", 2),
        ],
        peers,
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
fn summary_lines() {
    #[rustfmt::skip]
    let cases: &[(&[&str], &str)] = &[
        (&[], "\nmode: open (any public key is relayed)\nservers: none\npeers: none\nawg: plain\n"),
        (&["--listen", "127.0.0.1:1,[::1]:2"], "listen: 127.0.0.1:1, [::1]:2\n"),
        (&["--allow", "K1"], "\nmode: allow-list (1 key)\n"),
        (&["--group", "K1,K2;K2,K3"], "\nmode: groups (2 groups, 3 distinct keys)\n"),
        (&["--allow", "K1,K4", "--group", "K1,K2"], "\nmode: allow-list (2 keys) + groups (1 group, 2 distinct keys)\n"),
        (&["--broadcast-rate", "0"], "\nbroadcast rate: unlimited\n"),
        (&["--cookie", "never"], "\ncookie replies: never\n"),
        (&["--stats-interval", "0"], "\nstats: off"),
        (&["--backend", "uring"], "\nbackend: uring\n"),
        (&["--gso", "off", "--gro", "off"], "\noffload: gso off, gro off\n"),
        (&["--steering", "off"], "\nsteering: off\n"),
        (&["--state-file", "/tmp/wgrelay-state"], "\nstate file: /tmp/wgrelay-state\n"),
        (&["--metrics", "127.0.0.1:9"], "\nmetrics: http://127.0.0.1:9/metrics\n"),
        (&["--log-format", "json"], "\nlog format: json\n"),
        (&["--control-socket", "off"], "\ncontrol socket: off\n"),
        (&["--server", "vpn.example.net:51820,192.0.2.1:1", "--server-key", "K1,K2"], "\nservers: AQEBAQEB... -> vpn.example.net:51820, AgICAgIC... -> 192.0.2.1:1\n"),
        (&["--listen", "127.0.0.1:51820", "--peer", "10001=K1,[::1]:10002=K2@192.0.2.7:51820,10003=K3@uapi:wg0"],
            "\npeers: 127.0.0.1:10001 -> AQEBAQEB... (learned), [::1]:10002 -> AgICAgIC... (endpoint 192.0.2.7:51820), 127.0.0.1:10003 -> AwMDAwMD... (uapi wg0)\n"),
        (&["--awg", "jc=4,jmin=40,jmax=70,s1=20,s2=30,h1=100000-100099,h2=200000,h3=300000,h4=400000"],
            "\nawg: jc=4 jmin=40 jmax=70 s1=20 s2=30 s3=0 s4=0 h1=100000-100099 h2=200000 h3=300000 h4=400000\n"),
    ];
    for (argv, line) in cases {
        let s = parse(argv).summary();
        assert!(s.contains(line), "{argv:?}: {s}");
    }
    for (mode, text) in [
        (CookieMode::Always, "always"),
        (CookieMode::UnderLoad, "under-load"),
        (CookieMode::Never, "never"),
    ] {
        assert_eq!(mode.to_string(), text);
    }
    for (b, text) in [
        (BackendChoice::Auto, "auto"),
        (BackendChoice::Uring, "uring"),
        (BackendChoice::Mmsg, "mmsg"),
    ] {
        assert_eq!((b.to_string().as_str(), b.as_str()), (text, text));
    }
}

// ---- wgproxy compatibility ----

/// `WGPROXY_*` variables and their values.
type Vars<'a> = &'a [(&'a str, &'a str)];

/// Parses argv with `vars` as the `WGPROXY_*` environment.
fn with_wgproxy(argv: &[&str], vars: &[(&str, &str)]) -> Result<Config, String> {
    let _env = env_read();
    let full = std::iter::once("wgrelay".to_string()).chain(argv.iter().map(|a| keys(a)));
    let (_, args) = Cli::try_parse_from(full).unwrap().into_parts();
    let vars: Vec<(String, String)> = vars.iter().map(|(n, v)| (n.to_string(), keys(v))).collect();
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
fn wgproxy_variables() {
    let file = TempFile::new("listen = [\"127.0.0.1:7\"]\nlog_level = \"trace\"\n[[server]]\naddress = \"c.example:3\"\npublic_key = \"K2\"\n");
    let file = file.path();
    let base = [
        ("WGPROXY_SERVER", "vpn.example.net:51820"),
        ("WGPROXY_PUBKEY", "K1"),
    ];
    let all = [
        base[0],
        base[1],
        ("WGPROXY_LISTEN", "127.0.0.1:51821"),
        ("WGPROXY_TIMEOUT", "30"),
        ("WGPROXY_LOGLEVEL", "0"),
    ];
    fn one_server(c: &mut Config) {
        c.servers = vec![server("vpn.example.net:51820", 1)];
        c.log_level = log::LevelFilter::Warn; // wgproxy's default level, 1
    }
    #[rustfmt::skip]
    let cases: &[(&[&str], Vars, Edit)] = &[
        (&[], &[], |_| {}),
        (&[], &base, one_server),
        (&["check-config"], &base, one_server),
        (&[], &[base[0], base[1], ("WGPROXY_LOGLEVEL", "0")], |c| { one_server(c); c.log_level = log::LevelFilter::Error }),
        (&[], &[base[0], base[1], ("WGPROXY_LOGLEVEL", "2")], |c| { one_server(c); c.log_level = log::LevelFilter::Info }),
        (&[], &[base[0], base[1], ("WGPROXY_LOGLEVEL", "3")], |c| { one_server(c); c.log_level = log::LevelFilter::Debug }),
        (&[], &all, |c| { one_server(c); c.listen = vec![sa("127.0.0.1:51821")]; c.wgproxy_timeout = Some(Duration::from_secs(30)); c.log_level = log::LevelFilter::Error }),
        // they lose to every other source ...
        (&["--listen", "127.0.0.1:9", "--server", "b.example:2", "--server-key", "K2", "--log-level", "info"], &all,
            |c| { c.listen = vec![sa("127.0.0.1:9")]; c.servers = vec![server("b.example:2", 2)]; c.wgproxy_timeout = Some(Duration::from_secs(30)) }),
        (&["--config", file], &all, |c| { c.listen = vec![sa("127.0.0.1:7")]; c.servers = vec![server("c.example:3", 2)]; c.log_level = log::LevelFilter::Trace; c.wgproxy_timeout = Some(Duration::from_secs(30)) }),
        // ... but fill what they leave unset; --debug raises their level
        (&["--threads", "2", "--debug"], &all, |c| { one_server(c); c.threads = 2; c.listen = vec![sa("127.0.0.1:51821")]; c.wgproxy_timeout = Some(Duration::from_secs(30)); c.log_level = log::LevelFilter::Debug }),
    ];
    for (argv, vars, edit) in cases {
        assert_eq!(
            with_wgproxy(argv, vars).unwrap(),
            edited(*edit),
            "{argv:?} {vars:?}"
        );
    }
    let c = with_wgproxy(&[], &all).unwrap();
    assert!(c.summary().ends_with("\nwgproxy timeout: 30s (WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)"));
}

#[test]
fn wgproxy_errors() {
    let both =
        "wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)";
    let (no_key, no_server) = (
        format!("WGPROXY_SERVER is set but WGPROXY_PUBKEY is not: {both}"),
        format!("WGPROXY_PUBKEY is set but WGPROXY_SERVER is not: {both}"),
    );
    let (s, p) = (
        ("WGPROXY_SERVER", "vpn.example.net:51820"),
        ("WGPROXY_PUBKEY", "K1"),
    );
    let timeout =
        |v: &str| format!("WGPROXY_TIMEOUT {v:?}: expected a positive whole number of seconds");
    let level = |v: &str| {
        format!("WGPROXY_LOGLEVEL {v:?}: expected 0 (errors), 1 (and warnings), 2 (and info) or 3 (and debug)")
    };
    let (t0, t1, t2, t3, t4, t5) = (
        timeout("0"),
        timeout("-1"),
        timeout("1.5"),
        timeout(""),
        timeout("+5"),
        timeout("ten"),
    );
    let (l0, l1, l2, l3) = (level("4"), level("-1"), level(""), level("warn"));
    #[rustfmt::skip]
    let cases: &[(&[&str], Vars, &str)] = &[
        (&[], &[s], &no_key),
        (&[], &[p], &no_server),
        (&[], &[("WGPROXY_LISTEN", "[::]:51820")], "WGPROXY_LISTEN is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"),
        (&[], &[("WGPROXY_TIMEOUT", "60")], "WGPROXY_TIMEOUT is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"),
        (&[], &[("WGPROXY_LOGLEVEL", "1")], "WGPROXY_LOGLEVEL is set but WGPROXY_SERVER and WGPROXY_PUBKEY are not: wgproxy compatibility needs both"),
        (&[], &[("WGPROXY_SERVER", "vpn.example.net"), p], "WGPROXY_SERVER: invalid upstream address \"vpn.example.net\": no port (expected HOST:PORT, e.g. 192.0.2.1:51820, [2001:db8::1]:51820 or relay.example.net:51820)"),
        // a bad value is named before whether the variables belong together
        (&[], &[("WGPROXY_PUBKEY", "abc")], "WGPROXY_PUBKEY: invalid public key \"abc\": expected 44 characters of base64 encoding 32 bytes (got 3 characters)"),
        (&[], &[s, p, ("WGPROXY_LISTEN", "[::]:0")], "WGPROXY_LISTEN \"[::]:0\": port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)"),
        (&[], &[s, p, ("WGPROXY_LISTEN", "localhost:51820")], "WGPROXY_LISTEN \"localhost:51820\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"),
        (&[], &[s, p, ("WGPROXY_TIMEOUT", "0")], &t0), (&[], &[s, p, ("WGPROXY_TIMEOUT", "-1")], &t1),
        (&[], &[s, p, ("WGPROXY_TIMEOUT", "1.5")], &t2), (&[], &[s, p, ("WGPROXY_TIMEOUT", "")], &t3),
        (&[], &[s, p, ("WGPROXY_TIMEOUT", "+5")], &t4), (&[], &[s, p, ("WGPROXY_TIMEOUT", "ten")], &t5),
        (&[], &[s, p, ("WGPROXY_LOGLEVEL", "4")], &l0), (&[], &[s, p, ("WGPROXY_LOGLEVEL", "-1")], &l1),
        (&[], &[s, p, ("WGPROXY_LOGLEVEL", "")], &l2), (&[], &[s, p, ("WGPROXY_LOGLEVEL", "warn")], &l3),
        // an overridden value is still validated
        (&["--server", "b.example:2", "--server-key", "K2"], &[s, p, ("WGPROXY_TIMEOUT", "0")], &t0),
    ];
    for (argv, vars, want) in cases {
        assert_eq!(
            with_wgproxy(argv, vars).unwrap_err(),
            keys(want),
            "{vars:?}"
        );
    }
    let e = {
        use std::os::unix::ffi::OsStringExt;
        let _env = env_read();
        let (_, args) = Cli::try_parse_from(["wgrelay"]).unwrap().into_parts();
        Config::from_args_and_env(&args, |name| {
            (name == "WGPROXY_SERVER").then(|| std::ffi::OsString::from_vec(vec![b'a', 0xff]))
        })
    };
    assert_eq!(
        e.unwrap_err().to_string(),
        "WGPROXY_SERVER \"a\\xFF\": not valid UTF-8"
    );
}

// ---- robustness ----

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
        key in "(listen|allow|groups|cookie|threads|port|bind|lissten|server|peer|awg|metrics|control_socket|log_format)",
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
        flag in "--(listen|allow|group|bind|server|server-key|peer|awg|metrics|control-socket)",
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
        std::env::set_var(name, keys(value));
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

    // Every setting; lists comma-separated, groups separated by ';'.
    #[rustfmt::skip]
    let all = [
        ("WGRELAY_LISTEN", "127.0.0.1:1,[::1]:2"), ("WGRELAY_ALLOW", "K1,K2"), ("WGRELAY_GROUP", "K3,K4;K5,K6"),
        ("WGRELAY_COOKIE", "always"), ("WGRELAY_BROADCAST_RATE", "0"), ("WGRELAY_THREADS", "7"),
        ("WGRELAY_BACKEND", "mmsg"), ("WGRELAY_GSO", "off"), ("WGRELAY_GRO", "off"), ("WGRELAY_STEERING", "off"),
        ("WGRELAY_LOG_LEVEL", "error"), ("WGRELAY_STATS_INTERVAL", "11"), ("WGRELAY_STATE_FILE", "/tmp/s"),
        ("WGRELAY_LOG_FORMAT", "json"), ("WGRELAY_METRICS", "127.0.0.1:9"), ("WGRELAY_CONTROL_SOCKET", "/tmp/c.sock"),
    ];
    for (var, value) in all {
        env.set(var, value);
    }
    let from_env = Config {
        listen: vec![sa("127.0.0.1:1"), sa("[::1]:2")],
        allow: vec![key(1), key(2)],
        groups: vec![vec![key(3), key(4)], vec![key(5), key(6)]],
        cookie: CookieMode::Always,
        broadcast_rate: None,
        threads: 7,
        backend: BackendChoice::Mmsg,
        gso: false,
        gro: false,
        steering: false,
        log_level: log::LevelFilter::Error,
        stats_interval: Some(Duration::from_secs(11)),
        state_file: Some("/tmp/s".into()),
        log_format: LogFormat::Json,
        metrics: Some(sa("127.0.0.1:9")),
        control_socket: Some("/tmp/c.sock".into()),
        ..Config::default()
    };
    assert_eq!(parse(&[]), from_env);
    // The same through the subcommands (env feeds the subcommand's flags and does not count
    // as top-level flags conflicting with them).
    for sub in ["run", "check-config"] {
        let (mode, c) = try_parse_with_env_held(&[sub]).unwrap();
        assert_eq!(mode == Mode::CheckConfig, sub == "check-config");
        assert_eq!(c.unwrap(), from_env);
    }
    // Flags win over env, list flags replace env lists.
    let c = parse(&[
        "--listen",
        "127.0.0.1:9",
        "--allow",
        "K9",
        "--group",
        "K7,K8",
        "--cookie",
        "never",
        "--threads",
        "2",
        "--gso",
        "on",
        "--log-format",
        "text",
        "--control-socket",
        "off",
    ]);
    let want = Config {
        listen: vec![sa("127.0.0.1:9")],
        allow: vec![key(9)],
        groups: vec![vec![key(7), key(8)]],
        cookie: CookieMode::Never,
        threads: 2,
        gso: true,
        log_format: LogFormat::Text,
        control_socket: None,
        ..from_env.clone()
    };
    assert_eq!(c, want);

    // Env wins over the file; the file still fills what env leaves unset.
    env.clear();
    let f = TempFile::new(FULL_FILE);
    env.set("WGRELAY_CONFIG", f.path());
    env.set("WGRELAY_THREADS", "7");
    env.set("WGRELAY_STATS_INTERVAL", "0");
    let mut want = edited(full_file);
    (want.threads, want.stats_interval) = (7, None);
    assert_eq!(parse(&[]), want);
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
    env.set("WGRELAY_SERVER_KEY", "K1,K2");
    env.set("WGRELAY_PEER", "10001=K3,10002=K4@192.0.2.9:5");
    env.set("WGRELAY_AWG", "jc=4,s1=20,h1=100000-100099");
    let c = parse(&[]);
    assert_eq!(
        c.servers,
        vec![server("a.example:1", 1), server("192.0.2.1:2", 2)]
    );
    let mut peers = vec![port_peer("[::]:10001", 3), port_peer("[::]:10002", 4)];
    peers[1].endpoint = Some(sa("192.0.2.9:5"));
    assert_eq!(c.peers, peers);
    assert_eq!(c.awg, awg("jc=4,s1=20,h1=100000-100099"));
    // A flag replaces its own variable only: --server pairs with WGRELAY_SERVER_KEY.
    assert_eq!(
        parse_err(&["--server", "c.example:3"]),
        "--server and --server-key pair up in order, one key per server: got 1 server and 2 server keys"
    );
    let c = parse(&["--awg", "jc=1", "--peer", "7=K5"]);
    assert_eq!(
        (c.awg, c.peers),
        (awg("jc=1"), vec![port_peer("[::]:7", 5)])
    );
    env.clear();

    // wgproxy's variables, from the process environment.
    env.set("WGPROXY_SERVER", "vpn.example.net:51820");
    env.set("WGPROXY_PUBKEY", "K1");
    env.set("WGPROXY_LISTEN", "127.0.0.1:51821");
    let c = parse(&[]);
    assert_eq!(
        (c.servers.len(), c.listen),
        (1, vec![sa("127.0.0.1:51821")])
    );
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

    // Bad values name the value; load() names the variable too, as the binary prints it.
    // (An empty variable is an error, never a silently open relay.)
    #[rustfmt::skip]
    let bad = [
        ("WGRELAY_ALLOW", "notakey", "WGRELAY_ALLOW: invalid public key \"notakey\"*"),
        ("WGRELAY_ALLOW", "", "WGRELAY_ALLOW: invalid public key \"\"*"),
        ("WGRELAY_LISTEN", "nowhere", "WGRELAY_LISTEN=\"nowhere\": invalid socket address*"),
        ("WGRELAY_LISTEN", "[::]:0", "WGRELAY_LISTEN=\"[::]:0\": port 0*"),
        ("WGRELAY_THREADS", "0", "WGRELAY_THREADS=0: must be at least 1"),
        ("WGRELAY_GROUP", "K1", "WGRELAY_GROUP=\"K1\": a group needs at least 2 distinct public keys (got 1)"),
        ("WGRELAY_AWG", "s1=x", "WGRELAY_AWG: awg: s1 must be a non-negative decimal integer (got \"x\")"),
        ("WGRELAY_CONFIG", "/nonexistent/wgrelay-test.toml", "config file /nonexistent/wgrelay-test.toml: cannot read:*"),
        ("WGRELAY_METRICS", "nowhere", "WGRELAY_METRICS=\"nowhere\": invalid socket address*"),
        ("WGRELAY_THREADS", "lots", "WGRELAY_THREADS=lots: invalid value for --threads <N>: invalid digit found in string"),
        // a value outside a fixed set names the variable, the value and every accepted value
        ("WGRELAY_BACKEND", "foo", "WGRELAY_BACKEND=foo: invalid value for --backend <BACKEND>: expected one of auto, uring, mmsg"),
        ("WGRELAY_LOG_FORMAT", "xml", "WGRELAY_LOG_FORMAT=xml: invalid value for --log-format <FORMAT>: expected one of text, json"),
        ("WGRELAY_COOKIE", "sometimes", "WGRELAY_COOKIE=sometimes: invalid value for --cookie <MODE>: expected one of always, under-load, never"),
        ("WGRELAY_GSO", "maybe", "WGRELAY_GSO=maybe: invalid value for --gso <on|off>: expected one of on, off"),
    ];
    for (var, value, want) in bad {
        env.set(var, value);
        let e = load(&["wgrelay", "check-config"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{var}");
        assert!(
            glob(&e.to_string(), &keys(&format!("wgrelay: {want}"))),
            "{var}: {e}"
        );
        env.clear();
    }
    env.set("WGRELAY_THREADS", "0");
    assert_eq!(parse_err(&[]), "--threads 0: must be at least 1");
    assert_eq!(
        load(&["wgrelay", "--threads", "0"])
            .unwrap_err()
            .to_string(),
        "wgrelay: --threads 0: must be at least 1"
    );
    // load() reads the environment as it is at the call
    env.set("WGRELAY_THREADS", "5");
    assert_eq!(load(&["wgrelay"]).unwrap().1.threads, 5);
    env.clear();

    // Back to defaults once cleared.
    assert_eq!(parse(&[]), Config::default());
}

// ---- load and diff (what reload needs) ----

#[test]
fn load_builds_what_start_up_builds_and_fails_the_same_way() {
    let _env = env_read();
    let f = TempFile::new("threads = 3\ncookie = \"always\"\n");
    let (mode, c) = load(&["wgrelay", "check-config", "--config", f.path()]).unwrap();
    assert_eq!(
        (mode, c.threads, c.cookie),
        (Mode::CheckConfig, 3, CookieMode::Always)
    );
    // the file is read again at every call
    std::fs::write(&f.0, "threads = 4\n").unwrap();
    let (mode, c) = load(&["wgrelay", "--config", f.path()]).unwrap();
    assert_eq!(
        (mode, c.threads, c.cookie),
        (Mode::Run, 4, CookieMode::UnderLoad)
    );
    #[rustfmt::skip]
    let cases = [
        (vec!["wgrelay", "--threads", "0"], "wgrelay: --threads 0: must be at least 1", 2),
        (vec!["wgrelay", "--peer", "10001"], "wgrelay: --peer \"10001\": expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE", 2),
        (vec!["wgrelay", "--threads", "x"], "error: invalid value 'x' for '--threads <N>'", 2),
        (vec!["wgrelay", "--version"], "wgrelay ", 0),
    ];
    for (argv, shown, code) in cases {
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
    // every setting, one at a time: (the change, setting, detail, live)
    #[rustfmt::skip]
    let cases: &[(Edit, &str, &str, bool)] = &[
        (|c| c.listen = vec![sa("127.0.0.1:5")], "listen", "+127.0.0.1:5 -[::]:51820", true),
        (|c| c.groups = vec![vec![key(1), key(2)]], "groups", "+1 -0 group", true),
        (|c| c.servers = vec![server("a.example:1", 1)], "servers", "+1 -0 server", true),
        (|c| c.peers = vec![port_peer("[::]:7", 1)], "peers", "+1 -0 peer", true),
        (|c| c.awg = awg("jc=4"), "awg", "plain → jc=4 jmin=0 jmax=0 s1=0 s2=0 s3=0 s4=0 h1=1 h2=2 h3=3 h4=4", true),
        (|c| c.broadcast_rate = None, "broadcast_rate", "1000 → unlimited", true),
        (|c| c.log_level = log::LevelFilter::Debug, "log_level", "info → debug", true),
        (|c| c.log_format = LogFormat::Json, "log_format", "text → json", false),
        (|c| c.stats_interval = None, "stats_interval", "60s → off", true),
        (|c| c.backend = BackendChoice::Mmsg, "backend", "auto → mmsg", false),
        (|c| c.gso = false, "gso", "on → off", false),
        (|c| c.gro = false, "gro", "on → off", false),
        (|c| c.steering = false, "steering", "on → off", false),
        (|c| c.state_file = Some("/tmp/s".into()), "state_file", "none → /tmp/s", false),
        (|c| c.control_socket = None, "control_socket", "/run/wgrelay/control.sock → off", false),
        (|c| c.metrics = Some(sa("127.0.0.1:9")), "metrics", "off → 127.0.0.1:9", false),
    ];
    let d0 = Config::default();
    for (edit, setting, detail, live) in cases {
        let new = edited(*edit);
        let change = Change {
            setting,
            detail: detail.to_string(),
            live: *live,
        };
        assert_eq!(d0.diff(&new).changes, vec![change], "{setting}");
        // and back
        assert_eq!(new.diff(&d0).changes.len(), 1, "{setting}");
    }
    // a port peer's new key on the same port: the sockets stay, so it applies live
    let (one, other) = (
        edited(|c| c.peers = vec![port_peer("[::]:7", 1)]),
        edited(|c| c.peers = vec![port_peer("[::]:7", 2)]),
    );
    assert!(one.same_sockets(&other));
    let change = Change {
        setting: "peers",
        detail: "+1 -1 peers".to_string(),
        live: true,
    };
    assert_eq!(one.diff(&other).changes, vec![change]);
}
