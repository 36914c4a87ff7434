//! Cookie reply (type 3, exactly 64 bytes).
//!
//! The relay both forwards peers' cookie replies (by receiver index) and emits its own, to make
//! a new source prove it can receive at its address before any state or fan-out is spent on it.

use super::{read_array, read_u32, Error, Index, Result};

mod field {
    use crate::wire::Field;
    pub const TYPE: Field = 0..4;
    pub const RECEIVER: Field = 4..8;
    pub const NONCE: Field = 8..32;
    pub const COOKIE: Field = 32..64;
}

/// Exact length of a cookie reply.
pub const LEN: usize = field::COOKIE.end;
/// XChaCha20 nonce length.
pub const NONCE_LEN: usize = field::NONCE.end - field::NONCE.start;
/// Encrypted cookie: 16 bytes of cookie and a 16-byte tag.
pub const ENCRYPTED_COOKIE_LEN: usize = field::COOKIE.end - field::COOKIE.start;

packet_view!(
    /// A read/write view of a cookie reply.
    accepts |len| len == LEN
);

impl<T: AsRef<[u8]>> Packet<T> {
    /// The sender index of the handshake message this reply answers.
    #[inline]
    pub fn receiver(&self) -> Index {
        Index(read_u32(self.buffer.as_ref(), field::RECEIVER))
    }

    #[inline]
    pub fn nonce(&self) -> [u8; NONCE_LEN] {
        read_array(self.buffer.as_ref(), field::NONCE)
    }

    #[inline]
    pub fn encrypted_cookie(&self) -> [u8; ENCRYPTED_COOKIE_LEN] {
        read_array(self.buffer.as_ref(), field::COOKIE)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    #[inline]
    pub fn set_receiver(&mut self, value: Index) {
        self.buffer.as_mut()[field::RECEIVER].copy_from_slice(&value.0.to_le_bytes());
    }

    #[inline]
    pub fn set_nonce(&mut self, value: [u8; NONCE_LEN]) {
        self.buffer.as_mut()[field::NONCE].copy_from_slice(&value);
    }

    #[inline]
    pub fn set_encrypted_cookie(&mut self, value: [u8; ENCRYPTED_COOKIE_LEN]) {
        self.buffer.as_mut()[field::COOKIE].copy_from_slice(&value);
    }
}

/// A cookie reply as a plain value, for emitting the relay's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    pub receiver: Index,
    pub nonce: [u8; NONCE_LEN],
    pub encrypted_cookie: [u8; ENCRYPTED_COOKIE_LEN],
}

impl Repr {
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.message_type() != 3 {
            return Err(Error);
        }
        Ok(Repr {
            receiver: packet.receiver(),
            nonce: packet.nonce(),
            encrypted_cookie: packet.encrypted_cookie(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        LEN
    }

    /// Writes every byte of the message; never panics on a buffer of exactly `buffer_len()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_message_type(3);
        packet.set_receiver(self.receiver);
        packet.set_nonce(self.nonce);
        packet.set_encrypted_cookie(self.encrypted_cookie);
    }

    /// The message as an owned array.
    pub fn to_bytes(&self) -> [u8; LEN] {
        let mut bytes = [0u8; LEN];
        self.emit(&mut Packet::new_unchecked(&mut bytes[..]));
        bytes
    }
}

impl<T: AsRef<[u8]>> core::fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "cookie_reply receiver={}", self.receiver())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Repr {
        Repr {
            receiver: Index(0x0403_0201),
            nonce: core::array::from_fn(|i| i as u8 + 0x10),
            encrypted_cookie: core::array::from_fn(|i| i as u8 + 0x40),
        }
    }

    #[test]
    fn construct() {
        let mut bytes = [0xa5u8; LEN];
        repr().emit(&mut Packet::new_unchecked(&mut bytes[..]));
        assert_eq!(&bytes[..8], &[3, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(bytes[8], 0x10);
        assert_eq!(bytes[31], 0x10 + 23);
        assert_eq!(bytes[32], 0x40);
        assert_eq!(bytes[63], 0x40 + 31);
    }

    #[test]
    fn parse_emit_round_trip() {
        let bytes = repr().to_bytes();
        let parsed = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap()).unwrap();
        assert_eq!(parsed, repr());
        assert_eq!(parsed.buffer_len(), LEN);
    }

    #[test]
    fn parse_bad_type() {
        let mut bytes = repr().to_bytes();
        bytes[0] = 4;
        assert_eq!(Repr::parse(&Packet::new_unchecked(&bytes[..])), Err(Error));
    }

    #[test]
    fn wrong_lengths() {
        assert_eq!(Packet::new_checked(&[3u8; LEN - 1][..]).err(), Some(Error));
        assert_eq!(Packet::new_checked(&[3u8; LEN + 1][..]).err(), Some(Error));
    }
}
