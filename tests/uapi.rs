//! The UAPI client against a real wireguard-go: a device with two peers configured by `wg`,
//! read back through `/var/run/wireguard/<dev>.sock`. Needs root, wireguard-go, wg and
//! /dev/net/tun; prints why and passes when any is missing. Cleans up (kills wireguard-go,
//! deletes the interface) whatever happens; every wait is bounded.

mod common;

use std::net::SocketAddr;

use common::wgdev::{start_device, unavailable, wg};
use wgrelay::key::PublicKey;
use wgrelay::upstream::uapi::{socket_path, Client, UapiError};

fn skip(why: &str) {
    println!("uapi: skipped: {why}");
}

#[test]
fn reads_peers_from_a_real_wireguard_go() {
    if let Some(why) = unavailable() {
        return skip(why);
    }

    let name = format!("wgtest{}", std::process::id() % 1_000_000);
    let dir = std::env::temp_dir().join(format!("wgrelay-uapi-real-{}", std::process::id()));
    let dev = match start_device(&name, &dir) {
        Ok(d) => d,
        // A sandbox without working TUN: wireguard-go cannot create the interface.
        Err(e) if e.contains("exited") => return skip(&e),
        Err(e) => panic!("{e}"),
    };

    let private = wg(&["genkey"], None).unwrap();
    let key_file = dir.join("private.key");
    std::fs::write(&key_file, format!("{private}\n")).unwrap();
    let own_public: PublicKey = wg(&["pubkey"], Some(&private)).unwrap().parse().unwrap();
    let peer_a: PublicKey = wg(&["pubkey"], Some(&wg(&["genkey"], None).unwrap()))
        .unwrap()
        .parse()
        .unwrap();
    let peer_b: PublicKey = wg(&["pubkey"], Some(&wg(&["genkey"], None).unwrap()))
        .unwrap()
        .parse()
        .unwrap();
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let (a, b) = (peer_a.to_string(), peer_b.to_string());
    let key_path = key_file.to_string_lossy().into_owned();
    let port_s = port.to_string();
    wg(
        &[
            "set",
            &name,
            "private-key",
            &key_path,
            "listen-port",
            &port_s,
            "peer",
            &a,
            "endpoint",
            "127.0.0.1:5555",
            "persistent-keepalive",
            "25",
            "allowed-ips",
            "10.99.0.2/32",
            "peer",
            &b,
            "endpoint",
            "[::1]:5556",
            "allowed-ips",
            "10.99.0.3/32,fd99::3/128",
        ],
        None,
    )
    .unwrap();

    let client = Client::for_device(&name).unwrap();
    assert_eq!(client.path(), socket_path(&name).unwrap());
    let device = client.get().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(device.listen_port, Some(port));
    assert_eq!(device.peers.len(), 2, "{device:?}");
    assert!(device.peers.iter().all(|p| p.public_key != own_public));
    let pa = device
        .peers
        .iter()
        .find(|p| p.public_key == peer_a)
        .expect("peer A");
    assert_eq!(
        pa.endpoint,
        Some("127.0.0.1:5555".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(pa.persistent_keepalive, Some(25));
    assert_eq!(pa.last_handshake, None);
    let pb = device
        .peers
        .iter()
        .find(|p| p.public_key == peer_b)
        .expect("peer B");
    assert_eq!(
        pb.endpoint,
        Some("[::1]:5556".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(pb.persistent_keepalive, None);

    // The same connection protocol answers twice in a row (a fresh connection each time).
    assert_eq!(client.get().unwrap().peers.len(), 2);

    // A device that does not exist: a clear error, not a hang.
    let missing = Client::for_device("wgnosuchdev0")
        .unwrap()
        .get()
        .unwrap_err();
    assert!(
        matches!(missing, UapiError::SocketMissing(_)),
        "{missing:?}"
    );

    drop(dev);
    assert!(!socket_path(&name).unwrap().exists());
}
