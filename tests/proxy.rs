//! Proxy and port-per-peer modes on loopback: a real relay, boringtun clients, and boringtun
//! servers that each serve many clients on one socket (as a WireGuard server does).

mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use wgrelay::config::{Config, CookieMode, PortPeer, Server};
use wgrelay::upstream::resolve::HostPort;

const LIMIT: Duration = Duration::from_secs(10);

/// A WireGuard server: one socket, one boringtun tunnel per client it accepts. Handshake
/// initiations go to the tunnel that accepts them; everything else by receiver index.
struct WgServer {
    id: Identity,
    sock: UdpSocket,
    /// Tunnels, by the 24-bit index each was created with.
    peers: Vec<(u32, Peer)>,
}

impl WgServer {
    fn new(id: Identity, ip: IpAddr) -> Self {
        WgServer {
            id,
            sock: peer_socket(ip),
            peers: Vec::new(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("addr")
    }

    /// Accepts `client`, whose packets come through the relay at `relay`.
    fn accept(&mut self, client: &Identity, relay: SocketAddr, index: u32) {
        let sock = self.sock.try_clone().expect("clone");
        let peer = Peer::with_socket(&self.id, &client.public, sock, relay, index);
        self.peers.push((index & 0x00ff_ffff, peer));
    }

    /// Reads and dispatches what is waiting. Returns datagrams read.
    fn poll(&mut self) -> usize {
        let mut buf = vec![0u8; 65536];
        let mut count = 0;
        loop {
            let n = match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            };
            count += 1;
            let d = &buf[..n];
            if d.first() == Some(&1) {
                for (_, p) in self.peers.iter_mut() {
                    if p.process(d) {
                        break;
                    }
                }
            } else if let Some(receiver) = d.get(4..8).and_then(|b| b.try_into().ok()) {
                let target = match d[0] {
                    2 => d
                        .get(8..12)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_le_bytes),
                    _ => Some(u32::from_le_bytes(receiver)),
                };
                if let Some(index) = target {
                    if let Some((_, p)) = self.peers.iter_mut().find(|(i, _)| *i == index >> 8) {
                        p.process(d);
                    }
                }
            }
        }
        count
    }
}

/// Pumps clients and servers until `done`, at most `limit`.
fn pump(
    clients: &mut [Peer],
    servers: &mut [WgServer],
    limit: Duration,
    done: impl Fn(&[Peer], &[WgServer]) -> bool,
) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut next_tick = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        let mut activity = 0;
        for c in clients.iter_mut() {
            activity += c.poll();
        }
        for s in servers.iter_mut() {
            activity += s.poll();
        }
        if std::time::Instant::now() >= next_tick {
            for c in clients.iter_mut() {
                c.tick();
            }
            next_tick = std::time::Instant::now() + Duration::from_millis(100);
        }
        if done(clients, servers) {
            return true;
        }
        if activity == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    done(clients, servers)
}

fn proxy_config(listen: &[&str], servers: Vec<Server>) -> Config {
    Config {
        listen: listen.iter().map(|a| a.parse().expect("addr")).collect(),
        servers,
        ..config(&[])
    }
}

/// Many clients at once, two servers on the relay's one port, chosen by the key each
/// client's initiation names; data both ways on every session.
fn many_clients_two_servers(
    clients_n: usize,
    server_ip: IpAddr,
    server_addr: impl Fn(&WgServer) -> HostPort,
) {
    let ids: Vec<Identity> = (0..2).map(|i| Identity::from_seed(9000 + i)).collect();
    let mut servers: Vec<WgServer> = ids
        .iter()
        .map(|id| WgServer::new(id.clone(), server_ip))
        .collect();
    let cfg = proxy_config(
        &["127.0.0.1:0"],
        servers
            .iter()
            .map(|s| Server {
                addr: server_addr(s),
                key: s.id.public,
            })
            .collect(),
    );
    let (relay, relay_addr) = start(&cfg);
    // Names resolve on the resolver's thread: give it a moment (an initiation before that is
    // a counted drop, and boringtun would only retry after 5 s).
    std::thread::sleep(Duration::from_millis(500));
    let mut clients = Vec::new();
    for i in 0..clients_n {
        let id = Identity::from_seed(9100 + i as u64);
        let s = i % 2;
        servers[s].accept(&id, relay_addr, 0x1000 + i as u32);
        let ip = localhost(0, 41, (i + 1) as u8);
        clients.push(Peer::new(
            &id,
            &servers[s].id.public,
            ip,
            relay_addr,
            0x2000 + i as u32,
        ));
    }
    for c in clients.iter_mut() {
        c.initiate();
    }
    assert!(
        pump(&mut clients, &mut servers, LIMIT, |c, _| c
            .iter()
            .all(|c| c.established())),
        "every client has a session: {}",
        relay.stats()
    );
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(c.send_data(100 + i, i as u64));
    }
    assert!(
        pump(&mut clients, &mut servers, LIMIT, |_, s| s
            .iter()
            .flat_map(|s| s.peers.iter())
            .all(|(_, p)| p.delivered >= 1)),
        "every server tunnel got its client's data: {}",
        relay.stats()
    );
    for s in servers.iter_mut() {
        for (_, p) in s.peers.iter_mut() {
            assert!(p.send_data(1000, 7));
        }
    }
    assert!(
        pump(&mut clients, &mut servers, LIMIT, |c, _| c
            .iter()
            .all(|c| c.delivered >= 1)),
        "every client got its server's data: {}",
        relay.stats()
    );
    let stats = relay.stop();
    assert_eq!(stats.route.sessions_confirmed, clients_n as u64, "{stats}");
    assert_eq!(stats.route.fanout_copies, 0, "{stats}");
}

#[test]
fn many_clients_two_servers_on_one_port_chosen_by_key() {
    many_clients_two_servers(40, localhost(0, 40, 1), |s| HostPort::Addr(s.addr()));
}

#[test]
fn a_server_given_by_dns_name() {
    // `localhost` resolves through /etc/hosts on the resolver's thread.
    many_clients_two_servers(4, localhost(0, 0, 1), |s| {
        format!("localhost:{}", s.addr().port())
            .parse()
            .expect("host:port")
    });
}

#[test]
fn an_ipv6_client_reaches_an_ipv4_server() {
    let mut servers = vec![WgServer::new(
        Identity::from_seed(9300),
        localhost(0, 42, 1),
    )];
    let cfg = proxy_config(
        &["[::1]:0", "127.0.0.1:0"],
        vec![Server {
            addr: HostPort::Addr(servers[0].addr()),
            key: servers[0].id.public,
        }],
    );
    let (relay, _) = start(&cfg);
    let v6 = relay.local_addrs()[0];
    assert!(v6.is_ipv6());
    let id = Identity::from_seed(9301);
    // The server sees the relay's IPv4 listener as its client.
    servers[0].accept(&id, relay.local_addrs()[1], 0x10);
    let mut clients = vec![Peer::new(
        &id,
        &servers[0].id.public,
        "::1".parse().expect("ip"),
        v6,
        0x20,
    )];
    clients[0].initiate();
    assert!(
        pump(&mut clients, &mut servers, LIMIT, |c, _| c[0].established()),
        "{}",
        relay.stats()
    );
    assert!(clients[0].send_data(500, 1));
    assert!(pump(&mut clients, &mut servers, LIMIT, |_, s| s[0].peers
        [0]
    .1
    .delivered
        >= 1));
    assert!(servers[0].peers[0].1.send_data(500, 2));
    assert!(pump(&mut clients, &mut servers, LIMIT, |c, _| c[0]
        .delivered
        >= 1));
    let stats = relay.stop();
    assert_eq!(stats.route.total_dropped(), 0, "{stats}");
}

#[test]
fn port_per_peer_reaches_a_boringtun_responder() {
    let b = Identity::from_seed(9400);
    let a = Identity::from_seed(9401);
    let b_sock = peer_socket(localhost(0, 43, 2));
    let b_addr = b_sock.local_addr().expect("addr");
    let cfg = Config {
        peers: vec![PortPeer {
            listen: "127.0.0.1:0".parse().expect("addr"),
            key: b.public,
            endpoint: Some(b_addr),
            uapi: None,
            awg: None,
        }],
        cookie: CookieMode::Never,
        ..config(&[&a])
    };
    let (relay, _) = start(&cfg);
    // Listener 0 is the main one; B's dedicated port is listener 1.
    let b_port = relay.local_addrs()[1];
    let mut pa = Peer::new(&a, &b.public, localhost(0, 43, 1), b_port, 0x30);
    let mut pb = Peer::with_socket(&b, &a.public, b_sock, b_port, 0x40);
    pa.initiate();
    assert!(
        pump_until(&mut [&mut pa, &mut pb], LIMIT, |p| p[0].established()),
        "{}",
        relay.stats()
    );
    assert!(pa.send_data(300, 1));
    assert!(pump_until(&mut [&mut pa, &mut pb], LIMIT, |p| p[1]
        .delivered
        >= 1));
    assert!(pb.send_data(300, 2));
    assert!(pump_until(&mut [&mut pa, &mut pb], LIMIT, |p| p[0]
        .delivered
        >= 1));
    // An initiation on B's port for another key is refused.
    let c = Identity::from_seed(9402);
    let mut pc = Peer::new(&a, &c.public, localhost(0, 43, 3), b_port, 0x50);
    pc.initiate();
    pump_for(&mut [&mut pc], Duration::from_millis(300));
    let stats = relay.stop();
    assert_eq!(
        stats.route.dropped(wgrelay::route::DropReason::BadMac1),
        1,
        "{stats}"
    );
}

/// wgmux's hub scenario, as the README recommends running it: the hub device is a proxy server
/// of the relay, and spoke B reaches the hub through its own relay port. B's pinhole is then
/// that port, and the relay learns B there from the hub's response; a client A that calls B's
/// port reaches B through it.
#[test]
fn wgmux_hub_recipe_learns_the_spoke_through_its_own_port() {
    let hub_id = Identity::from_seed(9500);
    let b_id = Identity::from_seed(9501);
    let a_id = Identity::from_seed(9502);
    let mut hub = WgServer::new(hub_id.clone(), localhost(0, 44, 1));
    let mut spoke = WgServer::new(b_id.clone(), localhost(0, 44, 2));
    let cfg = Config {
        servers: vec![Server {
            addr: HostPort::Addr(hub.addr()),
            key: hub_id.public,
        }],
        peers: vec![PortPeer {
            listen: "127.0.0.1:0".parse().expect("addr"),
            key: b_id.public,
            endpoint: None,
            uapi: None,
            awg: None,
        }],
        ..config(&[&a_id])
    };
    let (relay, main) = start(&cfg);
    let b_port = relay.local_addrs()[1];
    // The hub sees B at the relay's main listener (the one of the hub's family).
    hub.accept(&b_id, main, 0x100);
    // B: one tunnel to the hub, one for A, both through B's own port.
    spoke.accept(&hub_id, b_port, 0x200);
    spoke.accept(&a_id, b_port, 0x300);
    spoke.peers[0].1.initiate();
    let mut none: Vec<Peer> = Vec::new();
    let mut servers = vec![hub, spoke];
    assert!(
        pump(&mut none, &mut servers, LIMIT, |_, s| s[1].peers[0]
            .1
            .established()
            && s[0].peers[0].1.established()),
        "B has a session with the hub: {}",
        relay.stats()
    );
    // Let B's confirmation reach the relay, which then binds B's key to B's port.
    pump(
        &mut none,
        &mut servers,
        Duration::from_millis(200),
        |_, _| false,
    );
    let mut clients = vec![Peer::new(
        &a_id,
        &b_id.public,
        localhost(0, 44, 3),
        b_port,
        0x400,
    )];
    clients[0].initiate();
    assert!(
        pump(&mut clients, &mut servers, LIMIT, |c, _| c[0].established()),
        "A reaches B through B's port: {}",
        relay.stats()
    );
    assert!(clients[0].send_data(200, 1));
    assert!(pump(&mut clients, &mut servers, LIMIT, |_, s| s[1].peers
        [1]
    .1
    .delivered
        >= 1));
    assert!(servers[1].peers[1].1.send_data(200, 2));
    assert!(pump(&mut clients, &mut servers, LIMIT, |c, _| c[0]
        .delivered
        >= 1));
    let stats = relay.stop();
    assert_eq!(
        stats.route.dropped(wgrelay::route::DropReason::NoUpstream),
        0,
        "{stats}"
    );
    assert_eq!(stats.route.sessions_confirmed, 2, "{stats}");
}
