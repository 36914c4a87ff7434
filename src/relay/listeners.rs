//! The relay's listeners: each configured address bound as one `SO_REUSEPORT` group (a
//! socket per shard, plus an initiation queue when steered), under an id that never changes
//! while the process runs. Routing state names endpoints by listener id, so a reload that adds
//! or closes a listener keeps every other listener's id (a closed one leaves a gap) and nothing
//! that names an endpoint needs rewriting.
//!
//! A reload builds the new set beside the running one ([`Listeners::reshaped`]): the listeners
//! it keeps are duplicated (the same kernel socket, so its queue and its port stay), the new
//! ones bound, and only if all of that worked does the relay switch over.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::config::Config;
use crate::ctl::ListenerView;
use crate::io::{bind_group, steer, SocketOptions};
use crate::table::ListenerId;
use crate::wire::awg::{Framing, Params};

/// Where a closed listener's address was: port 0 is never a bound listener's.
pub const CLOSED: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// One listener.
struct Slot {
    /// As configured: a reload keeps the listener whose configured address it names again.
    configured: SocketAddr,
    /// As bound (port 0 resolved, an IPv6 fallback applied).
    local: SocketAddr,
    framing: Framing,
    /// A port peer's listener: the responder key it is dedicated to.
    peer: Option<crate::key::PublicKey>,
    /// One socket per shard (the shards' backends hold duplicates); empty once closed.
    sockets: Vec<UdpSocket>,
    /// A steered listener's initiation queue, read by shard 0.
    handshake: Option<UdpSocket>,
}

impl Slot {
    fn is_open(&self) -> bool {
        !self.sockets.is_empty()
    }

    /// The same listener on duplicated descriptors (the same sockets underneath).
    fn duplicate(&self) -> io::Result<Slot> {
        Ok(Slot {
            configured: self.configured,
            local: self.local,
            framing: self.framing,
            peer: self.peer,
            sockets: self
                .sockets
                .iter()
                .map(UdpSocket::try_clone)
                .collect::<io::Result<_>>()?,
            handshake: self
                .handshake
                .as_ref()
                .map(UdpSocket::try_clone)
                .transpose()?,
        })
    }
}

/// What a configuration asks to listen on, in its order (the main listeners, then one per
/// port peer), each with its framing and its port peer's key.
fn wanted(
    config: &Config,
) -> io::Result<Vec<(SocketAddr, Framing, Option<crate::key::PublicKey>)>> {
    let framing = |params: &Params| {
        Framing::new(params)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("awg: {e}")))
    };
    let mut out = Vec::new();
    for addr in &config.listen {
        out.push((*addr, framing(&config.awg)?, None));
    }
    for p in &config.peers {
        out.push((
            p.listen,
            framing(p.awg.as_ref().unwrap_or(&config.awg))?,
            Some(p.key),
        ));
    }
    Ok(out)
}

/// Every listener the relay has had in this run, by id.
pub struct Listeners {
    slots: Vec<Slot>,
    /// The running configuration's listeners in its order: their ids.
    order: Vec<ListenerId>,
    shards: usize,
}

impl Listeners {
    /// Binds every listener of `config` for `shards` shards.
    pub fn bind(config: &Config, shards: usize) -> io::Result<Listeners> {
        let mut listeners = Listeners {
            slots: Vec::new(),
            order: Vec::new(),
            shards,
        };
        for (addr, framing, peer) in wanted(config)? {
            let id = listeners.push(bind_slot(addr, framing, peer, shards, config.steering)?)?;
            listeners.order.push(id);
        }
        Ok(listeners)
    }

    fn push(&mut self, slot: Slot) -> io::Result<ListenerId> {
        let id = u16::try_from(self.slots.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many listeners"))?;
        self.slots.push(slot);
        Ok(ListenerId(id))
    }

    /// The listeners `config` asks for, built beside these: a listener whose configured
    /// address is asked again keeps its id and its sockets (duplicated) and takes its new
    /// framing; the others close; new addresses are bound under new ids. Changes nothing in
    /// `self`: on error every socket it bound is closed again.
    pub fn reshaped(&self, config: &Config) -> io::Result<(Listeners, Vec<ListenerId>)> {
        let wanted = wanted(config)?;
        let mut next = Listeners {
            slots: Vec::with_capacity(self.slots.len()),
            order: Vec::new(),
            shards: self.shards,
        };
        // what stays open: by configured address, each running listener taken at most once
        let mut kept = vec![false; self.slots.len()];
        let mut reuse: Vec<Option<usize>> = Vec::new();
        for (addr, _, _) in &wanted {
            let found = self.order.iter().map(|id| usize::from(id.0)).find(|&i| {
                !kept[i] && self.slots[i].is_open() && self.slots[i].configured == *addr
            });
            if let Some(i) = found {
                kept[i] = true;
            }
            reuse.push(found);
        }
        for (i, slot) in self.slots.iter().enumerate() {
            next.slots.push(if kept[i] {
                slot.duplicate()?
            } else {
                Slot {
                    configured: slot.configured,
                    local: slot.local,
                    framing: slot.framing,
                    peer: slot.peer,
                    sockets: Vec::new(),
                    handshake: None,
                }
            });
        }
        for ((addr, framing, peer), found) in wanted.into_iter().zip(reuse) {
            let id = match found {
                Some(i) => {
                    let slot = &mut next.slots[i];
                    if slot.handshake.is_some() != (config.steering && framing.is_plain()) {
                        log::info!(
                            "{}: its framing changed; its steering stays as it was bound until \
                             a restart (packets are still handed to their owner shard)",
                            slot.local
                        );
                    }
                    slot.framing = framing;
                    slot.peer = peer;
                    ListenerId(u16::try_from(i).unwrap_or(u16::MAX))
                }
                None => next.push(bind_slot(
                    addr,
                    framing,
                    peer,
                    self.shards,
                    config.steering,
                )?)?,
            };
            next.order.push(id);
        }
        let closed = (0..self.slots.len())
            .filter(|&i| self.slots[i].is_open() && !kept[i])
            .filter_map(|i| u16::try_from(i).ok().map(ListenerId))
            .collect();
        Ok((next, closed))
    }

    /// The running configuration's listeners, in its order.
    pub fn order(&self) -> &[ListenerId] {
        &self.order
    }

    /// Bound addresses in the configuration's order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.order
            .iter()
            .filter_map(|id| self.slots.get(usize::from(id.0)))
            .map(|s| s.local)
            .collect()
    }

    /// Bound addresses by listener id, [`CLOSED`] for a closed one (for the state file and
    /// the control thread, which name listeners by id).
    pub fn addrs_by_id(&self) -> Vec<SocketAddr> {
        self.slots
            .iter()
            .map(|s| if s.is_open() { s.local } else { CLOSED })
            .collect()
    }

    /// Each listener's framing, by id (a closed one keeps its last).
    pub fn framings(&self) -> Vec<Framing> {
        self.slots.iter().map(|s| s.framing).collect()
    }

    /// Shard `t`'s sockets (duplicates) and the listener of each: one per open listener in
    /// id order, then, for shard 0, the initiation queues.
    pub fn shard_sockets(&self, t: usize) -> io::Result<(Vec<UdpSocket>, Vec<u16>)> {
        let mut sockets = Vec::new();
        let mut listener_of = Vec::new();
        for (id, slot) in self.slots.iter().enumerate() {
            if let Some(s) = slot.sockets.get(t) {
                sockets.push(s.try_clone()?);
                listener_of.push(u16::try_from(id).unwrap_or(u16::MAX));
            }
        }
        if t == 0 {
            for (id, slot) in self.slots.iter().enumerate() {
                if let Some(hs) = &slot.handshake {
                    sockets.push(hs.try_clone()?);
                    listener_of.push(u16::try_from(id).unwrap_or(u16::MAX));
                }
            }
        }
        Ok((sockets, listener_of))
    }

    /// One socket of the first listener (for the buffer sizes the startup log reports).
    pub fn first_socket(&self) -> Option<&UdpSocket> {
        self.order
            .first()
            .and_then(|id| self.slots.get(usize::from(id.0)))
            .and_then(|s| s.sockets.first())
    }

    /// What each listener is for, as `wgrelay show` lists them, in the configuration's order.
    pub fn views(&self, has_servers: bool) -> Vec<ListenerView> {
        let main = if has_servers {
            "exchange+proxy"
        } else {
            "exchange"
        };
        self.order
            .iter()
            .filter_map(|id| self.slots.get(usize::from(id.0)))
            .map(|s| ListenerView {
                address: s.local.to_string(),
                mode: if s.peer.is_some() { "port-peer" } else { main }.to_string(),
                peer: s.peer.map(|k| k.to_base64()),
                framing: if s.framing.is_plain() {
                    "wireguard"
                } else {
                    "amneziawg"
                }
                .to_string(),
            })
            .collect()
    }
}

/// Binds one listener: a socket per shard in one reuseport group, plus an initiation queue
/// when steered.
fn bind_slot(
    addr: SocketAddr,
    framing: Framing,
    peer: Option<crate::key::PublicKey>,
    shards: usize,
    steering: bool,
) -> io::Result<Slot> {
    // The steering program reads plain WireGuard offsets; an AmneziaWG listener's prefixes
    // move them, so its shards hand packets over instead.
    let steered = steering && framing.is_plain();
    let members = shards + usize::from(steered);
    let mut sockets = match bind_group(addr, members, &SocketOptions::default()) {
        Ok(s) => s,
        // A host without IPv6: the default [::] falls back to IPv4 with a warning.
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() && is_no_ipv6(&e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            log::warn!("IPv6 unavailable ({e}); listening on {v4} instead of {addr}");
            bind_group(v4, members, &SocketOptions::default())?
        }
        Err(e) => return Err(e),
    };
    let local = sockets
        .first()
        .ok_or_else(|| io::Error::other(format!("bind {addr}: no socket")))?
        .local_addr()?;
    let mut handshake = None;
    if steered {
        // Every packet of a session to one shard, whatever its source address, and
        // initiations to a queue of their own: a flood of them cannot overflow the queues
        // that carry transport.
        match steer::attach(&sockets[0], shards, true) {
            Ok(()) => log::info!(
                "{local}: steering by receiver index over {shards} shard(s), initiations on \
                 their own queue"
            ),
            Err(e) => log::info!("reuseport steering unavailable ({e}); kernel hash only"),
        }
        handshake = sockets.pop();
    }
    Ok(Slot {
        configured: addr,
        local,
        framing,
        peer,
        sockets,
        handshake,
    })
}

pub(super) fn is_no_ipv6(e: &io::Error) -> bool {
    matches!(
        crate::io::socket::os_error(e),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}
