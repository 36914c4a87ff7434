//! The text view of `wgrelay show`, laid out like `wg show`: a block per listener, per key
//! and per session, then the counters. Keys in base64, as wg prints them; columns aligned.

use std::fmt::Write as _;

use super::snapshot::{Snapshot, TrafficView};

/// `1 hour, 2 minutes, 3 seconds`, as wg prints a latest handshake.
pub fn duration(secs: f64) -> String {
    let total = secs.max(0.0) as u64;
    if total == 0 {
        return "0 seconds".to_string();
    }
    let parts = [
        (total / 86_400, "day"),
        (total / 3600 % 24, "hour"),
        (total / 60 % 60, "minute"),
        (total % 60, "second"),
    ];
    let words: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n} {unit}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    words.join(", ")
}

/// Bytes as wg prints them: `123 B`, `1.50 KiB`, `2.00 MiB`, ...
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

fn traffic(t: &TrafficView) -> String {
    format!(
        "{} ({} packet{})",
        bytes(t.bytes),
        t.packets,
        if t.packets == 1 { "" } else { "s" }
    )
}

/// Renders a snapshot (no trailing newline).
pub fn text(s: &Snapshot) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "relay: backend {}, {} shard{}, up {}",
        s.backend,
        s.shards.len(),
        if s.shards.len() == 1 { "" } else { "s" },
        duration(s.uptime_secs)
    );
    for l in &s.listeners {
        let _ = writeln!(o, "\nlistener: {}", l.address);
        let _ = writeln!(o, "  mode: {}", l.mode);
        if let Some(p) = &l.peer {
            let _ = writeln!(o, "  peer: {p}");
        }
        let _ = writeln!(o, "  framing: {}", l.framing);
    }
    for k in &s.keys {
        let _ = writeln!(o, "\nkey: {}", k.public_key);
        if let Some(e) = &k.endpoint {
            let _ = writeln!(o, "  endpoint: {e}");
        }
        if let Some(h) = k.latest_handshake_secs {
            let _ = writeln!(o, "  latest handshake: {} ago", duration(h));
        }
        let _ = writeln!(
            o,
            "  transfer: {} received, {} sent",
            traffic(&k.received),
            traffic(&k.sent)
        );
        if k.roams > 0 {
            let _ = writeln!(o, "  roams: {}", k.roams);
        }
    }
    for x in &s.sessions {
        let _ = writeln!(
            o,
            "\nsession: {:08x} -> {:08x}{}",
            x.initiator_index,
            x.responder_index,
            if x.confirmed { "" } else { " (unconfirmed)" }
        );
        let key = |k: &Option<String>| k.as_ref().map_or(String::new(), |k| format!(" ({k})"));
        let _ = writeln!(o, "  initiator: {}{}", x.initiator, key(&x.initiator_key));
        let _ = writeln!(o, "  responder: {}{}", x.responder, key(&x.responder_key));
        let _ = writeln!(o, "  age: {}", duration(x.age_secs));
        let _ = writeln!(
            o,
            "  transfer: {} to responder, {} to initiator",
            traffic(&x.to_responder),
            traffic(&x.to_initiator)
        );
    }
    // two receiver indices per session
    if s.session_count.div_ceil(2) > s.sessions.len() {
        let _ = writeln!(
            o,
            "\n({} of {} sessions listed)",
            s.sessions.len(),
            s.session_count.div_ceil(2)
        );
    }
    let _ = writeln!(
        o,
        "\ntables: {} parked initiation{}, {} fan-out candidate{}, {} endpoints, {} indices",
        s.parked,
        if s.parked == 1 { "" } else { "s" },
        s.candidates,
        if s.candidates == 1 { "" } else { "s" },
        s.endpoints,
        s.indices
    );
    // one width for every counter table, so they line up with each other
    let width = s
        .totals
        .keys()
        .chain(s.drops.keys())
        .chain(s.io.keys())
        .map(|k| k.len())
        .max()
        .unwrap_or(0);
    let columns = |o: &mut String, title: &str, rows: &[(&String, &u64)]| {
        let _ = writeln!(o, "\n{title}:");
        for (k, v) in rows {
            let _ = writeln!(o, "  {k:<width$}  {v:>12}");
        }
    };
    columns(&mut o, "totals", &s.totals.iter().collect::<Vec<_>>());
    columns(&mut o, "drops", &s.drops.iter().collect::<Vec<_>>());
    columns(&mut o, "io", &s.io.iter().collect::<Vec<_>>());
    let _ = writeln!(o, "\nshards:");
    let _ = writeln!(
        o,
        "  {:>5}  {:>12}  {:>12}  {:>9}  {:>6}",
        "shard", "received", "forwarded", "indices", "busy"
    );
    for sh in &s.shards {
        let busy = sh
            .busy_percent
            .map_or("-".to_string(), |b| format!("{b:.1}%"));
        let _ = writeln!(
            o,
            "  {:>5}  {:>12}  {:>12}  {:>9}  {:>6}",
            sh.id, sh.received, sh.forwarded, sh.sessions, busy
        );
    }
    o.truncate(o.trim_end().len());
    o
}

#[cfg(test)]
mod tests {
    use super::super::snapshot::*;
    use super::*;
    use std::collections::BTreeMap;

    fn fixed() -> Snapshot {
        let t = |p, b| TrafficView {
            packets: p,
            bytes: b,
        };
        Snapshot {
            backend: "mmsg".into(),
            uptime_secs: 3725.0,
            listeners: vec![ListenerView {
                address: "127.0.0.1:51820".into(),
                mode: "exchange".into(),
                peer: None,
                framing: "wireguard".into(),
            }],
            keys: vec![KeyView {
                public_key: "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into(),
                endpoint: Some("127.0.0.1:40000".into()),
                latest_handshake_secs: Some(61.0),
                received: t(3, 96),
                sent: t(1, 2048),
                roams: 1,
            }],
            sessions: vec![SessionView {
                initiator_index: 0x10,
                responder_index: 0xabcdef01,
                initiator: "127.0.0.1:40000".into(),
                responder: "127.0.0.1:40001".into(),
                initiator_key: None,
                responder_key: None,
                confirmed: true,
                age_secs: 5.4,
                to_responder: t(1, 2048),
                to_initiator: t(3, 96),
            }],
            session_count: 1,
            parked: 0,
            candidates: 2,
            endpoints: 2,
            indices: 2,
            totals: BTreeMap::from([("forwarded".into(), 6), ("received".into(), 7)]),
            drops: BTreeMap::from([("bad_mac1".into(), 0), ("too_short".into(), 1)]),
            io: BTreeMap::from([("send_failed".into(), 0)]),
            shards: vec![ShardView {
                id: 0,
                received: 4,
                forwarded: 4,
                sessions: 2,
                busy_percent: Some(0.1),
            }],
        }
    }

    #[test]
    fn renders_a_fixed_snapshot() {
        let expect = "\
relay: backend mmsg, 1 shard, up 1 hour, 2 minutes, 5 seconds

listener: 127.0.0.1:51820
  mode: exchange
  framing: wireguard

key: AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=
  endpoint: 127.0.0.1:40000
  latest handshake: 1 minute, 1 second ago
  transfer: 96 B (3 packets) received, 2.00 KiB (1 packet) sent
  roams: 1

session: 00000010 -> abcdef01
  initiator: 127.0.0.1:40000
  responder: 127.0.0.1:40001
  age: 5 seconds
  transfer: 2.00 KiB (1 packet) to responder, 96 B (3 packets) to initiator

tables: 0 parked initiations, 2 fan-out candidates, 2 endpoints, 2 indices

totals:
  forwarded               6
  received                7

drops:
  bad_mac1                0
  too_short               1

io:
  send_failed             0

shards:
  shard      received     forwarded    indices    busy
      0             4             4          2    0.1%";
        assert_eq!(text(&fixed()), expect);
    }

    #[test]
    fn json_round_trips() {
        let s = fixed();
        let json = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn units() {
        assert_eq!(duration(0.4), "0 seconds");
        assert_eq!(duration(90061.0), "1 day, 1 hour, 1 minute, 1 second");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.50 KiB");
        assert_eq!(bytes(3 << 30), "3.00 GiB");
    }
}
