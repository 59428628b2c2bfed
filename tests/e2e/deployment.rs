//! sipguard in front of a real Asterisk 22 configured with deploy/asterisk itself (pjsip.conf,
//! pjsip_outbound.conf, extensions.conf; only addresses and ports changed): what an operator
//! following deploy/README.md gets. Phones over UDP, TCP and TLS register, answer qualify and take
//! calls that either side hangs up; a carrier known by its address reaches its DID through its
//! loopback identity while a stranger dialling the same number is challenged, and a digest trunk
//! gets in with its account; a phone keeps getting calls across a `kill -9` of sipguard, before it
//! registers again, and then has one contact; `sipguard sessions` names the client behind the
//! port Asterisk lists. Against the Kamailio stand-in too: the restart, and the carrier's
//! identity as the PBX sees it (Kamailio has no `identify`; UDP, TCP and TLS phones through
//! sipguard to Kamailio are tcp.rs's and relay.rs's).
//!
//! The phones are support/softphone.rs (a thread that answers what the PBX sends), carriers and
//! strangers SIPp. Asterisk's SIP trace gives the exchange each test prints (`cargo test --test
//! e2e deployment -- --nocapture`). Without the Asterisk build the Asterisk tests print a
//! `SKIPPED` line and pass. Addresses: 127.0.6.x.

use crate::support::asterisk::{available_or_skip, free_port_for_both, Asterisk, DeploySite};
use crate::support::certs::{TestCa, SERVER_NAME};
use crate::support::{
    call_id, free_udp_addr, password, poll_until, Call, Daemon, DaemonConfig, Kamailio,
    Registration, Sipguard, Sipp, Softphone, Stunnel, Ua,
};
use anyhow::{ensure, Context};
use sipguard_policy::{AllowGroup, IpNet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// The phones, one per transport, and their addresses.
const UDP_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 1);
const TCP_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 2);
const TLS_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 3);
/// The phones the carriers' DIDs ring.
const DID_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 11);
const TRUNK_DID_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 12);
/// A carrier known by its address, a caller from anywhere else, a digest trunk.
const CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 20);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 21);
const DIGEST_TRUNK: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 22);
/// The phones of the restart and tracing tests.
const RESTART_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 31);
const TRACED_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 32);
const KAMAILIO_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 41);
const KAMAILIO_CALLER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 42);
const KAMAILIO_CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 43);
const KAMAILIO_STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 44);
/// Where the carrier Asterisk registers to (pjsip_outbound.conf) would be; nothing answers there.
const REGISTERED_CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 90);
/// The carrier of the outbound test, which does answer, and the phone its call rings.
const OUTBOUND_CARRIER: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 91);
const OUTBOUND_PHONE: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 92);
/// Each test's sipguard listens on an address of its own, the host's "public" address that
/// Asterisk's transports name, so no other test's sockets can take its port meanwhile.
const PHONES_FRONT: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 101);
const CARRIERS_FRONT: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 102);
const RESTART_FRONT: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 103);
const TRACED_FRONT: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 104);
const KAMAILIO_FRONT: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 105);
const LOADED_FRONT: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 106);
const OUTBOUND_FRONT: Ipv4Addr = Ipv4Addr::new(127, 0, 6, 107);

/// The loopback identity of the carrier's allowlist group, as deploy/asterisk's identify has it.
const IDENTITY: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);
/// The DIDs of deploy/asterisk/extensions.conf, ringing 1001 and 1002.
const DID_1001: &str = "15551230001";
const DID_1002: &str = "15551230002";
/// The digest trunk's account in deploy/asterisk/pjsip.conf (the endpoint's name).
const TRUNK_ACCOUNT: &str = "example-digest-trunk";
const TRUNK_PASSWORD: &str = "change-me-trunk-to-a-long-random-secret";

/// How long a qualify, a call or a registration may take to show.
const SHOWS: Duration = Duration::from_secs(15);
/// How long SIPp's carriers and callers get.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The password deploy/asterisk/pjsip.conf gives phone `user`.
fn phone_password(user: &str) -> String {
    format!("change-me-{user}-to-a-long-random-secret")
}

/// Asterisk started from deploy/asterisk with its SIP trace on, and the address on `front` (UDP
/// and TCP on one port) its sipguard must listen on: Asterisk's transports name it as the
/// public address.
fn deployed_asterisk(front: Ipv4Addr) -> anyhow::Result<(Asterisk, SocketAddr)> {
    let front = free_port_for_both(IpAddr::V4(front))?;
    let site = DeploySite {
        sipguard: front,
        carrier: free_udp_addr(REGISTERED_CARRIER)?,
        outbound_proxy: free_udp_addr(REGISTERED_CARRIER)?,
    };
    let pbx = Asterisk::start_deployed(&site)?;
    pbx.trace()?;
    Ok((pbx, front))
}

/// The sipguard binary in front of `pbx` on `front`, with `yaml` as its config in `dir`.
fn daemon_config(
    dir: &Path,
    yaml: &str,
    pbx: SocketAddr,
    front: SocketAddr,
) -> anyhow::Result<DaemonConfig> {
    let mut config = DaemonConfig::in_dir(dir, yaml, pbx)?;
    config.listen = front;
    Ok(config)
}

/// Waits until Asterisk lists one contact for `user`, reachable (Avail: it answered a qualify);
/// the contact's URI.
fn reachable_contact(pbx: &Asterisk, user: &str) -> anyhow::Result<String> {
    poll_until(&format!("{user} to be reachable"), SHOWS, || {
        let contacts = pbx.contact_statuses(user).ok()?;
        match contacts.as_slice() {
            [(uri, status)] if status == "Avail" => Some(uri.clone()),
            _ => None,
        }
    })
    .with_context(|| {
        format!(
            "contacts: {}",
            pbx.rx("pjsip show contacts").unwrap_or_default()
        )
    })
}

/// Has Asterisk call `user` (`channel originate`), answering into Wait(`seconds`), then hang up.
fn originate(pbx: &Asterisk, user: &str, seconds: u32) -> anyhow::Result<()> {
    let answer = pbx.rx(&format!(
        "channel originate PJSIP/{user} application Wait {seconds}"
    ))?;
    ensure!(
        !answer.to_ascii_lowercase().contains("error"),
        "originate to {user}: {answer}"
    );
    Ok(())
}

/// Waits for the phone's call number `index` (counting from 0) to satisfy `done`.
fn call_where(
    phone: &Softphone,
    index: usize,
    what: &str,
    done: impl Fn(&Call) -> bool,
) -> anyhow::Result<Call> {
    poll_until(&format!("{} {what}", phone.user()), SHOWS, || {
        phone.calls().get(index).filter(|call| done(call)).cloned()
    })
    .with_context(|| format!("{} trace:\n{}", phone.user(), phone.trace()))
}

/// Waits until Asterisk has no channel to `user` left.
fn channels_gone(pbx: &Asterisk, user: &str) -> anyhow::Result<()> {
    let channel = format!("PJSIP/{user}-");
    poll_until(&format!("{user}'s channels to end"), SHOWS, || {
        let channels = pbx.rx("core show channels concise").ok()?;
        (!channels.contains(&channel)).then_some(())
    })
}

/// Asterisk rings `phone` twice: it hangs up the first call itself, the phone hangs up the second.
/// The INVITEs name sipguard's address `front` as Asterisk's Contact, where the phone's BYE goes.
fn takes_calls_both_ways(
    pbx: &Asterisk,
    phone: &Softphone,
    front: SocketAddr,
) -> anyhow::Result<()> {
    let user = phone.user().to_owned();
    originate(pbx, &user, 1)?;
    let call = call_where(phone, 0, "to take a call Asterisk hangs up", |call| {
        call.acked && call.bye_received
    })?;
    ensure!(
        call.contact.contains(&format!("@{front}")) || call.contact.contains(&format!(":{front}")),
        "the INVITE to {user} gave Contact {}, not sipguard's {front}",
        call.contact
    );
    channels_gone(pbx, &user)?;
    originate(pbx, &user, 60)?;
    let call = call_where(phone, 1, "to take a second call", |call| call.acked)?;
    let status = phone.hang_up(&call.call_id)?;
    ensure!(
        status == 200,
        "{user}'s BYE got {status}; trace:\n{}",
        phone.trace()
    );
    channels_gone(pbx, &user)
}

/// Prints the SIP exchange Asterisk's trace shows, under `title`, but for the registration
/// pjsip_outbound.conf keeps retrying towards a carrier that is not there.
fn report(title: &str, pbx: &Asterisk) {
    let unanswered = format!(":{REGISTERED_CARRIER}:");
    let exchange: Vec<String> = pbx
        .exchange()
        .into_iter()
        .filter(|line| !line.contains(&unanswered))
        .collect();
    eprintln!("deployment, {title}:\n  {}", exchange.join("\n  "));
}

#[test]
fn phones_over_udp_tcp_and_tls_register_answer_qualify_and_take_calls_behind_sipguard(
) -> anyhow::Result<()> {
    if !available_or_skip("deployment::phones_over_udp_tcp_and_tls") {
        return Ok(());
    }
    let (pbx, front) = deployed_asterisk(PHONES_FRONT)?;
    let certs = tempfile::tempdir()?;
    let ca = TestCa::new("sipguard deployment CA");
    let issued = ca.issue(certs.path(), "sipguard", false);
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        config.listen_udp = vec![front];
        config.listen_tcp = vec![front];
        config.listen_tls = vec![(PHONES_FRONT, 0).into()];
        config.tls = Some(sipguard::TlsFiles {
            certificate: issued.certificate.clone(),
            key: issued.key.clone(),
        });
    })?;
    let tunnel = Stunnel::client(
        certs.path(),
        TLS_PHONE,
        guard.tls_addr(),
        &ca.pem(),
        SERVER_NAME,
    )?;
    let phones = [
        Ua::udp(
            (UDP_PHONE, 0).into(),
            front,
            "1001",
            &phone_password("1001"),
        )?,
        Ua::tcp(TCP_PHONE.into(), front, "1002", &phone_password("1002"))?,
        Ua::tcp(
            TLS_PHONE.into(),
            tunnel.addr(),
            "1003",
            &phone_password("1003"),
        )?,
    ];
    let phones: Vec<Softphone> = phones
        .into_iter()
        .map(Softphone::registered)
        .collect::<anyhow::Result<_>>()?;

    for phone in &phones {
        let uri = reachable_contact(&pbx, phone.user())?;
        // Asterisk knows the phone by sipguard's socket for it, never by the phone's address.
        ensure!(
            uri.contains("@127.0.0.1:") && !uri.contains(&phone.addr().ip().to_string()),
            "{}'s contact is {uri}",
            phone.user()
        );
        ensure!(
            phone.options_answered() >= 1,
            "{} was never qualified",
            phone.user()
        );
        takes_calls_both_ways(&pbx, phone, front)
            .with_context(|| format!("{} over {}", phone.user(), phone.addr()))?;
        ensure!(
            phone.errors().is_empty(),
            "{}: {:?}",
            phone.user(),
            phone.errors()
        );
    }
    let tls = guard.counter("sipguard_connections_total", &["transport=\"tls\""]);
    ensure!(tls >= 1.0, "the TLS phone's connection was not counted");
    report("phones over UDP, TCP and TLS", &pbx);
    drop(phones);
    guard.stop()
}

/// `Executing [NUMBER@CONTEXT:1] Dial("PJSIP/ENDPOINT-...` lines of Asterisk's log: calls the
/// dialplan ran in `context` for `number` from `endpoint`.
fn dialplan_runs(pbx: &Asterisk, number: &str, context: &str, endpoint: &str) -> usize {
    let line = format!("Executing [{number}@{context}:1] Dial(\"PJSIP/{endpoint}-");
    pbx.log().matches(&line).count()
}

#[test]
fn a_carrier_known_by_its_address_reaches_its_did_through_its_identity_and_a_stranger_is_challenged(
) -> anyhow::Result<()> {
    if !available_or_skip("deployment::a_carrier_known_by_its_address") {
        return Ok(());
    }
    let (pbx, front) = deployed_asterisk(CARRIERS_FRONT)?;
    let dir = tempfile::tempdir()?;
    // The groups deploy/asterisk/pjsip.conf asks for: the carrier with its identity, the digest
    // trunk without.
    std::fs::write(
        dir.path().join("allowlist.yaml"),
        format!(
            "carriers:\n  - name: example-carrier\n    cidrs: [{CARRIER}]\n    identity: {IDENTITY}\n\
             \x20 - name: example-digest-trunk\n    cidrs: [{DIGEST_TRUNK}]\n"
        ),
    )?;
    let yaml = "allowlist:\n  file: allowlist.yaml\n";
    let guard = Daemon::start(&daemon_config(dir.path(), yaml, pbx.addr(), front)?)?;
    let did_phone = Softphone::registered(Ua::udp(
        (DID_PHONE, 0).into(),
        front,
        "1001",
        &phone_password("1001"),
    )?)?;
    let trunk_phone = Softphone::registered(Ua::udp(
        (TRUNK_DID_PHONE, 0).into(),
        front,
        "1002",
        &phone_password("1002"),
    )?)?;
    reachable_contact(&pbx, "1001")?;
    reachable_contact(&pbx, "1002")?;

    // The carrier calls the DID without credentials: Asterisk knows it by 127.0.1.1.
    Sipp::new("uac.xml", dir.path())
        .remote(front)
        .local(free_udp_addr(CARRIER)?)
        .service(DID_1001)
        .timeout(CALL_TIMEOUT)
        .run()?
        .ensure_success()
        .with_context(|| {
            format!(
                "the carrier's call; sipguard's log:\n{}",
                guard.log().join("\n")
            )
        })?;
    call_where(&did_phone, 0, "to take the carrier's call", |call| {
        call.acked && call.bye_received
    })?;
    let identity_invite = format!("UDP:{IDENTITY}:");
    let from_identity = pbx.exchange().iter().any(|line| {
        line.starts_with(&identity_invite) && line.contains(&format!("INVITE sip:{DID_1001}@"))
    });
    ensure!(
        from_identity,
        "the carrier's INVITE did not come from {IDENTITY}:\n{}",
        pbx.exchange().join("\n")
    );
    ensure!(dialplan_runs(&pbx, DID_1001, "from-carrier", "example-carrier") == 1);

    // A caller from another address sends the same INVITE: it arrives from 127.0.0.1, matches
    // no identify, and is challenged.
    Sipp::new("invite_challenged.xml", dir.path())
        .remote(front)
        .local(free_udp_addr(STRANGER)?)
        .service(DID_1001)
        .timeout(CALL_TIMEOUT)
        .run()?
        .ensure_success()
        .context("the stranger was not challenged")?;
    // A stranger naming the carrier's endpoint in From (pjsip identifies by From user unless
    // told `identify_by = ip`) is challenged as well.
    let mut impostor = Ua::udp((STRANGER, 0).into(), front, "example-carrier", "")?;
    let invite = impostor.request("INVITE", Some(DID_1001), &call_id("impostor"), 1, &[]);
    let answer = impostor.transact(&invite, true, SHOWS)?;
    ensure!(
        answer.as_ref().is_some_and(|a| a.status == 401),
        "an INVITE from example-carrier@ (the stranger) got {:?}",
        answer.map(|a| a.status)
    );
    let runs = dialplan_runs(&pbx, DID_1001, "from-carrier", "example-carrier");
    ensure!(runs == 1, "the carrier's context ran {runs} times");
    ensure!(
        did_phone.calls().len() == 1,
        "the stranger's call rang the phone: {:?}",
        did_phone.calls()
    );

    // The digest trunk gets in by its account, from the shared loopback address.
    Sipp::new("digest_trunk_call.xml", dir.path())
        .remote(front)
        .local(free_udp_addr(DIGEST_TRUNK)?)
        .service(DID_1002)
        .auth(TRUNK_ACCOUNT, TRUNK_PASSWORD)
        .timeout(CALL_TIMEOUT)
        .run()?
        .ensure_success()
        .with_context(|| format!("the digest trunk's call; Asterisk:\n{}", pbx.notices()))?;
    call_where(&trunk_phone, 0, "to take the trunk's call", |call| {
        call.acked && call.bye_received
    })?;
    ensure!(dialplan_runs(&pbx, DID_1002, "from-carrier", "example-digest-trunk") == 1);
    report("carriers", &pbx);
    Ok(())
}

/// The upstream port of a contact URI (`sip:1001@127.0.0.1:40312;transport=TCP`).
fn contact_port(uri: &str) -> anyhow::Result<u16> {
    let hostport = uri.split(';').next().unwrap_or(uri);
    let (_, port) = hostport
        .rsplit_once(':')
        .with_context(|| format!("no port in {uri}"))?;
    Ok(port.parse()?)
}

/// Registers `user` from `ip` through `front` and waits until Asterisk reaches it; the phone
/// and its contact.
fn reachable_phone(
    pbx: &Asterisk,
    ip: Ipv4Addr,
    front: SocketAddr,
    user: &str,
) -> anyhow::Result<(Softphone, String)> {
    let ua = Ua::udp((ip, 0).into(), front, user, &phone_password(user))?;
    let phone = Softphone::registered(ua)?;
    let contact = reachable_contact(pbx, user)?;
    Ok((phone, contact))
}

/// Waits until the session file beside `config`'s journal lists `client`.
fn session_saved(config: &DaemonConfig, client: SocketAddr) -> anyhow::Result<()> {
    let file = config.journal.with_file_name("sessions");
    poll_until("the session to be saved", SHOWS, || {
        let text = std::fs::read_to_string(&file).ok()?;
        text.contains(&format!("{client} ")).then_some(())
    })
}

/// REGISTERs the phone sent so far.
fn registers_sent(phone: &Softphone) -> usize {
    phone.trace().matches("-> REGISTER ").count()
}

#[test]
fn a_phone_takes_a_call_after_sipguard_is_killed_and_restarted_before_it_registers_again(
) -> anyhow::Result<()> {
    if !available_or_skip("deployment::a_phone_takes_a_call_after_sipguard_is_killed") {
        return Ok(());
    }
    let (pbx, front) = deployed_asterisk(RESTART_FRONT)?;
    let dir = tempfile::tempdir()?;
    let config = daemon_config(dir.path(), "", pbx.addr(), front)?;
    let guard = Daemon::start(&config)?;
    let (phone, contact) = reachable_phone(&pbx, RESTART_PHONE, front, "1001")?;
    session_saved(&config, phone.addr())?;

    guard.kill()?;
    let guard = Daemon::start(&config)?;
    let registered = registers_sent(&phone);
    originate(&pbx, "1001", 1)?;
    call_where(&phone, 0, "to take a call after the restart", |call| {
        call.acked && call.bye_received
    })
    .with_context(|| format!("sipguard's log:\n{}", guard.log().join("\n")))?;
    ensure!(
        registers_sent(&phone) == registered,
        "the phone registered again before the call"
    );

    // When it does register again, it comes back on the same contact, and only that one.
    ensure!(phone.register()? == Registration::Registered);
    let contacts = pbx.contact_statuses("1001")?;
    ensure!(
        contacts.len() == 1 && contacts[0].0 == contact,
        "after the restart and a new registration: {contacts:?}, before: {contact}"
    );
    report("a call across a restart", &pbx);
    Ok(())
}

#[test]
fn sipguard_sessions_names_the_phone_behind_the_port_asterisk_lists() -> anyhow::Result<()> {
    if !available_or_skip("deployment::sipguard_sessions_names_the_phone") {
        return Ok(());
    }
    let (pbx, front) = deployed_asterisk(TRACED_FRONT)?;
    let dir = tempfile::tempdir()?;
    let guard = Daemon::start(&daemon_config(dir.path(), "", pbx.addr(), front)?)?;
    let (phone, contact) = reachable_phone(&pbx, TRACED_PHONE, front, "1001")?;
    let port = contact_port(&contact)?.to_string();

    let table = guard.sessions(&[&port])?;
    let printed = String::from_utf8_lossy(&table.stdout);
    ensure!(
        table.status.success() && printed.contains(&phone.addr().to_string()),
        "`sipguard sessions {port}` ({}): {printed}{}",
        table.status,
        String::from_utf8_lossy(&table.stderr)
    );
    let json = guard.sessions(&[&port, "--json"])?;
    let value: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let sessions = value["sessions"].as_array().context("no sessions array")?;
    ensure!(
        sessions.len() == 1
            && sessions[0]["client"] == phone.addr().to_string()
            && sessions[0]["upstream"] == format!("127.0.0.1:{port}"),
        "{value}"
    );
    // The same pair is in sipguard's log, at info level.
    let opened = guard.wait_for_log("session opened", SHOWS)?;
    ensure!(
        opened.contains(&phone.addr().to_string()) && opened.contains(&port),
        "{opened}"
    );
    Ok(())
}

#[test]
fn a_phone_registered_through_sipguard_keeps_getting_kamailios_calls_across_a_kill_9(
) -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let front = free_port_for_both(IpAddr::V4(KAMAILIO_FRONT))?;
    let dir = tempfile::tempdir()?;
    let config = daemon_config(dir.path(), "", pbx.addr(), front)?;
    let guard = Daemon::start(&config)?;
    let ua = Ua::udp((KAMAILIO_PHONE, 0).into(), front, "1001", password("1001"))?;
    let phone = Softphone::registered(ua)?;
    let before = pbx.received_addrs("1001")?;
    ensure!(before.len() == 1, "Kamailio's location: {before:?}");
    session_saved(&config, phone.addr())?;

    guard.kill()?;
    let guard = Daemon::start(&config)?;
    let registered = registers_sent(&phone);
    // A caller on the PBX's side: Kamailio relays its INVITE, ACK and BYE to the location.
    let call = Sipp::new("uac.xml", pbx.dir())
        .remote(pbx.addr())
        .local(free_udp_addr(KAMAILIO_CALLER)?)
        .service("1001")
        .timeout(CALL_TIMEOUT)
        .run()?;
    call.ensure_success().with_context(|| {
        format!(
            "phone:\n{}\nsipguard:\n{}\nKamailio:\n{}",
            phone.trace(),
            guard.log().join("\n"),
            pbx.log()
        )
    })?;
    call_where(&phone, 0, "to take Kamailio's call", |call| {
        call.acked && call.bye_received
    })?;
    ensure!(registers_sent(&phone) == registered);
    ensure!(phone.register()? == Registration::Registered);
    let after = pbx.received_addrs("1001")?;
    ensure!(after == before, "before: {before:?}, after: {after:?}");
    Ok(())
}

#[test]
fn kamailio_sees_an_allowlisted_carrier_at_its_identity_and_everyone_else_at_the_shared_address(
) -> anyhow::Result<()> {
    let pbx = Kamailio::start()?;
    let guard = Sipguard::start_with(pbx.addr(), |config| {
        config.policy.allowlist = vec![AllowGroup {
            identity: Some(IDENTITY.into()),
            ..AllowGroup::new(
                "example-carrier",
                [IpNet::from(IpAddr::V4(KAMAILIO_CARRIER))],
            )
        }];
    })?;
    let mut sent = Vec::new();
    for ip in [KAMAILIO_CARRIER, KAMAILIO_STRANGER] {
        let mut ua = Ua::udp((ip, 0).into(), guard.addr(), "carrier", "")?;
        let options = ua.request("OPTIONS", None, &call_id("identity"), 1, &[]);
        let answer = ua.transact(&options, true, SHOWS)?;
        ensure!(
            answer.as_ref().is_some_and(|a| a.status == 200),
            "{ip}'s OPTIONS: {answer:?}"
        );
        sent.push((ip, options.call_id));
    }
    let requests = pbx.requests();
    let peer = |call_id: &str| {
        requests
            .iter()
            .find(|request| request.call_id == call_id)
            .map(|request| request.peer.ip())
    };
    let (carrier, stranger) = (peer(&sent[0].1), peer(&sent[1].1));
    ensure!(
        carrier == Some(IpAddr::V4(IDENTITY)) && stranger == Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "Kamailio saw the carrier from {carrier:?} and the stranger from {stranger:?}"
    );
    guard.stop()
}

/// deploy/asterisk loads whole: every section a test here does not call through is there too.
#[test]
fn every_section_of_deploy_asterisk_is_loaded() -> anyhow::Result<()> {
    if !available_or_skip("deployment::every_section_of_deploy_asterisk_is_loaded") {
        return Ok(());
    }
    let (pbx, _) = deployed_asterisk(LOADED_FRONT)?;
    let endpoints = pbx.rx("pjsip show endpoints")?;
    for endpoint in [
        "1001",
        "1002",
        "1003",
        "example-carrier",
        "example-digest-trunk",
        "example-registered-carrier",
    ] {
        ensure!(
            endpoints.contains(&format!("Endpoint:  {endpoint} ")),
            "no endpoint {endpoint}:\n{endpoints}"
        );
    }
    let registrations = pbx.rx("pjsip show registrations")?;
    ensure!(
        registrations.contains("example-registered-carrier/sip:"),
        "{registrations}"
    );
    let identify = pbx.rx("pjsip show identifies")?;
    ensure!(identify.contains(&format!("{IDENTITY}/32")), "{identify}");
    // What a section Asterisk refuses or cannot use is logged by: the sorcery loaders, the
    // pjsip modules, the dialplan loader.
    let errors = pbx.errors();
    let refused: Vec<&str> = errors
        .lines()
        .filter(|line| {
            ["sorcery", "pjsip", "pbx_config", "config.c"]
                .iter()
                .any(|s| line.contains(s))
        })
        .collect();
    ensure!(
        refused.is_empty(),
        "Asterisk refused:\n{}",
        refused.join("\n")
    );
    Ok(())
}

/// The `line` parameter of the Contact Asterisk registered to its carrier (its SIP trace).
fn registered_line(pbx: &Asterisk) -> Option<String> {
    let log = pbx.log();
    let (_, after) = log.split_once(";line=")?;
    let line: String = after
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    (!line.is_empty()).then_some(line)
}

/// Asterisk, listening on loopback only, registers to a carrier and calls it through sipguard's
/// outbound listener (deploy/asterisk/pjsip_outbound.conf's `outbound_proxy`): the REGISTER and
/// the INVITE leave from sipguard's public address, the carrier's BYE comes back along
/// sipguard's Record-Route and Asterisk answers it, and the carrier's next call, to the Contact
/// Asterisk registered, reaches the carrier's context and rings a phone.
#[test]
fn asterisk_registers_and_calls_out_through_sipguard_and_the_carriers_bye_and_next_call_come_back(
) -> anyhow::Result<()> {
    if !available_or_skip("deployment::asterisk_registers_and_calls_out") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let carrier = free_udp_addr(OUTBOUND_CARRIER)?;
    let outbound = free_udp_addr(Ipv4Addr::LOCALHOST)?;
    let front = free_port_for_both(IpAddr::V4(OUTBOUND_FRONT))?;
    // The carrier listens first: Asterisk registers as it boots, and retransmits its REGISTER
    // until sipguard, started next, relays one.
    let registrar = Sipp::new("carrier_register.xml", dir.path())
        .local(carrier)
        .timeout(CALL_TIMEOUT)
        .listen()?;
    let site = DeploySite {
        sipguard: front,
        carrier,
        outbound_proxy: outbound,
    };
    let pbx = Asterisk::start_deployed(&site)?;
    pbx.trace()?;
    std::fs::write(
        dir.path().join("allowlist.yaml"),
        format!(
            "carriers:\n  - name: example-registered-carrier\n    cidrs: [{OUTBOUND_CARRIER}]\n"
        ),
    )?;
    let yaml = format!("allowlist:\n  file: allowlist.yaml\noutbound:\n  listen: \"{outbound}\"\n");
    let guard = Daemon::start(&daemon_config(dir.path(), &yaml, pbx.addr(), front)?)?;
    registrar
        .wait()?
        .ensure_success()
        .with_context(|| format!("the carrier's registrar; Asterisk:\n{}", pbx.notices()))?;
    poll_until("the registration to the carrier", SHOWS, || {
        let registrations = pbx.rx("pjsip show registrations").ok()?;
        registrations
            .lines()
            .any(|line| line.contains("example-registered-carrier") && line.contains("Registered"))
            .then_some(())
    })?;

    // Asterisk calls out; the carrier answers, then hangs up along the Record-Route.
    let callee = Sipp::new("carrier_call.xml", dir.path())
        .local(carrier)
        .timeout(CALL_TIMEOUT)
        .listen()?;
    let answer =
        pbx.rx("channel originate PJSIP/5551234@example-registered-carrier application Wait 30")?;
    ensure!(
        !answer.to_ascii_lowercase().contains("error"),
        "originate: {answer}"
    );
    callee.wait()?.ensure_success().with_context(|| {
        format!(
            "the carrier's side of the call; Asterisk:\n{}",
            pbx.notices()
        )
    })?;
    channels_gone(&pbx, "example-registered-carrier")?;

    // The carrier's next call, to the Contact Asterisk registered, rings the DID's phone.
    let phone = Softphone::registered(Ua::udp(
        (OUTBOUND_PHONE, 0).into(),
        front,
        "1001",
        &phone_password("1001"),
    )?)?;
    reachable_contact(&pbx, "1001")?;
    let line = registered_line(&pbx).context("no line parameter in Asterisk's REGISTER")?;
    Sipp::new("carrier_calls_line.xml", dir.path())
        .remote(front)
        .local(carrier)
        .service(DID_1001)
        .key("line", &line)
        .timeout(CALL_TIMEOUT)
        .run()?
        .ensure_success()
        .with_context(|| format!("the carrier's next call; Asterisk:\n{}", pbx.notices()))?;
    call_where(&phone, 0, "to take the carrier's call", |call| {
        call.acked && call.bye_received
    })?;
    let runs = dialplan_runs(&pbx, DID_1001, "from-carrier", "example-registered-carrier");
    ensure!(
        runs == 1,
        "the registered carrier's context ran {runs} times"
    );

    // Everything went through sipguard: Asterisk only ever talked to loopback addresses.
    let transports = pbx.rx("pjsip show transports")?;
    ensure!(
        transports
            .lines()
            .filter(|line| line.starts_with("Transport:") && !line.contains("<TransportId"))
            .all(|line| line.contains("127.0.0.1:")),
        "Asterisk listens beyond loopback:\n{transports}"
    );
    let foreign: Vec<String> = pbx
        .exchange()
        .into_iter()
        .filter(|line| !line.contains("127."))
        .collect();
    ensure!(
        foreign.is_empty(),
        "Asterisk talked to non-loopback peers: {foreign:?}"
    );
    let relayed = guard
        .scrape()?
        .value(
            "sipguard_outbound_requests_total",
            &[("result", "forwarded")],
        )
        .unwrap_or(0.0);
    ensure!(
        relayed >= 2.0,
        "sipguard relayed {relayed} of Asterisk's requests"
    );
    report("outbound", &pbx);
    Ok(())
}
