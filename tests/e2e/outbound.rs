//! The outbound path between real peers: SIPp plays the PBX (at `pbx.address`, sending its
//! requests for the carrier to sipguard's outbound listener with a Route naming it, as Asterisk
//! does with `outbound_proxy`), and the carrier on its own loopback address. What the PBX sends
//! leaves from sipguard's public socket; the carrier's answers, its BYE (along sipguard's
//! Record-Route) and its next call come back to the PBX through sipguard.

use crate::support::{free_udp_addr, Sipguard, Sipp, SippProcess, SippRun};
use anyhow::Context;
use sipguard::config::OutboundConfig;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// The carrier lives on an address of its own, as a distinct host would.
const CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// sipguard with its outbound listener on, in front of the PBX at `pbx`.
fn sipguard(pbx: SocketAddr) -> anyhow::Result<Sipguard> {
    Sipguard::start_with(pbx, |config| {
        config.outbound = Some(OutboundConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            public: None,
        });
    })
}

/// Starts the carrier's side of `scenario` at `carrier` and waits until it listens.
fn carrier(scenario: &str, dir: &Path, carrier: SocketAddr) -> anyhow::Result<SippProcess> {
    Sipp::new(scenario, dir)
        .local(carrier)
        .timeout(Duration::from_secs(20))
        .listen()
}

/// The PBX's side of `scenario`, from `from` to sipguard's outbound listener, for `carrier`; the
/// PBX listens at `pbx`.
fn pbx_out(
    scenario: &str,
    dir: &Path,
    guard: &Sipguard,
    (from, pbx): (SocketAddr, SocketAddr),
    carrier: SocketAddr,
) -> anyhow::Result<SippRun> {
    Sipp::new(scenario, dir)
        .remote(guard.outbound_addr())
        .local(from)
        .key("carrier", &carrier.to_string())
        .key("pbx", &pbx.to_string())
        .timeout(Duration::from_secs(15))
        .run()
}

/// Both sides succeeded, or an error with both logs.
fn both_succeed(pbx: &SippRun, carrier: &SippRun) -> anyhow::Result<()> {
    pbx.ensure_success()
        .with_context(|| format!("carrier:\n{}", carrier.logs()))?;
    carrier
        .ensure_success()
        .with_context(|| format!("pbx:\n{}", pbx.logs()))
}

#[test]
fn pbx_registers_to_a_carrier_through_sipguard_and_gets_its_200() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pbx = free_udp_addr(Ipv4Addr::LOCALHOST)?;
    let carrier_addr = free_udp_addr(CARRIER)?;
    let guard = sipguard(pbx)?;

    let registrar = carrier("carrier_register.xml", dir.path(), carrier_addr)?;
    let pbx_run = pbx_out(
        "pbx_register_out.xml",
        dir.path(),
        &guard,
        (pbx, pbx),
        carrier_addr,
    )?;
    both_succeed(&pbx_run, &registrar.wait()?)?;

    assert_eq!(
        guard.counter(
            "sipguard_outbound_requests_total",
            &["result=\"forwarded\""]
        ),
        1.0
    );
    assert_eq!(guard.counter("sipguard_outbound_responses_total", &[]), 1.0);
    guard.stop()
}

#[test]
fn outbound_call_is_hung_up_by_the_carrier_through_record_route_and_its_next_call_reaches_the_pbx(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pbx = free_udp_addr(Ipv4Addr::LOCALHOST)?;
    let carrier_addr = free_udp_addr(CARRIER)?;
    let guard = sipguard(pbx)?;

    // INVITE, 180, 200 and ACK through the outbound path; the carrier's BYE along the
    // Record-Route to the public socket, then to the PBX on the carrier's session. The PBX's
    // listening address takes the BYE, the call is placed from another of its ports (SIPp
    // would answer the BYE to where it sent its INVITE, not to the BYE's source).
    let pbx_listens = Sipp::new("pbx_bye.xml", dir.path())
        .local(pbx)
        .timeout(Duration::from_secs(20))
        .listen()?;
    let callee = carrier("carrier_call.xml", dir.path(), carrier_addr)?;
    let from = free_udp_addr(Ipv4Addr::LOCALHOST)?;
    let pbx_run = pbx_out(
        "pbx_call_out.xml",
        dir.path(),
        &guard,
        (from, pbx),
        carrier_addr,
    )?;
    let callee = callee.wait()?;
    both_succeed(&pbx_run, &callee)?;
    both_succeed(&pbx_listens.wait()?, &callee)?;
    assert!(guard.counter("sipguard_outbound_routes_removed_total", &[]) >= 1.0);

    // The carrier's next call is an ordinary inbound one: it reaches the PBX unchanged.
    let pbx_uas = Sipp::new("uas.xml", dir.path())
        .local(pbx)
        .service("trunk")
        .timeout(Duration::from_secs(20))
        .listen()?;
    let caller = Sipp::new("uac.xml", dir.path())
        .remote(guard.addr())
        .local(carrier_addr)
        .service("trunk")
        .run()?;
    both_succeed(&caller, &pbx_uas.wait()?)?;
    guard.stop()
}
