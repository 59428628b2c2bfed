//! IPv6 prefixes: an attacker with a /64 has 2^64 addresses to rotate through, so evidence
//! against single addresses is not enough. Once several distinct addresses of one prefix
//! (default /64) have been banned, or the prefix as a whole floods, the prefix is banned. A
//! prefix may be shared (some hosters put many customers in one /64), so one offender never
//! bans its neighbours, and an allowlisted or trusted address inside a banned prefix still gets
//! through.

use crate::bounded::Expiring;
use crate::state::Window;
use crate::time::Timestamp;
use std::time::Duration;

/// Evidence kept per IPv6 prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct PrefixState {
    /// Requests from any address of the prefix.
    pub flood: Window,
    /// Refused credentials from any address of the prefix: a cracker taking a new address for
    /// every guess never fails twice from one.
    pub failures: Window,
    /// When the first offender of the current window was banned.
    pub start: Timestamp,
    /// Low 64 bits of the addresses banned in the window; never more than the spread.
    offenders: Vec<u64>,
    /// The longest window of any rule.
    pub horizon: Duration,
}

impl PrefixState {
    pub fn new(horizon: Duration) -> Self {
        PrefixState {
            horizon,
            ..PrefixState::default()
        }
    }

    /// Notes that the address with low bits `host` was banned; returns how many distinct
    /// addresses of the prefix were banned in the window (at most `cap`).
    pub fn offended(&mut self, host: u64, now: Timestamp, cap: usize) -> usize {
        if self.offenders.is_empty() || now.since(self.start) >= self.horizon {
            self.offenders.clear();
            self.start = now;
        }
        if !self.offenders.contains(&host) && self.offenders.len() < cap {
            self.offenders.push(host);
        }
        self.offenders.len()
    }
}

impl Expiring for PrefixState {
    fn expired(&self, now: Timestamp) -> bool {
        now.since(self.start.max(self.flood.start).max(self.failures.start)) >= self.horizon
    }
    fn worth(&self, now: Timestamp) -> u64 {
        self.offenders.len() as u64 * 64 + u64::from(self.flood.current(now, self.horizon))
    }
}
