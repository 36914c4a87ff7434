//! What changed between two configurations, for reload: each setting that differs, and
//! whether the running relay can take it live or only at a restart.

use super::*;

/// One setting that differs between two configurations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The setting, named as its [`Config`] field (`allow`, `servers`, `threads`, ...).
    pub setting: &'static str,
    /// What changed: `+2 -1 keys`, `under-load → always`.
    pub detail: String,
    /// True when a running relay can apply it; false when it takes effect at a restart.
    pub live: bool,
}

/// The settings that differ between two configurations, in [`Config`] field order
/// ([`Config::diff`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub changes: Vec<Change>,
}

impl Diff {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether `setting` (a [`Config`] field name) changed.
    pub fn changed(&self, setting: &str) -> bool {
        self.changes.iter().any(|c| c.setting == setting)
    }

    /// The changes that take effect only at a restart.
    pub fn restart_only(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| !c.live)
    }
}

impl fmt::Display for Diff {
    /// `allow: +2 -1 keys; cookie: under-load → always; threads: 2 → 4 (needs a restart)`, or
    /// `no changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        for (i, c) in self.changes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            let restart = if c.live { "" } else { " (needs a restart)" };
            write!(f, "{sep}{}: {}{restart}", c.setting, c.detail)?;
        }
        Ok(())
    }
}

impl Config {
    /// Whether `new` has the listeners `self` runs: the same listen addresses and the same
    /// port peers' ports and framings, in order (listener ids follow it). Only then can a
    /// reload apply port peers' keys and endpoints.
    pub fn same_sockets(&self, new: &Config) -> bool {
        let ports = |c: &Config| {
            c.peers
                .iter()
                .map(|p| (p.listen, p.awg))
                .collect::<Vec<_>>()
        };
        self.listen == new.listen && ports(self) == ports(new)
    }

    /// The settings in which `new` differs from `self` (the running configuration). Lists
    /// are compared as sets: reordering them is no change.
    pub fn diff(&self, new: &Config) -> Diff {
        let mut changes = Vec::new();
        let mut push = |setting, live, detail: Option<String>| {
            if let Some(detail) = detail {
                changes.push(Change {
                    setting,
                    detail,
                    live,
                });
            }
        };
        // live: what `Relay::reload` applies; listeners and framings restart the shards on
        // the new sockets (the kept ones keep theirs)
        push("listen", true, listed(&self.listen, &new.listen));
        push("allow", true, key_counts(&self.allow, &new.allow));
        push("groups", true, counted(&self.groups, &new.groups, "group"));
        push(
            "servers",
            true,
            counted(&self.servers, &new.servers, "server"),
        );
        push("peers", true, counted(&self.peers, &new.peers, "peer"));
        push(
            "awg",
            true,
            moved(&awg_text(&self.awg), &awg_text(&new.awg)),
        );
        // (setting, live, its value as shown)
        type Shown = fn(&Config) -> String;
        #[rustfmt::skip]
        let single: [(&'static str, bool, Shown); 13] = [
            ("cookie", true, |c| c.cookie.to_string()),
            ("broadcast_rate", true, |c| c.broadcast_rate.map_or("unlimited".into(), |r| r.to_string())),
            ("log_level", true, |c| c.log_level.as_str().to_ascii_lowercase()),
            ("log_format", false, |c| c.log_format.to_string()),
            ("stats_interval", true, |c| c.stats_interval.map_or("off".into(), |d| format!("{}s", d.as_secs()))),
            // restart-only: they shape the threads and sockets the relay was started with
            ("threads", false, |c| c.threads.to_string()),
            ("backend", false, |c| c.backend.to_string()),
            ("gso", false, |c| on_off(c.gso).into()),
            ("gro", false, |c| on_off(c.gro).into()),
            ("steering", false, |c| on_off(c.steering).into()),
            ("state_file", false, |c| path_or(&c.state_file, "none")),
            ("control_socket", false, |c| path_or(&c.control_socket, "off")),
            ("metrics", false, |c| c.metrics.map_or("off".into(), |a| a.to_string())),
        ];
        for (setting, live, shown) in single {
            push(setting, live, moved(&shown(self), &shown(new)));
        }
        Diff { changes }
    }
}

/// `old → new`, if they differ.
fn moved<T: PartialEq + fmt::Display + ?Sized>(old: &T, new: &T) -> Option<String> {
    (old != new).then(|| format!("{old} → {new}"))
}

/// The items only in `new` and those only in `old`.
fn added_removed<'a, T: PartialEq>(old: &'a [T], new: &'a [T]) -> (Vec<&'a T>, Vec<&'a T>) {
    // (quadratic: for the short lists; the allow-list goes through key_counts)
    let added = new.iter().filter(|x| !old.contains(x)).collect();
    let removed = old.iter().filter(|x| !new.contains(x)).collect();
    (added, removed)
}

/// `+2 -1 keys`, if the sets differ.
fn counted<T: PartialEq>(old: &[T], new: &[T], what: &str) -> Option<String> {
    let (added, removed) = added_removed(old, new);
    counts(added.len(), removed.len(), what)
}

/// [`counted`] for an allow-list, which may hold many thousands of keys.
fn key_counts(old: &[PublicKey], new: &[PublicKey]) -> Option<String> {
    let (old, new): (HashSet<_>, HashSet<_>) = (old.iter().collect(), new.iter().collect());
    counts(
        new.difference(&old).count(),
        old.difference(&new).count(),
        "key",
    )
}

fn counts(added: usize, removed: usize, what: &str) -> Option<String> {
    if added == 0 && removed == 0 {
        return None;
    }
    let s = if added + removed == 1 { "" } else { "s" };
    Some(format!("+{added} -{removed} {what}{s}"))
}

/// `+127.0.0.1:5 -[::]:51820`, if the sets differ.
fn listed<T: PartialEq + fmt::Display>(old: &[T], new: &[T]) -> Option<String> {
    let (added, removed) = added_removed(old, new);
    let items: Vec<String> = (added.iter().map(|a| format!("+{a}")))
        .chain(removed.iter().map(|r| format!("-{r}")))
        .collect();
    (!items.is_empty()).then(|| items.join(" "))
}
