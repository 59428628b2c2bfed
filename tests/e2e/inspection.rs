//! Inspection at the front door: malformed datagrams and non-SIP bytes are dropped, and only the
//! valid requests between them reach the PBX, unchanged and in order.
//!
//! A bare UDP socket stands in for the PBX (the "tap"), so the test sees exactly what sipguard
//! forwards. Every bad datagram is followed by a valid OPTIONS probe from the same client; the
//! next datagram at the tap must be that probe, byte for byte, so anything that leaked shows up
//! in its place.

use crate::support::{free_udp_addr, Kamailio, Sipguard, Sipp};
use anyhow::{bail, ensure, Context};
use sipguard_sip::SipView;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// How long a forwarded probe may take to reach the tap.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A valid OPTIONS from `client`, unique by `id`.
fn options(client: SocketAddr, id: &str) -> String {
    format!(
        "OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {client};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{client}>;tag={id}\r\n\
         To: <sip:pbx@127.0.0.1>\r\n\
         Call-ID: {id}@sipguard-e2e\r\n\
         CSeq: 1 OPTIONS\r\n\
         User-Agent: sipguard-e2e-probe\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A valid OPTIONS with one defect: the first `from` replaced by `to`.
fn options_with(client: SocketAddr, id: &str, from: &str, to: &str) -> Vec<u8> {
    let valid = options(client, id);
    assert!(valid.contains(from), "{from:?} is not in the probe");
    valid.replacen(from, to, 1).into_bytes()
}

/// Deterministic noise (xorshift), so a failure replays exactly.
pub(crate) fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The start of a TLS 1.2 ClientHello record, as a client that mistook the port for 5061 sends.
fn tls_client_hello() -> Vec<u8> {
    let mut hello = vec![
        0x16, 0x03, 0x01, 0x00, 0x4a, 0x01, 0x00, 0x00, 0x46, 0x03, 0x03,
    ];
    hello.extend(noise(32, 7));
    hello.extend([
        0x00, 0x00, 0x04, 0x13, 0x01, 0x13, 0x02, 0x01, 0x00, 0x00, 0x19,
    ]);
    hello.extend(b"\x00\x00\x00\x15\x00\x13\x00\x00\x10sip.example.test");
    hello
}

/// Datagrams sipguard must never forward, each with what is wrong with it.
fn malformed_datagrams(client: SocketAddr) -> Vec<(&'static str, Vec<u8>)> {
    let padding = format!("X-Padding: {}\r\nContent-Length", "a".repeat(20 * 1024));
    vec![
        ("random bytes", noise(512, 0x9e37_79b9_7f4a_7c15)),
        ("a TLS ClientHello", tls_client_hello()),
        (
            "a request without Call-ID",
            options_with(
                client,
                "no-call-id",
                "Call-ID: no-call-id@sipguard-e2e\r\n",
                "",
            ),
        ),
        (
            "a Content-Length beyond the datagram",
            options_with(
                client,
                "long-body",
                "Content-Length: 0\r\n\r\n",
                "Content-Length: 500\r\n\r\nv=0\r\n",
            ),
        ),
        (
            "a negative Content-Length",
            options_with(
                client,
                "negative-length",
                "Content-Length: 0",
                "Content-Length: -1",
            ),
        ),
        (
            "a datagram over 16 KiB",
            options_with(client, "oversized", "Content-Length", &padding),
        ),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\n\r\n".to_vec(),
        ),
        ("an empty datagram", Vec::new()),
        ("NUL bytes", vec![0; 64]),
        (
            "a request line with no headers",
            b"OPTIONS sip:pbx@127.0.0.1 SIP/2.0\r\n\r\n".to_vec(),
        ),
    ]
}

/// The PBX stand-in: checks that the next datagram to arrive is exactly the expected one.
struct Tap {
    socket: UdpSocket,
    probes: usize,
}

impl Tap {
    fn bind() -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Tap { socket, probes: 0 })
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Sends a valid probe from `client` through sipguard and requires it to be the next datagram
    /// the tap receives. `after` names what was sent before it, for the failure message.
    fn probe(
        &mut self,
        client: &UdpSocket,
        sipguard: SocketAddr,
        after: &str,
    ) -> anyhow::Result<()> {
        self.probes += 1;
        let number = self.probes;
        let probe = options(client.local_addr()?, &format!("probe-{number}")).into_bytes();
        client.send_to(&probe, sipguard)?;
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let mut buf = vec![0u8; 65536];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let got = String::from_utf8_lossy(&buf[..n.min(300)]);
                    ensure!(
                        buf[..n] == probe[..],
                        "after {after}, the PBX received {n} bytes from {from} instead of probe {number}:\n{got:?}"
                    );
                    return Ok(());
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if Instant::now() >= deadline {
                        bail!("probe {number}, sent after {after}, did not reach the PBX in {PROBE_TIMEOUT:?}");
                    }
                }
                Err(e) => return Err(e).context("tap recv"),
            }
        }
    }
}

/// A client socket on its own loopback address 127.0.<block>.<index + 1>, so that no single
/// source sends enough to trip per-source rate rules.
fn client(block: u8, index: usize) -> anyhow::Result<UdpSocket> {
    let host = u8::try_from(index + 1).context("too many clients for one block")?;
    Ok(UdpSocket::bind((Ipv4Addr::new(127, 0, block, host), 0))?)
}

/// Sends each datagram from its own client, each followed by a probe from that client, then a
/// last probe from a fresh client: the tap must see the probes and nothing else.
fn only_probes_reach_the_tap(block: u8, datagrams: &[(String, Vec<u8>)]) -> anyhow::Result<()> {
    let mut tap = Tap::bind()?;
    let guard = Sipguard::start(tap.addr()?)?;
    tap.probe(&client(block, 0)?, guard.addr(), "nothing")?;
    for (index, (what, datagram)) in datagrams.iter().enumerate() {
        let client = client(block, index + 1)?;
        client
            .send_to(datagram, guard.addr())
            .with_context(|| format!("sending {what}"))?;
        tap.probe(&client, guard.addr(), what)?;
    }
    tap.probe(
        &client(block, datagrams.len() + 1)?,
        guard.addr(),
        "the last probe",
    )?;
    guard.stop()
}

#[test]
fn malformed_datagrams_never_reach_the_pbx() -> anyhow::Result<()> {
    let cases = malformed_datagrams("127.0.0.1:5060".parse()?).len();
    // Each datagram names the client that sends it, as a real one would.
    let datagrams = (0..cases)
        .map(|index| {
            let client: SocketAddr = (Ipv4Addr::new(127, 0, 10, index as u8 + 2), 5060).into();
            let (what, datagram) = malformed_datagrams(client).swap_remove(index);
            (what.to_owned(), datagram)
        })
        .collect::<Vec<_>>();
    only_probes_reach_the_tap(10, &datagrams)
}

#[test]
fn rfc4475_invalid_messages_the_inspector_drops_never_reach_the_pbx() -> anyhow::Result<()> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/sip/tests/fixtures/rfc4475");
    let Ok(manifest) = std::fs::read_to_string(dir.join("manifest.tsv")) else {
        eprintln!("skipped: no RFC 4475 fixtures in {}", dir.display());
        return Ok(());
    };
    // The invalid messages the inspector rejects; the relay must drop every one of them.
    let mut dropped = Vec::new();
    for row in manifest.lines().skip(1) {
        let mut fields = row.split('\t');
        let (Some(file), Some("invalid")) = (fields.next(), fields.next()) else {
            continue;
        };
        let bytes = std::fs::read(dir.join(file)).with_context(|| format!("reading {file}"))?;
        if SipView::parse(&bytes).is_err() {
            dropped.push((file.to_owned(), bytes));
        }
    }
    for named in ["insuf.dat", "clerr.dat", "ncl.dat"] {
        ensure!(
            dropped.iter().any(|(file, _)| file == named),
            "the inspector no longer drops {named}"
        );
    }
    only_probes_reach_the_tap(11, &dropped)
}

#[test]
fn registration_succeeds_after_a_burst_of_garbage() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let attacker = UdpSocket::bind("127.0.0.4:0")?;
    let garbage = malformed_datagrams(attacker.local_addr()?);
    for (_, datagram) in garbage.iter().cycle().take(500) {
        attacker.send_to(datagram, guard.addr())?;
    }

    Sipp::new("register.xml", pbx.dir())
        .remote(guard.addr())
        .local(free_udp_addr(Ipv4Addr::new(127, 0, 0, 2))?)
        .service("1003")
        .auth("1003", "secret-1003")
        .run()?
        .ensure_success()
        .with_context(|| format!("Kamailio's log:\n{}", pbx.log()))?;
    guard.stop()?;

    // Kamailio logs the messages it cannot parse; none of the garbage may have reached it.
    let log = pbx.log();
    let parse_errors = log
        .lines()
        .filter(|l| {
            l.contains("ERROR: <core> [core/parser") || l.contains("ERROR: <core> [core/receive.c")
        })
        .collect::<Vec<_>>();
    ensure!(
        parse_errors.is_empty(),
        "Kamailio received garbage through sipguard:\n{}",
        parse_errors.join("\n")
    );
    Ok(())
}
