//! The response path: what is remembered of a forwarded request, and how the PBX's answer to it
//! feeds the failure, enumeration and trust rules.
//!
//! A response carries neither the request's credentials nor, reliably, the username that was
//! tried, so the relay keeps a [`RequestMemo`] per forwarded request in the client's
//! [`Exchange`] (one per UDP session or stream connection) and hands it back with the response. Matching is by Call-ID, CSeq number
//! and CSeq method, which identify the transaction from the client's side.

use crate::bans::Evidence;
use crate::state::{SourceState, Trust, UserState};
use crate::{Action, Event, Mode, Policy, Rule, RuleId, Rules, Timestamp};
use sipguard_sip::{Method, SipView};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

/// The methods whose failures the rules count separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Register,
    Invite,
    Other,
}

/// The method of a request whose credentials the PBX refused. A metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A REGISTER.
    Register,
    /// An INVITE.
    Invite,
    /// Any other request.
    Other,
}

impl AuthMethod {
    /// Every method, for pre-registering metrics.
    pub const ALL: [AuthMethod; 3] = [AuthMethod::Register, AuthMethod::Invite, AuthMethod::Other];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Register => "register",
            AuthMethod::Invite => "invite",
            AuthMethod::Other => "other",
        }
    }
}

/// What [`Policy::judge_response`] found in a response.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judged {
    /// The rule that tripped, if one did.
    pub event: Option<Event>,
    /// Set when the PBX refused credentials: a 401/407 to a request that carried them, or a
    /// 403. A bare first challenge is not a failure.
    pub auth_failure: Option<AuthMethod>,
}

/// What the response path needs to know of a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMemo {
    transaction: u64,
    kind: Kind,
    credentialed: bool,
    user: Option<u64>,
    /// Set by the first final response: the PBX's answers to retransmissions of the same
    /// request, and its retransmitted answers, are the same evidence and count once.
    answered: bool,
}

/// What the policy keeps of one client's exchange with the PBX: the last few requests it sent,
/// awaiting their responses. Fixed size: a client that sends more than this many requests before
/// any answer loses the oldest memos, which only means their failures go uncounted.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    ring: [Option<RequestMemo>; 16],
    next: usize,
}

impl Exchange {
    /// Remembers a forwarded request. A retransmission keeps the memo it already has, so a
    /// transaction that was answered stays answered.
    pub fn remember(&mut self, memo: RequestMemo) {
        if self
            .ring
            .iter()
            .flatten()
            .any(|m| m.transaction == memo.transaction)
        {
            return;
        }
        self.ring[self.next] = Some(memo);
        self.next = (self.next + 1) % self.ring.len();
    }

    /// The memo of the request a final response answers, the first time only.
    fn answer(&mut self, transaction: u64) -> Option<RequestMemo> {
        let memo = self
            .ring
            .iter_mut()
            .flatten()
            .find(|memo| memo.transaction == transaction)?;
        if memo.answered {
            return None;
        }
        memo.answered = true;
        Some(*memo)
    }
}

impl Policy {
    /// The username a request is about: its credentials' username, else the registered
    /// address-of-record for REGISTER, else the caller.
    pub(crate) fn username(&self, view: &SipView<'_>) -> Option<u64> {
        let user = view
            .credentials()
            .and_then(|c| c.username)
            .or(match view.method() {
                Some(Method::Register) => view.to.user,
                _ => view.from.user,
            })?;
        Some(self.hasher.hash_one(user))
    }

    fn transaction(&self, view: &SipView<'_>) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        view.call_id.hash(&mut hasher);
        view.cseq.seq.hash(&mut hasher);
        view.cseq.method.as_bytes().hash(&mut hasher);
        hasher.finish()
    }

    /// What to remember of a request being forwarded, whose username hashes to `user`.
    pub(crate) fn memo(&self, request: &SipView<'_>, user: Option<u64>) -> RequestMemo {
        let kind = match request.method() {
            Some(Method::Register) => Kind::Register,
            Some(Method::Invite) => Kind::Invite,
            _ => Kind::Other,
        };
        RequestMemo {
            transaction: self.transaction(request),
            kind,
            credentialed: request.credentials().is_some(),
            user,
            answered: false,
        }
    }

    /// Feeds a final response from the PBX to `client` into the rules. Each transaction counts
    /// once, however often it was retransmitted. Returns the rule that tripped, if one did.
    pub fn observe_response(
        &self,
        client: IpAddr,
        response: &SipView<'_>,
        exchange: &mut Exchange,
        now: Timestamp,
    ) -> Option<Event> {
        self.judge_response(client, response, exchange, now).event
    }

    /// [`Policy::observe_response`], also saying whether the response refused credentials (for
    /// the auth failure counters; allowlisted sources' failures are reported too, and never
    /// counted against them).
    pub fn judge_response(
        &self,
        client: IpAddr,
        response: &SipView<'_>,
        exchange: &mut Exchange,
        now: Timestamp,
    ) -> Judged {
        let Some(code) = response.status().filter(|&code| code >= 200) else {
            return Judged::default();
        };
        let Some(memo) = exchange.answer(self.transaction(response)) else {
            return Judged::default();
        };
        let refused = matches!(code, 401 | 407 if memo.credentialed) || code == 403;
        let auth_failure = refused.then_some(match memo.kind {
            Kind::Register => AuthMethod::Register,
            Kind::Invite => AuthMethod::Invite,
            Kind::Other => AuthMethod::Other,
        });
        let rules = self.rules.load();
        if rules.allowlist.contains(client) {
            return Judged {
                event: None,
                auth_failure,
            };
        }
        let event = match code {
            200..=299 => {
                self.succeeded(&rules, client, memo, now);
                None
            }
            401 | 407 if memo.credentialed => self
                .failed(&rules, client, memo, now)
                .or_else(|| self.probed(&rules, client, memo, now)),
            401 | 407 | 404 => self.probed(&rules, client, memo, now),
            403 => self
                .failed(&rules, client, memo, now)
                .or_else(|| self.probed(&rules, client, memo, now)),
            _ => None,
        };
        Judged {
            event,
            auth_failure,
        }
    }

    fn succeeded(&self, rules: &Rules, client: IpAddr, memo: RequestMemo, now: Timestamp) {
        if memo.kind == Kind::Register && memo.credentialed {
            let until = now + rules.config.trust_for;
            self.trust
                .upsert(client, now, || Trust { until }, |trust| trust.until = until);
        }
        if let Some(user) = memo.user {
            self.sources
                .get(&client, now, |state| state.probes.succeeded(user));
            self.users.get(&(client, user), now, |state| {
                state.register_failures = Default::default()
            });
        }
    }

    /// A REGISTER or INVITE that failed with credentials, or got a 403.
    fn failed(
        &self,
        rules: &Rules,
        client: IpAddr,
        memo: RequestMemo,
        now: Timestamp,
    ) -> Option<Event> {
        match memo.kind {
            Kind::Register => {
                let rule = rules.config.register_failures;
                let user = memo.user?;
                let horizon = rules.horizon;
                let (count, first_seen) = self.users.upsert(
                    (client, user),
                    now,
                    || UserState {
                        horizon,
                        ..UserState::default()
                    },
                    |state| {
                        (
                            state.register_failures.hit(now, rule.window),
                            state.register_failures.start,
                        )
                    },
                );
                if count < rule.threshold {
                    return None;
                }
                let evidence = Evidence {
                    rule: RuleId::RegisterFailures,
                    count,
                    first_seen,
                };
                // One bad password behind an address others authenticate from (an office NAT)
                // blocks that username there, not the whole address.
                if rule.mode == Mode::Drop
                    || (rule.mode == Mode::Ban && self.is_trusted(client, now))
                {
                    let until = now + rule.ban_for;
                    self.users
                        .get(&(client, user), now, |state| state.blocked_until = until);
                    self.blocks_end
                        .fetch_max(until.as_millis(), std::sync::atomic::Ordering::Relaxed);
                    return Some(Event {
                        source: client,
                        rule: evidence.rule,
                        action: Action::UserBlocked { until },
                    });
                }
                self.enforce(client, &rule, evidence, now)
            }
            Kind::Invite => {
                let rule = rules.config.invite_failures;
                let (count, first_seen) = self.sources.upsert(
                    client,
                    now,
                    || SourceState::new(rules.horizon),
                    |state| {
                        (
                            state.invite_failures.hit(now, rule.window),
                            state.invite_failures.start,
                        )
                    },
                );
                (count >= rule.threshold).then_some(())?;
                self.enforce(
                    client,
                    &rule,
                    Evidence {
                        rule: RuleId::InviteFailures,
                        count,
                        first_seen,
                    },
                    now,
                )
            }
            Kind::Other => None,
        }
    }

    /// A username challenged or refused. A trusted source's bare challenges are the normal
    /// first step of authenticating and do not count.
    fn probed(
        &self,
        rules: &Rules,
        client: IpAddr,
        memo: RequestMemo,
        now: Timestamp,
    ) -> Option<Event> {
        let user = memo.user?;
        if !memo.credentialed && self.is_trusted(client, now) {
            return None;
        }
        let rule = rules.config.enumeration;
        let cap = usize::try_from(rule.threshold).unwrap_or(usize::MAX);
        let (distinct, first_seen) = self.sources.upsert(
            client,
            now,
            || SourceState::new(rules.horizon),
            |state| {
                (
                    state.probes.add(user, now, rule.window, cap),
                    state.probes.start,
                )
            },
        );
        if distinct < cap {
            return None;
        }
        let count = u32::try_from(distinct).unwrap_or(u32::MAX);
        let rule = Rule {
            mode: if rule.mode == Mode::Drop {
                Mode::Observe
            } else {
                rule.mode
            },
            ..rule
        };
        self.enforce(
            client,
            &rule,
            Evidence {
                rule: RuleId::Enumeration,
                count,
                first_seen,
            },
            now,
        )
    }

    /// Applies a tripped response-judged rule: observe, or ban (unless banned already).
    fn enforce(
        &self,
        client: IpAddr,
        rule: &Rule,
        evidence: Evidence,
        now: Timestamp,
    ) -> Option<Event> {
        let action = match rule.mode {
            Mode::Observe => Action::Observed { would_ban: true },
            Mode::Drop => Action::Dropped,
            Mode::Ban => self.ban(client, evidence, rule.ban_for, now)?,
        };
        Some(Event {
            source: client,
            rule: evidence.rule,
            action,
        })
    }
}
