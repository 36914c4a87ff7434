//! The load generator against a real relay and against the null relay, small and short: it
//! must set every session up with real handshakes, deliver its synthetic traffic, and print
//! one JSON line with the figures the benchmark harness reads.

use std::io::Read;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use wgrelay::config::{Config, CookieMode};
use wgrelay::relay::Relay;

fn loadgen(args: &[String]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wgrelay-loadgen"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run wgrelay-loadgen");
    assert!(out.status.success(), "loadgen failed: {:?}", out.status);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("one JSON line");
    serde_json::from_str(line).expect("valid JSON")
}

fn args(relay: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "run",
        "--relay",
        relay,
        "--sessions",
        "20",
        "--size",
        "64,1420",
        "--rate",
        "4000",
        "--duration",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn check(report: &Value, sessions: u64) {
    assert_eq!(
        report["setup"]["ready"].as_u64(),
        Some(sessions),
        "{report}"
    );
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2, "one phase per size");
    for p in phases {
        let sent = p["sent"].as_u64().unwrap_or(0);
        let received = p["received"].as_u64().unwrap_or(0);
        assert!(sent > 0, "{p}");
        // Loopback at 4k pps: essentially lossless; allow a little for a loaded CI machine.
        assert!(
            received * 100 >= sent * 95,
            "delivered {received} of {sent}: {p}"
        );
        assert!(p["lat_us"]["p50"].as_f64().is_some(), "{p}");
    }
}

#[test]
fn loadgen_against_wgrelay() {
    let cfg = Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        cookie: CookieMode::UnderLoad,
        threads: 1,
        stats_interval: None,
        ..Config::default()
    };
    let relay = Relay::start(&cfg).expect("relay");
    let addr = relay.local_addrs()[0].to_string();
    let report = loadgen(&args(&addr, &[]));
    check(&report, 20);
    assert_eq!(report["target"], "wgrelay");
    let stats = relay.stop();
    assert!(stats.route.sessions_confirmed >= 20, "{stats}");
}

#[test]
fn loadgen_against_the_null_relay() {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut null = Command::new(env!("CARGO_BIN_EXE_wgrelay-null"))
        .args(["--listen", &listen])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wgrelay-null");
    let deadline = Instant::now() + Duration::from_secs(5);
    while UdpSocket::bind(&listen).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = loadgen(&args(
        &listen,
        &["--null", "--relay-pid", &null.id().to_string()],
    ));
    check(&report, 20);
    assert_eq!(report["target"], "null");
    let _ = null.kill();
    let _ = null.wait();
    let mut log = String::new();
    if let Some(mut e) = null.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
}
