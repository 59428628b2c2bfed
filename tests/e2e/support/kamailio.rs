//! Kamailio as the stand-in PBX: a registrar with digest auth (tests/fixtures/kamailio/pbx.cfg)
//! on 127.0.0.1 and a free port, its control socket in a tempdir for `kamcmd`.

use super::process::Guarded;
use super::{fixture, free_udp_port, poll_until};
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The users pbx.cfg knows, with their passwords.
pub const USERS: [(&str, &str); 5] = [
    ("1001", "secret-1001"),
    ("1002", "secret-1002"),
    ("1003", "secret-1003"),
    ("1004", "secret-1004"),
    ("1005", "secret-1005"),
];

/// How many times a start is tried on a fresh port (another process may take the free port first).
const START_ATTEMPTS: usize = 5;
/// How long Kamailio gets to answer its first OPTIONS.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running Kamailio, stopped on drop.
#[derive(Debug)]
pub struct Kamailio {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    process: Guarded,
}

impl Kamailio {
    /// Starts Kamailio on 127.0.0.1 and a free port and waits until it answers OPTIONS.
    pub fn start() -> anyhow::Result<Self> {
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start() {
                Ok(kamailio) => return Ok(kamailio),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        bail!(
            "Kamailio did not start in {START_ATTEMPTS} attempts:\n{}",
            errors.join("\n---\n")
        )
    }

    fn try_start() -> anyhow::Result<Self> {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let addr = SocketAddr::new(ip, free_udp_port(ip)?);
        let dir = tempfile::Builder::new()
            .prefix("sipguard-kamailio-")
            .tempdir()?;
        let template =
            std::fs::read_to_string(fixture("kamailio/pbx.cfg")).context("reading pbx.cfg")?;
        let rundir = dir.path().to_str().context("tempdir path is not UTF-8")?;
        let cfg = template
            .replace("@ADDR@", &addr.ip().to_string())
            .replace("@PORT@", &addr.port().to_string())
            .replace("@RUNDIR@", rundir);
        let cfg_path = dir.path().join("pbx.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let log = std::fs::File::create(dir.path().join("kamailio.log"))?;

        let mut command = Command::new(sbin("kamailio"));
        command
            .args(["-DD", "-E", "-m", "32", "-M", "8", "-f"])
            .arg(&cfg_path)
            .arg("-Y")
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = Guarded::spawn("kamailio", command)?;
        let mut kamailio = Kamailio { addr, dir, process };
        kamailio
            .wait_ready()
            .with_context(|| format!("Kamailio on {addr}; its log:\n{}", kamailio.log()))?;
        Ok(kamailio)
    }

    /// Polls with OPTIONS until Kamailio answers 200 and its control socket exists.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let probe = UdpSocket::bind("127.0.0.1:0")?;
        probe.set_read_timeout(Some(Duration::from_millis(100)))?;
        let local = probe.local_addr()?;
        let mut sequence = 0u32;
        let mut exited = None;
        poll_until("Kamailio to answer OPTIONS", READY_TIMEOUT, || {
            if let Ok(Some(status)) = self.process.try_wait() {
                exited = Some(status);
                return Some(());
            }
            sequence += 1;
            let call_id = format!("ready-{sequence}-{}@{local}", std::process::id());
            let options = format!(
                "OPTIONS sip:{addr} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bK-ready-{sequence};rport\r\n\
                 From: <sip:harness@{local}>;tag=ready\r\n\
                 To: <sip:{addr}>\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: {sequence} OPTIONS\r\n\
                 Max-Forwards: 70\r\n\
                 Content-Length: 0\r\n\r\n",
                addr = self.addr
            );
            probe.send_to(options.as_bytes(), self.addr).ok()?;
            let mut buf = [0u8; 4096];
            let (n, _) = probe.recv_from(&mut buf).ok()?;
            let reply = String::from_utf8_lossy(&buf[..n]);
            let ready = reply.starts_with("SIP/2.0 200")
                && reply.contains(&call_id)
                && self.ctl_socket().exists();
            ready.then_some(())
        })?;
        if let Some(status) = exited {
            bail!("Kamailio exited during start: {status}");
        }
        Ok(())
    }

    /// Where Kamailio listens for SIP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn ctl_socket(&self) -> PathBuf {
        self.dir.path().join("kamailio_ctl")
    }

    /// Kamailio's own log so far.
    pub fn log(&self) -> String {
        // Lossy: Kamailio quotes the bytes of messages it could not parse.
        std::fs::read(self.dir.path().join("kamailio.log"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Runs `kamcmd` with `args` against this instance's control socket.
    pub fn kamcmd(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(sbin("kamcmd"))
            .arg("-s")
            .arg(format!("unix:{}", self.ctl_socket().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run kamcmd")?;
        if !output.status.success() {
            bail!(
                "kamcmd {args:?} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Adds `user` with `password` to the PBX's users (pbx.cfg's `users` table), as an operator
    /// provisions a phone: it registers like the built-in ones from then on.
    pub fn add_user(&self, user: &str, password: &str) -> anyhow::Result<()> {
        // `s:` keeps a numeric user a string; kamcmd exits 0 on errors, so read its answer.
        let key = format!("s:{user}");
        let answer = self.kamcmd(&["htable.sets", "users", &key, password])?;
        if !answer.contains("Ok") {
            bail!("kamcmd did not add {user}: {answer}");
        }
        Ok(())
    }

    /// The received addresses the location holds for `aor` (the user part), from `ul.dump`.
    pub fn received_addrs(&self, aor: &str) -> anyhow::Result<Vec<SocketAddr>> {
        parse_received(&self.kamcmd(&["ul.dump"])?, aor)
    }

    /// Every request that has reached Kamailio so far, in the order it logged them (pbx.cfg logs
    /// each one as it arrives, before anything else is done with it).
    pub fn requests(&self) -> Vec<PbxRequest> {
        self.log().lines().filter_map(PbxRequest::parse).collect()
    }

    /// A directory for files that live as long as this instance (tests put SIPp logs here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One request as it reached the PBX, from pbx.cfg's `E2E-REQ` log line.
#[derive(Debug, Clone, PartialEq)]
pub struct PbxRequest {
    /// When Kamailio received it.
    pub at: SystemTime,
    /// The peer it came from: behind sipguard, the upstream socket of the client's session.
    pub peer: SocketAddr,
    /// The host of the top Via: the address the client says it sends from.
    pub via_host: String,
    /// The method.
    pub method: String,
    /// The To user.
    pub to_user: Option<String>,
    /// The From user.
    pub from_user: Option<String>,
    /// The username of the credentials it carried; `None` when it carried none.
    pub auth_user: Option<String>,
    /// Call-ID.
    pub call_id: String,
    /// CSeq number.
    pub cseq: u32,
}

impl PbxRequest {
    /// Reads one `E2E-REQ` line; `None` for any other line.
    fn parse(line: &str) -> Option<Self> {
        let (_, fields) = line.split_once("E2E-REQ ")?;
        let mut map = std::collections::HashMap::new();
        for field in fields.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            map.insert(key, value);
        }
        let text = |key: &str| map.get(key).map(|v| v.to_string());
        let optional = |key: &str| text(key).filter(|v| v != "<null>");
        let seconds: f64 = map.get("t")?.parse().ok()?;
        Some(PbxRequest {
            at: UNIX_EPOCH + Duration::from_secs_f64(seconds),
            peer: map.get("src")?.parse().ok()?,
            via_host: text("via")?,
            method: text("m")?,
            to_user: optional("tu"),
            from_user: optional("fu"),
            auth_user: optional("au"),
            call_id: text("ci")?,
            cseq: map.get("cs")?.parse().ok()?,
        })
    }

    /// Whether it carried credentials (Authorization or Proxy-Authorization).
    pub fn credentialed(&self) -> bool {
        self.auth_user.is_some()
    }

    /// What identifies its transaction from the client's side: retransmissions share it.
    pub fn transaction(&self) -> (String, u32, String) {
        (self.call_id.clone(), self.cseq, self.method.clone())
    }
}

/// Where Debian installs `name` (/usr/sbin, which a user's PATH may lack), else `name` for PATH.
fn sbin(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/local/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Reads the `Received: sip:IP:PORT` lines of one AoR out of `kamcmd ul.dump` output.
fn parse_received(dump: &str, aor: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut current = None::<&str>;
    let mut received = Vec::new();
    for line in dump.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("AoR: ") {
            current = Some(name.trim());
        } else if let Some(value) = line.strip_prefix("Received: ") {
            if current != Some(aor) || value == "[not set]" {
                continue;
            }
            let hostport = value
                .trim()
                .strip_prefix("sip:")
                .unwrap_or(value)
                .split(';')
                .next()
                .unwrap_or_default();
            let addr = hostport
                .parse()
                .with_context(|| format!("unexpected Received value {value:?} for {aor}"))?;
            received.push(addr);
        }
    }
    Ok(received)
}

#[test]
fn pbx_request_lines_are_read_from_the_log() {
    let line = " 2(22463) NOTICE: <script>: E2E-REQ t=1795262131.441264 src=127.0.0.1:40113 \
        via=127.0.0.22 m=REGISTER tu=1001 fu=1001 au=1001 ci=4225777034 cs=2";
    let request = PbxRequest::parse(line).expect("an E2E-REQ line");
    assert_eq!(request.peer, "127.0.0.1:40113".parse().unwrap());
    assert_eq!(request.via_host, "127.0.0.22");
    assert_eq!(request.method, "REGISTER");
    assert_eq!(request.to_user.as_deref(), Some("1001"));
    assert!(request.credentialed());
    assert_eq!((request.call_id.as_str(), request.cseq), ("4225777034", 2));
    let millis = request.at.duration_since(UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(millis, 1_795_262_131_441);

    let bare = PbxRequest::parse(&line.replace("au=1001", "au=<null>")).unwrap();
    assert!(!bare.credentialed());
    assert!(PbxRequest::parse(" 0(1) INFO: <core> [main.c:3055]: main(): processes").is_none());
}

#[test]
fn ul_dump_received_addresses_are_read_per_aor() {
    let dump = "{\n\tDomains: {\n\t\tDomain: {\n\t\t\tAoRs: {\n\
        \t\t\t\tInfo: {\n\t\t\t\t\tAoR: 1001\n\t\t\t\t\tContacts: {\n\t\t\t\t\t\tContact: {\n\
        \t\t\t\t\t\t\tAddress: sip:1001@127.0.0.2:5062\n\t\t\t\t\t\t\tReceived: sip:127.0.0.1:40001\n\
        \t\t\t\t\t\t}\n\t\t\t\t\t}\n\t\t\t\t}\n\
        \t\t\t\tInfo: {\n\t\t\t\t\tAoR: 1002\n\t\t\t\t\tContacts: {\n\t\t\t\t\t\tContact: {\n\
        \t\t\t\t\t\t\tReceived: [not set]\n\t\t\t\t\t\t}\n\t\t\t\t\t\tContact: {\n\
        \t\t\t\t\t\t\tReceived: sip:127.0.0.1:40002;transport=udp\n\t\t\t\t\t\t}\n\t\t\t\t\t}\n\t\t\t\t}\n\
        \t\t\t}\n\t\t}\n\t}\n}\n";
    assert_eq!(
        parse_received(dump, "1001").unwrap(),
        vec!["127.0.0.1:40001".parse().unwrap()]
    );
    assert_eq!(
        parse_received(dump, "1002").unwrap(),
        vec!["127.0.0.1:40002".parse().unwrap()]
    );
    assert!(parse_received(dump, "1003").unwrap().is_empty());
}
