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
pub use sipguard_relay::{StreamConfig, TlsFiles};

use anyhow::Context;
use sipguard_policy::Policy;
use sipguard_relay::{BanSink, StreamListeners, TlsReload};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// The listening sockets, bound before `run` so callers learn the real addresses of port-0 binds,
/// and the TLS certificate, loaded before `run` so a bad file stops the start.
#[derive(Debug)]
pub struct Sockets {
    udp: Vec<std::net::UdpSocket>,
    streams: StreamListeners,
}

impl Sockets {
    /// The local addresses of the UDP listeners, in the order of `Config::listen_udp`.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The local addresses of the TCP listeners, in the order of `Config::listen_tcp`. Each is
    /// bound on its own, so with port 0 it need not share the UDP listener's port.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        stream_addrs(&self.streams.tcp)
    }

    /// The local addresses of the TLS listeners, in the order of `Config::listen_tls`.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        stream_addrs(&self.streams.tls)
    }

    /// The handle that reloads the TLS certificate and key (on SIGHUP), when TLS is on.
    pub fn tls_reload(&self) -> Option<TlsReload> {
        self.streams.certificate.clone()
    }
}

fn stream_addrs(listeners: &[std::net::TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .collect()
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
    let bind_stream = |addrs: &[SocketAddr], what: &str| {
        addrs
            .iter()
            .map(|&addr| {
                sipguard_relay::bind_tcp(addr).with_context(|| format!("cannot bind {what} {addr}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let certificate = match &config.tls {
        Some(files) if !config.listen_tls.is_empty() => {
            Some(TlsReload::load(files.clone()).context("cannot use the TLS certificate")?)
        }
        _ => None,
    };
    let streams = StreamListeners {
        tcp: bind_stream(&config.listen_tcp, "TCP")?,
        tls: bind_stream(&config.listen_tls, "TLS")?,
        certificate,
    };
    Ok(Sockets { udp, streams })
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
    run_with_sink(config, sockets, policy, None, shutdown).await
}

/// Like [`run_with_policy`], handing every ban either front issues to `bans` (the journal).
pub async fn run_with_sink(
    config: Config,
    sockets: Sockets,
    policy: Arc<Policy>,
    bans: Option<Arc<dyn BanSink>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // One shutdown, seen by both fronts.
    let (stop, _) = tokio::sync::watch::channel(false);
    let stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let udp = sipguard_relay::run_with_sink(
        config.relay.clone(),
        sockets.udp,
        Arc::clone(&policy),
        bans.clone(),
        stopped(stop.subscribe()),
    );
    let streams = sipguard_relay::run_streams(
        config.relay,
        config.streams,
        sockets.streams,
        policy,
        bans,
        stopped(stop.subscribe()),
    );
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
        Ok(())
    };
    tokio::try_join!(udp, streams, signal).context("relay failed")?;
    Ok(())
}
