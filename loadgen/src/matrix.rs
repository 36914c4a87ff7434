//! The benchmark matrix: wgrelay vs the null relay, repeated, with medians (min–max) and
//! wgrelay/null ratios; writes a Markdown report and an SVG plot. Three sections, each
//! selectable (`--sections`):
//!
//! - `datapath`: per-datagram traffic over backend (mmsg, uring) x sessions x size x rate,
//!   wgrelay vs the per-datagram null relay; also gives the set-up and memory table.
//! - `gso`: the generator sends UDP GSO runs and receives with GRO; wgrelay `--gso on --gro on`
//!   on both backends vs the coalescing null relay (`wgrelay-null --gro`) and the per-datagram
//!   null relay, at each segment count.
//! - `shards`: wgrelay `--threads 1` (pinned to one CPU) vs `--threads 2` (on every CPU, so
//!   one shard shares a CPU with the generator), per-datagram traffic over many sessions.
//!
//! One run per (repetition, section, point): the relay is spawned, the generator runs pinned
//! to another CPU, sessions are set up once and every (size, rate) phase runs over them.
//! Repetitions are the outer loop and targets alternate within one, so slow drifts of a noisy
//! machine hit every target alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde_json::{json, Value};

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
    /// Session counts of the datapath section.
    pub sessions: Option<Vec<usize>>,
    pub reps: Option<usize>,
    pub command: String,
    /// Sections to run (None: all of [`SECTIONS`]; with `from_raw`: those in the raw lines).
    pub sections: Option<Vec<String>>,
    /// GSO segments per send of the gso section.
    pub gso_segments: Option<Vec<usize>>,
    /// Sessions of the shards section.
    pub shard_sessions: Option<usize>,
}

/// Everything after this line in the report is kept when the matrix rewrites it.
pub const NOTES_MARKER: &str = "<!-- notes: kept across regenerations -->";
/// The report's sections, in running and reporting order.
pub const SECTIONS: [&str; 3] = ["datapath", "gso", "shards"];
const TARGETS: [&str; 2] = ["wgrelay", "null"];
/// The I/O backend axis (`wgrelay --backend`). The null relay has no backend choice; it runs
/// once per backend anyway, so each backend's ratio uses a baseline measured right beside it.
const BACKENDS: [&str; 2] = ["mmsg", "uring"];
const SIZES: [usize; 2] = [64, 1420];
const RATES: [Option<f64>; 2] = [Some(100_000.0), None];
const RATE_NAMES: [&str; 2] = ["100k", "max"];
/// The backend the set-up table, the shards section, the targets and the plot use.
const MAIN_BACKEND: &str = "mmsg";
/// Sessions of the gso section: coalescing is per flow, one session (two flows) shows it.
const GSO_SESSIONS: usize = 1;
/// The gso section's variants: (target, variant, what the report calls it).
const GSO_VARIANTS: [(&str, &str, &str); 4] = [
    ("wgrelay", "mmsg", "wgrelay mmsg"),
    ("null", "gro", "null, coalescing"),
    ("wgrelay", "uring", "wgrelay uring"),
    ("null", "plain", "null, per-datagram"),
];
/// The shards section's variants (wgrelay `--threads`).
const SHARD_VARIANTS: [&str; 2] = ["t1", "t2"];
/// The wgrelay-null target of the issue's GSO goal: wgrelay ≤ this × the coalescing null.
const GSO_TARGET: f64 = 1.2;
/// Where the relay listens; the port is filled in per run.
const LISTEN: &str = "127.0.0.1:PORT";

fn ncpu() -> usize {
    // Not available_parallelism: that follows this thread's affinity, pinned to one CPU.
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
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

/// The machine and the tree, recorded on every raw line so `--from-raw` reports the run's.
fn machine() -> Value {
    json!({
        "kernel": sh("uname", &["-srvm"]),
        "cpus": ncpu(),
        "cpu": cpu_model(),
        "date": sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "commit": sh("git", &["describe", "--always", "--dirty", "--abbrev=7"]),
    })
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

fn med(v: Vec<f64>) -> Option<f64> {
    let mut v = v;
    stats(&mut v).map(|s| s.0)
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}"))
}

/// Datagrams per GSO send the generator really uses (a send carries at most 64 segments and
/// 65 507 bytes; see `traffic::run`).
fn effective_segments(segments: usize, size: usize) -> usize {
    segments.clamp(
        1,
        (crate::net::MAX_UDP_PAYLOAD / size).min(crate::net::MAX_GSO_SEGMENTS),
    )
}

/// What one matrix covers (from the flags, or read back from raw lines).
struct Plan {
    sections: Vec<&'static str>,
    /// Datapath session counts.
    sessions: Vec<usize>,
    segments: Vec<usize>,
    shard_sessions: usize,
    reps: usize,
    duration: f64,
    relay_cpu: usize,
    gen_cpu: usize,
    cpus: usize,
    command: String,
    /// The binaries and wgrelay's extra flags.
    wgrelay: String,
    null: String,
    relay_flags: String,
}

/// One relay configuration the matrix runs (once per repetition).
struct Job {
    target: &'static str,
    /// Tells the runs of one target within a section apart (datapath: the backend; gso: the
    /// backend or the null relay's mode; shards: `t1`/`t2`).
    variant: &'static str,
    /// The relay command, listening on [`LISTEN`].
    spawn: String,
    /// Pin the relay to this CPU (None: it is not pinned by the generator).
    relay_cpu: Option<usize>,
    sessions: usize,
    /// The generator's GSO segments per send (1: none); GRO receive with it.
    gso: usize,
}

fn wgrelay_cmd(p: &Plan, backend: &str, threads: usize, extra: &str) -> String {
    format!(
        "{} run --listen {LISTEN} --threads {threads} --stats-interval 0 --backend {backend}{extra} {}",
        p.wgrelay, p.relay_flags
    )
    .trim_end()
    .to_string()
}

fn jobs(p: &Plan, section: &str) -> Vec<Job> {
    let mut out = Vec::new();
    let null_cmd = |gro: bool| {
        format!(
            "{} --listen {LISTEN}{}",
            p.null,
            if gro { " --gro" } else { "" }
        )
    };
    match section {
        "datapath" => {
            for &n in &p.sessions {
                for backend in BACKENDS {
                    for target in TARGETS {
                        out.push(Job {
                            target,
                            variant: backend,
                            spawn: if target == "null" {
                                null_cmd(false)
                            } else {
                                wgrelay_cmd(p, backend, 1, "")
                            },
                            relay_cpu: Some(p.relay_cpu),
                            sessions: n,
                            gso: 1,
                        });
                    }
                }
            }
        }
        "gso" => {
            for &seg in &p.segments {
                for (target, variant, _) in GSO_VARIANTS {
                    out.push(Job {
                        target,
                        variant,
                        spawn: match variant {
                            "gro" => null_cmd(true),
                            "plain" => null_cmd(false),
                            backend => wgrelay_cmd(p, backend, 1, " --gso on --gro on"),
                        },
                        relay_cpu: Some(p.relay_cpu),
                        sessions: GSO_SESSIONS,
                        gso: seg.max(1),
                    });
                }
            }
        }
        "shards" => {
            for variant in SHARD_VARIANTS {
                let two = variant == "t2";
                out.push(Job {
                    target: "wgrelay",
                    variant,
                    spawn: if two {
                        // Spawned children inherit the generator's CPU; give the relay every
                        // CPU (it pins shard t to the t-th).
                        format!(
                            "taskset -c 0-{} {}",
                            p.cpus.saturating_sub(1),
                            wgrelay_cmd(p, MAIN_BACKEND, 2, "")
                        )
                    } else {
                        wgrelay_cmd(p, MAIN_BACKEND, 1, "")
                    },
                    relay_cpu: if two { None } else { Some(p.relay_cpu) },
                    sessions: p.shard_sessions,
                    gso: 1,
                });
            }
        }
        _ => {}
    }
    out
}

/// An `index_base` for the generator in the shards section, distinct per run (`salt`).
///
/// Peer p's boringtun index is `base + p + 1` (24 bits) and goes on the wire as
/// `index << 8 | n`. wgrelay's steering hashes all four index bytes (`src/io/steer.rs`), so
/// consecutive peers spread over the shards by themselves (an earlier steering function read
/// one byte only, and this base had to straddle a 65 536 boundary to split them).
fn two_shard_base(sessions: usize, salt: u16) -> u32 {
    let half = u32::try_from(sessions.min(1 << 15)).unwrap_or(1 << 15);
    let k = u32::from(salt & 0x7f) + 1;
    (k << 16) - half - 1
}

/// The generator command of one job, as the report shows it (`sessions`, `gso`: what to
/// print for them, e.g. `N`).
fn gen_cmd(p: &Plan, job: &Job, sessions: &str, gso: &str) -> String {
    let sizes: Vec<String> = SIZES.iter().map(ToString::to_string).collect();
    let mut s = format!(
        "wgrelay-loadgen run --spawn \"{}\"{} --relay {LISTEN}{} --cpu {} --sessions {sessions} --size {} --rate {} --duration {} --direction both",
        job.spawn,
        if job.target == "null" { " --null" } else { "" },
        job.relay_cpu.map_or(String::new(), |r| format!(" --relay-cpu {r}")),
        p.gen_cpu,
        sizes.join(","),
        RATE_NAMES.join(","),
        p.duration,
    );
    if job.gso > 1 {
        let _ = write!(s, " --gso {gso} --gro");
    }
    s
}

/// The exact per-run commands of a section, with N (sessions) and S (segments) for the axes.
fn how(p: &Plan, section: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for job in jobs(p, section) {
        let n = if section == "datapath" {
            "N".to_string()
        } else {
            job.sessions.to_string()
        };
        let l = gen_cmd(p, &job, &n, "S");
        if !lines.contains(&l) {
            lines.push(l);
        }
    }
    format!("```sh\n{}\n```\n", lines.join("\n"))
}

fn section_of(v: &Value) -> &str {
    v["section"].as_str().unwrap_or("datapath")
}

/// Raw lines from before the sections existed carry only `backend`.
fn variant_of(v: &Value) -> &str {
    v["variant"]
        .as_str()
        .or_else(|| v["backend"].as_str())
        .unwrap_or("")
}

/// One point's runs: section, target, variant, sessions and GSO segments.
#[derive(Clone, Copy)]
struct Pick<'a> {
    section: &'a str,
    target: &'a str,
    variant: &'a str,
    sessions: usize,
    gso: usize,
}

impl Pick<'_> {
    fn runs<'v>(&self, results: &'v [Value]) -> Vec<&'v Value> {
        results
            .iter()
            .filter(|v| {
                section_of(v) == self.section
                    && v["target"] == self.target
                    && variant_of(v) == self.variant
                    && v["sessions"].as_u64() == Some(self.sessions as u64)
                    && v["gso"].as_u64().unwrap_or(1) == self.gso as u64
            })
            .collect()
    }

    /// Values of `field` (a JSON pointer into a run) over repetitions.
    fn run_values(&self, results: &[Value], field: &str) -> Vec<f64> {
        self.runs(results)
            .into_iter()
            .filter_map(|v| v.pointer(field).and_then(Value::as_f64))
            .collect()
    }

    /// Values of `field` (a JSON pointer into a phase) over repetitions.
    fn values(&self, results: &[Value], size: usize, rate: &str, field: &str) -> Vec<f64> {
        self.runs(results)
            .into_iter()
            .flat_map(|v| v["phases"].as_array().cloned().unwrap_or_default())
            .filter(|ph| ph["size"].as_u64() == Some(size as u64) && ph["rate"] == rate)
            .filter_map(|ph| ph.pointer(field).and_then(Value::as_f64))
            .collect()
    }

    fn med(&self, results: &[Value], size: usize, rate: &str, field: &str) -> Option<f64> {
        med(self.values(results, size, rate, field))
    }

    fn fmt(&self, results: &[Value], size: usize, rate: &str, field: &str, d: usize) -> String {
        fmt3(stats(&mut self.values(results, size, rate, field)), d)
    }
}

const NS: &str = "/relay_cpu_ns_per_pkt_sched";

/// Sorted distinct values of `field` over a section's runs.
fn distinct(results: &[Value], section: &str, field: &str) -> Vec<usize> {
    let mut v: Vec<usize> = results
        .iter()
        .filter(|r| section_of(r) == section)
        .filter_map(|r| r[field].as_u64().map(|x| x as usize))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn plan(c: &MatrixConfig, results: &[Value]) -> Result<Plan, String> {
    let from_raw = c.from_raw.is_some();
    let first = results.first();
    let sections: Vec<&'static str> = match &c.sections {
        Some(want) => {
            let mut out = Vec::new();
            for w in want {
                match SECTIONS.iter().find(|s| **s == w.trim()) {
                    Some(s) => out.push(*s),
                    None => {
                        return Err(format!(
                            "unknown section {w:?}: want some of {}",
                            SECTIONS.join(",")
                        ))
                    }
                }
            }
            SECTIONS.into_iter().filter(|s| out.contains(s)).collect()
        }
        None if from_raw => SECTIONS
            .into_iter()
            .filter(|s| results.iter().any(|v| section_of(v) == *s))
            .collect(),
        None => SECTIONS.to_vec(),
    };
    let raw_or = |found: Vec<usize>, dflt: Vec<usize>| {
        if from_raw && !found.is_empty() {
            found
        } else {
            dflt
        }
    };
    let sessions = raw_or(
        distinct(results, "datapath", "sessions"),
        c.sessions.clone().unwrap_or_else(|| {
            if c.quick {
                vec![1, 1000]
            } else {
                vec![1, 1000, 10_000]
            }
        }),
    );
    let segments = raw_or(
        distinct(results, "gso", "gso"),
        c.gso_segments.clone().unwrap_or_else(|| vec![16, 64]),
    );
    let shard_sessions = raw_or(
        distinct(results, "shards", "sessions"),
        vec![c.shard_sessions.unwrap_or(1000)],
    )[0];
    let reps = if from_raw {
        results
            .iter()
            .filter_map(|v| v["rep"].as_u64())
            .max()
            .map_or(1, |r| r as usize + 1)
    } else {
        c.reps.unwrap_or(if c.quick { 1 } else { 3 }).max(1)
    };
    // With --from-raw, what the run recorded (older raw lines lack it: the flags' values).
    let rec = first
        .filter(|_| from_raw)
        .map_or(Value::Null, |v| v["matrix"].clone());
    let rs = |k: &str, dflt: &str| rec[k].as_str().unwrap_or(dflt).to_string();
    let ru = |k: &str, dflt: usize| rec[k].as_u64().map_or(dflt, |x| x as usize);
    let cpus = first
        .filter(|_| from_raw)
        .and_then(|v| v["machine"]["cpus"].as_u64())
        .map_or_else(ncpu, |n| n as usize);
    let relay_cpu = ru("relay_cpu", c.relay_cpu);
    let command = rs("command", &c.command);
    Ok(Plan {
        sections,
        sessions,
        segments,
        shard_sessions,
        reps,
        duration: rec["phase_s"]
            .as_f64()
            .unwrap_or(if c.quick { 1.0 } else { 2.0 }),
        relay_cpu,
        gen_cpu: ru("gen_cpu", (relay_cpu + 1) % cpus),
        cpus,
        command: if command.is_empty() {
            "scripts/bench.sh".into()
        } else {
            command
        },
        wgrelay: rs("wgrelay", &c.wgrelay),
        null: rs("null", &c.null),
        relay_flags: rs("relay_flags", &c.relay_flags),
    })
}

/// Runs the matrix (or reads `from_raw`) and writes the reports.
///
/// # Errors
/// A bad flag, the raw file or a report could not be read or written.
pub fn run(c: &MatrixConfig) -> Result<(), String> {
    let started = std::time::Instant::now();
    let mut results: Vec<Value> = Vec::new();
    if let Some(path) = &c.from_raw {
        // Only rewrite the reports, from an earlier run's raw lines.
        let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        results = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
    }
    let p = plan(c, &results)?;
    if c.from_raw.is_none() {
        if let Err(e) = crate::procinfo::pin(p.gen_cpu) {
            eprintln!(
                "matrix: could not pin the generator to CPU {}: {e}",
                p.gen_cpu
            );
        }
        let machine = machine();
        let duration = Duration::from_secs_f64(p.duration);
        let mut raw = std::fs::File::create(&c.raw).map_err(|e| format!("{}: {e}", c.raw))?;
        let mut port = 52_200u16;
        for rep in 0..p.reps {
            for &section in &p.sections {
                for job in jobs(&p, section) {
                    port = port.wrapping_add(1).max(52_200);
                    let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
                    let spawn = job.spawn.replace(LISTEN, &listen.to_string());
                    let null = job.target == "null";
                    let label = format!(
                        "{section}/{}/{}/s{}/g{}/r{rep}",
                        job.target, job.variant, job.sessions, job.gso
                    );
                    eprintln!(
                        "[{:6.1}s] {label}: {spawn}",
                        started.elapsed().as_secs_f64()
                    );
                    let cfg = RunConfig {
                        label: label.clone(),
                        relay: listen,
                        spawn: Some(spawn.clone()),
                        relay_pid: None,
                        relay_cpu: job.relay_cpu,
                        null,
                        sessions: job.sessions,
                        addr: AddrMode::Distinct,
                        pktinfo: true,
                        setup: SetupOptions {
                            window: 512,
                            rate: 0.0,
                            timeout: Duration::from_millis(1000),
                            attempts: 10,
                            deadline: Duration::from_secs(60),
                            hello: null,
                            index_base: if section == "shards" {
                                two_shard_base(job.sessions, port)
                            } else {
                                u32::from(port) << 8
                            },
                            progress: false,
                        },
                        sizes: SIZES.to_vec(),
                        rates: RATES.to_vec(),
                        duration,
                        drain: Duration::from_millis(300),
                        both: true,
                        gso: job.gso,
                        gro: job.gso > 1,
                        buffer: 8 << 20,
                        progress: false,
                        note: spawn,
                    };
                    match run::execute(&cfg) {
                        Ok(mut v) => {
                            v["section"] = section.into();
                            v["variant"] = job.variant.into();
                            if job.target == "wgrelay" || section == "datapath" {
                                v["backend"] = match job.variant {
                                    "t1" | "t2" => MAIN_BACKEND,
                                    b => b,
                                }
                                .into();
                            }
                            v["rep"] = rep.into();
                            v["matrix"] = json!({
                                "phase_s": p.duration,
                                "relay_cpu": p.relay_cpu,
                                "gen_cpu": p.gen_cpu,
                                "command": p.command,
                                "wgrelay": p.wgrelay,
                                "null": p.null,
                                "relay_flags": p.relay_flags,
                            });
                            v["machine"] = machine.clone();
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
    let mut md = report(c, &p, &results);
    // Hand-written notes below the marker survive a regeneration.
    if let Some(tail) = std::fs::read_to_string(&c.out)
        .ok()
        .and_then(|old| old.find(NOTES_MARKER).map(|i| old[i..].to_string()))
    {
        md.push('\n');
        md.push_str(&tail);
    }
    std::fs::write(&c.out, md).map_err(|e| format!("{}: {e}", c.out))?;
    if p.sections.contains(&"datapath") && has_datapath(&results) {
        plot(&c.svg, &results, &p.sessions).map_err(|e| format!("{}: {e}", c.svg))?;
        eprintln!("wrote {} and {}", c.out, c.svg);
    } else {
        eprintln!(
            "wrote {} (no datapath runs: {} left as it was)",
            c.out, c.svg
        );
    }
    eprintln!("matrix took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn has_datapath(results: &[Value]) -> bool {
    results.iter().any(|v| section_of(v) == "datapath")
}

/// What wgrelay itself logged about its backend and offloads in a section's runs (distinct).
fn relay_said(results: &[Value], section: &str, variant: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in results
        .iter()
        .filter(|v| section_of(v) == section && variant_of(v) == variant)
    {
        if let Some(s) = v["relay_backend"].as_str() {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        }
    }
    out
}

fn said_line(results: &[Value], section: &str, variants: &[&str]) -> String {
    let mut parts = Vec::new();
    for v in variants {
        for s in relay_said(results, section, v) {
            parts.push(format!("`{s}`"));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("wgrelay's own start-up line: {}\n\n", parts.join("; "))
    }
}

fn report(c: &MatrixConfig, p: &Plan, results: &[Value]) -> String {
    let mut md = String::new();
    let m = results
        .iter()
        .find_map(|v| v.get("machine").filter(|m| m.is_object()))
        .cloned()
        .unwrap_or_else(machine);
    let ms = |k: &str| m[k].as_str().unwrap_or("?").to_string();
    let has = |s: &str| p.sections.contains(&s);
    let _ = writeln!(md, "# wgrelay benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `wgrelay-loadgen matrix` (see [How](#how) and each section for the exact commands). Issues 4 and 5. Every ratio below comes from this one run of the matrix.\n"
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "- kernel: `{}`", ms("kernel"));
    let _ = writeln!(md, "- CPU: {} × {}", m["cpus"], ms("cpu"));
    let _ = writeln!(md, "- date: {}", ms("date"));
    let _ = writeln!(md, "- commit: `{}`", ms("commit"));
    let _ = writeln!(
        md,
        "- relay pinned to CPU {}, generator to CPU {} (the 2-shard runs excepted, see [Shards](#shards)); everything on loopback. **The machine is a shared, noisy VM**: read the min–max ranges, not just the medians.\n",
        p.relay_cpu, p.gen_cpu
    );

    let _ = writeln!(md, "## How\n");
    let _ = writeln!(md, "```sh\n{}\n```\n", p.command);
    let _ = writeln!(
        md,
        "Sections in this run: {} (`--sections`). Each section lists the exact per-run commands: the generator spawns the relay (`PORT` is a fresh port per run) and stops it after the run.\n",
        p.sections
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "- Sessions are real WireGuard handshakes (boringtun) through the relay, each peer on its own 127.64.x.y address (one IP_PKTINFO socket), then synthetic transport packets (valid header, our timestamp and sequence in the payload) in both directions, round-robin over sessions, open loop at the offered rate in datagrams/s (`max`: back to back). {} repetition(s) per point (repetitions are the outer loop), {} s per phase; values are median (min–max).",
        p.reps, p.duration
    );
    let _ = writeln!(
        md,
        "- wgrelay runs with `{}`: no cookie challenge, so set-up measures the routing core, not the admission delays.",
        p.relay_flags
    );
    let _ = writeln!(
        md,
        "- CPU/packet = relay CPU time (sum of `/proc/PID/task/*/schedstat` over all its threads, i.e. user+system) during the phase ÷ packets delivered. Loopback delivery to the receiving socket is charged to the sender, so both relays pay for delivering to the generator.\n"
    );

    if has("datapath") {
        datapath_section(&mut md, p, results);
    }
    if has("gso") {
        gso_section(&mut md, p, results);
    }
    if has("shards") {
        shards_section(&mut md, p, results);
    }
    targets_section(&mut md, p, results);
    let _ = writeln!(
        md,
        "\nRaw JSON lines of every run: `{}` (not committed); `wgrelay-loadgen matrix --from-raw {}` rewrites this report from them.",
        c.raw, c.raw
    );
    md
}

fn datapath_section(md: &mut String, p: &Plan, results: &[Value]) {
    let _ = writeln!(md, "## Datapath\n");
    let _ = writeln!(
        md,
        "Per-datagram traffic: the generator sends one datagram per send and receives without GRO. wgrelay `--threads 1` on each backend (`--backend mmsg`, `--backend uring`) with its default offloads (`--gso on --gro on`: it may coalesce what it sends to one destination); the null relay is a recvmmsg/sendmmsg loop without routing, one datagram at a time, measured again beside each backend. Sessions: {}.\n",
        p.sessions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    md.push_str(&how(p, "datapath"));
    md.push('\n');
    md.push_str(&said_line(results, "datapath", &BACKENDS));
    let _ = writeln!(
        md,
        "| backend | sessions | size | rate | target | delivered pps | Mbit/s | loss % | p50 µs | p99 µs | relay ns/pkt | wgrelay/null ns/pkt |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for backend in BACKENDS {
        for &n in &p.sessions {
            for size in SIZES {
                for rn in RATE_NAMES {
                    let pick = |target| Pick {
                        section: "datapath",
                        target,
                        variant: backend,
                        sessions: n,
                        gso: 1,
                    };
                    let r = ratio(
                        pick("wgrelay").med(results, size, rn, NS),
                        pick("null").med(results, size, rn, NS),
                    );
                    for t in TARGETS {
                        let k = pick(t);
                        let _ = writeln!(
                            md,
                            "| {backend} | {n} | {size} | {rn} | {t} | {} | {} | {} | {} | {} | {} | {} |",
                            k.fmt(results, size, rn, "/pps", 0),
                            k.fmt(results, size, rn, "/mbps", 0),
                            k.fmt(results, size, rn, "/loss_pct", 2),
                            k.fmt(results, size, rn, "/lat_us/p50", 0),
                            k.fmt(results, size, rn, "/lat_us/p99", 0),
                            k.fmt(results, size, rn, NS, 0),
                            if t == "wgrelay" { fmt_ratio(r) } else { String::new() }
                        );
                    }
                }
            }
        }
    }
    if has_datapath(results) {
        let _ = writeln!(
            md,
            "\n![relay CPU per packet and delivered rate (mmsg)](benchmarks.svg)\n"
        );
    }

    let _ = writeln!(md, "### Session set-up and memory\n");
    let _ = writeln!(
        md,
        "From the datapath runs with `--backend {MAIN_BACKEND}`.\n"
    );
    let _ = writeln!(
        md,
        "| sessions | target | set-up s (all ready) | p50 s | sessions/s | retries | generator CPU s | relay CPU s | relay RSS bytes/session |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for &n in &p.sessions {
        for t in TARGETS {
            let k = Pick {
                section: "datapath",
                target: t,
                variant: MAIN_BACKEND,
                sessions: n,
                gso: 1,
            };
            let g = |f: &str, d: usize| fmt3(stats(&mut k.run_values(results, f)), d);
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
    md.push('\n');
}

fn gso_pick(variant: &str, segments: usize) -> Pick<'_> {
    Pick {
        section: "gso",
        target: if variant == "gro" || variant == "plain" {
            "null"
        } else {
            "wgrelay"
        },
        variant,
        sessions: GSO_SESSIONS,
        gso: segments,
    }
}

fn seg_label(segments: usize, size: usize) -> String {
    let e = effective_segments(segments, size);
    if e == segments {
        segments.to_string()
    } else {
        format!("{segments} (→ {e})")
    }
}

fn gso_section(md: &mut String, p: &Plan, results: &[Value]) {
    let _ = writeln!(md, "## GSO/GRO traffic\n");
    let _ = writeln!(
        md,
        "The generator sends each flow's datagrams as UDP GSO runs of S segments (`--gso S`) and receives with UDP GRO (`--gro`), as wireguard-go does; {GSO_SESSIONS} session (two flows). A send carries at most 64 segments and 64 KiB, so at 1420 B 64 segments become {} (shown as `64 (→ {})`). Rates count datagrams, not sends. Relays, all `--threads 1` / pinned like the datapath:\n",
        effective_segments(64, 1420),
        effective_segments(64, 1420)
    );
    let _ = writeln!(
        md,
        "- **wgrelay mmsg / uring**: `--backend mmsg|uring --gso on --gro on` (takes GRO runs in, routes each datagram, sends runs to one destination as one GSO send);\n- **null, coalescing**: `wgrelay-null --gro` — takes each GRO run in and sends it out as ONE UDP_SEGMENT send, no parsing: the floor for a coalescing relay;\n- **null, per-datagram**: `wgrelay-null` — the kernel splits each run on receive and the null relay sends datagram by datagram: what a relay without GSO/GRO costs at the same traffic.\n\nOne null run of each kind per segment count and repetition serves both backends' ratios.\n"
    );
    md.push_str(&how(p, "gso"));
    md.push('\n');
    md.push_str(&said_line(results, "gso", &BACKENDS));
    let _ = writeln!(
        md,
        "| segments | size | rate | wgrelay mmsg ns/pkt | wgrelay uring ns/pkt | null coalescing ns/pkt | null per-datagram ns/pkt | mmsg ÷ coalescing null | uring ÷ coalescing null | coalescing ÷ per-datagram null |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for &seg in &p.segments {
        for size in SIZES {
            for rn in RATE_NAMES {
                let ns = |v: &'static str| gso_pick(v, seg).med(results, size, rn, NS);
                let f = |v: &'static str| gso_pick(v, seg).fmt(results, size, rn, NS, 0);
                let target_mark = |r: Option<f64>| match r {
                    Some(x) if x <= GSO_TARGET => format!("**{x:.2}** ✓"),
                    Some(x) => format!("**{x:.2}** ✗"),
                    None => "–".into(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {size} | {rn} | {} | {} | {} | {} | {} | {} | {} |",
                    seg_label(seg, size),
                    f("mmsg"),
                    f("uring"),
                    f("gro"),
                    f("plain"),
                    target_mark(ratio(ns("mmsg"), ns("gro"))),
                    target_mark(ratio(ns("uring"), ns("gro"))),
                    fmt_ratio(ratio(ns("gro"), ns("plain")))
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\n✓/✗: the issue's target, wgrelay ≤ {GSO_TARGET}× the coalescing null relay's CPU per packet.\n"
    );
    let _ = writeln!(
        md,
        "| segments | size | rate | relay | delivered pps | Mbit/s | loss % | p50 µs | p99 µs | relay CPU % | relay ns/pkt |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for &seg in &p.segments {
        for size in SIZES {
            for rn in RATE_NAMES {
                for (_, variant, name) in GSO_VARIANTS {
                    let k = gso_pick(variant, seg);
                    let _ = writeln!(
                        md,
                        "| {} | {size} | {rn} | {name} | {} | {} | {} | {} | {} | {} | {} |",
                        seg_label(seg, size),
                        k.fmt(results, size, rn, "/pps", 0),
                        k.fmt(results, size, rn, "/mbps", 0),
                        k.fmt(results, size, rn, "/loss_pct", 2),
                        k.fmt(results, size, rn, "/lat_us/p50", 0),
                        k.fmt(results, size, rn, "/lat_us/p99", 0),
                        k.fmt(results, size, rn, "/relay_cpu_pct", 0),
                        k.fmt(results, size, rn, NS, 0),
                    );
                }
            }
        }
    }
    md.push('\n');
}

fn shard_pick(variant: &str, sessions: usize) -> Pick<'_> {
    Pick {
        section: "shards",
        target: "wgrelay",
        variant,
        sessions,
        gso: 1,
    }
}

fn shards_section(md: &mut String, p: &Plan, results: &[Value]) {
    let n = p.shard_sessions;
    let _ = writeln!(md, "## Shards\n");
    let _ = writeln!(
        md,
        "wgrelay `--backend {MAIN_BACKEND}`, per-datagram traffic over {n} sessions. The relay steers each packet in the kernel to the shard that owns its receiver index (a hash of all four index bytes), and that shard forwards transport from its own session table; the generator's consecutively numbered indices spread over both shards (the relay's final counters show `off_owner=0 handoffs=0`). **1 shard**: `--threads 1` pinned to CPU {} (the generator on CPU {}), as in the other sections. **2 shards**: `--threads 2` on CPUs 0–{} (`taskset`; the relay pins shard t to the t-th CPU), so one shard **shares CPU {} with the generator**: at `max` the generator and that shard compete, and delivered pps measures the three threads together on {} CPUs. CPU/packet sums both shards' threads; relay CPU % can exceed 100.\n",
        p.relay_cpu,
        p.gen_cpu,
        p.cpus.saturating_sub(1),
        p.gen_cpu,
        p.cpus
    );
    md.push_str(&how(p, "shards"));
    md.push('\n');
    md.push_str(&said_line(results, "shards", &SHARD_VARIANTS));
    let _ = writeln!(
        md,
        "| sessions | size | rate | shards | delivered pps | Mbit/s | loss % | p50 µs | p99 µs | relay CPU % | relay ns/pkt | 2/1 ns/pkt | 2/1 delivered pps |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for size in SIZES {
        for rn in RATE_NAMES {
            let r = |f: &str| {
                fmt_ratio(ratio(
                    shard_pick("t2", n).med(results, size, rn, f),
                    shard_pick("t1", n).med(results, size, rn, f),
                ))
            };
            for (i, variant) in SHARD_VARIANTS.into_iter().enumerate() {
                let k = shard_pick(variant, n);
                let _ = writeln!(
                    md,
                    "| {n} | {size} | {rn} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    i + 1,
                    k.fmt(results, size, rn, "/pps", 0),
                    k.fmt(results, size, rn, "/mbps", 0),
                    k.fmt(results, size, rn, "/loss_pct", 2),
                    k.fmt(results, size, rn, "/lat_us/p50", 0),
                    k.fmt(results, size, rn, "/lat_us/p99", 0),
                    k.fmt(results, size, rn, "/relay_cpu_pct", 0),
                    k.fmt(results, size, rn, NS, 0),
                    if i == 1 { r(NS) } else { String::new() },
                    if i == 1 { r("/pps") } else { String::new() },
                );
            }
        }
    }
    md.push('\n');
}

fn targets_section(md: &mut String, p: &Plan, results: &[Value]) {
    let _ = writeln!(md, "## Against the targets\n");
    let has = |s: &str| p.sections.contains(&s);
    if has("datapath") {
        let ns_at = |t: &'static str, n: usize, size: usize, r: &str| {
            Pick {
                section: "datapath",
                target: t,
                variant: MAIN_BACKEND,
                sessions: n,
                gso: 1,
            }
            .med(results, size, r, NS)
        };
        let run_med = |t: &'static str, n: usize, f: &str| {
            med(Pick {
                section: "datapath",
                target: t,
                variant: MAIN_BACKEND,
                sessions: n,
                gso: 1,
            }
            .run_values(results, f))
        };
        for &n in &p.sessions {
            for size in SIZES {
                if let (Some(a), Some(b)) = (
                    ns_at("wgrelay", n, size, "100k"),
                    ns_at("null", n, size, "100k"),
                ) {
                    let _ = writeln!(
                        md,
                        "- relay CPU/packet ≤ 1.0× null at 100k pps ({MAIN_BACKEND}, per-datagram) — {n} sessions, {size} B: {a:.0} vs {b:.0} ns = **{:.2}×** ({})",
                        a / b,
                        if a <= b { "met" } else { "missed" }
                    );
                }
            }
        }
        if let Some(&big) = p.sessions.iter().max() {
            if let Some(s) = run_med("wgrelay", big, "/setup/seconds") {
                let _ = writeln!(
                    md,
                    "- {big} distinct-address sessions set up in ≤ 10 s: **{s:.1} s** ({}); the generator's own boringtun CPU in the same run: {:.1} s, the null relay's set-up: {:.1} s",
                    if s <= 10.0 { "met" } else { "missed" },
                    run_med("wgrelay", big, "/setup/generator_cpu_s").unwrap_or(f64::NAN),
                    run_med("null", big, "/setup/seconds").unwrap_or(f64::NAN)
                );
            }
            if let Some(r) = run_med("wgrelay", big, "/relay_rss_per_session") {
                let _ = writeln!(
                    md,
                    "- ≤ 256 bytes relay memory per session: **{r:.0} bytes** at {big} sessions ({})",
                    if r <= 256.0 { "met" } else { "missed" }
                );
            }
            let smallest = p.sessions.iter().min().copied().unwrap_or(1);
            for size in SIZES {
                if let (Some(a), Some(b)) = (
                    ns_at("wgrelay", big, size, "100k"),
                    ns_at("wgrelay", smallest, size, "100k"),
                ) {
                    let _ = writeln!(
                        md,
                        "- cost at many sessions ≤ 1.1× cost at 1 session ({size} B, 100k pps): {big} vs {smallest}: {a:.0} vs {b:.0} ns = **{:.2}×** ({}; the matrix stops at {big})",
                        a / b,
                        if a <= 1.1 * b { "met" } else { "missed" }
                    );
                }
            }
        }
    }
    if has("gso") {
        for backend in BACKENDS {
            let mut pts: Vec<(f64, String)> = Vec::new();
            for &seg in &p.segments {
                for size in SIZES {
                    for rn in RATE_NAMES {
                        if let Some(r) = ratio(
                            gso_pick(backend, seg).med(results, size, rn, NS),
                            gso_pick("gro", seg).med(results, size, rn, NS),
                        ) {
                            pts.push((r, format!("{} seg, {size} B, {rn}", seg_label(seg, size))));
                        }
                    }
                }
            }
            if pts.is_empty() {
                continue;
            }
            let met = pts.iter().filter(|(r, _)| *r <= GSO_TARGET).count();
            let lo = pts.iter().map(|x| x.0).fold(f64::INFINITY, f64::min);
            let worst = pts
                .iter()
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .map(|x| x.1.clone())
                .unwrap_or_default();
            let hi = pts.iter().map(|x| x.0).fold(0.0, f64::max);
            let _ = writeln!(
                md,
                "- wgrelay ({backend}, `--gso on --gro on`) ≤ {GSO_TARGET}× the coalescing null relay, GSO/GRO traffic: **{lo:.2}–{hi:.2}×**, met at {met} of {} points (worst: {worst})",
                pts.len()
            );
        }
        let mut cp: Vec<f64> = Vec::new();
        for &seg in &p.segments {
            for size in SIZES {
                for rn in RATE_NAMES {
                    if let Some(r) = ratio(
                        gso_pick("gro", seg).med(results, size, rn, NS),
                        gso_pick("plain", seg).med(results, size, rn, NS),
                    ) {
                        cp.push(r);
                    }
                }
            }
        }
        if let Some((_, lo, hi)) = stats(&mut cp) {
            let _ = writeln!(
                md,
                "- for scale: the coalescing null relay costs **{lo:.3}–{hi:.3}×** the per-datagram null relay's CPU per packet at the same GSO/GRO traffic"
            );
        }
    }
    if has("shards") {
        let n = p.shard_sessions;
        let mut parts = Vec::new();
        for size in SIZES {
            for rn in RATE_NAMES {
                let r = |f: &str| {
                    ratio(
                        shard_pick("t2", n).med(results, size, rn, f),
                        shard_pick("t1", n).med(results, size, rn, f),
                    )
                };
                if let (Some(a), Some(b)) = (r(NS), r("/pps")) {
                    parts.push(format!("{size} B {rn}: {a:.2}× ns/pkt, {b:.2}× pps"));
                }
            }
        }
        if !parts.is_empty() {
            let _ = writeln!(
                md,
                "- 2 shards vs 1 ({n} sessions; the 2-shard relay shares a CPU with the generator): {}",
                parts.join("; ")
            );
        }
    }
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
                    let k = Pick {
                        section: "datapath",
                        target: t,
                        variant: MAIN_BACKEND,
                        sessions: n,
                        gso: 1,
                    };
                    if let Some(mut v) = k.med(results, size, rate, field) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's indices for the shards section split the peers about evenly between
    /// the 2 shards the relay's own steering function picks (as boringtun puts them on the
    /// wire).
    #[test]
    fn two_shard_base_splits_sessions_evenly() {
        use wgrelay::io::steer::owner_shard;
        use wgrelay::wire::Index;
        for sessions in [999usize, 1000, 10_000] {
            for port in [52_200u16, 52_217, 52_218, 65_535] {
                let base = two_shard_base(sessions, port);
                let mut per_shard = [0usize; 2];
                for p in 0..2 * sessions {
                    let idx = base.wrapping_add(p as u32 + 1) & 0x00ff_ffff;
                    assert_ne!(idx, 0);
                    per_shard[owner_shard(Index(idx << 8), 2)] += 1;
                }
                assert!(
                    per_shard.iter().all(|&n| n * 10 >= sessions * 2 * 4),
                    "{sessions} sessions, {port}: {per_shard:?}"
                );
            }
        }
    }

    #[test]
    fn gso_sends_fit_64_segments_and_64_kib() {
        assert_eq!(effective_segments(16, 64), 16);
        assert_eq!(effective_segments(64, 64), 64);
        assert_eq!(effective_segments(64, 1420), 46);
        assert_eq!(effective_segments(0, 1420), 1);
    }
}
