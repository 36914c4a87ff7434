//! Target `awg`: an AmneziaWG parameter set and one datagram under it.
//!
//! Input: a 37-byte header (`jc` u8, `jmin` `jmax` u16, `s1`..`s4` u16, then `h1`..`h4` each
//! a u32 low end and a u16 width; all little-endian), then the datagram. [`encode_header`]
//! writes it.
//!
//! Asserts: nothing panics; `Framing::new` accepts exactly what `Params::validate` accepts,
//! and an H range prints and parses back to itself; for a valid framing, `classify` follows
//! amneziawg-go's rule (a message's offset is its prefix, a handshake's length is exact, its
//! type field is in its H range; junk is a non-message of a junk length), `message` and
//! `receiver_of` agree with it and with the plain `wire::receiver_of` of the unframed
//! message; `unframe` gives a plain message that the plain framing classifies as the same
//! kind, and `reframe` of that gives a datagram classified back (handshakes exactly, transport
//! unless its length is a framed handshake length) that unframes to the same message;
//! mac1 recomputed by `reframe`/`unframe` checks under the recipient's key; the relay's own
//! cookie replies frame to `cookie_reply_len` bytes and classify as cookie replies.

use wgrelay::wire::awg::{parse_h, Classified, Framing, HRange, Params};
use wgrelay::wire::mac::{self, Mac1Key};
use wgrelay::wire::{self, CookieReplyRepr, MessageType};

use crate::common::{filler, Reader};

pub const HEADER_LEN: usize = 1 + 2 * 2 + 4 * 2 + 4 * 6;

pub fn encode_header(p: &Params) -> Vec<u8> {
    let mut out = vec![p.jc as u8];
    for v in [p.jmin, p.jmax, p.s1, p.s2, p.s3, p.s4] {
        out.extend_from_slice(&(v as u16).to_le_bytes());
    }
    for h in [p.h1, p.h2, p.h3, p.h4] {
        out.extend_from_slice(&h.low().to_le_bytes());
        out.extend_from_slice(
            &((h.high() - h.low()).min(u32::from(u16::MAX)) as u16).to_le_bytes(),
        );
    }
    debug_assert_eq!(out.len(), HEADER_LEN);
    out
}

fn decode_header(r: &mut Reader<'_>) -> Option<Params> {
    let jc = u32::from(r.u8()?);
    let mut v = [0u32; 6];
    for x in &mut v {
        *x = u32::from(r.u16()?);
    }
    let mut h = [HRange::single(0); 4];
    for x in &mut h {
        let low = r.u32()?;
        let width = u32::from(r.u16()?);
        *x = HRange::new(low, low.saturating_add(width))?;
    }
    Some(Params {
        jc,
        jmin: v[0],
        jmax: v[1],
        s1: v[2],
        s2: v[3],
        s3: v[4],
        s4: v[5],
        h1: h[0],
        h2: h[1],
        h3: h[2],
        h4: h[3],
    })
}

const KINDS: [MessageType; 4] = [
    MessageType::Initiation,
    MessageType::Response,
    MessageType::CookieReply,
    MessageType::Transport,
];

fn base_len(kind: MessageType) -> usize {
    match kind {
        MessageType::Initiation => wire::initiation::LEN,
        MessageType::Response => wire::response::LEN,
        MessageType::CookieReply => wire::cookie_reply::LEN,
        _ => wire::transport::MIN_LEN,
    }
}

fn type_at(d: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(d[at..at + 4].try_into().unwrap())
}

pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    let Some(params) = decode_header(&mut r) else {
        return;
    };
    let datagram = r.rest();
    for h in [params.h1, params.h2, params.h3, params.h4] {
        assert_eq!(parse_h(&h.to_string()), Ok(h), "{h} does not parse back");
    }
    let framing = Framing::new(&params);
    assert_eq!(framing.is_ok(), params.validate().is_ok());
    let _ = params.check_fits(2048);
    let _ = params.is_plain();
    let Ok(framing) = framing else {
        return;
    };
    assert_eq!(framing.is_plain(), params.is_plain());
    check(&params, &framing, datagram);
}

fn check(params: &Params, f: &Framing, d: &[u8]) {
    let c = f.classify(d);
    match c {
        Classified::Message { kind, offset } => {
            assert_eq!(offset, f.prefix_len(kind));
            assert!(d.len() >= offset + base_len(kind));
            if kind != MessageType::Transport {
                assert_eq!(d.len(), offset + base_len(kind));
            }
            assert!(f.h_range(kind).unwrap().contains(type_at(d, offset)));
            assert_eq!(f.message(d), Some((kind, &d[offset..])));
        }
        Classified::Junk => {
            assert!(params.jc > 0);
            assert!((params.jmin as usize..=params.jmax as usize).contains(&d.len()));
            assert_eq!(f.message(d), None);
        }
        Classified::Unknown => assert_eq!(f.message(d), None),
    }
    // No earlier rule of the chain matches a datagram classified later.
    for (i, k) in KINDS.iter().enumerate().take(3) {
        let at = f.prefix_len(*k);
        let matches =
            d.len() == at + base_len(*k) && f.h_range(*k).unwrap().contains(type_at_or0(d, at));
        if matches {
            assert_eq!(c.kind(), Some(KINDS[i]), "first match wins");
            break;
        }
    }

    let mut plain = vec![0u8; d.len()];
    let unframed = f.unframe(d, None, &mut plain);
    assert_eq!(unframed.is_ok(), c.kind().is_some());
    let Classified::Message { kind, offset } = c else {
        assert_eq!(f.receiver_of(d), None);
        return;
    };
    let n = unframed.unwrap();
    let m = &plain[..n];
    assert_eq!(n, d.len() - offset);
    assert_eq!(&m[4..], &d[offset + 4..]);
    assert_eq!(wire::message_type(m), Ok(kind));
    assert_eq!(
        Framing::plain().classify(m),
        Classified::Message { kind, offset: 0 }
    );
    assert_eq!(f.receiver_of(d), wire::receiver_of(m));

    // And back: reframing the plain message.
    let mut out = vec![0u8; m.len() + f.prefix_len(kind)];
    let len = f
        .reframe(m, None, &mut out, filler(d.len() as u64))
        .expect("a plain message reframes");
    let framed = &out[..len];
    assert_eq!(len, f.prefix_len(kind) + m.len());
    let back = f.classify(framed);
    let handshake_lens: Vec<usize> = KINDS[..3]
        .iter()
        .map(|k| f.prefix_len(*k) + base_len(*k))
        .collect();
    if kind != MessageType::Transport || !handshake_lens.contains(&len) {
        assert_eq!(
            back,
            Classified::Message {
                kind,
                offset: f.prefix_len(kind)
            },
            "reframed {kind:?} classifies as {back:?}"
        );
        let mut again = vec![0u8; len];
        let k = f.unframe(framed, None, &mut again).unwrap();
        assert_eq!(&again[..k], m);
    }
    // Too small an output buffer is an error, not a panic.
    assert!(f.reframe(m, None, &mut out[..len - 1], filler(0)).is_err());

    // mac1 made for the recipient, both ways.
    if matches!(kind, MessageType::Initiation | MessageType::Response) {
        let key = Mac1Key::new(&[d.len() as u8; 32]);
        let len = f
            .reframe(m, Some(&key), &mut out, filler(1))
            .expect("reframes");
        let (k2, msg) = f.message(&out[..len]).expect("a message");
        assert_eq!(k2, kind);
        assert!(mac::check_mac1(&key, msg), "reframe's mac1 does not check");
        let mut again = vec![0u8; d.len()];
        let k = f.unframe(d, Some(&key), &mut again).unwrap();
        assert!(
            mac::check_mac1(&key, &again[..k]),
            "unframe's mac1 does not check"
        );
    }

    // The relay's own cookie reply answering it.
    let reply = CookieReplyRepr {
        receiver: wire::Index(u32::from_le_bytes(m[4..8].try_into().unwrap())),
        nonce: [d.len() as u8; 24],
        encrypted_cookie: [0x33; 32],
    }
    .to_bytes();
    let mut out = vec![0u8; f.cookie_reply_len()];
    let len = f
        .frame_cookie_reply(&reply, &mut out, filler(2))
        .expect("frames");
    assert_eq!(len, f.cookie_reply_len());
    assert_eq!(
        f.classify(&out[..len]),
        Classified::Message {
            kind: MessageType::CookieReply,
            offset: f.prefix_len(MessageType::CookieReply)
        }
    );
    if f.cookie_reply_len() > 0 {
        let short = f.cookie_reply_len() - 1;
        assert!(f
            .frame_cookie_reply(&reply, &mut out[..short], filler(2))
            .is_err());
    }
}

fn type_at_or0(d: &[u8], at: usize) -> u32 {
    match d.get(at..at + 4) {
        Some(b) => u32::from_le_bytes(b.try_into().unwrap()),
        None => 0,
    }
}
