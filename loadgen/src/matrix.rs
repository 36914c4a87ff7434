//! The benchmark matrix: wgrelay vs the null relay over sessions x size x rate, repeated,
//! with medians (min-max) and wgrelay/null ratios; writes a Markdown report and an SVG plot.
//!
//! One run per (repetition, sessions, target): the relay is spawned pinned to one CPU, the
//! generator runs pinned to another, sessions are set up once and every (size, rate) phase
//! runs over them. Targets alternate within a repetition so slow drifts of a noisy machine
//! hit both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde_json::Value;

use crate::run::{self, RunConfig};
use crate::setup::SetupOptions;
use crate::topo::AddrMode;

pub struct MatrixConfig {
    pub quick: bool,
    /// Write the reports from these raw JSON lines instead of running.
    pub from_raw: Option<String>,
    pub wgrelay: String,
    pub null: String,
    pub relay_flags: String,
    pub out: String,
    pub svg: String,
    pub raw: String,
    pub relay_cpu: usize,
    pub sessions: Option<Vec<usize>>,
    pub reps: Option<usize>,
    pub command: String,
}

/// Everything after this line in the report is kept when the matrix rewrites it.
pub const NOTES_MARKER: &str = "<!-- notes: kept across regenerations -->";
const TARGETS: [&str; 2] = ["wgrelay", "null"];
/// The I/O backend axis (`wgrelay --backend`). The null relay has no backend choice; it runs
/// once per backend anyway, so each backend's ratio uses a baseline measured right beside it.
const BACKENDS: [&str; 2] = ["mmsg", "uring"];
const SIZES: [usize; 2] = [64, 1420];
const RATES: [Option<f64>; 2] = [Some(100_000.0), None];

fn ncpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Median, min, max.
fn stats(v: &mut Vec<f64>) -> Option<(f64, f64, f64)> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

fn fmt3(s: Option<(f64, f64, f64)>, digits: usize) -> String {
    match s {
        Some((m, lo, hi)) if lo != hi => format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})"),
        Some((m, _, _)) => format!("{m:.digits$}"),
        None => "–".into(),
    }
}

/// Runs the matrix and writes the reports.
///
/// # Errors
/// A run failed to start, or a report could not be written.
pub fn run(c: &MatrixConfig) -> Result<(), String> {
    let sessions = c.sessions.clone().unwrap_or_else(|| {
        if c.quick {
            vec![1, 1000]
        } else {
            vec![1, 1000, 10_000]
        }
    });
    let reps = c.reps.unwrap_or(if c.quick { 1 } else { 3 }).max(1);
    let duration = Duration::from_secs_f64(if c.quick { 1.0 } else { 2.0 });
    let gen_cpu = (c.relay_cpu + 1) % ncpu();
    if let Err(e) = crate::procinfo::pin(gen_cpu) {
        eprintln!("matrix: could not pin the generator to CPU {gen_cpu}: {e}");
    }
    let mut results: Vec<Value> = Vec::new();
    let started = std::time::Instant::now();
    if let Some(path) = &c.from_raw {
        // Only rewrite the reports, from an earlier run's raw lines.
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        results = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
    } else {
        let mut raw = std::fs::File::create(&c.raw).map_err(|e| format!("{}: {e}", c.raw))?;
        let mut port = 52_200u16;
        for rep in 0..reps {
            for &n in &sessions {
                for backend in BACKENDS {
                    for target in TARGETS {
                        port = port.wrapping_add(1).max(52_200);
                        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                        let (spawn, null) = if target == "null" {
                            (format!("{} --listen {listen}", c.null), true)
                        } else {
                            (
                            format!(
                                "{} run --listen {listen} --threads 1 --stats-interval 0 --backend {backend} {}",
                                c.wgrelay, c.relay_flags
                            ),
                            false,
                        )
                        };
                        let label = format!("{target}/{backend}/s{n}/r{rep}");
                        eprintln!(
                            "[{:6.1}s] {label}: {spawn}",
                            started.elapsed().as_secs_f64()
                        );
                        let cfg = RunConfig {
                            label: label.clone(),
                            relay: listen,
                            spawn: Some(spawn.clone()),
                            relay_pid: None,
                            relay_cpu: Some(c.relay_cpu),
                            null,
                            sessions: n,
                            addr: AddrMode::Distinct,
                            pktinfo: true,
                            setup: SetupOptions {
                                window: 512,
                                rate: 0.0,
                                timeout: Duration::from_millis(1000),
                                attempts: 10,
                                deadline: Duration::from_secs(60),
                                hello: null,
                                index_base: (port as u32) << 8,
                                progress: false,
                            },
                            sizes: SIZES.to_vec(),
                            rates: RATES.to_vec(),
                            duration,
                            drain: Duration::from_millis(300),
                            both: true,
                            gso: 1,
                            gro: false,
                            buffer: 8 << 20,
                            progress: false,
                            note: spawn,
                        };
                        match run::execute(&cfg) {
                            Ok(mut v) => {
                                v["backend"] = backend.into();
                                v["rep"] = rep.into();
                                eprint!("{}", run::summary(&v));
                                let _ = writeln!(raw, "{v}");
                                results.push(v);
                            }
                            Err(e) => eprintln!("{label}: FAILED: {e}"),
                        }
                    }
                }
            }
        }
    }
    let mut md = report(c, &results, &sessions, reps, duration, gen_cpu);
    // Hand-written notes below the marker survive a regeneration.
    if let Some(tail) = std::fs::read_to_string(&c.out)
        .ok()
        .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_string()))
    {
        md.push('\n');
        md.push_str(&tail);
    }
    std::fs::write(&c.out, md).map_err(|e| format!("{}: {e}", c.out))?;
    plot(&c.svg, &results, &sessions).map_err(|e| format!("{}: {e}", c.svg))?;
    eprintln!(
        "wrote {} and {} in {:.0} s",
        c.out,
        c.svg,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Values of `field` (a JSON pointer into a phase) over repetitions of one point.
fn phase_values(
    results: &[Value],
    backend: &str,
    target: &str,
    n: usize,
    size: usize,
    rate: &str,
    field: &str,
) -> Vec<f64> {
    results
        .iter()
        .filter(|v| v["backend"] == backend && v["target"] == target)
        .filter(|v| v["sessions"].as_u64() == Some(n as u64))
        .flat_map(|v| v["phases"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["size"].as_u64() == Some(size as u64) && p["rate"] == rate)
        .filter_map(|p| p.pointer(field).and_then(Value::as_f64))
        .collect()
}

/// The backend the set-up table, the targets and the plot report (the relay's default).
const MAIN_BACKEND: &str = "mmsg";

fn run_values(results: &[Value], target: &str, n: usize, field: &str) -> Vec<f64> {
    results
        .iter()
        .filter(|v| v["backend"] == MAIN_BACKEND && v["target"] == target)
        .filter(|v| v["sessions"].as_u64() == Some(n as u64))
        .filter_map(|v| v.pointer(field).and_then(Value::as_f64))
        .collect()
}

fn med(v: Vec<f64>) -> Option<f64> {
    let mut v = v;
    stats(&mut v).map(|s| s.0)
}

fn report(
    c: &MatrixConfig,
    results: &[Value],
    sessions: &[usize],
    reps: usize,
    duration: Duration,
    gen_cpu: usize,
) -> String {
    let mut md = String::new();
    let rate_name = |r: Option<f64>| match r {
        Some(r) => format!("{}k", r / 1000.0),
        None => "max".to_string(),
    };
    let _ = writeln!(md, "# wgrelay benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `wgrelay-loadgen matrix` (see [How](#how) for the exact commands). Issue 4.\n"
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "- kernel: `{}`", sh("uname", &["-srvm"]));
    let _ = writeln!(md, "- CPU: {} × {}", ncpu(), cpu_model());
    let _ = writeln!(md, "- date: {}", sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]));
    let _ = writeln!(
        md,
        "- commit: `{}`",
        sh("git", &["rev-parse", "--short", "HEAD"])
    );
    let _ = writeln!(
        md,
        "- relay pinned to CPU {}, generator to CPU {gen_cpu}; everything on loopback. **The machine is a shared, noisy VM** (another engineer compiles on it at the same time): read the min–max ranges, not just the medians.\n",
        c.relay_cpu
    );
    let _ = writeln!(md, "## How\n");
    let _ = writeln!(
        md,
        "```sh\n{}\n```\n",
        if c.command.is_empty() {
            "scripts/bench.sh"
        } else {
            &c.command
        }
    );
    let _ = writeln!(md, "Each run (relay spawned by the generator):\n");
    let _ = writeln!(
        md,
        "```sh\nwgrelay-loadgen run --spawn \"{} run --listen 127.0.0.1:PORT --threads 1 --stats-interval 0 {}\" --relay 127.0.0.1:PORT --relay-cpu {} --cpu {gen_cpu} --sessions N --size 64,1420 --rate 100k,max --duration {} --direction both\nwgrelay-loadgen run --spawn \"{} --listen 127.0.0.1:PORT\" --null --relay 127.0.0.1:PORT --relay-cpu {} --cpu {gen_cpu} --sessions N --size 64,1420 --rate 100k,max --duration {} --direction both\n```\n",
        c.wgrelay,
        c.relay_flags,
        c.relay_cpu,
        duration.as_secs_f64(),
        c.null,
        c.relay_cpu,
        duration.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- Sessions are real WireGuard handshakes (boringtun) through the relay, each peer on its own 127.64.x.y address (one IP_PKTINFO socket), then synthetic transport packets (valid header, our timestamp and sequence in the payload) in both directions, round-robin over sessions, open loop at the offered rate (`max`: back to back). {reps} repetition(s) per point, {} s per phase; values are median (min–max).",
        duration.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "- wgrelay runs with `{}`: no cookie challenge and no fan-out rate limit, so set-up measures the routing core, not the admission delays (with the defaults, under-load cookies and the 1000 copies/s fan-out budget dominate; see below).",
        c.relay_flags
    );
    let _ = writeln!(
        md,
        "- CPU/packet = relay CPU time (sum of `/proc/PID/task/*/schedstat`, i.e. user+system, ~utime+stime) during the phase ÷ packets delivered. Loopback delivery to the receiving socket is charged to the sender, so both relays pay for delivering to the generator.\n- Backend axis: wgrelay `--backend mmsg` and `--backend uring` (no GSO/GRO in either yet); the null relay is the same recvmmsg/sendmmsg loop without routing, measured again beside each backend.\n"
    );

    let _ = writeln!(md, "## Datapath\n");
    let _ = writeln!(
        md,
        "| backend | sessions | size | rate | target | delivered pps | Mbit/s | loss % | p50 µs | p99 µs | relay ns/pkt | wgrelay/null ns/pkt |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for backend in BACKENDS {
        for &n in sessions {
            for size in SIZES {
                for rate in RATES {
                    let rn = rate_name(rate);
                    let ns = |t: &str| {
                        med(phase_values(
                            results,
                            backend,
                            t,
                            n,
                            size,
                            &rn,
                            "/relay_cpu_ns_per_pkt_sched",
                        ))
                    };
                    let ratio = match (ns("wgrelay"), ns("null")) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                        _ => "–".into(),
                    };
                    for t in TARGETS {
                        let g = |f: &str, d: usize| {
                            fmt3(
                                stats(&mut phase_values(results, backend, t, n, size, &rn, f)),
                                d,
                            )
                        };
                        let _ = writeln!(
                            md,
                            "| {backend} | {n} | {size} | {rn} | {t} | {} | {} | {} | {} | {} | {} | {} |",
                            g("/pps", 0),
                            g("/mbps", 0),
                            g("/loss_pct", 2),
                            g("/lat_us/p50", 0),
                            g("/lat_us/p99", 0),
                            g("/relay_cpu_ns_per_pkt_sched", 0),
                            if t == "wgrelay" { ratio.as_str() } else { "" }
                        );
                    }
                }
            }
        }
    }
    let _ = writeln!(
        md,
        "\n![relay CPU per packet and delivered rate](benchmarks.svg)\n"
    );

    let _ = writeln!(md, "## Session set-up and memory\n");
    let _ = writeln!(
        md,
        "| sessions | target | set-up s (all ready) | p50 s | sessions/s | retries | generator CPU s | relay CPU s | relay RSS bytes/session |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for &n in sessions {
        for t in TARGETS {
            let g = |f: &str, d: usize| fmt3(stats(&mut run_values(results, t, n, f)), d);
            let _ = writeln!(
                md,
                "| {n} | {t} | {} | {} | {} | {} | {} | {} | {} |",
                g("/setup/seconds", 2),
                g("/setup/p50_s", 2),
                g("/setup/sessions_per_s", 0),
                g("/setup/retries", 0),
                g("/setup/generator_cpu_s", 2),
                g("/relay_setup_cpu_s", 2),
                g("/relay_rss_per_session", 0)
            );
        }
    }

    let _ = writeln!(md, "\n## Against the targets\n");
    let ns_at = |t: &str, n: usize, size: usize, r: &str| {
        med(phase_values(
            results,
            MAIN_BACKEND,
            t,
            n,
            size,
            r,
            "/relay_cpu_ns_per_pkt_sched",
        ))
    };
    for &n in sessions {
        for size in SIZES {
            if let (Some(a), Some(b)) = (
                ns_at("wgrelay", n, size, "100k"),
                ns_at("null", n, size, "100k"),
            ) {
                let _ = writeln!(
                    md,
                    "- relay CPU/packet ≤ 1.0× null at 100k pps — {n} sessions, {size} B: {a:.0} vs {b:.0} ns = **{:.2}×** ({})",
                    a / b,
                    if a <= b { "met" } else { "missed" }
                );
            }
        }
    }
    if let Some(&big) = sessions.iter().max() {
        if let Some(s) = med(run_values(results, "wgrelay", big, "/setup/seconds")) {
            let _ = writeln!(
                md,
                "- {big} distinct-address sessions set up in ≤ 10 s: **{s:.1} s** ({}); the generator's own boringtun CPU in the same run: {:.1} s, the null relay's set-up: {:.1} s",
                if s <= 10.0 { "met" } else { "missed" },
                med(run_values(results, "wgrelay", big, "/setup/generator_cpu_s")).unwrap_or(f64::NAN),
                med(run_values(results, "null", big, "/setup/seconds")).unwrap_or(f64::NAN)
            );
        }
        if let Some(r) = med(run_values(
            results,
            "wgrelay",
            big,
            "/relay_rss_per_session",
        )) {
            let _ = writeln!(
                md,
                "- ≤ 256 bytes relay memory per session: **{r:.0} bytes** at {big} sessions ({})",
                if r <= 256.0 { "met" } else { "missed" }
            );
        }
        let smallest = sessions.iter().min().copied().unwrap_or(1);
        for size in SIZES {
            if let (Some(a), Some(b)) = (
                ns_at("wgrelay", big, size, "100k"),
                ns_at("wgrelay", smallest, size, "100k"),
            ) {
                let _ = writeln!(
                    md,
                    "- cost at many sessions ≤ 1.1× cost at 1 session ({size} B, 100k pps): {big} vs {smallest}: {a:.0} vs {b:.0} ns = **{:.2}×** ({}; the matrix stops at {big}, see the notes for 100k)",
                    a / b,
                    if a <= 1.1 * b { "met" } else { "missed" }
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\nRaw JSON lines of every run: `{}` (not committed).",
        c.raw
    );
    md
}

fn plot(path: &str, results: &[Value], sessions: &[usize]) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(500);
    let xs: Vec<(usize, usize)> = sessions.iter().copied().enumerate().collect();
    let colors = [RED, BLUE, MAGENTA, CYAN];
    for (area, title, rate, field) in [
        (
            &left,
            "relay CPU ns/packet at 100k pps",
            "100k",
            "/relay_cpu_ns_per_pkt_sched",
        ),
        (&right, "delivered kpps at max rate", "max", "/pps"),
    ] {
        let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut ymax: f64 = 1.0;
        for t in TARGETS {
            for size in SIZES {
                for &(i, n) in &xs {
                    if let Some(mut v) =
                        med(phase_values(results, MAIN_BACKEND, t, n, size, rate, field))
                    {
                        if field == "/pps" {
                            v /= 1000.0;
                        }
                        ymax = ymax.max(v);
                        series
                            .entry(format!("{t} {size} B"))
                            .or_default()
                            .push((i as f64, v));
                    }
                }
            }
        }
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.3f64..(xs.len() as f64 - 0.7), 0f64..ymax * 1.15)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(xs.len())
            .x_label_formatter(&|x| {
                let i = x.round() as usize;
                sessions
                    .get(i)
                    .map(|n| format!("{n} sessions"))
                    .unwrap_or_default()
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (k, (name, pts)) in series.into_iter().enumerate() {
            let color = colors[k % colors.len()];
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
