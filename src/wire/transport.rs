//! Transport data (type 4, at least 32 bytes: header, ciphertext, 16-byte tag).

use super::{read_u32, Error, Index, Result};

mod field {
    use crate::wire::Field;
    pub const TYPE: Field = 0..4;
    pub const RECEIVER: Field = 4..8;
    pub const COUNTER: Field = 8..16;
    #[allow(non_snake_case)]
    pub const fn PAYLOAD(len: usize) -> Field {
        COUNTER.end..len
    }
}

/// Header length: type, receiver, counter.
pub const HEADER_LEN: usize = field::COUNTER.end;
/// Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Smallest transport message: a keepalive (empty plaintext, header plus tag).
pub const MIN_LEN: usize = HEADER_LEN + TAG_LEN;

packet_view!(
    /// A read/write view of a transport message; any length of at least `MIN_LEN` (no
    /// multiple-of-16 rule, since WireGuard's padding stops at the MTU).
    accepts |len| len >= MIN_LEN
);

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn receiver(&self) -> Index {
        Index(read_u32(self.buffer.as_ref(), field::RECEIVER))
    }

    /// The sender's nonce counter, in clear. Increases by one per packet of a keypair.
    #[inline]
    pub fn counter(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buffer.as_ref()[field::COUNTER]);
        u64::from_le_bytes(b)
    }

    /// Encrypted payload including the tag.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let len = self.buffer.as_ref().len();
        &self.buffer.as_ref()[field::PAYLOAD(len)]
    }
}

impl<T: AsRef<[u8]>> core::fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "transport receiver={} counter={} len={}",
            self.receiver(),
            self.counter(),
            self.buffer.as_ref().len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testvec::{RESPONSE_SENDER, TRANSPORT_BYTES};

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&TRANSPORT_BYTES[..]).unwrap();
        assert_eq!(p.message_type(), 4);
        // The first transport message goes from initiator to responder, counter 0.
        assert_eq!(p.counter(), 0);
        assert_eq!(p.receiver(), RESPONSE_SENDER);
        assert_eq!(p.payload(), &TRANSPORT_BYTES[16..]);
    }

    #[test]
    fn keepalive_is_min_len() {
        assert!(Packet::new_checked(&[4u8; MIN_LEN][..]).is_ok());
        assert_eq!(
            Packet::new_checked(&[4u8; MIN_LEN - 1][..]).err(),
            Some(Error)
        );
    }

    #[test]
    fn odd_lengths_accepted() {
        // Padding stops at the MTU, so lengths that are not 32 + 16k occur.
        for len in [33, 47, 1419, 1420, 1421, 9000] {
            assert!(
                Packet::new_checked(&vec![4u8; len][..]).is_ok(),
                "len {len}"
            );
        }
    }

    #[test]
    fn counter_is_little_endian() {
        let mut b = [0u8; MIN_LEN];
        b[8..16].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        b[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.counter(), 0x0102_0304_0506_0708);
        assert_eq!(p.receiver(), Index(0xdead_beef));
    }
}
