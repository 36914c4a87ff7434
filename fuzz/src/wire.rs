//! Target `wire`: one datagram, as it comes off a plain WireGuard listener.
//!
//! Asserts: nothing panics (`message_type`, `receiver_of`, the four views' `new_checked`, every
//! accessor and `Display`, `CookieReplyRepr`, the mac1/mac2 checks, cookie decryption); the
//! plain framing classifies exactly as the type field plus the views' length checks (what
//! `shard.rs` relies on for plain listeners); the receiver index agrees across
//! `wire::receiver_of`, the framing and the views; a cookie reply's `Repr` re-emits the same
//! bytes; mac1/mac2 computed over the message then check; the SIMD `Mac1Bank` search finds
//! exactly the key the one-by-one reference finds.

use std::sync::OnceLock;

use wgrelay::wire::awg::{Classified, Framing};
use wgrelay::wire::mac::{self, CookieKey, Mac1Key};
use wgrelay::wire::mac1_bank::Mac1Bank;
use wgrelay::wire::{
    self, CookieReplyPacket, CookieReplyRepr, InitiationPacket, MessageType, ResponsePacket,
    TransportPacket,
};

use crate::common::pool;

/// The pool's devices' keys among made-up ones: two SIMD chunks (16 lanes each), so the lane
/// search (not the few-keys shortcut) runs, and device keys sit in different lanes and
/// chunks.
fn bank() -> &'static (Mac1Bank, Vec<Mac1Key>) {
    static B: OnceLock<(Mac1Bank, Vec<Mac1Key>)> = OnceLock::new();
    B.get_or_init(|| {
        let devices: Vec<Mac1Key> = pool().devices.iter().map(|k| Mac1Key::new(&k.0)).collect();
        let mut keys = Vec::new();
        for i in 0..20u8 {
            match devices.get(usize::from(i) / 5) {
                Some(k) if i % 5 == 3 => keys.push(*k),
                _ => keys.push(Mac1Key::new(&[i.wrapping_mul(31).wrapping_add(7); 32])),
            }
        }
        let mut bank = Mac1Bank::default();
        for k in &keys {
            bank.push(*k);
        }
        (bank, keys)
    })
}

pub fn run(data: &[u8]) {
    let kind = wire::message_type(data);
    let plain = Framing::plain();
    let classified = plain.classify(data);

    let init = InitiationPacket::new_checked(data);
    let resp = ResponsePacket::new_checked(data);
    let cookie = CookieReplyPacket::new_checked(data);
    let transport = TransportPacket::new_checked(data);
    if let Ok(p) = &init {
        let _ = (p.sender(), p.ephemeral(), p.mac1(), p.mac2(), p.to_string());
        let _ = (p.encrypted_static().len(), p.encrypted_timestamp().len());
        assert_eq!(
            p.message_type(),
            u32::from_le_bytes(data[..4].try_into().unwrap())
        );
    }
    if let Ok(p) = &resp {
        let _ = (p.sender(), p.receiver(), p.ephemeral(), p.mac1(), p.mac2());
        let _ = (p.encrypted_empty().len(), p.to_string());
    }
    if let Ok(p) = &cookie {
        let _ = (p.receiver(), p.nonce(), p.encrypted_cookie(), p.to_string());
    }
    if let Ok(p) = &transport {
        let _ = (p.receiver(), p.counter(), p.to_string());
        assert_eq!(p.payload().len(), data.len() - wire::transport::HEADER_LEN);
    }

    // The plain framing is the type field plus each view's length rule.
    let expected = match kind {
        Ok(MessageType::Initiation) if init.is_ok() => Some(MessageType::Initiation),
        Ok(MessageType::Response) if resp.is_ok() => Some(MessageType::Response),
        Ok(MessageType::CookieReply) if cookie.is_ok() => Some(MessageType::CookieReply),
        Ok(MessageType::Transport) if transport.is_ok() => Some(MessageType::Transport),
        _ => None,
    };
    match (expected, classified) {
        (Some(k), Classified::Message { kind, offset: 0 }) => assert_eq!(k, kind),
        (None, Classified::Unknown) => {}
        (e, c) => panic!("plain framing says {c:?}, type and length say {e:?}"),
    }
    assert_eq!(
        plain.message(data).map(|(k, m)| (k, m.len())),
        expected.map(|k| (k, data.len()))
    );

    // One receiver index, whoever reads it.
    let receiver = wire::receiver_of(data);
    assert_eq!(receiver, plain.receiver_of(data));
    let from_view = match expected {
        Some(MessageType::Response) => resp.as_ref().ok().map(|p| p.receiver()),
        Some(MessageType::CookieReply) => cookie.as_ref().ok().map(|p| p.receiver()),
        Some(MessageType::Transport) => transport.as_ref().ok().map(|p| p.receiver()),
        _ => None,
    };
    assert_eq!(receiver, from_view);

    // A cookie reply's parsed form re-emits the datagram.
    if let Ok(p) = &cookie {
        match CookieReplyRepr::parse(p) {
            Ok(repr) => {
                assert_eq!(expected, Some(MessageType::CookieReply));
                assert_eq!(repr.buffer_len(), data.len());
                assert_eq!(&repr.to_bytes()[..], data);
            }
            Err(_) => assert_ne!(expected, Some(MessageType::CookieReply)),
        }
        // Whatever the bytes, decrypting under each device's cookie key only fails cleanly.
        for k in &pool().devices {
            let key = CookieKey::new(&k.0);
            let mac1 = mac::mac1_of(data).unwrap_or([0; 16]);
            let _ = mac::open_cookie(&key, &p.nonce(), &p.encrypted_cookie(), &mac1);
        }
    }

    macs(data);
    if matches!(
        expected,
        Some(MessageType::Initiation | MessageType::Response)
    ) {
        bank_agrees(data);
        // The same message with mac1 made for one of the bank's keys, chosen by the input.
        let (_, keys) = bank();
        let pick = usize::from(data[5]) % keys.len();
        let mut m = data.to_vec();
        let mac1 = mac::compute_mac1(&keys[pick], &m).unwrap();
        let at = m.len() - 32;
        m[at..at + 16].copy_from_slice(&mac1);
        assert!(mac::check_mac1(&keys[pick], &m));
        bank_agrees(&m);
    }
}

/// mac1 and mac2 computed over a message check on it, and only there.
fn macs(data: &[u8]) {
    let key = Mac1Key::new(&[7; 32]);
    let cookie = [0x5a; 16];
    let computed1 = mac::compute_mac1(&key, data);
    let computed2 = mac::compute_mac2(&cookie, data);
    assert_eq!(computed1.is_some(), data.len() >= 32);
    assert_eq!(computed2.is_some(), data.len() >= 32);
    assert_eq!(mac::mac1_of(data).is_some(), data.len() >= 32);
    let _ = (mac::check_mac1(&key, data), mac::check_mac2(&cookie, data));
    let (Some(m1), Some(_)) = (computed1, computed2) else {
        assert!(!mac::check_mac1(&key, data) && !mac::check_mac2(&cookie, data));
        return;
    };
    let mut m = data.to_vec();
    let at = m.len() - 32;
    m[at..at + 16].copy_from_slice(&m1);
    assert!(mac::check_mac1(&key, &m));
    assert_eq!(mac::mac1_of(&m), Some(m1));
    // mac2 covers mac1: compute it after.
    let m2 = mac::compute_mac2(&cookie, &m).unwrap();
    m[at + 16..].copy_from_slice(&m2);
    assert!(mac::check_mac2(&cookie, &m));
    assert!(mac::check_mac1(&key, &m), "mac2 is outside mac1's coverage");
    // The cookie encryption round-trips with this mac1 as associated data.
    let ckey = CookieKey::new(&[9; 32]);
    let nonce: [u8; 24] = core::array::from_fn(|i| data[i % data.len()]);
    let c: [u8; 16] = core::array::from_fn(|i| data[(i * 7) % data.len()]);
    let sealed = mac::seal_cookie(&ckey, &nonce, &c, &m1);
    assert_eq!(mac::open_cookie(&ckey, &nonce, &sealed, &m1), Some(c));
    let mut wrong = m1;
    wrong[0] ^= 1;
    assert_eq!(mac::open_cookie(&ckey, &nonce, &sealed, &wrong), None);
}

/// The lane search and the one-by-one reference name the same key.
fn bank_agrees(msg: &[u8]) {
    let (bank, keys) = bank();
    let reference = keys.iter().position(|k| mac::check_mac1(k, msg));
    let (found, tried) = bank.find(msg);
    assert_eq!(found, reference, "Mac1Bank::find disagrees with check_mac1");
    assert!(tried <= keys.len());
}
