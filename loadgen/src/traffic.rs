//! Synthetic transport traffic over ready sessions, and what it measures.
//!
//! Each datagram is a WireGuard transport header the relay can route, and our own payload:
//! `[4,0,0,0] receiver(le u32) counter(le u64) | intended_send_ns(le u64) session(le u32)
//! direction(u8)`, zero-padded to the chosen size (>= 32). The counter is `COUNTER_BASE + seq`
//! per (session, direction), so it continues above what boringtun used and the relay's roaming
//! rule never applies (each direction leaves from the address that did the handshake).
//!
//! Open loop, wrk2-style: unit `u` (one datagram, or one GSO run of `gso` datagrams) is due at
//! `t0 + u * gso / rate`; the generator sends whatever is due, and latency is measured from the
//! INTENDED send time, so a stalled generator or relay shows up as latency instead of being
//! hidden (no coordinated omission). `max` sends back-to-back batches and measures from the
//! actual send time. Units go round-robin over (session, direction).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::io::{Rx, Tx};
use crate::net;
use crate::setup::Indices;
use crate::topo::Topology;

/// First counter of the synthetic packets (boringtun used only a few before).
pub const COUNTER_BASE: u64 = 1 << 20;
/// Smallest datagram: the 16-byte header plus our 13 bytes, padded as a keepalive is.
pub const MIN_SIZE: usize = 32;

#[derive(Debug, Clone, Copy)]
pub struct PhaseOptions {
    pub size: usize,
    /// Datagrams per second; None = max.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub drain: Duration,
    pub both: bool,
    /// Datagrams per GSO send (1 = no GSO).
    pub gso: usize,
    pub progress: bool,
}

#[derive(Debug, Clone, Default)]
pub struct PhaseResult {
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub received_bytes: u64,
    pub reordered: u64,
    pub misdelivered: u64,
    pub other: u64,
    pub send_failed: u64,
    pub lat_ns: [u64; 5],
    pub lat_mean_ns: f64,
    pub generator_cpu_ns: u64,
    /// Largest lag of the sender behind its schedule (ns).
    pub max_lag_ns: u64,
}

/// Per (session, direction) state, kept across phases so counters keep rising.
#[derive(Default, Clone)]
pub struct Flows {
    pub next_seq: Vec<u64>,
    pub rx_max1: Vec<u64>,
}

impl Flows {
    pub fn new(sessions: usize) -> Self {
        Flows {
            next_seq: vec![0; 2 * sessions],
            rx_max1: vec![0; 2 * sessions],
        }
    }
}

/// Runs one traffic phase over the sessions in `live`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    topo: &Topology,
    tx: &mut Tx,
    rx: &mut Rx,
    indices: &[Option<Indices>],
    live: &[u32],
    flows: &mut Flows,
    opts: &PhaseOptions,
) -> PhaseResult {
    let mut res = PhaseResult::default();
    if live.is_empty() {
        return res;
    }
    let size = opts.size.clamp(MIN_SIZE, 1472);
    let gso = opts
        .gso
        .clamp(1, (net::MAX_UDP_PAYLOAD / size).min(net::MAX_GSO_SEGMENTS));
    let dirs: u64 = if opts.both { 2 } else { 1 };
    let units_per_flow_cycle = live.len() as u64 * dirs;
    let base = Instant::now();
    let clock = || base.elapsed().as_nanos() as u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)
        .expect("constant bounds are valid");
    let cpu0 = crate::procinfo::self_cpu_ns();
    let failed0 = tx.failed;
    let n_sessions = indices.len();
    let duration_ns = opts.duration.as_nanos() as u64;
    let ns_per_unit = opts.rate.map(|r| gso as f64 * 1e9 / r.max(1.0));
    let t0 = clock();
    let mut units: u64 = 0;
    let mut next_progress = t0 + 1_000_000_000;
    let mut progress_last = (0u64, 0u64);

    let handle = |p: usize,
                  d: &[u8],
                  now: u64,
                  res: &mut PhaseResult,
                  hist: &mut Histogram<u64>,
                  flows: &mut Flows| {
        if d.len() < MIN_SIZE || d[0] != 4 {
            res.other += 1;
            return;
        }
        let le64 = |b: &[u8]| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            u64::from_le_bytes(a)
        };
        let counter = le64(&d[8..16]);
        let intended = le64(&d[16..24]);
        let sess = u32::from_le_bytes([d[24], d[25], d[26], d[27]]) as usize;
        let dir = usize::from(d[28]);
        if sess >= n_sessions || dir > 1 || p != 2 * sess + (1 - dir) {
            res.misdelivered += 1;
            return;
        }
        let seq = counter.wrapping_sub(COUNTER_BASE);
        let f = 2 * sess + dir;
        if seq.wrapping_add(1) > flows.rx_max1[f] {
            flows.rx_max1[f] = seq + 1;
        } else {
            res.reordered += 1;
        }
        res.received += 1;
        res.received_bytes += d.len() as u64;
        hist.saturating_record(now.saturating_sub(intended).max(1));
    };

    loop {
        let now = clock();
        if now >= t0 + duration_ns {
            break;
        }
        // send what is due
        let due = match ns_per_unit {
            Some(ns) => ((now - t0) as f64 / ns) as u64 + 1,
            None => units + net::BATCH as u64,
        };
        let mut budget = 4 * net::BATCH;
        while units < due && budget > 0 {
            budget -= 1;
            let intended = match ns_per_unit {
                Some(ns) => t0 + (units as f64 * ns) as u64,
                None => now,
            };
            res.max_lag_ns = res.max_lag_ns.max(now.saturating_sub(intended));
            let slot = units % units_per_flow_cycle;
            let s = live[(slot / dirs) as usize] as usize;
            let dir = (slot % dirs) as usize;
            units += 1;
            let Some(idx) = indices[s] else {
                continue;
            };
            let (from, receiver) = if dir == 0 {
                (2 * s, idx.b)
            } else {
                (2 * s + 1, idx.a)
            };
            let f = 2 * s + dir;
            let first = flows.next_seq[f];
            flows.next_seq[f] += gso as u64;
            res.sent += gso as u64;
            tx.send(
                topo,
                from,
                if gso > 1 { size } else { 0 },
                size * gso,
                |buf| {
                    for (k, d) in buf.chunks_mut(size).enumerate() {
                        d[..4].copy_from_slice(&[4, 0, 0, 0]);
                        d[4..8].copy_from_slice(&receiver.to_le_bytes());
                        d[8..16].copy_from_slice(&(COUNTER_BASE + first + k as u64).to_le_bytes());
                        d[16..24].copy_from_slice(&intended.to_le_bytes());
                        d[24..28].copy_from_slice(&(s as u32).to_le_bytes());
                        d[28] = dir as u8;
                    }
                },
            );
        }
        tx.flush(topo);
        // receive; sleep until the next unit is due when there is nothing to do
        let wait_us = match ns_per_unit {
            Some(ns) if budget > 0 => {
                let next_due = t0 + (units as f64 * ns) as u64;
                (next_due.saturating_sub(clock()) / 1000).min(1000)
            }
            _ => 0,
        };
        rx.poll(topo, wait_us, 4, clock, |p, d, now| {
            handle(p, d, now, &mut res, &mut hist, flows)
        });
        if opts.progress && now >= next_progress {
            next_progress = now + 1_000_000_000;
            eprintln!(
                "traffic {:4.1}s: sent {} (+{}/s) received {} (+{}/s)",
                (now - t0) as f64 / 1e9,
                res.sent,
                res.sent - progress_last.0,
                res.received,
                res.received - progress_last.1
            );
            progress_last = (res.sent, res.received);
        }
    }
    res.seconds = (clock() - t0) as f64 / 1e9;
    // drain what is still in flight
    let drain_end = clock() + opts.drain.as_nanos() as u64;
    let mut quiet = 0;
    while clock() < drain_end && res.received + res.misdelivered < res.sent {
        let got = rx.poll(topo, 2000, 8, clock, |p, d, now| {
            handle(p, d, now, &mut res, &mut hist, flows)
        });
        quiet = if got == 0 { quiet + 1 } else { 0 };
        if quiet > 50 {
            break;
        }
    }
    res.send_failed = tx.failed - failed0;
    res.generator_cpu_ns = crate::procinfo::self_cpu_ns() - cpu0;
    for (i, q) in [50.0, 90.0, 99.0, 99.9, 100.0].iter().enumerate() {
        res.lat_ns[i] = hist.value_at_percentile(*q);
    }
    res.lat_mean_ns = hist.mean();
    res
}
