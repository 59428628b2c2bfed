//! sipguard's sockets: the UDP front, the per-client session table, and the path back.
//!
//! Every client address gets its own upstream UDP socket on loopback, connected to the PBX, so
//! the PBX sees each client as a distinct, stable peer and its own NAT handling keeps working
//! (DESIGN.md section 1). Whatever the PBX sends to that socket (responses, and requests it starts
//! itself: INVITE to a registered phone, OPTIONS qualify, NOTIFY) goes back to the client from
//! the public socket the client used. Packets are never rewritten.
//!
//! The stream front ([`run_streams`]) does the same for SIP over TCP and TLS: one upstream TCP
//! connection per client connection, living as long as it does.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use sipguard_policy::Ban;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Receives every ban the relay issues (the ban journal, which makes it durable and then logs
/// it). Called on the packet path: it must only queue the ban, never wait.
pub trait BanSink: Send + Sync {
    /// `source` was banned, or its ban extended.
    fn banned(&self, source: IpAddr, ban: &Ban);
}

/// Validated relay settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Where the PBX listens (Asterisk's pjsip transport on loopback).
    pub pbx: SocketAddr,
    /// Local address the per-client upstream sockets bind to (an ephemeral port each).
    pub upstream_bind: IpAddr,
    /// A session with no traffic either way for this long is closed. Longer than a phone's
    /// registration interval, or an idle registered phone would become unreachable.
    pub session_idle: Duration,
    /// At most this many sessions (one socket each); new clients beyond it are refused.
    pub max_sessions: usize,
}

#[allow(unsafe_code)]
mod batch;
mod connections;
mod metrics;
mod session;
mod socket;
mod stream;
mod stream_metrics;
pub mod tls;
mod udp;

pub use socket::bind_udp;
pub use stream::{bind_tcp, run_streams, StreamConfig, StreamListeners, REAP_EVERY};
pub use tls::{TlsError, TlsFiles, TlsReload};
pub use udp::{run, run_with_sink};
