//! Per-source and per-(source, username) evidence, with windows opened by the first event, and
//! the trust a source earns by authenticating.

use crate::bounded::Expiring;
use crate::time::Timestamp;
use std::time::Duration;

/// Counts events in a window that opens at the first event and closes `window` later; the next
/// event after that opens a new one.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Window {
    pub start: Timestamp,
    pub count: u32,
}

impl Window {
    /// Counts one event at `now` and returns the count in the current window.
    pub fn hit(&mut self, now: Timestamp, window: Duration) -> u32 {
        if !self.live(now, window) {
            *self = Window {
                start: now,
                count: 0,
            };
        }
        self.count = self.count.saturating_add(1);
        self.count
    }

    /// The count in the window open at `now` (0 once it has closed).
    pub fn current(&self, now: Timestamp, window: Duration) -> u32 {
        if self.live(now, window) {
            self.count
        } else {
            0
        }
    }

    fn live(&self, now: Timestamp, window: Duration) -> bool {
        self.count > 0 && now.since(self.start) < window
    }
}

/// How long a challenged username has to be followed up with credentials (on the same Call-ID)
/// before the challenge counts as a probe. A phone answers its challenge within milliseconds; a
/// scanner that sweeps extensions never does.
pub(crate) const FOLLOW_UP: Duration = Duration::from_secs(5);

/// Challenges awaiting their follow-up, per source; beyond this the oldest is judged at once.
const PENDING_CHALLENGES: usize = 32;

/// A username a source probed: refused after credentials, or challenged and never followed up.
#[derive(Debug, Clone, Copy)]
struct Probe {
    user: u64,
    /// Refused after credentials answering a challenge sent to the source (or over a stream):
    /// evidence no spoofer can forge.
    proven: bool,
}

/// A bare request that was challenged.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Keyed hash of its Call-ID.
    call: u64,
    user: u64,
    at: Timestamp,
    /// Challenged over a stream: the source surely received the challenge.
    proven: bool,
}

/// Distinct usernames a source probed without success, and the challenges it has yet to follow
/// up.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probes {
    pub start: Timestamp,
    /// Keyed hashes of the usernames; never more than the rule's threshold.
    users: Vec<Probe>,
    /// Bare requests that were challenged, awaiting their follow-up.
    pending: Vec<Pending>,
}

/// How many distinct usernames a source probed, and how many of those on proven evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeCount {
    pub distinct: usize,
    pub proven: usize,
}

impl Probes {
    /// Adds a probed username and returns the count in the window.
    pub fn add(
        &mut self,
        user: u64,
        proven: bool,
        now: Timestamp,
        window: Duration,
        cap: usize,
    ) -> ProbeCount {
        self.open(now, window);
        self.insert(Probe { user, proven }, cap);
        self.judge_pending(now, cap);
        self.count()
    }

    /// Notes a bare request for `user` on Call-ID `call` that was challenged: it becomes a probe
    /// unless credentials follow on the same Call-ID within [`FOLLOW_UP`]. Returns the count,
    /// with the challenges not followed up in time judged.
    pub fn challenged(
        &mut self,
        user: u64,
        call: u64,
        proven: bool,
        now: Timestamp,
        window: Duration,
        cap: usize,
    ) -> ProbeCount {
        self.open(now, window);
        if !self
            .pending
            .iter()
            .any(|p| p.call == call && p.user == user)
        {
            if self.pending.len() >= PENDING_CHALLENGES {
                let oldest = self.pending.remove(0);
                self.insert(
                    Probe {
                        user: oldest.user,
                        proven: oldest.proven,
                    },
                    cap,
                );
            }
            self.pending.push(Pending {
                call,
                user,
                at: now,
                proven,
            });
        }
        self.judge_pending(now, cap);
        self.count()
    }

    /// Credentials arrived on Call-ID `call`: its challenge was followed up, as a phone does.
    pub fn followed_up(&mut self, call: u64) {
        self.pending.retain(|p| p.call != call);
    }

    /// A username that succeeded is no longer evidence of enumeration.
    pub fn succeeded(&mut self, user: u64) {
        self.users.retain(|probe| probe.user != user);
        self.pending.retain(|p| p.user != user);
    }

    fn open(&mut self, now: Timestamp, window: Duration) {
        if (self.users.is_empty() && self.pending.is_empty()) || now.since(self.start) >= window {
            self.users.clear();
            self.pending.clear();
            self.start = now;
        }
    }

    fn insert(&mut self, probe: Probe, cap: usize) {
        if let Some(known) = self.users.iter_mut().find(|p| p.user == probe.user) {
            known.proven |= probe.proven;
        } else if self.users.len() < cap {
            self.users.push(probe);
        } else if probe.proven {
            // Full: a proven probe takes the place of an unproven one.
            if let Some(unproven) = self.users.iter_mut().find(|p| !p.proven) {
                *unproven = probe;
            }
        }
    }

    /// Challenges older than [`FOLLOW_UP`] become probes.
    fn judge_pending(&mut self, now: Timestamp, cap: usize) {
        while let Some(&pending) = self.pending.first() {
            if now.since(pending.at) < FOLLOW_UP {
                break;
            }
            self.pending.remove(0);
            self.insert(
                Probe {
                    user: pending.user,
                    proven: pending.proven,
                },
                cap,
            );
        }
    }

    fn count(&self) -> ProbeCount {
        ProbeCount {
            distinct: self.users.len(),
            proven: self.users.iter().filter(|p| p.proven).count(),
        }
    }

    fn held(&self) -> usize {
        self.users.len() + self.pending.len()
    }
}

/// Distinct usernames whose credentials the PBX refused at one source, on proven evidence: a
/// source failing across several is cracking, and earns no trust.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailingUsers {
    start: Timestamp,
    users: Vec<u64>,
}

impl FailingUsers {
    /// Adds a username and returns how many distinct ones the window holds (at most `cap`).
    pub fn add(&mut self, user: u64, now: Timestamp, window: Duration, cap: usize) -> usize {
        if self.users.is_empty() || now.since(self.start) >= window {
            self.users.clear();
            self.start = now;
        }
        if !self.users.contains(&user) && self.users.len() < cap {
            self.users.push(user);
        }
        self.users.len()
    }

    /// How many distinct usernames failed in the window open at `now`.
    pub fn current(&self, now: Timestamp, window: Duration) -> usize {
        if now.since(self.start) < window {
            self.users.len()
        } else {
            0
        }
    }
}

/// Evidence kept per source address.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceState {
    pub flood: Window,
    pub garbage: Window,
    pub invite_failures: Window,
    pub probes: Probes,
    pub failing_users: FailingUsers,
    /// The longest window of any rule: past it, nothing here is evidence any more.
    pub horizon: Duration,
}

impl SourceState {
    pub fn new(horizon: Duration) -> Self {
        SourceState {
            horizon,
            ..SourceState::default()
        }
    }
}

impl Expiring for SourceState {
    fn expired(&self, now: Timestamp) -> bool {
        let last = self
            .flood
            .start
            .max(self.garbage.start)
            .max(self.invite_failures.start)
            .max(self.probes.start)
            .max(self.failing_users.start);
        now.since(last) >= self.horizon
    }
    fn worth(&self, now: Timestamp) -> u64 {
        // Failures and probes are slow to gather and cheap to forge only in bulk; a flood or
        // garbage window from a spoofed address is the first thing to let go.
        let live = |w: &Window| u64::from(w.current(now, self.horizon));
        live(&self.invite_failures) * 16
            + self.probes.held() as u64 * 16
            + live(&self.flood)
            + live(&self.garbage)
    }
    fn proven(&self, now: Timestamp) -> bool {
        // Usernames refused after credentials answering a challenge the source was sent.
        self.probes.count().proven > 0 && now.since(self.probes.start) < self.horizon
    }
}

/// The long window of the failure rule: a cracker that keeps under the rule's threshold in every
/// window of its own (4 guesses per 10 minutes is 576 a day) is caught over a day, at
/// [`SLOW_FACTOR`] times the threshold.
pub(crate) const SLOW_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How many times the rule's threshold the long window takes: 20 a day at the default 5.
pub(crate) const SLOW_FACTOR: u32 = 4;

/// Evidence kept per (source, username).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct UserState {
    /// Refused REGISTERs, on proven evidence.
    pub register_failures: Window,
    /// The same over [`SLOW_WINDOW`]: a cracker pacing itself under the rule's window.
    pub slow_register_failures: Window,
    /// Refused requests of any kind, on proven evidence: a run of them withholds trust.
    pub failures: Window,
    pub blocked_until: Timestamp,
    pub horizon: Duration,
}

impl Expiring for UserState {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.blocked_until
            && now.since(self.register_failures.start.max(self.failures.start)) >= self.horizon
            && self.slow_register_failures.current(now, SLOW_WINDOW) == 0
    }
    fn worth(&self, now: Timestamp) -> u64 {
        self.blocked_until.since(now).as_secs() + u64::from(self.failures.count) * 16
    }
}

/// A source that authenticated successfully, until when.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trust {
    pub until: Timestamp,
    /// The expiry last published to the observers (the journal), so a phone's every
    /// re-registration does not write a record.
    pub published: Timestamp,
}

impl Expiring for Trust {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.until
    }
    fn worth(&self, now: Timestamp) -> u64 {
        self.until.since(now).as_secs()
    }
    fn proven(&self, _now: Timestamp) -> bool {
        // A proven source is worth more than any evidence against a spoofed one.
        true
    }
}
