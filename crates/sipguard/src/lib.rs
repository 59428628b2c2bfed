//! The sipguard program as a library: validated configuration, socket binding, and `run`, so
//! tests start a real instance on port 0 in-process (bind first, then run with a shutdown future).
//! What is once per process (the ban journal, `/metrics`, the admin API, reload on SIGHUP) is
//! in [`daemon::serve`], which the binary runs.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod exporter;
pub mod feeds;
pub mod http;
pub mod journal;
pub mod nft;
pub mod reload;
pub mod resolve;
pub mod sessions;

pub use config::Config;
pub use sipguard_relay::{Context as RelayContext, StreamConfig, TlsFiles};

use anyhow::Context;
use sipguard_policy::Policy;
use sipguard_relay::{Listeners, OutboundListener, TlsReload};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// The listening sockets, bound before `run` so callers learn the real addresses of port-0 binds,
/// and the TLS certificate, loaded before `run` so a bad file stops the start.
#[derive(Debug)]
pub struct Sockets {
    listeners: Listeners,
}

impl Sockets {
    /// The local addresses of the UDP listeners, in the order of `Config::listen_udp`.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The local addresses of the TCP listeners, in the order of `Config::listen_tcp`. Each is
    /// bound on its own, so with port 0 it need not share the UDP listener's port.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        stream_addrs(&self.listeners.tcp)
    }

    /// The local addresses of the TLS listeners, in the order of `Config::listen_tls`.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        stream_addrs(&self.listeners.tls)
    }

    /// The outbound path's loopback listener (the PBX's outbound proxy), when it is on.
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.listeners
            .outbound
            .as_ref()
            .and_then(|outbound| outbound.socket.local_addr().ok())
    }

    /// The handle that reloads the TLS certificate and key (on SIGHUP), when TLS is on.
    pub fn tls_reload(&self) -> Option<TlsReload> {
        self.listeners.certificate.clone()
    }
}

impl Sockets {
    /// The (protocol, port) of every SIP listener, for the kernel offload's rule: UDP, and TCP
    /// for the TCP and TLS listeners.
    pub fn offload_ports(&self) -> Vec<(nft::Proto, u16)> {
        let udp = self
            .udp_addrs()
            .into_iter()
            .map(|a| (nft::Proto::Udp, a.port()));
        let streams = self.tcp_addrs().into_iter().chain(self.tls_addrs());
        let mut ports: Vec<_> = udp
            .chain(streams.map(|a| (nft::Proto::Tcp, a.port())))
            .collect();
        ports.sort_by_key(|&(proto, port)| (proto as u8, port));
        ports.dedup();
        ports
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
    let outbound = config
        .outbound
        .map(|outbound| {
            let socket = std::net::UdpSocket::bind(outbound.listen)
                .with_context(|| format!("cannot bind outbound.listen {}", outbound.listen))?;
            anyhow::Ok(OutboundListener {
                socket,
                public: outbound.public,
            })
        })
        .transpose()?;
    let listeners = Listeners {
        udp,
        tcp: bind_stream(&config.listen_tcp, "TCP")?,
        tls: bind_stream(&config.listen_tls, "TLS")?,
        certificate,
        outbound,
    };
    Ok(Sockets { listeners })
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
    run_with_context(config, sockets, RelayContext::new(policy), shutdown).await
}

/// Registers metric handles into the recorder of `context` (an in-process instance's own), or
/// the process-wide one.
fn registered<T>(context: &RelayContext, register: impl FnOnce() -> T) -> T {
    match &context.recorder {
        Some(recorder) => metrics::with_local_recorder(&**recorder, register),
        None => register(),
    }
}

/// Runs sipguard with the policy, clock and metrics recorder of `context`.
pub async fn run_with_context(
    config: Config,
    sockets: Sockets,
    context: RelayContext,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (_, reloads) = tokio::sync::watch::channel(config.clone());
    run_reloading(config, sockets, context, reloads, shutdown).await
}

/// [`run_with_context`], where the parts that follow reloads outside the policy (the kernel
/// shield's limit) follow `reloads`: the config in force after each reload.
pub async fn run_reloading(
    config: Config,
    sockets: Sockets,
    context: RelayContext,
    reloads: tokio::sync::watch::Receiver<Config>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (policy, clock) = (&context.policy, &context.clock);
    // Set up beside the relay, not before it: its first step (metrics registered, observers
    // subscribed) stays the first thing `run` does, and the offload fills its sets from the
    // policy's snapshot once it is ready.
    let offload = config.nftables.clone().map(|nft| {
        let metrics = registered(&context, nft::Metrics::register);
        let ports = sockets.offload_ports();
        let (policy, clock) = (Arc::clone(policy), Arc::clone(clock));
        let offload = nft::Offload::start(nft, reloads, ports, policy, clock, metrics);
        tokio::spawn(offload)
    });
    let _cluster = config.cluster.clone().map(|cluster| {
        let metrics = registered(&context, cluster::Metrics::register);
        cluster::start(cluster, Arc::clone(policy), Arc::clone(clock), metrics)
    });
    let result = sipguard_relay::run(
        config.relay,
        config.streams,
        sockets.listeners,
        context,
        shutdown,
    )
    .await
    .context("relay failed");
    if let Some(started) = offload {
        if let Ok(Some(offload)) = started.await {
            offload.stop().await;
        }
    }
    result
}
