//! The outcome of a policy check, the bounded set of reasons for a drop, and the events a check
//! can raise (bans, observed rule hits) for the caller to count and log.

use crate::bans::Ban;
use sipguard_sip::SipView;
use std::net::IpAddr;

/// What to do with one datagram.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "the view lives on the stack for one packet; boxing it would allocate per packet"
)]
pub enum Verdict<'a> {
    /// Pass it on to the PBX; the view says what the response path needs to remember.
    Forward(SipView<'a>),
    /// A CRLF keep-alive: keeps the client's session fresh, is not forwarded and is not garbage.
    Keepalive,
    /// Drop it silently.
    Drop(DropReason),
}

/// Why a datagram was dropped. A metric label: the set is fixed and never carries packet data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The source is banned.
    Banned,
    /// The source is on the static deny list.
    Denied,
    /// A blocklist feed lists the source.
    Feed,
    /// The allowlist is enforced and the source is not on it.
    NotAllowlisted,
    /// Longer than the configured maximum message size.
    TooLarge,
    /// Not SIP at all.
    NotSip,
    /// SIP-like but malformed: a broken header, a mandatory header missing, a bad length.
    Malformed,
    /// A scanner's signature.
    Scanner,
    /// More requests from the source than the flood rule allows.
    Flood,
    /// This username is blocked from this source after repeated failures (the source itself,
    /// trusted because others authenticate from it, is not banned).
    UserBlocked,
    /// A call to a destination its caller may not dial.
    Dial,
    /// A call past a call rate limit.
    CallRate,
    /// A REGISTER or call from a country not admitted.
    Country,
    /// The ACK to a 403 sipguard answered itself: its transaction never reached the PBX.
    Answered,
}

impl DropReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [DropReason; 14] = [
        DropReason::Banned,
        DropReason::Denied,
        DropReason::Feed,
        DropReason::NotAllowlisted,
        DropReason::TooLarge,
        DropReason::NotSip,
        DropReason::Malformed,
        DropReason::Scanner,
        DropReason::Flood,
        DropReason::UserBlocked,
        DropReason::Dial,
        DropReason::CallRate,
        DropReason::Country,
        DropReason::Answered,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Banned => "banned",
            DropReason::Denied => "denied",
            DropReason::Feed => "feed",
            DropReason::NotAllowlisted => "not_allowlisted",
            DropReason::TooLarge => "too_large",
            DropReason::NotSip => "not_sip",
            DropReason::Malformed => "malformed",
            DropReason::Scanner => "scanner",
            DropReason::Flood => "flood",
            DropReason::UserBlocked => "user_blocked",
            DropReason::Dial => "dial",
            DropReason::CallRate => "call_rate",
            DropReason::Country => "country",
            DropReason::Answered => "answered",
        }
    }
}

/// A detection rule. A metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleId {
    /// Scanner signatures.
    Scanner,
    /// Failed REGISTERs that carried credentials, or any 403.
    RegisterFailures,
    /// INVITEs refused after credentials, or 403.
    InviteFailures,
    /// Many distinct usernames challenged or refused, none successful.
    Enumeration,
    /// Too many requests in a short window.
    Flood,
    /// Too many messages that are not SIP, malformed or too large.
    Garbage,
    /// Added by the operator.
    Manual,
    /// A call to a destination its caller may not dial (toll fraud).
    Dial,
    /// Calls past a rate or concurrency limit.
    CallRate,
    /// A REGISTER or call from a country not admitted.
    Country,
}

impl RuleId {
    /// Every rule, for pre-registering metrics.
    pub const ALL: [RuleId; 10] = [
        RuleId::Scanner,
        RuleId::RegisterFailures,
        RuleId::InviteFailures,
        RuleId::Enumeration,
        RuleId::Flood,
        RuleId::Garbage,
        RuleId::Manual,
        RuleId::Dial,
        RuleId::CallRate,
        RuleId::Country,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::Scanner => "scanner",
            RuleId::RegisterFailures => "register_failures",
            RuleId::InviteFailures => "invite_failures",
            RuleId::Enumeration => "enumeration",
            RuleId::Flood => "flood",
            RuleId::Garbage => "garbage",
            RuleId::Manual => "manual",
            RuleId::Dial => "dial",
            RuleId::CallRate => "call_rate",
            RuleId::Country => "country",
        }
    }
}

/// What a rule did when it tripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The rule is in observe mode: it would have dropped (or banned), and did nothing.
    Observed {
        /// Whether the rule would have banned, not only dropped.
        would_ban: bool,
    },
    /// The packet was dropped; the source was not banned (drop mode, or a trusted or
    /// allowlisted source whose evidence could be forged).
    Dropped,
    /// The source was banned.
    Banned(Ban),
    /// One username was blocked from this source; the source itself stays admitted.
    UserBlocked {
        /// Until when.
        until: crate::Timestamp,
    },
}

/// A rule tripping, for the caller to count and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The offending source.
    pub source: IpAddr,
    /// The rule that tripped.
    pub rule: RuleId,
    /// What was done.
    pub action: Action,
    /// Whether the evidence could not have been forged: a refused attempt answering a challenge
    /// sent to the source, or anything over a stream. Unproven evidence never bans or blocks a
    /// source that has authenticated.
    pub proven: bool,
}
