//! A client for the WireGuard cross-platform userspace API (UAPI), read-only.
//!
//! Why: port-per-peer mode needs to know a local wireguard-go device's peers (keys and
//! endpoints) and its listen port. Every userspace implementation serves the same protocol
//! (wireguard.com/xplatform) on `/var/run/wireguard/<dev>.sock`, and speaking it needs only a
//! unix socket: no `wg` binary, no netlink.
//!
//! The protocol, as used here: the client writes `get=1\n\n`; the server answers `key=value`
//! lines, device keys first (`private_key`, `listen_port`, `fwmark`), then each peer starting
//! with `public_key=` followed by that peer's keys (`endpoint`, `last_handshake_time_sec`,
//! `persistent_keepalive_interval`, `allowed_ip`, ...), and ends with `errno=N` and an empty
//! line. Keys are 64 hex digits. The server keeps the connection open for another request, so
//! the answer ends at the empty line, not at EOF. wireguard-go reports failures as a negative
//! errno (`-22` for EINVAL).
//!
//! Bounds: one deadline for the whole exchange (connect, write, every read), a cap on the
//! answer's size, and the parse is a single pass over it. The answer contains the device's
//! private key and preshared keys: they are skipped, never stored, and never quoted in errors.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV6};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::key::{PublicKey, KEY_LEN};

/// Where wireguard-go puts its sockets on Linux.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Default deadline for a whole `get` exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default cap on the answer's size (about 10,000 peers).
pub const DEFAULT_MAX_RESPONSE: usize = 1 << 20;

/// Longest interface name on Linux (`IFNAMSIZ - 1`).
const MAX_IFNAME_LEN: usize = 15;

/// Longest part of a bad line quoted back in an error.
const MAX_QUOTED_CHARS: usize = 60;

/// Keys whose values are secret: never parsed, never quoted.
const SECRET_KEYS: [&str; 2] = ["private_key", "preshared_key"];

/// What `get=1` says about a device (the parts the relay needs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Device {
    /// The UDP port the device listens on (`None` when it reports none).
    pub listen_port: Option<u16>,
    /// Its firewall mark (`None` when unset).
    pub fwmark: Option<u32>,
    /// Its peers, in the order the device listed them.
    pub peers: Vec<Peer>,
}

/// One peer of a [`Device`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Where the device currently sends to this peer (configured or roamed), if anywhere.
    pub endpoint: Option<SocketAddr>,
    /// The last completed handshake (`None`: never).
    pub last_handshake: Option<SystemTime>,
    /// Persistent keepalive interval in seconds (`None`: off).
    pub persistent_keepalive: Option<u16>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// Why a UAPI query failed.
#[derive(Debug)]
pub enum UapiError {
    /// The device name cannot be an interface name (quoted).
    BadDeviceName(String),
    /// No socket at this path: the device does not exist or is not a userspace one.
    SocketMissing(PathBuf),
    /// The socket exists but this process may not connect to it.
    PermissionDenied(PathBuf),
    /// Any other connect failure (a stale socket: connection refused).
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Writing the request or reading the answer failed.
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No complete answer before the deadline.
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The deadline.
        after: Duration,
        /// Bytes received by then.
        received: usize,
    },
    /// The answer grew past the size cap before it ended.
    TooLarge {
        /// The socket path.
        path: PathBuf,
        /// The cap in bytes.
        limit: usize,
    },
    /// The answer stopped (EOF) before its terminating empty line.
    Truncated {
        /// Bytes received.
        received: usize,
    },
    /// The device reported an error (`errno=N`, N not 0).
    Errno(i64),
    /// A line of the answer is not what the protocol allows.
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for UapiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UapiError::BadDeviceName(name) => write!(
                f,
                "invalid WireGuard device name {name}: expected 1 to {MAX_IFNAME_LEN} characters, none of them '/', ':', or whitespace"
            ),
            UapiError::SocketMissing(p) => write!(
                f,
                "no UAPI socket at {} (is wireguard-go running for this device?)",
                p.display()
            ),
            UapiError::PermissionDenied(p) => write!(
                f,
                "permission denied connecting to {} (run as root or as the socket's owner)",
                p.display()
            ),
            UapiError::Connect { path, source } => {
                write!(f, "cannot connect to {}: {source}", path.display())?;
                if source.kind() == io::ErrorKind::ConnectionRefused {
                    f.write_str(" (nothing is listening: a stale socket?)")?;
                }
                Ok(())
            }
            UapiError::Io { path, source } => {
                write!(f, "UAPI exchange on {} failed: {source}", path.display())
            }
            UapiError::Timeout {
                path,
                after,
                received,
            } => write!(
                f,
                "no complete UAPI answer from {} within {after:?} ({received} bytes received)",
                path.display()
            ),
            UapiError::TooLarge { path, limit } => write!(
                f,
                "UAPI answer from {} is larger than {limit} bytes",
                path.display()
            ),
            UapiError::Truncated { received } => write!(
                f,
                "UAPI answer ended after {received} bytes, before its terminating empty line"
            ),
            UapiError::Errno(n) => {
                write!(f, "the WireGuard device answered errno={n}")?;
                if let Some(code) = i32::try_from(n.unsigned_abs()).ok().filter(|&c| c > 0) {
                    write!(f, " ({})", io::Error::from_raw_os_error(code))?;
                }
                Ok(())
            }
            UapiError::Malformed { line, reason } => {
                write!(f, "malformed UAPI answer, line {line}: {reason}")
            }
        }
    }
}

impl std::error::Error for UapiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UapiError::Connect { source, .. } | UapiError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Checks `dev` as Linux checks an interface name (`dev_valid_name`).
fn check_device_name(dev: &str) -> Result<(), UapiError> {
    let ok = !dev.is_empty()
        && dev.len() <= MAX_IFNAME_LEN
        && dev != "."
        && dev != ".."
        && !dev
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(UapiError::BadDeviceName(quote_truncated(dev)))
    }
}

/// The UAPI socket of device `dev`: `/var/run/wireguard/<dev>.sock`.
pub fn socket_path(dev: &str) -> Result<PathBuf, UapiError> {
    check_device_name(dev)?;
    Ok(Path::new(SOCKET_DIR).join(format!("{dev}.sock")))
}

/// Queries one UAPI socket. Cheap to keep: every [`Client::get`] opens its own connection.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    max_response: usize,
}

impl Client {
    /// A client for the socket at `path`, with the default deadline and size cap.
    pub fn new(path: impl Into<PathBuf>) -> Client {
        Client {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
            max_response: DEFAULT_MAX_RESPONSE,
        }
    }

    /// A client for device `dev` ([`socket_path`]).
    pub fn for_device(dev: &str) -> Result<Client, UapiError> {
        Ok(Client::new(socket_path(dev)?))
    }

    /// Sets the deadline for a whole exchange (at least 1 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Sets the cap on the answer's size in bytes.
    pub fn with_max_response(mut self, bytes: usize) -> Client {
        self.max_response = bytes;
        self
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the device for its configuration (`get=1`) and parses the answer.
    pub fn get(&self) -> Result<Device, UapiError> {
        let raw = self.exchange()?;
        parse_get(&raw)
    }

    /// Connects, sends `get=1`, and returns the answer up to and including its empty line.
    fn exchange(&self) -> Result<Vec<u8>, UapiError> {
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut stream = self.connect()?;
        let io_err = |source: io::Error, received: usize| {
            if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                UapiError::Timeout {
                    path: self.path.clone(),
                    after: self.timeout,
                    received,
                }
            } else {
                UapiError::Io {
                    path: self.path.clone(),
                    source,
                }
            }
        };
        let remaining = |received| {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(UapiError::Timeout {
                    path: self.path.clone(),
                    after: self.timeout,
                    received,
                })
            } else {
                Ok(left)
            }
        };
        stream
            .set_write_timeout(Some(remaining(0)?))
            .map_err(|e| io_err(e, 0))?;
        stream.write_all(b"get=1\n\n").map_err(|e| io_err(e, 0))?;

        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = [0u8; 8192];
        // Bounded: every pass either adds at least one byte (at most `max_response + chunk`
        // in all) or returns, and each read waits no longer than what is left of the deadline.
        loop {
            let before = buf.len();
            let left = remaining(before)?;
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| io_err(e, before))?;
            let n = match stream.read(&mut chunk) {
                Ok(0) => return Err(UapiError::Truncated { received: before }),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e, before)),
            };
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = end_of_answer(&buf, before.saturating_sub(1)) {
                if end > self.max_response {
                    break;
                }
                buf.truncate(end);
                return Ok(buf);
            }
            if buf.len() > self.max_response {
                break;
            }
        }
        Err(UapiError::TooLarge {
            path: self.path.clone(),
            limit: self.max_response,
        })
    }

    fn connect(&self) -> Result<UnixStream, UapiError> {
        let connect_err = |e| self.connect_error(e);
        let addr = SockAddr::unix(&self.path).map_err(connect_err)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(connect_err)?;
        socket
            .connect_timeout(&addr, self.timeout)
            .map_err(connect_err)?;
        Ok(UnixStream::from(socket))
    }

    fn connect_error(&self, source: io::Error) -> UapiError {
        match source.kind() {
            io::ErrorKind::NotFound => UapiError::SocketMissing(self.path.clone()),
            io::ErrorKind::PermissionDenied => UapiError::PermissionDenied(self.path.clone()),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => UapiError::Timeout {
                path: self.path.clone(),
                after: self.timeout,
                received: 0,
            },
            _ => UapiError::Connect {
                path: self.path.clone(),
                source,
            },
        }
    }
}

/// The length of the answer up to and including its terminating empty line, looking for it
/// from byte `from` on (the answer is a whole number of lines, so the empty line is either
/// the very first one or a "\n\n").
fn end_of_answer(buf: &[u8], from: usize) -> Option<usize> {
    if buf.first() == Some(&b'\n') {
        return Some(1);
    }
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| from + p + 2)
}

/// Parses the answer to `get=1`, up to its terminating empty line (anything after it is
/// ignored). Unknown keys are ignored, so that newer or extended servers still parse.
pub fn parse_get(answer: &[u8]) -> Result<Device, UapiError> {
    // Split into lines up to the empty one: a bounded walk over `answer`.
    let mut lines: Vec<(usize, &[u8])> = Vec::new();
    let mut pos = 0;
    loop {
        let Some(nl) = answer
            .get(pos..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        else {
            return Err(UapiError::Truncated {
                received: answer.len(),
            });
        };
        let line = &answer[pos..pos + nl];
        pos += nl + 1;
        if line.is_empty() {
            break;
        }
        lines.push((lines.len() + 1, line));
    }
    let end_line = lines.len() + 1;

    // errno first: a failed request may come with no or partial data.
    let mut errno = None;
    for &(n, line) in &lines {
        if let Some(v) = line.strip_prefix(b"errno=") {
            let v = std::str::from_utf8(v)
                .ok()
                .and_then(parse_signed)
                .ok_or_else(|| malformed(n, format!("{} is not a number", quote_bytes(v))))?;
            errno = Some((n, v));
        }
    }
    match errno {
        None => {
            return Err(malformed(
                end_line,
                "the answer ends without an errno line".into(),
            ))
        }
        Some((_, 0)) => {}
        Some((_, e)) => return Err(UapiError::Errno(e)),
    }

    let mut device = Device::default();
    let mut peer: Option<PeerBuilder> = None;
    let mut seen = HashSet::new();
    for &(n, line) in &lines {
        let text = std::str::from_utf8(line).map_err(|_| malformed(n, "not UTF-8".into()))?;
        let (key, value) = text.split_once('=').ok_or_else(|| {
            malformed(
                n,
                format!("expected key=value, got {}", quote_truncated(text)),
            )
        })?;
        if SECRET_KEYS.contains(&key) {
            continue;
        }
        let bad = |what: &str| malformed(n, format!("{key}={}: {what}", quote_truncated(value)));
        match key {
            "errno" => {}
            "public_key" => {
                if let Some(p) = peer.take() {
                    device.peers.push(p.finish()?);
                }
                let k = parse_hex_key(value).ok_or_else(|| bad("expected 64 hex digits"))?;
                if !seen.insert(k) {
                    return Err(bad("this peer is listed twice"));
                }
                peer = Some(PeerBuilder::new(k));
            }
            "listen_port" if peer.is_none() => {
                let p = parse_unsigned(value).and_then(|v| u16::try_from(v).ok());
                device.listen_port = Some(p.ok_or_else(|| bad("not a port"))?).filter(|&p| p != 0);
            }
            "fwmark" if peer.is_none() => {
                let m = parse_unsigned(value).and_then(|v| u32::try_from(v).ok());
                device.fwmark =
                    Some(m.ok_or_else(|| bad("not a 32-bit number"))?).filter(|&m| m != 0);
            }
            "endpoint"
            | "last_handshake_time_sec"
            | "last_handshake_time_nsec"
            | "persistent_keepalive_interval"
            | "rx_bytes"
            | "tx_bytes" => {
                let Some(p) = peer.as_mut() else {
                    return Err(malformed(n, format!("{key} before any public_key")));
                };
                match key {
                    "endpoint" => {
                        p.endpoint = Some(parse_endpoint(value).ok_or_else(|| {
                            bad("expected IP:PORT or [IPv6]:PORT (with a known zone)")
                        })?);
                    }
                    "last_handshake_time_sec" => {
                        p.handshake_sec =
                            (n, parse_unsigned(value).ok_or_else(|| bad("not a number"))?);
                    }
                    "last_handshake_time_nsec" => {
                        p.handshake_nsec = parse_unsigned(value)
                            .and_then(|v| u32::try_from(v).ok())
                            .filter(|&v| v < 1_000_000_000)
                            .ok_or_else(|| bad("not a number of nanoseconds"))?;
                    }
                    "persistent_keepalive_interval" => {
                        let k = parse_unsigned(value).and_then(|v| u16::try_from(v).ok());
                        p.keepalive = k.ok_or_else(|| bad("not a number of seconds"))?;
                    }
                    "rx_bytes" => {
                        p.rx = parse_unsigned(value).ok_or_else(|| bad("not a number"))?
                    }
                    _ => p.tx = parse_unsigned(value).ok_or_else(|| bad("not a number"))?,
                }
            }
            // protocol_version, allowed_ip, and whatever newer servers add.
            _ => {}
        }
    }
    if let Some(p) = peer.take() {
        device.peers.push(p.finish()?);
    }
    Ok(device)
}

/// A peer being read.
struct PeerBuilder {
    key: PublicKey,
    endpoint: Option<SocketAddr>,
    /// (line, seconds): the line names the error if the time is out of range.
    handshake_sec: (usize, u64),
    handshake_nsec: u32,
    keepalive: u16,
    rx: u64,
    tx: u64,
}

impl PeerBuilder {
    fn new(key: PublicKey) -> PeerBuilder {
        PeerBuilder {
            key,
            endpoint: None,
            handshake_sec: (0, 0),
            handshake_nsec: 0,
            keepalive: 0,
            rx: 0,
            tx: 0,
        }
    }

    fn finish(self) -> Result<Peer, UapiError> {
        let (line, sec) = self.handshake_sec;
        let last_handshake = if sec == 0 && self.handshake_nsec == 0 {
            None
        } else {
            let t = UNIX_EPOCH
                .checked_add(Duration::new(sec, self.handshake_nsec))
                .ok_or_else(|| malformed(line, format!("handshake time {sec} is out of range")))?;
            Some(t)
        };
        Ok(Peer {
            public_key: self.key,
            endpoint: self.endpoint,
            last_handshake,
            persistent_keepalive: (self.keepalive != 0).then_some(self.keepalive),
            rx_bytes: self.rx,
            tx_bytes: self.tx,
        })
    }
}

fn malformed(line: usize, reason: String) -> UapiError {
    UapiError::Malformed { line, reason }
}

/// Decimal digits only (`str::parse` would also take a leading `+`).
fn parse_unsigned(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_signed(s: &str) -> Option<i64> {
    match s.strip_prefix('-') {
        Some(rest) => parse_unsigned(rest).and_then(|v| 0i64.checked_sub_unsigned(v)),
        None => parse_unsigned(s).and_then(|v| i64::try_from(v).ok()),
    }
}

fn parse_hex_key(s: &str) -> Option<PublicKey> {
    let s = s.as_bytes();
    if s.len() != 2 * KEY_LEN {
        return None;
    }
    let mut key = [0u8; KEY_LEN];
    for (out, pair) in key.iter_mut().zip(s.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        *out = u8::try_from(hi << 4 | lo).ok()?;
    }
    Some(PublicKey(key))
}

/// `IP:PORT` or `[IPv6]:PORT`, the zone being a number or an interface name (as Go prints
/// it, `[fe80::1%eth0]:51820`), which is looked up in /sys.
fn parse_endpoint(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (inside, port) = s.strip_prefix('[')?.split_once("]:")?;
    let (ip, zone) = inside.split_once('%')?;
    check_device_name(zone).ok()?;
    let index = std::fs::read_to_string(Path::new("/sys/class/net").join(zone).join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let port = parse_unsigned(port).and_then(|p| u16::try_from(p).ok())?;
    Some(SocketAddr::V6(SocketAddrV6::new(
        ip.parse().ok()?,
        port,
        0,
        index,
    )))
}

fn quote_truncated(s: &str) -> String {
    if s.chars().count() > MAX_QUOTED_CHARS {
        let head: String = s.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head:?}...")
    } else {
        format!("{s:?}")
    }
}

fn quote_bytes(b: &[u8]) -> String {
    quote_truncated(&String::from_utf8_lossy(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread::JoinHandle;

    const K1: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

    fn hex(k: &PublicKey) -> String {
        k.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn happy_answer() -> String {
        let k1: PublicKey = K1.parse().unwrap();
        format!(
            "private_key={}\nlisten_port=51820\nfwmark=0\n\
             public_key={}\npreshared_key={}\nprotocol_version=1\nendpoint=192.0.2.7:4500\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\n\
             tx_bytes=100\nrx_bytes=200\npersistent_keepalive_interval=25\n\
             allowed_ip=10.0.0.2/32\nallowed_ip=fd00::2/128\n\
             public_key={}\nprotocol_version=1\nendpoint=[2001:db8::9]:51821\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n\
             persistent_keepalive_interval=0\n\
             public_key={}\nprotocol_version=1\nlast_handshake_time_sec=0\n\
             last_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n\
             some_future_key=whatever\n\
             errno=0\n\n",
            "11".repeat(32),
            hex(&k1),
            "22".repeat(32),
            hex(&key(0xab)),
            hex(&key(0x01)).to_uppercase(),
        )
    }

    fn check_happy(d: &Device) {
        assert_eq!(d.listen_port, Some(51820));
        assert_eq!(d.fwmark, None);
        assert_eq!(d.peers.len(), 3);
        let p = &d.peers[0];
        assert_eq!(p.public_key.to_string(), K1);
        assert_eq!(p.endpoint, Some("192.0.2.7:4500".parse().unwrap()));
        assert_eq!(
            p.last_handshake,
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
        );
        assert_eq!(p.persistent_keepalive, Some(25));
        assert_eq!((p.tx_bytes, p.rx_bytes), (100, 200));
        let p = &d.peers[1];
        assert_eq!(p.public_key, key(0xab));
        assert_eq!(p.endpoint, Some("[2001:db8::9]:51821".parse().unwrap()));
        assert_eq!(p.last_handshake, None);
        assert_eq!(p.persistent_keepalive, None);
        let p = &d.peers[2];
        assert_eq!(p.public_key, key(0x01));
        assert_eq!(p.endpoint, None);
    }

    #[test]
    fn parses_a_full_answer() {
        check_happy(&parse_get(happy_answer().as_bytes()).unwrap());
        // Anything after the empty line is not part of the answer.
        let more = format!("{}garbage\n", happy_answer());
        check_happy(&parse_get(more.as_bytes()).unwrap());
    }

    #[test]
    fn empty_device() {
        let d = parse_get(b"errno=0\n\n").unwrap();
        assert_eq!(d, Device::default());
    }

    fn perr(s: &str) -> UapiError {
        parse_get(s.as_bytes()).unwrap_err()
    }

    #[test]
    fn errno_is_reported() {
        assert!(matches!(perr("errno=1\n\n"), UapiError::Errno(1)));
        let e = perr("listen_port=1\nerrno=-22\n\n");
        assert!(matches!(e, UapiError::Errno(-22)));
        let msg = e.to_string();
        assert!(msg.contains("errno=-22"), "{msg}");
        assert!(msg.contains("Invalid argument"), "{msg}");
        // Even when the data before it is nonsense.
        assert!(matches!(perr("junk\nerrno=5\n\n"), UapiError::Errno(5)));
    }

    fn malformed_line(e: UapiError) -> (usize, String) {
        match e {
            UapiError::Malformed { line, .. } => {
                let msg = e.to_string();
                (line, msg)
            }
            other => panic!("not malformed: {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_are_named() {
        let k = hex(&key(3));
        let cases = [
            (
                "listen_port=1\ngarbage\nerrno=0\n\n".to_string(),
                2,
                "expected key=value",
            ),
            ("errno=zero\n\n".to_string(), 1, "not a number"),
            (
                "listen_port=70000\nerrno=0\n\n".to_string(),
                1,
                "not a port",
            ),
            ("listen_port=+5\nerrno=0\n\n".to_string(), 1, "not a port"),
            (
                "public_key=abc\nerrno=0\n\n".to_string(),
                1,
                "64 hex digits",
            ),
            (
                format!("public_key={}zz\nerrno=0\n\n", &k[..62]),
                1,
                "64 hex digits",
            ),
            (
                "endpoint=1.2.3.4:5\nerrno=0\n\n".to_string(),
                1,
                "before any public_key",
            ),
            (
                format!("public_key={k}\nendpoint=nowhere\nerrno=0\n\n"),
                2,
                "endpoint=\"nowhere\"",
            ),
            (
                format!("public_key={k}\nendpoint=[fe80::1%nosuchif0]:5\nerrno=0\n\n"),
                2,
                "zone",
            ),
            (
                format!("public_key={k}\nrx_bytes=-1\nerrno=0\n\n"),
                2,
                "rx_bytes",
            ),
            (
                format!("public_key={k}\nlast_handshake_time_nsec=1000000000\nerrno=0\n\n"),
                2,
                "nanoseconds",
            ),
            (
                format!("public_key={k}\npersistent_keepalive_interval=65536\nerrno=0\n\n"),
                2,
                "seconds",
            ),
            (
                format!(
                    "public_key={k}\nlast_handshake_time_sec=18446744073709551615\nerrno=0\n\n"
                ),
                2,
                "out of range",
            ),
            (
                format!("public_key={k}\npublic_key={k}\nerrno=0\n\n"),
                2,
                "listed twice",
            ),
            ("listen_port=1\n\n".to_string(), 2, "without an errno"),
            (
                "a=1\n\u{fffd}\u{1}\nerrno=0\n\n".to_string(),
                2,
                "expected key=value",
            ),
        ];
        for (input, line, want) in cases {
            let (l, msg) = malformed_line(perr(&input));
            assert_eq!(l, line, "{input:?}: {msg}");
            assert!(msg.contains(want), "{input:?}: {msg}");
            assert!(msg.contains(&format!("line {line}")), "{msg}");
        }
        let (l, msg) = malformed_line(parse_get(b"x=1\n\xff\xfe\nerrno=0\n\n").unwrap_err());
        assert_eq!(l, 2);
        assert!(msg.contains("UTF-8"), "{msg}");
    }

    #[test]
    fn secrets_are_never_quoted() {
        let secret = "5ec7e7".repeat(10);
        // Even a malformed secret is skipped, not reported.
        let d = parse_get(format!("private_key={secret}\nerrno=0\n\n").as_bytes()).unwrap();
        assert_eq!(d, Device::default());
        let e = perr(&format!("private_key={secret}\nbad\nerrno=0\n\n"));
        assert!(!e.to_string().contains("5ec7e7"), "{e}");
    }

    #[test]
    fn truncated_answers() {
        for s in ["", "errno=0", "errno=0\n", "listen_port=1\nerrno=0\n"] {
            match parse_get(s.as_bytes()) {
                Err(UapiError::Truncated { received }) => assert_eq!(received, s.len()),
                other => panic!("{s:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn signed_and_unsigned_numbers() {
        assert_eq!(parse_signed("-22"), Some(-22));
        assert_eq!(parse_signed("0"), Some(0));
        assert_eq!(parse_signed("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_signed("9223372036854775808"), None);
        assert_eq!(parse_signed("--1"), None);
        assert_eq!(parse_signed(""), None);
        assert_eq!(parse_unsigned("+1"), None);
        assert_eq!(parse_unsigned(" 1"), None);
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("1.2.3.4:5"),
            Some("1.2.3.4:5".parse().unwrap())
        );
        assert_eq!(parse_endpoint("[::1]:5"), Some("[::1]:5".parse().unwrap()));
        assert_eq!(
            parse_endpoint("[fe80::1%3]:5"),
            Some("[fe80::1%3]:5".parse().unwrap())
        );
        if let Ok(idx) = std::fs::read_to_string("/sys/class/net/lo/ifindex") {
            let idx: u32 = idx.trim().parse().unwrap();
            match parse_endpoint("[fe80::1%lo]:5") {
                Some(SocketAddr::V6(a)) => assert_eq!(a.scope_id(), idx),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(parse_endpoint("[fe80::1%../x]:5"), None);
        assert_eq!(parse_endpoint("host:5"), None);
    }

    #[test]
    fn device_names() {
        assert_eq!(
            socket_path("wg0").unwrap(),
            PathBuf::from("/var/run/wireguard/wg0.sock")
        );
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "0123456789abcdef"] {
            let e = socket_path(bad).unwrap_err();
            assert!(matches!(e, UapiError::BadDeviceName(_)), "{bad:?}");
            assert!(
                e.to_string().contains("invalid WireGuard device name"),
                "{e}"
            );
        }
        assert!(socket_path("0123456789abcde").is_ok());
    }

    #[test]
    fn end_of_answer_detection() {
        assert_eq!(end_of_answer(b"\n", 0), Some(1));
        assert_eq!(end_of_answer(b"a=1\n\n", 0), Some(5));
        assert_eq!(end_of_answer(b"a=1\n\nb", 0), Some(5));
        assert_eq!(end_of_answer(b"a=1\n", 0), None);
        assert_eq!(end_of_answer(b"a=1\n\n", 3), Some(5));
        assert_eq!(end_of_answer(b"a=1\n\n", 9), None);
    }

    // ---- Against a fake server on a unix socket. ----

    /// A temporary directory holding one listening socket; removed on drop.
    struct Fake {
        dir: PathBuf,
        path: PathBuf,
        server: Option<JoinHandle<Vec<u8>>>,
    }

    impl Fake {
        /// Serves one connection: reads the request (returned by `request()`), then runs
        /// `answer`. Every step of the server is bounded in time.
        fn serve(answer: impl FnOnce(&mut UnixStream) + Send + 'static) -> Fake {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "wgrelay-uapi-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("wgtest.sock");
            let listener = UnixListener::bind(&path).unwrap();
            listener.set_nonblocking(true).unwrap();
            let server = std::thread::spawn(move || {
                let end = Instant::now() + Duration::from_secs(10);
                let mut stream = loop {
                    match listener.accept() {
                        Ok((s, _)) => break s,
                        Err(_) if Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(2))
                        }
                        Err(e) => panic!("no client: {e}"),
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut req = Vec::new();
                let mut b = [0u8; 64];
                while !req.ends_with(b"\n\n") && req.len() < 64 {
                    match stream.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                answer(&mut stream);
                req
            });
            Fake {
                dir,
                path,
                server: Some(server),
            }
        }

        fn client(&self) -> Client {
            Client::new(&self.path)
        }

        /// The request the server saw.
        fn request(mut self) -> Vec<u8> {
            self.server.take().unwrap().join().unwrap()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            if let Some(s) = self.server.take() {
                let _ = s.join();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Like wireguard-go: answers, then keeps the connection open for another request until
    /// the client goes (bounded).
    fn answer_and_linger(text: String) -> impl FnOnce(&mut UnixStream) + Send + 'static {
        move |s: &mut UnixStream| {
            let _ = s.write_all(text.as_bytes());
            let _ = s.read(&mut [0u8; 16]);
        }
    }

    #[test]
    fn fake_server_happy_path() {
        let fake = Fake::serve(answer_and_linger(happy_answer()));
        let t = Instant::now();
        let d = fake.client().get().unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "waited for EOF?");
        check_happy(&d);
        assert_eq!(fake.request(), b"get=1\n\n");
    }

    #[test]
    fn fake_server_answer_in_pieces() {
        let text = happy_answer();
        let fake = Fake::serve(move |s: &mut UnixStream| {
            for piece in text.as_bytes().chunks(7) {
                if s.write_all(piece).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let _ = s.read(&mut [0u8; 16]);
        });
        check_happy(&fake.client().get().unwrap());
    }

    #[test]
    fn fake_server_errno() {
        let fake = Fake::serve(answer_and_linger("errno=1\n\n".into()));
        let e = fake.client().get().unwrap_err();
        assert!(matches!(e, UapiError::Errno(1)), "{e:?}");
    }

    #[test]
    fn fake_server_garbage() {
        let fake = Fake::serve(answer_and_linger(
            "listen_port=1\nthis is not a uapi line\nerrno=0\n\n".into(),
        ));
        let e = fake.client().get().unwrap_err();
        assert!(matches!(e, UapiError::Malformed { line: 2, .. }), "{e:?}");
        let fake = Fake::serve(answer_and_linger("\u{0}\u{1}\u{2}\n\n".into()));
        let e = fake.client().get().unwrap_err();
        assert!(matches!(e, UapiError::Malformed { line: 2, .. }), "{e:?}");
    }

    #[test]
    fn fake_server_truncated() {
        let fake = Fake::serve(|s: &mut UnixStream| {
            let _ = s.write_all(b"listen_port=51820\npublic_key=");
            // Dropping the stream closes it: EOF before the empty line.
        });
        let e = fake.client().get().unwrap_err();
        match e {
            UapiError::Truncated { received } => assert_eq!(received, 29),
            other => panic!("{other:?}"),
        }
        let fake = Fake::serve(|_: &mut UnixStream| {});
        let e = fake.client().get().unwrap_err();
        assert!(matches!(e, UapiError::Truncated { received: 0 }), "{e:?}");
    }

    #[test]
    fn fake_server_oversized() {
        let fake = Fake::serve(|s: &mut UnixStream| {
            let line = b"allowed_ip=10.0.0.0/32\n".repeat(1000);
            for _ in 0..200 {
                if s.write_all(&line).is_err() {
                    return;
                }
            }
            let _ = s.write_all(b"errno=0\n\n");
        });
        let e = fake.client().get().unwrap_err();
        match &e {
            UapiError::TooLarge { limit, .. } => assert_eq!(*limit, DEFAULT_MAX_RESPONSE),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
        // A complete answer over a smaller cap is refused too.
        let fake = Fake::serve(answer_and_linger(happy_answer()));
        let e = fake.client().with_max_response(100).get().unwrap_err();
        assert!(matches!(e, UapiError::TooLarge { limit: 100, .. }), "{e:?}");
    }

    #[test]
    fn fake_server_silent_times_out() {
        let fake = Fake::serve(|s: &mut UnixStream| {
            // Says nothing; waits (bounded) for the client to give up.
            let _ = s.read(&mut [0u8; 16]);
        });
        let t = Instant::now();
        let e = fake
            .client()
            .with_timeout(Duration::from_millis(200))
            .get()
            .unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, UapiError::Timeout { received: 0, .. }), "{e:?}");
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert!(e.to_string().contains("within 200ms"), "{e}");
    }

    #[test]
    fn fake_server_dribbling_hits_the_overall_deadline() {
        let text = happy_answer();
        let fake = Fake::serve(move |s: &mut UnixStream| {
            for b in text.as_bytes().iter().take(200) {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let t = Instant::now();
        let e = fake
            .client()
            .with_timeout(Duration::from_millis(300))
            .get()
            .unwrap_err();
        let took = t.elapsed();
        match e {
            UapiError::Timeout { received, .. } => assert!(received > 0),
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[test]
    fn connect_errors() {
        let dir = std::env::temp_dir().join(format!("wgrelay-uapi-c-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("nope.sock");
        let e = Client::new(&missing).get().unwrap_err();
        assert!(matches!(e, UapiError::SocketMissing(_)), "{e:?}");
        assert!(e.to_string().contains("nope.sock"), "{e}");
        // A regular file, or a socket nobody listens on: connection refused.
        let file = dir.join("file.sock");
        std::fs::write(&file, b"").unwrap();
        let e = Client::new(&file).get().unwrap_err();
        assert!(matches!(e, UapiError::Connect { .. }), "{e:?}");
        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let e = Client::new(&stale).get().unwrap_err();
        assert!(e.to_string().contains("stale socket"), "{e}");
        // A path too long for a unix socket address.
        let long = dir.join("x".repeat(200));
        let e = Client::new(&long).get().unwrap_err();
        assert!(matches!(e, UapiError::Connect { .. }), "{e:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn permission_denied_is_named() {
        // Root bypasses file permissions, so only the mapping can be checked everywhere.
        let c = Client::new("/x.sock");
        let e = c.connect_error(io::ErrorKind::PermissionDenied.into());
        assert!(matches!(e, UapiError::PermissionDenied(_)));
        assert!(e.to_string().contains("permission denied"), "{e}");
    }
}
