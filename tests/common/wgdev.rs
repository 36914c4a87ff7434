//! A real wireguard-go device for tests: start one, configure it with `wg`, tear it down
//! (process killed, interface and UAPI socket removed) whatever happens. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wgrelay::upstream::uapi::socket_path;

/// Why a real device cannot run here (not root, tools or TUN missing), if it cannot.
pub fn unavailable() -> Option<&'static str> {
    if effective_uid() != Some(0) {
        return Some("not root");
    }
    if in_path("wireguard-go").is_none() || in_path("wg").is_none() {
        return Some(
            "wireguard-go or wg not installed (apt-get install wireguard-go wireguard-tools)",
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun");
    }
    None
}

pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `wg` with `args` and optional stdin; its trimmed stdout.
pub fn wg(args: &[&str], input: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("wg {args:?}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("wg {args:?} stdin: {e}"))?;
    }
    drop(child.stdin.take());
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wg {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "wg {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A wireguard-go device and its files; torn down on drop (also when an assertion fails).
pub struct Device {
    pub name: String,
    child: Child,
    pub dir: PathBuf,
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // wireguard-go removes both when it exits cleanly; make sure after a kill.
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Ok(p) = socket_path(&self.name) {
            let _ = std::fs::remove_file(p);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub fn start_device(name: &str, dir: &Path) -> Result<Device, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = std::fs::File::create(dir.join("wireguard-go.log")).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new("wireguard-go")
        .arg("-f")
        .arg(name)
        .env("WG_PROCESS_FOREGROUND", "1")
        .env("LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("wireguard-go: {e}"))?;
    let mut dev = Device {
        name: name.to_string(),
        child,
        dir: dir.to_path_buf(),
    };
    let sock = socket_path(name).map_err(|e| e.to_string())?;
    let up = wait_for(Duration::from_secs(10), || {
        sock.exists() || matches!(dev.child.try_wait(), Ok(Some(_)))
    });
    if !up || !sock.exists() {
        let log = std::fs::read_to_string(dir.join("wireguard-go.log")).unwrap_or_default();
        return Err(format!(
            "wireguard-go {name} made no socket at {} ({}): {}",
            sock.display(),
            match dev.child.try_wait() {
                Ok(Some(s)) => format!("exited {s}"),
                _ => "still running".into(),
            },
            log.trim()
        ));
    }
    Ok(dev)
}
