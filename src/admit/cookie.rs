//! The relay's cookie challenge: wireguard-go's `CookieChecker` role, with public keys only.
//!
//! A cookie is `MAC(secret, source ip || source port)`. The secret rotates every
//! COOKIE_REFRESH_TIME; the previous one is still accepted, so a cookie handed out just before a
//! rotation stays good as long as the peer keeps it. A source that sends back a valid mac2 has
//! proven it receives at its address; a spoofer never sees the cookie.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::constants::COOKIE_REFRESH_TIME;
use crate::wire::cookie_reply::{self, NONCE_LEN};
use crate::wire::mac::{self, CookieKey, COOKIE_LEN};
use crate::wire::{CookieReplyRepr, Index};

/// Where randomness comes from; injected so the routing core stays deterministic in tests.
pub trait Entropy: Send {
    fn fill(&mut self, buf: &mut [u8]);
}

/// The operating system's CSPRNG.
#[derive(Debug, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        // getrandom on Linux only fails before the pool is initialised at early boot; a
        // relay cannot run without randomness, so that is a fatal environment error.
        if let Err(e) = getrandom::getrandom(buf) {
            panic!("the OS random number generator failed: {e}");
        }
    }
}

/// A deterministic generator (splitmix64) for tests and fuzzing.
#[derive(Debug, Clone)]
pub struct TestEntropy(pub u64);

impl Entropy for TestEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

pub struct CookieChecker {
    secret: [u8; 32],
    previous: Option<[u8; 32]>,
    rotated_at: Option<Instant>,
}

impl CookieChecker {
    pub fn new() -> Self {
        CookieChecker {
            secret: [0; 32],
            previous: None,
            rotated_at: None,
        }
    }

    fn rotate_if_due(&mut self, now: Instant, entropy: &mut dyn Entropy) {
        let due = match self.rotated_at {
            None => true,
            Some(at) => now.saturating_duration_since(at) >= COOKIE_REFRESH_TIME,
        };
        if due {
            // The previous secret is kept only if it is at most one period old.
            self.previous = match self.rotated_at {
                Some(at) if now.saturating_duration_since(at) < 2 * COOKIE_REFRESH_TIME => {
                    Some(self.secret)
                }
                _ => None,
            };
            entropy.fill(&mut self.secret);
            self.rotated_at = Some(now);
        }
    }

    fn cookie_with(secret: &[u8; 32], src: SocketAddr) -> [u8; COOKIE_LEN] {
        // wireguard-go's AddrPort.MarshalBinary: the IP bytes, then the port little-endian.
        let port = src.port().to_le_bytes();
        match canonical_ip(src.ip()) {
            IpAddr::V4(ip) => mac::mac(secret, &[&ip.octets(), &port]),
            IpAddr::V6(ip) => mac::mac(secret, &[&ip.octets(), &port]),
        }
    }

    /// The cookie a source gets now.
    pub fn cookie(
        &mut self,
        src: SocketAddr,
        now: Instant,
        entropy: &mut dyn Entropy,
    ) -> [u8; COOKIE_LEN] {
        self.rotate_if_due(now, entropy);
        Self::cookie_with(&self.secret, src)
    }

    /// Whether a handshake message carries a mac2 made with a cookie we gave `src`.
    pub fn check_mac2(
        &mut self,
        msg: &[u8],
        src: SocketAddr,
        now: Instant,
        entropy: &mut dyn Entropy,
    ) -> bool {
        self.rotate_if_due(now, entropy);
        if mac::check_mac2(&Self::cookie_with(&self.secret, src), msg) {
            return true;
        }
        match &self.previous {
            Some(prev) => mac::check_mac2(&Self::cookie_with(prev, src), msg),
            None => false,
        }
    }

    /// A cookie reply to a handshake message from `src` whose mac1 names `recipient`
    /// (`sender` is that message's sender index). 64 bytes answer 148 or 92: never an
    /// amplifier.
    pub fn create_reply(
        &mut self,
        msg: &[u8],
        sender: Index,
        recipient: &CookieKey,
        src: SocketAddr,
        now: Instant,
        entropy: &mut dyn Entropy,
    ) -> Option<[u8; cookie_reply::LEN]> {
        let mac1 = mac::mac1_of(msg)?;
        let cookie = self.cookie(src, now, entropy);
        let mut nonce = [0u8; NONCE_LEN];
        entropy.fill(&mut nonce);
        let encrypted_cookie = mac::seal_cookie(recipient, &nonce, &cookie, &mac1);
        Some(
            CookieReplyRepr {
                receiver: sender,
                nonce,
                encrypted_cookie,
            }
            .to_bytes(),
        )
    }
}

impl Default for CookieChecker {
    fn default() -> Self {
        Self::new()
    }
}

/// A v4-mapped IPv6 address is its IPv4 address: a dual-stack socket and a v4 socket must give
/// a source the same cookie.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testvec::{INITIATION_BYTES, INITIATION_SENDER, RESPONDER_PUBLIC};
    use std::time::Duration;

    fn src(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn with_mac2(cookie: &[u8; 16]) -> [u8; 148] {
        let mut msg = INITIATION_BYTES;
        let m2 = mac::compute_mac2(cookie, &msg).unwrap();
        msg[132..].copy_from_slice(&m2);
        msg
    }

    #[test]
    fn mac2_binds_the_source_address() {
        let mut e = TestEntropy(1);
        let mut c = CookieChecker::new();
        let t0 = Instant::now();
        let a = src("127.0.0.1:5000");
        let cookie = c.cookie(a, t0, &mut e);
        let msg = with_mac2(&cookie);
        assert!(c.check_mac2(&msg, a, t0, &mut e));
        assert!(
            !c.check_mac2(&msg, src("127.0.0.1:5001"), t0, &mut e),
            "port"
        );
        assert!(!c.check_mac2(&msg, src("127.0.0.2:5000"), t0, &mut e), "ip");
        // The same source seen through a dual-stack socket.
        assert!(c.check_mac2(&msg, src("[::ffff:127.0.0.1]:5000"), t0, &mut e));
        let mut flipped = msg;
        flipped[5] ^= 0x20;
        assert!(!c.check_mac2(&flipped, a, t0, &mut e));
        assert!(!c.check_mac2(&INITIATION_BYTES, a, t0, &mut e), "zero mac2");
    }

    #[test]
    fn rotation_keeps_one_previous_secret() {
        let mut e = TestEntropy(2);
        let mut c = CookieChecker::new();
        let t0 = Instant::now();
        let a = src("127.0.0.1:5000");
        let msg = with_mac2(&c.cookie(a, t0, &mut e));
        let t1 = t0 + COOKIE_REFRESH_TIME + Duration::from_secs(1);
        assert!(
            c.check_mac2(&msg, a, t1, &mut e),
            "previous secret still good"
        );
        let t2 = t1 + COOKIE_REFRESH_TIME;
        assert!(!c.check_mac2(&msg, a, t2, &mut e), "two rotations later");
        // A long idle gap drops the previous secret too.
        let mut c = CookieChecker::new();
        let msg = with_mac2(&c.cookie(a, t0, &mut e));
        assert!(!c.check_mac2(&msg, a, t0 + 3 * COOKIE_REFRESH_TIME, &mut e));
    }

    #[test]
    fn reply_decrypts_with_the_recipients_cookie_key() {
        let mut e = TestEntropy(3);
        let mut c = CookieChecker::new();
        let t0 = Instant::now();
        let a = src("127.0.0.1:5000");
        let key = CookieKey::new(&RESPONDER_PUBLIC);
        let reply = c
            .create_reply(&INITIATION_BYTES, INITIATION_SENDER, &key, a, t0, &mut e)
            .unwrap();
        assert_eq!(reply.len(), 64);
        let p = crate::wire::CookieReplyPacket::new_checked(&reply[..]).unwrap();
        assert_eq!(p.message_type(), 3);
        assert_eq!(p.receiver(), INITIATION_SENDER);
        let mac1 = mac::mac1_of(&INITIATION_BYTES).unwrap();
        let cookie = mac::open_cookie(&key, &p.nonce(), &p.encrypted_cookie(), &mac1).unwrap();
        assert_eq!(cookie, c.cookie(a, t0, &mut e));
        // Fresh nonce per reply.
        let again = c
            .create_reply(&INITIATION_BYTES, INITIATION_SENDER, &key, a, t0, &mut e)
            .unwrap();
        assert_ne!(reply[8..32], again[8..32]);
    }

    #[test]
    fn boringtun_consumes_our_reply_and_sends_our_mac2() {
        use crate::wire::testvec::{INITIATOR_PRIVATE, RESPONDER_PRIVATE};
        use boringtun::noise::{Tunn, TunnResult};
        use boringtun::x25519::{PublicKey, StaticSecret};

        let responder_public = PublicKey::from(&StaticSecret::from(RESPONDER_PRIVATE));
        let mut tunn = Tunn::new(
            StaticSecret::from(INITIATOR_PRIVATE),
            responder_public,
            None,
            None,
            7,
            None,
        );
        let mut buf = [0u8; 256];
        let init = match tunn.format_handshake_initiation(&mut buf, false) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no initiation"),
        };
        let mut e = TestEntropy(4);
        let mut c = CookieChecker::new();
        let t0 = Instant::now();
        let a = src("127.0.0.1:5000");
        let sender = crate::wire::InitiationPacket::new_checked(&init[..])
            .unwrap()
            .sender();
        let reply = c
            .create_reply(
                &init,
                sender,
                &CookieKey::new(responder_public.as_bytes()),
                a,
                t0,
                &mut e,
            )
            .unwrap();
        let mut out = [0u8; 256];
        assert!(matches!(
            tunn.decapsulate(None, &reply, &mut out),
            TunnResult::Done
        ));
        let retry = match tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(p) => p.to_vec(),
            _ => panic!("no retry"),
        };
        assert!(
            c.check_mac2(&retry, a, t0, &mut e),
            "boringtun used our cookie"
        );
        assert!(!c.check_mac2(&init, a, t0, &mut e));
    }
}
