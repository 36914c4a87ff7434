//! Service-manager notifications (`sd_notify(3)`): readiness, reload and stop, for a
//! `Type=notify` unit.
//!
//! - [`ready`] after every socket is bound (`READY=1` and a `STATUS=` line); again after a
//!   reload finished.
//! - [`reloading`] when a reload begins (`RELOADING=1` with `MONOTONIC_USEC=`, which systemd
//!   253+ requires of `Type=notify-reload` units and older ones ignore).
//! - [`stopping`] when shutdown begins (`STOPPING=1`).
//!
//! Without `NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) nothing is sent. A failed
//! send is logged once and never stops the relay: readiness is a courtesy to the manager, and a
//! relay that forwards packets must keep doing so whatever happened to the manager's socket.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

/// Set once a failed send was logged, so a broken socket costs one line, not one per reload.
static SEND_FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);

/// `READY=1` and `STATUS=status`: startup (or a reload) is complete.
pub fn ready(status: &str) {
    let status = one_line(status);
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// `RELOADING=1` and `MONOTONIC_USEC=now`: a reload began; [`ready`] ends it.
pub fn reloading() {
    send(&reloading_states());
}

fn reloading_states() -> Vec<NotifyState<'static>> {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => vec![NotifyState::Reloading, now],
        // CLOCK_MONOTONIC cannot fail on Linux; should it, RELOADING=1 alone is what
        // systemd before 253 expects anyway.
        Err(_) => vec![NotifyState::Reloading],
    }
}

/// `STOPPING=1`: shutdown began (the state file may still take a moment to write).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

fn send(states: &[NotifyState<'_>]) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = if socket.as_encoded_bytes().starts_with(b"@") {
        send_abstract(&socket.as_encoded_bytes()[1..], states)
    } else {
        sd_notify::notify(states)
    };
    if let Err(e) = result {
        if !SEND_FAILURE_LOGGED.swap(true, Ordering::Relaxed) {
            log::warn!(
                "cannot notify the service manager through NOTIFY_SOCKET={}: {e} (the relay runs on; later failures are not logged)",
                socket.to_string_lossy()
            );
        }
    }
}

/// `NOTIFY_SOCKET=@name` names a socket in the abstract namespace (sd_notify(3)), which
/// `sd_notify::notify` would take for a file path.
fn send_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = SocketAddr::from_abstract_name(name)?;
    let message = message(states);
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification truncated",
        ));
    }
    Ok(())
}

/// The datagram: one `KEY=VALUE` line per state, as `sd_notify::notify` writes it.
fn message(states: &[NotifyState<'_>]) -> String {
    states.iter().map(|s| format!("{s}\n")).collect()
}

/// A value must not break the newline-separated protocol: a newline in it would start a new,
/// unintended assignment.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_one_assignment_per_line() {
        assert_eq!(
            message(&[
                NotifyState::Ready,
                NotifyState::Status("relaying on 127.0.0.1:1")
            ]),
            "READY=1\nSTATUS=relaying on 127.0.0.1:1\n"
        );
        assert_eq!(
            message(&[NotifyState::Reloading, NotifyState::MonotonicUsec(12)]),
            "RELOADING=1\nMONOTONIC_USEC=12\n"
        );
        assert_eq!(message(&[NotifyState::Stopping]), "STOPPING=1\n");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock_in_microseconds() {
        let before = std::time::Instant::now();
        let text = message(&reloading_states());
        let usec = text
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|r| r.strip_suffix('\n'))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(usec.is_some_and(|u| u > 0), "{text:?}");
        let again = message(&reloading_states());
        let later = again
            .trim_end()
            .rsplit('=')
            .next()
            .and_then(|v| v.parse::<u64>().ok());
        assert!(later >= usec, "monotonic: {text:?} then {again:?}");
        assert!(before.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_newline_in_the_status_cannot_inject_an_assignment() {
        assert_eq!(one_line("a\nREADY=1\r\nb"), "a READY=1  b");
    }

    #[test]
    fn abstract_sockets_receive_the_datagram() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let name = format!("wgrelay-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        send_abstract(name.as_bytes(), &[NotifyState::Stopping]).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn a_missing_abstract_socket_is_an_error_not_a_panic() {
        let e = send_abstract(b"wgrelay-notify-nobody-listens", &[NotifyState::Stopping]);
        assert!(e.is_err());
    }
}
