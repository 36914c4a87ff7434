//! Reload without a restart: real boringtun peers keep their sessions across a reload that
//! adds keys, a reload that removes a key ends exactly that key's sessions, and SIGHUP to the
//! binary (or `wgrelay reload` over the control socket) re-reads its configuration file (an
//! invalid one changes nothing and is reported).

mod common;

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wgrelay::route::DropReason;

const LIMIT: Duration = Duration::from_secs(10);

/// `n` data packets each way; true when all arrived.
fn exchange(a: &mut Peer, b: &mut Peer, n: u64) -> bool {
    let (da, db) = (a.delivered, b.delivered);
    for i in 0..n {
        assert!(a.send_data(100, i), "a has a session");
        assert!(b.send_data(100, i), "b has a session");
    }
    pump_until(&mut [a, b], Duration::from_secs(5), |p| {
        p[0].delivered >= da + n && p[1].delivered >= db + n
    })
}

#[test]
fn a_reload_that_adds_keys_keeps_every_session_and_admits_the_new_keys() {
    let ids: Vec<Identity> = (0..4).map(|i| Identity::from_seed(700 + i)).collect();
    let mut relay_config = config(&[&ids[0], &ids[1]]);
    let (mut relay, addr) = start(&relay_config);
    let (mut a, mut b) = pair(
        &ids[0],
        &ids[1],
        localhost(7, 0, 1),
        localhost(7, 0, 2),
        addr,
        1,
    );
    assert!(
        handshake(&mut a, &mut b, LIMIT),
        "a and b through the relay"
    );
    assert!(exchange(&mut a, &mut b, 20));
    // c and d are not allowed yet
    let (mut c, mut d) = pair(
        &ids[2],
        &ids[3],
        localhost(7, 0, 3),
        localhost(7, 0, 4),
        addr,
        2,
    );
    assert!(!handshake(&mut c, &mut d, Duration::from_millis(800)));
    let paired = relay.stats().route.handshakes_paired;

    relay_config.allow.extend([ids[2].public, ids[3].public]);
    let done = relay.reload(&relay_config).expect("reload");
    assert_eq!(done.applied, vec!["allow"], "{done}");
    assert_eq!(done.routing.keys_added, 2, "{done}");
    assert_eq!(done.routing.sessions_ended, 0, "{done}");

    // a and b go on at once: no packet lost, no new handshake
    assert!(exchange(&mut a, &mut b, 50), "a<->b after the reload");
    assert_eq!(relay.stats().route.handshakes_paired, paired);
    // and c and d now meet (their timers retry; a fresh initiation each is quicker)
    assert!(handshake(&mut c, &mut d, LIMIT), "c and d after the reload");
    assert!(exchange(&mut c, &mut d, 20));
    assert!(exchange(&mut a, &mut b, 20));
    relay.stop();
}

#[test]
fn a_reload_that_removes_a_key_ends_exactly_its_sessions() {
    let ids: Vec<Identity> = (0..4).map(|i| Identity::from_seed(710 + i)).collect();
    let mut relay_config = config(&ids.iter().collect::<Vec<_>>());
    let (mut relay, addr) = start(&relay_config);
    let (mut a, mut b) = pair(
        &ids[0],
        &ids[1],
        localhost(7, 1, 1),
        localhost(7, 1, 2),
        addr,
        1,
    );
    let (mut c, mut d) = pair(
        &ids[2],
        &ids[3],
        localhost(7, 1, 3),
        localhost(7, 1, 4),
        addr,
        2,
    );
    assert!(handshake(&mut a, &mut b, LIMIT));
    assert!(handshake(&mut c, &mut d, LIMIT));
    assert!(exchange(&mut a, &mut b, 10) && exchange(&mut c, &mut d, 10));

    relay_config.allow.retain(|k| *k != ids[3].public);
    let done = relay.reload(&relay_config).expect("reload");
    assert_eq!(done.routing.keys_removed, 1, "{done}");
    assert_eq!(done.routing.sessions_ended, 1, "c<->d: {done}");
    assert_eq!(done.routing.indices_ended, 2, "both its indices: {done}");

    assert!(exchange(&mut a, &mut b, 50), "a<->b untouched");
    let dropped = relay.stats().route.dropped(DropReason::UnknownReceiver);
    let before = d.delivered;
    for i in 0..10 {
        assert!(c.send_data(100, i));
    }
    pump_for(&mut [&mut c, &mut d], Duration::from_millis(500));
    assert_eq!(d.delivered, before, "c's packets no longer reach d");
    assert!(
        relay.stats().route.dropped(DropReason::UnknownReceiver) >= dropped + 10,
        "{}",
        relay.stats()
    );
    // and c and d cannot handshake again (their old session still counts as established at
    // boringtun, so the relay's count says it)
    let paired = relay.stats().route.handshakes_paired;
    c.initiate();
    d.initiate();
    pump_for(&mut [&mut c, &mut d], Duration::from_millis(800));
    assert_eq!(
        relay.stats().route.handshakes_paired,
        paired,
        "{}",
        relay.stats()
    );
    relay.stop();
}

#[test]
fn a_reload_adds_and_closes_listeners_and_the_other_listeners_sessions_go_on() {
    let ids: Vec<Identity> = (0..4).map(|i| Identity::from_seed(720 + i)).collect();
    let mut relay_config = config(&ids.iter().collect::<Vec<_>>());
    let (mut relay, addr) = start(&relay_config);
    let (mut a, mut b) = pair(
        &ids[0],
        &ids[1],
        localhost(7, 2, 1),
        localhost(7, 2, 2),
        addr,
        1,
    );
    assert!(handshake(&mut a, &mut b, LIMIT));
    assert!(exchange(&mut a, &mut b, 10));
    let paired = relay.stats().route.handshakes_paired;

    // a second listener: a and b keep theirs and their session
    relay_config
        .listen
        .push("127.0.0.2:0".parse().expect("addr"));
    let done = relay.reload(&relay_config).expect("reload");
    assert_eq!(done.applied, vec!["listen"], "{done}");
    assert!(done.needs_restart.is_empty(), "{done}");
    let addrs = relay.local_addrs().to_vec();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs[0], addr, "the kept listener keeps its port");
    assert!(exchange(&mut a, &mut b, 50), "a<->b across the reload");
    assert_eq!(
        relay.stats().route.handshakes_paired,
        paired,
        "no new handshake"
    );
    // c and d meet through the new one
    let (mut c, mut d) = pair(
        &ids[2],
        &ids[3],
        localhost(7, 2, 3),
        localhost(7, 2, 4),
        addrs[1],
        2,
    );
    assert!(
        handshake(&mut c, &mut d, LIMIT),
        "c and d on the new listener"
    );
    assert!(exchange(&mut c, &mut d, 20));
    let views = relay.inspector().snapshot().listeners;
    assert_eq!(views.len(), 2, "show lists the new listener");
    assert_eq!(views[1].address, addrs[1].to_string());

    // An address that cannot be bound (a socket without SO_REUSEPORT holds it): the reload
    // fails and changes nothing.
    let holder = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr");
    let mut bad = relay_config.clone();
    bad.listen.push(taken);
    bad.allow.retain(|k| *k != ids[0].public);
    let err = relay.reload(&bad).expect_err("an address in use");
    assert!(
        err.to_string().contains(&taken.to_string()) || err.kind() == std::io::ErrorKind::AddrInUse,
        "{err}"
    );
    assert_eq!(relay.local_addrs(), &addrs[..]);
    assert!(
        exchange(&mut a, &mut b, 20),
        "a's key still allowed: nothing changed"
    );
    assert!(exchange(&mut c, &mut d, 20));
    drop(holder);

    // close the second listener: exactly c<->d ends, a<->b goes on
    relay_config.listen.truncate(1);
    let done = relay.reload(&relay_config).expect("reload");
    assert_eq!(done.applied, vec!["listen"], "{done}");
    assert_eq!(done.routing.sessions_ended, 1, "c<->d: {done}");
    assert_eq!(relay.local_addrs(), &addrs[..1]);
    assert!(exchange(&mut a, &mut b, 50), "a<->b untouched");
    let before = d.delivered;
    for i in 0..10 {
        assert!(c.send_data(100, i));
    }
    pump_for(&mut [&mut c, &mut d], Duration::from_millis(500));
    assert_eq!(d.delivered, before, "nothing listens where c sends");
    // its port is free again: the relay closed it
    std::net::UdpSocket::bind(addrs[1]).expect("the closed listener's port is free");
    assert_eq!(
        relay.stats().route.handshakes_paired,
        paired + 1,
        "only c<->d's"
    );
    relay.stop();
}

/// Packets in flight while a reload restarts the shards on a new set of sockets are not
/// lost: the kept listener's queue carries them to the new shards.
#[test]
fn packets_in_flight_across_a_listener_change_arrive() {
    let ids: Vec<Identity> = (0..2).map(|i| Identity::from_seed(730 + i)).collect();
    let mut relay_config = config(&ids.iter().collect::<Vec<_>>());
    let (mut relay, addr) = start(&relay_config);
    let (mut a, mut b) = pair(
        &ids[0],
        &ids[1],
        localhost(7, 3, 1),
        localhost(7, 3, 2),
        addr,
        1,
    );
    assert!(handshake(&mut a, &mut b, LIMIT));
    assert!(exchange(&mut a, &mut b, 5));
    let mut sent = 0;
    for round in 0..4u8 {
        let before = b.delivered;
        // a burst, then at once a reload that adds or removes a listener
        for i in 0..200 {
            assert!(a.send_data(100, 1000 * u64::from(round) + i));
            sent += 1;
        }
        if round % 2 == 0 {
            relay_config
                .listen
                .push("127.0.0.3:0".parse().expect("addr"));
        } else {
            relay_config.listen.truncate(1);
        }
        let done = relay.reload(&relay_config).expect("reload");
        assert_eq!(done.applied, vec!["listen"], "{done}");
        assert!(
            pump_until(&mut [&mut a, &mut b], Duration::from_secs(5), |p| p[1]
                .delivered
                >= before + 200),
            "round {round}: {} of 200 arrived; {}",
            b.delivered - before,
            relay.stats()
        );
    }
    assert_eq!(sent, 800);
    relay.stop();
}

/// The relay binary, its stderr collected by a thread.
struct Binary {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Binary {
    fn start(args: &[&str]) -> Self {
        let mut child = wgrelay_command()
            .args(args)
            .env("WGRELAY_LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wgrelay");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Binary { child, log }
    }

    fn wait_for(&self, text: &str, after: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log.lock().unwrap()[after..].contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_allow(path: &std::path::Path, keys: &[&Identity]) {
    let list: Vec<String> = keys
        .iter()
        .map(|i| format!("\"{}\"", i.public.to_base64()))
        .collect();
    std::fs::write(
        path,
        format!("allow = [{}]\ncookie = \"never\"\n", list.join(", ")),
    )
    .expect("write config");
}

#[test]
fn sighup_rereads_the_file_and_an_invalid_file_changes_nothing() {
    let ids: Vec<Identity> = (0..4).map(|i| Identity::from_seed(720 + i)).collect();
    let dir = std::env::temp_dir().join(format!("wgrelay-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("relay.toml");
    write_allow(&file, &[&ids[0], &ids[1]]);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let ctl = dir.join("control.sock");
    let ctl_path = ctl.to_str().expect("path").to_string();
    let mut relay = Binary::start(&[
        "--listen",
        &listen,
        "--config",
        file.to_str().expect("path"),
        "--stats-interval",
        "0",
        "--control-socket",
        &ctl_path,
    ]);
    assert!(
        relay.wait_for("relaying on", 0),
        "{}",
        relay.log.lock().unwrap()
    );
    let addr = listen.parse().expect("addr");
    let (mut a, mut b) = pair(
        &ids[0],
        &ids[1],
        localhost(7, 2, 1),
        localhost(7, 2, 2),
        addr,
        1,
    );
    assert!(handshake(&mut a, &mut b, LIMIT));
    assert!(exchange(&mut a, &mut b, 10));
    let reload = || {
        wgrelay_command()
            .args(["reload", "--control-socket", &ctl_path])
            .output()
            .expect("wgrelay reload")
    };

    // a typo: refused, logged, the relay keeps running as it was
    std::fs::write(&file, "allow = [\"not a key\"]\n").expect("write");
    let mark = relay.log_len();
    relay.signal(libc::SIGHUP);
    assert!(
        relay.wait_for("reload refused", mark),
        "{}",
        relay.log.lock().unwrap()
    );
    assert!(relay.alive(), "SIGHUP must not end the relay");
    assert!(exchange(&mut a, &mut b, 10), "a<->b after a refused reload");
    // the same through `wgrelay reload`: a non-zero exit that says why
    let out = reload();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload failed") && err.contains("not a key"),
        "{err}"
    );
    assert!(exchange(&mut a, &mut b, 10));

    // a valid file with two more keys, through `wgrelay reload`: applied, a<->b untouched,
    // c<->d admitted
    write_allow(&file, &ids.iter().collect::<Vec<_>>());
    let out = reload();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("applied allow: +2"), "{said}");
    assert!(exchange(&mut a, &mut b, 20));
    let (mut c, mut d) = pair(
        &ids[2],
        &ids[3],
        localhost(7, 2, 3),
        localhost(7, 2, 4),
        addr,
        2,
    );
    assert!(
        handshake(&mut c, &mut d, LIMIT),
        "{}",
        relay.log.lock().unwrap()
    );
    assert!(exchange(&mut c, &mut d, 10));

    // d out again by SIGHUP: exactly c<->d ends
    write_allow(&file, &[&ids[0], &ids[1], &ids[2]]);
    let mark = relay.log_len();
    relay.signal(libc::SIGHUP);
    assert!(
        relay.wait_for("1 sessions ended (2 receiver indices)", mark),
        "{}",
        relay.log.lock().unwrap()
    );
    assert!(exchange(&mut a, &mut b, 20));
    let before = d.delivered;
    for i in 0..5 {
        assert!(c.send_data(100, i));
    }
    pump_for(&mut [&mut c, &mut d], Duration::from_millis(300));
    assert_eq!(d.delivered, before);
    // nothing changed: said so
    let out = reload();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no changes"));
    assert!(relay.alive());
    let _ = std::fs::remove_dir_all(&dir);
}
