//! `wgrelay show` and `wgrelay reload`: one request over the control socket, the answer on
//! stdout, errors on stderr with exit status 1.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::{render, Reply, Request};
use crate::config::DEFAULT_CONTROL_SOCKET;

/// How long the client waits for the relay's answer (a snapshot waits up to a second for the
/// shards; a reload re-reads the configuration).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest reply read (a snapshot lists at most 10,000 sessions per shard).
const MAX_REPLY: u64 = 256 << 20;

/// The socket to talk to: `--control-socket`, else the default.
pub fn socket_path(flag: Option<&Path>) -> Result<PathBuf, String> {
    match flag {
        Some(p) if p == Path::new("off") => Err(
            "--control-socket off: the client needs the path of a running relay's socket"
                .to_string(),
        ),
        Some(p) => Ok(p.to_path_buf()),
        None => Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
    }
}

fn connect_error(path: &Path, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
            "no relay answers at {}: is it running? (a relay started with another \
             --control-socket PATH is reached with the same flag)",
            path.display()
        ),
        io::ErrorKind::PermissionDenied => format!(
            "permission denied on {}: the control socket is owner-only; run this as the \
             relay's user (e.g. with sudo)",
            path.display()
        ),
        _ => format!("cannot connect to {}: {e}", path.display()),
    }
}

/// Sends one request and reads the reply.
pub fn request(path: &Path, req: Request) -> Result<Reply, String> {
    let stream = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
    let io_err = |e: io::Error| format!("{}: {e}", path.display());
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
        .map_err(io_err)?;
    let mut line = req.to_line();
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(io_err)?;
    let mut reply = Vec::new();
    BufReader::new((&stream).take(MAX_REPLY))
        .read_until(b'\n', &mut reply)
        .map_err(io_err)?;
    if reply.is_empty() {
        return Err(format!(
            "{}: the relay closed without answering",
            path.display()
        ));
    }
    serde_json::from_slice(&reply)
        .map_err(|e| format!("{}: unreadable reply ({e})", path.display()))
}

fn print(text: &str) -> ExitCode {
    let mut out = io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wgrelay: cannot print the answer: {e}");
            ExitCode::from(1)
        }
    }
}

fn fail(e: &str) -> ExitCode {
    eprintln!("wgrelay: {e}");
    ExitCode::from(1)
}

/// `wgrelay show [--json]`.
pub fn show(socket: Option<&Path>, json: bool) -> ExitCode {
    let path = match socket_path(socket) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let reply = match request(&path, Request::Show) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    match (reply.ok, reply.snapshot) {
        (true, Some(s)) if json => match serde_json::to_string_pretty(&s) {
            Ok(text) => print(&text),
            Err(e) => fail(&format!("cannot encode the snapshot: {e}")),
        },
        (true, Some(s)) => print(&render::text(&s)),
        _ => fail(
            reply
                .error
                .as_deref()
                .unwrap_or("the relay sent no snapshot"),
        ),
    }
}

/// `wgrelay reload`: prints what the relay did; exit status 1 when it refused.
pub fn reload(socket: Option<&Path>) -> ExitCode {
    let path = match socket_path(socket) {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    match request(&path, Request::Reload) {
        Ok(Reply {
            ok: true, message, ..
        }) => print(message.as_deref().unwrap_or("reloaded")),
        Ok(r) => fail(&format!(
            "reload failed: {}",
            r.error.as_deref().unwrap_or("no reason given")
        )),
        Err(e) => fail(&e),
    }
}
