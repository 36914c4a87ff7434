//! The printed summary of the effective configuration (check-config and start-up).

use super::*;

impl Config {
    /// Multi-line human description of the effective configuration (no
    /// trailing newline), printed by `check-config` and at startup.
    pub fn summary(&self) -> String {
        let listen: Vec<String> = self.listen.iter().map(|a| a.to_string()).collect();
        let mode = if self.is_open() {
            "open (any public key is relayed)".to_string()
        } else {
            let mut parts = Vec::new();
            if !self.allow.is_empty() {
                parts.push(format!("allow-list ({})", plural(self.allow.len(), "key")));
            }
            if !self.groups.is_empty() {
                let distinct: HashSet<&PublicKey> = self.groups.iter().flatten().collect();
                parts.push(format!(
                    "groups ({}, {})",
                    plural(self.groups.len(), "group"),
                    plural(distinct.len(), "distinct key")
                ));
            }
            parts.join(" + ")
        };
        let servers: Vec<String> = (self.servers.iter())
            .map(|s| format!("{} -> {}", abbrev(&s.key), s.addr))
            .collect();
        let peers: Vec<String> = (self.peers.iter())
            .map(|p| {
                let mut how = match (&p.endpoint, &p.uapi) {
                    (Some(e), _) => format!("endpoint {e}"),
                    (None, Some(dev)) => format!("uapi {dev}"),
                    (None, None) => "learned".to_string(),
                };
                if let Some(awg) = &p.awg {
                    how.push_str(&format!(", awg {}", awg_text(awg)));
                }
                format!("{} -> {} ({how})", p.listen, abbrev(&p.key))
            })
            .collect();
        let none = |v: Vec<String>| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        #[rustfmt::skip]
        let mut lines = vec![
            ("listen", listen.join(", ")),
            ("mode", mode),
            ("servers", none(servers)),
            ("peers", none(peers)),
            ("awg", awg_text(&self.awg)),
            ("cookie replies", self.cookie.to_string()),
            ("broadcast rate", self.broadcast_rate.map_or("unlimited".into(), |pps| format!("{pps} handshake initiation copies/s"))),
            ("threads", self.threads.to_string()),
            ("backend", self.backend.to_string()),
            ("offload", format!("gso {}, gro {}", on_off(self.gso), on_off(self.gro))),
            ("steering", on_off(self.steering).into()),
            ("state file", path_or(&self.state_file, "none")),
            ("control socket", path_or(&self.control_socket, "off")),
            ("metrics", self.metrics.map_or("off".into(), |a| format!("http://{a}/metrics"))),
            ("log level", self.log_level.as_str().to_ascii_lowercase()),
            ("log format", self.log_format.to_string()),
            ("stats", self.stats_interval.map_or("off".into(), |d| format!("every {}s", d.as_secs()))),
        ];
        if let Some(t) = self.wgproxy_timeout {
            let superseded =
                "(WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)";
            lines.push(("wgproxy timeout", format!("{}s {superseded}", t.as_secs())));
        }
        let lines: Vec<String> = lines.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        lines.join("\n")
    }
}

/// A key shortened for summaries: its first 8 base64 characters.
pub(super) fn abbrev(key: &PublicKey) -> String {
    let text = key.to_base64();
    format!("{}...", &text[..8])
}

/// AmneziaWG parameters for summaries: `plain`, or every parameter.
pub(super) fn awg_text(p: &AwgParams) -> String {
    if *p == AwgParams::plain() {
        return "plain".to_string();
    }
    format!(
        "jc={} jmin={} jmax={} s1={} s2={} s3={} s4={} h1={} h2={} h3={} h4={}",
        p.jc, p.jmin, p.jmax, p.s1, p.s2, p.s3, p.s4, p.h1, p.h2, p.h3, p.h4
    )
}
/// A path, or what its absence means.
pub(super) fn path_or(p: &Option<PathBuf>, none: &str) -> String {
    p.as_ref().map_or(none.into(), |p| p.display().to_string())
}

pub(super) fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

pub(super) fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
