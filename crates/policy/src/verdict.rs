//! The outcome of a policy check, and the bounded set of reasons for a drop.

use sipguard_sip::SipView;

/// What to do with one datagram.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The source is on the static deny list.
    Denied,
    /// Longer than the configured maximum message size.
    TooLarge,
    /// Not SIP at all.
    NotSip,
    /// SIP-like but malformed: a broken header, a mandatory header missing, a bad length.
    Malformed,
}

impl DropReason {
    /// Every reason, for pre-registering metrics.
    pub const ALL: [DropReason; 4] = [DropReason::Denied, DropReason::TooLarge, DropReason::NotSip, DropReason::Malformed];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Denied => "denied",
            DropReason::TooLarge => "too_large",
            DropReason::NotSip => "not_sip",
            DropReason::Malformed => "malformed",
        }
    }
}
