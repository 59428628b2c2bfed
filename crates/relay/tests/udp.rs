//! The UDP relay over real loopback sockets, with a plain socket standing in for the PBX so
//! each test can see exactly what reaches it and from where. The relay runs on tokio's clock
//! (`TokioClock`), so tests with a paused clock move its timers without waiting.

use sipguard_policy::{AllowGroup, Policy, PolicyConfig};
use sipguard_relay::{
    bind_udp, Binding, Context, Directory, Listeners, RelayConfig, SessionStore, StreamConfig,
    TokioClock,
};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::timeout;

#[path = "support/metrics.rs"]
mod metrics;

use metrics::Metrics;

const WAIT: Duration = Duration::from_secs(5);

fn options(call_id: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-{call_id};rport\r\n\
From: <sip:1001@127.0.0.1>;tag=t-{call_id}\r\n\
To: <sip:pbx@127.0.0.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Stream limits for a relay with no stream listeners.
fn no_streams() -> StreamConfig {
    StreamConfig {
        max_connections: 1,
        max_connections_per_ip: 1,
        idle_timeout: Duration::from_secs(60),
        message_timeout: Duration::from_secs(2),
    }
}

struct Running {
    addr: SocketAddr,
    pbx: UdpSocket,
    metrics: Metrics,
    directory: Arc<Directory>,
    _stop: oneshot::Sender<()>,
}

async fn start(tune: impl FnOnce(&mut RelayConfig)) -> Running {
    start_on("127.0.0.1:0", tune).await
}

async fn start_on(listen: &str, tune: impl FnOnce(&mut RelayConfig)) -> Running {
    let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    start_with(pbx, listen, PolicyConfig::default(), None, tune).await
}

/// A relay to `pbx` with the given policy settings and session store.
async fn start_with(
    pbx: UdpSocket,
    listen: &str,
    policy: PolicyConfig,
    sessions: Option<Arc<dyn SessionStore>>,
    tune: impl FnOnce(&mut RelayConfig),
) -> Running {
    let mut config = RelayConfig {
        pbx: pbx.local_addr().unwrap(),
        upstream_bind: "127.0.0.1".parse().unwrap(),
        session_idle: Duration::from_secs(3600),
        max_sessions: 100,
    };
    tune(&mut config);
    let listener = bind_udp(listen.parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let metrics = Metrics::default();
    let policy = Arc::new(Policy::new(policy).unwrap());
    let context = Context {
        clock: Arc::new(TokioClock::new()),
        recorder: Some(metrics.recorder()),
        sessions,
        ..Context::new(policy)
    };
    let directory = Arc::clone(&context.directory);
    let listeners = Listeners {
        udp: vec![listener],
        ..Listeners::default()
    };
    tokio::spawn(sipguard_relay::run(
        config,
        no_streams(),
        listeners,
        context,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        addr,
        pbx,
        metrics,
        directory,
        _stop: stop,
    }
}

async fn client(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip, 0)).await.unwrap()
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 65_535];
    let (len, from) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("nothing arrived in time")
        .unwrap();
    buf.truncate(len);
    (buf, from)
}

#[tokio::test]
async fn request_reaches_pbx_unchanged_and_reply_returns_from_public_socket() {
    let relay = start(|_| {}).await;
    let phone = client("127.0.0.2").await;
    let request = options("a1");
    phone.send_to(&request, relay.addr).await.unwrap();

    let (at_pbx, upstream) = recv(&relay.pbx).await;
    assert_eq!(at_pbx, request);
    assert_eq!(upstream.ip().to_string(), "127.0.0.1");

    relay
        .pbx
        .send_to(b"SIP/2.0 200 OK\r\n\r\n", upstream)
        .await
        .unwrap();
    let (at_phone, from) = recv(&phone).await;
    assert_eq!(at_phone, b"SIP/2.0 200 OK\r\n\r\n");
    assert_eq!(
        from, relay.addr,
        "the reply must come from the socket the phone used"
    );
}

#[tokio::test]
async fn pbx_initiated_request_reaches_the_client_of_that_session() {
    let relay = start(|_| {}).await;
    let phone = client("127.0.0.2").await;
    phone.send_to(&options("reg"), relay.addr).await.unwrap();
    let (_, upstream) = recv(&relay.pbx).await;

    let invite = options("from-pbx");
    relay.pbx.send_to(&invite, upstream).await.unwrap();
    assert_eq!(recv(&phone).await.0, invite);
}

#[tokio::test]
async fn clients_get_distinct_stable_upstream_ports() {
    let relay = start(|_| {}).await;
    let a = client("127.0.0.2").await;
    let b = client("127.0.0.3").await;
    a.send_to(&options("a1"), relay.addr).await.unwrap();
    let (_, a_up) = recv(&relay.pbx).await;
    b.send_to(&options("b1"), relay.addr).await.unwrap();
    let (_, b_up) = recv(&relay.pbx).await;
    a.send_to(&options("a2"), relay.addr).await.unwrap();
    let (_, a_up_again) = recv(&relay.pbx).await;
    assert_ne!(a_up, b_up);
    assert_eq!(a_up, a_up_again);
}

#[tokio::test]
async fn garbage_and_keepalives_are_not_forwarded() {
    let relay = start(|_| {}).await;
    let phone = client("127.0.0.2").await;
    for junk in [
        &b"\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00\x01\x02",
        b"INVITE sip:x SIP/2.0\r\n\r\n",
    ] {
        phone.send_to(junk, relay.addr).await.unwrap();
    }
    let probe = options("after-junk");
    phone.send_to(&probe, relay.addr).await.unwrap();
    assert_eq!(
        recv(&relay.pbx).await.0,
        probe,
        "the first datagram at the PBX must be the probe"
    );
    let udp = "transport=\"udp\"";
    let count = |name, labels: &[&str]| relay.metrics.counter(name, labels);
    assert_eq!(count("sipguard_keepalives_total", &[udp]), 1.0);
    let dropped = "sipguard_packets_dropped_total";
    assert_eq!(count(dropped, &[udp, "reason=\"not_sip\""]), 2.0);
    assert_eq!(count(dropped, &[udp, "reason=\"malformed\""]), 1.0);
    assert_eq!(count("sipguard_packets_received_total", &[udp]), 5.0);
}

/// A REGISTER from 127.0.0.2, with credentials answering `nonce` when given.
fn register(cseq: u32, nonce: Option<&str>) -> Vec<u8> {
    let auth = nonce.map_or(String::new(), |nonce| {
        format!("Authorization: Digest username=\"1001\", realm=\"pbx\", nonce=\"{nonce}\", uri=\"sip:pbx\", response=\"r{cseq}\"\r\n")
    });
    format!(
        "REGISTER sip:pbx@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-r{cseq};rport\r\n\
From: <sip:1001@127.0.0.1>;tag=r\r\n\
To: <sip:1001@127.0.0.1>\r\n\
Call-ID: reg\r\n\
CSeq: {cseq} REGISTER\r\n\
{auth}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The PBX's answer to [`register`]: a 401 challenging with `nonce`, or a 200.
fn answer(cseq: u32, nonce: Option<&str>) -> Vec<u8> {
    let (status, challenge) = match nonce {
        Some(nonce) => (
            "401 Unauthorized",
            format!("WWW-Authenticate: Digest realm=\"pbx\", nonce=\"{nonce}\"\r\n"),
        ),
        None => ("200 OK", String::new()),
    };
    format!(
        "SIP/2.0 {status}\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-r{cseq};rport\r\n\
From: <sip:1001@127.0.0.1>;tag=r\r\n\
To: <sip:1001@127.0.0.1>;tag=pbx\r\n\
Call-ID: reg\r\n\
CSeq: {cseq} REGISTER\r\n\
{challenge}Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Forged one-packet sources fill the table: each newcomer takes the place of the oldest that
/// never proved anything, and a phone that answered its challenge keeps its session.
#[tokio::test]
async fn a_full_table_makes_room_for_newcomers_but_never_evicts_a_proven_session() {
    let relay = start(|c| c.max_sessions = 3).await;
    let phone = client("127.0.0.2").await;
    phone.send_to(&register(1, None), relay.addr).await.unwrap();
    let (_, upstream) = recv(&relay.pbx).await;
    let challenge = answer(1, Some("n1"));
    relay.pbx.send_to(&challenge, upstream).await.unwrap();
    assert_eq!(recv(&phone).await.0, challenge);
    phone
        .send_to(&register(2, Some("n1")), relay.addr)
        .await
        .unwrap();
    assert_eq!(recv(&relay.pbx).await, (register(2, Some("n1")), upstream));

    for n in 3..=12 {
        let forged = client(&format!("127.0.0.{n}")).await;
        forged
            .send_to(&options(&format!("forged-{n}")), relay.addr)
            .await
            .unwrap();
        assert_eq!(
            recv(&relay.pbx).await.0,
            options(&format!("forged-{n}")),
            "newcomer {n} was refused"
        );
    }
    phone
        .send_to(&register(3, Some("n1")), relay.addr)
        .await
        .unwrap();
    assert_eq!(
        recv(&relay.pbx).await,
        (register(3, Some("n1")), upstream),
        "the proven phone lost its session"
    );
    let evicted = "sipguard_sessions_evicted_total";
    assert_eq!(relay.metrics.counter(evicted, &["transport=\"udp\""]), 8.0);
}

#[tokio::test]
async fn ipv6_client_is_relayed() {
    let Ok(phone) = UdpSocket::bind("[::1]:0").await else {
        return;
    };
    let relay = start_on("[::1]:0", |_| {}).await;
    let (addr, pbx) = (relay.addr, &relay.pbx);
    phone.send_to(&options("v6"), addr).await.unwrap();
    let (_, upstream) = recv(pbx).await;
    pbx.send_to(b"SIP/2.0 200 OK\r\n\r\n", upstream)
        .await
        .unwrap();
    assert_eq!(recv(&phone).await.1, addr);
}

/// Each wrong password answers the nonce of the challenge before it: proven failures, from an
/// address that receives what the PBX sends it.
#[tokio::test]
async fn pbx_challenges_to_credentialed_registers_ban_the_source_after_five() {
    let relay = start(|_| {}).await;
    let cracker = client("127.0.0.2").await;
    let mut nonce: Option<String> = None;
    for cseq in 1..=6 {
        cracker
            .send_to(&register(cseq, nonce.as_deref()), relay.addr)
            .await
            .unwrap();
        let (at_pbx, upstream) = recv(&relay.pbx).await;
        assert_eq!(at_pbx, register(cseq, nonce.as_deref()));
        let fresh = format!("n{cseq}");
        let challenge = answer(cseq, Some(&fresh));
        relay.pbx.send_to(&challenge, upstream).await.unwrap();
        assert_eq!(
            recv(&cracker).await.0,
            challenge,
            "the challenge itself is relayed"
        );
        nonce = Some(fresh);
    }
    cracker
        .send_to(&register(7, nonce.as_deref()), relay.addr)
        .await
        .unwrap();
    let other = client("127.0.0.3").await;
    other
        .send_to(&options("bystander"), relay.addr)
        .await
        .unwrap();
    assert_eq!(
        recv(&relay.pbx).await.0,
        options("bystander"),
        "the REGISTER after the fifth wrong password must not reach the PBX"
    );
}

/// Regression: with SO_REUSEPORT on the listeners, a second instance on the same port bound
/// without error and took half the clients. A taken port must be refused as by a plain bind.
#[tokio::test]
async fn a_second_listener_on_a_taken_port_is_refused() {
    let running = start(|_| {}).await;
    let error = bind_udp(running.addr).expect_err("a taken port was bound again");
    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
}

/// A trunk identified by its address (it never authenticates) answers the PBX's qualify through
/// its session: the answer proves it receives at its address, so a forged scanner packet in its
/// name is dropped without banning it, and its traffic goes on.
#[tokio::test]
async fn a_client_answering_the_pbxs_own_request_is_not_banned_by_a_forged_scanner_packet() {
    let relay = start(|_| {}).await;
    let trunk = client("127.0.0.2").await;
    trunk.send_to(&options("hello"), relay.addr).await.unwrap();
    let (_, upstream) = recv(&relay.pbx).await;

    let qualify = options("qualify");
    relay.pbx.send_to(&qualify, upstream).await.unwrap();
    assert_eq!(recv(&trunk).await.0, qualify);
    // The answer carries the PBX's Via branch back (options() writes z9hG4bK-qualify).
    let answer = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-qualify;rport\r\n\
From: <sip:1001@127.0.0.1>;tag=t-qualify\r\n\
To: <sip:pbx@127.0.0.1>;tag=trunk\r\n\
Call-ID: qualify\r\n\
CSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";
    trunk.send_to(answer, relay.addr).await.unwrap();
    assert_eq!(recv(&relay.pbx).await.0, answer);

    let scanner = String::from_utf8(options("scan")).unwrap().replace(
        "Content-Length: 0",
        "User-Agent: friendly-scanner\r\nContent-Length: 0",
    );
    trunk.send_to(scanner.as_bytes(), relay.addr).await.unwrap();
    trunk.send_to(&options("after"), relay.addr).await.unwrap();
    assert_eq!(
        recv(&relay.pbx).await.0,
        options("after"),
        "the scanner packet must be dropped, and the trunk not banned for it"
    );
    let banned = relay
        .metrics
        .counter("sipguard_bans_total", &["rule=\"scanner\""]);
    assert_eq!(banned, 0.0);
}

/// A carrier whose allowlist group has an identity reaches the PBX from that address, so the PBX
/// can tell it by address; a phone, and anyone else, arrives from the shared one.
#[tokio::test]
async fn an_identified_carrier_reaches_the_pbx_from_its_identity_and_nobody_else_does() {
    let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let policy = PolicyConfig {
        allowlist: vec![AllowGroup {
            identity: Some("127.0.1.1".parse().unwrap()),
            ..AllowGroup::new("carrier", [IpAddr::from([127, 0, 0, 3]).into()])
        }],
        ..PolicyConfig::default()
    };
    let relay = start_with(pbx, "127.0.0.1:0", policy, None, |_| {}).await;
    let carrier = client("127.0.0.3").await;
    let phone = client("127.0.0.2").await;

    carrier.send_to(&options("c1"), relay.addr).await.unwrap();
    let (_, from_carrier) = recv(&relay.pbx).await;
    phone.send_to(&options("p1"), relay.addr).await.unwrap();
    let (_, from_phone) = recv(&relay.pbx).await;
    assert_eq!(from_carrier.ip().to_string(), "127.0.1.1");
    assert_eq!(from_phone.ip().to_string(), "127.0.0.1");

    let traced = relay.directory.by_upstream(from_carrier);
    assert_eq!(traced.len(), 1);
    assert_eq!(traced[0].client, carrier.local_addr().unwrap());
    let by_port = SocketAddr::from(([0, 0, 0, 0], from_phone.port()));
    assert_eq!(
        relay.directory.by_upstream(by_port)[0].client,
        phone.local_addr().unwrap()
    );
}

/// Saved sessions, in memory.
#[derive(Default)]
struct Saved(Mutex<Vec<Binding>>);

impl Saved {
    fn get(&self) -> Vec<Binding> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl SessionStore for Saved {
    fn load(&self) -> Vec<Binding> {
        self.get()
    }

    fn save(&self, bindings: &[Binding]) -> std::io::Result<()> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = bindings.to_vec();
        Ok(())
    }
}

async fn saving_to(store: &Arc<Saved>, pbx: UdpSocket) -> Running {
    let store: Arc<dyn SessionStore> = store.clone();
    start_with(
        pbx,
        "127.0.0.1:0",
        PolicyConfig::default(),
        Some(store),
        |_| {},
    )
    .await
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A registered phone's session outlives the relay: the next run rebinds its upstream port, so
/// the PBX's INVITE to the contact it holds reaches the phone before it registers again. A
/// client that never registered is not kept.
#[tokio::test]
async fn a_registered_session_is_saved_and_the_next_run_rebinds_its_upstream_port() {
    let store = Arc::new(Saved::default());
    let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pbx_addr = pbx.local_addr().unwrap();
    let first = saving_to(&store, pbx).await;
    let phone = client("127.0.0.2").await;
    let passer_by = client("127.0.0.4").await;
    passer_by
        .send_to(&options("once"), first.addr)
        .await
        .unwrap();
    recv(&first.pbx).await;
    phone.send_to(&register(1, None), first.addr).await.unwrap();
    let (_, upstream) = recv(&first.pbx).await;
    first.pbx.send_to(&answer(1, None), upstream).await.unwrap();
    assert_eq!(recv(&phone).await.0, answer(1, None));

    until("the session is saved", || !store.get().is_empty()).await;
    let saved = store.get();
    assert_eq!(
        saved.len(),
        1,
        "only the registered phone is kept: {saved:?}"
    );
    assert_eq!(saved[0].client, phone.local_addr().unwrap());
    assert_eq!(saved[0].upstream, upstream);

    drop(first);
    // The first run's sockets close as its tasks end, as a process's do when it exits.
    until("the old upstream port is free", || {
        std::net::UdpSocket::bind(upstream).is_ok()
    })
    .await;
    let pbx = UdpSocket::bind(pbx_addr).await.unwrap();
    let second = saving_to(&store, pbx).await;
    until("the session is restored", || {
        !second.directory.by_upstream(upstream).is_empty()
    })
    .await;
    let invite = options("from-pbx-after-restart");
    second.pbx.send_to(&invite, upstream).await.unwrap();
    let (at_phone, from) = recv(&phone).await;
    assert_eq!(at_phone, invite);
    assert_eq!(from, second.addr);
}

/// On a wildcard listener, a client that sent to one of the host's addresses is answered from
/// that address (and port), not from the address the routing table would pick.
#[tokio::test]
async fn a_wildcard_listener_answers_from_the_address_the_client_sent_to() {
    let relay = start_on("0.0.0.0:0", |_| {}).await;
    let spoken_to = SocketAddr::from(([127, 0, 0, 5], relay.addr.port()));
    let phone = client("127.0.0.2").await;
    phone.send_to(&options("w1"), spoken_to).await.unwrap();
    let (_, upstream) = recv(&relay.pbx).await;

    let reply = b"SIP/2.0 200 OK\r\n\r\n";
    relay.pbx.send_to(reply, upstream).await.unwrap();
    let (at_phone, from) = recv(&phone).await;
    assert_eq!(at_phone, reply);
    assert_eq!(from, spoken_to);
    let invite = options("from-pbx");
    relay.pbx.send_to(&invite, upstream).await.unwrap();
    assert_eq!(recv(&phone).await, (invite, spoken_to));
    assert_eq!(relay.directory.by_upstream(upstream)[0].local, spoken_to);
}

#[tokio::test]
async fn sipguards_own_403_leaves_a_wildcard_listener_from_the_address_the_client_sent_to() {
    let mut policy = PolicyConfig::default();
    let office = "127.0.0.2/32".parse().unwrap();
    policy.allowlist = vec![AllowGroup::new("office", [office])];
    policy.dial.premium.prefixes = vec![sipguard_policy::Prefix::parse("+449").unwrap()];
    let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = start_with(pbx, "0.0.0.0:0", policy, None, |_| {}).await;
    let spoken_to = SocketAddr::from(([127, 0, 0, 5], relay.addr.port()));
    let phone = client("127.0.0.2").await;
    let premium = "INVITE sip:+449012345678@127.0.0.5 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-p1;rport\r\n\
From: <sip:1001@127.0.0.5>;tag=t-p1\r\n\
To: <sip:+449012345678@127.0.0.5>\r\n\
Call-ID: p1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";
    phone.send_to(premium.as_bytes(), spoken_to).await.unwrap();
    let (answer, from) = recv(&phone).await;
    assert!(answer.starts_with(b"SIP/2.0 403 Forbidden by sipguard rule dial premium\r\n"));
    assert_eq!(
        from, spoken_to,
        "the 403 left from another address than the phone spoke to"
    );
}
