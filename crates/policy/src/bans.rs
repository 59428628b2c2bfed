//! The ban table and the memory of past offences that makes repeat bans longer.

use crate::bounded::{BoundedMap, Expiring};
use crate::time::Timestamp;
use crate::verdict::RuleId;
use std::net::IpAddr;
use std::time::Duration;

/// One banned source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// The rule that banned it.
    pub rule: RuleId,
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
}

/// Bans issued to a source recently: each new ban within the window doubles.
#[derive(Debug, Clone, Copy)]
struct Offences {
    count: u32,
    forget_at: Timestamp,
}

impl Expiring for Offences {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.forget_at
    }
    fn worth(&self, _now: Timestamp) -> u64 {
        u64::from(self.count)
    }
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

pub(crate) struct BanTable {
    bans: BoundedMap<IpAddr, Ban>,
    offences: BoundedMap<IpAddr, Offences>,
    repeat: RepeatConfig,
}

impl BanTable {
    pub fn new(cap: usize, repeat: RepeatConfig) -> Self {
        BanTable {
            bans: BoundedMap::new(cap),
            offences: BoundedMap::new(cap),
            repeat,
        }
    }

    /// True while `source` is banned; notes the drop as the ban's last sighting.
    pub fn is_banned(&self, source: IpAddr, now: Timestamp) -> bool {
        self.bans
            .get(&source, now, |ban| ban.last_seen = now)
            .is_some()
    }

    /// Bans `source` for `base`, doubled for each earlier ban that ended less than the repeat
    /// window ago (or has not ended), up to the maximum.
    pub fn ban(&self, source: IpAddr, evidence: Evidence, base: Duration, now: Timestamp) -> Ban {
        let RepeatConfig { within, max_ban } = self.repeat;
        let (offence, expires) = self.offences.upsert(
            source,
            now,
            || Offences {
                count: 0,
                forget_at: now,
            },
            |offences| {
                offences.count = offences.count.saturating_add(1);
                let doubling = 1u32.checked_shl(offences.count - 1).unwrap_or(u32::MAX);
                let expires = now + base.saturating_mul(doubling).min(max_ban.max(base));
                offences.forget_at = expires + within;
                (offences.count, expires)
            },
        );
        let ban = Ban {
            rule: evidence.rule,
            evidence: evidence.count,
            first_seen: evidence.first_seen,
            last_seen: now,
            expires,
            offence,
        };
        self.bans.upsert(
            source,
            now,
            || ban,
            |current| {
                if ban.expires >= current.expires {
                    *current = ban;
                }
                *current
            },
        )
    }

    /// Puts back a ban as it was, with its offence count, so a later ban keeps doubling.
    pub fn restore(&self, source: IpAddr, ban: Ban, now: Timestamp) {
        let offences = Offences {
            count: ban.offence,
            forget_at: ban.expires + self.repeat.within,
        };
        self.offences
            .upsert(source, now, || offences, |current| *current = offences);
        self.bans
            .upsert(source, now, || ban, |current| *current = ban);
    }

    /// Bans dropped because they ran out.
    pub fn expired(&self) -> u64 {
        self.bans.expired()
    }

    /// Lifts a ban (and forgets past offences), returning it.
    pub fn lift(&self, source: IpAddr) -> Option<Ban> {
        self.offences.remove(&source);
        self.bans.remove(&source)
    }

    /// Every ban in force.
    pub fn list(&self, now: Timestamp) -> Vec<(IpAddr, Ban)> {
        let mut bans = Vec::new();
        self.bans
            .for_each(now, |source, ban| bans.push((*source, *ban)));
        bans
    }

    pub fn sweep(&self, now: Timestamp) {
        self.bans.sweep(now);
        self.offences.sweep(now);
    }

    pub fn len(&self) -> usize {
        self.bans.len()
    }

    pub fn evictions(&self) -> u64 {
        self.bans.evictions() + self.offences.evictions()
    }
}
