//! The UAPI client against a real wireguard-go: a device with two peers configured by `wg`,
//! read back through `/var/run/wireguard/<dev>.sock`. Needs root, wireguard-go, wg and
//! /dev/net/tun; prints why and passes when any is missing. Cleans up (kills wireguard-go,
//! deletes the interface) whatever happens; every wait is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wgrelay::key::PublicKey;
use wgrelay::upstream::uapi::{socket_path, Client, UapiError};

fn skip(why: &str) {
    println!("uapi: skipped: {why}");
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `wg` with `args` and optional stdin; its trimmed stdout.
fn wg(args: &[&str], input: Option<&str>) -> Result<String, String> {
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

/// A wireguard-go device and its files; torn down on drop.
struct Device {
    name: String,
    child: Child,
    dir: PathBuf,
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

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn start_device(name: &str, dir: &Path) -> Result<Device, String> {
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

#[test]
fn reads_peers_from_a_real_wireguard_go() {
    if effective_uid() != Some(0) {
        return skip("not root");
    }
    if in_path("wireguard-go").is_none() || in_path("wg").is_none() {
        return skip(
            "wireguard-go or wg not installed (apt-get install wireguard-go wireguard-tools)",
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        return skip("no /dev/net/tun");
    }

    let name = format!("wgtest{}", std::process::id() % 1_000_000);
    let dir = std::env::temp_dir().join(format!("wgrelay-uapi-real-{}", std::process::id()));
    let dev = match start_device(&name, &dir) {
        Ok(d) => d,
        // A sandbox without working TUN: wireguard-go cannot create the interface.
        Err(e) if e.contains("exited") => return skip(&e),
        Err(e) => panic!("{e}"),
    };

    let private = wg(&["genkey"], None).unwrap();
    let key_file = dir.join("private.key");
    std::fs::write(&key_file, format!("{private}\n")).unwrap();
    let own_public: PublicKey = wg(&["pubkey"], Some(&private)).unwrap().parse().unwrap();
    let peer_a: PublicKey = wg(&["pubkey"], Some(&wg(&["genkey"], None).unwrap()))
        .unwrap()
        .parse()
        .unwrap();
    let peer_b: PublicKey = wg(&["pubkey"], Some(&wg(&["genkey"], None).unwrap()))
        .unwrap()
        .parse()
        .unwrap();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let (a, b) = (peer_a.to_string(), peer_b.to_string());
    let key_path = key_file.to_string_lossy().into_owned();
    let port_s = port.to_string();
    wg(
        &[
            "set",
            &name,
            "private-key",
            &key_path,
            "listen-port",
            &port_s,
            "peer",
            &a,
            "endpoint",
            "127.0.0.1:5555",
            "persistent-keepalive",
            "25",
            "allowed-ips",
            "10.99.0.2/32",
            "peer",
            &b,
            "endpoint",
            "[::1]:5556",
            "allowed-ips",
            "10.99.0.3/32,fd99::3/128",
        ],
        None,
    )
    .unwrap();

    let client = Client::for_device(&name).unwrap();
    assert_eq!(client.path(), socket_path(&name).unwrap());
    let device = client.get().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(device.listen_port, Some(port));
    assert_eq!(device.peers.len(), 2, "{device:?}");
    assert!(device.peers.iter().all(|p| p.public_key != own_public));
    let pa = device
        .peers
        .iter()
        .find(|p| p.public_key == peer_a)
        .expect("peer A");
    assert_eq!(
        pa.endpoint,
        Some("127.0.0.1:5555".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(pa.persistent_keepalive, Some(25));
    assert_eq!(pa.last_handshake, None);
    let pb = device
        .peers
        .iter()
        .find(|p| p.public_key == peer_b)
        .expect("peer B");
    assert_eq!(
        pb.endpoint,
        Some("[::1]:5556".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(pb.persistent_keepalive, None);

    // The same connection protocol answers twice in a row (a fresh connection each time).
    assert_eq!(client.get().unwrap().peers.len(), 2);

    // A device that does not exist: a clear error, not a hang.
    let missing = Client::for_device("wgnosuchdev0")
        .unwrap()
        .get()
        .unwrap_err();
    assert!(
        matches!(missing, UapiError::SocketMissing(_)),
        "{missing:?}"
    );

    drop(dev);
    assert!(!socket_path(&name).unwrap().exists());
}
