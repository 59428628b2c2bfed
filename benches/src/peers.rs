//! The processes the harness starts and measures: Kamailio (as the PBX and as an edge), the bare
//! relay, and sipguard. Each runs in its own process group, so its CPU time can be summed over
//! the group and it is stopped by that group's id, never by name.

use anyhow::{bail, Context};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// With `--pin`: the one CPU the edges run on, while the harness (its clients) and the PBX run
/// on the others, so an edge's latency is its own and not the scheduler's choice among them.
pub static EDGE_CPU: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The name the stand-in PBX is started under; every other peer is an edge.
pub const PBX: &str = "pbx";

/// Keeps the calling thread (and what it starts) to `cpus`.
pub fn pin(cpus: impl IntoIterator<Item = usize>) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity are given a
    // set of the size they expect, owned by this frame.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A started peer, stopped (SIGTERM to its group, then SIGKILL) when dropped.
pub struct Peer {
    pub name: &'static str,
    child: Child,
    _dir: TempDir,
}

impl Peer {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds used by the peer's process group so far.
    pub fn cpu_seconds(&self) -> f64 {
        crate::procfs::group_cpu_seconds(self.pid())
    }

    fn spawn(name: &'static str, mut command: Command, dir: TempDir) -> anyhow::Result<Self> {
        let log = std::fs::File::create(dir.path().join("stderr.log"))?;
        if let (Some(&cpu), false) = (EDGE_CPU.get(), name == PBX) {
            // SAFETY: between fork and exec this only makes one system call.
            unsafe { command.pre_exec(move || pin([cpu])) };
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Peer {
            name,
            child,
            _dir: dir,
        })
    }

    /// Waits until an OPTIONS sent to `addr` is answered, for at most ten seconds.
    pub fn wait_answering(&mut self, addr: SocketAddrV4) -> anyhow::Result<()> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let port = socket.local_addr()?.port();
        let mut request = Vec::new();
        crate::sip::clean_request(&mut request, 0, [127, 0, 0, 1].into(), port, addr);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self._dir.path().join("stderr.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                bail!(
                    "{} exited with {status} before answering: {tail:?}",
                    self.name
                );
            }
            socket.send_to(&request, addr)?;
            if socket.recv(&mut buf).is_ok() {
                return Ok(());
            }
        }
        bail!("{} did not answer OPTIONS on {addr} within 10 s", self.name)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) with a negative pid signals the process group this harness created.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A free UDP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kamailio from the config template at `template`, placeholders filled in.
pub fn kamailio(
    name: &'static str,
    template: &Path,
    listen: SocketAddrV4,
    pbx: Option<SocketAddrV4>,
) -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let config = std::fs::read_to_string(template)
        .with_context(|| format!("reading {}", template.display()))?
        .replace("@ADDR@", &listen.ip().to_string())
        .replace("@PORT@", &listen.port().to_string())
        .replace("@PBX@", &pbx.map(|p| p.to_string()).unwrap_or_default())
        .replace("@RUNDIR@", &dir.path().display().to_string());
    let path = dir.path().join("kamailio.cfg");
    std::fs::write(&path, config)?;
    let mut command = Command::new("kamailio");
    command.args(["-DD", "-E", "-f"]).arg(&path);
    Peer::spawn(name, command, dir)
}

/// The bare relay: this same binary's `relay` subcommand, as its own process.
pub fn bare_relay(listen: SocketAddrV4, pbx: SocketAddrV4) -> anyhow::Result<Peer> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["relay", &listen.to_string(), &pbx.to_string()]);
    Peer::spawn("bare relay", command, tempfile::tempdir()?)
}

/// sipguard with its default rules, listening on `listen` in front of `pbx`. Its ban journal
/// lives in the run's own directory (a journal shared between runs would replay one run's flood
/// bans into the next), TCP is off, and the metrics exporter and admin API are on, as deployed,
/// on free ports. `extra` is appended to its config (the kernel offload's section), and an
/// `allowlist` file's content, if any, is written beside it and named in the config.
pub fn sipguard(
    binary: &Path,
    listen: SocketAddrV4,
    pbx: SocketAddrV4,
    extra: &str,
    allowlist: Option<&str>,
) -> anyhow::Result<Peer> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sipguard.yaml");
    let extra = match allowlist {
        Some(groups) => {
            std::fs::write(dir.path().join("allowlist.yaml"), groups)?;
            format!("{extra}allowlist:\n  file: allowlist.yaml\n")
        }
        None => extra.to_owned(),
    };
    std::fs::write(
        &path,
        format!(
            "listen:\n  udp: [\"{listen}\"]\n  tcp: []\npbx:\n  address: {pbx}\n\
             metrics:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n\
             journal:\n  path: bans.journal\n{extra}"
        ),
    )?;
    let mut command = Command::new(binary);
    command
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn");
    Peer::spawn("sipguard", command, dir)
}
