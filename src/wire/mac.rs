//! mac1 and mac2 (WireGuard whitepaper §5.4.4), and the cookie-reply encryption.
//!
//! Like wireguard-go's `cookie.go`, keys are derived once per public key, mac1 and mac2 are
//! located from the end of the message so one function serves both handshake messages, and
//! every comparison is constant-time.

use blake2::digest::consts::U16;
use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::{Blake2s256, Blake2sMac, Digest};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use subtle::ConstantTimeEq;

use super::cookie_reply::{ENCRYPTED_COOKIE_LEN, NONCE_LEN};

pub const LABEL_MAC1: &[u8; 8] = b"mac1----";
pub const LABEL_COOKIE: &[u8; 8] = b"cookie--";
pub const MAC_LEN: usize = 16;
pub const COOKIE_LEN: usize = 16;
/// mac1 and mac2 end every handshake message: mac1 starts this far from the end.
const MAC1_FROM_END: usize = 2 * MAC_LEN;

/// `HASH("mac1----" || public key)`: the key of mac1 for messages addressed to that key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mac1Key(pub [u8; 32]);

/// `HASH("cookie--" || public key)`: encrypts cookie replies answering messages to that key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CookieKey(pub [u8; 32]);

fn hash(label: &[u8; 8], public_key: &[u8; 32]) -> [u8; 32] {
    let mut h = Blake2s256::new();
    Digest::update(&mut h, label);
    Digest::update(&mut h, public_key);
    h.finalize().into()
}

impl Mac1Key {
    pub fn new(public_key: &[u8; 32]) -> Self {
        Mac1Key(hash(LABEL_MAC1, public_key))
    }
}

impl CookieKey {
    pub fn new(public_key: &[u8; 32]) -> Self {
        CookieKey(hash(LABEL_COOKIE, public_key))
    }
}

/// Keyed BLAKE2s with a 16-byte output over the concatenation of `parts`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_LEN] {
    // Keys here are 16 or 32 bytes, always accepted by BLAKE2s (max 32), so this never fails;
    // an empty MAC is returned rather than panicking should a caller ever pass a longer key.
    let Ok(mut m) = <Blake2sMac<U16> as KeyInit>::new_from_slice(key) else {
        return [0; MAC_LEN];
    };
    for part in parts {
        Update::update(&mut m, part);
    }
    m.finalize_fixed().into()
}

fn split_macs(msg: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let body_len = msg.len().checked_sub(MAC1_FROM_END)?;
    let (body, macs) = msg.split_at(body_len);
    let (mac1, mac2) = macs.split_at(MAC_LEN);
    Some((body, mac1, mac2))
}

/// mac1 of a handshake message (initiation or response) under `key`.
/// Returns `None` for a message too short to carry the MACs.
pub fn compute_mac1(key: &Mac1Key, msg: &[u8]) -> Option<[u8; MAC_LEN]> {
    let (body, _, _) = split_macs(msg)?;
    Some(mac(&key.0, &[body]))
}

/// Whether the mac1 of a handshake message was made for the holder of `key`'s public key.
pub fn check_mac1(key: &Mac1Key, msg: &[u8]) -> bool {
    match split_macs(msg) {
        Some((body, mac1, _)) => bool::from(mac(&key.0, &[body]).ct_eq(mac1)),
        None => false,
    }
}

/// mac2 of a handshake message made with `cookie` (covers everything up to mac2, mac1 included).
pub fn compute_mac2(cookie: &[u8; COOKIE_LEN], msg: &[u8]) -> Option<[u8; MAC_LEN]> {
    let (body, mac1, _) = split_macs(msg)?;
    Some(mac(cookie, &[body, mac1]))
}

/// Whether a handshake message carries the mac2 that `cookie` gives.
pub fn check_mac2(cookie: &[u8; COOKIE_LEN], msg: &[u8]) -> bool {
    match split_macs(msg) {
        Some((body, mac1, mac2)) => bool::from(mac(cookie, &[body, mac1]).ct_eq(mac2)),
        None => false,
    }
}

/// The mac1 bytes of a handshake message (the AD of a cookie reply answering it).
pub fn mac1_of(msg: &[u8]) -> Option<[u8; MAC_LEN]> {
    let (_, mac1, _) = split_macs(msg)?;
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(mac1);
    Some(out)
}

/// Encrypts a cookie for a cookie reply: XChaCha20-Poly1305 under `key`, with the answered
/// message's mac1 as associated data.
pub fn seal_cookie(
    key: &CookieKey,
    nonce: &[u8; NONCE_LEN],
    cookie: &[u8; COOKIE_LEN],
    mac1: &[u8; MAC_LEN],
) -> [u8; ENCRYPTED_COOKIE_LEN] {
    let aead = XChaCha20Poly1305::new((&key.0).into());
    let mut out = [0u8; ENCRYPTED_COOKIE_LEN];
    // Encryption of 16 bytes with a 32-byte key cannot fail; the zeroed output would be
    // rejected by the peer, which is the safe outcome should it ever happen.
    if let Ok(sealed) = aead.encrypt(
        XNonce::from_slice(nonce),
        Payload {
            msg: cookie,
            aad: mac1,
        },
    ) {
        if sealed.len() == ENCRYPTED_COOKIE_LEN {
            out.copy_from_slice(&sealed);
        }
    }
    out
}

/// Decrypts a cookie reply's cookie (what a peer does; used by tests and the load generator).
pub fn open_cookie(
    key: &CookieKey,
    nonce: &[u8; NONCE_LEN],
    encrypted: &[u8; ENCRYPTED_COOKIE_LEN],
    mac1: &[u8; MAC_LEN],
) -> Option<[u8; COOKIE_LEN]> {
    let aead = XChaCha20Poly1305::new((&key.0).into());
    let plain = aead
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: encrypted,
                aad: mac1,
            },
        )
        .ok()?;
    plain.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testvec::*;

    #[test]
    fn mac1_of_boringtun_initiation() {
        let key = Mac1Key::new(&RESPONDER_PUBLIC);
        assert!(check_mac1(&key, &INITIATION_BYTES));
        assert_eq!(
            compute_mac1(&key, &INITIATION_BYTES).unwrap()[..],
            INITIATION_BYTES[116..132]
        );
        // Addressed to the responder, not the initiator.
        assert!(!check_mac1(
            &Mac1Key::new(&INITIATOR_PUBLIC),
            &INITIATION_BYTES
        ));
    }

    #[test]
    fn mac1_of_boringtun_response() {
        // A response's mac1 names the initiator.
        assert!(check_mac1(
            &Mac1Key::new(&INITIATOR_PUBLIC),
            &RESPONSE_BYTES
        ));
        assert!(!check_mac1(
            &Mac1Key::new(&RESPONDER_PUBLIC),
            &RESPONSE_BYTES
        ));
    }

    #[test]
    fn mac1_fails_on_any_flipped_bit() {
        let key = Mac1Key::new(&RESPONDER_PUBLIC);
        for byte in 0..132 {
            let mut msg = INITIATION_BYTES;
            msg[byte] ^= 0x20;
            assert!(!check_mac1(&key, &msg), "byte {byte}");
        }
        // mac2 is not covered by mac1.
        let mut msg = INITIATION_BYTES;
        msg[140] ^= 0x20;
        assert!(check_mac1(&key, &msg));
    }

    #[test]
    fn mac2_round_trip_and_bit_flips() {
        let cookie = [9u8; COOKIE_LEN];
        let mut msg = INITIATION_BYTES;
        let m2 = compute_mac2(&cookie, &msg).unwrap();
        msg[132..].copy_from_slice(&m2);
        assert!(check_mac2(&cookie, &msg));
        assert!(!check_mac2(&[8u8; COOKIE_LEN], &msg));
        for byte in [0, 5, 100, 120, 131, 147] {
            let mut flipped = msg;
            flipped[byte] ^= 1;
            assert!(!check_mac2(&cookie, &flipped), "byte {byte}");
        }
    }

    #[test]
    fn short_messages_fail_cleanly() {
        let key = Mac1Key::new(&RESPONDER_PUBLIC);
        for len in 0..MAC1_FROM_END {
            let msg = vec![0u8; len];
            assert!(!check_mac1(&key, &msg));
            assert!(!check_mac2(&[0; 16], &msg));
            assert!(compute_mac1(&key, &msg).is_none());
            assert!(mac1_of(&msg).is_none());
        }
    }

    #[test]
    fn cookie_seal_open_round_trip() {
        let key = CookieKey::new(&RESPONDER_PUBLIC);
        let nonce = [3u8; NONCE_LEN];
        let cookie = [4u8; COOKIE_LEN];
        let mac1 = [5u8; MAC_LEN];
        let sealed = seal_cookie(&key, &nonce, &cookie, &mac1);
        assert_eq!(open_cookie(&key, &nonce, &sealed, &mac1), Some(cookie));
        assert_eq!(open_cookie(&key, &nonce, &sealed, &[6u8; MAC_LEN]), None);
        assert_eq!(
            open_cookie(&CookieKey::new(&INITIATOR_PUBLIC), &nonce, &sealed, &mac1),
            None
        );
    }
}
