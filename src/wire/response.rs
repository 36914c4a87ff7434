//! Handshake response (type 2, exactly 92 bytes).

use super::{read_array, read_u32, Error, Index, Result};

mod field {
    use crate::wire::Field;
    pub const TYPE: Field = 0..4;
    pub const SENDER: Field = 4..8;
    pub const RECEIVER: Field = 8..12;
    pub const EPHEMERAL: Field = 12..44;
    pub const EMPTY: Field = 44..60;
    pub const MAC1: Field = 60..76;
    pub const MAC2: Field = 76..92;
}

/// Exact length of a response.
pub const LEN: usize = field::MAC2.end;

packet_view!(
    /// A read/write view of a response.
    accepts |len| len == LEN
);

impl<T: AsRef<[u8]>> Packet<T> {
    #[inline]
    pub fn sender(&self) -> Index {
        Index(read_u32(self.buffer.as_ref(), field::SENDER))
    }

    #[inline]
    pub fn receiver(&self) -> Index {
        Index(read_u32(self.buffer.as_ref(), field::RECEIVER))
    }

    #[inline]
    pub fn ephemeral(&self) -> [u8; 32] {
        read_array(self.buffer.as_ref(), field::EPHEMERAL)
    }

    #[inline]
    pub fn encrypted_empty(&self) -> &[u8] {
        &self.buffer.as_ref()[field::EMPTY]
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
    /// Overwrites mac2 (zeroed when it was made with the relay's cookie).
    #[inline]
    pub fn set_mac2(&mut self, value: [u8; 16]) {
        self.buffer.as_mut()[field::MAC2].copy_from_slice(&value);
    }
}

impl<T: AsRef<[u8]>> core::fmt::Display for Packet<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "response sender={} receiver={}",
            self.sender(),
            self.receiver()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testvec::{INITIATION_SENDER, RESPONSE_BYTES, RESPONSE_SENDER};

    #[test]
    fn deconstruct() {
        let p = Packet::new_checked(&RESPONSE_BYTES[..]).unwrap();
        assert_eq!(p.message_type(), 2);
        assert_eq!(p.sender(), RESPONSE_SENDER);
        assert_eq!(p.receiver(), INITIATION_SENDER);
        assert_eq!(&p.ephemeral()[..], &RESPONSE_BYTES[12..44]);
        assert_eq!(p.encrypted_empty(), &RESPONSE_BYTES[44..60]);
        assert_eq!(&p.mac1()[..], &RESPONSE_BYTES[60..76]);
        assert_eq!(p.mac2(), [0; 16]);
    }

    #[test]
    fn set_mac2_touches_only_mac2() {
        let mut bytes = [0xa5u8; LEN];
        Packet::new_unchecked(&mut bytes[..]).set_mac2([7; 16]);
        assert!(bytes[..76].iter().all(|&b| b == 0xa5));
        assert!(bytes[76..].iter().all(|&b| b == 7));
    }

    #[test]
    fn wrong_lengths() {
        assert_eq!(
            Packet::new_checked(&RESPONSE_BYTES[..LEN - 1]).err(),
            Some(Error)
        );
        assert_eq!(Packet::new_checked(&[0u8; LEN + 1][..]).err(), Some(Error));
        assert_eq!(Packet::new_checked(&[][..]).err(), Some(Error));
    }
}
