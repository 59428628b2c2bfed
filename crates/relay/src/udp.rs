//! The UDP front: receive loops on each listener (one per core, on sibling SO_REUSEPORT sockets),
//! and one task per client session that carries what the PBX sends back.
//!
//! The front loop owns the only large receive buffers (one batch for `recvmmsg`, see
//! [`crate::batch`]); session tasks hold no buffer of their own
//! (they wait for readiness and read into a per-thread one), so an idle session costs a socket
//! and a parked task, not 64 KiB.

use crate::batch::{receive_destinations, send_from, RecvBatch};
use crate::metrics::{RelayDrop, Sampler};
use crate::outbound::Outbound;
use crate::pipeline::{Pipeline, Step};
use crate::session::{Refusal, Session, SessionTable};
use crate::socket::{bind_udp_sibling, connect_upstream};
use crate::{Binding, RelayConfig, SessionStore, Transport};
use sipguard_policy::{Answer, Exchange, PerSecond, RequestMemo};
use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Largest UDP payload: the receive buffers take any datagram whole, so that the policy sees
/// an oversized one as such instead of a truncated one.
pub(crate) const MAX_DATAGRAM: usize = 65_535;

/// Datagrams relayed from one upstream socket per wake-up, so one busy session cannot starve
/// the others on the same worker thread.
const DRAIN_BATCH: usize = 64;

/// How often the established sessions are handed to the [`SessionStore`] when they changed.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Session open and close lines logged at info level per second; past it they go to debug, so
/// a flood of forged sources cannot flood the log (the metrics count every session).
const SESSION_LINES_PER_SECOND: u32 = 20;

thread_local! {
    static UPSTREAM_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

pub(crate) struct Front {
    config: RelayConfig,
    pipeline: Arc<Pipeline>,
    /// The outbound path, when on (crate::outbound).
    outbound: Option<Arc<Outbound>>,
    sessions: Arc<SessionTable>,
    shutdown: watch::Receiver<bool>,
    /// Session lines logged at info level, [`SESSION_LINES_PER_SECOND`].
    session_lines: PerSecond,
}

impl Front {
    pub fn start(
        config: RelayConfig,
        pipeline: Arc<Pipeline>,
        outbound: Option<Arc<Outbound>>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Front {
            sessions: Arc::new(SessionTable::new(config.max_sessions)),
            config,
            pipeline,
            outbound,
            shutdown,
            session_lines: PerSecond::new(SESSION_LINES_PER_SECOND),
        })
    }

    pub fn sessions(&self) -> &Arc<SessionTable> {
        &self.sessions
    }

    /// Reopens the sessions a previous run saved, each on its old upstream port, so that what
    /// the PBX sends to a client it knew reaches it before the client is heard from again.
    pub fn restore(self: &Arc<Self>, bindings: Vec<Binding>, listeners: &[Arc<UdpSocket>]) {
        let mut restored = 0;
        for binding in bindings {
            let listener = listeners
                .iter()
                .find(|l| l.local_addr().is_ok_and(|addr| addr == binding.local))
                .or_else(|| {
                    listeners.iter().find(|l| {
                        l.local_addr()
                            .is_ok_and(|addr| addr.is_ipv4() == binding.client.is_ipv4())
                    })
                });
            let Some(listener) = listener else {
                warn!(client = %binding.client, local = %binding.local, "saved session not restored: no listener of its address family");
                continue;
            };
            let opened = self.open_session(
                binding.client,
                binding.local,
                listener,
                Exchange::restored(),
                binding.upstream,
            );
            match opened {
                Some(session) if session.upstream_addr == binding.upstream => restored += 1,
                _ => {
                    warn!(client = %binding.client, upstream = %binding.upstream, "saved session not restored: its upstream address could not be bound again")
                }
            }
        }
        if restored > 0 {
            info!(restored, "saved sessions restored");
        }
    }

    /// Hands the established sessions to `store` whenever they changed, and once more when the
    /// relay stops.
    pub async fn keep_saved(self: Arc<Self>, store: Arc<dyn SessionStore>) {
        let mut saved = Vec::new();
        let mut ticks = tokio::time::interval(SAVE_EVERY);
        let mut shutdown = self.shutdown.clone();
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = shutdown.changed() => true,
            };
            let mut established: Vec<Binding> = (self.sessions.sessions().iter())
                .filter(|session| session.exchange().is_established())
                .map(|session| session.binding())
                .collect();
            established.sort_unstable();
            if established != saved {
                let store = Arc::clone(&store);
                let bindings = established.clone();
                let written = tokio::task::spawn_blocking(move || store.save(&bindings)).await;
                match written {
                    Ok(Ok(())) => saved = established,
                    Ok(Err(error)) => warn!(%error, "established sessions could not be saved"),
                    Err(error) => warn!(%error, "saving the established sessions failed"),
                }
            }
            if stopping {
                return;
            }
        }
    }

    /// Logs a session's opening or closing at info level within [`SESSION_LINES_PER_SECOND`],
    /// else at debug level.
    fn log_session(&self, session: &Session, what: &'static str) {
        let within = self.session_lines.take(self.pipeline.now());
        let (client, upstream) = (session.client, session.upstream_addr);
        if within {
            info!(%client, %upstream, "{what}");
        } else {
            debug!(%client, %upstream, "{what}");
        }
    }

    /// The sockets to receive on: each listener and, per extra core, a sibling on its address
    /// (SO_REUSEPORT), so a flood is drained by every core while a client's packets, hashed by
    /// the kernel to one socket, stay in order.
    pub fn sockets(&self, listeners: Vec<std::net::UdpSocket>) -> io::Result<Vec<Arc<UdpSocket>>> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let mut sockets = Vec::new();
        for listener in listeners {
            let address = listener.local_addr()?;
            let mut group = vec![listener];
            for _ in 1..workers {
                group.push(bind_udp_sibling(address)?);
            }
            for socket in group {
                // A wildcard listener learns each datagram's destination, to answer from it.
                if address.ip().is_unspecified() {
                    receive_destinations(&socket, address.is_ipv6())?;
                }
                sockets.push(Arc::new(UdpSocket::from_std(socket)?));
            }
        }
        Ok(sockets)
    }

    /// The receive loop of one listener socket.
    pub async fn receive(self: Arc<Self>, listener: Arc<UdpSocket>) {
        let mut batch = RecvBatch::new(MAX_DATAGRAM);
        let mut sampler = Sampler::default();
        let packets = self.pipeline.metrics.packets(Transport::Udp);
        let bound = match listener.local_addr() {
            Ok(bound) => bound,
            Err(error) => {
                warn!(%error, "udp listener has no local address");
                return;
            }
        };
        loop {
            if let Err(error) = listener.readable().await {
                debug!(%error, "udp listener failed");
                continue;
            }
            let count = match listener.try_io(Interest::READABLE, || batch.recv(&*listener)) {
                Ok(count) => count,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => {
                    debug!(%error, "udp receive failed");
                    continue;
                }
            };
            packets.received.increment(count as u64);
            // One clock read per batch: its datagrams were all queued when it was taken.
            let now = self.pipeline.now();
            for i in 0..count {
                if let (datagram, Some(client), destination) = batch.get(i) {
                    let local = SocketAddr::new(destination.unwrap_or(bound.ip()), bound.port());
                    let started = sampler.start();
                    match self.pipeline.request(datagram, client, Transport::Udp, now) {
                        Step::Forward {
                            message,
                            memo,
                            answer,
                            relayed_response,
                        } => match &self.outbound {
                            // Outbound path: a carrier's answer to a request relayed for the PBX.
                            Some(outbound) if relayed_response => outbound.response(message).await,
                            _ => {
                                self.forward(message, memo, answer, client, local, &listener)
                                    .await
                            }
                        },
                        Step::Keepalive => {
                            if let Some(session) = self.sessions.get(&client) {
                                self.sessions.touch(&session);
                            }
                        }
                        Step::Reply { response } => {
                            self.reply(&response, client, destination, &listener).await;
                        }
                        Step::Drop { .. } => {}
                    }
                    if let Some(started) = started {
                        packets.processing.record(started.elapsed());
                    }
                }
            }
        }
    }

    async fn forward(
        self: &Arc<Self>,
        message: &[u8],
        memo: Option<RequestMemo>,
        answer: Option<Answer>,
        client: SocketAddr,
        local: SocketAddr,
        listener: &Arc<UdpSocket>,
    ) {
        let session = match self.sessions.get(&client) {
            Some(session) => session,
            None => {
                let identity = self.pipeline.policy.upstream_identity(client.ip());
                let upstream = SocketAddr::new(identity.unwrap_or(self.config.upstream_bind), 0);
                match self.open_session(client, local, listener, Exchange::datagram(), upstream) {
                    Some(session) => session,
                    None => return,
                }
            }
        };
        self.sessions.touch(&session);
        self.pipeline
            .forwarded(client, memo, answer, &mut session.exchange());
        let packets = self.pipeline.metrics.packets(Transport::Udp);
        // Outbound path: sipguard's own Route entries leave a carrier's in-dialog request.
        let message = match &self.outbound {
            Some(outbound) => outbound.inbound(message),
            None => std::borrow::Cow::Borrowed(message),
        };
        // Awaited rather than tried: a new socket's write readiness is only known after the
        // reactor's next turn, and a send to loopback does not otherwise wait.
        match session.upstream.send(&message).await {
            Ok(_) => packets.forwarded_to_pbx.increment(1),
            Err(error) => {
                packets.upstream_errors.increment(1);
                debug!(%client, %error, "send to pbx failed");
            }
        }
    }

    /// Sends a response sipguard made itself (a refused call's 403) to `client`, from
    /// `destination`, the address its request was sent to (known on a wildcard listener).
    async fn reply(
        &self,
        response: &[u8],
        client: SocketAddr,
        destination: Option<IpAddr>,
        listener: &UdpSocket,
    ) {
        let sent = listener
            .async_io(Interest::WRITABLE, || {
                send_to_client(listener, response, client, destination)
            })
            .await;
        match sent {
            Ok(_) => self.packets().forwarded_to_client.increment(1),
            Err(error) => self.client_send_failed(client, &error),
        }
    }

    /// Opens a session for `client`, which sent to `local` (on `listener`), with its upstream
    /// socket bound to `upstream`.
    fn open_session(
        self: &Arc<Self>,
        client: SocketAddr,
        local: SocketAddr,
        listener: &Arc<UdpSocket>,
        exchange: Exchange,
        upstream: SocketAddr,
    ) -> Option<Arc<Session>> {
        // Only a wildcard listener needs to be told which address to answer from.
        let wildcard = listener
            .local_addr()
            .is_ok_and(|bound| bound.ip().is_unspecified());
        let reply_from = (wildcard && !local.ip().is_unspecified()).then_some(local.ip());
        let opened = self
            .sessions
            .open(client, (local, reply_from), exchange, || {
                connect_upstream(upstream, self.config.pbx)
            });
        match opened {
            Ok((session, created)) => {
                if created {
                    self.pipeline
                        .metrics
                        .sessions_active
                        .set(self.sessions.len() as f64);
                    tokio::spawn(
                        Arc::clone(self).serve_session(Arc::clone(&session), Arc::clone(listener)),
                    );
                    self.log_session(&session, "session opened");
                }
                Some(session)
            }
            Err(Refusal::Full) => {
                self.packets().relay_drop(RelayDrop::SessionLimit);
                debug!(%client, "session table full, client refused");
                None
            }
            Err(Refusal::Socket(error)) => {
                self.packets().relay_drop(RelayDrop::UpstreamUnavailable);
                debug!(%client, %upstream, %error, "no upstream socket for client");
                None
            }
        }
    }

    /// Carries what the PBX sends on this session's socket back to the client, until the
    /// session has been idle for `session_idle` or the relay stops.
    async fn serve_session(self: Arc<Self>, session: Arc<Session>, listener: Arc<UdpSocket>) {
        let idle = self.config.session_idle;
        let mut shutdown = self.shutdown.clone();
        let timer = tokio::time::sleep_until(self.sessions.idle_deadline(&session, idle));
        tokio::pin!(timer);
        loop {
            tokio::select! {
                ready = session.upstream.readable() => match ready {
                    Ok(()) => self.relay_to_client(&session, &listener).await,
                    Err(error) => {
                        debug!(client = %session.client, %error, "upstream socket failed");
                        break;
                    }
                },
                () = session.evicted() => {
                    let metrics = &self.pipeline.metrics;
                    metrics.sessions_evicted.increment(1);
                    metrics.sessions_active.set(self.sessions.len() as f64);
                    self.log_session(&session, "session evicted to make room");
                    return;
                }
                () = &mut timer => {
                    if self.sessions.remove_if_idle(&session, idle) {
                        let metrics = &self.pipeline.metrics;
                        metrics.sessions_expired.increment(1);
                        metrics.sessions_active.set(self.sessions.len() as f64);
                        self.log_session(&session, "session expired");
                        return;
                    }
                    timer.as_mut().reset(self.sessions.idle_deadline(&session, idle));
                }
                _ = shutdown.changed() => return,
            }
        }
        self.sessions.remove(&session);
        self.pipeline
            .metrics
            .sessions_active
            .set(self.sessions.len() as f64);
    }

    fn packets(&self) -> &crate::metrics::PacketCounters {
        self.pipeline.metrics.packets(Transport::Udp)
    }

    /// Relays what is waiting on the session's socket. Sends to the client are tried without
    /// waiting; when the public socket's buffer is full, the datagram is copied out of the shared
    /// buffer and sent once the socket is writable again, so no reply or PBX request is lost.
    async fn relay_to_client(&self, session: &Session, listener: &UdpSocket) {
        let blocked = UPSTREAM_BUF.with_borrow_mut(|buf| {
            for _ in 0..DRAIN_BATCH {
                let len = match session.upstream.try_recv(buf) {
                    Ok(len) => len,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => return None,
                    // An ICMP error from an earlier send (the PBX not listening): counted, and
                    // the session stays, since the PBX may come back.
                    Err(error) => {
                        self.packets().upstream_errors.increment(1);
                        debug!(client = %session.client, %error, "upstream receive failed");
                        continue;
                    }
                };
                self.sessions.touch(session);
                self.pipeline
                    .response(&buf[..len], session.client, &mut session.exchange());
                match send_to_client(listener, &buf[..len], session.client, session.reply_from) {
                    Ok(_) => self.packets().forwarded_to_client.increment(1),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return Some(buf[..len].to_vec());
                    }
                    Err(error) => self.client_send_failed(session.client, &error),
                }
            }
            None
        });
        if let Some(datagram) = blocked {
            let sent = listener
                .async_io(Interest::WRITABLE, || {
                    send_to_client(listener, &datagram, session.client, session.reply_from)
                })
                .await;
            match sent {
                Ok(_) => self.packets().forwarded_to_client.increment(1),
                Err(error) => self.client_send_failed(session.client, &error),
            }
        }
    }

    fn client_send_failed(&self, client: SocketAddr, error: &io::Error) {
        self.packets().client_send_errors.increment(1);
        debug!(%client, %error, "send to client failed");
    }
}

/// Sends to `client` without waiting, from `from` when the listener is a wildcard one (the
/// address the client sent to), else from the listener's own address.
fn send_to_client(
    listener: &UdpSocket,
    datagram: &[u8],
    client: SocketAddr,
    from: Option<IpAddr>,
) -> io::Result<usize> {
    match from {
        None => listener.try_send_to(datagram, client),
        Some(from) => listener.try_io(Interest::WRITABLE, || {
            send_from(listener, datagram, client, from)
        }),
    }
}
