//! mac1 under many keys at once: which allowed key a cold handshake message names.
//!
//! mac1 is keyed BLAKE2s-128, and nothing in a message says which key made it, so the first
//! initiation from an unknown source is checked against every allowed key. Two facts make that
//! search cheap:
//! - keyed BLAKE2s compresses the key as a block of its own, so the state after that block
//!   depends on the key alone and is computed once, when the key is added: a 116-byte
//!   initiation body then costs two compressions per key instead of three;
//! - every key is tried on the same message, so the keys are laid out as lanes (structure of
//!   arrays) and one compression runs on `LANES` keys at once; the compiler turns the lane
//!   loops into AVX-512, AVX2 or SSE2 operations, chosen at run time.
//!
//! The result is the same function as `mac::compute_mac1` (the tests check it bit for bit);
//! a match is re-checked with that reference before it is returned.

use super::mac::{self, Mac1Key, MAC_LEN};

/// Keys compressed together: 16 × 32-bit lanes fill one AVX-512 register per state word.
pub const LANES: usize = 16;
const BLOCK: usize = 64;
/// Up to this many keys the reference (one key at a time) is faster than one chunk.
const FEW_KEYS: usize = 2;
/// Longest body handled in lanes: a handshake initiation's is 116 bytes, a response's 60.
const MAX_BODY: usize = 2 * BLOCK;

const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];

const SIGMA: [[usize; 16]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
];

/// One word of the BLAKE2s state for `L` independent hashes.
type Lane<const L: usize> = [u32; L];

/// Lane-wise operations, by value, so the compiler keeps each word in a register.
#[derive(Clone, Copy)]
struct W<const L: usize>([u32; L]);

impl<const L: usize> W<L> {
    #[inline(always)]
    fn splat(x: u32) -> Self {
        W([x; L])
    }
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for (v, x) in r.iter_mut().zip(o.0) {
            *v = v.wrapping_add(x);
        }
        W(r)
    }
    #[inline(always)]
    fn add_word(self, x: u32) -> Self {
        let mut r = self.0;
        for v in r.iter_mut() {
            *v = v.wrapping_add(x);
        }
        W(r)
    }
    #[inline(always)]
    fn xor(self, o: Self) -> Self {
        let mut r = self.0;
        for (v, x) in r.iter_mut().zip(o.0) {
            *v ^= x;
        }
        W(r)
    }
    #[inline(always)]
    fn rotr(self, n: u32) -> Self {
        let mut r = self.0;
        for v in r.iter_mut() {
            *v = v.rotate_right(n);
        }
        W(r)
    }
}

/// BLAKE2s's G on four state words (RFC 7693 §3.1), lane-wise.
#[inline(always)]
fn g<const L: usize>(v: &mut [W<L>; 16], [a, b, c, d]: [usize; 4], x: u32, y: u32) {
    let (mut va, mut vb, mut vc, mut vd) = (v[a], v[b], v[c], v[d]);
    va = va.add(vb).add_word(x);
    vd = vd.xor(va).rotr(16);
    vc = vc.add(vd);
    vb = vb.xor(vc).rotr(12);
    va = va.add(vb).add_word(y);
    vd = vd.xor(va).rotr(8);
    vc = vc.add(vd);
    vb = vb.xor(vc).rotr(7);
    (v[a], v[b], v[c], v[d]) = (va, vb, vc, vd);
}

/// BLAKE2s's compression F (RFC 7693 §3.2) of one message block into `L` states at once.
/// The block is the same for every lane: only the states differ. (Written so that the
/// compiler vectorises the lane loops: the working words as an array, by value. Sixteen
/// separate variables made it scalar code, 15x slower.)
#[inline(always)]
fn compress<const L: usize>(h: &mut [Lane<L>; 8], m: &[u32; 16], bytes: u64, last: bool) {
    let tail = [
        IV[0],
        IV[1],
        IV[2],
        IV[3],
        IV[4] ^ bytes as u32,
        IV[5] ^ (bytes >> 32) as u32,
        if last { !IV[6] } else { IV[6] },
        IV[7],
    ];
    let mut v = [W::<L>::splat(0); 16];
    for i in 0..8 {
        v[i] = W(h[i]);
        v[i + 8] = W::splat(tail[i]);
    }
    for s in &SIGMA {
        g(&mut v, [0, 4, 8, 12], m[s[0]], m[s[1]]);
        g(&mut v, [1, 5, 9, 13], m[s[2]], m[s[3]]);
        g(&mut v, [2, 6, 10, 14], m[s[4]], m[s[5]]);
        g(&mut v, [3, 7, 11, 15], m[s[6]], m[s[7]]);
        g(&mut v, [0, 5, 10, 15], m[s[8]], m[s[9]]);
        g(&mut v, [1, 6, 11, 12], m[s[10]], m[s[11]]);
        g(&mut v, [2, 7, 8, 13], m[s[12]], m[s[13]]);
        g(&mut v, [3, 4, 9, 14], m[s[14]], m[s[15]]);
    }
    for i in 0..8 {
        h[i] = W(h[i]).xor(v[i]).xor(v[i + 8]).0;
    }
}

fn words(block: &[u8]) -> [u32; 16] {
    let mut padded = [0u8; BLOCK];
    padded[..block.len()].copy_from_slice(block);
    let mut m = [0u32; 16];
    for (w, b) in m.iter_mut().zip(padded.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    m
}

/// The message blocks of a body that follows the key block, with their byte counters.
struct Body {
    blocks: [[u32; 16]; 2],
    counters: [u64; 2],
    count: usize,
}

impl Body {
    /// `None` for an empty body (the key block would be the last) or one longer than two
    /// blocks: those take the reference path.
    fn new(body: &[u8]) -> Option<Body> {
        if body.is_empty() || body.len() > MAX_BODY {
            return None;
        }
        let mut out = Body {
            blocks: [[0; 16]; 2],
            counters: [0; 2],
            count: 0,
        };
        for (i, chunk) in body.chunks(BLOCK).enumerate() {
            out.blocks[i] = words(chunk);
            out.counters[i] = (BLOCK + i * BLOCK + chunk.len()) as u64;
            out.count = i + 1;
        }
        Some(out)
    }
}

/// The 16-byte digests of `body` for every lane of `states`, as four little-endian words.
#[inline(always)]
fn digest_lanes<const L: usize>(states: &[Lane<L>; 8], body: &Body) -> [Lane<L>; 4] {
    let mut h = *states;
    for i in 0..body.count {
        compress(
            &mut h,
            &body.blocks[i],
            body.counters[i],
            i + 1 == body.count,
        );
    }
    [h[0], h[1], h[2], h[3]]
}

/// The state of keyed BLAKE2s-128 after its key block, for one 32-byte key.
fn keyed_state(key: &[u8; 32]) -> [u32; 8] {
    let mut h = [[0u32; 1]; 8];
    for (w, iv) in h.iter_mut().zip(IV) {
        *w = [iv];
    }
    // parameter block: digest length 16, key length 32, fanout 1, depth 1
    h[0][0] ^= 0x0101_0000 | (32 << 8) | MAC_LEN as u32;
    compress(&mut h, &words(key), BLOCK as u64, false);
    h.map(|w| w[0])
}

/// Keys laid out for the lane-parallel search, `LANES` to a chunk.
#[derive(Clone, Default)]
pub struct Mac1Bank {
    chunks: Vec<[Lane<LANES>; 8]>,
    keys: Vec<Mac1Key>,
}

impl Mac1Bank {
    pub fn push(&mut self, key: Mac1Key) {
        let lane = self.keys.len() % LANES;
        if lane == 0 {
            self.chunks.push([[0; LANES]; 8]);
        }
        let state = keyed_state(&key.0);
        if let Some(chunk) = self.chunks.last_mut() {
            for (word, s) in chunk.iter_mut().zip(state) {
                word[lane] = s;
            }
        }
        self.keys.push(key);
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Exchanges the keys at two positions (a search visits positions in a chosen order, so
    /// the directory moves likely keys forward). O(1): one lane of each of 8 words.
    pub fn swap(&mut self, i: usize, j: usize) {
        if i == j || i >= self.keys.len() || j >= self.keys.len() {
            return;
        }
        self.keys.swap(i, j);
        let (ci, li, cj, lj) = (i / LANES, i % LANES, j / LANES, j % LANES);
        for w in 0..8 {
            let a = self.chunks[ci][w][li];
            self.chunks[ci][w][li] = self.chunks[cj][w][lj];
            self.chunks[cj][w][lj] = a;
        }
    }

    /// The position of the first key whose mac1 the handshake message carries, and how many
    /// keys were tried (whole chunks: the work spent).
    pub fn find(&self, msg: &[u8]) -> (Option<usize>, usize) {
        self.find_from(msg, 0)
    }

    /// As [`Mac1Bank::find`], in this order: positions below `front` from `front - 1` down
    /// (the newest first), then the rest upwards. Every key is still tried before the answer
    /// is "none"; only the order, hence the work until a hit, changes. A chunk straddling
    /// `front` may be tried twice.
    pub fn find_from(&self, msg: &[u8], front: usize) -> (Option<usize>, usize) {
        let Some(mac1) = mac::mac1_of(msg) else {
            return (None, 0);
        };
        let body_len = msg.len() - 2 * MAC_LEN;
        // below a few keys a whole chunk costs more than the keys one by one
        let Some(body) = Body::new(&msg[..body_len]).filter(|_| self.keys.len() > FEW_KEYS) else {
            return self.find_reference(msg);
        };
        let want = words(&mac1);
        let want = [want[0], want[1], want[2], want[3]];
        let head = front.min(self.keys.len()).div_ceil(LANES);
        let (mut chunk, mut tried) = search(&self.chunks[..head], &body, &want, true);
        if chunk.is_none() {
            let skip = front.min(self.keys.len()) / LANES;
            let (c, t) = search(&self.chunks[skip..], &body, &want, false);
            chunk = c.map(|c| c + skip);
            tried += t;
        }
        let straddles = front % LANES != 0 && front < self.keys.len();
        let tried = tried.min(self.keys.len() + if straddles { LANES } else { 0 });
        let Some(chunk) = chunk else {
            return (None, tried);
        };
        // the lanes say which keys of the chunk match; the reference confirms the first
        let first = chunk * LANES;
        let end = (first + LANES).min(self.keys.len());
        let hit = (first..end).find(|&i| mac::check_mac1(&self.keys[i], msg));
        match hit {
            Some(i) => (Some(i), tried),
            // a lane matched where the reference does not: impossible unless this module is
            // wrong, and then the safe answer is the full reference search
            None => self.find_reference(msg),
        }
    }

    fn find_reference(&self, msg: &[u8]) -> (Option<usize>, usize) {
        match self.keys.iter().position(|k| mac::check_mac1(k, msg)) {
            Some(i) => (Some(i), i + 1),
            None => (None, self.keys.len()),
        }
    }
}

/// The first chunk (from the end when `rev`) with a lane whose digest is `want`, and the keys
/// tried until then.
fn search(
    chunks: &[[Lane<LANES>; 8]],
    body: &Body,
    want: &[u32; 4],
    rev: bool,
) -> (Option<usize>, usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above), the only requirement
            // of a `target_feature` function; `search_avx512` is otherwise safe code.
            return unsafe { search_avx512(chunks, body, want, rev) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { search_avx2(chunks, body, want, rev) };
        }
    }
    search_portable(chunks, body, want, rev)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn search_avx512(
    chunks: &[[Lane<LANES>; 8]],
    body: &Body,
    want: &[u32; 4],
    rev: bool,
) -> (Option<usize>, usize) {
    search_portable(chunks, body, want, rev)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn search_avx2(
    chunks: &[[Lane<LANES>; 8]],
    body: &Body,
    want: &[u32; 4],
    rev: bool,
) -> (Option<usize>, usize) {
    search_portable(chunks, body, want, rev)
}

/// Inlined into each `target_feature` wrapper above, so each gets its own instructions.
#[inline(always)]
fn search_portable(
    chunks: &[[Lane<LANES>; 8]],
    body: &Body,
    want: &[u32; 4],
    rev: bool,
) -> (Option<usize>, usize) {
    let n = chunks.len();
    for step in 0..n {
        let c = if rev { n - 1 - step } else { step };
        let d = digest_lanes(&chunks[c], body);
        let mut hit = 0u32;
        for (((w0, w1), w2), w3) in d[0].iter().zip(&d[1]).zip(&d[2]).zip(&d[3]) {
            let same = (*w0 == want[0]) & (*w1 == want[1]) & (*w2 == want[2]) & (*w3 == want[3]);
            hit |= u32::from(same);
        }
        if hit != 0 {
            return (Some(c), (step + 1) * LANES);
        }
    }
    (None, n * LANES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bank(keys: &[[u8; 32]]) -> Mac1Bank {
        let mut b = Mac1Bank::default();
        for k in keys {
            b.push(Mac1Key(*k));
        }
        b
    }

    /// A message of `body_len` bytes plus mac1 (made with `key`) and a zero mac2.
    fn message(key: &[u8; 32], body: &[u8]) -> Vec<u8> {
        let mut msg = body.to_vec();
        msg.extend_from_slice(&mac::mac(key, &[body]));
        msg.extend_from_slice(&[0; MAC_LEN]);
        msg
    }

    #[test]
    fn keyed_state_then_lanes_is_keyed_blake2s() {
        let key = [7u8; 32];
        for len in [1, 60, 63, 64, 65, 116, 127, 128] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let b = Body::new(&body).expect("in range");
            let state = keyed_state(&key).map(|w| [w]);
            let d = digest_lanes(&state, &b);
            let mut got = [0u8; 16];
            for (i, w) in d.iter().enumerate() {
                got[4 * i..4 * i + 4].copy_from_slice(&w[0].to_le_bytes());
            }
            assert_eq!(got, mac::mac(&key, &[&body]), "body of {len} bytes");
        }
    }

    #[test]
    fn empty_and_long_bodies_take_the_reference_path() {
        let key = [9u8; 32];
        let b = bank(&[[1; 32], key]);
        assert_eq!(b.find(&message(&key, &[])).0, Some(1));
        assert_eq!(b.find(&message(&key, &[5; 200])).0, Some(1));
        assert_eq!(b.find(&[0u8; 10]), (None, 0));
    }

    #[test]
    fn every_backend_agrees() {
        let keys: Vec<[u8; 32]> = (0..40u8).map(|i| [i; 32]).collect();
        let b = bank(&keys);
        let body = [3u8; 116];
        let msg = message(&keys[37], &body);
        let parsed = Body::new(&body).expect("in range");
        let mac1 = mac::mac1_of(&msg).expect("long enough");
        let w = words(&mac1);
        let want = [w[0], w[1], w[2], w[3]];
        for rev in [false, true] {
            let portable = search_portable(&b.chunks, &parsed, &want, rev);
            assert_eq!(portable, (Some(2), if rev { 16 } else { 48 }));
            assert_eq!(search(&b.chunks, &parsed, &want, rev), portable);
        }
    }

    proptest! {
        #[test]
        fn finds_what_the_reference_finds(
            keys in prop::collection::vec(any::<[u8; 32]>(), 0..70),
            pick in any::<prop::sample::Index>(),
            body in prop::collection::vec(any::<u8>(), 0..150),
            named in any::<bool>(),
        ) {
            let b = bank(&keys);
            let key = if named && !keys.is_empty() { keys[pick.index(keys.len())] } else { [0xee; 32] };
            let msg = message(&key, &body);
            let reference = keys.iter().position(|k| mac::check_mac1(&Mac1Key(*k), &msg));
            let (found, tried) = b.find(&msg);
            prop_assert_eq!(found, reference);
            prop_assert!(tried <= keys.len());
            if let Some(i) = found {
                prop_assert!(tried > i);
            } else {
                prop_assert_eq!(tried, keys.len());
            }
        }

        // Moving keys around and searching from any front finds the same key, tries every
        // key before saying none, and keeps every key's lanes with it.
        #[test]
        fn any_order_finds_what_the_reference_finds(
            keys in prop::collection::vec(any::<[u8; 32]>(), 0..70),
            swaps in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 0..40),
            front in 0usize..80,
            pick in any::<prop::sample::Index>(),
            body in prop::collection::vec(any::<u8>(), 0..150),
            named in any::<bool>(),
        ) {
            let mut b = bank(&keys);
            let mut order = keys.clone();
            for (i, j) in &swaps {
                if !keys.is_empty() {
                    let (i, j) = (i.index(keys.len()), j.index(keys.len()));
                    b.swap(i, j);
                    order.swap(i, j);
                }
            }
            let key = if named && !keys.is_empty() { keys[pick.index(keys.len())] } else { [0xee; 32] };
            let msg = message(&key, &body);
            let (found, tried) = b.find_from(&msg, front);
            match found {
                Some(i) => {
                    prop_assert!(mac::check_mac1(&Mac1Key(order[i]), &msg));
                    prop_assert!(tried >= 1);
                }
                None => {
                    prop_assert!(!order.iter().any(|k| mac::check_mac1(&Mac1Key(*k), &msg)));
                    prop_assert!(tried >= keys.len());
                    prop_assert!(tried <= keys.len() + LANES);
                }
            }
        }
    }

    #[test]
    fn the_front_is_searched_newest_first() {
        let keys: Vec<[u8; 32]> = (0..64u8).map(|i| [i; 32]).collect();
        let b = bank(&keys);
        let body = [3u8; 116];
        // front 40: chunks 2, 1, 0, then 2, 3; key 35 is in chunk 2, key 5 in chunk 0, key
        // 50 in chunk 3
        assert_eq!(b.find_from(&message(&keys[35], &body), 40), (Some(35), 16));
        assert_eq!(b.find_from(&message(&keys[5], &body), 40), (Some(5), 48));
        assert_eq!(b.find_from(&message(&keys[50], &body), 40), (Some(50), 80));
        assert_eq!(
            b.find_from(&message(&[0xee; 32], &body), 40),
            (None, 64 + 16)
        );
        assert_eq!(b.find_from(&message(&keys[50], &body), 0), (Some(50), 64));
    }
}
