//! Protocol and implementation constants, split the way wireguard-go's `device/constants.go` does.

use std::time::Duration;

// Specification constants (WireGuard whitepaper §6.1). Not configurable: peers run on these timers.

/// A peer starts a new handshake this long after a session began.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// Keys older than this are refused by both peers, so an index pair is dead after it.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// An unanswered initiation is retried (with a fresh sender index) after this long.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that received data and sent nothing sends a keepalive after this long.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Cookie secrets rotate, and peers forget cookies, after this long.
pub const COOKIE_REFRESH_TIME: Duration = Duration::from_secs(120);

// Implementation constants.

/// Once under load, stay under load this long (wireguard-go `UnderLoadAfterTime`).
pub const UNDER_LOAD_AFTER_TIME: Duration = Duration::from_secs(1);
/// Initiations per second (per relay state) above which the relay counts as under load and
/// `--cookie under-load` starts challenging new sources. Legitimate load is about one initiation
/// per session every REKEY_AFTER_TIME, so 1000/s covers ~100k sessions with room to spare.
pub const UNDER_LOAD_INITIATIONS_PER_SECOND: u32 = 1000;
/// Per-source handshake budget under load (wireguard-go `ratelimiter.go`: 20/s, burst 5),
/// keyed on the IPv4 address or the IPv6 /64.
pub const HANDSHAKES_PER_SECOND_PER_SOURCE: u32 = 20;
pub const HANDSHAKE_BURST_PER_SOURCE: u32 = 5;
/// Fan-out token bucket burst, in seconds of rate (wpex uses 5x the rate).
pub const FANOUT_BURST_SECONDS: u32 = 5;
/// At most this many copies of one initiation. Beyond it, retries rotate through the candidates.
pub const MAX_FANOUT_PER_INITIATION: usize = 64;
/// mac1 values remembered by the replay filter (about 1 MiB). At 10k sessions rekeying every
/// 120 s this is ~13 minutes of history, far beyond the 5 s an initiation lives.
pub const REPLAY_HISTORY: usize = 1 << 16;
/// An endpoint that sent nothing admitted for this long is forgotten (one key lifetime).
pub const ENDPOINT_IDLE_TIME: Duration = REJECT_AFTER_TIME;
/// A source that answered our cookie stays proven this long (a peer keeps a cookie as long).
pub const SOURCE_PROVEN_TIME: Duration = COOKIE_REFRESH_TIME;
/// Roaming: a transport packet from a new source moves the sender's endpoint only if its counter
/// is above every counter seen for that index and at most this far above. Wide enough for the
/// packets a peer sends into a dead NAT mapping before it rebinds (about 1 s at 1 Gbit/s of
/// full-size packets), narrow enough that a blind guess succeeds with probability ~2^-47.
pub const ROAM_COUNTER_WINDOW: u64 = 1 << 17;
/// How often the routing state sweeps out what has expired (linear in the tables).
pub const EXPIRE_INTERVAL: Duration = Duration::from_secs(1);
/// Parked initiations (cold initiations waiting for their holder to show up) kept at most.
pub const MAX_PARKED_INITIATIONS: usize = 4096;
/// Sessions (index pairs, half-open included) per relay state; beyond it new ones are dropped.
pub const MAX_INDICES: usize = 1 << 21;

// The handshake plane (docs/handshake.md).

/// An endpoint that took part in a confirmed session stays proven this long after it (a
/// session's keys live as long; every rekey renews it).
pub const PROVEN_BY_SESSION_TIME: Duration = REJECT_AFTER_TIME;
/// An unproven endpoint that sent nothing admitted for this long is forgotten: long enough to
/// see three of a WireGuard peer's retries, short enough that spoofed sources hold no memory.
pub const UNPROVEN_IDLE_TIME: Duration = Duration::from_secs(16);
/// A second initiation from the same address at least this long and at most
/// `RETRY_MAX_GAP` after the previous one makes the source peer-like: WireGuard retries every
/// REKEY_TIMEOUT (plus jitter) with a new sender index; a flood never waits, a spoofer cycling
/// fresh addresses never comes back.
pub const RETRY_MIN_GAP: Duration = Duration::from_millis(900);
pub const RETRY_MAX_GAP: Duration = Duration::from_secs(16);
/// Slots of the memory of recent unproven sources (8 bytes each).
pub const RECENT_SOURCES: usize = 1 << 16;
/// Slots of a shard's memory of AmneziaWG junk (`admit::junk`, 28 bytes each), kept only
/// when a listener expects junk.
pub const JUNK_SOURCES: usize = 4096;
/// Junk counts towards the initiation that follows it if it arrived at most this long before
/// (an AmneziaWG peer sends it back to back with the initiation).
pub const JUNK_CREDIT_TIME: Duration = Duration::from_secs(1);
/// Copies of initiations from unproven sources that may reach third parties, per named key
/// (open mode: for all of them) and second, and the burst; a key whose budget is spent is
/// "under load" and unproven initiations naming it get the cookie challenge instead.
/// The bound is the strictest responder's: boringtun counts every handshake message with a
/// valid mac1 and answers with cookies past 10 in a second (wireguard-go: 20/s per source
/// once loaded). 20/s with a burst of 40 let spoofed copies put a boringtun responder under
/// load, and its cookie cost the legit initiator a 5 s retry (attack matrix, cold). At most
/// 8 a second leaves room for the legit pair's own two.
pub const UNPROVEN_COPIES_PER_KEY_PER_SECOND: u32 = 4;
pub const UNPROVEN_COPIES_PER_KEY_BURST: u32 = 4;
/// The same for a key the operator pinned (a proxy server, a port's responder): a server
/// takes its clients' first handshakes all at once after an outage, and runs as a device
/// whose limit is its own (boringtun's device: 100 a second; wireguard-go and the kernel:
/// cookies once their handshake queue backs up), so WireGuard's 20/s per source is the
/// reference here, with a burst of 40.
pub const UNPROVEN_COPIES_PER_PINNED_KEY_PER_SECOND: u32 = 20;
pub const UNPROVEN_COPIES_PER_PINNED_KEY_BURST: u32 = 40;
/// mac1 trials (keys tried) per second spent on unproven sources that gave no hint of their
/// key, with one second of burst: a flood of unknown initiations cannot make the relay spend
/// more than about 0.4 core on them, whatever the number of allowed keys. A trial costs
/// ~50 ns in the lane search (`wire::mac1_bank`, AVX-512 or AVX2), ~4x that without them.
pub const UNPROVEN_MAC1_TRIALS_PER_SECOND: u32 = 8_000_000;
/// How long a key stays at the front of the mac1 search order after it was last expected
/// (`admit::keys`): three REKEY_TIMEOUTs, a peer's first retries.
pub const EXPECTED_KEY_TIME: Duration = Duration::from_secs(15);
/// Copies one proven initiation may sweep out to candidates at most. A proven sender answered
/// our cookie or a confirmed handshake, so its copies cannot be aimed at a third party.
pub const PROVEN_SWEEP_CAP: usize = 4096;
/// One initiator sweeps at most once in this long (its retries come every REKEY_TIMEOUT).
pub const SWEEP_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Parked initiations handed at once to a proven newcomer at most. The rest of the search
/// is its own sweep, which goes out in steps (a newcomer of a big group is as likely to be
/// any parked initiation's responder: the newest 16 are a guess, not a search).
pub const PROVEN_HANDOVERS: usize = 16;
/// A proven sweep goes out in steps of this many copies, one step per initiation every
/// SWEEP_STEP_INTERVAL, and stops as soon as the initiation is answered: in one big group the
/// partner is found about halfway through, and candidates bound meanwhile are skipped.
pub const PROVEN_SWEEP_STEP: usize = 16;
pub const SWEEP_STEP_INTERVAL: Duration = Duration::from_millis(5);
/// Copies all continuing sweeps send per SWEEP_STEP_INTERVAL at most (~330k/s): a cold start
/// in one group cannot take the whole send path from transport, and answers come back while
/// the sweep goes on, which is what lets it stop early.
pub const SWEEP_STEP_BUDGET: usize = 1024;
/// Deliveries (initiation index, endpoint) remembered at most, for the exact answer checks.
pub const MAX_DELIVERIES: usize = 1 << 20;
