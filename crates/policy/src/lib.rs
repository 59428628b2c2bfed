//! sipguard's decisions, pure and I/O-free.
//!
//! [`Policy::check_datagram`] runs the request pipeline of DESIGN.md section 2 over one received
//! datagram, cheapest check first (ban, deny list, allowlist, size, parse, scanner signature,
//! flood, blocked username), and [`Policy::observe_response`] feeds the PBX's answers into the
//! failure, enumeration and trust rules of section 3. Nothing here reads a clock, touches a
//! socket or records a metric: time comes in as a [`Timestamp`], and rule hits come out as
//! [`Event`]s for the caller to count and log. Every per-source table is capped.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bans;
mod bounded;
mod cidr;
mod config;
mod response;
mod scanner;
mod state;
mod time;
mod verdict;

pub use bans::{Ban, BanEvent, BanObserver, RepeatConfig};
pub use cidr::CidrSet;
pub use config::{AllowlistMode, Mode, PolicyConfig, Rule};
pub use response::{AuthMethod, Exchange, Judged, RequestMemo};
pub use scanner::{BuildError, SignatureSite, DEFAULT_USER_AGENTS};
pub use time::Timestamp;
pub use verdict::{Action, DropReason, Event, RuleId, Verdict};

use arc_swap::ArcSwap;
use bans::{BanTable, Evidence};
use bounded::BoundedMap;
use scanner::ScannerSignatures;
use sipguard_sip::{is_keepalive, ParseError, SipView};
use state::{SourceState, Trust, UserState};
use std::hash::RandomState;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The outcome of [`Policy::check`]: what to do with the message, the rule hit behind it, and
/// what the response path needs to remember of a request that is forwarded.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<'a> {
    /// Forward, absorb or drop.
    pub verdict: Verdict<'a>,
    /// A rule that tripped on this message (including in observe mode).
    pub event: Option<Event>,
    /// For a request to forward: what to hand to the client's [`Exchange`] so the PBX's answer
    /// can be judged.
    pub memo: Option<RequestMemo>,
}

impl<'a> From<Verdict<'a>> for Checked<'a> {
    fn from(verdict: Verdict<'a>) -> Self {
        Checked {
            verdict,
            event: None,
            memo: None,
        }
    }
}

/// How a message arrived, which decides how far its source address can be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP: the source address may be forged.
    Datagram,
    /// TCP or TLS: the handshake proved the source address.
    Stream,
}

/// Sizes of the policy's tables, for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Bans in force (expired ones not yet swept included).
    pub bans: usize,
    /// Sources with evidence held.
    pub sources: usize,
    /// (source, username) pairs with evidence held.
    pub users: usize,
    /// Trusted sources.
    pub trusted: usize,
    /// Live entries evicted from any table to stay under its cap.
    pub evictions: u64,
    /// Bans that ran out (dropped once expired) since the policy was made.
    pub bans_expired: u64,
}

/// What a reload may change: the settings and what is compiled from them. Swapped whole, so a
/// packet sees either the old rules or the new, never a mix.
pub(crate) struct Rules {
    pub config: PolicyConfig,
    pub deny: CidrSet,
    pub allowlist: CidrSet,
    signatures: ScannerSignatures,
    /// The longest window of any rule: how long evidence is worth keeping.
    pub horizon: Duration,
}

impl Rules {
    fn new(config: PolicyConfig) -> Result<Self, BuildError> {
        let horizon = [
            &config.register_failures,
            &config.invite_failures,
            &config.enumeration,
            &config.flood,
        ]
        .iter()
        .map(|rule| rule.window)
        .max()
        .unwrap_or_default();
        Ok(Rules {
            deny: config.deny.iter().copied().collect(),
            allowlist: config.allowlist.iter().copied().collect(),
            signatures: ScannerSignatures::new(&config.scanner_user_agents)?,
            horizon,
            config,
        })
    }
}

/// The pipeline, its configuration and its state. Shared by every relay task.
///
/// The rules sit behind an [`ArcSwap`], so [`Policy::reconfigure`] replaces them while packets
/// flow (one atomic load per check) and the state tables (bans, evidence, trust) stay as they are.
pub struct Policy {
    rules: ArcSwap<Rules>,
    bans: BanTable,
    sources: BoundedMap<IpAddr, SourceState>,
    users: BoundedMap<(IpAddr, u64), UserState>,
    /// When the last username block ends (ms since the epoch): past it no username is blocked,
    /// and the check skips the username's hash and lookup on every request.
    blocks_end: AtomicU64,
    trust: BoundedMap<IpAddr, Trust>,
    /// Keys username hashes, so a remote party cannot aim for collisions.
    hasher: RandomState,
    /// Who follows the ban table.
    observers: ArcSwap<Vec<Arc<dyn BanObserver>>>,
}

/// The deny list, and the allowlist when it is enforced: whether an unbanned source is admitted.
fn screen(rules: &Rules, source: IpAddr) -> Result<(), DropReason> {
    if rules.deny.contains(source) {
        return Err(DropReason::Denied);
    }
    if rules.config.allowlist_mode == AllowlistMode::Enforce && !rules.allowlist.contains(source) {
        return Err(DropReason::NotAllowlisted);
    }
    Ok(())
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("config", &self.rules.load().config)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Builds the pipeline from validated settings.
    pub fn new(config: PolicyConfig) -> Result<Self, BuildError> {
        let cap = config.max_tracked_sources;
        let repeat = config.repeat;
        Ok(Policy {
            rules: ArcSwap::from_pointee(Rules::new(config)?),
            bans: BanTable::new(cap, repeat),
            sources: BoundedMap::new(cap),
            users: BoundedMap::new(cap),
            blocks_end: AtomicU64::new(0),
            trust: BoundedMap::new(cap),
            hasher: RandomState::new(),
            observers: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Adds an observer of the ban table: it hears of every ban, lift and expiry from now on.
    pub fn subscribe(&self, observer: Arc<dyn BanObserver>) {
        self.observers.rcu(|observers| {
            let mut observers = Vec::clone(observers);
            observers.push(Arc::clone(&observer));
            observers
        });
    }

    fn publish(&self, event: BanEvent) {
        for observer in self.observers.load().iter() {
            observer.ban_event(&event);
        }
    }

    /// Bans `source` for a rule and tells the observers; `None` when it is banned already.
    pub(crate) fn ban(
        &self,
        source: IpAddr,
        evidence: Evidence,
        ban_for: Duration,
        now: Timestamp,
    ) -> Option<Action> {
        let ban = self.bans.ban(source, evidence, ban_for, now)?;
        self.publish(BanEvent::Banned {
            source,
            ban: ban.clone(),
        });
        Some(Action::Banned(ban))
    }

    /// The longest message accepted now (one atomic load, for the stream framer).
    pub fn max_message_size(&self) -> usize {
        self.rules.load().config.max_message_size
    }

    /// The settings the policy runs with now.
    pub fn config(&self) -> PolicyConfig {
        self.rules.load().config.clone()
    }

    /// Replaces the rules (allowlist, deny list, signatures, thresholds, modes) while traffic
    /// flows; bans, evidence and trust are kept. The table caps (`max_tracked_sources`) and the
    /// repeat-offender settings are fixed at construction and keep their running values.
    pub fn reconfigure(&self, config: PolicyConfig) -> Result<(), BuildError> {
        let running = self.rules.load();
        let config = PolicyConfig {
            max_tracked_sources: running.config.max_tracked_sources,
            repeat: running.config.repeat,
            ..config
        };
        self.rules.store(Arc::new(Rules::new(config)?));
        Ok(())
    }

    /// Whether anything from `source` may be admitted at all (it is not banned, not denied, and
    /// on the allowlist when that is enforced): the check a new connection gets before it is
    /// accepted, and the first step of every message check.
    pub fn check_source(&self, source: IpAddr, now: Timestamp) -> Result<(), DropReason> {
        if self.bans.is_banned(source, now) {
            return Err(DropReason::Banned);
        }
        screen(&self.rules.load(), source)
    }

    /// Judges one message from `source`: a UDP datagram, or a message framed from a TCP or TLS
    /// connection. Over a stream the handshake proved the address, so evidence against it cannot
    /// be forged in its name: unlike over UDP, a trusted source that sends a scanner's signature
    /// is banned like any other. A flood from a trusted source is still only dropped (real
    /// phones burst: BLF subscriptions at boot), and allowlisted sources are never banned.
    pub fn check<'a>(
        &self,
        datagram: &'a [u8],
        source: IpAddr,
        transport: Transport,
        now: Timestamp,
    ) -> Checked<'a> {
        // The ban first, before even the rules are loaded: it is what a flood from banned
        // sources costs.
        if self.bans.is_banned(source, now) {
            return Verdict::Drop(DropReason::Banned).into();
        }
        let rules = self.rules.load();
        if let Err(reason) = screen(&rules, source) {
            return Verdict::Drop(reason).into();
        }
        let allowlisted = rules.allowlist.contains(source);
        if datagram.len() > rules.config.max_message_size {
            return Verdict::Drop(DropReason::TooLarge).into();
        }
        if is_keepalive(datagram) {
            return Verdict::Keepalive.into();
        }
        let view = match SipView::parse(datagram) {
            Ok(view) => view,
            Err(ParseError::NotSip) => return Verdict::Drop(DropReason::NotSip).into(),
            Err(_) => return Verdict::Drop(DropReason::Malformed).into(),
        };
        if view.method().is_none() {
            return Verdict::Forward(view).into();
        }
        if rules.signatures.find(&view).is_some() {
            let evidence = Evidence {
                rule: RuleId::Scanner,
                count: 1,
                first_seen: now,
            };
            return self.packet_rule(
                view,
                source,
                allowlisted,
                transport,
                &rules.config.scanner,
                evidence,
                DropReason::Scanner,
                now,
            );
        }
        if !allowlisted {
            let flood = rules.config.flood;
            let (count, first_seen) = self.sources.upsert(
                source,
                now,
                || SourceState::new(rules.horizon),
                |state| (state.flood.hit(now, flood.window), state.flood.start),
            );
            if count > flood.threshold {
                let evidence = Evidence {
                    rule: RuleId::Flood,
                    count,
                    first_seen,
                };
                return self.packet_rule(
                    view,
                    source,
                    allowlisted,
                    transport,
                    &flood,
                    evidence,
                    DropReason::Flood,
                    now,
                );
            }
        }
        let user = self.username(&view);
        if self.is_user_blocked(user, source, now) {
            return Verdict::Drop(DropReason::UserBlocked).into();
        }
        Checked {
            memo: Some(self.memo(&view, user)),
            verdict: Verdict::Forward(view),
            event: None,
        }
    }

    /// A rule judged on one packet (signature, flood): allowlisted sources lose the packet but
    /// are not banned, and so do trusted ones, except for a signature over a stream.
    #[allow(clippy::too_many_arguments)]
    fn packet_rule<'a>(
        &self,
        view: SipView<'a>,
        source: IpAddr,
        allowlisted: bool,
        transport: Transport,
        rule: &Rule,
        evidence: Evidence,
        reason: DropReason,
        now: Timestamp,
    ) -> Checked<'a> {
        // Over UDP the evidence may be forged in a trusted source's name. Over a stream it is
        // the source's own, and a scanner's signature from an authenticated host means the host
        // is abused; a burst (a phone subscribing to forty BLF keys at boot) still does not ban.
        let shielded_by_trust =
            transport == Transport::Datagram || evidence.rule != RuleId::Scanner;
        let (verdict, action) = match rule.mode {
            Mode::Observe => (Verdict::Forward(view), Action::Observed { would_ban: true }),
            Mode::Drop => (Verdict::Drop(reason), Action::Dropped),
            Mode::Ban if allowlisted || (shielded_by_trust && self.is_trusted(source, now)) => {
                (Verdict::Drop(reason), Action::Dropped)
            }
            Mode::Ban => {
                let Some(action) = self.ban(source, evidence, rule.ban_for, now) else {
                    return Verdict::Drop(reason).into();
                };
                (Verdict::Drop(reason), action)
            }
        };
        // Observe mode forwards: the response path still judges the PBX's answer.
        let memo = match &verdict {
            Verdict::Forward(view) => Some(self.memo(view, self.username(view))),
            _ => None,
        };
        Checked {
            verdict,
            event: Some(Event {
                source,
                rule: evidence.rule,
                action,
            }),
            memo,
        }
    }

    fn is_trusted(&self, source: IpAddr, now: Timestamp) -> bool {
        self.trust.get(&source, now, |_| ()).is_some()
    }

    fn is_user_blocked(&self, user: Option<u64>, source: IpAddr, now: Timestamp) -> bool {
        if now.as_millis() >= self.blocks_end.load(Ordering::Relaxed) {
            return false;
        }
        let Some(user) = user else {
            return false;
        };
        self.users
            .get(&(source, user), now, |state| now < state.blocked_until)
            .unwrap_or(false)
    }

    /// Bans `source` by hand for exactly `duration` (an operator's ban, with the operator's
    /// `note`), replacing any ban in force, unless it is allowlisted.
    pub fn ban_manually(
        &self,
        source: IpAddr,
        duration: Duration,
        note: Option<Arc<str>>,
        now: Timestamp,
    ) -> Option<Ban> {
        if self.rules.load().allowlist.contains(source) {
            return None;
        }
        let ban = self.bans.ban_manually(source, note, duration, now);
        self.publish(BanEvent::Banned {
            source,
            ban: ban.clone(),
        });
        Some(ban)
    }

    /// Lifts a ban and forgets the source's evidence (per source and per username), so it is let
    /// through at once and starts from zero.
    pub fn lift(&self, source: IpAddr) -> Option<Ban> {
        self.sources.remove(&source);
        // Keyed by (source, username): finding a source's entries takes a scan of the table,
        // which an operator's lift can afford.
        if self.users.len() > 0 {
            self.users.retain(|(user_source, _)| *user_source != source);
        }
        let ban = self.bans.lift(source)?;
        self.publish(BanEvent::Lifted {
            source,
            ban: ban.clone(),
        });
        Some(ban)
    }

    /// Puts back a ban read from the journal, with its expiry and offence count as they were,
    /// without telling the observers (they are the journal's readers). Returns false,
    /// restoring nothing, when it has expired or the source is now allowlisted.
    pub fn restore(&self, source: IpAddr, ban: Ban, now: Timestamp) -> bool {
        if now >= ban.expires || self.rules.load().allowlist.contains(source) {
            return false;
        }
        self.bans.restore(source, ban, now);
        true
    }

    /// Whether `source` is banned at `now`.
    pub fn is_banned(&self, source: IpAddr, now: Timestamp) -> bool {
        self.bans.is_banned(source, now)
    }

    /// The ban on `source`, if one is in force.
    pub fn ban_of(&self, source: IpAddr, now: Timestamp) -> Option<Ban> {
        self.bans.get(source, now)
    }

    /// Every ban in force.
    pub fn bans(&self, now: Timestamp) -> Vec<(IpAddr, Ban)> {
        self.bans.list(now)
    }

    /// Drops expired entries from every table, telling the observers of each ban that ran out.
    /// Call it now and then (every few seconds).
    pub fn sweep(&self, now: Timestamp) {
        // Published once the table's locks are let go: an observer may look at the bans.
        let mut expired = Vec::new();
        self.bans.sweep(now, |&source, ban| {
            expired.push(BanEvent::Expired { source, ban })
        });
        for event in expired {
            self.publish(event);
        }
        self.sources.sweep(now);
        self.users.sweep(now);
        self.trust.sweep(now);
    }

    /// Table sizes and evictions.
    pub fn stats(&self) -> Stats {
        Stats {
            bans: self.bans.len(),
            sources: self.sources.len(),
            users: self.users.len(),
            trusted: self.trust.len(),
            bans_expired: self.bans.expired(),
            evictions: self.bans.evictions()
                + self.sources.evictions()
                + self.users.evictions()
                + self.trust.evictions(),
        }
    }
}
