//! The relay's metric families, registered once at start into the recorder the relay is given,
//! so the per-packet cost is an atomic add and tests read their own instance's figures. Each
//! family's name is written once, here. Labels are bounded: transport, direction, a drop or
//! close reason, a rule, a method; never an address or a user agent.

use crate::Transport;
use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};
use sipguard_policy::{
    Action, AuthFailure, AuthMethod, Change, DropReason, Event, Observer, Refusal as CallRefusal,
    RuleId, Stats,
};
use sipguard_sip::proxy::Refusal;
use sipguard_sip::FrameError;
use std::sync::atomic::{AtomicU64, Ordering};
use tracing::{debug, info};

const PACKETS_RECEIVED: &str = "sipguard_packets_received_total";
const PACKETS_FORWARDED: &str = "sipguard_packets_forwarded_total";
const PACKETS_DROPPED: &str = "sipguard_packets_dropped_total";
const KEEPALIVES: &str = "sipguard_keepalives_total";
const UPSTREAM_ERRORS: &str = "sipguard_upstream_errors_total";
const CLIENT_SEND_ERRORS: &str = "sipguard_client_send_errors_total";
const PROCESSING: &str = "sipguard_packet_processing_seconds";
const SESSIONS_ACTIVE: &str = "sipguard_sessions_active";
const SESSIONS_EXPIRED: &str = "sipguard_sessions_expired_total";
const SESSIONS_EVICTED: &str = "sipguard_sessions_evicted_total";
const CONNECTIONS_ACTIVE: &str = "sipguard_connections_active";
const CONNECTIONS_TOTAL: &str = "sipguard_connections_total";
const CONNECTIONS_REFUSED: &str = "sipguard_connections_refused_total";
const CONNECTIONS_CLOSED: &str = "sipguard_connections_closed_total";
const RULE_HITS: &str = "sipguard_rule_hits_total";
const BANS: &str = "sipguard_bans_total";
const UNBANS: &str = "sipguard_unbans_total";
const BANS_QUIET: &str = "sipguard_bans_quiet_total";
const BANS_ACTIVE: &str = "sipguard_bans_active";
const SOURCES_TRACKED: &str = "sipguard_sources_tracked";
const EVICTIONS: &str = "sipguard_state_evictions_total";
const AUTH_FAILURES: &str = "sipguard_auth_failures_total";
const CALL_REFUSALS: &str = "sipguard_call_refusals_total";
const OUTBOUND_RECEIVED: &str = "sipguard_outbound_received_total";
const OUTBOUND_REQUESTS: &str = "sipguard_outbound_requests_total";
const OUTBOUND_RESPONSES: &str = "sipguard_outbound_responses_total";
const OUTBOUND_DROPPED: &str = "sipguard_outbound_dropped_total";
const OUTBOUND_ROUTES_REMOVED: &str = "sipguard_outbound_routes_removed_total";

/// The `evidence` label: whether a spoofer could have forged the evidence (index 0) or not
/// (index 1, by `bool` as `usize`).
const EVIDENCE: [&str; 2] = ["unproven", "proven"];

/// One received message in this many has its processing time recorded: two clock reads and a
/// histogram sample on every packet would cost more than the cheapest drops they measure, and
/// the exporter holds samples between scrapes.
pub(crate) const PROCESSING_SAMPLE: u32 = 16;

/// Picks the messages whose processing time is recorded: every [`PROCESSING_SAMPLE`]-th.
#[derive(Debug, Default)]
pub(crate) struct Sampler(u32);

impl Sampler {
    /// The start time when this message is one to time.
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
    /// The session table is full of proven sessions; a new client was refused.
    SessionLimit,
    /// The client's session could not be set up (no upstream socket).
    UpstreamUnavailable,
}

/// Why a new connection was turned away: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    ConnectionLimit,
    PerIpLimit,
    /// The policy refuses the source (banned, denied, not allowlisted).
    Source(DropReason),
}

/// Why a connection ended: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The client closed it (or reset it).
    Client,
    /// The PBX closed the upstream connection; the client's goes with it.
    Upstream,
    /// No upstream connection to the PBX could be made.
    UpstreamUnavailable,
    /// Nothing either way for the idle timeout (or no first message in time).
    Idle,
    /// A message was started and not finished within the message timeout (slowloris).
    MessageTimeout,
    /// The stream could not be framed: no or a bad Content-Length.
    Framing,
    /// A message longer than the maximum size.
    TooLarge,
    /// The source is banned (by a rule on any transport, or by hand).
    Banned,
    /// The TLS handshake failed or took too long.
    TlsHandshake,
    /// The client did not take what was sent to it within the message timeout.
    WriteTimeout,
    /// sipguard is stopping.
    Shutdown,
}

impl Closed {
    const ALL: [Closed; 11] = [
        Closed::Client,
        Closed::Upstream,
        Closed::UpstreamUnavailable,
        Closed::Idle,
        Closed::MessageTimeout,
        Closed::Framing,
        Closed::TooLarge,
        Closed::Banned,
        Closed::TlsHandshake,
        Closed::WriteTimeout,
        Closed::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Closed::Client => "client_closed",
            Closed::Upstream => "upstream_closed",
            Closed::UpstreamUnavailable => "upstream_unavailable",
            Closed::Idle => "idle",
            Closed::MessageTimeout => "message_timeout",
            Closed::Framing => "bad_framing",
            Closed::TooLarge => "too_large",
            Closed::Banned => "banned",
            Closed::TlsHandshake => "tls_handshake",
            Closed::WriteTimeout => "write_timeout",
            Closed::Shutdown => "shutdown",
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
    /// Policy and forwarding time of one received message, for one in [`PROCESSING_SAMPLE`].
    pub processing: Histogram,
    /// By [`DropReason::ALL`] order.
    policy_drops: Vec<Counter>,
    /// Stream framing errors, by [`FRAME_ERRORS`] order (unused on UDP).
    framing_drops: Vec<Counter>,
    /// By [`RelayDrop`].
    session_limit: Counter,
    upstream_unavailable: Counter,
}

const FRAME_ERRORS: [FrameError; 3] = [
    FrameError::MissingContentLength,
    FrameError::BadContentLength,
    FrameError::TooLarge,
];

impl PacketCounters {
    fn new(transport: &'static str) -> Self {
        let dropped = |reason: &'static str| counter!(PACKETS_DROPPED, "transport" => transport, "reason" => reason);
        let framing_drops = if transport == "udp" {
            Vec::new()
        } else {
            FRAME_ERRORS
                .iter()
                .map(|error| dropped(error.as_str()))
                .collect()
        };
        PacketCounters {
            received: counter!(PACKETS_RECEIVED, "transport" => transport),
            forwarded_to_pbx: counter!(PACKETS_FORWARDED, "transport" => transport, "direction" => "to_pbx"),
            forwarded_to_client: counter!(PACKETS_FORWARDED, "transport" => transport, "direction" => "to_client"),
            keepalives: counter!(KEEPALIVES, "transport" => transport),
            upstream_errors: counter!(UPSTREAM_ERRORS, "transport" => transport),
            client_send_errors: counter!(CLIENT_SEND_ERRORS, "transport" => transport),
            processing: histogram!(PROCESSING, "transport" => transport),
            policy_drops: DropReason::ALL
                .iter()
                .map(|reason| dropped(reason.as_str()))
                .collect(),
            framing_drops,
            session_limit: dropped("session_limit"),
            upstream_unavailable: dropped("upstream_unavailable"),
        }
    }

    pub fn policy_drop(&self, reason: DropReason) {
        if let Some(index) = DropReason::ALL.iter().position(|&r| r == reason) {
            self.policy_drops[index].increment(1);
        }
    }

    pub fn framing_drop(&self, error: FrameError) {
        if let Some(counter) = FRAME_ERRORS
            .iter()
            .position(|&e| e == error)
            .and_then(|index| self.framing_drops.get(index))
        {
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

/// The connection counters of one stream transport.
pub(crate) struct ConnectionCounters {
    pub active: Gauge,
    pub total: Counter,
    refused_limit: [Counter; 2],
    refused_source: Vec<(DropReason, Counter)>,
    closed: Vec<Counter>,
}

impl ConnectionCounters {
    fn new(transport: &'static str) -> Self {
        let refused = |reason: &'static str| counter!(CONNECTIONS_REFUSED, "transport" => transport, "reason" => reason);
        ConnectionCounters {
            active: gauge!(CONNECTIONS_ACTIVE, "transport" => transport),
            total: counter!(CONNECTIONS_TOTAL, "transport" => transport),
            refused_limit: [refused("connection_limit"), refused("per_ip_limit")],
            refused_source: [DropReason::Banned, DropReason::Denied, DropReason::NotAllowlisted]
                .iter()
                .map(|&reason| (reason, refused(reason.as_str())))
                .collect(),
            closed: Closed::ALL
                .iter()
                .map(|reason| counter!(CONNECTIONS_CLOSED, "transport" => transport, "reason" => reason.as_str()))
                .collect(),
        }
    }

    pub fn refused(&self, why: Refused) {
        match why {
            Refused::ConnectionLimit => self.refused_limit[0].increment(1),
            Refused::PerIpLimit => self.refused_limit[1].increment(1),
            Refused::Source(reason) => {
                if let Some((_, counter)) = self.refused_source.iter().find(|(r, _)| *r == reason) {
                    counter.increment(1);
                }
            }
        }
    }

    pub fn closed(&self, why: Closed) {
        if let Some(index) = Closed::ALL.iter().position(|&r| r == why) {
            self.closed[index].increment(1);
        }
    }
}

/// What became of a request the PBX sent out through sipguard: relayed, or answered by
/// sipguard itself, and why (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundResult {
    Forwarded,
    /// The outbound rules refused it ([`crate::pipeline::Pipeline::outbound`]).
    Policy,
    /// The proxy could not relay it ([`sipguard_sip::proxy::Refusal`]).
    Refused(Refusal),
}

impl OutboundResult {
    const ALL: [OutboundResult; 6] = [
        OutboundResult::Forwarded,
        OutboundResult::Policy,
        OutboundResult::Refused(Refusal::TooManyHops),
        OutboundResult::Refused(Refusal::Loop),
        OutboundResult::Refused(Refusal::Unroutable),
        OutboundResult::Refused(Refusal::Malformed),
    ];

    fn as_str(self) -> &'static str {
        match self {
            OutboundResult::Forwarded => "forwarded",
            OutboundResult::Policy => "policy",
            OutboundResult::Refused(refusal) => refusal.as_str(),
        }
    }
}

/// Why the outbound path dropped a message without an answer (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundDrop {
    /// A datagram on the outbound listener from another address than the PBX's.
    NotPbx,
    /// Not SIP, or SIP the view refuses.
    Malformed,
    /// A response on the outbound listener: the PBX answers carriers on their sessions.
    UnexpectedResponse,
    /// A response with sipguard's branch mark whose branch sipguard did not give, or whose next
    /// Via is not the PBX's.
    NotOurs,
    /// The send to the next hop failed.
    SendFailed,
}

impl OutboundDrop {
    const ALL: [OutboundDrop; 5] = [
        OutboundDrop::NotPbx,
        OutboundDrop::Malformed,
        OutboundDrop::UnexpectedResponse,
        OutboundDrop::NotOurs,
        OutboundDrop::SendFailed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            OutboundDrop::NotPbx => "not_pbx",
            OutboundDrop::Malformed => "malformed",
            OutboundDrop::UnexpectedResponse => "unexpected_response",
            OutboundDrop::NotOurs => "not_ours",
            OutboundDrop::SendFailed => "send_failed",
        }
    }
}

/// The outbound path's counters.
pub(crate) struct OutboundCounters {
    /// Datagrams received on the outbound listener.
    pub received: Counter,
    /// Carriers' responses relayed to the PBX.
    pub responses: Counter,
    /// Clients' requests whose Route entries naming sipguard were removed (carriers' in-dialog
    /// requests, routed by its Record-Route).
    pub routes_removed: Counter,
    /// By [`OutboundResult::ALL`] order.
    requests: Vec<Counter>,
    /// By [`OutboundDrop::ALL`] order.
    drops: Vec<Counter>,
}

impl OutboundCounters {
    fn new() -> Self {
        OutboundCounters {
            // Labelled like the session families: the outbound path is UDP only.
            received: counter!(OUTBOUND_RECEIVED, "transport" => "udp"),
            responses: counter!(OUTBOUND_RESPONSES, "transport" => "udp"),
            routes_removed: counter!(OUTBOUND_ROUTES_REMOVED, "transport" => "udp"),
            requests: OutboundResult::ALL
                .iter()
                .map(|result| counter!(OUTBOUND_REQUESTS, "result" => result.as_str()))
                .collect(),
            drops: OutboundDrop::ALL
                .iter()
                .map(|reason| counter!(OUTBOUND_DROPPED, "reason" => reason.as_str()))
                .collect(),
        }
    }

    pub fn request(&self, result: OutboundResult) {
        if let Some(index) = OutboundResult::ALL.iter().position(|&r| r == result) {
            self.requests[index].increment(1);
        }
    }

    pub fn drop(&self, reason: OutboundDrop) {
        if let Some(index) = OutboundDrop::ALL.iter().position(|&r| r == reason) {
            self.drops[index].increment(1);
        }
    }
}

/// Every metric the relay keeps.
pub(crate) struct Metrics {
    udp: PacketCounters,
    tcp: PacketCounters,
    tls: PacketCounters,
    pub tcp_connections: ConnectionCounters,
    pub tls_connections: ConnectionCounters,
    pub sessions_active: Gauge,
    pub sessions_expired: Counter,
    /// Sessions that never proved anything, evicted from a full table for a newcomer.
    pub sessions_evicted: Counter,
    /// Per rule, for unproven then proven evidence: observe-mode hits, drops without a ban,
    /// usernames blocked.
    rule_hits: Vec<(RuleId, [[Counter; 3]; 2])>,
    /// Per call rule and class: observed, then refused.
    call_refusals: Vec<((RuleId, &'static str), [Counter; 2])>,
    /// Per method, for unproven then proven evidence.
    auth_failures: Vec<(AuthMethod, [Counter; 2])>,
    policy: PolicyGauges,
    bans: BanCounters,
    /// The outbound path (the PBX's requests to carriers through sipguard).
    pub outbound: OutboundCounters,
}

/// The policy's table sizes, published by the sweep.
struct PolicyGauges {
    bans_active: Gauge,
    sources_tracked: Gauge,
    evictions: Counter,
    evictions_seen: AtomicU64,
}

/// Bans issued by rule and bans ended by how: the metrics' view of the ban events.
pub(crate) struct BanCounters {
    issued: Vec<(RuleId, Counter)>,
    expired: Counter,
    lifted: Counter,
    quiet: Counter,
}

impl Observer for BanCounters {
    fn changed(&self, event: &Change) {
        match event {
            Change::Banned { ban, .. } => {
                if let Some((_, counter)) = self.issued.iter().find(|(rule, _)| *rule == ban.rule) {
                    counter.increment(1);
                }
                if ban.quiet {
                    self.quiet.increment(1);
                }
            }
            Change::Expired { .. } => self.expired.increment(1),
            Change::Lifted { .. } => self.lifted.increment(1),
            Change::Announced { .. } | Change::Trusted { .. } | Change::Distrusted { .. } => {}
        }
    }
}

/// Help texts of the relay's families, given to the recorder they register into.
fn describe() {
    describe_counter!(
        PACKETS_RECEIVED,
        "SIP datagrams and messages received from clients."
    );
    describe_counter!(
        PACKETS_FORWARDED,
        "Messages relayed, by direction (to_pbx, to_client)."
    );
    describe_counter!(PACKETS_DROPPED, "Messages dropped, by reason.");
    describe_counter!(KEEPALIVES, "CRLF keep-alives absorbed.");
    describe_counter!(
        UPSTREAM_ERRORS,
        "Sends to or receives from the PBX that failed."
    );
    describe_counter!(CLIENT_SEND_ERRORS, "Sends to clients that failed.");
    describe_histogram!(
        PROCESSING,
        Unit::Seconds,
        "Policy and forwarding time per received message (one in 16 sampled)."
    );
    describe_gauge!(
        SESSIONS_ACTIVE,
        "Client sessions with an upstream socket open."
    );
    describe_counter!(SESSIONS_EXPIRED, "Client sessions closed after going idle.");
    describe_counter!(
        SESSIONS_EVICTED,
        "Client sessions never established (no proven address, no accepted registration), evicted from a full table for a newcomer."
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Client connections open.");
    describe_counter!(CONNECTIONS_TOTAL, "Client connections accepted.");
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections refused, by reason."
    );
    describe_counter!(CONNECTIONS_CLOSED, "Client connections closed, by reason.");
    describe_counter!(
        RULE_HITS,
        "Detection rule hits that banned nobody, by rule, action and evidence (proven or unproven)."
    );
    describe_counter!(BANS, "Bans issued, by rule.");
    describe_counter!(UNBANS, "Bans ended, by how (manual, expired).");
    describe_counter!(
        BANS_QUIET,
        "Bans on forgeable evidence past the announced budget of 1,000 a second: enforced, but not journalled, pushed to the kernel or shared one by one."
    );
    describe_gauge!(BANS_ACTIVE, "Bans in force.");
    describe_gauge!(SOURCES_TRACKED, "Sources with evidence held.");
    describe_counter!(
        EVICTIONS,
        "Live entries evicted from a full per-source table, or new ones turned away."
    );
    describe_counter!(
        CALL_REFUSALS,
        "Calls and registrations the dial, call rate and country rules refused (or observed), by \
         rule and class."
    );
    describe_counter!(
        AUTH_FAILURES,
        "Credentials the PBX refused, by request method and evidence (proven: the attempt \
         answered a challenge sent to that client)."
    );
    describe_counter!(
        OUTBOUND_RECEIVED,
        "Datagrams received on the outbound listener (the PBX's requests to carriers)."
    );
    describe_counter!(
        OUTBOUND_REQUESTS,
        "The PBX's requests to carriers, by result: forwarded, or answered by sipguard (policy, \
         too_many_hops, loop, unroutable, malformed)."
    );
    describe_counter!(
        OUTBOUND_RESPONSES,
        "Carriers' responses relayed to the PBX on the outbound path."
    );
    describe_counter!(
        OUTBOUND_DROPPED,
        "Messages the outbound path dropped unanswered, by reason."
    );
    describe_counter!(
        OUTBOUND_ROUTES_REMOVED,
        "Requests relayed to the PBX with sipguard's Route entries removed (carriers' in-dialog \
         requests, routed by its Record-Route)."
    );
}

impl Metrics {
    /// Registers every family, with its help text, into the current recorder (see
    /// [`metrics::with_local_recorder`]).
    pub fn register() -> Self {
        describe();
        Metrics {
            udp: PacketCounters::new("udp"),
            tcp: PacketCounters::new("tcp"),
            tls: PacketCounters::new("tls"),
            tcp_connections: ConnectionCounters::new("tcp"),
            tls_connections: ConnectionCounters::new("tls"),
            sessions_active: gauge!(SESSIONS_ACTIVE, "transport" => "udp"),
            sessions_expired: counter!(SESSIONS_EXPIRED, "transport" => "udp"),
            sessions_evicted: counter!(SESSIONS_EVICTED, "transport" => "udp"),
            rule_hits: RuleId::ALL
                .iter()
                .map(|&rule| {
                    let hits = |evidence: &'static str| {
                        ["observed", "dropped", "user_blocked"].map(|action| counter!(RULE_HITS, "rule" => rule.as_str(), "action" => action, "evidence" => evidence))
                    };
                    (rule, EVIDENCE.map(hits))
                })
                .collect(),
            call_refusals: CallRefusal::CLASSES
                .iter()
                .map(|&(rule, class)| {
                    let action = |action: &'static str| counter!(CALL_REFUSALS, "rule" => rule.as_str(), "class" => class, "action" => action);
                    ((rule, class), [action("observed"), action("refused")])
                })
                .collect(),
            auth_failures: AuthMethod::ALL
                .iter()
                .map(|&method| {
                    (method, EVIDENCE.map(|evidence| counter!(AUTH_FAILURES, "method" => method.as_str(), "evidence" => evidence)))
                })
                .collect(),
            policy: PolicyGauges {
                bans_active: gauge!(BANS_ACTIVE),
                sources_tracked: gauge!(SOURCES_TRACKED),
                evictions: counter!(EVICTIONS),
                evictions_seen: AtomicU64::new(0),
            },
            bans: BanCounters {
                issued: RuleId::ALL
                    .iter()
                    .map(|&rule| (rule, counter!(BANS, "rule" => rule.as_str())))
                    .collect(),
                expired: counter!(UNBANS, "how" => "expired"),
                lifted: counter!(UNBANS, "how" => "manual"),
                quiet: counter!(BANS_QUIET),
            },
            outbound: OutboundCounters::new(),
        }
    }

    /// The packet counters of `transport`.
    pub fn packets(&self, transport: Transport) -> &PacketCounters {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
            Transport::Tls => &self.tls,
        }
    }

    /// The connection counters of a stream transport.
    pub fn connections(&self, transport: Transport) -> &ConnectionCounters {
        match transport {
            Transport::Tls => &self.tls_connections,
            Transport::Udp | Transport::Tcp => &self.tcp_connections,
        }
    }

    /// The ban counters, which follow the policy's ban events.
    pub fn bans(&self) -> &BanCounters {
        &self.bans
    }

    /// Counts credentials the PBX refused.
    pub fn auth_failure(&self, failure: AuthFailure) {
        if let Some((_, counters)) = self
            .auth_failures
            .iter()
            .find(|(method, _)| *method == failure.method)
        {
            counters[usize::from(failure.proven)].increment(1);
        }
    }

    /// Counts a call rule's refusal.
    pub fn refusal(&self, refusal: &CallRefusal) {
        let key = (refusal.rule, refusal.class);
        if let Some((_, counters)) = self.call_refusals.iter().find(|(k, _)| *k == key) {
            counters[usize::from(!refusal.observed)].increment(1);
        }
    }

    /// Counts and logs a rule hit, whatever the transport. Bans are counted from the policy's
    /// ban events (and logged by the journal once durable), so they are not counted here.
    pub fn rule_event(&self, event: &Event) {
        let Some((_, counters)) = self.rule_hits.iter().find(|(rule, _)| *rule == event.rule)
        else {
            return;
        };
        let counters = &counters[usize::from(event.proven)];
        let rule = event.rule.as_str();
        match event.action {
            Action::Banned(ref ban) => {
                debug!(source = %event.source, rule, evidence = ban.evidence, offence = ban.offence, "ban issued");
            }
            Action::Observed { would_ban } => {
                counters[0].increment(1);
                info!(source = %event.source, rule, would_ban, "rule hit in observe mode");
            }
            Action::Dropped => {
                counters[1].increment(1);
                debug!(source = %event.source, rule, "dropped without ban (trusted, allowlisted or drop mode)");
            }
            Action::UserBlocked { until } => {
                counters[2].increment(1);
                info!(source = %event.source, rule, until_ms = until.as_millis(), "username blocked from source");
            }
        }
    }

    /// Publishes the policy's table sizes.
    pub fn policy_stats(&self, stats: Stats) {
        let gauges = &self.policy;
        gauges.bans_active.set(stats.bans as f64);
        gauges.sources_tracked.set(stats.sources as f64);
        let before = gauges
            .evictions_seen
            .swap(stats.evictions, Ordering::Relaxed);
        gauges
            .evictions
            .increment(stats.evictions.saturating_sub(before));
    }
}
