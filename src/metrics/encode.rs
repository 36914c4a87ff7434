//! The relay's counters in the Prometheus text format (0.0.4), through the Prometheus
//! project's own Rust client (`prometheus-client`): one scrape is one [`Scrape`], a snapshot
//! encoded by a collector, so every value of a page was read at the same moment.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::metrics::histogram::HistogramSnapshot;
use crate::relay::{Stats, TableSizes};
use crate::route::{Counters, DropReason};

/// `Content-Type` of what [`Scrape::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Drop labels of the I/O layer, beside [`DropReason`]'s own.
pub const IO_DROP_LABELS: [&str; 3] = ["kernel_queue_full", "send_failed", "handoff_queue_full"];

/// Everything one page shows.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub stats: Stats,
    /// Each shard's fast-path counters.
    pub shards: Vec<Counters>,
    pub tables: TableSizes,
    pub handshake_latency: HistogramSnapshot,
    /// The I/O backend the shards run on (`uring`, `mmsg`).
    pub backend: &'static str,
}

impl Scrape {
    /// The page, in the Prometheus text format.
    pub fn encode(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing to a String cannot fail, and every name and label here is our own.
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
            log::warn!("metrics: encoding failed; serving a partial page");
        }
        out
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: usize) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// A counter family with one label: `values` are (label value, count).
fn counters<'a>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, n) in values {
        m.encode_family(&[(label, value)])?
            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let r = &s.route;
        let version = env!("CARGO_PKG_VERSION");
        e.encode_descriptor(
            "wgrelay_build",
            "wgrelay's version and the I/O backend it runs on.",
            None,
            MetricType::Info,
        )?
        .encode_info(&[("version", version), ("backend", self.backend)])?;
        gauge(
            &mut e,
            "wgrelay_shards",
            "Datapath shards (threads).",
            self.shards.len(),
        )?;

        counter(
            &mut e,
            "wgrelay_packets_received",
            "Datagrams the routing core received, every message type, dropped ones included.",
            r.received,
        )?;
        counter(
            &mut e,
            "wgrelay_packets_forwarded",
            "Datagrams sent on, one per destination: fan-out copies, hand-overs and the relay's own cookie replies included.",
            r.forwarded,
        )?;
        let route_drops = DropReason::ALL.iter().map(|d| (d.label(), r.dropped(*d)));
        let io_drops =
            IO_DROP_LABELS
                .into_iter()
                .zip([s.kernel_drops, s.send_failed, s.handoff_drops]);
        counters(
            &mut e,
            "wgrelay_dropped_packets",
            "Datagrams dropped, by reason. The routing core's reasons are counted in packets_received too; kernel_queue_full never reached the relay (SO_RXQ_OVFL), send_failed was forwarded but the send failed, handoff_queue_full was not handed to its owner shard.",
            "reason",
            route_drops.chain(io_drops),
        )?;
        counters(
            &mut e,
            "wgrelay_handshakes",
            "Handshake steps the relay passed on: paired (a response matched to its initiation was forwarded), confirmed (the initiator's first transport packet followed), challenged (an initiation was answered with the relay's cookie reply).",
            "result",
            [
                ("paired", r.handshakes_paired),
                ("confirmed", r.sessions_confirmed),
                ("challenged", r.cookie_replies),
            ],
        )?;
        counters(
            &mut e,
            "wgrelay_initiation_copies",
            "Copies of initiations whose responder was not known for sure: fanout (sent to candidates by a sweep), handover (a parked initiation given to a candidate that showed up later).",
            "path",
            [("fanout", r.fanout_copies), ("handover", r.handovers)],
        )?;
        counter(
            &mut e,
            "wgrelay_unproven_initiation_copies",
            "Copies of initiations from sources that had not proven their address, each within the named key's budget.",
            r.unproven_copies,
        )?;
        counter(
            &mut e,
            "wgrelay_initiations_parked",
            "Initiations parked until a candidate for their responder shows up.",
            r.parked,
        )?;
        counter(
            &mut e,
            "wgrelay_roams",
            "Sessions moved to a new source address by a transport packet whose counter continued the session.",
            r.roams,
        )?;
        counters(
            &mut e,
            "wgrelay_unproven_handshake_bytes",
            "Handshake bytes received from (received) and sent to (sent) endpoints that had not proven their address, as framed on the wire; sent never exceeds received per endpoint.",
            "direction",
            [
                ("received", r.bytes_from_unproven),
                ("sent", r.bytes_to_unproven),
            ],
        )?;
        counter(
            &mut e,
            "wgrelay_receive_errors",
            "Errors receiving from a socket.",
            s.recv_errors,
        )?;
        counter(
            &mut e,
            "wgrelay_uring_buffer_exhaustions",
            "io_uring provided-buffer exhaustions (ENOBUFS), each re-armed.",
            s.enobufs,
        )?;
        counter(
            &mut e,
            "wgrelay_off_owner_packets",
            "Packets that arrived at a shard other than the owner of their receiver index (not placed by kernel steering).",
            s.off_owner,
        )?;
        counter(
            &mut e,
            "wgrelay_handoffs",
            "Transport packets handed to their owner shard.",
            s.handoffs,
        )?;

        let mut m = e.encode_descriptor(
            "wgrelay_shard_fast_path_packets_received",
            "Datagrams a shard handled without the shared state: transport routed from its own session table, and what it dropped before routing (malformed, AmneziaWG junk). Handshakes and roams are in the totals only.",
            None,
            MetricType::Counter,
        )?;
        for (n, c) in self.shards.iter().enumerate() {
            let shard = n.to_string();
            m.encode_family(&[("shard", shard.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&c.received, None)?;
        }
        let mut m = e.encode_descriptor(
            "wgrelay_shard_fast_path_packets_forwarded",
            "Transport packets a shard forwarded from its own session table.",
            None,
            MetricType::Counter,
        )?;
        for (n, c) in self.shards.iter().enumerate() {
            let shard = n.to_string();
            m.encode_family(&[("shard", shard.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&c.forwarded, None)?;
        }

        let t = &self.tables;
        let mut m = e.encode_descriptor(
            "wgrelay_sessions",
            "Live sessions (paired index pairs): confirmed, or confirming (answered, the initiator's first transport packet not seen yet).",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in [
            ("confirmed", t.sessions_confirmed),
            ("confirming", t.sessions_confirming),
        ] {
            m.encode_family(&[("state", state)])?.encode_gauge(&n)?;
        }
        gauge(
            &mut e,
            "wgrelay_indices",
            "Entries in the index table (pending initiations and both sides of every session).",
            t.indices,
        )?;
        gauge(
            &mut e,
            "wgrelay_endpoints",
            "Endpoints (source address and listener) the relay keeps state for.",
            t.endpoints,
        )?;
        gauge(
            &mut e,
            "wgrelay_key_bindings",
            "Public keys bound to the endpoint a handshake confirmed holds them.",
            t.bindings,
        )?;
        gauge(
            &mut e,
            "wgrelay_parked_initiations",
            "Initiations parked now, waiting for a candidate.",
            t.parked,
        )?;
        gauge(
            &mut e,
            "wgrelay_candidates",
            "Entries on the fan-out candidate lists (an endpoint is on one list per key group).",
            t.candidates,
        )?;

        let h = &self.handshake_latency;
        e.encode_descriptor(
            "wgrelay_handshake_duration_seconds",
            "Handshake latency at the relay: from admitting an initiation (forwarded, or parked for its responder) to forwarding the response that answers it.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &h.buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::histogram::Histogram;

    fn scrape() -> Scrape {
        let mut stats = Stats::default();
        stats.route.received = 12;
        stats.route.forwarded = 9;
        stats.route.drops[DropReason::BadMac1 as usize] = 2;
        stats.kernel_drops = 5;
        let h = Histogram::handshake();
        h.observe(std::time::Duration::from_millis(3));
        Scrape {
            stats,
            shards: vec![Counters::default(), Counters::default()],
            tables: TableSizes {
                sessions_confirmed: 4,
                ..TableSizes::default()
            },
            handshake_latency: h.snapshot(),
            backend: "mmsg",
        }
    }

    #[test]
    fn the_page_has_the_ecosystems_names_help_and_types() {
        let page = scrape().encode();
        for line in [
            "# HELP wgrelay_packets_forwarded_total Datagrams sent on",
            "# TYPE wgrelay_packets_forwarded_total counter",
            "wgrelay_packets_received_total 12",
            "wgrelay_packets_forwarded_total 9",
            "wgrelay_dropped_packets_total{reason=\"bad_mac1\"} 2",
            "wgrelay_dropped_packets_total{reason=\"kernel_queue_full\"} 5",
            "wgrelay_dropped_packets_total{reason=\"too_short\"} 0",
            "wgrelay_sessions{state=\"confirmed\"} 4",
            "# TYPE wgrelay_sessions gauge",
            "wgrelay_shard_fast_path_packets_received_total{shard=\"1\"} 0",
            "# TYPE wgrelay_handshake_duration_seconds histogram",
            "wgrelay_handshake_duration_seconds_bucket{le=\"0.0025\"} 0",
            "wgrelay_handshake_duration_seconds_bucket{le=\"0.005\"} 1",
            "wgrelay_handshake_duration_seconds_bucket{le=\"+Inf\"} 1",
            "wgrelay_handshake_duration_seconds_count 1",
            "wgrelay_handshake_duration_seconds_sum 0.003",
            "wgrelay_shards 2",
        ] {
            assert!(
                page.lines().any(|l| l.starts_with(line)),
                "{line:?} missing from\n{page}"
            );
        }
        assert!(
            page.lines().any(|l| l.starts_with("wgrelay_build_info{")
                && l.contains("backend=\"mmsg\"")
                && l.ends_with(" 1")),
            "{page}"
        );
        // every family described once
        let helps = page.lines().filter(|l| l.starts_with("# HELP ")).count();
        let types = page.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(helps, types);
    }

    #[test]
    fn drop_labels_are_distinct() {
        let mut labels: Vec<&str> = DropReason::ALL.iter().map(|d| d.label()).collect();
        labels.extend(IO_DROP_LABELS);
        let n = labels.len();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), n);
    }
}
