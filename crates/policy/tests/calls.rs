//! The toll-fraud rules through the public API with time passed in: dial rules, call rates and
//! the country filter on `check`, calls followed to their end with `track_call`, and the
//! outbound hook `check_outbound_call`.

use sipguard_policy::geo::{write_country_db, Countries, PrivateSources};
use sipguard_policy::{
    Access, AllowGroup, ClassRule, CountryDb, DialPlan, DropReason, Mode, Policy, PolicyConfig,
    Prefix, Refusal, RuleId, Timestamp, Transport, Verdict,
};
use sipguard_sip::SipView;
use std::time::Duration;

mod support;
use support::{at, ip, policy};

const PHONE: &str = "192.0.2.10";
const STRANGER: &str = "192.0.2.66";
const CARRIER: &str = "198.51.100.9";

fn invite(user: &str, to: &str, call_id: &str) -> String {
    request("INVITE", user, to, call_id, "")
}

fn request(method: &str, user: &str, to: &str, call_id: &str, to_tag: &str) -> String {
    format!(
        "{method} sip:{to}@pbx.example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{call_id}\r\n\
From: <sip:{user}@pbx.example.com>;tag=f1\r\nTo: <sip:{to}@pbx.example.com>{to_tag}\r\nCall-ID: {call_id}\r\n\
CSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

fn response(code: u16, call_id: &str) -> String {
    answer(code, "INVITE", call_id)
}

fn answer(code: u16, method: &str, call_id: &str) -> String {
    format!(
        "SIP/2.0 {code} Whatever\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{call_id}\r\n\
From: <sip:a@pbx.example.com>;tag=f1\r\nTo: <sip:b@pbx.example.com>;tag=t1\r\nCall-ID: {call_id}\r\n\
CSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A UK plan: 9 for an outside line, 00 abroad, 0 national; calls abroad only to France and
/// Germany, +449 premium.
fn uk(config: &mut PolicyConfig) {
    config.allowlist = vec![AllowGroup::new("carrier", [IpNet(CARRIER)])];
    config.dial.plan = DialPlan {
        country_code: "44".into(),
        national_prefix: "0".into(),
        international_prefixes: vec!["00".into()],
        outside_line: "9".into(),
        min_national_digits: 0,
    };
    config.dial.countries = vec!["33".into(), "49".into()];
    config.dial.international.access.others = false;
    config.dial.premium = ClassRule {
        prefixes: vec![Prefix::parse("+449").unwrap()],
        ..ClassRule::open_to(Access::NOBODY)
    };
}

#[allow(non_snake_case)]
fn IpNet(address: &str) -> sipguard_policy::IpNet {
    ip(address).into()
}

/// A policy with the UK plan, the phone's address trusted.
fn uk_policy(tune: impl FnOnce(&mut PolicyConfig)) -> Policy {
    let policy = policy(|config| {
        uk(config);
        tune(config);
    });
    assert!(policy.restore_trust(ip(PHONE), at(86_400), at(0)));
    policy
}

/// What `check` made of `message` from `source`: `Ok` when forwarded, else why not.
fn check(
    policy: &Policy,
    message: &str,
    source: &str,
    now: Timestamp,
) -> Result<Option<Refusal>, (DropReason, Option<Refusal>)> {
    let checked = policy.check(message.as_bytes(), ip(source), Transport::Datagram, now);
    match checked.verdict {
        Verdict::Forward(_) => Ok(checked.refusal),
        Verdict::Drop(reason) => Err((reason, checked.refusal)),
        Verdict::Keepalive => panic!("not a keep-alive"),
    }
}

fn refused(result: Result<Option<Refusal>, (DropReason, Option<Refusal>)>) -> Refusal {
    match result {
        Err((_, Some(refusal))) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn track(policy: &Policy, message: &str, now: Timestamp) {
    policy.track_call(&SipView::parse(message.as_bytes()).unwrap(), now);
}

#[test]
fn a_phone_dialling_a_country_not_listed_is_answered_403_and_a_stranger_gets_silence() {
    let policy = uk_policy(|_| {});
    let phone = refused(check(
        &policy,
        &invite("1001", "00234123456", "c1"),
        PHONE,
        at(1),
    ));
    assert_eq!(phone.rule, RuleId::Dial);
    assert_eq!(phone.class, "international_country");
    assert!(phone.answer, "a phone is owed a 403");
    assert_eq!(phone.destination.as_deref(), Some("+234123456"));
    assert_eq!(phone.username.as_deref(), Some("1001"));
    assert_eq!(
        phone.reason_phrase(),
        "Forbidden by sipguard rule dial international_country"
    );
    let stranger = refused(check(
        &policy,
        &invite("1001", "0033123456", "c2"),
        STRANGER,
        at(1),
    ));
    assert_eq!(stranger.class, "international");
    assert!(!stranger.answer, "an unknown source gets silence");
}

#[test]
fn the_ack_to_sipguards_own_403_is_dropped_and_the_ack_to_the_pbxs_answer_relayed() {
    let policy = uk_policy(|_| {});
    let barred = invite("1001", "00234123456", "c1");
    assert!(refused(check(&policy, &barred, PHONE, at(1))).answer);
    let answered = sipguard_sip::reply(barred.as_bytes(), 403, "x").unwrap();
    let answered = SipView::parse(&answered).unwrap();
    let tag = std::str::from_utf8(answered.to.tag.unwrap()).unwrap();
    let ack = request("ACK", "1001", "00234123456", "c1", &format!(";tag={tag}"));
    assert_eq!(
        check(&policy, &ack, PHONE, at(2)),
        Err((DropReason::Answered, None)),
        "its transaction never reached the PBX"
    );
    // The ACK to a failure the PBX sent itself carries the PBX's tag, and goes to the PBX.
    let ack = request("ACK", "1001", "0033123456", "c2", ";tag=pbx-7f3a");
    assert_eq!(check(&policy, &ack, PHONE, at(2)), Ok(None));
}

#[test]
fn every_class_a_refusal_can_carry_has_a_reason_phrase_naming_it() {
    for (rule, class) in Refusal::CLASSES {
        let refusal = Refusal {
            rule,
            class,
            observed: false,
            answer: true,
            username: None,
            destination: None,
        };
        let phrase = format!("Forbidden by sipguard rule {} {class}", rule.as_str());
        assert_eq!(refusal.reason_phrase(), phrase);
    }
}

#[test]
fn listed_countries_and_national_numbers_go_through_in_every_form() {
    let policy = uk_policy(|_| {});
    for (i, to) in [
        "+33123456",
        "0033123456",
        "90033123456",
        "02079460000",
        "1001",
    ]
    .iter()
    .enumerate()
    {
        let call = format!("ok{i}");
        assert_eq!(
            check(&policy, &invite("1001", to, &call), PHONE, at(1)),
            Ok(None),
            "{to}"
        );
        track(&policy, &answer(200, "BYE", &call), at(2));
    }
}

#[test]
fn premium_is_refused_for_everyone_even_the_allowlist() {
    let policy = uk_policy(|_| {});
    for source in [PHONE, STRANGER, CARRIER] {
        let refusal = refused(check(
            &policy,
            &invite("1001", "09011234567", "p"),
            source,
            at(1),
        ));
        assert_eq!(
            (refusal.rule, refusal.class),
            (RuleId::Dial, "premium"),
            "{source}"
        );
    }
}

#[test]
fn an_allowlist_group_named_for_a_class_may_dial_it_and_the_other_groups_may_not() {
    const OFFICE: &str = "203.0.113.7";
    let policy = uk_policy(|config| {
        config
            .allowlist
            .push(AllowGroup::new("hq", [IpNet(OFFICE)]));
        config.dial.international.access.allowlisted = false;
        config.dial.international.groups = vec!["hq".into()];
    });
    assert_eq!(
        check(&policy, &invite("1001", "0033123456", "a"), OFFICE, at(1)),
        Ok(None)
    );
    let carrier = refused(check(
        &policy,
        &invite("1001", "0033123456", "b"),
        CARRIER,
        at(1),
    ));
    assert_eq!(carrier.class, "international");
    assert!(carrier.answer, "an allowlisted source is told");
}

#[test]
fn observe_mode_lets_the_call_through_and_says_what_it_would_have_refused() {
    let policy = uk_policy(|config| config.dial.rule.mode = Mode::Observe);
    let result = check(&policy, &invite("1001", "09011234567", "p"), PHONE, at(1));
    let refusal = result
        .expect("forwarded")
        .expect("with the refusal it would have made");
    assert!(refusal.observed);
}

#[test]
fn ban_mode_bans_a_stranger_but_never_a_phone() {
    let policy = uk_policy(|config| config.dial.rule.mode = Mode::Ban);
    let _ = check(
        &policy,
        &invite("1001", "09011234567", "p1"),
        STRANGER,
        at(1),
    );
    assert!(policy.is_banned(ip(STRANGER), at(2)));
    let _ = check(&policy, &invite("1001", "09011234567", "p2"), PHONE, at(1));
    assert!(!policy.is_banned(ip(PHONE), at(2)));
}

#[test]
fn calls_past_the_per_user_rate_are_refused_until_the_minute_is_over() {
    let policy = uk_policy(|config| config.calls.per_user_per_minute = 3);
    for i in 0..3 {
        let call = format!("r{i}");
        assert!(check(&policy, &invite("1001", "02079460000", &call), PHONE, at(i)).is_ok());
        track(&policy, &response(486, &call), at(i));
    }
    let refusal = refused(check(
        &policy,
        &invite("1001", "02079460000", "r3"),
        PHONE,
        at(10),
    ));
    assert_eq!(
        (refusal.rule, refusal.class),
        (RuleId::CallRate, "user_per_minute")
    );
    // Another username from the same phone is not held back, nor the same one a minute on.
    assert!(check(&policy, &invite("1002", "02079460000", "r4"), PHONE, at(10)).is_ok());
    assert!(check(&policy, &invite("1001", "02079460000", "r5"), PHONE, at(61)).is_ok());
}

#[test]
fn a_retransmission_and_the_invite_answering_a_challenge_count_as_one_call() {
    let policy = uk_policy(|config| config.calls.per_user_per_minute = 1);
    let first = invite("1001", "02079460000", "once");
    assert!(check(&policy, &first, PHONE, at(0)).is_ok());
    assert!(check(&policy, &first, PHONE, at(0)).is_ok());
    track(&policy, &response(407, "once"), at(0));
    assert!(check(&policy, &first, PHONE, at(1)).is_ok());
}

#[test]
fn concurrent_calls_past_the_limit_wait_for_a_bye_or_the_timeout() {
    let policy = uk_policy(|config| {
        config.calls.concurrent_per_user = 2;
        config.calls.call_timeout = Duration::from_secs(3600);
    });
    for call in ["a", "b"] {
        assert!(check(&policy, &invite("1001", "02079460000", call), PHONE, at(0)).is_ok());
        track(&policy, &response(200, call), at(1));
    }
    let refusal = refused(check(
        &policy,
        &invite("1001", "02079460000", "c"),
        PHONE,
        at(2),
    ));
    assert_eq!(refusal.class, "concurrent");
    // The phone's BYE alone frees nothing (the PBX may refuse it); the PBX's 200 to it ends
    // call a.
    let bye = request("BYE", "1001", "02079460000", "a", ";tag=t1");
    assert!(check(&policy, &bye, PHONE, at(3)).is_ok());
    assert!(check(&policy, &invite("1001", "02079460000", "c"), PHONE, at(3)).is_err());
    track(&policy, &answer(200, "BYE", "a"), at(3));
    assert!(check(&policy, &invite("1001", "02079460000", "c"), PHONE, at(3)).is_ok());
    track(&policy, &response(200, "c"), at(3));
    // A BYE the PBX sends ends a call too.
    track(
        &policy,
        &request("BYE", "1001", "02079460000", "b", ";tag=t1"),
        at(3),
    );
    assert!(check(&policy, &invite("1001", "02079460000", "e"), PHONE, at(3)).is_ok());
    track(&policy, &response(200, "e"), at(3));
    // c and e never get a BYE: the timeout releases them.
    assert!(check(&policy, &invite("1001", "02079460000", "d"), PHONE, at(4)).is_err());
    assert!(check(
        &policy,
        &invite("1001", "02079460000", "d"),
        PHONE,
        at(3605)
    )
    .is_ok());
}

#[test]
fn observed_calls_past_a_limit_go_on_and_still_hold_their_slot() {
    let policy = uk_policy(|config| {
        config.calls.concurrent_per_user = 1;
        config.calls.rule.mode = Mode::Observe;
    });
    assert_eq!(
        check(&policy, &invite("1001", "02079460000", "a"), PHONE, at(0)),
        Ok(None)
    );
    let second = check(&policy, &invite("1001", "02079460000", "b"), PHONE, at(1));
    let refusal = second.expect("forwarded").expect("observed");
    assert!(refusal.observed && refusal.class == "concurrent");
    track(&policy, &response(486, "a"), at(2));
    // b holds the slot now: a third call is past the limit again.
    let third = check(&policy, &invite("1001", "02079460000", "c"), PHONE, at(3));
    assert!(third.expect("forwarded").is_some());
}

#[test]
fn an_unanswered_call_frees_its_slot_with_its_final_answer() {
    let policy = uk_policy(|config| config.calls.concurrent_per_user = 1);
    assert!(check(&policy, &invite("1001", "02079460000", "a"), PHONE, at(0)).is_ok());
    assert!(check(&policy, &invite("1001", "02079460000", "b"), PHONE, at(1)).is_err());
    track(&policy, &response(486, "a"), at(2));
    assert!(check(&policy, &invite("1001", "02079460000", "b"), PHONE, at(2)).is_ok());
}

#[test]
fn a_reinvite_in_a_call_is_no_new_call() {
    let policy = uk_policy(|config| config.calls.per_user_per_minute = 1);
    assert!(check(&policy, &invite("1001", "02079460000", "a"), PHONE, at(0)).is_ok());
    let reinvite = request("INVITE", "1001", "02079460000", "a2", ";tag=t1");
    assert!(check(&policy, &reinvite, PHONE, at(1)).is_ok());
}

#[test]
fn consecutive_calls_to_one_international_prefix_are_refused_past_the_limit() {
    let policy = uk_policy(|config| {
        config.calls.same_prefix = 2;
        config.calls.per_user_per_minute = 0;
    });
    for i in 0..2 {
        let call = format!("s{i}");
        assert!(check(
            &policy,
            &invite("1001", &format!("003312345{i}"), &call),
            PHONE,
            at(i)
        )
        .is_ok());
        track(&policy, &response(486, &call), at(i));
    }
    let refusal = refused(check(
        &policy,
        &invite("1001", "0033123459", "s9"),
        PHONE,
        at(5),
    ));
    assert_eq!(refusal.class, "same_prefix");
    // A call elsewhere starts the run again.
    assert!(check(&policy, &invite("1001", "0049301234", "g"), PHONE, at(6)).is_ok());
    track(&policy, &response(486, "g"), at(6));
    assert!(check(&policy, &invite("1001", "0033123459", "s9"), PHONE, at(7)).is_ok());
}

#[test]
fn the_source_rate_counts_every_call_but_spares_the_allowlist() {
    let policy = uk_policy(|config| config.calls.per_source_per_minute = 2);
    for i in 0..2 {
        assert!(check(
            &policy,
            &invite("x", "1001", &format!("i{i}")),
            STRANGER,
            at(0)
        )
        .is_ok());
    }
    let refusal = refused(check(&policy, &invite("x", "1001", "i3"), STRANGER, at(0)));
    assert_eq!(refusal.class, "source_per_minute");
    for i in 0..5 {
        assert!(check(
            &policy,
            &invite("x", "1001", &format!("k{i}")),
            CARRIER,
            at(0)
        )
        .is_ok());
    }
}

fn geo_db(country_of_phone: &str, epoch: u64) -> CountryDb {
    let nets = [
        ("192.0.2.0/26".parse().unwrap(), country_of_phone),
        ("198.51.100.0/24".parse().unwrap(), "NG"),
        ("192.0.2.64/26".parse().unwrap(), "NG"),
    ];
    CountryDb::from_bytes(write_country_db(&nets, epoch)).unwrap()
}

#[test]
fn registrations_from_a_denied_country_are_dropped_unless_allowlisted_and_a_new_database_takes() {
    let geo = |config: &mut PolicyConfig, db: CountryDb| {
        config.geo.db = Some(db);
        config.geo.register = Countries::Except(vec![*b"NG"]);
        config.geo.private = PrivateSources::Lookup;
    };
    let policy = uk_policy(|config| geo(config, geo_db("GB", 1)));
    let register = request("REGISTER", "1001", "1001", "reg", "");
    assert_eq!(check(&policy, &register, PHONE, at(0)), Ok(None));
    let refusal = refused(check(&policy, &register, STRANGER, at(0)));
    assert_eq!((refusal.rule, refusal.class), (RuleId::Country, "register"));
    assert_eq!(refusal.destination.as_deref(), Some("NG"));
    assert_eq!(
        check(&policy, &register, CARRIER, at(0)),
        Ok(None),
        "the allowlist wins"
    );
    // Other requests are not looked up.
    assert!(check(
        &policy,
        &request("OPTIONS", "x", "1001", "o", ""),
        STRANGER,
        at(0)
    )
    .is_ok());

    let mut config = policy.config();
    geo(&mut config, geo_db("NG", 2));
    policy.reconfigure(config).unwrap();
    assert!(check(&policy, &register, PHONE, at(1)).is_err());
}

#[test]
fn calls_from_a_denied_country_are_refused_with_a_403_for_a_phone() {
    let policy = uk_policy(|config| {
        config.geo.db = Some(geo_db("NG", 1));
        config.geo.invite = Countries::Only(vec![*b"GB"]);
    });
    let refusal = refused(check(&policy, &invite("1001", "1002", "c"), PHONE, at(0)));
    assert_eq!((refusal.rule, refusal.class), (RuleId::Country, "invite"));
    assert!(refusal.answer);
}

#[test]
fn the_pbx_calling_out_is_held_to_the_dial_rules_and_the_users_rates() {
    let policy = uk_policy(|config| {
        config.calls.per_user_per_minute = 2;
        config.dial.international.access.pbx = false;
    });
    let outbound = |to: &str, call: &str| {
        let text = invite("1001", to, call);
        policy.check_outbound_call(&SipView::parse(text.as_bytes()).unwrap(), at(0))
    };
    let premium = outbound("+449012345", "o1");
    assert!(!premium.allowed);
    assert_eq!(premium.refusal.unwrap().class, "premium");
    assert!(!outbound("+33123456", "o2").allowed);
    assert!(outbound("+442079460000", "o3").allowed);
    assert!(outbound("+442079460000", "o4").allowed);
    let third = outbound("+442079460000", "o5");
    assert!(!third.allowed);
    assert_eq!(third.refusal.unwrap().rule, RuleId::CallRate);
}
