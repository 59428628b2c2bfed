//! The UDP front: receive loops on each listener (one per core, on sibling SO_REUSEPORT sockets),
//! and one task per client session that carries what the PBX sends back.
//!
//! The front loop owns the only large receive buffers (one batch for `recvmmsg`, see
//! [`crate::batch`]); session tasks hold no buffer of their own
//! (they wait for readiness and read into a per-thread one), so an idle session costs a socket
//! and a parked task, not 64 KiB.

use crate::batch::RecvBatch;
use crate::metrics::{RelayDrop, Sampler, UdpMetrics};
use crate::session::{Refusal, Session, SessionTable};
use crate::socket::{bind_udp_sibling, connect_upstream};
use crate::{BanSink, RelayConfig};
use sipguard_policy::{Event, Policy, Timestamp, Verdict};
use sipguard_sip::SipView;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

/// Largest UDP payload: the receive buffers take any datagram whole, so that the policy sees
/// an oversized one as such instead of a truncated one.
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams relayed from one upstream socket per wake-up, so one busy session cannot starve
/// the others on the same worker thread.
const DRAIN_BATCH: usize = 64;

/// How often expired bans and evidence are swept from the policy's tables.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

thread_local! {
    static UPSTREAM_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

struct Relay {
    config: RelayConfig,
    policy: Arc<Policy>,
    sessions: SessionTable,
    metrics: UdpMetrics,
    bans: Option<Arc<dyn BanSink>>,
    shutdown: watch::Receiver<bool>,
}

/// Relays between clients on `listeners` and the PBX until `shutdown` completes.
pub async fn run(
    config: RelayConfig,
    listeners: Vec<std::net::UdpSocket>,
    policy: Arc<Policy>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_with_sink(config, listeners, policy, None, shutdown).await
}

/// Like [`run`], handing every ban the relay issues to `bans` (which then logs it).
pub async fn run_with_sink(
    config: RelayConfig,
    listeners: Vec<std::net::UdpSocket>,
    policy: Arc<Policy>,
    bans: Option<Arc<dyn BanSink>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (stop, stopped) = watch::channel(false);
    let relay = Arc::new(Relay {
        sessions: SessionTable::new(config.max_sessions),
        config,
        policy,
        metrics: UdpMetrics::new(),
        bans,
        shutdown: stopped,
    });
    let mut fronts = JoinSet::new();
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    for listener in listeners {
        // Siblings on the same address (SO_REUSEPORT): the kernel hashes each client to one of
        // them, so a flood is drained by every core while a client's packets stay in order.
        let address = listener.local_addr()?;
        let mut sockets = vec![listener];
        for _ in 1..workers {
            sockets.push(bind_udp_sibling(address)?);
        }
        for socket in sockets {
            let socket = Arc::new(UdpSocket::from_std(socket)?);
            fronts.spawn(Arc::clone(&relay).front(socket));
        }
    }
    fronts.spawn(Arc::clone(&relay).sweep());
    shutdown.await;
    let _ = stop.send(true);
    fronts.shutdown().await;
    Ok(())
}

impl Relay {
    async fn front(self: Arc<Self>, listener: Arc<UdpSocket>) {
        let mut batch = RecvBatch::new(MAX_DATAGRAM);
        let mut sampler = Sampler::default();
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
            self.metrics.packets.received.increment(count as u64);
            // One clock read per batch: its datagrams were all queued when it was taken.
            let now = Timestamp::from_system(SystemTime::now());
            for i in 0..count {
                if let (datagram, Some(client)) = batch.get(i) {
                    let started = sampler.start();
                    self.judge_request(datagram, client, now, &listener).await;
                    if let Some(started) = started {
                        self.metrics.processing.record(started.elapsed());
                    }
                }
            }
        }
    }

    async fn judge_request(
        self: &Arc<Self>,
        datagram: &[u8],
        client: SocketAddr,
        now: Timestamp,
        listener: &Arc<UdpSocket>,
    ) {
        let checked = self.policy.check_datagram(datagram, client.ip(), now);
        if let Some(event) = &checked.event {
            self.rule_event(event);
        }
        match checked.verdict {
            Verdict::Forward(view) => self.forward(&view, client, listener).await,
            Verdict::Keepalive => {
                self.metrics.packets.keepalives.increment(1);
                if let Some(session) = self.sessions.get(&client) {
                    self.sessions.touch(&session);
                }
            }
            Verdict::Drop(reason) => {
                self.metrics.packets.policy_drop(reason);
                debug!(%client, reason = reason.as_str(), len = datagram.len(), "dropped");
            }
        }
    }

    /// Counts and logs a rule hit, and hands a ban to the sink.
    fn rule_event(&self, event: &Event) {
        self.metrics.report(event, self.bans.as_ref());
    }

    async fn forward(
        self: &Arc<Self>,
        view: &SipView<'_>,
        client: SocketAddr,
        listener: &Arc<UdpSocket>,
    ) {
        let session = match self.sessions.get(&client) {
            Some(session) => session,
            None => match self.open_session(client, listener) {
                Some(session) => session,
                None => return,
            },
        };
        self.sessions.touch(&session);
        if let Some(memo) = self.policy.memo(view) {
            session.pending().remember(memo);
        }
        // Awaited rather than tried: a new socket's write readiness is only known after the
        // reactor's next turn, and a send to loopback does not otherwise wait.
        match session.upstream.send(view.message).await {
            Ok(_) => self.metrics.packets.forwarded_to_pbx.increment(1),
            Err(error) => {
                self.metrics.packets.upstream_errors.increment(1);
                debug!(%client, %error, "send to pbx failed");
            }
        }
    }

    fn open_session(
        self: &Arc<Self>,
        client: SocketAddr,
        listener: &Arc<UdpSocket>,
    ) -> Option<Arc<Session>> {
        let opened = self.sessions.open(client, || {
            connect_upstream(self.config.upstream_bind, self.config.pbx)
        });
        match opened {
            Ok((session, created)) => {
                if created {
                    self.metrics.sessions_active.set(self.sessions.len() as f64);
                    tokio::spawn(
                        Arc::clone(self).serve_session(Arc::clone(&session), Arc::clone(listener)),
                    );
                    debug!(%client, upstream = ?session.upstream.local_addr().ok(), "session opened");
                }
                Some(session)
            }
            Err(Refusal::Full) => {
                self.metrics.relay_drop(RelayDrop::SessionLimit);
                debug!(%client, "session table full, client refused");
                None
            }
            Err(Refusal::Socket(error)) => {
                self.metrics.relay_drop(RelayDrop::UpstreamUnavailable);
                debug!(%client, %error, "no upstream socket for client");
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
                () = &mut timer => {
                    if self.sessions.remove_if_idle(&session, idle) {
                        self.metrics.sessions_expired.increment(1);
                        self.metrics.sessions_active.set(self.sessions.len() as f64);
                        debug!(client = %session.client, "session expired");
                        return;
                    }
                    timer.as_mut().reset(self.sessions.idle_deadline(&session, idle));
                }
                _ = shutdown.changed() => return,
            }
        }
        self.sessions.remove(&session);
        self.metrics.sessions_active.set(self.sessions.len() as f64);
    }

    /// Feeds a PBX response to the policy's failure and trust rules. Whatever the verdict, the
    /// response itself is relayed: the client is owed its answer, and a ban stops what follows.
    fn judge_response(&self, session: &Session, datagram: &[u8]) {
        let Ok(response) = SipView::parse(datagram) else {
            return;
        };
        if response.status().is_none() {
            return;
        }
        let now = Timestamp::from_system(SystemTime::now());
        let judged =
            self.policy
                .judge_response(session.client.ip(), &response, &mut session.pending(), now);
        if let Some(method) = judged.auth_failure {
            self.metrics.auth_failure(method);
        }
        if let Some(event) = judged.event {
            self.rule_event(&event);
        }
    }

    /// Drops expired policy state now and then, and publishes the table sizes.
    async fn sweep(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(SWEEP_EVERY);
        loop {
            ticks.tick().await;
            self.policy.sweep(Timestamp::from_system(SystemTime::now()));
            self.metrics.policy_stats(self.policy.stats());
        }
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
                        self.metrics.packets.upstream_errors.increment(1);
                        debug!(client = %session.client, %error, "upstream receive failed");
                        continue;
                    }
                };
                self.sessions.touch(session);
                self.judge_response(session, &buf[..len]);
                match listener.try_send_to(&buf[..len], session.client) {
                    Ok(_) => self.metrics.packets.forwarded_to_client.increment(1),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        return Some(buf[..len].to_vec());
                    }
                    Err(error) => self.client_send_failed(session, &error),
                }
            }
            None
        });
        if let Some(datagram) = blocked {
            match listener.send_to(&datagram, session.client).await {
                Ok(_) => self.metrics.packets.forwarded_to_client.increment(1),
                Err(error) => self.client_send_failed(session, &error),
            }
        }
    }

    fn client_send_failed(&self, session: &Session, error: &io::Error) {
        self.metrics.packets.client_send_errors.increment(1);
        debug!(client = %session.client, %error, "send to client failed");
    }
}
