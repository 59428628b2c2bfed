//! The sipguard program as a library: validated configuration, socket binding, and `run`, so
//! tests start a real instance on port 0 in-process (bind first, then run with a shutdown future).
//! What is once per process (the ban journal, `/metrics`, the admin API, reload on SIGHUP) is
//! in [`daemon::serve`], which the binary runs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod daemon;
pub mod exporter;
pub mod http;
pub mod journal;
pub mod reload;

pub use config::Config;

use anyhow::Context;
use sipguard_policy::Policy;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// The listening sockets, bound before `run` so callers learn the real addresses of port-0 binds.
#[derive(Debug)]
pub struct Sockets {
    udp: Vec<std::net::UdpSocket>,
}

impl Sockets {
    /// The local addresses of the UDP listeners, in the order of `Config::listen_udp`.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

/// Binds every listener the config names (IPv6 sockets are IPv6-only so `0.0.0.0` and `[::]`
/// can both be bound on one port).
pub fn bind(config: &Config) -> anyhow::Result<Sockets> {
    let udp = config
        .listen_udp
        .iter()
        .map(|&addr| {
            sipguard_relay::bind_udp(addr).with_context(|| format!("cannot bind UDP {addr}"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Sockets { udp })
}

/// Builds the policy (its tables start empty) from the validated config.
pub fn policy(config: &Config) -> anyhow::Result<Arc<Policy>> {
    Ok(Arc::new(
        Policy::new(config.policy.clone()).context("invalid scanner patterns")?,
    ))
}

/// Runs sipguard until `shutdown` completes.
pub async fn run(
    config: Config,
    sockets: Sockets,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let policy = policy(&config)?;
    run_with_policy(config, sockets, policy, shutdown).await
}

/// Runs sipguard with a policy the caller keeps a handle on (to list or lift bans).
pub async fn run_with_policy(
    config: Config,
    sockets: Sockets,
    policy: Arc<Policy>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    sipguard_relay::run(config.relay, sockets.udp, policy, shutdown)
        .await
        .context("relay failed")
}
