//! What `wgrelay show` prints: a snapshot of a running relay, gathered from every shard
//! without stopping the datapath ([`Mesh::inspect`]) and from the shared routing state (one
//! short lock). Serializable: the control socket sends it as JSON, `--json` prints it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::admit::KeyId;
use crate::relay::{collect_stats, BackendKind};
use crate::route::{DropReason, KeyTraffic, Session, State, Traffic};
use crate::shard::{lock, FastCounters, IoCounters, Mesh, ShardReport};
use crate::table::Tick;
use crate::wire::Index;

/// How long a snapshot waits for the shards' answers (each answers within one poll
/// interval, 100 ms, even when idle).
pub const SHARD_TIMEOUT: Duration = Duration::from_secs(1);

/// A listener and what it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerView {
    pub address: String,
    /// `exchange`, `exchange+proxy`, or `port-peer`.
    pub mode: String,
    /// The responder key of a `port-peer` listener (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `wireguard` or `amneziawg`.
    pub framing: String,
}

/// Packets and bytes one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficView {
    pub packets: u64,
    pub bytes: u64,
}

impl From<Traffic> for TrafficView {
    fn from(t: Traffic) -> Self {
        TrafficView {
            packets: t.packets,
            bytes: t.bytes,
        }
    }
}

/// One public key the relay knows (allow-list, groups, servers, port peers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyView {
    pub public_key: String,
    /// The endpoint the key is confirmed at (a handshake both sides accepted).
    pub endpoint: Option<String>,
    /// Seconds since a response last paired a handshake of this key.
    pub latest_handshake_secs: Option<f64>,
    /// Relayed to the key's holder, and from it.
    pub received: TrafficView,
    pub sent: TrafficView,
    pub roams: u64,
}

/// One session: an initiator's index and a responder's, and the traffic each way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub initiator_index: u32,
    pub responder_index: u32,
    pub initiator: String,
    pub responder: String,
    pub initiator_key: Option<String>,
    pub responder_key: Option<String>,
    /// The initiator's first transport message arrived.
    pub confirmed: bool,
    pub age_secs: f64,
    pub to_responder: TrafficView,
    pub to_initiator: TrafficView,
}

/// One shard's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardView {
    pub id: usize,
    /// Packets it routed on its fast path, and forwarded from there (the shared state's
    /// share is in the totals).
    pub received: u64,
    pub forwarded: u64,
    pub sessions: usize,
    /// Its thread's CPU time (user and system) as a share of its life, in percent; `None`
    /// when it did not answer in time.
    pub busy_percent: Option<f64>,
}

/// Everything `wgrelay show` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub backend: String,
    pub uptime_secs: f64,
    pub listeners: Vec<ListenerView>,
    pub keys: Vec<KeyView>,
    pub sessions: Vec<SessionView>,
    /// Receiver indices in the shards' session tables: one per direction of a session, so
    /// about twice the sessions (more than `sessions` lists when a shard holds more than it
    /// reports, or did not answer).
    pub session_count: usize,
    pub parked: usize,
    pub candidates: usize,
    pub endpoints: usize,
    pub indices: usize,
    /// Routing totals (received, forwarded, handshakes, ...), by name.
    pub totals: BTreeMap<String, u64>,
    /// Every drop reason, zeros included, by its metrics label.
    pub drops: BTreeMap<String, u64>,
    /// The I/O layer's counters (send failures, kernel drops, hand-offs, ...).
    pub io: BTreeMap<String, u64>,
    pub shards: Vec<ShardView>,
}

/// A running relay, as the control socket sees it: cheap to clone, usable while the relay
/// runs (after it stopped, the shards no longer answer and a snapshot lists no sessions).
#[derive(Clone)]
pub struct Inspector {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) io: Arc<IoCounters>,
    pub(crate) fast: Vec<Arc<FastCounters>>,
    pub(crate) mesh: Arc<Mesh>,
    pub(crate) listeners: Arc<std::sync::Mutex<Vec<ListenerView>>>,
    pub(crate) backend: BackendKind,
    pub(crate) started: Instant,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

fn since(now: Tick, then: Tick) -> f64 {
    secs(now.duration_since(then))
}

impl Inspector {
    /// Gathers a snapshot: the shards first (no lock held while waiting), then the shared
    /// state, locked once.
    pub fn snapshot(&self) -> Snapshot {
        let reports = self.mesh.inspect(SHARD_TIMEOUT);
        let stats = collect_stats(&self.state, &self.io, &self.fast);
        let state = lock(&self.state);
        let now = state.tick(Instant::now());
        let public = |k: Option<KeyId>| {
            k.and_then(|k| state.keys().get(k))
                .map(|i| i.public.to_base64())
        };

        let mut key_traffic: HashMap<KeyId, KeyTraffic> = HashMap::new();
        for r in &reports {
            for (k, t) in &r.keys {
                let e = key_traffic.entry(*k).or_default();
                e.rx.merge(t.rx);
                e.tx.merge(t.tx);
            }
        }
        let keys = (0..state.keys().len())
            .filter_map(|i| {
                let id = KeyId::new(u32::try_from(i).ok()?);
                let info = state.keys().get(id)?;
                let activity = state.key_activity(id);
                let traffic = key_traffic.get(&id).copied().unwrap_or_default();
                Some(KeyView {
                    public_key: info.public.to_base64(),
                    endpoint: state
                        .endpoints()
                        .holder_of(id, now)
                        .map(|e| e.addr().to_string()),
                    latest_handshake_secs: (activity.last_handshake != Tick(0))
                        .then(|| since(now, activity.last_handshake)),
                    received: traffic.rx.into(),
                    sent: traffic.tx.into(),
                    roams: activity.roams,
                })
            })
            .collect();

        // Each session is two indices, possibly owned by two shards: pair them through the
        // shared state's entries (which side is the responder, the other index).
        let owned: HashMap<Index, &Session> = reports
            .iter()
            .flat_map(|r| r.sessions.iter().map(|(i, s)| (*i, s)))
            .collect();
        let mut sessions: BTreeMap<(u32, u32), SessionView> = BTreeMap::new();
        for (&index, s) in &owned {
            let Some(entry) = state.indices().lookup(index, now) else {
                continue;
            };
            let Some(peer) = entry.peer else { continue };
            let (initiator, responder) = if entry.responder {
                (peer, index)
            } else {
                (index, peer)
            };
            let view = sessions
                .entry((initiator.0, responder.0))
                .or_insert_with(|| {
                    // packets to an index go to its owner (`destination`) from the other side
                    let (init_ep, resp_ep, init_key, resp_key) = if entry.responder {
                        (s.source, s.destination, s.peer_key, s.owner_key)
                    } else {
                        (s.destination, s.source, s.owner_key, s.peer_key)
                    };
                    SessionView {
                        initiator_index: initiator.0,
                        responder_index: responder.0,
                        initiator: init_ep.addr().to_string(),
                        responder: resp_ep.addr().to_string(),
                        initiator_key: public(init_key),
                        responder_key: public(resp_key),
                        confirmed: entry.confirmed,
                        age_secs: since(now, s.since),
                        to_responder: TrafficView::default(),
                        to_initiator: TrafficView::default(),
                    }
                });
            view.age_secs = view.age_secs.max(since(now, s.since));
            if entry.responder {
                view.to_responder = s.traffic.into();
            } else {
                view.to_initiator = s.traffic.into();
            }
        }

        let mut totals = BTreeMap::new();
        let r = &stats.route;
        for (name, v) in [
            ("received", r.received),
            ("forwarded", r.forwarded),
            ("fanout_copies", r.fanout_copies),
            ("handovers", r.handovers),
            ("cookie_replies", r.cookie_replies),
            ("parked", r.parked),
            ("handshakes_paired", r.handshakes_paired),
            ("sessions_confirmed", r.sessions_confirmed),
            ("roams", r.roams),
            ("unproven_copies", r.unproven_copies),
            ("bytes_from_unproven", r.bytes_from_unproven),
            ("bytes_to_unproven", r.bytes_to_unproven),
            ("fast_forwarded", stats.fast_forwarded),
        ] {
            totals.insert(name.to_string(), v);
        }
        let drops = DropReason::ALL
            .iter()
            .map(|d| (d.label().to_string(), r.dropped(*d)))
            .collect();
        let io = [
            ("send_failed", stats.send_failed),
            ("recv_errors", stats.recv_errors),
            ("kernel_drops", stats.kernel_drops),
            ("enobufs", stats.enobufs),
            ("off_owner", stats.off_owner),
            ("handoffs", stats.handoffs),
            ("handoff_drops", stats.handoff_drops),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let by_id: HashMap<usize, &ShardReport> = reports.iter().map(|r| (r.id, r)).collect();
        let shards = self
            .fast
            .iter()
            .enumerate()
            .map(|(id, fast)| {
                let c = fast.snapshot();
                let report = by_id.get(&id);
                ShardView {
                    id,
                    received: c.received,
                    forwarded: c.forwarded,
                    sessions: report.map_or(0, |r| r.session_count),
                    busy_percent: report.map(|r| {
                        let up = r.uptime.as_secs_f64();
                        if up > 0.0 {
                            (r.busy.as_secs_f64() / up * 1000.0).round() / 10.0
                        } else {
                            0.0
                        }
                    }),
                }
            })
            .collect();
        Snapshot {
            backend: self.backend.as_str().to_string(),
            uptime_secs: secs(self.started.elapsed()),
            listeners: self
                .listeners
                .lock()
                .map_or_else(|p| p.into_inner().clone(), |l| l.clone()),
            keys,
            sessions: sessions.into_values().collect(),
            session_count: reports.iter().map(|r| r.session_count).sum(),
            parked: state.parked_len(),
            candidates: state.endpoints().candidate_entries(),
            endpoints: state.endpoints().len(),
            indices: state.indices().len(),
            totals,
            drops,
            io,
            shards,
        }
    }
}
