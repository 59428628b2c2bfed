//! Blocklist feeds and allowlist names, on the real binary: a VoIPBL-style list and a fake
//! APIBAN served over HTTP by a real server in the test, a list file edited on disk and
//! reloaded, sipguard's own bans shared back as a list, and an allowlisted carrier by name
//! served by a real dnsmasq whose answer moves. Sources from 127.0.2.10 up.

use crate::support::{
    http_exchange, poll_until, Daemon, DaemonConfig, Dnsmasq, FeedServer, Kamailio,
};
use anyhow::{ensure, Context};
use serde_json::Value;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

/// How long a fetch, a reload or a DNS move may take to show.
const SETTLE: Duration = Duration::from_secs(30);
/// How long to wait for an answer that must not come.
const SILENCE: Duration = Duration::from_millis(1000);

/// Whether an OPTIONS from `from` through sipguard is answered within `within`.
fn answered(guard: &Daemon, from: Ipv4Addr, within: Duration) -> anyhow::Result<bool> {
    crate::ops::answered(&UdpSocket::bind((from, 0))?, guard, within)
}

/// Waits until `from` is answered (`admitted`) or goes unanswered.
fn wait_admitted(guard: &Daemon, from: Ipv4Addr, admitted: bool) -> anyhow::Result<()> {
    let what = if admitted { "admitted" } else { "dropped" };
    poll_until(&format!("{from} to be {what}"), SETTLE, || {
        let within = if admitted {
            Duration::from_millis(500)
        } else {
            SILENCE
        };
        (answered(guard, from, within).ok()? == admitted).then_some(())
    })
    .with_context(|| format!("log:\n{}", guard.log().join("\n")))
}

/// `sipguard bans feeds --json`: each feed by name.
fn feeds(guard: &Daemon) -> anyhow::Result<Vec<Value>> {
    let out = guard.bans(&["feeds", "--json"])?;
    ensure!(out.status.success(), "bans feeds failed: {out:?}");
    let value: Value = serde_json::from_slice(&out.stdout)?;
    Ok(value["feeds"].as_array().cloned().unwrap_or_default())
}

fn feed(guard: &Daemon, name: &str) -> anyhow::Result<Value> {
    feeds(guard)?
        .into_iter()
        .find(|feed| feed["name"] == name)
        .with_context(|| format!("no feed {name}"))
}

fn wait_feed(
    guard: &Daemon,
    name: &str,
    what: &str,
    test: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    poll_until(&format!("feed {name}: {what}"), SETTLE, || {
        feed(guard, name).ok().filter(|feed| test(feed))
    })
    .with_context(|| {
        format!(
            "feeds: {:?}\nlog:\n{}",
            feeds(guard),
            guard.log().join("\n")
        )
    })
}

#[test]
fn a_feed_over_http_drops_its_scanners_before_parsing_spares_the_allowlist_and_outlives_its_server(
) -> anyhow::Result<()> {
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 10);
    const CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 11);
    const DELISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 12);
    const APIBAN_FIRST: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 13);
    const APIBAN_LATER: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 14);
    const BYSTANDER: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 15);
    let pbx = Kamailio::start()?;
    let server = FeedServer::start()?;
    server.set(
        "/voipbl.txt",
        &format!("# VoIPBL-style list\n{SCANNER}\n{CARRIER}\n127.0.2.12/32\n203.0.113.0/24\n"),
    );
    // APIBAN hands the list out in batches, each naming the next, until "none".
    server.set_json(
        "/api/k3y/banned",
        &format!("{{\"ipaddress\": [\"{APIBAN_FIRST}\"], \"ID\": \"7\"}}"),
    );
    server.set_json(
        "/api/k3y/banned/7",
        &format!("{{\"ipaddress\": [\"{APIBAN_LATER}\"], \"ID\": \"8\"}}"),
    );
    server.set_json("/api/k3y/banned/8", "{\"ipaddress\": [], \"ID\": \"none\"}");
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("allowlist.yaml"),
        format!("carriers:\n  - name: carrier\n    cidrs: [\"{CARRIER}\"]\n"),
    )?;
    let yaml = format!(
        "allowlist:\n  file: allowlist.yaml\n\
         feeds:\n  lists:\n\
         \x20   - {{name: voipbl, url: \"{}\", interval: 1s}}\n\
         \x20   - {{name: apiban, apiban_key: k3y, apiban_url: \"{}\", interval: 1h}}\n",
        server.url("/voipbl.txt"),
        server.url("/api"),
    );
    let guard = Daemon::start(&DaemonConfig::in_dir(dir.path(), &yaml, pbx.addr())?)?;
    wait_feed(&guard, "voipbl", "4 entries", |feed| feed["entries"] == 4)?;
    wait_feed(&guard, "apiban", "2 entries", |feed| feed["entries"] == 2)?;
    ensure!(
        server.hits("/api/k3y/banned/8") == 1,
        "APIBAN walked to its last batch once"
    );

    // Listed sources are dropped, before parsing: garbage from the scanner is a feed drop,
    // not a malformed message, and nothing is banned.
    for source in [SCANNER, DELISTED, APIBAN_FIRST, APIBAN_LATER] {
        ensure!(!answered(&guard, source, SILENCE)?, "{source} was answered");
    }
    let junk = UdpSocket::bind((SCANNER, 0))?;
    junk.send_to(b"\x16\x03\x01 not SIP at all", guard.addr())?;
    // The carrier the feed also lists is admitted, and counted; an unlisted source is too.
    ensure!(
        answered(&guard, CARRIER, SETTLE)?,
        "the allowlisted carrier was dropped"
    );
    ensure!(
        answered(&guard, BYSTANDER, SETTLE)?,
        "an unlisted source was dropped"
    );
    let voipbl = wait_feed(&guard, "voipbl", "counts", |feed| {
        feed["dropped"].as_u64() >= Some(3) && feed["admitted"].as_u64() >= Some(1)
    })?;
    let scrape = poll_until("the feed's metrics", SETTLE, || {
        let scrape = guard.scrape().ok()?;
        let dropped = scrape.value("sipguard_feed_dropped_total", &[("feed", "voipbl")])?;
        (dropped >= 3.0).then_some(scrape)
    })?;
    let feed_drops = scrape.value(
        "sipguard_packets_dropped_total",
        &[("transport", "udp"), ("reason", "feed")],
    );
    ensure!(feed_drops >= Some(5.0), "{}", scrape.text);
    ensure!(
        scrape.value("sipguard_packets_dropped_total", &[("reason", "not_sip")]) == Some(0.0),
        "the garbage was parsed: {}",
        scrape.text
    );
    ensure!(
        scrape.value("sipguard_feed_admitted_total", &[("feed", "voipbl")]) >= Some(1.0)
            && scrape.value("sipguard_feed_entries", &[("feed", "apiban")]) == Some(2.0),
        "{}",
        scrape.text
    );
    ensure!(voipbl["failures"] == 0, "{voipbl}");
    ensure!(
        super::ops::bans(&guard)?["bans"]
            .as_array()
            .is_some_and(Vec::is_empty),
        "a feed bans nobody"
    );

    // An unchanged list costs a 304; an entry the list drops is admitted after the next poll.
    poll_until("a conditional request answered 304", SETTLE, || {
        (server.not_modified() > 0).then_some(())
    })?;
    server.set(
        "/voipbl.txt",
        &format!("{SCANNER}\n{CARRIER}\n203.0.113.0/24\n"),
    );
    wait_admitted(&guard, DELISTED, true)?;
    wait_feed(&guard, "voipbl", "3 entries", |feed| feed["entries"] == 3)?;

    // The server goes away: the fetches fail and are counted, the last good list stays.
    drop(server);
    let failed = wait_feed(&guard, "voipbl", "a failure", |feed| {
        feed["failures"].as_u64() >= Some(1)
    })?;
    ensure!(failed["entries"] == 3, "{failed}");
    ensure!(
        failed["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    ensure!(
        !answered(&guard, SCANNER, SILENCE)?,
        "the scanner got through once the list's server went away"
    );
    ensure!(answered(&guard, CARRIER, SETTLE)?);
    poll_until("the failure metric", SETTLE, || {
        let scrape = guard.scrape().ok()?;
        (scrape.value("sipguard_feed_failures_total", &[("feed", "voipbl")])? >= 1.0).then_some(())
    })?;
    Ok(())
}

#[test]
fn a_feed_file_edited_on_disk_takes_effect_on_reload_and_own_bans_are_shared_back(
) -> anyhow::Result<()> {
    const FIRST: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 20);
    const SECOND: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 21);
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 22);
    let pbx = Kamailio::start()?;
    let dir = tempfile::tempdir()?;
    let list = dir.path().join("blocklist.txt");
    std::fs::write(&list, format!("# local list\n{FIRST}\n"))?;
    let yaml = "feeds:\n  lists:\n    - {name: local, file: blocklist.txt, interval: 1h}\n  \
                bans_file: shared-bans.txt\n";
    let mut guard = Daemon::start(&DaemonConfig::in_dir(dir.path(), yaml, pbx.addr())?)?;
    wait_feed(&guard, "local", "1 entry", |feed| feed["entries"] == 1)?;
    wait_admitted(&guard, FIRST, false)?;
    ensure!(answered(&guard, SECOND, SETTLE)?);

    std::fs::write(&list, format!("# local list\n{SECOND}\n"))?;
    guard.hangup();
    wait_admitted(&guard, SECOND, false)?;
    wait_admitted(&guard, FIRST, true)?;

    // A scanner banned by the relay is listed in the shared file and by the API, as a plain
    // list that sipguard itself (or VoIPBL-style consumers) can read.
    crate::ops::scan(&guard, SCANNER)?;
    let shared = dir.path().join("shared-bans.txt");
    poll_until("the shared bans file to list the scanner", SETTLE, || {
        let text = std::fs::read_to_string(&shared).ok()?;
        text.lines()
            .any(|line| line == SCANNER.to_string())
            .then_some(())
    })?;
    let out = guard.bans(&["export"])?;
    ensure!(out.status.success(), "bans export: {out:?}");
    let exported = String::from_utf8(out.stdout)?;
    ensure!(
        exported.lines().any(|line| line == SCANNER.to_string()),
        "{exported}"
    );
    // The endpoint takes the admin token like the rest of the API.
    let request = |token: &str| {
        format!(
            "GET /feeds/bans HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\n\r\n",
            guard.admin()
        )
    };
    let refused = http_exchange(guard.admin(), &request("not-the-token"))?;
    ensure!(refused.status == 401, "{refused:?}");
    let listed = http_exchange(guard.admin(), &request(&guard.token()?))?;
    ensure!(
        listed.status == 200 && listed.body.contains(&SCANNER.to_string()),
        "{listed:?}"
    );
    Ok(())
}

#[test]
fn a_carrier_allowlisted_by_name_is_admitted_and_followed_when_its_address_moves(
) -> anyhow::Result<()> {
    const OLD: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 30);
    const NEW: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 31);
    const TRUNK: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 32);
    const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 2, 33);
    let pbx = Kamailio::start()?;
    let mut dns = Dnsmasq::start(
        "carrier.test",
        &format!("{OLD} sip.carrier.test\n{TRUNK} trunk.carrier.test\n"),
        &["_sip._udp.carrier.test,trunk.carrier.test,5060"],
    )?;
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("allowlist.yaml"),
        "carriers:\n  - name: carrier\n    names: [sip.carrier.test, _sip._udp.carrier.test, \
         gone.carrier.test]\n",
    )?;
    let yaml = format!(
        "allowlist:\n  file: allowlist.yaml\n  mode: enforce\n  nameservers: [\"{}\"]\n  \
         min_ttl: 1s\n  max_ttl: 2s\n  grace: 6s\n",
        dns.addr()
    );
    let guard = Daemon::start(&DaemonConfig::in_dir(dir.path(), &yaml, pbx.addr())?)?;
    // Resolved at start: the carrier's host and its SRV target are admitted, nobody else; the
    // name that does not resolve is a warning, not a failed start.
    ensure!(
        answered(&guard, OLD, SETTLE)?,
        "the carrier by name was dropped"
    );
    ensure!(
        answered(&guard, TRUNK, SETTLE)?,
        "the SRV target was dropped"
    );
    ensure!(
        !answered(&guard, STRANGER, SILENCE)?,
        "the allowlist is not enforced"
    );
    guard.wait_for_log("gone.carrier.test", SETTLE)?;

    // The carrier moves: after the TTL the new address is admitted, the old one still for the
    // grace period, then no more.
    dns.set_hosts(&format!(
        "{NEW} sip.carrier.test\n{TRUNK} trunk.carrier.test\n"
    ))?;
    wait_admitted(&guard, NEW, true)?;
    ensure!(
        answered(&guard, OLD, SETTLE)?,
        "the old address was dropped before its grace period ended"
    );
    wait_admitted(&guard, OLD, false)?;
    ensure!(answered(&guard, NEW, SETTLE)?);
    ensure!(answered(&guard, TRUNK, SETTLE)?);
    Ok(())
}
