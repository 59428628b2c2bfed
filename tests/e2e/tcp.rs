//! SIP over TCP and TLS through sipguard, with Kamailio listening on TCP as the PBX: SIPp phones
//! register and take calls on their own connections, TLS phones do the same through stunnel, a
//! slowloris from one address does not lock a phone out, and a ban closes a source's
//! connection whatever transport the evidence came over.

use crate::support::certs::{TestCa, SERVER_NAME};
use crate::support::{free_udp_addr, password, poll_until, Kamailio, Sipguard, Sipp, Stunnel};
use anyhow::{ensure, Context};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Phones and callers on their own loopback addresses, apart from the other e2e modules'.
const TCP_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 2);
const TCP_CALLER: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 3);
const TLS_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 4);
const TLS_CALLER: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 5);
const SLOWLORIS: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 50);
const SLOWLORIS_VICTIM: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 6);
const TURNCOAT: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 7);

/// How long the phone waits in its scenario for the call.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// One registration and one call over streams: the callee registers on its connection (to
/// `callee_target`) and waits; once the PBX holds its registration, the caller (to
/// `caller_target`) calls it. The INVITE, ACK and BYE reach the callee over the connection it
/// registered on.
fn register_and_call(
    pbx: &Kamailio,
    callee: (SocketAddr, Ipv4Addr),
    caller: (SocketAddr, Ipv4Addr),
    call_id_prefix: &str,
) -> anyhow::Result<()> {
    let (callee_target, callee_ip) = callee;
    let (caller_target, caller_ip) = caller;
    let mut phone = Sipp::new("register_answer_tcp.xml", pbx.dir())
        .tcp()
        .remote(callee_target)
        .local(free_udp_addr(callee_ip)?)
        .service("1001")
        .auth("1001", password("1001"))
        .call_id_prefix(call_id_prefix)
        .timeout(CALL_TIMEOUT)
        .spawn()?;
    let registered = poll_until("1001 to be registered", CALL_TIMEOUT, || {
        let registered = pbx
            .received_addrs("1001")
            .is_ok_and(|addrs| !addrs.is_empty());
        (registered || !phone.is_running()).then_some(())
    });
    if registered.is_err() || !phone.is_running() {
        let run = phone.wait()?;
        anyhow::bail!(
            "the phone did not register: {}\nKamailio's log:\n{}",
            run.logs(),
            pbx.log()
        );
    }
    let received = pbx.received_addrs("1001")?;
    ensure!(
        received
            .iter()
            .all(|addr| addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "the PBX must see sipguard's upstream connection, not the phone: {received:?}"
    );

    let call = Sipp::new("uac.xml", pbx.dir())
        .tcp()
        .remote(caller_target)
        .local(free_udp_addr(caller_ip)?)
        .service("1001")
        .call_id_prefix(call_id_prefix)
        .timeout(CALL_TIMEOUT)
        .run()?;
    let phone = phone.wait()?;
    call.ensure_success().with_context(|| {
        format!(
            "caller; phone:\n{}\nKamailio's log:\n{}",
            phone.logs(),
            pbx.log()
        )
    })?;
    phone
        .ensure_success()
        .with_context(|| format!("phone; caller:\n{}", call.logs()))?;
    // The PBX sent the call to the connection the phone registered on, through sipguard (the
    // phone's SIPp also listens on its own port, which the PBX must not have used).
    let log = pbx.log();
    let via = format!("via sip:{};transport=tcp", received[0]);
    let relayed: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("relaying ") && line.contains("for 1001"))
        .collect();
    ensure!(
        relayed.len() >= 3 && relayed.iter().all(|line| line.contains(&via)),
        "INVITE, ACK and BYE must go {via}: {relayed:#?}"
    );
    Ok(())
}

#[test]
fn sipp_registers_and_takes_a_call_over_tcp_through_sipguard() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    register_and_call(
        &pbx,
        (guard.tcp_addr(), TCP_PHONE),
        (guard.tcp_addr(), TCP_CALLER),
        "tcp-call",
    )?;
    guard.stop()
}

#[test]
fn sipp_registers_and_takes_a_call_over_tls_through_sipguard() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let ca = TestCa::new("sipguard e2e CA");
    let issued = ca.issue(pbx.dir(), "sipguard", false);
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        config.listen_tls = vec!["127.0.0.1:0".parse().unwrap()];
        config.tls = Some(sipguard::TlsFiles {
            certificate: issued.certificate.clone(),
            key: issued.key.clone(),
        });
    })?;
    // Each phone's TLS is a stunnel of its own, connecting from the phone's address.
    let phone_tls = Stunnel::client(
        pbx.dir(),
        TLS_PHONE,
        guard.tls_addr(),
        &ca.pem(),
        SERVER_NAME,
    )?;
    let caller_tls = Stunnel::client(
        pbx.dir(),
        TLS_CALLER,
        guard.tls_addr(),
        &ca.pem(),
        SERVER_NAME,
    )?;
    register_and_call(
        &pbx,
        (phone_tls.addr(), TLS_PHONE),
        (caller_tls.addr(), TLS_CALLER),
        "tls-call",
    )
    .with_context(|| format!("stunnel's log:\n{}", phone_tls.log()))?;
    let accepted = guard.counter("sipguard_connections_total", &["transport=\"tls\""]);
    ensure!(accepted >= 2.0, "TLS connections counted: {accepted}");
    guard.stop()
}

/// How many connections the slowloris opens from its one address.
const SLOWLORIS_CONNECTIONS: usize = 500;
/// The per-address limit in the slowloris test, and the total: the attacker could fill the
/// total alone if the per-address limit did not stop it first.
const PER_IP: usize = 100;
const TOTAL: usize = 150;
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(6);

#[test]
fn slowloris_from_one_address_does_not_stop_a_tcp_phone_from_registering() -> anyhow::Result<()> {
    rlimit::increase_nofile_limit(u64::MAX)?;
    let refused = ["reason=\"per_ip_limit\"", "transport=\"tcp\""];
    let timed_out = ["reason=\"message_timeout\"", "transport=\"tcp\""];

    let pbx = Kamailio::start()?;
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        config.streams.max_connections = TOTAL;
        config.streams.max_connections_per_ip = PER_IP;
        config.streams.message_timeout = MESSAGE_TIMEOUT;
    })?;

    // The attack: every connection starts a REGISTER and never finishes it.
    let attack_started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..SLOWLORIS_CONNECTIONS {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(SLOWLORIS.into(), 0).into())?;
        socket.connect(&guard.tcp_addr().into())?;
        let mut stream = TcpStream::from(socket);
        stream.write_all(b"REGISTER sip:1001@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP ")?;
        held.push(stream);
    }
    // Every connection beyond the per-address limit is refused at accept.
    let expected_refusals = (SLOWLORIS_CONNECTIONS - PER_IP) as f64;
    poll_until(
        "the per-address refusals to be counted",
        Duration::from_secs(10),
        || {
            let refusals = guard.counter("sipguard_connections_refused_total", &refused);
            (refusals >= expected_refusals).then_some(())
        },
    )?;

    // While the attacker holds its hundred connections, trickling a byte now and then, a phone
    // from another address registers over TCP.
    let trickle = std::thread::spawn(move || {
        let until = Instant::now() + MESSAGE_TIMEOUT + Duration::from_secs(2);
        while Instant::now() < until && !held.is_empty() {
            held.retain_mut(|stream| stream.write_all(b"1").is_ok());
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    Sipp::new("register.xml", pbx.dir())
        .tcp()
        .remote(guard.tcp_addr())
        .local(free_udp_addr(SLOWLORIS_VICTIM)?)
        .service("1002")
        .auth("1002", password("1002"))
        .run()?
        .ensure_success()
        .context("the phone could not register during the slowloris")?;
    let registered_after = attack_started.elapsed();
    ensure!(
        registered_after < MESSAGE_TIMEOUT,
        "the phone registered only after {registered_after:?}, when the attack's connections may \
         already have been closed: the test proves nothing"
    );

    // The attack's connections are closed at the message deadline, trickle or not.
    poll_until(
        "the slowloris connections to time out",
        MESSAGE_TIMEOUT + Duration::from_secs(5),
        || {
            let closed = guard.counter("sipguard_connections_closed_total", &timed_out);
            (closed >= PER_IP as f64).then_some(())
        },
    )?;
    trickle.join().expect("the trickle thread panicked");
    guard.stop()
}

/// Reads `stream` until the peer closes it; the bytes read. A read timeout is an error.
fn read_until_closed(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(all),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return Ok(all),
            Err(error) => return Err(error).context("the connection stayed open"),
        }
    }
}

#[test]
fn a_ban_earned_over_udp_closes_the_sources_tcp_connection_within_a_second() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;

    // A client at TURNCOAT talks to the PBX over TCP and gets its answer.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(TURNCOAT.into(), 0).into())?;
    socket.connect(&guard.tcp_addr().into())?;
    let mut tcp = TcpStream::from(socket);
    let local = tcp.local_addr()?;
    let options = format!(
        "OPTIONS sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-turncoat\r\n\
         From: <sip:t@{local}>;tag=t\r\nTo: <sip:{pbx}>\r\nCall-ID: turncoat@{local}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        pbx = pbx.addr()
    );
    tcp.write_all(options.as_bytes())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut answer = [0u8; 12];
    tcp.read_exact(&mut answer)?;
    ensure!(
        &answer == b"SIP/2.0 200 ",
        "{:?}",
        String::from_utf8_lossy(&answer)
    );

    // Then the same address scans over UDP, and is banned for it.
    let udp = UdpSocket::bind(SocketAddr::new(TURNCOAT.into(), 0))?;
    let scan = options.replace("TCP", "UDP").replace(
        "Max-Forwards",
        "User-Agent: friendly-scanner\r\nMax-Forwards",
    );
    let banned_at = Instant::now();
    udp.send_to(scan.as_bytes(), guard.addr())?;
    poll_until("the scanner to be banned", Duration::from_secs(5), || {
        guard.ban(IpAddr::V4(TURNCOAT))
    })?;

    // Its TCP connection goes within a second.
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    read_until_closed(&mut tcp)?;
    let took = banned_at.elapsed();
    ensure!(
        took < Duration::from_secs(1),
        "closed {took:?} after the ban"
    );
    guard.stop()
}
