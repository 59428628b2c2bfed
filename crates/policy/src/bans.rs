//! The ban table and the memory of past offences that makes repeat bans longer.
//!
//! Bans are keyed by network: a single address (a /32 or /128), or an IPv6 prefix once several
//! of its addresses offend (see [`crate::prefix`]). Looking up an address costs one probe, and
//! a second for IPv6 only while some prefix ban is in force.

use crate::bounded::{BoundedMap, Expiring};
use crate::time::{PerSecond, Timestamp};
use crate::verdict::RuleId;
use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One banned source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The rule that banned it.
    pub rule: RuleId,
    /// The operator's words for a manual ban; rule bans are explained by `rule` and `evidence`.
    pub note: Option<Arc<str>>,
    /// How many pieces of evidence tripped the rule (failures, requests, distinct users).
    pub evidence: u32,
    /// When the evidence started.
    pub first_seen: Timestamp,
    /// The last evidence, or the last packet dropped because of the ban.
    pub last_seen: Timestamp,
    /// When the ban lifts.
    pub expires: Timestamp,
    /// 1 for a first ban; n for the n-th ban within the repeat window.
    pub offence: u32,
    /// Not announced yet: one of a flood of bans on forgeable evidence past
    /// [`crate::ANNOUNCED_BANS_PER_SECOND`], enforced here but passed over by the followers that
    /// write down, push or share each ban. It is announced the first time its source is seen
    /// again (within [`crate::ANNOUNCED_COMEBACKS_PER_SECOND`]): a source that comes back is a
    /// real one.
    pub quiet: bool,
}

impl Expiring for Ban {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.expires
    }
    fn worth(&self, now: Timestamp) -> u64 {
        // A ban with longer to run is worth more; repeat offenders weigh double per offence.
        self.expires
            .since(now)
            .as_secs()
            .saturating_mul(u64::from(self.offence))
    }
    fn proven(&self, _now: Timestamp) -> bool {
        earned(self.rule)
    }
}

/// Whether a ban by `rule` rests on more than one packet's word: the PBX's answers to the
/// source, or the operator's. The packet rules (a scanner's signature, a flood, garbage) ban on
/// what a spoofer forges with a new address per packet, and give way to these when the table
/// is full.
pub(crate) fn earned(rule: RuleId) -> bool {
    !matches!(rule, RuleId::Scanner | RuleId::Flood | RuleId::Garbage)
}

/// Bans issued to a source recently: each new ban within the window doubles.
#[derive(Debug, Clone, Copy)]
struct Offences {
    count: u32,
    forget_at: Timestamp,
    /// The last ban was earned (see [`earned`]).
    earned: bool,
}

impl Expiring for Offences {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.forget_at
    }
    fn worth(&self, _now: Timestamp) -> u64 {
        u64::from(self.count)
    }
    fn proven(&self, _now: Timestamp) -> bool {
        self.earned
    }
}

/// Who imposes a ban, which decides how it is kept.
enum Imposer {
    /// A rule: the ban doubles for repeat offenders; `quiet` (see [`Ban::quiet`]).
    Rule { quiet: bool },
    /// The operator, with their note: the length stands as given, and it is announced.
    Operator(Option<Arc<str>>),
}

/// How bans grow for repeat offenders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatConfig {
    /// A new ban less than this long after the previous one ended counts as a repeat.
    pub within: Duration,
    /// Bans never grow beyond this.
    pub max_ban: Duration,
}

impl Default for RepeatConfig {
    fn default() -> Self {
        RepeatConfig {
            within: Duration::from_secs(24 * 3600),
            max_ban: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What the evidence for a new ban says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Evidence {
    pub rule: RuleId,
    pub count: u32,
    pub first_seen: Timestamp,
}

/// What covers a banned address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cover {
    /// A ban on the address itself.
    Address,
    /// A ban on its IPv6 prefix.
    Prefix(IpNet),
}

pub(crate) struct BanTable {
    bans: BoundedMap<IpNet, Ban>,
    offences: BoundedMap<IpNet, Offences>,
    repeat: RepeatConfig,
    /// The IPv6 prefix length prefix bans are made at.
    prefix_len: u8,
    /// When the last prefix ban ends (ms since the epoch): past it an IPv6 lookup takes one
    /// probe, not two.
    prefixes_end: AtomicU64,
}

/// The network of exactly one address.
pub(crate) fn host(source: IpAddr) -> IpNet {
    IpNet::from(source)
}

impl BanTable {
    pub fn new(cap: usize, repeat: RepeatConfig, prefix_len: u8) -> Self {
        BanTable {
            bans: BoundedMap::new(cap),
            offences: BoundedMap::new(cap),
            repeat,
            prefix_len,
            prefixes_end: AtomicU64::new(0),
        }
    }

    /// The IPv6 prefix `source` belongs to, for prefix bans; `None` for IPv4.
    pub fn prefix_of(&self, source: IpAddr) -> Option<IpNet> {
        match source {
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.prefix_len)
                .ok()
                .map(|net| IpNet::V6(net.trunc())),
            IpAddr::V4(_) => None,
        }
    }

    /// What bans `source`, if anything; notes the drop as the ban's last sighting. A quiet ban
    /// found is made loud when there is a `budget` and it allows, and returned to be announced.
    pub fn cover(
        &self,
        source: IpAddr,
        now: Timestamp,
        budget: Option<&PerSecond>,
    ) -> (Option<Cover>, Option<(IpNet, Ban)>) {
        let seen = |ban: &mut Ban| {
            ban.last_seen = now;
            (ban.quiet && budget.is_some_and(|budget| budget.take(now))).then(|| {
                ban.quiet = false;
                ban.clone()
            })
        };
        let address = host(source);
        if let Some(announce) = self.bans.get_live(&address, now, seen) {
            return (Some(Cover::Address), announce.map(|ban| (address, ban)));
        }
        if now.as_millis() >= self.prefixes_end.load(Ordering::Relaxed) {
            return (None, None);
        }
        let Some(prefix) = self.prefix_of(source) else {
            return (None, None);
        };
        match self.bans.get_live(&prefix, now, seen) {
            Some(announce) => (
                Some(Cover::Prefix(prefix)),
                announce.map(|ban| (prefix, ban)),
            ),
            None => (None, None),
        }
    }

    /// Bans `source` for `base`, doubled for each earlier ban that ended less than the repeat
    /// window ago, up to the maximum. A source already banned is not banned again: evidence that
    /// arrives during a ban (late answers to requests sent before it) is no new offence, so
    /// `None` is returned and nothing changes.
    pub fn ban(
        &self,
        source: IpNet,
        evidence: Evidence,
        base: Duration,
        quiet: bool,
        now: Timestamp,
    ) -> Option<Ban> {
        if self.bans.get_live(&source, now, |_| ()).is_some() {
            return None;
        }
        Some(self.impose(source, evidence, Imposer::Rule { quiet }, base, now))
    }

    /// The operator's ban: replaces any ban in force, and counts as an offence like any other.
    pub fn ban_manually(
        &self,
        source: IpNet,
        note: Option<Arc<str>>,
        duration: Duration,
        now: Timestamp,
    ) -> Ban {
        let evidence = Evidence {
            rule: RuleId::Manual,
            count: 0,
            first_seen: now,
        };
        // The operator's length stands as given, doubled for no one.
        self.impose(source, evidence, Imposer::Operator(note), duration, now)
    }

    fn impose(
        &self,
        source: IpNet,
        evidence: Evidence,
        by: Imposer,
        base: Duration,
        now: Timestamp,
    ) -> Ban {
        let RepeatConfig { within, max_ban } = self.repeat;
        let (grow, note, quiet) = match by {
            Imposer::Rule { quiet } => (true, None, quiet),
            Imposer::Operator(note) => (false, note, false),
        };
        let (offence, expires) = self.offences.upsert(
            source,
            now,
            || Offences {
                count: 0,
                forget_at: now,
                earned: false,
            },
            |offences| {
                offences.count = offences.count.saturating_add(1);
                offences.earned = earned(evidence.rule);
                let doubling = 1u32.checked_shl(offences.count - 1).unwrap_or(u32::MAX);
                let expires = if grow {
                    now + base.saturating_mul(doubling).min(max_ban.max(base))
                } else {
                    now + base
                };
                offences.forget_at = expires + within;
                (offences.count, expires)
            },
        );
        let ban = Ban {
            rule: evidence.rule,
            note,
            evidence: evidence.count,
            first_seen: evidence.first_seen,
            last_seen: now,
            expires,
            offence,
            quiet,
        };
        self.bans.upsert(
            source,
            now,
            || ban.clone(),
            |current| *current = ban.clone(),
        );
        self.note_prefix(source, &ban);
        ban
    }

    /// Keeps the second probe of IPv6 lookups on while a prefix ban is in force.
    fn note_prefix(&self, source: IpNet, ban: &Ban) {
        if source.prefix_len() < source.max_prefix_len() {
            self.prefixes_end
                .fetch_max(ban.expires.as_millis(), Ordering::Relaxed);
        }
    }

    /// Puts back a ban as it was, with its offence count, so a later ban keeps doubling.
    pub fn restore(&self, source: IpNet, ban: Ban, now: Timestamp) {
        let offences = Offences {
            count: ban.offence,
            forget_at: ban.expires + self.repeat.within,
            earned: earned(ban.rule),
        };
        self.offences
            .upsert(source, now, || offences, |current| *current = offences);
        self.note_prefix(source, &ban);
        self.bans.upsert(
            source,
            now,
            || ban.clone(),
            |current| *current = ban.clone(),
        );
    }

    /// Lifts a ban (and forgets past offences), returning it.
    pub fn lift(&self, source: IpNet) -> Option<Ban> {
        self.offences.remove(&source);
        self.bans.remove(&source)
    }

    /// Every ban in force.
    pub fn list(&self, now: Timestamp) -> Vec<(IpNet, Ban)> {
        let mut bans = Vec::new();
        self.bans
            .for_each(now, |source, ban| bans.push((*source, ban.clone())));
        bans
    }

    /// The ban on exactly `source`, if one is in force.
    pub fn get(&self, source: IpNet, now: Timestamp) -> Option<Ban> {
        self.bans.get_live(&source, now, |ban| ban.clone())
    }

    /// Drops expired bans and offences, handing each ban that ran out to `expired`.
    pub fn sweep(&self, now: Timestamp, expired: impl FnMut(&IpNet, Ban)) {
        self.bans.sweep_with(now, expired);
        self.offences.sweep(now);
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn evictions(&self) -> u64 {
        self.bans.evictions() + self.offences.evictions()
    }
}
