//! The Prometheus recorder and its help texts.
//!
//! The `metrics` recorder is process-global, so only the binary installs it (`main`), once; the
//! in-process `run` that tests start many times in one process never does, and its metrics go
//! nowhere. `/metrics` is served by sipguard's own listener ([`crate::http`]) from the handle,
//! so a port-0 bind works and a bind error stops the start like any other.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
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

/// Help texts for every metric sipguard exports (the TCP front's included: a description of a
/// metric that was never recorded prints nothing).
fn describe() {
    describe_counter!(
        "sipguard_packets_received_total",
        "SIP datagrams and messages received from clients."
    );
    describe_counter!(
        "sipguard_packets_forwarded_total",
        "Messages relayed, by direction (to_pbx, to_client)."
    );
    describe_counter!(
        "sipguard_packets_dropped_total",
        "Messages dropped, by reason."
    );
    describe_counter!("sipguard_keepalives_total", "CRLF keep-alives absorbed.");
    describe_counter!(
        "sipguard_upstream_errors_total",
        "Sends to or receives from the PBX that failed."
    );
    describe_counter!(
        "sipguard_client_send_errors_total",
        "Sends to clients that failed."
    );
    describe_gauge!(
        "sipguard_sessions_active",
        "Client sessions with an upstream socket open."
    );
    describe_counter!(
        "sipguard_sessions_expired_total",
        "Client sessions closed after going idle."
    );
    describe_gauge!("sipguard_connections_active", "Client connections open.");
    describe_counter!("sipguard_connections_total", "Client connections accepted.");
    describe_counter!(
        "sipguard_connections_refused_total",
        "Client connections refused, by reason."
    );
    describe_counter!(
        "sipguard_connections_closed_total",
        "Client connections closed, by reason."
    );
    describe_counter!("sipguard_bans_total", "Bans issued, by rule.");
    describe_gauge!("sipguard_bans_active", "Bans in force.");
    describe_counter!(
        "sipguard_unbans_total",
        "Bans lifted, by how (manual, expired)."
    );
    describe_counter!(
        "sipguard_rule_hits_total",
        "Detection rule hits, by rule and action."
    );
    describe_counter!(
        "sipguard_auth_failures_total",
        "Credentials the PBX refused, by request method."
    );
    describe_gauge!("sipguard_sources_tracked", "Sources with evidence held.");
    describe_counter!(
        "sipguard_state_evictions_total",
        "Live entries evicted from a full per-source table."
    );
    describe_histogram!(
        "sipguard_packet_processing_seconds",
        Unit::Seconds,
        "Policy and forwarding time per received message (one in 16 sampled)."
    );
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
}
