//! stub: owned by the config work. Validated configuration.
use sipguard_policy::PolicyConfig;
use sipguard_relay::RelayConfig;
use std::net::SocketAddr;

/// Validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP listeners.
    pub listen_udp: Vec<SocketAddr>,
    /// Relay settings.
    pub relay: RelayConfig,
    /// Policy settings.
    pub policy: PolicyConfig,
}
