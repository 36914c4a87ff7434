//! Index table: each WireGuard index maps to the endpoint that owns it (wireguard-go's
//! `indextable.go`, without the lock: one routing core owns it).

use super::{Endpoint, Tick};
use crate::admit::KeyId;
use crate::wire::Index;
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct IndexEntry {
    /// Who owns this index: packets whose receiver is this index go there.
    pub endpoint: Endpoint,
    /// Where packets to this index come from: the other side's endpoint, once paired. Kept
    /// here (a copy of the other entry's `endpoint`) so a transport packet costs one lookup.
    pub source: Endpoint,
    /// The other side's index, once a response paired them.
    pub peer: Option<Index>,
    /// The key the owner holds, when known (for an initiator, learned from the response's
    /// mac1; for a responder, the key the initiation named).
    pub owner_key: Option<KeyId>,
    /// The key of the other side: for an initiator, the key its initiation named.
    pub peer_key: Option<KeyId>,
    /// When this entry is dead: REKEY_TIMEOUT after an unanswered initiation or an unconfirmed
    /// response, REJECT_AFTER_TIME after the session was confirmed.
    pub expires: Tick,
    /// Highest counter of transport packets to this index, i.e. sent by the other side
    /// (roaming checks against it).
    pub max_counter: Option<u64>,
    /// This index belongs to the responder of its session.
    pub responder: bool,
    /// The initiator's first transport message arrived, so both sides accepted the handshake.
    pub confirmed: bool,
}

impl IndexEntry {
    pub fn is_live(&self, now: Tick) -> bool {
        now < self.expires
    }
}

/// Indices are chosen by peers, so by anyone: the map's hasher is seeded per process.
type Map = HashMap<Index, IndexEntry, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub struct IndexTable {
    entries: Map,
    /// Indices whose entries may have changed since `take_changed`, when tracking is on (the
    /// shards keep copies of paired sessions and must hear of every change).
    changed: Option<Vec<Index>>,
}

impl IndexTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The live entry for an index.
    #[inline]
    pub fn lookup(&self, index: Index, now: Tick) -> Option<&IndexEntry> {
        self.entries.get(&index).filter(|e| e.is_live(now))
    }

    /// The live entry for an index, to change it (recorded as changed when tracking is on).
    #[inline]
    pub fn lookup_mut(&mut self, index: Index, now: Tick) -> Option<&mut IndexEntry> {
        let entry = self.entries.get_mut(&index).filter(|e| e.is_live(now))?;
        if let Some(changed) = &mut self.changed {
            changed.push(index);
        }
        Some(entry)
    }

    /// Starts recording which indices change (every `insert`, `remove` and `lookup_mut`).
    /// Whoever turns it on must drain it with `take_changed`.
    pub fn track_changes(&mut self) {
        self.changed.get_or_insert_with(Vec::new);
    }

    /// Moves the indices changed since the last call into `out` (sorted, no duplicates).
    pub fn take_changed(&mut self, out: &mut Vec<Index>) {
        if let Some(changed) = &mut self.changed {
            out.append(changed);
            out.sort_unstable();
            out.dedup();
        }
    }

    /// Whether the index is taken by a live entry.
    pub fn contains(&self, index: Index, now: Tick) -> bool {
        self.lookup(index, now).is_some()
    }

    /// Inserts or replaces (an expired entry may be replaced).
    pub fn insert(&mut self, index: Index, entry: IndexEntry) {
        if let Some(changed) = &mut self.changed {
            changed.push(index);
        }
        self.entries.insert(index, entry);
    }

    pub fn remove(&mut self, index: Index) -> Option<IndexEntry> {
        if let Some(changed) = &mut self.changed {
            changed.push(index);
        }
        self.entries.remove(&index)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes dead entries. Returns how many went.
    pub fn expired_entries(&mut self, now: Tick) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.is_live(now));
        before - self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Index, &IndexEntry)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two entries per session: keep them small (see docs/benchmarks.md, memory per session).
    #[test]
    fn entries_stay_small() {
        assert!(
            std::mem::size_of::<IndexEntry>() <= 88,
            "{}",
            std::mem::size_of::<IndexEntry>()
        );
        assert!(
            std::mem::size_of::<crate::table::EndpointInfo>() <= 96,
            "{}",
            std::mem::size_of::<crate::table::EndpointInfo>()
        );
    }
}
