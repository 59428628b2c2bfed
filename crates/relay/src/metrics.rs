//! The relay's counters, registered once at start so the per-packet cost is an atomic add.
//! Labels are bounded: transport, direction and a drop reason from a fixed set.

use metrics::{counter, gauge, Counter, Gauge};
use sipguard_policy::DropReason;

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

pub(crate) struct UdpMetrics {
    pub received: Counter,
    pub forwarded_to_pbx: Counter,
    pub forwarded_to_client: Counter,
    pub keepalives: Counter,
    pub upstream_errors: Counter,
    pub client_send_errors: Counter,
    pub sessions_active: Gauge,
    pub sessions_expired: Counter,
    policy_drops: Vec<(DropReason, Counter)>,
    session_limit: Counter,
    upstream_unavailable: Counter,
}

impl UdpMetrics {
    pub fn new() -> Self {
        let dropped = |reason: &'static str| counter!("sipguard_packets_dropped_total", "transport" => "udp", "reason" => reason);
        UdpMetrics {
            received: counter!("sipguard_packets_received_total", "transport" => "udp"),
            forwarded_to_pbx: counter!("sipguard_packets_forwarded_total", "transport" => "udp", "direction" => "to_pbx"),
            forwarded_to_client: counter!("sipguard_packets_forwarded_total", "transport" => "udp", "direction" => "to_client"),
            keepalives: counter!("sipguard_keepalives_total", "transport" => "udp"),
            upstream_errors: counter!("sipguard_upstream_errors_total", "transport" => "udp"),
            client_send_errors: counter!("sipguard_client_send_errors_total", "transport" => "udp"),
            sessions_active: gauge!("sipguard_sessions_active", "transport" => "udp"),
            sessions_expired: counter!("sipguard_sessions_expired_total", "transport" => "udp"),
            policy_drops: DropReason::ALL.iter().map(|&reason| (reason, dropped(reason.as_str()))).collect(),
            session_limit: dropped(RelayDrop::SessionLimit.as_str()),
            upstream_unavailable: dropped(RelayDrop::UpstreamUnavailable.as_str()),
        }
    }

    pub fn policy_drop(&self, reason: DropReason) {
        if let Some((_, counter)) = self.policy_drops.iter().find(|(r, _)| *r == reason) {
            counter.increment(1);
        }
    }

    pub fn relay_drop(&self, drop: RelayDrop) {
        match drop {
            RelayDrop::SessionLimit => self.session_limit.increment(1),
            RelayDrop::UpstreamUnavailable => self.upstream_unavailable.increment(1),
        }
    }
}
