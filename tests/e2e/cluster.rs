//! Shared bans (docs/design.md section 11): two in-process sipguard nodes and a real redis-server.
//! A ban earned on one node holds on the other within a second, a lift travels back, a restarted
//! node catches up, both go on alone while Redis is down and converge when it returns, and a node
//! never applies a ban of an address it allowlists. Over `rediss://` (a redis-server that speaks
//! only TLS, with a test CA's certificate) bans travel the same way, and a node that trusts
//! another CA, or shows no client certificate where Redis asks for one, stays apart and alone.

use crate::attacks::request;
use crate::support::certs::TestCa;
use crate::support::{poll_until, Redis, RedisTls, Sipguard};
use anyhow::{ensure, Context};
use sipguard::config::ClusterConfig;
use sipguard::TlsFiles;
use sipguard_policy::{AllowGroup, RuleId, Timestamp};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
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
    let guard = start_node(pbx, redis, node, allowlist, Tls::default())?;
    connected(&guard, true)?;
    Ok(guard)
}

/// The PEM files a node reaches a `rediss://` Redis with.
#[derive(Default)]
struct Tls {
    ca_file: Option<PathBuf>,
    client_identity: Option<TlsFiles>,
}

/// A node named `node` told to share bans through `redis`, with `allowlist` and `tls`; not
/// waited on to connect.
fn start_node(
    pbx: &UdpSocket,
    redis: &Redis,
    node: &str,
    allowlist: &[&str],
    tls: Tls,
) -> anyhow::Result<Sipguard> {
    let networks = allowlist
        .iter()
        .map(|net| net.parse())
        .collect::<Result<Vec<_>, _>>()?;
    let allowlist = vec![AllowGroup::new("carriers", networks)];
    Sipguard::start_with(pbx.local_addr()?, |config| {
        config.cluster = Some(ClusterConfig {
            redis_url: redis.url(),
            ca_file: tls.ca_file,
            client_identity: tls.client_identity,
            node: node.to_owned(),
            key_prefix: "e2e:".to_owned(),
        });
        config.policy.allowlist = allowlist;
    })
}

/// Waits until `guard` has failed to connect at least twice (a first try and a retry), and
/// checks it never connected.
fn kept_apart(guard: &Sipguard) -> anyhow::Result<()> {
    poll_until("two failed connections", Duration::from_secs(15), || {
        let errors = guard.render().lines().find_map(|line| {
            line.strip_prefix("sipguard_cluster_errors_total ")?
                .parse::<f64>()
                .ok()
        });
        (errors >= Some(2.0)).then_some(())
    })?;
    let render = guard.render();
    ensure!(
        render.lines().any(|l| l == "sipguard_cluster_connected 0"),
        "connected:\n{render}"
    );
    Ok(())
}

/// A test CA's certificate written as `<stem>-ca.pem` in `dir`.
fn ca_file(ca: &TestCa, dir: &Path, stem: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{stem}-ca.pem"));
    std::fs::write(&path, ca.pem())?;
    Ok(path)
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

#[test]
fn over_rediss_a_ban_reaches_the_other_node_and_a_node_trusting_another_ca_goes_on_alone(
) -> anyhow::Result<()> {
    const SCANNER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 91);
    const SEEN_ALONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 92);
    const PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 93);
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("sipguard e2e Redis CA");
    let trusted = ca_file(&ca, dir.path(), "redis")?;
    let other = ca_file(&TestCa::new("another CA"), dir.path(), "other")?;
    let redis = Redis::start_tls(&RedisTls {
        issued: &ca.issue(dir.path(), "redis", false),
        client_ca: &trusted,
        client_certificates: false,
    })?;
    ensure!(
        redis.url().starts_with("rediss://127.0.0.1:"),
        "{}",
        redis.url()
    );
    let pbx = UdpSocket::bind("127.0.0.1:0")?;
    let trusting = || Tls {
        ca_file: Some(trusted.clone()),
        client_identity: None,
    };
    let a = start_node(&pbx, &redis, "a", &[], trusting())?;
    let b = start_node(&pbx, &redis, "b", &[], trusting())?;
    connected(&a, true)?;
    connected(&b, true)?;

    scan(&a, SCANNER)?;
    let on_b = poll_until("the ban to reach node b", PROPAGATION, || {
        b.ban(SCANNER.into())
    })?;
    ensure!(on_b.rule == RuleId::Scanner, "b holds {on_b:?}");
    dropped_as_banned(&b, SCANNER)?;

    // Trusting another CA, a node never connects (so never catches up with a's ban), and
    // relays and bans on its own.
    let stranger = start_node(
        &pbx,
        &redis,
        "stranger",
        &[],
        Tls {
            ca_file: Some(other),
            client_identity: None,
        },
    )?;
    kept_apart(&stranger)?;
    ensure!(
        stranger.ban(SCANNER.into()).is_none(),
        "caught up without TLS"
    );
    relayed(&stranger, PHONE)?;
    scan(&stranger, SEEN_ALONE)?;
    ensure!(
        stranger
            .render()
            .lines()
            .any(|l| l == "sipguard_cluster_published_total 0"),
        "published:\n{}",
        stranger.render()
    );
    ensure!(
        a.ban(SEEN_ALONE.into()).is_none(),
        "the stranger's ban reached a"
    );
    kept_apart(&stranger)?;
    a.stop()?;
    b.stop()?;
    stranger.stop()
}

#[test]
fn over_rediss_a_redis_that_asks_for_client_certificates_admits_only_the_node_that_shows_one(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("sipguard e2e Redis CA");
    let trusted = ca_file(&ca, dir.path(), "redis")?;
    let redis = Redis::start_tls(&RedisTls {
        issued: &ca.issue(dir.path(), "redis", false),
        client_ca: &trusted,
        client_certificates: true,
    })?;
    let issued = ca.issue(dir.path(), "node", false);
    let pbx = UdpSocket::bind("127.0.0.1:0")?;
    let shown = start_node(
        &pbx,
        &redis,
        "shown",
        &[],
        Tls {
            ca_file: Some(trusted.clone()),
            client_identity: Some(TlsFiles {
                certificate: issued.certificate,
                key: issued.key,
            }),
        },
    )?;
    let unshown = start_node(
        &pbx,
        &redis,
        "unshown",
        &[],
        Tls {
            ca_file: Some(trusted),
            client_identity: None,
        },
    )?;
    connected(&shown, true)?;
    kept_apart(&unshown)?;
    shown.stop()?;
    unshown.stop()
}
