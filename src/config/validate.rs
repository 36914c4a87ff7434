//! Validators shared by every source, and the checks that relate values to each other.

use super::*;

/// While the relay sends cookie replies, every listener's AmneziaWG parameters must frame
/// them no longer than the initiations they answer ([`AwgParams::check_cookie_reply`]).
pub(super) fn check_cookie_replies(
    cookie: CookieMode,
    awg: &AwgParams,
    awg_label: &str,
    peers: &[PeerSpec],
) -> Result<(), ConfigError> {
    if cookie == CookieMode::Never {
        return Ok(());
    }
    // (the relay-wide parameters frame every listener, and every peer port without its own)
    awg.check_cookie_reply()
        .map_err(|e| ConfigError::new(format!("{awg_label}: {e}")))?;
    for p in peers {
        if let Some(awg) = &p.awg {
            awg.check_cookie_reply()
                .map_err(|e| ConfigError::new(format!("{}: {e}", p.at)))?;
        }
    }
    Ok(())
}

// Validators shared by flags and file. `name` is how the setting is called
// in the source (`--listen`, `listen`); messages name the value and say what
// was expected.

/// Why a listen address may not have port 0.
pub(super) const PORT_0: &str =
    "port 0 is not allowed (expected a fixed port 1-65535 that peers can point at)";

pub(super) fn parse_listen(name: &str, s: &str) -> Result<SocketAddr, String> {
    let addr = parse_metrics(name, s)?;
    if addr.port() == 0 {
        return Err(format!("{name} {s:?}: {PORT_0}"));
    }
    Ok(addr)
}

/// Any IP:PORT, port 0 included (for metrics: the kernel picks one, and the log line says
/// which).
pub(super) fn parse_metrics(name: &str, s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{name} {s:?}: invalid socket address (expected IP:PORT, IPv6 as [ADDR]:PORT)")
    })
}

pub(super) fn parse_key(name: &str, s: &str) -> Result<PublicKey, String> {
    s.parse().map_err(|e| format!("{name}: {e}"))
}

pub(super) fn parse_bind(name: &str, s: &str) -> Result<IpAddr, String> {
    let t = s.trim();
    if t.is_empty() {
        return Ok(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
    let unbracketed = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    unbracketed.parse().map_err(|_| {
        format!(
            "{name} {s:?}: invalid IP address (expected e.g. 0.0.0.0 or ::, or \"\" for all addresses; set the port with {})",
            if name.starts_with("--") { "--port" } else { "port" }
        )
    })
}

pub(super) fn check_port(name: &str, port: u16) -> Result<u16, String> {
    if port == 0 {
        Err(format!("{name} 0: {PORT_0}"))
    } else {
        Ok(port)
    }
}

pub(super) fn check_threads(name: &str, n: usize) -> Result<usize, String> {
    if n == 0 {
        Err(format!("{name} 0: must be at least 1"))
    } else if n > MAX_THREADS {
        Err(format!("{name} {n}: must be at most {MAX_THREADS}"))
    } else {
        Ok(n)
    }
}

/// De-duplicates a group's keys and requires at least 2 distinct ones.
pub(super) fn check_group(
    name: &str,
    shown: &str,
    keys: Vec<PublicKey>,
) -> Result<Vec<PublicKey>, String> {
    let keys = dedup(keys);
    if keys.len() < 2 {
        return Err(format!(
            "{name} {shown}: a group needs at least 2 distinct public keys (got {})",
            keys.len()
        ));
    }
    Ok(keys)
}

/// Two peers of one source may not share a key.
pub(super) fn check_peer_keys(peers: &[PeerSpec]) -> Result<(), String> {
    for (i, p) in peers.iter().enumerate() {
        if let Some(first) = peers[..i].iter().find(|q| q.key == p.key) {
            // A flag's own text already shows the key.
            let key = p.key.to_string();
            let which = if p.at.contains(&key) {
                "its public key".to_string()
            } else {
                format!("public key {key}")
            };
            return Err(format!(
                "{}: {which} is already the key of {} (a key has one relay port)",
                p.at, first.name
            ));
        }
    }
    Ok(())
}

/// Places the peers' ports on the effective listen host and checks that no two sockets of the
/// relay overlap.
pub(super) fn resolve_peers(
    specs: Vec<PeerSpec>,
    listen: &[SocketAddr],
) -> Result<Vec<PortPeer>, ConfigError> {
    let mut out: Vec<PortPeer> = Vec::with_capacity(specs.len());
    for spec in &specs {
        let addr = match spec.listen {
            PeerListen::Addr(a) => a,
            PeerListen::Port(p) => {
                let mut a = listen.first().copied().unwrap_or(DEFAULT_LISTEN);
                a.set_port(p);
                a
            }
        };
        if let Some(l) = listen.iter().find(|l| sockets_overlap(addr, **l)) {
            return Err(ConfigError::new(format!(
                "{}: {addr} overlaps the relay listen address {l} (a peer needs a port of its own)",
                spec.at
            )));
        }
        if let Some((j, _)) = out
            .iter()
            .enumerate()
            .find(|(_, q)| sockets_overlap(addr, q.listen))
        {
            return Err(ConfigError::new(format!(
                "{}: {addr} overlaps the port of {} ({})",
                spec.at, specs[j].name, out[j].listen
            )));
        }
        out.push(PortPeer {
            listen: addr,
            key: spec.key,
            endpoint: spec.endpoint,
            uapi: spec.uapi.clone(),
            awg: spec.awg,
        });
    }
    Ok(out)
}

/// Whether two UDP sockets would claim the same datagrams: the same port, and the same address
/// or a wildcard covering the other (`[::]` is dual-stack, so it covers everything).
pub(super) fn sockets_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    fn covers(wild: IpAddr, other: IpAddr) -> bool {
        match wild {
            IpAddr::V6(w) => w.is_unspecified(),
            IpAddr::V4(w) => {
                w.is_unspecified()
                    && match other {
                        IpAddr::V4(_) => true,
                        IpAddr::V6(o) => o.to_ipv4_mapped().is_some(),
                    }
            }
        }
    }
    a.port() == b.port() && (a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip()))
}

/// A literal `IP:PORT` to send to; `alternative` ends the "expected" hint.
pub(super) fn parse_endpoint(name: &str, s: &str, alternative: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.trim().parse().map_err(|_| {
        format!(
            "{name} {s:?}: invalid socket address (expected a literal IP:PORT, IPv6 as [ADDR]:PORT{alternative})"
        )
    })?;
    if addr.port() == 0 {
        return Err(format!("{name} {s:?}: port 0 cannot be sent to"));
    }
    if addr.ip().is_unspecified() {
        return Err(format!(
            "{name} {s:?}: {} is not an address to send to",
            addr.ip()
        ));
    }
    Ok(addr)
}

/// A WireGuard device name (`wg0`) or an absolute UAPI socket path.
pub(super) fn check_uapi(name: &str, s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        if s.len() < 2 || s.ends_with('/') || s.contains('\0') {
            return Err(format!("{name} {s:?}: not a path to a UAPI socket"));
        }
        return Ok(s.to_string());
    }
    match crate::upstream::uapi::socket_path(s) {
        Ok(_) => Ok(s.to_string()),
        Err(_) => Err(format!(
            "{name} {s:?}: expected a WireGuard device name (1 to 15 characters, none of them '/', ':' or whitespace) or an absolute path to its UAPI socket"
        )),
    }
}

/// The rules of [`AwgParams::validate`], and fitting the relay's datagram buffers.
pub(super) fn check_awg(params: &AwgParams) -> Result<(), crate::wire::awg::ParamError> {
    params.validate()?;
    params.check_fits(crate::io::MAX_DATAGRAM_LEN)
}

/// The wpex-style listen address, if `bind` or `port` is given.
pub(super) fn wpex_listen(bind: Option<IpAddr>, port: Option<u16>) -> Option<SocketAddr> {
    if bind.is_none() && port.is_none() {
        return None;
    }
    Some(SocketAddr::new(
        bind.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        port.unwrap_or(WPEX_DEFAULT_PORT),
    ))
}

/// Longest `stats_interval`: a longer one is a typo, and past ~2^63 ns it overflows a clock.
pub(super) const MAX_STATS_INTERVAL_SECS: u64 = 86_400;

/// Two listen addresses that would claim the same datagrams ([`sockets_overlap`]) cannot both
/// be bound: the second bind fails with "Address already in use" at run time. `[::]:P` is
/// dual-stack (the relay sets IPV6_V6ONLY=0), so it already receives IPv4 on P.
pub(super) fn check_listen_overlap(listen: &[SocketAddr], label: &str) -> Result<(), ConfigError> {
    for (i, a) in listen.iter().enumerate().filter(|(_, a)| a.port() != 0) {
        let Some(b) = listen[i + 1..].iter().find(|b| sockets_overlap(*a, **b)) else {
            continue;
        };
        // the covering side: [::] over 0.0.0.0, a wildcard over a specific address
        let a_covers = a.ip().is_unspecified() && (a.is_ipv6() || !b.ip().is_unspecified());
        let (wild, other) = if a_covers { (a, b) } else { (b, a) };
        let message = if wild.is_ipv6() && other.is_ipv4() {
            format!(
                "{label}: {wild} is dual-stack and already receives IPv4 on port {}, so {other} cannot be bound beside it; list one of them",
                wild.port()
            )
        } else {
            format!(
                "{label}: {wild} already receives what {other} would (the same port, and it covers that address), so {other} cannot be bound beside it; list one of them"
            )
        };
        return Err(ConfigError::new(message));
    }
    Ok(())
}

/// The state file is written at every clean stop: its directory must exist and be writable,
/// and the path must not be a directory, or every restart would lose the sessions.
pub(super) fn check_state_file(path: &std::path::Path, label: &str) -> Result<(), ConfigError> {
    let shown = path.display();
    if path.is_dir() {
        return Err(ConfigError::new(format!(
            "{label} {shown}: is a directory; name a file in it, e.g. {}",
            path.join("state").display()
        )));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(ConfigError::new(format!(
            "{label} {shown}: directory {} does not exist (create it, e.g. mkdir -p {})",
            dir.display(),
            dir.display()
        )));
    }
    let Ok(c_dir) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(dir.as_os_str()))
    else {
        return Err(ConfigError::new(format!(
            "{label} {shown}: path contains a NUL byte"
        )));
    };
    // SAFETY: access() reads a NUL-terminated path that lives across the call.
    let writable = unsafe { libc::access(c_dir.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
    if !writable {
        return Err(ConfigError::new(format!(
            "{label} {shown}: directory {} is not writable by this user, so sessions could not be saved",
            dir.display()
        )));
    }
    Ok(())
}

pub(super) fn dedup<T: Eq + Hash + Copy>(items: Vec<T>) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|x| seen.insert(*x)).collect()
}

pub(super) fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

/// Checks one source's single-valued settings and returns its wpex-style listen address.
/// `name` spells a key as the source does (`--port`, `port`); `at` places a message (on its
/// file line).
pub(super) fn check_scalars(
    s: &Scalars,
    name: impl Fn(&str) -> String,
    at: impl Fn(&str, String) -> ConfigError,
) -> Result<Option<SocketAddr>, ConfigError> {
    if let Some(n) = s.threads {
        check_threads(&name("threads"), n).map_err(|m| at("threads", m))?;
    }
    if let Some(path) = &s.control_socket {
        check_control_socket(&name("control_socket"), path).map_err(|m| at("control_socket", m))?;
    }
    if let Some(addr) = &s.metrics {
        parse_metrics(&name("metrics"), addr).map_err(|m| at("metrics", m))?;
    }
    let bind = match &s.bind {
        Some(b) => Some(parse_bind(&name("bind"), b).map_err(|m| at("bind", m))?),
        None => None,
    };
    let port = match s.port {
        Some(p) => Some(check_port(&name("port"), p).map_err(|m| at("port", m))?),
        None => None,
    };
    Ok(wpex_listen(bind, port))
}

/// A path a Unix socket can be bound at (`off` is no socket).
fn check_control_socket(name: &str, path: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // sun_path holds 108 bytes, the terminating NUL included
    const MAX: usize = 107;
    if bytes.is_empty() || bytes.contains(&0) || bytes.ends_with(b"/") {
        return Err(format!(
            "{name} {:?}: expected a path for the socket, or off",
            path.display().to_string()
        ));
    }
    if bytes.len() > MAX {
        return Err(format!(
            "{name} {}: {} bytes long, but a Unix socket path may have at most {MAX}",
            path.display(),
            bytes.len()
        ));
    }
    Ok(())
}
