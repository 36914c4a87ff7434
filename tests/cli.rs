//! The `wgrelay` binary: configuration errors, check-config, wpex flags, and the acceptance
//! case: boringtun peers through `wgrelay run --listen 127.0.0.1:PORT --allow A --allow B` at
//! 20k packets/s each way, 64 to 1420 bytes, with no loss.

mod common;

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn wgrelay() -> Command {
    let mut cmd = wgrelay_command();
    // These tests run several relays at once: one control socket path would be shared
    // (tests/ctl.rs tests the socket).
    cmd.env("WGRELAY_CONTROL_SOCKET", "off");
    cmd
}

fn output(args: &[&str]) -> Output {
    wgrelay().args(args).output().expect("run wgrelay")
}

fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A relay process, killed on drop.
struct Running(Child);

impl Running {
    fn start(args: &[String]) -> Self {
        let child = wgrelay()
            .args(args)
            .env("WGRELAY_LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wgrelay");
        Running(child)
    }

    /// SIGTERM, then the exit status and everything it logged.
    fn terminate(mut self) -> (bool, String) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut log = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = e.read_to_string(&mut log);
        }
        (status.is_some_and(|s| s.success()), log)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_bound(port: u16) {
    // The relay is up once the port is taken.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("relay did not bind 127.0.0.1:{port}");
}

#[test]
fn bad_configuration_gives_a_clear_error_and_nonzero_exit() {
    let key = Identity::from_seed(1).public.to_string();
    let path = std::env::temp_dir().join(format!("wgrelay-cli-{}.toml", std::process::id()));
    std::fs::write(&path, "lissten = [\"127.0.0.1:5000\"]\n").expect("write");
    let bad_file = path.to_string_lossy().into_owned();
    let missing = "/nonexistent/wgrelay.toml".to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--allow", "not-a-key"], "not-a-key"),
        (vec!["run", "--allow", &key[..40]], "invalid public key"),
        (vec!["run", "--listen", "1.2.3"], "1.2.3"),
        (vec!["run", "--listen", "127.0.0.1:0"], "port 0"),
        (vec!["run", "--group", &key], "at least 2"),
        (vec!["run", "--threads", "0"], "threads"),
        (vec!["run", "--cookie", "sometimes"], "sometimes"),
        (vec!["run", "--config", &bad_file], "lissten"),
        (
            vec!["run", "--config", &missing],
            "/nonexistent/wgrelay.toml",
        ),
        (vec!["check-config", "--allow", "xyz"], "xyz"),
    ];
    for (args, needle) in cases {
        let o = output(&args);
        assert!(!o.status.success(), "{args:?} must fail");
        let err = stderr(&o);
        assert!(
            err.contains(needle),
            "{args:?}: stderr {err:?} lacks {needle:?}"
        );
        assert!(
            err.lines().count() <= 5,
            "{args:?}: a short, clear error, got {err:?}"
        );
    }
    let _ = std::fs::remove_file(&path);
}

#[test]
fn an_address_in_use_fails_startup_and_leaves_nothing_bound() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let free = free_port();
    let o = output(&[
        "run",
        "--listen",
        &format!("127.0.0.1:{free}"),
        "--listen",
        &format!("127.0.0.1:{taken_port}"),
    ]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains(&format!("127.0.0.1:{taken_port}")), "{err}");
    // The first listener was not left half-started.
    assert!(UdpSocket::bind(("127.0.0.1", free)).is_ok());
}

#[test]
fn check_config_prints_the_effective_configuration() {
    let (a, b) = (Identity::from_seed(1), Identity::from_seed(2));
    let path = std::env::temp_dir().join(format!("wgrelay-ok-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "listen = [\"127.0.0.1:51820\"]\ngroups = [[\"{}\", \"{}\"]]\ncookie = \"always\"\n",
            a.public, b.public
        ),
    )
    .expect("write");
    let o = output(&["check-config", "--config", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("127.0.0.1:51820"), "{out}");
    assert!(out.contains("always"), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn check_config_with_wgproxy_variables_prints_the_server() {
    let server = Identity::from_seed(3);
    let o = wgrelay()
        .arg("check-config")
        .env("WGPROXY_SERVER", "vpn.example.net:51820")
        .env("WGPROXY_PUBKEY", server.public.to_string())
        .env("WGPROXY_LISTEN", "127.0.0.1:51999")
        .env("WGPROXY_TIMEOUT", "30")
        .output()
        .expect("run wgrelay");
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let abbrev = &server.public.to_string()[..8];
    assert!(
        out.contains(&format!(
            "\nservers: {abbrev}... -> vpn.example.net:51820\n"
        )),
        "{out}"
    );
    assert!(out.starts_with("listen: 127.0.0.1:51999\n"), "{out}");
    assert!(out.contains("\nlog level: warn\n"), "{out}");
    assert!(out.contains("wgproxy timeout: 30s"), "{out}");
    assert!(out.contains("superseded"), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
}

#[test]
fn wgproxy_variables_alone_run_the_relay() {
    // `wgrelay` with no arguments, configured as wgproxy is: by the environment alone.
    let server = Identity::from_seed(4);
    let port = free_port();
    let child = wgrelay()
        .env("WGPROXY_SERVER", "127.0.0.1:9")
        .env("WGPROXY_PUBKEY", server.public.to_string())
        .env("WGPROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("WGPROXY_TIMEOUT", "45")
        .env("WGPROXY_LOGLEVEL", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wgrelay");
    let relay = Running(child);
    wait_bound(port);
    let (clean, log) = relay.terminate();
    assert!(clean, "{log}");
    assert!(log.contains("servers: "), "{log}");
    assert!(log.contains("-> 127.0.0.1:9"), "{log}");
    assert!(log.contains("WGPROXY_TIMEOUT=45"), "{log}");
}

#[test]
fn bad_new_settings_give_a_one_line_error() {
    let key = Identity::from_seed(5).public.to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["check-config", "--awg", "s1=x"],
            "wgrelay: --awg: awg: s1 must be a non-negative decimal integer (got \"x\")".into(),
        ),
        (
            vec!["--awg", "header_protection_key=0123456789abcdef"],
            "wgrelay: --awg: awg: header protection (AWG 3, header_protection_key) cannot be relayed: indices are encrypted without its key".into(),
        ),
        (
            // The relay's own cookie reply (s3 + 64 = 184 bytes) would be longer than the
            // initiation it answers (s1 + 148 = 158): refused unless cookie replies are off.
            vec!["check-config", "--awg", "s1=10", "--awg", "s3=120"],
            "wgrelay: --awg: awg: s3 + 64 must be ≤ s1 + 148 unless the cookie mode is never (got s3 = 120, s1 = 10: a 184-byte cookie reply to a 158-byte initiation); the relay keeps no state for a source it challenges, so each challenge would send it more bytes than it sent; use s3 < s1 + 84".into(),
        ),
        (
            vec!["run", "--server", "vpn.example.net:51820"],
            "wgrelay: --server and --server-key pair up in order, one key per server: got 1 server and 0 server keys".into(),
        ),
        (
            vec!["run", "--peer", "10001"],
            "wgrelay: --peer \"10001\": expected [ADDR:]PORT=PUBKEY, optionally followed by @IP:PORT (a fixed endpoint) or @uapi:DEVICE".into(),
        ),
    ];
    for (args, expected) in cases {
        let o = output(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?} must fail");
        assert_eq!(stderr(&o), format!("{expected}\n"), "{args:?}");
    }
    // The same parameters with cookie replies off are fine.
    let o = output(&[
        "check-config",
        "--awg",
        "s1=10",
        "--awg",
        "s3=120",
        "--cookie",
        "never",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration OK"));
    // wgproxy's variables: both or neither.
    let o = wgrelay()
        .env("WGPROXY_PUBKEY", &key)
        .output()
        .expect("run wgrelay");
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "wgrelay: WGPROXY_PUBKEY is set but WGPROXY_SERVER is not: wgproxy compatibility needs both (the server's HOST:PORT and its base64 public key)\n"
    );
}

/// Handshake through a relay process, then paced traffic both ways; returns (sent, received)
/// per direction.
fn traffic(
    addr: std::net::SocketAddr,
    a: &Identity,
    b: &Identity,
    pps: u64,
    secs: u64,
) -> [(u64, u64); 2] {
    let (mut pa, mut pb) = pair(a, b, localhost(0, 9, 1), localhost(0, 9, 2), addr, 90);
    assert!(
        handshake(&mut pa, &mut pb, Duration::from_secs(10)),
        "handshake through the relay process"
    );
    pump_for(&mut [&mut pa, &mut pb], Duration::from_millis(200));
    let (base_a, base_b) = (pa.delivered, pb.delivered);
    // Plaintext sizes such that datagrams span 64..=1420 bytes (32 bytes of overhead,
    // padding to 16).
    let sizes: Vec<usize> = (0..)
        .map(|i| 32 + (i * 37) % (1388 - 32 + 1))
        .take(64)
        .collect();
    let total = pps * secs;
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        // Open loop: what should have been sent by now, in 1 ms steps.
        let due = (start.elapsed().as_micros() as u64 * pps / 1_000_000).min(total);
        while sent < due {
            let len = sizes[(sent % 64) as usize];
            assert!(pa.send_data(len, sent));
            assert!(pb.send_data(len, sent));
            sent += 1;
        }
        pa.poll();
        pb.poll();
        std::thread::sleep(Duration::from_micros(200));
    }
    pump_until(&mut [&mut pa, &mut pb], Duration::from_secs(5), |p| {
        p[0].delivered - base_a >= total && p[1].delivered - base_b >= total
    });
    [
        (total, pb.delivered - base_b),
        (total, pa.delivered - base_a),
    ]
}

#[test]
fn acceptance_allow_two_keys_20k_pps_each_way_no_loss() {
    let (a, b) = (Identity::from_seed(81), Identity::from_seed(82));
    let port = free_port();
    let relay = Running::start(&[
        "run".into(),
        "--backend".into(),
        backend().as_str().into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--allow".into(),
        a.public.to_string(),
        "--allow".into(),
        b.public.to_string(),
    ]);
    wait_bound(port);
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let started = Instant::now();
    let [(sent_ab, got_ab), (sent_ba, got_ba)] = traffic(addr, &a, &b, 20_000, 2);
    println!(
        "20k pps each way for 2 s: A->B {got_ab}/{sent_ab}, B->A {got_ba}/{sent_ba}, {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let (clean, log) = relay.terminate();
    assert!(clean, "SIGTERM stops the relay cleanly: {log}");
    assert!(log.contains("final stats"), "{log}");
    assert_eq!(got_ab, sent_ab, "no loss A->B");
    assert_eq!(got_ba, sent_ba, "no loss B->A");
}

#[test]
fn wpex_flags_bind_port_allow_and_broadcast_rate() {
    let (a, b) = (Identity::from_seed(83), Identity::from_seed(84));
    let port = free_port();
    let relay = Running::start(&[
        "--bind".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--allow".into(),
        a.public.to_string(),
        "--allow".into(),
        b.public.to_string(),
        "--broadcast-rate".into(),
        "5".into(),
    ]);
    wait_bound(port);
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let [(sent, got), _] = traffic(addr, &a, &b, 1000, 1);
    assert_eq!(got, sent);
    let (clean, log) = relay.terminate();
    assert!(clean, "{log}");
}

#[test]
fn the_readme_toml_examples_are_valid() {
    let readme = include_str!("../README.md");
    let mut blocks = Vec::new();
    let mut rest = readme;
    while let Some(at) = rest.find("```toml\n") {
        let body = &rest[at + "```toml\n".len()..];
        let len = body.find("```").expect("end of block");
        blocks.push(&body[..len]);
        rest = &body[len..];
    }
    assert!(
        blocks.len() >= 3,
        "the exchange, proxy and port-per-peer examples"
    );
    for block in &blocks {
        let config = wgrelay::config::Config::from_toml_str(block)
            .unwrap_or_else(|e| panic!("README example parses: {e}\n{block}"));
        if block.contains("groups") {
            assert_eq!(config.groups.len(), 2);
            assert_eq!(config.cookie, wgrelay::config::CookieMode::Always);
        }
        if block.contains("[[server]]") {
            assert_eq!(config.servers.len(), 1);
        }
        if block.contains("[[peer]]") {
            assert_eq!(config.peers.len(), 1);
        }
    }
}

#[test]
fn the_packaged_config_and_unit_agree() {
    let toml = include_str!("../packaging/wgrelay.toml");
    let config = wgrelay::config::Config::from_toml_str(toml).expect("packaged config parses");
    assert_eq!(config.listen, vec!["[::]:51820".parse().expect("addr")]);
    // The unit checks the same file before starting, and keeps sessions in its state dir.
    let unit = include_str!("../packaging/wgrelay.service");
    assert!(unit.contains("check-config --config /etc/wgrelay/wgrelay.toml"));
    assert!(unit.contains("--state-file /var/lib/wgrelay/state"));
    assert!(unit.contains("StateDirectory=wgrelay"));
}

/// Inputs an operator fat-fingers, each a clear one-line error at check-config time (the
/// same validation `run` does), naming the environment variable when that is where the value
/// came from (issue 11).
#[test]
fn bad_inputs_fail_at_check_config_and_name_their_source() {
    let dir = std::env::temp_dir().join(format!("wgrelay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir_s = dir.display().to_string();
    let missing = format!("{dir_s}/no/such/dir/state");
    let huge = "9300000000000000000";
    // (flags, environment, expected stderr without the trailing newline)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, String);
    let cases: Vec<Case> = vec![
        (
            vec!["check-config", "--stats-interval", huge],
            vec![],
            format!("wgrelay: --stats-interval {huge}: at most 86400 seconds (one day); 0 turns the statistics line off"),
        ),
        (
            vec!["check-config"],
            vec![("WGRELAY_STATS_INTERVAL", huge)],
            format!("wgrelay: WGRELAY_STATS_INTERVAL={huge}: at most 86400 seconds (one day); 0 turns the statistics line off"),
        ),
        (
            vec!["run", "--state-file", &missing],
            vec![],
            format!(
                "wgrelay: --state-file {missing}: directory {dir_s}/no/such/dir does not exist (create it, e.g. mkdir -p {dir_s}/no/such/dir)"
            ),
        ),
        (
            vec!["check-config"],
            vec![("WGRELAY_STATE_FILE", &dir_s)],
            format!("wgrelay: WGRELAY_STATE_FILE={dir_s}: is a directory; name a file in it, e.g. {dir_s}/state"),
        ),
        (
            vec!["check-config", "--listen", "[::]:5999", "--listen", "0.0.0.0:5999"],
            vec![],
            "wgrelay: --listen: [::]:5999 is dual-stack and already receives IPv4 on port 5999, so 0.0.0.0:5999 cannot be bound beside it; list one of them".into(),
        ),
        (
            vec!["check-config", "--listen", "127.0.0.1:5999", "--listen", "0.0.0.0:5999"],
            vec![],
            "wgrelay: --listen: 0.0.0.0:5999 already receives what 127.0.0.1:5999 would (the same port, and it covers that address), so 127.0.0.1:5999 cannot be bound beside it; list one of them".into(),
        ),
        (
            vec!["check-config"],
            vec![("WGRELAY_THREADS", "abc")],
            "wgrelay: WGRELAY_THREADS=abc: invalid value for --threads <N>: invalid digit found in string".into(),
        ),
    ];
    for (args, env, expected) in cases {
        let mut cmd = wgrelay();
        cmd.args(&args);
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let o = cmd.output().expect("run wgrelay");
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?} {env:?} must fail: {}",
            stderr(&o)
        );
        assert_eq!(stderr(&o), format!("{expected}\n"), "{args:?} {env:?}");
    }
    // the same file in the config file: named as its key
    let toml = dir.join("bad.toml");
    std::fs::write(&toml, "stats_interval = 930000000000\n").expect("write");
    let o = output(&["check-config", "--config", &toml.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr(&o),
        "wgrelay: config: stats_interval = 930000000000: at most 86400 seconds (one day); 0 turns the statistics line off\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// check-config with stdout closed or full reports it (exit 1), never panics (exit 101).
#[test]
fn check_config_to_a_closed_or_full_stdout_is_an_error_not_a_panic() {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let o = wgrelay()
        .arg("check-config")
        .stdout(full)
        .output()
        .expect("run wgrelay");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "wgrelay: configuration OK, but it could not be printed: No space left on device (os error 28)\n"
    );
    // a pipe whose reader has gone before the relay starts (`wgrelay check-config | true`)
    let mut fds = [0i32; 2];
    // SAFETY: pipe() writes two new descriptors into the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created by pipe() and are owned here alone.
    let (reader, writer) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    drop(reader);
    let o = wgrelay()
        .arg("check-config")
        .stdout(Stdio::from(writer))
        .output()
        .expect("run wgrelay");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "wgrelay: configuration OK, but it could not be printed: Broken pipe (os error 32)\n"
    );
}
