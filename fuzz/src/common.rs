//! What the targets share: the message pool (real boringtun messages, made by
//! `examples/seeds.rs`), the devices that made it, the endpoints and listeners the routing
//! targets use, an AmneziaWG framing, and a byte reader for structured inputs.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wgrelay::key::PublicKey;
use wgrelay::table::{Endpoint, ListenerId};
use wgrelay::wire::awg::{Framing, HRange, Params};
use wgrelay::wire::mac::Mac1Key;

/// `pool.bin`: `WGRFPOOL1`, the device count and each device's public key (32 bytes), then
/// messages, each `from to len(u16 le) bytes`: the device that sent it and the one it is for
/// (1-based). Written by `examples/seeds.rs`.
pub const POOL_MAGIC: &[u8] = b"WGRFPOOL1";

static POOL_BYTES: &[u8] = include_bytes!("../pool.bin");

/// One real WireGuard message of the pool.
#[derive(Debug, Clone)]
pub struct PoolMsg {
    /// The device (1-based) that sent it.
    pub from: u8,
    /// The device it is meant for: the recipient whose key mac1 is made with.
    pub to: u8,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Pool {
    pub devices: Vec<PublicKey>,
    pub msgs: Vec<PoolMsg>,
}

impl Pool {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = POOL_MAGIC.to_vec();
        out.push(self.devices.len() as u8);
        for d in &self.devices {
            out.extend_from_slice(&d.0);
        }
        for m in &self.msgs {
            out.push(m.from);
            out.push(m.to);
            out.extend_from_slice(&(m.bytes.len() as u16).to_le_bytes());
            out.extend_from_slice(&m.bytes);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Pool {
        let mut pool = Pool::default();
        let Some(rest) = bytes.strip_prefix(POOL_MAGIC) else {
            return pool;
        };
        let mut r = Reader::new(rest);
        let n = r.u8().unwrap_or(0);
        for _ in 0..n {
            match r.take(32) {
                Some(k) => pool.devices.push(PublicKey(k.try_into().unwrap())),
                None => return pool,
            }
        }
        while let (Some(from), Some(to), Some(len)) = (r.u8(), r.u8(), r.u16()) {
            let Some(bytes) = r.take(len as usize) else {
                break;
            };
            pool.msgs.push(PoolMsg {
                from,
                to,
                bytes: bytes.to_vec(),
            });
        }
        pool
    }

    /// A device's public key, 1-based as in the messages.
    pub fn device(&self, id: u8) -> Option<PublicKey> {
        self.devices.get(usize::from(id).checked_sub(1)?).copied()
    }
}

/// The committed pool (empty until `examples/seeds.rs` has written it).
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::decode(POOL_BYTES))
}

/// The listeners' bound addresses, in listener order (what `save` and `restore` name them by).
/// Listener 1 frames with [`awg_params`] in the routing target.
pub fn listeners() -> &'static [SocketAddr] {
    static L: OnceLock<Vec<SocketAddr>> = OnceLock::new();
    L.get_or_init(|| {
        ["127.0.0.1:51820", "[::]:51821"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    })
}

/// The sources a routing input can name (3 bits). Device `d` (1-based) naturally sits at
/// endpoint `d - 1`; 4 and 5 are strangers (5 over IPv6); 6 and 7 are on listener 1, the
/// AmneziaWG one, 6 with the same address as 0.
pub const ENDPOINT_COUNT: usize = 8;

pub fn endpoints() -> &'static [Endpoint; ENDPOINT_COUNT] {
    static E: OnceLock<[Endpoint; ENDPOINT_COUNT]> = OnceLock::new();
    E.get_or_init(|| {
        let e = |l: u16, s: &str| Endpoint::new(ListenerId(l), s.parse().unwrap());
        [
            e(0, "127.0.0.1:1001"),
            e(0, "127.0.0.1:1002"),
            e(0, "127.0.0.1:1003"),
            e(0, "127.0.0.1:1004"),
            e(0, "127.0.0.1:1005"),
            e(0, "[2001:db8::6]:1006"),
            e(1, "127.0.0.1:1001"),
            e(1, "127.0.0.7:1007"),
        ]
    })
}

pub fn endpoint_index(e: &Endpoint) -> Option<usize> {
    endpoints().iter().position(|x| x == e)
}

/// An AWG 2.0 parameter set (prefixes on all four messages, H ranges), for listener 1.
pub fn awg_params() -> Params {
    Params {
        jc: 3,
        jmin: 40,
        jmax: 70,
        s1: 15,
        s2: 68,
        s3: 9,
        s4: 5,
        h1: HRange::new(100_000, 100_800).unwrap(),
        h2: HRange::new(200_000, 200_800).unwrap(),
        h3: HRange::single(300_000),
        h4: HRange::new(400_000, 400_999).unwrap(),
    }
}

pub fn awg_framing() -> Framing {
    Framing::new(&awg_params()).expect("valid preset")
}

/// A deterministic byte source (splitmix64) for AWG prefixes and H values.
pub fn filler(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut state = seed;
    move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *b = (z ^ (z >> 31)) as u8;
        }
    }
}

/// Pool message `i` framed for [`awg_framing`], mac1 recomputed for its recipient (what an
/// AWG peer would send).
pub fn framed_pool() -> &'static [Vec<u8>] {
    static F: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    F.get_or_init(|| {
        let pool = pool();
        let framing = awg_framing();
        pool.msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let key = pool.device(m.to).map(|k| Mac1Key::new(&k.0));
                let mut out = vec![0u8; m.bytes.len() + 128];
                match framing.reframe(&m.bytes, key.as_ref(), &mut out, filler(i as u64)) {
                    Ok(n) => {
                        out.truncate(n);
                        out
                    }
                    Err(_) => m.bytes.clone(),
                }
            })
            .collect()
    })
}

/// The wall clock the state-file targets and seeds agree on (2023-11-14).
pub fn wall() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
}

/// Reads a structured input front to back; every read fails at the end.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(*b)
    }

    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (a, b) = self.data.split_at(n);
        self.data = b;
        Some(a)
    }

    /// Up to `n` bytes: whatever is left if fewer.
    pub fn take_up_to(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A time step from one input byte: 0-127 in 10 ms steps (to 1.27 s), 128-223 in 250 ms steps
/// (to 24 s, across REKEY_TIMEOUT and the retry window), 224-255 in 30 s steps (to 16 min,
/// across the cookie, session and idle lifetimes).
pub fn time_step(b: u8) -> Duration {
    match b {
        0..=127 => Duration::from_millis(u64::from(b) * 10),
        128..=223 => Duration::from_millis(u64::from(b - 128) * 250),
        _ => Duration::from_secs(u64::from(b - 224) * 30),
    }
}
