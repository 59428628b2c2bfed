//! The one request and response path every front calls: a client's message is judged once by
//! the policy (one call that returns the verdict and what the response path needs), counted, and
//! handed back to the front to forward or drop; a PBX's response is judged once on its way back.
//! The fronts keep only what is theirs: datagrams and sessions, streams and connections.

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::Transport;
use sipguard_policy::{
    Action, Answer, DropReason, Exchange, Policy, RequestMemo, Timestamp, Verdict,
};
use sipguard_sip::{proxy, SipView};
use std::net::SocketAddr;
use std::sync::Arc;
use tracing::{debug, info};

/// What a front does with one message from a client.
#[must_use]
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// Forward `message` to the PBX, and hand `memo` to the client's [`Exchange`] (or, for a
    /// response, `answer` to [`Pipeline::answered`]).
    Forward {
        /// The message as it must go out (leading CRLFs and trailing bytes removed).
        message: &'a [u8],
        /// What the response path needs to judge the PBX's answer.
        memo: Option<RequestMemo>,
        /// A response of the client's: it may answer a request the PBX sent it.
        answer: Option<Answer>,
        /// A response carrying sipguard's own Via on top: it answers a request the outbound
        /// path relayed for the PBX, and goes there ([`crate::outbound`]).
        relayed_response: bool,
    },
    /// Refused with an answer sipguard makes itself (a 403 to a phone's barred call): send
    /// `response` back to the client, forward nothing.
    Reply {
        /// The whole response.
        response: Vec<u8>,
    },
    /// A keep-alive: it refreshes the client's session and goes no further.
    Keepalive,
    /// Dropped, and counted.
    Drop {
        /// The source is banned (by this message or before it): a stream closes.
        banned: bool,
    },
}

/// What the outbound path does with a request the PBX sends out through sipguard.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundStep {
    /// Relay it to its next hop.
    Forward,
    /// Answer it to the PBX with this final status and reason phrase, and relay nothing.
    Reject(u16, &'static str),
}

/// The policy, the clock and the metrics, shared by every front.
pub(crate) struct Pipeline {
    pub policy: Arc<Policy>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
}

impl Pipeline {
    /// The time to judge by.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Judges one message from `client` that arrived over `transport` (the front has counted
    /// it received: UDP counts a whole batch at once).
    pub fn request<'a>(
        &self,
        message: &'a [u8],
        client: SocketAddr,
        transport: Transport,
        now: Timestamp,
    ) -> Step<'a> {
        let packets = self.metrics.packets(transport);
        let checked = self
            .policy
            .check(message, client.ip(), transport.proof(), now);
        let banned_now = checked
            .event
            .as_ref()
            .is_some_and(|event| matches!(event.action, Action::Banned(_)));
        if let Some(event) = &checked.event {
            self.metrics.rule_event(event);
        }
        if let Some(refusal) = &checked.refusal {
            self.refused(Some(client.ip()), refusal);
        }
        match checked.verdict {
            Verdict::Forward(view) => Step::Forward {
                message: view.message,
                memo: checked.memo,
                answer: checked.answer,
                relayed_response: proxy::is_relayed_response(&view),
            },
            Verdict::Keepalive => {
                packets.keepalives.increment(1);
                Step::Keepalive
            }
            Verdict::Drop(reason) => {
                packets.policy_drop(reason);
                debug!(%client, ?transport, reason = reason.as_str(), len = message.len(), "dropped");
                let answer = checked.refusal.filter(|refusal| refusal.answer);
                if let Some(response) = answer.and_then(|refusal| {
                    sipguard_sip::reply(message, 403, refusal.reason_phrase()).ok()
                }) {
                    return Step::Reply { response };
                }
                // A source a blocklist feed lists is shut out like a banned one.
                Step::Drop {
                    banned: banned_now || matches!(reason, DropReason::Banned | DropReason::Feed),
                }
            }
        }
    }

    /// Judges a request the PBX sends out through sipguard (the outbound path), parsed by the
    /// caller, at `now`: the size limit, then for a new call the dial rules and call rates with
    /// the PBX as the caller.
    pub fn outbound(&self, view: &SipView<'_>, now: Timestamp) -> OutboundStep {
        if view.message.len() > self.policy.max_message_size() {
            return OutboundStep::Reject(513, "Message Too Large");
        }
        // A BYE the PBX sends ends its call; a new call is held to the dial rules and rates.
        self.policy.track_call(view, now);
        if view.method() == Some(sipguard_sip::Method::Invite) {
            let call = self.policy.check_outbound_call(view, now);
            if let Some(refusal) = &call.refusal {
                self.refused(None, refusal);
                if !call.allowed {
                    return OutboundStep::Reject(403, refusal.reason_phrase());
                }
            }
        }
        OutboundStep::Forward
    }

    /// Counts and logs a call the dial, call rate or country rules refused (or observed); no
    /// `source` is the PBX calling out.
    fn refused(&self, source: Option<std::net::IpAddr>, refusal: &sipguard_policy::Refusal) {
        self.metrics.refusal(refusal);
        info!(
            source = %source.map_or_else(|| "pbx".to_owned(), |ip| ip.to_string()),
            username = refusal.username.as_deref().unwrap_or("-"),
            destination = refusal.destination.as_deref().unwrap_or("-"),
            rule = refusal.rule.as_str(),
            class = refusal.class,
            observed = refusal.observed,
            answered = refusal.answer && !refusal.observed,
            "call rule refused a request"
        );
    }

    /// Hands what a client forwards to its exchange: a request's memo, or a response's
    /// answer (which may prove the client receives at its address).
    pub fn forwarded(
        &self,
        client: SocketAddr,
        memo: Option<RequestMemo>,
        answer: Option<Answer>,
        exchange: &mut Exchange,
    ) {
        if let Some(memo) = memo {
            exchange.remember(memo);
        }
        if let Some(answer) = answer {
            self.policy
                .answered(client.ip(), answer, exchange, self.now());
        }
    }

    /// Feeds what the PBX sent to `client` to the policy: a response to the failure and trust
    /// rules, a request of the PBX's own to the exchange (so the client's answer to it counts).
    /// Whatever the outcome, the message itself is relayed: the client is owed its answer, and
    /// a ban stops what follows.
    pub fn response(&self, message: &[u8], client: SocketAddr, exchange: &mut Exchange) {
        let Ok(response) = SipView::parse(message) else {
            return;
        };
        let now = self.now();
        self.policy.track_call(&response, now);
        if response.status().is_none() {
            self.policy.pbx_request(&response, exchange);
            return;
        }
        let judged = self
            .policy
            .judge_response(client.ip(), &response, exchange, now);
        if let Some(failure) = judged.auth_failure {
            self.metrics.auth_failure(failure);
        }
        if let Some(event) = &judged.event {
            self.metrics.rule_event(event);
        }
    }
}
