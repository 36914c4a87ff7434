//! The relay's soft state, owned by one routing core: which endpoint owns which index
//! (`index`), and what the relay knows of each endpoint (`endpoint`): when it proved its
//! address, which key it is confirmed to hold, which groups it is a fan-out candidate in.

pub mod delivery;
pub mod endpoint;
pub mod index;

pub use delivery::Deliveries;
pub use endpoint::{EndpointInfo, EndpointTable};
pub use index::{IndexEntry, IndexTable};

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::constants::{
    ENDPOINT_IDLE_TIME, PROVEN_BY_SESSION_TIME, REJECT_AFTER_TIME, SOURCE_PROVEN_TIME,
};

/// Time inside the tables: tenths of a second, in 32 bits (13 years). Four bytes instead of
/// an `Instant`'s sixteen, in entries kept per session and per endpoint.
///
/// `Tick(0)` means "never". The tables' epoch (the `Instant` their [`Clock`] starts at) is
/// [`Tick::EPOCH`], [`BEFORE_EPOCH`] later, so a time up to that long before the relay started
/// is a tick too: a record read back from the state file was last seen before this run began,
/// and must expire when it would have, not a whole lifetime after the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Tick(pub u32);

const TICKS_PER_SECOND: u128 = 10;

/// How far before the tables' epoch a tick can date something: the longest any record lives
/// (a session, a proof, an idle endpoint), so whatever a restored record says about its past
/// fits.
pub const BEFORE_EPOCH: Duration = REJECT_AFTER_TIME;

const _: () = {
    let most = BEFORE_EPOCH.as_millis();
    assert!(ENDPOINT_IDLE_TIME.as_millis() <= most);
    assert!(PROVEN_BY_SESSION_TIME.as_millis() <= most);
    assert!(SOURCE_PROVEN_TIME.as_millis() <= most);
};

fn ticks(d: Duration) -> u32 {
    u32::try_from(d.as_millis() * TICKS_PER_SECOND / 1000).unwrap_or(u32::MAX)
}

impl Tick {
    /// The tables' epoch: [`BEFORE_EPOCH`] after tick 1, the earliest tick that is not
    /// "never".
    pub const EPOCH: Tick = Tick(1 + (BEFORE_EPOCH.as_millis() * TICKS_PER_SECOND / 1000) as u32);

    /// `d` later. Rounds down: a deadline is never later than asked.
    pub fn after(self, d: Duration) -> Tick {
        Tick(self.0.saturating_add(ticks(d)))
    }

    /// `d` earlier, but never "never" (`Tick(0)`): no earlier than tick 1.
    pub fn before(self, d: Duration) -> Tick {
        Tick(self.0.saturating_sub(ticks(d)).max(1))
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn duration_since(self, earlier: Tick) -> Duration {
        let t = u64::from(self.0.saturating_sub(earlier.0));
        Duration::from_millis(t * (1000 / TICKS_PER_SECOND as u64))
    }

    /// Whether at least `d` has passed since `earlier`.
    pub fn at_least_since(self, earlier: Tick, d: Duration) -> bool {
        self.0.saturating_sub(earlier.0) >= ticks(d)
    }
}

/// Turns `Instant`s into `Tick`s.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new(epoch: Instant) -> Self {
        Clock { epoch }
    }

    /// `now` as a tick: [`Tick::EPOCH`] at the epoch, later from there.
    pub fn tick(&self, now: Instant) -> Tick {
        let since = now.saturating_duration_since(self.epoch).as_millis() * TICKS_PER_SECOND / 1000;
        Tick(
            u32::try_from(since)
                .unwrap_or(u32::MAX)
                .saturating_add(Tick::EPOCH.0),
        )
    }
}

/// Which of the relay's listening sockets a packet came in on, and so must leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ListenerId(pub u16);

/// A peer as the relay sees it: a source address on one listener. One WireGuard device (one
/// key) sits behind each endpoint.
///
/// Stored compactly (20 bytes) because every index entry holds two. An IPv4 address and its
/// v4-mapped IPv6 form are the same endpoint (a dual-stack socket reports the latter); the I/O
/// layer maps the family back per socket. IPv6 scope ids are not kept: a relay's peers are not
/// on link-local addresses.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    ip: [u8; 16],
    port: u16,
    pub listener: ListenerId,
}

impl Endpoint {
    pub fn new(listener: ListenerId, addr: SocketAddr) -> Self {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Endpoint {
            ip,
            port: addr.port(),
            listener,
        }
    }

    /// The socket address (IPv4 for a v4-mapped address).
    pub fn addr(&self) -> SocketAddr {
        let v6 = Ipv6Addr::from(self.ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        SocketAddr::new(ip, self.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr(), self.listener.0)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_late_enough_to_date_what_came_before() {
        let epoch = Instant::now();
        let clock = Clock::new(epoch);
        assert_eq!(clock.tick(epoch), Tick::EPOCH);
        if let Some(earlier) = epoch.checked_sub(Duration::from_secs(1)) {
            assert_eq!(clock.tick(earlier), Tick::EPOCH);
        }
        assert_eq!(
            clock.tick(epoch + Duration::from_millis(1250)),
            Tick::EPOCH.after(Duration::from_millis(1200))
        );
        // Anything a record can have lived before the epoch is a tick, and not "never".
        let earliest = Tick::EPOCH.before(BEFORE_EPOCH);
        assert_eq!(earliest, Tick(1));
        assert!(Tick::EPOCH.at_least_since(earliest, ENDPOINT_IDLE_TIME));
        assert!(!Tick::EPOCH.at_least_since(
            Tick::EPOCH.before(Duration::from_secs(170)),
            ENDPOINT_IDLE_TIME
        ));
        assert_eq!(Tick(5).before(Duration::from_secs(1)), Tick(1), "never 0");
    }

    #[test]
    fn endpoints_round_trip_and_v4_mapped_is_v4() {
        for s in ["127.0.0.1:5", "[::1]:6", "[2001:db8::7]:65535", "0.0.0.0:1"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(Endpoint::new(ListenerId(3), a).addr(), a);
        }
        let v4 = Endpoint::new(ListenerId(0), "10.1.2.3:9".parse().unwrap());
        let mapped = Endpoint::new(ListenerId(0), "[::ffff:10.1.2.3]:9".parse().unwrap());
        assert_eq!(v4, mapped);
        assert_ne!(
            v4,
            Endpoint::new(ListenerId(1), "10.1.2.3:9".parse().unwrap())
        );
        assert_eq!(std::mem::size_of::<Endpoint>(), 20);
    }
}
