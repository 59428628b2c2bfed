//! The relay between real peers: SIPp phones register through sipguard to Kamailio, the PBX
//! reaches them back through their sessions, and each client address is its own peer at the PBX.

use crate::support::{free_udp_addr, password, qualify, Kamailio, Sipguard, Sipp};
use anyhow::{ensure, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Phones live on their own loopback addresses, as distinct hosts would.
const PHONE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const PHONE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Registers `user` from `phone` through sipguard: SIPp asserts the 401 challenge and the 200.
fn register(pbx: &Kamailio, guard: &Sipguard, phone: SocketAddr, user: &str) -> anyhow::Result<()> {
    Sipp::new("register.xml", pbx.dir())
        .remote(guard.addr())
        .local(phone)
        .service(user)
        .auth(user, password(user))
        .run()?
        .ensure_success()
        .with_context(|| {
            format!(
                "registering {user} from {phone} through sipguard; Kamailio's log:\n{}",
                pbx.log()
            )
        })
}

/// The single received address the PBX's location holds for `user`.
fn received_addr(pbx: &Kamailio, user: &str) -> anyhow::Result<SocketAddr> {
    let received = pbx.received_addrs(user)?;
    ensure!(
        received.len() == 1,
        "expected one location entry for {user}, found {received:?}"
    );
    Ok(received[0])
}

#[test]
fn sipp_registers_through_sipguard_with_digest_auth() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let phone = free_udp_addr(PHONE_A)?;

    register(&pbx, &guard, phone, "1001")?;

    // The PBX saw the registration come from one of sipguard's loopback upstream sockets.
    let received = received_addr(&pbx, "1001")?;
    assert_eq!(
        received.ip(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        "received {received} for a phone on {phone}"
    );
    assert_ne!(
        received,
        guard.addr(),
        "upstream traffic must not come from the public socket"
    );
    guard.stop()
}

#[test]
fn wrong_password_is_challenged_again_through_sipguard() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;

    // The scenario expects 401, then 401 again for the bad credentials.
    Sipp::new("register_rejected.xml", pbx.dir())
        .remote(guard.addr())
        .local(free_udp_addr(PHONE_A)?)
        .service("1002")
        .auth("1002", "not-the-password")
        .run()?
        .ensure_success()?;
    assert!(
        pbx.received_addrs("1002")?.is_empty(),
        "a refused registration must not be stored"
    );
    guard.stop()
}

#[test]
fn incoming_call_reaches_phone_registered_through_sipguard() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let phone = free_udp_addr(PHONE_A)?;
    register(&pbx, &guard, phone, "1001")?;

    // The phone now waits for a call on the address it registered from; sipguard's session for
    // that address is what the PBX's location points at.
    let uas = Sipp::new("uas.xml", pbx.dir())
        .local(phone)
        .service("1001")
        .timeout(Duration::from_secs(20))
        .listen()?;

    // The caller talks to the PBX directly, as another extension or a trunk would.
    let caller = Sipp::new("uac.xml", pbx.dir())
        .remote(pbx.addr())
        .local_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .service("1001")
        .run()?;
    let uas = uas.wait()?;
    let context = || format!("phone:\n{}\nKamailio's log:\n{}", uas.logs(), pbx.log());
    caller.ensure_success().with_context(context)?;
    uas.ensure_success()
        .with_context(|| format!("caller:\n{}\nKamailio's log:\n{}", caller.logs(), pbx.log()))?;
    guard.stop()
}

#[test]
fn clients_from_two_addresses_are_distinct_peers_at_the_pbx() -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start(pbx.addr())?;
    let phone_a = free_udp_addr(PHONE_A)?;
    let phone_b = free_udp_addr(PHONE_B)?;
    register(&pbx, &guard, phone_a, "1001")?;
    register(&pbx, &guard, phone_b, "1002")?;

    let received_a = received_addr(&pbx, "1001")?;
    let received_b = received_addr(&pbx, "1002")?;
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert_eq!(
        (received_a.ip(), received_b.ip()),
        (loopback, loopback),
        "both come from sipguard's upstream sockets"
    );
    assert_ne!(
        received_a.port(),
        received_b.port(),
        "two clients must be two peers at the PBX"
    );
    assert!(
        ![received_a, received_b].contains(&guard.addr()),
        "upstream traffic must not come from the public socket"
    );

    // Each phone in turn answers a qualify-style OPTIONS that the PBX sends to its location
    // entry. One at a time: were the sessions crossed, the ping would reach the phone that is not
    // listening and time out.
    for (phone, user) in [(phone_a, "1001"), (phone_b, "1002")] {
        qualify(&pbx, phone, user)?;
    }

    // And both still register again through their existing sessions, keeping their peers.
    register(&pbx, &guard, phone_a, "1001")?;
    register(&pbx, &guard, phone_b, "1002")?;
    assert_eq!(
        received_addr(&pbx, "1001")?,
        received_a,
        "a client's peer address is stable while it is active"
    );
    assert_eq!(
        received_addr(&pbx, "1002")?,
        received_b,
        "a client's peer address is stable while it is active"
    );
    guard.stop()
}
