//! The operator's side, on the real binary: `/metrics` while a phone registers and an attacker
//! scans, bans that survive `kill -9` (an IPv6 network's too), `sipguard bans` against a running
//! instance, the admin API's gate (its token, web pages, bounded input) over a real socket, and
//! reload on SIGHUP.
//! Each test starts its own sipguard process (and, where traffic must be answered, its own
//! Kamailio) on free ports, from 127.0.0.150 up.

use crate::attacks::ask;
use crate::support::{
    free_udp_addr, http_exchange, poll_until, Daemon, DaemonConfig, HttpReply, Kamailio, Phone,
    Scrape, SipVicious, Tool,
};
use anyhow::{ensure, Context};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a condition the test causes (a ban, a reload, a gauge update) may take to show; the
/// gauges are published every 5 s.
const SETTLE: Duration = Duration::from_secs(20);
/// How long to wait for an answer that must not come; a forwarded request is answered across
/// loopback in milliseconds.
const SILENCE: Duration = Duration::from_millis(1500);
const PHONE_INTERVAL: Duration = Duration::from_secs(1);

/// Whether an OPTIONS from `socket` through sipguard is answered within `within`.
pub(crate) fn answered(
    socket: &UdpSocket,
    guard: &Daemon,
    within: Duration,
) -> anyhow::Result<bool> {
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

/// Sends one scanner's OPTIONS from `from` (which gets it banned by the relay) and checks it goes
/// unanswered; returns the scanner's socket.
pub(crate) fn scan(guard: &Daemon, from: Ipv4Addr) -> anyhow::Result<UdpSocket> {
    let scanner = UdpSocket::bind((from, 0))?;
    let (_, reply) = ask(
        &scanner,
        guard.addr(),
        "OPTIONS",
        "100",
        "friendly-scanner",
        SILENCE,
    )?;
    ensure!(reply.is_none(), "the scanner was answered");
    Ok(scanner)
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
    let scanner = scan(&guard, SCANNER)?;
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

    let cli = guard.cli();
    drop(guard);
    let down = cli.run(&["list"])?;
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
    // The last line of a refused reload, after each problem's own ("sessions.max" is also in a
    // warning at start, so waiting for it alone proves nothing).
    guard.wait_for_log("configuration not reloaded", SETTLE)?;
    ensure!(
        guard
            .log()
            .iter()
            .any(|l| l.contains("reload refused") && l.contains("sessions.max")),
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

/// Regression: `POST /bans` with `"duration": "580000y"` panicked the journal writer (a year past
/// 9999 cannot be formatted), so every later ban, automatic ones too, was "banned, but not
/// journalled" and lost at the next restart; and `GET /bans` dropped the connection while that
/// ban, journalled, survived restarts.
#[test]
fn a_ban_of_580000_years_is_refused_and_later_bans_are_still_journalled() -> anyhow::Result<()> {
    const LEFT_BY_THE_BUG: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 170);
    const HUGE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 171);
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 172);
    let dir = tempfile::tempdir()?;
    // Nothing needs answering: a scanner is banned on its first packet.
    let pbx = free_udp_addr(Ipv4Addr::new(127, 0, 0, 173))?;
    let config = DaemonConfig::in_dir(dir.path(), "", pbx)?;
    // What a version with the bug left in the journal: a ban expiring in the year 580000.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let endless = sipguard::journal::BanEntry {
        ip: std::net::IpAddr::from(LEFT_BY_THE_BUG).into(),
        rule: "manual".to_owned(),
        evidence: 0,
        first_seen: now,
        last_seen: now,
        expires: now + 580_000 * 31_557_600_000,
        offence: 1,
        reason: Some("left by the bug".to_owned()),
    };
    std::fs::create_dir_all(config.journal.parent().context("no journal dir")?)?;
    std::fs::write(
        &config.journal,
        sipguard::journal::Record::Ban(endless).encode(),
    )?;

    let guard = Daemon::start(&config)?;
    let listed = ban_of(&bans(&guard)?, LEFT_BY_THE_BUG).context("the journalled ban is gone")?;
    ensure!(listed["expires"] == "9999-12-31T23:59:59Z", "{listed}");

    let huge = guard.bans(&["add", &HUGE.to_string(), "--for", "580000y"])?;
    ensure!(
        huge.status.code() == Some(1)
            && stderr(&huge).contains("duration: \"580000y\": expected a duration from 1s to 1y")
            && stderr(&huge).contains("400 Bad Request"),
        "{huge:?}"
    );
    ensure!(
        ban_of(&bans(&guard)?, HUGE).is_none(),
        "the refused ban is in force"
    );

    // An automatic ban afterwards: its log line comes once it is durable.
    scan(&guard, SCANNER)?;
    let line = guard.wait_for_log(&format!("source={SCANNER} "), SETTLE)?;
    ensure!(
        line.contains("banned") && line.contains("rule=scanner"),
        "{line}"
    );
    let trouble: Vec<String> = guard
        .log()
        .into_iter()
        .filter(|l| l.contains("not journalled") || l.contains("panicked") || l.contains("failed"))
        .collect();
    ensure!(trouble.is_empty(), "{trouble:#?}");
    let scrape = guard.scrape()?;
    for name in [
        "sipguard_journal_writer_restarts_total",
        "sipguard_journal_errors_total",
    ] {
        ensure!(
            scrape.value(name, &[]) == Some(0.0),
            "{name}:\n{}",
            scrape.text
        );
    }
    guard.kill()?;

    let guard = Daemon::start(&config)?;
    let after = bans(&guard)?;
    ensure!(
        ban_of(&after, SCANNER).is_some_and(|ban| ban["rule"] == "scanner"),
        "the automatic ban did not survive the restart: {after}"
    );
    ensure!(ban_of(&after, LEFT_BY_THE_BUG).is_some(), "{after}");
    Ok(())
}

/// `METHOD_PATH HTTP/1.1` to the admin API with `headers` as given, then `body`.
fn admin_request(
    guard: &Daemon,
    method_path: &str,
    headers: &[&str],
    body: &str,
) -> anyhow::Result<HttpReply> {
    let mut request = format!("{method_path} HTTP/1.1\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    http_exchange(guard.admin(), &request)
}

#[test]
fn the_admin_api_refuses_web_pages_and_requests_without_the_token() -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const TARGET: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 175);
    let dir = tempfile::tempdir()?;
    // Every directory on the way to the token file open to all, so that its own mode is all
    // that keeps other users out.
    let open = std::fs::Permissions::from_mode(0o755);
    let config = DaemonConfig::in_dir(
        dir.path(),
        "",
        free_udp_addr(Ipv4Addr::new(127, 0, 0, 176))?,
    )?;
    std::fs::create_dir_all(config.journal.parent().context("no journal dir")?)?;
    for path in [dir.path(), &config.state, &config.state.join("sipguard")] {
        std::fs::set_permissions(path, open.clone())?;
    }
    let guard = Daemon::start(&config)?;
    let own_host = format!("Host: {}", guard.admin());
    let bearer = format!("Authorization: Bearer {}", guard.token()?);
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));
    let other_port = format!("Host: evil.example:{}", guard.admin().port());
    let localhost = format!("Host: localhost:{}", guard.admin().port());
    let json = "Content-Type: application/json";
    let ban = format!("{{\"ip\": \"{TARGET}\", \"duration\": \"1h\"}}");

    // The report's request as a web page's fetch() sends it, without the token and with it;
    // then each mark of a page alone, the token notwithstanding; then a program's request
    // without the token, with a wrong one, and with a body beyond the bound.
    let too_long = format!(
        "{{\"ip\": \"{TARGET}\", \"reason\": \"{}\"}}",
        "x".repeat(9000)
    );
    let refused: [(&str, Vec<&str>, &str, u16, &str); 9] = [
        (
            "the report's cross-origin POST",
            vec![
                "Origin: http://evil.example",
                "Content-Type: text/plain",
                "Host: evil.example",
            ],
            &ban,
            403,
            "is not this API's address",
        ),
        (
            "the same with the token",
            vec![
                "Origin: http://evil.example",
                "Content-Type: text/plain",
                "Host: evil.example",
                &bearer,
            ],
            &ban,
            403,
            "is not this API's address",
        ),
        (
            "an Origin",
            vec![&own_host, "Origin: http://evil.example", json, &bearer],
            &ban,
            403,
            "requests from web pages are refused",
        ),
        (
            "a rebound name",
            vec![&other_port, json, &bearer],
            &ban,
            403,
            "is not this API's address",
        ),
        (
            "a text/plain body",
            vec![&own_host, "Content-Type: text/plain", &bearer],
            &ban,
            415,
            "application/json",
        ),
        (
            "no token",
            vec![&own_host, json],
            &ban,
            401,
            "Authorization: Bearer",
        ),
        (
            "a wrong token",
            vec![&own_host, json, &wrong],
            &ban,
            401,
            "wrong token",
        ),
        ("no token on a GET", vec![&own_host], "", 401, "admin.token"),
        (
            "a body beyond the bound",
            vec![&own_host, json, &bearer],
            &too_long,
            413,
            "at most 8192 bytes",
        ),
    ];
    for (what, headers, body, status, message) in refused {
        let method = if body.is_empty() {
            "GET /bans"
        } else {
            "POST /bans"
        };
        let reply = admin_request(&guard, method, &headers, body)?;
        ensure!(
            reply.status == status && reply.body.contains(message),
            "{what}: {reply:?}"
        );
        if status == 401 {
            ensure!(
                reply
                    .head
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{what}: {reply:?}"
            );
        }
    }
    ensure!(
        stdout(&guard.bans(&["list"])?) == "no bans\n",
        "a refused request banned"
    );
    guard.wait_for_log("admin API request refused", SETTLE)?;

    // The program's request with the token passes, under the address or localhost.
    let listed = admin_request(&guard, "GET /bans", &[&localhost, &bearer], "")?;
    ensure!(listed.status == 200, "{listed:?}");
    let added = admin_request(&guard, "POST /bans", &[&own_host, json, &bearer], &ban)?;
    ensure!(added.status == 201, "{added:?}");
    let removed = guard.bans(&["remove", &TARGET.to_string()])?;
    ensure!(removed.status.success(), "{removed:?}");

    // The CLI with a token file of another start says which file it sent.
    let stale = dir.path().join("stale.token");
    std::fs::write(&stale, format!("{}\n", "0".repeat(64)))?;
    let refused = guard.bans(&["--token-file", &stale.display().to_string(), "list"])?;
    ensure!(
        refused.status.code() == Some(1)
            && stderr(&refused).contains("wrong token")
            && stderr(&refused).contains(&format!("read from {}", stale.display())),
        "{refused:?}"
    );

    // A user who cannot read the token file cannot use the API: the file is 0640, and (when
    // this runs as root) `nobody` is refused by it.
    let token = std::fs::metadata(guard.token_file())?;
    ensure!(token.mode() & 0o777 == 0o640, "mode {:o}", token.mode());
    let as_nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
    ];
    let nobody_runs_it = token.uid() == 0
        && guard
            .cli()
            .run_as(&as_nobody, &["--help"])
            .is_ok_and(|out| out.status.success());
    if nobody_runs_it {
        let out = guard
            .cli()
            .run_as(&as_nobody, &["add", &TARGET.to_string()])?;
        ensure!(
            out.status.code() == Some(1)
                && stderr(&out).contains("cannot read the admin token")
                && stderr(&out).contains("ermission denied"),
            "{out:?}"
        );
        ensure!(stdout(&guard.bans(&["list"])?) == "no bans\n");
    } else {
        eprintln!("not root, or setpriv cannot run the binary as nobody: only the mode checked");
    }
    Ok(())
}

#[test]
fn bans_cli_finds_the_token_file_the_config_names() -> anyhow::Result<()> {
    const SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 178);
    let dir = tempfile::tempdir()?;
    let yaml = "admin:\n  token_file: run/admin.token\n";
    let pbx = free_udp_addr(Ipv4Addr::new(127, 0, 0, 179))?;
    let config = DaemonConfig::in_dir(dir.path(), yaml, pbx)?;
    let guard = Daemon::start(&config)?;
    ensure!(
        dir.path().join("run/admin.token").exists() && !guard.token_file().exists(),
        "the token is not where the config says"
    );
    // Without the config the default places hold no token.
    let lost = guard.bans(&["list"])?;
    ensure!(
        lost.status.code() == Some(1) && stderr(&lost).contains("no admin token at"),
        "{lost:?}"
    );
    let file = config.config.display().to_string();
    let add = guard.bans(&[
        "--config",
        &file,
        "add",
        &SOURCE.to_string(),
        "--for",
        "10m",
    ])?;
    ensure!(add.status.success(), "{add:?}");
    let listed = guard.bans(&["--config", &file, "list", "--json"])?;
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    ensure!(ban_of(&list, SOURCE).is_some(), "{list}");
    Ok(())
}

/// Whether `/metrics` counts `bans` manual bans and `lifts` manual lifts.
fn manual_bans_and_lifts_counted(guard: &Daemon, bans: f64, lifts: f64) -> anyhow::Result<()> {
    let scrape = guard.scrape()?;
    let banned = scrape.value("sipguard_bans_total", &[("rule", "manual")]);
    let lifted = scrape.value("sipguard_unbans_total", &[("how", "manual")]);
    ensure!(
        banned == Some(bans) && lifted == Some(lifts),
        "{banned:?} manual bans and {lifted:?} lifts, not {bans} and {lifts}:\n{}",
        scrape.text
    );
    Ok(())
}

/// The admin API with the token and the headers a program sends.
fn admin_call(guard: &Daemon, method_path: &str, body: &str) -> anyhow::Result<HttpReply> {
    let host = format!("Host: {}", guard.admin());
    let bearer = format!("Authorization: Bearer {}", guard.token()?);
    let json = "Content-Type: application/json";
    admin_request(guard, method_path, &[&host, json, &bearer], body)
}

#[test]
fn a_network_ban_by_the_api_is_journalled_as_a_network_survives_kill_9_and_is_counted_once(
) -> anyhow::Result<()> {
    const NETWORK: &str = "2001:db8:1:2::/64";
    let dir = tempfile::tempdir()?;
    let pbx = free_udp_addr(Ipv4Addr::new(127, 0, 0, 181))?;
    let config = DaemonConfig::in_dir(dir.path(), "", pbx)?;
    let guard = Daemon::start(&config)?;
    let added = admin_call(
        &guard,
        "POST /bans",
        r#"{"ip": "2001:db8:1:2::99/64", "duration": "2h", "reason": "a /64 of scanners"}"#,
    )?;
    ensure!(added.status == 201, "{added:?}");
    let ban: serde_json::Value = serde_json::from_str(&added.body)?;
    ensure!(
        ban["ip"] == NETWORK && ban["reason"] == "a /64 of scanners",
        "{ban}"
    );
    // Durable when acknowledged: the line is in the journal, the network written as one.
    let journal = std::fs::read_to_string(&config.journal)?;
    ensure!(
        journal.contains(&format!("\"op\":\"ban\",\"ip\":\"{NETWORK}\"")),
        "{journal}"
    );
    // Counted once, by the relay as the policy publishes it; nothing lifted yet.
    manual_bans_and_lifts_counted(&guard, 1.0, 0.0)?;
    guard.kill()?;

    let guard = Daemon::start(&config)?;
    let listed = bans(&guard)?;
    let restored = listed["bans"]
        .as_array()
        .and_then(|bans| bans.iter().find(|ban| ban["ip"] == NETWORK))
        .with_context(|| format!("the network lost its ban: {listed}"))?;
    for key in ["expires_ms", "offence", "rule", "reason", "first_seen"] {
        ensure!(
            restored[key] == ban[key],
            "{key} changed: {ban} -> {restored}"
        );
    }
    let inside = admin_call(&guard, "DELETE /bans/2001:db8:1:2::5", "")?;
    ensure!(
        inside.status == 404
            && inside
                .body
                .contains(&format!("the ban on {NETWORK} covers it")),
        "{inside:?}"
    );
    let lifted = admin_call(&guard, &format!("DELETE /bans/{NETWORK}"), "")?;
    ensure!(lifted.status == 200, "{lifted:?}");
    ensure!(stdout(&guard.bans(&["list"])?) == "no bans\n");
    // A restored ban is no new ban; the lift is counted once.
    manual_bans_and_lifts_counted(&guard, 0.0, 1.0)?;
    guard.wait_for_log(&format!("source={NETWORK} how=\"manual\""), SETTLE)?;
    guard.kill()?;

    let guard = Daemon::start(&config)?;
    ensure!(
        stdout(&guard.bans(&["list"])?) == "no bans\n",
        "the lifted network came back"
    );
    Ok(())
}
