//! sipguard's sockets: the UDP front, the TCP and TLS fronts, and the path back from the PBX.
//!
//! Every client gets its own way to the PBX (an upstream UDP socket per client address, an
//! upstream TCP connection per client connection), so the PBX sees each client as a distinct,
//! stable peer and its own NAT handling keeps working (docs/design.md, "Where it sits").
//! Whatever the PBX sends back on it (responses, and requests it starts itself: INVITE to a
//! registered phone, OPTIONS qualify, NOTIFY) goes to the client the way it came. Packets are
//! never rewritten.
//!
//! Both fronts send every message through one [`pipeline`]: a request is judged once by the
//! policy, a response once on its way back, with one set of transport-labelled counters. The
//! relay is given its clock and the recorder its metrics register into, so tests run it on
//! tokio's paused time and read their own figures. One shutdown signal stops every task.
//!
//! The one exception to "never rewritten" is the [`outbound`] path, where the PBX sends its
//! requests to carriers through sipguard as through a stateless proxy, which must change Via,
//! Route and Record-Route.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[allow(unsafe_code)]
mod batch;
mod bindings;
mod clock;
mod connections;
mod metrics;
mod outbound;
mod pipeline;
mod session;
mod socket;
mod stream;
pub mod tls;
mod udp;

pub use bindings::{Binding, Directory, SessionStore};
pub use clock::{Clock, SystemClock, TokioClock};
pub use outbound::OutboundListener;
pub use socket::bind_udp;
pub use stream::{bind_tcp, StreamConfig};
pub use tls::{TlsError, TlsFiles, TlsReload};

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use sipguard_policy::{Change, Observer, Policy};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How often expired bans and evidence are swept from the policy's tables.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

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
    /// At most this many sessions (one socket each).
    pub max_sessions: usize,
}

/// The bound listeners of every front, and what TLS needs.
#[derive(Debug, Default)]
pub struct Listeners {
    /// UDP listeners.
    pub udp: Vec<std::net::UdpSocket>,
    /// Plain TCP listeners.
    pub tcp: Vec<std::net::TcpListener>,
    /// TLS listeners; they need `certificate`.
    pub tls: Vec<std::net::TcpListener>,
    /// The certificate for the TLS listeners.
    pub certificate: Option<TlsReload>,
    /// The outbound path's loopback listener, when it is on.
    pub outbound: Option<OutboundListener>,
}

/// What the relay works with besides its sockets.
#[derive(Clone)]
pub struct Context {
    /// The decisions, and the owner of ban state.
    pub policy: Arc<Policy>,
    /// Where the time comes from.
    pub clock: Arc<dyn Clock>,
    /// The recorder the relay's metrics register into; `None`: the process-wide one.
    pub recorder: Option<Arc<dyn ::metrics::Recorder + Send + Sync>>,
    /// Where the live bindings are published for the operator.
    pub directory: Arc<Directory>,
    /// Where established UDP sessions are kept across restarts; `None`: they are not.
    pub sessions: Option<Arc<dyn SessionStore>>,
}

impl Context {
    /// The policy on the system clock, with metrics in the process-wide recorder.
    pub fn new(policy: Arc<Policy>) -> Self {
        Context {
            policy,
            clock: Arc::new(SystemClock),
            recorder: None,
            directory: Arc::default(),
            sessions: None,
        }
    }
}

/// How a message reached sipguard: a metric label, and how far its source can be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// UDP.
    Udp,
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

impl Transport {
    /// What the transport proves about the source address.
    fn proof(self) -> sipguard_policy::Transport {
        match self {
            Transport::Udp => sipguard_policy::Transport::Datagram,
            Transport::Tcp | Transport::Tls => sipguard_policy::Transport::Stream,
        }
    }
}

/// Relays between clients on `listeners` and the PBX until `shutdown` completes.
pub async fn run(
    config: RelayConfig,
    limits: StreamConfig,
    listeners: Listeners,
    context: Context,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    if !listeners.tls.is_empty() && listeners.certificate.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS listeners need a certificate",
        ));
    }
    let metrics = match &context.recorder {
        Some(recorder) => ::metrics::with_local_recorder(&**recorder, Metrics::register),
        None => Metrics::register(),
    };
    let pipeline = Arc::new(Pipeline {
        policy: context.policy,
        clock: context.clock,
        metrics,
    });
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let outbound = match listeners.outbound {
        Some(listener) => Some(outbound::Outbound::new(
            listener,
            &listeners.udp,
            config.pbx,
            Arc::clone(&pipeline),
        )?),
        None => None,
    };
    let udp = udp::Front::start(
        config.clone(),
        Arc::clone(&pipeline),
        outbound.clone(),
        stopped.clone(),
    );
    if let Some(outbound) = outbound {
        tasks.spawn(outbound.receive());
    }
    let sockets = udp.sockets(listeners.udp)?;
    if let Some(store) = &context.sessions {
        udp.restore(store.load(), &sockets);
        tasks.spawn(Arc::clone(&udp).keep_saved(Arc::clone(store)));
    }
    for socket in sockets {
        tasks.spawn(Arc::clone(&udp).receive(socket));
    }
    let streams = stream::Front::new(config, limits, Arc::clone(&pipeline), stopped);
    context
        .directory
        .attach(udp.sessions(), &streams.registry());
    for listener in listeners.tcp {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tasks.spawn(Arc::clone(&streams).accept(listener, None));
    }
    for listener in listeners.tls {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tasks.spawn(Arc::clone(&streams).accept(listener, listeners.certificate.clone()));
    }
    // The ban table's followers live as long as this run: they are held weakly.
    let policy = &pipeline.policy;
    policy.subscribe(Arc::new(Follow(Arc::downgrade(&streams.registry()))));
    policy.subscribe(Arc::new(Follow(Arc::downgrade(&pipeline))));
    tasks.spawn(sweep(Arc::clone(&pipeline)));
    shutdown.await;
    let _ = stop.send(true);
    tasks.shutdown().await;
    Ok(())
}

/// Drops expired policy state now and then (which publishes the expiries), and publishes the
/// table sizes.
async fn sweep(pipeline: Arc<Pipeline>) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    loop {
        ticks.tick().await;
        pipeline.policy.sweep(pipeline.now());
        pipeline.metrics.policy_stats(pipeline.policy.stats());
    }
}

/// Passes ban events to a follower for as long as it lives.
struct Follow<T>(Weak<T>);

impl<T: Observer + Send + Sync> Observer for Follow<T> {
    fn changed(&self, event: &Change) {
        if let Some(follower) = self.0.upgrade() {
            follower.changed(event);
        }
    }
}

impl Observer for Pipeline {
    fn changed(&self, event: &Change) {
        self.metrics.bans().changed(event);
    }
}
