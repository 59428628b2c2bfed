//! The checks a call gets beyond the packet rules: the country filter on REGISTERs and INVITEs,
//! the dial rules and the call rates on INVITEs that start a call, and the call table that
//! follows each call to its end (its final answer, a BYE the PBX sends or accepts, or a
//! timeout) for the concurrency limit. Other requests pay one method comparison.
//!
//! A call is known by its Call-ID, so a retransmitted INVITE and the INVITE that answers a
//! challenge are the same call, counted once. Rates per username count outgoing calls (any
//! class but internal); the rate per source counts every call; allowlisted sources are exempt
//! from rates (a carrier delivers many calls). Live calls are held in each username's own
//! fixed array with their expiry, so a call whose end never comes, or whose entry the call table
//! evicted, frees its slot by the timeout.

use crate::bans::Evidence;
use crate::bounded::Expiring;
use crate::dial::{Barred, Caller, Class, Number};
use crate::geo::Placed;
use crate::state::Window;
use crate::{Checked, DropReason, Judge, Mode, Policy, Rule, RuleId, Rules, Timestamp, Verdict};
use sipguard_sip::{Method, SipView};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::time::Duration;

/// Live calls one username can have tracked; the concurrency limit is at most this.
pub const MAX_CONCURRENT: u32 = 16;

/// How long a call may ring before it is released without an answer (RFC 3261's Timer C).
const RING_TIMEOUT: Duration = Duration::from_secs(180);

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// The call rate limits. A limit of 0 is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRates {
    /// What happens to a call past a limit (threshold and window unused).
    pub rule: Rule,
    /// New calls per minute from one source (allowlisted sources exempt).
    pub per_source_per_minute: u32,
    /// New outgoing calls per minute per username.
    pub per_user_per_minute: u32,
    /// New outgoing calls per hour per username (Kerio Operator's 50).
    pub per_user_per_hour: u32,
    /// Outgoing calls of one username up at once (at most [`MAX_CONCURRENT`]).
    pub concurrent_per_user: u32,
    /// Consecutive international calls of one username to one prefix within the hour.
    pub same_prefix: u32,
    /// Digits of the international number (country code included) that make the prefix.
    pub same_prefix_digits: u8,
    /// An answered call with no BYE seen is released after this long.
    pub call_timeout: Duration,
}

impl Default for CallRates {
    fn default() -> Self {
        CallRates {
            rule: Rule {
                mode: Mode::Drop,
                threshold: 1,
                window: MINUTE,
                ban_for: HOUR,
            },
            per_source_per_minute: 60,
            per_user_per_minute: 10,
            per_user_per_hour: 50,
            concurrent_per_user: 4,
            same_prefix: 10,
            same_prefix_digits: 6,
            call_timeout: 4 * HOUR,
        }
    }
}

/// Which limit a call ran into. A metric label (the `class` of the call rate rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Calls per minute from the source.
    SourceMinute,
    /// Calls per minute of the username.
    UserMinute,
    /// Calls per hour of the username.
    UserHour,
    /// Calls up at once of the username.
    Concurrent,
    /// Consecutive calls to one international prefix.
    SamePrefix,
}

impl RateLimit {
    /// Every limit, for pre-registering metrics.
    pub const ALL: [RateLimit; 5] = [
        RateLimit::SourceMinute,
        RateLimit::UserMinute,
        RateLimit::UserHour,
        RateLimit::Concurrent,
        RateLimit::SamePrefix,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimit::SourceMinute => "source_per_minute",
            RateLimit::UserMinute => "user_per_minute",
            RateLimit::UserHour => "user_per_hour",
            RateLimit::Concurrent => "concurrent",
            RateLimit::SamePrefix => "same_prefix",
        }
    }
}

/// A call or registration refused by one of these rules, for the caller to count, log and,
/// for a known source, answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule: dial, call rate or country.
    pub rule: RuleId,
    /// The class (dial: the destination's; call rate: the limit; country: the method). A metric
    /// label.
    pub class: &'static str,
    /// Whether the request goes on anyway (observe mode).
    pub observed: bool,
    /// Whether the source is owed a 403 (an allowlisted or authenticated source; anyone else
    /// gets silence).
    pub answer: bool,
    /// The username, as sent (at most 64 bytes).
    pub username: Option<String>,
    /// The destination, normalised where it is a number; for a country refusal, where the
    /// source was placed (a country code, `private` or `unknown`).
    pub destination: Option<String>,
}

impl Refusal {
    /// Every (rule, class) a refusal can carry, for pre-registering metrics.
    pub const CLASSES: [(RuleId, &'static str); 12] = [
        (RuleId::Dial, "national"),
        (RuleId::Dial, "international"),
        (RuleId::Dial, "international_country"),
        (RuleId::Dial, "premium"),
        (RuleId::Dial, "special"),
        (RuleId::CallRate, "source_per_minute"),
        (RuleId::CallRate, "user_per_minute"),
        (RuleId::CallRate, "user_per_hour"),
        (RuleId::CallRate, "concurrent"),
        (RuleId::CallRate, "same_prefix"),
        (RuleId::Country, "register"),
        (RuleId::Country, "invite"),
    ];

    /// The reason phrases of the 403s, in the order of [`Refusal::CLASSES`].
    const PHRASES: [&'static str; 12] = [
        "Forbidden by sipguard rule dial national",
        "Forbidden by sipguard rule dial international",
        "Forbidden by sipguard rule dial international_country",
        "Forbidden by sipguard rule dial premium",
        "Forbidden by sipguard rule dial special",
        "Forbidden by sipguard rule call_rate source_per_minute",
        "Forbidden by sipguard rule call_rate user_per_minute",
        "Forbidden by sipguard rule call_rate user_per_hour",
        "Forbidden by sipguard rule call_rate concurrent",
        "Forbidden by sipguard rule call_rate same_prefix",
        "Forbidden by sipguard rule country register",
        "Forbidden by sipguard rule country invite",
    ];

    /// The reason phrase of the 403 that answers it: the rule and the class, a static string
    /// (the outbound path's answers take no allocation).
    pub fn reason_phrase(&self) -> &'static str {
        let class = (self.rule, self.class);
        Refusal::CLASSES
            .iter()
            .position(|known| *known == class)
            .map_or("Forbidden by sipguard", |i| Refusal::PHRASES[i])
    }
}

/// A PBX-originated call judged by [`Policy::check_outbound_call`].
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// Whether to send it to the carrier.
    pub allowed: bool,
    /// The rule that tripped (observed when `allowed`).
    pub refusal: Option<Refusal>,
}

/// A call being followed: whose it is and until when it holds its slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    /// Keyed hash of the username whose slot it holds; 0 for none.
    user: u64,
    until: Timestamp,
}

impl Expiring for Call {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.until
    }
    fn worth(&self, now: Timestamp) -> u64 {
        self.until.since(now).as_secs()
    }
}

/// Who the rates count: a source, or a username.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Counted {
    Source(IpAddr),
    User(u64),
}

/// Calls counted for one source or username.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Calling {
    minute: Window,
    hour: Window,
    /// Live calls: Call-ID hash and expiry; 0 is a free slot.
    live: [(u64, Timestamp); MAX_CONCURRENT as usize],
    /// The international prefix of the last calls, hashed, and how many in a row.
    prefix: u64,
    same: Window,
}

impl Calling {
    fn live(&self, now: Timestamp) -> u32 {
        self.live
            .iter()
            .filter(|(call, until)| *call != 0 && now < *until)
            .count() as u32
    }

    fn hold(&mut self, call: u64, until: Timestamp, now: Timestamp) {
        if let Some(slot) = self
            .live
            .iter_mut()
            .find(|(held, until)| *held == 0 || now >= *until)
        {
            *slot = (call, until);
        }
    }

    fn set(&mut self, call: u64, until: Option<Timestamp>) {
        if let Some(slot) = self.live.iter_mut().find(|(held, _)| *held == call) {
            *slot = until.map_or((0, Timestamp::ZERO), |until| (call, until));
        }
    }
}

impl Expiring for Calling {
    fn expired(&self, now: Timestamp) -> bool {
        self.hour.current(now, HOUR) == 0
            && self.minute.current(now, MINUTE) == 0
            && self.live(now) == 0
    }
    fn worth(&self, now: Timestamp) -> u64 {
        u64::from(self.hour.current(now, HOUR)) + u64::from(self.live(now)) * 64
    }
}

/// What a call check knows of the call.
struct Attempt<'v> {
    user: Option<&'v [u8]>,
    number: Option<Number>,
    class: Class,
}

impl Policy {
    /// The country filter, dial rules and call rates for a request the packet rules let
    /// through: what to do with it, or `None` when they have nothing against it. Only REGISTERs and INVITEs that start
    /// a call are judged; a BYE ends its call.
    pub(crate) fn screen_call<'a>(
        &self,
        judge: &Judge<'_>,
        view: SipView<'a>,
        user: Option<u64>,
    ) -> Option<Checked<'a>> {
        let rules = judge.rules;
        match view.method() {
            Some(Method::Register) if rules.config.geo.active() && !judge.allowlisted => {
                let geo = &rules.config.geo;
                let placed = geo.admit(judge.source, &geo.register).err()?;
                let refusal = self.refusal(judge, &view, RuleId::Country, "register");
                Some(self.refuse(judge, view, &geo.rule, placed_refusal(refusal, placed)))
            }
            Some(Method::Invite) if view.to.tag.is_none() => self.screen_invite(judge, view, user),
            _ => None,
        }
    }

    fn screen_invite<'a>(
        &self,
        judge: &Judge<'_>,
        view: SipView<'a>,
        user: Option<u64>,
    ) -> Option<Checked<'a>> {
        let (rules, source, now) = (judge.rules, judge.source, judge.now);
        let caller = if judge.allowlisted {
            Caller::Allowlisted
        } else if self.is_trusted(source, now) {
            Caller::Phone
        } else {
            Caller::Other
        };
        let geo = &rules.config.geo;
        if geo.active() && caller != Caller::Allowlisted {
            if let Err(placed) = geo.admit(source, &geo.invite) {
                let refusal = self.refusal(judge, &view, RuleId::Country, "invite");
                return Some(self.refuse(judge, view, &geo.rule, placed_refusal(refusal, placed)));
            }
        }
        let attempt = self.attempt(rules, &view);
        let dial = &rules.config.dial;
        let judged = attempt.number.filter(|_| dial.restricts());
        let in_group = |name: &str| {
            let group = rules.allowlist.get(source);
            group.is_some_and(|&group| rules.config.allowlist[group].name == name)
        };
        if let Some(Err(barred)) = judged.map(|n| dial.judge(&n, caller, in_group)) {
            let mut refusal = self.refusal(judge, &view, RuleId::Dial, barred_class(barred));
            refusal.destination = attempt.number.map(|n| n.to_string());
            return Some(self.refuse(judge, view, &dial.rule, refusal));
        }
        if caller == Caller::Allowlisted {
            return None;
        }
        let call = self.token(view.call_id);
        let limit = self
            .count_call(rules, Some(source), user, call, &attempt, now)
            .err()?;
        let mut refusal = self.refusal(judge, &view, RuleId::CallRate, limit.as_str());
        refusal.destination = attempt.number.map(|n| n.to_string());
        Some(self.refuse(judge, view, &rules.config.calls.rule, refusal))
    }

    /// What is known of an INVITE's call before it is judged.
    fn attempt<'v>(&self, rules: &Rules, view: &SipView<'v>) -> Attempt<'v> {
        let dial = &rules.config.dial;
        let number = match view.start {
            sipguard_sip::StartLine::Request { uri, .. } => dial.plan.normalise(uri),
            sipguard_sip::StartLine::Response { .. } => None,
        };
        Attempt {
            user: view
                .credentials()
                .and_then(|c| c.username)
                .or(view.from.user),
            class: number.map_or(Class::Internal, |n| dial.classify(&n)),
            number,
        }
    }

    /// Counts a new call against the rates, and holds its slot; a call already known (a
    /// retransmission, the INVITE answering a challenge) is not counted again.
    fn count_call(
        &self,
        rules: &Rules,
        source: Option<IpAddr>,
        user: Option<u64>,
        call: u64,
        attempt: &Attempt<'_>,
        now: Timestamp,
    ) -> Result<(), RateLimit> {
        let rates = &rules.config.calls;
        let observed = rates.rule.mode == Mode::Observe;
        if self.calls.get(&call, now, |_| ()).is_some() {
            return Ok(());
        }
        let over = |limit: u32, count: u32| limit > 0 && count > limit;
        if let Some(source) = source {
            let count =
                self.callers
                    .upsert(Counted::Source(source), now, Calling::default, |calling| {
                        calling.minute.hit(now, MINUTE)
                    });
            if over(rates.per_source_per_minute, count) {
                return Err(RateLimit::SourceMinute);
            }
        }
        let outgoing = attempt.class != Class::Internal;
        let Some(user) = user.filter(|_| outgoing) else {
            self.calls.upsert(
                call,
                now,
                || Call {
                    user: 0,
                    until: now + RING_TIMEOUT,
                },
                |_| (),
            );
            return Ok(());
        };
        let prefix = attempt
            .number
            .filter(|n| n.is_international() && attempt.class != Class::National)
            .map(|n| {
                let digits = n.digits();
                let len = digits.len().min(usize::from(rates.same_prefix_digits));
                self.hasher.hash_one(&digits[..len]).max(1)
            });
        let verdict = self
            .callers
            .upsert(Counted::User(user), now, Calling::default, |calling| {
                let (minute, hour) = (
                    calling.minute.current(now, MINUTE),
                    calling.hour.current(now, HOUR),
                );
                let same = match prefix {
                    Some(prefix) if prefix == calling.prefix => calling.same.current(now, HOUR),
                    _ => 0,
                };
                let limit = limits_hit(rates, minute + 1, hour + 1, calling.live(now), same + 1);
                // In observe mode the call goes on: it is counted and holds its slot.
                if limit.is_none() || observed {
                    calling.minute.hit(now, MINUTE);
                    calling.hour.hit(now, HOUR);
                    calling.hold(call, now + RING_TIMEOUT, now);
                    match prefix {
                        Some(prefix) if prefix == calling.prefix => {
                            calling.same.hit(now, HOUR);
                        }
                        Some(prefix) => {
                            calling.prefix = prefix;
                            calling.same = Window::default();
                            calling.same.hit(now, HOUR);
                        }
                        None => {}
                    }
                }
                limit
            });
        if let (Some(limit), false) = (verdict, observed) {
            return Err(limit);
        }
        self.calls.upsert(
            call,
            now,
            || Call {
                user,
                until: now + RING_TIMEOUT,
            },
            |_| (),
        );
        verdict.map_or(Ok(()), Err)
    }

    /// Ends the call `call_id` (a BYE, or a final answer that is no success): its slot is free.
    fn release(&self, call_id: &[u8], now: Timestamp) {
        self.settle(self.token(call_id), None, now);
    }

    /// Moves a call's slot to `until`, or frees it.
    fn settle(&self, call: u64, until: Option<Timestamp>, now: Timestamp) {
        let Some(user) = self.calls.get(&call, now, |entry| {
            if let Some(until) = until {
                entry.until = until;
            }
            entry.user
        }) else {
            return;
        };
        if until.is_none() {
            self.calls.remove(&call);
        }
        if user != 0 {
            self.callers.get(&Counted::User(user), now, |calling| {
                calling.set(call, until)
            });
        }
    }

    /// Follows a call to its end from what the PBX sends (or, on the outbound path, what the
    /// carrier sends): a final answer to the INVITE (a success holds the slot for the call
    /// timeout, a challenge keeps it for the retry, anything else frees it), a BYE of its own,
    /// or its 2xx to the client's BYE. A client's BYE alone frees nothing: the PBX may refuse it
    /// (a forged or stale one), and the call goes on. Anything else is passed over.
    pub fn track_call(&self, message: &SipView<'_>, now: Timestamp) {
        if self.calls.len() == 0 {
            return;
        }
        match (message.method(), message.status()) {
            (Some(Method::Bye), _) => self.release(message.call_id, now),
            (None, Some(200..=299)) if message.cseq.method == Method::Bye => {
                self.release(message.call_id, now)
            }
            (None, Some(code)) if code >= 200 && message.cseq.method == Method::Invite => {
                let call = self.token(message.call_id);
                match code {
                    200..=299 => {
                        let timeout = self.rules.load().config.calls.call_timeout;
                        self.settle(call, Some(now + timeout), now);
                    }
                    401 | 407 => self.settle(call, Some(now + RING_TIMEOUT), now),
                    _ => self.settle(call, None, now),
                }
            }
            _ => {}
        }
    }

    /// Judges a call the PBX places through a carrier (the outbound path): the dial rules for
    /// the PBX as caller, on the destination the carrier will dial (its Request-URI), and the
    /// rates of the calling username (its From user, or credentials). The source is the PBX
    /// itself: no country filter, no rate per source. Its end is followed with
    /// [`Policy::track_call`].
    pub fn check_outbound_call(&self, invite: &SipView<'_>, now: Timestamp) -> Outbound {
        let rules = self.rules.load();
        let attempt = self.attempt(&rules, invite);
        let refused = |rule: RuleId, class: &'static str, mode: Mode| {
            let observed = mode == Mode::Observe;
            Outbound {
                allowed: observed,
                refusal: Some(Refusal {
                    rule,
                    class,
                    observed,
                    answer: true,
                    username: attempt.user.map(printable),
                    destination: attempt.number.map(|n| n.to_string()),
                }),
            }
        };
        let dial = &rules.config.dial;
        if let Some(Err(barred)) = attempt
            .number
            .map(|n| dial.judge(&n, Caller::Pbx, |_| false))
        {
            return refused(RuleId::Dial, barred_class(barred), dial.rule.mode);
        }
        if invite.to.tag.is_some() {
            return Outbound {
                allowed: true,
                refusal: None,
            };
        }
        let user = self.username(invite);
        let call = self.token(invite.call_id);
        match self.count_call(&rules, None, user, call, &attempt, now) {
            Ok(()) => Outbound {
                allowed: true,
                refusal: None,
            },
            Err(limit) => refused(
                RuleId::CallRate,
                limit.as_str(),
                rules.config.calls.rule.mode,
            ),
        }
    }

    fn refusal(
        &self,
        judge: &Judge<'_>,
        view: &SipView<'_>,
        rule: RuleId,
        class: &'static str,
    ) -> Refusal {
        let user = view
            .credentials()
            .and_then(|c| c.username)
            .or(match view.method() {
                Some(Method::Register) => view.to.user,
                _ => view.from.user,
            });
        Refusal {
            rule,
            class,
            observed: false,
            answer: judge.allowlisted || self.is_trusted(judge.source, judge.now),
            username: user.map(printable),
            destination: None,
        }
    }

    /// Applies a tripped call rule to its request: observe (forward it), drop, or ban (never an
    /// allowlisted or authenticated source: an INVITE over UDP can be forged in its name).
    fn refuse<'a>(
        &self,
        judge: &Judge<'_>,
        view: SipView<'a>,
        rule: &Rule,
        mut refusal: Refusal,
    ) -> Checked<'a> {
        let evidence = Evidence {
            rule: refusal.rule,
            count: 1,
            first_seen: judge.now,
        };
        let action = judge.packet_rule(rule, evidence);
        let reason = match refusal.rule {
            RuleId::Country => DropReason::Country,
            RuleId::CallRate => DropReason::CallRate,
            _ => DropReason::Dial,
        };
        refusal.observed = rule.mode == Mode::Observe;
        let mut checked = judge.conclude(view, refusal.rule, action, reason);
        if !matches!(checked.verdict, Verdict::Forward(_)) && !refusal.observed {
            // Dropped; a source banned by it is owed nothing.
            refusal.answer &= checked
                .event
                .as_ref()
                .is_none_or(|e| !matches!(e.action, crate::Action::Banned(_)));
        }
        checked.refusal = Some(refusal);
        checked
    }
}

/// The first limit a new call would pass: its counts include it.
fn limits_hit(
    rates: &CallRates,
    minute: u32,
    hour: u32,
    live: u32,
    same: u32,
) -> Option<RateLimit> {
    let over = |limit: u32, count: u32| limit > 0 && count > limit;
    if over(rates.per_user_per_minute, minute) {
        Some(RateLimit::UserMinute)
    } else if over(rates.per_user_per_hour, hour) {
        Some(RateLimit::UserHour)
    } else if rates.concurrent_per_user > 0 && live >= rates.concurrent_per_user {
        Some(RateLimit::Concurrent)
    } else if over(rates.same_prefix, same) {
        Some(RateLimit::SamePrefix)
    } else {
        None
    }
}

fn barred_class(barred: Barred) -> &'static str {
    if barred.country {
        "international_country"
    } else {
        barred.class.as_str()
    }
}

fn placed_refusal(mut refusal: Refusal, placed: Placed) -> Refusal {
    refusal.destination = Some(match placed {
        Placed::Country(code) => String::from_utf8_lossy(&code).into_owned(),
        Placed::Private => "private".to_owned(),
        Placed::Unknown => "unknown".to_owned(),
    });
    refusal
}

/// A username for a log line: at most 64 bytes, lossy UTF-8.
fn printable(user: &[u8]) -> String {
    String::from_utf8_lossy(&user[..user.len().min(64)]).into_owned()
}
