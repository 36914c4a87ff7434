//! The `wgrelay` binary under a service manager: sd_notify readiness (READY=1 only once every
//! socket is bound, STOPPING=1 on SIGTERM) on a real Unix datagram socket, and log lines for
//! the journal (`JOURNAL_STREAM`), for plain stderr and as JSON.

mod common;

use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// The binary with none of the caller's settings: no `WGRELAY_*`/`WGPROXY_*`, no service
/// manager variables, and the suite's backend.
fn wgrelay() -> Command {
    let mut cmd = wgrelay_command();
    cmd.env_remove("NOTIFY_SOCKET").env_remove("JOURNAL_STREAM");
    // several relays at once: no shared default control socket
    cmd.env("WGRELAY_CONTROL_SOCKET", "off");
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

/// `run` flags for a relay on `ports` of 127.0.0.1, quiet apart from startup and shutdown.
fn run_args(ports: &[u16]) -> Vec<String> {
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    vec![
        "run".into(),
        "--listen".into(),
        listen.join(","),
        "--threads".into(),
        "2".into(),
        "--cookie".into(),
        "never".into(),
        "--stats-interval".into(),
        "0".into(),
        "--backend".into(),
        backend().as_str().into(),
    ]
}

fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn port_taken(port: u16) -> bool {
    matches!(UdpSocket::bind(("127.0.0.1", port)), Err(e) if e.kind() == ErrorKind::AddrInUse)
}

fn wait_bound(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if port_taken(port) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("relay did not bind 127.0.0.1:{port}");
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("wgrelay-sd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The service manager's end: a Unix datagram socket that NOTIFY_SOCKET names.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &TempDir) -> Self {
        let path = dir.path("notify");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket { sock, path }
    }

    /// The next notification, or `None` after `limit`.
    fn recv(&self, limit: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(limit)).expect("timeout");
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("notify socket: {e}"),
        }
    }
}

/// A relay process, killed on drop.
struct Running(Child);

impl Running {
    fn spawn(cmd: &mut Command) -> Self {
        Running(cmd.spawn().expect("spawn wgrelay"))
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.0.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "wgrelay did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> ExitStatus {
        self.sigterm();
        self.wait(Duration::from_secs(10))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `DEV:INODE` of a file, as systemd writes JOURNAL_STREAM.
fn dev_ino(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).expect("stat");
    (m.dev(), m.ino())
}

/// Runs a relay with stderr on a file and `envs`, waits until it is bound, stops it and
/// returns what it logged.
fn logged_run(dir: &TempDir, name: &str, extra: &[&str], envs: &[(&str, String)]) -> String {
    let log = dir.path(name);
    File::create(&log).expect("create log");
    logged_run_to(&log, extra, envs)
}

fn logged_run_to(log: &Path, extra: &[&str], envs: &[(&str, String)]) -> String {
    let port = free_port();
    let mut cmd = wgrelay();
    cmd.args(run_args(&[port]))
        .args(extra)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stderr(File::options().append(true).open(log).expect("open log"));
    let relay = Running::spawn(&mut cmd);
    wait_bound(port);
    let status = relay.terminate();
    let text = std::fs::read_to_string(log).expect("read log");
    assert!(status.success(), "{status}: {text}");
    text
}

/// A start that fails (its port is taken): what it logged, with stderr on `log`.
fn failed_start(log: &Path, extra: &[&str], envs: &[(&str, String)]) -> String {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let status = wgrelay()
        .args(run_args(&[port]))
        .args(extra)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stderr(
            File::options()
                .append(true)
                .create(true)
                .open(log)
                .expect("open log"),
        )
        .status()
        .expect("run wgrelay");
    assert_eq!(status.code(), Some(1), "a taken port fails the start");
    std::fs::read_to_string(log).expect("read log")
}

#[test]
fn ready_comes_once_every_socket_is_bound_and_stopping_on_sigterm() {
    let dir = TempDir::new("ready");
    let notify = NotifySocket::bind(&dir);
    let (ia, ib) = (Identity::from_seed(11), Identity::from_seed(12));
    let ports = [free_port(), free_port()];
    let mut cmd = wgrelay();
    cmd.args(run_args(&ports))
        .args(["--allow", &ia.public.to_string()])
        .args(["--allow", &ib.public.to_string()])
        .env("NOTIFY_SOCKET", &notify.path)
        .stderr(Stdio::null());
    let relay = Running::spawn(&mut cmd);

    // The first notification is READY, and at that moment every listen port is bound.
    let ready = notify
        .recv(Duration::from_secs(10))
        .expect("READY=1 within 10 s");
    let taken: Vec<bool> = ports.iter().map(|&p| port_taken(p)).collect();
    let lines: Vec<&str> = ready.lines().collect();
    let expected_status = format!(
        "STATUS=relaying on 127.0.0.1:{}, 127.0.0.1:{}",
        ports[0], ports[1]
    );
    assert_eq!(lines, ["READY=1", expected_status.as_str()], "{ready:?}");
    assert_eq!(
        taken,
        [true, true],
        "every socket is bound when READY=1 arrives"
    );

    // The address the status names relays a real handshake.
    let status = lines[1].trim_start_matches("STATUS=relaying on ");
    let relay_addr: SocketAddr = status
        .split(", ")
        .next()
        .and_then(|a| a.parse().ok())
        .expect("an address in STATUS");
    let (mut a, mut b) = pair(
        &ia,
        &ib,
        localhost(0, 0, 2),
        localhost(0, 0, 3),
        relay_addr,
        1,
    );
    assert!(
        handshake(&mut a, &mut b, HANDSHAKE_LIMIT),
        "handshake through the relay that reported ready"
    );
    assert_eq!(
        notify.recv(Duration::from_millis(200)),
        None,
        "nothing else before the stop"
    );

    relay.sigterm();
    let stopping = notify
        .recv(Duration::from_secs(10))
        .expect("STOPPING=1 after SIGTERM");
    assert_eq!(stopping, "STOPPING=1\n");
    let mut relay = relay;
    assert!(relay.wait(Duration::from_secs(10)).success());
}

#[test]
fn a_failed_start_never_reports_ready() {
    let dir = TempDir::new("failed");
    let notify = NotifySocket::bind(&dir);
    // The second listen address is taken: the first was bound, but not every socket.
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let ports = [free_port(), taken.local_addr().expect("addr").port()];
    let status = wgrelay()
        .args(run_args(&ports))
        .env("NOTIFY_SOCKET", &notify.path)
        .stderr(Stdio::null())
        .status()
        .expect("run wgrelay");
    assert_eq!(status.code(), Some(1));
    assert_eq!(notify.recv(Duration::from_millis(300)), None, "no READY=1");
}

#[test]
fn an_abstract_notify_socket_gets_ready_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("wgrelay-sd-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let port = free_port();
    let mut cmd = wgrelay();
    cmd.args(run_args(&[port]))
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stderr(Stdio::null());
    let relay = Running::spawn(&mut cmd);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 10 s");
    assert!(buf[..n].starts_with(b"READY=1\n"), "{:?}", &buf[..n]);
    assert!(relay.terminate().success());
}

#[test]
fn a_broken_notify_socket_is_logged_once_and_the_relay_runs_on() {
    let dir = TempDir::new("broken");
    let log = logged_run(
        &dir,
        "stderr",
        &[],
        &[("NOTIFY_SOCKET", dir.path("nobody").display().to_string())],
    );
    let failures = log
        .lines()
        .filter(|l| l.contains("cannot notify the service manager"))
        .count();
    assert_eq!(
        failures, 1,
        "READY and STOPPING both failed, one line: {log}"
    );
    assert!(log.contains("] relaying on 127.0.0.1:"), "{log}");
    assert!(log.contains("] final stats:"), "a clean stop: {log}");
}

#[test]
fn journal_stream_on_stderr_gets_syslog_priorities_and_no_timestamps() {
    let dir = TempDir::new("journal");
    let path = dir.path("journal");
    File::create(&path).expect("create");
    let (dev, ino) = dev_ino(&path);
    let envs = [
        ("JOURNAL_STREAM", format!("{dev}:{ino}")),
        // A warning to see: no one listens here.
        ("NOTIFY_SOCKET", dir.path("nobody").display().to_string()),
    ];
    logged_run_to(&path, &["--log-level", "debug"], &envs);
    let log = failed_start(&path, &[], &envs);

    for line in log.lines() {
        let prio = line
            .strip_prefix('<')
            .and_then(|r| r.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            matches!(prio, Some("3" | "4" | "6" | "7")),
            "every line starts with a syslog priority: {line:?}"
        );
        assert!(
            !line.contains("[20"),
            "journald stamps entries itself: {line:?}"
        );
    }
    let has = |prefix: &str| log.lines().any(|l| l.starts_with(prefix));
    assert!(has("<6>relaying on 127.0.0.1:"), "info is <6>: {log}");
    assert!(
        has("<6>log format: text"),
        "the summary says the format: {log}"
    );
    assert!(
        has("<4>cannot notify the service manager"),
        "warn is <4>: {log}"
    );
    assert!(has("<3>wgrelay: cannot start:"), "error is <3>: {log}");
    if let Some(debug) = log
        .lines()
        .find(|l| l.contains("uring: ") && l.contains("sockets"))
    {
        assert!(debug.starts_with("<7>"), "debug is <7>: {debug}");
    }
}

#[test]
fn another_journal_stream_keeps_plain_lines() {
    let dir = TempDir::new("plain");
    let path = dir.path("stderr");
    File::create(&path).expect("create");
    let (dev, ino) = dev_ino(&path);
    // Inherited from a parent whose stderr was the journal, but ours is redirected: plain.
    for stream in [format!("{dev}:{}", ino + 1), "garbage".to_string()] {
        std::fs::write(&path, "").expect("truncate");
        let log = logged_run_to(&path, &[], &[("JOURNAL_STREAM", stream.clone())]);
        assert!(!log.is_empty());
        for line in log.lines() {
            assert!(
                line.starts_with("[20") && !line.starts_with('<'),
                "JOURNAL_STREAM={stream}: plain `[timestamp LEVEL] message`: {line:?}"
            );
        }
        assert!(log.contains(" INFO ] relaying on 127.0.0.1:"), "{log}");
    }
}

#[test]
fn json_lines_parse_with_level_and_message() {
    let dir = TempDir::new("json");
    let nobody = ("NOTIFY_SOCKET", dir.path("nobody").display().to_string());
    let conf = dir.path("wgrelay.toml");
    std::fs::write(&conf, "log_format = \"json\"\n").expect("write config");
    let runs = [
        // the flag, the variable, the file key
        logged_run(
            &dir,
            "flag",
            &["--log-format", "json"],
            std::slice::from_ref(&nobody),
        ),
        logged_run(
            &dir,
            "env",
            &[],
            &[nobody.clone(), ("WGRELAY_LOG_FORMAT", "json".into())],
        ),
        logged_run(
            &dir,
            "file",
            &["--config", conf.to_str().expect("utf-8")],
            std::slice::from_ref(&nobody),
        ),
        failed_start(&dir.path("failed"), &["--log-format", "json"], &[]),
    ];
    for (i, log) in runs.iter().enumerate() {
        let mut seen = Vec::new();
        for line in log.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            let level = v["level"].as_str().expect("level").to_string();
            let message = v["message"].as_str().expect("message").to_string();
            let ts = v["timestamp"].as_str().expect("timestamp");
            assert!(ts.parse::<jiff::Timestamp>().is_ok(), "RFC 3339: {ts}");
            seen.push((level, message));
        }
        let has =
            |level: &str, start: &str| seen.iter().any(|(l, m)| l == level && m.starts_with(start));
        if i < 3 {
            assert!(has("info", "relaying on 127.0.0.1:"), "run {i}: {log}");
            assert!(has("info", "log format: json"), "run {i}: {log}");
            assert!(
                has("warn", "cannot notify the service manager"),
                "run {i}: {log}"
            );
        } else {
            assert!(has("error", "cannot start:"), "{log}");
        }
    }
}

#[test]
fn a_full_stderr_neither_panics_nor_stops_the_relay() {
    let dir = TempDir::new("full");
    let notify = NotifySocket::bind(&dir);
    let port = free_port();
    for format in ["text", "json"] {
        let mut cmd = wgrelay();
        cmd.args(run_args(&[port]))
            .args(["--log-level", "trace", "--log-format", format])
            .env("NOTIFY_SOCKET", &notify.path)
            .stderr(
                File::options()
                    .write(true)
                    .open("/dev/full")
                    .expect("/dev/full"),
            );
        let relay = Running::spawn(&mut cmd);
        let ready = notify.recv(Duration::from_secs(10)).expect("READY=1");
        assert!(ready.starts_with("READY=1\n"), "{ready:?}");
        let status = relay.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "--log-format {format}: a clean exit, no panic"
        );
        assert_eq!(
            notify.recv(Duration::from_secs(5)).as_deref(),
            Some("STOPPING=1\n")
        );
    }
}

#[test]
fn a_closed_stderr_neither_panics_nor_stops_the_relay() {
    use std::os::unix::process::CommandExt;
    let dir = TempDir::new("closed");
    let notify = NotifySocket::bind(&dir);
    for format in ["text", "json"] {
        let mut cmd = wgrelay();
        cmd.args(run_args(&[free_port()]))
            .args(["--log-level", "trace", "--log-format", format])
            .env("NOTIFY_SOCKET", &notify.path);
        // SAFETY: close(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::close(2);
                Ok(())
            });
        }
        let relay = Running::spawn(&mut cmd);
        let ready = notify.recv(Duration::from_secs(10)).expect("READY=1");
        assert!(ready.starts_with("READY=1\n"), "{ready:?}");
        let status = relay.terminate();
        assert_eq!(
            status.code(),
            Some(0),
            "--log-format {format}: a clean exit, no panic"
        );
        assert_eq!(
            notify.recv(Duration::from_secs(5)).as_deref(),
            Some("STOPPING=1\n")
        );
    }
}

#[test]
fn check_config_shows_the_log_format() {
    let out = wgrelay()
        .stdout(Stdio::piped())
        .args(["check-config", "--log-format", "json"])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\nlog format: json\n"), "{text}");
    let out = wgrelay()
        .stdout(Stdio::piped())
        .arg("check-config")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\nlog format: text\n"));
}
