//! The control socket and `wgrelay show` against running relays: in-process (a relay and its
//! control server, real boringtun handshakes through it, `show` over the real socket) and
//! the binary (`wgrelay run --control-socket`, then `wgrelay show`, `show --json`, `reload`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wgrelay::ctl::{self, Reply, Snapshot};

const LIMIT: Duration = Duration::from_secs(10);

/// A fresh directory for one test's sockets (removed on drop); its `sub` directory does not
/// exist yet, so the server has to create it.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wgrelay-ctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("sub").join("control.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends raw bytes as one request and reads one reply line.
fn raw_request(path: &Path, bytes: &[u8]) -> Reply {
    let stream = UnixStream::connect(path).expect("connect");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    (&stream).write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn show(path: &Path) -> Snapshot {
    let reply = ctl::client::request(path, ctl::Request::Show).expect("show");
    assert!(reply.ok, "{reply:?}");
    reply.snapshot.expect("snapshot")
}

/// Bytes of the transport messages (type 4) a peer sent.
fn transport_sent(p: &Peer) -> (u64, u64) {
    let t: Vec<&Vec<u8>> = p
        .sent
        .iter()
        .filter(|d| d.len() >= 32 && d[0] == 4)
        .collect();
    (t.len() as u64, t.iter().map(|d| d.len() as u64).sum())
}

#[test]
fn show_over_the_socket_reports_real_sessions_and_drops() {
    let dir = TempDir::new("inproc");
    let path = dir.socket();
    let (ia, ib) = (Identity::from_seed(701), Identity::from_seed(702));
    let (relay, addr) = start(&config(&[&ia, &ib]));
    let server = ctl::serve(&path, relay.inspector(), ctl::no_reload()).expect("serve");
    // owner-only: the directory it created and the socket
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);

    let (mut a, mut b) = pair(&ia, &ib, localhost(0, 7, 2), localhost(0, 7, 3), addr, 70);
    a.keep_raw = true;
    b.keep_raw = true;
    assert!(
        handshake(&mut a, &mut b, LIMIT),
        "handshake through the relay"
    );
    for i in 0..5u64 {
        assert!(a.send_data(100 + i as usize * 10, i));
        assert!(b.send_data(300, i));
    }
    assert!(
        pump_until(&mut [&mut a, &mut b], LIMIT, |p| p[0].delivered >= 5
            && p[1].delivered >= 5),
        "data both ways"
    );
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    junk.send_to(b"x", addr).unwrap();
    // the drop is counted once the shard has routed it
    let deadline = Instant::now() + LIMIT;
    let mut snap = show(&path);
    while snap.drops["too_short"] == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        snap = show(&path);
    }
    assert_eq!(snap.drops["too_short"], 1, "{snap:?}");
    assert_eq!(snap.listeners.len(), 1);
    assert_eq!(snap.listeners[0].address, addr.to_string());
    assert_eq!(snap.listeners[0].mode, "exchange");
    assert_eq!(snap.shards.len(), 2);
    assert!(
        snap.shards.iter().all(|s| s.busy_percent.is_some()),
        "{snap:?}"
    );

    let (a_packets, a_bytes) = transport_sent(&a);
    let (b_packets, b_bytes) = transport_sent(&b);
    assert!(a_packets >= 5 && b_packets >= 5);
    let key = |id: &Identity| {
        snap.keys
            .iter()
            .find(|k| k.public_key == id.public.to_base64())
            .unwrap_or_else(|| panic!("key missing: {snap:?}"))
    };
    let (ka, kb) = (key(&ia), key(&ib));
    assert_eq!(ka.endpoint.as_deref(), Some(a.addr().to_string().as_str()));
    assert_eq!(kb.endpoint.as_deref(), Some(b.addr().to_string().as_str()));
    assert!(ka.latest_handshake_secs.is_some_and(|s| s < 60.0), "{ka:?}");
    // every transport message each side sent went through, and was counted once
    assert_eq!(
        (ka.sent.packets, ka.sent.bytes),
        (a_packets, a_bytes),
        "{snap:?}"
    );
    assert_eq!(
        (kb.received.packets, kb.received.bytes),
        (a_packets, a_bytes)
    );
    assert_eq!((kb.sent.packets, kb.sent.bytes), (b_packets, b_bytes));
    assert_eq!(
        (ka.received.packets, ka.received.bytes),
        (b_packets, b_bytes)
    );
    // the sessions' counters add up to the same (both peers initiated: one or two sessions)
    assert!(
        !snap.sessions.is_empty() && snap.sessions.len() <= 2,
        "{snap:?}"
    );
    let sum = |f: &dyn Fn(&ctl::SessionView) -> (u64, u64)| {
        snap.sessions
            .iter()
            .map(f)
            .fold((0, 0), |x, y| (x.0 + y.0, x.1 + y.1))
    };
    let to_resp = sum(&|s| (s.to_responder.packets, s.to_responder.bytes));
    let to_init = sum(&|s| (s.to_initiator.packets, s.to_initiator.bytes));
    assert_eq!(
        (to_resp.0 + to_init.0, to_resp.1 + to_init.1),
        (a_packets + b_packets, a_bytes + b_bytes)
    );
    let live = snap
        .sessions
        .iter()
        .find(|s| s.confirmed)
        .expect("a confirmed session");
    let ends = [live.initiator.clone(), live.responder.clone()];
    assert!(ends.contains(&a.addr().to_string()) && ends.contains(&b.addr().to_string()));
    assert!(live.initiator_key.is_some() && live.responder_key.is_some());

    // the JSON a script gets parses back into the same shape
    let json = serde_json::to_string(&snap).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["drops"]["bad_mac1"].is_u64() && v["keys"].is_array());
    assert!(ctl::render::text(&snap).contains(&format!("key: {}", ia.public.to_base64())));

    // bad requests get an error reply, and the server keeps answering
    let r = raw_request(&path, b"hello\n");
    assert!(
        !r.ok && r.error.as_deref().unwrap().starts_with("bad request"),
        "{r:?}"
    );
    let r = raw_request(&path, b"{\"command\":\"stop\"}\n");
    assert_eq!(
        r.error.as_deref(),
        Some("unknown command \"stop\": the commands are show and reload")
    );
    let r = raw_request(&path, &vec![b'{'; ctl::MAX_REQUEST * 4]);
    assert!(r.error.as_deref().unwrap().contains("longer than"), "{r:?}");
    // a client that connects and says nothing does not block the others
    let silent = UnixStream::connect(&path).unwrap();
    let r = raw_request(&path, b"{\"command\":\"reload\"}\n");
    assert!(!r.ok && r.error.unwrap().contains("reload is not available"));
    assert!(show(&path).keys.len() == 2);
    drop(silent);

    drop(server);
    assert!(!path.exists(), "removed on a clean stop");
    relay.stop();
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = TempDir::new("stale");
    let path = dir.socket();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    // a socket file nobody listens on, as a killed relay leaves it
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (relay, _) = start(&config(&[]));
    let server = ctl::serve(&path, relay.inspector(), ctl::no_reload()).expect("stale replaced");
    assert_eq!(show(&path).listeners.len(), 1);
    let e = ctl::serve(&path, relay.inspector(), ctl::no_reload())
        .err()
        .expect("a second server on a live path fails");
    assert_eq!(
        e.to_string(),
        format!(
            "--control-socket {}: a running relay already answers there; two relays on one \
             host need two paths (set --control-socket PATH, or off)",
            path.display()
        )
    );
    drop(server);
    // not a socket: left alone
    std::fs::write(&path, "data").unwrap();
    let e = ctl::serve(&path, relay.inspector(), ctl::no_reload())
        .err()
        .unwrap();
    assert!(e
        .to_string()
        .ends_with("exists and is not a socket; choose another path"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    relay.stop();
}

fn client(args: &[&str], socket: &Path) -> Output {
    wgrelay_command()
        .args(args)
        .arg("--control-socket")
        .arg(socket)
        .output()
        .expect("run wgrelay")
}

/// A relay process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_relay(port: u16, socket: &Path, allow: &[&Identity]) -> Running {
    let mut cmd = wgrelay_command();
    cmd.args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--threads",
            "1",
            "--cookie",
            "never",
            "--stats-interval",
            "0",
        ])
        .arg("--control-socket")
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for id in allow {
        cmd.args(["--allow", &id.public.to_base64()]);
    }
    Running(cmd.spawn().expect("spawn wgrelay"))
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + LIMIT;
    while UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "no control socket at {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_binary_serves_show_and_reload() {
    let dir = TempDir::new("bin");
    let path = dir.socket();
    let missing = client(&["show"], &path);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(
        text(&missing.stderr).trim(),
        format!(
            "wgrelay: no relay answers at {}: is it running? (a relay started with another \
             --control-socket PATH is reached with the same flag)",
            path.display()
        )
    );

    let (ia, ib) = (Identity::from_seed(711), Identity::from_seed(712));
    let port = free_port();
    let mut relay = spawn_relay(port, &path, &[&ia, &ib]);
    wait_for_socket(&path);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (mut a, mut b) = pair(&ia, &ib, localhost(0, 7, 12), localhost(0, 7, 13), addr, 71);
    assert!(
        handshake(&mut a, &mut b, LIMIT),
        "handshake through wgrelay run"
    );
    assert!(a.send_data(200, 1));
    assert!(pump_until(&mut [&mut a, &mut b], LIMIT, |p| p[1].delivered >= 1));

    let out = client(&["show"], &path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.starts_with("relay: backend "), "{shown}");
    assert!(shown.contains(&format!("\nlistener: 127.0.0.1:{port}\n  mode: exchange\n")));
    assert!(
        shown.contains(&format!(
            "\nkey: {}\n  endpoint: {}\n",
            ia.public.to_base64(),
            a.addr()
        )),
        "{shown}"
    );
    assert!(shown.contains("\nsession: "), "{shown}");
    assert!(shown.contains("\ndrops:\n"), "{shown}");

    let out = client(&["show", "--json"], &path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let snap: Snapshot = serde_json::from_slice(&out.stdout).expect("show --json parses");
    assert_eq!(snap.keys.len(), 2);
    assert!(snap.keys.iter().any(|k| k.sent.packets >= 1));

    // the same command line and environment again: a reload that finds nothing to change
    let out = client(&["reload"], &path);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no changes"),
        "{}",
        text(&out.stdout)
    );

    // a second relay on the same path fails at startup, naming the flag
    let second = wgrelay_command()
        .args(["run", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--control-socket")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = text(&second.stderr);
    assert!(
        err.contains(&format!(
            "wgrelay: cannot start: --control-socket {}: a running relay already answers there",
            path.display()
        )),
        "{err}"
    );
    // the first still answers
    assert!(client(&["show"], &path).status.success());

    // a clean stop removes the socket
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(relay.0.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + LIMIT;
    while relay.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "relay did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!path.exists());
}

#[test]
fn the_binary_replaces_a_stale_socket_and_off_turns_it_off() {
    let dir = TempDir::new("binstale");
    let path = dir.socket();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    drop(UnixListener::bind(&path).unwrap());
    let _relay = spawn_relay(free_port(), &path, &[]);
    wait_for_socket(&path);
    assert!(client(&["show"], &path).status.success());

    let out = wgrelay_command()
        .args([
            "check-config",
            "--listen",
            "127.0.0.1:1",
            "--control-socket",
            "off",
        ])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("\ncontrol socket: off\n"),
        "{}",
        text(&out.stdout)
    );
    let out = wgrelay_command()
        .args(["check-config", "--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("\ncontrol socket: /run/wgrelay/control.sock\n"));
    let off = client(&["show"], Path::new("off"));
    assert_eq!(off.status.code(), Some(1));
    assert!(text(&off.stderr).contains("--control-socket off: the client needs the path"));
}

/// A control socket that cannot be made (here: under /proc, as on a read-only root) costs
/// the control plane, never the relay: a warning, and the relay relays.
#[test]
fn a_control_socket_that_cannot_be_made_is_a_warning_not_a_stop() {
    let (ia, ib) = (Identity::from_seed(8801), Identity::from_seed(8802));
    let port = free_port();
    let path = Path::new("/proc/wgrelay-nowhere/control.sock");
    let mut relay = spawn_relay(port, path, &[&ia, &ib]);
    let mut err = relay.0.stderr.take().expect("stderr");
    let (mut a, mut b) = pair(
        &ia,
        &ib,
        localhost(8, 8, 1),
        localhost(8, 8, 2),
        ([127, 0, 0, 1], port).into(),
        1,
    );
    // the relay may still be binding: WireGuard's own retries cover that
    assert!(handshake(&mut a, &mut b, LIMIT), "the relay relays");
    assert!(matches!(relay.0.try_wait(), Ok(None)), "still running");
    let _ = relay.0.kill();
    let mut log = String::new();
    let _ = err.read_to_string(&mut log);
    assert!(
        log.contains("no control socket: --control-socket /proc/wgrelay-nowhere/control.sock"),
        "{log}"
    );
    assert!(log.contains("relaying on"), "{log}");
}
