//! The control socket: a Unix stream socket, owner-only, that answers `wgrelay show` and
//! `wgrelay reload`, off the datapath.
//!
//! Protocol: one JSON request per line (`{"command":"show"}`, `{"command":"reload"}`), one
//! JSON [`Reply`] per line. Bounded: a request longer than [`MAX_REQUEST`] bytes, or not
//! JSON, or an unknown command gets an error reply; a client silent for [`IO_TIMEOUT`] is
//! dropped; at most [`MAX_CLIENTS`] are served at once (each on its own thread), so one slow
//! or hostile client cannot stop the server.

pub mod client;
pub mod render;
pub mod snapshot;

pub use snapshot::{Inspector, KeyView, ListenerView, SessionView, ShardView, Snapshot};

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 4096;

/// How long a client may take to send a request or read a reply.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Clients served at once; one more is told the server is busy.
pub const MAX_CLIENTS: usize = 8;

/// Requests answered on one connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 64;

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

/// What `reload` runs: re-read the configuration and apply it. `Ok` carries what changed,
/// `Err` why nothing did.
pub type ReloadHook = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The reload hook until one that re-reads the configuration is wired in: a clear error.
pub fn no_reload() -> ReloadHook {
    Box::new(|| {
        Err(
            "reload is not available in this build of wgrelay: restart the relay to apply a \
             new configuration"
                .to_string(),
        )
    })
}

/// A request, as parsed from one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Show,
    Reload,
}

impl Request {
    /// The line a client sends for this request (without the newline).
    pub fn to_line(self) -> String {
        let command = match self {
            Request::Show => "show",
            Request::Reload => "reload",
        };
        serde_json::json!({ "command": command }).to_string()
    }
}

/// Parses one request line: a JSON object with a `command` string.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    #[derive(Deserialize)]
    struct Raw {
        command: String,
    }
    let raw: Raw = serde_json::from_slice(line).map_err(|e| {
        format!("bad request ({e}): send one JSON object per line, e.g. {{\"command\":\"show\"}}")
    })?;
    match raw.command.as_str() {
        "show" => Ok(Request::Show),
        "reload" => Ok(Request::Reload),
        other => Err(format!(
            "unknown command {other:?}: the commands are show and reload"
        )),
    }
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What `reload` did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
}

impl Reply {
    pub fn error(e: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(e.into()),
            message: None,
            snapshot: None,
        }
    }

    fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self)
            .unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":\"{e}\"}}").into_bytes());
        v.push(b'\n');
        v
    }
}

/// The running control socket. Dropping it stops the server and removes the socket file
/// (if it is still the one this server bound).
pub struct Handle {
    path: PathBuf,
    /// The socket file's identity (device, inode), so a file someone else put there since is
    /// left alone.
    id: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn flag_error(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("--control-socket {}: {what}", path.display()))
}

/// [`flag_error`] of a path another relay or another file holds: a configuration conflict
/// (`AddrInUse`), not a path that cannot be made here.
fn conflict(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("--control-socket {}: {what}", path.display()),
    )
}

/// Binds the socket at `path` (its directory created 0700 if missing, the socket 0600) and
/// serves it on a thread of its own.
///
/// # Errors
/// A relay already answers at `path` (two relays on one host need two paths) or `path` is
/// something other than a socket (both `AddrInUse`), or the directory or socket cannot be
/// made (a read-only root, no permission: other kinds). A socket file
/// nobody answers on (left by a relay that was killed) is replaced.
pub fn serve(path: &Path, inspector: Inspector, reload: ReloadHook) -> io::Result<Handle> {
    let listener = bind(path)?;
    let m = std::fs::symlink_metadata(path).map_err(|e| flag_error(path, e))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Served {
        inspector,
        reload,
        clients: AtomicUsize::new(0),
    });
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("wgrelay-ctl".into())
            .spawn(move || accept_loop(&listener, &stop, &shared))?
    };
    log::info!("control socket at {}", path.display());
    Ok(Handle {
        path: path.to_path_buf(),
        id: (m.dev(), m.ino()),
        stop,
        thread: Some(thread),
    })
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(flag_error(path, "not a file path"));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| flag_error(path, format_args!("cannot create {}: {e}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(conflict(
                path,
                "exists and is not a socket; choose another path",
            ))
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(conflict(
                    path,
                    "a running relay already answers there; two relays on one host need two \
                     paths (set --control-socket PATH, or off)",
                ))
            }
            // a socket nobody listens on: left by a relay that did not stop cleanly
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("replacing the stale control socket {}", path.display());
            }
            Err(e) => return Err(flag_error(path, format_args!("cannot check it: {e}"))),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(flag_error(path, e)),
    }
    // Bound under a temporary name, made owner-only, then renamed into place: the socket is
    // never reachable with the umask's permissions, and a stale one is replaced atomically.
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| flag_error(path, e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(flag_error(path, e));
    }
    Ok(listener)
}

struct Served {
    inspector: Inspector,
    reload: ReloadHook,
    clients: AtomicUsize,
}

/// Whether `fd` becomes readable within `timeout`.
fn readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, living across the call; the count says one.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    n > 0
}

fn accept_loop(listener: &UnixListener, stop: &AtomicBool, shared: &Arc<Served>) {
    while !stop.load(Ordering::Relaxed) {
        if !readable(listener.as_raw_fd(), ACCEPT_POLL) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        let setup = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)));
        if setup.is_err() {
            continue;
        }
        if shared.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            let busy = Reply::error(format!(
                "busy: {MAX_CLIENTS} clients are being served; try again"
            ));
            let _ = (&stream).write_all(&busy.line());
            continue;
        }
        let served = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("wgrelay-ctl-client".into())
            .spawn(move || {
                serve_client(stream, &served);
                served.clients.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            shared.clients.fetch_sub(1, Ordering::AcqRel);
            log::warn!("control socket: cannot start a client thread: {e}");
        }
    }
}

/// Answers one client's requests until it closes, errs, times out or sends too much.
fn serve_client(stream: UnixStream, served: &Served) {
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        line.clear();
        let limit = u64::try_from(MAX_REQUEST).unwrap_or(u64::MAX) + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let complete = line.last() == Some(&b'\n');
        if !complete && line.len() > MAX_REQUEST {
            // the rest of the line cannot be told from the next request: answer and close
            let _ = writer.write_all(
                &Reply::error(format!("request longer than {MAX_REQUEST} bytes")).line(),
            );
            return;
        }
        let reply = match parse_request(line.trim_ascii()) {
            Err(e) => Reply::error(e),
            Ok(Request::Show) => Reply {
                ok: true,
                error: None,
                message: None,
                snapshot: Some(served.inspector.snapshot()),
            },
            Ok(Request::Reload) => match (served.reload)() {
                Ok(m) => Reply {
                    ok: true,
                    error: None,
                    message: Some(m),
                    snapshot: None,
                },
                Err(e) => Reply::error(e),
            },
        };
        if writer.write_all(&reply.line()).is_err() || !complete {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_and_explains_bad_ones() {
        assert_eq!(parse_request(br#"{"command":"show"}"#), Ok(Request::Show));
        assert_eq!(
            parse_request(br#" {"command": "reload", "extra": 1} "#.trim_ascii()),
            Ok(Request::Reload)
        );
        assert_eq!(
            parse_request(Request::Show.to_line().as_bytes()),
            Ok(Request::Show)
        );
        let e = parse_request(br#"{"command":"stop"}"#).unwrap_err();
        assert_eq!(
            e,
            "unknown command \"stop\": the commands are show and reload"
        );
        for bad in [&b"show"[..], b"", b"{}", b"{\"command\":5}", b"\xff\xfe"] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.starts_with("bad request ("), "{e}");
            assert!(e.contains(r#"{"command":"show"}"#), "{e}");
        }
    }

    #[test]
    fn replies_round_trip_and_skip_empty_fields() {
        let r = Reply::error("nope");
        let line = r.line();
        assert_eq!(line, b"{\"ok\":false,\"error\":\"nope\"}\n");
        let back: Reply = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_default_reload_hook_is_an_error() {
        let e = no_reload()().unwrap_err();
        assert!(e.contains("reload is not available"), "{e}");
    }
}
