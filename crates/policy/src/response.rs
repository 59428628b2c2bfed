//! The response path: what is remembered of a client's exchange with the PBX, and how the PBX's
//! answers feed the failure, enumeration and trust rules.
//!
//! A response carries neither the request's credentials nor, reliably, the username that was
//! tried, so the relay keeps a [`RequestMemo`] per forwarded request in the client's
//! [`Exchange`] (one per UDP session or stream connection) and hands it back with the response.
//! Matching is by Call-ID, CSeq number and CSeq method, which identify the transaction from the
//! client's side; within a transaction each distinct credential attempt (nonce, response,
//! cnonce, nc) counts once, so a cracker that reuses one Call-ID and CSeq for every guess has
//! every guess counted, and a retransmission none.
//!
//! Evidence is bound to an address that can receive: the exchange remembers the nonces the PBX
//! sent this client in its challenges, and a refused attempt is proven evidence only when it
//! answers one of them (over TCP and TLS every attempt is proven: the handshake proved the
//! address). A spoofer never sees those nonces, so whatever it forges in a phone's name stays
//! unproven: it may count against a source that never authenticated, never against one that
//! did. Some PBXs do not make a nonce per challenge: Asterisk's is the second and the peer's
//! address, and behind sipguard every client has the same one, so a forger that asks for a
//! challenge of its own in the same second learns the nonce the phone was sent. The policy
//! therefore also remembers which source address each nonce went to: a nonce that went to
//! clients at two addresses proves neither.

use crate::bans::Evidence;
use crate::bounded::Expiring;
use crate::prefix::PrefixState;
use crate::state::{SourceState, Trust, UserState, SLOW_FACTOR, SLOW_WINDOW};
use crate::{Action, Change, Event, Mode, Policy, Rule, RuleId, Rules, Timestamp};
use sipguard_sip::{Method, SipView};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

/// A source with proven failures for this many distinct usernames in the enumeration window is
/// cracking: it earns no trust, and loses what it had.
const TRUST_WITHHELD_AT_USERS: usize = 3;

/// A (source, username) with this many proven failures in the window has run into them: a
/// success that follows is a guess that came good, not a phone, and earns no trust. (One is a
/// typo, or a nonce the PBX no longer takes.)
const TRUST_WITHHELD_AT_FAILURES: u32 = 2;

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

/// Credentials the PBX refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthFailure {
    /// The method of the refused request.
    pub method: AuthMethod,
    /// Whether the attempt answered a challenge sent to the client (or came over a stream):
    /// only proven failures count against a source.
    pub proven: bool,
}

/// What [`Policy::judge_response`] found in a response.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judged {
    /// The rule that tripped, if one did.
    pub event: Option<Event>,
    /// Set when the PBX refused credentials: a 401/407 to a request that carried them (not a
    /// stale nonce), or a 403. A bare first challenge is not a failure.
    pub auth_failure: Option<AuthFailure>,
}

/// What the response path needs to know of a forwarded request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMemo {
    transaction: u64,
    /// The Call-ID alone: credentials on it follow up a challenge.
    call: u64,
    /// The credential attempt (nonce, response, cnonce, nc); 0 without credentials.
    attempt: u64,
    /// The nonce the credentials answer; 0 without one.
    nonce: u64,
    kind: Kind,
    credentialed: bool,
    user: Option<u64>,
    /// The credentials answer a challenge the PBX sent this client.
    proven: bool,
    /// Attempts forwarded in this transaction and not yet answered.
    outstanding: u8,
}

/// How a response showed a username probed.
#[derive(Debug, Clone, Copy)]
enum Probed {
    /// Refused: after credentials, or with a 403 or 404.
    Refused { proven: bool },
    /// Challenged, with no credentials yet: a probe unless they follow.
    Challenged { proven: bool },
}

/// How long the policy remembers where a nonce went: longer than any PBX keeps a nonce valid
/// (Asterisk's default nonce lifetime is 32 s).
const NONCE_MEMORY: std::time::Duration = std::time::Duration::from_secs(300);

/// Where a nonce went: one source address, or several.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NonceSent {
    source: IpAddr,
    shared: bool,
    until: Timestamp,
}

impl Expiring for NonceSent {
    fn expired(&self, now: Timestamp) -> bool {
        now >= self.until
    }
    fn worth(&self, now: Timestamp) -> u64 {
        self.until.since(now).as_secs()
    }
}

/// Nonces remembered per client: its last challenges.
const NONCES: usize = 16;

/// What the policy keeps of one client's exchange with the PBX: the last few requests it sent,
/// awaiting their responses, and the nonces the PBX challenged it with. Fixed size: a client
/// that sends more than this many requests before any answer loses the oldest memos, which only
/// means their failures go uncounted.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    ring: [Option<RequestMemo>; 16],
    next: usize,
    /// Keyed hashes of the nonces sent to this client; 0 is no nonce.
    nonces: [u64; NONCES],
    next_nonce: usize,
    /// Keyed hashes of the top Via branches of requests the PBX sent this client (a qualify
    /// OPTIONS, an INVITE to a trunk): a response that carries one back proves the client
    /// receives at its address.
    pbx_branches: [u64; 4],
    next_branch: usize,
    /// Over TCP or TLS: the address is proven by the handshake.
    stream: bool,
    /// The client answered a challenge sent to it: it receives at this address.
    reachable: bool,
    /// The PBX accepted a registration from this client (or a saved session was restored).
    registered: bool,
}

impl Exchange {
    /// The exchange of a UDP client, whose address proves nothing until it answers.
    pub fn datagram() -> Self {
        Exchange::default()
    }

    /// The exchange of a TCP or TLS connection, whose address the handshake proved.
    pub fn stream() -> Self {
        Exchange {
            stream: true,
            ..Exchange::default()
        }
    }

    /// The exchange of a UDP client restored from the last run's saved sessions: it was
    /// established then, and it stays so.
    pub fn restored() -> Self {
        Exchange {
            registered: true,
            ..Exchange::default()
        }
    }

    /// Whether the client has shown that it receives what is sent to its address: it answered
    /// a challenge sent to it, or it is on a stream.
    pub fn is_proven(&self) -> bool {
        self.stream || self.reachable
    }

    /// Whether the client is one the PBX counts on reaching: it proved its address, or the PBX
    /// accepted its registration (which a forged source cannot obtain from a PBX that
    /// authenticates registrations). Such a session is never evicted for a newcomer and is
    /// kept across a restart.
    pub fn is_established(&self) -> bool {
        self.is_proven() || self.registered
    }

    /// Remembers a forwarded request. A retransmission keeps the memo it already has, so a
    /// transaction that was answered stays answered; a new credential attempt within the same
    /// transaction (a cracker's next guess) is one more to answer.
    pub fn remember(&mut self, mut memo: RequestMemo) {
        memo.proven = memo.credentialed
            && (self.stream || (memo.nonce != 0 && self.nonces.contains(&memo.nonce)));
        self.reachable |= memo.proven;
        if let Some(known) = self
            .ring
            .iter_mut()
            .flatten()
            .find(|m| m.transaction == memo.transaction)
        {
            if known.attempt != memo.attempt {
                let outstanding = known.outstanding.saturating_add(1);
                *known = RequestMemo {
                    outstanding,
                    ..memo
                };
            }
            return;
        }
        self.ring[self.next] = Some(RequestMemo {
            outstanding: 1,
            ..memo
        });
        self.next = (self.next + 1) % self.ring.len();
    }

    /// The memo of the request a final response answers, once per attempt forwarded.
    fn answer(&mut self, transaction: u64) -> Option<RequestMemo> {
        let memo = self
            .ring
            .iter_mut()
            .flatten()
            .find(|memo| memo.transaction == transaction)?;
        if memo.outstanding == 0 {
            return None;
        }
        memo.outstanding -= 1;
        Some(*memo)
    }

    /// Whether `branch` is that of a request the PBX sent this client.
    fn sent_by_pbx(&self, branch: u64) -> bool {
        branch != 0 && self.pbx_branches.contains(&branch)
    }

    /// The PBX challenged this client with `nonce`.
    fn challenged(&mut self, nonce: u64) {
        if nonce == 0 || self.nonces.contains(&nonce) {
            return;
        }
        self.nonces[self.next_nonce] = nonce;
        self.next_nonce = (self.next_nonce + 1) % NONCES;
    }
}

/// A client's response to a request, by the keyed hash of its top Via branch: for
/// [`Policy::answered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer(u64);

impl Policy {
    /// What identifies a client's response (one with no method): its top Via branch.
    pub(crate) fn answer_of(&self, response: &SipView<'_>) -> Option<Answer> {
        let branch = response.via_branch.filter(|b| !b.is_empty())?;
        Some(Answer(self.token(branch)))
    }

    /// Notes a request the PBX sends to the client of `exchange` (its top Via branch is the
    /// PBX's own, and only the client sees it).
    pub fn pbx_request(&self, request: &SipView<'_>, exchange: &mut Exchange) {
        if let Some(Answer(branch)) = self.answer_of(request) {
            exchange.pbx_branches[exchange.next_branch] = branch;
            exchange.next_branch = (exchange.next_branch + 1) % exchange.pbx_branches.len();
        }
    }

    /// The client at `client` sent `answer`, a response. When it answers a request the PBX sent
    /// it, the client has shown it receives at its address (return routability): a trunk that
    /// answers the PBX's qualify or its calls is trusted like a phone that authenticated, so a
    /// forged scanner packet or flood in its name no longer bans it. A source failing across
    /// several usernames earns nothing.
    pub fn answered(
        &self,
        client: IpAddr,
        answer: Answer,
        exchange: &mut Exchange,
        now: Timestamp,
    ) {
        if !exchange.sent_by_pbx(answer.0) {
            return;
        }
        exchange.reachable = true;
        let rules = self.rules.load();
        let window = rules.config.enumeration.window;
        let failing_users = self
            .sources
            .get(&client, now, |state| {
                state.failing_users.current(now, window)
            })
            .unwrap_or(0);
        if failing_users < TRUST_WITHHELD_AT_USERS {
            self.trust_until(client, now + rules.config.trust_for, now);
        }
    }

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

    /// A keyed hash that is never 0 (0 stands for "none").
    pub(crate) fn token(&self, bytes: &[u8]) -> u64 {
        self.hasher.hash_one(bytes).max(1)
    }

    /// What to remember of a request being forwarded, whose username hashes to `user`.
    pub(crate) fn memo(&self, request: &SipView<'_>, user: Option<u64>) -> RequestMemo {
        let kind = match request.method() {
            Some(Method::Register) => Kind::Register,
            Some(Method::Invite) => Kind::Invite,
            _ => Kind::Other,
        };
        let credentials = request.credentials();
        let (attempt, nonce) = match credentials {
            Some(c) => {
                let mut hasher = self.hasher.build_hasher();
                for part in [c.nonce, c.response, c.cnonce, c.nc] {
                    part.hash(&mut hasher);
                }
                (hasher.finish().max(1), c.nonce.map_or(0, |n| self.token(n)))
            }
            None => (0, 0),
        };
        RequestMemo {
            transaction: self.transaction(request),
            call: self.token(request.call_id),
            attempt,
            nonce,
            kind,
            credentialed: credentials.is_some(),
            user,
            proven: false,
            outstanding: 0,
        }
    }

    /// Feeds a final response from the PBX to `client` into the rules. Each credential attempt
    /// counts once, however often it was retransmitted. Returns the rule that tripped, if one
    /// did.
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
        let challenge = response.challenge.filter(|_| matches!(code, 401 | 407));
        if let Some(nonce) = challenge.and_then(|c| c.nonce) {
            let nonce = self.token(nonce);
            exchange.challenged(nonce);
            self.nonce_sent(nonce, client, now);
        }
        let Some(memo) = exchange.answer(self.transaction(response)) else {
            return Judged::default();
        };
        if memo.kind == Kind::Register && (200..300).contains(&code) {
            exchange.registered = true;
        }
        // A stale nonce: the credentials were right, the nonce too old (RFC 2617 section 3.2.1).
        let stale = challenge.is_some_and(|c| c.stale);
        let proven =
            exchange.stream || (memo.proven && self.nonce_went_only_to(memo.nonce, client, now));
        let refused = (matches!(code, 401 | 407) && memo.credentialed && !stale) || code == 403;
        let auth_failure = refused.then_some(AuthFailure {
            method: match memo.kind {
                Kind::Register => AuthMethod::Register,
                Kind::Invite => AuthMethod::Invite,
                Kind::Other => AuthMethod::Other,
            },
            proven,
        });
        let rules = self.rules.load();
        if rules.allowlist.contains(client) {
            return Judged {
                event: None,
                auth_failure,
            };
        }
        if memo.credentialed {
            self.sources
                .get(&client, now, |state| state.probes.followed_up(memo.call));
        }
        let event = match code {
            200..=299 => {
                self.succeeded(&rules, client, memo, now);
                None
            }
            401 | 407 if memo.credentialed && stale => None,
            401 | 407 if !memo.credentialed => {
                self.probed(&rules, client, memo, Probed::Challenged { proven }, now)
            }
            401 | 407 | 403 => self
                .failed(&rules, client, memo, proven, now)
                .or_else(|| self.probed(&rules, client, memo, Probed::Refused { proven }, now)),
            404 => self.probed(&rules, client, memo, Probed::Refused { proven }, now),
            _ => None,
        };
        Judged {
            event,
            auth_failure,
        }
    }

    /// Notes that `nonce` was sent to a client at `source`.
    fn nonce_sent(&self, nonce: u64, source: IpAddr, now: Timestamp) {
        let until = now + NONCE_MEMORY;
        self.nonces.upsert(
            nonce,
            now,
            || NonceSent {
                source,
                shared: false,
                until,
            },
            |sent| {
                sent.shared |= sent.source != source;
                sent.until = until;
            },
        );
    }

    /// Whether `nonce` went to clients at `source` and nowhere else: only then does answering it
    /// prove the source receives at its address.
    fn nonce_went_only_to(&self, nonce: u64, source: IpAddr, now: Timestamp) -> bool {
        self.nonces
            .get(&nonce, now, |sent| sent.source == source && !sent.shared)
            .unwrap_or(false)
    }

    /// A request succeeded. With credentials, the username is no probe, and the source earns trust
    /// unless the success came after a run of failures (a guess that came good) or the source
    /// fails across several usernames.
    fn succeeded(&self, rules: &Rules, client: IpAddr, memo: RequestMemo, now: Timestamp) {
        // Only credentials that worked clear a username: any request's 2xx would let a sweep
        // launder each probe with an OPTIONS or a BYE that the PBX accepts without them.
        let (Some(user), true) = (memo.user, memo.credentialed) else {
            return;
        };
        self.sources
            .get(&client, now, |state| state.probes.succeeded(user));
        let window = rules.config.enumeration.window;
        let failures = self
            .users
            .get(&(client, user), now, |state| {
                state.failures.current(now, window)
            })
            .unwrap_or(0);
        let failing_users = self
            .sources
            .get(&client, now, |state| {
                state.failing_users.current(now, window)
            })
            .unwrap_or(0);
        if failures >= TRUST_WITHHELD_AT_FAILURES || failing_users >= TRUST_WITHHELD_AT_USERS {
            return;
        }
        self.trust_until(client, now + rules.config.trust_for, now);
    }

    /// Trusts `client` until `until`, telling the observers when that moves the expiry they
    /// know of by more than an eighth of the trust period (not at every re-registration).
    pub(crate) fn trust_until(&self, client: IpAddr, until: Timestamp, now: Timestamp) {
        let rules = self.rules.load();
        let slack = rules.config.trust_for / 8;
        let publish = self.trust.upsert(
            client,
            now,
            || Trust {
                until,
                published: Timestamp::ZERO,
            },
            |trust| {
                trust.until = trust.until.max(until);
                let publish = trust.until > trust.published + slack;
                if publish {
                    trust.published = trust.until;
                }
                publish.then_some(trust.until)
            },
        );
        if let Some(until) = publish {
            self.publish(Change::Trusted {
                source: client,
                until,
            });
        }
    }

    /// A REGISTER or INVITE refused after credentials, or a 403. An unproven failure may be a
    /// spoofer's, in the name of the source: it counts only against a source that never
    /// authenticated.
    fn failed(
        &self,
        rules: &Rules,
        client: IpAddr,
        memo: RequestMemo,
        proven: bool,
        now: Timestamp,
    ) -> Option<Event> {
        if !proven && self.is_trusted(client, now) {
            return None;
        }
        let user = memo.user?;
        let horizon = rules.horizon;
        let window = rules.config.enumeration.window;
        let register = rules.config.register_failures;
        let register_count = self.users.upsert(
            (client, user),
            now,
            || UserState {
                horizon,
                ..UserState::default()
            },
            |state| {
                state.failures.hit(now, window);
                (memo.kind == Kind::Register).then(|| {
                    let count = state.register_failures.hit(now, register.window);
                    let slow = state.slow_register_failures.hit(now, SLOW_WINDOW);
                    // The short window trips first; the long one catches a cracker that paces
                    // itself under it.
                    if count >= register.threshold
                        || slow < register.threshold.saturating_mul(SLOW_FACTOR)
                    {
                        (count, state.register_failures.start)
                    } else {
                        (slow, state.slow_register_failures.start)
                    }
                })
            },
        );
        let failing_users = self.sources.upsert(
            client,
            now,
            || SourceState::new(horizon),
            |state| {
                state
                    .failing_users
                    .add(user, now, window, TRUST_WITHHELD_AT_USERS)
            },
        );
        if failing_users >= TRUST_WITHHELD_AT_USERS && self.trust.remove(&client).is_some() {
            // Cracking from behind a trusted address: it is trusted no more.
            self.publish(Change::Distrusted { source: client });
        }
        let by_address = self.refused_by_address(rules, client, user, memo, register_count, now);
        by_address.or_else(|| self.refused_by_prefix(rules, client, now))
    }

    /// The failure rules on one address (and username).
    fn refused_by_address(
        &self,
        rules: &Rules,
        client: IpAddr,
        user: u64,
        memo: RequestMemo,
        register_count: Option<(u32, Timestamp)>,
        now: Timestamp,
    ) -> Option<Event> {
        let (horizon, register) = (rules.horizon, rules.config.register_failures);
        match memo.kind {
            Kind::Register => {
                let (count, first_seen) = register_count?;
                (count >= register.threshold).then_some(())?;
                // A slow cracker's ban lasts as long as its evidence took to gather, at most a
                // day; a fast one's the rule's.
                let register = Rule {
                    ban_for: register.ban_for.max(now.since(first_seen).min(SLOW_WINDOW)),
                    ..register
                };
                let evidence = Evidence {
                    rule: RuleId::RegisterFailures,
                    count,
                    first_seen,
                };
                self.refuse_user(client, user, &register, evidence, now)
            }
            Kind::Invite => {
                let rule = rules.config.invite_failures;
                let (count, first_seen) = self.sources.upsert(
                    client,
                    now,
                    || SourceState::new(horizon),
                    |state| {
                        (
                            state.invite_failures.hit(now, rule.window),
                            state.invite_failures.start,
                        )
                    },
                );
                (count >= rule.threshold).then_some(())?;
                let evidence = Evidence {
                    rule: RuleId::InviteFailures,
                    count,
                    first_seen,
                };
                self.refuse_user(client, user, &rule, evidence, now)
            }
            Kind::Other => None,
        }
    }

    /// The failure rule over a whole IPv6 prefix: a cracker that takes a new address of its /64
    /// for every guess trips it at the rule's threshold times `ipv6_offenders`, and the prefix is
    /// banned (its allowlisted and trusted addresses still pass).
    fn refused_by_prefix(&self, rules: &Rules, client: IpAddr, now: Timestamp) -> Option<Event> {
        let prefix = self.bans.prefix_of(client)?;
        let register = rules.config.register_failures;
        let spread = rules.config.ipv6_offenders;
        if spread == 0 || register.mode != Mode::Ban {
            return None;
        }
        let (count, first_seen) = self.prefixes.upsert(
            prefix,
            now,
            || PrefixState::new(rules.horizon),
            |state| {
                (
                    state.failures.hit(now, register.window),
                    state.failures.start,
                )
            },
        );
        if count < register.threshold.saturating_mul(spread) {
            return None;
        }
        let evidence = Evidence {
            rule: RuleId::RegisterFailures,
            count,
            first_seen,
        };
        let action = self.ban(prefix, evidence, register.ban_for, now)?;
        Some(Event {
            source: client,
            rule: RuleId::RegisterFailures,
            action,
            proven: false,
        })
    }

    /// A failure rule tripped for one username: one bad password behind an address others
    /// authenticate from (an office NAT) blocks that username there, not the whole address;
    /// anywhere else the source is banned.
    fn refuse_user(
        &self,
        client: IpAddr,
        user: u64,
        rule: &Rule,
        evidence: Evidence,
        now: Timestamp,
    ) -> Option<Event> {
        if rule.mode == Mode::Drop || (rule.mode == Mode::Ban && self.is_trusted(client, now)) {
            let until = now + rule.ban_for;
            self.users
                .get(&(client, user), now, |state| state.blocked_until = until);
            self.blocks_end
                .fetch_max(until.as_millis(), std::sync::atomic::Ordering::Relaxed);
            return Some(Event {
                source: client,
                rule: evidence.rule,
                action: Action::UserBlocked { until },
                proven: true,
            });
        }
        self.enforce(client, rule, evidence, true, now)
    }

    /// A username refused (after credentials, or 403/404), or a bare request challenged: the
    /// normal first step of authenticating, unless no credentials follow on its Call-ID (a
    /// scanner sweeping extensions).
    fn probed(
        &self,
        rules: &Rules,
        client: IpAddr,
        memo: RequestMemo,
        how: Probed,
        now: Timestamp,
    ) -> Option<Event> {
        let user = memo.user?;
        let rule = rules.config.enumeration;
        let cap = usize::try_from(rule.threshold).unwrap_or(usize::MAX);
        let count = self.sources.upsert(
            client,
            now,
            || SourceState::new(rules.horizon),
            |state| match how {
                Probed::Refused { proven } => state.probes.add(user, proven, now, rule.window, cap),
                Probed::Challenged { proven } => {
                    let probes = &mut state.probes;
                    probes.challenged(user, memo.call, proven, now, rule.window, cap)
                }
            },
        );
        self.enumeration(rules, client, count, now)
    }

    /// Whether the usernames a source probed trip the enumeration rule. A source that has
    /// authenticated is judged on proven probes only: unproven ones may be a spoofer's.
    fn enumeration(
        &self,
        rules: &Rules,
        client: IpAddr,
        count: crate::state::ProbeCount,
        now: Timestamp,
    ) -> Option<Event> {
        let rule = rules.config.enumeration;
        let cap = usize::try_from(rule.threshold).unwrap_or(usize::MAX);
        let proven = count.proven >= cap;
        if count.distinct < cap || (!proven && self.is_trusted(client, now)) {
            return None;
        }
        let rule = Rule {
            mode: if rule.mode == Mode::Drop {
                Mode::Observe
            } else {
                rule.mode
            },
            ..rule
        };
        let evidence = Evidence {
            rule: RuleId::Enumeration,
            count: u32::try_from(count.distinct).unwrap_or(u32::MAX),
            first_seen: self
                .sources
                .get(&client, now, |state| state.probes.start)
                .unwrap_or(now),
        };
        self.enforce(client, &rule, evidence, proven, now)
    }

    /// Applies a tripped response-judged rule: observe, or ban (unless banned already).
    fn enforce(
        &self,
        client: IpAddr,
        rule: &Rule,
        evidence: Evidence,
        proven: bool,
        now: Timestamp,
    ) -> Option<Event> {
        let action = match rule.mode {
            Mode::Observe => Action::Observed { would_ban: true },
            Mode::Drop => Action::Dropped,
            Mode::Ban => self.ban(crate::bans::host(client), evidence, rule.ban_for, now)?,
        };
        Some(Event {
            source: client,
            rule: evidence.rule,
            action,
            proven,
        })
    }
}
