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
        let rate = match self.broadcast_rate {
            Some(pps) => format!("{pps} handshake initiation copies/s"),
            None => "unlimited".to_string(),
        };
        let stats = match self.stats_interval {
            Some(d) => format!("every {}s", d.as_secs()),
            None => "off".to_string(),
        };
        let servers = if self.servers.is_empty() {
            "none".to_string()
        } else {
            let parts: Vec<String> = self
                .servers
                .iter()
                .map(|s| format!("{} -> {}", abbrev(&s.key), s.addr))
                .collect();
            parts.join(", ")
        };
        let peers = if self.peers.is_empty() {
            "none".to_string()
        } else {
            let parts: Vec<String> = self
                .peers
                .iter()
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
            parts.join(", ")
        };
        let wgproxy = match self.wgproxy_timeout {
            Some(t) => format!(
                "\nwgproxy timeout: {}s (WGPROXY_TIMEOUT, superseded: sessions expire by WireGuard's own timers)",
                t.as_secs()
            ),
            None => String::new(),
        };
        format!(
            "listen: {}\nmode: {}\nservers: {}\npeers: {}\nawg: {}\ncookie replies: {}\nbroadcast rate: {}\nthreads: {}\nbackend: {}\noffload: gso {}, gro {}\nsteering: {}\nstate file: {}\ncontrol socket: {}\nmetrics: {}\nlog level: {}\nlog format: {}\nstats: {}{}",
            listen.join(", "),
            mode,
            servers,
            peers,
            awg_text(&self.awg),
            self.cookie,
            rate,
            self.threads,
            self.backend,
            on_off(self.gso),
            on_off(self.gro),
            on_off(self.steering),
            path_or(&self.state_file, "none"),
            path_or(&self.control_socket, "off"),
            self.metrics
                .map_or("off".into(), |a| format!("http://{a}/metrics")),
            self.log_level.as_str().to_ascii_lowercase(),
            self.log_format,
            stats,
            wgproxy,
        )
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
