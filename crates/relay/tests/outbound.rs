//! The outbound path over real loopback sockets: a plain socket plays the PBX (at its
//! `pbx.address`, sending to sipguard's outbound listener as to its outbound proxy), another the
//! carrier on 127.0.0.2, so each test sees exactly what sipguard relays, from where and to where.

use sipguard_policy::{Policy, PolicyConfig};
use sipguard_relay::{
    bind_udp, Context, Listeners, OutboundListener, RelayConfig, StreamConfig, TokioClock,
};
use sipguard_sip::SipView;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::timeout;

#[path = "support/metrics.rs"]
mod metrics;

use metrics::Metrics;

const WAIT: Duration = Duration::from_secs(5);

struct Running {
    /// sipguard's public UDP address.
    public: SocketAddr,
    /// sipguard's outbound listener.
    inside: SocketAddr,
    pbx: UdpSocket,
    carrier: UdpSocket,
    metrics: Metrics,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Running {
    start_on("127.0.0.1:0", None, PolicyConfig::default()).await
}

/// The relay's public UDP listener on `listen`; `public_ip`, when given, is the address carriers
/// are told (on the listener's port), as `outbound.public` says it.
async fn start_on(listen: &str, public_ip: Option<&str>, policy: PolicyConfig) -> Running {
    let pbx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let config = RelayConfig {
        pbx: pbx.local_addr().unwrap(),
        upstream_bind: "127.0.0.1".parse().unwrap(),
        session_idle: Duration::from_secs(3600),
        max_sessions: 100,
    };
    let listener = bind_udp(listen.parse().unwrap()).unwrap();
    let port = listener.local_addr().unwrap().port();
    let public = public_ip.map(|ip| SocketAddr::new(ip.parse().unwrap(), port));
    let outbound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let inside = outbound.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let metrics = Metrics::default();
    let context = Context {
        clock: Arc::new(TokioClock::new()),
        recorder: Some(metrics.recorder()),
        ..Context::new(Arc::new(Policy::new(policy).unwrap()))
    };
    let listeners = Listeners {
        udp: vec![listener],
        outbound: Some(OutboundListener {
            socket: outbound,
            public,
        }),
        ..Listeners::default()
    };
    let limits = StreamConfig {
        max_connections: 1,
        max_connections_per_ip: 1,
        idle_timeout: Duration::from_secs(60),
        message_timeout: Duration::from_secs(2),
    };
    tokio::spawn(sipguard_relay::run(
        config,
        limits,
        listeners,
        context,
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        public: public.unwrap_or(SocketAddr::new("127.0.0.1".parse().unwrap(), port)),
        inside,
        pbx,
        carrier,
        metrics,
        _stop: stop,
    }
}

impl Running {
    /// Sends `request` from the PBX to the outbound listener, as to its outbound proxy.
    async fn pbx_sends(&self, request: &str) {
        self.pbx
            .send_to(request.as_bytes(), self.inside)
            .await
            .unwrap();
    }
}

async fn recv(socket: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0; 65_535];
    let (len, from) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("nothing arrived in time")
        .unwrap();
    (String::from_utf8(buf[..len].to_vec()).unwrap(), from)
}

/// A request from the PBX, as Asterisk writes one to its outbound proxy.
fn from_pbx(method: &str, uri: &str, pbx: SocketAddr, extra: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {pbx};rport;branch=z9hG4bKPj-{method}\r\n\
         From: <sip:trunk@127.0.0.1>;tag=pbx\r\nTo: <sip:+15551234@127.0.0.2>\r\n\
         Call-ID: out-1\r\nCSeq: 5 {method}\r\nMax-Forwards: 70\r\n{extra}\
         Content-Length: 4\r\n\r\nbody"
    )
}

/// The carrier's answer to `request`: its Via headers and Record-Route copied.
fn answer(request: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap();
        if ["Via", "From", "Call-ID", "CSeq", "Record-Route"].contains(&name) {
            out += &format!("{line}\r\n");
        } else if name == "To" {
            out += &format!("{line};tag=carrier\r\n");
        }
    }
    out + "Contact: <sip:carrier@127.0.0.2>\r\nContent-Length: 0\r\n\r\n"
}

fn headers<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .split("\r\n")
        .take_while(|l| !l.is_empty())
        .filter(|l| l.split(':').next() == Some(name))
        .collect()
}

#[tokio::test]
async fn an_outbound_invite_leaves_from_the_public_socket_and_its_answer_returns_to_the_pbx() {
    let relay = start().await;
    let pbx = relay.pbx.local_addr().unwrap();
    let carrier = relay.carrier.local_addr().unwrap();
    let route = format!("Route: <sip:{};lr>\r\n", relay.inside);
    let invite = from_pbx("INVITE", &format!("sip:+15551234@{carrier}"), pbx, &route);
    relay.pbx_sends(&invite).await;

    let (at_carrier, from) = recv(&relay.carrier).await;
    assert_eq!(from, relay.public, "requests leave from the public socket");
    assert!(headers(&at_carrier, "Route").is_empty(), "{at_carrier}");
    let vias = headers(&at_carrier, "Via");
    assert!(vias[0].starts_with(&format!(
        "Via: SIP/2.0/UDP {};branch=z9hG4bK-sg-",
        relay.public
    )));
    assert_eq!(
        vias[1],
        format!(
            "Via: SIP/2.0/UDP {pbx};branch=z9hG4bKPj-INVITE;received=127.0.0.1;rport={}",
            pbx.port()
        )
    );
    assert_eq!(
        headers(&at_carrier, "Record-Route"),
        [format!(
            "Record-Route: <sip:{};lr>, <sip:{};lr>",
            relay.public, relay.inside
        )]
    );
    assert_eq!(headers(&at_carrier, "Max-Forwards"), ["Max-Forwards: 69"]);
    assert!(at_carrier.ends_with("Content-Length: 4\r\n\r\nbody"));

    let ok = answer(&at_carrier, "200 OK");
    relay
        .carrier
        .send_to(ok.as_bytes(), relay.public)
        .await
        .unwrap();
    let (at_pbx, from) = recv(&relay.pbx).await;
    assert_eq!(
        from, relay.inside,
        "answers come from the address the PBX's route set names"
    );
    assert!(at_pbx.starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(headers(&at_pbx, "Via"), [vias[1]]);
    assert_eq!(
        relay.metrics.counter(
            "sipguard_outbound_requests_total",
            &["result=\"forwarded\""]
        ),
        1.0
    );
    assert_eq!(
        relay
            .metrics
            .counter("sipguard_outbound_responses_total", &[]),
        1.0
    );

    // The carrier hangs up: its BYE follows the Record-Route to the public socket and reaches
    // the PBX on the carrier's session, without sipguard's Route entries.
    let bye = format!(
        "BYE sip:trunk@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {carrier};branch=z9hG4bKbye\r\n\
         Route: <sip:{};lr>, <sip:{};lr>\r\nFrom: <sip:+15551234@127.0.0.2>;tag=carrier\r\n\
         To: <sip:trunk@127.0.0.1>;tag=pbx\r\nCall-ID: out-1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        relay.public, relay.inside
    );
    relay
        .carrier
        .send_to(bye.as_bytes(), relay.public)
        .await
        .unwrap();
    let (at_pbx, upstream) = recv(&relay.pbx).await;
    assert!(at_pbx.starts_with("BYE "), "{at_pbx}");
    assert!(headers(&at_pbx, "Route").is_empty(), "{at_pbx}");
    assert_eq!(
        at_pbx.len(),
        bye.len()
            - format!(
                "Route: <sip:{};lr>, <sip:{};lr>\r\n",
                relay.public, relay.inside
            )
            .len()
    );
    assert_ne!(
        upstream, relay.inside,
        "the carrier's requests come on its session"
    );
    relay
        .pbx
        .send_to(answer(&at_pbx, "200 OK").as_bytes(), upstream)
        .await
        .unwrap();
    let (at_carrier, from) = recv(&relay.carrier).await;
    assert!(at_carrier.starts_with("SIP/2.0 200 OK"));
    assert_eq!(from, relay.public);
    assert_eq!(
        relay
            .metrics
            .counter("sipguard_outbound_routes_removed_total", &[]),
        1.0
    );
}

#[tokio::test]
async fn max_forwards_at_zero_is_answered_483_and_nothing_leaves() {
    let relay = start().await;
    let pbx = relay.pbx.local_addr().unwrap();
    let carrier = relay.carrier.local_addr().unwrap();
    let options = from_pbx("OPTIONS", &format!("sip:{carrier}"), pbx, "")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    relay.pbx_sends(&options).await;
    let (at_pbx, from) = recv(&relay.pbx).await;
    assert_eq!(from, relay.inside);
    let view = SipView::parse(at_pbx.as_bytes()).unwrap();
    assert_eq!(view.status(), Some(483));
    assert_eq!(view.call_id, b"out-1");
    assert!(view.to.tag.is_some());
    assert_eq!(
        relay.metrics.counter(
            "sipguard_outbound_requests_total",
            &["result=\"too_many_hops\""]
        ),
        1.0
    );
    // The next request does reach the carrier: the 483 was the only thing sent.
    let options = from_pbx("OPTIONS", &format!("sip:{carrier}"), pbx, "");
    relay.pbx_sends(&options).await;
    let (at_carrier, _) = recv(&relay.carrier).await;
    assert!(at_carrier.contains("Max-Forwards: 69"), "{at_carrier}");
}

#[tokio::test]
async fn only_the_pbx_may_use_the_outbound_listener_and_forged_answers_do_not_reach_it() {
    let relay = start().await;
    let pbx = relay.pbx.local_addr().unwrap();
    let carrier = relay.carrier.local_addr().unwrap();
    let stranger = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let options = from_pbx("OPTIONS", &format!("sip:{carrier}"), pbx, "");
    stranger
        .send_to(options.as_bytes(), relay.inside)
        .await
        .unwrap();

    // A response carrying sipguard's mark on a branch it never gave, aimed at the PBX.
    let forged = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-sg-0123456789abcdef\r\n\
         Via: SIP/2.0/UDP {pbx};received=127.0.0.1;rport={};branch=z9hG4bKPj-x\r\n\
         From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: f\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        relay.public,
        pbx.port()
    );
    relay
        .carrier
        .send_to(forged.as_bytes(), relay.public)
        .await
        .unwrap();

    let counted = |reason: &str| {
        relay.metrics.counter(
            "sipguard_outbound_dropped_total",
            &[&format!("reason=\"{reason}\"")],
        )
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while counted("not_pbx") + counted("not_ours") < 2.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            relay.metrics.render()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut buf = [0; 2048];
    assert!(
        relay.pbx.try_recv_from(&mut buf).is_err(),
        "nothing reached the PBX"
    );
    assert!(
        relay.carrier.try_recv_from(&mut buf).is_err(),
        "nothing left for the carrier"
    );
}

#[tokio::test]
async fn a_request_over_the_size_limit_is_refused_by_the_outbound_rules_with_513() {
    let relay = start().await;
    let pbx = relay.pbx.local_addr().unwrap();
    let carrier = relay.carrier.local_addr().unwrap();
    let padding = format!(
        "X-Padding: {}\r\n",
        "a".repeat(PolicyConfig::default().max_message_size)
    );
    let invite = from_pbx("INVITE", &format!("sip:1@{carrier}"), pbx, &padding);
    relay.pbx_sends(&invite).await;
    let (at_pbx, from) = recv(&relay.pbx).await;
    assert_eq!(from, relay.inside);
    assert_eq!(
        SipView::parse(at_pbx.as_bytes()).unwrap().status(),
        Some(513)
    );
    assert_eq!(
        relay
            .metrics
            .counter("sipguard_outbound_requests_total", &["result=\"policy\""]),
        1.0
    );
    let mut buf = [0; 2048];
    assert!(
        relay.carrier.try_recv_from(&mut buf).is_err(),
        "nothing left for the carrier"
    );
}

#[tokio::test]
async fn on_a_wildcard_listener_requests_leave_from_the_public_address_and_answers_come_back() {
    let relay = start_on("0.0.0.0:0", Some("127.0.0.3"), PolicyConfig::default()).await;
    let pbx = relay.pbx.local_addr().unwrap();
    let carrier = relay.carrier.local_addr().unwrap();
    let options = from_pbx("OPTIONS", &format!("sip:{carrier}"), pbx, "");
    relay.pbx_sends(&options).await;
    let (at_carrier, from) = recv(&relay.carrier).await;
    assert_eq!(
        from, relay.public,
        "not the kernel's choice of source address"
    );
    assert!(headers(&at_carrier, "Via")[0].contains(&relay.public.to_string()));
    relay
        .carrier
        .send_to(answer(&at_carrier, "200 OK").as_bytes(), relay.public)
        .await
        .unwrap();
    let (at_pbx, _) = recv(&relay.pbx).await;
    assert!(at_pbx.starts_with("SIP/2.0 200 OK"), "{at_pbx}");
}

#[tokio::test]
async fn a_call_the_dial_rules_bar_is_answered_403_naming_the_rule_and_never_leaves() {
    let mut policy = PolicyConfig::default();
    policy.dial.premium.prefixes = vec![sipguard_policy::Prefix::parse("+449").unwrap()];
    let relay = start_on("127.0.0.1:0", None, policy).await;
    let pbx = relay.pbx.local_addr().unwrap();
    let carrier = relay.carrier.local_addr().unwrap();
    let invite = from_pbx("INVITE", &format!("sip:+449012345678@{carrier}"), pbx, "");
    relay.pbx_sends(&invite).await;
    let (at_pbx, from) = recv(&relay.pbx).await;
    assert_eq!(from, relay.inside);
    assert!(
        at_pbx.starts_with("SIP/2.0 403 Forbidden by sipguard rule dial premium\r\n"),
        "{at_pbx}"
    );
    let refused = ["rule=\"dial\"", "class=\"premium\"", "action=\"refused\""];
    assert_eq!(
        relay
            .metrics
            .counter("sipguard_call_refusals_total", &refused),
        1.0
    );
    let mut buf = [0; 2048];
    assert!(
        relay.carrier.try_recv_from(&mut buf).is_err(),
        "nothing left for the carrier"
    );
}
