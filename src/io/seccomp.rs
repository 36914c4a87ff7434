//! Test-only seccomp filters that make one system call fail on the calling thread, the way a
//! container's profile or a kernel built without a feature does, so the fallback paths run
//! for real. Filters are per thread (no TSYNC) and inherited by threads spawned afterwards:
//! install them on a throwaway thread.

use std::io;

const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
/// Offset of `seccomp_data.args[0]` (after `nr`, `arch` and `instruction_pointer`); its low
/// 32 bits on a little-endian machine.
const ARG0: u32 = 16;

fn stmt(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn install(filter: &[libc::sock_filter]) {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments and a pointer to a live filter program, which the
    // kernel copies before returning.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "seccomp: {}",
            io::Error::last_os_error()
        );
    }
}

/// io_uring_setup fails with EPERM, as under Docker's default seccomp profile.
pub(crate) fn deny_io_uring_setup_on_this_thread() {
    install(&[
        // A = nr; io_uring_setup -> EPERM, anything else -> allow
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        stmt(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::SYS_io_uring_setup as u32,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, 0, 0, SECCOMP_RET_ALLOW),
    ]);
}

/// socket(AF_INET6, ..) fails with EAFNOSUPPORT, as on a kernel without IPv6 (ipv6.disable=1).
pub(crate) fn deny_ipv6_sockets_on_this_thread() {
    install(&[
        // A = nr; not socket -> allow
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        stmt(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            3,
            libc::SYS_socket as u32,
        ),
        // A = domain; AF_INET6 -> EAFNOSUPPORT
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, ARG0),
        stmt(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            libc::AF_INET6 as u32,
        ),
        stmt(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, 0, 0, SECCOMP_RET_ALLOW),
    ]);
}
