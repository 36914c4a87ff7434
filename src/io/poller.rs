//! Readiness over many sockets: a level-triggered epoll whose waits take microseconds.
//!
//! The backends wait on their own sockets (`poll`, io_uring); this is for a caller that holds
//! more sockets than one `poll` per batch should scan (the load generator's one socket per
//! peer) and receives from the ready ones with [`MmsgBackend::recv_from`](super::MmsgBackend::recv_from),
//! or that paces itself in microseconds (`poll` takes milliseconds).

use std::io;
use std::os::fd::RawFd;
use std::ptr;

/// Ready tokens one wait returns at most (more stay ready for the next: level-triggered).
const EVENTS: usize = 1024;

/// Level-triggered epoll over many sockets; each registration carries a token.
pub struct Poller {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

impl Poller {
    /// A new epoll instance (close-on-exec).
    ///
    /// # Errors
    /// epoll_create1 failed.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall without pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            fd,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
        })
    }

    /// Watches `fd` for readability; its readiness is reported as `token`. The fd must stay
    /// open while it is watched (closing it ends the watch).
    ///
    /// # Errors
    /// epoll_ctl failed.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `ev` is a live epoll_event the kernel only reads.
        let rc = unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_us` microseconds (0: poll) and appends ready tokens to `out`.
    pub fn wait(&mut self, timeout_us: u64, out: &mut Vec<u64>) {
        let ts = libc::timespec {
            tv_sec: (timeout_us / 1_000_000) as libc::time_t,
            tv_nsec: ((timeout_us % 1_000_000) * 1000) as libc::c_long,
        };
        // SAFETY: the events buffer is owned and its length is passed; `ts` is live; a null
        // sigmask is allowed.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd,
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                &ts,
                ptr::null(),
            )
        };
        for ev in self.events.iter().take(usize::try_from(n).unwrap_or(0)) {
            out.push(ev.u64);
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // SAFETY: we own the epoll fd and close it once.
        unsafe {
            libc::close(self.fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn reports_the_ready_socket_by_token_and_times_out() {
        let mut p = Poller::new().expect("epoll");
        let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
        p.add(a.as_raw_fd(), 7).expect("add");
        p.add(b.as_raw_fd(), 9).expect("add");
        let mut out = Vec::new();
        let t = Instant::now();
        p.wait(20_000, &mut out);
        assert!(out.is_empty());
        assert!(
            t.elapsed() >= Duration::from_millis(15),
            "waited the timeout"
        );
        b.send_to(b"x", b.local_addr().expect("local_addr"))
            .expect("send");
        p.wait(1_000_000, &mut out);
        assert_eq!(out, [9]);
        out.clear();
        p.wait(0, &mut out);
        assert_eq!(out, [9], "level-triggered: still ready until read");
    }
}
