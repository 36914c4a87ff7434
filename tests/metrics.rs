//! The Prometheus endpoint against a running relay: scraped over real HTTP with a std
//! TcpStream while boringtun peers handshake and send through the relay; bad clients; and the
//! binary's `--metrics` flag. Every wait is bounded.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wgrelay::metrics;

const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Upper bound on any HTTP exchange in these tests.
const HTTP_LIMIT: Duration = Duration::from_secs(10);

/// One HTTP exchange: sends `request` as is, reads to the end. (status, head, body).
fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_LIMIT).expect("connect");
    s.set_read_timeout(Some(HTTP_LIMIT)).expect("timeout");
    s.set_write_timeout(Some(HTTP_LIMIT)).expect("timeout");
    s.write_all(request).expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (status, head.to_string(), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// A parsed page: series (name and labels as written) to value.
#[derive(Debug)]
struct Page(HashMap<String, f64>);

impl Page {
    /// Parses the text format, checking that every sample belongs to a family declared with
    /// `# HELP` and `# TYPE` before it.
    fn parse(text: &str) -> Page {
        let mut helped = Vec::new();
        let mut typed: Vec<(String, String)> = Vec::new();
        let mut samples = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.trim().is_empty(), "empty help: {line}");
                helped.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                typed.push((name.to_string(), kind.to_string()));
            } else if line.is_empty() || line.starts_with('#') {
                continue;
            } else {
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let value: f64 = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
                };
                let name = series.split('{').next().expect("name");
                let (family, kind) = typed.last().expect("a TYPE before samples");
                let belongs = name == family
                    || (kind == "histogram"
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name == format!("{family}{s}")));
                assert!(belongs, "{line:?} outside its family {family}");
                assert_eq!(helped.last(), Some(family), "HELP for {family}");
                assert!(
                    samples.insert(series.to_string(), value).is_none(),
                    "duplicate series {series}"
                );
            }
        }
        Page(samples)
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in {:?}", self.0.keys()))
    }

    /// Sum over every series of a family (`name{...}` and `name`).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

fn scrape(addr: SocketAddr) -> Page {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    Page::parse(&body)
}

/// Scrapes until `done` or `limit`; returns the last page.
fn scrape_until(addr: SocketAddr, limit: Duration, done: impl Fn(&Page) -> bool) -> Page {
    let deadline = Instant::now() + limit;
    loop {
        let page = scrape(addr);
        if done(&page) || Instant::now() >= deadline {
            return page;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scrapes_move_with_real_handshakes_transport_and_a_malformed_datagram() {
    let (ia, ib) = (Identity::from_seed(71), Identity::from_seed(72));
    let (relay, addr) = start(&config(&[&ia, &ib]));
    let server = metrics::serve("127.0.0.1:0".parse().unwrap(), relay.observer()).unwrap();
    let web = server.local_addr();
    let before = scrape(web);
    assert_eq!(before.get("wgrelay_packets_received_total"), 0.0);
    assert_eq!(before.get("wgrelay_handshake_duration_seconds_count"), 0.0);
    assert_eq!(before.get("wgrelay_shards"), 2.0);
    assert!(before
        .0
        .keys()
        .any(|k| k.starts_with("wgrelay_build_info{") && k.contains("version=")));

    let (mut a, mut b) = pair(&ia, &ib, localhost(0, 7, 1), localhost(0, 7, 2), addr, 71);
    a.keep_raw = true;
    b.keep_raw = true;
    assert!(handshake(&mut a, &mut b, HANDSHAKE_LIMIT), "handshake");
    const N: u64 = 25;
    for i in 0..N {
        assert!(a.send_data(200, i));
        assert!(b.send_data(1000, i));
    }
    assert!(
        pump_until(&mut [&mut a, &mut b], Duration::from_secs(5), |p| p[0]
            .delivered
            >= N
            && p[1].delivered >= N),
        "data both ways: {} {}",
        a.delivered,
        b.delivered
    );
    // A datagram shorter than any message's type field.
    let junk = UdpSocket::bind("127.0.0.3:0").unwrap();
    junk.send_to(&[4, 0, 0], addr).unwrap();

    // Everything either peer sent reached the relay (loopback), plus the malformed one.
    let sent = (a.sent.len() + b.sent.len()) as f64;
    let page = scrape_until(web, Duration::from_secs(5), |p| {
        p.get("wgrelay_packets_received_total") >= sent + 1.0
            && p.sum("wgrelay_sessions") >= 1.0
            && p.get("wgrelay_dropped_packets_total{reason=\"too_short\"}") >= 1.0
    });
    assert_eq!(page.get("wgrelay_packets_received_total"), sent + 1.0);
    assert_eq!(
        page.get("wgrelay_dropped_packets_total{reason=\"too_short\"}"),
        1.0
    );
    // Forwarded: at least both peers' data, the initiation and its response; at most one
    // copy of each datagram a peer sent (two peers: nobody else to copy to).
    let forwarded = page.get("wgrelay_packets_forwarded_total");
    assert!(
        forwarded >= (2 * N + 2) as f64 && forwarded <= sent,
        "forwarded {forwarded}, sent {sent}"
    );
    assert!(page.get("wgrelay_sessions{state=\"confirmed\"}") >= 1.0);
    assert!(page.get("wgrelay_handshakes_total{result=\"paired\"}") >= 1.0);
    assert!(page.get("wgrelay_handshakes_total{result=\"confirmed\"}") >= 1.0);
    assert!(page.get("wgrelay_key_bindings") >= 2.0);
    assert!(page.get("wgrelay_endpoints") >= 2.0);
    // The transport went through the shards' own session tables, and is in the totals.
    let fast = page.sum("wgrelay_shard_fast_path_packets_forwarded_total");
    assert!(fast >= N as f64 && fast <= forwarded, "fast path {fast}");
    // The handshake was timed: a loopback round trip through boringtun, well under a second.
    let count = page.get("wgrelay_handshake_duration_seconds_count");
    assert!(count >= 1.0, "{count}");
    assert_eq!(
        page.get("wgrelay_handshake_duration_seconds_bucket{le=\"+Inf\"}"),
        count
    );
    assert_eq!(
        page.get("wgrelay_handshake_duration_seconds_bucket{le=\"1\"}"),
        count
    );
    let sum = page.get("wgrelay_handshake_duration_seconds_sum");
    assert!(sum > 0.0 && sum < count, "sum {sum}");
    server.stop();
    relay.stop();
}

#[test]
fn bad_clients_get_clear_errors_and_cannot_block_a_scrape() {
    let (relay, _) = start(&config(&[]));
    let server = metrics::serve("127.0.0.1:0".parse().unwrap(), relay.observer()).unwrap();
    let web = server.local_addr();

    // Clients that connect and say nothing, one fewer than the workers.
    let silent: Vec<TcpStream> = (0..metrics::WORKERS - 1)
        .map(|_| TcpStream::connect_timeout(&web, HTTP_LIMIT).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let page = scrape(web);
    assert!(
        t.elapsed() < metrics::READ_TIMEOUT,
        "a scrape beside silent clients took {:?}",
        t.elapsed()
    );
    assert!(page.0.contains_key("wgrelay_packets_forwarded_total"));

    let (status, _, body) = get(web, "/");
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = get(web, "/metrics/extra");
    assert_eq!(status, 404);
    let (status, head, _) = http(
        web,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(status, 405, "{head}");
    assert!(head.contains("Allow: GET, HEAD"), "{head}");
    let (status, _, _) = http(web, b"DELETE /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 405);
    let (status, _, _) = http(web, b"this is not http\r\n\r\n");
    assert_eq!(status, 400);
    let (status, head, body) = http(web, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(
        body.is_empty() && head.contains("Content-Length: "),
        "{head}"
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', metrics::MAX_REQUEST_LEN + 10));
    let (status, _, _) = http(web, &huge);
    assert_eq!(status, 431);
    // A query string is still /metrics (Prometheus adds none, but proxies may).
    let (status, _, _) = get(web, "/metrics?debug=1");
    assert_eq!(status, 200);

    // A silent client is cut off (with a 408) after the read timeout, not kept forever.
    let mut s = silent.into_iter().next().unwrap();
    s.set_read_timeout(Some(HTTP_LIMIT)).unwrap();
    let mut got = String::new();
    let t = Instant::now();
    let _ = s.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    assert!(
        t.elapsed() <= metrics::REQUEST_DEADLINE,
        "cut off after {:?}",
        t.elapsed()
    );

    // A clean stop: bounded, and the port no longer answers.
    let t = Instant::now();
    server.stop();
    assert!(t.elapsed() < metrics::REQUEST_DEADLINE, "{:?}", t.elapsed());
    assert!(TcpStream::connect_timeout(&web, Duration::from_secs(1)).is_err());
    relay.stop();
}

#[test]
fn a_flood_of_connections_gets_busy_answers_not_threads() {
    let (relay, _) = start(&config(&[]));
    let server = metrics::serve("127.0.0.1:0".parse().unwrap(), relay.observer()).unwrap();
    let web = server.local_addr();
    // Silent clients until every worker is held and the queue is full: the next one is told
    // 503 at once (a server with a thread per connection would keep accepting).
    let mut held = Vec::new();
    let mut busy = None;
    for n in 0..64 {
        let mut s = TcpStream::connect_timeout(&web, HTTP_LIMIT).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut first = [0u8; 32];
        match s.read(&mut first) {
            Ok(len) if len > 0 => {
                let text = String::from_utf8_lossy(&first[..len]).into_owned();
                assert!(text.starts_with("HTTP/1.1 503 "), "{text:?}");
                busy = Some(n);
                break;
            }
            _ => held.push(s),
        }
    }
    let busy = busy.expect("a 503 once workers and queue are full");
    assert!(
        busy <= metrics::WORKERS + metrics::QUEUE_LEN,
        "503 only after {busy} clients"
    );
    drop(held);
    // Once they are gone (each worker sees its client close), scrapes work again.
    let deadline = Instant::now() + HTTP_LIMIT;
    let mut status = 0;
    while Instant::now() < deadline {
        status = get(web, "/metrics").0;
        if status == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(status, 200);
    server.stop();
    relay.stop();
}

fn wgrelay() -> Command {
    let mut cmd = wgrelay_command();
    // several relays at once: no shared default control socket
    cmd.env("WGRELAY_CONTROL_SOCKET", "off");
    cmd
}

fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// A relay process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_serves_metrics_where_the_flag_says() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Running(
        wgrelay()
            .args([
                "--listen",
                &listen,
                "--threads",
                "1",
                "--metrics",
                "127.0.0.1:0",
            ])
            .env("WGRELAY_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wgrelay"),
    );
    // Read the log until the metrics line (a reader thread: a blocking read has no timeout).
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut log = Vec::new();
    let web: SocketAddr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no metrics line in {log:#?}"));
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            let addr = rest.strip_suffix("/metrics").expect("URL ends in /metrics");
            break addr.parse().expect("a socket address");
        }
        log.push(line);
    };
    assert_ne!(web.port(), 0);
    let page = scrape(web);
    assert_eq!(page.get("wgrelay_shards"), 1.0);
    // The summary that follows names the setting as given.
    let summary = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no summary in {log:#?}"));
        if line.contains("metrics: ") {
            break line;
        }
        log.push(line);
    };
    assert!(
        summary.ends_with("metrics: http://127.0.0.1:0/metrics"),
        "{summary}"
    );
    // SIGTERM: a clean stop with the endpoint running.
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(s)) = child.0.try_wait() {
            break s;
        }
        assert!(Instant::now() < deadline, "wgrelay did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn the_metrics_setting_from_flag_env_and_file_and_its_errors() {
    let check = |args: &[&str], env: Option<&str>| {
        let mut cmd = wgrelay();
        cmd.arg("check-config")
            .args(["--listen", "127.0.0.1:51820"])
            .args(args);
        if let Some(v) = env {
            cmd.env("WGRELAY_METRICS", v);
        }
        cmd.output().expect("run wgrelay")
    };
    let o = check(&[], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\nmetrics: off\n"));
    let o = check(&["--metrics", "[::1]:9586"], None);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("metrics: http://[::1]:9586/metrics"));
    let o = check(&[], Some("127.0.0.1:9586"));
    assert!(String::from_utf8_lossy(&o.stdout).contains("metrics: http://127.0.0.1:9586/metrics"));

    let dir = std::env::temp_dir().join(format!("wgrelay-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ok.toml");
    std::fs::write(&file, "metrics = \"127.0.0.1:9100\"\n").unwrap();
    let o = check(&["--config", file.to_str().unwrap()], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("metrics: http://127.0.0.1:9100/metrics"));
    // the flag wins over the file
    let o = check(
        &[
            "--config",
            file.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:9200",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("metrics: http://127.0.0.1:9200/metrics"));

    // Bad values: one clear line naming the source, exit 2.
    let o = check(&["--metrics", "localhost:9586"], None);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "wgrelay: --metrics \"localhost:9586\": invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)"
    );
    let o = check(&[], Some("9586"));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("WGRELAY_METRICS=\"9586\": invalid socket address"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::write(&file, "\nmetrics = \"nope\"\n").unwrap();
    let o = check(&["--config", file.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains("line 2: metrics \"nope\": invalid socket address"),
        "{err}"
    );

    // An address that cannot be bound stops the start with a clear error.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let o = wgrelay()
        .args(["--listen", &listen, "--threads", "1", "--metrics", &busy])
        .output()
        .expect("run wgrelay");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains(&format!("wgrelay: cannot serve metrics on {busy}: ")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
