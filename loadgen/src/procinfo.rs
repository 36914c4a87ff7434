//! The relay process: spawning it pinned to a core, reading its CPU time and memory from
//! `/proc`, stopping it and collecting its `final stats` line.

use std::io::{self, BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime from `/proc/PID/stat`, in clock ticks converted to nanoseconds.
    pub stat_ns: u64,
    /// Sum over threads of `/proc/PID/task/*/schedstat` run time (ns, finer grained).
    pub sched_ns: u64,
    /// VmRSS in bytes.
    pub rss: u64,
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// Reads CPU time and RSS of `pid`.
///
/// # Errors
/// The process is gone or `/proc` is unreadable.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime is field 14, stime 15 (1-based); `f[0]` is field 3.
    let stat_ns = (ticks(11) + ticks(12)) * 1_000_000_000 / clock_ticks();
    let mut sched_ns = 0;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                sched_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    Ok(Sample {
        stat_ns,
        sched_ns,
        rss,
    })
}

/// CPU time of this process (user + system), in ns.
pub fn self_cpu_ns() -> u64 {
    // SAFETY: a zeroed rusage is valid and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is live for the call.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Pins the calling thread (and what it later spawns) to `cpu`.
///
/// # Errors
/// sched_setaffinity refused (e.g. the CPU does not exist).
pub fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it (cpu is checked
    // against its capacity); sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            // Not io::Error::new: this runs between fork and exec, where allocating is unsafe.
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A relay started by the load generator.
pub struct Spawned {
    child: Child,
    /// Last stderr lines (the relay logs there).
    log: Arc<Mutex<Vec<String>>>,
}

impl Spawned {
    /// Runs `cmd` (split on whitespace, no shell) pinned to `cpu`, with stderr captured.
    ///
    /// # Errors
    /// The command is empty or could not be started.
    pub fn start(cmd: &str, cpu: Option<usize>) -> io::Result<Spawned> {
        let mut words = cmd.split_whitespace();
        let prog = words
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty --spawn command"))?;
        let mut c = Command::new(prog);
        c.args(words)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(cpu) = cpu {
            // SAFETY: the closure runs in the forked child before exec and only calls
            // sched_setaffinity (async-signal-safe), through `pin`, which does not allocate.
            unsafe {
                c.pre_exec(move || pin(cpu));
            }
        }
        let mut child = c
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("spawn {prog}: {e}")))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(err) = child.stderr.take() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    if l.len() > 200 {
                        l.remove(0);
                    }
                    l.push(line);
                }
            });
        }
        Ok(Spawned { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process has a UDP socket bound to `port` (up to `limit`).
    pub fn wait_bound(&mut self, port: u16, limit: Duration) -> bool {
        let want = format!(":{port:04X} ");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let path = format!("/proc/{}/net/udp", self.child.id());
            if std::fs::read_to_string(path).is_ok_and(|t| t.lines().any(|l| l.contains(&want))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// SIGTERM, wait up to 5 s (then SIGKILL); returns the `final stats` line's `key=value`
    /// pairs and the last log lines.
    pub fn stop(mut self) -> (Vec<(String, u64)>, Vec<String>) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // Let the reader thread catch the last lines.
        std::thread::sleep(Duration::from_millis(50));
        let lines = self.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let stats = lines
            .iter()
            .rev()
            .find_map(|l| l.split_once("final stats:").map(|(_, s)| s.to_string()))
            .map(|s| parse_counters(&s))
            .unwrap_or_default();
        (stats, lines)
    }
}

/// `a=1 b=2 ...` into pairs (values that are not integers are skipped).
pub fn parse_counters(s: &str) -> Vec<(String, u64)> {
    s.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.trim_end_matches(',').parse().ok()?))
        })
        .collect()
}

/// Datagrams the kernel dropped on this process's UDP socket bound to local `port` (any
/// address), summed over such sockets: the last column of `/proc/self/net/udp` (full
/// receive queue, mostly). None when no such socket is listed.
pub fn udp_drops(port: u16) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/net/udp").ok()?;
    let want = format!(":{port:04X}");
    let mut found = None;
    for line in text.lines().skip(1) {
        let mut f = line.split_whitespace();
        let local = f.nth(1)?;
        if !local.ends_with(&want) {
            continue;
        }
        let drops = line.split_whitespace().last()?.parse::<u64>().ok()?;
        *found.get_or_insert(0) += drops;
    }
    found
}

/// The 1-minute load average (other work on a shared machine shows up here).
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
