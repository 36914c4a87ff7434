//! Admission: who may start a handshake through the relay.
//!
//! Order, extending wireguard-go's: mac1 against the key directory → mac1 replay filter →
//! mac2 or a cookie reply (always, under load, or never) → per-source token bucket under load.
//! The routing core (`route`) applies them; each piece here is a plain value with time passed in.

pub mod cookie;
pub mod junk;
pub mod keys;
pub mod ratelimit;
pub mod recent;
pub mod replay;

pub use cookie::{CookieChecker, Entropy, OsEntropy, TestEntropy};
pub use junk::JunkMemory;
pub use keys::{GroupId, KeyDirectory, KeyId, Partner};
pub use ratelimit::{KeyBudgets, LoadTracker, SourceLimiter, TokenBucket};
pub use recent::RecentSources;
pub use replay::ReplayFilter;
