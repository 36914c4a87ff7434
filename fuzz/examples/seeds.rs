//! Writes the fuzz targets' seeds from real WireGuard messages made by boringtun:
//! `pool.bin` (the routing targets' message pool) and `seeds/<target>/*`.
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example seeds   # then rebuild the targets
//! ```
//!
//! boringtun picks fresh ephemeral keys and timestamps, so every run writes different (equally
//! valid) bytes; the committed files are one such run. Run it twice after changing the pool's
//! layout: the route target includes the pool at build time.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
use wgrelay::admit::TestEntropy;
use wgrelay::config::CookieMode;
use wgrelay::key::PublicKey;
use wgrelay::route::{Actions, Decision, Settings, State};
use wgrelay::wire::awg::{Framing, HRange, Params};
use wgrelay::wire::mac::{self, CookieKey, Mac1Key};
use wgrelay::wire::CookieReplyRepr;
use wgrelay_fuzz::awg::encode_header;
use wgrelay_fuzz::common::{
    awg_framing, awg_params, endpoints, filler, listeners, wall, Pool, PoolMsg,
};
use wgrelay_fuzz::route::{encode, Mode, Op, Topology};

struct Device {
    id: u8,
    secret: [u8; 32],
    public: PublicKey,
}

fn device(id: u8) -> Device {
    let secret = [id; 32];
    let public = XPublic::from(&StaticSecret::from(secret));
    Device {
        id,
        secret,
        public: PublicKey(*public.as_bytes()),
    }
}

fn tunn(own: &Device, peer: &Device, index: u32) -> Tunn {
    Tunn::new(
        StaticSecret::from(own.secret),
        XPublic::from(peer.public.0),
        None,
        None,
        index,
        None,
    )
}

fn initiation(t: &mut Tunn) -> Vec<u8> {
    let mut buf = [0u8; 256];
    match t.format_handshake_initiation(&mut buf, true) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no initiation"),
    }
}

fn feed(t: &mut Tunn, datagram: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    match t.decapsulate(None, datagram, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no answer"),
    }
}

fn data(t: &mut Tunn, len: usize) -> Vec<u8> {
    let mut ip = vec![0u8; len.max(20)];
    ip[0] = 0x45;
    let total = ip.len() as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let mut buf = vec![0u8; ip.len() + 64];
    match t.encapsulate(&ip, &mut buf) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("no session"),
    }
}

/// Messages of one pair, in the order of [`PAIR_LAYOUT`].
fn pair(x: &Device, y: &Device, base: u32) -> Vec<PoolMsg> {
    let (mut tx, mut ty) = (tunn(x, y, base), tunn(y, x, base + 100));
    let m = |from: &Device, to: &Device, bytes: Vec<u8>| PoolMsg {
        from: from.id,
        to: to.id,
        bytes,
    };
    let x_a = initiation(&mut tx);
    let y_a = initiation(&mut ty);
    let x_b = initiation(&mut tx);
    let y_b = initiation(&mut ty);
    let resp = feed(&mut ty, &x_b);
    let keepalive = feed(&mut tx, &resp);
    let mut out = vec![
        m(x, y, x_a),
        m(y, x, y_a),
        m(x, y, x_b),
        m(y, x, y_b),
        m(y, x, resp),
        m(x, y, keepalive.clone()),
    ];
    let mut rx = vec![0u8; 2048];
    let _ = ty.decapsulate(None, &keepalive, &mut rx);
    for len in [20, 100, 1400] {
        out.push(m(x, y, data(&mut tx, len)));
        out.push(m(y, x, data(&mut ty, len)));
    }
    // A rekey the other way.
    let rekey = initiation(&mut ty);
    let resp2 = feed(&mut tx, &rekey);
    let keepalive2 = feed(&mut ty, &resp2);
    let _ = tx.decapsulate(None, &keepalive2, &mut rx);
    out.push(m(y, x, rekey));
    out.push(m(x, y, resp2));
    out.push(m(y, x, keepalive2));
    out.push(m(y, x, data(&mut ty, 64)));
    out.push(m(x, y, data(&mut tx, 64)));
    out
}

/// Index of each message within a pair's block.
const X_A: u8 = 0;
const Y_A: u8 = 1;
const X_B: u8 = 2;
const Y_B: u8 = 3;
const RESP: u8 = 4;
const KEEPALIVE: u8 = 5;
const DATA: std::ops::Range<u8> = 6..12;
const REKEY: u8 = 12;
const PAIR_LAYOUT: u8 = 17;

struct Out {
    root: PathBuf,
    files: BTreeMap<String, usize>,
}

impl Out {
    fn write(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join("seeds").join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
        *self.files.entry(target.to_string()).or_default() += 1;
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    let _ = fs::remove_dir_all(root.join("seeds"));
    let mut out = Out {
        root: root.clone(),
        files: BTreeMap::new(),
    };
    let devices: Vec<Device> = (1..=4).map(device).collect();
    let mut pool = Pool {
        devices: devices.iter().map(|d| d.public).collect(),
        msgs: Vec::new(),
    };
    pool.msgs.extend(pair(&devices[0], &devices[1], 1 << 8));
    pool.msgs.extend(pair(&devices[2], &devices[3], 3 << 8));
    assert_eq!(pool.msgs.len(), 2 * usize::from(PAIR_LAYOUT));
    fs::write(root.join("pool.bin"), pool.encode()).unwrap();

    wire_seeds(&mut out, &pool);
    awg_seeds(&mut out, &pool);
    route_seeds(&mut out);
    state_file_seeds(&mut out, &devices);
    config_seeds(&mut out, &devices);
    for (target, n) in &out.files {
        println!("seeds/{target}: {n} files");
    }
}

fn cookie_reply(answering: &[u8], responder: &PublicKey) -> Vec<u8> {
    let mac1 = mac::mac1_of(answering).unwrap();
    let nonce = [0x42; 24];
    let sealed = mac::seal_cookie(&CookieKey::new(&responder.0), &nonce, &[7; 16], &mac1);
    CookieReplyRepr {
        receiver: wgrelay::wire::Index(u32::from_le_bytes(answering[4..8].try_into().unwrap())),
        nonce,
        encrypted_cookie: sealed,
    }
    .to_bytes()
    .to_vec()
}

fn wire_seeds(out: &mut Out, pool: &Pool) {
    let names = [
        "init_x_a",
        "init_y_a",
        "init_x_b",
        "init_y_b",
        "response",
        "keepalive",
        "data_x_20",
        "data_y_20",
        "data_x_100",
        "data_y_100",
        "data_x_1400",
        "data_y_1400",
        "rekey_init",
        "rekey_response",
        "rekey_keepalive",
        "rekey_data_y",
        "rekey_data_x",
    ];
    for (i, m) in pool.msgs.iter().enumerate() {
        let name = names[i % names.len()];
        out.write("wire", &format!("pair{}_{name}", i / names.len()), &m.bytes);
    }
    let reply = cookie_reply(&pool.msgs[0].bytes, &pool.devices[1]);
    out.write("wire", "cookie_reply", &reply);
    out.write("wire", "empty", b"");
    out.write("wire", "type_only", &[1, 0, 0, 0]);
}

/// AWG 1.x as in the README.
fn awg1() -> Params {
    let mut p = Params::plain();
    for (k, v) in [
        ("jc", "4"),
        ("jmin", "40"),
        ("jmax", "70"),
        ("s1", "15"),
        ("s2", "68"),
        ("h1", "1020325451"),
        ("h2", "3288052141"),
        ("h3", "1766607858"),
        ("h4", "2528465083"),
    ] {
        p.set(k, v).unwrap();
    }
    p.validate().unwrap();
    p
}

fn awg_seeds(out: &mut Out, pool: &Pool) {
    let presets = [
        ("awg2", awg_params()),
        ("awg1", awg1()),
        ("plain", Params::plain()),
    ];
    let pick = [X_A, RESP, KEEPALIVE, DATA.start + 4];
    for (name, params) in presets {
        let framing = Framing::new(&params).unwrap();
        let header = encode_header(&params);
        for (n, i) in pick.iter().enumerate() {
            let m = &pool.msgs[usize::from(*i)];
            let key = pool.device(m.to).map(|k| Mac1Key::new(&k.0));
            let mut buf = vec![0u8; m.bytes.len() + 256];
            let len = framing
                .reframe(&m.bytes, key.as_ref(), &mut buf, filler(n as u64))
                .unwrap();
            let mut seed = header.clone();
            seed.extend_from_slice(&buf[..len]);
            out.write("awg", &format!("{name}_{n}"), &seed);
        }
        let reply = cookie_reply(&pool.msgs[0].bytes, &pool.devices[1]);
        let mut buf = vec![0u8; framing.cookie_reply_len()];
        let len = framing
            .frame_cookie_reply(reply.as_slice().try_into().unwrap(), &mut buf, filler(9))
            .unwrap();
        let mut seed = header.clone();
        seed.extend_from_slice(&buf[..len]);
        out.write("awg", &format!("{name}_cookie_reply"), &seed);
        let mut junk = header;
        junk.extend_from_slice(&[0xa5; 50]);
        out.write("awg", &format!("{name}_junk"), &junk);
    }
    // Ranges, as AWG 2.0 writes them, and a framing the validation refuses.
    let mut p = awg_params();
    p.h1 = HRange::new(5, 10).unwrap();
    out.write("awg", "ambiguous_h", &encode_header(&p));
}

/// The messages of one pair: (endpoint of x, endpoint of y, index of the pair's block).
fn flow(cookie: CookieMode, open: bool, ex: u8, ey: u8, base: u8) -> Vec<(Option<u8>, Op)> {
    let at = |i: u8| base + i;
    let answer = cookie != CookieMode::Never;
    let mut ops = Vec::new();
    let send = |ops: &mut Vec<_>, ep: u8, idx: u8, dt: Option<u8>| {
        ops.push((dt, Op::Pool { ep, idx }));
        if answer {
            ops.push((Some(5), Op::CookieAnswer { ep }));
        }
    };
    if open {
        // Peer-like first: a first attempt, then the retry REKEY_TIMEOUT later.
        send(&mut ops, ex, at(X_A), Some(1));
        send(&mut ops, ey, at(Y_A), Some(1));
        send(&mut ops, ex, at(X_B), Some(128 + 21));
        send(&mut ops, ey, at(Y_B), Some(1));
    } else {
        send(&mut ops, ex, at(X_B), Some(1));
        send(&mut ops, ey, at(Y_B), Some(1));
    }
    ops.push((
        Some(1),
        Op::Pool {
            ep: ey,
            idx: at(RESP),
        },
    ));
    ops.push((
        Some(1),
        Op::Pool {
            ep: ex,
            idx: at(KEEPALIVE),
        },
    ));
    for (k, i) in DATA.enumerate() {
        let ep = if k % 2 == 0 { ex } else { ey };
        ops.push((None, Op::Pool { ep, idx: at(i) }));
    }
    ops
}

fn rekey(ex: u8, ey: u8, base: u8) -> Vec<(Option<u8>, Op)> {
    let mut ops = vec![(
        Some(226),
        Op::Pool {
            ep: ey,
            idx: base + REKEY,
        },
    )];
    ops.push((
        Some(1),
        Op::Pool {
            ep: ex,
            idx: base + REKEY + 1,
        },
    ));
    ops.push((
        Some(1),
        Op::Pool {
            ep: ey,
            idx: base + REKEY + 2,
        },
    ));
    ops.push((
        None,
        Op::Pool {
            ep: ey,
            idx: base + REKEY + 3,
        },
    ));
    ops.push((
        None,
        Op::Pool {
            ep: ex,
            idx: base + REKEY + 4,
        },
    ));
    ops
}

fn route_seeds(out: &mut Out) {
    let topologies = [
        ("allow", Topology::AllowAll),
        ("open", Topology::Open),
        ("groups", Topology::Groups),
        ("allow3", Topology::AllowThree),
        ("proxy", Topology::Proxy),
        ("portpeer", Topology::PortPeer),
        ("mixed", Topology::Mixed),
        ("portpeer_fixed", Topology::PortPeerFixed),
    ];
    let cookies = [
        ("never", CookieMode::Never),
        ("underload", CookieMode::UnderLoad),
        ("always", CookieMode::Always),
    ];
    for (tname, topology) in topologies {
        for (cname, cookie) in cookies {
            for awg in [false, true] {
                let mode = Mode {
                    cookie,
                    topology,
                    rate: Some(1000),
                    awg,
                };
                let open = topology == Topology::Open;
                // Pair 1 on listener 1 (AmneziaWG when `awg`), pair 2 on listener 0.
                // A proxy server or fixed port peer (device 2) is where it is configured.
                let fixed = matches!(topology, Topology::Proxy | Topology::PortPeerFixed);
                let (ex, ey) = match (awg, fixed) {
                    (true, false) => (6, 7),
                    (true, true) => (6, 1),
                    (false, _) => (0, 1),
                };
                let mut ops = flow(cookie, open, ex, ey, 0);
                ops.extend(flow(cookie, open, 2, 3, PAIR_LAYOUT));
                ops.push((Some(128 + 8), Op::Expire));
                ops.push((Some(1), Op::Restart));
                for (k, i) in DATA.enumerate() {
                    let ep = if k % 2 == 0 { 2 } else { 3 };
                    ops.push((
                        None,
                        Op::Pool {
                            ep,
                            idx: PAIR_LAYOUT + i,
                        },
                    ));
                }
                ops.extend(rekey(ex, ey, 0));
                ops.push((Some(255), Op::Expire));
                let name = format!("{tname}_{cname}{}", if awg { "_awg" } else { "" });
                out.write("route", &name, &encode(mode, &ops));
            }
        }
    }
    // Strangers and natural senders: every pool message from where its device sits.
    let mode = Mode {
        cookie: CookieMode::Never,
        topology: Topology::AllowAll,
        rate: Some(1),
        awg: false,
    };
    let ops: Vec<_> = (0..2 * PAIR_LAYOUT)
        .map(|idx| (Some(20), Op::Natural { idx }))
        .chain([
            (
                Some(1),
                Op::Raw {
                    ep: 4,
                    bytes: vec![1, 0, 0, 0],
                },
            ),
            (Some(1), Op::Echo { ep: 1 }),
            (
                Some(1),
                Op::Corrupt {
                    ep: 5,
                    idx: RESP,
                    at: 9,
                    xor: 0x80,
                },
            ),
        ])
        .collect();
    out.write("route", "natural_rate1", &encode(mode, &ops));
}

fn state_file_seeds(out: &mut Out, devices: &[Device]) {
    for open in [false, true] {
        let settings = Settings {
            allow: if open {
                Vec::new()
            } else {
                devices.iter().map(|d| d.public).collect()
            },
            cookie: CookieMode::Never,
            ..Settings::default()
        };
        let mut now = Instant::now();
        let mut state = State::new(&settings, Box::new(TestEntropy(42)), now);
        let mut actions = Actions::new();
        let eps = endpoints();
        // Pair 1-2 on listener 0, pair 3-4 on listener 1.
        for (x, y, ex, ey) in [(0usize, 1usize, 0usize, 1usize), (2, 3, 6, 7)] {
            let (dx, dy) = (&devices[x], &devices[y]);
            let (mut tx, mut ty) = (tunn(dx, dy, 10 + x as u32), tunn(dy, dx, 20 + y as u32));
            let mut route = |state: &mut State, now: Instant, e: usize, mut p: Vec<u8>| {
                state.route(now, eps[e], &mut p, &mut actions);
                actions.extra.first().map(|x| x.contents().to_vec())
            };
            if open {
                // Peer-like first: one initiation each, then the retries.
                route(&mut state, now, ex, initiation(&mut tx));
                route(&mut state, now, ey, initiation(&mut ty));
                now += Duration::from_secs(6);
            }
            let ix = initiation(&mut tx);
            route(&mut state, now, ex, ix.clone());
            let handed = route(&mut state, now, ey, initiation(&mut ty)).unwrap_or(ix);
            let resp = feed(&mut ty, &handed);
            let mut p = resp.clone();
            let d = state.route(now, eps[ey], &mut p, &mut actions);
            assert_eq!(d, Decision::Forward, "{}", state.counters());
            let ka = feed(&mut tx, &resp);
            let mut p = ka;
            state.route(now, eps[ex], &mut p, &mut actions);
            let mut p = data(&mut tx, 100);
            state.route(now, eps[ex], &mut p, &mut actions);
        }
        let text = state.save(now, wall(), listeners());
        assert!(
            text.lines().any(|l| l.starts_with("s ")),
            "no session saved:\n{text}"
        );
        let name = if open { "open" } else { "keyed" };
        out.write("state_file", name, text.as_bytes());
    }
    out.write("state_file", "empty", b"");
    out.write(
        "state_file",
        "bad_lines",
        b"wgrelay-state 1 1700000000000\ns 1 2 3\np 127.0.0.1:51820|127.0.0.1:1001 999999999\nb - - -\nx\n",
    );
    out.write(
        "state_file",
        "old_version",
        b"wgrelay-state 0 1700000000000\n",
    );
}

fn config_seeds(out: &mut Out, devices: &[Device]) {
    let k: Vec<String> = devices.iter().map(|d| d.public.to_string()).collect();
    let shipped = fs::read_to_string(out.root.join("../packaging/wgrelay.toml")).unwrap();
    out.write("config", "packaging", shipped.as_bytes());
    let full = format!(
        r#"listen = ["[::]:51820", "127.0.0.1:51830"]
allow = ["{0}", "{1}"]
groups = [["{2}", "{3}"]]
cookie = "always"
broadcast_rate = 0
threads = 2
backend = "mmsg"
gso = "off"
gro = "on"
steering = "off"
state_file = "/var/lib/wgrelay/state"
log_level = "debug"
stats_interval = 5
log_format = "json"
metrics = "127.0.0.1:9586"
control_socket = "/run/wgrelay/control.sock"

[[server]]
address = "vpn-a.example.net:51820"
public_key = "{0}"

[[peer]]
port = 10001
public_key = "{1}"
endpoint = "198.51.100.7:51820"
awg = {{ jc = 4, jmin = 40, jmax = 70, s1 = 15, s2 = 68, h1 = 1020325451, h2 = 3288052141, h3 = 1766607858, h4 = 2528465083 }}

[[peer]]
listen = "127.0.0.1:10002"
public_key = "{2}"
uapi = "wg0"

[awg]
jc = 3
jmin = 40
jmax = 70
s1 = 15
s2 = 68
s3 = 9
s4 = 5
h1 = "100000-100800"
h2 = "200000-200800"
h3 = 300000
h4 = "400000-400999"
"#,
        k[0], k[1], k[2], k[3]
    );
    out.write("config", "full", full.as_bytes());
    out.write("config", "wpex", b"bind = \"0.0.0.0\"\nport = 40000\n");
    out.write(
        "config",
        "env",
        format!(
            "cookie = \"never\"\nWGRELAY_LISTEN=127.0.0.1:5000,[::1]:5000\nWGRELAY_ALLOW={0},{1}\n\
             WGRELAY_GROUP={0},{1};{2},{3}\nWGRELAY_AWG=jc=4,s1=20,h1=100000-100099\n\
             WGRELAY_THREADS=2\nWGRELAY_STATS_INTERVAL=30\nWGRELAY_DEBUG=1\n\
             WGRELAY_LOG_FORMAT=json\nWGRELAY_METRICS=[::1]:0\nWGRELAY_CONTROL_SOCKET=/tmp/wgrelay-fuzz.sock\n",
            k[0], k[1], k[2], k[3]
        )
        .as_bytes(),
    );
    out.write(
        "config",
        "wgproxy_env",
        format!(
            "WGPROXY_SERVER=vpn.example.net:51820\nWGPROXY_PUBKEY={0}\nWGPROXY_LISTEN=[::]:51820\n\
             WGPROXY_TIMEOUT=60\nWGPROXY_LOGLEVEL=2\nWGRELAY_PEER=10001={1}@192.0.2.7:51820\n",
            k[0], k[1]
        )
        .as_bytes(),
    );
    let _ = awg_framing();
}
