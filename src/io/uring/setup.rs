//! Ring construction (setup flags best first), enabling the ring on its issuer thread, and
//! [`probe`]: whether the backend can run here, and if not, why.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring, Probe};

use super::super::sys::zeroed;
use super::bufpool::{BufPool, BGID, NAME_LEN};
use super::{cancel_entry, push, Token, UringBackend};

/// Setup flags the kernel accepted, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RingMode {
    /// SINGLE_ISSUER | DEFER_TASKRUN | R_DISABLED (| SUBMIT_ALL): Linux 6.1+.
    DeferTaskrun,
    /// COOP_TASKRUN (| SUBMIT_ALL): Linux 5.19+.
    CoopTaskrun,
    /// No optional flags.
    Plain,
}

/// Sets the optional setup flags of one attempt on a builder.
type SetupFlags = fn(&mut io_uring::Builder);

/// Creates a ring, trying the setup flags best first and falling back on EINVAL (a kernel that
/// does not know a flag rejects the whole setup with EINVAL).
pub(super) fn build_ring(sq: u32, cq: u32) -> io::Result<(IoUring, RingMode)> {
    let attempts: [(RingMode, SetupFlags); 5] = [
        (RingMode::DeferTaskrun, |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_r_disabled()
                .setup_submit_all();
        }),
        (RingMode::DeferTaskrun, |b| {
            b.setup_single_issuer()
                .setup_defer_taskrun()
                .setup_r_disabled();
        }),
        (RingMode::CoopTaskrun, |b| {
            b.setup_coop_taskrun().setup_submit_all();
        }),
        (RingMode::CoopTaskrun, |b| {
            b.setup_coop_taskrun();
        }),
        (RingMode::Plain, |_| {}),
    ];
    let mut last = io::Error::from_raw_os_error(libc::EINVAL);
    for (mode, configure) in attempts {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq);
        configure(&mut builder);
        match builder.build(sq) {
            Ok(ring) => return Ok((ring, mode)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

impl UringBackend {
    /// Lifts R_DISABLED and arms the receives on first use; afterwards checks that the caller
    /// is the issuer thread (SINGLE_ISSUER rings refuse others with EEXIST).
    pub(super) fn ensure_enabled(&mut self) -> io::Result<()> {
        if self.enabled {
            if let Some(t) = self.issuer {
                if t != thread::current().id() {
                    return Err(io::Error::other(
                        "uring backend used from a second thread (its ring is SINGLE_ISSUER)",
                    ));
                }
            }
            return Ok(());
        }
        if self.mode == RingMode::DeferTaskrun {
            self.ring
                .submitter()
                .register_enable_rings()
                .map_err(|e| io::Error::new(e.kind(), format!("io_uring enable rings: {e}")))?;
            self.issuer = Some(thread::current().id());
        }
        self.enabled = true;
        if !self.stopping {
            for idx in 0..self.listeners.sockets.len() {
                self.arm(idx);
            }
        }
        self.arm_waker();
        Ok(())
    }
}

/// Can the io_uring backend run here? Checks that a ring can be set up, that the kernel has the
/// opcodes and features it uses (RECVMSG, SENDMSG, ASYNC_CANCEL, EXT_ARG waits, a buffer ring)
/// and that a multishot recvmsg really delivers (Linux 6.0), on a private AF_UNIX socket pair.
///
/// # Errors
/// Why not, in one line for the `--backend auto` log, e.g.
/// `io_uring disabled by kernel.io_uring_disabled=2` or
/// `io_uring_setup: Operation not permitted (blocked, e.g. by a seccomp profile such as a
/// container runtime's default)`.
pub fn probe() -> Result<(), String> {
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok());
    if sysctl == Some(2) {
        return Err("io_uring disabled by kernel.io_uring_disabled=2".into());
    }
    let (ring, mode) = build_ring(8, 16).map_err(|e| setup_error(&e, sysctl))?;
    if mode == RingMode::DeferTaskrun {
        ring.submitter()
            .register_enable_rings()
            .map_err(|e| format!("io_uring enable rings: {}", strerror(&e)))?;
    }
    if !ring.params().is_feature_ext_arg() {
        return Err("io_uring lacks IORING_FEAT_EXT_ARG (timed waits; needs Linux 5.11)".into());
    }
    let mut p = Probe::new();
    ring.submitter().register_probe(&mut p).map_err(|e| {
        format!(
            "io_uring_register(PROBE): {} (needs Linux 5.6)",
            strerror(&e)
        )
    })?;
    for (code, name) in [
        (opcode::RecvMsgMulti::CODE, "RECVMSG"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("io_uring lacks IORING_OP_{name}"));
        }
    }
    let mut pool = BufPool::new(8, 256).map_err(|e| format!("mmap: {}", strerror(&e)))?;
    pool.register(&ring).map_err(|e| {
        format!(
            "io_uring buffer ring registration: {} (needs Linux 5.19)",
            strerror(&e)
        )
    })?;
    probe_multishot(ring, &mut pool)
}

/// Arms a multishot recvmsg on an AF_UNIX datagram pair, sends one byte and checks the
/// completion. Consumes the ring so it is closed before `pool` can be unmapped.
fn probe_multishot(mut ring: IoUring, pool: &mut BufPool) -> Result<(), String> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "socketpair for the io_uring probe: {}",
            strerror(&io::Error::last_os_error())
        ));
    }
    // SAFETY: socketpair succeeded, so both are fresh descriptors owned by nobody else.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut hdr: Box<libc::msghdr> = Box::new(zeroed());
    hdr.msg_namelen = NAME_LEN as libc::socklen_t;
    let entry = opcode::RecvMsgMulti::new(Fd(rx.as_raw_fd()), &*hdr, BGID)
        .build()
        .user_data(Token::Recv(0).encode());
    // SAFETY: `hdr` and `pool` outlive the request: before returning, the request is
    // cancelled and its end awaited, or else the pool is leaked (`hdr` is leaked too).
    if !unsafe { push(&mut ring, &entry) } {
        return Err("io_uring probe: submission queue full".into());
    }
    // SAFETY: sends one byte from a live local buffer on an open socket.
    let sent = unsafe { libc::send(tx.as_raw_fd(), b"p".as_ptr().cast(), 1, 0) };
    if sent != 1 {
        return Err(format!(
            "io_uring probe send: {}",
            strerror(&io::Error::last_os_error())
        ));
    }
    let mut verdict = Err("multishot recvmsg: no completion within 1 s".to_string());
    let mut armed = true;
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut cancelled = false;
    for _ in 0..50 {
        let ts = Timespec::new().nsec(20_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        if let Err(e) = ring.submitter().submit_with_args(1, &args) {
            if !matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) {
                verdict = Err(format!("io_uring_enter: {}", strerror(&e)));
                break;
            }
        }
        for c in ring.completion() {
            if Token::decode(c.user_data()) != Some(Token::Recv(0)) {
                continue;
            }
            if !cqueue::more(c.flags()) {
                armed = false;
            }
            if cancelled {
                continue;
            }
            verdict = if c.result() < 0 {
                let e = io::Error::from_raw_os_error(-c.result());
                Err(format!(
                    "multishot recvmsg refused: {} (needs Linux 6.0)",
                    strerror(&e)
                ))
            } else if cqueue::buffer_select(c.flags()).is_none() {
                Err("multishot recvmsg completed without a provided buffer".into())
            } else if !cqueue::more(c.flags()) {
                Err("multishot recvmsg ended after one datagram (not multishot)".into())
            } else {
                Ok(())
            };
        }
        if !armed {
            break;
        }
        if !cancelled && (verdict.is_ok() || Instant::now() >= deadline) {
            cancelled = true;
            // SAFETY: a cancel request carries no pointers.
            let _ = unsafe { push(&mut ring, &cancel_entry(Token::Recv(0))) };
        }
    }
    if armed {
        // Never seen the end of the request: keep what it may still use.
        pool.mem
            .leak
            .store(true, std::sync::atomic::Ordering::Relaxed);
        mem::forget(hdr);
    }
    drop(ring);
    verdict
}

/// The io_uring_setup error, with what it can mean. ENOSYS does not prove a kernel without
/// io_uring: a seccomp filter fails a blocked syscall with whatever errno its profile names,
/// ENOSYS or EPERM as a rule (Docker's default profile blocks io_uring from Docker 25 on;
/// `scripts/container-test.sh` blocks it both ways).
fn setup_error(e: &io::Error, sysctl: Option<u8>) -> String {
    const SECCOMP: &str = "a seccomp profile such as a container runtime's default";
    let msg = strerror(e);
    match e.raw_os_error() {
        Some(libc::EPERM) if sysctl == Some(1) => format!(
            "io_uring_setup: {msg} (kernel.io_uring_disabled=1 allows only privileged processes, \
             or blocked by {SECCOMP})"
        ),
        Some(libc::EPERM) => format!("io_uring_setup: {msg} (blocked, e.g. by {SECCOMP})"),
        Some(libc::ENOSYS) => {
            format!("io_uring_setup: {msg} (not in this kernel, or blocked by {SECCOMP})")
        }
        Some(libc::ENOMEM) => format!("io_uring_setup: {msg} (RLIMIT_MEMLOCK too low?)"),
        _ => format!("io_uring_setup: {msg}"),
    }
}

/// An OS error's text without the trailing "(os error N)".
fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    #[test]
    fn probe_says_why() {
        match probe() {
            Ok(()) => println!("io_uring usable here"),
            Err(why) => {
                println!("io_uring unusable here: {why}");
                assert!(!why.is_empty());
            }
        }
    }

    /// The `--backend auto` fallback path: a seccomp filter (Docker's default profile does
    /// this) makes io_uring_setup fail with EPERM. Installed on a throwaway thread only:
    /// seccomp filters are per thread without TSYNC.
    #[test]
    fn probe_explains_seccomp_refusal() {
        let why = thread::spawn(|| {
            crate::io::seccomp::deny_io_uring_setup_on_this_thread();
            let err = UringBackend::new(Vec::new()).expect_err("setup refused");
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
            probe().expect_err("probe must fail under the filter")
        })
        .join()
        .expect("seccomp thread");
        println!("probe under seccomp: {why}");
        assert_eq!(
            why,
            "io_uring_setup: Operation not permitted (blocked, e.g. by a seccomp profile such \
             as a container runtime's default)"
        );
    }

    #[test]
    fn setup_errors_name_the_cause() {
        let e = |n| io::Error::from_raw_os_error(n);
        let disabled = setup_error(&e(libc::EPERM), Some(1));
        assert!(disabled.contains("io_uring_disabled=1"), "{disabled}");
        assert!(disabled.contains("seccomp profile"), "{disabled}");
        // ENOSYS is also what a seccomp profile can answer: the text must not blame the kernel
        // alone.
        assert_eq!(
            setup_error(&e(libc::ENOSYS), None),
            "io_uring_setup: Function not implemented (not in this kernel, or blocked by a \
             seccomp profile such as a container runtime's default)"
        );
        assert!(setup_error(&e(libc::ENOMEM), Some(0)).contains("RLIMIT_MEMLOCK"));
        assert_eq!(strerror(&e(libc::EPERM)), "Operation not permitted");
    }
}
