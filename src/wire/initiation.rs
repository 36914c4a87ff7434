//! Handshake initiation (type 1, exactly 148 bytes).

use super::{read_array, read_u32, Error, Index, Result};

mod field {
    use crate::wire::Field;
    pub const TYPE: Field = 0..4;
    pub const SENDER: Field = 4..8;
    pub const EPHEMERAL: Field = 8..40;
    pub const STATIC: Field = 40..88;
    pub const TIMESTAMP: Field = 88..116;
    pub const MAC1: Field = 116..132;
    pub const MAC2: Field = 132..148;
}

/// Exact length of an initiation.
pub const LEN: usize = field::MAC2.end;

packet_view!(
    /// A read/write view of an initiation.
    accepts |len| len == LEN
);

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn sender(&self) -> Index {
        Index(read_u32(self.buffer.as_ref(), field::SENDER))
    }

    #[inline]
    pub fn ephemeral(&self) -> [u8; 32] {
        read_array(self.buffer.as_ref(), field::EPHEMERAL)
    }

    #[inline]
    pub fn encrypted_static(&self) -> &[u8] {
        &self.buffer.as_ref()[field::STATIC]
    }

    #[inline]
    pub fn encrypted_timestamp(&self) -> &[u8] {
        &self.buffer.as_ref()[field::TIMESTAMP]
    }

    #[inline]
    pub fn mac1(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::MAC1)
    }

    #[inline]
    pub fn mac2(&self) -> [u8; 16] {
        read_array(self.buffer.as_ref(), field::MAC2)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Overwrites mac2. The relay zeroes a mac2 made with its own cookie before forwarding,
    /// since the responder could never verify it.
    #[inline]
    pub fn set_mac2(&mut self, value: [u8; 16]) {
        self.buffer.as_mut()[field::MAC2].copy_from_slice(&value);
    }
}

impl<T: AsRef<[u8]>> core::fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "initiation sender={}", self.sender())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testvec::{INITIATION_BYTES, INITIATION_SENDER};

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&INITIATION_BYTES[..]).unwrap();
        assert_eq!(p.message_type(), 1);
        assert_eq!(p.sender(), INITIATION_SENDER);
        assert_eq!(&p.ephemeral()[..], &INITIATION_BYTES[8..40]);
        assert_eq!(p.encrypted_static(), &INITIATION_BYTES[40..88]);
        assert_eq!(p.encrypted_timestamp(), &INITIATION_BYTES[88..116]);
        assert_eq!(&p.mac1()[..], &INITIATION_BYTES[116..132]);
        assert_eq!(p.mac2(), [0; 16]);
        assert_eq!(
            p.to_string(),
            format!("initiation sender={INITIATION_SENDER}")
        );
    }

    #[test]
    fn set_mac2_touches_only_mac2() {
        let mut bytes = [0xa5u8; LEN];
        let mut p = Packet::new_unchecked(&mut bytes[..]);
        p.set_mac2([0; 16]);
        assert!(bytes[..132].iter().all(|&b| b == 0xa5));
        assert!(bytes[132..].iter().all(|&b| b == 0));
    }

    #[test]
    fn set_message_type() {
        let mut bytes = INITIATION_BYTES;
        Packet::new_unchecked(&mut bytes[..]).set_message_type(0x1234_5678);
        assert_eq!(&bytes[..4], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(&bytes[4..], &INITIATION_BYTES[4..]);
    }

    #[test]
    fn too_short() {
        assert_eq!(
            Packet::new_checked(&INITIATION_BYTES[..LEN - 1]).err(),
            Some(Error)
        );
    }

    #[test]
    fn too_long() {
        let mut long = INITIATION_BYTES.to_vec();
        long.push(0);
        assert_eq!(Packet::new_checked(&long[..]).err(), Some(Error));
    }
}
