//! The real `sipguard` binary as a child process, for what an in-process instance cannot show:
//! `kill -9` and a restart over the same ban journal and session file, SIGHUP, the `sipguard
//! bans` and `sipguard sessions` CLI, the admin API over a socket, and the process-wide
//! Prometheus recorder behind `/metrics`.
//!
//! The binary is built once per test run (`cargo build -p sipguard`, a no-op when up to date):
//! `cargo test` builds the binaries of the package under test only, and this package is the
//! root one. Every instance listens on port 0 (SIP, metrics and admin) and learns its addresses
//! from its own log; its config lives in a directory of its own, and its journal and admin token
//! in their default places under a state directory of its own (`XDG_STATE_HOME`), where
//! `sipguard bans` run with the same environment finds the token as an operator's would.

use super::process::Guarded;
use super::wait::poll_until;
use anyhow::{anyhow, bail, ensure, Context};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long a start (replaying the journal, binding) may take.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `sipguard` binary of this workspace, built if missing or stale.
pub fn binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build() -> anyhow::Result<PathBuf> {
    // This test's executable is target/<profile>/deps/e2e-HASH; the binary is two levels up.
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable outside a target directory")?;
    let target_dir = profile_dir.parent().context("no target directory")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "sipguard", "--bin", "sipguard"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        command.arg("--release");
    }
    let out = command.output().context("cannot run cargo build")?;
    ensure!(
        out.status.success(),
        "cargo build -p sipguard failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = profile_dir.join("sipguard");
    ensure!(binary.exists(), "{} was not built", binary.display());
    Ok(binary)
}

/// A running `sipguard run`, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    process: Guarded,
    log: Arc<Mutex<Vec<String>>>,
    udp: SocketAddr,
    metrics: SocketAddr,
    cli: BansCli,
}

/// How to start one: a config file (written by the test) and the state directory it keeps.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The YAML config file.
    pub config: PathBuf,
    /// `XDG_STATE_HOME` of the daemon and its CLI: the journal and the token go under it.
    pub state: PathBuf,
    /// The ban journal, in its default place under `state`.
    pub journal: PathBuf,
    /// The PBX to forward to.
    pub pbx: SocketAddr,
    /// The SIP address; port 0 picks a free one.
    pub listen: SocketAddr,
    /// A program and its arguments to run sipguard under (`setpriv`, to drop a capability).
    pub wrapper: Vec<String>,
}

impl DaemonConfig {
    /// A config in `dir` with `yaml` as the file's text, the journal beside it, on a free port.
    pub fn in_dir(dir: &Path, yaml: &str, pbx: SocketAddr) -> anyhow::Result<Self> {
        let config = dir.join("sipguard.yaml");
        std::fs::write(&config, yaml)?;
        let state = dir.join("state");
        Ok(DaemonConfig {
            config,
            journal: state.join("sipguard/bans.journal"),
            state,
            pbx,
            listen: "127.0.0.1:0".parse()?,
            wrapper: Vec::new(),
        })
    }
}

impl Daemon {
    /// Starts `sipguard run` and waits until its admin API listens.
    pub fn start(config: &DaemonConfig) -> anyhow::Result<Self> {
        let mut command = match config.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary()?);
                command
            }
            None => Command::new(binary()?),
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&config.config)
            .args(["--listen", &config.listen.to_string()])
            .args(["--pbx", &config.pbx.to_string()])
            .args(["--metrics", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env_remove("STATE_DIRECTORY")
            .env("XDG_STATE_HOME", &config.state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = Guarded::spawn("sipguard", command)?;
        let stderr = process.take_stderr().context("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let found = |daemon_log: &Arc<Mutex<Vec<String>>>, what: &str| {
            daemon_log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(what))
                .and_then(|l| l.split("addr=").nth(1))
                .and_then(|a| a.split_whitespace().next())
                .and_then(|a| a.parse::<SocketAddr>().ok())
        };
        let admin = poll_until("sipguard's admin API to listen", START_TIMEOUT, || {
            if matches!(process.try_wait(), Ok(Some(_))) {
                return Some(None);
            }
            found(&log, "admin API listening").map(Some)
        })?;
        let Some(admin) = admin else {
            bail!(
                "sipguard exited at start; log:\n{}",
                log.lock().unwrap().join("\n")
            );
        };
        let missing = || anyhow!("no address in log:\n{}", log.lock().unwrap().join("\n"));
        let udp = found(&log, "listening on UDP").ok_or_else(missing)?;
        let metrics = found(&log, "serving /metrics").ok_or_else(missing)?;
        Ok(Daemon {
            process,
            log,
            udp,
            metrics,
            cli: BansCli {
                admin,
                state: config.state.clone(),
            },
        })
    }

    /// The SIP address clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.udp
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.cli.admin
    }

    /// Where it wrote the admin token: beside its journal.
    pub fn token_file(&self) -> PathBuf {
        self.cli.state.join("sipguard/admin.token")
    }

    /// The admin token it wrote at start.
    pub fn token(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.token_file())?
            .trim()
            .to_owned())
    }

    /// Its log so far, one line per entry.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) -> anyhow::Result<String> {
        poll_until(&format!("a log line with {text:?}"), timeout, || {
            self.log().into_iter().find(|l| l.contains(text))
        })
        .with_context(|| format!("log:\n{}", self.log().join("\n")))
    }

    /// Sends SIGHUP (reload).
    pub fn hangup(&mut self) {
        self.process.signal(libc::SIGHUP);
    }

    /// Kills it with SIGKILL, as a crash would, and waits for it to be gone.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.process.signal(libc::SIGKILL);
        self.process
            .wait_timeout(Duration::from_secs(5))?
            .context("sipguard survived SIGKILL")?;
        Ok(())
    }

    /// `GET /metrics`, parsed.
    pub fn scrape(&self) -> anyhow::Result<Scrape> {
        Scrape::fetch(self.metrics)
    }

    /// Runs `sipguard bans --admin ADDR ARGS` as the operator would.
    pub fn bans(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli.run(args)
    }

    /// Runs `sipguard sessions --admin ADDR ARGS` as the operator would.
    pub fn sessions(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.cli.sessions(args)
    }

    /// `sipguard bans` for this instance, usable after it stops.
    pub fn cli(&self) -> BansCli {
        self.cli.clone()
    }
}

/// `sipguard bans` and `sipguard sessions` against one instance, in its environment: `--admin`
/// (the port is chosen at start) and nothing else, the token found where the instance wrote it by
/// default.
#[derive(Debug, Clone)]
pub struct BansCli {
    admin: SocketAddr,
    state: PathBuf,
}

impl BansCli {
    /// Runs `sipguard bans --admin ADDR ARGS`.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.run_as(&[], args)
    }

    /// Runs it under `wrapper` (a program and its arguments, such as `setpriv` to run it as
    /// another user), in the same environment.
    pub fn run_as(&self, wrapper: &[&str], args: &[&str]) -> anyhow::Result<Output> {
        self.invoke(wrapper, "bans", args)
    }

    /// Runs `sipguard sessions --admin ADDR ARGS` in the same environment.
    pub fn sessions(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.invoke(&[], "sessions", args)
    }

    fn invoke(&self, wrapper: &[&str], subcommand: &str, args: &[&str]) -> anyhow::Result<Output> {
        let binary = binary()?;
        let mut command = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command.args(wrapper_args).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        Ok(command
            .arg(subcommand)
            .args(["--admin", &self.admin.to_string()])
            .args(args)
            .env_remove("STATE_DIRECTORY")
            .env("XDG_STATE_HOME", &self.state)
            .output()?)
    }
}

/// A reply read off the wire.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body.
    pub body: String,
}

/// Sends `request` (a whole HTTP/1.1 request, head and body, with `Connection: close`) to
/// `addr` as it is, and reads the reply to the end.
pub fn http_exchange(addr: SocketAddr, request: &str) -> anyhow::Result<HttpReply> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header end in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok(HttpReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// One `/metrics` text, with its samples.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The text as served.
    pub text: String,
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    /// Fetches and parses `http://ADDR/metrics`.
    pub fn fetch(addr: SocketAddr) -> anyhow::Result<Self> {
        let reply = http_exchange(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
        )?;
        let head = reply.head;
        ensure!(reply.status == 200, "scrape failed: {head}");
        ensure!(
            !head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "unexpected chunked reply"
        );
        Ok(Self::parse(&reply.body))
    }

    /// Parses exposition text: every sample line as name, labels, value.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter_map(|pair| {
                        let (key, value) = pair.split_once('=')?;
                        Some((key.to_owned(), value.trim_matches('"').to_owned()))
                    })
                    .collect();
                Some((name.to_owned(), labels, value))
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The sum of the samples of `name` whose labels include `labels`; `None` when there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// The metric families present (histogram series under their base name).
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        self.samples
            .iter()
            .map(|(name, _, _)| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| self.text.contains(&format!("# TYPE {base} histogram")))
                    .unwrap_or(name)
                    .to_owned()
            })
            .collect()
    }

    /// The name of every sample line (a histogram's as its `_bucket`, `_sum` and `_count`).
    pub fn series_names(&self) -> std::collections::BTreeSet<String> {
        self.samples
            .iter()
            .map(|(name, _, _)| name.clone())
            .collect()
    }

    /// Every label value of every sample.
    pub fn label_values(&self) -> impl Iterator<Item = &str> {
        self.samples
            .iter()
            .flat_map(|(_, labels, _)| labels.values().map(String::as_str))
    }

    /// `promtool check metrics` on the text: an error with its complaints if it refuses it.
    pub fn promtool_check(&self) -> anyhow::Result<()> {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run promtool (scripts/install-test-deps.sh installs it)")?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(self.text.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "promtool check metrics refused the scrape:\n{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.text
        );
        Ok(())
    }
}
