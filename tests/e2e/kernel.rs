//! Kernel offload (docs/design.md section 11): in a network namespace of the test's own, sipguard
//! with `nftables.enabled` mirrors its bans and its blocklist feeds into its nftables table, and
//! the kernel drops a banned or listed source's packets before sipguard's socket sees them, but
//! never an allowlisted or trusted one's; the shield caps what all other sources send together;
//! without CAP_NET_ADMIN it warns and runs as before. Sources from 127.0.4.0 up for the feeds,
//! 127.0.9.0 for the shield's innocents and 127.100.0.0 up for its forged ones.

use crate::attacks::{ask, request};
use crate::support::{
    in_private_namespace, password, poll_until, Daemon, DaemonConfig, Kamailio, Registration,
    Sipguard, Spoofer, Ua,
};
use anyhow::{ensure, Context};
use serde_json::Value;
use sipguard_policy::{AllowGroup, PolicyConfig, Timestamp};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::{Duration, SystemTime};

const TABLE: &str = "sipguard_e2e";
const WAIT: Duration = Duration::from_secs(5);
const FLOOD: u64 = 200;

fn nft(args: &[&str]) -> anyhow::Result<Value> {
    let out = Command::new("/usr/sbin/nft")
        .arg("-j")
        .args(args)
        .output()
        .context("cannot run nft (scripts/install-test-deps.sh installs nftables)")?;
    ensure!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The elements of one of the table's sets, as nft writes them in JSON.
fn elements(set: &str) -> anyhow::Result<String> {
    let listed = nft(&["list", "set", "inet", TABLE, set])?;
    Ok(listed["nftables"][1]["set"]["elem"].to_string())
}

/// Whether `source` is an element of `set`.
fn in_set(set: &str, source: &str) -> bool {
    elements(set).is_ok_and(|elements| elements.contains(&format!("\"{source}\"")))
}

/// The elements of an interval set, each as `addr`, `addr/len` or `first-last`.
fn intervals(set: &str) -> anyhow::Result<Vec<String>> {
    let listed = nft(&["list", "set", "inet", TABLE, set])?;
    let elements = listed["nftables"][1]["set"]["elem"].as_array();
    Ok(elements
        .into_iter()
        .flatten()
        .map(|elem| match elem {
            Value::String(addr) => addr.clone(),
            _ if elem["prefix"].is_object() => {
                format!(
                    "{}/{}",
                    elem["prefix"]["addr"].as_str().unwrap_or("?"),
                    elem["prefix"]["len"]
                )
            }
            _ => format!(
                "{}-{}",
                elem["range"][0].as_str().unwrap_or("?"),
                elem["range"][1].as_str().unwrap_or("?")
            ),
        })
        .collect())
}

/// Packets counted by the rule dropping the sources of `set` (a ban set, or `feeds4`).
fn dropped_by_rule(set: &str) -> anyhow::Result<u64> {
    let chain = nft(&["list", "chain", "inet", TABLE, "input"])?;
    let kind = if set.starts_with("feeds") {
        "feeds"
    } else {
        "bans"
    };
    let comment = format!("sipguard {kind}: {set}");
    let rules = chain["nftables"].as_array().context("no nftables array")?;
    rules
        .iter()
        .filter_map(|entry| entry.get("rule"))
        .find(|rule| rule["comment"] == comment.as_str())
        .and_then(|rule| {
            rule["expr"]
                .as_array()?
                .iter()
                .find_map(|expr| expr["counter"]["packets"].as_u64())
        })
        .with_context(|| format!("no counter on the {set} rule: {chain}"))
}

/// The (protocol, port) pairs of a port set, sorted, as nft writes each in JSON.
fn ports(table: &str, set: &str) -> anyhow::Result<Vec<String>> {
    let listed = nft(&["list", "set", "inet", table, set])?;
    let mut ports: Vec<String> = listed["nftables"][1]["set"]["elem"]
        .as_array()
        .context("no ports")?
        .iter()
        .map(|elem| elem["elem"]["val"]["concat"].to_string())
        .collect();
    ports.sort();
    Ok(ports)
}

fn received(guard: &Sipguard) -> f64 {
    guard.counter("sipguard_packets_received_total", &["transport=\"udp\""])
}

/// Sends `count` clean OPTIONS from `socket` to sipguard.
fn send(socket: &UdpSocket, to: SocketAddr, count: u64) -> anyhow::Result<()> {
    let from = socket.local_addr()?;
    for n in 0..count {
        let message = request("OPTIONS", from, "100", &format!("kernel-{n}"), "e2e-phone");
        socket.send_to(message.as_bytes(), to)?;
    }
    Ok(())
}

fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

#[test]
fn banned_sources_are_dropped_by_the_kernel_until_the_ban_expires_or_is_lifted(
) -> anyhow::Result<()> {
    in_private_namespace(&[], || {
        // The PBX: a bare socket (forwarded messages only need somewhere to go).
        let pbx = UdpSocket::bind("127.0.0.1:0")?;
        let guard = Sipguard::start_with(pbx.local_addr()?, |config| {
            config.nftables = Some(sipguard::config::NftConfig {
                table: TABLE.to_owned(),
                ..Default::default()
            });
        })?;
        let policy = guard.policy();
        poll_until("the nftables table", WAIT, || {
            nft(&["list", "table", "inet", TABLE]).ok()
        })?;
        // The rules match sipguard's own listeners and nothing else (no ssh, no other port).
        let mut expected = vec![
            format!("[\"tcp\",{}]", guard.tcp_addr().port()),
            format!("[\"udp\",{}]", guard.addr().port()),
        ];
        expected.sort();
        for set in ["ban_ports", "feed_ports"] {
            let ports = ports(TABLE, set)?;
            ensure!(ports == expected, "the {set} rules' ports: {ports:?}");
        }

        // Before any ban, the source reaches sipguard.
        let scanner: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
        let socket = UdpSocket::bind((scanner, 0))?;
        let before = received(&guard);
        send(&socket, guard.addr(), 1)?;
        poll_until("sipguard to receive the first packet", WAIT, || {
            (received(&guard) > before).then_some(())
        })?;

        // Banned for 3 s: the kernel drops its flood, sipguard's socket never sees it.
        let ban = policy
            .ban_manually(IpAddr::from(scanner), Duration::from_secs(3), None, now())
            .context("ban refused")?;
        poll_until("the ban in the addr4 set", WAIT, || {
            in_set("addr4", "127.0.0.5").then_some(())
        })?;
        let flat = received(&guard);
        let counted = dropped_by_rule("addr4")?;
        send(&socket, guard.addr(), FLOOD)?;
        poll_until("the rule to count the flood", WAIT, || {
            (dropped_by_rule("addr4").ok()? >= counted + FLOOD).then_some(())
        })?;
        ensure!(
            received(&guard) == flat,
            "sipguard received {} packets of a source the kernel drops",
            received(&guard) - flat
        );

        // The element expires with the ban, never after it.
        poll_until("the element to expire", WAIT, || {
            (!in_set("addr4", "127.0.0.5")).then_some(())
        })?;
        ensure!(
            now() <= ban.expires + Duration::from_millis(500),
            "the element outlived the ban"
        );
        poll_until("the ban itself to end", WAIT, || {
            (!policy.is_banned(IpAddr::from(scanner), now())).then_some(())
        })?;
        send(&socket, guard.addr(), 1)?;
        poll_until("sipguard to receive from it again", WAIT, || {
            (received(&guard) > flat).then_some(())
        })?;

        // Lifting takes the element out at once.
        let lifted: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
        policy.ban_manually(IpAddr::from(lifted), Duration::from_secs(3600), None, now());
        poll_until("the second ban in the set", WAIT, || {
            in_set("addr4", "127.0.0.6").then_some(())
        })?;
        policy
            .lift(IpAddr::from(lifted))
            .context("nothing to lift")?;
        poll_until(
            "the lifted element to leave",
            Duration::from_secs(1),
            || (!in_set("addr4", "127.0.0.6")).then_some(()),
        )?;
        let socket = UdpSocket::bind((lifted, 0))?;
        let before = received(&guard);
        send(&socket, guard.addr(), 1)?;
        poll_until("sipguard to receive from the lifted source", WAIT, || {
            (received(&guard) > before).then_some(())
        })?;

        // IPv6: an address and a prefix, each in its own set.
        let v6: IpAddr = "2001:db8:7::5".parse()?;
        let prefix: sipguard_policy::IpNet = "2001:db8:8::/64".parse()?;
        policy.ban_manually(v6, Duration::from_secs(600), None, now());
        policy.ban_manually(prefix, Duration::from_secs(600), None, now());
        poll_until("the IPv6 bans in their sets", WAIT, || {
            let net6 = elements("net6").ok()?;
            (in_set("addr6", "2001:db8:7::5") && net6.contains("2001:db8:8::")).then_some(())
        })?;

        // The allowlist never enters the set: a banned address allowlisted by a reload leaves it.
        let friend: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 7);
        policy.ban_manually(IpAddr::from(friend), Duration::from_secs(3600), None, now());
        poll_until("the friend's ban in the set", WAIT, || {
            in_set("addr4", "127.0.0.7").then_some(())
        })?;
        policy.reconfigure(PolicyConfig {
            allowlist: vec![AllowGroup::new("friends", ["127.0.0.7/32".parse()?])],
            ..policy.config()
        })?;
        poll_until("the allowlisted address to leave the set", WAIT, || {
            (!in_set("addr4", "127.0.0.7")).then_some(())
        })?;
        ensure!(
            policy
                .ban_manually(IpAddr::from(friend), Duration::from_secs(60), None, now())
                .is_none(),
            "the policy refuses to ban the allowlisted address"
        );
        ensure!(in_set("addr6", "2001:db8:7::5"), "other bans stay");

        guard.stop()?;
        ensure!(
            nft(&["list", "table", "inet", TABLE]).is_err(),
            "the table outlived a clean stop"
        );
        Ok(())
    })
}

#[test]
fn without_cap_net_admin_sipguard_warns_and_relays_as_before() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pbx = UdpSocket::bind("127.0.0.1:0")?;
    pbx.set_read_timeout(Some(WAIT))?;
    let yaml = format!("nftables:\n  enabled: true\n  table: {TABLE}_nocap\n");
    let mut config = DaemonConfig::in_dir(dir.path(), &yaml, pbx.local_addr()?)?;
    config.wrapper = ["setpriv", "--inh-caps=-all", "--bounding-set=-net_admin"]
        .map(String::from)
        .to_vec();
    let daemon = Daemon::start(&config)?;
    daemon.wait_for_log("kernel offload of bans is off", WAIT)?;
    let phone = UdpSocket::bind("127.0.0.1:0")?;
    send(&phone, daemon.addr(), 1)?;
    let mut buf = [0u8; 2048];
    let (len, _) = pbx.recv_from(&mut buf).context("nothing was relayed")?;
    ensure!(
        buf[..len].starts_with(b"OPTIONS "),
        "relayed: {:?}",
        &buf[..len]
    );
    let scrape = daemon.scrape()?;
    ensure!(
        scrape.text.contains("sipguard_nftables_active 0"),
        "{}",
        scrape.text
    );
    Ok(())
}

/// Whether an OPTIONS from `from` is answered through `guard` within `within`.
fn answered(guard: &Daemon, from: Ipv4Addr, within: Duration) -> anyhow::Result<bool> {
    crate::ops::answered(&UdpSocket::bind((from, 0))?, guard, within)
}

/// Fails unless an OPTIONS from `from` (`who`) is answered through `guard` when `admitted`, and
/// goes unanswered when not.
fn ensure_admitted(
    guard: &Daemon,
    from: Ipv4Addr,
    admitted: bool,
    who: &str,
) -> anyhow::Result<()> {
    let within = if admitted { ANSWER } else { SILENCE };
    let outcome = if admitted { "not answered" } else { "answered" };
    ensure!(
        answered(guard, from, within)? == admitted,
        "{from} ({who}) was {outcome}"
    );
    Ok(())
}

/// How long a source gets to be answered, and how long a dropped one is listened for.
const ANSWER: Duration = Duration::from_secs(5);
const SILENCE: Duration = Duration::from_millis(1000);

/// `sipguard_kernel_dropped_packets_total{set}` as the daemon's /metrics has it now.
fn kernel_dropped(guard: &Daemon, set: &str) -> anyhow::Result<f64> {
    guard
        .scrape()?
        .value("sipguard_kernel_dropped_packets_total", &[("set", set)])
        .context("no sipguard_kernel_dropped_packets_total on /metrics")
}

fn received_by(guard: &Daemon) -> anyhow::Result<f64> {
    Ok(guard
        .scrape()?
        .value("sipguard_packets_received_total", &[("transport", "udp")])
        .unwrap_or(0.0))
}

/// A daemon in front of `pbx` with the feed file `list`, the allowlist `allowlisted` and the
/// offload on, its files in `dir`.
fn daemon_with_feed(
    dir: &std::path::Path,
    pbx: SocketAddr,
    list: &std::path::Path,
    allowlisted: &str,
) -> anyhow::Result<Daemon> {
    std::fs::write(
        dir.join("allowlist.yaml"),
        format!("carriers:\n  - name: carrier\n    cidrs: [\"{allowlisted}\"]\n"),
    )?;
    let yaml = format!(
        "allowlist:\n  file: allowlist.yaml\n\
         feeds:\n  lists:\n    - {{name: local, file: \"{}\", interval: 1h}}\n\
         nftables:\n  enabled: true\n  table: {TABLE}\n",
        list.display()
    );
    Daemon::start(&DaemonConfig::in_dir(dir, &yaml, pbx)?)
}

/// Registers user 1001 from `phone` through `guard` and waits until the kernel's trusted set
/// holds it.
fn register_trusted(guard: &Daemon, phone: Ipv4Addr) -> anyhow::Result<()> {
    let mut ua = Ua::udp(
        SocketAddr::from((phone, 0)),
        guard.addr(),
        "1001",
        password("1001"),
    )?;
    let registered = ua.register(ANSWER)?;
    ensure!(
        matches!(registered, Registration::Registered),
        "{registered:?}"
    );
    poll_until("the phone in the trusted set", WAIT, || {
        in_set("trusted4", &phone.to_string()).then_some(())
    })?;
    Ok(())
}

#[test]
fn feed_listed_sources_are_dropped_by_the_kernel_but_allowlisted_and_trusted_ones_get_through(
) -> anyhow::Result<()> {
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 10);
    const CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 5);
    const BYSTANDER: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 150);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 200);
    const NEIGHBOUR: Ipv4Addr = Ipv4Addr::new(127, 0, 4, 201);
    const DELISTED: Ipv4Addr = Ipv4Addr::new(127, 0, 5, 7);
    in_private_namespace(&[], || {
        let pbx = Kamailio::start()?;
        let dir = tempfile::tempdir()?;
        let list = dir.path().join("blocklist.txt");
        std::fs::write(&list, format!("# scanners\n127.0.4.0/25\n{DELISTED}\n"))?;
        let mut guard = daemon_with_feed(dir.path(), pbx.addr(), &list, &format!("{CARRIER}/32"))?;
        let listed_at_start = vec!["127.0.4.0/25".to_owned(), DELISTED.to_string()];
        poll_until("the feed's ranges in the kernel", WAIT, || {
            (intervals("feeds4").ok()? == listed_at_start).then_some(())
        })
        .with_context(|| format!("log:\n{}", guard.log().join("\n")))?;
        ensure!(
            intervals("allow4")? == [CARRIER.to_string()],
            "the allowlist is the feed rule's exemption: {:?}",
            intervals("allow4")
        );

        // A listed scanner's flood is counted by the feed rule and never reaches sipguard.
        let scanner = UdpSocket::bind((SCANNER, 0))?;
        let flat = received_by(&guard)?;
        let counted = dropped_by_rule("feeds4")?;
        send(&scanner, guard.addr(), FLOOD)?;
        poll_until("the feed rule to count the flood", WAIT, || {
            (dropped_by_rule("feeds4").ok()? >= counted + FLOOD).then_some(())
        })?;
        ensure!(
            received_by(&guard)? == flat,
            "sipguard received {} packets of a source the kernel drops",
            received_by(&guard)? - flat
        );
        // ... and /metrics shows what the kernel dropped.
        poll_until("the kernel's feed drops on /metrics", WAIT * 3, || {
            (kernel_dropped(&guard, "feeds").ok()? >= FLOOD as f64).then_some(())
        })?;
        ensure!(kernel_dropped(&guard, "bans")? == 0.0, "nothing is banned");
        // Only sipguard's ports: the scanner still reaches another service on the host.
        let other = UdpSocket::bind("127.0.0.1:0")?;
        other.set_read_timeout(Some(ANSWER))?;
        scanner.send_to(b"not SIP", other.local_addr()?)?;
        let mut buf = [0u8; 64];
        let (_, from) = other
            .recv_from(&mut buf)
            .context("the kernel dropped a listed source's packet to another port")?;
        ensure!(from.ip() == IpAddr::from(SCANNER));
        // An unlisted neighbour of the range, and an allowlisted address inside it, get through.
        ensure_admitted(&guard, BYSTANDER, true, "not listed")?;
        ensure_admitted(&guard, CARRIER, true, "allowlisted inside a listed range")?;
        ensure_admitted(&guard, DELISTED, false, "listed")?;

        // A phone registers and is trusted: the kernel exempts it as the policy does.
        register_trusted(&guard, PHONE)?;

        // The list grows over the phone and its neighbour and drops an entry; a reload takes it,
        // and the kernel's set is replaced whole.
        std::fs::write(&list, "# scanners\n127.0.4.0/24\n")?;
        guard.hangup();
        poll_until("the new list in the kernel", WAIT, || {
            (intervals("feeds4").ok()? == ["127.0.4.0/24"]).then_some(())
        })
        .with_context(|| format!("log:\n{}", guard.log().join("\n")))?;
        ensure_admitted(
            &guard,
            PHONE,
            true,
            "trusted, listed after it proved itself",
        )?;
        let counted = dropped_by_rule("feeds4")?;
        ensure_admitted(&guard, NEIGHBOUR, false, "listed now, untrusted")?;
        ensure!(
            dropped_by_rule("feeds4")? > counted,
            "the kernel did not drop {NEIGHBOUR}"
        );
        ensure_admitted(&guard, DELISTED, true, "no longer listed")?;
        ensure_admitted(&guard, CARRIER, true, "allowlisted, after the reload")?;
        Ok(())
    })
}

#[test]
fn a_feed_of_100k_ranges_reaches_the_kernel_in_one_transaction() -> anyhow::Result<()> {
    const RANGES: u32 = 100_000;
    // Every 16th address of 10.0.0.0/8 from 10.0.0.16 on: single addresses and /29s in turn,
    // never touching, so each stays a range of its own.
    let entry = |n: u32, shift: u32| {
        let at = u32::from(Ipv4Addr::new(10, 0, 0, 0)) + (n + 1) * 16;
        if n.is_multiple_of(2) {
            format!("{}\n", Ipv4Addr::from(at + shift))
        } else {
            format!("{}/29\n", Ipv4Addr::from(at + 8 * shift))
        }
    };
    in_private_namespace(&[], || {
        let pbx = UdpSocket::bind("127.0.0.1:0")?;
        let dir = tempfile::tempdir()?;
        let list = dir.path().join("blocklist.txt");
        std::fs::write(&list, (0..RANGES).map(|n| entry(n, 0)).collect::<String>())?;
        let mut guard = daemon_with_feed(dir.path(), pbx.local_addr()?, &list, "192.0.2.1/32")?;
        let took = |guard: &Daemon, nth: usize| {
            poll_until(
                "the feed pushed to nftables",
                Duration::from_secs(60),
                || {
                    guard
                        .log()
                        .into_iter()
                        .filter(|line| line.contains("blocklist feeds pushed to nftables"))
                        .nth(nth)
                },
            )
            .with_context(|| format!("log:\n{}", guard.log().join("\n")))
        };
        let first = took(&guard, 0)?;
        ensure!(first.contains(&format!("ranges={RANGES}")), "{first}");
        ensure!(
            intervals("feeds4")?.len() == RANGES as usize,
            "not every range went in"
        );
        // A changed list replaces all of them: the other half of each range listed now.
        std::fs::write(&list, (0..RANGES).map(|n| entry(n, 1)).collect::<String>())?;
        guard.hangup();
        let second = took(&guard, 1)?;
        let now_listed = intervals("feeds4")?;
        ensure!(
            now_listed.len() == RANGES as usize,
            "{} ranges",
            now_listed.len()
        );
        ensure!(
            now_listed[0] == "10.0.0.17" && now_listed[1] == "10.0.0.40/29",
            "{:?}",
            &now_listed[..2]
        );
        let took_ms = |line: &str| {
            line.split("took_ms=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|ms| ms.parse::<u64>().ok())
                .with_context(|| format!("no took_ms in {line}"))
        };
        let (first, second) = (took_ms(&first)?, took_ms(&second)?);
        eprintln!("{RANGES} ranges pushed to nftables in {first} ms, replaced in {second} ms");
        // Seconds, not minutes: nothing in the push grows faster than the list.
        ensure!(first < 10_000 && second < 10_000, "{first} ms, {second} ms");
        Ok(())
    })
}

/// The shield's drops: the packets counted by the elements of `shield_ports`.
fn shield_dropped() -> anyhow::Result<u64> {
    let listed = nft(&["list", "set", "inet", TABLE, "shield_ports"])?;
    let elements = listed["nftables"][1]["set"]["elem"]
        .as_array()
        .context("shield_ports has no elements")?;
    Ok(elements
        .iter()
        .filter_map(|elem| elem["elem"]["counter"]["packets"].as_u64())
        .sum())
}

/// The chain's shield rules, one a family when the shield is on.
fn shield_rules() -> anyhow::Result<usize> {
    let chain = nft(&["list", "chain", "inet", TABLE, "input"])?;
    let rules = chain["nftables"].as_array().context("no nftables array")?;
    Ok(rules
        .iter()
        .filter_map(|entry| entry["rule"]["comment"].as_str())
        .filter(|comment| comment.starts_with("sipguard shield"))
        .count())
}

/// The shield's limit object as (rate a second, burst), `None` when there is none.
fn shield_limit() -> Option<(u64, u64)> {
    let listed = nft(&["list", "limit", "inet", TABLE, "shield"]).ok()?;
    let limit = &listed["nftables"][1]["limit"];
    // nft leaves out a burst of 5, its default.
    Some((
        limit["rate"].as_u64()?,
        limit["burst"].as_u64().unwrap_or(5),
    ))
}

/// Sends `count` OPTIONS to `to`, each from a forged source of its own (127.100.0.0 and up, from
/// the `first`th), `pace` apart; how long it took.
fn forge(
    spoofer: &Spoofer,
    to: SocketAddr,
    first: u32,
    count: u32,
    pace: Duration,
) -> anyhow::Result<Duration> {
    let SocketAddr::V4(to) = to else {
        anyhow::bail!("sipguard listens on {to}, not IPv4")
    };
    let message = request(
        "OPTIONS",
        SocketAddr::from((Ipv4Addr::new(127, 100, 0, 1), 5060)),
        "100",
        "shield",
        "e2e-stranger",
    );
    let started = std::time::Instant::now();
    for n in first..first + count {
        let from = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 100, 0, 0)) + n);
        spoofer.send(SocketAddrV4::new(from, 5060), to, message.as_bytes())?;
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    Ok(started.elapsed())
}

/// The sipguard config of the shield test, with the shield at `limit`.
fn shield_yaml(limit: u32) -> String {
    format!(
        "allowlist:\n  file: allowlist.yaml\n\
         nftables:\n  enabled: true\n  table: {TABLE}\n  untrusted_limit: {limit}\n"
    )
}

#[test]
fn the_shield_caps_a_forged_flood_in_the_kernel_while_allowlisted_and_trusted_sources_get_every_packet_through(
) -> anyhow::Result<()> {
    const LIMIT: u32 = 200;
    const CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 9, 5);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 9, 200);
    /// OPTIONS each of the carrier and the phone sends during the flood.
    const INNOCENT: usize = 100;
    /// The flood's least size.
    const FLOOD_AT_LEAST: u32 = 20_000;
    in_private_namespace(&[], || {
        let pbx = Kamailio::start()?;
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("allowlist.yaml"),
            format!("carriers:\n  - name: carrier\n    cidrs: [\"{CARRIER}/32\"]\n"),
        )?;
        let config = DaemonConfig::in_dir(dir.path(), &shield_yaml(LIMIT), pbx.addr())?;
        let mut guard = Daemon::start(&config)?;
        poll_until("the shield's rules", WAIT, || {
            (shield_rules().ok()? == 2).then_some(())
        })
        .with_context(|| format!("log:\n{}", guard.log().join("\n")))?;
        ensure!(
            shield_limit() == Some((u64::from(LIMIT), 5)),
            "the limit: {:?}",
            shield_limit()
        );
        let spoofer = Spoofer::new()?;

        // A phone registers and is trusted (two untrusted packets, well under the limit).
        register_trusted(&guard, PHONE)?;

        // Untrusted traffic under the limit (100 a second, each packet from a new source)
        // passes untouched.
        let before = received_by(&guard)?;
        forge(&spoofer, guard.addr(), 0, 60, Duration::from_millis(10))?;
        poll_until("sipguard to receive the untrusted packets", WAIT, || {
            (received_by(&guard).ok()? >= before + 60.0).then_some(())
        })?;
        ensure!(
            shield_dropped()? == 0,
            "the shield dropped traffic under its limit"
        );

        // A flood with a new forged source per packet, and beside it the allowlisted carrier and
        // the trusted phone, each asking one OPTIONS after another: every one is answered.
        let before = received_by(&guard)?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        let (flood, innocent) = std::thread::scope(|scope| {
            let flood = scope.spawn(|| -> anyhow::Result<(u32, Duration)> {
                let (mut sent, mut took) = (0, Duration::ZERO);
                while sent < FLOOD_AT_LEAST || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    took += forge(&spoofer, guard.addr(), 1_000 + sent, 500, Duration::ZERO)?;
                    sent += 500;
                }
                Ok((sent, took))
            });
            let innocent = (|| -> anyhow::Result<Vec<String>> {
                let carrier = UdpSocket::bind((CARRIER, 0))?;
                let phone = UdpSocket::bind((PHONE, 0))?;
                let mut unanswered = Vec::new();
                for n in 0..INNOCENT {
                    for (who, socket) in [("carrier", &carrier), ("phone", &phone)] {
                        let (id, reply) = ask(
                            socket,
                            guard.addr(),
                            "OPTIONS",
                            "1001",
                            "e2e-innocent",
                            ANSWER,
                        )?;
                        if reply.is_none() {
                            unanswered.push(format!("{who} #{n} ({id})"));
                        }
                    }
                }
                Ok(unanswered)
            })();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            (flood.join(), innocent)
        });
        let (sent, took) = flood.map_err(|_| anyhow::anyhow!("the flood panicked"))??;
        let unanswered = innocent?;
        ensure!(
            unanswered.is_empty(),
            "unanswered during the flood: {unanswered:?}"
        );
        let dropped = shield_dropped()?;
        let received = poll_until("sipguard to drain what passed", WAIT, || {
            let received = received_by(&guard).ok()? - before;
            let passed = u64::from(sent) - dropped.min(u64::from(sent));
            (received >= passed as f64).then_some(received)
        })?;
        let rate = f64::from(sent) / took.as_secs_f64();
        eprintln!(
            "shield at {LIMIT}/s: {sent} forged packets in {took:?} ({rate:.0}/s): the kernel \
             dropped {dropped}, sipguard received {received} (with the {} innocent OPTIONS, all \
             answered)",
            2 * INNOCENT
        );
        // What passed is the limit's share of the flood's time and the burst; allow the
        // innocents' own packets and the time the flood thread took to start and stop.
        let allowed = f64::from(LIMIT) * (took.as_secs_f64() + 0.5) + 5.0 + 2.0 * INNOCENT as f64;
        ensure!(
            received <= allowed,
            "sipguard received {received} packets, over the {allowed:.0} the shield lets by"
        );
        ensure!(
            dropped as f64 >= f64::from(sent) - allowed,
            "the kernel dropped {dropped} of {sent}"
        );
        poll_until("the shield's drops on /metrics", WAIT * 3, || {
            (kernel_dropped(&guard, "shield").ok()? >= dropped as f64).then_some(())
        })?;

        // A reload raises the limit: the kernel's limit follows, and a pace the old limit would
        // have cut (1,000 a second) passes untouched.
        std::fs::write(&config.config, shield_yaml(2_000))?;
        guard.hangup();
        poll_until("the raised limit in the kernel", WAIT, || {
            (shield_limit()? == (2_000, 20)).then_some(())
        })
        .with_context(|| format!("log:\n{}", guard.log().join("\n")))?;
        ensure!(shield_rules()? == 2, "the rules after the reload");
        let (before, counted) = (received_by(&guard)?, shield_dropped()?);
        forge(
            &spoofer,
            guard.addr(),
            100_000,
            300,
            Duration::from_millis(1),
        )?;
        poll_until("sipguard to receive the faster pace", WAIT, || {
            (received_by(&guard).ok()? >= before + 300.0).then_some(())
        })?;
        ensure!(
            shield_dropped()? == counted,
            "the shield dropped traffic under its raised limit"
        );

        // 0 turns it off: no shield rule, no limit, and a burst well past the old limit passes.
        std::fs::write(&config.config, shield_yaml(0))?;
        guard.hangup();
        poll_until("the shield's rules to go", WAIT, || {
            (shield_rules().ok()? == 0 && shield_limit().is_none()).then_some(())
        })
        .with_context(|| format!("log:\n{}", guard.log().join("\n")))?;
        let before = received_by(&guard)?;
        forge(&spoofer, guard.addr(), 200_000, 300, Duration::ZERO)?;
        poll_until("sipguard to receive the whole burst", WAIT, || {
            (received_by(&guard).ok()? >= before + 300.0).then_some(())
        })?;
        ensure!(shield_dropped()? == counted, "no shield, no drops");
        ensure!(
            answered(&guard, CARRIER, ANSWER)?,
            "the carrier after the reloads"
        );
        Ok(())
    })
}
