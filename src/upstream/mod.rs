//! Where the proxy and port-per-peer modes send to, kept apart from the datapath.
//!
//! - [`resolve`]: an upstream given as `HOST:PORT`. Names are resolved on a background thread
//!   (periodically, and on demand after a send failure, rate limited), so the datapath only
//!   ever reads an already-resolved address and never blocks on DNS.
//! - [`uapi`]: a client for the WireGuard cross-platform userspace API (the unix socket that
//!   wireguard-go serves), to learn a local device's peers, their endpoints and its port.

pub mod resolve;
pub mod uapi;
