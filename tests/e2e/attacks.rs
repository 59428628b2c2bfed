//! Attacks over real sockets: sipvicious and hand-made sweeps against sipguard in front of the
//! Kamailio stand-in PBX, and the innocent bystanders sipguard must not hurt (an office NAT with
//! one stale password, an allowlisted carrier, a phone whose address a scanner spoofs, a phone
//! whose wrong password is retransmitted).
//!
//! Throughout each attack a legitimate phone keeps re-registering through the same sipguard
//! ([`Phone`]) and must never fail. What reached the PBX is read from its log (one line per
//! request, pbx.cfg), keyed by the top Via host: every client here writes its own address there
//! (sipvicious is given `-x`), while behind sipguard all of them arrive from loopback upstream
//! sockets. Bans are read from the policy handle of the in-process sipguard.
//!
//! The default flood rule (more than 64 requests in 2 s from an address that has not
//! authenticated) applies to all of this traffic and is left on: every attacker is paced under
//! it (sipvicious with `-t`, the hand-made sweep by waiting for each answer), so the rule under
//! test is the one that trips. Real sipvicious tools are banned by their From tag, the scanner
//! signature they write in every mode; the failure rules are exercised by the hand-written
//! crackers of detection.rs and by svcrack with that tag edited out.

use crate::support::{
    call_id, free_udp_addr, password, poll_until, Kamailio, PbxRequest, Phone, SipVicious,
    Sipguard, Sipp, Tool,
};
use anyhow::{ensure, Context};
use sipguard_policy::{AllowGroup, AllowlistMode, Ban, RuleId};
use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a condition the test causes (a ban, a registration) may take to show.
const SETTLE: Duration = Duration::from_secs(20);
/// How long a client waits for an answer that must not come (sipguard drops silently); a
/// forwarded request is answered across loopback in milliseconds.
const SILENCE: Duration = Duration::from_millis(1500);
/// A request forwarded just before a ban was issued still reaches the PBX: on loopback within
/// microseconds, but Kamailio timestamps it only when a worker gets to it, which on two busy
/// cores can take a while. Arrivals later than this after the ban are leaks.
const IN_FLIGHT: Duration = Duration::from_secs(1);

/// The requests that reached the PBX from the client at `host` (by its top Via).
pub(crate) fn from_client(pbx: &Kamailio, host: Ipv4Addr) -> Vec<PbxRequest> {
    let host = host.to_string();
    pbx.requests()
        .into_iter()
        .filter(|r| r.via_host == host)
        .collect()
}

/// The distinct transactions among `requests` (retransmissions are counted once).
fn transactions<'a>(requests: impl IntoIterator<Item = &'a PbxRequest>) -> usize {
    requests
        .into_iter()
        .map(PbxRequest::transaction)
        .collect::<HashSet<_>>()
        .len()
}

/// When a first-offence ban was issued: its expiry less the rule's ban time.
pub(crate) fn issued(ban: &Ban, ban_for: Duration) -> anyhow::Result<SystemTime> {
    ensure!(ban.offence == 1, "expected a first offence: {ban:?}");
    Ok(UNIX_EPOCH + Duration::from_millis(ban.expires.as_millis()) - ban_for)
}

/// Waits until `source` is banned.
pub(crate) fn banned(guard: &Sipguard, source: Ipv4Addr) -> anyhow::Result<Ban> {
    poll_until(&format!("{source} to be banned"), SETTLE, || {
        guard.ban(source.into())
    })
}

/// Waits until `source`'s ban has dropped its packets for `IN_FLIGHT` after it was issued (the
/// ban's last sighting moves with every packet it drops), so that anything leaking past the ban
/// would have reached the PBX after `issued + IN_FLIGHT`.
pub(crate) fn dropped_after_ban(
    guard: &Sipguard,
    source: Ipv4Addr,
    issued: SystemTime,
) -> anyhow::Result<()> {
    let until = issued + IN_FLIGHT;
    poll_until(
        &format!("{source} to keep sending after its ban"),
        SETTLE,
        || {
            let ban = guard.ban(source.into())?;
            let last = UNIX_EPOCH + Duration::from_millis(ban.last_seen.as_millis());
            (last > until).then_some(())
        },
    )
}

/// That nothing from `requests` reached the PBX after the ban was issued (plus `IN_FLIGHT`).
pub(crate) fn nothing_after(requests: &[PbxRequest], issued: SystemTime) -> anyhow::Result<()> {
    let late = requests
        .iter()
        .filter(|r| r.at > issued + IN_FLIGHT)
        .collect::<Vec<_>>();
    ensure!(
        late.is_empty(),
        "{} requests reached the PBX more than {IN_FLIGHT:?} after the ban was issued at \
         {issued:?}:\n{late:#?}",
        late.len()
    );
    Ok(())
}

/// Waits for `phone` to register at least once more after `since` successes (so it registered
/// while the attack was on), then stops it: an error if any of its registrations failed.
pub(crate) fn kept_registering(phone: Phone, since: usize) -> anyhow::Result<()> {
    poll_until("the phone to register again", SETTLE, || {
        (phone.successes() > since || phone.failures() > 0).then_some(())
    })?;
    phone.stop().map(drop)
}

/// A request for `user` from the socket at `from`, as a simple phone would send it.
pub(crate) fn request(
    method: &str,
    from: SocketAddr,
    user: &str,
    call_id: &str,
    user_agent: &str,
) -> String {
    format!(
        "{method} sip:127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@127.0.0.1>;tag=e2e\r\n\
         To: <sip:{user}@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:{user}@{from}>\r\n\
         Expires: 60\r\n\
         User-Agent: {user_agent}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Waits up to `within` for the answer to `call_id` on `socket`; `None` if none came.
pub(crate) fn answer(
    socket: &UdpSocket,
    call_id: &str,
    within: Duration,
) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left))?;
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.contains(call_id) {
                    return Ok(Some(text.into_owned()));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
}

/// Sends one request from `socket` to `to` and waits up to `within` for its answer.
pub(crate) fn ask(
    socket: &UdpSocket,
    to: SocketAddr,
    method: &str,
    user: &str,
    user_agent: &str,
    within: Duration,
) -> anyhow::Result<(String, Option<String>)> {
    let id = call_id(&method.to_ascii_lowercase());
    let text = request(method, socket.local_addr()?, user, &id, user_agent);
    socket.send_to(text.as_bytes(), to)?;
    let reply = answer(socket, &id, within)?;
    Ok((id, reply))
}

#[test]
fn svmap_finds_nothing_and_its_source_is_banned() -> anyhow::Result<()> {
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);
    const CONTROL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 61);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 60);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1001")?;
    let before = phone.successes();

    let scan = SipVicious::new(Tool::Svmap, SCANNER, guard.addr(), pbx.dir()).run()?;
    scan.ensure_ran()?;
    ensure!(
        scan.results().is_empty(),
        "svmap found a SIP device behind sipguard:\n{}",
        scan.output()
    );
    let ban = guard
        .ban(SCANNER.into())
        .with_context(|| format!("svmap's address is not banned\n{}", scan.output()))?;
    assert_eq!(ban.rule, RuleId::Scanner, "{ban:?}");
    let leaked = from_client(&pbx, SCANNER);
    ensure!(leaked.is_empty(), "svmap reached the PBX: {leaked:#?}");

    // The same scan straight at the PBX finds it: the result parsing above can see a device.
    let direct = SipVicious::new(Tool::Svmap, CONTROL, pbx.addr(), pbx.dir()).run()?;
    direct.ensure_ran()?;
    ensure!(
        direct
            .results()
            .iter()
            .any(|row| row.first() == Some(&pbx.addr().to_string())),
        "svmap straight at the PBX found no device:\n{}",
        direct.output()
    );
    kept_registering(phone, before)?;
    guard.stop()
}

/// How long a challenged username has to be followed up with credentials on the same Call-ID
/// before the enumeration rule counts it as probed (the policy's `FOLLOW_UP`, docs/design.md
/// section 3).
const FOLLOW_UP: Duration = Duration::from_secs(5);

/// What a [`register_sweep`] came to.
struct Sweep {
    /// REGISTERs sent.
    sent: usize,
    /// When each answered REGISTER's answer came, in order.
    answers: Vec<Instant>,
}

/// A REGISTER sweep of `extensions` from `socket` with a neutral User-Agent, as a paced scanner
/// sends it: one request at a time, the next when the answer came and at least `PACE` passed,
/// giving up after `GIVE_UP` unanswered requests in a row.
fn register_sweep(
    socket: &UdpSocket,
    to: SocketAddr,
    extensions: std::ops::RangeInclusive<u32>,
) -> anyhow::Result<Sweep> {
    const GIVE_UP: usize = 4;
    let mut sweep = Sweep {
        sent: 0,
        answers: Vec::new(),
    };
    let mut silent = 0;
    for extension in extensions {
        let started = Instant::now();
        let (id, reply) = ask(
            socket,
            to,
            "REGISTER",
            &extension.to_string(),
            "sipguard-e2e-sweep",
            Duration::from_millis(500),
        )?;
        sweep.sent += 1;
        match reply {
            Some(_) => {
                sweep.answers.push(Instant::now());
                silent = 0;
                // Pacing: anything arriving meanwhile would be a stray answer, read and ignored.
                answer(socket, &id, SWEEP_PACE.saturating_sub(started.elapsed()))?;
            }
            None => {
                silent += 1;
                if silent == GIVE_UP {
                    break;
                }
            }
        }
    }
    Ok(sweep)
}

/// The hand-made sweep's pace: five extensions a second, under the flood rule's 64 requests in
/// 2 s.
const SWEEP_PACE: Duration = Duration::from_millis(200);

/// Each extension is challenged, as the PBX challenges unknown users too, and the sweep never
/// answers a challenge. A phone answers its challenge within milliseconds, so a challenge counts
/// as a probe only once `FOLLOW_UP` passed without credentials on its Call-ID: the sweep is
/// banned as the tenth challenge goes unanswered that long, and nothing of it reaches the PBX
/// after that.
#[test]
fn neutral_register_sweep_is_banned_for_enumeration_five_seconds_after_its_tenth_challenge(
) -> anyhow::Result<()> {
    const SWEEP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 23);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 65);
    // How late the ban may be, beyond the sweep's next answer after `FOLLOW_UP` (the rule judges
    // the challenges waiting for a follow-up when the source's next one comes), or early, by
    // the time the tenth answer took to reach the sweep after the policy saw it.
    const SLACK: Duration = Duration::from_millis(500);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let rule = guard.policy().config().enumeration;
    let threshold = usize::try_from(rule.threshold)?;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1003")?;
    let before = phone.successes();

    let sweeper = UdpSocket::bind((SWEEP, 0))?;
    let Sweep { sent, answers } = register_sweep(&sweeper, guard.addr(), 100..=3000)?;

    let ban = banned(&guard, SWEEP)?;
    assert_eq!(ban.rule, RuleId::Enumeration, "{ban:?}");
    assert_eq!(ban.evidence, rule.threshold, "{ban:?}");
    let answered = answers.len();
    let most = threshold + usize::try_from(FOLLOW_UP.as_millis() / SWEEP_PACE.as_millis())? + 1;
    ensure!(
        (threshold + 1..=most).contains(&answered),
        "{answered} of the sweep's {sent} REGISTERs were answered, expected {} to {most}: \
         its tenth unanswered challenge bans it {FOLLOW_UP:?} later, at one answer per \
         {SWEEP_PACE:?} at most",
        threshold + 1
    );
    // The answers went on for `FOLLOW_UP` after the tenth, and the ban followed at once.
    let waited = answers[answered - 1] - answers[threshold - 1];
    ensure!(
        waited + SLACK >= FOLLOW_UP && waited <= FOLLOW_UP + SWEEP_PACE + SLACK,
        "the sweep was answered for {waited:?} after its tenth challenge, expected \
         {FOLLOW_UP:?} to {:?}",
        FOLLOW_UP + SWEEP_PACE + SLACK
    );
    // The ban is issued on the last answer, which still reaches the sweep; what it sends after
    // that goes unanswered, and none of it reaches the PBX.
    ensure!(sent > answered, "the sweep stopped before it met the ban");
    let swept = from_client(&pbx, SWEEP);
    assert_eq!(
        transactions(&swept),
        answered,
        "REGISTERs of the sweep that reached the PBX: {swept:#?}"
    );

    kept_registering(phone, before)?;
    guard.stop()
}

/// sipvicious writes its From tag the same way in every mode (see support/sipvicious.rs), so
/// svwar is banned at its first request, a probe for a random extension, with its User-Agent
/// or without one; unanswered, svwar gives up at once.
#[test]
fn svwar_is_banned_at_its_first_request_with_or_without_a_user_agent() -> anyhow::Result<()> {
    // svwar as it comes: REGISTER, User-Agent friendly-scanner.
    const SVWAR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 21);
    // svwar in compact mode, which sends no User-Agent and writes From as `f:`: INVITE, since
    // against a PBX that challenges REGISTERs for unknown users too (Asterisk, and pbx.cfg)
    // svwar's REGISTER sweep gives up by itself after the first extension.
    const SVWAR_COMPACT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 22);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 62);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1003")?;
    let before = phone.successes();

    // -t 0.2: the next extension after 200 ms with nothing to read, under the flood rule.
    let svwar = SipVicious::new(Tool::Svwar, SVWAR, guard.addr(), pbx.dir())
        .args(["-e100-3000", "-t", "0.2"])
        .spawn()?;
    let compact = SipVicious::new(Tool::Svwar, SVWAR_COMPACT, guard.addr(), pbx.dir())
        .args(["-c", "--force", "-m", "INVITE", "-e100-3000", "-t", "0.2"])
        .spawn()?;

    for (source, run) in [(SVWAR, svwar.wait()?), (SVWAR_COMPACT, compact.wait()?)] {
        run.ensure_ran()?;
        let ban = guard
            .ban(source.into())
            .with_context(|| format!("svwar is not banned\n{}", run.output()))?;
        assert_eq!(ban.rule, RuleId::Scanner, "{ban:?}\n{}", run.output());
        let leaked = from_client(&pbx, source);
        ensure!(
            leaked.is_empty(),
            "svwar reached the PBX: {leaked:#?}\n{}",
            run.output()
        );
        ensure!(
            run.results().is_empty(),
            "svwar found extensions through sipguard:\n{}",
            run.output()
        );
    }
    kept_registering(phone, before)?;
    guard.stop()
}

/// svcrack in compact mode sends no User-Agent, and its bare REGISTERs carry a From tag of its
/// own (a fixed number); its first guess carries sipvicious' tag, and is where it is banned. No
/// guess reaches the PBX, only the bare REGISTER that fetched the first challenge.
#[test]
fn svcrack_in_compact_mode_is_banned_at_its_first_guess() -> anyhow::Result<()> {
    const CRACKER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 24);
    const CONTROL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 64);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 63);
    const TARGET: &str = "1001";
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let rule = guard.policy().config().scanner;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1003")?;
    let before = phone.successes();

    // 49 wrong passwords, the right one 50th.
    let mut words = (1..50).map(|n| format!("wrong-{n}\n")).collect::<String>();
    words.push_str(&format!("{}\nwrong-51\n", password(TARGET)));
    let wordlist = pbx.dir().join("passwords.txt");
    std::fs::write(&wordlist, words)?;
    let svcrack = |source, target| {
        SipVicious::new(Tool::Svcrack, source, target, pbx.dir())
            .args(["-u", TARGET, "-d"])
            .args([wordlist.to_string_lossy()])
            .args(["-c"])
    };

    // -t 0.15: the next request 150 ms after the last answer, under the flood rule.
    // --maximumtime 30: with no challenge to answer it keeps sending bare REGISTERs after its
    // ban until interrupted.
    let cracking = svcrack(CRACKER, guard.addr())
        .args(["-t", "0.15", "--maximumtime", "30"])
        .spawn()?;
    let ban = banned(&guard, CRACKER)?;
    assert_eq!(ban.rule, RuleId::Scanner, "{ban:?}");
    let issued_at = issued(&ban, rule.ban_for)?;
    dropped_after_ban(&guard, CRACKER, issued_at)?;
    let cracked = cracking.interrupt()?;

    ensure!(
        cracked.results().is_empty() && !cracked.stdout.contains(password(TARGET)),
        "svcrack found the password through sipguard:\n{}",
        cracked.output()
    );
    ensure!(
        pbx.received_addrs(TARGET)?.is_empty(),
        "{TARGET} got registered"
    );
    let requests = from_client(&pbx, CRACKER);
    ensure!(
        transactions(&requests) <= 1 && requests.iter().all(|r| !r.credentialed()),
        "more than svcrack's first bare REGISTER reached the PBX:\n{requests:#?}\n{}",
        cracked.output()
    );
    nothing_after(&requests, issued_at)?;

    // The same attack straight at the PBX finds the password: the wordlist and svcrack work,
    // and the check above could see a cracked password.
    let direct = svcrack(CONTROL, pbx.addr()).args(["-t", "0.02"]).run()?;
    ensure!(
        direct.results() == [vec![TARGET.to_owned(), password(TARGET).to_owned()]],
        "svcrack straight at the PBX did not find the password:\n{}",
        direct.output()
    );
    kept_registering(phone, before)?;
    guard.stop()
}

#[test]
fn office_nat_stale_password_does_not_ban_the_address() -> anyhow::Result<()> {
    const OFFICE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 30);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let rule = guard.policy().config().register_failures;
    // 1002 registers first: the office's address is now trusted.
    let phone = Phone::legit(&pbx, guard.addr(), OFFICE, "1002")?;
    // 1001 on another phone behind the same address keeps trying a stale password. 700 ms
    // apart, so the office stays well under the flood rule (which, for a trusted source, would
    // drop 1002's registrations too).
    let stale = Phone::with_stale_password(
        &pbx,
        guard.addr(),
        free_udp_addr(OFFICE)?,
        "1001",
        "stale-password",
        Duration::from_millis(700),
    )?;
    let stale_1001 = || {
        from_client(&pbx, OFFICE)
            .into_iter()
            .filter(|r| r.to_user.as_deref() == Some("1001"))
            .collect::<Vec<_>>()
    };

    // The attempt after the fifth refusal goes unanswered: 1001 is blocked.
    poll_until("1001 to be blocked", SETTLE, || {
        (stale.failures() > 0).then_some(())
    })?;
    let blocked_at = phone.successes();
    let refused = stale.successes();
    let reached = stale_1001();
    let guesses = transactions(reached.iter().filter(|r| r.credentialed()));
    assert_eq!(
        (refused, guesses),
        (
            usize::try_from(rule.threshold)?,
            usize::try_from(rule.threshold)?
        ),
        "refused attempts, and 1001's REGISTERs with credentials at the PBX: {reached:#?}"
    );

    // A second blocked attempt: nothing of 1001's reaches the PBX any more.
    poll_until("1001 to try again", SETTLE, || {
        (stale.failures() > 1).then_some(())
    })?;
    let later = stale_1001();
    ensure!(
        later.len() == reached.len(),
        "1001's REGISTERs still reach the PBX after the block: {:#?}",
        &later[reached.len()..]
    );
    ensure!(
        guard.ban(OFFICE.into()).is_none(),
        "the office is banned: {:?}",
        guard.ban(OFFICE.into())
    );
    let (refused, unanswered) = stale.finish();
    ensure!(refused == usize::try_from(rule.threshold)? && unanswered.len() >= 2);

    // And 1002 registered throughout, after the block too.
    kept_registering(phone, blocked_at)?;
    guard.stop()
}

#[test]
fn enforced_allowlist_admits_only_listed_sources() -> anyhow::Result<()> {
    const LISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 40);
    const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 41);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        config.policy.allowlist = vec![AllowGroup::new(
            "listed",
            [ipnet::IpNet::from(IpAddr::from(LISTED))],
        )];
        config.policy.allowlist_mode = AllowlistMode::Enforce;
    })?;
    let phone = Phone::legit(&pbx, guard.addr(), LISTED, "1001")?;
    let before = phone.successes();

    let outsider = UdpSocket::bind((OUTSIDER, 0))?;
    for method in ["REGISTER", "OPTIONS"] {
        let (_, reply) = ask(
            &outsider,
            guard.addr(),
            method,
            "1002",
            "sipguard-e2e-phone",
            SILENCE,
        )?;
        ensure!(
            reply.is_none(),
            "a {method} from outside the allowlist was answered:\n{reply:?}"
        );
    }
    // The outsider's requests were sent before the phone's last registration, whose requests
    // the PBX has logged; none of the outsider's are there.
    kept_registering(phone, before)?;
    let leaked = from_client(&pbx, OUTSIDER);
    ensure!(leaked.is_empty(), "the PBX saw the outsider: {leaked:#?}");
    ensure!(
        !from_client(&pbx, LISTED).is_empty(),
        "the PBX log shows nothing from the listed phone either"
    );
    guard.stop()
}

#[test]
fn allowlisted_carrier_with_failing_registers_is_never_banned() -> anyhow::Result<()> {
    const CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 42);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 43);
    const ATTEMPTS: u32 = 100;
    let pbx = Kamailio::start()?;
    // Listed but not enforced: everyone is admitted, the carrier is never banned.
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        config.policy.allowlist = vec![AllowGroup::new(
            "listed",
            [ipnet::IpNet::from(IpAddr::from(CARRIER))],
        )];
    })?;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1003")?;
    let before = phone.successes();

    // 100 registrations with a wrong password, 50 a second: each must get its second 401.
    let mut carrier = Sipp::new("register_rejected.xml", pbx.dir())
        .remote(guard.addr())
        .local(free_udp_addr(CARRIER)?)
        .service("1004")
        .auth("1004", "not-the-password")
        .calls(ATTEMPTS, 50)
        .timeout(Duration::from_secs(30))
        .spawn()?;
    let mut bans = Vec::new();
    poll_until(
        "the carrier's registrations to end",
        Duration::from_secs(45),
        || {
            bans.extend(guard.ban(CARRIER.into()));
            (!carrier.is_running()).then_some(())
        },
    )?;
    carrier
        .wait()?
        .ensure_success()
        .context("the carrier's requests were not all answered")?;
    bans.extend(guard.ban(CARRIER.into()));
    ensure!(
        bans.is_empty(),
        "the allowlisted carrier was banned: {bans:?}"
    );
    let requests = from_client(&pbx, CARRIER);
    let failed = transactions(requests.iter().filter(|r| r.credentialed()));
    assert_eq!(
        failed,
        usize::try_from(ATTEMPTS)?,
        "REGISTERs with the wrong password at the PBX"
    );
    kept_registering(phone, before)?;
    guard.stop()
}

#[test]
fn spoofed_scanner_packet_does_not_ban_an_authenticated_phone() -> anyhow::Result<()> {
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 50);
    // The same packet from an address nobody authenticated from.
    const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 51);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1005")?;
    let before = phone.successes();

    // What a scanner spoofing the phone's address gets through: from the phone's IP, another
    // port.
    let spoofer = UdpSocket::bind((PHONE, 0))?;
    let (scan_id, reply) = ask(
        &spoofer,
        guard.addr(),
        "OPTIONS",
        "100",
        "friendly-scanner",
        SILENCE,
    )?;
    ensure!(
        reply.is_none(),
        "the scanner's OPTIONS was answered: {reply:?}"
    );
    // A clean OPTIONS from the same socket afterwards is answered, so the PBX has logged
    // everything that socket's session forwarded before it.
    let (clean_id, reply) = ask(
        &spoofer,
        guard.addr(),
        "OPTIONS",
        "100",
        "sipguard-e2e-probe",
        Duration::from_secs(5),
    )?;
    ensure!(
        reply
            .as_deref()
            .is_some_and(|r| r.starts_with("SIP/2.0 200")),
        "a clean OPTIONS from the phone's address was not answered 200: {reply:?}"
    );
    let requests = pbx.requests();
    ensure!(requests.iter().any(|r| r.call_id == clean_id));
    let leaked = requests
        .iter()
        .filter(|r| r.call_id == scan_id)
        .collect::<Vec<_>>();
    ensure!(
        leaked.is_empty(),
        "the scanner's OPTIONS reached the PBX: {leaked:#?}"
    );
    ensure!(
        guard.ban(PHONE.into()).is_none(),
        "the phone's address is banned: {:?}",
        guard.ban(PHONE.into())
    );

    // From an untrusted address the same packet bans: the trust is what spared the phone.
    let stranger = UdpSocket::bind((STRANGER, 0))?;
    ask(
        &stranger,
        guard.addr(),
        "OPTIONS",
        "100",
        "friendly-scanner",
        SILENCE,
    )?;
    let ban = guard
        .ban(STRANGER.into())
        .context("the scanner packet from an untrusted address did not ban it")?;
    assert_eq!(ban.rule, RuleId::Scanner, "{ban:?}");

    kept_registering(phone, before)?;
    guard.stop()
}

/// A REGISTER for `user` carrying credentials with a wrong digest, as one fixed transaction
/// (same branch, Call-ID and CSeq) that a phone retransmits unchanged.
fn wrong_credentials(from: SocketAddr, user: &str, call_id: &str) -> String {
    request("REGISTER", from, user, call_id, "sipguard-e2e-phone").replace(
        "Content-Length: 0\r\n",
        &format!(
            "Authorization: Digest username=\"{user}\", realm=\"sipguard.test\", \
             nonce=\"e2e-nonce\", uri=\"sip:127.0.0.1\", \
             response=\"00000000000000000000000000000000\", algorithm=MD5\r\n\
             Content-Length: 0\r\n"
        ),
    )
}

/// Regression: the policy counts every 401 the PBX sends as a failure, including the PBX's
/// answers to retransmissions of one request. A phone whose 401s get lost on the way back
/// retransmits its REGISTER (RFC 3261 Timer E: up to ten times in 32 s), so a single wrong
/// password is counted once per copy and bans the phone's address at the fifth copy. One
/// transaction should be one failure. Fails until the response path counts a transaction's
/// final response once.
#[test]
fn retransmitted_wrong_password_counts_as_one_failure() -> anyhow::Result<()> {
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 52);
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let rule = guard.policy().config().register_failures;
    let phone = UdpSocket::bind((PHONE, 0))?;
    let id = call_id("lossy");
    let copy = wrong_credentials(phone.local_addr()?, "1002", &id);
    // The phone sends the same request again each time it got no answer; here each answer is
    // read but treated as lost, for as many copies as would trip the rule.
    for copy_number in 1..=rule.threshold {
        phone.send_to(copy.as_bytes(), guard.addr())?;
        let reply = answer(&phone, &id, Duration::from_secs(5))?;
        ensure!(
            reply
                .as_deref()
                .is_some_and(|r| r.starts_with("SIP/2.0 401")),
            "copy {copy_number} of the REGISTER was not answered 401: {reply:?}"
        );
    }
    let requests = from_client(&pbx, PHONE);
    assert_eq!(transactions(&requests), 1, "{requests:#?}");
    ensure!(
        guard.ban(PHONE.into()).is_none(),
        "one wrong password, retransmitted {} times, banned the phone: {:?}",
        rule.threshold,
        guard.ban(PHONE.into())
    );
    guard.stop()
}
