//! Target `state_file`: `State::restore` on arbitrary text (the `--state-file` reader).
//!
//! The input is the file (invalid UTF-8 replaced, as a lossy read would). It is restored into a
//! keyed relay (the pool's four devices allowed) and into an open one, both with the listeners
//! of `common::listeners`, at `common::wall()`.
//!
//! Asserts: nothing panics; only whole pairs are restored (entries pointing at each other,
//! confirmed, live, on a known listener); the counts `Restored` reports add up to at most the
//! file's lines; what the restored relay saves, a fresh relay restores whole, to the same
//! sessions; and the restored relay routes the pool's transport messages without panicking.

use std::time::{Duration, Instant};

use wgrelay::admit::TestEntropy;
use wgrelay::config::CookieMode;
use wgrelay::route::{Actions, Settings, State};

use crate::common::{endpoints, listeners, pool, wall};

fn settings(open: bool) -> Settings {
    Settings {
        allow: if open {
            Vec::new()
        } else {
            pool().devices.clone()
        },
        cookie: CookieMode::UnderLoad,
        ..Settings::default()
    }
}

pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for open in [false, true] {
        check(&text, open);
    }
}

fn check(text: &str, open: bool) {
    let now = Instant::now();
    let settings = settings(open);
    let mut state = State::new(&settings, Box::new(TestEntropy(1)), now);
    let r = state.restore(text, now, wall(), listeners());
    let lines = text.lines().count();
    assert!(
        2 * r.sessions + r.proven + r.bindings + r.skipped <= lines,
        "{r:?} from {lines} lines"
    );
    let t = state.tick(now);
    assert_eq!(state.indices().len(), 2 * r.sessions);
    for (i, e) in state.indices().iter() {
        let peer = e.peer.expect("a restored entry has a peer");
        let other = state
            .indices()
            .lookup(peer, t)
            .expect("a restored entry's peer is restored");
        assert_eq!(other.peer, Some(*i), "restored entries point at each other");
        assert!(e.confirmed && e.is_live(t));
        assert!(usize::from(e.endpoint.listener.0) < listeners().len());
        assert!(usize::from(e.source.listener.0) < listeners().len());
    }

    // Save and restore again at once: the same sessions come back.
    let saved = state.save(now, wall(), listeners());
    let mut again = State::new(&settings, Box::new(TestEntropy(2)), now);
    let r2 = again.restore(&saved, now, wall(), listeners());
    assert_eq!(
        r2.skipped, 0,
        "its own file, restored, skips lines:\n{saved}"
    );
    let mut before: Vec<u32> = state.indices().iter().map(|(i, _)| i.0).collect();
    let mut after: Vec<u32> = again.indices().iter().map(|(i, _)| i.0).collect();
    before.sort_unstable();
    after.sort_unstable();
    assert_eq!(before, after, "a save and restore changed the sessions");

    // The restored relay routes real traffic (what a restored session carries).
    let later = now + Duration::from_secs(1);
    let mut out = Actions::new();
    let transport = pool().msgs.iter().filter(|m| m.bytes[0] == 4);
    for m in transport {
        let from = endpoints()[usize::from(m.from.saturating_sub(1)) % 4];
        let mut p = m.bytes.clone();
        let _ = state.route(later, from, &mut p, &mut out);
    }
}
