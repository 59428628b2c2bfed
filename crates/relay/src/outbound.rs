//! The outbound path: the PBX's requests to carriers (REGISTER, INVITE, OPTIONS, in-dialog BYE)
//! leave through sipguard, so the PBX listens on loopback only (docs/design.md, "Outbound path").
//!
//! The PBX names a loopback listener of sipguard as its outbound proxy. sipguard relays what
//! arrives there as a stateless RFC 3261 proxy ([`sipguard_sip::proxy`]): from its public UDP
//! socket, the one carriers send to, to the next Route entry or the Request-URI. A dialog's
//! first request is record-routed through both of sipguard's addresses, so the carrier's
//! in-dialog requests come back to the public socket and the PBX's go out through the listener
//! again. What comes back takes three ways:
//! - a response with sipguard's Via on top: the UDP front hands it here after the policy's
//!   source checks; its Via is checked and popped, and it goes to the PBX from the loopback
//!   listener (the address the PBX's route set names);
//! - a carrier's request: the normal inbound path (policy, the carrier's session), with
//!   sipguard's own Route entries removed on the way ([`Outbound::inbound`]);
//! - anything else on the listener is dropped and counted.
//!
//! Stateless: no table grows with calls. The branch is a keyed hash (the key random per
//! process), so only answers to what this process sent pass, and a restart loses the answers
//! to requests in flight (the PBX retransmits under a new branch).

use crate::metrics::{OutboundDrop, OutboundResult};
use crate::pipeline::{OutboundStep, Pipeline};
use sipguard_sip::proxy::{self, Identity};
use sipguard_sip::SipView;
use std::borrow::Cow;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;
use tracing::debug;

/// The outbound listener as bound, and the address carriers are to see.
#[derive(Debug)]
pub struct OutboundListener {
    /// Bound on loopback: the PBX's outbound proxy (`sip:ADDRESS;lr`).
    pub socket: std::net::UdpSocket,
    /// The public address written in Via and Record-Route; it must be one a UDP listener
    /// receives on. `None`: the first UDP listener's own address (which must not be a wildcard).
    pub public: Option<SocketAddr>,
}

/// The outbound path of one relay run.
pub(crate) struct Outbound {
    /// The loopback listener: the PBX's requests in, the carriers' responses out.
    inside: UdpSocket,
    /// A handle on the public UDP listener the carriers see: requests out (replies come back
    /// to that listener's receive loops). Non-blocking and never read from here.
    public: std::net::UdpSocket,
    /// When that listener is a wildcard: the public address requests leave from (with a
    /// pktinfo), so the carrier sees the address it is to answer and record-route to.
    send_as: Option<IpAddr>,
    me: Identity,
    /// Only the PBX's address may use the listener.
    pbx: IpAddr,
    /// Keys the branch hash.
    key: RandomState,
    pipeline: Arc<Pipeline>,
}

impl Outbound {
    /// Sets the path up on `listener`, sending through the UDP listener of `udp` that receives
    /// on the public address.
    pub fn new(
        listener: OutboundListener,
        udp: &[std::net::UdpSocket],
        pbx: SocketAddr,
        pipeline: Arc<Pipeline>,
    ) -> io::Result<Arc<Self>> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        let receives_on = |socket| {
            let local = std::net::UdpSocket::local_addr(socket).ok()?;
            let fits = match listener.public {
                None => true,
                Some(public) => {
                    local.port() == public.port()
                        && local.is_ipv4() == public.is_ipv4()
                        && (local.ip() == public.ip() || local.ip().is_unspecified())
                }
            };
            fits.then_some((socket, local))
        };
        let (socket, local) = udp.iter().find_map(receives_on).ok_or_else(|| {
            invalid(format!(
                "the outbound path needs a UDP listener receiving on its public address {}",
                listener.public.map_or("(any)".into(), |a| a.to_string())
            ))
        })?;
        let public = listener.public.unwrap_or(local);
        if public.ip().is_unspecified() {
            return Err(invalid(format!(
                "the outbound path needs a public address: the UDP listener {local} is a wildcard"
            )));
        }
        let inside = listener.socket.local_addr()?;
        listener.socket.set_nonblocking(true)?;
        let send = socket.try_clone()?;
        send.set_nonblocking(true)?;
        Ok(Arc::new(Outbound {
            inside: UdpSocket::from_std(listener.socket)?,
            public: send,
            send_as: local.ip().is_unspecified().then_some(public.ip()),
            me: Identity { public, inside },
            pbx: pbx.ip(),
            key: RandomState::new(),
            pipeline,
        }))
    }

    /// Receives the PBX's requests on the loopback listener until the relay stops.
    pub async fn receive(self: Arc<Self>) {
        let mut buf = vec![0; crate::udp::MAX_DATAGRAM];
        loop {
            match self.inside.recv_from(&mut buf).await {
                Ok((len, source)) => self.request(&buf[..len], source).await,
                Err(error) => debug!(%error, "outbound listener receive failed"),
            }
        }
    }

    /// One datagram from the loopback listener.
    async fn request(&self, datagram: &[u8], source: SocketAddr) {
        let counters = &self.pipeline.metrics.outbound;
        counters.received.increment(1);
        if source.ip() != self.pbx {
            counters.drop(OutboundDrop::NotPbx);
            debug!(%source, "outbound listener: not the PBX, dropped");
            return;
        }
        let Ok(view) = SipView::parse(datagram) else {
            counters.drop(OutboundDrop::Malformed);
            return;
        };
        if view.status().is_some() {
            counters.drop(OutboundDrop::UnexpectedResponse);
            return;
        }
        let now = self.pipeline.now();
        let refused = match self.pipeline.outbound(&view, now) {
            OutboundStep::Reject(status, reason) => Some((OutboundResult::Policy, status, reason)),
            OutboundStep::Forward => {
                match proxy::forward_request(&view, source, &self.me, &self.key) {
                    Ok(relayed) => {
                        let sent = match self.send_as {
                            Some(from) => crate::batch::send_from(
                                &self.public,
                                &relayed.message,
                                relayed.to,
                                from,
                            ),
                            None => self.public.send_to(&relayed.message, relayed.to),
                        };
                        match sent {
                            Ok(_) => counters.request(OutboundResult::Forwarded),
                            Err(error) => {
                                counters.drop(OutboundDrop::SendFailed);
                                debug!(to = %relayed.to, %error, "outbound send failed");
                            }
                        }
                        None
                    }
                    Err(refusal) => {
                        let (status, reason) = refusal.status();
                        Some((OutboundResult::Refused(refusal), status, reason))
                    }
                }
            }
        };
        if let Some((result, status, reason)) = refused {
            counters.request(result);
            debug!(status, method = ?view.method(), "outbound request answered by sipguard");
            let tag = self.key.hash_one((view.call_id, view.cseq.seq));
            if let Some(answer) = proxy::answer(&view, status, reason, tag) {
                self.send_inside(&answer, source).await;
            }
        }
    }

    /// A carrier's response carrying sipguard's Via (the UDP front found the mark): to the PBX.
    pub async fn response(&self, message: &[u8]) {
        let counters = &self.pipeline.metrics.outbound;
        let view = SipView::parse(message).ok();
        if let Some(view) = &view {
            // The carrier's final answer (or its 2xx to the PBX's BYE) ends an outbound call.
            self.pipeline.policy.track_call(view, self.pipeline.now());
        }
        let relayed = view
            .and_then(|view| proxy::forward_response(&view, &self.me, &self.key))
            .filter(|relayed| relayed.to.ip() == self.pbx);
        match relayed {
            Some(relayed) => {
                if self.send_inside(&relayed.message, relayed.to).await {
                    counters.responses.increment(1);
                }
            }
            None => {
                counters.drop(OutboundDrop::NotOurs);
                debug!("response with sipguard's branch mark not relayed");
            }
        }
    }

    /// A carrier's request on its way to the PBX: Route entries naming sipguard (its
    /// Record-Route coming back) are removed.
    pub fn inbound<'a>(&self, message: &'a [u8]) -> Cow<'a, [u8]> {
        match proxy::strip_own_routes(message, &self.me) {
            Some(stripped) => {
                self.pipeline.metrics.outbound.routes_removed.increment(1);
                Cow::Owned(stripped)
            }
            None => Cow::Borrowed(message),
        }
    }

    async fn send_inside(&self, message: &[u8], to: SocketAddr) -> bool {
        match self.inside.send_to(message, to).await {
            Ok(_) => true,
            Err(error) => {
                self.pipeline
                    .metrics
                    .outbound
                    .drop(OutboundDrop::SendFailed);
                debug!(%to, %error, "outbound send to the PBX failed");
                false
            }
        }
    }
}
