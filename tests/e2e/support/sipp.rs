//! SIPp runs: a builder for the arguments, a bounded wait, and the logs kept for diagnosis.
//!
//! Every run traces its messages and unexpected messages into the given directory, and is killed
//! if it outlives its own `-timeout` by a margin. `SippRun::ensure_success` turns a failure into an
//! error that carries SIPp's screen, error log and message trace.

use super::process::Guarded;
use super::{fixture, free_udp_port, poll_until, udp_port_bound, Kamailio};
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Added to SIPp's own `-timeout` before the harness kills it.
const KILL_MARGIN: Duration = Duration::from_secs(10);

/// How long a phone's SIPp gets to bind its port.
const BIND_TIMEOUT: Duration = Duration::from_secs(5);

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// A qualify of the phone at `phone`, registered as `user`: it waits for an OPTIONS
/// (uas_options.xml) while a pinger on the PBX's side sends one to `user` (options.xml), which
/// the PBX relays to the location the phone registered, so it reaches the phone only through
/// the session the phone registered on. An error with both sides' logs unless it was answered.
pub fn qualify(pbx: &Kamailio, phone: SocketAddr, user: &str) -> anyhow::Result<()> {
    let uas = Sipp::new("uas_options.xml", pbx.dir())
        .local(phone)
        .service(user)
        .listen()?;
    let ping = Sipp::new("options.xml", pbx.dir())
        .remote(pbx.addr())
        .local_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .service(user)
        .timeout(Duration::from_secs(10))
        .run()?;
    let uas = uas.wait()?;
    ping.ensure_success()
        .with_context(|| format!("OPTIONS for {user} at {phone}; phone:\n{}", uas.logs()))?;
    uas.ensure_success()
        .with_context(|| format!("phone {user} at {phone}; pinger:\n{}", ping.logs()))
}

/// One SIPp invocation being put together.
#[derive(Debug)]
pub struct Sipp {
    scenario: String,
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    /// The SIP address to bind; no port means a free one picked at spawn.
    local: (IpAddr, Option<u16>),
    timeout: Duration,
    /// Calls to place (`-m`).
    calls: u32,
    /// New calls per second (`-r`), when set.
    rate: Option<u32>,
}

impl Sipp {
    /// A run of tests/fixtures/sipp/`scenario` (e.g. "register.xml") whose logs go to `dir`.
    pub fn new(scenario: &str, dir: &Path) -> Self {
        let stem = scenario.trim_end_matches(".xml");
        Sipp {
            scenario: scenario.to_owned(),
            name: format!("{stem}-{}", RUNS.fetch_add(1, Ordering::Relaxed)),
            dir: dir.to_owned(),
            args: Vec::new(),
            local: (IpAddr::from([127, 0, 0, 1]), None),
            timeout: Duration::from_secs(15),
            calls: 1,
            rate: None,
        }
    }

    /// Sends to `remote` (UAC scenarios).
    pub fn remote(mut self, remote: SocketAddr) -> Self {
        self.args.insert(0, remote.to_string());
        self
    }

    /// Binds `local` for SIP (`-i`, `-p`).
    pub fn local(mut self, local: SocketAddr) -> Self {
        self.local = (local.ip(), Some(local.port()));
        self
    }

    /// Binds a free port on `ip` (SIPp's own default would be 5060 whenever that is free).
    pub fn local_ip(mut self, ip: IpAddr) -> Self {
        self.local = (ip, None);
        self
    }

    /// The user part of the Request-URI and To (`-s`).
    pub fn service(mut self, user: &str) -> Self {
        self.args.extend(["-s".into(), user.into()]);
        self
    }

    /// Sets the scenario's `[name]` keyword to `value` (`-key`).
    pub fn key(mut self, name: &str, value: &str) -> Self {
        self.args.extend(["-key".into(), name.into(), value.into()]);
        self
    }

    /// Digest credentials for challenges (`-au`, `-ap`).
    pub fn auth(mut self, user: &str, password: &str) -> Self {
        self.args
            .extend(["-au".into(), user.into(), "-ap".into(), password.into()]);
        self
    }

    /// SIP over one TCP connection (`-t t1`) instead of UDP.
    pub fn tcp(mut self) -> Self {
        self.args.extend(["-t".into(), "t1".into()]);
        self
    }

    /// Call-IDs `<prefix>-<call number>` (`-cid_str`): a caller and a callee given the same
    /// prefix share the Call-ID, so the callee's SIPp matches the incoming INVITE to the call
    /// that registered it.
    pub fn call_id_prefix(mut self, prefix: &str) -> Self {
        self.args
            .extend(["-cid_str".into(), format!("{prefix}-%u")]);
        self
    }

    /// SIPp's global timeout; reaching it fails the run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Places `calls` calls (one by default), `per_second` new ones each second; SIPp succeeds
    /// only if every call goes through the scenario as written.
    pub fn calls(mut self, calls: u32, per_second: u32) -> Self {
        self.calls = calls;
        self.rate = Some(per_second);
        self
    }

    /// Starts SIPp for its calls (one unless [`Sipp::calls`] says otherwise).
    pub fn spawn(self) -> anyhow::Result<SippProcess> {
        let (local_ip, port) = self.local;
        let port = match port {
            Some(port) => port,
            None => free_udp_port(local_ip)?,
        };
        let log = |suffix: &str| self.dir.join(format!("{}.{suffix}", self.name));
        let mut command = Command::new("sipp");
        command
            .args(&self.args)
            .args(["-i", &local_ip.to_string(), "-p", &port.to_string()])
            .arg("-sf")
            .arg(fixture(&format!("sipp/{}", self.scenario)))
            .args(["-m", &self.calls.to_string()])
            .args(self.rate.iter().flat_map(|rate| {
                [
                    "-r".to_owned(),
                    rate.to_string(),
                    "-rp".into(),
                    "1000".into(),
                ]
            }))
            .args(["-nostdin", "-timeout_error", "-trace_err", "-trace_msg"])
            .arg("-timeout")
            .arg(format!("{}s", self.timeout.as_secs().max(1)))
            // Control and RTP-echo sockets on free ports rather than SIPp's fixed 8888 and 6000.
            .args([
                "-ci",
                &local_ip.to_string(),
                "-cp",
                &free_udp_port(local_ip)?.to_string(),
            ])
            .args(["-mp", &free_udp_port(local_ip)?.to_string()])
            .arg("-error_file")
            .arg(log("errors.log"))
            .arg("-message_file")
            .arg(log("messages.log"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log("screen.log"))?)
            .stderr(std::fs::File::create(log("stderr.log"))?);
        let description = format!("sipp {} from {local_ip}:{port}", self.args.join(" "));
        let process = Guarded::spawn(&self.name, command)?;
        Ok(SippProcess {
            sipp: self,
            description,
            process,
        })
    }

    /// Starts SIPp on the address given to [`Sipp::local`] and waits until it has bound it: a
    /// UAS that must be listening before anyone sends. An error with its logs if it exits first.
    pub fn listen(self) -> anyhow::Result<SippProcess> {
        let (ip, Some(port)) = self.local else {
            bail!("a listening SIPp needs its address given with Sipp::local");
        };
        let addr = SocketAddr::new(ip, port);
        let mut process = self.spawn()?;
        poll_until("SIPp to bind its port", BIND_TIMEOUT, || {
            (udp_port_bound(addr) || !process.is_running()).then_some(())
        })?;
        if !process.is_running() {
            bail!(
                "SIPp exited before listening on {addr}:\n{}",
                process.wait()?.logs()
            );
        }
        Ok(process)
    }

    /// Runs SIPp for its calls and waits for it to exit.
    pub fn run(self) -> anyhow::Result<SippRun> {
        self.spawn()?.wait()
    }
}

/// A SIPp process still running.
#[derive(Debug)]
pub struct SippProcess {
    sipp: Sipp,
    description: String,
    process: Guarded,
}

impl SippProcess {
    /// Whether SIPp is still running (it exits early when it cannot bind).
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }

    /// Waits for SIPp to exit (it gives up at its own `-timeout`); kills it after a margin.
    pub fn wait(mut self) -> anyhow::Result<SippRun> {
        let status = match self.process.wait_timeout(self.sipp.timeout + KILL_MARGIN)? {
            Some(status) => Some(status),
            None => {
                self.process.stop();
                None
            }
        };
        Ok(SippRun {
            name: self.sipp.name.clone(),
            description: self.description,
            dir: self.sipp.dir.clone(),
            status,
        })
    }
}

/// A finished SIPp run.
#[derive(Debug)]
pub struct SippRun {
    name: String,
    description: String,
    dir: PathBuf,
    /// `None` when the harness had to kill it.
    status: Option<ExitStatus>,
}

impl SippRun {
    /// Whether SIPp exited 0: every call went through the scenario as written.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// An error with SIPp's logs unless the run succeeded.
    pub fn ensure_success(&self) -> anyhow::Result<()> {
        if self.success() {
            return Ok(());
        }
        let status = self
            .status
            .map_or("killed after its timeout".to_owned(), |s| s.to_string());
        bail!("{} failed: {status}\n{}", self.description, self.logs())
    }

    /// Everything SIPp wrote: screen, stderr, unexpected messages, message trace.
    pub fn logs(&self) -> String {
        ["stderr.log", "errors.log", "messages.log", "screen.log"]
            .iter()
            .map(|suffix| {
                let path = self.dir.join(format!("{}.{suffix}", self.name));
                let text = std::fs::read(&path)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_else(|_| "(none)".into());
                format!("----- {} -----\n{}\n", path.display(), text.trim_end())
            })
            .collect()
    }
}
