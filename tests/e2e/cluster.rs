//! Shared bans (docs/design.md section 11): two in-process sipguard nodes and a real redis-server.
//! A ban earned on one node holds on the other within a second, a lift travels back, a restarted
//! node catches up, both go on alone while Redis is down and converge when it returns, and a node
//! never applies a ban of an address it allowlists.

use crate::attacks::request;
use crate::support::{poll_until, Redis, Sipguard};
use anyhow::{ensure, Context};
use sipguard::config::ClusterConfig;
use sipguard_policy::{AllowGroup, RuleId, Timestamp};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(5);
/// How long a change may take to reach the other node.
const PROPAGATION: Duration = Duration::from_secs(1);

/// A node named `node` sharing bans through `redis`, with `allowlist`.
fn node(
    pbx: &UdpSocket,
    redis: &Redis,
    node: &str,
    allowlist: &[&str],
) -> anyhow::Result<Sipguard> {
    let networks = allowlist
        .iter()
        .map(|net| net.parse())
        .collect::<Result<Vec<_>, _>>()?;
    let allowlist = vec![AllowGroup::new("carriers", networks)];
    let guard = Sipguard::start_with(pbx.local_addr()?, |config| {
        config.cluster = Some(ClusterConfig {
            redis_url: redis.url(),
            node: node.to_owned(),
            key_prefix: "e2e:".to_owned(),
        });
        config.policy.allowlist = allowlist;
    })?;
    connected(&guard, true)?;
    Ok(guard)
}

/// Waits until the node's Redis connection is `up` (or down).
fn connected(guard: &Sipguard, up: bool) -> anyhow::Result<()> {
    let line = format!("sipguard_cluster_connected {}", u8::from(up));
    poll_until(&line, Duration::from_secs(15), || {
        guard.render().lines().any(|l| l == line).then_some(())
    })
}

fn send(from: Ipv4Addr, to: SocketAddr, user_agent: &str) -> anyhow::Result<()> {
    let socket = UdpSocket::bind((from, 0))?;
    let message = request(
        "OPTIONS",
        socket.local_addr()?,
        "100",
        &format!("cluster-{from}"),
        user_agent,
    );
    socket.send_to(message.as_bytes(), to)?;
    Ok(())
}

fn counter(guard: &Sipguard, name: &str, label: &str) -> f64 {
    guard.counter(name, &["transport=\"udp\"", label])
}

/// Sends a clean request from `from` to `guard` and waits until it is forwarded to the PBX.
fn relayed(guard: &Sipguard, from: Ipv4Addr) -> anyhow::Result<()> {
    let forwarded = "sipguard_packets_forwarded_total";
    let before = counter(guard, forwarded, "direction=\"to_pbx\"");
    send(from, guard.addr(), "e2e-phone")?;
    poll_until(&format!("a request from {from} relayed"), WAIT, || {
        (counter(guard, forwarded, "direction=\"to_pbx\"") > before).then_some(())
    })
}

/// Sends a clean request from `from` to `guard` and waits until it is dropped as banned.
fn dropped_as_banned(guard: &Sipguard, from: Ipv4Addr) -> anyhow::Result<()> {
    let dropped = "sipguard_packets_dropped_total";
    let before = counter(guard, dropped, "reason=\"banned\"");
    send(from, guard.addr(), "e2e-phone")?;
    poll_until(
        &format!("a request from {from} dropped as banned"),
        WAIT,
        || (counter(guard, dropped, "reason=\"banned\"") > before).then_some(()),
    )
}

/// Sends a scanner's request from `from` and waits until `guard` bans it.
fn scan(guard: &Sipguard, from: Ipv4Addr) -> anyhow::Result<()> {
    send(from, guard.addr(), "friendly-scanner")?;
    poll_until(&format!("{from} banned as a scanner"), WAIT, || {
        guard
            .ban(from.into())
            .filter(|ban| ban.rule == RuleId::Scanner)
    })?;
    Ok(())
}

#[test]
fn a_scanner_banned_on_one_node_is_dropped_by_the_other_within_a_second_and_a_lift_travels_back(
) -> anyhow::Result<()> {
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 61);
    const FRAUD: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 62);
    let redis = Redis::start()?;
    let pbx = UdpSocket::bind("127.0.0.1:0")?;
    let a = node(&pbx, &redis, "a", &[])?;
    let b = node(&pbx, &redis, "b", &[])?;

    scan(&a, SCANNER)?;
    let on_a = a.ban(SCANNER.into()).context("banned on a")?;
    let on_b = poll_until("the ban to reach node b", PROPAGATION, || {
        b.ban(SCANNER.into())
    })?;
    ensure!(
        on_b.rule == RuleId::Scanner && on_b.expires == on_a.expires,
        "b holds {on_b:?}, a {on_a:?}"
    );
    dropped_as_banned(&b, SCANNER)?;

    // A lift on b admits the scanner's address on a again.
    b.policy()
        .lift(IpAddr::from(SCANNER))
        .context("lift on b")?;
    poll_until("the lift to reach node a", PROPAGATION, || {
        a.ban(SCANNER.into()).is_none().then_some(())
    })?;
    relayed(&a, SCANNER)?;

    // b restarted (no journal in-process: all it knows comes from Redis) catches up, reason
    // and all, and a's ban of it was never published back as b's.
    b.stop()?;
    let now = Timestamp::from_system(SystemTime::now());
    a.policy()
        .ban_manually(
            IpAddr::from(FRAUD),
            Duration::from_secs(600),
            Some("toll fraud".into()),
            now,
        )
        .context("ban on a")?;
    let b = node(&pbx, &redis, "b", &[])?;
    let caught_up = poll_until("the restarted node to catch up", WAIT, || {
        b.ban(FRAUD.into())
    })?;
    ensure!(
        caught_up.rule == RuleId::Manual && caught_up.note.as_deref() == Some("toll fraud"),
        "{caught_up:?}"
    );
    ensure!(b.ban(SCANNER.into()).is_none(), "the lifted ban came back");
    ensure!(
        b.render()
            .lines()
            .any(|l| l == "sipguard_cluster_published_total 0"),
        "b published back a ban it adopted:\n{}",
        b.render()
    );
    dropped_as_banned(&b, FRAUD)?;
    a.stop()?;
    b.stop()
}

#[test]
fn with_redis_down_both_nodes_go_on_alone_and_converge_when_it_returns() -> anyhow::Result<()> {
    const SEEN_BY_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 71);
    const SEEN_BY_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 72);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 73);
    let redis = Redis::start()?;
    let addr = redis.addr();
    let pbx = UdpSocket::bind("127.0.0.1:0")?;
    let a = node(&pbx, &redis, "a", &[])?;
    let b = node(&pbx, &redis, "b", &[])?;

    redis.stop();
    connected(&a, false)?;
    connected(&b, false)?;
    // Each node relays and bans on its own.
    relayed(&a, PHONE)?;
    relayed(&b, PHONE)?;
    scan(&a, SEEN_BY_A)?;
    scan(&b, SEEN_BY_B)?;
    ensure!(b.ban(SEEN_BY_A.into()).is_none() && a.ban(SEEN_BY_B.into()).is_none());

    // Redis back, empty: both write what they hold and adopt the other's.
    let _redis = Redis::start_on(addr)?;
    poll_until("the nodes to converge", Duration::from_secs(20), || {
        (a.ban(SEEN_BY_B.into()).is_some() && b.ban(SEEN_BY_A.into()).is_some()).then_some(())
    })?;
    dropped_as_banned(&a, SEEN_BY_B)?;
    dropped_as_banned(&b, SEEN_BY_A)?;
    a.stop()?;
    b.stop()
}

#[test]
fn a_node_admits_an_address_it_allowlists_though_another_node_banned_it() -> anyhow::Result<()> {
    const CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 81);
    let redis = Redis::start()?;
    let pbx = UdpSocket::bind("127.0.0.1:0")?;
    let a = node(&pbx, &redis, "a", &[])?;
    let b = node(&pbx, &redis, "b", &["127.0.0.81/32"])?;
    let ignored = |guard: &Sipguard| {
        guard.counter("sipguard_cluster_received_total", &["result=\"ignored\""])
    };
    let before = ignored(&b);
    let now = Timestamp::from_system(SystemTime::now());
    a.policy()
        .ban_manually(IpAddr::from(CARRIER), Duration::from_secs(600), None, now)
        .context("ban on a")?;
    poll_until("b to hear of the ban and ignore it", PROPAGATION, || {
        (ignored(&b) > before).then_some(())
    })?;
    ensure!(b.ban(CARRIER.into()).is_none(), "b applied the ban");
    relayed(&b, CARRIER)?;
    dropped_as_banned(&a, CARRIER)?;
    a.stop()?;
    b.stop()
}
