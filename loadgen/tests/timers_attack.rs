//! `timers` and `attack` against the real relay, in-process, small and short: they must run
//! and report numbers that agree with each other. Nothing here asserts speed.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};

use serde_json::Value;
use wgrelay::config::{Config, CookieMode, Server};
use wgrelay::key::PublicKey;
use wgrelay::relay::Relay;
use wgrelay::upstream::resolve::HostPort;
use wgrelay_loadgen::attack::attack_keys;
use wgrelay_loadgen::timers::timers_keys;

fn loadgen(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wgrelay-loadgen"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run wgrelay-loadgen");
    assert!(
        out.status.success(),
        "loadgen {args:?} failed: {:?}",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .expect("one JSON line");
    serde_json::from_str(line).expect("valid JSON")
}

fn relay(cfg: Config) -> (Relay, String) {
    let cfg = Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        threads: 1,
        stats_interval: None,
        ..cfg
    };
    let relay = Relay::start(&cfg).expect("relay");
    let addr = relay.local_addrs()[0].to_string();
    (relay, addr)
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn timers_twenty_pairs_in_one_allow_list() {
    let pairs = 20;
    let keys = timers_keys(pairs, 7);
    let (relay, addr) = relay(Config {
        allow: keys.iter().map(|k| PublicKey(k.public)).collect(),
        cookie: CookieMode::UnderLoad,
        ..Config::default()
    });
    let r = loadgen(&[
        "timers",
        "--relay",
        &addr,
        "--pairs",
        "20",
        "--seed",
        "7",
        "--duration",
        "12",
        "--quiet",
    ]);
    let working = u(&r["working_end"]);
    assert!(working <= pairs as u64, "{r}");
    assert!(working > 0, "no pair worked: {r}");
    // Checkpoints never decrease and end at working_end.
    let w = &r["working"];
    let mut last = 0;
    for k in ["1s", "2s", "5s", "10s", "end"] {
        let n = u(&w[k]);
        assert!(n >= last && n <= working, "{k}: {r}");
        last = n;
    }
    assert_eq!(last, working);
    if working == pairs as u64 {
        assert!(r["time_to"]["100%"].as_f64().is_some(), "{r}");
    } else {
        assert!(r["time_to"]["100%"].is_null(), "{r}");
    }
    // Every peer initiated when it came up; every working pair completed a handshake.
    let pc = &r["peers_counters"];
    assert_eq!(u(&pc["initiations"]["come_up"]), 2 * pairs as u64, "{r}");
    assert!(u(&r["initiations"]) >= 2 * pairs as u64, "{r}");
    assert!(u(&pc["handshakes_completed"]) >= working, "{r}");
    assert!(u(&pc["data_received"]) >= 2 * working, "{r}");
    assert!(u(&r["cookie_replies_received"]) >= u(&pc["cookie_replies_accepted"]));
    let stats = relay.stop();
    assert!(stats.route.sessions_confirmed >= working, "{stats}");
}

fn check_attack(r: &Value) {
    let a = &r["attack"];
    let sent = u(&a["sent"]);
    assert!(sent > 0, "{r}");
    assert_eq!(u(&a["bytes_sent"]), sent * 148, "{r}");
    let ratio = a["ratio_bytes_out_in"].as_f64().expect("ratio");
    let want = u(&a["bytes_received"]) as f64 / (sent * 148) as f64;
    assert!((ratio - want).abs() < 1e-9, "{r}");
    assert!(u(&a["sources_answered"]) <= u(&a["received"]), "{r}");
    let l = &r["legit"];
    assert!(l["setup_s"].as_f64().is_some(), "{r}");
    for phase in ["before", "attack", "after"] {
        for dir in ["a_to_b", "b_to_a"] {
            let p = &l["loss"][phase][dir];
            assert_eq!(u(&p["sent"]), u(&p["delivered"]) + u(&p["lost"]), "{r}");
        }
    }
    assert!(u(&l["loss"]["before"]["a_to_b"]["sent"]) > 0, "{r}");
    assert_eq!(
        u(&l["third_party_initiations"]),
        u(&l["third_party_initiations_at"]["a"]) + u(&l["third_party_initiations_at"]["b"])
    );
}

const SHORT: &[&str] = &[
    "--rate",
    "500",
    "--seconds",
    "1",
    "--before",
    "0.5",
    "--rehandshake-after",
    "0.2",
    "--after",
    "1",
    "--quiet",
];

#[test]
fn attack_valid_mac1_against_an_allow_list() {
    let keys = attack_keys(3);
    let (relay, addr) = relay(Config {
        allow: keys.iter().map(|k| PublicKey(k.public)).collect(),
        cookie: CookieMode::UnderLoad,
        ..Config::default()
    });
    let b = free_b_addr();
    let mut args = vec![
        "attack",
        "--relay",
        &addr,
        "--seed",
        "3",
        "--b-addr",
        &b,
        "--forge",
        "valid-mac1",
    ];
    args.extend_from_slice(SHORT);
    let r = loadgen(&args);
    check_attack(&r);
    assert_eq!(r["target"], "exchange");
    let stats = relay.stop();
    assert!(stats.route.received > 0, "{stats}");
}

#[test]
fn attack_random_against_a_proxy_server() {
    let keys = attack_keys(4);
    let b = free_b_addr();
    let b_sock: SocketAddr = b.parse().expect("addr");
    let (relay, addr) = relay(Config {
        servers: vec![Server {
            addr: HostPort::Addr(b_sock),
            key: PublicKey(keys[1].public),
        }],
        cookie: CookieMode::UnderLoad,
        ..Config::default()
    });
    let mut args = vec![
        "attack",
        "--relay",
        &addr,
        "--seed",
        "4",
        "--legit-server",
        "--b-addr",
        &b,
        "--forge",
        "random",
    ];
    args.extend_from_slice(SHORT);
    let r = loadgen(&args);
    check_attack(&r);
    assert_eq!(r["target"], "server");
    let stats = relay.stop();
    assert!(stats.route.received > 0, "{stats}");
}

/// A free port on B's address (127.66.0.2).
fn free_b_addr() -> String {
    let s = UdpSocket::bind("127.66.0.2:0").expect("bind 127.66.0.2");
    s.local_addr().expect("addr").to_string()
}
