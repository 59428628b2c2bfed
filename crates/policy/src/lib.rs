//! sipguard's decisions, pure and I/O-free.
//!
//! [`Policy::check`] runs the request pipeline of docs/design.md section 2 over one message
//! (a datagram, or one framed from a stream), cheapest check first (ban, deny list, allowlist,
//! size, garbage, parse, scanner signature, flood, blocked username), and returns with its
//! verdict the memo the response path needs; [`Policy::judge_response`] feeds the PBX's answers
//! into the failure, enumeration and trust rules of section 3. Nothing here reads a clock,
//! touches a socket or records a metric: time comes in as a [`Timestamp`], rule hits come out as
//! [`Event`]s for the caller to count and log, and changes to the ban and trust tables go to the
//! [`Observer`]s as [`Change`]s. Every per-source table is capped.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bans;
mod bounded;
mod calls;
mod changes;
mod cidr;
mod config;
mod dial;
mod feeds;
pub mod geo;
mod prefix;
mod response;
mod scanner;
mod state;
mod time;
mod verdict;

pub use bans::{Ban, RepeatConfig};
pub use calls::{CallRates, Outbound, RateLimit, Refusal, MAX_CONCURRENT};
pub use changes::{Change, Observer};
pub use cidr::{CidrMap, CidrSet};
pub use config::{AllowGroup, AllowlistMode, Mode, PolicyConfig, Rule};
pub use dial::{Access, Caller, Class, ClassRule, DialConfig, DialPlan, Number, Prefix};
pub use feeds::{FeedTally, Feeds, Spans, MAX_FEEDS};
pub use geo::{CountryDb, GeoConfig};
pub use ipnet::IpNet;
pub use response::{Answer, AuthFailure, AuthMethod, Exchange, Judged, RequestMemo};
pub use scanner::{BuildError, SignatureSite, DEFAULT_USER_AGENTS};
pub use time::{PerSecond, Timestamp};
pub use verdict::{Action, DropReason, Event, RuleId, Verdict};

use arc_swap::ArcSwap;
use bans::{earned, host, BanTable, Cover, Evidence};
use bounded::BoundedMap;
use prefix::PrefixState;
use scanner::ScannerSignatures;
use sipguard_sip::{is_keepalive, ParseError, SipView};
use state::{SourceState, Trust, UserState};
use std::hash::RandomState;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bans on evidence a forged datagram can produce (a scanner's signature, a flood, garbage)
/// announced to the observers each second; past it they are enforced and counted but marked
/// quiet ([`Ban::quiet`]), so that a flood with a new forged source per packet does not become
/// as many journal records, kernel set updates and cluster messages. A real scanner is one
/// source banned once: far below this.
pub const ANNOUNCED_BANS_PER_SECOND: u32 = 1_000;

/// Quiet bans announced each second because their source was seen again: sources that come
/// back are real ones, worth dropping in the kernel and on every node, so the budget is larger;
/// it still bounds a flood that forges each source twice.
pub const ANNOUNCED_COMEBACKS_PER_SECOND: u32 = 10_000;

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
    /// For a response to forward: what to hand to [`Policy::answered`] with the client's
    /// [`Exchange`].
    pub answer: Option<Answer>,
    /// A call or registration the dial, call rate or country rules refused (or observed).
    pub refusal: Option<Refusal>,
}

impl<'a> From<Verdict<'a>> for Checked<'a> {
    fn from(verdict: Verdict<'a>) -> Self {
        Checked {
            verdict,
            event: None,
            memo: None,
            answer: None,
            refusal: None,
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
    /// Live entries evicted from any table to stay under its cap, and new ones turned away.
    pub evictions: u64,
}

/// What a reload may change: the settings and what is compiled from them. Swapped whole, so a
/// packet sees either the old rules or the new, never a mix.
pub(crate) struct Rules {
    pub config: PolicyConfig,
    pub deny: CidrSet,
    /// Each allowlisted network's group, as its index in `config.allowlist`.
    pub allowlist: CidrMap<usize>,
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
            &config.garbage,
        ]
        .iter()
        .map(|rule| rule.window)
        .max()
        .unwrap_or_default();
        Ok(Rules {
            deny: config.deny.iter().copied().collect(),
            allowlist: (config.allowlist.iter().enumerate())
                .flat_map(|(i, group)| group.networks.iter().map(move |net| (*net, i)))
                .collect(),
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
    /// and the check skips the blocked-username lookup on every request.
    blocks_end: AtomicU64,
    trust: BoundedMap<IpAddr, Trust>,
    /// Evidence per IPv6 prefix: its flood count and its banned addresses.
    prefixes: BoundedMap<IpNet, PrefixState>,
    /// Where each recent nonce went, by its keyed hash.
    nonces: BoundedMap<u64, response::NonceSent>,
    /// Keys username hashes, so a remote party cannot aim for collisions.
    hasher: RandomState,
    /// Calls being followed, by the keyed hash of their Call-ID.
    calls: BoundedMap<u64, calls::Call>,
    /// Call rates and live calls per source and per username.
    callers: BoundedMap<calls::Counted, calls::Calling>,
    /// Who follows the ban and trust tables.
    observers: ArcSwap<Vec<Arc<dyn Observer>>>,
    /// Bans on evidence a forged datagram can produce announced this second.
    announced: PerSecond,
    /// Quiet bans announced this second because their source came back.
    comebacks: PerSecond,
    /// The blocklist feeds, replaced whole by [`Policy::set_feeds`] when one changes.
    feeds: ArcSwap<Feeds>,
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
        let prefix_len = config.ipv6_prefix_len;
        Ok(Policy {
            rules: ArcSwap::from_pointee(Rules::new(config)?),
            bans: BanTable::new(cap, repeat, prefix_len),
            sources: BoundedMap::new(cap),
            users: BoundedMap::new(cap),
            blocks_end: AtomicU64::new(0),
            trust: BoundedMap::new(cap),
            prefixes: BoundedMap::new(cap),
            nonces: BoundedMap::new(cap),
            calls: BoundedMap::new(cap),
            callers: BoundedMap::new(cap),
            hasher: RandomState::new(),
            observers: ArcSwap::from_pointee(Vec::new()),
            announced: PerSecond::new(ANNOUNCED_BANS_PER_SECOND),
            comebacks: PerSecond::new(ANNOUNCED_COMEBACKS_PER_SECOND),
            feeds: ArcSwap::from_pointee(Feeds::default()),
        })
    }

    /// Adds an observer of the ban and trust tables: it hears of every ban, lift, expiry and
    /// grant of trust from now on.
    pub fn subscribe(&self, observer: Arc<dyn Observer>) {
        self.observers.rcu(|observers| {
            let mut observers = Vec::clone(observers);
            observers.push(Arc::clone(&observer));
            observers
        });
    }

    fn publish(&self, event: Change) {
        for observer in self.observers.load().iter() {
            observer.changed(&event);
        }
    }

    /// Bans `source` for a rule and tells the observers; `None` when it is banned already. A
    /// banned IPv6 address counts against its prefix, which is banned once enough of its
    /// addresses are.
    pub(crate) fn ban(
        &self,
        source: IpNet,
        evidence: Evidence,
        ban_for: Duration,
        now: Timestamp,
    ) -> Option<Action> {
        let quiet = !earned(evidence.rule) && !self.announced.take(now);
        let ban = self.bans.ban(source, evidence, ban_for, quiet, now)?;
        self.publish(Change::Banned {
            source,
            ban: ban.clone(),
        });
        if let (IpNet::V6(net), Some(prefix)) = (source, self.bans.prefix_of(source.addr())) {
            if net.prefix_len() == 128 {
                self.offended(prefix, net.addr(), evidence, ban_for, now);
            }
        }
        Some(Action::Banned(ban))
    }

    /// What bans `source`, if anything. A quiet ban found is announced, within the budget of
    /// [`ANNOUNCED_COMEBACKS_PER_SECOND`]: its source came back.
    fn cover(&self, source: IpAddr, now: Timestamp) -> Option<Cover> {
        let (cover, announced) = self.bans.cover(source, now, Some(&self.comebacks));
        if let Some((source, ban)) = announced {
            self.publish(Change::Announced { source, ban });
        }
        cover
    }

    /// An address of `prefix` was banned: the prefix is banned once the rule's spread of its
    /// addresses are, for as long as the last of them.
    fn offended(
        &self,
        prefix: IpNet,
        address: std::net::Ipv6Addr,
        evidence: Evidence,
        ban_for: Duration,
        now: Timestamp,
    ) {
        let rules = self.rules.load();
        let spread = usize::try_from(rules.config.ipv6_offenders).unwrap_or(usize::MAX);
        if spread == 0 {
            return;
        }
        let low_bits = u128::from(address) as u64;
        let offenders = self.prefixes.upsert(
            prefix,
            now,
            || PrefixState::new(rules.horizon),
            |state| state.offended(low_bits, now, spread),
        );
        if offenders >= spread {
            let evidence = Evidence {
                count: u32::try_from(offenders).unwrap_or(u32::MAX),
                ..evidence
            };
            self.ban(prefix, evidence, ban_for, now);
        }
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
    /// flows; bans, evidence and trust are kept. The table caps (`max_tracked_sources`), the
    /// repeat-offender settings and the IPv6 prefix length of prefix bans are fixed at
    /// construction and keep their running values.
    pub fn reconfigure(&self, config: PolicyConfig) -> Result<(), BuildError> {
        let running = self.rules.load();
        let config = PolicyConfig {
            max_tracked_sources: running.config.max_tracked_sources,
            repeat: running.config.repeat,
            ipv6_prefix_len: running.config.ipv6_prefix_len,
            ..config
        };
        self.rules.store(Arc::new(Rules::new(config)?));
        Ok(())
    }

    /// The local address `source` reaches the PBX from, when its allowlist group has an identity
    /// of its own (read when a session or upstream connection opens, so a reload applies to
    /// the next one).
    pub fn upstream_identity(&self, source: IpAddr) -> Option<IpAddr> {
        let rules = self.rules.load();
        let group = *rules.allowlist.get(source)?;
        rules.config.allowlist[group].identity
    }

    /// Whether anything from `source` may be admitted at all (it is not banned, not denied, and
    /// on the allowlist when that is enforced): the check a new connection gets before it is
    /// accepted, and the first step of every message check.
    pub fn check_source(&self, source: IpAddr, now: Timestamp) -> Result<(), DropReason> {
        let rules = self.rules.load();
        if self.banned(&rules, source, self.cover(source, now), now) {
            return Err(DropReason::Banned);
        }
        self.unlisted(&rules, source, now)?;
        screen(&rules, source)
    }

    /// Replaces the blocklist feeds' networks while traffic flows: a packet sees the old set or
    /// the new one, never half of each.
    pub fn set_feeds(&self, feeds: Feeds) {
        self.feeds.store(Arc::new(feeds));
    }

    /// The feeds' networks in force.
    pub fn feeds(&self) -> Arc<Feeds> {
        self.feeds.load_full()
    }

    /// Whether no feed lists `source`, or one does and it is admitted anyway: allowlisted, or
    /// trusted (it authenticated here, which a community list cannot know). Either way the
    /// listing feeds count it.
    fn unlisted(&self, rules: &Rules, source: IpAddr, now: Timestamp) -> Result<(), DropReason> {
        let feeds = self.feeds.load();
        let listed = feeds.lookup(source);
        if listed == 0 {
            return Ok(());
        }
        let admitted = rules.allowlist.contains(source) || self.is_trusted(source, now);
        feeds.count(listed, !admitted);
        if admitted {
            Ok(())
        } else {
            Err(DropReason::Feed)
        }
    }

    /// Whether `cover` (what the ban table holds over `source`) bans it: its own ban, or its
    /// IPv6 prefix's unless it is allowlisted or trusted there.
    fn banned(&self, rules: &Rules, source: IpAddr, cover: Option<Cover>, now: Timestamp) -> bool {
        match cover {
            None => false,
            Some(Cover::Address) => true,
            Some(Cover::Prefix(_)) => {
                !rules.allowlist.contains(source) && !self.is_trusted(source, now)
            }
        }
    }

    /// Judges one message from `source`: a UDP datagram, or a message framed from a TCP or TLS
    /// connection. Over a stream the handshake proved the address, so evidence against it cannot
    /// be forged in its name: unlike over UDP, a trusted source that sends a scanner's signature
    /// is banned like any other. A burst from a trusted source is let through up to the flood
    /// rule's trusted threshold and then only dropped (real phones burst: BLF subscriptions at
    /// boot), and allowlisted sources are never banned.
    pub fn check<'a>(
        &self,
        datagram: &'a [u8],
        source: IpAddr,
        transport: Transport,
        now: Timestamp,
    ) -> Checked<'a> {
        // The ban first, before even the rules are loaded: it is what a flood from banned
        // sources costs.
        let cover = self.cover(source, now);
        if cover == Some(Cover::Address) {
            return Verdict::Drop(DropReason::Banned).into();
        }
        let rules = self.rules.load();
        if self.banned(&rules, source, cover, now) {
            return Verdict::Drop(DropReason::Banned).into();
        }
        if let Err(reason) = self
            .unlisted(&rules, source, now)
            .and_then(|()| screen(&rules, source))
        {
            return Verdict::Drop(reason).into();
        }
        let judge = Judge {
            policy: self,
            rules: &rules,
            source,
            allowlisted: rules.allowlist.contains(source),
            transport,
            now,
        };
        if datagram.len() > rules.config.max_message_size {
            return judge.garbage(DropReason::TooLarge);
        }
        if is_keepalive(datagram) {
            return Verdict::Keepalive.into();
        }
        let view = match SipView::parse(datagram) {
            Ok(view) => view,
            Err(ParseError::NotSip) => return judge.garbage(DropReason::NotSip),
            Err(_) => return judge.garbage(DropReason::Malformed),
        };
        if view.method().is_none() {
            return Checked {
                answer: self.answer_of(&view),
                ..Verdict::Forward(view).into()
            };
        }
        if rules.signatures.find(&view).is_some() {
            let evidence = Evidence {
                rule: RuleId::Scanner,
                count: 1,
                first_seen: now,
            };
            let action = judge.packet_rule(&rules.config.scanner, evidence);
            return judge.conclude(view, RuleId::Scanner, action, DropReason::Scanner);
        }
        if !judge.allowlisted {
            if let Some(action) = judge.flood() {
                return judge.conclude(view, RuleId::Flood, action, DropReason::Flood);
            }
        }
        if sipguard_sip::acknowledges_own_reply(&view) {
            return Verdict::Drop(DropReason::Answered).into();
        }
        let user = self.username(&view);
        if self.is_user_blocked(user, source, now) {
            return Verdict::Drop(DropReason::UserBlocked).into();
        }
        if let Some(refused) = self.screen_call(&judge, view, user) {
            return refused;
        }
        Checked {
            memo: Some(self.memo(&view, user)),
            answer: None,
            verdict: Verdict::Forward(view),
            event: None,
            refusal: None,
        }
    }

    /// Whether `source` is trusted at `now`: it authenticated without a run of failures before,
    /// and has not failed across several usernames since.
    pub fn is_trusted(&self, source: IpAddr, now: Timestamp) -> bool {
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

    /// Bans `source` (an address or a network) by hand for exactly `duration` (an operator's
    /// ban, with the operator's `note`), replacing any ban in force, unless it is allowlisted.
    pub fn ban_manually(
        &self,
        source: impl Into<IpNet>,
        duration: Duration,
        note: Option<Arc<str>>,
        now: Timestamp,
    ) -> Option<Ban> {
        let source = source.into().trunc();
        if self.rules.load().allowlist.contains(source.addr()) {
            return None;
        }
        let ban = self.bans.ban_manually(source, note, duration, now);
        self.publish(Change::Banned {
            source,
            ban: ban.clone(),
        });
        Some(ban)
    }

    /// Lifts a ban and forgets the evidence against the addresses it covered (per source and
    /// per username), so they are let through at once and start from zero.
    pub fn lift(&self, source: impl Into<IpNet>) -> Option<Ban> {
        let source = source.into().trunc();
        if source.prefix_len() == source.max_prefix_len() {
            self.sources.remove(&source.addr());
        } else {
            self.sources.retain(|address| !source.contains(address));
            self.prefixes.remove(&source);
        }
        // Keyed by (source, username): finding a source's entries takes a scan of the table,
        // which an operator's lift can afford.
        if self.users.len() > 0 {
            self.users
                .retain(|(user_source, _)| !source.contains(user_source));
        }
        let ban = self.bans.lift(source)?;
        self.publish(Change::Lifted {
            source,
            ban: ban.clone(),
        });
        Some(ban)
    }

    /// Puts back a ban read from the journal, with its expiry and offence count as they were,
    /// without telling the observers (they are the journal's readers). Returns false,
    /// restoring nothing, when it has expired or the source is now allowlisted.
    pub fn restore(&self, source: IpNet, ban: Ban, now: Timestamp) -> bool {
        if now >= ban.expires || self.rules.load().allowlist.contains(source.addr()) {
            return false;
        }
        self.bans.restore(source.trunc(), ban, now);
        true
    }

    /// Puts in force a ban made elsewhere (another node's, shared through the cluster) with its
    /// rule, note, expiry and offence as they were, and tells the observers. Returns false,
    /// changing nothing, when it has expired, the source is allowlisted here, or a ban of the
    /// source ending as late is in force already.
    pub fn adopt(&self, source: IpNet, ban: Ban, now: Timestamp) -> bool {
        let source = source.trunc();
        let held = self.bans.get(source, now);
        if held.is_some_and(|held| held.expires >= ban.expires) || !self.restore(source, ban, now) {
            return false;
        }
        if let Some(ban) = self.bans.get(source, now) {
            self.publish(Change::Banned { source, ban });
        }
        true
    }

    /// Puts back trust read from the journal. Returns false, restoring nothing, when it has run
    /// out.
    pub fn restore_trust(&self, source: IpAddr, until: Timestamp, now: Timestamp) -> bool {
        if now >= until {
            return false;
        }
        let trust = Trust {
            until,
            published: until,
        };
        self.trust
            .upsert(source, now, || trust, |current| *current = trust);
        true
    }

    /// Whether a ban covers `source` at `now` (its own, or its prefix's).
    pub fn is_banned(&self, source: IpAddr, now: Timestamp) -> bool {
        self.banned(
            &self.rules.load(),
            source,
            self.bans.cover(source, now, None).0,
            now,
        )
    }

    /// The ban that covers `source`, if one is in force: its own, else its prefix's.
    pub fn ban_of(&self, source: IpAddr, now: Timestamp) -> Option<Ban> {
        self.bans.get(host(source), now).or_else(|| {
            let prefix = self.bans.prefix_of(source)?;
            self.bans.get(prefix, now)
        })
    }

    /// Every ban in force: addresses, and IPv6 prefixes.
    pub fn bans(&self, now: Timestamp) -> Vec<(IpNet, Ban)> {
        self.bans.list(now)
    }

    /// Every trusted source, with its expiry: what the journal keeps across a restart.
    pub fn trusted_sources(&self, now: Timestamp) -> Vec<(IpAddr, Timestamp)> {
        let mut trusted = Vec::new();
        self.trust
            .for_each(now, |source, trust| trusted.push((*source, trust.until)));
        trusted
    }

    /// Drops expired entries from every table, telling the observers of each ban that ran out.
    /// Call it now and then (every few seconds).
    pub fn sweep(&self, now: Timestamp) {
        // Published once the table's locks are let go: an observer may look at the bans.
        let mut expired = Vec::new();
        self.bans.sweep(now, |&source, ban| {
            expired.push(Change::Expired { source, ban })
        });
        for event in expired {
            self.publish(event);
        }
        self.sources.sweep(now);
        self.users.sweep(now);
        self.trust.sweep(now);
        self.prefixes.sweep(now);
        self.nonces.sweep(now);
        self.calls.sweep(now);
        self.callers.sweep(now);
    }

    /// Table sizes and evictions.
    pub fn stats(&self) -> Stats {
        Stats {
            bans: self.bans.len(),
            sources: self.sources.len(),
            users: self.users.len(),
            trusted: self.trust.len(),
            evictions: self.bans.evictions()
                + self.prefixes.evictions()
                + self.nonces.evictions()
                + self.sources.evictions()
                + self.users.evictions()
                + self.trust.evictions(),
        }
    }
}

/// One message's judgement: what the packet rules (signature, flood, garbage) need to know of
/// it, gathered once.
struct Judge<'p> {
    policy: &'p Policy,
    rules: &'p Rules,
    source: IpAddr,
    allowlisted: bool,
    transport: Transport,
    now: Timestamp,
}

impl Judge<'_> {
    /// What a rule judged on one packet does to its source; `None` when the source is banned
    /// already. Allowlisted sources lose the packet but are not banned, and so do trusted ones:
    /// over UDP the evidence may be forged in their name. Over a stream it is the source's own,
    /// and a scanner's signature from an authenticated host means the host is abused; a burst or
    /// garbage still does not ban it.
    fn packet_rule(&self, rule: &Rule, evidence: Evidence) -> Option<Action> {
        let policy = self.policy;
        let shielded_by_trust =
            self.transport == Transport::Datagram || evidence.rule != RuleId::Scanner;
        match rule.mode {
            Mode::Observe => Some(Action::Observed { would_ban: true }),
            Mode::Drop => Some(Action::Dropped),
            Mode::Ban
                if self.allowlisted
                    || (shielded_by_trust && policy.is_trusted(self.source, self.now)) =>
            {
                Some(Action::Dropped)
            }
            Mode::Ban => policy.ban(host(self.source), evidence, rule.ban_for, self.now),
        }
    }

    /// The verdict on a message a packet rule tripped on: forwarded in observe mode (with the
    /// memo the response path needs), dropped otherwise.
    fn conclude<'a>(
        &self,
        view: SipView<'a>,
        rule: RuleId,
        action: Option<Action>,
        reason: DropReason,
    ) -> Checked<'a> {
        let observed = matches!(action, Some(Action::Observed { .. }));
        let event = action.map(|action| self.event(rule, action));
        if observed {
            let policy = self.policy;
            return Checked {
                memo: Some(policy.memo(&view, policy.username(&view))),
                verdict: Verdict::Forward(view),
                event,
                answer: None,
                refusal: None,
            };
        }
        Checked {
            verdict: Verdict::Drop(reason),
            event,
            memo: None,
            answer: None,
            refusal: None,
        }
    }

    fn event(&self, rule: RuleId, action: Action) -> Event {
        Event {
            source: self.source,
            rule,
            action,
            proven: self.transport == Transport::Stream,
        }
    }

    /// Counts a request against the flood rule (and, for IPv6, against the source's prefix).
    /// Once the count passes the threshold (the trusted threshold, for a source that has
    /// authenticated), the rule has tripped: `Some` of its action.
    fn flood(&self) -> Option<Option<Action>> {
        let policy = self.policy;
        let (now, flood) = (self.now, self.rules.config.flood);
        if let Some(prefix) = policy.bans.prefix_of(self.source) {
            let spread = self.rules.config.ipv6_offenders.max(1);
            let (count, first_seen) = policy.prefixes.upsert(
                prefix,
                now,
                || PrefixState::new(self.rules.horizon),
                |state| (state.flood.hit(now, flood.window), state.flood.start),
            );
            if count > flood.threshold.saturating_mul(spread) && flood.mode == Mode::Ban {
                let evidence = Evidence {
                    rule: RuleId::Flood,
                    count,
                    first_seen,
                };
                policy.ban(prefix, evidence, flood.ban_for, now);
            }
        }
        let (count, first_seen) = policy.sources.upsert(
            self.source,
            now,
            || SourceState::new(self.rules.horizon),
            |state| (state.flood.hit(now, flood.window), state.flood.start),
        );
        if count <= flood.threshold
            || (count <= self.rules.config.flood_trusted_threshold
                && policy.is_trusted(self.source, now))
        {
            return None;
        }
        let evidence = Evidence {
            rule: RuleId::Flood,
            count,
            first_seen,
        };
        Some(self.packet_rule(&flood, evidence))
    }

    /// A message that is not SIP, is malformed or is too large: dropped, and counted against
    /// the garbage rule.
    fn garbage(&self, reason: DropReason) -> Checked<'static> {
        let policy = self.policy;
        let (now, rule) = (self.now, self.rules.config.garbage);
        let mut action = None;
        if !self.allowlisted {
            let (count, first_seen) = policy.sources.upsert(
                self.source,
                now,
                || SourceState::new(self.rules.horizon),
                |state| (state.garbage.hit(now, rule.window), state.garbage.start),
            );
            if count >= rule.threshold {
                let evidence = Evidence {
                    rule: RuleId::Garbage,
                    count,
                    first_seen,
                };
                action = self.packet_rule(&rule, evidence);
            }
        }
        Checked {
            verdict: Verdict::Drop(reason),
            event: action.map(|action| self.event(RuleId::Garbage, action)),
            memo: None,
            answer: None,
            refusal: None,
        }
    }
}
