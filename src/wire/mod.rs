//! Zero-copy typed views of WireGuard's four messages (smoltcp `wire` style).
//!
//! The contract: a view made with `new_checked` has passed `check_len`, and then no accessor
//! panics. Everything read from a socket goes through `new_checked`. `new_unchecked` is for
//! buffers this crate has sized itself. Length checks match what WireGuard receivers accept,
//! never stricter: handshake messages have an exact size, transport any size of at least 32
//! bytes (padding to 16 stops at the MTU, so a multiple of 16 is not required).
//!
//! The parsing layer only says "malformed"; why a packet is dropped is `route::DropReason`.

/// The parts every message view shares, in smoltcp's shape: the wrapper, `new_unchecked`,
/// `new_checked`, `check_len`, `into_inner` and the type field. `$len_ok` decides which lengths
/// receivers accept; each file adds its own fields.
macro_rules! packet_view {
    ($(#[$doc:meta])* accepts $len_ok:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct Packet<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> Packet<T> {
            /// Wraps a buffer without checking it.
            pub const fn new_unchecked(buffer: T) -> Packet<T> {
                Packet { buffer }
            }

            /// Wraps a buffer after `check_len`.
            pub fn new_checked(buffer: T) -> Result<Packet<T>> {
                let packet = Self::new_unchecked(buffer);
                packet.check_len()?;
                Ok(packet)
            }

            /// Whether the length is one WireGuard receivers accept (see the module docs).
            pub fn check_len(&self) -> Result<()> {
                let accepts: fn(usize) -> bool = $len_ok;
                if accepts(self.buffer.as_ref().len()) {
                    Ok(())
                } else {
                    Err(Error)
                }
            }

            pub fn into_inner(self) -> T {
                self.buffer
            }

            #[inline]
            pub fn message_type(&self) -> u32 {
                read_u32(self.buffer.as_ref(), field::TYPE)
            }
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
            /// Overwrites the type field (AmneziaWG replaces it with an H value).
            #[inline]
            pub fn set_message_type(&mut self, value: u32) {
                self.buffer.as_mut()[field::TYPE].copy_from_slice(&value.to_le_bytes());
            }
        }
    };
}

pub mod awg;
pub mod cookie_reply;
pub mod initiation;
pub mod mac;
pub mod mac1_bank;
pub mod response;
#[cfg(test)]
pub(crate) mod testvec;
pub mod transport;

pub use cookie_reply::{Packet as CookieReplyPacket, Repr as CookieReplyRepr};
pub use initiation::Packet as InitiationPacket;
pub use response::Packet as ResponsePacket;
pub use transport::Packet as TransportPacket;

use core::fmt;

/// A malformed or unsupported message. Deliberately carries no detail (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed WireGuard message")
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

pub(crate) type Field = core::ops::Range<usize>;

/// A WireGuard index: the random 32-bit value each peer picks per handshake to name its side
/// of a session. Opaque to the relay except as a routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Index(pub u32);

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// The message type: the first four bytes read as a little-endian u32 (so the three reserved
/// bytes must be zero). Unknown values are kept, not lost, so they can be counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Initiation,
    Response,
    CookieReply,
    Transport,
    Unknown(u32),
}

impl From<u32> for MessageType {
    fn from(value: u32) -> Self {
        match value {
            1 => MessageType::Initiation,
            2 => MessageType::Response,
            3 => MessageType::CookieReply,
            4 => MessageType::Transport,
            other => MessageType::Unknown(other),
        }
    }
}

impl From<MessageType> for u32 {
    fn from(value: MessageType) -> Self {
        match value {
            MessageType::Initiation => 1,
            MessageType::Response => 2,
            MessageType::CookieReply => 3,
            MessageType::Transport => 4,
            MessageType::Unknown(other) => other,
        }
    }
}

/// Length of the type field every message starts with.
pub const TYPE_LEN: usize = 4;

/// Reads the message type of a datagram, or `Error` if it is shorter than the type field.
#[inline]
pub fn message_type(buf: &[u8]) -> Result<MessageType> {
    match buf.first_chunk::<TYPE_LEN>() {
        Some(b) => Ok(MessageType::from(u32::from_le_bytes(*b))),
        None => Err(Error),
    }
}

/// The receiver index of a response, cookie reply or transport message: what the reuseport
/// steering program keys on. `None` for an initiation or anything malformed.
#[inline]
pub fn receiver_of(buf: &[u8]) -> Option<Index> {
    let at = match (message_type(buf).ok()?, buf.len()) {
        (MessageType::Response, response::LEN) => 8,
        (MessageType::CookieReply, cookie_reply::LEN) => 4,
        (MessageType::Transport, len) if len >= transport::MIN_LEN => 4,
        _ => return None,
    };
    Some(Index(read_u32(buf, at..at + 4)))
}

#[inline]
pub(crate) fn read_u32(buf: &[u8], field: Field) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[field]);
    u32::from_le_bytes(b)
}

#[inline]
pub(crate) fn read_array<const N: usize>(buf: &[u8], field: Field) -> [u8; N] {
    let mut b = [0u8; N];
    b.copy_from_slice(&buf[field]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips() {
        for v in [0u32, 1, 2, 3, 4, 5, 0x0100_0001, u32::MAX] {
            assert_eq!(u32::from(MessageType::from(v)), v);
        }
        assert_eq!(message_type(&[1, 0, 0, 0]), Ok(MessageType::Initiation));
        assert_eq!(message_type(&[4, 0, 0, 0, 9]), Ok(MessageType::Transport));
        // Reserved bytes must be zero: wireguard-go reads the whole u32.
        assert_eq!(
            message_type(&[1, 0, 0, 1]),
            Ok(MessageType::Unknown(0x0100_0001))
        );
    }

    #[test]
    fn receiver_of_each_message() {
        use crate::wire::testvec::{
            INITIATION_BYTES, RESPONSE_BYTES, RESPONSE_SENDER, TRANSPORT_BYTES,
        };
        assert_eq!(receiver_of(&INITIATION_BYTES), None);
        assert_eq!(
            receiver_of(&RESPONSE_BYTES),
            Some(testvec::INITIATION_SENDER)
        );
        assert_eq!(receiver_of(&TRANSPORT_BYTES), Some(RESPONSE_SENDER));
        let mut cookie = [0u8; 64];
        cookie[0] = 3;
        cookie[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(receiver_of(&cookie), Some(Index(7)));
        assert_eq!(receiver_of(&TRANSPORT_BYTES[..31]), None);
        assert_eq!(receiver_of(&RESPONSE_BYTES[..91]), None);
    }

    #[test]
    fn message_type_too_short() {
        assert_eq!(message_type(&[]), Err(Error));
        assert_eq!(message_type(&[1, 0, 0]), Err(Error));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // No input panics: every view, accessor and MAC check on arbitrary bytes.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = message_type(&bytes);
            if let Ok(p) = InitiationPacket::new_checked(&bytes[..]) {
                let _ = (p.sender(), p.mac1(), p.mac2(), p.ephemeral(), p.to_string());
            }
            if let Ok(p) = ResponsePacket::new_checked(&bytes[..]) {
                let _ = (p.sender(), p.receiver(), p.mac1(), p.mac2(), p.to_string());
            }
            if let Ok(p) = CookieReplyPacket::new_checked(&bytes[..]) {
                let _ = (p.receiver(), p.nonce(), p.encrypted_cookie(), CookieReplyRepr::parse(&p));
            }
            if let Ok(p) = TransportPacket::new_checked(&bytes[..]) {
                let _ = (p.receiver(), p.counter(), p.payload().len(), p.to_string());
            }
            let key = mac::Mac1Key::new(&[7; 32]);
            let _ = mac::check_mac1(&key, &bytes);
            let _ = mac::check_mac2(&[1; 16], &bytes);
            let _ = mac::mac1_of(&bytes);
        }

        // check_len accepts exactly the lengths receivers accept.
        #[test]
        fn lengths_are_exact(len in 0usize..2000) {
            let bytes = vec![0u8; len];
            prop_assert_eq!(InitiationPacket::new_checked(&bytes[..]).is_ok(), len == 148);
            prop_assert_eq!(ResponsePacket::new_checked(&bytes[..]).is_ok(), len == 92);
            prop_assert_eq!(CookieReplyPacket::new_checked(&bytes[..]).is_ok(), len == 64);
            prop_assert_eq!(TransportPacket::new_checked(&bytes[..]).is_ok(), len >= 32);
        }
    }
}
