//! sipguard in-process: bound on 127.0.0.1:0 through the library API, run on its own runtime
//! thread, shut down (and checked for a clean exit) when the handle drops. The test keeps a
//! handle on the policy, to see who is banned and why, and on the instance's own metrics.

use anyhow::{anyhow, Context};
use sipguard_policy::{Ban, Policy, Timestamp};
use std::net::{IpAddr, SocketAddr};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

/// How long `run` gets to return after the shutdown signal.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running sipguard.
#[derive(Debug)]
pub struct Sipguard {
    addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    outbound_addr: Option<SocketAddr>,
    policy: Arc<Policy>,
    metrics: super::metrics::Metrics,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<anyhow::Result<()>>,
}

impl Sipguard {
    /// Starts sipguard with its built-in defaults in front of the PBX at `pbx`, listening on
    /// 127.0.0.1 and a free port.
    pub fn start(pbx: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with(pbx, |_| {})
    }

    /// Starts sipguard like [`Sipguard::start`], with the config changed by `tune` first (a test
    /// sets policy fields directly, e.g. an enforced allowlist).
    pub fn start_with(
        pbx: SocketAddr,
        tune: impl FnOnce(&mut sipguard::Config),
    ) -> anyhow::Result<Self> {
        // The embedded default config, on port 0 and in front of this PBX.
        let defaults = sipguard::Config::default();
        let mut config = sipguard::Config {
            listen_udp: vec!["127.0.0.1:0".parse()?],
            // TCP on a port of its own (port 0 picks one per socket); TLS only where a test
            // brings a certificate.
            listen_tcp: vec!["127.0.0.1:0".parse()?],
            listen_tls: Vec::new(),
            relay: sipguard_relay::RelayConfig {
                pbx,
                upstream_bind: "127.0.0.1".parse()?,
                ..defaults.relay
            },
            ..defaults
        };
        tune(&mut config);
        let policy = sipguard::policy(&config)?;
        let sockets = sipguard::bind(&config).context("sipguard::bind")?;
        let addr = *sockets
            .udp_addrs()
            .first()
            .context("sipguard bound no UDP listener")?;
        let tcp_addr = sockets.tcp_addrs().first().copied();
        let tls_addr = sockets.tls_addrs().first().copied();
        let outbound_addr = sockets.outbound_addr();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let metrics = super::metrics::Metrics::default();
        let context = sipguard::RelayContext {
            recorder: Some(metrics.recorder()),
            ..sipguard::RelayContext::new(Arc::clone(&policy))
        };
        std::thread::Builder::new()
            .name(format!("sipguard-{addr}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .context("cannot build a runtime")
                    .and_then(|runtime| {
                        runtime.block_on(sipguard::run_with_context(
                            config,
                            sockets,
                            context,
                            async move {
                                let _ = shutdown_rx.await;
                            },
                        ))
                    });
                let _ = done_tx.send(result);
            })?;
        Ok(Sipguard {
            addr,
            tcp_addr,
            tls_addr,
            outbound_addr,
            policy,
            metrics,
            shutdown: Some(shutdown),
            done,
        })
    }

    /// The public UDP address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TCP address clients connect to.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr.expect("sipguard listens on TCP")
    }

    /// The TLS address clients connect to (when the test configured TLS).
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls_addr.expect("sipguard listens on TLS")
    }

    /// The outbound listener the PBX sends to (when the test turned the outbound path on).
    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr.expect("sipguard's outbound path is on")
    }

    /// The policy sipguard runs with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The ban in force on `source` now, if any.
    pub fn ban(&self, source: IpAddr) -> Option<Ban> {
        self.policy
            .ban_of(source, Timestamp::from_system(SystemTime::now()))
    }

    /// The value of one series of this instance's metrics (see [`super::metrics::Metrics`]).
    pub fn counter(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics.counter(name, labels)
    }

    /// Shuts sipguard down; an error if `run` had already returned, failed, or does not stop.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown_and_wait()
    }

    fn shutdown_and_wait(&mut self) -> anyhow::Result<()> {
        let Some(shutdown) = self.shutdown.take() else {
            return Ok(());
        };
        // `run` must keep going until it is told to stop.
        match self.done.try_recv() {
            Err(mpsc::TryRecvError::Empty) => {}
            Ok(result) => {
                return Err(anyhow!(
                    "sipguard stopped before it was shut down: {result:?}"
                ))
            }
            Err(mpsc::TryRecvError::Disconnected) => {
                return Err(anyhow!("sipguard's thread panicked"))
            }
        }
        let _ = shutdown.send(());
        match self.done.recv_timeout(SHUTDOWN_TIMEOUT) {
            Ok(result) => result.context("sipguard::run failed"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                Err(anyhow!("sipguard did not stop within {SHUTDOWN_TIMEOUT:?}"))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(anyhow!("sipguard's thread panicked")),
        }
    }
}

impl Drop for Sipguard {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown_and_wait() {
            if !std::thread::panicking() {
                panic!("{e:#}");
            }
            eprintln!("{e:#}");
        }
    }
}
