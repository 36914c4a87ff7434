//! One load-generator run: (spawn the relay,) set up sessions, run the traffic phases,
//! collect the relay's CPU and memory, and report.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::io::{Rx, Tx};
use crate::procinfo::{self, Spawned};
use crate::setup::{self, SetupOptions};
use crate::topo::{self, AddrMode, Topology};
use crate::traffic::{self, Flows, PhaseOptions};

/// Everything a run needs (the CLI and the matrix both build one).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub label: String,
    pub relay: SocketAddrV4,
    pub spawn: Option<String>,
    pub relay_pid: Option<u32>,
    pub relay_cpu: Option<usize>,
    pub null: bool,
    pub sessions: usize,
    pub addr: AddrMode,
    pub pktinfo: bool,
    pub setup: SetupOptions,
    pub sizes: Vec<usize>,
    /// None = max.
    pub rates: Vec<Option<f64>>,
    pub duration: Duration,
    pub drain: Duration,
    pub both: bool,
    pub gso: usize,
    pub gro: bool,
    pub buffer: usize,
    pub progress: bool,
    /// The relay's configuration in words, for the report (e.g. "--cookie never").
    pub note: String,
}

fn rate_label(r: Option<f64>) -> String {
    match r {
        None => "max".into(),
        Some(r) if r >= 1000.0 && r % 1000.0 == 0.0 => format!("{}k", r / 1000.0),
        Some(r) => format!("{r}"),
    }
}

/// Parses "100k", "1.5m", "20000" or "max".
///
/// # Errors
/// Not a positive number or `max`.
pub fn parse_rate(s: &str) -> Result<Option<f64>, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "max" {
        return Ok(None);
    }
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        _ => (t.as_str(), 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Some(v * mul)),
        _ => Err(format!("bad rate {s:?}: want e.g. 100k, 20000 or max")),
    }
}

/// Runs and returns the report (one JSON object).
///
/// # Errors
/// Sockets, the relay process or `/proc` failed; the message says which.
pub fn execute(cfg: &RunConfig) -> Result<Value, String> {
    let t_start = Instant::now();
    let mut spawned = match &cfg.spawn {
        Some(cmd) => {
            let mut s = Spawned::start(cmd, cfg.relay_cpu).map_err(|e| e.to_string())?;
            if !s.wait_bound(cfg.relay.port(), Duration::from_secs(5)) {
                let (_, log) = s.stop();
                return Err(format!(
                    "relay `{cmd}` did not bind {} within 5 s; its log: {}",
                    cfg.relay,
                    log.join(" | ")
                ));
            }
            Some(s)
        }
        None => None,
    };
    let pid = spawned.as_ref().map(Spawned::pid).or(cfg.relay_pid);
    let result = drive(cfg, pid);
    let (final_stats, log) = match spawned.take() {
        Some(s) => s.stop(),
        None => (Vec::new(), Vec::new()),
    };
    let mut v = result?;
    let relay_final: serde_json::Map<String, Value> = final_stats
        .into_iter()
        .map(|(k, n)| (k, json!(n)))
        .collect();
    v["relay_final"] = Value::Object(relay_final);
    // wgrelay says at start which backend runs and whether GSO/GRO are really on
    // ("backend mmsg: 1 shard(s), batch 64, gso segments 64 (--gso on), ..."): keep it.
    if let Some(l) = log.iter().find(|l| l.contains(" shard(s), batch ")) {
        let words = l.find("] ").map_or(l.as_str(), |i| &l[i + 2..]);
        v["relay_backend"] = json!(words);
    }
    if v["relay_final"].as_object().is_some_and(|m| m.is_empty()) && !log.is_empty() {
        v["relay_log_tail"] = json!(log.iter().rev().take(5).collect::<Vec<_>>());
    }
    v["wall_s"] = json!(t_start.elapsed().as_secs_f64());
    Ok(v)
}

fn drive(cfg: &RunConfig, pid: Option<u32>) -> Result<Value, String> {
    let peers = 2 * cfg.sessions;
    let t_keys = Instant::now();
    let keys = setup::make_keys(peers, 0x5eed_0000 ^ u64::from(cfg.setup.index_base));
    let keygen_s = t_keys.elapsed().as_secs_f64();
    let pktinfo_ok = cfg.addr == AddrMode::Distinct && cfg.pktinfo && {
        match topo::probe_pktinfo() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("IP_PKTINFO probe failed ({e}); one socket per peer");
                false
            }
        }
    };
    let topo = Topology::new(
        peers,
        cfg.addr,
        pktinfo_ok,
        cfg.gso > 1,
        cfg.gro,
        cfg.buffer,
    )
    .map_err(|e| e.to_string())?;
    let mut tx = Tx::new(cfg.relay);
    let mut rx = Rx::new(&topo, cfg.gro).map_err(|e| e.to_string())?;
    let sample = |what: &str| -> Option<procinfo::Sample> {
        let pid = pid?;
        match procinfo::sample(pid) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("reading /proc/{pid} ({what}): {e}");
                None
            }
        }
    };

    let before_setup = sample("before set-up");
    let (indices, sres) = setup::run(&topo, &mut tx, &mut rx, &keys, &cfg.setup);
    let after_setup = sample("after set-up");
    let live: Vec<u32> = (0..cfg.sessions as u32)
        .filter(|&s| indices[s as usize].is_some())
        .collect();
    let rss_delta = match (before_setup, after_setup) {
        (Some(a), Some(b)) => Some(b.rss as i64 - a.rss as i64),
        _ => None,
    };
    if cfg.progress {
        eprintln!(
            "{}: {} of {} sessions ready in {:.2} s (cookies {}, retries {}, rejected {})",
            cfg.label,
            sres.ready,
            cfg.sessions,
            sres.seconds,
            sres.cookie_replies,
            sres.retries,
            sres.rejected
        );
    }

    let mut flows = Flows::new(cfg.sessions);
    let mut phases = Vec::new();
    for &size in &cfg.sizes {
        for &rate in &cfg.rates {
            let opts = PhaseOptions {
                size,
                rate,
                duration: cfg.duration,
                drain: cfg.drain,
                both: cfg.both,
                gso: cfg.gso,
                progress: cfg.progress,
            };
            let s0 = sample("phase start");
            let (m0, d0) = (rx.messages, rx.datagrams);
            let r = traffic::run(&topo, &mut tx, &mut rx, &indices, &live, &mut flows, &opts);
            let s1 = sample("phase end");
            let secs = r.seconds.max(1e-9);
            let (cpu_stat, cpu_sched, cpu_pct) = match (s0, s1) {
                (Some(a), Some(b)) if r.received > 0 => (
                    json!((b.stat_ns - a.stat_ns) as f64 / r.received as f64),
                    json!((b.sched_ns - a.sched_ns) as f64 / r.received as f64),
                    json!((b.sched_ns - a.sched_ns) as f64 / 1e9 / secs * 100.0),
                ),
                _ => (Value::Null, Value::Null, Value::Null),
            };
            let loss = r.sent.saturating_sub(r.received);
            let us = |ns: u64| ns as f64 / 1000.0;
            let rx_messages = rx.messages - m0;
            let per_message = if rx_messages > 0 {
                json!((rx.datagrams - d0) as f64 / rx_messages as f64)
            } else {
                Value::Null
            };
            let phase = json!({
                "size": size.clamp(traffic::MIN_SIZE, 1472),
                "rate": rate_label(rate),
                "offered_pps": rate,
                "seconds": r.seconds,
                "sent": r.sent,
                "received": r.received,
                "loss": loss,
                "loss_pct": if r.sent > 0 { loss as f64 * 100.0 / r.sent as f64 } else { 0.0 },
                "reordered": r.reordered,
                "misdelivered": r.misdelivered,
                "other": r.other,
                "send_failed": r.send_failed,
                "rx_datagrams_per_message": per_message,
                "pps": r.received as f64 / secs,
                "mbps": r.received_bytes as f64 * 8.0 / secs / 1e6,
                "lat_us": {"p50": us(r.lat_ns[0]), "p90": us(r.lat_ns[1]), "p99": us(r.lat_ns[2]),
                           "p99_9": us(r.lat_ns[3]), "max": us(r.lat_ns[4]), "mean": r.lat_mean_ns / 1000.0},
                "max_sender_lag_us": us(r.max_lag_ns),
                "relay_cpu_ns_per_pkt": cpu_stat,
                "relay_cpu_ns_per_pkt_sched": cpu_sched,
                "relay_cpu_pct": cpu_pct,
                "generator_cpu_ns_per_pkt": if r.received > 0 { r.generator_cpu_ns as f64 / r.received as f64 } else { 0.0 },
            });
            if cfg.progress {
                eprintln!("{}", summary_line(&cfg.label, &phase));
            }
            phases.push(phase);
        }
    }

    Ok(json!({
        "label": cfg.label,
        "target": if cfg.null { "null" } else { "wgrelay" },
        "relay": cfg.relay.to_string(),
        "relay_pid": pid,
        "note": cfg.note,
        "sessions": cfg.sessions,
        "addr_mode": match cfg.addr { AddrMode::Distinct => "distinct", AddrMode::Shared => "shared" },
        "pktinfo": pktinfo_ok,
        "gso": cfg.gso,
        "gro": cfg.gro,
        "direction": if cfg.both { "both" } else { "one" },
        "keygen_s": keygen_s,
        "setup": {
            "ready": sres.ready,
            "failed": sres.failed,
            "seconds": sres.seconds,
            "p50_s": sres.p50_seconds,
            "p99_s": sres.p99_seconds,
            "sessions_per_s": if sres.seconds > 0.0 { sres.ready as f64 / sres.seconds } else { 0.0 },
            "initiations": sres.initiations,
            "retries": sres.retries,
            "cookie_replies": sres.cookie_replies,
            "rejected": sres.rejected,
            "generator_cpu_s": sres.generator_cpu_s,
        },
        "relay_rss_before_setup": before_setup.map(|s| s.rss),
        "relay_rss_after_setup": after_setup.map(|s| s.rss),
        "relay_rss_per_session": rss_delta.map(|d| d as f64 / cfg.sessions.max(1) as f64),
        "relay_setup_cpu_s": match (before_setup, after_setup) {
            (Some(a), Some(b)) => json!((b.sched_ns - a.sched_ns) as f64 / 1e9),
            _ => Value::Null,
        },
        "phases": phases,
    }))
}

/// One human line for a phase.
pub fn summary_line(label: &str, p: &Value) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    format!(
        "{label} size {} rate {}: {:.0} pps {:.1} Mbit/s loss {:.3}% reord {} | lat us p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1} | relay {:.0} ns/pkt ({:.0}% cpu) gen {:.0} ns/pkt",
        p["size"],
        p["rate"].as_str().unwrap_or("?"),
        f(&p["pps"]),
        f(&p["mbps"]),
        f(&p["loss_pct"]),
        p["reordered"],
        f(&p["lat_us"]["p50"]),
        f(&p["lat_us"]["p90"]),
        f(&p["lat_us"]["p99"]),
        f(&p["lat_us"]["p99_9"]),
        f(&p["lat_us"]["max"]),
        f(&p["relay_cpu_ns_per_pkt_sched"]),
        f(&p["relay_cpu_pct"]),
        f(&p["generator_cpu_ns_per_pkt"]),
    )
}

/// The human summary of a whole run.
pub fn summary(v: &Value) -> String {
    let mut out = String::new();
    let s = &v["setup"];
    out.push_str(&format!(
        "{} ({}, {} sessions, {} addresses{}): set-up {}/{} ready in {:.2} s (p50 {:.2} s, p99 {:.2} s), {} initiations, {} retries, {} cookie replies; generator CPU {:.2} s\n",
        v["label"].as_str().unwrap_or(""),
        v["target"].as_str().unwrap_or(""),
        v["sessions"],
        v["addr_mode"].as_str().unwrap_or(""),
        if v["pktinfo"].as_bool() == Some(true) { " via IP_PKTINFO" } else { "" },
        s["ready"],
        v["sessions"],
        s["seconds"].as_f64().unwrap_or(0.0),
        s["p50_s"].as_f64().unwrap_or(0.0),
        s["p99_s"].as_f64().unwrap_or(0.0),
        s["initiations"],
        s["retries"],
        s["cookie_replies"],
        s["generator_cpu_s"].as_f64().unwrap_or(0.0),
    ));
    if let Some(r) = v["relay_rss_per_session"].as_f64() {
        out.push_str(&format!(
            "relay RSS {} -> {} bytes: {:.0} bytes/session\n",
            v["relay_rss_before_setup"], v["relay_rss_after_setup"], r
        ));
    }
    for p in v["phases"].as_array().into_iter().flatten() {
        out.push_str(&summary_line(v["label"].as_str().unwrap_or(""), p));
        out.push('\n');
    }
    if let Some(m) = v["relay_final"].as_object().filter(|m| !m.is_empty()) {
        let kv: Vec<String> = m.iter().map(|(k, n)| format!("{k}={n}")).collect();
        out.push_str(&format!("relay final stats: {}\n", kv.join(" ")));
    }
    out
}
