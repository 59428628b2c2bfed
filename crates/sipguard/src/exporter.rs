//! The Prometheus recorder and its help texts.
//!
//! The binary installs the recorder process-wide (`main`), once; the relay registers its own
//! families (with their help texts) into whatever recorder it is given, so tests that start
//! sipguard in-process give each instance a recorder of its own. `/metrics` is served by sipguard's own listener ([`crate::http`]) from the handle,
//! so a port-0 bind works and a bind error stops the start like any other.

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

/// Buckets of `sipguard_packet_processing_seconds`: from the few microseconds a drop costs to the
/// milliseconds of a stalled send.
const PROCESSING_BUCKETS: &[f64] = &[
    2e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2,
];

/// How often histogram samples are folded into their buckets when nobody scrapes: the recorder
/// holds each sample until then, so this bounds its memory at the sampled packet rate.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Installs the process-wide recorder. Call once, from the binary.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sipguard_packet_processing_seconds".to_owned()),
            PROCESSING_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(handle)
}

/// Help texts for the metrics of the binary's own parts; the relay describes its families where
/// it registers them (`sipguard_relay::run`).
fn describe() {
    describe_counter!(
        "sipguard_config_reloads_total",
        "Configuration reloads, by result (ok, error)."
    );
    describe_counter!(
        "sipguard_journal_errors_total",
        "Ban journal writes or compactions that failed."
    );
    describe_counter!(
        "sipguard_journal_writer_restarts_total",
        "Ban journal writer threads restarted after a failure."
    );
    describe_gauge!(
        "sipguard_feed_entries",
        "Addresses and networks a blocklist feed lists now (its last good copy), by feed."
    );
    describe_counter!(
        "sipguard_feed_fetches_total",
        "Blocklist feed fetches, by feed and result (ok, unchanged, error)."
    );
    describe_counter!(
        "sipguard_feed_failures_total",
        "Blocklist feed fetches that failed (the last good copy stays), by feed."
    );
    describe_counter!(
        "sipguard_feed_dropped_total",
        "Messages and connections dropped because a feed lists their source, by feed."
    );
    describe_counter!(
        "sipguard_feed_admitted_total",
        "Messages and connections from a source a feed lists, admitted as allowlisted or trusted, by feed."
    );
    describe_counter!(
        "sipguard_feed_bans_file_errors_total",
        "Failed rewrites of the shared bans file (feeds.bans_file)."
    );
    describe_counter!(
        "sipguard_allowlist_resolve_errors_total",
        "Lookups of allowlist names that failed (what the name resolved to before stays)."
    );
    describe_gauge!(
        "sipguard_nftables_active",
        "1 while bans and feeds are offloaded to the kernel's nftables, else 0."
    );
    describe_counter!(
        "sipguard_nftables_transactions_total",
        "nft transactions updating the kernel's ban, trust, allowlist and feed sets, by result (ok, error)."
    );
    describe_counter!(
        "sipguard_kernel_dropped_packets_total",
        "Packets to sipguard's ports the kernel dropped (nftables offload), by set (bans, feeds, shield)."
    );
    describe_counter!(
        "sipguard_kernel_dropped_bytes_total",
        "Bytes of the packets the kernel dropped (nftables offload), by set (bans, feeds, shield)."
    );
    describe_gauge!(
        "sipguard_cluster_connected",
        "1 while bans are shared through Redis, else 0."
    );
    describe_counter!(
        "sipguard_cluster_published_total",
        "Bans and lifts of this node written to Redis."
    );
    describe_counter!(
        "sipguard_cluster_received_total",
        "Other nodes' bans and lifts, by result (applied, ignored: allowlisted here or held already, invalid)."
    );
    describe_counter!(
        "sipguard_cluster_errors_total",
        "Redis connections lost or refused (the node goes on alone and reconnects)."
    );
    describe_counter!(
        "sipguard_cluster_dropped_total",
        "Changes not queued for Redis (queue full); a merge with Redis follows."
    );
}
