//! Kernel offload (docs/design.md section 11): in a network namespace of the test's own, sipguard
//! with `nftables.enabled` mirrors its bans into its nftables table, and the kernel drops a
//! banned source's packets before sipguard's socket sees them; without CAP_NET_ADMIN it warns and
//! runs as before.

use crate::attacks::request;
use crate::support::{in_private_namespace, poll_until, Daemon, DaemonConfig, Sipguard};
use anyhow::{ensure, Context};
use serde_json::Value;
use sipguard_policy::{AllowGroup, PolicyConfig, Timestamp};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
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

/// Packets counted by the rule dropping the sources of `set`.
fn dropped_by_rule(set: &str) -> anyhow::Result<u64> {
    let chain = nft(&["list", "chain", "inet", TABLE, "input"])?;
    let comment = format!("sipguard bans: {set}");
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
            });
        })?;
        let policy = guard.policy();
        poll_until("the nftables table", WAIT, || {
            nft(&["list", "table", "inet", TABLE]).ok()
        })?;
        // The rules match sipguard's own listeners and nothing else (no ssh, no other port).
        let listed = nft(&["list", "set", "inet", TABLE, "ports"])?;
        let mut ports: Vec<String> = listed["nftables"][1]["set"]["elem"]
            .as_array()
            .context("no ports")?
            .iter()
            .map(|elem| elem["concat"].to_string())
            .collect();
        ports.sort();
        let mut expected = vec![
            format!("[\"tcp\",{}]", guard.tcp_addr().port()),
            format!("[\"udp\",{}]", guard.addr().port()),
        ];
        expected.sort();
        ensure!(ports == expected, "the rule's ports: {ports:?}");

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
