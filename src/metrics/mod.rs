//! Prometheus metrics over HTTP (`--metrics ADDR`): `GET /metrics` answers the relay's
//! counters in the Prometheus text format ([`encode`]).
//!
//! A minimal HTTP/1.1 responder on std, built for clients that misbehave: one request per
//! connection (`Connection: close`), the request head bounded in size and in time, a fixed
//! pool of worker threads fed by a bounded queue (a connection that finds it full gets a 503
//! at once), 404 for other paths and 405 for other methods. tiny_http was the alternative;
//! it starts a thread per busy connection with no bound and sets no read timeouts, which is
//! what a silent client exploits.
//!
//! A scrape never touches the datapath: it reads the shards' atomics, the lock-free latency
//! histogram, and copies the routing State's counters under its lock (as the stats log line
//! does). Only counting sessions walks a table, at most once per [`TABLE_REFRESH`].

pub mod encode;
pub mod histogram;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};

use crate::relay::{Observer, TableSizes};
use encode::Scrape;

/// Threads answering requests: a few silent clients cannot hold them all for long (each is
/// cut off at [`REQUEST_DEADLINE`]), and a scraper needs one.
pub const WORKERS: usize = 4;
/// Accepted connections waiting for a worker; beyond this a connection gets a 503.
pub const QUEUE_LEN: usize = 16;
/// How long one read of the request may wait.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the whole request head may take (against clients that trickle bytes).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// How long writing the response may block on a client that does not read.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head (request line and headers) accepted.
pub const MAX_REQUEST_LEN: usize = 8 * 1024;
/// Session counts are at most this old: counting walks the index table under the routing
/// State's lock, so a flood of scrapes must not repeat it.
pub const TABLE_REFRESH: Duration = Duration::from_secs(1);
/// How often the accept loop checks for a stop.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// A running metrics endpoint. Dropping it stops it, as [`Handle::stop`] does.
pub struct Handle {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets the workers finish the request they serve (bounded by the
    /// timeouts above) and waits for every thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.halt();
    }
}

/// What the workers share: the relay's counters and the cached table sizes.
struct Source {
    observer: Observer,
    tables: Mutex<Option<(Instant, TableSizes)>>,
}

impl Source {
    fn scrape(&self) -> Scrape {
        let tables = {
            // Held while counting, so concurrent scrapes wait for one count instead of each
            // taking the State's lock for a walk.
            let mut cached = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            match *cached {
                Some((at, t)) if at.elapsed() < TABLE_REFRESH => t,
                _ => {
                    let t = self.observer.table_sizes();
                    *cached = Some((Instant::now(), t));
                    t
                }
            }
        };
        Scrape {
            stats: self.observer.stats(),
            shards: self.observer.shards(),
            tables,
            handshake_latency: self.observer.handshake_latency().snapshot(),
            backend: self.observer.backend().as_str(),
        }
    }
}

/// Binds `addr` and serves `/metrics` for `observer`'s relay until the handle is stopped or
/// dropped. Logs one line with the URL.
///
/// # Errors
/// The address cannot be bound (in use, not local, no permission), or a thread cannot be
/// started; nothing is left running.
pub fn serve(addr: SocketAddr, observer: Observer) -> io::Result<Handle> {
    let listener = TcpListener::bind(addr)?;
    // Non-blocking: the accept loop waits in poll(2), which lets it see a stop.
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let source = Arc::new(Source {
        observer,
        tables: Mutex::new(None),
    });
    let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(QUEUE_LEN);
    let mut handle = Handle {
        local_addr,
        stop: stop.clone(),
        threads: Vec::new(),
    };
    for n in 0..WORKERS {
        let rx: Receiver<TcpStream> = rx.clone();
        let source = source.clone();
        let worker = std::thread::Builder::new()
            .name(format!("wgrelay-metrics-{n}"))
            .spawn(move || {
                // Ends when the accept loop is gone (the channel disconnects).
                while let Ok(stream) = rx.recv() {
                    answer(stream, &source);
                }
            })?;
        handle.threads.push(worker);
    }
    let accept = std::thread::Builder::new()
        .name("wgrelay-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if !readable(&listener, ACCEPT_POLL) {
                    continue;
                }
                // Several may be waiting; take them all before polling again.
                loop {
                    match listener.accept() {
                        Ok((stream, _)) => match tx.try_send(stream) {
                            Ok(()) => {}
                            Err(TrySendError::Full(stream)) => busy(stream),
                            Err(TrySendError::Disconnected(_)) => return,
                        },
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // ECONNABORTED, EMFILE and the like: try again at the next poll
                        // (which sleeps, so a lasting error does not spin).
                        Err(e) => {
                            log::debug!("metrics: accept: {e}");
                            std::thread::sleep(ACCEPT_POLL);
                            break;
                        }
                    }
                }
            }
        })?;
    handle.threads.push(accept);
    log::info!("metrics on http://{local_addr}/metrics");
    Ok(handle)
}

/// Waits up to `timeout` for a connection to accept.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is one live, initialised pollfd for the duration of the call, and the
    // count passed is 1; the fd belongs to `listener`, which outlives the call.
    let n = unsafe { libc::poll(&mut fds, 1, ms) };
    n > 0 && fds.revents & libc::POLLIN != 0
}

/// Every worker is busy and the queue is full: say so without waiting for the client.
fn busy(stream: TcpStream) {
    // A fresh connection's send buffer is empty, so this short write does not block; if it
    // fails the client sees the connection close, which it must handle anyway.
    if stream.set_nonblocking(true).is_ok() {
        let mut stream = stream;
        let _ = stream.write_all(&response(503, "Service Unavailable", &[], b"busy\n"));
        // Closing with the request unread would reset the connection, and the client might
        // lose the 503: take what already arrived, without waiting for more.
        let _ = stream.shutdown(Shutdown::Write);
        let mut sink = [0u8; 4096];
        let _ = stream.read(&mut sink);
    }
}

/// What a request asks for, or why it cannot be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET` (or `HEAD`: `head` true) of `/metrics`.
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// Parses a request head (up to its blank line). Only the request line matters; headers are
/// read and ignored.
pub fn parse_request(head: &[u8]) -> Request {
    let line_end = head.iter().position(|b| *b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Request::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Request::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Request::NotFound;
    }
    match method {
        "GET" => Request::Metrics { head: false },
        "HEAD" => Request::Metrics { head: true },
        _ => Request::MethodNotAllowed,
    }
}

fn response(code: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {code} {reason}\r\n");
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_type {
        out.push_str("Content-Type: text/plain; charset=utf-8\r\n");
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Reads the request head: `Ok(Some(head))`, `Ok(None)` when the client closed first, or an
/// error (too long, too slow).
fn read_head(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, (u16, &'static str)> {
    let started = Instant::now();
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        // Each read waits at most what is left of the deadline.
        let left = REQUEST_DEADLINE.saturating_sub(started.elapsed());
        if left.is_zero()
            || stream
                .set_read_timeout(Some(left.min(READ_TIMEOUT)))
                .is_err()
        {
            return Err((408, "Request Timeout"));
        }
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => {
                // Search only where the new bytes could complete the blank line.
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&buf[..n]);
                let tail = &head[from..];
                if tail.windows(4).any(|w| w == b"\r\n\r\n")
                    || tail.windows(2).any(|w| w == b"\n\n")
                {
                    return Ok(Some(head));
                }
                if head.len() > MAX_REQUEST_LEN {
                    return Err((431, "Request Header Fields Too Large"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock / TimedOut: the read timeout expired.
            Err(_) => return Err((408, "Request Timeout")),
        }
    }
}

/// Serves one connection: one request, one response, then close.
fn answer(mut stream: TcpStream, source: &Source) {
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let reply = match read_head(&mut stream) {
        Ok(None) => return,
        Err((code, reason)) => response(code, reason, &[], reason.as_bytes()),
        Ok(Some(head)) => match parse_request(&head) {
            Request::Metrics { head } => {
                let page = source.scrape().encode();
                let mut r = response(
                    200,
                    "OK",
                    &[("Content-Type", encode::CONTENT_TYPE)],
                    page.as_bytes(),
                );
                if head {
                    r.truncate(r.len() - page.len());
                }
                r
            }
            Request::NotFound => response(404, "Not Found", &[], b"not found: try /metrics\n"),
            Request::MethodNotAllowed => response(
                405,
                "Method Not Allowed",
                &[("Allow", "GET, HEAD")],
                b"only GET and HEAD\n",
            ),
            Request::BadRequest => response(400, "Bad Request", &[], b"bad request\n"),
        },
    };
    if stream.write_all(&reply).is_err() {
        return;
    }
    // Closing with unread bytes (a request body) would reset the connection and could lose
    // the response: say we are done, then read what is left, briefly.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut sink = [0u8; 1024];
    for _ in 0..64 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_from_the_request_line() {
        let cases: [(&[u8], Request); 9] = [
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                Request::Metrics { head: false },
            ),
            (
                b"HEAD /metrics HTTP/1.0\r\n\r\n",
                Request::Metrics { head: true },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.1\r\n\r\n",
                Request::Metrics { head: false },
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Request::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Request::MethodNotAllowed),
            (b"GET /metrics\r\n\r\n", Request::BadRequest),
            (b"GET /metrics SPDY/3\r\n\r\n", Request::BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Request::BadRequest),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                parse_request(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(parse_request(b""), Request::BadRequest);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let r = response(
            405,
            "Method Not Allowed",
            &[("Allow", "GET, HEAD")],
            b"no\n",
        );
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: GET, HEAD\r\n"), "{text}");
        assert!(text.contains("\r\nContent-Length: 3\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n\r\nno\n"), "{text}");
    }
}
