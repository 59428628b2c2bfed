//! The UDP front: receive loops on each listener (one per core, on sibling SO_REUSEPORT sockets),
//! and one task per client session that carries what the PBX sends back.
//!
//! The front loop owns the only large receive buffers (one batch for `recvmmsg`, see
//! [`crate::batch`]); session tasks hold no buffer of their own
//! (they wait for readiness and read into a per-thread one), so an idle session costs a socket
//! and a parked task, not 64 KiB.

use crate::batch::RecvBatch;
use crate::metrics::{RelayDrop, Sampler};
use crate::pipeline::{Pipeline, Step};
use crate::session::{Refusal, Session, SessionTable};
use crate::socket::{bind_udp_sibling, connect_upstream};
use crate::{RelayConfig, Transport};
use sipguard_policy::{Answer, RequestMemo};
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::debug;

/// Largest UDP payload: the receive buffers take any datagram whole, so that the policy sees
/// an oversized one as such instead of a truncated one.
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams relayed from one upstream socket per wake-up, so one busy session cannot starve
/// the others on the same worker thread.
const DRAIN_BATCH: usize = 64;

thread_local! {
    static UPSTREAM_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

pub(crate) struct Front {
    config: RelayConfig,
    pipeline: Arc<Pipeline>,
    sessions: SessionTable,
    shutdown: watch::Receiver<bool>,
}

impl Front {
    pub fn start(
        config: RelayConfig,
        pipeline: Arc<Pipeline>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Front {
            sessions: SessionTable::new(config.max_sessions),
            config,
            pipeline,
            shutdown,
        })
    }

    /// The sockets to receive on: each listener and, per extra core, a sibling on its address
    /// (SO_REUSEPORT), so a flood is drained by every core while a client's packets, hashed by
    /// the kernel to one socket, stay in order.
    pub fn sockets(&self, listeners: Vec<std::net::UdpSocket>) -> io::Result<Vec<Arc<UdpSocket>>> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let mut sockets = Vec::new();
        for listener in listeners {
            let address = listener.local_addr()?;
            sockets.push(Arc::new(UdpSocket::from_std(listener)?));
            for _ in 1..workers {
                sockets.push(Arc::new(UdpSocket::from_std(bind_udp_sibling(address)?)?));
            }
        }
        Ok(sockets)
    }

    /// The receive loop of one listener socket.
    pub async fn receive(self: Arc<Self>, listener: Arc<UdpSocket>) {
        let mut batch = RecvBatch::new(MAX_DATAGRAM);
        let mut sampler = Sampler::default();
        let packets = self.pipeline.metrics.packets(Transport::Udp);
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
                if let (datagram, Some(client)) = batch.get(i) {
                    let started = sampler.start();
                    match self.pipeline.request(datagram, client, Transport::Udp, now) {
                        Step::Forward {
                            message,
                            memo,
                            answer,
                        } => {
                            self.forward(message, memo, answer, client, &listener).await;
                        }
                        Step::Keepalive => {
                            if let Some(session) = self.sessions.get(&client) {
                                self.sessions.touch(&session);
                            }
                        }
                        Step::Reply { response } => self.reply(&response, client, &listener).await,
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
        self.pipeline
            .forwarded(client, memo, answer, &mut session.exchange());
        let packets = self.pipeline.metrics.packets(Transport::Udp);
        // Awaited rather than tried: a new socket's write readiness is only known after the
        // reactor's next turn, and a send to loopback does not otherwise wait.
        match session.upstream.send(message).await {
            Ok(_) => packets.forwarded_to_pbx.increment(1),
            Err(error) => {
                packets.upstream_errors.increment(1);
                debug!(%client, %error, "send to pbx failed");
            }
        }
    }

    /// Sends a response sipguard made itself (a refused call's 403) to `client`.
    async fn reply(&self, response: &[u8], client: SocketAddr, listener: &UdpSocket) {
        match listener.send_to(response, client).await {
            Ok(_) => self.packets().forwarded_to_client.increment(1),
            Err(error) => {
                self.packets().client_send_errors.increment(1);
                debug!(%client, %error, "reply to client failed");
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
                    self.pipeline
                        .metrics
                        .sessions_active
                        .set(self.sessions.len() as f64);
                    tokio::spawn(
                        Arc::clone(self).serve_session(Arc::clone(&session), Arc::clone(listener)),
                    );
                    debug!(%client, upstream = ?session.upstream.local_addr().ok(), "session opened");
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
                () = session.evicted() => {
                    let metrics = &self.pipeline.metrics;
                    metrics.sessions_evicted.increment(1);
                    metrics.sessions_active.set(self.sessions.len() as f64);
                    debug!(client = %session.client, "session evicted to make room");
                    return;
                }
                () = &mut timer => {
                    if self.sessions.remove_if_idle(&session, idle) {
                        let metrics = &self.pipeline.metrics;
                        metrics.sessions_expired.increment(1);
                        metrics.sessions_active.set(self.sessions.len() as f64);
                        debug!(client = %session.client, "session expired");
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
                match listener.try_send_to(&buf[..len], session.client) {
                    Ok(_) => self.packets().forwarded_to_client.increment(1),
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
                Ok(_) => self.packets().forwarded_to_client.increment(1),
                Err(error) => self.client_send_failed(session, &error),
            }
        }
    }

    fn client_send_failed(&self, session: &Session, error: &io::Error) {
        self.packets().client_send_errors.increment(1);
        debug!(client = %session.client, %error, "send to client failed");
    }
}
