//! The sipguard program as a library: validated configuration, socket binding, and `run`, so
//! tests start a real instance on port 0 in-process (bind first, then run with a shutdown future).
#![forbid(unsafe_code)]

pub mod config;

pub use config::Config;

use std::future::Future;
use std::net::SocketAddr;

/// The listening sockets, bound before `run` so callers learn the real addresses of port-0 binds.
#[derive(Debug)]
pub struct Sockets {
    udp: Vec<std::net::UdpSocket>,
}

impl Sockets {
    /// The local addresses of the UDP listeners, in the order of `Config::listen_udp`.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }
}

/// Binds every listener the config names (IPv6 sockets are IPv6-only so `0.0.0.0` and `[::]`
/// can both be bound on one port).
pub fn bind(_config: &Config) -> anyhow::Result<Sockets> {
    todo!("relay wiring")
}

/// Runs sipguard until `shutdown` completes.
pub async fn run(_config: Config, _sockets: Sockets, _shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    todo!("relay wiring")
}
