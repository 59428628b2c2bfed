//! Asterisk 22 as the PBX, for what only the real one shows: what it answers to wrong passwords,
//! to stale and made-up nonces and to many phones at once, as sipguard in front of it sees it.
//!
//! The build is not a Debian package: it sits beside the repository (`../shared/asterisk`, where
//! CI clones it; its README says what it holds); the crack tests fail when it is not there, the
//! deployment tests say `SKIPPED` ([`available_or_skip`]). Each instance unpacks into a tempdir
//! of its own, with a config written from tests/fixtures/asterisk (UDP and TCP transports on one
//! free loopback port, users with `secret-<user>` passwords) or from deploy/asterisk itself with
//! only its addresses changed ([`Asterisk::start_deployed`]), and is stopped by its PID when its
//! handle drops. A test reads it through its security log (who failed, on which nonce), its SIP
//! trace (what it sent) and `asterisk -rx` (who is registered, and reachable). [`UaPhone`] keeps
//! a phone registering meanwhile.

use super::ua::Challenge;
use super::{call_id, fixture, free_udp_addr, free_udp_port, poll_until, Registration, Ua};
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The users every instance knows unless told otherwise.
pub const ASTERISK_USERS: std::ops::RangeInclusive<u16> = 1001..=1010;

/// How many times a start is tried on a fresh port (another process may take the free port first).
const START_ATTEMPTS: usize = 3;
/// How long the transports get to show once start.sh says Asterisk booted.
const TRANSPORTS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long Asterisk gets to exit after SIGTERM (its README: about 2 s) before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// The password the generated config gives `user`.
pub fn secret(user: &str) -> String {
    format!("secret-{user}")
}

/// What an instance is configured with besides its transports.
#[derive(Debug, Clone)]
pub struct AsteriskConfig {
    /// Users with an endpoint, an auth and an aor each, the password [`secret`].
    pub users: Vec<String>,
    /// Seconds a nonce is taken for (auth `nonce_lifetime`; Asterisk's default is 32).
    pub nonce_lifetime: u32,
    /// Contacts an aor keeps (`max_contacts`, with `remove_existing = yes`; deploy/ has 1).
    pub max_contacts: u32,
}

impl Default for AsteriskConfig {
    fn default() -> Self {
        AsteriskConfig {
            users: ASTERISK_USERS.map(|user| user.to_string()).collect(),
            nonce_lifetime: 32,
            max_contacts: 2,
        }
    }
}

/// A running Asterisk, stopped on drop.
#[derive(Debug)]
pub struct Asterisk {
    addr: SocketAddr,
    pid: libc::pid_t,
    /// conf/ (what the test wrote) and run/ (the unpacked build, its logs and control socket).
    dir: tempfile::TempDir,
}

impl Asterisk {
    /// Starts Asterisk with the default users on 127.0.0.1 and a free port (UDP and TCP).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&AsteriskConfig::default())
    }

    /// Starts Asterisk with `config`, its transports on 127.0.0.1 and a free port.
    pub fn start_with(config: &AsteriskConfig) -> anyhow::Result<Self> {
        Self::start_configured(&|addr, conf| {
            std::fs::write(conf.join("pjsip.conf"), pjsip_conf(addr, config)?)?;
            std::fs::copy(
                fixture("asterisk/extensions.conf"),
                conf.join("extensions.conf"),
            )
            .context("copying extensions.conf")?;
            Ok(())
        })
    }

    /// Starts Asterisk with the configuration deploy/asterisk documents (pjsip.conf with
    /// pjsip_outbound.conf after it, extensions.conf), as an operator would run it behind the
    /// sipguard listening at `site.sipguard`; only addresses and ports are changed (see
    /// [`DeploySite`]). An error if a file no longer has an address the tests change.
    pub fn start_deployed(site: &DeploySite) -> anyhow::Result<Self> {
        Self::start_configured(&|addr, conf| {
            let read = |name: &str| {
                let path = deploy_dir().join(name);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))
            };
            let pjsip = read("pjsip.conf")? + "\n" + &read("pjsip_outbound.conf")?;
            std::fs::write(conf.join("pjsip.conf"), site.localize(&pjsip, addr)?)?;
            std::fs::write(conf.join("extensions.conf"), read("extensions.conf")?)?;
            Ok(())
        })
    }

    fn start_configured(
        write_conf: &dyn Fn(SocketAddr, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let build = build_dir()?;
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&build, write_conf) {
                Ok(asterisk) => return Ok(asterisk),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!(
            "Asterisk did not start in {START_ATTEMPTS} attempts:\n{}",
            errors.join("\n---\n")
        )
    }

    fn try_start(
        build: &Path,
        write_conf: &dyn Fn(SocketAddr, &Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let addr = free_port_for_both(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        let dir = tempfile::Builder::new()
            .prefix("sipguard-asterisk-")
            .tempdir()?;
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf)?;
        write_conf(addr, &conf)?;
        // start.sh returns once Asterisk is fully booted (or gave up after 10 s), printing its PID.
        let output = Command::new(build.join("start.sh"))
            .arg(dir.path().join("run"))
            .arg(&conf)
            .stdin(Stdio::null())
            .output()
            .context("cannot run start.sh")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "start.sh failed ({}): {}{}",
                output.status,
                stdout,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let pid = stdout
            .trim()
            .parse()
            .with_context(|| format!("start.sh printed no PID: {stdout:?}"))?;
        let asterisk = Asterisk { addr, pid, dir };
        // Booted, but a transport whose port was taken meanwhile is just left out.
        poll_until("both transports", TRANSPORTS_TIMEOUT, || {
            let transports = asterisk.rx("pjsip show transports").ok()?;
            let bound = addr.to_string();
            let listed = |protocol: &str| {
                transports.lines().any(|line| {
                    let row: Vec<&str> = line.split_whitespace().collect();
                    row.first() == Some(&"Transport:")
                        && row.get(2) == Some(&protocol)
                        && row.last() == Some(&bound.as_str())
                })
            };
            (listed("udp") && listed("tcp")).then_some(())
        })
        .with_context(|| format!("Asterisk on {addr}; its errors:\n{}", asterisk.errors()))?;
        Ok(asterisk)
    }

    /// Where Asterisk listens, on UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Runs one CLI command (`asterisk -rx`) and returns what it printed.
    pub fn rx(&self, command: &str) -> anyhow::Result<String> {
        let output = Command::new(self.run_dir().join("bin/asterisk-rx"))
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .context("cannot run asterisk-rx")?;
        if !output.status.success() {
            bail!(
                "asterisk -rx {command:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Asterisk's main log so far (notices, errors, and the SIP trace once [`Asterisk::trace`]).
    pub fn log(&self) -> String {
        read_lossy(&self.run_dir().join("log/messages.log"))
    }

    /// The NOTICE, WARNING and ERROR lines of its log (why it refused something).
    pub fn notices(&self) -> String {
        self.log()
            .lines()
            .filter(|line| {
                [" NOTICE[", " WARNING[", " ERROR["]
                    .iter()
                    .any(|l| line.contains(l))
            })
            .filter(|line| !line.contains("Unable to load config"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The ERROR lines of its log, but for the config files it is not given.
    pub fn errors(&self) -> String {
        self.log()
            .lines()
            .filter(|line| line.contains(" ERROR[") && !line.contains("Unable to load config"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The security events logged so far, in order.
    pub fn security_events(&self) -> Vec<SecurityEvent> {
        read_lossy(&self.run_dir().join("log/security.log"))
            .lines()
            .filter_map(SecurityEvent::parse)
            .collect()
    }

    /// Wrong passwords (`ChallengeResponseFailed`) logged so far for `user`.
    pub fn failures(&self, user: &str) -> usize {
        self.security_events()
            .iter()
            .filter(|e| e.event == "ChallengeResponseFailed" && e.account == user)
            .count()
    }

    /// The registered contacts, as `(aor, uri)`, from `pjsip show contacts`.
    pub fn contacts(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(parse_contacts(&self.rx("pjsip show contacts")?))
    }

    /// The registered contacts of `user`, as `(uri, status)` from `pjsip show contacts`; the
    /// status is Avail once a qualify was answered, Unavail when one was not, NonQual without
    /// qualify.
    pub fn contact_statuses(&self, user: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(parse_contact_rows(&self.rx("pjsip show contacts")?)
            .into_iter()
            .filter(|(aor, _, _)| aor == user)
            .map(|(_, uri, status)| (uri, status))
            .collect())
    }

    /// Whether `user` has a registered contact.
    pub fn registered(&self, user: &str) -> anyhow::Result<bool> {
        Ok(self.contacts()?.iter().any(|(aor, _)| aor == user))
    }

    /// Turns on the SIP trace: from now on every message Asterisk sends or receives is logged.
    pub fn trace(&self) -> anyhow::Result<()> {
        let answer = self.rx("pjsip set logger on")?;
        if !answer.contains("enabled") {
            bail!("the SIP trace did not start: {answer}");
        }
        Ok(())
    }

    /// The SIP exchange since the trace started, one line per message: who sent it to whom
    /// (`peer -> asterisk` or `asterisk -> peer`, the peer as `TRANSPORT:ip:port`) and its
    /// request or status line.
    pub fn exchange(&self) -> Vec<String> {
        sip_exchange(&self.log())
    }

    /// The WWW-Authenticate values of the responses Asterisk sent since the trace started.
    pub fn challenges_sent(&self) -> Vec<String> {
        transmitted_challenges(&self.log())
    }

    /// Stops Asterisk by its PID: SIGTERM, SIGKILL if it lingers. Only the process this handle
    /// started (its command line names this instance's run dir) is ever signalled.
    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        signal(self.pid, libc::SIGTERM);
        let exited = poll_until("Asterisk to exit", TERM_GRACE, || {
            (!self.running()).then_some(())
        });
        if exited.is_err() && self.running() {
            eprintln!("Asterisk (pid {}) ignored SIGTERM; killing it", self.pid);
            signal(self.pid, libc::SIGKILL);
        }
    }

    /// Whether this instance's Asterisk is alive (a zombie is not).
    fn running(&self) -> bool {
        let proc = PathBuf::from(format!("/proc/{}", self.pid));
        let ours = std::fs::read(proc.join("cmdline")).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline).contains(&*self.run_dir().to_string_lossy())
        });
        // The state follows the parenthesised command name in /proc/PID/stat.
        let zombie = std::fs::read_to_string(proc.join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        });
        ours && !zombie
    }
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where deploy/ keeps the Asterisk side of a deployment.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/asterisk")
}

/// Where the build beside the repository is looked for.
fn shared_build() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/asterisk")
}

/// Whether the Asterisk build is there. When it is not, says so on stderr in a line starting
/// with `SKIPPED` that names `test`, so a run without it cannot pass for one that tested it.
pub fn available_or_skip(test: &str) -> bool {
    let dir = shared_build();
    let present = dir.join("start.sh").exists();
    if !present {
        eprintln!(
            "SKIPPED {test}: no Asterisk build at {} (clone the shared folder beside the \
             repository, as CI has it, to run it)",
            dir.display()
        );
    }
    present
}

/// The addresses a deployment test gives Asterisk in place of the ones deploy/asterisk names.
#[derive(Debug, Clone)]
pub struct DeploySite {
    /// Where sipguard listens for phones (UDP and TCP on one port): replaces the public address
    /// 203.0.113.10 and the signalling port 5060 of the transports.
    pub sipguard: SocketAddr,
    /// Replaces the carrier Asterisk registers to, 198.51.100.20 (its port: where it listens).
    pub carrier: SocketAddr,
    /// Replaces sipguard's outbound proxy listener, 127.0.0.1:5070.
    pub outbound_proxy: SocketAddr,
}

impl DeploySite {
    /// `text` (deploy/asterisk's pjsip.conf) with Asterisk's own transports on `asterisk` and the
    /// other addresses this site's; an error naming any address the text no longer has.
    fn localize(&self, text: &str, asterisk: SocketAddr) -> anyhow::Result<String> {
        let replacements = [
            ("127.0.0.1:5080".to_owned(), asterisk.to_string()),
            (
                "external_signaling_port = 5060".to_owned(),
                format!("external_signaling_port = {}", self.sipguard.port()),
            ),
            ("203.0.113.10".to_owned(), self.sipguard.ip().to_string()),
            ("198.51.100.20".to_owned(), self.carrier.to_string()),
            ("127.0.0.1:5070".to_owned(), self.outbound_proxy.to_string()),
        ];
        let mut text = text.to_owned();
        for (from, to) in replacements {
            if !text.contains(&from) {
                bail!("deploy/asterisk no longer has {from}, which the tests replace");
            }
            text = text.replace(&from, &to);
        }
        Ok(text)
    }
}

/// The build beside the repository; an error saying where it was looked for if it is not there.
fn build_dir() -> anyhow::Result<PathBuf> {
    let dir = shared_build();
    if !dir.join("start.sh").exists() {
        bail!(
            "no Asterisk build at {}: the Asterisk tests need the shared folder cloned beside \
             the repository (../shared/asterisk, as CI has it)",
            dir.display()
        );
    }
    Ok(dir)
}

/// A port on `ip` free on UDP and TCP a moment ago: Asterisk (or sipguard) binds both to it.
pub fn free_port_for_both(ip: IpAddr) -> anyhow::Result<SocketAddr> {
    let mut last = None;
    for _ in 0..10 {
        let addr = SocketAddr::new(ip, free_udp_port(ip)?);
        match std::net::TcpListener::bind(addr) {
            Ok(_) => return Ok(addr),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no port"), anyhow::Error::from))
        .context("no loopback port free on both UDP and TCP")
}

/// pjsip.conf for `addr` and `config`: the fixture's transports and phone template, one
/// user.conf per user.
fn pjsip_conf(addr: SocketAddr, config: &AsteriskConfig) -> anyhow::Result<String> {
    let read = |name: &str| {
        std::fs::read_to_string(fixture(name)).with_context(|| format!("reading {name}"))
    };
    let mut conf = read("asterisk/pjsip.conf")?
        .replace("@ADDR@", &addr.ip().to_string())
        .replace("@PORT@", &addr.port().to_string());
    let user_template = read("asterisk/user.conf")?;
    for user in &config.users {
        conf += &user_template
            .replace("@USER@", user)
            .replace("@PASSWORD@", &secret(user))
            .replace("@NONCE_LIFETIME@", &config.nonce_lifetime.to_string())
            .replace("@MAX_CONTACTS@", &config.max_contacts.to_string());
    }
    Ok(conf)
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the PID is that of the
    // Asterisk this handle started, checked against its command line just before.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// One line of security.log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityEvent {
    /// `ChallengeSent`, `ChallengeResponseFailed`, `InvalidAccountID`, `SuccessfulAuth` ...
    pub event: String,
    /// When Asterisk logged it (EventTV).
    pub at: SystemTime,
    /// The username tried (AccountID).
    pub account: String,
    /// The request's Call-ID (SessionID).
    pub session: String,
    /// Where the request came from, e.g. `IPV4/UDP/127.0.0.1/36538`: behind sipguard, the
    /// client's upstream socket.
    pub remote: String,
    /// The nonce a refused answer used (Challenge; empty in ChallengeSent).
    pub challenge: String,
}

impl SecurityEvent {
    /// Reads one `SecurityEvent="...",Key="value",...` line; `None` for any other line.
    fn parse(line: &str) -> Option<Self> {
        let (_, fields) = line.split_once("SecurityEvent=")?;
        let mut values = std::collections::HashMap::new();
        let mut rest = format!("SecurityEvent={fields}");
        while let Some((key, after)) = rest.split_once("=\"") {
            let (value, next) = after.split_once('"')?;
            values.insert(key.trim_start_matches(',').to_owned(), value.to_owned());
            rest = next.to_owned();
        }
        let text = |key: &str| values.get(key).cloned().unwrap_or_default();
        Some(SecurityEvent {
            event: values.get("SecurityEvent")?.clone(),
            at: parse_event_tv(values.get("EventTV")?)?,
            account: text("AccountID"),
            session: text("SessionID"),
            remote: text("RemoteAddress"),
            challenge: text("Challenge"),
        })
    }
}

/// Reads an EventTV, `2026-12-02T05:51:58.935+0000` (always UTC in this build's log).
fn parse_event_tv(tv: &str) -> Option<SystemTime> {
    let (date, time) = tv.strip_suffix("+0000")?.split_once('T')?;
    let mut date = date.split('-').map(|n| n.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let (hms, millis) = time.split_once('.')?;
    let mut hms = hms.split(':').map(|n| n.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis.parse().ok()?))
}

/// The `(aor, uri)` of each `Contact:` row of `pjsip show contacts`.
fn parse_contacts(output: &str) -> Vec<(String, String)> {
    parse_contact_rows(output)
        .into_iter()
        .map(|(aor, uri, _)| (aor, uri))
        .collect()
}

/// The `(aor, uri, status)` of each `Contact:` row of `pjsip show contacts`.
fn parse_contact_rows(output: &str) -> Vec<(String, String, String)> {
    output
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("Contact:"))
        .filter_map(|row| {
            let mut fields = row.split_whitespace();
            let contact = fields.next()?;
            let status = fields.nth(1).unwrap_or_default();
            let (aor, uri) = contact.split_once('/')?;
            (!contact.starts_with('<')).then(|| (aor.to_owned(), uri.to_owned(), status.to_owned()))
        })
        .collect()
}

/// One line per message of a SIP trace: direction, peer, first line.
fn sip_exchange(log: &str) -> Vec<String> {
    let mut lines = log.lines();
    let mut exchange = Vec::new();
    while let Some(line) = lines.next() {
        let Some((_, banner)) = line.split_once("<--- ") else {
            continue;
        };
        let Some(banner) = banner.strip_suffix(" --->") else {
            continue;
        };
        let (received, peer) = if let Some((_, peer)) = banner.split_once(") from ") {
            (true, peer)
        } else if let Some((_, peer)) = banner.split_once(") to ") {
            (false, peer)
        } else {
            continue;
        };
        let first = lines.next().unwrap_or_default().trim();
        exchange.push(if received {
            format!("{peer} -> asterisk: {first}")
        } else {
            format!("asterisk -> {peer}: {first}")
        });
    }
    exchange
}

/// The WWW-Authenticate values of the responses in a SIP trace (`Transmitting SIP response`).
fn transmitted_challenges(log: &str) -> Vec<String> {
    let mut challenges = Vec::new();
    let mut in_response = false;
    for line in log.lines() {
        if line.contains("<--- Transmitting SIP response") {
            in_response = true;
        } else if line.trim().is_empty() || line.starts_with('[') {
            in_response = false;
        } else if in_response {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("WWW-Authenticate") {
                    challenges.push(value.trim().to_owned());
                }
            }
        }
    }
    challenges
}

/// A phone of the tests' own client (support/ua.rs) that registers, then keeps registering again
/// every `interval` on a thread of its own, from one address and port with one Call-ID, as a desk
/// phone does. Every registration must succeed.
#[derive(Debug)]
pub struct UaPhone {
    addr: SocketAddr,
    user: String,
    successes: Arc<AtomicUsize>,
    /// What each failed registration came to.
    failures: Arc<Mutex<Vec<String>>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How long one registration may take: far above a loopback round trip, so only a dropped
/// registration reaches it (the client retransmits meanwhile).
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

impl UaPhone {
    /// Registers `user` (password [`secret`]) from a free port on `ip` through `guard` once (an
    /// error if that fails), then again every `interval` until stopped.
    pub fn start(
        ip: Ipv4Addr,
        guard: SocketAddr,
        user: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let addr = free_udp_addr(ip)?;
        let mut ua = Ua::udp(addr, guard, user, &secret(user))?;
        let first = ua.register(REGISTER_TIMEOUT)?;
        if first != Registration::Registered {
            bail!("the phone {user} at {addr} did not register: {first:?}");
        }
        let successes = Arc::new(AtomicUsize::new(1));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("ua-phone-{user}"))
            .spawn({
                let (successes, failures) = (Arc::clone(&successes), Arc::clone(&failures));
                move || {
                    // Waits out the interval, or returns at once when told to stop.
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval)
                    {
                        match ua.register(REGISTER_TIMEOUT) {
                            Ok(Registration::Registered) => {
                                successes.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(other) => lock(&failures).push(format!("{other:?}")),
                            Err(e) => lock(&failures).push(format!("{e:#}")),
                        }
                    }
                }
            })?;
        Ok(UaPhone {
            addr,
            user: user.to_owned(),
            successes,
            failures,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address and port it registers from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Registrations that succeeded so far, the first included.
    pub fn successes(&self) -> usize {
        self.successes.load(Ordering::SeqCst)
    }

    /// Registrations that failed so far.
    pub fn failures(&self) -> usize {
        lock(&self.failures).len()
    }

    /// Waits (at most `within`) for one more registration after `since` successes, so that it
    /// registered after whatever the test did, then stops: an error if any registration failed.
    pub fn kept_registering(mut self, since: usize, within: Duration) -> anyhow::Result<usize> {
        let again = poll_until("the phone to register again", within, || {
            (self.successes() > since || self.failures() > 0).then_some(())
        });
        self.shutdown();
        let failures = lock(&self.failures).clone();
        if !failures.is_empty() {
            bail!(
                "the phone {} at {} failed {} registrations: {failures:?} ({} succeeded)",
                self.user,
                self.addr,
                failures.len(),
                self.successes()
            );
        }
        again?;
        Ok(self.successes())
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for UaPhone {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client that keeps the nonce of its last challenge and answers it again later, as a phone
/// that re-registers on its cached nonce does (and as a cracker replaying an old one does).
/// One Call-ID, the CSeq going up with each request.
#[derive(Debug)]
pub struct NonceKeeper {
    ua: Ua,
    call_id: String,
    cseq: u32,
    challenge: Option<Challenge>,
    /// Whether it retransmits over UDP while it waits for an answer (a phone does).
    retransmit: bool,
}

impl NonceKeeper {
    /// A client on `ua`, retransmitting or not.
    pub fn new(ua: Ua, retransmit: bool) -> Self {
        NonceKeeper {
            ua,
            call_id: call_id("keeper"),
            cseq: 0,
            challenge: None,
            retransmit,
        }
    }

    /// Sends a REGISTER without credentials and keeps the challenge that answers it. The status
    /// of the answer; `None` if none came within `timeout`.
    pub fn fetch_challenge(&mut self, timeout: Duration) -> anyhow::Result<Option<u16>> {
        self.cseq += 1;
        let request = self.ua.register_request(&self.call_id, self.cseq, None);
        let answer = self.ua.transact(&request, self.retransmit, timeout)?;
        if let Some(challenge) = answer.as_ref().and_then(|a| a.challenge()) {
            self.challenge = Some(challenge);
        }
        Ok(answer.map(|a| a.status))
    }

    /// Sends a REGISTER with `password`'s credentials on the kept nonce. A challenge in the
    /// answer replaces the kept one when `renew` (a phone takes it; a cracker replaying an old
    /// nonce does not). The status of the answer; `None` if none came within `timeout`.
    pub fn answer_kept(
        &mut self,
        password: &str,
        renew: bool,
        timeout: Duration,
    ) -> anyhow::Result<Option<u16>> {
        let challenge = self.challenge.clone().context("no challenge kept")?;
        self.cseq += 1;
        let unsigned = self.ua.register_request(&self.call_id, self.cseq, None);
        let authorization = self.ua.authorization(&unsigned, &challenge, password);
        let request = self
            .ua
            .register_request(&self.call_id, self.cseq, Some(&authorization));
        let answer = self.ua.transact(&request, self.retransmit, timeout)?;
        if renew {
            if let Some(challenge) = answer.as_ref().and_then(|a| a.challenge()) {
                self.challenge = Some(challenge);
            }
        }
        Ok(answer.map(|a| a.status))
    }

    /// The nonce it keeps.
    pub fn nonce(&self) -> Option<&str> {
        self.challenge.as_ref().map(|c| c.nonce.as_str())
    }
}

/// An `Authorization` line for `user` on `nonce` (realm `asterisk`, as Asterisk challenges) with
/// a real digest of `password` for a REGISTER to `uri`: what a forger who never saw the phone's
/// challenges can write.
pub fn credentials(user: &str, nonce: &str, password: &str, uri: &str) -> String {
    let challenge = Challenge {
        realm: "asterisk".to_owned(),
        nonce: nonce.to_owned(),
        opaque: None,
        qop_auth: true,
    };
    challenge.authorization(
        "REGISTER",
        uri,
        user,
        password,
        &super::ua::unique("cnonce"),
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn security_log_lines_are_read() {
    let line = "[2026-12-02 05:51:58.938] SECURITY[18127] res_security_log.c: \
        SecurityEvent=\"ChallengeResponseFailed\",EventTV=\"2026-12-02T05:51:58.938+0000\",\
        Severity=\"Error\",Service=\"PJSIP\",EventVersion=\"1\",AccountID=\"1001\",\
        SessionID=\"crack-1@x\",LocalAddress=\"IPV4/UDP/127.0.0.1/25080\",\
        RemoteAddress=\"IPV4/UDP/127.0.0.1/36538\",Challenge=\"1796190718/c9dc\",\
        Response=\"43bb\",ExpectedResponse=\"\"";
    let event = SecurityEvent::parse(line).expect("an event");
    assert_eq!(event.event, "ChallengeResponseFailed");
    assert_eq!(event.account, "1001");
    assert_eq!(event.session, "crack-1@x");
    assert_eq!(event.remote, "IPV4/UDP/127.0.0.1/36538");
    assert_eq!(event.challenge, "1796190718/c9dc");
    let millis = event.at.duration_since(UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(millis, 1_796_190_718_938);
    assert!(SecurityEvent::parse("[2026-12-02 05:51:40.920] Asterisk 22.10.1 built").is_none());
}

#[test]
fn contacts_are_read() {
    let contacts = "\n  Contact:  <Aor/ContactUri..............................> <Hash....> \
        <Status> <RTT(ms)..>\n=====\n\n  Contact:  1001/sip:1001@127.0.0.1:35679      \
        f3b426abf1 NonQual         nan\n\nObjects found: 1\n";
    assert_eq!(
        parse_contacts(contacts),
        vec![("1001".to_owned(), "sip:1001@127.0.0.1:35679".to_owned())]
    );
    let uri = "sip:1001@127.0.0.1:35679".to_owned();
    let status = "NonQual".to_owned();
    assert_eq!(
        parse_contact_rows(contacts),
        vec![("1001".to_owned(), uri, status)]
    );
}

#[test]
fn the_exchange_is_read_from_a_sip_trace() {
    let log = "[2026-12-02 05:53:49.645] VERBOSE[1] res_pjsip_logger.c: <--- Received SIP \
        request (600 bytes) from UDP:127.0.1.1:46650 --->\nINVITE sip:15551230001@x SIP/2.0\n\
        Via: x\n\n[2026-12-02 05:53:49.646] VERBOSE[1] res_pjsip_logger.c: <--- Transmitting \
        SIP response (503 bytes) to UDP:127.0.1.1:46650 --->\nSIP/2.0 100 Trying\n\n";
    assert_eq!(
        sip_exchange(log),
        vec![
            "UDP:127.0.1.1:46650 -> asterisk: INVITE sip:15551230001@x SIP/2.0".to_owned(),
            "asterisk -> UDP:127.0.1.1:46650: SIP/2.0 100 Trying".to_owned(),
        ]
    );
}

#[test]
fn challenges_are_read_from_the_responses_of_a_sip_trace() {
    let log = "[2026-12-02 05:53:49.645] VERBOSE[1] res_pjsip_logger.c: <--- Transmitting SIP \
        response (503 bytes) to UDP:127.0.0.1:46650 --->\nSIP/2.0 401 Unauthorized\n\
        CSeq: 1 REGISTER\nWWW-Authenticate: Digest realm=\"asterisk\",nonce=\"1/a\",stale=true\n\
        Content-Length:  0\n\n\n[2026-12-02 05:53:49.645] VERBOSE[1] res_pjsip_logger.c: <--- \
        Received SIP request (600 bytes) from UDP:127.0.0.1:46650 --->\nREGISTER sip:x SIP/2.0\n\
        WWW-Authenticate: Digest not-sent\n\n";
    assert_eq!(
        transmitted_challenges(log),
        vec!["Digest realm=\"asterisk\",nonce=\"1/a\",stale=true".to_owned()]
    );
}
