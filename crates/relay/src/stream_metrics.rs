//! Counters of the stream front, one set per transport (`tcp`, `tls`), registered once so the
//! per-message cost is an atomic add. Rule hits and bans carry no transport label and are
//! counted by the UDP front's [`UdpMetrics::rule_event`](crate::metrics::UdpMetrics::rule_event).

use crate::metrics::{dropped, PacketCounters};
use metrics::{counter, gauge, Counter, Gauge};
use sipguard_policy::DropReason;
use sipguard_sip::FrameError;

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

pub(crate) struct StreamMetrics {
    pub packets: PacketCounters,
    pub connections_active: Gauge,
    pub connections_total: Counter,
    framing_drops: [Counter; 3],
    refused_limit: [Counter; 2],
    refused_source: Vec<(DropReason, Counter)>,
    closed: Vec<(Closed, Counter)>,
}

impl StreamMetrics {
    /// The counters labelled `transport` ("tcp" or "tls").
    pub fn new(transport: &'static str) -> Self {
        let refused = |reason: &'static str| counter!("sipguard_connections_refused_total", "transport" => transport, "reason" => reason);
        StreamMetrics {
            packets: PacketCounters::new(transport),
            connections_active: gauge!("sipguard_connections_active", "transport" => transport),
            connections_total: counter!("sipguard_connections_total", "transport" => transport),
            framing_drops: [FrameError::MissingContentLength, FrameError::BadContentLength, FrameError::TooLarge]
                .map(|error| dropped(transport, error.as_str())),
            refused_limit: [refused("connection_limit"), refused("per_ip_limit")],
            refused_source: [DropReason::Banned, DropReason::Denied, DropReason::NotAllowlisted]
                .iter()
                .map(|&reason| (reason, refused(reason.as_str())))
                .collect(),
            closed: Closed::ALL
                .iter()
                .map(|&reason| (reason, counter!("sipguard_connections_closed_total", "transport" => transport, "reason" => reason.as_str())))
                .collect(),
        }
    }

    pub fn framing_drop(&self, error: FrameError) {
        let index = match error {
            FrameError::MissingContentLength => 0,
            FrameError::BadContentLength => 1,
            FrameError::TooLarge => 2,
        };
        self.framing_drops[index].increment(1);
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
        if let Some((_, counter)) = self.closed.iter().find(|(r, _)| *r == why) {
            counter.increment(1);
        }
    }
}
