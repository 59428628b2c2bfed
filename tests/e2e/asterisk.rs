//! sipguard in front of a real Asterisk 22 (support/asterisk.rs), where the Kamailio stand-in
//! cannot say whether sipguard judges the real PBX's answers right: the crackers of
//! detection.rs against a real extension, a phone re-registering on nonces Asterisk calls stale,
//! credentials forged in a registered phone's name, an office registering at once. Each attack
//! runs beside the innocent pattern it must not be taken for.
//!
//! What reached Asterisk is read from its security log (`ChallengeResponseFailed` for each
//! wrong password, by username and Call-ID), who is registered from `pjsip show contacts`, what
//! it sent from its SIP trace; bans from the in-process sipguard's policy, failures from its
//! counters. Each test prints one line with its figures (`cargo test ... asterisk:: --
//! --nocapture`). Addresses: 127.0.5.x.

use crate::attacks::issued;
use crate::support::asterisk::{secret, Asterisk, UaPhone};
use crate::support::{poll_until, Cracked, Cracker, Sipguard, Style, Ua};
use anyhow::{anyhow, ensure, Context};
use sipguard_policy::{Ban, RuleId};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The extension the crackers attack.
const TARGET: &str = "1001";
/// A User-Agent no scanner signature matches: a softphone's.
const DISGUISE: &str = "Zoiper rv2.10.20.1";
/// svcrack's `-t 0.3`: the next request 300 ms after the last answer.
const CRACK_PACE: Duration = Duration::from_millis(300);
/// How long a cracking run may take to be banned or to end. Never banned, a cracker reaches
/// the password in about 50 paces (15 s) and stops by itself.
const CRACK_DEADLINE: Duration = Duration::from_secs(20);
/// How long a phone may take to register once more after an attack (it does every second).
const SETTLE: Duration = Duration::from_secs(10);
/// A request forwarded just before a ban may still reach Asterisk a little after it.
const IN_FLIGHT: Duration = Duration::from_secs(1);
/// How often the legitimate phones beside the attacks register again.
const PHONE_INTERVAL: Duration = Duration::from_secs(1);

/// A ban in a report line.
fn describe(ban: Option<&Ban>) -> String {
    ban.map_or("none".to_owned(), |ban| {
        format!("{:?} (evidence {})", ban.rule, ban.evidence)
    })
}

// ---------------------------------------------------------------------------------------------
// Crackers against a real extension, beside a phone that keeps registering.

/// 49 wrong passwords, `TARGET`'s own 50th, one more after it.
fn wordlist() -> Vec<String> {
    let mut words: Vec<String> = (1..50).map(|n| format!("wrong-{n}")).collect();
    words.push(secret(TARGET));
    words.push("wrong-51".to_owned());
    words
}

/// A cracker of `style` (over TCP when `tcp`) from `cracker` against `TARGET` through sipguard,
/// beside a phone at `phone_ip` that registers 1003 every second. Banned for its wrong
/// passwords, at most five of them (and one in flight) reaching Asterisk and none after the ban,
/// the password not found and the extension not registered; the phone never fails. The same
/// cracker straight at Asterisk finds the password, so the check could fail.
fn cracker_is_banned_before_asterisk_sees_a_sixth_wrong_password(
    style: Style,
    tcp: bool,
    cracker: Ipv4Addr,
    phone_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    let pbx = Asterisk::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let rule = guard.policy().config().register_failures;
    let phone = UaPhone::start(phone_ip, guard.addr(), "1003", PHONE_INTERVAL)?;
    let client = |to: SocketAddr| -> anyhow::Result<Ua> {
        let ua = if tcp {
            Ua::tcp(cracker.into(), to, TARGET, "")
        } else {
            Ua::udp((cracker, 0).into(), to, TARGET, "")
        }?;
        Ok(ua.with_user_agent(DISGUISE))
    };
    let front = if tcp { guard.tcp_addr() } else { guard.addr() };

    let started = Instant::now();
    let attacker = Cracker::new(client(front)?, style, wordlist(), CRACK_PACE);
    let running = std::thread::spawn(move || attacker.run());
    let ban = poll_until(
        "the cracker to be banned or to stop",
        CRACK_DEADLINE,
        || match guard.ban(cracker.into()) {
            Some(ban) => Some(Some(ban)),
            None => running.is_finished().then_some(None),
        },
    )?;
    let banned_in = started.elapsed();
    // Banned, it goes on until it gives up on the silence (or its connection is closed).
    let cracked: Cracked = running
        .join()
        .map_err(|_| anyhow!("the cracker's thread panicked"))??;
    let reached = pbx.failures(TARGET);
    let registered = pbx.registered(TARGET)?;
    eprintln!(
        "asterisk, {style:?} cracker{} at {cracker}: {} guesses sent, {reached} wrong passwords \
         reached Asterisk; password found: {}; {TARGET} registered: {registered}; ban after \
         {banned_in:?}: {}; it stopped: {}",
        if tcp { " over TCP" } else { "" },
        cracked.guesses,
        cracked.found.is_some(),
        describe(ban.as_ref()),
        cracked.stopped
    );
    ensure!(
        cracked.found.is_none() && !registered,
        "the cracker got in: {cracked:?}"
    );
    let ban = ban.with_context(|| format!("the cracker is not banned: {cracked:?}"))?;
    ensure!(
        ban.rule == RuleId::RegisterFailures,
        "banned, but not for its wrong passwords: {ban:?}"
    );
    ensure!(
        reached <= usize::try_from(rule.threshold)? + 1,
        "{reached} wrong passwords reached Asterisk, more than {} (and one in flight)",
        rule.threshold
    );
    // Asterisk logs the Call-ID of each attempt (SessionID): none of the cracker's after the ban.
    let until = issued(&ban, rule.ban_for)? + IN_FLIGHT;
    let late: Vec<_> = pbx
        .security_events()
        .into_iter()
        .filter(|e| e.session.starts_with("crack-") && e.at > until)
        .collect();
    ensure!(late.is_empty(), "after the ban Asterisk logged {late:#?}");

    let control = Cracker::new(client(pbx.addr())?, style, wordlist(), Duration::ZERO).run()?;
    ensure!(
        control.found == Some(secret(TARGET)),
        "the {style:?} cracker straight at Asterisk did not find the password: {control:?}"
    );
    let registrations = phone.kept_registering(0, SETTLE)?;
    eprintln!(
        "asterisk, {style:?} cracker: straight at Asterisk it found the password after {} \
         guesses; the phone beside it registered {registrations} times, none failed",
        control.guesses
    );
    guard.stop()
}

/// svcrack's layout: one Call-ID and `CSeq: 2` for every guess.
#[test]
fn asterisk_svcrack_style_cracker_is_banned_within_five_wrong_passwords() -> anyhow::Result<()> {
    cracker_is_banned_before_asterisk_sees_a_sixth_wrong_password(
        Style::Svcrack,
        false,
        Ipv4Addr::new(127, 0, 5, 10),
        Ipv4Addr::new(127, 0, 5, 11),
    )
}

/// Each guess on a Call-ID and challenge of its own.
#[test]
fn asterisk_cracker_with_a_new_call_id_per_guess_is_banned_within_five_wrong_passwords(
) -> anyhow::Result<()> {
    cracker_is_banned_before_asterisk_sees_a_sixth_wrong_password(
        Style::NewCallId,
        false,
        Ipv4Addr::new(127, 0, 5, 12),
        Ipv4Addr::new(127, 0, 5, 13),
    )
}

/// svcrack's layout over TCP, to Asterisk's TCP transport.
#[test]
fn asterisk_svcrack_style_cracker_over_tcp_is_banned_within_five_wrong_passwords(
) -> anyhow::Result<()> {
    cracker_is_banned_before_asterisk_sees_a_sixth_wrong_password(
        Style::Svcrack,
        true,
        Ipv4Addr::new(127, 0, 5, 14),
        Ipv4Addr::new(127, 0, 5, 15),
    )
}
