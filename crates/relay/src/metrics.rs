//! The relay's counters, registered once at start so the per-packet cost is an atomic add.
//! Labels are bounded: transport, direction and a drop reason from a fixed set.

use crate::BanSink;
use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use sipguard_policy::{Action, AuthMethod, DropReason, Event, RuleId, Stats};
use std::sync::Arc;
use tracing::{debug, info};

/// One received datagram in this many has its processing time recorded: two clock reads and a
/// histogram sample on every packet would cost more than the cheapest drops they measure, and
/// the exporter holds samples between scrapes.
pub(crate) const PROCESSING_SAMPLE: u32 = 16;

/// Picks the datagrams whose processing time is recorded: every [`PROCESSING_SAMPLE`]-th.
#[derive(Debug, Default)]
pub(crate) struct Sampler(u32);

impl Sampler {
    /// The start time when this datagram is one to time.
    pub fn start(&mut self) -> Option<std::time::Instant> {
        self.0 = self.0.wrapping_add(1);
        self.0
            .is_multiple_of(PROCESSING_SAMPLE)
            .then(std::time::Instant::now)
    }
}

/// Why the relay itself (not the policy) dropped a datagram.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RelayDrop {
    /// The session table is full; a new client was refused.
    SessionLimit,
    /// The client's session could not be set up (no upstream socket).
    UpstreamUnavailable,
}

impl RelayDrop {
    fn as_str(self) -> &'static str {
        match self {
            RelayDrop::SessionLimit => "session_limit",
            RelayDrop::UpstreamUnavailable => "upstream_unavailable",
        }
    }
}

/// The packet counters every transport has, labelled with it.
pub(crate) struct PacketCounters {
    pub received: Counter,
    pub forwarded_to_pbx: Counter,
    pub forwarded_to_client: Counter,
    pub keepalives: Counter,
    pub upstream_errors: Counter,
    pub client_send_errors: Counter,
    policy_drops: Vec<(DropReason, Counter)>,
}

/// `sipguard_packets_dropped_total` for one transport and reason.
pub(crate) fn dropped(transport: &'static str, reason: &'static str) -> Counter {
    counter!("sipguard_packets_dropped_total", "transport" => transport, "reason" => reason)
}

impl PacketCounters {
    pub fn new(transport: &'static str) -> Self {
        PacketCounters {
            received: counter!("sipguard_packets_received_total", "transport" => transport),
            forwarded_to_pbx: counter!("sipguard_packets_forwarded_total", "transport" => transport, "direction" => "to_pbx"),
            forwarded_to_client: counter!("sipguard_packets_forwarded_total", "transport" => transport, "direction" => "to_client"),
            keepalives: counter!("sipguard_keepalives_total", "transport" => transport),
            upstream_errors: counter!("sipguard_upstream_errors_total", "transport" => transport),
            client_send_errors: counter!("sipguard_client_send_errors_total", "transport" => transport),
            policy_drops: DropReason::ALL
                .iter()
                .map(|&reason| (reason, dropped(transport, reason.as_str())))
                .collect(),
        }
    }

    pub fn policy_drop(&self, reason: DropReason) {
        if let Some((_, counter)) = self.policy_drops.iter().find(|(r, _)| *r == reason) {
            counter.increment(1);
        }
    }
}

pub(crate) struct UdpMetrics {
    pub packets: PacketCounters,
    pub sessions_active: Gauge,
    pub sessions_expired: Counter,
    /// Per rule: bans issued, observe-mode hits, drops without a ban, usernames blocked.
    rule_actions: Vec<(RuleId, [Counter; 4])>,
    bans_active: Gauge,
    sources_tracked: Gauge,
    evictions: Counter,
    evictions_seen: std::sync::atomic::AtomicU64,
    auth_failures: Vec<(AuthMethod, Counter)>,
    bans_expired: Counter,
    bans_expired_seen: std::sync::atomic::AtomicU64,
    /// Policy and forwarding time of one received datagram, for one in [`PROCESSING_SAMPLE`].
    pub processing: Histogram,
    session_limit: Counter,
    upstream_unavailable: Counter,
}

impl UdpMetrics {
    pub fn new() -> Self {
        UdpMetrics {
            packets: PacketCounters::new("udp"),
            sessions_active: gauge!("sipguard_sessions_active", "transport" => "udp"),
            sessions_expired: counter!("sipguard_sessions_expired_total", "transport" => "udp"),
            rule_actions: RuleId::ALL
                .iter()
                .map(|&rule| {
                    let rule_label = rule.as_str();
                    let hits = |action: &'static str| counter!("sipguard_rule_hits_total", "rule" => rule_label, "action" => action);
                    (rule, [counter!("sipguard_bans_total", "rule" => rule_label), hits("observed"), hits("dropped"), hits("user_blocked")])
                })
                .collect(),
            bans_active: gauge!("sipguard_bans_active"),
            sources_tracked: gauge!("sipguard_sources_tracked"),
            evictions: counter!("sipguard_state_evictions_total"),
            evictions_seen: Default::default(),
            auth_failures: AuthMethod::ALL
                .iter()
                .map(|&method| (method, counter!("sipguard_auth_failures_total", "method" => method.as_str())))
                .collect(),
            bans_expired: counter!("sipguard_unbans_total", "how" => "expired"),
            bans_expired_seen: Default::default(),
            processing: histogram!("sipguard_packet_processing_seconds", "transport" => "udp"),
            session_limit: dropped("udp", RelayDrop::SessionLimit.as_str()),
            upstream_unavailable: dropped("udp", RelayDrop::UpstreamUnavailable.as_str()),
        }
    }

    /// Counts credentials the PBX refused.
    pub fn auth_failure(&self, method: AuthMethod) {
        if let Some((_, counter)) = self.auth_failures.iter().find(|(m, _)| *m == method) {
            counter.increment(1);
        }
    }

    /// Counts and logs a rule hit, whatever the transport, and hands a ban to `bans` (the
    /// journal, which logs it once it is durable); without a sink the ban is logged here.
    pub fn report(&self, event: &Event, bans: Option<&Arc<dyn BanSink>>) {
        self.rule_event(event, bans.is_none());
        if let (Some(sink), Action::Banned(ban)) = (bans, &event.action) {
            sink.banned(event.source, ban);
        }
    }

    /// Counts a rule hit and logs it: one info line per ban (source, rule, evidence, expiry),
    /// unless `log_bans` is false because a ban sink logs each ban once it is durable.
    pub fn rule_event(&self, event: &Event, log_bans: bool) {
        let Some((_, counters)) = self
            .rule_actions
            .iter()
            .find(|(rule, _)| *rule == event.rule)
        else {
            return;
        };
        let rule = event.rule.as_str();
        match event.action {
            Action::Banned(ban) => {
                counters[0].increment(1);
                if !log_bans {
                    return;
                }
                info!(
                    source = %event.source, rule, evidence = ban.evidence, offence = ban.offence,
                    expires_in_s = ban.expires.since(ban.last_seen).as_secs(), "banned"
                );
            }
            Action::Observed { would_ban } => {
                counters[1].increment(1);
                info!(source = %event.source, rule, would_ban, "rule hit in observe mode");
            }
            Action::Dropped => {
                counters[2].increment(1);
                debug!(source = %event.source, rule, "dropped without ban (trusted, allowlisted or drop mode)");
            }
            Action::UserBlocked { until } => {
                counters[3].increment(1);
                info!(source = %event.source, rule, until_ms = until.as_millis(), "username blocked from source");
            }
        }
    }

    /// Publishes the policy's table sizes.
    pub fn policy_stats(&self, stats: Stats) {
        self.bans_active.set(stats.bans as f64);
        self.sources_tracked.set(stats.sources as f64);
        let before = self
            .evictions_seen
            .swap(stats.evictions, std::sync::atomic::Ordering::Relaxed);
        self.evictions
            .increment(stats.evictions.saturating_sub(before));
        let before = self
            .bans_expired_seen
            .swap(stats.bans_expired, std::sync::atomic::Ordering::Relaxed);
        self.bans_expired
            .increment(stats.bans_expired.saturating_sub(before));
    }

    pub fn relay_drop(&self, drop: RelayDrop) {
        match drop {
            RelayDrop::SessionLimit => self.session_limit.increment(1),
            RelayDrop::UpstreamUnavailable => self.upstream_unavailable.increment(1),
        }
    }
}
