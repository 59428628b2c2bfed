//! Toll fraud over real sockets: phones (the tests' own UA, registered with Kamailio through
//! sipguard, so their addresses are trusted) and strangers place calls through sipguard; the
//! stand-in PBX answers a call to any number 200 as a carrier would (pbx.cfg). What reached the
//! PBX is read from its log by the client's top Via host.
//!
//! The dial rules (a UK plan: 9 for a line, 00 or 011 abroad, 0 national; abroad only to France;
//! +449 premium) answer a phone's barred call with a 403 naming the rule and keep it from the
//! PBX, and give a stranger silence; the call rates refuse a phone past its limits, with a log
//! line saying why, until a call ends; the country filter keeps registrations from a denied
//! country (loopback addresses placed by a database the test writes) from the PBX, lets an
//! allowlisted one through, and follows a new database on SIGHUP. Over TCP the 403 goes back on
//! the phone's own connection, which stays up.

use crate::attacks::from_client;
use crate::support::{
    call_id, password, poll_until, Daemon, DaemonConfig, Kamailio, Registration, Sipguard, Ua,
};
use anyhow::{ensure, Context};
use sipguard_policy::geo::write_country_db;
use sipguard_policy::{DialPlan, Prefix};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

/// How long a final answer across loopback may take (retransmitting as a phone does).
const ANSWER: Duration = Duration::from_secs(5);
/// How long a client waits for an answer that must not come.
const SILENCE: Duration = Duration::from_millis(1500);
/// How long a reload may take to show.
const SETTLE: Duration = Duration::from_secs(20);

/// A phone at `ip`, registered as `user` through `guard`: trusted from then on.
fn phone(guard: SocketAddr, ip: Ipv4Addr, user: &str) -> anyhow::Result<Ua> {
    let mut ua = Ua::udp(SocketAddr::from((ip, 0)), guard, user, password(user))?;
    let registered = ua.register(ANSWER)?;
    ensure!(
        matches!(registered, Registration::Registered),
        "{user} at {ip}: {registered:?}"
    );
    Ok(ua)
}

/// What became of one call: the final answer's status and reason, and the call's identity to
/// hang it up with.
struct Placed {
    status: Option<u16>,
    reason: String,
    to: String,
    call_id: String,
    to_tag: Option<String>,
}

/// Places a call to `to`, waiting `wait` for its final answer (retransmitting only when
/// `retransmit`, as a phone does; a silent drop is then told by no answer at all).
fn call(ua: &mut Ua, to: &str, wait: Duration, retransmit: bool) -> anyhow::Result<Placed> {
    let call_id = call_id("dial");
    let invite = ua.request("INVITE", Some(to), &call_id, 1, &[]);
    let answer = ua.transact(&invite, retransmit, wait)?;
    Ok(Placed {
        status: answer.as_ref().map(|a| a.status),
        reason: answer
            .as_ref()
            .map_or(String::new(), |a| a.reason().to_owned()),
        to_tag: answer.as_ref().and_then(|a| a.to_tag()).map(str::to_owned),
        to: to.to_owned(),
        call_id,
    })
}

/// Hangs up a connected call; the PBX's 200 to the BYE ends it for sipguard.
fn hang_up(ua: &mut Ua, placed: &Placed) -> anyhow::Result<()> {
    let tag = placed
        .to_tag
        .as_deref()
        .context("no To tag on the answer")?;
    let bye = ua
        .request("BYE", Some(&placed.to), &placed.call_id, 2, &[])
        .with_to_tag(tag);
    let answer = ua.transact(&bye, true, ANSWER)?;
    ensure!(
        answer.as_ref().map(|a| a.status) == Some(200),
        "BYE to {} not answered 200: {:?}",
        placed.to,
        answer.map(|a| a.status)
    );
    Ok(())
}

/// The numbers the PBX was asked to call by the client at `host`.
fn dialled_at_pbx(pbx: &Kamailio, host: Ipv4Addr) -> Vec<String> {
    from_client(pbx, host)
        .into_iter()
        .filter(|r| r.method == "INVITE")
        .filter_map(|r| r.to_user)
        .collect()
}

#[test]
fn a_phone_reaches_home_and_listed_countries_and_gets_a_403_for_the_rest_in_every_dialled_form(
) -> anyhow::Result<()> {
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 150);
    const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 151);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        let dial = &mut config.policy.dial;
        dial.plan = DialPlan {
            country_code: "44".into(),
            national_prefix: "0".into(),
            international_prefixes: vec!["00".into(), "011".into()],
            outside_line: "9".into(),
            min_national_digits: 0,
        };
        dial.countries = vec!["33".into()];
        dial.international.access.others = false;
        dial.premium.prefixes = vec![Prefix::parse("+449").unwrap()];
    })?;
    let mut ua = phone(guard.addr(), PHONE, "1001")?;

    let connects = [
        "02079460000",
        "+33123456789",
        "0033123456789",
        "901133123456789",
    ];
    for to in connects {
        let placed = call(&mut ua, to, ANSWER, true)?;
        ensure!(
            placed.status == Some(200),
            "{to}: {:?} {}",
            placed.status,
            placed.reason
        );
        hang_up(&mut ua, &placed)?;
    }
    let barred = [
        ("+234123456789", "dial international_country"),
        ("00234123456789", "dial international_country"),
        ("9011234123456789", "dial international_country"),
        ("09012345678", "dial premium"),
    ];
    let mut last_barred = None;
    for (to, rule) in barred {
        let placed = call(&mut ua, to, ANSWER, true)?;
        ensure!(
            placed.status == Some(403)
                && placed.reason == format!("Forbidden by sipguard rule {rule}"),
            "{to}: {:?} {:?}",
            placed.status,
            placed.reason
        );
        last_barred = Some(placed);
    }
    // The phone's ACK to sipguard's 403 ends a transaction the PBX never saw: dropped.
    let barred_call = last_barred.context("no barred call placed")?;
    let tag = barred_call
        .to_tag
        .as_deref()
        .context("no To tag on the 403")?;
    let ack = ua.request("ACK", Some(&barred_call.to), &barred_call.call_id, 1, &[]);
    ua.send(&ack.with_to_tag(tag))?;
    poll_until("the ACK to the 403 dropped as answered", ANSWER, || {
        let dropped = guard.counter(
            "sipguard_packets_dropped_total",
            &["transport=\"udp\"", "reason=\"answered\""],
        );
        (dropped == 1.0).then_some(())
    })?;
    ensure!(
        !from_client(&pbx, PHONE)
            .iter()
            .any(|r| r.call_id == barred_call.call_id),
        "a request of the barred call reached the PBX"
    );
    let reached = dialled_at_pbx(&pbx, PHONE);
    ensure!(
        reached == connects,
        "the PBX was asked for {reached:?}, not just {connects:?}"
    );

    // A source that never authenticated: premium and abroad are dropped in silence, a national
    // call goes through.
    let mut stranger = Ua::udp(SocketAddr::from((STRANGER, 0)), guard.addr(), "1002", "x")?;
    for to in ["09012345678", "+33123456789"] {
        let placed = call(&mut stranger, to, SILENCE, false)?;
        ensure!(placed.status.is_none(), "{to} answered {:?}", placed.status);
    }
    let national = call(&mut stranger, "02079460001", ANSWER, true)?;
    ensure!(national.status == Some(200), "{:?}", national.status);
    let reached = dialled_at_pbx(&pbx, STRANGER);
    ensure!(reached == ["02079460001"], "{reached:?}");

    let refused = |class: &str| {
        guard.counter(
            "sipguard_call_refusals_total",
            &[
                "rule=\"dial\"",
                &format!("class=\"{class}\""),
                "action=\"refused\"",
            ],
        )
    };
    ensure!(
        refused("international_country") == 3.0,
        "{}",
        refused("international_country")
    );
    ensure!(refused("premium") == 2.0, "{}", refused("premium"));
    ensure!(
        refused("international") == 1.0,
        "{}",
        refused("international")
    );
    guard.stop()
}

#[test]
fn a_phone_past_its_call_rate_or_concurrency_is_refused_until_a_call_ends_and_the_log_says_why(
) -> anyhow::Result<()> {
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 160);
    let pbx = Kamailio::start()?;
    let dir = tempfile::tempdir()?;
    let yaml = "dial:\n  plan: {country_code: \"44\", national_prefix: \"0\"}\n\
                call_rates: {per_user_per_minute: 3, concurrent_per_user: 2}\n";
    let guard = Daemon::start(&DaemonConfig::in_dir(dir.path(), yaml, pbx.addr())?)?;
    let mut ua = phone(guard.addr(), PHONE, "1001")?;

    let first = call(&mut ua, "02079460001", ANSWER, true)?;
    let second = call(&mut ua, "02079460002", ANSWER, true)?;
    ensure!(first.status == Some(200) && second.status == Some(200));
    let third = call(&mut ua, "02079460003", ANSWER, true)?;
    ensure!(
        third.status == Some(403) && third.reason.ends_with("call_rate concurrent"),
        "{:?} {}",
        third.status,
        third.reason
    );
    hang_up(&mut ua, &first)?;
    let fourth = call(&mut ua, "02079460004", ANSWER, true)?;
    ensure!(
        fourth.status == Some(200),
        "after a BYE: {:?} {}",
        fourth.status,
        fourth.reason
    );
    hang_up(&mut ua, &second)?;
    // Three calls this minute already: the next is one too many.
    let fifth = call(&mut ua, "02079460005", ANSWER, true)?;
    ensure!(
        fifth.status == Some(403) && fifth.reason.ends_with("call_rate user_per_minute"),
        "{:?} {}",
        fifth.status,
        fifth.reason
    );
    let line = guard.wait_for_log("user_per_minute", ANSWER)?;
    for part in [
        "call rule refused a request",
        "127.0.0.160",
        "1001",
        "+442079460005",
    ] {
        ensure!(
            line.contains(part),
            "{part} missing from the log line: {line}"
        );
    }
    let reached = dialled_at_pbx(&pbx, PHONE);
    ensure!(
        reached == ["02079460001", "02079460002", "02079460004"],
        "{reached:?}"
    );
    Ok(())
}

#[test]
fn registrations_from_a_denied_country_never_reach_the_pbx_unless_allowlisted_and_a_new_database_takes_on_sighup(
) -> anyhow::Result<()> {
    const DENIED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 170);
    const LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 171);
    const ADMITTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 172);
    let pbx = Kamailio::start()?;
    let dir = tempfile::tempdir()?;
    let database = |denied: Ipv4Addr, admitted: Ipv4Addr, epoch| {
        let host = |ip: Ipv4Addr| ipnet::IpNet::from(std::net::IpAddr::from(ip));
        let nets = [
            (host(denied), "NG"),
            (host(LISTED), "NG"),
            (host(admitted), "FR"),
        ];
        std::fs::write(dir.path().join("geo.mmdb"), write_country_db(&nets, epoch))
    };
    database(DENIED, ADMITTED, 1)?;
    std::fs::write(
        dir.path().join("allowlist.yaml"),
        format!("offices:\n  - name: hq\n    cidrs: [{LISTED}/32]\n"),
    )?;
    // Loopback is private: `lookup` places it by the database like a public address.
    let yaml = "allowlist: {file: allowlist.yaml}\n\
                country_filter: {database: geo.mmdb, register: {except: [NG]}, private: lookup}\n";
    let mut guard = Daemon::start(&DaemonConfig::in_dir(dir.path(), yaml, pbx.addr())?)?;
    let sip = guard.addr();
    let register = |ip: Ipv4Addr, user: &str, wait: Duration| -> anyhow::Result<Registration> {
        Ua::udp(SocketAddr::from((ip, 0)), sip, user, password(user))?.register(wait)
    };

    let denied = register(DENIED, "1001", SILENCE * 2)?;
    ensure!(matches!(denied, Registration::Unanswered), "{denied:?}");
    for (ip, user) in [(LISTED, "1002"), (ADMITTED, "1003")] {
        let answer = register(ip, user, ANSWER)?;
        ensure!(
            matches!(answer, Registration::Registered),
            "{ip}: {answer:?}"
        );
    }
    ensure!(
        from_client(&pbx, DENIED).is_empty(),
        "a REGISTER from the denied country reached the PBX"
    );
    guard.wait_for_log("rule=\"country\"", ANSWER)?;

    // The database now places the two the other way round.
    database(ADMITTED, DENIED, 2)?;
    guard.hangup();
    poll_until(
        "the new database to admit the first address",
        SETTLE,
        || {
            matches!(
                register(DENIED, "1001", Duration::from_millis(800)),
                Ok(Registration::Registered)
            )
            .then_some(())
        },
    )?;
    // It registered before, so it is a phone sipguard trusts: it gets a 403, not silence.
    let before = from_client(&pbx, ADMITTED).len();
    let now_denied = register(ADMITTED, "1003", ANSWER)?;
    ensure!(
        matches!(now_denied, Registration::Refused(403)),
        "{now_denied:?}"
    );
    ensure!(
        from_client(&pbx, ADMITTED).len() == before,
        "it reached the PBX"
    );
    Ok(())
}

#[test]
fn a_phone_over_tcp_gets_its_403_on_its_own_connection() -> anyhow::Result<()> {
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 155);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        config.policy.dial.premium.prefixes = vec![Prefix::parse("+449").unwrap()];
    })?;
    let mut ua = Ua::tcp(PHONE.into(), guard.tcp_addr(), "1001", password("1001"))?;
    let registered = ua.register(ANSWER)?;
    ensure!(
        matches!(registered, Registration::Registered),
        "{registered:?}"
    );
    let barred = call(&mut ua, "+449012345678", ANSWER, false)?;
    ensure!(
        barred.status == Some(403) && barred.reason == "Forbidden by sipguard rule dial premium",
        "{:?} {}",
        barred.status,
        barred.reason
    );
    // The connection stays up: the next call goes through on it.
    let placed = call(&mut ua, "+442079460000", ANSWER, false)?;
    ensure!(
        placed.status == Some(200),
        "{:?} {}",
        placed.status,
        placed.reason
    );
    ensure!(dialled_at_pbx(&pbx, PHONE) == ["+442079460000"]);
    guard.stop()
}
