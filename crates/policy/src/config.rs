//! Validated policy settings, with the defaults of docs/design.md section 3.

use crate::bans::RepeatConfig;
use crate::scanner::DEFAULT_USER_AGENTS;
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::Duration;

/// What a rule does when it trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Count and log what it would have done; let the traffic through. For tuning.
    Observe,
    /// Drop the offending packets, ban nobody. Rules judged on the PBX's responses block the
    /// failing username from that source instead of banning it (enumeration only observes).
    Drop,
    /// Drop, and ban the source.
    Ban,
}

/// A rule that trips at `threshold` events within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// What it does when it trips.
    pub mode: Mode,
    /// Events in the window that trip it.
    pub threshold: u32,
    /// The window, opened by the first event.
    pub window: Duration,
    /// How long a first ban lasts.
    pub ban_for: Duration,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Whether sources outside the allowlist are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowlistMode {
    /// Everyone is admitted; listed sources are still never banned.
    Off,
    /// Only listed sources are admitted.
    Enforce,
}

/// A named group of allowlisted networks: one carrier, one office.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowGroup {
    /// The operator's name for it, unique in the allowlist.
    pub name: String,
    /// Its networks.
    pub networks: Vec<IpNet>,
    /// The local address its sources reach the PBX from, so that the PBX can tell the group by
    /// source address (Asterisk's `identify match=`) and nobody outside it can come from there;
    /// `None`: the address every other client shares.
    pub identity: Option<IpAddr>,
}

impl AllowGroup {
    /// A group without an identity of its own.
    pub fn new(name: &str, networks: impl IntoIterator<Item = IpNet>) -> Self {
        AllowGroup {
            name: name.to_owned(),
            networks: networks.into_iter().collect(),
            identity: None,
        }
    }
}

/// Validated policy settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Sources that are never let through, whatever they send.
    pub deny: Vec<IpNet>,
    /// Carriers' and offices' networks, in named groups: never banned, and with `Enforce` the
    /// only ones admitted.
    pub allowlist: Vec<AllowGroup>,
    /// Whether the allowlist is enforced.
    pub allowlist_mode: AllowlistMode,
    /// Datagrams longer than this are dropped before parsing.
    pub max_message_size: usize,
    /// User-Agent patterns of scanners, matched case-insensitively against every User-Agent
    /// value: substrings, or the whole value for a pattern written `=VALUE`.
    pub scanner_user_agents: Vec<String>,
    /// The scanner rule (threshold and window unused: one packet is enough).
    pub scanner: Rule,
    /// Failed REGISTERs per (source, username).
    pub register_failures: Rule,
    /// Failed INVITEs per source.
    pub invite_failures: Rule,
    /// Distinct failing usernames per source.
    pub enumeration: Rule,
    /// Requests per source (and, at `ipv6_offenders` times the threshold, per IPv6 prefix).
    pub flood: Rule,
    /// Requests per source in the flood window that a source that has authenticated may send
    /// before its requests are dropped (never banned): phones burst at boot (BLF subscriptions).
    pub flood_trusted_threshold: u32,
    /// Messages per source that are not SIP, are malformed or are too large.
    pub garbage: Rule,
    /// The IPv6 prefix length evidence and bans aggregate to.
    pub ipv6_prefix_len: u8,
    /// Distinct banned addresses of one IPv6 prefix that get the prefix banned; 0 never bans a
    /// prefix.
    pub ipv6_offenders: u32,
    /// How bans grow for repeat offenders.
    pub repeat: RepeatConfig,
    /// How long a source that authenticated successfully is trusted.
    pub trust_for: Duration,
    /// Cap on entries in each per-source table (bans, evidence, trust).
    pub max_tracked_sources: usize,
    /// Toll-fraud dial rules on INVITEs.
    pub dial: crate::DialConfig,
    /// Call rate and concurrency limits.
    pub calls: crate::CallRates,
    /// The country filter.
    pub geo: crate::GeoConfig,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            deny: Vec::new(),
            allowlist: Vec::new(),
            allowlist_mode: AllowlistMode::Off,
            max_message_size: 16 * 1024,
            scanner_user_agents: DEFAULT_USER_AGENTS
                .iter()
                .map(|ua| ua.to_string())
                .collect(),
            scanner: Rule {
                mode: Mode::Ban,
                threshold: 1,
                window: MINUTE,
                ban_for: HOUR,
            },
            register_failures: Rule {
                mode: Mode::Ban,
                threshold: 5,
                window: 10 * MINUTE,
                ban_for: 10 * MINUTE,
            },
            invite_failures: Rule {
                mode: Mode::Ban,
                threshold: 20,
                window: 10 * MINUTE,
                ban_for: HOUR,
            },
            enumeration: Rule {
                mode: Mode::Ban,
                threshold: 10,
                window: 10 * MINUTE,
                ban_for: HOUR,
            },
            flood: Rule {
                mode: Mode::Ban,
                threshold: 64,
                window: Duration::from_secs(2),
                ban_for: 5 * MINUTE,
            },
            flood_trusted_threshold: 512,
            garbage: Rule {
                mode: Mode::Ban,
                threshold: 20,
                window: Duration::from_secs(10),
                ban_for: 10 * MINUTE,
            },
            ipv6_prefix_len: 64,
            ipv6_offenders: 4,
            repeat: RepeatConfig::default(),
            trust_for: 24 * HOUR,
            max_tracked_sources: 100_000,
            dial: crate::DialConfig::default(),
            calls: crate::CallRates::default(),
            geo: crate::GeoConfig::default(),
        }
    }
}
