//! The operator's side, on the real binary: `/metrics` while a phone registers and an attacker
//! scans, bans that survive `kill -9`, `sipguard bans` against a running instance, and reload on
//! SIGHUP. Each test starts its own Kamailio and its own sipguard process on free ports, from
//! 127.0.0.150 up.

use crate::attacks::ask;
use crate::support::{
    bans_cli, free_udp_addr, poll_until, Daemon, DaemonConfig, Kamailio, Phone, Scrape, SipVicious,
    Tool,
};
use anyhow::{ensure, Context};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a condition the test causes (a ban, a reload, a gauge update) may take to show; the
/// gauges are published every 5 s.
const SETTLE: Duration = Duration::from_secs(20);
/// How long to wait for an answer that must not come; a forwarded request is answered across
/// loopback in milliseconds.
const SILENCE: Duration = Duration::from_millis(1500);
const PHONE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether an OPTIONS from `socket` through sipguard is answered within `within`.
fn answered(socket: &UdpSocket, guard: &Daemon, within: Duration) -> anyhow::Result<bool> {
    let (_, reply) = ask(
        socket,
        guard.addr(),
        "OPTIONS",
        "1005",
        "sipguard-e2e-probe",
        within,
    )?;
    Ok(reply.is_some())
}

/// The `bans list --json` of a running sipguard, by IP.
pub(crate) fn bans(guard: &Daemon) -> anyhow::Result<serde_json::Value> {
    let out = guard.bans(&["list", "--json"])?;
    ensure!(out.status.success(), "bans list failed: {out:?}");
    Ok(serde_json::from_slice(&out.stdout)?)
}

pub(crate) fn ban_of(list: &serde_json::Value, ip: Ipv4Addr) -> Option<serde_json::Value> {
    list["bans"]
        .as_array()?
        .iter()
        .find(|ban| ban["ip"] == ip.to_string())
        .cloned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn metrics_count_traffic_and_an_attack_with_bounded_labels_and_pass_promtool() -> anyhow::Result<()>
{
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 150);
    const STALE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 151);
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 152);
    let pbx = Kamailio::start()?;
    let dir = tempfile::tempdir()?;
    let guard = Daemon::start(&DaemonConfig::in_dir(dir.path(), "", pbx.addr())?)?;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1001")?;
    let stale = Phone::with_stale_password(
        &pbx,
        guard.addr(),
        free_udp_addr(STALE)?,
        "1002",
        "not-the-password",
        PHONE_INTERVAL,
    )?;
    let scan = SipVicious::new(Tool::Svmap, SCANNER, guard.addr(), pbx.dir()).run()?;
    scan.ensure_ran()?;

    let scrape: Scrape = poll_until("the counters to move", SETTLE, || {
        let scrape = guard.scrape().ok()?;
        let moved = [
            (
                "sipguard_packets_forwarded_total",
                vec![("transport", "udp"), ("direction", "to_pbx")],
            ),
            (
                "sipguard_packets_forwarded_total",
                vec![("transport", "udp"), ("direction", "to_client")],
            ),
            (
                "sipguard_packets_dropped_total",
                vec![("transport", "udp"), ("reason", "scanner")],
            ),
            ("sipguard_bans_total", vec![("rule", "scanner")]),
            ("sipguard_auth_failures_total", vec![("method", "register")]),
            (
                "sipguard_packet_processing_seconds_count",
                vec![("transport", "udp")],
            ),
            ("sipguard_bans_active", vec![]),
            ("sipguard_sessions_active", vec![("transport", "udp")]),
        ]
        .iter()
        .all(|(name, labels)| scrape.value(name, labels).is_some_and(|v| v > 0.0));
        moved.then_some(scrape)
    })
    .with_context(|| {
        format!(
            "last scrape:\n{}",
            guard.scrape().map(|s| s.text).unwrap_or_default()
        )
    })?;
    phone.stop()?;
    drop(stale);

    // Every family of the shared contract that the UDP path exports is there.
    let names = scrape.names();
    for name in [
        "sipguard_packets_received_total",
        "sipguard_packets_forwarded_total",
        "sipguard_packets_dropped_total",
        "sipguard_keepalives_total",
        "sipguard_upstream_errors_total",
        "sipguard_client_send_errors_total",
        "sipguard_sessions_active",
        "sipguard_sessions_expired_total",
        "sipguard_bans_total",
        "sipguard_bans_active",
        "sipguard_unbans_total",
        "sipguard_rule_hits_total",
        "sipguard_auth_failures_total",
        "sipguard_sources_tracked",
        "sipguard_state_evictions_total",
        "sipguard_packet_processing_seconds",
        "sipguard_config_reloads_total",
        "sipguard_journal_errors_total",
    ] {
        ensure!(names.contains(name), "{name} missing:\n{}", scrape.text);
    }
    let received = scrape.value("sipguard_packets_received_total", &[("transport", "udp")]);
    let forwarded = scrape.value(
        "sipguard_packets_forwarded_total",
        &[("direction", "to_pbx")],
    );
    ensure!(
        received >= forwarded,
        "received {received:?} < forwarded {forwarded:?}"
    );
    // Present from the start, still zero: nothing reloaded, no journal trouble, no hand bans.
    for (name, labels) in [
        ("sipguard_config_reloads_total", vec![("result", "ok")]),
        ("sipguard_config_reloads_total", vec![("result", "error")]),
        ("sipguard_journal_errors_total", vec![]),
        ("sipguard_unbans_total", vec![("how", "manual")]),
        ("sipguard_bans_total", vec![("rule", "manual")]),
    ] {
        ensure!(
            scrape.value(name, &labels) == Some(0.0),
            "{name}{labels:?} not 0:\n{}",
            scrape.text
        );
    }
    // The histogram has explicit buckets, and the sampled count is at most the packets seen.
    ensure!(
        scrape
            .text
            .contains("sipguard_packet_processing_seconds_bucket{transport=\"udp\",le=\"0.0001\"}"),
        "{}",
        scrape.text
    );
    let timed = scrape
        .value("sipguard_packet_processing_seconds_count", &[])
        .unwrap_or(0.0);
    ensure!(
        timed <= received.unwrap_or(0.0),
        "{timed} timed of {received:?}"
    );
    for value in scrape.label_values() {
        ensure!(
            !value.contains("127.0.0.") && !value.to_ascii_lowercase().contains("scanner")
                || value == "scanner",
            "a label carries packet data: {value:?}"
        );
    }
    scrape.promtool_check()
}

#[test]
fn bans_survive_kill_9_with_their_expiry_and_expired_ones_do_not_return() -> anyhow::Result<()> {
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 155);
    const SHORT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 156);
    const HAND: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 157);
    let pbx = Kamailio::start()?;
    let dir = tempfile::tempdir()?;
    let mut config = DaemonConfig::in_dir(dir.path(), "", pbx.addr())?;
    let guard = Daemon::start(&config)?;

    // A scanner banned by the relay, a long ban and a short one by hand.
    let scanner = UdpSocket::bind((SCANNER, 0))?;
    let (_, reply) = ask(
        &scanner,
        guard.addr(),
        "OPTIONS",
        "100",
        "friendly-scanner",
        SILENCE,
    )?;
    ensure!(reply.is_none(), "the scanner was answered");
    for (ip, duration) in [(HAND, "3h"), (SHORT, "2s")] {
        let out = guard.bans(&["add", &ip.to_string(), "--for", duration, "--reason", "e2e"])?;
        ensure!(out.status.success(), "bans add: {}", stderr(&out));
    }
    // The relay's ban is durable once its log line is out.
    guard.wait_for_log("rule=scanner", SETTLE)?;
    let before = bans(&guard)?;
    let scanner_ban = ban_of(&before, SCANNER).context("scanner not banned")?;
    let hand_ban = ban_of(&before, HAND).context("hand ban missing")?;
    let short_ban = ban_of(&before, SHORT).context("short ban missing")?;
    config.listen = guard.addr();
    guard.kill()?;

    // Let the short ban run out, then tear a record at the journal's end as a crash would.
    let short_expires =
        UNIX_EPOCH + Duration::from_millis(short_ban["expires_ms"].as_u64().unwrap());
    poll_until("the short ban to expire", SETTLE, || {
        (SystemTime::now() > short_expires).then_some(())
    })?;
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(&config.journal)?;
    std::io::Write::write_all(&mut journal, b"1a2b3c4d {\"op\":\"ban\",\"ip\":\"127.0.0.")?;
    drop(journal);

    let guard = Daemon::start(&config)?;
    guard.wait_for_log("cut short", SETTLE)?;
    let after = bans(&guard)?;
    for (ip, ban) in [(SCANNER, &scanner_ban), (HAND, &hand_ban)] {
        let restored = ban_of(&after, ip).with_context(|| format!("{ip} lost its ban: {after}"))?;
        for key in [
            "expires_ms",
            "offence",
            "rule",
            "evidence",
            "reason",
            "first_seen",
        ] {
            ensure!(
                restored[key] == ban[key],
                "{ip}: {key} changed: {ban} -> {restored}"
            );
        }
    }
    ensure!(
        ban_of(&after, SHORT).is_none(),
        "an expired ban came back: {after}"
    );
    // And the restored ban is enforced.
    let (_, reply) = ask(
        &scanner,
        guard.addr(),
        "OPTIONS",
        "100",
        "sipguard-e2e-phone",
        SILENCE,
    )?;
    ensure!(
        reply.is_none(),
        "the banned scanner was answered after the restart"
    );
    Ok(())
}

#[test]
fn bans_cli_lists_adds_and_lifts_bans_of_a_running_instance() -> anyhow::Result<()> {
    const SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 160);
    let pbx = Kamailio::start()?;
    let dir = tempfile::tempdir()?;
    let guard = Daemon::start(&DaemonConfig::in_dir(dir.path(), "", pbx.addr())?)?;
    let source = UdpSocket::bind((SOURCE, 0))?;
    ensure!(
        answered(&source, &guard, SILENCE)?,
        "the source was not answered before its ban"
    );

    let empty = guard.bans(&["list"])?;
    ensure!(
        empty.status.success() && stdout(&empty) == "no bans\n",
        "{empty:?}"
    );

    let add = guard.bans(&[
        "add",
        &SOURCE.to_string(),
        "--for",
        "2h",
        "--reason",
        "probing at night",
    ])?;
    ensure!(add.status.success(), "bans add: {}", stderr(&add));
    ensure!(
        stdout(&add).starts_with(&format!("banned {SOURCE} until ")),
        "{}",
        stdout(&add)
    );
    ensure!(
        !answered(&source, &guard, SILENCE)?,
        "a banned source was answered"
    );

    let table = stdout(&guard.bans(&["list"])?);
    let lines: Vec<&str> = table.lines().collect();
    ensure!(lines.len() == 2, "{table}");
    ensure!(
        lines[0].split_whitespace().collect::<Vec<_>>()
            == [
                "IP",
                "RULE",
                "REASON",
                "EVIDENCE",
                "OFFENCE",
                "FIRST_SEEN",
                "LAST_SEEN",
                "EXPIRES"
            ],
        "{table}"
    );
    ensure!(
        lines[1].starts_with(&format!("{SOURCE}  manual  probing at night")),
        "{table}"
    );
    let ban = ban_of(&bans(&guard)?, SOURCE).context("not in the JSON list")?;
    let expires = ban["expires_ms"].as_u64().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    ensure!(
        (now + 7_100_000..=now + 7_200_000).contains(&expires),
        "{ban}"
    );

    let remove = guard.bans(&["remove", &SOURCE.to_string()])?;
    ensure!(remove.status.success(), "bans remove: {}", stderr(&remove));
    // Let through at once: the very next request is answered.
    ensure!(
        answered(&source, &guard, Duration::from_secs(5))?,
        "the lifted source was not answered"
    );
    ensure!(stdout(&guard.bans(&["list"])?) == "no bans\n");

    let again = guard.bans(&["remove", &SOURCE.to_string()])?;
    ensure!(
        again.status.code() == Some(1) && stderr(&again).contains("is not banned"),
        "{again:?}"
    );
    let listed = guard.bans(&["add", "127.0.0.1", "--for", "0s"])?;
    ensure!(
        listed.status.code() == Some(1) && stderr(&listed).contains("duration"),
        "{listed:?}"
    );

    // A ban that runs out is let go with a line of its own.
    const BRIEF: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 161);
    let brief = guard.bans(&["add", &BRIEF.to_string(), "--for", "1s"])?;
    ensure!(brief.status.success(), "{brief:?}");
    let line = guard.wait_for_log(&format!("source={BRIEF} "), SETTLE)?;
    ensure!(line.contains("banned"), "{line}");
    poll_until("the brief ban's end to be logged", SETTLE, || {
        guard.log().into_iter().find(|l| {
            l.contains("unbanned")
                && l.contains(&format!("source={BRIEF} "))
                && l.contains("how=\"expired\"")
        })
    })?;

    let admin: SocketAddr = guard.admin();
    drop(guard);
    let down = bans_cli(admin, &["list"])?;
    ensure!(down.status.code() == Some(3), "{down:?}");
    ensure!(
        stderr(&down).contains("no sipguard answers at"),
        "{}",
        stderr(&down)
    );
    Ok(())
}

#[test]
fn sighup_applies_an_allowlist_change_without_dropping_sessions_and_refuses_a_bad_file(
) -> anyhow::Result<()> {
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 165);
    const NEWCOMER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 166);
    const OUTSIDER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 167);
    let pbx = Kamailio::start()?;
    let dir = tempfile::tempdir()?;
    let allowlist = dir.path().join("allowlist.yaml");
    let listing = |ips: &[Ipv4Addr]| {
        let cidrs: Vec<String> = ips.iter().map(|ip| format!("{ip}/32")).collect();
        format!(
            "offices:\n  - name: e2e\n    cidrs: [{}]\n",
            cidrs.join(", ")
        )
    };
    std::fs::write(&allowlist, listing(&[PHONE]))?;
    let yaml = "allowlist:\n  file: allowlist.yaml\n  mode: enforce\n";
    let config = DaemonConfig::in_dir(dir.path(), yaml, pbx.addr())?;
    let mut guard = Daemon::start(&config)?;
    let phone = Phone::legit(&pbx, guard.addr(), PHONE, "1001")?;
    let newcomer = UdpSocket::bind((NEWCOMER, 0))?;
    ensure!(
        !answered(&newcomer, &guard, SILENCE)?,
        "a source outside the allowlist was answered"
    );

    std::fs::write(&allowlist, listing(&[PHONE, NEWCOMER]))?;
    guard.hangup();
    poll_until("the newcomer to be admitted", SETTLE, || {
        answered(&newcomer, &guard, Duration::from_millis(300))
            .ok()?
            .then_some(())
    })?;
    let before = phone.successes();
    poll_until("the phone to register after the reload", SETTLE, || {
        (phone.successes() > before || phone.failures() > 0).then_some(())
    })?;
    phone.stop()?;
    let scrape = guard.scrape()?;
    ensure!(
        scrape.value("sipguard_config_reloads_total", &[("result", "ok")]) == Some(1.0),
        "{}",
        scrape.text
    );
    ensure!(
        scrape.value("sipguard_sessions_expired_total", &[]) == Some(0.0),
        "a session was dropped:\n{}",
        scrape.text
    );

    // An invalid allowlist and an invalid key: refused, each problem logged, the old rules stay.
    std::fs::write(
        &allowlist,
        listing(&[PHONE, NEWCOMER]) + "    - 999.0.0.1\n",
    )?;
    std::fs::write(&config.config, format!("{yaml}sessions:\n  max: 0\n"))?;
    guard.hangup();
    poll_until("the failed reload to be counted", SETTLE, || {
        let scrape = guard.scrape().ok()?;
        (scrape.value("sipguard_config_reloads_total", &[("result", "error")]) == Some(1.0))
            .then_some(())
    })?;
    guard.wait_for_log("sessions.max", SETTLE)?;
    ensure!(
        guard
            .log()
            .iter()
            .any(|l| l.contains("configuration not reloaded")),
        "{:#?}",
        guard.log()
    );
    ensure!(
        answered(&newcomer, &guard, Duration::from_secs(5))?,
        "the newcomer lost its admission"
    );
    let outsider = UdpSocket::bind((OUTSIDER, 0))?;
    ensure!(
        !answered(&outsider, &guard, SILENCE)?,
        "the allowlist stopped being enforced"
    );
    Ok(())
}
