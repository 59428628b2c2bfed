//! sipvicious (Debian's `svmap`, `svwar`, `svcrack`) as the attacker, each run from its own
//! loopback address and a free port, bounded in time, its output kept for the test to read.
//!
//! Three things about sipvicious 0.3.3 shape how it is run:
//! - svwar and svcrack parse `-b` (bind address) but never use it, so every run goes through
//!   tests/fixtures/sipvicious/bind_source.py, which binds the tool's socket to the run's source
//!   address; `-b` is passed as well (svmap honours it) and `-x` puts the address in Via.
//! - Without `-P` the tools take 5060 or the next free port up; the harness picks a free one.
//! - They send `User-Agent: friendly-scanner` and have no option to change it; a test that plays
//!   an attacker who edited the tool sets [`SipVicious::user_agent`], which bind_source.py applies.
//! - Their From tag is the hex of what they try, a 0x01 byte and a random number, in every mode
//!   (sipguard's scanner signature for them); [`SipVicious::plain_from_tag`] has bind_source.py
//!   leave out the 0x01 and the number, for a test that needs the tool judged by another rule.
//! - They keep sessions under `~/.sipvicious` only with `-s`, and prompt only with `-R`; HOME
//!   still points into the test's tempdir so a run never touches the user's home.

use super::fixture;
use super::free_udp_port;
use super::process::Guarded;
use anyhow::{bail, Context};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long a run may take before the harness interrupts it: sipvicious gives up by itself a
/// few seconds after its last answer (`--maximumtime`, 10 s by default, then a socket timeout).
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tool gets to print its results and exit after SIGINT.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// The sipvicious tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Finds SIP devices (OPTIONS with `User-Agent: friendly-scanner`, From `"sipvicious"`).
    Svmap,
    /// Enumerates extensions.
    Svwar,
    /// Guesses one extension's password.
    Svcrack,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Svmap => "svmap",
            Tool::Svwar => "svwar",
            Tool::Svcrack => "svcrack",
        }
    }
}

/// One sipvicious invocation being put together.
#[derive(Debug)]
pub struct SipVicious {
    tool: Tool,
    source: Ipv4Addr,
    target: SocketAddr,
    dir: PathBuf,
    args: Vec<String>,
    user_agent: Option<String>,
    plain_from_tag: bool,
}

impl SipVicious {
    /// `tool` against `target`, sending from `source`; output files go to `dir`.
    pub fn new(tool: Tool, source: Ipv4Addr, target: SocketAddr, dir: &Path) -> Self {
        SipVicious {
            tool,
            source,
            target,
            dir: dir.to_owned(),
            args: Vec::new(),
            user_agent: None,
            plain_from_tag: false,
        }
    }

    /// Sends `user_agent` instead of `friendly-scanner`, as attackers who edit the tool do
    /// (sipvicious has no option for it; bind_source.py changes the tool's default).
    pub fn user_agent(mut self, user_agent: &str) -> Self {
        self.user_agent = Some(user_agent.to_owned());
        self
    }

    /// Writes the From tag as the bare hex of what the tool tries, without the 0x01 and the
    /// random number that mark sipvicious' tags, as an attacker who edited `createTag` would
    /// (bind_source.py changes it; the tool still reads its answers).
    pub fn plain_from_tag(mut self) -> Self {
        self.plain_from_tag = true;
        self
    }

    /// Adds the tool's own options.
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Starts the tool.
    pub fn spawn(self) -> anyhow::Result<SipViciousProcess> {
        let name = format!(
            "{}-{}",
            self.tool.name(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let script = installed(self.tool.name())?;
        let home = self.dir.join(format!("{name}.home"));
        std::fs::create_dir_all(&home)?;
        let source = self.source.to_string();
        let port = free_udp_port(IpAddr::V4(self.source))?;
        let stdout = self.dir.join(format!("{name}.stdout"));
        let stderr = self.dir.join(format!("{name}.stderr"));
        let mut command = Command::new(python());
        command
            .arg(fixture("sipvicious/bind_source.py"))
            .arg(&source)
            .arg(&script)
            .args(["-b", &source, "-x", &source, "-P", &port.to_string()])
            .args(["-p", &self.target.port().to_string()])
            .args(&self.args)
            .arg(self.target.ip().to_string())
            .env("HOME", &home)
            .env("PYTHONUNBUFFERED", "1")
            .envs(
                self.user_agent
                    .iter()
                    .map(|ua| ("SIPVICIOUS_USER_AGENT", ua)),
            )
            .envs(self.plain_from_tag.then_some(("SIPVICIOUS_PLAIN_TAG", "1")))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?);
        let description = format!(
            "{} {} {} from {source}:{port}{}{}",
            self.tool.name(),
            self.args.join(" "),
            self.target,
            self.user_agent
                .as_ref()
                .map_or(String::new(), |ua| format!(", User-Agent {ua:?}")),
            if self.plain_from_tag {
                ", plain From tag"
            } else {
                ""
            }
        );
        let process = Guarded::spawn(&name, command)?;
        Ok(SipViciousProcess {
            description,
            stdout,
            stderr,
            process,
        })
    }

    /// Runs the tool to its end (interrupting it at the timeout).
    pub fn run(self) -> anyhow::Result<SipViciousRun> {
        self.spawn()?.wait()
    }
}

/// A sipvicious tool still running.
#[derive(Debug)]
pub struct SipViciousProcess {
    description: String,
    stdout: PathBuf,
    stderr: PathBuf,
    process: Guarded,
}

impl SipViciousProcess {
    /// Whether the tool is still running (it exits by itself once it found the password).
    pub fn is_running(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }

    /// Waits for the tool to finish on its own; after `RUN_TIMEOUT` it is interrupted (it still
    /// prints what it found) and the run counts as not having run cleanly.
    pub fn wait(mut self) -> anyhow::Result<SipViciousRun> {
        match self.process.wait_timeout(RUN_TIMEOUT)? {
            Some(status) => Ok(self.finished(Some(status), false)),
            None => Ok(self.interrupt_now(true)),
        }
    }

    /// Interrupts the tool now, as Ctrl-C would: it stops sending and prints what it found.
    pub fn interrupt(mut self) -> anyhow::Result<SipViciousRun> {
        Ok(self.interrupt_now(false))
    }

    fn interrupt_now(&mut self, timed_out: bool) -> SipViciousRun {
        self.process.interrupt();
        let status = match self.process.wait_timeout(INTERRUPT_GRACE) {
            Ok(Some(status)) => Some(status),
            _ => self.process.stop(),
        };
        self.finished(status, timed_out)
    }

    fn finished(&mut self, status: Option<ExitStatus>, timed_out: bool) -> SipViciousRun {
        let read = |path: &Path| {
            std::fs::read(path)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        };
        SipViciousRun {
            description: self.description.clone(),
            status,
            timed_out,
            stdout: read(&self.stdout),
            stderr: read(&self.stderr),
        }
    }
}

/// A finished sipvicious run.
#[derive(Debug)]
pub struct SipViciousRun {
    description: String,
    status: Option<ExitStatus>,
    /// Whether the harness had to interrupt it at `RUN_TIMEOUT`.
    timed_out: bool,
    /// What it printed: its results table.
    pub stdout: String,
    /// Its log lines (warnings and errors, e.g. "found nothing").
    pub stderr: String,
}

impl SipViciousRun {
    /// An error with the tool's output unless it finished by itself and exited 0 (sipvicious
    /// exits 0 whether or not it found anything; non-zero means it did not run as intended).
    pub fn ensure_ran(&self) -> anyhow::Result<()> {
        if !self.timed_out && self.status.is_some_and(|s| s.success()) {
            return Ok(());
        }
        bail!(
            "{} did not run cleanly ({:?}{}):\n{}",
            self.description,
            self.status,
            if self.timed_out {
                ", interrupted at the harness's timeout"
            } else {
                ""
            },
            self.output()
        )
    }

    /// The rows of the results table it printed (svmap: device and user agent; svwar:
    /// extension and authentication; svcrack: extension and password), each as its cells.
    pub fn results(&self) -> Vec<Vec<String>> {
        let mut rows = self
            .stdout
            .lines()
            .filter(|line| line.starts_with('|'))
            .map(|line| {
                line.trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().to_owned())
                    .collect::<Vec<_>>()
            });
        // The first row is the header.
        rows.next();
        rows.collect()
    }

    /// Everything it wrote, for failure messages.
    pub fn output(&self) -> String {
        format!(
            "----- {} -----\nstdout:\n{}\nstderr:\n{}",
            self.description,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// The Python that runs Debian's sipvicious scripts (their shebang), else `python3` from PATH.
fn python() -> PathBuf {
    let debian = Path::new("/usr/bin/python3");
    if debian.exists() {
        debian.to_owned()
    } else {
        PathBuf::from("python3")
    }
}

/// Where `tool` is installed: /usr/bin, else the first match on PATH.
fn installed(tool: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(PathBuf::from("/usr/bin"))
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.exists())
        .with_context(|| {
            format!("{tool} is not installed (scripts/install-test-deps.sh installs sipvicious)")
        })
}

#[test]
fn results_table_rows_are_read_without_the_header() {
    let run = SipViciousRun {
        description: String::new(),
        status: None,
        timed_out: false,
        stdout: "+-----------+-------------+\n\
                 | Extension | Password    |\n\
                 +===========+=============+\n\
                 | 1001      | secret-1001 |\n\
                 +-----------+-------------+\n"
            .into(),
        stderr: String::new(),
    };
    assert_eq!(run.results(), vec![vec!["1001", "secret-1001"]]);
    let nothing = SipViciousRun {
        stdout: String::new(),
        stderr: "WARNING:root:found nothing\n".into(),
        ..run
    };
    assert!(nothing.results().is_empty());
}
