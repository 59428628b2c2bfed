//! The TCP and TLS fronts over real loopback sockets, with a plain TCP listener standing in for
//! the PBX, so each test sees exactly which bytes reach it, on which upstream connection, and
//! what comes back to the client. Counters are read from each relay's own Prometheus recorder,
//! and the relay runs on tokio's clock, so tests with a paused clock move its deadlines at will.

mod support;

use sipguard_policy::{Feeds, Policy, PolicyConfig, Timestamp};
use sipguard_relay::{
    bind_tcp, Context, Listeners, RelayConfig, StreamConfig, TlsFiles, TlsReload, TokioClock,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use support::certs::{TestCa, SERVER_NAME};
use support::metrics::Metrics;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

impl Running {
    /// Waits until the series reaches `at_least` (a connection is counted as closed just after
    /// its socket closes, so a client may see the close first).
    async fn counted(&self, name: &str, labels: &[&str], at_least: f64) {
        let metrics = &self.metrics;
        let deadline = Instant::now() + WAIT;
        while metrics.counter(name, labels) < at_least {
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stayed at {} below {at_least}:\n{}",
                metrics.counter(name, labels),
                metrics.render()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn request(method: &str, call_id: &str, user_agent: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} sip:1001@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/TCP 127.0.0.2:5062;branch=z9hG4bK-{call_id};rport\r\n\
From: <sip:1001@127.0.0.1>;tag=t-{call_id}\r\n\
To: <sip:1001@127.0.0.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 {method}\r\n\
User-Agent: {user_agent}\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn options(call_id: &str) -> Vec<u8> {
    request("OPTIONS", call_id, "Yealink SIP-T46S", "")
}

fn limits() -> StreamConfig {
    StreamConfig {
        max_connections: 100,
        max_connections_per_ip: 10,
        idle_timeout: Duration::from_secs(60),
        message_timeout: Duration::from_secs(2),
    }
}

struct Running {
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    pbx: TcpListener,
    policy: Arc<Policy>,
    metrics: Metrics,
    _stop: oneshot::Sender<()>,
}

async fn start(tune: impl FnOnce(&mut StreamConfig)) -> Running {
    start_with(tune, None).await
}

async fn start_with(tune: impl FnOnce(&mut StreamConfig), tls: Option<TlsReload>) -> Running {
    let pbx = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay = RelayConfig {
        pbx: pbx.local_addr().unwrap(),
        upstream_bind: "127.0.0.1".parse().unwrap(),
        session_idle: Duration::from_secs(3600),
        max_sessions: 100,
    };
    let mut limits = limits();
    tune(&mut limits);
    let tcp = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let tls_listener = tls
        .as_ref()
        .map(|_| bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap());
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr().unwrap());
    let listeners = Listeners {
        tcp: vec![tcp],
        tls: tls_listener.into_iter().collect(),
        certificate: tls,
        ..Listeners::default()
    };
    let policy = Arc::new(Policy::new(PolicyConfig::default()).unwrap());
    let metrics = Metrics::default();
    let context = Context {
        clock: Arc::new(TokioClock::new()),
        recorder: Some(metrics.recorder()),
        ..Context::new(Arc::clone(&policy))
    };
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(sipguard_relay::run(
        relay,
        limits,
        listeners,
        context,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        tcp: tcp_addr,
        tls: tls_addr,
        pbx,
        policy,
        metrics,
        _stop: stop,
    }
}

async fn connect(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

async fn accept_upstream(pbx: &TcpListener) -> TcpStream {
    timeout(WAIT, pbx.accept())
        .await
        .expect("no upstream connection in time")
        .unwrap()
        .0
}

async fn read_exactly(stream: &mut (impl AsyncRead + Unpin), len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("nothing arrived in time")
        .unwrap();
    buf
}

/// Reads until the peer closes; panics if it does not within `WAIT`. Returns what came first.
async fn read_to_close(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut buf = Vec::new();
    match timeout(WAIT, stream.read_to_end(&mut buf)).await {
        Ok(_) => buf,
        Err(_) => panic!("the connection was not closed; read {buf:?}"),
    }
}

async fn send(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}

#[tokio::test]
async fn request_reaches_pbx_on_its_own_connection_and_the_pbx_reaches_back() {
    let relay = start(|_| {}).await;
    let mut phone = connect("127.0.0.2", relay.tcp).await;
    let register = options("t1");
    send(&mut phone, &register).await;
    let mut upstream = accept_upstream(&relay.pbx).await;
    assert_eq!(read_exactly(&mut upstream, register.len()).await, register);
    assert_eq!(upstream.peer_addr().unwrap().ip().to_string(), "127.0.0.1");

    // A response, then a request the PBX starts itself: both on the client's connection.
    let ok = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 127.0.0.2:5062;branch=z9hG4bK-t1\r\n\
Call-ID: t1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let invite = b"INVITE sip:1001@127.0.0.2:5062 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK-p1\r\n\
Call-ID: p1\r\nCSeq: 1 INVITE\r\nContent-Length: 4\r\n\r\nv=0\n";
    send(&mut upstream, ok).await;
    send(&mut upstream, invite).await;
    let back = read_exactly(&mut phone, ok.len() + invite.len()).await;
    assert_eq!(back, [&ok[..], &invite[..]].concat());
}

#[tokio::test]
async fn a_message_split_byte_by_byte_arrives_whole() {
    let relay = start(|_| {}).await;
    let mut phone = connect("127.0.0.3", relay.tcp).await;
    phone.set_nodelay(true).unwrap();
    let message = request("MESSAGE", "split", "Yealink", "hello over a slow link");
    for byte in &message {
        send(&mut phone, std::slice::from_ref(byte)).await;
    }
    let mut upstream = accept_upstream(&relay.pbx).await;
    assert_eq!(read_exactly(&mut upstream, message.len()).await, message);
}

#[tokio::test]
async fn several_messages_in_one_segment_are_each_forwarded_with_their_bodies() {
    let relay = start(|_| {}).await;
    let mut phone = connect("127.0.0.4", relay.tcp).await;
    let first = request(
        "MESSAGE",
        "m1",
        "Yealink",
        "body one\r\n\r\nwith a blank line",
    );
    let second = options("m2");
    let third = request("MESSAGE", "m3", "Yealink", "3");
    send(
        &mut phone,
        &[first.clone(), second.clone(), third.clone()].concat(),
    )
    .await;
    let mut upstream = accept_upstream(&relay.pbx).await;
    let total = first.len() + second.len() + third.len();
    assert_eq!(
        read_exactly(&mut upstream, total).await,
        [first, second, third].concat()
    );
}

#[tokio::test]
async fn keepalive_ping_gets_a_pong_and_is_not_forwarded() {
    let relay = start(|_| {}).await;
    let mut phone = connect("127.0.0.5", relay.tcp).await;
    send(&mut phone, b"\r\n\r\n").await;
    assert_eq!(read_exactly(&mut phone, 2).await, b"\r\n");
    // The ping opened nothing upstream; the next message does, and arrives alone.
    let message = options("after-ping");
    send(&mut phone, &message).await;
    let mut upstream = accept_upstream(&relay.pbx).await;
    assert_eq!(read_exactly(&mut upstream, message.len()).await, message);
}

#[tokio::test]
async fn missing_content_length_closes_the_connection_and_is_counted() {
    let relay = start(|_| {}).await;
    let mut phone = connect("127.0.0.6", relay.tcp).await;
    const CLOSED: &str = "sipguard_connections_closed_total";
    let labels = ["reason=\"bad_framing\"", "transport=\"tcp\""];
    let before = relay.metrics.counter(CLOSED, &labels);
    send(
        &mut phone,
        b"OPTIONS sip:1001@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n",
    )
    .await;
    assert_eq!(
        read_to_close(&mut phone).await,
        b"",
        "no answer, just a close"
    );
    relay.counted(CLOSED, &labels, before + 1.0).await;
    let dropped = ["reason=\"missing_content_length\"", "transport=\"tcp\""];
    relay
        .counted("sipguard_packets_dropped_total", &dropped, 1.0)
        .await;
    let nothing = timeout(Duration::from_millis(200), relay.pbx.accept()).await;
    assert!(nothing.is_err(), "an unframed message reached the PBX");
}

#[tokio::test]
async fn oversized_message_closes_the_connection() {
    let relay = start(|_| {}).await;
    let mut phone = connect("127.0.0.7", relay.tcp).await;
    let huge = request("MESSAGE", "big", "Yealink", &"x".repeat(20_000));
    // The write may fail once sipguard has closed: what matters is the close.
    let _ = phone.write_all(&huge).await;
    read_to_close(&mut phone).await;
}

#[tokio::test]
async fn client_and_upstream_connections_close_together() {
    let relay = start(|_| {}).await;
    let mut phone = connect("127.0.0.8", relay.tcp).await;
    send(&mut phone, &options("c1")).await;
    let mut upstream = accept_upstream(&relay.pbx).await;
    read_exactly(&mut upstream, options("c1").len()).await;
    drop(phone);
    read_to_close(&mut upstream).await;

    // And the other way: the PBX closing ends the client's connection.
    let mut phone = connect("127.0.0.8", relay.tcp).await;
    send(&mut phone, &options("c2")).await;
    let upstream = accept_upstream(&relay.pbx).await;
    drop(upstream);
    read_to_close(&mut phone).await;
}

#[tokio::test]
async fn two_client_connections_get_two_upstream_connections() {
    let relay = start(|_| {}).await;
    let mut a = connect("127.0.0.9", relay.tcp).await;
    let mut b = connect("127.0.0.9", relay.tcp).await;
    send(&mut a, &options("a")).await;
    let mut up_a = accept_upstream(&relay.pbx).await;
    read_exactly(&mut up_a, options("a").len()).await;
    send(&mut b, &options("b")).await;
    let mut up_b = accept_upstream(&relay.pbx).await;
    assert_eq!(
        read_exactly(&mut up_b, options("b").len()).await,
        options("b")
    );
    assert_ne!(up_a.peer_addr().unwrap(), up_b.peer_addr().unwrap());
}

/// On tokio's paused clock, which stands still while any task has work and otherwise jumps to
/// the next timer: the connection closes exactly one message timeout after the partial message
/// arrived, and the test takes no real time for it.
#[tokio::test(start_paused = true)]
async fn a_started_message_not_finished_in_time_closes_the_connection() {
    let message_timeout = Duration::from_secs(3);
    let relay = start(|limits| limits.message_timeout = message_timeout).await;
    let mut phone = connect("127.0.0.10", relay.tcp).await;
    let started = tokio::time::Instant::now();
    send(&mut phone, &options("slow")[..40]).await;
    read_to_close(&mut phone).await;
    assert_eq!(started.elapsed(), message_timeout);
    let labels = ["reason=\"message_timeout\"", "transport=\"tcp\""];
    relay
        .counted("sipguard_connections_closed_total", &labels, 1.0)
        .await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_rather_than_stalling_the_pbx() {
    let relay = start(|limits| limits.message_timeout = Duration::from_millis(300)).await;
    let mut phone = connect("127.0.0.18", relay.tcp).await;
    send(&mut phone, &options("deaf")).await;
    let mut upstream = accept_upstream(&relay.pbx).await;
    read_exactly(&mut upstream, options("deaf").len()).await;
    // The PBX sends NOTIFYs the phone never reads, until sipguard gives up on the phone and
    // closes both connections; the PBX's writes then fail. Bounded by count and by WAIT.
    let notify = request("NOTIFY", "n", "Asterisk", &"x".repeat(8000));
    let flooded = timeout(WAIT, async {
        for _ in 0..100_000 {
            if upstream.write_all(&notify).await.is_err() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        flooded,
        Ok(true),
        "sipguard kept the unread connection open"
    );
    let labels = ["reason=\"write_timeout\"", "transport=\"tcp\""];
    relay
        .counted("sipguard_connections_closed_total", &labels, 1.0)
        .await;
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_refused() {
    let relay = start(|limits| limits.max_connections_per_ip = 2).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let mut phone = connect("127.0.0.11", relay.tcp).await;
        send(&mut phone, &options(&format!("held{i}"))).await;
        // Both ends held: the PBX closing its side would close the client's too.
        held.push((phone, accept_upstream(&relay.pbx).await));
    }
    let mut third = connect("127.0.0.11", relay.tcp).await;
    assert_eq!(read_to_close(&mut third).await, b"");
    // Another address is not affected.
    let mut other = connect("127.0.0.12", relay.tcp).await;
    send(&mut other, &options("other")).await;
    accept_upstream(&relay.pbx).await;
    let labels = ["reason=\"per_ip_limit\"", "transport=\"tcp\""];
    relay
        .counted("sipguard_connections_refused_total", &labels, 1.0)
        .await;
}

/// The connection registry follows the policy's ban events: no polling loop stands between a
/// ban and the close.
#[tokio::test]
async fn a_manual_ban_closes_the_sources_connections_within_50_ms() {
    let relay = start(|_| {}).await;
    let mut phones = Vec::new();
    for i in 0..3 {
        let mut phone = connect("127.0.0.13", relay.tcp).await;
        send(&mut phone, &options(&format!("b{i}"))).await;
        phones.push((phone, accept_upstream(&relay.pbx).await));
    }
    let mut bystander = connect("127.0.0.14", relay.tcp).await;
    send(&mut bystander, &options("bystander")).await;
    let mut bystander_up = accept_upstream(&relay.pbx).await;

    let now = Timestamp::from_system(SystemTime::now());
    let banned_at = Instant::now();
    relay
        .policy
        .ban_manually(
            "127.0.0.13".parse::<std::net::IpAddr>().unwrap(),
            Duration::from_secs(60),
            None,
            now,
        )
        .expect("not allowlisted");
    for (phone, _upstream) in &mut phones {
        read_to_close(phone).await;
    }
    let took = banned_at.elapsed();
    assert!(took < Duration::from_millis(50), "closed after {took:?}");
    let labels = ["reason=\"banned\"", "transport=\"tcp\""];
    relay
        .counted("sipguard_connections_closed_total", &labels, 3.0)
        .await;
    // The bystander's connection still relays.
    send(&mut bystander, &options("still")).await;
    read_exactly(&mut bystander_up, options("bystander").len()).await;
    assert_eq!(
        read_exactly(&mut bystander_up, options("still").len()).await,
        options("still")
    );
    // And a new connection from the banned source is refused at once.
    let mut again = connect("127.0.0.13", relay.tcp).await;
    assert_eq!(read_to_close(&mut again).await, b"");
}

#[tokio::test]
async fn a_source_a_feed_starts_listing_loses_its_connection_and_cannot_reconnect() {
    let relay = start(|_| {}).await;
    let mut client = connect("127.0.0.16", relay.tcp).await;
    send(&mut client, &options("before")).await;
    let mut upstream = accept_upstream(&relay.pbx).await;
    let first = options("before");
    assert_eq!(read_exactly(&mut upstream, first.len()).await, first);

    let listed = vec!["127.0.0.16/32".parse().unwrap()];
    relay
        .policy
        .set_feeds(Feeds::new(vec![(Arc::default(), listed)]));
    send(&mut client, &options("after")).await;
    assert_eq!(read_to_close(&mut client).await, b"");
    let mut again = connect("127.0.0.16", relay.tcp).await;
    send(&mut again, &options("again")).await;
    assert_eq!(read_to_close(&mut again).await, b"");
    assert_eq!(
        read_to_close(&mut upstream).await,
        b"",
        "nothing more forwarded"
    );
}

#[tokio::test]
async fn a_scanner_over_tcp_is_banned_and_loses_its_connection_at_once() {
    let relay = start(|_| {}).await;
    let mut scanner = connect("127.0.0.15", relay.tcp).await;
    send(
        &mut scanner,
        &request("OPTIONS", "scan", "friendly-scanner", ""),
    )
    .await;
    assert_eq!(read_to_close(&mut scanner).await, b"");
    let now = Timestamp::from_system(SystemTime::now());
    assert!(relay.policy.is_banned("127.0.0.15".parse().unwrap(), now));
    let nothing = timeout(Duration::from_millis(200), relay.pbx.accept()).await;
    assert!(nothing.is_err(), "the scanner's request reached the PBX");
}

fn tls_client(ca: &TestCa) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    SERVER_NAME.try_into().unwrap()
}

/// The subject common name of the certificate the server presented, as written by TestCa.
fn presented_name(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let (_, session) = stream.get_ref();
    let der = session.peer_certificates().unwrap()[0].to_vec();
    ["first", "renewed"]
        .into_iter()
        .find(|name| der.windows(name.len()).any(|w| w == name.as_bytes()))
        .unwrap_or("unknown")
        .to_owned()
}

#[tokio::test]
async fn tls_client_is_relayed_to_the_pbx_over_plain_tcp_and_reload_swaps_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("sipguard test CA");
    let first = ca.issue(dir.path(), "first", false);
    let files = TlsFiles {
        certificate: first.certificate.clone(),
        key: first.key.clone(),
    };
    let reload = TlsReload::load(files).unwrap();
    let relay = start_with(|_| {}, Some(reload.clone())).await;
    let tls_addr = relay.tls.unwrap();
    let client = tls_client(&ca);

    let tcp = connect("127.0.0.16", tls_addr).await;
    let mut phone = client.connect(server_name(), tcp).await.unwrap();
    assert_eq!(presented_name(&phone), "first");
    send(&mut phone, &options("tls1")).await;
    let mut upstream = accept_upstream(&relay.pbx).await;
    assert_eq!(
        read_exactly(&mut upstream, options("tls1").len()).await,
        options("tls1"),
        "the PBX gets plain SIP"
    );
    let ok = b"SIP/2.0 200 OK\r\nCall-ID: tls1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    send(&mut upstream, ok).await;
    assert_eq!(read_exactly(&mut phone, ok.len()).await, ok);

    // A reload from missing files fails, naming the file, and keeps the certificate in use.
    let missing = TlsFiles {
        certificate: first.certificate.clone(),
        key: dir.path().join("gone.key"),
    };
    let error = reload.reload_from(missing).unwrap_err().to_string();
    assert!(error.contains("gone.key"), "{error}");

    // The operator renews the certificate in place and reloads.
    let renewed = ca.issue(dir.path(), "renewed", false);
    std::fs::rename(&renewed.certificate, &first.certificate).unwrap();
    std::fs::rename(&renewed.key, &first.key).unwrap();
    reload.reload().unwrap();
    let tcp = connect("127.0.0.16", tls_addr).await;
    let mut second = client.connect(server_name(), tcp).await.unwrap();
    assert_eq!(presented_name(&second), "renewed");
    // The connection made before the reload goes on.
    send(&mut phone, &options("tls2")).await;
    assert_eq!(
        read_exactly(&mut upstream, options("tls2").len()).await,
        options("tls2")
    );
    send(&mut second, b"\r\n\r\n").await;
    assert_eq!(read_exactly(&mut second, 2).await, b"\r\n");
}

#[tokio::test]
async fn tls_clients_refuse_an_untrusted_or_expired_certificate_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("sipguard test CA");
    let stranger = TestCa::new("somebody else's CA");
    for (server_ca, expired, expected) in
        [(&stranger, false, "UnknownIssuer"), (&ca, true, "Expired")]
    {
        let issued = server_ca.issue(
            dir.path(),
            if expired { "expired" } else { "untrusted" },
            expired,
        );
        let reload = TlsReload::load(TlsFiles {
            certificate: issued.certificate,
            key: issued.key,
        })
        .unwrap();
        let relay = start_with(|_| {}, Some(reload)).await;
        let tcp = connect("127.0.0.17", relay.tls.unwrap()).await;
        let error = tls_client(&ca)
            .connect(server_name(), tcp)
            .await
            .expect_err("the handshake must fail");
        let message = format!("{error:?}");
        assert!(message.contains(expected), "{message}");
        let nothing = timeout(Duration::from_millis(100), relay.pbx.accept()).await;
        assert!(nothing.is_err());
    }
}

#[test]
fn missing_or_broken_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("sipguard test CA");
    let issued = ca.issue(dir.path(), "server", false);
    let error = |certificate: &std::path::Path, key: &std::path::Path| {
        TlsReload::load(TlsFiles {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
        })
        .unwrap_err()
        .to_string()
    };
    let missing = dir.path().join("missing.key");
    let message = error(&issued.certificate, &missing);
    assert!(
        message.contains("cannot read key file") && message.contains("missing.key"),
        "{message}"
    );

    let not_pem = dir.path().join("not-pem.key");
    std::fs::write(&not_pem, "hello").unwrap();
    let message = error(&issued.certificate, &not_pem);
    assert!(
        message.contains("no PEM private key") && message.contains("not-pem.key"),
        "{message}"
    );

    let other = ca.issue(dir.path(), "other", false);
    let message = error(&issued.certificate, &other.key);
    assert!(
        message.contains("other.key") && message.contains("server.crt"),
        "{message}"
    );
}
