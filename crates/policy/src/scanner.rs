//! Scanner signatures: one case-insensitive automaton over the User-Agent, and one over the From
//! header for the markers scanners leave there, so the cost per packet does not grow with the
//! number of patterns.

pub use aho_corasick::BuildError;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use sipguard_sip::SipView;

/// User agents of SIP scanners and attack tools (DESIGN.md section 3: MOR's list and Kamailio's
/// default configuration).
pub const DEFAULT_USER_AGENTS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipsak",
    "sundayddr",
    "iWar",
    "CSipSimple",
    "SIVuS",
    "Gulp",
    "sipv",
    "smap",
    "friendly-request",
    "VaxIPUserAgent",
    "VaxSIPUserAgent",
    "siparmyknife",
    "Test Agent",
    "pplsip",
];

/// Markers sipvicious writes into From even when its User-Agent is changed: svmap's default
/// display name is `sipvicious`, and its tools share the `friendly-scanner` default.
const FROM_MARKERS: &[&str] = &["sipvicious", "friendly-scanner"];

/// Where a scanner signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureSite {
    /// In the User-Agent header.
    UserAgent,
    /// In the From header.
    From,
}

/// The compiled signatures.
#[derive(Debug, Clone)]
pub struct ScannerSignatures {
    user_agent: AhoCorasick,
    from: AhoCorasick,
}

impl ScannerSignatures {
    /// Compiles the user-agent patterns (usually the defaults plus the operator's own). Fails
    /// only when the patterns exceed the automaton's size limits.
    pub fn new<P: AsRef<[u8]>>(
        user_agents: impl IntoIterator<Item = P>,
    ) -> Result<Self, BuildError> {
        Ok(ScannerSignatures {
            user_agent: automaton(user_agents)?,
            from: automaton(FROM_MARKERS)?,
        })
    }

    /// Where `view` carries a scanner signature, if anywhere.
    pub fn find(&self, view: &SipView<'_>) -> Option<SignatureSite> {
        if view
            .user_agent
            .is_some_and(|ua| self.user_agent.is_match(ua))
        {
            return Some(SignatureSite::UserAgent);
        }
        if self.from.is_match(view.from.value) {
            return Some(SignatureSite::From);
        }
        None
    }
}

fn automaton<P: AsRef<[u8]>>(
    patterns: impl IntoIterator<Item = P>,
) -> Result<AhoCorasick, BuildError> {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::LeftmostFirst)
        .build(patterns)
}
