//! A real DNS server for the allowlist's names: Debian's dnsmasq on 127.0.0.1 and a free port,
//! answering only from a hosts file the test writes (and the SRV records it is given), with a
//! one-second TTL; SIGHUP makes it read the file again, as a carrier's DNS change would show.

use super::process::Guarded;
use super::wait::{free_udp_port, poll_until, udp_port_bound};
use anyhow::Context;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The running server.
pub struct Dnsmasq {
    process: Guarded,
    addr: SocketAddr,
    hosts: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    /// Starts it authoritative for `domain`, with `hosts` (the hosts-file format) and each of
    /// `srv` (`_service._proto.name,target,port`).
    pub fn start(domain: &str, hosts: &str, srv: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("hosts");
        std::fs::write(&file, hosts)?;
        let port = free_udp_port(Ipv4Addr::LOCALHOST.into())?;
        let mut command = Command::new(dnsmasq()?);
        command
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--bind-interfaces")
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--addn-hosts={}", file.display()))
            .arg(format!("--local=/{domain}/"))
            .arg("--local-ttl=1")
            .arg("--pid-file=")
            .arg("--log-facility=-")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // As root it would drop to nobody, who cannot read the test's private directory.
        if running_as_root() {
            command.arg("--user=root");
        }
        for record in srv {
            command.arg(format!("--srv-host={record}"));
        }
        let process = Guarded::spawn("dnsmasq", command)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        poll_until("dnsmasq to listen", Duration::from_secs(10), || {
            udp_port_bound(addr).then_some(())
        })?;
        Ok(Dnsmasq {
            process,
            addr,
            hosts: file,
            _dir: dir,
        })
    }

    /// Where it answers.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the hosts file and makes dnsmasq read it again.
    pub fn set_hosts(&mut self, hosts: &str) -> anyhow::Result<()> {
        std::fs::write(&self.hosts, hosts)?;
        self.process.signal(libc::SIGHUP);
        Ok(())
    }
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
        .unwrap_or(false)
}

fn dnsmasq() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .context("dnsmasq is not installed (scripts/install-test-deps.sh installs dnsmasq-base)")
}
