//! The stream front: SIP over TCP and TLS.
//!
//! Each accepted client connection gets a task and, once it has sent a message worth
//! forwarding, its own TCP connection to the PBX, which lives exactly as long as the client's
//! (Asterisk drops a TCP registration when its connection closes). Whatever the PBX sends on it,
//! responses and the requests it starts itself, goes back on the client's connection; nothing
//! is rewritten. Client bytes are framed by Content-Length (RFC 3261 section 18.3) and each
//! message goes through the same policy as a UDP datagram; double-CRLF pings are answered here
//! with a CRLF pong (RFC 5626 section 4.4.1) and not forwarded.
//!
//! Limits, each closing or refusing the connection and counted: connections in total and per
//! source address (at accept), the first message within `message_timeout` of connecting, then a
//! started message finished within `message_timeout` (slowloris), what is sent to the client
//! taken within `message_timeout` (a client that stops reading), the idle timeout, and the
//! message size. A framing error closes the connection rather than answering 400: without a
//! usable Content-Length the rest of the stream cannot be split into messages, and sipguard
//! never speaks SIP itself (drops are silent, as Kamailio's and Asterisk's are to scanners).
//!
//! A ban closes the source's connections at once, whichever way it was made (a message on the
//! connection itself, a rule over UDP or another connection, the operator): the connection
//! registry follows the policy's ban events.

use crate::connections::{Admission, Entry, Refusal, Registry};
use crate::metrics::{Closed, ConnectionCounters, PacketCounters, Refused, Sampler};
use crate::pipeline::{Pipeline, Step};
use crate::tls::TlsReload;
use crate::{Binding, RelayConfig, Transport};
use sipguard_policy::{Answer, Exchange, RequestMemo};
use sipguard_sip::{next_frame, Frame};
use socket2::{Domain, Protocol, Socket, Type};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info};

/// Pause after a failed accept (out of descriptors), so the loop does not spin on it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 4096;

/// Validated limits of the stream front (TCP and TLS alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// Client connections open at once, TCP and TLS together; more are refused at accept.
    pub max_connections: usize,
    /// Client connections open at once from one source address.
    pub max_connections_per_ip: usize,
    /// A connection with nothing either way for this long is closed.
    pub idle_timeout: Duration,
    /// A new connection must complete its first message, and a started message must be
    /// complete, within this long; the TLS handshake too.
    pub message_timeout: Duration,
}

/// Binds a TCP listener. IPv6 listeners are IPv6-only, as for UDP, and the address may be
/// reused at once after a restart (connections of the previous process may be in TIME_WAIT).
pub fn bind_tcp(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

pub(crate) struct Front {
    relay: RelayConfig,
    limits: StreamConfig,
    pipeline: Arc<Pipeline>,
    registry: Arc<Registry>,
    shutdown: watch::Receiver<bool>,
}

/// How a connection's relay loop ends: it only ever ends closed, for a reason.
type Outcome = Result<Infallible, Closed>;

impl Front {
    pub fn new(
        relay: RelayConfig,
        limits: StreamConfig,
        pipeline: Arc<Pipeline>,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Self> {
        Arc::new(Front {
            registry: Arc::new(Registry::new(
                limits.max_connections,
                limits.max_connections_per_ip,
            )),
            relay,
            limits,
            pipeline,
            shutdown,
        })
    }

    /// The open connections, by source: it follows the ban table to close banned sources'.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    fn connections(&self, transport: Transport) -> &ConnectionCounters {
        self.pipeline.metrics.connections(transport)
    }

    /// Accepts connections on one listener: TLS when it comes with a certificate.
    pub async fn accept(self: Arc<Self>, listener: TcpListener, certificate: Option<TlsReload>) {
        let transport = match certificate {
            None => Transport::Tcp,
            Some(_) => Transport::Tls,
        };
        let metrics = self.connections(transport);
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if let Err(reason) = self
                .pipeline
                .policy
                .check_source(client.ip(), self.pipeline.now())
            {
                metrics.refused(Refused::Source(reason));
                debug!(%client, reason = reason.as_str(), "connection refused");
                continue;
            }
            let admission = match self.registry.admit(client.ip()) {
                Ok(admission) => admission,
                Err(refusal) => {
                    metrics.refused(match refusal {
                        Refusal::Total => Refused::ConnectionLimit,
                        Refusal::PerIp => Refused::PerIpLimit,
                    });
                    debug!(%client, ?refusal, "connection refused");
                    continue;
                }
            };
            metrics.total.increment(1);
            metrics.active.increment(1.0);
            let acceptor = certificate.as_ref().map(TlsReload::acceptor);
            tokio::spawn(Arc::clone(&self).connection(stream, client, admission, acceptor));
        }
    }

    /// One client connection, from accept (and TLS handshake) to close.
    async fn connection(
        self: Arc<Self>,
        stream: TcpStream,
        client: SocketAddr,
        admission: Admission,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) {
        let _ = stream.set_nodelay(true);
        // The address the client connected to (on a wildcard listener, the one it chose).
        let local = stream
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let transport = match acceptor {
            None => Transport::Tcp,
            Some(_) => Transport::Tls,
        };
        let outcome = match acceptor {
            None => {
                self.serve(stream, client, local, &admission, transport)
                    .await
            }
            // Boxed: the handshake's state is large and plain TCP connections need none of it.
            Some(acceptor) => {
                Box::pin(self.serve_tls(acceptor, stream, client, local, &admission)).await
            }
        };
        let metrics = self.connections(transport);
        let Err(reason) = outcome;
        metrics.closed(reason);
        metrics.active.decrement(1.0);
        debug!(%client, ?reason, "connection closed");
    }

    /// The TLS handshake (within the message timeout), then [`Front::serve`] over TLS.
    async fn serve_tls(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: TcpStream,
        client: SocketAddr,
        local: SocketAddr,
        admission: &Admission,
    ) -> Outcome {
        let handshake = tokio::time::timeout(self.limits.message_timeout, acceptor.accept(stream));
        match handshake.await {
            Ok(Ok(tls)) => {
                self.serve(tls, client, local, admission, Transport::Tls)
                    .await
            }
            Ok(Err(error)) => {
                debug!(%client, %error, "TLS handshake failed");
                Err(Closed::TlsHandshake)
            }
            Err(_) => {
                debug!(%client, "TLS handshake timed out");
                Err(Closed::TlsHandshake)
            }
        }
    }

    /// Relays between the client and its upstream connection until one of them ends or a limit
    /// is hit. Buffers are dropped whenever they empty, so an idle connection holds none.
    async fn serve<S: AsyncRead + AsyncWrite>(
        &self,
        stream: S,
        client: SocketAddr,
        local: SocketAddr,
        admission: &Admission,
        transport: Transport,
    ) -> Outcome {
        let (mut client_read, mut client_write) = tokio::io::split(stream);
        let mut shutdown = self.shutdown.clone();
        let mut conn = Connection {
            front: self,
            entry: admission.entry(),
            transport,
            packets: self.pipeline.metrics.packets(transport),
            client,
            local,
            upstream: None,
            exchange: Exchange::stream(),
            seen_message: false,
            sampler: Sampler::default(),
        };
        let mut from_client = Vec::new();
        let mut from_pbx = Vec::new();
        let mut last_active = Instant::now();
        // When the first byte of the message still incomplete in `from_client` arrived.
        let mut partial_since: Option<Instant> = None;
        loop {
            let deadline = conn.deadline(last_active, partial_since);
            tokio::select! {
                read = read_some(&mut client_read, &mut from_client) => {
                    if read.map_err(|_| Closed::Client)? == 0 {
                        return Err(Closed::Client);
                    }
                    last_active = Instant::now();
                    let framed = conn.on_client_bytes(&mut from_client, &mut client_write).await?;
                    partial_since = match (from_client.is_empty(), framed, partial_since) {
                        (true, _, _) => None,
                        (false, 0, Some(since)) => Some(since),
                        (false, _, _) => Some(last_active),
                    };
                }
                read = read_upstream(&mut conn.upstream, &mut from_pbx) => {
                    if read.map_err(|_| Closed::Upstream)? == 0 {
                        return Err(Closed::Upstream);
                    }
                    last_active = Instant::now();
                    conn.on_pbx_bytes(&mut from_pbx, &mut client_write).await?;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(if partial_since.is_some_and(|since| since + self.limits.message_timeout <= deadline) {
                        Closed::MessageTimeout
                    } else if conn.seen_message {
                        Closed::Idle
                    } else {
                        Closed::MessageTimeout
                    });
                }
                () = admission.entry().closed() => return Err(Closed::Banned),
                _ = shutdown.changed() => return Err(Closed::Shutdown),
            }
        }
    }
}

/// The state of one client connection besides its buffers.
struct Connection<'f> {
    front: &'f Front,
    /// The connection's entry in the registry, where its binding is published.
    entry: &'f Entry,
    transport: Transport,
    packets: &'f PacketCounters,
    client: SocketAddr,
    /// The sipguard address the client connected to.
    local: SocketAddr,
    /// Opened with the first message forwarded.
    upstream: Option<TcpStream>,
    /// What the policy keeps of this connection's exchange with the PBX (requests awaiting
    /// their answers), so the PBX's responses can be judged.
    exchange: Exchange,
    /// Whether a whole message has arrived: until then the connection gets `message_timeout`
    /// rather than the idle timeout, so a connection that sends nothing cannot sit on a slot.
    seen_message: bool,
    /// Picks the messages whose processing time is recorded.
    sampler: Sampler,
}

impl Connection<'_> {
    fn binding(&self, upstream: &TcpStream) -> io::Result<Binding> {
        Ok(Binding {
            transport: self.transport,
            client: self.client,
            local: self.local,
            upstream: upstream.local_addr()?,
        })
    }

    fn deadline(&self, last_active: Instant, partial_since: Option<Instant>) -> Instant {
        let limits = &self.front.limits;
        let idle = if self.seen_message {
            limits.idle_timeout
        } else {
            limits.message_timeout
        };
        let idle_deadline = last_active + idle;
        match partial_since {
            Some(since) => idle_deadline.min(since + limits.message_timeout),
            None => idle_deadline,
        }
    }

    /// Handles every whole frame at the start of `buf` and removes it; returns how many.
    async fn on_client_bytes<W: AsyncWrite + Unpin>(
        &mut self,
        buf: &mut Vec<u8>,
        client_write: &mut W,
    ) -> Result<usize, Closed> {
        let max = self.front.pipeline.policy.max_message_size();
        let mut consumed = 0;
        let mut frames = 0;
        let result = loop {
            let frame = match next_frame(&buf[consumed..], max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(frames),
                Err(error) => {
                    self.packets.received.increment(1);
                    self.packets.framing_drop(error);
                    debug!(client = %self.client, %error, "stream cannot be framed");
                    break Err(match error {
                        sipguard_sip::FrameError::TooLarge => Closed::TooLarge,
                        _ => Closed::Framing,
                    });
                }
            };
            let bytes = &buf[consumed..consumed + frame.byte_len()];
            consumed += frame.byte_len();
            frames += 1;
            match frame {
                Frame::Blank => {}
                Frame::Ping => {
                    self.packets.keepalives.increment(1);
                    if let Err(closed) = self.write_to_client(client_write, b"\r\n").await {
                        break Err(closed);
                    }
                }
                Frame::Message(_) => {
                    self.seen_message = true;
                    if let Err(closed) = self.on_message(bytes, client_write).await {
                        break Err(closed);
                    }
                }
            }
        };
        buf.drain(..consumed);
        if buf.is_empty() {
            *buf = Vec::new();
        }
        result
    }

    async fn on_message<W: AsyncWrite + Unpin>(
        &mut self,
        message: &[u8],
        client_write: &mut W,
    ) -> Result<(), Closed> {
        let started = self.sampler.start();
        self.packets.received.increment(1);
        let pipeline = &self.front.pipeline;
        let outcome = match pipeline.request(message, self.client, self.transport, pipeline.now()) {
            // Only UDP carries the outbound path: a relayed response here is any client's.
            Step::Forward {
                message,
                memo,
                answer,
                ..
            } => self.forward(message, memo, answer).await,
            Step::Reply { response } => self.write_to_client(client_write, &response).await,
            Step::Keepalive | Step::Drop { banned: false } => Ok(()),
            Step::Drop { banned: true } => Err(Closed::Banned),
        };
        if let Some(started) = started {
            self.packets.processing.record(started.elapsed());
        }
        outcome
    }

    async fn forward(
        &mut self,
        message: &[u8],
        memo: Option<RequestMemo>,
        answer: Option<Answer>,
    ) -> Result<(), Closed> {
        if self.upstream.is_none() {
            self.upstream = Some(self.connect_upstream().await?);
        }
        self.front
            .pipeline
            .forwarded(self.client, memo, answer, &mut self.exchange);
        let upstream = self.upstream.as_mut().ok_or(Closed::UpstreamUnavailable)?;
        match upstream.write_all(message).await {
            Ok(()) => {
                self.packets.forwarded_to_pbx.increment(1);
                Ok(())
            }
            Err(error) => {
                self.packets.upstream_errors.increment(1);
                debug!(client = %self.client, %error, "send to pbx failed");
                Err(Closed::Upstream)
            }
        }
    }

    async fn connect_upstream(&self) -> Result<TcpStream, Closed> {
        let front = self.front;
        let connect = async {
            let socket = match front.relay.pbx {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            let identity = front.pipeline.policy.upstream_identity(self.client.ip());
            socket.bind(SocketAddr::new(
                identity.unwrap_or(front.relay.upstream_bind),
                0,
            ))?;
            let stream = socket.connect(front.relay.pbx).await?;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        };
        match tokio::time::timeout(front.limits.message_timeout, connect).await {
            Ok(Ok(stream)) => {
                if let Ok(binding) = self.binding(&stream) {
                    info!(client = %self.client, upstream = %binding.upstream, transport = %self.transport, "upstream connected");
                    self.entry.bound(binding);
                }
                Ok(stream)
            }
            failed => {
                self.packets.upstream_errors.increment(1);
                debug!(client = %self.client, ?failed, "no upstream connection");
                Err(Closed::UpstreamUnavailable)
            }
        }
    }

    /// Relays what the PBX sent to the client as it came, and feeds each whole response to the
    /// policy's failure and trust rules on the way.
    async fn on_pbx_bytes<W: AsyncWrite + Unpin>(
        &mut self,
        buf: &mut Vec<u8>,
        client_write: &mut W,
    ) -> Result<(), Closed> {
        let max = self
            .front
            .pipeline
            .policy
            .max_message_size()
            .max(u16::MAX as usize);
        let mut consumed = 0;
        let result = loop {
            let frame = match next_frame(&buf[consumed..], max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(error) => {
                    // sipguard no longer knows where the PBX's messages end.
                    self.packets.upstream_errors.increment(1);
                    debug!(client = %self.client, %error, "the PBX's stream cannot be framed");
                    break Err(Closed::Upstream);
                }
            };
            let bytes = &buf[consumed..consumed + frame.byte_len()];
            consumed += frame.byte_len();
            let is_message = matches!(frame, Frame::Message(_));
            if is_message {
                self.front
                    .pipeline
                    .response(bytes, self.client, &mut self.exchange);
            }
            if let Err(closed) = self.write_to_client(client_write, bytes).await {
                break Err(closed);
            }
            if is_message {
                self.packets.forwarded_to_client.increment(1);
            }
        };
        buf.drain(..consumed);
        if buf.is_empty() {
            *buf = Vec::new();
        }
        result
    }

    /// Writes to the client, giving up after the message timeout: a client that does not read
    /// would otherwise hold this task, and with it the PBX's side, indefinitely.
    async fn write_to_client<W: AsyncWrite + Unpin>(
        &self,
        client_write: &mut W,
        bytes: &[u8],
    ) -> Result<(), Closed> {
        let limit = self.front.limits.message_timeout;
        match tokio::time::timeout(limit, client_write.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.packets.client_send_errors.increment(1);
                Err(Closed::Client)
            }
            Err(_) => {
                self.packets.client_send_errors.increment(1);
                Err(Closed::WriteTimeout)
            }
        }
    }
}

/// Waits for bytes and appends what is there (at most [`READ_CHUNK`] bytes); 0 at end of stream.
/// The wait uses a one-byte buffer, so an idle connection holds no read buffer: the room for the
/// rest is made only once bytes have arrived, and filled without waiting again.
async fn read_some<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut first = [0u8; 1];
    if reader.read(&mut first).await? == 0 {
        return Ok(0);
    }
    buf.push(first[0]);
    let start = buf.len();
    buf.resize(start + READ_CHUNK - 1, 0);
    let more = std::future::poll_fn(|cx| {
        let mut room = tokio::io::ReadBuf::new(&mut buf[start..]);
        match std::pin::Pin::new(&mut *reader).poll_read(cx, &mut room) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Ok(room.filled().len())),
            std::task::Poll::Ready(Err(error)) => std::task::Poll::Ready(Err(error)),
            // Nothing more yet: what has arrived is enough for now.
            std::task::Poll::Pending => std::task::Poll::Ready(Ok(0)),
        }
    })
    .await;
    let more = more.unwrap_or(0);
    buf.truncate(start + more);
    Ok(1 + more)
}

/// Reads from the PBX, or waits forever while there is no upstream connection yet.
async fn read_upstream(upstream: &mut Option<TcpStream>, buf: &mut Vec<u8>) -> io::Result<usize> {
    match upstream {
        Some(stream) => read_some(stream, buf).await,
        None => std::future::pending().await,
    }
}
