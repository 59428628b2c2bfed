//! Messages from TCP and TLS connections: the same pipeline as datagrams, except that the
//! source address is proven, so trust earned by authenticating does not shield it from a ban
//! for a scanner's signature (it still does from one for a burst of requests).

use sipguard_policy::{
    Action, AllowGroup, AllowlistMode, DropReason, Exchange, Policy, RuleId, Timestamp, Transport,
    Verdict,
};
use sipguard_sip::SipView;
use std::net::IpAddr;
use std::time::Duration;

mod support;
use support::{at, ip, policy};

const OFFICE: &str = "203.0.113.7";
const CARRIER: &str = "198.51.100.9";

fn request(method: &str, cseq: u32, user_agent: &str, credentials: bool) -> String {
    let auth = if credentials {
        "Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"n\", uri=\"sip:pbx\", response=\"r\"\r\n"
    } else {
        ""
    };
    format!(
        "{method} sip:pbx.example.com SIP/2.0\r\nVia: SIP/2.0/TCP 203.0.113.7;branch=z9hG4bK{cseq}\r\n\
         From: <sip:1001@pbx.example.com>;tag=f\r\nTo: <sip:1001@pbx.example.com>\r\n\
         Call-ID: c{cseq}\r\nCSeq: {cseq} {method}\r\nUser-Agent: {user_agent}\r\n{auth}\
         Content-Length: 0\r\n\r\n"
    )
}

/// Registers 1001 from `source` over a stream with credentials and a 200: the source is trusted.
fn authenticate(policy: &Policy, source: IpAddr, now: Timestamp) {
    let text = request("REGISTER", 1, "Yealink SIP-T46S", true);
    let checked = policy.check(text.as_bytes(), source, Transport::Stream, now);
    let Verdict::Forward(_) = checked.verdict else {
        panic!("a phone's REGISTER is forwarded");
    };
    let mut pending = Exchange::default();
    pending.remember(checked.memo.unwrap());
    let ok = "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 203.0.113.7;branch=z9hG4bK1\r\n\
              From: <sip:1001@pbx.example.com>;tag=f\r\nTo: <sip:1001@pbx.example.com>;tag=t\r\n\
              Call-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
    let response = SipView::parse(ok.as_bytes()).unwrap();
    let _ = policy.observe_response(source, &response, &mut pending, now);
}

#[test]
fn scanner_over_a_stream_bans_even_a_trusted_source() {
    let p = policy(|_| {});
    authenticate(&p, ip(OFFICE), at(0));
    let scan = request("OPTIONS", 2, "friendly-scanner", false);
    let checked = p.check(scan.as_bytes(), ip(OFFICE), Transport::Stream, at(1));
    assert_eq!(checked.verdict, Verdict::Drop(DropReason::Scanner));
    let event = checked.event.expect("a rule hit");
    assert!(matches!(event.action, Action::Banned(_)), "{event:?}");
    assert_eq!(event.rule, RuleId::Scanner);
    assert!(p.is_banned(ip(OFFICE), at(2)));
}

#[test]
fn the_same_scanner_datagram_from_a_trusted_source_only_drops() {
    let p = policy(|_| {});
    authenticate(&p, ip(OFFICE), at(0));
    let scan = request("OPTIONS", 2, "friendly-scanner", false);
    let checked = p.check(scan.as_bytes(), ip(OFFICE), Transport::Datagram, at(1));
    assert_eq!(checked.verdict, Verdict::Drop(DropReason::Scanner));
    assert!(!p.is_banned(ip(OFFICE), at(2)));
}

#[test]
fn a_burst_over_a_stream_from_a_trusted_phone_is_dropped_without_ban() {
    // Sixty BLF keys at boot pass; beyond the trusted threshold requests are dropped, and the
    // phone is still not banned.
    let p = policy(|_| {});
    authenticate(&p, ip(OFFICE), at(0));
    let subscribe = request("SUBSCRIBE", 3, "Yealink", false);
    let mut dropped = Vec::new();
    for _ in 0..600 {
        let checked = p.check(subscribe.as_bytes(), ip(OFFICE), Transport::Stream, at(1));
        dropped.push(checked.verdict == Verdict::Drop(DropReason::Flood));
    }
    assert!(
        !dropped[..120].contains(&true),
        "a boot's burst was dropped"
    );
    assert!(dropped.contains(&true), "the flood rule tripped");
    assert!(!p.is_banned(ip(OFFICE), at(1)));
}

#[test]
fn a_flood_over_a_stream_from_an_untrusted_source_bans_it() {
    let p = policy(|_| {});
    let options = request("OPTIONS", 3, "Yealink", false);
    for _ in 0..70 {
        let _ = p.check(options.as_bytes(), ip(OFFICE), Transport::Stream, at(1));
    }
    assert!(p.is_banned(ip(OFFICE), at(1)));
}

#[test]
fn allowlisted_sources_are_never_banned_over_a_stream() {
    let p = policy(|c| c.allowlist = vec![AllowGroup::new("listed", [ip(CARRIER).into()])]);
    let scan = request("OPTIONS", 2, "friendly-scanner", false);
    let checked = p.check(scan.as_bytes(), ip(CARRIER), Transport::Stream, at(1));
    assert_eq!(checked.verdict, Verdict::Drop(DropReason::Scanner));
    assert!(!p.is_banned(ip(CARRIER), at(2)));
}

#[test]
fn check_source_refuses_banned_denied_and_unlisted_sources() {
    let p = policy(|c| {
        c.deny = vec!["192.0.2.0/24".parse().unwrap()];
        c.allowlist = vec![AllowGroup::new("listed", [ip(CARRIER).into()])];
        c.allowlist_mode = AllowlistMode::Enforce;
    });
    assert_eq!(p.check_source(ip(CARRIER), at(0)), Ok(()));
    assert_eq!(
        p.check_source(ip("192.0.2.9"), at(0)),
        Err(DropReason::Denied)
    );
    assert_eq!(
        p.check_source(ip(OFFICE), at(0)),
        Err(DropReason::NotAllowlisted)
    );
    let open = policy(|_| {});
    open.ban_manually(ip(OFFICE), Duration::from_secs(60), None, at(0))
        .unwrap();
    assert_eq!(
        open.check_source(ip(OFFICE), at(1)),
        Err(DropReason::Banned)
    );
}
