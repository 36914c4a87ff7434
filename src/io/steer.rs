//! Kernel steering: a classic BPF program on a `SO_REUSEPORT` group that picks the socket (so
//! the shard) from a packet's WireGuard receiver index, so that every packet of a session
//! lands on the same shard, whichever address it comes from.
//!
//! For a UDP reuseport group the program sees the UDP payload at offset 0, and cBPF loads are
//! big-endian. The index is little-endian on the wire, so the shard is a hash of
//! `v = u32::from_be_bytes(index bytes)`: fold (`w = v ^ v >> 16; w ^= w >> 8`), multiply
//! by a Fibonacci constant, keep the upper half, modulo the shards; [`owner_shard`] computes
//! the same.
//! Transport (4) and cookie reply (3) carry the receiver at bytes 4..8, a response (2) at 8..12.
//! An initiation (1) has no receiver: all initiations go to shard 0, so they are routed in the
//! order they arrived (the parked hand-over pairs the initiations of two fresh peers by their
//! order; spread over shards, the two could be routed the other way round). Handshakes are rare
//! and take the shared routing state's lock anyway, so one shard loses nothing. Anything else
//! gets the kernel's usual hash of the 4-tuple (an out-of-range return). A packet too short for
//! a load aborts the program, which the kernel treats as socket 0.

use std::io;
use std::os::fd::AsRawFd;

use crate::wire::Index;

/// `SO_ATTACH_REUSEPORT_CBPF` (asm-generic/socket.h; the libc crate does not export it for
/// Linux). The value differs on mips, sparc and parisc, which the relay does not target.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Fibonacci hashing's multiplier (2^32 / golden ratio, odd).
const STEER_MULTIPLIER: u32 = 0x9e37_79b1;

/// The shard that owns `index` in a group of `shards` sockets: what the steering program
/// computes. Shared by the datapath and by anything that reasons about ownership.
pub fn owner_shard(index: Index, shards: usize) -> usize {
    let shards = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    (steer_hash(index) % shards) as usize
}

/// The steering program's hash of an index, before the modulo.
#[inline]
fn steer_hash(index: Index) -> u32 {
    // The program reads the four index bytes as a big-endian number and folds them, so every
    // byte counts: some implementations number their indices (boringtun: a peer counter in
    // the upper bytes), and a plain modulo of the loaded word would then use one byte only.
    let v = u32::from_be_bytes(index.0.to_le_bytes());
    let w = v ^ (v >> 16);
    let w = w ^ (w >> 8);
    // then a multiplicative hash, whose upper half mixes every bit of the fold
    w.wrapping_mul(STEER_MULTIPLIER) >> 16
}

/// [`owner_shard`] for one number of shards, without a division per packet: the datapath asks
/// for every transport packet, and a 32-bit `div` was a quarter of the shard loop's own time
/// (perf, 64 B GRO runs). The remainder is computed by multiplication (Lemire, Kaser and
/// Kurz, "Faster remainder by direct computation", 2019): exact for every 32-bit dividend and
/// divisor with a 64-bit constant.
#[derive(Debug, Clone, Copy)]
pub struct Owners {
    shards: u32,
    /// `ceil(2^64 / shards)`; 0 (wrapped) for one shard, which makes every owner 0.
    inverse: u64,
}

impl Owners {
    pub fn new(shards: usize) -> Owners {
        let shards = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
        Owners {
            shards,
            inverse: (u64::MAX / u64::from(shards)).wrapping_add(1),
        }
    }

    /// The shard that owns `index`: always `owner_shard(index, shards)`.
    #[inline]
    pub fn of(&self, index: Index) -> usize {
        let fraction = self.inverse.wrapping_mul(u64::from(steer_hash(index)));
        ((u128::from(fraction) * u128::from(self.shards)) >> 64) as usize
    }
}

// Jump offsets count instructions after the next one (cBPF).
fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The steering program for `shards` sockets. With `handshake_queue`, the group has one more
/// socket (number `shards`, bound last) and every initiation goes there: a flood of
/// initiations (anyone can make them, and each costs BLAKE2s) then fills that socket's
/// receive queue, never the queues that carry transport. Without it, initiations go to shard
/// 0. Responses and cookie replies go to the owner of their receiver index either way: they
/// are as many as the initiations that were forwarded, spreading them keeps the handshake
/// plane off one core (routing them all through the handshake socket made a cold start of
/// 1000 pairs in one group drain responses seconds late), and a forged one costs its owner one
/// hash lookup.
pub fn program(shards: usize, handshake_queue: bool) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_B, BPF_JA, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_MISC, BPF_MOD,
        BPF_MUL, BPF_RET, BPF_RSH, BPF_TAX, BPF_W, BPF_X, BPF_XOR,
    };
    let n = u32::try_from(shards.max(1)).unwrap_or(u32::MAX);
    vec![
        // 0: A = message type (the first byte; the other three are zero in valid messages)
        stmt(BPF_LD | BPF_B | BPF_ABS, 0),
        // 1: initiation? shard 0, or the handshake socket
        jump(BPF_JMP | BPF_JEQ | BPF_K, 1, 17, 0),
        // 2: response? receiver at 8
        jump(BPF_JMP | BPF_JEQ | BPF_K, 2, 4, 0),
        // 3: cookie reply? receiver at 4
        jump(BPF_JMP | BPF_JEQ | BPF_K, 3, 1, 0),
        // 4: transport? receiver at 4; anything else: let the kernel hash
        jump(BPF_JMP | BPF_JEQ | BPF_K, 4, 0, 13),
        // 5: A = receiver (type 3 and 4)
        stmt(BPF_LD | BPF_W | BPF_ABS, 4),
        // 6: skip the response load
        stmt(BPF_JMP | BPF_JA, 1),
        // 7: A = receiver (type 2)
        stmt(BPF_LD | BPF_W | BPF_ABS, 8),
        // 8..13: fold: A ^= A >> 16; A ^= A >> 8
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 16),
        stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        stmt(BPF_MISC | BPF_TAX, 0),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 8),
        stmt(BPF_ALU | BPF_XOR | BPF_X, 0),
        // 14, 15: A = (A * multiplier) >> 16
        stmt(BPF_ALU | BPF_MUL | BPF_K, STEER_MULTIPLIER),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 16),
        // 16: A %= shards
        stmt(BPF_ALU | BPF_MOD | BPF_K, n),
        // 17: the socket
        stmt(BPF_RET | libc::BPF_A, 0),
        // 18: out of range: the kernel's own selection
        stmt(BPF_RET | BPF_K, u32::MAX),
        // 19: initiations (all handshake messages with a handshake queue)
        stmt(BPF_RET | BPF_K, if handshake_queue { n } else { 0 }),
    ]
}

/// Attaches the steering program to the reuseport group `socket` belongs to (once per group:
/// the program is shared). The group's sockets are numbered in the order they were bound.
pub fn attach(socket: &impl AsRawFd, shards: usize, handshake_queue: bool) -> io::Result<()> {
    let mut filter = program(shards, handshake_queue);
    let prog = libc::sock_fprog {
        len: u16::try_from(filter.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        filter: filter.as_mut_ptr(),
    };
    // The kernel copies the program during the call; `filter` outlives it.
    super::socket::setsockopt(socket, libc::SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{bind_group, SocketOptions};
    use std::net::{SocketAddr, UdpSocket};
    use std::time::{Duration, Instant};

    fn group(n: usize) -> Vec<UdpSocket> {
        let v = bind_group("127.0.0.1:0".parse().unwrap(), n, &SocketOptions::default()).unwrap();
        for s in &v {
            s.set_nonblocking(true).unwrap();
        }
        v
    }

    fn message(ty: u8, index: u32) -> Vec<u8> {
        let mut m = vec![0u8; if ty == 2 { 92 } else { 32 }];
        m[0] = ty;
        let at = if ty == 2 { 8 } else { 4 };
        m[at..at + 4].copy_from_slice(&index.to_le_bytes());
        m
    }

    /// Which socket of the group got each datagram, by its first 12 bytes.
    fn receive_all(sockets: &[UdpSocket], expected: usize) -> Vec<(usize, Vec<u8>)> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 256];
        while got.len() < expected && Instant::now() < deadline {
            for (i, s) in sockets.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    got.push((i, buf[..n].to_vec()));
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        got
    }

    /// Where each conditional jump of the program lands, checked against the comments.
    #[test]
    fn jumps_land_where_the_comments_say() {
        let p = program(2, false);
        let target = |at: usize, off: u8| at + 1 + usize::from(off);
        assert_eq!(target(1, p[1].jt), 19, "initiation -> ret 0");
        assert_eq!(target(2, p[2].jt), 7, "response -> load at 8");
        assert_eq!(target(3, p[3].jt), 5, "cookie reply -> load at 4");
        assert_eq!(target(4, p[4].jt), 5, "transport -> load at 4");
        assert_eq!(target(4, p[4].jf), 18, "anything else -> kernel hash");
        assert_eq!(6 + 1 + p[6].k as usize, 8, "skip to the fold");
        assert_eq!(p[16].k, 2, "modulo");
        assert_eq!(p[18].k, u32::MAX);
        assert_eq!(p[19].k, 0);
        assert_eq!(p.len(), 20);
        let q = program(2, true);
        assert_eq!(target(1, q[1].jt), 19, "initiation -> handshake socket");
        assert_eq!(target(2, q[2].jt), 7, "response -> load at 8");
        assert_eq!(target(3, q[3].jt), 5, "cookie reply -> load at 4");
        assert_eq!(target(4, q[4].jt), 5, "transport -> load at 4");
        assert_eq!(q[19].k, 2, "the socket after the shards'");
    }

    #[test]
    fn initiations_get_their_own_queue_and_the_rest_their_owners() {
        for shards in [1usize, 2, 3] {
            let sockets = group(shards + 1);
            attach(&sockets[0], shards, true).expect("attach");
            let to = sockets[0].local_addr().unwrap();
            let mut sent = Vec::new();
            for k in 0..40u32 {
                let index = k.wrapping_mul(0x9e37_79b9);
                let ty = [4u8, 3, 2, 1][(k % 4) as usize];
                let mut m = message(ty, index);
                if ty == 1 {
                    m = vec![0u8; 148];
                    m[0] = 1;
                    m[4..8].copy_from_slice(&index.to_le_bytes());
                }
                let src = UdpSocket::bind("127.0.0.1:0").unwrap();
                src.send_to(&m, to).unwrap();
                sent.push((ty, index, m));
            }
            let got = receive_all(&sockets, sent.len());
            assert_eq!(got.len(), sent.len(), "{shards} shards");
            for (socket, bytes) in got {
                let (ty, index, _) = sent.iter().find(|(_, _, m)| *m == bytes).unwrap();
                let want = if *ty == 1 {
                    shards
                } else {
                    owner_shard(Index(*index), shards)
                };
                assert_eq!(socket, want, "type {ty}, {shards} shards");
            }
        }
    }

    #[test]
    fn owner_matches_the_programs_big_endian_hash() {
        let h = |w: u32| ((w.wrapping_mul(0x9e37_79b1) >> 16) % 7) as usize;
        assert_eq!(owner_shard(Index(0x0000_0001), 1), 0);
        // Index 1 is bytes 01 00 00 00; read big-endian that is 0x0100_0000, folded
        // 0x0100_0100 then 0x0101_0101.
        assert_eq!(owner_shard(Index(1), 7), h(0x0101_0101));
        // 0x0102_0304 -> ^ 0x0102 = 0x0102_0206 -> ^ 0x0001_0202 = 0x0103_0004
        assert_eq!(owner_shard(Index(0x0403_0201), 7), h(0x0103_0004));
        assert_eq!(owner_shard(Index(5), 0), 0, "no shards counts as one");
    }

    #[test]
    fn owners_is_owner_shard_without_the_division() {
        for shards in [
            0usize,
            1,
            2,
            3,
            4,
            5,
            7,
            8,
            12,
            64,
            255,
            1000,
            65_535,
            65_536,
            1 << 20,
        ] {
            let owners = Owners::new(shards);
            for k in 0..20_000u32 {
                let index = Index(k.wrapping_mul(0x9e37_79b9) ^ (k >> 3));
                assert_eq!(
                    owners.of(index),
                    owner_shard(index, shards),
                    "{shards} {index:?}"
                );
            }
            for raw in [0, 1, u32::MAX, u32::MAX - 1, 0x8000_0000, 0xffff] {
                assert_eq!(owners.of(Index(raw)), owner_shard(Index(raw), shards));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn owners_agrees_with_owner_shard(raw: u32, shards in 0usize..5000) {
            proptest::prop_assert_eq!(
                Owners::new(shards).of(Index(raw)),
                owner_shard(Index(raw), shards)
            );
        }
    }

    /// Numbered indices (boringtun puts a peer counter above an 8-bit rolling one) spread
    /// over the shards instead of all landing on one.
    #[test]
    fn numbered_indices_spread_over_shards() {
        for shards in [2usize, 3, 4] {
            let mut per = vec![0usize; shards];
            let mut seq = vec![0usize; shards];
            for peer in 0..256u32 {
                per[owner_shard(Index(peer << 8), shards)] += 1;
                seq[owner_shard(Index(peer), shards)] += 1;
            }
            let fair = 256 / shards;
            assert!(per.iter().all(|&n| n * 2 >= fair), "{shards}: {per:?}");
            assert!(seq.iter().all(|&n| n * 2 >= fair), "{shards}: {seq:?}");
        }
    }

    #[test]
    fn packets_land_on_the_owner_of_their_receiver_index() {
        for shards in [2usize, 3, 4] {
            let sockets = group(shards);
            attach(&sockets[0], shards, false).expect("attach the steering program");
            let to: SocketAddr = sockets[0].local_addr().unwrap();
            // Many source ports, so the kernel's own hash alone would scatter them.
            let mut sent = Vec::new();
            for k in 0..40u32 {
                let index = k.wrapping_mul(0x9e37_79b9);
                let ty = [4u8, 3, 2][(k % 3) as usize];
                let m = message(ty, index);
                let src = UdpSocket::bind("127.0.0.1:0").unwrap();
                src.send_to(&m, to).unwrap();
                sent.push((index, m));
            }
            let got = receive_all(&sockets, sent.len());
            assert_eq!(got.len(), sent.len(), "{shards} shards");
            for (socket, bytes) in got {
                let (index, _) = sent.iter().find(|(_, m)| *m == bytes).unwrap();
                assert_eq!(
                    socket,
                    owner_shard(Index(*index), shards),
                    "{shards} shards"
                );
            }
        }
    }

    #[test]
    fn initiations_go_to_shard_zero_and_the_rest_still_arrive() {
        let sockets = group(3);
        attach(&sockets[0], 3, false).unwrap();
        let to = sockets[0].local_addr().unwrap();
        // Initiations from many source ports: all on socket 0, in order.
        for k in 0..20u8 {
            let src = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut init = [0u8; 148];
            init[0] = 1;
            init[4] = k;
            src.send_to(&init, to).unwrap();
        }
        let got = receive_all(&sockets, 20);
        assert_eq!(got.len(), 20);
        assert!(got.iter().all(|(socket, _)| *socket == 0));
        let order: Vec<u8> = got.iter().map(|(_, m)| m[4]).collect();
        assert_eq!(order, (0..20).collect::<Vec<u8>>());
        // Short packets and unknown types are not lost.
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        src.send_to(&[4u8, 0], to).unwrap();
        src.send_to(&[9u8; 40], to).unwrap();
        assert_eq!(receive_all(&sockets, 2).len(), 2);
    }
}
