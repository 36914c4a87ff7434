//! Handshake latency at the relay: from admitting an initiation (forwarded at once, or parked
//! until its responder shows up) to forwarding the response that answers it.
//!
//! The start times sit in a small direct-mapped table keyed by the initiation's sender
//! index, beside the index table rather than in it: no per-entry cost, no expiry, a fixed
//! size. Two pending initiations whose indices share a slot lose the older one's sample. With
//! N initiations in flight a sample survives with odds of about 1 - N/SLOTS, a little worse
//! for a long wait (more time for a newcomer to take its slot): a cold start of ten thousand
//! pairs loses ~15 %, slightly more of its slow ones. Indices are chosen by peers, so a peer
//! can evict samples, never forge one: a sample needs the index's own response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::constants::REKEY_TIMEOUT;
use crate::metrics::histogram::Histogram;
use crate::wire::Index;

/// Slots of the start-time table (8 bytes each, 512 KiB): the initiations a busy relay has in
/// flight within one REKEY_TIMEOUT, many times over.
const SLOTS: usize = 1 << 16;
const SLOT_BITS: u32 = SLOTS.trailing_zeros();

/// When each pending initiation was admitted, and the histogram its answers go into.
pub struct HandshakeTimer {
    epoch: Instant,
    /// (sender index, microseconds since `epoch`, wrapping): a u32 wraps after 71 minutes,
    /// far beyond the REKEY_TIMEOUT an initiation lives.
    slots: Box<[(u32, u32)]>,
    histogram: Arc<Histogram>,
}

impl HandshakeTimer {
    pub fn new(now: Instant) -> Self {
        HandshakeTimer {
            epoch: now,
            slots: vec![(0, 0); SLOTS].into_boxed_slice(),
            histogram: Arc::new(Histogram::handshake()),
        }
    }

    /// The histogram, to read without the routing state's lock.
    pub fn histogram(&self) -> Arc<Histogram> {
        self.histogram.clone()
    }

    fn slot(index: Index) -> usize {
        // Fibonacci hashing: consecutive or patterned indices spread over the table.
        (index.0.wrapping_mul(0x9E37_79B9) >> (32 - SLOT_BITS)) as usize
    }

    fn micros(&self, now: Instant) -> u32 {
        // Truncation is the wrap the slots rely on.
        now.saturating_duration_since(self.epoch).as_micros() as u32
    }

    /// An initiation with sender index `sender` was admitted at `now`.
    pub fn on_initiation(&mut self, sender: Index, now: Instant) {
        let at = self.micros(now);
        if let Some(s) = self.slots.get_mut(Self::slot(sender)) {
            *s = (sender.0, at);
        }
    }

    /// The response to initiation `receiver` is forwarded at `now`: records the latency if
    /// the initiation's start is still known.
    pub fn on_response(&mut self, receiver: Index, now: Instant) {
        let micros = self.micros(now);
        let Some(s) = self.slots.get_mut(Self::slot(receiver)) else {
            return;
        };
        if s.0 != receiver.0 {
            return;
        }
        let d = Duration::from_micros(u64::from(micros.wrapping_sub(s.1)));
        // One sample per initiation; an older start is not this initiation's.
        *s = (0, 0);
        if d <= REKEY_TIMEOUT {
            self.histogram.observe(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_records_the_time_since_its_initiation_once() {
        let t0 = Instant::now();
        let mut t = HandshakeTimer::new(t0);
        t.on_initiation(Index(7), t0 + Duration::from_millis(10));
        t.on_response(Index(8), t0 + Duration::from_millis(11)); // not a pending initiation
        t.on_response(Index(7), t0 + Duration::from_millis(13));
        t.on_response(Index(7), t0 + Duration::from_millis(14)); // answered already
        let s = t.histogram().snapshot();
        assert_eq!(s.count, 1);
        assert!((s.sum_seconds - 0.003).abs() < 1e-9, "{s:?}");
        // 3 ms: in the (2.5 ms, 5 ms] bucket
        let bucket = s.buckets.iter().position(|(_, n)| *n == 1);
        assert_eq!(bucket.map(|b| s.buckets[b].0), Some(0.005));
    }

    #[test]
    fn an_evicted_or_stale_start_records_nothing() {
        let t0 = Instant::now();
        let mut t = HandshakeTimer::new(t0);
        // two indices in one slot: the later initiation evicts the earlier's start
        let a = Index(1);
        let b = (2..u32::MAX)
            .map(Index)
            .find(|i| HandshakeTimer::slot(*i) == HandshakeTimer::slot(a))
            .expect("a colliding index");
        t.on_initiation(a, t0);
        t.on_initiation(b, t0);
        t.on_response(a, t0 + Duration::from_millis(1));
        assert_eq!(t.histogram().snapshot().count, 0);
        // an answer later than an initiation can live is not a handshake's latency
        t.on_response(b, t0 + REKEY_TIMEOUT + Duration::from_millis(1));
        assert_eq!(t.histogram().snapshot().count, 0);
    }
}
