//! The relay's soft state, owned by one routing core: which endpoint owns which index
//! (`index`), and what the relay knows of each endpoint (`endpoint`): when it proved its
//! address, which key it is confirmed to hold, which groups it is a fan-out candidate in.

pub mod endpoint;
pub mod index;

pub use endpoint::{EndpointInfo, EndpointTable};
pub use index::{IndexEntry, IndexTable};

use std::fmt;
use std::net::SocketAddr;

/// Which of the relay's listening sockets a packet came in on, and so must leave by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ListenerId(pub u16);

/// A peer as the relay sees it: a source address on one listener. One WireGuard device (one
/// key) sits behind each endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub listener: ListenerId,
    pub addr: SocketAddr,
}

impl Endpoint {
    pub const fn new(listener: ListenerId, addr: SocketAddr) -> Self {
        Endpoint { listener, addr }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.listener.0)
    }
}
