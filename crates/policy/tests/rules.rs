//! The detection rules of docs/design.md section 3, driven through the public API with time passed in:
//! requests go through `check`, the PBX's answers through `observe_response`.

use sipguard_policy::{
    Action, AllowGroup, AllowlistMode, DropReason, Event, Exchange, IpNet, Mode, Policy,
    PolicyConfig, RuleId, Timestamp, Transport, Verdict,
};
use sipguard_sip::SipView;
use std::net::IpAddr;
use std::time::Duration;

mod support;
use support::{at, ip, policy};

const ATTACKER: &str = "192.0.2.66";
const OFFICE: &str = "203.0.113.7";
const CARRIER: &str = "198.51.100.9";

/// One client as the relay sees it (one address and port: one [`Exchange`]): its requests,
/// their memos, the PBX's responses. Like a phone, it answers credentials to the last nonce the
/// PBX challenged it with, fetching one with a bare request first when it has none, and keeps
/// one Call-ID per username.
struct Client<'p> {
    policy: &'p Policy,
    source: IpAddr,
    pending: Exchange,
    cseq: u32,
    transport: Transport,
    /// The last nonce the PBX sent this client.
    nonce: Option<String>,
    /// Challenges the PBX has sent this client: each carries a nonce of its own.
    challenges: u32,
    /// The next challenge says the nonce was stale.
    stale: bool,
    /// The nonce every challenge carries, as Asterisk's (the second and the peer's address, and
    /// behind sipguard every client is the same peer); `None`: a fresh one each time.
    pbx_nonce: Option<String>,
}

struct Request {
    method: &'static str,
    user: String,
    credentials: bool,
    user_agent: &'static str,
}

fn register(user: &str, credentials: bool) -> Request {
    Request {
        method: "REGISTER",
        user: user.into(),
        credentials,
        user_agent: "Yealink SIP-T46S",
    }
}

fn invite(user: &str, credentials: bool) -> Request {
    Request {
        method: "INVITE",
        user: user.into(),
        credentials,
        user_agent: "Yealink SIP-T46S",
    }
}

fn options(user_agent: &'static str) -> Request {
    Request {
        method: "OPTIONS",
        user: "100".into(),
        credentials: false,
        user_agent,
    }
}

impl Request {
    /// The request as sent; with credentials, answering `nonce` (a distinct response per CSeq,
    /// so each attempt is one of its own).
    fn text(&self, cseq: u32, call_id: &str, nonce: &str) -> String {
        let auth = if self.credentials {
            format!("Authorization: Digest username=\"{}\", realm=\"pbx\", nonce=\"{nonce}\", uri=\"sip:pbx\", response=\"r{cseq}\"\r\n", self.user)
        } else {
            String::new()
        };
        let to = if self.method == "REGISTER" {
            self.user.clone()
        } else {
            "0044900123".to_string()
        };
        format!(
            "{m} sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{cseq}\r\n\
From: <sip:{u}@pbx.example.com>;tag=f{cseq}\r\nTo: <sip:{to}@pbx.example.com>\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {m}\r\nUser-Agent: {ua}\r\n{auth}Content-Length: 0\r\n\r\n",
            m = self.method,
            u = self.user,
            ua = self.user_agent,
        )
    }
}

impl<'p> Client<'p> {
    fn new(policy: &'p Policy, source: &str) -> Self {
        Client {
            policy,
            source: ip(source),
            pending: Exchange::datagram(),
            cseq: 0,
            transport: Transport::Datagram,
            nonce: None,
            challenges: 0,
            stale: false,
            pbx_nonce: None,
        }
    }

    /// A client over TCP or TLS: its address is proven.
    fn over_stream(policy: &'p Policy, source: &str) -> Self {
        Client {
            pending: Exchange::stream(),
            transport: Transport::Stream,
            ..Client::new(policy, source)
        }
    }

    fn call_id(&self, request: &Request) -> String {
        format!("{}-{}", request.user, request.method)
    }

    /// Sends a request; when it is forwarded, the PBX answers `code`. Returns the drop reason
    /// (None when forwarded) and every event raised on the way. Credentials answer the last
    /// nonce this client was sent: a bare request fetches one first when it has none.
    fn exchange(
        &mut self,
        request: &Request,
        code: u16,
        now: Timestamp,
    ) -> (Option<DropReason>, Vec<Event>) {
        let mut events = Vec::new();
        if request.credentials && self.nonce.is_none() {
            let bare = Request {
                credentials: false,
                user: request.user.clone(),
                ..*request
            };
            let (dropped, first) = self.exchange(&bare, 401, now);
            events.extend(first);
            if dropped.is_some() {
                return (dropped, events);
            }
        }
        self.cseq += 1;
        let nonce = self.nonce.clone().unwrap_or_default();
        let (dropped, more) = self.send(request, &nonce, code, now);
        events.extend(more);
        (dropped, events)
    }

    /// A spoofer's request in this client's name (same address and port), with credentials on
    /// a nonce the PBX never sent here: it never sees the replies.
    fn forge(
        &mut self,
        request: &Request,
        code: u16,
        now: Timestamp,
    ) -> (Option<DropReason>, Vec<Event>) {
        let nonce = format!("forged-{}", self.cseq + 1);
        self.forge_on(request, &nonce, code, now)
    }

    /// A spoofer's request in this client's name answering `nonce`, a nonce it learnt elsewhere.
    /// The phone ignores the answers to requests it never sent.
    fn forge_on(
        &mut self,
        request: &Request,
        nonce: &str,
        code: u16,
        now: Timestamp,
    ) -> (Option<DropReason>, Vec<Event>) {
        self.cseq += 1;
        self.send_as(request, nonce, code, now, false)
    }

    /// Guesses again in the same transaction (same Call-ID and CSeq), answering the nonce of
    /// the last challenge: what svcrack does for every password it tries.
    fn guess_again(
        &mut self,
        request: &Request,
        code: u16,
        now: Timestamp,
    ) -> (Option<DropReason>, Vec<Event>) {
        let nonce = self.nonce.clone().unwrap_or_default();
        self.send_as(request, &nonce, code, now, true)
    }

    /// Sends the last request again (same Call-ID, CSeq and credentials), as a phone does when
    /// the answer is lost; the PBX answers it again.
    fn retransmit(
        &mut self,
        request: &Request,
        code: u16,
        now: Timestamp,
    ) -> (Option<DropReason>, Vec<Event>) {
        let nonce = self.nonce.clone().unwrap_or_default();
        self.send_as(request, &nonce, code, now, false)
    }

    fn send(
        &mut self,
        request: &Request,
        nonce: &str,
        code: u16,
        now: Timestamp,
    ) -> (Option<DropReason>, Vec<Event>) {
        self.send_as(request, nonce, code, now, true)
    }

    /// Credentials on a nonce the PBX no longer takes: it answers 401 with `stale=true` and a
    /// fresh nonce, and the phone answers that with the same (right) password.
    fn exchange_stale(
        &mut self,
        request: &Request,
        now: Timestamp,
    ) -> (Option<DropReason>, Vec<Event>) {
        self.stale = true;
        let (dropped, mut events) = self.exchange(request, 401, now);
        self.stale = false;
        if dropped.is_some() {
            return (dropped, events);
        }
        let (dropped, more) = self.exchange(request, 200, now);
        events.extend(more);
        (dropped, events)
    }

    /// One request with the current CSeq, answered `code`; a 401/407 carries a fresh nonce,
    /// which the client keeps when `learn` (a spoofer never learns it).
    fn send_as(
        &mut self,
        request: &Request,
        nonce: &str,
        code: u16,
        now: Timestamp,
        learn: bool,
    ) -> (Option<DropReason>, Vec<Event>) {
        let call_id = self.call_id(request);
        let text = request.text(self.cseq, &call_id, nonce);
        let checked = self
            .policy
            .check(text.as_bytes(), self.source, self.transport, now);
        let mut events: Vec<Event> = checked.event.into_iter().collect();
        let view = match checked.verdict {
            Verdict::Forward(view) => view,
            Verdict::Drop(reason) => return (Some(reason), events),
            Verdict::Keepalive => panic!("a request is not a keep-alive"),
        };
        self.pending
            .remember(checked.memo.expect("a forwarded request has a memo"));
        let challenge = if matches!(code, 401 | 407) {
            self.challenges += 1;
            let fresh = self.pbx_nonce.clone().unwrap_or_else(|| {
                format!(
                    "{}-{}-{}",
                    self.source,
                    self.transport_name(),
                    self.challenges
                )
            });
            if learn {
                self.nonce = Some(fresh.clone());
            }
            let stale = if self.stale && request.credentials {
                ", stale=true"
            } else {
                ""
            };
            format!("WWW-Authenticate: Digest realm=\"pbx\", nonce=\"{fresh}\"{stale}\r\n")
        } else {
            String::new()
        };
        let response = format!(
            "SIP/2.0 {code} Whatever\r\nVia: {via}\r\nFrom: <sip:x@y>;tag=f\r\nTo: <sip:x@y>;tag=t\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {m}\r\n{challenge}Content-Length: 0\r\n\r\n",
            via = String::from_utf8_lossy(view.via),
            cseq = self.cseq,
            m = request.method,
        );
        let response = SipView::parse(response.as_bytes()).unwrap();
        events.extend(
            self.policy
                .observe_response(self.source, &response, &mut self.pending, now),
        );
        (None, events)
    }

    fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::Datagram => "udp",
            Transport::Stream => "tcp",
        }
    }

    /// A phone's normal registration: a bare REGISTER challenged, then one with credentials.
    fn register_ok(&mut self, user: &str, now: Timestamp) {
        assert_eq!(self.exchange(&register(user, false), 401, now).0, None);
        assert_eq!(self.exchange(&register(user, true), 200, now).0, None);
    }
}

fn banned_by(events: &[Event]) -> Option<RuleId> {
    events
        .iter()
        .find_map(|e| matches!(e.action, Action::Banned(_)).then_some(e.rule))
}

#[test]
fn bare_first_challenge_never_counts_as_a_failure() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, OFFICE);
    for i in 0..50 {
        let (_, events) = phone.exchange(&register("1001", false), 401, at(i * 3));
        assert!(events.is_empty(), "{events:?}");
    }
    assert!(!p.is_banned(ip(OFFICE), at(200)));
}

#[test]
fn register_failures_ban_after_five_in_window() {
    let p = policy(|_| {});
    let mut cracker = Client::new(&p, ATTACKER);
    for i in 0..4 {
        let (_, events) = cracker.exchange(&register("1001", true), 401, at(i));
        assert_eq!(banned_by(&events), None, "failure {}", i + 1);
    }
    let (_, events) = cracker.exchange(&register("1001", true), 401, at(4));
    assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
    assert_eq!(
        cracker.exchange(&register("1001", true), 401, at(5)).0,
        Some(DropReason::Banned)
    );
    let ban = p.bans(at(5))[0].1.clone();
    assert_eq!(
        (ban.evidence, ban.first_seen, ban.expires),
        (5, at(0), at(4) + Duration::from_secs(600))
    );
}

/// A 403 to a bare request is no proof over UDP, where it may answer a spoofer: it counts
/// against a source that never authenticated, never against one that did. Over a stream it is
/// the source's own.
#[test]
fn a_403_to_a_bare_request_counts_over_a_stream_and_never_against_an_authenticated_udp_source() {
    let p = policy(|_| {});
    let mut cracker = Client::over_stream(&p, ATTACKER);
    let events: Vec<_> = (0..5)
        .flat_map(|i| cracker.exchange(&register("1001", false), 403, at(i)).1)
        .collect();
    assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
    let mut phone = Client::new(&p, OFFICE);
    phone.register_ok("1001", at(0));
    let events: Vec<_> = (0..20)
        .flat_map(|i| phone.forge(&register("1001", false), 403, at(i)).1)
        .collect();
    let punished = events
        .iter()
        .find(|e| matches!(e.action, Action::Banned(_) | Action::UserBlocked { .. }));
    assert_eq!(punished, None);
}

#[test]
fn register_failures_spread_beyond_the_window_do_not_ban() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, ATTACKER);
    // Below the day's count of four times the threshold (the slow cracker's rule).
    for i in 0..19 {
        // One failure every 3 minutes: never 5 within 10 minutes of a window's start.
        let (_, events) = phone.exchange(&register("1001", true), 401, at(i * 180));
        assert_eq!(banned_by(&events), None, "failure {}", i + 1);
    }
}

#[test]
fn window_edge_a_failure_exactly_one_window_later_starts_afresh() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, ATTACKER);
    for i in 0..4 {
        phone.exchange(&register("1001", true), 401, at(i));
    }
    let (_, events) = phone.exchange(&register("1001", true), 401, at(600));
    assert_eq!(banned_by(&events), None, "the window had closed at 600 s");
    let (_, events) = phone.exchange(&register("1001", true), 401, at(599 + 1));
    assert_eq!(banned_by(&events), None);
}

#[test]
fn a_success_after_a_run_of_failures_earns_no_trust_and_does_not_wipe_them() {
    let p = policy(|_| {});
    let mut cracker = Client::new(&p, ATTACKER);
    for i in 0..4 {
        cracker.exchange(&register("1001", true), 401, at(i));
    }
    // The fifth guess is right: no trust for it, so a spoofed scanner packet bans it.
    cracker.exchange(&register("1001", true), 200, at(5));
    assert!(!p.is_trusted(ip(ATTACKER), at(6)));
    let (_, events) = cracker.exchange(&register("1001", true), 401, at(7));
    assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
}

#[test]
fn a_phone_with_one_typo_then_the_right_password_is_trusted() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, OFFICE);
    phone.exchange(&register("1001", true), 401, at(0));
    phone.exchange(&register("1001", true), 200, at(1));
    assert!(p.is_trusted(ip(OFFICE), at(2)));
}

#[test]
fn office_nat_stale_password_blocks_the_user_not_the_address() {
    let p = policy(|_| {});
    let mut office = Client::new(&p, OFFICE);
    office.register_ok("1002", at(0));
    let mut events = Vec::new();
    for i in 0..30 {
        events.extend(
            office
                .exchange(&register("1001", true), 401, at(10 * (1 + i)))
                .1,
        );
        office.register_ok("1002", at(10 * (1 + i) + 1));
    }
    assert_eq!(banned_by(&events), None);
    assert!(events
        .iter()
        .any(|e| matches!(e.action, Action::UserBlocked { .. })));
    assert!(!p.is_banned(ip(OFFICE), at(400)));
    assert_eq!(
        office.exchange(&register("1001", true), 401, at(401)).0,
        Some(DropReason::UserBlocked)
    );
}

#[test]
fn untrusted_source_failing_one_user_is_banned_per_ip() {
    let p = policy(|_| {});
    let mut cracker = Client::new(&p, ATTACKER);
    let events: Vec<_> = (0..5)
        .flat_map(|i| cracker.exchange(&register("1001", true), 401, at(i)).1)
        .collect();
    assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
    let mut other = Client::new(&p, OFFICE);
    assert_eq!(
        other.exchange(&register("1001", true), 200, at(6)).0,
        None,
        "the ban is per source"
    );
}

#[test]
fn enumeration_bans_at_ten_distinct_users_refused() {
    let p = policy(|_| {});
    let mut scanner = Client::new(&p, ATTACKER);
    for ext in 100..109 {
        let (_, events) = scanner.exchange(&register(&ext.to_string(), false), 404, at(ext / 20));
        assert_eq!(banned_by(&events), None, "extension {ext}");
    }
    let (_, events) = scanner.exchange(&register("109", false), 404, at(6));
    assert_eq!(banned_by(&events), Some(RuleId::Enumeration));
    let ban = p.ban_of(ip(ATTACKER), at(7)).unwrap();
    assert_eq!(ban.evidence, 10);
    assert_eq!(ban.expires, at(6) + Duration::from_secs(3600));
}

/// Asterisk answers every unknown user with a 401 like a known one: a sweep is told apart from
/// phones by never following its challenges up.
#[test]
fn challenges_never_followed_up_are_enumeration_once_the_follow_up_time_has_passed() {
    let p = policy(|_| {});
    let mut svwar = Client::new(&p, ATTACKER);
    for ext in 100..110u64 {
        let (_, events) = svwar.exchange(&register(&ext.to_string(), false), 401, at(ext - 100));
        assert_eq!(
            banned_by(&events),
            None,
            "extension {ext}: too early to tell"
        );
    }
    let (_, events) = svwar.exchange(&register("110", false), 401, at(16));
    assert_eq!(banned_by(&events), Some(RuleId::Enumeration));
}

#[test]
fn repeated_probes_of_one_user_are_not_enumeration() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, ATTACKER);
    let events: Vec<_> = (0..30)
        .flat_map(|i| phone.exchange(&register("100", false), 404, at(i * 3)).1)
        .collect();
    assert_eq!(banned_by(&events), None);
}

#[test]
fn an_office_of_twenty_phones_registering_is_not_enumeration() {
    let p = policy(|_| {});
    let mut office = Client::new(&p, OFFICE);
    for ext in 0..20 {
        office.register_ok(&format!("20{ext}"), at(ext));
    }
    // After a power cut all twenty re-register at once: bare challenges from a trusted source.
    for ext in 0..20 {
        let (_, events) =
            office.exchange(&register(&format!("20{ext}"), false), 401, at(100 + ext));
        assert_eq!(banned_by(&events), None);
    }
}

#[test]
fn invite_failures_ban_after_twenty() {
    let p = policy(|_| {});
    let mut fraud = Client::new(&p, ATTACKER);
    let mut events = Vec::new();
    for i in 0..19 {
        events.extend(fraud.exchange(&invite("1001", true), 407, at(i)).1);
    }
    assert_eq!(banned_by(&events), None);
    let (_, events) = fraud.exchange(&invite("1001", true), 403, at(20));
    assert_eq!(banned_by(&events), Some(RuleId::InviteFailures));
}

#[test]
fn scanner_user_agent_is_dropped_and_banned() {
    let p = policy(|_| {});
    let mut svmap = Client::new(&p, ATTACKER);
    let (dropped, events) = svmap.exchange(&options("Friendly-Scanner"), 200, at(0));
    assert_eq!(dropped, Some(DropReason::Scanner));
    assert_eq!(banned_by(&events), Some(RuleId::Scanner));
    assert!(p.is_banned(ip(ATTACKER), at(1)));
}

#[test]
fn sipvicious_from_marker_is_found_with_an_innocent_user_agent() {
    let p = policy(|_| {});
    let text = "OPTIONS sip:100@pbx SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bK-1;rport\r\n\
From: \"sipvicious\"<sip:100@1.1.1.1>;tag=6134\r\nTo: \"sipvicious\"<sip:100@1.1.1.1>\r\nCall-ID: 1\r\n\
CSeq: 1 OPTIONS\r\nUser-Agent: Asterisk PBX\r\nContent-Length: 0\r\n\r\n";
    let checked = p.check(text.as_bytes(), ip(ATTACKER), Transport::Datagram, at(0));
    assert_eq!(checked.verdict, Verdict::Drop(DropReason::Scanner));
}

#[test]
fn user_added_scanner_pattern_is_matched_case_insensitively() {
    let p = policy(|c| c.scanner_user_agents.push("EvilDialer".into()));
    let mut bot = Client::new(&p, ATTACKER);
    assert_eq!(
        bot.exchange(&options("evildialer/2.1"), 200, at(0)).0,
        Some(DropReason::Scanner)
    );
    let mut phone = Client::new(&p, OFFICE);
    assert_eq!(
        phone.exchange(&options("Yealink SIP-T46S"), 200, at(0)).0,
        None
    );
}

#[test]
fn spoofed_scanner_packet_from_a_trusted_source_is_dropped_without_ban() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, OFFICE);
    phone.register_ok("1001", at(0));
    let (dropped, events) = phone.exchange(&options("friendly-scanner"), 200, at(1));
    assert_eq!(dropped, Some(DropReason::Scanner));
    assert_eq!(banned_by(&events), None);
    assert!(!p.is_banned(ip(OFFICE), at(2)));
    phone.register_ok("1001", at(3));
}

#[test]
fn trust_lapses_after_its_period() {
    let p = policy(|c| c.trust_for = Duration::from_secs(60));
    let mut phone = Client::new(&p, OFFICE);
    phone.register_ok("1001", at(0));
    let (_, events) = phone.exchange(&options("sipcli/v1"), 200, at(61));
    assert_eq!(banned_by(&events), Some(RuleId::Scanner));
}

#[test]
fn flood_bans_after_sixty_four_requests_in_two_seconds() {
    let p = policy(|_| {});
    let mut flooder = Client::new(&p, ATTACKER);
    for _ in 0..64 {
        assert_eq!(flooder.exchange(&options("Yealink"), 200, at(0)).0, None);
    }
    let (dropped, events) = flooder.exchange(&options("Yealink"), 200, at(1));
    assert_eq!(dropped, Some(DropReason::Flood));
    assert_eq!(banned_by(&events), Some(RuleId::Flood));
}

#[test]
fn a_trusted_phones_burst_passes_and_a_flood_in_its_name_is_dropped_without_ban() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, OFFICE);
    phone.register_ok("1001", at(0));
    // A receptionist's phone subscribes to sixty BLF keys at boot, each challenged first.
    for key in 0..60 {
        let blf = Request {
            method: "SUBSCRIBE",
            user: format!("1001-blf{key}"),
            credentials: false,
            user_agent: "Yealink",
        };
        assert_eq!(phone.exchange(&blf, 401, at(1)).0, None, "BLF key {key}");
        let answered = Request {
            credentials: true,
            ..blf
        };
        assert_eq!(
            phone.exchange(&answered, 200, at(1)).0,
            None,
            "BLF key {key}"
        );
    }
    // A forged flood at the phone's address, far beyond any phone: dropped, never banned.
    let mut reasons = Vec::new();
    for _ in 0..600 {
        reasons.push(phone.forge(&options("Yealink"), 200, at(2)).0);
    }
    assert!(reasons.contains(&Some(DropReason::Flood)));
    assert!(!p.is_banned(ip(OFFICE), at(3)));
    assert_eq!(phone.exchange(&options("Yealink"), 200, at(10)).0, None);
}

#[test]
fn steady_traffic_below_the_flood_rate_passes() {
    let p = policy(|_| {});
    let mut phone = Client::new(&p, OFFICE);
    for i in 0..200u64 {
        // Six requests a second, for 33 s.
        let now = Timestamp::from_millis(at(0).as_millis() + i * 166);
        assert_eq!(
            phone.exchange(&options("Yealink"), 200, now).0,
            None,
            "request {i}"
        );
    }
}

#[test]
fn allowlisted_carrier_is_never_banned() {
    let p = policy(|c| {
        c.allowlist = vec![AllowGroup::new(
            "listed",
            ["198.51.100.0/28".parse().unwrap()],
        )]
    });
    let mut carrier = Client::new(&p, CARRIER);
    for i in 0..100 {
        let (dropped, events) = carrier.exchange(&register("trunk", true), 401, at(i / 10));
        assert_eq!(dropped, None, "request {i}");
        assert!(events.is_empty(), "{events:?}");
    }
    let (dropped, events) = carrier.exchange(&options("sipvicious"), 200, at(20));
    assert_eq!(dropped, Some(DropReason::Scanner));
    assert_eq!(banned_by(&events), None);
    assert!(p
        .ban_manually(ip(CARRIER), Duration::from_secs(60), None, at(21))
        .is_none());
    assert!(!p.is_banned(ip(CARRIER), at(22)));
}

#[test]
fn enforced_allowlist_drops_everyone_else_before_parsing() {
    let p = policy(|c| {
        c.allowlist = vec![AllowGroup::new(
            "listed",
            [
                "198.51.100.0/28".parse().unwrap(),
                "2001:db8:10::/48".parse().unwrap(),
            ],
        )];
        c.allowlist_mode = AllowlistMode::Enforce;
    });
    assert_eq!(
        p.check(b"junk", ip(ATTACKER), Transport::Datagram, at(0))
            .verdict,
        Verdict::Drop(DropReason::NotAllowlisted)
    );
    assert_eq!(
        p.check(b"junk", ip(CARRIER), Transport::Datagram, at(0))
            .verdict,
        Verdict::Drop(DropReason::NotSip)
    );
    assert_eq!(
        p.check(b"junk", ip("2001:db8:10::5"), Transport::Datagram, at(0))
            .verdict,
        Verdict::Drop(DropReason::NotSip)
    );
}

#[test]
fn ban_expires_and_the_source_is_let_through() {
    let p = policy(|_| {});
    assert!(p
        .ban_manually(ip(ATTACKER), Duration::from_secs(600), None, at(0))
        .is_some());
    let mut client = Client::new(&p, ATTACKER);
    assert_eq!(
        client.exchange(&register("1001", false), 401, at(599)).0,
        Some(DropReason::Banned)
    );
    assert_eq!(
        client.exchange(&register("1001", false), 401, at(600)).0,
        None
    );
}

#[test]
fn repeat_offender_bans_double_up_to_a_week() {
    let p = policy(|_| {});
    let week = Duration::from_secs(7 * 24 * 3600);
    let mut expected = Duration::from_secs(3600);
    let mut now = at(0);
    for offence in 1..=10u32 {
        let (_, events) = Client::new(&p, ATTACKER).exchange(&options("sipvicious"), 200, now);
        let Some(Action::Banned(ban)) = events.first().map(|e| e.action.clone()) else {
            panic!("offence {offence} not banned: {events:?}");
        };
        assert_eq!(ban.offence, offence);
        assert_eq!(ban.expires, now + expected.min(week), "offence {offence}");
        // Offends again an hour after the ban ends.
        now = ban.expires + Duration::from_secs(3600);
        expected *= 2;
    }
}

#[test]
fn an_operators_ban_lasts_exactly_as_long_as_asked_and_still_counts_as_an_offence() {
    let p = policy(|_| {});
    let first = p
        .ban_manually(ip(ATTACKER), Duration::from_secs(600), None, at(0))
        .unwrap();
    let second = p
        .ban_manually(ip(ATTACKER), Duration::from_secs(600), None, at(700))
        .unwrap();
    assert_eq!(first.expires, at(600));
    assert_eq!(second.expires, at(1300), "not doubled");
    assert_eq!(second.offence, 2);
}

#[test]
fn offences_more_than_a_day_after_the_last_ban_ended_are_forgotten() {
    let p = policy(|_| {});
    p.ban_manually(ip(ATTACKER), Duration::from_secs(600), None, at(0))
        .unwrap();
    let later = p
        .ban_manually(
            ip(ATTACKER),
            Duration::from_secs(600),
            None,
            at(600 + 24 * 3600),
        )
        .unwrap();
    assert_eq!(later.offence, 1);
    assert_eq!(
        later.expires,
        at(600 + 24 * 3600) + Duration::from_secs(600)
    );
}

#[test]
fn observe_mode_forwards_and_reports_what_it_would_have_done() {
    let p = policy(|c| {
        c.scanner.mode = Mode::Observe;
        c.register_failures.mode = Mode::Observe;
    });
    let mut bot = Client::new(&p, ATTACKER);
    let probe = Request {
        method: "REGISTER",
        user: "1001".into(),
        credentials: true,
        user_agent: "friendly-scanner",
    };
    let mut events = Vec::new();
    for i in 0..6 {
        let (dropped, e) = bot.exchange(&probe, 401, at(i));
        assert_eq!(dropped, None);
        events.extend(e);
    }
    assert!(events
        .iter()
        .any(|e| e.rule == RuleId::Scanner && e.action == Action::Observed { would_ban: true }));
    assert!(
        events
            .iter()
            .any(|e| e.rule == RuleId::RegisterFailures
                && matches!(e.action, Action::Observed { .. }))
    );
    assert!(!p.is_banned(ip(ATTACKER), at(10)));
}

#[test]
fn drop_mode_drops_the_packet_and_bans_nobody() {
    let p = policy(|c| c.scanner.mode = Mode::Drop);
    let mut bot = Client::new(&p, ATTACKER);
    let (dropped, events) = bot.exchange(&options("sipsak 0.9"), 200, at(0));
    assert_eq!(dropped, Some(DropReason::Scanner));
    assert_eq!(events[0].action, Action::Dropped);
    assert!(!p.is_banned(ip(ATTACKER), at(1)));
}

#[test]
fn lifting_a_ban_lets_the_source_through_and_clears_its_evidence() {
    let p = policy(|_| {});
    let mut scanner = Client::new(&p, ATTACKER);
    for ext in 100..110 {
        scanner.exchange(&register(&ext.to_string(), false), 404, at(ext / 20));
    }
    assert!(p.is_banned(ip(ATTACKER), at(10)));
    assert!(p.lift(ip(ATTACKER)).is_some());
    let (dropped, events) = scanner.exchange(&register("200", false), 404, at(11));
    assert_eq!(dropped, None);
    assert_eq!(
        banned_by(&events),
        None,
        "the enumeration evidence was cleared"
    );
}

#[test]
fn a_million_spoofed_sources_stay_within_the_table_caps() {
    let p = policy(|c| c.max_tracked_sources = 10_000);
    let register = register("1001", false).text(1, "spoof", "");
    let scanner = options("friendly-scanner").text(1, "s", "");
    for i in 0..1_000_000u32 {
        let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
        let datagram = if i % 2 == 0 { &register } else { &scanner };
        let _ = p.check(datagram.as_bytes(), source, Transport::Datagram, at(0));
    }
    let stats = p.stats();
    assert!(stats.sources <= 10_048, "{stats:?}");
    assert!(stats.bans <= 10_048, "{stats:?}");
    assert!(stats.evictions > 0);
}

#[test]
fn retransmissions_of_one_failed_register_count_as_one_failure() {
    // Regression: every answer to a retransmitted REGISTER counted again, so one wrong password
    // whose 401s were lost on the way back banned the phone at the fifth copy.
    let p = policy(|_| {});
    let mut phone = Client::new(&p, OFFICE);
    let mut events = phone.exchange(&register("1001", true), 401, at(0)).1;
    for i in 1..10 {
        events.extend(phone.retransmit(&register("1001", true), 401, at(i)).1);
    }
    assert!(events.is_empty(), "{events:?}");
    assert!(!p.is_banned(ip(OFFICE), at(11)));
}

#[test]
fn reconfigure_swaps_the_rules_and_keeps_bans_and_evidence() {
    let p = policy(|_| {});
    let mut scanner = Client::new(&p, ATTACKER);
    scanner.exchange(&options("friendly-scanner"), 200, at(0));
    assert!(p.is_banned(ip(ATTACKER), at(1)));
    let mut cracker = Client::new(&p, "192.0.2.67");
    for i in 0..4 {
        cracker.exchange(&register("1001", true), 401, at(i));
    }

    let mut config = PolicyConfig::default();
    config.register_failures.threshold = 6;
    config.max_tracked_sources = 5_000;
    p.reconfigure(config.clone()).unwrap();
    assert_eq!(p.config().register_failures.threshold, 6);
    assert_eq!(
        p.config().max_tracked_sources,
        PolicyConfig::default().max_tracked_sources,
        "table caps are fixed at construction"
    );
    // The four failures from before the reload still count: the sixth bans, with evidence 6.
    let (_, events) = cracker.exchange(&register("1001", true), 401, at(5));
    assert_eq!(banned_by(&events), None);
    let (_, events) = cracker.exchange(&register("1001", true), 401, at(6));
    assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
    assert_eq!(p.ban_of(ip("192.0.2.67"), at(6)).unwrap().evidence, 6);

    config.allowlist = vec![AllowGroup::new(
        "listed",
        ["203.0.113.0/24".parse().unwrap()],
    )];
    config.allowlist_mode = AllowlistMode::Enforce;
    p.reconfigure(config).unwrap();
    assert!(p.is_banned(ip(ATTACKER), at(7)), "a reload lifted a ban");
    assert_eq!(
        Client::new(&p, CARRIER)
            .exchange(&register("1001", false), 401, at(7))
            .0,
        Some(DropReason::NotAllowlisted)
    );
    assert_eq!(
        Client::new(&p, OFFICE)
            .exchange(&register("1001", false), 401, at(7))
            .0,
        None
    );
}

#[test]
fn restore_puts_a_ban_back_as_it_was_and_the_next_offence_doubles() {
    let p = policy(|_| {});
    let ban = sipguard_policy::Ban {
        rule: RuleId::Scanner,
        note: None,
        evidence: 1,
        first_seen: at(0),
        last_seen: at(0),
        expires: at(3600),
        offence: 2,
        quiet: false,
    };
    assert!(p.restore(ip(ATTACKER).into(), ban.clone(), at(10)));
    assert_eq!(p.bans(at(10)), [(ip(ATTACKER).into(), ban.clone())]);
    assert!(
        !p.restore(ip(OFFICE).into(), ban.clone(), at(3600)),
        "an expired ban was restored"
    );
    let listed = policy(|c| {
        c.allowlist = vec![AllowGroup::new(
            "listed",
            ["198.51.100.0/28".parse().unwrap()],
        )]
    });
    assert!(!listed.restore(ip(CARRIER).into(), ban, at(10)));

    // Its third offence: the scanner rule's hour, doubled twice.
    let (_, events) = Client::new(&p, ATTACKER).exchange(&options("sipvicious"), 200, at(4000));
    let Some(Action::Banned(third)) = events.first().map(|e| e.action.clone()) else {
        panic!("not banned again: {events:?}");
    };
    assert_eq!(third.offence, 3);
    assert_eq!(third.expires, at(4000) + Duration::from_secs(4 * 3600));
}

#[test]
fn adopt_applies_another_nodes_ban_unless_allowlisted_here_or_outlasted_and_tells_the_observers() {
    struct Heard(std::sync::Mutex<Vec<sipguard_policy::Change>>);
    impl sipguard_policy::Observer for Heard {
        fn changed(&self, change: &sipguard_policy::Change) {
            self.0.lock().unwrap().push(change.clone());
        }
    }
    let p = policy(|c| {
        c.allowlist = vec![AllowGroup::new(
            "listed",
            ["198.51.100.0/28".parse().unwrap()],
        )]
    });
    let heard = std::sync::Arc::new(Heard(Default::default()));
    p.subscribe(heard.clone());
    let ban = |expires| sipguard_policy::Ban {
        rule: RuleId::Scanner,
        note: Some("from node a".into()),
        evidence: 1,
        first_seen: at(0),
        last_seen: at(0),
        expires,
        offence: 1,
        quiet: false,
    };
    assert!(p.adopt(ip(ATTACKER).into(), ban(at(600)), at(10)));
    assert_eq!(p.ban_of(ip(ATTACKER), at(10)), Some(ban(at(600))));
    assert!(
        !p.adopt(ip(ATTACKER).into(), ban(at(300)), at(10)),
        "a shorter ban replaced a longer one"
    );
    assert!(p.adopt(ip(ATTACKER).into(), ban(at(900)), at(10)));
    assert!(
        !p.adopt(ip(CARRIER).into(), ban(at(600)), at(10)),
        "an address allowlisted here was banned"
    );
    assert!(!p.adopt(ip(OFFICE).into(), ban(at(5)), at(10)), "expired");
    let heard = heard.0.lock().unwrap();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(
        matches!(&heard[1], sipguard_policy::Change::Banned { ban: b, .. } if b.expires == at(900))
    );
}

#[test]
fn lifting_a_ban_lets_the_source_through_and_clears_its_counters() {
    let p = policy(|_| {});
    let mut cracker = Client::new(&p, ATTACKER);
    for i in 0..4 {
        cracker.exchange(&register("1001", true), 401, at(i));
    }
    assert!(p
        .ban_manually(ip(ATTACKER), Duration::from_secs(600), None, at(5))
        .is_some());
    assert_eq!(
        cracker.exchange(&register("1001", true), 401, at(6)).0,
        Some(DropReason::Banned)
    );
    assert!(p.lift(ip(ATTACKER)).is_some());
    // Four more failures from zero do not ban; the fifth does.
    for i in 0..4 {
        let (dropped, events) = cracker.exchange(&register("1001", true), 401, at(10 + i));
        assert_eq!(
            (dropped, banned_by(&events)),
            (None, None),
            "failure {}",
            i + 1
        );
    }
    let (_, events) = cracker.exchange(&register("1001", true), 401, at(20));
    assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
}

#[test]
fn judge_response_reports_refused_credentials_by_method_and_proof_and_never_a_bare_challenge() {
    use sipguard_policy::{AuthFailure, AuthMethod};
    let p = policy(|c| {
        c.allowlist = vec![AllowGroup::new(
            "listed",
            ["198.51.100.0/28".parse().unwrap()],
        )]
    });
    let failure = |method, proven| Some(AuthFailure { method, proven });
    // (source, request, the nonce it answers: one challenged to it or a made-up one, answer,
    // expected)
    let cases = [
        (ATTACKER, register("1001", false), true, 401, None),
        (
            ATTACKER,
            register("1001", true),
            true,
            401,
            failure(AuthMethod::Register, true),
        ),
        (
            ATTACKER,
            register("1001", true),
            false,
            401,
            failure(AuthMethod::Register, false),
        ),
        (ATTACKER, register("1001", true), true, 200, None),
        (
            ATTACKER,
            invite("1001", true),
            true,
            407,
            failure(AuthMethod::Invite, true),
        ),
        (
            ATTACKER,
            options("Yealink"),
            true,
            403,
            failure(AuthMethod::Other, false),
        ),
        (
            CARRIER,
            register("1001", true),
            true,
            401,
            failure(AuthMethod::Register, true),
        ),
    ];
    for (n, (source, request, challenged, code, expected)) in cases.into_iter().enumerate() {
        let mut exchange = Exchange::datagram();
        let call_id = format!("judge-{n}");
        let mut respond = |cseq: u32, nonce: &str, code: u16, request: &Request| {
            let text = request.text(cseq, &call_id, nonce);
            let checked = p.check(text.as_bytes(), ip(source), Transport::Datagram, at(0));
            let Verdict::Forward(view) = checked.verdict else {
                panic!("case {n} dropped");
            };
            exchange.remember(checked.memo.unwrap());
            let response = format!(
                "SIP/2.0 {code} X\r\nVia: {via}\r\nFrom: <sip:x@y>;tag=f\r\nTo: <sip:x@y>;tag=t\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} {m}\r\nWWW-Authenticate: Digest nonce=\"n{n}\"\r\n\
Content-Length: 0\r\n\r\n",
                via = String::from_utf8_lossy(view.via),
                m = request.method,
            );
            let response = SipView::parse(response.as_bytes()).unwrap();
            let judged = p.judge_response(ip(source), &response, &mut exchange, at(0));
            // A retransmitted answer is the same failure, reported once.
            let again = p.judge_response(ip(source), &response, &mut exchange, at(0));
            assert_eq!(again.auth_failure, None, "case {n} again");
            judged.auth_failure
        };
        // The nonce this client was challenged with.
        let bare = Request {
            credentials: false,
            user: request.user.clone(),
            ..request
        };
        respond(1, "", 401, &bare);
        let nonce = if challenged {
            format!("n{n}")
        } else {
            "made-up".into()
        };
        assert_eq!(respond(2, &nonce, code, &request), expected, "case {n}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// One step of a random conversation: which source, which user, with or without
    /// credentials, the PBX's answer, and how much time passes first.
    fn step() -> impl Strategy<Value = (usize, u8, bool, u16, u64, bool)> {
        (
            0..3usize,
            0..12u8,
            any::<bool>(),
            prop::sample::select(vec![200u16, 401, 403, 404, 407, 500]),
            0..120u64,
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn allowlisted_sources_are_never_banned_or_blocked(steps in prop::collection::vec(step(), 1..200)) {
            let p = policy(|c| c.allowlist = vec![AllowGroup::new("listed", ["198.51.100.0/28".parse().unwrap()])]);
            let sources = [CARRIER, ATTACKER, OFFICE];
            let mut clients: Vec<Client> = sources.iter().map(|s| Client::new(&p, s)).collect();
            let mut now = at(0);
            for (who, user, credentials, code, pause, scanner_ua) in steps {
                now = now + Duration::from_secs(pause);
                let user = format!("1{user:03}");
                let mut request = if credentials { register(&user, true) } else { invite(&user, false) };
                if scanner_ua {
                    request.user_agent = "friendly-scanner";
                }
                let (dropped, events) = clients[who].exchange(&request, code, now);
                if who == 0 {
                    prop_assert!(!matches!(dropped, Some(DropReason::Banned | DropReason::UserBlocked | DropReason::Flood)));
                    let punished = events
                        .iter()
                        .any(|e| matches!(e.action, Action::Banned(_) | Action::UserBlocked { .. }));
                    prop_assert!(!punished, "events {:?}", events);
                }
                prop_assert!(!p.is_banned(ip(CARRIER), now));
            }
        }

        #[test]
        fn a_ban_always_names_its_evidence_and_lies_in_the_future(steps in prop::collection::vec(step(), 1..200)) {
            let p = policy(|_| {});
            let mut clients: Vec<Client> = [ATTACKER, OFFICE, CARRIER].iter().map(|s| Client::new(&p, s)).collect();
            let mut now = at(0);
            for (who, user, credentials, code, pause, scanner_ua) in steps {
                now = now + Duration::from_secs(pause);
                let mut request = register(&format!("2{user:03}"), credentials);
                if scanner_ua {
                    request.user_agent = "sipcli";
                }
                for event in clients[who].exchange(&request, code, now).1 {
                    if let Action::Banned(ban) = event.action {
                        prop_assert!(ban.expires > now);
                        prop_assert!(ban.first_seen <= ban.last_seen);
                        prop_assert!(ban.evidence >= 1);
                        prop_assert!(p.is_banned(event.source, now));
                    }
                }
            }
        }
    }
}

/// The detection issue's attacks, each beside the innocent pattern it must not hurt.
mod detection {
    use super::*;

    fn subscribe(user: &str, credentials: bool) -> Request {
        Request {
            method: "SUBSCRIBE",
            user: user.into(),
            credentials,
            user_agent: "Yealink SIP-T46S",
        }
    }

    /// svcrack reuses one Call-ID and CSeq for every guess: each new credential attempt (a new
    /// nonce and response) still counts once, and a retransmission of one does not.
    #[test]
    fn a_cracker_reusing_one_call_id_and_cseq_has_every_guess_counted() {
        let p = policy(|_| {});
        let mut svcrack = Client::new(&p, ATTACKER);
        let guess = register("1001", true);
        let mut events = svcrack.exchange(&guess, 401, at(0)).1;
        for i in 1..4 {
            // The same CSeq, answering the nonce of the last 401: the next guess.
            events.extend(svcrack.guess_again(&guess, 401, at(i)).1);
            assert_eq!(banned_by(&events), None, "guess {}", i + 1);
        }
        events.extend(svcrack.guess_again(&guess, 401, at(5)).1);
        assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
    }

    #[test]
    fn a_cracker_with_a_new_call_id_or_cseq_per_guess_is_banned_at_the_fifth() {
        let p = policy(|_| {});
        let mut cracker = Client::new(&p, ATTACKER);
        let mut events = Vec::new();
        for i in 0..5u64 {
            let mut guess = register("1001", true);
            guess.user = "1001".into();
            events.extend(cracker.exchange(&guess, 401, at(i)).1);
        }
        assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
    }

    /// A spoofer bound to a phone's address never sees the nonces the PBX sends the phone:
    /// whatever it forges is unproven, and never bans or blocks the phone.
    #[test]
    fn forged_failures_enumeration_scanner_and_flood_never_ban_or_block_an_authenticated_phone() {
        let p = policy(|_| {});
        let mut phone = Client::new(&p, OFFICE);
        phone.register_ok("1001", at(0));
        // The same port as the phone, and another one.
        let mut other_port = Client::new(&p, OFFICE);
        for forger in [&mut phone, &mut other_port] {
            let mut events = Vec::new();
            for i in 0..20 {
                events.extend(forger.forge(&register("1001", true), 401, at(1 + i)).1);
            }
            for user in 0..10 {
                let other = register(&format!("20{user}"), true);
                events.extend(forger.forge(&other, 401, at(30)).1);
                events.extend(
                    forger
                        .forge(&register(&format!("30{user}"), false), 401, at(30))
                        .1,
                );
            }
            events.extend(forger.forge(&options("friendly-scanner"), 200, at(40)).1);
            for _ in 0..600 {
                events.extend(forger.forge(&options("Yealink"), 200, at(41)).1);
            }
            let punished = events
                .iter()
                .find(|e| matches!(e.action, Action::Banned(_) | Action::UserBlocked { .. }));
            assert_eq!(punished, None);
        }
        assert!(!p.is_banned(ip(OFFICE), at(60)));
        phone.register_ok("1001", at(60));
    }

    /// Forged failures are forgeable evidence like any other: they may ban a source that never
    /// authenticated, or a cracker could use nonces it made up or shared to stay unproven.
    #[test]
    fn unproven_failures_count_against_a_source_that_never_authenticated() {
        let p = policy(|_| {});
        let mut cracker = Client::new(&p, ATTACKER);
        let events: Vec<_> = (0..5)
            .flat_map(|i| cracker.forge(&register("1001", true), 401, at(i)).1)
            .collect();
        assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
    }

    /// A cracker that keeps under the failure rule in every window (4 guesses per 10 minutes,
    /// 576 a day) is caught over a day, at four times the threshold, and banned for as long as
    /// its guesses took.
    #[test]
    fn a_cracker_pacing_itself_under_the_window_is_banned_over_a_day() {
        let p = policy(|_| {});
        let mut cracker = Client::new(&p, ATTACKER);
        let mut events = Vec::new();
        let pace = 151; // seconds: 4 guesses in every 10 minutes, never 5
        for guess in 0..19u64 {
            events.extend(
                cracker
                    .exchange(&register("1001", true), 401, at(guess * pace))
                    .1,
            );
        }
        assert_eq!(
            banned_by(&events),
            None,
            "banned before the twentieth guess"
        );
        let (_, events) = cracker.exchange(&register("1001", true), 401, at(19 * pace));
        assert_eq!(banned_by(&events), Some(RuleId::RegisterFailures));
        let ban = p.ban_of(ip(ATTACKER), at(19 * pace)).unwrap();
        assert_eq!(ban.evidence, 20);
        assert_eq!(ban.expires, at(19 * pace) + Duration::from_secs(19 * pace));
    }

    /// The innocent pattern beside it: a user who mistypes the password now and then.
    #[test]
    fn a_few_failures_a_day_are_never_banned() {
        let p = policy(|_| {});
        let mut phone = Client::new(&p, OFFICE);
        let mut events = Vec::new();
        for hour in 0..24u64 {
            if hour % 2 == 0 {
                events.extend(
                    phone
                        .exchange(&register("1001", true), 401, at(hour * 3600))
                        .1,
                );
            }
            events.extend(
                phone
                    .exchange(&register("1001", true), 200, at(hour * 3600 + 5))
                    .1,
            );
        }
        assert_eq!(banned_by(&events), None);
    }

    fn pbx_options(branch: &str) -> String {
        format!(
            "OPTIONS sip:trunk@198.51.100.9 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch={branch}\r\n\
From: <sip:pbx@127.0.0.1>;tag=q\r\nTo: <sip:trunk@198.51.100.9>\r\nCall-ID: qualify-{branch}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn trunk_answer(branch: &str) -> String {
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5080;branch={branch}\r\n\
From: <sip:pbx@127.0.0.1>;tag=q\r\nTo: <sip:trunk@198.51.100.9>;tag=t\r\nCall-ID: qualify-{branch}\r\n\
CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// A trunk identified by its address never authenticates, but it answers the PBX's
    /// qualify: only it saw that request, so the answer proves it receives at its address, and
    /// a forged scanner packet in its name only drops.
    #[test]
    fn a_trunk_answering_the_pbxs_request_is_trusted_and_a_forged_scanner_packet_does_not_ban_it() {
        let p = policy(|_| {});
        let mut trunk = Exchange::datagram();
        let qualify = pbx_options("z9hG4bK-pbx-1");
        p.pbx_request(&SipView::parse(qualify.as_bytes()).unwrap(), &mut trunk);
        let answer = trunk_answer("z9hG4bK-pbx-1");
        let checked = p.check(answer.as_bytes(), ip(CARRIER), Transport::Datagram, at(0));
        assert!(matches!(checked.verdict, Verdict::Forward(_)));
        p.answered(ip(CARRIER), checked.answer.unwrap(), &mut trunk, at(0));
        assert!(p.is_trusted(ip(CARRIER), at(1)));
        assert!(trunk.is_proven());
        let (dropped, events) =
            Client::new(&p, CARRIER).forge(&options("friendly-scanner"), 200, at(2));
        assert_eq!(dropped, Some(DropReason::Scanner));
        assert_eq!(banned_by(&events), None);
    }

    /// The forger's side: a response with a branch the PBX never sent that client proves
    /// nothing.
    #[test]
    fn a_response_to_a_request_the_pbx_never_sent_earns_no_trust() {
        let p = policy(|_| {});
        let mut trunk = Exchange::datagram();
        let qualify = pbx_options("z9hG4bK-pbx-1");
        p.pbx_request(&SipView::parse(qualify.as_bytes()).unwrap(), &mut trunk);
        let guess = trunk_answer("z9hG4bK-guessed");
        let checked = p.check(guess.as_bytes(), ip(ATTACKER), Transport::Datagram, at(0));
        p.answered(ip(ATTACKER), checked.answer.unwrap(), &mut trunk, at(0));
        assert!(!p.is_trusted(ip(ATTACKER), at(1)));
        assert!(!trunk.is_proven());
    }

    /// Asterisk's nonce is the second and the peer's address, and behind sipguard every client
    /// is the same peer: a forger that fetches a challenge of its own in the same second as the
    /// phone's learns the phone's nonce. A nonce that went to two addresses proves neither.
    #[test]
    fn a_nonce_the_forger_was_also_sent_proves_nothing_against_the_phone() {
        let p = policy(|_| {});
        let shared = "1796191098/9ed0c0ffee";
        let mut phone = Client::new(&p, OFFICE);
        phone.pbx_nonce = Some(shared.into());
        phone.register_ok("1001", at(0));
        // The forger spoofs a bare REGISTER in the phone's name (the 401 goes to the phone) and
        // fetches the same nonce at its own address.
        phone.forge_on(&register("1001", false), "", 401, at(1));
        let mut forger = Client::new(&p, ATTACKER);
        forger.pbx_nonce = Some(shared.into());
        forger.exchange(&register("2001", false), 401, at(1));
        let mut events = Vec::new();
        for user in [
            "2001", "2002", "1001", "1001", "1001", "1001", "1001", "1001",
        ] {
            events.extend(phone.forge_on(&register(user, true), shared, 401, at(2)).1);
        }
        let punished = events
            .iter()
            .find(|e| matches!(e.action, Action::Banned(_) | Action::UserBlocked { .. }));
        assert_eq!(punished, None);
        assert!(p.is_trusted(ip(OFFICE), at(3)));
        phone.register_ok("1001", at(4));
    }

    /// The innocent pattern beside it: phones behind one address (on their own ports) that are
    /// all sent one nonce still have a stale password's failures proven, and only that phone's
    /// username is blocked there.
    #[test]
    fn a_nonce_sent_to_several_phones_of_one_address_still_proves_a_failure_there() {
        let p = policy(|_| {});
        let nonce = "1796191098/0ff1ce";
        let mut good = Client::new(&p, OFFICE);
        good.pbx_nonce = Some(nonce.into());
        good.register_ok("1001", at(0));
        let mut stale = Client::new(&p, OFFICE);
        stale.pbx_nonce = Some(nonce.into());
        let events: Vec<_> = (0..5)
            .flat_map(|i| stale.exchange(&register("1009", true), 401, at(1 + i)).1)
            .collect();
        assert!(events
            .iter()
            .any(|e| matches!(e.action, Action::UserBlocked { .. })));
        assert!(!p.is_banned(ip(OFFICE), at(10)));
    }

    #[test]
    fn thirty_phones_behind_one_address_booting_at_once_are_neither_enumeration_nor_a_flood() {
        // One port for all (the worst case), and then one port each.
        for ports in [1usize, 30] {
            let p = policy(|_| {});
            let mut office: Vec<Client> = (0..ports).map(|_| Client::new(&p, OFFICE)).collect();
            let mut events = Vec::new();
            let users: Vec<String> = (0..30).map(|n| format!("4{n:02}")).collect();
            // Every first REGISTER at once, then their answers, then four SUBSCRIBEs each.
            for (n, user) in users.iter().enumerate() {
                let phone = &mut office[n % ports];
                events.extend(phone.exchange(&register(user, false), 401, at(0)).1);
            }
            for (n, user) in users.iter().enumerate() {
                let phone = &mut office[n % ports];
                let (dropped, more) = phone.exchange(&register(user, true), 200, at(0));
                assert_eq!(dropped, None, "{user}'s REGISTER");
                events.extend(more);
            }
            for (n, user) in users.iter().enumerate() {
                let phone = &mut office[n % ports];
                for key in 0..4 {
                    let blf = format!("{user}-{key}");
                    events.extend(phone.exchange(&subscribe(&blf, false), 401, at(1)).1);
                    let (dropped, more) = phone.exchange(&subscribe(&blf, true), 200, at(1));
                    assert_eq!(dropped, None, "{user}'s SUBSCRIBE");
                    events.extend(more);
                }
            }
            assert_eq!(banned_by(&events), None);
            assert!(!p.is_banned(ip(OFFICE), at(20)));
        }
    }

    /// After a restart the office's trust is back from the journal: one stale password heard
    /// first blocks that phone's username, not the office.
    #[test]
    fn restored_trust_keeps_one_stale_password_from_banning_the_office() {
        let p = policy(|_| {});
        assert!(p.restore_trust(ip(OFFICE), at(3600), at(0)));
        let mut stale = Client::new(&p, OFFICE);
        let events: Vec<_> = (0..8)
            .flat_map(|i| stale.exchange(&register("1009", true), 401, at(i)).1)
            .collect();
        assert_eq!(banned_by(&events), None);
        assert!(events
            .iter()
            .any(|e| matches!(e.action, Action::UserBlocked { .. })));
        Client::new(&p, OFFICE).register_ok("1001", at(10));
    }

    /// A trunk authenticating its calls: each INVITE's caller ID is new and drew a challenge,
    /// and each was followed up with credentials on its Call-ID.
    #[test]
    fn a_digest_trunk_placing_calls_with_distinct_caller_ids_is_not_enumeration() {
        let p = policy(|_| {});
        let mut trunk = Client::new(&p, CARRIER);
        let mut events = Vec::new();
        for call in 0..20 {
            let caller = format!("+4930555{call:04}");
            events.extend(trunk.exchange(&invite(&caller, false), 407, at(call)).1);
            events.extend(trunk.exchange(&invite(&caller, true), 200, at(call)).1);
        }
        events.extend(
            trunk
                .exchange(&invite("+49305559999", false), 407, at(30))
                .1,
        );
        assert_eq!(banned_by(&events), None);
    }

    #[test]
    fn a_stale_nonce_is_not_a_failure() {
        let p = policy(|_| {});
        let mut phone = Client::new(&p, OFFICE);
        let mut events = Vec::new();
        for i in 0..10 {
            events.extend(phone.exchange_stale(&register("1001", true), at(i * 60)).1);
        }
        assert_eq!(banned_by(&events), None);
        assert!(events.is_empty(), "{events:?}");
    }

    #[test]
    fn a_source_failing_across_several_usernames_loses_its_trust() {
        let p = policy(|_| {});
        let mut office = Client::new(&p, OFFICE);
        office.register_ok("1001", at(0));
        assert!(p.is_trusted(ip(OFFICE), at(1)));
        for user in ["2001", "2002", "2003"] {
            office.exchange(&register(user, true), 401, at(2));
        }
        assert!(!p.is_trusted(ip(OFFICE), at(3)));
        // And a success now earns none.
        office.register_ok("1001", at(4));
        assert!(!p.is_trusted(ip(OFFICE), at(5)));
    }

    /// An office banned for enumeration before its phones' answers came: the late 401s of the
    /// same burst are no new offences.
    #[test]
    fn a_source_already_banned_is_not_banned_again() {
        let p = policy(|_| {});
        let mut scanner = Client::new(&p, ATTACKER);
        let mut bans = 0;
        for ext in 100..130 {
            let (_, events) = scanner.exchange(&register(&ext.to_string(), false), 404, at(1));
            bans += events
                .iter()
                .filter(|e| matches!(e.action, Action::Banned(_)))
                .count();
            scanner.pending = Exchange::datagram();
        }
        assert_eq!(bans, 1);
        assert_eq!(p.ban_of(ip(ATTACKER), at(2)).unwrap().offence, 1);
    }

    fn garbage(p: &Policy, source: &str, count: u64, now: Timestamp) -> Vec<Event> {
        (0..count)
            .filter_map(|i| {
                let junk: &[u8] = if i % 2 == 0 {
                    b"\x16\x03\x01junk"
                } else {
                    b"GET / HTTP/1.0\r\n\r\n"
                };
                p.check(junk, ip(source), Transport::Datagram, now).event
            })
            .collect()
    }

    #[test]
    fn garbage_above_the_rate_bans_an_unknown_source_and_only_drops_a_trusted_one() {
        let p = policy(|_| {});
        assert_eq!(
            banned_by(&garbage(&p, ATTACKER, 20, at(0))),
            Some(RuleId::Garbage)
        );
        let mut phone = Client::new(&p, OFFICE);
        phone.register_ok("1001", at(0));
        assert_eq!(banned_by(&garbage(&p, OFFICE, 1000, at(1))), None);
        assert!(!p.is_banned(ip(OFFICE), at(2)));
        // A phone's occasional broken packet is no flood of garbage.
        let q = policy(|_| {});
        for second in 0..100 {
            assert_eq!(banned_by(&garbage(&q, CARRIER, 1, at(second))), None);
        }
    }

    const PREFIX: &str = "2001:db8:1:2::";

    fn v6(host: u32) -> String {
        format!("{PREFIX}{host:x}")
    }

    #[test]
    fn an_ipv6_prefix_is_banned_once_four_of_its_addresses_are_and_one_offender_bans_no_neighbour()
    {
        let p = policy(|c| {
            c.allowlist = vec![AllowGroup::new(
                "listed",
                [format!("{PREFIX}ffff/128").parse().unwrap()],
            )]
        });
        let scan = |host: u32| {
            Client::new(&p, &v6(host)).exchange(&options("friendly-scanner"), 200, at(0));
        };
        scan(1);
        assert!(
            !p.is_banned(ip(&v6(2)), at(1)),
            "one offender banned its neighbour"
        );
        for host in 2..=4 {
            scan(host);
        }
        assert!(p.is_banned(ip(&v6(77)), at(1)), "the /64 is not banned");
        let prefix: IpNet = format!("{PREFIX}/64").parse().unwrap();
        assert!(p.bans(at(1)).iter().any(|(net, _)| *net == prefix));
        assert!(
            !p.is_banned(ip(&v6(0xffff)), at(1)),
            "the allowlist wins for its own entries"
        );
        assert!(!p.is_banned(ip("2001:db8:1:3::1"), at(1)), "another /64");
    }

    /// A cracker with a /64 takes a new address for every guess, so no address ever fails twice:
    /// the failures of the whole prefix ban it at the rule's threshold times `ipv6_offenders`.
    #[test]
    fn a_cracker_taking_a_new_ipv6_address_for_every_guess_gets_its_prefix_banned() {
        let p = policy(|_| {});
        let mut banned_at = None;
        for guess in 1..=25u32 {
            let mut cracker = Client::new(&p, &v6(0x1000 + guess));
            let (dropped, events) =
                cracker.exchange(&register("1001", true), 401, at(guess.into()));
            if dropped == Some(DropReason::Banned) || banned_by(&events).is_some() {
                banned_at.get_or_insert(guess);
            }
        }
        assert_eq!(banned_at, Some(20), "5 failures x 4 addresses' worth");
        assert!(p.is_banned(ip(&v6(0x9999)), at(30)));
    }

    #[test]
    fn addresses_rotating_within_an_ipv6_prefix_flood_it_together() {
        let p = policy(|_| {});
        // Forty addresses, sixteen requests each: none floods alone.
        for host in 1..=40 {
            let mut client = Client::new(&p, &v6(host));
            for _ in 0..16 {
                client.exchange(&options("Yealink"), 200, at(0));
            }
        }
        assert!(p.is_banned(ip(&v6(1000)), at(1)));
    }

    #[test]
    fn a_trusted_address_inside_a_banned_prefix_still_gets_through() {
        let p = policy(|_| {});
        let mut phone = Client::new(&p, &v6(0x50));
        phone.register_ok("1001", at(0));
        p.ban_manually(
            format!("{PREFIX}/64").parse::<IpNet>().unwrap(),
            Duration::from_secs(600),
            None,
            at(1),
        );
        assert!(p.is_banned(ip(&v6(0x51)), at(2)));
        assert!(!p.is_banned(ip(&v6(0x50)), at(2)));
        phone.register_ok("1001", at(3));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One forged packet: a REGISTER with credentials on a made-up nonce, a bare one, an
        /// INVITE, a scanner's OPTIONS, garbage; the PBX's answer to it; a pause before it.
        fn forgery() -> impl Strategy<Value = (u8, u8, u16, u64, bool)> {
            (
                0..5u8,
                0..40u8,
                prop::sample::select(vec![200u16, 401, 403, 404, 407, 500]),
                0..30u64,
                any::<bool>(),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// The forger never sees a reply: it cannot answer a nonce sent to the phone. Then
            /// nothing it sends bans or blocks the phone, whose own registration goes on.
            #[test]
            fn no_forged_packets_ban_or_block_a_phone_that_authenticated(
                forgeries in prop::collection::vec(forgery(), 1..300)
            ) {
                let p = policy(|_| {});
                let mut phone = Client::new(&p, OFFICE);
                phone.register_ok("1001", at(0));
                let mut now = at(1);
                for (kind, user, code, pause, same_port) in forgeries {
                    now = now + Duration::from_millis(pause * 100);
                    let user = format!("1{user:03}");
                    let mut other_port = Client::new(&p, OFFICE);
                    let forger = if same_port { &mut phone } else { &mut other_port };
                    let events = match kind {
                        0 => forger.forge(&register(&user, true), code, now).1,
                        1 => forger.forge(&register(&user, false), code, now).1,
                        2 => forger.forge(&invite(&user, true), code, now).1,
                        3 => forger.forge(&options("friendly-scanner"), code, now).1,
                        _ => p.check(b"\x00junk", ip(OFFICE), Transport::Datagram, now).event.into_iter().collect(),
                    };
                    let punished = events.iter().any(|e| matches!(e.action, Action::Banned(_) | Action::UserBlocked { .. }));
                    prop_assert!(!punished, "{:?}", events);
                    prop_assert!(!p.is_banned(ip(OFFICE), now));
                }
                // The phone's own registration still goes through, unblocked.
                let (dropped, _) = phone.exchange(&register("1001", false), 401, now);
                prop_assert_eq!(dropped, None);
                let (dropped, _) = phone.exchange(&register("1001", true), 200, now);
                prop_assert_eq!(dropped, None);
            }
        }
    }
}
